import IOMMUBase
import IOMMUCore
import IOVAAllocator
import IOMMUTestSupport
import PhysicalMemory
import Testing
@testable import DMAMapping

/// Seed thread "limit iova free size to unmapped iova": driver bugs are reported at the faulty
/// call; the DMA layer neither crashes nor hides them, and keeps working for everyone else.
@Suite("DMA-API debug layer and the seed thread")
struct DebugLayerTests {
    @Test(arguments: [false, true])
    func seedScenarioBadUnmapsAreReportedAndTheSystemKeepsWorking(lazy: Bool) throws {
        let h = try DMAHarness(lazy: lazy)
        let dev = try h.device()
        let p = try h.page()
        let baseline = dev.liveIOVANodes()
        let bystander = dev.mapChecked(p, 2 * 4096)   // must survive everything below

        // (1) an address never mapped
        dev.unmapPage(IOVA(0x1234_5000), length: 4096, direction: .toDevice)
        var w = h.drainWarnings()
        #expect(w.contains(.dmaUnmapNotMapped(device: dev.id, address: IOVA(0x1234_5000), size: 4096, direction: 1)))
        #expect(w.contains(.dmaUnmapIncomplete(device: dev.id, iova: IOVA(0x1234_5000), size: 4096, unmapped: 0)))   // page-table layer
        #expect(w.contains(.iovaFreeNotAllocated(pfn: PFN(0x12345), pages: 1, cpu: dev.cookie!.iovad.currentCPU)))   // IOVA layer

        // (2) the right address with the wrong size
        let a = dev.mapChecked(p, 2 * 4096)
        dev.unmapPage(a, length: 4096, direction: .bidirectional)
        w = h.drainWarnings()
        #expect(w == [.dmaUnmapWrongSize(device: dev.id, address: a, size: 4096, mappedSize: 2 * 4096)])
        #expect(dev.flat.iovaToPhys(IOVA(a.rawValue + 4096)) == nil)   // the whole mapping went, not half of it

        // (3) the same mapping twice
        let b = dev.mapChecked(p, 4096)
        dev.unmapPage(b, length: 4096, direction: .bidirectional)
        #expect(h.drainWarnings().isEmpty)
        dev.unmapPage(b, length: 4096, direction: .bidirectional)
        w = h.drainWarnings()
        #expect(w.first == .dmaDoubleUnmap(device: dev.id, address: b, size: 4096, direction: 0))

        // An unmap inside another live mapping is refused before the page table.
        let inside = IOVA(bystander.rawValue + 4096)
        dev.unmapPage(inside, length: 4096, direction: .bidirectional)
        #expect(h.drainWarnings() == [.dmaUnmapNotMapped(device: dev.id, address: inside, size: 4096, direction: 0)])
        #expect(dev.flat.iovaToPhys(inside) == PhysAddr(p.rawValue + 4096))

        // 10^5 valid cycles: no IOVA live twice, nothing lost.
        var live: [IOVA] = []
        var liveSet = Set<UInt64>()
        for i in 0..<100_000 {
            let x = dev.mapPage(p, length: UInt64(1 + i % 3) * 2048, direction: .bidirectional, cpu: i & 1)
            #expect(!dev.mappingError(x))
            let page = x.rawValue >> 12
            if !liveSet.insert(page).inserted { Issue.record("IOVA \(x) live twice"); break }
            live.append(x)
            if live.count == 8 {
                let y = live.removeFirst()
                liveSet.remove(y.rawValue >> 12)
                let j = i - 7
                dev.unmapPage(y, length: UInt64(1 + j % 3) * 2048, direction: .bidirectional, cpu: j & 1)
            }
            if lazy && i % 1000 == 0 {
                h.clock.advance(milliseconds: 11)
                h.api.tick()
            }
        }
        for (k, y) in live.enumerated() {
            let j = 100_000 - live.count + k
            dev.unmapPage(y, length: UInt64(1 + j % 3) * 2048, direction: .bidirectional)
        }
        #expect(h.drainWarnings().isEmpty)
        dev.cookie!.flushQueuesNow()
        #expect(dev.cookie!.iovad.checkInvariants() == nil)
        dev.unmapPage(bystander, length: 2 * 4096, direction: .bidirectional)
        dev.cookie!.flushQueuesNow()
        #expect(dev.liveIOVANodes() == baseline)
        let stats = dev.cookie!.statistics
        #expect(stats.queued == stats.freedFromQueue)
    }

    @Test func withoutDebugLayerThePageTableAndIOVALayersStillReportAndNothingIsReused() throws {
        let h = try DMAHarness { $0.debug = false }
        let dev = try h.device()
        let p = try h.page()
        let a = dev.mapChecked(p, 2 * 4096)
        // Wrong size: page 2 stays mapped, so the IOVA must not be reused.
        dev.unmapPage(a, length: 4096, direction: .bidirectional)
        let w = h.drainWarnings()
        #expect(w.contains(.dmaUnmapIncomplete(device: dev.id, iova: a, size: 4096, unmapped: 4096)) == false)
        #expect(w.contains { if case .iovaFreeWrongSize = $0 { true } else { false } })
        #expect(dev.flat.iovaToPhys(IOVA(a.rawValue + 4096)) != nil)
        for _ in 0..<1000 {
            let x = dev.mapChecked(p, 4096)
            #expect(x.rawValue < a.rawValue || x.rawValue >= a.rawValue + 2 * 4096)
            dev.unmapPage(x, length: 4096, direction: .bidirectional)
        }
        // Never mapped: the page table unmaps nothing (reported), the IOVA layer rejects the free.
        dev.unmapPage(IOVA(0x5000_0000), length: 4096, direction: .bidirectional)
        let w2 = h.drainWarnings()
        #expect(w2.contains(.dmaUnmapIncomplete(device: dev.id, iova: IOVA(0x5000_0000), size: 4096, unmapped: 0)))
        #expect(w2.contains { if case .iovaFreeNotAllocated = $0 { true } else { false } })
        // Double unmap: the page table finds nothing; the IOVA is not freed a second time.
        let b = dev.mapChecked(p, 4096)
        dev.unmapPage(b, length: 4096, direction: .bidirectional)
        dev.unmapPage(b, length: 4096, direction: .bidirectional)
        let w3 = h.drainWarnings()
        #expect(w3.contains(.dmaUnmapIncomplete(device: dev.id, iova: b, size: 4096, unmapped: 0)))
        let c = dev.mapChecked(p, 4096)
        let d = dev.mapChecked(p, 4096)
        #expect(c != d)
    }

    @Test func linuxCompatibleWarnsThenFreesAnyway() throws {
        let h = try DMAHarness { $0.linuxCompatible = true }
        let dev = try h.device()
        let p = try h.page()
        let a = dev.mapChecked(p, 2 * 4096)
        dev.unmapPage(a, length: 4096, direction: .bidirectional)
        let w = h.drainWarnings()
        #expect(w.contains(.dmaUnmapWrongSize(device: dev.id, address: a, size: 4096, mappedSize: 8192)))
        // Linux frees the IOVA although page 2 is still mapped: the next map of that size gets it.
        #expect(dev.flat.iovaToPhys(IOVA(a.rawValue + 4096)) != nil)
        // Bogus address: WARN, and the pfn goes into the cache unchecked (Linux 1.9).
        dev.unmapPage(IOVA(0x1234_5000), length: 4096, direction: .bidirectional, cpu: 0)
        let x = dev.mapPage(p, length: 4096, direction: .bidirectional, cpu: 0)
        #expect(x == IOVA(0x1234_5000))
    }

    @Test func wrongDirectionAndUncheckedMappingErrorAreReportedAtUnmap() throws {
        let h = try DMAHarness()
        let dev = try h.device()
        let p = try h.page()
        let a = dev.mapPage(p, length: 512, direction: .toDevice)   // never checked
        dev.unmapPage(a, length: 512, direction: .fromDevice)
        let w = h.drainWarnings()
        #expect(w.contains(.dmaUnmapWrongDirection(device: dev.id, address: a, direction: 2, mappedDirection: 1)))
        #expect(w.contains(.dmaMappingErrorNotChecked(device: dev.id, address: a, size: 512)))
        #expect(w.count == 2)
        #expect(dev.liveMappings.isEmpty)
    }

    @Test func syncOutsideAMappingOrInTheWrongDirection() throws {
        let h = try DMAHarness()
        let dev = try h.device()
        let p = try h.page()
        let a = dev.mapChecked(p, 1024, .toDevice)
        dev.syncSingleForDevice(a, length: 1024, direction: .toDevice)
        dev.syncSingleForCPU(IOVA(a.rawValue + 512), length: 512, direction: .toDevice)
        #expect(h.drainWarnings().isEmpty)
        dev.syncSingleForCPU(IOVA(a.rawValue + 512), length: 1024, direction: .toDevice)
        dev.syncSingleForCPU(a, length: 16, direction: .fromDevice)
        #expect(h.drainWarnings() == [
            .dmaSyncNotMapped(device: dev.id, address: IOVA(a.rawValue + 512), size: 1024, direction: 1),
            .dmaSyncWrongDirection(device: dev.id, address: a, direction: 2, mappedDirection: 1),
        ])
    }

    @Test func leakedMappingsReportedAtUnbindAndRemoval() throws {
        let h = try DMAHarness()
        let dev = try h.device()
        let p = try h.page()
        let a = dev.mapChecked(p, 100, .fromDevice)
        let leaked = h.api.unbindDriver(dev.id)
        #expect(leaked.map(\.address) == [a])
        #expect(h.drainWarnings() == [.dmaMappingLeaked(device: dev.id, address: a, size: 100, direction: 2)])
        try h.core.bindDriver(dev.id, name: "again")
        dev.unmapPage(a, length: 100, direction: .fromDevice)
        #expect(h.drainWarnings().isEmpty)
        let b = dev.mapChecked(p, 100)
        let removed = try h.api.removeDevice(dev.id)
        #expect(removed.map(\.address) == [b])
    }

    @Test func unmapOfAnotherKindIsReported() throws {
        let h = try DMAHarness()
        let dev = try h.device()
        let buffer = try #require(dev.allocCoherent(size: 4096))
        dev.unmapPage(buffer.dmaAddress, length: 4096, direction: .bidirectional)
        #expect(h.drainWarnings() == [.dmaUnmapWrongKind(device: dev.id, address: buffer.dmaAddress, kind: 0, mappedKind: 2)])
    }
}
