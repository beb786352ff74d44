import IOMMUBase
import PhysicalMemory
import Synchronization
import Testing

@Suite struct PhysicalMemoryTests {
    @Test func untouchedMemoryReadsZeroEverywhere() throws {
        let memory = try PhysicalMemory()
        #expect(try memory.load64(PhysAddr(0x8000_0000)) == 0)
        #expect(try memory.load64(PhysAddr(0xFFFF_FFFF_F000)) == 0)  // far above RAM
        #expect(try memory.readBytes(PhysAddr(0x1000), count: 16) == [UInt8](repeating: 0, count: 16))
        #expect(memory.sparsePagesBacked == 0)  // reading backs nothing
    }

    @Test func wordsAreLittleEndianInRAMAndOutside() throws {
        let memory = try PhysicalMemory()
        for address in [PhysAddr(0x8000_1000), PhysAddr(0x10_0000_0008)] {
            try memory.store64(address, 0x0102_0304_0506_0708)
            #expect(try memory.readBytes(address, count: 8) == [8, 7, 6, 5, 4, 3, 2, 1])
            #expect(try memory.load64(address) == 0x0102_0304_0506_0708)
        }
        #expect(memory.sparsePagesBacked == 1)
    }

    @Test func byteAccessCrossesPageAndRAMBoundaries() throws {
        let memory = try PhysicalMemory(ramBase: PhysAddr(0x20_0000), ramSize: 0x20_0000)
        // Starts in sparse memory just below RAM, runs into RAM, then past RAM's end.
        let bytes = (0..<64).map { UInt8($0) }
        try memory.writeBytes(PhysAddr(0x1F_FFE0), bytes)
        #expect(try memory.readBytes(PhysAddr(0x1F_FFE0), count: 64) == bytes)
        try memory.writeBytes(PhysAddr(0x3F_FFF0), bytes)
        #expect(try memory.readBytes(PhysAddr(0x3F_FFF0), count: 64) == bytes)
        #expect(try memory.readBytes(PhysAddr(0x40_0000), count: 4) == [16, 17, 18, 19])
    }

    @Test func accessBeyondTheAddressSpaceIsERANGE() throws {
        let memory = try PhysicalMemory(addressBits: 40)
        let error = #expect(throws: IOMMUError.self) { try memory.load64(PhysAddr(1 << 40)) }
        #expect(error?.code == .outOfRange)
        #expect(throws: IOMMUError.self) { try memory.writeBytes(PhysAddr((1 << 40) - 2), [1, 2, 3]) }
        // Nothing was written by the failed request.
        #expect(try memory.readBytes(PhysAddr((1 << 40) - 2), count: 2) == [0, 0])
        #expect(throws: IOMMUError.self) { try memory.readBytes(PhysAddr(UInt64.max), count: 2) }
    }

    @Test func fillSetsBytes() throws {
        let memory = try PhysicalMemory()
        try memory.fill(PhysAddr(0x8000_0FF0), length: 0x20, with: 0xAB)
        #expect(try memory.readBytes(PhysAddr(0x8000_0FEF), count: 0x22) == [0] + [UInt8](repeating: 0xAB, count: 0x20) + [0])
    }

    @Test func badConfigurationsAreRejected() {
        #expect(throws: IOMMUError.self) { try PhysicalMemory(addressBits: 20) }
        #expect(throws: IOMMUError.self) { try PhysicalMemory(ramBase: PhysAddr(0x1000)) }
        #expect(throws: IOMMUError.self) { try PhysicalMemory(addressBits: 32, ramBase: PhysAddr(0x8000_0000), ramSize: 4 << 30) }
    }

    @Test func concurrentWritersToDistinctWordsDoNotInterfere() async throws {
        let memory = try PhysicalMemory()
        await withTaskGroup(of: Void.self) { group in
            for worker in 0..<4 {
                group.addTask {
                    for index in 0..<2000 {
                        let address = PhysAddr(0x8000_0000 + UInt64(worker) * 0x10_0000 + UInt64(index) * 8)
                        try! memory.store64(address, UInt64(worker << 32 | index))
                        // Sparse memory too (a page is created under the lock by whoever is first).
                        try! memory.store64(PhysAddr(0x100_0000_0000 + UInt64(index) * 32 + UInt64(worker) * 8), UInt64(index))
                    }
                }
            }
        }
        for worker in 0..<4 {
            for index in stride(from: 0, to: 2000, by: 97) {
                #expect(try memory.load64(PhysAddr(0x8000_0000 + UInt64(worker) * 0x10_0000 + UInt64(index) * 8)) == UInt64(worker << 32 | index))
                #expect(try memory.load64(PhysAddr(0x100_0000_0000 + UInt64(index) * 32 + UInt64(worker) * 8)) == UInt64(index))
            }
        }
    }
}

@Suite struct FrameAllocatorTests {
    @Test func framesAreNaturallyAlignedZeroedAndCounted() throws {
        let memory = try PhysicalMemory()
        let frames = FrameAllocator(memory: memory)
        let small = try frames.allocate(.size4K)
        let large = try frames.allocate(.size64K)
        let huge = try frames.allocate(.size2M)
        #expect(small.isAligned(to: .size4K) && large.isAligned(to: .size64K) && huge.isAligned(to: .size2M))
        #expect(frames.framesInUse == 3)
        #expect(frames.bytesInUse == 0x1000 + 0x10000 + 0x20_0000)
        try memory.fill(small, length: 0x1000, with: 0xFF)
        frames.free(small, .size4K)
        let again = try frames.allocate(.size4K)
        #expect(again == small)  // reused first
        #expect(try memory.readBytes(again, count: 0x1000).allSatisfy { $0 == 0 })  // and zeroed
        frames.free(again, .size4K)
        frames.free(large, .size64K)
        frames.free(huge, .size2M)
        #expect(frames.framesInUse == 0 && frames.bytesInUse == 0)
        #expect(frames.peakBytesInUse == 0x1000 + 0x10000 + 0x20_0000)
    }

    @Test func framesNeverOverlap() throws {
        let memory = try PhysicalMemory()
        let frames = FrameAllocator(memory: memory)
        var rng = SplitMix64(seed: 7)
        var live: [(PhysAddr, PageSize)] = []
        for _ in 0..<2000 {
            if !live.isEmpty, rng.next() % 3 == 0 {
                let victim = live.remove(at: Int(rng.next() % UInt64(live.count)))
                frames.free(victim.0, victim.1)
            } else {
                let size = [PageSize.size4K, .size16K, .size64K][Int(rng.next() % 3)]
                live.append((try frames.allocate(size), size))
            }
        }
        let sorted = live.sorted { $0.0 < $1.0 }
        for (a, b) in zip(sorted, sorted.dropFirst()) {
            #expect(a.0.rawValue + a.1.bytes <= b.0.rawValue)
        }
        #expect(frames.framesInUse == live.count)
    }

    @Test func exhaustionAndInjectedFailureAreENOMEMWithoutEffect() throws {
        let memory = try PhysicalMemory()
        let frames = FrameAllocator(memory: memory, limitBytes: 0x2000)
        _ = try frames.allocate(.size4K)
        _ = try frames.allocate(.size4K)
        let error = #expect(throws: IOMMUError.self) { try frames.allocate(.size4K) }
        #expect(error?.code == .noMemory)
        #expect(frames.framesInUse == 2)

        let other = FrameAllocator(memory: memory)
        other.failNth.failOn(2)
        _ = try other.allocate(.size4K)
        #expect(throws: IOMMUError(.outOfMemory, length: 0x1000)) { try other.allocate(.size4K) }
        #expect(other.framesInUse == 1)
        _ = try other.allocate(.size4K)
        #expect(other.framesInUse == 2)
    }

    @Test func smallRegionRunsOut() throws {
        let memory = try PhysicalMemory()
        let region = try #require(PhysRange(start: PhysAddr(0x8000_0000), length: 0x4000))
        let frames = FrameAllocator(memory: memory, region: region)
        for _ in 0..<4 { _ = try frames.allocate(.size4K) }
        #expect(throws: IOMMUError.self) { try frames.allocate(.size4K) }
        #expect(throws: IOMMUError.self) { try FrameAllocator(memory: memory, region: region).allocate(.size64K) }
    }
}
