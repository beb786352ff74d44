import IOMMUBase

/// The default replay backend: per domain, the live mappings as a sorted array of
/// non-overlapping intervals with their physical base.
///
/// Unmap is page-table-like: it removes whatever lies in the range and may split a mapping
/// (counted in `splitCount`, since Linux's dma-iommu never does that).
///
/// The array is kept in *descending* IOVA order (stored as bitwise-complemented, ascending
/// bounds): dma-iommu allocates top-down, so the newest, shortest-lived mappings sit at the
/// array's end, where inserting and removing them moves nothing.
public struct IntervalReplayBackend: ReplayBackend {
    /// One live mapping: `first...last` → `paddr + (iova - first)`.
    public struct Mapping: Hashable, Sendable {
        public var first: UInt64
        public var last: UInt64
        public var paddr: UInt64
        public var length: UInt64 { last &- first &+ 1 }
    }

    /// A mapping in complemented coordinates: `low = ~last`, `high = ~first`; `paddr` is still
    /// the physical address of the real `first` (`~high`).
    @usableFromInline
    struct Stored {
        var low: UInt64
        var high: UInt64
        var paddr: UInt64
        var mapping: Mapping { Mapping(first: ~high, last: ~low, paddr: paddr) }
    }

    /// Live mappings per domain, indexed by `ReplayDomainID.index`, sorted by `low` (so by
    /// descending IOVA).
    var domains: [[Stored]] = []
    /// Unmaps that cut a mapping in two or trimmed it.
    public private(set) var splitCount = 0

    public init() {}

    public mutating func domainAllocated(_ domain: ReplayDomainID, for group: ReplayGroupID) {
        while domains.count <= domain.index { domains.append([]) }
    }

    public mutating func domainReleased(_ domain: ReplayDomainID) {}

    /// The live mappings of `domain`, sorted by IOVA.
    public func mappings(in domain: ReplayDomainID) -> [Mapping] {
        domain.index < domains.count ? domains[domain.index].reversed().map(\.mapping) : []
    }

    /// Index of the first stored mapping whose `high` is ≥ `low` (stored mappings are disjoint
    /// and sorted, so `high` is sorted too).
    @inline(__always)
    static func firstEnding(atOrAfter low: UInt64, in stored: [Stored]) -> Int {
        var lower = 0
        var upper = stored.count
        while lower < upper {
            let middle = (lower + upper) / 2
            if stored[middle].high < low { lower = middle + 1 } else { upper = middle }
        }
        return lower
    }

    public mutating func map(_ domain: ReplayDomainID, iova: IOVA, paddr: PhysAddr, length: UInt64) throws(IOMMUError) {
        guard length > 0 else { return }
        guard let range = AddressRange(start: iova, length: length) else {
            throw IOMMUError(.lengthOverflow, address: iova.rawValue, length: length)
        }
        while domains.count <= domain.index { domains.append([]) }
        let low = ~range.last.rawValue
        let high = ~range.first.rawValue
        let position = IntervalReplayBackend.firstEnding(atOrAfter: low, in: domains[domain.index])
        if position < domains[domain.index].count {
            let next = domains[domain.index][position]
            if next.low <= high {
                // The overlap's lowest real IOVA.
                throw IOMMUError(.alreadyMapped, address: max(~next.high, range.first.rawValue), length: length)
            }
        }
        domains[domain.index].insert(Stored(low: low, high: high, paddr: paddr.rawValue), at: position)
    }

    public mutating func unmap(_ domain: ReplayDomainID, iova: IOVA, length: UInt64) -> UInt64 {
        guard length > 0, domain.index < domains.count else { return 0 }
        let (sum, overflow) = iova.rawValue.addingReportingOverflow(length &- 1)
        let low = ~(overflow ? UInt64.max : sum)
        let high = ~iova.rawValue
        var position = IntervalReplayBackend.firstEnding(atOrAfter: low, in: domains[domain.index])
        var unmapped: UInt64 = 0
        while position < domains[domain.index].count {
            let stored = domains[domain.index][position]
            guard stored.low <= high else { break }
            let cutLow = max(stored.low, low)
            let cutHigh = min(stored.high, high)
            unmapped &+= cutHigh &- cutLow &+ 1
            if stored.low == cutLow && stored.high == cutHigh {
                domains[domain.index].remove(at: position)
                continue
            }
            // Keep what lies outside the cut: below it in complemented space is the real upper
            // part, above it the real lower part (which keeps the real first, so its paddr).
            var pieces: [Stored] = []
            let realFirst = ~stored.high
            if stored.low < cutLow {
                let pieceFirst = ~(cutLow &- 1)
                pieces.append(Stored(low: stored.low, high: cutLow &- 1, paddr: stored.paddr &+ (pieceFirst &- realFirst)))
            }
            if cutHigh < stored.high {
                pieces.append(Stored(low: cutHigh &+ 1, high: stored.high, paddr: stored.paddr))
            }
            splitCount += 1
            domains[domain.index].replaceSubrange(position...position, with: pieces)
            position += pieces.count
        }
        return unmapped
    }

    public func translate(_ domain: ReplayDomainID, iova: IOVA) -> PhysAddr? {
        guard domain.index < domains.count else { return nil }
        let stored = domains[domain.index]
        let point = ~iova.rawValue
        let position = IntervalReplayBackend.firstEnding(atOrAfter: point, in: stored)
        guard position < stored.count, stored[position].low <= point else { return nil }
        return PhysAddr(stored[position].paddr &+ (iova.rawValue &- ~stored[position].high))
    }

    public func liveMappings(in domain: ReplayDomainID) -> (count: Int, bytes: UInt64) {
        guard domain.index < domains.count else { return (0, 0) }
        var bytes: UInt64 = 0
        for stored in domains[domain.index] { bytes &+= stored.high &- stored.low &+ 1 }
        return (domains[domain.index].count, bytes)
    }
}

extension IntervalReplayBackend {
    /// Replays `reader` on a fresh interval model: the engine compiled for this backend
    /// (specialised inside this module, which is what makes it fast for callers in other modules).
    public static func replay(
        _ reader: TraceReader, progressInterval: Int = 1 << 16, progress: (TraceReader, Int) -> Void = { _, _ in },
        observe: (TraceEvent) -> Void = { _ in }
    ) throws(TraceInputError) -> (report: ReplayReport, backend: IntervalReplayBackend) {
        var engine = ReplayEngine(backend: IntervalReplayBackend())
        let report = try engine.replay(reader, progressInterval: progressInterval, progress: progress, observe: observe)
        return (report, engine.backend)
    }
}
