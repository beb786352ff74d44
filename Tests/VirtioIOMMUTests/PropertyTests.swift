import IOMMUBase
import IOMMUTestSupport
import Testing
@testable import VirtioIOMMU

/// A deliberately simple model of domains, endpoints and mappings (the oracle).
struct VirtioModel {
    struct Domain {
        var bypass: Bool
        var endpoints: Set<UInt32> = []
        var mappings: [VirtioMapping] = []
    }

    var endpoints: Set<UInt32>
    var attached: [UInt32: UInt32] = [:]
    var domains: [UInt32: Domain] = [:]

    mutating func attach(_ d: UInt32, _ e: UInt32, bypass: Bool) -> VirtioIOMMUStatus {
        guard endpoints.contains(e) else { return .noEntry }
        let current = attached[e]
        if let target = domains[d] {
            guard target.bypass == bypass else { return .invalid }
            if current == d {
                if target.endpoints.count > 1 { return .ok }
                domains[d]!.mappings = []
                return .ok
            }
        }
        if let current {
            domains[current]!.endpoints.remove(e)
            if domains[current]!.endpoints.isEmpty { domains[current] = nil }
        }
        if domains[d] == nil { domains[d] = Domain(bypass: bypass) }
        domains[d]!.endpoints.insert(e)
        attached[e] = d
        return .ok
    }

    mutating func detach(_ d: UInt32, _ e: UInt32) -> VirtioIOMMUStatus {
        guard endpoints.contains(e) else { return .noEntry }
        guard attached[e] == d else { return .invalid }
        attached[e] = nil
        domains[d]!.endpoints.remove(e)
        if domains[d]!.endpoints.isEmpty { domains[d] = nil }
        return .ok
    }

    mutating func map(_ m: VirtioMapping) -> VirtioIOMMUStatus {
        guard m.flags & ~7 == 0 else { return .invalid }
        guard let domain = domains[m.domain] else { return .noEntry }
        guard !domain.bypass else { return .invalid }
        guard m.last >= m.first else { return .invalid }
        guard m.first % G == 0, m.phys % G == 0, (m.last + 1) % G == 0 else { return .range }
        guard !domain.mappings.contains(where: { $0.first <= m.last && m.first <= $0.last }) else { return .invalid }
        domains[m.domain]!.mappings.append(m)
        domains[m.domain]!.mappings.sort { $0.first < $1.first }
        return .ok
    }

    mutating func unmap(_ d: UInt32, _ first: UInt64, _ last: UInt64) -> VirtioIOMMUStatus {
        guard let domain = domains[d] else { return .noEntry }
        guard !domain.bypass else { return .invalid }
        guard last >= first else { return .invalid }
        let hit = domain.mappings.filter { $0.first <= last && first <= $0.last }
        guard hit.allSatisfy({ $0.first >= first && $0.last <= last }) else { return .range }
        domains[d]!.mappings.removeAll { $0.first >= first && $0.last <= last }
        return .ok
    }

    /// nil: a fault with that reason; otherwise the physical address (identity for bypass).
    func translate(_ e: UInt32, _ iova: UInt64, write: Bool) -> (reason: UInt8?, phys: UInt64?) {
        guard endpoints.contains(e) else { return (0, nil) }
        guard let d = attached[e], let domain = domains[d] else { return (1, nil) }
        if domain.bypass { return (nil, iova) }
        guard let m = domain.mappings.first(where: { $0.first <= iova && iova <= $0.last }) else { return (2, nil) }
        let needed = write ? W : R
        guard m.flags & needed != 0 else { return (2, nil) }
        return (nil, m.phys + (iova - m.first))
    }
}

@Suite struct PropertyTests {
    @Test(arguments: TestSupport.propertySeeds + [7, 42, 1234, 0xDEAD_BEEF])
    func randomRequestSequencesAgreeWithTheModel(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let h = try Harness(endpoints: [1, 2, 3, 4])
        var model = VirtioModel(endpoints: [1, 2, 3, 4])
        func pick<T>(_ values: [T]) -> T { values[Int(rng.next() % UInt64(values.count))] }
        for step in 0..<400 {
            let domain = UInt32(rng.next() % 5)
            let endpoint = pick([1, 2, 3, 4, 1, 2, 9] as [UInt32])
            let expected: VirtioIOMMUStatus
            let reply: Reply
            switch rng.next() % 10 {
            case 0, 1:
                let bypass = rng.next() % 5 == 0
                expected = model.attach(domain, endpoint, bypass: bypass)
                reply = h.attach(domain, endpoint, flags: bypass ? VirtioIOMMUWire.attachFlagBypass : 0)
            case 2:
                expected = model.detach(domain, endpoint)
                reply = h.detach(domain, endpoint)
            case 3, 4, 5, 6:
                let page = rng.next() % 64
                let pages = 1 + rng.next() % 6
                var first = page * G
                var last = first + pages * G - 1
                var phys = 0x8000_0000 + (rng.next() % 4096) * G
                switch rng.next() % 16 {
                case 0: first += 0x800
                case 1: phys += 0x10
                case 2: swap(&first, &last)
                default: break
                }
                let flags = pick([R, W, R | W, R | W, R | W, 0, R | MMIO, 8] as [UInt32])
                let mapping = VirtioMapping(domain: domain, first: first, last: last, phys: phys, flags: flags)
                expected = model.map(mapping)
                reply = h.map(domain, first, last, phys, flags)
            default:
                let first = (rng.next() % 70) * G
                let last = first + (1 + rng.next() % 12) * G - 1
                let (f, l) = rng.next() % 20 == 0 ? (last, first) : (first, last)
                expected = model.unmap(domain, f, l)
                reply = h.unmap(domain, f, l)
            }
            #expect(reply.status == expected, "seed \(seed) step \(step)")
            #expect(reply.used == 4)
            // Translations through the hardware walk agree with the model.
            for _ in 0..<4 {
                let e = pick([1, 2, 3, 4] as [UInt32])
                let iova = (rng.next() % 72) * G + rng.next() % G
                let write = rng.next() & 1 == 0
                let want = model.translate(e, iova, write: write)
                switch h.device.translate(endpoint: e, iova: iova, write: write) {
                case .bypass: #expect(want.reason == nil && want.phys == iova, "seed \(seed) step \(step)")
                case .translated(let pa): #expect(want.reason == nil && want.phys == pa.rawValue, "seed \(seed) step \(step) iova \(iova)")
                case .fault(let fault): #expect(want.reason == fault.reason, "seed \(seed) step \(step) iova \(iova)")
                }
            }
            if step % 50 == 0 { #expect(h.device.mappingConsistencyViolations() == [], "seed \(seed) step \(step)") }
        }
        let snapshot = h.device.snapshot
        #expect(snapshot.domains.map(\.id) == model.domains.keys.sorted())
        for domain in snapshot.domains {
            #expect(domain.mappings == model.domains[domain.id]!.mappings)
            #expect(Set(domain.endpoints) == model.domains[domain.id]!.endpoints)
        }
        #expect(h.device.mappingConsistencyViolations() == [])
        // Tearing everything down returns every table page.
        h.device.reset()
        #expect(h.frames.framesInUse == 0)
    }
}
