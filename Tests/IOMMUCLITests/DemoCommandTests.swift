@testable import IOMMUCLI
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
