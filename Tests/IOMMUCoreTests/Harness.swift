import IOMMUBase
import IOMMUCore
import IOMMUTestSupport

extension IOMMUError.Reason {
    /// Any error the core must pass through unchanged.
    static var ioErrorForTests: Self { .notPermitted }
}


/// A core with recording sinks.
struct Harness {
    let core: IOMMUCore
    let warnings = RecordingWarningSink()
    let trace = RecordingTraceSink()

    init(cpuPageSize: PageSize = .size4K, defaultDomainType: IOMMUDomainType = .dma) {
        let warnings = warnings
        let trace = trace
        core = IOMMUCore(
            configuration: IOMMUCoreConfiguration(cpuPageSize: cpuPageSize, defaultDomainType: defaultDomainType),
            warnings: warnings, trace: trace)
    }

    var traceLines: [String] { trace.lines }
}

func spec(_ iommu: String, _ streams: UInt32...) -> FirmwareIOMMUSpec {
    FirmwareIOMMUSpec(iommu: iommu, streamIDs: streams.map { StreamID($0) })
}

func pciAddress(_ bus: UInt8, _ device: UInt8, _ function: UInt8 = 0) -> PCIAddress {
    PCIAddress(bus: bus, device: device, function: function)
}
