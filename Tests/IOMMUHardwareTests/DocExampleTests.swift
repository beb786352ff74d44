import IOMMUBase
import IOMMUCore
import IOMMUHardware
import IOPageTable
import PhysicalMemory
import Testing

/// The "Building a platform in code" example of docs/hardware.md, verbatim in spirit.
@Test func docExampleBuildsAPlatform() throws {
    let memory = try PhysicalMemory()
    let frames = FrameAllocator(memory: memory)
    let warnings = RecordingWarningSink()
    let trace = RecordingTraceSink()
    let core = IOMMUCore(configuration: IOMMUCoreConfiguration(cpuPageSize: .size4K, defaultDomainType: .dma),
                         warnings: warnings, trace: trace)
    var config = SMMUConfiguration()
    config.streamMatchRegisterCount = 16
    config.contextBankCount = 8
    config.stage2OnlyContextBankCount = 0
    config.streamIDBits = 15
    config.tlbEntryCount = 128; config.tlbReplacement = .lru
    let smmu = ARMSMMU(name: "smmu@2b400000", memory: memory, configuration: config, warnings: warnings)
    let driver = ARMSMMUDriver(smmu: smmu, core: core, frames: frames, options: .init(disableBypass: true))
    try core.registerIOMMU(name: smmu.instanceName, driver: driver)
    let nic = try core.addDevice(.pci(PCIAddress(bus: 0, device: 3, function: 0),
                                      iommu: FirmwareIOMMUSpec(iommu: "smmu@2b400000", streamIDs: [StreamID(0x300)])))
    let platform = DMAPlatform(memory: memory, core: core, hardware: [smmu])
    let domain = try #require(core.domain(for: nic))
    let buffer = try frames.allocate(.size4K)
    try domain.map(iova: IOVA(0x10_0000), paddr: buffer, length: 4096, prot: [.read, .write])
    let outcome = platform.dmaWrite(device: nic, address: 0x10_0000, bytes: [1, 2, 3])
    let (bytes, readOutcome) = platform.dmaRead(device: nic, address: 0x10_0000, length: 3)
    #expect(outcome.succeeded && readOutcome.succeeded && bytes == [1, 2, 3])
    #expect(smmu.registerSnapshot().smrs[0] == StreamMatchRegister(id: 0x300, mask: 0, valid: true))
    #expect(smmu.tlbStatistics.hits == 1 && smmu.tlbStatistics.misses == 1)
    #expect(smmu.faultLog.isEmpty && driver.streamMapEntries[0].count == 1)
}
