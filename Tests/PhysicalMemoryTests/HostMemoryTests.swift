import IOMMUBase
import PhysicalMemory
import Testing

@Suite struct HostMemoryTests {
    private func makeHost(limit: UInt64 = 1 << 20, ipcLock: Bool = false) throws -> HostMemory {
        let memory = try PhysicalMemory()
        return HostMemory(memory: memory, frames: FrameAllocator(memory: memory), lockedMemoryLimit: limit, hasIPCLock: ipcLock)
    }

    @Test func anonymousPagesAreBackedOnFirstTouch() throws {
        let host = try makeHost()
        let range = try host.map(length: 0x10000)
        #expect(range.first == HostMemory.defaultMapBase)
        #expect(host.framesHeld == 0)
        let pa = try host.translate(VirtAddr(range.first.rawValue + 0x1234))
        #expect(pa.offset(in: .size4K) == 0x234)
        #expect(host.framesHeld == 1)
        #expect(try host.translate(VirtAddr(range.first.rawValue + 0x1000)) == pa.alignedDown(to: .size4K))
        try host.write(VirtAddr(range.first.rawValue + 0xFFE), [1, 2, 3, 4])  // crosses a page
        #expect(try host.read(VirtAddr(range.first.rawValue + 0xFFE), count: 4) == [1, 2, 3, 4])
        #expect(host.framesHeld == 2)
    }

    @Test func hugePagesArePhysicallyContiguous() throws {
        let host = try makeHost()
        let range = try host.map(length: 0x40_0000, backing: .hugePages2M)
        let first = try host.translate(range.first)
        #expect(first.isAligned(to: .size2M))
        for offset in stride(from: UInt64(0), to: 0x20_0000, by: 0x1000) {
            #expect(try host.translate(VirtAddr(range.first.rawValue + offset)) == PhysAddr(first.rawValue + offset))
        }
        #expect(host.framesHeld == 1)
        #expect(throws: IOMMUError.self) { try host.map(length: 0x1000, backing: .hugePages2M) }
    }

    @Test func unmappedAndReadOnlyAccessIsEFAULT() throws {
        let host = try makeHost()
        let error = #expect(throws: IOMMUError.self) { try host.translate(VirtAddr(0x1000)) }
        #expect(error?.code == .badAddress)
        let readOnly = try host.map(length: 0x1000, writable: false)
        _ = try host.translate(readOnly.first)
        #expect(throws: IOMMUError.self) { try host.translate(readOnly.first, forWrite: true) }
        #expect(throws: IOMMUError.self) { try host.pin(readOnly.first, count: 1, write: true) }
        #expect(try host.pin(readOnly.first, count: 1, write: false).count == 1)
    }

    @Test func overlappingMapIsEEXIST() throws {
        let host = try makeHost()
        let range = try host.map(length: 0x4000)
        let error = #expect(throws: IOMMUError.self) { try host.map(length: 0x1000, at: VirtAddr(range.first.rawValue + 0x3000)) }
        #expect(error?.code == .exists)
    }

    @Test func deviceMemoryIsNotPinnableButFollowable() throws {
        let host = try makeHost()
        let bar = try host.map(length: 0x4000, backing: .device(PhysAddr(0xF000_0000)))
        let error = #expect(throws: IOMMUError.self) { try host.pin(bar.first, count: 1, write: true) }
        #expect(error?.code == .badAddress)
        #expect(try host.followPFNMap(VirtAddr(bar.first.rawValue + 0x2000), write: true) == PhysAddr(0xF000_2000))
        let anon = try host.map(length: 0x1000)
        #expect(throws: IOMMUError.self) { try host.followPFNMap(anon.first, write: false) }
    }

    @Test func pinIsAllOrNothingAndCounted() throws {
        let host = try makeHost()
        let range = try host.map(length: 0x3000)
        // Pages 0..2 mapped, page 3 is not: the whole pin fails and nothing stays pinned.
        #expect(throws: IOMMUError.self) { try host.pin(range.first, count: 4, write: true) }
        #expect(host.totalPins == 0)
        let pages = try host.pin(range.first, count: 3, write: true)
        let again = try host.pin(range.first, count: 1, write: false)
        #expect(host.pinCount(pages[0]) == 2 && host.pinCount(pages[1]) == 1)
        host.unpin(pages)
        host.unpin(again)
        #expect(host.totalPins == 0)
    }

    @Test func pinnedPagesOutliveMunmapAndAreFreedAtLastUnpin() throws {
        let memory = try PhysicalMemory()
        let frames = FrameAllocator(memory: memory)
        let host = HostMemory(memory: memory, frames: frames)
        let range = try host.map(length: 0x2000)
        let pages = try host.pin(range.first, count: 2, write: true)
        try host.write(range.first, [0x5A])
        try host.unmap(range)
        #expect(host.regions.isEmpty)
        #expect(frames.framesInUse == 2)  // still pinned, still allocated
        #expect(try memory.readBytes(pages[0], count: 1) == [0x5A])
        host.unpin([pages[0]])
        #expect(frames.framesInUse == 1)
        host.unpin([pages[1]])
        #expect(frames.framesInUse == 0)
    }

    @Test func partialMunmapSplitsRegions() throws {
        let host = try makeHost()
        let range = try host.map(length: 0x5000, backing: .device(PhysAddr(0xF000_0000)))
        try host.unmap(try #require(VirtRange(start: VirtAddr(range.first.rawValue + 0x1000), length: 0x2000)))
        let regions = host.regions
        #expect(regions.count == 2)
        #expect(regions[0].range.length == 0x1000 && regions[1].range.length == 0x2000)
        #expect(regions[1].backing == .device(PhysAddr(0xF000_3000)))
        #expect(try host.followPFNMap(VirtAddr(range.first.rawValue + 0x3000), write: false) == PhysAddr(0xF000_3000))
    }

    @Test func pinContiguousStopsAtAPhysicalDiscontinuityAndUnpinsByRange() throws {
        let host = try makeHost()
        let huge = try host.map(length: 4 << 20, backing: .hugePages2M)
        let (first, count) = try host.pinContiguous(huge.first, maxCount: 1024, write: true)
        #expect(first.isAligned(to: .size2M))
        #expect(count >= 512, "at least one whole 2 MiB frame")
        #expect(host.pinCount(first) == 1)
        #expect(host.totalPins == count)
        host.unpin(first: first, count: count)
        #expect(host.totalPins == 0)
        // The first page must pin; device memory and unmapped memory are EFAULT.
        let mmio = try host.map(length: 0x1000, backing: .device(PhysAddr(0x4000_0000)))
        #expect(throws: IOMMUError(.badAddress, address: mmio.first.rawValue, length: 4096)) {
            _ = try host.pinContiguous(mmio.first, maxCount: 1, write: false)
        }
        // A run stops at the end of its region.
        let small = try host.map(length: 0x2000)
        let (_, n) = try host.pinContiguous(small.first, maxCount: 8, write: false)
        #expect(n <= 2)
        #expect(host.totalPins == n)
    }

    @Test func lockedMemoryLimitAndIPCLock() throws {
        let host = try makeHost(limit: 0x4000)
        try host.accountLocked(pages: 3)
        let error = #expect(throws: IOMMUError.self) { try host.accountLocked(pages: 2) }
        #expect(error?.code == .noMemory)
        #expect(host.lockedPages == 3)  // unchanged by the failure
        try host.accountLocked(pages: 1)
        host.unaccountLocked(pages: 4)
        #expect(host.lockedPages == 0)

        let privileged = try makeHost(limit: 0x4000, ipcLock: true)
        try privileged.accountLocked(pages: 1000)
        #expect(privileged.lockedPages == 1000)  // counted, but not limited
    }
}
