import IOMMUBase
import IOMMUTestSupport
import Testing
@testable import VirtioIOMMU

/// `VirtioIOMMUDevice.checkConsistency()`: mapping records vs. tables vs. the walker.
@Suite("Virtio consistency checker")
struct VirtioConsistencyCheckTests {
    @Test(arguments: TestSupport.propertySeeds)
    func randomRequestsStayConsistent(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let h = try Harness()
        for step in 0..<200 {
            let domain = UInt32(rng.next() % 3 + 1)
            let first = (rng.next() % 256) << 12
            let last = first + ((rng.next() % 64 + 1) << 12) - 1
            switch rng.next() % 6 {
            case 0: h.attach(domain, UInt32(rng.next() % 3 + 1))
            case 1: h.detach(domain, UInt32(rng.next() % 3 + 1))
            case 2, 3: h.map(domain, first, last, 0x8000_0000 + ((rng.next() % 1024) << 12), UInt32(rng.next() % 4))
            default: h.unmap(domain, first, last)
            }
            #expect(h.device.checkConsistency() == [], "seed \(seed) step \(step)")
        }
        h.device.reset()
        #expect(h.device.checkConsistency() == [])
    }

    @Test func aTableThatLostAPageIsReported() throws {
        let h = try Harness()
        h.expectOK(h.attach(7, 1))
        h.expectOK(h.map(7, 0x10_0000, 0x10_3FFF, 0x8000_1000))
        #expect(h.device.checkConsistency() == [])
        h.device.state.withLock { s in _ = s.domains[7]!.ops!.table.unmap(iova: IOVA(0x10_0000), length: 0x1000) }
        let problems = h.device.checkConsistency()
        #expect(problems.contains { $0.component == "virtio-iommu" && $0.message.contains("missing") })
    }
}
