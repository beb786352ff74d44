import IOMMUBase
import IOMMUCore
import IOPageTable

/// A fault as the event queue reports it (`struct virtio_iommu_fault`).
public struct VirtioFaultEvent: Hashable, Sendable, CustomStringConvertible {
    /// `VIRTIO_IOMMU_FAULT_R_UNKNOWN` 0, `_DOMAIN` 1, `_MAPPING` 2.
    public var reason: UInt8
    /// `READ` 1 / `WRITE` 2 (the access type) | `ADDRESS` 0x100.
    public var flags: UInt32
    public var endpoint: UInt32
    public var address: UInt64

    public init(reason: UInt8, flags: UInt32, endpoint: UInt32, address: UInt64) {
        self.reason = reason
        self.flags = flags
        self.endpoint = endpoint
        self.address = address
    }

    public var description: String {
        let name = ["unknown", "domain", "mapping"][Int(min(reason, 2))]
        return "fault \(name) endpoint \(endpoint) flags 0x" + String(flags, radix: 16) + " address 0x" + String(address, radix: 16)
    }
}

/// The outcome of an endpoint DMA.
public enum VirtioDMAOutcome: Hashable, Sendable {
    /// Every byte moved.
    case completed
    /// Nothing moved; the fault was reported (event queue and core).
    case faulted(VirtioFaultEvent)
}

/// How one address of an endpoint translates.
public enum VirtioTranslation: Hashable, Sendable {
    /// Identity (bypass, bypass domain or MSI window).
    case bypass
    /// Through the domain's page table.
    case translated(PhysAddr)
    case fault(VirtioFaultEvent)
}

extension VirtioIOMMUDevice {
    /// An endpoint reads `buffer.count` bytes at `iova` (a DMA read of memory). Translation is
    /// piecewise (a buffer may span adjacent mappings and leaves); every piece is translated
    /// before any byte moves, so a fault moves nothing. Allocation-free.
    public func endpointDMARead(endpoint: UInt32, iova: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> VirtioDMAOutcome {
        moveBytes(endpoint: endpoint, iova: iova, length: buffer.count, write: false) { paddr, offset, length throws(IOMMUError) in
            try memory.read(paddr, into: UnsafeMutableRawBufferPointer(rebasing: buffer[offset..<(offset + length)]))
        }
    }

    /// An endpoint writes `bytes` at `iova`. See `endpointDMARead`.
    public func endpointDMAWrite(endpoint: UInt32, iova: UInt64, from bytes: UnsafeRawBufferPointer) -> VirtioDMAOutcome {
        moveBytes(endpoint: endpoint, iova: iova, length: bytes.count, write: true) { paddr, offset, length throws(IOMMUError) in
            try memory.write(paddr, from: UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + length)]))
        }
    }

    /// Array conveniences.
    public func endpointDMARead(endpoint: UInt32, iova: UInt64, count: Int) -> (bytes: [UInt8], outcome: VirtioDMAOutcome) {
        var bytes = [UInt8](repeating: 0, count: count)
        let outcome = bytes.withUnsafeMutableBytes { endpointDMARead(endpoint: endpoint, iova: iova, into: $0) }
        return (bytes, outcome)
    }

    public func endpointDMAWrite(endpoint: UInt32, iova: UInt64, bytes: [UInt8]) -> VirtioDMAOutcome {
        bytes.withUnsafeBytes { endpointDMAWrite(endpoint: endpoint, iova: iova, from: $0) }
    }

    /// How one access would translate, without reporting anything.
    public func translate(endpoint: UInt32, iova: UInt64, write: Bool) -> VirtioTranslation {
        state.withLock { s in
            switch translatePiece(s, endpoint, iova, remaining: 1, write: write) {
            case .identity: .bypass
            case .translated(let pa, _): .translated(pa)
            case .fault(let fault, _): .fault(fault)
            }
        }
    }

    // MARK: - Internals

    enum PieceResult {
        case identity(length: UInt64)
        case translated(PhysAddr, length: UInt64)
        case fault(VirtioFaultEvent, IOMMUFaultReason)
    }

    /// Translates `[iova, iova + length)` piece by piece, twice under the lock: first to find a
    /// fault (nothing moves if there is one), then to move the bytes with `body(paddr, offset,
    /// length)`. Faults go to eventq under the lock and to the core after it is released.
    func moveBytes(
        endpoint: UInt32, iova: UInt64, length: Int, write: Bool,
        _ body: (PhysAddr, Int, Int) throws(IOMMUError) -> Void
    ) -> VirtioDMAOutcome {
        guard length > 0 else { return .completed }
        let access = write ? VirtioIOMMUWire.faultFlagWrite : VirtioIOMMUWire.faultFlagRead
        let physicalLimit = UInt64(1) << UInt64(memory.addressBits)
        let report: FaultReport? = state.withLock { s in
            func walk(moving: Bool) -> FaultReport? {
                guard !iova.addingReportingOverflow(UInt64(length) &- 1).overflow else {
                    // An access that wraps past 2^64: nothing can map it.
                    let fault = VirtioFaultEvent(
                        reason: VirtioIOMMUWire.faultReasonMapping, flags: access | VirtioIOMMUWire.faultFlagAddress,
                        endpoint: endpoint, address: iova)
                    return FaultReport(fault: fault, reason: .translation, device: s.endpoints[endpoint]?.device)
                }
                var address = iova
                var remaining = UInt64(length)
                var offset = 0
                while remaining > 0 {
                    let step: UInt64
                    let paddr: PhysAddr
                    switch translatePiece(s, endpoint, address, remaining: remaining, write: write) {
                    case .identity(let n):
                        (step, paddr) = (n, PhysAddr(address))
                    case .translated(let pa, let n):
                        (step, paddr) = (n, pa)
                    case .fault(let fault, let reason):
                        return FaultReport(fault: fault, reason: reason, device: s.endpoints[endpoint]?.device)
                    }
                    // Outside the physical address space (identity far up, or an IOVA range that
                    // wraps): a bus error, reported as a mapping fault at that address.
                    guard paddr.rawValue < physicalLimit, step <= physicalLimit &- paddr.rawValue else {
                        let fault = VirtioFaultEvent(
                            reason: VirtioIOMMUWire.faultReasonMapping, flags: access | VirtioIOMMUWire.faultFlagAddress,
                            endpoint: endpoint, address: address)
                        return FaultReport(fault: fault, reason: .translation, device: s.endpoints[endpoint]?.device)
                    }
                    if moving {
                        do throws(IOMMUError) { try body(paddr, offset, Int(step)) } catch {
                            let fault = VirtioFaultEvent(
                                reason: VirtioIOMMUWire.faultReasonMapping, flags: access | VirtioIOMMUWire.faultFlagAddress,
                                endpoint: endpoint, address: address)
                            return FaultReport(fault: fault, reason: .other, device: s.endpoints[endpoint]?.device)
                        }
                    }
                    address &+= step
                    remaining &-= step
                    offset &+= Int(step)  // ≤ length by construction
                }
                return nil
            }
            // Fast path: the whole access is one piece (one leaf, or identity) — walk once.
            if !iova.addingReportingOverflow(UInt64(length) &- 1).overflow {
                let single: PhysAddr? = switch translatePiece(s, endpoint, iova, remaining: UInt64(length), write: write) {
                case .identity(let n): n == UInt64(length) ? PhysAddr(iova) : nil
                case .translated(let pa, let n): n == UInt64(length) ? pa : nil
                case .fault: nil
                }
                if let single, single.rawValue < physicalLimit, UInt64(length) <= physicalLimit &- single.rawValue {
                    do throws(IOMMUError) {
                        try body(single, 0, length)
                        return nil
                    } catch {}  // fall through: the general path reports it
                }
            }
            let report = walk(moving: false) ?? walk(moving: true)
            if let report { deliverFault(&s, report.fault) }
            return report
        }
        guard let report else { return .completed }
        if let device = report.device {
            // Reported with no device lock held: the core runs fault handlers.
            core.reportFault(IOMMUFault(
                device: device, streamID: StreamID(endpoint), iova: IOVA(report.fault.address),
                isWrite: write, reason: report.reason))
        }
        return .faulted(report.fault)
    }

    /// Translates the piece of an access starting at `iova`: identity, a page-table translation
    /// (up to the end of the leaf), or a fault.
    func translatePiece(_ s: borrowing VirtioDeviceState, _ endpointID: UInt32, _ iova: UInt64, remaining: UInt64, write: Bool)
        -> PieceResult
    {
        let access = write ? VirtioIOMMUWire.faultFlagWrite : VirtioIOMMUWire.faultFlagRead
        func fault(_ reason: UInt8, _ coreReason: IOMMUFaultReason) -> PieceResult {
            .fault(VirtioFaultEvent(reason: reason, flags: access | VirtioIOMMUWire.faultFlagAddress, endpoint: endpointID, address: iova),
                   coreReason)
        }
        guard let endpoint = s.endpoints[endpointID] else {
            return fault(VirtioIOMMUWire.faultReasonUnknown, .unidentifiedStream)
        }
        guard let domainID = endpoint.domain, let domain = s.domains[domainID] else {
            let bypassing = (configuration.offeredFeatures.contains(.bypassConfig) && s.bypass == 1)
                || s.negotiated.contains(.legacyBypass)
            return bypassing ? .identity(length: remaining) : fault(VirtioIOMMUWire.faultReasonDomain, .blocked)
        }
        if domain.isBypass { return .identity(length: remaining) }
        // RESV_MEM windows: the MSI window passes writes untranslated; RESERVED faults.
        var limit = remaining
        for region in endpoint.regions {
            if region.first <= iova && iova <= region.last {
                guard region.isMSI, write else { return fault(VirtioIOMMUWire.faultReasonMapping, .translation) }
                return .identity(length: min(remaining, region.last &- iova &+ 1))
            }
            if region.first > iova { limit = min(limit, region.first &- iova) }
        }
        guard let walker = domain.walker, iova <= domain.lastIOVA else { return fault(VirtioIOMMUWire.faultReasonMapping, .translation) }
        switch walker.translate(IOVA(iova), access: write ? .write : .read) {
        case .translated(let t):
            let leafSize = UInt64(1) &<< UInt64(t.blockShift)
            let toLeafEnd = leafSize &- (iova & (leafSize &- 1))
            return .translated(t.physicalAddress, length: min(limit, toLeafEnd))
        case .fault(let f):
            return fault(VirtioIOMMUWire.faultReasonMapping, f.kind == .permission ? .permission : .translation)
        }
    }

}

struct FaultReport: Error {
    let fault: VirtioFaultEvent
    let reason: IOMMUFaultReason
    let device: DeviceID?
}
