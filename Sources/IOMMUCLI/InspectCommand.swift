import ArgumentParser
import IOMMUKit
import IOMMUScenario

/// `iommu inspect SCENARIO [--at STEP] [--check] [--reach DEVICE]`: the model's state after
/// some steps, its consistency (`--check`), or what one device can reach (`--reach`).
struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Show groups, domains, mappings, reserved regions, stream tables and IOVA space of a scenario.",
        discussion: """
            Boots the scenario's platform, runs its workload up to and including step --at \
            (default: all steps), and prints: IOMMU groups and their devices with the group's \
            reserved regions in the Linux sysfs format (start end type); domains with their \
            mappings and live page-table pages (the `iommu pgtable` descriptor view); each \
            IOMMU's stream-match table (SMR → S2CR) and context-bank use; the IOVA space of \
            every DMA-API domain that allocated IOVAs; VFIO mappings and valid IOVA ranges. \
            Flush-queue state and live DMA-API mappings close the report.

            --check runs every consistency checker that applies to the platform instead (core \
            links and counts; each SMMU's stream map against its SMR/S2CR registers; each DART's \
            stream TCR/TTBRs against the attached domain; every live domain's page table against \
            the hardware walker; every IOVA domain; each DMA cookie's live mappings against its \
            IOVA allocator and page table; the VFIO container; the virtio-iommu device) and \
            prints each checker with "ok" or its violations.

            --reach DEVICE is the isolation audit: every physical range the device can reach \
            right now, and why. It follows the device's stream IDs through the hardware's \
            registers (SMR → S2CR → context bank TTBR, or the DART stream's TCR/TTBRs) and walks \
            that table: "mapping" (a leaf, with the buffer it holds), "granule-rounding" (the \
            part of a leaf beyond the buffer the driver asked for: a 1 KiB buffer in a 16 KiB \
            DART page exposes 15 KiB), "stale-tlb" (a TLB entry still translating a removed \
            mapping until its invalidation completes), "bypass" (S2CR bypass, identity domain, \
            unmatched stream with USFCFG=0, no IOMMU: everything the DMA mask reaches).

            Exit status: 0; 1 when --check found a violation; 2 for a bad scenario file, --at \
            out of range, or an unknown --reach device (the message lists the names).
            """
    )

    @Argument(help: "The scenario file (YAML).")
    var file: String

    @Option(help: "Stop after this step (1-based; 0 = right after boot).")
    var at: Int?

    @Option(help: "Seed, as for `iommu run`.")
    var seed: UInt64 = 1

    @Flag(help: "Print JSON instead of text.")
    var json = false

    @Flag(help: "Include raw page-table descriptors in the text output (always in JSON).")
    var tables = false

    @Flag(help: "Run every consistency checker instead of showing the state; exit 1 on any violation.")
    var check = false

    @Option(name: .customLong("reach"), help: ArgumentHelp("List every physical range DEVICE can reach now, and why.", valueName: "DEVICE"))
    var reachDevice: String?

    func run() throws {
        let outcome = execute()
        if !outcome.standardOutput.isEmpty { print(outcome.standardOutput, terminator: "") }
        if !outcome.standardError.isEmpty {
            var stderr = StandardError()
            print(outcome.standardError, terminator: "", to: &stderr)
        }
        if outcome.status != 0 { throw ExitCode(outcome.status) }
    }

    func execute() -> PageTableCommand.Outcome {
        let scenario: Scenario
        switch loadScenario(file) {
        case .failure(let e): return .init(standardError: e.description + "\n", status: 2)
        case .success(let s): scenario = s
        }
        if let at, at < 0 || at > scenario.steps.count {
            return .init(standardError: "error: --at \(at) is out of range: the workload has \(scenario.steps.count) step(s)\n", status: 2)
        }
        let runner: ScenarioRunner
        do throws(IOMMUError) {
            runner = try ScenarioRunner(scenario: scenario, seed: seed)
        } catch {
            return .init(standardError: "\(file):1: cannot build the platform: \(error)\n", status: 2)
        }
        if let reachDevice, !scenario.platform.devices.contains(where: { $0.name == reachDevice }) {
            let names = scenario.platform.devices.map(\.name).joined(separator: ", ")
            return .init(standardError: "error: --reach: no device '\(reachDevice)' in \(file); the devices are: \(names)\n", status: 2)
        }
        runner.run(upTo: at)
        if check || reachDevice != nil { return audit(runner) }
        let inspection = runner.inspect()
        return .init(standardOutput: json ? Self.json(inspection).rendered(pretty: true) + "\n" : text(inspection, scenario: scenario))
    }

    static func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

    func text(_ i: ScenarioInspection, scenario: Scenario) -> String {
        let hex = Self.hex
        var out = "\(scenario.name): state after step \(i.step) of \(scenario.steps.count)\n\nGroups:\n"
        for g in i.groups {
            out += "  group \(g.id): \(g.devices.joined(separator: ", ")) -> \(g.domain) (\(g.domainType))\(g.ownedByVFIO ? ", owned by VFIO" : "")\n"
            if !g.reservedRegions.isEmpty {
                out += "    reserved_regions:\n"
                for line in g.reservedRegions.split(separator: "\n") { out += "      \(line)\n" }
            }
        }
        out += "\nDomains:\n"
        for d in i.domains {
            out += "  domain#\(d.serial) \(d.type) on \(d.iommu), pages \(d.pageSizes), \(d.formatKind): \(d.devices.joined(separator: ", "))\n"
            for m in d.mappings { out += "    \(hex(m.iova))..\(hex(m.iova + m.length - 1)) -> \(hex(m.paddr)) \(m.prot)\n" }
            if d.mappings.isEmpty && d.type != "identity" && d.type != "blocked" { out += "    (no mappings)\n" }
            if tables {
                for t in d.tables {
                    out += "    table \(hex(t.address)) L\(t.level): " + t.entries.map { "[\($0.index)] \(DescriptorText.hex16($0.descriptor))" }.joined(separator: " ") + "\n"
                }
            } else if !d.tables.isEmpty {
                out += "    page table: \(d.tables.count) table page(s) (--tables for descriptors)\n"
            }
        }
        out += "\nStream tables:\n"
        for t in i.streamTables {
            out += "  \(t.iommu) (\(t.kind)): \(t.entries.count)/\(t.smrCount) \(t.kind == "smmu" ? "SMRs" : "streams") used, context banks \(t.contextBanksInUse)/\(t.contextBanks), unmatched streams \(t.unmatchedStream)\n"
            for e in t.entries { out += "    \(t.kind == "smmu" ? "SMR\(e.index): id \(hex(UInt64(e.streamID))) mask \(hex(UInt64(e.mask))) -> S2CR" : "stream \(e.index):") \(e.s2cr)  [\(e.device)]\n" }
        }
        if !i.iovaSpaces.isEmpty {
            out += "\nIOVA space:\n"
            for s in i.iovaSpaces {
                out += "  domain#\(s.domainSerial) (granule \(hex(s.granule))): \(s.allocated.count) allocation(s)\n"
                for r in s.reserved { out += "    reserved  \(hex(r.first))..\(hex(r.last))\n" }
                for r in s.allocated { out += "    allocated \(hex(r.first))..\(hex(r.last))\n" }
            }
        }
        if !i.vfioMappings.isEmpty || !i.vfioValidRanges.isEmpty {
            out += "\nVFIO:\n"
            for r in i.vfioValidRanges { out += "  valid iova range [\(hex(r.0)), \(hex(r.1))]\n" }
            for m in i.vfioMappings { out += "  \(m)\n" }
        }
        if let v = i.virtio {
            out += "\nvirtio-iommu:\n"
            out += "  features offered \(v.offeredFeatures)\n  negotiated \(v.negotiatedFeatures)\n"
            out += "  config: " + v.config.map { "\($0.name) \($0.value)" }.joined(separator: ", ") + "\n"
            out += "  domains (\(v.domains.count)):\n"
            for d in v.domains {
                out += "    domain \(d.id): \(d.kind), core domain#\(d.coreDomain), endpoints \(d.endpoints.map(String.init).joined(separator: ", "))\n"
                for m in d.mappings { out += "      \(m)\n" }
                if d.mappings.isEmpty && d.kind != "bypass" { out += "      (no mappings)\n" }
            }
            out += "  endpoints (\(v.endpoints.count)):\n"
            for e in v.endpoints {
                let state = e.domain.map { "domain \($0)" } ?? (e.bypassing ? "unattached, bypass" : "unattached, blocked")
                out += "    endpoint \(e.id) (\(e.device)): \(state)\n"
                for r in e.reservedRegions { out += "      resv \(r)\n" }
            }
            out += "  requestq: \(v.pendingRequests) pending; answered: \(v.requests.isEmpty ? "none" : v.requests.map { "\($0.status) \($0.count)" }.joined(separator: ", "))\n"
            out += "  eventq: \(v.availableEventBuffers) buffer(s) posted, \(v.usedEventBuffers) used not taken, \(v.eventsDelivered) event(s) delivered, \(v.eventsDropped) dropped\n"
            out += "  consistency: " + (v.consistencyViolations.isEmpty ? "page tables agree with the mapping record\n" : "\(v.consistencyViolations.count) violation(s)\n" + v.consistencyViolations.map { "    \($0)\n" }.joined())
        }
        out += "\nFlush queues:\(i.flushQueues.isEmpty ? " none (no device used the DMA API)" : "")\n"
        for q in i.flushQueues { out += "  \(q)\n" }
        out += "\nLive DMA mappings:\(i.dmaMappings.isEmpty ? " none" : "")\n"
        for m in i.dmaMappings { out += "  \(m)\n" }
        return out
    }

    static func json(_ i: ScenarioInspection) -> JSON {
        .object([
            ("step", .int(Int64(i.step))),
            ("groups", .array(i.groups.map { g in
                .object([("id", .int(Int64(g.id))), ("devices", .array(g.devices.map(JSON.string))), ("domain", .string(g.domain)),
                         ("type", .string(g.domainType)), ("owned_by_vfio", .bool(g.ownedByVFIO)),
                         ("reserved_regions", .string(g.reservedRegions))])
            })),
            ("domains", .array(i.domains.map { d in
                .object([
                    ("serial", .uint(d.serial)), ("type", .string(d.type)), ("iommu", .string(d.iommu)), ("page_sizes", .string(d.pageSizes)),
                    ("devices", .array(d.devices.map(JSON.string))),
                    ("mappings", .array(d.mappings.map { m in
                        .object([("iova", .hex(m.iova)), ("paddr", .hex(m.paddr)), ("size", .uint(m.length)), ("prot", .string(m.prot))])
                    })),
                    ("pgtable", .object([
                        ("format", .string(d.formatKind)), ("granule", .uint(1 << UInt64(d.granuleShift))),
                        ("tables", .array(d.tables.map { t in
                            .object([("address", .hex(t.address)), ("level", .int(Int64(t.level))),
                                     ("entries", .array(t.entries.map { .array([.int(Int64($0.index)), .hex($0.descriptor)]) }))])
                        })),
                    ])),
                ])
            })),
            ("stream_tables", .array(i.streamTables.map { t in
                .object([("iommu", .string(t.iommu)), ("kind", .string(t.kind)), ("smrs", .int(Int64(t.smrCount))),
                         ("context_banks", .int(Int64(t.contextBanks))), ("context_banks_in_use", .int(Int64(t.contextBanksInUse))),
                         ("unmatched_stream", .string(t.unmatchedStream)),
                         ("entries", .array(t.entries.map { e in
                             .object([("smr", .int(Int64(e.index))), ("stream_id", .hex(UInt64(e.streamID))), ("device", .string(e.device)), ("s2cr", .string(e.s2cr))])
                         }))])
            })),
            ("iova_spaces", .array(i.iovaSpaces.map { s in
                .object([("domain", .uint(s.domainSerial)), ("granule", .uint(s.granule)),
                         ("reserved", .array(s.reserved.map { .array([.hex($0.first), .hex($0.last)]) })),
                         ("allocated", .array(s.allocated.map { .array([.hex($0.first), .hex($0.last)]) }))])
            })),
            ("vfio", .object([("valid_iova_ranges", .array(i.vfioValidRanges.map { .array([.hex($0.0), .hex($0.1)]) })),
                              ("mappings", .array(i.vfioMappings.map(JSON.string)))])),
            ("flush_queues", .array(i.flushQueues.map(JSON.string))),
            ("virtio_iommu", i.virtio.map { v in
                .object([
                    ("features", .object([("offered", .string(v.offeredFeatures)), ("negotiated", .string(v.negotiatedFeatures))])),
                    ("config", .object(v.config.map { ($0.name, JSON.string($0.value)) })),
                    ("domains", .array(v.domains.map { d in
                        .object([("id", .uint(UInt64(d.id))), ("kind", .string(d.kind)), ("granule", .uint(d.granule)),
                                 ("core_domain", .uint(d.coreDomain)), ("endpoints", .array(d.endpoints.map { .uint(UInt64($0)) })),
                                 ("mappings", .array(d.mappings.map(JSON.string)))])
                    })),
                    ("endpoints", .array(v.endpoints.map { e in
                        .object([("id", .uint(UInt64(e.id))), ("device", .string(e.device)),
                                 ("domain", e.domain.map { .uint(UInt64($0)) } ?? .null), ("bypass", .bool(e.bypassing)),
                                 ("reserved_regions", .array(e.reservedRegions.map(JSON.string)))])
                    })),
                    ("requestq", .object([("pending", .int(Int64(v.pendingRequests))),
                                          ("answered", .object(v.requests.map { ($0.status, JSON.uint($0.count)) }))])),
                    ("eventq", .object([("posted", .int(Int64(v.availableEventBuffers))), ("used_not_taken", .int(Int64(v.usedEventBuffers))),
                                        ("delivered", .uint(v.eventsDelivered)), ("dropped", .uint(v.eventsDropped))])),
                    ("consistency_violations", .array(v.consistencyViolations.map(JSON.string))),
                ])
            } ?? .null),
            ("dma_mappings", .array(i.dmaMappings.map(JSON.string))),
        ])
    }
}
