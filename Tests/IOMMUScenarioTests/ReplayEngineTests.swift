import IOMMUBase
import IOMMUScenario
import IOMMUTestSupport
import Testing

private let nvme = "0000:00:04.0"
private let nic = "0000:00:06.0"

/// A trace prologue: groups 2 (NVMe) and 4 (NIC), each attached once, like a VT-d boot.
private func booted() -> TraceBuilder {
    var trace = TraceBuilder()
    trace.add(TraceBuilder.addToGroup(2, nvme), task: "init", pid: 1)
    trace.add(TraceBuilder.addToGroup(4, nic), task: "init", pid: 1)
    trace.add(TraceBuilder.attach(nvme), task: "init", pid: 1)
    trace.add(TraceBuilder.attach(nic), task: "init", pid: 1)
    return trace
}

@Suite struct ReplayEngineTests {
    @Test func sampleTraceReplaysWithoutViolationsAndExactCounts() throws {
        let reader = try TraceReader(path: TraceTestFiles.sampleTracePath)
        var engine = ReplayEngine(backend: IntervalReplayBackend())
        let report = try engine.replay(reader)
        #expect(report.violations == [])
        #expect(report.totalEvents == 88_793)
        let expected: [String: Int] = [
            "add_device_to_group": 10, "remove_device_from_group": 1, "attach_device_to_domain": 12,
            "detach_device_from_domain": 0, "map": 30_528, "unmap": 19_304, "io_page_fault": 0,
            "dma_map_page": 18_503, "dma_unmap_page": 18_262, "dma_map_sg": 1_025, "dma_unmap_sg": 1_025,
            "dma_alloc": 28, "dma_free": 19, "tracing_mark_write": 76,
        ]
        #expect(Dictionary(uniqueKeysWithValues: report.eventCounts.map { ($0.name, $0.count) }) == expected)
        #expect(report.lostEvents == 0)
        // 7 VT-d groups, group 2 re-created after the PCI remove/rescan.
        #expect(report.groups.map(\.id.description) == [
            "group 0", "group 1", "group 2", "group 3", "group 4", "group 5", "group 6", "group 2#2",
        ])
        #expect(report.groups.first(where: { $0.id.groupID == 6 })?.devices == ["0000:00:1f.0", "0000:00:1f.2", "0000:00:1f.3"])
        // NVMe: one domain before the remove, one after the rescan (DMA -> DMA-FQ is in place).
        // e1000e: DMA, identity, DMA again.
        #expect(report.domains.filter { $0.id.groupID == 2 }.count == 2)
        #expect(report.domains.filter { $0.id.groupID == 4 }.map(\.kind) == [.translated, .unknown, .translated])
        // The ISA group's 16 MiB direct mapping at IOVA 0.
        let isa = try #require(report.domains.first { $0.id.groupID == 6 })
        #expect(isa.directMapCount == 1 && isa.liveBytes == 16 << 20)
        // No unmap split a mapping, and (1 CPU, strict) no IOVA was reused before its unmap's
        // dma_unmap_page.
        #expect(engine.backend.splitCount == 0)
        #expect(report.reuseRaceUnmaps == 0)
    }

    @Test func mapsAndUnmapsAreAttributedAcrossInterleavedInterrupts() throws {
        var trace = booted()
        trace.add(TraceBuilder.map(0xffff_f000, 0x7000_0000, 4096))
        // A hardirq on the same CPU unmaps something of the NIC in between.
        trace.add(TraceBuilder.map(0xffff_e000, 0x8000_0000, 4096), task: "ping", pid: 300)
        trace.add(TraceBuilder.mapPage(nic, 0xffff_e000, 100, 0x8000_0000), task: "ping", pid: 300)
        trace.add(TraceBuilder.unmap(0xffff_e000, 4096), task: "dd", pid: 200, flags: "d.h1.")
        trace.add(TraceBuilder.mapPage(nvme, 0xffff_f010, 16, 0x7000_0010))
        trace.add(TraceBuilder.unmapPage(nic, 0xffff_e000, 100), task: "dd", pid: 200, flags: "d.h1.")
        trace.add(TraceBuilder.unmap(0xffff_f000, 4096), task: "<idle>", pid: 0, flags: "d.h1.")
        trace.add(TraceBuilder.unmapPage(nvme, 0xffff_f010, 16), task: "<idle>", pid: 0, flags: "d.h1.")
        let report = try TraceTestFiles.replay(trace.text)
        #expect(report.violations == [])
        let domains = Dictionary(uniqueKeysWithValues: report.domains.map { ($0.id.description, $0) })
        #expect(domains["g2:d1"]?.mapCount == 1 && domains["g2:d1"]?.unmapCount == 1)
        #expect(domains["g4:d1"]?.mapCount == 1 && domains["g4:d1"]?.unmapCount == 1)
        #expect(domains["g2:d1"]?.liveMappingCount == 0)
    }

    @Test func anIOVAReusedBeforeItsDMAUnmapEventIsNotAnOverlap() throws {
        var trace = booted()
        trace.add(TraceBuilder.map(0xffff_f000, 0x1000_0000, 4096), task: "dd", pid: 200, cpu: 0)
        trace.add(TraceBuilder.mapPage(nvme, 0xffff_f000, 4096, 0x1000_0000), task: "dd", pid: 200, cpu: 0)
        // CPU 0's interrupt unmaps and frees the IOVA; before its dma_unmap_page is traced,
        // CPU 1 maps the same IOVA again.
        trace.add(TraceBuilder.unmap(0xffff_f000, 4096), task: "<idle>", pid: 0, cpu: 0, flags: "d.h1.")
        trace.add(TraceBuilder.map(0xffff_f000, 0x2000_0000, 4096), task: "fio", pid: 300, cpu: 1)
        trace.add(TraceBuilder.mapPage(nvme, 0xffff_f000, 4096, 0x2000_0000), task: "fio", pid: 300, cpu: 1)
        trace.add(TraceBuilder.unmapPage(nvme, 0xffff_f000, 4096), task: "<idle>", pid: 0, cpu: 0, flags: "d.h1.")
        let reader = TraceReader(bytes: Array(trace.text.utf8), name: "smp.trace")
        var engine = ReplayEngine(backend: IntervalReplayBackend())
        let report = try engine.replay(reader)
        #expect(report.violations == [])
        #expect(report.reuseRaceUnmaps == 1)
        let domain = try #require(report.domains.first { $0.id.description == "g2:d1" })
        #expect(domain.liveMappingCount == 1)
        #expect(engine.backend.translate(domain.id, iova: IOVA(0xffff_f000)) == PhysAddr(0x2000_0000))
    }

    @Test func scatterGatherMapsAreCoveredByOneUnmapAnnouncedBeforeIt() throws {
        var trace = booted()
        trace.add(TraceBuilder.map(0xfffd_c000, 0x705_d000, 4096))
        trace.add(TraceBuilder.map(0xfffd_d000, 0x70d_8000, 4096))
        trace.add(TraceBuilder.mapSG(nvme, dma: [0xfffd_c000], lengths: [0x2000], phys: [0x705_d000, 0x70d_8000]))
        trace.add(TraceBuilder.unmapSG(nvme, phys: [0x705_d000, 0x70d_8000]), flags: "d.h1.")
        trace.add(TraceBuilder.unmap(0xfffd_c000, 8192), flags: "d.h1.")
        let report = try TraceTestFiles.replay(trace.text)
        #expect(report.violations == [])
        #expect(report.domains[0].mapCount == 2 && report.domains[0].unmapCount == 1 && report.domains[0].liveMappingCount == 0)
    }

    @Test func coherentAllocAndFreeAreAttributed() throws {
        var trace = booted()
        trace.add(TraceBuilder.map(0xffff_e000, 0x177c_2000, 8192), task: "insmod", pid: 139)
        trace.add(TraceBuilder.alloc(nvme, 0xffff_e000, 6726), task: "insmod", pid: 139)
        trace.add(TraceBuilder.free(nvme, 0, 0), task: "init", pid: 1)
        trace.add(TraceBuilder.free(nvme, 0xffff_e000, 6726), task: "init", pid: 1)
        trace.add(TraceBuilder.unmap(0xffff_e000, 8192), task: "init", pid: 1)
        let report = try TraceTestFiles.replay(trace.text)
        #expect(report.violations == [])
        #expect(report.domains[0].liveMappingCount == 0)
    }

    @Test func overlappingMapIsAViolation() throws {
        var trace = booted()
        trace.add(TraceBuilder.map(0xffff_e000, 0x1000_0000, 8192))
        trace.add(TraceBuilder.mapPage(nvme, 0xffff_e000, 8192, 0x1000_0000))
        trace.add(TraceBuilder.map(0xffff_f000, 0x2000_0000, 4096))
        let overlapLine = trace.lastLine
        trace.add(TraceBuilder.mapPage(nvme, 0xffff_f000, 4096, 0x2000_0000))
        let report = try TraceTestFiles.replay(trace.text)
        #expect(report.violations == [
            ReplayViolation(line: overlapLine, what: "map iova=0xfffff000 size=4096 in g2:d1 overlaps a live mapping at 0xfffff000")
        ])
    }

    @Test func unmapOfAHoleAndWrongUnmappedSizeAreViolations() throws {
        var trace = booted()
        trace.add(TraceBuilder.map(0xffff_f000, 0x1000_0000, 4096))
        trace.add(TraceBuilder.mapPage(nvme, 0xffff_f000, 4096, 0x1000_0000))
        trace.add(TraceBuilder.unmap(0xffff_e000, 8192, unmapped: 8192), flags: "d.h1.")
        let unmapLine = trace.lastLine
        trace.add(TraceBuilder.unmapPage(nvme, 0xffff_f000, 4096), flags: "d.h1.")
        let report = try TraceTestFiles.replay(trace.text)
        #expect(report.violations.map(\.line) == [unmapLine, unmapLine])
        #expect(report.violations[0].what.contains("covers only 4096 mapped bytes"))
        #expect(report.violations[1].what.contains("unmapped_size=8192 but 4096 bytes were mapped"))
    }

    @Test func dmaAddressesThatDisagreeWithTheirMapAreViolations() throws {
        var trace = booted()
        trace.add(TraceBuilder.map(0xffff_f000, 0x1000_0000, 4096))
        trace.add(TraceBuilder.mapPage(nvme, 0xffff_f800, 4096, 0x1000_0800))
        let outside = trace.lastLine
        trace.add(TraceBuilder.map(0xffff_e000, 0x2000_0000, 4096))
        trace.add(TraceBuilder.mapPage(nvme, 0xffff_e000, 4096, 0x3000_0000))
        let wrongPhys = trace.lastLine
        let report = try TraceTestFiles.replay(trace.text)
        #expect(report.violations.map(\.line) == [outside, wrongPhys])
        #expect(report.violations[0].what.contains("is not inside the IOVA range mapped just before it"))
        #expect(report.violations[1].what.contains("phys_addr=0x30000000"))
    }

    @Test func unattributedMapAndUnmapAreViolations() throws {
        var trace = booted()
        trace.add(TraceBuilder.map(0xffff_f000, 0x1000_0000, 4096))
        let mapLine = trace.lastLine
        trace.add(TraceBuilder.unmap(0xffff_0000, 4096), task: "other", pid: 5)
        let unmapLine = trace.lastLine
        let report = try TraceTestFiles.replay(trace.text)
        #expect(report.violations.map(\.line) == [mapLine, unmapLine])
    }

    @Test func aMissingDMAEventLeavesAStrayMapThatIsAViolation() throws {
        var trace = booted()
        trace.add(TraceBuilder.map(0xffff_b000, 0x3e9d_1000, 4096))
        let strayLine = trace.lastLine
        // (its dma_map_page is missing)
        trace.add(TraceBuilder.map(0xffff_d000, 0x6c8_5000, 4096))
        trace.add(TraceBuilder.mapPage(nvme, 0xffff_d000, 4096, 0x6c8_5000))
        let report = try TraceTestFiles.replay(trace.text)
        #expect(report.violations.map(\.line) == [strayLine])
        #expect(report.violations.first?.what.contains("outside its IOVA range") == true)
    }

    @Test func removeAndRescanRecreatesTheGroupWithAFreshDomain() throws {
        var trace = booted()
        trace.add(TraceBuilder.map(0xffff_f000, 0x1000_0000, 4096))
        trace.add(TraceBuilder.mapPage(nvme, 0xffff_f000, 4096, 0x1000_0000))
        trace.add(TraceBuilder.removeFromGroup(2, nvme), task: "init", pid: 1)
        trace.add(TraceBuilder.addToGroup(2, nvme), task: "init", pid: 1)
        trace.add(TraceBuilder.attach(nvme), task: "init", pid: 1)
        // The same IOVA again: fine in the fresh domain.
        trace.add(TraceBuilder.map(0xffff_f000, 0x2000_0000, 4096))
        trace.add(TraceBuilder.mapPage(nvme, 0xffff_f000, 4096, 0x2000_0000))
        let report = try TraceTestFiles.replay(trace.text)
        #expect(report.violations == [])
        #expect(report.groups.map(\.id.description) == ["group 2", "group 4", "group 2#2"])
        #expect(report.groups[0].released)
        let nvmeDomains = report.domains.filter { $0.id.groupID == 2 }
        #expect(nvmeDomains.map(\.id.description) == ["g2:d1", "g2:d2"])
        #expect(nvmeDomains[0].released && nvmeDomains[0].liveMappingCount == 1)
    }

    @Test func reattachStartsANewDomainAndPassThroughNeedsNoMaps() throws {
        var trace = booted()
        trace.add(TraceBuilder.attach(nic), task: "sh", pid: 400)  // -> identity
        trace.add(TraceBuilder.mapPage(nic, 0x1234_5000, 64, 0x1234_5000), task: "ping", pid: 300)
        trace.add(TraceBuilder.unmapPage(nic, 0x1234_5000, 64), task: "ping", pid: 300)
        trace.add(TraceBuilder.attach(nic), task: "sh", pid: 400)  // -> DMA again
        trace.add(TraceBuilder.mapPage(nic, 0x1234_5000, 64, 0x1234_5000), task: "ping", pid: 300)
        trace.add(TraceBuilder.map(0xffff_f000, 0x1000_0000, 4096), task: "ping", pid: 300)
        trace.add(TraceBuilder.mapPage(nic, 0xffff_f000, 64, 0x1000_0000), task: "ping", pid: 300)
        let report = try TraceTestFiles.replay(trace.text)
        // The first DMA of the third domain had no map: unknown then, so it is taken as
        // pass-through; the map that follows contradicts that.
        #expect(report.violations.map(\.line) == [trace.lastLine])
        #expect(report.domains.filter { $0.id.groupID == 4 }.map(\.kind) == [.unknown, .passthrough, .translated])
    }

    @Test func directMappingsBelongToTheDomainBeingAttached() throws {
        var trace = TraceBuilder()
        trace.add(TraceBuilder.addToGroup(6, "0000:00:1f.0"), task: "init", pid: 1)
        trace.add(TraceBuilder.addToGroup(6, "0000:00:1f.2"), task: "init", pid: 1)
        trace.add(TraceBuilder.map(0, 0, 16 << 20), task: "init", pid: 1)
        trace.add(TraceBuilder.attach("0000:00:1f.0"), task: "init", pid: 1)
        trace.add(TraceBuilder.attach("0000:00:1f.2"), task: "init", pid: 1)
        let report = try TraceTestFiles.replay(trace.text)
        #expect(report.violations == [])
        #expect(report.domains.count == 1)
        #expect(report.domains[0].devices == ["0000:00:1f.0", "0000:00:1f.2"])
        #expect(report.domains[0].directMapCount == 1)
    }
}

@Suite struct IntervalReplayBackendTests {
    let domain = ReplayDomainID(index: 0, groupID: 1, generation: 1)

    @Test func unmapReturnsMappedBytesAndSplits() throws {
        var backend = IntervalReplayBackend()
        backend.domainAllocated(domain, for: ReplayGroupID(groupID: 1, incarnation: 1))
        try backend.map(domain, iova: IOVA(0x1000), paddr: PhysAddr(0x10_0000), length: 0x3000)
        try backend.map(domain, iova: IOVA(0x8000), paddr: PhysAddr(0x20_0000), length: 0x1000)
        #expect(backend.translate(domain, iova: IOVA(0x2010)) == PhysAddr(0x10_1010))
        #expect(backend.unmap(domain, iova: IOVA(0x2000), length: 0x1000) == 0x1000)
        #expect(backend.splitCount == 1)
        #expect(backend.translate(domain, iova: IOVA(0x3000)) == PhysAddr(0x10_2000))
        #expect(backend.translate(domain, iova: IOVA(0x2000)) == nil)
        #expect(backend.unmap(domain, iova: IOVA(0), length: 0x10000) == 0x3000)
        #expect(backend.liveMappings(in: domain).count == 0)
    }

    @Test func overlappingMapThrowsAlreadyMappedAndMapsNothing() throws {
        var backend = IntervalReplayBackend()
        try backend.map(domain, iova: IOVA(0x4000), paddr: PhysAddr(0), length: 0x2000)
        #expect(throws: IOMMUError.self) {
            try backend.map(domain, iova: IOVA(0x3000), paddr: PhysAddr(0), length: 0x2000)
        }
        #expect(backend.liveMappings(in: domain).count == 1)
        #expect(backend.liveMappings(in: domain).bytes == 0x2000)
    }

    @Test(arguments: TestSupport.propertySeeds)
    func agreesWithAPageByPageModel(seed: UInt64) throws {
        var random = SplitMix64(seed: seed)
        var backend = IntervalReplayBackend()
        var pages: [UInt64: UInt64] = [:]  // page -> phys page
        for _ in 0..<2000 {
            let first = random.next() % 64
            let count = 1 + random.next() % 6
            if random.next() % 2 == 0 {
                let phys = (random.next() % 1000) << 12
                let overlaps = (first..<(first + count)).contains { pages[$0] != nil }
                do throws(IOMMUError) {
                    try backend.map(domain, iova: IOVA(first << 12), paddr: PhysAddr(phys), length: count << 12)
                    #expect(!overlaps)
                    for page in first..<(first + count) { pages[page] = phys + ((page - first) << 12) }
                } catch {
                    #expect(overlaps && error.reason == .alreadyMapped)
                }
            } else {
                let expected = UInt64((first..<(first + count)).filter { pages[$0] != nil }.count) << 12
                #expect(backend.unmap(domain, iova: IOVA(first << 12), length: count << 12) == expected)
                for page in first..<(first + count) { pages[page] = nil }
            }
            let probe = random.next() % 72
            #expect(backend.translate(domain, iova: IOVA(probe << 12 | 0x123)) == pages[probe].map { PhysAddr($0 | 0x123) })
        }
        #expect(backend.liveMappings(in: domain).bytes == UInt64(pages.count) << 12)
        let listed = backend.mappings(in: domain)
        #expect(zip(listed, listed.dropFirst()).allSatisfy { $0.last < $1.first })
    }
}
