import IOMMUBase
import IOMMUCore
import IOMMUHardware
import IOMMUTestSupport
import IOPageTable
import PhysicalMemory
import Testing

enum RegistrationEvent: Hashable, Sendable, CustomStringConvertible {
    case device(Int)
    case iommu(String)
    var description: String {
        switch self {
        case let .device(index): "dev\(index)"
        case let .iommu(name): name
        }
    }
}

/// The seed scenarios with the real SMMU and DART drivers.
@Suite("Seed scenarios (hardware)")
struct HardwareSeedScenarioTests {
    // MARK: (a) probe deferral in every order

    /// dev0, dev1: functions 0 and 1 of a PCI slot without ACS behind smmuA (one group);
    /// dev2: a platform device behind smmuB.
    static let descriptions: [DeviceDescription] = [
        .pci(pciAddress(0, 1, 0), iommu: FirmwareIOMMUSpec(iommu: "smmuA", streamIDs: [StreamID(0x100)]), acsIsolated: false),
        .pci(pciAddress(0, 1, 1), iommu: FirmwareIOMMUSpec(iommu: "smmuA", streamIDs: [StreamID(0x101)]), acsIsolated: false),
        .platform("gpu@40000000", iommu: FirmwareIOMMUSpec(iommu: "smmuB", streamIDs: [StreamID(0x7)])),
    ]
    static let iommuOf = ["smmuA", "smmuA", "smmuB"]
    static let names = ["0000:00:01.0", "0000:00:01.1", "gpu@40000000"]
    static let sids: [UInt32] = [0x100, 0x101, 0x7]

    static let allOrders: [[RegistrationEvent]] = permutations([
        .device(0), .device(1), .device(2), .iommu("smmuA"), .iommu("smmuB"),
    ])

    @Test func thereAre120Orders() { #expect(Self.allOrders.count == 120) }

    @Test(arguments: allOrders)
    func deferredProbeCompletesInAnyOrder(order: [RegistrationEvent]) throws {
        let m = TestMachine()
        // Both SMMUs exist on the platform and their drivers have probed the hardware (reset,
        // fault handlers); registering with the core is the event being ordered.
        m.addSMMU("smmuA")
        m.addSMMU("smmuB")
        let drivers = ["smmuA": ARMSMMUDriver(smmu: m.smmus["smmuA"]!, core: m.core, frames: m.frames),
                       "smmuB": ARMSMMUDriver(smmu: m.smmus["smmuB"]!, core: m.core, frames: m.frames)]
        let page = m.dataPage(filledWith: 0x42)
        var ids: [Int: DeviceID] = [:]
        var registered: Set<String> = []
        var groupCreationOrder: [String] = []
        func noteProbed(_ index: Int) {
            if !groupCreationOrder.contains(Self.iommuOf[index]) { groupCreationOrder.append(Self.iommuOf[index]) }
        }
        for event in order {
            switch event {
            case .device(let index):
                ids[index] = try m.core.addDevice(Self.descriptions[index])
                if registered.contains(Self.iommuOf[index]) { noteProbed(index) }
            case .iommu(let name):
                try m.core.registerIOMMU(name: name, driver: drivers[name]!)
                registered.insert(name)
                for index in ids.keys.sorted() where Self.iommuOf[index] == name { noteProbed(index) }
            }
            // Every device added so far: deferred ones never get translation or bypass.
            for (index, id) in ids {
                let deferred = !registered.contains(Self.iommuOf[index])
                #expect(m.core.probeState(of: id) == (deferred ? .deferred : .probed), "\(order)")
                guard deferred else { continue }
                _ = m.warnings.drain()
                _ = m.trace.drain()
                let outcome = m.platform.dmaRead(device: id, address: page.rawValue, length: 4).outcome
                #expect(outcome.fault?.reason == .unidentifiedStream && !outcome.bypassed && outcome.bytesMoved == 0, "\(order)")
                #expect(m.warnings.warnings == [.smmuBlockedUnknownStream(streamID: StreamID(Self.sids[index]))], "\(order)")
                #expect(m.trace.lines == ["io_page_fault: IOMMU: \(Self.names[index]) iova=0x\(String(repeating: "0", count: 8))\(String(page.rawValue, radix: 16)) flags=0x0000"], "\(order)")
            }
        }
        // All probed, grouped exactly, attached to their DMA default domains, translating.
        let expectedGroup = { (index: Int) in groupCreationOrder.firstIndex(of: Self.iommuOf[index])! }
        for index in 0..<3 {
            let id = try #require(ids[index])
            #expect(m.core.probeState(of: id) == .probed, "\(order)")
            #expect(m.core.groupID(of: id) == expectedGroup(index), "\(order)")
            let domain = try #require(m.core.domain(for: id))
            #expect(domain.type == .dma)
            if domain.iovaToPhys(IOVA(0x10_0000)) == nil {  // dev0 and dev1 share one domain
                try domain.map(iova: IOVA(0x10_0000), paddr: page, length: 4096, prot: [.read])
            }
            let (bytes, outcome) = m.platform.dmaRead(device: id, address: 0x10_0000, length: 4)
            #expect(bytes == [0x42, 0x42, 0x42, 0x42] && !outcome.bypassed, "\(order)")
        }
        #expect(m.core.groupIDs == [0, 1])
        // The SMMU hardware agrees: dev0 and dev1 share a context bank (one group, one domain).
        let a = m.smmus["smmuA"]!.registerSnapshot()
        #expect(a.smrs.filter(\.valid).map(\.id).sorted() == [0x100, 0x101])
        #expect(Set(a.s2crs.prefix(2).map(\.contextBank)).count == 1 && a.s2crs.prefix(2).allSatisfy { $0.type == .translate })
    }

    @Test func deferredDeviceFollowsTheBypassPolicyAndIsReported() throws {
        let m = TestMachine()
        let smmu = m.addSMMU("smmuA") { $0.firmwareFaultsUnmatchedStreams = false }
        let driver = ARMSMMUDriver(smmu: smmu, core: m.core, frames: m.frames, options: .init(disableBypass: false))
        let id = try m.core.addDevice(Self.descriptions[0])
        #expect(m.core.probeState(of: id) == .deferred)
        let page = m.dataPage(filledWith: 1)
        let outcome = m.platform.dmaRead(device: id, address: page.rawValue, length: 1).outcome
        #expect(outcome.bypassed && outcome.succeeded)
        #expect(m.warnings.warnings == [.smmuUnmatchedStreamBypassed(streamID: StreamID(0x100), address: page.rawValue)])
        try m.core.registerIOMMU(name: "smmuA", driver: driver)
        let after = m.platform.dmaRead(device: id, address: page.rawValue, length: 1).outcome
        #expect(!after.bypassed && after.fault?.reason == .translation)  // translated by its (empty) DMA domain
    }

    // MARK: (c) unbind / rebind

    @Test(arguments: [true, false])
    func unbindRebindKeepsStreamEntriesAndGroup(disableBypass: Bool) throws {
        let m = TestMachine()
        let smmu = m.addSMMU("smmu0")
        let driver = try m.registerSMMU("smmu0", options: .init(disableBypass: disableBypass))
        let dev = try m.core.addDevice(.pci(pciAddress(0, 2, 0), iommu: FirmwareIOMMUSpec(iommu: "smmu0", streamIDs: [StreamID(0x200)])))
        let other = try m.core.addDevice(.pci(pciAddress(0, 3, 0), iommu: FirmwareIOMMUSpec(iommu: "smmu0", streamIDs: [StreamID(0x300)])))
        let group = try #require(m.core.groupID(of: dev))
        let registersBefore = smmu.registerSnapshot()
        let entriesBefore = driver.streamMapEntries
        let defaultDomain = try #require(m.core.defaultDomain(for: dev))
        let mapped = m.dataPage(filledWith: 0x77)
        let secret = m.dataPage(filledWith: 0x5E)
        try defaultDomain.map(iova: IOVA(0x4000), paddr: mapped, length: 4096, prot: [.read, .write])
        _ = m.warnings.drain()
        for round in 0..<100 {
            try m.core.bindDriver(dev, name: "nvme")
            m.core.unbindDriver(dev)
            #expect(m.core.groupID(of: dev) == group, "round \(round)")
            #expect(m.core.domain(for: dev) === defaultDomain)
        }
        // Registers are bit-for-bit unchanged: the stream entries stayed, pointing at the domain.
        #expect(smmu.registerSnapshot() == registersBefore)
        #expect(driver.streamMapEntries == entriesBefore)
        // The unbound device's DMA is translated by its default domain, or faults; never bypass.
        let translated = m.platform.dmaRead(device: dev, address: 0x4000, length: 2)
        #expect(translated.bytes == [0x77, 0x77] && !translated.outcome.bypassed)
        let attack = m.platform.dmaRead(device: dev, address: secret.rawValue, length: 2)
        #expect(attack.outcome.fault?.reason == .translation && !attack.outcome.bypassed)
        #expect(m.trace.lines.last == "io_page_fault: IOMMU:arm-smmu 0000:00:02.0 iova=0x\(String(repeating: "0", count: 8))\(String(secret.rawValue, radix: 16)) flags=0x0000")
        _ = m.warnings.drain()
        // An unknown stream follows the global policy; a bypass is reported.
        let unknown = smmu.dmaRead(streamID: StreamID(0x7FF), address: secret.rawValue, length: 2)
        if disableBypass {
            #expect(unknown.outcome.fault?.reason == .unidentifiedStream)
            #expect(m.warnings.warnings == [.smmuBlockedUnknownStream(streamID: StreamID(0x7FF))])
        } else {
            #expect(unknown.bytes == [0x5E, 0x5E] && unknown.outcome.bypassed)
            #expect(m.warnings.warnings == [.smmuUnmatchedStreamBypassed(streamID: StreamID(0x7FF), address: secret.rawValue)])
        }
        // Only removal releases the entries (to the initial S2CR).
        try m.core.removeDevice(dev)
        let index = entriesBefore.firstIndex { $0.smr.id == 0x200 && $0.smr.valid }!
        #expect(smmu.registerSnapshot().s2crs[index] == driver.initialS2CR)
        #expect(m.core.probeState(of: other) == .probed)
    }

    // MARK: (d) DART 16K pages on a 4K CPU

    func dartMachine(untrusted: Bool = false, cpuPageSize: PageSize = .size4K, supportsBypass: Bool = true,
                     options: AppleDARTDriver.Options = .init()) throws -> (TestMachine, DART, AppleDARTDriver, DeviceID) {
        let m = TestMachine(cpuPageSize: cpuPageSize)
        let dart = m.addDART("dart0") { $0.supportsBypass = supportsBypass }
        let driver = try m.registerDART("dart0", options: options)
        let id = try m.core.addDevice(.pci(pciAddress(1, 0, 0), iommu: FirmwareIOMMUSpec(iommu: "dart0", streamIDs: [StreamID(2)]), untrusted: untrusted))
        return (m, dart, driver, id)
    }

    @Test func dmaDomainOn16KDARTWith4KCPUFailsWithEFAULT() throws {
        let (m, dart, driver, id) = try dartMachine()
        #expect(driver.forceBypass)
        #expect(driver.probeMessage == "DART [pagesize 0x4000, 16 streams, bypass support: 1, bypass forced: 1] initialized")
        let identity = try #require(m.core.defaultDomain(for: id))
        #expect(identity.type == .identity)
        #expect(dart.readStream(2).tcr == DARTRegister.tcrBypassDART)
        let dma = try m.core.allocateDomain(type: .dma, for: id)
        #expect(throws: IOMMUError(.badAddress, device: id)) { try m.core.attachDevice(dma, to: id) }
        #expect(m.warnings.warnings == [.iommuPagesCannotRepresentCPUPages(device: id, smallestIOMMUPageSize: 0x4000, cpuPageSize: 0x1000)])
        #expect(m.warnings.warnings[0].description.contains("IOMMU pages cannot exactly represent CPU pages"))
        // Rolled back: the stream is in bypass again, as its identity default domain says.
        #expect(m.core.domain(for: id) === identity)
        #expect(dart.readStream(2).tcr == DARTRegister.tcrBypassDART)
        let page = m.dataPage(filledWith: 4)
        #expect(m.platform.dmaRead(device: id, address: page.rawValue, length: 1).outcome.bypassed)
    }

    @Test func trustedDeviceWithOptInTranslatesWith16KPages() throws {
        let (m, dart, _, id) = try dartMachine()
        let dma = try m.core.allocateDomain(type: .dma, for: id)
        dma.allowsLargePages = true
        try m.core.attachDevice(dma, to: id)
        #expect(m.core.domain(for: id) === dma)
        #expect(dma.pageSizes == PageSizeBitmap([.size16K]))
        #expect(m.warnings.warnings.isEmpty)
        let frame = try m.frames.allocate(.size16K)
        try m.memory.fill(frame, length: 16384, with: 0x16)
        try dma.map(iova: IOVA(0x8000), paddr: frame, length: 16384, prot: [.read])
        let (bytes, outcome) = m.platform.dmaRead(device: id, address: 0xBFFE, length: 2)
        #expect(bytes == [0x16, 0x16] && !outcome.bypassed && outcome.tlbMisses == 1)
        #expect(dart.readStream(2).tcr == DARTRegister.tcrTranslateEnable)
        // Write to a read-only page: permission fault in ERROR, reported to the core.
        let write = m.platform.dmaWrite(device: id, address: 0x8000, bytes: [1])
        #expect(write.fault?.reason == .permission)
        #expect(m.trace.lines.last == "io_page_fault: IOMMU:apple-dart 0000:01:00.0 iova=0x0000000000008000 flags=0x0001")
        #expect(dart.readError().status == 0)  // cleared by the driver
        #expect(m.warnings.warnings == [.dartUnhandledFault(status: DARTRegister.errorFlag | 2 << 24 | DARTRegister.errorWriteFault, streamIndex: 2, address: 0x8000)])
    }

    @Test func untrustedDeviceWithOptInStillFails() throws {
        let (m, dart, _, id) = try dartMachine(untrusted: true)
        // Untrusted: DMA default domain forced, refused by the page-size check: probe fails.
        #expect(m.core.probeState(of: id) == .probeFailed(.badAddress))
        #expect(m.warnings.warnings.contains(.iommuPagesCannotRepresentCPUPages(device: id, smallestIOMMUPageSize: 0x4000, cpuPageSize: 0x1000)))
        #expect(throws: IOMMUError.self) { _ = try m.core.allocateDomain(type: .dma, for: id) }
        // Its stream stays disabled: DMA faults, never bypasses.
        #expect(dart.readStream(2).tcr == 0)
        let outcome = m.platform.dmaRead(device: id, address: 0x8000_0000, length: 1).outcome
        #expect(outcome.fault?.reason == .blocked && !outcome.bypassed)
    }

    @Test func untrustedOptInRefusedByTheCoreCheckItself() throws {
        // A trusted sibling gives the group a domain; the untrusted device's opted-in domain is
        // still refused at attach (EFAULT): the exemption is for trusted devices only.
        let (m, _, _, trusted) = try dartMachine()
        let untrusted = try m.core.addDevice(.pci(pciAddress(2, 0, 0), iommu: FirmwareIOMMUSpec(iommu: "dart0", streamIDs: [StreamID(3)]), untrusted: true))
        #expect(m.core.probeState(of: untrusted) == .probeFailed(.badAddress))
        let dma = try m.core.allocateDomain(type: .dma, for: trusted)
        dma.allowsLargePages = true
        try m.core.attachDevice(dma, to: trusted)
        #expect(m.core.domain(for: trusted) === dma)
    }
}

/// The reference's §7 edge cases.
@Suite("DART edge cases")
struct DARTEdgeCaseTests {
    @Test func dartPageEqualToCPUPageGivesTranslatingDomains() throws {
        let m = TestMachine(cpuPageSize: .size16K)
        let dart = m.addDART("dart0")
        let driver = try m.registerDART("dart0")
        #expect(!driver.forceBypass)
        let id = try m.core.addDevice(.platform("isp", iommu: FirmwareIOMMUSpec(iommu: "dart0", streamIDs: [StreamID(0)])))
        let domain = try #require(m.core.domain(for: id))
        #expect(domain.type == .dma)
        let frame = try m.frames.allocate(.size16K)
        try m.memory.fill(frame, length: 16384, with: 9)
        try domain.map(iova: IOVA(0x4000), paddr: frame, length: 16384, prot: [.read, .write])
        #expect(m.platform.dmaRead(device: id, address: 0x4000, length: 1).bytes == [9])
        // Strict unmap invalidates the stream's TLB at the sync; lazy leaves a stale window.
        #expect(domain.unmap(iova: IOVA(0x4000), length: 16384) == 16384)
        #expect(m.platform.dmaRead(device: id, address: 0x4000, length: 1).outcome.fault?.reason == .translation)
        try domain.map(iova: IOVA(0x4000), paddr: frame, length: 16384, prot: [.read, .write])
        _ = m.platform.dmaRead(device: id, address: 0x4000, length: 1)
        var gather = IOTLBGather(queued: true)
        _ = domain.unmapFast(iova: IOVA(0x4000), length: 16384, gather: &gather)
        #expect(m.platform.dmaRead(device: id, address: 0x4000, length: 1).outcome.usedStaleTLBEntry)
        domain.flushIOTLBAll()
        #expect(m.platform.dmaRead(device: id, address: 0x4000, length: 1).outcome.fault != nil)
        #expect(dart.tlbStatistics.staleHits == 1)
    }

    @Test func dartPageLargerThanCPUPageGivesIdentityAndRefusesPaging() throws {
        let m = TestMachine(cpuPageSize: .size4K)
        m.addDART("dart0")
        let driver = try m.registerDART("dart0", options: .init(mainlineFinaliseCheck: true))
        let id = try m.core.addDevice(.platform("isp", iommu: FirmwareIOMMUSpec(iommu: "dart0", streamIDs: [StreamID(1)])))
        #expect(driver.defaultDomainType(for: m.core.deviceInfo(id)!) == .identity)
        #expect(m.core.domain(for: id)?.type == .identity)
        // Mainline's own refusal: EINVAL from finalise, before the core's check.
        let dma = try m.core.allocateDomain(type: .dma, for: id)
        #expect(throws: IOMMUError(.invalidArgument, device: id)) { try m.core.attachDevice(dma, to: id) }
    }

    @Test func dartWithoutBypassOnA4KCPUIsUnusable() throws {
        let m = TestMachine(cpuPageSize: .size4K)
        m.addDART("dart0") { $0.supportsBypass = false }
        let driver = try m.registerDART("dart0")
        let id = try m.core.addDevice(.platform("isp", iommu: FirmwareIOMMUSpec(iommu: "dart0", streamIDs: [StreamID(1)])))
        // The page-size test comes first: identity is requested, and its attach fails.
        #expect(driver.defaultDomainType(for: m.core.deviceInfo(id)!) == .identity)
        #expect(m.core.probeState(of: id) == .probeFailed(.invalidArgument))
    }

    @Test func dartWithoutBypassAndMatchingPagesRequestsDMA() throws {
        let m = TestMachine(cpuPageSize: .size16K, defaultDomainType: .identity)
        m.addDART("dart0") { $0.supportsBypass = false }
        let driver = try m.registerDART("dart0")
        let id = try m.core.addDevice(.platform("isp", iommu: FirmwareIOMMUSpec(iommu: "dart0", streamIDs: [StreamID(1)])))
        #expect(driver.defaultDomainType(for: m.core.deviceInfo(id)!) == .dma)
        #expect(m.core.domain(for: id)?.type == .dma)
    }

    @Test func streamIndexOutOfRangeIsEINVAL() throws {
        let m = TestMachine(cpuPageSize: .size16K)
        m.addDART("dart0")
        try m.registerDART("dart0")
        let id = try m.core.addDevice(.platform("isp", iommu: FirmwareIOMMUSpec(iommu: "dart0", streamIDs: [StreamID(16)])))
        #expect(m.core.probeState(of: id) == .probeFailed(.invalidArgument))
    }
}
