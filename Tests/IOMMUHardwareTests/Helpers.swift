import IOMMUBase
import IOMMUCore
import IOMMUHardware
import IOMMUTestSupport
import IOPageTable
import PhysicalMemory
import Testing

/// A platform in code: memory, frames, core with recording sinks, and SMMU instances.
final class TestMachine: @unchecked Sendable {
    let memory: PhysicalMemory
    let frames: FrameAllocator
    let warnings = RecordingWarningSink()
    let trace = RecordingTraceSink()
    let core: IOMMUCore
    var smmus: [String: ARMSMMU] = [:]
    var drivers: [String: ARMSMMUDriver] = [:]
    var darts: [String: DART] = [:]
    var dartDrivers: [String: AppleDARTDriver] = [:]
    var platform: DMAPlatform!

    init(cpuPageSize: PageSize = .size4K, defaultDomainType: IOMMUDomainType = .dma) {
        memory = try! PhysicalMemory(ramSize: 256 << 20)
        frames = FrameAllocator(memory: memory)
        core = IOMMUCore(configuration: IOMMUCoreConfiguration(cpuPageSize: cpuPageSize, defaultDomainType: defaultDomainType),
                         warnings: warnings, trace: trace)
        rebuildPlatform()
    }

    /// Creates an SMMU model (not yet driven or registered).
    @discardableResult
    func addSMMU(_ name: String, _ configure: (inout SMMUConfiguration) -> Void = { _ in }) -> ARMSMMU {
        var configuration = SMMUConfiguration()
        configure(&configuration)
        let smmu = ARMSMMU(name: name, memory: memory, configuration: configuration, warnings: warnings)
        smmus[name] = smmu
        rebuildPlatform()
        return smmu
    }

    /// Probes the driver for an SMMU and registers it with the core.
    @discardableResult
    func registerSMMU(_ name: String, options: ARMSMMUDriver.Options = .init()) throws -> ARMSMMUDriver {
        let driver = ARMSMMUDriver(smmu: smmus[name]!, core: core, frames: frames, options: options)
        drivers[name] = driver
        try core.registerIOMMU(name: name, driver: driver)
        return driver
    }

    @discardableResult
    func addDART(_ name: String, _ configure: (inout DARTConfiguration) -> Void = { _ in }) -> DART {
        var configuration = DARTConfiguration()
        configure(&configuration)
        let dart = DART(name: name, memory: memory, configuration: configuration, warnings: warnings)
        darts[name] = dart
        rebuildPlatform()
        return dart
    }

    @discardableResult
    func registerDART(_ name: String, options: AppleDARTDriver.Options = .init()) throws -> AppleDARTDriver {
        let driver = AppleDARTDriver(dart: darts[name]!, core: core, frames: frames, options: options)
        dartDrivers[name] = driver
        try core.registerIOMMU(name: name, driver: driver)
        return driver
    }

    func rebuildPlatform() {
        platform = DMAPlatform(memory: memory, core: core,
                               hardware: (Array(smmus.values) as [any DMATranslatingHardware]) + (Array(darts.values) as [any DMATranslatingHardware]))
    }

    /// A 4 KiB data page in RAM filled with `byte`.
    func dataPage(filledWith byte: UInt8 = 0) -> PhysAddr {
        let page = try! frames.allocate(.size4K)
        try! memory.fill(page, length: 4096, with: byte)
        return page
    }
}

func platformDevice(_ name: String, _ iommu: String, _ ids: UInt32...) -> DeviceDescription {
    .platform(name, iommu: FirmwareIOMMUSpec(iommu: iommu, streamIDs: ids.map { StreamID($0) }))
}

func pciAddress(_ bus: UInt8, _ device: UInt8, _ function: UInt8) -> PCIAddress {
    PCIAddress(bus: bus, device: device, function: function)
}

/// All orderings of `items`.
func permutations<T>(_ items: [T]) -> [[T]] {
    guard items.count > 1 else { return [items] }
    var result: [[T]] = []
    for (index, item) in items.enumerated() {
        var rest = items
        rest.remove(at: index)
        for tail in permutations(rest) { result.append([item] + tail) }
    }
    return result
}
