import IOMMUBase
import IOMMUCore

// MARK: - Consistency checker (docs/reliability.md)

extension AppleDARTDriver {
    /// Cross-checks each stream's registers against the domain the core has attached the
    /// stream's device to; returns every disagreement (`[]`: consistent). Checked, per stream of
    /// every probed master:
    ///
    /// - an identity domain has TCR = bypass (Linux `apple_dart_attach_dev_identity`), a
    ///   blocked domain or none has TCR = 0 and no valid TTBR (`apple_dart_attach_dev_blocked`);
    /// - a paging domain has the TCR and TTBRs of that domain's own page table
    ///   (`apple_dart_setup_translation`), so the hardware walks the table software maps into;
    /// - no stream is claimed by masters of two different groups;
    /// - every master's stream has a group token (`sid2group`) naming a master that uses it;
    ///
    /// and every stream no master uses is disabled (TCR = 0, no TTBR), as `releaseDevice` and a
    /// failed probe leave it. Call with no operation in flight.
    public func checkConsistency() -> [ConsistencyViolation] {
        let (masters, groups) = state.withLock { ($0.masters, $0.streamGroup) }
        var problems: [ConsistencyViolation] = []
        func report(_ message: String) { problems.append(ConsistencyViolation(component: "apple-dart", message: message)) }
        var owner: [Int: DeviceID] = [:]
        for (device, streams) in masters.sorted(by: { $0.key < $1.key }) {
            let domain = core.domain(for: device)
            var expectedTCR: UInt32 = 0
            var expectedTTBRs: [UInt32] = []
            var what = "no domain"
            if let domain {
                what = "domain#\(domain.serial) (\(domain.type.sysfsName))"
                switch domain.type {
                case .identity: expectedTCR = DARTRegister.tcrBypassDART
                case .blocked: break
                default:
                    guard let ops = domain.ops as? DARTDomainOps, ops.driver === self, case .dart(let r)? = ops.tableRegisters else {
                        report("\(device) is attached to \(what), which has no DART page table of \(dart.instanceName)")
                        continue
                    }
                    expectedTCR = r.tcr
                    expectedTTBRs = r.ttbrs
                }
            }
            for stream in streams {
                // Devices may share a stream only inside one group (Linux: `sid2group`).
                if let other = owner.updateValue(device, forKey: stream), core.groupID(of: other) != core.groupID(of: device) {
                    report("stream \(stream) belongs to both \(other) and \(device), which are in different groups")
                }
                if stream < groups.count, groups[stream] == nil { report("stream \(stream) of master \(device) has no group token") }
                guard stream < dart.configuration.streamCount else {
                    report("\(device) names stream \(stream), beyond the DART's \(dart.configuration.streamCount) streams")
                    continue
                }
                let registers = dart.readStream(stream)
                let expected = (expectedTTBRs + [0, 0, 0, 0]).prefix(4)
                if registers.tcr != expectedTCR || !registers.ttbrs.elementsEqual(expected) {
                    report("stream \(stream) of \(device): TCR 0x\(String(registers.tcr, radix: 16)) TTBRs \(registers.ttbrs.map { "0x" + String($0, radix: 16) }) "
                        + "but \(device) is on \(what): expected TCR 0x\(String(expectedTCR, radix: 16)) TTBRs \(expected.map { "0x" + String($0, radix: 16) })")
                }
            }
        }
        for stream in 0..<min(dart.configuration.streamCount, groups.count) {
            if let token = groups[stream], masters[token]?.contains(stream) != true {
                report("stream \(stream)'s group token \(token) is not a master using it")
            }
        }
        for stream in 0..<dart.configuration.streamCount where owner[stream] == nil {
            let registers = dart.readStream(stream)
            if registers.tcr != 0 || registers.ttbrs.contains(where: { $0 != 0 }) {
                report("stream \(stream) is used by no device but is enabled (TCR 0x\(String(registers.tcr, radix: 16)))")
            }
        }
        return problems
    }
}
