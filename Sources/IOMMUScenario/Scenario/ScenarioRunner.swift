import IOMMUBase
import IOMMUCore
import IOMMUHardware
import IOPageTable
import IOVAAllocator
import PhysicalMemory
import VFIOType1
import VirtioIOMMU

/// An emulated vendor driver's own record of the pages it pinned (per IOVA page).
final class PinTracker: Sendable {
    let pins = IOMMUMutex<[UInt64: Int]>([:])
    let notifications = IOMMUMutex<Int>(0)
    var pinnedPages: Int { pins.withLock { $0.values.reduce(0, +) } }
}

/// Builds the platform of a `Scenario` and executes its workload, step by step.
///
/// Deterministic: the only randomness is `seed`-driven (buffer placement), and every model
/// answer is a function of the steps. `run(upTo:)` stops after a step, for `iommu inspect --at`.
public final class ScenarioRunner {
    public let scenario: Scenario
    public let seed: UInt64
    public let memory: PhysicalMemory
    public let frames: FrameAllocator
    public let warnings = RecordingWarningSink()
    public let trace = RecordingTraceSink()
    public let core: IOMMUCore
    public let vfio: VFIO
    public let process: HostMemory
    public private(set) var container: VFIOContainer?
    var hardware: [String: ScenarioHardware] = [:]
    /// Device DMA through the hardware models.
    public private(set) var dma: DMAPlatform!
    /// The DMA API layer (`DMAMapping`): `dma-map-page` and friends.
    var dmaLayer: ScenarioDMAState!
    /// What each domain has mapped by `map` steps (serial → iova → (paddr, length, prot)), for inspection.
    var mapped: [UInt64: [UInt64: (paddr: UInt64, length: UInt64, prot: IOMMUProt)]] = [:]
    var deviceIDs: [String: DeviceID] = [:]
    var namedValues: [String: UInt64] = [:]
    var namedDomains: [String: IOMMUDomain] = [:]
    var iovaDomains: [UInt64: IOVADomain] = [:]
    var vfioGroups: [String: VFIOGroup] = [:]
    var vfioDrivers: [String: (VFIOEmulatedDevice, PinTracker)] = [:]
    var faults: [String] = []
    /// The virtio-iommu device of the platform (`virtio-iommu:`), if any.
    var virtio: ScenarioVirtio?
    var random: SplitMix64
    public internal(set) var clockNanoseconds: UInt64 = 0
    public private(set) var report: ScenarioReport
    public private(set) var stepsRun = 0

    public init(scenario: Scenario, seed: UInt64 = 1) throws(IOMMUError) {
        self.scenario = scenario
        self.seed = seed
        self.random = SplitMix64(seed: seed)
        let p = scenario.platform
        memory = try PhysicalMemory(ramSize: p.ramBytes)
        frames = FrameAllocator(memory: memory)
        core = IOMMUCore(configuration: IOMMUCoreConfiguration(cpuPageSize: p.cpuPageSize, defaultDomainType: p.defaultDomain.domainType),
                         warnings: warnings, trace: trace)
        var configuration = VFIOType1Configuration()
        configuration.allowUnsafeInterrupts = p.allowUnsafeInterrupts
        vfio = VFIO(core: core, configuration: configuration, warnings: warnings)
        process = HostMemory(memory: memory, frames: frames, lockedMemoryLimit: p.lockedMemoryLimit)
        report = ScenarioReport(name: scenario.name, description: scenario.description, seed: seed)
        for spec in p.iommus {
            hardware[spec.name] = ScenarioHardware(spec: spec, memory: memory, frames: frames, core: core)
        }
        dma = DMAPlatform(memory: memory, core: core, hardware: p.iommus.compactMap { hardware[$0.name]?.model })
        if let spec = p.virtio { virtio = try ScenarioVirtio(spec: spec, memory: memory, frames: frames, core: core, warnings: warnings) }
        dmaLayer = try ScenarioDMAState(platform: p, core: core, memory: memory, frames: frames, warnings: warnings)
        boot()
    }

    /// The scenario's process exits: its VFIO group and container files close, as Linux closes
    /// a process's fds at exit (`vfio_group_fops_release`, container release). Without this the
    /// VFIO registry and the container keep each other, and with them the whole platform, alive.
    deinit {
        for group in vfioGroups.values { group.close() }
        container?.close()
    }

    // MARK: - Boot

    func boot() {
        let p = scenario.platform
        report.boot.append("CPU pages \(p.cpuPageSize), default domain \(p.defaultDomain.rawValue) (\(p.defaultDomain.domainType)), RAM \(formatByteSize(p.ramBytes)) at \(memory.ram.first)")
        for spec in p.iommus where spec.registerAtBoot {
            report.boot.append(registerIOMMU(spec.name))
        }
        for spec in p.iommus where !spec.registerAtBoot {
            report.boot.append("\(spec.name) (\(spec.kind)) not registered yet: its devices will defer")
        }
        var added = 0
        for device in p.devices where device.presentAtBoot {
            if case .failure(let e) = addDevice(device.name) { report.boot.append("add \(device.name): \(e.code.name)") }
            added += 1
        }
        for device in p.devices where device.presentAtBoot {
            if let driver = device.driver, let id = deviceIDs[device.name] {
                do throws(IOMMUError) {
                    try core.bindDriver(id, name: driver, driverManagedDMA: vfio.configuration.vfioDriverNames.contains(driver))
                } catch {
                    report.boot.append("bind \(device.name) to \(driver): \(error.code.name)")
                }
            }
        }
        report.boot.append("\(added) device(s) added; \(core.groupIDs.count) group(s)")
        for w in warnings.drain() { report.boot.append("warning: \(w)") }
        let events = trace.drain()
        let adds = events.filter { $0.name == "add_device_to_group" }.count
        if adds > 0 { report.boot.append("trace: \(adds) add_device_to_group, \(events.filter { $0.name == "attach_device_to_domain" }.count) attach_device_to_domain events") }
    }

    func registerIOMMU(_ name: String) -> String {
        guard let hw = hardware[name], let spec = scenario.platform.iommus.first(where: { $0.name == name }) else { return "no IOMMU \(name)" }
        do throws(IOMMUError) {
            _ = try core.registerIOMMU(name: name, driver: hw.driver)
            return "registered \(name): \(spec.kind == .smmu ? "Arm SMMU" : "Apple DART"), pages \(spec.pageSizes), \(spec.streamMatchRegisters) SMRs, \(spec.contextBanks) context banks, unmatched streams \(spec.unmatchedStream == .fault ? "fault" : "bypass")"
        } catch {
            return "register \(name): \(error.code.name)"
        }
    }

    func addDevice(_ name: String) -> Result<DeviceID, IOMMUError> {
        guard let spec = scenario.platform.devices.first(where: { $0.name == name }) else { return .failure(IOMMUError(.noSuchDevice)) }
        let firmware = spec.iommu.map { FirmwareIOMMUSpec(iommu: $0, streamIDs: spec.streamIDs.map { StreamID($0) }) }
        let pci = spec.pciAddress.map {
            PCIDeviceFirmware(address: $0, dmaAliases: spec.dmaAliases, acsIsolated: spec.acsIsolated, untrusted: spec.untrusted)
        }
        let description = DeviceDescription(name: name, bus: spec.bus, iommu: firmware, pci: pci, firmwareReservedRegions: spec.reservedRegions)
        do throws(IOMMUError) {
            // A virtio-iommu endpoint is added by the device (behind its "virtio-iommu" instance).
            let id: DeviceID
            if let v = virtio, let endpoint = try v.addEndpoint(device: name, description: description) { id = endpoint } else { id = try core.addDevice(description) }
            deviceIDs[name] = id
            return .success(id)
        } catch {
            return .failure(error)
        }
    }

    // MARK: - Running

    /// Runs every remaining step (or up to and including step `upTo`, 1-based).
    public func run(upTo limit: Int? = nil) {
        let last = min(limit ?? scenario.steps.count, scenario.steps.count)
        while stepsRun < last {
            let step = scenario.steps[stepsRun]
            stepsRun += 1
            report.steps.append(execute(step, index: stepsRun))
        }
        report.finalState = summary()
    }

    struct Outcome {
        var error: IOMMUError?
        var bytes: UInt64?
        var data: [UInt8]?
        var iova: UInt64?
        var text: String?
    }

    func id(_ device: String) throws(IOMMUError) -> DeviceID {
        guard let id = deviceIDs[device] else { throw IOMMUError(.noSuchDevice, code: .noSuchDevice) }
        return id
    }

    func resolve(_ value: Scenario.Value) throws(IOMMUError) -> UInt64 {
        switch value {
        case .literal(let v): return v
        case let .name(n, plus):
            guard let v = namedValues[n] else { throw IOMMUError(.invalidArgument) }
            return v &+ plus
        }
    }

    func domain(_ ref: Scenario.DomainRef, device: String) throws(IOMMUError) -> IOMMUDomain {
        switch ref {
        case .current:
            guard let d = core.domain(for: try id(device)) else { throw IOMMUError(.noSuchDevice, code: .noSuchDevice) }
            return d
        case .default:
            guard let d = core.defaultDomain(for: try id(device)) else { throw IOMMUError(.noSuchDevice, code: .noSuchDevice) }
            return d
        case .named(let n):
            guard let d = namedDomains[n] else { throw IOMMUError(.invalidArgument) }
            return d
        }
    }

    func iovaDomain(for device: String) throws(IOMMUError) -> (IOVADomain, UInt64) {
        let d = try domain(.current, device: device)
        let granule = d.pageSizes.smallest ?? .size4K
        let spec = scenario.platform.devices.first { $0.name == device }!
        // Linux iommu_dma_alloc_iova: the limit is the smaller of the DMA mask and the aperture end.
        let mask = spec.dmaMaskBits >= 64 ? UInt64.max : (UInt64(1) << UInt64(spec.dmaMaskBits)) - 1
        let limit = min(mask, d.geometry.apertureEnd.rawValue) >> granule.shift
        if let existing = iovaDomains[d.serial] { return (existing, limit) }
        let created = try IOVADomain(granule: granule, startPFN: 1, policy: .checking, warningSink: warnings,
                                     cpuPageSize: max(granule, scenario.platform.cpuPageSize))
        // The SMMU's software MSI window is reserved in every DMA-API domain (iova_reserve_iommu_regions).
        if let group = core.groupID(of: try id(device)), let regions = core.reservedRegions(ofGroup: group) {
            for region in regions.regions where region.type != .directRelaxable {
                _ = created.reserve(lo: PFN(region.start >> granule.shift), hi: PFN(region.last >> granule.shift))
            }
        }
        iovaDomains[d.serial] = created
        return (created, limit)
    }

    /// Records a DMA outcome's fault (if any) for the report; true when the transaction went through.
    func note(_ outcome: DMAOutcome, device: String, record: inout ScenarioReport.StepRecord) -> Bool {
        record.events.append("DMA: \(outcome.bytesMoved) byte(s) moved, TLB \(outcome.tlbHits) hit(s) \(outcome.tlbMisses) miss(es)"
            + (outcome.bypassed ? ", bypassed" : "") + (outcome.usedStaleTLBEntry ? ", STALE TLB entry used" : ""))
        guard let fault = outcome.fault else { return true }
        faults.append("\(device): \(fault)")
        return false
    }

    /// The software view of a device's translation (core DMA path + domain iova_to_phys).
    func softwareTranslate(_ devID: DeviceID, iova: UInt64) -> UInt64? {
        switch core.dmaPath(for: devID) {
        case .noIOMMU, .identity: return iova
        case .translated(let d): return d.iovaToPhys(IOVA(iova))?.rawValue
        case .notProbed, .blocked: return nil
        }
    }

    func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

    func perform(_ action: Scenario.Action, record: inout ScenarioReport.StepRecord) throws(IOMMUError) -> Outcome {
        switch action {
        case .check:
            record.action = "expect"
            return Outcome()
        case .registerIOMMU(let name):
            record.action = "register-iommu \(name)"
            let before = scenario.platform.devices.filter { d in deviceIDs[d.name].map { core.probeState(of: $0) == .deferred } ?? false }
            let text = registerIOMMU(name)
            record.events.append(text)
            for d in before { record.events.append("\(d.name): deferred -> \(stateName(try id(d.name)))") }
            if text.contains(": E") { throw IOMMUError(.alreadyExists) }
            return Outcome()
        case .addDevice(let name):
            record.action = "add-device \(name)"
            switch addDevice(name) {
            case .failure(let e): throw e
            case .success(let devID): record.events.append("\(name) is \(devID): \(stateName(devID))\(core.groupID(of: devID).map { ", group \($0)" } ?? "")")
            }
            return Outcome()
        case .removeDevice(let name):
            record.action = "remove-device \(name)"
            try core.removeDevice(try id(name))
            deviceIDs[name] = nil
            return Outcome()
        case let .bind(device, driver, managed):
            record.action = "bind \(device) to \(driver)"
            try core.bindDriver(try id(device), name: driver, driverManagedDMA: managed)
            return Outcome()
        case .unbind(let device):
            record.action = "unbind \(device)"
            core.unbindDriver(try id(device))
            return Outcome()
        case .retryDeferredProbes:
            record.action = "retry-deferred-probes"
            core.retryDeferredProbes()
            return Outcome()
        case let .allocateDomain(device, type, name):
            record.action = "allocate-domain \(type) for \(device) as \(name)"
            let d = try core.allocateDomain(type: type, for: try id(device))
            namedDomains[name] = d
            record.events.append("\(name) = \(d)")
            return Outcome()
        case let .attach(device, name):
            record.action = "attach \(device) to \(name)"
            guard let d = namedDomains[name] else { throw IOMMUError(.invalidArgument) }
            try core.attachDevice(d, to: try id(device))
            return Outcome()
        case let .detach(device, name):
            record.action = "detach \(device) from \(name)"
            guard let d = namedDomains[name] else { throw IOMMUError(.invalidArgument) }
            core.detachDevice(d, from: try id(device))
            return Outcome()
        case .freeDomain(let name):
            record.action = "free-domain \(name)"
            guard let d = namedDomains[name] else { throw IOMMUError(.invalidArgument) }
            try core.freeDomain(d)
            namedDomains[name] = nil
            return Outcome()
        case let .map(device, ref, iovaValue, length, paddr, prot):
            let iova = try resolve(iovaValue)
            let d = try domain(ref, device: device)
            let pa: UInt64
            if let paddr {
                pa = paddr
            } else {
                // A driver's buffer: naturally aligned frames from RAM (seeded offset for variety).
                let size = PageSize(bytes: max(UInt64(4096), length).nextPowerOfTwo) ?? .size4K
                pa = try frames.allocate(size).rawValue
            }
            record.action = "map \(device) iova \(hex(iova)) +\(hex(length)) -> pa \(hex(pa)) \(protText(prot))"
            try d.map(iova: IOVA(iova), paddr: PhysAddr(pa), length: length, prot: prot)
            mapped[d.serial, default: [:]][iova] = (pa, length, prot)
            return Outcome(bytes: length)
        case let .unmap(device, ref, iovaValue, length):
            let iova = try resolve(iovaValue)
            record.action = "unmap \(device) iova \(hex(iova)) +\(hex(length))"
            let d = try domain(ref, device: device)
            let bytes = d.unmap(iova: IOVA(iova), length: length)
            if bytes > 0 { forget(domain: d.serial, first: iova, length: bytes) }
            return Outcome(bytes: bytes, text: "\(hex(bytes)) bytes unmapped")
        case let .iovaAlloc(device, length, name):
            let (iovad, limit) = try iovaDomain(for: device)
            let pages = (length + iovad.granule.mask) >> iovad.granule.shift
            let pfn = try iovad.fastAlloc(size: pages, limitPFN: limit, flushCaches: true)
            let iova = pfn.rawValue << iovad.granule.shift
            if let name { namedValues[name] = iova }
            record.action = "iova-alloc \(device) \(hex(length))\(name.map { " as $\($0)" } ?? "")"
            return Outcome(iova: iova, text: "iova \(hex(iova)) (\(pages) page(s))")
        case let .iovaFree(device, iovaValue, length):
            let iova = try resolve(iovaValue)
            let (iovad, _) = try iovaDomain(for: device)
            let pages = (length + iovad.granule.mask) >> iovad.granule.shift
            record.action = "iova-free \(device) \(hex(iova)) \(pages) page(s)"
            iovad.fastFree(pfn: PFN(iova >> iovad.granule.shift), size: pages)
            return Outcome()
        case let .dmaWrite(device, iovaValue, bytes):
            let iova = try resolve(iovaValue)
            record.action = "dma-write \(device) iova \(hex(iova)) \(bytes.count) byte(s)"
            let outcome = dma.dmaWrite(device: try id(device), address: iova, bytes: bytes)
            guard note(outcome, device: device, record: &record) else { return Outcome(text: "fault") }
            dmaDeviceAccessed(device: device, iova: iova, length: bytes.count, isWrite: true, outcome: outcome, record: &record)
            if let pa = softwareTranslate(try id(device), iova: iova) { record.events.append("landed at pa \(hex(pa))") }
            return Outcome(bytes: UInt64(outcome.bytesMoved))
        case let .dmaRead(device, iovaValue, length):
            let iova = try resolve(iovaValue)
            record.action = "dma-read \(device) iova \(hex(iova)) \(length) byte(s)"
            let (data, outcome) = dma.dmaRead(device: try id(device), address: iova, length: length)
            guard note(outcome, device: device, record: &record) else { return Outcome(text: "fault") }
            dmaDeviceAccessed(device: device, iova: iova, length: length, isWrite: false, outcome: outcome, record: &record)
            return Outcome(bytes: UInt64(outcome.bytesMoved), data: data, text: bytesText(data))
        case let .streamDMA(iommu, streamID, iova, write):
            record.action = "stream-dma \(iommu) stream \(hex(UInt64(streamID))) iova \(hex(iova)) \(write ? "write" : "read")"
            guard let model = hardware[iommu]?.model else { throw IOMMUError(.noSuchDevice) }
            let owner = core.device(onIOMMU: iommu, streamID: StreamID(streamID)).flatMap { core.deviceInfo($0)?.name } ?? "unknown stream"
            let outcome: DMAOutcome
            if write {
                outcome = model.dmaWrite(streamID: StreamID(streamID), address: iova, bytes: [0])
            } else {
                outcome = model.dmaRead(streamID: StreamID(streamID), address: iova, length: 1).outcome
            }
            guard note(outcome, device: owner, record: &record) else { return Outcome(text: "fault") }
            return Outcome(text: outcome.bypassed ? "bypassed (\(owner))" : "ok (\(owner))")
        case let .translate(device, iovaValue):
            let iova = try resolve(iovaValue)
            record.action = "translate \(device) iova \(hex(iova))"
            let (data, outcome) = dma.dmaRead(device: try id(device), address: iova, length: 1)
            guard note(outcome, device: device, record: &record) else { return Outcome(text: "fault") }
            let pa = softwareTranslate(try id(device), iova: iova)
            return Outcome(data: data, text: "pa \(pa.map(hex) ?? "?")")
        case .vfioOpenGroup(let device):
            record.action = "vfio open group of \(device)"
            guard let group = core.groupID(of: try id(device)) else { throw IOMMUError(.noSuchDevice, code: .notFound) }
            let spec = scenario.platform.devices.first { $0.name == device }!
            if let iommu = spec.iommu, scenario.platform.iommus.first(where: { $0.name == iommu })?.interruptRemapping == true {
                vfio.setInterruptIsolation(ofGroup: group, isolated: true)
            }
            let g = try vfio.openGroup(id: group)
            vfioGroups[device] = g
            record.events.append("/dev/vfio/\(group): viable \(g.status.viable)")
            return Outcome()
        case .vfioSetContainer(let device):
            record.action = "VFIO_GROUP_SET_CONTAINER (group of \(device))"
            guard let g = vfioGroups[device] else { throw IOMMUError(.invalidArgument, code: .badFileDescriptor) }
            try g.setContainer(openedContainer())
            return Outcome()
        case .vfioUnsetContainer(let device):
            record.action = "VFIO_GROUP_UNSET_CONTAINER (group of \(device))"
            guard let g = vfioGroups[device] else { throw IOMMUError(.invalidArgument, code: .badFileDescriptor) }
            try g.unsetContainer()
            return Outcome()
        case .vfioSetIOMMU:
            record.action = "VFIO_SET_IOMMU type1v2"
            try openedContainer().setIOMMU(.type1v2)
            return Outcome()
        case .vfioInfo:
            record.action = "VFIO_IOMMU_GET_INFO"
            let info = try openedContainer().info()
            record.events.append("page sizes \(PageSizeBitmap(rawValue: info.pageSizes)), dma_avail \(info.dmaAvailable)")
            for r in info.iovaRanges { record.events.append("valid iova range [\(hex(r.first.rawValue)), \(hex(r.last.rawValue))]") }
            return Outcome()
        case let .vfioMap(iova, length, vaddr, read, write):
            let c = openedContainer()
            let va: UInt64
            if let vaddr { va = vaddr } else { va = try process.map(length: length).first.rawValue }
            record.action = "VFIO_IOMMU_MAP_DMA iova \(hex(iova)) +\(hex(length)) vaddr \(hex(va))"
            try c.mapDMA(iova: IOVA(iova), vaddr: VirtAddr(va), length: length, read: read, write: write)
            return Outcome(bytes: length)
        case let .vfioUnmap(iova, length):
            record.action = "VFIO_IOMMU_UNMAP_DMA iova \(hex(iova)) +\(hex(length))"
            let before = vfioDrivers.mapValues { $0.1.notifications.withLock { $0 } }
            let bytes = try withNotifications(record: &record, before: before) { () throws(IOMMUError) -> UInt64 in
                try openedContainer().unmapDMA(iova: IOVA(iova), length: length)
            }
            return Outcome(bytes: bytes, text: "\(hex(bytes)) bytes unmapped")
        case let .vfioRegisterDriver(name, behaviour):
            record.action = "register vendor driver \(name) (on unmap: \(behaviour.rawValue))"
            let tracker = PinTracker()
            let device = openedContainer().registerEmulatedDevice(name: name) { device, iova, length in
                tracker.notifications.withLock { $0 += 1 }
                guard behaviour == .unpin else { return }
                let pages = tracker.pins.withLock { pins in
                    let selected = pins.filter { $0.key >= iova.rawValue && $0.key - iova.rawValue < length }
                    for key in selected.keys { pins[key] = nil }
                    return selected
                }
                for (page, count) in pages.sorted(by: { $0.key < $1.key }) {
                    for _ in 0..<count { device.unpinPages(iova: IOVA(page), count: 1) }
                }
            }
            vfioDrivers[name] = (device, tracker)
            return Outcome()
        case let .vfioPin(driver, iova, count):
            record.action = "vfio_pin_pages \(driver) iova \(hex(iova)) \(count) page(s)"
            guard let (device, tracker) = vfioDrivers[driver] else { throw IOMMUError(.invalidArgument) }
            let pages = try device.pinPages(iova: IOVA(iova), count: count, prot: [.read, .write])
            tracker.pins.withLock { pins in
                for i in 0..<count { pins[iova + UInt64(i) * 4096, default: 0] += 1 }
            }
            record.events.append("pinned pa \(pages.map { hex($0.rawValue) }.joined(separator: ", "))")
            return Outcome()
        case let .vfioUnpin(driver, iova, count):
            record.action = "vfio_unpin_pages \(driver) iova \(hex(iova)) \(count) page(s)"
            guard let (device, tracker) = vfioDrivers[driver] else { throw IOMMUError(.invalidArgument) }
            device.unpinPages(iova: IOVA(iova), count: count)
            tracker.pins.withLock { pins in
                for i in 0..<count {
                    let key = iova + UInt64(i) * 4096
                    if let c = pins[key] { pins[key] = c > 1 ? c - 1 : nil }
                }
            }
            return Outcome()
        case .layer(let step):
            return try step.perform(on: self, record: &record)
        }
    }

    func withNotifications<T>(record: inout ScenarioReport.StepRecord, before: [String: Int], _ body: () throws(IOMMUError) -> T) throws(IOMMUError) -> T {
        defer {
            for (name, (_, tracker)) in vfioDrivers.sorted(by: { $0.key < $1.key }) {
                let n = tracker.notifications.withLock { $0 } - (before[name] ?? 0)
                if n > 0 { record.events.append("\(name) notified \(n) time(s); still holds \(tracker.pinnedPages) pinned page(s)") }
            }
        }
        return try body()
    }

    func openedContainer() -> VFIOContainer {
        if let container { return container }
        let c = vfio.openContainer(process: process)
        container = c
        return c
    }

    func stateName(_ id: DeviceID) -> String {
        switch core.probeState(of: id) {
        case .noIOMMU?: "no-iommu"
        case .deferred?: "deferred"
        case .probed?: "probed"
        case .probeFailed?: "failed"
        case nil: "removed"
        }
    }

    func pathName(_ path: DMAPath) -> String {
        switch path {
        case .noIOMMU: "no-iommu"
        case .notProbed: "not-probed"
        case .blocked: "blocked"
        case .identity: "identity"
        case .translated: "translated"
        }
    }

    func protText(_ prot: IOMMUProt) -> String {
        var s = ""
        if prot.contains(.read) { s += "r" }
        if prot.contains(.write) { s += "w" }
        if prot.contains(.cache) { s += "c" }
        if prot.contains(.noExec) { s += "n" }
        if prot.contains(.mmio) { s += "m" }
        return s.isEmpty ? "-" : s
    }

    func bytesText(_ data: [UInt8]) -> String {
        let shown = data.prefix(16).map { b in (b < 16 ? "0" : "") + String(b, radix: 16) }.joined(separator: " ")
        return data.count > 16 ? shown + " …" : shown
    }

    // MARK: - One step

    func execute(_ step: Scenario.Step, index: Int) -> ScenarioReport.StepRecord {
        // The enum spelling until `perform` writes the narrated form (kept when the step fails early).
        var record = ScenarioReport.StepRecord(index: index, line: step.line, action: "\(step.action)", result: "ok", note: step.note)
        let faultsBefore = faults.count
        var outcome = Outcome()
        virtio?.beginStep()
        do throws(IOMMUError) {
            outcome = try perform(step.action, record: &record)
            record.result = outcome.text ?? (outcome.bytes.map { "ok (\(hex($0)) bytes)" } ?? "ok")
        } catch {
            outcome.error = error
            record.result = error.code.name
        }
        for event in trace.drain() { record.events.append("trace: \(event.ftraceText)") }
        let stepWarnings = warnings.drain()
        record.warnings = stepWarnings.map { "\($0)" }
        let stepFaults = Array(faults[faultsBefore...])
        record.faults = stepFaults
        let warningKinds = stepWarnings.map(Self.kindName)

        func check(_ ok: Bool, _ what: String, _ actual: @autoclosure () -> String) {
            if ok { record.checks.append(what) } else { record.failures.append("\(what): got \(actual())") }
        }
        for expectation in step.expect {
            switch expectation {
            case .errno(let e):
                check(outcome.error?.code == e, "expect \(e?.name ?? "ok")", outcome.error?.code.name ?? "ok")
            case .bytes(let b):
                check(outcome.bytes == b, "expect \(hex(b)) bytes", outcome.bytes.map(hex) ?? "none")
            case .data(let d):
                check(outcome.data == d, "expect data \(bytesText(d))", outcome.data.map(bytesText) ?? "no data")
            case .warning(let kind):
                check(warningKinds.contains(kind), "expect warning \(kind)", warningKinds.isEmpty ? "no warning" : warningKinds.joined(separator: ", "))
            case .noWarnings:
                check(warningKinds.isEmpty, "expect no warnings", warningKinds.joined(separator: ", "))
            case .faults(let n):
                if let n { check(stepFaults.count == n, "expect \(n) fault(s)", "\(stepFaults.count)") }
                else { check(!stepFaults.isEmpty, "expect a fault", "none") }
            case .iova(let v):
                check(outcome.iova == v, "expect iova \(hex(v))", outcome.iova.map(hex) ?? "none")
            case let .group(device, gid):
                let actual = deviceIDs[device].flatMap { core.groupID(of: $0) }
                check(actual == gid, "expect \(device) in group \(gid)", actual.map { "group \($0)" } ?? "no group")
            case .sameGroup(let names):
                let ids = names.map { deviceIDs[$0].flatMap { core.groupID(of: $0) } }
                check(ids.first! != nil && Set(ids).count == 1, "expect \(names.joined(separator: ", ")) in one group",
                      ids.map { $0.map(String.init) ?? "none" }.joined(separator: ", "))
            case let .probeState(device, state):
                let actual = deviceIDs[device].map(stateName) ?? "not added"
                check(actual == state, "expect \(device) \(state)", actual)
            case let .dmaPath(device, path):
                let actual = deviceIDs[device].map { pathName(core.dmaPath(for: $0)) } ?? "not added"
                check(actual == path, "expect \(device) DMA \(path)", actual)
            case let .domainType(device, type):
                let actual = deviceIDs[device].flatMap { core.domain(for: $0) }?.type.sysfsName ?? "none"
                check(actual == type, "expect \(device) domain \(type)", actual)
            case .groupCount(let n):
                check(core.groupIDs.count == n, "expect \(n) group(s)", "\(core.groupIDs.count)")
            case let .translation(device, iovaValue, paddr):
                guard let devID = deviceIDs[device], let iova = try? resolve(iovaValue) else {
                    check(false, "expect translation for \(device)", "device or value unknown"); continue
                }
                let pa = softwareTranslate(devID, iova: iova)
                check(pa == paddr, "expect \(device) \(hex(iova)) -> \(paddr.map(hex) ?? "fault")", pa.map(hex) ?? "fault")
            case .validIOVARanges(let ranges):
                let actual = container?.validIOVARanges.map { ($0.first.rawValue, $0.last.rawValue) } ?? []
                let ok = actual.count == ranges.count && zip(actual, ranges).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
                check(ok, "expect valid IOVA ranges \(ranges.map { "[\(hex($0.0)), \(hex($0.1))]" }.joined(separator: " "))",
                      actual.map { "[\(hex($0.0)), \(hex($0.1))]" }.joined(separator: " "))
            case let .pinnedPages(driver, count):
                let actual = vfioDrivers[driver]?.1.pinnedPages ?? -1
                check(actual == count, "expect \(driver) holding \(count) pinned page(s)", "\(actual)")
            case .vfioMappings(let n):
                let actual = container?.mappings.count ?? 0
                check(actual == n, "expect \(n) VFIO mapping(s)", "\(actual)")
            case .layer(let e):
                let (held, what, actual) = e.base.check(on: self)
                check(held, what, actual)
            case .dma(let e):
                for (what, failure) in e.check(runner: self, stepAddress: outcome.iova) { check(failure == nil, what, failure ?? "") }
            }
        }
        return record
    }

    /// The `IOMMUWarning` case name ("unmapOfUnmappedIOVA"), what `expect: {warning: …}` matches.
    static func kindName(_ warning: IOMMUWarning) -> String {
        if let label = Mirror(reflecting: warning).children.first?.label { return label }
        return "\(warning)"
    }

    // MARK: - State

    /// Groups, devices and domains, one line each.
    public func summary() -> [String] {
        var lines: [String] = []
        for gid in core.groupIDs {
            guard let info = core.groupInfo(id: gid) else { continue }
            let names = info.devices.compactMap { core.deviceInfo($0)?.name }
            lines.append("group \(gid): \(names.joined(separator: ", ")); domain \(info.domain.map { "\($0)" } ?? "none")\(info.owner != nil ? (isVirtioEndpoint(names) ? ", owned by virtio-iommu" : ", owned by VFIO") : "")")
        }
        for device in scenario.platform.devices {
            guard let devID = deviceIDs[device.name] else { continue }
            let driver = core.boundDriver(of: devID).map { ", driver \($0)" } ?? ""
            lines.append("\(device.name): \(stateName(devID)), DMA \(pathName(core.dmaPath(for: devID)))\(driver)")
        }
        if let v = virtio {
            let snap = v.device.snapshot
            lines.append("virtio-iommu: negotiated \(snap.negotiatedFeatures), \(snap.domains.count) domain(s), "
                + "\(snap.domains.reduce(0) { $0 + $1.mappings.count }) mapping(s), \(snap.availableEventBuffers) event buffer(s) posted, "
                + "\(snap.statistics.eventsDropped) event(s) dropped")
        }
        if !faults.isEmpty { lines.append("\(faults.count) fault(s) in total") }
        if let c = container {
            lines.append("VFIO: \(c.mappings.count) mapping(s), \(process.lockedPages) locked page(s)")
        }
        lines.append("physical frames in use (page tables and DMA buffers): \(frames.framesInUse)")
        return lines
    }

    /// Per IOMMU: TLB hits, misses and stale hits of its model so far.
    public var tlbStatistics: [(String, (hits: UInt64, misses: UInt64, staleHits: UInt64))] {
        scenario.platform.iommus.compactMap { spec in hardware[spec.name].map { (spec.name, $0.tlb) } }
    }

    func forget(domain serial: UInt64, first: UInt64, length: UInt64) {
        let last = first + length - 1
        var map = mapped[serial] ?? [:]
        for (start, c) in map where start <= last && start + c.length - 1 >= first {
            map[start] = nil
            if start < first { map[start] = (c.paddr, first - start, c.prot) }
            let end = start + c.length - 1
            if end > last { map[last + 1] = (c.paddr + (last + 1 - start), end - last, c.prot) }
        }
        mapped[serial] = map
    }
}

extension UInt64 {
    var nextPowerOfTwo: UInt64 { self <= 1 ? 1 : 1 << UInt64(64 - (self - 1).leadingZeroBitCount) }
}
