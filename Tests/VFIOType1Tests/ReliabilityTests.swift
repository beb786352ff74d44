import IOMMUBase
import IOMMUCore
import IOMMUTestSupport
import PhysicalMemory
import Synchronization
import Testing
@testable import VFIOType1

/// `VFIOContainer.checkConsistency()` after random workloads, a deliberately broken invariant,
/// and fail_nth sweeps over every VFIO entry point (docs/reliability.md).
@Suite("VFIO consistency checker and fail_nth sweeps")
struct ReliabilityTests {
    func expectClean(_ h: VFIOHarness, _ c: VFIOContainer, _ label: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(c.checkConsistency() == [], "\(label)", sourceLocation: sourceLocation)
        #expect(h.core.checkConsistency() == [], "\(label)", sourceLocation: sourceLocation)
    }

    @Test(arguments: TestSupport.propertySeeds)
    func randomMapUnmapStaysConsistent(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let h = try VFIOHarness()
        let (c, _) = try h.container(groups: ["a", "b"])
        let base = try h.buffer(0x40_0000, backing: .hugePages2M)
        let small = try h.buffer(0x10000)
        for step in 0..<200 {
            let iova = IOVA((rng.next() % 64) << 14)
            let pages = rng.next() % 8 + 1
            switch rng.next() % 4 {
            case 0, 1:
                let va = rng.next() % 2 == 0 ? VirtAddr(base.rawValue + (rng.next() % 32) << 14) : VirtAddr(small.rawValue + (rng.next() % 4) << 12)
                _ = try? c.mapDMA(iova: iova, vaddr: va, length: pages << 12, read: true, write: rng.next() % 2 == 0)
            case 2:
                _ = try? c.unmapDMA(iova: iova, length: pages << 14)
            default:
                _ = try? c.unmapDMA(iova: IOVA(0), length: 0, all: rng.next() % 8 == 0)
            }
            expectClean(h, c, "seed \(seed) step \(step)")
        }
        try c.unmapDMA(iova: IOVA(0), length: 0, all: true)
        #expect(h.host.totalPins == 0)
        #expect(h.host.lockedPages == 0)
    }

    @Test func aBrokenChargeAndAStaleTranslationAreReported() throws {
        let h = try VFIOHarness()
        let (c, _) = try h.container(groups: ["a"])
        try c.mapDMA(iova: IOVA(0x10_0000), vaddr: h.buffer(0x4000), length: 0x4000, read: true, write: true)
        expectClean(h, c, "before")
        c.state.withLock { $0.mappings[0].lockedPages += 1 }
        #expect(c.checkConsistency().contains { $0.message.contains("lockedPages") })
        c.state.withLock { $0.mappings[0].lockedPages -= 1 }
        // The page table loses a page the mapping list still records.
        _ = c.domains[0].unmap(iova: IOVA(0x10_0000), length: 0x1000)
        #expect(c.checkConsistency().contains { $0.component == "vfio" && $0.message.contains("translates") })
    }

    // MARK: - fail_nth sweeps

    enum Injector: String, CaseIterable, CustomTestStringConvertible {
        case pin, driver, core
        var testDescription: String { rawValue }
    }

    func injector(_ h: VFIOHarness, _ kind: Injector) -> FailNth {
        switch kind {
        case .pin: h.host.pinFailNth
        case .driver: h.driver.failNth
        case .core: h.core.domainAllocationFailNth
        }
    }

    /// Walks n = 1, 2, … with `kind` armed: `attempt` returns nil on success or the errno. After
    /// every failure the snapshot (mappings, ranges, dma_avail, locked, pins) is unchanged, the
    /// checkers are clean; the operation succeeds once disarmed. Returns the successful n.
    @discardableResult
    func sweep(_ kind: Injector, _ label: String, limit: Int = 64,
               setUp: (VFIOHarness) throws -> VFIOContainer,
               attempt: (VFIOHarness, VFIOContainer) -> Errno?,
               unchanged: (VFIOHarness, VFIOContainer) -> Void = { _, _ in }) throws -> Int {
        for n in 1...limit {
            let h = try VFIOHarness()
            let c = try setUp(h)
            let before = Snapshot(c, h.host)
            injector(h, kind).failOn(n)
            let result = attempt(h, c)
            let fired = injector(h, kind).failureCount > 0
            injector(h, kind).disarm()
            if result == nil {
                // A failure may be absorbed (pin: PFNMAP fallback; core: the blocking domain falls
                // back to an empty paging domain, as Linux does): then only consistency matters.
                expectClean(h, c, "\(label) [\(kind)] n=\(n) success")
                if !fired {
                    print("fail_nth sweep: \(label) [\(kind)] failed for n = 1..<\(n), succeeded at n = \(n)")
                    return n
                }
                continue
            }
            #expect(fired, "\(label) [\(kind)] n=\(n) failed with \(result!) without an injected failure")
            #expect(Snapshot(c, h.host) == before, "\(label) [\(kind)] n=\(n)")
            unchanged(h, c)
            expectClean(h, c, "\(label) [\(kind)] n=\(n)")
            #expect(attempt(h, c) == nil, "\(label) [\(kind)] n=\(n): retry")
            expectClean(h, c, "\(label) [\(kind)] n=\(n) retry")
        }
        Issue.record("\(label) [\(kind)] never succeeded")
        return limit
    }

    /// Opens the group of `device`, sets its container to `c` and runs `then`; on a failure
    /// closes the group again (the state before the attempt) and returns the errno.
    func join(_ h: VFIOHarness, _ c: VFIOContainer, device: String, then: () throws(IOMMUError) -> Void = {}) -> Errno? {
        let id = h.core.groupID(of: h.core.device(named: device)!)!
        let group: VFIOGroup
        do throws(IOMMUError) { group = try h.vfio.openGroup(id: id) } catch { return error.code }
        do throws(IOMMUError) {
            try group.setContainer(c)
            try then()
            return nil
        } catch {
            group.close()
            return error.code
        }
    }

    @Test(arguments: Injector.allCases)
    func setContainerAndSetIOMMU(_ kind: Injector) throws {
        // GROUP_SET_CONTAINER claims ownership; SET_IOMMU allocates and attaches the domain.
        try sweep(kind, "SET_CONTAINER+SET_IOMMU", setUp: { h in
            _ = try h.addGroup("a")
            return h.vfio.openContainer(process: h.host)
        }, attempt: { h, c in
            join(h, c, device: "a") { () throws(IOMMUError) in try c.setIOMMU(.type1v2) }
        })
    }

    @Test(arguments: Injector.allCases)
    func mapDMAThenUnmap(_ kind: Injector) throws {
        let n = try sweep(kind, "MAP_DMA", setUp: { h in
            let (c, _) = try h.container(groups: ["a", "b"])
            try h.host.map(length: 0x20_0000, backing: .hugePages2M, at: VirtAddr(0x20_0000_0000))
            try h.host.map(length: 0x8000, backing: .anonymous, at: VirtAddr(0x20_0020_0000))
            return c
        }, attempt: { h, c in
            errno { try c.mapDMA(iova: IOVA(0x4000_0000), vaddr: VirtAddr(0x20_0000_0000), length: 0x20_8000, read: true, write: true) }
        }, unchanged: { _, c in
            for domain in c.domains { #expect(domain.iovaToPhys(IOVA(0x4000_0000)) == nil) }
        })
        #expect(n > 1 || kind == .core, "the \(kind) injector is consulted by MAP_DMA")
        // UNMAP_DMA has no fallible call: n = 1 succeeds.
        try sweep(kind, "UNMAP_DMA", setUp: { h in
            let (c, _) = try h.container(groups: ["a"])
            try c.mapDMA(iova: IOVA(0x10_0000), vaddr: h.buffer(0x8000), length: 0x8000, read: true, write: true)
            return c
        }, attempt: { h, c in
            let result = errno { try c.unmapDMA(iova: IOVA(0x10_0000), length: 0x8000) }
            if result == nil { #expect(h.host.totalPins == 0 && h.host.lockedPages == 0) }
            return result
        })
    }

    @Test func externalPinPagesSweep() throws {
        let n = try sweep(.pin, "pinPages", setUp: { h in
            let c = h.vfio.openContainer(process: h.host)
            try h.vfio.openEmulatedGroup().setContainer(c)
            try c.setIOMMU(.type1v2)
            try c.mapDMA(iova: IOVA(0x10_0000), vaddr: h.buffer(0x8000), length: 0x8000, read: true, write: true)
            return c
        }, attempt: { _, c in
            let device = c.emulatedDevice(DeviceID(1)) ?? c.registerEmulatedDevice(name: "vgpu") { device, iova, length in
                device.unpinPages(iova: iova, count: Int(length >> 12))
            }
            return errno { _ = try device.pinPages(iova: IOVA(0x10_1000), count: 2, prot: [.read, .write]) }
        })
        #expect(n > 1)
    }

    @Test func unmapNotifierSweep() throws {
        // Lose the n-th unmap notification: the unmap retries and succeeds; nothing leaks.
        // (Every round lost → EBUSY, mapping intact: ExternalPinningTests' misbehaving driver.)
        let h = try VFIOHarness()
        let c = h.vfio.openContainer(process: h.host)
        try h.vfio.openEmulatedGroup().setContainer(c)
        try c.setIOMMU(.type1v2)
        try c.mapDMA(iova: IOVA(0x10_0000), vaddr: h.buffer(0x8000), length: 0x8000, read: true, write: true)
        let device = c.registerEmulatedDevice(name: "vgpu") { device, iova, length in
            device.unpinPages(iova: iova, count: Int(length >> 12))
        }
        for n in 1...5 {
            _ = try device.pinPages(iova: IOVA(0x10_1000), count: 1, prot: [.read])
            h.vfio.notifierFailNth.failOn(n)
            let bytes = try c.unmapDMA(iova: IOVA(0x10_0000), length: 0x8000)
            h.vfio.notifierFailNth.disarm()
            #expect(bytes == 0x8000, "n=\(n): a lost notification is retried")
            expectClean(h, c, "n=\(n)")
            #expect(h.host.totalPins == 0 && h.host.lockedPages == 0)
            try c.mapDMA(iova: IOVA(0x10_0000), vaddr: h.buffer(0x8000), length: 0x8000, read: true, write: true)
        }
    }
}
