import IOMMUBase
import IOMMUCore
import PhysicalMemory

// MARK: - Consistency checker (docs/reliability.md)

extension VFIOContainer {
    /// Cross-checks the container's redundant state and returns every disagreement (`[]`:
    /// consistent). Checked:
    ///
    /// - the mapping list is sorted, disjoint, non-empty sizes; `dmaAvailable + mappings ==
    ///   dma_entry_limit`; the count of mappings with an invalidated vaddr matches;
    /// - no IOMMU type set → no mappings and no domains;
    /// - a mapping is IOMMU-mapped exactly when the container has domains, and then its pinned
    ///   runs tile it exactly and **every domain translates** each run's first and last page to
    ///   the run's physical address (`IOMMUDomain.iovaToPhys`, i.e. the page table);
    /// - locked accounting: a mapping's `lockedPages` equals its pinned (non-PFNMAP) run pages
    ///   plus the externally pinned pages outside those runs, and per process the container's
    ///   charges do not exceed the process's `lockedPages`;
    /// - each domain record's groups are groups of the container and the core reports that
    ///   domain attached to them.
    ///
    /// Reads under the container lock; call it with no operation in flight for an exact answer.
    public func checkConsistency() -> [ConsistencyViolation] {
        state.withLock { s in
            var problems: [ConsistencyViolation] = []
            func report(_ message: String) { problems.append(ConsistencyViolation(component: "vfio", message: message)) }
            func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

            if Int(s.dmaAvail) + s.mappings.count != Int(configuration.dmaEntryLimit) {
                report("dma_avail \(s.dmaAvail) + \(s.mappings.count) mappings != limit \(configuration.dmaEntryLimit)")
            }
            let invalid = s.mappings.reduce(0) { $0 + ($1.vaddrInvalid ? 1 : 0) }
            if invalid != s.vaddrInvalidCount { report("vaddr_invalid_count \(s.vaddrInvalidCount) but \(invalid) invalidated mappings") }
            if s.type == nil && (!s.mappings.isEmpty || !s.domains.isEmpty) {
                report("no IOMMU type set but \(s.mappings.count) mappings and \(s.domains.count) domains")
            }
            var charged: [ObjectIdentifier: (HostMemory, UInt64)] = [:]
            for (index, m) in s.mappings.enumerated() {
                let name = "mapping [\(hex(m.iova)), \(hex(m.last))]"
                if m.size == 0 { report("\(name) has size 0") }
                if index > 0 && s.mappings[index - 1].last >= m.iova { report("\(name) overlaps or is out of order with its predecessor") }
                if m.iommuMapped == s.domains.isEmpty {
                    report("\(name) iommuMapped=\(m.iommuMapped) with \(s.domains.count) domains")
                }
                if !m.iommuMapped && !m.runs.isEmpty { report("\(name) not IOMMU-mapped but holds \(m.runs.count) pinned runs") }
                var offset: UInt64 = 0
                var pinnedPages: UInt64 = 0
                var externalInRuns = 0
                for run in m.runs {
                    if run.offset != offset { report("\(name): run at offset \(hex(run.offset)), expected \(hex(offset))") }
                    let length = UInt64(run.pages) << 12
                    offset = run.offset &+ length
                    if !run.pfnmap {
                        pinnedPages += UInt64(run.pages)
                        externalInRuns += externalPinsIn(m, run)
                    }
                    for page in Set([UInt64(0), UInt64(run.pages) - 1]) where run.pages > 0 {
                        let iova = m.iova &+ run.offset &+ (page << 12)
                        let expected = run.paddr &+ (page << 12)
                        for record in s.domains {
                            let got = record.domain.iovaToPhys(IOVA(iova))
                            if got?.rawValue != expected {
                                report("\(record.domain) translates \(hex(iova)) to \(got.map { hex($0.rawValue) } ?? "nothing"), pinned page is \(hex(expected))")
                            }
                        }
                    }
                }
                if m.iommuMapped && offset != m.size { report("\(name): pinned runs cover \(hex(offset)) of \(hex(m.size)) bytes") }
                let expectedLocked = pinnedPages + UInt64(m.pins.count - externalInRuns)
                if m.lockedPages != expectedLocked {
                    report("\(name): lockedPages \(m.lockedPages), expected \(expectedLocked) (pinned run pages + external pins outside runs)")
                }
                let key = ObjectIdentifier(m.process)
                charged[key] = (m.process, (charged[key]?.1 ?? 0) + m.lockedPages)
            }
            for (process, pages) in charged.values where pages > process.lockedPages {
                report("mappings charge \(pages) locked pages but the process accounts only \(process.lockedPages)")
            }
            let groupIDs = Set(s.groups.compactMap { group -> Int? in
                if case .iommu(let id) = group.kind { return id }
                return nil
            })
            for record in s.domains {
                if record.domain.isFreed { report("\(record.domain) is freed but still used") }
                for g in record.groups {
                    if !groupIDs.contains(g) { report("\(record.domain) lists group \(g), which is not in the container") }
                    if core.groupInfo(id: g)?.domain !== record.domain {
                        report("group \(g) is not attached to \(record.domain) in the core")
                    }
                }
            }
            return problems
        }
    }
}
