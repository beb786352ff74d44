/// What every IOMMUKit address type has in common: a 64-bit raw value with no arithmetic that
/// could silently wrap.
///
/// Linux uses bare integers (`dma_addr_t`, `phys_addr_t`, `unsigned long` pfns) and mixes them
/// up at its peril; IOMMUKit keeps them apart so that passing a physical address where an IOVA is
/// expected does not compile.
public protocol AddressProtocol: RawRepresentable, Hashable, Comparable, Sendable,
    CustomStringConvertible where RawValue == UInt64
{
    init(_ rawValue: UInt64)
}

extension AddressProtocol {
    /// The address `offset` bytes above this one, or `nil` if that wraps past 2^64.
    @inlinable
    public func adding(_ offset: UInt64) -> Self? {
        let (sum, overflow) = rawValue.addingReportingOverflow(offset)
        return overflow ? nil : Self(sum)
    }

    /// True when the address is a multiple of `alignment` (a power of two).
    @inlinable
    public func isAligned(to alignment: PageSize) -> Bool {
        rawValue & alignment.mask == 0
    }

    /// True when the address is a multiple of `alignment`, which must be a power of two.
    @inlinable
    public func isAligned(toBytes alignment: UInt64) -> Bool {
        precondition(alignment != 0 && alignment & (alignment &- 1) == 0, "alignment must be a power of two")
        return rawValue & (alignment &- 1) == 0
    }

    /// The address rounded down to a multiple of `alignment`.
    @inlinable
    public func alignedDown(to alignment: PageSize) -> Self {
        Self(rawValue & ~alignment.mask)
    }

    /// The address rounded up to a multiple of `alignment`, or `nil` if that passes 2^64.
    @inlinable
    public func alignedUp(to alignment: PageSize) -> Self? {
        guard let raised = adding(alignment.mask) else { return nil }
        return raised.alignedDown(to: alignment)
    }

    /// The byte offset of the address inside its `alignment`-sized page.
    @inlinable
    public func offset(in alignment: PageSize) -> UInt64 { rawValue & alignment.mask }

    @inlinable public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }

    public var description: String { "0x" + String(rawValue, radix: 16) }
}

/// An I/O virtual address: the address a device puts on the bus.
///
/// Linux: `dma_addr_t` as the IOMMU sees it (an `iova`).
@frozen
public struct IOVA: AddressProtocol {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }
    @inlinable public init(_ rawValue: UInt64) { self.rawValue = rawValue }
}

/// A physical (output) address: what a page table's leaf points at.
///
/// Linux: `phys_addr_t`.
@frozen
public struct PhysAddr: AddressProtocol {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }
    @inlinable public init(_ rawValue: UInt64) { self.rawValue = rawValue }
}

/// A virtual address in a modelled user process (the `vaddr` of `VFIO_IOMMU_MAP_DMA`).
///
/// Linux: the `unsigned long vaddr` that `pin_user_pages` takes.
@frozen
public struct VirtAddr: AddressProtocol {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }
    @inlinable public init(_ rawValue: UInt64) { self.rawValue = rawValue }
}

/// A page frame number: an address shifted right by a granule's shift.
///
/// What the frame counts in depends on the user: the IOVA allocator's pfns are IOVA >> granule
/// shift (Linux: `iova->pfn_lo`), the host memory model's are physical address >> 12.
@frozen
public struct PFN: AddressProtocol {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }
    @inlinable public init(_ rawValue: UInt64) { self.rawValue = rawValue }

    public var description: String { "pfn 0x" + String(rawValue, radix: 16) }
}

/// A stream ID: the identifier a device's transactions carry into an IOMMU.
///
/// Linux: the `ids[]` of `struct iommu_fwspec` (an SMMU StreamID, a DART stream index).
@frozen
public struct StreamID: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
    @inlinable public init(_ rawValue: UInt32) { self.rawValue = rawValue }
    @inlinable public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    public var description: String { "sid 0x" + String(rawValue, radix: 16) }
}

extension IOVA {
    /// The IOVA page frame of this address for a granule (Linux: `iova_pfn()`).
    @inlinable public func pfn(granule: PageSize) -> PFN { PFN(rawValue >> UInt64(granule.shift)) }
}

extension PFN {
    /// The first IOVA of this frame (Linux: `iova_dma_addr()`), or `nil` if it does not fit in 64 bits.
    @inlinable
    public func iova(granule: PageSize) -> IOVA? {
        let shift = UInt64(granule.shift)
        guard rawValue <= UInt64.max >> shift else { return nil }
        return IOVA(rawValue << shift)
    }
}
