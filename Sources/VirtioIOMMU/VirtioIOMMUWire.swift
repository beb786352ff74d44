import IOMMUBase

// MARK: - Feature bits

/// The feature bits a virtio-iommu device offers and a driver acknowledges.
///
/// Spec: virtio 1.x §5.13.3 "Feature bits" (device bits 0–6) plus the generic bits IOMMUKit
/// models (VERSION_1, ACCESS_PLATFORM). Bit 3 is the deprecated `VIRTIO_IOMMU_F_BYPASS`.
public struct VirtioIOMMUFeatures: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// `VIRTIO_IOMMU_F_INPUT_RANGE` (bit 0): `input_range` is valid.
    public static let inputRange = VirtioIOMMUFeatures(rawValue: 1 << 0)
    /// `VIRTIO_IOMMU_F_DOMAIN_RANGE` (bit 1): `domain_range` is valid.
    public static let domainRange = VirtioIOMMUFeatures(rawValue: 1 << 1)
    /// `VIRTIO_IOMMU_F_MAP_UNMAP` (bit 2): MAP and UNMAP requests exist.
    public static let mapUnmap = VirtioIOMMUFeatures(rawValue: 1 << 2)
    /// `VIRTIO_IOMMU_F_BYPASS` (bit 3, deprecated): when negotiated, unattached endpoints bypass.
    public static let legacyBypass = VirtioIOMMUFeatures(rawValue: 1 << 3)
    /// `VIRTIO_IOMMU_F_PROBE` (bit 4): PROBE exists and `probe_size` is valid.
    public static let probe = VirtioIOMMUFeatures(rawValue: 1 << 4)
    /// `VIRTIO_IOMMU_F_MMIO` (bit 5): the MAP flag `VIRTIO_IOMMU_MAP_F_MMIO` may be used.
    public static let mmio = VirtioIOMMUFeatures(rawValue: 1 << 5)
    /// `VIRTIO_IOMMU_F_BYPASS_CONFIG` (bit 6): the `bypass` config byte and ATTACH_F_BYPASS.
    public static let bypassConfig = VirtioIOMMUFeatures(rawValue: 1 << 6)
    /// `VIRTIO_F_VERSION_1` (bit 32); Linux refuses a device without it.
    public static let version1 = VirtioIOMMUFeatures(rawValue: 1 << 32)
    /// `VIRTIO_F_ACCESS_PLATFORM` (bit 33).
    public static let accessPlatform = VirtioIOMMUFeatures(rawValue: 1 << 33)

    /// What the Linux driver accepts when offered (its feature table plus VERSION_1).
    public static let linuxDriver: VirtioIOMMUFeatures = [
        .version1, .mapUnmap, .inputRange, .domainRange, .probe, .mmio, .bypassConfig,
    ]

    public var description: String {
        let names: [(VirtioIOMMUFeatures, String)] = [
            (.inputRange, "INPUT_RANGE"), (.domainRange, "DOMAIN_RANGE"), (.mapUnmap, "MAP_UNMAP"),
            (.legacyBypass, "BYPASS"), (.probe, "PROBE"), (.mmio, "MMIO"), (.bypassConfig, "BYPASS_CONFIG"),
            (.version1, "VERSION_1"), (.accessPlatform, "ACCESS_PLATFORM"),
        ]
        let parts = names.filter { contains($0.0) }.map(\.1)
        return parts.isEmpty ? "none" : parts.joined(separator: "|")
    }
}

// MARK: - Request types and status codes

/// A request's `head.type`. Spec: `VIRTIO_IOMMU_T_*`.
public enum VirtioIOMMURequestType: UInt8, Hashable, Sendable, CaseIterable {
    case attach = 1
    case detach = 2
    case map = 3
    case unmap = 4
    case probe = 5

    /// Bytes of the device-readable part (head + body) the spec defines.
    public var readableLength: Int {
        switch self {
        case .attach, .detach: 20
        case .map: 36
        case .unmap: 28
        case .probe: 72
        }
    }
}

/// A request's `tail.status`. Spec: `VIRTIO_IOMMU_S_*`.
public enum VirtioIOMMUStatus: UInt8, Hashable, Sendable, CaseIterable, CustomStringConvertible {
    case ok = 0
    case ioError = 1
    case unsupported = 2
    case deviceError = 3
    case invalid = 4
    case range = 5
    case noEntry = 6
    case fault = 7
    case noMemory = 8

    /// The spec's short name (`OK`, `IOERR`, `UNSUPP`, …).
    public var description: String {
        switch self {
        case .ok: "OK"
        case .ioError: "IOERR"
        case .unsupported: "UNSUPP"
        case .deviceError: "DEVERR"
        case .invalid: "INVAL"
        case .range: "RANGE"
        case .noEntry: "NOENT"
        case .fault: "FAULT"
        case .noMemory: "NOMEM"
        }
    }

    /// The errno the Linux driver turns this status into (`viommu_get_req_errno`).
    public var linuxErrno: Int32 {
        switch self {
        case .ok: 0
        case .unsupported: -38
        case .invalid: -22
        case .range: -34
        case .noEntry: -2
        case .fault: -14
        case .noMemory: -12
        case .ioError, .deviceError: -5
        }
    }
}

/// Flags and constants of the request, property and event layouts.
public enum VirtioIOMMUWire {
    /// `VIRTIO_IOMMU_ATTACH_F_BYPASS`.
    public static let attachFlagBypass: UInt32 = 1 << 0
    /// `VIRTIO_IOMMU_MAP_F_READ`.
    public static let mapFlagRead: UInt32 = 1 << 0
    /// `VIRTIO_IOMMU_MAP_F_WRITE`.
    public static let mapFlagWrite: UInt32 = 1 << 1
    /// `VIRTIO_IOMMU_MAP_F_MMIO`.
    public static let mapFlagMMIO: UInt32 = 1 << 2
    /// `VIRTIO_IOMMU_PROBE_T_NONE`.
    public static let probeTypeNone: UInt16 = 0
    /// `VIRTIO_IOMMU_PROBE_T_RESV_MEM`.
    public static let probeTypeResvMem: UInt16 = 1
    /// `VIRTIO_IOMMU_RESV_MEM_T_RESERVED`.
    public static let resvMemReserved: UInt8 = 0
    /// `VIRTIO_IOMMU_RESV_MEM_T_MSI`.
    public static let resvMemMSI: UInt8 = 1
    /// Bytes of one RESV_MEM property (4-byte header + 20-byte value).
    public static let resvMemPropertyLength = 24
    /// `VIRTIO_IOMMU_FAULT_R_UNKNOWN`, `_DOMAIN`, `_MAPPING`.
    public static let faultReasonUnknown: UInt8 = 0
    public static let faultReasonDomain: UInt8 = 1
    public static let faultReasonMapping: UInt8 = 2
    /// `VIRTIO_IOMMU_FAULT_F_READ`, `_WRITE`, `_ADDRESS`.
    public static let faultFlagRead: UInt32 = 1 << 0
    public static let faultFlagWrite: UInt32 = 1 << 1
    public static let faultFlagAddress: UInt32 = 1 << 8
    /// Bytes of one fault record (`struct virtio_iommu_fault`).
    public static let faultRecordLength = 24
    /// Bytes of `struct virtio_iommu_config`.
    public static let configLength = 40
    /// Offset of the `bypass` byte in the configuration space.
    public static let configBypassOffset = 36
}

// MARK: - Little-endian helpers

@inline(__always) @usableFromInline
func loadLE32(_ bytes: UnsafeRawBufferPointer, _ offset: Int) -> UInt32 {
    UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
}

@inline(__always) @usableFromInline
func loadLE64(_ bytes: UnsafeRawBufferPointer, _ offset: Int) -> UInt64 {
    UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
}

@inline(__always) @usableFromInline
func storeLE16(_ bytes: UnsafeMutableRawBufferPointer, _ offset: Int, _ value: UInt16) {
    bytes.storeBytes(of: value.littleEndian, toByteOffset: offset, as: UInt16.self)
}

@inline(__always) @usableFromInline
func storeLE32(_ bytes: UnsafeMutableRawBufferPointer, _ offset: Int, _ value: UInt32) {
    bytes.storeBytes(of: value.littleEndian, toByteOffset: offset, as: UInt32.self)
}

@inline(__always) @usableFromInline
func storeLE64(_ bytes: UnsafeMutableRawBufferPointer, _ offset: Int, _ value: UInt64) {
    bytes.storeBytes(of: value.littleEndian, toByteOffset: offset, as: UInt64.self)
}
