import IOMMUBase
import IOMMUCore

// MARK: - Consistency checker (docs/reliability.md)

extension ARMSMMUDriver {
    /// Cross-checks the driver's stream-map bookkeeping against itself and against the SMMU's
    /// registers; returns every disagreement (`[]`: consistent). Checked:
    ///
    /// - each entry's user count equals its list of users; an entry in use has a valid SMR, a
    ///   free one an invalid SMR;
    /// - every master's indices name entries listing that master, and every user of an entry is
    ///   a master naming that entry;
    /// - the SMR and S2CR registers the hardware holds are the ones the driver tracks
    ///   (`arm_smmu_write_sme` was not skipped or left half done).
    public func checkConsistency() -> [ConsistencyViolation] {
        let registers = smmu.registerSnapshot()
        let smrCount = smmu.configuration.streamMatchRegisterCount
        return state.withLock { s in
            var problems: [ConsistencyViolation] = []
            func report(_ message: String) { problems.append(ConsistencyViolation(component: "arm-smmu", message: message)) }
            for (index, entry) in s.entries.enumerated() {
                if entry.count != entry.users.count { report("entry \(index): count \(entry.count) but \(entry.users.count) users") }
                if index < smrCount && (entry.count > 0) != entry.smr.valid {
                    report("entry \(index): \(entry.count) users but SMR valid=\(entry.smr.valid)")
                }
                for user in entry.users where s.masters[user]?.indices.contains(index) != true {
                    report("entry \(index) lists \(user), whose master configuration does not name it")
                }
                if index < smrCount && index < registers.smrs.count && registers.smrs[index].raw != entry.smr.raw {
                    report("SMR\(index) register \(registers.smrs[index]) differs from the driver's \(entry.smr)")
                }
                if index < registers.s2crs.count && registers.s2crs[index].raw != entry.s2cr.raw {
                    report("S2CR\(index) register \(registers.s2crs[index]) differs from the driver's \(entry.s2cr)")
                }
            }
            for (device, master) in s.masters {
                for index in master.indices where index >= s.entries.count || !s.entries[index].users.contains(device) {
                    report("master \(device) names entry \(index), which does not list it")
                }
            }
            return problems
        }
    }
}
