import IOMMUBase
import IOMMUCore
import IOMMUTestSupport
import PhysicalMemory
import Testing
@testable import VFIOType1

/// §8.8 valid IOVA list: seed thread "check dma map request is within a valid iova range".
@Suite("VFIO valid IOVA ranges")
struct ValidIOVARangeTests {
    static let firmwareReserved = ReservedRegion(start: 0x1000_0000, length: 0x20_0000, prot: [], type: .reserved)

    func ranges(_ c: VFIOContainer) throws -> [[UInt64]] {
        try c.info().iovaRanges.map { [$0.first.rawValue, $0.last.rawValue] }
    }

    @Test func seedARMPlatformSWMSIAndFirmwareRegions() throws {
        let h = try VFIOHarness()
        #expect(h.driver.pageSizes == PageSizeBitmap([.size4K, .size2M, .size1G]))
        let container = h.vfio.openContainer(process: h.host)
        let g0 = try h.vfio.openGroup(id: h.addGroup("dev0", regions: [.armSMMUSoftwareMSI, Self.firmwareReserved]))
        try g0.setContainer(container)
        try container.setIOMMU(.type1v2)
        #expect(try ranges(container) == [
            [0, 0x7FF_FFFF], [0x810_0000, 0xFFF_FFFF], [0x1020_0000, (1 << 48) - 1],
        ])
        let va = try h.buffer(0x20_0000)
        let before = Snapshot(container, h.host)
        // A MAP inside (or straddling) each reserved window fails.
        for iova: UInt64 in [0x800_0000, 0x80F_F000, 0x7FF_F000, 0x1000_0000, 0x101F_F000] {
            #expect(errno { try container.mapDMA(iova: IOVA(iova), vaddr: va, length: 0x2000, read: true, write: true) } == .invalidArgument, "iova \(iova)")
        }
        #expect(Snapshot(container, h.host) == before)
        // Around them: fine.
        try container.mapDMA(iova: IOVA(0x7FF_E000), vaddr: va, length: 0x2000, read: true, write: true)
        try container.mapDMA(iova: IOVA(0x4000_0000), vaddr: VirtAddr(va.rawValue + 0x2000), length: 0x2000, read: true, write: true)

        // A second group whose extra reserved region overlaps the mapping at 0x40000000: refused.
        let clash = ReservedRegion(start: 0x4000_1000, length: 0x1000, prot: [], type: .reserved)
        let g1ID = try h.addGroup("dev1", regions: [.armSMMUSoftwareMSI, clash])
        let g1 = try h.vfio.openGroup(id: g1ID)
        let withMappings = Snapshot(container, h.host)
        let freedBefore = h.driver.domainsFreed.load(ordering: .relaxed)
        #expect(errno { try g1.setContainer(container) } == .invalidArgument)
        #expect(Snapshot(container, h.host) == withMappings)
        #expect(g1.container == nil)
        #expect(container.domains.count == 1)
        #expect(h.driver.domainsFreed.load(ordering: .relaxed) == freedBefore + 1, "the new domain was freed")
        #expect(h.core.groupInfo(id: g1ID)?.owner == nil, "DMA ownership released")
        #expect(h.core.groupInfo(id: g1ID)?.domain === h.core.groupInfo(id: g1ID)?.defaultDomain)

        // A third group with a non-conflicting extra region narrows the list; detaching restores it.
        let extra = ReservedRegion(start: 0x2_0000_0000, length: 0x1000_0000, prot: [], type: .reserved)
        let g2 = try h.vfio.openGroup(id: h.addGroup("dev2", regions: [.armSMMUSoftwareMSI, extra]))
        try g2.setContainer(container)
        #expect(try ranges(container) == [
            [0, 0x7FF_FFFF], [0x810_0000, 0xFFF_FFFF], [0x1020_0000, 0x1_FFFF_FFFF], [0x2_1000_0000, (1 << 48) - 1],
        ])
        #expect(errno { try container.mapDMA(iova: IOVA(0x2_0000_0000), vaddr: va, length: 0x1000, read: true, write: true) } == .invalidArgument)
        try g2.unsetContainer()
        #expect(try ranges(container) == [
            [0, 0x7FF_FFFF], [0x810_0000, 0xFFF_FFFF], [0x1020_0000, (1 << 48) - 1],
        ])
        // The mappings survived the attach and detach of a group sharing the domain.
        #expect(container.mappings.count == 2)
    }

    @Test func directRelaxableRegionsAreNotCarvedOutButDirectOnesAre() throws {
        let h = try VFIOHarness()
        let relaxable = ReservedRegion(start: 0x10_0000, length: 0x10_0000, prot: [.read, .write], type: .directRelaxable)
        let c = h.vfio.openContainer(process: h.host)
        let g = try h.vfio.openGroup(id: h.addGroup("dev0", regions: [relaxable, .armSMMUSoftwareMSI]))
        try g.setContainer(c)
        try c.setIOMMU(.type1v2)
        #expect(try ranges(c) == [[0, 0x7FF_FFFF], [0x810_0000, (1 << 48) - 1]])
    }

    @Test func attachShrinkingTheApertureBelowAMappingIsEINVALAndDetachExpands() throws {
        let h = try VFIOHarness()
        let (c, _) = try h.container()
        let va = try h.buffer(0x1000)
        try c.mapDMA(iova: IOVA(0x1_0000_0000), vaddr: va, length: 0x1000, read: true, write: true)
        // A second IOMMU (another driver, so no domain sharing) with a 4 GiB aperture.
        let small = FakeIOMMUDriver(name: "small") { $0.apertureEnd = 0xFFFF_FFFF }
        _ = try h.core.registerIOMMU(name: "smmu1", driver: small)
        let device = try h.core.addDevice(.platform("small0", iommu: FirmwareIOMMUSpec(iommu: "smmu1", streamIDs: [StreamID(1)])))
        let g = try h.vfio.openGroup(id: h.core.groupID(of: device)!)
        let before = Snapshot(c, h.host)
        #expect(errno { try g.setContainer(c) } == .invalidArgument)
        #expect(Snapshot(c, h.host) == before)
        // Without the mapping the list is intersected with the smaller aperture.
        try c.unmapDMA(iova: IOVA(0), length: 0, all: true)
        try g.setContainer(c)
        #expect(c.domains.count == 2)
        #expect(try ranges(c) == [[0, 0xFFFF_FFFF]])
        try c.mapDMA(iova: IOVA(0x1000_0000), vaddr: va, length: 0x1000, read: true, write: true)
        #expect(small.domainsAllocated.load(ordering: .relaxed) >= 1)
        // Detaching the small group expands back to the remaining domain's aperture.
        try g.unsetContainer()
        #expect(try ranges(c) == [[0, (1 << 48) - 1]])
        #expect(c.domains.count == 1)
        #expect(c.mappings.count == 1, "mappings stay while a domain remains")
        // An aperture entirely above the list → EINVAL.
        let high = FakeIOMMUDriver(name: "high") { $0.apertureStart = 1 << 48; $0.apertureEnd = (1 << 49) - 1 }
        _ = try h.core.registerIOMMU(name: "smmu2", driver: high)
        let highDevice = try h.core.addDevice(.platform("high0", iommu: FirmwareIOMMUSpec(iommu: "smmu2", streamIDs: [StreamID(1)])))
        let hg = try h.vfio.openGroup(id: h.core.groupID(of: highDevice)!)
        #expect(errno { try hg.setContainer(c) } == .invalidArgument)
        #expect(c.domains.count == 1)
    }

    @Test func attachLeavingNoValidIOVAIsEINVAL() throws {
        let h = try VFIOHarness { $0.apertureEnd = 0xFFFF }
        let c = h.vfio.openContainer(process: h.host)
        let whole = ReservedRegion(start: 0, length: 0x10000, prot: [], type: .reserved)
        let g = try h.vfio.openGroup(id: h.addGroup("dev0", regions: [whole]))
        try g.setContainer(c)
        #expect(errno { try c.setIOMMU(.type1v2) } == .invalidArgument)
        #expect(c.iommuType == nil)
        #expect(c.domains.isEmpty)
    }

    @Test func resizeBoundaryQuirkAndExcludeSplitting() throws {
        var list: VFIOContainer.IOVAList = [(0, 0xFFF), (0x2000, 0x2FFF), (0x5000, 0x8FFF)]
        // New start equal to a range's end drops that range (Linux's quirk).
        VFIOContainer.resize(&list, start: 0x2FFF, end: 0x6000)
        #expect(list.map { [$0.first, $0.last] } == [[0x5000, 0x6000]])
        var whole: VFIOContainer.IOVAList = []
        VFIOContainer.resize(&whole, start: 0, end: 0xFFFF)
        try VFIOContainer.exclude(&whole, [ReservedRegion(start: 0x1000, length: 0x1000, prot: [], type: .msi)])
        #expect(whole.map { [$0.first, $0.last] } == [[0, 0xFFF], [0x2000, 0xFFFF]])
    }

    @Test func missingInterruptRemappingIsEPERMUnlessUnsafeInterruptsAreAllowed() throws {
        let h = try VFIOHarness()
        let id = try h.addGroup("dev0")
        h.vfio.setInterruptIsolation(ofGroup: id, isolated: false)
        let c = h.vfio.openContainer(process: h.host)
        let g = try h.vfio.openGroup(id: id)
        try g.setContainer(c)
        #expect(errno { try c.setIOMMU(.type1v2) } == .notPermitted)
        #expect(h.warnings.warnings.contains(.vfioNoInterruptRemapping(group: id)))
        #expect(c.domains.isEmpty)
        h.vfio.setConfiguration { $0.allowUnsafeInterrupts = true }
        let c2 = h.vfio.openContainer(process: h.host)
        g.close()
        let g2 = try h.vfio.openGroup(id: id)
        try g2.setContainer(c2)
        try c2.setIOMMU(.type1v2)
        #expect(c2.domains.count == 1)
    }
}
