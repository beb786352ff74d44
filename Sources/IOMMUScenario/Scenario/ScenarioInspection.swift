import IOMMUBase
import IOMMUCore
import IOMMUHardware
import PhysicalMemory
import IOPageTable
import IOVAAllocator
import VirtioIOMMU
import DMAMapping

/// The state `iommu inspect` shows, taken from a runner after some steps.
public struct ScenarioInspection: Sendable {
    public struct Group: Sendable {
        public var id: Int
        public var devices: [String]
        public var domain: String
        public var domainType: String
        public var ownedByVFIO: Bool
        /// `/sys/kernel/iommu_groups/N/reserved_regions`.
        public var reservedRegions: String
    }
    public struct Mapping: Sendable {
        public var iova: UInt64
        public var paddr: UInt64
        public var length: UInt64
        public var prot: String
    }
    public struct Domain: Sendable {
        public var serial: UInt64
        public var type: String
        public var iommu: String
        public var pageSizes: String
        public var devices: [String]
        public var mappings: [Mapping]
        /// Live page-table pages and their non-zero descriptors (the `iommu pgtable` view).
        public var tables: [TablePage]
        public var formatKind: String
        public var granuleShift: Int
    }
    /// One live table page and its non-zero descriptors.
    public struct TablePage: Sendable {
        public var address: UInt64
        public var level: Int
        public var entries: [(index: Int, descriptor: UInt64)]
    }
    public struct StreamEntry: Sendable {
        public var index: Int
        public var streamID: UInt32
        public var device: String
        /// S2CR: "translate (cb N)", "bypass", "fault".
        public var s2cr: String
        public var mask: UInt16 = 0
    }
    public struct StreamTable: Sendable {
        public var iommu: String
        public var kind: String
        public var smrCount: Int
        public var contextBanks: Int
        public var contextBanksInUse: Int
        public var unmatchedStream: String
        public var entries: [StreamEntry]
    }
    public struct IOVASpace: Sendable {
        public var domainSerial: UInt64
        public var granule: UInt64
        public var allocated: [(first: UInt64, last: UInt64)]
        public var reserved: [(first: UInt64, last: UInt64)]
    }

    public var step: Int
    public var groups: [Group] = []
    public var domains: [Domain] = []
    public var streamTables: [StreamTable] = []
    public var iovaSpaces: [IOVASpace] = []
    public var vfioMappings: [String] = []
    public var vfioValidRanges: [(UInt64, UInt64)] = []
    /// Flush-queue state per DMA-API domain (mode, queued/freed, flush counters, timer, stale windows).
    public var flushQueues: [String] = []
    /// The virtio-iommu device, when the platform has one.
    public var virtio: VirtioIOMMUState?

    /// `iommu inspect`'s virtio-iommu section.
    public struct VirtioIOMMUState: Sendable {
        public struct Domain: Sendable {
            public var id: UInt32
            /// "bypass" or the table format/granule ("armLPAEStage2/4K").
            public var kind: String
            public var granule: UInt64
            public var coreDomain: UInt64
            public var endpoints: [UInt32]
            public var mappings: [String]
        }
        public struct Endpoint: Sendable {
            public var id: UInt32
            public var device: String
            /// nil: unattached.
            public var domain: UInt32?
            public var bypassing: Bool
            public var reservedRegions: [String]
        }
        public var offeredFeatures: String
        public var negotiatedFeatures: String
        /// `struct virtio_iommu_config` fields, as the driver reads them.
        public var config: [(name: String, value: String)]
        public var domains: [Domain]
        public var endpoints: [Endpoint]
        public var pendingRequests: Int
        public var availableEventBuffers: Int
        public var usedEventBuffers: Int
        public var eventsDelivered: UInt64
        public var eventsDropped: UInt64
        /// Requests answered, per status ("OK": 3).
        public var requests: [(status: String, count: UInt64)]
        /// `mappingConsistencyViolations()`: empty when the tables agree with the mapping record.
        public var consistencyViolations: [String]
    }
    /// Live DMA-API mappings per device ("nic0: page 0xffffe000 size 8192 …").
    public var dmaMappings: [String] = []
}

extension ScenarioRunner {
    /// Live LPAE (4K granule) table pages from a root, depth first, with their non-zero entries.
    static func lpaeTables(memory: PhysicalMemory, root: UInt64, levels: Int) -> [ScenarioInspection.TablePage] {
        var out: [ScenarioInspection.TablePage] = []
        func visit(_ address: UInt64, level: Int) {
            var entries: [(index: Int, descriptor: UInt64)] = []
            var children: [UInt64] = []
            for index in 0..<512 {
                guard let raw = try? memory.load64(PhysAddr(address + UInt64(index) * 8)), raw != 0 else { continue }
                entries.append((index, raw))
                if level < 3 && raw & 3 == 3 { children.append(raw & 0x0000_FFFF_FFFF_F000) }
            }
            out.append(.init(address: address, level: level, entries: entries))
            for child in children where out.count < 4096 { visit(child, level: level + 1) }
        }
        visit(root, level: 4 - levels)
        return out
    }

    /// A snapshot of groups, domains, stream tables, IOVA spaces and VFIO state.
    public func inspect() -> ScenarioInspection {
        var out = ScenarioInspection(step: stepsRun)
        var domains: [UInt64: (IOMMUDomain, [String])] = [:]
        for gid in core.groupIDs {
            guard let info = core.groupInfo(id: gid) else { continue }
            let names = info.devices.compactMap { core.deviceInfo($0)?.name }
            out.groups.append(.init(
                id: gid, devices: names, domain: info.domain.map { "domain#\($0.serial)" } ?? "none",
                domainType: info.domain?.type.sysfsName ?? "none", ownedByVFIO: info.owner != nil && !isVirtioEndpoint(names),
                reservedRegions: core.reservedRegions(ofGroup: gid)?.sysfsText ?? ""))
            if let d = info.domain { domains[d.serial, default: (d, [])].1 += names }
        }
        for (serial, (domain, names)) in domains.sorted(by: { $0.key < $1.key }) {
            let iommu = names.first.flatMap { n in scenario.platform.devices.first { $0.name == n }?.iommu }
                ?? (isVirtioEndpoint(names) ? VirtioIOMMUDevice.instanceName : "?")
            var tables: [ScenarioInspection.TablePage] = []
            var format = "none"
            if let ops = domain.ops as? SMMUDomainOps, case .stage1(let r)? = ops.tableRegisters {
                format = "arm-lpae-s1"
                tables = Self.lpaeTables(memory: memory, root: r.ttbr & 0x0000_FFFF_FFFF_F000, levels: 4)
            }
            // Live DMA-API mappings are page-table mappings of the domain too.
            let dmaMapped = dmaLayer.devices.values.filter { $0.cookie?.domain.serial == serial }.flatMap(\.liveMappings).map {
                ScenarioInspection.Mapping(iova: $0.address.rawValue, paddr: $0.paddr.rawValue, length: $0.size, prot: protText($0.direction.prot()))
            }
            out.domains.append(.init(
                serial: serial, type: domain.type.sysfsName, iommu: iommu, pageSizes: "\(domain.pageSizes)", devices: names,
                mappings: ((mapped[serial] ?? [:]).map {
                    ScenarioInspection.Mapping(iova: $0.key, paddr: $0.value.paddr, length: $0.value.length, prot: protText($0.value.prot))
                } + dmaMapped).sorted { $0.iova < $1.iova },
                tables: tables, formatKind: format, granuleShift: domain.pageSizes.smallest?.shift ?? 12))
        }
        for spec in scenario.platform.iommus {
            guard let hw = hardware[spec.name] else { continue }
            var entries: [ScenarioInspection.StreamEntry] = []
            var banks = Set<UInt8>()
            switch hw {
            case .smmu(_, let driver):
                for (index, entry) in driver.streamMapEntries.enumerated() where entry.smr.valid {
                    let owner = core.device(onIOMMU: spec.name, streamID: StreamID(UInt32(entry.smr.id))).flatMap { core.deviceInfo($0)?.name } ?? "?"
                    let s2cr: String
                    switch entry.s2cr.type {
                    case .translate: s2cr = "translate cb \(entry.s2cr.contextBank)"; banks.insert(entry.s2cr.contextBank)
                    case .bypass: s2cr = "bypass"
                    case .fault: s2cr = "fault"
                    }
                    entries.append(.init(index: index, streamID: UInt32(entry.smr.id), device: owner, s2cr: s2cr, mask: entry.smr.mask))
                }
            case .dart:
                for device in scenario.platform.devices where device.iommu == spec.name {
                    guard let devID = deviceIDs[device.name] else { continue }
                    let tcr: String
                    switch core.dmaPath(for: devID) {
                    case .translated(let d): tcr = "translate (domain#\(d.serial))"
                    case .identity: tcr = "bypass"
                    default: tcr = "disabled (fault)"
                    }
                    for sid in device.streamIDs { entries.append(.init(index: Int(sid), streamID: sid, device: device.name, s2cr: "TCR " + tcr)) }
                }
            }
            out.streamTables.append(.init(
                iommu: spec.name, kind: spec.kind.rawValue, smrCount: spec.kind == .smmu ? spec.streamMatchRegisters : min(16, spec.streamMatchRegisters),
                contextBanks: spec.contextBanks, contextBanksInUse: banks.count, unmatchedStream: spec.unmatchedStream.rawValue, entries: entries))
        }
        for (serial, iovad) in iovaDomains.sorted(by: { $0.key < $1.key }) {
            let snap = iovad.snapshot()
            let shift = UInt64(iovad.granule.shift)
            let reserved = Set(snap.reserved.map { $0.first.rawValue })
            out.iovaSpaces.append(.init(
                domainSerial: serial, granule: iovad.granule.bytes,
                allocated: snap.nodes.filter { !reserved.contains($0.first.rawValue) }.map { ($0.first.rawValue << shift, (($0.last.rawValue + 1) << shift) - 1) },
                reserved: snap.reserved.map { ($0.first.rawValue << shift, (($0.last.rawValue + 1) << shift) &- 1) }))
        }
        inspectDMA(into: &out)
        if let c = container {
            out.vfioMappings = c.mappings.map { m in
                "iova \(hex(m.iova.rawValue)) +\(hex(m.length)) vaddr \(m.vaddr) \(m.iommuMapped ? "mapped" : "not mapped"), \(m.lockedPages) locked, \(m.externallyPinnedPages) externally pinned"
            }
            out.vfioValidRanges = c.validIOVARanges.map { ($0.first.rawValue, $0.last.rawValue) }
        }
        if let v = virtio { out.virtio = Self.virtioState(v.device) }
        return out
    }

    /// Whether a group's devices are virtio-iommu endpoints (their group is owned by the device).
    func isVirtioEndpoint(_ names: [String]) -> Bool {
        guard let spec = virtio?.spec else { return false }
        return names.contains { n in spec.endpoints.contains { $0.device == n } }
    }

    static func virtioState(_ device: VirtioIOMMUDevice) -> ScenarioInspection.VirtioIOMMUState {
        let snap = device.snapshot
        let c = device.configSpace
        func le(_ r: Range<Int>) -> UInt64 { c[r].reversed().reduce(0) { $0 << 8 | UInt64($1) } }
        let hex = { (v: UInt64) in "0x" + String(v, radix: 16) }
        return .init(
            offeredFeatures: "\(snap.offeredFeatures)", negotiatedFeatures: "\(snap.negotiatedFeatures)",
            config: [("page_size_mask", hex(le(0..<8))), ("input_range", "[\(hex(le(8..<16))), \(hex(le(16..<24)))]"),
                     ("domain_range", "[\(hex(le(24..<28))), \(hex(le(28..<32)))]"), ("probe_size", "\(le(32..<36))"), ("bypass", "\(c[36])")],
            domains: snap.domains.map { d in
                .init(id: d.id, kind: d.isBypass ? "bypass" : (d.table?.description ?? "?"), granule: d.table?.granule.bytes ?? 0,
                      coreDomain: d.coreDomainSerial, endpoints: d.endpoints, mappings: d.mappings.map(\.description))
            },
            endpoints: snap.endpoints.map { e in
                .init(id: e.id, device: e.name, domain: e.domain, bypassing: e.bypassing, reservedRegions: e.reservedRegions.map(\.description))
            },
            pendingRequests: snap.pendingRequests, availableEventBuffers: snap.availableEventBuffers, usedEventBuffers: snap.usedEventBuffers,
            eventsDelivered: snap.statistics.eventsDelivered, eventsDropped: snap.statistics.eventsDropped,
            requests: VirtioIOMMUStatus.allCases.compactMap { s in
                let n = snap.statistics.requestsByStatus[Int(s.rawValue)]
                return n == 0 ? nil : (s.description, n)
            } + (snap.statistics.requestsUnanswered > 0 ? [("unanswered", snap.statistics.requestsUnanswered)] : []),
            consistencyViolations: device.mappingConsistencyViolations())
    }
}
