import IOMMUBase
import IOVAAllocator
import Testing

/// Operation counts: 10^5 per seed by default (about a second each in debug); set
/// IOMMUKIT_STRESS=1 for 10^6.
let propertyOperationCount = stressEnabled ? 1_000_000 : 100_000

@Suite("IOVADomain against the reference model")
struct PropertyTests {
    static let dma32: UInt64 = 1 << 20

    /// Compares everything observable: nodes, cached nodes, max32_alloc_size, magazines, depot.
    func expectSameState(_ domain: IOVADomain, _ model: ReferenceIOVA, seed: UInt64, op: Int) {
        let snap = domain.snapshot()
        let modelNodes = model.nodes.dropLast().map { IOVAPFNRange(first: PFN($0.lo), last: PFN($0.hi)) }
        #expect(snap.nodes == Array(modelNodes), "seed \(seed) op \(op): nodes differ")
        #expect(snap.cachedPFN == model.cachedKey, "seed \(seed) op \(op): cached_node")
        #expect(snap.cached32PFN == model.cached32Key, "seed \(seed) op \(op): cached32_node")
        #expect(snap.max32AllocSize == model.max32, "seed \(seed) op \(op): max32_alloc_size")
        for cpu in 0..<model.cpus {
            for order in 0..<6 {
                #expect(snap.cpuMagazines[cpu][order].0 == model.loaded[cpu][order], "seed \(seed) op \(op): loaded[\(cpu)][\(order)]")
                #expect(snap.cpuMagazines[cpu][order].1 == model.prev[cpu][order], "seed \(seed) op \(op): prev[\(cpu)][\(order)]")
            }
        }
        for order in 0..<6 {
            #expect(snap.depot[order] == model.depot[order].reversed(), "seed \(seed) op \(op): depot[\(order)]")
            #expect(snap.depotDeadlines[order] == model.deadline[order], "seed \(seed) op \(op): depot work")
        }
        #expect(domain.checkInvariants() == nil, "seed \(seed) op \(op)")
    }

    /// Tree allocator: random sizes and limits in a small space (so the 32-bit space runs out and
    /// the retry pass and max32_alloc_size matter), random frees that move the cached nodes.
    @Test(arguments: [(UInt64(1), IOVADomain.Policy.checking), (2, .linuxCompatible), (3, .checking), (4, .linuxCompatible)])
    func treeAllocatorMatchesModel(seed: UInt64, policy: IOVADomain.Policy) throws {
        var rng = SplitMix64(seed: seed)
        let start = Self.dma32 - 3000
        let domain = try IOVADomain(granule: .size4K, startPFN: start, policy: policy)
        var model = ReferenceIOVA(startPFN: start)
        // Reservations at setup: one below 4 GiB, one straddling it.
        for (lo, hi) in [(Self.dma32 - 1500, Self.dma32 - 1400), (Self.dma32 - 20, Self.dma32 + 40)] {
            domain.reserve(lo: PFN(lo), hi: PFN(hi))
            let at = model.nodes.firstIndex { $0.lo > lo }!
            model.nodes.insert((lo, hi), at: at)
        }
        var live: [UInt64] = []
        var failures = 0
        let ops = propertyOperationCount
        for op in 0..<ops {
            let r = rng.next() % 100
            if r < 52 || live.isEmpty {
                let size: UInt64 = switch rng.next() % 40 {
                case 0: 100 + rng.next() % 400  // alignments of 2^8+ take the maxGap fallback
                case 1...4: 17 + rng.next() % 100
                default: 1 + rng.next() % 16
                }
                let limit: UInt64
                switch rng.next() % 4 {
                case 0: limit = Self.dma32 - 1 - rng.next() % 1500
                case 1: limit = Self.dma32 + 3000
                case 2: limit = Self.dma32 + 400 + rng.next() % 2000
                default: limit = Self.dma32 - 1
                }
                let aligned = rng.next() % 5 != 0
                let expected = model.alloc(size: size, limitPFN: limit, aligned: aligned)
                let got = try? domain.alloc(size: size, limitPFN: limit, sizeAligned: aligned)
                #expect(got?.first.rawValue == expected, "seed \(seed) op \(op): alloc(\(size), \(limit), \(aligned))")
                if got?.first.rawValue != expected { return }
                if got == nil { failures += 1 }
                if let got {
                    #expect(got.first.rawValue >= start && got.last.rawValue <= limit)
                    if aligned { #expect(got.first.rawValue % roundUpPowerOfTwo(size)! == 0) }
                    live.append(got.first.rawValue)
                }
            } else {
                let i = Int(rng.next() % UInt64(live.count))
                let pfn = live.remove(at: i)
                model.free(pfn)
                domain.free(PFN(pfn))
            }
            if op % 2000 == 0 { expectSameState(domain, model, seed: seed, op: op) }
        }
        expectSameState(domain, model, seed: seed, op: ops)
        #expect(failures > 100, "the space should run out now and then")
    }

    /// The DMA fast path on two CPUs: magazines, depot, flushes, depot work, and injected
    /// magazine allocation failures, compared with the model's arrays.
    @Test(arguments: [(UInt64(11), IOVADomain.Policy.checking), (12, .linuxCompatible)])
    func fastPathMatchesModel(seed: UInt64, policy: IOVADomain.Policy) throws {
        var rng = SplitMix64(seed: seed)
        let start = Self.dma32 - 12000
        let failure = FailNth()
        let sink = RecordingWarningSink()
        let domain = try IOVADomain(granule: .size4K, startPFN: start, cpuCount: 2, policy: policy,
                                    warningSink: sink, magazineAllocationFailure: failure)
        var model = ReferenceIOVA(startPFN: start, cpus: 2)
        var live: [(pfn: UInt64, size: UInt64)] = []
        var maxDepot = 0
        let ops = propertyOperationCount / (stressEnabled ? 1 : 2)
        for op in 0..<ops {
            let r = rng.next() % 1000
            let cpu = Int(rng.next() % 2)
            let rare = rng.next() % 10_000
            if rare < 2 {
                domain.flushCPU(cpu); model.flushCPU(cpu)
            } else if rare < 3 {
                domain.flushDepots(); model.flushDepots()
            } else if r < 10 {
                let ns = Int64(rng.next() % 150_000_000)
                domain.tick(nanoseconds: ns); model.tick(ns)
            } else if r < (op / 4000 % 2 == 0 ? 850 : 200) || live.isEmpty {
                let size: UInt64 = rng.next() % 8 == 0 ? 1 + rng.next() % 64 : 1 + rng.next() % 4
                let limit: UInt64 = rng.next() % 3 == 0 ? Self.dma32 + 8000 : Self.dma32 - 1
                let flush = rng.next() % 2 == 0
                let expected = model.fastAlloc(size: size, limitPFN: limit, flush: flush, cpu: cpu)
                let got = try? domain.fastAlloc(size: size, limitPFN: limit, flushCaches: flush, cpu: cpu)
                #expect(got?.rawValue == expected, "seed \(seed) op \(op): fastAlloc(\(size), \(limit), \(flush), cpu \(cpu))")
                if got?.rawValue != expected { return }
                if let got { live.append((got.rawValue, size)) }
            } else {
                let i = Int(rng.next() % UInt64(live.count))
                let (pfn, size) = live.remove(at: i)
                let fail = rng.next() % 8 == 0
                if fail { failure.failOn(1) }
                model.fastFree(pfn: pfn, size: size, cpu: cpu, magazineAllocFails: fail)
                domain.fastFree(pfn: PFN(pfn), size: size, cpu: cpu)
                failure.disarm()
            }
            maxDepot = max(maxDepot, model.depot.map(\.count).max()!)
            if op % 5000 == 0 { expectSameState(domain, model, seed: seed, op: op) }
        }
        #expect(maxDepot > 2, "the depot should fill beyond the trim threshold")
        expectSameState(domain, model, seed: seed, op: ops)
        #expect(sink.warnings == [])
        #expect(failure.failureCount > 0)
    }
}
