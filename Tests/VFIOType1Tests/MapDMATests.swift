import IOMMUBase
import IOMMUCore
import IOMMUTestSupport
import PhysicalMemory
import Testing
@testable import VFIOType1

/// §8.4 MAP_DMA validation order and errno, each failure leaving the state unchanged; §8.6
/// pinning and locked-memory accounting.
@Suite("VFIO MAP_DMA")
struct MapDMATests {
    @Test func protFlagsNeitherOrWithVaddrAreEINVAL() throws {
        let h = try VFIOHarness()
        let (c, _) = try h.container()
        let va = try h.buffer(0x2000)
        let before = Snapshot(c, h.host)
        #expect(errno { try c.mapDMA(iova: IOVA(0x10000), vaddr: va, length: 0x1000, read: false, write: false) } == .invalidArgument)
        #expect(errno { try c.mapDMA(iova: IOVA(0x10000), vaddr: va, length: 0x1000, read: true, write: false, updateVaddr: true) } == .invalidArgument)
        #expect(Snapshot(c, h.host) == before)
    }

    @Test func sizeZeroUnalignedAndWrappingAreEINVAL() throws {
        let h = try VFIOHarness()
        let (c, _) = try h.container()
        let va = try h.buffer(0x4000)
        let before = Snapshot(c, h.host)
        #expect(errno { try c.mapDMA(iova: IOVA(0x10000), vaddr: va, length: 0, read: true, write: true) } == .invalidArgument)
        #expect(errno { try c.mapDMA(iova: IOVA(0x10800), vaddr: va, length: 0x1000, read: true, write: true) } == .invalidArgument)
        #expect(errno { try c.mapDMA(iova: IOVA(0x10000), vaddr: VirtAddr(va.rawValue + 8), length: 0x1000, read: true, write: true) } == .invalidArgument)
        #expect(errno { try c.mapDMA(iova: IOVA(0x10000), vaddr: va, length: 0x1800, read: true, write: true) } == .invalidArgument)
        #expect(errno { try c.mapDMA(iova: IOVA(UInt64.max - 0xFFF), vaddr: va, length: 0x2000, read: true, write: true) } == .invalidArgument)
        #expect(errno { try c.mapDMA(iova: IOVA(0x10000), vaddr: VirtAddr(UInt64.max - 0xFFF), length: 0x2000, read: true, write: true) } == .invalidArgument)
        #expect(Snapshot(c, h.host) == before)
    }

    @Test func overlapIsEEXISTBeforeCapacityAndIOVAValidity() throws {
        let h = try VFIOHarness(vfioConfig: { $0.dmaEntryLimit = 1 })
        let (c, _) = try h.container()
        let va = try h.buffer(0x4000)
        try c.mapDMA(iova: IOVA(0x10000), vaddr: va, length: 0x2000, read: true, write: true)
        #expect(try c.info().dmaAvailable == 0)
        let before = Snapshot(c, h.host)
        // Overlaps (end), overlaps (start): EEXIST even though no slot is left.
        #expect(errno { try c.mapDMA(iova: IOVA(0xF000), vaddr: va, length: 0x2000, read: true, write: true) } == .exists)
        #expect(errno { try c.mapDMA(iova: IOVA(0x11000), vaddr: va, length: 0x1000, read: true, write: true) } == .exists)
        // Elsewhere: ENOSPC.
        #expect(errno { try c.mapDMA(iova: IOVA(0x40000), vaddr: va, length: 0x1000, read: true, write: true) } == .noSpace)
        #expect(Snapshot(c, h.host) == before)
        try c.unmapDMA(iova: IOVA(0x10000), length: 0x2000)
        #expect(c.dmaAvailable == 1)
    }

    @Test func defaultEntryLimitIs65535() throws {
        #expect(VFIOType1Configuration().dmaEntryLimit == 65535)
        let h = try VFIOHarness()
        let (c, _) = try h.container()
        #expect(try c.info().dmaAvailable == 65535)
    }

    @Test func outsideTheValidIOVAListIsEINVALAndAnEmulatedOnlyContainerAcceptsAnyIOVA() throws {
        let h = try VFIOHarness()
        let (c, _) = try h.container()
        let va = try h.buffer(0x2000)
        let before = Snapshot(c, h.host)
        // Aperture is [0, 2^48 - 1].
        #expect(errno { try c.mapDMA(iova: IOVA(1 << 48), vaddr: va, length: 0x1000, read: true, write: true) } == .invalidArgument)
        #expect(errno { try c.mapDMA(iova: IOVA((1 << 48) - 0x1000), vaddr: va, length: 0x2000, read: true, write: true) } == .invalidArgument)
        #expect(Snapshot(c, h.host) == before)

        let emulated = h.vfio.openContainer(process: h.host)
        let group = h.vfio.openEmulatedGroup()
        try group.setContainer(emulated)
        try emulated.setIOMMU(.type1v2)
        #expect(emulated.validIOVARanges.isEmpty)
        try emulated.mapDMA(iova: IOVA(1 << 60), vaddr: va, length: 0x1000, read: true, write: true)
        #expect(h.host.lockedPages == 0, "emulated-only: nothing pinned at MAP time")
        #expect(h.host.totalPins == 0)
    }

    @Test func noIOMMUTypeSetIsEINVAL() throws {
        let h = try VFIOHarness()
        let c = h.vfio.openContainer(process: h.host)
        let va = try h.buffer(0x1000)
        #expect(errno { try c.mapDMA(iova: IOVA(0), vaddr: va, length: 0x1000, read: true, write: true) } == .invalidArgument)
    }

    @Test func pinFailureIsEFAULTAndLeavesNothingPinned() throws {
        let h = try VFIOHarness()
        let (c, _) = try h.container()
        let va = try h.buffer(0x2000)
        let before = Snapshot(c, h.host)
        // The second half of the range is not mapped in the process.
        #expect(errno { try c.mapDMA(iova: IOVA(0x10000), vaddr: va, length: 0x4000, read: true, write: true) } == .badAddress)
        #expect(Snapshot(c, h.host) == before)
        #expect(h.host.totalPins == 0)
        #expect(c.domains[0].fake.mappings.isEmpty)
        // Injected pin failure (fail_nth) on the first run.
        h.host.pinFailNth.failOn(1)
        #expect(errno { try c.mapDMA(iova: IOVA(0x10000), vaddr: va, length: 0x2000, read: true, write: true) } == .badAddress)
        #expect(Snapshot(c, h.host) == before)
        // Write mapping of read-only memory.
        let ro = try h.buffer(0x1000, writable: false)
        #expect(errno { try c.mapDMA(iova: IOVA(0x10000), vaddr: ro, length: 0x1000, read: true, write: true) } == .badAddress)
        try c.mapDMA(iova: IOVA(0x10000), vaddr: ro, length: 0x1000, read: true, write: false)
    }

    @Test func domainMapFailureUndoesEverything() throws {
        let h = try VFIOHarness()
        let (c, _) = try h.container(groups: ["a", "b"])
        let va = try h.buffer(0x8000)
        // Two groups share one domain (same driver).
        #expect(c.domains.count == 1)
        let before = Snapshot(c, h.host)
        for n in 1...3 {
            h.driver.failNth.failOn(n)
            #expect(errno { try c.mapDMA(iova: IOVA(0x100000), vaddr: va, length: 0x8000, read: true, write: true) } == .noMemory)
            #expect(Snapshot(c, h.host) == before)
            #expect(c.domains[0].fake.mappings.isEmpty)
        }
        h.driver.failNth.disarm()
        try c.mapDMA(iova: IOVA(0x100000), vaddr: va, length: 0x8000, read: true, write: true)
    }

    @Test func lockedMemoryLimitIsENOMEMWithAWarningAndIPCLockIsExempt() throws {
        let h = try VFIOHarness(lockedLimit: 0x4000)
        let (c, _) = try h.container()
        let va = try h.buffer(0x8000)
        try c.mapDMA(iova: IOVA(0x10000), vaddr: va, length: 0x4000, read: true, write: true)
        #expect(h.host.lockedPages == 4)
        let before = Snapshot(c, h.host)
        #expect(errno { try c.mapDMA(iova: IOVA(0x20000), vaddr: VirtAddr(va.rawValue + 0x4000), length: 0x1000, read: true, write: true) } == .noMemory)
        #expect(Snapshot(c, h.host) == before)
        #expect(h.warnings.warnings.contains(.vfioLockedMemoryLimitExceeded(limitBytes: 0x4000)))
        try c.unmapDMA(iova: IOVA(0x10000), length: 0x4000)
        #expect(h.host.lockedPages == 0)
        #expect(h.host.totalPins == 0)

        let exempt = try VFIOHarness(lockedLimit: 0x1000, ipcLock: true)
        let (c2, _) = try exempt.container()
        let va2 = try exempt.buffer(0x8000)
        try c2.mapDMA(iova: IOVA(0x10000), vaddr: va2, length: 0x8000, read: true, write: true)
        #expect(exempt.host.lockedPages == 8, "CAP_IPC_LOCK: counted, not limited")
        try c2.unmapDMA(iova: IOVA(0x10000), length: 0x8000)
        #expect(exempt.host.lockedPages == 0)
    }

    @Test func pfnmapDeviceMemoryIsMappedButNotPinnedOrAccounted() throws {
        let h = try VFIOHarness()
        let (c, _) = try h.container()
        let mmio = try h.host.map(length: 0x4000, backing: .device(PhysAddr(0x4000_0000)))
        try c.mapDMA(iova: IOVA(0x10000), vaddr: mmio.first, length: 0x4000, read: true, write: true)
        #expect(h.host.lockedPages == 0)
        #expect(h.host.totalPins == 0)
        #expect(c.domains[0].iovaToPhys(IOVA(0x11000)) == PhysAddr(0x4000_1000))
        try c.unmapDMA(iova: IOVA(0x10000), length: 0x4000)
        // Write access to a read-only PFNMAP: EFAULT.
        let ro = try h.host.map(length: 0x1000, backing: .device(PhysAddr(0x5000_0000)), writable: false)
        let before = Snapshot(c, h.host)
        #expect(errno { try c.mapDMA(iova: IOVA(0x10000), vaddr: ro.first, length: 0x1000, read: true, write: true) } == .badAddress)
        #expect(Snapshot(c, h.host) == before)
    }

    @Test func hugePagesBecome2MiBIOMMUBlocks() throws {
        let h = try VFIOHarness()
        let (c, _) = try h.container()
        let va = try h.buffer(4 << 20, backing: .hugePages2M)
        try c.mapDMA(iova: IOVA(0x4000_0000), vaddr: va, length: 4 << 20, read: true, write: true)
        let calls = c.domains[0].fake.mapCalls
        #expect(!calls.isEmpty)
        #expect(calls.allSatisfy { $0.pageSize == 2 << 20 }, "\(calls)")
        #expect(h.host.lockedPages == 1024)
        #expect(c.domains[0].fake.mappings[0x4000_0000]?.prot == [.read, .write, .cache])
        try c.unmapDMA(iova: IOVA(0x4000_0000), length: 4 << 20)
        #expect(h.host.lockedPages == 0)
        #expect(c.domains[0].fake.mappings.isEmpty)
    }

    @Test func iommuPageLargerThanCPUPageWarnsAndAlignsToIt() throws {
        // A 16K-page kernel's IOMMU seen by our 4K-page VFIO (the core's attach check passes).
        let h = try VFIOHarness(cpuPageSize: .size16K) { $0.pageSizes = PageSizeBitmap([.size16K, .size2M]) }
        let (c, _) = try h.container()
        #expect(c.pageSizeBitmap == (1 << 14) | (1 << 21))
        let va = try h.buffer(0x8000)
        #expect(errno { try c.mapDMA(iova: IOVA(0x1000), vaddr: va, length: 0x4000, read: true, write: true) } == .invalidArgument)
        #expect(h.warnings.warnings.contains(.vfioIOMMUPageLargerThanCPUPage(pageSize: 1 << 14)))
        try c.mapDMA(iova: IOVA(0x4000), vaddr: va, length: 0x4000, read: true, write: true)
    }

    @Test func theDefaultLimitOf65535LiveMappingsThenENOSPC() throws {
        // Emulated-only container: nothing is pinned, so 65535 mappings are cheap.
        let h = try VFIOHarness()
        let c = h.vfio.openContainer(process: h.host)
        try h.vfio.openEmulatedGroup().setContainer(c)
        try c.setIOMMU(.type1v2)
        let va = try h.buffer(0x1000)
        for i in 0..<65535 {
            try c.mapDMA(iova: IOVA(UInt64(i) << 12), vaddr: va, length: 0x1000, read: true, write: false)
        }
        #expect(try c.info().dmaAvailable == 0)
        let before = c.mappings.count
        #expect(errno { try c.mapDMA(iova: IOVA(1 << 40), vaddr: va, length: 0x1000, read: true, write: false) } == .noSpace)
        #expect(c.mappings.count == before)
        // Overlap is still EEXIST with no slot left.
        #expect(errno { try c.mapDMA(iova: IOVA(0), vaddr: va, length: 0x1000, read: true, write: false) } == .exists)
    }

    @Test func x86MSIWindowIsOutsideTheValidList() throws {
        let h = try VFIOHarness()
        let msi = ReservedRegion(start: 0xFEE0_0000, length: 0x10_0000, prot: [.write, .mmio], type: .msi)
        let c = h.vfio.openContainer(process: h.host)
        try h.vfio.openGroup(id: h.addGroup("nic", regions: [msi])).setContainer(c)
        try c.setIOMMU(.type1v2)
        let va = try h.buffer(0x1000)
        #expect(errno { try c.mapDMA(iova: IOVA(0xFEE0_0000), vaddr: va, length: 0x1000, read: true, write: true) } == .invalidArgument)
        try c.mapDMA(iova: IOVA(0xFEF0_0000), vaddr: va, length: 0x1000, read: true, write: true)
    }
}
