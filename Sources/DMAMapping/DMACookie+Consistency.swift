import IOMMUBase
import IOVAAllocator

// MARK: - Consistency checker (docs/reliability.md)

extension DMACookie {
    /// Cross-checks the debug layer's live mappings against the IOVA allocator and the page
    /// table; returns every disagreement (`[]`: consistent; nothing to check with the debug
    /// layer off). Per live mapping (Linux `dma_debug_entry` of this cookie's domain):
    ///
    /// - its IOVA granules lie inside one allocated, non-reserved node of `iovad`, and that
    ///   node's first PFN is not sitting in a CPU magazine or the depot (it would be handed out
    ///   again while mapped);
    /// - every granule of it is mapped in the domain (`iommu_iova_to_phys`);
    /// - unless bounced (the IOVA then maps a swiotlb slot), its first byte translates to the
    ///   recorded physical address, and for `dma_map_page` mappings so does its last byte.
    public func checkConsistency() -> [ConsistencyViolation] {
        guard let debug else { return [] }
        var problems: [ConsistencyViolation] = []
        func report(_ message: String) { problems.append(ConsistencyViolation(component: "dma-cookie", message: "domain#\(domain.serial): \(message)")) }
        let shift = UInt64(granule.shift)
        let mask = granule.bytes &- 1
        let snapshot = iovad.snapshot()
        var cached = Set<UInt64>()
        for cpu in snapshot.cpuMagazines { for (loaded, previous) in cpu { cached.formUnion(loaded); cached.formUnion(previous) } }
        for sizeClass in snapshot.depot { for magazine in sizeClass { cached.formUnion(magazine) } }
        let reserved = Set(snapshot.reserved.map(\.first.rawValue))
        for record in debug.liveMappings() {
            guard record.size > 0 else { continue }
            let first = record.address.rawValue & ~mask
            let last = record.last
            let what = "\(record.kind == .page ? "page" : record.kind == .scatterGather ? "sg" : "coherent") mapping \(record.address) size \(record.size) of \(record.device)"
            if let node = iovad.find(PFN(first >> shift)) {
                if reserved.contains(node.first.rawValue) {
                    report("\(what) lies in the reserved IOVA range \(node)")
                } else if node.last.rawValue < last >> shift {
                    report("\(what) runs past its IOVA allocation \(node)")
                }
                if cached.contains(node.first.rawValue) { report("\(what): its IOVA allocation \(node) is in an rcache magazine (free) while mapped") }
            } else {
                report("\(what) has no IOVA allocation")
            }
            var unmapped: [UInt64] = []
            var page = first
            while page <= last {
                if domain.iovaToPhys(IOVA(page)) == nil { unmapped.append(page) }
                let next = page &+ granule.bytes
                if next < page { break }
                page = next
            }
            if !unmapped.isEmpty {
                report("\(what): \(unmapped.count) granule(s) not mapped in the page table, first at 0x\(String(unmapped[0], radix: 16))")
                continue
            }
            guard !record.bounced else { continue }
            let start = first | (record.paddr.rawValue & mask)
            if let pa = domain.iovaToPhys(IOVA(start)), pa != record.paddr {
                report("\(what): 0x\(String(start, radix: 16)) translates to \(pa), not the buffer at \(record.paddr)")
            }
            if record.kind == .page, let pa = domain.iovaToPhys(IOVA(last)), pa.rawValue != record.paddr.rawValue &+ (record.size &- 1) {
                report("\(what): its last byte translates to \(pa), not \(PhysAddr(record.paddr.rawValue &+ (record.size &- 1)))")
            }
        }
        return problems
    }
}
