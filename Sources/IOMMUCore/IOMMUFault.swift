import IOMMUBase

/// Why a translation failed, as the hardware model saw it.
public enum IOMMUFaultReason: Hashable, Sendable, CaseIterable {
    /// No valid descriptor for the address.
    case translation
    /// A descriptor exists but forbids the access.
    case permission
    /// Access flag not set.
    case accessFlag
    /// The address is beyond the input/output address size.
    case addressSize
    /// The device's DMA is blocked: blocking domain, no domain, or not probed (deferred).
    case blocked
    /// The stream ID matches no stream-map entry.
    case unidentifiedStream
    /// Any other fault (external abort, TLB conflict, …).
    case other
}

/// One IOMMU fault: which device (and stream), which address, read or write, and why.
///
/// Linux passes `(domain, dev, iova, flags)` to `report_iommu_fault()`; the record also keeps
/// the stream and the reason, which the trace does not print.
public struct IOMMUFault: Hashable, Sendable, CustomStringConvertible {
    public var device: DeviceID
    public var streamID: StreamID?
    public var iova: IOVA
    public var isWrite: Bool
    public var reason: IOMMUFaultReason

    public init(device: DeviceID, streamID: StreamID? = nil, iova: IOVA, isWrite: Bool, reason: IOMMUFaultReason) {
        self.device = device
        self.streamID = streamID
        self.iova = iova
        self.isWrite = isWrite
        self.reason = reason
    }

    /// Linux's fault flags: `IOMMU_FAULT_READ` = 0, `IOMMU_FAULT_WRITE` = 1.
    public var flags: Int32 { isWrite ? 1 : 0 }

    public var description: String {
        "\(reason) fault on \(isWrite ? "write" : "read") at iova \(iova) from \(device)"
            + (streamID.map { " (\($0))" } ?? "")
    }
}

/// A per-domain fault handler. Returns `nil` when it handled the fault (Linux: 0), otherwise an
/// errno the reporting driver sees (Linux: e.g. -ENOSYS → the driver logs "Unhandled context
/// fault").
///
/// Linux: `iommu_fault_handler_t`. Called on the reporting (hardware) thread, without any core
/// lock held.
public typealias IOMMUFaultHandler = @Sendable (IOMMUFault) -> Errno?
