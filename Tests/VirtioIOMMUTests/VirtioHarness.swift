import IOMMUBase
import IOMMUCore
import IOMMUTestSupport
import IOPageTable
import PhysicalMemory
import Testing
@testable import VirtioIOMMU

/// Request encoders (little-endian, as the Linux driver lays them out).
enum Req {
    static func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
    static func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
    static func head(_ type: UInt8) -> [UInt8] { [type, 0, 0, 0] }

    static func attach(domain: UInt32, endpoint: UInt32, flags: UInt32 = 0, reserved: UInt32 = 0) -> [UInt8] {
        head(1) + le32(domain) + le32(endpoint) + le32(flags) + le32(reserved)
    }
    static func detach(domain: UInt32, endpoint: UInt32, reserved: UInt64 = 0) -> [UInt8] {
        head(2) + le32(domain) + le32(endpoint) + le64(reserved)
    }
    static func map(domain: UInt32, first: UInt64, last: UInt64, phys: UInt64, flags: UInt32) -> [UInt8] {
        head(3) + le32(domain) + le64(first) + le64(last) + le64(phys) + le32(flags)
    }
    static func unmap(domain: UInt32, first: UInt64, last: UInt64, reserved: UInt32 = 0) -> [UInt8] {
        head(4) + le32(domain) + le64(first) + le64(last) + le32(reserved)
    }
    static func probe(endpoint: UInt32) -> [UInt8] { head(5) + le32(endpoint) + [UInt8](repeating: 0, count: 64) }
}

/// What the device answered.
struct Reply: Equatable, CustomStringConvertible {
    var written: [UInt8]
    var used: UInt32
    /// The status byte at the tail Linux reads (nil when nothing was written).
    var status: VirtioIOMMUStatus?
    var description: String { "\(status.map(\.description) ?? "none") used \(used)" }
}

let R: UInt32 = 1
let W: UInt32 = 2
let MMIO: UInt32 = 4
let G: UInt64 = 0x1000

/// A device with guest RAM at 2 GiB (DMA buffers in its first GiB, table pages in the last).
final class Harness {
    let memory: PhysicalMemory
    let frames: FrameAllocator
    let warnings = RecordingWarningSink()
    let device: VirtioIOMMUDevice

    init(
        _ configuration: VirtioIOMMUConfiguration = VirtioIOMMUConfiguration(),
        endpoints: [UInt32] = [1, 2, 3], features: VirtioIOMMUFeatures? = .linuxDriver
    ) throws {
        memory = try PhysicalMemory(addressBits: 48, ramBase: PhysAddr(0x8000_0000), ramSize: 2 << 30)
        frames = FrameAllocator(memory: memory, region: PhysRange(start: PhysAddr(0xC000_0000), length: 1 << 30)!)
        device = try VirtioIOMMUDevice(configuration: configuration, memory: memory, frames: frames, warnings: warnings)
        for endpoint in endpoints { try device.addEndpoint(endpoint) }
        if let features { #expect(device.negotiate(driverFeatures: features.intersection(configuration.offeredFeatures))) }
    }

    func send(_ readable: [UInt8], writable: Int = 4) -> Reply {
        let (written, used) = device.handleRequest(readable: readable, writableLength: writable)
        let status: VirtioIOMMUStatus? = used == 0 ? nil : VirtioIOMMUStatus(rawValue: written[Int(used) - 4])
        return Reply(written: written, used: used, status: status)
    }

    @discardableResult
    func attach(_ domain: UInt32, _ endpoint: UInt32, flags: UInt32 = 0, reserved: UInt32 = 0) -> Reply {
        send(Req.attach(domain: domain, endpoint: endpoint, flags: flags, reserved: reserved))
    }
    @discardableResult
    func detach(_ domain: UInt32, _ endpoint: UInt32) -> Reply { send(Req.detach(domain: domain, endpoint: endpoint)) }
    @discardableResult
    func map(_ domain: UInt32, _ first: UInt64, _ last: UInt64, _ phys: UInt64, _ flags: UInt32 = R | W) -> Reply {
        send(Req.map(domain: domain, first: first, last: last, phys: phys, flags: flags))
    }
    @discardableResult
    func unmap(_ domain: UInt32, _ first: UInt64, _ last: UInt64, reserved: UInt32 = 0) -> Reply {
        send(Req.unmap(domain: domain, first: first, last: last, reserved: reserved))
    }
    func probe(_ endpoint: UInt32, area: Int? = nil) -> Reply {
        send(Req.probe(endpoint: endpoint), writable: (area ?? Int(device.configuration.probeSize)) + 4)
    }

    /// The device state without the request counters: what a failed request must not change.
    var state: VirtioIOMMUSnapshot {
        var snapshot = device.snapshot
        snapshot.statistics = VirtioIOMMUStatistics()
        return snapshot
    }

    /// Sends a request that must fail with `status`, with full used length and no state change.
    func expectFailure(_ status: VirtioIOMMUStatus, _ readable: [UInt8], writable: Int = 4,
                       sourceLocation: SourceLocation = #_sourceLocation) {
        let before = state
        let reply = send(readable, writable: writable)
        #expect(reply.status == status, sourceLocation: sourceLocation)
        #expect(reply.used == UInt32(writable), sourceLocation: sourceLocation)
        #expect(state == before, "a failed request changed the state", sourceLocation: sourceLocation)
        #expect(device.mappingConsistencyViolations() == [], sourceLocation: sourceLocation)
    }

    func expectOK(_ reply: Reply, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(reply.status == .ok, sourceLocation: sourceLocation)
        #expect(reply.used == 4, sourceLocation: sourceLocation)
        #expect(reply.written == [0, 0, 0, 0], sourceLocation: sourceLocation)
    }

    func dmaWrite(_ endpoint: UInt32, _ iova: UInt64, _ bytes: [UInt8]) -> VirtioDMAOutcome {
        device.endpointDMAWrite(endpoint: endpoint, iova: iova, bytes: bytes)
    }
    func dmaRead(_ endpoint: UInt32, _ iova: UInt64, _ count: Int) -> (bytes: [UInt8], outcome: VirtioDMAOutcome) {
        device.endpointDMARead(endpoint: endpoint, iova: iova, count: count)
    }
}

extension VirtioDMAOutcome {
    var fault: VirtioFaultEvent? {
        if case .faulted(let fault) = self { return fault }
        return nil
    }
}
