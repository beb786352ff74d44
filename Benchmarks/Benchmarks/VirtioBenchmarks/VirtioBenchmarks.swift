import Benchmark
import IOMMUKit

// The virtio-iommu device's request path, release build: MAP then UNMAP of one 4 KiB page as
// the guest driver sends them (bytes in, status bytes out), through IOMMUCore's domain map into a
// stage-2 4K page table. Each iteration runs 1000 round trips (`scalingFactor: .kilo`).
//   swift package --disable-sandbox benchmark --target VirtioBenchmarks --scale

func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }

/// A device with endpoint 1 attached to domain 1, its tables for the benchmark IOVA warmed up.
func makeAttachedDevice() -> VirtioIOMMUDevice {
    let memory = try! PhysicalMemory()
    let frames = FrameAllocator(memory: memory)
    let device = try! VirtioIOMMUDevice(memory: memory, frames: frames)
    try! device.addEndpoint(1)
    device.negotiate(driverFeatures: .linuxDriver)
    _ = device.handleRequest(readable: [1, 0, 0, 0] + le32(1) + le32(1) + le32(0) + le32(0), writableLength: 4)
    return device
}

let mapRequest: [UInt8] = [3, 0, 0, 0] + le32(1) + le64(0x4000_0000) + le64(0x4000_0FFF) + le64(0x1_0000_0000) + le32(3)
let unmapRequest: [UInt8] = [4, 0, 0, 0] + le32(1) + le64(0x4000_0000) + le64(0x4000_0FFF) + le32(0)

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal, .throughput],
        timeUnits: .nanoseconds,
        scalingFactor: .kilo,
        maxDuration: .seconds(2)
    )

    Benchmark("MAP+UNMAP request round trip, one 4K page") { benchmark in
        let device = makeAttachedDevice()
        var tail: [UInt8] = [0, 0, 0, 0]
        mapRequest.withUnsafeBytes { map in
            unmapRequest.withUnsafeBytes { unmap in
                tail.withUnsafeMutableBytes { tail in
                    _ = device.handleRequest(readable: map, writable: tail)  // warm the tables
                    _ = device.handleRequest(readable: unmap, writable: tail)
                    benchmark.startMeasurement()
                    for _ in benchmark.scaledIterations {
                        let mapped = device.handleRequest(readable: map, writable: tail)
                        let unmapped = device.handleRequest(readable: unmap, writable: tail)
                        blackHole(mapped &+ unmapped)
                    }
                    benchmark.stopMeasurement()
                }
            }
        }
        precondition(tail == [0, 0, 0, 0], "the benchmark requests must succeed")
    }

    Benchmark("endpoint DMA write of 64 bytes through a mapping (hardware walk)") { benchmark in
        let device = makeAttachedDevice()
        var tail: [UInt8] = [0, 0, 0, 0]
        mapRequest.withUnsafeBytes { map in tail.withUnsafeMutableBytes { _ = device.handleRequest(readable: map, writable: $0) } }
        let payload = [UInt8](repeating: 0x5A, count: 64)
        payload.withUnsafeBytes { bytes in
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations {
                blackHole(device.endpointDMAWrite(endpoint: 1, iova: 0x4000_0100, from: bytes))
            }
            benchmark.stopMeasurement()
        }
    }
}
