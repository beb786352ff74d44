import IOMMUBase
import IOVAAllocator
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Two threads on two CPUs hammer one domain with fast allocations and frees whose lifetimes
/// overlap; an ownership map (one atomic flag per pfn) proves that no pfn is ever live twice.
///
/// 10^5 operations per thread by default; IOMMUKIT_STRESS=1 runs 10^6 (use it with
/// `swift test -c release` or `swift test --sanitize=thread --filter ConcurrencyTests`).
@Suite("IOVA concurrency")
struct ConcurrencyTests {
    static let space: UInt64 = 1 << 16  // pfns below 4 GiB available to the test

    @Test(arguments: IOVADomain.Policy.allCases)
    func twoThreadsNeverShareAPfn(policy: IOVADomain.Policy) throws {
        let operations = stressEnabled ? 1_000_000 : 100_000
        let dma32: UInt64 = 1 << 20
        let start = dma32 - Self.space
        let sink = RecordingWarningSink()
        let domain = try IOVADomain(granule: .size4K, startPFN: start, cpuCount: 2, policy: policy, warningSink: sink)
        let owners = OwnershipMap(count: Int(Self.space))
        let failures = Atomic<Int>(0)
        runOnThreads(2) { thread in
            var rng = SplitMix64(seed: UInt64(thread) + 1)
            let window = 64
            var live = [(pfn: UInt64, size: UInt64)](repeating: (0, 0), count: window)
            for op in 0..<operations {
                let slot = Int(rng.next() % UInt64(window))
                let held = live[slot]
                if held.pfn != 0 {
                    owners.release(held.pfn - start, held.size)
                    // Sometimes free on the other CPU: the pfn migrates between caches.
                    let cpu = rng.next() % 8 == 0 ? 1 - thread : thread
                    domain.fastFree(pfn: PFN(held.pfn), size: held.size, cpu: cpu)
                    live[slot] = (0, 0)
                }
                if op % 3 != 2 {
                    let size: UInt64 = rng.next() % 16 == 0 ? 33 + rng.next() % 8 : 1 + rng.next() % 8
                    if let pfn = try? domain.fastAlloc(size: size, limitPFN: dma32 - 1, flushCaches: true, cpu: thread) {
                        let rounded = size < 32 ? roundUpPowerOfTwo(size)! : size
                        if !owners.claim(pfn.rawValue - start, rounded) { failures.add(1, ordering: .relaxed) }
                        live[slot] = (pfn.rawValue, rounded)
                    }
                }
                if thread == 0 && op % 50_000 == 0 { domain.tick(nanoseconds: 100_000_000) }
            }
            for held in live where held.pfn != 0 {
                owners.release(held.pfn - start, held.size)
                domain.fastFree(pfn: PFN(held.pfn), size: held.size, cpu: thread)
            }
        }
        #expect(failures.load(ordering: .relaxed) == 0, "a pfn was live twice")
        #expect(sink.totalCount == 0)
        #expect(domain.checkInvariants() == nil)
    }
}

/// One atomic flag per pfn: claim fails if any pfn of the range is already owned.
final class OwnershipMap: @unchecked Sendable {
    private let flags: UnsafeMutablePointer<Atomic<UInt8>>
    private let count: Int

    init(count: Int) {
        self.count = count
        flags = .allocate(capacity: count)
        for i in 0..<count { (flags + i).initialize(to: Atomic(0)) }
    }

    deinit {
        flags.deinitialize(count: count)
        flags.deallocate()
    }

    func claim(_ first: UInt64, _ pages: UInt64) -> Bool {
        var ok = true
        for i in 0..<Int(pages) where flags[Int(first) + i].exchange(1, ordering: .acquiringAndReleasing) != 0 { ok = false }
        return ok
    }

    func release(_ first: UInt64, _ pages: UInt64) {
        for i in 0..<Int(pages) { flags[Int(first) + i].store(0, ordering: .releasing) }
    }
}

