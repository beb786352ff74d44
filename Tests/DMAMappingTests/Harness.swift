import IOMMUBase
import IOMMUCore
import IOVAAllocator
import IOMMUTestSupport
import PhysicalMemory
import Synchronization
@testable import DMAMapping

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A platform for DMA-layer tests: a core with one IOMMU (the flat driver by default), physical
/// memory, a frame allocator, a manual clock and a recording warning sink.
final class DMAHarness: @unchecked Sendable {
    let core: IOMMUCore
    let driver: any IOMMUDriver
    let memory: PhysicalMemory
    let frames: FrameAllocator
    let clock = ManualDMAClock()
    let warnings = RecordingWarningSink(capacity: 100_000)
    let api: DMAAPI
    private var nextDevice: UInt8 = 1

    init(
        lazy: Bool = false, coverage: UInt64 = 1 << 32, driver: (any IOMMUDriver)? = nil,
        _ configure: (inout DMAConfiguration) -> Void = { _ in }
    ) throws {
        core = IOMMUCore(configuration: IOMMUCoreConfiguration(cpuPageSize: .size4K, defaultDomainType: lazy ? .dmaFQ : .dma))
        self.driver = driver ?? FlatIOMMUDriver(coverage: coverage)
        memory = try PhysicalMemory()
        frames = FrameAllocator(memory: memory)
        var configuration = DMAConfiguration()
        configure(&configuration)
        _ = try core.registerIOMMU(name: "iommu0", driver: self.driver)
        api = try DMAAPI(core: core, memory: memory, frames: frames, configuration: configuration, clock: clock, warningSink: warnings)
    }

    /// Adds, binds and sets up a PCI device (or a platform device).
    func device(pci: Bool = true, untrusted: Bool = false, options: DMADeviceOptions = DMADeviceOptions(), name: String? = nil) throws -> DMADevice {
        let n = nextDevice
        nextDevice += 1
        let spec = FirmwareIOMMUSpec(iommu: "iommu0", streamIDs: [StreamID(UInt32(n))])
        let description: DeviceDescription = pci
            ? .pci(PCIAddress(bus: n, device: 0, function: 0), iommu: spec, untrusted: untrusted)
            : .platform(name ?? "dev\(n)", iommu: spec)
        let id = try core.addDevice(description)
        try core.bindDriver(id, name: "test-driver")
        return try api.setupDevice(id, options: options)
    }

    /// A fresh 4 KiB frame.
    func page() throws -> PhysAddr { try frames.allocate(.size4K) }

    func drainWarnings() -> [IOMMUWarning] { warnings.drain() }
}

extension DMADevice {
    var flat: FlatDomainOps { cookie!.domain.ops as! FlatDomainOps }

    /// Live IOVA allocations (after returning every cached pfn to the tree), reserved ranges excluded.
    func liveIOVANodes() -> [IOVAPFNRange] {
        cookie!.iovad.flushAllCaches()
        return cookie!.iovad.snapshot().nodes
    }

    /// map + mappingError check, failing the test on error.
    func mapChecked(_ paddr: PhysAddr, _ length: UInt64, _ direction: DMADirection = .bidirectional, cpu: Int = 0) -> IOVA {
        let a = mapPage(paddr, length: length, direction: direction, cpu: cpu)
        precondition(!mappingError(a), "mapping failed")
        return a
    }
}

