import IOMMUBase
import IOMMUCore
import IOPageTable
import PhysicalMemory

/// The IOMMU driver scenarios run against until `IOMMUHardware` is wired in: an Arm SMMU
/// (LPAE stage 1) or Apple DART with real page tables in `PhysicalMemory`, a stream-match
/// table of `smrs` entries, `contextBanks` translation contexts, and the unmatched-stream
/// policy. Stream-map entries are taken at probe and given back only at release (never on
/// driver unbind), so a stream never falls back to bypass.
final class ModelIOMMUDriver: IOMMUDriver {
    let spec: Scenario.IOMMUSpec
    let frames: FrameAllocator
    let cpuPageSize: PageSize
    let tableWarnings: any WarningSink

    /// One stream-match entry (SMR + S2CR): which stream, which device.
    struct StreamEntry: Sendable {
        var streamID: UInt32
        var device: DeviceID
        var deviceName: String
    }

    struct State: Sendable {
        var entries: [StreamEntry?]
        var contextBanksInUse = 0
        var domainsBuilt = 0
    }

    let state: IOMMUMutex<State>

    init(spec: Scenario.IOMMUSpec, frames: FrameAllocator, cpuPageSize: PageSize, warnings: any WarningSink) {
        self.spec = spec
        self.frames = frames
        self.cpuPageSize = cpuPageSize
        self.tableWarnings = warnings
        self.state = IOMMUMutex(State(entries: Array(repeating: nil, count: spec.streamMatchRegisters)))
    }

    var name: String { spec.kind == .smmu ? "arm-smmu" : "apple-dart" }
    var pageSizes: PageSizeBitmap { spec.pageSizes }

    var streamEntries: [StreamEntry?] { state.withLock { $0.entries } }
    var contextBanksInUse: Int { state.withLock { $0.contextBanksInUse } }

    func probeDevice(_ device: IOMMUDeviceInfo) throws(IOMMUError) {
        let streams = device.streamIDs
        let result: IOMMUError? = state.withLock { s in
            let free = s.entries.indices.filter { s.entries[$0] == nil }
            guard free.count >= streams.count else { return IOMMUError(.noIOVASpace, device: device.id, code: .noSpace) }
            for (slot, stream) in zip(free, streams) {
                s.entries[slot] = StreamEntry(streamID: stream.rawValue, device: device.id, deviceName: device.name)
            }
            return nil
        }
        if let result { throw result }
    }

    func releaseDevice(_ device: IOMMUDeviceInfo) {
        state.withLock { s in
            for i in s.entries.indices where s.entries[i]?.device == device.id { s.entries[i] = nil }
        }
    }

    func deviceGroup(_ device: IOMMUDeviceInfo) throws(IOMMUError) -> IOMMUGroupChoice {
        device.pci == nil ? .newGroup : .pciDefault
    }

    func defaultDomainType(for device: IOMMUDeviceInfo) -> IOMMUDomainType? {
        // Linux's apple-dart: a DART whose pages are larger than the CPU's is identity only.
        if spec.kind == .dart, let smallest = spec.pageSizes.smallest, smallest.bytes > cpuPageSize.bytes { return .identity }
        return nil
    }

    func allocateDomain(type: IOMMUDomainType, for device: IOMMUDeviceInfo?) throws(IOMMUError) -> any IOMMUDomainOps {
        guard type.isPaging else { return NonPagingDomainOps() }
        let banks: Bool = state.withLock { s in
            guard s.contextBanksInUse < spec.contextBanks else { return false }
            s.contextBanksInUse += 1
            s.domainsBuilt += 1
            return true
        }
        guard banks else { throw IOMMUError(.noIOVASpace, code: .noSpace) }
        do {
            let table: AnyIOPageTable
            switch spec.kind {
            case .smmu:
                let granule = PageSize(shift: spec.pageSizes.smallest?.shift ?? 12)
                table = try AnyIOPageTable(kind: .armLPAEStage1, granule: granule,
                                           configuration: PageTableConfiguration(ias: 48, oas: 48), frames: frames, warnings: tableWarnings)
            case .dart:
                table = try AnyIOPageTable(kind: .appleDART, granule: .size16K,
                                           configuration: PageTableConfiguration(ias: 36, oas: 36), frames: frames, warnings: tableWarnings)
            }
            return ModelDomainOps(driver: self, table: table)
        } catch {
            state.withLock { $0.contextBanksInUse -= 1 }
            throw error
        }
    }

    func finaliseDomain(_ domain: IOMMUDomain, for device: IOMMUDeviceInfo) throws(IOMMUError) {
        domain.setPageSizes(spec.pageSizes)
        let end: UInt64 = spec.kind == .smmu ? (1 << 48) - 1 : (1 << 36) - 1
        domain.setGeometry(DomainGeometry(apertureStart: IOVA(0), apertureEnd: IOVA(end), forceAperture: true))
    }

    func attachDevice(_ device: IOMMUDeviceInfo, to domain: IOMMUDomain) throws(IOMMUError) {}

    func reservedRegions(for device: IOMMUDeviceInfo) -> [ReservedRegion] {
        spec.kind == .smmu ? [ReservedRegion.armSMMUSoftwareMSI] : []
    }

    func capable(_ capability: IOMMUCapability, device: IOMMUDeviceInfo) -> Bool {
        switch capability {
        case .deferredFlush, .cacheCoherency, .noExec: true
        default: false
        }
    }

    func contextBankReleased() { state.withLock { $0.contextBanksInUse -= 1 } }
}

/// One translation context: an IO page table; unmap gathers and the sync counts TLB flushes.
/// `@unchecked Sendable`: `IOPageTable` descriptors are atomics in `PhysicalMemory`, and the core calls
/// map/unmap concurrently only for disjoint ranges, as Linux does with io-pgtable.
final class ModelDomainOps: IOMMUDomainOps, @unchecked Sendable {
    let driver: ModelIOMMUDriver
    let table: AnyIOPageTable
    let syncs = IOMMUMutex<Int>(0)
    /// What is mapped, as the map calls described it (for `iommu inspect`; not used to translate).
    let chunks = IOMMUMutex<[UInt64: (paddr: UInt64, length: UInt64, prot: IOMMUProt)]>([:])

    var mappings: [(iova: UInt64, paddr: UInt64, length: UInt64, prot: IOMMUProt)] {
        chunks.withLock { $0 }.map { ($0.key, $0.value.paddr, $0.value.length, $0.value.prot) }.sorted { $0.iova < $1.iova }
    }

    init(driver: ModelIOMMUDriver, table: consuming AnyIOPageTable) {
        self.driver = driver
        self.table = table
    }

    func mapPages(iova: IOVA, paddr: PhysAddr, pageSize: PageSize, count: UInt64, prot: IOMMUProt, mapped: inout UInt64) throws(IOMMUError) {
        var invalidator = NoTLBInvalidator()
        var done: UInt64 = 0
        while done < count {
            let offset = done * pageSize.bytes
            let bytes = try table.map(iova: IOVA(iova.rawValue + offset), paddr: PhysAddr(paddr.rawValue + offset), pageSize: pageSize,
                                      count: Int(count - done), prot: prot, invalidator: &invalidator)
            guard bytes > 0 else { break }
            let start = iova.rawValue + offset, pa = paddr.rawValue + offset
            chunks.withLock { $0[start] = (pa, bytes, prot) }
            mapped += bytes
            done += bytes / pageSize.bytes
        }
    }

    func unmapPages(iova: IOVA, pageSize: PageSize, count: UInt64, gather: inout IOTLBGather) -> UInt64 {
        var invalidator = NoTLBInvalidator()
        var done: UInt64 = 0
        while done < count {
            let bytes = table.unmap(iova: IOVA(iova.rawValue + done * pageSize.bytes), pageSize: pageSize, count: Int(count - done),
                                    gather: &gather, invalidator: &invalidator)
            guard bytes > 0 else { break }
            forget(first: iova.rawValue + done * pageSize.bytes, length: bytes)
            done += bytes / pageSize.bytes
        }
        return done * pageSize.bytes
    }

    func forget(first: UInt64, length: UInt64) {
        let last = first + length - 1
        chunks.withLock { map in
            for (start, c) in map where start <= last && start + c.length - 1 >= first {
                map[start] = nil
                if start < first { map[start] = (c.paddr, first - start, c.prot) }
                let end = start + c.length - 1
                if end > last { map[last + 1] = (c.paddr + (last + 1 - start), end - last, c.prot) }
            }
        }
    }

    func iovaToPhys(_ iova: IOVA) -> PhysAddr? { table.iovaToPhys(iova) }
    func iotlbSync(_ gather: inout IOTLBGather) { syncs.withLock { $0 += 1 } }
    func free() { driver.contextBankReleased() }
}
