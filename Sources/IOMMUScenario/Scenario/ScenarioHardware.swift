import IOMMUBase
import IOMMUCore
import IOMMUHardware
import PhysicalMemory

/// One IOMMU of a scenario platform: the `IOMMUHardware` model and its Linux-faithful driver.
enum ScenarioHardware {
    case smmu(ARMSMMU, ARMSMMUDriver)
    case dart(DART, AppleDARTDriver)

    init(spec: Scenario.IOMMUSpec, memory: PhysicalMemory, frames: FrameAllocator, core: IOMMUCore) {
        switch spec.kind {
        case .smmu:
            var configuration = SMMUConfiguration()
            configuration.streamMatchRegisterCount = spec.streamMatchRegisters
            configuration.contextBankCount = spec.contextBanks
            configuration.tlbEntryCount = spec.tlbEntries
            configuration.granules = Array(Set(spec.pageSizes.sizes.map { size -> PageSize in
                switch size {
                case .size2M, .size1G: .size4K
                case .size32M: .size16K
                case .size512M: .size64K
                default: size
                }
            })).sorted()
            let smmu = ARMSMMU(name: spec.name, memory: memory, configuration: configuration, warnings: core.warnings)
            let driver = ARMSMMUDriver(smmu: smmu, core: core, frames: frames,
                                       options: .init(disableBypass: spec.unmatchedStream == .fault))
            self = .smmu(smmu, driver)
        case .dart:
            var configuration = DARTConfiguration()
            configuration.pageShift = spec.pageSizes.smallest?.shift ?? 14
            configuration.tlbEntryCount = spec.tlbEntries
            configuration.streamCount = min(16, spec.streamMatchRegisters)
            let dart = DART(name: spec.name, memory: memory, configuration: configuration, warnings: core.warnings)
            self = .dart(dart, AppleDARTDriver(dart: dart, core: core, frames: frames))
        }
    }

    var driver: any IOMMUDriver {
        switch self {
        case .smmu(_, let d): d
        case .dart(_, let d): d
        }
    }

    var model: any DMATranslatingHardware {
        switch self {
        case .smmu(let m, _): m
        case .dart(let m, _): m
        }
    }

    var tlb: (hits: UInt64, misses: UInt64, staleHits: UInt64) {
        switch self {
        case .smmu(let m, _): let s = m.tlbStatistics; return (s.hits, s.misses, s.staleHits)
        case .dart(let m, _): let s = m.tlbStatistics; return (s.hits, s.misses, s.staleHits)
        }
    }
}
