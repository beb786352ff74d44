import IOMMUBase
import Testing
@testable import VirtioIOMMU

/// The request sequence of Linux's virtio-iommu driver (drivers/iommu/virtio-iommu.c, ≈6.15):
/// feature negotiation and config reads, eventq filling, PROBE, ATTACH of the default DMA
/// domain, batched MAPs drained at iotlb_sync_map, device DMA, UNMAP at iotlb_sync, a fault on
/// the stale address read from eventq, and DETACH at release. The lead will turn this into a
/// scenario file.
@Suite struct LinuxGuestSequenceTests {
    /// What the Linux driver does with a synchronous request's reply: copy the written bytes
    /// back only if the used length equals the whole writable size, else read the zeroed tail.
    func linuxStatus(_ completed: VirtioCompletedRequest, writableSize: Int) -> VirtioIOMMUStatus {
        guard completed.usedLength == UInt32(writableSize) else { return .ok }
        return VirtioIOMMUStatus(rawValue: completed.chain.writtenBytes[writableSize - 4])!
    }

    func le64(_ bytes: ArraySlice<UInt8>) -> UInt64 {
        bytes.reversed().reduce(0) { $0 << 8 | UInt64($1) }
    }

    @Test func probeAttachMapDMAUnmapFaultDetach() throws {
        let h = try Harness(VirtioIOMMUConfiguration(bootBypass: true), endpoints: [0x08], features: nil)
        let device = h.device

        // 1. Features: Linux accepts what it knows of the offer and refuses the device without
        //    VERSION_1 and MAP_UNMAP.
        let accepted = device.offeredFeatures.intersection(.linuxDriver)
        #expect(accepted.isSuperset(of: [.version1, .mapUnmap]))
        #expect(device.negotiate(driverFeatures: accepted))

        // 2. Config reads.
        let config = device.configSpace
        let pageSizeMask = le64(config[0..<8])
        #expect(pageSizeMask != 0)
        let granule = pageSizeMask & (~pageSizeMask + 1)
        let inputEnd = le64(config[16..<24])
        let domainStart = UInt32(le64(config[24..<28]))
        let probeSize = Int(le64(config[32..<36]))
        #expect(granule == 0x1000 && inputEnd == (1 << 48) - 1 && probeSize == 512)
        // BYPASS_CONFIG negotiated: the first ID is the identity domain's, paging IDs follow.
        let identityDomain = domainStart
        let dmaDomain = domainStart + 1
        // Boot bypass is on: firmware DMA works before the driver attaches anything.
        #expect(h.dmaWrite(0x08, 0x8000_0000, [0xB0]) == .completed)

        // 3. DRIVER_OK, then eventq filled with 24-byte buffers.
        for _ in 0..<4 { device.postEventBuffer(length: 24) }

        // 4. Endpoint probe: PROBE once, properties parsed until type 0.
        device.submitRequest(VirtioDescriptorChain([.readable(Req.probe(endpoint: 0x08)), .writable(probeSize + 4)]))
        let probe = device.processRequestQueue()[0]
        #expect(linuxStatus(probe, writableSize: probeSize + 4) == .ok)
        let properties = probe.chain.writtenBytes
        #expect(properties[0] == 1 && properties[2] == 20 && properties[4] == VirtioIOMMUWire.resvMemMSI)
        #expect(le64(properties[8..<16]) == 0xFEE0_0000 && le64(properties[16..<24]) == 0xFEEF_FFFF)
        #expect(properties[24] == 0)  // NONE terminates

        // 5. Default DMA domain: a synchronous ATTACH.
        device.submitRequest(VirtioDescriptorChain([.readable(Req.attach(domain: dmaDomain, endpoint: 0x08)), .writable(4)]))
        #expect(linuxStatus(device.processRequestQueue()[0], writableSize: 4) == .ok)
        // Attached to a paging domain with no mappings: boot bypass no longer applies.
        #expect(h.dmaWrite(0x08, 0x8000_0000, [0xB1]).fault?.reason == VirtioIOMMUWire.faultReasonMapping)
        #expect(device.takeUsedEventBuffers().count == 1)
        device.postEventBuffer(length: 24)  // the driver re-queues the buffer

        // 6. dma_map_sg of two physically discontiguous pages at the top of the 32-bit space:
        //    one MAP per segment, added without a kick, drained at iotlb_sync_map.
        let iova: UInt64 = 0xFFFF_E000
        device.submitRequest(VirtioDescriptorChain([.readable(Req.map(domain: dmaDomain, first: iova, last: iova + 0xFFF, phys: 0x8123_4000, flags: R | W)), .writable(4)]))
        device.submitRequest(VirtioDescriptorChain([.readable(Req.map(domain: dmaDomain, first: iova + 0x1000, last: iova + 0x1FFF, phys: 0x8200_0000, flags: R | W)), .writable(4)]))
        #expect(device.snapshot.pendingRequests == 2)
        let maps = device.processRequestQueue()
        #expect(maps.map(\.usedLength) == [4, 4])
        #expect(maps.map { $0.chain.writtenBytes } == [[0, 0, 0, 0], [0, 0, 0, 0]])

        // 7. The device DMAs a buffer that spans both mappings.
        let payload: [UInt8] = (0..<32).map { UInt8($0) }
        #expect(h.dmaWrite(0x08, iova + 0xFF0, payload) == .completed)
        #expect(try h.memory.readBytes(PhysAddr(0x8123_4FF0), count: 16) == Array(payload[0..<16]))
        #expect(try h.memory.readBytes(PhysAddr(0x8200_0000), count: 16) == Array(payload[16...]))

        // 8. dma_unmap_sg: the driver sends exactly the whole mappings; strict mode syncs at once.
        device.submitRequest(VirtioDescriptorChain([.readable(Req.unmap(domain: dmaDomain, first: iova, last: iova + 0x1FFF)), .writable(4)]))
        #expect(device.processRequestQueue()[0].chain.writtenBytes == [0, 0, 0, 0])

        // 9. A late DMA on the stale address faults; the driver reads the record from eventq.
        #expect(h.dmaRead(0x08, iova + 0x10, 4).outcome.fault != nil)
        let events = device.takeUsedEventBuffers()
        #expect(events.count == 1)
        let record = events[0].bytes
        #expect(events[0].usedLength == 24)
        #expect(record[1..<4] == [0, 0, 0])  // Linux processes only records with zero reserved bytes
        #expect(record[0] == VirtioIOMMUWire.faultReasonMapping)
        #expect(le64(record[4..<8]) == UInt64(VirtioIOMMUWire.faultFlagRead | VirtioIOMMUWire.faultFlagAddress))
        #expect(le64(record[8..<12]) == 0x08 && le64(record[16..<24]) == iova + 0x10)
        device.postEventBuffer(length: 24)  // re-queued
        #expect(device.availableEventBufferCount == 4)

        // 10. Passthrough for a trusted device: the identity domain with ATTACH_F_BYPASS.
        device.submitRequest(VirtioDescriptorChain([.readable(Req.attach(domain: identityDomain, endpoint: 0x08, flags: VirtioIOMMUWire.attachFlagBypass)), .writable(4)]))
        #expect(linuxStatus(device.processRequestQueue()[0], writableSize: 4) == .ok)
        #expect(device.snapshot.domains.map(\.id) == [identityDomain])  // the DMA domain died with its last endpoint
        #expect(h.dmaWrite(0x08, 0x8000_0000, [0xB2]) == .completed)

        // 11. Release: DETACH (Linux WARNs on failure).
        device.submitRequest(VirtioDescriptorChain([.readable(Req.detach(domain: identityDomain, endpoint: 0x08)), .writable(4)]))
        #expect(linuxStatus(device.processRequestQueue()[0], writableSize: 4) == .ok)
        #expect(device.snapshot.domains.isEmpty)
        #expect(h.device.mappingConsistencyViolations() == [])
        #expect(h.frames.framesInUse == 0)
    }

    @Test func domainReplayAfterTheLastEndpointLeftSucceeds() throws {
        // Linux keeps a domain's mappings while the device has forgotten it and replays them as
        // synchronous MAPs when an endpoint attaches again.
        let h = try Harness()
        h.attach(1, 1)
        h.map(1, 0x1000, 0x1FFF, 0x8000_0000)
        h.detach(1, 1)
        h.expectOK(h.attach(1, 1))
        h.expectOK(h.map(1, 0x1000, 0x1FFF, 0x8000_0000))
    }
}
