import Benchmark
import IOMMUKit

// Hot paths of IOPageTable, release build. Each benchmark iteration runs 1000 operations
// (`scalingFactor: .kilo`); run with `--scale` to see the figures per operation.
//   swift package --disable-sandbox benchmark --target PageTableBenchmarks --scale

typealias Stage1Table = IOPageTable<ARMLPAEStage1<Granule4K>>

/// A warmed-up stage-1 4K table (ias 48): the tables for the benchmark IOVAs already exist.
func makeWarmTable() -> Stage1Table {
    let memory = try! PhysicalMemory()
    let frames = FrameAllocator(memory: memory)
    let table = try! Stage1Table(configuration: PageTableConfiguration(ias: 48, oas: 48), frames: frames)
    _ = try! table.map(iova: IOVA(0x4000_0000), paddr: PhysAddr(0x1_0000_0000), pageSize: .size4K, count: 512, prot: [.read, .write])
    _ = table.unmap(iova: IOVA(0x4000_0000), pageSize: .size4K, count: 512)
    return table
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal, .throughput],
        timeUnits: .nanoseconds,
        scalingFactor: .kilo,
        maxDuration: .seconds(2)
    )

    Benchmark("map+unmap one 4K page") { benchmark in
        let table = makeWarmTable()
        var gather = IOTLBGather()
        var invalidator = NoTLBInvalidator()
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations {
            let iova = IOVA(0x4000_0000 + UInt64(i & 511) << 12)
            let mapped = try table.map(iova: iova, paddr: PhysAddr(0x1_0000_0000), pageSize: .size4K, count: 1,
                                       prot: [.read, .write], invalidator: &invalidator)
            let unmapped = table.unmap(iova: iova, pageSize: .size4K, count: 1, gather: &gather, invalidator: &invalidator)
            blackHole(mapped &+ unmapped)
        }
    }

    Benchmark("map 512 4K pages in one call, then unmap them", configuration: .init(scalingFactor: .kilo, maxDuration: .seconds(3))) { benchmark in
        let table = makeWarmTable()
        var gather = IOTLBGather()
        var invalidator = NoTLBInvalidator()
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            let mapped = try table.map(iova: IOVA(0x4000_0000), paddr: PhysAddr(0x1_0000_0000), pageSize: .size4K, count: 512,
                                       prot: [.read, .write], invalidator: &invalidator)
            let unmapped = table.unmap(iova: IOVA(0x4000_0000), pageSize: .size4K, count: 512, gather: &gather, invalidator: &invalidator)
            blackHole(mapped &+ unmapped)
        }
    }

    Benchmark("map+unmap one 2M block") { benchmark in
        let table = makeWarmTable()
        _ = table.unmap(iova: IOVA(0x4000_0000), pageSize: .size2M, count: 1)   // drop the L3 table: blocks only
        var gather = IOTLBGather()
        var invalidator = NoTLBInvalidator()
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            let mapped = try table.map(iova: IOVA(0x4000_0000), paddr: PhysAddr(0x1_0000_0000), pageSize: .size2M, count: 1,
                                       prot: [.read, .write], invalidator: &invalidator)
            let unmapped = table.unmap(iova: IOVA(0x4000_0000), pageSize: .size2M, count: 1, gather: &gather, invalidator: &invalidator)
            blackHole(mapped &+ unmapped)
        }
    }

    Benchmark("iovaToPhys (4-level walk to a 4K page)") { benchmark in
        let table = makeWarmTable()
        _ = try table.map(iova: IOVA(0x4000_0000), paddr: PhysAddr(0x1_0000_0000), pageSize: .size4K, count: 512, prot: [.read, .write])
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations {
            blackHole(table.iovaToPhys(IOVA(0x4000_0000 + UInt64(i & 511) << 12 + 0x10)))
        }
    }

    Benchmark("hardware walker translate (4-level walk, read)") { benchmark in
        let table = makeWarmTable()
        _ = try table.map(iova: IOVA(0x4000_0000), paddr: PhysAddr(0x1_0000_0000), pageSize: .size4K, count: 512, prot: [.read, .write])
        guard case .stage1(let registers) = table.registers else { return }
        let walker = try HardwareWalker(memory: table.memory, ttbr: registers.ttbr, tcr: registers.tcr, mair: registers.mair)
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations {
            blackHole(walker.translate(IOVA(0x4000_0000 + UInt64(i & 511) << 12 + 0x10)))
        }
    }
}
