import IOMMUBase
import IOMMUCore
import IOVAAllocator
import PhysicalMemory
import Synchronization

/// Settings of the DMA layer as a whole (Linux: boot parameters and Kconfig).
public struct DMAConfiguration: Sendable {
    /// CPUs with their own IOVA magazines and flush queues.
    public var cpuCount: Int = 2
    /// DMA-API debug layer (Linux CONFIG_DMA_API_DEBUG); on by default.
    public var debug: Bool = true
    /// Linux's exact behaviour for replays: the IOVA allocator's `.linuxCompatible` policy, and
    /// an incomplete unmap is WARNed and its IOVA freed anyway; wrong-size unmaps are not corrected.
    public var linuxCompatible: Bool = false
    /// Bytes of bounce-buffer pool (swiotlb); 0 = no pool.
    public var bouncePoolBytes: UInt64 = 0
    /// The IOMMU shadows page tables on flush (para-virtual): one large flush queue.
    public var shadowOnFlush: Bool = false
    /// Override of the flush-queue parameters (nil: Linux's per-CPU or single defaults).
    public var flushQueue: FlushQueueOptions?
    /// `iommu.forcedac=1`: no 32-bit-first attempt for PCI devices.
    public var forceDAC: Bool = false
    /// Linux `PAGE_SIZE`.
    public var cpuPageSize: PageSize = .size4K

    public init() {}
}

/// Per-device DMA facts a driver or the platform sets. Linux: `dev->dma_mask`,
/// `coherent_dma_mask`, `bus_dma_limit`, `dma_range_map`, host-bridge windows, seg limits.
public struct DMADeviceOptions: Sendable {
    public var dmaMask: UInt64 = .max
    public var coherentDMAMask: UInt64 = .max
    /// 0 = no bus limit.
    public var busDMALimit: UInt64 = 0
    /// The device's DMA ranges (inclusive bus addresses); empty = none described.
    public var dmaRanges: [ClosedRange<UInt64>] = []
    /// PCI host-bridge memory windows `(first, last, offset)`; reserved as bus addresses.
    public var hostBridgeWindows: [(first: UInt64, last: UInt64, offset: UInt64)] = []
    /// Linux `dma_get_seg_boundary()` and `dma_get_max_seg_size()`.
    public var segmentBoundaryMask: UInt64 = 0xFFFF_FFFF
    public var maxSegmentSize: UInt64 = 65536
    public init() {}
}

/// The DMA API of simulated drivers over an `IOMMUCore`. Linux: `drivers/iommu/dma-iommu.c`
/// (`iommu_dma_ops`), with dma-debug and swiotlb's part.
///
/// One per platform. `setupDevice` is `iommu_setup_dma_ops`: it finds the device's default
/// domain, creates or checks the domain's IOVA cookie and applies the device's reservations.
public final class DMAAPI: Sendable {
    public let core: IOMMUCore
    public let memory: PhysicalMemory?
    public let frames: FrameAllocator?
    public let configuration: DMAConfiguration
    public let clock: any DMAClock
    public let warnings: any WarningSink
    public let bouncePool: BouncePool?
    /// Fault injection (iommufd `fail_nth` style) for `setupDevice`: the IOVA cookie allocation
    /// (Linux: `iommu_get_dma_cookie` / `iova_domain_init_rcaches`, ENOMEM: `setupDevice` throws
    /// `.outOfMemory` and nothing is set up) and the flush-queue allocation (Linux:
    /// `iommu_dma_init_fq` failing: the domain silently stays strict).
    public let failNth = FailNth()
    /// Fault injection for IOVA allocation in every cookie's IOVA domain: the armed allocation
    /// fails as if the space were full (Linux: `alloc_iova_fast` returning 0; the map returns
    /// `DMA_MAPPING_ERROR`, `map_sg` fails, `alloc_coherent` returns NULL).
    public let iovaFailNth = FailNth()
    /// Fault injection for magazine allocation in every cookie's IOVA domain (Linux:
    /// `iova_magazine_alloc` failing in the rcache insert: the freed IOVA goes back to the tree).
    public let magazineFailNth = FailNth()
    let cookies = IOMMUMutex<[UInt64: DMACookie]>([:])
    let devices = IOMMUMutex<[DeviceID: DMADevice]>([:])

    public init(
        core: IOMMUCore, memory: PhysicalMemory? = nil, frames: FrameAllocator? = nil,
        configuration: DMAConfiguration = DMAConfiguration(), clock: any DMAClock = MonotonicDMAClock(),
        warningSink: any WarningSink = DiscardingWarningSink()
    ) throws(IOMMUError) {
        self.core = core
        self.frames = frames
        self.memory = memory ?? frames?.memory
        self.configuration = configuration
        self.clock = clock
        self.warnings = warningSink
        if configuration.bouncePoolBytes > 0 {
            guard let frames else { throw IOMMUError(.invalidConfiguration, length: configuration.bouncePoolBytes) }
            bouncePool = try BouncePool(frames: frames, bytes: configuration.bouncePoolBytes, granule: configuration.cpuPageSize)
        } else {
            bouncePool = nil
        }
    }

    /// Sets up DMA for a probed device. Linux: `iommu_setup_dma_ops` + `iommu_dma_init_domain`.
    ///
    /// - Throws: `.noSuchDevice` (unknown), `.badAddress` (EFAULT: DMA ranges outside the aperture,
    ///   or a cookie of another granule/base), `.invalidArgument` (overlapping DMA ranges).
    public func setupDevice(_ id: DeviceID, options: DMADeviceOptions = DMADeviceOptions()) throws(IOMMUError) -> DMADevice {
        guard let info = core.deviceInfo(id) else { throw IOMMUError(.noSuchDevice, device: id) }
        let path = core.dmaPath(for: id)
        let domain: IOMMUDomain?
        switch path {
        case .translated(let d): domain = d.type.isDMAAPI ? d : nil
        default: domain = nil
        }
        guard let domain else {
            // dma-direct: identity / no IOMMU.
            let device = DMADevice(api: self, info: info, cookie: nil, options: options, pci32BitFirst: false)
            devices.withLock { $0[id] = device }
            return device
        }
        let cookie = try cookie(for: domain, device: id)
        try checkRanges(options: options, domain: domain, device: id)
        try reserve(for: id, info: info, options: options, cookie: cookie)
        let device = DMADevice(
            api: self, info: info, cookie: cookie, options: options,
            pci32BitFirst: info.pci != nil && !configuration.forceDAC)
        devices.withLock { $0[id] = device }
        return device
    }

    /// The cookie of `domain`, created on first use. Linux: `iommu_get_dma_cookie` +
    /// `iommu_dma_init_domain` steps 2–7 (re-init with the same granule and base is a no-op).
    func cookie(for domain: IOMMUDomain, device: DeviceID) throws(IOMMUError) -> DMACookie {
        guard let smallest = domain.pageSizes.smallest else { throw IOMMUError(.invalidConfiguration, device: device) }
        let geometry = domain.geometry
        let basePFN = max(1, geometry.apertureStart.rawValue >> UInt64(smallest.shift))
        let existing = cookies.withLock { $0[domain.serial] }
        if let existing {
            guard existing.granule == smallest, existing.basePFN == basePFN else {
                throw IOMMUError(.badAddress, address: basePFN, device: device)   // "Incompatible range for DMA domain"
            }
            return existing
        }
        let lazy = domain.type == .dmaFQ && core.capable(.deferredFlush, device: device)
        let fq = configuration.flushQueue ?? (configuration.shadowOnFlush ? .single : .perCPU)
        // iommu_get_dma_cookie + init_iova_domain + iova_domain_init_rcaches: ENOMEM.
        if failNth.shouldFail() { throw IOMMUError(.outOfMemory, device: device) }
        // iommu_dma_init_fq: on failure the domain silently stays strict.
        let queuesAllocated = lazy && !failNth.shouldFail()
        let created = try DMACookie(
            domain: domain, granule: smallest, basePFN: basePFN, lazy: queuesAllocated, flushQueueOptions: fq,
            configuration: configuration, clock: clock, sink: warnings,
            iovaFailure: iovaFailNth, magazineFailure: magazineFailNth)
        return cookies.withLock { c in
            if let raced = c[domain.serial] { return raced }
            c[domain.serial] = created
            return created
        }
    }

    private func checkRanges(options: DMADeviceOptions, domain: IOMMUDomain, device: DeviceID) throws(IOMMUError) {
        guard let low = options.dmaRanges.map(\.lowerBound).min(), let high = options.dmaRanges.map(\.upperBound).max() else { return }
        let g = domain.geometry
        // "specified DMA range outside IOMMU capability"
        if low > g.apertureEnd.rawValue || high < g.apertureStart.rawValue { throw IOMMUError(.badAddress, address: low, device: device) }
    }

    /// Linux: `iova_reserve_iommu_regions` (+ `iova_reserve_pci_windows`).
    private func reserve(for id: DeviceID, info: IOMMUDeviceInfo, options: DMADeviceOptions, cookie: DMACookie) throws(IOMMUError) {
        let shift = UInt64(cookie.granule.shift)
        let iovad = cookie.iovad
        if info.pci != nil {
            for w in options.hostBridgeWindows {
                _ = iovad.reserve(lo: PFN((w.first &- w.offset) >> shift), hi: PFN((w.last &- w.offset) >> shift))
            }
            if !options.dmaRanges.isEmpty {
                let sorted = options.dmaRanges.sorted { $0.lowerBound < $1.lowerBound }
                var next: UInt64 = 0
                for r in sorted {
                    if r.lowerBound < next { throw IOMMUError(.invalidArgument, address: r.lowerBound, device: id) }
                    if r.lowerBound > next { _ = iovad.reserve(lo: PFN(next >> shift), hi: PFN((r.lowerBound - 1) >> shift)) }
                    if r.upperBound == .max { next = .max; break }
                    next = r.upperBound + 1
                }
                if next != .max { _ = iovad.reserve(lo: PFN(next >> shift), hi: PFN(UInt64.max >> shift)) }
            }
        }
        for region in core.reservedRegions(of: id) where region.type != .swMSI {
            _ = iovad.reserve(lo: PFN(region.start >> shift), hi: PFN(region.last >> shift))
        }
    }

    // MARK: - Devices and time

    public func device(_ id: DeviceID) -> DMADevice? { devices.withLock { $0[id] } }

    /// The cookie of a domain, if the DMA layer set one up.
    public func cookie(of domain: IOMMUDomain) -> DMACookie? { cookies.withLock { $0[domain.serial] } }

    /// Runs due flush-queue timers (Linux: `fq_flush_timeout`) at the clock's current time.
    /// - Returns: the number of timers that fired.
    @discardableResult
    public func tick(cpu: Int = 0) -> Int {
        let now = clock.nanoseconds
        let all = cookies.withLock { Array($0.values) }
        var fired = 0
        for cookie in all where cookie.runTimerIfDue(now: now, cpu: min(cpu, configuration.cpuCount - 1)) { fired += 1 }
        return fired
    }

    /// Unbinds the device's driver in the core and reports its live mappings as leaks.
    @discardableResult
    public func unbindDriver(_ id: DeviceID) -> [DMAMappingRecord] {
        core.unbindDriver(id)
        return driverUnbound(id)
    }

    /// Reports the device's live mappings as leaks (Linux dma-debug's bus notifier on unbind).
    @discardableResult
    public func driverUnbound(_ id: DeviceID) -> [DMAMappingRecord] {
        guard let device = device(id), let debug = device.cookie?.debug else { return [] }
        return debug.reportLeaks(of: id)
    }

    /// Reports leaks, forgets the device, and removes it from the core.
    @discardableResult
    public func removeDevice(_ id: DeviceID) throws(IOMMUError) -> [DMAMappingRecord] {
        let leaked = driverUnbound(id)
        devices.withLock { $0[id] = nil }
        try core.removeDevice(id)
        return leaked
    }
}
