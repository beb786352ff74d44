import IOMMUBase
import IOMMUCore
import IOMMUHardware
import IOMMUTestSupport
import IOPageTable
import PhysicalMemory
import Testing

@Suite("SMMU basics")
struct SMMUBasicTests {
    @Test func probedDeviceTranslatesThroughItsDefaultDomain() throws {
        let m = TestMachine()
        m.addSMMU("smmu0")
        let driver = try m.registerSMMU("smmu0")
        let dev = try m.core.addDevice(platformDevice("eth0", "smmu0", 0x10))
        #expect(m.core.probeState(of: dev) == .probed, "\(m.warnings.warnings)")
        let domain = try #require(m.core.domain(for: dev))
        #expect(domain.type == .dma)
        #expect(domain.pageSizes == PageSizeBitmap([.size4K, .size2M, .size1G]))
        #expect(domain.geometry.apertureEnd == IOVA((1 << 48) - 1))
        let page = m.dataPage(filledWith: 0xAB)
        try domain.map(iova: IOVA(0x10_0000), paddr: page, length: 4096, prot: [.read, .write])
        let (bytes, outcome) = m.platform.dmaRead(device: dev, address: 0x10_0010, length: 16)
        #expect(outcome.succeeded)
        #expect(bytes == [UInt8](repeating: 0xAB, count: 16))
        #expect(outcome.tlbMisses == 1)
        let again = m.platform.dmaWrite(device: dev, address: 0x10_0000, bytes: [1, 2, 3])
        #expect(again.succeeded && again.tlbHits == 1)
        #expect(try m.memory.readBytes(page, count: 4) == [1, 2, 3, 0xAB])
        // Registers: the stream's SMR and a translating S2CR pointing at the domain's bank.
        let snapshot = m.smmus["smmu0"]!.registerSnapshot()
        let index = try #require(driver.streamMapIndices(of: dev)?.first)
        #expect(snapshot.smrs[index] == StreamMatchRegister(id: 0x10, mask: 0, valid: true))
        #expect(snapshot.s2crs[index].type == .translate)
        let bank = Int(snapshot.s2crs[index].contextBank)
        #expect(snapshot.contextBanks[bank].isEnabled)
        #expect(m.core.reservedRegions(of: dev).contains(.armSMMUSoftwareMSI))
    }

    @Test func unmappedAccessFaultsAndIsReported() throws {
        let m = TestMachine()
        m.addSMMU("smmu0")
        try m.registerSMMU("smmu0")
        let dev = try m.core.addDevice(platformDevice("eth0", "smmu0", 0x10))
        let domain = try #require(m.core.domain(for: dev))
        let outcome = m.platform.dmaRead(device: dev, address: 0x5000, length: 8).outcome
        #expect(outcome.fault?.reason == .translation)
        #expect(m.trace.lines.last == "io_page_fault: IOMMU:arm-smmu eth0 iova=0x0000000000005000 flags=0x0000")
        #expect(domain.faultCount == 1)
        #expect(m.warnings.warnings.contains { if case .smmuUnhandledContextFault = $0 { true } else { false } })
    }
}

@Suite("DMA platform")
struct DMAPlatformTests {
    @Test func deviceBehindNoIOMMUReachesMemoryDirectly() throws {
        let m = TestMachine()
        let dev = try m.core.addDevice(.platform("uart", iommu: nil))
        let page = m.dataPage(filledWith: 0x11)
        guard case .direct = m.platform.route(of: dev) else { Issue.record("expected a direct route"); return }
        let (bytes, outcome) = m.platform.dmaRead(device: dev, address: page.rawValue, length: 2)
        #expect(bytes == [0x11, 0x11] && outcome.bypassed)
        guard case .none = m.platform.route(of: DeviceID(999)) else { Issue.record("unknown device routed"); return }
        #expect(m.platform.dmaRead(device: DeviceID(999), address: 0, length: 1).outcome.fault?.reason == .other)
    }
}
