import IOMMUBase
import IOMMUCore
import IOMMUTestSupport
import Testing

@Suite("IOMMU core warnings")
struct WarningTextTests {
    static let all: [IOMMUWarning] = [
        .iommuPagesCannotRepresentCPUPages(device: DeviceID(1), smallestIOMMUPageSize: 0x4000, cpuPageSize: 0x1000),
        .unalignedMap(iova: IOVA(0x1000), paddr: PhysAddr(0x2000), size: 0x800, minPageSize: 0x1000),
        .unalignedUnmap(iova: IOVA(0x1800), size: 0x1000, minPageSize: 0x1000),
        .defaultDomainTypeConflict(device: DeviceID(2), type: 4, otherDevice: DeviceID(1), otherType: 3),
        .untrustedDeviceForcedToDMA(device: DeviceID(3), group: 1, requestedType: 4),
        .defaultDomainFallbackToDMA(group: 0, requestedType: 4),
        .failedToAddToGroup(device: DeviceID(4), group: 2, errno: 19),
        .detachOfDomainNotAttached(device: DeviceID(5)),
        .detachFromMultiDeviceGroup(device: DeviceID(5), deviceCount: 2),
        .directMappingFailed(device: DeviceID(6), iova: IOVA(0x8000_0000), errno: 17),
        .attachRollbackFailed(device: DeviceID(7), errno: 5),
        .coreDomainAttachFailed(group: 3, errno: 5),
        .unbalancedDMAOwnershipRelease(group: 3),
        .unbindOfUnboundDevice(device: DeviceID(8)),
        .groupEmptiedWhileOwned(group: 4),
        .deviceRequiresDirectMapping(device: DeviceID(9)),
    ]

    @Test(arguments: all)
    func everyWarningNamesWhatItIsAbout(warning: IOMMUWarning) {
        #expect(!warning.description.isEmpty)
        #expect(warning.description.contains("device#") || warning.description.contains("group")
            || warning.description.contains("unaligned"))
    }

    @Test func linuxMessagesAreKeptWordForWord() {
        #expect(Self.all[2].description == "unaligned: iova 0x1800 size 0x1000 min_pagesz 0x1000")
        #expect(Self.all[6].description == "device#4: Failed to add to iommu group 2: 19")
        #expect(IOMMUDomainType.dma.displayName == "Translated")
        #expect(IOMMUDomainType.dmaFQ.displayName == "Translated")
        #expect(IOMMUDomainType.identity.displayName == "Passthrough")
        #expect(IOMMUDomainType.blocked.displayName == "Blocked")
        #expect(IOMMUDomainType.unmanaged.displayName == "Unmanaged")
        #expect([IOMMUDomainType.blocked, .identity, .unmanaged, .dma, .dmaFQ].map(\.rawValue) == [0, 4, 1, 3, 11])
        #expect([IOMMUDomainType.blocked, .identity, .unmanaged, .dma, .dmaFQ].map(\.sysfsName)
            == ["blocked", "identity", "unmanaged", "DMA", "DMA-FQ"])
        #expect(ReservedRegionType.allCases.map(\.rawValue) == [0, 1, 2, 3, 4])
    }
}
