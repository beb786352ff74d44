import IOMMUBase

extension IOVADomain {
    /// The shared checker shape over `checkInvariants()`: the range tree (ordering, augmented
    /// gaps, anchor, cached nodes) against the per-CPU magazines and the depot (and, with the
    /// checking policy, the allocation table). `[]`: consistent. Takes every lock.
    public func checkConsistency() -> [ConsistencyViolation] {
        checkInvariants().map { [ConsistencyViolation(component: "iova", message: $0)] } ?? []
    }
}
