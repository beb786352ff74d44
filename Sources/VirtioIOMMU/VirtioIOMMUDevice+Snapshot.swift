import IOMMUBase
import IOMMUCore
import IOPageTable

/// A point-in-time view of the device for inspection (`iommu inspect`) and tests.
public struct VirtioIOMMUSnapshot: Hashable, Sendable, CustomDebugStringConvertible {
    public struct Domain: Hashable, Sendable {
        public var id: UInt32
        public var isBypass: Bool
        /// Table format and granule (nil for a bypass domain).
        public var table: VirtioTableSpec?
        /// The core's serial of the backing `IOMMUDomain`.
        public var coreDomainSerial: UInt64
        /// First table root (physical address), for paging domains.
        public var tableRoot: UInt64?
        public var endpoints: [UInt32]
        public var mappings: [VirtioMapping]
    }

    public struct Endpoint: Hashable, Sendable {
        public var id: UInt32
        public var device: DeviceID
        public var name: String
        public var domain: UInt32?
        /// Unattached and let through (global bypass or legacy BYPASS).
        public var bypassing: Bool
        public var reservedRegions: [VirtioReservedRegion]
    }

    public var offeredFeatures: VirtioIOMMUFeatures
    public var negotiatedFeatures: VirtioIOMMUFeatures
    public var bypass: UInt8
    public var domains: [Domain]
    public var endpoints: [Endpoint]
    public var pendingRequests: Int
    public var availableEventBuffers: Int
    public var usedEventBuffers: Int
    public var statistics: VirtioIOMMUStatistics

    public var debugDescription: String {
        var text = "virtio-iommu: features offered \(offeredFeatures), negotiated \(negotiatedFeatures), bypass \(bypass)\n"
        text += "  requestq: \(pendingRequests) pending; eventq: \(availableEventBuffers) buffers available, "
        text += "\(usedEventBuffers) used not taken, \(statistics.eventsDelivered) events delivered, \(statistics.eventsDropped) dropped\n"
        let answered = VirtioIOMMUStatus.allCases.compactMap { status -> String? in
            let count = statistics.requestsByStatus[Int(status.rawValue)]
            return count == 0 ? nil : "\(status) \(count)"
        }
        text += "  requests: " + (answered.isEmpty ? "none" : answered.joined(separator: ", "))
        text += ", unanswered \(statistics.requestsUnanswered)\n"
        text += "  domains (\(domains.count)):\n"
        for domain in domains {
            text += "    domain \(domain.id): " + (domain.isBypass ? "bypass" : (domain.table?.description ?? "?"))
            if let root = domain.tableRoot { text += " root 0x" + String(root, radix: 16) }
            text += ", core domain#\(domain.coreDomainSerial), endpoints \(domain.endpoints)\n"
            for mapping in domain.mappings { text += "      \(mapping)\n" }
        }
        text += "  endpoints (\(endpoints.count)):\n"
        for endpoint in endpoints {
            text += "    endpoint \(endpoint.id) (\(endpoint.name), \(endpoint.device)): "
            if let domain = endpoint.domain { text += "domain \(domain)" } else { text += endpoint.bypassing ? "unattached, bypass" : "unattached, blocked" }
            if !endpoint.reservedRegions.isEmpty { text += "; resv " + endpoint.reservedRegions.map(\.description).joined(separator: ", ") }
            text += "\n"
        }
        return text
    }
}

extension VirtioIOMMUDevice: CustomDebugStringConvertible {
    /// The device's state: features, domains with their mappings, endpoints, queues, counters.
    public var snapshot: VirtioIOMMUSnapshot {
        state.withLock { s in
            let bypassing = (configuration.offeredFeatures.contains(.bypassConfig) && s.bypass == 1) || s.negotiated.contains(.legacyBypass)
            return VirtioIOMMUSnapshot(
                offeredFeatures: configuration.offeredFeatures, negotiatedFeatures: s.negotiated, bypass: s.bypass,
                domains: s.domains.keys.sorted().map { id in
                    let d = s.domains[id]!
                    return .init(id: id, isBypass: d.isBypass, table: d.spec, coreDomainSerial: d.iommuDomain.serial,
                                 tableRoot: d.ops?.table.roots.first?.rawValue, endpoints: d.endpoints.sorted(), mappings: d.mappings.items)
                },
                endpoints: s.endpoints.keys.sorted().map { id in
                    let e = s.endpoints[id]!
                    return .init(id: id, device: e.device, name: e.name, domain: e.domain, bypassing: e.domain == nil && bypassing,
                                 reservedRegions: e.regions)
                },
                pendingRequests: s.pendingRequests.count, availableEventBuffers: s.eventBuffers.count,
                usedEventBuffers: s.usedEvents.count, statistics: s.stats)
        }
    }

    public var debugDescription: String { snapshot.debugDescription }

    /// The mappings of a domain (nil if it does not exist).
    public func mappings(ofDomain domainID: UInt32) -> [VirtioMapping]? {
        state.withLock { $0.domains[domainID]?.mappings.items }
    }

    /// Checks that the record of mappings and the page tables agree, reading the tables with
    /// the hardware walker: each mapping's first and last granule (and its middle) translate to
    /// the right physical address with the right permissions (no-access mappings: not in the
    /// table), and the granule after each mapping is unmapped unless another mapping starts
    /// there. Returns a description of every disagreement (empty: consistent).
    public func mappingConsistencyViolations() -> [String] {
        let granule = configuration.granule
        return state.withLock { s in
            var problems: [String] = []
            for id in s.domains.keys.sorted() {
                let domain = s.domains[id]!
                guard let walker = domain.walker else {
                    if !domain.mappings.items.isEmpty { problems.append("bypass domain \(id) has mappings") }
                    continue
                }
                let items = domain.mappings.items
                for (index, m) in items.enumerated() {
                    if index > 0 && items[index - 1].last >= m.first { problems.append("domain \(id): overlapping records at \(m)") }
                    let pages = (m.last &- m.first) / granule
                    for page in Set([0, pages / 2, pages]) {
                        let iova = m.first &+ page &* granule
                        let expected = m.phys &+ page &* granule
                        switch walker.lookup(IOVA(iova)) {
                        case .translated(let t):
                            if m.prot.isEmpty { problems.append("domain \(id): no-access mapping \(m) present in table") }
                            if t.physicalAddress.rawValue != expected { problems.append("domain \(id): \(m) page \(page) -> \(t.physicalAddress)") }
                            if m.prot.contains(.write) != t.writable { problems.append("domain \(id): \(m) write permission differs") }
                            if domain.spec?.kind == .armLPAEStage2 && m.prot.contains(.read) != t.readable {
                                problems.append("domain \(id): \(m) read permission differs")
                            }
                        case .fault:
                            if !m.prot.isEmpty { problems.append("domain \(id): \(m) page \(page) missing from table") }
                        }
                    }
                    let after = m.last &+ 1
                    if after != 0 && after <= configuration.inputLast && domain.mappings.mapping(containing: after) == nil,
                        walker.lookup(IOVA(after)).translation != nil
                    {
                        problems.append("domain \(id): table maps 0x" + String(after, radix: 16) + " after \(m)")
                    }
                }
            }
            return problems
        }
    }
}
