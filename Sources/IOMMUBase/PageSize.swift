/// A page, block or granule size: always a power of two between 1 byte and 2^63.
///
/// Stored as its log2 (`shift`) so that alignment masks and index arithmetic never divide.
@frozen
public struct PageSize: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// log2 of the size in bytes (12 for 4 KiB).
    public let shift: Int

    /// A size of `1 << shift` bytes; `shift` must be in `0...63`.
    @inlinable
    public init(shift: Int) {
        precondition(shift >= 0 && shift < 64, "page size shift out of range")
        self.shift = shift
    }

    /// A size of `bytes`, or `nil` if `bytes` is not a power of two.
    @inlinable
    public init?(bytes: UInt64) {
        guard bytes != 0, bytes & (bytes &- 1) == 0 else { return nil }
        self.shift = bytes.trailingZeroBitCount
    }

    /// The size in bytes.
    @inlinable public var bytes: UInt64 { UInt64(1) &<< UInt64(shift) }
    /// `bytes - 1`: the offset bits inside one page.
    @inlinable public var mask: UInt64 { bytes &- 1 }

    @inlinable public static func < (a: Self, b: Self) -> Bool { a.shift < b.shift }

    public static let size4K = PageSize(shift: 12)
    public static let size16K = PageSize(shift: 14)
    public static let size64K = PageSize(shift: 16)
    public static let size2M = PageSize(shift: 21)
    public static let size32M = PageSize(shift: 25)
    public static let size512M = PageSize(shift: 29)
    public static let size1G = PageSize(shift: 30)

    /// "4K", "2M", "1G", or the byte count in hex when it has no short name.
    public var description: String { formatByteSize(bytes) }
}

/// A short human form of a power-of-two byte count ("4K", "2M", "4T"); other values in hex.
public func formatByteSize(_ bytes: UInt64) -> String {
    let units: [(Int, String)] = [(60, "E"), (50, "P"), (40, "T"), (30, "G"), (20, "M"), (10, "K")]
    for (shift, unit) in units where bytes >= (1 << UInt64(shift)) && bytes & ((1 << UInt64(shift)) - 1) == 0 {
        return String(bytes >> UInt64(shift)) + unit
    }
    return bytes < 1024 ? String(bytes) : "0x" + String(bytes, radix: 16)
}
