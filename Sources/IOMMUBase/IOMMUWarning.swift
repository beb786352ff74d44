/// A misuse or oddity that Linux would `WARN` (or `pr_warn`) about, reported as a value at the
/// faulty call.
///
/// Each case is trivial (numbers only) so reporting one never allocates; the text is built only
/// when printed. Layers add cases in their own `MARK` section.
public enum IOMMUWarning: Hashable, Sendable, CustomStringConvertible {
    // MARK: - IO page tables (Linux: io-pgtable-arm.c WARN_ONs)

    /// `map_pages`/`unmap_pages` asked for a page size the table does not support
    /// (Linux: WARN, -EINVAL / 0).
    case unsupportedPageSize(iova: IOVA, pageSize: UInt64)
    /// The IOVA has bits above `ias`, or the physical address bits above `oas` (Linux: WARN, -ERANGE).
    case addressOutOfRange(iova: IOVA, paddr: PhysAddr)
    /// A map found a leaf already installed (Linux: WARN, -EEXIST; silent only in the selftest).
    case mapOverExistingLeaf(iova: IOVA, level: Int)
    /// An unmap reached an empty entry (Linux: WARN, returns 0 bytes).
    case unmapOfUnmappedIOVA(iova: IOVA, pageSize: UInt64)
    /// An unmap smaller than the block mapping it: the block was split (Linux up to 6.12, silently).
    case splitBlockOnUnmap(iova: IOVA, blockShift: Int)
    /// A block map met a table whose teardown did not unmap exactly one block (Linux: WARN, -EINVAL).
    case tableReplacementMismatch(iova: IOVA, blockSize: UInt64)

    // MARK: - IOVA allocator (Linux: iova.c)

    /// Free of a pfn that is not the start of any live allocation (Linux: silently cached or ignored).
    case iovaFreeNotAllocated(pfn: PFN, pages: UInt64, cpu: Int)
    /// Free of an allocation that is already free or already sitting in a cache.
    case iovaDoubleFree(pfn: PFN, pages: UInt64, cpu: Int)
    /// Free with a size that does not match the live allocation starting at `pfn`.
    case iovaFreeWrongSize(pfn: PFN, pages: UInt64, allocatedPages: UInt64, cpu: Int)
    /// Free of a pfn inside, but not at the start of, the allocation starting at `allocationStart`.
    case iovaFreeInsideAllocation(pfn: PFN, pages: UInt64, allocationStart: PFN, cpu: Int)
    /// A magazine drain found a cached pfn with no allocation behind it (Linux: WARN and skip).
    case iovaDrainFoundNoAllocation(pfn: PFN)
    /// `reserve_iova` with a pfn beyond `U64_MAX >> shift` (Linux: WARN, NULL).
    case iovaReserveOutOfRange(low: PFN, high: PFN)
    /// An allocation collided with an existing node on insert (Linux: WARN, not inserted).
    case iovaDuplicateInsert(pfn: PFN)

    // MARK: - IOMMU core (Linux: iommu.c)

    /// After attach (and the driver's finalise step), a paging domain's smallest IOMMU page is
    /// larger than the CPU page, so one IOMMU page would expose neighbouring CPU pages; the attach
    /// is rolled back with EFAULT. Linux (proposal, not mainline): `iommu_check_page_size()`,
    /// "IOMMU pages cannot exactly represent CPU pages."
    case iommuPagesCannotRepresentCPUPages(device: DeviceID, smallestIOMMUPageSize: UInt64, cpuPageSize: UInt64)
    /// A map whose iova, paddr or size is not a multiple of the smallest page (EINVAL).
    /// Linux: `pr_err("unaligned: iova 0x%lx pa %pa size 0x%zx min_pagesz 0x%x")`.
    case unalignedMap(iova: IOVA, paddr: PhysAddr, size: UInt64, minPageSize: UInt64)
    /// An unmap whose iova or size is not a multiple of the smallest page (0 bytes unmapped).
    /// Linux: `pr_err("unaligned: iova 0x%lx size 0x%zx min_pagesz 0x%x")`.
    case unalignedUnmap(iova: IOVA, size: UInt64, minPageSize: UInt64)
    /// Devices of one group need different default domain types; the global default is used.
    /// Linux (6.2): "Device needs domain type %s, but device %s in the same iommu group requires
    /// type %s - using default". Types are `IOMMUDomainType` raw values.
    case defaultDomainTypeConflict(device: DeviceID, type: UInt32, otherDevice: DeviceID, otherType: UInt32)
    /// An untrusted device's driver asked for a non-DMA default domain; a strict DMA domain is
    /// used instead. Linux 6.12 refuses to probe ("Device is not trusted, but driver is overriding
    /// group %u to %s").
    case untrustedDeviceForcedToDMA(device: DeviceID, group: Int, requestedType: UInt32)
    /// Allocating a default domain of `requestedType` failed; a DMA domain is used instead.
    /// Linux: "Failed to allocate default IOMMU domain of type %u for group %s - Falling back to
    /// IOMMU_DOMAIN_DMA".
    case defaultDomainFallbackToDMA(group: Int, requestedType: UInt32)
    /// Adding a device to its group failed and was unwound. Linux: "Failed to add to iommu group %d: %d".
    case failedToAddToGroup(device: DeviceID, group: Int, errno: Int32)
    /// `detachDevice` with a domain that is not the group's current domain (Linux: WARN, ignored).
    case detachOfDomainNotAttached(device: DeviceID)
    /// `detachDevice` on a group that does not hold exactly one device (Linux: WARN, ignored).
    case detachFromMultiDeviceGroup(device: DeviceID, deviceCount: Int)
    /// Identity-mapping a DIRECT reserved region into a default domain failed.
    case directMappingFailed(device: DeviceID, iova: IOVA, errno: Int32)
    /// Re-attaching the previous domain while rolling back a failed attach failed too.
    case attachRollbackFailed(device: DeviceID, errno: Int32)
    /// Returning a group to its core (default or blocking) domain failed (Linux: WARN).
    case coreDomainAttachFailed(group: Int, errno: Int32)
    /// DMA ownership (or default-domain use) released more often than claimed (Linux: WARN).
    case unbalancedDMAOwnershipRelease(group: Int)
    /// A driver unbind for a device that had no driver bound.
    case unbindOfUnboundDevice(device: DeviceID)
    /// The last device left a group that was still claimed for user-space DMA (Linux: WARN).
    case groupEmptiedWhileOwned(group: Int)
    /// A device with a DIRECT reserved region was to be put on a blocking domain; refused with
    /// EINVAL. Linux 6.12: "Firmware has requested this device have a 1:1 IOMMU mapping,
    /// rejecting configuring the device without a 1:1 mapping. Contact your platform vendor."
    case deviceRequiresDirectMapping(device: DeviceID)

    // MARK: - VFIO (Linux: vfio_iommu_type1.c)

    /// The container's smallest IOMMU page is larger than the CPU page; map and unmap go on
    /// with the larger alignment. Linux: `WARN_ON((pgsize - 1) & PAGE_MASK)` on every map/unmap.
    case vfioIOMMUPageLargerThanCPUPage(pageSize: UInt64)
    /// Pinning would take the process over `RLIMIT_MEMLOCK`; the request failed with ENOMEM.
    /// Linux: `pr_warn("%s: RLIMIT_MEMLOCK (%ld) exceeded")`.
    case vfioLockedMemoryLimitExceeded(limitBytes: UInt64)
    /// A group without interrupt remapping (isolated MSI) was refused with EPERM.
    /// Linux: "No interrupt remapping support.  Use the module param \"allow_unsafe_interrupts\" ...".
    case vfioNoInterruptRemapping(group: Int)
    /// `pin_pages` while some vaddr is invalidated (EBUSY).
    /// Linux: `WARN_ONCE("vfio_pin_pages not allowed with VFIO_UPDATE_VADDR")`.
    case vfioPinWhileVaddrInvalid(iova: IOVA)
    /// An UNMAP could not complete because an emulated-device driver kept `pages` pinned pages
    /// (from `iova`) after `notifications` unmap notifications; the unmap failed with EBUSY and
    /// the mapping is intact. Linux BUGs here (`BUG_ON(++retries > 10)`).
    case vfioUnmapBlockedByPinnedPages(device: DeviceID, iova: IOVA, pages: UInt64, notifications: Int)
    /// The container (or its last group) went away with `pages` pages from `iova` still pinned by
    /// an emulated-device driver; they stay pinned (leaked), never unpinned behind the driver's
    /// back. Linux: `WARN_ON(!RB_EMPTY_ROOT(&dma->pfn_list))`.
    case vfioPinnedPagesAtRelease(device: DeviceID, iova: IOVA, pages: UInt64)
    /// `unpin_pages` misuse: a v1 container, a count of 0 or above 512, or pages that were not
    /// all processed. Linux: `WARN_ON`.
    case vfioUnpinPagesMisuse(iova: IOVA, count: Int)
    /// An IOMMU-mapped page had no translation while unmapping. Linux: `WARN_ON(!phys)`, skips a page.
    case vfioMissingTranslation(iova: IOVA)
    // MARK: virtio-iommu device

    /// The driver wrote a configuration byte it may not write (a read-only field, `bypass`
    /// without BYPASS_CONFIG negotiated, or a value other than 0/1); the write was ignored.
    case virtioConfigWriteIgnored(offset: Int, value: UInt8)
    /// A fault record could not be delivered: no event buffer (`bufferLength` -1) or one smaller
    /// than the 24-byte record. The record was dropped.
    case virtioEventDropped(endpoint: UInt32, bufferLength: Int)
    /// An external mapping consumer failed to apply an unmap the device could not refuse (device
    /// reset); the device's own state went ahead.
    case virtioConsumerUnmapFailed(domain: UInt32, iova: IOVA, errno: Int32)
    // MARK: - IOMMU hardware (Linux: arm-smmu.c, apple-dart.c; the hardware models)

    /// A transaction whose stream ID matches no stream-map entry bypassed translation (sCR0.USFCFG
    /// = 0, i.e. `disable_bypass=0`), or the SMMU's client port is disabled: full physical access.
    case smmuUnmatchedStreamBypassed(streamID: StreamID, address: UInt64)
    /// A transaction from an unknown stream was aborted (sCR0.USFCFG = 1). Linux: "Blocked unknown
    /// Stream ID 0x%hx; boot with \"arm-smmu.disable_bypass=0\" to allow, but this may have
    /// security implications".
    case smmuBlockedUnknownStream(streamID: StreamID)
    /// A global fault other than an unidentified stream. Linux: "Unexpected global fault, this
    /// could be serious" + "GFSR 0x%08x, GFSYNR0 0x%08x, GFSYNR1 0x%08x, GFSYNR2 0x%08x".
    case smmuUnexpectedGlobalFault(gfsr: UInt32, gfsynr0: UInt32, gfsynr1: UInt32, gfsynr2: UInt32)
    /// A context fault nobody handled. Linux: "Unhandled context fault: fsr=0x%x, iova=0x%08lx,
    /// fsynr=0x%x, cbfrsynra=0x%x, cb=%d".
    case smmuUnhandledContextFault(fsr: UInt32, iova: UInt64, fsynr: UInt32, cbfrsynra: UInt32, contextBank: Int)
    /// A stream ID outside the SMMU's probed stream-ID mask (probe fails, EINVAL). Linux: "stream
    /// ID 0x%x out of range for SMMU (0x%x)".
    case smmuStreamIDOutOfRange(device: DeviceID, streamID: UInt32, mask: UInt32)
    /// An SMR mask outside the SMMU's probed mask bits (probe fails, EINVAL). Linux: "SMR mask
    /// 0x%x out of range for SMMU (0x%x)".
    case smmuSMRMaskOutOfRange(device: DeviceID, mask: UInt32, maskLimit: UInt32)
    /// The last user of a stream-map entry went away and the entry reverted to the initial S2CR,
    /// which is BYPASS (`disable_bypass=0`): that stream now has untranslated access.
    case smmuStreamEntryReleasedToBypass(streamID: StreamID, index: Int)
    /// A transaction went through a context bank whose SCTLR.M is clear: untranslated.
    case smmuContextBankDisabledBypass(streamID: StreamID, contextBank: Int, address: UInt64)
    /// A DART fault nobody handled. Linux (apple-dart): "translation fault: status:0x%x
    /// stream:%d code:0x%x (%s) at 0x%llx".
    case dartUnhandledFault(status: UInt32, streamIndex: Int, address: UInt64)


    // MARK: - DMA API (Linux: dma-iommu.c, kernel/dma/debug.c, swiotlb)

    /// dma-debug: unmap of an address that is not (or no longer) mapped for this device.
    case dmaUnmapNotMapped(device: DeviceID, address: IOVA, size: UInt64, direction: UInt8)
    /// dma-debug: unmap of an address unmapped before (the most recent unmap of it is known).
    case dmaDoubleUnmap(device: DeviceID, address: IOVA, size: UInt64, direction: UInt8)
    /// dma-debug: unmap size differs from the mapped size.
    case dmaUnmapWrongSize(device: DeviceID, address: IOVA, size: UInt64, mappedSize: UInt64)
    /// dma-debug: unmap direction differs from the mapped direction.
    case dmaUnmapWrongDirection(device: DeviceID, address: IOVA, direction: UInt8, mappedDirection: UInt8)
    /// dma-debug: unmap of a mapping of another kind (page / scatterlist / coherent).
    case dmaUnmapWrongKind(device: DeviceID, address: IOVA, kind: UInt8, mappedKind: UInt8)
    /// dma-debug: the driver never called `mappingError` on this address before unmapping it.
    case dmaMappingErrorNotChecked(device: DeviceID, address: IOVA, size: UInt64)
    /// dma-debug: sync of a range not inside one live mapping.
    case dmaSyncNotMapped(device: DeviceID, address: IOVA, size: UInt64, direction: UInt8)
    /// dma-debug: sync in a direction the mapping does not allow.
    case dmaSyncWrongDirection(device: DeviceID, address: IOVA, direction: UInt8, mappedDirection: UInt8)
    /// dma-debug: a mapping still live when the driver unbound or the device went away.
    case dmaMappingLeaked(device: DeviceID, address: IOVA, size: UInt64, direction: UInt8)
    /// dma-iommu: `iommu_unmap_fast` unmapped less than the mapping (Linux WARN_ON(unmapped != size)).
    case dmaUnmapIncomplete(device: DeviceID, iova: IOVA, size: UInt64, unmapped: UInt64)
    /// IOMMUKit: the IOVA of an incompletely unmapped range is kept out of circulation.
    case dmaIOVAQuarantined(device: DeviceID, iova: IOVA, size: UInt64)
    /// dma-iommu: "Using %d-bit DMA addresses" (32-bit-first rule disabled for the device).
    case dmaUsingFullWidthAddresses(device: DeviceID, bits: Int)
    /// dma-iommu: "DMA bounce buffers are inactive, unable to map unaligned transaction."
    case dmaBounceBuffersInactive(device: DeviceID, paddr: PhysAddr, size: UInt64)
    /// swiotlb: the bounce pool has no room for the buffer.
    case dmaBouncePoolFull(device: DeviceID, size: UInt64)
    /// IOMMUKit device-side check: device DMA reached an unmapped IOVA through a stale IOTLB entry.
    case dmaStaleTLBAccess(device: DeviceID, iova: IOVA, isWrite: Bool, unmappedAgoNanoseconds: Int64)
    /// IOMMUKit device-side check: the device wrote to a buffer mapped to-device only.
    case dmaDeviceWriteToToDeviceMapping(device: DeviceID, iova: IOVA, size: UInt64)

    public var description: String {
        func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
        func hex8<T: BinaryInteger>(_ value: T) -> String {
            let digits = String(value, radix: 16)
            return "0x" + String(repeating: "0", count: max(0, 8 - digits.count)) + digits
        }
        switch self {
        case let .unsupportedPageSize(iova, pageSize):
            return "page size \(hex(pageSize)) not supported by this table (iova \(iova))"
        case let .addressOutOfRange(iova, paddr):
            return "address out of range for the table: iova \(iova) paddr \(paddr)"
        case let .mapOverExistingLeaf(iova, level):
            return "map over an existing leaf at iova \(iova) (level \(level))"
        case let .unmapOfUnmappedIOVA(iova, pageSize):
            return "unmap of unmapped iova \(iova) (page size \(hex(pageSize)))"
        case let .splitBlockOnUnmap(iova, blockShift):
            return "unmap at iova \(iova) split a \(formatByteSize(UInt64(1) << UInt64(blockShift))) block"
        case let .tableReplacementMismatch(iova, blockSize):
            return "replacing a table by a \(hex(blockSize)) block at iova \(iova) did not unmap exactly one block"
        case let .iovaFreeNotAllocated(pfn, pages, cpu):
            return "IOVA free of \(pfn) (\(pages) pages, cpu \(cpu)): not a live allocation; rejected"
        case let .iovaDoubleFree(pfn, pages, cpu):
            return "IOVA double free of \(pfn) (\(pages) pages, cpu \(cpu)); rejected"
        case let .iovaFreeWrongSize(pfn, pages, allocatedPages, cpu):
            return "IOVA free of \(pfn) with size \(pages) pages (cpu \(cpu)), but it was allocated with \(allocatedPages); rejected"
        case let .iovaFreeInsideAllocation(pfn, pages, allocationStart, cpu):
            return "IOVA free of \(pfn) (\(pages) pages, cpu \(cpu)) inside the allocation starting at \(allocationStart); rejected"
        case let .iovaDrainFoundNoAllocation(pfn):
            return "IOVA cache drain: cached \(pfn) has no allocation; skipped"
        case let .iovaReserveOutOfRange(low, high):
            return "IOVA reserve [\(low), \(high)] beyond the addressable pfn range"
        case let .iovaDuplicateInsert(pfn):
            return "IOVA insert of \(pfn) collides with an existing node"
        case let .iommuPagesCannotRepresentCPUPages(device, iommuPage, cpuPage):
            return "\(device): IOMMU pages cannot exactly represent CPU pages (smallest IOMMU page \(formatByteSize(iommuPage)), CPU page \(formatByteSize(cpuPage)))"
        case let .unalignedMap(iova, paddr, size, minPageSize):
            return "unaligned: iova \(hex(iova.rawValue)) pa \(hex(paddr.rawValue)) size \(hex(size)) min_pagesz \(hex(minPageSize))"
        case let .unalignedUnmap(iova, size, minPageSize):
            return "unaligned: iova \(hex(iova.rawValue)) size \(hex(size)) min_pagesz \(hex(minPageSize))"
        case let .defaultDomainTypeConflict(device, type, otherDevice, otherType):
            return "\(device): Device needs domain type \(Self.domainTypeDisplayName(type)), but device \(otherDevice) in the same iommu group requires type \(Self.domainTypeDisplayName(otherType)) - using default"
        case let .untrustedDeviceForcedToDMA(device, group, requestedType):
            return "\(device): Device is not trusted, but driver is overriding group \(group) to \(Self.domainTypeDisplayName(requestedType)); using a strict DMA domain"
        case let .defaultDomainFallbackToDMA(group, requestedType):
            return "Failed to allocate default IOMMU domain of type \(requestedType) for group \(group) - Falling back to IOMMU_DOMAIN_DMA"
        case let .failedToAddToGroup(device, group, errno):
            return "\(device): Failed to add to iommu group \(group): \(errno)"
        case let .detachOfDomainNotAttached(device):
            return "\(device): detach of a domain that is not the group's current domain; ignored"
        case let .detachFromMultiDeviceGroup(device, deviceCount):
            return "\(device): detach from a group of \(deviceCount) devices; ignored"
        case let .directMappingFailed(device, iova, errno):
            return "\(device): identity mapping of a direct region at iova \(iova) failed: \(errno)"
        case let .attachRollbackFailed(device, errno):
            return "\(device): re-attaching the previous domain after a failed attach failed: \(errno)"
        case let .coreDomainAttachFailed(group, errno):
            return "iommu group \(group): returning to the core domain failed: \(errno)"
        case let .unbalancedDMAOwnershipRelease(group):
            return "iommu group \(group): DMA ownership released more often than claimed"
        case let .unbindOfUnboundDevice(device):
            return "\(device): driver unbind, but no driver is bound"
        case let .groupEmptiedWhileOwned(group):
            return "iommu group \(group): last device removed while the group is claimed for user-space DMA"
        case let .vfioIOMMUPageLargerThanCPUPage(pageSize):
            return "vfio: IOMMU page size \(hex(pageSize)) larger than the CPU page; using it as the map/unmap alignment"
        case let .vfioLockedMemoryLimitExceeded(limitBytes):
            return "vfio: RLIMIT_MEMLOCK (\(limitBytes)) exceeded"
        case let .vfioNoInterruptRemapping(group):
            return "vfio: iommu group \(group): No interrupt remapping support.  Use the module param \"allow_unsafe_interrupts\" to enable VFIO IOMMU support on this platform"
        case let .vfioPinWhileVaddrInvalid(iova):
            return "vfio: vfio_pin_pages not allowed with VFIO_UPDATE_VADDR (iova \(iova))"
        case let .vfioUnmapBlockedByPinnedPages(device, iova, pages, notifications):
            return "vfio: \(device) still pins \(pages) page(s) from iova \(iova) after \(notifications) DMA_UNMAP notifications; unmap refused (EBUSY), mapping left intact"
        case let .vfioPinnedPagesAtRelease(device, iova, pages):
            return "vfio: \(device) left \(pages) page(s) pinned from iova \(iova) at release; left pinned"
        case let .vfioUnpinPagesMisuse(iova, count):
            return "vfio: invalid unpin_pages of \(count) page(s) at iova \(iova)"
        case let .vfioMissingTranslation(iova):
            return "vfio: no translation for mapped iova \(iova) while unmapping"
        case let .dmaUnmapNotMapped(device, address, size, direction):
            return "DMA-API: \(device): unmap of device address \(address) [size=\(size)] [\(Self.dmaDirectionName(direction))] that was never mapped"
        case let .dmaDoubleUnmap(device, address, size, direction):
            return "DMA-API: \(device): unmap of device address \(address) [size=\(size)] [\(Self.dmaDirectionName(direction))] that was already unmapped (double unmap)"
        case let .dmaUnmapWrongSize(device, address, size, mappedSize):
            return "DMA-API: \(device): unmap of device address \(address) with wrong size: mapped \(mappedSize) bytes, unmapped \(size)"
        case let .dmaUnmapWrongDirection(device, address, direction, mappedDirection):
            return "DMA-API: \(device): unmap of device address \(address) with wrong direction: mapped [\(Self.dmaDirectionName(mappedDirection))], unmapped [\(Self.dmaDirectionName(direction))]"
        case let .dmaUnmapWrongKind(device, address, kind, mappedKind):
            return "DMA-API: \(device): unmap of device address \(address) as \(Self.dmaKindName(kind)), but it was mapped as \(Self.dmaKindName(mappedKind))"
        case let .dmaMappingErrorNotChecked(device, address, size):
            return "DMA-API: \(device): driver failed to check the mapping error of device address \(address) [size=\(size)]"
        case let .dmaSyncNotMapped(device, address, size, direction):
            return "DMA-API: \(device): sync of device address \(address) [size=\(size)] [\(Self.dmaDirectionName(direction))] outside any mapping"
        case let .dmaSyncWrongDirection(device, address, direction, mappedDirection):
            return "DMA-API: \(device): sync of device address \(address) in direction [\(Self.dmaDirectionName(direction))] of a mapping made [\(Self.dmaDirectionName(mappedDirection))]"
        case let .dmaMappingLeaked(device, address, size, direction):
            return "DMA-API: \(device): mapping leaked: device address \(address) [size=\(size)] [\(Self.dmaDirectionName(direction))]"
        case let .dmaUnmapIncomplete(device, iova, size, unmapped):
            return "dma-iommu: \(device): unmap of iova \(iova) size \(size) unmapped only \(unmapped) bytes"
        case let .dmaIOVAQuarantined(device, iova, size):
            return "dma-iommu: \(device): iova \(iova) size \(size) may still be mapped; not freed for reuse"
        case let .dmaUsingFullWidthAddresses(device, bits):
            return "\(device): Using \(bits)-bit DMA addresses"
        case let .dmaBounceBuffersInactive(device, paddr, size):
            return "\(device): DMA bounce buffers are inactive, unable to map unaligned transaction (pa \(paddr), size \(size))"
        case let .dmaBouncePoolFull(device, size):
            return "\(device): swiotlb buffer is full (sz: \(size) bytes)"
        case let .dmaStaleTLBAccess(device, iova, isWrite, ago):
            return "DMA device-side: \(device) \(isWrite ? "wrote" : "read") iova \(iova) \(ago) ns after it was unmapped, through a stale IOTLB entry"
        case let .dmaDeviceWriteToToDeviceMapping(device, iova, size):
            return "DMA device-side: \(device) wrote \(size) bytes at iova \(iova), mapped to-device only"
        case let .deviceRequiresDirectMapping(device):
            return "\(device): Firmware has requested this device have a 1:1 IOMMU mapping, rejecting configuring the device without a 1:1 mapping. Contact your platform vendor."
        case let .virtioConfigWriteIgnored(offset, value):
            return "virtio-iommu: ignored config write of \(hex(UInt64(value))) at offset \(offset)"
        case let .virtioEventDropped(endpoint, bufferLength):
            return bufferLength < 0
                ? "virtio-iommu: fault event for endpoint \(endpoint) dropped: no event buffer"
                : "virtio-iommu: fault event for endpoint \(endpoint) dropped: event buffer of \(bufferLength) bytes"
        case let .virtioConsumerUnmapFailed(domain, iova, errno):
            return "virtio-iommu: mapping consumer failed to unmap \(iova) of domain \(domain) (errno \(errno))"
        case let .smmuUnmatchedStreamBypassed(streamID, address):
            return "arm-smmu: unmatched stream ID 0x\(String(streamID.rawValue, radix: 16)) bypassed translation at address \(hex(address))"
        case let .smmuBlockedUnknownStream(streamID):
            return "arm-smmu: Blocked unknown Stream ID 0x\(String(streamID.rawValue & 0xFFFF, radix: 16)); boot with \"arm-smmu.disable_bypass=0\" to allow, but this may have security implications"
        case let .smmuUnexpectedGlobalFault(gfsr, gfsynr0, gfsynr1, gfsynr2):
            return "arm-smmu: Unexpected global fault, this could be serious\n\tGFSR \(hex8(gfsr)), GFSYNR0 \(hex8(gfsynr0)), GFSYNR1 \(hex8(gfsynr1)), GFSYNR2 \(hex8(gfsynr2))"
        case let .smmuUnhandledContextFault(fsr, iova, fsynr, cbfrsynra, contextBank):
            return "arm-smmu: Unhandled context fault: fsr=\(hex(UInt64(fsr))), iova=\(hex8(iova)), fsynr=\(hex(UInt64(fsynr))), cbfrsynra=\(hex(UInt64(cbfrsynra))), cb=\(contextBank)"
        case let .smmuStreamIDOutOfRange(device, streamID, mask):
            return "\(device): stream ID \(hex(UInt64(streamID))) out of range for SMMU (\(hex(UInt64(mask))))"
        case let .smmuSMRMaskOutOfRange(device, mask, maskLimit):
            return "\(device): SMR mask \(hex(UInt64(mask))) out of range for SMMU (\(hex(UInt64(maskLimit))))"
        case let .smmuStreamEntryReleasedToBypass(streamID, index):
            return "arm-smmu: stream-map entry \(index) (stream ID 0x\(String(streamID.rawValue, radix: 16))) released to the initial S2CR: BYPASS (untranslated access)"
        case let .smmuContextBankDisabledBypass(streamID, contextBank, address):
            return "arm-smmu: stream ID 0x\(String(streamID.rawValue, radix: 16)) used disabled context bank \(contextBank): untranslated access at \(hex(address))"
        case let .dartUnhandledFault(status, streamIndex, address):
            return "apple-dart: translation fault: status:\(hex(UInt64(status))) stream:\(streamIndex) at \(hex(address))"
        }
    }
}

extension IOMMUWarning {
    /// Linux's names of `enum dma_data_direction` values (0 bidirectional, 1 to device, 2 from device, 3 none).
    public static func dmaDirectionName(_ raw: UInt8) -> String {
        switch raw {
        case 0: "DMA_BIDIRECTIONAL"
        case 1: "DMA_TO_DEVICE"
        case 2: "DMA_FROM_DEVICE"
        default: "DMA_NONE"
        }
    }

    /// Mapping kinds the DMA-API debug layer distinguishes (0 page, 1 scatterlist, 2 coherent).
    public static func dmaKindName(_ raw: UInt8) -> String {
        switch raw {
        case 0: "single page"
        case 1: "scatter-gather"
        default: "coherent"
        }
    }

    /// Linux's `iommu_domain_type_str()` for a raw domain type: "Blocked", "Passthrough",
    /// "Unmanaged", "Translated" (DMA and DMA-FQ), "Unknown".
    public static func domainTypeDisplayName(_ rawType: UInt32) -> String {
        switch rawType {
        case 0: "Blocked"
        case 4: "Passthrough"
        case 1: "Unmanaged"
        case 3, 11: "Translated"
        default: "Unknown"
        }
    }
}
