import IOMMUBase
import IOPageTable
import PhysicalMemory
import Testing

/// One test per "Edge cases and their results (io-pgtable-arm)" item of the reference (§5).
@Suite("io-pgtable-arm edge cases")
struct EdgeCaseTests {
    typealias S1 = IOPageTable<ARMLPAEStage1<Granule4K>>

    func makeS1(_ frames: FrameAllocator, ias: Int = 48, sink: any WarningSink = DiscardingWarningSink()) throws -> S1 {
        try S1(configuration: PageTableConfiguration(ias: ias, oas: 48), frames: frames, warnings: sink)
    }

    @Test func mapOverAnExistingLeafIsEEXIST() throws {
        let sink = RecordingWarningSink()
        let table = try makeS1(try makeFrames(), sink: sink)
        _ = try table.map(iova: IOVA(0x1000), paddr: PhysAddr(0x1000), pageSize: .size4K, prot: .read)
        #expect(throws: IOMMUError(.alreadyMapped, address: 0x1000, length: 0x1000)) {
            _ = try table.map(iova: IOVA(0x1000), paddr: PhysAddr(0x2000), pageSize: .size4K, prot: .read)
        }
        // A covering block: a 4K map inside a 2M block meets the block at level 2.
        _ = try table.map(iova: IOVA(0x20_0000), paddr: PhysAddr(0x20_0000), pageSize: .size2M, prot: .read)
        #expect(throws: IOMMUError(.alreadyMapped, address: 0x20_3000, length: 0x1000)) {
            _ = try table.map(iova: IOVA(0x20_3000), paddr: PhysAddr(0x3000), pageSize: .size4K, prot: .read)
        }
        #expect(sink.warnings == [.mapOverExistingLeaf(iova: IOVA(0x1000), level: 3),
                                  .mapOverExistingLeaf(iova: IOVA(0x20_3000), level: 2)])
    }

    @Test func mapOfABlockWhereATableExistsFreesTheTable() throws {
        let frames = try makeFrames()
        let table = try makeS1(frames)
        _ = try table.map(iova: IOVA(0x20_0000), paddr: PhysAddr(0x1000), pageSize: .size4K, prot: .read)
        #expect(frames.framesInUse == 4)   // L0, L1, L2, L3
        var invalidator = RecordingTLBInvalidator()
        _ = try table.map(iova: IOVA(0x20_0000), paddr: PhysAddr(0x4000_0000), pageSize: .size2M, count: 1,
                          prot: .read, invalidator: &invalidator)
        #expect(frames.framesInUse == 3)   // the L3 table went back
        #expect(invalidator.events == [.flushWalk(iova: IOVA(0x20_0000), size: 0x20_0000, granule: 0x1000)])
        #expect(table.iovaToPhys(IOVA(0x20_1234)) == PhysAddr(0x4000_1234))
    }

    @Test func mapWithoutReadOrWriteIsEINVAL() throws {
        let frames = try makeFrames()
        let table = try makeS1(frames)
        let error = #expect(throws: IOMMUError.self) {
            _ = try table.map(iova: IOVA(0x1000), paddr: PhysAddr(0x1000), pageSize: .size4K, prot: [.cache, .noExec])
        }
        #expect(error?.reason == .noAccessPermission && error?.code == .invalidArgument)
        #expect(frames.framesInUse == 1)
    }

    @Test func iovaBeyondIasOrPhysicalAddressBeyondOasIsERANGE() throws {
        let sink = RecordingWarningSink()
        let table = try makeS1(try makeFrames(), ias: 32, sink: sink)
        let iovaError = #expect(throws: IOMMUError.self) {
            _ = try table.map(iova: IOVA(1 << 32), paddr: PhysAddr(0), pageSize: .size4K, prot: .read)
        }
        #expect(iovaError?.code == .outOfRange)
        let paError = #expect(throws: IOMMUError.self) {
            _ = try table.map(iova: IOVA(0), paddr: PhysAddr(1 << 48), pageSize: .size4K, prot: .read)
        }
        #expect(paError?.code == .outOfRange)
        #expect(sink.warnings.count == 2)
        #expect(table.unmap(iova: IOVA(1 << 32), pageSize: .size4K) == 0)
    }

    /// A run whose first page is below 2^oas but whose last is not: Linux checks only the first
    /// page and would write descriptors with truncated output addresses (page 2^48 → PA 0).
    /// IOMMUKit refuses the whole run with the same ERANGE, and maps nothing (found by the
    /// virtio-request fuzzer: a MAP of 2 MiB at PA 0xffffffff0000 reached PA 0xef000).
    @Test func aRunCrossingTheOutputAddressSizeIsERANGEAndMapsNothing() throws {
        let frames = try makeFrames()
        let sink = RecordingWarningSink()
        let table = try makeS1(frames, sink: sink)
        let top = PhysAddr((1 << 48) - 0x1000)
        let error = #expect(throws: IOMMUError.self) {
            _ = try table.map(iova: IOVA(0x20_0000), paddr: top, pageSize: .size4K, count: 2, prot: .read)
        }
        #expect(error?.code == .outOfRange)
        #expect(table.iovaToPhys(IOVA(0x20_0000)) == nil && table.iovaToPhys(IOVA(0x20_1000)) == nil)
        #expect(sink.warnings.count == 1)
        // The last page below 2^48 alone is fine.
        #expect(try table.map(iova: IOVA(0x20_0000), paddr: top, pageSize: .size4K, count: 1, prot: .read) == 0x1000)
        #expect(table.iovaToPhys(IOVA(0x20_0fff)) == PhysAddr((1 << 48) - 1))
        // A count so large the run's length overflows is refused too.
        #expect(throws: IOMMUError.self) {
            _ = try table.map(iova: IOVA(0x40_0000), paddr: PhysAddr(0x1000), pageSize: .size4K, count: Int.max, prot: .read)
        }
    }

    @Test func unsupportedPageSizeIsEINVAL() throws {
        let table = try makeS1(try makeFrames())
        let error = #expect(throws: IOMMUError.self) {
            _ = try table.map(iova: IOVA(0), paddr: PhysAddr(0), pageSize: .size64K, prot: .read)
        }
        #expect(error?.reason == .unsupportedPageSize && error?.code == .invalidArgument)
    }

    @Test func unmapOfAnUnmappedAddressReturnsZeroAndWarns() throws {
        let sink = RecordingWarningSink()
        let table = try makeS1(try makeFrames(), sink: sink)
        #expect(table.unmap(iova: IOVA(0x5000), pageSize: .size4K) == 0)
        #expect(sink.warnings == [.unmapOfUnmappedIOVA(iova: IOVA(0x5000), pageSize: 0x1000)])
    }

    @Test func unmapOfASubRangeOfABlockSplitsIt() throws {
        let sink = RecordingWarningSink()
        let frames = try makeFrames()
        let table = try makeS1(frames, sink: sink)
        _ = try table.map(iova: IOVA(0x4000_0000), paddr: PhysAddr(0x8000_0000), pageSize: .size2M, prot: [.read, .write])
        var gather = IOTLBGather()
        var invalidator = RecordingTLBInvalidator()
        let bytes = table.unmap(iova: IOVA(0x4000_3000), pageSize: .size4K, count: 2, gather: &gather, invalidator: &invalidator)
        #expect(bytes == 0x2000)
        #expect(invalidator.events == [.addPage(iova: IOVA(0x4000_3000), granule: 0x1000),
                                       .addPage(iova: IOVA(0x4000_4000), granule: 0x1000)])
        #expect(gather.start == 0x4000_3000 && gather.end == 0x4000_4FFF)
        #expect(table.iovaToPhys(IOVA(0x4000_3000)) == nil)
        #expect(table.iovaToPhys(IOVA(0x4000_4FFF)) == nil)
        #expect(table.iovaToPhys(IOVA(0x4000_2FFF)) == PhysAddr(0x8000_2FFF))
        #expect(table.iovaToPhys(IOVA(0x4000_5000)) == PhysAddr(0x8000_5000))
        // The split pages keep the block's attributes, now as level-3 pages.
        let leaf = table.leafDescriptor(IOVA(0x4000_5000))
        #expect(leaf?.level == 3 && leaf?.descriptor == (0x8000_5000 | 0xE43))   // nG|AF|SH outer|AP[1]|page
        #expect(sink.warnings == [.splitBlockOnUnmap(iova: IOVA(0x4000_3000), blockShift: 21)])
        #expect(frames.framesInUse == 4)   // L0, L1, L2 + the new L3
    }

    @Test func splitOfA1GBlockByA4KUnmapGoesTwoLevelsDown() throws {
        let table = try makeS1(try makeFrames())
        _ = try table.map(iova: IOVA(0x4000_0000), paddr: PhysAddr(0x4000_0000), pageSize: .size1G, prot: .read)
        #expect(table.unmap(iova: IOVA(0x4020_1000), pageSize: .size4K) == 0x1000)
        #expect(table.iovaToPhys(IOVA(0x4020_1000)) == nil)
        #expect(table.leafDescriptor(IOVA(0x4020_2000))?.level == 3)
        #expect(table.leafDescriptor(IOVA(0x4040_0000))?.level == 2)
        #expect(table.iovaToPhys(IOVA(0x7FFF_FFFF)) == PhysAddr(0x7FFF_FFFF))
    }

    @Test func pageCountSpanningPastTheEndOfATableStopsThere() throws {
        let table = try makeS1(try makeFrames())
        // L3 index 508 of the first table: 4 entries left.
        let mapped = try table.map(iova: IOVA(508 << 12), paddr: PhysAddr(0x10_0000), pageSize: .size4K, count: 10, prot: .read)
        #expect(mapped == 4 * 0x1000)
        #expect(table.iovaToPhys(IOVA(512 << 12)) == nil)
        #expect(table.unmap(iova: IOVA(508 << 12), pageSize: .size4K, count: 10) == 4 * 0x1000)
    }

    @Test func stage2ConcatenatesAtMost16TopLevelEntries() throws {
        let frames = try makeFrames()
        // 4 KiB: ias 40 (2 L0 entries) and 42 (8) concatenate; 44 (32) does not.
        for (ias, start) in [(40, 1), (42, 1), (44, 0)] {
            let table = try IOPageTable<ARMLPAEStage2<Granule4K>>(configuration: PageTableConfiguration(ias: ias, oas: 48), frames: frames)
            #expect(table.geometry.startLevel == start)
        }
        // A 1 GiB block in the upper concatenated table (index 600) maps and translates.
        let table = try IOPageTable<ARMLPAEStage2<Granule4K>>(configuration: PageTableConfiguration(ias: 40, oas: 48), frames: frames)
        _ = try table.map(iova: IOVA(600 << 30), paddr: PhysAddr(1 << 30), pageSize: .size1G, prot: .read)
        #expect(table.iovaToPhys(IOVA((600 << 30) + 5)) == PhysAddr((1 << 30) + 5))
    }

    @Test func granule64KWithOasAbove48AddsThe4TBlockSize() throws {
        let frames = try makeFrames()
        let narrow = try IOPageTable<ARMLPAEStage1<Granule64K>>(configuration: PageTableConfiguration(ias: 48, oas: 48), frames: frames)
        let wide = try IOPageTable<ARMLPAEStage1<Granule64K>>(configuration: PageTableConfiguration(ias: 52, oas: 52), frames: frames)
        #expect(!narrow.geometry.pageSizes.contains(PageSize(shift: 42)))
        #expect(wide.geometry.pageSizes.contains(PageSize(shift: 42)))
        #expect(wide.geometry.ias == 52 && wide.geometry.startLevel == 1 && wide.geometry.pgdBits == 10)
    }

    @Test func tableAllocationFailureIsENOMEMAndRangeMapRollsBack() throws {
        let frames = try makeFrames()
        let table = try makeS1(frames)
        frames.failNth.failOn(1)
        let error = #expect(throws: IOMMUError.self) {
            _ = try table.map(iova: IOVA(0x1000), paddr: PhysAddr(0x1000), pageSize: .size4K, prot: .read)
        }
        #expect(error?.code == .noMemory)
        // A range map that crosses into a new L3 table: the first chunk maps, the table for the
        // second fails; the first chunk is unmapped again.
        _ = try table.map(iova: IOVA(0x1000), paddr: PhysAddr(0x1000), pageSize: .size4K, prot: .read)
        let before = frames.framesInUse
        frames.failNth.failOn(1)
        let rangeError = #expect(throws: IOMMUError.self) {
            try table.map(iova: IOVA(0x1F_E000), paddr: PhysAddr(0x1F_E000), length: 0x4000, prot: .read)
        }
        #expect(rangeError?.code == .noMemory)
        #expect(table.iovaToPhys(IOVA(0x1F_E000)) == nil && table.iovaToPhys(IOVA(0x1F_F000)) == nil)
        #expect(frames.framesInUse == before)
        #expect(table.iovaToPhys(IOVA(0x1000)) == PhysAddr(0x1000))
    }

    @Test func unmapOfAWholeBlockSizedTableEntryFlushesTheWalkBeforeFreeing() throws {
        let frames = try makeFrames()
        let table = try makeS1(frames)
        try table.map(iova: IOVA(0x20_0000), paddr: PhysAddr(0x20_0000), length: 0x3000, prot: .read)
        var gather = IOTLBGather()
        var invalidator = RecordingTLBInvalidator()
        #expect(table.unmap(iova: IOVA(0x20_0000), pageSize: .size2M, count: 1, gather: &gather, invalidator: &invalidator) == 0x20_0000)
        #expect(invalidator.events == [.flushWalk(iova: IOVA(0x20_0000), size: 0x20_0000, granule: 0x1000),
                                       .addPage(iova: IOVA(0x20_0000), granule: 0x20_0000)])
        #expect(frames.framesInUse == 3)
        var flushes = RecordingTLBInvalidator()
        table.destroy(invalidator: &flushes)
        #expect(flushes.events == [.flushAll] && frames.framesInUse == 0)
    }

    @Test func queuedGatherSkipsAddPage() throws {
        let table = try makeS1(try makeFrames())
        _ = try table.map(iova: IOVA(0x1000), paddr: PhysAddr(0x1000), pageSize: .size4K, prot: .read)
        var gather = IOTLBGather(queued: true)
        var invalidator = RecordingTLBInvalidator()
        #expect(table.unmap(iova: IOVA(0x1000), pageSize: .size4K, count: 1, gather: &gather, invalidator: &invalidator) == 0x1000)
        #expect(invalidator.events.isEmpty && gather.isEmpty)
    }

    @Test func dirtyTrackingReadsAndClearsDBMLeaves() throws {
        let frames = try makeFrames()
        let table = try S1(configuration: PageTableConfiguration(ias: 48, oas: 48, quirks: .hardwareDirty), frames: frames)
        _ = try table.map(iova: IOVA(0x1000), paddr: PhysAddr(0x9000), pageSize: .size4K, prot: [.read, .write])
        _ = try table.map(iova: IOVA(0x2000), paddr: PhysAddr(0xA000), pageSize: .size4K, prot: [.read, .write])
        // Linux sets DBM and leaves AP[2] clear: a new writable mapping starts writable-dirty.
        // nG 0x800 | AF 0x400 | SH outer 0x200 | AP[1] 0x40 | page 0x3 | DBM (1<<51).
        #expect(table.leafDescriptor(IOVA(0x1000))?.descriptor == 0x0008_0000_0000_9E43)
        var dirty: [IOVA] = []
        try table.readAndClearDirty(iova: IOVA(0), length: 0x10_0000) { iova, _ in dirty.append(iova) }
        #expect(dirty == [IOVA(0x1000), IOVA(0x2000)])
        // Cleared: AP[2] set → writable-clean.
        #expect(table.leafDescriptor(IOVA(0x1000))?.descriptor == 0x0008_0000_0000_9EC3)
        dirty = []
        try table.readAndClearDirty(iova: IOVA(0), length: 0x10_0000) { iova, _ in dirty.append(iova) }
        #expect(dirty.isEmpty)
        // A device write through the walker (TCR.HD set) makes the page dirty again.
        guard case .stage1(let registers) = table.registers else { Issue.record("not s1"); return }
        let walker = try HardwareWalker(memory: frames.memory, ttbr: registers.ttbr, tcr: registers.tcr)
        #expect(walker.translate(IOVA(0x2010), access: .write).translation != nil)
        try table.readAndClearDirty(iova: IOVA(0), length: 0x10_0000, clear: false) { iova, _ in dirty.append(iova) }
        #expect(dirty == [IOVA(0x2000)])
        let stage2 = try IOPageTable<ARMLPAEStage2<Granule4K>>(configuration: PageTableConfiguration(ias: 40, oas: 40), frames: frames)
        #expect(throws: IOMMUError.self) { try stage2.readAndClearDirty(iova: IOVA(0), length: 0x1000) { _, _ in } }
    }

    @Test func nonSecureQuirkSetsNSAndNSTable() throws {
        let frames = try makeFrames()
        let table = try S1(configuration: PageTableConfiguration(ias: 32, oas: 48, quirks: .nonSecure), frames: frames)
        _ = try table.map(iova: IOVA(0), paddr: PhysAddr(0x5000), pageSize: .size4K, prot: .read)
        let tables = table.liveTables()
        #expect(tables[0].entries[0].descriptor & (1 << 63) != 0)                 // NSTable
        let leaf = table.leafDescriptor(IOVA(0))
        #expect((leaf?.descriptor ?? 0) & (1 << 5) != 0)   // NS
    }
}

@Suite("iommu_pgsize and the __iommu_map/__iommu_unmap loops")
struct PageSizeSplittingTests {
    let sizes4K = PageSizeBitmap(rawValue: (1 << 12) | (1 << 21) | (1 << 30))

    @Test func workedExampleFromTheReference() {
        // 4K|2M|1G, iova = paddr = 0x1FF000, size 0x401000: 4K × 1, then 2M × 2.
        #expect(iommuPageChunks(iova: 0x1F_F000, paddr: 0x1F_F000, length: 0x40_1000, pageSizes: sizes4K)
                == [PageChunk(pageSize: .size4K, count: 1), PageChunk(pageSize: .size2M, count: 2)])
    }

    @Test func misalignedPhysicalAddressNeverUsesBlocks() {
        #expect(iommuPageSize(iova: 0x20_0000, paddr: 0x20_1000, length: 0x40_0000, pageSizes: sizes4K)
                == PageChunk(pageSize: .size4K, count: 0x400))
    }

    @Test func smallRangeBelowTheNextBoundaryStaysInPages() {
        // offset to the 2M boundary is 0x1000 but offset + 2M > size: all pages at once.
        #expect(iommuPageSize(iova: 0x1F_F000, paddr: 0x1F_F000, length: 0x3000, pageSizes: sizes4K)
                == PageChunk(pageSize: .size4K, count: 3))
    }

    @Test func largestSizeWithNoBiggerSizeTakesTheWholeCount() {
        #expect(iommuPageSize(iova: 1 << 30, paddr: 1 << 30, length: 3 << 30, pageSizes: sizes4K)
                == PageChunk(pageSize: .size1G, count: 3))
        #expect(iommuPageChunks(iova: 0x3FE0_0000, paddr: 0x3FE0_0000, length: 0x4020_0000, pageSizes: sizes4K)
                == [PageChunk(pageSize: .size2M, count: 1), PageChunk(pageSize: .size1G, count: 1)])
    }

    @Test func rangeMapAndUnmapUseTheSplit() throws {
        let frames = try makeFrames()
        let table = try IOPageTable<ARMLPAEStage1<Granule4K>>(configuration: PageTableConfiguration(ias: 39, oas: 48), frames: frames)
        try table.map(iova: IOVA(0x1F_F000), paddr: PhysAddr(0x1F_F000), length: 0x40_1000, prot: [.read, .write])
        #expect(table.leafDescriptor(IOVA(0x1F_F000))?.level == 3)
        #expect(table.leafDescriptor(IOVA(0x20_0000))?.level == 2)
        #expect(table.leafDescriptor(IOVA(0x40_0000))?.level == 2)
        // Unaligned → EINVAL for map, 0 for unmap.
        #expect(throws: IOMMUError(.unaligned, address: 0x1234, length: 0x1000)) {
            try table.map(iova: IOVA(0x1234), paddr: PhysAddr(0), length: 0x1000, prot: .read)
        }
        #expect(table.unmap(iova: IOVA(0x1234), length: 0x1000) == 0)
        // Unmap stops at the first hole.
        #expect(table.unmap(iova: IOVA(0x1F_F000), length: 0x80_0000) == 0x40_1000)
        try table.map(iova: IOVA(0), paddr: PhysAddr(0), length: 0, prot: .read)   // empty: a no-op
    }
}
