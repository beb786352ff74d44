@testable import IOMMUCLI
import IOMMUScenario
import Testing

@Suite("iommu demo")
struct DemoCommandTests {
    @Test func demoNarratesMapWalkSplitAndFaults() throws {
        var out = ""
        try DemoCommand.narrate(into: &out)
        #expect(out.contains("L3 [1] at 0x80003008: 0x0000000090001f47  page 4K pa 0x90001000"))
        #expect(out.contains("write 0x10001234 -> 0x90001234 (L3, 4K leaf"))
        #expect(out.contains("iommu_unmap(0x40003000, 4K) = 0x1000 bytes"))
        #expect(out.contains("read 0x40003000: translation fault at level 3"))
        #expect(out.contains("write 0x40005000: permission fault at level 3"))
        #expect(out.hasSuffix("frames in use: 0.\n"))
    }
}

@Suite("iommu demo (server tour)")
struct DemoTourTests {
    @Test func tourPassesAndShowsEveryLayer() throws {
        var out = ""
        let passed = try DemoCommand.tour(into: &out)
        #expect(passed, "\(out)")
        #expect(out.contains("sas0: deferred -> probed"))
        #expect(out.contains("expect nic0, nic1 in one group"))
        #expect(out.contains("expect nic0 domain DMA-FQ"))
        #expect(out.contains("expect tb0 domain DMA"))
        #expect(out.contains("expect data 68 65 6c 6c 6f"))
        #expect(out.contains("expect warning iovaFreeInsideAllocation"))
        #expect(out.contains("vgpu notified 1 time(s)"))
        #expect(out.contains("expect warning dmaUnmapWrongSize"))
        #expect(out.contains("expect warning dmaStaleTLBAccess"))
        #expect(out.contains("through a stale IOTLB entry; mapping: device#10 page 0xfffff000 size 4096 DMA_TO_DEVICE"))
        #expect(out.contains("fault: tb0: translation fault on read at 0xfffff000"))
        #expect(out.contains("L3 table"))
    }

    @Test func builtInServerIsExamplesServer() throws {
        guard case .success(let bytes) = readFileBytes(repositoryRoot + "/examples/server.yaml") else {
            Issue.record("cannot read examples/server.yaml"); return
        }
        var text = String(decoding: bytes, as: UTF8.self)
        if text.hasSuffix("\n") { text.removeLast() }
        #expect(text == BuiltInScenarios.server)
    }
}
