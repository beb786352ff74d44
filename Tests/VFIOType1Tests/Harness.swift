import IOMMUBase
import IOMMUCore
import IOMMUTestSupport
import PhysicalMemory
import Synchronization
import Testing
@testable import VFIOType1

/// A core with a fake IOMMU driver, a VFIO instance and one process.
final class VFIOHarness: Sendable {
    let core: IOMMUCore
    let driver: FakeIOMMUDriver
    let vfio: VFIO
    let host: HostMemory
    let memory: PhysicalMemory
    let warnings = RecordingWarningSink()
    let nextStream = IOMMUMutex<UInt32>(1)

    init(
        lockedLimit: UInt64 = 64 << 20, ipcLock: Bool = false, cpuPageSize: PageSize = .size4K,
        _ configure: (inout FakeIOMMUDriver.Config) -> Void = { _ in },
        vfioConfig: (inout VFIOType1Configuration) -> Void = { _ in }
    ) throws {
        core = IOMMUCore(configuration: IOMMUCoreConfiguration(cpuPageSize: cpuPageSize), warnings: warnings)
        driver = FakeIOMMUDriver(configure)
        _ = try core.registerIOMMU(name: "smmu0", driver: driver)
        var config = VFIOType1Configuration()
        vfioConfig(&config)
        vfio = VFIO(core: core, configuration: config, warnings: warnings)
        memory = try PhysicalMemory(addressBits: 48, ramBase: PhysAddr(0x8000_0000), ramSize: 1 << 30)
        host = HostMemory(memory: memory, frames: FrameAllocator(memory: memory, region: PhysRange(first: PhysAddr(0x8000_0000), last: PhysAddr(0x8000_0000 + (1 << 29) - 1))!), lockedMemoryLimit: lockedLimit, hasIPCLock: ipcLock)
    }

    /// A second process on the same physical memory.
    func otherProcess(lockedLimit: UInt64 = 64 << 20, ipcLock: Bool = false) -> HostMemory {
        HostMemory(memory: memory, frames: FrameAllocator(memory: memory, region: PhysRange(first: PhysAddr(0x8000_0000 + (1 << 29)), last: PhysAddr(0x8000_0000 + (1 << 30) - 1))!), lockedMemoryLimit: lockedLimit, hasIPCLock: ipcLock)
    }

    /// Adds a platform device (its own group) with these driver-reported reserved regions; returns the group ID.
    func addGroup(_ name: String, regions: [ReservedRegion] = []) throws -> Int {
        driver.configure { $0.regions[name] = regions }
        let stream = nextStream.withLock { s in
            defer { s += 1 }
            return s
        }
        let id = try core.addDevice(.platform(name, iommu: FirmwareIOMMUSpec(iommu: "smmu0", streamIDs: [StreamID(stream)])))
        return core.groupID(of: id)!
    }

    /// A container with one group per name, set to `type`.
    func container(_ type: VFIOIOMMUType = .type1v2, groups names: [String] = ["dev0"]) throws -> (VFIOContainer, [VFIOGroup]) {
        let container = vfio.openContainer(process: host)
        var groups: [VFIOGroup] = []
        for name in names {
            let group = try vfio.openGroup(id: addGroup(name))
            try group.setContainer(container)
            groups.append(group)
        }
        try container.setIOMMU(type)
        return (container, groups)
    }

    /// Maps anonymous process memory.
    func buffer(_ length: UInt64, backing: HostMemory.Backing = .anonymous, writable: Bool = true) throws -> VirtAddr {
        try host.map(length: length, backing: backing, writable: writable).first
    }
}

/// The state a failed request must leave unchanged.
struct Snapshot: Equatable {
    var mappings: [VFIODMAMappingInfo]
    var ranges: [IOVARange]
    var avail: UInt32
    var locked: UInt64
    var pins: Int

    init(_ container: VFIOContainer, _ host: HostMemory) {
        mappings = container.mappings
        ranges = container.validIOVARanges
        avail = container.dmaAvailable
        locked = host.lockedPages
        pins = host.totalPins
    }
}

/// Runs `body` and returns the errno it threw (nil on success).
func errno(_ body: () throws -> Void) -> Errno? {
    do {
        try body()
        return nil
    } catch let error as IOMMUError {
        return error.code
    } catch {
        Issue.record("unexpected error \(error)")
        return nil
    }
}

let rw: (read: Bool, write: Bool) = (true, true)
