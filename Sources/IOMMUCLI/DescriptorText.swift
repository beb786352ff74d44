import IOMMUKit

/// Human decoding of raw descriptors for `iommu pgtable` and `iommu demo`.
enum DescriptorText {
    static func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }

    static func hex16(_ value: UInt64) -> String {
        let digits = String(value, radix: 16)
        return "0x" + String(repeating: "0", count: max(0, 16 - digits.count)) + digits
    }

    /// A one-line decoding of `pte` at `level` in a table of `kind` with `granuleShift`.
    static func describe(_ pte: UInt64, level: Int, kind: PageTableFormatKind, granuleShift: Int, lastLevel: Int) -> String {
        switch kind {
        case .armLPAEStage1, .armLPAEStage2:
            return describeLPAE(pte, level: level, stage2: kind == .armLPAEStage2, granuleShift: granuleShift)
        case .appleDART, .appleDART2:
            return describeDART(pte, level: level, dart2: kind == .appleDART2)
        }
    }

    static func lpaeAddress(_ pte: UInt64, granuleShift: Int) -> UInt64 {
        let low = pte & 0x0000_FFFF_FFFF_F000
        return granuleShift == 16 ? (low & ~0xF000) | (((pte >> 12) & 0xF) << 48) : low
    }

    static func describeLPAE(_ pte: UInt64, level: Int, stage2: Bool, granuleShift: Int) -> String {
        let type = pte & 3
        let address = lpaeAddress(pte, granuleShift: granuleShift)
        if level < 3 && type == 3 {
            return "table -> \(hex(address))" + (pte >> 63 != 0 ? " NSTable" : "")
        }
        guard (level == 3 && type == 3) || (level < 3 && type == 1) else { return "invalid (type \(type))" }
        let shift = granuleShift + (3 - level) * (granuleShift - 3)
        var parts = ["\(level == 3 ? "page" : "block") \(formatByteSize(1 << UInt64(shift))) pa \(hex(address & ~((1 << UInt64(shift)) - 1)))"]
        if stage2 {
            let hap = (pte >> 6) & 3
            parts.append("HAP " + (hap & 1 != 0 ? "r" : "-") + (hap & 2 != 0 ? "w" : "-"))
            let memAttr = (pte >> 2) & 0xF
            let name = switch memAttr { case 0x1: "device"; case 0x5: "normal-NC"; case 0xF: "normal-WB"; default: "?" }
            parts.append("MemAttr \(hex(memAttr)) (\(name))")
        } else {
            let readOnly = pte & (1 << 7) != 0
            parts.append("AP " + (readOnly ? "ro" : "rw") + (pte & (1 << 6) != 0 ? " unpriv" : " priv-only"))
            let index = (pte >> 2) & 7
            let name = switch index { case 0: "normal-NC"; case 1: "normal-WB"; case 2: "device"; case 3: "inner-NC/outer-WB"; default: "?" }
            parts.append("AttrIndx \(index) (\(name))")
            if pte & (1 << 51) != 0 { parts.append(readOnly ? "DBM (clean)" : "DBM (dirty)") }
        }
        let sh = (pte >> 8) & 3
        parts.append("SH " + (sh == 3 ? "inner" : sh == 2 ? "outer" : sh == 0 ? "non" : "?"))
        if pte & (1 << 10) != 0 { parts.append("AF") }
        if !stage2 && pte & (1 << 11) != 0 { parts.append("nG") }
        if pte & (3 << 53) != 0 { parts.append("XN") }
        if !stage2 && pte & (1 << 5) != 0 { parts.append("NS") }
        return parts.joined(separator: " ")
    }

    static func describeDART(_ pte: UInt64, level: Int, dart2: Bool) -> String {
        let address = dart2 ? (pte & 0x0000_003F_FFFF_FC00) << 4 : pte & 0x0000_000F_FFFF_F000
        if level == 1 { return "table -> \(hex(address))" + (pte & 1 == 0 ? " (invalid)" : "") }
        var parts = ["page 16K pa \(hex(address))"]
        let noRead = dart2 ? pte & (1 << 3) != 0 : pte & (1 << 8) != 0
        let noWrite = dart2 ? pte & (1 << 2) != 0 : pte & (1 << 7) != 0
        parts.append((noRead ? "-" : "r") + (noWrite ? "-" : "w"))
        if dart2 {
            if pte & 2 != 0 { parts.append("no-cache") }
        } else if pte & 2 != 0 {
            parts.append("subpage-protection off")
        }
        parts.append("subpage \(hex((pte >> 52) & 0xFFF))..\(hex((pte >> 40) & 0xFFF))")
        if pte & 1 == 0 { parts.append("(invalid)") }
        return parts.joined(separator: " ")
    }
}
