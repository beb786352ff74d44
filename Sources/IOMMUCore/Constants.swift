import IOMMUBase

// MARK: - Domain types

/// The type of an IOMMU domain: a set of Linux's `__IOMMU_DOMAIN_*` bits.
///
/// Linux: `IOMMU_DOMAIN_BLOCKED` (0), `IOMMU_DOMAIN_IDENTITY` (PT, 4), `IOMMU_DOMAIN_UNMANAGED`
/// (PAGING, 1), `IOMMU_DOMAIN_DMA` (PAGING|DMA_API, 3), `IOMMU_DOMAIN_DMA_FQ`
/// (PAGING|DMA_API|DMA_FQ, 11). The raw values are Linux's.
@frozen
public struct IOMMUDomainType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Linux: `__IOMMU_DOMAIN_PAGING` (bit 0): supports map/unmap.
    public static var pagingBit: UInt32 { 1 << 0 }
    /// Linux: `__IOMMU_DOMAIN_DMA_API` (bit 1): used by the DMA API.
    public static var dmaAPIBit: UInt32 { 1 << 1 }
    /// Linux: `__IOMMU_DOMAIN_PT` (bit 2): identity mapped.
    public static var passthroughBit: UInt32 { 1 << 2 }
    /// Linux: `__IOMMU_DOMAIN_DMA_FQ` (bit 3): DMA API with a flush queue.
    public static var dmaFQBit: UInt32 { 1 << 3 }

    /// All DMA is blocked. Linux: `IOMMU_DOMAIN_BLOCKED`.
    public static let blocked = IOMMUDomainType(rawValue: 0)
    /// DMA addresses are system physical addresses. Linux: `IOMMU_DOMAIN_IDENTITY`.
    public static let identity = IOMMUDomainType(rawValue: 4)
    /// Paging domain managed by a user (VFIO, iommufd). Linux: `IOMMU_DOMAIN_UNMANAGED`.
    public static let unmanaged = IOMMUDomainType(rawValue: 1)
    /// Paging domain used by the DMA API, strict invalidation. Linux: `IOMMU_DOMAIN_DMA`.
    public static let dma = IOMMUDomainType(rawValue: 3)
    /// Paging domain used by the DMA API with a flush queue. Linux: `IOMMU_DOMAIN_DMA_FQ`.
    public static let dmaFQ = IOMMUDomainType(rawValue: 11)

    /// The domain supports map/unmap.
    @inlinable public var isPaging: Bool { rawValue & Self.pagingBit != 0 }
    /// The domain is used by the DMA API (DMA or DMA-FQ). Linux: `iommu_is_dma_domain()`.
    @inlinable public var isDMAAPI: Bool { rawValue & Self.dmaAPIBit != 0 }

    /// The name Linux prints in messages (`iommu_domain_type_str`): "Blocked", "Passthrough",
    /// "Unmanaged", "Translated" (DMA and DMA-FQ), "Unknown".
    public var displayName: String { IOMMUWarning.domainTypeDisplayName(rawValue) }

    /// The group sysfs `type` attribute spelling: "blocked", "identity", "unmanaged", "DMA",
    /// "DMA-FQ", "unknown".
    public var sysfsName: String {
        switch self {
        case .blocked: "blocked"
        case .identity: "identity"
        case .unmanaged: "unmanaged"
        case .dma: "DMA"
        case .dmaFQ: "DMA-FQ"
        default: "unknown"
        }
    }

    public var description: String { sysfsName }
}

// MARK: - Reserved regions

/// The type of a reserved region. The order matters: regions sort by `(start, type)`.
///
/// Linux: `enum iommu_resv_type`.
@frozen
public enum ReservedRegionType: UInt8, Hashable, Sendable, Comparable, CaseIterable, CustomStringConvertible {
    /// Must be identity mapped. Linux: `IOMMU_RESV_DIRECT`.
    case direct = 0
    /// Identity mapping advertised, but may be relaxed (device assignment). Linux: `IOMMU_RESV_DIRECT_RELAXABLE`.
    case directRelaxable = 1
    /// Never map. Linux: `IOMMU_RESV_RESERVED`.
    case reserved = 2
    /// Hardware MSI window, untranslated. Linux: `IOMMU_RESV_MSI`.
    case msi = 3
    /// Software-managed MSI translation window. Linux: `IOMMU_RESV_SW_MSI`.
    case swMSI = 4

    @inlinable public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }

    /// The name the group's sysfs `reserved_regions` file prints ("msi" for both MSI types).
    public var sysfsName: String {
        switch self {
        case .direct: "direct"
        case .directRelaxable: "direct-relaxable"
        case .reserved: "reserved"
        case .msi, .swMSI: "msi"
        }
    }

    public var description: String { sysfsName }
}

/// A range a device's IOMMU mapping must treat specially.
///
/// Linux: `struct iommu_resv_region` (`start` is a `phys_addr_t`; for DIRECT regions it is both
/// the IOVA and the physical address, for MSI windows it is an IOVA).
public struct ReservedRegion: Hashable, Sendable, CustomStringConvertible {
    public var start: UInt64
    public var length: UInt64
    public var prot: IOMMUProt
    public var type: ReservedRegionType

    public init(start: UInt64, length: UInt64, prot: IOMMUProt, type: ReservedRegionType) {
        self.start = start
        self.length = length
        self.prot = prot
        self.type = type
    }

    /// The inclusive last address (`start + length - 1`, wrapping as Linux's arithmetic does).
    @inlinable public var last: UInt64 { start &+ length &- 1 }

    /// The software MSI window every ARM SMMU driver reports: IOVA 0x8000000, 1 MiB,
    /// WRITE|NOEXEC|MMIO. Linux: `MSI_IOVA_BASE`/`MSI_IOVA_LENGTH` in arm-smmu.c.
    public static var armSMMUSoftwareMSI: ReservedRegion {
        ReservedRegion(start: 0x800_0000, length: 0x10_0000, prot: [.write, .noExec, .mmio], type: .swMSI)
    }

    /// One sysfs line: `0x%016llx 0x%016llx %s\n` (start, inclusive end, type name).
    public var sysfsLine: String {
        hex16(start) + " " + hex16(last) + " " + type.sysfsName + "\n"
    }

    public var description: String { "[\(hex16(start)), \(hex16(last))] \(type) \(prot)" }
}

// MARK: - Capabilities

/// Optional IOMMU capabilities a driver can report. Linux: `enum iommu_cap`.
public enum IOMMUCapability: Hashable, Sendable, CaseIterable {
    /// Linux: `IOMMU_CAP_CACHE_COHERENCY`.
    case cacheCoherency
    /// Linux: `IOMMU_CAP_NOEXEC`.
    case noExec
    /// Linux: `IOMMU_CAP_PRE_BOOT_PROTECTION`.
    case preBootProtection
    /// Linux: `IOMMU_CAP_ENFORCE_CACHE_COHERENCY`.
    case enforceCacheCoherency
    /// The driver supports a flush queue (DMA-FQ). Linux: `IOMMU_CAP_DEFERRED_FLUSH`.
    case deferredFlush
    /// Linux: `IOMMU_CAP_DIRTY_TRACKING`.
    case dirtyTracking
}

// MARK: - Geometry

/// The IOVA window of a domain. Linux: `struct iommu_domain_geometry`.
public struct DomainGeometry: Hashable, Sendable {
    /// First usable IOVA. Linux: `aperture_start`.
    public var apertureStart: IOVA
    /// Last usable IOVA (inclusive). Linux: `aperture_end`.
    public var apertureEnd: IOVA
    /// DMA is only possible inside the aperture. Linux: `force_aperture`.
    public var forceAperture: Bool

    public init(apertureStart: IOVA = IOVA(0), apertureEnd: IOVA = IOVA(UInt64.max), forceAperture: Bool = false) {
        self.apertureStart = apertureStart
        self.apertureEnd = apertureEnd
        self.forceAperture = forceAperture
    }
}

// MARK: - IOTLB gather

// MARK: - Helpers

/// `0x%016llx`.
func hex16(_ value: UInt64) -> String {
    let digits = String(value, radix: 16)
    return "0x" + String(repeating: "0", count: max(0, 16 - digits.count)) + digits
}
