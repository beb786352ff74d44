/// A hash map from a node's first pfn to its index in the ``RangeTree``: frees find their node
/// in O(1) expected time instead of a root-to-leaf descent (which, with 10^5 nodes, is a chain
/// of cache misses). Open addressing, linear probing, backward-shift deletion; not thread-safe
/// (used under the tree lock). Value 0 marks an empty slot (index 0 is the tree's sentinel).
struct NodeIndex: ~Copyable {
    private var keys: UnsafeMutablePointer<UInt64>
    private var values: UnsafeMutablePointer<Int32>
    private var mask: Int
    private var shift: UInt64
    private(set) var count = 0

    init() {
        let capacity = 256
        keys = .allocate(capacity: capacity)
        values = .allocate(capacity: capacity)
        values.initialize(repeating: 0, count: capacity)
        mask = capacity - 1
        shift = UInt64(64 - capacity.trailingZeroBitCount)
    }

    deinit {
        keys.deallocate()
        values.deallocate()
    }

    @inline(__always)
    private func home(_ key: UInt64) -> Int {
        Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> shift)
    }

    /// The node whose first pfn is `key`, or 0.
    @inline(__always)
    func find(_ key: UInt64) -> Int32 {
        var i = home(key)
        while true {
            let v = values[i]
            if v == 0 { return 0 }
            if keys[i] == key { return v }
            i = (i &+ 1) & mask
        }
    }

    mutating func insert(_ key: UInt64, _ value: Int32) {
        if (count + 1) * 2 > mask + 1 { grow() }
        var i = home(key)
        while values[i] != 0 {
            if keys[i] == key { values[i] = value; return }
            i = (i &+ 1) & mask
        }
        keys[i] = key
        values[i] = value
        count += 1
    }

    mutating func remove(_ key: UInt64) {
        var i = home(key)
        while true {
            if values[i] == 0 { return }
            if keys[i] == key { break }
            i = (i &+ 1) & mask
        }
        // Backward-shift deletion keeps every probe chain unbroken without tombstones.
        var hole = i
        var j = (i + 1) & mask
        while values[j] != 0 {
            let h = home(keys[j])
            // Move j into the hole if its home is not cyclically within (hole, j].
            let inRange = hole <= j ? (h > hole && h <= j) : (h > hole || h <= j)
            if !inRange {
                keys[hole] = keys[j]
                values[hole] = values[j]
                hole = j
            }
            j = (j + 1) & mask
        }
        values[hole] = 0
        count -= 1
    }

    private mutating func grow() {
        let oldKeys = keys, oldValues = values, oldCapacity = mask + 1
        let capacity = oldCapacity * 2
        keys = .allocate(capacity: capacity)
        values = .allocate(capacity: capacity)
        values.initialize(repeating: 0, count: capacity)
        mask = capacity - 1
        shift = UInt64(64 - capacity.trailingZeroBitCount)
        count = 0
        for i in 0..<oldCapacity where oldValues[i] != 0 { insert(oldKeys[i], oldValues[i]) }
        oldKeys.deallocate()
        oldValues.deallocate()
    }
}
