import IOMMUBase
import IOMMUCore
@testable import IOMMUHardware
import IOMMUTestSupport
import IOPageTable
import PhysicalMemory
import Testing

/// iommufd-style `fail_nth` sweeps over the core driving an Apple DART (model + driver, real
/// 16 KiB-page tables on a 16 KiB-page CPU, so DMA domains translate): probe through
/// `addDevice`, DMA ownership + attach of an unmanaged domain, map and unmap. After every
/// failure: the documented effect only, checkers clean (core, DART driver, page table), the
/// operation succeeds once disarmed; after teardown no frame or domain is left.
@Suite("fail_nth sweeps: core + Apple DART")
struct DARTFailNthSweepTests {
    typealias Injector = SweepInjector

    static let stream = 5

    /// A machine with one DART registered; the device not yet added.
    final class Fixture: SweepFixture {
        let machine = TestMachine(cpuPageSize: .size16K)
        let dart: DART
        let driver: AppleDARTDriver
        let description = DeviceDescription.platform("isp", iommu: FirmwareIOMMUSpec(iommu: "dart0", streamIDs: [StreamID(UInt32(DARTFailNthSweepTests.stream))]))
        init() throws {
            dart = machine.addDART("dart0")
            driver = try machine.registerDART("dart0")
        }
        var core: IOMMUCore { machine.core }
        var id: DeviceID? { core.device(named: "isp") }
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
            if let id, let ops = core.domain(for: id)?.ops as? DARTDomainOps {
                #expect(ops.checkPageTableConsistency() == [], "\(label)", sourceLocation: sourceLocation)
            }
        }
    }

    /// As `FailNthSweepTests.sweep`: n = 1, 2, … until the operation succeeds with nothing
    /// injected; a failure absorbed by a fallback counts as a success that fired.
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
        if let id = f.id { try f.core.removeDevice(id) }
        #expect(f.dart.readStream(Self.stream).tcr == 0, "the stream is disabled once its device is gone")
    }

    @Test(arguments: Injector.allCases)
    func probeThroughAddDevice(_ injector: Injector) throws {
        let n = try sweep(injector, "DART addDevice", attempt: { f in
            if let id = f.id { try f.core.removeDevice(id) }
            let id = try f.core.addDevice(f.description)
            return f.core.probeState(of: id) == .probed && f.core.domain(for: id)?.type == .dma
        }, afterFailure: { f, n in
            // Documented partial effect (Linux too): the device exists, its probe failed, it
            // holds no group, no master config and no domain; its stream stays disabled.
            let id = try #require(f.id)
            guard case .probeFailed(let errno) = f.core.probeState(of: id) else {
                Issue.record("n=\(n): probe state \(String(describing: f.core.probeState(of: id)))")
                return
            }
            #expect(errno == .noMemory)
            #expect(f.core.groupID(of: id) == nil)
            #expect(f.driver.streams(of: id) == nil)
            #expect(f.core.liveDomainCount == 0)
            #expect(f.machine.frames.framesInUse == 0)
            #expect(f.dart.readStream(Self.stream).tcr == 0)
        }, tearDown: removeAll)
        // Driver: master config, group config, paging domain. Core: the default domain.
        // Frames: the page table of the default domain.
        switch injector {
        case .driver: #expect(n == 4)
        case .core: #expect(n == 2)
        case .frames: #expect(n > 1)
        }
    }

    /// A probed device whose group is owned (blocking domain).
    func ownedSetUp(_ f: Fixture) throws {
        let id = try f.core.addDevice(f.description)
        try f.core.claimDMAOwnership(ofGroup: f.core.groupID(of: id)!, owner: DMAOwner(1))
    }

    func teardownOwned(_ f: Fixture) throws {
        let id = f.id!
        let group = f.core.groupID(of: id)!
        if let info = f.core.groupInfo(id: group), let domain = info.domain, domain !== info.blockingDomain,
           domain !== info.defaultDomain {
            _ = domain.unmap(iova: IOVA(0x10_0000), length: 0x4_0000)
            f.core.detachGroup(domain, fromGroup: group)
            try f.core.freeDomain(domain)
        }
        if f.core.groupInfo(id: group)?.owner != nil { f.core.releaseDMAOwnership(ofGroup: group) }
        try removeAll(f)
    }

    @Test(arguments: Injector.allCases)
    func claimOwnershipAllocateAndAttach(_ injector: Injector) throws {
        let n = try sweep(injector, "DART claimDMAOwnership+allocateDomain+attachGroup", setUp: { f in
            _ = try f.core.addDevice(f.description)
        }, attempt: { f in
            let id = f.id!
            let group = f.core.groupID(of: id)!
            if f.core.groupInfo(id: group)?.owner == nil {
                do { try f.core.claimDMAOwnership(ofGroup: group, owner: DMAOwner(1)) } catch { return false }
            }
            let domain: IOMMUDomain
            do { domain = try f.core.allocateDomain(type: .unmanaged, for: id) } catch { return false }
            do {
                try f.core.attachGroup(domain, toGroup: group)
            } catch {
                try f.core.freeDomain(domain)
                return false
            }
            return f.dart.readStream(Self.stream).tcr == DARTRegister.tcrTranslateEnable
        }, afterFailure: { f, _ in
            let group = f.core.groupID(of: f.id!)!
            let info = try #require(f.core.groupInfo(id: group))
            // Either the claim failed (still on the default domain, no owner) or the
            // allocation/attach did (on the blocking domain, the stream disabled).
            if info.owner == nil {
                #expect(info.domain === info.defaultDomain)
                #expect(f.core.liveDomainCount == 1)
            } else {
                #expect(info.domain === info.blockingDomain, "still on the blocking domain")
                #expect(f.core.liveDomainCount == 2, "default + blocking only")
                #expect(f.dart.readStream(Self.stream).tcr == 0)
            }
        }, tearDown: teardownOwned)
        switch injector {
        case .driver: #expect(n == 2, "the unmanaged domain; the blocking domain is static")
        case .core: #expect(n > 2, "the blocking domain and the unmanaged one")
        case .frames: #expect(n > 1, "the unmanaged domain's page table")
        }
    }

    /// Owned group attached to an unmanaged 16 KiB-page domain.
    func attachedSetUp(_ f: Fixture) throws {
        try ownedSetUp(f)
        let id = f.id!
        let domain = try f.core.allocateDomain(type: .unmanaged, for: id)
        try f.core.attachGroup(domain, toGroup: f.core.groupID(of: id)!)
    }

    func attachedDomain(_ f: Fixture) -> IOMMUDomain { f.core.domain(for: f.id!)! }

    @Test(arguments: Injector.allCases)
    func domainMapAndUnmap(_ injector: Injector) throws {
        // 256 KiB across the boundary of two second-level tables (each covers 32 MiB with 16 KiB
        // pages), so the map needs two new tables.
        let iova = IOVA(0x200_0000 - 0x2_0000)
        let paddr = PhysAddr(0x8800_0000)
        let n = try sweep(injector, "DART domain.map", setUp: attachedSetUp, attempt: { f in
            do { try attachedDomain(f).map(iova: iova, paddr: paddr, length: 0x4_0000, prot: [.read, .write]) } catch { return false }
            return attachedDomain(f).iovaToPhys(IOVA(iova.rawValue + 0x3_C000)) == PhysAddr(paddr.rawValue + 0x3_C000)
        }, afterFailure: { f, _ in
            let domain = attachedDomain(f)
            for offset in stride(from: UInt64(0), to: 0x4_0000, by: 0x4000) {
                #expect(domain.iovaToPhys(IOVA(iova.rawValue + offset)) == nil, "a failed map leaves nothing mapped")
            }
        }, tearDown: { f in
            #expect(attachedDomain(f).unmap(iova: iova, length: 0x4_0000) == 0x4_0000)
            try teardownOwned(f)
        })
        #expect(injector == .frames ? n == 3 : n == 1, "two table pages; nothing else fallible")

        // Unmap allocates nothing (one page size, no blocks to split): n = 1 for every injector.
        let m = try sweep(injector, "DART domain.unmap", setUp: { f in
            try attachedSetUp(f)
            try attachedDomain(f).map(iova: iova, paddr: paddr, length: 0x4_0000, prot: [.read])
        }, attempt: { f in
            attachedDomain(f).unmap(iova: IOVA(iova.rawValue + 0x1_0000), length: 0x2_0000) == 0x2_0000
                && attachedDomain(f).iovaToPhys(IOVA(iova.rawValue + 0x1_0000)) == nil
                && attachedDomain(f).iovaToPhys(iova) == paddr
        }, afterFailure: { _, n in Issue.record("unmap cannot fail (n=\(n))") }, tearDown: { f in
            _ = attachedDomain(f).unmap(iova: iova, length: 0x4_0000)
            try teardownOwned(f)
        })
        #expect(m == 1)
    }

    /// The DART checker can report: a stream left enabled with no master, a stale group token.
    @Test func checkerReportsAnEnabledOrphanStreamAndAStaleGroupToken() throws {
        let f = try Fixture()
        let id = try f.core.addDevice(f.description)
        #expect(f.driver.checkConsistency() == [])
        f.dart.writeStream(9, tcr: DARTRegister.tcrTranslateEnable, ttbrs: [0x1234])
        let orphan = f.driver.checkConsistency()
        #expect(orphan.count == 1 && orphan[0].component == "apple-dart" && orphan[0].message.contains("stream 9"))
        f.dart.writeStream(9, tcr: 0, ttbrs: [])
        #expect(f.driver.checkConsistency() == [])
        // Bookkeeping broken through internal state: a stream's group token naming a device that
        // is not its master, then a master's stream without a token.
        f.driver.state.withLock { $0.streamGroup[Self.stream] = DeviceID(999) }
        let stale = f.driver.checkConsistency()
        #expect(stale.count == 1 && stale[0].message.contains("group token \(DeviceID(999))"))
        f.driver.state.withLock { $0.streamGroup[Self.stream] = nil }
        let missing = f.driver.checkConsistency()
        #expect(missing.count == 1 && missing[0].message.contains("no group token"))
        f.driver.state.withLock { $0.streamGroup[Self.stream] = id }
        #expect(f.driver.checkConsistency() == [])
    }
}
