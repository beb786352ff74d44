import IOMMUBase

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
    /// One byte of storage: a zero-sized local has no address of its own, and ThreadSanitizer
    /// then reports two threads' `inout` accesses to their own invalidators as a race.
    @usableFromInline var unused: UInt8 = 0
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
