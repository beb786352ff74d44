import IOMMUBase
import IOMMUCore
import IOMMUTestSupport
import Testing

@Suite("Reserved regions")
struct ReservedRegionTests {
    func region(_ start: UInt64, _ length: UInt64, _ type: ReservedRegionType) -> ReservedRegion {
        ReservedRegion(start: start, length: length, prot: .read, type: type)
    }

    @Test func sameTypeRegionsMergeWhenOverlappingOrTouching() {
        let overlapping = ReservedRegionList(inserting: [region(0x1000, 0x1000, .reserved), region(0x1800, 0x1000, .reserved)])
        #expect(overlapping.regions == [region(0x1000, 0x1800, .reserved)])
        let touching = ReservedRegionList(inserting: [region(0x2000, 0x1000, .reserved), region(0x1000, 0x1000, .reserved)])
        #expect(touching.regions == [region(0x1000, 0x2000, .reserved)])
        let gap = ReservedRegionList(inserting: [region(0x1000, 0xFFF, .msi), region(0x2000, 0x1000, .msi)])
        #expect(gap.regions.count == 2)
        let contained = ReservedRegionList(inserting: [region(0x1000, 0x4000, .direct), region(0x2000, 0x1000, .direct)])
        #expect(contained.regions == [region(0x1000, 0x4000, .direct)])
    }

    @Test func differentTypesNeverMergeEvenWhenOverlapping() {
        let list = ReservedRegionList(inserting: [
            region(0x1000, 0x2000, .reserved), region(0x1800, 0x2000, .msi), region(0x1000, 0x1000, .direct),
        ])
        #expect(list.regions == [region(0x1000, 0x1000, .direct), region(0x1000, 0x2000, .reserved), region(0x1800, 0x2000, .msi)])
    }

    @Test func sameTypeMergesAcrossOtherTypesInBetween() {
        let list = ReservedRegionList(inserting: [
            region(0x1000, 0x1000, .reserved), region(0x1800, 0x100, .msi), region(0x2000, 0x1000, .reserved),
        ])
        #expect(list.regions == [region(0x1000, 0x2000, .reserved), region(0x1800, 0x100, .msi)])
    }

    @Test func equalStartsSortByType() {
        let list = ReservedRegionList(inserting: [region(0x800_0000, 0x1000, .swMSI), region(0x800_0000, 0x1000, .reserved)])
        #expect(list.regions.map(\.type) == [.reserved, .swMSI])
    }

    @Test func aRegionEndingAtTheTopOfTheAddressSpaceAbsorbsNothingAfterIt() {
        let top = region(UInt64.max - 0xFFF, 0x1000, .reserved)
        let list = ReservedRegionList(inserting: [top, region(UInt64.max - 0x7FF, 0x800, .reserved)])
        // Linux's `top_end + 1` wraps to 0: the second region is kept separately.
        #expect(list.regions.count == 2)
    }

    @Test func sysfsTextPrintsStartInclusiveEndAndTypeName() {
        let list = ReservedRegionList(inserting: [
            .armSMMUSoftwareMSI, region(0xFEE0_0000, 0x10_0000, .msi), region(0x8000_0000, 0x1000, .directRelaxable),
            region(0x1000, 0x1000, .direct), region(0x4000, 0x1000, .reserved),
        ])
        #expect(list.sysfsText == """
            0x0000000000001000 0x0000000000001fff direct
            0x0000000000004000 0x0000000000004fff reserved
            0x0000000008000000 0x00000000080fffff msi
            0x0000000080000000 0x0000000080000fff direct-relaxable
            0x00000000fee00000 0x00000000feefffff msi

            """)
    }

    @Test func groupRegionsCombineDriverAndFirmwareRegionsOfEveryMember() throws {
        let h = Harness()
        let driver = FakeIOMMUDriver {
            $0.regions["0000:00:01.0"] = [.armSMMUSoftwareMSI]
            $0.regions["0000:00:01.1"] = [.armSMMUSoftwareMSI]
        }
        try h.core.registerIOMMU(name: "smmu0", driver: driver)
        let a = try h.core.addDevice(.pci(
            pciAddress(0, 1, 0), iommu: spec("smmu0", 1), acsIsolated: false,
            firmwareReservedRegions: [region(0x4000_0000, 0x1000, .reserved)]))
        _ = try h.core.addDevice(.pci(
            pciAddress(0, 1, 1), iommu: spec("smmu0", 2), acsIsolated: false,
            firmwareReservedRegions: [region(0x4000_1000, 0x1000, .reserved)]))
        #expect(h.core.reservedRegions(of: a) == [.armSMMUSoftwareMSI, region(0x4000_0000, 0x1000, .reserved)])
        let list = try #require(h.core.reservedRegions(ofGroup: 0))
        #expect(list.sysfsText == """
            0x0000000008000000 0x00000000080fffff msi
            0x0000000040000000 0x0000000040001fff reserved

            """)
        #expect(h.core.reservedRegions(ofGroup: 5) == nil)
        #expect(ReservedRegion.armSMMUSoftwareMSI.prot == [.write, .noExec, .mmio])
    }
}
