import Synchronization
import IOMMUBase

/// Platform parameters and boot options of the IOMMU core.
public struct IOMMUCoreConfiguration: Sendable {
    /// The CPU page size (4K, 16K or 64K): the unit of isolation the attach-time page-size check
    /// compares IOMMU pages against. Linux: `PAGE_SIZE`.
    public var cpuPageSize: PageSize
    /// The global default domain type: `.dma` (strict, Linux `iommu.strict=1`), `.dmaFQ` (lazy),
    /// or `.identity` (`iommu.passthrough=1`). Linux: `iommu_def_domain_type`.
    public var defaultDomainType: IOMMUDomainType
    /// Buses registered at creation: name and kind. Default: "pci" and "platform".
    public var buses: [BusRegistration]

    public struct BusRegistration: Hashable, Sendable {
        public var name: String
        public var kind: BusKind
        public init(name: String, kind: BusKind) {
            self.name = name
            self.kind = kind
        }
    }

    /// Like `init`, but reports bad values (from a platform file, say) instead of trapping.
    /// - Throws: `invalidConfiguration` (EINVAL) for a CPU page other than 4K/16K/64K or a
    ///   global default other than DMA, DMA-FQ or identity.
    public static func validated(
        cpuPageSize: PageSize, defaultDomainType: IOMMUDomainType
    ) throws(IOMMUError) -> IOMMUCoreConfiguration {
        guard [PageSize.size4K, .size16K, .size64K].contains(cpuPageSize) else {
            throw IOMMUError(.invalidConfiguration, length: cpuPageSize.bytes)
        }
        guard [IOMMUDomainType.dma, .dmaFQ, .identity].contains(defaultDomainType) else {
            throw IOMMUError(.invalidConfiguration, address: UInt64(defaultDomainType.rawValue))
        }
        return IOMMUCoreConfiguration(cpuPageSize: cpuPageSize, defaultDomainType: defaultDomainType)
    }

    /// - Precondition: `cpuPageSize` is 4K, 16K or 64K; `defaultDomainType` is DMA, DMA-FQ or
    ///   identity (use `validated` for untrusted input).
    public init(
        cpuPageSize: PageSize = .size4K, defaultDomainType: IOMMUDomainType = .dma,
        buses: [BusRegistration] = [.init(name: "pci", kind: .pci), .init(name: "platform", kind: .platform)]
    ) {
        precondition([PageSize.size4K, .size16K, .size64K].contains(cpuPageSize), "CPU pages are 4K, 16K or 64K")
        precondition(
            [IOMMUDomainType.dma, .dmaFQ, .identity].contains(defaultDomainType),
            "the global default domain type is DMA, DMA-FQ or identity")
        self.cpuPageSize = cpuPageSize
        self.defaultDomainType = defaultDomainType
        self.buses = buses
    }
}

/// A snapshot of a group, for inspection (sysfs, VFIO, tests).
public struct IOMMUGroupInfo: Sendable {
    /// The group number (sysfs `/sys/kernel/iommu_groups/<id>`).
    public var id: Int
    /// Linux's reference count: one per member device plus one per outstanding
    /// `IOMMUGroupReference`.
    public var referenceCount: Int
    /// Member devices in the order they joined.
    public var devices: [DeviceID]
    /// The domain the group is attached to. Linux: `group->domain`.
    public var domain: IOMMUDomain?
    /// Linux: `group->default_domain`.
    public var defaultDomain: IOMMUDomain?
    /// Linux: `group->blocking_domain` (allocated on first DMA-ownership claim).
    public var blockingDomain: IOMMUDomain?
    /// Linux: `group->owner`.
    public var owner: DMAOwner?
    /// Linux: `group->owner_cnt` (bound DMA-API drivers, or user-space claims).
    public var ownerCount: Int

    /// The sysfs `type` attribute: the default domain's type name, or "unknown".
    public var typeText: String { defaultDomain?.type.sysfsName ?? "unknown" }
}

/// The IOMMU core: buses, devices, IOMMU instances, groups, domains; probe and probe deferral;
/// attach, detach and DMA ownership; reserved regions; fault delivery; trace events.
///
/// Linux: `drivers/iommu/iommu.c`.
///
/// **Locking.** One registry `Mutex` guards devices, instances and groups (Linux: the group
/// mutexes and `iommu_probe_device_lock`). Driver callbacks run with it held and must not call
/// back into the registry API. `IOMMUDomain.map`/`unmap` take no registry lock. Lock order:
/// registry, then a domain's own small locks, then the driver's locks.
public final class IOMMUCore: Sendable {
    public let configuration: IOMMUCoreConfiguration
    /// Where misuse and oddities go (see the `IOMMU core` section of `IOMMUWarning`).
    public let warnings: any WarningSink
    /// Where `iommu` trace events go.
    public let trace: any IOMMUTraceSink

    let state: IOMMUMutex<RegistryState>
    private let domainsAllocated = Atomic<Int>(0)
    private let domainsFreed = Atomic<Int>(0)

    public init(
        configuration: IOMMUCoreConfiguration = IOMMUCoreConfiguration(),
        warnings: any WarningSink = DiscardingWarningSink(),
        trace: any IOMMUTraceSink = DiscardingTraceSink()
    ) {
        self.configuration = configuration
        self.warnings = warnings
        self.trace = trace
        var registry = RegistryState()
        for bus in configuration.buses {
            registry.buses[bus.name] = BusRecord(name: bus.name, kind: bus.kind)
        }
        self.state = IOMMUMutex(registry)
    }

    // MARK: - Buses and IOMMU instances

    /// Registers a bus devices can be added to.
    /// - Throws: `alreadyExists` (EEXIST) if a bus of that name exists.
    public func registerBus(name: String, kind: BusKind) throws(IOMMUError) {
        try state.withLock { s throws(IOMMUError) in
            guard s.buses[name] == nil else { throw IOMMUError(.alreadyExists) }
            s.buses[name] = BusRecord(name: name, kind: kind)
        }
    }

    /// Registers an IOMMU instance under its firmware name, then probes every device waiting for
    /// it (and retries every other deferred probe), as the driver core does when a driver binds.
    ///
    /// Linux: `iommu_device_register()` + `bus_iommu_probe()` / deferred-probe retry.
    /// - Throws: `alreadyExists` (EEXIST) if an instance of that name is registered.
    @discardableResult
    public func registerIOMMU(name: String, driver: any IOMMUDriver) throws(IOMMUError) -> IOMMUInstanceID {
        try state.withLock { s throws(IOMMUError) in
            guard s.instanceByName[name] == nil else { throw IOMMUError(.alreadyExists) }
            let id = IOMMUInstanceID(rawValue: s.nextInstanceID)
            s.nextInstanceID &+= 1  // UInt32: 4 billion registrations before a wrap
            s.instances[id] = InstanceRecord(id: id, name: name, driver: driver)
            s.instanceByName[name] = id
            probeBatch(&s, s.deviceOrder.filter { s.devices[$0]?.probeState == .deferred })
            return id
        }
    }

    /// Retries every deferred probe (e.g. after a driver's EPROBE_DEFER condition cleared).
    /// Linux: `driver_deferred_probe_trigger()`.
    public func retryDeferredProbes() {
        state.withLock { s in
            probeBatch(&s, s.deviceOrder.filter { s.devices[$0]?.probeState == .deferred })
        }
    }

    // MARK: - Devices

    /// Adds a device to its bus and probes it for its IOMMU (Linux: `device_add` +
    /// `BUS_NOTIFY_ADD_DEVICE` → `iommu_probe_device`). A device whose IOMMU is not registered
    /// yet is *deferred*: it gets no group and its DMA is blocked until the instance registers.
    /// A probe failure does not fail the add (as in Linux); see `probeState(of:)`.
    ///
    /// - Returns: the device's stable ID.
    /// - Throws: `noSuchDevice` (ENODEV) for an unknown bus; `alreadyExists` (EEXIST) for a
    ///   duplicate name; `invalidArgument` for a nameless non-PCI device.
    @discardableResult
    public func addDevice(_ description: DeviceDescription) throws(IOMMUError) -> DeviceID {
        try state.withLock { s throws(IOMMUError) in
            guard let bus = s.buses[description.bus] else { throw IOMMUError(.noSuchDevice) }
            guard let name = description.name ?? description.pci?.address.description else {
                throw IOMMUError(.invalidArgument)
            }
            guard s.deviceByName[name] == nil else { throw IOMMUError(.alreadyExists) }
            let id = DeviceID(s.nextDeviceID)
            s.nextDeviceID &+= 1  // IDs are never reused
            let info = IOMMUDeviceInfo(
                id: id, name: name, bus: bus.name, busKind: bus.kind, iommu: description.iommu,
                pci: description.pci, firmwareReservedRegions: description.firmwareReservedRegions)
            s.devices[id] = DeviceRecord(info: info)
            s.deviceByName[name] = id
            s.deviceOrder.append(id)
            s.buses[bus.name]?.devices.append(id)
            probeBatch(&s, [id])
            return id
        }
    }

    /// Removes a device: unbinds its driver, releases it from its IOMMU driver and its group
    /// (the group dies with its last reference). Linux: `BUS_NOTIFY_REMOVED_DEVICE` →
    /// `iommu_release_device()`.
    /// - Throws: `noSuchDevice` (ENODEV).
    public func removeDevice(_ id: DeviceID) throws(IOMMUError) {
        try state.withLock { s throws(IOMMUError) in
            guard let record = s.devices[id] else { throw IOMMUError(.noSuchDevice, device: id) }
            if record.boundDriver != nil { unbindLocked(&s, id) }
            if record.probeState == .probed, let serial = record.groupSerial {
                let driver = s.instances[record.instance!]!.driver
                driver.releaseDevice(record.info)
                removeFromGroup(&s, id, serial: serial, emitTrace: true)
            }
            s.devices[id] = nil
            s.deviceByName[record.info.name] = nil
            s.deviceOrder.removeAll { $0 == id }
            s.buses[record.info.bus]?.devices.removeAll { $0 == id }
        }
    }

    /// Binds a (device) driver. A DMA-API driver (`driverManagedDMA == false`) becomes a user of
    /// the group's default domain, which stops user-space DMA ownership claims (EPERM).
    ///
    /// Linux: `really_probe` → `dma_configure` → `iommu_device_use_default_domain()`.
    /// - Throws: `noSuchDevice`; `probeDeferred` (EPROBE_DEFER) while the device's IOMMU probe
    ///   is deferred (so no driver can start DMA before translation is set up); `busy` (EBUSY)
    ///   if a driver is bound, or the group is owned / not on its default domain.
    public func bindDriver(_ id: DeviceID, name: String, driverManagedDMA: Bool = false) throws(IOMMUError) {
        try state.withLock { s throws(IOMMUError) in
            guard let record = s.devices[id] else { throw IOMMUError(.noSuchDevice, device: id) }
            guard record.boundDriver == nil else { throw IOMMUError(.busy, device: id) }
            if record.probeState == .deferred { throw IOMMUError(.probeDeferred, device: id) }
            var usesDefault = false
            if !driverManagedDMA, let serial = record.groupSerial, let group = s.groups[serial] {
                if group.ownerCount > 0 && (group.domain !== group.defaultDomain || group.owner != nil) {
                    throw IOMMUError(.busy, device: id)
                }
                s.groups[serial]!.ownerCount += 1
                usesDefault = true
            }
            s.devices[id]!.boundDriver = name
            s.devices[id]!.usesDefaultDomain = usesDefault
        }
    }

    /// Unbinds the device's driver. The device stays in its group and attached to its domain —
    /// never falling back to bypass — so group numbers and isolation survive unbind/rebind.
    ///
    /// Linux: `iommu_device_unuse_default_domain()`.
    public func unbindDriver(_ id: DeviceID) {
        state.withLock { s in unbindLocked(&s, id) }
    }

    private func unbindLocked(_ s: inout RegistryState, _ id: DeviceID) {
        guard let record = s.devices[id], record.boundDriver != nil else {
            warnings.warn(.unbindOfUnboundDevice(device: id))
            return
        }
        if record.usesDefaultDomain, let serial = record.groupSerial {
            if s.groups[serial]!.ownerCount > 0 {
                s.groups[serial]!.ownerCount -= 1
            } else {
                warnings.warn(.unbalancedDMAOwnershipRelease(group: s.groups[serial]!.id))
            }
        }
        s.devices[id]!.boundDriver = nil
        s.devices[id]!.usesDefaultDomain = false
    }

    // MARK: - Queries

    /// The device's place in the probe state machine; `nil` for an unknown device.
    public func probeState(of id: DeviceID) -> DeviceProbeState? {
        state.withLock { $0.devices[id]?.probeState }
    }

    /// What the IOMMU driver sees of a device.
    public func deviceInfo(_ id: DeviceID) -> IOMMUDeviceInfo? {
        state.withLock { $0.devices[id]?.info }
    }

    /// The device with this name.
    public func device(named name: String) -> DeviceID? {
        state.withLock { $0.deviceByName[name] }
    }

    /// The devices on a bus, in the order they were added.
    public func devices(onBus bus: String) -> [DeviceID] {
        state.withLock { $0.buses[bus]?.devices ?? [] }
    }

    /// The name of the driver bound to the device, if any.
    public func boundDriver(of id: DeviceID) -> String? {
        state.withLock { $0.devices[id]?.boundDriver }
    }

    /// The device (probed or not) that firmware places behind IOMMU instance `iommu` with stream
    /// ID `streamID`; what a hardware model uses to find the device of a transaction.
    /// - Complexity: O(devices).
    public func device(onIOMMU iommu: String, streamID: StreamID) -> DeviceID? {
        state.withLock { s in
            s.deviceOrder.first { id in
                guard let spec = s.devices[id]?.info.iommu else { return false }
                return spec.iommu == iommu && spec.streamIDs.contains(streamID)
            }
        }
    }

    /// The device firmware places behind `iommu` with `streamID`, and how its DMA is handled
    /// right now; `nil` for a stream no device description names (the hardware's own policy for
    /// unknown streams applies: fault or bypass).
    public func dmaPath(onIOMMU iommu: String, streamID: StreamID) -> (device: DeviceID, path: DMAPath)? {
        state.withLock { s in
            let found = s.deviceOrder.first { id in
                guard let spec = s.devices[id]?.info.iommu else { return false }
                return spec.iommu == iommu && spec.streamIDs.contains(streamID)
            }
            guard let found else { return nil }
            return (found, dmaPathLocked(&s, found))
        }
    }

    /// How the device's DMA is handled right now: not behind an IOMMU, not probed (deferred or
    /// failed: must fault), blocked, identity or translated through a domain.
    ///
    /// The hardware layer asks this (or keeps its stream table in step with attach calls) to
    /// decide what a transaction from the device does. Takes the registry lock: call it without
    /// holding any lock your `IOMMUDriver` callbacks take (they run under the registry lock).
    public func dmaPath(for id: DeviceID) -> DMAPath {
        state.withLock { s in dmaPathLocked(&s, id) }
    }

    func dmaPathLocked(_ s: inout RegistryState, _ id: DeviceID) -> DMAPath {
        guard let record = s.devices[id] else { return .notProbed }
        switch record.probeState {
        case .noIOMMU: return .noIOMMU
        case .deferred, .probeFailed: return .notProbed
        case .probed:
            guard let domain = record.attached else { return .blocked(nil) }
            if let serial = record.groupSerial, s.groups[serial]?.blockingDomain === domain {
                return .blocked(domain)
            }
            if domain.type == .blocked { return .blocked(domain) }
            if domain.type == .identity { return .identity(domain) }
            return .translated(domain)
        }
    }

    /// Whether the IOMMU the device is probed behind has a capability; false for a device that is
    /// not probed. Linux: `device_iommu_capable()`.
    public func capable(_ capability: IOMMUCapability, device id: DeviceID) -> Bool {
        state.withLock { s in
            guard let record = s.devices[id], record.probeState == .probed, let instance = record.instance,
                let driver = s.instances[instance]?.driver
            else { return false }
            return driver.capable(capability, device: record.info)
        }
    }

    /// The domain the device's group is attached to. Linux: `iommu_get_domain_for_dev()`.
    public func domain(for id: DeviceID) -> IOMMUDomain? {
        state.withLock { s in
            s.devices[id]?.groupSerial.flatMap { s.groups[$0]?.domain }
        }
    }

    /// The device's default (DMA-API) domain. Linux: `iommu_get_dma_domain()`.
    public func defaultDomain(for id: DeviceID) -> IOMMUDomain? {
        state.withLock { s in
            s.devices[id]?.groupSerial.flatMap { s.groups[$0]?.defaultDomain }
        }
    }

    /// The ID of the device's group, or `nil` if it has none.
    public func groupID(of id: DeviceID) -> Int? {
        state.withLock { s in
            s.devices[id]?.groupSerial.flatMap { s.groups[$0]?.id }
        }
    }

    /// A snapshot of the group with this ID.
    public func groupInfo(id: Int) -> IOMMUGroupInfo? {
        state.withLock { s in
            s.groups.values.first { $0.id == id }.map { $0.info }
        }
    }

    /// The IDs of all live groups, ascending.
    public var groupIDs: [Int] {
        state.withLock { s in s.groups.values.map(\.id).sorted() }
    }

    /// Domains allocated and not yet freed (default, blocking and user domains).
    public var liveDomainCount: Int {
        domainsAllocated.load(ordering: .relaxed) - domainsFreed.load(ordering: .relaxed)
    }

    // MARK: - Group references

    /// Takes a reference on the device's group. Linux: `iommu_group_get()`.
    public func groupReference(for id: DeviceID) -> IOMMUGroupReference? {
        let found: (UInt64, Int)? = state.withLock { s in
            guard let serial = s.devices[id]?.groupSerial, let group = s.groups[serial] else { return nil }
            s.groups[serial]!.referenceCount += 1
            return (serial, group.id)
        }
        guard let (serial, groupID) = found else { return nil }
        return IOMMUGroupReference(core: self, serial: serial, id: groupID)
    }

    /// Takes a reference on the group with this ID. Linux: `iommu_group_get_by_id()`.
    public func groupReference(id: Int) -> IOMMUGroupReference? {
        let serial: UInt64? = state.withLock { s in
            guard let serial = s.groups.values.first(where: { $0.id == id })?.serial else { return nil }
            s.groups[serial]!.referenceCount += 1
            return serial
        }
        guard let serial else { return nil }
        return IOMMUGroupReference(core: self, serial: serial, id: id)
    }

    func takeGroupReference(serial: UInt64) {
        state.withLock { s in
            precondition(s.groups[serial] != nil, "reference to a released group")
            s.groups[serial]!.referenceCount += 1
        }
    }

    func dropGroupReference(serial: UInt64) {
        state.withLock { s in putGroup(&s, serial) }
    }

    // MARK: - Group lifetime (registry lock held)

    /// Linux: `iommu_group_alloc()`: a new group with the lowest free ID and one reference.
    func allocateGroup(_ s: inout RegistryState, driver: any IOMMUDriver) -> UInt64 {
        var id = 0
        while s.usedGroupIDs.contains(id) { id += 1 }
        s.usedGroupIDs.insert(id)
        let serial = s.nextGroupSerial
        s.nextGroupSerial &+= 1
        s.groups[serial] = GroupRecord(serial: serial, id: id, driver: driver)
        return serial
    }

    /// Linux: `iommu_group_put()`. At zero the group is released: its ID is freed and its
    /// default and blocking domains are freed.
    func putGroup(_ s: inout RegistryState, _ serial: UInt64) {
        guard let group = s.groups[serial] else { preconditionFailure("put of a released group") }
        precondition(group.referenceCount > 0, "group reference count underflow")
        s.groups[serial]!.referenceCount -= 1
        guard group.referenceCount == 1 else { return }
        precondition(group.devices.isEmpty, "group released with devices")
        s.groups[serial] = nil
        s.usedGroupIDs.remove(group.id)
        if let domain = group.defaultDomain { freeDomainObject(domain) }
        if let domain = group.blockingDomain { freeDomainObject(domain) }
    }

    func freeDomainObject(_ domain: IOMMUDomain) {
        if domain.freeOnce() { domainsFreed.wrappingAdd(1, ordering: .relaxed) }
    }

    func makeDomain(type: IOMMUDomainType, driver: any IOMMUDriver, device: IOMMUDeviceInfo?, _ s: inout RegistryState)
        throws(IOMMUError) -> IOMMUDomain
    {
        let ops = try driver.allocateDomain(type: type, for: device)
        let serial = s.nextDomainSerial
        s.nextDomainSerial &+= 1
        domainsAllocated.wrappingAdd(1, ordering: .relaxed)
        return IOMMUDomain(type: type, serial: serial, ops: ops, driver: driver, trace: trace, warnings: warnings)
    }

    /// Removes a device from its group: detaches its bookkeeping and drops its reference.
    /// Linux: `__iommu_group_remove_device()` (no driver detach call).
    func removeFromGroup(_ s: inout RegistryState, _ id: DeviceID, serial: UInt64, emitTrace: Bool) {
        let group = s.groups[serial]!
        let name = s.devices[id]!.info.name
        s.groups[serial]!.devices.removeAll { $0 == id }
        s.devices[id]!.groupSerial = nil
        s.devices[id]!.attached = nil
        if s.groups[serial]!.devices.isEmpty && (group.owner != nil || group.ownerCount > 0) {
            warnings.warn(.groupEmptiedWhileOwned(group: group.id))
        }
        if emitTrace && trace.isEnabled { trace.record(.removeDeviceFromGroup(groupID: group.id, device: name)) }
        putGroup(&s, serial)
    }
}

// MARK: - Group references

/// A counted reference to an IOMMU group. Noncopyable: it is dropped exactly once, when it goes
/// out of scope (or by `put()`), so a reference can neither leak nor be put twice.
///
/// Linux: a `struct iommu_group *` obtained from `iommu_group_get()` and released with
/// `iommu_group_put()`.
public struct IOMMUGroupReference: ~Copyable, Sendable {
    public let core: IOMMUCore
    let serial: UInt64
    /// The group number.
    public let id: Int

    init(core: IOMMUCore, serial: UInt64, id: Int) {
        self.core = core
        self.serial = serial
        self.id = id
    }

    /// Another reference to the same group. Linux: `iommu_group_ref_get()`.
    public func copy() -> IOMMUGroupReference {
        core.takeGroupReference(serial: serial)
        return IOMMUGroupReference(core: core, serial: serial, id: id)
    }

    /// A snapshot of the group.
    public var info: IOMMUGroupInfo {
        core.state.withLock { $0.groups[serial]!.info }
    }

    /// Drops the reference now. Linux: `iommu_group_put()`.
    public consuming func put() {}

    deinit { core.dropGroupReference(serial: serial) }
}

// MARK: - Registry state

struct BusRecord {
    var name: String
    var kind: BusKind
    var devices: [DeviceID] = []
}

struct InstanceRecord {
    var id: IOMMUInstanceID
    var name: String
    var driver: any IOMMUDriver
}

struct DeviceRecord {
    var info: IOMMUDeviceInfo
    var probeState: DeviceProbeState = .deferred
    var instance: IOMMUInstanceID?
    var groupSerial: UInt64?
    /// The domain the driver last attached the device to (nil: none, DMA blocked).
    var attached: IOMMUDomain?
    var boundDriver: String?
    /// The bound driver counts in the group's `ownerCount`.
    var usesDefaultDomain = false
}

struct GroupRecord {
    var serial: UInt64
    var id: Int
    /// Starts at 1: the allocator's reference (Linux: `iommu_group_alloc`).
    var referenceCount = 1
    var devices: [DeviceID] = []
    var driver: any IOMMUDriver
    var domain: IOMMUDomain?
    var defaultDomain: IOMMUDomain?
    var blockingDomain: IOMMUDomain?
    var owner: DMAOwner?
    var ownerCount = 0

    init(serial: UInt64, id: Int, driver: any IOMMUDriver) {
        self.serial = serial
        self.id = id
        self.driver = driver
    }

    var info: IOMMUGroupInfo {
        IOMMUGroupInfo(
            id: id, referenceCount: referenceCount, devices: devices, domain: domain, defaultDomain: defaultDomain,
            blockingDomain: blockingDomain, owner: owner, ownerCount: ownerCount)
    }
}

struct RegistryState {
    var buses: [String: BusRecord] = [:]
    var instances: [IOMMUInstanceID: InstanceRecord] = [:]
    var instanceByName: [String: IOMMUInstanceID] = [:]
    var devices: [DeviceID: DeviceRecord] = [:]
    var deviceByName: [String: DeviceID] = [:]
    /// Devices in the order they were added (probe order).
    var deviceOrder: [DeviceID] = []
    var groups: [UInt64: GroupRecord] = [:]
    var usedGroupIDs: Set<Int> = []
    var nextDeviceID: UInt32 = 1
    var nextInstanceID: UInt32 = 1
    var nextGroupSerial: UInt64 = 1
    var nextDomainSerial: UInt64 = 1
}
