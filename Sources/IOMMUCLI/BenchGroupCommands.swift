import ArgumentParser
import IOMMUKit

/// One measured figure of a benchmark group.
struct BenchRow {
    var group: String
    var name: String
    var value: Double
    var unit: String

    var json: JSON {
        .object([("group", .string(group)), ("benchmark", .string(name)), ("value", .double(rounded(value, 2))), ("unit", .string(unit))])
    }
}

func printBenchRows(_ rows: [BenchRow], json: Bool, title: String) {
    if json {
        print(JSON.object([("results", .array(rows.map(\.json)))]).rendered(pretty: true))
        return
    }
    print(title)
    print(pad("group", 11) + pad("benchmark", 64) + pad("value", 12, right: true) + "  unit")
    for r in rows { print(pad(r.group, 11) + pad(r.name, 64) + pad(format(r.value, 2), 12, right: true) + "  " + r.unit) }
}

/// Times `body` over `iterations` operations; ns per operation, median of `repeats`.
func nanosecondsPerOperation(iterations: Int, repeats: Int, _ body: (Int) throws -> Void) rethrows -> Double {
    let clock = ContinuousClock()
    var samples: [Double] = []
    for _ in 0..<repeats {
        let start = clock.now
        for i in 0..<iterations { try body(i) }
        let elapsed = clock.now - start
        let ns = Double(elapsed.components.seconds) * 1e9 + Double(elapsed.components.attoseconds) / 1e9
        samples.append(ns / Double(iterations))
    }
    return medianOf(samples)
}

/// The page-table cases of Benchmarks/PageTableBenchmarks, timed in process.
enum PageTableBench {
    static func run(iterations: Int, repeats: Int) throws -> [BenchRow] {
        typealias Table = IOPageTable<ARMLPAEStage1<Granule4K>>
        func warm() throws -> Table {
            let memory = try PhysicalMemory()
            let table = try Table(configuration: PageTableConfiguration(ias: 48, oas: 48), frames: FrameAllocator(memory: memory))
            _ = try table.map(iova: IOVA(0x4000_0000), paddr: PhysAddr(0x1_0000_0000), pageSize: .size4K, count: 512, prot: [.read, .write])
            _ = table.unmap(iova: IOVA(0x4000_0000), pageSize: .size4K, count: 512)
            return table
        }
        var rows: [BenchRow] = []
        var gather = IOTLBGather()
        var inv = NoTLBInvalidator()
        var sink: UInt64 = 0
        do {
            let t = try warm()
            rows.append(BenchRow(group: "pgtable", name: "map+unmap one 4K page", value: try nanosecondsPerOperation(iterations: iterations, repeats: repeats) { i in
                let iova = IOVA(0x4000_0000 + UInt64(i & 511) << 12)
                sink &+= try t.map(iova: iova, paddr: PhysAddr(0x1_0000_0000), pageSize: .size4K, count: 1, prot: [.read, .write], invalidator: &inv)
                sink &+= t.unmap(iova: iova, pageSize: .size4K, count: 1, gather: &gather, invalidator: &inv)
            }, unit: "ns/op"))
        }
        do {
            let t = try warm()
            rows.append(BenchRow(group: "pgtable", name: "map 512 4K pages in one call, then unmap them", value: try nanosecondsPerOperation(iterations: max(1, iterations / 64), repeats: repeats) { _ in
                sink &+= try t.map(iova: IOVA(0x4000_0000), paddr: PhysAddr(0x1_0000_0000), pageSize: .size4K, count: 512, prot: [.read, .write], invalidator: &inv)
                sink &+= t.unmap(iova: IOVA(0x4000_0000), pageSize: .size4K, count: 512, gather: &gather, invalidator: &inv)
            }, unit: "ns/op"))
        }
        do {
            let t = try warm()
            _ = t.unmap(iova: IOVA(0x4000_0000), pageSize: .size2M, count: 1)
            rows.append(BenchRow(group: "pgtable", name: "map+unmap one 2M block", value: try nanosecondsPerOperation(iterations: iterations, repeats: repeats) { _ in
                sink &+= try t.map(iova: IOVA(0x4000_0000), paddr: PhysAddr(0x1_0000_0000), pageSize: .size2M, count: 1, prot: [.read, .write], invalidator: &inv)
                sink &+= t.unmap(iova: IOVA(0x4000_0000), pageSize: .size2M, count: 1, gather: &gather, invalidator: &inv)
            }, unit: "ns/op"))
        }
        do {
            let t = try warm()
            _ = try t.map(iova: IOVA(0x4000_0000), paddr: PhysAddr(0x1_0000_0000), pageSize: .size4K, count: 512, prot: [.read, .write])
            rows.append(BenchRow(group: "pgtable", name: "iovaToPhys (4-level walk to a 4K page)", value: nanosecondsPerOperation(iterations: iterations * 4, repeats: repeats) { i in
                sink &+= t.iovaToPhys(IOVA(0x4000_0000 + UInt64(i & 511) << 12 + 0x10))?.rawValue ?? 0
            }, unit: "ns/op"))
            if case .stage1(let r) = t.registers {
                let walker = try HardwareWalker(memory: t.memory, ttbr: r.ttbr, tcr: r.tcr, mair: r.mair)
                rows.append(BenchRow(group: "pgtable", name: "hardware walker translate (4-level walk, read)", value: nanosecondsPerOperation(iterations: iterations * 4, repeats: repeats) { i in
                    if case .translated(let x) = walker.translate(IOVA(0x4000_0000 + UInt64(i & 511) << 12 + 0x10)) { sink &+= x.physicalAddress.rawValue }
                }, unit: "ns/op"))
            }
        }
        if sink == 42 { print("") }   // keep the work observable
        return rows
    }
}

enum VFIOBench {
    static func run(bytes: UInt64, iterations: Int, pairs: Int) throws -> [BenchRow] {
        var rows = try VFIOBenchmarks.mapUnmapLarge(bytes: bytes, iterations: iterations).map {
            BenchRow(group: "vfio", name: $0.name, value: $0.gibPerSecond, unit: "GiB/s")
        }
        let small = try VFIOBenchmarks.smallMapUnmapPairs(pairs: pairs)
        rows.append(BenchRow(group: "vfio", name: small.name, value: small.microsecondsPerIteration, unit: "µs/pair"))
        return rows
    }
}

/// `iommu bench pgtable`.
struct PageTableBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pgtable",
        abstract: "Page-table map/unmap, iovaToPhys and hardware-walker translate (the PageTableBenchmarks cases).",
        discussion: "Arm LPAE stage 1, 4K granule, warmed tables; ns per operation, median of --repeats runs."
    )
    @Option(help: "Operations per run.") var iterations: Int = 200_000
    @Option(help: "Runs per figure; the median is reported.") var repeats: Int = 5
    @Flag(help: "Print JSON instead of a table.") var json = false

    func validate() throws {
        guard (1...10_000_000).contains(iterations) else { throw ValidationError("--iterations must be in 1...10000000") }
        guard (1...100).contains(repeats) else { throw ValidationError("--repeats must be in 1...100") }
    }

    func run() throws {
        printBenchRows(try PageTableBench.run(iterations: iterations, repeats: repeats), json: json, title: "IO page table (Arm LPAE S1 4K), median of \(repeats)")
    }
}

/// `iommu bench vfio`.
struct VFIOBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vfio",
        abstract: "VFIO type1 MAP+UNMAP of a large region (4K and 2M backing) and small MAP+UNMAP pairs.",
        discussion: "Against VFIOBenchmarks' hash-map driver, so the figures are VFIO's own cost (pinning, validation, accounting)."
    )
    @Option(help: "Bytes per large MAP+UNMAP (power of two, 2M...1G).") var bytes: String = "1G"
    @Option(help: "Large MAP+UNMAP repetitions.") var iterations: Int = 3
    @Option(help: "Small 4K MAP+UNMAP pairs.") var pairs: Int = 10_000
    @Flag(help: "Print JSON instead of a table.") var json = false

    func parsedBytes() throws -> UInt64 {
        let table: [String: UInt64] = ["2M": 2 << 20, "16M": 16 << 20, "64M": 64 << 20, "256M": 256 << 20, "1G": 1 << 30]
        guard let value = table[bytes.uppercased()] else { throw ValidationError("--bytes must be one of 2M, 16M, 64M, 256M, 1G") }
        return value
    }

    func validate() throws {
        _ = try parsedBytes()
        guard (1...100).contains(iterations) else { throw ValidationError("--iterations must be in 1...100") }
        guard (1...1_000_000).contains(pairs) else { throw ValidationError("--pairs must be in 1...1000000") }
    }

    func run() throws {
        printBenchRows(try VFIOBench.run(bytes: try parsedBytes(), iterations: iterations, pairs: pairs), json: json, title: "VFIO type1")
    }
}

/// `iommu bench all` (also `iommu bench` alone): a quick version of every group.
struct AllBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "all",
        abstract: "A quick run of every benchmark group (iova, pgtable, translate, vfio) in one table.",
        discussion: """
            Small counts, one or three runs: a smoke check and a rough picture in a few seconds. Use the group subcommands for real figures.

            With --soak DURATION (`iommu bench --soak 30s`), runs the soak instead: a seeded mixed workload on two \
            threads over the whole stack - DMA-API map/unmap (page, sg, coherent; strict and lazy domains; an \
            untrusted device's bounced mappings), device DMA through the SMMU model racing unmap + IOTLB \
            invalidation, VFIO MAP/UNMAP with an mdev-style device pinning pages, virtio-iommu ATTACH/MAP/UNMAP, \
            IOVA fast alloc/free, attach/detach of groups between domains - with every consistency checker run at \
            quiesced checkpoints (every 2000 operations per thread) and at the end, then leak checks at teardown. \
            Prints operations per kind, checker runs, violations, warnings by kind and the elapsed time \
            (--json: one object). Exit status 1 on any violation (the soak does only valid operations, so any \
            warning counts as one), 2 on a bad DURATION.
            """
    )
    @Flag(help: "Print JSON instead of a table.") var json = false

    @Option(help: ArgumentHelp("Run the soak for this long instead (30s, 5m, 1h).", valueName: "duration"))
    var soak: String?

    @Option(help: "Seed of the soak's random choices.") var seed: UInt64 = 1

    func validate() throws {
        if let soak, SoakBench.parseDuration(soak) == nil {
            var stderr = StandardError()
            print("iommu bench: --soak '\(soak)': \(SoakBench.durationHelp)", to: &stderr)
            throw ExitCode(2)
        }
    }

    func run() throws {
        if let soak, let nanoseconds = SoakBench.parseDuration(soak) {
            var stdout = StandardOutput()
            let status = SoakBench.run(durationNanoseconds: nanoseconds, seed: seed, json: json, stdout: &stdout)
            if status != 0 { throw ExitCode(status) }
            return
        }
        var rows: [BenchRow] = []
        for workload in [IOVAWorkload.allCases[0]] {
            let r = try runIOVAWorkload(workload, policy: .checking, scale: 0.01, seed: 1)
            rows.append(BenchRow(group: "iova", name: "\(workload.rawValue) alloc+free pair (checking, scale 0.01)", value: r.nsPerPair, unit: "ns/pair"))
        }
        rows += try PageTableBench.run(iterations: 20_000, repeats: 3)
        rows += try TranslateBench.run(iterations: 20_000, repeats: 3)
        rows += try VFIOBench.run(bytes: 64 << 20, iterations: 1, pairs: 1000)
        printBenchRows(rows, json: json, title: "iommu bench all (quick)")
    }
}

/// Device translation through the SMMU model: TLB hit vs miss (translate only, and a 4 KiB read).
enum TranslateBench {
    static func run(iterations: Int, repeats: Int) throws -> [BenchRow] {
        let memory = try PhysicalMemory()
        let frames = FrameAllocator(memory: memory)
        let core = IOMMUCore(configuration: IOMMUCoreConfiguration(cpuPageSize: .size4K, defaultDomainType: .dma))
        var configuration = SMMUConfiguration()
        configuration.tlbEntryCount = 8
        let smmu = ARMSMMU(name: "smmu0", memory: memory, configuration: configuration)
        let driver = ARMSMMUDriver(smmu: smmu, core: core, frames: frames)
        _ = try core.registerIOMMU(name: "smmu0", driver: driver)
        let device = try core.addDevice(.platform("bench-dev", iommu: FirmwareIOMMUSpec(iommu: "smmu0", streamIDs: [StreamID(0x10)])))
        guard let domain = core.domain(for: device) else { return [] }
        let pages: UInt64 = 512
        // Offset by one page so the range cannot be one 2 MiB block: 512 separate 4 KiB leaves.
        let buffer = try frames.allocate(PageSize(shift: 22))
        try domain.map(iova: IOVA(0x4000_0000), paddr: PhysAddr(buffer.rawValue + 0x1000), length: pages << 12, prot: [.read, .write])
        let sid = StreamID(0x10)
        var sink: UInt64 = 0
        var rows: [BenchRow] = []
        rows.append(BenchRow(group: "translate", name: "SMMU translate one address, TLB hit", value: nanosecondsPerOperation(iterations: iterations, repeats: repeats) { _ in
            sink &+= smmu.translate(streamID: sid, address: 0x4000_0010).physicalAddress ?? 0
        }, unit: "ns/op"))
        rows.append(BenchRow(group: "translate", name: "SMMU translate one address, TLB miss (4-level walk)", value: nanosecondsPerOperation(iterations: iterations, repeats: repeats) { i in
            sink &+= smmu.translate(streamID: sid, address: 0x4000_0010 + UInt64(i * 17 & 511) << 12).physicalAddress ?? 0
        }, unit: "ns/op"))
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 64)
        defer { scratch.deallocate() }
        rows.append(BenchRow(group: "translate", name: "SMMU dmaRead 4 KiB, TLB hit", value: nanosecondsPerOperation(iterations: iterations, repeats: repeats) { _ in
            sink &+= UInt64(smmu.dmaRead(streamID: sid, address: 0x4000_0000, into: scratch).bytesMoved)
        }, unit: "ns/op"))
        rows.append(BenchRow(group: "translate", name: "SMMU dmaRead 4 KiB, TLB miss", value: nanosecondsPerOperation(iterations: iterations, repeats: repeats) { i in
            sink &+= UInt64(smmu.dmaRead(streamID: sid, address: 0x4000_0000 + UInt64(i * 17 & 511) << 12, into: scratch).bytesMoved)
        }, unit: "ns/op"))
        let stats = smmu.tlbStatistics
        if sink == 42 { print("") }
        rows.append(BenchRow(group: "translate", name: "(TLB over the whole run: share of misses)", value: 100 * Double(stats.misses) / Double(max(1, stats.hits + stats.misses)), unit: "%"))
        return rows
    }
}

/// `iommu bench translate`.
struct TranslateBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "translate",
        abstract: "Device translation through the Arm SMMU model: TLB hit and miss, translate only and 4 KiB reads.",
        discussion: "An 8-entry TLB; misses stride over 512 mapped pages so every access walks the 4-level table."
    )
    @Option(help: "Operations per run.") var iterations: Int = 200_000
    @Option(help: "Runs per figure; the median is reported.") var repeats: Int = 5
    @Flag(help: "Print JSON instead of a table.") var json = false

    func validate() throws {
        guard (1...10_000_000).contains(iterations) else { throw ValidationError("--iterations must be in 1...10000000") }
        guard (1...100).contains(repeats) else { throw ValidationError("--repeats must be in 1...100") }
    }

    func run() throws {
        printBenchRows(try TranslateBench.run(iterations: iterations, repeats: repeats), json: json, title: "Device translation (Arm SMMU model), median of \(repeats)")
    }
}
