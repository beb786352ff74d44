/// A small integer naming a device in whatever registry produced an error; resolved to a name
/// (e.g. "0000:00:03.0") by the layer that owns the registry.
///
/// Kept as a number so that `IOMMUError` stays trivial and a throw never allocates.
@frozen
public struct DeviceID: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
    @inlinable public init(_ rawValue: UInt32) { self.rawValue = rawValue }
    @inlinable public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    public var description: String { "device#\(rawValue)" }
}

/// The one error type thrown by every IOMMUKit layer.
///
/// It carries the errno a Linux caller would see (`code`), a stable `reason` for tests to match,
/// and the address, length and device the failure is about. It is trivial (no strings, no
/// references), so throwing it on a hot path never allocates; the message is built only when
/// `description` is asked for.
@frozen
public struct IOMMUError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Why it failed; stable, what tests match on.
    public var reason: Reason
    /// The errno a Linux caller would see; defaults from `reason`, overridable per call site.
    public var code: Errno
    /// The address (IOVA, physical, virtual or pfn, per `reason`) the failure is about; 0 if none.
    public var address: UInt64
    /// The length in bytes (or count, per `reason`) the failure is about; 0 if none.
    public var length: UInt64
    /// The device the request was made for, if any.
    public var device: DeviceID?

    @inlinable
    public init(_ reason: Reason, address: UInt64 = 0, length: UInt64 = 0, device: DeviceID? = nil, code: Errno? = nil) {
        self.reason = reason
        self.address = address
        self.length = length
        self.device = device
        self.code = code ?? reason.defaultCode
    }

    /// The same error, about `device`.
    @inlinable
    public func about(_ device: DeviceID) -> IOMMUError {
        var copy = self
        copy.device = device
        return copy
    }

    /// Why a request failed. New layers add cases here; each has a default errno.
    public enum Reason: UInt16, Hashable, Sendable, CaseIterable {
        /// An address or length is not a multiple of the required granule (EINVAL).
        case unaligned
        /// start + length passes 2^64 (EOVERFLOW).
        case lengthOverflow
        /// A length of zero where one is required (EINVAL).
        case zeroLength
        /// An address has bits above the input or output address size (ERANGE).
        case addressOutOfRange
        /// A page size the table or domain does not support (EINVAL).
        case unsupportedPageSize
        /// Neither read nor write permission requested (EINVAL, Linux 6.12 io-pgtable-arm).
        case noAccessPermission
        /// Something is already mapped there (EEXIST).
        case alreadyMapped
        /// Nothing is mapped there (ENOENT).
        case notMapped
        /// An unmap would have to split a mapping it is not allowed to split (EINVAL).
        case partialUnmap
        /// No IOVA space of the requested size under the limit (ENOMEM, as `alloc_iova` fails).
        case noIOVASpace
        /// A frame or table allocation failed (ENOMEM).
        case outOfMemory
        /// A request the layer does not implement for this object (EOPNOTSUPP).
        case notSupported
        /// A configuration (format, granule, address sizes) the layer cannot build (EINVAL).
        case invalidConfiguration
        /// A generic invalid argument (EINVAL).
        case invalidArgument
        /// The address is not in an IOVA range the caller may use (EINVAL).
        case overlapsReserved
        /// No such device (ENODEV).
        case noSuchDevice
        /// The object is in use (EBUSY).
        case busy
        /// The driver asks to probe again later (EPROBE_DEFER).
        case probeDeferred
        /// The locked-memory limit would be exceeded (ENOMEM, as `vfio_lock_acct`).
        case lockedMemoryLimit
        /// The virtual address has no mapping in the modelled process (EFAULT).
        case badAddress
        /// The operation is not permitted for this caller or memory (EPERM).
        case notPermitted
        /// An object with that name or identity already exists (EEXIST).
        case alreadyExists

        @inlinable
        public var defaultCode: Errno {
            switch self {
            case .unaligned, .zeroLength, .unsupportedPageSize, .noAccessPermission, .partialUnmap,
                 .invalidConfiguration, .invalidArgument, .overlapsReserved:
                .invalidArgument
            case .lengthOverflow: .overflow
            case .addressOutOfRange: .outOfRange
            case .alreadyMapped, .alreadyExists: .exists
            case .notMapped: .notFound
            case .noIOVASpace, .outOfMemory, .lockedMemoryLimit: .noMemory
            case .notSupported: .notSupported
            case .noSuchDevice: .noSuchDevice
            case .busy: .busy
            case .probeDeferred: .probeDefer
            case .badAddress: .badAddress
            case .notPermitted: .notPermitted
            }
        }
    }

    /// e.g. "alreadyMapped (EEXIST) at 0x40000000 size 0x1000 for device#3".
    public var description: String {
        var text = "\(reason) (\(code.name))"
        if address != 0 || length != 0 { text += " at 0x" + String(address, radix: 16) }
        if length != 0 { text += " size 0x" + String(length, radix: 16) }
        if let device { text += " for \(device)" }
        return text
    }
}
