import IOMMUBase

extension VirtioIOMMUDevice {
    /// The shared checker shape: `mappingConsistencyViolations()` (the per-domain mapping
    /// records against the page tables, read with the hardware walker) plus, for each paging
    /// domain, the table's own leaves against the walker (`AnyIOPageTable.checkConsistency`).
    /// `[]`: consistent.
    public func checkConsistency() -> [ConsistencyViolation] {
        var problems = mappingConsistencyViolations().map { ConsistencyViolation(component: "virtio-iommu", message: $0) }
        problems += pageTableConsistencyViolations()
        return problems
    }
}

extension VirtioIOMMUDevice {
    /// Each paging domain's table leaves against the walker, under the device lock.
    func pageTableConsistencyViolations() -> [ConsistencyViolation] {
        state.withLock { s in
            var problems: [ConsistencyViolation] = []
            for id in s.domains.keys.sorted() {
                guard let ops = s.domains[id]!.ops else { continue }
                for violation in ops.table.checkConsistency(memory: memory) {
                    problems.append(ConsistencyViolation(component: "virtio-iommu", message: "domain \(id): \(violation.message)"))
                }
            }
            return problems
        }
    }
}
