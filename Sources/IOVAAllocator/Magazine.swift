/// A fixed array of up to 127 cached pfns of one size class.
///
/// Linux: `struct iova_magazine` (`IOVA_MAG_SIZE` = 127, so the kernel struct is exactly 1 KiB).
/// Noncopyable: a magazine moves between a CPU's `loaded`/`prev` slots and the depot; it is never
/// duplicated, so a pfn can never be cached twice by copying a magazine.
@usableFromInline
struct Magazine: ~Copyable, @unchecked Sendable {
    /// Linux: `IOVA_MAG_SIZE`.
    @inlinable static var capacity: Int { 127 }

    @usableFromInline let pfns: UnsafeMutablePointer<UInt64>
    @usableFromInline var count: Int

    @usableFromInline init() {
        pfns = .allocate(capacity: Self.capacity)
        count = 0
    }

    deinit { pfns.deallocate() }

    @inlinable @inline(always) var isEmpty: Bool { count == 0 }
    @inlinable @inline(always) var isFull: Bool { count == Magazine.capacity }

    /// Linux: `iova_magazine_push`. Pushing into a full magazine is a programmer error.
    @inlinable @inline(always)
    mutating func push(_ pfn: UInt64) {
        precondition(count < Magazine.capacity, "Magazine.push on a full magazine")
        pfns[count] = pfn
        count &+= 1  // < capacity by the precondition
    }

    /// Linux: `iova_magazine_pop`: scans from the newest entry down for the first pfn
    /// `<= highestPFN`; removes it by moving the newest entry into its slot. Returns 0 when none
    /// is suitable (or the magazine is empty), leaving the magazine unchanged.
    @inlinable @inline(always)
    mutating func pop(atOrBelow highestPFN: UInt64) -> UInt64 {
        var i = count &- 1
        while i >= 0 {
            let pfn = pfns[i]
            if pfn <= highestPFN {
                count &-= 1
                pfns[i] = pfns[count]
                return pfn
            }
            i &-= 1
        }
        return 0
    }

    /// The entry at `index` (oldest first).
    @inline(__always) subscript(index: Int) -> UInt64 { pfns[index] }

    /// Forgets every entry (after they were returned to the tree).
    mutating func removeAll() { count = 0 }
}
