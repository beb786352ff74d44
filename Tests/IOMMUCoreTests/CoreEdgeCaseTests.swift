import IOMMUBase
import IOMMUCore
import IOMMUTestSupport
import Testing

/// The "Edge cases and their results (IOMMU core)" list of the reference, §3, one test each,
/// plus attach/detach/ownership rules of §3.4.
@Suite("IOMMU core edge cases")
struct CoreEdgeCaseTests {
    func setUp(_ configure: (inout FakeIOMMUDriver.Config) -> Void = { _ in }) throws -> (Harness, FakeIOMMUDriver) {
        let h = Harness()
        let driver = FakeIOMMUDriver(configure)
        try h.core.registerIOMMU(name: "smmu0", driver: driver)
        return (h, driver)
    }

    @Test func attachToAGroupOnAnotherNonDefaultDomainIsEBUSY() throws {
        let (h, _) = try setUp()
        let id = try h.core.addDevice(.pci(pciAddress(0, 3), iommu: spec("smmu0", 1)))
        let first = try h.core.allocateDomain(type: .unmanaged, for: id)
        let second = try h.core.allocateDomain(type: .unmanaged, for: id)
        try h.core.attachDevice(first, to: id)
        #expect(throws: IOMMUError(.busy)) { try h.core.attachDevice(second, to: id) }
        #expect(h.core.domain(for: id) === first)
        try h.core.attachDevice(first, to: id)  // the same domain again: fine
        h.core.detachDevice(first, from: id)
        try h.core.attachDevice(second, to: id)  // from the default domain: fine
        #expect(h.core.domain(for: id) === second)
    }

    @Test func attachDeviceOnAMultiDeviceGroupIsEINVALAndAGrouplessDeviceIsENODEV() throws {
        let (h, _) = try setUp()
        let a = try h.core.addDevice(.pci(pciAddress(0, 1, 0), iommu: spec("smmu0", 1), acsIsolated: false))
        let b = try h.core.addDevice(.pci(pciAddress(0, 1, 1), iommu: spec("smmu0", 2), acsIsolated: false))
        #expect(h.core.groupID(of: a) == h.core.groupID(of: b))
        let domain = try h.core.allocateDomain(type: .unmanaged, for: a)
        #expect(throws: IOMMUError(.invalidArgument, device: a)) { try h.core.attachDevice(domain, to: a) }
        // The group API has no one-device rule.
        try h.core.attachGroup(domain, toGroup: h.core.groupID(of: a)!)
        #expect(h.core.dmaPath(for: b).domain === domain)

        let deferred = try h.core.addDevice(.platform("late", iommu: spec("smmu9", 1)))
        let noIOMMU = try h.core.addDevice(.platform("plain", iommu: nil))
        #expect(throws: IOMMUError(.noSuchDevice, device: deferred)) { try h.core.attachDevice(domain, to: deferred) }
        #expect(throws: IOMMUError(.noSuchDevice, device: noIOMMU)) { try h.core.attachDevice(domain, to: noIOMMU) }
        #expect(h.core.probeState(of: noIOMMU) == .noIOMMU)
        guard case .noIOMMU = h.core.dmaPath(for: noIOMMU) else {
            Issue.record("a device without IOMMU DMAs directly")
            return
        }
    }

    @Test func groupIDsAreReusedLowestFirstAndFollowProbeOrder() throws {
        let (h, _) = try setUp()
        let ids = try (0..<4).map { try h.core.addDevice(.platform("d\($0)", iommu: spec("smmu0", UInt32($0)))) }
        #expect(ids.map { h.core.groupID(of: $0) } == [0, 1, 2, 3])
        try h.core.removeDevice(ids[2])
        try h.core.removeDevice(ids[0])
        #expect(h.core.groupIDs == [1, 3])
        let e = try h.core.addDevice(.platform("e", iommu: spec("smmu0", 9)))
        let f = try h.core.addDevice(.platform("f", iommu: spec("smmu0", 10)))
        let g = try h.core.addDevice(.platform("g", iommu: spec("smmu0", 11)))
        #expect([e, f, g].map { h.core.groupID(of: $0) } == [0, 2, 4])
    }

    @Test func aDeviceJoiningAnOwnedGroupIsNotAttachedToTheDefaultDomain() throws {
        let (h, driver) = try setUp()
        let a = try h.core.addDevice(.pci(pciAddress(0, 1, 0), iommu: spec("smmu0", 1), acsIsolated: false))
        let group = try #require(h.core.groupID(of: a))
        try h.core.claimDMAOwnership(ofGroup: group, owner: DMAOwner(1))
        let blocking = try #require(h.core.groupInfo(id: group)?.blockingDomain)
        driver.clearEvents()
        let b = try h.core.addDevice(.pci(pciAddress(0, 1, 1), iommu: spec("smmu0", 2), acsIsolated: false))
        #expect(h.core.groupID(of: b) == group)
        #expect(driver.recorded == [.probe("0000:00:01.1"), .attach("0000:00:01.1", blocking.serial)])
        guard case .blocked(let domain) = h.core.dmaPath(for: b), domain === blocking else {
            Issue.record("joined an owned group but is not blocked")
            return
        }
    }

    @Test func failingNonDMADefaultDomainFallsBackToDMA() throws {
        let (h, _) = try setUp {
            $0.defaultTypes["d"] = .identity
            $0.unsupportedTypes = [IOMMUDomainType.identity.rawValue]
        }
        let id = try h.core.addDevice(.platform("d", iommu: spec("smmu0", 1)))
        #expect(h.core.defaultDomain(for: id)?.type == .dma)
        #expect(h.warnings.warnings == [.defaultDomainFallbackToDMA(group: 0, requestedType: 4)])
        #expect(h.warnings.warnings[0].description
            == "Failed to allocate default IOMMU domain of type 4 for group 0 - Falling back to IOMMU_DOMAIN_DMA")
    }

    @Test func failingDMADefaultDomainLeavesTheProbeFailedAndNothingLeaked() throws {
        let (h, driver) = try setUp { $0.unsupportedTypes = [IOMMUDomainType.dma.rawValue] }
        let id = try h.core.addDevice(.platform("d", iommu: spec("smmu0", 1)))
        #expect(h.core.probeState(of: id) == .probeFailed(.notSupported))
        #expect(h.core.groupIDs.isEmpty)
        #expect(h.core.dmaPath(for: id).isBlocked)
        #expect(driver.recorded == [.probe("d"), .release("d")])
        #expect(h.traceLines == [
            "add_device_to_group: IOMMU: groupID=0 device=d", "remove_device_from_group: IOMMU: groupID=0 device=d",
        ])
    }

    @Test func conflictingDefaultTypesInAGroupWarnAndUseTheGlobalDefault() throws {
        let h = Harness(defaultDomainType: .dma)
        let driver = FakeIOMMUDriver {
            $0.defaultTypes["0000:00:01.0"] = .identity
            $0.defaultTypes["0000:00:01.1"] = .dmaFQ
            $0.deferProbes = 0
        }
        // Both devices appear before the IOMMU: one batch, one poll over the group.
        let a = try h.core.addDevice(.pci(pciAddress(0, 1, 0), iommu: spec("smmu0", 1), acsIsolated: false))
        let b = try h.core.addDevice(.pci(pciAddress(0, 1, 1), iommu: spec("smmu0", 2), acsIsolated: false))
        try h.core.registerIOMMU(name: "smmu0", driver: driver)
        #expect(h.core.defaultDomain(for: a)?.type == .dma)
        #expect(h.warnings.warnings == [.defaultDomainTypeConflict(device: b, type: 11, otherDevice: a, otherType: 4)])
        #expect(h.warnings.warnings[0].description
            == "device#2: Device needs domain type Translated, but device device#1 in the same iommu group requires type Passthrough - using default")
    }

    @Test func untrustedDevicesGetAStrictDMADomain() throws {
        let h = Harness(defaultDomainType: .dmaFQ)
        let driver = FakeIOMMUDriver {
            $0.capabilities = [.deferredFlush]
            $0.defaultTypes["0000:07:00.0"] = .identity
        }
        try h.core.registerIOMMU(name: "smmu0", driver: driver)
        let trusted = try h.core.addDevice(.pci(pciAddress(6, 0), iommu: spec("smmu0", 1)))
        let external = try h.core.addDevice(.pci(pciAddress(7, 0), iommu: spec("smmu0", 2), untrusted: true))
        #expect(h.core.defaultDomain(for: trusted)?.type == .dmaFQ)
        #expect(h.core.defaultDomain(for: external)?.type == .dma)
        #expect(h.warnings.warnings == [.untrustedDeviceForcedToDMA(device: external, group: 1, requestedType: 4)])
    }

    @Test func dmaFQNeedsTheDeferredFlushCapability() throws {
        let h = Harness(defaultDomainType: .dmaFQ)
        try h.core.registerIOMMU(name: "smmu0", driver: FakeIOMMUDriver())
        let id = try h.core.addDevice(.platform("d", iommu: spec("smmu0", 1)))
        #expect(h.core.defaultDomain(for: id)?.type == .dma)
        let h2 = Harness(defaultDomainType: .identity)
        try h2.core.registerIOMMU(name: "smmu0", driver: FakeIOMMUDriver())
        let id2 = try h2.core.addDevice(.platform("d", iommu: spec("smmu0", 1)))
        guard case .identity = h2.core.dmaPath(for: id2) else {
            Issue.record("passthrough default not identity")
            return
        }
    }

    @Test func pciAliasesAndACSDecideGroups() throws {
        let (h, _) = try setUp()
        // A PCIe-to-PCI bridge's devices alias to the bridge's requester ID.
        let bridge = pciAddress(2, 0)
        let x = try h.core.addDevice(.pci(pciAddress(3, 0), iommu: spec("smmu0", 1), dmaAliases: [bridge]))
        let y = try h.core.addDevice(.pci(pciAddress(3, 1), iommu: spec("smmu0", 2), dmaAliases: [bridge]))
        // ACS-isolated functions of one slot: separate groups.
        let p = try h.core.addDevice(.pci(pciAddress(4, 0, 0), iommu: spec("smmu0", 3)))
        let q = try h.core.addDevice(.pci(pciAddress(4, 0, 1), iommu: spec("smmu0", 4)))
        // Non-isolated functions on another bus share one.
        let r = try h.core.addDevice(.pci(pciAddress(5, 0, 0), iommu: spec("smmu0", 5), acsIsolated: false))
        let s = try h.core.addDevice(.pci(pciAddress(5, 1, 0), iommu: spec("smmu0", 6), acsIsolated: false))
        #expect(h.core.groupID(of: x) == h.core.groupID(of: y))
        #expect(h.core.groupID(of: p) != h.core.groupID(of: q))
        #expect(h.core.groupID(of: r) == h.core.groupID(of: s))
        #expect(h.core.groupIDs == [0, 1, 2, 3])
        #expect(h.core.groupInfo(id: 0)?.referenceCount == 2)
    }

    @Test func directRegionsAreIdentityMappedOncePerPageAcrossAGroup() throws {
        let (h, _) = try setUp {
            $0.regions["0000:00:01.0"] = [ReservedRegion(start: 0x8000_0800, length: 0x2000, prot: [.read, .write], type: .direct)]
        }
        let a = try h.core.addDevice(.pci(pciAddress(0, 1, 0), iommu: spec("smmu0", 1), acsIsolated: false))
        // The peer's firmware region overlaps: already-mapped pages are skipped, no EEXIST.
        let b = try h.core.addDevice(.pci(
            pciAddress(0, 1, 1), iommu: spec("smmu0", 2), acsIsolated: false,
            firmwareReservedRegions: [ReservedRegion(start: 0x8000_2000, length: 0x3000, prot: .read, type: .directRelaxable)]))
        let domain = try #require(h.core.defaultDomain(for: b))
        #expect(domain === h.core.defaultDomain(for: a))
        // Start and end are rounded *up*: [0x80001000, 0x80003000) for a, then [0x80003000, 0x80005000) for b.
        #expect(domain.fake.mappings.keys.sorted() == [0x8000_1000, 0x8000_2000, 0x8000_3000, 0x8000_4000])
        #expect(domain.iovaToPhys(IOVA(0x8000_3010)) == PhysAddr(0x8000_3010))
        #expect(h.warnings.warnings.isEmpty)
        #expect(h.traceLines.filter { $0.hasPrefix("map:") } == [
            "map: IOMMU: iova=0x0000000080001000 - 0x0000000080003000 paddr=0x0000000080001000 size=8192",
            "map: IOMMU: iova=0x0000000080003000 - 0x0000000080005000 paddr=0x0000000080003000 size=8192",
        ])
    }

    @Test func unmanagedDomainsGetNoDirectMappings() throws {
        let (h, _) = try setUp {
            $0.regions["d"] = [ReservedRegion(start: 0x8000_0000, length: 0x1000, prot: .read, type: .direct)]
        }
        let id = try h.core.addDevice(.platform("d", iommu: spec("smmu0", 1)))
        #expect(h.core.defaultDomain(for: id)?.fake.mappings.count == 1)
        let user = try h.core.allocateDomain(type: .unmanaged, for: id)
        try h.core.attachDevice(user, to: id)
        #expect(user.fake.mappings.isEmpty)
    }

    @Test func failedAddToAnAttachedGroupIsUnwoundWithoutAnAddEvent() throws {
        let (h, driver) = try setUp { $0.failAttach = ["0000:00:01.1"] }
        let a = try h.core.addDevice(.pci(pciAddress(0, 1, 0), iommu: spec("smmu0", 1), acsIsolated: false))
        _ = h.trace.drain()
        let b = try h.core.addDevice(.pci(pciAddress(0, 1, 1), iommu: spec("smmu0", 2), acsIsolated: false))
        #expect(h.core.probeState(of: b) == .probeFailed(.noSuchDevice))
        #expect(h.traceLines.isEmpty)
        #expect(h.warnings.warnings == [.failedToAddToGroup(device: b, group: 0, errno: 19)])
        #expect(h.core.groupInfo(id: 0)?.devices == [a])
        #expect(h.core.groupInfo(id: 0)?.referenceCount == 1)
        #expect(driver.recorded.last == .release("0000:00:01.1"))
    }

    @Test func detachMisuseWarnsAndChangesNothing() throws {
        let (h, _) = try setUp()
        let a = try h.core.addDevice(.pci(pciAddress(0, 1, 0), iommu: spec("smmu0", 1), acsIsolated: false))
        let user = try h.core.allocateDomain(type: .unmanaged, for: a)
        h.core.detachDevice(user, from: a)
        #expect(h.warnings.drain() == [.detachOfDomainNotAttached(device: a)])
        let b = try h.core.addDevice(.pci(pciAddress(0, 1, 1), iommu: spec("smmu0", 2), acsIsolated: false))
        try h.core.attachGroup(user, toGroup: 0)
        h.core.detachDevice(user, from: b)
        #expect(h.warnings.drain() == [.detachFromMultiDeviceGroup(device: b, deviceCount: 2)])
        #expect(h.core.domain(for: a) === user)
        _ = h.trace.drain()
        h.core.detachGroup(user, fromGroup: 0)
        #expect(h.core.domain(for: a) === h.core.defaultDomain(for: a))
        #expect(h.traceLines == [
            "detach_device_from_domain: IOMMU: device=0000:00:01.0",
            "detach_device_from_domain: IOMMU: device=0000:00:01.1",
            "attach_device_to_domain: IOMMU: device=0000:00:01.0",
            "attach_device_to_domain: IOMMU: device=0000:00:01.1",
        ])
    }

    @Test func aFailedGroupAttachPutsEveryDeviceBack() throws {
        let (h, driver) = try setUp()
        let a = try h.core.addDevice(.pci(pciAddress(0, 1, 0), iommu: spec("smmu0", 1), acsIsolated: false))
        let b = try h.core.addDevice(.pci(pciAddress(0, 1, 1), iommu: spec("smmu0", 2), acsIsolated: false))
        let defaultDomain = try #require(h.core.defaultDomain(for: a))
        let user = try h.core.allocateDomain(type: .unmanaged, for: a)
        driver.configure { $0.failAttach = ["0000:00:01.1"] }
        #expect(throws: IOMMUError(.noSuchDevice, device: b)) { try h.core.attachGroup(user, toGroup: 0) }
        #expect(h.core.dmaPath(for: a).domain === defaultDomain)
        #expect(h.core.dmaPath(for: b).domain === defaultDomain)
        #expect(h.core.domain(for: a) === defaultDomain)
    }

    @Test func iovaToPhysFollowsTheDomainType() throws {
        let (h, _) = try setUp()
        let id = try h.core.addDevice(.platform("d", iommu: spec("smmu0", 1)))
        let identity = try h.core.allocateDomain(type: .identity, for: id)
        let blocked = try h.core.allocateDomain(type: .blocked, for: id)
        let paging = try h.core.allocateDomain(type: .unmanaged, for: id)
        #expect(identity.iovaToPhys(IOVA(0xABC000)) == PhysAddr(0xABC000))
        #expect(blocked.iovaToPhys(IOVA(0xABC000)) == nil)
        #expect(paging.iovaToPhys(IOVA(0xABC000)) == nil)
        try h.core.freeDomain(identity)
        #expect(identity.isFreed)
        try h.core.attachDevice(paging, to: id)
        #expect(throws: IOMMUError(.busy)) { try h.core.freeDomain(paging) }
    }
}

@Suite("DMA ownership")
struct OwnershipTests {
    func setUp() throws -> (Harness, DeviceID, Int) {
        let h = Harness()
        try h.core.registerIOMMU(name: "smmu0", driver: FakeIOMMUDriver())
        let id = try h.core.addDevice(.pci(pciAddress(0, 3), iommu: spec("smmu0", 1)))
        return (h, id, h.core.groupID(of: id)!)
    }

    @Test func claimBlocksUntilTheOwnerAttachesAndReleaseRestoresTheDefault() throws {
        let (h, id, group) = try setUp()
        let defaultDomain = try #require(h.core.defaultDomain(for: id))
        try h.core.claimDMAOwnership(ofGroup: group, owner: DMAOwner(7))
        #expect(h.core.dmaPath(for: id).isBlocked)
        #expect(h.core.groupInfo(id: group)?.owner == DMAOwner(7))
        let user = try h.core.allocateDomain(type: .unmanaged, for: id)
        try h.core.attachDevice(user, to: id)
        guard case .translated(let domain) = h.core.dmaPath(for: id), domain === user else {
            Issue.record("not on the user domain")
            return
        }
        h.core.detachDevice(user, from: id)
        #expect(h.core.dmaPath(for: id).isBlocked)  // core domain of an owned group: blocking
        try h.core.attachDevice(user, to: id)
        h.core.releaseDMAOwnership(ofGroup: group)  // also forces the group off the user domain
        #expect(h.core.dmaPath(for: id).domain === defaultDomain)
        #expect(h.core.groupInfo(id: group)?.ownerCount == 0)
        #expect(h.warnings.warnings.isEmpty)
    }

    @Test func claimsFailWithEPERMWhenInUseAndEBUSYOffTheDefaultDomain() throws {
        let (h, id, group) = try setUp()
        try h.core.bindDriver(id, name: "nvme")
        #expect(throws: IOMMUError(.notPermitted)) { try h.core.claimDMAOwnership(ofGroup: group, owner: DMAOwner(1)) }
        #expect(throws: IOMMUError(.notPermitted, device: id)) { try h.core.claimDMAOwnership(of: id, owner: DMAOwner(1)) }
        h.core.unbindDriver(id)

        let user = try h.core.allocateDomain(type: .unmanaged, for: id)
        try h.core.attachDevice(user, to: id)  // a kernel user of an unmanaged domain
        #expect(throws: IOMMUError(.busy)) { try h.core.claimDMAOwnership(ofGroup: group, owner: DMAOwner(1)) }
        h.core.detachDevice(user, from: id)

        try h.core.bindDriver(id, name: "vfio-pci", driverManagedDMA: true)
        try h.core.claimDMAOwnership(of: id, owner: DMAOwner(1))
        try h.core.claimDMAOwnership(of: id, owner: DMAOwner(1))  // same owner: counted
        #expect(h.core.groupInfo(id: group)?.ownerCount == 2)
        #expect(throws: IOMMUError(.notPermitted, device: id)) { try h.core.claimDMAOwnership(of: id, owner: DMAOwner(2)) }
        h.core.releaseDMAOwnership(of: id)
        #expect(h.core.dmaPath(for: id).isBlocked)
        h.core.releaseDMAOwnership(of: id)
        #expect(!h.core.dmaPath(for: id).isBlocked)
        h.core.releaseDMAOwnership(of: id)
        #expect(h.warnings.warnings == [.unbalancedDMAOwnershipRelease(group: group)])
    }

    @Test func aDMAAPIDriverCannotBindToAnOwnedGroup() throws {
        let (h, id, group) = try setUp()
        try h.core.claimDMAOwnership(ofGroup: group, owner: DMAOwner(3))
        #expect(throws: IOMMUError(.busy, device: id)) { try h.core.bindDriver(id, name: "nvme") }
        try h.core.bindDriver(id, name: "vfio-pci", driverManagedDMA: true)
        #expect(throws: IOMMUError(.busy, device: id)) { try h.core.bindDriver(id, name: "again") }
        h.core.unbindDriver(id)
        h.core.unbindDriver(id)
        #expect(h.warnings.warnings == [.unbindOfUnboundDevice(device: id)])
    }

    @Test func blockedDomainFallsBackToAnEmptyPagingDomain() throws {
        let h = Harness()
        let driver = FakeIOMMUDriver { $0.unsupportedTypes = [IOMMUDomainType.blocked.rawValue] }
        try h.core.registerIOMMU(name: "smmu0", driver: driver)
        let id = try h.core.addDevice(.platform("d", iommu: spec("smmu0", 1)))
        try h.core.claimDMAOwnership(ofGroup: 0, owner: DMAOwner(1))
        let blocking = try #require(h.core.groupInfo(id: 0)?.blockingDomain)
        #expect(blocking.type == .unmanaged)
        guard case .blocked(let domain) = h.core.dmaPath(for: id), domain === blocking else {
            Issue.record("empty paging blocking domain not reported as blocked")
            return
        }
    }

    @Test func removingTheLastDeviceOfAnOwnedGroupWarns() throws {
        let (h, id, group) = try setUp()
        try h.core.claimDMAOwnership(ofGroup: group, owner: DMAOwner(3))
        try h.core.removeDevice(id)
        #expect(h.warnings.warnings == [.groupEmptiedWhileOwned(group: group)])
        #expect(h.core.groupIDs.isEmpty)
        #expect(h.core.liveDomainCount == 0)
    }
}

@Suite("require_direct (Linux 6.12)")
struct RequireDirectTests {
    @Test func aDeviceWithADirectRegionCannotBeClaimedOrBlocked() throws {
        let h = Harness()
        let driver = FakeIOMMUDriver {
            $0.regions["gpu"] = [ReservedRegion(start: 0x9000_0000, length: 0x1000, prot: .read, type: .direct)]
            $0.regions["usb"] = [ReservedRegion(start: 0x9100_0000, length: 0x1000, prot: .read, type: .directRelaxable)]
        }
        try h.core.registerIOMMU(name: "smmu0", driver: driver)
        let gpu = try h.core.addDevice(.platform("gpu", iommu: spec("smmu0", 1)))
        let usb = try h.core.addDevice(.platform("usb", iommu: spec("smmu0", 2)))
        let gpuGroup = try #require(h.core.groupID(of: gpu))
        #expect(throws: IOMMUError(.invalidArgument, device: gpu)) {
            try h.core.claimDMAOwnership(ofGroup: gpuGroup, owner: DMAOwner(1))
        }
        #expect(h.warnings.warnings == [.deviceRequiresDirectMapping(device: gpu)])
        #expect(h.core.groupInfo(id: gpuGroup)?.owner == nil)
        #expect(h.core.dmaPath(for: gpu).domain === h.core.defaultDomain(for: gpu))
        let blocked = try h.core.allocateDomain(type: .blocked, for: gpu)
        #expect(throws: IOMMUError(.invalidArgument, device: gpu)) { try h.core.attachDevice(blocked, to: gpu) }
        // An unmanaged domain is allowed (only blocking is refused), and relaxable regions never block.
        let user = try h.core.allocateDomain(type: .unmanaged, for: gpu)
        try h.core.attachDevice(user, to: gpu)
        try h.core.claimDMAOwnership(of: usb, owner: DMAOwner(2))
        #expect(h.core.dmaPath(for: usb).isBlocked)
    }
}
