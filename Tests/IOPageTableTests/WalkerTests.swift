import IOMMUBase
import IOPageTable
import PhysicalMemory
import Testing

/// The walker decodes raw descriptors on its own: corrupt one and it must fault the way the
/// architecture says.
@Suite("Hardware walker faults")
struct WalkerTests {
    /// A stage-1 4K table (ias 39: L1 root at 0x8000_0000, L2 at 0x8000_1000, L3 at 0x8000_2000)
    /// with one page at iova 0x1000 → 0x5000 (L3 index 1) and its walker.
    final class Fixture {
        let table: IOPageTable<ARMLPAEStage1<Granule4K>>
        let walker: HardwareWalker
        var memory: PhysicalMemory { table.memory }

        init() throws {
            let frames = try makeFrames()
            let table = try IOPageTable<ARMLPAEStage1<Granule4K>>(configuration: PageTableConfiguration(ias: 39, oas: 40), frames: frames)
            _ = try table.map(iova: IOVA(0x1000), paddr: PhysAddr(0x5000), pageSize: .size4K, prot: [.read, .write])
            guard case .stage1(let r) = table.registers else { throw IOMMUError(.invalidConfiguration) }
            walker = try HardwareWalker(memory: frames.memory, ttbr: r.ttbr, tcr: r.tcr, mair: r.mair)
            self.table = table
        }
    }

    @Test func clearedAccessFlagIsAnAccessFlagFault() throws {
        let f = try Fixture()
        let (memory, walker) = (f.memory, f.walker)
        let leaf = 0x8000_2000 + 8 as UInt64
        try memory.store64(PhysAddr(leaf), try memory.load64(PhysAddr(leaf)) & ~(1 << 10))
        #expect(walker.translate(IOVA(0x1000)).fault == WalkFault(kind: .accessFlag, level: 3, iova: IOVA(0x1000)))
        #expect(f.table.iovaToPhys(IOVA(0x1000)) == PhysAddr(0x5000))   // software does not look at AF
    }

    @Test func outputAddressBeyondOasIsAnAddressSizeFault() throws {
        let f = try Fixture()
        let (memory, walker) = (f.memory, f.walker)
        // oas 40: PA bit 40 set in the leaf.
        let leaf = 0x8000_2000 + 8 as UInt64
        try memory.store64(PhysAddr(leaf), try memory.load64(PhysAddr(leaf)) | (1 << 40))
        #expect(walker.translate(IOVA(0x1000)).fault?.kind == .addressSize)
    }

    @Test func blockEncodingAtLevel3IsATranslationFault() throws {
        let f = try Fixture()
        let (memory, walker) = (f.memory, f.walker)
        let leaf = 0x8000_2000 + 8 as UInt64
        try memory.store64(PhysAddr(leaf), (try memory.load64(PhysAddr(leaf)) & ~3) | 1)
        #expect(walker.translate(IOVA(0x1000)).fault == WalkFault(kind: .translation, level: 3, iova: IOVA(0x1000)))
    }

    @Test func inputBeyondT0SZIsATranslationFault() throws {
        let walker = try Fixture().walker
        #expect(walker.translate(IOVA(1 << 39)).fault?.kind == .translation)
        #expect(walker.inputBits == 39 && walker.startLevel == 1)
    }

    @Test func blockAtLevel0Of4KGranuleIsATranslationFault() throws {
        let frames = try makeFrames()
        let table = try IOPageTable<ARMLPAEStage1<Granule4K>>(configuration: PageTableConfiguration(ias: 48, oas: 48), frames: frames)
        guard case .stage1(let r) = table.registers else { return }
        // A hand-made level-0 "block" (type 1): not allowed with a 4K granule.
        try frames.memory.store64(PhysAddr(r.ttbr), 0x0000_0000_0000_0401)
        let walker = try HardwareWalker(memory: frames.memory, ttbr: r.ttbr, tcr: r.tcr)
        #expect(walker.translate(IOVA(0x1234)).fault == WalkFault(kind: .translation, level: 0, iova: IOVA(0x1234)))
    }

    @Test func stage2PermissionsComeFromHAP() throws {
        let frames = try makeFrames()
        let table = try IOPageTable<ARMLPAEStage2<Granule4K>>(configuration: PageTableConfiguration(ias: 40, oas: 40), frames: frames)
        _ = try table.map(iova: IOVA(0x1000), paddr: PhysAddr(0x5000), pageSize: .size4K, prot: .write)
        _ = try table.map(iova: IOVA(0x2000), paddr: PhysAddr(0x6000), pageSize: .size4K, prot: [.read, .noExec])
        guard case .stage2(let r) = table.registers else { return }
        let walker = try HardwareWalker(memory: frames.memory, vttbr: r.vttbr, vtcr: r.vtcr)
        #expect(walker.translate(IOVA(0x1000), access: .read).fault?.kind == .permission)
        #expect(walker.translate(IOVA(0x1000), access: .write).translation?.physicalAddress == PhysAddr(0x5000))
        #expect(walker.translate(IOVA(0x2000), access: .write).fault?.kind == .permission)
        #expect(walker.translate(IOVA(0x2000), access: WalkAccess(execute: true)).fault?.kind == .permission)
        #expect(walker.translate(IOVA(0x2000)).translation?.physicalAddress == PhysAddr(0x6000))
    }
}

@Suite("DART with several TTBRs")
struct DARTMultipleTTBRTests {
    @Test func eachQuarterOfTheIOVASpaceUsesItsOwnTable() throws {
        let frames = try makeFrames()
        // ias 38: bits 37:36 pick one of 4 top-level tables (16 KiB each).
        let table = try AnyIOPageTable(kind: .appleDART2, granule: .size16K,
                                       configuration: PageTableConfiguration(ias: 38, oas: 42), frames: frames)
        #expect(table.roots.count == 4)
        for quarter in 0..<4 as Range<UInt64> {
            let iova = (quarter << 36) | 0x1234_4000
            #expect(mapResult(table, iova: iova, paddr: 0x100_0000 * (quarter + 1), size: .size16K, prot: [.read, .write]) == "ok")
        }
        let tables = table.liveTables()
        // Each root has exactly one entry (L1 index 9) pointing at its own L2 table.
        #expect(tables.filter { $0.level == 1 }.map(\.entries.count) == [1, 1, 1, 1])
        let walk = try walker(for: table, memory: frames.memory)
        for quarter in 0..<4 as Range<UInt64> {
            let iova = (quarter << 36) | 0x1234_4010
            #expect(walk.translate(IOVA(iova), access: .write).translation?.physicalAddress == PhysAddr(0x100_0000 * (quarter + 1) + 0x10))
            #expect(table.iovaToPhys(IOVA(iova)) == PhysAddr(0x100_0000 * (quarter + 1) + 0x10))
        }
    }
}
