import IOMMUBase

/// One mapping as the DMA-API debug layer remembers it (Linux: `struct dma_debug_entry`), with
/// its history: who mapped it (device, CPU), when, and when it was unmapped.
public struct DMAMappingRecord: Hashable, Sendable, CustomStringConvertible {
    public var device: DeviceID
    /// The address the driver was given (with the offset inside the granule).
    public var address: IOVA
    public var size: UInt64
    public var direction: DMADirection
    public var kind: DMAMappingKind
    /// CPU physical address of the buffer (for bounced buffers: the original buffer).
    public var paddr: PhysAddr
    public var bounced: Bool
    public var errorChecked: Bool
    public var mappedAt: Int64
    public var mappedOnCPU: Int
    public var unmappedAt: Int64?
    public var unmappedOnCPU: Int?

    public var last: UInt64 { address.rawValue &+ size &- 1 }

    public func contains(_ address: UInt64, size: UInt64 = 1) -> Bool {
        address >= self.address.rawValue && size <= self.size && address - self.address.rawValue <= self.size - size
    }

    public var description: String {
        var text = "\(device) \(kind == .page ? "page" : kind == .scatterGather ? "sg" : "coherent") \(address) size \(size) \(direction) pa \(paddr), mapped at \(mappedAt) ns on cpu \(mappedOnCPU)"
        if let unmappedAt { text += ", unmapped at \(unmappedAt) ns on cpu \(unmappedOnCPU ?? -1)" }
        return text
    }
}

/// The verdict of the debug layer on an unmap.
enum DMAUnmapVerdict {
    /// A live mapping: unmap it with this (possibly corrected) size.
    case live(DMAMappingRecord)
    /// Not a live mapping, but no live mapping overlaps it: let the lower layers see it.
    case unknownPassDown
    /// Not a live mapping and it overlaps live mappings: touching the page table would break them.
    case unknownOverlapsLive
}

/// Linux: `kernel/dma/debug.c` (CONFIG_DMA_API_DEBUG), per IOVA cookie: every live mapping, a
/// bounded history of unmapped ones, checks at each call.
final class DMADebugTracker: Sendable {
    struct State {
        var live: [UInt64: DMAMappingRecord] = [:]
        /// Recently unmapped mappings (ring), for "double unmap" and device-side history.
        var history: [DMAMappingRecord] = []
        var historyNext = 0
    }

    static var historyCapacity: Int { 4096 }
    let state = IOMMUMutex(State())
    let sink: any WarningSink
    let clock: any DMAClock

    init(sink: any WarningSink, clock: any DMAClock) {
        self.sink = sink
        self.clock = clock
    }

    func add(_ record: DMAMappingRecord) {
        state.withLock { $0.live[record.address.rawValue] = record }
    }

    /// Linux: `debug_dma_mapping_error()`.
    func markChecked(_ address: IOVA) {
        state.withLock { s in
            if s.live[address.rawValue] != nil { s.live[address.rawValue]!.errorChecked = true }
        }
    }

    /// Linux: `check_unmap()`. Removes the live record (if any) and reports every mismatch.
    func unmap(
        device: DeviceID, address: IOVA, size: UInt64, direction: DMADirection, kind: DMAMappingKind, cpu: Int
    ) -> DMAUnmapVerdict {
        let now = clock.nanoseconds
        var warnings: [IOMMUWarning] = []
        let verdict: DMAUnmapVerdict = state.withLock { s in
            guard var record = s.live[address.rawValue], record.device == device else {
                let wasUnmapped = s.history.contains { $0.device == device && $0.address == address }
                warnings.append(
                    wasUnmapped
                        ? .dmaDoubleUnmap(device: device, address: address, size: size, direction: direction.rawValue)
                        : .dmaUnmapNotMapped(device: device, address: address, size: size, direction: direction.rawValue))
                let first = address.rawValue, last = address.rawValue &+ max(size, 1) &- 1
                let overlaps = s.live.values.contains { first <= $0.last && $0.address.rawValue <= last }
                return overlaps ? .unknownOverlapsLive : .unknownPassDown
            }
            if record.size != size {
                warnings.append(.dmaUnmapWrongSize(device: device, address: address, size: size, mappedSize: record.size))
            }
            if record.kind != kind {
                warnings.append(.dmaUnmapWrongKind(device: device, address: address, kind: kind.rawValue, mappedKind: record.kind.rawValue))
            }
            if record.direction != direction {
                warnings.append(
                    .dmaUnmapWrongDirection(device: device, address: address, direction: direction.rawValue, mappedDirection: record.direction.rawValue))
            }
            if !record.errorChecked && record.kind == .page {
                warnings.append(.dmaMappingErrorNotChecked(device: device, address: address, size: record.size))
            }
            s.live[address.rawValue] = nil
            record.unmappedAt = now
            record.unmappedOnCPU = cpu
            Self.remember(record, in: &s)
            return .live(record)
        }
        for warning in warnings { sink.warn(warning) }
        return verdict
    }

    private static func remember(_ record: DMAMappingRecord, in s: inout State) {
        if s.history.count < historyCapacity {
            s.history.append(record)
        } else {
            s.history[s.historyNext] = record
            s.historyNext = (s.historyNext + 1) % historyCapacity
        }
    }

    /// Linux: `check_sync()`.
    func sync(device: DeviceID, address: IOVA, size: UInt64, direction: DMADirection, forDevice: Bool) {
        let warning: IOMMUWarning? = state.withLock { s in
            let record = s.live[address.rawValue].flatMap { $0.device == device && $0.contains(address.rawValue, size: size) ? $0 : nil }
                ?? s.live.values.first { $0.device == device && $0.contains(address.rawValue, size: size) }
            guard let record else {
                return .dmaSyncNotMapped(device: device, address: address, size: size, direction: direction.rawValue)
            }
            if record.direction != .bidirectional && record.direction != direction {
                return .dmaSyncWrongDirection(device: device, address: address, direction: direction.rawValue, mappedDirection: record.direction.rawValue)
            }
            return nil
        }
        if let warning { sink.warn(warning) }
    }

    /// Reports (and keeps) every live mapping of `device`. Linux: `dma_debug_device_change()`.
    func reportLeaks(of device: DeviceID) -> [DMAMappingRecord] {
        let leaked = state.withLock { s in s.live.values.filter { $0.device == device }.sorted { $0.address < $1.address } }
        for r in leaked {
            sink.warn(.dmaMappingLeaked(device: device, address: r.address, size: r.size, direction: r.direction.rawValue))
        }
        return leaked
    }

    func liveMappings() -> [DMAMappingRecord] {
        state.withLock { s in s.live.values.sorted { $0.address < $1.address } }
    }

    /// The live mapping containing `iova`, else the most recent unmapped one that contained it.
    func history(of iova: UInt64) -> (live: DMAMappingRecord?, unmapped: DMAMappingRecord?) {
        state.withLock { s in
            let live = s.live.values.first { $0.contains(iova) }
            var best: DMAMappingRecord?
            for r in s.history where r.contains(iova) {
                if best == nil || (r.unmappedAt ?? 0) > (best!.unmappedAt ?? 0) { best = r }
            }
            return (live, best)
        }
    }
}
