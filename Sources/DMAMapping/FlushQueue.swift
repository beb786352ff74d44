import IOMMUBase
import IOVAAllocator
import IOMMUCore
import Synchronization

/// One deferred IOVA free: Linux `struct iova_fq_entry` (+ the unmap time, for the stale window).
struct FlushQueueEntry {
    var pfn: UInt64
    var pages: UInt64
    /// `flushStartCount` when queued: freeable once `flushFinishCount > counter`.
    var counter: UInt64
    var unmappedAt: Int64
}

/// A fixed ring (power-of-two slots, one always empty, as Linux): no allocation after setup.
struct FlushRing: ~Copyable {
    let entries: UnsafeMutablePointer<FlushQueueEntry>
    let mask: Int
    var head = 0
    var tail = 0

    init(slots: Int) {
        precondition(slots >= 2 && slots & (slots - 1) == 0, "flush queue size must be a power of two")
        entries = .allocate(capacity: slots)
        mask = slots - 1
    }

    deinit { entries.deallocate() }

    var isFull: Bool { (tail &+ 1) & mask == head }
    var isEmpty: Bool { head == tail }
    var count: Int { (tail &- head) & mask }
}

/// A flush queue: Linux `struct iova_fq` (ring + lock).
final class FlushQueue: Sendable {
    let ring: IOMMUMutex<FlushRing>
    init(slots: Int) { ring = IOMMUMutex(FlushRing(slots: slots)) }
}

/// Flush-queue parameters. Linux: `IOVA_DEFAULT_FQ_SIZE`/`IOVA_DEFAULT_FQ_TIMEOUT` (per CPU) and
/// `IOVA_SINGLE_FQ_SIZE`/`IOVA_SINGLE_FQ_TIMEOUT` (one queue, for IOMMUs that shadow on flush).
public struct FlushQueueOptions: Hashable, Sendable {
    /// Ring slots per queue (a power of two; one slot is kept empty).
    public var size: Int
    public var timeoutNanoseconds: Int64
    /// One queue shared by every CPU instead of one per CPU.
    public var single: Bool

    public init(size: Int, timeoutNanoseconds: Int64, single: Bool) {
        self.size = size
        self.timeoutNanoseconds = timeoutNanoseconds
        self.single = single
    }

    /// 256 entries per CPU, 10 ms.
    public static var perCPU: FlushQueueOptions { FlushQueueOptions(size: 256, timeoutNanoseconds: 10_000_000, single: false) }
    /// One queue of 32768 entries, 1 s.
    public static var single: FlushQueueOptions { FlushQueueOptions(size: 32768, timeoutNanoseconds: 1_000_000_000, single: true) }
}
