import IOMMUBase
import IOMMUCore
import IOPageTable
import PhysicalMemory
import Synchronization

/// The Linux `arm-smmu` driver (SMMU v2) for the `ARMSMMU` model: ID-register probe, reset,
/// stream-map entry allocation (`find_sme`), groups through shared S2CRs, context banks, domains
/// on io-pgtable LPAE tables, TLB maintenance, and fault handling.
///
/// Create it (it probes and resets the SMMU), then register it with the core under the SMMU's
/// firmware name: `try core.registerIOMMU(name: smmu.instanceName, driver: driver)`.
///
/// Linux: `drivers/iommu/arm/arm-smmu/arm-smmu.c` (6.12).
public final class ARMSMMUDriver: IOMMUDriver, SMMUInterruptHandler, @unchecked Sendable {
    // @unchecked: mutable state is in `state` (a Mutex); the rest is immutable after init.

    /// Module parameters and firmware properties.
    public struct Options: Hashable, Sendable {
        /// Linux: `arm-smmu.disable_bypass` (default `CONFIG_ARM_SMMU_DISABLE_BYPASS_BY_DEFAULT=y`):
        /// unmatched streams fault (sCR0.USFCFG) and free stream-map entries are FAULT S2CRs.
        public var disableBypass = true
        /// The SMMU node's `stream-match-mask` property, ORed into every SMR mask.
        public var streamMatchMask: UInt16 = 0
        public init(disableBypass: Bool = true, streamMatchMask: UInt16 = 0) {
            self.disableBypass = disableBypass
            self.streamMatchMask = streamMatchMask
        }
    }

    /// Linux: `struct arm_smmu_smr` + `struct arm_smmu_s2cr` (+ `count`, `group`).
    public struct StreamMapEntry: Hashable, Sendable {
        public var smr: StreamMatchRegister
        public var s2cr: StreamToContextRegister
        /// Masters using the entry (the S2CR `count`).
        public var count: Int
        /// A probed device of the group the entry belongs to (the S2CR `group`).
        var groupToken: DeviceID?
        var users: [DeviceID]
    }

    struct Master {
        var indices: [Int]
        var ids: [(id: UInt16, mask: UInt16)]
    }

    struct DriverState {
        var entries: [StreamMapEntry]
        var masters: [DeviceID: Master] = [:]
        var contextBankInUse: [Bool]
    }

    public let name = "arm-smmu"
    public let smmu: ARMSMMU
    public let options: Options
    unowned let core: IOMMUCore
    let warnings: any WarningSink
    /// Where page-table pages come from.
    public let frames: FrameAllocator

    // Probed features (Linux: `arm_smmu_device_cfg_probe`).
    /// Linux: `smmu->streamid_mask`.
    public let streamIDMask: UInt32
    /// Linux: `smmu->smr_mask_mask`.
    public let smrMaskMask: UInt32
    public let contextBankCount: Int
    public let stage2OnlyContextBankCount: Int
    /// Linux: `va_size`, `ipa_size`, `pa_size`.
    public let vaBits: Int
    public let ipaBits: Int
    public let paBits: Int
    public let supportsStage1: Bool
    public let supportsStage2: Bool
    public let coherentWalk: Bool
    /// Page sizes of every supported granule. Linux: `smmu->pgsize_bitmap`.
    public let pageSizes: PageSizeBitmap
    let granules: [PageSize]
    /// The initial S2CR: FAULT with `disable_bypass`, else BYPASS. Linux: `s2cr_init_val`.
    public let initialS2CR: StreamToContextRegister

    let state: IOMMUMutex<DriverState>

    /// Fault injection (iommufd-style `fail_nth`, docs/reliability.md): consulted where Linux's
    /// driver can fail to allocate: the master's stream-map configuration in probe (ENOMEM), each
    /// SMR/S2CR entry (ENOSPC), the domain structure (ENOMEM) and the context bank (ENOSPC).
    public let failNth = FailNth()

    /// Probes the SMMU's ID registers, finds the SMR mask widths, runs the reset sequence, and
    /// installs the fault handlers. Linux: `arm_smmu_device_probe` up to `iommu_device_register`.
    public init(smmu: ARMSMMU, core: IOMMUCore, frames: FrameAllocator, options: Options = Options()) {
        self.smmu = smmu
        self.frames = frames
        self.options = options
        self.core = core
        self.warnings = core.warnings
        let id0 = smmu.id0, id1 = smmu.id1, id2 = smmu.id2
        supportsStage1 = id0 & (1 << 30) != 0
        supportsStage2 = id0 & (1 << 29) != 0
        coherentWalk = id0 & (1 << 14) != 0
        let numSIDB = Int((id0 >> 9) & 0xF)
        let smrCount = id0 & (1 << 27) != 0 ? Int(id0 & 0xFF) : 0
        contextBankCount = Int(id1 & 0xFF)
        stage2OnlyContextBankCount = Int((id1 >> 16) & 0xFF)
        func size(_ code: UInt32) -> Int { SMMURegister.addressSizeCodes[Int(min(code, 5))] }
        ipaBits = size(id2 & 0xF)
        paBits = size((id2 >> 4) & 0xF)
        vaBits = min(size((id2 >> 8) & 0xF), 48)
        var sizes: [PageSize] = []
        var grains: [PageSize] = []
        if id2 & (1 << 12) != 0 { sizes += [.size4K, .size2M, .size1G]; grains.append(.size4K) }
        if id2 & (1 << 13) != 0 { sizes += [.size16K, .size32M]; grains.append(.size16K) }
        if id2 & (1 << 14) != 0 { sizes += [.size64K, .size512M]; grains.append(.size64K) }
        pageSizes = PageSizeBitmap(sizes)
        granules = grains
        initialS2CR = StreamToContextRegister(type: options.disableBypass ? .fault : .bypass)

        // Linux: arm_smmu_test_smr_masks: write all-ones to an SMR and read back what sticks.
        var sidMask = UInt32((1 << numSIDB) - 1)
        var maskMask: UInt32 = 0
        if smrCount > 0 {
            smmu.writeSMR(0, sidMask)
            sidMask = StreamMatchRegister(raw: smmu.readSMR(0)).raw & SMMURegister.smrIDMask
            smmu.writeSMR(0, sidMask << SMMURegister.smrMaskShift)
            maskMask = UInt32(StreamMatchRegister(raw: smmu.readSMR(0)).mask)
            smmu.writeSMR(0, 0)
        }
        streamIDMask = sidMask
        smrMaskMask = maskMask
        let entryCount = smmu.streamMapEntryCount
        let initial = StreamMapEntry(smr: StreamMatchRegister(id: 0, mask: 0, valid: false), s2cr: initialS2CR, count: 0, groupToken: nil, users: [])
        state = IOMMUMutex(DriverState(entries: [StreamMapEntry](repeating: initial, count: entryCount),
                                  contextBankInUse: [Bool](repeating: false, count: contextBankCount)))
        reset()
        smmu.setInterruptHandler(self)
    }

    /// The reset sequence. Linux: `arm_smmu_device_reset`.
    public func reset() {
        let status = smmu.readGlobalFaultStatus()
        smmu.clearGlobalFaultStatus(status.gfsr)
        let entries = state.withLock { $0.entries }
        for index in entries.indices { writeEntry(index, entries[index]) }
        for bank in 0..<contextBankCount {
            smmu.writeContextBank(bank) { $0.sctlr = 0 }
            smmu.clearContextFault(bank, SMMURegister.fsrFault)
        }
        smmu.tlbInvalidateAll()
        var scr0 = smmu.readSCR0()
        scr0 |= SMMURegister.sCR0GFRE | SMMURegister.sCR0GFIE | SMMURegister.sCR0GCFGFRE | SMMURegister.sCR0GCFGFIE
        scr0 |= SMMURegister.sCR0VMIDPNE | SMMURegister.sCR0PTM
        scr0 &= ~(SMMURegister.sCR0ClientPD | SMMURegister.sCR0FB | SMMURegister.sCR0BSUMask)
        if options.disableBypass { scr0 |= SMMURegister.sCR0USFCFG } else { scr0 &= ~SMMURegister.sCR0USFCFG }
        smmu.tlbGlobalSync()
        smmu.writeSCR0(scr0)
    }

    /// Linux: `arm_smmu_write_sme` (S2CR, then SMR with VALID when it is in use).
    func writeEntry(_ index: Int, _ entry: StreamMapEntry) {
        smmu.writeS2CR(index, entry.s2cr.raw)
        if index < smmu.configuration.streamMatchRegisterCount { smmu.writeSMR(index, entry.smr.raw) }
    }

    /// The stream-map entries as the driver tracks them (index, SMR, S2CR, user count).
    public var streamMapEntries: [StreamMapEntry] { state.withLock { $0.entries } }

    /// The stream-map entry indices of a probed device.
    public func streamMapIndices(of device: DeviceID) -> [Int]? { state.withLock { $0.masters[device]?.indices } }

    // MARK: - find_sme

    /// Linux: `arm_smmu_find_sme`: an index to use for `(id, mask)`, sharing an entry that
    /// contains it. - Throws: EINVAL for an ambiguous overlap, ENOSPC when no entry is free.
    static func findEntry(_ entries: [StreamMapEntry], id: UInt16, mask: UInt16, indexing: Bool) throws(IOMMUError) -> Int {
        if indexing {
            guard Int(id) < entries.count else { throw IOMMUError(.invalidArgument, address: UInt64(id)) }
            return Int(id)
        }
        var free: Int?
        for (i, entry) in entries.enumerated() {
            let smr = entry.smr
            guard smr.valid else {
                if free == nil { free = i }
                continue
            }
            if mask & smr.mask == mask && (id ^ smr.id) & ~smr.mask == 0 { return i }
            if (id ^ smr.id) & ~(smr.mask | mask) == 0 { throw IOMMUError(.invalidArgument, address: UInt64(id)) }
        }
        guard let free else { throw IOMMUError(.busy, address: UInt64(id), code: .noSpace) }
        return free
    }

    // MARK: - IOMMUDriver

    public func probeDevice(_ device: IOMMUDeviceInfo) throws(IOMMUError) {
        guard let spec = device.iommu, spec.iommu == smmu.instanceName else { throw IOMMUError(.noSuchDevice, device: device.id) }
        var ids: [(id: UInt16, mask: UInt16)] = []
        for fwid in spec.streamIDs {
            let sid = fwid.rawValue & 0xFFFF
            let mask = (fwid.rawValue >> 16) | UInt32(options.streamMatchMask)
            if sid & ~streamIDMask != 0 {
                warnings.warn(.smmuStreamIDOutOfRange(device: device.id, streamID: sid, mask: streamIDMask))
                throw IOMMUError(.invalidArgument, address: UInt64(sid), device: device.id)
            }
            if mask & ~smrMaskMask != 0 && smmu.configuration.streamMatchRegisterCount > 0 {
                warnings.warn(.smmuSMRMaskOutOfRange(device: device.id, mask: mask, maskLimit: smrMaskMask))
                throw IOMMUError(.invalidArgument, address: UInt64(mask), device: device.id)
            }
            ids.append((UInt16(sid), UInt16(mask)))
        }
        let indexing = smmu.configuration.streamMatchRegisterCount == 0
        // Linux: kzalloc of the master's `arm_smmu_master_cfg`.
        if failNth.shouldFail() { throw IOMMUError(.outOfMemory, device: device.id) }
        let written: [(Int, StreamMapEntry)] = try state.withLock { s throws(IOMMUError) in
            guard s.masters[device.id] == nil else { throw IOMMUError(.alreadyExists, device: device.id) }
            // All or nothing: allocate on a copy, commit only when every ID has an entry.
            var entries = s.entries
            var indices: [Int] = []
            for (id, mask) in ids {
                // Linux: arm_smmu_find_sme() finding no free entry.
                if failNth.shouldFail() { throw IOMMUError(.busy, address: UInt64(id), device: device.id, code: .noSpace) }
                let index = try Self.findEntry(entries, id: id, mask: mask, indexing: indexing).self
                if entries[index].count == 0 {
                    entries[index].smr = StreamMatchRegister(id: id, mask: mask, valid: true)
                    entries[index].s2cr = initialS2CR
                }
                entries[index].count += 1
                entries[index].users.append(device.id)
                indices.append(index)
            }
            s.entries = entries
            s.masters[device.id] = Master(indices: indices, ids: ids)
            return Set(indices).sorted().map { ($0, entries[$0]) }
        }
        for (index, entry) in written { writeEntry(index, entry) }
    }

    public func releaseDevice(_ device: IOMMUDeviceInfo) {
        let freed: [(Int, StreamMapEntry)] = state.withLock { s in
            guard let master = s.masters.removeValue(forKey: device.id) else { return [] }
            var freed: [Int] = []
            for index in master.indices {
                s.entries[index].count -= 1
                if let at = s.entries[index].users.firstIndex(of: device.id) { s.entries[index].users.remove(at: at) }
                if s.entries[index].count == 0 {
                    s.entries[index] = StreamMapEntry(smr: StreamMatchRegister(id: 0, mask: 0, valid: false), s2cr: initialS2CR,
                                                      count: 0, groupToken: nil, users: [])
                    freed.append(index)
                } else if s.entries[index].groupToken == device.id {
                    s.entries[index].groupToken = s.entries[index].users.first
                }
            }
            return freed.map { ($0, s.entries[$0]) }
        }
        for (index, entry) in freed {
            writeEntry(index, entry)
            if entry.s2cr.type == .bypass {
                let sid = device.streamIDs.first.map { StreamID($0.rawValue & 0xFFFF) } ?? StreamID(UInt32(index))
                warnings.warn(.smmuStreamEntryReleasedToBypass(streamID: sid, index: index))
            }
        }
    }

    public func deviceGroup(_ device: IOMMUDeviceInfo) throws(IOMMUError) -> IOMMUGroupChoice {
        try state.withLock { s throws(IOMMUError) in
            guard let master = s.masters[device.id] else { throw IOMMUError(.noSuchDevice, device: device.id) }
            var token: DeviceID?
            for index in master.indices {
                guard let existing = s.entries[index].groupToken, existing != device.id else { continue }
                if let token, token != existing { throw IOMMUError(.invalidArgument, device: device.id) }
                token = existing
            }
            let choice: IOMMUGroupChoice
            if let token {
                choice = .sameGroupAs(token)
            } else {
                choice = device.busKind == .pci ? .pciDefault : .newGroup
            }
            for index in master.indices where s.entries[index].groupToken == nil {
                s.entries[index].groupToken = token ?? device.id
            }
            return choice
        }
    }

    public func allocateDomain(type: IOMMUDomainType, for device: IOMMUDeviceInfo?) throws(IOMMUError) -> any IOMMUDomainOps {
        guard [.blocked, .identity, .unmanaged, .dma, .dmaFQ].contains(type) else { throw IOMMUError(.notSupported) }
        // Linux: kzalloc of the `arm_smmu_domain`.
        if failNth.shouldFail() { throw IOMMUError(.outOfMemory, device: device?.id) }
        return SMMUDomainOps(driver: self, type: type)
    }

    /// Linux: `arm_smmu_init_domain_context`.
    public func finaliseDomain(_ domain: IOMMUDomain, for device: IOMMUDeviceInfo) throws(IOMMUError) {
        guard let ops = domain.ops as? SMMUDomainOps, ops.driver === self else { throw IOMMUError(.invalidArgument, device: device.id) }
        guard domain.type.isPaging else { return }
        let stage1 = supportsStage1
        guard stage1 || supportsStage2 else { throw IOMMUError(.invalidArgument, device: device.id) }
        // The granule: the CPU page if supported, else the largest smaller, else the smallest
        // larger (Linux: arm_lpae_restrict_pgsizes).
        let cpuPage = core.configuration.cpuPageSize
        let granule: PageSize
        if granules.contains(cpuPage) {
            granule = cpuPage
        } else if let smaller = granules.filter({ $0 < cpuPage }).max() {
            granule = smaller
        } else if let larger = granules.min() {
            granule = larger
        } else {
            throw IOMMUError(.invalidArgument, device: device.id)
        }
        let bank: Int = try state.withLock { s throws(IOMMUError) in
            let range = stage1 ? stage2OnlyContextBankCount..<contextBankCount : 0..<contextBankCount
            // Linux: __arm_smmu_alloc_bitmap() finding no free context bank.
            if failNth.shouldFail() { throw IOMMUError(.busy, device: device.id, code: .noSpace) }
            guard let free = range.first(where: { !s.contextBankInUse[$0] }) else {
                throw IOMMUError(.busy, device: device.id, code: .noSpace)
            }
            s.contextBankInUse[free] = true
            return free
        }
        let configuration = stage1
            ? PageTableConfiguration(ias: vaBits, oas: ipaBits, coherentWalk: coherentWalk)
            : PageTableConfiguration(ias: ipaBits, oas: paBits, coherentWalk: coherentWalk)
        let table: AnyIOPageTable
        do throws(IOMMUError) {
            table = try AnyIOPageTable(kind: stage1 ? .armLPAEStage1 : .armLPAEStage2, granule: granule,
                                       configuration: configuration, frames: ops.frames, warnings: warnings)
        } catch {
            state.withLock { $0.contextBankInUse[bank] = false }
            throw error
        }
        let box = PageTableBox(table)
        let asid = UInt16(bank)
        let vmid = UInt16(bank + 1)
        switch box.table.registers {
        case .stage1(let r):
            smmu.writeContextBank(bank) { cb in
                cb.cbar = CBARType.stage1TranslateStage2Bypass.rawValue << SMMURegister.cbarTypeShift
                    | UInt32(bank) << SMMURegister.cbarIRPTNDXShift
                cb.cba2r = SMMURegister.cba2rVA64
                cb.ttbr0 = r.ttbr | UInt64(asid) << 48
                cb.tcr = r.tcr
                cb.mair = r.mair
                cb.sctlr = SMMURegister.sctlrM | SMMURegister.sctlrTRE | SMMURegister.sctlrAFE | SMMURegister.sctlrCFRE
                    | SMMURegister.sctlrCFIE | SMMURegister.sctlrASIDPNE
            }
        case .stage2(let r):
            smmu.writeContextBank(bank) { cb in
                cb.cbar = CBARType.stage2Translate.rawValue << SMMURegister.cbarTypeShift | UInt32(vmid & 0xFF)
                    | UInt32(bank) << SMMURegister.cbarIRPTNDXShift
                cb.cba2r = SMMURegister.cba2rVA64
                cb.ttbr0 = r.vttbr
                cb.tcr = r.vtcr
                cb.mair = 0
                cb.sctlr = SMMURegister.sctlrM | SMMURegister.sctlrTRE | SMMURegister.sctlrAFE | SMMURegister.sctlrCFRE
                    | SMMURegister.sctlrCFIE
            }
        case .dart:
            preconditionFailure("an SMMU context holds an LPAE table")
        }
        let ias = box.table.geometry.ias
        domain.setPageSizes(box.table.geometry.pageSizes)
        domain.setGeometry(DomainGeometry(apertureStart: IOVA(0), apertureEnd: IOVA(ias >= 64 ? .max : (UInt64(1) << UInt64(ias)) - 1),
                                          forceAperture: true))
        ops.publish(box: box, bank: bank)
    }

    func releaseContextBank(_ bank: Int) {
        smmu.writeContextBank(bank) { $0.sctlr = 0 }
        smmu.tlbInvalidateContext(bank: bank)
        smmu.tlbSync(bank: bank)
        state.withLock { $0.contextBankInUse[bank] = false }
    }

    /// Context banks in use.
    public var contextBanksInUse: [Int] { state.withLock { s in s.contextBankInUse.indices.filter { s.contextBankInUse[$0] } } }

    /// Linux: `arm_smmu_attach_dev` / identity and blocked domain attach → `arm_smmu_master_install_s2crs`.
    public func attachDevice(_ device: IOMMUDeviceInfo, to domain: IOMMUDomain) throws(IOMMUError) {
        guard let spec = device.iommu, spec.iommu == smmu.instanceName else {
            throw IOMMUError(.noSuchDevice, device: device.id, code: .noSuchDeviceOrAddress)
        }
        guard let ops = domain.ops as? SMMUDomainOps, ops.driver === self else { throw IOMMUError(.invalidArgument, device: device.id) }
        let s2cr: StreamToContextRegister
        switch domain.type {
        case .identity: s2cr = StreamToContextRegister(type: .bypass)
        case .blocked: s2cr = StreamToContextRegister(type: .fault)
        default:
            guard let bank = ops.contextBank else { throw IOMMUError(.noSuchDevice, device: device.id) }
            s2cr = StreamToContextRegister(type: .translate, contextBank: UInt8(bank))
        }
        try install(s2cr, for: device)
    }

    public func detachDevice(_ device: IOMMUDeviceInfo, from domain: IOMMUDomain) {
        try? install(StreamToContextRegister(type: .fault), for: device)
    }

    func install(_ s2cr: StreamToContextRegister, for device: IOMMUDeviceInfo) throws(IOMMUError) {
        let changed: [(Int, StreamMapEntry)] = try state.withLock { s throws(IOMMUError) in
            guard let master = s.masters[device.id] else { throw IOMMUError(.noSuchDevice, device: device.id) }
            var changed: [(Int, StreamMapEntry)] = []
            for index in Set(master.indices).sorted() where s.entries[index].s2cr != s2cr {
                s.entries[index].s2cr = s2cr
                changed.append((index, s.entries[index]))
            }
            return changed
        }
        for (index, entry) in changed { smmu.writeS2CR(index, entry.s2cr.raw) }
    }

    /// Linux: `arm_smmu_get_resv_regions`: the software MSI window (firmware regions are added
    /// by the core).
    public func reservedRegions(for device: IOMMUDeviceInfo) -> [ReservedRegion] { [.armSMMUSoftwareMSI] }

    /// Linux: `arm_smmu_capable`.
    public func capable(_ capability: IOMMUCapability, device: IOMMUDeviceInfo) -> Bool {
        switch capability {
        case .cacheCoherency: coherentWalk
        case .noExec, .deferredFlush: true
        default: false
        }
    }

    // MARK: - Faults

    /// The device whose stream-map entries match `sid` (probed masters first, then any device
    /// firmware places behind this SMMU with exactly that stream ID).
    func device(forStream sid: UInt32) -> DeviceID? {
        let probed: DeviceID? = state.withLock { s in
            for (id, master) in s.masters.sorted(by: { $0.key < $1.key }) {
                for entry in master.ids where (sid ^ UInt32(entry.id)) & ~UInt32(entry.mask) & 0xFFFF == 0 { return id }
            }
            return nil
        }
        return probed ?? core.device(onIOMMU: smmu.instanceName, streamID: StreamID(sid))
    }

    /// Linux: `arm_smmu_context_fault`.
    public func contextFault(smmu: ARMSMMU, bank: Int) {
        let cb = smmu.readContextBank(bank)
        guard cb.fsr & SMMURegister.fsrFault != 0 else { return }
        let reason: IOMMUFaultReason =
            cb.fsr & SMMURegister.fsrTF != 0 ? .translation
            : cb.fsr & SMMURegister.fsrPF != 0 ? .permission
            : cb.fsr & SMMURegister.fsrAFF != 0 ? .accessFlag
            : cb.fsr & SMMURegister.fsrASF != 0 ? .addressSize : .other
        let isWrite = cb.fsynr0 & SMMURegister.fsynr0WNR != 0
        var result: Errno? = .notImplemented
        if let device = device(forStream: cb.cbfrsynra) {
            result = core.reportFault(IOMMUFault(device: device, streamID: StreamID(cb.cbfrsynra), iova: IOVA(cb.far), isWrite: isWrite, reason: reason))
        }
        if result != nil {
            warnings.warn(.smmuUnhandledContextFault(fsr: cb.fsr, iova: cb.far, fsynr: cb.fsynr0, cbfrsynra: cb.cbfrsynra, contextBank: bank))
        }
        smmu.clearContextFault(bank, cb.fsr)
    }

    /// Linux: `arm_smmu_global_fault`. Also reports an unidentified-stream fault of a device the
    /// core knows (e.g. one whose probe is deferred) to the core (trace `io_page_fault`), which
    /// Linux does not do.
    public func globalFault(smmu: ARMSMMU) {
        let status = smmu.readGlobalFaultStatus()
        guard status.gfsr != 0 else { return }
        let sid = status.gfsynr1 & 0xFFFF
        if options.disableBypass && status.gfsr & SMMURegister.sGFSRUSF != 0 {
            warnings.warn(.smmuBlockedUnknownStream(streamID: StreamID(sid)))
            if let device = core.device(onIOMMU: smmu.instanceName, streamID: StreamID(sid)) ?? device(forStream: sid) {
                core.reportFault(IOMMUFault(device: device, streamID: StreamID(sid), iova: IOVA(status.gfar),
                                            isWrite: status.gfsynr0 & 2 != 0, reason: .unidentifiedStream))
            }
        } else {
            warnings.warn(.smmuUnexpectedGlobalFault(gfsr: status.gfsr, gfsynr0: status.gfsynr0, gfsynr1: status.gfsynr1, gfsynr2: status.gfsynr2))
        }
        smmu.clearGlobalFaultStatus(status.gfsr)
    }

    /// A transaction hit a FAULT S2CR (a blocked or released stream): reported to the core.
    public func streamFault(smmu: ARMSMMU, record: SMMUFaultRecord) {
        guard let device = device(forStream: record.fault.streamID.rawValue) else { return }
        core.reportFault(IOMMUFault(device: device, streamID: record.fault.streamID, iova: IOVA(record.fault.address),
                                    isWrite: record.fault.isWrite, reason: .blocked))
    }
}

/// A page table in a box, so a domain can publish it once and share it without copying.
final class PageTableBox: @unchecked Sendable {
    // @unchecked: the table's operations are thread-safe for disjoint ranges (IOPageTable docs).
    let table: AnyIOPageTable
    init(_ table: consuming AnyIOPageTable) { self.table = table }
}

/// The TLB maintenance an SMMU context does for its page table. Linux: `arm_smmu_s1_tlb_ops`
/// (`tlb_flush_all` = TLBIASID + sync, `tlb_flush_walk` = TLBIVA per granule + sync,
/// `tlb_add_page` = TLBIVAL without sync).
struct SMMUContextInvalidator: TLBInvalidator {
    let smmu: ARMSMMU
    let bank: Int

    mutating func flushAll() {
        smmu.tlbInvalidateContext(bank: bank)
        smmu.tlbSync(bank: bank)
    }

    mutating func flushWalk(iova: IOVA, size: UInt64, granule: UInt64) {
        var offset: UInt64 = 0
        while offset < size {
            smmu.tlbInvalidateAddress(bank: bank, iova: IOVA(iova.rawValue &+ offset))
            offset &+= granule
        }
        smmu.tlbSync(bank: bank)
    }

    mutating func addPage(_ gather: inout IOTLBGather, iova: IOVA, granule: UInt64) {
        smmu.tlbInvalidateAddress(bank: bank, iova: iova)
        gather.pageSize = granule
        gather.addRange(iova: iova, length: granule)
    }
}

/// The driver side of an SMMU domain: its context bank and page table.
///
/// Linux: `struct arm_smmu_domain` + `arm_smmu_map_pages`/`unmap_pages`/`iotlb_sync`/
/// `flush_iotlb_all`/`iova_to_phys`/`domain_free`.
public final class SMMUDomainOps: IOMMUDomainOps, @unchecked Sendable {
    // @unchecked: `box`/`bank` are written once before `ready` is released, then only read.
    unowned let driver: ARMSMMUDriver
    public let type: IOMMUDomainType
    let frames: FrameAllocator
    private var box: PageTableBox?
    private var bank: Int = -1
    private let ready = Atomic<Bool>(false)

    init(driver: ARMSMMUDriver, type: IOMMUDomainType) {
        self.driver = driver
        self.type = type
        self.frames = driver.frames
    }

    func publish(box: PageTableBox, bank: Int) {
        self.box = box
        self.bank = bank
        ready.store(true, ordering: .releasing)
    }

    /// The context bank, once the domain is finalised.
    public var contextBank: Int? { ready.load(ordering: .acquiring) ? bank : nil }

    /// The page table's register values (TTBR/TCR/MAIR or VTTBR/VTCR), once finalised.
    public var tableRegisters: PageTableRegisters? { ready.load(ordering: .acquiring) ? box?.table.registers : nil }

    /// Runs `body` with the domain's page table (nil before finalise and after free), for the
    /// consistency checkers and the isolation audit (`iommu inspect --check` / `--reach`).
    package func withPageTable<R>(_ body: (borrowing AnyIOPageTable) -> R) -> R? {
        guard ready.load(ordering: .acquiring), let box else { return nil }
        return body(box.table)
    }

    public func mapPages(iova: IOVA, paddr: PhysAddr, pageSize: PageSize, count: UInt64, prot: IOMMUProt, mapped: inout UInt64) throws(IOMMUError) {
        guard ready.load(ordering: .acquiring), let box else { throw IOMMUError(.noSuchDevice, address: iova.rawValue) }
        var invalidator = SMMUContextInvalidator(smmu: driver.smmu, bank: bank)
        // One table's worth at most, like io-pgtable's map_pages; the core loops for the rest.
        mapped &+= try box.table.map(iova: iova, paddr: paddr, pageSize: pageSize, count: Int(count), prot: prot,
                                     invalidator: &invalidator)
    }

    public func unmapPages(iova: IOVA, pageSize: PageSize, count: UInt64, gather: inout IOTLBGather) -> UInt64 {
        guard ready.load(ordering: .acquiring), let box else { return 0 }
        var invalidator = SMMUContextInvalidator(smmu: driver.smmu, bank: bank)
        // One table's worth at most, like io-pgtable's unmap_pages; the core loops for the rest.
        let unmapped = box.table.unmap(iova: iova, pageSize: pageSize, count: Int(count), gather: &gather,
                                       invalidator: &invalidator)
        if unmapped != 0 { driver.smmu.noteMappingsRemoved(bank: bank, first: iova.rawValue, last: iova.rawValue &+ (unmapped &- 1)) }
        return unmapped
    }

    public func iovaToPhys(_ iova: IOVA) -> PhysAddr? {
        guard ready.load(ordering: .acquiring), let box else { return nil }
        return box.table.iovaToPhys(iova)
    }

    /// The page table against the hardware walker (`AnyIOPageTable.checkConsistency(memory:)`);
    /// `[]` before finalisation. No Linux counterpart.
    public func checkPageTableConsistency() -> [ConsistencyViolation] {
        guard ready.load(ordering: .acquiring), let box else { return [] }
        return box.table.checkConsistency(memory: frames.memory)
    }

    /// How many table pages the page table holds (each one frame allocation); 0 before
    /// finalisation. For leak accounting: a failed map may leave tables it installed in place.
    public var liveTableCount: Int {
        guard ready.load(ordering: .acquiring), let box else { return 0 }
        return box.table.liveTables().count
    }

    /// Linux: `arm_smmu_flush_iotlb_all` → `tlb_flush_all` (TLBIASID + sync).
    public func flushIOTLBAll() {
        guard ready.load(ordering: .acquiring) else { return }
        driver.smmu.tlbInvalidateContext(bank: bank)
        driver.smmu.tlbSync(bank: bank)
    }

    /// Linux: `arm_smmu_iotlb_sync`: the TLBIVALs were issued by `tlb_add_page`; wait for them.
    public func iotlbSync(_ gather: inout IOTLBGather) {
        guard ready.load(ordering: .acquiring) else { return }
        driver.smmu.tlbSync(bank: bank)
    }

    /// Linux: `arm_smmu_domain_free` → `arm_smmu_destroy_domain_context`.
    public func free() {
        guard ready.load(ordering: .acquiring) else { return }
        ready.store(false, ordering: .releasing)
        driver.releaseContextBank(bank)
        box = nil  // the table's pages go back to the frame allocator
    }
}
