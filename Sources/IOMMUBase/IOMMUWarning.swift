/// A misuse or oddity that Linux would `WARN` (or `pr_warn`) about, reported as a value at the
/// faulty call.
///
/// Each case is trivial (numbers only) so reporting one never allocates; the text is built only
/// when printed. Layers add cases in their own `MARK` section.
public enum IOMMUWarning: Hashable, Sendable, CustomStringConvertible {
    // MARK: - IO page tables (Linux: io-pgtable-arm.c WARN_ONs)

    /// `map_pages`/`unmap_pages` asked for a page size the table does not support
    /// (Linux: WARN, -EINVAL / 0).
    case unsupportedPageSize(iova: IOVA, pageSize: UInt64)
    /// The IOVA has bits above `ias`, or the physical address bits above `oas` (Linux: WARN, -ERANGE).
    case addressOutOfRange(iova: IOVA, paddr: PhysAddr)
    /// A map found a leaf already installed (Linux: WARN, -EEXIST; silent only in the selftest).
    case mapOverExistingLeaf(iova: IOVA, level: Int)
    /// An unmap reached an empty entry (Linux: WARN, returns 0 bytes).
    case unmapOfUnmappedIOVA(iova: IOVA, pageSize: UInt64)
    /// An unmap smaller than the block mapping it: the block was split (Linux up to 6.12, silently).
    case splitBlockOnUnmap(iova: IOVA, blockShift: Int)
    /// A block map met a table whose teardown did not unmap exactly one block (Linux: WARN, -EINVAL).
    case tableReplacementMismatch(iova: IOVA, blockSize: UInt64)

    // MARK: - IOVA allocator (Linux: iova.c)

    /// Free of a pfn that is not the start of any live allocation (Linux: silently cached or ignored).
    case iovaFreeNotAllocated(pfn: PFN, pages: UInt64, cpu: Int)
    /// Free of an allocation that is already free or already sitting in a cache.
    case iovaDoubleFree(pfn: PFN, pages: UInt64, cpu: Int)
    /// Free with a size that does not match the live allocation starting at `pfn`.
    case iovaFreeWrongSize(pfn: PFN, pages: UInt64, allocatedPages: UInt64, cpu: Int)
    /// Free of a pfn inside, but not at the start of, the allocation starting at `allocationStart`.
    case iovaFreeInsideAllocation(pfn: PFN, pages: UInt64, allocationStart: PFN, cpu: Int)
    /// A magazine drain found a cached pfn with no allocation behind it (Linux: WARN and skip).
    case iovaDrainFoundNoAllocation(pfn: PFN)
    /// `reserve_iova` with a pfn beyond `U64_MAX >> shift` (Linux: WARN, NULL).
    case iovaReserveOutOfRange(low: PFN, high: PFN)
    /// An allocation collided with an existing node on insert (Linux: WARN, not inserted).
    case iovaDuplicateInsert(pfn: PFN)

    public var description: String {
        func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
        switch self {
        case let .unsupportedPageSize(iova, pageSize):
            return "page size \(hex(pageSize)) not supported by this table (iova \(iova))"
        case let .addressOutOfRange(iova, paddr):
            return "address out of range for the table: iova \(iova) paddr \(paddr)"
        case let .mapOverExistingLeaf(iova, level):
            return "map over an existing leaf at iova \(iova) (level \(level))"
        case let .unmapOfUnmappedIOVA(iova, pageSize):
            return "unmap of unmapped iova \(iova) (page size \(hex(pageSize)))"
        case let .splitBlockOnUnmap(iova, blockShift):
            return "unmap at iova \(iova) split a \(formatByteSize(UInt64(1) << UInt64(blockShift))) block"
        case let .tableReplacementMismatch(iova, blockSize):
            return "replacing a table by a \(hex(blockSize)) block at iova \(iova) did not unmap exactly one block"
        case let .iovaFreeNotAllocated(pfn, pages, cpu):
            return "IOVA free of \(pfn) (\(pages) pages, cpu \(cpu)): not a live allocation; rejected"
        case let .iovaDoubleFree(pfn, pages, cpu):
            return "IOVA double free of \(pfn) (\(pages) pages, cpu \(cpu)); rejected"
        case let .iovaFreeWrongSize(pfn, pages, allocatedPages, cpu):
            return "IOVA free of \(pfn) with size \(pages) pages (cpu \(cpu)), but it was allocated with \(allocatedPages); rejected"
        case let .iovaFreeInsideAllocation(pfn, pages, allocationStart, cpu):
            return "IOVA free of \(pfn) (\(pages) pages, cpu \(cpu)) inside the allocation starting at \(allocationStart); rejected"
        case let .iovaDrainFoundNoAllocation(pfn):
            return "IOVA cache drain: cached \(pfn) has no allocation; skipped"
        case let .iovaReserveOutOfRange(low, high):
            return "IOVA reserve [\(low), \(high)] beyond the addressable pfn range"
        case let .iovaDuplicateInsert(pfn):
            return "IOVA insert of \(pfn) collides with an existing node"
        }
    }
}
