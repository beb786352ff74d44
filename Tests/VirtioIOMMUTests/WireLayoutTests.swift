import IOMMUBase
import IOMMUCore
import Testing
@testable import VirtioIOMMU

/// Byte-level layouts, with the expected bytes written out by hand.
@Suite struct WireLayoutTests {
    @Test func configSpaceIsFortyLittleEndianBytes() throws {
        let h = try Harness()
        #expect(h.device.configSpace == [
            0x00, 0x10, 0x20, 0x40, 0x00, 0x00, 0x00, 0x00,  // page_size_mask 0x40201000
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // input_range.start 0
            0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00,  // input_range.end 2^48-1
            0x00, 0x00, 0x00, 0x00,  // domain_range.start 0
            0xFF, 0xFF, 0xFF, 0x7F,  // domain_range.end 0x7fffffff
            0x00, 0x02, 0x00, 0x00,  // probe_size 512
            0x00,  // bypass
            0x00, 0x00, 0x00,  // reserved
        ])
        #expect(h.device.readConfig(offset: 32, count: 4) == [0x00, 0x02, 0x00, 0x00])
        #expect(h.device.readConfig(offset: 36, count: 1) == [0x00])
    }

    @Test func configFieldsOfFeaturesNotOfferedReadZero() throws {
        let h = try Harness(VirtioIOMMUConfiguration(offeredFeatures: [.version1, .mapUnmap], bootBypass: true))
        #expect(h.device.configSpace == [0x00, 0x10, 0x20, 0x40] + [UInt8](repeating: 0, count: 36))
    }

    @Test func attachRequestBytes() throws {
        let h = try Harness()
        let request: [UInt8] = [
            0x01, 0x00, 0x00, 0x00,  // head: ATTACH
            0x07, 0x00, 0x00, 0x00,  // domain 7
            0x02, 0x00, 0x00, 0x00,  // endpoint 2
            0x00, 0x00, 0x00, 0x00,  // flags
            0x00, 0x00, 0x00, 0x00,  // reserved
        ]
        #expect(request == Req.attach(domain: 7, endpoint: 2))
        let reply = h.send(request)
        #expect(reply.written == [0x00, 0x00, 0x00, 0x00])
        #expect(reply.used == 4)
        #expect(h.device.snapshot.endpoints.first { $0.id == 2 }?.domain == 7)
    }

    @Test func detachRequestBytes() throws {
        let h = try Harness()
        h.attach(7, 2)
        let request: [UInt8] = [
            0x02, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ]
        #expect(request == Req.detach(domain: 7, endpoint: 2))
        #expect(h.send(request) == Reply(written: [0, 0, 0, 0], used: 4, status: .ok))
        #expect(h.device.snapshot.domains.isEmpty)
    }

    @Test func mapRequestBytesHaveNoPaddingBeforeVirtStart() throws {
        let h = try Harness()
        h.attach(7, 2)
        let request: [UInt8] = [
            0x03, 0x00, 0x00, 0x00,  // head: MAP
            0x07, 0x00, 0x00, 0x00,  // domain 7
            0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00,  // virt_start 0x200000 at +8
            0xFF, 0x1F, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00,  // virt_end 0x201fff
            0x00, 0x30, 0x00, 0x90, 0x00, 0x00, 0x00, 0x00,  // phys_start 0x90003000
            0x03, 0x00, 0x00, 0x00,  // flags READ|WRITE
        ]
        #expect(request.count == 36)
        #expect(request == Req.map(domain: 7, first: 0x20_0000, last: 0x20_1FFF, phys: 0x9000_3000, flags: 3))
        #expect(h.send(request) == Reply(written: [0, 0, 0, 0], used: 4, status: .ok))
        #expect(h.device.mappings(ofDomain: 7) == [VirtioMapping(domain: 7, first: 0x20_0000, last: 0x20_1FFF, phys: 0x9000_3000, flags: 3)])
        #expect(h.device.translate(endpoint: 2, iova: 0x20_1234, write: true) == .translated(PhysAddr(0x9000_4234)))
    }

    @Test func unmapRequestBytes() throws {
        let h = try Harness()
        h.attach(7, 2)
        h.map(7, 0x20_0000, 0x20_1FFF, 0x9000_3000)
        let request: [UInt8] = [
            0x04, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00,
            0xFF, 0x1F, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00,  // reserved
        ]
        #expect(request.count == 28)
        #expect(request == Req.unmap(domain: 7, first: 0x20_0000, last: 0x20_1FFF))
        #expect(h.send(request) == Reply(written: [0, 0, 0, 0], used: 4, status: .ok))
        #expect(h.device.mappings(ofDomain: 7) == [])
    }

    @Test func probeRequestAndResvMemPropertyBytes() throws {
        let h = try Harness(VirtioIOMMUConfiguration(probeSize: 64))
        let request: [UInt8] = [0x05, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00] + [UInt8](repeating: 0, count: 64)
        #expect(request.count == 72)
        let reply = h.send(request, writable: 64 + 4)
        let expected: [UInt8] = [
            0x01, 0x00,  // type RESV_MEM (low 12 bits), reserved high bits 0
            0x14, 0x00,  // length 20
            0x01,  // subtype MSI
            0x00, 0x00, 0x00,  // reserved[3]
            0x00, 0x00, 0xE0, 0xFE, 0x00, 0x00, 0x00, 0x00,  // start 0xfee00000
            0xFF, 0xFF, 0xEF, 0xFE, 0x00, 0x00, 0x00, 0x00,  // end 0xfeefffff
        ] + [UInt8](repeating: 0, count: 40)  // unused area zero (type 0 terminates)
            + [0x00, 0x00, 0x00, 0x00]  // tail OK
        #expect(reply.written == expected)
        #expect(reply.used == 68)
    }

    @Test func probeWithReservedAndMSIRegionsSortedByStart() throws {
        let config = VirtioIOMMUConfiguration(probeSize: 48, hostUsableIOVARanges: [0...0xFFFF_FFFF])
        let h = try Harness(config, endpoints: [])
        try h.device.addEndpoint(4, VirtioEndpointConfiguration(reservedRegions: []))
        let reply = h.send(Req.probe(endpoint: 4), writable: 52)
        #expect(reply.written == [
            0x01, 0x00, 0x14, 0x00, 0x01, 0x00, 0x00, 0x00,
            0x00, 0x00, 0xE0, 0xFE, 0x00, 0x00, 0x00, 0x00,
            0xFF, 0xFF, 0xEF, 0xFE, 0x00, 0x00, 0x00, 0x00,
            0x01, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00,  // subtype RESERVED
            0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,  // start 0x1_0000_0000
            0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00,  // end 2^48-1
            0x00, 0x00, 0x00, 0x00,
        ])
    }

    @Test func faultEventRecordBytes() throws {
        let h = try Harness()
        h.attach(7, 1)
        h.device.postEventBuffer(length: 24)
        let outcome = h.dmaWrite(1, 0x1234_5678_9000, [0xAA])
        #expect(outcome.fault == VirtioFaultEvent(reason: 2, flags: 0x102, endpoint: 1, address: 0x1234_5678_9000))
        let used = h.device.takeUsedEventBuffers()
        #expect(used.count == 1)
        #expect(used[0].usedLength == 24)
        #expect(used[0].bytes == [
            0x02, 0x00, 0x00, 0x00,  // reason MAPPING, reserved[3]
            0x02, 0x01, 0x00, 0x00,  // flags WRITE | ADDRESS
            0x01, 0x00, 0x00, 0x00,  // endpoint 1
            0x00, 0x00, 0x00, 0x00,  // reserved1
            0x00, 0x90, 0x78, 0x56, 0x34, 0x12, 0x00, 0x00,  // address
        ])
    }

    @Test func tailReservedBytesAreZeroed() throws {
        let h = try Harness()
        var writable: [UInt8] = [0xAA, 0xAA, 0xAA, 0xAA]
        let readable = Req.attach(domain: 1, endpoint: 99)
        let used = readable.withUnsafeBytes { r in writable.withUnsafeMutableBytes { h.device.handleRequest(readable: r, writable: $0) } }
        #expect(used == 4)
        #expect(writable == [0x06, 0x00, 0x00, 0x00])  // NOENT, reserved zeroed
    }

    @Test func statusCodesAndLinuxErrnos() {
        #expect(VirtioIOMMUStatus.allCases.map(\.rawValue) == Array(0...8))
        #expect(VirtioIOMMUStatus.allCases.map(\.linuxErrno) == [0, -5, -38, -5, -22, -34, -2, -14, -12])
        #expect(VirtioIOMMURequestType.allCases.map(\.readableLength) == [20, 20, 36, 28, 72])
    }

    @Test func featureBitNumbers() {
        #expect(VirtioIOMMUFeatures.inputRange.rawValue == 1)
        #expect(VirtioIOMMUFeatures.domainRange.rawValue == 2)
        #expect(VirtioIOMMUFeatures.mapUnmap.rawValue == 4)
        #expect(VirtioIOMMUFeatures.legacyBypass.rawValue == 8)
        #expect(VirtioIOMMUFeatures.probe.rawValue == 16)
        #expect(VirtioIOMMUFeatures.mmio.rawValue == 32)
        #expect(VirtioIOMMUFeatures.bypassConfig.rawValue == 64)
        #expect(VirtioIOMMUFeatures.version1.rawValue == 1 << 32)
        #expect(VirtioIOMMUDevice.deviceID == 23 && VirtioIOMMUDevice.pciDeviceID == 0x1057)
    }
}
