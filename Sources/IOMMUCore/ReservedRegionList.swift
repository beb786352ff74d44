import IOMMUBase

/// A group's reserved regions: sorted by `(start, type)`, same-type regions merged.
///
/// Linux: the list `iommu_get_group_resv_regions()` builds with `iommu_insert_resv_region()`.
public struct ReservedRegionList: Hashable, Sendable, CustomStringConvertible {
    /// The regions in list order.
    public private(set) var regions: [ReservedRegion] = []

    public init() {}

    /// Builds a list by inserting `regions` one after another.
    public init(inserting regions: [ReservedRegion]) {
        for region in regions { insert(region) }
    }

    /// Inserts one region the way Linux does.
    ///
    /// 1. The region goes before the first element with a larger start, or the same start and a
    ///    type >= its own.
    /// 2. One merge pass: elements of another type than the new region's are kept as they are;
    ///    each element of the new region's type is merged into the last kept element of that type
    ///    if it overlaps or touches it (`start <= lastKept.end + 1`), else kept.
    /// So same-type regions that overlap or touch merge; different types never merge (and can
    /// overlap in the result).
    ///
    /// Linux: `iommu_insert_resv_region()`.
    public mutating func insert(_ new: ReservedRegion) {
        var position = regions.count
        for (index, element) in regions.enumerated()
        where new.start < element.start || (new.start == element.start && new.type <= element.type) {
            position = index
            break
        }
        regions.insert(new, at: position)

        var output: [ReservedRegion] = []
        output.reserveCapacity(regions.count)
        for element in regions {
            guard element.type == new.type,
                let topIndex = output.lastIndex(where: { $0.type == element.type })
            else {
                output.append(element)
                continue
            }
            let top = output[topIndex]
            // Linux computes `top_end + 1` in phys_addr_t arithmetic; a region ending at 2^64 - 1
            // wraps to 0 and so never absorbs a later one.
            if element.start > top.last &+ 1 {
                output.append(element)
            } else {
                output[topIndex].length = max(top.last, element.last) &- top.start &+ 1
            }
        }
        regions = output
    }

    /// The group sysfs file `reserved_regions`: one `0x%016llx 0x%016llx %s\n` line per region.
    public var sysfsText: String { regions.map(\.sysfsLine).joined() }

    public var description: String { sysfsText }
}
