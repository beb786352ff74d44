import DMAMapping
import IOMMUBase
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What a soak run does and for how long.
public struct SoakConfiguration: Sendable {
    /// Wall-clock time to keep the workload running (setup, checks and teardown come on top).
    public var durationNanoseconds: UInt64
    /// Seeds every thread's random choices (thread i: a fixed function of seed and i).
    public var seed: UInt64 = 1
    /// Worker threads, 1 or 2 (clamped): the machine has two cores, and each thread owns one of
    /// the two accel devices. Linux lets every layer exercised here run on several CPUs at once.
    public var threads: Int = 2
    /// Operations per thread between quiesced checkpoints (K).
    public var operationsPerCheck: Int = 2_000
    /// Test hook: breaks one invariant behind the model's back at the first checkpoint, so a
    /// test can see the soak report it (the run then exits with status 1).
    package var injectCorruption = false

    public init(durationNanoseconds: UInt64, seed: UInt64 = 1) {
        self.durationNanoseconds = durationNanoseconds
        self.seed = seed
    }
}

/// `iommu bench --soak DURATION`: a mixed, seeded, two-thread workload over the whole stack
/// with every consistency checker run at quiesced checkpoints, then a full teardown with leak
/// checks. Every operation is valid, so the expected result is zero violations and zero
/// warnings; anything else is a bug in IOMMUKit.
///
/// The workload mirrors what Linux lets run concurrently: DMA-API map/unmap (page, sg,
/// coherent) on strict and lazy (flush-queue) domains and an untrusted device's bounced
/// mappings; device DMA through the SMMU model racing `iommu_unmap` + IOTLB invalidation on
/// the same domain; VFIO type1 MAP/UNMAP with an mdev-style device pinning pages and unpinning
/// from its unmap notifier; a guest's virtio-iommu ATTACH/MAP/UNMAP requests;
/// `alloc_iova_fast`/`free_iova_fast`; `iommu_attach_device`/`iommu_detach_device` of groups
/// between shared unmanaged domains. See `SoakPlatform` for the machine and `SoakWorker` for
/// the per-operation checks.
public enum SoakRunner {
    /// Runs the soak. Never throws: a setup failure is reported as a violation.
    public static func run(_ configuration: SoakConfiguration) -> SoakReport {
        let configuration = { var c = configuration; c.threads = max(1, min(2, c.threads)); return c }()
        let start = monotonicNanoseconds()
        var report = SoakReport(seed: configuration.seed, threads: configuration.threads, requestedNanoseconds: configuration.durationNanoseconds)
        report.checkers = SoakPlatform.checkerNames
        let platform: SoakPlatform
        do throws(IOMMUError) {
            platform = try SoakPlatform(threads: configuration.threads)
        } catch {
            report.record(violation: "setup failed: \(error)")
            report.elapsedNanoseconds = monotonicNanoseconds() - start
            return report
        }
        let workers = (0..<configuration.threads).map { SoakWorker(index: $0, platform: platform, seed: configuration.seed) }
        let deadline = start + configuration.durationNanoseconds
        var corrupted = false

        func checkpoint(_ label: String) {
            report.checkerRuns += 1
            for v in platform.checkAll() { report.record(violation: "\(label): \(v)") }
            for w in workers {
                for v in w.violations { report.record(violation: v) }
                w.violations = []
            }
            for (slot, pages) in virtioDisagreements(platform, workers) { report.record(violation: "\(label): virtio domain \(slot): \(pages)") }
            for v in dmaDisagreements(platform, workers) { report.record(violation: "\(label): \(v)") }
        }

        repeat {
            let stop = Atomic<Bool>(false)
            runOnThreads(configuration.threads) { i in
                let w = workers[i]
                for n in 0..<configuration.operationsPerCheck {
                    w.step()
                    if n % 64 == 63 {
                        if stop.load(ordering: .relaxed) { return }
                        if monotonicNanoseconds() >= deadline { stop.store(true, ordering: .relaxed); return }
                    }
                }
            }
            if configuration.injectCorruption && !corrupted {
                corrupted = true
                injectCorruption(platform)
            }
            checkpoint("checkpoint \(report.checkerRuns + 1)")
        } while monotonicNanoseconds() < deadline

        // The end: undo everything, drain the flush queues, check once more, take it all down.
        runOnThreads(configuration.threads) { i in workers[i].release() }
        for cpu in 0..<configuration.threads { platform.lazy.cookie?.flushQueuesNow(cpu: cpu) }
        checkpoint("final checkpoint")
        for v in platform.teardown() { report.record(violation: v) }

        for w in workers {
            for (i, n) in w.counts.enumerated() { report.operations[SoakOperation.allCases[i], default: 0] += n }
            report.staleTLBReads += w.staleTLBReads
            report.flushQueueTimersFired += w.timersFired
        }
        report.expectedFaults = platform.counters.faults.load(ordering: .relaxed)
        report.notifierUnpins = platform.counters.notifierUnpins.load(ordering: .relaxed)
        report.warnings = platform.warnings.counts.withLock { $0 }
        for (kind, n) in report.warnings.sorted(by: { $0.key < $1.key }) {
            report.record(violation: "unexpected warning \(kind) (\(n)x): the soak does only valid operations")
        }
        report.elapsedNanoseconds = monotonicNanoseconds() - start
        return report
    }

    /// The virtio device's mappings against what the threads' requests should have left.
    static func virtioDisagreements(_ platform: SoakPlatform, _ workers: [SoakWorker]) -> [(UInt32, String)] {
        var out: [(UInt32, String)] = []
        for w in workers {
            for domain in Set(w.virtioEndpoint.values).sorted() {
                let expected = (w.virtioMappings[domain] ?? []).map { 0x1000_0000 + UInt64($0) << 12 }.sorted()
                let actual = (platform.virtio.mappings(ofDomain: domain) ?? []).map(\.first).sorted()
                if expected != actual { out.append((domain, "device has \(actual.count) mapping(s), the requests left \(expected.count)")) }
            }
        }
        return out
    }

    /// The DMA-API mappings the threads hold against the debug layer's records and the page
    /// tables: each live mapping still translates to its buffer (bounced ones into the pool).
    static func dmaDisagreements(_ platform: SoakPlatform, _ workers: [SoakWorker]) -> [String] {
        var out: [String] = []
        var held: [DeviceID: Int] = [:]
        for w in workers {
            for m in w.pages {
                held[m.device.id, default: 0] += 1
                let pa = m.device.cookie?.domain.iovaToPhys(m.address)
                let ok = m.bounced ? pa.map { platform.api.bouncePool?.contains($0) ?? false } ?? false : pa == m.paddr
                if !ok { out.append("dma mapping \(m.address) of \(m.device.name) translates to \(pa.map { "\($0)" } ?? "nothing"), expected \(m.bounced ? "the bounce pool" : "\(m.paddr)")") }
            }
            for (device, mapping, _) in w.scatterLists {
                held[device.id, default: 0] += 1
                for (segment, entry) in zip(mapping.addresses, mapping.entries) where mapping.addresses.count == mapping.entries.count {
                    if device.cookie?.domain.iovaToPhys(segment) != entry.paddr { out.append("sg segment \(segment) of \(device.name) does not translate to \(entry.paddr)") }
                }
            }
            for (device, buffer) in w.coherent {
                held[device.id, default: 0] += 1
                if device.cookie?.domain.iovaToPhys(buffer.dmaAddress) != buffer.pages.first { out.append("coherent buffer \(buffer.dmaAddress) of \(device.name) does not translate to its first page") }
            }
        }
        for device in [platform.strict, platform.lazy, platform.untrusted] where device.liveMappings.count != held[device.id, default: 0] {
            out.append("dma-debug records \(device.liveMappings.count) live mapping(s) of \(device.name), the threads hold \(held[device.id, default: 0])")
        }
        return out
    }

    /// Breaks VFIO's invariant the way a buggy kernel path would: one page of a live VFIO
    /// mapping is unmapped from the container's IOMMU domain behind VFIO's back.
    static func injectCorruption(_ platform: SoakPlatform) {
        do throws(IOMMUError) {
            let iova = IOVA(0x2_0000_0000)
            let region = try platform.host.map(length: 0x1000)
            try platform.container.mapDMA(iova: iova, vaddr: region.first, length: 0x1000, read: true, write: true)
            _ = platform.core.domain(for: platform.gpuID)?.unmap(iova: iova, length: 0x1000)
        } catch {}
    }

    static func monotonicNanoseconds() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }
}
