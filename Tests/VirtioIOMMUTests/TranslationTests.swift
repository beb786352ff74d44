import IOMMUBase
import IOMMUCore
import IOPageTable
import PhysicalMemory
import Synchronization
import Testing
@testable import VirtioIOMMU

@Suite struct TranslationTests {
    @Test func mapWithAPhysicalAddressBeyondTheTablesOutputSizeIsRANGE() throws {
        let h = try Harness()
        h.attach(1, 1)
        h.expectFailure(.range, Req.map(domain: 1, first: 0x1000, last: 0x1FFF, phys: 1 << 50, flags: R))
        h.expectFailure(.range, Req.map(domain: 1, first: 0x1000, last: 0x2FFF, phys: UInt64.max - 0xFFF, flags: R))
    }

    @Test func probeWithAShortReadablePartIsINVALWithNoProperty() throws {
        let h = try Harness()
        let reply = h.send(Array(Req.probe(endpoint: 1).prefix(8)), writable: 516)
        #expect(reply.status == .invalid)
        #expect(reply.used == 516)
        #expect(reply.written.prefix(512).allSatisfy { $0 == 0 })
    }

    @Test func largeMappingsUseBlocksAndTranslatePiecewiseAcrossThem() throws {
        let h = try Harness()
        h.attach(1, 1)
        // 2 MiB + 4 KiB at a 2 MiB boundary: one block and one page in the table.
        h.expectOK(h.map(1, 0x4000_0000, 0x4020_0FFF, 0x8040_0000))
        h.expectOK(h.map(1, 0x4020_1000, 0x4020_1FFF, 0x9000_0000))
        #expect(h.device.mappingConsistencyViolations() == [])
        let payload = (0..<0x20).map { UInt8($0) }
        #expect(h.dmaWrite(1, 0x401F_FFF0, payload) == .completed)  // block → page
        #expect(try h.memory.readBytes(PhysAddr(0x805F_FFF0), count: 0x20) == payload)
        #expect(h.dmaWrite(1, 0x4020_0FF0, payload) == .completed)  // page → next mapping
        #expect(try h.memory.readBytes(PhysAddr(0x8060_0FF0), count: 0x10) == Array(payload[..<0x10]))
        #expect(try h.memory.readBytes(PhysAddr(0x9000_0000), count: 0x10) == Array(payload[0x10...]))
        h.expectOK(h.unmap(1, 0x4000_0000, 0x4020_0FFF))
        #expect(h.dmaRead(1, 0x4010_0000, 1).outcome.fault?.reason == 2)
        #expect(h.dmaRead(1, 0x4020_1000, 1).outcome == .completed)
        #expect(h.device.mappingConsistencyViolations() == [])
    }

    @Test func theCoreDomainSeesTheMappingsAndTracesThem() throws {
        let memory = try PhysicalMemory(addressBits: 48, ramBase: PhysAddr(0x8000_0000), ramSize: 1 << 30)
        let trace = RecordingTraceSink()
        let core = IOMMUCore(trace: trace)
        let device = try VirtioIOMMUDevice(memory: memory, frames: FrameAllocator(memory: memory), core: core)
        try device.addEndpoint(1)
        device.negotiate(driverFeatures: .linuxDriver)
        _ = device.handleRequest(readable: Req.attach(domain: 1, endpoint: 1), writableLength: 4)
        let domain = core.domain(for: device.device(ofEndpoint: 1)!)!
        _ = device.handleRequest(readable: Req.map(domain: 1, first: 0x1000, last: 0x1FFF, phys: 0x8000_0000, flags: R), writableLength: 4)
        #expect(domain.iovaToPhys(IOVA(0x1008)) == PhysAddr(0x8000_0008))
        _ = device.handleRequest(readable: Req.unmap(domain: 1, first: 0x1000, last: 0x1FFF), writableLength: 4)
        #expect(domain.iovaToPhys(IOVA(0x1008)) == nil)
        let lines = trace.lines
        #expect(lines.contains("attach_device_to_domain: IOMMU: device=0000:00:00.1"))
        #expect(lines.contains("map: IOMMU: iova=0x0000000000001000 - 0x0000000000002000 paddr=0x0000000080000000 size=4096"))
        #expect(lines.contains("unmap: IOMMU: iova=0x0000000000001000 - 0x0000000000002000 size=4096 unmapped_size=4096"))
    }

    @Test func bypassDMAOutsideThePhysicalAddressSpaceOrWrappingFaultsAndMovesNothing() throws {
        let h = try Harness(VirtioIOMMUConfiguration(bootBypass: true))
        #expect(h.dmaWrite(1, 1 << 60, [1]).fault == VirtioFaultEvent(reason: 2, flags: 0x102, endpoint: 1, address: 1 << 60))
        #expect(h.dmaRead(1, .max - 1, 4).outcome.fault?.address == UInt64.max - 1)
        #expect(h.dmaWrite(1, (1 << 48) - 2, [1, 2, 3, 4]).fault != nil)
        #expect(try h.memory.readBytes(PhysAddr((1 << 48) - 2), count: 2) == [0, 0])
    }

    @Test func concurrentDMAAndRequestsStayConsistent() async throws {
        let h = try Harness()
        h.attach(1, 1)
        h.attach(2, 2)
        h.map(2, 0x1000, 0x1FFF, 0x8000_0000)
        let device = h.device
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for i in 0..<300 {
                    let iova = UInt64(0x10_0000 + (i % 16) * 0x1000)
                    _ = device.handleRequest(readable: Req.map(domain: 1, first: iova, last: iova + 0xFFF, phys: 0x8100_0000, flags: R | W), writableLength: 4)
                    _ = device.handleRequest(readable: Req.unmap(domain: 1, first: iova, last: iova + 0xFFF), writableLength: 4)
                }
            }
            group.addTask {
                for _ in 0..<300 {
                    #expect(device.endpointDMAWrite(endpoint: 2, iova: 0x1010, bytes: [1, 2, 3]) == .completed)
                }
            }
        }
        #expect(device.mappingConsistencyViolations() == [])
        #expect(device.mappings(ofDomain: 1) == [])
    }
}
