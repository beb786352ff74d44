import IOMMUBase
import IOMMUCore
import PhysicalMemory
import Synchronization

/// Module parameters of `vfio_iommu_type1` and the VFIO core.
public struct VFIOType1Configuration: Sendable {
    /// Mappings a new container may hold. Linux: module parameter `dma_entry_limit` (65535),
    /// read when a container is opened.
    public var dmaEntryLimit: UInt32 = 65535
    /// Accept groups without interrupt remapping. Linux: `allow_unsafe_interrupts` (false).
    public var allowUnsafeInterrupts = false
    /// Pin and map one page at a time. Linux: `disable_hugepages` (false).
    public var disableHugepages = false
    /// Device drivers that count as "the VFIO driver" for group viability.
    public var vfioDriverNames: Set<String> = ["vfio-pci", "vfio-platform"]
    /// How many times an UNMAP re-notifies emulated-device drivers that keep pages pinned
    /// before failing with EBUSY (Linux: 10 retries, then BUG).
    public var unmapNotifyRetries = 10

    public init() {}
}

/// The VFIO core of one modelled host: opens containers (`/dev/vfio/vfio`) and groups
/// (`/dev/vfio/N`) on top of an `IOMMUCore`.
///
/// Linux: `drivers/vfio/vfio_main.c`, `group.c`, `container.c`.
public final class VFIO: Sendable {
    public let core: IOMMUCore
    public let warnings: any WarningSink
    let parameters: IOMMUMutex<VFIOType1Configuration>

    struct Registry {
        var openGroups: Set<Int> = []
        var containers: [Int32: VFIOContainer] = [:]
        var groupsWithoutIsolatedMSI: Set<Int> = []
        var nextFD: Int32 = 3
        var nextSerial: UInt64 = 1
    }

    let registry = IOMMUMutex(Registry())

    public init(core: IOMMUCore, configuration: VFIOType1Configuration = VFIOType1Configuration(), warnings: (any WarningSink)? = nil) {
        self.core = core
        self.parameters = IOMMUMutex(configuration)
        self.warnings = warnings ?? core.warnings
    }

    /// The module parameters now (changes apply to containers opened later, as in Linux).
    public var configuration: VFIOType1Configuration {
        get { parameters.withLock { $0 } }
    }

    /// Changes module parameters (Linux: writing `/sys/module/vfio_iommu_type1/parameters/*`).
    public func setConfiguration(_ body: (inout VFIOType1Configuration) -> Void) {
        parameters.withLock { body(&$0) }
    }

    /// Marks an IOMMU group as lacking (or having) interrupt remapping / isolated MSI.
    /// Linux: `iommu_group_has_isolated_msi()`. Every group is isolated unless told otherwise.
    public func setInterruptIsolation(ofGroup groupID: Int, isolated: Bool) {
        registry.withLock { r in
            if isolated { r.groupsWithoutIsolatedMSI.remove(groupID) } else { r.groupsWithoutIsolatedMSI.insert(groupID) }
        }
    }

    func hasIsolatedMSI(_ groupID: Int) -> Bool {
        registry.withLock { !$0.groupsWithoutIsolatedMSI.contains(groupID) }
    }

    /// Opens a new container for a process (Linux: `open("/dev/vfio/vfio")`).
    public func openContainer(process: HostMemory) -> VFIOContainer {
        let configuration = self.configuration
        return registry.withLock { r in
            let fd = r.nextFD
            r.nextFD += 1
            let container = VFIOContainer(vfio: self, fd: fd, process: process, configuration: configuration)
            r.containers[fd] = container
            return container
        }
    }

    /// The open container with this file descriptor number.
    public func container(fd: Int32) -> VFIOContainer? { registry.withLock { $0.containers[fd] } }

    func forgetContainer(fd: Int32) { registry.withLock { _ = $0.containers.removeValue(forKey: fd) } }

    /// Opens the VFIO group of an IOMMU group (Linux: `open("/dev/vfio/N")`).
    ///
    /// - Throws: `notFound` (ENOENT) for an unknown group; `busy` (EBUSY) if it is already open.
    public func openGroup(id groupID: Int) throws(IOMMUError) -> VFIOGroup {
        guard core.groupInfo(id: groupID) != nil else { throw IOMMUError(.notMapped, address: UInt64(groupID)) }
        return try registry.withLock { r throws(IOMMUError) -> VFIOGroup in
            guard !r.openGroups.contains(groupID) else { throw IOMMUError(.busy, address: UInt64(groupID)) }
            r.openGroups.insert(groupID)
            return VFIOGroup(vfio: self, kind: .iommu(groupID: groupID))
        }
    }

    /// Creates an emulated (mdev-like) group: its devices do DMA through `pinPages`/`dmaRW`, with
    /// no IOMMU domain. Linux: `vfio_register_emulated_iommu_dev()` (`VFIO_EMULATED_IOMMU`).
    public func openEmulatedGroup() -> VFIOGroup {
        let serial = registry.withLock { r in
            defer { r.nextSerial += 1 }
            return r.nextSerial
        }
        return VFIOGroup(vfio: self, kind: .emulated(serial: serial))
    }

    func closeGroup(_ kind: VFIOGroup.Kind) {
        if case .iommu(let id) = kind { registry.withLock { _ = $0.openGroups.remove(id) } }
    }

    /// Every device of the group is bound to a VFIO driver or unbound.
    func isViable(_ groupID: Int) -> Bool {
        guard let info = core.groupInfo(id: groupID) else { return false }
        let names = configuration.vfioDriverNames
        return info.devices.allSatisfy { device in
            guard let driver = core.boundDriver(of: device) else { return true }
            return names.contains(driver)
        }
    }
}

/// A VFIO group file (`/dev/vfio/N`), or an emulated group.
///
/// Lock order: group lock → container lock → (IOMMU core registry lock, `HostMemory` locks).
public final class VFIOGroup: Sendable, CustomStringConvertible {
    public enum Kind: Hashable, Sendable {
        /// Backed by the IOMMU group with this ID.
        case iommu(groupID: Int)
        /// Emulated (mdev-like): no IOMMU domain.
        case emulated(serial: UInt64)
    }

    public let vfio: VFIO
    public let kind: Kind

    struct State {
        var container: VFIOContainer?
        var closed = false
    }

    let state = IOMMUMutex(State())

    init(vfio: VFIO, kind: Kind) {
        self.vfio = vfio
        self.kind = kind
    }

    /// The IOMMU group ID, nil for an emulated group.
    public var iommuGroupID: Int? {
        if case .iommu(let id) = kind { return id }
        return nil
    }

    var owner: DMAOwner {
        switch kind {
        case .iommu(let id): DMAOwner(0x5646_494F_0000_0000 | UInt64(id))
        case .emulated(let serial): DMAOwner(0x5646_494F_8000_0000 | serial)
        }
    }

    /// The container this group is set to.
    public var container: VFIOContainer? { state.withLock { $0.container } }

    /// Linux `VFIO_GROUP_GET_STATUS`: VIABLE when every device is bound to a VFIO driver or
    /// unbound (always when a container is set), CONTAINER_SET when set.
    public var status: (viable: Bool, containerSet: Bool) {
        let container = self.container
        if container != nil { return (true, true) }
        switch kind {
        case .emulated: return (true, false)
        case .iommu(let id): return (vfio.isViable(id), false)
        }
    }

    /// Linux `VFIO_GROUP_SET_CONTAINER`.
    ///
    /// - Throws: `invalidArgument` (EINVAL) if the group already has a container or was closed;
    ///   `notPermitted` (EPERM) if not viable; DMA-ownership errors from the core (EPERM, EBUSY);
    ///   the IOMMU backend's attach error if the container's IOMMU type is set.
    public func setContainer(_ container: VFIOContainer) throws(IOMMUError) {
        try state.withLock { s throws(IOMMUError) in
            guard s.container == nil, !s.closed else { throw IOMMUError(.invalidArgument) }
            if case .iommu(let id) = kind {
                guard vfio.isViable(id) else { throw IOMMUError(.notPermitted, address: UInt64(id)) }
            }
            try container.addGroup(self)
            s.container = container
        }
    }

    /// Linux `VFIO_GROUP_UNSET_CONTAINER`.
    /// - Throws: `invalidArgument` (EINVAL) if no container is set.
    public func unsetContainer() throws(IOMMUError) {
        try state.withLock { s throws(IOMMUError) in
            guard let container = s.container else { throw IOMMUError(.invalidArgument) }
            container.removeGroup(self)
            s.container = nil
        }
    }

    /// Closes the group file: unsets the container if set.
    public func close() {
        state.withLock { s in
            if let container = s.container {
                container.removeGroup(self)
                s.container = nil
            }
            if !s.closed { vfio.closeGroup(kind) }
            s.closed = true
        }
    }

    public var description: String {
        switch kind {
        case .iommu(let id): "vfio group \(id)"
        case .emulated(let serial): "emulated vfio group #\(serial)"
        }
    }
}
