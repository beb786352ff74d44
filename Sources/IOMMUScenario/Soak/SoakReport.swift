import IOMMUBase

/// One kind of operation the soak performs. Raw values are the report's (and JSON's) keys.
public enum SoakOperation: String, CaseIterable, Sendable {
    /// `dma_map_page` on a strict (DMA) domain, checked with `dma_mapping_error`.
    case dmaMapPageStrict = "dma-map-page-strict"
    /// `dma_map_page` on a lazy (DMA-FQ) domain.
    case dmaMapPageLazy = "dma-map-page-lazy"
    /// `dma_map_page` of an unaligned buffer by an untrusted device: bounced through swiotlb.
    case dmaMapPageBounced = "dma-map-page-bounced"
    case dmaUnmapPage = "dma-unmap-page"
    case dmaMapSG = "dma-map-sg"
    case dmaUnmapSG = "dma-unmap-sg"
    case dmaAllocCoherent = "dma-alloc-coherent"
    case dmaFreeCoherent = "dma-free-coherent"
    /// A device read through the SMMU model (racing the other thread's unmaps).
    case deviceDMA = "device-dma"
    /// `iommu_map` in the racing domain.
    case racingMap = "racing-map"
    /// `iommu_unmap` + IOTLB invalidation in the racing domain, then a device read that must fault.
    case racingUnmap = "racing-unmap"
    case vfioMap = "vfio-map-dma"
    case vfioUnmap = "vfio-unmap-dma"
    /// `vfio_pin_pages` by the emulated (mdev-style) device.
    case vfioPin = "vfio-pin-pages"
    case vfioUnpin = "vfio-unpin-pages"
    case virtioAttach = "virtio-attach"
    case virtioMap = "virtio-map"
    case virtioUnmap = "virtio-unmap"
    /// `alloc_iova_fast`.
    case iovaAlloc = "iova-alloc"
    /// `free_iova_fast`.
    case iovaFree = "iova-free"
    /// `iommu_attach_device` to an unmanaged domain (then a device read through it).
    case coreAttach = "core-attach"
    /// `iommu_detach_device` (back to the default domain; a device read must fault).
    case coreDetach = "core-detach"
}

/// The outcome of a soak run (`iommu bench --soak`).
public struct SoakReport: Sendable {
    public var seed: UInt64
    public var threads: Int
    /// The duration asked for and the time the run took (setup, checks and teardown included).
    public var requestedNanoseconds: UInt64
    public var elapsedNanoseconds: UInt64 = 0
    /// Operations performed, per kind.
    public var operations: [SoakOperation: Int] = [:]
    /// Quiesced checkpoints (every `opsPerCheck` operations per thread, and the final one); each
    /// runs every checker in `checkers`.
    public var checkerRuns: Int = 0
    /// The checkers each checkpoint runs.
    public var checkers: [String] = []
    /// Broken invariants: checker reports, wrong operation results, leaks, unexpected warnings.
    /// Must be empty; the first 100 are kept (`violationCount` counts all).
    public var violations: [String] = []
    public var violationCount: Int = 0
    /// Warnings reported by the model, per `IOMMUWarning` case. The soak does only valid
    /// operations, so every warning is unexpected and also counts as a violation.
    public var warnings: [String: Int] = [:]
    /// Device reads that faulted as they should (after an unmap or a detach, or racing one).
    public var expectedFaults: Int = 0
    /// Device reads that used an IOTLB entry of a mapping being unmapped by the other thread.
    public var staleTLBReads: Int = 0
    /// Flush-queue timers that fired (lazy domain).
    public var flushQueueTimersFired: Int = 0
    /// Pages the emulated VFIO device unpinned from its unmap notifier.
    public var notifierUnpins: Int = 0

    public init(seed: UInt64, threads: Int, requestedNanoseconds: UInt64) {
        self.seed = seed
        self.threads = threads
        self.requestedNanoseconds = requestedNanoseconds
    }

    public var totalOperations: Int { operations.values.reduce(0, +) }

    /// 0 when nothing was violated, 1 otherwise (the CLI's exit status).
    public var exitStatus: Int32 { violationCount == 0 ? 0 : 1 }

    mutating func record(violation: String) {
        violationCount += 1
        if violations.count < 100 { violations.append(violation) }
    }
}

/// Counts warnings by `IOMMUWarning` case name (thread-safe).
final class SoakWarningCounter: WarningSink {
    let counts = IOMMUMutex<[String: Int]>([:])
    func warn(_ warning: IOMMUWarning) {
        let kind = ScenarioRunner.kindName(warning)
        counts.withLock { $0[kind, default: 0] += 1 }
    }
}
