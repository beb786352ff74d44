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
/// * lane summaries: for each alignment 2^k (k < 8), the room above the first aligned pfn of its
///   gap, and the lane-wise maximum over its subtree (lane 0 is the gap, saturated at 65535).
///
/// `highestFit(atOrBelow:size:alignMask:)` descends right to left and skips every subtree whose
/// summary for the request's alignment is smaller than the request, so it visits O(log n) nodes plus the few nodes whose gap is
/// long enough but whose aligned top position does not fit (see docs/iova-allocator.md for the
/// argument that this returns exactly the node at which Linux's linear walk stops).
///
/// Not thread-safe: the domain guards it with its tree lock.
struct RangeTree: ~Copyable {
    /// One node: 64 bytes, one cache line (the buffer is 64-byte aligned).
    @usableFromInline
    struct Node {
        var lo: UInt64
        var hi: UInt64
        var gap: UInt64
        var left: Int32
        var right: Int32
        var parent: Int32
        var priority: UInt32
        var flags: UInt32
        /// The lane-wise maximum of `own` over this subtree (kept in the node: a pull reads the
        /// children's summaries, and they share the cache lines of the children's links).
        var sub: SIMD8<UInt16> = .zero
    }

    /// Node flag: created by `reserve` rather than by an allocation.
    static var reservedFlag: UInt32 { 1 }

    private(set) var nodes: UnsafeMutablePointer<Node>
    /// Per node, lane k = room for a 2^k-aligned block in its own gap: `lo - alignUp(pred.hi + 1,
    /// 2^k)` (0 if none, saturated at `UInt16.max`, all lanes saturated for the lowest node).
    private var own: UnsafeMutablePointer<SIMD8<UInt16>>
    private var capacity: Int
    /// First pfn -> node, for O(1) lookups of a node by its start.
    private var index = NodeIndex()
    private(set) var root: Int32 = 0
    private var freeList: Int32 = 0
    private var nextUnused: Int32 = 1
    private(set) var count = 0
    private var rng: UInt64 = 0x2545_F491_4F6C_DD1D

    init(initialCapacity: Int = 64) {
        capacity = max(initialCapacity, 2)
        nodes = Self.allocateNodes(capacity)
        own = .allocate(capacity: capacity)
        // Index 0 is the "none" sentinel: summaries 0 so that it never passes a fit test.
        nodes[0] = Node(lo: 0, hi: 0, gap: 0, left: 0, right: 0, parent: 0, priority: 0, flags: 0)
        own[0] = .zero
    }

    deinit {
        nodes.deallocate()
        own.deallocate()
    }

    /// A node buffer aligned to a cache line, so each node occupies exactly one line.
    private static func allocateNodes(_ count: Int) -> UnsafeMutablePointer<Node> {
        precondition(MemoryLayout<Node>.stride == 64, "RangeTree.Node should be one cache line")
        return UnsafeMutableRawPointer.allocate(byteCount: 64 * count, alignment: 64)
            .bindMemory(to: Node.self, capacity: count)
    }

    /// Alignments up to 2^7 pfns (512 KiB with 4 KiB pages) are answered exactly from the lane
    /// summaries (one 128-bit vector per node); larger ones prune by lane 0 (the gap) and use the exact test.
    static var laneCount: Int { 8 }

    /// `2^k - 1` for lane k.
    @inline(__always)
    private static var laneMasks: SIMD8<UInt16> { SIMD8(0, 1, 3, 7, 15, 31, 63, 127) }

    /// The lane summary of one gap (see `own`). With `first = pred.hi + 1`, the room above the
    /// first 2^k-aligned pfn is `gap - pad_k` where `pad_k = (-first) mod 2^k`, or 0 when the
    /// padding eats the whole gap: 16-bit vector arithmetic for gaps below 2^16.
    @inline(__always)
    static func lanes(lo: UInt64, gap: UInt64) -> SIMD8<UInt16> {
        if gap >= 0xFFFF + 0x80 { return SIMD8(repeating: .max) }  // incl. the lowest node
        let first = lo &- gap
        if gap > 0xFFFF { return lanesSlow(lo: lo, first: first) }
        let pad = SIMD8<UInt16>(repeating: UInt16(truncatingIfNeeded: 0 &- first)) & laneMasks
        let g = SIMD8<UInt16>(repeating: UInt16(truncatingIfNeeded: gap))
        return (g &- pad).replacing(with: 0, where: pad .> g)
    }

    private static func lanesSlow(lo: UInt64, first: UInt64) -> SIMD8<UInt16> {
        var v = SIMD8<UInt16>.zero
        for k in 0..<8 {
            let mask = (UInt64(1) << UInt64(k)) &- 1
            let (sum, overflow) = first.addingReportingOverflow(mask)
            if overflow { break }
            let p = sum & ~mask
            if lo > p {
                let room = lo &- p
                v[k] = room >= UInt64(UInt16.max) ? .max : UInt16(truncatingIfNeeded: room)
            }
        }
        return v
    }

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
        let start = index.find(pfn)
        if start != 0 { return start }
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
        var t = nodes[Int(n)].right
        if t != 0 {
            while nodes[Int(t)].left != 0 { t = nodes[Int(t)].left }
            return t
        }
        var c = n
        t = nodes[Int(n)].parent
        while t != 0 && nodes[Int(t)].right == c { c = t; t = nodes[Int(t)].parent }
        return t
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
        let k = (~alignMask &+ 1).trailingZeroBitCount
        if k < Self.laneCount && size < UInt64(UInt16.max) && alignMask != 0 {
            return highestFit(root, bound: bound, size: UInt16(truncatingIfNeeded: size), lane: k)
        }
        let align = ~alignMask &+ 1
        let (slack, overflow) = size.addingReportingOverflow(align &- 1)
        return highestFit(root, bound: bound, size: size, alignMask: alignMask,
                          slack: overflow ? .max : slack)
    }

    /// The lane-summary search: exact pruning for alignments up to 2^7.
    private func highestFit(_ t: Int32, bound: UInt64, size: UInt16, lane: Int) -> Int32 {
        var t = t
        while t != 0 {
            if nodes[Int(t)].sub[lane] < size { return 0 }
            let node = nodes[Int(t)]
            if node.lo > bound { t = node.left; continue }
            let r = highestFit(node.right, bound: bound, size: size, lane: lane)
            if r != 0 { return r }
            if own[Int(t)][lane] >= size { return t }
            t = node.left
        }
        return 0
    }

    private func highestFit(_ t: Int32, bound: UInt64, size: UInt64, alignMask: UInt64, slack: UInt64) -> Int32 {
        var t = t
        while t != 0 {
            let node = nodes[Int(t)]
            if UInt64(node.sub[0]) < min(size, UInt64(UInt16.max)) { return 0 }
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
        insert(lo: lo, hi: hi, successor: ceiling(lo), flags: flags)
    }

    /// Inserts `[lo, hi]` directly below `succ` (its successor, or 0 if it has none), which the
    /// allocator already knows: the new node is attached next to `succ` and rotated up, so no
    /// search from the root is needed.
    mutating func insert(lo: UInt64, hi: UInt64, successor succ: Int32, flags: UInt32 = 0) -> Int32 {
        let predHi: UInt64?
        if succ != 0 {
            predHi = predecessorHi(succ)
        } else {
            let pred = floor(lo)
            predHi = pred == 0 ? nil : nodes[Int(pred)].hi
        }
        let n = allocateNode()
        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17
        let gapBelow: UInt64 = predHi.map { lo &- $0 &- 1 } ?? .max
        nodes[Int(n)] = Node(lo: lo, hi: hi, gap: gapBelow, left: 0, right: 0, parent: 0,
                             priority: UInt32(truncatingIfNeeded: rng >> 32), flags: flags)
        own[Int(n)] = Self.lanes(lo: lo, gap: gapBelow)
        nodes[Int(n)].sub = own[Int(n)]
        index.insert(lo, n)
        // Attach as a leaf: the left child of succ, or the right child of the rightmost node of
        // succ's left subtree (the predecessor); with no succ, right of the maximum.
        var attach: Int32
        var asLeft: Bool
        if succ != 0 {
            if nodes[Int(succ)].left == 0 {
                attach = succ; asLeft = true
            } else {
                attach = nodes[Int(succ)].left
                while nodes[Int(attach)].right != 0 { attach = nodes[Int(attach)].right }
                asLeft = false
            }
        } else {
            attach = root; asLeft = false
            if attach != 0 { while nodes[Int(attach)].right != 0 { attach = nodes[Int(attach)].right } }
        }
        count += 1
        if attach == 0 {
            root = n
            return n
        }
        nodes[Int(n)].parent = attach
        if asLeft { nodes[Int(attach)].left = n } else { nodes[Int(attach)].right = n }
        // Summaries are brought up to date before the rotations (which only reshuffle consistent
        // summaries), in one pass: the new leaf hangs below `succ` (its left child, or in its left
        // subtree), so the path from the leaf up passes through `succ`, whose gap shrank; the
        // early stop is allowed only above `succ`.
        if succ != 0 {
            let g = nodes[Int(succ)].lo &- hi &- 1
            nodes[Int(succ)].gap = g
            own[Int(succ)] = Self.lanes(lo: nodes[Int(succ)].lo, gap: g)
        }
        Self.pullToRoot(nodes, own, from: attach, via: succ)
        while true {
            let p = nodes[Int(n)].parent
            if p == 0 || nodes[Int(p)].priority >= nodes[Int(n)].priority { break }
            rotateUp(n)
        }
        return n
    }

    /// The node containing `pfn` (or 0) and that node's successor: a hash lookup when `pfn` is
    /// a node's first pfn (the usual free), else one descent.
    func containingWithSuccessor(_ pfn: UInt64) -> (node: Int32, successor: Int32) {
        let n = index.find(pfn)
        if n != 0 { return (n, successor(n)) }
        var t = root, best: Int32 = 0, lastLeft: Int32 = 0
        while t != 0 {
            if nodes[Int(t)].lo <= pfn { best = t; t = nodes[Int(t)].right } else { lastLeft = t; t = nodes[Int(t)].left }
        }
        guard best != 0, nodes[Int(best)].hi >= pfn else { return (0, 0) }
        // lastLeft is the smallest node above pfn on the path: the successor of `best`.
        return (best, lastLeft)
    }

    /// Removes node `n` (which must be in the tree).
    mutating func remove(_ n: Int32) { remove(n, successor: successor(n)) }

    /// Removes node `n` whose successor (or 0) the caller already knows, without rotations.
    ///
    /// With at most one child, `n` is spliced out. With two children, its successor is the
    /// leftmost node of its right subtree (no left child): the successor's range moves into slot
    /// `n` (which keeps its place and priority, so order and heap order hold) and the successor's
    /// old slot is spliced out instead. Then the successor's gap absorbs `n` and `n`'s gap.
    /// Summaries are recomputed one change at a time (see `insert`).
    ///
    /// - Returns: `(from, to)` when the successor's range moved from slot `from` to slot `to`
    ///   (callers holding node indices must follow it), else `(0, 0)`.
    @discardableResult
    mutating func remove(_ n: Int32, successor succ: Int32) -> (from: Int32, to: Int32) {
        let node = nodes[Int(n)]
        let newSuccGap: UInt64 = succ == 0 || node.gap == .max
            ? .max : nodes[Int(succ)].lo &- (node.lo &- node.gap)
        index.remove(node.lo)
        var victim = n
        var succSlot = succ
        var moved: (from: Int32, to: Int32) = (0, 0)
        if node.left != 0 && node.right != 0 {
            precondition(succ != 0 && nodes[Int(succ)].left == 0, "successor of a node with two children")
            let s = nodes[Int(succ)]
            index.remove(s.lo)
            nodes[Int(n)].lo = s.lo
            nodes[Int(n)].hi = s.hi
            nodes[Int(n)].flags = s.flags
            nodes[Int(n)].gap = newSuccGap
            own[Int(n)] = Self.lanes(lo: s.lo, gap: newSuccGap)
            index.insert(s.lo, n)
            victim = succ
            succSlot = n
            moved = (succ, n)
        }
        let child = nodes[Int(victim)].left != 0 ? nodes[Int(victim)].left : nodes[Int(victim)].right
        let parent = nodes[Int(victim)].parent
        if child != 0 { nodes[Int(child)].parent = parent }
        if parent == 0 {
            root = child
        } else if nodes[Int(parent)].left == victim {
            nodes[Int(parent)].left = child
        } else {
            nodes[Int(parent)].right = child
        }
        count -= 1
        nodes[Int(victim)].left = freeList
        nodes[Int(victim)].right = 0
        nodes[Int(victim)].parent = 0
        nodes[Int(victim)].priority = 0
        freeList = victim
        if succSlot != 0 && moved.to == 0 {
            nodes[Int(succSlot)].gap = newSuccGap
            own[Int(succSlot)] = Self.lanes(lo: nodes[Int(succSlot)].lo, gap: newSuccGap)
        }
        // One pass over both changes (the removed node below `parent`, the successor's grown
        // gap): with two children or no right child, the successor's slot is `parent` or one
        // of its ancestors; with only a right child, the successor lies in that child's subtree,
        // now below `parent`.
        if moved.to != 0 || node.right == 0 {
            Self.pullToRoot(nodes, own, from: parent, via: succSlot)
        } else {
            Self.pullToRoot(nodes, own, from: succSlot, via: parent)
        }
        return moved
    }

    /// Moves the start of node `n` down to `newLo` (reserve_iova's stretching); the order of nodes
    /// does not change because the space below `n` down to `newLo` is free.
    mutating func lowerStart(_ n: Int32, to newLo: UInt64) {
        let old = nodes[Int(n)]
        let newGap = old.gap == .max ? UInt64.max : old.gap &- (old.lo &- newLo)
        nodes[Int(n)].lo = newLo
        index.remove(old.lo)
        index.insert(newLo, n)
        nodes[Int(n)].gap = newGap
        own[Int(n)] = Self.lanes(lo: newLo, gap: newGap)
        pullToRoot(n)
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
            let bigger = Self.allocateNodes(newCapacity)
            bigger.update(from: nodes, count: capacity)
            nodes.deallocate()
            nodes = bigger
            let biggerOwn = UnsafeMutablePointer<SIMD8<UInt16>>.allocate(capacity: newCapacity)
            biggerOwn.update(from: own, count: capacity)
            own.deallocate()
            own = biggerOwn
            capacity = newCapacity
        }
        let n = nextUnused
        nextUnused += 1
        return n
    }

    // The summary helpers are static and take the buffers, not `self`: a non-mutating method
    // called from a mutating one copied the whole tree struct to the stack first, and that copy
    // (16-byte loads over fields just written) stalled on store forwarding.

    /// Recomputes `t`'s subtree summaries from its own gap and its children's summaries; returns
    /// whether they changed.
    @inline(__always)
    private static func pullChanged(_ nodes: UnsafeMutablePointer<Node>, _ own: UnsafeMutablePointer<SIMD8<UInt16>>, _ t: Int32) -> Bool {
        let p = nodes + Int(t)
        let l = nodes + Int(p.pointee.left), r = nodes + Int(p.pointee.right)
        let sub = vmax(own[Int(t)], vmax(l.pointee.sub, r.pointee.sub))
        if same(sub, p.pointee.sub) { return false }
        p.pointee.sub = sub
        return true
    }

    /// Recomputes `t`'s subtree summaries unconditionally (no comparison).
    @inline(__always)
    private static func pullStore(_ nodes: UnsafeMutablePointer<Node>, _ own: UnsafeMutablePointer<SIMD8<UInt16>>, _ t: Int32) {
        let p = nodes + Int(t)
        let l = nodes + Int(p.pointee.left), r = nodes + Int(p.pointee.right)
        p.pointee.sub = vmax(own[Int(t)], vmax(l.pointee.sub, r.pointee.sub))
    }

    /// `a == b` as two 64-bit compares: the generic SIMD `==` is compiled to a lane-by-lane loop
    /// through memory (a store-forwarding stall per pull).
    @inline(__always)
    static func same(_ a: SIMD8<UInt16>, _ b: SIMD8<UInt16>) -> Bool {
        let x = unsafeBitCast(a, to: (UInt64, UInt64).self)
        let y = unsafeBitCast(b, to: (UInt64, UInt64).self)
        return (x.0 ^ y.0) | (x.1 ^ y.1) == 0
    }

    @inline(__always)
    private static func vmax(_ a: SIMD8<UInt16>, _ b: SIMD8<UInt16>) -> SIMD8<UInt16> {
        a.replacing(with: b, where: a .< b)
    }

    @inline(__always)
    private func vmax(_ a: SIMD8<UInt16>, _ b: SIMD8<UInt16>) -> SIMD8<UInt16> { Self.vmax(a, b) }

    /// Recomputes the summaries of `t` and its ancestors, stopping at the first node whose
    /// summaries do not change (then nothing above it can change either: every ancestor's summary
    /// is a maximum over its children's, and only this path's child changed).
    private static func pullToRoot(_ nodes: UnsafeMutablePointer<Node>, _ own: UnsafeMutablePointer<SIMD8<UInt16>>, _ t: Int32) {
        var t = t
        while t != 0 {
            if !pullChanged(nodes, own, t) { return }
            t = nodes[Int(t)].parent
        }
    }

    @inline(__always)
    private func pullToRoot(_ t: Int32) { Self.pullToRoot(nodes, own, t) }

    /// `pullToRoot` after two changes at once: `a`'s subtree and `b`'s own lanes, where `b` is
    /// expected to be `a` or one of its ancestors. The early stop is allowed only once `b` is
    /// passed; if `b` is not met (or is 0), the pass from `a` runs to the root and `b` gets its own
    /// pass (still sound: everything above the meeting point was computed in the first pass).
    private static func pullToRoot(_ nodes: UnsafeMutablePointer<Node>, _ own: UnsafeMutablePointer<SIMD8<UInt16>>, from a: Int32, via b: Int32) {
        var t = a, pending = b
        while t != 0 {
            let changed = pullChanged(nodes, own, t)
            if t == pending { pending = 0 }
            if !changed && pending == 0 { return }
            t = nodes[Int(t)].parent
        }
        if pending != 0 { pullToRoot(nodes, own, pending) }
    }

    /// Rotates `x` above its parent, keeping parent links and summaries of the two nodes.
    private mutating func rotateUp(_ x: Int32) {
        let p = nodes[Int(x)].parent
        let g = nodes[Int(p)].parent
        if nodes[Int(p)].left == x {
            let b = nodes[Int(x)].right
            nodes[Int(p)].left = b
            if b != 0 { nodes[Int(b)].parent = p }
            nodes[Int(x)].right = p
        } else {
            let b = nodes[Int(x)].left
            nodes[Int(p)].right = b
            if b != 0 { nodes[Int(b)].parent = p }
            nodes[Int(x)].left = p
        }
        nodes[Int(p)].parent = x
        nodes[Int(x)].parent = g
        if g == 0 {
            root = x
        } else if nodes[Int(g)].left == p {
            nodes[Int(g)].left = x
        } else {
            nodes[Int(g)].right = x
        }
        Self.pullStore(nodes, own, p)
        Self.pullStore(nodes, own, x)
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

    /// Verifies ordering, non-overlap, gaps, summaries and heap order; returns a problem or nil.
    func checkInvariants() -> String? {
        var problem: String?
        var prevHi: UInt64? = nil
        var seen = 0
        func visit(_ t: Int32) -> UInt64 {
            if t == 0 { return 0 }
            let node = nodes[Int(t)]
            if node.left != 0 && nodes[Int(node.left)].parent != t { problem = problem ?? "parent link" }
            if node.right != 0 && nodes[Int(node.right)].parent != t { problem = problem ?? "parent link" }
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
            if min(m, UInt64(UInt16.max)) != UInt64(node.sub[0]) { problem = problem ?? "bad gap summary at \(node.lo)" }
            if own[Int(t)] != Self.lanes(lo: node.lo, gap: node.gap) { problem = problem ?? "bad lanes at \(node.lo)" }
            if node.gap != .max && own[Int(t)] != Self.lanesSlow(lo: node.lo, first: node.lo &- node.gap) {
                problem = problem ?? "vector lanes differ from scalar lanes at \(node.lo)"
            }
            if node.sub != vmax(own[Int(t)], vmax(nodes[Int(node.left)].sub, nodes[Int(node.right)].sub)) {
                problem = problem ?? "bad lane summary at \(node.lo)"
            }
            return m
        }
        _ = visit(root)
        if index.count != count { problem = problem ?? "index has \(index.count) entries, tree \(count)" }
        forEach { lo, _, _ in if problem == nil, index.find(lo) == 0 { problem = "node \(lo) not indexed" } }
        if seen != count { problem = problem ?? "count \(count) != \(seen)" }
        return problem
    }
}
