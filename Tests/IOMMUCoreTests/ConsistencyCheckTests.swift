import IOMMUBase
import IOMMUTestSupport
import Testing
@testable import IOMMUCore

/// `IOMMUCore.checkConsistency()` after random workloads, and a deliberately broken link.
@Suite("Core consistency checker")
struct CoreConsistencyCheckTests {
    @Test(arguments: TestSupport.propertySeeds)
    func randomWorkloadStaysConsistent(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let h = Harness()
        let driver = FakeIOMMUDriver()
        try h.core.registerIOMMU(name: "smmu0", driver: driver)
        var devices: [DeviceID] = []
        var userDomains: [(IOMMUDomain, Int)] = []
        var owned: Set<Int> = []
        for step in 0..<300 {
            switch rng.next() % 7 {
            case 0, 1:
                let name = "d\(step)"
                let join = !devices.isEmpty && rng.next() % 3 == 0 ? devices[Int(rng.next() % UInt64(devices.count))] : nil
                driver.configure { $0.groupChoices[name] = join.map { .sameGroupAs($0) } ?? .newGroup }
                devices.append(try h.core.addDevice(.platform(name, iommu: spec("smmu0", UInt32(step)))))
            case 2 where !devices.isEmpty:
                let id = devices[Int(rng.next() % UInt64(devices.count))]
                guard let group = h.core.groupID(of: id) else { break }
                if owned.contains(group) {
                    if let index = userDomains.firstIndex(where: { $0.1 == group }) {
                        h.core.detachGroup(userDomains[index].0, fromGroup: group)
                        try h.core.freeDomain(userDomains.remove(at: index).0)
                    }
                    h.core.releaseDMAOwnership(ofGroup: group)
                    owned.remove(group)
                } else if (try? h.core.claimDMAOwnership(ofGroup: group, owner: DMAOwner(7))) != nil {
                    owned.insert(group)
                }
            case 3 where !devices.isEmpty:
                let id = devices[Int(rng.next() % UInt64(devices.count))]
                guard let group = h.core.groupID(of: id), owned.contains(group),
                      !userDomains.contains(where: { $0.1 == group }) else { break }
                let domain = try h.core.allocateDomain(type: .unmanaged, for: id)
                if (try? h.core.attachGroup(domain, toGroup: group)) != nil {
                    userDomains.append((domain, group))
                } else {
                    try h.core.freeDomain(domain)
                }
            case 4 where !devices.isEmpty:
                let id = devices[Int(rng.next() % UInt64(devices.count))]
                if h.core.boundDriver(of: id) == nil { try? h.core.bindDriver(id, name: "drv") } else { h.core.unbindDriver(id) }
            case 5 where !devices.isEmpty:
                let index = Int(rng.next() % UInt64(devices.count))
                let id = devices[index]
                if let group = h.core.groupID(of: id), owned.contains(group) { break }
                h.core.unbindDriver(id)
                try h.core.removeDevice(id)
                devices.remove(at: index)
            default:
                if let group = h.core.groupIDs.first, let reference = h.core.groupReference(id: group) {
                    #expect(reference.info.referenceCount >= 2)
                }
            }
            #expect(h.core.checkConsistency() == [], "seed \(seed) step \(step)")
        }
    }

    @Test func aBrokenGroupLinkIsReported() throws {
        let h = Harness()
        try h.core.registerIOMMU(name: "smmu0", driver: FakeIOMMUDriver())
        let id = try h.core.addDevice(.platform("d0", iommu: spec("smmu0", 1)))
        #expect(h.core.checkConsistency() == [])
        // Break it: the group forgets its device, and its ID leaves the allocator.
        h.core.state.withLock { s in
            let serial = s.devices[id]!.groupSerial!
            s.groups[serial]!.devices = []
            s.usedGroupIDs = []
        }
        let problems = h.core.checkConsistency()
        #expect(problems.count >= 2)
        #expect(problems.allSatisfy { $0.component == "core" })
        #expect(problems.contains { $0.message.contains("appears 0 times") })
    }
}
