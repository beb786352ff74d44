import IOMMUBase
import IOMMUCore
import IOPageTable

/// The page-table format and granule of one virtio domain.
///
/// Chosen per domain, when the ATTACH that creates it arrives, from the attaching endpoint's
/// `VirtioEndpointConfiguration.table` (or the device default). This is the "per-domain
/// granule" QEMU users have asked for: a domain's table granule may be anything that divides the
/// device granule (the lowest bit of `page_size_mask`), so every MAP the guest may send stays
/// representable.
public struct VirtioTableSpec: Hashable, Sendable, CustomStringConvertible {
    public var kind: PageTableFormatKind
    public var granule: PageSize

    public init(kind: PageTableFormatKind, granule: PageSize) {
        self.kind = kind
        self.granule = granule
    }

    /// Arm LPAE stage 2, 4 KiB: separate read and write permission bits, so READ-only,
    /// WRITE-only mappings are enforced by the walk exactly (the default).
    public static let stage2Granule4K = VirtioTableSpec(kind: .armLPAEStage2, granule: .size4K)

    public var description: String { "\(kind)/\(granule.bytes >> 10)K" }
}

/// Resource limits a VMM configures; a request that would exceed one answers NOMEM.
public struct VirtioIOMMULimits: Hashable, Sendable {
    /// Live domains at once (ATTACH that would create one more → NOMEM).
    public var maxDomains: Int
    /// Endpoints the VMM may add (`addEndpoint` beyond it throws ENOMEM).
    public var maxEndpoints: Int
    /// Mappings per domain (MAP beyond it → NOMEM).
    public var maxMappingsPerDomain: Int

    public init(maxDomains: Int = 1 << 16, maxEndpoints: Int = 1 << 16, maxMappingsPerDomain: Int = 1 << 20) {
        self.maxDomains = maxDomains
        self.maxEndpoints = maxEndpoints
        self.maxMappingsPerDomain = maxMappingsPerDomain
    }
}

/// How the VMM configures a virtio-iommu device.
public struct VirtioIOMMUConfiguration: Sendable {
    /// Features offered to the driver. `mapUnmap` should be offered; `legacyBypass` should not
    /// be offered by a new device, and never together with `bypassConfig`.
    public var offeredFeatures: VirtioIOMMUFeatures
    /// `page_size_mask`: the lowest set bit is the mapping granule (at least 4 KiB here, because
    /// domains are backed by real page tables); higher bits are hints.
    public var pageSizeMask: UInt64
    /// `input_range`, inclusive. Must end below 2^48 (the widest table input size); always
    /// offered with INPUT_RANGE for that reason unless the VMM removes the feature.
    public var inputFirst: UInt64
    public var inputLast: UInt64
    /// `domain_range`, inclusive. The default stays below 2^31 (Linux's ID allocator, E63).
    public var domainFirst: UInt32
    public var domainLast: UInt32
    /// `probe_size`: bytes of the PROBE properties area (512 as QEMU: 21 RESV_MEM properties).
    public var probeSize: UInt32
    /// The initial (and system-reset) value of the `bypass` byte: "boot bypass".
    public var bootBypass: Bool
    /// Table format and granule of domains created by endpoints without their own choice.
    public var defaultTable: VirtioTableSpec
    /// Output (physical) address bits of the domains' tables.
    public var outputAddressBits: Int
    /// The platform MSI doorbell window reported as a RESV_MEM MSI property for every endpoint
    /// (x86: 0xfee00000–0xfeefffff); nil for none (the guest then maps the doorbell with MMIO).
    public var msiWindow: ClosedRange<UInt64>?
    /// IOVA ranges the host's IOMMU can use (VFIO/iommufd); their complement inside the input
    /// range becomes RESERVED regions of every endpoint. nil: no host restriction.
    public var hostUsableIOVARanges: [ClosedRange<UInt64>]?
    public var limits: VirtioIOMMULimits

    public init(
        offeredFeatures: VirtioIOMMUFeatures = [.version1, .inputRange, .domainRange, .mapUnmap, .probe, .mmio, .bypassConfig],
        pageSizeMask: UInt64 = 0x4020_1000,
        inputRange: ClosedRange<UInt64> = 0...((1 << 48) - 1),
        domainRange: ClosedRange<UInt32> = 0...0x7FFF_FFFF,
        probeSize: UInt32 = 512,
        bootBypass: Bool = false,
        defaultTable: VirtioTableSpec = .stage2Granule4K,
        outputAddressBits: Int = 48,
        msiWindow: ClosedRange<UInt64>? = 0xFEE0_0000...0xFEEF_FFFF,
        hostUsableIOVARanges: [ClosedRange<UInt64>]? = nil,
        limits: VirtioIOMMULimits = VirtioIOMMULimits()
    ) {
        self.offeredFeatures = offeredFeatures
        self.pageSizeMask = pageSizeMask
        self.inputFirst = inputRange.lowerBound
        self.inputLast = inputRange.upperBound
        self.domainFirst = domainRange.lowerBound
        self.domainLast = domainRange.upperBound
        self.probeSize = probeSize
        self.bootBypass = bootBypass
        self.defaultTable = defaultTable
        self.outputAddressBits = outputAddressBits
        self.msiWindow = msiWindow
        self.hostUsableIOVARanges = hostUsableIOVARanges
        self.limits = limits
    }

    /// The mapping granule: the lowest set bit of `page_size_mask`.
    public var granule: UInt64 { pageSizeMask & (~pageSizeMask &+ 1) }

    /// Input address bits the domains' tables need to cover `input_range`.
    var tableInputBits: Int { max(32, 64 - inputLast.leadingZeroBitCount) }

    /// The page-table configuration of a domain with `spec`: LPAE covers the input range;
    /// DART covers at most 36 (DART) or 38 (DART2, four TTBRs) bits, with its fixed output sizes.
    /// MAPs above what a domain's table covers answer RANGE.
    func pageTableConfiguration(for spec: VirtioTableSpec) -> PageTableConfiguration {
        switch spec.kind {
        case .armLPAEStage1, .armLPAEStage2:
            PageTableConfiguration(ias: tableInputBits, oas: outputAddressBits)
        case .appleDART:
            PageTableConfiguration(ias: min(tableInputBits, 36), oas: 36)
        case .appleDART2:
            PageTableConfiguration(ias: min(tableInputBits, 38), oas: 42)
        }
    }
}

/// How the VMM describes one endpoint.
public struct VirtioEndpointConfiguration: Sendable {
    /// The IOMMUKit device; nil: a PCI function whose requester ID is the endpoint ID.
    public var device: DeviceDescription?
    /// Table format/granule of a domain this endpoint creates; nil: the device default.
    public var table: VirtioTableSpec?
    /// Further reserved regions of this endpoint (besides the device-wide ones and the
    /// device description's firmware regions).
    public var reservedRegions: [ReservedRegion]
    /// IOVA ranges this endpoint's host IOMMU can use (e.g. its VFIO container); complement
    /// reported as RESERVED.
    public var hostUsableIOVARanges: [ClosedRange<UInt64>]?

    public init(
        device: DeviceDescription? = nil, table: VirtioTableSpec? = nil,
        reservedRegions: [ReservedRegion] = [], hostUsableIOVARanges: [ClosedRange<UInt64>]? = nil
    ) {
        self.device = device
        self.table = table
        self.reservedRegions = reservedRegions
        self.hostUsableIOVARanges = hostUsableIOVARanges
    }
}

/// One RESV_MEM region as PROBE reports it.
public struct VirtioReservedRegion: Hashable, Sendable, CustomStringConvertible {
    /// `VIRTIO_IOMMU_RESV_MEM_T_RESERVED` (0) or `_MSI` (1).
    public var subtype: UInt8
    public var first: UInt64
    public var last: UInt64

    public init(subtype: UInt8, first: UInt64, last: UInt64) {
        self.subtype = subtype
        self.first = first
        self.last = last
    }

    public var isMSI: Bool { subtype == VirtioIOMMUWire.resvMemMSI }

    public var description: String {
        (isMSI ? "msi " : "reserved ") + "[0x" + String(first, radix: 16) + ", 0x" + String(last, radix: 16) + "]"
    }
}
