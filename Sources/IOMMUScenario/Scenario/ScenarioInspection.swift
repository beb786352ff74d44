import IOMMUBase
import IOMMUCore
import IOPageTable
import IOVAAllocator

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
        public var tables: [PageTableSnapshot]
        public var formatKind: String
        public var granuleShift: Int
    }
    public struct StreamEntry: Sendable {
        public var index: Int
        public var streamID: UInt32
        public var device: String
        /// S2CR: "translate (cb N)", "bypass", "fault".
        public var s2cr: String
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
    /// Flush-queue state arrives with DMAMapping.
    public var flushQueues: [String] = []
}

extension ScenarioRunner {
    /// A snapshot of groups, domains, stream tables, IOVA spaces and VFIO state.
    public func inspect() -> ScenarioInspection {
        var out = ScenarioInspection(step: stepsRun)
        var domains: [UInt64: (IOMMUDomain, [String])] = [:]
        var cbIndex: [UInt64: Int] = [:]
        for gid in core.groupIDs {
            guard let info = core.groupInfo(id: gid) else { continue }
            let names = info.devices.compactMap { core.deviceInfo($0)?.name }
            out.groups.append(.init(
                id: gid, devices: names, domain: info.domain.map { "domain#\($0.serial)" } ?? "none",
                domainType: info.domain?.type.sysfsName ?? "none", ownedByVFIO: info.owner != nil,
                reservedRegions: core.reservedRegions(ofGroup: gid)?.sysfsText ?? ""))
            if let d = info.domain { domains[d.serial, default: (d, [])].1 += names }
        }
        for (serial, (domain, names)) in domains.sorted(by: { $0.key < $1.key }) {
            cbIndex[serial] = cbIndex.count
            let ops = domain.ops as? ModelDomainOps
            let iommu = names.first.flatMap { n in scenario.platform.devices.first { $0.name == n }?.iommu } ?? "?"
            out.domains.append(.init(
                serial: serial, type: domain.type.sysfsName, iommu: iommu, pageSizes: "\(domain.pageSizes)", devices: names,
                mappings: ops?.mappings.map { .init(iova: $0.iova, paddr: $0.paddr, length: $0.length, prot: protText($0.prot)) } ?? [],
                tables: ops?.table.liveTables() ?? [], formatKind: ops?.table.kind.rawValue ?? "none",
                granuleShift: ops?.table.geometry.pageSizes.smallest?.shift ?? 12))
        }
        for spec in scenario.platform.iommus {
            guard let driver = driver(named: spec.name) else { continue }
            var entries: [ScenarioInspection.StreamEntry] = []
            for (index, entry) in driver.streamEntries.enumerated() {
                guard let entry else { continue }
                let s2cr: String
                switch core.dmaPath(for: entry.device) {
                case .translated(let d): s2cr = "translate (cb \(cbIndex[d.serial].map(String.init) ?? "?"), domain#\(d.serial))"
                case .identity: s2cr = "bypass (identity domain)"
                case .blocked, .notProbed: s2cr = "fault"
                case .noIOMMU: s2cr = "bypass"
                }
                entries.append(.init(index: index, streamID: entry.streamID, device: entry.deviceName, s2cr: s2cr))
            }
            out.streamTables.append(.init(
                iommu: spec.name, kind: spec.kind.rawValue, smrCount: spec.streamMatchRegisters, contextBanks: spec.contextBanks,
                contextBanksInUse: driver.contextBanksInUse, unmatchedStream: spec.unmatchedStream.rawValue, entries: entries))
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
        if let c = container {
            out.vfioMappings = c.mappings.map { m in
                "iova \(hex(m.iova.rawValue)) +\(hex(m.length)) vaddr \(m.vaddr) \(m.iommuMapped ? "mapped" : "not mapped"), \(m.lockedPages) locked, \(m.externallyPinnedPages) externally pinned"
            }
            out.vfioValidRanges = c.validIOVARanges.map { ($0.first.rawValue, $0.last.rawValue) }
        }
        return out
    }
}
