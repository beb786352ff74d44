import IOMMUBase
import IOMMUCore
import IOMMUTestSupport
import Testing

@Suite("iommu_pgsize")
struct PageSizeSplitTests {
    let bitmap = PageSizeBitmap([.size4K, .size2M, .size1G])

    @Test func workedExampleTakesOne4KPageThenTwo2MPages() {
        let first = IOMMUPageSizeSplit.split(bitmap: bitmap, iova: 0x1F_F000, paddr: 0x1F_F000, size: 0x40_1000)
        #expect(first == IOMMUPageSizeSplit(pageSize: .size4K, count: 1))
        let second = IOMMUPageSizeSplit.split(bitmap: bitmap, iova: 0x20_0000, paddr: 0x20_0000, size: 0x40_0000)
        #expect(second == IOMMUPageSizeSplit(pageSize: .size2M, count: 2))
    }

    @Test func differentOffsetsInTheLargerPageUseSmallPagesThroughout() {
        // iova and paddr differ below 2M: never both 2M-aligned.
        let split = IOMMUPageSizeSplit.split(bitmap: bitmap, iova: 0x1F_F000, paddr: 0x40_0000, size: 0x40_1000)
        #expect(split == IOMMUPageSizeSplit(pageSize: .size4K, count: 0x401))
    }

    @Test func rangeTooShortToReachAWholeLargerPageStaysSmall() {
        // Boundary at +4K, but 4K + 2M > size: no early stop.
        let split = IOMMUPageSizeSplit.split(bitmap: bitmap, iova: 0x1F_F000, paddr: 0x1F_F000, size: 0x20_0000)
        #expect(split == IOMMUPageSizeSplit(pageSize: .size4K, count: 0x200))
    }

    @Test func zeroAddressesUseTheLargestSizeThatFits() {
        let split = IOMMUPageSizeSplit.split(bitmap: bitmap, iova: 0, paddr: 0, size: 0x8060_0000)
        #expect(split == IOMMUPageSizeSplit(pageSize: .size1G, count: 2))
    }

    @Test func noFittingSizeIsNil() {
        #expect(IOMMUPageSizeSplit.split(bitmap: bitmap, iova: 0, paddr: 0, size: 0) == nil)
        #expect(IOMMUPageSizeSplit.split(bitmap: bitmap, iova: 0, paddr: 0, size: 0x800) == nil)
        #expect(IOMMUPageSizeSplit.split(bitmap: bitmap, iova: 0x800, paddr: 0, size: 0x1000) == nil)
    }

    @Test func topPageSizeHasNoNextSize() {
        let top = PageSizeBitmap(rawValue: 1 << 63 | 1 << 12)
        let split = IOMMUPageSizeSplit.split(bitmap: top, iova: 0, paddr: 0, size: 1 << 63)
        #expect(split == IOMMUPageSizeSplit(pageSize: PageSize(shift: 63), count: 1))
    }
}

@Suite("iommu_pgsize properties")
struct PageSizeSplitPropertyTests {
    static let bitmaps: [PageSizeBitmap] = [
        PageSizeBitmap([.size4K, .size2M, .size1G]),
        PageSizeBitmap([.size16K, .size32M]),
        PageSizeBitmap([.size64K, .size512M]),
        PageSizeBitmap([.size4K, .size64K, PageSize(shift: 20), PageSize(shift: 24)]),
        PageSizeBitmap([.size16K]),
    ]

    /// Walking a range chunk by chunk covers it exactly, with every chunk aligned on both sides and
    /// each page the largest supported size that is aligned and fits.
    @Test(arguments: TestSupport.propertySeeds)
    func chunksCoverTheRangeWithTheLargestAlignedPages(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        for _ in 0..<2000 {
            let bitmap = Self.bitmaps[Int(rng.next() % UInt64(Self.bitmaps.count))]
            let minShift = bitmap.smallest!.shift
            let sameOffset = rng.next() % 2 == 0
            var iova = (rng.next() % (1 << 20)) << UInt64(minShift)
            var paddr = sameOffset ? iova : (rng.next() % (1 << 20)) << UInt64(minShift)
            var remaining = (1 + rng.next() % (1 << 12)) << UInt64(minShift)
            var chunks = 0
            while remaining != 0 {
                guard let split = IOMMUPageSizeSplit.split(bitmap: bitmap, iova: iova, paddr: paddr, size: remaining) else {
                    Issue.record("no split for iova \(iova) paddr \(paddr) size \(remaining)")
                    return
                }
                let page = split.pageSize
                #expect(bitmap.contains(page))
                #expect(iova & page.mask == 0 && paddr & page.mask == 0)
                #expect(split.count >= 1 && split.count * page.bytes <= remaining)
                // No larger supported size was usable for the first page.
                for larger in bitmap.sizes where larger > page {
                    #expect(iova & larger.mask != 0 || paddr & larger.mask != 0 || larger.bytes > remaining)
                }
                let length = split.count * page.bytes
                iova += length
                paddr += length
                remaining -= length
                chunks += 1
            }
            #expect(chunks <= 2 * bitmap.sizes.count + 1)
        }
    }
}
