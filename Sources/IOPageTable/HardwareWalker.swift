import IOMMUBase
import PhysicalMemory
import Synchronization

// The walker deliberately shares nothing with the map/unmap code: its own constants, its own
// decoding of registers and descriptors, written from the architecture's point of view. A wrong
// bit written by the table code therefore shows up as a wrong translation or a fault here.

/// The kind of an access a device makes.
public struct WalkAccess: Hashable, Sendable {
    public var write: Bool
    public var execute: Bool
    public var privileged: Bool

    @inlinable
    public init(write: Bool = false, execute: Bool = false, privileged: Bool = false) {
        self.write = write
        self.execute = execute
        self.privileged = privileged
    }

    public static let read = WalkAccess()
    public static let write = WalkAccess(write: true)
}

/// Why a walk failed, as an SMMU or DART would report it.
public enum WalkFaultKind: Hashable, Sendable, CustomStringConvertible {
    /// No valid descriptor (or an input address outside the configured range).
    case translation
    /// The descriptor forbids the access.
    case permission
    /// An output or table address has bits above the configured output size.
    case addressSize
    /// The descriptor's access flag is clear.
    case accessFlag
    /// A descriptor address that is not memory.
    case externalAbort

    public var description: String {
        switch self {
        case .translation: "translation fault"
        case .permission: "permission fault"
        case .addressSize: "address size fault"
        case .accessFlag: "access flag fault"
        case .externalAbort: "external abort on walk"
        }
    }
}

/// A fault: its kind, the level at which it happened and the input address.
public struct WalkFault: Hashable, Sendable, CustomStringConvertible {
    public var kind: WalkFaultKind
    public var level: Int
    public var iova: IOVA
    @inlinable public init(kind: WalkFaultKind, level: Int, iova: IOVA) {
        self.kind = kind
        self.level = level
        self.iova = iova
    }
    public var description: String { "\(kind) at level \(level) for iova \(iova)" }
}

/// The memory type a translation gives.
public enum WalkMemoryType: Hashable, Sendable {
    case device
    case normalNonCacheable
    case normalWriteBack
    /// An encoding the model does not classify (raw MAIR byte or MemAttr nibble).
    case other(UInt8)
}

/// A successful translation.
public struct WalkTranslation: Hashable, Sendable {
    /// The output (physical) address of the input address.
    public var physicalAddress: PhysAddr
    /// The level of the leaf that mapped it.
    public var level: Int
    /// log2 of the leaf's size (12 for a 4 KiB page, 21 for a 2 MiB block…).
    public var blockShift: Int
    /// Reads allowed (for privileged accesses, on stage 1).
    public var readable: Bool
    /// Writes allowed (for privileged accesses, on stage 1); with hardware dirty management a
    /// writable-clean leaf counts as writable.
    public var writable: Bool
    /// Instruction fetches allowed (unprivileged fetches on stage 1).
    public var executable: Bool
    /// Stage 1: only privileged accesses allowed (AP[1] clear).
    public var privilegedOnly: Bool
    /// Memory type from AttrIndx+MAIR (stage 1), MemAttr (stage 2) or the DART cache bit.
    public var memoryType: WalkMemoryType
    /// Shareability field (0 non, 2 outer, 3 inner); 0 for DART.
    public var shareability: UInt8
    /// NS bit of the leaf (stage 1).
    public var nonSecure: Bool
    /// The raw leaf descriptor.
    public var descriptor: UInt64
}

/// A walk's outcome: a translation or a fault (a modelled hardware outcome, never an error).
public enum WalkResult: Hashable, Sendable {
    case translated(WalkTranslation)
    case fault(WalkFault)

    /// The translation, if any.
    public var translation: WalkTranslation? {
        if case .translated(let t) = self { return t }
        return nil
    }
    /// The fault, if any.
    public var fault: WalkFault? {
        if case .fault(let f) = self { return f }
        return nil
    }
}

/// A read-only model of the hardware table walker, configured from register values.
///
/// SMMUv2/v3 stage 1 (TTBR0 + TCR + MAIR), stage 2 (VTTBR + VTCR), and Apple DART (TTBRs +
/// TCR). It reads raw descriptors from `PhysicalMemory` with acquire loads. The only write it
/// ever makes is the hardware dirty-state update (AP[2] cleared on a write to a DBM leaf) when
/// the TCR enables HD, as the architecture specifies.
public struct HardwareWalker: @unchecked Sendable {
    // @unchecked: `ramHostBase` points into `memory`'s RAM, whose words are accessed atomically.
    /// The translation regime.
    public enum Regime: Hashable, Sendable {
        case stage1
        case stage2
        case dart(isDART2: Bool)
    }

    public let memory: PhysicalMemory
    public let regime: Regime
    /// log2 of the translation granule.
    public let granuleShift: Int
    /// Input address bits.
    public let inputBits: Int
    /// Output address bits.
    public let outputBits: Int
    /// The level the walk starts at (LPAE numbering; DART 1).
    public let startLevel: Int
    /// Top-level table addresses (DART: one per valid TTBR).
    public let tableBases: [UInt64]
    @usableFromInline let mair: UInt64
    @usableFromInline let hardwareDirty: Bool
    // The RAM window's host mapping, so that reading a descriptor in RAM touches no class.
    @usableFromInline let ramHostBase: UnsafeMutableRawPointer
    @usableFromInline let ramFirst: UInt64
    @usableFromInline let ramLength: UInt64

    static func ramWindow(_ memory: PhysicalMemory) -> (UnsafeMutableRawPointer, UInt64, UInt64) {
        guard let word = memory.wordPointer(memory.ram.first) else { preconditionFailure("RAM has a host mapping") }
        return (UnsafeMutableRawPointer(word), memory.ram.first.rawValue, memory.ram.length)
    }

    // MARK: Configuration from registers

    /// A stage-1 walker from TTBR0, TCR (TCR_EL1 layout) and MAIR.
    ///
    /// - Throws: `invalidConfiguration` for a reserved TG0/IPS encoding or a T0SZ the granule
    ///   cannot start a walk for.
    public init(memory: PhysicalMemory, ttbr: UInt64, tcr: UInt64, mair: UInt64 = 0xF404_FF44) throws(IOMMUError) {
        let t0sz = Int(tcr & 0x3F)
        let granule: Int
        switch (tcr >> 14) & 3 {
        case 0: granule = 12
        case 1: granule = 16
        case 2: granule = 14
        default: throw IOMMUError(.invalidConfiguration, address: tcr)
        }
        let pa = try Self.decodePhysicalAddressSize((tcr >> 32) & 7, raw: tcr)
        let ias = 64 - t0sz
        guard ias > granule, ias <= 52 else { throw IOMMUError(.invalidConfiguration, address: tcr) }
        // Each level resolves (granule - 3) more bits above the page offset; count back from 3.
        var resolved = granule
        var level = 4
        while resolved < ias {
            resolved += granule - 3
            level -= 1
        }
        guard level >= 0 else { throw IOMMUError(.invalidConfiguration, address: tcr) }
        var base = ttbr & 0x0000_FFFF_FFFF_FFFE
        if pa == 52 { base = (base & ~0x3C) | (((ttbr >> 2) & 0xF) << 48) }
        self.memory = memory
        (self.ramHostBase, self.ramFirst, self.ramLength) = Self.ramWindow(memory)
        self.regime = .stage1
        self.granuleShift = granule
        self.inputBits = ias
        self.outputBits = pa
        self.startLevel = level
        self.tableBases = [base]
        self.mair = mair
        self.hardwareDirty = tcr & (1 << 40) != 0
    }

    /// A stage-2 walker from VTTBR and VTCR (VTCR_EL2 layout). The start level comes from SL0;
    /// a start level with more than 16 concatenated tables is refused as the architecture does.
    public init(memory: PhysicalMemory, vttbr: UInt64, vtcr: UInt64) throws(IOMMUError) {
        let t0sz = Int(vtcr & 0x3F)
        let sl0 = (vtcr >> 6) & 3
        let granule: Int
        switch (vtcr >> 14) & 3 {
        case 0: granule = 12
        case 1: granule = 16
        case 2: granule = 14
        default: throw IOMMUError(.invalidConfiguration, address: vtcr)
        }
        let pa = try Self.decodePhysicalAddressSize((vtcr >> 16) & 7, raw: vtcr)
        let level: Int
        if granule == 12 {
            switch sl0 { case 0: level = 2; case 1: level = 1; case 2: level = 0; default: throw IOMMUError(.invalidConfiguration, address: vtcr) }
        } else {
            switch sl0 { case 0: level = 3; case 1: level = 2; case 2: level = 1; default: throw IOMMUError(.invalidConfiguration, address: vtcr) }
        }
        let ias = 64 - t0sz
        // Bits resolved by the start level and below; the rest index concatenated tables.
        let resolvedBelowStart = granule + (4 - level) * (granule - 3)
        let concatenationBits = ias - resolvedBelowStart
        guard ias > granule, concatenationBits <= 4, ias > resolvedBelowStart - (granule - 3) else {
            throw IOMMUError(.invalidConfiguration, address: vtcr)
        }
        self.memory = memory
        (self.ramHostBase, self.ramFirst, self.ramLength) = Self.ramWindow(memory)
        self.regime = .stage2
        self.granuleShift = granule
        self.inputBits = ias
        self.outputBits = pa
        self.startLevel = level
        self.tableBases = [vttbr & 0x0000_FFFF_FFFF_FFFE]
        self.mair = 0
        self.hardwareDirty = false
    }

    /// A DART walker from the stream's TTBR registers and TCR (T8020 layout: TTBR = PA >> 12 |
    /// valid bit 31; TCR bit 7 = translation enable), 16 KiB pages, two levels.
    ///
    /// - Parameters:
    ///   - isDART2: DART2 descriptors (PA >> 4 in bits 37:10; no-read bit 3, no-write bit 2).
    public init(memory: PhysicalMemory, dartTTBRs: [UInt32], tcr: UInt32, isDART2: Bool, outputBits: Int = 36) throws(IOMMUError) {
        guard tcr & (1 << 7) != 0 else { throw IOMMUError(.invalidConfiguration, address: UInt64(tcr)) }
        var bases: [UInt64] = []
        for ttbr in dartTTBRs {
            guard ttbr & (1 << 31) != 0 else { break }
            bases.append(UInt64(ttbr & 0x7FFF_FFFF) << 12)
        }
        guard [1, 2, 4].contains(bases.count) else { throw IOMMUError(.invalidConfiguration, address: UInt64(tcr)) }
        self.memory = memory
        (self.ramHostBase, self.ramFirst, self.ramLength) = Self.ramWindow(memory)
        self.regime = .dart(isDART2: isDART2)
        self.granuleShift = 14
        self.inputBits = 36 + bases.count.trailingZeroBitCount
        self.outputBits = outputBits
        self.startLevel = 1
        self.tableBases = bases
        self.mair = 0
        self.hardwareDirty = false
    }

    /// A walker configured from a table's own register values.
    public init(memory: PhysicalMemory, registers: PageTableRegisters, isDART2: Bool = false, dartOutputBits: Int = 36) throws(IOMMUError) {
        switch registers {
        case .stage1(let r): try self.init(memory: memory, ttbr: r.ttbr, tcr: r.tcr, mair: r.mair)
        case .stage2(let r): try self.init(memory: memory, vttbr: r.vttbr, vtcr: r.vtcr)
        case .dart(let r): try self.init(memory: memory, dartTTBRs: r.ttbrs, tcr: r.tcr, isDART2: isDART2, outputBits: dartOutputBits)
        }
    }

    static func decodePhysicalAddressSize(_ field: UInt64, raw: UInt64) throws(IOMMUError) -> Int {
        switch field {
        case 0: 32
        case 1: 36
        case 2: 40
        case 3: 42
        case 4: 44
        case 5: 48
        case 6: 52
        default: throw IOMMUError(.invalidConfiguration, address: raw)
        }
    }

    // MARK: Walking

    @inlinable
    func read(_ address: UInt64) -> UInt64? {
        let offset = address &- ramFirst
        if offset < ramLength && offset & 7 == 0 {
            let word = (ramHostBase + Int(truncatingIfNeeded: offset)).assumingMemoryBound(to: Atomic<UInt64>.self)
            return UInt64(littleEndian: word.pointee.load(ordering: .acquiring))
        }
        return try? memory.load64(PhysAddr(address))
    }

    /// Translates `iova` for `access`, checking permissions (and, with HD, marking a
    /// writable-clean leaf dirty on a write).
    public func translate(_ iova: IOVA, access: WalkAccess = .read) -> WalkResult {
        switch regime {
        case .dart(let isDART2): return walkDART(iova, access: access, isDART2: isDART2)
        case .stage1, .stage2: return walkLPAE(iova, access: access, checkPermissions: true)
        }
    }

    /// Walks without checking permissions: what is mapped and with which rights.
    public func lookup(_ iova: IOVA) -> WalkResult {
        switch regime {
        case .dart(let isDART2): return walkDART(iova, access: nil, isDART2: isDART2)
        case .stage1, .stage2: return walkLPAE(iova, access: nil, checkPermissions: false)
        }
    }

    /// The output address bits of an LPAE descriptor.
    @inlinable
    func lpaeOutputAddress(_ descriptor: UInt64) -> UInt64 {
        let low = descriptor & 0x0000_FFFF_FFFF_F000
        guard granuleShift == 16 else { return low }
        // 64 KiB granule: OA[51:48] live in descriptor bits [15:12].
        return (low & ~0xF000) | (((descriptor >> 12) & 0xF) << 48)
    }

    /// Whether a block descriptor is architecturally allowed at `level` for this granule.
    @inlinable
    func blockAllowed(level: Int) -> Bool {
        switch granuleShift {
        case 12: return level == 1 || level == 2
        case 14: return level == 2
        default: return level == 2 || (level == 1 && outputBits == 52)
        }
    }

    func walkLPAE(_ iova: IOVA, access: WalkAccess?, checkPermissions: Bool) -> WalkResult {
        let input = iova.rawValue
        guard input >> UInt64(inputBits) == 0 else {
            return .fault(WalkFault(kind: .translation, level: 0, iova: iova))
        }
        let stride = granuleShift - 3
        var level = startLevel
        var table = tableBases[0]
        while true {
            let shift = granuleShift + (3 - level) * stride
            let bitsHere = level == startLevel ? inputBits - shift : stride
            let index = (input >> UInt64(shift)) & ((1 << UInt64(bitsHere)) - 1)
            let address = table + index * 8
            guard let descriptor = read(address) else {
                return .fault(WalkFault(kind: .externalAbort, level: level, iova: iova))
            }
            if descriptor & 1 == 0 { return .fault(WalkFault(kind: .translation, level: level, iova: iova)) }
            let isTableOrPage = descriptor & 2 != 0
            if level < 3 && isTableOrPage {
                let next = lpaeOutputAddress(descriptor)
                if next >> UInt64(outputBits) != 0 {
                    return .fault(WalkFault(kind: .addressSize, level: level, iova: iova))
                }
                table = next
                level += 1
                continue
            }
            if level == 3 && !isTableOrPage { return .fault(WalkFault(kind: .translation, level: level, iova: iova)) }
            if level < 3 && !blockAllowed(level: level) {
                return .fault(WalkFault(kind: .translation, level: level, iova: iova))
            }
            let blockMask = (UInt64(1) << UInt64(shift)) - 1
            let output = lpaeOutputAddress(descriptor) & ~blockMask
            if output >> UInt64(outputBits) != 0 {
                return .fault(WalkFault(kind: .addressSize, level: level, iova: iova))
            }
            if descriptor & (1 << 10) == 0 { return .fault(WalkFault(kind: .accessFlag, level: level, iova: iova)) }
            var translation = decodeLPAELeaf(descriptor, output: output | (input & blockMask), level: level, shift: shift)
            if checkPermissions, let access {
                if let kind = permissionFault(translation, descriptor: descriptor, access: access) {
                    if kind == .permission, regime == .stage1, hardwareDirty, access.write,
                       descriptor & (1 << 51) != 0, descriptor & (1 << 7) != 0,
                       access.privileged || descriptor & (1 << 6) != 0,
                       let word = memory.wordPointer(PhysAddr(address)) {
                        // Hardware dirty-state update: writable-clean → writable-dirty.
                        let updated = word.pointee.compareExchange(expected: descriptor, desired: descriptor & ~(1 << 7),
                                                                    ordering: .acquiringAndReleasing).exchanged
                        if updated {
                            translation.descriptor = descriptor & ~(1 << 7)
                            return .translated(translation)
                        }
                    }
                    return .fault(WalkFault(kind: kind, level: level, iova: iova))
                }
            }
            return .translated(translation)
        }
    }

    func decodeLPAELeaf(_ descriptor: UInt64, output: UInt64, level: Int, shift: Int) -> WalkTranslation {
        let bits76 = (descriptor >> 6) & 3
        let shareability = UInt8((descriptor >> 8) & 3)
        switch regime {
        case .stage1:
            let attrIndex = (descriptor >> 2) & 7
            let attr = UInt8((mair >> (attrIndex * 8)) & 0xFF)
            let memoryType: WalkMemoryType = switch attr {
            case 0x00, 0x04, 0x08, 0x0C: .device
            case 0x44: .normalNonCacheable
            case 0xFF: .normalWriteBack
            default: .other(attr)
            }
            let readOnly = bits76 & 2 != 0
            let dirtyManaged = hardwareDirty && descriptor & (1 << 51) != 0
            return WalkTranslation(physicalAddress: PhysAddr(output), level: level, blockShift: shift,
                                   readable: true, writable: !readOnly || dirtyManaged,
                                   executable: descriptor & (1 << 54) == 0,
                                   privilegedOnly: bits76 & 1 == 0, memoryType: memoryType,
                                   shareability: shareability, nonSecure: descriptor & (1 << 5) != 0,
                                   descriptor: descriptor)
        default:
            let memAttr = UInt8((descriptor >> 2) & 0xF)
            let memoryType: WalkMemoryType = switch memAttr {
            case 0x0, 0x1, 0x2, 0x3: .device
            case 0x5: .normalNonCacheable
            case 0xF: .normalWriteBack
            default: .other(memAttr)
            }
            return WalkTranslation(physicalAddress: PhysAddr(output), level: level, blockShift: shift,
                                   readable: bits76 & 1 != 0, writable: bits76 & 2 != 0,
                                   executable: descriptor & (1 << 54) == 0, privilegedOnly: false,
                                   memoryType: memoryType, shareability: shareability, nonSecure: false,
                                   descriptor: descriptor)
        }
    }

    func permissionFault(_ t: WalkTranslation, descriptor: UInt64, access: WalkAccess) -> WalkFaultKind? {
        switch regime {
        case .stage1:
            let unprivilegedAllowed = descriptor & (1 << 6) != 0
            let readOnly = descriptor & (1 << 7) != 0
            if !access.privileged && !unprivilegedAllowed { return .permission }
            if access.write && readOnly { return .permission }
            if access.execute {
                let never = access.privileged ? descriptor & (1 << 53) != 0 : descriptor & (1 << 54) != 0
                if never { return .permission }
            }
            return nil
        default:
            if access.write ? !t.writable : !t.readable { return .permission }
            if access.execute && !t.executable { return .permission }
            return nil
        }
    }

    func walkDART(_ iova: IOVA, access: WalkAccess?, isDART2: Bool) -> WalkResult {
        let input = iova.rawValue
        guard input >> UInt64(inputBits) == 0 else { return .fault(WalkFault(kind: .translation, level: 1, iova: iova)) }
        // 16 KiB pages: 14 offset bits, 11 bits per level; TTBR chosen by bits 37:36.
        let base = tableBases[Int((input >> 36) & UInt64(tableBases.count - 1))]
        func address(of descriptor: UInt64) -> UInt64 {
            isDART2 ? (descriptor & 0x0000_003F_FFFF_FC00) << 4 : descriptor & 0x0000_000F_FFFF_F000
        }
        guard let l1 = read(base + ((input >> 25) & 0x7FF) * 8) else {
            return .fault(WalkFault(kind: .externalAbort, level: 1, iova: iova))
        }
        if l1 & 1 == 0 { return .fault(WalkFault(kind: .translation, level: 1, iova: iova)) }
        guard let l2 = read(address(of: l1) + ((input >> 14) & 0x7FF) * 8) else {
            return .fault(WalkFault(kind: .externalAbort, level: 2, iova: iova))
        }
        if l2 & 1 == 0 { return .fault(WalkFault(kind: .translation, level: 2, iova: iova)) }
        let output = address(of: l2)
        if output >> UInt64(outputBits) != 0 { return .fault(WalkFault(kind: .addressSize, level: 2, iova: iova)) }
        let readable = isDART2 ? l2 & (1 << 3) == 0 : l2 & (1 << 8) == 0
        let writable = isDART2 ? l2 & (1 << 2) == 0 : l2 & (1 << 7) == 0
        let cached = isDART2 ? l2 & (1 << 1) == 0 : true
        let translation = WalkTranslation(physicalAddress: PhysAddr(output | (input & 0x3FFF)), level: 2, blockShift: 14,
                                          readable: readable, writable: writable, executable: true, privilegedOnly: false,
                                          memoryType: cached ? .normalWriteBack : .normalNonCacheable, shareability: 0,
                                          nonSecure: false, descriptor: l2)
        if let access {
            if access.write ? !writable : !readable { return .fault(WalkFault(kind: .permission, level: 2, iova: iova)) }
            // DART1 subpage protection (when not disabled): the offset must lie in [start, end] in
            // 4-byte units of fields 63:52 and 51:40.
            if !isDART2 && l2 & 2 == 0 {
                let offsetUnits = (input & 0x3FFF) >> 2
                if offsetUnits < (l2 >> 52) & 0xFFF || offsetUnits > (l2 >> 40) & 0xFFF {
                    return .fault(WalkFault(kind: .permission, level: 2, iova: iova))
                }
            }
        }
        return .translated(translation)
    }
}
