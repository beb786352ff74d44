import IOMMUBase
import IOMMUCore
import IOMMUTestSupport
import PhysicalMemory
import Testing
@testable import VFIOType1

/// §9: ioctl numbers, struct layouts, argsz handling, capability chains, byte for byte.
@Suite("VFIO uAPI bytes")
struct UAPITests {
    // _IO(';', 100 + n) with the generic encoding: (0x3B << 8) | (100 + n), computed by hand.
    static let getAPIVersion: UInt32 = 0x3B64
    static let checkExtension: UInt32 = 0x3B65
    static let setIOMMU: UInt32 = 0x3B66
    static let groupGetStatus: UInt32 = 0x3B67
    static let groupSetContainer: UInt32 = 0x3B68
    static let groupUnsetContainer: UInt32 = 0x3B69
    static let getInfo: UInt32 = 0x3B70
    static let mapDMA: UInt32 = 0x3B71
    static let unmapDMA: UInt32 = 0x3B72
    static let dirtyPages: UInt32 = 0x3B75

    static func u32(_ b: [UInt8], _ o: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(b[o + $1]) << (8 * UInt32($1)) } }
    static func u64(_ b: [UInt8], _ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(b[o + $1]) << (8 * UInt64($1)) } }
    static func u16(_ b: [UInt8], _ o: Int) -> UInt16 { UInt16(b[o]) | UInt16(b[o + 1]) << 8 }
    static func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }
    static func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }

    /// vfio_iommu_type1_dma_map: argsz@0 flags@4 vaddr@8 iova@16 size@24 (32 bytes).
    static func dmaMap(flags: UInt32, vaddr: UInt64, iova: UInt64, size: UInt64, argsz: UInt32 = 32) -> [UInt8] {
        le32(argsz) + le32(flags) + le64(vaddr) + le64(iova) + le64(size)
    }

    /// vfio_iommu_type1_dma_unmap: argsz@0 flags@4 iova@8 size@16 (24 bytes).
    static func dmaUnmap(flags: UInt32, iova: UInt64, size: UInt64, argsz: UInt32 = 24) -> [UInt8] {
        le32(argsz) + le32(flags) + le64(iova) + le64(size)
    }

    @Test func ioctlNumbersFollowTheIORule() {
        #expect(VFIOUAPI.getAPIVersion == Self.getAPIVersion)
        #expect(VFIOUAPI.checkExtension == Self.checkExtension)
        #expect(VFIOUAPI.setIOMMU == Self.setIOMMU)
        #expect(VFIOUAPI.groupGetStatus == Self.groupGetStatus)
        #expect(VFIOUAPI.groupSetContainer == Self.groupSetContainer)
        #expect(VFIOUAPI.groupUnsetContainer == Self.groupUnsetContainer)
        #expect(VFIOUAPI.groupGetDeviceFD == 0x3B6A)
        #expect(VFIOUAPI.iommuGetInfo == Self.getInfo)
        #expect(VFIOUAPI.iommuMapDMA == Self.mapDMA)
        #expect(VFIOUAPI.iommuUnmapDMA == Self.unmapDMA)
        #expect(VFIOUAPI.iommuEnable == 0x3B73)
        #expect(VFIOUAPI.iommuDisable == 0x3B74)
        #expect(VFIOUAPI.iommuDirtyPages == Self.dirtyPages)
        #expect(VFIOUAPI.infoSize == 24 && VFIOUAPI.dmaMapSize == 32 && VFIOUAPI.dmaUnmapSize == 24)
        #expect(VFIOUAPI.capMigrationSize == 32 && VFIOUAPI.capDMAAvailSize == 12 && VFIOUAPI.bitmapSize == 24)
        #expect(VFIOUAPI.dirtyBitmapGetSize == 40 && VFIOUAPI.groupStatusSize == 8 && VFIOUAPI.capHeaderSize == 8)
    }

    /// A kernel-ABI session: group status, set container, extensions, set IOMMU.
    func session(regions: [ReservedRegion] = [.armSMMUSoftwareMSI]) throws -> (VFIOHarness, VFIOContainer) {
        let h = try VFIOHarness()
        let c = h.vfio.openContainer(process: h.host)
        #expect(c.ioctl(request: Self.getAPIVersion, argument: 0) == 0)
        #expect(c.ioctl(request: Self.checkExtension, argument: 1) == 1)
        #expect(c.ioctl(request: Self.checkExtension, argument: 3) == 1)
        #expect(c.ioctl(request: Self.checkExtension, argument: 9) == 1)
        #expect(c.ioctl(request: Self.checkExtension, argument: 10) == 0, "UPDATE_VADDR needs a backend")
        #expect(c.ioctl(request: Self.checkExtension, argument: 2) == 0)
        #expect(c.ioctl(request: Self.setIOMMU, argument: 3) == -22, "no group yet")
        let g = try h.vfio.openGroup(id: h.addGroup("dev0", regions: regions))
        var status = Self.le32(8) + Self.le32(0)
        #expect(g.ioctl(request: Self.groupGetStatus, buffer: &status) == 0)
        #expect(Self.u32(status, 4) == 1, "VIABLE")
        var fd = Self.le32(UInt32(bitPattern: c.fd))
        #expect(g.ioctl(request: Self.groupSetContainer, buffer: &fd) == 0)
        #expect(g.ioctl(request: Self.groupSetContainer, buffer: &fd) == -22)
        var bad = Self.le32(999)
        #expect(g.ioctl(request: Self.groupSetContainer, buffer: &bad) == -9)
        #expect(g.ioctl(request: Self.groupGetStatus, buffer: &status) == 0)
        #expect(Self.u32(status, 4) == 3, "VIABLE | CONTAINER_SET")
        var short = [UInt8](repeating: 0, count: 4)
        #expect(g.ioctl(request: Self.groupGetStatus, buffer: &short) == -14)
        var small = Self.le32(4) + Self.le32(0)
        #expect(g.ioctl(request: Self.groupGetStatus, buffer: &small) == -22)
        var none: [UInt8] = []
        #expect(g.ioctl(request: 0x3B00, buffer: &none) == -25)
        #expect(c.ioctl(request: Self.setIOMMU, argument: 99) == -19)
        #expect(c.ioctl(request: Self.setIOMMU, argument: 3) == 0)
        #expect(c.ioctl(request: Self.setIOMMU, argument: 3) == -22, "already set")
        #expect(c.ioctl(request: Self.checkExtension, argument: 10) == 1)
        return (h, c)
    }

    @Test func getInfoBufferIsLaidOutAsTheReferenceSays() throws {
        let (_, c) = try session()
        // First call: room for the struct only → CAPS, argsz raised, cap_offset 0, no error.
        var info = Self.le32(24) + [UInt8](repeating: 0xEE, count: 20)
        #expect(c.ioctl(request: Self.getInfo, buffer: &info) == 0)
        let needed = 24 + 32 + 16 + (16 + 2 * 16)
        #expect(Self.u32(info, 0) == UInt32(needed))
        #expect(Self.u32(info, 4) == 3, "PGSIZES | CAPS")
        #expect(Self.u64(info, 8) == (1 << 12) | (1 << 21) | (1 << 30))
        #expect(Self.u32(info, 16) == 0, "cap_offset")
        #expect(Self.u32(info, 20) == 0, "pad zeroed")
        // Second call with the needed size.
        var full = Self.le32(UInt32(needed)) + [UInt8](repeating: 0xEE, count: needed - 4)
        #expect(c.ioctl(request: Self.getInfo, buffer: &full) == 0)
        #expect(Self.u32(full, 0) == UInt32(needed))
        #expect(Self.u32(full, 16) == 24)
        // MIGRATION at 24: id 2, version 1, next 56; flags 0; pgsize 4K; max bitmap 256 MiB.
        #expect(Self.u16(full, 24) == 2 && Self.u16(full, 26) == 1 && Self.u32(full, 28) == 56)
        #expect(Self.u32(full, 32) == 0 && Self.u32(full, 36) == 0)
        #expect(Self.u64(full, 40) == 0x1000)
        #expect(Self.u64(full, 48) == 256 << 20)
        // DMA_AVAIL at 56: id 3, next 72, avail 65535, 4 bytes padding.
        #expect(Self.u16(full, 56) == 3 && Self.u16(full, 58) == 1 && Self.u32(full, 60) == 72)
        #expect(Self.u32(full, 64) == 65535)
        #expect(Self.u32(full, 68) == 0)
        // IOVA_RANGE at 72: id 1, last (next 0), nr_iovas 2, reserved 0, ranges at 88.
        #expect(Self.u16(full, 72) == 1 && Self.u16(full, 74) == 1 && Self.u32(full, 76) == 0)
        #expect(Self.u32(full, 80) == 2 && Self.u32(full, 84) == 0)
        #expect(Self.u64(full, 88) == 0 && Self.u64(full, 96) == 0x7FF_FFFF)
        #expect(Self.u64(full, 104) == 0x810_0000 && Self.u64(full, 112) == (1 << 48) - 1)
    }

    @Test func getInfoArgszRules() throws {
        let (_, c) = try session()
        var tooSmall = Self.le32(15) + [UInt8](repeating: 0, count: 20)
        #expect(c.ioctl(request: Self.getInfo, buffer: &tooSmall) == -22)
        var short = Self.le32(16) + [UInt8](repeating: 0, count: 8)
        #expect(c.ioctl(request: Self.getInfo, buffer: &short) == -14, "cannot copy 16 bytes")
        // argsz 16: only 16 bytes are written back.
        var sixteen = Self.le32(16) + [UInt8](repeating: 0xEE, count: 20)
        #expect(c.ioctl(request: Self.getInfo, buffer: &sixteen) == 0)
        #expect(Self.u32(sixteen, 0) == 24 + 32 + 16 + 48)
        #expect(Array(sixteen[16..<24]) == [UInt8](repeating: 0xEE, count: 8))
        // argsz claims more than the caller's memory holds: EFAULT when copying the caps.
        var lying = Self.le32(4096) + [UInt8](repeating: 0, count: 28)
        #expect(c.ioctl(request: Self.getInfo, buffer: &lying) == -14)
    }

    @Test func mapAndUnmapThroughBytes() throws {
        let (h, c) = try session()
        let va = try h.buffer(0x4000)
        var map = Self.dmaMap(flags: 3, vaddr: va.rawValue, iova: 0x100000, size: 0x4000)
        #expect(c.ioctl(request: Self.mapDMA, buffer: &map) == 0)
        var again = map
        #expect(c.ioctl(request: Self.mapDMA, buffer: &again) == -17)
        var badFlag = Self.dmaMap(flags: 1 << 3 | 1, vaddr: va.rawValue, iova: 0x200000, size: 0x1000)
        #expect(c.ioctl(request: Self.mapDMA, buffer: &badFlag) == -22)
        var smallArgsz = Self.dmaMap(flags: 3, vaddr: va.rawValue, iova: 0x200000, size: 0x1000, argsz: 31)
        #expect(c.ioctl(request: Self.mapDMA, buffer: &smallArgsz) == -22)
        var truncated = Array(Self.dmaMap(flags: 3, vaddr: va.rawValue, iova: 0x200000, size: 0x1000)[0..<31])
        #expect(c.ioctl(request: Self.mapDMA, buffer: &truncated) == -14)
        var bigArgsz = Self.dmaMap(flags: 1, vaddr: va.rawValue, iova: 0x200000, size: 0x1000, argsz: 64)
        #expect(c.ioctl(request: Self.mapDMA, buffer: &bigArgsz) == 0, "argsz above the struct is fine")
        var msi = Self.dmaMap(flags: 3, vaddr: va.rawValue, iova: 0x800_0000, size: 0x1000)
        #expect(c.ioctl(request: Self.mapDMA, buffer: &msi) == -22)

        var bisect = Self.dmaUnmap(flags: 0, iova: 0x101000, size: 0x1000)
        #expect(c.ioctl(request: Self.unmapDMA, buffer: &bisect) == -22)
        #expect(Self.u64(bisect, 16) == 0x1000, "not written back on error")
        var unmap = Self.dmaUnmap(flags: 0, iova: 0x100000, size: 0x4000)
        #expect(c.ioctl(request: Self.unmapDMA, buffer: &unmap) == 0)
        #expect(Self.u64(unmap, 16) == 0x4000)
        var hole = Self.dmaUnmap(flags: 0, iova: 0x100000, size: 0x4000)
        #expect(c.ioctl(request: Self.unmapDMA, buffer: &hole) == 0)
        #expect(Self.u64(hole, 16) == 0)
        var argsz23 = Self.dmaUnmap(flags: 0, iova: 0x200000, size: 0x1000, argsz: 23)
        #expect(c.ioctl(request: Self.unmapDMA, buffer: &argsz23) == -22)
        var short23 = Array(Self.dmaUnmap(flags: 0, iova: 0x200000, size: 0x1000)[0..<23])
        #expect(c.ioctl(request: Self.unmapDMA, buffer: &short23) == -14)
        var undefined = Self.dmaUnmap(flags: 1 << 3, iova: 0, size: 0x1000)
        #expect(c.ioctl(request: Self.unmapDMA, buffer: &undefined) == -22)
        var dirtyAll = Self.dmaUnmap(flags: 3, iova: 0, size: 0)
        #expect(c.ioctl(request: Self.unmapDMA, buffer: &dirtyAll) == -22)
        var dirtyNoBitmap = Self.dmaUnmap(flags: 1, iova: 0x200000, size: 0x1000)
        #expect(c.ioctl(request: Self.unmapDMA, buffer: &dirtyNoBitmap) == -22, "argsz < 48")
        var dirtyShort = Self.dmaUnmap(flags: 1, iova: 0x200000, size: 0x1000, argsz: 48)
        #expect(c.ioctl(request: Self.unmapDMA, buffer: &dirtyShort) == -14)
        var all = Self.dmaUnmap(flags: 2, iova: 0, size: 0)
        #expect(c.ioctl(request: Self.unmapDMA, buffer: &all) == 0)
        #expect(Self.u64(all, 16) == 0x1000)
    }

    @Test func dirtyPagesThroughBytes() throws {
        let (h, c) = try session()
        let va = try h.buffer(0x4000)
        var map = Self.dmaMap(flags: 3, vaddr: va.rawValue, iova: 0x100000, size: 0x4000)
        #expect(c.ioctl(request: Self.mapDMA, buffer: &map) == 0)
        var two = Self.le32(8) + Self.le32(3)
        #expect(c.ioctl(request: Self.dirtyPages, buffer: &two) == -22)
        var argsz7 = Self.le32(7) + Self.le32(1)
        #expect(c.ioctl(request: Self.dirtyPages, buffer: &argsz7) == -22)
        var shortDirty = Self.le32(8) + [0, 0, 0]
        #expect(c.ioctl(request: Self.dirtyPages, buffer: &shortDirty) == -14)
        var highBit = Self.le32(8) + Self.le32(1 << 3)
        #expect(c.ioctl(request: Self.dirtyPages, buffer: &highBit) == -22)
        var none = Self.le32(8) + Self.le32(0)
        #expect(c.ioctl(request: Self.dirtyPages, buffer: &none) == -22)
        var start = Self.le32(8) + Self.le32(1)
        #expect(c.ioctl(request: Self.dirtyPages, buffer: &start) == 0)
        #expect(c.dirtyTrackingEnabled)
        let bitmap = try h.buffer(0x1000)
        var get = Self.le32(48) + Self.le32(4) + Self.le64(0x100000) + Self.le64(0x4000)
            + Self.le64(0x1000) + Self.le64(8) + Self.le64(bitmap.rawValue)
        #expect(c.ioctl(request: Self.dirtyPages, buffer: &get) == 0)
        #expect(try h.host.read(bitmap, count: 1) == [0x0F])
        var getShort = Self.le32(40) + Self.le32(4) + [UInt8](repeating: 0, count: 40)
        #expect(c.ioctl(request: Self.dirtyPages, buffer: &getShort) == -22)
        // Unmap with the dirty bitmap: argsz 48, vfio_bitmap at 24.
        try h.host.write(bitmap, [0])
        var unmap = Self.dmaUnmap(flags: 1, iova: 0x100000, size: 0x4000, argsz: 48)
            + Self.le64(0x1000) + Self.le64(8) + Self.le64(bitmap.rawValue)
        #expect(c.ioctl(request: Self.unmapDMA, buffer: &unmap) == 0)
        #expect(Self.u64(unmap, 16) == 0x4000)
        #expect(try h.host.read(bitmap, count: 1) == [0x0F])
        var stop = Self.le32(8) + Self.le32(2)
        #expect(c.ioctl(request: Self.dirtyPages, buffer: &stop) == 0)
    }

    @Test func v1DirtyPagesIsEACCESAndUnknownIoctlsAreENOTTY() throws {
        let h = try VFIOHarness()
        let (c, _) = try h.container(.type1)
        var start = Self.le32(8) + Self.le32(1)
        #expect(c.ioctl(request: Self.dirtyPages, buffer: &start) == -13)
        var empty: [UInt8] = []
        #expect(c.ioctl(request: 0x3B73, buffer: &empty) == -25)
        #expect(c.ioctl(request: 0xDEAD_BEEF, buffer: &empty) == -25)
        let fresh = h.vfio.openContainer(process: h.host)
        #expect(fresh.ioctl(request: Self.getInfo, buffer: &empty) == -22, "no backend")
    }

    @Test func anyRequestAndAnyBytesNeverCrash() throws {
        let (h, c) = try session()
        _ = try h.buffer(0x10000)
        var rng = SplitMix64(seed: 0xF00D)
        let requests: [UInt32] = [0x3B64, 0x3B65, 0x3B66, 0x3B70, 0x3B71, 0x3B72, 0x3B73, 0x3B75, 0x3B7F, 0, .max]
        for _ in 0..<3000 {
            let request = requests[Int(rng.next() % UInt64(requests.count))]
            let count = Int(rng.next() % 80)
            var bytes = (0..<count).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            if count >= 8, rng.next() % 2 == 0 { bytes.replaceSubrange(0..<4, with: Self.le32(UInt32(rng.next() % 96))) }
            if count >= 8, rng.next() % 3 == 0 { bytes.replaceSubrange(4..<8, with: Self.le32(UInt32(rng.next() % 8))) }
            let result = c.ioctl(request: request, buffer: &bytes)
            #expect(result <= 1)
            _ = c.ioctl(request: request, argument: rng.next())
        }
        _ = try c.unmapDMA(iova: IOVA(0), length: 0, all: true)
        #expect(h.host.totalPins == 0)
        #expect(h.host.lockedPages == 0)
    }
}
