import IOMMUBase
import IOVAAllocator
import Testing

/// linux-iommu.md §1 "Edge cases and their results (IOVA)", one test each, plus the worked
/// examples of §1.3 and the rcache rules of §1.6-1.7.
@Suite("IOVA edge cases (linux-iommu.md §1)")
struct EdgeCaseTests {
    static let limit32: UInt64 = 0xFFFFF
    static let dma32: UInt64 = 0x100000

    func domain(start: UInt64 = 1, cpus: Int = 1, policy: IOVADomain.Policy = .checking,
                sink: RecordingWarningSink = RecordingWarningSink(), failure: FailNth? = nil) throws -> IOVADomain {
        try IOVADomain(granule: .size4K, startPFN: start, cpuCount: cpus, policy: policy,
                       warningSink: sink, magazineAllocationFailure: failure)
    }

    @Test func granuleLargerThanThePageOrTooSmallIsRefused() {
        #expect(throws: IOMMUError.self) { try IOVADomain(granule: .size16K, startPFN: 1) }
        #expect(throws: IOMMUError.self) { try IOVADomain(granule: PageSize(shift: 4), startPFN: 1) }
        #expect(throws: IOMMUError.self) { try IOVADomain(startPFN: 1, cpuCount: 0) }
        let d = try? IOVADomain(granule: .size16K, startPFN: 1, cpuPageSize: .size16K)
        #expect(d?.dma32BitPFN == 1 << 18)
    }

    @Test func workedExampleFromSection13() throws {
        let d = try domain()
        #expect(try d.alloc(size: 3, limitPFN: Self.limit32, sizeAligned: true) == IOVAPFNRange(first: PFN(0xFFFFC), last: PFN(0xFFFFE)))
        // Starts at the cached node: the slack pfn 0xFFFFF is not used.
        #expect(try d.alloc(size: 1, limitPFN: Self.limit32, sizeAligned: true).first == PFN(0xFFFFB))
        #expect(d.snapshot().cached32PFN == 0xFFFFB)
    }

    @Test func sizeZeroIsRejected() throws {
        let d = try domain()
        #expect(throws: IOMMUError.self) { try d.alloc(size: 0, limitPFN: Self.limit32, sizeAligned: true) }
        #expect(throws: IOMMUError.self) { try d.fastAlloc(size: 0, limitPFN: Self.limit32, flushCaches: true, cpu: 0) }
        #expect(d.snapshot().nodes.isEmpty)
    }

    @Test func sizeAlignmentRoundsToTheNextPowerOfTwo() throws {
        let d = try domain()
        for size: UInt64 in [33, 40, 63] {
            let r = try d.alloc(size: size, limitPFN: Self.limit32, sizeAligned: true)
            #expect(r.first.rawValue % 64 == 0)
            #expect(r.count == size)
        }
        let one = try d.alloc(size: 1, limitPFN: Self.limit32, sizeAligned: true)
        let unaligned = try d.alloc(size: 3, limitPFN: Self.limit32, sizeAligned: false)
        #expect(unaligned.last.rawValue + 1 == one.first.rawValue)  // packed right below
    }

    @Test func allocationsStayInsideStartAndLimit() throws {
        let d = try domain(start: Self.dma32 - 100)
        var got: [IOVAPFNRange] = []
        while let r = try? d.alloc(size: 7, limitPFN: Self.dma32 - 10, sizeAligned: true) { got.append(r) }
        #expect(!got.isEmpty)
        for r in got { #expect(r.first.rawValue >= Self.dma32 - 100 && r.last.rawValue <= Self.dma32 - 10) }
    }

    @Test func failedAllocationSetsMax32AllocSizeAndFreeBelow4GResetsIt() throws {
        let d = try domain(start: Self.dma32 - 64)
        let a = try d.alloc(size: 32, limitPFN: Self.limit32, sizeAligned: true)
        _ = try d.alloc(size: 16, limitPFN: Self.limit32, sizeAligned: true)
        #expect(throws: IOMMUError.self) { try d.alloc(size: 32, limitPFN: Self.limit32, sizeAligned: true) }
        #expect(d.snapshot().max32AllocSize == 32)
        // Fast fail: any 32-bit request of 32+ pages fails without a search, even one that fits
        // after the space is freed elsewhere... until a free below 4 GiB resets the limit.
        #expect(throws: IOMMUError.self) { try d.alloc(size: 40, limitPFN: Self.limit32, sizeAligned: false) }
        // A smaller request is still searched (and fits).
        #expect((try? d.alloc(size: 8, limitPFN: Self.limit32, sizeAligned: true)) != nil)
        // A >32-bit failure also sets it.
        #expect(throws: IOMMUError.self) { try d.alloc(size: 1 << 40, limitPFN: 0xF_FFFF_FFFF, sizeAligned: true) }
        #expect(d.snapshot().max32AllocSize == 1 << 40)
        d.free(a.first)
        #expect(d.snapshot().max32AllocSize == Self.dma32)
        #expect(try d.alloc(size: 32, limitPFN: Self.limit32, sizeAligned: true) == a)
    }

    @Test func holesAboveTheCachedNodeAreReusedOnlyByTheRetryPass() throws {
        let d = try domain(start: 0xFFFF8)  // 8 pfns below 4 GiB
        #expect(try d.alloc(size: 3, limitPFN: Self.limit32, sizeAligned: true).first == PFN(0xFFFFC))  // slack 0xFFFFF
        #expect(try d.alloc(size: 1, limitPFN: Self.limit32, sizeAligned: true).first == PFN(0xFFFFB))
        #expect(try d.alloc(size: 2, limitPFN: Self.limit32, sizeAligned: true).first == PFN(0xFFFF8))  // 0xFFFFA free
        // The first pass from cached32 (0xFFFF8) fails at start_pfn; the retry from the top
        // finds the highest hole, the slack pfn, not 0xFFFFA.
        #expect(try d.alloc(size: 1, limitPFN: Self.limit32, sizeAligned: true).first == PFN(0xFFFFF))
        #expect(try d.alloc(size: 1, limitPFN: Self.limit32, sizeAligned: true).first == PFN(0xFFFFA))
        #expect(throws: IOMMUError.self) { try d.alloc(size: 1, limitPFN: Self.limit32, sizeAligned: true) }
        #expect(d.snapshot().max32AllocSize == 1)
    }

    @Test func freeInsideAnAllocationFreesTheWholeNodeUnderLinuxPolicy() throws {
        let sink = RecordingWarningSink()
        let d = try domain(policy: .linuxCompatible, sink: sink)
        let r = try d.alloc(size: 8, limitPFN: Self.limit32, sizeAligned: true)
        #expect(d.find(PFN(r.first.rawValue + 5)) == r)
        #expect(d.free(PFN(r.first.rawValue + 5)) == r)
        #expect(d.find(r.first) == nil)
        #expect(d.free(PFN(12345)) == nil)  // unknown pfn: silently ignored
        #expect(sink.totalCount == 0)
    }

    @Test func reserveMergesByStretchingAndReturnsTheCoveringNode() throws {
        let sink = RecordingWarningSink()
        let d = try domain(sink: sink)
        let a = try #require(d.reserve(lo: PFN(20), hi: PFN(25)))
        _ = try #require(d.reserve(lo: PFN(30), hi: PFN(35)))
        #expect(a == IOVAPFNRange(first: PFN(20), last: PFN(25)))
        // Fully covered: the existing node.
        #expect(d.reserve(lo: PFN(21), hi: PFN(24)) == a)
        // Overlapping both: the first is stretched down, the second down to 26, the rest added.
        #expect(d.reserve(lo: PFN(10), hi: PFN(50)) == IOVAPFNRange(first: PFN(36), last: PFN(50)))
        #expect(d.snapshot().nodes == [
            IOVAPFNRange(first: PFN(10), last: PFN(25)), IOVAPFNRange(first: PFN(26), last: PFN(35)),
            IOVAPFNRange(first: PFN(36), last: PFN(50)),
        ])
        #expect(d.snapshot().cachedPFN == .max && d.snapshot().cached32PFN == .max)  // caches untouched
        #expect(d.reserve(lo: PFN(1), hi: PFN(1 << 53)) == nil)
        #expect(sink.warnings == [.iovaReserveOutOfRange(low: PFN(1), high: PFN(1 << 53))])
        #expect(d.checkInvariants() == nil)
    }

    @Test func allocationsAvoidReservedRanges() throws {
        let d = try domain()
        d.reserve(lo: PFN(0xFFF00), hi: PFN(0xFFFFF))
        #expect(try d.alloc(size: 1, limitPFN: Self.limit32, sizeAligned: true).first == PFN(0xFFEFF))
    }

    @Test func smallFastAllocationsAreRoundedToAPowerOfTwo() throws {
        let d = try domain()
        let p = try d.fastAlloc(size: 5, limitPFN: Self.limit32, flushCaches: false, cpu: 0)
        #expect(d.find(p)?.count == 8)
        #expect(p.rawValue % 8 == 0)
        let big = try d.fastAlloc(size: 33, limitPFN: Self.limit32, flushCaches: false, cpu: 0)
        #expect(d.find(big)?.count == 33)  // 32+ pages are not rounded
        #expect(big.rawValue % 64 == 0)    // but still size-aligned
    }

    @Test func cacheHitReturnsTheMostRecentSuitablePfnNotTheHighest() throws {
        let d = try domain(policy: .linuxCompatible)
        var pfns: [PFN] = []
        for _ in 0..<3 { pfns.append(try d.fastAlloc(size: 1, limitPFN: Self.limit32, flushCaches: false, cpu: 0)) }
        // Free highest first, lowest last: the lowest is the newest entry.
        for p in pfns { d.fastFree(pfn: p, size: 1, cpu: 0) }
        #expect(try d.fastAlloc(size: 1, limitPFN: Self.limit32, flushCaches: false, cpu: 0) == pfns[2])
        // A limit below the newest entries skips them: the scan goes down to older entries.
        #expect(try d.fastAlloc(size: 1, limitPFN: pfns[1].rawValue, flushCaches: false, cpu: 0) == pfns[1])
        // The hit did not touch the tree: the node is still there.
        #expect(d.find(pfns[1]) != nil)
    }

    @Test func cachedPfnsAboveTheLimitFallBackToTheTree() throws {
        let d = try domain()
        let p = try d.fastAlloc(size: 1, limitPFN: Self.limit32, flushCaches: false, cpu: 0)
        d.fastFree(pfn: p, size: 1, cpu: 0)
        let q = try d.fastAlloc(size: 1, limitPFN: 0x1000, flushCaches: false, cpu: 0)
        #expect(q != p && q.rawValue <= 0x1000)
        #expect(d.snapshot().cpuMagazines[0][0].0 == [p.rawValue])
    }

    @Test func cpuCachesAreSeparate() throws {
        let d = try domain(cpus: 2)
        let p = try d.fastAlloc(size: 1, limitPFN: Self.limit32, flushCaches: false, cpu: 0)
        d.fastFree(pfn: p, size: 1, cpu: 0)
        #expect(try d.fastAlloc(size: 1, limitPFN: Self.limit32, flushCaches: false, cpu: 1) != p)
        #expect(try d.fastAlloc(size: 1, limitPFN: Self.limit32, flushCaches: false, cpu: 0) == p)
    }

    @Test(arguments: IOVADomain.Policy.allCases)
    func insertFailsOnlyWhenNoMagazineCanBeAllocated(policy: IOVADomain.Policy) throws {
        let failure = FailNth()
        let d = try domain(policy: policy, failure: failure)
        var pfns: [PFN] = []
        for _ in 0..<(2 * 127 + 2) { pfns.append(try d.fastAlloc(size: 1, limitPFN: Self.limit32, flushCaches: false, cpu: 0)) }
        for p in pfns[0..<254] { d.fastFree(pfn: p, size: 1, cpu: 0) }  // fills loaded and prev
        #expect(d.snapshot().nodes.count == 256)
        failure.failOn(1)
        d.fastFree(pfn: pfns[254], size: 1, cpu: 0)  // no new magazine: freed to the tree
        #expect(d.find(pfns[254]) == nil)
        #expect(d.snapshot().depot[0].isEmpty)
        d.fastFree(pfn: pfns[255], size: 1, cpu: 0)  // allocation works: full loaded to the depot
        #expect(d.snapshot().depot[0].count == 1)
        #expect(d.find(pfns[255]) != nil)
        #expect(failure.failureCount == 1)
        #expect(d.checkInvariants() == nil)
    }

    @Test(arguments: IOVADomain.Policy.allCases)
    func injectedAllocationFailureIsNoSpaceAndTouchesNothing(policy: IOVADomain.Policy) throws {
        let failure = FailNth()
        let d = try IOVADomain(granule: .size4K, startPFN: 1, cpuCount: 1, policy: policy, allocationFailure: failure)
        let cached = try d.fastAlloc(size: 1, limitPFN: Self.limit32, flushCaches: false, cpu: 0)
        d.fastFree(pfn: cached, size: 1, cpu: 0)
        let before = d.snapshot()
        // Fails even though a cached pfn would satisfy it: "as if the space were full".
        failure.failOn(1)
        #expect(throws: IOMMUError(.noIOVASpace, address: Self.limit32, length: 1)) {
            try d.fastAlloc(size: 1, limitPFN: Self.limit32, flushCaches: true, cpu: 0)
        }
        failure.failOn(1)
        #expect(throws: IOMMUError(.noIOVASpace, address: Self.limit32, length: 3)) {
            try d.alloc(size: 3, limitPFN: Self.limit32, sizeAligned: false)
        }
        #expect(d.snapshot() == before)
        #expect(failure.failureCount == 2)
        #expect(try d.fastAlloc(size: 1, limitPFN: Self.limit32, flushCaches: false, cpu: 0) == cached)
        #expect(d.checkInvariants() == nil)
    }

    @Test func depotIsTrimmedOnlyByTicksOneMagazinePerPeriodAboveTheCPUCount() throws {
        let d = try domain()
        var pfns: [PFN] = []
        for _ in 0..<(127 * 5) { pfns.append(try d.fastAlloc(size: 1, limitPFN: Self.limit32, flushCaches: false, cpu: 0)) }
        for p in pfns { d.fastFree(pfn: p, size: 1, cpu: 0) }
        // prev holds 127, loaded 127; three full magazines went to the depot (frees 255, 382, 509).
        #expect(d.snapshot().depot[0].count == 3)
        #expect(d.snapshot().depotDeadlines[0] == 100_000_000)
        d.tick(nanoseconds: 99_999_999)
        #expect(d.snapshot().depot[0].count == 3)  // not due yet
        d.tick(nanoseconds: 1)
        #expect(d.snapshot().depot[0].count == 2)  // one magazine per run
        #expect(d.snapshot().depotDeadlines[0] == 200_000_000)
        d.tick(nanoseconds: 1_000_000_000)
        #expect(d.snapshot().depot[0].count == 1)  // 1 <= cpuCount: the work stops
        #expect(d.snapshot().depotDeadlines[0] == nil)
        #expect(d.snapshot().nodes.count == 127 * 5 - 2 * 127)
        #expect(d.checkInvariants() == nil)
    }

    @Test func failedFastAllocationFlushesEveryCacheAndRetriesOnce() throws {
        let d = try domain(start: Self.dma32 - 16, cpus: 2)
        var pfns: [PFN] = []
        while let p = try? d.fastAlloc(size: 1, limitPFN: Self.limit32, flushCaches: false, cpu: 0) { pfns.append(p) }
        #expect(pfns.count == 16)
        for p in pfns { d.fastFree(pfn: p, size: 1, cpu: 1) }  // cached on CPU 1
        // CPU 0 has nothing cached; the tree is full; without flushing it fails...
        #expect(throws: IOMMUError.self) { try d.fastAlloc(size: 2, limitPFN: Self.limit32, flushCaches: false, cpu: 0) }
        // ...with flushing, CPU 1's cache goes back to the tree and the retry succeeds.
        let p = try d.fastAlloc(size: 2, limitPFN: Self.limit32, flushCaches: true, cpu: 0)
        #expect(p.rawValue >= Self.dma32 - 16)
        #expect(d.snapshot().cpuMagazines[1][0] == ([], []))
    }

    @Test func drainOfAPfnWithNoNodeWarnsAndSkipsUnderLinuxPolicy() throws {
        let sink = RecordingWarningSink()
        let d = try domain(policy: .linuxCompatible, sink: sink)
        let good = try d.fastAlloc(size: 1, limitPFN: Self.limit32, flushCaches: false, cpu: 0)
        d.fastFree(pfn: PFN(12345), size: 1, cpu: 0)
        d.fastFree(pfn: good, size: 1, cpu: 0)
        #expect(sink.totalCount == 0)  // Linux: no check at free time
        d.flushCPU(0)
        #expect(sink.warnings == [.iovaDrainFoundNoAllocation(pfn: PFN(12345))])
        #expect(d.find(good) == nil)
        #expect(d.snapshot().nodes.isEmpty)
    }

    @Test func anchorIsNeverFreed() throws {
        let d = try domain(policy: .linuxCompatible)
        #expect(d.find(PFN(.max)) == IOVAPFNRange(first: PFN(.max), last: PFN(.max)))
        #expect(d.free(PFN(.max)) == nil)
        #expect(d.checkInvariants() == nil)
    }
}
