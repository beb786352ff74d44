import IOMMUBase
import IOMMUCore

extension VirtioIOMMUDevice {
    // MARK: - Byte interface

    /// Processes one request: parses the device-readable bytes, applies it, writes the
    /// device-writable bytes, and returns the used length.
    ///
    /// Framing (reference §4): an unrecognised type, a PROBE when F_PROBE is not offered, or a
    /// request whose tail cannot be located (fewer than 4 readable bytes, or fewer than 4
    /// writable bytes) is returned unwritten with used length 0. Otherwise the status is written
    /// and the used length is the full writable size Linux expects: 4 (tail at the start of the
    /// writable part) for ATTACH/DETACH/MAP/UNMAP; for PROBE `probe_size + 4` with the tail at
    /// `+probe_size`, or — when the properties area is smaller than `probe_size` — INVAL with
    /// the tail in the last 4 bytes and the whole buffer as used length. A body shorter than
    /// its type's layout is INVAL; extra readable bytes are ignored. Reserved tail bytes are
    /// zeroed. A failed request changes no state.
    public func handleRequest(readable: UnsafeRawBufferPointer, writable: UnsafeMutableRawBufferPointer) -> UInt32 {
        guard readable.count >= 4, writable.count >= 4,
            let type = VirtioIOMMURequestType(rawValue: readable[0])
        else {
            state.withLock { $0.stats.requestsUnanswered &+= 1 }
            return 0
        }
        let c = configuration
        var tailOffset = 0
        var used = 4
        var status: VirtioIOMMUStatus
        if type == .probe {
            guard c.offeredFeatures.contains(.probe) else {
                state.withLock { $0.stats.requestsUnanswered &+= 1 }
                return 0
            }
            let areaLength = writable.count - 4
            let probeSize = Int(c.probeSize)
            writable.baseAddress!.initializeMemory(as: UInt8.self, repeating: 0, count: min(areaLength, probeSize))
            if areaLength >= probeSize {
                tailOffset = probeSize
                used = probeSize + 4
                status = readable.count >= type.readableLength
                    ? probe(endpointID: loadLE32(readable, 4), area: UnsafeMutableRawBufferPointer(rebasing: writable[0..<probeSize]))
                    : .invalid
            } else {
                tailOffset = areaLength
                used = writable.count
                status = .invalid
            }
        } else if readable.count < type.readableLength {
            status = .invalid
        } else {
            // One lock for the request and its counter (the MAP/UNMAP hot path).
            status = state.withLock { s in
                let status: VirtioIOMMUStatus = switch type {
                case .attach:
                    attach(&s, domainID: loadLE32(readable, 4), endpointID: loadLE32(readable, 8),
                           flags: loadLE32(readable, 12), reserved: loadLE32(readable, 16))
                case .detach:
                    detach(&s, domainID: loadLE32(readable, 4), endpointID: loadLE32(readable, 8))
                case .map:
                    map(&s, domainID: loadLE32(readable, 4), first: loadLE64(readable, 8), last: loadLE64(readable, 16),
                        phys: loadLE64(readable, 24), flags: loadLE32(readable, 32))
                case .unmap:
                    unmap(&s, domainID: loadLE32(readable, 4), first: loadLE64(readable, 8), last: loadLE64(readable, 16))
                case .probe:
                    .invalid  // handled above
                }
                s.stats.requestsByStatus[Int(status.rawValue)] &+= 1
                return status
            }
            storeLE32(writable, tailOffset, UInt32(status.rawValue))  // status + zeroed reserved[3]
            return UInt32(used)
        }
        storeLE32(writable, tailOffset, UInt32(status.rawValue))
        state.withLock { $0.stats.requestsByStatus[Int(status.rawValue)] &+= 1 }
        return UInt32(used)
    }

    /// Processes a request given as arrays (tests, tools). Returns the written bytes (the whole
    /// writable area, zero where not written) and the used length.
    public func handleRequest(readable: [UInt8], writableLength: Int) -> (written: [UInt8], usedLength: UInt32) {
        var written = [UInt8](repeating: 0, count: writableLength)
        let used = readable.withUnsafeBytes { r in
            written.withUnsafeMutableBytes { w in handleRequest(readable: r, writable: w) }
        }
        return (written, used)
    }

    // MARK: - ATTACH

    func attach(_ s: inout VirtioDeviceState, domainID: UInt32, endpointID: UInt32, flags: UInt32, reserved: UInt32)
        -> VirtioIOMMUStatus
    {
        guard reserved == 0 else { return .invalid }
        let knownFlags = s.negotiated.contains(.bypassConfig) ? VirtioIOMMUWire.attachFlagBypass : 0
        guard flags & ~knownFlags == 0 else { return .invalid }
        guard let endpoint = s.endpoints[endpointID] else { return .noEntry }
        if configuration.offeredFeatures.contains(.domainRange) {
            guard domainID >= configuration.domainFirst && domainID <= configuration.domainLast else { return .range }
        }
        let wantsBypass = flags & VirtioIOMMUWire.attachFlagBypass != 0
        let current = endpoint.domain.flatMap { s.domains[$0] }
        let currentDies = current.map { $0.endpoints.count == 1 } ?? false
        var target = s.domains[domainID]
        if let existing = target {
            guard existing.isBypass == wantsBypass else { return .invalid }
            if existing === current {
                // "Detach then attach": a shared domain keeps its other endpoints and mappings;
                // as the sole endpoint the domain dies and comes back empty (E27).
                if !currentDies { return .ok }
                target = nil
            } else if !wantsBypass {
                guard existing.spec == endpoint.table else { return .unsupported }
                for region in endpoint.regions where existing.mappings.overlaps(region.first, region.last) {
                    return .unsupported
                }
            }
        }
        var created: VirtioDomainRecord?
        if target == nil {
            guard s.domains.count - (currentDies ? 1 : 0) < configuration.limits.maxDomains else { return .noMemory }
            do {
                created = try makeDomain(id: domainID, bypass: wantsBypass, for: endpoint)
            } catch {
                return Self.status(for: error)
            }
            target = created
        }
        let newDomain = target!
        if let current, currentDies, let error = unmapConsumers(current.mappings.items[...], s.consumers) {
            if let created { destroyDomain(created) }
            _ = error
            return .deviceError
        }
        // Commit: nothing below can fail for a consistent state.
        if let current {
            core.detachDevice(current.iommuDomain, from: endpoint.device)
            current.endpoints.removeAll { $0 == endpointID }
            if currentDies {
                s.domains[current.id] = nil
                destroyDomain(current)
            }
        }
        do {
            try core.attachDevice(newDomain.iommuDomain, to: endpoint.device)
        } catch {
            // The core refused (should not happen); the endpoint stays detached.
            if let created { destroyDomain(created) }
            s.endpoints[endpointID]!.domain = nil
            return .deviceError
        }
        newDomain.endpoints.append(endpointID)
        s.domains[domainID] = newDomain
        s.endpoints[endpointID]!.domain = domainID
        return .ok
    }

    // MARK: - DETACH

    func detach(_ s: inout VirtioDeviceState, domainID: UInt32, endpointID: UInt32) -> VirtioIOMMUStatus {
        guard let endpoint = s.endpoints[endpointID] else { return .noEntry }
        guard let currentID = endpoint.domain, currentID == domainID, let domain = s.domains[domainID] else {
            return .invalid
        }
        let dies = domain.endpoints.count == 1
        if dies, unmapConsumers(domain.mappings.items[...], s.consumers) != nil { return .deviceError }
        core.detachDevice(domain.iommuDomain, from: endpoint.device)
        domain.endpoints.removeAll { $0 == endpointID }
        s.endpoints[endpointID]!.domain = nil
        if dies {
            s.domains[domainID] = nil
            destroyDomain(domain)
        }
        return .ok
    }

    // MARK: - MAP

    func map(_ s: inout VirtioDeviceState, domainID: UInt32, first: UInt64, last: UInt64, phys: UInt64, flags: UInt32)
        -> VirtioIOMMUStatus
    {
        guard s.negotiated.contains(.mapUnmap) else { return .unsupported }
        var knownFlags = VirtioIOMMUWire.mapFlagRead | VirtioIOMMUWire.mapFlagWrite
        if s.negotiated.contains(.mmio) { knownFlags |= VirtioIOMMUWire.mapFlagMMIO }
        guard flags & ~knownFlags == 0 else { return .invalid }
        guard let domain = s.domains[domainID] else { return .noEntry }
        guard !domain.isBypass else { return .invalid }
        guard last >= first else { return .invalid }
        let mask = configuration.granule &- 1
        guard first & mask == 0, phys & mask == 0, (last &+ 1) & mask == 0 else { return .range }
        guard first >= configuration.inputFirst, last <= configuration.inputLast, last <= domain.lastIOVA else { return .range }
        let size = last &- first &+ 1  // input range ends below 2^48: no wrap
        guard !phys.addingReportingOverflow(size &- 1).overflow else { return .range }
        guard !domain.mappings.overlaps(first, last) else { return .invalid }
        for endpointID in domain.endpoints {
            for region in s.endpoints[endpointID]!.regions where region.first <= last && first <= region.last {
                return .invalid
            }
        }
        guard domain.mappings.items.count < configuration.limits.maxMappingsPerDomain else { return .noMemory }
        let mapping = VirtioMapping(domain: domainID, first: first, last: last, phys: phys, flags: flags)
        let prot = mapping.prot
        if !prot.isEmpty {
            do {
                try domain.iommuDomain.map(iova: IOVA(first), paddr: PhysAddr(phys), length: size, prot: prot)
            } catch {
                return Self.status(for: error)
            }
        }
        for (index, consumer) in s.consumers.enumerated() {
            do { try consumer.applyMap(mapping) } catch {
                for undo in s.consumers[..<index].reversed() { try? undo.applyUnmap(mapping) }
                if !prot.isEmpty { _ = domain.iommuDomain.unmap(iova: IOVA(first), length: size) }
                return Self.status(for: error)
            }
        }
        domain.mappings.insert(mapping)
        return .ok
    }

    // MARK: - UNMAP

    func unmap(_ s: inout VirtioDeviceState, domainID: UInt32, first: UInt64, last: UInt64) -> VirtioIOMMUStatus {
        guard s.negotiated.contains(.mapUnmap) else { return .unsupported }
        guard let domain = s.domains[domainID] else { return .noEntry }
        guard !domain.isBypass else { return .invalid }
        guard last >= first else { return .invalid }
        let range = domain.mappings.intersecting(first, last)
        guard !range.isEmpty else { return .ok }  // holes only (E16)
        // Indices, not a slice: a live slice would make the removal below copy the array.
        for index in range {
            let mapping = domain.mappings.items[index]
            if mapping.first < first || mapping.last > last { return .range }
        }
        if !s.consumers.isEmpty, let error = unmapConsumers(domain.mappings.items[range], s.consumers) {
            return Self.status(for: error)
        }
        for index in range {
            let mapping = domain.mappings.items[index]
            if !mapping.prot.isEmpty {
                _ = domain.iommuDomain.unmap(iova: IOVA(mapping.first), length: mapping.last &- mapping.first &+ 1)
            }
        }
        domain.mappings.items.removeSubrange(range)
        return .ok
    }

    // MARK: - PROBE

    func probe(endpointID: UInt32, area: UnsafeMutableRawBufferPointer) -> VirtioIOMMUStatus {
        guard let regions = state.withLock({ $0.endpoints[endpointID]?.regions }) else { return .noEntry }
        guard regions.count * VirtioIOMMUWire.resvMemPropertyLength <= area.count else { return .invalid }
        var offset = 0
        for region in regions {
            storeLE16(area, offset, VirtioIOMMUWire.probeTypeResvMem)
            storeLE16(area, offset + 2, UInt16(VirtioIOMMUWire.resvMemPropertyLength - 4))
            area[offset + 4] = region.subtype
            storeLE64(area, offset + 8, region.first)
            storeLE64(area, offset + 16, region.last)
            offset += VirtioIOMMUWire.resvMemPropertyLength
        }
        return .ok
    }

    // MARK: - Status mapping

    /// The status for an IOMMUKit error (page table, core or consumer).
    static func status(for error: IOMMUError) -> VirtioIOMMUStatus {
        switch error.reason {
        case .outOfMemory, .noIOVASpace, .lockedMemoryLimit: .noMemory
        case .addressOutOfRange: .range
        default: .deviceError
        }
    }
}
