import IOMMUBase
import IOMMUCore
import IOMMUTestSupport
import PhysicalMemory
import Testing
@testable import VFIOType1

/// Random MAP/UNMAP (v1 and v2) against a plain model of the mapping list: the same results,
/// errno and remaining mappings; locked memory returns to zero.
@Suite("VFIO mapping model")
struct MappingModelPropertyTests {
    struct Model {
        var v2: Bool
        var limit: Int
        var mappings: [(iova: UInt64, size: UInt64)] = []

        mutating func map(_ iova: UInt64, _ size: UInt64) -> Outcome {
            guard size != 0, size & 0xFFF == 0, iova & 0xFFF == 0 else { return .err(.invalidArgument) }
            if mappings.contains(where: { $0.iova < iova + size && iova < $0.iova + $0.size }) { return .err(.exists) }
            guard mappings.count < limit else { return .err(.noSpace) }
            mappings.append((iova, size))
            mappings.sort { $0.iova < $1.iova }
            return .ok(0)
        }

        mutating func unmap(_ iova: UInt64, _ size: UInt64, all: Bool) -> Outcome {
            guard iova & 0xFFF == 0 else { return .err(.invalidArgument) }
            if all {
                guard iova == 0, size == 0 else { return .err(.invalidArgument) }
                let total = mappings.reduce(0) { $0 + $1.size }
                mappings = []
                return .ok(total)
            }
            guard size != 0, size & 0xFFF == 0 else { return .err(.invalidArgument) }
            let end = iova + size
            if v2 {
                if mappings.contains(where: { $0.iova < iova && iova < $0.iova + $0.size }) { return .err(.invalidArgument) }
                if mappings.contains(where: { $0.iova < end && end < $0.iova + $0.size }) { return .err(.invalidArgument) }
            }
            var removed: UInt64 = 0
            var kept: [(iova: UInt64, size: UInt64)] = []
            var first = true
            var stop = false
            for m in mappings {
                let overlaps = m.iova < end && iova < m.iova + m.size
                if overlaps && !stop {
                    if first && !v2 && m.iova < iova {
                        stop = true
                        kept.append(m)
                        continue
                    }
                    first = false
                    removed += m.size
                } else {
                    kept.append(m)
                }
            }
            mappings = kept
            return .ok(removed)
        }
    }

    @Test(arguments: [VFIOIOMMUType.type1, .type1v2])
    func randomMapUnmapAgreesWithTheModel(type: VFIOIOMMUType) throws {
        for seed in TestSupport.propertySeeds {
            var rng = SplitMix64(seed: seed)
            let h = try VFIOHarness(vfioConfig: { $0.dmaEntryLimit = 24 })
            let (c, _) = try h.container(type)
            let va = try h.buffer(64 << 12)
            var model = Model(v2: type == .type1v2, limit: 24)
            var successfulUnmaps = 0
            for step in 0..<400 {
                let op = rng.next() % 10
                let page = rng.next() % 64
                var iova = page << 12
                var size = (1 + rng.next() % 8) << 12
                if rng.next() % 25 == 0 { iova |= 0x800 }
                if rng.next() % 25 == 0 { size = rng.next() % 3 == 0 ? 0 : size | 0x10 }
                let expected: Outcome
                let actual: Outcome
                if op < 5 {
                    expected = model.map(iova, size)
                    let vaddr = VirtAddr(va.rawValue + (rng.next() % 56) << 12)
                    do {
                        try c.mapDMA(iova: IOVA(iova), vaddr: vaddr, length: size, read: true, write: rng.next() % 2 == 0)
                        actual = .ok(0)
                    } catch { actual = .err(error.code) }
                } else {
                    let all = op == 9 && rng.next() % 4 == 0
                    let (ui, us) = all ? (rng.next() % 8 == 0 ? UInt64(0x1000) : 0, UInt64(0)) : (iova, size)
                    expected = model.unmap(ui, us, all: all)
                    do { actual = .ok(try c.unmapDMA(iova: IOVA(ui), length: us, all: all)) } catch { actual = .err(error.code) }
                }
                #expect(actual == expected, "seed \(seed) step \(step) op \(op) iova \(iova) size \(size)")
                let live = c.mappings.map { [$0.iova.rawValue, $0.length] }
                #expect(live == model.mappings.map { [$0.iova, $0.size] }, "seed \(seed) step \(step)")
                if actual != expected { return }
                if op >= 5, case .ok(let bytes) = actual, bytes > 0 { successfulUnmaps += 1 }
                let pages = model.mappings.reduce(0) { $0 + $1.size } >> 12
                #expect(h.host.lockedPages == pages)
                #expect(c.dmaAvailable == UInt32(24 - model.mappings.count))
            }
            #expect(successfulUnmaps > 10, "the walk exercised real unmaps")
            try c.unmapDMA(iova: IOVA(0), length: 0, all: true)
            #expect(h.host.lockedPages == 0)
            #expect(h.host.totalPins == 0)
            #expect(c.domains[0].fake.mappings.isEmpty)
        }
    }
}

enum Outcome: Equatable {
    case ok(UInt64)
    case err(Errno)
}
