import IOMMUBase
import IOMMUCore
import IOMMUHardware
import IOMMUTestSupport
import IOPageTable
import PhysicalMemory
import Testing

/// The reference's §6 "Edge cases and their results (ARM SMMU)", one by one, plus the model's
/// registers, TLB and faults.
@Suite("SMMU edge cases")
struct SMMUEdgeCaseTests {
    // MARK: find_sme

    @Test func overlappingButNotContainedSMRIsEINVAL() throws {
        let m = TestMachine()
        m.addSMMU("smmu0")
        let driver = try m.registerSMMU("smmu0")
        // 0x100 mask 0x3 covers 0x100...0x103; 0x102 mask 0x4 covers 0x102/0x106: overlap at 0x102.
        let a = try m.core.addDevice(platformDevice("a", "smmu0", 0x3 << 16 | 0x100))
        let b = try m.core.addDevice(platformDevice("b", "smmu0", 0x4 << 16 | 0x102))
        #expect(m.core.probeState(of: a) == .probed)
        #expect(m.core.probeState(of: b) == .probeFailed(.invalidArgument))
        #expect(driver.streamMapEntries.filter(\.smr.valid).count == 1)
    }

    @Test func noFreeSMRIsENOSPCAndAllocationIsAllOrNothing() throws {
        let m = TestMachine()
        m.addSMMU("smmu0") { $0.streamMatchRegisterCount = 2 }
        let driver = try m.registerSMMU("smmu0")
        let a = try m.core.addDevice(platformDevice("a", "smmu0", 0x1))
        // b needs two entries but only one is free: nothing of b stays allocated.
        let b = try m.core.addDevice(platformDevice("b", "smmu0", 0x2, 0x3))
        #expect(m.core.probeState(of: a) == .probed)
        #expect(m.core.probeState(of: b) == .probeFailed(.noSpace))
        let entries = driver.streamMapEntries
        #expect(entries.map(\.count) == [1, 0])
        #expect(m.smmus["smmu0"]!.registerSnapshot().smrs[1].valid == false)
        // A device needing one entry still fits.
        let c = try m.core.addDevice(platformDevice("c", "smmu0", 0x2))
        #expect(m.core.probeState(of: c) == .probed)
    }

    @Test func identicalOrContainedSMRIsSharedWithASharedGroup() throws {
        let m = TestMachine()
        m.addSMMU("smmu0")
        let driver = try m.registerSMMU("smmu0")
        let a = try m.core.addDevice(platformDevice("a", "smmu0", 0xF << 16 | 0x40))
        let b = try m.core.addDevice(platformDevice("b", "smmu0", 0x3 << 16 | 0x44))  // contained
        let c = try m.core.addDevice(platformDevice("c", "smmu0", 0xF << 16 | 0x40))  // identical
        #expect(driver.streamMapIndices(of: a) == driver.streamMapIndices(of: b))
        #expect(driver.streamMapIndices(of: a) == driver.streamMapIndices(of: c))
        #expect(driver.streamMapEntries[driver.streamMapIndices(of: a)![0]].count == 3)
        let group = try #require(m.core.groupID(of: a))
        #expect(m.core.groupID(of: b) == group && m.core.groupID(of: c) == group)
        // The shared SMR keeps the first (containing) id/mask.
        #expect(m.smmus["smmu0"]!.registerSnapshot().smrs[0] == StreamMatchRegister(id: 0x40, mask: 0xF, valid: true))
    }

    @Test func streamIDOrMaskOutsideTheProbedMasksIsEINVALAtProbe() throws {
        let m = TestMachine()
        m.addSMMU("smmu0") { $0.streamIDBits = 8; $0.smrMaskBits = 4 }
        let driver = try m.registerSMMU("smmu0")
        #expect(driver.streamIDMask == 0xFF && driver.smrMaskMask == 0xF)
        let a = try m.core.addDevice(platformDevice("a", "smmu0", 0x100))
        let b = try m.core.addDevice(platformDevice("b", "smmu0", 0x10 << 16 | 0x1))
        #expect(m.core.probeState(of: a) == .probeFailed(.invalidArgument))
        #expect(m.core.probeState(of: b) == .probeFailed(.invalidArgument))
        #expect(m.warnings.warnings == [
            .smmuStreamIDOutOfRange(device: a, streamID: 0x100, mask: 0xFF),
            .smmuSMRMaskOutOfRange(device: b, mask: 0x10, maskLimit: 0xF),
        ])
        #expect(m.warnings.warnings[0].description == "device#1: stream ID 0x100 out of range for SMMU (0xff)")
    }

    // MARK: Unmatched streams

    @Test(arguments: [true, false])
    func unmatchedStreamFaultsWithDisableBypassElseBypasses(disableBypass: Bool) throws {
        let m = TestMachine()
        let smmu = m.addSMMU("smmu0")
        try m.registerSMMU("smmu0", options: .init(disableBypass: disableBypass))
        #expect((smmu.readSCR0() & SMMURegister.sCR0USFCFG != 0) == disableBypass)
        let page = m.dataPage(filledWith: 0x5A)
        let (bytes, outcome) = smmu.dmaRead(streamID: StreamID(0x77), address: page.rawValue, length: 4)
        if disableBypass {
            #expect(outcome.fault?.reason == .unidentifiedStream)
            #expect(bytes.isEmpty)
            #expect(m.warnings.warnings == [.smmuBlockedUnknownStream(streamID: StreamID(0x77))])
            #expect(m.warnings.warnings[0].description.hasPrefix("arm-smmu: Blocked unknown Stream ID 0x77; boot with"))
            // The handler cleared sGFSR; the fault log kept the record with GFSYNR1's stream.
            #expect(smmu.readGlobalFaultStatus().gfsr == 0)
            #expect(smmu.faultLog.last?.kind == .global)
            #expect(smmu.faultLog.last?.status == SMMURegister.sGFSRUSF)
        } else {
            #expect(outcome.succeeded && outcome.bypassed)
            #expect(bytes == [0x5A, 0x5A, 0x5A, 0x5A])
            #expect(m.warnings.warnings == [.smmuUnmatchedStreamBypassed(streamID: StreamID(0x77), address: page.rawValue)])
        }
    }

    @Test func globalFaultRegistersLatchTheStream() throws {
        let m = TestMachine()
        let smmu = m.addSMMU("smmu0")  // no driver: nobody clears the fault
        _ = smmu.dmaWrite(streamID: StreamID(0x1234), address: 0x8000_0000, bytes: [1])
        let status = smmu.readGlobalFaultStatus()
        #expect(status.gfsr == SMMURegister.sGFSRUSF)
        #expect(status.gfsynr1 == 0x1234)
        #expect(status.gfsynr0 & 2 != 0)  // write
        #expect(status.gfar == 0x8000_0000)
        _ = smmu.dmaWrite(streamID: StreamID(0x99), address: 0x8000_0000, bytes: [1])
        #expect(smmu.readGlobalFaultStatus().gfsr == SMMURegister.sGFSRUSF | SMMURegister.sGFSRMULTI)
        #expect(smmu.readGlobalFaultStatus().gfsynr1 == 0x1234)  // first fault kept
    }

    // MARK: Release

    @Test(arguments: [true, false])
    func releasedDeviceRevertsToTheInitialS2CR(disableBypass: Bool) throws {
        let m = TestMachine()
        let smmu = m.addSMMU("smmu0")
        try m.registerSMMU("smmu0", options: .init(disableBypass: disableBypass))
        let dev = try m.core.addDevice(platformDevice("a", "smmu0", 0x21))
        #expect(smmu.registerSnapshot().s2crs[0].type == .translate)
        try m.core.removeDevice(dev)
        let snapshot = smmu.registerSnapshot()
        #expect(snapshot.smrs[0].valid == false)
        #expect(snapshot.s2crs[0].type == (disableBypass ? .fault : .bypass))
        if disableBypass {
            #expect(m.warnings.warnings.isEmpty)
        } else {
            #expect(m.warnings.warnings == [.smmuStreamEntryReleasedToBypass(streamID: StreamID(0x21), index: 0)])
        }
    }

    // MARK: Context banks

    @Test func stage1DomainWhenOnlyStage2BanksRemainIsENOSPC() throws {
        let m = TestMachine()
        m.addSMMU("smmu0") { $0.contextBankCount = 3; $0.stage2OnlyContextBankCount = 2 }
        let driver = try m.registerSMMU("smmu0")
        let a = try m.core.addDevice(platformDevice("a", "smmu0", 1))
        let b = try m.core.addDevice(platformDevice("b", "smmu0", 2))
        #expect(m.core.probeState(of: a) == .probed)
        #expect(driver.contextBanksInUse == [2])  // S1 banks start at NUMS2CB
        #expect(m.core.probeState(of: b) == .probeFailed(.noSpace))
        // The failed probe was unwound: b's stream-map entry is free again.
        #expect(driver.streamMapEntries.filter(\.smr.valid).map(\.smr.id) == [1])
        // Its DMA is never translated nor bypassed: the unknown-stream policy (fault) applies.
        let outcome = m.platform.dmaRead(device: b, address: 0x8000_0000, length: 1).outcome
        #expect(outcome.fault?.reason == .unidentifiedStream && !outcome.bypassed)
        // Identity domains need no bank.
        let identityDomain = try m.core.allocateDomain(type: .identity, for: a)
        try m.core.attachDevice(identityDomain, to: a)
        #expect(m.smmus["smmu0"]!.registerSnapshot().s2crs[0].type == .bypass)
    }

    @Test func domainOfAnotherSMMUInstanceIsEINVAL() throws {
        let m = TestMachine()
        m.addSMMU("smmuA")
        m.addSMMU("smmuB")
        try m.registerSMMU("smmuA")
        try m.registerSMMU("smmuB")
        let a = try m.core.addDevice(platformDevice("a", "smmuA", 1))
        let b = try m.core.addDevice(platformDevice("b", "smmuB", 1))
        let domainA = try m.core.allocateDomain(type: .unmanaged, for: a)
        try m.core.attachDevice(domainA, to: a)
        #expect(throws: IOMMUError.self) { try m.core.attachDevice(domainA, to: b) }
        #expect(m.core.domain(for: b) === m.core.defaultDomain(for: b))
        // Attach of a finalised domain directly through the other driver: EINVAL as Linux.
        let info = try #require(m.core.deviceInfo(b))
        #expect(throws: IOMMUError(.invalidArgument, device: b)) { try m.drivers["smmuB"]!.attachDevice(info, to: domainA) }
    }

    @Test func stage2OnlySMMUTranslatesWithVMIDs() throws {
        let m = TestMachine()
        let smmu = m.addSMMU("smmu0") { $0.supportsStage1 = false; $0.intermediateAddressBits = 40 }
        try m.registerSMMU("smmu0")
        let dev = try m.core.addDevice(platformDevice("a", "smmu0", 5))
        let domain = try #require(m.core.domain(for: dev))
        #expect(domain.geometry.apertureEnd == IOVA((1 << 40) - 1))
        let page = m.dataPage(filledWith: 7)
        try domain.map(iova: IOVA(0x20_0000), paddr: page, length: 4096, prot: [.read])
        #expect(m.platform.dmaRead(device: dev, address: 0x20_0000, length: 2).bytes == [7, 7])
        let bank = smmu.readContextBank(0)
        #expect(bank.type == .stage2Translate && bank.vmid == 1)
        // Read-only: a write is a permission fault, WNR set, CBFRSYNRA the stream.
        let outcome = m.platform.dmaWrite(device: dev, address: 0x20_0000, bytes: [1])
        #expect(outcome.fault?.reason == .permission)
        let record = try #require(smmu.faultLog.last)
        #expect(record.kind == .context(bank: 0) && record.status == SMMURegister.fsrPF)
    }

    @Test func contextFaultRegistersAndHandlerResult() throws {
        let m = TestMachine()
        let smmu = m.addSMMU("smmu0")
        try m.registerSMMU("smmu0")
        let dev = try m.core.addDevice(platformDevice("eth0", "smmu0", 0x30))
        let domain = try #require(m.core.domain(for: dev))
        let seen = RecordingFaults()
        domain.setFaultHandler { fault in seen.add(fault); return nil }
        // Handled: no "Unhandled context fault" warning; FSR cleared by the driver.
        _ = m.platform.dmaWrite(device: dev, address: 0x4_2000, bytes: [1])
        #expect(seen.faults == [IOMMUFault(device: dev, streamID: StreamID(0x30), iova: IOVA(0x4_2000), isWrite: true, reason: .translation)])
        #expect(m.warnings.warnings.isEmpty)
        #expect(smmu.readContextBank(0).fsr == 0)
        #expect(m.trace.lines.last == "io_page_fault: IOMMU:arm-smmu eth0 iova=0x0000000000042000 flags=0x0001")
        // Unhandled: the diagnostic carries FSR, FAR, FSYNR0 (WNR, level) and CBFRSYNRA.
        domain.setFaultHandler(nil)
        _ = m.platform.dmaRead(device: dev, address: 0x4_3000, length: 1)
        guard case let .smmuUnhandledContextFault(fsr, iova, fsynr, cbfrsynra, cb)? = m.warnings.warnings.last else {
            Issue.record("no unhandled-fault diagnostic")
            return
        }
        #expect(fsr == SMMURegister.fsrTF && iova == 0x4_3000 && fsynr & SMMURegister.fsynr0WNR == 0 && cbfrsynra == 0x30 && cb == 0)
        #expect(m.warnings.warnings.last!.description.hasPrefix("arm-smmu: Unhandled context fault: fsr=0x2, iova=0x00043000"))
    }

    // MARK: Domains and reset

    @Test func identityAndBlockedDomainsProgramBypassAndFaultS2CRs() throws {
        let m = TestMachine(defaultDomainType: .identity)
        let smmu = m.addSMMU("smmu0")
        try m.registerSMMU("smmu0")
        let dev = try m.core.addDevice(platformDevice("a", "smmu0", 9))
        #expect(smmu.registerSnapshot().s2crs[0].type == .bypass)
        let page = m.dataPage(filledWith: 3)
        let through = m.platform.dmaRead(device: dev, address: page.rawValue, length: 1)
        #expect(through.bytes == [3] && through.outcome.bypassed)
        #expect(m.warnings.warnings.isEmpty)  // an identity domain's bypass is a choice, not reported
        let group = try #require(m.core.groupID(of: dev))
        try m.core.claimDMAOwnership(ofGroup: group, owner: DMAOwner(1))
        #expect(smmu.registerSnapshot().s2crs[0].type == .fault)
        #expect(m.platform.dmaRead(device: dev, address: page.rawValue, length: 1).outcome.fault?.reason == .blocked)
        #expect(m.trace.lines.last?.hasPrefix("io_page_fault: IOMMU:arm-smmu a") == true)
    }

    @Test func resetSequenceProgramsSCR0AndClearsState() throws {
        let m = TestMachine()
        let smmu = m.addSMMU("smmu0") { $0.firmwareFaultsUnmatchedStreams = false }
        smmu.writeSCR0(SMMURegister.sCR0ClientPD | SMMURegister.sCR0FB)
        smmu.writeSMR(3, 0x8000_0042)
        let driver = try m.registerSMMU("smmu0")
        let scr0 = smmu.readSCR0()
        #expect(scr0 & SMMURegister.sCR0ClientPD == 0 && scr0 & SMMURegister.sCR0FB == 0)
        #expect(scr0 & SMMURegister.sCR0USFCFG != 0)
        for bit in [SMMURegister.sCR0GFRE, SMMURegister.sCR0GFIE, SMMURegister.sCR0GCFGFRE, SMMURegister.sCR0GCFGFIE,
                    SMMURegister.sCR0VMIDPNE, SMMURegister.sCR0PTM] {
            #expect(scr0 & bit != 0)
        }
        let snapshot = smmu.registerSnapshot()
        #expect(snapshot.smrs.allSatisfy { !$0.valid })
        #expect(snapshot.s2crs.allSatisfy { $0 == driver.initialS2CR })
        #expect(snapshot.contextBanks.allSatisfy { !$0.isEnabled && $0.fsr == 0 })
        #expect(snapshot.id0 & 0xFF == 16 && snapshot.id1 & 0xFF == 8)
    }

    @Test func capabilitiesAndReservedRegions() throws {
        let m = TestMachine(defaultDomainType: .dmaFQ)
        m.addSMMU("smmu0")
        try m.registerSMMU("smmu0")
        let dev = try m.core.addDevice(platformDevice("a", "smmu0", 9))
        #expect(m.core.capable(.deferredFlush, device: dev))
        #expect(m.core.capable(.noExec, device: dev))
        #expect(m.core.domain(for: dev)?.type == .dmaFQ)
        #expect(m.core.reservedRegions(of: dev) == [.armSMMUSoftwareMSI])
    }

    // MARK: TLB

    @Test(arguments: TLBReplacementPolicy.allCases)
    func tlbReplacementPolicies(policy: TLBReplacementPolicy) throws {
        let m = TestMachine()
        let smmu = m.addSMMU("smmu0") { $0.tlbEntryCount = 2; $0.tlbReplacement = policy }
        try m.registerSMMU("smmu0")
        let dev = try m.core.addDevice(platformDevice("a", "smmu0", 1))
        let domain = try #require(m.core.domain(for: dev))
        for i in 0..<3 { try domain.map(iova: IOVA(UInt64(i) << 12), paddr: m.dataPage(), length: 4096, prot: .read) }
        _ = smmu.translate(streamID: StreamID(1), address: 0x0000)  // fill A
        _ = smmu.translate(streamID: StreamID(1), address: 0x1000)  // fill B
        _ = smmu.translate(streamID: StreamID(1), address: 0x0000)  // hit A (LRU: B is now oldest)
        _ = smmu.translate(streamID: StreamID(1), address: 0x2000)  // fill C, evicting one
        let cached = Set(smmu.tlbEntries.map(\.iova.rawValue))
        #expect(cached == (policy == .lru ? [0x0000, 0x2000] : [0x1000, 0x2000]))
        #expect(smmu.tlbStatistics.evictions == 1 && smmu.tlbStatistics.hits == 1 && smmu.tlbStatistics.misses == 3)
    }

    @Test func staleEntriesServeUntilTheSyncThatInvalidatesThem() throws {
        let m = TestMachine()
        let smmu = m.addSMMU("smmu0")
        try m.registerSMMU("smmu0")
        let dev = try m.core.addDevice(platformDevice("a", "smmu0", 1))
        let domain = try #require(m.core.domain(for: dev))
        let page = m.dataPage(filledWith: 0xEE)
        try domain.map(iova: IOVA(0x1000), paddr: page, length: 4096, prot: [.read, .write])
        #expect(m.platform.dmaRead(device: dev, address: 0x1000, length: 1).outcome.tlbMisses == 1)
        // Unmap without sync: the TLBIVAL is posted, the entry still serves (stale hit).
        var gather = IOTLBGather()
        #expect(domain.unmapFast(iova: IOVA(0x1000), length: 4096, gather: &gather) == 4096)
        let stale = m.platform.dmaRead(device: dev, address: 0x1000, length: 1)
        #expect(stale.bytes == [0xEE] && stale.outcome.usedStaleTLBEntry)
        #expect(smmu.tlbEntries.first?.invalidationPending == true && smmu.tlbEntries.first?.mappingRemoved == true)
        // The sync completes the invalidation: the walker now faults.
        domain.iotlbSync(&gather)
        #expect(m.platform.dmaRead(device: dev, address: 0x1000, length: 1).outcome.fault?.reason == .translation)
        #expect(smmu.tlbStatistics.staleHits == 1)
    }

    @Test func lazyUnmapStaysStaleUntilFlushAll() throws {
        let m = TestMachine()
        let smmu = m.addSMMU("smmu0")
        try m.registerSMMU("smmu0")
        let dev = try m.core.addDevice(platformDevice("a", "smmu0", 1))
        let domain = try #require(m.core.domain(for: dev))
        try domain.map(iova: IOVA(0x1000), paddr: m.dataPage(), length: 4096, prot: [.read])
        _ = smmu.translate(streamID: StreamID(1), address: 0x1000)
        var gather = IOTLBGather(queued: true)  // flush-queue mode: no per-page TLBI
        _ = domain.unmapFast(iova: IOVA(0x1000), length: 4096, gather: &gather)
        domain.iotlbSync(&gather)  // nothing was issued, so nothing completes
        #expect(smmu.translate(streamID: StreamID(1), address: 0x1000).outcome.staleTLBHits == 1)
        domain.flushIOTLBAll()   // the flush queue's TLBIASID + sync
        #expect(smmu.translate(streamID: StreamID(1), address: 0x1000).outcome.fault != nil)
    }

    @Test func invalidationByAddressContextAndAll() throws {
        let m = TestMachine()
        let smmu = m.addSMMU("smmu0")
        try m.registerSMMU("smmu0")
        let a = try m.core.addDevice(platformDevice("a", "smmu0", 1))
        let b = try m.core.addDevice(platformDevice("b", "smmu0", 2))
        for dev in [a, b] {
            let domain = try #require(m.core.domain(for: dev))
            try domain.map(iova: IOVA(0), paddr: m.dataPage(), length: 8192, prot: [.read])
        }
        func fill() { for sid in [1, 2] as [UInt32] { for va in [0, 0x1000] as [UInt64] { _ = smmu.translate(streamID: StreamID(sid), address: va) } } }
        fill()
        #expect(smmu.tlbEntries.count == 4)
        let bankA = Int(smmu.registerSnapshot().s2crs[0].contextBank)
        smmu.tlbInvalidateAddress(bank: bankA, iova: IOVA(0x1000))
        #expect(smmu.tlbEntries.count == 4)  // posted
        smmu.tlbSync(bank: bankA)
        #expect(smmu.tlbEntries.count == 3)
        smmu.tlbInvalidateContext(bank: bankA)
        smmu.tlbSync(bank: bankA)
        #expect(smmu.tlbEntries.allSatisfy { $0.context != bankA } && smmu.tlbEntries.count == 2)
        fill()
        smmu.tlbInvalidateAll()
        smmu.tlbGlobalSync()
        #expect(smmu.tlbEntries.isEmpty)
        #expect(smmu.tlbEntries.isEmpty && smmu.tlbStatistics.invalidatedEntries == 1 + 1 + 4)
    }

    @Test func transactionCrossingIntoAnUnmappedPageMovesNothing() throws {
        let m = TestMachine()
        m.addSMMU("smmu0")
        try m.registerSMMU("smmu0")
        let dev = try m.core.addDevice(platformDevice("a", "smmu0", 1))
        let domain = try #require(m.core.domain(for: dev))
        let page = m.dataPage(filledWith: 0)
        try domain.map(iova: IOVA(0x1000), paddr: page, length: 4096, prot: [.read, .write])
        let outcome = m.platform.dmaWrite(device: dev, address: 0x1FF0, bytes: [UInt8](repeating: 9, count: 32))
        #expect(outcome.fault?.address == 0x2000 && outcome.bytesMoved == 0)
        #expect(try m.memory.readBytes(PhysAddr(page.rawValue + 0xFF0), count: 16) == [UInt8](repeating: 0, count: 16))
        // Two mapped pages with discontiguous frames: bytes land in both.
        try domain.map(iova: IOVA(0x2000), paddr: m.dataPage(), length: 4096, prot: [.read, .write])
        let ok = m.platform.dmaWrite(device: dev, address: 0x1FF0, bytes: [UInt8](repeating: 9, count: 32))
        #expect(ok.succeeded && ok.bytesMoved == 32)
        #expect(m.platform.dmaRead(device: dev, address: 0x1FF0, length: 32).bytes == [UInt8](repeating: 9, count: 32))
    }
}

final class RecordingFaults: @unchecked Sendable {
    private let lock = IOMMUMutex<[IOMMUFault]>([])
    func add(_ fault: IOMMUFault) { lock.withLock { $0.append(fault) } }
    var faults: [IOMMUFault] { lock.withLock { $0 } }
}

import Synchronization

@Suite("SMMU configurations and concurrency")
struct SMMUConfigurationTests {
    @Test func streamIndexingUsesTheStreamIDAsTheEntryIndex() throws {
        let m = TestMachine()
        let smmu = m.addSMMU("smmu0") { $0.streamMatchRegisterCount = 0; $0.streamIDBits = 4 }
        let driver = try m.registerSMMU("smmu0")
        let dev = try m.core.addDevice(platformDevice("a", "smmu0", 9))
        #expect(driver.streamMapIndices(of: dev) == [9])
        #expect(smmu.registerSnapshot().s2crs.count == 16 && smmu.registerSnapshot().s2crs[9].type == .translate)
        let domain = try #require(m.core.domain(for: dev))
        try domain.map(iova: IOVA(0x1000), paddr: m.dataPage(filledWith: 2), length: 4096, prot: .read)
        #expect(m.platform.dmaRead(device: dev, address: 0x1000, length: 1).bytes == [2])
        // Another stream index is its own (initial, FAULT) entry.
        #expect(smmu.dmaRead(streamID: StreamID(3), address: 0x1000, length: 1).outcome.fault?.reason == .blocked)
    }

    @Test func granuleFollowsTheCPUPage() throws {
        let m = TestMachine(cpuPageSize: .size64K)
        let smmu = m.addSMMU("smmu0")
        try m.registerSMMU("smmu0")
        let dev = try m.core.addDevice(platformDevice("a", "smmu0", 1))
        let domain = try #require(m.core.domain(for: dev))
        #expect(domain.pageSizes == PageSizeBitmap([.size64K, .size512M]))
        let frame = try m.frames.allocate(.size64K)
        try m.memory.fill(frame, length: 65536, with: 0x64)
        try domain.map(iova: IOVA(0x10_0000), paddr: frame, length: 65536, prot: [.read])
        let (bytes, outcome) = smmu.dmaRead(streamID: StreamID(1), address: 0x10_FFFF, length: 1)
        #expect(bytes == [0x64] && outcome.tlbMisses == 1)
        #expect(smmu.tlbEntries.first?.leafShift == 16)
    }

    @Test func concurrentDMAMapUnmapAndFaultsDoNotDeadlock() async throws {
        let m = TestMachine()
        let smmu = m.addSMMU("smmu0") { $0.tlbEntryCount = 16 }
        try m.registerSMMU("smmu0")
        let dev = try m.core.addDevice(platformDevice("a", "smmu0", 1))
        let domain = try #require(m.core.domain(for: dev))
        let frames = (0..<8).map { _ in m.dataPage(filledWith: 1) }
        let platform = m.platform!
        let core = m.core
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for i in 0..<2000 {
                    let va = UInt64(0x10_0000 + (i % 8) << 12)
                    try? domain.map(iova: IOVA(va), paddr: frames[i % 8], length: 4096, prot: [.read, .write])
                    _ = domain.unmap(iova: IOVA(va), length: 4096)
                }
            }
            for t in 0..<2 {
                group.addTask {
                    for i in 0..<2000 {
                        _ = platform.dmaRead(device: dev, address: UInt64(0x10_0000 + ((i + t) % 8) << 12), length: 8)
                        if i % 100 == 0 { _ = core.groupID(of: dev) }
                    }
                }
            }
        }
        #expect(smmu.tlbStatistics.hits + smmu.tlbStatistics.misses > 0)
        #expect(domain.faultCount > 0)
    }
}
