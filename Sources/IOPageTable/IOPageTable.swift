import IOMMUBase
import PhysicalMemory
import Synchronization

/// An IO page table of format `Format`, its descriptors living in `PhysicalMemory`.
///
/// Linux: `struct io_pgtable` with `io-pgtable-arm.c` / `io-pgtable-dart.c` ops. Table pages come
/// from a `FrameAllocator` and go back to it when a sub-table is freed and when the table is
/// destroyed (`deinit` or `destroy(invalidator:)`); the table is noncopyable because two owners
/// would free the frames twice.
///
/// Descriptors are read and written with atomics and sub-tables are installed with
/// compare-and-swap, as Linux does, so a hardware walker may read concurrently and map/unmap of
/// disjoint ranges from several threads is safe (every operation is non-mutating).
public struct IOPageTable<Format: PageTableFormat>: ~Copyable {
    /// What the table was asked for.
    public let configuration: PageTableConfiguration
    /// The table's shape (start level, pgd size, page sizes, effective ias/oas).
    public let geometry: PageTableGeometry
    /// Where the descriptors live.
    public let memory: PhysicalMemory
    /// Where table pages come from.
    public let frames: FrameAllocator
    /// Where WARN-worthy events go.
    public let warnings: any WarningSink
    /// Physical addresses of the top-level table(s) (one for LPAE; one per TTBR for DART).
    public let roots: [PhysAddr]
    /// Frame size of each top-level table: the pgd size, at least 4 KiB.
    public let rootFrameSize: PageSize

    @usableFromInline let rootPointers: [UnsafeMutablePointer<Atomic<UInt64>>]
    // Hot-path copies, so a walk touches no class instance and no array: the first root, the
    // RAM window's host mapping, and the shift/mask of the start level.
    @usableFromInline let firstRoot: UnsafeMutablePointer<Atomic<UInt64>>
    @usableFromInline let ramHostBase: UnsafeMutableRawPointer
    @usableFromInline let ramFirst: UInt64
    @usableFromInline let ramLength: UInt64
    @usableFromInline let startShift: UInt64
    @usableFromInline let startMask: UInt64
    @usableFromInline let tableMask: UInt64

    /// Builds an empty table: validates `configuration` as Linux's allocator does and allocates
    /// the top-level table(s).
    ///
    /// - Throws: `invalidConfiguration` (EINVAL) for a configuration Linux refuses (quirks,
    ///   ias/oas beyond 52, an oas with no IPS/PS encoding, …); `outOfMemory` (ENOMEM).
    public init(configuration: PageTableConfiguration, frames: FrameAllocator,
                warnings: any WarningSink = DiscardingWarningSink()) throws(IOMMUError) {
        let geometry = try Format.geometry(for: configuration)
        let rootFrameSize = PageSize(shift: max(12, geometry.pgdBits + 3))
        var roots: [PhysAddr] = []
        for _ in 0..<geometry.rootCount {
            do {
                roots.append(try frames.allocate(rootFrameSize))
            } catch {
                for root in roots { frames.free(root, rootFrameSize) }
                throw error
            }
        }
        self.configuration = configuration
        self.geometry = geometry
        self.memory = frames.memory
        self.frames = frames
        self.warnings = warnings
        self.roots = roots
        self.rootFrameSize = rootFrameSize
        let rootPointers = roots.map { root in
            guard let pointer = frames.memory.wordPointer(root) else { preconditionFailure("frames come from RAM") }
            return pointer
        }
        self.rootPointers = rootPointers
        self.firstRoot = rootPointers[0]
        let ram = frames.memory.ram
        guard let ramWord = frames.memory.wordPointer(ram.first) else { preconditionFailure("RAM has a host mapping") }
        self.ramHostBase = UnsafeMutableRawPointer(ramWord)
        self.ramFirst = ram.first.rawValue
        self.ramLength = ram.length
        self.startShift = UInt64(geometry.levelShift(geometry.startLevel))
        self.startMask = (1 << UInt64(geometry.pgdBits)) - 1
        self.tableMask = (1 << UInt64(geometry.bitsPerLevel)) - 1
    }

    deinit {
        for (index, root) in roots.enumerated() {
            freeTableContents(rootPointers[index], level: geometry.startLevel)
            frames.free(root, rootFrameSize)
        }
    }

    /// Tells `invalidator` to flush everything, then frees every table page.
    /// Linux: `free_io_pgtable_ops` (`tlb_flush_all`, then the format's `free`).
    public consuming func destroy<I: TLBInvalidator & ~Copyable>(invalidator: inout I) {
        invalidator.flushAll()
    }

    /// Frees every table page without telling anyone (see `destroy(invalidator:)`).
    public consuming func destroy() {}

    // MARK: - Helpers

    /// The host pointer of the descriptor word at physical address `address`.
    @inlinable
    func descriptors(at address: UInt64) -> UnsafeMutablePointer<Atomic<UInt64>> {
        let offset = address &- ramFirst
        precondition(offset < ramLength && offset & 7 == 0, "page-table descriptor points outside RAM")
        return (ramHostBase + Int(truncatingIfNeeded: offset)).assumingMemoryBound(to: Atomic<UInt64>.self)
    }

    /// The top-level table that serves `iova`.
    @inlinable
    func root(for iova: UInt64) -> UnsafeMutablePointer<Atomic<UInt64>> {
        geometry.rootCount == 1 ? firstRoot : rootPointers[geometry.rootIndex(iova)]
    }

    /// Entries left in the (granule-sized) table from `index`; a concatenated pgd counts as
    /// several tables. Linux: `arm_lpae_max_entries`.
    @inlinable
    func maxEntries(from index: Int) -> Int {
        let perTable = geometry.entriesPerTable
        return perTable &- (index & (perTable &- 1))
    }

    /// Frees the sub-tables below the table at `table` (level `level`), not the table itself.
    @usableFromInline
    func freeTableContents(_ table: UnsafeMutablePointer<Atomic<UInt64>>, level: Int) {
        guard level < geometry.lastLevel else { return }
        for index in 0..<geometry.entryCount(level: level) {
            let pte = table[index].load(ordering: .relaxed)
            guard pte != 0, !Format.isLeaf(pte, level: level) else { continue }
            freeTable(Format.outputAddress(pte), level: level &+ 1)
        }
    }

    /// Frees the sub-table at physical `address` (level `level`) and everything below it.
    /// Linux: `__arm_lpae_free_pgtable`.
    @usableFromInline
    func freeTable(_ address: UInt64, level: Int) {
        freeTableContents(descriptors(at: address), level: level)
        frames.free(PhysAddr(address), geometry.granule)
    }

    // MARK: - Map

    /// Maps `count` pages of `pageSize` at `iova` → `paddr`, as far as the table that holds
    /// the first one reaches.
    ///
    /// Linux: `map_pages` (`arm_lpae_map_pages`, `dart_map_pages`). Like Linux, one call stops at
    /// the end of a table: it returns the bytes mapped, and the caller loops (see `map(iova:
    /// paddr:length:prot:)` for the `iommu_map` loop). A block may replace a table: the table's
    /// mappings are unmapped first and `flushWalk` is called before its pages are freed.
    ///
    /// - Returns: bytes mapped (`n × pageSize`, `n ≤ count`).
    /// - Throws: `unsupportedPageSize` (EINVAL) for a size not in `geometry.pageSizes`;
    ///   `addressOutOfRange` (ERANGE) for IOVA bits at/above ias (LPAE) or PA bits at/above oas
    ///   anywhere in the run (Linux checks the first page only);
    ///   `noAccessPermission` (EINVAL) without read or write; `alreadyMapped` (EEXIST) over a
    ///   leaf; `outOfMemory` (ENOMEM) when a table page cannot be allocated; `invalidArgument`
    ///   (EINVAL) if replacing a table by a block did not unmap exactly one block.
    @inlinable
    public func map<I: TLBInvalidator & ~Copyable>(
        iova: IOVA, paddr: PhysAddr, pageSize: PageSize, count: Int, prot: IOMMUProt, invalidator: inout I
    ) throws(IOMMUError) -> UInt64 {
        guard geometry.pageSizes.contains(pageSize) else {
            warnings.warn(.unsupportedPageSize(iova: iova, pageSize: pageSize.bytes))
            throw IOMMUError(.unsupportedPageSize, address: iova.rawValue, length: pageSize.bytes)
        }
        // Linux checks only the first page's PA; a run that crosses 2^oas would then get
        // descriptors whose output address is truncated — pages far below the buffer, memory the
        // device was never given. IOMMUKit checks the run's last byte too (same ERANGE).
        let (runBytes, huge) = UInt64(max(count, 1)).multipliedReportingOverflow(by: pageSize.bytes)
        let (lastPA, wraps) = paddr.rawValue.addingReportingOverflow(runBytes &- 1)
        guard !(Format.checksInputRange && iova.rawValue &>> UInt64(geometry.ias) != 0),
              !huge, !wraps, lastPA &>> UInt64(geometry.oas) == 0
        else {
            warnings.warn(.addressOutOfRange(iova: iova, paddr: paddr))
            throw IOMMUError(.addressOutOfRange, address: iova.rawValue, length: pageSize.bytes)
        }
        guard !prot.isDisjoint(with: [.read, .write]) else {
            throw IOMMUError(.noAccessPermission, address: iova.rawValue, length: pageSize.bytes)
        }
        let attributes = Format.leafAttributes(prot, configuration: configuration)
        var level = geometry.startLevel
        var shift = startShift
        var mask = startMask
        var table = root(for: iova.rawValue)
        let pageShift = UInt64(pageSize.shift)
        while true {
            let index = Int(truncatingIfNeeded: (iova.rawValue &>> shift) & mask)
            let entry = table + index
            if shift == pageShift {
                let n = min(count, maxEntries(from: index))
                try installLeaves(iova: iova.rawValue, paddr: paddr.rawValue, attributes: attributes,
                                  level: level, table: table, first: index, count: n, invalidator: &invalidator)
                return UInt64(n) &<< UInt64(pageSize.shift)
            }
            guard level < geometry.lastLevel else {
                throw IOMMUError(.invalidArgument, address: iova.rawValue, length: pageSize.bytes)
            }
            var pte = entry.pointee.load(ordering: .acquiring)
            if pte == 0 {
                let newTable = try frames.allocate(geometry.granule)
                let descriptor = Format.table(paddr: newTable.rawValue, configuration: configuration)
                let (exchanged, original) = entry.pointee.compareExchange(
                    expected: 0, desired: descriptor, ordering: .acquiringAndReleasing)
                if exchanged {
                    pte = descriptor
                } else {
                    frames.free(newTable, geometry.granule)   // someone else raced in; use theirs
                    pte = original
                }
            }
            if Format.isLeaf(pte, level: level) {
                warnings.warn(.mapOverExistingLeaf(iova: iova, level: level))
                throw IOMMUError(.alreadyMapped, address: iova.rawValue, length: pageSize.bytes)
            }
            table = descriptors(at: Format.outputAddress(pte))
            level &+= 1   // < lastLevel by the guard above
            shift &-= UInt64(geometry.bitsPerLevel)
            mask = tableMask
        }
    }

    /// Linux: `arm_lpae_init_pte` / `dart_init_pte`.
    @inlinable
    func installLeaves<I: TLBInvalidator & ~Copyable>(
        iova: UInt64, paddr: UInt64, attributes: UInt64, level: Int,
        table: UnsafeMutablePointer<Atomic<UInt64>>, first: Int, count: Int, invalidator: inout I
    ) throws(IOMMUError) {
        let shift = UInt64(geometry.levelShift(level))
        var i = 0
        while i < count {
            let old = table[first &+ i].load(ordering: .acquiring)
            if old != 0 {
                let address = iova &+ (UInt64(i) &<< shift)
                if Format.isLeaf(old, level: level) {
                    warnings.warn(.mapOverExistingLeaf(iova: IOVA(address), level: level))
                    throw IOMMUError(.alreadyMapped, address: address, length: 1 &<< shift)
                }
                if Format.isTable(old, level: level) {
                    var gather = IOTLBGather()
                    let unmapped = unmapWalk(iova: address, pageShift: Int(shift), count: 1, level: level,
                                             table: table, gather: &gather, addPages: false,
                                             invalidator: &invalidator)
                    guard unmapped == 1 &<< shift else {
                        warnings.warn(.tableReplacementMismatch(iova: IOVA(address), blockSize: 1 &<< shift))
                        throw IOMMUError(.invalidArgument, address: address, length: 1 &<< shift)
                    }
                }
            }
            i &+= 1
        }
        var pa = paddr
        for j in 0..<count {
            table[first &+ j].store(Format.leaf(attributes: attributes, paddr: pa, level: level), ordering: .releasing)
            pa &+= 1 &<< shift   // within oas: the caller checked the run's first and last byte
        }
    }

    /// Maps with a no-op invalidator. See `map(iova:paddr:pageSize:count:prot:invalidator:)`.
    @inlinable
    public func map(iova: IOVA, paddr: PhysAddr, pageSize: PageSize, count: Int = 1, prot: IOMMUProt) throws(IOMMUError) -> UInt64 {
        var invalidator = NoTLBInvalidator()
        return try map(iova: iova, paddr: paddr, pageSize: pageSize, count: count, prot: prot, invalidator: &invalidator)
    }

    // MARK: - Unmap

    /// Unmaps up to `count` pages of `pageSize` at `iova` (as far as one table reaches),
    /// splitting a larger block if the range is inside one.
    ///
    /// Linux: `unmap_pages` (6.12: `arm_lpae_unmap_pages` with `arm_lpae_split_blk_unmap`).
    /// Removed leaves go to `invalidator.addPage` (unless `gather.queued`); a removed sub-table
    /// goes to `invalidator.flushWalk` before its pages are freed.
    ///
    /// - Returns: bytes unmapped; 0 (and a warning) if the page size is unsupported, `count` is
    ///   0, the IOVA is out of range, or nothing is mapped at `iova`.
    @inlinable
    public func unmap<I: TLBInvalidator & ~Copyable>(
        iova: IOVA, pageSize: PageSize, count: Int, gather: inout IOTLBGather, invalidator: inout I
    ) -> UInt64 {
        guard geometry.pageSizes.contains(pageSize), count > 0 else {
            warnings.warn(.unsupportedPageSize(iova: iova, pageSize: pageSize.bytes))
            return 0
        }
        if Format.checksInputRange && iova.rawValue &>> UInt64(geometry.ias) != 0 {
            warnings.warn(.addressOutOfRange(iova: iova, paddr: PhysAddr(0)))
            return 0
        }
        return unmapWalk(iova: iova.rawValue, pageShift: pageSize.shift, count: count, level: geometry.startLevel,
                         table: root(for: iova.rawValue), gather: &gather, addPages: true,
                         invalidator: &invalidator)
    }

    /// Unmaps with a no-op invalidator and a throw-away gather.
    @inlinable
    public func unmap(iova: IOVA, pageSize: PageSize, count: Int = 1) -> UInt64 {
        var gather = IOTLBGather()
        var invalidator = NoTLBInvalidator()
        return unmap(iova: iova, pageSize: pageSize, count: count, gather: &gather, invalidator: &invalidator)
    }

    /// Linux: `__arm_lpae_unmap` from `level` down.
    @inlinable
    func unmapWalk<I: TLBInvalidator & ~Copyable>(
        iova: UInt64, pageShift: Int, count: Int, level startLevel: Int,
        table startTable: UnsafeMutablePointer<Atomic<UInt64>>,
        gather: inout IOTLBGather, addPages: Bool, invalidator: inout I
    ) -> UInt64 {
        var level = startLevel
        var table = startTable
        var shift = geometry.levelShift(level)
        var mask = level == geometry.startLevel ? startMask : tableMask
        while level <= geometry.lastLevel {
            let index = Int(truncatingIfNeeded: (iova &>> UInt64(shift)) & mask)
            let entry = table + index
            let pte = entry.pointee.load(ordering: .acquiring)
            if pte == 0 {
                warnings.warn(.unmapOfUnmappedIOVA(iova: IOVA(iova), pageSize: 1 &<< UInt64(pageShift)))
                return 0
            }
            if shift == pageShift {
                let n = min(count, maxEntries(from: index))
                let size = UInt64(1) &<< UInt64(shift)
                var i = 0
                while i < n {
                    let old = entry[i].load(ordering: .acquiring)
                    if old == 0 {
                        warnings.warn(.unmapOfUnmappedIOVA(iova: IOVA(iova &+ UInt64(i) &* size), pageSize: size))
                        break
                    }
                    if !Format.isLeaf(old, level: level) && Format.isTable(old, level: level) {
                        entry[i].store(0, ordering: .releasing)
                        invalidator.flushWalk(iova: IOVA(iova &+ UInt64(i) &* size), size: size,
                                              granule: geometry.granule.bytes)
                        freeTable(Format.outputAddress(old), level: level &+ 1)
                    }
                    i &+= 1
                }
                for j in 0..<i { entry[j].store(0, ordering: .releasing) }
                if addPages && !gather.queued {
                    for j in 0..<i {
                        invalidator.addPage(&gather, iova: IOVA(iova &+ UInt64(j) &* size), granule: size)
                    }
                }
                return UInt64(i) &* size
            }
            if Format.isLeaf(pte, level: level) {
                return splitBlockUnmap(iova: iova, pageShift: pageShift, count: count, blockPTE: pte,
                                       level: level &+ 1, entry: entry, gather: &gather, invalidator: &invalidator)
            }
            table = descriptors(at: Format.outputAddress(pte))
            level &+= 1
            shift &-= geometry.bitsPerLevel
            mask = tableMask
        }
        return 0
    }

    /// Replaces the block `blockPTE` at `entry` by a table at `level` holding the rest of the
    /// block, minus the pages being unmapped. Linux (up to 6.12): `arm_lpae_split_blk_unmap`.
    @usableFromInline
    func splitBlockUnmap<I: TLBInvalidator & ~Copyable>(
        iova: UInt64, pageShift: Int, count: Int, blockPTE: UInt64, level: Int,
        entry: UnsafeMutablePointer<Atomic<UInt64>>, gather: inout IOTLBGather, invalidator: inout I
    ) -> UInt64 {
        guard level <= geometry.lastLevel else { return 0 }
        guard let newTable = try? frames.allocate(geometry.granule) else { return 0 }
        let splitShift = geometry.levelShift(level)
        let perTable = geometry.entriesPerTable
        var unmapFirst = -1
        var unmapCount = 0
        if pageShift == splitShift {
            unmapFirst = geometry.index(iova, level: level)
            unmapCount = min(count, perTable &- unmapFirst)
        }
        warnings.warn(.splitBlockOnUnmap(iova: IOVA(iova), blockShift: geometry.levelShift(level &- 1)))
        let table = descriptors(at: newTable.rawValue)
        var pa = Format.outputAddress(blockPTE)
        let attributes = Format.attributes(ofLeaf: blockPTE)
        for i in 0..<perTable {
            if !(i >= unmapFirst && i < unmapFirst &+ unmapCount) {
                table[i].store(Format.leaf(attributes: attributes, paddr: pa, level: level), ordering: .relaxed)
            }
            pa &+= 1 &<< UInt64(splitShift)
        }
        let descriptor = Format.table(paddr: newTable.rawValue, configuration: configuration)
        let (exchanged, current) = entry.pointee.compareExchange(
            expected: blockPTE, desired: descriptor, ordering: .acquiringAndReleasing)
        var continueIn = table
        if !exchanged {
            frames.free(newTable, geometry.granule)
            // Lost a race with another unmap of this block: continue in its table, if it is one.
            guard Format.isTable(current, level: level &- 1) else { return 0 }
            continueIn = descriptors(at: Format.outputAddress(current))
        } else if unmapFirst >= 0 {
            let size = UInt64(1) &<< UInt64(pageShift)
            if !gather.queued {
                for i in 0..<unmapCount {
                    invalidator.addPage(&gather, iova: IOVA(iova &+ UInt64(i) &* size), granule: size)
                }
            }
            return UInt64(unmapCount) &* size
        }
        return unmapWalk(iova: iova, pageShift: pageShift, count: count, level: level, table: continueIn,
                         gather: &gather, addPages: true, invalidator: &invalidator)
    }

    // MARK: - Lookup

    /// The physical address `iova` translates to, or `nil` if nothing maps it (Linux returns 0).
    ///
    /// Linux: `iova_to_phys`. Differs from Linux 6.12: an LPAE IOVA with bits at or above ias
    /// gives `nil` instead of aliasing into the table.
    @inlinable
    public func iovaToPhys(_ iova: IOVA) -> PhysAddr? {
        let address = iova.rawValue
        if Format.checksInputRange && address &>> UInt64(geometry.ias) != 0 { return nil }
        var level = geometry.startLevel
        var shift = startShift
        var mask = startMask
        var table = root(for: address)
        while true {
            let pte = table[Int(truncatingIfNeeded: (address &>> shift) & mask)].load(ordering: .acquiring)
            if pte == 0 { return nil }
            if Format.isLeaf(pte, level: level) {
                return PhysAddr(Format.outputAddress(pte) | (address & ((1 &<< shift) &- 1)))
            }
            guard level < geometry.lastLevel else { return nil }
            table = descriptors(at: Format.outputAddress(pte))
            level &+= 1
            shift &-= UInt64(geometry.bitsPerLevel)   // ≥ granuleShift: level ≤ lastLevel
            mask = tableMask
        }
    }

    /// The raw descriptor that maps `iova` and its level, or `nil` (for tools and tests).
    public func leafDescriptor(_ iova: IOVA) -> (descriptor: UInt64, level: Int)? {
        var level = geometry.startLevel
        var table = root(for: iova.rawValue)
        while true {
            let pte = table[geometry.index(iova.rawValue, level: level)].load(ordering: .acquiring)
            if pte == 0 { return nil }
            if Format.isLeaf(pte, level: level) { return (pte, level) }
            guard level < geometry.lastLevel else { return nil }
            table = descriptors(at: Format.outputAddress(pte))
            level += 1
        }
    }
}

extension IOPageTable: @unchecked Sendable where Format: Sendable {}
// @unchecked: the stored pointers point into `memory`, whose words are only accessed atomically.
