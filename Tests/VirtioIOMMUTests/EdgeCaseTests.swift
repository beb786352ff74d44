import IOMMUBase
import IOMMUCore
import IOPageTable
import PhysicalMemory
import Testing
@testable import VirtioIOMMU

/// One test per row of the reference's §12 "Edge cases and their results" (E1–E63), with the
/// recommended answer. G = 4 KiB (the device granule here), domain 1 has endpoint 1 attached.
@Suite struct EdgeCaseTests {
    func attached(_ config: VirtioIOMMUConfiguration = VirtioIOMMUConfiguration(), features: VirtioIOMMUFeatures = .linuxDriver) throws -> Harness {
        let h = try Harness(config, features: features)
        h.expectOK(h.attach(1, 1))
        return h
    }

    @Test(arguments: [(0x10_0000, 0x10_0FFF), (0x10_3000, 0x10_4FFF), (0x10_1000, 0x10_1FFF), (0x0F_F000, 0x10_4FFF)] as [(UInt64, UInt64)])
    func e1MapIntersectingAnExistingMappingIsINVAL(first: UInt64, last: UInt64) throws {
        let h = try attached()
        h.map(1, 0x10_0000, 0x10_3FFF, 0x8000_0000)
        h.expectFailure(.invalid, Req.map(domain: 1, first: first, last: last, phys: 0x9000_0000, flags: R))
    }

    @Test func e2MapAdjacentToAnExistingMappingIsOK() throws {
        let h = try attached()
        h.expectOK(h.map(1, 0x10_0000, 0x10_0FFF, 0x8000_0000))
        h.expectOK(h.map(1, 0x10_1000, 0x10_1FFF, 0x8000_5000))
        h.expectOK(h.map(1, 0x0F_F000, 0x0F_FFFF, 0x8000_9000))
        #expect(h.device.mappings(ofDomain: 1)?.count == 3)
    }

    @Test func e3MapWithEndBeforeStartIsINVAL() throws {
        let h = try attached()
        h.expectFailure(.invalid, Req.map(domain: 1, first: 0x2000, last: 0x0FFF, phys: 0x8000_0000, flags: R))
    }

    @Test func e4MapWithEndEqualStartIsRANGEWithAPageGranule() throws {
        let h = try attached()
        h.expectFailure(.range, Req.map(domain: 1, first: 0x2000, last: 0x2000, phys: 0x8000_0000, flags: R))
    }

    @Test(arguments: [(0x1800, 0x2FFF, 0x8000_0000), (0x1000, 0x1FFF, 0x8000_0800), (0x1000, 0x27FF, 0x8000_0000)] as [(UInt64, UInt64, UInt64)])
    func e5MapUnalignedIsRANGE(first: UInt64, last: UInt64, phys: UInt64) throws {
        let h = try attached()
        h.expectFailure(.range, Req.map(domain: 1, first: first, last: last, phys: phys, flags: R))
    }

    @Test func e6MapWholeSixtyFourBitRangeIsRANGEBecauseInputRangeIs48Bits() throws {
        let h = try attached(VirtioIOMMUConfiguration(msiWindow: nil))
        h.expectFailure(.range, Req.map(domain: 1, first: 0, last: .max, phys: 0, flags: R | W))
        // The whole input range, identity: what Linux sends for an identity domain.
        h.expectOK(h.map(1, 0, (1 << 48) - 1, 0))
        #expect(h.device.translate(endpoint: 1, iova: 0x8000_1234, write: true) == .translated(PhysAddr(0x8000_1234)))
        h.expectOK(h.unmap(1, 0, .max))
        #expect(h.device.mappingConsistencyViolations() == [])
    }

    /// Found by FuzzVirtioRequest: a 2 MiB MAP whose physical range starts below 2^48 and ends
    /// above it. The page table used to take the first page's PA check for the whole run and
    /// wrote descriptors with truncated output addresses (IOVA 0x2ff000 → PA 0xef000). Now the
    /// table refuses the run (ERANGE), the request fails RANGE, and nothing is mapped.
    @Test func mapWhosePhysicalRangeCrossesTheOutputAddressSizeIsRANGE() throws {
        let h = try attached()
        h.expectFailure(.range, Req.map(domain: 1, first: 0x20_0000, last: 0x3F_FFFF, phys: 0xFFFF_FFFF_0000, flags: W))
        #expect(h.device.mappings(ofDomain: 1)?.isEmpty == true)
        #expect(h.device.translate(endpoint: 1, iova: 0x2F_F000, write: true) != .translated(PhysAddr(0xEF000)))
        #expect(h.device.mappingConsistencyViolations() == [])
        // Up to the last page below 2^48 is fine.
        h.expectOK(h.map(1, 0x20_0000, 0x20_FFFF, 0xFFFF_FFFF_0000, W))
        #expect(h.device.mappingConsistencyViolations() == [])
    }

    @Test func e7MapPartlyOutsideInputRangeIsRANGE() throws {
        let h = try attached(VirtioIOMMUConfiguration(inputRange: 0x1000...0xFFFF_FFFF))
        h.expectFailure(.range, Req.map(domain: 1, first: 0xFFFF_F000, last: 0x1_0000_0FFF, phys: 0x8000_0000, flags: R))
        h.expectFailure(.range, Req.map(domain: 1, first: 0, last: 0x1FFF, phys: 0x8000_0000, flags: R))
    }

    @Test func e8DomainOutsideDomainRangeAttachIsRANGEAndMapIsNOENT() throws {
        let h = try Harness(VirtioIOMMUConfiguration(domainRange: 10...20))
        h.expectFailure(.range, Req.attach(domain: 21, endpoint: 1))
        h.expectFailure(.range, Req.attach(domain: 9, endpoint: 1))
        h.expectFailure(.noEntry, Req.map(domain: 21, first: 0, last: 0xFFF, phys: 0x8000_0000, flags: R))
    }

    @Test func e9MapOverlappingAResvMemRegionIsINVAL() throws {
        let h = try attached()
        h.expectFailure(.invalid, Req.map(domain: 1, first: 0xFEE0_0000, last: 0xFEE0_0FFF, phys: 0xFEE0_0000, flags: W | MMIO))
        h.expectFailure(.invalid, Req.map(domain: 1, first: 0xFE00_0000, last: 0xFFFF_FFFF, phys: 0x8000_0000, flags: R))
    }

    @Test func e10MapWithMMIOWhenMMIONotNegotiatedIsINVAL() throws {
        let h = try attached(features: VirtioIOMMUFeatures.linuxDriver.subtracting(.mmio))
        h.expectFailure(.invalid, Req.map(domain: 1, first: 0x1000, last: 0x1FFF, phys: 0x8000_0000, flags: W | MMIO))
    }

    @Test func e11MapWithNoFlagsGivesNoAccessAndMappingFaults() throws {
        let h = try attached()
        h.expectOK(h.map(1, 0x1000, 0x1FFF, 0x8000_0000, 0))
        #expect(h.dmaRead(1, 0x1000, 4).outcome.fault?.reason == VirtioIOMMUWire.faultReasonMapping)
        #expect(h.dmaWrite(1, 0x1000, [1]).fault?.reason == VirtioIOMMUWire.faultReasonMapping)
        #expect(h.device.mappingConsistencyViolations() == [])
        h.expectOK(h.unmap(1, 0x1000, 0x1FFF))
    }

    @Test func e12WriteOnlyMappingFaultsOnDMARead() throws {
        let h = try attached()
        h.expectOK(h.map(1, 0x1000, 0x1FFF, 0x8000_0000, W))
        #expect(h.dmaWrite(1, 0x1000, [1, 2]) == .completed)
        let read = h.dmaRead(1, 0x1000, 2)
        #expect(read.outcome.fault == VirtioFaultEvent(reason: 2, flags: 0x101, endpoint: 1, address: 0x1000))
        #expect(read.bytes == [0, 0])
    }

    @Test func e13MapOrUnmapOnABypassDomainIsINVAL() throws {
        let h = try Harness()
        h.expectOK(h.attach(5, 1, flags: VirtioIOMMUWire.attachFlagBypass))
        h.expectFailure(.invalid, Req.map(domain: 5, first: 0x1000, last: 0x1FFF, phys: 0x8000_0000, flags: R))
        h.expectFailure(.invalid, Req.unmap(domain: 5, first: 0, last: .max))
    }

    @Test func e14MapOrUnmapOnANonexistentDomainIsNOENT() throws {
        let h = try attached()
        h.expectFailure(.noEntry, Req.map(domain: 2, first: 0x1000, last: 0x1FFF, phys: 0x8000_0000, flags: R))
        h.expectFailure(.noEntry, Req.unmap(domain: 2, first: 0, last: .max))
    }

    @Test func e15UnmapThatWouldSplitIsRANGEAndBothMappingsStay() throws {
        let h = try attached()
        h.map(1, 0, G - 1, 0x8000_0000)
        h.map(1, G, 3 * G - 1, 0x8001_0000)
        h.expectFailure(.range, Req.unmap(domain: 1, first: 0, last: 2 * G - 1))
        #expect(h.device.mappings(ofDomain: 1)?.count == 2)
        #expect(h.device.translate(endpoint: 1, iova: 0, write: false) == .translated(PhysAddr(0x8000_0000)))
    }

    @Test func e16UnmapOverAHoleOnlyIsOK() throws {
        let h = try attached()
        h.expectOK(h.unmap(1, 0x10_0000, 0x1F_FFFF))
    }

    @Test func e17UnmapCuttingAMappingsHeadIsRANGE() throws {
        let h = try attached()
        h.map(1, 0, 10 * G - 1, 0x8000_0000)
        h.expectFailure(.range, Req.unmap(domain: 1, first: 5 * G, last: 20 * G - 1))
    }

    @Test func e18UnmapOfTheWholeSpaceRemovesEverything() throws {
        let h = try attached()
        h.map(1, 0, G - 1, 0x8000_0000)
        h.map(1, 0x40_0000, 0x7F_FFFF, 0x8040_0000)
        h.expectOK(h.unmap(1, 0, .max))
        #expect(h.device.mappings(ofDomain: 1) == [])
        #expect(h.device.translate(endpoint: 1, iova: 0x40_0000, write: false) != .translated(PhysAddr(0x8040_0000)))
    }

    @Test func e19UnmapWithEndBeforeStartIsINVAL() throws {
        let h = try attached()
        h.map(1, 0, G - 1, 0x8000_0000)
        h.expectFailure(.invalid, Req.unmap(domain: 1, first: G, last: 0))
    }

    @Test func e20UnmapWithNonzeroReservedIsToleratedAndUnmaps() throws {
        let h = try attached()
        h.map(1, 0, G - 1, 0x8000_0000)
        h.expectOK(h.unmap(1, 0, G - 1, reserved: 0xDEAD))
        #expect(h.device.mappings(ofDomain: 1) == [])
    }

    @Test func e21AttachWithNonzeroReservedIsINVAL() throws {
        let h = try Harness()
        h.expectFailure(.invalid, Req.attach(domain: 1, endpoint: 1, reserved: 1))
    }

    @Test func e22AttachWithFlagsBit1IsINVAL() throws {
        let h = try Harness()
        h.expectFailure(.invalid, Req.attach(domain: 1, endpoint: 1, flags: 2))
    }

    @Test func e23AttachBypassFlagWithoutBypassConfigNegotiatedIsINVAL() throws {
        let h = try Harness(features: VirtioIOMMUFeatures.linuxDriver.subtracting(.bypassConfig))
        h.expectFailure(.invalid, Req.attach(domain: 1, endpoint: 1, flags: VirtioIOMMUWire.attachFlagBypass))
    }

    @Test func e24AttachOfUnknownEndpointIsNOENTAndCreatesNoDomain() throws {
        let h = try Harness()
        h.expectFailure(.noEntry, Req.attach(domain: 1, endpoint: 99))
        #expect(h.device.snapshot.domains.isEmpty)
        #expect(h.device.core.liveDomainCount == h.device.core.liveDomainCount)
    }

    @Test func e25AttachWithBypassFlagDifferentFromDomainKindIsINVALWithoutSideEffect() throws {
        let h = try attached()
        h.expectOK(h.attach(2, 2, flags: VirtioIOMMUWire.attachFlagBypass))
        h.expectFailure(.invalid, Req.attach(domain: 2, endpoint: 1))  // paging endpoint → bypass domain
        h.expectFailure(.invalid, Req.attach(domain: 1, endpoint: 2, flags: VirtioIOMMUWire.attachFlagBypass))
        #expect(h.device.snapshot.endpoints.map(\.domain) == [1, 2, nil])
    }

    @Test func e26AttachMovingTheSoleEndpointDestroysTheOldDomain() throws {
        let h = try attached()
        h.map(1, 0, G - 1, 0x8000_0000)
        h.expectOK(h.attach(2, 1))
        #expect(h.device.snapshot.domains.map(\.id) == [2])
        h.expectFailure(.noEntry, Req.map(domain: 1, first: G, last: 2 * G - 1, phys: 0x8000_0000, flags: R))
        #expect(h.device.translate(endpoint: 1, iova: 0, write: false) != .translated(PhysAddr(0x8000_0000)))
    }

    @Test func e27ReattachToTheSameDomainWipesItWhenSoleEndpoint() throws {
        let h = try attached()
        h.map(1, 0, G - 1, 0x8000_0000)
        h.expectOK(h.attach(1, 1))
        #expect(h.device.mappings(ofDomain: 1) == [])
        // Linux replays its mappings after such an attach: they must succeed.
        h.expectOK(h.map(1, 0, G - 1, 0x8000_0000))
        // With a second endpoint the domain (and its mappings) survive.
        h.expectOK(h.attach(1, 2))
        h.expectOK(h.attach(1, 1))
        #expect(h.device.mappings(ofDomain: 1)?.count == 1)
    }

    @Test func e28AttachToAnIDWhoseDomainDiedGivesAnEmptyDomain() throws {
        let h = try attached()
        h.map(1, 0, G - 1, 0x8000_0000)
        h.expectOK(h.detach(1, 1))
        h.expectOK(h.attach(1, 2))
        #expect(h.device.mappings(ofDomain: 1) == [])
        #expect(h.dmaRead(2, 0, 1).outcome.fault?.reason == 2)
    }

    @Test func e29DetachOfUnknownEndpointIsNOENT() throws {
        let h = try attached()
        h.expectFailure(.noEntry, Req.detach(domain: 1, endpoint: 99))
    }

    @Test func e30DetachOfAnUnattachedEndpointIsINVAL() throws {
        let h = try attached()
        h.expectFailure(.invalid, Req.detach(domain: 1, endpoint: 2))
    }

    @Test func e31DetachWithTheWrongDomainIsINVALWithoutStateChange() throws {
        let h = try attached()
        h.attach(2, 2)
        h.expectFailure(.invalid, Req.detach(domain: 2, endpoint: 1))
        h.expectFailure(.invalid, Req.detach(domain: 9, endpoint: 1))
    }

    @Test func e32DMAAfterDetachFaultsDomainOrBypassesPerConfig() throws {
        let h = try attached()
        h.map(1, 0x8000_0000, 0x8000_0FFF, 0x8000_0000)
        h.detach(1, 1)
        #expect(h.dmaRead(1, 0x8000_0000, 1).outcome.fault?.reason == VirtioIOMMUWire.faultReasonDomain)
        h.device.writeConfig(offset: 36, bytes: [1])
        #expect(h.dmaRead(1, 0x8000_0000, 1).outcome == .completed)
        #expect(h.device.translate(endpoint: 1, iova: 0x1234, write: true) == .bypass)
    }

    @Test func e33ProbeOfUnknownEndpointIsNOENTWithNoProperty() throws {
        let h = try Harness()
        let reply = h.probe(99)
        #expect(reply.status == .noEntry)
        #expect(reply.used == 516)
        #expect(reply.written.prefix(512).allSatisfy { $0 == 0 })
    }

    @Test func e34ProbeWithAnAreaSmallerThanProbeSizeIsINVALWithTailAtTheEnd() throws {
        let h = try Harness()
        let reply = h.probe(1, area: 100)
        #expect(reply.used == 104)
        #expect(reply.status == .invalid)
        #expect(reply.written == [UInt8](repeating: 0, count: 100) + [4, 0, 0, 0])
    }

    @Test func e35ProbeWithAnAreaLargerThanProbeSizePutsTheTailAtProbeSize() throws {
        let h = try Harness(VirtioIOMMUConfiguration(probeSize: 24))
        let reply = h.probe(1, area: 64)
        #expect(reply.used == 28)
        #expect(Array(reply.written[24..<28]) == [0, 0, 0, 0])
        #expect(reply.written[0] == 1 && reply.written[4] == 1)
    }

    @Test func e36ProbeWhenPROBENotOfferedIsUnwritten() throws {
        let h = try Harness(VirtioIOMMUConfiguration(offeredFeatures: [.version1, .mapUnmap]))
        let reply = h.probe(1, area: 512)
        #expect(reply.used == 0)
        #expect(reply.written.allSatisfy { $0 == 0 })
    }

    @Test func e37MoreResvMemRegionsThanFitInProbeSizeAreRefusedAtConfiguration() throws {
        let h = try Harness(VirtioIOMMUConfiguration(probeSize: 24), endpoints: [])
        let regions = [ReservedRegion(start: 0x1000, length: 0x1000, prot: [], type: .reserved)]
        #expect(throws: IOMMUError.self) { try h.device.addEndpoint(9, VirtioEndpointConfiguration(reservedRegions: regions)) }
        #expect(h.device.snapshot.endpoints.isEmpty)
        #expect(h.device.core.device(named: "0000:00:01.1") == nil)
    }

    @Test(arguments: [0, 6, 255] as [UInt8])
    func e38UnknownRequestTypeIsUnwrittenWithUsedLengthZero(type: UInt8) throws {
        let h = try Harness()
        let before = h.state
        let reply = h.send([type, 0, 0, 0] + [UInt8](repeating: 0, count: 32))
        #expect(reply == Reply(written: [0, 0, 0, 0], used: 0, status: nil))
        #expect(h.state == before)
    }

    @Test func e39ShortRequestIsINVALWhenATailExistsElseUnwritten() throws {
        let h = try Harness()
        h.expectFailure(.invalid, Array(Req.attach(domain: 1, endpoint: 1).prefix(12)))
        h.expectFailure(.invalid, Array(Req.map(domain: 1, first: 0, last: 0xFFF, phys: 0, flags: R).prefix(35)))
        #expect(h.send([1, 0]).used == 0)
        #expect(h.send(Req.attach(domain: 1, endpoint: 1), writable: 3).used == 0)
        #expect(h.device.snapshot.domains.isEmpty)
    }

    @Test func e40ExtraReadableBytesAreIgnored() throws {
        let h = try Harness()
        h.expectOK(h.send(Req.attach(domain: 1, endpoint: 1) + [0xFF, 0xFF, 0xFF, 0xFF]))
        #expect(h.device.snapshot.domains.map(\.id) == [1])
    }

    @Test func e41HeadAndBodyInSeparateDescriptorsAndASplitTail() throws {
        let h = try Harness()
        let request = Req.attach(domain: 3, endpoint: 2)
        var chain = VirtioDescriptorChain([
            .readable(Array(request[0..<4])), .readable(Array(request[4..<9])), .readable(Array(request[9...])),
            .writable(1), .writable(3),
        ])
        #expect(h.device.handleRequest(chain: &chain) == 4)
        #expect(chain.writtenBytes == [0, 0, 0, 0])
        var bad = VirtioDescriptorChain([.readable(Array(request[0..<4])), .writable(2), .readable(Array(request[4...])), .writable(2)])
        let probeChain = Req.probe(endpoint: 2)
        var split = VirtioDescriptorChain([.readable(Array(probeChain[0..<2])), .readable(Array(probeChain[2...])), .writable(300), .writable(216)])
        #expect(h.device.handleRequest(chain: &split) == 516)
        #expect(split.writtenBytes[0] == 1 && split.writtenBytes[512] == 0)
        #expect(h.device.handleRequest(chain: &bad) == 0)
        #expect(h.device.snapshot.endpoints.first { $0.id == 2 }?.domain == 3)
    }

    @Test func e42BypassWriteOfTwoIsIgnored() throws {
        let h = try Harness()
        h.device.writeConfig(offset: 36, bytes: [2])
        #expect(h.device.configSpace[36] == 0)
        #expect(h.warnings.warnings == [.virtioConfigWriteIgnored(offset: 36, value: 2)])
    }

    @Test func e43BypassWriteWithoutBypassConfigNegotiatedIsIgnored() throws {
        let h = try Harness(features: VirtioIOMMUFeatures.linuxDriver.subtracting(.bypassConfig))
        h.device.writeConfig(offset: 36, bytes: [1])
        #expect(h.device.bypass == 0)
        #expect(h.dmaRead(1, 0x8000_0000, 1).outcome.fault?.reason == 1)
    }

    @Test func e44WritesToReadOnlyConfigFieldsAreIgnored() throws {
        let h = try Harness()
        let before = h.device.configSpace
        h.device.writeConfig(offset: 0, bytes: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
        h.device.writeConfig(offset: 32, bytes: [0, 0, 0, 0])
        h.device.writeConfig(offset: 37, bytes: [1])
        #expect(h.device.configSpace == before)
        #expect(h.warnings.warnings.count == 13)
    }

    @Test func e45DeviceResetDetachesAllAndKeepsBypass() throws {
        let h = try attached()
        h.map(1, 0, G - 1, 0x8000_0000)
        h.device.writeConfig(offset: 36, bytes: [1])
        h.device.reset()
        #expect(h.device.snapshot.domains.isEmpty)
        #expect(h.device.snapshot.endpoints.allSatisfy { $0.domain == nil })
        #expect(h.device.bypass == 1)
        #expect(h.device.negotiatedFeatures.isEmpty)
    }

    @Test func e46SystemResetRestoresTheInitialBypass() throws {
        let h = try Harness(VirtioIOMMUConfiguration(bootBypass: true))
        h.device.writeConfig(offset: 36, bytes: [0])
        #expect(h.device.bypass == 0)
        h.device.reset()
        #expect(h.device.bypass == 0)
        h.device.systemReset()
        #expect(h.device.bypass == 1)
    }

    @Test func e47BootBypassWorksWhenTheDriverIgnoresBypassConfig() throws {
        let h = try Harness(VirtioIOMMUConfiguration(bootBypass: true), features: VirtioIOMMUFeatures.linuxDriver.subtracting(.bypassConfig))
        #expect(h.device.configSpace[36] == 1)
        try h.memory.writeBytes(PhysAddr(0x8000_0000), [9, 8, 7])
        #expect(h.dmaRead(2, 0x8000_0000, 3) == ([9, 8, 7], .completed))
    }

    @Test func e48FaultWithoutAnEventBufferIsDroppedAndCounted() throws {
        let h = try attached()
        #expect(h.dmaRead(1, 0x5000, 1).outcome.fault != nil)
        #expect(h.device.snapshot.statistics.eventsDropped == 1)
        #expect(h.warnings.warnings == [.virtioEventDropped(endpoint: 1, bufferLength: -1)])
    }

    @Test func e49EventBufferSmallerThanARecordIsReturnedUnused() throws {
        let h = try attached()
        h.device.postEventBuffer(length: 16)
        h.device.postEventBuffer(length: 24)
        _ = h.dmaRead(1, 0x5000, 1)
        let used = h.device.takeUsedEventBuffers()
        #expect(used.map(\.usedLength) == [0])
        #expect(h.device.availableEventBufferCount == 1)
        #expect(h.device.snapshot.statistics.eventsDropped == 1)
    }

    @Test func e50DMAWriteIntoTheMSIWindowPassesUntranslated() throws {
        let h = try attached()
        #expect(h.dmaWrite(1, 0xFEE0_1000, [0x41, 0, 0, 0]) == .completed)
        #expect(try h.memory.readBytes(PhysAddr(0xFEE0_1000), count: 4) == [0x41, 0, 0, 0])
    }

    @Test func e51DMAIntoAReservedWindowFaultsAndWritesNothing() throws {
        let h = try Harness(endpoints: [])
        try h.device.addEndpoint(1, VirtioEndpointConfiguration(
            reservedRegions: [ReservedRegion(start: 0x8010_0000, length: 0x1000, prot: [], type: .reserved)]))
        _ = h.device.negotiate(driverFeatures: .linuxDriver)
        h.attach(1, 1)
        h.map(1, 0x8000_0000, 0x800F_FFFF, 0x8000_0000)
        let outcome = h.dmaWrite(1, 0x800F_FFFE, [1, 2, 3, 4])  // crosses into the reserved window
        #expect(outcome.fault == VirtioFaultEvent(reason: 2, flags: 0x102, endpoint: 1, address: 0x8010_0000))
        #expect(try h.memory.readBytes(PhysAddr(0x800F_FFFE), count: 2) == [0, 0])
    }

    @Test func e52DMASpanningTwoAdjacentMappingsTranslatesPiecewise() throws {
        let h = try attached()
        h.map(1, 0x1000, 0x1FFF, 0x8000_5000)
        h.map(1, 0x2000, 0x2FFF, 0x8000_1000)
        #expect(h.dmaWrite(1, 0x1FFE, [1, 2, 3, 4]) == .completed)
        #expect(try h.memory.readBytes(PhysAddr(0x8000_5FFE), count: 2) == [1, 2])
        #expect(try h.memory.readBytes(PhysAddr(0x8000_1000), count: 2) == [3, 4])
        #expect(h.dmaRead(1, 0x1FFE, 4) == ([1, 2, 3, 4], .completed))
    }

    @Test func e53DMAToAnUnmappedIOVAFaultsMappingWithAddressAndAccessFlag() throws {
        let h = try attached()
        h.device.postEventBuffer()
        #expect(h.dmaRead(1, 0x7000, 8).outcome.fault == VirtioFaultEvent(reason: 2, flags: 0x101, endpoint: 1, address: 0x7000))
        #expect(h.device.takeUsedEventBuffers().first?.bytes.prefix(8) == [2, 0, 0, 0, 1, 1, 0, 0])
    }

    @Test func e54DMAFromANeverAttachedEndpointWithBypassOffFaultsDomain() throws {
        let h = try Harness()
        #expect(h.dmaRead(3, 0x8000_0000, 1).outcome.fault == VirtioFaultEvent(reason: 1, flags: 0x101, endpoint: 3, address: 0x8000_0000))
        #expect(h.dmaRead(77, 0x8000_0000, 1).outcome.fault?.reason == VirtioIOMMUWire.faultReasonUnknown)
    }

    @Test func e55OneDomainIDWithBypassConfigIsLegal() throws {
        let h = try Harness(VirtioIOMMUConfiguration(domainRange: 0...0))
        h.expectOK(h.attach(0, 1, flags: VirtioIOMMUWire.attachFlagBypass))
        h.expectOK(h.attach(0, 2, flags: VirtioIOMMUWire.attachFlagBypass))
        #expect(h.device.configSpace[24..<32] == [0, 0, 0, 0, 0, 0, 0, 0])
    }

    @Test func e56GranuleLargerThanAGuestPageIsLegalAndEnforced() throws {
        let h = try Harness(VirtioIOMMUConfiguration(pageSizeMask: 0x1_0000))
        #expect(h.device.configSpace[0..<8] == [0, 0, 1, 0, 0, 0, 0, 0])
        h.attach(1, 1)
        h.expectFailure(.range, Req.map(domain: 1, first: 0x1000, last: 0x1FFF, phys: 0x8000_1000, flags: R))
        h.expectOK(h.map(1, 0x1_0000, 0x1_FFFF, 0x8001_0000))
    }

    @Test func e57PageSizeMaskZeroIsRefused() throws {
        let memory = try PhysicalMemory()
        #expect(throws: IOMMUError.self) {
            try VirtioIOMMUDevice(configuration: VirtioIOMMUConfiguration(pageSizeMask: 0), memory: memory, frames: FrameAllocator(memory: memory))
        }
    }

    @Test func e58NoMSIPropertyThenTheGuestMapsTheDoorbellWithMMIO() throws {
        let h = try Harness(VirtioIOMMUConfiguration(msiWindow: nil))
        #expect(h.device.reservedRegions(ofEndpoint: 1) == [])
        #expect(h.probe(1).written.prefix(4) == [0, 0, 0, 0])
        h.attach(1, 1)
        h.expectOK(h.map(1, 0x800_0000, 0x800_0FFF, 0x0900_0000, W | MMIO))
        #expect(h.dmaWrite(1, 0x800_0040, [1, 0, 0, 0]) == .completed)
        #expect(try h.memory.readBytes(PhysAddr(0x0900_0040), count: 1) == [1])
    }

    @Test func e59X86MSIRegionIsReportedSoNoSoftwareWindowIsNeeded() throws {
        let h = try Harness()
        #expect(h.device.reservedRegions(ofEndpoint: 1) == [VirtioReservedRegion(subtype: 1, first: 0xFEE0_0000, last: 0xFEEF_FFFF)])
    }

    @Test func e60FailingAttachReportsTheFullUsedLength() throws {
        let h = try Harness()
        let reply = h.attach(1, 99)
        #expect(reply.used == 4)
        #expect(reply.status == .noEntry)
    }

    @Test func e61MapCompletesOnlyAfterEveryConsumerAppliedIt() throws {
        let h = try attached()
        let good = RecordingConsumer()
        let bad = RecordingConsumer()
        try h.device.addMappingConsumer(good)
        h.expectOK(h.map(1, 0, G - 1, 0x8000_0000))
        #expect(good.maps.count == 1)
        try h.device.addMappingConsumer(bad)
        #expect(bad.live == good.live)  // replayed on registration
        bad.failMap = IOMMUError(.badAddress)
        h.expectFailure(.deviceError, Req.map(domain: 1, first: G, last: 2 * G - 1, phys: 0x8000_0000, flags: R))
        #expect(good.live == [VirtioMapping(domain: 1, first: 0, last: G - 1, phys: 0x8000_0000, flags: 3)])
        #expect(h.device.translate(endpoint: 1, iova: G, write: false) != .translated(PhysAddr(0x8000_0000)))
    }

    @Test func e62FailedExternalUnmapKeepsDeviceAndExternalStateConsistent() throws {
        let h = try attached()
        let first = RecordingConsumer()
        let second = RecordingConsumer()
        try h.device.addMappingConsumer(first)
        try h.device.addMappingConsumer(second)
        h.map(1, 0, G - 1, 0x8000_0000)
        h.map(1, G, 2 * G - 1, 0x8000_1000)
        second.failUnmap = IOMMUError(.busy)
        h.expectFailure(.deviceError, Req.unmap(domain: 1, first: 0, last: .max))
        #expect(first.live == second.live)
        #expect(first.live.count == 2)
        h.expectFailure(.deviceError, Req.detach(domain: 1, endpoint: 1))
        second.failUnmap = nil
        h.expectOK(h.detach(1, 1))
        #expect(first.live.isEmpty && second.live.isEmpty)
    }

    @Test func e63DefaultDomainRangeStaysBelowTwoToThe31() throws {
        let h = try Harness()
        #expect(h.device.configSpace[28..<32] == [0xFF, 0xFF, 0xFF, 0x7F])
    }
}

/// A consumer that records the live mappings and can be told to fail.
final class RecordingConsumer: VirtioMappingConsumer, @unchecked Sendable {
    var maps: [VirtioMapping] = []
    var live: [VirtioMapping] = []
    var failMap: IOMMUError?
    var failUnmap: IOMMUError?

    init(failMap: IOMMUError? = nil) { self.failMap = failMap }

    func applyMap(_ mapping: VirtioMapping) throws(IOMMUError) {
        if let failMap { throw failMap }
        maps.append(mapping)
        live.append(mapping)
        live.sort { $0.first < $1.first }
    }

    func applyUnmap(_ mapping: VirtioMapping) throws(IOMMUError) {
        if let failUnmap { throw failUnmap }
        live.removeAll { $0 == mapping }
    }
}
