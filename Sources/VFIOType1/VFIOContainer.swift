import IOMMUBase
import IOMMUCore
import PhysicalMemory
import Synchronization

/// The IOMMU type a container is set to (`VFIO_SET_IOMMU`).
public enum VFIOIOMMUType: Hashable, Sendable {
    /// `VFIO_TYPE1_IOMMU`: v1 unmap semantics, no external pinning.
    case type1
    /// `VFIO_TYPE1v2_IOMMU` (and the old nesting type 6): v2 semantics.
    case type1v2
}

/// One mapping as the container records it (a snapshot for callers and tests).
public struct VFIODMAMappingInfo: Hashable, Sendable, CustomStringConvertible {
    public var iova: IOVA
    public var length: UInt64
    public var vaddr: VirtAddr
    public var prot: IOMMUProt
    public var vaddrInvalid: Bool
    /// Pinned and mapped into the IOMMU domains.
    public var iommuMapped: Bool
    /// Pages this mapping charges to its process's locked memory (Linux: `dma->locked_vm`).
    public var lockedPages: UInt64
    /// Pages pinned by emulated-device drivers (Linux: `pfn_list` entries).
    public var externallyPinnedPages: Int
    public var description: String { "[\(iova) +0x\(String(length, radix: 16))] vaddr \(vaddr) \(prot)" }
}

/// What `VFIO_IOMMU_GET_INFO` reports.
public struct VFIOIOMMUInfo: Hashable, Sendable {
    /// Linux: `iova_pgsizes`.
    public var pageSizes: UInt64
    /// The valid IOVA ranges (inclusive); empty in an emulated-only container (no capability).
    public var iovaRanges: [IOVARange]
    /// Remaining mapping slots (Linux: `dma_avail`).
    public var dmaAvailable: UInt32
    /// Migration capability: the smallest page size only.
    public var migrationPageSizes: UInt64
    /// Migration capability: `max_dirty_bitmap_size`.
    public var maxDirtyBitmapSize: UInt64
}

/// A user buffer for dirty bits: `size` bytes at `data` in the calling process, one bit per
/// `pageSize` page. Linux: `struct vfio_bitmap`.
public struct VFIODirtyBitmap: Hashable, Sendable {
    public var pageSize: UInt64
    public var size: UInt64
    public var data: VirtAddr
    public init(pageSize: UInt64, size: UInt64, data: VirtAddr) {
        self.pageSize = pageSize
        self.size = size
        self.data = data
    }
}

/// A VFIO container with the type1 IOMMU backend.
///
/// Linux: `struct vfio_container` + `struct vfio_iommu` (`vfio_iommu_type1.c`).
///
/// ### Locks
/// One container lock (Linux's `iommu->lock`, merged with the container's `group_lock`) guards
/// every piece of state. Order: group lock → container lock → IOMMU core registry lock → driver
/// locks; container lock → `HostMemory` lock → frame allocator lock. Unmap notifications to
/// emulated-device drivers run with **no** VFIO lock held (a snapshot of the registered devices
/// is taken under the container lock), so a handler may take its own locks and call
/// `unpinPages`/`pinPages`/`dmaRead` from inside the callback.
public final class VFIOContainer: Sendable {
    public let vfio: VFIO
    /// The file descriptor number `VFIO_GROUP_SET_CONTAINER` names this container by.
    public let fd: Int32
    /// The process that opened the container ("current" for ioctls).
    public let process: HostMemory
    public let configuration: VFIOType1Configuration
    var warnings: any WarningSink { vfio.warnings }
    var core: IOMMUCore { vfio.core }

    struct PinnedRun {
        var offset: UInt64
        var paddr: UInt64
        var pages: Int
        var pfnmap: Bool
        var host: HostMemory
    }

    struct ExternalPin {
        var paddr: UInt64
        var total: Int
        var byDevice: [UInt32: Int]
        var host: HostMemory
    }

    struct Mapping {
        var iova: UInt64
        var size: UInt64
        var vaddr: UInt64
        var prot: IOMMUProt
        var process: HostMemory
        var iommuMapped = false
        var vaddrInvalid = false
        var lockedPages: UInt64 = 0
        var runs: [PinnedRun] = []
        var pins: [UInt64: ExternalPin] = [:]
        var dirty: [UInt64]? = nil

        var last: UInt64 { iova &+ (size &- 1) }
        func contains(_ address: UInt64) -> Bool { address >= iova && address <= last }
    }

    struct DomainRecord {
        var domain: IOMMUDomain
        var groups: [Int]
    }

    struct Registration {
        var device: VFIOEmulatedDevice
    }

    struct State {
        var groups: [VFIOGroup] = []
        var type: VFIOIOMMUType?
        var domains: [DomainRecord] = []
        var emulatedGroups: [UInt64] = []
        var iovaList: [(first: UInt64, last: UInt64)] = []
        var mappings: [Mapping] = []
        var dmaAvail: UInt32
        var pgsizeBitmap: UInt64 = ~UInt64(0xFFF)
        var vaddrInvalidCount = 0
        var dirtyTracking = false
        var nonPinnedGroups = 0
        var devices: [UInt32: Registration] = [:]
        var nextDeviceID: UInt32 = 1
        var released = false

        var v2: Bool { type == .type1v2 }

        /// Index of the first mapping whose last byte is >= `address` (mappings are sorted and
        /// disjoint, so their ends are sorted too).
        func firstIndex(endingAtOrAfter address: UInt64) -> Int {
            var low = 0
            var high = mappings.count
            while low < high {
                let mid = (low + high) / 2
                if mappings[mid].last < address { low = mid + 1 } else { high = mid }
            }
            return low
        }

        /// The mapping containing `address`.
        func index(containing address: UInt64) -> Int? {
            let i = firstIndex(endingAtOrAfter: address)
            return i < mappings.count && mappings[i].iova <= address ? i : nil
        }

        /// The first mapping overlapping `[first, last]`.
        func firstOverlap(_ first: UInt64, _ last: UInt64) -> Int? {
            let i = firstIndex(endingAtOrAfter: first)
            return i < mappings.count && mappings[i].iova <= last ? i : nil
        }
    }

    let state: IOMMUMutex<State>

    init(vfio: VFIO, fd: Int32, process: HostMemory, configuration: VFIOType1Configuration) {
        self.vfio = vfio
        self.fd = fd
        self.process = process
        self.configuration = configuration
        self.state = IOMMUMutex(State(dmaAvail: configuration.dmaEntryLimit))
    }

    // MARK: - Container (container.c)

    /// Linux `VFIO_GET_API_VERSION`.
    public var apiVersion: Int32 { VFIOUAPI.apiVersion }

    /// Linux `VFIO_CHECK_EXTENSION`: 1 if supported, else 0.
    public func checkExtension(_ extensionID: UInt64) -> Int32 {
        state.withLock { s in
            switch extensionID {
            // Linux 6.12 still answers 1 for the nesting type (removed in 6.13).
            case VFIOUAPI.type1IOMMU, VFIOUAPI.type1v2IOMMU, VFIOUAPI.type1NestingIOMMU, VFIOUAPI.unmapAll: return 1
            case VFIOUAPI.updateVaddr: return s.type != nil && s.emulatedGroups.isEmpty ? 1 : 0
            case VFIOUAPI.dmaCCIOMMU:
                // Every domain enforces cache coherency; none of our domains can be asked to.
                guard s.type != nil else { return 0 }
                return s.domains.allSatisfy { record in
                    record.groups.allSatisfy { g in
                        core.groupInfo(id: g)?.devices.allSatisfy { core.capable(.enforceCacheCoherency, device: $0) } ?? false
                    }
                } ? 1 : 0
            default: return 0
            }
        }
    }

    /// The IOMMU type set with `setIOMMU`, if any.
    public var iommuType: VFIOIOMMUType? { state.withLock { $0.type } }

    /// Linux `VFIO_SET_IOMMU`: opens the type1 backend and attaches every group of the container.
    ///
    /// - Throws: `invalidArgument` (EINVAL) with no group or a type already set; `noSuchDevice`
    ///   (ENODEV) for a type this backend does not support; the first group attach error (the
    ///   groups attached before it are detached again).
    public func setIOMMU(_ typeID: UInt64) throws(IOMMUError) {
        try state.withLock { s throws(IOMMUError) in
            guard !s.groups.isEmpty, s.type == nil else { throw IOMMUError(.invalidArgument) }
            let type: VFIOIOMMUType
            switch typeID {
            case VFIOUAPI.type1IOMMU: type = .type1
            case VFIOUAPI.type1v2IOMMU, VFIOUAPI.type1NestingIOMMU: type = .type1v2
            default: throw IOMMUError(.noSuchDevice, address: typeID)
            }
            s.type = type
            s.dmaAvail = configuration.dmaEntryLimit
            var attached: [VFIOGroup] = []
            for group in s.groups {
                do throws(IOMMUError) {
                    try attachLocked(&s, group)
                    attached.append(group)
                } catch {
                    for done in attached.reversed() { detachLocked(&s, done) }
                    releaseBackendLocked(&s)
                    throw error
                }
            }
        }
    }

    /// Typed convenience for `setIOMMU(_:)`.
    public func setIOMMU(_ type: VFIOIOMMUType) throws(IOMMUError) {
        try setIOMMU(type == .type1 ? VFIOUAPI.type1IOMMU : VFIOUAPI.type1v2IOMMU)
    }

    /// Called by `VFIOGroup.setContainer` with the group lock held.
    func addGroup(_ group: VFIOGroup) throws(IOMMUError) {
        try state.withLock { s throws(IOMMUError) in
            guard !s.released else { throw IOMMUError(.invalidArgument) }
            if case .iommu(let id) = group.kind {
                try core.claimDMAOwnership(ofGroup: id, owner: group.owner)
            }
            if s.type != nil {
                do throws(IOMMUError) {
                    try attachLocked(&s, group)
                } catch {
                    if case .iommu(let id) = group.kind { core.releaseDMAOwnership(ofGroup: id) }
                    throw error
                }
            }
            s.groups.append(group)
        }
    }

    /// Called by `VFIOGroup.unsetContainer`/`close` with the group lock held.
    func removeGroup(_ group: VFIOGroup) {
        state.withLock { s in
            guard let index = s.groups.firstIndex(where: { $0 === group }) else { return }
            if s.type != nil { detachLocked(&s, group) }
            if case .iommu(let id) = group.kind { core.releaseDMAOwnership(ofGroup: id) }
            s.groups.remove(at: index)
            if s.groups.isEmpty, s.type != nil {
                // The last group leaving releases the IOMMU backend (Linux: container.c
                // __vfio_container_release → type1 release).
                releaseBackendLocked(&s)
            }
        }
    }

    /// Closes the container: every group is unset first (Linux: last `close` of the fd).
    /// Pages emulated-device drivers still pin are reported and left pinned.
    public func close() {
        let groups = state.withLock { $0.groups }
        for group in groups { try? group.unsetContainer() }
        state.withLock { s in
            if s.type != nil { releaseBackendLocked(&s) }
            s.released = true
            s.devices = [:]
        }
        vfio.forgetContainer(fd: fd)
    }

    /// Linux `vfio_iommu_type1_release`: removes every mapping (reporting external pins) and
    /// every domain; the backend returns to "no IOMMU type set".
    func releaseBackendLocked(_ s: inout State) {
        removeAllMappingsLocked(&s)
        for record in s.domains {
            for g in record.groups { core.detachGroup(record.domain, fromGroup: g) }
            try? core.freeDomain(record.domain)
        }
        s.domains = []
        s.emulatedGroups = []
        s.iovaList = []
        s.pgsizeBitmap = ~UInt64(0xFFF)
        s.dirtyTracking = false
        s.nonPinnedGroups = 0
        s.vaddrInvalidCount = 0
        s.type = nil
    }

    // MARK: - Snapshots

    /// The mappings, in IOVA order.
    public var mappings: [VFIODMAMappingInfo] {
        state.withLock { s in
            s.mappings.map {
                VFIODMAMappingInfo(
                    iova: IOVA($0.iova), length: $0.size, vaddr: VirtAddr($0.vaddr), prot: $0.prot,
                    vaddrInvalid: $0.vaddrInvalid, iommuMapped: $0.iommuMapped, lockedPages: $0.lockedPages,
                    externallyPinnedPages: $0.pins.count)
            }
        }
    }

    /// The valid IOVA ranges (Linux: `iommu->iova_list`).
    public var validIOVARanges: [IOVARange] {
        state.withLock { s in s.iovaList.compactMap { IOVARange(first: IOVA($0.first), last: IOVA($0.last)) } }
    }

    /// The container's page-size bitmap (Linux: `iommu->pgsize_bitmap`).
    public var pageSizeBitmap: UInt64 { state.withLock { $0.pgsizeBitmap } }

    /// The IOMMU domains the container uses, one per distinct domain.
    public var domains: [IOMMUDomain] { state.withLock { $0.domains.map(\.domain) } }

    /// Remaining mapping slots.
    public var dmaAvailable: UInt32 { state.withLock { $0.dmaAvail } }

    /// Dirty tracking is on.
    public var dirtyTrackingEnabled: Bool { state.withLock { $0.dirtyTracking } }

    // MARK: - Page-size bitmap

    /// Linux: `vfio_update_pgsize_bitmap()`.
    func updatePageSizeBitmapLocked(_ s: inout State) {
        guard !s.domains.isEmpty else {
            s.pgsizeBitmap = ~UInt64(0xFFF)
            return
        }
        var bitmap = UInt64.max
        for record in s.domains { bitmap &= record.domain.pageSizes.rawValue }
        if bitmap & 0xFFF != 0 {
            bitmap &= ~UInt64(0xFFF)
            bitmap |= 0x1000
        }
        s.pgsizeBitmap = bitmap
    }

    /// The smallest supported page (the map/unmap alignment), warning if it exceeds the CPU page.
    /// Linux warns on map and unmap only (`warn: true`).
    func minimumPageSizeLocked(_ s: State, warn: Bool = false) -> UInt64 {
        let bitmap = s.pgsizeBitmap
        let pgsize = bitmap == 0 ? 0x1000 : UInt64(1) << UInt64(bitmap.trailingZeroBitCount)
        if warn, (pgsize - 1) & ~UInt64(0xFFF) != 0 { warnings.warn(.vfioIOMMUPageLargerThanCPUPage(pageSize: pgsize)) }
        return pgsize
    }
}
