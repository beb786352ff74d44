import IOMMUBase
import IOMMUCore
import PhysicalMemory

// MARK: - MAP_DMA, UNMAP_DMA, GET_INFO, DIRTY_PAGES

extension VFIOContainer {
    /// Linux `VFIO_IOMMU_MAP_DMA` (`vfio_dma_do_map`), validation in Linux's order:
    ///
    /// 1. prot from `read`/`write`; both with `updateVaddr`, or neither without → EINVAL
    /// 2. (container lock) no IOMMU type set → EINVAL
    /// 3. size 0, or size/iova/vaddr not aligned to the smallest page → EINVAL
    /// 4. iova + size − 1 or vaddr + size − 1 wraps → EINVAL
    /// 5. `updateVaddr`: no mapping overlaps → ENOENT; not invalidated or not the same iova/size
    ///    → EINVAL; else the charge moves to `process` (ENOMEM over its limit), done.
    ///    Otherwise an overlapping mapping → EEXIST
    /// 6. no slot left (`dma_entry_limit`) → ENOSPC
    /// 7. not inside one valid IOVA range (non-empty list) → EINVAL
    /// 8. pin and map (EFAULT, ENOMEM from the locked-memory limit, domain errors); on failure
    ///    nothing is left behind.
    ///
    /// - Parameter process: the calling process (default: the container's).
    public func mapDMA(
        iova: IOVA, vaddr: VirtAddr, length: UInt64, read: Bool, write: Bool, updateVaddr: Bool = false,
        process: HostMemory? = nil
    ) throws(IOMMUError) {
        var prot: IOMMUProt = []
        if write { prot.insert(.write) }
        if read { prot.insert(.read) }
        if (!prot.isEmpty && updateVaddr) || (prot.isEmpty && !updateVaddr) {
            throw IOMMUError(.invalidArgument, address: iova.rawValue, length: length)
        }
        let caller = process ?? self.process
        try state.withLock { s throws(IOMMUError) in
            guard s.type != nil else { throw IOMMUError(.invalidArgument) }
            let pgsize = minimumPageSizeLocked(s, warn: true)
            let mask = pgsize - 1
            let iova = iova.rawValue
            let vaddr = vaddr.rawValue
            guard length != 0 else { throw IOMMUError(.zeroLength, address: iova) }
            guard length & mask == 0, iova & mask == 0, vaddr & mask == 0 else {
                throw IOMMUError(.unaligned, address: iova, length: length)
            }
            let (_, iovaWraps) = iova.addingReportingOverflow(length - 1)
            let (_, vaddrWraps) = vaddr.addingReportingOverflow(length - 1)
            guard !iovaWraps, !vaddrWraps else { throw IOMMUError(.invalidArgument, address: iova, length: length) }
            let last = iova + (length - 1)
            let existing = s.firstOverlap(iova, last)
            if updateVaddr {
                guard let index = existing else { throw IOMMUError(.notMapped, address: iova, length: length) }
                let m = s.mappings[index]
                guard m.vaddrInvalid, m.iova == iova, m.size == length else {
                    throw IOMMUError(.invalidArgument, address: iova, length: length)
                }
                if caller !== m.process, m.lockedPages > 0 {
                    do throws(IOMMUError) {
                        try caller.accountLocked(pages: m.lockedPages)
                    } catch {
                        warnings.warn(.vfioLockedMemoryLimitExceeded(limitBytes: caller.lockedMemoryLimit))
                        throw error
                    }
                    m.process.unaccountLocked(pages: m.lockedPages)
                }
                s.mappings[index].process = caller
                s.mappings[index].vaddr = vaddr
                s.mappings[index].vaddrInvalid = false
                s.vaddrInvalidCount -= 1
                return
            }
            if existing != nil { throw IOMMUError(.alreadyMapped, address: iova, length: length) }
            guard s.dmaAvail > 0 else { throw IOMMUError(.noIOVASpace, address: iova, length: length, code: .noSpace) }
            if !s.iovaList.isEmpty, !s.iovaList.contains(where: { iova >= $0.first && last <= $0.last }) {
                throw IOMMUError(.overlapsReserved, address: iova, length: length)
            }
            var mapping = Mapping(iova: iova, size: length, vaddr: vaddr, prot: prot, process: caller)
            if !s.domains.isEmpty {
                let domains = s.domains.map(\.domain)
                do throws(IOMMUError) {
                    try pinAndMapLocked(&mapping, domains: domains, disableHugepages: configuration.disableHugepages)
                } catch {
                    unmapUnpinLocked(&mapping, domains: domains)
                    throw error
                }
                mapping.iommuMapped = true
            }
            if s.dirtyTracking { mapping.dirty = [UInt64](repeating: 0, count: Int((length / pgsize + 63) / 64)) }
            s.dmaAvail -= 1
            let at = s.firstIndex(endingAtOrAfter: iova)
            s.mappings.insert(mapping, at: at)
        }
    }

    /// Linux `VFIO_IOMMU_UNMAP_DMA` (`vfio_dma_do_unmap`). Returns the bytes unmapped (for
    /// `updateVaddr`: the bytes invalidated).
    ///
    /// Validation order: `updateVaddr` with emulated groups → EBUSY; iova unaligned → EINVAL;
    /// `all` with iova or size ≠ 0 → EINVAL, else size 0, unaligned or wrapping → EINVAL; a dirty
    /// bitmap without tracking or with another page size → EINVAL; v2 (not `all`) request that
    /// bisects a mapping at either end → EINVAL.
    ///
    /// Semantics: v1 — a request starting inside a mapping unmaps nothing (size 0), and a
    /// request covering a mapping's start removes the whole mapping. Mappings with pages pinned
    /// by emulated-device drivers: every registered driver is notified once per round (no VFIO
    /// lock held) with the span to be unmapped, then everything is validated again; after
    /// `unmapNotifyRetries` (10) retries with pages still pinned the unmap fails with **EBUSY**,
    /// nothing is unmapped, and a `vfioUnmapBlockedByPinnedPages` warning names each driver
    /// and its pages (Linux BUGs). The unmap is all or nothing.
    @discardableResult
    public func unmapDMA(
        iova: IOVA, length: UInt64, all: Bool = false, updateVaddr: Bool = false, dirtyBitmap: VFIODirtyBitmap? = nil
    ) throws(IOMMUError) -> UInt64 {
        var notifications = 0
        while true {
            let outcome = try state.withLock { s throws(IOMMUError) -> UnmapOutcome in
                try unmapAttemptLocked(
                    &s, iova: iova.rawValue, length: length, all: all, updateVaddr: updateVaddr,
                    dirtyBitmap: dirtyBitmap, notifications: notifications)
            }
            switch outcome {
            case .done(let bytes): return bytes
            case .notify(let first, let span, let devices):
                for device in devices where !vfio.notifierFailNth.shouldFail() { device.handler(device, IOVA(first), span) }
                notifications += 1
            }
        }
    }

    enum UnmapOutcome {
        case done(UInt64)
        case notify(UInt64, UInt64, [VFIOEmulatedDevice])
    }

    private func unmapAttemptLocked(
        _ s: inout State, iova: UInt64, length: UInt64, all: Bool, updateVaddr: Bool, dirtyBitmap: VFIODirtyBitmap?,
        notifications: Int
    ) throws(IOMMUError) -> UnmapOutcome {
        guard s.type != nil else { throw IOMMUError(.invalidArgument) }
        if updateVaddr, !s.emulatedGroups.isEmpty { throw IOMMUError(.busy, address: iova, length: length) }
        let pgsize = minimumPageSizeLocked(s, warn: true)
        let mask = pgsize - 1
        guard iova & mask == 0 else { throw IOMMUError(.unaligned, address: iova, length: length) }
        var size = length
        if all {
            guard iova == 0, length == 0 else { throw IOMMUError(.invalidArgument, address: iova, length: length) }
            size = UInt64.max
        } else {
            guard size != 0 else { throw IOMMUError(.zeroLength, address: iova) }
            guard size & mask == 0 else { throw IOMMUError(.unaligned, address: iova, length: length) }
            guard !iova.addingReportingOverflow(size - 1).overflow else {
                throw IOMMUError(.invalidArgument, address: iova, length: length)
            }
        }
        if let bitmap = dirtyBitmap {
            guard s.dirtyTracking, bitmap.pageSize == pgsize else {
                throw IOMMUError(.invalidArgument, address: iova, length: length)
            }
        }
        let last = all ? UInt64.max - 1 : iova + (size - 1)
        if s.v2, !all {
            if let i = s.index(containing: iova), s.mappings[i].iova != iova {
                throw IOMMUError(.partialUnmap, address: iova, length: length)
            }
            if let i = s.index(containing: last), s.mappings[i].last != last {
                throw IOMMUError(.partialUnmap, address: iova, length: length)
            }
        }
        // The mappings this request removes.
        var selected: [Int] = []
        var index = s.firstIndex(endingAtOrAfter: iova)
        while index < s.mappings.count, s.mappings[index].iova <= last {
            if !s.v2, iova > s.mappings[index].iova { break }
            selected.append(index)
            index += 1
        }
        if updateVaddr {
            // Linux invalidates as it walks and undoes this call's invalidations when it meets
            // one that is already invalid; checking first gives the same end state.
            var invalidated: UInt64 = 0
            if let i = selected.first(where: { s.mappings[$0].vaddrInvalid }) {
                throw IOMMUError(.invalidArgument, address: s.mappings[i].iova, length: s.mappings[i].size)
            }
            for i in selected {
                s.mappings[i].vaddrInvalid = true
                invalidated &+= s.mappings[i].size
            }
            s.vaddrInvalidCount += selected.count
            return .done(invalidated)
        }
        let pinned = selected.filter { !s.mappings[$0].pins.isEmpty }
        if !pinned.isEmpty {
            if notifications > configuration.unmapNotifyRetries {
                for i in pinned { reportBlockedUnmapLocked(s.mappings[i], notifications: notifications) }
                throw IOMMUError(.busy, address: iova, length: length)
            }
            let first = s.mappings[selected.first!].iova
            let spanLast = s.mappings[selected.last!].last
            return .notify(first, spanLast &- first &+ 1, s.devices.values.map(\.device))
        }
        if let bitmap = dirtyBitmap {
            for i in selected { try copyDirtyBitsLocked(s, s.mappings[i], base: iova, pgsize: pgsize, into: bitmap) }
        }
        var unmapped: UInt64 = 0
        let domains = s.domains.map(\.domain)
        for i in selected.reversed() {
            unmapped &+= s.mappings[i].size
            if s.mappings[i].iommuMapped { unmapUnpinLocked(&s.mappings[i], domains: domains) }
            if s.mappings[i].vaddrInvalid { s.vaddrInvalidCount -= 1 }
            s.mappings.remove(at: i)
            s.dmaAvail += 1
        }
        return .done(unmapped)
    }

    func reportBlockedUnmapLocked(_ m: Mapping, notifications: Int) {
        var perDevice: [UInt32: (first: UInt64, pages: UInt64)] = [:]
        for (iova, pin) in m.pins {
            for (device, count) in pin.byDevice where count > 0 {
                let entry = perDevice[device] ?? (iova, 0)
                perDevice[device] = (min(entry.first, iova), entry.pages + 1)
            }
        }
        for device in perDevice.keys.sorted() {
            let entry = perDevice[device]!
            warnings.warn(.vfioUnmapBlockedByPinnedPages(
                device: DeviceID(device), iova: IOVA(entry.first), pages: entry.pages, notifications: notifications))
        }
    }

    // MARK: - Pinning and mapping (Linux: vfio_pin_map_dma, vfio_unmap_unpin)

    /// Pins the mapping's memory in physically contiguous runs, charges the locked memory and
    /// maps each run into every domain in one `map` call (so 2 MiB-contiguous memory becomes
    /// 2 MiB IOMMU blocks). Runs are appended to `m.runs` as they complete; on failure the
    /// caller undoes them with `unmapUnpinLocked`.
    func pinAndMapLocked(_ m: inout Mapping, domains: [IOMMUDomain], disableHugepages: Bool) throws(IOMMUError) {
        let write = m.prot.contains(.write)
        var offset: UInt64 = 0
        while offset < m.size {
            let va = VirtAddr(m.vaddr + offset)
            let remaining = (m.size - offset) >> 12
            let maxCount = disableHugepages ? 1 : Int(min(remaining, UInt64(Int.max)))
            var run: PinnedRun
            do throws(IOMMUError) {
                let (first, count) = try m.process.pinContiguous(va, maxCount: maxCount, write: write)
                run = PinnedRun(offset: offset, paddr: first.rawValue, pages: count, pfnmap: false, host: m.process)
            } catch {
                // Not pinnable: a VM_PFNMAP region is followed instead (never counted or unpinned).
                guard let region = m.process.region(containing: va), case .device = region.backing else { throw error }
                let paddr = try m.process.followPFNMap(va, write: write)
                let inRegion = (region.range.last.rawValue - va.rawValue + 1) >> 12
                let count = disableHugepages ? 1 : Int(min(remaining, inRegion))
                run = PinnedRun(offset: offset, paddr: paddr.rawValue, pages: count, pfnmap: true, host: m.process)
            }
            var charge: UInt64 = 0
            if !run.pfnmap {
                charge = UInt64(run.pages) - UInt64(externalPinsIn(m, run))
                if charge > 0 {
                    do throws(IOMMUError) {
                        try m.process.accountLocked(pages: charge)
                    } catch {
                        run.host.unpin(first: PhysAddr(run.paddr), count: run.pages)
                        warnings.warn(.vfioLockedMemoryLimitExceeded(limitBytes: m.process.lockedMemoryLimit))
                        throw error
                    }
                }
            }
            let iova = IOVA(m.iova + offset)
            let length = UInt64(run.pages) << 12
            for (k, domain) in domains.enumerated() {
                do throws(IOMMUError) {
                    try domain.map(iova: iova, paddr: PhysAddr(run.paddr), length: length, prot: m.prot.union(.cache))
                } catch {
                    for done in domains[..<k] { _ = done.unmap(iova: iova, length: length) }
                    if !run.pfnmap {
                        run.host.unpin(first: PhysAddr(run.paddr), count: run.pages)
                        if charge > 0 { m.process.unaccountLocked(pages: charge) }
                    }
                    throw error
                }
            }
            m.lockedPages += charge
            m.runs.append(run)
            offset += length
        }
    }

    func externalPinsIn(_ m: Mapping, _ run: PinnedRun) -> Int {
        guard !m.pins.isEmpty else { return 0 }
        let first = m.iova + run.offset
        let last = first + (UInt64(run.pages) << 12) - 1
        return m.pins.keys.reduce(0) { $0 + ($1 >= first && $1 <= last ? 1 : 0) }
    }

    /// Unmaps the mapping from `domains`, unpins its runs and removes their charge (pages still
    /// pinned by emulated-device drivers stay charged). Linux: `vfio_unmap_unpin()`.
    func unmapUnpinLocked(_ m: inout Mapping, domains: [IOMMUDomain]) {
        for run in m.runs {
            let iova = IOVA(m.iova + run.offset)
            let length = UInt64(run.pages) << 12
            for domain in domains {
                let done = domain.unmap(iova: iova, length: length)
                if done < length { warnings.warn(.vfioMissingTranslation(iova: IOVA(iova.rawValue + done))) }
            }
            guard !run.pfnmap else { continue }
            run.host.unpin(first: PhysAddr(run.paddr), count: run.pages)
            let uncharge = UInt64(run.pages) - UInt64(externalPinsIn(m, run))
            if uncharge > 0 {
                m.process.unaccountLocked(pages: uncharge)
                m.lockedPages -= uncharge
            }
        }
        m.runs = []
        m.iommuMapped = false
    }

    // MARK: - GET_INFO

    /// Linux `VFIO_IOMMU_GET_INFO`.
    /// - Throws: `invalidArgument` (EINVAL) when no IOMMU type is set.
    public func info() throws(IOMMUError) -> VFIOIOMMUInfo {
        try state.withLock { s throws(IOMMUError) in
            guard s.type != nil else { throw IOMMUError(.invalidArgument) }
            let bitmap = s.pgsizeBitmap
            return VFIOIOMMUInfo(
                pageSizes: bitmap,
                iovaRanges: s.iovaList.compactMap { IOVARange(first: IOVA($0.first), last: IOVA($0.last)) },
                dmaAvailable: s.dmaAvail,
                migrationPageSizes: bitmap == 0 ? 0 : UInt64(1) << UInt64(bitmap.trailingZeroBitCount),
                maxDirtyBitmapSize: VFIOUAPI.dirtyBitmapSizeMax)
        }
    }

    // MARK: - Dirty pages

    /// Linux `VFIO_IOMMU_DIRTY_PAGES` START. v1 → EACCES.
    public func startDirtyTracking() throws(IOMMUError) {
        try state.withLock { s throws(IOMMUError) in
            guard s.type != nil else { throw IOMMUError(.invalidArgument) }
            guard s.v2 else { throw IOMMUError(.notPermitted, code: .permissionDenied) }
            guard !s.dirtyTracking else { return }
            let pgsize = minimumPageSizeLocked(s)
            for i in s.mappings.indices {
                let m = s.mappings[i]
                var bits = [UInt64](repeating: 0, count: Int((m.size / pgsize + 63) / 64))
                for iova in m.pins.keys {
                    let bit = Int((iova - m.iova) / pgsize)
                    bits[bit / 64] |= 1 << UInt64(bit % 64)
                }
                s.mappings[i].dirty = bits
            }
            s.dirtyTracking = true
        }
    }

    /// Linux `VFIO_IOMMU_DIRTY_PAGES` STOP. v1 → EACCES.
    public func stopDirtyTracking() throws(IOMMUError) {
        try state.withLock { s throws(IOMMUError) in
            guard s.type != nil else { throw IOMMUError(.invalidArgument) }
            guard s.v2 else { throw IOMMUError(.notPermitted, code: .permissionDenied) }
            for i in s.mappings.indices { s.mappings[i].dirty = nil }
            s.dirtyTracking = false
        }
    }

    /// Linux `VFIO_IOMMU_DIRTY_PAGES` GET_BITMAP: writes the dirty bits of `[iova, iova+length)`
    /// into `bitmap` (in the calling process's memory).
    ///
    /// Order: v1 → EACCES; iova + length wraps → EINVAL; bitmap size check → EINVAL; page size
    /// ≠ smallest, iova unaligned, length 0 or unaligned → EINVAL; tracking off → EINVAL; the
    /// range bisects a mapping → EINVAL; copy failure → EFAULT.
    public func dirtyBitmap(iova: IOVA, length: UInt64, bitmap: VFIODirtyBitmap) throws(IOMMUError) {
        try state.withLock { s throws(IOMMUError) in
            guard s.type != nil else { throw IOMMUError(.invalidArgument) }
            guard s.v2 else { throw IOMMUError(.notPermitted, code: .permissionDenied) }
            let iova = iova.rawValue
            guard !iova.addingReportingOverflow(length).overflow else { throw IOMMUError(.invalidArgument, address: iova) }
            try Self.verifyBitmapSize(length: length, bitmap: bitmap)
            let pgsize = minimumPageSizeLocked(s)
            let mask = pgsize - 1
            guard bitmap.pageSize == pgsize, iova & mask == 0, length != 0, length & mask == 0 else {
                throw IOMMUError(.invalidArgument, address: iova, length: length)
            }
            guard s.dirtyTracking else { throw IOMMUError(.invalidArgument, address: iova, length: length) }
            let last = iova + (length - 1)
            if let i = s.index(containing: iova), s.mappings[i].iova != iova {
                throw IOMMUError(.partialUnmap, address: iova, length: length)
            }
            if let i = s.index(containing: last), s.mappings[i].last != last {
                throw IOMMUError(.partialUnmap, address: iova, length: length)
            }
            var index = s.firstIndex(endingAtOrAfter: iova)
            while index < s.mappings.count, s.mappings[index].iova <= last {
                try copyDirtyBitsLocked(s, s.mappings[index], base: iova, pgsize: pgsize, into: bitmap)
                // Re-arm: only pages still pinned stay dirty.
                var bits = [UInt64](repeating: 0, count: s.mappings[index].dirty?.count ?? 0)
                let m = s.mappings[index]
                for pinIOVA in m.pins.keys {
                    let bit = Int((pinIOVA - m.iova) / pgsize)
                    bits[bit / 64] |= 1 << UInt64(bit % 64)
                }
                s.mappings[index].dirty = bits
                index += 1
            }
        }
    }

    /// Linux: `verify_bitmap_size()` (with the page count from `length >> log2(pageSize)`).
    static func verifyBitmapSize(length: UInt64, bitmap: VFIODirtyBitmap) throws(IOMMUError) {
        guard bitmap.pageSize != 0 else { throw IOMMUError(.invalidArgument) }
        let pages = length >> UInt64(bitmap.pageSize.trailingZeroBitCount)
        guard pages != 0, bitmap.size != 0, bitmap.size <= VFIOUAPI.dirtyBitmapSizeMax else {
            throw IOMMUError(.invalidArgument, length: bitmap.size)
        }
        let needed = (pages + 63) / 64 * 8
        guard bitmap.size >= needed else { throw IOMMUError(.invalidArgument, length: bitmap.size) }
    }

    /// ORs one mapping's dirty bits into the user bitmap at bit offset (mapping.iova − base)/pgsize.
    /// Groups that cannot report dirtiness make every IOMMU-mapped page dirty.
    func copyDirtyBitsLocked(_ s: State, _ m: Mapping, base: UInt64, pgsize: UInt64, into bitmap: VFIODirtyBitmap) throws(IOMMUError) {
        let pages = Int(m.size / pgsize)
        let allDirty = s.nonPinnedGroups > 0 && m.iommuMapped
        let startBit = Int((m.iova - base) / pgsize)
        let firstByte = startBit / 8
        let lastByte = (startBit + pages - 1) / 8
        let address = VirtAddr(bitmap.data.rawValue + UInt64(firstByte))
        var bytes = try process.read(address, count: lastByte - firstByte + 1)
        for page in 0..<pages {
            let dirty = allDirty || ((m.dirty?[page / 64] ?? 0) >> UInt64(page % 64)) & 1 == 1
            guard dirty else { continue }
            let bit = startBit + page
            bytes[bit / 8 - firstByte] |= UInt8(1) << UInt8(bit % 8)
        }
        try process.write(address, bytes)
    }

    func markDirtyLocked(_ s: inout State, _ index: Int, iova: UInt64) {
        guard s.dirtyTracking, s.mappings[index].dirty != nil else { return }
        let pgsize = minimumPageSizeLocked(s)
        let bit = Int((iova - s.mappings[index].iova) / pgsize)
        s.mappings[index].dirty![bit / 64] |= 1 << UInt64(bit % 64)
    }
}
