import IOMMUBase
import IOPageTable
import PhysicalMemory
import Synchronization
import Testing

/// A table shared between threads (the table itself is noncopyable; a class box shares it).
final class SharedTable: Sendable {
    let table: IOPageTable<ARMLPAEStage1<Granule4K>>
    init(_ table: consuming IOPageTable<ARMLPAEStage1<Granule4K>>) { self.table = table }
}

@Suite("Concurrency")
struct ConcurrencyTests {
    @Test func disjointMapsAndUnmapsFromSeveralThreadsAreSafe() async throws {
        let frames = try makeFrames()
        let shared = SharedTable(try IOPageTable<ARMLPAEStage1<Granule4K>>(
            configuration: PageTableConfiguration(ias: 48, oas: 48), frames: frames))
        // Four tasks, each on its own 2 MiB stripe, all under the same L0/L1/L2 tables, so they
        // race to install the shared intermediate tables with compare-and-swap.
        await withTaskGroup(of: Void.self) { group in
            for worker in 0..<4 {
                group.addTask {
                    let base = UInt64(worker) << 21
                    for round in 0..<20 {
                        for page in 0..<64 as Range<UInt64> {
                            let iova = base + page << 12
                            _ = try? shared.table.map(iova: IOVA(iova), paddr: PhysAddr(iova + 0x1_0000_0000), pageSize: .size4K, prot: [.read, .write])
                        }
                        if round < 19 {
                            _ = shared.table.unmap(iova: IOVA(base), length: 64 << 12)
                        }
                    }
                }
            }
        }
        for worker in 0..<4 as Range<UInt64> {
            for page in 0..<64 as Range<UInt64> {
                let iova = (worker << 21) + page << 12
                #expect(shared.table.iovaToPhys(IOVA(iova)) == PhysAddr(iova + 0x1_0000_0000))
            }
        }
        // L0 + L1 + L2 + one L3 per stripe: no table was leaked by a lost race.
        #expect(frames.framesInUse == 3 + 4)
    }
}
