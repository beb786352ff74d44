import Synchronization
import IOMMUBase

/// One element of a scatterlist handed to `IOMMUDomain.mapSG`.
@frozen
public struct ScatterEntry: Hashable, Sendable {
    public var paddr: PhysAddr
    public var length: UInt64
    /// A peer-to-peer bus address: already has a DMA address, `mapSG` skips it.
    /// Linux: `sg_dma_is_bus_address()`.
    public var isBusAddress: Bool

    @inlinable
    public init(paddr: PhysAddr, length: UInt64, isBusAddress: Bool = false) {
        self.paddr = paddr
        self.length = length
        self.isBusAddress = isBusAddress
    }
}

/// A translation context devices can be attached to: blocked, identity, or a page table.
///
/// Linux: `struct iommu_domain` plus `iommu_map()`, `iommu_unmap()`, `iommu_map_sg()`,
/// `iommu_iova_to_phys()` and `report_iommu_fault()`.
///
/// The core creates domains (default domains at probe, blocking domains for DMA ownership, and
/// user domains through `IOMMUCore.allocateDomain`); the driver supplies the `ops`. Map and
/// unmap take no core lock: like Linux, concurrent callers must use disjoint ranges, and the
/// driver's ops synchronise the page table.
public final class IOMMUDomain: Sendable, CustomStringConvertible {
    /// The domain type. It changes only from DMA to DMA-FQ in place (the sysfs `type` switch);
    /// the paging bit never changes.
    public var type: IOMMUDomainType { IOMMUDomainType(rawValue: typeBits.load(ordering: .relaxed)) }
    private let typeBits: Atomic<UInt32>
    /// A number unique among the domains of one core, for messages and tests.
    public let serial: UInt64
    /// The driver side: page table and TLB.
    public let ops: any IOMMUDomainOps
    /// The driver that allocated the domain.
    public let driver: any IOMMUDriver

    @usableFromInline let pageSizeBits: Atomic<UInt64>
    private let geometryState: IOMMUMutex<DomainGeometry>
    private let largePagesAllowed = Atomic<Bool>(false)
    private let finalisedFlag = Atomic<Bool>(false)
    private let freedFlag = Atomic<Bool>(false)
    private let faultHandler = IOMMUMutex<IOMMUFaultHandler?>(nil)
    private let faultCounter = Atomic<UInt64>(0)
    @usableFromInline let trace: any IOMMUTraceSink
    @usableFromInline let warnings: any WarningSink

    init(
        type: IOMMUDomainType, serial: UInt64, ops: any IOMMUDomainOps, driver: any IOMMUDriver,
        trace: any IOMMUTraceSink, warnings: any WarningSink
    ) {
        self.typeBits = Atomic(type.rawValue)
        self.serial = serial
        self.ops = ops
        self.driver = driver
        self.trace = trace
        self.warnings = warnings
        self.pageSizeBits = Atomic(type.isPaging ? driver.pageSizes.rawValue : 0)
        self.geometryState = IOMMUMutex(DomainGeometry())
    }

    // MARK: - Configuration (the driver's finalise step, the user's opt-in)

    /// Converts a strict DMA domain to a flush-queue one in place. Linux: the DMA → DMA-FQ path
    /// of `iommu_group_store_type()`.
    func convertToFlushQueue() {
        precondition(type == .dma, "only a DMA domain converts to DMA-FQ in place")
        typeBits.store(IOMMUDomainType.dmaFQ.rawValue, ordering: .relaxed)
    }

    /// The page sizes map/unmap may use. Linux: `domain->pgsize_bitmap`.
    public var pageSizes: PageSizeBitmap { PageSizeBitmap(rawValue: pageSizeBits.load(ordering: .acquiring)) }

    /// Sets the page sizes; for the driver's `finaliseDomain`.
    public func setPageSizes(_ sizes: PageSizeBitmap) {
        pageSizeBits.store(sizes.rawValue, ordering: .releasing)
    }

    /// The IOVA window. Linux: `domain->geometry`.
    public var geometry: DomainGeometry { geometryState.withLock { $0 } }

    /// Sets the IOVA window; for the driver's `finaliseDomain`.
    public func setGeometry(_ geometry: DomainGeometry) { geometryState.withLock { $0 = geometry } }

    /// The explicit opt-in that lets a *trusted* device attach although the smallest IOMMU page is
    /// larger than the CPU page. Untrusted devices never get the exemption.
    ///
    /// Linux (proposal): `__IOMMU_DOMAIN_LARGE_PAGES`.
    public var allowsLargePages: Bool {
        get { largePagesAllowed.load(ordering: .relaxed) }
        set { largePagesAllowed.store(newValue, ordering: .relaxed) }
    }

    /// True once the driver's `finaliseDomain` ran successfully.
    public var isFinalised: Bool { finalisedFlag.load(ordering: .acquiring) }

    func markFinalised() { finalisedFlag.store(true, ordering: .releasing) }

    /// True once the domain has been freed.
    public var isFreed: Bool { freedFlag.load(ordering: .acquiring) }

    /// Frees the driver side once. Returns false if it was already freed.
    @discardableResult
    func freeOnce() -> Bool {
        let (exchanged, _) = freedFlag.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing)
        if exchanged { ops.free() }
        return exchanged
    }

    // MARK: - Map

    /// Maps `[iova, iova + length)` to `[paddr, paddr + length)`, split into the largest pages the
    /// domain supports, then lets the driver sync new mappings.
    ///
    /// Linux: `iommu_map()` (= `__iommu_map()` + `iotlb_sync_map`). A length of 0 is a successful
    /// no-op (a `map` trace event with size 0 is still emitted). On a failure half-way, everything
    /// this call mapped is unmapped again (an `unmap` event is emitted, no `map` event) and the
    /// driver's error is thrown.
    ///
    /// - Throws: `invalidArgument` (EINVAL) for a non-paging (identity/blocked) domain;
    ///   `noSuchDevice` (ENODEV) for a domain with no page sizes; `unaligned` (EINVAL, with an
    ///   `unalignedMap` warning) if iova, paddr or length is not a multiple of the smallest page;
    ///   `lengthOverflow` if the range passes 2^64; or the driver's error.
    /// - Complexity: O(number of same-size page runs), no allocation in the core.
    public func map(iova: IOVA, paddr: PhysAddr, length: UInt64, prot: IOMMUProt) throws(IOMMUError) {
        try mapWithoutSync(iova: iova, paddr: paddr, length: length, prot: prot)
        do throws(IOMMUError) {
            try ops.iotlbSyncMap(iova: iova, length: length)
        } catch {
            _ = unmap(iova: iova, length: length)
            throw error
        }
    }

    /// Linux: `__iommu_map()`.
    @usableFromInline
    func mapWithoutSync(iova: IOVA, paddr: PhysAddr, length: UInt64, prot: IOMMUProt) throws(IOMMUError) {
        // Linux 6.12 tests PAGING before the ops/bitmap check, so identity/blocked give EINVAL.
        guard type.isPaging else {
            throw IOMMUError(.invalidArgument, address: iova.rawValue, length: length)
        }
        let bitmap = pageSizes
        guard let smallest = bitmap.smallest else {
            throw IOMMUError(.noSuchDevice, address: iova.rawValue, length: length)
        }
        guard (iova.rawValue | paddr.rawValue | length) & smallest.mask == 0 else {
            warnings.warn(.unalignedMap(iova: iova, paddr: paddr, size: length, minPageSize: smallest.bytes))
            throw IOMMUError(.unaligned, address: iova.rawValue, length: length)
        }
        if length != 0 {
            // Differs from Linux, which would let the addresses wrap: refuse a range past 2^64.
            guard iova.adding(length &- 1) != nil, paddr.adding(length &- 1) != nil else {
                throw IOMMUError(.lengthOverflow, address: iova.rawValue, length: length)
            }
        }
        var remaining = length
        var currentIOVA = iova.rawValue
        var currentPaddr = paddr.rawValue
        var failure: IOMMUError?
        while remaining != 0 {
            guard
                let split = IOMMUPageSizeSplit.split(
                    bitmap: bitmap, iova: currentIOVA, paddr: currentPaddr, size: remaining)
            else {
                preconditionFailure("iommu_pgsize found no page size for a validated range")
            }
            var mapped: UInt64 = 0
            do throws(IOMMUError) {
                try ops.mapPages(
                    iova: IOVA(currentIOVA), paddr: PhysAddr(currentPaddr), pageSize: split.pageSize,
                    count: split.count, prot: prot, mapped: &mapped)
            } catch {
                failure = error
            }
            precondition(mapped <= remaining, "mapPages reported more bytes than asked")
            remaining &-= mapped  // <= remaining by the precondition
            if failure != nil { break }
            precondition(mapped != 0, "mapPages made no progress and reported no error")
            // Cannot pass 2^64 except by reaching it exactly at the end (checked above).
            currentIOVA &+= mapped
            currentPaddr &+= mapped
        }
        if let failure {
            _ = unmap(iova: iova, length: length &- remaining)
            throw failure
        }
        if trace.isEnabled { trace.record(.map(iova: iova.rawValue, paddr: paddr.rawValue, size: length)) }
    }

    /// Maps a scatterlist at consecutive IOVAs from `iova`, coalescing physically contiguous
    /// elements into one map call each and skipping bus-address (P2P) elements; syncs once.
    ///
    /// Linux: `iommu_map_sg()`. On any failure everything mapped by this call is unmapped and the
    /// error is thrown.
    /// - Returns: the total bytes mapped.
    /// - Throws: as `map`.
    public func mapSG<Entries: Sequence<ScatterEntry>>(
        iova: IOVA, entries: Entries, prot: IOMMUProt
    ) throws(IOMMUError) -> UInt64 {
        var mapped: UInt64 = 0
        var runStart: UInt64 = 0
        var runLength: UInt64 = 0
        do throws(IOMMUError) {
            for entry in entries {
                if runLength != 0 && entry.paddr.rawValue != runStart &+ runLength {
                    try mapWithoutSync(
                        iova: IOVA(iova.rawValue &+ mapped), paddr: PhysAddr(runStart), length: runLength, prot: prot)
                    mapped &+= runLength
                    runLength = 0
                }
                if entry.isBusAddress { continue }
                if runLength != 0 {
                    runLength &+= entry.length
                } else {
                    runLength = entry.length
                    runStart = entry.paddr.rawValue
                }
            }
            if runLength != 0 {
                try mapWithoutSync(
                    iova: IOVA(iova.rawValue &+ mapped), paddr: PhysAddr(runStart), length: runLength, prot: prot)
                mapped &+= runLength
            }
            try ops.iotlbSyncMap(iova: iova, length: mapped)
        } catch {
            _ = unmap(iova: iova, length: mapped)
            throw error
        }
        return mapped
    }

    // MARK: - Unmap

    /// Unmaps `[iova, iova + length)` and invalidates the TLB before returning.
    ///
    /// Linux: `iommu_unmap()`. Stops at the first hole.
    /// - Returns: the bytes unmapped (0 for a non-paging domain, an unaligned request — with an
    ///   `unalignedUnmap` warning — or a hole at `iova`); may exceed `length` if the driver tore
    ///   down a larger page.
    public func unmap(iova: IOVA, length: UInt64) -> UInt64 {
        var gather = IOTLBGather()
        let unmapped = unmapFast(iova: iova, length: length, gather: &gather)
        iotlbSync(&gather)
        return unmapped
    }

    /// Like `unmap`, but leaves the invalidation in `gather` for the caller to `iotlbSync`.
    ///
    /// Linux: `iommu_unmap_fast()` (= `__iommu_unmap()`).
    public func unmapFast(iova: IOVA, length: UInt64, gather: inout IOTLBGather) -> UInt64 {
        guard type.isPaging, let smallest = pageSizes.smallest else { return 0 }
        let bitmap = pageSizes
        guard (iova.rawValue | length) & smallest.mask == 0 else {
            warnings.warn(.unalignedUnmap(iova: iova, size: length, minPageSize: smallest.bytes))
            return 0
        }
        var unmapped: UInt64 = 0
        var current = iova.rawValue
        while unmapped < length {
            guard
                let split = IOMMUPageSizeSplit.split(
                    bitmap: bitmap, iova: current, paddr: current, size: length &- unmapped)
            else {
                preconditionFailure("iommu_pgsize found no page size for a validated range")
            }
            let step = ops.unmapPages(iova: IOVA(current), pageSize: split.pageSize, count: split.count, gather: &gather)
            if step == 0 { break }
            current &+= step
            let (sum, overflow) = unmapped.addingReportingOverflow(step)
            unmapped = overflow ? UInt64.max : sum
        }
        if trace.isEnabled { trace.record(.unmap(iova: iova.rawValue, size: length, unmappedSize: unmapped)) }
        return unmapped
    }

    /// Flushes what `gather` collected, then empties it. Linux: `iommu_iotlb_sync()`.
    public func iotlbSync(_ gather: inout IOTLBGather) {
        ops.iotlbSync(&gather)
        gather = IOTLBGather()
    }

    /// Invalidates the domain's whole TLB. Linux: `iommu_flush_iotlb_all()`.
    public func flushIOTLBAll() { ops.flushIOTLBAll() }

    // MARK: - Translation

    /// What `iova` translates to: itself for identity, `nil` for blocked, else the driver's walk.
    ///
    /// Linux: `iommu_iova_to_phys()` (0 there for "nothing").
    public func iovaToPhys(_ iova: IOVA) -> PhysAddr? {
        if type == .identity { return PhysAddr(iova.rawValue) }
        if type == .blocked { return nil }
        return ops.iovaToPhys(iova)
    }

    // MARK: - Faults

    /// Installs (or with `nil` removes) the fault handler. Linux: `iommu_set_fault_handler()`.
    public func setFaultHandler(_ handler: IOMMUFaultHandler?) {
        faultHandler.withLock { $0 = handler }
    }

    /// Faults reported on this domain so far.
    public var faultCount: UInt64 { faultCounter.load(ordering: .relaxed) }

    /// Delivers a fault to the handler and to the trace (`io_page_fault`, emitted whether or not a
    /// handler is installed).
    ///
    /// Linux: `report_iommu_fault()`. Usually reached through `IOMMUCore.reportFault`, which
    /// finds the device's domain and name.
    /// - Returns: `nil` if the handler handled it (Linux 0), the handler's errno, or
    ///   `notImplemented` (ENOSYS) when no handler is installed.
    public func reportFault(_ fault: IOMMUFault, deviceName: String) -> Errno? {
        faultCounter.wrappingAdd(1, ordering: .relaxed)
        let handler = faultHandler.withLock { $0 }
        let result: Errno? = handler.map { $0(fault) } ?? .notImplemented
        if trace.isEnabled {
            trace.record(.ioPageFault(driver: driver.name, device: deviceName, iova: fault.iova.rawValue, flags: fault.flags))
        }
        return result
    }

    public var description: String { "domain#\(serial) (\(type))" }
}
