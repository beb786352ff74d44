import IOMMUBase

/// One event line of a Linux ftrace text trace:
/// `TASK-PID [CPU] FLAGS TIMESTAMP: EVENT: BODY`.
///
/// Linux: the default `trace` output of `kernel/trace/trace_output.c` (`trace_print_context`
/// followed by the event's `print fmt`).
public struct TraceEvent: Hashable, Sendable {
    /// The task's `comm` (may contain spaces and dashes), e.g. `kworker/u4:0` or `<idle>`.
    public var task: String
    /// The task's PID (0 for the idle task).
    public var pid: Int32
    /// The CPU the event was recorded on (`[000]`).
    public var cpu: UInt32
    /// The latency-format flags column (`d.h1.`).
    public var flags: TraceFlags
    /// The timestamp column.
    public var timestamp: TraceTimestamp
    /// The event name and its decoded body.
    public var body: TraceEventBody

    public init(
        task: String, pid: Int32, cpu: UInt32, flags: TraceFlags, timestamp: TraceTimestamp,
        body: TraceEventBody
    ) {
        self.task = task
        self.pid = pid
        self.cpu = cpu
        self.flags = flags
        self.timestamp = timestamp
        self.body = body
    }

    /// The event's kind (also for unknown events, which are `.other`).
    @inlinable public var kind: TraceEventKind { body.kind }
}

/// The flags column: up to 8 characters, usually 5 (`irqs-off`, `need-resched`,
/// `hardirq/softirq`, `preempt-depth`, `migrate-disable`).
public struct TraceFlags: Hashable, Sendable, CustomStringConvertible {
    /// The characters, packed little-endian (first character in the low byte).
    public var packed: UInt64
    /// How many characters the column has.
    public var count: UInt8

    public init(packed: UInt64, count: UInt8) {
        self.packed = packed
        self.count = count
    }

    /// Flags from text such as `"d.h1."` (at most 8 ASCII characters).
    public init?(_ text: String) {
        let bytes = Array(text.utf8)
        guard !bytes.isEmpty, bytes.count <= 8 else { return nil }
        var packed: UInt64 = 0
        for (index, byte) in bytes.enumerated() { packed |= UInt64(byte) << UInt64(8 * index) }
        self.init(packed: packed, count: UInt8(bytes.count))
    }

    /// The character at `index` (ASCII), or `nil` past the end.
    @inlinable public func character(at index: Int) -> UInt8? {
        index < Int(count) ? UInt8(truncatingIfNeeded: packed >> UInt64(8 * index)) : nil
    }

    /// The execution context character: the third flag (`.` process, `s` softirq, `h` hardirq,
    /// `H` hardirq inside softirq, `z`/`Z` NMI); `.` when the column is shorter.
    @inlinable public var contextCharacter: UInt8 { character(at: 2) ?? UInt8(ascii: ".") }

    /// True when the event ran in process context (not in an interrupt or NMI).
    @inlinable public var isProcessContext: Bool { contextCharacter == UInt8(ascii: ".") }

    public var description: String {
        var text = ""
        for index in 0..<Int(count) { text.unicodeScalars.append(Unicode.Scalar(character(at: index)!)) }
        return text
    }
}

/// The timestamp column, kept as printed: whole seconds and a fraction of `fractionDigits`
/// digits (6 for the `local` and `global` clocks).
public struct TraceTimestamp: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var seconds: UInt64
    /// The digits after the point, as an integer (`0.000123` → 123 with 6 digits).
    public var fraction: UInt32
    public var fractionDigits: UInt8

    public init(seconds: UInt64, fraction: UInt32, fractionDigits: UInt8 = 6) {
        self.seconds = seconds
        self.fraction = fraction
        self.fractionDigits = fractionDigits
    }

    /// Nanoseconds since the clock's origin (saturating).
    public var nanoseconds: UInt64 {
        var scaled = UInt64(fraction)
        var digits = Int(fractionDigits)
        while digits < 9 { scaled &*= 10; digits += 1 }
        while digits > 9 { scaled /= 10; digits -= 1 }
        let (whole, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        return overflow ? UInt64.max : whole &+ scaled
    }

    public static func < (a: Self, b: Self) -> Bool { a.nanoseconds < b.nanoseconds }

    /// As printed: `3.099678`.
    public var description: String {
        let digits = String(fraction)
        return String(seconds) + "." + String(repeating: "0", count: max(0, Int(fractionDigits) - digits.count))
            + digits
    }
}

/// The DMA direction printed by the `dma` events' `dir=` field.
///
/// Linux: `enum dma_data_direction`.
public enum DMADirection: UInt8, Hashable, Sendable, CaseIterable, CustomStringConvertible {
    case bidirectional = 0
    case toDevice = 1
    case fromDevice = 2
    case none = 3

    /// The kernel's spelling: `BIDIRECTIONAL`, `TO_DEVICE`, `FROM_DEVICE`, `NONE`.
    public var description: String {
        switch self {
        case .bidirectional: "BIDIRECTIONAL"
        case .toDevice: "TO_DEVICE"
        case .fromDevice: "FROM_DEVICE"
        case .none: "NONE"
        }
    }
}

/// Every event name the parser decodes, plus `.other` for the rest.
public enum TraceEventKind: UInt8, Hashable, Sendable, CaseIterable, CustomStringConvertible {
    case addDeviceToGroup, removeDeviceFromGroup, attachDeviceToDomain, detachDeviceFromDomain
    case map, unmap, ioPageFault
    case dmaMapPage, dmaUnmapPage, dmaMapSG, dmaUnmapSG, dmaAlloc, dmaFree
    case tracingMarkWrite
    case other

    /// The typed kinds (everything but `.other`), in the order reports list them.
    public static let typed: [TraceEventKind] = allCases.filter { $0 != .other }

    /// The kernel's event name (`add_device_to_group`, …); `other` for `.other`.
    public var name: String {
        switch self {
        case .addDeviceToGroup: "add_device_to_group"
        case .removeDeviceFromGroup: "remove_device_from_group"
        case .attachDeviceToDomain: "attach_device_to_domain"
        case .detachDeviceFromDomain: "detach_device_from_domain"
        case .map: "map"
        case .unmap: "unmap"
        case .ioPageFault: "io_page_fault"
        case .dmaMapPage: "dma_map_page"
        case .dmaUnmapPage: "dma_unmap_page"
        case .dmaMapSG: "dma_map_sg"
        case .dmaUnmapSG: "dma_unmap_sg"
        case .dmaAlloc: "dma_alloc"
        case .dmaFree: "dma_free"
        case .tracingMarkWrite: "tracing_mark_write"
        case .other: "other"
        }
    }

    public var description: String { name }
}

/// The decoded body of an event, one case per event the parser knows.
///
/// Every typed case renders back to the kernel's exact text (`renderedBody`).
public enum TraceEventBody: Hashable, Sendable {
    case addDeviceToGroup(GroupEvent)
    case removeDeviceFromGroup(GroupEvent)
    case attachDeviceToDomain(DeviceEvent)
    case detachDeviceFromDomain(DeviceEvent)
    case map(MapEvent)
    case unmap(UnmapEvent)
    case ioPageFault(IOPageFaultEvent)
    case dmaMapPage(DMAMapPageEvent)
    case dmaUnmapPage(DMAUnmapPageEvent)
    case dmaMapSG(DMAMapSGEvent)
    case dmaUnmapSG(DMAUnmapSGEvent)
    case dmaAlloc(DMAAllocEvent)
    case dmaFree(DMAFreeEvent)
    /// `tracing_mark_write: TEXT` (a user-space marker, e.g. `PHASE …`).
    case tracingMarkWrite(text: String)
    /// Any other event: its name and its body text, undecoded.
    case other(name: String, body: String)

    @inlinable public var kind: TraceEventKind {
        switch self {
        case .addDeviceToGroup: .addDeviceToGroup
        case .removeDeviceFromGroup: .removeDeviceFromGroup
        case .attachDeviceToDomain: .attachDeviceToDomain
        case .detachDeviceFromDomain: .detachDeviceFromDomain
        case .map: .map
        case .unmap: .unmap
        case .ioPageFault: .ioPageFault
        case .dmaMapPage: .dmaMapPage
        case .dmaUnmapPage: .dmaUnmapPage
        case .dmaMapSG: .dmaMapSG
        case .dmaUnmapSG: .dmaUnmapSG
        case .dmaAlloc: .dmaAlloc
        case .dmaFree: .dmaFree
        case .tracingMarkWrite: .tracingMarkWrite
        case .other: .other
        }
    }

    /// The event name as printed (for `.other`, the unknown event's own name).
    public var name: String {
        if case .other(let name, _) = self { return name }
        return kind.name
    }
}

// MARK: - Payloads

/// `add_device_to_group` / `remove_device_from_group`: `IOMMU: groupID=%d device=%s`.
public struct GroupEvent: Hashable, Sendable {
    public var groupID: Int32
    public var device: String
    public init(groupID: Int32, device: String) {
        self.groupID = groupID
        self.device = device
    }
}

/// `attach_device_to_domain` / `detach_device_from_domain`: `IOMMU: device=%s`.
public struct DeviceEvent: Hashable, Sendable {
    public var device: String
    public init(device: String) { self.device = device }
}

/// `map`: `IOMMU: iova=0x%016llx - 0x%016llx paddr=0x%016llx size=%zu` (the second address is
/// `iova + size`, exclusive, wrapping at 2^64 as the kernel's u64 arithmetic does).
public struct MapEvent: Hashable, Sendable {
    public var iova: IOVA
    public var paddr: PhysAddr
    /// Bytes mapped (Linux: `size`).
    public var length: UInt64
    public init(iova: IOVA, paddr: PhysAddr, length: UInt64) {
        self.iova = iova
        self.paddr = paddr
        self.length = length
    }
}

/// `unmap`: `IOMMU: iova=0x%016llx - 0x%016llx size=%zu unmapped_size=%zu`.
public struct UnmapEvent: Hashable, Sendable {
    public var iova: IOVA
    /// Bytes asked to unmap (Linux: `size`).
    public var length: UInt64
    /// Bytes the driver reported unmapped (Linux: `unmapped_size`).
    public var unmappedLength: UInt64
    public init(iova: IOVA, length: UInt64, unmappedLength: UInt64) {
        self.iova = iova
        self.length = length
        self.unmappedLength = unmappedLength
    }
}

/// `io_page_fault`: `IOMMU:%s %s iova=0x%016llx flags=0x%04x` (driver, then device).
public struct IOPageFaultEvent: Hashable, Sendable {
    public var driver: String
    public var device: String
    public var iova: IOVA
    public var flags: UInt32
    public init(driver: String, device: String, iova: IOVA, flags: UInt32) {
        self.driver = driver
        self.device = device
        self.iova = iova
        self.flags = flags
    }
}

/// `dma_map_page`: `%s dir=%s dma_addr=%llx size=%zu phys_addr=%llx attrs=%s`.
public struct DMAMapPageEvent: Hashable, Sendable {
    public var device: String
    public var direction: DMADirection
    /// Linux: `dma_addr`; `DMA_MAPPING_ERROR` (all ones) when the mapping failed.
    public var dmaAddress: IOVA
    public var length: UInt64
    public var physAddress: PhysAddr
    /// The `attrs` flags as printed (`NO_WARN`, `SKIP_CPU_SYNC|…`, or empty).
    public var attrs: String
    public init(device: String, direction: DMADirection, dmaAddress: IOVA, length: UInt64, physAddress: PhysAddr, attrs: String) {
        self.device = device
        self.direction = direction
        self.dmaAddress = dmaAddress
        self.length = length
        self.physAddress = physAddress
        self.attrs = attrs
    }
}

/// `dma_unmap_page`: `%s dir=%s dma_addr=%llx size=%zu attrs=%s`.
public struct DMAUnmapPageEvent: Hashable, Sendable {
    public var device: String
    public var direction: DMADirection
    public var dmaAddress: IOVA
    public var length: UInt64
    public var attrs: String
    public init(device: String, direction: DMADirection, dmaAddress: IOVA, length: UInt64, attrs: String) {
        self.device = device
        self.direction = direction
        self.dmaAddress = dmaAddress
        self.length = length
        self.attrs = attrs
    }
}

/// `dma_map_sg`: `%s dir=%s nents=%d/%d ents=%d/%d%s dma_addrs=%s sizes=%s phys_addrs=%s attrs=%s`.
///
/// The lists hold at most 128 entries; `truncated` is the ` [TRUNCATED]` marker.
public struct DMAMapSGEvent: Hashable, Sendable {
    public var device: String
    public var direction: DMADirection
    /// Scatterlist entries printed (≤ 128) and in total.
    public var printedEntryCount: Int32
    public var entryCount: Int32
    /// DMA segments (after IOVA merging) printed (≤ 128) and in total.
    public var printedSegmentCount: Int32
    public var segmentCount: Int32
    public var truncated: Bool
    public var dmaAddresses: [UInt64]
    /// Segment lengths (Linux: `lengths`, printed as `sizes=`).
    public var segmentLengths: [UInt64]
    public var physAddresses: [UInt64]
    public var attrs: String
    public init(
        device: String, direction: DMADirection, printedEntryCount: Int32, entryCount: Int32,
        printedSegmentCount: Int32, segmentCount: Int32, truncated: Bool, dmaAddresses: [UInt64],
        segmentLengths: [UInt64], physAddresses: [UInt64], attrs: String
    ) {
        self.device = device
        self.direction = direction
        self.printedEntryCount = printedEntryCount
        self.entryCount = entryCount
        self.printedSegmentCount = printedSegmentCount
        self.segmentCount = segmentCount
        self.truncated = truncated
        self.dmaAddresses = dmaAddresses
        self.segmentLengths = segmentLengths
        self.physAddresses = physAddresses
        self.attrs = attrs
    }
}

/// `dma_unmap_sg`: `%s dir=%s phys_addrs=%s attrs=%s`.
public struct DMAUnmapSGEvent: Hashable, Sendable {
    public var device: String
    public var direction: DMADirection
    public var physAddresses: [UInt64]
    public var attrs: String
    public init(device: String, direction: DMADirection, physAddresses: [UInt64], attrs: String) {
        self.device = device
        self.direction = direction
        self.physAddresses = physAddresses
        self.attrs = attrs
    }
}

/// `dma_alloc`: `%s dir=%s dma_addr=%llx size=%zu virt_addr=%p flags=%s attrs=%s`.
public struct DMAAllocEvent: Hashable, Sendable {
    public var device: String
    public var direction: DMADirection
    public var dmaAddress: IOVA
    public var length: UInt64
    /// The hashed `%p` pointer, as printed (meaningless).
    public var virtAddress: String
    /// The GFP flags as printed (`GFP_KERNEL|__GFP_ZERO`, or `none`).
    public var gfpFlags: String
    public var attrs: String
    public init(device: String, direction: DMADirection, dmaAddress: IOVA, length: UInt64, virtAddress: String, gfpFlags: String, attrs: String) {
        self.device = device
        self.direction = direction
        self.dmaAddress = dmaAddress
        self.length = length
        self.virtAddress = virtAddress
        self.gfpFlags = gfpFlags
        self.attrs = attrs
    }
}

/// `dma_free`: `%s dir=%s dma_addr=%llx size=%zu virt_addr=%p attrs=%s`.
public struct DMAFreeEvent: Hashable, Sendable {
    public var device: String
    public var direction: DMADirection
    public var dmaAddress: IOVA
    public var length: UInt64
    public var virtAddress: String
    public var attrs: String
    public init(device: String, direction: DMADirection, dmaAddress: IOVA, length: UInt64, virtAddress: String, attrs: String) {
        self.device = device
        self.direction = direction
        self.dmaAddress = dmaAddress
        self.length = length
        self.virtAddress = virtAddress
        self.attrs = attrs
    }
}
