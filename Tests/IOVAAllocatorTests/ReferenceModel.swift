import IOMMUBase

/// A deliberately simple model of Linux's IOVA allocator: a sorted array of `[lo, hi]` nodes
/// searched exactly as linux-iommu.md §1.3 describes (a linear walk of predecessors from the
/// cached node), plus the rcache magazines as plain arrays (§1.6, §1.7). Slow and obviously
/// right; the property tests compare `IOVADomain` against it operation by operation.
struct ReferenceIOVA {
    var nodes: [(lo: UInt64, hi: UInt64)]
    /// Cached nodes by their `lo` key (nodes are never stretched after setup in the tests).
    var cachedKey: UInt64
    var cached32Key: UInt64
    var max32: UInt64
    let start: UInt64
    let dma32: UInt64
    static let anchor = UInt64.max

    // rcache: per cpu, per order: loaded, prev; per order: depot (last = newest)
    var loaded: [[[UInt64]]]
    var prev: [[[UInt64]]]
    var depot: [[[UInt64]]]
    var deadline: [Int64?]
    var now: Int64 = 0
    let cpus: Int
    var drainMisses: [UInt64] = []

    init(startPFN: UInt64, dma32: UInt64 = 1 << 20, cpus: Int = 1) {
        nodes = [(Self.anchor, Self.anchor)]
        cachedKey = Self.anchor
        cached32Key = Self.anchor
        max32 = dma32
        start = startPFN
        self.dma32 = dma32
        self.cpus = cpus
        loaded = Array(repeating: Array(repeating: [], count: 6), count: cpus)
        prev = loaded
        depot = Array(repeating: [], count: 6)
        deadline = Array(repeating: nil, count: 6)
    }

    /// First index whose `lo >= key` (binary search; the nodes are sorted).
    func lowerBound(_ key: UInt64) -> Int {
        var lo = 0, hi = nodes.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if nodes[mid].lo < key { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    func index(ofKey key: UInt64) -> Int {
        let i = lowerBound(key)
        precondition(nodes[i].lo == key)
        return i
    }

    /// Index of the node containing pfn (never the anchor), or nil.
    func containing(_ pfn: UInt64) -> Int? {
        let i = lowerBound(pfn &+ 1) - 1  // last node with lo <= pfn
        guard i >= 0, nodes[i].hi >= pfn, nodes[i].lo != Self.anchor else { return nil }
        return i
    }

    /// Linux's `__alloc_and_insert_iova_range`, literally.
    mutating func alloc(size: UInt64, limitPFN: UInt64, aligned: Bool) -> UInt64? {
        let limit = limitPFN + 1
        if limit <= dma32 && size >= max32 { return nil }
        let mask: UInt64 = aligned ? ~0 << UInt64(fls(size - 1)) : ~0
        var idx = index(ofKey: limit <= dma32 ? cached32Key : cachedKey)
        let retry = nodes[idx].hi
        var high = limit, low = start
        var newPFN: UInt64 = 0
        var firstPass = true
        while true {
            repeat {
                high = min(high, nodes[idx].lo)
                newPFN = (high &- size) & mask
                idx -= 1
            } while idx >= 0 && newPFN <= nodes[idx].hi && newPFN >= low
            if high < size || newPFN < low {
                if firstPass && retry < limit {
                    firstPass = false
                    high = limit
                    low = retry + 1
                    idx = limit > dma32 ? nodes.count - 1 : lowerBound(limit)
                    continue
                }
                max32 = size
                return nil
            }
            break
        }
        let at = lowerBound(newPFN)
        nodes.insert((newPFN, newPFN + size - 1), at: at)
        if newPFN + size - 1 < dma32 { cached32Key = newPFN } else { cachedKey = newPFN }
        return newPFN
    }

    /// `private_free_iova` of the node at index `i`, with the cache updates.
    mutating func freeNode(at i: Int) {
        let node = nodes[i]
        let succ = nodes[i + 1].lo
        let c32 = nodes[index(ofKey: cached32Key)]
        if node.lo == cached32Key || (node.hi < dma32 && node.lo >= c32.lo) { cached32Key = succ }
        if node.lo < dma32 { max32 = dma32 }
        if node.lo >= cachedKey { cachedKey = succ }
        nodes.remove(at: i)
    }

    /// `free_iova(pfn)`: frees the node containing pfn.
    mutating func free(_ pfn: UInt64) {
        if let i = containing(pfn) { freeNode(at: i) }
    }

    mutating func drain(_ pfns: [UInt64]) {
        for pfn in pfns {
            if let i = containing(pfn) {
                freeNode(at: i)
            } else {
                drainMisses.append(pfn)
            }
        }
    }

    // MARK: rcache

    mutating func fastAlloc(size: UInt64, limitPFN: UInt64, flush: Bool, cpu: Int) -> UInt64? {
        var size = size
        if size < 32 { size = roundUpPowerOfTwo(size)! }
        let order = orderBase2(size)
        if order < 6 {
            let highest = limitPFN &+ 1 &- size
            var has = true
            if loaded[cpu][order].isEmpty {
                if !prev[cpu][order].isEmpty {
                    swap(&loaded[cpu][order], &prev[cpu][order])
                } else if !depot[order].isEmpty {
                    loaded[cpu][order] = depot[order].removeLast()
                } else { has = false }
            }
            if has {
                var mag = loaded[cpu][order]
                if let i = mag.lastIndex(where: { $0 <= highest }) {
                    let pfn = mag[i]
                    mag[i] = mag[mag.count - 1]
                    mag.removeLast()
                    loaded[cpu][order] = mag
                    if pfn != 0 { return pfn }
                }
            }
        }
        var flush = flush
        while true {
            if let p = alloc(size: size, limitPFN: limitPFN, aligned: true) { return p }
            if !flush { return nil }
            flush = false
            for c in 0..<cpus { flushCPU(c) }
            flushDepots()
        }
    }

    /// Linux's rcache insert; returns false only when `magazineAllocFails`.
    mutating func fastFree(pfn: UInt64, size: UInt64, cpu: Int, magazineAllocFails: Bool = false) {
        let order = orderBase2(size)
        if order < 6 {
            var ok = true
            if loaded[cpu][order].count == 127 {
                if prev[cpu][order].count < 127 {
                    swap(&loaded[cpu][order], &prev[cpu][order])
                } else if magazineAllocFails {
                    ok = false
                } else {
                    depot[order].append(loaded[cpu][order])
                    if deadline[order] == nil { deadline[order] = now + 100_000_000 }
                    loaded[cpu][order] = []
                }
            }
            if ok {
                loaded[cpu][order].append(pfn)
                return
            }
        }
        free(pfn)
    }

    mutating func flushCPU(_ cpu: Int) {
        for order in 0..<6 {
            drain(loaded[cpu][order]); loaded[cpu][order] = []
            drain(prev[cpu][order]); prev[cpu][order] = []
        }
    }

    mutating func flushDepots() {
        for order in 0..<6 {
            while let mag = depot[order].popLast() { drain(mag) }
        }
    }

    mutating func tick(_ ns: Int64) {
        now += ns
        for order in 0..<6 {
            while let due = deadline[order], due <= now {
                deadline[order] = nil
                if depot[order].count > cpus {
                    drain(depot[order].removeLast())
                    deadline[order] = due + 100_000_000
                }
            }
        }
    }
}
