import IOMMUBase
import IOMMUCore
import IOPageTable
import PhysicalMemory
import Synchronization

/// The shape of one Apple DART (T8020-like): page size, streams, bypass support.
public struct DARTConfiguration: Hashable, Sendable {
    /// log2 of the DART page (DART_PARAMS1 bits 27:24); 14 = 16 KiB, as on M1-family DARTs.
    /// Only 16 KiB is modelled by the page-table layer.
    public var pageShift = 14
    /// Streams (16 on T8020).
    public var streamCount = 16
    /// DART_PARAMS2 bit 0.
    public var supportsBypass = true
    /// Output address bits.
    public var outputAddressBits = 36
    public var tlbEntryCount = 64
    public var tlbReplacement: TLBReplacementPolicy = .lru
    public var faultLogCapacity = 256
    public init() {}

    public var params1: UInt32 { UInt32(pageShift) << 24 }
    public var params2: UInt32 { supportsBypass ? 1 : 0 }
}

/// DART register fields (T8020 layout). Linux: `apple-dart.c` `DART_T8020_*`.
public enum DARTRegister {
    /// TCR: translation enable.
    public static let tcrTranslateEnable: UInt32 = 1 << 7
    /// TCR: bypass the DART.
    public static let tcrBypassDART: UInt32 = 1 << 8
    /// TTBR valid.
    public static let ttbrValid: UInt32 = 1 << 31
    /// ERROR: a fault is latched.
    public static let errorFlag: UInt32 = 1 << 31
    public static let errorStreamShift: UInt32 = 24
    public static let errorNoTTBR: UInt32 = 1 << 0
    public static let errorNoPMD: UInt32 = 1 << 1
    public static let errorNoPTE: UInt32 = 1 << 2
    public static let errorWriteFault: UInt32 = 1 << 3
    public static let errorReadFault: UInt32 = 1 << 4
}

/// Per-stream registers.
public struct DARTStreamRegisters: Hashable, Sendable {
    public var tcr: UInt32 = 0
    public var ttbrs: [UInt32] = [0, 0, 0, 0]
}

/// What a DART signals to its driver.
public protocol DARTInterruptHandler: AnyObject, Sendable {
    func dartFault(_ dart: DART)
}

/// A model of an Apple DART: per-stream TCR and TTBRs, a two-level 16 KiB table walked by
/// `HardwareWalker` from the TTBR values, a TLB tagged by stream, one error register.
public final class DART: DMATranslatingHardware, @unchecked Sendable {
    // @unchecked: mutable state lives in `state`.
    public let configuration: DARTConfiguration
    public let memory: PhysicalMemory
    public let instanceName: String
    let warnings: any WarningSink

    struct State {
        var streams: [DARTStreamRegisters]
        var walkers: [HardwareWalker?]
        var walkerStale: [Bool]
        var error: UInt32 = 0
        var errorAddress: UInt64 = 0
        var tlb: ModelTLB
        var faultLog: [DMAFault] = []
    }

    let state: IOMMUMutex<State>
    private let handlerBox = IOMMUMutex<WeakHandler>(WeakHandler())
    struct WeakHandler { weak var handler: (any DARTInterruptHandler)? }

    public init(name: String, memory: PhysicalMemory, configuration: DARTConfiguration = DARTConfiguration(),
                warnings: any WarningSink = DiscardingWarningSink()) {
        precondition((1...16).contains(configuration.streamCount), "1...16 streams")
        self.configuration = configuration
        self.memory = memory
        self.instanceName = name
        self.warnings = warnings
        let n = configuration.streamCount
        state = IOMMUMutex(State(streams: [DARTStreamRegisters](repeating: DARTStreamRegisters(), count: n),
                            walkers: [HardwareWalker?](repeating: nil, count: n), walkerStale: [Bool](repeating: true, count: n),
                            tlb: ModelTLB(capacity: configuration.tlbEntryCount, policy: configuration.tlbReplacement)))
    }

    public func setInterruptHandler(_ handler: (any DARTInterruptHandler)?) { handlerBox.withLock { $0.handler = handler } }

    public var params1: UInt32 { configuration.params1 }
    public var params2: UInt32 { configuration.params2 }

    /// Writes a stream's TCR and TTBRs.
    public func writeStream(_ index: Int, tcr: UInt32, ttbrs: [UInt32]) {
        state.withLock { s in
            s.streams[index].tcr = tcr
            s.streams[index].ttbrs = (ttbrs + [0, 0, 0, 0]).prefix(4).map { $0 }
            s.walkerStale[index] = true
            s.walkers[index] = nil
        }
    }

    public func readStream(_ index: Int) -> DARTStreamRegisters { state.withLock { $0.streams[index] } }

    /// STREAM_COMMAND INVALIDATE for the streams in `mask` (completes synchronously, as the
    /// driver polls for it).
    public func invalidateTLB(streamMask: UInt32) {
        state.withLock { s in
            s.tlb.post { streamMask & (1 << UInt32($0.context)) != 0 }
            s.tlb.complete { streamMask & (1 << UInt32($0.context)) != 0 }
        }
    }

    /// Model hook: software removed mappings `[first, last]` from the table of these streams.
    public func noteMappingsRemoved(streamMask: UInt32, first: UInt64, last: UInt64) {
        state.withLock { s in
            for stream in 0..<configuration.streamCount where streamMask & (1 << UInt32(stream)) != 0 {
                s.tlb.markMappingRemoved(context: stream, first: first, last: last)
            }
        }
    }

    /// ERROR and ERROR_ADDR.
    public func readError() -> (status: UInt32, address: UInt64) { state.withLock { ($0.error, $0.errorAddress) } }
    /// Write-one-to-clear ERROR.
    public func clearError(_ bits: UInt32) { state.withLock { $0.error &= ~bits } }

    public var tlbStatistics: TLBStatistics { state.withLock { $0.tlb.statistics } }
    public var tlbEntries: [TLBEntry] { state.withLock { $0.tlb.entries } }
    public var faultLog: [DMAFault] { state.withLock { $0.faultLog } }

    // MARK: - Translation

    enum Step {
        case bypass
        case translated(physicalAddress: UInt64, leafShift: Int, hit: Bool, stale: Bool)
        case fault(DMAFault, staleHit: Bool = false)
    }

    func fault(_ s: inout State, stream: Int, address: UInt64, write: Bool, code: UInt32, reason: IOMMUFaultReason, level: Int?) -> Step {
        if s.error & DARTRegister.errorFlag == 0 {
            s.error = DARTRegister.errorFlag | UInt32(stream) << DARTRegister.errorStreamShift | code
            s.errorAddress = address
        }
        let f = DMAFault(streamID: StreamID(UInt32(stream)), address: address, isWrite: write, reason: reason, level: level, context: stream)
        if s.faultLog.count >= configuration.faultLogCapacity { s.faultLog.removeFirst() }
        s.faultLog.append(f)
        return .fault(f)
    }

    func translateLocked(_ s: inout State, stream: Int, address: UInt64, write: Bool) -> Step {
        guard stream < configuration.streamCount else {
            return fault(&s, stream: stream & 0xF, address: address, write: write, code: DARTRegister.errorNoTTBR, reason: .unidentifiedStream, level: nil)
        }
        let tcr = s.streams[stream].tcr
        if tcr & DARTRegister.tcrBypassDART != 0 && configuration.supportsBypass { return .bypass }
        guard tcr & DARTRegister.tcrTranslateEnable != 0 else {
            return fault(&s, stream: stream, address: address, write: write, code: DARTRegister.errorNoTTBR, reason: .blocked, level: nil)
        }
        if let slot = s.tlb.find(context: stream, asid: 0, vmid: 0, iova: address) {
            let e = s.tlb.slots[slot]
            s.tlb.touch(slot)
            s.tlb.statistics.hits &+= 1
            if e.mappingRemoved { s.tlb.statistics.staleHits &+= 1 }
            guard write ? e.writable : e.readable else {
                guard case .fault(let f, _) = fault(&s, stream: stream, address: address, write: write,
                                                    code: write ? DARTRegister.errorWriteFault : DARTRegister.errorReadFault, reason: .permission, level: 2)
                else { preconditionFailure("fault returns a fault") }
                return .fault(f, staleHit: e.mappingRemoved)
            }
            let offset = address & ((UInt64(1) << UInt64(e.leafShift)) &- 1)
            return .translated(physicalAddress: e.physicalBase | offset, leafShift: Int(e.leafShift), hit: true, stale: e.mappingRemoved)
        }
        s.tlb.statistics.misses &+= 1
        if s.walkerStale[stream] {
            s.walkerStale[stream] = false
            s.walkers[stream] = try? HardwareWalker(memory: memory, dartTTBRs: s.streams[stream].ttbrs, tcr: tcr, isDART2: false,
                                                    outputBits: configuration.outputAddressBits)
        }
        guard let walker = s.walkers[stream] else {
            return fault(&s, stream: stream, address: address, write: write, code: DARTRegister.errorNoTTBR, reason: .translation, level: 0)
        }
        switch walker.translate(IOVA(address), access: WalkAccess(write: write)) {
        case .translated(let t):
            s.tlb.insert(context: stream, asid: 0, vmid: 0, iova: address, leafShift: t.blockShift, physicalAddress: t.physicalAddress.rawValue,
                         readable: t.readable, writable: t.writable, privilegedOnly: false)
            return .translated(physicalAddress: t.physicalAddress.rawValue, leafShift: t.blockShift, hit: false, stale: false)
        case .fault(let f):
            let code: UInt32
            let reason: IOMMUFaultReason
            switch f.kind {
            case .permission:
                code = write ? DARTRegister.errorWriteFault : DARTRegister.errorReadFault
                reason = .permission
            case .translation:
                code = f.level <= 1 ? DARTRegister.errorNoPMD : DARTRegister.errorNoPTE
                reason = .translation
            case .addressSize: code = DARTRegister.errorNoTTBR; reason = .addressSize
            case .accessFlag: code = DARTRegister.errorNoPTE; reason = .accessFlag
            case .externalAbort: code = DARTRegister.errorNoPTE; reason = .other
            }
            return fault(&s, stream: stream, address: address, write: write, code: code, reason: reason, level: f.level)
        }
    }

    func translateTransaction(stream: Int, address: UInt64, length: Int, write: Bool,
                              segments: UnsafeMutableBufferPointer<DMASegment>) -> DMATranslation {
        state.withLock { s in
            var result = DMATranslation()
            var current = address
            var remaining = length == 0 ? 1 : length
            while remaining > 0 {
                switch translateLocked(&s, stream: stream, address: current, write: write) {
                case .bypass:
                    result.outcome.bypassed = true
                    segments[0] = DMASegment(physicalAddress: address, length: length)
                    result.segmentCount = 1
                    return result
                case let .translated(pa, leafShift, hit, stale):
                    if hit { result.outcome.tlbHits += 1 } else { result.outcome.tlbMisses += 1 }
                    if stale { result.outcome.staleTLBHits += 1 }
                    let leafEnd = (current | ((UInt64(1) << UInt64(leafShift)) &- 1)) &+ 1
                    let chunk = Int(min(UInt64(remaining), leafEnd &- current))
                    if result.segmentCount > 0,
                       segments[result.segmentCount - 1].physicalAddress &+ UInt64(segments[result.segmentCount - 1].length) == pa {
                        segments[result.segmentCount - 1].length += chunk
                    } else {
                        segments[result.segmentCount] = DMASegment(physicalAddress: pa, length: chunk)
                        result.segmentCount += 1
                    }
                    remaining -= chunk
                    current &+= UInt64(chunk)
                case let .fault(f, staleHit):
                    result.outcome.fault = f
                    if staleHit { result.outcome.staleTLBHits += 1 }
                    return result
                }
            }
            if length == 0 { segments[0].length = 0 }
            return result
        }
    }

    public func dmaRead(streamID: StreamID, address: UInt64, into buffer: UnsafeMutableRawBufferPointer, privileged: Bool = false) -> DMAOutcome {
        let result = performDMA(memory: memory, length: buffer.count, isWrite: false, translate: { segments in
            translateTransaction(stream: Int(streamID.rawValue), address: address, length: buffer.count, write: false, segments: segments)
        }, move: { (pa, offset, length) throws(IOMMUError) in
            guard length > 0 else { return }
            try memory.read(PhysAddr(pa), into: UnsafeMutableRawBufferPointer(rebasing: buffer[offset..<(offset + length)]))
        })
        return finish(result.outcome)
    }

    public func dmaWrite(streamID: StreamID, address: UInt64, from bytes: UnsafeRawBufferPointer, privileged: Bool = false) -> DMAOutcome {
        let result = performDMA(memory: memory, length: bytes.count, isWrite: true, translate: { segments in
            translateTransaction(stream: Int(streamID.rawValue), address: address, length: bytes.count, write: true, segments: segments)
        }, move: { (pa, offset, length) throws(IOMMUError) in
            guard length > 0 else { return }
            try memory.write(PhysAddr(pa), from: UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + length)]))
        })
        return finish(result.outcome)
    }

    func finish(_ outcome: DMAOutcome) -> DMAOutcome {
        if outcome.fault != nil, let handler = handlerBox.withLock({ $0.handler }) { handler.dartFault(self) }
        return outcome
    }
}
