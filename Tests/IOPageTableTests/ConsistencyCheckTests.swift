import IOMMUBase
import IOPageTable
import PhysicalMemory
import Testing

/// `AnyIOPageTable.checkConsistency(memory:)`: the table's leaves against the hardware walker.
@Suite("Page-table consistency checker")
struct ConsistencyCheckTests {
    static let formats: [(PageTableFormatKind, Int, Int, Int)] = [
        (.armLPAEStage1, 12, 48, 48), (.armLPAEStage1, 14, 36, 40), (.armLPAEStage1, 16, 42, 48),
        (.armLPAEStage2, 12, 40, 40), (.armLPAEStage2, 16, 42, 42), (.appleDART, 14, 36, 36), (.appleDART2, 14, 36, 42),
    ]

    @Test(arguments: 0..<formats.count)
    func randomWorkloadStaysConsistent(_ index: Int) throws {
        let (kind, granuleShift, ias, oas) = Self.formats[index]
        let frames = try makeFrames()
        let table = try AnyIOPageTable(kind: kind, granule: PageSize(shift: granuleShift),
                                       configuration: PageTableConfiguration(ias: ias, oas: oas), frames: frames)
        var rng = SplitMix64(seed: UInt64(index) &+ 0xC0FFEE)
        let granule = UInt64(1) << UInt64(granuleShift)
        let space = min(UInt64(1) << UInt64(ias), 1 << 32)
        var mappedLeaves = 0
        for step in 0..<300 {
            let pages = rng.next() % 600 + 1
            let iova = (rng.next() % (space / granule - pages)) * granule
            let paddr = 0x8000_0000 + (rng.next() % 0x4_0000) * granule
            if rng.next() % 3 != 0 {
                try? table.map(iova: IOVA(iova), paddr: PhysAddr(paddr), length: pages * granule, prot: [.read, .write])
            } else {
                _ = table.unmap(iova: IOVA(iova), length: pages * granule)
            }
            if step % 25 == 0 {
                let problems = table.checkConsistency(memory: frames.memory)
                #expect(problems == [], "\(kind) step \(step)")
            }
        }
        mappedLeaves = table.leaves().count
        #expect(mappedLeaves > 0)
        #expect(table.checkConsistency(memory: frames.memory) == [])
        // Every leaf the table reports is what iovaToPhys says, from the table's own view.
        for leaf in table.leaves().prefix(200) { #expect(table.iovaToPhys(leaf.iova) == leaf.paddr) }
    }

    @Test func aLeafTheWalkerRejectsIsReported() throws {
        let frames = try makeFrames()
        let table = try AnyIOPageTable(kind: .armLPAEStage1, granule: .size4K,
                                       configuration: PageTableConfiguration(ias: 48, oas: 48), frames: frames)
        try table.map(iova: IOVA(0x1000), paddr: PhysAddr(0x8000_1000), length: 0x1000, prot: [.read, .write])
        #expect(table.checkConsistency(memory: frames.memory) == [])
        // Clear the valid bit of the last-level descriptor but leave the rest: the software view
        // still sees a non-zero entry, the walker faults.
        let last = try #require(table.liveTables().last)
        let entry = try #require(last.entries.first)
        let address = PhysAddr(last.address.rawValue + UInt64(entry.index) * 8)
        try frames.memory.store64(address, entry.descriptor & ~1)
        let problems = table.checkConsistency(memory: frames.memory)
        #expect(!problems.isEmpty)
        #expect(problems.allSatisfy { $0.component == "page-table" })
        try frames.memory.store64(address, entry.descriptor)
        #expect(table.checkConsistency(memory: frames.memory) == [])
    }
}
