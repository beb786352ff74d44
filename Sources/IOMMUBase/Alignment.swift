/// Integer helpers with Linux's names and no silent wrap-around.

/// Rounds `value` up to a multiple of `alignment` (a power of two); `nil` if that passes 2^64.
///
/// Linux: `ALIGN()` / `round_up()`.
@inlinable
public func alignUp(_ value: UInt64, to alignment: PageSize) -> UInt64? {
    let (raised, overflow) = value.addingReportingOverflow(alignment.mask)
    return overflow ? nil : raised & ~alignment.mask
}

/// Rounds `value` down to a multiple of `alignment`. Linux: `ALIGN_DOWN()` / `round_down()`.
@inlinable
public func alignDown(_ value: UInt64, to alignment: PageSize) -> UInt64 {
    value & ~alignment.mask
}

/// The smallest power of two `>= value`, for `1 <= value <= 2^63`; `nil` otherwise.
///
/// Linux: `roundup_pow_of_two()`.
@inlinable
public func roundUpPowerOfTwo(_ value: UInt64) -> UInt64? {
    guard value != 0, value <= 1 << 63 else { return nil }
    return value == 1 ? 1 : UInt64(1) << UInt64(64 - (value &- 1).leadingZeroBitCount)
}

/// `ceil(log2(value))` for `value >= 1`; 0 for 0 and 1. Linux: `order_base_2()`.
@inlinable
public func orderBase2(_ value: UInt64) -> Int {
    value <= 1 ? 0 : 64 - (value &- 1).leadingZeroBitCount
}

/// Index of the most significant set bit plus one; 0 for 0. Linux: `fls64()` / `fls_long()`.
@inlinable
public func fls(_ value: UInt64) -> Int { 64 - value.leadingZeroBitCount }

/// A mask of bits `low...high` (inclusive). Linux: `GENMASK_ULL(high, low)`.
@inlinable
public func genmask(_ high: Int, _ low: Int) -> UInt64 {
    precondition(low >= 0 && high < 64 && low <= high, "bad bit range")
    let top: UInt64 = high == 63 ? ~0 : (UInt64(1) << UInt64(high + 1)) &- 1
    return top & ~((UInt64(1) << UInt64(low)) &- 1)
}
