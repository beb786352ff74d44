import IOMMUBase
import IOMMUCore
import IOPageTable
import PhysicalMemory
import Synchronization

/// The Linux `apple-dart` driver for the `DART` model.
///
/// Page size from DART_PARAMS1, bypass support from DART_PARAMS2. With a DART page larger than
/// the CPU page (16 KiB DART, 4 KiB kernel) bypass is forced: `defaultDomainType` is identity.
/// Paging domains then get the DART page size only, and the core's attach-time page-size check
/// refuses them (EFAULT) unless the domain opted in (`allowsLargePages`) for a trusted device.
/// `Options.mainlineFinaliseCheck` adds mainline's own refusal (EINVAL in finalise).
///
/// Linux: `drivers/iommu/apple-dart.c`.
public final class AppleDARTDriver: IOMMUDriver, DARTInterruptHandler, @unchecked Sendable {
    public struct Options: Hashable, Sendable {
        /// Refuse paging domains in `finaliseDomain` with EINVAL when the DART page is larger
        /// than the CPU page (mainline `apple_dart_finalize_domain`), except for an opted-in
        /// domain of a trusted device. Default off: the core's generic check decides (EFAULT).
        public var mainlineFinaliseCheck = false
        public init(mainlineFinaliseCheck: Bool = false) { self.mainlineFinaliseCheck = mainlineFinaliseCheck }
    }

    struct DriverState {
        var masters: [DeviceID: [Int]] = [:]
        /// Per stream: a probed device of the group using it. Linux: `sid2group`.
        var streamGroup: [DeviceID?]
    }

    public let name = "apple-dart"
    public let dart: DART
    public let options: Options
    unowned let core: IOMMUCore
    let warnings: any WarningSink
    public let frames: FrameAllocator
    /// The DART page. Linux: `dart->pgsize`.
    public let pageSize: PageSize
    public let supportsBypass: Bool
    /// DART page > CPU page. Linux: `dart->force_bypass`.
    public let forceBypass: Bool
    /// Linux: "DART [pagesize %x, %d streams, bypass support: %d, bypass forced: %d] initialized".
    public let probeMessage: String
    let state: IOMMUMutex<DriverState>
    /// Fault injection (iommufd `fail_nth` style) at the driver's own allocations, each ENOMEM:
    /// the master config in probe (Linux: `apple_dart_of_xlate`'s `kzalloc`), the group's copy of
    /// it for a new group (`apple_dart_device_group`'s `kmemdup`) and a paging domain
    /// (`apple_dart_domain_alloc_paging`). Page-table pages fail through `FrameAllocator.failNth`.
    public let failNth = FailNth()

    public var pageSizes: PageSizeBitmap { PageSizeBitmap([pageSize]) }

    public init(dart: DART, core: IOMMUCore, frames: FrameAllocator, options: Options = Options()) {
        self.dart = dart
        self.core = core
        self.warnings = core.warnings
        self.frames = frames
        self.options = options
        pageSize = PageSize(shift: Int((dart.params1 >> 24) & 0xF))
        supportsBypass = dart.params2 & 1 != 0
        forceBypass = pageSize > core.configuration.cpuPageSize
        probeMessage = "DART [pagesize 0x\(String(pageSize.bytes, radix: 16)), \(dart.configuration.streamCount) streams, bypass support: \(supportsBypass ? 1 : 0), bypass forced: \(forceBypass ? 1 : 0)] initialized"
        state = IOMMUMutex(DriverState(streamGroup: [DeviceID?](repeating: nil, count: dart.configuration.streamCount)))
        for stream in 0..<dart.configuration.streamCount { dart.writeStream(stream, tcr: 0, ttbrs: []) }
        dart.invalidateTLB(streamMask: UInt32((1 << dart.configuration.streamCount) - 1))
        dart.setInterruptHandler(self)
    }

    public func probeDevice(_ device: IOMMUDeviceInfo) throws(IOMMUError) {
        guard let spec = device.iommu, spec.iommu == dart.instanceName else { throw IOMMUError(.noSuchDevice, device: device.id) }
        var streams: [Int] = []
        for sid in spec.streamIDs {
            guard sid.rawValue < UInt32(dart.configuration.streamCount) else {
                throw IOMMUError(.invalidArgument, address: UInt64(sid.rawValue), device: device.id)
            }
            streams.append(Int(sid.rawValue))
        }
        if failNth.shouldFail() { throw IOMMUError(.outOfMemory, device: device.id) }
        state.withLock { $0.masters[device.id] = streams }
    }

    /// The streams the driver holds for `device` (its master config), or nil if none.
    public func streams(of device: DeviceID) -> [Int]? { state.withLock { $0.masters[device] } }

    public func releaseDevice(_ device: IOMMUDeviceInfo) {
        let streams: [Int] = state.withLock { s in
            let streams = s.masters.removeValue(forKey: device.id) ?? []
            for stream in streams where s.streamGroup[stream] == device.id {
                s.streamGroup[stream] = s.masters.first { $0.value.contains(stream) }?.key
            }
            return streams.filter { stream in !s.masters.values.contains { $0.contains(stream) } }
        }
        for stream in streams { dart.writeStream(stream, tcr: 0, ttbrs: []) }
    }

    public func deviceGroup(_ device: IOMMUDeviceInfo) throws(IOMMUError) -> IOMMUGroupChoice {
        try state.withLock { s throws(IOMMUError) in
            guard let streams = s.masters[device.id] else { throw IOMMUError(.noSuchDevice, device: device.id) }
            var token: DeviceID?
            for stream in streams {
                guard let existing = s.streamGroup[stream], existing != device.id else { continue }
                if let token, token != existing { throw IOMMUError(.invalidArgument, device: device.id) }
                token = existing
            }
            // A new group gets its own copy of the master config (kmemdup).
            if token == nil, failNth.shouldFail() { throw IOMMUError(.outOfMemory, device: device.id) }
            for stream in streams where s.streamGroup[stream] == nil { s.streamGroup[stream] = token ?? device.id }
            if let token { return .sameGroupAs(token) }
            return device.busKind == .pci ? .pciDefault : .newGroup
        }
    }

    /// Linux: `apple_dart_def_domain_type`: the page-size test comes first.
    public func defaultDomainType(for device: IOMMUDeviceInfo) -> IOMMUDomainType? {
        if forceBypass { return .identity }
        if !supportsBypass { return .dma }
        return nil
    }

    public func allocateDomain(type: IOMMUDomainType, for device: IOMMUDeviceInfo?) throws(IOMMUError) -> any IOMMUDomainOps {
        guard [.blocked, .identity, .unmanaged, .dma, .dmaFQ].contains(type) else { throw IOMMUError(.notSupported) }
        // Blocked and identity domains are static in Linux; a paging domain is allocated.
        if type.isPaging, failNth.shouldFail() { throw IOMMUError(.outOfMemory, device: device?.id) }
        return DARTDomainOps(driver: self, type: type)
    }

    /// Linux: `apple_dart_finalize_domain`.
    public func finaliseDomain(_ domain: IOMMUDomain, for device: IOMMUDeviceInfo) throws(IOMMUError) {
        guard let ops = domain.ops as? DARTDomainOps, ops.driver === self else { throw IOMMUError(.invalidArgument, device: device.id) }
        guard domain.type.isPaging else { return }
        if options.mainlineFinaliseCheck && forceBypass && !(domain.allowsLargePages && !device.isUntrusted) {
            throw IOMMUError(.invalidArgument, device: device.id)
        }
        let ias = 32
        let table = try AnyIOPageTable(kind: .appleDART, granule: pageSize,
                                       configuration: PageTableConfiguration(ias: ias, oas: dart.configuration.outputAddressBits),
                                       frames: frames, warnings: warnings)
        domain.setPageSizes(PageSizeBitmap([pageSize]))
        domain.setGeometry(DomainGeometry(apertureStart: IOVA(0), apertureEnd: IOVA((UInt64(1) << UInt64(ias)) - 1), forceAperture: true))
        ops.publish(PageTableBox(table))
    }

    public func attachDevice(_ device: IOMMUDeviceInfo, to domain: IOMMUDomain) throws(IOMMUError) {
        guard let ops = domain.ops as? DARTDomainOps, ops.driver === self else { throw IOMMUError(.invalidArgument, device: device.id) }
        guard let streams = state.withLock({ $0.masters[device.id] }) else { throw IOMMUError(.noSuchDevice, device: device.id) }
        let tcr: UInt32
        var ttbrs: [UInt32] = []
        switch domain.type {
        case .identity:
            guard supportsBypass else { throw IOMMUError(.invalidArgument, device: device.id) }
            tcr = DARTRegister.tcrBypassDART
        case .blocked:
            tcr = 0
        default:
            guard case .dart(let registers)? = ops.tableRegisters else { throw IOMMUError(.noSuchDevice, device: device.id) }
            tcr = registers.tcr
            ttbrs = registers.ttbrs
        }
        for stream in streams {
            dart.writeStream(stream, tcr: tcr, ttbrs: ttbrs)
            ops.addStream(stream)
        }
        dart.invalidateTLB(streamMask: streams.reduce(0) { $0 | 1 << UInt32($1) })
    }

    public func detachDevice(_ device: IOMMUDeviceInfo, from domain: IOMMUDomain) {
        let streams = state.withLock { $0.masters[device.id] } ?? []
        for stream in streams { dart.writeStream(stream, tcr: 0, ttbrs: []) }
        dart.invalidateTLB(streamMask: streams.reduce(0) { $0 | 1 << UInt32($1) })
    }

    public func capable(_ capability: IOMMUCapability, device: IOMMUDeviceInfo) -> Bool {
        capability == .cacheCoherency || capability == .deferredFlush
    }

    /// Linux: `apple_dart_irq` (which only logs); here the fault is also reported to the core.
    public func dartFault(_ dart: DART) {
        let (status, address) = dart.readError()
        guard status & DARTRegister.errorFlag != 0 else { return }
        let stream = Int((status >> DARTRegister.errorStreamShift) & 0xF)
        let isWrite = status & DARTRegister.errorWriteFault != 0 || dart.faultLog.last?.isWrite == true
        let reason = dart.faultLog.last?.reason ?? .translation
        let device: DeviceID? = state.withLock { s in s.masters.sorted { $0.key < $1.key }.first { $0.value.contains(stream) }?.key }
            ?? core.device(onIOMMU: dart.instanceName, streamID: StreamID(UInt32(stream)))
        var result: Errno? = .notImplemented
        if let device {
            result = core.reportFault(IOMMUFault(device: device, streamID: StreamID(UInt32(stream)), iova: IOVA(address), isWrite: isWrite, reason: reason))
        }
        if result != nil { warnings.warn(.dartUnhandledFault(status: status, streamIndex: stream, address: address)) }
        dart.clearError(status)
    }
}

/// The driver side of a DART domain. Linux: `struct apple_dart_domain` + its ops.
public final class DARTDomainOps: IOMMUDomainOps, @unchecked Sendable {
    unowned let driver: AppleDARTDriver
    public let type: IOMMUDomainType
    private var box: PageTableBox?
    private let ready = Atomic<Bool>(false)
    private let streamMask = Atomic<UInt32>(0)

    init(driver: AppleDARTDriver, type: IOMMUDomainType) {
        self.driver = driver
        self.type = type
    }

    func publish(_ box: PageTableBox) {
        self.box = box
        ready.store(true, ordering: .releasing)
    }

    func addStream(_ stream: Int) { streamMask.bitwiseOr(1 << UInt32(stream), ordering: .relaxed) }

    /// The page table's register values (TCR, TTBRs), once finalised.
    package var tableRegisters: PageTableRegisters? { ready.load(ordering: .acquiring) ? box?.table.registers : nil }

    /// Runs `body` with the domain's page table (nil before finalise and after free), for the
    /// consistency checkers and the isolation audit (`iommu inspect --check` / `--reach`).
    package func withPageTable<R>(_ body: (borrowing AnyIOPageTable) -> R) -> R? {
        guard ready.load(ordering: .acquiring), let box else { return nil }
        return body(box.table)
    }

    public func mapPages(iova: IOVA, paddr: PhysAddr, pageSize: PageSize, count: UInt64, prot: IOMMUProt, mapped: inout UInt64) throws(IOMMUError) {
        guard ready.load(ordering: .acquiring), let box else { throw IOMMUError(.noSuchDevice, address: iova.rawValue) }
        var invalidator = DARTInvalidator(dart: driver.dart, streamMask: streamMask.load(ordering: .relaxed))
        // One table's worth at most, like io-pgtable's map_pages; the core loops for the rest.
        mapped &+= try box.table.map(iova: iova, paddr: paddr, pageSize: pageSize, count: Int(count), prot: prot,
                                     invalidator: &invalidator)
    }

    public func unmapPages(iova: IOVA, pageSize: PageSize, count: UInt64, gather: inout IOTLBGather) -> UInt64 {
        guard ready.load(ordering: .acquiring), let box else { return 0 }
        let mask = streamMask.load(ordering: .relaxed)
        var invalidator = DARTInvalidator(dart: driver.dart, streamMask: mask)
        // One table's worth at most, like io-pgtable's unmap_pages; the core loops for the rest.
        let unmapped = box.table.unmap(iova: iova, pageSize: pageSize, count: Int(count), gather: &gather,
                                       invalidator: &invalidator)
        if unmapped != 0 { driver.dart.noteMappingsRemoved(streamMask: mask, first: iova.rawValue, last: iova.rawValue &+ (unmapped &- 1)) }
        return unmapped
    }

    public func iovaToPhys(_ iova: IOVA) -> PhysAddr? {
        guard ready.load(ordering: .acquiring), let box else { return nil }
        return box.table.iovaToPhys(iova)
    }

    /// The page table against the hardware walker (`AnyIOPageTable.checkConsistency(memory:)`);
    /// `[]` before finalisation. No Linux counterpart.
    public func checkPageTableConsistency() -> [ConsistencyViolation] {
        guard ready.load(ordering: .acquiring), let box else { return [] }
        return box.table.checkConsistency(memory: driver.frames.memory)
    }

    /// How many table pages the page table holds (each one frame allocation); 0 before
    /// finalisation. For leak accounting: a failed map may leave tables it installed in place.
    public var liveTableCount: Int {
        guard ready.load(ordering: .acquiring), let box else { return 0 }
        return box.table.liveTables().count
    }

    /// Linux: `apple_dart_flush_iotlb_all` / `apple_dart_iotlb_sync`: invalidate the domain's streams.
    public func flushIOTLBAll() { driver.dart.invalidateTLB(streamMask: streamMask.load(ordering: .relaxed)) }
    public func iotlbSync(_ gather: inout IOTLBGather) { driver.dart.invalidateTLB(streamMask: streamMask.load(ordering: .relaxed)) }

    public func free() {
        guard ready.load(ordering: .acquiring) else { return }
        ready.store(false, ordering: .releasing)
        box = nil
    }
}

/// DART TLB maintenance: per stream set, no per-address invalidation (Linux: `apple_dart_tlb_*`).
struct DARTInvalidator: TLBInvalidator {
    let dart: DART
    let streamMask: UInt32
    mutating func flushAll() { dart.invalidateTLB(streamMask: streamMask) }
    mutating func flushWalk(iova: IOVA, size: UInt64, granule: UInt64) { dart.invalidateTLB(streamMask: streamMask) }
}
