import IOMMUBase
import IOMMUCore
import IOPageTable
import PhysicalMemory
import Testing
@testable import VirtioIOMMU

/// One test per normative statement (MUST, MUST NOT, SHOULD, SHOULD NOT, MAY) of the device
/// chapter as the reference (§2–§8) restates it, named after the statement. Each checks the
/// status, the used length and, on failure, that the state did not change.
@Suite struct NormativeStatementTests {
    // MARK: - Generic request rules

    @Test func deviceMustNotChangeStateOnFailedRequest() throws {
        let h = try Harness()
        h.attach(1, 1)
        h.map(1, 0x1000, 0x1FFF, 0x8000_0000)
        h.expectFailure(.invalid, Req.map(domain: 1, first: 0x1000, last: 0x2FFF, phys: 0x8000_0000, flags: R))
        h.expectFailure(.range, Req.unmap(domain: 1, first: 0x1000, last: 0x17FF))
        h.expectFailure(.invalid, Req.attach(domain: 2, endpoint: 1, reserved: 9))
        h.expectFailure(.invalid, Req.detach(domain: 2, endpoint: 1))
        h.expectFailure(.noEntry, Req.attach(domain: 2, endpoint: 42))
    }

    @Test func deviceMustNotDependOnHowTheDriverSplitsARequest() throws {
        for split in 1..<36 {
            let h = try Harness()
            h.attach(1, 1)
            let request = Req.map(domain: 1, first: 0x1000, last: 0x1FFF, phys: 0x8000_0000, flags: R)
            var chain = VirtioDescriptorChain([.readable(Array(request[..<split])), .readable(Array(request[split...])), .writable(2), .writable(2)])
            #expect(h.device.handleRequest(chain: &chain) == 4)
            #expect(chain.writtenBytes == [0, 0, 0, 0])
            #expect(h.device.mappings(ofDomain: 1)?.count == 1)
        }
    }

    @Test func deviceShouldNotWriteAnythingForAnUnrecognisedTypeAndReturnUsedLengthZero() throws {
        let h = try Harness()
        var writable: [UInt8] = [0xAA, 0xAA, 0xAA, 0xAA]
        let used = [UInt8]([7, 0, 0, 0, 0, 0, 0, 0]).withUnsafeBytes { r in writable.withUnsafeMutableBytes { h.device.handleRequest(readable: r, writable: $0) } }
        #expect(used == 0)
        #expect(writable == [0xAA, 0xAA, 0xAA, 0xAA])
    }

    @Test func deviceMustIgnoreHeadReserved() throws {
        let h = try Harness()
        var request = Req.attach(domain: 1, endpoint: 1)
        request[1] = 0xFF; request[2] = 0xFF; request[3] = 0xFF
        h.expectOK(h.send(request))
    }

    @Test func deviceShouldZeroTailReservedAndSetStatusOKOnSuccess() throws {
        let h = try Harness()
        var writable: [UInt8] = [0xAA, 0xAA, 0xAA, 0xAA]
        let used = Req.attach(domain: 1, endpoint: 1).withUnsafeBytes { r in writable.withUnsafeMutableBytes { h.device.handleRequest(readable: r, writable: $0) } }
        #expect(used == 4)
        #expect(writable == [0, 0, 0, 0])
    }

    @Test func deviceMustWriteAtLeastTheUsedLength() throws {
        let h = try Harness()
        var writable = [UInt8](repeating: 0xAA, count: 516)
        let used = Req.probe(endpoint: 1).withUnsafeBytes { r in writable.withUnsafeMutableBytes { h.device.handleRequest(readable: r, writable: $0) } }
        #expect(used == 516)
        #expect(!writable.contains(0xAA))
    }

    @Test func deviceReturnsBuffersUnwrittenWhenTheTailCannotBeLocated() throws {
        let h = try Harness()
        #expect(h.send([1, 0, 0], writable: 4) == Reply(written: [0, 0, 0, 0], used: 0, status: nil))
        #expect(h.send(Req.attach(domain: 1, endpoint: 1), writable: 2).used == 0)
        #expect(h.device.snapshot.domains.isEmpty)
    }

    // MARK: - Features and configuration

    @Test func deviceMustSetAtLeastOneBitInPageSizeMask() throws {
        let memory = try PhysicalMemory()
        #expect(throws: IOMMUError.self) {
            try VirtioIOMMUDevice(configuration: VirtioIOMMUConfiguration(pageSizeMask: 0), memory: memory, frames: FrameAllocator(memory: memory))
        }
    }

    @Test func deviceShouldOfferMapUnmapAndShouldNotOfferLegacyBypass() throws {
        let offered = VirtioIOMMUConfiguration().offeredFeatures
        #expect(offered.contains(.mapUnmap))
        #expect(!offered.contains(.legacyBypass))
    }

    @Test func deviceShouldNotOfferBothBypassAndBypassConfig() throws {
        let memory = try PhysicalMemory()
        let config = VirtioIOMMUConfiguration(offeredFeatures: [.version1, .mapUnmap, .legacyBypass, .bypassConfig])
        #expect(throws: IOMMUError.self) { try VirtioIOMMUDevice(configuration: config, memory: memory, frames: FrameAllocator(memory: memory)) }
    }

    @Test func negotiationRefusesBitsThatWereNotOffered() throws {
        let h = try Harness(VirtioIOMMUConfiguration(offeredFeatures: [.version1, .mapUnmap]), features: nil)
        #expect(!h.device.negotiate(driverFeatures: [.version1, .mapUnmap, .probe]))
        #expect(!h.device.negotiate(driverFeatures: [.mapUnmap]))
        #expect(h.device.negotiate(driverFeatures: [.version1, .mapUnmap]))
        #expect(h.device.negotiatedFeatures == [.version1, .mapUnmap])
    }

    @Test func mapAndUnmapAreUnsupportedWithoutMapUnmapNegotiated() throws {
        let h = try Harness(features: [.version1])
        h.attach(1, 1)
        h.expectFailure(.unsupported, Req.map(domain: 1, first: 0x1000, last: 0x1FFF, phys: 0x8000_0000, flags: R))
        h.expectFailure(.unsupported, Req.unmap(domain: 1, first: 0, last: .max))
    }

    @Test func deviceMustNotPresentABypassValueOtherThanZeroOrOne() throws {
        let h = try Harness()
        for value: UInt8 in [2, 3, 0x80, 0xFF] {
            h.device.writeConfig(offset: 36, bytes: [value])
            #expect(h.device.configSpace[36] <= 1)
        }
    }

    @Test func driverMayOnlyWriteBypassWhenBypassConfigIsNegotiated() throws {
        let h = try Harness()
        h.device.writeConfig(offset: 36, bytes: [1])
        #expect(h.device.bypass == 1)
        h.device.writeConfig(offset: 36, bytes: [0])
        #expect(h.device.bypass == 0)
    }

    @Test func deviceMayInitialiseBypassToOne() throws {
        let h = try Harness(VirtioIOMMUConfiguration(bootBypass: true))
        #expect(h.device.configSpace[36] == 1)
    }

    @Test func bypassShouldSurviveDeviceResetUnchanged() throws {
        let h = try Harness(VirtioIOMMUConfiguration(bootBypass: true))
        h.device.writeConfig(offset: 36, bytes: [0])
        h.device.reset()
        #expect(h.device.bypass == 0)
    }

    @Test func bypassShouldReturnToItsInitialValueOnSystemReset() throws {
        let h = try Harness()
        h.device.writeConfig(offset: 36, bytes: [1])
        h.device.systemReset()
        #expect(h.device.bypass == 0)
    }

    // MARK: - Bypass

    @Test func unattachedEndpointShouldNotReachMemoryWithoutBypass() throws {
        let h = try Harness()
        #expect(h.dmaWrite(1, 0x8000_0000, [1]).fault?.reason == VirtioIOMMUWire.faultReasonDomain)
        #expect(try h.memory.readBytes(PhysAddr(0x8000_0000), count: 1) == [0])
    }

    @Test func bypassAppliesWhenBypassConfigIsOfferedEvenIfNotNegotiated() throws {
        let h = try Harness(VirtioIOMMUConfiguration(bootBypass: true), features: [.version1, .mapUnmap])
        #expect(h.dmaWrite(1, 0x8000_0000, [1]) == .completed)
    }

    @Test func legacyBypassNegotiatedLetsUnattachedEndpointsBypass() throws {
        let config = VirtioIOMMUConfiguration(offeredFeatures: [.version1, .mapUnmap, .legacyBypass])
        let h = try Harness(config, features: [.version1, .mapUnmap, .legacyBypass])
        #expect(h.dmaWrite(1, 0x8000_0000, [1]) == .completed)
        let offeredOnly = try Harness(config, features: [.version1, .mapUnmap])
        #expect(offeredOnly.dmaWrite(1, 0x8000_0000, [1]).fault?.reason == 1)
    }

    @Test func bypassDomainGivesIdentityWhileGlobalBypassIsOff() throws {
        let h = try Harness()
        h.expectOK(h.attach(9, 1, flags: VirtioIOMMUWire.attachFlagBypass))
        #expect(h.dmaWrite(1, 0x8000_0100, [5]) == .completed)
        #expect(try h.memory.readBytes(PhysAddr(0x8000_0100), count: 1) == [5])
        #expect(h.dmaWrite(2, 0x8000_0100, [5]).fault?.reason == 1)
    }

    // MARK: - ATTACH

    @Test func deviceMustRejectAttachWithNonzeroReservedWithINVAL() throws {
        let h = try Harness()
        h.expectFailure(.invalid, Req.attach(domain: 1, endpoint: 1, reserved: 0x0100_0000))
    }

    @Test func deviceMustRejectAttachWithUnknownFlagsWithINVAL() throws {
        let h = try Harness()
        h.expectFailure(.invalid, Req.attach(domain: 1, endpoint: 1, flags: 0x8000_0000))
    }

    @Test func deviceMustRejectAttachOfANonexistentEndpointWithNOENT() throws {
        let h = try Harness()
        h.expectFailure(.noEntry, Req.attach(domain: 1, endpoint: 0xFFFF))
    }

    @Test func deviceMayAttachSeveralEndpointsToOneDomain() throws {
        let h = try Harness()
        h.expectOK(h.attach(1, 1))
        h.expectOK(h.attach(1, 2))
        h.map(1, 0x1000, 0x1FFF, 0x8000_0000)
        #expect(h.device.translate(endpoint: 1, iova: 0x1000, write: false) == .translated(PhysAddr(0x8000_0000)))
        #expect(h.device.translate(endpoint: 2, iova: 0x1000, write: false) == .translated(PhysAddr(0x8000_0000)))
    }

    @Test func deviceShouldRejectAttachWhoseBypassFlagDiffersFromTheDomainWithINVAL() throws {
        let h = try Harness()
        h.attach(1, 1)
        h.expectFailure(.invalid, Req.attach(domain: 1, endpoint: 2, flags: VirtioIOMMUWire.attachFlagBypass))
    }

    @Test func deviceShouldMoveAnAttachedEndpointLikeDetachThenAttach() throws {
        let h = try Harness()
        h.attach(1, 1)
        h.attach(1, 2)
        h.map(1, 0x1000, 0x1FFF, 0x8000_0000)
        h.expectOK(h.attach(2, 1))
        #expect(h.device.snapshot.domains.map(\.endpoints) == [[2], [1]])
        #expect(h.device.translate(endpoint: 1, iova: 0x1000, write: false) != .translated(PhysAddr(0x8000_0000)))
        #expect(h.device.mappings(ofDomain: 1)?.count == 1)
    }

    @Test func deviceShouldRejectAttachOfAnIncompatibleEndpointWithUNSUPP() throws {
        let h = try Harness(endpoints: [1])
        try h.device.addEndpoint(2, VirtioEndpointConfiguration(table: VirtioTableSpec(kind: .armLPAEStage1, granule: .size4K)))
        try h.device.addEndpoint(3, VirtioEndpointConfiguration(
            reservedRegions: [ReservedRegion(start: 0x1000, length: 0x1000, prot: [], type: .reserved)]))
        h.attach(1, 1)
        h.map(1, 0x1000, 0x1FFF, 0x8000_0000)
        h.expectFailure(.unsupported, Req.attach(domain: 1, endpoint: 2))  // different table format
        h.expectFailure(.unsupported, Req.attach(domain: 1, endpoint: 3))  // its reserved region is mapped there
    }

    @Test func deviceMustAttachTheEndpointWhenTheRequestIsNotRejected() throws {
        let h = try Harness()
        h.expectOK(h.attach(0, 0 + 1))
        #expect(h.device.snapshot.endpoints.first?.domain == 0)
        #expect(h.device.core.domain(for: h.device.device(ofEndpoint: 1)!)?.serial == h.device.snapshot.domains.first?.coreDomainSerial)
    }

    // MARK: - DETACH

    @Test func deviceMustIgnoreDetachReserved() throws {
        let h = try Harness()
        h.attach(1, 1)
        h.expectOK(h.send(Req.detach(domain: 1, endpoint: 1, reserved: .max)))
    }

    @Test func deviceMustRejectDetachOfANonexistentEndpointWithNOENT() throws {
        let h = try Harness()
        h.expectFailure(.noEntry, Req.detach(domain: 1, endpoint: 50))
    }

    @Test func deviceMayRejectDetachFromADomainTheEndpointIsNotInWithINVAL() throws {
        let h = try Harness()
        h.attach(1, 1)
        h.expectFailure(.invalid, Req.detach(domain: 2, endpoint: 1))
    }

    @Test func deviceMustNotLetADetachedEndpointReachTheDomainsMappings() throws {
        let h = try Harness()
        h.attach(1, 1)
        h.attach(1, 2)
        h.map(1, 0x1000, 0x1FFF, 0x8000_0000)
        h.expectOK(h.detach(1, 1))
        #expect(h.dmaRead(1, 0x1000, 1).outcome.fault?.reason == VirtioIOMMUWire.faultReasonDomain)
        #expect(h.dmaRead(2, 0x1000, 1).outcome == .completed)
    }

    @Test func domainCeasesToExistWhenItsLastEndpointLeaves() throws {
        let h = try Harness()
        let framesBefore = h.frames.framesInUse
        h.attach(1, 1)
        h.map(1, 0x1000, 0x1FFF, 0x8000_0000)
        h.detach(1, 1)
        #expect(h.device.snapshot.domains.isEmpty)
        #expect(h.frames.framesInUse == framesBefore)  // the table's pages went back
        h.expectFailure(.noEntry, Req.unmap(domain: 1, first: 0, last: .max))
    }

    // MARK: - MAP

    @Test func deviceShouldRejectAMapWhoseAddressesAreNotGranuleAlignedWithRANGE() throws {
        let h = try Harness()
        h.attach(1, 1)
        h.expectFailure(.range, Req.map(domain: 1, first: 0x1001, last: 0x1FFF, phys: 0x8000_0000, flags: R))
        h.expectFailure(.range, Req.map(domain: 1, first: 0x1000, last: 0x1FFF, phys: 0x8000_0001, flags: R))
        h.expectFailure(.range, Req.map(domain: 1, first: 0x1000, last: 0x1FFE, phys: 0x8000_0000, flags: R))
    }

    @Test func deviceShouldRejectAMapIntersectingAnExistingMappingWithINVAL() throws {
        let h = try Harness()
        h.attach(1, 1)
        h.map(1, 0x1000, 0x3FFF, 0x8000_0000)
        h.expectFailure(.invalid, Req.map(domain: 1, first: 0x3000, last: 0x4FFF, phys: 0x9000_0000, flags: R))
    }

    @Test func deviceMustRejectAMapWithUnknownFlagsWithINVAL() throws {
        let h = try Harness()
        h.attach(1, 1)
        h.expectFailure(.invalid, Req.map(domain: 1, first: 0x1000, last: 0x1FFF, phys: 0x8000_0000, flags: 8))
    }

    @Test func deviceShouldRejectAMapOnANonexistentDomainWithNOENT() throws {
        let h = try Harness()
        h.expectFailure(.noEntry, Req.map(domain: 1, first: 0x1000, last: 0x1FFF, phys: 0x8000_0000, flags: R))
    }

    @Test func deviceShouldRejectAMapOnABypassDomainWithINVAL() throws {
        let h = try Harness()
        h.attach(1, 1, flags: VirtioIOMMUWire.attachFlagBypass)
        h.expectFailure(.invalid, Req.map(domain: 1, first: 0x1000, last: 0x1FFF, phys: 0x8000_0000, flags: R))
    }

    @Test func deviceShouldRejectAMapOverlappingAResvMemRegion() throws {
        let h = try Harness()
        h.attach(1, 1)
        h.expectFailure(.invalid, Req.map(domain: 1, first: 0xFEEF_F000, last: 0xFEF0_0FFF, phys: 0x8000_0000, flags: R))
    }

    @Test func deviceMustBlockWritesToAMappingWithoutWrite() throws {
        let h = try Harness()
        h.attach(1, 1)
        h.map(1, 0x1000, 0x1FFF, 0x8000_0000, R)
        #expect(h.dmaWrite(1, 0x1000, [1]).fault == VirtioFaultEvent(reason: 2, flags: 0x102, endpoint: 1, address: 0x1000))
        #expect(try h.memory.readBytes(PhysAddr(0x8000_0000), count: 1) == [0])
        #expect(h.dmaRead(1, 0x1000, 1).outcome == .completed)
    }

    @Test func deviceMayAllowReadsOfAWriteOnlyMappingWhenTheTableFormatHasNoWriteOnly() throws {
        let h = try Harness(VirtioIOMMUConfiguration(defaultTable: VirtioTableSpec(kind: .armLPAEStage1, granule: .size4K)))
        h.attach(1, 1)
        h.map(1, 0x1000, 0x1FFF, 0x8000_0000, W)
        #expect(h.dmaRead(1, 0x1000, 1).outcome == .completed)
        #expect(h.device.mappingConsistencyViolations() == [])
    }

    @Test func mmioMappingsAreDeviceMemoryInTheTable() throws {
        let h = try Harness()
        h.attach(1, 1)
        h.map(1, 0x1000, 0x1FFF, 0x0900_0000, W | MMIO)
        let domain = h.device.snapshot.domains[0]
        #expect(domain.mappings[0].flags == W | MMIO)
        #expect(h.dmaWrite(1, 0x1000, [1]) == .completed)
    }

    // MARK: - UNMAP

    @Test func deviceMayAnswerINVALForUnmapReservedButThisDeviceToleratesIt() throws {
        let h = try Harness()
        h.attach(1, 1)
        h.map(1, 0x1000, 0x1FFF, 0x8000_0000)
        h.expectOK(h.unmap(1, 0x1000, 0x1FFF, reserved: 1))
    }

    @Test func deviceShouldAnswerNOENTForAnUnmapOnANonexistentDomain() throws {
        let h = try Harness()
        h.expectFailure(.noEntry, Req.unmap(domain: 3, first: 0, last: 0xFFF))
    }

    @Test func deviceShouldRejectAnUnmapOnABypassDomainWithINVAL() throws {
        let h = try Harness()
        h.attach(1, 1, flags: VirtioIOMMUWire.attachFlagBypass)
        h.expectFailure(.invalid, Req.unmap(domain: 1, first: 0, last: 0xFFF))
    }

    @Test func deviceShouldAnswerRANGEAndRemoveNothingForAnUnmapThatWouldSplit() throws {
        let h = try Harness()
        h.attach(1, 1)
        h.map(1, 0x1000, 0x1FFF, 0x8000_0000)
        h.map(1, 0x2000, 0x3FFF, 0x8000_1000)
        h.expectFailure(.range, Req.unmap(domain: 1, first: 0x1000, last: 0x2FFF))
        #expect(h.dmaRead(1, 0x1000, 1).outcome == .completed)
    }

    /// The spec's seven UNMAP examples, scaled from 1-byte units to the 4 KiB granule.
    @Test(arguments: 1...7)
    func unmapSpecExamples(example: Int) throws {
        let h = try Harness()
        h.attach(1, 1)
        func u(_ n: UInt64) -> UInt64 { n * G }
        func end(_ n: UInt64) -> UInt64 { (n + 1) * G - 1 }
        let status: VirtioIOMMUStatus
        let remaining: Int
        switch example {
        case 1: status = h.unmap(1, u(0), end(4)).status!; remaining = 0
        case 2: h.map(1, u(0), end(9), 0x8000_0000); status = h.unmap(1, u(0), end(9)).status!; remaining = 0
        case 3:
            h.map(1, u(0), end(4), 0x8000_0000); h.map(1, u(5), end(9), 0x8010_0000)
            status = h.unmap(1, u(0), end(9)).status!; remaining = 0
        case 4: h.map(1, u(0), end(9), 0x8000_0000); status = h.unmap(1, u(0), end(4)).status!; remaining = 1
        case 5:
            h.map(1, u(0), end(4), 0x8000_0000); h.map(1, u(5), end(9), 0x8010_0000)
            status = h.unmap(1, u(0), end(4)).status!; remaining = 1
        case 6: h.map(1, u(0), end(4), 0x8000_0000); status = h.unmap(1, u(0), end(9)).status!; remaining = 0
        default:
            h.map(1, u(0), end(4), 0x8000_0000); h.map(1, u(10), end(14), 0x8010_0000)
            status = h.unmap(1, u(0), end(14)).status!; remaining = 0
        }
        #expect(status == (example == 4 ? .range : .ok))
        #expect(h.device.mappings(ofDomain: 1)?.count == remaining)
        #expect(h.device.mappingConsistencyViolations() == [])
    }

    // MARK: - PROBE

    @Test func deviceMustIgnoreProbeReserved() throws {
        let h = try Harness()
        var request = Req.probe(endpoint: 1)
        for i in 8..<72 { request[i] = 0xEE }
        #expect(h.send(request, writable: 516).status == .ok)
    }

    @Test func deviceShouldAnswerNOENTForAProbeOfANonexistentEndpoint() throws {
        let h = try Harness()
        #expect(h.probe(8) == Reply(written: [UInt8](repeating: 0, count: 512) + [6, 0, 0, 0], used: 516, status: .noEntry))
    }

    @Test func deviceShouldNotWriteAProbeReplyWhenProbeIsNotOffered() throws {
        let h = try Harness(VirtioIOMMUConfiguration(offeredFeatures: [.version1, .mapUnmap]))
        #expect(h.probe(1).used == 0)
    }

    @Test func deviceShouldWriteNoPropertyAndAnswerINVALWhenTheAreaIsSmallerThanProbeSize() throws {
        let h = try Harness()
        let reply = h.probe(1, area: 511)
        #expect(reply.status == .invalid)
        #expect(reply.used == 515)
        #expect(reply.written.prefix(511).allSatisfy { $0 == 0 })
    }

    @Test func propertyLengthMustBeTheValueSizeAndPropertiesMustBeSpacedByLengthPlusFour() throws {
        let h = try Harness(VirtioIOMMUConfiguration(hostUsableIOVARanges: [0x1000...0xFFFF_FFFF]))
        let area = Array(h.probe(1).written.prefix(512))
        var offset = 0
        var properties: [(type: UInt16, length: Int)] = []
        while offset + 4 <= area.count {
            let type = UInt16(area[offset]) | UInt16(area[offset + 1]) << 8
            let length = Int(area[offset + 2]) | Int(area[offset + 3]) << 8
            if type == 0 { break }
            #expect(type & 0xF000 == 0)  // reserved bits zero
            properties.append((type, length))
            offset += length + 4
        }
        #expect(properties.map(\.type) == [1, 1, 1])
        #expect(properties.allSatisfy { $0.length == 20 })
        #expect(area[offset...].allSatisfy { $0 == 0 })  // unused rest zero
    }

    @Test func deviceShouldReportAtMostOneMSIPropertyAndNoOverlappingProperties() throws {
        let h = try Harness(endpoints: [])
        try h.device.addEndpoint(1, VirtioEndpointConfiguration(reservedRegions: [
            ReservedRegion(start: 0xFEE0_0000, length: 0x1000, prot: [.write, .mmio], type: .msi),  // inside the window: merged
            ReservedRegion(start: 0xFE00_0000, length: 0x200_0000, prot: [], type: .reserved),  // spans the window: cut
            ReservedRegion(start: 0x800_0000, length: 0x10_0000, prot: [], type: .swMSI),  // software window: not reported
        ]))
        let regions = h.device.reservedRegions(ofEndpoint: 1)!
        #expect(regions == [
            VirtioReservedRegion(subtype: 0, first: 0xFE00_0000, last: 0xFEDF_FFFF),
            VirtioReservedRegion(subtype: 1, first: 0xFEE0_0000, last: 0xFEEF_FFFF),
            VirtioReservedRegion(subtype: 0, first: 0xFEF0_0000, last: 0xFFFF_FFFF),
        ])
        #expect(throws: IOMMUError.self) {
            try h.device.addEndpoint(2, VirtioEndpointConfiguration(reservedRegions: [
                ReservedRegion(start: 0x1000_0000, length: 0x1000, prot: [.write], type: .msi)]))
        }
    }

    @Test func deviceShouldZeroResvMemReservedBytes() throws {
        let h = try Harness()
        let area = h.probe(1).written
        #expect(area[5..<8] == [0, 0, 0])
    }

    @Test func resvMemAccessesShouldAffectOnlyTheEndpoint() throws {
        let h = try Harness(endpoints: [1])
        try h.device.addEndpoint(2, VirtioEndpointConfiguration(
            reservedRegions: [ReservedRegion(start: 0x10_0000, length: 0x1000, prot: [], type: .reserved)]))
        h.attach(1, 1)
        h.attach(2, 2)
        h.map(1, 0x10_0000, 0x10_0FFF, 0x8000_0000)
        #expect(h.dmaWrite(2, 0x10_0000, [1]).fault?.reason == 2)
        #expect(try h.memory.readBytes(PhysAddr(0x8000_0000), count: 1) == [0])
        #expect(h.dmaWrite(1, 0x10_0000, [1]) == .completed)
    }

    // MARK: - Events

    @Test func deviceShouldZeroFaultReservedFieldsAndUndefinedFlags() throws {
        let h = try Harness()
        h.device.postEventBuffer(length: 32)
        _ = h.dmaRead(2, 0x1000, 1)
        let used = h.device.takeUsedEventBuffers()[0]
        #expect(used.usedLength == 24)
        #expect(used.bytes[1..<4] == [0, 0, 0] && used.bytes[12..<16] == [0, 0, 0, 0])
        #expect(used.bytes[5] == 0x01 && used.bytes[6..<8] == [0, 0])
        #expect(used.bytes[24...].allSatisfy { $0 == 0 })
    }

    @Test func deviceShouldPutAValidEndpointIDInEveryFault() throws {
        let h = try Harness()
        h.attach(1, 3)
        h.device.postEventBuffer()
        _ = h.dmaWrite(3, 0x4000, [1])
        #expect(h.device.takeUsedEventBuffers()[0].bytes[8..<12] == [3, 0, 0, 0])
    }

    @Test func deviceShouldNotSpreadAFaultRecordOverSeveralBuffers() throws {
        let h = try Harness()
        h.device.postEventBuffer(length: 12)
        h.device.postEventBuffer(length: 12)
        _ = h.dmaWrite(1, 0x4000, [1])
        #expect(h.device.takeUsedEventBuffers().map(\.usedLength) == [0])
        #expect(h.device.availableEventBufferCount == 1)
    }

    @Test func faultsAreAlsoReportedToTheCore() throws {
        let h = try Harness()
        h.attach(1, 1)
        let device = h.device.device(ofEndpoint: 1)!
        let domain = h.device.core.domain(for: device)!
        _ = h.dmaWrite(1, 0x4000, [1])
        #expect(domain.faultCount == 1)
    }

    // MARK: - Reset and lifecycle

    @Test func deviceResetLeavesNoEndpointAttached() throws {
        let h = try Harness()
        h.attach(1, 1)
        h.attach(2, 2, flags: VirtioIOMMUWire.attachFlagBypass)
        h.device.reset()
        #expect(h.device.snapshot.endpoints.allSatisfy { $0.domain == nil })
        #expect(h.device.snapshot.domains.isEmpty)
        let device = h.device.device(ofEndpoint: 1)!
        #expect(h.device.core.dmaPath(for: device).isBlocked)
    }

    @Test func endpointsAreCoreDevicesBehindTheVirtioIOMMUInstance() throws {
        let h = try Harness()
        let device = h.device.device(ofEndpoint: 2)!
        #expect(h.device.core.probeState(of: device) == .probed)
        #expect(h.device.core.device(onIOMMU: "virtio-iommu", streamID: StreamID(2)) == device)
        #expect(h.device.core.dmaPath(for: device).isBlocked)
        h.attach(1, 2)
        if case .translated = h.device.core.dmaPath(for: device) {} else { Issue.record("not translated") }
    }
}
