import IOMMUBase

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

/// What a page table tells its user about TLB maintenance.
///
/// Linux: `struct iommu_flush_ops` (`tlb_flush_all`, `tlb_flush_walk`, `tlb_add_page`). The
/// table is generic over it (`unmap(…, invalidator: &inv)`), so the calls are static.
public protocol TLBInvalidator: ~Copyable {
    /// Invalidate everything for this table (before the table is freed).
    mutating func flushAll()
    /// Invalidate leaf and walk-cache entries for `[iova, iova + size)`; called BEFORE the
    /// sub-table that mapped that range is freed. Linux: `tlb_flush_walk`.
    mutating func flushWalk(iova: IOVA, size: UInt64, granule: UInt64)
    /// A leaf of `granule` bytes at `iova` was removed; gather it for a later sync.
    /// Linux: `tlb_add_page` (typically `iommu_iotlb_gather_add_page`).
    mutating func addPage(_ gather: inout IOTLBGather, iova: IOVA, granule: UInt64)
}

extension TLBInvalidator where Self: ~Copyable {
    /// Default: add the page to the gather (Linux `iommu_iotlb_gather_add_page` without sync).
    @inlinable
    public mutating func addPage(_ gather: inout IOTLBGather, iova: IOVA, granule: UInt64) {
        gather.pageSize = granule
        gather.addRange(iova: iova, length: granule)
    }
}

/// An invalidator for tables no hardware walks through a TLB: every hook does nothing except
/// gathering.
public struct NoTLBInvalidator: TLBInvalidator {
    @inlinable public init() {}
    @inlinable public mutating func flushAll() {}
    @inlinable public mutating func flushWalk(iova: IOVA, size: UInt64, granule: UInt64) {}
}

/// Records every hook call, for tests and the CLI.
public struct RecordingTLBInvalidator: TLBInvalidator {
    /// One recorded hook call.
    public enum Event: Hashable, Sendable, CustomStringConvertible {
        case flushAll
        case flushWalk(iova: IOVA, size: UInt64, granule: UInt64)
        case addPage(iova: IOVA, granule: UInt64)

        public var description: String {
            switch self {
            case .flushAll: "tlb_flush_all"
            case let .flushWalk(iova, size, granule):
                "tlb_flush_walk iova \(iova) size 0x\(String(size, radix: 16)) granule 0x\(String(granule, radix: 16))"
            case let .addPage(iova, granule): "tlb_add_page iova \(iova) granule 0x\(String(granule, radix: 16))"
            }
        }
    }

    /// Calls in order.
    public var events: [Event] = []

    public init() {}

    public mutating func flushAll() { events.append(.flushAll) }

    public mutating func flushWalk(iova: IOVA, size: UInt64, granule: UInt64) {
        events.append(.flushWalk(iova: iova, size: size, granule: granule))
    }

    public mutating func addPage(_ gather: inout IOTLBGather, iova: IOVA, granule: UInt64) {
        events.append(.addPage(iova: iova, granule: granule))
        gather.pageSize = granule
        gather.addRange(iova: iova, length: granule)
    }
}
