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
