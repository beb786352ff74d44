import IOMMUBase
import IOMMUCore
import IOVAAllocator
import IOMMUTestSupport
import PhysicalMemory
import Testing
@testable import DMAMapping

@Suite("Strict and lazy invalidation")
struct FlushQueueTests {
    @Test func strictInvalidatesBeforeUnmapReturnsAndReusesAtOnce() throws {
        let h = try DMAHarness()
        let dev = try h.device()
        let p = try h.page()
        let a = dev.mapChecked(p, 4096)
        #expect(dev.flat.deviceTranslate(a, isWrite: false) == .translated(p, stale: false))   // fills the IOTLB
        h.clock.advance(nanoseconds: 500)
        dev.unmapPage(a, length: 4096, direction: .bidirectional, cpu: 0)
        #expect(dev.flat.deviceTranslate(a, isWrite: false) == .fault)   // invalidated
        #expect(dev.flat.rangeSyncCount.load(ordering: .relaxed) == 1)
        #expect(dev.mapChecked(p, 4096, cpu: 0) == a)   // straight from the CPU cache
        let windows = dev.cookie!.staleWindows.snapshot()
        #expect(windows.count == 1 && windows.maxNanoseconds == 0)
    }

    @Test func lazyIOVAIsNotReusedBeforeAFlushCompletesAfterItsUnmap() throws {
        let h = try DMAHarness(lazy: true)
        let dev = try h.device()
        #expect(dev.isLazy)
        let p = try h.page()
        let a = dev.mapChecked(p, 4096, cpu: 0)
        #expect(dev.flat.deviceTranslate(a, isWrite: false) == .translated(p, stale: false))
        h.clock.advance(nanoseconds: 1000)
        dev.unmapPage(a, length: 4096, direction: .bidirectional, cpu: 0)
        // The page table no longer maps it, but the IOTLB still does: the device can reach it.
        #expect(dev.flat.iovaToPhys(a) == nil)
        #expect(dev.flat.deviceTranslate(a, isWrite: false) == .translated(p, stale: true))
        #expect(dev.cookie!.isQueued(pfn: a.rawValue >> 12))
        let stats = dev.cookie!.statistics
        #expect(stats.timerArmed && stats.timerDeadline == 1000 + 10_000_000)
        // Not reused while queued.
        let b = dev.mapChecked(p, 4096, cpu: 0)
        #expect(b != a)
        // 9.999 ms: the timer is not due yet.
        h.clock.advance(nanoseconds: 9_999_999)
        #expect(h.api.tick() == 0)
        #expect(dev.cookie!.isQueued(pfn: a.rawValue >> 12))
        h.clock.advance(nanoseconds: 1)
        #expect(h.api.tick() == 1)
        #expect(!dev.cookie!.isQueued(pfn: a.rawValue >> 12))
        #expect(dev.flat.deviceTranslate(a, isWrite: false) == .fault)   // flushed
        #expect(dev.mapChecked(p, 4096, cpu: 0) == a)   // now reusable
        // The stale window: from the unmap to the flush, exactly 10 ms.
        let windows = dev.cookie!.staleWindows.snapshot()
        #expect(windows.count == 1)
        #expect(windows.maxNanoseconds == 10_000_000)
        let s = dev.cookie!.statistics
        #expect(s.flushesStarted == 1 && s.flushesFinished == 1 && !s.timerArmed)
    }

    @Test func fullPerCPUQueueFlushesInline() throws {
        let h = try DMAHarness(lazy: true)
        let dev = try h.device()
        let p = try h.page()
        var addresses: [IOVA] = []
        for _ in 0..<256 { addresses.append(dev.mapChecked(p, 4096, cpu: 0)) }
        for a in addresses.prefix(255) { dev.unmapPage(a, length: 4096, direction: .bidirectional, cpu: 0) }
        #expect(dev.cookie!.statistics.pending == 255)   // 256 slots, one kept empty
        #expect(dev.cookie!.statistics.flushesStarted == 0)
        dev.unmapPage(addresses[255], length: 4096, direction: .bidirectional, cpu: 0)
        let s = dev.cookie!.statistics
        #expect(s.flushesStarted == 1)
        #expect(s.pending == 1)
        #expect(s.freedFromQueue == 255)
        // The other CPU's queue is separate.
        let x = dev.mapChecked(p, 4096, cpu: 1)
        dev.unmapPage(x, length: 4096, direction: .bidirectional, cpu: 1)
        #expect(dev.cookie!.statistics.pending == 2)
    }

    @Test func entriesQueuedAfterAFlushStartedWaitForTheNextOne() throws {
        let h = try DMAHarness(lazy: true)
        let dev = try h.device()
        let p = try h.page()
        let a = dev.mapChecked(p, 4096, cpu: 0)
        dev.unmapPage(a, length: 4096, direction: .bidirectional, cpu: 0)
        let cookie = dev.cookie!
        // A flush that started before the entry was queued does not release it.
        cookie.flushStartCount.wrappingAdd(1, ordering: .relaxed)   // flush #0 "in progress"
        let b = dev.mapChecked(p, 4096, cpu: 0)
        dev.unmapPage(b, length: 4096, direction: .bidirectional, cpu: 0)   // counter = 1
        cookie.flushFinishCount.wrappingAdd(1, ordering: .relaxed)  // flush #0 finishes
        cookie.drainCompleted(cpu: 0)
        #expect(!cookie.isQueued(pfn: a.rawValue >> 12))
        #expect(cookie.isQueued(pfn: b.rawValue >> 12))
    }

    @Test func singleQueueUsesOneSecondTimeout() throws {
        let h = try DMAHarness(lazy: true) { $0.shadowOnFlush = true }
        let dev = try h.device()
        let p = try h.page()
        let a = dev.mapChecked(p, 4096, cpu: 1)
        dev.unmapPage(a, length: 4096, direction: .bidirectional, cpu: 1)
        h.clock.advance(milliseconds: 999)
        #expect(h.api.tick() == 0)
        h.clock.advance(milliseconds: 1)
        #expect(h.api.tick() == 1)
        #expect(dev.cookie!.staleWindows.snapshot().maxNanoseconds == 1_000_000_000)
    }

    @Test func coherentFreeInLazyModeIsQueued() throws {
        let h = try DMAHarness(lazy: true)
        let dev = try h.device()
        let before = h.frames.framesInUse
        let buffer = try #require(dev.allocCoherent(size: 3 * 4096 + 1))
        #expect(buffer.pages.count == 4)
        #expect(h.frames.framesInUse == before + 4)
        #expect(try h.memory.readBytes(buffer.pages[2], count: 4096).allSatisfy { $0 == 0 })
        #expect(dev.flat.iovaToPhys(IOVA(buffer.dmaAddress.rawValue + 2 * 4096)) == buffer.pages[2])
        dev.freeCoherent(buffer)
        #expect(h.frames.framesInUse == before)
        #expect(dev.cookie!.isQueued(pfn: buffer.dmaAddress.rawValue >> 12))
        #expect(h.drainWarnings().isEmpty)
    }
}

@Suite("Scatterlists")
struct ScatterlistTests {
    @Test func oneIOVARangeAndLinuxCoalescing() throws {
        let h = try DMAHarness()
        let dev = try h.device()
        let p0 = try h.page(), p1 = try h.page(), p2 = try h.page(), p3 = try h.page()
        let entries = [
            DMAScatterEntry(paddr: p0, length: 4096),
            DMAScatterEntry(paddr: p1, length: 4096),          // offset 0, previous ended on a granule: merged
            DMAScatterEntry(paddr: PhysAddr(p2.rawValue + 0x10), length: 100),  // offset: new segment
            DMAScatterEntry(paddr: p3, length: 4096),          // previous did not fill its granule: new segment
        ]
        let m = try #require(dev.mapSG(entries, direction: .toDevice))
        #expect(m.iovaLength == 4 * 4096)
        #expect(m.iova.rawValue == 0xFFFF_C000)
        #expect(m.addresses == [m.iova, IOVA(m.iova.rawValue + 2 * 4096 + 0x10), IOVA(m.iova.rawValue + 3 * 4096)])
        #expect(m.lengths == [8192, 100, 4096])
        #expect(dev.flat.iovaToPhys(IOVA(m.iova.rawValue + 4096)) == p1)
        dev.syncSGForCPU(m, direction: .toDevice)
        dev.unmapSG(m, direction: .toDevice)
        #expect(h.drainWarnings().isEmpty)
        #expect(dev.liveIOVANodes().isEmpty)
    }

    @Test func maxSegmentSizeLimitsMerging() throws {
        let h = try DMAHarness()
        var options = DMADeviceOptions()
        options.maxSegmentSize = 8192
        let dev = try h.device(options: options)
        let pages = try (0..<4).map { _ in try h.page() }
        let m = try #require(dev.mapSG(pages.map { DMAScatterEntry(paddr: $0, length: 4096) }, direction: .bidirectional))
        #expect(m.lengths == [8192, 8192])
        dev.unmapSG(m, direction: .bidirectional)
    }

    @Test func segmentBoundaryPadsThePreviousElement() throws {
        let h = try DMAHarness()
        var options = DMADeviceOptions()
        options.segmentBoundaryMask = 0x1FFF   // 8 KiB segments
        let dev = try h.device(options: options)
        let a = try h.page(), b = try h.page(), c = try h.page()
        // 4K, then 8K (would cross the 8K boundary at offset 4K): padded to start at 8K.
        let entries = [DMAScatterEntry(paddr: a, length: 4096), DMAScatterEntry(paddr: b, length: 8192), DMAScatterEntry(paddr: c, length: 100)]
        let m = try #require(dev.mapSG(entries, direction: .bidirectional))
        #expect(m.iovaLength == 4096 + 4096 + 8192 + 4096)
        #expect(m.addresses[1].rawValue == m.iova.rawValue + 8192)
        dev.unmapSG(m, direction: .bidirectional)
        #expect(h.drainWarnings().isEmpty)
    }
}

@Suite("Flush queue: a full ring while another CPU's flush is in flight")
struct FlushQueueOverflowTests {
    /// Another CPU has started a flush and not finished it: entries queued meanwhile carry a
    /// counter that one flush of ours does not retire (the finish counter trails by one). A full
    /// ring must then flush again rather than overwrite its oldest entries (the IOVAs would
    /// never be freed: found by the two-thread lazy stress test, 512 of 200,000 lost).
    @Test func aFullRingNeverOverwritesEntries() throws {
        let h = try DMAHarness(lazy: true)
        let dev = try h.device()
        let p = try h.page()
        let cookie = try #require(dev.cookie)
        let baseline = dev.liveIOVANodes()
        cookie.flushStartCount.wrappingAdd(1, ordering: .sequentiallyConsistent)   // in flight elsewhere
        let count = 3 * 256
        for _ in 0..<count {
            let a = dev.mapChecked(p, 4096, cpu: 0)
            dev.unmapPage(a, length: 4096, direction: .bidirectional, cpu: 0)
        }
        let during = cookie.statistics
        #expect(during.queued == UInt64(count))
        #expect(during.queued == during.freedFromQueue + UInt64(during.pending), "no entry lost from the ring")
        cookie.flushFinishCount.wrappingAdd(1, ordering: .sequentiallyConsistent)   // the other flush ends
        cookie.flushQueuesNow()
        let after = cookie.statistics
        #expect(after.pending == 0 && after.freedFromQueue == UInt64(count))
        #expect(dev.liveIOVANodes() == baseline, "every IOVA back")
        #expect(cookie.iovad.checkInvariants() == nil)
    }
}
