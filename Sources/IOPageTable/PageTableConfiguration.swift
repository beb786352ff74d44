import IOMMUBase

/// The descriptor format families IOMMUKit implements.
///
/// Linux: `enum io_pgtable_fmt` (`ARM_64_LPAE_S1`, `ARM_64_LPAE_S2`, `APPLE_DART`, `APPLE_DART2`).
public enum PageTableFormatKind: String, Hashable, Sendable, CaseIterable, CustomStringConvertible {
    /// Arm VMSAv8-64 stage 1 (`ARM_64_LPAE_S1`).
    case armLPAEStage1 = "arm-lpae-s1"
    /// Arm VMSAv8-64 stage 2 (`ARM_64_LPAE_S2`).
    case armLPAEStage2 = "arm-lpae-s2"
    /// Apple DART, first generation (`APPLE_DART`, T8020).
    case appleDART = "apple-dart"
    /// Apple DART, second generation descriptors (`APPLE_DART2`, T6000/T8110).
    case appleDART2 = "apple-dart2"

    public var description: String { rawValue }
}

/// Optional behaviours of a table.
///
/// Linux: the `IO_PGTABLE_QUIRK_*` flags that the 6.12 ARM code accepts for 64-bit stage 1
/// (stage 2 and DART accept none).
public struct PageTableQuirks: OptionSet, Hashable, Sendable {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Non-secure: NS on leaves, NSTable on table descriptors. Linux: `IO_PGTABLE_QUIRK_ARM_NS`.
    public static let nonSecure = PageTableQuirks(rawValue: 1 << 0)
    /// Hardware dirty-state management: writable leaves get DBM (writable-clean).
    /// Linux: `IO_PGTABLE_QUIRK_ARM_HD`.
    public static let hardwareDirty = PageTableQuirks(rawValue: 1 << 1)
}

/// What the user of a table asks for: address sizes, quirks and walker coherency.
///
/// Linux: the caller-filled part of `struct io_pgtable_cfg`. The granule is part of the format
/// type (`IOPageTable<ARMLPAEStage1<Granule4K>>`), not of this value.
public struct PageTableConfiguration: Hashable, Sendable {
    /// Input (IOVA) address bits.
    public var ias: Int
    /// Output (physical) address bits.
    public var oas: Int
    /// Quirks; stage 2 and DART accept none.
    public var quirks: PageTableQuirks
    /// Whether the walker snoops CPU caches (affects TCR cacheability fields; DART requires it).
    public var coherentWalk: Bool

    @inlinable
    public init(ias: Int, oas: Int, quirks: PageTableQuirks = [], coherentWalk: Bool = true) {
        self.ias = ias
        self.oas = oas
        self.quirks = quirks
        self.coherentWalk = coherentWalk
    }
}

/// The shape of a table as built: levels, index widths, the page sizes it can map.
///
/// Levels are numbered as Linux numbers them: 0...3 for LPAE (3 = page level), 1...2 for DART
/// (Linux's "L1" and "L2").
public struct PageTableGeometry: Hashable, Sendable {
    /// log2 of the granule (the smallest page and the table size): 12, 14 or 16.
    public let granuleShift: Int
    /// Index bits per full table: `granuleShift - 3`.
    public let bitsPerLevel: Int
    /// The level of the top-level table(s).
    public let startLevel: Int
    /// The level whose entries map single granules.
    public let lastLevel: Int
    /// Index bits of the top-level table (may exceed `bitsPerLevel` with stage-2 concatenation).
    public let pgdBits: Int
    /// Separate top-level tables (DART TTBRs; 1 for LPAE).
    public let rootCount: Int
    /// Effective input address bits (after Linux's clamping).
    public let ias: Int
    /// Effective output address bits (after Linux's clamping).
    public let oas: Int
    /// The page and block sizes `map` accepts.
    public let pageSizes: PageSizeBitmap

    @inlinable
    public init(granuleShift: Int, startLevel: Int, lastLevel: Int, pgdBits: Int, rootCount: Int,
                ias: Int, oas: Int, pageSizes: PageSizeBitmap) {
        self.granuleShift = granuleShift
        self.bitsPerLevel = granuleShift - 3
        self.startLevel = startLevel
        self.lastLevel = lastLevel
        self.pgdBits = pgdBits
        self.rootCount = rootCount
        self.ias = ias
        self.oas = oas
        self.pageSizes = pageSizes
    }

    /// log2 of the bytes one entry at `level` maps. Linux: `ARM_LPAE_LVL_SHIFT`.
    @inlinable
    public func levelShift(_ level: Int) -> Int {
        (lastLevel - level) &* bitsPerLevel &+ granuleShift
    }

    /// Entries in a table at `level` (the top level may be smaller or concatenated).
    @inlinable
    public func entryCount(level: Int) -> Int {
        level == startLevel ? 1 << pgdBits : 1 << bitsPerLevel
    }

    /// Entries in one full granule-sized table. Linux: `ARM_LPAE_PTES_PER_TABLE`.
    @inlinable public var entriesPerTable: Int { 1 << bitsPerLevel }

    /// Bytes of each top-level table. Linux: `ARM_LPAE_PGD_SIZE`.
    @inlinable public var pgdByteCount: Int { 8 << pgdBits }

    /// The granule as a page size.
    @inlinable public var granule: PageSize { PageSize(shift: granuleShift) }

    /// Index of `iova` in the table at `level`. Linux: `ARM_LPAE_LVL_IDX`.
    @inlinable
    public func index(_ iova: UInt64, level: Int) -> Int {
        let bits = level == startLevel ? pgdBits : bitsPerLevel
        return Int(truncatingIfNeeded: (iova &>> UInt64(levelShift(level))) & ((1 &<< UInt64(bits)) &- 1))
    }

    /// Which top-level table serves `iova` (always 0 except for DART with several TTBRs).
    @inlinable
    public func rootIndex(_ iova: UInt64) -> Int {
        if rootCount == 1 { return 0 }
        let shift = levelShift(startLevel) &+ pgdBits
        return Int(truncatingIfNeeded: (iova &>> UInt64(shift)) & UInt64(rootCount &- 1))
    }
}
