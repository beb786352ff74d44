import IOMMUBase

// MARK: - Consistency checker (docs/reliability.md)

extension IOMMUCore {
    /// Cross-checks the registry's links and counts and returns every disagreement (`[]`:
    /// consistent). Checked:
    ///
    /// - device → group and group → device links agree both ways (a device is in exactly the
    ///   group it names, once), and a device in a group has an IOMMU instance that is registered;
    /// - every group holds at least one reference per device (and at least one in all);
    /// - group IDs are unique and exactly the allocated IDs (Linux's group IDA);
    /// - no group's current, default or blocking domain has been freed; a device a domain is
    ///   attached to through its group sees its group's current domain;
    /// - an owned group (`owner` set) has a positive owner count;
    /// - domains allocated ≥ domains freed.
    ///
    /// Reads under the registry lock.
    public func checkConsistency() -> [ConsistencyViolation] {
        let live = liveDomainCount
        return state.withLock { s in
            var problems: [ConsistencyViolation] = []
            func report(_ message: String) { problems.append(ConsistencyViolation(component: "core", message: message)) }
            if live < 0 { report("more domains freed than allocated (\(live) live)") }
            for (id, device) in s.devices {
                let name = device.info.name
                if s.deviceByName[name] != id { report("device \(name) is not found by its name") }
                guard let serial = device.groupSerial else { continue }
                guard let group = s.groups[serial] else {
                    report("device \(name) names group serial \(serial), which does not exist")
                    continue
                }
                let times = group.devices.filter { $0 == id }.count
                if times != 1 { report("device \(name) appears \(times) times in group \(group.id)") }
                if let instance = device.instance, s.instances[instance] == nil {
                    report("device \(name) is on unregistered IOMMU \(instance)")
                }
                if let attached = device.attached, attached !== group.domain, group.domain != nil {
                    report("device \(name) is attached to \(attached) but group \(group.id) is on \(group.domain!)")
                }
            }
            var ids = Set<Int>()
            for (serial, group) in s.groups {
                if !ids.insert(group.id).inserted { report("group ID \(group.id) is used twice") }
                if group.serial != serial { report("group \(group.id) is stored under serial \(serial) but is \(group.serial)") }
                for id in group.devices where s.devices[id]?.groupSerial != serial {
                    report("group \(group.id) lists device \(id) which does not name it")
                }
                if group.referenceCount < max(1, group.devices.count) {
                    report("group \(group.id) has \(group.referenceCount) references for \(group.devices.count) devices")
                }
                for (what, domain) in [("current", group.domain), ("default", group.defaultDomain), ("blocking", group.blockingDomain)] {
                    if let domain, domain.isFreed { report("group \(group.id)'s \(what) domain \(domain) is freed") }
                }
                if group.owner != nil && group.ownerCount <= 0 { report("group \(group.id) is owned with owner count \(group.ownerCount)") }
                if group.ownerCount < 0 { report("group \(group.id) has owner count \(group.ownerCount)") }
            }
            if ids != s.usedGroupIDs {
                report("allocated group IDs \(s.usedGroupIDs.sorted()) differ from live groups \(ids.sorted())")
            }
            return problems
        }
    }
}
