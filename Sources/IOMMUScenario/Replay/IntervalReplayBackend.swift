import IOMMUBase

/// The default replay backend: per domain, the live mappings as a sorted array of
/// non-overlapping inclusive IOVA intervals with their physical base.
///
/// Unmap is page-table-like: it removes whatever lies in the range and may split a mapping
/// (counted in `splitCount`, since Linux's dma-iommu never does that).
public struct IntervalReplayBackend: ReplayBackend {
    /// One live mapping: `first...last` → `paddr + (iova - first)`.
    public struct Mapping: Hashable, Sendable {
        public var first: UInt64
        public var last: UInt64
        public var paddr: UInt64
        public var length: UInt64 { last &- first &+ 1 }
    }

    /// Live mappings per domain, indexed by `ReplayDomainID.index`, sorted by `first`.
    public private(set) var domains: [[Mapping]] = []
    /// Unmaps that cut a mapping in two or trimmed it.
    public private(set) var splitCount = 0

    public init() {}

    public mutating func domainAllocated(_ domain: ReplayDomainID, for group: ReplayGroupID) {
        while domains.count <= domain.index { domains.append([]) }
    }

    public mutating func domainReleased(_ domain: ReplayDomainID) {}

    /// The live mappings of `domain`, sorted by IOVA.
    public func mappings(in domain: ReplayDomainID) -> [Mapping] {
        domain.index < domains.count ? domains[domain.index] : []
    }

    /// Index of the first mapping whose `last` is ≥ `iova` (mappings are disjoint and sorted,
    /// so `last` is sorted too).
    @inline(__always)
    static func firstEnding(atOrAfter iova: UInt64, in mappings: [Mapping]) -> Int {
        var low = 0
        var high = mappings.count
        while low < high {
            let middle = (low + high) / 2
            if mappings[middle].last < iova { low = middle + 1 } else { high = middle }
        }
        return low
    }

    public mutating func map(_ domain: ReplayDomainID, iova: IOVA, paddr: PhysAddr, length: UInt64) throws(IOMMUError) {
        guard length > 0 else { return }
        guard let range = AddressRange(start: iova, length: length) else {
            throw IOMMUError(.lengthOverflow, address: iova.rawValue, length: length)
        }
        while domains.count <= domain.index { domains.append([]) }
        let position = IntervalReplayBackend.firstEnding(atOrAfter: range.first.rawValue, in: domains[domain.index])
        if position < domains[domain.index].count {
            let next = domains[domain.index][position]
            if next.first <= range.last.rawValue {
                throw IOMMUError(.alreadyMapped, address: max(next.first, range.first.rawValue), length: length)
            }
        }
        domains[domain.index].insert(
            Mapping(first: range.first.rawValue, last: range.last.rawValue, paddr: paddr.rawValue), at: position)
    }

    public mutating func unmap(_ domain: ReplayDomainID, iova: IOVA, length: UInt64) -> UInt64 {
        guard length > 0, domain.index < domains.count else { return 0 }
        let first = iova.rawValue
        let (sum, overflow) = first.addingReportingOverflow(length &- 1)
        let last = overflow ? UInt64.max : sum
        var position = IntervalReplayBackend.firstEnding(atOrAfter: first, in: domains[domain.index])
        var unmapped: UInt64 = 0
        while position < domains[domain.index].count {
            let mapping = domains[domain.index][position]
            guard mapping.first <= last else { break }
            let cutFirst = max(mapping.first, first)
            let cutLast = min(mapping.last, last)
            unmapped &+= cutLast &- cutFirst &+ 1
            var pieces: [Mapping] = []
            if mapping.first < cutFirst {
                pieces.append(Mapping(first: mapping.first, last: cutFirst - 1, paddr: mapping.paddr))
            }
            if cutLast < mapping.last {
                pieces.append(Mapping(first: cutLast + 1, last: mapping.last, paddr: mapping.paddr &+ (cutLast + 1 - mapping.first)))
            }
            if pieces.isEmpty {
                domains[domain.index].remove(at: position)
            } else {
                splitCount += 1
                domains[domain.index].replaceSubrange(position...position, with: pieces)
                position += pieces.count
            }
        }
        return unmapped
    }

    public func translate(_ domain: ReplayDomainID, iova: IOVA) -> PhysAddr? {
        guard domain.index < domains.count else { return nil }
        let mappings = domains[domain.index]
        let position = IntervalReplayBackend.firstEnding(atOrAfter: iova.rawValue, in: mappings)
        guard position < mappings.count, mappings[position].first <= iova.rawValue else { return nil }
        let mapping = mappings[position]
        return PhysAddr(mapping.paddr &+ (iova.rawValue - mapping.first))
    }

    public func liveMappings(in domain: ReplayDomainID) -> (count: Int, bytes: UInt64) {
        guard domain.index < domains.count else { return (0, 0) }
        var bytes: UInt64 = 0
        for mapping in domains[domain.index] { bytes &+= mapping.length }
        return (domains[domain.index].count, bytes)
    }
}

extension IntervalReplayBackend {
    /// Replays `reader` on a fresh interval model: the engine compiled for this backend
    /// (specialised inside this module, which is what makes it fast for callers in other modules).
    public static func replay(
        _ reader: TraceReader, progressInterval: Int = 1 << 16, progress: (TraceReader, Int) -> Void = { _, _ in }
    ) throws(TraceInputError) -> (report: ReplayReport, backend: IntervalReplayBackend) {
        var engine = ReplayEngine(backend: IntervalReplayBackend())
        let report = try engine.replay(reader, progressInterval: progressInterval, progress: progress)
        return (report, engine.backend)
    }
}
