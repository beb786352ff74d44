import IOMMUBase
import IOMMUCore
import Synchronization

/// A minimal IOMMU driver for benchmarks and tests of the DMA layer when no hardware model is
/// wanted: 4 KiB pages only, a flat one-level page table of atomic entries covering
/// `[0, coverage)`, and a small direct-mapped IOTLB that — like real hardware — keeps translations
/// until invalidated, so a device can reach an unmapped IOVA through a stale entry.
///
/// Not Linux; a platform stand-in. `IOMMUHardware`'s SMMU model is the faithful one.
public final class FlatIOMMUDriver: IOMMUDriver {
    public let name: String
    public let coverage: UInt64
    public let deferredFlush: Bool
    public let defaultType: IOMMUDomainType?
    let domains = IOMMUMutex<[UInt64: FlatDomainOps]>([:])

    /// - Parameters:
    ///   - coverage: IOVA bytes the flat table covers (the domain aperture); default 4 GiB.
    ///   - deferredFlush: report `IOMMU_CAP_DEFERRED_FLUSH` (needed for DMA-FQ).
    ///   - defaultType: the driver's `def_domain_type` answer.
    public init(name: String = "flat-iommu", coverage: UInt64 = 1 << 32, deferredFlush: Bool = true, defaultType: IOMMUDomainType? = nil) {
        self.name = name
        self.coverage = coverage
        self.deferredFlush = deferredFlush
        self.defaultType = defaultType
    }

    public var pageSizes: PageSizeBitmap { PageSizeBitmap([.size4K]) }
    public func probeDevice(_ device: IOMMUDeviceInfo) throws(IOMMUError) {}
    public func releaseDevice(_ device: IOMMUDeviceInfo) {}
    public func deviceGroup(_ device: IOMMUDeviceInfo) throws(IOMMUError) -> IOMMUGroupChoice { .pciDefault }
    public func defaultDomainType(for device: IOMMUDeviceInfo) -> IOMMUDomainType? { defaultType }

    public func allocateDomain(type: IOMMUDomainType, for device: IOMMUDeviceInfo?) throws(IOMMUError) -> any IOMMUDomainOps {
        guard type.isPaging else { return NonPagingDomainOps() }
        return FlatDomainOps(pages: Int(coverage >> 12))
    }

    public func finaliseDomain(_ domain: IOMMUDomain, for device: IOMMUDeviceInfo) throws(IOMMUError) {
        guard domain.type.isPaging else { return }
        domain.setGeometry(DomainGeometry(apertureStart: IOVA(0), apertureEnd: IOVA(coverage - 1), forceAperture: true))
    }

    public func attachDevice(_ device: IOMMUDeviceInfo, to domain: IOMMUDomain) throws(IOMMUError) {}

    public func capable(_ capability: IOMMUCapability, device: IOMMUDeviceInfo) -> Bool {
        capability == .deferredFlush ? deferredFlush : capability == .cacheCoherency
    }
}

/// The flat page table and IOTLB of `FlatIOMMUDriver`.
public final class FlatDomainOps: IOMMUDomainOps, @unchecked Sendable {  // atomics behind pointers
    static var validBit: UInt64 { 1 }
    static var readBit: UInt64 { 2 }
    static var writeBit: UInt64 { 4 }
    static var tlbSlots: Int { 64 }

    let entries: UnsafeMutablePointer<Atomic<UInt64>>
    let pageCount: Int
    /// IOTLB: per slot, tag (pfn + 1, 0 = empty) and the cached entry.
    let tlbTags: UnsafeMutablePointer<Atomic<UInt64>>
    let tlbData: UnsafeMutablePointer<Atomic<UInt64>>
    public let flushAllCount = Atomic<UInt64>(0)
    public let rangeSyncCount = Atomic<UInt64>(0)

    init(pages: Int) {
        pageCount = pages
        entries = .allocate(capacity: pages)
        for i in 0..<pages { (entries + i).initialize(to: Atomic(0)) }
        tlbTags = .allocate(capacity: Self.tlbSlots)
        tlbData = .allocate(capacity: Self.tlbSlots)
        for i in 0..<Self.tlbSlots {
            (tlbTags + i).initialize(to: Atomic(0))
            (tlbData + i).initialize(to: Atomic(0))
        }
    }

    deinit {
        entries.deinitialize(count: pageCount)
        entries.deallocate()
        tlbTags.deinitialize(count: Self.tlbSlots)
        tlbTags.deallocate()
        tlbData.deinitialize(count: Self.tlbSlots)
        tlbData.deallocate()
    }

    public func mapPages(
        iova: IOVA, paddr: PhysAddr, pageSize: PageSize, count: UInt64, prot: IOMMUProt, mapped: inout UInt64
    ) throws(IOMMUError) {
        let first = iova.rawValue >> 12
        guard first &+ count <= UInt64(pageCount) else { throw IOMMUError(.addressOutOfRange, address: iova.rawValue) }
        var bits = Self.validBit
        if prot.contains(.read) { bits |= Self.readBit }
        if prot.contains(.write) { bits |= Self.writeBit }
        for i in 0..<count {
            let (done, _) = entries[Int(first &+ i)].compareExchange(
                expected: 0, desired: (paddr.rawValue &+ (i << 12)) | bits, ordering: .relaxed)
            guard done else { throw IOMMUError(.alreadyMapped, address: (first &+ i) << 12) }
            mapped &+= 4096
        }
    }

    public func unmapPages(iova: IOVA, pageSize: PageSize, count: UInt64, gather: inout IOTLBGather) -> UInt64 {
        let first = iova.rawValue >> 12
        var unmapped: UInt64 = 0
        var i: UInt64 = 0
        while i < count, first &+ i < UInt64(pageCount) {
            if entries[Int(first &+ i)].exchange(0, ordering: .relaxed) == 0 { break }
            unmapped &+= 4096
            i &+= 1
        }
        gather.addRange(iova: iova, length: unmapped)
        return unmapped
    }

    public func iovaToPhys(_ iova: IOVA) -> PhysAddr? {
        let pfn = iova.rawValue >> 12
        guard pfn < UInt64(pageCount) else { return nil }
        let e = entries[Int(pfn)].load(ordering: .relaxed)
        guard e & Self.validBit != 0 else { return nil }
        return PhysAddr((e & ~0xFFF) | (iova.rawValue & 0xFFF))
    }

    public func flushIOTLBAll() {
        flushAllCount.wrappingAdd(1, ordering: .relaxed)
        for i in 0..<Self.tlbSlots { tlbTags[i].store(0, ordering: .relaxed) }
    }

    public func iotlbSync(_ gather: inout IOTLBGather) {
        guard !gather.isEmpty else { return }
        rangeSyncCount.wrappingAdd(1, ordering: .relaxed)
        var pfn = gather.start >> 12
        let last = gather.end >> 12
        if last - pfn >= UInt64(Self.tlbSlots) {
            for i in 0..<Self.tlbSlots { tlbTags[i].store(0, ordering: .relaxed) }
            return
        }
        while pfn <= last {
            let slot = Int(pfn % UInt64(Self.tlbSlots))
            if tlbTags[slot].load(ordering: .relaxed) == pfn &+ 1 { tlbTags[slot].store(0, ordering: .relaxed) }
            pfn &+= 1
        }
    }

    /// A device access through the IOTLB: hit → the cached translation (possibly stale), miss →
    /// walk and fill. For single-threaded device models.
    public func deviceTranslate(_ iova: IOVA, isWrite: Bool) -> FlatTranslation {
        let pfn = iova.rawValue >> 12
        let slot = Int(pfn % UInt64(Self.tlbSlots))
        var entry: UInt64
        var fromTLB = false
        if tlbTags[slot].load(ordering: .relaxed) == pfn &+ 1 {
            entry = tlbData[slot].load(ordering: .relaxed)
            fromTLB = true
        } else {
            guard pfn < UInt64(pageCount) else { return .fault }
            entry = entries[Int(pfn)].load(ordering: .relaxed)
            guard entry & Self.validBit != 0 else { return .fault }
            tlbData[slot].store(entry, ordering: .relaxed)
            tlbTags[slot].store(pfn &+ 1, ordering: .relaxed)
        }
        guard entry & (isWrite ? Self.writeBit : Self.readBit) != 0 else { return .permissionFault }
        let stale = fromTLB && entries[Int(pfn)].load(ordering: .relaxed) != entry
        return .translated(PhysAddr((entry & ~0xFFF) | (iova.rawValue & 0xFFF)), stale: stale)
    }
}

/// Result of `FlatDomainOps.deviceTranslate`.
public enum FlatTranslation: Hashable, Sendable {
    case translated(PhysAddr, stale: Bool)
    case fault
    case permissionFault
}
