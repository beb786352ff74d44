import IOMMUBase
import IOPageTable
import PhysicalMemory
import Testing

/// `HardwareWalker.leaves()`: the leaves found from the registers alone equal the table's own
/// leaves, in every format; leaves the walk faults on are left out.
@Suite("HardwareWalker.leaves")
struct HardwareWalkerLeavesTests {
    @Test(arguments: 0..<ConsistencyCheckTests.formats.count)
    func registerWalkFindsExactlyTheTablesLeaves(_ index: Int) throws {
        let (kind, granuleShift, ias, oas) = ConsistencyCheckTests.formats[index]
        let frames = try makeFrames()
        let table = try AnyIOPageTable(kind: kind, granule: PageSize(shift: granuleShift),
                                       configuration: PageTableConfiguration(ias: ias, oas: oas), frames: frames)
        var rng = SplitMix64(seed: UInt64(index) &+ 77)
        let granule = UInt64(1) << UInt64(granuleShift)
        let space = min(UInt64(1) << UInt64(ias), 1 << 32)
        for _ in 0..<40 {
            let pages = rng.next() % 40 + 1
            let iova = (rng.next() % (space / granule - pages)) * granule
            try? table.map(iova: IOVA(iova), paddr: PhysAddr(0x8000_0000 + (rng.next() % 0x4_0000) * granule),
                           length: pages * granule, prot: rng.next() % 2 == 0 ? [.read] : [.read, .write])
        }
        let walker = try HardwareWalker(memory: frames.memory, registers: table.registers, isDART2: kind == .appleDART2,
                                        dartOutputBits: oas)
        let walked = walker.leaves()
        let own = table.leaves()
        #expect(walked.count == own.count)
        #expect(walked.map(\.iova) == own.map(\.iova))
        #expect(walked.map(\.translation.physicalAddress) == own.map(\.paddr))
        #expect(walked.map(\.translation.blockShift) == own.map(\.sizeShift))
        #expect(walker.leaves(limit: 3).count == min(3, own.count))
    }

    @Test func aLeafWithTheAccessFlagClearIsNotReachable() throws {
        let frames = try makeFrames()
        let table = try AnyIOPageTable(kind: .armLPAEStage1, granule: .size4K,
                                       configuration: PageTableConfiguration(ias: 48, oas: 48), frames: frames)
        try table.map(iova: IOVA(0x1000), paddr: PhysAddr(0x8000_1000), length: 0x2000, prot: [.read, .write])
        let walker = try HardwareWalker(memory: frames.memory, registers: table.registers)
        #expect(walker.leaves().map(\.iova.rawValue) == [0x1000, 0x2000])
        let last = try #require(table.liveTables().last)
        let entry = try #require(last.entries.first)
        try frames.memory.store64(PhysAddr(last.address.rawValue + UInt64(entry.index) * 8), entry.descriptor & ~(1 << 10))
        #expect(walker.leaves().count == 1)
    }
}
