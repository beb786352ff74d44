import IOMMUBase
import IOMMUCore
import IOVAAllocator
import IOMMUTestSupport
import PhysicalMemory
import Synchronization
import Testing
@testable import DMAMapping

/// One atomic ownership flag per IOVA page of the 4 GiB flat table.
final class PageOwners: @unchecked Sendable {
    let flags: UnsafeMutablePointer<Atomic<UInt8>>
    let count: Int
    init(count: Int) {
        self.count = count
        flags = .allocate(capacity: count)
        for i in 0..<count { (flags + i).initialize(to: Atomic(0)) }
    }
    deinit {
        flags.deinitialize(count: count)
        flags.deallocate()
    }
    func claim(_ first: UInt64, _ pages: UInt64) -> Bool {
        var ok = true
        for p in first..<(first + pages) where !flags[Int(p)].compareExchange(expected: 0, desired: 1, ordering: .acquiringAndReleasing).exchanged { ok = false }
        return ok
    }
    func release(_ first: UInt64, _ pages: UInt64) -> Bool {
        var ok = true
        for p in first..<(first + pages) where !flags[Int(p)].compareExchange(expected: 1, desired: 0, ordering: .acquiringAndReleasing).exchanged { ok = false }
        return ok
    }
}

@Suite("DMA concurrency")
struct DMAStressTests {
    /// 2 threads × 10^6 (IOMMUKIT_STRESS=1) or 10^5 map/unmap pairs on their own CPUs, with
    /// overlapping lifetimes; an ownership flag per IOVA page proves no IOVA is live twice; in lazy
    /// mode the flush-queue timer runs from the threads' ticks and, at the end, every queued IOVA
    /// has been freed after a flush (no lost flush).
    @Test(arguments: [(false, false), (true, false), (false, true), (true, true)])
    func twoThreadsMapAndUnmapStress(lazy: Bool, debug: Bool) throws {
        let pairs = TestSupport.stressEnabled && !debug ? 1_000_000 : (debug ? 20_000 : 100_000)
        let h = try DMAHarness(lazy: lazy) { $0.debug = debug }
        let dev = try h.device()
        let p = try h.page()
        let owners = PageOwners(count: 1 << 20)
        let failures = Atomic<Int>(0)
        let baseline = dev.liveIOVANodes()
        runOnThreads(2) { cpu in
            var live: [(IOVA, UInt64)] = []
            var rng = SplitMix64(seed: UInt64(cpu + 1))
            for i in 0..<pairs {
                let length = UInt64(1 + rng.next() % 3) * 4096 - UInt64(rng.next() % 64)
                let a = dev.mapPage(p, length: length, direction: .bidirectional, cpu: cpu)
                if dev.mappingError(a) { failures.wrappingAdd(1, ordering: .relaxed); continue }
                let pages = (length + 4095) / 4096
                if !owners.claim(a.rawValue >> 12, pages) { failures.wrappingAdd(1, ordering: .relaxed) }
                live.append((a, length))
                if live.count > Int(rng.next() % 4) {
                    let (b, l) = live.removeFirst()
                    if !owners.release(b.rawValue >> 12, (l + 4095) / 4096) { failures.wrappingAdd(1, ordering: .relaxed) }
                    dev.unmapPage(b, length: l, direction: .bidirectional, cpu: cpu)
                }
                if lazy && i % 512 == 0 {
                    if cpu == 0 { h.clock.advance(milliseconds: 3) }
                    h.api.tick(cpu: cpu)
                }
            }
            for (b, l) in live {
                if !owners.release(b.rawValue >> 12, (l + 4095) / 4096) { failures.wrappingAdd(1, ordering: .relaxed) }
                dev.unmapPage(b, length: l, direction: .bidirectional, cpu: cpu)
            }
        }
        #expect(failures.load(ordering: .relaxed) == 0)
        #expect(h.warnings.totalCount == 0)
        dev.cookie!.flushQueuesNow()
        let stats = dev.cookie!.statistics
        #expect(stats.pending == 0)
        #expect(stats.queued == stats.freedFromQueue)
        if lazy { #expect(stats.queued == UInt64(2 * pairs)) }
        #expect(dev.cookie!.iovad.checkInvariants() == nil)
        #expect(dev.liveIOVANodes() == baseline)
        #expect(dev.cookie!.staleWindows.snapshot().count == UInt64(2 * pairs))
    }
}
