import IOMMUBase

// MARK: - Buses

/// What kind of bus a device sits on; PCI devices get PCI grouping and trust rules.
public enum BusKind: Hashable, Sendable {
    case pci
    case platform
}

// MARK: - PCI

/// A PCI function address: segment, bus, device (slot) and function.
///
/// Printed as Linux names PCI devices: "0000:00:03.0".
public struct PCIAddress: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var segment: UInt16
    public var bus: UInt8
    /// Slot number, 0...31.
    public var device: UInt8
    /// Function number, 0...7.
    public var function: UInt8

    public init(segment: UInt16 = 0, bus: UInt8, device: UInt8, function: UInt8) {
        precondition(device < 32 && function < 8, "PCI device must be < 32 and function < 8")
        self.segment = segment
        self.bus = bus
        self.device = device
        self.function = function
    }

    /// `devfn` as Linux packs it: device << 3 | function.
    public var devfn: UInt8 { device << 3 | function }

    public static func < (a: Self, b: Self) -> Bool {
        (a.segment, a.bus, a.devfn) < (b.segment, b.bus, b.devfn)
    }

    public var description: String {
        func hex(_ value: UInt64, _ width: Int) -> String {
            let digits = String(value, radix: 16)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return hex(UInt64(segment), 4) + ":" + hex(UInt64(bus), 2) + ":" + hex(UInt64(device), 2) + "."
            + String(function)
    }
}

/// Firmware facts about a PCI function that matter to the IOMMU core.
public struct PCIDeviceFirmware: Hashable, Sendable {
    /// The function's address; the device is named after it.
    public var address: PCIAddress
    /// Requester IDs the function also uses for DMA (quirks, PCIe-to-PCI bridges).
    /// Linux: `pci_for_each_dma_alias()`.
    public var dmaAliases: [PCIAddress]
    /// True when every bridge on the path to the root, and the function itself, has full ACS
    /// isolation (SV, RR, CR, UF), so it cannot talk to peers without going through the IOMMU.
    public var acsIsolated: Bool
    /// External-facing (e.g. Thunderbolt): gets a strict DMA domain and never large IOMMU pages.
    /// Linux: `pci_dev->untrusted`.
    public var untrusted: Bool

    public init(address: PCIAddress, dmaAliases: [PCIAddress] = [], acsIsolated: Bool = true, untrusted: Bool = false) {
        self.address = address
        self.dmaAliases = dmaAliases
        self.acsIsolated = acsIsolated
        self.untrusted = untrusted
    }
}

// MARK: - Firmware IOMMU description

/// Which IOMMU instance a device masters through, and with which stream IDs.
///
/// Linux: `struct iommu_fwspec` (`iommu_fwnode` + `ids[]`), filled from DT `iommus` / IORT.
public struct FirmwareIOMMUSpec: Hashable, Sendable {
    /// The firmware name of the IOMMU instance (e.g. "smmu@2b400000"); matches the name the
    /// instance registers with.
    public var iommu: String
    /// The stream IDs the device's transactions carry.
    public var streamIDs: [StreamID]

    public init(iommu: String, streamIDs: [StreamID]) {
        self.iommu = iommu
        self.streamIDs = streamIDs
    }
}

/// Everything the platform knows about a device when it appears on its bus.
public struct DeviceDescription: Hashable, Sendable {
    /// Device name; for PCI devices `nil` means "the PCI address" ("0000:00:03.0").
    public var name: String?
    /// The bus the device sits on (a name registered with `IOMMUCore.registerBus`).
    public var bus: String
    /// The device's IOMMU connection; `nil` = not behind any IOMMU.
    public var iommu: FirmwareIOMMUSpec?
    /// PCI facts, for devices on a PCI bus.
    public var pci: PCIDeviceFirmware?
    /// Firmware reserved regions for this device (IORT RMRs, DT reserved-memory, RMRRs).
    public var firmwareReservedRegions: [ReservedRegion]

    public init(
        name: String? = nil, bus: String, iommu: FirmwareIOMMUSpec?, pci: PCIDeviceFirmware? = nil,
        firmwareReservedRegions: [ReservedRegion] = []
    ) {
        self.name = name
        self.bus = bus
        self.iommu = iommu
        self.pci = pci
        self.firmwareReservedRegions = firmwareReservedRegions
    }

    /// A PCI function named after its address.
    public static func pci(
        _ address: PCIAddress, iommu: FirmwareIOMMUSpec?, dmaAliases: [PCIAddress] = [],
        acsIsolated: Bool = true, untrusted: Bool = false, bus: String = "pci",
        firmwareReservedRegions: [ReservedRegion] = []
    ) -> DeviceDescription {
        DeviceDescription(
            name: nil, bus: bus, iommu: iommu,
            pci: PCIDeviceFirmware(address: address, dmaAliases: dmaAliases, acsIsolated: acsIsolated, untrusted: untrusted),
            firmwareReservedRegions: firmwareReservedRegions)
    }

    /// A platform device.
    public static func platform(
        _ name: String, iommu: FirmwareIOMMUSpec?, bus: String = "platform",
        firmwareReservedRegions: [ReservedRegion] = []
    ) -> DeviceDescription {
        DeviceDescription(name: name, bus: bus, iommu: iommu, firmwareReservedRegions: firmwareReservedRegions)
    }
}

/// What an IOMMU driver is told about a device: a stable snapshot.
public struct IOMMUDeviceInfo: Hashable, Sendable, CustomStringConvertible {
    /// Stable identifier; never reused while the core lives.
    public let id: DeviceID
    /// "0000:00:03.0" or the platform name.
    public let name: String
    public let bus: String
    public let busKind: BusKind
    public let iommu: FirmwareIOMMUSpec?
    public let pci: PCIDeviceFirmware?
    public let firmwareReservedRegions: [ReservedRegion]

    /// Builds the snapshot by hand, for unit tests of a driver without a core. The core builds
    /// these itself in `addDevice`.
    public init(
        id: DeviceID, name: String, bus: String, busKind: BusKind, iommu: FirmwareIOMMUSpec?,
        pci: PCIDeviceFirmware? = nil, firmwareReservedRegions: [ReservedRegion] = []
    ) {
        self.id = id
        self.name = name
        self.bus = bus
        self.busKind = busKind
        self.iommu = iommu
        self.pci = pci
        self.firmwareReservedRegions = firmwareReservedRegions
    }

    /// The stream IDs from firmware (empty if not behind an IOMMU).
    public var streamIDs: [StreamID] { iommu?.streamIDs ?? [] }
    /// An untrusted (external-facing) PCI device. Linux: `dev_is_untrusted()`.
    public var isUntrusted: Bool { pci?.untrusted ?? false }

    public var description: String { name }
}

// MARK: - Device state

/// Where a device is in the probe state machine.
///
/// ```
/// added ──no fwspec──────────────────────────────▶ noIOMMU
///   │
///   ├─ IOMMU instance not registered, or driver says EPROBE_DEFER ─▶ deferred ──(IOMMU registers
///   │                                                                  or retryDeferredProbes)──┐
///   ▼                                                                                          │
/// probing ──driver probe / group / default domain / attach ok──▶ probed ◀─────────────────────┘
///   └─ any other error (unwound: no group, no ID, no reference kept) ─▶ probeFailed(errno)
/// probed ──removeDevice──▶ (gone: released, removed from its group)
/// ```
public enum DeviceProbeState: Hashable, Sendable {
    /// No firmware IOMMU description: DMA goes straight to memory.
    case noIOMMU
    /// Waiting for its IOMMU (Linux: EPROBE_DEFER). DMA is blocked meanwhile.
    case deferred
    /// Probed: in a group, attached to the group's domain (or blocked if the group has none).
    case probed
    /// Probe failed with this errno; the device never gets translation. DMA is blocked.
    case probeFailed(Errno)
}

/// How a device's DMA is handled right now: what the hardware layer asks before it lets a
/// transaction through.
public enum DMAPath: Sendable {
    /// The device is not behind any IOMMU: addresses are physical addresses.
    case noIOMMU
    /// Behind an IOMMU but not (yet) probed, deferred or failed: the IOMMU must fault its DMA.
    case notProbed
    /// Probed but attached to no domain, or to a blocking domain: every access faults.
    case blocked(IOMMUDomain?)
    /// Attached to an identity domain: untranslated, by the IOMMU's choice.
    case identity(IOMMUDomain)
    /// Attached to a paging domain: translate through it.
    case translated(IOMMUDomain)

    /// The domain the device is attached to, if any.
    public var domain: IOMMUDomain? {
        switch self {
        case .noIOMMU, .notProbed: nil
        case let .blocked(domain): domain
        case let .identity(domain), let .translated(domain): domain
        }
    }

    /// True for `.notProbed` and `.blocked`.
    public var isBlocked: Bool {
        switch self {
        case .notProbed, .blocked: true
        default: false
        }
    }
}

/// A token naming a user of DMA ownership (VFIO container, iommufd context).
///
/// Linux: the `void *owner` cookie of `iommu_group_claim_dma_owner()`.
public struct DMAOwner: Hashable, Sendable {
    public var rawValue: UInt64
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
}

/// A handle to a registered IOMMU instance.
public struct IOMMUInstanceID: Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public var description: String { "iommu#\(rawValue)" }
}
