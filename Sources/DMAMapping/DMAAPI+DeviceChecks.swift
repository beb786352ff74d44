import IOMMUBase
import IOMMUCore

/// What the device-side checker found about one device access.
public struct DMADeviceAccessReport: Hashable, Sendable, CustomStringConvertible {
    public var warning: IOMMUWarning
    /// The mapping the access hit (live) or last covered the address (unmapped), with who
    /// mapped/unmapped it and when.
    public var mapping: DMAMappingRecord?

    public var description: String {
        mapping.map { "\(warning); mapping: \($0)" } ?? "\(warning)"
    }
}

extension DMAAPI {
    /// Device-side check (no Linux counterpart): called by a hardware model (or a test's device)
    /// for each DMA access a device makes, after translation. Reports an access through a stale
    /// IOTLB entry to an IOVA the driver already unmapped, and a device write into a mapping made
    /// to-device only (which the page table would refuse; the check names the mapping).
    ///
    /// - Parameters:
    ///   - staleTLB: the translation came from an IOTLB entry whose page-table entry was since
    ///     cleared or changed.
    /// - Returns: a report (also sent to the warning sink), or nil if the access was fine.
    @discardableResult
    public func deviceAccessed(device id: DeviceID, iova: IOVA, length: UInt64, isWrite: Bool, staleTLB: Bool) -> DMADeviceAccessReport? {
        guard let debug = device(id)?.cookie?.debug else { return nil }
        let (live, unmapped) = debug.history(of: iova.rawValue)
        let now = clock.nanoseconds
        var report: DMADeviceAccessReport?
        if staleTLB || live == nil, let unmapped, let at = unmapped.unmappedAt, staleTLB {
            report = DMADeviceAccessReport(
                warning: .dmaStaleTLBAccess(device: id, iova: iova, isWrite: isWrite, unmappedAgoNanoseconds: now - at), mapping: unmapped)
        } else if isWrite, let live, live.direction == .toDevice {
            report = DMADeviceAccessReport(warning: .dmaDeviceWriteToToDeviceMapping(device: id, iova: iova, size: length), mapping: live)
        }
        if let report { warnings.warn(report.warning) }
        return report
    }
}
