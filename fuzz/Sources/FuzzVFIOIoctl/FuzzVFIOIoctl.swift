import IOMMUKit
#if canImport(Glibc)
import Glibc
#endif

/// `FUZZ_DEBUG=1 fuzz/out/FuzzVFIOIoctl INPUT` prints each ioctl and its result.
let debug = getenv("FUZZ_DEBUG") != nil

let memory = try! PhysicalMemory(addressBits: 48, ramBase: PhysAddr(0x8000_0000), ramSize: 1 << 30)
/// Page-table frames (the SMMU driver) and process memory (HostMemory) come from separate halves.
let tableFrames = FrameAllocator(memory: memory, region: PhysRange(start: PhysAddr(0x8000_0000), length: 1 << 29)!)
let processFrames = FrameAllocator(memory: memory, region: PhysRange(start: PhysAddr(0xA000_0000), length: 1 << 29)!)

/// Where the fixture maps process memory (seeds use these vaddrs).
let anonymousBase: UInt64 = 0x10_0000_0000 // 64 KiB anonymous
let hugeBase: UInt64 = 0x10_0020_0000 // 2 MiB huge page
let deviceBase: UInt64 = 0x10_0040_0000 // 16 KiB device memory (PFNMAP)

/// Fuzzes the VFIO container and group `ioctl` byte entry points on a real stack: an Arm SMMU
/// (model + driver, real page tables) under the IOMMU core, one PCI device in its own group, the
/// group set on a type1v2 container holding one 16 KiB mapping. The input is a sequence of
/// `[target: u8][request: u32 LE][length: u16 LE][buffer bytes]`; target bit 0 picks the group
/// file instead of the container, bit 1 the integer-argument form (first 8 buffer bytes). After
/// every ioctl: `VFIOContainer.checkConsistency()` (mapping list vs. page tables vs. pins vs.
/// accounting), `IOMMUCore.checkConsistency()`, `ARMSMMUDriver.checkConsistency()`, every pinned page is charged once; at the end,
/// closing the group and container must unpin and uncharge everything and free every
/// page-table frame VFIO allocated.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVFIOIoctl(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let tableBaseline = tableFrames.framesInUse
    do {
        let core = IOMMUCore(configuration: IOMMUCoreConfiguration(cpuPageSize: .size4K, defaultDomainType: .dma))
        let smmu = ARMSMMU(name: "smmu0", memory: memory)
        let driver = ARMSMMUDriver(smmu: smmu, core: core, frames: tableFrames, options: .init(disableBypass: true))
        _ = try core.registerIOMMU(name: smmu.instanceName, driver: driver)
        let device = try core.addDevice(.pci(PCIAddress(bus: 0, device: 3, function: 0),
                                             iommu: FirmwareIOMMUSpec(iommu: "smmu0", streamIDs: [StreamID(0x300)])))
        try core.bindDriver(device, name: "vfio-pci", driverManagedDMA: true)
        let framesBeforeVFIO = tableFrames.framesInUse
        let host = HostMemory(memory: memory, frames: processFrames, lockedMemoryLimit: 4 << 20)
        try host.map(length: 0x10000, backing: .anonymous, at: VirtAddr(anonymousBase))
        try host.map(length: 0x20_0000, backing: .hugePages2M, at: VirtAddr(hugeBase))
        try host.map(length: 0x4000, backing: .device(PhysAddr(0x4000_0000)), at: VirtAddr(deviceBase))
        let vfio = VFIO(core: core)
        let container = vfio.openContainer(process: host)
        let group = try vfio.openGroup(id: core.groupID(of: device)!)
        try group.setContainer(container)
        try container.setIOMMU(.type1v2)
        try container.mapDMA(iova: IOVA(0x10_0000), vaddr: VirtAddr(anonymousBase), length: 0x4000, read: true, write: true)

        func check(_ what: String) {
            var problems = container.checkConsistency() + core.checkConsistency() + driver.checkConsistency()
            let charged = container.mappings.reduce(UInt64(0)) { $0 + $1.lockedPages }
            if charged != host.lockedPages { problems.append(.init(component: "fuzz", message: "mappings charge \(charged), process locked \(host.lockedPages)")) }
            if UInt64(host.totalPins) != host.lockedPages {
                problems.append(.init(component: "fuzz", message: "\(host.totalPins) pins but \(host.lockedPages) locked pages"))
            }
            if !problems.isEmpty { fatalError("after \(what): \(problems)") }
        }
        check("setup")
        var offset = 0
        var count = 0
        while offset + 7 <= bytes.count && count < 32 {
            let target = bytes[offset]
            let request = UInt32(bytes[offset + 1]) | UInt32(bytes[offset + 2]) << 8 | UInt32(bytes[offset + 3]) << 16 | UInt32(bytes[offset + 4]) << 24
            let length = Int(bytes[offset + 5]) | Int(bytes[offset + 6]) << 8
            offset += 7
            let end = min(bytes.count, offset + length)
            var buffer = Array(bytes[offset..<end])
            offset = end
            count += 1
            let result: Int32
            if target & 2 != 0 {
                var argument: UInt64 = 0
                for (i, b) in buffer.prefix(8).enumerated() { argument |= UInt64(b) << (8 * UInt64(i)) }
                result = target & 1 != 0 ? 0 : container.ioctl(request: request, argument: argument)
            } else if target & 1 != 0 {
                result = group.ioctl(request: request, buffer: &buffer)
            } else {
                result = container.ioctl(request: request, buffer: &buffer)
            }
            if debug { print("ioctl #\(count) target \(target) request 0x\(String(request, radix: 16)) length \(buffer.count) -> \(result); mappings \(container.mappings)") }
            if result > 0 && request != VFIOUAPI.checkExtension { fatalError("ioctl 0x\(String(request, radix: 16)) returned \(result)") }
            check("ioctl #\(count) 0x\(String(request, radix: 16)) -> \(result)")
        }
        group.close()
        container.close()
        if host.totalPins != 0 || host.lockedPages != 0 {
            fatalError("closing left \(host.totalPins) pins, \(host.lockedPages) locked pages")
        }
        if tableFrames.framesInUse != framesBeforeVFIO {
            fatalError("VFIO left \(tableFrames.framesInUse - framesBeforeVFIO) page-table frames")
        }
        let problems = core.checkConsistency()
        if !problems.isEmpty { fatalError("core after close: \(problems)") }
        core.unbindDriver(device)
        try core.removeDevice(device)
        try host.unmap(VirtRange(first: VirtAddr(anonymousBase), last: VirtAddr(anonymousBase + 0x10000 - 1))!)
        try host.unmap(VirtRange(first: VirtAddr(hugeBase), last: VirtAddr(hugeBase + 0x20_0000 - 1))!)
    } catch {
        fatalError("fixture failed: \(error)")
    }
    _ = tableBaseline
    return 0
}
