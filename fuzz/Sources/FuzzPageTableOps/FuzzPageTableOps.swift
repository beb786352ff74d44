import IOMMUKit
import IOMMUScenario

/// Shared across inputs: a table is built and destroyed per input, so every frame must come
/// back (checked).
let memory = try! PhysicalMemory(addressBits: 48, ramBase: PhysAddr(0x8000_0000), ramSize: 1 << 30)
let frames = FrameAllocator(memory: memory)

/// Fuzzes the `iommu pgtable` ops-file parser and the page table behind it: parse any bytes
/// (must not trap); if accepted, apply the ops (as the CLI does) to a table whose format is
/// chosen by the input's byte sum, and after every op check the table against the hardware
/// walker (`AnyIOPageTable.checkConsistency`); destroying the table must return every frame.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPageTableOps(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = UnsafeBufferPointer(start: data, count: size)
    let text = String(decoding: bytes, as: UTF8.self)
    let ops: [PageTableOp]
    do throws(PageTableOpsParseError) {
        ops = try PageTableOpsParser.parse(text, file: "fuzz")
    } catch {
        if error.line < 1 { fatalError("error line \(error.line) < 1") }
        return 0
    }
    let formats: [(PageTableFormatKind, PageSize, Int, Int)] = [
        (.armLPAEStage1, .size4K, 48, 48), (.armLPAEStage1, .size16K, 36, 40), (.armLPAEStage2, .size4K, 40, 40),
        (.armLPAEStage1, .size64K, 42, 48), (.appleDART, .size16K, 36, 36), (.appleDART2, .size16K, 36, 42),
    ]
    let (kind, granule, ias, oas) = formats[bytes.reduce(0) { $0 &+ Int($1) } % formats.count]
    let baseline = frames.framesInUse
    let table: AnyIOPageTable
    do {
        table = try AnyIOPageTable(kind: kind, granule: granule, configuration: PageTableConfiguration(ias: ias, oas: oas), frames: frames)
    } catch { fatalError("cannot build \(kind): \(error)") }
    for op in ops.prefix(64) {
        // Keep each input fast: at most 64 MiB per op (the parser itself saw the whole file).
        guard op.length <= 64 << 20 else { continue }
        switch op.kind {
        case .map:
            do {
                try table.map(iova: IOVA(op.iova), paddr: PhysAddr(op.paddr), length: op.length, prot: op.prot)
            } catch {}
        case .unmap:
            let minimum = table.geometry.pageSizes.smallest?.mask ?? 0
            if (op.iova | op.length) & minimum != 0 { continue }
            _ = table.unmap(iova: IOVA(op.iova), length: op.length)
        }
        let problems = table.checkConsistency(memory: memory)
        if !problems.isEmpty { fatalError("after line \(op.line) (\(op)): \(problems)") }
    }
    table.destroy()
    if frames.framesInUse != baseline { fatalError("table leaked \(frames.framesInUse - baseline) frames") }
    return 0
}
