import IOMMUBase

/// The translation-control fields Linux computes for a table (before a driver packs them).
///
/// Linux: `struct arm_lpae_s1_cfg.tcr` / `arm_lpae_s2_cfg.vtcr` (`tsz`, `irgn`, `orgn`, `sh`,
/// `tg`, `ips`/`ps`, `sl`).
public struct TranslationControlFields: Hashable, Sendable {
    /// `64 - ias`.
    public var tsz: UInt64
    /// Inner cacheability of walks: 1 = write-back write-allocate (coherent), 0 = non-cacheable.
    public var irgn: UInt64
    /// Outer cacheability of walks, as `irgn`.
    public var orgn: UInt64
    /// Shareability of walks: 3 inner (coherent), 2 outer.
    public var sh: UInt64
    /// Granule: 4K = 0, 64K = 1, 16K = 2 (TG0 encoding).
    public var tg: UInt64
    /// Output size: 32→0, 36→1, 40→2, 42→3, 44→4, 48→5, 52→6 (IPS for stage 1, PS for stage 2).
    public var ps: UInt64
    /// Stage 2 only: SL0 start-level encoding; 0 for stage 1.
    public var sl: UInt64

    @inlinable
    public init(tsz: UInt64, irgn: UInt64, orgn: UInt64, sh: UInt64, tg: UInt64, ps: UInt64, sl: UInt64) {
        self.tsz = tsz
        self.irgn = irgn
        self.orgn = orgn
        self.sh = sh
        self.tg = tg
        self.ps = ps
        self.sl = sl
    }
}

/// Register values a stage-1 context is programmed with.
public struct LPAEStage1Registers: Hashable, Sendable {
    /// TTBR0: the pgd physical address.
    public var ttbr: UInt64
    /// TCR in the TCR_EL1 / SMMU TCR (AArch64) layout: T0SZ[5:0], IRGN0[9:8], ORGN0[11:10],
    /// SH0[13:12], TG0[15:14], EPD1 (bit 23, TTBR1 walks disabled), IPS[34:32], and HA/HD
    /// (bits 39/40) with the hardware-dirty quirk.
    public var tcr: UInt64
    /// MAIR: 0xF404FF44 (NC, WB, device nGnRE, inner NC/outer WB).
    public var mair: UInt64
    /// The unpacked fields.
    public var fields: TranslationControlFields
}

/// Register values a stage-2 context is programmed with.
public struct LPAEStage2Registers: Hashable, Sendable {
    /// VTTBR: the pgd physical address.
    public var vttbr: UInt64
    /// VTCR in the VTCR_EL2 layout: T0SZ[5:0], SL0[7:6], IRGN0[9:8], ORGN0[11:10], SH0[13:12],
    /// TG0[15:14], PS[18:16], RES1 bit 31.
    public var vtcr: UInt64
    /// The unpacked fields.
    public var fields: TranslationControlFields
}

/// Register values a DART stream is programmed with (T8020 layout).
public struct DARTRegisters: Hashable, Sendable {
    /// TTBR registers: `(pa >> 12) | valid (bit 31)`. Linux: `apple_dart_hw_set_ttbr` (T8020).
    public var ttbrs: [UInt32]
    /// TCR: translation enable (bit 7). Linux: `DART_T8020_TCR_TRANSLATE_ENABLE`.
    public var tcr: UInt32
    /// Page size (PARAMS1 page-shift field value).
    public var pageShift: Int
}

/// Register values for any format.
public enum PageTableRegisters: Hashable, Sendable {
    case stage1(LPAEStage1Registers)
    case stage2(LPAEStage2Registers)
    case dart(DARTRegisters)
}

/// Bit positions of the packed TCR/VTCR and DART registers.
public enum RegisterBits {
    public static let tszShift: UInt64 = 0
    public static let sl0Shift: UInt64 = 6
    public static let irgnShift: UInt64 = 8
    public static let orgnShift: UInt64 = 10
    public static let shShift: UInt64 = 12
    public static let tgShift: UInt64 = 14
    public static let vtcrPSShift: UInt64 = 16
    public static let vtcrRES1: UInt64 = 1 << 31
    public static let tcrEPD1: UInt64 = 1 << 23
    public static let tcrIPSShift: UInt64 = 32
    public static let tcrHA: UInt64 = 1 << 39
    public static let tcrHD: UInt64 = 1 << 40
    public static let dartTTBRValid: UInt32 = 1 << 31
    public static let dartTTBRShift: UInt64 = 12
    public static let dartTCRTranslateEnable: UInt32 = 1 << 7
    /// Linux: `ARM_LPAE_MAIR_ATTR_*` at indices 0...3.
    public static let mair: UInt64 = 0xF404_FF44
}

extension IOPageTable where Format: PageTableFormat {
    /// The fields Linux's `arm_64_lpae_alloc_pgtable_s1/_s2` compute.
    public var translationControl: TranslationControlFields {
        let coherent = configuration.coherentWalk
        let tg: UInt64 = switch geometry.granuleShift { case 12: 0; case 16: 1; default: 2 }
        let ps: UInt64 = switch geometry.oas {
        case 32: 0
        case 36: 1
        case 40: 2
        case 42: 3
        case 44: 4
        case 48: 5
        default: 6
        }
        var sl: UInt64 = 0
        if Format.kind == .armLPAEStage2 {
            var start = UInt64(geometry.startLevel)
            if geometry.granuleShift == 12 { start += 1 }   // SL0 is encoded differently for 4K
            sl = ~start & 3
        }
        return TranslationControlFields(tsz: UInt64(64 - geometry.ias), irgn: coherent ? 1 : 0,
                                        orgn: coherent ? 1 : 0, sh: coherent ? 3 : 2, tg: tg, ps: ps, sl: sl)
    }

    /// The register values a driver programs for this table.
    public var registers: PageTableRegisters {
        switch Format.kind {
        case .armLPAEStage1:
            let f = translationControl
            var tcr = f.tsz << RegisterBits.tszShift | f.irgn << RegisterBits.irgnShift
                | f.orgn << RegisterBits.orgnShift | f.sh << RegisterBits.shShift | f.tg << RegisterBits.tgShift
                | RegisterBits.tcrEPD1 | f.ps << RegisterBits.tcrIPSShift
            if configuration.quirks.contains(.hardwareDirty) { tcr |= RegisterBits.tcrHA | RegisterBits.tcrHD }
            return .stage1(LPAEStage1Registers(ttbr: roots[0].rawValue, tcr: tcr, mair: RegisterBits.mair, fields: f))
        case .armLPAEStage2:
            let f = translationControl
            let vtcr = f.tsz << RegisterBits.tszShift | f.sl << RegisterBits.sl0Shift
                | f.irgn << RegisterBits.irgnShift | f.orgn << RegisterBits.orgnShift | f.sh << RegisterBits.shShift
                | f.tg << RegisterBits.tgShift | f.ps << RegisterBits.vtcrPSShift | RegisterBits.vtcrRES1
            return .stage2(LPAEStage2Registers(vttbr: roots[0].rawValue, vtcr: vtcr, fields: f))
        case .appleDART, .appleDART2:
            let ttbrs = roots.map { UInt32(truncatingIfNeeded: $0.rawValue >> RegisterBits.dartTTBRShift) | RegisterBits.dartTTBRValid }
            return .dart(DARTRegisters(ttbrs: ttbrs, tcr: RegisterBits.dartTCRTranslateEnable, pageShift: geometry.granuleShift))
        }
    }
}
