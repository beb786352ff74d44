import Synchronization
import IOMMUBase

/// One event of Linux's `iommu` trace system, as a typed value.
///
/// Linux: `include/trace/events/iommu.h`. `name` is the event name, `text` the `TP_printk`
/// output, `ftraceText` the two as ftrace prints them after the common header
/// (`"map: IOMMU: iova=0x…"`). The `map` and `unmap` cases hold numbers only, so emitting them on
/// the map/unmap path never allocates; device and driver names are strings (emitted at probe,
/// attach and fault time only).
public enum IOMMUTraceEvent: Hashable, Sendable, CustomStringConvertible {
    /// Linux: `add_device_to_group` (class `iommu_group_event`).
    case addDeviceToGroup(groupID: Int, device: String)
    /// Linux: `remove_device_from_group` (class `iommu_group_event`).
    case removeDeviceFromGroup(groupID: Int, device: String)
    /// Linux: `attach_device_to_domain` (class `iommu_device_event`).
    case attachDeviceToDomain(device: String)
    /// Linux: `detach_device_from_domain` (class `iommu_device_event`).
    case detachDeviceFromDomain(device: String)
    /// Linux: `map` — emitted once per successful `iommu_map` with the original arguments.
    case map(iova: UInt64, paddr: UInt64, size: UInt64)
    /// Linux: `unmap` — emitted at the end of every validated `iommu_unmap`.
    case unmap(iova: UInt64, size: UInt64, unmappedSize: UInt64)
    /// Linux: `io_page_fault` (class `iommu_error`); `flags` 0 = read, 1 = write.
    case ioPageFault(driver: String, device: String, iova: UInt64, flags: Int32)

    /// The event name, e.g. "add_device_to_group".
    public var name: String {
        switch self {
        case .addDeviceToGroup: "add_device_to_group"
        case .removeDeviceFromGroup: "remove_device_from_group"
        case .attachDeviceToDomain: "attach_device_to_domain"
        case .detachDeviceFromDomain: "detach_device_from_domain"
        case .map: "map"
        case .unmap: "unmap"
        case .ioPageFault: "io_page_fault"
        }
    }

    /// The `TP_printk` text, exactly as Linux formats it.
    ///
    /// `map`/`unmap` print the exclusive end `iova + size` as a 64-bit (wrapping) sum, as the C
    /// code does.
    public var text: String {
        switch self {
        case let .addDeviceToGroup(groupID, device), let .removeDeviceFromGroup(groupID, device):
            return "IOMMU: groupID=\(groupID) device=\(device)"
        case let .attachDeviceToDomain(device), let .detachDeviceFromDomain(device):
            return "IOMMU: device=\(device)"
        case let .map(iova, paddr, size):
            return "IOMMU: iova=\(hex16(iova)) - \(hex16(iova &+ size)) paddr=\(hex16(paddr)) size=\(size)"
        case let .unmap(iova, size, unmappedSize):
            return "IOMMU: iova=\(hex16(iova)) - \(hex16(iova &+ size)) size=\(size) unmapped_size=\(unmappedSize)"
        case let .ioPageFault(driver, device, iova, flags):
            let flagDigits = String(UInt32(bitPattern: flags), radix: 16)
            let padded = String(repeating: "0", count: max(0, 4 - flagDigits.count)) + flagDigits
            return "IOMMU:\(driver) \(device) iova=\(hex16(iova)) flags=0x\(padded)"
        }
    }

    /// `"<name>: <text>"`, the part of an ftrace line after the task/CPU/timestamp header.
    public var ftraceText: String { name + ": " + text }

    public var description: String { ftraceText }
}

/// Where trace events go; injected into `IOMMUCore` like the `WarningSink`.
///
/// Called on the map/unmap path of every domain, possibly from many threads at once; an
/// implementation must be thread-safe and should be cheap. Linux: the `iommu` tracepoints.
public protocol IOMMUTraceSink: Sendable {
    /// False if events are thrown away, so emitters can skip building them. Default true.
    var isEnabled: Bool { get }
    func record(_ event: IOMMUTraceEvent)
}

extension IOMMUTraceSink {
    public var isEnabled: Bool { true }
}

/// Discards every event (the default).
public struct DiscardingTraceSink: IOMMUTraceSink {
    public init() {}
    public var isEnabled: Bool { false }
    public func record(_ event: IOMMUTraceEvent) {}
}

/// Keeps every event in order (tests, the CLI).
public final class RecordingTraceSink: IOMMUTraceSink {
    private let storage = IOMMUMutex<[IOMMUTraceEvent]>([])

    public init() {}

    public func record(_ event: IOMMUTraceEvent) {
        storage.withLock { $0.append(event) }
    }

    /// The events so far, oldest first.
    public var events: [IOMMUTraceEvent] { storage.withLock { $0 } }
    /// The events so far as ftrace text (`"map: IOMMU: iova=…"`).
    public var lines: [String] { events.map(\.ftraceText) }

    /// Returns the events so far and forgets them.
    public func drain() -> [IOMMUTraceEvent] {
        storage.withLock { events in
            defer { events.removeAll() }
            return events
        }
    }
}
