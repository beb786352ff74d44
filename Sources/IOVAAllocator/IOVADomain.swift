import IOMMUBase
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An inclusive range of IOVA page frames, `first...last`: one node of the allocator.
///
/// Linux: `struct iova` (`pfn_lo`, `pfn_hi`).
public struct IOVAPFNRange: Hashable, Sendable, CustomStringConvertible {
    /// Linux: `pfn_lo`.
    public var first: PFN
    /// Linux: `pfn_hi`.
    public var last: PFN

    @inlinable public init(first: PFN, last: PFN) {
        self.first = first
        self.last = last
    }

    /// Number of pfns in the range (Linux: `iova_size()`).
    @inlinable public var count: UInt64 { last.rawValue &- first.rawValue &+ 1 }

    public var description: String {
        "[0x" + String(first.rawValue, radix: 16) + ", 0x" + String(last.rawValue, radix: 16) + "]"
    }
}

/// One IOVA space: Linux's IOVA allocator (`drivers/iommu/iova.c`), making the same choices for
/// the same sequence of requests, with the tree walk done in O(log n) and bad frees reported at
/// the faulty call.
///
/// Linux: `struct iova_domain` with its rcaches.
///
/// - The **tree allocator** (`alloc`, `free`, `find`, `reserve`) is Linux's top-down, cached-node
///   search (`alloc_iova`), including the `cached32` node, the `max32_alloc_size` fast fail and its
///   reset, the retry pass from the limit (`iova_find_limit`) and the anchor node. Nodes are kept
///   in a ``RangeTree`` that stores, per subtree, the largest free gap, so the first gap that fits
///   is found without walking the nodes one by one (see docs/iova-allocator.md).
/// - The **fast path** (`fastAlloc`, `fastFree`) is Linux's `alloc_iova_fast`/`free_iova_fast`:
///   sizes below 32 pages are rounded up to a power of two, and per-CPU magazines (6 size
///   classes, 127 pfns each, `loaded`/`prev` per CPU) over a depot of full magazines cache freed
///   ranges. A failed allocation may flush every cache and retry once.
/// - The **depot trimming** that Linux runs as delayed work every 100 ms is driven by `tick`;
///   nothing runs behind the caller's back.
///
/// CPU identity is an explicit `cpu` argument (0..<cpuCount); the overloads without it use
/// a per-thread default (`currentCPU`). Each CPU's magazines are guarded by a per-CPU spin lock that is
/// uncontended when callers use distinct CPUs (as Linux's per-CPU lock is); the tree and each
/// depot have their own locks (see `SpinLock.swift`). All methods are safe to call from many
/// threads.
///
/// ## Policies
/// - ``Policy/checking`` (default): every free is validated at once. Freeing a pfn that is not
///   the first pfn of a live allocation of the same (rounded) size, or that is already cached, is
///   reported as an ``IOMMUWarning`` naming the pfn, size and CPU and is rejected: it is never
///   cached and never handed out twice. A lock-free table of live allocations keeps that check
///   off the tree lock.
/// - ``Policy/linuxCompatible``: exactly Linux: `fastFree` caches whatever it is given, a magazine
///   drain warns ``IOMMUWarning/iovaDrainFoundNoAllocation(pfn:)`` and skips pfns with no node,
///   and `free(pfn)` inside an allocation frees the whole allocation.
public final class IOVADomain: @unchecked Sendable {
    /// How frees are validated.
    public enum Policy: String, Hashable, Sendable, CaseIterable {
        /// Validate every free at once; warn and reject bad ones (IOMMUKit's default).
        case checking
        /// Behave exactly as Linux (accept bad frees into the caches; warn only on drain).
        case linuxCompatible = "linux-compatible"
    }

    /// Linux: `IOVA_RANGE_CACHE_MAX_SIZE`: cached sizes are 1, 2, 4, 8, 16, 32 pages.
    public static var rangeCacheSizeClasses: Int { 6 }
    /// Linux: `IOVA_MAG_SIZE`.
    public static var magazineCapacity: Int { Magazine.capacity }
    /// Linux: `IOVA_DEPOT_DELAY` (100 ms), in nanoseconds.
    public static var depotDelayNanoseconds: Int64 { 100_000_000 }
    /// Linux: `IOVA_ANCHOR`.
    public static var anchorPFN: UInt64 { .max }

    /// The smallest unit of allocation.
    public let granule: PageSize
    /// Lowest pfn ever allocated (Linux: `start_pfn`).
    public let startPFN: UInt64
    /// First pfn at or above 4 GiB (Linux: `dma_32bit_pfn`).
    public let dma32BitPFN: UInt64
    /// Number of CPUs with magazines (Linux: possible CPUs; the depot keeps this many full
    /// magazines when trimming).
    public let cpuCount: Int
    /// How frees are validated.
    public let policy: Policy

    @usableFromInline let checking: Bool
    @usableFromInline let sink: any WarningSink
    let magazineFailure: FailNth?
    @usableFromInline let allocationFailure: FailNth?
    /// The tree lock word and what it guards. Locks and atomics are kept out of line: an
    /// `Atomic` stored inline in this class was laid out past the end of the object by the 6.3
    /// compiler (valgrind: invalid write in init). The locks are small atomic locks of this module
    /// rather than `Synchronization.Mutex`, whose Linux fast path ThreadSanitizer cannot see
    /// (hundreds of false "data race" reports); see `SpinLock.swift`.
    let treeLock: UnsafeMutablePointer<Atomic<UInt32>>
    let treeState: UnsafeMutablePointer<TreeState>
    @usableFromInline let table: AllocationTable
    /// Per-CPU blocks of `cpuStride` bytes: a spin-lock word, then 6 `loaded` + 6 `prev` magazines.
    @usableFromInline let cpuBlocks: UnsafeMutableRawPointer
    /// One lock word per size class, each on its own cache line, and the depots they guard.
    let depotLocks: UnsafeMutableRawPointer
    let depots: UnsafeMutablePointer<Depot>
    /// Simulated time for the depot work, nanoseconds.
    let clockPointer: UnsafeMutablePointer<Atomic<Int64>>
    @inline(__always) var clock: UnsafeMutablePointer<Atomic<Int64>> { clockPointer }

    @inlinable static var cpuStride: Int { 256 }
    @inlinable static var magazinesOffset: Int { 64 }

    /// Creates an empty domain (Linux: `init_iova_domain` + `iova_domain_init_rcaches`).
    ///
    /// - Parameters:
    ///   - granule: the IOVA page size; a power of two no larger than `cpuPageSize` (Linux BUGs
    ///     otherwise) and at least 256 bytes.
    ///   - startPFN: lowest pfn that may be allocated (dma-iommu uses 1 or the aperture start).
    ///   - cpuCount: number of CPUs with their own magazines.
    ///   - policy: ``Policy/checking`` (default) or ``Policy/linuxCompatible``.
    ///   - warningSink: where warnings go.
    ///   - magazineAllocationFailure: fault injection for "a new magazine cannot be allocated"
    ///     (Linux: `iova_magazine_alloc(GFP_ATOMIC)` returning NULL in the rcache insert).
    ///   - allocationFailure: fault injection for "no IOVA space": the armed call of `alloc` or
    ///     `fastAlloc` throws `.noIOVASpace` at once, before touching caches or tree, as if the
    ///     space were full (Linux: `alloc_iova_fast` returning 0, so dma-iommu's map returns
    ///     `DMA_MAPPING_ERROR`). Consulted with `shouldFailWhenArmed()` (one load when disarmed).
    ///   - cpuPageSize: the CPU page size the granule is checked against (Linux: `PAGE_SIZE`).
    /// - Throws: `.invalidConfiguration` for a bad granule or a CPU count below 1.
    public init(
        granule: PageSize = .size4K,
        startPFN: UInt64,
        cpuCount: Int = 1,
        policy: Policy = .checking,
        warningSink: any WarningSink = DiscardingWarningSink(),
        magazineAllocationFailure: FailNth? = nil,
        allocationFailure: FailNth? = nil,
        cpuPageSize: PageSize = .size4K
    ) throws(IOMMUError) {
        guard granule <= cpuPageSize, granule.shift >= 8, granule.shift <= 32 else {
            throw IOMMUError(.invalidConfiguration, length: granule.bytes)
        }
        guard cpuCount >= 1, cpuCount <= 4096 else { throw IOMMUError(.invalidConfiguration, length: UInt64(max(cpuCount, 0))) }
        self.granule = granule
        self.startPFN = startPFN
        self.dma32BitPFN = UInt64(1) << UInt64(32 - granule.shift)
        self.cpuCount = cpuCount
        self.policy = policy
        self.checking = policy == .checking
        self.sink = warningSink
        self.magazineFailure = magazineAllocationFailure
        self.allocationFailure = allocationFailure
        treeLock = .allocate(capacity: 1)
        treeLock.initialize(to: Atomic(0))
        treeState = .allocate(capacity: 1)
        treeState.initialize(to: TreeState(startPFN: startPFN, dma32BitPFN: UInt64(1) << UInt64(32 - granule.shift)))
        clockPointer = .allocate(capacity: 1)
        clockPointer.initialize(to: Atomic(0))
        self.table = AllocationTable()
        cpuBlocks = .allocate(byteCount: Self.cpuStride * cpuCount, alignment: 128)
        for cpu in 0..<cpuCount {
            let block = cpuBlocks + cpu * Self.cpuStride
            block.bindMemory(to: Atomic<UInt32>.self, capacity: 1).initialize(to: Atomic(0))
            let mags = (block + Self.magazinesOffset).bindMemory(to: Magazine.self, capacity: 12)
            for i in 0..<12 { (mags + i).initialize(to: Magazine()) }
        }
        depots = .allocate(capacity: Self.rangeCacheSizeClasses)
        depotLocks = .allocate(byteCount: 64 * Self.rangeCacheSizeClasses, alignment: 64)
        for i in 0..<Self.rangeCacheSizeClasses {
            (depots + i).initialize(to: Depot())
            (depotLocks + 64 * i).bindMemory(to: Atomic<UInt32>.self, capacity: 1).initialize(to: Atomic(0))
        }
    }

    /// Linux: `put_iova_domain`: the cached pfns are dropped (not returned to the tree) and every
    /// node is freed.
    deinit {
        for cpu in 0..<cpuCount {
            let block = cpuBlocks + cpu * Self.cpuStride
            block.assumingMemoryBound(to: Atomic<UInt32>.self).deinitialize(count: 1)
            magazines(cpu).deinitialize(count: 12)
        }
        cpuBlocks.deallocate()
        depots.deinitialize(count: Self.rangeCacheSizeClasses)
        depots.deallocate()
        for i in 0..<Self.rangeCacheSizeClasses {
            (depotLocks + 64 * i).assumingMemoryBound(to: Atomic<UInt32>.self).deinitialize(count: 1)
        }
        depotLocks.deallocate()
        treeState.deinitialize(count: 1)
        treeState.deallocate()
        treeLock.deinitialize(count: 1)
        treeLock.deallocate()
        clockPointer.deinitialize(count: 1)
        clockPointer.deallocate()
    }

    // MARK: - Per-CPU access

    @inlinable @inline(always)
    func cpuLock(_ cpu: Int) -> UnsafeMutablePointer<Atomic<UInt32>> {
        (cpuBlocks + cpu &* IOVADomain.cpuStride).assumingMemoryBound(to: Atomic<UInt32>.self)
    }

    @inlinable @inline(always)
    func magazines(_ cpu: Int) -> UnsafeMutablePointer<Magazine> {
        (cpuBlocks + (cpu &* IOVADomain.cpuStride &+ IOVADomain.magazinesOffset)).assumingMemoryBound(to: Magazine.self)
    }

    @inlinable @inline(always)
    func lockCPU(_ cpu: Int) { spinLock(cpuLock(cpu)) }

    @inlinable @inline(always)
    func unlockCPU(_ cpu: Int) { spinUnlock(cpuLock(cpu)) }

    /// Runs `body` on the tree state under the tree lock (Linux: `iova_rbtree_lock`).
    @inline(__always)
    func withTree<R, E: Error>(_ body: (inout TreeState) throws(E) -> R) throws(E) -> R {
        spinLock(treeLock)
        defer { spinUnlock(treeLock) }
        return try body(&treeState.pointee)
    }

    /// Runs `body` on one size class's depot under its lock (Linux: `rcache->lock`).
    @inline(__always)
    func withDepot<R: ~Copyable>(_ order: Int, _ body: (inout Depot) -> R) -> R {
        let lock = (depotLocks + 64 &* order).assumingMemoryBound(to: Atomic<UInt32>.self)
        spinLock(lock)
        defer { spinUnlock(lock) }
        return body(&depots[order])
    }

    /// The CPU index the calling thread defaults to: a hash of the thread's identity modulo
    /// `cpuCount` (stable for the thread's lifetime; two threads may share an index, which is
    /// correct but contends on that CPU's lock).
    public var currentCPU: Int {
        let id = UInt64(UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(bitPattern: UInt(pthread_self())))))
        return Int(truncatingIfNeeded: ((id &* 0x9E37_79B9_7F4A_7C15) >> 32) % UInt64(cpuCount))
    }

    @inlinable @inline(always)
    func checkCPU(_ cpu: Int) {
        precondition(cpu >= 0 && cpu < cpuCount, "cpu index out of range")
    }

    // MARK: - Tree allocator

    /// Allocates `size` pfns at or below `limitPFN`, top-down from the cached node.
    ///
    /// Linux: `alloc_iova(iovad, size, limit_pfn, size_aligned)`.
    /// - Parameters:
    ///   - size: pages, >= 1.
    ///   - limitPFN: highest pfn the allocation may use (inclusive).
    ///   - sizeAligned: align the first pfn to `roundUpPowerOfTwo(size)`.
    /// - Returns: the new node.
    /// - Throws: `.noIOVASpace` when nothing fits; `.invalidArgument` for size 0.
    public func alloc(size: UInt64, limitPFN: UInt64, sizeAligned: Bool) throws(IOMMUError) -> IOVAPFNRange {
        guard size >= 1, size <= 1 << 60, limitPFN < .max else {
            throw IOMMUError(.invalidArgument, address: limitPFN, length: size)
        }
        if let failure = allocationFailure, failure.shouldFailWhenArmed() {
            throw IOMMUError(.noIOVASpace, address: limitPFN, length: size)
        }
        let checking = self.checking
        let node = withTree { s in
            let n = s.allocate(size: size, limit: limitPFN &+ 1, sizeAligned: sizeAligned)
            if n != 0 && checking && size <= AllocationTable.maxTrackedSize { track(s.tree.lo(n), size: size) }
            return n == 0 ? nil : IOVAPFNRange(first: PFN(s.tree.lo(n)), last: PFN(s.tree.hi(n)))
        }
        guard let node else { throw IOMMUError(.noIOVASpace, address: limitPFN, length: size) }
        return node
    }

    /// Records a new live allocation in the checking table (under the tree lock).
    func track(_ pfn: UInt64, size: UInt64) {
        if table.needsRebuild {
            for cpu in 0..<cpuCount { lockCPU(cpu) }
            table.rebuild()
            for cpu in 0..<cpuCount { unlockCPU(cpu) }
        }
        table.insert(pfn, size: size)
    }

    /// The node containing `pfn` (not only starting at it), or nil.
    ///
    /// Linux: `find_iova()`.
    public func find(_ pfn: PFN) -> IOVAPFNRange? {
        withTree { s in
            let n = s.tree.containing(pfn.rawValue)
            return n == 0 ? nil : IOVAPFNRange(first: PFN(s.tree.lo(n)), last: PFN(s.tree.hi(n)))
        }
    }

    /// Frees the allocation containing `pfn`.
    ///
    /// Linux: `free_iova()`: finds the node containing `pfn` and frees the whole node; a pfn in
    /// no node is ignored. With ``Policy/checking``, a pfn that is not the first pfn of a node
    /// (``IOMMUWarning/iovaFreeInsideAllocation(pfn:pages:allocationStart:cpu:)``), in no node
    /// (``IOMMUWarning/iovaFreeNotAllocated(pfn:pages:cpu:)``) or already cached
    /// (``IOMMUWarning/iovaDoubleFree(pfn:pages:cpu:)``) is reported and nothing is freed; these
    /// warnings carry `pages: 0` and `cpu: -1` (the tree API has neither).
    /// - Returns: the freed node, or nil.
    @discardableResult
    public func free(_ pfn: PFN) -> IOVAPFNRange? {
        let p = pfn.rawValue
        var warning: IOMMUWarning?
        let checking = self.checking
        let freed: IOVAPFNRange? = withTree { s in
            let (n, succ) = s.tree.containingWithSuccessor(p)
            if n == 0 || s.tree.lo(n) == IOVADomain.anchorPFN {
                if checking { warning = .iovaFreeNotAllocated(pfn: pfn, pages: 0, cpu: -1) }
                return nil
            }
            let range = IOVAPFNRange(first: PFN(s.tree.lo(n)), last: PFN(s.tree.hi(n)))
            if checking {
                if range.first.rawValue != p {
                    warning = .iovaFreeInsideAllocation(pfn: pfn, pages: 0, allocationStart: range.first, cpu: -1)
                    return nil
                }
                let w = table.lookup(p)
                if w & AllocationTable.cachedBit != 0 {
                    warning = .iovaDoubleFree(pfn: pfn, pages: 0, cpu: -1)
                    return nil
                }
                if w != 0 { table.remove(p) }
            }
            s.free(n, successor: succ)
            return range
        }
        if let warning { sink.warn(warning) }
        return freed
    }

    /// Reserves `[lo, hi]` so that it is never allocated; overlapping nodes are stretched and
    /// merged as Linux does.
    ///
    /// Linux: `reserve_iova()`. Does not touch the cached nodes.
    /// - Returns: the node covering the (remaining) range, or nil after
    ///   ``IOMMUWarning/iovaReserveOutOfRange(low:high:)`` when a pfn is beyond `UInt64.max >> shift`.
    @discardableResult
    public func reserve(lo: PFN, hi: PFN) -> IOVAPFNRange? {
        let maxPFN = UInt64.max >> UInt64(granule.shift)
        guard lo.rawValue | hi.rawValue <= maxPFN else {
            sink.warn(.iovaReserveOutOfRange(low: lo, high: hi))
            return nil
        }
        return withTree { s in
            let n = s.reserve(lo: lo.rawValue, hi: hi.rawValue)
            return IOVAPFNRange(first: PFN(s.tree.lo(n)), last: PFN(s.tree.hi(n)))
        }
    }

    // MARK: - Fast path (rcaches)

    /// Allocates `size` pages at or below `limitPFN` from the calling CPU's caches, else from the
    /// tree (size-aligned), else (with `flushCaches`) after returning every cached range to the
    /// tree, once.
    ///
    /// Linux: `alloc_iova_fast(iovad, size, limit_pfn, flush_rcache)`. Sizes below 32 pages are
    /// rounded up to a power of two first. A cache hit returns the most recently cached suitable
    /// pfn, not the highest.
    /// - Returns: the first pfn.
    /// - Throws: `.noIOVASpace`.
    @inlinable @inline(always)
    public func fastAlloc(size: UInt64, limitPFN: UInt64, flushCaches: Bool, cpu: Int) throws(IOMMUError) -> PFN {
        // Inlined into callers: only the magazine hit of a valid request (1...32 pages, a CPU in
        // range, no fault injector). Everything else, and every error, is in `fastAllocSlow`, so
        // the inlined code stays small enough for the optimiser to inline `fastFree` next to it.
        if size &- 1 < 32 && UInt(bitPattern: cpu) < UInt(bitPattern: cpuCount) && allocationFailure == nil {
            let rounded = size == 1 ? 1 : UInt64(1) &<< UInt64(64 &- (size &- 1).leadingZeroBitCount)
            // Linux passes limit_pfn + 1 - size (wrapping, as in C) as the highest usable pfn.
            let pfn = rcacheGet(order: orderOf(rounded), cpu: cpu, highestPFN: limitPFN &+ 1 &- rounded)
            if pfn != 0 { return PFN(pfn) }
            return try fastAllocFromTree(size: rounded, limitPFN: limitPFN, flushCaches: flushCaches)
        }
        return try fastAllocSlow(size: size, limitPFN: limitPFN, flushCaches: flushCaches, cpu: cpu)
    }

    /// `fastAlloc` for everything but the inlined magazine hit: argument checks, the fault
    /// injector, sizes above 32 pages.
    @usableFromInline @inline(never)
    func fastAllocSlow(size: UInt64, limitPFN: UInt64, flushCaches: Bool, cpu: Int) throws(IOMMUError) -> PFN {
        checkCPU(cpu)
        if let failure = allocationFailure, failure.shouldFailWhenArmed() {
            throw IOMMUError(.noIOVASpace, address: limitPFN, length: size)
        }
        var size = size
        if size < 32 {
            guard size != 0 else { throw IOMMUError(.invalidArgument, address: limitPFN, length: 0) }
            size = size == 1 ? 1 : UInt64(1) &<< UInt64(64 &- (size &- 1).leadingZeroBitCount)
        }
        let order = orderOf(size)
        if order < Self.rangeCacheSizeClasses {
            let pfn = rcacheGet(order: order, cpu: cpu, highestPFN: limitPFN &+ 1 &- size)
            if pfn != 0 { return PFN(pfn) }
        }
        return try fastAllocFromTree(size: size, limitPFN: limitPFN, flushCaches: flushCaches)
    }

    /// `fastAlloc` on the calling thread's CPU (`currentCPU`).
    public func fastAlloc(size: UInt64, limitPFN: UInt64, flushCaches: Bool) throws(IOMMUError) -> PFN {
        try fastAlloc(size: size, limitPFN: limitPFN, flushCaches: flushCaches, cpu: currentCPU)
    }

    @usableFromInline @inline(never)
    func fastAllocFromTree(size: UInt64, limitPFN: UInt64, flushCaches: Bool) throws(IOMMUError) -> PFN {
        guard size <= 1 << 60, limitPFN < .max else { throw IOMMUError(.invalidArgument, address: limitPFN, length: size) }
        let checking = self.checking
        var flush = flushCaches
        while true {
            let pfn: UInt64 = withTree { s in
                let n = s.allocate(size: size, limit: limitPFN &+ 1, sizeAligned: true)
                if n == 0 { return 0 }
                let lo = s.tree.lo(n)
                if checking && size <= AllocationTable.maxTrackedSize { track(lo, size: size) }
                return lo
            }
            if pfn != 0 { return PFN(pfn) }
            if !flush { throw IOMMUError(.noIOVASpace, address: limitPFN, length: size) }
            flush = false
            flushAllCaches()
        }
    }

    /// Returns `size` pages at `pfn` to the calling CPU's cache, or to the tree when the size is
    /// not cached (32+ pages rounded) or no magazine can be allocated.
    ///
    /// Linux: `free_iova_fast(iovad, pfn, size)`, bucketed by `order_base_2(size)`. With
    /// ``Policy/checking`` the free is validated first; a bad one is reported (see ``Policy``) and
    /// ignored.
    @inlinable @inline(always)
    public func fastFree(pfn: PFN, size: UInt64, cpu: Int) {
        // Inlined into callers: a cached size (1...32 pages) on a CPU in range; the rest is in
        // `fastFreeSlow`.
        if size &- 1 < 32 && UInt(bitPattern: cpu) < UInt(bitPattern: cpuCount) {
            if rcacheInsert(order: orderOf(size), cpu: cpu, pfn: pfn.rawValue, size: size) { return }
            freeFromFastPath(pfn: pfn.rawValue, size: size, cpu: cpu)
            return
        }
        fastFreeSlow(pfn: pfn, size: size, cpu: cpu)
    }

    /// `fastFree` for what the inlined part does not handle: a CPU out of range (a trap), size 0
    /// (cached as order 0 by `linuxCompatible`, as Linux's `order_base_2(0)`; rejected by
    /// `checking`), sizes above 32 pages (to the tree).
    @usableFromInline @inline(never)
    func fastFreeSlow(pfn: PFN, size: UInt64, cpu: Int) {
        checkCPU(cpu)
        let order = orderOf(size)
        if order < Self.rangeCacheSizeClasses && (size != 0 || !checking) {
            if rcacheInsert(order: order, cpu: cpu, pfn: pfn.rawValue, size: size) { return }
        }
        freeFromFastPath(pfn: pfn.rawValue, size: size, cpu: cpu)
    }

    /// `fastFree` on the calling thread's CPU (`currentCPU`).
    public func fastFree(pfn: PFN, size: UInt64) {
        fastFree(pfn: pfn, size: size, cpu: currentCPU)
    }

    /// Linux: `iova_rcache_get` for one size class.
    @inlinable @inline(always)
    func rcacheGet(order: Int, cpu: Int, highestPFN: UInt64) -> UInt64 {
        lockCPU(cpu)
        let mags = magazines(cpu)
        if mags[order].isEmpty {
            if !mags[order &+ 6].isEmpty {
                swap(&mags[order], &mags[order &+ 6])
            } else if !loadFromDepot(mags + order, order: order) {
                unlockCPU(cpu)
                return 0
            }
        }
        let pfn = mags[order].pop(atOrBelow: highestPFN)
        if checking && pfn != 0 { table.markLive(pfn) }
        unlockCPU(cpu)
        return pfn
    }

    /// Replaces the (empty) loaded magazine with a full one from the depot, if any.
    @usableFromInline @inline(never)
    func loadFromDepot(_ loaded: UnsafeMutablePointer<Magazine>, order: Int) -> Bool {
        var full = withDepot(order) { $0.pop() }
        guard !full.isEmpty else { return false }
        swap(&loaded.pointee, &full)  // the old, empty loaded magazine is freed with `full`
        return true
    }

    /// Linux: `iova_rcache_insert`, plus the checking policy's validation. Returns false when the
    /// caller must fall back to the tree free (no magazine could be allocated). A free the checking
    /// policy rejects is reported here and counts as handled (true).
    @inlinable @inline(always)
    func rcacheInsert(order: Int, cpu: Int, pfn: UInt64, size: UInt64) -> Bool {
        lockCPU(cpu)
        if checking {
            if !table.markCached(pfn, order: order) {
                unlockCPU(cpu)
                // Diagnosed (and reported) under the tree lock, where the table is authoritative.
                diagnoseBadFastFree(pfn: pfn, size: size, order: order, cpu: cpu)
                return true
            }
        }
        let mags = magazines(cpu)
        if mags[order].isFull {
            if !mags[order &+ 6].isFull {
                swap(&mags[order], &mags[order &+ 6])
            } else if !pushLoadedToDepot(mags + order, order: order) {
                if checking { table.markLive(pfn) }
                unlockCPU(cpu)
                return false
            }
        }
        mags[order].push(pfn)
        unlockCPU(cpu)
        return true
    }

    /// Both magazines full: a new empty magazine becomes `loaded` and the full one goes to the
    /// depot (scheduling the depot work if it is not pending). False when allocation fails.
    @usableFromInline @inline(never)
    func pushLoadedToDepot(_ loaded: UnsafeMutablePointer<Magazine>, order: Int) -> Bool {
        if let failure = magazineFailure, failure.shouldFail() { return false }
        var full: Magazine? = Magazine()
        swap(&loaded.pointee, &full!)
        let now = clock.pointee.load(ordering: .relaxed)
        withDepot(order) { $0.push(full.take()!, now: now) }
        return true
    }

    /// The tree side of `fastFree`: sizes that are not cached, or a failed magazine allocation.
    @usableFromInline @inline(never)
    func freeFromFastPath(pfn: UInt64, size: UInt64, cpu: Int) {
        guard checking else {
            free(PFN(pfn))
            return
        }
        var warning: IOMMUWarning?
        withTree { s in
            let n = s.tree.containing(pfn)
            if n == 0 || s.tree.lo(n) == IOVADomain.anchorPFN || s.tree.flags(n) & RangeTree.reservedFlag != 0 {
                warning = .iovaFreeNotAllocated(pfn: PFN(pfn), pages: size, cpu: cpu)
                return
            }
            let lo = s.tree.lo(n)
            if lo != pfn {
                warning = .iovaFreeInsideAllocation(pfn: PFN(pfn), pages: size, allocationStart: PFN(lo), cpu: cpu)
                return
            }
            let w = table.lookup(pfn)
            if w & AllocationTable.cachedBit != 0 {
                warning = .iovaDoubleFree(pfn: PFN(pfn), pages: size, cpu: cpu)
                return
            }
            let live = s.tree.hi(n) &- lo &+ 1
            if fastRounded(live) != fastRounded(size) {
                warning = .iovaFreeWrongSize(pfn: PFN(pfn), pages: size, allocatedPages: live, cpu: cpu)
                return
            }
            if w != 0 { table.remove(pfn) }
            s.free(n)
        }
        if let warning { sink.warn(warning) }
    }

    /// Reports why a cached-size free failed the table check.
    @usableFromInline @inline(never)
    func diagnoseBadFastFree(pfn: UInt64, size: UInt64, order: Int, cpu: Int) {
        var warning: IOMMUWarning?
        var retry = false
        withTree { s in
            let w = table.lookup(pfn)
            if w != 0 {
                if w & AllocationTable.cachedBit != 0 {
                    warning = .iovaDoubleFree(pfn: PFN(pfn), pages: size, cpu: cpu)
                } else if orderOf(w & AllocationTable.sizeMask) != order {
                    warning = .iovaFreeWrongSize(pfn: PFN(pfn), pages: size, allocatedPages: w & AllocationTable.sizeMask, cpu: cpu)
                } else {
                    retry = true  // became valid meanwhile (a concurrent change): try again
                }
                return
            }
            let n = s.tree.containing(pfn)
            if n == 0 || s.tree.lo(n) == IOVADomain.anchorPFN || s.tree.flags(n) & RangeTree.reservedFlag != 0 {
                warning = .iovaFreeNotAllocated(pfn: PFN(pfn), pages: size, cpu: cpu)
            } else if s.tree.lo(n) != pfn {
                warning = .iovaFreeInsideAllocation(pfn: PFN(pfn), pages: size, allocationStart: PFN(s.tree.lo(n)), cpu: cpu)
            } else {
                warning = .iovaFreeWrongSize(pfn: PFN(pfn), pages: size, allocatedPages: s.tree.hi(n) &- pfn &+ 1, cpu: cpu)
            }
        }
        if let warning { sink.warn(warning) }
        if retry { fastFree(pfn: PFN(pfn), size: size, cpu: cpu) }
    }

    // MARK: - Flushing, depot work, teardown

    /// Returns every pfn in `cpu`'s magazines to the tree, size class by size class, `loaded`
    /// before `prev`, oldest entry first.
    ///
    /// Linux: `free_cpu_cached_iovas()` (also the CPU-hotplug "dead" callback).
    public func flushCPU(_ cpu: Int) {
        checkCPU(cpu)
        var drained: [UInt64] = []
        lockCPU(cpu)
        let mags = magazines(cpu)
        for order in 0..<Self.rangeCacheSizeClasses {
            for slot in [order, order + 6] {
                for i in 0..<mags[slot].count { drained.append(mags[slot][i]) }
                mags[slot].removeAll()
            }
        }
        unlockCPU(cpu)
        returnToTree(drained)
    }

    /// Returns every depot magazine of every size class to the tree.
    ///
    /// Linux: `free_global_cached_iovas()`.
    public func flushDepots() {
        for order in 0..<Self.rangeCacheSizeClasses {
            var drained: [UInt64] = []
            withDepot(order) { depot in
                while depot.count > 0 {
                    let mag = depot.pop()
                    for i in 0..<mag.count { drained.append(mag[i]) }
                }
            }
            returnToTree(drained)
        }
    }

    /// Every CPU's magazines, then every depot (what `fastAlloc` does before its retry).
    public func flushAllCaches() {
        for cpu in 0..<cpuCount { flushCPU(cpu) }
        flushDepots()
    }

    /// Linux: `iova_magazine_free_pfns`: each pfn's node is freed; a pfn with no node is reported
    /// (``IOMMUWarning/iovaDrainFoundNoAllocation(pfn:)``) and skipped.
    func returnToTree(_ pfns: [UInt64]) {
        if pfns.isEmpty { return }
        var missing: [UInt64] = []
        let checking = self.checking
        withTree { s in
            for pfn in pfns {
                let (n, succ) = s.tree.containingWithSuccessor(pfn)
                if n == 0 || s.tree.lo(n) == IOVADomain.anchorPFN {
                    missing.append(pfn)
                    continue
                }
                if checking { table.remove(s.tree.lo(n)) }
                s.free(n, successor: succ)
            }
        }
        for pfn in missing { sink.warn(.iovaDrainFoundNoAllocation(pfn: PFN(pfn))) }
    }

    /// Advances the domain's clock by `nanoseconds` and runs the depot work that falls due:
    /// each size class whose work is pending runs it every 100 ms; a run returns one full magazine
    /// to the tree if the depot holds more than `cpuCount` of them, and then reschedules itself.
    ///
    /// Linux: `iova_depot_work_func` (a delayed work item, `IOVA_DEPOT_DELAY`). Nothing is trimmed
    /// unless the caller calls this.
    public func tick(nanoseconds: Int64) {
        precondition(nanoseconds >= 0, "time runs forward")
        let now = clock.pointee.add(nanoseconds, ordering: .relaxed).newValue
        for order in 0..<Self.rangeCacheSizeClasses {
            while true {
                var drained: [UInt64] = []
                let ran: Bool = withDepot(order) { depot in
                    guard let due = depot.deadline, due <= now else { return false }
                    depot.deadline = nil
                    if depot.count > cpuCount {
                        let mag = depot.pop()
                        for i in 0..<mag.count { drained.append(mag[i]) }
                        depot.deadline = due + IOVADomain.depotDelayNanoseconds
                    }
                    return true
                }
                if !ran { break }
                returnToTree(drained)
            }
        }
    }

    /// The domain's clock (nanoseconds of `tick` so far).
    public var now: Int64 { clock.pointee.load(ordering: .relaxed) }

    // MARK: - Inspection (tests, tools)

    /// A snapshot of the allocator's state, for tests and tools.
    public struct Snapshot: Sendable, Equatable {
        /// Every node except the anchor, ascending.
        public var nodes: [IOVAPFNRange]
        /// Nodes created by `reserve`.
        public var reserved: [IOVAPFNRange]
        /// Linux: `cached_node` / `cached32_node` (`pfn_lo`; the anchor is `UInt64.max`).
        public var cachedPFN: UInt64
        public var cached32PFN: UInt64
        /// Linux: `max32_alloc_size`.
        public var max32AllocSize: UInt64
        /// Per CPU, per size class: (loaded, prev) contents.
        public var cpuMagazines: [[([UInt64], [UInt64])]]
        /// Per size class: depot magazines, newest first.
        public var depot: [[[UInt64]]]
        /// Nanoseconds at which each size class's depot work is due, if pending.
        public var depotDeadlines: [Int64?]

        public static func == (a: Snapshot, b: Snapshot) -> Bool {
            a.nodes == b.nodes && a.reserved == b.reserved && a.cachedPFN == b.cachedPFN
                && a.cached32PFN == b.cached32PFN && a.max32AllocSize == b.max32AllocSize
                && a.depot == b.depot && a.depotDeadlines == b.depotDeadlines
                && a.cpuMagazines.count == b.cpuMagazines.count
                && zip(a.cpuMagazines, b.cpuMagazines).allSatisfy { x, y in
                    x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
                }
        }
    }

    /// Takes every lock in turn and copies the state.
    public func snapshot() -> Snapshot {
        var snap = withTree { s in
            var nodes: [IOVAPFNRange] = [], reserved: [IOVAPFNRange] = []
            s.tree.forEach { lo, hi, flags in
                if lo == IOVADomain.anchorPFN { return }
                let r = IOVAPFNRange(first: PFN(lo), last: PFN(hi))
                nodes.append(r)
                if flags & RangeTree.reservedFlag != 0 { reserved.append(r) }
            }
            return Snapshot(nodes: nodes, reserved: reserved, cachedPFN: s.tree.lo(s.cached),
                            cached32PFN: s.tree.lo(s.cached32), max32AllocSize: s.max32AllocSize,
                            cpuMagazines: [], depot: [], depotDeadlines: [])
        }
        for cpu in 0..<cpuCount {
            lockCPU(cpu)
            let mags = magazines(cpu)
            var perOrder: [([UInt64], [UInt64])] = []
            for order in 0..<Self.rangeCacheSizeClasses {
                let loaded = (0..<mags[order].count).map { mags[order][$0] }
                let prev = (0..<mags[order + 6].count).map { mags[order + 6][$0] }
                perOrder.append((loaded, prev))
            }
            unlockCPU(cpu)
            snap.cpuMagazines.append(perOrder)
        }
        for order in 0..<Self.rangeCacheSizeClasses {
            withDepot(order) { depot in
                snap.depot.append(depot.contents())
                snap.depotDeadlines.append(depot.deadline)
            }
        }
        return snap
    }

    /// Verifies the tree, the caches and (checking policy) the allocation table against each
    /// other; returns a description of the first problem, or nil. Takes every lock.
    public func checkInvariants() -> String? {
        let snap = snapshot()
        return withTree { s -> String? in
            if let p = s.tree.checkInvariants() { return p }
            if s.cached == 0 { return "cached node is none" }
            if s.cached32 == 0 { return "cached32 node is none" }
            if s.tree.lo(s.tree.floor(.max)) != IOVADomain.anchorPFN { return "anchor missing" }
            var cached: [UInt64] = []
            for perOrder in snap.cpuMagazines { for (l, p) in perOrder { cached += l; cached += p } }
            for mags in snap.depot { for m in mags { cached += m } }
            if checking {
                var seen = Set<UInt64>()
                for pfn in cached {
                    if !seen.insert(pfn).inserted { return "pfn \(pfn) cached twice" }
                    let w = table.lookup(pfn)
                    if w & AllocationTable.cachedBit == 0 { return "cached pfn \(pfn) not marked cached" }
                    let n = s.tree.containing(pfn)
                    if n == 0 || s.tree.lo(n) != pfn { return "cached pfn \(pfn) has no node" }
                }
                var tracked = 0
                var problem: String?
                s.tree.forEach { lo, hi, flags in
                    guard problem == nil, lo != IOVADomain.anchorPFN, flags & RangeTree.reservedFlag == 0 else { return }
                    let size = hi - lo + 1
                    if size <= AllocationTable.maxTrackedSize {
                        let w = table.lookup(lo)
                        if w == 0 { problem = "live node \(lo) not tracked" }
                        else if w & AllocationTable.sizeMask != size { problem = "node \(lo) tracked with wrong size" }
                        else if w & AllocationTable.cachedBit != 0 && !seen.contains(lo) { problem = "node \(lo) marked cached but in no magazine" }
                        tracked += 1
                    }
                }
                if let problem { return problem }
                if tracked != table.liveCount { return "table has \(table.liveCount) entries, tree \(tracked)" }
            }
            return nil
        }
    }
}

/// The size `fastAlloc` would have used: powers of two below 32 pages, unchanged above.
@inline(__always)
func fastRounded(_ size: UInt64) -> UInt64 {
    size < 32 && size > 1 ? UInt64(1) << UInt64(64 - (size - 1).leadingZeroBitCount) : size
}

// MARK: - Tree state (under the tree lock)

/// Everything Linux guards with `iova_rbtree_lock`.
struct TreeState: ~Copyable {
    var tree: RangeTree
    /// Linux: `cached_node`, `cached32_node` (node indices).
    var cached: Int32
    var cached32: Int32
    /// Linux: `max32_alloc_size`.
    var max32AllocSize: UInt64
    let startPFN: UInt64
    let dma32BitPFN: UInt64

    init(startPFN: UInt64, dma32BitPFN: UInt64) {
        var t = RangeTree()
        let anchor = t.insert(lo: IOVADomain.anchorPFN, hi: IOVADomain.anchorPFN)
        tree = t
        cached = anchor
        cached32 = anchor
        max32AllocSize = dma32BitPFN
        self.startPFN = startPFN
        self.dma32BitPFN = dma32BitPFN
    }

    /// Linux: `__alloc_and_insert_iova_range` with the exclusive `limit`. Returns the new node or 0.
    ///
    /// Linux walks predecessors from the start node and stops at the first node `x` whose
    /// topmost aligned candidate `new(x) = (min(limit, x.lo) - size) & mask` lies above the
    /// predecessor's `hi` (or `x` is the lowest node), or at the first `x` with `new(x) < low`.
    /// Because `new(x)` only decreases along the walk, the result is decided by the first `x`
    /// that fits: success iff `min(limit, x.lo) >= size` and `new(x) >= low` there. Nodes starting
    /// at or above `limit` all see the same candidate `limit - size`, and only the lowest of them
    /// (`ceiling(limit)`) can fit, so the walk is: check `ceiling(limit)` against the capped gap,
    /// then ask the tree for the highest node below it whose (uncapped) gap fits.
    mutating func allocate(size: UInt64, limit: UInt64, sizeAligned: Bool) -> Int32 {
        if limit <= dma32BitPFN && size >= max32AllocSize { return 0 }
        let alignMask: UInt64 = sizeAligned ? ~0 << UInt64(fls(size &- 1)) : ~0
        let start = limit <= dma32BitPFN ? cached32 : cached
        let retryPFN = tree.hi(start)
        var newPFN = walk(from: start, size: size, limit: limit, low: startPFN, alignMask: alignMask)
        if newPFN.pfn == nil && retryPFN < limit {
            // The retry pass starts from iova_find_limit(limit): the anchor, or the lowest node
            // at/above limit. Both behave exactly like starting from the anchor.
            newPFN = walk(from: 0, size: size, limit: limit, low: retryPFN &+ 1, alignMask: alignMask)
        }
        guard let lo = newPFN.pfn else {
            max32AllocSize = size
            return 0
        }
        let n = tree.insert(lo: lo, hi: lo &+ size &- 1, successor: newPFN.above)
        if lo &+ size &- 1 < dma32BitPFN { cached32 = n } else { cached = n }
        return n
    }

    /// One pass of Linux's walk from `start` (0 = from the top). Returns the new pfn_lo (or nil)
    /// and the node directly above it (Linux's `prev`, the insertion hint).
    private func walk(from start: Int32, size: UInt64, limit: UInt64, low: UInt64, alignMask: UInt64) -> (pfn: UInt64?, above: Int32) {
        var bound: UInt64
        if start == 0 || tree.lo(start) >= limit {
            let f = tree.ceiling(limit)  // never 0: the anchor is at UInt64.max >= limit
            let high = limit
            let candidate = (high &- size) & alignMask
            if let predHi = tree.predecessorHi(f) {
                if candidate <= predHi && candidate >= low && high >= size {
                    bound = tree.lo(f) &- 1  // continue below f
                } else {
                    return (high < size || candidate < low ? nil : candidate, f)
                }
            } else {
                return (high < size || candidate < low ? nil : candidate, f)
            }
        } else {
            bound = tree.lo(start)
        }
        let x = tree.highestFit(atOrBelow: bound, size: size, alignMask: alignMask)
        if x == 0 {
            // Only nodes whose gaps cannot hold `size` lie below: Linux's walk ends with a
            // candidate under `low` or a wrapped `high - size`, i.e. a failure.
            return (nil, 0)
        }
        let high = tree.lo(x)
        let candidate = (high &- size) & alignMask
        return (high < size || candidate < low ? nil : candidate, x)
    }

    /// Linux: `__cached_rbnode_delete_update` then erase.
    mutating func free(_ n: Int32) { free(n, successor: tree.successor(n)) }

    /// `free` when the caller already found the successor.
    mutating func free(_ n: Int32, successor succ: Int32) {
        let lo = tree.lo(n), hi = tree.hi(n)
        if n == cached32 || (hi < dma32BitPFN && lo >= tree.lo(cached32)) { cached32 = succ }
        if lo < dma32BitPFN { max32AllocSize = dma32BitPFN }
        if lo >= tree.lo(cached) { cached = succ }
        let moved = tree.remove(n, successor: succ)
        if moved.from != 0 {
            // The successor's range now lives in slot `moved.to`.
            if cached == moved.from { cached = moved.to }
            if cached32 == moved.from { cached32 = moved.to }
        }
    }

    /// Linux: `reserve_iova` under the lock. Returns the node covering the remaining range.
    mutating func reserve(lo: UInt64, hi: UInt64) -> Int32 {
        var lo = lo
        // The overlapping nodes are contiguous in order; start at the first one.
        var n = tree.floor(lo)
        if n == 0 || tree.hi(n) < lo { n = tree.ceiling(lo) }
        while n != 0 {
            let nodeLo = tree.lo(n), nodeHi = tree.hi(n)
            guard lo <= nodeHi && hi >= nodeLo else { break }
            if lo < nodeLo { tree.lowerStart(n, to: lo) }
            if hi > nodeHi { lo = nodeHi &+ 1 }
            if lo >= tree.lo(n) && hi <= nodeHi { return n }
            n = tree.successor(n)
        }
        return tree.insert(lo: lo, hi: hi, flags: RangeTree.reservedFlag)
    }
}

// MARK: - Depot

/// One size class's depot of full magazines, newest on top (Linux: the `depot` list of
/// `struct iova_rcache`, `depot_size`), and the pending time of its trimming work.
struct Depot: ~Copyable {
    private var magazines: UnsafeMutablePointer<Magazine>
    private var capacity: Int
    private(set) var count: Int
    /// When the depot work is due (nanoseconds), if scheduled.
    var deadline: Int64?

    init() {
        capacity = 8
        magazines = .allocate(capacity: capacity)
        count = 0
    }

    deinit {
        magazines.deinitialize(count: count)
        magazines.deallocate()
    }

    /// Linux: `iova_depot_push` + `schedule_delayed_work` (a no-op if already pending).
    mutating func push(_ magazine: consuming Magazine, now: Int64) {
        if count == capacity {
            let bigger = UnsafeMutablePointer<Magazine>.allocate(capacity: capacity * 2)
            bigger.moveInitialize(from: magazines, count: count)
            magazines.deallocate()
            magazines = bigger
            capacity *= 2
        }
        (magazines + count).initialize(to: magazine)
        count += 1
        if deadline == nil { deadline = now + IOVADomain.depotDelayNanoseconds }
    }

    /// Linux: `iova_depot_pop`. Returns an empty magazine when the depot is empty.
    mutating func pop() -> Magazine {
        guard count > 0 else { return Magazine() }
        count -= 1
        return (magazines + count).move()
    }

    /// Contents of each magazine, newest first.
    func contents() -> [[UInt64]] {
        var out: [[UInt64]] = []
        var i = count - 1
        while i >= 0 {
            out.append((0..<magazines[i].count).map { magazines[i][$0] })
            i -= 1
        }
        return out
    }
}
