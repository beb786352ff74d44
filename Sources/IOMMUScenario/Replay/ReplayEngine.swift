import IOMMUBase

/// Replays a Linux IOMMU/DMA trace against a `ReplayBackend`, attributing each `map`/`unmap`
/// (which name no device or domain) to a device, and so to a domain, and checking invariants.
///
/// Attribution (see docs/trace-replay.md):
/// * An execution context is the task (process context) or the CPU at one interrupt level
///   (softirq, hardirq, hardirq-in-softirq, NMI; and the idle task).
/// * `map` events wait in their context until `dma_map_page`, `dma_map_sg` or `dma_alloc`
///   (their owner, traced right after them) or `attach_device_to_domain` (direct mappings of a
///   reserved region, made while a default domain is set up).
/// * `unmap` events wait until `dma_unmap_page` (traced right after).
/// * `dma_free` and `dma_unmap_sg` are traced before their `unmap`: they wait for the next
///   `unmap` of their context.
/// * A domain is a group's attach generation: an attach of a device already attached to the
///   group's current domain (or to a group with none) allocates a new domain; DMA → DMA-FQ keeps
///   the domain (no attach). Removing a group's last device frees the group; the same ID added
///   again is a new group.
public struct ReplayEngine<Backend: ReplayBackend> {
    public private(set) var backend: Backend
    /// At most this many violations are listed; the rest are counted.
    public var violationLimit = 100_000
    /// The IOMMU page size, for phys-address checks of `dma_unmap_sg` (4 KiB for VT-d).
    public var granuleShift = 12

    // MARK: State

    struct PendingMap {
        var line: Int
        var event: MapEvent
    }

    struct PendingUnmap {
        var line: Int
        var event: UnmapEvent
        /// Set when the unmap was applied early, to resolve an IOVA reuse race (see
        /// `applyRacingUnmap`), before its `dma_unmap_page` named the device.
        var appliedTo: ReplayDomainID? = nil
    }

    enum PendingRelease {
        case free(line: Int, DMAFreeEvent, ReplayDomainID?)
        case unmapSG(line: Int, DMAUnmapSGEvent, ReplayDomainID?)
    }

    struct Context {
        var maps: [PendingMap] = []
        var unmaps: [PendingUnmap] = []
        var release: PendingRelease?
    }

    struct Group {
        var id: ReplayGroupID
        var devices: [String]
        var domain: ReplayDomainID?
        var summaryIndex: Int
    }

    struct Domain {
        var summary: ReplayDomainSummary
        var attached: Set<String>
    }

    /// Execution contexts: key → index into `contextStates` (one hash lookup per event; the
    /// state is swapped out and back, so it is never copied).
    var contextIndices: [UInt64: Int] = [:]
    var contextStates: [Context] = []
    var groups: [Int32: Group] = [:]
    var groupIncarnations: [Int32: Int] = [:]
    var domainGenerations: [Int32: Int] = [:]
    var deviceGroups: [String: Int32] = [:]
    var domains: [Domain] = []
    var groupSummaries: [ReplayGroupSummary] = []

    var typedCounts = [Int](repeating: 0, count: TraceEventKind.allCases.count)
    var otherCounts: [String: Int] = [:]
    var violations: [ReplayViolation] = []
    var unlistedViolations = 0
    var lostEvents: UInt64 = 0
    var failedDMAMaps = 0
    var untranslatedDMACalls = 0
    /// Unmaps applied before their `dma_unmap_page` because their IOVA was already re-mapped.
    public private(set) var racingUnmaps = 0

    public init(backend: Backend) {
        self.backend = backend
    }

    // MARK: - Input

    /// Feeds one decoded line.
    public mutating func process(_ record: TraceRecord, line: Int) {
        switch record {
        case .event(let event): process(event, line: line)
        case .lostEvents(_, let count): lostEvents &+= count
        case .comment, .blank: break
        }
    }

    /// Feeds one event.
    public mutating func process(_ event: TraceEvent, line: Int) {
        let kind = event.body.kind
        typedCounts[Int(kind.rawValue)] += 1
        switch event.body {
        case .map(let map):
            withContext(of: event) { engine, context in
                engine.resolveUnmaps(&context)
                engine.resolveRelease(&context)
                context.maps.append(PendingMap(line: line, event: map))
            }
        case .unmap(let unmap):
            withContext(of: event) { engine, context in
                engine.resolveMaps(&context)
                if let release = context.release {
                    context.release = nil
                    engine.completeRelease(release, unmap: unmap, line: line)
                } else {
                    context.unmaps.append(PendingUnmap(line: line, event: unmap))
                }
            }
        case .dmaMapPage(let dma):
            withContext(of: event) { engine, context in
                engine.resolveUnmaps(&context)
                engine.resolveRelease(&context)
                let maps = context.maps
                context.maps.removeAll(keepingCapacity: true)
                engine.dmaMapPage(dma, maps: maps, line: line)
            }
        case .dmaMapSG(let dma):
            withContext(of: event) { engine, context in
                engine.resolveUnmaps(&context)
                engine.resolveRelease(&context)
                let maps = context.maps
                context.maps.removeAll(keepingCapacity: true)
                engine.dmaMapSG(dma, maps: maps, line: line)
            }
        case .dmaAlloc(let dma):
            withContext(of: event) { engine, context in
                engine.resolveUnmaps(&context)
                engine.resolveRelease(&context)
                let maps = context.maps
                context.maps.removeAll(keepingCapacity: true)
                engine.dmaAlloc(dma, maps: maps, line: line)
            }
        case .dmaUnmapPage(let dma):
            withContext(of: event) { engine, context in
                engine.resolveMaps(&context)
                engine.resolveRelease(&context)
                let unmaps = context.unmaps
                context.unmaps.removeAll(keepingCapacity: true)
                engine.dmaUnmapPage(dma, unmaps: unmaps, line: line)
            }
        case .dmaFree(let dma):
            withContext(of: event) { engine, context in
                engine.resolveMaps(&context)
                engine.resolveUnmaps(&context)
                engine.resolveRelease(&context)
                context.release = .free(line: line, dma, engine.domain(of: dma.device))
            }
        case .dmaUnmapSG(let dma):
            withContext(of: event) { engine, context in
                engine.resolveMaps(&context)
                engine.resolveUnmaps(&context)
                engine.resolveRelease(&context)
                context.release = .unmapSG(line: line, dma, engine.domain(of: dma.device))
            }
        case .attachDeviceToDomain(let attach):
            withContext(of: event) { engine, context in
                engine.resolveUnmaps(&context)
                engine.resolveRelease(&context)
                let maps = context.maps
                context.maps.removeAll(keepingCapacity: true)
                engine.attach(attach.device, directMaps: maps, line: line)
            }
        case .detachDeviceFromDomain(let detach):
            detachDevice(detach.device, line: line)
        case .addDeviceToGroup(let add):
            addDevice(add.device, toGroup: add.groupID, line: line)
        case .removeDeviceFromGroup(let remove):
            removeDevice(remove.device, fromGroup: remove.groupID, line: line)
        case .other(let name, _):
            otherCounts[name, default: 0] += 1
        case .ioPageFault, .tracingMarkWrite:
            break
        }
    }

    /// Resolves what is still pending and returns the report.
    public mutating func finish(lineCount: Int, header: TraceHeader = TraceHeader()) -> ReplayReport {
        for index in contextStates.indices {
            var context = Context()
            swap(&context, &contextStates[index])
            resolveMaps(&context)
            resolveUnmaps(&context)
            resolveRelease(&context)
            swap(&context, &contextStates[index])
        }
        var counts: [(name: String, count: Int)] = TraceEventKind.typed.map { ($0.name, typedCounts[Int($0.rawValue)]) }
        for name in otherCounts.keys.sorted() { counts.append((name, otherCounts[name]!)) }
        var domainSummaries: [ReplayDomainSummary] = []
        for domain in domains {
            var summary = domain.summary
            if !summary.released {
                let live = backend.liveMappings(in: summary.id)
                summary.liveMappingCount = live.count
                summary.liveBytes = live.bytes
            }
            domainSummaries.append(summary)
        }
        let sorted = violations.enumerated().sorted { ($0.element.line, $0.offset) < ($1.element.line, $1.offset) }
        return ReplayReport(
            eventCounts: counts,
            totalEvents: typedCounts.reduce(0, +),
            lineCount: lineCount,
            header: header,
            lostEvents: lostEvents &+ header.overwrittenEvents,
            groups: groupSummaries,
            domains: domainSummaries,
            violations: sorted.map(\.element),
            unlistedViolationCount: unlistedViolations,
            failedDMAMaps: failedDMAMaps,
            untranslatedDMACalls: untranslatedDMACalls,
            reuseRaceUnmaps: racingUnmaps)
    }

    // MARK: - Contexts

    /// The execution context of an event: the task in process context, otherwise the CPU and
    /// the interrupt level (the idle task counts per CPU).
    @inline(__always)
    static func contextKey(of event: TraceEvent) -> UInt64 {
        let level = event.flags.contextCharacter
        if level == UInt8(ascii: "."), event.pid > 0 { return UInt64(UInt32(event.pid)) }
        return 1 << 48 | UInt64(level) << 32 | UInt64(event.cpu)
    }

    @inline(__always)
    mutating func withContext(of event: TraceEvent, _ body: (inout Self, inout Context) -> Void) {
        let key = ReplayEngine.contextKey(of: event)
        let index: Int
        if let known = contextIndices[key] {
            index = known
        } else {
            index = contextStates.count
            contextIndices[key] = index
            contextStates.append(Context())
        }
        var context = Context()
        swap(&context, &contextStates[index])
        body(&self, &context)
        swap(&context, &contextStates[index])
    }

    mutating func violation(_ line: Int, _ what: String) {
        if violations.count < violationLimit {
            violations.append(ReplayViolation(line: line, what: what))
        } else {
            unlistedViolations += 1
        }
    }

    /// Maps nobody claimed.
    mutating func resolveMaps(_ context: inout Context) {
        guard !context.maps.isEmpty else { return }
        for pending in context.maps {
            violation(
                pending.line,
                "map iova=\(hex(pending.event.iova.rawValue)) size=\(pending.event.length) is not followed by "
                    + "dma_map_page, dma_map_sg, dma_alloc or attach_device_to_domain in its context (no device to attribute it to)")
        }
        context.maps.removeAll(keepingCapacity: true)
    }

    /// Unmaps nobody claimed.
    mutating func resolveUnmaps(_ context: inout Context) {
        guard !context.unmaps.isEmpty else { return }
        for pending in context.unmaps {
            violation(
                pending.line,
                "unmap iova=\(hex(pending.event.iova.rawValue)) size=\(pending.event.length) is not followed by "
                    + "dma_unmap_page nor preceded by dma_free or dma_unmap_sg in its context (no device to attribute it to)")
        }
        context.unmaps.removeAll(keepingCapacity: true)
    }

    /// A `dma_free`/`dma_unmap_sg` whose context moved on without an `unmap`: fine for a
    /// pass-through domain or an empty free, a violation for a translating domain.
    mutating func resolveRelease(_ context: inout Context) {
        guard let release = context.release else { return }
        context.release = nil
        switch release {
        case .free(let line, let free, let domain):
            if free.length > 0, let domain, kind(of: domain) == .translated {
                violation(line, "dma_free \(free.device) dma_addr=\(hex(free.dmaAddress.rawValue)) size=\(free.length) is not followed by its unmap in its context (\(domain) translates)")
            } else {
                untranslatedDMACalls += 1
            }
        case .unmapSG(let line, let unmapSG, let domain):
            if let domain, kind(of: domain) == .translated {
                violation(line, "dma_unmap_sg \(unmapSG.device) is not followed by its unmap in its context (\(domain) translates)")
            } else {
                untranslatedDMACalls += 1
            }
        }
    }

    // MARK: - Groups and domains

    func domain(of device: String) -> ReplayDomainID? {
        guard let groupID = deviceGroups[device] else { return nil }
        return groups[groupID]?.domain
    }

    func kind(of domain: ReplayDomainID) -> ReplayDomainKind { domains[domain.index].summary.kind }

    mutating func addDevice(_ device: String, toGroup groupID: Int32, line: Int) {
        if let previous = deviceGroups[device] {
            if previous == groupID, groups[groupID]?.devices.contains(device) == true {
                violation(line, "add_device_to_group: \(device) is already in group \(groupID)")
                return
            }
            violation(line, "add_device_to_group: \(device) moves to group \(groupID) without leaving group \(previous)")
            removeDevice(device, fromGroup: previous, line: line)
        }
        if groups[groupID] == nil {
            let incarnation = groupIncarnations[groupID, default: 0] + 1
            groupIncarnations[groupID] = incarnation
            let id = ReplayGroupID(groupID: groupID, incarnation: incarnation)
            groups[groupID] = Group(id: id, devices: [], domain: nil, summaryIndex: groupSummaries.count)
            groupSummaries.append(ReplayGroupSummary(id: id, devices: [], domains: [], released: false))
            backend.groupAdded(id)
        }
        groups[groupID]!.devices.append(device)
        groupSummaries[groups[groupID]!.summaryIndex].devices.append(device)
        deviceGroups[device] = groupID
        backend.deviceAdded(device, to: groups[groupID]!.id)
    }

    mutating func removeDevice(_ device: String, fromGroup groupID: Int32, line: Int) {
        guard var group = groups[groupID], let position = group.devices.firstIndex(of: device) else {
            violation(line, "remove_device_from_group: \(device) is not in group \(groupID)")
            return
        }
        group.devices.remove(at: position)
        deviceGroups[device] = nil
        if let domain = group.domain { domains[domain.index].attached.remove(device) }
        backend.deviceRemoved(device, from: group.id)
        if group.devices.isEmpty {
            if let domain = group.domain { releaseDomain(domain) }
            groupSummaries[group.summaryIndex].released = true
            backend.groupReleased(group.id)
            groups[groupID] = nil
        } else {
            groups[groupID] = group
        }
    }

    mutating func releaseDomain(_ domain: ReplayDomainID) {
        let live = backend.liveMappings(in: domain)
        domains[domain.index].summary.released = true
        domains[domain.index].summary.liveMappingCount = live.count
        domains[domain.index].summary.liveBytes = live.bytes
        backend.domainReleased(domain)
    }

    mutating func attach(_ device: String, directMaps: [PendingMap], line: Int) {
        guard let groupID = deviceGroups[device], var group = groups[groupID] else {
            violation(line, "attach_device_to_domain: \(device) was never added to a group")
            for pending in directMaps {
                violation(pending.line, "map iova=\(hex(pending.event.iova.rawValue)) size=\(pending.event.length) precedes the attach of \(device), which is in no group")
            }
            return
        }
        let needsNewDomain: Bool
        if let current = group.domain {
            needsNewDomain = domains[current.index].attached.contains(device)
        } else {
            needsNewDomain = true
        }
        if needsNewDomain {
            if let old = group.domain { releaseDomain(old) }
            let generation = domainGenerations[groupID, default: 0] + 1
            domainGenerations[groupID] = generation
            let id = ReplayDomainID(index: domains.count, groupID: groupID, generation: generation)
            domains.append(Domain(
                summary: ReplayDomainSummary(
                    id: id, group: group.id, devices: [], kind: .unknown, mapCount: 0, mappedBytes: 0,
                    directMapCount: 0, unmapCount: 0, unmappedBytes: 0, dmaCallCount: 0, released: false,
                    liveMappingCount: 0, liveBytes: 0),
                attached: []))
            groupSummaries[group.summaryIndex].domains.append(id)
            backend.domainAllocated(id, for: group.id)
            group.domain = id
            groups[groupID] = group
        }
        let domain = group.domain!
        domains[domain.index].attached.insert(device)
        if !domains[domain.index].summary.devices.contains(device) {
            domains[domain.index].summary.devices.append(device)
        }
        backend.deviceAttached(device, to: domain)
        if !directMaps.isEmpty {
            markTranslated(domain, line: line, what: "direct mappings")
            domains[domain.index].summary.directMapCount += directMaps.count
            apply(directMaps, to: domain)
        }
    }

    mutating func detachDevice(_ device: String, line: Int) {
        guard let domain = domain(of: device), domains[domain.index].attached.contains(device) else {
            violation(line, "detach_device_from_domain: \(device) is not attached to a domain")
            return
        }
        domains[domain.index].attached.remove(device)
    }

    /// Records that `domain` translates (it has maps); a violation if it was seen passing DMA
    /// through untranslated.
    mutating func markTranslated(_ domain: ReplayDomainID, line: Int, what: String) {
        switch kind(of: domain) {
        case .translated: return
        case .passthrough:
            violation(line, "\(what) in \(domain), whose DMA was seen going through untranslated (no map events)")
        case .unknown: break
        }
        domains[domain.index].summary.kind = .translated
    }

    /// Records DMA with no map/unmap: fine for pass-through, a violation for a translating domain.
    mutating func noteUntranslated(_ domain: ReplayDomainID, line: Int, what: String) {
        switch kind(of: domain) {
        case .translated:
            violation(line, "\(what) has no \(what.hasPrefix("dma_unmap") ? "unmap" : "map") event next to it in its context, but \(domain) translates")
        case .unknown:
            domains[domain.index].summary.kind = .passthrough
            untranslatedDMACalls += 1
        case .passthrough:
            untranslatedDMACalls += 1
        }
    }

    // MARK: - Maps and unmaps

    mutating func apply(_ maps: [PendingMap], to domain: ReplayDomainID) {
        for pending in maps {
            let map = pending.event
            do throws(IOMMUError) {
                do throws(IOMMUError) {
                    try backend.map(domain, iova: map.iova, paddr: map.paddr, length: map.length)
                } catch {
                    guard error.reason == .alreadyMapped, applyRacingUnmap(covering: map, in: domain) else { throw error }
                    try backend.map(domain, iova: map.iova, paddr: map.paddr, length: map.length)
                }
                domains[domain.index].summary.mapCount += 1
                domains[domain.index].summary.mappedBytes &+= map.length
            } catch {
                let reason =
                    error.reason == .alreadyMapped
                    ? "overlaps a live mapping at \(hex(error.address))" : "was refused (\(error.reason))"
                violation(pending.line, "map iova=\(hex(map.iova.rawValue)) size=\(map.length) in \(domain) \(reason)")
            }
        }
    }

    /// SMP: an IOVA is freed right after its `unmap` event but before its `dma_unmap_page`
    /// event, so another CPU may map it again in between. When a map overlaps a live mapping and
    /// an unclaimed `unmap` in another context covers the overlap, that unmap is applied now to
    /// this domain (and checked against it when its `dma_unmap_page` arrives). Returns true if
    /// one was found.
    mutating func applyRacingUnmap(covering map: MapEvent, in domain: ReplayDomainID) -> Bool {
        let mapSpan = Span(map.iova.rawValue, map.length)
        for index in contextStates.indices {
            for slot in contextStates[index].unmaps.indices where contextStates[index].unmaps[slot].appliedTo == nil {
                let unmap = contextStates[index].unmaps[slot]
                let unmapSpan = Span(unmap.event.iova.rawValue, unmap.event.length)
                guard covered(mapSpan.first, mapSpan.length, by: CollectionOfOne(unmapSpan)) > 0 else { continue }
                contextStates[index].unmaps[slot].appliedTo = domain
                apply(unmap, to: domain)
                racingUnmaps += 1
                return true
            }
        }
        return false
    }

    mutating func apply(_ pending: PendingUnmap, to domain: ReplayDomainID) {
        let unmap = pending.event
        let bytes = backend.unmap(domain, iova: unmap.iova, length: unmap.length)
        domains[domain.index].summary.unmapCount += 1
        domains[domain.index].summary.unmappedBytes &+= bytes
        if bytes != unmap.length {
            violation(pending.line, "unmap iova=\(hex(unmap.iova.rawValue)) size=\(unmap.length) in \(domain) covers only \(bytes) mapped bytes")
        }
        if bytes != unmap.unmappedLength {
            violation(pending.line, "unmap iova=\(hex(unmap.iova.rawValue)) reports unmapped_size=\(unmap.unmappedLength) but \(bytes) bytes were mapped there in \(domain)")
        }
    }

    /// Looks up the device's domain for a DMA call; reports claimed maps/unmaps that cannot
    /// belong anywhere. `nil` when there is nothing more to do.
    mutating func dmaDomain(_ device: String, call: String, pendingCount: Int, line: Int) -> ReplayDomainID? {
        guard let groupID = deviceGroups[device] else {
            if pendingCount > 0 {
                violation(line, "\(call) \(device): \(pendingCount) map/unmap event(s) next to it, but \(device) is in no IOMMU group")
            } else {
                untranslatedDMACalls += 1
            }
            return nil
        }
        guard let domain = groups[groupID]?.domain else {
            violation(line, "\(call) \(device): group \(groupID) has no domain attached")
            return nil
        }
        domains[domain.index].summary.dmaCallCount += 1
        return domain
    }

    mutating func dmaMapPage(_ dma: DMAMapPageEvent, maps: [PendingMap], line: Int) {
        guard let domain = dmaDomain(dma.device, call: "dma_map_page", pendingCount: maps.count, line: line) else { return }
        if dma.dmaAddress.rawValue == UInt64.max {
            failedDMAMaps += 1
            if !maps.isEmpty { violation(line, "dma_map_page \(dma.device) failed (DMA_MAPPING_ERROR) but map events precede it") }
            return
        }
        guard !maps.isEmpty else {
            noteUntranslated(domain, line: line, what: "dma_map_page \(dma.device) dma_addr=\(hex(dma.dmaAddress.rawValue))")
            return
        }
        markTranslated(domain, line: line, what: "map events for dma_map_page")
        apply(maps, to: domain)
        reportStrays(maps.lazy.map { ($0.line, Span($0.event.iova.rawValue, $0.event.length)) }, event: "map",
            call: "dma_map_page \(dma.device)", line: line, targets: CollectionOfOne(Span(dma.dmaAddress.rawValue, max(dma.length, 1))))
        let ranges = maps.lazy.map { Span($0.event.iova.rawValue, $0.event.length) }
        if dma.length > 0, covered(dma.dmaAddress.rawValue, dma.length, by: ranges) != dma.length {
            violation(line, "dma_map_page \(dma.device) dma_addr=\(hex(dma.dmaAddress.rawValue)) size=\(dma.length) is not inside the IOVA range mapped just before it (\(describe(ranges)))")
            return
        }
        if let owner = maps.first(where: { contains($0.event.iova.rawValue, $0.event.length, dma.dmaAddress.rawValue) }) {
            let expected = owner.event.paddr.rawValue &+ (dma.dmaAddress.rawValue &- owner.event.iova.rawValue)
            if expected != dma.physAddress.rawValue {
                violation(line, "dma_map_page \(dma.device) phys_addr=\(hex(dma.physAddress.rawValue)) but the map at line \(owner.line) sends dma_addr=\(hex(dma.dmaAddress.rawValue)) to \(hex(expected))")
            }
        }
    }

    mutating func dmaMapSG(_ dma: DMAMapSGEvent, maps: [PendingMap], line: Int) {
        guard let domain = dmaDomain(dma.device, call: "dma_map_sg", pendingCount: maps.count, line: line) else { return }
        guard !maps.isEmpty else {
            noteUntranslated(domain, line: line, what: "dma_map_sg \(dma.device)")
            return
        }
        markTranslated(domain, line: line, what: "map events for dma_map_sg")
        apply(maps, to: domain)
        if !dma.truncated {
            reportStrays(maps.lazy.map { ($0.line, Span($0.event.iova.rawValue, $0.event.length)) }, event: "map",
                call: "dma_map_sg \(dma.device)", line: line,
                targets: zip(dma.dmaAddresses, dma.segmentLengths).map { Span($0, max($1, 1)) })
        }
        let ranges = maps.lazy.map { Span($0.event.iova.rawValue, $0.event.length) }
        for (address, length) in zip(dma.dmaAddresses, dma.segmentLengths) where length > 0 {
            if covered(address, length, by: ranges) != length {
                violation(line, "dma_map_sg \(dma.device) segment dma_addr=\(hex(address)) size=\(hex(length)) is not inside the IOVA ranges mapped just before it (\(describe(ranges)))")
            }
        }
        for phys in dma.physAddresses
        where !maps.contains(where: { contains($0.event.paddr.rawValue, $0.event.length, phys) }) {
            violation(line, "dma_map_sg \(dma.device) phys_addr \(hex(phys)) is in none of the \(maps.count) map event(s) before it")
        }
    }

    mutating func dmaAlloc(_ dma: DMAAllocEvent, maps: [PendingMap], line: Int) {
        guard let domain = dmaDomain(dma.device, call: "dma_alloc", pendingCount: maps.count, line: line) else { return }
        guard !maps.isEmpty else {
            noteUntranslated(domain, line: line, what: "dma_alloc \(dma.device) dma_addr=\(hex(dma.dmaAddress.rawValue))")
            return
        }
        markTranslated(domain, line: line, what: "map events for dma_alloc")
        apply(maps, to: domain)
        reportStrays(maps.lazy.map { ($0.line, Span($0.event.iova.rawValue, $0.event.length)) }, event: "map",
            call: "dma_alloc \(dma.device)", line: line, targets: CollectionOfOne(Span(dma.dmaAddress.rawValue, max(dma.length, 1))))
        let ranges = maps.lazy.map { Span($0.event.iova.rawValue, $0.event.length) }
        if dma.length > 0, covered(dma.dmaAddress.rawValue, dma.length, by: ranges) != dma.length {
            violation(line, "dma_alloc \(dma.device) dma_addr=\(hex(dma.dmaAddress.rawValue)) size=\(dma.length) is not inside the IOVA range mapped just before it (\(describe(ranges)))")
        }
    }

    mutating func dmaUnmapPage(_ dma: DMAUnmapPageEvent, unmaps: [PendingUnmap], line: Int) {
        guard let domain = dmaDomain(dma.device, call: "dma_unmap_page", pendingCount: unmaps.count, line: line) else { return }
        guard !unmaps.isEmpty else {
            noteUntranslated(domain, line: line, what: "dma_unmap_page \(dma.device) dma_addr=\(hex(dma.dmaAddress.rawValue))")
            return
        }
        markTranslated(domain, line: line, what: "unmap events for dma_unmap_page")
        for pending in unmaps {
            if let early = pending.appliedTo {
                if early != domain {
                    violation(pending.line, "unmap iova=\(hex(pending.event.iova.rawValue)) was applied to \(early) for an IOVA reused on another CPU, but its dma_unmap_page (line \(line)) is for \(domain)")
                }
            } else {
                apply(pending, to: domain)
            }
        }
        reportStrays(unmaps.lazy.map { ($0.line, Span($0.event.iova.rawValue, $0.event.length)) }, event: "unmap",
            call: "dma_unmap_page \(dma.device)", line: line, targets: CollectionOfOne(Span(dma.dmaAddress.rawValue, max(dma.length, 1))))
        let ranges = unmaps.lazy.map { Span($0.event.iova.rawValue, $0.event.length) }
        if dma.length > 0, covered(dma.dmaAddress.rawValue, dma.length, by: ranges) != dma.length {
            violation(line, "dma_unmap_page \(dma.device) dma_addr=\(hex(dma.dmaAddress.rawValue)) size=\(dma.length) is not inside the unmap just before it (\(describe(ranges)))")
        }
    }

    /// The `unmap` that a `dma_free` or `dma_unmap_sg` announced.
    mutating func completeRelease(_ release: PendingRelease, unmap: UnmapEvent, line: Int) {
        let pending = PendingUnmap(line: line, event: unmap)
        let range = CollectionOfOne(Span(unmap.iova.rawValue, unmap.length))
        switch release {
        case .free(let freeLine, let free, let domain):
            guard let domain else {
                violation(line, "unmap after dma_free of \(free.device) (line \(freeLine)), which has no IOMMU domain")
                return
            }
            domains[domain.index].summary.dmaCallCount += 1
            markTranslated(domain, line: line, what: "unmap for dma_free")
            apply(pending, to: domain)
            if free.length > 0, covered(free.dmaAddress.rawValue, free.length, by: range) != free.length {
                violation(line, "unmap iova=\(hex(unmap.iova.rawValue)) size=\(unmap.length) does not cover the dma_free at line \(freeLine) (dma_addr=\(hex(free.dmaAddress.rawValue)) size=\(free.length))")
            }
        case .unmapSG(let unmapLine, let unmapSG, let domain):
            guard let domain else {
                violation(line, "unmap after dma_unmap_sg of \(unmapSG.device) (line \(unmapLine)), which has no IOMMU domain")
                return
            }
            domains[domain.index].summary.dmaCallCount += 1
            markTranslated(domain, line: line, what: "unmap for dma_unmap_sg")
            checkUnmapSGPhysAddresses(unmapSG, unmap: unmap, domain: domain, line: line, unmapLine: unmapLine)
            apply(pending, to: domain)
        }
    }

    /// Every `phys_addrs` entry of a `dma_unmap_sg` must be mapped somewhere in the range its
    /// `unmap` removes (checked through `translate`, before the unmap).
    mutating func checkUnmapSGPhysAddresses(_ unmapSG: DMAUnmapSGEvent, unmap: UnmapEvent, domain: ReplayDomainID, line: Int, unmapLine: Int) {
        let pageSize = UInt64(1) << UInt64(granuleShift)
        let pageCount = (unmap.length + pageSize - 1) >> UInt64(granuleShift)
        guard pageCount > 0, pageCount <= 1 << 16, !unmapSG.physAddresses.isEmpty else { return }
        var frames = Set<UInt64>()
        var iova = unmap.iova.rawValue & ~(pageSize - 1)
        for _ in 0..<pageCount {
            if let phys = backend.translate(domain, iova: IOVA(iova)) { frames.insert(phys.rawValue >> UInt64(granuleShift)) }
            iova &+= pageSize
        }
        for phys in unmapSG.physAddresses where !frames.contains(phys >> UInt64(granuleShift)) {
            violation(unmapLine, "dma_unmap_sg \(unmapSG.device) phys_addr \(hex(phys)) is not mapped in the range its unmap (line \(line), iova=\(hex(unmap.iova.rawValue)) size=\(unmap.length)) removes")
        }
    }

    /// Maps (or unmaps) a DMA call claimed that do not touch the call's own IOVA range: they
    /// belong to a call whose DMA event is missing.
    mutating func reportStrays(
        _ claimed: some Collection<(Int, Span)>, event: String, call: String, line: Int,
        targets: some Collection<Span>
    ) {
        for (claimLine, span) in claimed where span.length > 0 {
            if !targets.contains(where: { covered($0.first, $0.length, by: CollectionOfOne(span)) > 0 }) {
                violation(claimLine, "\(event) iova=\(hex(span.first)) size=\(span.length) was claimed by \(call) at line \(line) but is outside its IOVA range (its own DMA event is missing?)")
            }
        }
    }

    // MARK: - Interval helpers

    /// `first ..< first + length`, as in the trace (a 0 length is empty).
    struct Span {
        var first: UInt64
        var length: UInt64
        init(_ first: UInt64, _ length: UInt64) {
            self.first = first
            self.length = length
        }
        /// The inclusive last byte, saturating at 2^64 - 1.
        var last: UInt64 {
            let (sum, overflow) = first.addingReportingOverflow(length &- 1)
            return overflow ? UInt64.max : sum
        }
    }

    /// Bytes of `first ..< first + length` covered by the union of `ranges`.
    func covered(_ first: UInt64, _ length: UInt64, by ranges: some Collection<Span>) -> UInt64 {
        guard length > 0 else { return 0 }
        let query = Span(first, length)
        if ranges.count == 1, let range = ranges.first {
            guard range.length > 0 else { return 0 }
            let low = max(query.first, range.first)
            let high = min(query.last, range.last)
            return low <= high ? high &- low &+ 1 : 0
        }
        var pieces: [(UInt64, UInt64)] = []
        for range in ranges where range.length > 0 {
            let low = max(query.first, range.first)
            let high = min(query.last, range.last)
            if low <= high { pieces.append((low, high)) }
        }
        pieces.sort { $0.0 < $1.0 }
        var total: UInt64 = 0
        var next: UInt64 = 0  // first byte not yet counted
        var saturated = false
        for (low, high) in pieces where !saturated {
            let start = max(low, next)
            if start <= high { total &+= high &- start &+ 1 }
            if high == UInt64.max { saturated = true } else { next = max(next, high &+ 1) }
        }
        return total
    }

    func contains(_ first: UInt64, _ length: UInt64, _ address: UInt64) -> Bool {
        address >= first && address &- first < length
    }

    func describe(_ ranges: some Sequence<Span>) -> String {
        ranges.map { "iova=\(hex($0.first)) size=\($0.length)" }.joined(separator: ", ")
    }

    func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
}

// MARK: - Driving a whole trace

extension ReplayEngine {
    /// Replays everything `reader` yields, calling `progress` every `progressInterval` lines.
    public mutating func replay(
        _ reader: TraceReader, progressInterval: Int = 1 << 16, progress: (TraceReader, Int) -> Void = { _, _ in },
        observe: (TraceEvent) -> Void = { _ in }
    ) throws(TraceInputError) -> ReplayReport {
        var events = 0
        var nextProgress = progressInterval
        while let record = try reader.nextRecord() {
            if case .event(let e) = record { events += 1; observe(e) }
            process(record, line: reader.lineNumber)
            if reader.lineNumber >= nextProgress {
                nextProgress += progressInterval
                progress(reader, events)
            }
        }
        return finish(lineCount: reader.lineNumber, header: reader.header)
    }
}
