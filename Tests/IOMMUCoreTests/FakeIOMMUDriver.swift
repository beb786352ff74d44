import IOMMUBase
import IOMMUCore
import Synchronization

/// A fake IOMMU driver: configurable answers, recorded calls, a dictionary "page table".
final class FakeIOMMUDriver: IOMMUDriver {
    struct Config {
        var pageSizes = PageSizeBitmap([.size4K, .size2M, .size1G])
        /// Page sizes `finaliseDomain` sets (nil: keep `pageSizes`).
        var finalPageSizes: PageSizeBitmap?
        /// Page sizes `finaliseDomain` sets for one domain type (wins over `finalPageSizes`).
        var finalPageSizesByType: [UInt32: PageSizeBitmap] = [:]
        /// def_domain_type per device name.
        var defaultTypes: [String: IOMMUDomainType] = [:]
        /// device_group answer per device name (default `.pciDefault`).
        var groupChoices: [String: IOMMUGroupChoice] = [:]
        /// device_group error per device name.
        var groupErrors: [String: IOMMUError] = [:]
        /// probe_device error per device name.
        var probeErrors: [String: IOMMUError] = [:]
        /// How many more probes answer EPROBE_DEFER (for any device).
        var deferProbes = 0
        /// attach_dev fails for these device names.
        var failAttach: Set<String> = []
        /// Domain types the driver refuses to allocate.
        var unsupportedTypes: Set<UInt32> = []
        /// Reserved regions per device name.
        var regions: [String: [ReservedRegion]] = [:]
        var capabilities: Set<IOMMUCapability> = []
        /// iotlb_sync_map fails.
        var failSyncMap = false
    }

    enum Event: Equatable {
        case probe(String)
        case release(String)
        case finalise(UInt64)
        case attach(String, UInt64)
        case detach(String, UInt64)
    }

    let name: String
    let config: Mutex<Config>
    let events = Mutex<[Event]>([])
    let failNth = FailNth()
    let domainsFreed = Atomic<Int>(0)
    let domainsAllocated = Atomic<Int>(0)

    init(name: String = "fake-iommu", _ configure: (inout Config) -> Void = { _ in }) {
        self.name = name
        var config = Config()
        configure(&config)
        self.config = Mutex(config)
    }

    func configure(_ body: (inout Config) -> Void) { config.withLock { body(&$0) } }
    var recorded: [Event] { events.withLock { $0 } }
    func clearEvents() { events.withLock { $0.removeAll() } }
    private func log(_ event: Event) { events.withLock { $0.append(event) } }

    var pageSizes: PageSizeBitmap { config.withLock { $0.pageSizes } }

    func probeDevice(_ device: IOMMUDeviceInfo) throws(IOMMUError) {
        let error: IOMMUError? = config.withLock { c in
            if c.deferProbes > 0 {
                c.deferProbes -= 1
                return IOMMUError(.probeDeferred, device: device.id)
            }
            return c.probeErrors[device.name]
        }
        if let error { throw error }
        log(.probe(device.name))
    }

    func releaseDevice(_ device: IOMMUDeviceInfo) { log(.release(device.name)) }

    func deviceGroup(_ device: IOMMUDeviceInfo) throws(IOMMUError) -> IOMMUGroupChoice {
        let (choice, error) = config.withLock { ($0.groupChoices[device.name], $0.groupErrors[device.name]) }
        if let error { throw error }
        return choice ?? .pciDefault
    }

    func defaultDomainType(for device: IOMMUDeviceInfo) -> IOMMUDomainType? {
        config.withLock { $0.defaultTypes[device.name] }
    }

    func allocateDomain(type: IOMMUDomainType, for device: IOMMUDeviceInfo?) throws(IOMMUError) -> any IOMMUDomainOps {
        let (unsupported, failSync) = config.withLock { ($0.unsupportedTypes.contains(type.rawValue), $0.failSyncMap) }
        if unsupported { throw IOMMUError(.notSupported) }
        domainsAllocated.wrappingAdd(1, ordering: .relaxed)
        return FakeDomainOps(driver: self, failSyncMap: failSync)
    }

    func finaliseDomain(_ domain: IOMMUDomain, for device: IOMMUDeviceInfo) throws(IOMMUError) {
        log(.finalise(domain.serial))
        if domain.type.isPaging,
            let final = config.withLock({ $0.finalPageSizesByType[domain.type.rawValue] ?? $0.finalPageSizes })
        {
            domain.setPageSizes(final)
        }
        domain.setGeometry(DomainGeometry(apertureStart: IOVA(0), apertureEnd: IOVA((1 << 48) - 1), forceAperture: true))
    }

    func attachDevice(_ device: IOMMUDeviceInfo, to domain: IOMMUDomain) throws(IOMMUError) {
        if config.withLock({ $0.failAttach.contains(device.name) }) { throw IOMMUError(.noSuchDevice, device: device.id) }
        log(.attach(device.name, domain.serial))
    }

    func detachDevice(_ device: IOMMUDeviceInfo, from domain: IOMMUDomain) {
        log(.detach(device.name, domain.serial))
    }

    func reservedRegions(for device: IOMMUDeviceInfo) -> [ReservedRegion] {
        config.withLock { $0.regions[device.name] ?? [] }
    }

    func capable(_ capability: IOMMUCapability, device: IOMMUDeviceInfo) -> Bool {
        config.withLock { $0.capabilities.contains(capability) }
    }
}

/// A page table as a dictionary from IOVA to (paddr, size, prot); records every driver call.
final class FakeDomainOps: IOMMUDomainOps {
    struct Mapping: Equatable {
        var paddr: UInt64
        var size: UInt64
        var prot: IOMMUProt
    }

    struct Call: Equatable {
        var iova: UInt64
        var pageSize: UInt64
        var count: UInt64
    }

    struct State {
        var mappings: [UInt64: Mapping] = [:]
        var mapCalls: [Call] = []
        var unmapCalls: [Call] = []
        var syncs = 0
        var flushAlls = 0
    }

    unowned let driver: FakeIOMMUDriver
    let failSyncMap: Bool
    let state = Mutex(State())
    let freed = Atomic<Bool>(false)

    init(driver: FakeIOMMUDriver, failSyncMap: Bool) {
        self.driver = driver
        self.failSyncMap = failSyncMap
    }

    var mappings: [UInt64: Mapping] { state.withLock { $0.mappings } }
    var mapCalls: [Call] { state.withLock { $0.mapCalls } }
    var unmapCalls: [Call] { state.withLock { $0.unmapCalls } }

    private static func containing(_ mappings: [UInt64: Mapping], _ address: UInt64) -> UInt64? {
        mappings.first { address >= $0.key && address - $0.key < $0.value.size }?.key
    }

    func mapPages(
        iova: IOVA, paddr: PhysAddr, pageSize: PageSize, count: UInt64, prot: IOMMUProt, mapped: inout UInt64
    ) throws(IOMMUError) {
        let failNth = driver.failNth
        let result: IOMMUError? = state.withLock { s in
            s.mapCalls.append(Call(iova: iova.rawValue, pageSize: pageSize.bytes, count: count))
            for index in 0..<count {
                let address = iova.rawValue + index * pageSize.bytes
                if failNth.shouldFail() { return IOMMUError(.outOfMemory, address: address) }
                if Self.containing(s.mappings, address) != nil
                    || Self.containing(s.mappings, address + pageSize.bytes - 1) != nil
                {
                    return IOMMUError(.alreadyMapped, address: address)
                }
                s.mappings[address] = Mapping(paddr: paddr.rawValue + index * pageSize.bytes, size: pageSize.bytes, prot: prot)
                mapped += pageSize.bytes
            }
            return nil
        }
        if let result { throw result }
    }

    func unmapPages(iova: IOVA, pageSize: PageSize, count: UInt64, gather: inout IOTLBGather) -> UInt64 {
        let unmapped: UInt64 = state.withLock { s in
            s.unmapCalls.append(Call(iova: iova.rawValue, pageSize: pageSize.bytes, count: count))
            var cursor = iova.rawValue
            var done: UInt64 = 0
            while done < pageSize.bytes * count, let mapping = s.mappings[cursor] {
                s.mappings[cursor] = nil
                done += mapping.size
                cursor += mapping.size
            }
            return done
        }
        gather.addRange(iova: iova, length: unmapped)
        return unmapped
    }

    func iovaToPhys(_ iova: IOVA) -> PhysAddr? {
        state.withLock { s in
            guard let key = Self.containing(s.mappings, iova.rawValue) else { return nil }
            return PhysAddr(s.mappings[key]!.paddr + (iova.rawValue - key))
        }
    }

    func flushIOTLBAll() { state.withLock { $0.flushAlls += 1 } }
    func iotlbSync(_ gather: inout IOTLBGather) { state.withLock { $0.syncs += 1 } }

    func iotlbSyncMap(iova: IOVA, length: UInt64) throws(IOMMUError) {
        if failSyncMap { throw IOMMUError(.ioErrorForTests, address: iova.rawValue) }
    }

    func free() {
        let (exchanged, _) = freed.compareExchange(expected: false, desired: true, ordering: .relaxed)
        precondition(exchanged, "domain freed twice")
        driver.domainsFreed.wrappingAdd(1, ordering: .relaxed)
    }
}

extension IOMMUError.Reason {
    /// Any error the core must pass through unchanged.
    static var ioErrorForTests: Self { .notPermitted }
}

extension IOMMUDomain {
    /// The fake page table behind a domain.
    var fake: FakeDomainOps { ops as! FakeDomainOps }
}

/// A core with recording sinks.
struct Harness {
    let core: IOMMUCore
    let warnings = RecordingWarningSink()
    let trace = RecordingTraceSink()

    init(cpuPageSize: PageSize = .size4K, defaultDomainType: IOMMUDomainType = .dma) {
        let warnings = warnings
        let trace = trace
        core = IOMMUCore(
            configuration: IOMMUCoreConfiguration(cpuPageSize: cpuPageSize, defaultDomainType: defaultDomainType),
            warnings: warnings, trace: trace)
    }

    var traceLines: [String] { trace.lines }
}

func spec(_ iommu: String, _ streams: UInt32...) -> FirmwareIOMMUSpec {
    FirmwareIOMMUSpec(iommu: iommu, streamIDs: streams.map { StreamID($0) })
}

func pciAddress(_ bus: UInt8, _ device: UInt8, _ function: UInt8 = 0) -> PCIAddress {
    PCIAddress(bus: bus, device: device, function: function)
}
