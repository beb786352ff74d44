import IOMMUBase
import Testing

/// The VFIO warnings print Linux's wording where Linux has one, and stay trivial values.
@Suite("VFIO warning text")
struct WarningTextTests {
    @Test func vfioWarningsReadLikeLinux() {
        #expect(_isPOD(IOMMUWarning.self))
        #expect(IOMMUWarning.vfioLockedMemoryLimitExceeded(limitBytes: 65536).description == "vfio: RLIMIT_MEMLOCK (65536) exceeded")
        #expect(IOMMUWarning.vfioNoInterruptRemapping(group: 3).description.contains("No interrupt remapping support.  Use the module param \"allow_unsafe_interrupts\""))
        #expect(IOMMUWarning.vfioPinWhileVaddrInvalid(iova: IOVA(0x1000)).description.contains("vfio_pin_pages not allowed with VFIO_UPDATE_VADDR"))
        let blocked = IOMMUWarning.vfioUnmapBlockedByPinnedPages(device: DeviceID(2), iova: IOVA(0x102000), pages: 2, notifications: 11).description
        #expect(blocked.contains("device#2") && blocked.contains("0x102000") && blocked.contains("EBUSY") && blocked.contains("11"))
        #expect(IOMMUWarning.vfioPinnedPagesAtRelease(device: DeviceID(1), iova: IOVA(0), pages: 3).description.contains("left 3 page(s) pinned"))
    }
}
