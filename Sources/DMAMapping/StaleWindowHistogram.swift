import Synchronization

/// Distribution of the time a freed IOVA stayed reachable through a possibly stale IOTLB entry:
/// from the unmap call until the invalidation that covers it completed. Strict mode: the sync
/// inside the unmap call; lazy mode: the flush-queue flush. Power-of-two buckets of nanoseconds.
public final class StaleWindowHistogram: @unchecked Sendable {  // atomics behind a pointer
    /// Bucket `k` counts windows `w` with `w == 0` (k = 0) or `2^(k-1) <= w < 2^k`.
    public static var bucketCount: Int { 64 }
    private let buckets: UnsafeMutablePointer<Atomic<UInt64>>
    private let total = Atomic<UInt64>(0)
    private let sum = Atomic<UInt64>(0)
    private let maximum = Atomic<Int64>(0)

    public init() {
        buckets = .allocate(capacity: Self.bucketCount)
        for i in 0..<Self.bucketCount { (buckets + i).initialize(to: Atomic(0)) }
    }

    deinit {
        buckets.deinitialize(count: Self.bucketCount)
        buckets.deallocate()
    }

    @inline(__always)
    func record(_ nanoseconds: Int64) {
        let w = max(nanoseconds, 0)
        let index = min(64 - UInt64(w).leadingZeroBitCount, Self.bucketCount - 1)
        buckets[index].wrappingAdd(1, ordering: .relaxed)
        total.wrappingAdd(1, ordering: .relaxed)
        sum.wrappingAdd(UInt64(w), ordering: .relaxed)
        var current = maximum.load(ordering: .relaxed)
        while w > current {
            let (done, found) = maximum.compareExchange(expected: current, desired: w, ordering: .relaxed)
            if done { break }
            current = found
        }
    }

    public struct Snapshot: Hashable, Sendable, CustomStringConvertible {
        /// Unmaps whose window was measured.
        public var count: UInt64
        public var totalNanoseconds: UInt64
        public var maxNanoseconds: Int64
        /// `buckets[k]`: windows in `[2^(k-1), 2^k)` ns (`buckets[0]`: zero).
        public var buckets: [UInt64]
        public var meanNanoseconds: Double { count == 0 ? 0 : Double(totalNanoseconds) / Double(count) }

        public var description: String {
            var lines = ["stale-TLB window: \(count) unmaps, mean \(Int64(meanNanoseconds)) ns, max \(maxNanoseconds) ns"]
            for (k, n) in buckets.enumerated() where n != 0 {
                let low: UInt64 = k == 0 ? 0 : UInt64(1) << UInt64(k - 1)
                lines.append("  [\(low) ns, \(k == 0 ? 1 : low * 2) ns): \(n)")
            }
            return lines.joined(separator: "\n")
        }
    }

    public func snapshot() -> Snapshot {
        Snapshot(
            count: total.load(ordering: .relaxed), totalNanoseconds: sum.load(ordering: .relaxed),
            maxNanoseconds: maximum.load(ordering: .relaxed),
            buckets: (0..<Self.bucketCount).map { buckets[$0].load(ordering: .relaxed) })
    }
}
