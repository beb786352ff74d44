import IOMMUBase
import IOPageTable
import PhysicalMemory
import Testing

/// A fresh machine: 4 GiB of lazily backed RAM at 2 GiB and a frame allocator over it.
func makeFrames(limitBytes: UInt64? = nil) throws -> FrameAllocator {
    let memory = try PhysicalMemory()
    return FrameAllocator(memory: memory, limitBytes: limitBytes)
}

/// The 18-entry matrix of Linux's `arm_lpae_run_tests` as (granule shift, ias).
let selftestMatrix: [(granuleShift: Int, ias: Int)] = {
    var out: [(Int, Int)] = []
    for granule in [12, 14, 16] {
        for ias in [32, 36, 40, 42, 44, 48] { out.append((granule, ias)) }
    }
    return out
}()

/// Both stages for every matrix entry, as strings so test names read well: "s1 4K ias 32".
struct LPAEConfig: CustomTestStringConvertible, Sendable, Hashable {
    var stage2: Bool
    var granuleShift: Int
    var ias: Int
    var oas: Int = 48
    var testDescription: String {
        "\(stage2 ? "s2" : "s1") \(PageSize(shift: granuleShift)) ias \(ias) oas \(oas)"
    }
    var kind: PageTableFormatKind { stage2 ? .armLPAEStage2 : .armLPAEStage1 }
}

let allSelftestConfigs: [LPAEConfig] = selftestMatrix.flatMap { entry in
    [LPAEConfig(stage2: false, granuleShift: entry.granuleShift, ias: entry.ias),
     LPAEConfig(stage2: true, granuleShift: entry.granuleShift, ias: entry.ias)]
}

func makeAnyTable(_ config: LPAEConfig, frames: FrameAllocator, warnings: any WarningSink = DiscardingWarningSink()) throws -> AnyIOPageTable {
    try AnyIOPageTable(kind: config.kind, granule: PageSize(shift: config.granuleShift),
                       configuration: PageTableConfiguration(ias: config.ias, oas: config.oas),
                       frames: frames, warnings: warnings)
}

/// Maps pages with the `map_pages` form, returning the errno name or "ok".
func mapResult(_ table: borrowing AnyIOPageTable, iova: UInt64, paddr: UInt64, size: PageSize, count: Int = 1,
               prot: IOMMUProt) -> String {
    var invalidator = NoTLBInvalidator()
    do {
        _ = try table.map(iova: IOVA(iova), paddr: PhysAddr(paddr), pageSize: size, count: count, prot: prot,
                          invalidator: &invalidator)
        return "ok"
    } catch {
        return error.code.name
    }
}

func unmapPages(_ table: borrowing AnyIOPageTable, iova: UInt64, size: PageSize, count: Int = 1) -> UInt64 {
    var gather = IOTLBGather()
    var invalidator = NoTLBInvalidator()
    return table.unmap(iova: IOVA(iova), pageSize: size, count: count, gather: &gather, invalidator: &invalidator)
}

func walker(for table: borrowing AnyIOPageTable, memory: PhysicalMemory) throws -> HardwareWalker {
    try HardwareWalker(memory: memory, registers: table.registers, isDART2: table.kind == .appleDART2,
                       dartOutputBits: table.geometry.oas)
}
