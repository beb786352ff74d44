import IOMMUBase
import IOMMUCore
import Synchronization

/// A fake IOMMU driver for tests of IOMMUCore and the layers above it: configurable answers
/// (page sizes, def_domain_type, group choices, probe errors and deferrals, attach failures,
/// unsupported domain types, reserved regions, capabilities), recorded calls, and a dictionary
/// "page table" per domain (`FakeDomainOps`).
public final class FakeIOMMUDriver: IOMMUDriver {
    public struct Config: Sendable {
        public var pageSizes = PageSizeBitmap([.size4K, .size2M, .size1G])
        /// Page sizes `finaliseDomain` sets (nil: keep `pageSizes`).
        public var finalPageSizes: PageSizeBitmap?
        /// Page sizes `finaliseDomain` sets for one domain type (wins over `finalPageSizes`).
        public var finalPageSizesByType: [UInt32: PageSizeBitmap] = [:]
        /// def_domain_type per device name.
        public var defaultTypes: [String: IOMMUDomainType] = [:]
        /// device_group answer per device name (default `.pciDefault`).
        public var groupChoices: [String: IOMMUGroupChoice] = [:]
        /// device_group error per device name.
        public var groupErrors: [String: IOMMUError] = [:]
        /// probe_device error per device name.
        public var probeErrors: [String: IOMMUError] = [:]
        /// How many more probes answer EPROBE_DEFER (for any device).
        public var deferProbes = 0
        /// attach_dev fails for these device names.
        public var failAttach: Set<String> = []
        /// Domain types the driver refuses to allocate.
        public var unsupportedTypes: Set<UInt32> = []
        /// Reserved regions per device name.
        public var regions: [String: [ReservedRegion]] = [:]
        public var capabilities: Set<IOMMUCapability> = []
        /// iotlb_sync_map fails.
        public var failSyncMap = false
        /// The aperture `finaliseDomain` sets (inclusive), default [0, 2^48 - 1].
        public var apertureStart: UInt64 = 0
        public var apertureEnd: UInt64 = (1 << 48) - 1
    }

    public enum Event: Equatable, Sendable {
        case probe(String)
        case release(String)
        case finalise(UInt64)
        case attach(String, UInt64)
        case detach(String, UInt64)
    }

    public let name: String
    public let config: IOMMUMutex<Config>
    public let events = IOMMUMutex<[Event]>([])
    /// Arm it to make the N-th page `mapPages` maps fail with ENOMEM (after mapping the ones before).
    public let failNth = FailNth()
    public let domainsFreed = Atomic<Int>(0)
    public let domainsAllocated = Atomic<Int>(0)

    public init(name: String = "fake-iommu", _ configure: (inout Config) -> Void = { _ in }) {
        self.name = name
        var config = Config()
        configure(&config)
        self.config = IOMMUMutex(config)
    }

    public func configure(_ body: (inout Config) -> Void) { config.withLock { body(&$0) } }
    public var recorded: [Event] { events.withLock { $0 } }
    public func clearEvents() { events.withLock { $0.removeAll() } }
    private func log(_ event: Event) { events.withLock { $0.append(event) } }

    public var pageSizes: PageSizeBitmap { config.withLock { $0.pageSizes } }

    public func probeDevice(_ device: IOMMUDeviceInfo) throws(IOMMUError) {
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

    public func releaseDevice(_ device: IOMMUDeviceInfo) { log(.release(device.name)) }

    public func deviceGroup(_ device: IOMMUDeviceInfo) throws(IOMMUError) -> IOMMUGroupChoice {
        let (choice, error) = config.withLock { ($0.groupChoices[device.name], $0.groupErrors[device.name]) }
        if let error { throw error }
        return choice ?? .pciDefault
    }

    public func defaultDomainType(for device: IOMMUDeviceInfo) -> IOMMUDomainType? {
        config.withLock { $0.defaultTypes[device.name] }
    }

    public func allocateDomain(type: IOMMUDomainType, for device: IOMMUDeviceInfo?) throws(IOMMUError) -> any IOMMUDomainOps {
        let (unsupported, failSync) = config.withLock { ($0.unsupportedTypes.contains(type.rawValue), $0.failSyncMap) }
        if unsupported { throw IOMMUError(.notSupported) }
        domainsAllocated.wrappingAdd(1, ordering: .relaxed)
        return FakeDomainOps(driver: self, failSyncMap: failSync)
    }

    public func finaliseDomain(_ domain: IOMMUDomain, for device: IOMMUDeviceInfo) throws(IOMMUError) {
        log(.finalise(domain.serial))
        if domain.type.isPaging,
            let final = config.withLock({ $0.finalPageSizesByType[domain.type.rawValue] ?? $0.finalPageSizes })
        {
            domain.setPageSizes(final)
        }
        let (apertureStart, apertureEnd) = config.withLock { ($0.apertureStart, $0.apertureEnd) }
        domain.setGeometry(DomainGeometry(apertureStart: IOVA(apertureStart), apertureEnd: IOVA(apertureEnd), forceAperture: true))
    }

    public func attachDevice(_ device: IOMMUDeviceInfo, to domain: IOMMUDomain) throws(IOMMUError) {
        if config.withLock({ $0.failAttach.contains(device.name) }) { throw IOMMUError(.noSuchDevice, device: device.id) }
        log(.attach(device.name, domain.serial))
    }

    public func detachDevice(_ device: IOMMUDeviceInfo, from domain: IOMMUDomain) {
        log(.detach(device.name, domain.serial))
    }

    public func reservedRegions(for device: IOMMUDeviceInfo) -> [ReservedRegion] {
        config.withLock { $0.regions[device.name] ?? [] }
    }

    public func capable(_ capability: IOMMUCapability, device: IOMMUDeviceInfo) -> Bool {
        config.withLock { $0.capabilities.contains(capability) }
    }
}

/// A page table as a dictionary from IOVA to (paddr, size, prot); records every driver call.
public final class FakeDomainOps: IOMMUDomainOps {
    public struct Mapping: Equatable, Sendable {
        public var paddr: UInt64
        public var size: UInt64
        public var prot: IOMMUProt
        public init(paddr: UInt64, size: UInt64, prot: IOMMUProt) {
            self.paddr = paddr
            self.size = size
            self.prot = prot
        }
    }

    public struct Call: Equatable, Sendable {
        public var iova: UInt64
        public var pageSize: UInt64
        public var count: UInt64
        public init(iova: UInt64, pageSize: UInt64, count: UInt64) {
            self.iova = iova
            self.pageSize = pageSize
            self.count = count
        }
    }

    public struct State: Sendable {
        public var mappings: [UInt64: Mapping] = [:]
        public var mapCalls: [Call] = []
        public var unmapCalls: [Call] = []
        public var syncs = 0
        public var flushAlls = 0
    }

    public unowned let driver: FakeIOMMUDriver
    public let failSyncMap: Bool
    public let state = IOMMUMutex(State())
    public let freed = Atomic<Bool>(false)

    public init(driver: FakeIOMMUDriver, failSyncMap: Bool) {
        self.driver = driver
        self.failSyncMap = failSyncMap
    }

    public var mappings: [UInt64: Mapping] { state.withLock { $0.mappings } }
    public var mapCalls: [Call] { state.withLock { $0.mapCalls } }
    public var unmapCalls: [Call] { state.withLock { $0.unmapCalls } }

    private static func containing(_ mappings: [UInt64: Mapping], _ address: UInt64) -> UInt64? {
        mappings.first { address >= $0.key && address - $0.key < $0.value.size }?.key
    }

    public func mapPages(
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

    public func unmapPages(iova: IOVA, pageSize: PageSize, count: UInt64, gather: inout IOTLBGather) -> UInt64 {
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

    public func iovaToPhys(_ iova: IOVA) -> PhysAddr? {
        state.withLock { s in
            guard let key = Self.containing(s.mappings, iova.rawValue) else { return nil }
            return PhysAddr(s.mappings[key]!.paddr + (iova.rawValue - key))
        }
    }

    public func flushIOTLBAll() { state.withLock { $0.flushAlls += 1 } }
    public func iotlbSync(_ gather: inout IOTLBGather) { state.withLock { $0.syncs += 1 } }

    public func iotlbSyncMap(iova: IOVA, length: UInt64) throws(IOMMUError) {
        if failSyncMap { throw IOMMUError(.notPermitted, address: iova.rawValue) }
    }

    public func free() {
        let (exchanged, _) = freed.compareExchange(expected: false, desired: true, ordering: .relaxed)
        precondition(exchanged, "domain freed twice")
        driver.domainsFreed.wrappingAdd(1, ordering: .relaxed)
    }
}

extension IOMMUDomain {
    /// The fake page table behind a domain allocated by `FakeIOMMUDriver`.
    public var fake: FakeDomainOps { ops as! FakeDomainOps }
}
