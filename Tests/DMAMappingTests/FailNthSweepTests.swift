import IOMMUBase
import IOMMUCore
import IOMMUHardware
import IOVAAllocator
import IOMMUTestSupport
import PhysicalMemory
import Testing
@testable import DMAMapping

/// iommufd-style `fail_nth` sweeps over the DMA layer, on the flat IOMMU and on the Arm SMMU
/// model (real page tables), strict and lazy: for each public mutating operation of `DMAAPI` /
/// `DMADevice` and each injector, fail the n-th fallible call for n = 1, 2, … until the
/// operation succeeds. After every failure: the call failed the Linux way, no DMA-debug record,
/// IOVA allocation, bounce slot or frame was added (page-table pages the table installed are
/// the documented exception), the checkers are clean, the operation succeeds once disarmed and
/// the device still maps normally. After the fixture is torn down, nothing is left.
@Suite("fail_nth sweeps: DMA layer")
struct DMAFailNthSweepTests {
    enum Injector: String, CaseIterable, CustomTestStringConvertible {
        /// `DMAAPI.iovaFailNth`: IOVA allocation.
        case iova
        /// `FrameAllocator.failNth`: coherent pages and page-table pages.
        case frames
        /// `BouncePool.failNth`: bounce slots.
        case bounce
        /// `DMAAPI.magazineFailNth`: a new magazine in the rcache insert.
        case magazine
        /// `DMAAPI.failNth`: cookie and flush-queue allocation in `setupDevice`.
        case setup
        var testDescription: String { rawValue }
    }

    enum Platform: String, CaseIterable, CustomTestStringConvertible {
        case flat, smmu
        var testDescription: String { rawValue }
    }

    /// A platform with one IOMMU and one PCI device (probed, bound, and set up for DMA unless
    /// `setUpDevice` is false), a bounce pool, and a few data pages.
    final class Fixture {
        let memory: PhysicalMemory
        let frames: FrameAllocator
        let core: IOMMUCore
        let smmuDriver: ARMSMMUDriver?
        let clock = ManualDMAClock()
        let warnings = RecordingWarningSink(capacity: 100_000)
        let api: DMAAPI
        let id: DeviceID
        var device: DMADevice!
        /// Data pages (allocated before the device, so the baseline includes them).
        let pages: [PhysAddr]
        /// Frames in use with no device set up: pool + data pages.
        let baselineFrames: Int
        let lazy: Bool

        init(platform: Platform, lazy: Bool, untrusted: Bool = false, setUpDevice: Bool = true) throws {
            self.lazy = lazy
            memory = try PhysicalMemory()
            frames = FrameAllocator(memory: memory)
            core = IOMMUCore(configuration: IOMMUCoreConfiguration(cpuPageSize: .size4K, defaultDomainType: lazy ? .dmaFQ : .dma))
            let iommuName: String
            switch platform {
            case .flat:
                iommuName = "flat0"
                smmuDriver = nil
                _ = try core.registerIOMMU(name: iommuName, driver: FlatIOMMUDriver(coverage: 1 << 32))
            case .smmu:
                iommuName = "smmu0"
                let smmu = ARMSMMU(name: iommuName, memory: memory, configuration: SMMUConfiguration())
                let driver = ARMSMMUDriver(smmu: smmu, core: core, frames: frames)
                smmuDriver = driver
                _ = try core.registerIOMMU(name: iommuName, driver: driver)
            }
            var configuration = DMAConfiguration()
            configuration.bouncePoolBytes = 64 << 10
            // One IOVA allocation per map (no 32-bit-first retry): see
            // `failed32BitAttemptSwitchesTheDeviceToFullWidth` for that path.
            configuration.forceDAC = true
            api = try DMAAPI(core: core, memory: memory, frames: frames, configuration: configuration, clock: clock, warningSink: warnings)
            var data: [PhysAddr] = []
            for i in 0..<8 {
                let page = try frames.allocate(.size4K)
                try memory.fill(page, length: 4096, with: UInt8(0x10 + i))
                data.append(page)
            }
            pages = data
            baselineFrames = frames.framesInUse
            id = try core.addDevice(.pci(PCIAddress(bus: 0, device: 3, function: 0),
                                         iommu: FirmwareIOMMUSpec(iommu: iommuName, streamIDs: [StreamID(0x300)]), untrusted: untrusted))
            try core.bindDriver(id, name: "nic")
            if setUpDevice { device = try api.setupDevice(id) }
        }

        func injector(_ kind: Injector) -> FailNth {
            switch kind {
            case .iova: api.iovaFailNth
            case .frames: frames.failNth
            case .bounce: api.bouncePool!.failNth
            case .magazine: api.magazineFailNth
            case .setup: api.failNth
            }
        }

        func disarmAll() { for kind in Injector.allCases { injector(kind).disarm() } }

        var domain: IOMMUDomain { core.defaultDomain(for: id)! }
        var cookie: DMACookie? { api.cookie(of: domain) }
        var tableFrames: Int { (domain.ops as? SMMUDomainOps)?.liveTableCount ?? 0 }

        /// What a failed operation must leave as it was.
        struct State: Equatable, CustomStringConvertible {
            var live: [IOVA]
            /// IOVA allocations: tree nodes that are not cached in a magazine or depot.
            var iovaAllocations: [IOVAPFNRange]
            /// Frames in use other than page-table pages.
            var frames: Int
            var bounceSlots: Int
            var description: String {
                "live \(live), iova \(iovaAllocations), frames \(frames), bounce slots \(bounceSlots)"
            }
        }

        func state() -> State {
            var allocations: [IOVAPFNRange] = []
            if let iovad = cookie?.iovad {
                let snapshot = iovad.snapshot()
                var cached = Set<UInt64>()
                for cpu in snapshot.cpuMagazines { for (loaded, prev) in cpu { cached.formUnion(loaded); cached.formUnion(prev) } }
                for order in snapshot.depot { for magazine in order { cached.formUnion(magazine) } }
                allocations = snapshot.nodes.filter { !cached.contains($0.first.rawValue) }
            }
            return State(live: (device?.liveMappings ?? []).map(\.address), iovaAllocations: allocations,
                         frames: frames.framesInUse - tableFrames, bounceSlots: api.bouncePool!.slotsInUse)
        }

        func expectConsistent(_ label: String, sourceLocation: SourceLocation = #_sourceLocation) {
            #expect(core.checkConsistency() == [], "\(label)", sourceLocation: sourceLocation)
            if let cookie { #expect(cookie.iovad.checkConsistency() == [], "\(label)", sourceLocation: sourceLocation) }
            if let smmuDriver {
                #expect(smmuDriver.checkConsistency() == [], "\(label)", sourceLocation: sourceLocation)
                if let ops = domain.ops as? SMMUDomainOps {
                    #expect(ops.checkPageTableConsistency() == [], "\(label)", sourceLocation: sourceLocation)
                }
            }
        }

        /// The device still maps normally: a page maps, translates to its buffer, and unmaps.
        func expectStillMaps(_ label: String, sourceLocation: SourceLocation = #_sourceLocation) {
            guard let device else { return }
            let page = pages[7]
            let a = device.mapPage(page, length: 4096, direction: .bidirectional, cpu: 0)
            #expect(!device.mappingError(a), "\(label): the device can no longer map", sourceLocation: sourceLocation)
            guard !device.mappingError(a) else { return }
            #expect(domain.iovaToPhys(a) == page, "\(label)", sourceLocation: sourceLocation)
            device.unmapPage(a, length: 4096, direction: .bidirectional, cpu: 0)
            if lazy { cookie?.flushQueuesNow(cpu: 0) }
        }

        /// Removes the device (its default domain and page table go with it) and checks that
        /// nothing it used is left.
        func tearDownAndCheckLeaks(_ label: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
            disarmAll()
            cookie?.flushQueuesNow(cpu: 0)
            #expect(device?.liveMappings ?? [] == [], "\(label): live mappings at teardown", sourceLocation: sourceLocation)
            #expect(api.bouncePool!.slotsInUse == 0, "\(label): bounce slots leaked", sourceLocation: sourceLocation)
            try api.removeDevice(id)
            #expect(frames.framesInUse == baselineFrames, "\(label): \(frames.framesInUse - baselineFrames) frames leaked", sourceLocation: sourceLocation)
            #expect(core.liveDomainCount == 0, "\(label): domains leaked", sourceLocation: sourceLocation)
            #expect(core.checkConsistency() == [], "\(label)", sourceLocation: sourceLocation)
        }
    }

    /// Walks n = 1, 2, … until `attempt` succeeds with the injector not firing. `setUp` builds
    /// the state the operation needs, `attempt` runs it (true: success as Linux reports it;
    /// on a failure it must leave `State` unchanged), `afterFailure` checks more, `cleanUp`
    /// undoes a success. Returns the first n at which nothing failed.
    @discardableResult
    func sweep(
        _ label: String, _ injector: Injector, platform: Platform, lazy: Bool, untrusted: Bool = false,
        setUpDevice: Bool = true, limit: Int = 64,
        setUp: (Fixture) throws -> Void = { _ in },
        attempt: (Fixture) throws -> Bool,
        afterFailure: (Fixture) throws -> Void = { _ in },
        cleanUp: (Fixture) throws -> Void = { _ in }
    ) throws -> Int {
        let name = "\(label) [\(injector)] \(platform) \(lazy ? "lazy" : "strict")"
        for n in 1...limit {
            let f = try Fixture(platform: platform, lazy: lazy, untrusted: untrusted, setUpDevice: setUpDevice)
            try setUp(f)
            let before = f.state()
            f.injector(injector).failOn(n)
            let ok = try attempt(f)
            let fired = f.injector(injector).failureCount > 0
            f.disarmAll()
            if !ok {
                #expect(fired, "\(name) n=\(n): failed with nothing injected")
                #expect(f.state() == before, "\(name) n=\(n): a failed operation changed the state")
                try afterFailure(f)
                f.expectConsistent("\(name) n=\(n)")
                #expect(try attempt(f), "\(name) n=\(n): retry after the failure")
                f.expectConsistent("\(name) n=\(n) after retry")
            } else {
                f.expectConsistent("\(name) n=\(n) success")
            }
            try cleanUp(f)
            f.expectStillMaps("\(name) n=\(n)")
            try f.tearDownAndCheckLeaks("\(name) n=\(n)")
            if !fired {
                print("fail_nth sweep: \(name) failed for n = 1..<\(n), succeeded at n = \(n)")
                return n
            }
        }
        Issue.record("\(name) did not succeed within \(limit) failures")
        return limit
    }

    /// The after-failure check can fail: an IOVA or bounce slot left behind, a live record.
    @Test func stateComparisonSeesALeakedIOVABounceSlotAndRecord() throws {
        let f = try Fixture(platform: .flat, lazy: false)
        let before = f.state()
        let pfn = try f.cookie!.iovad.fastAlloc(size: 1, limitPFN: 0xFFFFF, flushCaches: false, cpu: 0)
        #expect(f.state() != before && f.state().iovaAllocations.map(\.first) == [pfn])
        f.cookie!.iovad.fastFree(pfn: pfn, size: 1, cpu: 0)
        #expect(f.state() == before, "a cached pfn is free")
        let slot = try #require(f.api.bouncePool!.map(original: f.pages[0], length: 16))
        #expect(f.state().bounceSlots == 1)
        f.api.bouncePool!.unmap(bounce: slot, copyBack: false)
        let a = f.device.mapPage(f.pages[0], length: 16, direction: .toDevice, cpu: 0)
        #expect(f.state().live == [a])
        f.device.unmapPage(a, length: 16, direction: .toDevice, cpu: 0)
        #expect(f.state() == before)
        _ = f.warnings.drain()
        try f.tearDownAndCheckLeaks("state check")
    }

    /// `DMAAPI.init` takes the bounce pool's frames: a failure on any of them throws ENOMEM and
    /// gives back the ones already taken (they leaked before the sweep found it).
    @Test func bouncePoolSetupReleasesItsFramesOnFailure() throws {
        let memory = try PhysicalMemory()
        let core = IOMMUCore(configuration: IOMMUCoreConfiguration(cpuPageSize: .size4K, defaultDomainType: .dma))
        var configuration = DMAConfiguration()
        configuration.bouncePoolBytes = 16 << 10
        var n = 1
        while true {
            // A fresh allocator each time: the pool wants ascending frames from a fresh region.
            let frames = FrameAllocator(memory: memory)
            frames.failNth.failOn(n)
            do {
                let api = try DMAAPI(core: core, memory: memory, frames: frames, configuration: configuration)
                frames.failNth.disarm()
                #expect(api.bouncePool?.slotCount == 4 && frames.framesInUse == 4)
                break
            } catch {
                #expect(error.code == .noMemory)
                #expect(frames.framesInUse == 0, "n=\(n): \(frames.framesInUse) frames leaked")
            }
            n += 1
            if n > 8 { Issue.record("no success"); break }
        }
        print("fail_nth sweep: DMAAPI.init (bounce pool, 16 KiB) [frames] failed for n = 1..<\(n), succeeded at n = \(n)")
        #expect(n == 5)
    }

    static let modes: [(Platform, Bool)] = [(.flat, false), (.flat, true), (.smmu, false), (.smmu, true)]

    // MARK: - setupDevice

    @Test(arguments: modes)
    func setupDevice(_ platform: Platform, _ lazy: Bool) throws {
        for injector in [Injector.setup, .iova, .frames] {
            let n = try sweep("setupDevice", injector, platform: platform, lazy: lazy, setUpDevice: false, attempt: { f in
                do throws(IOMMUError) { f.device = try f.api.setupDevice(f.id) } catch {
                    #expect(error.code == .noMemory, "ENOMEM, as iommu_get_dma_cookie / rcache init")
                    return false
                }
                return true
            }, afterFailure: { f in
                #expect(f.api.device(f.id) == nil, "nothing set up")
                #expect(f.cookie == nil, "no cookie")
            })
            // Cookie, then (lazy) the flush queue whose failure is absorbed: strict instead.
            #expect(n == (injector == .setup ? (lazy ? 3 : 2) : 1), "\(injector)")
        }
    }

    @Test func flushQueueAllocationFailureLeavesTheDomainStrict() throws {
        for platform in Platform.allCases {
            let f = try Fixture(platform: platform, lazy: true, setUpDevice: false)
            f.api.failNth.failOn(2)
            let device = try f.api.setupDevice(f.id)
            #expect(f.api.failNth.failureCount == 1)
            #expect(!device.isLazy, "Linux: iommu_dma_init_fq failed, the domain stays strict")
            let a = device.mapPage(f.pages[0], length: 4096, direction: .toDevice, cpu: 0)
            #expect(!device.mappingError(a))
            device.unmapPage(a, length: 4096, direction: .toDevice, cpu: 0)
            #expect(f.cookie!.statistics.queued == 0, "strict: nothing queued")
            #expect(f.domain.iovaToPhys(a) == nil)
            try f.tearDownAndCheckLeaks("fq fallback \(platform)")
        }
    }

    // MARK: - map

    @Test(arguments: modes)
    func mapPage(_ platform: Platform, _ lazy: Bool) throws {
        for injector in [Injector.iova, .frames, .bounce, .magazine] {
            var mapped = IOVA(0)
            let n = try sweep("mapPage", injector, platform: platform, lazy: lazy, attempt: { f in
                mapped = f.device.mapPage(f.pages[0], length: 0x800, direction: .toDevice, cpu: 0)
                return !f.device.mappingError(mapped)
            }, cleanUp: { f in
                #expect(f.domain.iovaToPhys(mapped) == f.pages[0])
                f.device.unmapPage(mapped, length: 0x800, direction: .toDevice, cpu: 0)
            })
            switch injector {
            case .iova: #expect(n == 2)
            case .frames: #expect(platform == .flat ? n == 1 : n > 1, "page-table pages only on the SMMU")
            case .bounce, .magazine: #expect(n == 1, "a trusted device does not bounce")
            default: break
            }
        }
    }

    @Test(arguments: modes)
    func mapSingleBouncedForAnUntrustedDevice(_ platform: Platform, _ lazy: Bool) throws {
        for injector in [Injector.bounce, .iova, .frames] {
            var mapped = IOVA(0)
            let n = try sweep("mapSingle (bounced)", injector, platform: platform, lazy: lazy, untrusted: true, attempt: { f in
                // 0x234 bytes at offset 0x100: not granule-aligned, so an untrusted device bounces.
                let buffer = PhysAddr(f.pages[1].rawValue + 0x100)
                mapped = f.device.mapSingle(buffer, length: 0x234, direction: .toDevice, cpu: 0)
                return !f.device.mappingError(mapped)
            }, cleanUp: { f in
                let phys = try #require(f.domain.iovaToPhys(mapped))
                #expect(f.api.bouncePool!.contains(phys), "bounced")
                var byte: [UInt8] = [0]
                try byte.withUnsafeMutableBytes { try f.memory.read(phys, into: $0) }
                #expect(byte == [0x11], "the bounce slot holds the buffer")
                f.device.unmapSingle(mapped, length: 0x234, direction: .toDevice, cpu: 0)
            })
            switch injector {
            case .bounce, .iova: #expect(n == 2, "\(injector)")
            default: #expect(platform == .flat ? n == 1 : n > 1, "\(injector)")
            }
        }
    }

    /// Three elements, the first a 2 MiB block (a larger page on the SMMU), the last with an offset.
    func sgEntries(_ f: Fixture) -> [DMAScatterEntry] {
        [DMAScatterEntry(paddr: PhysAddr(0x9000_0000), length: 0x20_0000),
         DMAScatterEntry(paddr: f.pages[2], length: 0x1000),
         DMAScatterEntry(paddr: PhysAddr(f.pages[3].rawValue + 0x200), length: 0xC00)]
    }

    @Test(arguments: modes)
    func mapSG(_ platform: Platform, _ lazy: Bool) throws {
        for injector in [Injector.iova, .frames] {
            var mapping: DMAScatterMapping?
            let n = try sweep("mapSG", injector, platform: platform, lazy: lazy, attempt: { f in
                mapping = f.device.mapSG(sgEntries(f), direction: .bidirectional, cpu: 0)
                return mapping != nil
            }, cleanUp: { f in
                let m = try #require(mapping)
                #expect(f.domain.iovaToPhys(m.iova) == PhysAddr(0x9000_0000))
                #expect(f.domain.iovaToPhys(IOVA(m.iova.rawValue + 0x20_0000)) == f.pages[2])
                f.device.unmapSG(m, direction: .bidirectional, cpu: 0)
                #expect(f.domain.iovaToPhys(m.iova) == nil)
            })
            #expect(injector == .iova ? n == 2 : (platform == .flat ? n == 1 : n > 1), "\(injector)")
        }
    }

    @Test(arguments: modes)
    func mapSGBouncedForAnUntrustedDevice(_ platform: Platform, _ lazy: Bool) throws {
        // Element by element (iommu_dma_map_sg_swiotlb): a failure on a later element unmaps the
        // earlier ones.
        for injector in [Injector.bounce, .iova] {
            var mapping: DMAScatterMapping?
            let n = try sweep("mapSG (bounced)", injector, platform: platform, lazy: lazy, untrusted: true, attempt: { f in
                mapping = f.device.mapSG([DMAScatterEntry(paddr: PhysAddr(f.pages[2].rawValue + 0x80), length: 0x100),
                                          DMAScatterEntry(paddr: PhysAddr(f.pages[3].rawValue + 0x80), length: 0x100),
                                          DMAScatterEntry(paddr: f.pages[4], length: 0x1000)], direction: .toDevice, cpu: 0)
                return mapping != nil
            }, cleanUp: { f in f.device.unmapSG(try #require(mapping), direction: .toDevice, cpu: 0) })
            #expect(n == (injector == .bounce ? 3 : 4), "two bounced elements, three IOVA allocations")
        }
    }

    @Test(arguments: modes)
    func allocCoherent(_ platform: Platform, _ lazy: Bool) throws {
        for injector in [Injector.iova, .frames] {
            var buffer: DMACoherentBuffer?
            let n = try sweep("allocCoherent", injector, platform: platform, lazy: lazy, attempt: { f in
                buffer = f.device.allocCoherent(size: 0x5000, cpu: 0)
                return buffer != nil
            }, cleanUp: { f in
                let b = try #require(buffer)
                #expect(b.pages.count == 5)
                #expect(f.domain.iovaToPhys(IOVA(b.dmaAddress.rawValue + 0x4000)) == b.pages[4])
                f.device.freeCoherent(b, cpu: 0)
            })
            // Five pages first, then (SMMU) table pages.
            #expect(injector == .iova ? n == 2 : (platform == .flat ? n == 6 : n > 6), "\(injector)")
        }
    }

    // MARK: - unmap, free, sync, flush, unbind: nothing can fail

    /// Fills CPU 0's `loaded` and `prev` magazines for `pages`-page IOVAs, so the next free of
    /// that size needs a new magazine (the magazine injector's point).
    func fillMagazines(_ f: Fixture, pages: UInt64) {
        var addresses: [IOVA] = []
        for i in 0..<(2 * IOVADomain.magazineCapacity) {
            addresses.append(f.device.mapPage(PhysAddr(0x1_0000_0000 + UInt64(i) * 0x10_0000), length: pages * 4096,
                                              direction: .toDevice, cpu: 0))
        }
        for a in addresses {
            precondition(!f.device.mappingError(a))
            f.device.unmapPage(a, length: pages * 4096, direction: .toDevice, cpu: 0)
        }
        f.cookie!.flushQueuesNow(cpu: 0)
    }

    /// A teardown-free operation: runs `operation` after `setUp`; expects no injected failure
    /// except the magazine's, absorbed by the tree fallback, and `verify` to hold after it.
    func sweepInfallible(
        _ label: String, platform: Platform, lazy: Bool, untrusted: Bool = false,
        injectors: [Injector] = [.magazine, .iova, .frames, .bounce],
        setUp: @escaping (Fixture) throws -> Void, operation: @escaping (Fixture) throws -> Void,
        verify: @escaping (Fixture) throws -> Bool, cleanUp: @escaping (Fixture) throws -> Void = { _ in }
    ) throws -> [Injector: Int] {
        var found: [Injector: Int] = [:]
        for injector in injectors {
            var done = false
            found[injector] = try sweep(label, injector, platform: platform, lazy: lazy, untrusted: untrusted, setUp: setUp, attempt: { f in
                if done { return try verify(f) }   // the sweep's retry: already done
                try operation(f)
                done = true
                return try verify(f)
            }, cleanUp: { f in
                try cleanUp(f)
                done = false
            })
            done = false
        }
        return found
    }

    @Test(arguments: modes)
    func unmapPage(_ platform: Platform, _ lazy: Bool) throws {
        var mapped = IOVA(0)
        let found = try sweepInfallible("unmapPage", platform: platform, lazy: lazy, setUp: { f in
            // Mapped from the tree before the caches fill, so its free is the one that needs a
            // new magazine.
            mapped = f.device.mapPage(f.pages[0], length: 4096, direction: .toDevice, cpu: 0)
            _ = f.device.mappingError(mapped)
            fillMagazines(f, pages: 1)
        }, operation: { f in
            f.device.unmapPage(mapped, length: 4096, direction: .toDevice, cpu: 0)
            f.cookie!.flushQueuesNow(cpu: 0)
        }, verify: { f in
            f.device.liveMappings.isEmpty && f.domain.iovaToPhys(mapped) == nil
                && !f.state().iovaAllocations.contains { $0.first.rawValue == mapped.rawValue >> 12 }
        })
        #expect(found[.magazine] == 2, "the free needed a new magazine; its failure fell back to the tree")
        #expect(found[.iova] == 1 && found[.frames] == 1 && found[.bounce] == 1)
    }

    @Test(arguments: modes)
    func unmapSGAndFreeCoherent(_ platform: Platform, _ lazy: Bool) throws {
        var mapping: DMAScatterMapping?
        var buffer: DMACoherentBuffer?
        let found = try sweepInfallible("unmapSG+freeCoherent", platform: platform, lazy: lazy, setUp: { f in
            mapping = f.device.mapSG(sgEntries(f), direction: .bidirectional, cpu: 0)
            buffer = f.device.allocCoherent(size: 0x5000, cpu: 0)
        }, operation: { f in
            f.device.unmapSG(mapping!, direction: .bidirectional, cpu: 0)
            f.device.freeCoherent(buffer!, cpu: 0)
            f.cookie!.flushQueuesNow(cpu: 0)
        }, verify: { f in
            f.device.liveMappings.isEmpty && f.domain.iovaToPhys(mapping!.iova) == nil
                && f.domain.iovaToPhys(buffer!.dmaAddress) == nil && f.state().iovaAllocations.isEmpty
        })
        #expect(found.values.allSatisfy { $0 == 1 })
    }

    @Test(arguments: modes)
    func syncBounced(_ platform: Platform, _ lazy: Bool) throws {
        var mapped = IOVA(0)
        var sg: DMAScatterMapping?
        let buffer = { (f: Fixture) in PhysAddr(f.pages[5].rawValue + 0x40) }
        let found = try sweepInfallible("sync*", platform: platform, lazy: lazy, untrusted: true, setUp: { f in
            mapped = f.device.mapSingle(buffer(f), length: 0x80, direction: .bidirectional, cpu: 0)
            _ = f.device.mappingError(mapped)
            sg = f.device.mapSG([DMAScatterEntry(paddr: PhysAddr(f.pages[6].rawValue + 0x40), length: 0x80)], direction: .bidirectional, cpu: 0)
        }, operation: { f in
            try f.memory.fill(buffer(f), length: 0x80, with: 0xA5)
            f.device.syncSingleForDevice(mapped, length: 0x80, direction: .bidirectional)
            f.device.syncSingleForCPU(mapped, length: 0x80, direction: .bidirectional)
            f.device.syncSGForDevice(sg!, direction: .bidirectional)
            f.device.syncSGForCPU(sg!, direction: .bidirectional)
        }, verify: { f in
            guard let phys = f.domain.iovaToPhys(mapped), f.api.bouncePool!.contains(phys) else { return false }
            var bytes = [UInt8](repeating: 0, count: 4)
            try bytes.withUnsafeMutableBytes { try f.memory.read(phys, into: $0) }
            return bytes == [0xA5, 0xA5, 0xA5, 0xA5] && f.device.liveMappings.count == 2
        }, cleanUp: { f in
            f.device.unmapSingle(mapped, length: 0x80, direction: .bidirectional, cpu: 0)
            f.device.unmapSG(sg!, direction: .bidirectional, cpu: 0)
        })
        #expect(found.values.allSatisfy { $0 == 1 })
    }

    @Test(arguments: [Platform.flat, .smmu])
    func flushQueueTimer(_ platform: Platform) throws {
        var mapped = IOVA(0)
        let found = try sweepInfallible("tick (flush-queue timer)", platform: platform, lazy: true, setUp: { f in
            #expect(f.device.isLazy)
            mapped = f.device.mapPage(f.pages[0], length: 4096, direction: .toDevice, cpu: 0)
            _ = f.device.mappingError(mapped)
            fillMagazines(f, pages: 1)
            f.device.unmapPage(mapped, length: 4096, direction: .toDevice, cpu: 0)   // queued
        }, operation: { f in
            f.clock.advance(milliseconds: 10)
            #expect(f.api.tick(cpu: 0) == 1)
        }, verify: { f in
            f.cookie!.statistics.pending == 0
                && !f.state().iovaAllocations.contains { $0.first.rawValue == mapped.rawValue >> 12 }
        })
        #expect(found[.magazine] == 2, "the timer's free needed a new magazine; its failure fell back to the tree")
    }

    @Test(arguments: modes)
    func unbindDriverReportsLeaks(_ platform: Platform, _ lazy: Bool) throws {
        var mapped = IOVA(0)
        var leaked: [DMAMappingRecord] = []
        let found = try sweepInfallible("unbindDriver", platform: platform, lazy: lazy, setUp: { f in
            mapped = f.device.mapPage(f.pages[0], length: 4096, direction: .toDevice, cpu: 0)
            _ = f.device.mappingError(mapped)
        }, operation: { f in
            leaked = f.api.unbindDriver(f.id)
            f.device.unmapPage(mapped, length: 4096, direction: .toDevice, cpu: 0)
        }, verify: { f in
            leaked.map(\.address) == [mapped] && f.device.liveMappings.isEmpty
        })
        #expect(found.values.allSatisfy { $0 == 1 })
    }

    // MARK: - The 32-bit-first attempt

    @Test func failed32BitAttemptSwitchesTheDeviceToFullWidth() throws {
        // Linux: a failed 32-bit attempt clears pci_32bit_workaround for good and the full-width
        // attempt follows in the same call, so one failure is absorbed; two fail the map.
        let h = try DMAHarness(coverage: 1 << 33)
        let device = try h.device()
        let iovaFailure = h.api.iovaFailNth
        #expect(device.tries32BitFirst)
        iovaFailure.failOn(1)
        let a = device.mapPage(try h.page(), length: 4096, direction: .toDevice, cpu: 0)
        #expect(!device.mappingError(a) && a.rawValue > 0xFFFF_FFFF)
        #expect(!device.tries32BitFirst)
        #expect(h.drainWarnings().contains { if case .dmaUsingFullWidthAddresses = $0 { true } else { false } })
        device.unmapPage(a, length: 4096, direction: .toDevice, cpu: 0)
        // Now one attempt per map: one failure fails it, with nothing left.
        iovaFailure.failOn(1)
        let b = device.mapPage(try h.page(), length: 4096, direction: .toDevice, cpu: 0)
        #expect(b == DMADevice.mappingErrorAddress)
        #expect(device.liveMappings.isEmpty && device.liveIOVANodes().isEmpty)
    }
}
