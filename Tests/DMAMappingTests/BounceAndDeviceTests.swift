import IOMMUBase
import IOMMUCore
import IOVAAllocator
import IOMMUTestSupport
import PhysicalMemory
import Testing
@testable import DMAMapping

@Suite("Untrusted devices: bounce buffers")
struct BounceTests {
    /// A page full of 0xAA "neighbour" bytes with a 0x80-byte buffer of 0x55 at offset 0x100.
    func neighbourPage(_ h: DMAHarness) throws -> (page: PhysAddr, buffer: PhysAddr) {
        let page = try h.page()
        try h.memory.fill(page, length: 4096, with: 0xAA)
        let buffer = PhysAddr(page.rawValue + 0x100)
        try h.memory.fill(buffer, length: 0x80, with: 0x55)
        return (page, buffer)
    }

    @Test func subGranuleBufferIsBouncedWithZeroPaddingAndNoNeighbourBytes() throws {
        let h = try DMAHarness { $0.bouncePoolBytes = 64 * 4096 }
        let dev = try h.device(untrusted: true)
        let (_, buffer) = try neighbourPage(h)
        let a = dev.mapChecked(buffer, 0x80, .toDevice)
        let phys = try #require(dev.flat.iovaToPhys(a))
        #expect(h.api.bouncePool!.contains(phys))
        // Everything the device can reach through this mapping: the whole granule.
        let granule = try h.memory.readBytes(PhysAddr(phys.rawValue & ~0xFFF), count: 4096)
        let offset = Int(a.rawValue & 0xFFF)
        #expect(granule[offset..<offset + 0x80].allSatisfy { $0 == 0x55 })
        #expect(granule[..<offset].allSatisfy { $0 == 0 })   // pre-padding
        #expect(granule[(offset + 0x80)...].allSatisfy { $0 == 0 })   // post-padding
        #expect(!granule.contains(0xAA))
        dev.unmapPage(a, length: 0x80, direction: .toDevice)
        #expect(h.api.bouncePool!.slotsInUse == 0)
        #expect(h.drainWarnings().isEmpty)
    }

    @Test func fromDeviceBounceIsCopiedBackAtUnmapAndSync() throws {
        let h = try DMAHarness { $0.bouncePoolBytes = 16 * 4096 }
        let dev = try h.device(untrusted: true)
        let (page, buffer) = try neighbourPage(h)
        let a = dev.mapChecked(buffer, 0x80, .fromDevice)
        let phys = try #require(dev.flat.iovaToPhys(a))
        try h.memory.fill(phys, length: 0x80, with: 0x77)   // the device writes
        dev.syncSingleForCPU(a, length: 0x80, direction: .fromDevice)
        #expect(try h.memory.readBytes(buffer, count: 0x80).allSatisfy { $0 == 0x77 })
        try h.memory.fill(phys, length: 0x80, with: 0x99)
        dev.unmapPage(a, length: 0x80, direction: .fromDevice)
        #expect(try h.memory.readBytes(buffer, count: 0x80).allSatisfy { $0 == 0x99 })
        // Neighbours untouched.
        let all = try h.memory.readBytes(page, count: 4096)
        #expect(all[..<0x100].allSatisfy { $0 == 0xAA } && all[0x180...].allSatisfy { $0 == 0xAA })
    }

    @Test func trustedDeviceAndAlignedBuffersMapInPlace() throws {
        let h = try DMAHarness { $0.bouncePoolBytes = 16 * 4096 }
        let trusted = try h.device()
        let (page, buffer) = try neighbourPage(h)
        let a = trusted.mapChecked(buffer, 0x80, .toDevice)
        #expect(trusted.flat.iovaToPhys(a) == buffer)
        let untrusted = try h.device(untrusted: true)
        let b = untrusted.mapChecked(page, 4096, .toDevice)   // granule-aligned: no bounce
        #expect(untrusted.flat.iovaToPhys(b) == page)
        #expect(h.api.bouncePool!.slotsInUse == 0)
    }

    @Test func noPoolMeansAClearMappingError() throws {
        let h = try DMAHarness()
        let dev = try h.device(untrusted: true)
        let (_, buffer) = try neighbourPage(h)
        let a = dev.mapPage(buffer, length: 0x80, direction: .toDevice)
        #expect(dev.mappingError(a))
        #expect(h.drainWarnings() == [.dmaBounceBuffersInactive(device: dev.id, paddr: buffer, size: 0x80)])
    }

    @Test func fullPoolIsAMappingError() throws {
        let h = try DMAHarness { $0.bouncePoolBytes = 2 * 4096 }
        let dev = try h.device(untrusted: true)
        let (_, buffer) = try neighbourPage(h)
        _ = dev.mapChecked(buffer, 0x80)
        _ = dev.mapChecked(buffer, 0x80)
        #expect(dev.mappingError(dev.mapPage(buffer, length: 0x80, direction: .toDevice)))
        #expect(h.drainWarnings() == [.dmaBouncePoolFull(device: dev.id, size: 0x80)])
    }

    @Test func untrustedScatterlistBouncesElementByElement() throws {
        let h = try DMAHarness { $0.bouncePoolBytes = 16 * 4096 }
        let dev = try h.device(untrusted: true)
        let (_, buffer) = try neighbourPage(h)
        let m = try #require(dev.mapSG([DMAScatterEntry(paddr: buffer, length: 0x80), DMAScatterEntry(paddr: try h.page(), length: 4096)], direction: .toDevice))
        #expect(m.addresses.count == 2)
        #expect(h.api.bouncePool!.slotsInUse == 1)
        dev.unmapSG(m, direction: .toDevice)
        #expect(h.api.bouncePool!.slotsInUse == 0)
        #expect(h.drainWarnings().isEmpty)
    }
}

@Suite("Device-side checks")
struct DeviceSideTests {
    @Test func staleTLBAccessAfterLazyUnmapIsReportedWithTheMappingHistory() throws {
        let h = try DMAHarness(lazy: true)
        let dev = try h.device()
        let p = try h.page()
        h.clock.advance(nanoseconds: 100)
        let a = dev.mapChecked(p, 4096, .fromDevice, cpu: 1)
        _ = dev.flat.deviceTranslate(a, isWrite: true)   // the device uses it: IOTLB filled
        h.clock.advance(nanoseconds: 400)
        dev.unmapPage(a, length: 4096, direction: .fromDevice, cpu: 0)
        h.clock.advance(nanoseconds: 2_000)
        guard case .translated(_, let stale) = dev.flat.deviceTranslate(a, isWrite: true) else {
            Issue.record("expected the stale translation")
            return
        }
        #expect(stale)
        let report = try #require(h.api.deviceAccessed(device: dev.id, iova: a, length: 64, isWrite: true, staleTLB: stale))
        #expect(report.warning == .dmaStaleTLBAccess(device: dev.id, iova: a, isWrite: true, unmappedAgoNanoseconds: 2_000))
        let history = try #require(report.mapping)
        #expect(history.mappedAt == 100 && history.mappedOnCPU == 1)
        #expect(history.unmappedAt == 500 && history.unmappedOnCPU == 0)
        #expect(h.drainWarnings() == [report.warning])
    }

    @Test func deviceWriteToAToDeviceMappingIsReported() throws {
        let h = try DMAHarness()
        let dev = try h.device()
        let a = dev.mapChecked(try h.page(), 256, .toDevice)
        #expect(dev.flat.deviceTranslate(a, isWrite: true) == .permissionFault)
        let report = try #require(h.api.deviceAccessed(device: dev.id, iova: a, length: 4, isWrite: true, staleTLB: false))
        #expect(report.warning == .dmaDeviceWriteToToDeviceMapping(device: dev.id, iova: a, size: 4))
        #expect(report.mapping?.direction == .toDevice)
        #expect(h.api.deviceAccessed(device: dev.id, iova: a, length: 4, isWrite: false, staleTLB: false) == nil)
    }
}
