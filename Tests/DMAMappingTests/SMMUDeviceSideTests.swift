import IOMMUBase
import IOMMUCore
import IOMMUHardware
import IOVAAllocator
import IOMMUTestSupport
import PhysicalMemory
import Testing
@testable import DMAMapping

/// The DMA layer on the SMMU model: device DMA through the model's TLB, with the device-side
/// checks fed from each `DMAOutcome`.
final class SMMUPlatform: @unchecked Sendable {
    let memory: PhysicalMemory
    let frames: FrameAllocator
    let core: IOMMUCore
    let smmu: ARMSMMU
    let platform: DMAPlatform
    let clock = ManualDMAClock()
    let warnings = RecordingWarningSink(capacity: 100_000)
    let api: DMAAPI
    let device: DMADevice

    init(lazy: Bool) throws {
        memory = try PhysicalMemory()
        frames = FrameAllocator(memory: memory)
        core = IOMMUCore(configuration: IOMMUCoreConfiguration(cpuPageSize: .size4K, defaultDomainType: lazy ? .dmaFQ : .dma))
        var config = SMMUConfiguration()
        config.tlbEntryCount = 64
        smmu = ARMSMMU(name: "smmu0", memory: memory, configuration: config)
        let driver = ARMSMMUDriver(smmu: smmu, core: core, frames: frames)
        _ = try core.registerIOMMU(name: smmu.instanceName, driver: driver)
        platform = DMAPlatform(memory: memory, core: core, hardware: [smmu])
        api = try DMAAPI(core: core, memory: memory, frames: frames, clock: clock, warningSink: warnings)
        let id = try core.addDevice(.pci(PCIAddress(bus: 0, device: 3, function: 0), iommu: FirmwareIOMMUSpec(iommu: "smmu0", streamIDs: [StreamID(0x300)])))
        try core.bindDriver(id, name: "nic")
        device = try api.setupDevice(id)
    }

    /// Device DMA with the device-side checks: the outcome tells whether a stale TLB entry was used.
    func deviceRead(_ iova: IOVA, _ length: Int) -> (bytes: [UInt8], outcome: DMAOutcome, report: DMADeviceAccessReport?) {
        let (bytes, outcome) = platform.dmaRead(device: device.id, address: iova.rawValue, length: length)
        let report = api.deviceAccessed(device: device.id, iova: iova, length: UInt64(length), isWrite: false, staleTLB: outcome.usedStaleTLBEntry)
        return (bytes, outcome, report)
    }

    func deviceWrite(_ iova: IOVA, _ bytes: [UInt8]) -> (outcome: DMAOutcome, report: DMADeviceAccessReport?) {
        let outcome = platform.dmaWrite(device: device.id, address: iova.rawValue, bytes: bytes)
        let report = api.deviceAccessed(device: device.id, iova: iova, length: UInt64(bytes.count), isWrite: true, staleTLB: outcome.usedStaleTLBEntry)
        return (outcome, report)
    }
}

@Suite("Device-side checks on the SMMU model")
struct SMMUDeviceSideTests {
    @Test func lazyUnmapLeavesAStaleWindowTheDeviceCanUseAndItIsReported() throws {
        let p = try SMMUPlatform(lazy: true)
        #expect(p.device.isLazy)
        let page = try p.frames.allocate(.size4K)
        try p.memory.fill(page, length: 4096, with: 0x5A)
        p.clock.advance(nanoseconds: 1_000)
        let a = p.device.mapChecked(page, 4096, .toDevice, cpu: 1)
        let first = p.deviceRead(a, 16)
        #expect(first.outcome.succeeded && first.bytes == [UInt8](repeating: 0x5A, count: 16) && first.report == nil)
        p.clock.advance(nanoseconds: 4_000)
        p.device.unmapPage(a, length: 4096, direction: .toDevice, cpu: 0)
        p.clock.advance(nanoseconds: 3_000)
        // The freed IOVA still reaches the old buffer through the TLB until the flush queue flushes.
        let stale = p.deviceRead(a, 16)
        #expect(stale.outcome.succeeded && stale.outcome.usedStaleTLBEntry)
        let report = try #require(stale.report)
        #expect(report.warning == .dmaStaleTLBAccess(device: p.device.id, iova: a, isWrite: false, unmappedAgoNanoseconds: 3_000))
        #expect(report.mapping?.mappedAt == 1_000 && report.mapping?.mappedOnCPU == 1)
        #expect(report.mapping?.unmappedAt == 5_000 && report.mapping?.unmappedOnCPU == 0)
        // The timer flushes; afterwards the device faults.
        p.clock.advance(milliseconds: 10)
        #expect(p.api.tick() == 1)
        let after = p.deviceRead(a, 16)
        #expect(!after.outcome.succeeded && after.report == nil)
        let windows = p.device.cookie!.staleWindows.snapshot()
        #expect(windows.count == 1 && windows.maxNanoseconds == 10_003_000)
    }

    @Test func strictUnmapLeavesNoStaleWindow() throws {
        let p = try SMMUPlatform(lazy: false)
        let page = try p.frames.allocate(.size4K)
        let a = p.device.mapChecked(page, 4096, .bidirectional)
        #expect(p.deviceRead(a, 8).outcome.succeeded)
        p.device.unmapPage(a, length: 4096, direction: .bidirectional)
        let r = p.deviceRead(a, 8)
        #expect(!r.outcome.succeeded && !r.outcome.usedStaleTLBEntry && r.report == nil)
    }

    @Test func deviceWriteToAToDeviceBufferIsReportedWithItsMapping() throws {
        let p = try SMMUPlatform(lazy: false)
        let page = try p.frames.allocate(.size4K)
        let a = p.device.mapChecked(page, 512, .toDevice, cpu: 0)
        let w = p.deviceWrite(a, [1, 2, 3, 4])
        #expect(!w.outcome.succeeded)   // the SMMU refuses it (permission fault)
        let report = try #require(w.report)
        #expect(report.warning == .dmaDeviceWriteToToDeviceMapping(device: p.device.id, iova: a, size: 4))
        #expect(report.mapping?.size == 512 && report.mapping?.direction == .toDevice)
    }

    @Test func seedScenarioOnTheSMMUPageTablesReportsFromEveryLayer() throws {
        let p = try SMMUPlatform(lazy: false)
        let page = try p.frames.allocate(.size4K)
        p.device.unmapPage(IOVA(0x4000_0000), length: 4096, direction: .toDevice)
        let w = p.warnings.drain()
        #expect(w.contains { if case .dmaUnmapNotMapped = $0 { true } else { false } })
        #expect(w.contains { if case .dmaUnmapIncomplete = $0 { true } else { false } })
        #expect(w.contains { if case .iovaFreeNotAllocated = $0 { true } else { false } })
        for _ in 0..<1000 {
            let a = p.device.mapChecked(page, 4096)
            #expect(p.deviceRead(a, 4).outcome.succeeded)
            p.device.unmapPage(a, length: 4096, direction: .bidirectional)
        }
        #expect(p.warnings.drain().isEmpty)
    }
}
