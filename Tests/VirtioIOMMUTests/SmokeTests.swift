import IOMMUBase
import Testing
@testable import VirtioIOMMU

@Suite struct SmokeTests {
    @Test func attachMapDMAUnmap() throws {
        let h = try Harness()
        h.expectOK(h.attach(7, 1))
        h.expectOK(h.map(7, 0x10_0000, 0x10_0FFF, 0x8000_1000))
        #expect(h.dmaWrite(1, 0x10_0010, [1, 2, 3]) == .completed)
        #expect(try h.memory.readBytes(PhysAddr(0x8000_1010), count: 3) == [1, 2, 3])
        #expect(h.device.mappingConsistencyViolations() == [])
        h.expectOK(h.unmap(7, 0x10_0000, 0x10_0FFF))
        #expect(h.dmaWrite(1, 0x10_0010, [1]).fault?.reason == 2)
    }
}
