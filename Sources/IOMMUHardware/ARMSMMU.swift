import IOMMUBase
import IOMMUCore
import IOPageTable
import PhysicalMemory
import Synchronization

/// The shape of one Arm SMMU v2 instance: what its ID registers report.
public struct SMMUConfiguration: Hashable, Sendable {
    /// Stream match register groups (ID0.NUMSMRG, at most 128); 0 = stream *indexing* (ID0.SMS
    /// clear: the S2CR index is the stream ID itself).
    public var streamMatchRegisterCount: Int = 16
    /// Context banks (ID1.NUMCB, 1...128).
    public var contextBankCount: Int = 8
    /// The lowest context banks that can only do stage 2 (ID1.NUMS2CB).
    public var stage2OnlyContextBankCount: Int = 0
    /// Stream ID width (ID0.NUMSIDB, a 4-bit field: 1...15; 16-bit IDs need EXIDS, not modelled).
    public var streamIDBits: Int = 15
    /// SMR mask bits implemented (at most 15 without EXIDS); the driver finds them by writing
    /// all-ones to an SMR and reading back.
    public var smrMaskBits: Int = 15
    /// ID2.UBS (stage-1 input size), ID2.IAS (IPA size), ID2.OAS (PA size); 32/36/40/42/44/48.
    public var upstreamBusBits: Int = 48
    public var intermediateAddressBits: Int = 48
    public var outputAddressBits: Int = 48
    public var supportsStage1 = true
    public var supportsStage2 = true
    /// AArch64 translation granules (ID2.PTFS_4K/16K/64K).
    public var granules: [PageSize] = [.size4K, .size64K]
    /// Coherent table walks (ID0.CTTW).
    public var coherentTableWalk = true
    /// TLB entries and replacement.
    public var tlbEntryCount = 128
    public var tlbReplacement: TLBReplacementPolicy = .lru
    /// The unmatched-stream policy firmware left in sCR0 before any driver ran: true = fault.
    public var firmwareFaultsUnmatchedStreams = true
    /// Fault records kept for inspection (the newest).
    public var faultLogCapacity = 256

    public init() {}

    /// The ID registers this configuration implies.
    public var id0: UInt32 {
        var value = UInt32(streamMatchRegisterCount & 0xFF) | UInt32(streamIDBits & 0xF) << 9
        if coherentTableWalk { value |= 1 << 14 }
        if streamMatchRegisterCount > 0 { value |= 1 << 27 }
        if supportsStage2 { value |= 1 << 29 }
        if supportsStage1 { value |= 1 << 30 }
        return value
    }

    public var id1: UInt32 {
        UInt32(contextBankCount & 0xFF) | UInt32(stage2OnlyContextBankCount & 0xFF) << 16
    }

    public var id2: UInt32 {
        var value = SMMURegister.addressSizeCode(intermediateAddressBits) | SMMURegister.addressSizeCode(outputAddressBits) << 4
            | SMMURegister.addressSizeCode(upstreamBusBits) << 8
        if granules.contains(.size4K) { value |= 1 << 12 }
        if granules.contains(.size16K) { value |= 1 << 13 }
        if granules.contains(.size64K) { value |= 1 << 14 }
        return value
    }
}

/// One recorded fault, for inspection.
public struct SMMUFaultRecord: Hashable, Sendable, CustomStringConvertible {
    public enum Kind: Hashable, Sendable {
        /// A context fault recorded in the bank's FSR/FAR/FSYNR0 and CBFRSYNRA.
        case context(bank: Int)
        /// A global fault recorded in sGFSR/sGFSYNR (unidentified stream, stream match conflict…).
        case global
        /// The stream's S2CR is of type FAULT (blocked stream). The model records it here and
        /// raises the driver's stream-fault interrupt; it sets no sGFSR bit.
        case streamFault(index: Int)
    }
    public var kind: Kind
    public var fault: DMAFault
    /// FSR (context) or sGFSR (global) as latched for this fault.
    public var status: UInt32

    public var description: String { "\(kind): \(fault) status 0x\(String(status, radix: 16))" }
}

/// A register-level snapshot (for `iommu inspect`).
public struct SMMURegisterSnapshot: Hashable, Sendable {
    public var scr0: UInt32
    public var id0: UInt32
    public var id1: UInt32
    public var id2: UInt32
    public var sgfsr: UInt32
    public var sgfsynr0: UInt32
    public var sgfsynr1: UInt32
    public var sgfsynr2: UInt32
    public var sgfar: UInt64
    public var smrs: [StreamMatchRegister]
    public var s2crs: [StreamToContextRegister]
    public var contextBanks: [ContextBankRegisters]
}

/// What the SMMU signals to its driver ("interrupts"). Called on the DMA-issuing thread after the
/// model has dropped its lock.
public protocol SMMUInterruptHandler: AnyObject, Sendable {
    /// A context bank latched a fault (its FSR has fault bits). Linux: the context IRQ.
    func contextFault(smmu: ARMSMMU, bank: Int)
    /// sGFSR has fault bits. Linux: the global IRQ.
    func globalFault(smmu: ARMSMMU)
    /// A transaction hit a FAULT-type S2CR.
    func streamFault(smmu: ARMSMMU, record: SMMUFaultRecord)
}

/// A model of one Arm SMMU v2: stream matching (SMR/S2CR), context banks holding LPAE tables
/// walked by the independent `HardwareWalker` from their register values only, a model TLB with
/// posted invalidations, fault registers, and device DMA that moves real bytes.
///
/// Every register access and every transaction takes the model's one lock, which is never held
/// while calling out (interrupt handler, warnings are values only).
public final class ARMSMMU: DMATranslatingHardware, @unchecked Sendable {
    // @unchecked: all mutable state lives in `state` (a Mutex); `handler` in its own Mutex.
    public let configuration: SMMUConfiguration
    public let memory: PhysicalMemory
    public let instanceName: String
    let warnings: any WarningSink

    struct State {
        var scr0: UInt32
        var sgfsr: UInt32 = 0
        var sgfsynr0: UInt32 = 0
        var sgfsynr1: UInt32 = 0
        var sgfsynr2: UInt32 = 0
        var sgfar: UInt64 = 0
        var smrs: [UInt32]
        var s2crs: [UInt32]
        var banks: [ContextBankRegisters]
        var walkers: [HardwareWalker?]
        var walkerStale: [Bool]
        var tlb: ModelTLB
        /// Per stream ID: -2 not computed, -1 unmatched, -3 conflict, else the S2CR index.
        var streamLookup: [Int32]
        var faultLog: [SMMUFaultRecord] = []
        var bypassedTransactions: UInt64 = 0
        var faultCount: UInt64 = 0
    }

    let state: IOMMUMutex<State>
    /// Hot-path copies of configuration values (no struct copy on the DMA path).
    let streamKeyMask: UInt32
    let streamIndexing: Bool
    private let handlerBox = IOMMUMutex<WeakHandler>(WeakHandler())
    struct WeakHandler { weak var handler: (any SMMUInterruptHandler)? }

    /// The number of stream-map entries (SMRs, or 2^NUMSIDB S2CRs with stream indexing).
    public var streamMapEntryCount: Int {
        configuration.streamMatchRegisterCount > 0 ? configuration.streamMatchRegisterCount : 1 << configuration.streamIDBits
    }

    /// Creates an SMMU in the state firmware hands over: client port enabled, unmatched streams
    /// faulting (or bypassing, per `firmwareFaultsUnmatchedStreams`), every SMR invalid, every
    /// S2CR of type FAULT, every context bank disabled.
    public init(name: String, memory: PhysicalMemory, configuration: SMMUConfiguration = SMMUConfiguration(),
                warnings: any WarningSink = DiscardingWarningSink()) {
        precondition((0...128).contains(configuration.streamMatchRegisterCount), "at most 128 SMRs")
        precondition((1...128).contains(configuration.contextBankCount), "1...128 context banks")
        precondition((0...configuration.contextBankCount).contains(configuration.stage2OnlyContextBankCount))
        precondition((1...15).contains(configuration.streamIDBits), "NUMSIDB is 1...15")
        precondition((0...15).contains(configuration.smrMaskBits), "SMR mask is at most 15 bits")
        self.configuration = configuration
        self.memory = memory
        self.instanceName = name
        self.warnings = warnings
        self.streamKeyMask = UInt32((1 << configuration.streamIDBits) - 1)
        self.streamIndexing = configuration.streamMatchRegisterCount == 0
        let entries = configuration.streamMatchRegisterCount > 0 ? configuration.streamMatchRegisterCount : 1 << configuration.streamIDBits
        let banks = configuration.contextBankCount
        state = IOMMUMutex(State(
            scr0: configuration.firmwareFaultsUnmatchedStreams ? SMMURegister.sCR0USFCFG : 0,
            smrs: [UInt32](repeating: 0, count: configuration.streamMatchRegisterCount),
            s2crs: [UInt32](repeating: StreamToContextRegister(type: .fault).raw, count: entries),
            banks: [ContextBankRegisters](repeating: ContextBankRegisters(), count: banks),
            walkers: [HardwareWalker?](repeating: nil, count: banks),
            walkerStale: [Bool](repeating: true, count: banks),
            tlb: ModelTLB(capacity: configuration.tlbEntryCount, policy: configuration.tlbReplacement),
            streamLookup: [Int32](repeating: -2, count: 1 << configuration.streamIDBits)))
    }

    /// Installs the driver's interrupt handler (held weakly).
    public func setInterruptHandler(_ handler: (any SMMUInterruptHandler)?) {
        handlerBox.withLock { $0.handler = handler }
    }

    var interruptHandler: (any SMMUInterruptHandler)? { handlerBox.withLock { $0.handler } }

    // MARK: - Global registers

    public var id0: UInt32 { configuration.id0 }
    public var id1: UInt32 { configuration.id1 }
    public var id2: UInt32 { configuration.id2 }

    public func readSCR0() -> UInt32 { state.withLock { $0.scr0 } }
    public func writeSCR0(_ value: UInt32) { state.withLock { $0.scr0 = value } }

    /// sGFSR, the three syndromes and sGFAR (GR0 0x040, the faulting address).
    public func readGlobalFaultStatus() -> (gfsr: UInt32, gfsynr0: UInt32, gfsynr1: UInt32, gfsynr2: UInt32, gfar: UInt64) {
        state.withLock { ($0.sgfsr, $0.sgfsynr0, $0.sgfsynr1, $0.sgfsynr2, $0.sgfar) }
    }

    /// Write-one-to-clear sGFSR.
    public func clearGlobalFaultStatus(_ bits: UInt32) { state.withLock { $0.sgfsr &= ~bits } }

    // MARK: - Stream mapping registers

    /// Writes SMR(n). Unimplemented ID/MASK bits read back as zero (how the driver probes the
    /// mask widths).
    public func writeSMR(_ index: Int, _ raw: UInt32) {
        let idMask = UInt32((1 << configuration.streamIDBits) - 1)
        let maskMask = UInt32((1 << configuration.smrMaskBits) - 1) << SMMURegister.smrMaskShift
        state.withLock { s in
            s.smrs[index] = raw & (idMask | maskMask | SMMURegister.smrValid)
            for i in s.streamLookup.indices { s.streamLookup[i] = -2 }
        }
    }

    public func readSMR(_ index: Int) -> UInt32 { state.withLock { $0.smrs[index] } }
    public func writeS2CR(_ index: Int, _ raw: UInt32) { state.withLock { $0.s2crs[index] = raw } }
    public func readS2CR(_ index: Int) -> UInt32 { state.withLock { $0.s2crs[index] } }

    // MARK: - Context bank registers

    /// Writes a context bank's registers (SCTLR, TTBR0, TCR, MAIR, CBAR, CBA2R) in one locked
    /// step. The walker is rebuilt from the new values on the next transaction.
    public func writeContextBank(_ index: Int, _ update: (inout ContextBankRegisters) -> Void) {
        state.withLock { s in
            let fsr = s.banks[index].fsr
            update(&s.banks[index])
            s.banks[index].fsr = fsr  // FSR is write-one-to-clear, see clearContextFault
            s.walkerStale[index] = true
            s.walkers[index] = nil
        }
    }

    public func readContextBank(_ index: Int) -> ContextBankRegisters { state.withLock { $0.banks[index] } }

    /// Write-one-to-clear the bank's FSR.
    public func clearContextFault(_ index: Int, _ bits: UInt32) { state.withLock { $0.banks[index].fsr &= ~bits } }

    // MARK: - TLB maintenance

    /// TLBIVA / TLBIVAL: invalidate the entries of context bank `bank` (its ASID) covering
    /// `iova`. Posted: takes effect at the next `tlbSync`.
    public func tlbInvalidateAddress(bank: Int, iova: IOVA) {
        state.withLock { s in
            let asid = s.banks[bank].asid
            let vmid = s.banks[bank].vmid
            s.tlb.post { slot in
                Int(slot.context) == bank && slot.asid == asid && slot.vmid == vmid
                    && slot.pageNumber == iova.rawValue >> UInt64(slot.leafShift)
            }
        }
    }

    /// TLBIASID (stage 1) or TLBIVMID (stage 2) for a context bank. Posted.
    public func tlbInvalidateContext(bank: Int) {
        state.withLock { s in
            let asid = s.banks[bank].asid
            let vmid = s.banks[bank].vmid
            s.tlb.post { Int($0.context) == bank && $0.asid == asid && $0.vmid == vmid }
        }
    }

    /// TLBIALLNSNH + TLBIALLH: everything. Posted until `tlbGlobalSync`.
    public func tlbInvalidateAll() { state.withLock { s in s.tlb.post { _ in true } } }

    /// TLBSYNC of a context bank: completes the posted invalidations of that bank.
    public func tlbSync(bank: Int) { state.withLock { s in s.tlb.complete { Int($0.context) == bank } } }

    /// sTLBGSYNC: completes every posted invalidation.
    public func tlbGlobalSync() { state.withLock { s in s.tlb.complete { _ in true } } }

    /// Model hook (not a register): software removed the mappings of `[first, last]` from the
    /// table of `bank`; matching TLB entries are now stale until invalidated. Used by the driver
    /// so that stale hits can be counted.
    public func noteMappingsRemoved(bank: Int, first: UInt64, last: UInt64) {
        state.withLock { s in s.tlb.markMappingRemoved(context: bank, first: first, last: last) }
    }

    // MARK: - Inspection

    public var tlbStatistics: TLBStatistics { state.withLock { $0.tlb.statistics } }
    public var tlbEntries: [TLBEntry] { state.withLock { $0.tlb.entries } }
    public var faultLog: [SMMUFaultRecord] { state.withLock { $0.faultLog } }
    public var bypassedTransactionCount: UInt64 { state.withLock { $0.bypassedTransactions } }

    public func registerSnapshot() -> SMMURegisterSnapshot {
        state.withLock { s in
            SMMURegisterSnapshot(
                scr0: s.scr0, id0: configuration.id0, id1: configuration.id1, id2: configuration.id2,
                sgfsr: s.sgfsr, sgfsynr0: s.sgfsynr0, sgfsynr1: s.sgfsynr1, sgfsynr2: s.sgfsynr2, sgfar: s.sgfar,
                smrs: s.smrs.map(StreamMatchRegister.init(raw:)), s2crs: s.s2crs.map(StreamToContextRegister.init(raw:)),
                contextBanks: s.banks)
        }
    }

    // MARK: - Translation

    enum Step {
        case bypass
        case translated(physicalAddress: UInt64, leafShift: Int, hit: Bool, stale: Bool)
        case fault(SMMUFaultRecord, notify: Notify, staleHit: Bool = false)
    }

    enum Notify { case none, context(Int), global, stream }

    /// The S2CR index for a stream, from the cached lookup (-1 unmatched, -3 conflict).
    @inline(__always)
    func streamEntry(_ s: inout State, _ sid: UInt32) -> Int32 {
        let key = Int(sid & streamKeyMask)
        let cached = s.streamLookup[key]
        if cached != -2 { return cached }
        var found: Int32 = -1
        if streamIndexing {
            found = Int32(key)
        } else {
            for i in 0..<s.smrs.count {
                let smr = StreamMatchRegister(raw: s.smrs[i])
                guard smr.valid, smr.matches(sid) else { continue }
                if found >= 0 { found = -3; break }
                found = Int32(i)
            }
        }
        s.streamLookup[key] = found
        return found
    }

    func recordFault(_ s: inout State, _ record: SMMUFaultRecord) {
        s.faultCount &+= 1
        if s.faultLog.count >= configuration.faultLogCapacity { s.faultLog.removeFirst() }
        s.faultLog.append(record)
    }

    func globalFault(_ s: inout State, bits: UInt32, sid: UInt32, address: UInt64, isWrite: Bool, reason: IOMMUFaultReason) -> Step {
        if s.sgfsr & ~SMMURegister.sGFSRMULTI != 0 {
            s.sgfsr |= SMMURegister.sGFSRMULTI
        } else {
            s.sgfsr |= bits
            s.sgfsynr0 = isWrite ? 1 << 1 : 0
            s.sgfsynr1 = sid & 0xFFFF
            s.sgfsynr2 = 0
            s.sgfar = address
        }
        let record = SMMUFaultRecord(kind: .global, fault: DMAFault(streamID: StreamID(sid), address: address, isWrite: isWrite, reason: reason), status: s.sgfsr)
        recordFault(&s, record)
        return .fault(record, notify: .global)
    }

    /// Translates one input address of a transaction (lock held). `address` is where the page
    /// starts being used; the translation is valid to the end of its leaf.
    func translateLocked(_ s: inout State, sid: UInt32, address: UInt64, write: Bool, privileged: Bool) -> Step {
        if s.scr0 & SMMURegister.sCR0ClientPD != 0 { return .bypass }
        let entry = streamEntry(&s, sid)
        if entry == -1 {
            if s.scr0 & SMMURegister.sCR0USFCFG != 0 {
                return globalFault(&s, bits: SMMURegister.sGFSRUSF, sid: sid, address: address, isWrite: write, reason: .unidentifiedStream)
            }
            return .bypass
        }
        if entry == -3 {
            return globalFault(&s, bits: SMMURegister.sGFSRSMCF, sid: sid, address: address, isWrite: write, reason: .other)
        }
        let s2cr = StreamToContextRegister(raw: s.s2crs[Int(entry)])
        switch s2cr.type {
        case .bypass: return .bypass
        case .fault:
            let record = SMMUFaultRecord(kind: .streamFault(index: Int(entry)),
                                         fault: DMAFault(streamID: StreamID(sid), address: address, isWrite: write, reason: .blocked), status: 0)
            recordFault(&s, record)
            return .fault(record, notify: .stream)
        case .translate: break
        }
        let bank = Int(s2cr.contextBank)
        guard bank < s.banks.count else {
            return globalFault(&s, bits: SMMURegister.sGFSRUCBF, sid: sid, address: address, isWrite: write, reason: .other)
        }
        let sctlr = s.banks[bank].sctlr
        guard sctlr & SMMURegister.sctlrM != 0 else {
            warnings.warn(.smmuContextBankDisabledBypass(streamID: StreamID(sid), contextBank: bank, address: address))
            return .bypass
        }
        let effectivePrivileged = s2cr.privilegeConfiguration == 2 ? true : (s2cr.privilegeConfiguration == 1 ? false : privileged)
        let asid = s.banks[bank].asid
        let vmid = s.banks[bank].vmid
        if let slot = s.tlb.find(context: bank, asid: asid, vmid: vmid, iova: address) {
            let entry = s.tlb.slots[slot]
            s.tlb.touch(slot)
            s.tlb.statistics.hits &+= 1
            if entry.mappingRemoved { s.tlb.statistics.staleHits &+= 1 }
            let allowed = (write ? entry.writable : entry.readable) && (!entry.privilegedOnly || effectivePrivileged)
            if !allowed {
                guard case let .fault(record, notify, _) = contextFault(&s, bank: bank, sid: sid, address: address, write: write, kind: .permission, level: 3)
                else { preconditionFailure("contextFault returns a fault") }
                return .fault(record, notify: notify, staleHit: entry.mappingRemoved)
            }
            let offset = address & ((UInt64(1) << UInt64(entry.leafShift)) &- 1)
            return .translated(physicalAddress: entry.physicalBase | offset, leafShift: Int(entry.leafShift), hit: true, stale: entry.mappingRemoved)
        }
        s.tlb.statistics.misses &+= 1
        if s.walkerStale[bank] {
            s.walkerStale[bank] = false
            s.walkers[bank] = Self.makeWalker(memory: memory, s.banks[bank])
        }
        guard let walker = s.walkers[bank] else {
            return contextFault(&s, bank: bank, sid: sid, address: address, write: write, kind: .translation, level: 0)
        }
        switch walker.translate(IOVA(address), access: WalkAccess(write: write, privileged: effectivePrivileged)) {
        case .translated(let t):
            s.tlb.insert(context: bank, asid: asid, vmid: vmid, iova: address, leafShift: t.blockShift,
                         physicalAddress: t.physicalAddress.rawValue, readable: t.readable, writable: t.writable,
                         privilegedOnly: t.privilegedOnly)
            return .translated(physicalAddress: t.physicalAddress.rawValue, leafShift: t.blockShift, hit: false, stale: false)
        case .fault(let f):
            return contextFault(&s, bank: bank, sid: sid, address: address, write: write, kind: f.kind, level: f.level)
        }
    }

    /// The walker a context bank's registers configure (nil: the bank's type translates
    /// nothing the model walks — every access faults). Also used by the isolation audit.
    package static func makeWalker(memory: PhysicalMemory, _ r: ContextBankRegisters) -> HardwareWalker? {
        switch r.type {
        case .stage2Translate:
            return try? HardwareWalker(memory: memory, vttbr: r.ttbr0, vtcr: r.tcr)
        case .stage1TranslateStage2Bypass:
            guard r.cba2r & SMMURegister.cba2rVA64 != 0 else { return nil }  // only the AArch64 format is modelled
            return try? HardwareWalker(memory: memory, ttbr: r.ttbr0 & 0x0000_FFFF_FFFF_FFFF, tcr: r.tcr, mair: r.mair)
        case .stage1Stage2Fault, .nested:
            return nil
        }
    }

    func contextFault(_ s: inout State, bank: Int, sid: UInt32, address: UInt64, write: Bool, kind: WalkFaultKind, level: Int) -> Step {
        let bit: UInt32
        let reason: IOMMUFaultReason
        switch kind {
        case .translation: bit = SMMURegister.fsrTF; reason = .translation
        case .permission: bit = SMMURegister.fsrPF; reason = .permission
        case .accessFlag: bit = SMMURegister.fsrAFF; reason = .accessFlag
        case .addressSize: bit = SMMURegister.fsrASF; reason = .addressSize
        case .externalAbort: bit = SMMURegister.fsrEF; reason = .other
        }
        if s.banks[bank].fsr & SMMURegister.fsrFault != 0 {
            s.banks[bank].fsr |= SMMURegister.fsrMULTI
        } else {
            s.banks[bank].fsr = bit
            s.banks[bank].far = address
            s.banks[bank].fsynr0 = (write ? SMMURegister.fsynr0WNR : 0) | UInt32(level & 3)
            s.banks[bank].cbfrsynra = sid & 0xFFFF
        }
        let record = SMMUFaultRecord(
            kind: .context(bank: bank),
            fault: DMAFault(streamID: StreamID(sid), address: address, isWrite: write, reason: reason, level: level, context: bank),
            status: s.banks[bank].fsr)
        recordFault(&s, record)
        let enabled = s.banks[bank].sctlr & SMMURegister.sctlrCFIE != 0
        return .fault(record, notify: enabled ? .context(bank) : .none)
    }

    /// Translates a single input address as a transaction from `streamID` would, without moving
    /// bytes (faults are recorded and signalled as for DMA).
    public func translate(streamID: StreamID, address: UInt64, write: Bool = false, privileged: Bool = false) -> (physicalAddress: UInt64?, outcome: DMAOutcome) {
        let step = state.withLock { s in translateLocked(&s, sid: streamID.rawValue, address: address, write: write, privileged: privileged) }
        var outcome = DMAOutcome()
        switch step {
        case .bypass:
            outcome.bypassed = true
            noteBypass(streamID: streamID, address: address)
            return (address, outcome)
        case let .translated(pa, _, hit, stale):
            if hit { outcome.tlbHits = 1 } else { outcome.tlbMisses = 1 }
            if stale { outcome.staleTLBHits = 1 }
            return (pa, outcome)
        case let .fault(record, notify, staleHit):
            outcome.fault = record.fault
            if staleHit { outcome.staleTLBHits = 1 }
            signal(notify, record)
            return (nil, outcome)
        }
    }

    func noteBypass(streamID: StreamID, address: UInt64) {
        // Only unmatched streams and a disabled client port are surprising; a BYPASS S2CR is a
        // choice (identity domain) and is not reported.
        let surprising = state.withLock { s -> Bool in
            s.bypassedTransactions &+= 1
            if s.scr0 & SMMURegister.sCR0ClientPD != 0 { return true }
            return streamEntry(&s, streamID.rawValue) == -1
        }
        if surprising { warnings.warn(.smmuUnmatchedStreamBypassed(streamID: streamID, address: address)) }
    }

    func signal(_ notify: Notify, _ record: SMMUFaultRecord) {
        guard let handler = interruptHandler else { return }
        switch notify {
        case .none: break
        case .context(let bank): handler.contextFault(smmu: self, bank: bank)
        case .global: handler.globalFault(smmu: self)
        case .stream: handler.streamFault(smmu: self, record: record)
        }
    }

    // MARK: - Device DMA

    @inline(__always)
    func translateTransaction(sid: UInt32, address: UInt64, length: Int, write: Bool, privileged: Bool,
                              segments: UnsafeMutableBufferPointer<DMASegment>) -> (DMATranslation, Notify, SMMUFaultRecord?) {
        state.withLock { s in
            var result = DMATranslation()
            var current = address
            var remaining = length == 0 ? 1 : length
            var notify = Notify.none
            var faultRecord: SMMUFaultRecord?
            while remaining > 0 {
                switch translateLocked(&s, sid: sid, address: current, write: write, privileged: privileged) {
                case .bypass:
                    result.outcome.bypassed = true
                    s.bypassedTransactions &+= 1
                    segments[result.segmentCount] = DMASegment(physicalAddress: current, length: length)
                    result.segmentCount += 1
                    if length != 0, result.segmentCount > 1 {
                        // A bypass in the middle of a transaction cannot happen: bypass is per stream.
                        preconditionFailure("bypass after translation in one transaction")
                    }
                    return (result, notify, faultRecord)
                case let .translated(pa, leafShift, hit, stale):
                    if hit { result.outcome.tlbHits += 1 } else { result.outcome.tlbMisses += 1 }
                    if stale { result.outcome.staleTLBHits += 1 }
                    let leafEnd = (current | ((UInt64(1) << UInt64(leafShift)) &- 1)) &+ 1
                    let chunk = leafEnd == 0 ? remaining : Int(min(UInt64(remaining), leafEnd &- current))
                    if result.segmentCount > 0,
                       segments[result.segmentCount - 1].physicalAddress &+ UInt64(segments[result.segmentCount - 1].length) == pa {
                        segments[result.segmentCount - 1].length += chunk
                    } else {
                        segments[result.segmentCount] = DMASegment(physicalAddress: pa, length: chunk)
                        result.segmentCount += 1
                    }
                    remaining -= chunk
                    current &+= UInt64(chunk)
                case let .fault(record, n, staleHit):
                    result.outcome.fault = record.fault
                    if staleHit { result.outcome.staleTLBHits += 1 }
                    notify = n
                    faultRecord = record
                    return (result, notify, faultRecord)
                }
            }
            if length == 0 { segments[0].length = 0 }
            return (result, notify, faultRecord)
        }
    }

    public func dmaRead(streamID: StreamID, address: UInt64, into buffer: UnsafeMutableRawBufferPointer, privileged: Bool = false) -> DMAOutcome {
        var notify = Notify.none
        var record: SMMUFaultRecord?
        let result = performDMA(memory: memory, length: buffer.count, isWrite: false, translate: { segments in
            let (t, n, r) = translateTransaction(sid: streamID.rawValue, address: address, length: buffer.count, write: false, privileged: privileged, segments: segments)
            notify = n
            record = r
            return t
        }, move: { (pa, offset, length) throws(IOMMUError) in
            guard length > 0 else { return }
            try memory.read(PhysAddr(pa), into: UnsafeMutableRawBufferPointer(rebasing: buffer[offset..<(offset + length)]))
        })
        return finish(result.outcome, streamID: streamID, address: address, notify: notify, record: record)
    }

    public func dmaWrite(streamID: StreamID, address: UInt64, from bytes: UnsafeRawBufferPointer, privileged: Bool = false) -> DMAOutcome {
        var notify = Notify.none
        var record: SMMUFaultRecord?
        let result = performDMA(memory: memory, length: bytes.count, isWrite: true, translate: { segments in
            let (t, n, r) = translateTransaction(sid: streamID.rawValue, address: address, length: bytes.count, write: true, privileged: privileged, segments: segments)
            notify = n
            record = r
            return t
        }, move: { (pa, offset, length) throws(IOMMUError) in
            guard length > 0 else { return }
            try memory.write(PhysAddr(pa), from: UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + length)]))
        })
        return finish(result.outcome, streamID: streamID, address: address, notify: notify, record: record)
    }

    @inline(__always)
    func finish(_ outcome: DMAOutcome, streamID: StreamID, address: UInt64, notify: Notify, record: SMMUFaultRecord?) -> DMAOutcome {
        var outcome = outcome
        if var fault = outcome.fault, record == nil {
            fault.streamID = streamID  // a bus error while moving bytes
            outcome.fault = fault
        }
        if outcome.bypassed, outcome.fault == nil {
            let surprising = state.withLock { s -> Bool in
                s.scr0 & SMMURegister.sCR0ClientPD != 0 || streamEntry(&s, streamID.rawValue) == -1
            }
            if surprising { warnings.warn(.smmuUnmatchedStreamBypassed(streamID: streamID, address: address)) }
        }
        if let record { signal(notify, record) }
        return outcome
    }
}
