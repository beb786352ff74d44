/// The page size and page count `iommu_map`/`iommu_unmap` hand the driver for the next chunk of
/// a range.
///
/// Linux: `iommu_pgsize()` in `iommu.c`. Shared by the IOMMU core's `iommu_map`/`iommu_unmap`
/// and the page-table layer's range operations (`IOPageTable.map(iova:paddr:length:…)`).
@frozen
public struct IOMMUPageSizeSplit: Hashable, Sendable, CustomStringConvertible {
    /// The page size to use.
    public var pageSize: PageSize
    /// How many pages of `pageSize` to map in one driver call.
    public var count: UInt64

    @inlinable
    public init(pageSize: PageSize, count: UInt64) {
        self.pageSize = pageSize
        self.count = count
    }

    /// Chooses the largest supported page for the start of `[iova, iova + size)` → `paddr`, and
    /// how many of them to map before a larger page becomes usable.
    ///
    /// 1. Candidates: sizes in `bitmap` no larger than the largest power of two <= `size`, and,
    ///    if `iova | paddr` is non-zero, no larger than its lowest set bit.
    /// 2. `pageSize` = the largest candidate.
    /// 3. If a larger supported size `next` exists and `iova` and `paddr` have the same offset in
    ///    it, and the range reaches at least one whole `next` page beyond the next `next`
    ///    boundary, stop at that boundary; otherwise use as many pages as fit.
    ///
    /// Worked example (4K|2M|1G, iova = paddr = 0x1FF000, size 0x401000): 4K × 1, then 2M × 2.
    ///
    /// - Returns: `nil` when no supported size fits (`size` is 0, smaller than the smallest page,
    ///   or the addresses are not aligned to it). Linux BUGs there; callers validate first.
    /// - Differs from Linux: the boundary test `offset + next <= size` does not wrap past 2^64.
    @inlinable
    public static func split(bitmap: PageSizeBitmap, iova: UInt64, paddr: UInt64, size: UInt64) -> IOMMUPageSizeSplit? {
        guard size != 0 else { return nil }
        let addressMerge = iova | paddr
        // Sizes supported and no larger than the largest power of two <= size.
        var sizes = bitmap.rawValue & genmask(63 - size.leadingZeroBitCount, 0)
        if addressMerge != 0 {
            sizes &= genmask(addressMerge.trailingZeroBitCount, 0)
        }
        guard sizes != 0 else { return nil }
        let pageShift = 63 - sizes.leadingZeroBitCount
        let pageSize = PageSize(shift: pageShift)
        var span = size
        let larger = pageShift == 63 ? 0 : bitmap.rawValue & ~genmask(pageShift, 0)
        if larger != 0 {
            let next = UInt64(1) << UInt64(larger.trailingZeroBitCount)
            // Only worth stopping early if both addresses can reach `next` alignment together.
            if (iova ^ paddr) & (next &- 1) == 0 {
                let offset = next &- (addressMerge & (next &- 1))  // in 1...next
                let (reach, overflow) = offset.addingReportingOverflow(next)
                if !overflow && reach <= size { span = offset }
            }
        }
        return IOMMUPageSizeSplit(pageSize: pageSize, count: span >> UInt64(pageShift))
    }

    /// "2M x 2".
    public var description: String { "\(pageSize) x \(count)" }
}
