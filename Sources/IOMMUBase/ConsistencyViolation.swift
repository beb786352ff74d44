/// One broken invariant found by a consistency checker.
///
/// Every top-level IOMMUKit object (`IOMMUCore`, `IOVADomain`, `ARMSMMUDriver`,
/// `AppleDARTDriver`, `DMACookie`, `VFIOContainer`, `VirtioIOMMUDevice`, page tables via
/// `HardwareWalker`; all of a scenario's at once: `ScenarioRunner.consistencyChecks()`, or
/// `iommu inspect --check`) offers `checkConsistency() -> [ConsistencyViolation]`: it
/// cross-checks its redundant state (mapping
/// lists against page tables, pin counts against accounting, reference counts against links)
/// and returns what does not agree; `[]` means consistent. Checkers only read; they take the
/// object's locks like any other reader, so call them when no operation is in flight if the
/// answer must be exact. Fuzz targets and fail_nth sweeps call them after every step.
public struct ConsistencyViolation: Hashable, Sendable, CustomStringConvertible {
    /// The component whose invariant is broken, e.g. "vfio", "core", "page-table", "iova".
    public var component: String
    /// What disagrees, with the addresses/IDs concerned.
    public var message: String

    public init(component: String, message: String) {
        self.component = component
        self.message = message
    }

    public var description: String { "\(component): \(message)" }
}
