import IOMMUBase
import IOMMUCore
import PhysicalMemory

/// Where a DMA transaction stopped, as the IOMMU model saw it: a modelled hardware outcome,
/// never a thrown error.
public struct DMAFault: Hashable, Sendable, CustomStringConvertible {
    /// The stream ID the transaction carried.
    public var streamID: StreamID
    /// The first faulting input address (the start of the first page that could not be
    /// translated, or the transaction's address if it faulted before translation).
    public var address: UInt64
    public var isWrite: Bool
    public var reason: IOMMUFaultReason
    /// The table level of a walk fault.
    public var level: Int?
    /// The SMMU context bank (or DART stream index) that faulted, for context faults.
    public var context: Int?

    public init(streamID: StreamID, address: UInt64, isWrite: Bool, reason: IOMMUFaultReason, level: Int? = nil, context: Int? = nil) {
        self.streamID = streamID
        self.address = address
        self.isWrite = isWrite
        self.reason = reason
        self.level = level
        self.context = context
    }

    public var description: String {
        "\(reason) fault on \(isWrite ? "write" : "read") at 0x\(String(address, radix: 16)) from \(streamID)"
            + (level.map { " (level \($0))" } ?? "") + (context.map { " ctx \($0)" } ?? "")
    }
}

/// The outcome of one DMA transaction.
///
/// **Rule.** Every page of a transaction is translated (and permission-checked) *before* any
/// byte moves. If any page faults, no byte moves (`bytesMoved == 0`) and `fault` names the first
/// faulting page; otherwise all bytes move. A transaction is therefore all-or-nothing.
public struct DMAOutcome: Hashable, Sendable {
    /// nil when the transaction completed.
    public var fault: DMAFault?
    public var bytesMoved: Int
    /// Some or all of the transaction went untranslated (bypass S2CR, unmatched stream with
    /// bypass, identity, disabled client port or context bank, or no IOMMU).
    public var bypassed: Bool
    /// Pages translated from the TLB / by a table walk.
    public var tlbHits: Int
    public var tlbMisses: Int
    /// Pages served by a TLB entry whose mapping software had already removed (unmapped but not
    /// yet invalidated + synced). The DMA layer uses this to measure the lazy-unmap window.
    public var staleTLBHits: Int

    public init(fault: DMAFault? = nil, bytesMoved: Int = 0, bypassed: Bool = false, tlbHits: Int = 0, tlbMisses: Int = 0, staleTLBHits: Int = 0) {
        self.fault = fault
        self.bytesMoved = bytesMoved
        self.bypassed = bypassed
        self.tlbHits = tlbHits
        self.tlbMisses = tlbMisses
        self.staleTLBHits = staleTLBHits
    }

    /// True when the transaction completed.
    @inlinable public var succeeded: Bool { fault == nil }
    /// True when a stale TLB entry served part of the transaction.
    @inlinable public var usedStaleTLBEntry: Bool { staleTLBHits != 0 }
}

/// One physically contiguous piece of a translated transaction.
@usableFromInline
struct DMASegment {
    @usableFromInline var physicalAddress: UInt64
    @usableFromInline var length: Int
    @usableFromInline init(physicalAddress: UInt64, length: Int) {
        self.physicalAddress = physicalAddress
        self.length = length
    }
}

/// What a hardware model's translation pass produced for a whole transaction.
@usableFromInline
struct DMATranslation {
    @usableFromInline var segmentCount = 0
    @usableFromInline var outcome = DMAOutcome()
    @usableFromInline init() {}
}

/// An IOMMU hardware model devices DMA through (the SMMU and DART models).
public protocol DMATranslatingHardware: AnyObject, Sendable {
    /// The physical memory bytes move in.
    var memory: PhysicalMemory { get }
    /// The firmware name the instance registers with the core (e.g. "smmu@2b400000").
    var instanceName: String { get }

    /// Reads `buffer.count` bytes at input address `address` for stream `streamID` into `buffer`.
    /// Allocation-free for transactions of up to 64 pages.
    func dmaRead(streamID: StreamID, address: UInt64, into buffer: UnsafeMutableRawBufferPointer, privileged: Bool) -> DMAOutcome

    /// Writes `bytes` at input address `address` for stream `streamID`.
    func dmaWrite(streamID: StreamID, address: UInt64, from bytes: UnsafeRawBufferPointer, privileged: Bool) -> DMAOutcome
}

extension DMATranslatingHardware {
    /// Reads `length` bytes; the bytes are empty when the transaction faulted.
    public func dmaRead(streamID: StreamID, address: UInt64, length: Int, privileged: Bool = false) -> (bytes: [UInt8], outcome: DMAOutcome) {
        var bytes = [UInt8](repeating: 0, count: length)
        let outcome = bytes.withUnsafeMutableBytes { dmaRead(streamID: streamID, address: address, into: $0, privileged: privileged) }
        return (outcome.succeeded ? bytes : [], outcome)
    }

    /// Writes `bytes`.
    @discardableResult
    public func dmaWrite(streamID: StreamID, address: UInt64, bytes: [UInt8], privileged: Bool = false) -> DMAOutcome {
        bytes.withUnsafeBytes { dmaWrite(streamID: streamID, address: address, from: $0, privileged: privileged) }
    }
}

/// The byte-moving half shared by the models: translate the whole transaction first (the model's
/// `translate` closure fills `segments`), then copy.
@inline(__always)
func performDMA(
    memory: PhysicalMemory, length: Int, isWrite: Bool,
    translate: (UnsafeMutableBufferPointer<DMASegment>) -> DMATranslation,
    move: (UInt64, Int, Int) throws(IOMMUError) -> Void
) -> DMATranslation {
    // Enough segments for the worst case: one per 4 KiB page touched (the smallest leaf).
    let pages = length == 0 ? 1 : (length >> 12) + 2
    return withUnsafeTemporaryAllocation(of: DMASegment.self, capacity: pages) { segments in
        var result = translate(segments)
        guard result.outcome.fault == nil else { return result }
        var offset = 0
        for i in 0..<result.segmentCount {
            let segment = segments[i]
            do throws(IOMMUError) {
                try move(segment.physicalAddress, offset, segment.length)
            } catch {
                // Outside the physical address space: an external abort on the bus.
                result.outcome.fault = DMAFault(streamID: StreamID(0), address: segment.physicalAddress, isWrite: isWrite, reason: .other)
                result.outcome.bytesMoved = offset
                return result
            }
            offset += segment.length
        }
        result.outcome.bytesMoved = offset
        return result
    }
}

/// A machine: physical memory, the IOMMU core, and the IOMMU hardware instances devices master
/// through. Device-level DMA finds the device's IOMMU instance and first stream ID from its
/// firmware description and enters that hardware model; a device behind no IOMMU reaches
/// physical memory directly.
public final class DMAPlatform: Sendable {
    public let memory: PhysicalMemory
    public let core: IOMMUCore
    private let instances: [String: any DMATranslatingHardware]

    public init(memory: PhysicalMemory, core: IOMMUCore, hardware: [any DMATranslatingHardware]) {
        self.memory = memory
        self.core = core
        var table: [String: any DMATranslatingHardware] = [:]
        for model in hardware { table[model.instanceName] = model }
        self.instances = table
    }

    /// The hardware model registered under a firmware name.
    public func hardware(named name: String) -> (any DMATranslatingHardware)? { instances[name] }

    /// Where a device's DMA enters.
    public enum Route: Sendable {
        /// Through an IOMMU model, with this stream ID (the low 16 bits of the device's first
        /// firmware ID).
        case iommu(any DMATranslatingHardware, StreamID)
        /// Straight to physical memory: the device is behind no IOMMU.
        case direct
        /// Unknown device, or its IOMMU has no model on this platform.
        case none
    }

    /// Where `device`'s DMA enters.
    public func route(of device: DeviceID) -> Route {
        guard let info = core.deviceInfo(device) else { return .none }
        guard let spec = info.iommu, let first = spec.streamIDs.first else { return .direct }
        guard let model = instances[spec.iommu] else { return .none }
        return .iommu(model, StreamID(first.rawValue & 0xFFFF))
    }

    /// Reads `buffer.count` bytes at `address` as `device`.
    public func dmaRead(device: DeviceID, address: UInt64, into buffer: UnsafeMutableRawBufferPointer, privileged: Bool = false) -> DMAOutcome {
        switch route(of: device) {
        case let .iommu(hardware, streamID): return hardware.dmaRead(streamID: streamID, address: address, into: buffer, privileged: privileged)
        case .direct:
            do throws(IOMMUError) {
                try memory.read(PhysAddr(address), into: buffer)
                return DMAOutcome(bytesMoved: buffer.count, bypassed: true)
            } catch {
                return DMAOutcome(fault: DMAFault(streamID: StreamID(0), address: address, isWrite: false, reason: .other))
            }
        case .none:
            return DMAOutcome(fault: DMAFault(streamID: StreamID(0), address: address, isWrite: false, reason: .other))
        }
    }

    /// Writes `bytes` at `address` as `device`.
    public func dmaWrite(device: DeviceID, address: UInt64, from bytes: UnsafeRawBufferPointer, privileged: Bool = false) -> DMAOutcome {
        switch route(of: device) {
        case let .iommu(hardware, streamID): return hardware.dmaWrite(streamID: streamID, address: address, from: bytes, privileged: privileged)
        case .direct:
            do throws(IOMMUError) {
                try memory.write(PhysAddr(address), from: bytes)
                return DMAOutcome(bytesMoved: bytes.count, bypassed: true)
            } catch {
                return DMAOutcome(fault: DMAFault(streamID: StreamID(0), address: address, isWrite: true, reason: .other))
            }
        case .none:
            return DMAOutcome(fault: DMAFault(streamID: StreamID(0), address: address, isWrite: true, reason: .other))
        }
    }

    /// Reads `length` bytes as `device` (empty on a fault).
    public func dmaRead(device: DeviceID, address: UInt64, length: Int, privileged: Bool = false) -> (bytes: [UInt8], outcome: DMAOutcome) {
        var bytes = [UInt8](repeating: 0, count: length)
        let outcome = bytes.withUnsafeMutableBytes { dmaRead(device: device, address: address, into: $0, privileged: privileged) }
        return (outcome.succeeded ? bytes : [], outcome)
    }

    /// Writes `bytes` as `device`.
    @discardableResult
    public func dmaWrite(device: DeviceID, address: UInt64, bytes: [UInt8], privileged: Bool = false) -> DMAOutcome {
        bytes.withUnsafeBytes { dmaWrite(device: device, address: address, from: $0, privileged: privileged) }
    }
}
