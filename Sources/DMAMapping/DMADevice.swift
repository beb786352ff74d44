import IOMMUBase
import IOMMUCore
import IOVAAllocator
import PhysicalMemory
import Synchronization

/// One scatterlist element as the driver builds it (Linux: `struct scatterlist` before mapping).
public struct DMAScatterEntry: Hashable, Sendable {
    public var paddr: PhysAddr
    public var length: UInt64
    public init(paddr: PhysAddr, length: UInt64) {
        self.paddr = paddr
        self.length = length
    }
}

/// A mapped scatterlist: the DMA segments after coalescing (Linux: `sg_dma_address/len` of the
/// first `count` elements, as `dma_map_sg` returns them).
public struct DMAScatterMapping: Hashable, Sendable {
    public var segments: [(address: IOVA, length: UInt64)] { zip(addresses, lengths).map { ($0, $1) } }
    public var addresses: [IOVA]
    public var lengths: [UInt64]
    /// The elements the driver passed (needed to unmap, as Linux's `nents`).
    public var entries: [DMAScatterEntry]
    /// The IOVA range allocated for the whole list.
    public var iova: IOVA
    public var iovaLength: UInt64
}

/// A coherent buffer. Linux: `dma_alloc_coherent` (CPU address = the pages, DMA handle).
public struct DMACoherentBuffer: Hashable, Sendable {
    public var dmaAddress: IOVA
    public var size: UInt64
    /// The backing pages, in DMA address order.
    public var pages: [PhysAddr]
    public var pageSize: UInt64
}

/// A device's view of the DMA API: Linux `dma_map_*` on a `struct device` whose `dma_ops` are
/// `iommu_dma_ops`. Every call takes an explicit `cpu` (default: derived from the calling thread).
public final class DMADevice: Sendable {
    /// Linux `DMA_MAPPING_ERROR` (~0).
    public static var mappingErrorAddress: IOVA { IOVA(UInt64.max) }

    public let id: DeviceID
    public let name: String
    public let untrusted: Bool
    public let isPCI: Bool
    public let options: DMADeviceOptions
    /// nil: dma-direct (identity domain or no IOMMU): DMA addresses are physical addresses.
    public let cookie: DMACookie?
    let bouncePool: BouncePool?
    let frames: FrameAllocator?
    let cpuPageSize: PageSize
    let domain: IOMMUDomain?
    // Hot-path aliases of `cookie`, `domain` and the IOVA domain without reference counting
    // (retain/release was ~30% of a map+unmap pair); `cookie` keeps them alive.
    unowned(unsafe) let fastCookie: DMACookie?
    unowned(unsafe) let fastDomain: IOMMUDomain?
    unowned(unsafe) let fastIOVAD: IOVADomain?
    let cookieRef: Unmanaged<DMACookie>?
    let debugEnabled: Bool
    let lazy: Bool
    /// Aperture end when the domain forces its aperture (else `UInt64.max`), read once at setup.
    let apertureLimit: UInt64
    let granuleMask: UInt64
    let granuleShift: UInt64
    let clock: any DMAClock
    let sink: any WarningSink
    let linuxCompatible: Bool
    /// Linux `dev->iommu->pci_32bit_workaround` (sticky: cleared on the first failure).
    let pci32BitFirst: Atomic<Bool>

    init(api: DMAAPI, info: IOMMUDeviceInfo, cookie: DMACookie?, options: DMADeviceOptions, pci32BitFirst: Bool) {
        self.bouncePool = api.bouncePool
        self.frames = api.frames
        self.cpuPageSize = api.configuration.cpuPageSize
        self.id = info.id
        self.name = info.name
        self.untrusted = info.isUntrusted
        self.isPCI = info.pci != nil
        self.options = options
        self.cookie = cookie
        self.domain = cookie?.domain
        self.fastCookie = cookie
        self.cookieRef = cookie.map { Unmanaged.passUnretained($0) }
        self.debugEnabled = cookie?.debugEnabled ?? false
        self.fastDomain = cookie?.domain
        self.fastIOVAD = cookie?.iovad
        self.lazy = cookie?.lazy ?? false
        let geometry = cookie?.domain.geometry
        self.apertureLimit = geometry.map { $0.forceAperture ? $0.apertureEnd.rawValue : .max } ?? .max
        self.granuleMask = cookie?.granule.mask ?? 0
        self.granuleShift = UInt64(cookie?.granule.shift ?? 12)
        self.clock = api.clock
        self.sink = api.warnings
        self.linuxCompatible = api.configuration.linuxCompatible
        self.pci32BitFirst = Atomic(pci32BitFirst)
    }

    /// Whether the device still tries 32-bit IOVAs first.
    public var tries32BitFirst: Bool { pci32BitFirst.load(ordering: .relaxed) }
    /// Lazy (flush-queue) invalidation.
    public var isLazy: Bool { cookie?.lazy ?? false }

    @inline(__always)
    func resolveCPU(_ cpu: Int?) -> Int { cpu ?? fastIOVAD?.currentCPU ?? 0 }

    // MARK: - IOVA allocation (Linux: iommu_dma_alloc_iova / iommu_dma_free_iova)

    @inline(__always)
    func allocIOVA(size: UInt64, dmaLimit: UInt64, cpu: Int) -> UInt64 {
        guard let cookie else { return 0 }
        return allocIOVA(size: size, dmaLimit: dmaLimit, cpu: cpu, iovad: cookie.iovad)
    }

    @inline(__always)
    func allocIOVA(size: UInt64, dmaLimit: UInt64, cpu: Int, iovad: IOVADomain) -> UInt64 {
        let pages = size >> granuleShift
        var limit = dmaLimit
        if options.busDMALimit != 0 { limit = min(limit, options.busDMALimit) }
        limit = min(limit, apertureLimit)
        if limit > 0xFFFF_FFFF && pci32BitFirst.load(ordering: .relaxed) {
            if let pfn = try? iovad.fastAlloc(size: pages, limitPFN: 0xFFFF_FFFF >> granuleShift, flushCaches: false, cpu: cpu) {
                return pfn.rawValue << granuleShift
            }
            if pci32BitFirst.exchange(false, ordering: .relaxed) {
                sink.warn(.dmaUsingFullWidthAddresses(device: id, bits: 64 - limit.leadingZeroBitCount))
            }
        }
        guard let pfn = try? iovad.fastAlloc(size: pages, limitPFN: limit >> granuleShift, flushCaches: true, cpu: cpu) else { return 0 }
        return pfn.rawValue << granuleShift
    }

    // MARK: - Single mappings

    /// Maps `length` bytes at `paddr`. Linux: `dma_map_page_attrs` → `iommu_dma_map_page`.
    /// - Returns: the DMA address, or `mappingErrorAddress` (check with `mappingError`).
    public func mapPage(_ paddr: PhysAddr, length: UInt64, direction: DMADirection, cpu: Int? = nil) -> IOVA {
        guard let cookieRef else {
            return recordMapping(address: IOVA(paddr.rawValue), size: length, direction: direction, kind: .page, paddr: paddr, bounced: false, cpu: cpu ?? 0)
        }
        // Borrow cookie, IOVA domain and IOMMU domain once (+0), so the path below does no
        // reference counting (it was ~30% of a map+unmap pair).
        return cookieRef._withUnsafeGuaranteedRef { cookie in
            cookie.iovadRef._withUnsafeGuaranteedRef { iovad in
                cookie.domainRef._withUnsafeGuaranteedRef { domain in
                    mapPage(paddr, length: length, direction: direction, cpu: cpu ?? iovad.currentCPU, iovad: iovad, domain: domain)
                }
            }
        }
    }

    @inline(__always)
    func mapPage(_ paddr: PhysAddr, length: UInt64, direction: DMADirection, cpu: Int, iovad: IOVADomain, domain: IOMMUDomain) -> IOVA {
        guard length != 0, direction != .none else { return Self.mappingErrorAddress }
        var phys = paddr
        var bounced = false
        if untrusted && (paddr.rawValue | length) & granuleMask != 0 {
            guard let pool = bouncePool else {
                sink.warn(.dmaBounceBuffersInactive(device: id, paddr: paddr, size: length))
                return Self.mappingErrorAddress
            }
            guard let bounce = pool.map(original: paddr, length: length) else {
                sink.warn(.dmaBouncePoolFull(device: id, size: length))
                return Self.mappingErrorAddress
            }
            phys = bounce
            bounced = true
        }
        let offset = phys.rawValue & granuleMask
        let size = (length &+ offset &+ granuleMask) & ~granuleMask
        let iova = allocIOVA(size: size, dmaLimit: options.dmaMask, cpu: cpu, iovad: iovad)
        guard iova != 0 else {
            if bounced { bouncePool!.unmap(bounce: phys, copyBack: false) }
            return Self.mappingErrorAddress
        }
        do {
            try domain.map(iova: IOVA(iova), paddr: PhysAddr(phys.rawValue &- offset), length: size, prot: direction.prot())
        } catch {
            iovad.fastFree(pfn: PFN(iova >> granuleShift), size: size >> granuleShift, cpu: cpu)
            if bounced { bouncePool!.unmap(bounce: phys, copyBack: false) }
            return Self.mappingErrorAddress
        }
        return recordMapping(address: IOVA(iova &+ offset), size: length, direction: direction, kind: .page, paddr: paddr, bounced: bounced, cpu: cpu)
    }

    /// Linux: `dma_map_single` (a kernel virtual address; here its physical address).
    @inline(__always)
    public func mapSingle(_ paddr: PhysAddr, length: UInt64, direction: DMADirection, cpu: Int? = nil) -> IOVA {
        mapPage(paddr, length: length, direction: direction, cpu: cpu)
    }

    @inline(__always)
    func recordMapping(address: IOVA, size: UInt64, direction: DMADirection, kind: DMAMappingKind, paddr: PhysAddr, bounced: Bool, cpu: Int) -> IOVA {
        if debugEnabled, let debug = cookie?.debug {
            debug.add(DMAMappingRecord(
                device: id, address: address, size: size, direction: direction, kind: kind, paddr: paddr, bounced: bounced,
                errorChecked: kind != .page, mappedAt: clock.nanoseconds, mappedOnCPU: cpu))
        }
        return address
    }

    /// Linux: `dma_mapping_error()`. Also tells the debug layer the driver checked.
    @inline(__always)
    public func mappingError(_ address: IOVA) -> Bool {
        if address == Self.mappingErrorAddress { return true }
        if debugEnabled { cookie?.debug?.markChecked(address) }
        return false
    }

    /// Linux: `dma_unmap_page_attrs` → `iommu_dma_unmap_page`.
    public func unmapPage(_ address: IOVA, length: UInt64, direction: DMADirection, cpu: Int? = nil) {
        unmap(address, length: length, direction: direction, kind: .page, cpu: cpu)
    }

    /// Linux: `dma_unmap_single`.
    @inline(__always)
    public func unmapSingle(_ address: IOVA, length: UInt64, direction: DMADirection, cpu: Int? = nil) {
        unmap(address, length: length, direction: direction, kind: .page, cpu: cpu)
    }

    func unmap(_ address: IOVA, length: UInt64, direction: DMADirection, kind: DMAMappingKind, cpu: Int?) {
        guard let cookieRef else { return }
        cookieRef._withUnsafeGuaranteedRef { cookie in
            cookie.iovadRef._withUnsafeGuaranteedRef { iovad in
                cookie.domainRef._withUnsafeGuaranteedRef { domain in
                    unmap(address, length: length, direction: direction, kind: kind, cpu: cpu ?? iovad.currentCPU,
                          cookie: cookie, iovad: iovad, domain: domain)
                }
            }
        }
    }

    @inline(__always)
    func unmap(
        _ address: IOVA, length: UInt64, direction: DMADirection, kind: DMAMappingKind, cpu: Int,
        cookie: DMACookie, iovad: IOVADomain, domain: IOMMUDomain
    ) {
        var length = length
        if debugEnabled, let debug = cookie.debug {
            switch debug.unmap(device: id, address: address, size: length, direction: direction, kind: kind, cpu: cpu) {
            case .live(let record):
                if !linuxCompatible { length = record.size }   // do what the mapping needs, reported above
            case .unknownOverlapsLive:
                if !linuxCompatible { return }   // would tear down someone else's pages
            case .unknownPassDown:
                if !linuxCompatible { unmapUnknown(address, length: length, cpu: cpu); return }
            }
        }
        var bounce: PhysAddr?
        if let pool = bouncePool, let phys = domain.iovaToPhys(address), pool.contains(phys) { bounce = phys }
        unmapIOVA(address, length: length, cpu: cpu, cookie: cookie, iovad: iovad, domain: domain)
        if let bounce { bouncePool!.unmap(bounce: bounce, copyBack: direction.deviceWrites) }
    }

    /// Linux: `__iommu_dma_unmap`, with IOMMUKit's handling of an incomplete unmap.
    @inline(__always)
    func unmapIOVA(_ address: IOVA, length: UInt64, cpu: Int, cookie: DMACookie, iovad: IOVADomain, domain: IOMMUDomain) {
        let offset = address.rawValue & granuleMask
        let iova = address.rawValue &- offset
        let size = (length &+ offset &+ granuleMask) & ~granuleMask
        var gather = IOTLBGather(queued: lazy)
        let unmapped = domain.unmapFast(iova: IOVA(iova), length: size, gather: &gather)
        let pfn = iova >> granuleShift
        let pages = size >> granuleShift
        if unmapped != size {
            sink.warn(.dmaUnmapIncomplete(device: id, iova: IOVA(iova), size: size, unmapped: unmapped))
            if !linuxCompatible {
                domain.iotlbSync(&gather)
                if let node = iovad.find(PFN(pfn)), node.first.rawValue == pfn {
                    // A real allocation whose pages may still be mapped: never hand it out again.
                    sink.warn(.dmaIOVAQuarantined(device: id, iova: IOVA(iova), size: size))
                } else {
                    iovad.fastFree(pfn: PFN(pfn), size: pages, cpu: cpu)   // the IOVA layer reports it
                }
                return
            }
        }
        let now = clock.nanoseconds
        if lazy {
            cookie.queue(pfn: pfn, pages: pages, cpu: cpu, unmappedAt: now)
        } else {
            domain.iotlbSync(&gather)
            cookie.staleWindows.record(clock.nanoseconds &- now)
            iovad.fastFree(pfn: PFN(pfn), size: pages, cpu: cpu)
        }
    }

    /// An unmap the debug layer does not know and that overlaps no live mapping: let the page
    /// table and the IOVA allocator see it (both report), change nothing that is in use.
    func unmapUnknown(_ address: IOVA, length: UInt64, cpu: Int) {
        guard let cookie, let domain, length != 0 else { return }
        let offset = address.rawValue & granuleMask
        let iova = address.rawValue &- offset
        let size = (length &+ offset &+ granuleMask) & ~granuleMask
        var gather = IOTLBGather()
        let unmapped = domain.unmapFast(iova: IOVA(iova), length: size, gather: &gather)
        domain.iotlbSync(&gather)
        if unmapped != size { sink.warn(.dmaUnmapIncomplete(device: id, iova: IOVA(iova), size: size, unmapped: unmapped)) }
        let pfn = iova >> granuleShift
        // Still allocated (waiting in a flush queue or cache after its real unmap): leave it alone.
        if cookie.iovad.find(PFN(pfn)) == nil {
            cookie.iovad.fastFree(pfn: PFN(pfn), size: size >> granuleShift, cpu: cpu)
        }
    }

    // MARK: - Scatterlists (Linux: iommu_dma_map_sg / __finalise_sg / iommu_dma_unmap_sg)

    /// Maps a scatterlist into one IOVA range and coalesces the result as Linux does.
    /// - Returns: nil on failure (Linux returns a negative errno).
    public func mapSG(_ entries: [DMAScatterEntry], direction: DMADirection, cpu: Int? = nil) -> DMAScatterMapping? {
        guard !entries.isEmpty, direction != .none else { return nil }
        let cpu = resolveCPU(cpu)
        guard let cookie, let domain else {
            let mapping = DMAScatterMapping(
                addresses: entries.map { IOVA($0.paddr.rawValue) }, lengths: entries.map(\.length), entries: entries,
                iova: IOVA(entries[0].paddr.rawValue), iovaLength: 0)
            return mapping
        }
        if untrusted && entries.contains(where: { ($0.paddr.rawValue | $0.length) & granuleMask != 0 }) {
            // Linux bounces element by element (iommu_dma_map_sg_swiotlb): one mapping per element.
            var addresses: [IOVA] = []
            for e in entries {
                let a = mapPage(e.paddr, length: e.length, direction: direction, cpu: cpu)
                if a == Self.mappingErrorAddress {
                    for (i, done) in addresses.enumerated() { unmapPage(done, length: entries[i].length, direction: direction, cpu: cpu) }
                    return nil
                }
                _ = mappingError(a)
                addresses.append(a)
            }
            return DMAScatterMapping(addresses: addresses, lengths: entries.map(\.length), entries: entries, iova: addresses[0], iovaLength: 0)
        }
        let mask = granuleMask
        let boundary = options.segmentBoundaryMask
        // Layout: each element padded to whole granules; pad the previous element so that an
        // element that would cross a segment boundary starts on it.
        var offsets: [UInt64] = []
        var paddedLengths: [UInt64] = []
        var iovaLength: UInt64 = 0
        for e in entries {
            let off = e.paddr.rawValue & mask
            let padded = (e.length + off + mask) & ~mask
            let pad = (boundary &- iovaLength &+ 1) & boundary
            if pad != 0 && pad < padded &- 1 && !paddedLengths.isEmpty {
                paddedLengths[paddedLengths.count - 1] += pad
                iovaLength += pad
            }
            offsets.append(off)
            paddedLengths.append(padded)
            iovaLength += padded
        }
        let iova = allocIOVA(size: iovaLength, dmaLimit: options.dmaMask, cpu: cpu)
        guard iova != 0 else { return nil }
        var cursor = iova
        var mappedOK = true
        for (i, e) in entries.enumerated() {
            // As Linux, the padding is mapped too (the previous element's length grew by it), so
            // the range has no holes and one unmap removes it all.
            do {
                try domain.map(
                    iova: IOVA(cursor), paddr: PhysAddr(e.paddr.rawValue - offsets[i]), length: paddedLengths[i], prot: direction.prot())
            } catch {
                mappedOK = false
                break
            }
            cursor += paddedLengths[i]
        }
        guard mappedOK else {
            var gather = IOTLBGather()
            _ = domain.unmapFast(iova: IOVA(iova), length: iovaLength, gather: &gather)
            domain.iotlbSync(&gather)
            cookie.iovad.fastFree(pfn: PFN(iova >> granuleShift), size: iovaLength >> granuleShift, cpu: cpu)
            return nil
        }
        // __finalise_sg: merge an element into the current segment when it starts at offset 0,
        // the current segment does not start on a boundary... (Linux's rule) and fits max size.
        var addresses: [IOVA] = []
        var lengths: [UInt64] = []
        var dmaAddress = iova
        var currentLength: UInt64 = 0
        for (i, e) in entries.enumerated() {
            let off = offsets[i]
            // 32-bit unsigned and wrapping as in Linux (`unsigned int` max_len/cur_len/s_length):
            // a segment already longer than the maximum (an element over it) makes the
            // difference huge, so the next element merges. (It trapped here before.)
            if currentLength != 0 && off == 0 && dmaAddress & boundary != 0
                && UInt32(truncatingIfNeeded: options.maxSegmentSize) &- UInt32(truncatingIfNeeded: currentLength)
                    >= UInt32(truncatingIfNeeded: e.length) {
                currentLength += e.length
                lengths[lengths.count - 1] = currentLength
            } else {
                addresses.append(IOVA(dmaAddress + off))
                lengths.append(e.length)
                currentLength = e.length
            }
            dmaAddress += paddedLengths[i]
            if e.length + off < paddedLengths[i] { currentLength = 0 }
        }
        let mapping = DMAScatterMapping(addresses: addresses, lengths: lengths, entries: entries, iova: IOVA(iova), iovaLength: iovaLength)
        _ = recordMapping(address: IOVA(iova), size: iovaLength, direction: direction, kind: .scatterGather, paddr: entries[0].paddr, bounced: false, cpu: cpu)
        return mapping
    }

    /// Linux: `dma_unmap_sg` → `iommu_dma_unmap_sg`: one unmap of the whole IOVA range.
    public func unmapSG(_ mapping: DMAScatterMapping, direction: DMADirection, cpu: Int? = nil) {
        if cookie == nil { return }
        if mapping.iovaLength == 0 {   // bounced element by element
            for (i, a) in mapping.addresses.enumerated() { unmapPage(a, length: mapping.entries[i].length, direction: direction, cpu: cpu) }
            return
        }
        unmap(mapping.iova, length: mapping.iovaLength, direction: direction, kind: .scatterGather, cpu: cpu)
    }

    // MARK: - Coherent (Linux: iommu_dma_alloc / iommu_dma_free)

    /// Allocates zeroed pages mapped bidirectionally below the coherent DMA mask.
    /// - Returns: nil on failure (no frame allocator, out of memory, out of IOVA space).
    public func allocCoherent(size: UInt64, cpu: Int? = nil) -> DMACoherentBuffer? {
        guard size != 0, let frames = frames else { return nil }
        let cpu = resolveCPU(cpu)
        let unit = max(cpuPageSize.bytes, granuleMask + 1)
        let unitSize = PageSize(bytes: unit)!
        let total = (size + unit - 1) / unit * unit
        var pages: [PhysAddr] = []
        for _ in 0..<(total / unit) {
            guard let p = try? frames.allocate(unitSize) else {
                for q in pages { frames.free(q, unitSize) }
                return nil
            }
            try? frames.memory.fill(p, length: unit, with: 0)
            pages.append(p)
        }
        guard let cookie, let domain else {
            return DMACoherentBuffer(dmaAddress: IOVA(pages[0].rawValue), size: size, pages: pages, pageSize: unit)
        }
        let iova = allocIOVA(size: total, dmaLimit: options.coherentDMAMask, cpu: cpu)
        guard iova != 0 else {
            for q in pages { frames.free(q, unitSize) }
            return nil
        }
        do {
            _ = try domain.mapSG(
                iova: IOVA(iova), entries: pages.map { ScatterEntry(paddr: $0, length: unit) }, prot: DMADirection.bidirectional.prot())
        } catch {
            cookie.iovad.fastFree(pfn: PFN(iova >> granuleShift), size: total >> granuleShift, cpu: cpu)
            for q in pages { frames.free(q, unitSize) }
            return nil
        }
        _ = recordMapping(address: IOVA(iova), size: size, direction: .bidirectional, kind: .coherent, paddr: pages[0], bounced: false, cpu: cpu)
        return DMACoherentBuffer(dmaAddress: IOVA(iova), size: size, pages: pages, pageSize: unit)
    }

    /// Linux: `dma_free_coherent`: unmap (queued in lazy mode), then free the pages.
    public func freeCoherent(_ buffer: DMACoherentBuffer, cpu: Int? = nil) {
        guard let frames = frames else { return }
        let total = UInt64(buffer.pages.count) * buffer.pageSize
        if cookie != nil {
            unmap(buffer.dmaAddress, length: cookie?.debug == nil ? total : buffer.size, direction: .bidirectional, kind: .coherent, cpu: cpu)
        }
        let unitSize = PageSize(bytes: buffer.pageSize)!
        for p in buffer.pages { frames.free(p, unitSize) }
    }

    // MARK: - Sync (Linux: iommu_dma_sync_single_for_cpu/device, sg variants)

    public func syncSingleForCPU(_ address: IOVA, length: UInt64, direction: DMADirection) {
        sync(address, length: length, direction: direction, forDevice: false)
    }

    public func syncSingleForDevice(_ address: IOVA, length: UInt64, direction: DMADirection) {
        sync(address, length: length, direction: direction, forDevice: true)
    }

    public func syncSGForCPU(_ mapping: DMAScatterMapping, direction: DMADirection) {
        for (a, l) in zip(mapping.addresses, mapping.lengths) { sync(a, length: l, direction: direction, forDevice: false) }
    }

    public func syncSGForDevice(_ mapping: DMAScatterMapping, direction: DMADirection) {
        for (a, l) in zip(mapping.addresses, mapping.lengths) { sync(a, length: l, direction: direction, forDevice: true) }
    }

    func sync(_ address: IOVA, length: UInt64, direction: DMADirection, forDevice: Bool) {
        cookie?.debug?.sync(device: id, address: address, size: length, direction: direction, forDevice: forDevice)
        guard let pool = bouncePool, let domain, let phys = domain.iovaToPhys(address), pool.contains(phys) else { return }
        if forDevice ? direction.deviceReads : direction.deviceWrites {
            pool.sync(bounce: PhysAddr(phys.rawValue & ~granuleMask), toDevice: forDevice)
        }
    }

    // MARK: - Inspection

    /// The debug layer's live mappings of this device.
    public var liveMappings: [DMAMappingRecord] { cookie?.debug?.liveMappings().filter { $0.device == id } ?? [] }

    /// History of the mapping covering `iova`: the live one, or the most recently unmapped one.
    public func mappingHistory(of iova: IOVA) -> (live: DMAMappingRecord?, unmapped: DMAMappingRecord?) {
        cookie?.debug?.history(of: iova.rawValue) ?? (nil, nil)
    }
}
