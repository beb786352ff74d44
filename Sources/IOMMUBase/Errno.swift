/// An error number with Linux's value, so that an ioctl-level caller sees exactly what the
/// kernel would return.
///
/// Modelled on swift-system's `Errno`: Swift names, the C spelling in `name` and in the docs.
@frozen
public struct Errno: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int32
    @inlinable public init(rawValue: Int32) { self.rawValue = rawValue }

    /// The corresponding C error is `EPERM`.
    public static var notPermitted: Errno { Errno(rawValue: 1) }
    /// The corresponding C error is `ENOENT`.
    public static var notFound: Errno { Errno(rawValue: 2) }
    /// The corresponding C error is `ESRCH`.
    public static var noSuchProcess: Errno { Errno(rawValue: 3) }
    /// The corresponding C error is `EINTR`.
    public static var interrupted: Errno { Errno(rawValue: 4) }
    /// The corresponding C error is `EIO`.
    public static var ioError: Errno { Errno(rawValue: 5) }
    /// The corresponding C error is `ENXIO`.
    public static var noSuchDeviceOrAddress: Errno { Errno(rawValue: 6) }
    /// The corresponding C error is `E2BIG`.
    public static var argumentListTooLong: Errno { Errno(rawValue: 7) }
    /// The corresponding C error is `EBADF`.
    public static var badFileDescriptor: Errno { Errno(rawValue: 9) }
    /// The corresponding C error is `EAGAIN`.
    public static var tryAgain: Errno { Errno(rawValue: 11) }
    /// The corresponding C error is `ENOMEM`.
    public static var noMemory: Errno { Errno(rawValue: 12) }
    /// The corresponding C error is `EACCES`.
    public static var permissionDenied: Errno { Errno(rawValue: 13) }
    /// The corresponding C error is `EFAULT`.
    public static var badAddress: Errno { Errno(rawValue: 14) }
    /// The corresponding C error is `EBUSY`.
    public static var busy: Errno { Errno(rawValue: 16) }
    /// The corresponding C error is `EEXIST`.
    public static var exists: Errno { Errno(rawValue: 17) }
    /// The corresponding C error is `ENODEV`.
    public static var noSuchDevice: Errno { Errno(rawValue: 19) }
    /// The corresponding C error is `EINVAL`.
    public static var invalidArgument: Errno { Errno(rawValue: 22) }
    /// The corresponding C error is `ENOTTY` (an unknown ioctl).
    public static var inappropriateIOCTL: Errno { Errno(rawValue: 25) }
    /// The corresponding C error is `ENOSPC`.
    public static var noSpace: Errno { Errno(rawValue: 28) }
    /// The corresponding C error is `EDOM`.
    public static var outOfDomain: Errno { Errno(rawValue: 33) }
    /// The corresponding C error is `ERANGE`.
    public static var outOfRange: Errno { Errno(rawValue: 34) }
    /// The corresponding C error is `ENOSYS`.
    public static var notImplemented: Errno { Errno(rawValue: 38) }
    /// The corresponding C error is `EOVERFLOW`.
    public static var overflow: Errno { Errno(rawValue: 75) }
    /// The corresponding C error is `EOPNOTSUPP`.
    public static var notSupported: Errno { Errno(rawValue: 95) }
    /// The corresponding C error is `EADDRINUSE`.
    public static var addressInUse: Errno { Errno(rawValue: 98) }
    /// The corresponding C error is `ETIMEDOUT`.
    public static var timedOut: Errno { Errno(rawValue: 110) }
    /// The kernel-internal `EPROBE_DEFER`: "try probing again later".
    public static var probeDefer: Errno { Errno(rawValue: 517) }
    /// The kernel-internal `ENOTSUPP` (distinct from `EOPNOTSUPP`).
    public static var kernelNotSupported: Errno { Errno(rawValue: 524) }

    /// The C spelling, e.g. "EINVAL"; "E?<n>" for a value without a name here.
    public var name: String {
        switch rawValue {
        case 1: "EPERM"
        case 2: "ENOENT"
        case 3: "ESRCH"
        case 4: "EINTR"
        case 5: "EIO"
        case 6: "ENXIO"
        case 7: "E2BIG"
        case 9: "EBADF"
        case 11: "EAGAIN"
        case 12: "ENOMEM"
        case 13: "EACCES"
        case 14: "EFAULT"
        case 16: "EBUSY"
        case 17: "EEXIST"
        case 19: "ENODEV"
        case 22: "EINVAL"
        case 25: "ENOTTY"
        case 28: "ENOSPC"
        case 33: "EDOM"
        case 34: "ERANGE"
        case 38: "ENOSYS"
        case 75: "EOVERFLOW"
        case 95: "EOPNOTSUPP"
        case 98: "EADDRINUSE"
        case 110: "ETIMEDOUT"
        case 517: "EPROBE_DEFER"
        case 524: "ENOTSUPP"
        default: "E?\(rawValue)"
        }
    }

    /// Parses a C spelling such as "EINVAL" (as scenario files write expectations).
    public init?(name: String) {
        for value: Int32 in [1, 2, 3, 4, 5, 6, 7, 9, 11, 12, 13, 14, 16, 17, 19, 22, 25, 28, 33, 34, 38, 75, 95, 98, 110, 517, 524]
        where Errno(rawValue: value).name == name {
            self.init(rawValue: value)
            return
        }
        return nil
    }

    public var description: String { name }
}
