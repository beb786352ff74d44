import IOMMUBase
import IOMMUCore
import IOMMUTestSupport
import PhysicalMemory
import Testing
@testable import VFIOType1

/// fail_nth walks: fail the n-th pin / domain map for n = 1, 2, … until the operation succeeds,
/// and check after every failure that nothing leaked and nothing changed.
@Suite("VFIO fail_nth walks")
struct FailNthTests {
    /// A range made of several runs: anonymous pages, a 2 MiB huge page, device memory.
    func mixedRange(_ h: VFIOHarness) throws -> VirtAddr {
        let base = VirtAddr(0x10_0000_0000)
        try h.host.map(length: 0x20_0000, backing: .hugePages2M, at: base)
        try h.host.map(length: 0x4000, backing: .anonymous, at: VirtAddr(base.rawValue + 0x20_0000))
        try h.host.map(length: 0x4000, backing: .device(PhysAddr(0x4000_0000)), at: VirtAddr(base.rawValue + 0x20_4000))
        return base
    }

    @Test func mapWalksThroughPinAndDomainFailures() throws {
        for injector in ["pin", "domain"] {
            let h = try VFIOHarness()
            let (c, _) = try h.container(groups: ["a"])
            let va = try mixedRange(h)
            let length: UInt64 = 0x20_8000
            let before = Snapshot(c, h.host)
            var n = 1
            while true {
                if injector == "pin" { h.host.pinFailNth.failOn(n) } else { h.driver.failNth.failOn(n) }
                let result = errno { try c.mapDMA(iova: IOVA(0x4000_0000), vaddr: va, length: length, read: true, write: true) }
                if result == nil { break }
                #expect(Snapshot(c, h.host) == before, "\(injector) n=\(n)")
                #expect(h.host.totalPins == 0, "\(injector) n=\(n)")
                #expect(c.domains[0].fake.mappings.isEmpty, "\(injector) n=\(n)")
                n += 1
                if n > 200 { Issue.record("no success"); break }
            }
            h.host.pinFailNth.disarm()
            h.driver.failNth.disarm()
            #expect(n > 1)
            #expect(h.host.lockedPages == (length - 0x4000) >> 12, "device memory is not counted")
            try c.unmapDMA(iova: IOVA(0), length: 0, all: true)
            #expect(h.host.lockedPages == 0)
            #expect(h.host.totalPins == 0)
        }
    }

    @Test func attachReplayWalksThroughDomainFailures() throws {
        let h = try VFIOHarness()
        let c = h.vfio.openContainer(process: h.host)
        try h.vfio.openEmulatedGroup().setContainer(c)
        try c.setIOMMU(.type1v2)
        let va = try mixedRange(h)
        try c.mapDMA(iova: IOVA(0x4000_0000), vaddr: va, length: 0x20_8000, read: true, write: true)
        let before = Snapshot(c, h.host)
        let g = try h.vfio.openGroup(id: h.addGroup("late"))
        var n = 1
        while true {
            h.driver.failNth.failOn(n)
            let result = errno { try g.setContainer(c) }
            if result == nil { break }
            #expect(Snapshot(c, h.host) == before, "n=\(n)")
            #expect(c.domains.isEmpty)
            #expect(g.container == nil)
            n += 1
            if n > 200 { Issue.record("no success"); break }
        }
        h.driver.failNth.disarm()
        #expect(n > 1)
        #expect(c.mappings[0].iommuMapped)
        try g.unsetContainer()
        #expect(h.host.lockedPages == 0)
        #expect(h.host.totalPins == 0)
    }
}
