import IOMMUKit

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The IOVA workloads of perf-baseline.md (W1, W1b, W2, W3 rand/fifo under both DMA policies,
/// W4), shared by `iommu bench iova` and its tests.
enum IOVAWorkload: String, CaseIterable, Sendable {
    case w1 = "W1"
    case w1b = "W1b"
    case w2 = "W2"
    case w3Rand = "W3 rand"
    case w3Rand48 = "W3 rand 48-bit only"
    case w3Fifo = "W3 fifo"
    case w4 = "W4"

    /// Linux's median, ns per alloc+free pair (perf-baseline.md).
    var linuxNanoseconds: Double {
        switch self {
        case .w1, .w1b: 13.7
        case .w2: 41.3
        case .w3Rand: 36_000
        case .w3Rand48: 153_000
        case .w3Fifo: 1_015
        case .w4: 14.6
        }
    }

    var summary: String {
        switch self {
        case .w1: "fastAlloc+fastFree of 1 page (magazine hot path, 32-bit first)"
        case .w1b: "as W1 with 256 outstanding per round (magazine swaps, depot)"
        case .w2: "as W1 with random sizes 1..64 pages (33+ take the tree)"
        case .w3Rand: "tree: 100,000 live 1..16-page allocations, free random + alloc; 32-bit first until the first failure"
        case .w3Rand48: "as W3 rand, 48-bit limit only"
        case .w3Fifo: "as W3 rand, freeing the oldest"
        case .w4: "two threads on two CPUs each doing W1 on one domain (ns per thread per pair)"
        }
    }

    /// Pairs measured at scale 1.
    var baseCount: Int {
        switch self {
        case .w1, .w1b, .w2, .w4: 20_000_000
        case .w3Rand, .w3Rand48, .w3Fifo: 100_000
        }
    }
}

/// The DMA layer's allocation rule (linux-iommu.md §2.4): 32-bit first while the device's flag is
/// set (cleared on the first failure), then the full limit with cache flushing.
struct DMAAllocationRule {
    var tryThirtyTwoBitFirst: Bool
    static let limit32: UInt64 = 0xFFFFF
    static let limit48: UInt64 = 0xF_FFFF_FFFF

    @inline(always)
    mutating func fastAlloc(_ domain: IOVADomain, size: UInt64, cpu: Int) -> UInt64 {
        if tryThirtyTwoBitFirst {
            if let pfn = try? domain.fastAlloc(size: size, limitPFN: Self.limit32, flushCaches: false, cpu: cpu) {
                return pfn.rawValue
            }
            tryThirtyTwoBitFirst = false
        }
        return Self.fullWidth(domain, size: size, cpu: cpu)
    }

    /// The full-width attempt (after the first 32-bit failure), kept out of the inlined path.
    @inline(never)
    static func fullWidth(_ domain: IOVADomain, size: UInt64, cpu: Int) -> UInt64 {
        (try? domain.fastAlloc(size: size, limitPFN: limit48, flushCaches: true, cpu: cpu))?.rawValue ?? 0
    }

    @inline(__always)
    mutating func treeAlloc(_ domain: IOVADomain, size: UInt64) -> UInt64 {
        if tryThirtyTwoBitFirst {
            if let r = try? domain.alloc(size: size, limitPFN: Self.limit32, sizeAligned: true) { return r.first.rawValue }
            tryThirtyTwoBitFirst = false
        }
        return (try? domain.alloc(size: size, limitPFN: Self.limit48, sizeAligned: true))?.first.rawValue ?? 0
    }
}

@inline(__always)
func nowNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// Runs one workload once; returns ns per alloc+free pair (per thread for W4) and, for W4, the
/// single-thread figure measured in the same run.
func runIOVAWorkload(_ workload: IOVAWorkload, policy: IOVADomain.Policy, scale: Double, seed: UInt64 = 1)
    throws -> (nsPerPair: Double, singleThreadNsPerPair: Double?)
{
    let count = max(1, Int(Double(workload.baseCount) * scale))
    switch workload {
    case .w1:
        let domain = try IOVADomain(startPFN: 1, cpuCount: 2, policy: policy)
        return (w1Loop(domain, count: count, cpu: 0), nil)
    case .w1b:
        let domain = try IOVADomain(startPFN: 1, cpuCount: 2, policy: policy)
        var rule = DMAAllocationRule(tryThirtyTwoBitFirst: true)
        var outstanding = [UInt64](repeating: 0, count: 256)
        let rounds = max(1, count / 256)
        let t0 = nowNanoseconds()
        for _ in 0..<rounds {
            for i in 0..<256 { outstanding[i] = rule.fastAlloc(domain, size: 1, cpu: 0) }
            for i in 0..<256 { domain.fastFree(pfn: PFN(outstanding[i]), size: 1, cpu: 0) }
        }
        return (Double(nowNanoseconds() - t0) / Double(rounds * 256), nil)
    case .w2:
        let domain = try IOVADomain(startPFN: 1, cpuCount: 2, policy: policy)
        var rule = DMAAllocationRule(tryThirtyTwoBitFirst: true)
        var rng = SplitMix64(seed: seed)
        var sizes = [UInt64](repeating: 0, count: 4096)
        for i in 0..<sizes.count { sizes[i] = 1 + rng.next() % 64 }
        let t0 = nowNanoseconds()
        for i in 0..<count {
            let size = sizes[i & 4095]
            let pfn = rule.fastAlloc(domain, size: size, cpu: 0)
            domain.fastFree(pfn: PFN(pfn), size: size, cpu: 0)
        }
        return (Double(nowNanoseconds() - t0) / Double(count), nil)
    case .w3Rand, .w3Rand48, .w3Fifo:
        let domain = try IOVADomain(startPFN: 1, cpuCount: 2, policy: policy)
        var rule = DMAAllocationRule(tryThirtyTwoBitFirst: workload != .w3Rand48)
        var rng = SplitMix64(seed: seed)
        let live = max(16, Int(100_000 * min(scale, 1)))
        var pfns = [UInt64](repeating: 0, count: live)
        var sizes = [UInt64](repeating: 0, count: live)
        for i in 0..<live {
            sizes[i] = 1 + rng.next() % 16
            pfns[i] = rule.treeAlloc(domain, size: sizes[i])
        }
        var oldest = 0
        let t0 = nowNanoseconds()
        for _ in 0..<count {
            let i: Int
            if workload == .w3Fifo {
                i = oldest
                oldest = oldest + 1 == live ? 0 : oldest + 1
            } else {
                i = Int(rng.next() % UInt64(live))
            }
            domain.free(PFN(pfns[i]))
            sizes[i] = 1 + rng.next() % 16
            pfns[i] = rule.treeAlloc(domain, size: sizes[i])
        }
        return (Double(nowNanoseconds() - t0) / Double(count), nil)
    case .w4:
        let single = try IOVADomain(startPFN: 1, cpuCount: 2, policy: policy)
        let one = w1Loop(single, count: count, cpu: 0)
        let domain = try IOVADomain(startPFN: 1, cpuCount: 2, policy: policy)
        let results = collectOnThreads(2) { thread in w1Loop(domain, count: count, cpu: thread) }
        return ((results[0] + results[1]) / 2, one)
    }
}

func w1Loop(_ domain: IOVADomain, count: Int, cpu: Int) -> Double {
    var rule = DMAAllocationRule(tryThirtyTwoBitFirst: true)
    let t0 = nowNanoseconds()
    for _ in 0..<count {
        let pfn = rule.fastAlloc(domain, size: 1, cpu: cpu)
        domain.fastFree(pfn: PFN(pfn), size: 1, cpu: cpu)
    }
    return Double(nowNanoseconds() - t0) / Double(count)
}

/// Runs `body(index)` on `n` new threads at once and returns their results.
func collectOnThreads(_ n: Int, _ body: @escaping @Sendable (Int) -> Double) -> [Double] {
    let results = IOMMUMutex([Double](repeating: 0, count: n))
    runOnThreads(n) { (index: Int) -> Void in
        let value = body(index)
        results.withLock { $0[index] = value }
    }
    return results.withLock { $0 }
}
