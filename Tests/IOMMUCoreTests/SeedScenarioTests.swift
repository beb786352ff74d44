import IOMMUBase
import IOMMUCore
import IOMMUTestSupport
import Testing

/// All orderings of `items`.
func permutations<T>(_ items: [T]) -> [[T]] {
    guard items.count > 1 else { return [items] }
    var result: [[T]] = []
    for (index, item) in items.enumerated() {
        var rest = items
        rest.remove(at: index)
        for tail in permutations(rest) { result.append([item] + tail) }
    }
    return result
}

/// The five registration events of seed scenario (a).
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

@Suite("Seed scenarios")
struct SeedScenarioTests {
    // MARK: (a) probe deferral in every order

    /// dev0 and dev1: functions 0 and 1 of one PCI slot without ACS, behind smmuA (one group);
    /// dev2: a platform device behind smmuB.
    static let descriptions: [DeviceDescription] = [
        .pci(pciAddress(0, 1, 0), iommu: spec("smmuA", 0x100), acsIsolated: false),
        .pci(pciAddress(0, 1, 1), iommu: spec("smmuA", 0x101), acsIsolated: false),
        .platform("gpu@40000000", iommu: spec("smmuB", 0x7)),
    ]
    static let iommuOf = ["smmuA", "smmuA", "smmuB"]
    static let names = ["0000:00:01.0", "0000:00:01.1", "gpu@40000000"]

    static let allOrders: [[RegistrationEvent]] = permutations([
        .device(0), .device(1), .device(2), .iommu("smmuA"), .iommu("smmuB"),
    ])

    @Test(arguments: allOrders)
    func deferredProbeCompletesInAnyOrder(order: [RegistrationEvent]) throws {
        let h = Harness()
        let drivers = ["smmuA": FakeIOMMUDriver(name: "smmuA-driver"), "smmuB": FakeIOMMUDriver(name: "smmuB-driver")]
        var ids: [Int: DeviceID] = [:]
        var registered: Set<String> = []
        // Expected group creation order: a group is created when its first device probes.
        var groupCreationOrder: [String] = []
        func noteProbed(_ index: Int) {
            let key = Self.iommuOf[index]  // one group per IOMMU in this topology
            if !groupCreationOrder.contains(key) { groupCreationOrder.append(key) }
        }

        for event in order {
            switch event {
            case let .device(index):
                let id = try h.core.addDevice(Self.descriptions[index])
                ids[index] = id
                if registered.contains(Self.iommuOf[index]) { noteProbed(index) }
            case let .iommu(name):
                try h.core.registerIOMMU(name: name, driver: drivers[name]!)
                registered.insert(name)
                for index in ids.keys.sorted() where Self.iommuOf[index] == name { noteProbed(index) }
            }
            // Between events: a device whose IOMMU is missing is deferred, has no group and
            // cannot DMA (never untranslated); and no driver can bind to it yet.
            for (index, id) in ids {
                if registered.contains(Self.iommuOf[index]) {
                    #expect(h.core.probeState(of: id) == .probed)
                    guard case let .translated(domain) = h.core.dmaPath(for: id) else {
                        Issue.record("device \(index) not translated after \(event)")
                        continue
                    }
                    #expect(domain === h.core.defaultDomain(for: id))
                } else {
                    #expect(h.core.probeState(of: id) == .deferred)
                    #expect(h.core.groupID(of: id) == nil)
                    guard case .notProbed = h.core.dmaPath(for: id) else {
                        Issue.record("deferred device \(index) can DMA after \(event)")
                        continue
                    }
                    #expect(throws: IOMMUError(.probeDeferred, device: id)) {
                        try h.core.bindDriver(id, name: "nvme")
                    }
                }
            }
        }

        // Final state: two groups, numbered in creation order, exact references.
        let groupA = try #require(h.core.groupID(of: ids[0]!))
        let groupB = try #require(h.core.groupID(of: ids[2]!))
        #expect(h.core.groupID(of: ids[1]!) == groupA)
        #expect(groupA == groupCreationOrder.firstIndex(of: "smmuA"))
        #expect(groupB == groupCreationOrder.firstIndex(of: "smmuB"))
        #expect(h.core.groupIDs == [0, 1])
        let infoA = try #require(h.core.groupInfo(id: groupA))
        let infoB = try #require(h.core.groupInfo(id: groupB))
        #expect(infoA.referenceCount == 2)
        #expect(infoB.referenceCount == 1)
        #expect(Set(infoA.devices) == [ids[0]!, ids[1]!])
        #expect(infoA.domain === infoA.defaultDomain)
        #expect(infoA.defaultDomain?.type == .dma)
        #expect(infoB.domain === infoB.defaultDomain)
        #expect(h.core.liveDomainCount == 2)

        // Each driver probed each of its devices once and released none.
        #expect(drivers["smmuA"]!.recorded.filter { if case .probe = $0 { true } else { false } }.count == 2)
        #expect(drivers["smmuA"]!.recorded.filter { if case .release = $0 { true } else { false } }.isEmpty)
        #expect(drivers["smmuB"]!.domainsAllocated.load(ordering: .relaxed) == 1)

        // Trace: one add and one attach per device, with the right group, nothing removed. A
        // device that founds its group (alone or in the same registration batch) is added, then
        // attached to the new default domain; one joining a group that already has a domain is
        // attached first, then added.
        let smmuAIndex = order.firstIndex(of: .iommu("smmuA"))!
        let bothBeforeSMMUA = [0, 1].allSatisfy { order.firstIndex(of: .device($0))! < smmuAIndex }
        let laterOfPair = order.firstIndex(of: .device(0))! < order.firstIndex(of: .device(1))! ? 1 : 0
        for index in 0..<3 {
            let name = Self.names[index]
            let group = index == 2 ? groupB : groupA
            let add = "add_device_to_group: IOMMU: groupID=\(group) device=\(name)"
            let attach = "attach_device_to_domain: IOMMU: device=\(name)"
            let joinsExistingDomain = index == laterOfPair && !bothBeforeSMMUA
            #expect(
                h.traceLines.filter { $0.hasSuffix(" device=\(name)") } == (joinsExistingDomain ? [attach, add] : [add, attach]),
                "\(order)")
        }
        #expect(!h.traceLines.contains { $0.hasPrefix("remove_device_from_group") })
        #expect(h.warnings.warnings.isEmpty)

        // Now a driver can bind.
        try h.core.bindDriver(ids[0]!, name: "nvme")
    }

    @Test func driverSaysProbeDeferUntilRetried() throws {
        let h = Harness()
        let driver = FakeIOMMUDriver { $0.deferProbes = 1 }
        try h.core.registerIOMMU(name: "smmu0", driver: driver)
        let id = try h.core.addDevice(.platform("dma@1000", iommu: spec("smmu0", 3)))
        #expect(h.core.probeState(of: id) == .deferred)
        #expect(h.core.dmaPath(for: id).isBlocked)
        #expect(h.core.groupIDs.isEmpty)
        h.core.retryDeferredProbes()
        #expect(h.core.probeState(of: id) == .probed)
        #expect(h.core.groupID(of: id) == 0)
        #expect(h.core.groupInfo(id: 0)?.referenceCount == 1)
    }

    @Test func registeringAnotherIOMMURetriesDeferredProbes() throws {
        let h = Harness()
        let driver = FakeIOMMUDriver { $0.deferProbes = 1 }
        try h.core.registerIOMMU(name: "smmu0", driver: driver)
        let id = try h.core.addDevice(.platform("dma@1000", iommu: spec("smmu0", 3)))
        #expect(h.core.probeState(of: id) == .deferred)
        try h.core.registerIOMMU(name: "smmu1", driver: FakeIOMMUDriver())
        #expect(h.core.probeState(of: id) == .probed)
    }

    // MARK: (b) shared group: refcount by construction

    @Test func sharedGroupDiesExactlyWhenTheLastDeviceLeavesAndItsIDIsReused() throws {
        let h = Harness()
        let driver = FakeIOMMUDriver {
            $0.groupChoices["dma@2000"] = .sameGroupAs(DeviceID(1))
        }
        try h.core.registerIOMMU(name: "smmu0", driver: driver)
        let first = try h.core.addDevice(.platform("dma@1000", iommu: spec("smmu0", 1)))
        let second = try h.core.addDevice(.platform("dma@2000", iommu: spec("smmu0", 1)))
        let other = try h.core.addDevice(.platform("other@3000", iommu: spec("smmu0", 2)))
        #expect(first == DeviceID(1))
        #expect(h.core.groupID(of: first) == 0)
        #expect(h.core.groupID(of: second) == 0)
        #expect(h.core.groupID(of: other) == 1)
        #expect(h.core.groupInfo(id: 0)?.referenceCount == 2)
        #expect(h.core.groupInfo(id: 0)?.devices == [first, second])
        let sharedDefault = try #require(h.core.groupInfo(id: 0)?.defaultDomain)
        #expect(h.core.liveDomainCount == 2)

        try h.core.removeDevice(first)
        #expect(h.core.groupInfo(id: 0)?.referenceCount == 1)
        #expect(h.core.groupInfo(id: 0)?.devices == [second])
        #expect(!sharedDefault.isFreed)
        #expect(h.core.dmaPath(for: second).domain === sharedDefault)

        try h.core.removeDevice(second)
        #expect(h.core.groupInfo(id: 0) == nil)
        #expect(h.core.groupIDs == [1])
        #expect(sharedDefault.isFreed)
        #expect(h.core.liveDomainCount == 1)
        #expect(driver.domainsFreed.load(ordering: .relaxed) == 1)

        // Lowest free ID is reused.
        let next = try h.core.addDevice(.platform("next@4000", iommu: spec("smmu0", 4)))
        #expect(h.core.groupID(of: next) == 0)
        #expect(h.core.groupIDs == [0, 1])

        #expect(h.traceLines.filter { $0.hasPrefix("remove_device_from_group") } == [
            "remove_device_from_group: IOMMU: groupID=0 device=dma@1000",
            "remove_device_from_group: IOMMU: groupID=0 device=dma@2000",
        ])
        #expect(driver.recorded.filter { if case .release = $0 { true } else { false } } == [
            .release("dma@1000"), .release("dma@2000"),
        ])
        #expect(h.warnings.warnings.isEmpty)
    }

    @Test func existingGroupChoiceAndOutstandingReferencesKeepTheGroupAlive() throws {
        let h = Harness()
        let driver = FakeIOMMUDriver { $0.groupChoices["b"] = .existingGroup(id: 0) }
        try h.core.registerIOMMU(name: "smmu0", driver: driver)
        let a = try h.core.addDevice(.platform("a", iommu: spec("smmu0", 1)))
        let b = try h.core.addDevice(.platform("b", iommu: spec("smmu0", 1)))
        #expect(h.core.groupInfo(id: 0)?.referenceCount == 2)

        guard let reference = h.core.groupReference(for: a) else {
            Issue.record("no group")
            return
        }
        #expect(reference.id == 0)
        #expect(h.core.groupInfo(id: 0)?.referenceCount == 3)
        let copy = reference.copy()
        #expect(h.core.groupInfo(id: 0)?.referenceCount == 4)
        copy.put()
        #expect(h.core.groupInfo(id: 0)?.referenceCount == 3)

        try h.core.removeDevice(a)
        try h.core.removeDevice(b)
        // No devices, but a holder: the group (and its ID) lives on.
        #expect(h.core.groupInfo(id: 0)?.referenceCount == 1)
        #expect(h.core.groupInfo(id: 0)?.devices == [])
        _ = try h.core.addDevice(.platform("c", iommu: spec("smmu0", 2)))
        #expect(h.core.groupIDs == [0, 1])

        reference.put()  // the last reference goes: group 0 is released
        #expect(h.core.groupIDs == [1])
        let again = h.core.groupReference(id: 0)
        let isNone: Bool = switch consume again {
        case .none: true
        case .some: false
        }
        #expect(isNone)
    }

    @Test func groupChoiceNamingNoGroupFailsTheProbeWithoutLeaking() throws {
        let h = Harness()
        let driver = FakeIOMMUDriver {
            $0.groupChoices["a"] = .existingGroup(id: 7)
            $0.groupErrors["b"] = IOMMUError(.outOfMemory)
        }
        try h.core.registerIOMMU(name: "smmu0", driver: driver)
        let a = try h.core.addDevice(.platform("a", iommu: spec("smmu0", 1)))
        let b = try h.core.addDevice(.platform("b", iommu: spec("smmu0", 2)))
        #expect(h.core.probeState(of: a) == .probeFailed(.invalidArgument))
        #expect(h.core.probeState(of: b) == .probeFailed(.noMemory))
        #expect(h.core.dmaPath(for: a).isBlocked)
        #expect(h.core.groupIDs.isEmpty)
        #expect(driver.recorded.filter { if case .release = $0 { true } else { false } } == [.release("a"), .release("b")])
        let c = try h.core.addDevice(.platform("c", iommu: spec("smmu0", 3)))
        #expect(h.core.groupID(of: c) == 0)
        #expect(h.traceLines.filter { $0.hasPrefix("add_device") } == ["add_device_to_group: IOMMU: groupID=0 device=c"])
    }

    // MARK: (c) unbind/rebind keeps group and translation

    @Test func unbindRebindAHundredTimesKeepsTheGroupAndTheDefaultDomain() throws {
        let h = Harness()
        let driver = FakeIOMMUDriver()
        try h.core.registerIOMMU(name: "smmu0", driver: driver)
        _ = try h.core.addDevice(.pci(pciAddress(0, 2), iommu: spec("smmu0", 0x20)))
        let id = try h.core.addDevice(.pci(pciAddress(0, 3), iommu: spec("smmu0", 0x30)))
        let groupID = try #require(h.core.groupID(of: id))
        let defaultDomain = try #require(h.core.defaultDomain(for: id))
        _ = h.trace.drain()
        driver.clearEvents()
        for round in 0..<100 {
            try h.core.bindDriver(id, name: round.isMultiple(of: 2) ? "nvme" : "vfio-pci", driverManagedDMA: !round.isMultiple(of: 2))
            #expect(h.core.groupInfo(id: groupID)?.ownerCount == (round.isMultiple(of: 2) ? 1 : 0))
            h.core.unbindDriver(id)
            #expect(h.core.groupID(of: id) == groupID)
            #expect(h.core.groupInfo(id: groupID)?.ownerCount == 0)
            guard case let .translated(domain) = h.core.dmaPath(for: id), domain === defaultDomain else {
                Issue.record("round \(round): device left its default domain")
                return
            }
        }
        #expect(h.core.groupInfo(id: groupID)?.referenceCount == 1)
        #expect(h.traceLines.isEmpty)  // no detach, no remove, no re-add
        #expect(driver.recorded.isEmpty)  // the IOMMU driver never released or re-attached it
        #expect(h.warnings.warnings.isEmpty)
    }

    // MARK: (d) attach-time page-size check

    /// A DART-like driver: 16K pages only; def_domain_type identity (as apple-dart on a 4K kernel).
    func dartLike(_ h: Harness, untrusted: Bool = false, finalise: Bool = false) throws -> (FakeIOMMUDriver, DeviceID) {
        let driver = FakeIOMMUDriver(name: "apple-dart") {
            if finalise {
                // Advertises 4K|16K until finalised to 16K: the check must see the final sizes.
                $0.pageSizes = PageSizeBitmap([.size4K, .size16K])
                $0.finalPageSizes = PageSizeBitmap([.size16K])
            } else {
                $0.pageSizes = PageSizeBitmap([.size16K])
            }
            $0.defaultTypes["0000:01:00.0"] = .identity
        }
        try h.core.registerIOMMU(name: "dart0", driver: driver)
        let id = try h.core.addDevice(.pci(pciAddress(1, 0), iommu: spec("dart0", 1), untrusted: untrusted))
        return (driver, id)
    }

    @Test(arguments: [false, true])
    func dmaDomainWith16KPagesOnA4KCPUFailsWithEFAULTAndRollsBack(finalisedLate: Bool) throws {
        let h = Harness(cpuPageSize: .size4K)
        let (driver, id) = try dartLike(h, finalise: finalisedLate)
        let identity = try #require(h.core.defaultDomain(for: id))
        #expect(identity.type == .identity)
        _ = h.trace.drain()
        driver.clearEvents()

        let dma = try h.core.allocateDomain(type: .dma, for: id)
        #expect(throws: IOMMUError(.badAddress, device: id)) { try h.core.attachDevice(dma, to: id) }
        #expect(h.warnings.warnings == [
            .iommuPagesCannotRepresentCPUPages(device: id, smallestIOMMUPageSize: 0x4000, cpuPageSize: 0x1000)
        ])
        #expect(h.warnings.warnings[0].description
            == "device#1: IOMMU pages cannot exactly represent CPU pages (smallest IOMMU page 16K, CPU page 4K)")
        // The check ran after the driver finalised and attached; then the old domain came back.
        #expect(driver.recorded == [
            .finalise(dma.serial), .attach("0000:01:00.0", dma.serial), .attach("0000:01:00.0", identity.serial),
        ])
        #expect(h.core.domain(for: id) === identity)
        guard case .identity(let current) = h.core.dmaPath(for: id), current === identity else {
            Issue.record("not rolled back to identity")
            return
        }
        #expect(h.traceLines.isEmpty)
    }

    @Test func trustedDeviceMayOptInToLargePages() throws {
        let h = Harness(cpuPageSize: .size4K)
        let (_, id) = try dartLike(h)
        let dma = try h.core.allocateDomain(type: .dma, for: id)
        dma.allowsLargePages = true
        try h.core.attachDevice(dma, to: id)
        #expect(h.core.domain(for: id) === dma)
        #expect(h.warnings.warnings.isEmpty)
        #expect(h.traceLines.last == "attach_device_to_domain: IOMMU: device=0000:01:00.0")
    }

    @Test func untrustedDeviceCannotOptInToLargePages() throws {
        let h = Harness(cpuPageSize: .size4K)
        let driver = FakeIOMMUDriver(name: "apple-dart") { $0.pageSizes = PageSizeBitmap([.size16K]) }
        try h.core.registerIOMMU(name: "dart0", driver: driver)
        // Untrusted: the default domain is forced to DMA, whose attach fails the check: the
        // probe fails, fully unwound.
        let id = try h.core.addDevice(.pci(pciAddress(1, 0), iommu: spec("dart0", 1), untrusted: true))
        #expect(h.core.probeState(of: id) == .probeFailed(.badAddress))
        #expect(h.core.dmaPath(for: id).isBlocked)
        #expect(h.core.groupIDs.isEmpty)
        #expect(h.core.liveDomainCount == 0)
        #expect(h.warnings.warnings == [
            .iommuPagesCannotRepresentCPUPages(device: id, smallestIOMMUPageSize: 0x4000, cpuPageSize: 0x1000)
        ])

        // And with a driver that gives it an identity default domain, an opted-in DMA domain
        // still fails.
        let h2 = Harness(cpuPageSize: .size4K)
        let driver2 = FakeIOMMUDriver(name: "apple-dart") { $0.pageSizes = PageSizeBitmap([.size16K]) }
        try h2.core.registerIOMMU(name: "dart0", driver: driver2)
        let id2 = try h2.core.addDevice(.pci(pciAddress(1, 0), iommu: spec("dart0", 1), untrusted: false))
        #expect(h2.core.probeState(of: id2) == .probeFailed(.badAddress))  // DMA default, 16K: refused
        let h3 = Harness(cpuPageSize: .size4K)
        let (_, trustedID) = try dartLike(h3, untrusted: false)
        let dma = try h3.core.allocateDomain(type: .unmanaged, for: trustedID)
        dma.allowsLargePages = true
        try h3.core.attachDevice(dma, to: trustedID)  // trusted: fine
        let h4 = Harness(cpuPageSize: .size4K)
        let (_, untrustedID) = try dartLike(h4, untrusted: true)
        #expect(h4.core.probeState(of: untrustedID) == .probeFailed(.badAddress))
    }

    @Test func untrustedDeviceWithOptedInDomainStillFails() throws {
        let h = Harness(cpuPageSize: .size4K)
        // 4K default (DMA) domains, but user (unmanaged) domains finalise to 16K.
        let driver = FakeIOMMUDriver {
            $0.pageSizes = PageSizeBitmap([.size4K, .size16K])
            $0.finalPageSizesByType[IOMMUDomainType.unmanaged.rawValue] = PageSizeBitmap([.size16K])
        }
        try h.core.registerIOMMU(name: "smmu0", driver: driver)
        let untrusted = try h.core.addDevice(.pci(pciAddress(5, 0), iommu: spec("smmu0", 1), untrusted: true))
        let trusted = try h.core.addDevice(.pci(pciAddress(6, 0), iommu: spec("smmu0", 2)))
        let defaultDomain = try #require(h.core.defaultDomain(for: untrusted))
        #expect(defaultDomain.type == .dma)

        let large = try h.core.allocateDomain(type: .unmanaged, for: untrusted)
        large.allowsLargePages = true
        #expect(throws: IOMMUError(.badAddress, device: untrusted)) { try h.core.attachDevice(large, to: untrusted) }
        #expect(h.warnings.drain() == [
            .iommuPagesCannotRepresentCPUPages(device: untrusted, smallestIOMMUPageSize: 0x4000, cpuPageSize: 0x1000)
        ])
        #expect(h.core.domain(for: untrusted) === defaultDomain)
        #expect(h.core.dmaPath(for: untrusted).domain === defaultDomain)

        // The same opted-in domain is accepted for a trusted device.
        try h.core.attachDevice(large, to: trusted)
        #expect(h.core.domain(for: trusted) === large)
        #expect(h.warnings.warnings.isEmpty)
    }

    @Test(arguments: [PageSize.size16K, .size64K])
    func sixteenKIOMMUPagesAreFineOnALargerCPUPage(cpuPage: PageSize) throws {
        let h = Harness(cpuPageSize: cpuPage)
        let (_, id) = try dartLike(h)
        let dma = try h.core.allocateDomain(type: .dma, for: id)
        try h.core.attachDevice(dma, to: id)
        #expect(h.core.domain(for: id) === dma)
        #expect(h.warnings.warnings.isEmpty)
    }
}
