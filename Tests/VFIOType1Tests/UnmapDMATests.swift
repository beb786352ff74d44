import IOMMUBase
import IOMMUCore
import IOMMUTestSupport
import PhysicalMemory
import Testing
@testable import VFIOType1

/// §8.5 UNMAP_DMA validation order and semantics (v1/v2, no-bisect, ALL, VADDR, dirty bitmap).
@Suite("VFIO UNMAP_DMA")
struct UnmapDMATests {
    /// Two mappings: [0x100000, +0x4000) and [0x200000, +0x2000).
    func setUp(_ type: VFIOIOMMUType = .type1v2) throws -> (VFIOHarness, VFIOContainer, VirtAddr) {
        let h = try VFIOHarness()
        let (c, _) = try h.container(type)
        let va = try h.buffer(0x10000)
        try c.mapDMA(iova: IOVA(0x100000), vaddr: va, length: 0x4000, read: true, write: true)
        try c.mapDMA(iova: IOVA(0x200000), vaddr: VirtAddr(va.rawValue + 0x4000), length: 0x2000, read: true, write: true)
        return (h, c, va)
    }

    @Test func v2BisectAtEitherEndIsEINVALAndNothingIsUnmapped() throws {
        let (h, c, _) = try setUp()
        let before = Snapshot(c, h.host)
        #expect(errno { try c.unmapDMA(iova: IOVA(0x101000), length: 0x3000) } == .invalidArgument)
        #expect(errno { try c.unmapDMA(iova: IOVA(0x100000), length: 0x2000) } == .invalidArgument)
        // Covers the first completely but bisects the second.
        #expect(errno { try c.unmapDMA(iova: IOVA(0x100000), length: 0x101000) } == .invalidArgument)
        #expect(Snapshot(c, h.host) == before)
        #expect(try c.unmapDMA(iova: IOVA(0x0), length: 0x201000 - 0x1000 + 0x2000) == 0x6000)
        #expect(c.mappings.isEmpty)
        #expect(h.host.lockedPages == 0)
        #expect(h.host.totalPins == 0)
    }

    @Test func v1StartInsideUnmapsNothingAndCoveringTheStartRemovesTheWholeMapping() throws {
        let (h, c, _) = try setUp(.type1)
        #expect(try c.unmapDMA(iova: IOVA(0x101000), length: 0x200000) == 0, "starts inside: stop")
        #expect(c.mappings.count == 2)
        #expect(try c.unmapDMA(iova: IOVA(0x100000), length: 0x1000) == 0x4000, "whole mapping")
        #expect(c.mappings.map(\.iova) == [IOVA(0x200000)])
        #expect(h.host.lockedPages == 2)
    }

    @Test func unmapOfAHoleSucceedsWithSizeZero() throws {
        let (h, c, _) = try setUp()
        let before = Snapshot(c, h.host)
        #expect(try c.unmapDMA(iova: IOVA(0x300000), length: 0x1000) == 0)
        #expect(Snapshot(c, h.host) == before)
    }

    @Test func unmapAllRulesAndEmptyContainer() throws {
        let (h, c, _) = try setUp()
        let before = Snapshot(c, h.host)
        #expect(errno { try c.unmapDMA(iova: IOVA(0x1000), length: 0, all: true) } == .invalidArgument)
        #expect(errno { try c.unmapDMA(iova: IOVA(0), length: 0x1000, all: true) } == .invalidArgument)
        #expect(Snapshot(c, h.host) == before)
        #expect(try c.unmapDMA(iova: IOVA(0), length: 0, all: true) == 0x6000)
        #expect(c.mappings.isEmpty)
        #expect(c.dmaAvailable == 65535)
        #expect(h.host.lockedPages == 0)
        #expect(try c.unmapDMA(iova: IOVA(0), length: 0, all: true) == 0)
    }

    @Test func unalignedZeroAndWrappingRequestsAreEINVAL() throws {
        let (h, c, _) = try setUp()
        let before = Snapshot(c, h.host)
        #expect(errno { try c.unmapDMA(iova: IOVA(0x100800), length: 0x1000) } == .invalidArgument)
        #expect(errno { try c.unmapDMA(iova: IOVA(0x100000), length: 0) } == .invalidArgument)
        #expect(errno { try c.unmapDMA(iova: IOVA(0x100000), length: 0x1800) } == .invalidArgument)
        #expect(errno { try c.unmapDMA(iova: IOVA(UInt64.max - 0xFFF), length: 0x2000) } == .invalidArgument)
        #expect(Snapshot(c, h.host) == before)
    }

    @Test func vaddrInvalidateTwiceIsEINVALWithThisCallRolledBack() throws {
        let (h, c, va) = try setUp()
        #expect(try c.unmapDMA(iova: IOVA(0x200000), length: 0x2000, updateVaddr: true) == 0x2000)
        #expect(c.mappings[1].vaddrInvalid)
        let before = Snapshot(c, h.host)
        // Covers both: the first gets invalidated, then the second is already invalid → undo.
        #expect(errno { try c.unmapDMA(iova: IOVA(0x100000), length: 0x102000, updateVaddr: true) } == .invalidArgument)
        #expect(Snapshot(c, h.host) == before)
        #expect(!c.mappings[0].vaddrInvalid)
        // Device DMA keeps working: still mapped in the domain and pinned.
        #expect(c.domains[0].iovaToPhys(IOVA(0x200000)) != nil)
        // MAP+VADDR: unknown iova → ENOENT; not invalid → EINVAL; other size → EINVAL.
        #expect(errno { try c.mapDMA(iova: IOVA(0x300000), vaddr: va, length: 0x1000, read: false, write: false, updateVaddr: true) } == .notFound)
        #expect(errno { try c.mapDMA(iova: IOVA(0x100000), vaddr: va, length: 0x4000, read: false, write: false, updateVaddr: true) } == .invalidArgument)
        #expect(errno { try c.mapDMA(iova: IOVA(0x200000), vaddr: va, length: 0x1000, read: false, write: false, updateVaddr: true) } == .invalidArgument)
        // Attach and pin while invalid → EBUSY.
        let g = try h.vfio.openGroup(id: h.addGroup("late"))
        #expect(errno { try g.setContainer(c) } == .busy)
        #expect(g.container == nil)
        let dev = c.registerEmulatedDevice(name: "mdev") { _, _, _ in }
        #expect(errno { _ = try dev.pinPages(iova: IOVA(0x100000), count: 1, prot: .read) } == .busy)
        #expect(h.warnings.warnings.contains(.vfioPinWhileVaddrInvalid(iova: IOVA(0x100000))))
        // Restore.
        try c.mapDMA(iova: IOVA(0x200000), vaddr: VirtAddr(va.rawValue + 0x4000), length: 0x2000, read: false, write: false, updateVaddr: true)
        #expect(!c.mappings[1].vaddrInvalid)
        try g.setContainer(c)
    }

    @Test func vaddrWithEmulatedGroupsIsEBUSY() throws {
        let (h, c, _) = try setUp()
        let emulated = h.vfio.openEmulatedGroup()
        try emulated.setContainer(c)
        let before = Snapshot(c, h.host)
        #expect(errno { try c.unmapDMA(iova: IOVA(0x100000), length: 0x4000, updateVaddr: true) } == .busy)
        #expect(Snapshot(c, h.host) == before)
        #expect(c.checkExtension(VFIOUAPI.updateVaddr) == 0)
    }

    @Test func vaddrUpdateFromAnotherProcessMovesTheCharge() throws {
        let (h, c, _) = try setUp()
        let other = h.otherProcess(lockedLimit: 0x1000)
        let otherVA = try other.map(length: 0x2000)
        try c.unmapDMA(iova: IOVA(0x200000), length: 0x2000, updateVaddr: true)
        let before = Snapshot(c, h.host)
        // The other process's limit is one page: ENOMEM, nothing moved.
        #expect(errno { try c.mapDMA(iova: IOVA(0x200000), vaddr: otherVA.first, length: 0x2000, read: false, write: false, updateVaddr: true, process: other) } == .noMemory)
        #expect(Snapshot(c, h.host) == before)
        #expect(other.lockedPages == 0)
        let roomy = h.otherProcess()
        let roomyVA = try roomy.map(length: 0x2000)
        try c.mapDMA(iova: IOVA(0x200000), vaddr: roomyVA.first, length: 0x2000, read: false, write: false, updateVaddr: true, process: roomy)
        #expect(roomy.lockedPages == 2)
        #expect(h.host.lockedPages == 4)
        try c.unmapDMA(iova: IOVA(0), length: 0, all: true)
        #expect(roomy.lockedPages == 0)
        #expect(h.host.lockedPages == 0)
        #expect(h.host.totalPins == 0)
    }

    @Test func dirtyBitmapOnUnmapNeedsTrackingAndTheSmallestPageSize() throws {
        let (h, c, _) = try setUp()
        let bitmapVA = try h.buffer(0x1000)
        let bitmap = VFIODirtyBitmap(pageSize: 0x1000, size: 8, data: bitmapVA)
        let before = Snapshot(c, h.host)
        #expect(errno { try c.unmapDMA(iova: IOVA(0x100000), length: 0x4000, dirtyBitmap: bitmap) } == .invalidArgument)
        try c.startDirtyTracking()
        #expect(errno { try c.unmapDMA(iova: IOVA(0x100000), length: 0x4000, dirtyBitmap: VFIODirtyBitmap(pageSize: 0x2000, size: 8, data: bitmapVA)) } == .invalidArgument)
        #expect(Snapshot(c, h.host) == before)
        // An IOMMU-backed group cannot report dirtiness: every page is dirty.
        #expect(try c.unmapDMA(iova: IOVA(0x100000), length: 0x4000, dirtyBitmap: bitmap) == 0x4000)
        #expect(try h.host.read(bitmapVA, count: 1) == [0x0F])
    }

    @Test func dirtyPagesIsEACCESOnV1AndGetBitmapRules() throws {
        let (_, v1, _) = try setUp(.type1)
        #expect(errno { try v1.startDirtyTracking() } == .permissionDenied)
        let (h, c, _) = try setUp()
        let bitmapVA = try h.buffer(0x1000)
        let bitmap = VFIODirtyBitmap(pageSize: 0x1000, size: 8, data: bitmapVA)
        #expect(errno { try c.dirtyBitmap(iova: IOVA(0x100000), length: 0x4000, bitmap: bitmap) } == .invalidArgument, "tracking off")
        try c.startDirtyTracking()
        #expect(errno { try c.dirtyBitmap(iova: IOVA(0x101000), length: 0x3000, bitmap: bitmap) } == .invalidArgument, "bisects")
        #expect(errno { try c.dirtyBitmap(iova: IOVA(0x100000), length: 0x4000, bitmap: VFIODirtyBitmap(pageSize: 0x1000, size: 0, data: bitmapVA)) } == .invalidArgument)
        try c.dirtyBitmap(iova: IOVA(0x100000), length: 0x102000, bitmap: VFIODirtyBitmap(pageSize: 0x1000, size: 0x1000, data: bitmapVA))
        let bytes = try h.host.read(bitmapVA, count: 0x21)
        #expect(bytes[0] == 0x0F)
        #expect(bytes[0x20] == 0x03, "the second mapping starts 0x100 pages later")
        try c.stopDirtyTracking()
        #expect(!c.dirtyTrackingEnabled)
    }
}
