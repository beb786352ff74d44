import IOMMUBase
import PhysicalMemory

// MARK: - Consistency checker: the table's own view against the hardware walk

/// One leaf of a page table: the IOVA it starts at, the physical address it maps, its level
/// and the log2 of its size.
public struct PageTableLeaf: Hashable, Sendable {
    public var iova: IOVA
    public var paddr: PhysAddr
    public var level: Int
    public var sizeShift: Int
}

extension IOPageTable where Format: PageTableFormat {
    /// Every leaf (page or block), in IOVA order, found by walking the live tables from the
    /// root(s); root `r` covers the `r`-th slice of the input space (DART's TTBRs).
    public func leaves() -> [PageTableLeaf] {
        var out: [PageTableLeaf] = []
        func visit(_ address: UInt64, level: Int, base: UInt64) {
            let table = descriptors(at: address)
            let shift = geometry.levelShift(level)
            for index in 0..<geometry.entryCount(level: level) {
                let pte = table[index].load(ordering: .acquiring)
                guard pte != 0 else { continue }
                let iova = base &+ (UInt64(index) << shift)
                if level == geometry.lastLevel || Format.isLeaf(pte, level: level) {
                    out.append(PageTableLeaf(iova: IOVA(iova), paddr: PhysAddr(Format.outputAddress(pte)), level: level, sizeShift: shift))
                } else {
                    visit(Format.outputAddress(pte), level: level + 1, base: iova)
                }
            }
        }
        let rootSpan = geometry.levelShift(geometry.startLevel) + geometry.pgdBits
        for (r, root) in roots.enumerated() {
            visit(root.rawValue, level: geometry.startLevel, base: rootSpan >= 64 ? 0 : UInt64(r) << rootSpan)
        }
        return out
    }
}

extension AnyIOPageTable {
    /// Every leaf. See `IOPageTable.leaves()`.
    public func leaves() -> [PageTableLeaf] {
        switch self {
        case .armLPAEStage1Granule4K(let table): table.leaves()
        case .armLPAEStage1Granule16K(let table): table.leaves()
        case .armLPAEStage1Granule64K(let table): table.leaves()
        case .armLPAEStage2Granule4K(let table): table.leaves()
        case .armLPAEStage2Granule16K(let table): table.leaves()
        case .armLPAEStage2Granule64K(let table): table.leaves()
        case .appleDART(let table): table.leaves()
        case .appleDART2(let table): table.leaves()
        }
    }

    /// Checks that every leaf the table reports is what the hardware walker translates: a
    /// `HardwareWalker` configured from the table's own registers must translate the first and
    /// last byte of each leaf to the leaf's output address, as must the table's `iovaToPhys`;
    /// leaves are disjoint. Returns every disagreement (`[]`: consistent).
    ///
    /// - Parameter memory: the physical memory the table lives in.
    public func checkConsistency(memory: PhysicalMemory) -> [ConsistencyViolation] {
        var problems: [ConsistencyViolation] = []
        func report(_ message: String) { problems.append(ConsistencyViolation(component: "page-table", message: message)) }
        let walker: HardwareWalker
        do {
            walker = try HardwareWalker(
                memory: memory, registers: registers, isDART2: kind == .appleDART2, dartOutputBits: configuration.oas)
        } catch {
            report("the table's registers do not configure a walker: \(error)")
            return problems
        }
        var previousLast: UInt64? = nil
        for leaf in leaves() {
            let size = UInt64(1) << leaf.sizeShift
            let last = leaf.iova.rawValue &+ (size &- 1)
            if let previousLast, leaf.iova.rawValue <= previousLast { report("leaf at \(leaf.iova) overlaps the previous leaf") }
            previousLast = last
            for offset in [UInt64(0), size &- 1] {
                let iova = IOVA(leaf.iova.rawValue &+ offset)
                let expected = leaf.paddr.rawValue &+ offset
                switch walker.lookup(iova) {
                case .translated(let t):
                    if t.physicalAddress.rawValue != expected {
                        report("walker translates \(iova) to \(t.physicalAddress), leaf says \(PhysAddr(expected))")
                    }
                case .fault(let fault):
                    report("walker faults on mapped \(iova) (level-\(leaf.level) leaf): \(fault)")
                }
                if iovaToPhys(iova)?.rawValue != expected {
                    report("iovaToPhys(\(iova)) = \(iovaToPhys(iova).map { "\($0)" } ?? "nil"), leaf says \(PhysAddr(expected))")
                }
            }
        }
        return problems
    }
}
