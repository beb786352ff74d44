import Benchmark
import IOMMUKit

// Device DMA through the SMMU model, release build. Each benchmark iteration runs 1000
// transactions (`scalingFactor: .kilo`); run with `--scale` for figures per transaction.
//   swift package --disable-sandbox benchmark --target HardwareBenchmarks --scale

/// A probed device behind an SMMU with 512 mapped 4K pages in its DMA domain.
struct Rig {
    let smmu: ARMSMMU
    let driver: ARMSMMUDriver
    let core: IOMMUCore
    let domain: IOMMUDomain
    let device: DeviceID

    init(tlbEntries: Int) {
        let memory = try! PhysicalMemory(ramSize: 1 << 30)
        let frames = FrameAllocator(memory: memory)
        core = IOMMUCore()
        var configuration = SMMUConfiguration()
        configuration.tlbEntryCount = tlbEntries
        smmu = ARMSMMU(name: "smmu0", memory: memory, configuration: configuration)
        driver = ARMSMMUDriver(smmu: smmu, core: core, frames: frames)
        try! core.registerIOMMU(name: "smmu0", driver: driver)
        device = try! core.addDevice(.platform("dev", iommu: FirmwareIOMMUSpec(iommu: "smmu0", streamIDs: [StreamID(0x42)])))
        domain = core.domain(for: device)!
        let data = try! frames.allocate(.size2M)
        for page in 0..<512 as Range<UInt64> {
            try! domain.map(iova: IOVA(0x4000_0000 + page << 12), paddr: PhysAddr(data.rawValue + page << 12), length: 4096, prot: [.read, .write])
        }
    }
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal, .throughput],
        timeUnits: .nanoseconds,
        scalingFactor: .kilo,
        maxDuration: .seconds(2)
    )

    Benchmark("DMA read 4 KiB, TLB hit") { benchmark in
        let rig = Rig(tlbEntries: 128)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 64)
        defer { buffer.deallocate() }
        _ = rig.smmu.dmaRead(streamID: StreamID(0x42), address: 0x4000_0000, into: buffer, privileged: false)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(rig.smmu.dmaRead(streamID: StreamID(0x42), address: 0x4000_0000, into: buffer, privileged: false).bytesMoved)
        }
        benchmark.stopMeasurement()  // the rig's teardown (munmap of its memory) is not part of the figure
        withExtendedLifetime(rig) {}
    }

    Benchmark("DMA read 4 KiB, TLB miss (4-level walk)") { benchmark in
        let rig = Rig(tlbEntries: 8)  // 512 pages round-robin through 8 LRU entries: every access misses
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 64)
        defer { buffer.deallocate() }
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations {
            let address = 0x4000_0000 + UInt64(i & 511) << 12
            blackHole(rig.smmu.dmaRead(streamID: StreamID(0x42), address: address, into: buffer, privileged: false).bytesMoved)
        }
        benchmark.stopMeasurement()  // the rig's teardown (munmap of its memory) is not part of the figure
        withExtendedLifetime(rig) {}
    }

    Benchmark("DMA write 4 KiB, TLB hit") { benchmark in
        let rig = Rig(tlbEntries: 128)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 64)
        defer { buffer.deallocate() }
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(rig.smmu.dmaWrite(streamID: StreamID(0x42), address: 0x4000_0000, from: UnsafeRawBufferPointer(buffer), privileged: false).bytesMoved)
        }
        benchmark.stopMeasurement()  // the rig's teardown (munmap of its memory) is not part of the figure
        withExtendedLifetime(rig) {}
    }

    Benchmark("translate one address (no copy), TLB hit") { benchmark in
        let rig = Rig(tlbEntries: 128)
        _ = rig.smmu.translate(streamID: StreamID(0x42), address: 0x4000_0000)
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations {
            blackHole(rig.smmu.translate(streamID: StreamID(0x42), address: 0x4000_0000 + UInt64(i & 0xFFF)).physicalAddress)
        }
        benchmark.stopMeasurement()  // the rig's teardown (munmap of its memory) is not part of the figure
        withExtendedLifetime(rig) {}
    }

    Benchmark("translate one address (no copy), TLB miss") { benchmark in
        let rig = Rig(tlbEntries: 8)
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations {
            blackHole(rig.smmu.translate(streamID: StreamID(0x42), address: 0x4000_0000 + UInt64(i & 511) << 12).physicalAddress)
        }
        benchmark.stopMeasurement()
        withExtendedLifetime(rig) {}
    }
}
