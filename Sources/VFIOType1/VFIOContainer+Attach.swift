import IOMMUBase
import IOMMUCore
import PhysicalMemory

// MARK: - Group attach and detach, valid IOVA list (Linux: vfio_iommu_type1_attach_group et al.)

extension VFIOContainer {
    typealias IOVAList = [(first: UInt64, last: UInt64)]

    /// Linux: `vfio_iommu_type1_attach_group()`. On failure nothing changed.
    func attachLocked(_ s: inout State, _ group: VFIOGroup) throws(IOMMUError) {
        if s.vaddrInvalidCount > 0 { throw IOMMUError(.busy) }
        switch group.kind {
        case .emulated(let serial):
            guard !s.emulatedGroups.contains(serial) else { throw IOMMUError(.invalidArgument) }
            s.emulatedGroups.append(serial)
            return
        case .iommu(let groupID):
            guard !s.domains.contains(where: { $0.groups.contains(groupID) }) else { throw IOMMUError(.invalidArgument) }
            guard let firstDevice = core.groupInfo(id: groupID)?.devices.first else { throw IOMMUError(.noSuchDevice) }
            let domain = try core.allocateDomain(type: .unmanaged, for: firstDevice)
            do throws(IOMMUError) {
                try core.attachGroup(domain, toGroup: groupID)
            } catch {
                try? core.freeDomain(domain)
                throw error
            }
            do throws(IOMMUError) {
                try finishAttachLocked(&s, groupID, domain)
            } catch {
                if core.groupInfo(id: groupID)?.domain === domain { core.detachGroup(domain, fromGroup: groupID) }
                try? core.freeDomain(domain)
                throw error
            }
        }
    }

    private func finishAttachLocked(_ s: inout State, _ groupID: Int, _ domain: IOMMUDomain) throws(IOMMUError) {
        let geometry = domain.geometry
        let start = geometry.apertureStart.rawValue
        let end = geometry.apertureEnd.rawValue
        // Aperture conflict with the current list and the existing mappings.
        if let first = s.iovaList.first, let last = s.iovaList.last {
            if start > last.last || end < first.first { throw IOMMUError(.overlapsReserved, address: start, length: end &- start &+ 1) }
            if start > first.first, let i = s.firstOverlap(first.first, start - 1) {
                throw IOMMUError(.overlapsReserved, address: s.mappings[i].iova, length: s.mappings[i].size)
            }
            if end < last.last, let i = s.firstOverlap(end + 1, last.last) {
                throw IOMMUError(.overlapsReserved, address: s.mappings[i].iova, length: s.mappings[i].size)
            }
        }
        // Reserved regions overlapping an existing mapping.
        let regions = (core.reservedRegions(ofGroup: groupID)?.regions ?? []).filter { $0.type != .directRelaxable }
        for region in regions where region.length != 0 {
            if let i = s.firstOverlap(region.start, region.last) {
                throw IOMMUError(.overlapsReserved, address: s.mappings[i].iova, length: s.mappings[i].size)
            }
        }
        var list = s.iovaList
        Self.resize(&list, start: start, end: end)
        try Self.exclude(&list, regions)
        // Interrupt isolation.
        if !configuration.allowUnsafeInterrupts, !vfio.hasIsolatedMSI(groupID) {
            warnings.warn(.vfioNoInterruptRemapping(group: groupID))
            throw IOMMUError(.notPermitted, address: UInt64(groupID))
        }
        // Domain sharing: a domain of the same driver takes the group if it can.
        for index in s.domains.indices where s.domains[index].domain.driver === domain.driver {
            core.detachGroup(domain, fromGroup: groupID)
            do throws(IOMMUError) {
                try core.attachGroup(s.domains[index].domain, toGroup: groupID)
                try? core.freeDomain(domain)
                s.domains[index].groups.append(groupID)
                s.iovaList = list
                s.nonPinnedGroups += 1
                return
            } catch {
                try core.attachGroup(domain, toGroup: groupID)
            }
        }
        try replayLocked(&s, into: domain)
        s.domains.append(DomainRecord(domain: domain, groups: [groupID]))
        updatePageSizeBitmapLocked(&s)
        s.iovaList = list
        s.nonPinnedGroups += 1
    }

    /// Maps every existing mapping into a new domain; pins mappings that were not IOMMU mapped
    /// (created while only emulated groups existed). Linux: `vfio_iommu_replay()`. On failure
    /// the mappings are as before (the caller frees the domain).
    private func replayLocked(_ s: inout State, into domain: IOMMUDomain) throws(IOMMUError) {
        var newlyPinned: [Int] = []
        var mappedRuns: [(UInt64, UInt64)] = []
        do throws(IOMMUError) {
            for index in s.mappings.indices {
                if s.mappings[index].iommuMapped {
                    let m = s.mappings[index]
                    for run in m.runs {
                        let iova = m.iova + run.offset
                        let length = UInt64(run.pages) << 12
                        try domain.map(iova: IOVA(iova), paddr: PhysAddr(run.paddr), length: length, prot: m.prot.union(.cache))
                        mappedRuns.append((iova, length))
                    }
                } else {
                    newlyPinned.append(index)
                    try pinAndMapLocked(&s.mappings[index], domains: [domain], disableHugepages: configuration.disableHugepages)
                    s.mappings[index].iommuMapped = true
                }
            }
        } catch {
            for (iova, length) in mappedRuns { _ = domain.unmap(iova: IOVA(iova), length: length) }
            for index in newlyPinned {
                unmapUnpinLocked(&s.mappings[index], domains: [domain])
            }
            throw error
        }
    }

    /// Linux: `vfio_iommu_type1_detach_group()`.
    func detachLocked(_ s: inout State, _ group: VFIOGroup) {
        switch group.kind {
        case .emulated(let serial):
            guard let index = s.emulatedGroups.firstIndex(of: serial) else { return }
            s.emulatedGroups.remove(at: index)
            if s.emulatedGroups.isEmpty, s.domains.isEmpty { removeAllMappingsLocked(&s) }
        case .iommu(let groupID):
            guard let index = s.domains.firstIndex(where: { $0.groups.contains(groupID) }) else { return }
            var list = s.iovaList
            let domain = s.domains[index].domain
            core.detachGroup(domain, fromGroup: groupID)
            s.domains[index].groups.removeAll { $0 == groupID }
            s.nonPinnedGroups = max(0, s.nonPinnedGroups - 1)
            if s.domains[index].groups.isEmpty {
                if s.domains.count == 1 {
                    if s.emulatedGroups.isEmpty {
                        removeAllMappingsLocked(&s)
                    } else {
                        for i in s.mappings.indices where s.mappings[i].iommuMapped {
                            unmapUnpinLocked(&s.mappings[i], domains: [domain])
                        }
                    }
                }
                try? core.freeDomain(domain)
                s.domains.remove(at: index)
                // Expand the aperture on the copy.
                var start: UInt64 = 0
                var end = UInt64.max
                for record in s.domains {
                    let geometry = record.domain.geometry
                    start = max(start, geometry.apertureStart.rawValue)
                    end = min(end, geometry.apertureEnd.rawValue)
                }
                if !list.isEmpty {
                    list[0].first = start
                    list[list.count - 1].last = end
                }
                updatePageSizeBitmapLocked(&s)
            }
            // Refresh: rebuild from the span, minus every remaining group's reserved regions.
            if let first = list.first, let last = list.last {
                var rebuilt: IOVAList = []
                Self.resize(&rebuilt, start: first.first, end: last.last)
                var regions: [ReservedRegion] = []
                for record in s.domains {
                    for g in record.groups { regions += core.reservedRegions(ofGroup: g)?.regions ?? [] }
                }
                regions = regions.filter { $0.type != .directRelaxable }
                do throws(IOMMUError) {
                    try Self.exclude(&rebuilt, regions)
                    s.iovaList = rebuilt
                } catch {
                    // Keep the old list (Linux: refresh failure frees the copy).
                }
            }
        }
    }

    /// Removes every mapping (Linux: `vfio_iommu_unmap_unpin_all` → `vfio_remove_dma`), reporting
    /// external pins, which stay pinned and charged.
    func removeAllMappingsLocked(_ s: inout State) {
        let domains = s.domains.map(\.domain)
        for index in s.mappings.indices {
            reportExternalPinsLocked(s.mappings[index])
            if s.mappings[index].iommuMapped { unmapUnpinLocked(&s.mappings[index], domains: domains) }
            if s.mappings[index].vaddrInvalid { s.vaddrInvalidCount -= 1 }
        }
        s.dmaAvail &+= UInt32(truncatingIfNeeded: s.mappings.count)
        s.mappings = []
    }

    func reportExternalPinsLocked(_ m: Mapping) {
        guard !m.pins.isEmpty else { return }
        var perDevice: [UInt32: (first: UInt64, pages: UInt64)] = [:]
        for (iova, pin) in m.pins {
            for (device, count) in pin.byDevice where count > 0 {
                let entry = perDevice[device] ?? (iova, 0)
                perDevice[device] = (min(entry.first, iova), entry.pages + 1)
            }
        }
        for device in perDevice.keys.sorted() {
            let entry = perDevice[device]!
            warnings.warn(.vfioPinnedPagesAtRelease(device: DeviceID(device), iova: IOVA(entry.first), pages: entry.pages))
        }
    }

    // MARK: - IOVA list helpers

    /// Intersects the list with `[start, end]`. Linux: `vfio_iommu_aper_resize()` (a range
    /// ending exactly at `start`, or starting exactly at `end`, is dropped: Linux's boundary quirk).
    static func resize(_ list: inout IOVAList, start: UInt64, end: UInt64) {
        if list.isEmpty {
            list = [(start, end)]
            return
        }
        while let node = list.first {
            if start < node.first { break }
            if start >= node.first && start < node.last {
                list[0].first = start
                break
            }
            list.removeFirst()
        }
        var kept: IOVAList = []
        for node in list {
            if end > node.last {
                kept.append(node)
            } else if end > node.first && end <= node.last {
                kept.append((node.first, end))
            }
        }
        list = kept
    }

    /// Carves the regions out of the list. Linux: `vfio_iommu_resv_exclude()`.
    /// - Throws: `invalidArgument` (EINVAL) if nothing is left.
    static func exclude(_ list: inout IOVAList, _ regions: [ReservedRegion]) throws(IOMMUError) {
        for region in regions where region.length != 0 {
            let first = region.start
            let last = region.last
            var output: IOVAList = []
            for node in list {
                if first > node.last || last < node.first {
                    output.append(node)
                    continue
                }
                if first > node.first { output.append((node.first, first - 1)) }
                if last < node.last { output.append((last + 1, node.last)) }
            }
            list = output
        }
        if list.isEmpty { throw IOMMUError(.invalidArgument) }
    }
}
