import IOMMUBase
import IOVAAllocator
import IOMMUCore
import Synchronization

/// The DMA layer's state for one IOMMU domain: Linux `struct iommu_dma_cookie` (IOVA cookie):
/// the IOVA domain, the flush queues with their start/finish counters and timer, the debug
/// layer's record of live mappings, and the stale-window histogram.
public final class DMACookie: @unchecked Sendable {  // finishTimes: atomics behind a pointer
    public let domain: IOMMUDomain
    public let iovad: IOVADomain
    public let granule: PageSize
    public let basePFN: UInt64
    /// Lazy invalidation (DMA-FQ with deferred-flush capability and queues set up).
    public let lazy: Bool
    public let flushQueueOptions: FlushQueueOptions
    let queues: [FlushQueue]
    /// The queues without reference counting on the hot path (`queues` owns them).
    let queueRefs: [Unmanaged<FlushQueue>]
    unowned(unsafe) let fastIOVAD: IOVADomain
    let iovadRef: Unmanaged<IOVADomain>
    let domainRef: Unmanaged<IOMMUDomain>
    let debugEnabled: Bool
    let clock: any DMAClock
    let sink: any WarningSink
    public let staleWindows = StaleWindowHistogram()
    let debug: DMADebugTracker?

    /// Linux: `fq_flush_start_cnt` / `fq_flush_finish_cnt`.
    let flushStartCount = Atomic<UInt64>(0)
    let flushFinishCount = Atomic<UInt64>(0)
    /// Completion time of flush number n at `finishTimes[n % 256]`.
    let finishTimes: UnsafeMutablePointer<Atomic<Int64>>
    static var finishTimeSlots: Int { 256 }
    /// Linux: `fq_timer_on` and the timer's expiry.
    let timerArmed = Atomic<Bool>(false)
    let timerDeadline = Atomic<Int64>(0)
    let queuedCount = Atomic<UInt64>(0)
    let freedFromQueueCount = Atomic<UInt64>(0)

    init(
        domain: IOMMUDomain, granule: PageSize, basePFN: UInt64, lazy: Bool, flushQueueOptions: FlushQueueOptions,
        configuration: DMAConfiguration, clock: any DMAClock, sink: any WarningSink,
        iovaFailure: FailNth? = nil, magazineFailure: FailNth? = nil
    ) throws(IOMMUError) {
        self.domain = domain
        self.granule = granule
        self.basePFN = basePFN
        self.lazy = lazy
        self.flushQueueOptions = flushQueueOptions
        self.clock = clock
        self.sink = sink
        self.iovad = try IOVADomain(
            granule: granule, startPFN: basePFN, cpuCount: configuration.cpuCount,
            policy: configuration.linuxCompatible ? .linuxCompatible : .checking,
            warningSink: sink, magazineAllocationFailure: magazineFailure, allocationFailure: iovaFailure,
            cpuPageSize: configuration.cpuPageSize)
        let queueCount = lazy ? (flushQueueOptions.single ? 1 : configuration.cpuCount) : 0
        self.queues = (0..<queueCount).map { _ in FlushQueue(slots: flushQueueOptions.size) }
        self.queueRefs = queues.map { Unmanaged.passUnretained($0) }
        self.fastIOVAD = iovad
        self.iovadRef = Unmanaged.passUnretained(iovad)
        self.domainRef = Unmanaged.passUnretained(domain)
        self.debugEnabled = configuration.debug
        self.debug = configuration.debug ? DMADebugTracker(sink: sink, clock: clock) : nil
        finishTimes = .allocate(capacity: Self.finishTimeSlots)
        for i in 0..<Self.finishTimeSlots { (finishTimes + i).initialize(to: Atomic(0)) }
    }

    deinit {
        finishTimes.deinitialize(count: Self.finishTimeSlots)
        finishTimes.deallocate()
    }

    // MARK: - Flush queue (Linux: queue_iova, fq_flush_iotlb, fq_ring_free, fq_flush_timeout)

    /// Invalidates the whole IOTLB between the two counter increments.
    func flushAll() {
        let number = flushStartCount.wrappingAdd(1, ordering: .sequentiallyConsistent).oldValue
        domain.flushIOTLBAll()
        finishTimes[Int(number % UInt64(Self.finishTimeSlots))].store(clock.nanoseconds, ordering: .relaxed)
        flushFinishCount.wrappingAdd(1, ordering: .sequentiallyConsistent)
    }

    /// Frees every entry from the head whose flush has completed.
    @inline(__always)
    func freeCompleted(_ ring: inout FlushRing, cpu: Int) {
        let finished = flushFinishCount.load(ordering: .sequentiallyConsistent)
        while !ring.isEmpty {
            let entry = ring.entries[ring.head]
            guard entry.counter < finished else { break }
            recordWindow(entry: entry, finished: finished)
            fastIOVAD.fastFree(pfn: PFN(entry.pfn), size: entry.pages, cpu: cpu)
            ring.head = (ring.head &+ 1) & ring.mask
            freedFromQueueCount.wrappingAdd(1, ordering: .relaxed)
        }
    }

    @inline(__always)
    func recordWindow(entry: FlushQueueEntry, finished: UInt64) {
        // The entry's covering flush is flush number `entry.counter` (the first started after it
        // was queued); its finish time is still in the ring unless 256+ flushes have finished since.
        let end: Int64
        if finished &- entry.counter <= UInt64(Self.finishTimeSlots) {
            end = finishTimes[Int(entry.counter % UInt64(Self.finishTimeSlots))].load(ordering: .relaxed)
        } else {
            end = clock.nanoseconds
        }
        staleWindows.record(end &- entry.unmappedAt)
    }

    /// Queues an unmapped IOVA for freeing after the next complete flush. Linux: `queue_iova()`.
    func queue(pfn: UInt64, pages: UInt64, cpu: Int, unmappedAt: Int64) {
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        queueRefs[flushQueueOptions.single ? 0 : cpu]._withUnsafeGuaranteedRef { queue in queue.ring.withLock { ring in
            freeCompleted(&ring, cpu: cpu)
            // Linux flushes once and adds the entry. But the finish counter counts completed
            // flushes, so while another CPU's flush is still in flight one more flush of ours can
            // leave every entry looking unflushed: the ring stays full and Linux's add would
            // overwrite the oldest entries (IOVAs never freed). Flush until the head is freeable;
            // each round retires one more flush, so this ends after at most one round per flush
            // in flight.
            while ring.isFull {
                flushAll()
                freeCompleted(&ring, cpu: cpu)
            }
            ring.entries[ring.tail] = FlushQueueEntry(
                pfn: pfn, pages: pages, counter: flushStartCount.load(ordering: .sequentiallyConsistent),
                unmappedAt: unmappedAt)
            ring.tail = (ring.tail &+ 1) & ring.mask
        } }
        queuedCount.wrappingAdd(1, ordering: .relaxed)
        if !timerArmed.load(ordering: .relaxed) {
            let (armed, _) = timerArmed.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing)
            if armed { timerDeadline.store(unmappedAt &+ flushQueueOptions.timeoutNanoseconds, ordering: .releasing) }
        }
    }

    /// Runs the flush-queue timer if it is armed and due. Linux: `fq_flush_timeout()`.
    /// - Returns: whether it fired.
    @discardableResult
    func runTimerIfDue(now: Int64, cpu: Int) -> Bool {
        guard lazy, timerArmed.load(ordering: .acquiring), now >= timerDeadline.load(ordering: .acquiring) else { return false }
        let (cleared, _) = timerArmed.compareExchange(expected: true, desired: false, ordering: .acquiringAndReleasing)
        guard cleared else { return false }
        flushAll()
        drainCompleted(cpu: cpu)
        return true
    }

    func drainCompleted(cpu: Int) {
        for queue in queues { queue.ring.withLock { freeCompleted(&$0, cpu: cpu) } }
    }

    /// Flushes now and frees every queued IOVA (domain teardown / tests).
    public func flushQueuesNow(cpu: Int = 0) {
        guard lazy else { return }
        flushAll()
        drainCompleted(cpu: cpu)
    }

    // MARK: - Inspection

    /// Statistics of the flush queues and IOTLB flushes.
    public struct Statistics: Hashable, Sendable {
        public var flushesStarted: UInt64
        public var flushesFinished: UInt64
        public var queued: UInt64
        public var freedFromQueue: UInt64
        public var pending: Int
        public var timerArmed: Bool
        public var timerDeadline: Int64
    }

    public var statistics: Statistics {
        var pending = 0
        for queue in queues { pending += queue.ring.withLock { $0.count } }
        return Statistics(
            flushesStarted: flushStartCount.load(ordering: .relaxed), flushesFinished: flushFinishCount.load(ordering: .relaxed),
            queued: queuedCount.load(ordering: .relaxed), freedFromQueue: freedFromQueueCount.load(ordering: .relaxed),
            pending: pending, timerArmed: timerArmed.load(ordering: .relaxed), timerDeadline: timerDeadline.load(ordering: .relaxed))
    }

    /// Whether `pfn` is waiting in a flush queue.
    public func isQueued(pfn: UInt64) -> Bool {
        for queue in queues {
            let found = queue.ring.withLock { ring -> Bool in
                var i = ring.head
                while i != ring.tail {
                    if ring.entries[i].pfn == pfn { return true }
                    i = (i &+ 1) & ring.mask
                }
                return false
            }
            if found { return true }
        }
        return false
    }
}
