import IOMMUBase
import IOMMUCore
import IOMMUHardware
import IOMMUTestSupport
import IOPageTable
import PhysicalMemory
import Testing

/// iommufd-style `fail_nth` sweeps over the IOMMU core driving a real Arm SMMU (model + driver,
/// real page tables): for each public mutating operation and each injector (frame allocator,
/// SMMU driver, core domain allocation), fail the n-th fallible call for n = 1, 2, … until the
/// operation succeeds. After every failure: the documented effect only, no frame or domain
/// leaked (checked after tearing the fixture down), consistency checkers clean, and the system
/// still works (the operation succeeds once disarmed).
@Suite("fail_nth sweeps: core + SMMU")
struct FailNthSweepTests {
    typealias Injector = SweepInjector

    /// A machine with one SMMU registered; `dev` not yet added.
    final class Fixture: SweepFixture {
        let machine = TestMachine()
        let driver: ARMSMMUDriver
        let description = DeviceDescription.pci(PCIAddress(bus: 0, device: 3, function: 0),
                                                iommu: FirmwareIOMMUSpec(iommu: "smmu0", streamIDs: [StreamID(0x300), StreamID(0x301)]))
        init() throws {
            machine.addSMMU("smmu0")
            driver = try machine.registerSMMU("smmu0", options: .init(disableBypass: true))
        }
        var core: IOMMUCore { machine.core }
        func injector(_ kind: Injector) -> FailNth {
            switch kind {
            case .frames: machine.frames.failNth
            case .driver: driver.failNth
            case .core: core.domainAllocationFailNth
            }
        }
        func expectConsistent(_ label: String, sourceLocation: SourceLocation = #_sourceLocation) {
            #expect(core.checkConsistency() == [], "\(label)", sourceLocation: sourceLocation)
            #expect(driver.checkConsistency() == [], "\(label)", sourceLocation: sourceLocation)
        }
    }

    /// Walks n = 1, 2, … : `setUp` builds a fresh fixture state, `attempt` runs the operation
    /// with the injector armed (true: it succeeded), `afterFailure` checks the documented effect.
    /// Returns the n at which the operation first succeeded.
    @discardableResult
    func sweep(_ injector: Injector, _ label: String, limit: Int = 64,
               setUp: (Fixture) throws -> Void = { _ in },
               attempt: (Fixture) throws -> Bool,
               afterFailure: (Fixture, Int) throws -> Void,
               tearDown: (Fixture) throws -> Void,
               sourceLocation: SourceLocation = #_sourceLocation) throws -> Int {
        try failNthSweep(Fixture.self, injector, label, limit: limit, setUp: setUp, attempt: attempt,
                         afterFailure: afterFailure, tearDown: tearDown, sourceLocation: sourceLocation)
    }

    func removeAll(_ f: Fixture) throws {
        for id in f.core.devices(onBus: "pci") { try f.core.removeDevice(id) }
    }

    @Test(arguments: Injector.allCases)
    func probeThroughAddDevice(_ injector: Injector) throws {
        let n = try sweep(injector, "addDevice", attempt: { f in
            if let id = f.core.device(named: "0000:00:03.0") { try f.core.removeDevice(id) }
            let id = try f.core.addDevice(f.description)
            return f.core.probeState(of: id) == .probed && f.core.domain(for: id) != nil
        }, afterFailure: { f, n in
            // Documented partial effect (Linux too): the device exists, its probe failed, it holds
            // no group, no stream-map entries and no domain.
            let id = try #require(f.core.device(named: "0000:00:03.0"))
            guard case .probeFailed = f.core.probeState(of: id) else {
                Issue.record("n=\(n): probe state \(String(describing: f.core.probeState(of: id)))")
                return
            }
            #expect(f.core.groupID(of: id) == nil)
            #expect(f.driver.streamMapIndices(of: id) == nil)
            #expect(f.core.liveDomainCount == 0)
            #expect(f.machine.frames.framesInUse == 0)
        }, tearDown: removeAll)
        #expect(n > 1 || injector == .core, "the \(injector) injector is consulted during probe")
    }

    /// A probed device whose group is owned (blocking domain) plus an unmanaged domain.
    func ownedSetUp(_ f: Fixture) throws {
        let id = try f.core.addDevice(f.description)
        try f.core.claimDMAOwnership(ofGroup: f.core.groupID(of: id)!, owner: DMAOwner(1))
    }

    func teardownOwned(_ f: Fixture) throws {
        let id = f.core.device(named: "0000:00:03.0")!
        let group = f.core.groupID(of: id)!
        if let info = f.core.groupInfo(id: group), let domain = info.domain, domain !== info.blockingDomain,
           domain !== info.defaultDomain {
            f.core.detachGroup(domain, fromGroup: group)
            try f.core.freeDomain(domain)
        }
        if f.core.groupInfo(id: group)?.owner != nil { f.core.releaseDMAOwnership(ofGroup: group) }
        try removeAll(f)
    }

    @Test(arguments: Injector.allCases)
    func claimOwnership(_ injector: Injector) throws {
        try sweep(injector, "claimDMAOwnership", setUp: { f in
            try f.core.addDevice(f.description)
        }, attempt: { f in
            let group = f.core.groupID(of: f.core.device(named: "0000:00:03.0")!)!
            do { try f.core.claimDMAOwnership(ofGroup: group, owner: DMAOwner(1)) } catch { return false }
            return true
        }, afterFailure: { f, _ in
            let group = f.core.groupID(of: f.core.device(named: "0000:00:03.0")!)!
            let info = try #require(f.core.groupInfo(id: group))
            #expect(info.owner == nil)
            #expect(info.domain === info.defaultDomain, "still on the default domain")
        }, tearDown: teardownOwned)
    }

    @Test(arguments: Injector.allCases)
    func allocateAttachDetach(_ injector: Injector) throws {
        try sweep(injector, "allocateDomain+attachGroup", setUp: ownedSetUp, attempt: { f in
            let id = f.core.device(named: "0000:00:03.0")!
            let group = f.core.groupID(of: id)!
            let domain: IOMMUDomain
            do { domain = try f.core.allocateDomain(type: .unmanaged, for: id) } catch { return false }
            do {
                try f.core.attachGroup(domain, toGroup: group)
            } catch {
                try f.core.freeDomain(domain)
                return false
            }
            return true
        }, afterFailure: { f, _ in
            let group = f.core.groupID(of: f.core.device(named: "0000:00:03.0")!)!
            let info = try #require(f.core.groupInfo(id: group))
            #expect(info.domain === info.blockingDomain, "still on the blocking domain")
            #expect(f.core.liveDomainCount == 2, "default + blocking only")
        }, tearDown: teardownOwned)
    }

    /// Owned group attached to an unmanaged domain; `map` a 2 MiB + 12 KiB range.
    func attachedSetUp(_ f: Fixture) throws {
        try ownedSetUp(f)
        let id = f.core.device(named: "0000:00:03.0")!
        let domain = try f.core.allocateDomain(type: .unmanaged, for: id)
        try f.core.attachGroup(domain, toGroup: f.core.groupID(of: id)!)
    }

    func attachedDomain(_ f: Fixture) -> IOMMUDomain {
        f.core.domain(for: f.core.device(named: "0000:00:03.0")!)!
    }

    @Test(arguments: [Injector.frames])
    func domainMap(_ injector: Injector) throws {
        let n = try sweep(injector, "domain.map", setUp: attachedSetUp, attempt: { f in
            do {
                try attachedDomain(f).map(iova: IOVA(0x4000_0000), paddr: PhysAddr(0x8000_0000), length: 0x20_3000, prot: [.read, .write])
            } catch { return false }
            return true
        }, afterFailure: { f, _ in
            let domain = attachedDomain(f)
            for offset in stride(from: UInt64(0), to: 0x20_3000, by: 0x1000) {
                #expect(domain.iovaToPhys(IOVA(0x4000_0000 + offset)) == nil, "a failed map leaves nothing mapped")
            }
        }, tearDown: teardownOwned)
        #expect(n > 1)
    }

    @Test(arguments: [Injector.frames])
    func domainMapSG(_ injector: Injector) throws {
        let entries = [ScatterEntry(paddr: PhysAddr(0x8000_0000), length: 0x1000),
                       ScatterEntry(paddr: PhysAddr(0x8020_0000), length: 0x20_0000),
                       ScatterEntry(paddr: PhysAddr(0x9000_0000), length: 0x3000)]
        let n = try sweep(injector, "domain.mapSG", setUp: attachedSetUp, attempt: { f in
            do {
                let mapped = try attachedDomain(f).mapSG(iova: IOVA(0x7FFF_F000), entries: entries, prot: [.read])
                return mapped == 0x20_4000
            } catch { return false }
        }, afterFailure: { f, _ in
            let domain = attachedDomain(f)
            #expect(domain.iovaToPhys(IOVA(0x7FFF_F000)) == nil)
            #expect(domain.iovaToPhys(IOVA(0x8000_0000)) == nil)
        }, tearDown: teardownOwned)
        #expect(n > 1)
    }

    @Test(arguments: [Injector.frames])
    func domainUnmapSplittingABlock(_ injector: Injector) throws {
        // Unmapping 4 KiB out of a 2 MiB block needs a new table: it can fail (0 bytes unmapped,
        // the block intact), as Linux's arm_lpae_split_blk_unmap can.
        try sweep(injector, "domain.unmap (block split)", setUp: { f in
            try attachedSetUp(f)
            try attachedDomain(f).map(iova: IOVA(0x4000_0000), paddr: PhysAddr(0x8000_0000), length: 0x20_0000, prot: [.read, .write])
        }, attempt: { f in
            attachedDomain(f).unmap(iova: IOVA(0x4000_1000), length: 0x1000) == 0x1000
        }, afterFailure: { f, _ in
            let domain = attachedDomain(f)
            #expect(domain.iovaToPhys(IOVA(0x4000_1000)) == PhysAddr(0x8000_1000), "the block is intact")
            #expect(domain.iovaToPhys(IOVA(0x401F_F000)) == PhysAddr(0x801F_F000))
        }, tearDown: { f in
            _ = attachedDomain(f).unmap(iova: IOVA(0x4000_0000), length: 0x20_0000)
            try teardownOwned(f)
        })
    }

    @Test func contextBankExhaustionIsENOSPCAndRecoverable() throws {
        let f = try Fixture()
        try ownedSetUp(f)
        let id = f.core.device(named: "0000:00:03.0")!
        var domains: [IOMMUDomain] = []
        // 8 context banks; the default domain holds one. Fill the rest with finalised domains.
        for _ in 0..<7 {
            let d = try f.core.allocateDomain(type: .unmanaged, for: id)
            try f.core.attachGroup(d, toGroup: f.core.groupID(of: id)!)
            f.core.detachGroup(d, fromGroup: f.core.groupID(of: id)!)
            domains.append(d)
        }
        let extra = try f.core.allocateDomain(type: .unmanaged, for: id)
        #expect(throws: IOMMUError.self) { try f.core.attachGroup(extra, toGroup: f.core.groupID(of: id)!) }
        f.expectConsistent("exhausted")
        try f.core.freeDomain(domains.removeLast())
        try f.core.attachGroup(extra, toGroup: f.core.groupID(of: id)!)
        f.core.detachGroup(extra, fromGroup: f.core.groupID(of: id)!)
        try f.core.freeDomain(extra)
        for d in domains { try f.core.freeDomain(d) }
        try teardownOwned(f)
        #expect(f.machine.frames.framesInUse == 0)
        #expect(f.core.liveDomainCount == 0)
    }
}
