import DMAMapping
import IOMMUBase
import IOMMUCore
import PhysicalMemory

/// `iommu replay --dma`: the trace's DMA-API calls replayed through IOMMUKit's own DMA layer
/// (`DMAMapping`), which chooses its own IOVAs.
///
/// Platform: one `FlatIOMMUDriver` (4 KiB granule, 4 GiB aperture), default domains DMA (strict),
/// a device per traced device (PCI when the name is a PCI address, so the 32-bit-first rule
/// applies), each with the MSI window 0xfee00000..0xfeefffff reserved as on x86, 64-bit masks,
/// no maximum segment size below the 4 GiB segment boundary.
/// `dma_map_page`, `dma_map_sg` and `dma_alloc` are replayed; `dma_unmap_page`, `dma_unmap_sg`
/// and `dma_free` undo the call they belong to, with the addresses IOMMUKit chose for it.
public final class DMAReplay {
    public private(set) var calls = 0
    public private(set) var iovaMatches = 0
    /// Replayed calls that the DMA layer failed (mapping error / NULL).
    public private(set) var failures = 0
    /// Per traced call name: calls replayed and IOVA matches.
    public private(set) var byCall: [String: (calls: Int, matches: Int)] = [:]

    let core: IOMMUCore
    let api: DMAAPI
    let driver = FlatIOMMUDriver(name: "replay-iommu", coverage: 1 << 32, deferredFlush: false)
    var devices: [String: DMADevice] = [:]
    var pages: [String: [UInt64: (IOVA, UInt64, DMAMapping.DMADirection)]] = [:]
    var scatterLists: [String: [UInt64: DMAScatterMapping]] = [:]
    var coherent: [String: [UInt64: DMACoherentBuffer]] = [:]
    var nextStream: UInt32 = 1

    public init() throws(IOMMUError) {
        core = IOMMUCore(configuration: IOMMUCoreConfiguration(cpuPageSize: .size4K, defaultDomainType: .dma))
        _ = try core.registerIOMMU(name: "replay-iommu", driver: driver)
        let memory = try PhysicalMemory(ramSize: 256 << 20)
        var configuration = DMAConfiguration()
        configuration.cpuCount = 1
        configuration.debug = false
        api = try DMAAPI(core: core, memory: memory, frames: FrameAllocator(memory: memory), configuration: configuration,
                         clock: ManualDMAClock())
    }

    static func pciAddress(_ name: String) -> PCIAddress? {
        let parts = name.split(separator: ":")
        guard parts.count == 3, let seg = UInt16(parts[0], radix: 16), let bus = UInt8(parts[1], radix: 16) else { return nil }
        let df = parts[2].split(separator: ".")
        guard df.count == 2, let d = UInt8(df[0], radix: 16), let f = UInt8(df[1], radix: 16), d < 32, f < 8 else { return nil }
        return PCIAddress(segment: seg, bus: bus, device: d, function: f)
    }

    func device(_ name: String) -> DMADevice? {
        if let d = devices[name] { return d }
        let spec = FirmwareIOMMUSpec(iommu: "replay-iommu", streamIDs: [StreamID(nextStream)])
        nextStream += 1
        let msi = ReservedRegion(start: 0xFEE0_0000, length: 0x10_0000, prot: [.read, .write, .mmio], type: .msi)
        let description: DeviceDescription = Self.pciAddress(name).map {
            .pci($0, iommu: spec, firmwareReservedRegions: [msi])
        } ?? .platform(name, iommu: spec, firmwareReservedRegions: [msi])
        do throws(IOMMUError) {
            let id = try core.addDevice(description)
            try core.bindDriver(id, name: "replay")
            // Segment limits of the traced devices are unknown: let segments merge as far as the
            // 4 GiB boundary allows (virtio-blk on the sample merges 128 KiB segments).
            var options = DMADeviceOptions()
            options.maxSegmentSize = 0xFFFF_FFFF
            let d = try api.setupDevice(id, options: options)
            devices[name] = d
            return d
        } catch {
            return nil
        }
    }

    /// The trace prints segment lengths (after merging), not entry lengths: equal counts mean one
    /// entry per segment; otherwise each entry but the last is assumed to run to its page end.
    static func entryLengths(_ e: DMAMapSGEvent) -> [UInt64]? {
        if e.physAddresses.count == e.segmentLengths.count { return e.segmentLengths }
        let total = e.segmentLengths.reduce(0, +)
        var lengths = e.physAddresses.dropLast().map { 4096 - ($0 & 0xFFF) }
        let used = lengths.reduce(0, +)
        guard total > used else { return nil }
        lengths.append(total - used)
        return lengths
    }

    static func direction(_ d: DMADirection) -> DMAMapping.DMADirection {
        DMAMapping.DMADirection(rawValue: d.rawValue) ?? .bidirectional
    }

    /// Feeds one trace event (others are ignored).
    public func observe(_ event: TraceEvent) {
        switch event.body {
        case .dmaMapPage(let e):
            guard e.dmaAddress.rawValue != UInt64.max else { return }   // the kernel's call failed
            calls += 1
            guard let dev = device(e.device) else { failures += 1; return }
            let a = dev.mapPage(PhysAddr(e.physAddress.rawValue), length: e.length, direction: Self.direction(e.direction), cpu: 0)
            if dev.mappingError(a) { failures += 1; return }
            byCall["dma_map_page", default: (0, 0)].calls += 1
            if a == e.dmaAddress { iovaMatches += 1; byCall["dma_map_page", default: (0, 0)].matches += 1 }
            pages[e.device, default: [:]][e.dmaAddress.rawValue] = (a, e.length, Self.direction(e.direction))
        case .dmaUnmapPage(let e):
            guard let dev = devices[e.device], let (a, length, dir) = pages[e.device]?.removeValue(forKey: e.dmaAddress.rawValue) else { return }
            dev.unmapPage(a, length: length, direction: dir, cpu: 0)
        case .dmaMapSG(let e):
            calls += 1
            guard !e.physAddresses.isEmpty, !e.truncated, let lengths = Self.entryLengths(e), let dev = device(e.device) else {
                failures += 1; return
            }
            let entries = zip(e.physAddresses, lengths).map { DMAScatterEntry(paddr: PhysAddr($0), length: $1) }
            guard let sg = dev.mapSG(entries, direction: Self.direction(e.direction), cpu: 0) else { failures += 1; return }
            if sg.addresses.map(\.rawValue) == Array(e.dmaAddresses.prefix(sg.addresses.count)), sg.addresses.count == e.dmaAddresses.count {
                iovaMatches += 1
                byCall["dma_map_sg", default: (0, 0)].matches += 1
            }
            byCall["dma_map_sg", default: (0, 0)].calls += 1
            scatterLists[e.device, default: [:]][e.physAddresses[0]] = sg
        case .dmaUnmapSG(let e):
            guard let dev = devices[e.device], let first = e.physAddresses.first,
                  let sg = scatterLists[e.device]?.removeValue(forKey: first) else { return }
            dev.unmapSG(sg, direction: Self.direction(e.direction), cpu: 0)
        case .dmaAlloc(let e):
            guard e.dmaAddress.rawValue != UInt64.max else { return }
            calls += 1
            guard let dev = device(e.device), let buf = dev.allocCoherent(size: e.length, cpu: 0) else { failures += 1; return }
            byCall["dma_alloc", default: (0, 0)].calls += 1
            if buf.dmaAddress == e.dmaAddress { iovaMatches += 1; byCall["dma_alloc", default: (0, 0)].matches += 1 }
            coherent[e.device, default: [:]][e.dmaAddress.rawValue] = buf
        case .dmaFree(let e):
            guard let dev = devices[e.device], let buf = coherent[e.device]?.removeValue(forKey: e.dmaAddress.rawValue) else { return }
            dev.freeCoherent(buf, cpu: 0)
        default:
            return
        }
    }
}
