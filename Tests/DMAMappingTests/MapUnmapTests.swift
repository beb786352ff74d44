import IOMMUBase
import IOMMUCore
import IOVAAllocator
import IOMMUTestSupport
import PhysicalMemory
import Testing
@testable import DMAMapping

@Suite("DMA map/unmap: Linux's IOVA choices")
struct MapUnmapTests {
    @Test func pciDeviceGetsTopOf32BitSpaceFirstAndOffsetsSurvive() throws {
        let h = try DMAHarness(coverage: 1 << 33)
        let dev = try h.device()
        let p = try h.page()
        let a = dev.mapChecked(PhysAddr(p.rawValue + 0x234), 0x100)
        #expect(a.rawValue == 0xFFFF_F234)
        #expect(dev.flat.iovaToPhys(a) == PhysAddr(p.rawValue + 0x234))
        // 0x1000 bytes at offset 0x234 span two granules: a 2-page, 2-aligned IOVA block.
        let b = dev.mapChecked(PhysAddr(p.rawValue + 0x234), 0x1000)
        #expect(b.rawValue == 0xFFFF_C234)   // Linux: (0xFFFFF - 2) & ~1, leaving pfn 0xFFFFE free
        // 3 pages round up to a 4-page, 4-aligned block.
        let c = dev.mapChecked(p, 3 * 4096)
        #expect(c.rawValue == 0xFFFF_8000)
        dev.unmapPage(a, length: 0x100, direction: .bidirectional)
        dev.unmapPage(b, length: 0x1000, direction: .bidirectional)
        dev.unmapPage(c, length: 3 * 4096, direction: .bidirectional)
        #expect(h.drainWarnings().isEmpty)
        #expect(dev.liveIOVANodes().isEmpty)
        #expect(dev.flat.iovaToPhys(a) == nil)
    }

    @Test func platformDeviceNeverTries32BitFirst() throws {
        let h = try DMAHarness(coverage: 1 << 33)
        let dev = try h.device(pci: false)
        #expect(!dev.tries32BitFirst)
        let a = dev.mapChecked(try h.page(), 4096)
        #expect(a.rawValue == (1 << 33) - 4096)
    }

    @Test func first32BitFailureSwitchesDeviceToFullWidthForGood() throws {
        let h = try DMAHarness(coverage: 1 << 33)
        let dev = try h.device()
        _ = dev.cookie!.iovad.reserve(lo: PFN(1), hi: PFN(0xFFFFF))   // 32-bit space full
        let a = dev.mapChecked(try h.page(), 4096)
        #expect(a.rawValue == (1 << 33) - 4096)
        #expect(!dev.tries32BitFirst)
        #expect(h.drainWarnings() == [.dmaUsingFullWidthAddresses(device: dev.id, bits: 33)])
        let b = dev.mapChecked(try h.page(), 4096)
        #expect(b.rawValue == (1 << 33) - 2 * 4096)
        #expect(h.drainWarnings().isEmpty)   // no second attempt, no second notice
    }

    @Test func forceDACSkipsThe32BitAttempt() throws {
        let h = try DMAHarness(coverage: 1 << 33) { $0.forceDAC = true }
        let dev = try h.device()
        #expect(!dev.tries32BitFirst)
        #expect(dev.mapChecked(try h.page(), 4096).rawValue == (1 << 33) - 4096)
    }

    @Test func dmaMaskAndBusLimitCapTheIOVA() throws {
        let h = try DMAHarness(coverage: 1 << 33)
        var options = DMADeviceOptions()
        options.dmaMask = 0xFFF_FFFF
        let dev = try h.device(pci: false, options: options)
        #expect(dev.mapChecked(try h.page(), 4096).rawValue == 0xFFF_F000)
        var limited = DMADeviceOptions()
        limited.busDMALimit = 0x3FF_FFFF
        let dev2 = try h.device(pci: false, options: limited)
        #expect(dev2.mapChecked(try h.page(), 4096).rawValue == 0x3FF_F000)
    }

    @Test func iovaExhaustionIsAMappingErrorAfterOneFlushAndRetry() throws {
        let h = try DMAHarness(coverage: 16 * 4096)
        let dev = try h.device()
        var mapped: [IOVA] = []
        let p = try h.page()
        for _ in 0..<15 { mapped.append(dev.mapChecked(p, 4096)) }   // pfns 1...15 (pfn 0 is never used)
        let failed = dev.mapPage(p, length: 4096, direction: .toDevice)
        #expect(dev.mappingError(failed))
        #expect(failed == DMADevice.mappingErrorAddress)
        // A freed IOVA sits in a CPU cache of another CPU; the flush-and-retry finds it.
        dev.unmapPage(mapped[3], length: 4096, direction: .bidirectional, cpu: 1)
        let again = dev.mapPage(p, length: 4096, direction: .toDevice, cpu: 0)
        #expect(again == mapped[3])
    }

    @Test func zeroLengthAndNoneDirectionAreMappingErrors() throws {
        let h = try DMAHarness()
        let dev = try h.device()
        #expect(dev.mappingError(dev.mapPage(try h.page(), length: 0, direction: .toDevice)))
        #expect(dev.mappingError(dev.mapPage(try h.page(), length: 8, direction: .none)))
    }

    @Test func directionsBecomePagePermissions() throws {
        let h = try DMAHarness()
        let dev = try h.device()
        let p = try h.page()
        let toDevice = dev.mapChecked(p, 64, .toDevice)
        #expect(dev.flat.deviceTranslate(toDevice, isWrite: true) == .permissionFault)
        #expect(dev.flat.deviceTranslate(toDevice, isWrite: false) == .translated(p, stale: false))
        let fromDevice = dev.mapChecked(p, 64, .fromDevice)
        #expect(dev.flat.deviceTranslate(fromDevice, isWrite: false) == .permissionFault)
    }

    @Test func identityDomainIsDMADirect() throws {
        let h = try DMAHarness(driver: FlatIOMMUDriver(defaultType: .identity))
        let dev = try h.device()
        #expect(dev.cookie == nil)
        let p = try h.page()
        #expect(dev.mapChecked(p, 100) == IOVA(p.rawValue))
    }
}

@Suite("DMA domain init and reservations")
struct DomainInitTests {
    @Test func reinitWithSameGranuleAndBaseIsIdempotentElseEFAULT() throws {
        let h = try DMAHarness()
        let dev = try h.device()
        let domain = dev.cookie!.domain
        #expect(try h.api.cookie(for: domain, device: dev.id) === dev.cookie!)
        domain.setGeometry(DomainGeometry(apertureStart: IOVA(1 << 20), apertureEnd: IOVA((1 << 32) - 1), forceAperture: true))
        #expect(throws: IOMMUError(.badAddress, address: 256, device: dev.id)) { try h.api.cookie(for: domain, device: dev.id) }
    }

    @Test func dmaRangeOutsideApertureIsEFAULT() throws {
        let h = try DMAHarness(coverage: 1 << 32)
        var options = DMADeviceOptions()
        options.dmaRanges = [(1 << 40)...((1 << 41) - 1)]
        #expect(throws: IOMMUError.self) { _ = try h.device(options: options) }
    }

    @Test func pciHostBridgeWindowsAndDMARangeGapsAreReserved() throws {
        let h = try DMAHarness(coverage: 1 << 33)
        var options = DMADeviceOptions()
        options.hostBridgeWindows = [(first: 0x1_4000_0000, last: 0x1_4FFF_FFFF, offset: 0x1_0000_0000)]
        options.dmaRanges = [0...0xDFFF_FFFF]
        let dev = try h.device(options: options)
        let reserved = dev.cookie!.iovad.snapshot().reserved
        #expect(reserved.contains { $0.first.rawValue <= 0x40000 && $0.last.rawValue >= 0x4FFFF })   // window as bus addresses
        #expect(reserved.contains { $0.first.rawValue == 0xE0000 })   // gap above the DMA range
        // The first IOVA is below the DMA range's end, not in the gap.
        #expect(dev.mapChecked(try h.page(), 4096).rawValue == 0xDFFF_F000)
    }

    @Test func overlappingDMARangesAreEINVAL() throws {
        let h = try DMAHarness()
        var options = DMADeviceOptions()
        options.dmaRanges = [0...0x2000_0000, 0x1000_0000...0x3000_0000]
        #expect(throws: IOMMUError.self) { _ = try h.device(options: options) }
    }

    @Test func hardwareMSIRegionReservedSoftwareMSINot() throws {
        let fake = FakeIOMMUDriver {
            $0.pageSizes = PageSizeBitmap([.size4K])
            $0.apertureEnd = (1 << 32) - 1
            $0.regions = ["0000:01:00.0": [
                ReservedRegion(start: 0x800_0000, length: 1 << 20, prot: [.write, .mmio], type: .swMSI),
                ReservedRegion(start: 0xFEE0_0000, length: 1 << 20, prot: [.write, .mmio], type: .msi),
            ]]
        }
        let h = try DMAHarness(driver: fake)
        let dev = try h.device()
        let reserved = dev.cookie!.iovad.snapshot().reserved
        #expect(reserved.contains { $0.first.rawValue == 0xFEE00 && $0.last.rawValue == 0xFEEFF })
        #expect(!reserved.contains { $0.first.rawValue <= 0x8000 && $0.last.rawValue >= 0x8000 })
        // The first 32-bit IOVA skips the MSI window only if it is at the top; here it is below.
        #expect(dev.mapChecked(try h.page(), 4096).rawValue == 0xFFFF_F000)
    }

    @Test func fqWithoutDeferredFlushCapabilityIsStrict() throws {
        let h = try DMAHarness(lazy: true, driver: FlatIOMMUDriver(deferredFlush: false))
        let dev = try h.device()
        #expect(!dev.isLazy)
        let h2 = try DMAHarness(lazy: true)
        #expect(try h2.device().isLazy)
    }

    @Test func untrustedDeviceIsAlwaysStrict() throws {
        let h = try DMAHarness(lazy: true)
        #expect(try h.device(untrusted: true).isLazy == false)
    }

    @Test func shadowOnFlushUsesOneLargeQueue() throws {
        let h = try DMAHarness(lazy: true) { $0.shadowOnFlush = true }
        let dev = try h.device()
        #expect(dev.cookie!.flushQueueOptions == .single)
        #expect(dev.cookie!.queues.count == 1)
        let h2 = try DMAHarness(lazy: true)
        #expect(try h2.device().cookie!.flushQueueOptions == .perCPU)
    }

    /// Found by the fail_nth sweep: an element longer than the maximum segment size trapped on
    /// `maxSegmentSize - currentLength`. Linux computes it in `unsigned int` and wraps, so the
    /// next page-aligned element merges into that segment.
    @Test func elementLongerThanMaxSegmentSizeDoesNotTrapAndMergesAsLinux() throws {
        let h = try DMAHarness()
        let dev = try h.device(options: { var o = DMADeviceOptions(); o.maxSegmentSize = 0x1_0000; return o }())
        let entries = [DMAScatterEntry(paddr: PhysAddr(0x9000_0000), length: 0x2_0000),
                       DMAScatterEntry(paddr: PhysAddr(0x9100_0000), length: 0x1000),
                       DMAScatterEntry(paddr: PhysAddr(0x9200_0800), length: 0x100)]
        let m = try #require(dev.mapSG(entries, direction: .toDevice))
        // 128 KiB + 4 KiB merged (wrapped difference), then a new segment for the element
        // with an offset; the IOVA range is 128 KiB + 4 KiB + one granule.
        #expect(m.lengths == [0x2_1000, 0x100])
        #expect(m.addresses == [m.iova, IOVA(m.iova.rawValue + 0x2_1800)])
        #expect(m.iovaLength == 0x2_2000)
        dev.unmapSG(m, direction: .toDevice)
        #expect(h.drainWarnings().isEmpty)
    }
}
