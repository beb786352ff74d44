/// The IOVA range whose TLB entries must be invalidated after an unmap, gathered page by page.
///
/// Linux: `struct iommu_iotlb_gather` and `iommu_iotlb_gather_add_range`.
public struct IOTLBGather: Hashable, Sendable {
    /// First IOVA gathered (`UInt64.max` when empty).
    public var start: UInt64
    /// Last IOVA gathered, inclusive (0 when empty).
    public var end: UInt64
    /// The page size of the gathered pages (0 = none yet or mixed).
    public var pageSize: UInt64
    /// Lazy mode: invalidation is queued for a full flush, so pages are not gathered.
    /// Linux: `iommu_iotlb_gather_queued`.
    public var queued: Bool

    @inlinable
    public init(queued: Bool = false) {
        start = .max
        end = 0
        pageSize = 0
        self.queued = queued
    }

    /// Whether nothing has been gathered.
    @inlinable public var isEmpty: Bool { start > end }

    /// Extends the range to cover `[iova, iova + length)`. Linux: `iommu_iotlb_gather_add_range`.
    @inlinable
    public mutating func addRange(iova: IOVA, length: UInt64) {
        guard length != 0 else { return }
        let last = iova.rawValue &+ (length &- 1)   // the table never maps across 2^64
        if iova.rawValue < start { start = iova.rawValue }
        if last > end { end = last }
    }

    /// Whether adding `[iova, iova + length)` would leave a hole or change the page size, which
    /// is when Linux syncs first. Linux: `iommu_iotlb_gather_is_disjoint` + the pgsize test.
    @inlinable
    public func needsSync(beforeAdding iova: IOVA, length: UInt64) -> Bool {
        if isEmpty { return false }
        if pageSize != 0 && pageSize != length { return true }
        let last = iova.rawValue &+ (length &- 1)
        return last &+ 1 < start || iova.rawValue > end &+ 1
    }
}

