import IOMMUBase
import IOVAAllocator
import Testing

/// The early-warning policy (seed thread "limit iova free size to unmapped iova"): bad frees
/// are reported at the faulty call and rejected under `.checking`; `.linuxCompatible` does what
/// Linux does.
@Suite("IOVA free checks, both policies")
struct WarningPolicyTests {
    static let limit32: UInt64 = 0xFFFFF

    func make(_ policy: IOVADomain.Policy, cpus: Int = 2) throws -> (IOVADomain, RecordingWarningSink) {
        let sink = RecordingWarningSink()
        return (try IOVADomain(granule: .size4K, startPFN: 1, cpuCount: cpus, policy: policy, warningSink: sink), sink)
    }

    func alloc(_ d: IOVADomain, _ size: UInt64 = 1, cpu: Int = 0) throws -> PFN {
        try d.fastAlloc(size: size, limitPFN: Self.limit32, flushCaches: true, cpu: cpu)
    }

    // MARK: bogus free

    @Test func bogusFreeIsReportedAndNeverHandedOut() throws {
        let (d, sink) = try make(.checking)
        let bogus = PFN(0xF0000)
        d.fastFree(pfn: bogus, size: 1, cpu: 1)
        #expect(sink.drain() == [.iovaFreeNotAllocated(pfn: bogus, pages: 1, cpu: 1)])
        for _ in 0..<300 { #expect(try alloc(d, cpu: 1) != bogus) }
        d.fastFree(pfn: PFN(0x80000), size: 64, cpu: 0)  // uncached size: the tree path checks too
        #expect(sink.drain() == [.iovaFreeNotAllocated(pfn: PFN(0x80000), pages: 64, cpu: 0)])
        #expect(d.free(PFN(0x70000)) == nil)
        #expect(sink.drain() == [.iovaFreeNotAllocated(pfn: PFN(0x70000), pages: 0, cpu: -1)])
        #expect(d.checkInvariants() == nil)
    }

    @Test func bogusFreeIsCachedAndHandedOutUnderLinuxPolicy() throws {
        let (d, sink) = try make(.linuxCompatible)
        let bogus = PFN(0xF0000)
        d.fastFree(pfn: bogus, size: 1, cpu: 1)
        #expect(sink.totalCount == 0)
        #expect(try alloc(d, cpu: 1) == bogus)  // another user gets an IOVA with no node
        d.fastFree(pfn: bogus, size: 1, cpu: 1)
        d.flushCPU(1)  // reported only now, far from the faulty call
        #expect(sink.warnings == [.iovaDrainFoundNoAllocation(pfn: bogus)])
    }

    // MARK: double free

    @Test func doubleFreeIsReportedAndThePfnHasOneOwner() throws {
        let (d, sink) = try make(.checking)
        let p = try alloc(d)
        d.fastFree(pfn: p, size: 1, cpu: 0)
        d.fastFree(pfn: p, size: 1, cpu: 1)
        #expect(sink.drain() == [.iovaDoubleFree(pfn: p, pages: 1, cpu: 1)])
        #expect(d.free(p) == nil)  // the tree API sees it cached, too
        #expect(sink.drain() == [.iovaDoubleFree(pfn: p, pages: 0, cpu: -1)])
        let first = try alloc(d)
        let second = try alloc(d)
        #expect(first == p && second != p)
        // Freed to the tree (uncached size), then freed again: no longer allocated.
        let big = try alloc(d, 40)
        d.fastFree(pfn: big, size: 40, cpu: 0)
        d.fastFree(pfn: big, size: 40, cpu: 0)
        #expect(sink.drain() == [.iovaFreeNotAllocated(pfn: big, pages: 40, cpu: 0)])
        #expect(d.checkInvariants() == nil)
    }

    @Test func doubleFreeHandsThePfnOutTwiceUnderLinuxPolicy() throws {
        let (d, sink) = try make(.linuxCompatible)
        let p = try alloc(d)
        d.fastFree(pfn: p, size: 1, cpu: 0)
        d.fastFree(pfn: p, size: 1, cpu: 0)
        #expect(try alloc(d) == p)
        #expect(try alloc(d) == p)  // two users, one IOVA: what the seed thread warns about
        #expect(sink.totalCount == 0)
    }

    // MARK: wrong size

    @Test func freeWithTheWrongSizeIsReported() throws {
        let (d, sink) = try make(.checking)
        let p = try alloc(d, 4)
        d.fastFree(pfn: p, size: 1, cpu: 0)
        #expect(sink.drain() == [.iovaFreeWrongSize(pfn: p, pages: 1, allocatedPages: 4, cpu: 0)])
        d.fastFree(pfn: p, size: 64, cpu: 0)
        #expect(sink.drain() == [.iovaFreeWrongSize(pfn: p, pages: 64, allocatedPages: 4, cpu: 0)])
        let big = try alloc(d, 40)
        d.fastFree(pfn: big, size: 20, cpu: 0)
        #expect(sink.drain() == [.iovaFreeWrongSize(pfn: big, pages: 20, allocatedPages: 40, cpu: 0)])
        // Same rounded size is right: 3 pages were allocated as 4.
        d.fastFree(pfn: p, size: 3, cpu: 0)
        #expect(sink.warnings.isEmpty)
        #expect(try alloc(d, 4) == p)
        #expect(d.checkInvariants() == nil)
    }

    @Test func freeWithTheWrongSizeIsCachedInTheWrongBucketUnderLinuxPolicy() throws {
        let (d, sink) = try make(.linuxCompatible)
        let p = try alloc(d, 4)
        d.fastFree(pfn: p, size: 1, cpu: 0)
        #expect(try alloc(d, 1) == p)  // a 1-page user gets the 4-page node's pfn
        #expect(sink.totalCount == 0)
    }

    // MARK: free inside an allocation

    @Test func freeInsideAnAllocationIsReportedAndNothingIsFreed() throws {
        let (d, sink) = try make(.checking)
        let p = try alloc(d, 8)
        let inside = PFN(p.rawValue + 2)
        d.fastFree(pfn: inside, size: 1, cpu: 1)
        #expect(sink.drain() == [.iovaFreeInsideAllocation(pfn: inside, pages: 1, allocationStart: p, cpu: 1)])
        #expect(d.free(inside) == nil)
        #expect(sink.drain() == [.iovaFreeInsideAllocation(pfn: inside, pages: 0, allocationStart: p, cpu: -1)])
        #expect(d.find(p)?.count == 8)
        for _ in 0..<50 { #expect(try alloc(d, cpu: 1) != inside) }
        #expect(d.checkInvariants() == nil)
    }

    @Test func freeInsideAnAllocationUnderLinuxPolicy() throws {
        let (d, sink) = try make(.linuxCompatible)
        let p = try alloc(d, 8)
        let inside = PFN(p.rawValue + 2)
        d.fastFree(pfn: inside, size: 1, cpu: 0)
        #expect(try alloc(d, 1) == inside)  // overlaps the live 8-page allocation
        #expect(d.free(inside)?.first == p)  // and free_iova frees the whole node
        #expect(sink.totalCount == 0)
    }

    // MARK: good frees stay quiet

    @Test(arguments: IOVADomain.Policy.allCases)
    func correctFreesNeverWarn(policy: IOVADomain.Policy) throws {
        let (d, sink) = try make(policy)
        var rng = SplitMix64(seed: 7)
        var live: [(PFN, UInt64)] = []
        for _ in 0..<20_000 {
            if live.isEmpty || rng.next() % 2 == 0 {
                let size = 1 + rng.next() % 70
                live.append((try alloc(d, size, cpu: Int(rng.next() % 2)), size))
            } else {
                let (p, size) = live.remove(at: Int(rng.next() % UInt64(live.count)))
                d.fastFree(pfn: p, size: size, cpu: Int(rng.next() % 2))
            }
        }
        #expect(sink.totalCount == 0)
        #expect(d.checkInvariants() == nil)
    }
}
