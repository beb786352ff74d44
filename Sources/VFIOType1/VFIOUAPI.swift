import IOMMUBase

/// Numbers and layouts of `include/uapi/linux/vfio.h`, as user space sees them.
///
/// Ioctls are `_IO(';', 100 + n)`: with the generic Linux encoding (x86, arm64, riscv) that is
/// `0x3B00 + 100 + n`, with no size or direction bits — the `argsz` field carries the size.
public enum VFIOUAPI {
    /// Linux: `VFIO_TYPE` (`';'`).
    public static let ioctlType: UInt32 = 0x3B
    /// Linux: `VFIO_BASE`.
    public static let ioctlBase: UInt32 = 100
    /// `_IO(VFIO_TYPE, VFIO_BASE + n)` with the generic encoding.
    @inlinable public static func io(_ n: UInt32) -> UInt32 { ioctlType << 8 | (ioctlBase + n) }

    /// Linux: `VFIO_API_VERSION`.
    public static let apiVersion: Int32 = 0

    // MARK: Ioctl numbers

    public static let getAPIVersion = io(0)
    public static let checkExtension = io(1)
    public static let setIOMMU = io(2)
    public static let groupGetStatus = io(3)
    public static let groupSetContainer = io(4)
    public static let groupUnsetContainer = io(5)
    public static let groupGetDeviceFD = io(6)
    public static let iommuGetInfo = io(12)
    public static let iommuMapDMA = io(13)
    public static let iommuUnmapDMA = io(14)
    public static let iommuEnable = io(15)
    public static let iommuDisable = io(16)
    public static let iommuDirtyPages = io(17)

    // MARK: Extensions (CHECK_EXTENSION / SET_IOMMU arguments)

    public static let type1IOMMU: UInt64 = 1
    public static let spaprTCEIOMMU: UInt64 = 2
    public static let type1v2IOMMU: UInt64 = 3
    public static let dmaCCIOMMU: UInt64 = 4
    public static let eeh: UInt64 = 5
    public static let type1NestingIOMMU: UInt64 = 6
    public static let spaprTCEv2IOMMU: UInt64 = 7
    public static let noIOMMU: UInt64 = 8
    public static let unmapAll: UInt64 = 9
    public static let updateVaddr: UInt64 = 10

    // MARK: Flags

    /// `vfio_group_status.flags`.
    public static let groupFlagsViable: UInt32 = 1 << 0
    public static let groupFlagsContainerSet: UInt32 = 1 << 1
    /// `vfio_iommu_type1_info.flags`.
    public static let infoPageSizes: UInt32 = 1 << 0
    public static let infoCaps: UInt32 = 1 << 1
    /// `vfio_iommu_type1_dma_map.flags`.
    public static let dmaMapFlagRead: UInt32 = 1 << 0
    public static let dmaMapFlagWrite: UInt32 = 1 << 1
    public static let dmaMapFlagVaddr: UInt32 = 1 << 2
    /// `vfio_iommu_type1_dma_unmap.flags`.
    public static let dmaUnmapFlagGetDirtyBitmap: UInt32 = 1 << 0
    public static let dmaUnmapFlagAll: UInt32 = 1 << 1
    public static let dmaUnmapFlagVaddr: UInt32 = 1 << 2
    /// `vfio_iommu_type1_dirty_bitmap.flags`.
    public static let dirtyPagesFlagStart: UInt32 = 1 << 0
    public static let dirtyPagesFlagStop: UInt32 = 1 << 1
    public static let dirtyPagesFlagGetBitmap: UInt32 = 1 << 2

    // MARK: Capability IDs (all version 1)

    public static let capIOVARange: UInt16 = 1
    public static let capMigration: UInt16 = 2
    public static let capDMAAvail: UInt16 = 3

    // MARK: Struct sizes

    public static let capHeaderSize = 8
    public static let groupStatusSize = 8
    public static let infoSize = 24
    /// `offsetofend(struct vfio_iommu_type1_info, iova_pgsizes)`.
    public static let infoMinimumSize = 16
    public static let iovaRangeSize = 16
    public static let capIOVARangeHeaderSize = 16
    public static let capMigrationSize = 32
    public static let capDMAAvailSize = 12
    public static let dmaMapSize = 32
    public static let dmaUnmapSize = 24
    public static let bitmapSize = 24
    public static let dirtyBitmapSize = 8
    public static let dirtyBitmapGetSize = 40

    /// Linux: `DIRTY_BITMAP_SIZE_MAX` — bitmap bytes for `INT_MAX` pages (256 MiB).
    public static let dirtyBitmapSizeMax: UInt64 = 1 << 28
    /// Linux: `TASK_SIZE` on x86-64 (`access_ok` limit for user pointers).
    public static let userAddressLimit: UInt64 = 0x7FFF_FFFF_F000
    /// Linux: `VFIO_PIN_PAGES_MAX_ENTRIES` (`PAGE_SIZE / sizeof(long)`).
    public static let pinPagesMaxEntries = 512
}

// MARK: - Little-endian byte access

/// Little-endian loads and stores at byte offsets of a user buffer (bounds checked by callers).
enum LE {
    static func u16(_ b: [UInt8], _ o: Int) -> UInt16 { UInt16(b[o]) | UInt16(b[o + 1]) << 8 }
    static func u32(_ b: [UInt8], _ o: Int) -> UInt32 {
        var v: UInt32 = 0
        for i in 0..<4 { v |= UInt32(b[o + i]) << (8 * UInt32(i)) }
        return v
    }
    static func u64(_ b: [UInt8], _ o: Int) -> UInt64 {
        var v: UInt64 = 0
        for i in 0..<8 { v |= UInt64(b[o + i]) << (8 * UInt64(i)) }
        return v
    }
    static func put16(_ b: inout [UInt8], _ o: Int, _ v: UInt16) {
        b[o] = UInt8(truncatingIfNeeded: v)
        b[o + 1] = UInt8(truncatingIfNeeded: v >> 8)
    }
    static func put32(_ b: inout [UInt8], _ o: Int, _ v: UInt32) {
        for i in 0..<4 { b[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) }
    }
    static func put64(_ b: inout [UInt8], _ o: Int, _ v: UInt64) {
        for i in 0..<8 { b[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
    }
}
