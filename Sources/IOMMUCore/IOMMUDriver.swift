import IOMMUBase

/// The group a driver wants a device in. The core turns the choice into a group and owns every
/// reference count, so a driver cannot forget (or double) a reference.
///
/// Linux: the return value of `ops->device_group()`, which had to be a *referenced* group; a
/// driver returning an existing group without taking a reference was the refcount bug of the
/// probe-deferral thread. Here that mistake cannot be written.
public enum IOMMUGroupChoice: Hashable, Sendable {
    /// A new group for this device alone. Linux: `generic_device_group()`.
    case newGroup
    /// The PCI rules: DMA aliases, ACS isolation, multi-function peers. Linux: `pci_device_group()`.
    /// For a non-PCI device this is `newGroup`.
    case pciDefault
    /// The group an already-probed device is in (e.g. devices sharing stream IDs).
    case sameGroupAs(DeviceID)
    /// The existing group with this ID.
    case existingGroup(id: Int)
}

/// An IOMMU driver: what a hardware model (SMMU, DART) implements for the core.
///
/// Linux: `struct iommu_ops` (device-level ops). The per-domain ops are `IOMMUDomainOps`.
///
/// **Calling context.** The core calls every method here while holding its registry lock (as
/// Linux holds the group mutex): a driver must not call back into `IOMMUCore`'s registry API
/// (`addDevice`, `attachDevice`, …) from these methods. It may read and configure the
/// `IOMMUDomain` it is given (`setPageSizes`, `setGeometry`, `allowsLargePages`).
///
/// **Class-bound.** Drivers are reference types (`AnyObject`): the core stores them as
/// `any IOMMUDriver`, which for a class-bound protocol is a pointer plus a witness table —
/// no box, no allocation, one indirect call per op, like Linux's ops pointer.
public protocol IOMMUDriver: AnyObject, Sendable {
    /// The driver name printed in `io_page_fault` (e.g. "arm-smmu", "apple-dart").
    var name: String { get }

    /// The page sizes of a new domain before `finaliseDomain`. Linux: `ops->pgsize_bitmap`.
    var pageSizes: PageSizeBitmap { get }

    /// Takes on a device whose firmware names this driver's instance (allocate stream-map
    /// entries, master data).
    ///
    /// Linux: `ops->probe_device()`.
    /// - Throws: `probeDeferred` (EPROBE_DEFER) if the instance is not ready: the core retries on
    ///   the next IOMMU registration or `retryDeferredProbes()`; any other error fails the probe
    ///   (e.g. `noSuchDevice` for a device that is not behind this IOMMU, `invalidArgument` for a
    ///   stream ID out of range).
    func probeDevice(_ device: IOMMUDeviceInfo) throws(IOMMUError)

    /// Forgets a device: it was removed, or its probe is being unwound. The stream-map entries
    /// revert to the instance's default (fault or bypass). Not called on driver unbind.
    ///
    /// Linux: `ops->release_device()`.
    func releaseDevice(_ device: IOMMUDeviceInfo)

    /// Which group the device belongs to. Linux: `ops->device_group()`.
    func deviceGroup(_ device: IOMMUDeviceInfo) throws(IOMMUError) -> IOMMUGroupChoice

    /// The default domain type this device requires, or `nil` for no requirement (the global
    /// default). Linux: `ops->def_domain_type()` (0 = no requirement).
    func defaultDomainType(for device: IOMMUDeviceInfo) -> IOMMUDomainType?

    /// Allocates the driver side of a domain of `type` (blocked, identity, unmanaged, DMA,
    /// DMA-FQ), for `device` if the allocation is for a particular one.
    ///
    /// Linux: `ops->domain_alloc()` / `domain_alloc_paging()` / `identity_domain` /
    /// `blocked_domain`.
    /// - Throws: `notSupported` for a type the driver does not do; `outOfMemory`.
    func allocateDomain(type: IOMMUDomainType, for device: IOMMUDeviceInfo?) throws(IOMMUError) -> any IOMMUDomainOps

    /// Fixes a domain's page sizes and aperture for the instance `device` is behind; called once,
    /// before the first `attachDevice` of a domain. Call `domain.setPageSizes` /
    /// `domain.setGeometry` here. Linux: the context set-up drivers do on first attach
    /// (`arm_smmu_init_domain_context`, `apple_dart_finalize_domain`).
    /// - Throws: e.g. `invalidArgument` if the instance cannot translate for this domain.
    func finaliseDomain(_ domain: IOMMUDomain, for device: IOMMUDeviceInfo) throws(IOMMUError)

    /// Points the device's streams at `domain`. Linux: `ops->attach_dev()` / `domain->ops->attach_dev`.
    func attachDevice(_ device: IOMMUDeviceInfo, to domain: IOMMUDomain) throws(IOMMUError)

    /// Undoes an attach when there is no previous domain to return to (rollback of a failed
    /// first attach). The streams must then block DMA. Default: nothing.
    func detachDevice(_ device: IOMMUDeviceInfo, from domain: IOMMUDomain)

    /// The device's reserved regions known to the driver (e.g. the SMMU's software MSI window).
    /// The core appends the device's firmware regions. Linux: `ops->get_resv_regions()`.
    func reservedRegions(for device: IOMMUDeviceInfo) -> [ReservedRegion]

    /// Whether the IOMMU behind `device` has a capability. Linux: `ops->capable()`.
    func capable(_ capability: IOMMUCapability, device: IOMMUDeviceInfo) -> Bool

    /// Called at the end of a successful probe. Linux: `ops->probe_finalize()`. Default: nothing.
    func probeFinalize(_ device: IOMMUDeviceInfo)
}

extension IOMMUDriver {
    public func detachDevice(_ device: IOMMUDeviceInfo, from domain: IOMMUDomain) {}
    public func reservedRegions(for device: IOMMUDeviceInfo) -> [ReservedRegion] { [] }
    public func capable(_ capability: IOMMUCapability, device: IOMMUDeviceInfo) -> Bool { false }
    public func probeFinalize(_ device: IOMMUDeviceInfo) {}
    public func defaultDomainType(for device: IOMMUDeviceInfo) -> IOMMUDomainType? { nil }
    public func finaliseDomain(_ domain: IOMMUDomain, for device: IOMMUDeviceInfo) throws(IOMMUError) {}
}

/// The driver side of one domain: its page table and TLB.
///
/// Linux: `struct iommu_domain_ops`. This is the hot path: `IOMMUDomain.map`/`unmap` call
/// `mapPages`/`unmapPages` once per same-size run of pages, with no allocation in the core.
///
/// **Threading.** May be called from many threads at once for disjoint ranges (as Linux's
/// `iommu_map` may), and concurrently with the hardware walking the table; the implementation
/// synchronises itself.
///
/// **Class-bound** for the same reason as `IOMMUDriver`: stored as `any IOMMUDomainOps` in the
/// core's `IOMMUDomain`, it costs a pointer and a witness table, never a box.
public protocol IOMMUDomainOps: AnyObject, Sendable {
    /// Maps `count` pages of `pageSize` from `iova` to `paddr`.
    ///
    /// Linux: `map_pages()`. `mapped` must be set to the bytes actually mapped, also when
    /// throwing, so that the core can roll back exactly that much.
    /// - Throws: `alreadyMapped` (EEXIST), `outOfMemory`, `addressOutOfRange`, …
    func mapPages(
        iova: IOVA, paddr: PhysAddr, pageSize: PageSize, count: UInt64, prot: IOMMUProt, mapped: inout UInt64
    ) throws(IOMMUError)

    /// Unmaps up to `count` pages of `pageSize` from `iova`, adding the range to `gather`.
    ///
    /// Linux: `unmap_pages()`. Returns the bytes unmapped; 0 means nothing is mapped at `iova`
    /// (the core stops there). May return more than asked if a larger page was torn down.
    func unmapPages(iova: IOVA, pageSize: PageSize, count: UInt64, gather: inout IOTLBGather) -> UInt64

    /// The physical address `iova` translates to, or `nil` if unmapped. Linux: `iova_to_phys()`
    /// (which returns 0 for "unmapped").
    func iovaToPhys(_ iova: IOVA) -> PhysAddr?

    /// Invalidates the whole TLB for this domain. Linux: `flush_iotlb_all()`.
    func flushIOTLBAll()

    /// Invalidates what `gather` collected. Linux: `iotlb_sync()`.
    func iotlbSync(_ gather: inout IOTLBGather)

    /// Makes new mappings visible (for IOMMUs that cache non-present entries). Linux:
    /// `iotlb_sync_map()`; a failure makes `iommu_map` undo the mapping. Default: nothing.
    func iotlbSyncMap(iova: IOVA, length: UInt64) throws(IOMMUError)

    /// Frees the page table and hardware resources. Called once, when the domain is freed.
    /// Linux: `free()`.
    func free()
}

extension IOMMUDomainOps {
    public func iotlbSyncMap(iova: IOVA, length: UInt64) throws(IOMMUError) {}
    public func flushIOTLBAll() {}
    public func iotlbSync(_ gather: inout IOTLBGather) {}
    public func free() {}
}

/// Domain ops for domains that cannot map (blocked, identity): every map fails, unmap does
/// nothing. A driver may return it from `allocateDomain` for those types.
public final class NonPagingDomainOps: IOMMUDomainOps {
    public init() {}
    public func mapPages(
        iova: IOVA, paddr: PhysAddr, pageSize: PageSize, count: UInt64, prot: IOMMUProt, mapped: inout UInt64
    ) throws(IOMMUError) {
        throw IOMMUError(.invalidArgument, address: iova.rawValue)
    }
    public func unmapPages(iova: IOVA, pageSize: PageSize, count: UInt64, gather: inout IOTLBGather) -> UInt64 { 0 }
    public func iovaToPhys(_ iova: IOVA) -> PhysAddr? { nil }
}
