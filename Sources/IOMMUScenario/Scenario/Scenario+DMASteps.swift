import DMAMapping
import IOMMUBase
import IOMMUCore
import IOMMUHardware
import PhysicalMemory

/// The DMA API (`DMAMapping`) of a scenario platform: one `DMAAPI` on a manual clock that
/// `advance-clock` drives, a `DMADevice` per device (set up on its first DMA step with the
/// device's `dma-mask`; untrusted devices bounce through a 1 MiB swiotlb pool), and the
/// scatterlists / coherent buffers the workload named.
final class ScenarioDMAState {
    let clock = ManualDMAClock()
    let api: DMAAPI
    var devices: [String: DMADevice] = [:]
    var scatterLists: [String: DMAScatterMapping] = [:]
    var coherent: [String: DMACoherentBuffer] = [:]

    init(platform: Scenario.Platform, core: IOMMUCore, memory: PhysicalMemory, frames: FrameAllocator, warnings: any WarningSink) throws(IOMMUError) {
        var configuration = DMAConfiguration()
        configuration.cpuPageSize = platform.cpuPageSize
        configuration.bouncePoolBytes = platform.devices.contains(where: \.untrusted) ? 1 << 20 : 0
        api = try DMAAPI(core: core, memory: memory, frames: frames, configuration: configuration, clock: clock, warningSink: warnings)
    }

    /// Time passes: the clock moves and due flush-queue timers run. Returns the timers that fired.
    func advance(nanoseconds: UInt64) -> Int {
        clock.advance(nanoseconds: Int64(nanoseconds))
        return api.tick()
    }
}

extension ScenarioRunner {
    /// The device's DMA-API handle, set up on first use (`iommu_setup_dma_ops`).
    func dmaDevice(_ name: String) throws(IOMMUError) -> DMADevice {
        if let d = dmaLayer.devices[name] { return d }
        let spec = scenario.platform.devices.first { $0.name == name }!
        var options = DMADeviceOptions()
        let mask = spec.dmaMaskBits >= 64 ? UInt64.max : (UInt64(1) << UInt64(spec.dmaMaskBits)) - 1
        options.dmaMask = mask
        options.coherentDMAMask = mask
        let d = try dmaLayer.api.setupDevice(try id(name), options: options)
        dmaLayer.devices[name] = d
        return d
    }

    /// Device-side check after a device access that went through (stale IOTLB use, writes into
    /// to-device mappings): the report, with the mapping's history, becomes an event.
    func dmaDeviceAccessed(device: String, iova: UInt64, length: Int, isWrite: Bool, outcome: DMAOutcome, record: inout ScenarioReport.StepRecord) {
        guard let devID = deviceIDs[device], dmaLayer.devices[device] != nil else { return }
        if let report = dmaLayer.api.deviceAccessed(device: devID, iova: IOVA(iova), length: UInt64(length), isWrite: isWrite,
                                                    staleTLB: outcome.usedStaleTLBEntry) {
            record.events.append("device-side check: \(report)")
        }
    }
}

/// `dma-map-page`, `dma-unmap-page`, `dma-map-sg`, `dma-unmap-sg`, `dma-alloc-coherent`,
/// `dma-free-coherent`, `dma-sync-for-cpu`, `dma-sync-for-device`, `dma-mapping-error`:
/// a driver's calls into the DMA API (`DMAMapping`).
struct DMAStep: ScenarioLayerStep {
    enum Call: Sendable {
        case mapPage(paddr: Scenario.Value?, offset: UInt64, length: UInt64, data: [UInt8]?, checkError: Bool)
        case unmapPage(address: Scenario.Value, length: UInt64)
        case mapSG(entries: [(paddr: Scenario.Value?, length: UInt64)])
        case unmapSG(name: String)
        case allocCoherent(size: UInt64)
        case freeCoherent(name: String)
        case sync(forCPU: Bool, address: Scenario.Value, length: UInt64)
        case mappingError(address: Scenario.Value)
    }

    var device: String
    var call: Call
    var direction: DMAMapping.DMADirection
    var name: String?

    static var actionKeys: [String] {
        ["dma-map-page", "dma-unmap-page", "dma-map-sg", "dma-unmap-sg", "dma-alloc-coherent", "dma-free-coherent",
         "dma-sync-for-cpu", "dma-sync-for-device", "dma-mapping-error"]
    }

    static func value(_ field: Field) throws(ScenarioInputError) -> Scenario.Value {
        let text = try field.string()
        if text.hasPrefix("$") {
            let parts = text.dropFirst().split(separator: "+", maxSplits: 1)
            guard let first = parts.first, !first.isEmpty else { throw field.fail("expected \"$name\" or \"$name+OFFSET\"") }
            var plus: UInt64 = 0
            if parts.count == 2 {
                guard let p = Field.parseNumber(String(parts[1])) else { throw field.fail("bad offset in '\(text)'") }
                plus = p
            }
            return .name(String(first), plus: plus)
        }
        return .literal(try field.number())
    }

    static func direction(_ field: Field?) throws(ScenarioInputError) -> DMAMapping.DMADirection {
        guard let field else { return .bidirectional }
        switch try field.string() {
        case "to-device": return .toDevice
        case "from-device": return .fromDevice
        case "bidirectional": return .bidirectional
        case "none": return .none
        default: throw field.fail("expected to-device, from-device, bidirectional or none")
        }
    }

    static func data(_ field: Field) throws(ScenarioInputError) -> [UInt8] {
        let s = try field.string()
        if s.hasPrefix("text:") { return Array(s.dropFirst(5).utf8) }
        let hex = s.filter { !$0.isWhitespace }
        guard hex.count % 2 == 0, !hex.isEmpty else { throw field.fail("expected hex bytes like 'de ad be ef' or text:STRING") }
        var out: [UInt8] = []
        var i = hex.startIndex
        while i < hex.endIndex {
            let j = hex.index(i, offsetBy: 2)
            guard let b = UInt8(hex[i..<j], radix: 16) else { throw field.fail("bad hex byte '\(hex[i..<j])'") }
            out.append(b)
            i = j
        }
        return out
    }

    static func parse(key: String, value f: Field, platform: Scenario.Platform) throws(ScenarioInputError) -> DMAStep {
        let allowed: [String]
        switch key {
        case "dma-map-page": allowed = ["device", "paddr", "buffer", "offset", "length", "direction", "data", "check-error", "as"]
        case "dma-unmap-page", "dma-sync-for-cpu", "dma-sync-for-device": allowed = ["device", "address", "length", "direction"]
        case "dma-map-sg": allowed = ["device", "entries", "direction", "as"]
        case "dma-unmap-sg": allowed = ["device", "sg", "direction"]
        case "dma-alloc-coherent": allowed = ["device", "size", "as"]
        case "dma-free-coherent": allowed = ["device", "buffer"]
        default: allowed = ["device", "address"]
        }
        let m = try f.mapping(allowed: allowed)
        let df = try m.required("device")
        let device = try df.string()
        guard platform.devices.contains(where: { $0.name == device }) else {
            throw df.fail("unknown device '\(device)'; expected one of: \(platform.devices.map(\.name).joined(separator: ", "))")
        }
        let dir = try direction(m["direction"])
        let name = try m["as"]?.string()
        let call: Call
        switch key {
        case "dma-map-page":
            let paddr = try (m["paddr"] ?? m["buffer"]).map { x throws(ScenarioInputError) in try value(x) }
            call = .mapPage(paddr: paddr, offset: try m["offset"]?.number() ?? 0, length: try m.required("length").number(in: 1...(1 << 32)),
                            data: try m["data"].map { x throws(ScenarioInputError) in try data(x) }, checkError: try m["check-error"]?.bool() ?? true)
        case "dma-unmap-page":
            call = .unmapPage(address: try value(try m.required("address")), length: try m.required("length").number(in: 1...(1 << 32)))
        case "dma-sync-for-cpu", "dma-sync-for-device":
            call = .sync(forCPU: key == "dma-sync-for-cpu", address: try value(try m.required("address")),
                         length: try m.required("length").number(in: 1...(1 << 32)))
        case "dma-map-sg":
            var entries: [(paddr: Scenario.Value?, length: UInt64)] = []
            for e in try m.required("entries").array() {
                let em = try e.mapping(allowed: ["paddr", "length"])
                entries.append((try em["paddr"].map { x throws(ScenarioInputError) in try value(x) }, try em.required("length").number(in: 1...(1 << 32))))
            }
            guard !entries.isEmpty else { throw f.fail("expected at least one entry") }
            call = .mapSG(entries: entries)
        case "dma-unmap-sg": call = .unmapSG(name: try m.required("sg").string())
        case "dma-alloc-coherent": call = .allocCoherent(size: try m.required("size").number(in: 1...(1 << 32)))
        case "dma-free-coherent": call = .freeCoherent(name: try m.required("buffer").string())
        default: call = .mappingError(address: try value(try m.required("address")))
        }
        return DMAStep(device: device, call: call, direction: dir, name: name)
    }

    func perform(on runner: ScenarioRunner, record: inout ScenarioReport.StepRecord) throws(IOMMUError) -> ScenarioRunner.Outcome {
        let dev = try runner.dmaDevice(device)
        func hex(_ v: UInt64) -> String { runner.hex(v) }
        let bind = name.map { " as $\($0)" } ?? ""
        switch call {
        case let .mapPage(paddrValue, offset, length, data, checkError):
            var pa: UInt64
            if let paddrValue {
                pa = try runner.resolve(paddrValue)
            } else {
                let size = PageSize(bytes: max(UInt64(4096), offset + length).nextPowerOfTwo) ?? .size4K
                pa = try runner.frames.allocate(size).rawValue
            }
            pa += offset
            if let data { try runner.memory.writeBytes(PhysAddr(pa), data) }
            let a = dev.mapPage(PhysAddr(pa), length: length, direction: direction, cpu: 0)
            record.action = "dma_map_page \(device) pa \(hex(pa)) +\(hex(length)) \(direction)\(bind)"
            let failed = checkError ? dev.mappingError(a) : a == DMADevice.mappingErrorAddress
            if failed { return ScenarioRunner.Outcome(iova: a.rawValue, text: "DMA_MAPPING_ERROR") }
            if let name { runner.namedValues[name] = a.rawValue }
            return ScenarioRunner.Outcome(bytes: length, iova: a.rawValue, text: "dma address \(hex(a.rawValue))")
        case let .unmapPage(value, length):
            let a = try runner.resolve(value)
            record.action = "dma_unmap_page \(device) \(hex(a)) +\(hex(length)) \(direction)"
            dev.unmapPage(IOVA(a), length: length, direction: direction, cpu: 0)
            return ScenarioRunner.Outcome()
        case let .sync(forCPU, value, length):
            let a = try runner.resolve(value)
            record.action = "dma_sync_single_for_\(forCPU ? "cpu" : "device") \(device) \(hex(a)) +\(hex(length)) \(direction)"
            if forCPU { dev.syncSingleForCPU(IOVA(a), length: length, direction: direction) }
            else { dev.syncSingleForDevice(IOVA(a), length: length, direction: direction) }
            return ScenarioRunner.Outcome()
        case .mappingError(let value):
            let a = try runner.resolve(value)
            record.action = "dma_mapping_error \(device) \(hex(a))"
            let failed = dev.mappingError(IOVA(a))
            return ScenarioRunner.Outcome(iova: a, text: failed ? "error" : "no error")
        case .mapSG(let list):
            var entries: [DMAScatterEntry] = []
            for e in list {
                let pa: UInt64
                if let v = e.paddr { pa = try runner.resolve(v) } else {
                    pa = try runner.frames.allocate(PageSize(bytes: max(UInt64(4096), e.length).nextPowerOfTwo) ?? .size4K).rawValue
                }
                entries.append(DMAScatterEntry(paddr: PhysAddr(pa), length: e.length))
            }
            record.action = "dma_map_sg \(device) \(entries.count) entr\(entries.count == 1 ? "y" : "ies") \(direction)\(bind)"
            guard let sg = dev.mapSG(entries, direction: direction, cpu: 0) else {
                return ScenarioRunner.Outcome(iova: DMADevice.mappingErrorAddress.rawValue, text: "mapping failed (0 segments)")
            }
            for (i, s) in sg.segments.enumerated() { record.events.append("segment \(i): \(hex(s.address.rawValue)) +\(hex(s.length))") }
            if let name {
                runner.namedValues[name] = sg.iova.rawValue
                runner.dmaLayer.scatterLists[name] = sg
            }
            return ScenarioRunner.Outcome(bytes: sg.iovaLength, iova: sg.iova.rawValue, text: "\(sg.segments.count) segment(s) at \(hex(sg.iova.rawValue))")
        case .unmapSG(let n):
            record.action = "dma_unmap_sg \(device) $\(n) \(direction)"
            guard let sg = runner.dmaLayer.scatterLists[n] else { throw IOMMUError(.invalidArgument) }
            dev.unmapSG(sg, direction: direction, cpu: 0)
            return ScenarioRunner.Outcome()
        case .allocCoherent(let size):
            record.action = "dma_alloc_coherent \(device) \(hex(size))\(bind)"
            guard let buf = dev.allocCoherent(size: size, cpu: 0) else {
                return ScenarioRunner.Outcome(error: IOMMUError(.outOfMemory), text: "NULL")
            }
            if let name {
                runner.namedValues[name] = buf.dmaAddress.rawValue
                runner.dmaLayer.coherent[name] = buf
            }
            return ScenarioRunner.Outcome(bytes: buf.size, iova: buf.dmaAddress.rawValue, text: "dma address \(hex(buf.dmaAddress.rawValue))")
        case .freeCoherent(let n):
            record.action = "dma_free_coherent \(device) $\(n)"
            guard let buf = runner.dmaLayer.coherent[n] else { throw IOMMUError(.invalidArgument) }
            dev.freeCoherent(buf, cpu: 0)
            runner.dmaLayer.coherent[n] = nil
            return ScenarioRunner.Outcome()
        }
    }
}

/// `expect: {dma: {device: nic0, mapping-error: true, live-mappings: 0, stale-windows: {count: 1, max: 10ms},
/// flush-queue: {queued: 1, freed: 1, pending: 0, started: 1, finished: 1, timer-armed: false}}}`.
public struct DMAExpectation: Sendable {
    var device: String
    var mappingError: Bool?
    var liveMappings: Int?
    var staleWindowCount: UInt64?
    var staleWindowMax: UInt64?
    var flushQueue: [(String, UInt64)] = []

    static func parse(_ f: Field, device: (Field) throws(ScenarioInputError) -> String) throws(ScenarioInputError) -> DMAExpectation {
        let m = try f.mapping(allowed: ["device", "mapping-error", "live-mappings", "stale-windows", "flush-queue"])
        var e = DMAExpectation(device: try device(try m.required("device")))
        e.mappingError = try m["mapping-error"]?.bool()
        e.liveMappings = try m["live-mappings"]?.int(in: 0...1 << 30)
        if let w = m["stale-windows"] {
            let wm = try w.mapping(allowed: ["count", "max"])
            e.staleWindowCount = try wm["count"]?.number()
            if let mx = wm["max"] {
                if case .scalar = mx.node, let n = Field.parseNumber(try mx.string()) { e.staleWindowMax = n }
                else { e.staleWindowMax = try ClockStep.parse(key: "advance-clock", value: mx, platform: Scenario.Platform()).nanoseconds }
            }
        }
        if let q = m["flush-queue"] {
            let qm = try q.mapping(allowed: ["queued", "freed", "pending", "started", "finished", "timer-armed"])
            for (k, v) in qm.entries {
                e.flushQueue.append((k, k == "timer-armed" ? (try v.bool() ? 1 : 0) : try v.number()))
            }
        }
        return e
    }

    /// (what was checked, failure text or nil).
    func check(runner: ScenarioRunner, stepAddress: UInt64?) -> [(String, String?)] {
        var out: [(String, String?)] = []
        if let mappingError {
            let actual = stepAddress == DMADevice.mappingErrorAddress.rawValue
            out.append(("expect mapping error \(mappingError)", actual == mappingError ? nil : "\(actual)"))
        }
        let dev = runner.dmaLayer.devices[device]
        if let liveMappings {
            let n = dev?.liveMappings.count ?? 0
            out.append(("expect \(device) \(liveMappings) live DMA mapping(s)", n == liveMappings ? nil : "\(n)"))
        }
        let w = dev?.cookie?.staleWindows.snapshot()
        if let staleWindowCount {
            out.append(("expect \(staleWindowCount) stale window(s)", w?.count == staleWindowCount ? nil : "\(w?.count ?? 0)"))
        }
        if let staleWindowMax {
            let mx = UInt64(max(0, w?.maxNanoseconds ?? 0))
            out.append(("expect longest stale window \(staleWindowMax) ns", mx == staleWindowMax ? nil : "\(mx) ns"))
        }
        if !flushQueue.isEmpty {
            let s = dev?.cookie?.statistics
            for (k, v) in flushQueue {
                let actual: UInt64? = s.map { s in
                    switch k {
                    case "queued": s.queued
                    case "freed": s.freedFromQueue
                    case "pending": UInt64(s.pending)
                    case "started": s.flushesStarted
                    case "finished": s.flushesFinished
                    default: s.timerArmed ? 1 : 0
                    }
                }
                out.append(("expect flush-queue \(k) \(v)", actual == v ? nil : actual.map { "\($0)" } ?? "no DMA cookie"))
            }
        }
        return out
    }
}
