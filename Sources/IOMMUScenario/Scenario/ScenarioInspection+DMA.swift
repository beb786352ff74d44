import DMAMapping
import IOMMUBase
import IOMMUCore

extension ScenarioRunner {
    /// The DMA layer's part of `iommu inspect`: each DMA-API domain's IOVA space and flush-queue
    /// state, and each device's live DMA mappings.
    func inspectDMA(into out: inout ScenarioInspection) {
        var seen = Set<ObjectIdentifier>()
        for spec in scenario.platform.devices {
            guard let dev = dmaLayer.devices[spec.name] else { continue }
            for m in dev.liveMappings.sorted(by: { $0.address < $1.address }) {
                out.dmaMappings.append("\(spec.name): \(m)")
            }
            guard let cookie = dev.cookie, seen.insert(ObjectIdentifier(cookie)).inserted else { continue }
            let serial = cookie.domain.serial
            let s = cookie.statistics
            let w = cookie.staleWindows.snapshot()
            let mode = cookie.lazy ? "lazy (\(cookie.flushQueueOptions.single ? "single queue" : "per-CPU queues"), \(cookie.flushQueueOptions.size) slots, \(cookie.flushQueueOptions.timeoutNanoseconds / 1_000_000) ms)" : "strict"
            out.flushQueues.append(
                "domain#\(serial) \(mode): queued \(s.queued), freed \(s.freedFromQueue), pending \(s.pending), flushes started \(s.flushesStarted) finished \(s.flushesFinished), timer \(s.timerArmed ? "armed (deadline \(s.timerDeadline) ns)" : "not armed"), stale windows \(w)")
            if iovaDomains[serial] == nil {
                let snap = cookie.iovad.snapshot()
                let shift = UInt64(cookie.iovad.granule.shift)
                let reserved = Set(snap.reserved.map { $0.first.rawValue })
                out.iovaSpaces.append(.init(
                    domainSerial: serial, granule: cookie.iovad.granule.bytes,
                    allocated: snap.nodes.filter { !reserved.contains($0.first.rawValue) }.map { ($0.first.rawValue << shift, (($0.last.rawValue + 1) << shift) - 1) },
                    reserved: snap.reserved.map { ($0.first.rawValue << shift, (($0.last.rawValue + 1) << shift) &- 1) }))
            }
        }
    }
}
