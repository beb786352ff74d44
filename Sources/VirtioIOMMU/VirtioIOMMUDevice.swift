import IOMMUBase
import IOMMUCore
import IOPageTable
import PhysicalMemory
import Synchronization

/// A virtio domain: an IOMMUKit domain (a real page table, or identity for a bypass domain)
/// plus the spec's record of mappings.
final class VirtioDomainRecord: @unchecked Sendable {
    // @unchecked: mutated only under the device's lock.
    let id: UInt32
    let isBypass: Bool
    let spec: VirtioTableSpec?
    let iommuDomain: IOMMUDomain
    let ops: VirtioDomainOps?
    let walker: HardwareWalker?
    var endpoints: [UInt32] = []
    var mappings = VirtioMappingList()
    /// The last IOVA the domain's table covers (DART tables cover less than the input range).
    var lastIOVA: UInt64 = .max

    init(id: UInt32, isBypass: Bool, spec: VirtioTableSpec?, iommuDomain: IOMMUDomain, ops: VirtioDomainOps?,
         walker: HardwareWalker?) {
        self.id = id
        self.isBypass = isBypass
        self.spec = spec
        self.iommuDomain = iommuDomain
        self.ops = ops
        self.walker = walker
    }
}

struct VirtioEndpointRecord: Sendable {
    let id: UInt32
    let device: DeviceID
    let name: String
    let table: VirtioTableSpec
    /// RESV_MEM regions, sorted by start, non-overlapping, at most one MSI.
    let regions: [VirtioReservedRegion]
    var domain: UInt32?
}

struct VirtioEventBuffer: Sendable {
    let id: UInt64
    let length: Int
}

struct VirtioDeviceState: @unchecked Sendable {
    // @unchecked: holds class references only reached under the device's lock.
    var negotiated: VirtioIOMMUFeatures = []
    var featuresAccepted = false
    var bypass: UInt8
    var endpoints: [UInt32: VirtioEndpointRecord] = [:]
    var domains: [UInt32: VirtioDomainRecord] = [:]
    var consumers: [any VirtioMappingConsumer] = []
    var eventBuffers: [VirtioEventBuffer] = []
    var usedEvents: [VirtioUsedBuffer] = []
    var nextBufferID: UInt64 = 1
    var pendingRequests: [(id: UInt64, chain: VirtioDescriptorChain)] = []
    var stats = VirtioIOMMUStatistics()
}

/// Counters a VMM (and `iommu inspect`) can read.
public struct VirtioIOMMUStatistics: Hashable, Sendable {
    /// Requests answered, by status (index = status code), and those left unwritten (used length 0).
    public var requestsByStatus = [UInt64](repeating: 0, count: 9)
    public var requestsUnanswered: UInt64 = 0
    /// Fault records written to the event queue.
    public var eventsDelivered: UInt64 = 0
    /// Fault records dropped (no buffer, or a buffer too small).
    public var eventsDropped: UInt64 = 0
}

/// A buffer the device returned on a queue: its bytes and the used length.
public struct VirtioUsedBuffer: Hashable, Sendable {
    public var id: UInt64
    public var bytes: [UInt8]
    public var usedLength: UInt32
}

/// The virtio-iommu device a VMM embeds, strictly to the OASIS virtio-iommu chapter.
///
/// The driver side is bytes: configuration-space reads and writes, requests as device-readable
/// plus device-writable byte buffers (`handleRequest`), event buffers filled with fault records.
/// The VMM side: endpoints (`addEndpoint`), mapping consumers (`addMappingConsumer`), endpoint
/// DMA that moves real bytes in `PhysicalMemory` through the hardware walk of the domain's page
/// table (`endpointDMARead`/`endpointDMAWrite`), and a snapshot for inspection.
///
/// Backing: each virtio domain is an `IOMMUDomain` of the "virtio-iommu" instance of `core`,
/// with its own `AnyIOPageTable` (format and granule per domain); each endpoint is a core device
/// whose group the device claims for DMA ownership. MAP and UNMAP go through
/// `IOMMUDomain.map`/`unmap` (page-size splitting, trace) into the table; translation reads the
/// descriptors back with an independent `HardwareWalker`.
///
/// Thread safety: one lock serialises requests, config accesses and DMA translation (requests
/// are processed in ring order, as the reference recommends).
public final class VirtioIOMMUDevice: Sendable {
    /// Virtio device ID of an IOMMU.
    public static let deviceID: UInt16 = 23
    /// Modern PCI device ID (0x1040 + 23).
    public static let pciDeviceID: UInt16 = 0x1057
    /// The name of the IOMMU instance in the core.
    public static let instanceName = "virtio-iommu"

    public let configuration: VirtioIOMMUConfiguration
    public let core: IOMMUCore
    public let memory: PhysicalMemory
    public let warnings: any WarningSink
    let driver: VirtioIOMMUCoreDriver
    let owner = DMAOwner(0x7669_7274_696F)  // "virtio"
    let state: IOMMUMutex<VirtioDeviceState>

    /// Creates the device and registers its IOMMU instance in `core`.
    ///
    /// - Parameters:
    ///   - memory: guest physical memory, where endpoint DMA lands and page tables live.
    ///   - frames: where the domains' table pages come from.
    ///   - core: the IOMMU core to register in (a fresh one by default).
    /// - Throws: `invalidConfiguration` (EINVAL) for `page_size_mask` 0 (device MUST NOT), a
    ///   granule below 4 KiB or below the default table granule, an empty or too wide input range
    ///   (≥ 2^48), an empty domain range, legacy BYPASS offered together with BYPASS_CONFIG, or a
    ///   default table the page-table layer refuses; the core's error when registering.
    public init(
        configuration: VirtioIOMMUConfiguration = VirtioIOMMUConfiguration(),
        memory: PhysicalMemory, frames: FrameAllocator, core: IOMMUCore? = nil,
        warnings: any WarningSink = DiscardingWarningSink()
    ) throws(IOMMUError) {
        let c = configuration
        guard c.pageSizeMask != 0, c.granule >= 4096, c.granule >= c.defaultTable.granule.bytes,
            c.inputFirst <= c.inputLast, c.inputLast < (1 << 48), c.domainFirst <= c.domainLast,
            !c.offeredFeatures.isSuperset(of: [.legacyBypass, .bypassConfig])
        else { throw IOMMUError(.invalidConfiguration, address: c.pageSizeMask) }
        // Validate the default table once (a refused format/granule fails here, not at ATTACH).
        _ = try AnyIOPageTable(
            kind: c.defaultTable.kind, granule: c.defaultTable.granule,
            configuration: c.pageTableConfiguration(for: c.defaultTable), frames: frames)
        self.configuration = configuration
        self.memory = memory
        self.warnings = warnings
        self.core = core ?? IOMMUCore(warnings: warnings)
        self.driver = VirtioIOMMUCoreDriver(
            frames: frames, warnings: warnings, pageSizes: PageSizeBitmap(rawValue: c.pageSizeMask))
        self.state = IOMMUMutex(VirtioDeviceState(bypass: c.bootBypass ? 1 : 0))
        _ = try self.core.registerIOMMU(name: Self.instanceName, driver: driver)
    }

    // MARK: - Features

    /// The device feature bits.
    public var offeredFeatures: VirtioIOMMUFeatures { configuration.offeredFeatures }

    /// The features both sides agreed on (empty until `negotiate`).
    public var negotiatedFeatures: VirtioIOMMUFeatures { state.withLock { $0.negotiated } }

    /// The driver writes its feature bits and sets FEATURES_OK.
    ///
    /// - Returns: false (FEATURES_OK not accepted, nothing negotiated) if the driver acknowledged a
    ///   bit the device did not offer, or omitted VERSION_1 while the device offers it.
    @discardableResult
    public func negotiate(driverFeatures: VirtioIOMMUFeatures) -> Bool {
        let offered = configuration.offeredFeatures
        let acceptable = offered.isSuperset(of: driverFeatures)
            && (!offered.contains(.version1) || driverFeatures.contains(.version1))
        state.withLock { s in
            s.negotiated = acceptable ? driverFeatures : []
            s.featuresAccepted = acceptable
        }
        return acceptable
    }

    // MARK: - Configuration space

    /// The 40-byte `struct virtio_iommu_config`, little-endian. Fields whose feature is not
    /// offered read as zero.
    public var configSpace: [UInt8] {
        let c = configuration
        let bypass = state.withLock { $0.bypass }
        var bytes = [UInt8](repeating: 0, count: VirtioIOMMUWire.configLength)
        bytes.withUnsafeMutableBytes { b in
            storeLE64(b, 0, c.pageSizeMask)
            if c.offeredFeatures.contains(.inputRange) {
                storeLE64(b, 8, c.inputFirst)
                storeLE64(b, 16, c.inputLast)
            }
            if c.offeredFeatures.contains(.domainRange) {
                storeLE32(b, 24, c.domainFirst)
                storeLE32(b, 28, c.domainLast)
            }
            if c.offeredFeatures.contains(.probe) { storeLE32(b, 32, c.probeSize) }
            if c.offeredFeatures.contains(.bypassConfig) { b[36] = bypass }
        }
        return bytes
    }

    /// Reads `count` configuration bytes at `offset` (bytes past the structure read as zero).
    public func readConfig(offset: Int, count: Int) -> [UInt8] {
        let space = configSpace
        return (0..<max(0, count)).map { i in
            let index = offset + i
            return index >= 0 && index < space.count ? space[index] : 0
        }
    }

    /// The driver writes configuration bytes.
    ///
    /// Only `bypass` (offset 36) is writable, only when BYPASS_CONFIG was negotiated, and only
    /// with 0 or 1. Any other write is ignored with a `virtioConfigWriteIgnored` warning, so
    /// the device never presents a value other than 0 or 1 (E42–E44).
    public func writeConfig(offset: Int, bytes: [UInt8]) {
        for (i, value) in bytes.enumerated() {
            let index = offset + i
            let accepted = state.withLock { s -> Bool in
                guard index == VirtioIOMMUWire.configBypassOffset, s.negotiated.contains(.bypassConfig),
                    value <= 1
                else { return false }
                s.bypass = value
                return true
            }
            if !accepted { warnings.warn(.virtioConfigWriteIgnored(offset: index, value: value)) }
        }
    }

    /// The current `bypass` byte.
    public var bypass: UInt8 { state.withLock { $0.bypass } }

    // MARK: - Reset

    /// Device reset: every endpoint detached, every domain destroyed, negotiated features and
    /// queues cleared; `bypass` keeps its value (spec SHOULD).
    ///
    /// Consumers are told about every mapping that disappears; a consumer failure cannot stop a
    /// reset and becomes a `virtioConsumerUnmapFailed` warning.
    public func reset() {
        state.withLock { s in resetLocked(&s) }
    }

    /// System reset: a device reset that also restores `bypass` to its initial value.
    public func systemReset() {
        state.withLock { s in
            resetLocked(&s)
            s.bypass = configuration.bootBypass ? 1 : 0
        }
    }

    func resetLocked(_ s: inout VirtioDeviceState) {
        for id in s.domains.keys.sorted() {
            let domain = s.domains[id]!
            for mapping in domain.mappings.items {
                for consumer in s.consumers {
                    do { try consumer.applyUnmap(mapping) } catch {
                        warnings.warn(.virtioConsumerUnmapFailed(domain: id, iova: IOVA(mapping.first), errno: error.code.rawValue))
                    }
                }
            }
            for endpoint in domain.endpoints {
                if let record = s.endpoints[endpoint] { core.detachDevice(domain.iommuDomain, from: record.device) }
            }
            domain.endpoints.removeAll()
            destroyDomain(domain)
        }
        s.domains.removeAll()
        for key in s.endpoints.keys { s.endpoints[key]!.domain = nil }
        s.negotiated = []
        s.featuresAccepted = false
        s.eventBuffers.removeAll()
        s.pendingRequests.removeAll()
    }

    // MARK: - Endpoints

    /// Adds an endpoint: registers its IOMMUKit device behind the "virtio-iommu" instance, claims
    /// its group for the device, and computes its RESV_MEM regions (MSI window, host-unusable
    /// IOVA ranges, the endpoint's and the firmware's reserved regions).
    ///
    /// - Returns: the core's ID of the device.
    /// - Throws: `alreadyExists` (EEXIST) for a duplicate endpoint ID; `outOfMemory` (ENOMEM) past
    ///   `limits.maxEndpoints`; `invalidConfiguration` (EINVAL) for a table spec whose granule
    ///   does not divide the device granule or that the page-table layer refuses, more than one
    ///   MSI window, or more RESV_MEM properties than fit in `probe_size` (E37: never truncated);
    ///   the core's errors.
    @discardableResult
    public func addEndpoint(_ endpointID: UInt32, _ endpoint: VirtioEndpointConfiguration = VirtioEndpointConfiguration())
        throws(IOMMUError) -> DeviceID
    {
        let c = configuration
        let spec = endpoint.table ?? c.defaultTable
        guard spec.granule.bytes <= c.granule else {
            throw IOMMUError(.invalidConfiguration, address: UInt64(endpointID), length: spec.granule.bytes)
        }
        if spec != c.defaultTable {
            _ = try AnyIOPageTable(
                kind: spec.kind, granule: spec.granule,
                configuration: c.pageTableConfiguration(for: spec), frames: driver.frames)
        }
        return try state.withLock { s throws(IOMMUError) -> DeviceID in
            guard s.endpoints[endpointID] == nil else { throw IOMMUError(.alreadyExists, address: UInt64(endpointID)) }
            guard s.endpoints.count < c.limits.maxEndpoints else { throw IOMMUError(.outOfMemory, address: UInt64(endpointID)) }
            var description = endpoint.device ?? .pci(
                PCIAddress(segment: UInt16(truncatingIfNeeded: endpointID >> 16), bus: UInt8(truncatingIfNeeded: endpointID >> 8),
                           device: UInt8(truncatingIfNeeded: endpointID >> 3) & 0x1F, function: UInt8(truncatingIfNeeded: endpointID) & 7),
                iommu: nil)
            description.iommu = FirmwareIOMMUSpec(iommu: Self.instanceName, streamIDs: [StreamID(endpointID)])
            let device = try core.addDevice(description)
            var driverRegions: [ReservedRegion] = endpoint.reservedRegions
            if let msi = c.msiWindow {
                driverRegions.append(ReservedRegion(
                    start: msi.lowerBound, length: msi.upperBound &- msi.lowerBound &+ 1, prot: [.write, .noExec, .mmio], type: .msi))
            }
            for usable in [c.hostUsableIOVARanges, endpoint.hostUsableIOVARanges] {
                guard let usable else { continue }
                for hole in Self.complement(of: usable, within: c.inputFirst...c.inputLast) {
                    driverRegions.append(ReservedRegion(
                        start: hole.lowerBound, length: hole.upperBound &- hole.lowerBound &+ 1, prot: [], type: .reserved))
                }
            }
            driver.regions.withLock { $0[device] = driverRegions }
            let regions: [VirtioReservedRegion]
            do throws(IOMMUError) {
                regions = try Self.virtioRegions(core.reservedRegions(of: device))
                if c.offeredFeatures.contains(.probe) && regions.count * VirtioIOMMUWire.resvMemPropertyLength > Int(c.probeSize) {
                    throw IOMMUError(.invalidConfiguration, address: UInt64(endpointID), length: UInt64(regions.count))
                }
                try core.claimDMAOwnership(of: device, owner: owner)
            } catch {
                driver.regions.withLock { $0[device] = nil }
                try? core.removeDevice(device)
                throw error
            }
            let name = core.deviceInfo(device)?.name ?? ""
            s.endpoints[endpointID] = VirtioEndpointRecord(
                id: endpointID, device: device, name: name, table: spec, regions: regions, domain: nil)
            return device
        }
    }

    /// The RESV_MEM regions PROBE reports for an endpoint (nil for an unknown endpoint).
    public func reservedRegions(ofEndpoint endpointID: UInt32) -> [VirtioReservedRegion]? {
        state.withLock { $0.endpoints[endpointID]?.regions }
    }

    /// The core device behind an endpoint.
    public func device(ofEndpoint endpointID: UInt32) -> DeviceID? {
        state.withLock { $0.endpoints[endpointID]?.device }
    }

    /// Turns core reserved regions into RESV_MEM regions: MSI kinds (hardware MSI only; the
    /// software MSI window is the guest's business) become the single MSI region, everything
    /// else RESERVED; RESERVED regions are merged and cut around the MSI window so no two
    /// properties overlap.
    static func virtioRegions(_ regions: [ReservedRegion]) throws(IOMMUError) -> [VirtioReservedRegion] {
        var msi: ClosedRange<UInt64>?
        var reserved: [ClosedRange<UInt64>] = []
        for region in regions where region.length != 0 {
            let range = region.start...region.last
            switch region.type {
            case .swMSI: continue
            case .msi:
                if let existing = msi, existing != range {
                    guard existing.overlaps(range) || existing.upperBound &+ 1 == range.lowerBound
                        || range.upperBound &+ 1 == existing.lowerBound
                    else { throw IOMMUError(.invalidConfiguration, address: region.start) }
                    msi = min(existing.lowerBound, range.lowerBound)...max(existing.upperBound, range.upperBound)
                } else {
                    msi = range
                }
            default: reserved.append(range)
            }
        }
        reserved.sort { $0.lowerBound < $1.lowerBound }
        var merged: [ClosedRange<UInt64>] = []
        for range in reserved {
            if let last = merged.last, range.lowerBound <= last.upperBound || range.lowerBound == last.upperBound &+ 1 {
                merged[merged.count - 1] = last.lowerBound...max(last.upperBound, range.upperBound)
            } else {
                merged.append(range)
            }
        }
        var out: [VirtioReservedRegion] = []
        for range in merged {
            guard let window = msi, window.overlaps(range) else {
                out.append(VirtioReservedRegion(subtype: VirtioIOMMUWire.resvMemReserved, first: range.lowerBound, last: range.upperBound))
                continue
            }
            if range.lowerBound < window.lowerBound {
                out.append(VirtioReservedRegion(subtype: VirtioIOMMUWire.resvMemReserved, first: range.lowerBound, last: window.lowerBound - 1))
            }
            if range.upperBound > window.upperBound {
                out.append(VirtioReservedRegion(subtype: VirtioIOMMUWire.resvMemReserved, first: window.upperBound + 1, last: range.upperBound))
            }
        }
        if let window = msi {
            out.append(VirtioReservedRegion(subtype: VirtioIOMMUWire.resvMemMSI, first: window.lowerBound, last: window.upperBound))
        }
        out.sort { $0.first < $1.first }
        return out
    }

    /// The parts of `bounds` not covered by `usable`.
    static func complement(of usable: [ClosedRange<UInt64>], within bounds: ClosedRange<UInt64>) -> [ClosedRange<UInt64>] {
        var holes: [ClosedRange<UInt64>] = []
        var cursor = bounds.lowerBound
        var done = false
        for range in usable.sorted(by: { $0.lowerBound < $1.lowerBound }) {
            guard !done, range.upperBound >= cursor else { continue }
            if range.lowerBound > bounds.upperBound { break }
            if range.lowerBound > cursor { holes.append(cursor...(range.lowerBound - 1)) }
            if range.upperBound >= bounds.upperBound { done = true } else { cursor = range.upperBound + 1 }
        }
        if !done { holes.append(cursor...bounds.upperBound) }
        return holes
    }

    // MARK: - Mapping consumers

    /// Registers an external consumer and replays every existing mapping into it.
    ///
    /// - Throws: the consumer's error from the replay; the mappings it had applied are unmapped
    ///   again and it is not registered.
    public func addMappingConsumer(_ consumer: any VirtioMappingConsumer) throws(IOMMUError) {
        try state.withLock { s throws(IOMMUError) in
            var applied: [VirtioMapping] = []
            for id in s.domains.keys.sorted() {
                for mapping in s.domains[id]!.mappings.items {
                    do throws(IOMMUError) { try consumer.applyMap(mapping) } catch {
                        for done in applied.reversed() { try? consumer.applyUnmap(done) }
                        throw error
                    }
                    applied.append(mapping)
                }
            }
            s.consumers.append(consumer)
        }
    }

    /// Unregisters a consumer (its mappings are left to it).
    public func removeMappingConsumer(_ consumer: any VirtioMappingConsumer) {
        state.withLock { s in s.consumers.removeAll { $0 === consumer } }
    }

    // MARK: - Domains (internal)

    /// Creates the IOMMUKit domain behind a new virtio domain.
    func makeDomain(id: UInt32, bypass: Bool, for endpoint: VirtioEndpointRecord) throws(IOMMUError) -> VirtioDomainRecord {
        if bypass {
            let domain = try core.allocateDomain(type: .identity, for: endpoint.device)
            return VirtioDomainRecord(id: id, isBypass: true, spec: nil, iommuDomain: domain, ops: nil, walker: nil)
        }
        let tableConfiguration = configuration.pageTableConfiguration(for: endpoint.table)
        driver.pending.withLock { $0 = (endpoint.table, tableConfiguration) }
        defer { driver.pending.withLock { $0 = nil } }
        let domain = try core.allocateDomain(type: .unmanaged, for: endpoint.device)
        guard let ops = domain.ops as? VirtioDomainOps else {
            try? core.freeDomain(domain)
            throw IOMMUError(.invalidConfiguration)
        }
        let walker: HardwareWalker
        do {
            walker = try HardwareWalker(
                memory: memory, registers: ops.table.registers, isDART2: ops.table.kind == .appleDART2,
                dartOutputBits: tableConfiguration.oas)
        } catch {
            try? core.freeDomain(domain)
            throw error
        }
        let record = VirtioDomainRecord(id: id, isBypass: false, spec: endpoint.table, iommuDomain: domain, ops: ops, walker: walker)
        record.lastIOVA = (UInt64(1) << UInt64(tableConfiguration.ias)) &- 1
        return record
    }

    /// Frees a domain nobody is attached to any more (the table pages go back to the allocator).
    func destroyDomain(_ domain: VirtioDomainRecord) {
        try? core.freeDomain(domain.iommuDomain)
    }

    /// Unmaps every mapping of `domain` through the consumers, all or nothing.
    func unmapConsumers(_ mappings: ArraySlice<VirtioMapping>, _ consumers: [any VirtioMappingConsumer]) -> IOMMUError? {
        for (index, mapping) in zip(mappings.indices, mappings) {
            for (c, consumer) in consumers.enumerated() {
                do { try consumer.applyUnmap(mapping) } catch {
                    for undo in consumers[..<c].reversed() { try? undo.applyMap(mapping) }
                    for earlier in mappings[..<index].reversed() {
                        for undo in consumers.reversed() { try? undo.applyMap(earlier) }
                    }
                    return error
                }
            }
        }
        return nil
    }
}
