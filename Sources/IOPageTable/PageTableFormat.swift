import IOMMUBase

/// A page-table descriptor format: the small pure functions the generic table code is
/// specialised over.
///
/// Linux: the per-format helpers of `io-pgtable-arm.c` / `io-pgtable-dart.c` (`iopte_leaf`,
/// `paddr_to_iopte`, `arm_lpae_prot_to_pte`, …). Every requirement is static, so
/// `IOPageTable<Format>` is specialised by the compiler and no call is dynamic.
public protocol PageTableFormat: Sendable {
    /// Which format family this is.
    static var kind: PageTableFormatKind { get }
    /// log2 of the granule.
    static var granuleShift: Int { get }
    /// Whether `map`/`unmap` reject IOVAs with bits at or above `ias` (LPAE yes, DART no).
    static var checksInputRange: Bool { get }

    /// Validates `configuration` as Linux's `alloc` function does and computes the geometry.
    ///
    /// - Throws: `invalidConfiguration` (EINVAL) where Linux's allocator returns NULL.
    static func geometry(for configuration: PageTableConfiguration) throws(IOMMUError) -> PageTableGeometry

    /// The attribute bits of a leaf for `prot` (no type bits, no address).
    /// Linux: `arm_lpae_prot_to_pte` / `dart_prot_to_pte`.
    static func leafAttributes(_ prot: IOMMUProt, configuration: PageTableConfiguration) -> UInt64
    /// A complete leaf descriptor at `level`. Linux: `__arm_lpae_init_pte` / `dart_init_pte`.
    static func leaf(attributes: UInt64, paddr: UInt64, level: Int) -> UInt64
    /// A table descriptor pointing at `paddr`. Linux: `arm_lpae_install_table`.
    static func table(paddr: UInt64, configuration: PageTableConfiguration) -> UInt64
    /// Whether `pte` is a leaf at `level`. Linux: `iopte_leaf`.
    static func isLeaf(_ pte: UInt64, level: Int) -> Bool
    /// Whether `pte` is a table descriptor at `level`. Linux: `iopte_table`.
    static func isTable(_ pte: UInt64, level: Int) -> Bool
    /// The output (or next-table) address of `pte`. Linux: `iopte_to_paddr`.
    static func outputAddress(_ pte: UInt64) -> UInt64
    /// The attribute bits of a leaf, kept when a block is split. Linux: `iopte_prot`.
    static func attributes(ofLeaf pte: UInt64) -> UInt64
}

// MARK: - Granules

/// An LPAE translation granule (4, 16 or 64 KiB).
public protocol LPAEGranule: Sendable {
    /// log2 of the granule.
    static var shift: Int { get }
}

/// 4 KiB granule: levels 0–3 with shifts 39/30/21/12; blocks of 2 MiB and 1 GiB.
public enum Granule4K: LPAEGranule { @inlinable public static var shift: Int { 12 } }
/// 16 KiB granule: shifts 47/36/25/14; blocks of 32 MiB.
public enum Granule16K: LPAEGranule { @inlinable public static var shift: Int { 14 } }
/// 64 KiB granule: shifts 42/29/16 (level 1 to 3); blocks of 512 MiB, and 4 TiB with oas > 48.
public enum Granule64K: LPAEGranule { @inlinable public static var shift: Int { 16 } }

// MARK: - ARM LPAE (shared by both stages)

/// Descriptor bit positions of the VMSAv8-64 long descriptor format.
///
/// Linux: the `ARM_LPAE_PTE_*` constants of `io-pgtable-arm.c`.
public enum LPAEBits {
    public static let typeMask: UInt64 = 0x3
    public static let typeBlock: UInt64 = 0x1
    public static let typeTable: UInt64 = 0x3
    public static let typePage: UInt64 = 0x3
    public static let nonSecure: UInt64 = 1 << 5
    /// Stage 1 AP[1]: unprivileged access allowed.
    public static let apUnprivileged: UInt64 = 1 << 6
    /// Stage 1 AP[2]: read-only.
    public static let apReadOnly: UInt64 = 1 << 7
    /// Stage 2 HAP[0]: read.
    public static let hapRead: UInt64 = 1 << 6
    /// Stage 2 HAP[1]: write.
    public static let hapWrite: UInt64 = 1 << 7
    public static let attrIndexShift: UInt64 = 2
    public static let shOuter: UInt64 = 2 << 8
    public static let shInner: UInt64 = 3 << 8
    public static let accessFlag: UInt64 = 1 << 10
    public static let notGlobal: UInt64 = 1 << 11
    public static let dbm: UInt64 = 1 << 51
    public static let xn: UInt64 = 3 << 53
    public static let nsTable: UInt64 = 1 << 63
    /// Output address bits 47:12.
    public static let addressMask: UInt64 = 0x0000_FFFF_FFFF_F000
    /// Stage 2 MemAttr values (already shifted to bits 5:2).
    public static let memAttrDevice: UInt64 = 0x1 << 2
    public static let memAttrNonCacheable: UInt64 = 0x5 << 2
    public static let memAttrWriteBack: UInt64 = 0xF << 2
    /// MAIR indices used by stage 1 (Linux: `ARM_LPAE_MAIR_ATTR_IDX_*`).
    public static let mairIndexNonCacheable: UInt64 = 0
    public static let mairIndexCache: UInt64 = 1
    public static let mairIndexDevice: UInt64 = 2
    /// Attribute bits kept across a split: lower attributes 11:2 plus DBM and XN.
    public static let attributeMask: UInt64 = 0xFFC | dbm | xn
}

/// What both LPAE stages share: descriptor encoding, address packing, geometry basics.
public protocol ARMLPAEFormat: PageTableFormat {
    associatedtype Granule: LPAEGranule
    /// Stage 2 (true) or stage 1 (false).
    static var isStage2: Bool { get }
}

extension ARMLPAEFormat {
    @inlinable public static var granuleShift: Int { Granule.shift }
    @inlinable public static var checksInputRange: Bool { true }

    /// Linux: `paddr_to_iopte` (PA bits 51:48 go to descriptor bits 15:12 for 64 KiB).
    @inlinable
    public static func packAddress(_ paddr: UInt64) -> UInt64 {
        (paddr | (paddr &>> 36)) & LPAEBits.addressMask
    }

    @inlinable
    public static func outputAddress(_ pte: UInt64) -> UInt64 {
        let address = pte & LPAEBits.addressMask
        if Granule.shift < 16 { return address }
        return (address | (address &<< 36)) & (LPAEBits.addressMask &<< 4)
    }

    @inlinable
    public static func leaf(attributes: UInt64, paddr: UInt64, level: Int) -> UInt64 {
        attributes | (level == 3 ? LPAEBits.typePage : LPAEBits.typeBlock) | packAddress(paddr)
    }

    @inlinable
    public static func table(paddr: UInt64, configuration: PageTableConfiguration) -> UInt64 {
        var pte = packAddress(paddr) | LPAEBits.typeTable
        if configuration.quirks.contains(.nonSecure) { pte |= LPAEBits.nsTable }
        return pte
    }

    @inlinable
    public static func isLeaf(_ pte: UInt64, level: Int) -> Bool {
        level == 3 ? pte & LPAEBits.typeMask == LPAEBits.typePage : pte & LPAEBits.typeMask == LPAEBits.typeBlock
    }

    @inlinable
    public static func isTable(_ pte: UInt64, level: Int) -> Bool {
        level < 3 && pte & LPAEBits.typeMask == LPAEBits.typeTable
    }

    @inlinable
    public static func attributes(ofLeaf pte: UInt64) -> UInt64 { pte & LPAEBits.attributeMask }

    /// The geometry both stages start from (Linux: `arm_lpae_alloc_pgtable` with
    /// `arm_lpae_restrict_pgsizes`), before the stage-specific checks.
    @inlinable
    static func baseGeometry(for configuration: PageTableConfiguration, concatenate: Bool) throws(IOMMUError) -> PageTableGeometry {
        let granuleShift = Granule.shift
        guard configuration.ias <= 52, configuration.oas <= 52 else {
            throw IOMMUError(.invalidConfiguration, address: UInt64(max(configuration.ias, configuration.oas)))
        }
        var pageSizes: UInt64
        let maxBits: Int
        switch granuleShift {
        case 12: pageSizes = (1 << 12) | (1 << 21) | (1 << 30); maxBits = 48
        case 14: pageSizes = (1 << 14) | (1 << 25); maxBits = 48
        default:
            pageSizes = (1 << 16) | (1 << 29)
            if configuration.oas > 48 { pageSizes |= 1 << 42 }
            maxBits = 52
        }
        let ias = min(configuration.ias, maxBits)
        let oas = min(configuration.oas, maxBits)
        let bitsPerLevel = granuleShift - 3
        let vaBits = ias - granuleShift
        // Linux has no lower bound; with no index bits left the walk would be meaningless.
        guard vaBits >= 1 else { throw IOMMUError(.invalidConfiguration, address: UInt64(max(ias, 0))) }
        let levels = (vaBits + bitsPerLevel - 1) / bitsPerLevel
        var startLevel = 4 - levels
        var pgdBits = vaBits - bitsPerLevel * (levels - 1)
        // Stage-2 concatenation, Linux up to 6.13: start at level 1 when level 0 would have at
        // most 16 entries (ARM_LPAE_S2_MAX_CONCAT_PAGES).
        if concatenate, startLevel == 0, (1 << pgdBits) <= 16 {
            pgdBits += bitsPerLevel
            startLevel += 1
        }
        guard [32, 36, 40, 42, 44, 48, 52].contains(oas) else {
            throw IOMMUError(.invalidConfiguration, address: UInt64(oas))
        }
        return PageTableGeometry(granuleShift: granuleShift, startLevel: startLevel, lastLevel: 3,
                                 pgdBits: pgdBits, rootCount: 1, ias: ias, oas: oas,
                                 pageSizes: PageSizeBitmap(rawValue: pageSizes))
    }
}

/// Arm LPAE stage 1 (Linux `ARM_64_LPAE_S1`) with granule `G`.
public enum ARMLPAEStage1<Granule: LPAEGranule>: ARMLPAEFormat {
    @inlinable public static var isStage2: Bool { false }
    @inlinable public static var kind: PageTableFormatKind { .armLPAEStage1 }

    public static func geometry(for configuration: PageTableConfiguration) throws(IOMMUError) -> PageTableGeometry {
        guard configuration.quirks.subtracting([.nonSecure, .hardwareDirty]).isEmpty else {
            throw IOMMUError(.invalidConfiguration, address: UInt64(configuration.quirks.rawValue))
        }
        return try baseGeometry(for: configuration, concatenate: false)
    }

    /// Linux: `arm_lpae_prot_to_pte`, stage-1 branch.
    @inlinable
    public static func leafAttributes(_ prot: IOMMUProt, configuration: PageTableConfiguration) -> UInt64 {
        var pte = LPAEBits.notGlobal
        if !prot.contains(.write) && prot.contains(.read) {
            pte |= LPAEBits.apReadOnly
        } else if configuration.quirks.contains(.hardwareDirty) {
            pte |= LPAEBits.dbm
        }
        if !prot.contains(.priv) { pte |= LPAEBits.apUnprivileged }
        if prot.contains(.mmio) {
            pte |= LPAEBits.mairIndexDevice << LPAEBits.attrIndexShift
        } else if prot.contains(.cache) {
            pte |= LPAEBits.mairIndexCache << LPAEBits.attrIndexShift
        }
        pte |= prot.contains(.cache) ? LPAEBits.shInner : LPAEBits.shOuter
        if prot.contains(.noExec) { pte |= LPAEBits.xn }
        if configuration.quirks.contains(.nonSecure) { pte |= LPAEBits.nonSecure }
        return pte | LPAEBits.accessFlag
    }
}

/// Arm LPAE stage 2 (Linux `ARM_64_LPAE_S2`) with granule `G`.
public enum ARMLPAEStage2<Granule: LPAEGranule>: ARMLPAEFormat {
    @inlinable public static var isStage2: Bool { true }
    @inlinable public static var kind: PageTableFormatKind { .armLPAEStage2 }

    public static func geometry(for configuration: PageTableConfiguration) throws(IOMMUError) -> PageTableGeometry {
        // Linux 6.12 stage 2 accepts no quirk at all.
        guard configuration.quirks.isEmpty else {
            throw IOMMUError(.invalidConfiguration, address: UInt64(configuration.quirks.rawValue))
        }
        return try baseGeometry(for: configuration, concatenate: true)
    }

    /// Linux: `arm_lpae_prot_to_pte`, stage-2 branch.
    @inlinable
    public static func leafAttributes(_ prot: IOMMUProt, configuration: PageTableConfiguration) -> UInt64 {
        var pte: UInt64 = 0
        if prot.contains(.read) { pte |= LPAEBits.hapRead }
        if prot.contains(.write) { pte |= LPAEBits.hapWrite }
        if prot.contains(.mmio) {
            pte |= LPAEBits.memAttrDevice
        } else if prot.contains(.cache) {
            pte |= LPAEBits.memAttrWriteBack
        } else {
            pte |= LPAEBits.memAttrNonCacheable
        }
        pte |= prot.contains(.cache) ? LPAEBits.shInner : LPAEBits.shOuter
        if prot.contains(.noExec) { pte |= LPAEBits.xn }
        return pte | LPAEBits.accessFlag
    }
}

// MARK: - Apple DART

/// Descriptor bits of the Apple DART formats. Linux: `io-pgtable-dart.c`.
public enum DARTBits {
    public static let valid: UInt64 = 1 << 0
    /// DART1: subpage protection disabled. (DART2 reuses bit 1 as "no cache"; Linux sets it on
    /// every DART2 leaf too.)
    public static let subpageDisable: UInt64 = 1 << 1
    public static let dart1NoWrite: UInt64 = 1 << 7
    public static let dart1NoRead: UInt64 = 1 << 8
    public static let dart2NoCache: UInt64 = 1 << 1
    public static let dart2NoWrite: UInt64 = 1 << 2
    public static let dart2NoRead: UInt64 = 1 << 3
    /// Subpage end field, bits 51:40 (Linux writes 0xfff: the whole page).
    public static let subpageEndShift: UInt64 = 40
    /// Subpage start field, bits 63:52 (Linux writes 0).
    public static let subpageStartShift: UInt64 = 52
    /// DART1 address: PA bits 35:12 in place.
    public static let dart1AddressMask: UInt64 = 0x0000_000F_FFFF_F000
    /// DART2 address: PA >> 4 in bits 37:10.
    public static let dart2AddressMask: UInt64 = 0x0000_003F_FFFF_FC00
}

/// Shared DART behaviour: 16 KiB pages only, two levels, up to four top-level tables.
public protocol AppleDARTFormat: PageTableFormat {
    /// DART2 descriptor layout (true) or DART1 (false).
    static var isDART2: Bool { get }
}

extension AppleDARTFormat {
    @inlinable public static var granuleShift: Int { 14 }
    @inlinable public static var checksInputRange: Bool { false }

    /// Linux: `apple_dart_alloc_pgtable` + `dart_alloc_pgtable` (16 KiB pages).
    public static func geometry(for configuration: PageTableConfiguration) throws(IOMMUError) -> PageTableGeometry {
        guard configuration.coherentWalk, configuration.quirks.isEmpty,
              configuration.oas == 36 || configuration.oas == 42,
              configuration.ias <= configuration.oas, configuration.ias > 14
        else { throw IOMMUError(.invalidConfiguration, address: UInt64(max(configuration.ias, 0))) }
        let bitsPerLevel = 11
        let vaBits = configuration.ias - 14
        let tableBits = max(0, vaBits - 2 * bitsPerLevel)
        guard 1 << tableBits <= 4 else { throw IOMMUError(.invalidConfiguration, address: UInt64(configuration.ias)) }
        return PageTableGeometry(granuleShift: 14, startLevel: 1, lastLevel: 2, pgdBits: bitsPerLevel,
                                 rootCount: 1 << tableBits, ias: configuration.ias, oas: configuration.oas,
                                 pageSizes: PageSizeBitmap(rawValue: 1 << 14))
    }

    @inlinable
    public static func packAddress(_ paddr: UInt64) -> UInt64 {
        isDART2 ? (paddr &>> 4) & DARTBits.dart2AddressMask : paddr & DARTBits.dart1AddressMask
    }

    @inlinable
    public static func outputAddress(_ pte: UInt64) -> UInt64 {
        isDART2 ? (pte & DARTBits.dart2AddressMask) &<< 4 : pte & DARTBits.dart1AddressMask
    }

    /// Linux: `dart_prot_to_pte`.
    @inlinable
    public static func leafAttributes(_ prot: IOMMUProt, configuration: PageTableConfiguration) -> UInt64 {
        var pte: UInt64 = 0
        if isDART2 {
            if !prot.contains(.write) { pte |= DARTBits.dart2NoWrite }
            if !prot.contains(.read) { pte |= DARTBits.dart2NoRead }
            if !prot.contains(.cache) { pte |= DARTBits.dart2NoCache }
        } else {
            if !prot.contains(.write) { pte |= DARTBits.dart1NoWrite }
            if !prot.contains(.read) { pte |= DARTBits.dart1NoRead }
        }
        return pte
    }

    /// Linux: `dart_init_pte` (whole-page subpage range, SP_DIS, VALID).
    @inlinable
    public static func leaf(attributes: UInt64, paddr: UInt64, level: Int) -> UInt64 {
        attributes | (0xFFF &<< DARTBits.subpageEndShift) | DARTBits.subpageDisable | DARTBits.valid | packAddress(paddr)
    }

    @inlinable
    public static func table(paddr: UInt64, configuration: PageTableConfiguration) -> UInt64 {
        packAddress(paddr) | DARTBits.valid
    }

    /// Linux treats any valid level-2 entry as present (`dart_init_pte` → -EEXIST).
    @inlinable
    public static func isLeaf(_ pte: UInt64, level: Int) -> Bool { level == 2 && pte & DARTBits.valid != 0 }

    /// Linux dereferences any non-zero level-1 entry.
    @inlinable
    public static func isTable(_ pte: UInt64, level: Int) -> Bool { level == 1 && pte != 0 }

    @inlinable
    public static func attributes(ofLeaf pte: UInt64) -> UInt64 {
        pte & ~(packAddress(~0) | DARTBits.valid)
    }
}

/// Apple DART1 descriptors (Linux `APPLE_DART`), 16 KiB pages.
public enum AppleDART: AppleDARTFormat {
    @inlinable public static var isDART2: Bool { false }
    @inlinable public static var kind: PageTableFormatKind { .appleDART }
}

/// Apple DART2 descriptors (Linux `APPLE_DART2`), 16 KiB pages.
public enum AppleDART2: AppleDARTFormat {
    @inlinable public static var isDART2: Bool { true }
    @inlinable public static var kind: PageTableFormatKind { .appleDART2 }
}
