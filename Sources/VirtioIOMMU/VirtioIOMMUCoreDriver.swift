import IOMMUBase
import IOMMUCore
import IOPageTable
import PhysicalMemory
import Synchronization

/// The `IOMMUDriver` behind the "virtio-iommu" IOMMU instance in an `IOMMUCore`.
///
/// Every endpoint is its own group. Paging (`unmanaged`) domains own a real `AnyIOPageTable`
/// whose format and granule the device chooses per domain; identity (bypass domains) and
/// blocked domains map nothing. The core's view of an endpoint: its group is claimed by the
/// device (DMA ownership), so an unattached endpoint sits on the blocking domain and an attached
/// one on its virtio domain's `IOMMUDomain`.
final class VirtioIOMMUCoreDriver: IOMMUDriver {
    let name = "virtio-iommu"
    let frames: FrameAllocator
    let warnings: any WarningSink
    let pageSizes: PageSizeBitmap
    /// Format, granule and address sizes of the next paging domain; set by the device (under its
    /// own lock) right before it asks the core to allocate a domain.
    let pending = IOMMUMutex<(spec: VirtioTableSpec, configuration: PageTableConfiguration)?>(nil)
    /// Reserved regions per core device (the driver's `get_resv_regions`).
    let regions = IOMMUMutex<[DeviceID: [ReservedRegion]]>([:])

    init(frames: FrameAllocator, warnings: any WarningSink, pageSizes: PageSizeBitmap) {
        self.frames = frames
        self.warnings = warnings
        self.pageSizes = pageSizes
    }

    func probeDevice(_ device: IOMMUDeviceInfo) throws(IOMMUError) {}
    func releaseDevice(_ device: IOMMUDeviceInfo) {}
    func deviceGroup(_ device: IOMMUDeviceInfo) throws(IOMMUError) -> IOMMUGroupChoice { .newGroup }
    func defaultDomainType(for device: IOMMUDeviceInfo) -> IOMMUDomainType? { .identity }

    func allocateDomain(type: IOMMUDomainType, for device: IOMMUDeviceInfo?) throws(IOMMUError) -> any IOMMUDomainOps {
        guard type.isPaging else { return NonPagingDomainOps() }
        guard let pending = pending.withLock({ $0 }) else { throw IOMMUError(.notSupported) }
        let table = try AnyIOPageTable(
            kind: pending.spec.kind, granule: pending.spec.granule,
            configuration: pending.configuration,
            frames: frames, warnings: warnings)
        return VirtioDomainOps(table: table, spec: pending.spec)
    }

    func finaliseDomain(_ domain: IOMMUDomain, for device: IOMMUDeviceInfo) throws(IOMMUError) {
        guard let ops = domain.ops as? VirtioDomainOps else { return }
        let geometry = ops.table.geometry
        domain.setPageSizes(geometry.pageSizes)
        domain.setGeometry(DomainGeometry(
            apertureStart: IOVA(0), apertureEnd: IOVA((UInt64(1) << UInt64(geometry.ias)) &- 1), forceAperture: true))
        // The guest chose its page size from page_size_mask; the host table may use larger pages.
        domain.allowsLargePages = true
    }

    func attachDevice(_ device: IOMMUDeviceInfo, to domain: IOMMUDomain) throws(IOMMUError) {}

    func reservedRegions(for device: IOMMUDeviceInfo) -> [ReservedRegion] {
        regions.withLock { $0[device.id] ?? [] }
    }
}

/// The domain ops of a paging virtio domain: a real page table.
final class VirtioDomainOps: IOMMUDomainOps, @unchecked Sendable {
    // @unchecked: the table's operations are non-mutating and safe for disjoint ranges
    // (IOPageTable's concurrency contract); the device serialises its own calls.
    let table: AnyIOPageTable
    let spec: VirtioTableSpec

    init(table: consuming AnyIOPageTable, spec: VirtioTableSpec) {
        self.table = table
        self.spec = spec
    }

    func mapPages(
        iova: IOVA, paddr: PhysAddr, pageSize: PageSize, count: UInt64, prot: IOMMUProt, mapped: inout UInt64
    ) throws(IOMMUError) {
        var invalidator = NoTLBInvalidator()
        var done: UInt64 = 0
        while done < count {
            let offset = done &<< UInt64(pageSize.shift)  // < length of this call's range
            let bytes = try table.map(
                iova: IOVA(iova.rawValue &+ offset), paddr: PhysAddr(paddr.rawValue &+ offset), pageSize: pageSize,
                count: Int(count &- done), prot: prot, invalidator: &invalidator)
            mapped &+= bytes
            done &+= bytes &>> UInt64(pageSize.shift)
        }
    }

    func unmapPages(iova: IOVA, pageSize: PageSize, count: UInt64, gather: inout IOTLBGather) -> UInt64 {
        var invalidator = NoTLBInvalidator()
        var done: UInt64 = 0
        while done < count {
            let offset = done &<< UInt64(pageSize.shift)
            let bytes = table.unmap(
                iova: IOVA(iova.rawValue &+ offset), pageSize: pageSize, count: Int(count &- done),
                gather: &gather, invalidator: &invalidator)
            if bytes == 0 { break }
            done &+= bytes &>> UInt64(pageSize.shift)
        }
        return done &<< UInt64(pageSize.shift)
    }

    func iovaToPhys(_ iova: IOVA) -> PhysAddr? { table.iovaToPhys(iova) }
    func free() {}
}
