import IOMMUBase

// MARK: - Every leaf the hardware would use (isolation audit)

/// One leaf a `HardwareWalker` translates: the first input address of the leaf and what the
/// walk of that address returns (output address of the leaf's first byte, size, permissions).
public struct WalkedLeaf: Hashable, Sendable {
    public var iova: IOVA
    public var translation: WalkTranslation

    /// The leaf size in bytes (`1 << translation.blockShift`).
    public var length: UInt64 { UInt64(1) << UInt64(translation.blockShift) }
}

extension HardwareWalker {
    /// Every leaf (page or block) this walker translates, in input-address order, found by
    /// descending the tables from the register values only — what the IOMMU itself would use,
    /// independent of the software's view of the table. A leaf the walk would fault on (access
    /// flag clear, output beyond the output size) is left out: no transaction reaches it.
    /// Permissions are not checked (`lookup`): the translation says what the leaf allows.
    ///
    /// - Parameter limit: stop after this many leaves (a corrupt table cannot make it run away).
    public func leaves(limit: Int = 1 << 20) -> [WalkedLeaf] {
        var out: [WalkedLeaf] = []
        func emit(_ iova: UInt64) {
            if case .translated(let t) = lookup(IOVA(iova)) { out.append(WalkedLeaf(iova: IOVA(iova), translation: t)) }
        }
        switch regime {
        case .dart(let isDART2):
            // Two levels of 2048 entries under each TTBR; TTBR r covers input bits 37:36 = r.
            func address(of descriptor: UInt64) -> UInt64 {
                isDART2 ? (descriptor & 0x0000_003F_FFFF_FC00) << 4 : descriptor & 0x0000_000F_FFFF_F000
            }
            for (r, base) in tableBases.enumerated() {
                for i1 in 0..<UInt64(2048) {
                    guard let l1 = read(base + i1 * 8), l1 & 1 != 0 else { continue }
                    let table = address(of: l1)
                    for i2 in 0..<UInt64(2048) where out.count < limit {
                        guard let l2 = read(table + i2 * 8), l2 & 1 != 0 else { continue }
                        emit(UInt64(r) << 36 | i1 << 25 | i2 << 14)
                    }
                }
            }
        case .stage1, .stage2:
            let stride = granuleShift - 3
            func visit(_ table: UInt64, level: Int, base: UInt64) {
                let shift = granuleShift + (3 - level) * stride
                let bits = level == startLevel ? inputBits - shift : stride
                for index in 0..<(UInt64(1) << UInt64(bits)) where out.count < limit {
                    guard let descriptor = read(table + index * 8), descriptor & 1 != 0 else { continue }
                    let iova = base | index << UInt64(shift)
                    if level < 3 && descriptor & 2 != 0 {
                        let next = lpaeOutputAddress(descriptor)
                        if next >> UInt64(outputBits) == 0 { visit(next, level: level + 1, base: iova) }
                    } else {
                        emit(iova)
                    }
                }
            }
            visit(tableBases[0], level: startLevel, base: 0)
        }
        return out
    }
}
