import IOMMUBase
import IOPageTable
import PhysicalMemory
import Testing

/// Linux 6.12 `arm_lpae_run_tests`: 18 configurations × both stages, with the partial unmap
/// (block split) and remap-the-hole steps that 6.13 removed.
@Suite("io-pgtable-arm selftest")
struct SelftestTests {
    @Test(arguments: allSelftestConfigs)
    func linuxSelftestScenarioPasses(config: LPAEConfig) throws {
        let frames = try makeFrames()
        let table = try makeAnyTable(config, frames: frames)
        let gib: UInt64 = 1 << 30
        let sizes = table.geometry.pageSizes.sizes
        let smallest = sizes[0]

        // 1. Empty tables translate nothing.
        #expect(table.iovaToPhys(IOVA(42)) == nil)
        #expect(table.iovaToPhys(IOVA(gib + 42)) == nil)
        #expect(table.iovaToPhys(IOVA(2 * gib + 42)) == nil)

        // 2. Distinct mappings of every size at 0, 1G, 2G…
        var iova: UInt64 = 0
        for size in sizes {
            #expect(mapResult(table, iova: iova, paddr: iova, size: size, prot: [.read, .write, .noExec, .cache]) == "ok")
            #expect(mapResult(table, iova: iova, paddr: iova + size.bytes, size: size, prot: [.read, .noExec]) != "ok")
            #expect(table.iovaToPhys(IOVA(iova + 42)) == PhysAddr(iova + 42))
            iova += gib
        }

        // 3. Partial unmap: splits the block at 1G.
        #expect(unmapPages(table, iova: gib + smallest.bytes, size: smallest) == smallest.bytes)

        // 4. Remap of the hole.
        #expect(mapResult(table, iova: gib + smallest.bytes, paddr: smallest.bytes, size: smallest, prot: .read) == "ok")
        #expect(table.iovaToPhys(IOVA(gib + smallest.bytes + 42)) == PhysAddr(smallest.bytes + 42))

        // 5. Full unmap and remap of each block.
        iova = 0
        for size in sizes {
            #expect(unmapPages(table, iova: iova, size: size) == size.bytes)
            #expect(table.iovaToPhys(IOVA(iova + 42)) == nil)
            #expect(mapResult(table, iova: iova, paddr: iova, size: size, prot: .write) == "ok")
            #expect(table.iovaToPhys(IOVA(iova + 42)) == PhysAddr(iova + 42))
            iova += gib
        }
        table.destroy()
        #expect(frames.framesInUse == 0)
    }
}
