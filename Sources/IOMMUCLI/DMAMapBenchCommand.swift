import ArgumentParser
import IOMMUKit
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `iommu bench dma-map`: Linux's `dma_map_benchmark` (tools/testing/selftests/dma) on IOMMUKit.
struct DMAMapBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dma-map",
        abstract: "Map/unmap latency of the DMA API, as Linux's dma_map_benchmark.",
        discussion: """
            Each thread (its own CPU index) maps and immediately unmaps one buffer of --granule \
            pages, timing every call with CLOCK_MONOTONIC (the cost of reading the clock, \
            calibrated at start, is subtracted), and prints the average and standard deviation \
            of map and unmap latency. Platform: one PCI device behind the Arm SMMU v2 model and its \
            driver (LPAE page tables in simulated physical memory; --platform flat: the \
            FlatIOMMUDriver's flat table instead); strict mode syncs the IOTLB in every unmap, \
            lazy mode queues the IOVA on the per-CPU flush queues (the 10 ms timer is driven from \
            the benchmark threads). The DMA-API debug layer is off unless --debug.

            --json prints exactly:
              {"threads":N, "mode":"lazy", "granule":N, "mapNs":X, "mapStddevNs":X, "unmapNs":X, "unmapStddevNs":X, "pairs":N}
            """
    )

    enum Mode: String, ExpressibleByArgument, CaseIterable { case strict, lazy }
    enum Direction: String, ExpressibleByArgument, CaseIterable {
        case bidirectional, toDevice = "to-device", fromDevice = "from-device"
        var dma: DMADirection {
            switch self {
            case .bidirectional: .bidirectional
            case .toDevice: .toDevice
            case .fromDevice: .fromDevice
            }
        }
    }

    @Option(help: "Threads, each on its own CPU index.")
    var threads: Int = 1
    @Option(help: "Seconds to run.")
    var seconds: Double = 1
    @Option(help: "Buffer size in 4 KiB pages.")
    var granule: Int = 1
    @Option(help: "strict or lazy (flush queue).")
    var mode: Mode = .lazy
    @Option(help: "bidirectional, to-device or from-device.")
    var dir: Direction = .bidirectional
    enum Platform: String, ExpressibleByArgument, CaseIterable { case smmu, flat }
    @Option(help: "smmu (the Arm SMMU v2 model with LPAE tables and its Linux driver) or flat (FlatIOMMUDriver).")
    var platform: Platform = .smmu
    @Flag(help: "Keep the DMA-API debug layer on (off by default, like a kernel without CONFIG_DMA_API_DEBUG).")
    var debug = false
    @Flag(help: "Print JSON.")
    var json = false

    func validate() throws {
        guard threads >= 1, threads <= 64 else { throw ValidationError("--threads must be in 1...64") }
        guard seconds > 0, seconds <= 300 else { throw ValidationError("--seconds must be in (0, 300]") }
        guard granule >= 1, granule <= 1024 else { throw ValidationError("--granule must be in 1...1024") }
    }

    struct Result {
        var pairs: Int
        var mapNs: Double
        var mapStddevNs: Double
        var unmapNs: Double
        var unmapStddevNs: Double
    }

    func run() throws {
        let result = try Self.measure(
            threads: threads, seconds: seconds, granule: granule, lazy: mode == .lazy, direction: dir.dma, debug: debug, smmu: platform == .smmu)
        if json {
            print(JSON.object([
                ("threads", .int(Int64(threads))), ("mode", .string(mode.rawValue)), ("granule", .int(Int64(granule))),
                ("mapNs", .double(rounded(result.mapNs))), ("mapStddevNs", .double(rounded(result.mapStddevNs))),
                ("unmapNs", .double(rounded(result.unmapNs))), ("unmapStddevNs", .double(rounded(result.unmapStddevNs))),
                ("pairs", .int(Int64(result.pairs))),
            ]).rendered())
        } else {
            print("dma-map (\(platform.rawValue)): \(threads) thread(s), \(mode.rawValue), granule \(granule) page(s), \(dir.rawValue), \(result.pairs) map/unmap pairs")
            print("  average map latency(ns):   \(format(result.mapNs))  stddev \(format(result.mapStddevNs))")
            print("  average unmap latency(ns): \(format(result.unmapNs))  stddev \(format(result.unmapStddevNs))")
            print("  map+unmap pair(ns):        \(format(result.mapNs + result.unmapNs))")
        }
    }

    static func now() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }

    /// Cost of one `now()` call, ns (median of a few calibration runs).
    static func clockOverhead() -> Double {
        var samples: [Double] = []
        for _ in 0..<5 {
            let n = 100_000
            let start = now()
            var sink: Int64 = 0
            for _ in 0..<n { sink &+= now() }
            let end = now()
            if sink == 42 { print("") }
            samples.append(Double(end - start) / Double(n))
        }
        return medianOf(samples)
    }

    final class Accumulator: @unchecked Sendable {
        let lock = IOMMUMutex<(Int, Double, Double, Double, Double)>((0, 0, 0, 0, 0))
    }

    static func measure(threads: Int, seconds: Double, granule: Int, lazy: Bool, direction: DMADirection, debug: Bool, smmu: Bool) throws -> Result {
        let core = IOMMUCore(configuration: IOMMUCoreConfiguration(cpuPageSize: .size4K, defaultDomainType: lazy ? .dmaFQ : .dma))
        let memory = try PhysicalMemory()
        let frames = FrameAllocator(memory: memory)
        if smmu {
            let model = ARMSMMU(name: "iommu0", memory: memory)
            _ = try core.registerIOMMU(name: "iommu0", driver: ARMSMMUDriver(smmu: model, core: core, frames: frames))
        } else {
            _ = try core.registerIOMMU(name: "iommu0", driver: FlatIOMMUDriver())
        }
        var configuration = DMAConfiguration()
        configuration.cpuCount = threads
        configuration.debug = debug
        let api = try DMAAPI(core: core, memory: memory, frames: frames, configuration: configuration, clock: MonotonicDMAClock())
        let id = try core.addDevice(.pci(PCIAddress(bus: 1, device: 0, function: 0), iommu: FirmwareIOMMUSpec(iommu: "iommu0", streamIDs: [StreamID(1)])))
        try core.bindDriver(id, name: "dma_map_benchmark")
        let device = try api.setupDevice(id)
        let buffer = try frames.allocate(.size4K)
        let length = UInt64(granule) * 4096
        let overhead = clockOverhead()
        let deadline = now() + Int64(seconds * 1e9)
        let accumulator = Accumulator()
        let failures = Atomic<Int>(0)
        runOnThreads(threads) { cpu in
            var pairs = 0
            var mapSum = 0.0, mapSq = 0.0, unmapSum = 0.0, unmapSq = 0.0
            while true {
                for _ in 0..<256 {
                    let t0 = now()
                    let address = device.mapPage(buffer, length: length, direction: direction, cpu: cpu)
                    let t1 = now()
                    if address == DMADevice.mappingErrorAddress { failures.wrappingAdd(1, ordering: .relaxed); continue }
                    device.unmapPage(address, length: length, direction: direction, cpu: cpu)
                    let t2 = now()
                    let m = Double(t1 - t0) - overhead, u = Double(t2 - t1) - overhead
                    mapSum += m; mapSq += m * m; unmapSum += u; unmapSq += u * u
                    pairs += 1
                }
                if lazy && cpu == 0 { api.tick(cpu: 0) }
                if now() >= deadline { break }
            }
            if lazy { api.tick(cpu: cpu) }
            accumulator.lock.withLock { a in
                a = (a.0 + pairs, a.1 + mapSum, a.2 + mapSq, a.3 + unmapSum, a.4 + unmapSq)
            }
        }
        guard failures.load(ordering: .relaxed) == 0 else { throw ValidationError("\(failures.load(ordering: .relaxed)) mappings failed") }
        let (pairs, mapSum, mapSq, unmapSum, unmapSq) = accumulator.lock.withLock { $0 }
        let n = Double(max(pairs, 1))
        func stddev(_ sum: Double, _ sq: Double) -> Double { (max(0, sq / n - (sum / n) * (sum / n))).squareRoot() }
        return Result(
            pairs: pairs, mapNs: mapSum / n, mapStddevNs: stddev(mapSum, mapSq), unmapNs: unmapSum / n, unmapStddevNs: stddev(unmapSum, unmapSq))
    }
}

