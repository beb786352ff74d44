import IOMMUBase
import IOMMUCore

// The `iommu` trace system's seven events exist once, as IOMMUCore's `IOMMUTraceEvent` (what
// the core emits); a parsed body converts to and from it, and renders through it.

extension TraceEventBody {
    /// The body the parser reads from the line IOMMUCore emits for `event`.
    public init(_ event: IOMMUTraceEvent) {
        switch event {
        case let .addDeviceToGroup(groupID, device):
            self = .addDeviceToGroup(GroupEvent(groupID: Int32(truncatingIfNeeded: groupID), device: device))
        case let .removeDeviceFromGroup(groupID, device):
            self = .removeDeviceFromGroup(GroupEvent(groupID: Int32(truncatingIfNeeded: groupID), device: device))
        case let .attachDeviceToDomain(device):
            self = .attachDeviceToDomain(DeviceEvent(device: device))
        case let .detachDeviceFromDomain(device):
            self = .detachDeviceFromDomain(DeviceEvent(device: device))
        case let .map(iova, paddr, size):
            self = .map(MapEvent(iova: IOVA(iova), paddr: PhysAddr(paddr), length: size))
        case let .unmap(iova, size, unmappedSize):
            self = .unmap(UnmapEvent(iova: IOVA(iova), length: size, unmappedLength: unmappedSize))
        case let .ioPageFault(driver, device, iova, flags):
            self = .ioPageFault(IOPageFaultEvent(driver: driver, device: device, iova: IOVA(iova), flags: UInt32(bitPattern: flags)))
        }
    }

    /// The core's value of an `iommu` trace-system event; nil for the DMA events, markers and
    /// events of other systems.
    public var iommuEvent: IOMMUTraceEvent? {
        switch self {
        case .addDeviceToGroup(let e): .addDeviceToGroup(groupID: Int(e.groupID), device: e.device)
        case .removeDeviceFromGroup(let e): .removeDeviceFromGroup(groupID: Int(e.groupID), device: e.device)
        case .attachDeviceToDomain(let e): .attachDeviceToDomain(device: e.device)
        case .detachDeviceFromDomain(let e): .detachDeviceFromDomain(device: e.device)
        case .map(let e): .map(iova: e.iova.rawValue, paddr: e.paddr.rawValue, size: e.length)
        case .unmap(let e): .unmap(iova: e.iova.rawValue, size: e.length, unmappedSize: e.unmappedLength)
        case .ioPageFault(let e):
            .ioPageFault(driver: e.driver, device: e.device, iova: e.iova.rawValue, flags: Int32(bitPattern: e.flags))
        case .dmaMapPage, .dmaUnmapPage, .dmaMapSG, .dmaUnmapSG, .dmaAlloc, .dmaFree, .tracingMarkWrite, .other: nil
        }
    }
}
