import IOMMUBase
import IOPageTable
import PhysicalMemory

extension SMMUDomainOps {
    /// The domain's page table against the hardware walker configured from its own registers
    /// (`AnyIOPageTable.checkConsistency(memory:)`); `[]` before the domain is finalised (no
    /// table yet) and after it is freed.
    ///
    /// Linux has no such check; it stands in for "what `arm_smmu_iova_to_phys` and the SMMU's
    /// table walk see agree". Call it with no map/unmap of this domain in flight.
    public func checkConsistency(memory: PhysicalMemory) -> [ConsistencyViolation] {
        guard contextBank != nil, let box else { return [] }
        return box.table.checkConsistency(memory: memory).map {
            ConsistencyViolation(component: "smmu domain (context bank \(contextBank ?? -1))", message: $0.description)
        }
    }
}
