import IOMMUBase
import Testing
@testable import IOVAAllocator

/// `IOVADomain.checkConsistency()`, the shared shape over `checkInvariants()`.
@Suite("IOVA consistency checker")
struct IOVAConsistencyCheckTests {
    @Test func cleanAfterARandomWorkloadThroughTheCaches() throws {
        let domain = try IOVADomain(granule: .size4K, startPFN: 1, cpuCount: 2)
        var rng = SplitMix64(seed: 42)
        var live: [(PFN, UInt64)] = []
        for step in 0..<2000 {
            let cpu = Int(rng.next() % 2)
            if rng.next() % 3 != 0 || live.isEmpty {
                let size = UInt64(1) << (rng.next() % 6)
                if let pfn = try? domain.fastAlloc(size: size, limitPFN: 1 << 20, flushCaches: true, cpu: cpu) { live.append((pfn, size)) }
            } else {
                let (pfn, size) = live.remove(at: Int(rng.next() % UInt64(live.count)))
                domain.fastFree(pfn: pfn, size: size, cpu: cpu)
            }
            if step % 100 == 0 { #expect(domain.checkConsistency() == [], "step \(step)") }
        }
        #expect(domain.checkConsistency() == [])
        domain.flushAllCaches()
        #expect(domain.checkConsistency() == [])
    }
}
