import IOMMUBase
import IOMMUCore

// MARK: - Consistency checker (docs/reliability.md)

extension AppleDARTDriver {
    /// Cross-checks the driver's master and stream-group bookkeeping against itself and against
    /// the DART's stream registers; returns every disagreement (`[]`: consistent). Checked:
    ///
    /// - every master's streams exist on the DART and have a group token (`sid2group`);
    /// - every stream's group token is a master that uses that stream;
    /// - a stream no master uses is disabled in hardware (TCR 0, no TTBR), as `releaseDevice`
    ///   and a failed probe leave it.
    ///
    /// Call with no operation in flight. No Linux counterpart.
    public func checkConsistency() -> [ConsistencyViolation] {
        let streamCount = dart.configuration.streamCount
        let (masters, groups) = state.withLock { ($0.masters, $0.streamGroup) }
        var problems: [ConsistencyViolation] = []
        func report(_ message: String) { problems.append(ConsistencyViolation(component: "apple-dart", message: message)) }
        var used = [Bool](repeating: false, count: streamCount)
        for (device, streams) in masters.sorted(by: { $0.key < $1.key }) {
            for stream in streams {
                guard stream >= 0 && stream < streamCount else {
                    report("master \(device) names stream \(stream), beyond the DART's \(streamCount)")
                    continue
                }
                used[stream] = true
                if groups[stream] == nil { report("stream \(stream) of master \(device) has no group token") }
            }
        }
        for stream in 0..<min(streamCount, groups.count) {
            if let token = groups[stream], masters[token]?.contains(stream) != true {
                report("stream \(stream)'s group token \(token) is not a master using it")
            }
            if !used[stream] {
                let registers = dart.readStream(stream)
                if registers.tcr != 0 || registers.ttbrs.contains(where: { $0 != 0 }) {
                    report("stream \(stream) has no master but is enabled (TCR 0x\(String(registers.tcr, radix: 16)))")
                }
            }
        }
        return problems
    }
}
