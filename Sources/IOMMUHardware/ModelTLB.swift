import IOMMUBase

/// How a full TLB picks its victim.
public enum TLBReplacementPolicy: String, Hashable, Sendable, CaseIterable {
    /// Least recently used entry.
    case lru
    /// Oldest filled entry.
    case fifo
}

/// TLB counters. `staleHits` counts hits on an entry whose mapping software has already removed
/// from the page table (unmapped, or replaced by a split) but not yet invalidated and synced.
public struct TLBStatistics: Hashable, Sendable {
    public var hits: UInt64 = 0
    public var misses: UInt64 = 0
    public var staleHits: UInt64 = 0
    public var fills: UInt64 = 0
    public var evictions: UInt64 = 0
    /// Entries removed by completed invalidations (TLBI… + sync).
    public var invalidatedEntries: UInt64 = 0
    public init() {}
}

/// One cached translation, as `tlbEntries` shows it.
public struct TLBEntry: Hashable, Sendable, CustomStringConvertible {
    /// The context (SMMU context bank; DART stream index).
    public var context: Int
    public var asid: UInt16
    public var vmid: UInt16
    /// The leaf's first input address.
    public var iova: IOVA
    /// log2 of the leaf size (12 for a 4 KiB page, 21 for a 2 MiB block, 14 for a DART page).
    public var leafShift: Int
    /// The leaf's first output address.
    public var physicalAddress: PhysAddr
    public var readable: Bool
    public var writable: Bool
    public var privilegedOnly: Bool
    /// An invalidation covering this entry has been issued but not yet completed by a sync.
    public var invalidationPending: Bool
    /// Software removed the mapping behind this entry; a hit on it is a stale hit.
    public var mappingRemoved: Bool

    public var description: String {
        "ctx \(context) asid \(asid) vmid \(vmid) \(iova) -> \(physicalAddress) (\(formatByteSize(UInt64(1) << UInt64(leafShift))))"
            + "\(readable ? " r" : "")\(writable ? "w" : "")\(invalidationPending ? " pending" : "")\(mappingRemoved ? " stale" : "")"
    }
}

/// A fully associative model TLB: entries tagged by context, ASID, VMID, input page and leaf
/// size; a fixed capacity with LRU or FIFO replacement; invalidations that are *posted* (marked
/// pending) and take effect at the next sync, as TLBI register writes followed by TLBSYNC do.
///
/// Not thread-safe: the owning model keeps it under its lock.
struct ModelTLB {
    struct Slot {
        var valid = false
        var context: UInt8 = 0
        var asid: UInt16 = 0
        var vmid: UInt16 = 0
        var leafShift: UInt8 = 0
        var pageNumber: UInt64 = 0
        var physicalBase: UInt64 = 0
        var readable = false
        var writable = false
        var privilegedOnly = false
        var pending = false
        var mappingRemoved = false
        var stamp: UInt64 = 0
    }

    let capacity: Int
    let policy: TLBReplacementPolicy
    var slots: [Slot]
    var index: [UInt64: Int32] = [:]
    var freeSlots: [Int32]
    /// Number of live entries per leaf shift; `shiftMask` has bit s set when any entry has shift s.
    var shiftCounts = [Int32](repeating: 0, count: 64)
    var shiftMask: UInt64 = 0
    var clock: UInt64 = 0
    var statistics = TLBStatistics()

    init(capacity: Int, policy: TLBReplacementPolicy) {
        precondition(capacity > 0, "a TLB has at least one entry")
        self.capacity = capacity
        self.policy = policy
        slots = [Slot](repeating: Slot(), count: capacity)
        freeSlots = (0..<Int32(capacity)).reversed().map { $0 }
        index.reserveCapacity(capacity * 2)
    }

    @inline(__always)
    static func key(context: Int, shift: Int, pageNumber: UInt64) -> UInt64 {
        UInt64(truncatingIfNeeded: context) << 56 | UInt64(shift) << 50 | (pageNumber & (1 << 50 - 1))
    }

    /// The slot that translates `iova` for the context, if any (counts nothing).
    @inline(__always)
    mutating func find(context: Int, asid: UInt16, vmid: UInt16, iova: UInt64) -> Int? {
        var shifts = shiftMask
        while shifts != 0 {
            let shift = shifts.trailingZeroBitCount
            shifts &= shifts &- 1
            let page = iova >> UInt64(shift)
            if let found = index[Self.key(context: context, shift: shift, pageNumber: page)] {
                let slot = Int(found)
                let s = slots[slot]
                if s.pageNumber == page && s.asid == asid && s.vmid == vmid { return slot }
            }
        }
        return nil
    }

    mutating func touch(_ slot: Int) {
        if policy == .lru {
            clock &+= 1
            slots[slot].stamp = clock
        }
    }

    mutating func insert(context: Int, asid: UInt16, vmid: UInt16, iova: UInt64, leafShift: Int,
                         physicalAddress: UInt64, readable: Bool, writable: Bool, privilegedOnly: Bool) {
        let page = iova >> UInt64(leafShift)
        let key = Self.key(context: context, shift: leafShift, pageNumber: page)
        if let existing = index[key] { remove(Int(existing)) }
        let slot: Int
        if let free = freeSlots.popLast() {
            slot = Int(free)
        } else {
            var victim = 0
            var oldest = UInt64.max
            for i in 0..<capacity where slots[i].stamp < oldest {
                oldest = slots[i].stamp
                victim = i
            }
            remove(victim)
            statistics.evictions &+= 1
            _ = freeSlots.popLast()
            slot = victim
        }
        clock &+= 1
        let mask = (UInt64(1) << UInt64(leafShift)) &- 1
        slots[slot] = Slot(valid: true, context: UInt8(truncatingIfNeeded: context), asid: asid, vmid: vmid,
                           leafShift: UInt8(leafShift), pageNumber: page, physicalBase: physicalAddress & ~mask,
                           readable: readable, writable: writable, privilegedOnly: privilegedOnly,
                           pending: false, mappingRemoved: false, stamp: clock)
        index[key] = Int32(slot)
        shiftCounts[leafShift] += 1
        shiftMask |= UInt64(1) << UInt64(leafShift)
        statistics.fills &+= 1
    }

    mutating func remove(_ slot: Int) {
        let s = slots[slot]
        guard s.valid else { return }
        index[Self.key(context: Int(s.context), shift: Int(s.leafShift), pageNumber: s.pageNumber)] = nil
        slots[slot].valid = false
        slots[slot].stamp = 0
        let shift = Int(s.leafShift)
        shiftCounts[shift] -= 1
        if shiftCounts[shift] == 0 { shiftMask &= ~(UInt64(1) << UInt64(shift)) }
        freeSlots.append(Int32(slot))
    }

    /// Marks every entry `matching` as pending invalidation (a posted TLBI).
    mutating func post(_ matching: (Slot) -> Bool) {
        for i in 0..<capacity where slots[i].valid && matching(slots[i]) { slots[i].pending = true }
    }

    /// Completes the pending invalidations of entries `matching` (a TLBSYNC).
    mutating func complete(_ matching: (Slot) -> Bool) {
        for i in 0..<capacity where slots[i].valid && slots[i].pending && matching(slots[i]) {
            remove(i)
            statistics.invalidatedEntries &+= 1
        }
    }

    /// Removes every entry at once (reset).
    mutating func clear() {
        for i in 0..<capacity where slots[i].valid { remove(i) }
    }

    /// Marks entries of `context` overlapping `[first, last]` as backed by a removed mapping.
    mutating func markMappingRemoved(context: Int, first: UInt64, last: UInt64) {
        for i in 0..<capacity where slots[i].valid && Int(slots[i].context) == context {
            let s = slots[i]
            let start = s.pageNumber << UInt64(s.leafShift)
            let end = start &+ ((UInt64(1) << UInt64(s.leafShift)) &- 1)
            if start <= last && first <= end { slots[i].mappingRemoved = true }
        }
    }

    var entries: [TLBEntry] {
        slots.filter(\.valid).sorted { $0.stamp < $1.stamp }.map { s in
            TLBEntry(context: Int(s.context), asid: s.asid, vmid: s.vmid, iova: IOVA(s.pageNumber << UInt64(s.leafShift)),
                     leafShift: Int(s.leafShift), physicalAddress: PhysAddr(s.physicalBase), readable: s.readable,
                     writable: s.writable, privilegedOnly: s.privilegedOnly, invalidationPending: s.pending,
                     mappingRemoved: s.mappingRemoved)
        }
    }
}
