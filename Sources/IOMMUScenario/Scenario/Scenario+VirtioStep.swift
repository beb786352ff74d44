import IOMMUBase
import IOMMUCore
import IOPageTable
import PhysicalMemory
import VirtioIOMMU

// The virtio-iommu layer of the scenario format: the `virtio-iommu:` platform section, the
// `virtio-*` steps (a `ScenarioLayerStep`) and the `virtio-*` expectations
// (a `ScenarioLayerExpectation`). Schema: docs/scenarios.md, "virtio-iommu".

extension Scenario {
    /// `platform.virtio-iommu`: the device's configuration and its endpoints.
    public struct VirtioSpec: Sendable {
        public var configuration: VirtioIOMMUConfiguration
        public var endpoints: [VirtioEndpointSpec]
        public var line: Int
    }

    /// One endpoint: a platform device (by name) with its endpoint ID.
    public struct VirtioEndpointSpec: Sendable {
        public var device: String
        public var id: UInt32
        public var reservedRegions: [ReservedRegion]
        public var table: VirtioTableSpec?
        public var hostUsableIOVARanges: [ClosedRange<UInt64>]?
    }

    static let virtioFeatureNames: [(String, VirtioIOMMUFeatures)] = [
        ("input-range", .inputRange), ("domain-range", .domainRange), ("map-unmap", .mapUnmap), ("bypass", .legacyBypass),
        ("probe", .probe), ("mmio", .mmio), ("bypass-config", .bypassConfig), ("version-1", .version1),
        ("access-platform", .accessPlatform),
    ]

    static func parseVirtioFeatures(_ f: Field) throws(ScenarioInputError) -> VirtioIOMMUFeatures {
        var set: VirtioIOMMUFeatures = []
        for e in try f.array() {
            let n = try e.string()
            guard let feature = virtioFeatureNames.first(where: { $0.0 == n })?.1 else {
                throw e.fail("unknown feature '\(n)'; expected one of: \(virtioFeatureNames.map(\.0).joined(separator: ", "))")
            }
            set.insert(feature)
        }
        return set
    }

    static func parseRange(_ f: Field, in range: ClosedRange<UInt64> = 0...UInt64.max) throws(ScenarioInputError) -> ClosedRange<UInt64> {
        let pair = try f.array()
        guard pair.count == 2 else { throw f.fail("expected [first, last]") }
        let first = try pair[0].number(in: range), last = try pair[1].number(in: range)
        guard first <= last else { throw f.fail("first is above last") }
        return first...last
    }

    static func parseTableSpec(_ f: Field) throws(ScenarioInputError) -> VirtioTableSpec {
        let m = try f.mapping(allowed: ["format", "granule"])
        let kinds: [String: PageTableFormatKind] = ["arm-lpae-s1": .armLPAEStage1, "arm-lpae-s2": .armLPAEStage2,
                                                    "dart": .appleDART, "dart2": .appleDART2]
        let ff = try m.required("format")
        let name = try ff.string()
        guard let kind = kinds[name] else { throw ff.fail("unknown table format '\(name)'; expected arm-lpae-s1, arm-lpae-s2, dart or dart2") }
        let granule = try m["granule"].map { g throws(ScenarioInputError) in try parsePageSize(g) } ?? (kind == .appleDART || kind == .appleDART2 ? .size16K : .size4K)
        guard [PageSize.size4K, .size16K, .size64K].contains(granule) else { throw m["granule"]!.fail("table granules are 4K, 16K or 64K") }
        return VirtioTableSpec(kind: kind, granule: granule)
    }

    static func parseVirtio(_ f: Field, platform: Platform) throws(ScenarioInputError) -> VirtioSpec {
        let m = try f.mapping(allowed: ["features", "page-size-mask", "input-range", "domain-range", "probe-size", "boot-bypass",
                                        "table", "msi-window", "host-usable-iova-ranges", "limits", "endpoints"])
        var c = VirtioIOMMUConfiguration()
        if let g = m["features"] { c.offeredFeatures = try parseVirtioFeatures(g) }
        if let g = m["page-size-mask"] {
            c.pageSizeMask = try g.number(in: 1...UInt64.max)
            guard c.granule >= 4096 else { throw g.fail("the lowest set bit (the granule) must be at least 4K") }
        }
        if let g = m["input-range"] {
            let r = try parseRange(g, in: 0...(1 << 48) - 1)
            c.inputFirst = r.lowerBound
            c.inputLast = r.upperBound
        }
        if let g = m["domain-range"] {
            let r = try parseRange(g, in: 0...UInt64(UInt32.max))
            c.domainFirst = UInt32(r.lowerBound)
            c.domainLast = UInt32(r.upperBound)
        }
        if let g = m["probe-size"] { c.probeSize = UInt32(try g.number(in: 0...1 << 20)) }
        if let g = m["boot-bypass"] { c.bootBypass = try g.bool() }
        if let g = m["table"] {
            c.defaultTable = try parseTableSpec(g)
            guard c.defaultTable.granule.bytes <= c.granule else { throw g.fail("the table granule must not exceed the page_size_mask granule") }
        }
        if let g = m["msi-window"] {
            if case .scalar = g.node, try g.string() == "none" { c.msiWindow = nil } else { c.msiWindow = try parseRange(g) }
        }
        if let g = m["host-usable-iova-ranges"] {
            var ranges: [ClosedRange<UInt64>] = []
            for e in try g.array() { ranges.append(try parseRange(e)) }
            c.hostUsableIOVARanges = ranges
        }
        if let g = m["limits"] {
            let l = try g.mapping(allowed: ["domains", "endpoints", "mappings-per-domain"])
            if let h = l["domains"] { c.limits.maxDomains = try h.int(in: 1...1 << 20) }
            if let h = l["endpoints"] { c.limits.maxEndpoints = try h.int(in: 1...1 << 20) }
            if let h = l["mappings-per-domain"] { c.limits.maxMappingsPerDomain = try h.int(in: 1...1 << 24) }
        }
        if c.offeredFeatures.isSuperset(of: [.legacyBypass, .bypassConfig]) {
            throw (m["features"] ?? f).fail("bypass and bypass-config cannot be offered together")
        }
        var endpoints: [VirtioEndpointSpec] = []
        for e in try m.required("endpoints").array() {
            let em = try e.mapping(allowed: ["device", "id", "reserved-regions", "table", "host-usable-iova-ranges"])
            let df = try em.required("device")
            let name = try df.string()
            guard let device = platform.devices.first(where: { $0.name == name }) else {
                throw df.fail("unknown device '\(name)'; expected one of: \(platform.devices.map(\.name).joined(separator: ", "))")
            }
            guard device.iommu == nil else { throw df.fail("device '\(name)' is behind \(device.iommu!); a virtio-iommu endpoint has no 'iommu'") }
            guard device.presentAtBoot else { throw df.fail("device '\(name)' is not present at boot; endpoints are added at boot") }
            guard !endpoints.contains(where: { $0.device == name }) else { throw df.fail("device '\(name)' is an endpoint twice") }
            let idf = try em.required("id")
            let id = UInt32(try idf.number(in: 0...UInt64(UInt32.max)))
            guard !endpoints.contains(where: { $0.id == id }) else { throw idf.fail("endpoint ID \(id) is used twice") }
            var table: VirtioTableSpec?
            if let t = em["table"] {
                table = try parseTableSpec(t)
                guard table!.granule.bytes <= c.granule else { throw t.fail("the table granule must not exceed the page_size_mask granule") }
            }
            var usable: [ClosedRange<UInt64>]?
            if let g = em["host-usable-iova-ranges"] {
                var ranges: [ClosedRange<UInt64>] = []
                for r in try g.array() { ranges.append(try parseRange(r)) }
                usable = ranges
            }
            endpoints.append(VirtioEndpointSpec(
                device: name, id: id,
                reservedRegions: try em["reserved-regions"].map { r throws(ScenarioInputError) in try parseReservedRegions(r) } ?? [],
                table: table, hostUsableIOVARanges: usable))
        }
        return VirtioSpec(configuration: c, endpoints: endpoints, line: f.line)
    }
}

/// The runner's virtio-iommu device, its endpoints and what the current step produced.
final class ScenarioVirtio {
    let spec: Scenario.VirtioSpec
    let device: VirtioIOMMUDevice
    /// What the current step's request answered (reset at every step).
    var status: VirtioIOMMUStatus?
    var usedLength: UInt32?
    var response: [UInt8]?
    /// Fault records taken from eventq by the current step.
    var events: [VirtioUsedBuffer] = []
    var translation: VirtioTranslation?

    init(spec: Scenario.VirtioSpec, memory: PhysicalMemory, frames: FrameAllocator, core: IOMMUCore, warnings: any WarningSink) throws(IOMMUError) {
        self.spec = spec
        device = try VirtioIOMMUDevice(configuration: spec.configuration, memory: memory, frames: frames, core: core, warnings: warnings)
    }

    func beginStep() {
        status = nil
        usedLength = nil
        response = nil
        events = []
        translation = nil
    }

    /// Adds `device` as an endpoint if it is one (nil otherwise).
    func addEndpoint(device name: String, description: DeviceDescription) throws(IOMMUError) -> DeviceID? {
        guard let e = spec.endpoints.first(where: { $0.device == name }) else { return nil }
        return try device.addEndpoint(e.id, VirtioEndpointConfiguration(
            device: description, table: e.table, reservedRegions: e.reservedRegions, hostUsableIOVARanges: e.hostUsableIOVARanges))
    }
}

/// An endpoint in a step: an endpoint ID or the name of an endpoint device.
enum VirtioEndpointRef: Sendable, CustomStringConvertible {
    case id(UInt32)
    case device(String)

    static func parse(_ f: Field, platform: Scenario.Platform) throws(ScenarioInputError) -> VirtioEndpointRef {
        guard let spec = platform.virtio else { throw f.fail("the platform has no 'virtio-iommu'") }
        let text = try f.string()
        if let n = Field.parseNumber(text) {
            guard n <= UInt64(UInt32.max) else { throw f.fail("\(text) is out of range: expected 0...0xffffffff") }
            return .id(UInt32(n))  // unknown IDs are allowed: the device answers NOENT / R_UNKNOWN
        }
        guard spec.endpoints.contains(where: { $0.device == text }) else {
            throw f.fail("unknown endpoint '\(text)'; expected an endpoint ID or one of: \(spec.endpoints.map(\.device).joined(separator: ", "))")
        }
        return .device(text)
    }

    func resolve(_ spec: Scenario.VirtioSpec) -> UInt32 {
        switch self {
        case .id(let n): n
        case .device(let name): spec.endpoints.first { $0.device == name }!.id
        }
    }

    var description: String {
        switch self {
        case .id(let n): "endpoint \(n)"
        case .device(let name): "endpoint \(name)"
        }
    }
}

/// Little-endian request encoders (the Linux driver's layouts).
enum VirtioRequestBytes {
    static func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
    static func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
    static func le(_ bytes: ArraySlice<UInt8>) -> UInt64 { bytes.reversed().reduce(0) { $0 << 8 | UInt64($1) } }
}

/// The `virtio-*` steps: the guest driver's side of the device (features, config space,
/// requestq, eventq) and the endpoints' DMA.
struct VirtioStep: ScenarioLayerStep {
    enum Request: Sendable {
        case attach(domain: UInt32, endpoint: VirtioEndpointRef, bypass: Bool)
        case detach(domain: UInt32, endpoint: VirtioEndpointRef)
        case map(domain: UInt32, first: UInt64, last: UInt64, phys: UInt64, flags: UInt32)
        case unmap(domain: UInt32, first: UInt64, last: UInt64)
        case probe(endpoint: VirtioEndpointRef)
        case raw([UInt8])
    }

    enum Kind: Sendable {
        /// nil: what Linux accepts of the offer.
        case negotiate(VirtioIOMMUFeatures?)
        case configRead(offset: Int, count: Int)
        case configWrite(offset: Int, bytes: [UInt8])
        case request(Request, writable: Int?)
        case dmaWrite(endpoint: VirtioEndpointRef, iova: UInt64, bytes: [UInt8])
        case dmaRead(endpoint: VirtioEndpointRef, iova: UInt64, length: Int)
        case translate(endpoint: VirtioEndpointRef, iova: UInt64, write: Bool)
        case events(take: Bool, post: Int, length: Int)
    }

    var kind: Kind

    static var actionKeys: [String] {
        ["virtio-negotiate", "virtio-config-read", "virtio-config-write", "virtio-request", "virtio-dma-write", "virtio-dma-read",
         "virtio-translate", "virtio-events"]
    }

    static func hexBytes(_ field: Field) throws(ScenarioInputError) -> [UInt8] {
        let text = try field.string()
        if text.hasPrefix("text:") { return Array(text.dropFirst(5).utf8) }
        let hex = text.filter { !$0.isWhitespace }
        guard hex.count % 2 == 0, !hex.isEmpty else { throw field.fail("expected hex bytes like 'de ad be ef' or text:STRING") }
        var out: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            guard let b = UInt8(hex[index..<next], radix: 16) else { throw field.fail("'\(hex[index..<next])' is not a hex byte") }
            out.append(b)
            index = next
        }
        return out
    }

    static func mapFlags(_ f: Field) throws(ScenarioInputError) -> UInt32 {
        let text = try f.string()
        if let n = Field.parseNumber(text) {
            guard n <= UInt64(UInt32.max) else { throw f.fail("\(text) is out of range: expected 0...0xffffffff") }
            return UInt32(n)
        }
        var flags: UInt32 = 0
        for ch in text {
            switch ch {
            case "r": flags |= VirtioIOMMUWire.mapFlagRead
            case "w": flags |= VirtioIOMMUWire.mapFlagWrite
            case "m": flags |= VirtioIOMMUWire.mapFlagMMIO
            case "-": break
            default: throw f.fail("unknown map flag '\(ch)'; expected letters from r w m (or '-' for none, or a number)")
            }
        }
        return flags
    }

    static func parse(key: String, value: Field, platform: Scenario.Platform) throws(ScenarioInputError) -> VirtioStep {
        guard platform.virtio != nil else { throw value.fail("'\(key)' needs a 'virtio-iommu' section in the platform") }
        func u32(_ f: Field) throws(ScenarioInputError) -> UInt32 { UInt32(try f.number(in: 0...UInt64(UInt32.max))) }
        func endpoint(_ f: Field) throws(ScenarioInputError) -> VirtioEndpointRef { try VirtioEndpointRef.parse(f, platform: platform) }
        switch key {
        case "virtio-negotiate":
            if case .scalar = value.node {
                guard try value.string() == "linux" else { throw value.fail("expected 'linux' or a list of features") }
                return VirtioStep(kind: .negotiate(nil))
            }
            return VirtioStep(kind: .negotiate(try Scenario.parseVirtioFeatures(value)))
        case "virtio-config-read":
            if value.isNull { return VirtioStep(kind: .configRead(offset: 0, count: VirtioIOMMUWire.configLength)) }
            let m = try value.mapping(allowed: ["offset", "length"])
            return VirtioStep(kind: .configRead(offset: try m["offset"]?.int(in: 0...4096) ?? 0,
                                                count: try m["length"]?.int(in: 1...4096) ?? VirtioIOMMUWire.configLength))
        case "virtio-config-write":
            let m = try value.mapping(allowed: ["offset", "data"])
            return VirtioStep(kind: .configWrite(offset: try m.required("offset").int(in: 0...4096), bytes: try hexBytes(try m.required("data"))))
        case "virtio-request":
            let kinds = ["attach", "detach", "map", "unmap", "probe", "readable"]
            let m = try value.mapping(allowed: kinds + ["writable"])
            let given = m.keys.filter { $0 != "writable" }
            guard given.count == 1, let k = given.first, let b = m[k] else {
                throw (given.count > 1 ? m[given[1]]! : value).fail("expected exactly one of: \(kinds.joined(separator: ", ")) (plus an optional 'writable')")
            }
            let writable = try m["writable"]?.int(in: 0...1 << 16)
            let request: Request
            switch k {
            case "attach":
                let r = try b.mapping(allowed: ["domain", "endpoint", "bypass"])
                request = .attach(domain: try u32(try r.required("domain")), endpoint: try endpoint(try r.required("endpoint")),
                                  bypass: try r["bypass"]?.bool() ?? false)
            case "detach":
                let r = try b.mapping(allowed: ["domain", "endpoint"])
                request = .detach(domain: try u32(try r.required("domain")), endpoint: try endpoint(try r.required("endpoint")))
            case "map":
                let r = try b.mapping(allowed: ["domain", "virt-start", "virt-end", "phys-start", "flags"])
                request = .map(domain: try u32(try r.required("domain")), first: try r.required("virt-start").number(),
                               last: try r.required("virt-end").number(), phys: try r.required("phys-start").number(),
                               flags: try r["flags"].map { f throws(ScenarioInputError) in try mapFlags(f) } ?? 3)
            case "unmap":
                let r = try b.mapping(allowed: ["domain", "virt-start", "virt-end"])
                request = .unmap(domain: try u32(try r.required("domain")), first: try r.required("virt-start").number(),
                                 last: try r.required("virt-end").number())
            case "probe":
                let r = try b.mapping(allowed: ["endpoint"])
                request = .probe(endpoint: try endpoint(try r.required("endpoint")))
            default:
                guard writable != nil else { throw value.fail("a raw request ('readable') needs 'writable: LENGTH'") }
                request = .raw(try hexBytes(b))
            }
            return VirtioStep(kind: .request(request, writable: writable))
        case "virtio-dma-write":
            let m = try value.mapping(allowed: ["endpoint", "iova", "data"])
            return VirtioStep(kind: .dmaWrite(endpoint: try endpoint(try m.required("endpoint")), iova: try m.required("iova").number(),
                                              bytes: try hexBytes(try m.required("data"))))
        case "virtio-dma-read":
            let m = try value.mapping(allowed: ["endpoint", "iova", "length"])
            return VirtioStep(kind: .dmaRead(endpoint: try endpoint(try m.required("endpoint")), iova: try m.required("iova").number(),
                                             length: try m.required("length").int(in: 1...1 << 20)))
        case "virtio-translate":
            let m = try value.mapping(allowed: ["endpoint", "iova", "write"])
            return VirtioStep(kind: .translate(endpoint: try endpoint(try m.required("endpoint")), iova: try m.required("iova").number(),
                                               write: try m["write"]?.bool() ?? false))
        default:  // virtio-events
            let m = try value.mapping(allowed: ["take", "post", "length"])
            return VirtioStep(kind: .events(take: try m["take"]?.bool() ?? false, post: try m["post"]?.int(in: 0...1024) ?? 0,
                                            length: try m["length"]?.int(in: 0...4096) ?? VirtioIOMMUWire.faultRecordLength))
        }
    }

    static func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

    static func decodeFault(_ bytes: [UInt8]) -> VirtioFaultEvent? {
        guard bytes.count >= VirtioIOMMUWire.faultRecordLength else { return nil }
        return VirtioFaultEvent(reason: bytes[0], flags: UInt32(VirtioRequestBytes.le(bytes[4..<8])),
                                endpoint: UInt32(VirtioRequestBytes.le(bytes[8..<12])), address: VirtioRequestBytes.le(bytes[16..<24]))
    }

    func perform(on runner: ScenarioRunner, record: inout ScenarioReport.StepRecord) throws(IOMMUError) -> ScenarioRunner.Outcome {
        guard let v = runner.virtio else { throw IOMMUError(.noSuchDevice, code: .noSuchDevice) }
        let device = v.device
        let hex = Self.hex
        typealias B = VirtioRequestBytes
        switch kind {
        case .negotiate(let wanted):
            let features = wanted ?? device.offeredFeatures.intersection(.linuxDriver)
            record.action = "virtio: negotiate \(features) (offered \(device.offeredFeatures))"
            guard device.negotiate(driverFeatures: features) else {
                record.events.append("FEATURES_OK not set: the device refuses this feature set")
                throw IOMMUError(.invalidArgument)
            }
            return ScenarioRunner.Outcome(text: "FEATURES_OK")
        case let .configRead(offset, count):
            record.action = "virtio: read config [\(offset), +\(count))"
            let bytes = device.readConfig(offset: offset, count: count)
            if offset == 0 && bytes.count >= VirtioIOMMUWire.configLength {
                let c = bytes
                record.events.append("page_size_mask \(hex(B.le(c[0..<8]))), input_range [\(hex(B.le(c[8..<16]))), \(hex(B.le(c[16..<24])))], "
                    + "domain_range [\(B.le(c[24..<28])), \(hex(B.le(c[28..<32])))], probe_size \(B.le(c[32..<36])), bypass \(c[36])")
            }
            return ScenarioRunner.Outcome(data: bytes, text: runner.bytesText(bytes))
        case let .configWrite(offset, bytes):
            record.action = "virtio: write config @\(offset) \(runner.bytesText(bytes))"
            device.writeConfig(offset: offset, bytes: bytes)
            return ScenarioRunner.Outcome(text: "bypass now \(device.bypass)")
        case let .request(request, writable):
            let readable: [UInt8]
            var length = writable ?? 4
            let headAndText: ([UInt8], String)
            switch request {
            case let .attach(domain, ep, bypass):
                let id = ep.resolve(v.spec)
                headAndText = ([1, 0, 0, 0] + B.le32(domain) + B.le32(id) + B.le32(bypass ? VirtioIOMMUWire.attachFlagBypass : 0) + B.le32(0),
                               "ATTACH domain \(domain) endpoint \(id)\(bypass ? " BYPASS" : "")")
            case let .detach(domain, ep):
                let id = ep.resolve(v.spec)
                headAndText = ([2, 0, 0, 0] + B.le32(domain) + B.le32(id) + B.le64(0), "DETACH domain \(domain) endpoint \(id)")
            case let .map(domain, first, last, phys, flags):
                let mapping = VirtioMapping(domain: domain, first: first, last: last, phys: phys, flags: flags)
                headAndText = ([3, 0, 0, 0] + B.le32(domain) + B.le64(first) + B.le64(last) + B.le64(phys) + B.le32(flags),
                               "MAP domain \(domain) \(mapping)")
            case let .unmap(domain, first, last):
                headAndText = ([4, 0, 0, 0] + B.le32(domain) + B.le64(first) + B.le64(last) + B.le32(0),
                               "UNMAP domain \(domain) [\(hex(first)), \(hex(last))]")
            case .probe(let ep):
                let id = ep.resolve(v.spec)
                if writable == nil { length = Int(device.configuration.probeSize) + 4 }
                headAndText = ([5, 0, 0, 0] + B.le32(id) + [UInt8](repeating: 0, count: 64), "PROBE endpoint \(id)")
            case .raw(let bytes):
                headAndText = (bytes, "request \(runner.bytesText(bytes)) (\(bytes.count) readable bytes)")
            }
            readable = headAndText.0
            record.action = "virtio: \(headAndText.1), \(length) writable byte(s)"
            let (written, used) = device.handleRequest(readable: readable, writableLength: length)
            v.usedLength = used
            v.response = Array(written.prefix(Int(used)))
            // Linux reads the tail at the end of what the device reports used.
            if used >= 4 { v.status = VirtioIOMMUStatus(rawValue: written[Int(used) - 4]) }
            if case .probe = request, v.status == .ok {
                var at = 0
                while at + 4 <= Int(used) - 4 {
                    let type = B.le(written[at..<at + 2]), plen = Int(B.le(written[at + 2..<at + 4]))
                    if type == 0 { break }
                    if type == UInt64(VirtioIOMMUWire.probeTypeResvMem), at + 24 <= written.count {
                        let sub = written[at + 4]
                        record.events.append("RESV_MEM \(sub == VirtioIOMMUWire.resvMemMSI ? "MSI" : "RESERVED") [\(hex(B.le(written[at + 8..<at + 16]))), \(hex(B.le(written[at + 16..<at + 24])))]")
                    } else {
                        record.events.append("property type \(type) length \(plen)")
                    }
                    at += 4 + plen
                }
            }
            let statusText = v.status.map(\.description) ?? "no status"
            return ScenarioRunner.Outcome(data: v.response, text: "\(statusText), used length \(used)")
        case let .dmaWrite(ep, iova, bytes):
            let id = ep.resolve(v.spec)
            record.action = "virtio: endpoint \(id) DMA write \(bytes.count) byte(s) at \(hex(iova))"
            switch device.endpointDMAWrite(endpoint: id, iova: iova, bytes: bytes) {
            case .completed:
                record.events.append("DMA: \(bytes.count) byte(s) moved")
                return ScenarioRunner.Outcome(bytes: UInt64(bytes.count))
            case .faulted(let fault):
                runner.faults.append("endpoint \(id): \(fault)")
                return ScenarioRunner.Outcome(bytes: 0, text: "\(fault)")
            }
        case let .dmaRead(ep, iova, length):
            let id = ep.resolve(v.spec)
            record.action = "virtio: endpoint \(id) DMA read \(length) byte(s) at \(hex(iova))"
            let (data, outcome) = device.endpointDMARead(endpoint: id, iova: iova, count: length)
            switch outcome {
            case .completed:
                record.events.append("DMA: \(length) byte(s) moved")
                return ScenarioRunner.Outcome(bytes: UInt64(length), data: data, text: runner.bytesText(data))
            case .faulted(let fault):
                runner.faults.append("endpoint \(id): \(fault)")
                return ScenarioRunner.Outcome(bytes: 0, text: "\(fault)")
            }
        case let .translate(ep, iova, write):
            let id = ep.resolve(v.spec)
            record.action = "virtio: translate endpoint \(id) \(hex(iova)) (\(write ? "write" : "read"))"
            let t = device.translate(endpoint: id, iova: iova, write: write)
            v.translation = t
            switch t {
            case .bypass: return ScenarioRunner.Outcome(text: "bypass (identity)")
            case .translated(let pa): return ScenarioRunner.Outcome(text: "pa \(hex(pa.rawValue))")
            case .fault(let f): return ScenarioRunner.Outcome(text: "\(f)")
            }
        case let .events(take, post, length):
            record.action = "virtio: eventq" + (take ? " take used buffers" : "") + (post > 0 ? " post \(post) buffer(s) of \(length) bytes" : "")
            if take {
                v.events = device.takeUsedEventBuffers()
                for e in v.events {
                    let used = Array(e.bytes.prefix(Int(e.usedLength)))
                    record.events.append("used buffer \(e.id): \(e.usedLength) byte(s)" + (Self.decodeFault(used).map { ": \($0)" } ?? ""))
                }
            }
            for _ in 0..<post { _ = device.postEventBuffer(length: length) }
            return ScenarioRunner.Outcome(text: "\(v.events.count) event(s) taken, \(device.availableEventBufferCount) buffer(s) available")
        }
    }
}

/// The `virtio-*` expectations.
struct VirtioExpectation: ScenarioLayerExpectation {
    enum Check: Sendable {
        case status(VirtioIOMMUStatus)
        case usedLength(UInt32)
        case response([UInt8])
        case faultEvent(reason: UInt8?, flags: UInt32?, endpoint: VirtioEndpointRef?, address: UInt64?)
        case events(Int)
        /// paddr nil + bypass false: a fault.
        case translation(endpoint: VirtioEndpointRef, iova: UInt64, write: Bool, paddr: UInt64?, bypass: Bool)
        case mappings(domain: UInt32, count: Int)
        case endpointDomain(endpoint: VirtioEndpointRef, domain: UInt32?)
        case consistent
    }

    var check: Check

    static var expectationKeys: [String] {
        ["virtio-status", "used-length", "response", "fault-event", "virtio-events", "virtio-translation", "virtio-mappings",
         "virtio-endpoint", "virtio-consistent"]
    }

    static let statusNames: [String: VirtioIOMMUStatus] = Dictionary(uniqueKeysWithValues: VirtioIOMMUStatus.allCases.map { ($0.description, $0) })
    static let reasons: [String: UInt8] = ["unknown": VirtioIOMMUWire.faultReasonUnknown, "domain": VirtioIOMMUWire.faultReasonDomain,
                                           "mapping": VirtioIOMMUWire.faultReasonMapping]

    static func parse(key: String, value: Field, platform: Scenario.Platform) throws(ScenarioInputError) -> VirtioExpectation {
        guard let spec = platform.virtio else { throw value.fail("'\(key)' needs a 'virtio-iommu' section in the platform") }
        _ = spec
        func endpoint(_ f: Field) throws(ScenarioInputError) -> VirtioEndpointRef { try VirtioEndpointRef.parse(f, platform: platform) }
        switch key {
        case "virtio-status":
            let n = try value.string()
            guard let s = statusNames[n] else {
                throw value.fail("unknown virtio status '\(n)'; expected one of: \(VirtioIOMMUStatus.allCases.map(\.description).joined(separator: ", "))")
            }
            return VirtioExpectation(check: .status(s))
        case "used-length": return VirtioExpectation(check: .usedLength(UInt32(try value.number(in: 0...1 << 16))))
        case "response": return VirtioExpectation(check: .response(try VirtioStep.hexBytes(value)))
        case "virtio-events": return VirtioExpectation(check: .events(try value.int(in: 0...1024)))
        case "fault-event":
            let m = try value.mapping(allowed: ["reason", "flags", "endpoint", "address"])
            var reason: UInt8?
            if let r = m["reason"] {
                let n = try r.string()
                guard let code = reasons[n] else { throw r.fail("unknown fault reason '\(n)'; expected unknown, domain or mapping") }
                reason = code
            }
            var flags: UInt32?
            if let f = m["flags"] {
                if case .sequence = f.node {
                    var bits: UInt32 = 0
                    for e in try f.array() {
                        switch try e.string() {
                        case "read": bits |= VirtioIOMMUWire.faultFlagRead
                        case "write": bits |= VirtioIOMMUWire.faultFlagWrite
                        case "address": bits |= VirtioIOMMUWire.faultFlagAddress
                        default: throw e.fail("unknown fault flag; expected read, write or address")
                        }
                    }
                    flags = bits
                } else {
                    flags = UInt32(try f.number(in: 0...UInt64(UInt32.max)))
                }
            }
            return VirtioExpectation(check: .faultEvent(reason: reason, flags: flags, endpoint: try m["endpoint"].map(endpoint),
                                                        address: try m["address"]?.number()))
        case "virtio-translation":
            let m = try value.mapping(allowed: ["endpoint", "iova", "write", "paddr", "bypass", "fault"])
            let paddr = try m["paddr"]?.number()
            let bypass = try m["bypass"]?.bool() ?? false
            let fault = try m["fault"]?.bool() ?? false
            guard [paddr != nil, bypass, fault].filter({ $0 }).count == 1 else { throw value.fail("expected exactly one of 'paddr', 'bypass: true' or 'fault: true'") }
            return VirtioExpectation(check: .translation(endpoint: try endpoint(try m.required("endpoint")), iova: try m.required("iova").number(),
                                                         write: try m["write"]?.bool() ?? false, paddr: paddr, bypass: bypass))
        case "virtio-mappings":
            let m = try value.mapping(allowed: ["domain", "count"])
            return VirtioExpectation(check: .mappings(domain: UInt32(try m.required("domain").number(in: 0...UInt64(UInt32.max))),
                                                      count: try m.required("count").int(in: 0...1 << 24)))
        case "virtio-endpoint":
            let m = try value.mapping(allowed: ["endpoint", "domain"])
            let df = try m.required("domain")
            var domain: UInt32?
            if try df.string() != "none" { domain = UInt32(try df.number(in: 0...UInt64(UInt32.max))) }
            return VirtioExpectation(check: .endpointDomain(endpoint: try endpoint(try m.required("endpoint")), domain: domain))
        default:  // virtio-consistent
            guard try value.bool() else { throw value.fail("expected true (the table and the mapping record agree)") }
            return VirtioExpectation(check: .consistent)
        }
    }

    func check(on runner: ScenarioRunner) -> (held: Bool, what: String, actual: String) {
        guard let v = runner.virtio else { return (false, "virtio expectation", "no virtio-iommu device") }
        let hex = VirtioStep.hex
        switch check {
        case .status(let s):
            return (v.status == s, "expect virtio status \(s)", v.status.map(\.description) ?? "no status")
        case .usedLength(let n):
            return (v.usedLength == n, "expect used length \(n)", v.usedLength.map { "\($0)" } ?? "no request")
        case .response(let bytes):
            return (v.response == bytes, "expect response \(runner.bytesText(bytes))", v.response.map(runner.bytesText) ?? "no request")
        case .events(let n):
            return (v.events.count == n, "expect \(n) event(s) taken", "\(v.events.count)")
        case let .faultEvent(reason, flags, endpoint, address):
            let wanted = endpoint?.resolve(v.spec)
            let faults = v.events.compactMap { VirtioStep.decodeFault(Array($0.bytes.prefix(Int($0.usedLength)))) }
            let held = faults.contains { f in
                (reason == nil || f.reason == reason) && (flags == nil || f.flags == flags)
                    && (wanted == nil || f.endpoint == wanted) && (address == nil || f.address == address)
            }
            var what = "expect fault event"
            if let reason { what += " reason \(["unknown", "domain", "mapping"][Int(min(reason, 2))])" }
            if let flags { what += " flags \(hex(UInt64(flags)))" }
            if let wanted { what += " endpoint \(wanted)" }
            if let address { what += " address \(hex(address))" }
            return (held, what, faults.isEmpty ? "no fault record taken" : faults.map(\.description).joined(separator: "; "))
        case let .translation(endpoint, iova, write, paddr, bypass):
            let id = endpoint.resolve(v.spec)
            let t = v.device.translate(endpoint: id, iova: iova, write: write)
            let actual: String
            let held: Bool
            switch t {
            case .bypass: actual = "bypass"; held = bypass
            case .translated(let pa): actual = hex(pa.rawValue); held = paddr == pa.rawValue
            case .fault(let f): actual = "\(f)"; held = paddr == nil && !bypass
            }
            return (held, "expect endpoint \(id) \(hex(iova)) -> \(paddr.map(hex) ?? (bypass ? "bypass" : "fault"))", actual)
        case let .mappings(domain, count):
            let actual = v.device.mappings(ofDomain: domain)?.count
            return (actual ?? 0 == count, "expect \(count) mapping(s) in domain \(domain)", actual.map { "\($0)" } ?? "no such domain")
        case let .endpointDomain(endpoint, domain):
            let id = endpoint.resolve(v.spec)
            let actual = v.device.snapshot.endpoints.first { $0.id == id }?.domain
            return (actual == domain, "expect endpoint \(id) in domain \(domain.map { "\($0)" } ?? "none")", actual.map { "domain \($0)" } ?? "none")
        case .consistent:
            let violations = v.device.mappingConsistencyViolations()
            return (violations.isEmpty, "expect page tables consistent with the mapping record", violations.joined(separator: "; "))
        }
    }
}
