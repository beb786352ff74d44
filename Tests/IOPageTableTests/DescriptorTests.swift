import IOMMUBase
import IOPageTable
import PhysicalMemory
import Testing

// Every expected value below is derived by hand from the architecture rules in the comments,
// not by calling the code under test. The frame allocator hands out frames in order from RAM's
// base, 0x8000_0000, each naturally aligned: so the root comes first, then each new table.

@Suite("Descriptors, bit by bit")
struct DescriptorTests {
    func entries(_ snapshot: PageTableSnapshot) -> [Int: UInt64] {
        Dictionary(uniqueKeysWithValues: snapshot.entries.map { ($0.index, $0.descriptor) })
    }

    @Test func stage1Granule4KPageAndBlock() throws {
        let frames = try makeFrames()
        let table = try IOPageTable<ARMLPAEStage1<Granule4K>>(
            configuration: PageTableConfiguration(ias: 48, oas: 48), frames: frames)
        // ias 48, 4K: 4 levels from L0; root (512 entries) at 0x8000_0000.
        #expect(table.roots == [PhysAddr(0x8000_0000)])

        // Page: iova 0x1234_5000 → pa 0x4567_8000, rw + cache.
        // Indices: L0 = iova>>39 = 0, L1 = iova>>30 & 511 = 0, L2 = iova>>21 & 511 = 0x91,
        // L3 = iova>>12 & 511 = 0x145. New tables: L1 0x8000_1000, L2 0x8000_2000, L3 0x8000_3000.
        _ = try table.map(iova: IOVA(0x1234_5000), paddr: PhysAddr(0x4567_8000), pageSize: .size4K,
                          prot: [.read, .write, .cache])
        // Leaf: nG (0x800) | AF (0x400) | SH inner (3<<8 = 0x300) | AP[1] unprivileged (0x40)
        //       | AttrIndx 1 = WB (1<<2 = 0x4) | type page (0x3) = 0xF47, address 0x4567_8000.
        // Block: iova 0x4000_0000 (L1 index 1, new L2 table 0x8000_4000, L2 index 0) → pa
        // 0x1_0020_0000 2M, read-only + noexec: nG 0x800 | AF 0x400 | SH outer (2<<8 = 0x200)
        //       | AP[2] read-only (0x80) | AP[1] (0x40) | AttrIndx 0 | type block (0x1) = 0xEC1,
        //       XN = bits 54:53 = 0x0060_0000_0000_0000.
        _ = try table.map(iova: IOVA(0x4000_0000), paddr: PhysAddr(0x1_0020_0000), pageSize: .size2M,
                          prot: [.read, .noExec])
        let tables = table.liveTables()
        #expect(tables.map(\.address) == [0x8000_0000, 0x8000_1000, 0x8000_2000, 0x8000_3000, 0x8000_4000].map { PhysAddr($0) })
        #expect(tables.map(\.level) == [0, 1, 2, 3, 2])
        #expect(entries(tables[0]) == [0: 0x8000_1003])   // table descriptor: address | 0b11
        #expect(entries(tables[1]) == [0: 0x8000_2003, 1: 0x8000_4003])
        #expect(entries(tables[2]) == [0x91: 0x8000_3003])
        #expect(entries(tables[3]) == [0x145: 0x0000_0000_4567_8F47])
        #expect(entries(tables[4]) == [0: 0x0060_0001_0020_0EC1])

        let walker = try HardwareWalker(memory: frames.memory, ttbr: 0x8000_0000, tcr: 0x5_0080_3510)
        let page = try #require(walker.translate(IOVA(0x1234_5ABC), access: .write).translation)
        #expect(page.physicalAddress == PhysAddr(0x4567_8ABC))
        #expect(page.level == 3 && page.memoryType == .normalWriteBack && page.shareability == 3)
        let block = try #require(walker.translate(IOVA(0x4012_3456)).translation)
        #expect(block.physicalAddress == PhysAddr(0x1_0032_3456) && block.level == 2 && block.blockShift == 21)
        #expect(!block.writable && !block.executable)
        #expect(walker.translate(IOVA(0x4012_3456), access: .write).fault?.kind == .permission)
    }

    @Test func stage2Granule4KConcatenatedRoot() throws {
        let frames = try makeFrames()
        let table = try IOPageTable<ARMLPAEStage2<Granule4K>>(
            configuration: PageTableConfiguration(ias: 40, oas: 40), frames: frames)
        // ias 40: L0 would have 2 entries ≤ 16 → concatenated start at L1 with 1024 entries, an
        // 8 KiB root at 0x8000_0000; new tables follow at 0x8000_2000 and 0x8000_3000.
        #expect(table.geometry.startLevel == 1 && table.geometry.pgdBits == 10)
        // iova 0xC0_4020_1000: L1 index = iova>>30 = 0x301 (second concatenated table),
        // L2 index = iova>>21 & 511 = 1, L3 index = iova>>12 & 511 = 1.
        // Leaf rw, no cache: HAP read (0x40) | HAP write (0x80) | MemAttr NC (0x5<<2 = 0x14)
        //   | SH outer (0x200) | AF (0x400) | page (0x3) = 0x6D7.
        _ = try table.map(iova: IOVA(0xC0_4020_1000), paddr: PhysAddr(0x9_8765_4000), pageSize: .size4K,
                          prot: [.read, .write])
        // Next page as MMIO: MemAttr device (0x1<<2 = 0x4) → 0x40|0x80|0x4|0x200|0x400|0x3 = 0x6C7.
        _ = try table.map(iova: IOVA(0xC0_4020_2000), paddr: PhysAddr(0x1000_0000), pageSize: .size4K,
                          prot: [.read, .write, .mmio])
        let tables = table.liveTables()
        #expect(tables.map(\.address) == [0x8000_0000, 0x8000_2000, 0x8000_3000].map { PhysAddr($0) })
        #expect(entries(tables[0]) == [0x301: 0x8000_2003])
        #expect(entries(tables[1]) == [1: 0x8000_3003])
        #expect(entries(tables[2]) == [1: 0x0000_0009_8765_46D7, 2: 0x0000_0000_1000_06C7])
        // VTCR: T0SZ 24 (0x18) | SL0 = ~(1+1)&3 = 1 (0x40) | IRGN/ORGN WBWA (0x100|0x400)
        //   | SH inner (0x3000) | TG0 4K (0) | PS 40-bit = 2 (0x2_0000) | RES1 (0x8000_0000).
        guard case .stage2(let registers) = table.registers else { Issue.record("not stage 2"); return }
        #expect(registers.vtcr == 0x8002_3558)
        #expect(registers.vttbr == 0x8000_0000)
        let walker = try HardwareWalker(memory: frames.memory, vttbr: 0x8000_0000, vtcr: 0x8002_3558)
        let t = try #require(walker.translate(IOVA(0xC0_4020_1FF8), access: .write).translation)
        #expect(t.physicalAddress == PhysAddr(0x9_8765_4FF8) && t.memoryType == .normalNonCacheable)
        #expect(walker.translate(IOVA(0xC0_4020_2000)).translation?.memoryType == .device)
    }

    @Test func stage1Granule64KWith52BitAddresses() throws {
        let frames = try makeFrames()
        let table = try IOPageTable<ARMLPAEStage1<Granule64K>>(
            configuration: PageTableConfiguration(ias: 48, oas: 52), frames: frames)
        // 64K, ias 48: 32 index bits at 13 per level → 3 levels from L1, pgd 2^6 = 64 entries
        // (a 4 KiB root frame at 0x8000_0000); oas 52 adds the 4 TiB (2^42) L1 block.
        #expect(table.geometry.startLevel == 1 && table.geometry.pgdBits == 6)
        #expect(table.geometry.pageSizes.rawValue == (1 << 16) | (1 << 29) | (1 << 42))
        // Page: iova 0x1_2345_0000 → pa 0xA_BCDE_F123_0000, rw + priv.
        // L1 index = iova>>42 = 0; L2 index = iova>>29 & 0x1FFF = 9; L3 index = iova>>16 & 0x1FFF
        // = 0x345. 64 KiB tables: the first aligned frame after the root is 0x8001_0000, then
        // 0x8002_0000.
        // Address packing: PA[47:16] stay in place (0xBCDE_F123_0000), PA[51:48] = 0xA go to
        // descriptor bits 15:12 → 0x0000_BCDE_F123_A000.
        // Attributes: nG 0x800 | AF 0x400 | SH outer 0x200 | no AP bits (rw, privileged only)
        //   | AttrIndx 0 | page 0x3 = 0xE03.
        _ = try table.map(iova: IOVA(0x1_2345_0000), paddr: PhysAddr(0xA_BCDE_F123_0000), pageSize: .size64K,
                          prot: [.read, .write, .priv])
        // 4 TiB block: iova 0x400_0000_0000 (L1 index 1) → pa 2^51, read-only:
        // PA bit 51 → descriptor bit 15 (0x8000); nG|AF|SH outer|AP[2]|AP[1]|block = 0xEC1.
        _ = try table.map(iova: IOVA(0x400_0000_0000), paddr: PhysAddr(0x8_0000_0000_0000),
                          pageSize: PageSize(shift: 42), prot: .read)
        let tables = table.liveTables()
        #expect(tables.map(\.address) == [0x8000_0000, 0x8001_0000, 0x8002_0000].map { PhysAddr($0) })
        #expect(entries(tables[0]) == [0: 0x8001_0003, 1: 0x0000_0000_0000_8EC1])
        #expect(entries(tables[1]) == [9: 0x8002_0003])
        #expect(entries(tables[2]) == [0x345: 0x0000_BCDE_F123_AE03])
        #expect(table.iovaToPhys(IOVA(0x1_2345_1234)) == PhysAddr(0xA_BCDE_F123_1234))
        // TCR: T0SZ 16 | IRGN/ORGN WBWA | SH inner | TG0 64K (1<<14) | EPD1 | IPS 52-bit (6<<32).
        guard case .stage1(let registers) = table.registers else { Issue.record("not stage 1"); return }
        #expect(registers.tcr == 0x6_0080_7510)
        let walker = try HardwareWalker(memory: frames.memory, ttbr: registers.ttbr, tcr: registers.tcr)
        let page = try #require(walker.translate(IOVA(0x1_2345_1234), access: WalkAccess(write: true, privileged: true)).translation)
        #expect(page.physicalAddress == PhysAddr(0xA_BCDE_F123_1234) && page.privilegedOnly)
        #expect(walker.translate(IOVA(0x1_2345_1234)).fault?.kind == .permission)   // unprivileged
        let block = try #require(walker.translate(IOVA(0x400_0012_3456)).translation)
        #expect(block.physicalAddress == PhysAddr(0x8_0000_0012_3456) && block.level == 1 && block.blockShift == 42)
    }

    @Test func appleDARTAndDART2() throws {
        for isDART2 in [false, true] {
            let frames = try makeFrames()
            let table = try AnyIOPageTable(kind: isDART2 ? .appleDART2 : .appleDART, granule: .size16K,
                                           configuration: PageTableConfiguration(ias: 36, oas: isDART2 ? 42 : 36),
                                           frames: frames)
            // 16K pages, 11 bits per level, 2 levels: ias 36 needs one TTBR. The L1 table is a
            // 16 KiB frame at 0x8000_0000, the L2 table follows at 0x8000_4000.
            // iova 0x1234_4000: L1 index = iova>>25 & 0x7FF = 9; L2 index = iova>>14 & 0x7FF = 0xD1.
            _ = mapResult(table, iova: 0x1234_4000, paddr: 0x9_8765_C000, size: .size16K, prot: .read)
            let tables = table.liveTables()
            #expect(tables.map(\.address) == [PhysAddr(0x8000_0000), PhysAddr(0x8000_4000)])
            if isDART2 {
                // DART2: address = PA >> 4 in bits 37:10; table 0x8000_4000 → 0x0800_0400 | valid.
                // Leaf: subpage end 0xFFF<<40 | PA>>4 = 0x9876_5C00 | no-write (bit 2, 0x4)
                //   | no-cache (bit 1, 0x2; also SP_DIS) | valid (0x1) = 0x000F_FF00_9876_5C07.
                #expect(entries(tables[0]) == [9: 0x0800_0401])
                #expect(entries(tables[1]) == [0xD1: 0x000F_FF00_9876_5C07])
            } else {
                // DART1: address bits 35:12 in place. Leaf: subpage end 0xFFF<<40 | PA
                //   | no-write (bit 7, 0x80) | SP_DIS (0x2) | valid (0x1) = 0x000F_FF09_8765_C083.
                #expect(entries(tables[0]) == [9: 0x8000_4001])
                #expect(entries(tables[1]) == [0xD1: 0x000F_FF09_8765_C083])
            }
            // TTBR = PA >> 12 | valid (bit 31) = 0x8008_0000; TCR = translate enable (bit 7).
            guard case .dart(let registers) = table.registers else { Issue.record("not DART"); return }
            #expect(registers.ttbrs == [0x8008_0000] && registers.tcr == 0x80)
            let walker = try HardwareWalker(memory: frames.memory, dartTTBRs: registers.ttbrs, tcr: registers.tcr,
                                            isDART2: isDART2, outputBits: isDART2 ? 42 : 36)
            #expect(walker.translate(IOVA(0x1234_5234)).translation?.physicalAddress == PhysAddr(0x9_8765_D234))
            #expect(walker.translate(IOVA(0x1234_5234), access: .write).fault?.kind == .permission)
            #expect(walker.translate(IOVA(0x1238_0000)).fault == WalkFault(kind: .translation, level: 2, iova: IOVA(0x1238_0000)))
            #expect(walker.translate(IOVA(0x4000_0000)).fault?.level == 1)
        }
    }
}

@Suite("Registers and geometry")
struct RegisterGeometryTests {
    @Test func stage1TCRAndMAIRFor4KIas48() throws {
        let frames = try makeFrames()
        let table = try IOPageTable<ARMLPAEStage1<Granule4K>>(configuration: PageTableConfiguration(ias: 48, oas: 48), frames: frames)
        // T0SZ = 64-48 = 16 (0x10) | IRGN0 WBWA (1<<8) | ORGN0 WBWA (1<<10) | SH0 inner (3<<12)
        // | TG0 4K (0) | EPD1 (1<<23) | IPS 48-bit = 5 (5<<32) = 0x5_0080_3510.
        guard case .stage1(let r) = table.registers else { Issue.record("not stage 1"); return }
        #expect(r.tcr == 0x5_0080_3510)
        #expect(r.mair == 0xF404_FF44)   // 0x44 NC | 0xFF WB <<8 | 0x04 device <<16 | 0xF4 <<24
        #expect(r.fields == TranslationControlFields(tsz: 16, irgn: 1, orgn: 1, sh: 3, tg: 0, ps: 5, sl: 0))
    }

    @Test func nonCoherentWalkUsesOuterShareableNonCacheable() throws {
        let frames = try makeFrames()
        let table = try IOPageTable<ARMLPAEStage1<Granule16K>>(
            configuration: PageTableConfiguration(ias: 36, oas: 40, coherentWalk: false), frames: frames)
        // T0SZ 28 (0x1C) | IRGN/ORGN NC (0) | SH outer (2<<12) | TG0 16K (2<<14) | EPD1 | IPS 40 (2<<32).
        guard case .stage1(let r) = table.registers else { Issue.record("not stage 1"); return }
        #expect(r.tcr == 0x2_0080_A01C)
    }

    @Test func stage2VTCRFor16KIas48IsConcatenated() throws {
        let frames = try makeFrames()
        let table = try IOPageTable<ARMLPAEStage2<Granule16K>>(configuration: PageTableConfiguration(ias: 48, oas: 48), frames: frames)
        // 16K ias 48 → L0 with 2 entries → concatenated start L1 (2 × 2048 entries). SL0 for 16K
        // start L1 = 2 (0x80); T0SZ 16 | WBWA/WBWA/inner (0x3500) | TG0 16K (0x8000) | PS 48 (5<<16) | RES1.
        #expect(table.geometry.startLevel == 1 && table.geometry.pgdBits == 12)
        guard case .stage2(let r) = table.registers else { Issue.record("not stage 2"); return }
        #expect(r.vtcr == 0x8005_B590)
        #expect(r.fields.sl == 2)
    }

    @Test(arguments: [
        // (stage2, granule shift, ias, start level, pgd entries) from reference §5.1.
        (false, 12, 48, 0, 512), (false, 12, 32, 1, 4), (false, 16, 48, 1, 64), (false, 14, 48, 0, 2),
        (true, 12, 40, 1, 1024), (true, 12, 42, 1, 4096), (true, 12, 44, 0, 32), (true, 12, 48, 0, 512),
        (true, 16, 48, 1, 64), (true, 14, 36, 2, 2048),
    ])
    func geometryMatchesReference(stage2: Bool, granuleShift: Int, ias: Int, startLevel: Int, pgdEntries: Int) throws {
        let frames = try makeFrames()
        let table = try makeAnyTable(LPAEConfig(stage2: stage2, granuleShift: granuleShift, ias: ias), frames: frames)
        #expect(table.geometry.startLevel == startLevel)
        #expect(1 << table.geometry.pgdBits == pgdEntries)
        #expect(table.geometry.pgdByteCount == 8 * pgdEntries)
    }

    @Test func stage2SL0EncodingFollowsGranule() throws {
        // 4K: start L1 → SL0 1, start L0 → SL0 2; 16K/64K: start L1 → 2, start L2 → 1.
        let cases: [(Int, Int, UInt64)] = [(12, 40, 1), (12, 48, 2), (16, 48, 2), (16, 36, 1), (14, 36, 1)]
        for (granule, ias, sl) in cases {
            let frames = try makeFrames()
            let table = try makeAnyTable(LPAEConfig(stage2: true, granuleShift: granule, ias: ias), frames: frames)
            guard case .stage2(let r) = table.registers else { Issue.record("not stage 2"); continue }
            #expect(r.fields.sl == sl, "granule \(granule) ias \(ias)")
            // The walker derives the same start level from the VTCR alone.
            let walker = try HardwareWalker(memory: frames.memory, vttbr: r.vttbr, vtcr: r.vtcr)
            #expect(walker.startLevel == table.geometry.startLevel)
        }
    }

    @Test func invalidConfigurationsAreRefused() throws {
        let frames = try makeFrames()
        func fails(_ kind: PageTableFormatKind, _ granule: PageSize, _ config: PageTableConfiguration) -> Bool {
            (try? AnyIOPageTable(kind: kind, granule: granule, configuration: config, frames: frames)) == nil
        }
        #expect(fails(.armLPAEStage1, .size4K, PageTableConfiguration(ias: 53, oas: 48)))
        #expect(fails(.armLPAEStage1, .size4K, PageTableConfiguration(ias: 48, oas: 46)))   // no IPS encoding
        #expect(fails(.armLPAEStage2, .size4K, PageTableConfiguration(ias: 40, oas: 40, quirks: .nonSecure)))
        #expect(fails(.appleDART, .size4K, PageTableConfiguration(ias: 36, oas: 36)))
        #expect(fails(.appleDART, .size16K, PageTableConfiguration(ias: 40, oas: 36)))
        // DART2 ias 42: 28 bits above the page offset, 22 resolved by two levels → 64 TTBRs > 4.
        #expect(fails(.appleDART2, .size16K, PageTableConfiguration(ias: 42, oas: 42)))
        #expect(frames.framesInUse == 0)
        // ias 38 → 2 bits select one of 4 TTBRs, each a 16 KiB L1 table.
        let dart = try AnyIOPageTable(kind: .appleDART2, granule: .size16K,
                                      configuration: PageTableConfiguration(ias: 38, oas: 42), frames: frames)
        #expect(dart.roots.count == 4 && frames.framesInUse == 4)
    }
}
