import IOMMUBase

/// One mapping as the virtio device records it: the interval created by one MAP request.
///
/// Spec: a *mapping* is what one MAP created; UNMAP removes whole mappings only. Ends are
/// inclusive so that `[0, 2^64 − 1]` is representable.
public struct VirtioMapping: Hashable, Sendable, CustomStringConvertible {
    /// The domain the mapping belongs to.
    public var domain: UInt32
    public var first: UInt64
    public var last: UInt64
    public var phys: UInt64
    /// The MAP flags (`READ` 1, `WRITE` 2, `MMIO` 4).
    public var flags: UInt32

    public init(domain: UInt32, first: UInt64, last: UInt64, phys: UInt64, flags: UInt32) {
        self.domain = domain
        self.first = first
        self.last = last
        self.phys = phys
        self.flags = flags
    }

    /// The page-table protection for the flags; empty when neither READ nor WRITE is set.
    public var prot: IOMMUProt {
        var prot: IOMMUProt = []
        if flags & VirtioIOMMUWire.mapFlagRead != 0 { prot.insert(.read) }
        if flags & VirtioIOMMUWire.mapFlagWrite != 0 { prot.insert(.write) }
        if !prot.isEmpty && flags & VirtioIOMMUWire.mapFlagMMIO != 0 { prot.insert(.mmio) }
        return prot
    }

    public var description: String {
        var text = "[0x" + String(first, radix: 16) + ", 0x" + String(last, radix: 16) + "] -> 0x" + String(phys, radix: 16)
        text += " "
        text += flags & VirtioIOMMUWire.mapFlagRead != 0 ? "r" : "-"
        text += flags & VirtioIOMMUWire.mapFlagWrite != 0 ? "w" : "-"
        if flags & VirtioIOMMUWire.mapFlagMMIO != 0 { text += "m" }
        return text
    }
}

/// An external consumer of the device's mappings: a VMM's VFIO shadowing, a vhost back end.
///
/// A MAP or UNMAP completes only after every registered consumer has applied it. If one throws,
/// the consumers that already applied it are rolled back (the inverse call, in reverse order),
/// the device's page table is left as before, and the request fails: NOMEM for
/// `outOfMemory`/`noIOVASpace`/`lockedMemoryLimit`, DEVERR otherwise. When a domain dies (its last
/// endpoint leaves, or an ATTACH re-creates it) every mapping it had is unmapped through the
/// consumers first, with the same all-or-nothing rule.
///
/// Calls are made with the device's lock held: a consumer must not call back into the device.
public protocol VirtioMappingConsumer: AnyObject, Sendable {
    /// Apply a new mapping; throw to make the MAP fail.
    func applyMap(_ mapping: VirtioMapping) throws(IOMMUError)
    /// Remove a mapping; throw to make the UNMAP (or DETACH) fail.
    func applyUnmap(_ mapping: VirtioMapping) throws(IOMMUError)
}

/// A domain's mappings, sorted by `first`, never overlapping.
struct VirtioMappingList {
    var items: [VirtioMapping] = []

    /// Index of the first mapping whose `last` is ≥ `address`.
    func lowerIndex(_ address: UInt64) -> Int {
        var low = 0
        var high = items.count
        while low < high {
            let mid = (low &+ high) &>> 1  // < count, no overflow
            if items[mid].last < address { low = mid &+ 1 } else { high = mid }
        }
        return low
    }

    /// The indices of the mappings intersecting `[first, last]`.
    func intersecting(_ first: UInt64, _ last: UInt64) -> Range<Int> {
        let start = lowerIndex(first)
        var end = start
        while end < items.count && items[end].first <= last { end &+= 1 }
        return start..<end
    }

    func overlaps(_ first: UInt64, _ last: UInt64) -> Bool {
        let index = lowerIndex(first)
        return index < items.count && items[index].first <= last
    }

    mutating func insert(_ mapping: VirtioMapping) {
        items.insert(mapping, at: lowerIndex(mapping.first))
    }

    func mapping(containing address: UInt64) -> VirtioMapping? {
        let index = lowerIndex(address)
        guard index < items.count, items[index].first <= address else { return nil }
        return items[index]
    }
}
