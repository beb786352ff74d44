import Synchronization

/// A concurrent open-addressing table from the first pfn of each live, cacheable allocation
/// (size 1...32 pages) to its size and whether it currently sits in a magazine.
///
/// The checking policy consults it on every `fastFree` so that a bogus, double or wrongly-sized
/// free is reported at the faulty call without taking the tree lock (the seed thread "limit iova
/// free size to unmapped iova": warn as early as possible). Linux has no such table.
///
/// Each slot is one atomic word holding the key and the state together, so a compare-and-swap
/// on a slot can never act on a different allocation:
///
///     bits 8...63  pfn (so pfns must be < 2^56, i.e. granule >= 256 bytes)
///     bit  6       cached (the pfn is in some magazine)
///     bits 0...5   size in pages (1...32)
///
/// 0 is an empty slot and `tombstone` a deleted one. Linear probing.
///
/// Locking protocol (no lock of its own):
/// * inserts and deletes run under the domain's tree lock;
/// * flipping the cached bit (`markCached`, `markLive`) runs under the caller's per-CPU lock;
///   `markCached` uses compare-and-swap, so two CPUs freeing the same pfn at once cannot both
///   succeed (see `markLive` for why clearing the bit needs no compare-and-swap);
/// * rebuilding (growth, or too many tombstones) runs under the tree lock *and* every per-CPU
///   lock, so no reader is probing while the slot array is replaced; entries never move otherwise.
@usableFromInline
final class AllocationTable: @unchecked Sendable {
    /// Read by every probe; replaced only by `rebuild` (under all locks).
    @usableFromInline
    struct Header {
        @usableFromInline var slots: UnsafeMutablePointer<Atomic<UInt64>>
        @usableFromInline var shift: Int  // 64 - log2(capacity)
        @usableFromInline var mask: Int
    }

    /// Written by inserts and deletes under the tree lock; kept apart from `Header` so that a
    /// counter update is not a (formal) write to what lock-free readers read.
    struct Counts {
        var live: Int
        var used: Int  // live + tombstones
    }

    @inlinable static var cachedBit: UInt64 { 1 << 6 }
    @inlinable static var sizeMask: UInt64 { 0x3F }
    @inlinable static var tombstone: UInt64 { 0x80 }
    /// The largest allocation tracked (Linux caches sizes up to 32 pages).
    static var maxTrackedSize: UInt64 { 32 }

    @usableFromInline let header: UnsafeMutablePointer<Header>
    let counts: UnsafeMutablePointer<Counts>

    init(capacity: Int = 1024) {
        let bits = max(4, Int.bitWidth - (capacity - 1).leadingZeroBitCount)
        header = .allocate(capacity: 1)
        header.initialize(to: Header(slots: Self.makeSlots(1 << bits), shift: 64 - bits, mask: (1 << bits) - 1))
        counts = .allocate(capacity: 1)
        counts.initialize(to: Counts(live: 0, used: 0))
    }

    deinit {
        header.pointee.slots.deinitialize(count: header.pointee.mask + 1)
        header.pointee.slots.deallocate()
        header.deallocate()
        counts.deallocate()
    }

    private static func makeSlots(_ n: Int) -> UnsafeMutablePointer<Atomic<UInt64>> {
        let slots = UnsafeMutablePointer<Atomic<UInt64>>.allocate(capacity: n)
        for i in 0..<n { (slots + i).initialize(to: Atomic(0)) }
        return slots
    }

    @inlinable @inline(always)
    func home(_ pfn: UInt64) -> Int {
        Int(truncatingIfNeeded: (pfn &* 0x9E37_79B9_7F4A_7C15) >> UInt64(header.pointee.shift))
    }

    /// Marks the live allocation at `pfn` as cached if its size has the same
    /// `order_base_2` as `order`; false (nothing changed) when `pfn` is not the start of a live
    /// tracked allocation, is already cached, or has another size class — the caller diagnoses
    /// which under the tree lock. Call under a per-CPU lock (or the tree lock).
    @inlinable @inline(always)
    func markCached(_ pfn: UInt64, order: Int) -> Bool {
        let slots = header.pointee.slots, mask = header.pointee.mask
        var i = home(pfn)
        while true {
            let w = slots[i].load(ordering: .relaxed)
            if w == 0 { return false }
            if w >> 8 == pfn && w != AllocationTable.tombstone {
                if w & AllocationTable.cachedBit != 0 || orderOf(w & AllocationTable.sizeMask) != order { return false }
                let (done, _) = slots[i].compareExchange(expected: w, desired: w | AllocationTable.cachedBit, ordering: .relaxed)
                if done { return true }
                continue  // changed under us (another CPU or a delete): look again
            }
            i = (i &+ 1) & mask
        }
    }

    /// Marks the cached allocation at `pfn` live again (a magazine handed it out).
    ///
    /// A plain atomic store, not a compare-and-swap: while `pfn` is cached nobody else writes its
    /// slot (a concurrent free of it sees the cached bit and only warns; it is in no other
    /// magazine, so no drain removes it; the tree API refuses to free a cached pfn; rebuilds are
    /// excluded by the caller's per-CPU lock), so no update can be lost.
    @inlinable @inline(always)
    func markLive(_ pfn: UInt64) {
        let slots = header.pointee.slots, mask = header.pointee.mask
        var i = home(pfn)
        while true {
            let w = slots[i].load(ordering: .relaxed)
            if w == 0 { return }  // not tracked (e.g. a reserve stretched it): nothing to do
            if w >> 8 == pfn && w != AllocationTable.tombstone {
                slots[i].store(w & ~AllocationTable.cachedBit, ordering: .relaxed)
                return
            }
            i = (i &+ 1) & mask
        }
    }

    /// The state word for `pfn`, or 0. Authoritative under the tree lock.
    func lookup(_ pfn: UInt64) -> UInt64 {
        let slots = header.pointee.slots, mask = header.pointee.mask
        var i = home(pfn)
        while true {
            let w = slots[i].load(ordering: .relaxed)
            if w == 0 { return 0 }
            if w >> 8 == pfn && w != Self.tombstone { return w }
            i = (i &+ 1) & mask
        }
    }

    /// Whether a later `insert` needs `rebuild` first.
    var needsRebuild: Bool { (counts.pointee.used + 1) * 4 > (header.pointee.mask + 1) * 3 }

    /// Adds a live allocation. Under the tree lock; the caller rebuilt first if `needsRebuild`.
    func insert(_ pfn: UInt64, size: UInt64) {
        precondition(pfn < 1 << 56 && size >= 1 && size <= Self.maxTrackedSize)
        let slots = header.pointee.slots, mask = header.pointee.mask
        var i = home(pfn)
        while true {
            let w = slots[i].load(ordering: .relaxed)
            if w == 0 || w == Self.tombstone {
                slots[i].store(pfn << 8 | size, ordering: .relaxed)
                counts.pointee.live += 1
                if w == 0 { counts.pointee.used += 1 }
                return
            }
            i = (i &+ 1) & mask
        }
    }

    /// Deletes `pfn` if present. Under the tree lock.
    @discardableResult
    func remove(_ pfn: UInt64) -> Bool {
        let slots = header.pointee.slots, mask = header.pointee.mask
        var i = home(pfn)
        while true {
            let w = slots[i].load(ordering: .relaxed)
            if w == 0 { return false }
            if w >> 8 == pfn && w != Self.tombstone {
                let (done, _) = slots[i].compareExchange(expected: w, desired: Self.tombstone, ordering: .relaxed)
                if done {
                    counts.pointee.live -= 1
                    return true
                }
                continue
            }
            i = (i &+ 1) & mask
        }
    }

    /// Re-hashes the live entries into a slot array sized for them. Under the tree lock and all
    /// per-CPU locks.
    func rebuild() {
        let old = header.pointee
        let oldCount = old.mask + 1
        var capacity = 1024
        while capacity < counts.pointee.live * 4 + 4 { capacity *= 2 }
        let bits = capacity.trailingZeroBitCount
        header.pointee = Header(slots: Self.makeSlots(capacity), shift: 64 - bits, mask: capacity - 1)
        counts.pointee = Counts(live: 0, used: 0)
        for i in 0..<oldCount {
            let w = old.slots[i].load(ordering: .relaxed)
            if w != 0 && w != Self.tombstone {
                let slots = header.pointee.slots
                var j = home(w >> 8)
                while slots[j].load(ordering: .relaxed) != 0 { j = (j + 1) & (capacity - 1) }
                slots[j].store(w, ordering: .relaxed)
                counts.pointee.live += 1
                counts.pointee.used += 1
            }
        }
        old.slots.deinitialize(count: oldCount)
        old.slots.deallocate()
    }

    var liveCount: Int { counts.pointee.live }
}

@inlinable @inline(always)
func orderOf(_ size: UInt64) -> Int { size <= 1 ? 0 : 64 - (size &- 1).leadingZeroBitCount }
