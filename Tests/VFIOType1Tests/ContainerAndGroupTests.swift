import IOMMUBase
import IOMMUCore
import IOMMUTestSupport
import PhysicalMemory
import Testing
@testable import VFIOType1

/// Containers and groups (container.c / group.c) and CHECK_EXTENSION (§8.1).
@Suite("VFIO containers and groups")
struct ContainerAndGroupTests {
    @Test func viabilityFollowsDriverBindingAndSetContainerNeedsIt() throws {
        let h = try VFIOHarness()
        let id = try h.addGroup("dev0")
        let device = h.core.device(named: "dev0")!
        let g = try h.vfio.openGroup(id: id)
        #expect(g.status == (true, false), "unbound: viable")
        try h.core.bindDriver(device, name: "e1000e")
        #expect(g.status.viable == false)
        let c = h.vfio.openContainer(process: h.host)
        #expect(errno { try g.setContainer(c) } == .notPermitted)
        #expect(g.container == nil)
        h.core.unbindDriver(device)
        try h.core.bindDriver(device, name: "vfio-pci", driverManagedDMA: true)
        #expect(g.status.viable)
        try g.setContainer(c)
        #expect(g.status == (true, true))
        // Ownership claimed: the group sits on its blocking domain until SET_IOMMU.
        let info = h.core.groupInfo(id: id)!
        #expect(info.owner != nil)
        #expect(info.domain === info.blockingDomain)
        try c.setIOMMU(.type1v2)
        #expect(h.core.groupInfo(id: id)!.domain === c.domains[0])
        // Release: back to the default domain, ownership released.
        try g.unsetContainer()
        let after = h.core.groupInfo(id: id)!
        #expect(after.owner == nil)
        #expect(after.domain === after.defaultDomain)
        #expect(c.iommuType == nil, "the last group leaving releases the backend")
        #expect(errno { try g.unsetContainer() } == .invalidArgument)
    }

    @Test func openingAGroupTwiceIsEBUSYAndAnUnknownGroupENOENT() throws {
        let h = try VFIOHarness()
        let id = try h.addGroup("dev0")
        let g = try h.vfio.openGroup(id: id)
        #expect(errno { _ = try h.vfio.openGroup(id: id) } == .busy)
        #expect(errno { _ = try h.vfio.openGroup(id: 42) } == .notFound)
        g.close()
        _ = try h.vfio.openGroup(id: id)
    }

    @Test func setIOMMURules() throws {
        let h = try VFIOHarness()
        let c = h.vfio.openContainer(process: h.host)
        #expect(errno { try c.setIOMMU(VFIOUAPI.type1v2IOMMU) } == .invalidArgument, "no group")
        let g = try h.vfio.openGroup(id: h.addGroup("dev0"))
        try g.setContainer(c)
        #expect(errno { try c.setIOMMU(VFIOUAPI.spaprTCEIOMMU) } == .noSuchDevice)
        #expect(c.iommuType == nil)
        try c.setIOMMU(VFIOUAPI.type1NestingIOMMU)
        #expect(c.iommuType == .type1v2, "the old nesting type is treated as v2")
        #expect(errno { try c.setIOMMU(VFIOUAPI.type1IOMMU) } == .invalidArgument, "already set")
    }

    @Test func setIOMMUFailureDetachesTheGroupsAttachedBeforeIt() throws {
        let h = try VFIOHarness()
        let c = h.vfio.openContainer(process: h.host)
        let good = try h.vfio.openGroup(id: h.addGroup("good"))
        let badID = try h.addGroup("bad")
        let bad = try h.vfio.openGroup(id: badID)
        try good.setContainer(c)
        try bad.setContainer(c)
        h.vfio.setInterruptIsolation(ofGroup: badID, isolated: false)
        #expect(errno { try c.setIOMMU(.type1v2) } == .notPermitted)
        #expect(c.iommuType == nil)
        #expect(c.domains.isEmpty)
        #expect(c.validIOVARanges.isEmpty)
        #expect(c.pageSizeBitmap == ~UInt64(0xFFF))
        let goodInfo = h.core.groupInfo(id: good.iommuGroupID!)!
        #expect(goodInfo.domain === goodInfo.blockingDomain)
        // Fixing the cause lets SET_IOMMU succeed.
        h.vfio.setInterruptIsolation(ofGroup: badID, isolated: true)
        try c.setIOMMU(.type1v2)
        #expect(c.domains.count == 1)
    }

    @Test func checkExtensionAnswers() throws {
        let h = try VFIOHarness()
        let c = h.vfio.openContainer(process: h.host)
        for (ext, answer): (UInt64, Int32) in [(1, 1), (3, 1), (9, 1), (10, 0), (4, 0), (2, 0), (5, 0), (6, 1), (7, 0), (8, 0), (11, 0)] {
            #expect(c.checkExtension(ext) == answer, "extension \(ext)")
        }
        let g = try h.vfio.openGroup(id: h.addGroup("dev0"))
        try g.setContainer(c)
        try c.setIOMMU(.type1)
        #expect(c.checkExtension(VFIOUAPI.updateVaddr) == 1)
        #expect(c.checkExtension(VFIOUAPI.dmaCCIOMMU) == 0)
        h.driver.configure { $0.capabilities = [.enforceCacheCoherency] }
        #expect(c.checkExtension(VFIOUAPI.dmaCCIOMMU) == 1)
    }

    @Test func emulatedGroupsHaveNoDomainAndTheLastOneLeavingRemovesTheMappings() throws {
        let h = try VFIOHarness()
        let c = h.vfio.openContainer(process: h.host)
        let g = h.vfio.openEmulatedGroup()
        #expect(g.status == (true, false))
        try g.setContainer(c)
        try c.setIOMMU(.type1v2)
        #expect(c.domains.isEmpty)
        #expect(try c.info().iovaRanges.isEmpty)
        #expect(try c.info().pageSizes == ~UInt64(0xFFF))
        let va = try h.buffer(0x2000)
        try c.mapDMA(iova: IOVA(0x1000), vaddr: va, length: 0x2000, read: true, write: true)
        // An IOMMU-backed group joining replays (pins and maps) the mapping.
        let iommuGroup = try h.vfio.openGroup(id: h.addGroup("dev0"))
        try iommuGroup.setContainer(c)
        #expect(c.mappings[0].iommuMapped)
        #expect(h.host.lockedPages == 2)
        #expect(c.domains[0].iovaToPhys(IOVA(0x1000)) != nil)
        try iommuGroup.unsetContainer()
        #expect(c.mappings.count == 1)
        #expect(h.host.lockedPages == 0)
        try g.unsetContainer()
        #expect(c.iommuType == nil)
        #expect(c.mappings.isEmpty)
    }

    @Test func replayFailureLeavesTheMappingsAsBefore() throws {
        let h = try VFIOHarness()
        let c = h.vfio.openContainer(process: h.host)
        try h.vfio.openEmulatedGroup().setContainer(c)
        try c.setIOMMU(.type1v2)
        let va = try h.buffer(0x2000)
        try c.mapDMA(iova: IOVA(0x1000), vaddr: va, length: 0x1000, read: true, write: true)
        try c.mapDMA(iova: IOVA(0x10000), vaddr: VirtAddr(va.rawValue + 0x1000), length: 0x1000, read: true, write: true)
        let before = Snapshot(c, h.host)
        let g = try h.vfio.openGroup(id: h.addGroup("dev0"))
        h.driver.failNth.failOn(2)
        #expect(errno { try g.setContainer(c) } == .noMemory)
        #expect(Snapshot(c, h.host) == before)
        #expect(c.domains.isEmpty)
        #expect(h.host.totalPins == 0)
    }

    @Test func closingTheContainerReleasesEverything() throws {
        let h = try VFIOHarness()
        let (c, groups) = try h.container(groups: ["a", "b"])
        let va = try h.buffer(0x4000)
        try c.mapDMA(iova: IOVA(0), vaddr: va, length: 0x4000, read: true, write: true)
        c.close()
        #expect(h.host.lockedPages == 0)
        #expect(h.host.totalPins == 0)
        #expect(groups.allSatisfy { $0.container == nil })
        #expect(h.vfio.container(fd: c.fd) == nil)
        for g in groups {
            let info = h.core.groupInfo(id: g.iommuGroupID!)!
            #expect(info.domain === info.defaultDomain)
        }
    }
}
