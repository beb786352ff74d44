import IOMMUBase
import IOMMUCore
import IOMMUTestSupport
import Testing

/// One probed PCI device and an unmanaged domain to map into.
struct MapFixture {
    let h = Harness()
    let driver: FakeIOMMUDriver
    let device: DeviceID
    let domain: IOMMUDomain

    init(_ configure: (inout FakeIOMMUDriver.Config) -> Void = { _ in }) throws {
        driver = FakeIOMMUDriver(configure)
        try h.core.registerIOMMU(name: "smmu0", driver: driver)
        device = try h.core.addDevice(.pci(pciAddress(0, 3), iommu: spec("smmu0", 0x10)))
        domain = try h.core.allocateDomain(type: .unmanaged, for: device)
        try h.core.attachDevice(domain, to: device)
        _ = h.trace.drain()
    }
}

@Suite("iommu_map / iommu_unmap")
struct MapUnmapTests {
    @Test func mapSplitsTheWorkedExampleAndTracesOnce() throws {
        let f = try MapFixture()
        try f.domain.map(iova: IOVA(0x1F_F000), paddr: PhysAddr(0x1F_F000), length: 0x40_1000, prot: [.read, .write])
        #expect(f.domain.fake.mapCalls == [
            .init(iova: 0x1F_F000, pageSize: 0x1000, count: 1),
            .init(iova: 0x20_0000, pageSize: 0x20_0000, count: 2),
        ])
        #expect(f.h.traceLines == [
            "map: IOMMU: iova=0x00000000001ff000 - 0x0000000000600000 paddr=0x00000000001ff000 size=4198400"
        ])
        #expect(f.domain.iovaToPhys(IOVA(0x30_0123)) == PhysAddr(0x30_0123))
        #expect(f.h.warnings.warnings.isEmpty)
    }

    @Test func unmapSplitsTheSameWayAndTraces() throws {
        let f = try MapFixture()
        try f.domain.map(iova: IOVA(0x1F_F000), paddr: PhysAddr(0x1F_F000), length: 0x40_1000, prot: .read)
        _ = f.h.trace.drain()
        #expect(f.domain.unmap(iova: IOVA(0x1F_F000), length: 0x40_1000) == 0x40_1000)
        #expect(f.domain.fake.unmapCalls == [
            .init(iova: 0x1F_F000, pageSize: 0x1000, count: 1),
            .init(iova: 0x20_0000, pageSize: 0x20_0000, count: 2),
        ])
        #expect(f.h.traceLines == [
            "unmap: IOMMU: iova=0x00000000001ff000 - 0x0000000000600000 size=4198400 unmapped_size=4198400"
        ])
        #expect(f.domain.fake.mappings.isEmpty)
        #expect(f.domain.fake.state.withLock { $0.syncs } == 1)
    }

    @Test(arguments: 1...3)
    func mapFailingHalfWayUnmapsWhatItMappedAndEmitsNoMapEvent(failingPage: Int) throws {
        let f = try MapFixture()
        try f.domain.map(iova: IOVA(0x4000_0000), paddr: PhysAddr(0x4000_0000), length: 0x1000, prot: .read)
        _ = f.h.trace.drain()
        f.driver.failNth.failOn(failingPage)
        #expect(throws: IOMMUError(.outOfMemory, address: [0x1F_F000, 0x20_0000, 0x40_0000][failingPage - 1])) {
            try f.domain.map(iova: IOVA(0x1F_F000), paddr: PhysAddr(0x1F_F000), length: 0x40_1000, prot: .read)
        }
        // Only the earlier mapping is left.
        #expect(f.domain.fake.mappings.keys.sorted() == [0x4000_0000])
        let mappedBefore: UInt64 = [0, 0x1000, 0x20_1000][failingPage - 1]
        if mappedBefore == 0 {
            #expect(f.h.traceLines == [
                "unmap: IOMMU: iova=0x00000000001ff000 - 0x00000000001ff000 size=0 unmapped_size=0"
            ])
        } else {
            let end = "0x" + String(repeating: "0", count: 16 - String(0x1F_F000 + mappedBefore, radix: 16).count)
                + String(0x1F_F000 + mappedBefore, radix: 16)
            #expect(f.h.traceLines == [
                "unmap: IOMMU: iova=0x00000000001ff000 - \(end) size=\(mappedBefore) unmapped_size=\(mappedBefore)"
            ])
        }
    }

    @Test func unalignedMapIsEINVALWithTheMessageFacts() throws {
        let f = try MapFixture()
        #expect(throws: IOMMUError(.unaligned, address: 0x1000, length: 0x800)) {
            try f.domain.map(iova: IOVA(0x1000), paddr: PhysAddr(0x2000), length: 0x800, prot: .read)
        }
        #expect(f.h.warnings.warnings == [
            .unalignedMap(iova: IOVA(0x1000), paddr: PhysAddr(0x2000), size: 0x800, minPageSize: 0x1000)
        ])
        #expect(IOMMUWarning.unalignedMap(iova: IOVA(0x1000), paddr: PhysAddr(0x2000), size: 0x800, minPageSize: 0x1000)
            .description == "unaligned: iova 0x1000 pa 0x2000 size 0x800 min_pagesz 0x1000")
        #expect(f.domain.fake.mapCalls.isEmpty)
        #expect(f.h.traceLines.isEmpty)
        #expect(throws: IOMMUError(.unaligned, address: 0x1000, length: 0x1000)) {
            try f.domain.map(iova: IOVA(0x1000), paddr: PhysAddr(0x2100), length: 0x1000, prot: .read)
        }
    }

    @Test func mapOfSizeZeroIsANoOpThatStillTraces() throws {
        let f = try MapFixture()
        try f.domain.map(iova: IOVA(0x5000), paddr: PhysAddr(0x9000), length: 0, prot: .read)
        #expect(f.domain.fake.mapCalls.isEmpty)
        #expect(f.h.traceLines == [
            "map: IOMMU: iova=0x0000000000005000 - 0x0000000000005000 paddr=0x0000000000009000 size=0"
        ])
    }

    @Test func unalignedUnmapReturnsZeroWithoutAnEvent() throws {
        let f = try MapFixture()
        try f.domain.map(iova: IOVA(0x1000), paddr: PhysAddr(0x1000), length: 0x2000, prot: .read)
        _ = f.h.trace.drain()
        #expect(f.domain.unmap(iova: IOVA(0x1800), length: 0x1000) == 0)
        #expect(f.h.traceLines.isEmpty)
        #expect(f.h.warnings.warnings == [.unalignedUnmap(iova: IOVA(0x1800), size: 0x1000, minPageSize: 0x1000)])
        #expect(f.domain.fake.mappings.count == 2)
    }

    @Test func unmapStopsAtTheFirstHole() throws {
        let f = try MapFixture()
        try f.domain.map(iova: IOVA(0x0), paddr: PhysAddr(0x10_0000), length: 0x1000, prot: .read)
        try f.domain.map(iova: IOVA(0x2000), paddr: PhysAddr(0x20_0000), length: 0x1000, prot: .read)
        _ = f.h.trace.drain()
        #expect(f.domain.unmap(iova: IOVA(0), length: 0x3000) == 0x1000)
        #expect(f.domain.fake.mappings.keys.sorted() == [0x2000])
        #expect(f.h.traceLines == [
            "unmap: IOMMU: iova=0x0000000000000000 - 0x0000000000003000 size=12288 unmapped_size=4096"
        ])
    }

    @Test func unmapOverAHoleTracesZeroBytes() throws {
        let f = try MapFixture()
        #expect(f.domain.unmap(iova: IOVA(0x8000), length: 0x1000) == 0)
        #expect(f.h.traceLines == [
            "unmap: IOMMU: iova=0x0000000000008000 - 0x0000000000009000 size=4096 unmapped_size=0"
        ])
    }

    @Test func unmapMayReturnMoreThanAskedWhenALargerPageGoes() throws {
        let f = try MapFixture()
        try f.domain.map(iova: IOVA(0x20_0000), paddr: PhysAddr(0x20_0000), length: 0x20_0000, prot: .read)
        #expect(f.domain.unmap(iova: IOVA(0x20_0000), length: 0x1000) == 0x20_0000)
    }

    @Test(arguments: [IOMMUDomainType.identity, .blocked])
    func mapOnANonPagingDomainIsEINVALAndUnmapIsZero(type: IOMMUDomainType) throws {
        let f = try MapFixture()
        let domain = try f.h.core.allocateDomain(type: type, for: f.device)
        #expect(throws: IOMMUError(.invalidArgument, address: 0x1000, length: 0x1000)) {
            try domain.map(iova: IOVA(0x1000), paddr: PhysAddr(0x1000), length: 0x1000, prot: .read)
        }
        #expect(domain.unmap(iova: IOVA(0x1000), length: 0x1000) == 0)
        #expect(f.h.traceLines.isEmpty)
        #expect(domain.iovaToPhys(IOVA(0x1234)) == (type == .identity ? PhysAddr(0x1234) : nil))
    }

    @Test func mapWithNoPageSizesIsENODEV() throws {
        let f = try MapFixture { $0.finalPageSizes = PageSizeBitmap(rawValue: 0) }
        #expect(throws: IOMMUError(.noSuchDevice, address: 0x1000, length: 0x1000)) {
            try f.domain.map(iova: IOVA(0x1000), paddr: PhysAddr(0x1000), length: 0x1000, prot: .read)
        }
        #expect(f.domain.unmap(iova: IOVA(0x1000), length: 0x1000) == 0)
    }

    @Test func mapPastTheEndOfTheAddressSpaceIsEOVERFLOW() throws {
        let f = try MapFixture()
        #expect(throws: IOMMUError(.lengthOverflow, address: UInt64.max - 0xFFF, length: 0x2000)) {
            try f.domain.map(iova: IOVA(UInt64.max - 0xFFF), paddr: PhysAddr(0), length: 0x2000, prot: .read)
        }
    }

    @Test func aFailingSyncMapUndoesTheMapping() throws {
        let f = try MapFixture { $0.failSyncMap = true }
        #expect(throws: IOMMUError(.ioErrorForTests, address: 0x1000)) {
            try f.domain.map(iova: IOVA(0x1000), paddr: PhysAddr(0x1000), length: 0x2000, prot: .read)
        }
        #expect(f.domain.fake.mappings.isEmpty)
        #expect(f.h.traceLines == [
            "map: IOMMU: iova=0x0000000000001000 - 0x0000000000003000 paddr=0x0000000000001000 size=8192",
            "unmap: IOMMU: iova=0x0000000000001000 - 0x0000000000003000 size=8192 unmapped_size=8192",
        ])
    }

    @Test func mapSGCoalescesContiguousElementsAndSkipsBusAddresses() throws {
        let f = try MapFixture()
        let entries = [
            ScatterEntry(paddr: PhysAddr(0x10_0000), length: 0x1000),
            ScatterEntry(paddr: PhysAddr(0x10_1000), length: 0x1000),
            ScatterEntry(paddr: PhysAddr(0x30_0000), length: 0x2000),
            ScatterEntry(paddr: PhysAddr(0x9000_0000), length: 0x1000, isBusAddress: true),
            ScatterEntry(paddr: PhysAddr(0x50_0000), length: 0x1000),
        ]
        let mapped = try f.domain.mapSG(iova: IOVA(0x100_0000), entries: entries, prot: .read)
        #expect(mapped == 0x5000)
        #expect(f.h.trace.events == [
            .map(iova: 0x100_0000, paddr: 0x10_0000, size: 0x2000),
            .map(iova: 0x100_2000, paddr: 0x30_0000, size: 0x2000),
            .map(iova: 0x100_4000, paddr: 0x50_0000, size: 0x1000),
        ])
        #expect(f.domain.iovaToPhys(IOVA(0x100_4010)) == PhysAddr(0x50_0010))
    }

    @Test func mapSGFailureUnmapsEverythingItMapped() throws {
        let f = try MapFixture()
        f.driver.failNth.failOn(3)
        let entries = [
            ScatterEntry(paddr: PhysAddr(0x10_0000), length: 0x2000),
            ScatterEntry(paddr: PhysAddr(0x30_0000), length: 0x1000),
        ]
        #expect(throws: IOMMUError(.outOfMemory, address: 0x100_2000)) {
            try f.domain.mapSG(iova: IOVA(0x100_0000), entries: entries, prot: .read)
        }
        #expect(f.domain.fake.mappings.isEmpty)
    }

    @Test func concurrentMapsAndUnmapsOfDisjointRanges() async throws {
        let f = try MapFixture()
        let domain = f.domain
        await withTaskGroup(of: Void.self) { group in
            for worker in 0..<8 {
                group.addTask {
                    for index in 0..<100 {
                        let iova = UInt64(worker) << 32 | UInt64(index) << 12
                        try? domain.map(iova: IOVA(iova), paddr: PhysAddr(iova), length: 0x1000, prot: .read)
                        if index % 2 == 0 { _ = domain.unmap(iova: IOVA(iova), length: 0x1000) }
                    }
                }
            }
        }
        #expect(domain.fake.mappings.count == 8 * 50)
        #expect(f.h.trace.events.count == 8 * 150)
    }
}
