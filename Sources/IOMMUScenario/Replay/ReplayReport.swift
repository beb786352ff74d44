import IOMMUBase

/// One broken invariant, at the trace line where it was detected.
public struct ReplayViolation: Hashable, Sendable, CustomStringConvertible {
    /// 1-based trace line.
    public var line: Int
    /// What went wrong, in one sentence.
    public var what: String

    public init(line: Int, what: String) {
        self.line = line
        self.what = what
    }

    public var description: String { "line \(line): \(what)" }
}

/// How a domain was seen to behave.
public enum ReplayDomainKind: String, Hashable, Sendable {
    /// No DMA seen yet.
    case unknown
    /// Maps preceded its DMA events (a DMA/DMA-FQ or unmanaged domain).
    case translated
    /// DMA events with no map before them (identity/pass-through).
    case passthrough
}

/// What the replay learnt about one group incarnation.
public struct ReplayGroupSummary: Hashable, Sendable {
    public var id: ReplayGroupID
    /// Every device that was in the group, in order of addition.
    public var devices: [String]
    /// Its domains, in order.
    public var domains: [ReplayDomainID]
    /// True when its last device was removed (the group was freed).
    public var released: Bool
}

/// What the replay learnt about one domain.
public struct ReplayDomainSummary: Hashable, Sendable {
    public var id: ReplayDomainID
    public var group: ReplayGroupID
    /// Every device attached to it, in order.
    public var devices: [String]
    public var kind: ReplayDomainKind
    /// `map` events applied (direct mappings included) and their bytes.
    public var mapCount: Int
    public var mappedBytes: UInt64
    /// Direct mappings (maps followed by the attach), e.g. a reserved region's identity map.
    public var directMapCount: Int
    /// `unmap` events applied and the bytes the model unmapped.
    public var unmapCount: Int
    public var unmappedBytes: UInt64
    /// DMA API calls attributed to it (map/unmap page and sg, alloc, free).
    public var dmaCallCount: Int
    /// True when it was replaced by a new attach generation or its group was freed.
    public var released: Bool
    /// Live mappings when it was released (or at the end of the trace).
    public var liveMappingCount: Int
    public var liveBytes: UInt64
}

/// The result of replaying a trace.
public struct ReplayReport: Sendable {
    /// Event counts by name: every typed event (zeros included), then unknown events by name.
    public var eventCounts: [(name: String, count: Int)]
    /// All event lines.
    public var totalEvents: Int
    /// Lines read (header and blank lines included).
    public var lineCount: Int
    public var header: TraceHeader
    /// Events the kernel reported lost (`CPU:N [LOST M EVENTS]` lines), plus those the header
    /// says were overwritten.
    public var lostEvents: UInt64
    public var groups: [ReplayGroupSummary]
    public var domains: [ReplayDomainSummary]
    /// Sorted by line.
    public var violations: [ReplayViolation]
    /// Violations beyond the recording limit, counted but not listed.
    public var unlistedViolationCount: Int
    /// `dma_map_page` events that reported `DMA_MAPPING_ERROR`.
    public var failedDMAMaps: Int
    /// DMA API calls that needed no map/unmap (pass-through domain, or a device with no group).
    public var untranslatedDMACalls: Int
    /// Unmaps applied before their `dma_unmap_page` because another CPU (or a preempting task)
    /// had already mapped the freed IOVA again (see `ReplayEngine.applyRacingUnmap`).
    public var reuseRaceUnmaps: Int = 0

    /// The count for one event name (0 if never seen).
    public func count(of name: String) -> Int {
        eventCounts.first(where: { $0.name == name })?.count ?? 0
    }

    public var violationCount: Int { violations.count + unlistedViolationCount }
}
