import IOMMUBase
import IOMMUCore
import IOMMUHardware
import IOMMUTestSupport
import IOPageTable
import PhysicalMemory
import Testing

/// The rest of the core's public mutating operations under the same `fail_nth` sweep as
/// `FailNthSweepTests` (which covers probe, ownership, allocate+attach, map, mapSG and a
/// splitting unmap). Operations with a fallible step are swept until they succeed; operations
/// with none must succeed at n = 1 without consulting any injector — that is asserted, so a new
/// allocation added to one of them later shows up here.
extension FailNthSweepTests {
    static let deviceName = "0000:00:03.0"

    func deviceID(_ f: Fixture) -> DeviceID { f.core.device(named: Self.deviceName)! }
    func groupOf(_ f: Fixture) -> Int { f.core.groupID(of: deviceID(f))! }

    /// Sweeps an operation that must not consult `injector` at all: it succeeds at n = 1.
    func expectInfallible(_ injector: Injector, _ label: String,
                          setUp: @escaping (Fixture) throws -> Void,
                          attempt: @escaping (Fixture) throws -> Bool,
                          tearDown: @escaping (Fixture) throws -> Void,
                          sourceLocation: SourceLocation = #_sourceLocation) throws {
        let n = try sweep(injector, label, setUp: setUp, attempt: attempt, afterFailure: { _, n in
            Issue.record("\(label) [\(injector)] failed at n=\(n): it has no fallible step", sourceLocation: sourceLocation)
        }, tearDown: tearDown)
        #expect(n == 1, "\(label) [\(injector)] consulted the injector", sourceLocation: sourceLocation)
    }

    // MARK: Fallible

    /// `setDefaultDomainType` allocates, finalises and attaches a new default domain: on a
    /// failure the call reports it and the group keeps its old default domain, attached.
    @Test(arguments: Injector.allCases)
    func changeDefaultDomainType(_ injector: Injector) throws {
        let n = try sweep(injector, "setDefaultDomainType(DMA -> identity)", setUp: { f in
            try f.core.addDevice(f.description)
        }, attempt: { f in
            do { try f.core.setDefaultDomainType(ofGroup: groupOf(f), to: "identity") } catch { return false }
            // A failure must be reported, never swallowed: no error means the type changed.
            #expect(f.core.defaultDomainTypeText(ofGroup: groupOf(f)) == "identity")
            return true
        }, afterFailure: { f, n in
            let info = try #require(f.core.groupInfo(id: groupOf(f)))
            #expect(f.core.defaultDomainTypeText(ofGroup: groupOf(f)) == "DMA", "n=\(n): the old type stays")
            #expect(info.domain === info.defaultDomain, "n=\(n): still attached to the old default domain")
            #expect(f.core.liveDomainCount == 1, "n=\(n): the new domain was freed")
        }, tearDown: removeAll)
        // The core allocates the new domain and the driver finalises it, so both are consulted;
        // an identity domain on the SMMU uses bypass S2CRs, not page tables.
        #expect(injector == .frames || n > 1)
    }

    @Test(arguments: Injector.allCases)
    func attachDeviceToAUserDomain(_ injector: Injector) throws {
        try sweep(injector, "allocateDomain+attachDevice", setUp: ownedSetUp, attempt: { f in
            let domain: IOMMUDomain
            do { domain = try f.core.allocateDomain(type: .unmanaged, for: deviceID(f)) } catch { return false }
            do {
                try f.core.attachDevice(domain, to: deviceID(f))
            } catch {
                try f.core.freeDomain(domain)
                return false
            }
            return f.core.domain(for: deviceID(f)) === domain
        }, afterFailure: { f, _ in
            let info = try #require(f.core.groupInfo(id: groupOf(f)))
            #expect(info.domain === info.blockingDomain, "still on the blocking domain")
        }, tearDown: teardownOwned)
    }

    // MARK: Infallible (no allocation, nothing external that can fail)

    @Test(arguments: Injector.allCases)
    func infallibleTeardownOperations(_ injector: Injector) throws {
        try expectInfallible(injector, "removeDevice", setUp: { f in try f.core.addDevice(f.description) }, attempt: { f in
            try f.core.removeDevice(deviceID(f))
            return f.core.device(named: Self.deviceName) == nil
        }, tearDown: removeAll)

        for managed in [false, true] {
            try expectInfallible(injector, "bindDriver(driverManagedDMA: \(managed))", setUp: { f in
                try f.core.addDevice(f.description)
            }, attempt: { f in
                try f.core.bindDriver(deviceID(f), name: "drv", driverManagedDMA: managed)
                return f.core.boundDriver(of: deviceID(f)) == "drv"
            }, tearDown: { f in
                f.core.unbindDriver(deviceID(f))
                try removeAll(f)
            })
        }

        try expectInfallible(injector, "unbindDriver", setUp: { f in
            try f.core.addDevice(f.description)
            try f.core.bindDriver(deviceID(f), name: "vfio-pci", driverManagedDMA: true)
        }, attempt: { f in
            f.core.unbindDriver(deviceID(f))
            return f.core.boundDriver(of: deviceID(f)) == nil && f.core.groupInfo(id: groupOf(f))?.owner == nil
        }, tearDown: removeAll)

        try expectInfallible(injector, "releaseDMAOwnership", setUp: ownedSetUp, attempt: { f in
            f.core.releaseDMAOwnership(ofGroup: groupOf(f))
            let info = f.core.groupInfo(id: groupOf(f))!
            return info.owner == nil && info.domain === info.defaultDomain
        }, tearDown: removeAll)

        try expectInfallible(injector, "detachGroup+freeDomain", setUp: attachedSetUp, attempt: { f in
            let domain = attachedDomain(f)
            f.core.detachGroup(domain, fromGroup: groupOf(f))
            try f.core.freeDomain(domain)
            return f.core.groupInfo(id: groupOf(f))!.domain === f.core.groupInfo(id: groupOf(f))!.blockingDomain
        }, tearDown: teardownOwned)

        try expectInfallible(injector, "detachDevice", setUp: attachedSetUp, attempt: { f in
            let domain = attachedDomain(f)
            f.core.detachDevice(domain, from: deviceID(f))
            try f.core.freeDomain(domain)
            return f.core.domain(for: deviceID(f)) === f.core.groupInfo(id: groupOf(f))!.blockingDomain
        }, tearDown: teardownOwned)

        try expectInfallible(injector, "setDefaultDomainType(DMA -> DMA-FQ) in place", setUp: { f in
            try f.core.addDevice(f.description)
        }, attempt: { f in
            try f.core.setDefaultDomainType(ofGroup: groupOf(f), to: "DMA-FQ")
            return ["DMA-FQ", "DMA"].contains(f.core.defaultDomainTypeText(ofGroup: groupOf(f)))
        }, tearDown: removeAll)
    }

    @Test(arguments: Injector.allCases)
    func infallibleMappingOperations(_ injector: Injector) throws {
        // 16 KiB of 4 KiB pages: the tables exist after set-up, so unmapping allocates nothing.
        let mapped: (Fixture) throws -> Void = { f in
            try attachedSetUp(f)
            try attachedDomain(f).map(iova: IOVA(0x4000_0000), paddr: PhysAddr(0x8000_0000), length: 0x4000, prot: [.read, .write])
        }
        let unmapAll: (Fixture) throws -> Void = { f in
            _ = attachedDomain(f).unmap(iova: IOVA(0x4000_0000), length: 0x4000)
            try teardownOwned(f)
        }
        try expectInfallible(injector, "domain.unmap (pages)", setUp: mapped, attempt: { f in
            attachedDomain(f).unmap(iova: IOVA(0x4000_0000), length: 0x4000) == 0x4000
                && attachedDomain(f).iovaToPhys(IOVA(0x4000_0000)) == nil
        }, tearDown: unmapAll)

        try expectInfallible(injector, "domain.unmapFast+iotlbSync", setUp: mapped, attempt: { f in
            var gather = IOTLBGather()
            let n = attachedDomain(f).unmapFast(iova: IOVA(0x4000_1000), length: 0x2000, gather: &gather)
            attachedDomain(f).iotlbSync(&gather)
            return n == 0x2000 && attachedDomain(f).iovaToPhys(IOVA(0x4000_1000)) == nil
                && attachedDomain(f).iovaToPhys(IOVA(0x4000_0000)) == PhysAddr(0x8000_0000)
        }, tearDown: unmapAll)

        try expectInfallible(injector, "domain.flushIOTLBAll", setUp: mapped, attempt: { f in
            attachedDomain(f).flushIOTLBAll()
            return attachedDomain(f).iovaToPhys(IOVA(0x4000_3000)) == PhysAddr(0x8000_3000)
        }, tearDown: unmapAll)

        try expectInfallible(injector, "reportFault", setUp: mapped, attempt: { f in
            let fault = IOMMUFault(device: deviceID(f), iova: IOVA(0x5000_0000), isWrite: false, reason: .translation)
            _ = f.core.reportFault(fault)
            return true
        }, tearDown: unmapAll)
    }
}
