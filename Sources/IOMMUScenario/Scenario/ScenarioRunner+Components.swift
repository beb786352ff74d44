import DMAMapping
import IOMMUHardware
import IOVAAllocator
import VirtioIOMMU

/// Read-only access to the model objects a runner built, for checkers outside the module (the
/// `FuzzScenario` target): each offers `checkConsistency()`. Call with no step running.
extension ScenarioRunner {
    /// The Arm SMMU drivers of the platform, in `iommus:` order (DART instances are left out).
    public var smmuDrivers: [ARMSMMUDriver] {
        scenario.platform.iommus.compactMap { spec in
            if case .smmu(_, let driver)? = hardware[spec.name] { return driver }
            return nil
        }
    }

    /// The virtio-iommu device (`virtio-iommu:`), if the platform has one.
    public var virtioDevice: VirtioIOMMUDevice? { virtio?.device }

    /// The IOVA domains `iova-alloc`/`iova-free` steps created (one per DMA domain they used).
    public var stepIOVADomains: [IOVADomain] { iovaDomains.keys.sorted().map { iovaDomains[$0]! } }

    /// The DMA-API layer of `dma-*` steps (its cookies hold IOVA domains of their own).
    public var dmaAPI: DMAAPI { dmaLayer.api }
}
