import IOMMUBase

/// One chunk of a range split into pages: `count` pages of `pageSize`.
public typealias PageChunk = IOMMUPageSizeSplit

/// The largest page size, and how many of them, to map the start of `[iova, iova + length)`
/// to `paddr`.
///
/// Linux: `iommu_pgsize()` (the page-count form). The caller must have checked that `iova`,
/// `paddr` and `length` are multiples of the smallest supported size and that `length` is not
/// 0; otherwise this is a programmer error (Linux: BUG).
@inlinable
public func iommuPageSize(iova: UInt64, paddr: UInt64, length: UInt64, pageSizes: PageSizeBitmap) -> PageChunk {
    guard let chunk = IOMMUPageSizeSplit.split(bitmap: pageSizes, iova: iova, paddr: paddr, size: length) else {
        preconditionFailure("iommuPageSize: no page size fits (empty or unaligned request)")
    }
    return chunk
}

/// The whole split of `[iova, iova + length)` as Linux's `__iommu_map` loop would issue it.
public func iommuPageChunks(iova: UInt64, paddr: UInt64, length: UInt64, pageSizes: PageSizeBitmap) -> [PageChunk] {
    var chunks: [PageChunk] = []
    var iova = iova, paddr = paddr, remaining = length
    while remaining != 0 {
        let chunk = iommuPageSize(iova: iova, paddr: paddr, length: remaining, pageSizes: pageSizes)
        chunks.append(chunk)
        let bytes = chunk.count &<< UInt64(chunk.pageSize.shift)
        iova &+= bytes
        paddr &+= bytes
        remaining &-= bytes
    }
    return chunks
}

// MARK: - Range-level map/unmap (the IOMMU core's loop)

extension IOPageTable where Format: PageTableFormat {
    /// Maps `[iova, iova + length)` → `paddr`, split into pages as Linux's `__iommu_map` does;
    /// on failure everything mapped by this call is unmapped again.
    ///
    /// Linux: `__iommu_map` (validation, the `iommu_pgsize` loop over `map_pages`, rollback with
    /// `iommu_unmap`). `length == 0` is a successful no-op.
    ///
    /// - Throws: `unaligned` (EINVAL) if `iova | paddr | length` is not a multiple of the
    ///   smallest page; `lengthOverflow` (EOVERFLOW) if a range passes 2^64; otherwise the
    ///   first `map` error (EEXIST, EINVAL, ERANGE, ENOMEM), after rollback.
    public func map<I: TLBInvalidator & ~Copyable>(
        iova: IOVA, paddr: PhysAddr, length: UInt64, prot: IOMMUProt, invalidator: inout I
    ) throws(IOMMUError) {
        let minimum = geometry.pageSizes.smallest?.mask ?? 0
        guard (iova.rawValue | paddr.rawValue | length) & minimum == 0 else {
            throw IOMMUError(.unaligned, address: iova.rawValue, length: length)
        }
        guard length == 0 || (iova.rawValue.addingReportingOverflow(length - 1).overflow == false
                              && paddr.rawValue.addingReportingOverflow(length - 1).overflow == false)
        else { throw IOMMUError(.lengthOverflow, address: iova.rawValue, length: length) }
        var mapped: UInt64 = 0
        while mapped < length {
            let chunk = iommuPageSize(iova: iova.rawValue + mapped, paddr: paddr.rawValue + mapped,
                                      length: length - mapped, pageSizes: geometry.pageSizes)
            do {
                mapped += try map(iova: IOVA(iova.rawValue + mapped), paddr: PhysAddr(paddr.rawValue + mapped),
                                  pageSize: chunk.pageSize, count: Int(clamping: chunk.count), prot: prot,
                                  invalidator: &invalidator)
            } catch {
                if mapped > 0 {
                    var gather = IOTLBGather()
                    _ = unmap(iova: iova, length: mapped, gather: &gather, invalidator: &invalidator)
                }
                throw error
            }
        }
    }

    /// `map(iova:paddr:length:prot:invalidator:)` with a no-op invalidator.
    public func map(iova: IOVA, paddr: PhysAddr, length: UInt64, prot: IOMMUProt) throws(IOMMUError) {
        var invalidator = NoTLBInvalidator()
        try map(iova: iova, paddr: paddr, length: length, prot: prot, invalidator: &invalidator)
    }

    /// Unmaps `[iova, iova + length)` split as Linux's `__iommu_unmap` splits it; stops at the
    /// first hole.
    ///
    /// Linux: `__iommu_unmap`. Returns the bytes unmapped: 0 for an unaligned request, less than
    /// `length` when it hit an unmapped area.
    public func unmap<I: TLBInvalidator & ~Copyable>(
        iova: IOVA, length: UInt64, gather: inout IOTLBGather, invalidator: inout I
    ) -> UInt64 {
        let minimum = geometry.pageSizes.smallest?.mask ?? 0
        guard (iova.rawValue | length) & minimum == 0 else { return 0 }
        guard length == 0 || !iova.rawValue.addingReportingOverflow(length - 1).overflow else { return 0 }
        var unmapped: UInt64 = 0
        while unmapped < length {
            let here = iova.rawValue + unmapped
            let chunk = iommuPageSize(iova: here, paddr: here, length: length - unmapped, pageSizes: geometry.pageSizes)
            let bytes = unmap(iova: IOVA(here), pageSize: chunk.pageSize, count: Int(clamping: chunk.count),
                              gather: &gather, invalidator: &invalidator)
            if bytes == 0 { break }
            unmapped += bytes
        }
        return unmapped
    }

    /// `unmap(iova:length:gather:invalidator:)` with a no-op invalidator.
    public func unmap(iova: IOVA, length: UInt64) -> UInt64 {
        var gather = IOTLBGather()
        var invalidator = NoTLBInvalidator()
        return unmap(iova: iova, length: length, gather: &gather, invalidator: &invalidator)
    }
}
