import IOMMUBase
import IOMMUCore
import PhysicalMemory
import Synchronization

/// Benchmarks of the VFIO type1 path, callable from the CLI (`iommu bench vfio`, to be wired).
///
/// Each runs against a minimal in-memory IOMMU driver (`BenchmarkIOMMUDriver`: a hash-map page
/// table, 4K|2M|1G pages) so that the figures measure VFIO + core + HostMemory, not a test fake.
public enum VFIOBenchmarks {
    public struct Result: Sendable, CustomStringConvertible {
        public var name: String
        /// Bytes mapped and unmapped per iteration.
        public var bytes: UInt64
        public var iterations: Int
        /// Mean seconds for one MAP_DMA + UNMAP_DMA of `bytes`.
        public var secondsPerIteration: Double
        /// MAP + UNMAP throughput in GiB/s.
        public var gibPerSecond: Double { Double(bytes) / Double(1 << 30) / secondsPerIteration }
        public var microsecondsPerIteration: Double { secondsPerIteration * 1e6 }
        public var description: String {
            "\(name): \(iterations) x \(formatByteSize(bytes)): \(fmt(microsecondsPerIteration)) µs per map+unmap, \(fmt(gibPerSecond)) GiB/s"
        }
        private func fmt(_ value: Double) -> String {
            let scaled = (value * 100).rounded() / 100
            return String(scaled)
        }
    }

    /// MAP_DMA + UNMAP_DMA of `bytes` backed by 4 KiB anonymous pages (as the frame allocator hands
    /// them out, which is mostly physically contiguous, so runs are long), by 4 KiB pages pinned
    /// and mapped one page per run (`disable_hugepages`: the scattered-memory worst case), and by
    /// 2 MiB huge pages; `iterations` times each, after one warm-up that faults the memory in.
    public static func mapUnmapLarge(bytes: UInt64 = 1 << 30, iterations: Int = 3) throws(IOMMUError) -> [Result] {
        var results: [Result] = []
        let cases: [(HostMemory.Backing, Bool, String)] = [
            (.anonymous, false, "vfio map+unmap 4K pages"),
            (.anonymous, true, "vfio map+unmap 4K pages, one page per run (disable_hugepages)"),
            (.hugePages2M, false, "vfio map+unmap 2M huge pages"),
        ]
        for (backing, onePagePerRun, name) in cases {
            let setup = try Setup(ramBytes: bytes + (256 << 20), disableHugepages: onePagePerRun)
            let va = try setup.host.map(length: bytes, backing: backing)
            let iova = IOVA(1 << 32)
            try setup.container.mapDMA(iova: iova, vaddr: va.first, length: bytes, read: true, write: true)
            try setup.container.unmapDMA(iova: iova, length: bytes)
            let clock = ContinuousClock()
            let start = clock.now
            for _ in 0..<iterations {
                try setup.container.mapDMA(iova: iova, vaddr: va.first, length: bytes, read: true, write: true)
                try setup.container.unmapDMA(iova: iova, length: bytes)
            }
            let elapsed = clock.now - start
            results.append(Result(name: name, bytes: bytes, iterations: iterations, secondsPerIteration: seconds(elapsed) / Double(iterations)))
        }
        return results
    }

    /// `pairs` MAP_DMA + UNMAP_DMA pairs of one 4 KiB page each.
    public static func smallMapUnmapPairs(pairs: Int = 10_000) throws(IOMMUError) -> Result {
        let setup = try Setup(ramBytes: 64 << 20)
        let va = try setup.host.map(length: 0x1000)
        try setup.container.mapDMA(iova: IOVA(0x10_0000), vaddr: va.first, length: 0x1000, read: true, write: true)
        try setup.container.unmapDMA(iova: IOVA(0x10_0000), length: 0x1000)
        let clock = ContinuousClock()
        let start = clock.now
        for i in 0..<pairs {
            let iova = IOVA(0x10_0000 + UInt64(i % 1024) << 12)
            try setup.container.mapDMA(iova: iova, vaddr: va.first, length: 0x1000, read: true, write: true)
            try setup.container.unmapDMA(iova: iova, length: 0x1000)
        }
        let elapsed = clock.now - start
        return Result(name: "vfio 4K map+unmap pair", bytes: 0x1000, iterations: pairs, secondsPerIteration: seconds(elapsed) / Double(pairs))
    }

    static func seconds(_ duration: Duration) -> Double {
        let (s, attoseconds) = duration.components
        return Double(s) + Double(attoseconds) * 1e-18
    }

    struct Setup {
        let host: HostMemory
        let container: VFIOContainer

        init(ramBytes: UInt64, disableHugepages: Bool = false) throws(IOMMUError) {
            let core = IOMMUCore()
            _ = try core.registerIOMMU(name: "bench", driver: BenchmarkIOMMUDriver())
            let device = try core.addDevice(.platform("bench0", iommu: FirmwareIOMMUSpec(iommu: "bench", streamIDs: [StreamID(1)])))
            var configuration = VFIOType1Configuration()
            configuration.disableHugepages = disableHugepages
            let vfio = VFIO(core: core, configuration: configuration)
            let memory = try PhysicalMemory(addressBits: 48, ramBase: PhysAddr(0x8000_0000), ramSize: ramBytes)
            host = HostMemory(memory: memory, frames: FrameAllocator(memory: memory), lockedMemoryLimit: 0, hasIPCLock: true)
            container = vfio.openContainer(process: host)
            let group = try vfio.openGroup(id: core.groupID(of: device)!)
            try group.setContainer(container)
            try container.setIOMMU(.type1v2)
        }
    }
}

/// A minimal IOMMU driver for benchmarks: every domain is a hash map from IOVA to leaf.
public final class BenchmarkIOMMUDriver: IOMMUDriver {
    public let name = "bench-iommu"
    public let pageSizes = PageSizeBitmap([.size4K, .size2M, .size1G])
    public init() {}
    public func probeDevice(_ device: IOMMUDeviceInfo) throws(IOMMUError) {}
    public func releaseDevice(_ device: IOMMUDeviceInfo) {}
    public func deviceGroup(_ device: IOMMUDeviceInfo) throws(IOMMUError) -> IOMMUGroupChoice { .newGroup }
    public func allocateDomain(type: IOMMUDomainType, for device: IOMMUDeviceInfo?) throws(IOMMUError) -> any IOMMUDomainOps {
        type.isPaging ? HashPageTable() : NonPagingDomainOps()
    }
    public func finaliseDomain(_ domain: IOMMUDomain, for device: IOMMUDeviceInfo) throws(IOMMUError) {
        domain.setGeometry(DomainGeometry(apertureStart: IOVA(0), apertureEnd: IOVA((1 << 48) - 1), forceAperture: true))
    }
    public func attachDevice(_ device: IOMMUDeviceInfo, to domain: IOMMUDomain) throws(IOMMUError) {}

    final class HashPageTable: IOMMUDomainOps {
        let leaves = IOMMUMutex<[UInt64: (paddr: UInt64, size: UInt64)]>([:])

        func mapPages(iova: IOVA, paddr: PhysAddr, pageSize: PageSize, count: UInt64, prot: IOMMUProt, mapped: inout UInt64) throws(IOMMUError) {
            let done = leaves.withLock { leaves -> UInt64 in
                for i in 0..<count {
                    leaves[iova.rawValue + i * pageSize.bytes] = (paddr.rawValue + i * pageSize.bytes, pageSize.bytes)
                }
                return count * pageSize.bytes
            }
            mapped += done
        }

        func unmapPages(iova: IOVA, pageSize: PageSize, count: UInt64, gather: inout IOTLBGather) -> UInt64 {
            let done = leaves.withLock { leaves -> UInt64 in
                var cursor = iova.rawValue
                var done: UInt64 = 0
                while done < pageSize.bytes * count, let leaf = leaves.removeValue(forKey: cursor) {
                    done += leaf.size
                    cursor += leaf.size
                }
                return done
            }
            gather.addRange(iova: iova, length: done)
            return done
        }

        func iovaToPhys(_ iova: IOVA) -> PhysAddr? { nil }
        func free() {}
    }
}
