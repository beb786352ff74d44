import IOMMUBase
import IOMMUCore
import IOMMUTestSupport
import Testing

@Suite("Group type attribute (§3.7) and IOMMU unregistration")
struct DefaultDomainTypeTests {
    func setUp(
        defaultType: IOMMUDomainType = .dma, untrusted: Bool = false,
        _ configure: @escaping (inout FakeIOMMUDriver.Config) -> Void = { _ in }
    ) throws -> (Harness, FakeIOMMUDriver, DeviceID) {
        let h = Harness(defaultDomainType: defaultType)
        let driver = FakeIOMMUDriver(configure)
        try h.core.registerIOMMU(name: "smmu0", driver: driver)
        let id = try h.core.addDevice(.pci(pciAddress(0, 3), iommu: spec("smmu0", 1), untrusted: untrusted))
        return (h, driver, id)
    }

    @Test func readShowsTheDefaultDomainType() throws {
        let (h, _, _) = try setUp()
        #expect(h.core.defaultDomainTypeText(ofGroup: 0) == "DMA")
        #expect(h.core.defaultDomainTypeText(ofGroup: 1) == nil)
    }

    @Test func writeReplacesTheDefaultDomainAndFreesTheOldOne() throws {
        let (h, driver, id) = try setUp()
        let old = try #require(h.core.defaultDomain(for: id))
        try h.core.setDefaultDomainType(ofGroup: 0, to: "identity\n")
        #expect(h.core.defaultDomainTypeText(ofGroup: 0) == "identity")
        #expect(old.isFreed)
        guard case .identity = h.core.dmaPath(for: id) else {
            Issue.record("not identity")
            return
        }
        try h.core.setDefaultDomainType(ofGroup: 0, to: "auto")
        #expect(h.core.defaultDomainTypeText(ofGroup: 0) == "DMA")
        #expect(h.core.liveDomainCount == 1)
        #expect(driver.domainsFreed.load(ordering: .relaxed) == 2)
    }

    @Test func dmaToDMAFQConvertsInPlaceEvenWithADriverBound() throws {
        let (h, _, id) = try setUp { $0.capabilities = [.deferredFlush] }
        let domain = try #require(h.core.defaultDomain(for: id))
        try h.core.bindDriver(id, name: "nvme")
        try h.core.setDefaultDomainType(ofGroup: 0, to: "DMA-FQ")
        #expect(h.core.defaultDomain(for: id) === domain)
        #expect(domain.type == .dmaFQ)
        #expect(throws: IOMMUError(.busy, device: id)) { try h.core.setDefaultDomainType(ofGroup: 0, to: "DMA") }
    }

    @Test func errorsFollowTheOrderOfTheRules() throws {
        let (h, _, id) = try setUp()
        #expect(throws: IOMMUError(.notPermitted, code: .permissionDenied)) {
            try h.core.setDefaultDomainType(ofGroup: 0, to: "identity", privileged: false)
        }
        #expect(throws: IOMMUError(.invalidArgument)) { try h.core.setDefaultDomainType(ofGroup: 0, to: "bogus") }
        try h.core.bindDriver(id, name: "nvme")
        #expect(throws: IOMMUError(.busy, device: id)) { try h.core.setDefaultDomainType(ofGroup: 0, to: "identity") }
        h.core.unbindDriver(id)
        let user = try h.core.allocateDomain(type: .unmanaged, for: id)
        try h.core.attachDevice(user, to: id)
        #expect(throws: IOMMUError(.busy, device: id)) { try h.core.setDefaultDomainType(ofGroup: 0, to: "identity") }
        h.core.detachDevice(user, from: id)
        try h.core.setDefaultDomainType(ofGroup: 0, to: "DMA")  // same type: no-op
        #expect(h.core.liveDomainCount == 2)
        _ = try h.core.addDevice(.pci(pciAddress(0, 4, 0), iommu: spec("smmu0", 2), acsIsolated: false))
        _ = try h.core.addDevice(.pci(pciAddress(0, 4, 1), iommu: spec("smmu0", 3), acsIsolated: false))
        #expect(throws: IOMMUError(.invalidArgument)) { try h.core.setDefaultDomainType(ofGroup: 1, to: "identity") }
    }

    @Test func anUntrustedDeviceCannotBeSwitchedToIdentity() throws {
        let (h, _, id) = try setUp(untrusted: true)
        #expect(throws: IOMMUError(.invalidArgument, device: id)) { try h.core.setDefaultDomainType(ofGroup: 0, to: "identity") }
        #expect(h.core.defaultDomainTypeText(ofGroup: 0) == "DMA")
    }

    @Test func unregisteringAnIOMMUReturnsItsDevicesToDeferred() throws {
        let (h, driver, id) = try setUp()
        try h.core.unregisterIOMMU(name: "smmu0")
        #expect(h.core.probeState(of: id) == .deferred)
        #expect(h.core.dmaPath(for: id).isBlocked)
        #expect(h.core.groupIDs.isEmpty)
        #expect(h.core.liveDomainCount == 0)
        #expect(driver.recorded.last == .release("0000:00:03.0"))
        try h.core.registerIOMMU(name: "smmu0", driver: driver)
        #expect(h.core.probeState(of: id) == .probed)
        #expect(h.core.groupID(of: id) == 0)
        #expect(throws: IOMMUError(.noSuchDevice)) { try h.core.unregisterIOMMU(name: "nope") }
        #expect(throws: IOMMUError(.alreadyExists)) { try h.core.registerIOMMU(name: "smmu0", driver: driver) }
    }
}

@Suite("Registry")
struct RegistryTests {
    @Test func devicesHaveStableIDsAndNames() throws {
        let h = Harness()
        let a = try h.core.addDevice(.pci(pciAddress(0, 3), iommu: nil))
        let b = try h.core.addDevice(.platform("uart@1000", iommu: nil))
        #expect(h.core.device(named: "0000:00:03.0") == a)
        #expect(h.core.deviceInfo(b)?.name == "uart@1000")
        #expect(h.core.devices(onBus: "pci") == [a])
        #expect(throws: IOMMUError(.alreadyExists)) { try h.core.addDevice(.platform("uart@1000", iommu: nil)) }
        #expect(throws: IOMMUError(.noSuchDevice)) { try h.core.addDevice(.platform("x", iommu: nil, bus: "amba")) }
        try h.core.registerBus(name: "amba", kind: .platform)
        #expect(throws: IOMMUError(.alreadyExists)) { try h.core.registerBus(name: "amba", kind: .platform) }
        try h.core.removeDevice(a)
        let c = try h.core.addDevice(.pci(pciAddress(0, 3), iommu: nil))
        #expect(c != a)  // IDs are never reused
        #expect(throws: IOMMUError(.noSuchDevice, device: a)) { try h.core.removeDevice(a) }
        #expect(PCIAddress(segment: 1, bus: 0x1A, device: 0x1F, function: 7).description == "0001:1a:1f.7")
    }

    @Test func configurationValidation() throws {
        #expect(throws: IOMMUError(.invalidConfiguration, length: 0x2000)) {
            try IOMMUCoreConfiguration.validated(cpuPageSize: PageSize(shift: 13), defaultDomainType: .dma)
        }
        #expect(throws: IOMMUError(.invalidConfiguration, address: 1)) {
            try IOMMUCoreConfiguration.validated(cpuPageSize: .size4K, defaultDomainType: .unmanaged)
        }
        #expect(try IOMMUCoreConfiguration.validated(cpuPageSize: .size16K, defaultDomainType: .identity).cpuPageSize == .size16K)
    }

    @Test func capabilitiesComeFromTheDeviceIOMMU() throws {
        let h = Harness()
        try h.core.registerIOMMU(name: "smmu0", driver: FakeIOMMUDriver { $0.capabilities = [.cacheCoherency] })
        let probed = try h.core.addDevice(.platform("a", iommu: spec("smmu0", 1)))
        let deferred = try h.core.addDevice(.platform("b", iommu: spec("smmu1", 1)))
        #expect(h.core.capable(.cacheCoherency, device: probed))
        #expect(!h.core.capable(.noExec, device: probed))
        #expect(!h.core.capable(.cacheCoherency, device: deferred))
    }

    @Test func concurrentProbeAndRemoveLeaveNothingBehind() async throws {
        let h = Harness()
        let driver = FakeIOMMUDriver()
        try h.core.registerIOMMU(name: "smmu0", driver: driver)
        let core = h.core
        await withTaskGroup(of: Void.self) { group in
            for worker in 0..<4 {
                group.addTask {
                    for index in 0..<50 {
                        let name = "w\(worker)-\(index)"
                        guard let id = try? core.addDevice(.platform(name, iommu: spec("smmu0", UInt32(worker)))) else {
                            continue
                        }
                        let domain = core.defaultDomain(for: id)
                        try? domain?.map(iova: IOVA(0x1000), paddr: PhysAddr(0x1000), length: 0x1000, prot: .read)
                        _ = domain?.unmap(iova: IOVA(0x1000), length: 0x1000)
                        try? core.removeDevice(id)
                    }
                }
            }
        }
        #expect(core.groupIDs.isEmpty)
        #expect(core.liveDomainCount == 0)
        #expect(driver.domainsFreed.load(ordering: .relaxed) == driver.domainsAllocated.load(ordering: .relaxed))
        #expect(h.warnings.warnings.isEmpty)
    }
}
