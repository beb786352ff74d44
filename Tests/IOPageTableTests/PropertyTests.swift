import IOMMUBase
import IOPageTable
import PhysicalMemory
import Testing

/// A deliberately plain model of what is mapped: one entry per granule page.
struct ModelPage: Hashable {
    var paddr: UInt64
    var prot: IOMMUProt
    /// log2 of the leaf that maps the page (granule, or a block size).
    var leafShift: Int
}

struct PropertyConfig: CustomTestStringConvertible, Sendable, Hashable {
    var kind: PageTableFormatKind
    var granuleShift: Int
    var ias: Int
    var oas: Int
    var seed: UInt64
    var testDescription: String { "\(kind) \(PageSize(shift: granuleShift)) ias \(ias) seed \(seed)" }
}

/// Configurations whose level below the root has a block size, so unmapping whole blocks
/// returns every sub-table (Linux frees sub-tables only then).
let propertyConfigs: [PropertyConfig] = {
    var out: [PropertyConfig] = []
    for seed: UInt64 in [1, 2, 3] {
        for kind in [PageTableFormatKind.armLPAEStage1, .armLPAEStage2] {
            out.append(PropertyConfig(kind: kind, granuleShift: 12, ias: 39, oas: 48, seed: seed))
            out.append(PropertyConfig(kind: kind, granuleShift: 14, ias: 36, oas: 48, seed: seed))
            out.append(PropertyConfig(kind: kind, granuleShift: 16, ias: 42, oas: 48, seed: seed))
        }
        out.append(PropertyConfig(kind: .appleDART, granuleShift: 14, ias: 36, oas: 36, seed: seed))
        out.append(PropertyConfig(kind: .appleDART2, granuleShift: 14, ias: 36, oas: 42, seed: seed))
    }
    return out
}()

@Suite("Random map/unmap agrees with a dictionary model")
struct PropertyTests {
    static let prots: [IOMMUProt] = [.read, .write, [.read, .write], [.read, .write, .cache], [.read, .noExec],
                                     [.read, .write, .priv], [.write, .mmio]]

    @Test(arguments: propertyConfigs)
    func randomOperationsAgreeWithModelAndWalker(config: PropertyConfig) throws {
        let frames = try makeFrames()
        try run(config, frames: frames)
        // The table is gone: every frame went back.
        #expect(frames.framesInUse == 0)
    }

    func run(_ config: PropertyConfig, frames: FrameAllocator) throws {
        var rng = SplitMix64(seed: config.seed)
        let table = try AnyIOPageTable(kind: config.kind, granule: PageSize(shift: config.granuleShift),
                                       configuration: PageTableConfiguration(ias: config.ias, oas: config.oas),
                                       frames: frames)
        let walk = try walker(for: table, memory: frames.memory)
        let g = config.granuleShift
        let page = UInt64(1) << UInt64(g)
        let sizes = table.geometry.pageSizes.sizes
        let blockShift: Int? = sizes.count > 1 ? sizes[1].shift : nil
        let blockPages = blockShift.map { 1 << ($0 - g) } ?? 1
        let windowPages = blockShift == nil ? 8192 : (g == 16 ? 4 : 8) * blockPages
        let paBase: UInt64 = 0x10_0000_0000 & ((1 << UInt64(config.oas)) - 1)
        var model: [UInt64: ModelPage] = [:]   // key: iova page number

        func check(_ pageNumber: UInt64) {
            let offset = UInt64.random(in: 0..<page, using: &rng) & ~7
            let iova = IOVA((pageNumber << UInt64(g)) + offset)
            let expected = model[pageNumber]
            #expect(table.iovaToPhys(iova) == expected.map { PhysAddr($0.paddr + offset) }, "iovaToPhys \(iova)")
            let result = walk.lookup(iova)
            guard let expected else {
                #expect(result.fault?.kind == .translation, "walker at unmapped \(iova)")
                return
            }
            guard let t = result.translation else {
                Issue.record("walker fault \(String(describing: result.fault)) at mapped \(iova)")
                return
            }
            #expect(t.physicalAddress == PhysAddr(expected.paddr + offset))
            #expect(t.blockShift == expected.leafShift, "leaf size at \(iova)")
            switch config.kind {
            case .armLPAEStage1:
                #expect(t.readable && t.writable == expected.prot.contains(.write))
                #expect(t.privilegedOnly == expected.prot.contains(.priv))
                #expect(t.executable == !expected.prot.contains(.noExec))
                let unprivileged = walk.translate(iova, access: .read)
                #expect((unprivileged.fault?.kind == .permission) == expected.prot.contains(.priv))
            default:
                #expect(t.readable == expected.prot.contains(.read))
                #expect(t.writable == expected.prot.contains(.write))
                let write = walk.translate(iova, access: .write)
                #expect((write.fault?.kind == .permission) == !expected.prot.contains(.write))
            }
        }

        func randomMappedPage() -> UInt64? {
            guard !model.isEmpty else { return nil }
            // Probe random pages first (cheap); fall back to a walk of the dictionary.
            for _ in 0..<16 {
                let candidate = UInt64.random(in: 0..<UInt64(windowPages), using: &rng)
                if model[candidate] != nil { return candidate }
            }
            let index = model.index(model.startIndex, offsetBy: Int.random(in: 0..<min(model.count, 64), using: &rng))
            return model[index].key
        }

        for _ in 0..<2000 {
            let roll = Int.random(in: 0..<100, using: &rng)
            let prot = Self.prots.randomElement(using: &rng)!
            if roll < 35 {
                // Map a run of pages, near an existing mapping a third of the time.
                let count = Int.random(in: 1...40, using: &rng)
                var start = UInt64.random(in: 0..<UInt64(windowPages - count), using: &rng)
                if roll < 12, let near = randomMappedPage() { start = min(near, UInt64(windowPages - count)) }
                let pa = paBase + (UInt64.random(in: 0..<(1 << 20), using: &rng) << UInt64(g))
                let overlaps = (0..<UInt64(count)).contains { model[start + $0] != nil }
                do {
                    try table.map(iova: IOVA(start << UInt64(g)), paddr: PhysAddr(pa), length: UInt64(count) * page, prot: prot)
                    #expect(!overlaps, "map over a mapping succeeded at page \(start)")
                    for i in 0..<UInt64(count) { model[start + i] = ModelPage(paddr: pa + i * page, prot: prot, leafShift: g) }
                } catch {
                    #expect(overlaps && error.code == .exists, "map at page \(start): \(error)")
                }
            } else if roll < 45, let blockShift {
                // Map one block.
                let block = UInt64.random(in: 0..<UInt64(windowPages / blockPages), using: &rng)
                let first = block * UInt64(blockPages)
                let pa = paBase + (UInt64.random(in: 0..<64, using: &rng) << UInt64(blockShift))
                let pages = (0..<UInt64(blockPages)).compactMap { model[first + $0] }
                let blockPresent = pages.contains { $0.leafShift == blockShift }
                do {
                    try table.map(iova: IOVA(first << UInt64(g)), paddr: PhysAddr(pa), length: 1 << UInt64(blockShift), prot: prot)
                    #expect(!blockPresent, "block map over a block succeeded")
                    // Linux replaces a table (and whatever it mapped) by the block.
                    for i in 0..<UInt64(blockPages) {
                        model[first + i] = ModelPage(paddr: pa + i * page, prot: prot, leafShift: blockShift)
                    }
                } catch {
                    #expect(blockPresent && error.code == .exists, "block map: \(error)")
                }
            } else if roll < 80, let start = randomMappedPage() {
                // Unmap a run of mapped pages (sometimes a whole block).
                var count: UInt64 = 0
                let limit = UInt64(Int.random(in: 1...(roll < 50 ? blockPages : 64), using: &rng))
                while count < limit, model[start + count] != nil { count += 1 }
                let bytes = table.unmap(iova: IOVA(start << UInt64(g)), length: count * page)
                #expect(bytes == count * page, "unmap of \(count) mapped pages at page \(start)")
                // Blocks that lost pages are split into granule pages.
                if let blockShift {
                    let blocksTouched = Set((0..<count).compactMap { i -> UInt64? in
                        model[start + i]!.leafShift == blockShift ? (start + i) / UInt64(blockPages) : nil
                    })
                    for i in 0..<count { model[start + i] = nil }
                    for block in blocksTouched {
                        for i in 0..<UInt64(blockPages) {
                            model[block * UInt64(blockPages) + i]?.leafShift = g
                        }
                    }
                } else {
                    for i in 0..<count { model[start + i] = nil }
                }
            } else if roll < 90 {
                // Unmap of an unmapped page returns 0.
                let pageNumber = UInt64.random(in: 0..<UInt64(windowPages), using: &rng)
                if model[pageNumber] == nil {
                    #expect(table.unmap(iova: IOVA(pageNumber << UInt64(g)), length: page) == 0)
                }
            }
            // Spot checks after every operation.
            if let mapped = randomMappedPage() { check(mapped) }
            check(UInt64.random(in: 0..<UInt64(windowPages), using: &rng))
        }
        // Full check of every mapped page.
        for pageNumber in model.keys { check(pageNumber) }
        #expect(table.liveTables().count == frames.framesInUse)

        // Unmap everything, one top-level entry's worth at a time (ignoring empty entries).
        let topShift = table.geometry.levelShift(table.geometry.startLevel)
        if table.geometry.pageSizes.contains(PageSize(shift: topShift)) {
            let windowBytes = UInt64(windowPages) << UInt64(g)
            var iova: UInt64 = 0
            while iova < windowBytes {
                _ = unmapPages(table, iova: iova, size: PageSize(shift: topShift))
                iova += 1 << UInt64(topShift)
            }
            #expect(frames.framesInUse == table.roots.count, "only the root(s) remain")
            for pageNumber in model.keys { #expect(table.iovaToPhys(IOVA(pageNumber << UInt64(g))) == nil) }
        }
    }
}
