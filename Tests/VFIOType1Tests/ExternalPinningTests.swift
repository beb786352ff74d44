import IOMMUBase
import IOMMUCore
import IOMMUTestSupport
import PhysicalMemory
import Synchronization
import Testing
@testable import VFIOType1

/// §8.7 external pinning and the seed thread "Add blocking notifier to notify DMA_UNMAP".
@Suite("VFIO external pinning and unmap notification")
struct ExternalPinningTests {
    /// An emulated-only (mdev) container with one 16 KiB mapping at 0x100000.
    func emulatedSetUp() throws -> (VFIOHarness, VFIOContainer, VirtAddr) {
        let h = try VFIOHarness()
        let c = h.vfio.openContainer(process: h.host)
        let g = h.vfio.openEmulatedGroup()
        try g.setContainer(c)
        try c.setIOMMU(.type1v2)
        let va = try h.buffer(0x4000)
        try c.mapDMA(iova: IOVA(0x100000), vaddr: va, length: 0x4000, read: true, write: true)
        return (h, c, va)
    }

    final class DriverState: Sendable {
        let held = IOMMUMutex<[UInt64: Int]>([:])
    }

    final class Counter: Sendable {
        let value = Atomic<Int>(0)
        func increment() -> Int { value.wrappingAdd(1, ordering: .relaxed).newValue }
        var count: Int { value.load(ordering: .relaxed) }
    }

    @Test func seedCooperativeDriverUnpinsWhenNotifiedAndTheUnmapSucceeds() throws {
        let (h, c, _) = try emulatedSetUp()
        let notified = Counter()
        let ranges = IOMMUMutex<[(IOVA, UInt64)]>([])
        let device = c.registerEmulatedDevice(name: "vgpu") { device, iova, length in
            _ = notified.increment()
            ranges.withLock { $0.append((iova, length)) }
            device.unpinPages(iova: IOVA(0x101000), count: 2)
        }
        let pages = try device.pinPages(iova: IOVA(0x101000), count: 2, prot: [.read, .write])
        #expect(pages.count == 2)
        #expect(h.host.pinCount(pages[0]) == 1)
        #expect(h.host.lockedPages == 2, "no IOMMU domain: external pins are charged")
        #expect(c.mappings[0].externallyPinnedPages == 2)
        #expect(try c.unmapDMA(iova: IOVA(0x100000), length: 0x4000) == 0x4000)
        #expect(notified.count == 1)
        #expect(ranges.withLock { $0.map { [$0.0.rawValue, $0.1] } } == [[0x100000, 0x4000]])
        #expect(c.mappings.isEmpty)
        #expect(h.host.lockedPages == 0)
        #expect(h.host.totalPins == 0)
    }

    @Test func seedMisbehavingDriverGetsEBUSYAfterTenRetriesWithTheMappingIntact() throws {
        let (h, c, _) = try emulatedSetUp()
        let notified = Counter()
        let device = c.registerEmulatedDevice(name: "stubborn") { _, _, _ in _ = notified.increment() }
        _ = try device.pinPages(iova: IOVA(0x102000), count: 2, prot: .read)
        let before = Snapshot(c, h.host)
        #expect(errno { try c.unmapDMA(iova: IOVA(0x100000), length: 0x4000) } == .busy)
        #expect(notified.count == 11, "the first notification and 10 retries")
        #expect(Snapshot(c, h.host) == before, "mapping intact and still pinned")
        #expect(h.warnings.warnings.contains(
            .vfioUnmapBlockedByPinnedPages(device: device.id, iova: IOVA(0x102000), pages: 2, notifications: 11)))
        #expect(c.emulatedDevice(device.id)?.name == "stubborn")
        // UNMAP_ALL too.
        #expect(errno { try c.unmapDMA(iova: IOVA(0), length: 0, all: true) } == .busy)
        #expect(Snapshot(c, h.host) == before)
        // Once it unpins, the unmap goes through.
        device.unpinPages(iova: IOVA(0x102000), count: 2)
        #expect(try c.unmapDMA(iova: IOVA(0x100000), length: 0x4000) == 0x4000)
        #expect(h.host.lockedPages == 0)
    }

    @Test func seedDriverThatUnpinsOnlyOnTheThirdNotificationSucceeds() throws {
        let (h, c, _) = try emulatedSetUp()
        let notified = Counter()
        let device = c.registerEmulatedDevice(name: "slow") { device, _, _ in
            if notified.increment() == 3 { device.unpinPages(iova: IOVA(0x100000), count: 1) }
        }
        _ = try device.pinPages(iova: IOVA(0x100000), count: 1, prot: .read)
        #expect(try c.unmapDMA(iova: IOVA(0x100000), length: 0x4000) == 0x4000)
        #expect(notified.count == 3)
        #expect(h.host.totalPins == 0)
        #expect(h.warnings.warnings.isEmpty)
    }

    @Test func everyRegisteredDriverIsNotifiedAndPinsAreReferenceCounted() throws {
        let (h, c, _) = try emulatedSetUp()
        let a = c.registerEmulatedDevice(name: "a") { d, _, _ in d.unpinPages(iova: IOVA(0x100000), count: 1) }
        let bCount = Counter()
        let b = c.registerEmulatedDevice(name: "b") { d, _, _ in
            _ = bCount.increment()
            d.unpinPages(iova: IOVA(0x100000), count: 1)
        }
        let pa = try a.pinPages(iova: IOVA(0x100000), count: 1, prot: .read)
        let pb = try b.pinPages(iova: IOVA(0x100000), count: 1, prot: .read)
        #expect(pa == pb)
        #expect(h.host.pinCount(pa[0]) == 1, "one host pin, two references")
        #expect(h.host.lockedPages == 1)
        a.unpinPages(iova: IOVA(0x100000), count: 1)
        #expect(c.mappings[0].externallyPinnedPages == 1)
        _ = try a.pinPages(iova: IOVA(0x100000), count: 1, prot: .read)
        #expect(try c.unmapDMA(iova: IOVA(0x100000), length: 0x4000) == 0x4000)
        #expect(bCount.count == 1)
        #expect(h.host.totalPins == 0)
        #expect(h.host.lockedPages == 0)
    }

    @Test func pinPagesErrorsInOrderAndRollBackAPartlyFailedPin() throws {
        let (h, c, _) = try emulatedSetUp()
        let d = c.registerEmulatedDevice(name: "d") { _, _, _ in }
        #expect(errno { _ = try d.pinPages(iova: IOVA(0x100000), count: 0, prot: .read) } == .invalidArgument)
        #expect(errno { _ = try d.pinPages(iova: IOVA(0x100000), count: 513, prot: .read) } == .argumentListTooLong)
        #expect(errno { _ = try d.pinPages(iova: IOVA(0x300000), count: 1, prot: .read) } == .invalidArgument)
        // Pages 0x100000..0x103fff are mapped; the 5th is not: everything pinned by the call goes.
        let before = Snapshot(c, h.host)
        #expect(errno { _ = try d.pinPages(iova: IOVA(0x100000), count: 5, prot: .read) } == .invalidArgument)
        #expect(Snapshot(c, h.host) == before)
        // Prot not allowed by the mapping.
        let ro = try h.buffer(0x1000, writable: false)
        try c.mapDMA(iova: IOVA(0x200000), vaddr: ro, length: 0x1000, read: true, write: false)
        #expect(errno { _ = try d.pinPages(iova: IOVA(0x200000), count: 1, prot: [.read, .write]) } == .notPermitted)
        // Host pin failure (fail_nth) on the third page: the first two are released.
        h.host.pinFailNth.failOn(3)
        #expect(errno { _ = try d.pinPages(iova: IOVA(0x100000), count: 4, prot: .read) } == .badAddress)
        #expect(h.host.totalPins == 0)
        #expect(h.host.lockedPages == 0)
        // Locked-memory limit with accounting (no IOMMU domain).
        let tight = try VFIOHarness(lockedLimit: 0x1000)
        let tc = tight.vfio.openContainer(process: tight.host)
        try tight.vfio.openEmulatedGroup().setContainer(tc)
        try tc.setIOMMU(.type1v2)
        let tva = try tight.buffer(0x2000)
        try tc.mapDMA(iova: IOVA(0), vaddr: tva, length: 0x2000, read: true, write: true)
        let td = tc.registerEmulatedDevice(name: "t") { _, _, _ in }
        #expect(errno { _ = try td.pinPages(iova: IOVA(0), count: 2, prot: .read) } == .noMemory)
        #expect(tight.host.totalPins == 0)
        #expect(tight.host.lockedPages == 0)
    }

    @Test func v1ContainerIsEACCESAndUnregisteredDeviceIsEINVAL() throws {
        let h = try VFIOHarness()
        let c = h.vfio.openContainer(process: h.host)
        try h.vfio.openEmulatedGroup().setContainer(c)
        try c.setIOMMU(.type1)
        let va = try h.buffer(0x1000)
        try c.mapDMA(iova: IOVA(0), vaddr: va, length: 0x1000, read: true, write: true)
        let d = c.registerEmulatedDevice(name: "d") { _, _, _ in }
        #expect(errno { _ = try d.pinPages(iova: IOVA(0), count: 1, prot: .read) } == .permissionDenied)
        d.unpinPages(iova: IOVA(0), count: 1)
        #expect(h.warnings.warnings.contains(.vfioUnpinPagesMisuse(iova: IOVA(0), count: 1)))

        let (h2, c2, _) = try emulatedSetUp()
        let gone = c2.registerEmulatedDevice(name: "gone") { _, _, _ in }
        gone.unregister()
        #expect(errno { _ = try gone.pinPages(iova: IOVA(0x100000), count: 1, prot: .read) } == .invalidArgument)
        _ = h2
    }

    @Test func withAnIOMMUDomainExternalPinsAreNotChargedTwice() throws {
        let h = try VFIOHarness()
        let (c, _) = try h.container()
        let emulated = h.vfio.openEmulatedGroup()
        try emulated.setContainer(c)
        let va = try h.buffer(0x4000)
        try c.mapDMA(iova: IOVA(0x100000), vaddr: va, length: 0x4000, read: true, write: true)
        #expect(h.host.lockedPages == 4)
        let d = c.registerEmulatedDevice(name: "d") { d, _, _ in d.unpinPages(iova: IOVA(0x100000), count: 4) }
        let pages = try d.pinPages(iova: IOVA(0x100000), count: 4, prot: .read)
        #expect(h.host.lockedPages == 4)
        #expect(h.host.pinCount(pages[0]) == 2, "IOMMU pin + external pin")
        #expect(try c.unmapDMA(iova: IOVA(0x100000), length: 0x4000) == 0x4000)
        #expect(h.host.lockedPages == 0)
        #expect(h.host.totalPins == 0)
    }

    @Test func lastDomainLeavingWithEmulatedGroupsKeepsMappingsAndOnlyExternalPinsStayCharged() throws {
        let h = try VFIOHarness()
        let (c, groups) = try h.container()
        try h.vfio.openEmulatedGroup().setContainer(c)
        let va = try h.buffer(0x4000)
        try c.mapDMA(iova: IOVA(0x100000), vaddr: va, length: 0x4000, read: true, write: true)
        let d = c.registerEmulatedDevice(name: "d") { _, _, _ in }
        _ = try d.pinPages(iova: IOVA(0x101000), count: 1, prot: .read)
        try groups[0].unsetContainer()
        #expect(c.mappings.count == 1)
        #expect(!c.mappings[0].iommuMapped)
        #expect(h.host.lockedPages == 1)
        #expect(h.host.totalPins == 1)
        d.unpinPages(iova: IOVA(0x101000), count: 1)
        #expect(h.host.lockedPages == 0)
        #expect(h.host.totalPins == 0)
    }

    @Test func containerReleaseWithPinnedPagesReportsThemAndLeavesThemPinned() throws {
        let (h, c, _) = try emulatedSetUp()
        let d = c.registerEmulatedDevice(name: "leaky") { _, _, _ in }
        _ = try d.pinPages(iova: IOVA(0x100000), count: 3, prot: .read)
        c.close()
        #expect(h.warnings.warnings.contains(.vfioPinnedPagesAtRelease(device: d.id, iova: IOVA(0x100000), pages: 3)))
        #expect(h.host.totalPins == 3, "never unpinned behind the driver's back")
        #expect(c.mappings.isEmpty)
        // The device outlives the container: calls answer with an errno, never crash.
        #expect(errno { _ = try d.pinPages(iova: IOVA(0x100000), count: 1, prot: .read) } == .invalidArgument)
        #expect(errno { _ = try d.dmaRead(iova: IOVA(0x100000), count: 1) } == .invalidArgument)
        d.unpinPages(iova: IOVA(0x100000), count: 1)
    }

    @Test func dmaReadWriteByIOVA() throws {
        let (h, c, va) = try emulatedSetUp()
        let d = c.registerEmulatedDevice(name: "d") { _, _, _ in }
        try d.dmaWrite(iova: IOVA(0x100ffe), bytes: [1, 2, 3, 4])
        #expect(try h.host.read(VirtAddr(va.rawValue + 0xffe), count: 4) == [1, 2, 3, 4])
        #expect(try d.dmaRead(iova: IOVA(0x100ffe), count: 4) == [1, 2, 3, 4])
        #expect(errno { _ = try d.dmaRead(iova: IOVA(0x103fff), count: 2) } == .invalidArgument)
        #expect(errno { _ = try d.dmaRead(iova: IOVA(0x100000), count: 0) } == .invalidArgument)
        let ro = try h.buffer(0x1000, writable: false)
        try c.mapDMA(iova: IOVA(0x200000), vaddr: ro, length: 0x1000, read: true, write: false)
        #expect(errno { try d.dmaWrite(iova: IOVA(0x200000), bytes: [1]) } == .notPermitted)
        try c.mapDMA(iova: IOVA(0x300000), vaddr: ro, length: 0x1000, read: false, write: true)
        #expect(errno { _ = try d.dmaRead(iova: IOVA(0x300000), count: 1) } == .notPermitted)
    }

    @Test func concurrentMapUnmapWithPinnersAndALockTakingNotifierNeitherDeadlocksNorLosesPages() async throws {
        let h = try VFIOHarness(lockedLimit: 1 << 30)
        let (c, _) = try h.container()
        try h.vfio.openEmulatedGroup().setContainer(c)
        let driverState = DriverState()  // the driver's own lock: iova -> pins held
        let device = c.registerEmulatedDevice(name: "racy") { device, iova, length in
            let held = driverState.held.withLock { held -> [UInt64] in
                let mine = held.keys.filter { $0 >= iova.rawValue && $0 - iova.rawValue < length }
                for key in mine { held[key] = nil }
                return mine
            }
            for page in held { device.unpinPages(iova: IOVA(page), count: 1) }
        }
        let va = try h.buffer(0x100000)
        await withTaskGroup(of: Void.self) { group in
            for worker in 0..<4 {
                group.addTask {
                    for round in 0..<100 {
                        let iova = UInt64(worker) << 24 | UInt64(round % 8) << 16
                        let vaddr = VirtAddr(va.rawValue + UInt64(worker) << 16)
                        try? c.mapDMA(iova: IOVA(iova), vaddr: vaddr, length: 0x4000, read: true, write: true)
                        if round % 2 == 0, (try? device.pinPages(iova: IOVA(iova + 0x1000), count: 1, prot: .read)) != nil {
                            let stale = driverState.held.withLock { held -> Bool in
                                if held[iova + 0x1000] != nil { return true }
                                held[iova + 0x1000] = 1
                                return false
                            }
                            if stale { device.unpinPages(iova: IOVA(iova + 0x1000), count: 1) }
                        }
                        _ = try? c.unmapDMA(iova: IOVA(iova), length: 0x4000)
                    }
                }
            }
        }
        try c.unmapDMA(iova: IOVA(0), length: 0, all: true)
        #expect(c.mappings.isEmpty)
        #expect(h.host.totalPins == 0)
        #expect(h.host.lockedPages == 0)
    }
}
