import IOMMUBase

/// Direction of a DMA transfer. Linux: `enum dma_data_direction` (same raw values).
public enum DMADirection: UInt8, Hashable, Sendable, CaseIterable, CustomStringConvertible {
    case bidirectional = 0
    case toDevice = 1
    case fromDevice = 2
    case none = 3

    /// IOMMU permissions for a mapping in this direction. Linux: `dma_info_to_prot()` (coherent
    /// device: `IOMMU_CACHE` added).
    @inlinable
    public func prot(coherent: Bool = true) -> IOMMUProt {
        var prot: IOMMUProt = coherent ? .cache : []
        switch self {
        case .bidirectional: prot.formUnion([.read, .write])
        case .toDevice: prot.insert(.read)
        case .fromDevice: prot.insert(.write)
        case .none: break
        }
        return prot
    }

    /// Whether the device may read the buffer (data flows CPU → device).
    @inlinable public var deviceReads: Bool { self == .bidirectional || self == .toDevice }
    /// Whether the device may write the buffer (data flows device → CPU).
    @inlinable public var deviceWrites: Bool { self == .bidirectional || self == .fromDevice }

    public var description: String { IOMMUWarning.dmaDirectionName(rawValue) }
}

/// What kind of DMA-API call made a mapping (the debug layer checks unmaps against it).
public enum DMAMappingKind: UInt8, Hashable, Sendable {
    case page = 0
    case scatterGather = 1
    case coherent = 2
}
