import IOMMUBase

/// The set of IOVA nodes `[lo, hi]` (inclusive, never overlapping) of one domain, ordered by `lo`,
/// augmented so that Linux's top-down "first gap that fits" walk is answered in O(log n).
///
/// Linux keeps the nodes in a red-black tree and walks predecessors one by one from a cached
/// node (`__alloc_and_insert_iova_range`). Here the nodes live in a treap (a randomized binary
/// search tree; nodes in one flat buffer, addressed by 32-bit index, index 0 = none), and every
/// node carries:
///
/// * `gap`: the number of free pfns directly below it, `lo - predecessor.hi - 1`, or `UInt64.max`
///   for the lowest node (below it there is no predecessor: Linux's walk always stops there);
/// * `maxGap`: the largest `gap` in its subtree.
///
/// `highestFit(atOrBelow:size:alignMask:)` descends right to left and skips every subtree whose
/// `maxGap` is smaller than the request, so it visits O(log n) nodes plus the few nodes whose gap is
/// long enough but whose aligned top position does not fit (see docs/iova-allocator.md for the
/// argument that this returns exactly the node at which Linux's linear walk stops).
///
/// Not thread-safe: the domain guards it with its tree lock.
struct RangeTree: ~Copyable {
    /// One node. 48 bytes; the buffer is an array of these.
    @usableFromInline
    struct Node {
        var lo: UInt64
        var hi: UInt64
        var gap: UInt64
        var maxGap: UInt64
        var left: Int32
        var right: Int32
        var priority: UInt32
        var flags: UInt32
    }

    /// Node flag: created by `reserve` rather than by an allocation.
    static var reservedFlag: UInt32 { 1 }

    private(set) var nodes: UnsafeMutablePointer<Node>
    private var capacity: Int
    private(set) var root: Int32 = 0
    private var freeList: Int32 = 0
    private var nextUnused: Int32 = 1
    private(set) var count = 0
    private var rng: UInt64 = 0x2545_F491_4F6C_DD1D

    init(initialCapacity: Int = 64) {
        capacity = max(initialCapacity, 2)
        nodes = .allocate(capacity: capacity)
        // Index 0 is the "none" sentinel: maxGap 0 so that it never passes a fit test.
        nodes[0] = Node(lo: 0, hi: 0, gap: 0, maxGap: 0, left: 0, right: 0, priority: 0, flags: 0)
    }

    deinit { nodes.deallocate() }

    // MARK: - Node access

    @inline(__always) func lo(_ n: Int32) -> UInt64 { nodes[Int(n)].lo }
    @inline(__always) func hi(_ n: Int32) -> UInt64 { nodes[Int(n)].hi }
    @inline(__always) func gap(_ n: Int32) -> UInt64 { nodes[Int(n)].gap }
    @inline(__always) func flags(_ n: Int32) -> UInt32 { nodes[Int(n)].flags }

    /// `hi` of the predecessor as derived from the stored gap, or nil for the lowest node.
    @inline(__always) func predecessorHi(_ n: Int32) -> UInt64? {
        let g = nodes[Int(n)].gap
        return g == .max ? nil : nodes[Int(n)].lo &- g &- 1
    }

    // MARK: - Queries

    /// The node with the largest `lo <= key`, or 0.
    func floor(_ key: UInt64) -> Int32 {
        var t = root, best: Int32 = 0
        while t != 0 {
            if nodes[Int(t)].lo <= key { best = t; t = nodes[Int(t)].right } else { t = nodes[Int(t)].left }
        }
        return best
    }

    /// The node with the smallest `lo >= key`, or 0.
    func ceiling(_ key: UInt64) -> Int32 {
        var t = root, best: Int32 = 0
        while t != 0 {
            if nodes[Int(t)].lo >= key { best = t; t = nodes[Int(t)].left } else { t = nodes[Int(t)].right }
        }
        return best
    }

    /// The node containing `pfn`, or 0 (Linux: `private_find_iova`).
    func containing(_ pfn: UInt64) -> Int32 {
        let n = floor(pfn)
        return n != 0 && nodes[Int(n)].hi >= pfn ? n : 0
    }

    /// Linux: `rb_prev`.
    func predecessor(_ n: Int32) -> Int32 {
        let key = nodes[Int(n)].lo
        return key == 0 ? 0 : floor(key &- 1)
    }

    /// Linux: `rb_next`.
    func successor(_ n: Int32) -> Int32 {
        let key = nodes[Int(n)].lo
        return key == .max ? 0 : ceiling(key &+ 1)
    }

    /// The lowest node, or 0 (Linux: `rb_first`).
    func first() -> Int32 {
        var t = root
        if t == 0 { return 0 }
        while nodes[Int(t)].left != 0 { t = nodes[Int(t)].left }
        return t
    }

    /// Whether the gap below `n` holds a block of `size` pfns aligned by `alignMask` whose top is
    /// `lo(n)` or lower: Linux's loop test `new_pfn > prev.pfn_hi`, for the topmost aligned
    /// candidate, which is the only one Linux tries.
    @inline(__always)
    func fitsBelow(_ n: Int32, size: UInt64, alignMask: UInt64, slack: UInt64) -> Bool {
        let node = nodes[Int(n)]
        if node.gap == .max { return true }
        if node.gap < size { return false }
        if node.gap >= slack { return true }  // slack = size + align - 1: always room
        let candidate = (node.lo &- size) & alignMask
        return candidate > node.lo &- node.gap &- 1
    }

    /// The highest node with `lo <= bound` below which a request fits (see `fitsBelow`), or 0
    /// when no node has `lo <= bound`. Because the lowest node always "fits" (Linux stops its
    /// walk there), the answer is non-zero whenever some node lies at or below `bound`.
    func highestFit(atOrBelow bound: UInt64, size: UInt64, alignMask: UInt64) -> Int32 {
        let align = ~alignMask &+ 1
        let (slack, overflow) = size.addingReportingOverflow(align &- 1)
        return highestFit(root, bound: bound, size: size, alignMask: alignMask,
                          slack: overflow ? .max : slack)
    }

    private func highestFit(_ t: Int32, bound: UInt64, size: UInt64, alignMask: UInt64, slack: UInt64) -> Int32 {
        var t = t
        while t != 0 {
            let node = nodes[Int(t)]
            if node.maxGap < size { return 0 }
            if node.lo > bound { t = node.left; continue }
            let r = highestFit(node.right, bound: bound, size: size, alignMask: alignMask, slack: slack)
            if r != 0 { return r }
            if fitsBelow(t, size: size, alignMask: alignMask, slack: slack) { return t }
            // Everything in the left subtree is below `bound`.
            t = node.left
        }
        return 0
    }

    // MARK: - Mutations

    /// Inserts `[lo, hi]` (which must not overlap any node) and returns its index.
    mutating func insert(lo: UInt64, hi: UInt64, flags: UInt32 = 0) -> Int32 {
        let pred = floor(lo)
        let succ = ceiling(lo)
        let n = allocateNode()
        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17
        let gapBelow: UInt64 = pred == 0 ? .max : lo &- nodes[Int(pred)].hi &- 1
        nodes[Int(n)] = Node(lo: lo, hi: hi, gap: gapBelow, maxGap: gapBelow, left: 0, right: 0,
                             priority: UInt32(truncatingIfNeeded: rng >> 32), flags: flags)
        root = insert(root, n)
        count += 1
        if succ != 0 { setGap(succ, nodes[Int(succ)].lo &- hi &- 1) }
        return n
    }

    /// Removes node `n` (which must be in the tree).
    mutating func remove(_ n: Int32) {
        let pred = predecessor(n)
        let succ = successor(n)
        root = remove(root, key: nodes[Int(n)].lo)
        count -= 1
        nodes[Int(n)].left = freeList
        nodes[Int(n)].priority = 0
        freeList = n
        if succ != 0 {
            setGap(succ, pred == 0 ? .max : nodes[Int(succ)].lo &- nodes[Int(pred)].hi &- 1)
        }
    }

    /// Moves the start of node `n` down to `newLo` (reserve_iova's stretching); the order of nodes
    /// does not change because the space below `n` down to `newLo` is free.
    mutating func lowerStart(_ n: Int32, to newLo: UInt64) {
        let old = nodes[Int(n)]
        let newGap = old.gap == .max ? UInt64.max : old.gap &- (old.lo &- newLo)
        nodes[Int(n)].lo = newLo
        setGap(n, newGap)
    }

    private mutating func allocateNode() -> Int32 {
        if freeList != 0 {
            let n = freeList
            freeList = nodes[Int(n)].left
            return n
        }
        if Int(nextUnused) == capacity {
            let newCapacity = capacity * 2
            precondition(newCapacity < Int(Int32.max), "IOVA tree too large")
            let bigger = UnsafeMutablePointer<Node>.allocate(capacity: newCapacity)
            bigger.update(from: nodes, count: capacity)
            nodes.deallocate()
            nodes = bigger
            capacity = newCapacity
        }
        let n = nextUnused
        nextUnused += 1
        return n
    }

    @inline(__always)
    private func pull(_ t: Int32) {
        let node = nodes[Int(t)]
        var m = node.gap
        let l = nodes[Int(node.left)].maxGap, r = nodes[Int(node.right)].maxGap
        if l > m { m = l }
        if r > m { m = r }
        nodes[Int(t)].maxGap = m
    }

    private func setGap(_ n: Int32, _ gap: UInt64) {
        nodes[Int(n)].gap = gap
        refresh(root, key: nodes[Int(n)].lo)
    }

    /// Recomputes `maxGap` along the path from `t` to the node keyed `key`.
    private func refresh(_ t: Int32, key: UInt64) {
        if t == 0 { return }
        let k = nodes[Int(t)].lo
        if key < k { refresh(nodes[Int(t)].left, key: key) } else if key > k { refresh(nodes[Int(t)].right, key: key) }
        pull(t)
    }

    private func insert(_ t: Int32, _ n: Int32) -> Int32 {
        if t == 0 { return n }
        if nodes[Int(n)].lo < nodes[Int(t)].lo {
            let l = insert(nodes[Int(t)].left, n)
            nodes[Int(t)].left = l
            if nodes[Int(l)].priority > nodes[Int(t)].priority {
                // rotate right
                nodes[Int(t)].left = nodes[Int(l)].right
                nodes[Int(l)].right = t
                pull(t); pull(l)
                return l
            }
        } else {
            let r = insert(nodes[Int(t)].right, n)
            nodes[Int(t)].right = r
            if nodes[Int(r)].priority > nodes[Int(t)].priority {
                // rotate left
                nodes[Int(t)].right = nodes[Int(r)].left
                nodes[Int(r)].left = t
                pull(t); pull(r)
                return r
            }
        }
        pull(t)
        return t
    }

    private func remove(_ t: Int32, key: UInt64) -> Int32 {
        if t == 0 { return 0 }
        let k = nodes[Int(t)].lo
        if key < k {
            nodes[Int(t)].left = remove(nodes[Int(t)].left, key: key)
        } else if key > k {
            nodes[Int(t)].right = remove(nodes[Int(t)].right, key: key)
        } else {
            return merge(nodes[Int(t)].left, nodes[Int(t)].right)
        }
        pull(t)
        return t
    }

    private func merge(_ a: Int32, _ b: Int32) -> Int32 {
        if a == 0 { return b }
        if b == 0 { return a }
        if nodes[Int(a)].priority > nodes[Int(b)].priority {
            nodes[Int(a)].right = merge(nodes[Int(a)].right, b)
            pull(a)
            return a
        } else {
            nodes[Int(b)].left = merge(a, nodes[Int(b)].left)
            pull(b)
            return b
        }
    }

    // MARK: - Iteration and checks

    /// Calls `body` with (lo, hi, flags) of every node in ascending order.
    func forEach(_ body: (UInt64, UInt64, UInt32) -> Void) {
        func visit(_ t: Int32) {
            if t == 0 { return }
            visit(nodes[Int(t)].left)
            body(nodes[Int(t)].lo, nodes[Int(t)].hi, nodes[Int(t)].flags)
            visit(nodes[Int(t)].right)
        }
        visit(root)
    }

    /// Verifies ordering, non-overlap, gaps, maxGap and heap order; returns a problem or nil.
    func checkInvariants() -> String? {
        var problem: String?
        var prevHi: UInt64? = nil
        var seen = 0
        func visit(_ t: Int32) -> UInt64 {
            if t == 0 { return 0 }
            let node = nodes[Int(t)]
            if node.left != 0 && nodes[Int(node.left)].priority > node.priority { problem = problem ?? "heap order" }
            if node.right != 0 && nodes[Int(node.right)].priority > node.priority { problem = problem ?? "heap order" }
            let lm = visit(node.left)
            seen += 1
            if node.hi < node.lo { problem = problem ?? "node hi < lo at \(node.lo)" }
            if let p = prevHi {
                if node.lo <= p { problem = problem ?? "overlap at \(node.lo)" }
                else if node.gap != node.lo - p - 1 { problem = problem ?? "bad gap at \(node.lo)" }
            } else if node.gap != .max { problem = problem ?? "lowest node gap" }
            prevHi = node.hi
            let rm = visit(node.right)
            let m = max(node.gap, lm, rm)
            if m != node.maxGap { problem = problem ?? "bad maxGap at \(node.lo)" }
            return m
        }
        _ = visit(root)
        if seen != count { problem = problem ?? "count \(count) != \(seen)" }
        return problem
    }
}
