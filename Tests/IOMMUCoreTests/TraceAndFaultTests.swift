import IOMMUBase
import IOMMUCore
import IOMMUTestSupport
import Testing

@Suite("Trace events")
struct TraceEventTests {
    @Test func eachEventPrintsLinuxsFormat() {
        #expect(IOMMUTraceEvent.addDeviceToGroup(groupID: 3, device: "0000:00:03.0").ftraceText
            == "add_device_to_group: IOMMU: groupID=3 device=0000:00:03.0")
        #expect(IOMMUTraceEvent.removeDeviceFromGroup(groupID: 12, device: "gpu").ftraceText
            == "remove_device_from_group: IOMMU: groupID=12 device=gpu")
        #expect(IOMMUTraceEvent.attachDeviceToDomain(device: "0000:00:03.0").ftraceText
            == "attach_device_to_domain: IOMMU: device=0000:00:03.0")
        #expect(IOMMUTraceEvent.detachDeviceFromDomain(device: "0000:00:03.0").ftraceText
            == "detach_device_from_domain: IOMMU: device=0000:00:03.0")
        #expect(IOMMUTraceEvent.map(iova: 0xFFFF_F000, paddr: 0x8_0000_0000, size: 0x1000).ftraceText
            == "map: IOMMU: iova=0x00000000fffff000 - 0x0000000100000000 paddr=0x0000000800000000 size=4096")
        #expect(IOMMUTraceEvent.unmap(iova: 0x1000, size: 0x2000, unmappedSize: 0x1000).ftraceText
            == "unmap: IOMMU: iova=0x0000000000001000 - 0x0000000000003000 size=8192 unmapped_size=4096")
        #expect(IOMMUTraceEvent.ioPageFault(driver: "arm-smmu", device: "0000:00:03.0", iova: 0xDEAD_B000, flags: 1).ftraceText
            == "io_page_fault: IOMMU:arm-smmu 0000:00:03.0 iova=0x00000000deadb000 flags=0x0001")
    }

    @Test func theExclusiveEndWrapsAsIn64BitC() {
        #expect(IOMMUTraceEvent.map(iova: 0xFFFF_FFFF_FFFF_F000, paddr: 0, size: 0x1000).text
            == "IOMMU: iova=0xfffffffffffff000 - 0x0000000000000000 paddr=0x0000000000000000 size=4096")
    }

    /// The first device of a group is added, then the new default domain is attached; a device
    /// joining a group that has a domain is attached first and added after (Linux 6.2 order).
    @Test func probeAttachAndRemoveEmitInOrder() throws {
        let h = Harness()
        try h.core.registerIOMMU(name: "smmu0", driver: FakeIOMMUDriver())
        let a = try h.core.addDevice(.pci(pciAddress(0, 3, 0), iommu: spec("smmu0", 1), acsIsolated: false))
        _ = try h.core.addDevice(.pci(pciAddress(0, 3, 1), iommu: spec("smmu0", 2), acsIsolated: false))
        try h.core.removeDevice(a)
        #expect(h.traceLines == [
            "add_device_to_group: IOMMU: groupID=0 device=0000:00:03.0",
            "attach_device_to_domain: IOMMU: device=0000:00:03.0",
            "attach_device_to_domain: IOMMU: device=0000:00:03.1",
            "add_device_to_group: IOMMU: groupID=0 device=0000:00:03.1",
            "remove_device_from_group: IOMMU: groupID=0 device=0000:00:03.0",
        ])
    }

    @Test func aDiscardingSinkIsDisabled() {
        #expect(!DiscardingTraceSink().isEnabled)
        #expect(RecordingTraceSink().isEnabled)
    }
}

@Suite("Fault reporting")
struct FaultTests {
    func setUp() throws -> (Harness, DeviceID) {
        let h = Harness()
        try h.core.registerIOMMU(name: "smmu0", driver: FakeIOMMUDriver(name: "arm-smmu"))
        let id = try h.core.addDevice(.pci(pciAddress(0, 3), iommu: spec("smmu0", 0x30, 0x31)))
        _ = h.trace.drain()
        return (h, id)
    }

    @Test func aHandlerGetsTheRecordAndTheTraceGetsTheEvent() throws {
        let (h, id) = try setUp()
        let domain = try #require(h.core.domain(for: id))
        let seen = RecordingFaults()
        domain.setFaultHandler { fault in
            seen.append(fault)
            return nil
        }
        let fault = IOMMUFault(device: id, streamID: StreamID(0x31), iova: IOVA(0x1234_5000), isWrite: true, reason: .translation)
        #expect(h.core.reportFault(fault) == nil)
        #expect(seen.faults == [fault])
        #expect(domain.faultCount == 1)
        #expect(h.traceLines == ["io_page_fault: IOMMU:arm-smmu 0000:00:03.0 iova=0x0000000012345000 flags=0x0001"])
    }

    @Test func withoutAHandlerTheResultIsENOSYSAndTheEventIsStillEmitted() throws {
        let (h, id) = try setUp()
        let fault = IOMMUFault(device: id, iova: IOVA(0x8000), isWrite: false, reason: .permission)
        #expect(h.core.reportFault(fault) == .notImplemented)
        #expect(h.traceLines == ["io_page_fault: IOMMU:arm-smmu 0000:00:03.0 iova=0x0000000000008000 flags=0x0000"])
    }

    @Test func aHandlerMayRefuseWithAnErrno() throws {
        let (h, id) = try setUp()
        h.core.domain(for: id)!.setFaultHandler { _ in .noSuchDevice }
        #expect(h.core.reportFault(IOMMUFault(device: id, iova: IOVA(0), isWrite: false, reason: .translation)) == .noSuchDevice)
        h.core.domain(for: id)!.setFaultHandler(nil)
        #expect(h.core.reportFault(IOMMUFault(device: id, iova: IOVA(0), isWrite: false, reason: .translation)) == .notImplemented)
    }

    @Test func faultsOfUnprobedDevicesAreTracedAndUnknownDevicesAreENODEV() throws {
        let h = Harness()
        try h.core.registerIOMMU(name: "smmu0", driver: FakeIOMMUDriver(name: "arm-smmu") { $0.deferProbes = 1 })
        let id = try h.core.addDevice(.platform("dma@1000", iommu: spec("smmu0", 5)))
        #expect(h.core.device(onIOMMU: "smmu0", streamID: StreamID(5)) == id)
        #expect(h.core.device(onIOMMU: "smmu0", streamID: StreamID(6)) == nil)
        #expect(h.core.dmaPath(onIOMMU: "smmu0", streamID: StreamID(5))?.device == id)
        #expect(h.core.dmaPath(onIOMMU: "smmu0", streamID: StreamID(5))?.path.isBlocked == true)
        #expect(h.core.dmaPath(onIOMMU: "smmu0", streamID: StreamID(6)) == nil)
        let fault = IOMMUFault(device: id, streamID: StreamID(5), iova: IOVA(0x1000), isWrite: true, reason: .blocked)
        #expect(h.core.reportFault(fault) == .notImplemented)
        #expect(h.traceLines == ["io_page_fault: IOMMU:arm-smmu dma@1000 iova=0x0000000000001000 flags=0x0001"])
        #expect(h.core.reportFault(IOMMUFault(device: DeviceID(99), iova: IOVA(0), isWrite: false, reason: .other)) == .noSuchDevice)
    }
}

import Synchronization

final class RecordingFaults: Sendable {
    private let storage = IOMMUMutex<[IOMMUFault]>([])
    func append(_ fault: IOMMUFault) { storage.withLock { $0.append(fault) } }
    var faults: [IOMMUFault] { storage.withLock { $0 } }
}
