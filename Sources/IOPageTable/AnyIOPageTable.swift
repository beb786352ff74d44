import IOMMUBase
import PhysicalMemory

/// A page table whose format is chosen at run time: switch once, then static dispatch into the
/// specialised `IOPageTable<Format>`.
///
/// The IOMMU core picks the format from the hardware it finds; this enum is what it stores.
public enum AnyIOPageTable: ~Copyable {
    case armLPAEStage1Granule4K(IOPageTable<ARMLPAEStage1<Granule4K>>)
    case armLPAEStage1Granule16K(IOPageTable<ARMLPAEStage1<Granule16K>>)
    case armLPAEStage1Granule64K(IOPageTable<ARMLPAEStage1<Granule64K>>)
    case armLPAEStage2Granule4K(IOPageTable<ARMLPAEStage2<Granule4K>>)
    case armLPAEStage2Granule16K(IOPageTable<ARMLPAEStage2<Granule16K>>)
    case armLPAEStage2Granule64K(IOPageTable<ARMLPAEStage2<Granule64K>>)
    case appleDART(IOPageTable<AppleDART>)
    case appleDART2(IOPageTable<AppleDART2>)

    /// Builds an empty table of `kind` with `granule`.
    ///
    /// - Throws: `invalidConfiguration` (EINVAL) for a granule the format does not have (DART:
    ///   16 KiB only) or a configuration Linux refuses; `outOfMemory` (ENOMEM).
    public init(kind: PageTableFormatKind, granule: PageSize, configuration: PageTableConfiguration,
                frames: FrameAllocator, warnings: any WarningSink = DiscardingWarningSink()) throws(IOMMUError) {
        switch (kind, granule.shift) {
        case (.armLPAEStage1, 12): self = .armLPAEStage1Granule4K(try .init(configuration: configuration, frames: frames, warnings: warnings))
        case (.armLPAEStage1, 14): self = .armLPAEStage1Granule16K(try .init(configuration: configuration, frames: frames, warnings: warnings))
        case (.armLPAEStage1, 16): self = .armLPAEStage1Granule64K(try .init(configuration: configuration, frames: frames, warnings: warnings))
        case (.armLPAEStage2, 12): self = .armLPAEStage2Granule4K(try .init(configuration: configuration, frames: frames, warnings: warnings))
        case (.armLPAEStage2, 14): self = .armLPAEStage2Granule16K(try .init(configuration: configuration, frames: frames, warnings: warnings))
        case (.armLPAEStage2, 16): self = .armLPAEStage2Granule64K(try .init(configuration: configuration, frames: frames, warnings: warnings))
        case (.appleDART, 14): self = .appleDART(try .init(configuration: configuration, frames: frames, warnings: warnings))
        case (.appleDART2, 14): self = .appleDART2(try .init(configuration: configuration, frames: frames, warnings: warnings))
        default: throw IOMMUError(.invalidConfiguration, address: UInt64(granule.bytes))
        }
    }

    /// Tells `invalidator` to flush everything, then frees every table page.
    public consuming func destroy<I: TLBInvalidator & ~Copyable>(invalidator: inout I) {
        invalidator.flushAll()
    }

    /// Frees every table page.
    public consuming func destroy() {}

    /// A convenience: map with a no-op invalidator (Linux `iommu_map`).
    public func map(iova: IOVA, paddr: PhysAddr, length: UInt64, prot: IOMMUProt) throws(IOMMUError) {
        var invalidator = NoTLBInvalidator()
        try map(iova: iova, paddr: paddr, length: length, prot: prot, invalidator: &invalidator)
    }

    /// A convenience: unmap with a no-op invalidator (Linux `iommu_unmap`).
    public func unmap(iova: IOVA, length: UInt64) -> UInt64 {
        var gather = IOTLBGather()
        var invalidator = NoTLBInvalidator()
        return unmap(iova: iova, length: length, gather: &gather, invalidator: &invalidator)
    }

    /// The format family.
    public var kind: PageTableFormatKind {
        switch self {
        case .armLPAEStage1Granule4K(let table): table.formatKind
        case .armLPAEStage1Granule16K(let table): table.formatKind
        case .armLPAEStage1Granule64K(let table): table.formatKind
        case .armLPAEStage2Granule4K(let table): table.formatKind
        case .armLPAEStage2Granule16K(let table): table.formatKind
        case .armLPAEStage2Granule64K(let table): table.formatKind
        case .appleDART(let table): table.formatKind
        case .appleDART2(let table): table.formatKind
        }
    }

    /// The table's shape.
    public var geometry: PageTableGeometry {
        switch self {
        case .armLPAEStage1Granule4K(let table): table.geometry
        case .armLPAEStage1Granule16K(let table): table.geometry
        case .armLPAEStage1Granule64K(let table): table.geometry
        case .armLPAEStage2Granule4K(let table): table.geometry
        case .armLPAEStage2Granule16K(let table): table.geometry
        case .armLPAEStage2Granule64K(let table): table.geometry
        case .appleDART(let table): table.geometry
        case .appleDART2(let table): table.geometry
        }
    }

    /// What the table was asked for.
    public var configuration: PageTableConfiguration {
        switch self {
        case .armLPAEStage1Granule4K(let table): table.configuration
        case .armLPAEStage1Granule16K(let table): table.configuration
        case .armLPAEStage1Granule64K(let table): table.configuration
        case .armLPAEStage2Granule4K(let table): table.configuration
        case .armLPAEStage2Granule16K(let table): table.configuration
        case .armLPAEStage2Granule64K(let table): table.configuration
        case .appleDART(let table): table.configuration
        case .appleDART2(let table): table.configuration
        }
    }

    /// Physical addresses of the top-level table(s).
    public var roots: [PhysAddr] {
        switch self {
        case .armLPAEStage1Granule4K(let table): table.roots
        case .armLPAEStage1Granule16K(let table): table.roots
        case .armLPAEStage1Granule64K(let table): table.roots
        case .armLPAEStage2Granule4K(let table): table.roots
        case .armLPAEStage2Granule16K(let table): table.roots
        case .armLPAEStage2Granule64K(let table): table.roots
        case .appleDART(let table): table.roots
        case .appleDART2(let table): table.roots
        }
    }

    /// The register values a driver programs.
    public var registers: PageTableRegisters {
        switch self {
        case .armLPAEStage1Granule4K(let table): table.registers
        case .armLPAEStage1Granule16K(let table): table.registers
        case .armLPAEStage1Granule64K(let table): table.registers
        case .armLPAEStage2Granule4K(let table): table.registers
        case .armLPAEStage2Granule16K(let table): table.registers
        case .armLPAEStage2Granule64K(let table): table.registers
        case .appleDART(let table): table.registers
        case .appleDART2(let table): table.registers
        }
    }

    /// Every live table. See `IOPageTable.liveTables()`.
    public func liveTables() -> [PageTableSnapshot] {
        switch self {
        case .armLPAEStage1Granule4K(let table): table.liveTables()
        case .armLPAEStage1Granule16K(let table): table.liveTables()
        case .armLPAEStage1Granule64K(let table): table.liveTables()
        case .armLPAEStage2Granule4K(let table): table.liveTables()
        case .armLPAEStage2Granule16K(let table): table.liveTables()
        case .armLPAEStage2Granule64K(let table): table.liveTables()
        case .appleDART(let table): table.liveTables()
        case .appleDART2(let table): table.liveTables()
        }
    }

    /// See `IOPageTable.iovaToPhys(_:)`.
    @inlinable public func iovaToPhys(_ iova: IOVA) -> PhysAddr? {
        switch self {
        case .armLPAEStage1Granule4K(let table): table.iovaToPhys(iova)
        case .armLPAEStage1Granule16K(let table): table.iovaToPhys(iova)
        case .armLPAEStage1Granule64K(let table): table.iovaToPhys(iova)
        case .armLPAEStage2Granule4K(let table): table.iovaToPhys(iova)
        case .armLPAEStage2Granule16K(let table): table.iovaToPhys(iova)
        case .armLPAEStage2Granule64K(let table): table.iovaToPhys(iova)
        case .appleDART(let table): table.iovaToPhys(iova)
        case .appleDART2(let table): table.iovaToPhys(iova)
        }
    }

    /// See `IOPageTable.leafDescriptor(_:)`.
    public func leafDescriptor(_ iova: IOVA) -> (descriptor: UInt64, level: Int)? {
        switch self {
        case .armLPAEStage1Granule4K(let table): table.leafDescriptor(iova)
        case .armLPAEStage1Granule16K(let table): table.leafDescriptor(iova)
        case .armLPAEStage1Granule64K(let table): table.leafDescriptor(iova)
        case .armLPAEStage2Granule4K(let table): table.leafDescriptor(iova)
        case .armLPAEStage2Granule16K(let table): table.leafDescriptor(iova)
        case .armLPAEStage2Granule64K(let table): table.leafDescriptor(iova)
        case .appleDART(let table): table.leafDescriptor(iova)
        case .appleDART2(let table): table.leafDescriptor(iova)
        }
    }

    /// See `IOPageTable.map(iova:paddr:pageSize:count:prot:invalidator:)`.
    @inlinable public func map<I: TLBInvalidator & ~Copyable>(iova: IOVA, paddr: PhysAddr, pageSize: PageSize, count: Int, prot: IOMMUProt, invalidator: inout I) throws(IOMMUError) -> UInt64 {
        switch self {
        case .armLPAEStage1Granule4K(let table): return try table.map(iova: iova, paddr: paddr, pageSize: pageSize, count: count, prot: prot, invalidator: &invalidator)
        case .armLPAEStage1Granule16K(let table): return try table.map(iova: iova, paddr: paddr, pageSize: pageSize, count: count, prot: prot, invalidator: &invalidator)
        case .armLPAEStage1Granule64K(let table): return try table.map(iova: iova, paddr: paddr, pageSize: pageSize, count: count, prot: prot, invalidator: &invalidator)
        case .armLPAEStage2Granule4K(let table): return try table.map(iova: iova, paddr: paddr, pageSize: pageSize, count: count, prot: prot, invalidator: &invalidator)
        case .armLPAEStage2Granule16K(let table): return try table.map(iova: iova, paddr: paddr, pageSize: pageSize, count: count, prot: prot, invalidator: &invalidator)
        case .armLPAEStage2Granule64K(let table): return try table.map(iova: iova, paddr: paddr, pageSize: pageSize, count: count, prot: prot, invalidator: &invalidator)
        case .appleDART(let table): return try table.map(iova: iova, paddr: paddr, pageSize: pageSize, count: count, prot: prot, invalidator: &invalidator)
        case .appleDART2(let table): return try table.map(iova: iova, paddr: paddr, pageSize: pageSize, count: count, prot: prot, invalidator: &invalidator)
        }
    }

    /// See `IOPageTable.unmap(iova:pageSize:count:gather:invalidator:)`.
    @inlinable public func unmap<I: TLBInvalidator & ~Copyable>(iova: IOVA, pageSize: PageSize, count: Int, gather: inout IOTLBGather, invalidator: inout I) -> UInt64 {
        switch self {
        case .armLPAEStage1Granule4K(let table): return table.unmap(iova: iova, pageSize: pageSize, count: count, gather: &gather, invalidator: &invalidator)
        case .armLPAEStage1Granule16K(let table): return table.unmap(iova: iova, pageSize: pageSize, count: count, gather: &gather, invalidator: &invalidator)
        case .armLPAEStage1Granule64K(let table): return table.unmap(iova: iova, pageSize: pageSize, count: count, gather: &gather, invalidator: &invalidator)
        case .armLPAEStage2Granule4K(let table): return table.unmap(iova: iova, pageSize: pageSize, count: count, gather: &gather, invalidator: &invalidator)
        case .armLPAEStage2Granule16K(let table): return table.unmap(iova: iova, pageSize: pageSize, count: count, gather: &gather, invalidator: &invalidator)
        case .armLPAEStage2Granule64K(let table): return table.unmap(iova: iova, pageSize: pageSize, count: count, gather: &gather, invalidator: &invalidator)
        case .appleDART(let table): return table.unmap(iova: iova, pageSize: pageSize, count: count, gather: &gather, invalidator: &invalidator)
        case .appleDART2(let table): return table.unmap(iova: iova, pageSize: pageSize, count: count, gather: &gather, invalidator: &invalidator)
        }
    }

    /// See `IOPageTable.map(iova:paddr:length:prot:invalidator:)` (Linux `__iommu_map`).
    public func map<I: TLBInvalidator & ~Copyable>(iova: IOVA, paddr: PhysAddr, length: UInt64, prot: IOMMUProt, invalidator: inout I) throws(IOMMUError) {
        switch self {
        case .armLPAEStage1Granule4K(let table): try table.map(iova: iova, paddr: paddr, length: length, prot: prot, invalidator: &invalidator)
        case .armLPAEStage1Granule16K(let table): try table.map(iova: iova, paddr: paddr, length: length, prot: prot, invalidator: &invalidator)
        case .armLPAEStage1Granule64K(let table): try table.map(iova: iova, paddr: paddr, length: length, prot: prot, invalidator: &invalidator)
        case .armLPAEStage2Granule4K(let table): try table.map(iova: iova, paddr: paddr, length: length, prot: prot, invalidator: &invalidator)
        case .armLPAEStage2Granule16K(let table): try table.map(iova: iova, paddr: paddr, length: length, prot: prot, invalidator: &invalidator)
        case .armLPAEStage2Granule64K(let table): try table.map(iova: iova, paddr: paddr, length: length, prot: prot, invalidator: &invalidator)
        case .appleDART(let table): try table.map(iova: iova, paddr: paddr, length: length, prot: prot, invalidator: &invalidator)
        case .appleDART2(let table): try table.map(iova: iova, paddr: paddr, length: length, prot: prot, invalidator: &invalidator)
        }
    }

    /// See `IOPageTable.unmap(iova:length:gather:invalidator:)` (Linux `__iommu_unmap`).
    public func unmap<I: TLBInvalidator & ~Copyable>(iova: IOVA, length: UInt64, gather: inout IOTLBGather, invalidator: inout I) -> UInt64 {
        switch self {
        case .armLPAEStage1Granule4K(let table): return table.unmap(iova: iova, length: length, gather: &gather, invalidator: &invalidator)
        case .armLPAEStage1Granule16K(let table): return table.unmap(iova: iova, length: length, gather: &gather, invalidator: &invalidator)
        case .armLPAEStage1Granule64K(let table): return table.unmap(iova: iova, length: length, gather: &gather, invalidator: &invalidator)
        case .armLPAEStage2Granule4K(let table): return table.unmap(iova: iova, length: length, gather: &gather, invalidator: &invalidator)
        case .armLPAEStage2Granule16K(let table): return table.unmap(iova: iova, length: length, gather: &gather, invalidator: &invalidator)
        case .armLPAEStage2Granule64K(let table): return table.unmap(iova: iova, length: length, gather: &gather, invalidator: &invalidator)
        case .appleDART(let table): return table.unmap(iova: iova, length: length, gather: &gather, invalidator: &invalidator)
        case .appleDART2(let table): return table.unmap(iova: iova, length: length, gather: &gather, invalidator: &invalidator)
        }
    }

    /// See `IOPageTable.readAndClearDirty(iova:length:clear:record:)`.
    public func readAndClearDirty(iova: IOVA, length: UInt64, clear: Bool = true, record: (IOVA, UInt64) -> Void) throws(IOMMUError) {
        switch self {
        case .armLPAEStage1Granule4K(let table): try table.readAndClearDirty(iova: iova, length: length, clear: clear, record: record)
        case .armLPAEStage1Granule16K(let table): try table.readAndClearDirty(iova: iova, length: length, clear: clear, record: record)
        case .armLPAEStage1Granule64K(let table): try table.readAndClearDirty(iova: iova, length: length, clear: clear, record: record)
        case .armLPAEStage2Granule4K(let table): try table.readAndClearDirty(iova: iova, length: length, clear: clear, record: record)
        case .armLPAEStage2Granule16K(let table): try table.readAndClearDirty(iova: iova, length: length, clear: clear, record: record)
        case .armLPAEStage2Granule64K(let table): try table.readAndClearDirty(iova: iova, length: length, clear: clear, record: record)
        case .appleDART(let table): try table.readAndClearDirty(iova: iova, length: length, clear: clear, record: record)
        case .appleDART2(let table): try table.readAndClearDirty(iova: iova, length: length, clear: clear, record: record)
        }
    }
}

extension IOPageTable where Format: PageTableFormat {
    /// The format family (`Format.kind`).
    @inlinable public var formatKind: PageTableFormatKind { Format.kind }
}
