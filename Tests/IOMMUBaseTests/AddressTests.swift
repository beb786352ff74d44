import IOMMUBase
import Testing

@Suite struct AddressTests {
    @Test func addressesPrintInHex() {
        #expect(IOVA(0x4000_1000).description == "0x40001000")
        #expect(PhysAddr(0).description == "0x0")
        #expect(PFN(0x100000).description == "pfn 0x100000")
    }

    @Test func addingReportsOverflowAsNil() {
        #expect(IOVA(UInt64.max - 1).adding(1) == IOVA(UInt64.max))
        #expect(IOVA(UInt64.max).adding(1) == nil)
    }

    @Test func alignmentHelpers() {
        let a = IOVA(0x1234)
        #expect(a.alignedDown(to: .size4K) == IOVA(0x1000))
        #expect(a.alignedUp(to: .size4K) == IOVA(0x2000))
        #expect(a.offset(in: .size4K) == 0x234)
        #expect(IOVA(0x2000).alignedUp(to: .size4K) == IOVA(0x2000))
        #expect(IOVA(UInt64.max).alignedUp(to: .size4K) == nil)
        #expect(IOVA(0x20_0000).isAligned(to: .size2M))
        #expect(!IOVA(0x20_1000).isAligned(to: .size2M))
    }

    @Test func pfnConversionsRoundTrip() {
        let iova = IOVA(0xFFFF_F000)
        #expect(iova.pfn(granule: .size4K) == PFN(0xFFFFF))
        #expect(PFN(0xFFFFF).iova(granule: .size4K) == iova)
        #expect(PFN(UInt64.max).iova(granule: .size4K) == nil)
    }
}

@Suite struct AddressRangeTests {
    @Test func rangeFromStartAndLength() throws {
        let range = try #require(IOVARange(start: IOVA(0x1000), length: 0x2000))
        #expect(range.first == IOVA(0x1000))
        #expect(range.last == IOVA(0x2FFF))
        #expect(range.length == 0x2000)
        #expect(range.description == "[0x1000, 0x2fff]")
    }

    @Test func rangeEndingAtTopOfSpaceIsRepresentable() throws {
        let range = try #require(IOVARange(start: IOVA(0xFFFF_FFFF_FFFF_F000), length: 0x1000))
        #expect(range.last == IOVA(UInt64.max))
    }

    @Test func wrapAroundIsAnErrorValueNotACrash() {
        #expect(IOVARange(start: IOVA(0xFFFF_FFFF_FFFF_F000), length: 0x2000) == nil)
        #expect(IOVARange(start: IOVA(0x1000), length: 0) == nil)
        #expect(throws: IOMMUError(.lengthOverflow, address: 0xFFFF_FFFF_FFFF_F000, length: 0x2000)) {
            try IOVARange.checked(start: IOVA(0xFFFF_FFFF_FFFF_F000), length: 0x2000)
        }
        #expect(throws: IOMMUError(.zeroLength, address: 0x1000)) {
            try IOVARange.checked(start: IOVA(0x1000), length: 0)
        }
    }

    @Test func checkedRangeRequiresAlignment() {
        let error = #expect(throws: IOMMUError.self) {
            try IOVARange.checked(start: IOVA(0x1800), length: 0x1000, alignment: .size4K)
        }
        #expect(error?.code == .invalidArgument)
        #expect(error?.reason == .unaligned)
    }

    @Test func fullSpaceHasLengthZero() throws {
        let all = try #require(IOVARange(first: IOVA(0), last: IOVA(UInt64.max)))
        #expect(all.length == 0)
    }

    @Test func overlapAndIntersection() throws {
        let a = try #require(IOVARange(first: IOVA(0x1000), last: IOVA(0x1FFF)))
        let b = try #require(IOVARange(first: IOVA(0x1800), last: IOVA(0x27FF)))
        let c = try #require(IOVARange(first: IOVA(0x2000), last: IOVA(0x2FFF)))
        #expect(a.overlaps(b) && b.overlaps(a))
        #expect(!a.overlaps(c))
        #expect(a.intersection(b) == IOVARange(first: IOVA(0x1800), last: IOVA(0x1FFF)))
        #expect(a.intersection(c) == nil)
        #expect(a.contains(IOVA(0x1FFF)) && !a.contains(IOVA(0x2000)))
    }
}

@Suite struct PageSizeTests {
    @Test func onlyPowersOfTwo() {
        #expect(PageSize(bytes: 4096)?.shift == 12)
        #expect(PageSize(bytes: 0) == nil)
        #expect(PageSize(bytes: 3 << 12) == nil)
        #expect(PageSize.size2M.bytes == 0x20_0000)
        #expect(PageSize.size64K.mask == 0xFFFF)
    }

    @Test func shortNames() {
        #expect(PageSize.size4K.description == "4K")
        #expect(PageSize.size2M.description == "2M")
        #expect(PageSize.size1G.description == "1G")
        #expect(PageSize(shift: 42).description == "4T")
        #expect(formatByteSize(0x3000) == "12K")
        #expect(formatByteSize(100) == "100")
    }

    @Test func bitmapSmallestLargestAndText() {
        let bitmap = PageSizeBitmap([.size4K, .size2M, .size1G])
        #expect(bitmap.rawValue == 0x4020_1000)
        #expect(bitmap.smallest == .size4K)
        #expect(bitmap.largest == .size1G)
        #expect(bitmap.description == "4K|2M|1G")
        #expect(bitmap.contains(.size2M) && !bitmap.contains(.size16K))
        #expect(PageSizeBitmap(rawValue: 0).smallest == nil)
    }
}

@Suite struct ArithmeticTests {
    @Test func roundUpPowerOfTwoMatchesLinux() {
        #expect(roundUpPowerOfTwo(1) == 1)
        #expect(roundUpPowerOfTwo(3) == 4)
        #expect(roundUpPowerOfTwo(33) == 64)
        #expect(roundUpPowerOfTwo(64) == 64)
        #expect(roundUpPowerOfTwo(0) == nil)
        #expect(roundUpPowerOfTwo(1 << 63) == 1 << 63)
        #expect(roundUpPowerOfTwo((1 << 63) + 1) == nil)
    }

    @Test func orderBase2IsCeilingLog2() {
        #expect(orderBase2(1) == 0)
        #expect(orderBase2(2) == 1)
        #expect(orderBase2(3) == 2)
        #expect(orderBase2(32) == 5)
        #expect(orderBase2(33) == 6)
    }

    @Test func flsAndGenmask() {
        #expect(fls(0) == 0)
        #expect(fls(1) == 1)
        #expect(fls(0x8000_0000_0000_0000) == 64)
        #expect(genmask(47, 12) == 0x0000_FFFF_FFFF_F000)
        #expect(genmask(63, 0) == UInt64.max)
        #expect(genmask(54, 53) == 0x0060_0000_0000_0000)
    }

    @Test func alignUpDoesNotWrap() {
        #expect(alignUp(0x1001, to: .size4K) == 0x2000)
        #expect(alignUp(UInt64.max, to: .size4K) == nil)
        #expect(alignDown(0x1FFF, to: .size4K) == 0x1000)
    }
}

@Suite struct ProtTests {
    @Test func bitsAreLinuxValues() {
        #expect(IOMMUProt.read.rawValue == 1)
        #expect(IOMMUProt.write.rawValue == 2)
        #expect(IOMMUProt.cache.rawValue == 4)
        #expect(IOMMUProt.noExec.rawValue == 8)
        #expect(IOMMUProt.mmio.rawValue == 16)
        #expect(IOMMUProt.priv.rawValue == 32)
    }

    @Test func lettersRoundTrip() {
        #expect(IOMMUProt(letters: "rwcnmp")?.rawValue == 0x3F)
        #expect(IOMMUProt(letters: "rw") == [.read, .write])
        #expect(IOMMUProt(letters: "rx") == nil)
        #expect(IOMMUProt(letters: "") == nil)
        #expect(IOMMUProt([.read, .noExec]).letters == "rn")
        #expect(IOMMUProt().letters == "-")
    }
}
