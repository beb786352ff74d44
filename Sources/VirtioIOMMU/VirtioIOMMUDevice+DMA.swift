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
    /// An endpoint reads `buffer.count` bytes at `iova` (device → memory direction: a DMA read
    /// of memory). Translation is piecewise (a buffer may span adjacent mappings), all pieces are
    /// translated before any byte moves, and a fault moves nothing.
    public func endpointDMARead(endpoint: UInt32, iova: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> VirtioDMAOutcome {
        switch translateRange(endpoint: endpoint, iova: iova, length: buffer.count, write: false) {
        case .failure(let box): return box.outcome
        case .success(let pieces):
            var offset = 0
            for piece in pieces {
                let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[offset..<(offset + piece.length)])
                do { try memory.read(piece.paddr, into: slice) } catch { return reportBusError(endpoint, iova, write: false) }
                offset += piece.length
            }
            return .completed
        }
    }

    /// An endpoint writes `bytes` at `iova`. See `endpointDMARead`.
    public func endpointDMAWrite(endpoint: UInt32, iova: UInt64, from bytes: UnsafeRawBufferPointer) -> VirtioDMAOutcome {
        switch translateRange(endpoint: endpoint, iova: iova, length: bytes.count, write: true) {
        case .failure(let box): return box.outcome
        case .success(let pieces):
            var offset = 0
            for piece in pieces {
                let slice = UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + piece.length)])
                do { try memory.write(piece.paddr, from: slice) } catch { return reportBusError(endpoint, iova, write: true) }
                offset += piece.length
            }
            return .completed
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

    struct Piece {
        var paddr: PhysAddr
        var length: Int
    }

    enum PieceResult {
        case identity(length: UInt64)
        case translated(PhysAddr, length: UInt64)
        case fault(VirtioFaultEvent, IOMMUFaultReason)
    }

    func translateRange(endpoint: UInt32, iova: UInt64, length: Int, write: Bool) -> Result<[Piece], VirtioDMAOutcomeBox> {
        guard length > 0 else { return .success([]) }
        guard !iova.addingReportingOverflow(UInt64(length) - 1).overflow else {
            return .failure(VirtioDMAOutcomeBox(reportBusError(endpoint, iova, write: write)))
        }
        let result: Result<[Piece], FaultReport> = state.withLock { s in
            var pieces: [Piece] = []
            var address = iova
            var remaining = UInt64(length)
            while remaining > 0 {
                let step: UInt64
                let paddr: PhysAddr
                switch translatePiece(s, endpoint, address, remaining: remaining, write: write) {
                case .identity(let n):
                    step = n
                    paddr = PhysAddr(address)
                case .translated(let pa, let n):
                    step = n
                    paddr = pa
                case .fault(let fault, let reason):
                    deliverFault(&s, fault)
                    return .failure(FaultReport(fault: fault, reason: reason, device: s.endpoints[endpoint]?.device))
                }
                pieces.append(Piece(paddr: paddr, length: Int(step)))
                address &+= step
                remaining &-= step
            }
            return .success(pieces)
        }
        switch result {
        case .success(let pieces): return .success(pieces)
        case .failure(let report):
            let fault = report.fault
            if let device = report.device {
                // Reported with no device lock held (lock order: the core's handlers may run).
                core.reportFault(IOMMUFault(
                    device: device, streamID: StreamID(endpoint), iova: IOVA(fault.address),
                    isWrite: fault.flags & VirtioIOMMUWire.faultFlagWrite != 0, reason: report.reason))
            }
            return .failure(VirtioDMAOutcomeBox(.faulted(fault)))
        }
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

    /// A translated access that leaves physical memory: reported as a mapping fault.
    func reportBusError(_ endpoint: UInt32, _ iova: UInt64, write: Bool) -> VirtioDMAOutcome {
        let access = write ? VirtioIOMMUWire.faultFlagWrite : VirtioIOMMUWire.faultFlagRead
        let fault = VirtioFaultEvent(
            reason: VirtioIOMMUWire.faultReasonMapping, flags: access | VirtioIOMMUWire.faultFlagAddress, endpoint: endpoint, address: iova)
        state.withLock { deliverFault(&$0, fault) }
        return .faulted(fault)
    }
}

/// Wraps an outcome so it can be a `Result` failure.
struct VirtioDMAOutcomeBox: Error {
    let outcome: VirtioDMAOutcome
    init(_ outcome: VirtioDMAOutcome) { self.outcome = outcome }
}

struct FaultReport: Error {
    let fault: VirtioFaultEvent
    let reason: IOMMUFaultReason
    let device: DeviceID?
}
