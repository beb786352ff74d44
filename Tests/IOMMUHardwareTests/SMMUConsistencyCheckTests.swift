import IOMMUBase
import IOMMUCore
import IOPageTable
import PhysicalMemory
import Testing
@testable import IOMMUHardware

/// `ARMSMMUDriver.checkConsistency()`: clean after probes and removals, and able to fail.
@Suite("SMMU driver consistency checker")
struct SMMUConsistencyCheckTests {
    @Test func cleanThroughProbeAndRemovalThenReportsABrokenEntry() throws {
        let m = TestMachine()
        m.addSMMU("smmu0")
        let driver = try m.registerSMMU("smmu0")
        var devices: [DeviceID] = []
        for i in 0..<6 {
            devices.append(try m.core.addDevice(.platform("d\(i)", iommu: FirmwareIOMMUSpec(iommu: "smmu0", streamIDs: [StreamID(UInt32(0x100 + i))]))))
            #expect(driver.checkConsistency() == [])
        }
        try m.core.removeDevice(devices.removeFirst())
        #expect(driver.checkConsistency() == [])
        #expect(m.core.checkConsistency() == [])
        // Break it: an entry loses a user the master still names, and its register is rewritten.
        let index = try #require(driver.streamMapIndices(of: devices[0])?.first)
        driver.state.withLock { $0.entries[index].users = [] }
        m.smmus["smmu0"]!.writeSMR(index, 0)
        let problems = driver.checkConsistency()
        #expect(problems.contains { $0.message.contains("count 1 but 0 users") })
        #expect(problems.contains { $0.message.contains("SMR\(index) register") })
        #expect(problems.contains { $0.message.contains("does not list it") })
    }
}
