import IOMMUBase
import IOMMUCore
import IOMMUTestSupport
import Testing

/// Holds a noncopyable group reference so that tests can keep many in an array.
final class ReferenceHolder {
    var reference: IOMMUGroupReference?
    let groupKey: Int
    init(_ reference: consuming IOMMUGroupReference, groupKey: Int) {
        self.reference = consume reference
        self.groupKey = groupKey
    }
}

@Suite("Group lifetime against a model")
struct GroupLifetimePropertyTests {
    /// The model: groups keyed by a serial, each with an ID, members and outstanding references.
    struct ModelGroup {
        var id: Int
        var members: Set<DeviceID>
        var references: Int
    }

    @Test(arguments: TestSupport.propertySeeds)
    func randomAddRemoveGetPutMatchesTheModel(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let h = Harness()
        let driver = FakeIOMMUDriver()
        try h.core.registerIOMMU(name: "smmu0", driver: driver)
        var model: [Int: ModelGroup] = [:]  // key: model serial
        var groupOf: [DeviceID: Int] = [:]
        var holders: [ReferenceHolder] = []
        var nextKey = 0
        var nextName = 0

        func lowestFreeID() -> Int {
            let used = Set(model.values.map(\.id))
            var id = 0
            while used.contains(id) { id += 1 }
            return id
        }
        func dropIfDead(_ key: Int) {
            if let group = model[key], group.members.isEmpty, group.references == 0 { model[key] = nil }
        }

        for step in 0..<400 {
            switch rng.next() % 4 {
            case 0, 1:  // add a device: new group, or join a live device's group
                let name = "d\(nextName)"
                nextName += 1
                let devices = Array(groupOf.keys).sorted()
                let join = !devices.isEmpty && rng.next() % 2 == 0 ? devices[Int(rng.next() % UInt64(devices.count))] : nil
                driver.configure { $0.groupChoices[name] = join.map { .sameGroupAs($0) } ?? .newGroup }
                let id = try h.core.addDevice(.platform(name, iommu: spec("smmu0", UInt32(step))))
                if let join {
                    let key = groupOf[join]!
                    model[key]!.members.insert(id)
                    groupOf[id] = key
                } else {
                    model[nextKey] = ModelGroup(id: lowestFreeID(), members: [id], references: 0)
                    groupOf[id] = nextKey
                    nextKey += 1
                }
            case 2:  // remove a device
                guard let victim = groupOf.keys.sorted().randomElement(using: &rng) else { continue }
                try h.core.removeDevice(victim)
                let key = groupOf.removeValue(forKey: victim)!
                model[key]!.members.remove(victim)
                dropIfDead(key)
            default:  // take a reference, or put one
                if rng.next() % 2 == 0, let device = groupOf.keys.sorted().randomElement(using: &rng) {
                    let key = groupOf[device]!
                    guard let reference = h.core.groupReference(for: device) else {
                        Issue.record("no group for a grouped device")
                        return
                    }
                    holders.append(ReferenceHolder(reference, groupKey: key))
                    model[key]!.references += 1
                } else if !holders.isEmpty {
                    let holder = holders.remove(at: Int(rng.next() % UInt64(holders.count)))
                    holder.reference = nil
                    model[holder.groupKey]!.references -= 1
                    dropIfDead(holder.groupKey)
                }
            }

            // The core agrees with the model after every step.
            #expect(h.core.groupIDs == model.values.map(\.id).sorted(), "step \(step)")
            for group in model.values {
                let info = h.core.groupInfo(id: group.id)
                #expect(info?.referenceCount == group.members.count + group.references, "step \(step)")
                #expect(Set(info?.devices ?? []) == group.members, "step \(step)")
            }
            for (device, key) in groupOf { #expect(h.core.groupID(of: device) == model[key]!.id) }
            #expect(h.core.liveDomainCount == model.count)
            #expect(driver.domainsAllocated.load(ordering: .relaxed) - driver.domainsFreed.load(ordering: .relaxed) == model.count)
        }
        holders.removeAll()
        for device in groupOf.keys { try h.core.removeDevice(device) }
        #expect(h.core.groupIDs.isEmpty)
        #expect(h.core.liveDomainCount == 0)
        #expect(h.warnings.warnings.isEmpty)
    }
}
