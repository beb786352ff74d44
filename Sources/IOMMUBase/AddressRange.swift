/// A non-empty inclusive range of addresses, `first...last`.
///
/// Inclusive (as in iommufd) so that a range ending at 2^64 - 1 is representable and no code has
/// to compute `start + length`. Build one from `start` and `length` once, at an API edge: an end
/// that would pass 2^64 is a `nil` (or a thrown `lengthOverflow`), never a wrap-around.
@frozen
public struct AddressRange<Address: AddressProtocol>: Hashable, Sendable, CustomStringConvertible {
    public let first: Address
    public let last: Address

    /// `first...last`; `nil` if `last < first`.
    @inlinable
    public init?(first: Address, last: Address) {
        guard first <= last else { return nil }
        self.first = first
        self.last = last
    }

    /// `start ..< start + length`, or `nil` if `length` is 0 or the end passes 2^64.
    @inlinable
    public init?(start: Address, length: UInt64) {
        guard length != 0 else { return nil }
        let (last, overflow) = start.rawValue.addingReportingOverflow(length &- 1)
        guard !overflow else { return nil }
        self.first = start
        self.last = Address(last)
    }

    /// Like `init(start:length:)`, but says why: `zeroLength` or `lengthOverflow`.
    @inlinable
    public static func checked(start: Address, length: UInt64) throws(IOMMUError) -> Self {
        guard length != 0 else { throw IOMMUError(.zeroLength, address: start.rawValue) }
        guard let range = Self(start: start, length: length) else {
            throw IOMMUError(.lengthOverflow, address: start.rawValue, length: length)
        }
        return range
    }

    /// Like `checked(start:length:)`, and also requires start and length to be multiples of
    /// `alignment` (`unaligned`, EINVAL).
    @inlinable
    public static func checked(start: Address, length: UInt64, alignment: PageSize) throws(IOMMUError) -> Self {
        guard start.rawValue & alignment.mask == 0, length & alignment.mask == 0 else {
            throw IOMMUError(.unaligned, address: start.rawValue, length: length)
        }
        return try checked(start: start, length: length)
    }

    /// Number of bytes covered; 0 means the full 2^64 space (the only wrap-around).
    @inlinable public var length: UInt64 { last.rawValue &- first.rawValue &+ 1 }

    @inlinable public func contains(_ address: Address) -> Bool { first <= address && address <= last }

    @inlinable public func contains(_ other: Self) -> Bool { first <= other.first && other.last <= last }

    @inlinable public func overlaps(_ other: Self) -> Bool { first <= other.last && other.first <= last }

    /// The common part of two ranges, or `nil` if they do not overlap.
    @inlinable
    public func intersection(_ other: Self) -> Self? {
        Self(first: max(first, other.first), last: min(last, other.last))
    }

    /// "[0x1000, 0x1fff]".
    public var description: String { "[\(first), \(last)]" }
}

public typealias IOVARange = AddressRange<IOVA>
public typealias PhysRange = AddressRange<PhysAddr>
public typealias VirtRange = AddressRange<VirtAddr>
public typealias PFNRange = AddressRange<PFN>
