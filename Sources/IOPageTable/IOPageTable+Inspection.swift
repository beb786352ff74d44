import IOMMUBase
import PhysicalMemory
import Synchronization

/// One live table page and its non-zero entries, for dumps.
public struct PageTableSnapshot: Hashable, Sendable {
    /// One non-zero entry.
    public struct Entry: Hashable, Sendable {
        public var index: Int
        public var descriptor: UInt64
    }
    /// Physical address of the table.
    public var address: PhysAddr
    /// Its level.
    public var level: Int
    /// Non-zero entries in index order.
    public var entries: [Entry]
}

extension IOPageTable where Format: PageTableFormat {
    /// Every live table, depth first from the root(s), children in index order.
    public func liveTables() -> [PageTableSnapshot] {
        var out: [PageTableSnapshot] = []
        func visit(_ address: UInt64, level: Int) {
            let table = descriptors(at: address)
            var entries: [PageTableSnapshot.Entry] = []
            var children: [UInt64] = []
            for index in 0..<geometry.entryCount(level: level) {
                let pte = table[index].load(ordering: .acquiring)
                guard pte != 0 else { continue }
                entries.append(.init(index: index, descriptor: pte))
                if level < geometry.lastLevel && !Format.isLeaf(pte, level: level) {
                    children.append(Format.outputAddress(pte))
                }
            }
            out.append(PageTableSnapshot(address: PhysAddr(address), level: level, entries: entries))
            for child in children { visit(child, level: level + 1) }
        }
        for root in roots { visit(root.rawValue, level: geometry.startLevel) }
        return out
    }

    /// Frames this table owns (its live table pages).
    public var tableFrameCount: Int { liveTables().count }

    /// Reports dirty leaves in `[iova, iova + length)` and, unless `clear` is false, marks them
    /// writable-clean again.
    ///
    /// Linux: `read_and_clear_dirty` (`arm_lpae_read_and_clear_dirty`): only 64-bit stage 1;
    /// a leaf is dirty when DBM is set and AP[2] (read-only) is clear; clearing sets AP[2].
    /// `record` gets each dirty leaf's IOVA (block aligned) and size.
    ///
    /// - Throws: `invalidArgument` (EINVAL) for another format, `length == 0`, or a range past
    ///   `2^ias`.
    public func readAndClearDirty(iova: IOVA, length: UInt64, clear: Bool = true,
                                  record: (IOVA, UInt64) -> Void) throws(IOMMUError) {
        guard Format.kind == .armLPAEStage1, length != 0 else {
            throw IOMMUError(.invalidArgument, address: iova.rawValue, length: length)
        }
        let (last, overflow) = iova.rawValue.addingReportingOverflow(length - 1)
        guard !overflow, last >> UInt64(geometry.ias) == 0 else {
            throw IOMMUError(.invalidArgument, address: iova.rawValue, length: length)
        }
        func walk(_ table: UnsafeMutablePointer<Atomic<UInt64>>, level: Int, base: UInt64) {
            let shift = UInt64(geometry.levelShift(level))
            for index in 0..<geometry.entryCount(level: level) {
                let first = base + (UInt64(index) << shift)
                let lastHere = first + ((1 << shift) - 1)
                if lastHere < iova.rawValue || first > last { continue }
                let pte = table[index].load(ordering: .acquiring)
                if pte == 0 { continue }
                if Format.isLeaf(pte, level: level) {
                    if pte & (LPAEBits.apReadOnly | LPAEBits.dbm) == LPAEBits.dbm {
                        record(IOVA(first), 1 << shift)
                        if clear { table[index].bitwiseOr(LPAEBits.apReadOnly, ordering: .acquiringAndReleasing) }
                    }
                } else if level < geometry.lastLevel {
                    walk(descriptors(at: Format.outputAddress(pte)), level: level + 1, base: first)
                }
            }
        }
        walk(rootPointers[0], level: geometry.startLevel, base: 0)
    }
}
