/// A set of supported page sizes, one bit per power of two (bit n set = 2^n bytes supported).
///
/// Linux: `domain->pgsize_bitmap` / `io_pgtable_cfg.pgsize_bitmap`.
@frozen
public struct PageSizeBitmap: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }

    @inlinable
    public init(_ sizes: [PageSize]) {
        var raw: UInt64 = 0
        for size in sizes { raw |= size.bytes }
        self.rawValue = raw
    }

    @inlinable public var isEmpty: Bool { rawValue == 0 }
    @inlinable public func contains(_ size: PageSize) -> Bool { rawValue & size.bytes != 0 }

    /// The smallest supported size, or `nil` if the bitmap is empty (Linux: `__ffs(pgsize_bitmap)`).
    @inlinable
    public var smallest: PageSize? {
        rawValue == 0 ? nil : PageSize(shift: rawValue.trailingZeroBitCount)
    }

    /// The largest supported size, or `nil` if the bitmap is empty (Linux: `__fls(pgsize_bitmap)`).
    @inlinable
    public var largest: PageSize? {
        rawValue == 0 ? nil : PageSize(shift: 63 - rawValue.leadingZeroBitCount)
    }

    /// Sizes in ascending order.
    public var sizes: [PageSize] {
        var out: [PageSize] = []
        var bits = rawValue
        while bits != 0 {
            let shift = bits.trailingZeroBitCount
            out.append(PageSize(shift: shift))
            bits &= bits &- 1
        }
        return out
    }

    @inlinable public func union(_ other: Self) -> Self { Self(rawValue: rawValue | other.rawValue) }
    @inlinable public func intersection(_ other: Self) -> Self { Self(rawValue: rawValue & other.rawValue) }

    /// "4K|2M|1G".
    public var description: String {
        rawValue == 0 ? "(none)" : sizes.map(\.description).joined(separator: "|")
    }
}
