import IOMMUBase

/// Register fields of an Arm SMMU v2 (the subset IOMMUKit models), with the bit positions of
/// the architecture and Linux's `arm-smmu.h`.
public enum SMMURegister {
    // MARK: sCR0 (GR0 0x000)
    /// Client port disable: every transaction bypasses translation. Linux: `ARM_SMMU_sCR0_CLIENTPD`.
    public static let sCR0ClientPD: UInt32 = 1 << 0
    public static let sCR0GFRE: UInt32 = 1 << 1
    public static let sCR0GFIE: UInt32 = 1 << 2
    public static let sCR0EXIDENABLE: UInt32 = 1 << 3
    public static let sCR0GCFGFRE: UInt32 = 1 << 4
    public static let sCR0GCFGFIE: UInt32 = 1 << 5
    /// Unidentified stream fault configuration: 1 = fault, 0 = bypass. Linux: `ARM_SMMU_sCR0_USFCFG`.
    public static let sCR0USFCFG: UInt32 = 1 << 10
    public static let sCR0VMIDPNE: UInt32 = 1 << 11
    public static let sCR0PTM: UInt32 = 1 << 12
    public static let sCR0FB: UInt32 = 1 << 13
    public static let sCR0BSUMask: UInt32 = 3 << 14
    public static let sCR0VMID16EN: UInt32 = 1 << 31

    // MARK: sGFSR (GR0 0x048)
    /// Invalid context fault.
    public static let sGFSRICF: UInt32 = 1 << 0
    /// Unidentified stream fault. Linux: `ARM_SMMU_sGFSR_USF`.
    public static let sGFSRUSF: UInt32 = 1 << 1
    /// Stream match conflict.
    public static let sGFSRSMCF: UInt32 = 1 << 2
    /// Unimplemented context bank.
    public static let sGFSRUCBF: UInt32 = 1 << 3
    /// Multiple global faults.
    public static let sGFSRMULTI: UInt32 = 1 << 31

    // MARK: SMR / S2CR
    public static let smrIDMask: UInt32 = 0xFFFF
    public static let smrMaskShift: UInt32 = 16
    public static let smrValid: UInt32 = 1 << 31
    public static let s2crCBNDXMask: UInt32 = 0xFF
    public static let s2crEXIDVALID: UInt32 = 1 << 10
    public static let s2crTypeShift: UInt32 = 16
    public static let s2crPrivCfgShift: UInt32 = 24

    // MARK: CBAR / CBA2R (GR1)
    public static let cbarVMIDMask: UInt32 = 0xFF
    public static let cbarTypeShift: UInt32 = 16
    public static let cbarIRPTNDXShift: UInt32 = 24
    public static let cba2rVA64: UInt32 = 1 << 0
    public static let cba2rVMID16Shift: UInt32 = 16

    // MARK: Context bank SCTLR (0x0)
    public static let sctlrM: UInt32 = 1 << 0
    public static let sctlrTRE: UInt32 = 1 << 1
    public static let sctlrAFE: UInt32 = 1 << 2
    public static let sctlrE: UInt32 = 1 << 4
    public static let sctlrCFRE: UInt32 = 1 << 5
    public static let sctlrCFIE: UInt32 = 1 << 6
    public static let sctlrASIDPNE: UInt32 = 1 << 12

    // MARK: Context bank FSR (0x58), FSYNR0 (0x68)
    public static let fsrTF: UInt32 = 1 << 1
    public static let fsrAFF: UInt32 = 1 << 2
    public static let fsrPF: UInt32 = 1 << 3
    public static let fsrEF: UInt32 = 1 << 4
    public static let fsrTLBMCF: UInt32 = 1 << 5
    public static let fsrTLBLKF: UInt32 = 1 << 6
    public static let fsrASF: UInt32 = 1 << 7
    public static let fsrUUT: UInt32 = 1 << 8
    public static let fsrSS: UInt32 = 1 << 30
    public static let fsrMULTI: UInt32 = 1 << 31
    /// Every fault bit. Linux: `ARM_SMMU_CB_FSR_FAULT`.
    public static let fsrFault: UInt32 = fsrMULTI | fsrSS | fsrUUT | fsrASF | fsrTLBLKF | fsrTLBMCF | fsrEF | fsrPF | fsrAFF | fsrTF
    /// Write-not-read. Linux: `ARM_SMMU_CB_FSYNR0_WNR`.
    public static let fsynr0WNR: UInt32 = 1 << 4
    /// Faulting level (PLVL) in bits 1:0.
    public static let fsynr0PLVLMask: UInt32 = 3

    // MARK: ID registers
    /// Address-size codes of ID2.IAS/OAS/UBS: 0...5 → 32, 36, 40, 42, 44, 48 bits.
    public static let addressSizeCodes = [32, 36, 40, 42, 44, 48]

    static func addressSizeCode(_ bits: Int) -> UInt32 {
        UInt32(addressSizeCodes.lastIndex { $0 <= bits } ?? 0)
    }
}

/// The type field of a stream-to-context register. Linux: `enum arm_smmu_s2cr_type`.
public enum S2CRType: UInt32, Hashable, Sendable, CustomStringConvertible {
    /// Translate through the context bank in CBNDX.
    case translate = 0
    /// No translation.
    case bypass = 1
    /// Every transaction faults.
    case fault = 2

    public var description: String {
        switch self {
        case .translate: "translate"
        case .bypass: "bypass"
        case .fault: "fault"
        }
    }
}

/// The type of a context bank (CBAR.TYPE). Linux: `enum arm_smmu_cbar_type`.
public enum CBARType: UInt32, Hashable, Sendable {
    case stage2Translate = 0
    case stage1TranslateStage2Bypass = 1
    case stage1Stage2Fault = 2
    case nested = 3
}

/// A stream match register: `(id, mask, valid)`.
///
/// Linux: `struct arm_smmu_smr`; matching rule `((sid ^ id) & ~mask) == 0`.
public struct StreamMatchRegister: Hashable, Sendable, CustomStringConvertible {
    public var id: UInt16
    public var mask: UInt16
    public var valid: Bool

    public init(id: UInt16, mask: UInt16, valid: Bool) {
        self.id = id
        self.mask = mask
        self.valid = valid
    }

    /// The register value: ID 15:0, MASK 30:16 (bit 31 is VALID without EXIDS).
    public init(raw: UInt32) {
        id = UInt16(truncatingIfNeeded: raw & SMMURegister.smrIDMask)
        mask = UInt16(truncatingIfNeeded: (raw >> SMMURegister.smrMaskShift) & 0x7FFF)
        valid = raw & SMMURegister.smrValid != 0
    }

    public var raw: UInt32 {
        UInt32(id) | UInt32(mask & 0x7FFF) << SMMURegister.smrMaskShift | (valid ? SMMURegister.smrValid : 0)
    }

    /// Whether stream `sid` matches (ignoring `valid`).
    @inlinable public func matches(_ sid: UInt32) -> Bool {
        (sid ^ UInt32(id)) & ~UInt32(mask) & 0xFFFF == 0
    }

    public var description: String {
        "SMR id 0x\(String(id, radix: 16)) mask 0x\(String(mask, radix: 16))\(valid ? " valid" : "")"
    }
}

/// A stream-to-context register: type, context bank index, privilege configuration.
///
/// Linux: `struct arm_smmu_s2cr` (`type`, `cbndx`, `privcfg`).
public struct StreamToContextRegister: Hashable, Sendable, CustomStringConvertible {
    public var type: S2CRType
    public var contextBank: UInt8
    /// PRIVCFG: 0 default (use the incoming attribute), 1 unprivileged, 2 privileged.
    public var privilegeConfiguration: UInt8

    public init(type: S2CRType, contextBank: UInt8 = 0, privilegeConfiguration: UInt8 = 0) {
        self.type = type
        self.contextBank = contextBank
        self.privilegeConfiguration = privilegeConfiguration
    }

    public init(raw: UInt32) {
        type = S2CRType(rawValue: (raw >> SMMURegister.s2crTypeShift) & 3) ?? .fault
        contextBank = UInt8(truncatingIfNeeded: raw & SMMURegister.s2crCBNDXMask)
        privilegeConfiguration = UInt8(truncatingIfNeeded: (raw >> SMMURegister.s2crPrivCfgShift) & 3)
    }

    public var raw: UInt32 {
        UInt32(contextBank) | type.rawValue << SMMURegister.s2crTypeShift
            | UInt32(privilegeConfiguration) << SMMURegister.s2crPrivCfgShift
    }

    public var description: String {
        type == .translate ? "S2CR translate cb \(contextBank)" : "S2CR \(type)"
    }
}

/// The registers of one context bank (page 2 onwards, plus its GR1 CBAR/CBA2R/CBFRSYNRA).
public struct ContextBankRegisters: Hashable, Sendable {
    public var sctlr: UInt32 = 0
    /// TTBR0: table base (stage 1: ASID in bits 63:48).
    public var ttbr0: UInt64 = 0
    /// TCR (AArch64 TCR_EL1 layout for stage 1; VTCR layout for stage 2).
    public var tcr: UInt64 = 0
    /// MAIR0 | MAIR1 << 32.
    public var mair: UInt64 = 0
    public var fsr: UInt32 = 0
    public var far: UInt64 = 0
    public var fsynr0: UInt32 = 0
    /// GR1 CBAR(n): VMID 7:0, TYPE 17:16, IRPTNDX 31:24.
    public var cbar: UInt32 = 0
    /// GR1 CBA2R(n): VA64 bit 0, VMID16 31:16.
    public var cba2r: UInt32 = 0
    /// GR1 CBFRSYNRA(n): the stream ID of the faulting transaction.
    public var cbfrsynra: UInt32 = 0

    public init() {}

    /// SCTLR.M: translation enabled.
    public var isEnabled: Bool { sctlr & SMMURegister.sctlrM != 0 }
    /// CBAR.TYPE.
    public var type: CBARType { CBARType(rawValue: (cbar >> SMMURegister.cbarTypeShift) & 3) ?? .stage1Stage2Fault }
    /// The VMID (CBAR.VMID, or CBA2R.VMID16).
    public var vmid: UInt16 {
        let wide = UInt16(truncatingIfNeeded: cba2r >> SMMURegister.cba2rVMID16Shift)
        return wide != 0 ? wide : UInt16(cbar & SMMURegister.cbarVMIDMask)
    }
    /// The ASID (TTBR0 bits 63:48, stage 1).
    public var asid: UInt16 { type == .stage2Translate ? 0 : UInt16(truncatingIfNeeded: ttbr0 >> 48) }
}
