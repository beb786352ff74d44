import IOMMUBase
import IOMMUCore
import IOPageTable
import PhysicalMemory
import Testing
@testable import VirtioIOMMU

@Suite struct LimitsAndConsumerTests {
    @Test func mappingsPerDomainLimitAnswersNOMEM() throws {
        let h = try Harness(VirtioIOMMUConfiguration(limits: VirtioIOMMULimits(maxMappingsPerDomain: 2)))
        h.attach(1, 1)
        h.map(1, 0x1000, 0x1FFF, 0x8000_0000)
        h.map(1, 0x2000, 0x2FFF, 0x8000_0000)
        h.expectFailure(.noMemory, Req.map(domain: 1, first: 0x3000, last: 0x3FFF, phys: 0x8000_0000, flags: R))
        h.unmap(1, 0x1000, 0x1FFF)
        h.expectOK(h.map(1, 0x3000, 0x3FFF, 0x8000_0000))
    }

    @Test func domainLimitAnswersNOMEMButAMoveOfASoleEndpointStillWorks() throws {
        let h = try Harness(VirtioIOMMUConfiguration(limits: VirtioIOMMULimits(maxDomains: 2)))
        h.attach(1, 1)
        h.attach(2, 2)
        h.expectFailure(.noMemory, Req.attach(domain: 3, endpoint: 3))
        h.expectOK(h.attach(3, 1))  // domain 1 dies as domain 3 is born
        h.expectOK(h.attach(3, 3))  // joining an existing domain needs no new one
    }

    @Test func endpointLimitRefusesAddEndpointWithENOMEM() throws {
        let h = try Harness(VirtioIOMMUConfiguration(limits: VirtioIOMMULimits(maxEndpoints: 3)))
        #expect(throws: IOMMUError(.outOfMemory, address: 4)) { try h.device.addEndpoint(4) }
        #expect(throws: IOMMUError(.alreadyExists, address: 1)) { try h.device.addEndpoint(1) }
    }

    @Test func pageTableMemoryExhaustionAnswersNOMEMWithNoStateChange() throws {
        let memory = try PhysicalMemory(addressBits: 48, ramBase: PhysAddr(0x8000_0000), ramSize: 1 << 30)
        let frames = FrameAllocator(memory: memory, region: PhysRange(start: PhysAddr(0xA000_0000), length: 1 << 28)!, limitBytes: 4 * 4096)
        let device = try VirtioIOMMUDevice(memory: memory, frames: frames)
        try device.addEndpoint(1)
        device.negotiate(driverFeatures: .linuxDriver)
        #expect(device.handleRequest(readable: Req.attach(domain: 1, endpoint: 1), writableLength: 4).written == [0, 0, 0, 0])
        // Root + 3 levels fit; a map far away needs new tables that are not there.
        _ = device.handleRequest(readable: Req.map(domain: 1, first: 0x1000, last: 0x1FFF, phys: 0x8000_0000, flags: R), writableLength: 4)
        let before = device.mappings(ofDomain: 1)
        let reply = device.handleRequest(readable: Req.map(domain: 1, first: 0x80_0000_0000, last: 0x80_0000_0FFF, phys: 0x8000_0000, flags: R), writableLength: 4)
        #expect(reply.written == [8, 0, 0, 0])
        #expect(device.mappings(ofDomain: 1) == before)
        #expect(device.mappingConsistencyViolations() == [])
    }

    @Test func consumerMapFailureWithENOMEMAnswersNOMEM() throws {
        let h = try Harness()
        h.attach(1, 1)
        let consumer = RecordingConsumer()
        try h.device.addMappingConsumer(consumer)
        consumer.failMap = IOMMUError(.outOfMemory)
        h.expectFailure(.noMemory, Req.map(domain: 1, first: 0x1000, last: 0x1FFF, phys: 0x8000_0000, flags: R))
        #expect(h.dmaRead(1, 0x1000, 1).outcome.fault != nil)  // the page table was rolled back too
    }

    @Test func consumersSeeMappingsOfADomainThatDiesAsUnmaps() throws {
        let h = try Harness()
        let consumer = RecordingConsumer()
        try h.device.addMappingConsumer(consumer)
        h.attach(1, 1)
        h.map(1, 0x1000, 0x1FFF, 0x8000_0000)
        h.map(1, 0x4000, 0x4FFF, 0x8000_0000)
        #expect(consumer.live.count == 2)
        h.attach(2, 1)  // moves the sole endpoint: domain 1 dies
        #expect(consumer.live.isEmpty)
        h.map(2, 0x1000, 0x1FFF, 0x8000_0000)
        h.device.reset()
        #expect(consumer.live.isEmpty)
    }

    @Test func consumerFailureDuringAnAttachThatKillsADomainFailsTheAttachWithNoStateChange() throws {
        let h = try Harness()
        let consumer = RecordingConsumer()
        try h.device.addMappingConsumer(consumer)
        h.attach(1, 1)
        h.map(1, 0x1000, 0x1FFF, 0x8000_0000)
        consumer.failUnmap = IOMMUError(.busy)
        h.expectFailure(.deviceError, Req.attach(domain: 2, endpoint: 1))
        h.expectFailure(.deviceError, Req.attach(domain: 1, endpoint: 1))
        #expect(h.device.core.liveDomainCount == h.device.core.liveDomainCount)
        #expect(consumer.live.count == 1)
    }

    @Test func perDomainTableFormatAndGranule() throws {
        let h = try Harness(VirtioIOMMUConfiguration(pageSizeMask: 0x1_0000), endpoints: [1])
        try h.device.addEndpoint(2, VirtioEndpointConfiguration(table: VirtioTableSpec(kind: .armLPAEStage2, granule: .size64K)))
        try h.device.addEndpoint(3, VirtioEndpointConfiguration(table: VirtioTableSpec(kind: .armLPAEStage1, granule: .size16K)))
        try h.device.addEndpoint(4, VirtioEndpointConfiguration(table: VirtioTableSpec(kind: .appleDART, granule: .size16K)))
        for (domain, endpoint) in [(1, 1), (2, 2), (3, 3), (4, 4)] as [(UInt32, UInt32)] {
            h.expectOK(h.attach(domain, endpoint))
            h.expectOK(h.map(domain, 0x10_0000, 0x12_FFFF, 0x8010_0000, R))
            #expect(h.device.translate(endpoint: endpoint, iova: 0x12_0123, write: false) == .translated(PhysAddr(0x8012_0123)))
            #expect(h.dmaWrite(endpoint, 0x10_0000, [1]).fault?.reason == 2)
        }
        // A DART table covers 36 input bits: a MAP above it is RANGE, not an alias.
        h.expectFailure(.range, Req.map(domain: 4, first: 1 << 36, last: (1 << 36) + 0xFFFF, phys: 0x8000_0000, flags: R))
        #expect(h.device.translate(endpoint: 4, iova: (1 << 36) + 0x10_0000, write: false) != .translated(PhysAddr(0x8010_0000)))
        #expect(h.device.snapshot.domains.map { $0.table?.description } == ["arm-lpae-s2/4K", "arm-lpae-s2/64K", "arm-lpae-s1/16K", "apple-dart/16K"])
        #expect(h.device.mappingConsistencyViolations() == [])
        // A table granule larger than the device granule would make guest MAPs unrepresentable.
        let small = try Harness(endpoints: [])
        #expect(throws: IOMMUError.self) {
            try small.device.addEndpoint(1, VirtioEndpointConfiguration(table: VirtioTableSpec(kind: .armLPAEStage1, granule: .size64K)))
        }
    }

    @Test func hostUsableRangesBecomeReservedRegionsPerEndpoint() throws {
        let h = try Harness(VirtioIOMMUConfiguration(msiWindow: nil), endpoints: [1])
        try h.device.addEndpoint(2, VirtioEndpointConfiguration(hostUsableIOVARanges: [0x1000...0xFEDF_FFFF, 0x1_0000_0000...0xFF_FFFF_FFFF]))
        #expect(h.device.reservedRegions(ofEndpoint: 1) == [])
        #expect(h.device.reservedRegions(ofEndpoint: 2) == [
            VirtioReservedRegion(subtype: 0, first: 0, last: 0xFFF),
            VirtioReservedRegion(subtype: 0, first: 0xFEE0_0000, last: 0xFFFF_FFFF),
            VirtioReservedRegion(subtype: 0, first: 0x100_0000_0000, last: (1 << 48) - 1),
        ])
        h.attach(2, 2)
        h.expectFailure(.invalid, Req.map(domain: 2, first: 0, last: 0xFFF, phys: 0x8000_0000, flags: R))
        h.expectOK(h.map(2, 0x1000, 0x1FFF, 0x8000_0000, R))
    }

    @Test func debugDescriptionShowsDomainsEndpointsMappingsAndQueues() throws {
        let h = try Harness()
        h.attach(1, 1)
        h.map(1, 0x1000, 0x1FFF, 0x8000_0000, R)
        h.attach(2, 2, flags: VirtioIOMMUWire.attachFlagBypass)
        h.device.postEventBuffer()
        let text = h.device.debugDescription
        #expect(text.contains("domain 1: arm-lpae-s2/4K"))
        #expect(text.contains("[0x1000, 0x1fff] -> 0x80000000 r-"))
        #expect(text.contains("domain 2: bypass"))
        #expect(text.contains("endpoint 3 (0000:00:00.3, device#3): unattached, blocked"))
        #expect(text.contains("eventq: 1 buffers available"))
        #expect(text.contains("requests: OK 3"))
    }
}
