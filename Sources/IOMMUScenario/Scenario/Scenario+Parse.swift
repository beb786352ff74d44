import IOMMUBase
import IOMMUCore
import Yams

extension Scenario {
    /// Parses a scenario from raw file bytes (checked for binary data and UTF-8 first).
    public static func parse(bytes: [UInt8]) throws(ScenarioInputError) -> Scenario {
        try parse(try decodeScenarioText(bytes))
    }

    /// Parses a scenario from YAML text.
    public static func parse(_ text: String) throws(ScenarioInputError) -> Scenario {
        let root = Field(node: try composeYAML(text), path: "")
        let top = try root.mapping(allowed: ["scenario", "description", "platform", "workload"])
        let name = try top["scenario"]?.string() ?? "scenario"
        let description = try top["description"]?.string() ?? ""
        let platform = try parsePlatform(try top.required("platform"))
        var steps: [Step] = []
        if let workload = top["workload"], !workload.isNull {
            for field in try workload.array() { steps.append(try parseStep(field, platform: platform)) }
        }
        return Scenario(name: name, description: description, platform: platform, steps: steps)
    }

    // MARK: - Platform

    static func parsePageSize(_ field: Field) throws(ScenarioInputError) -> PageSize {
        let bytes = try field.number(in: 1 << 12...1 << 40)
        guard let size = PageSize(bytes: bytes) else {
            throw field.fail("\(bytes) is not a power of two")
        }
        return size
    }

    static func parseEnum<E: RawRepresentable & CaseIterable>(_ field: Field, _: E.Type) throws(ScenarioInputError) -> E where E.RawValue == String {
        let text = try field.string()
        guard let value = E(rawValue: text) else {
            throw field.fail("unknown value '\(text)'; expected one of: \(E.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return value
    }

    static func parsePlatform(_ field: Field) throws(ScenarioInputError) -> Platform {
        let map = try field.mapping(allowed: ["cpu-page-size", "default-domain", "ram", "iommus", "devices", "vfio", "virtio-iommu"])
        var platform = Platform()
        if let f = map["cpu-page-size"] {
            platform.cpuPageSize = try parsePageSize(f)
            guard [PageSize.size4K, .size16K, .size64K].contains(platform.cpuPageSize) else { throw f.fail("CPU pages are 4K, 16K or 64K") }
        }
        if let f = map["default-domain"] { platform.defaultDomain = try parseEnum(f, DefaultDomainPolicy.self) }
        if let f = map["ram"] { platform.ramBytes = try f.number(in: 16 << 20...16 << 30) }
        if let f = map["vfio"] {
            let v = try f.mapping(allowed: ["allow-unsafe-interrupts", "locked-memory-limit"])
            if let g = v["allow-unsafe-interrupts"] { platform.allowUnsafeInterrupts = try g.bool() }
            if let g = v["locked-memory-limit"] { platform.lockedMemoryLimit = try g.number(in: 0...1 << 40) }
        }
        for f in try map.required("iommus").array() {
            let m = try f.mapping(allowed: ["name", "kind", "page-sizes", "smrs", "context-banks", "unmatched-stream",
                                            "tlb-entries", "register-at-boot", "interrupt-remapping"])
            let name = try m.required("name").string()
            guard !platform.iommus.contains(where: { $0.name == name }) else { throw f.fail("IOMMU '\(name)' is defined twice") }
            let kind = try parseEnum(try m.required("kind"), IOMMUKind.self)
            var sizes = kind == .smmu ? PageSizeBitmap([.size4K, .size2M, .size1G]) : PageSizeBitmap([.size16K])
            if let p = m["page-sizes"] {
                var list: [PageSize] = []
                for e in try p.array() { list.append(try parsePageSize(e)) }
                guard !list.isEmpty else { throw p.fail("expected at least one page size") }
                sizes = PageSizeBitmap(list)
                let allowed: [PageSize] = kind == .smmu ? [.size4K, .size2M, .size1G, .size16K, .size32M, .size64K, .size512M] : [.size16K]
                for s in list where !allowed.contains(s) {
                    throw p.fail("\(s) is not a \(kind) page size; expected \(allowed.map(\.description).joined(separator: ", "))")
                }
                if kind == .smmu {
                    let granules = Set(list.map { [PageSize.size4K, .size2M, .size1G].contains($0) ? 12 : ([PageSize.size16K, .size32M].contains($0) ? 14 : 16) })
                    guard granules.count == 1 else { throw p.fail("page sizes must belong to one granule (4K/2M/1G, 16K/32M or 64K/512M)") }
                }
            }
            platform.iommus.append(IOMMUSpec(
                name: name, kind: kind, pageSizes: sizes,
                streamMatchRegisters: try m["smrs"]?.int(in: 1...128) ?? 128,
                contextBanks: try m["context-banks"]?.int(in: 1...128) ?? 64,
                unmatchedStream: try m["unmatched-stream"].map { f throws(ScenarioInputError) in try parseEnum(f, UnmatchedStreamPolicy.self) } ?? .fault,
                tlbEntries: try m["tlb-entries"]?.int(in: 1...65536) ?? 128,
                registerAtBoot: try m["register-at-boot"]?.bool() ?? true,
                interruptRemapping: try m["interrupt-remapping"]?.bool() ?? true,
                line: f.line))
        }
        if let devices = map["devices"] {
            for f in try devices.array() {
                let device = try parseDevice(f, platform: platform)
                guard !platform.devices.contains(where: { $0.name == device.name }) else { throw f.fail("device '\(device.name)' is defined twice") }
                platform.devices.append(device)
            }
        }
        if let f = map["virtio-iommu"] { platform.virtio = try parseVirtio(f, platform: platform) }
        return platform
    }

    static func parsePCIAddress(_ field: Field) throws(ScenarioInputError) -> PCIAddress {
        let text = try field.string()
        // [SSSS:]BB:DD.F
        var parts = text.split(separator: ":").map(String.init)
        var segment: UInt16 = 0
        if parts.count == 3 {
            guard let s = UInt16(parts[0], radix: 16) else { throw field.fail("bad PCI segment in '\(text)'; expected SSSS:BB:DD.F") }
            segment = s
            parts.removeFirst()
        }
        guard parts.count == 2 else { throw field.fail("expected a PCI address like 0000:01:00.0, found '\(text)'") }
        let df = parts[1].split(separator: ".")
        guard let bus = UInt8(parts[0], radix: 16), df.count == 2, let dev = UInt8(df[0], radix: 16), let fn = UInt8(df[1], radix: 16),
              dev < 32, fn < 8
        else { throw field.fail("expected a PCI address like 0000:01:00.0 (device < 0x20, function < 8), found '\(text)'") }
        return PCIAddress(segment: segment, bus: bus, device: dev, function: fn)
    }

    static func parseDevice(_ f: Field, platform: Platform) throws(ScenarioInputError) -> DeviceSpec {
        let m = try f.mapping(allowed: ["name", "bus", "iommu", "stream-ids", "pci", "untrusted", "dma-mask",
                                        "reserved-regions", "present-at-boot", "driver"])
        let name = try m.required("name").string()
        let pciField = m["pci"]
        let bus = try m["bus"]?.string() ?? (pciField == nil ? "platform" : "pci")
        guard bus == "pci" || bus == "platform" else { throw m["bus"]!.fail("unknown bus '\(bus)'; expected pci or platform") }
        var address: PCIAddress?
        var aliases: [PCIAddress] = []
        var acs = true
        if let p = pciField {
            guard bus == "pci" else { throw p.fail("'pci' is only for devices on the pci bus") }
            let pm = try p.mapping(allowed: ["address", "aliases", "acs"])
            address = try parsePCIAddress(try pm.required("address"))
            if let a = pm["aliases"] { for e in try a.array() { aliases.append(try parsePCIAddress(e)) } }
            if let a = pm["acs"] { acs = try a.bool() }
        } else if bus == "pci" {
            throw f.fail("a pci device needs 'pci: {address: BB:DD.F}'")
        }
        var iommu: String?
        if let i = m["iommu"] {
            let n = try i.string()
            guard platform.iommus.contains(where: { $0.name == n }) else {
                throw i.fail("unknown IOMMU '\(n)'; defined: \(platform.iommus.map(\.name).joined(separator: ", "))")
            }
            iommu = n
        }
        var streams: [UInt32] = []
        if let s = m["stream-ids"] { for e in try s.array() { streams.append(UInt32(try e.number(in: 0...0xFFFF))) } }
        if iommu != nil && streams.isEmpty { throw f.fail("a device behind an IOMMU needs 'stream-ids'") }
        let regions = try m["reserved-regions"].map { r throws(ScenarioInputError) in try parseReservedRegions(r) } ?? []
        return DeviceSpec(
            name: name, bus: bus, iommu: iommu, streamIDs: streams, pciAddress: address, dmaAliases: aliases,
            acsIsolated: acs, untrusted: try m["untrusted"]?.bool() ?? false,
            dmaMaskBits: try m["dma-mask"]?.int(in: 24...64) ?? 64, reservedRegions: regions,
            presentAtBoot: try m["present-at-boot"]?.bool() ?? true, driver: try m["driver"]?.string(), line: f.line)
    }

    /// `reserved-regions: [{start, length, type}]` (firmware regions).
    static func parseReservedRegions(_ r: Field) throws(ScenarioInputError) -> [ReservedRegion] {
        var regions: [ReservedRegion] = []
        for e in try r.array() {
            let rm = try e.mapping(allowed: ["start", "length", "type"])
            let start = try rm.required("start").number()
            let length = try rm.required("length").number(in: 1...UInt64.max)
            guard start.addingReportingOverflow(length - 1).overflow == false else { throw e.fail("region passes 2^64") }
            let typeField = try rm.required("type")
            let types: [String: ReservedRegionType] = ["direct": .direct, "direct-relaxable": .directRelaxable,
                                                       "reserved": .reserved, "msi": .msi, "sw-msi": .swMSI]
            let typeName = try typeField.string()
            guard let type = types[typeName] else { throw typeField.fail("unknown region type '\(typeName)'; expected direct, direct-relaxable, reserved, msi or sw-msi") }
            let prot: IOMMUProt = type == .msi || type == .swMSI ? [.write, .noExec, .mmio] : [.read, .write]
            regions.append(ReservedRegion(start: start, length: length, prot: prot, type: type))
        }
        return regions
    }

    // MARK: - Steps

    static let actionKeys = [
        "register-iommu", "add-device", "remove-device", "bind", "unbind", "retry-deferred-probes",
        "allocate-domain", "attach", "detach", "free-domain", "map", "unmap", "iova-alloc", "iova-free",
        "dma-write", "dma-read", "stream-dma", "translate",
        "vfio-open-group", "vfio-set-container", "vfio-unset-container", "vfio-set-iommu", "vfio-map", "vfio-unmap",
        "vfio-info", "vfio-register-driver", "vfio-pin", "vfio-unpin", "expect",
    ] + layerActionKeys

    static func parseStep(_ f: Field, platform: Platform) throws(ScenarioInputError) -> Step {
        let m = try f.mapping(allowed: actionKeys + ["note"])
        let actions = m.keys.filter { $0 != "note" && $0 != "expect" }
        guard actions.count <= 1 else { throw f.fail("one action per step; found \(actions.joined(separator: ", "))") }
        let note = try m["note"]?.string()
        func device(_ field: Field) throws(ScenarioInputError) -> String {
            let n = try field.string()
            guard platform.devices.contains(where: { $0.name == n }) else {
                throw field.fail("unknown device '\(n)'; expected one of: \(platform.devices.map(\.name).joined(separator: ", "))")
            }
            return n
        }
        func iommu(_ field: Field) throws(ScenarioInputError) -> String {
            let n = try field.string()
            guard platform.iommus.contains(where: { $0.name == n }) else { throw field.fail("unknown IOMMU '\(n)'") }
            return n
        }
        func value(_ field: Field) throws(ScenarioInputError) -> Value {
            guard case .scalar = field.node else { throw field.fail("expected a number or \"$name\", found \(field.kindName)") }
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
        func prot(_ field: Field) throws(ScenarioInputError) -> IOMMUProt {
            var p: IOMMUProt = []
            for ch in try field.string() {
                switch ch {
                case "r": p.insert(.read)
                case "w": p.insert(.write)
                case "c": p.insert(.cache)
                case "n": p.insert(.noExec)
                case "m": p.insert(.mmio)
                default: throw field.fail("unknown permission letter '\(ch)'; expected letters from r w c n m")
                }
            }
            return p
        }
        func domainRef(_ field: Field?) throws(ScenarioInputError) -> DomainRef {
            guard let field else { return .current }
            let n = try field.string()
            switch n {
            case "current": return .current
            case "default": return .default
            default: return .named(n)
            }
        }
        func bytes(_ field: Field) throws(ScenarioInputError) -> [UInt8] {
            // "de ad be ef" or "deadbeef" or "text:hello"
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

        var action = Action.check
        if let key = actions.first, let a = m[key] {
            switch key {
            case "register-iommu": action = .registerIOMMU(try iommu(a))
            case "add-device": action = .addDevice(try device(a))
            case "remove-device": action = .removeDevice(try device(a))
            case "unbind": action = .unbind(try device(a))
            case "retry-deferred-probes": action = .retryDeferredProbes
            case "free-domain": action = .freeDomain(try a.string())
            case "vfio-set-iommu":
                let t = try a.string()
                guard t == "type1v2" else { throw a.fail("expected type1v2") }
                action = .vfioSetIOMMU
            case "vfio-info": action = .vfioInfo
            case "vfio-open-group": action = .vfioOpenGroup(device: try device(a))
            case "vfio-set-container": action = .vfioSetContainer(device: try device(a))
            case "vfio-unset-container": action = .vfioUnsetContainer(device: try device(a))
            case "bind":
                let b = try a.mapping(allowed: ["device", "driver", "driver-managed-dma"])
                action = .bind(device: try device(try b.required("device")), driver: try b.required("driver").string(),
                               driverManagedDMA: try b["driver-managed-dma"]?.bool() ?? false)
            case "allocate-domain":
                let b = try a.mapping(allowed: ["device", "type", "as"])
                let types: [String: IOMMUDomainType] = ["unmanaged": .unmanaged, "dma": .dma, "identity": .identity, "blocked": .blocked]
                let tf = try b.required("type")
                guard let type = types[try tf.string()] else { throw tf.fail("expected unmanaged, dma, identity or blocked") }
                action = .allocateDomain(device: try device(try b.required("device")), type: type, name: try b.required("as").string())
            case "attach", "detach":
                let b = try a.mapping(allowed: ["device", "domain"])
                let d = try device(try b.required("device")), dom = try b.required("domain").string()
                action = key == "attach" ? .attach(device: d, domain: dom) : .detach(device: d, domain: dom)
            case "map":
                let b = try a.mapping(allowed: ["device", "domain", "iova", "length", "paddr", "prot"])
                action = .map(device: try device(try b.required("device")), domain: try domainRef(b["domain"]),
                              iova: try value(try b.required("iova")), length: try b.required("length").number(in: 1...1 << 40),
                              paddr: try b["paddr"]?.number(), prot: try b["prot"].map { f throws(ScenarioInputError) in try prot(f) } ?? [.read, .write])
            case "unmap":
                let b = try a.mapping(allowed: ["device", "domain", "iova", "length"])
                action = .unmap(device: try device(try b.required("device")), domain: try domainRef(b["domain"]),
                                iova: try value(try b.required("iova")), length: try b.required("length").number(in: 1...1 << 40))
            case "iova-alloc":
                let b = try a.mapping(allowed: ["device", "length", "as"])
                action = .iovaAlloc(device: try device(try b.required("device")), length: try b.required("length").number(in: 1...1 << 32),
                                    name: try b["as"]?.string())
            case "iova-free":
                let b = try a.mapping(allowed: ["device", "iova", "length"])
                action = .iovaFree(device: try device(try b.required("device")), iova: try value(try b.required("iova")),
                                   length: try b.required("length").number(in: 1...1 << 32))
            case "dma-write":
                let b = try a.mapping(allowed: ["device", "iova", "data"])
                action = .dmaWrite(device: try device(try b.required("device")), iova: try value(try b.required("iova")), bytes: try bytes(try b.required("data")))
            case "dma-read":
                let b = try a.mapping(allowed: ["device", "iova", "length"])
                action = .dmaRead(device: try device(try b.required("device")), iova: try value(try b.required("iova")),
                                  length: try b.required("length").int(in: 1...1 << 20))
            case "stream-dma":
                let b = try a.mapping(allowed: ["iommu", "stream-id", "iova", "write"])
                action = .streamDMA(iommu: try iommu(try b.required("iommu")), streamID: UInt32(try b.required("stream-id").number(in: 0...0xFFFF)),
                                    iova: try b.required("iova").number(), isWrite: try b["write"]?.bool() ?? false)
            case "translate":
                let b = try a.mapping(allowed: ["device", "iova"])
                action = .translate(device: try device(try b.required("device")), iova: try value(try b.required("iova")))
            case "vfio-map":
                let b = try a.mapping(allowed: ["iova", "length", "vaddr", "read", "write"])
                action = .vfioMap(iova: try b.required("iova").number(), length: try b.required("length").number(in: 1...1 << 40),
                                  vaddr: try b["vaddr"]?.number(), read: try b["read"]?.bool() ?? true, write: try b["write"]?.bool() ?? true)
            case "vfio-unmap":
                let b = try a.mapping(allowed: ["iova", "length"])
                action = .vfioUnmap(iova: try b.required("iova").number(), length: try b.required("length").number())
            case "vfio-register-driver":
                let b = try a.mapping(allowed: ["name", "on-unmap"])
                action = .vfioRegisterDriver(name: try b.required("name").string(),
                                             onUnmap: try b["on-unmap"].map { f throws(ScenarioInputError) in try parseEnum(f, VFIOUnmapBehaviour.self) } ?? .unpin)
            case "vfio-pin", "vfio-unpin":
                let b = try a.mapping(allowed: ["driver", "iova", "count"])
                let d = try b.required("driver").string(), iova = try b.required("iova").number(), c = try b["count"]?.int(in: 1...4096) ?? 1
                action = key == "vfio-pin" ? .vfioPin(driver: d, iova: iova, count: c) : .vfioUnpin(driver: d, iova: iova, count: c)
            default:
                if let type = layerSteps.first(where: { $0.actionKeys.contains(key) }) {
                    action = .layer(try type.parse(key: key, value: a, platform: platform))
                }
            }
        }
        var expectations: [Expectation] = []
        if let e = m["expect"] { expectations = try parseExpectations(e, platform: platform, device: device, value: value, bytes: bytes) }
        if actions.isEmpty && expectations.isEmpty { throw f.fail("a step needs an action (\(actionKeys.filter { $0 != "expect" }.joined(separator: ", "))) or 'expect'") }
        return Step(action: action, expect: expectations, note: note, line: f.line)
    }

    static func parseExpectations(
        _ f: Field, platform: Platform, device: (Field) throws(ScenarioInputError) -> String, value: (Field) throws(ScenarioInputError) -> Value,
        bytes: (Field) throws(ScenarioInputError) -> [UInt8]
    ) throws(ScenarioInputError) -> [Expectation] {
        func errno(_ field: Field) throws(ScenarioInputError) -> Errno? {
            let text = try field.string()
            if text == "ok" { return nil }
            let known: [Errno] = [.notPermitted, .notFound, .ioError, .noMemory, .permissionDenied, .badAddress, .busy, .exists,
                                  .noSuchDevice, .invalidArgument, .noSpace, .outOfRange, .overflow, .notSupported, .probeDefer,
                                  .argumentListTooLong, .inappropriateIOCTL, .addressInUse, .notImplemented]
            guard let e = known.first(where: { $0.name == text }) else {
                throw field.fail("unknown errno '\(text)'; expected ok or one of: \(known.map(\.name).joined(separator: ", "))")
            }
            return e
        }
        if case .scalar = f.node { return [.errno(try errno(f))] }
        let m = try f.mapping(allowed: ["errno", "bytes", "data", "warning", "no-warnings", "faults", "iova", "group", "same-group",
                                        "probe-state", "dma-path", "translation", "domain-type", "group-count",
                                        "valid-iova-ranges", "pinned-pages", "vfio-mappings", "dma"] + layerExpectationKeys)
        var out: [Expectation] = []
        for (key, v) in m.entries {
            switch key {
            case "errno": out.append(.errno(try errno(v)))
            case "bytes": out.append(.bytes(try v.number()))
            case "data": out.append(.data(try bytes(v)))
            case "warning": out.append(.warning(try v.string()))
            case "no-warnings": if try v.bool() { out.append(.noWarnings) }
            case "faults": out.append(.faults(try v.int(in: 0...1_000_000)))
            case "iova": out.append(.iova(try v.number()))
            case "group-count": out.append(.groupCount(try v.int(in: 0...100_000)))
            case "vfio-mappings": out.append(.vfioMappings(try v.int(in: 0...100_000)))
            case "dma": out.append(.dma(try DMAExpectation.parse(v, device: device)))
            case "same-group":
                var names: [String] = []
                for e in try v.array() { names.append(try device(e)) }
                guard names.count >= 2 else { throw v.fail("expected at least two devices") }
                out.append(.sameGroup(names))
            case "group":
                let g = try v.mapping(allowed: ["device", "id"])
                out.append(.group(device: try device(try g.required("device")), id: try g.required("id").int(in: 0...100_000)))
            case "probe-state":
                let g = try v.mapping(allowed: ["device", "state"])
                let sf = try g.required("state")
                let s = try sf.string()
                guard ["no-iommu", "deferred", "probed", "failed"].contains(s) else { throw sf.fail("expected no-iommu, deferred, probed or failed") }
                out.append(.probeState(device: try device(try g.required("device")), state: s))
            case "dma-path":
                let g = try v.mapping(allowed: ["device", "path"])
                let pf = try g.required("path")
                let p = try pf.string()
                guard ["no-iommu", "not-probed", "blocked", "identity", "translated"].contains(p) else {
                    throw pf.fail("expected no-iommu, not-probed, blocked, identity or translated")
                }
                out.append(.dmaPath(device: try device(try g.required("device")), path: p))
            case "domain-type":
                let g = try v.mapping(allowed: ["device", "type"])
                let tf = try g.required("type")
                let t = try tf.string()
                guard ["blocked", "identity", "unmanaged", "DMA", "DMA-FQ"].contains(t) else { throw tf.fail("expected blocked, identity, unmanaged, DMA or DMA-FQ") }
                out.append(.domainType(device: try device(try g.required("device")), type: t))
            case "translation":
                let g = try v.mapping(allowed: ["device", "iova", "paddr", "fault"])
                let paddr = try g["paddr"]?.number()
                let fault = try g["fault"]?.bool() ?? false
                guard (paddr == nil) == fault else { throw v.fail("expected exactly one of 'paddr' or 'fault: true'") }
                out.append(.translation(device: try device(try g.required("device")), iova: try value(try g.required("iova")), paddr: paddr))
            case "valid-iova-ranges":
                var ranges: [(UInt64, UInt64)] = []
                for e in try v.array() {
                    let pair = try e.array()
                    guard pair.count == 2 else { throw e.fail("expected [first, last]") }
                    ranges.append((try pair[0].number(), try pair[1].number()))
                }
                out.append(.validIOVARanges(ranges))
            case "pinned-pages":
                let g = try v.mapping(allowed: ["driver", "count"])
                out.append(.pinnedPages(driver: try g.required("driver").string(), count: try g.required("count").int(in: 0...1 << 20)))
            default:
                if let type = layerExpectations.first(where: { $0.expectationKeys.contains(key) }) {
                    out.append(.layer(LayerExpectation(base: try type.parse(key: key, value: v, platform: platform))))
                }
            }
        }
        return out
    }
}
