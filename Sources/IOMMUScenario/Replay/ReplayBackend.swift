import IOMMUBase

/// A group as the replay sees it: the kernel's group ID plus which incarnation of that ID
/// (PCI remove and rescan frees a group and re-creates it with the same ID).
public struct ReplayGroupID: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// Linux: `iommu_group->id` (`groupID=` in the trace).
    public var groupID: Int32
    /// 1 for the first group with this ID, 2 after it was freed and re-created, …
    public var incarnation: Int

    public init(groupID: Int32, incarnation: Int) {
        self.groupID = groupID
        self.incarnation = incarnation
    }

    public static func < (a: Self, b: Self) -> Bool {
        (a.groupID, a.incarnation) < (b.groupID, b.incarnation)
    }

    /// `group 2` (first incarnation) or `group 2#2`.
    public var description: String { incarnation == 1 ? "group \(groupID)" : "group \(groupID)#\(incarnation)" }
}

/// A domain the replay inferred: the trace never names domains, so a domain is a group's
/// attach generation (see `ReplayEngine`).
public struct ReplayDomainID: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// Dense, in order of creation (0, 1, 2, …): usable as an array index by a backend.
    public var index: Int
    /// The group the domain was allocated for.
    public var groupID: Int32
    /// 1, 2, … for the successive domains of groups with this ID (across re-creations).
    public var generation: Int

    public init(index: Int, groupID: Int32, generation: Int) {
        self.index = index
        self.groupID = groupID
        self.generation = generation
    }

    public static func < (a: Self, b: Self) -> Bool { a.index < b.index }

    /// `g2:d1`: group 2's first domain.
    public var description: String { "g\(groupID):d\(generation)" }
}

/// What the replay drives: the seam between trace attribution (`ReplayEngine`) and a model of
/// IOMMU domains.
///
/// `IntervalReplayBackend` is the self-contained default (an interval map per domain). A backend
/// on IOMMUCore implements the same calls with real groups and domains:
///
/// | call | IOMMUCore equivalent |
/// |---|---|
/// | `groupAdded` / `deviceAdded` | create the group (Linux: `iommu_group_alloc`), `iommu_group_add_device` |
/// | `deviceRemoved` / `groupReleased` | `iommu_group_remove_device`; the last device frees the group |
/// | `domainAllocated` | `iommu_domain_alloc` (a DMA-type default domain, 4 KiB granule) |
/// | `deviceAttached` | `iommu_attach_device` / `__iommu_group_set_domain` |
/// | `domainReleased` | `iommu_domain_free` of the replaced default domain |
/// | `map` | `iommu_map(domain, iova, paddr, length, prot)`; throw `.alreadyMapped` on overlap |
/// | `unmap` | `iommu_unmap(domain, iova, length)` → bytes unmapped |
/// | `translate` | `iommu_iova_to_phys(domain, iova)` |
///
/// Calls arrive in trace order, except that a `map` is delivered when the DMA event that owns
/// it is seen (a few lines later, same execution context), because only then is the device, and
/// so the domain, known. Unmaps are likewise delivered once attributed.
public protocol ReplayBackend {
    /// A group appeared (its first `add_device_to_group`).
    mutating func groupAdded(_ group: ReplayGroupID)
    /// `device` joined `group`.
    mutating func deviceAdded(_ device: String, to group: ReplayGroupID)
    /// `device` left `group`.
    mutating func deviceRemoved(_ device: String, from group: ReplayGroupID)
    /// The group's last device left: the group and its domain are gone.
    mutating func groupReleased(_ group: ReplayGroupID)
    /// A new (empty) domain for `group`.
    mutating func domainAllocated(_ domain: ReplayDomainID, for group: ReplayGroupID)
    /// `device` is now attached to `domain`.
    mutating func deviceAttached(_ device: String, to domain: ReplayDomainID)
    /// `domain` was replaced (a new attach generation) or its group was freed.
    mutating func domainReleased(_ domain: ReplayDomainID)
    /// Maps `length` bytes at `iova` to `paddr`. Throws `.alreadyMapped` (address: the first
    /// conflicting IOVA) if any byte is already mapped; then nothing is mapped.
    mutating func map(_ domain: ReplayDomainID, iova: IOVA, paddr: PhysAddr, length: UInt64) throws(IOMMUError)
    /// Unmaps whatever is mapped in `iova ..< iova + length`; returns the bytes that were mapped
    /// there (Linux: the return value of `iommu_unmap`, for a page-granular table).
    mutating func unmap(_ domain: ReplayDomainID, iova: IOVA, length: UInt64) -> UInt64
    /// The physical address `iova` translates to in `domain`, or `nil` if unmapped.
    func translate(_ domain: ReplayDomainID, iova: IOVA) -> PhysAddr?
    /// How many separate mappings and bytes are live in `domain` (for reports).
    func liveMappings(in domain: ReplayDomainID) -> (count: Int, bytes: UInt64)
}

extension ReplayBackend {
    public mutating func groupAdded(_ group: ReplayGroupID) {}
    public mutating func deviceAdded(_ device: String, to group: ReplayGroupID) {}
    public mutating func deviceRemoved(_ device: String, from group: ReplayGroupID) {}
    public mutating func groupReleased(_ group: ReplayGroupID) {}
    public mutating func deviceAttached(_ device: String, to domain: ReplayDomainID) {}
}
