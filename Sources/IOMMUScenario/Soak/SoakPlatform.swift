import DMAMapping
import IOMMUBase
import IOMMUCore
import IOMMUHardware
import IOVAAllocator
import PhysicalMemory
import Synchronization
import VFIOType1
import VirtioIOMMU

/// The soak's machine: one Arm SMMU (model + Linux-faithful driver) under the IOMMU core, the
/// DMA API over it, a VFIO container, a virtio-iommu device (a guest's, with its own core) and
/// a standalone IOVA domain. Built once per run; `teardown()` takes it all down again so the
/// leak checks can compare with `baselineFrames`.
///
/// Devices on the SMMU (stream ID):
/// - `nic-strict` 0x100, PCI: DMA API on a strict (DMA) default domain;
/// - `nic-lazy` 0x200, PCI: its group switched to DMA-FQ before its driver binds (sysfs `type`);
/// - `tb-untrusted` 0x300, PCI, untrusted: strict, bounce buffers (1 MiB swiotlb pool);
/// - `gpu-vfio` 0x400, PCI, bound to vfio-pci: the VFIO container's group;
/// - `racer` 0x500: a driver-managed unmanaged domain whose slots the threads map, unmap and
///   read through the SMMU model at the same time;
/// - `accel0` 0x600, `accel1` 0x700: attached to and detached from two shared unmanaged
///   domains (`iommu_attach_device` / `iommu_detach_device`).
final class SoakPlatform: @unchecked Sendable {
    // @unchecked: every field is set once in init; the objects are themselves thread-safe.
    static let racerSlots = 16
    static let racerBase: UInt64 = 0x4000_0000
    static let accelIOVA: UInt64 = 0x2000_0000
    static let vfioSlots = 32
    static let vfioSlotLength: UInt64 = 0x1_0000
    static let vfioBase: UInt64 = 0x1_0000_0000
    static let bufferLength: UInt64 = 0x1_0000

    let threads: Int
    let memory: PhysicalMemory
    let frames: FrameAllocator
    let warnings = SoakWarningCounter()
    /// Shared counters (captured by the fault handler and the mdev notifier).
    let counters = SoakCounters()
    let core: IOMMUCore
    let smmu: ARMSMMU
    let driver: ARMSMMUDriver
    let clock = ManualDMAClock()
    let api: DMAAPI
    /// Per thread: a 64 KiB buffer the DMA operations map (mapping one page many times is fine).
    let buffers: [PhysAddr]
    /// The racing domain's slot pages, each filled with its tag `0x40 + slot`.
    let racerPages: [PhysAddr]
    /// The pages the accel domains map at `accelIOVA`, tagged 0xA0 and 0xA1.
    let accelPages: [PhysAddr]
    let baselineFrames: Int

    let strict: DMADevice
    let lazy: DMADevice
    let untrusted: DMADevice
    let racerID: DeviceID
    let racerStream = StreamID(0x500)
    let racerDomain: IOMMUDomain
    let accelIDs: [DeviceID]
    let accelStreams = [StreamID(0x600), StreamID(0x700)]
    let accelDomains: [IOMMUDomain]
    let gpuID: DeviceID
    let vfio: VFIO
    let host: HostMemory
    /// Per thread: the process memory its VFIO mappings use (slot i at `first + i * slot length`).
    let processRegions: [VirtRange]
    let container: VFIOContainer
    let group: VFIOGroup
    let mdev: VFIOEmulatedDevice
    let virtio: VirtioIOMMUDevice
    let iova: IOVADomain

    init(threads: Int) throws(IOMMUError) {
        self.threads = threads
        memory = try PhysicalMemory(ramSize: 1 << 30)
        frames = FrameAllocator(memory: memory)
        var buffers: [PhysAddr] = []
        for t in 0..<threads {
            let b = try frames.allocate(.size64K)
            for i in 0..<Int(Self.bufferLength >> 12) { try memory.fill(PhysAddr(b.rawValue + UInt64(i) << 12), length: 4096, with: UInt8(t * 16 + i)) }
            buffers.append(b)
        }
        self.buffers = buffers
        var racerPages: [PhysAddr] = []
        for s in 0..<Self.racerSlots {
            let p = try frames.allocate(.size4K)
            try memory.fill(p, length: 4096, with: UInt8(0x40 + s))
            racerPages.append(p)
        }
        self.racerPages = racerPages
        var accelPages: [PhysAddr] = []
        for k in 0..<2 {
            let p = try frames.allocate(.size4K)
            try memory.fill(p, length: 4096, with: UInt8(0xA0 + k))
            accelPages.append(p)
        }
        self.accelPages = accelPages
        let core = IOMMUCore(configuration: IOMMUCoreConfiguration(cpuPageSize: .size4K, defaultDomainType: .dma), warnings: warnings)
        self.core = core
        var dmaConfiguration = DMAConfiguration()
        dmaConfiguration.cpuCount = threads
        dmaConfiguration.bouncePoolBytes = 1 << 20
        api = try DMAAPI(core: core, memory: memory, frames: frames, configuration: dmaConfiguration, clock: clock, warningSink: warnings)
        // Everything below is taken down by teardown(): frames in use must come back to this.
        baselineFrames = frames.framesInUse

        var smmuConfiguration = SMMUConfiguration()
        smmuConfiguration.streamMatchRegisterCount = 32
        smmuConfiguration.contextBankCount = 32
        smmu = ARMSMMU(name: "smmu0", memory: memory, configuration: smmuConfiguration, warnings: warnings)
        driver = ARMSMMUDriver(smmu: smmu, core: core, frames: frames)
        _ = try core.registerIOMMU(name: "smmu0", driver: driver)

        func pci(_ bus: UInt8, _ sid: UInt32, untrusted: Bool = false) throws(IOMMUError) -> DeviceID {
            try core.addDevice(.pci(PCIAddress(bus: bus, device: 0, function: 0),
                                    iommu: FirmwareIOMMUSpec(iommu: "smmu0", streamIDs: [StreamID(sid)]), untrusted: untrusted))
        }
        func platform(_ name: String, _ sid: StreamID) throws(IOMMUError) -> DeviceID {
            try core.addDevice(.platform(name, iommu: FirmwareIOMMUSpec(iommu: "smmu0", streamIDs: [sid])))
        }
        let strictID = try pci(1, 0x100)
        let lazyID = try pci(2, 0x200)
        let untrustedID = try pci(3, 0x300, untrusted: true)
        // The administrator's `echo DMA-FQ > /sys/kernel/iommu_groups/N/type` before the driver binds.
        guard let lazyGroup = core.groupID(of: lazyID) else { throw IOMMUError(.noSuchDevice, device: lazyID) }
        try core.setDefaultDomainType(ofGroup: lazyGroup, to: "DMA-FQ")
        for (id, name) in [(strictID, "e1000e"), (lazyID, "ixgbe"), (untrustedID, "thunderbolt-net")] { try core.bindDriver(id, name: name) }
        strict = try api.setupDevice(strictID)
        lazy = try api.setupDevice(lazyID)
        untrusted = try api.setupDevice(untrustedID)
        guard lazy.isLazy, !strict.isLazy, !untrusted.isLazy else { throw IOMMUError(.invalidConfiguration) }

        // Faults are expected where a device reads what was just unmapped: the drivers install
        // handlers (iommu_set_fault_handler), so they are counted, not logged as unhandled.
        let counters = self.counters
        let handler: IOMMUFaultHandler = { _ in counters.faults.wrappingAdd(1, ordering: .relaxed); return nil }

        racerID = try platform("racer", racerStream)
        try core.bindDriver(racerID, name: "racer")
        racerDomain = try core.allocateDomain(type: .unmanaged, for: racerID)
        racerDomain.setFaultHandler(handler)
        try core.attachDevice(racerDomain, to: racerID)

        let accel0 = try platform("accel0", accelStreams[0])
        let accel1 = try platform("accel1", accelStreams[1])
        accelIDs = [accel0, accel1]
        var accelDomains: [IOMMUDomain] = []
        for (k, page) in accelPages.enumerated() {
            let d = try core.allocateDomain(type: .unmanaged, for: accel0)
            d.setFaultHandler(handler)
            // Finalised by the first attach; mapped once, then shared by both accel devices.
            try core.attachDevice(d, to: accel0)
            try d.map(iova: IOVA(Self.accelIOVA), paddr: page, length: 4096, prot: [.read, .write])
            core.detachDevice(d, from: accel0)
            accelDomains.append(d)
            _ = k
        }
        self.accelDomains = accelDomains
        for id in accelIDs {
            try core.bindDriver(id, name: "accel")
            core.defaultDomain(for: id)?.setFaultHandler(handler)
        }

        gpuID = try pci(4, 0x400)
        try core.bindDriver(gpuID, name: "vfio-pci", driverManagedDMA: true)
        vfio = VFIO(core: core, warnings: warnings)
        host = HostMemory(memory: memory, frames: frames, lockedMemoryLimit: 256 << 20)
        var regions: [VirtRange] = []
        for _ in 0..<threads { regions.append(try host.map(length: UInt64(Self.vfioSlots) * Self.vfioSlotLength)) }
        processRegions = regions
        guard let gpuGroup = core.groupID(of: gpuID) else { throw IOMMUError(.noSuchDevice, device: gpuID) }
        vfio.setInterruptIsolation(ofGroup: gpuGroup, isolated: true)
        container = vfio.openContainer(process: host)
        group = try vfio.openGroup(id: gpuGroup)
        try group.setContainer(container)
        try container.setIOMMU(.type1v2)
        // An mdev-style vendor driver: on an unmap notification it unpins what it holds there.
        mdev = container.registerEmulatedDevice(name: "soak-mdev") { device, iova, length in
            let held = counters.pins.withLock { p in
                let selected = p.filter { $0.key >= iova.rawValue && $0.key - iova.rawValue < length }
                for key in selected.keys { p[key] = nil }
                return selected
            }
            for (page, count) in held.sorted(by: { $0.key < $1.key }) {
                for _ in 0..<count { device.unpinPages(iova: IOVA(page), count: 1) }
                counters.notifierUnpins.wrappingAdd(count, ordering: .relaxed)
            }
        }

        virtio = try VirtioIOMMUDevice(memory: memory, frames: frames, warnings: warnings)
        for endpoint in 1...UInt32(2 * threads) { try virtio.addEndpoint(endpoint) }
        guard virtio.negotiate(driverFeatures: .linuxDriver) else { throw IOMMUError(.invalidConfiguration) }

        iova = try IOVADomain(granule: .size4K, startPFN: 1, cpuCount: threads, policy: .checking, warningSink: warnings)
    }

    // MARK: - Checkers

    /// Names of the checkers `checkAll` runs (for the report).
    static let checkerNames = [
        "IOMMUCore.checkConsistency", "ARMSMMUDriver.checkConsistency", "SMMUDomainOps.checkPageTableConsistency (every SMMU domain's page table)",
        "IOVADomain.checkConsistency (DMA cookies + standalone)", "DMACookie.checkConsistency (dma-debug records vs. IOVAs and tables)", "VFIOContainer.checkConsistency", "VirtioIOMMUDevice.checkConsistency",
        "IOMMUCore.checkConsistency (virtio guest)", "VFIO pin accounting", "DMA-API live mappings vs. page tables",
    ]

    /// Every model checker; call with all operations quiesced.
    func checkAll() -> [String] {
        var problems = core.checkConsistency() + driver.checkConsistency()
        var domains: [ObjectIdentifier: IOMMUDomain] = [:]
        for id in [strict.id, lazy.id, untrusted.id, racerID, gpuID] + accelIDs {
            for d in [core.domain(for: id), core.defaultDomain(for: id)] { if let d { domains[ObjectIdentifier(d)] = d } }
        }
        for d in accelDomains { domains[ObjectIdentifier(d)] = d }
        for d in domains.values {
            if let ops = d.ops as? SMMUDomainOps { problems += ops.checkPageTableConsistency() }
        }
        for device in [strict, lazy, untrusted] {
            problems += device.cookie?.iovad.checkConsistency() ?? []
            problems += device.cookie?.checkConsistency() ?? []
        }
        problems += iova.checkConsistency()
        problems += container.checkConsistency()
        problems += virtio.checkConsistency()
        problems += virtio.core.checkConsistency()
        var out = problems.map(\.description)
        // VFIO's charge: what the mappings account = the process's locked pages = its pins
        // (external pins of pages inside mappings are the same pages, not new charges).
        let charged = container.mappings.reduce(UInt64(0)) { $0 + $1.lockedPages }
        if charged != host.lockedPages { out.append("vfio: mappings charge \(charged) page(s), process has \(host.lockedPages) locked") }
        let externalPins = counters.pins.withLock { $0.values.reduce(0, +) }
        if UInt64(host.totalPins) != host.lockedPages + UInt64(externalPins) {
            out.append("vfio: \(host.totalPins) pins, expected \(host.lockedPages) locked + \(externalPins) external")
        }
        return out
    }

    // MARK: - Teardown

    /// Takes down everything built after `baselineFrames` was taken; returns the leak-check
    /// violations (frames, pins, locked pages, live domains, bounce slots).
    func teardown() -> [String] {
        var out: [String] = []
        for device in [strict, lazy, untrusted] {
            if !device.liveMappings.isEmpty { out.append("teardown: \(device.name) has \(device.liveMappings.count) live DMA mapping(s)") }
        }
        if let pool = api.bouncePool, pool.slotsInUse != 0 { out.append("teardown: \(pool.slotsInUse) bounce slot(s) still in use") }
        if counters.pins.withLock({ !$0.isEmpty }) { out.append("teardown: the emulated device still holds pins") }
        if !container.mappings.isEmpty { out.append("teardown: \(container.mappings.count) VFIO mapping(s) left") }
        if host.totalPins != 0 || host.lockedPages != 0 {
            out.append("teardown: \(host.totalPins) pin(s), \(host.lockedPages) locked page(s) with no VFIO mapping")
        }
        mdev.unregister()
        group.close()
        container.close()
        if host.totalPins != 0 || host.lockedPages != 0 {
            out.append("teardown: closing VFIO left \(host.totalPins) pin(s), \(host.lockedPages) locked page(s)")
        }
        for region in processRegions {
            do throws(IOMMUError) { try host.unmap(region) } catch { out.append("teardown: munmap \(region): \(error)") }
        }
        virtio.reset()
        core.detachDevice(racerDomain, from: racerID)
        do throws(IOMMUError) {
            try core.freeDomain(racerDomain)
            for d in accelDomains { try core.freeDomain(d) }
        } catch { out.append("teardown: free domain: \(error)") }
        for id in [strict.id, lazy.id, untrusted.id] {
            let leaked = api.unbindDriver(id)
            if !leaked.isEmpty { out.append("teardown: unbind reported \(leaked.count) leaked DMA mapping(s)") }
            do throws(IOMMUError) { _ = try api.removeDevice(id) } catch { out.append("teardown: remove \(id): \(error)") }
        }
        for id in [racerID, gpuID] + accelIDs {
            core.unbindDriver(id)
            do throws(IOMMUError) { try core.removeDevice(id) } catch { out.append("teardown: remove \(id): \(error)") }
        }
        out += core.checkConsistency().map { "after teardown: \($0)" }
        if core.liveDomainCount != 0 { out.append("teardown: \(core.liveDomainCount) IOMMU domain(s) still live") }
        if frames.framesInUse != baselineFrames {
            out.append("teardown: \(frames.framesInUse - baselineFrames) physical frame(s) not returned (in use \(frames.framesInUse), baseline \(baselineFrames))")
        }
        return out
    }
}

/// Counters the platform's callbacks update from any thread.
final class SoakCounters: Sendable {
    /// Device faults delivered to the installed handlers.
    let faults = Atomic<Int>(0)
    /// Pages the emulated device holds pinned (IOVA page → pins).
    let pins = IOMMUMutex<[UInt64: Int]>([:])
    /// Pages its unmap notifier unpinned.
    let notifierUnpins = Atomic<Int>(0)
}
