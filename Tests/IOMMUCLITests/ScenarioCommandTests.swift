@testable import IOMMUCLI
import IOMMUScenario
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The repository root, from this file's path (Tests/IOMMUCLITests/…).
let repositoryRoot: String = {
    var parts = String(#filePath).split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast(3)
    return parts.joined(separator: "/")
}()

func exampleFiles() -> [String] {
    let directory = repositoryRoot + "/examples"
    guard let dir = opendir(directory) else { return [] }
    defer { closedir(dir) }
    var names: [String] = []
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        if name.hasSuffix(".yaml") { names.append(directory + "/" + name) }
    }
    return names.sorted()
}

func writeTemporary(_ bytes: [UInt8], name: String) -> String {
    let path = "/tmp/iommukit-scenario-test-\(getpid())-\(name)"
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    precondition(fd >= 0)
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
    return path
}

@Suite("iommu run")
struct RunCommandTests {
    @Test func everyExampleIsListed() {
        let names = exampleFiles().map { $0.split(separator: "/").last.map(String.init) ?? "" }
        #expect(names.count >= 6, "examples: \(names)")
        #expect(names.contains("server.yaml"))
    }

    @Test(arguments: exampleFiles())
    func exampleRunsGreen(_ path: String) throws {
        var command = try RunCommand.parse([path])
        command.json = false
        let outcome = command.execute()
        #expect(outcome.status == 0, "\(path):\n\(outcome.standardOutput)\(outcome.standardError)")
        #expect(outcome.standardOutput.contains("PASS:"))
    }

    @Test func sameSeedSameReport() throws {
        let path = repositoryRoot + "/examples/01-bogus-unmap.yaml"
        let a = try RunCommand.parse([path, "--seed", "7", "--json"]).execute()
        let b = try RunCommand.parse([path, "--seed", "7", "--json"]).execute()
        #expect(a.standardOutput == b.standardOutput)
        #expect(a.standardOutput.contains("\"passed\": true"))
    }

    @Test func failedExpectationExitsOne() throws {
        let text = """
            platform:
              iommus: [{name: smmu0, kind: smmu}]
              devices: [{name: d, bus: platform, iommu: smmu0, stream-ids: [1]}]
            workload:
              - map: {device: d, iova: 0x1000, length: 4K}
                expect: EINVAL
            """
        let path = writeTemporary(Array(text.utf8), name: "fail.yaml")
        let outcome = try RunCommand.parse([path]).execute()
        #expect(outcome.status == 1)
        #expect(outcome.standardOutput.contains("✗ expect EINVAL: got ok"))
    }

    static let malformed: [(name: String, bytes: [UInt8], line: Int, message: String)] = [
        ("bad-yaml", Array("platform:\n  iommus: [\n    {name: a\n".utf8), 4, "YAML syntax error"),
        ("unknown-key", Array("platform:\n  iommus: []\n  colour: red\n".utf8), 3, "unknown key 'colour'"),
        ("wrong-type", Array("platform:\n  iommus:\n    - name: s\n      kind: smmu\n      smrs: many\n".utf8), 5, "expected a number"),
        ("missing-field", Array("platform:\n  iommus:\n    - name: s\n".utf8), 3, "missing required key 'kind'"),
        ("out-of-range", Array("platform:\n  iommus:\n    - name: s\n      kind: smmu\n      smrs: 500\n".utf8), 5, "out of range"),
        ("bad-enum", Array("platform:\n  iommus:\n    - name: s\n      kind: vtd\n".utf8), 4, "expected one of: smmu, dart"),
        ("unknown-device", Array("platform:\n  iommus: []\nworkload:\n  - unbind: ghost\n".utf8), 4, "unknown device 'ghost'"),
        ("two-actions", Array("platform:\n  iommus: []\nworkload:\n  - retry-deferred-probes: x\n    vfio-info: x\n".utf8), 4, "one action per step"),
        ("huge-number", Array("platform:\n  iommus: []\n  ram: 0xfffffffffffffffffffff\n".utf8), 3, "expected a number"),
        ("binary", [0x7F, 0x45, 0x4C, 0x46, 0x02, 0x01, 0x00, 0x00, 0xFF, 0xFE], 1, "binary data"),
        ("not-utf8", Array("platform:\n  iommus: []\n".utf8) + [0xC3, 0x28, 0x0A], 3, "not UTF-8"),
        ("empty", [], 1, "empty file"),
        ("top-level-list", Array("- a\n- b\n".utf8), 1, "expected a mapping"),
        ("duplicate-key", Array("platform:\n  iommus: []\n  iommus: []\n".utf8), 3, "appears twice"),
        ("step-wrong-type", Array("platform:\n  iommus: [{name: s, kind: smmu}]\n  devices: [{name: d, bus: platform, iommu: s, stream-ids: [1]}]\nworkload:\n  - map: {device: d, iova: [1], length: 4K}\n".utf8), 5, "expected a number"),
        ("step-missing-field", Array("platform:\n  iommus: [{name: s, kind: smmu}]\n  devices: [{name: d, bus: platform, iommu: s, stream-ids: [1]}]\nworkload:\n  - unmap: {device: d, iova: 0x1000}\n".utf8), 5, "missing required key 'length'"),
        ("step-out-of-range", Array("platform:\n  iommus: [{name: s, kind: smmu}]\n  devices: [{name: d, bus: platform, iommu: s, stream-ids: [0x10000]}]\n".utf8), 3, "out of range"),
        ("bad-pci-address", Array("platform:\n  iommus: []\n  devices:\n    - {name: d, pci: {address: \"0000:zz:00.0\"}}\n".utf8), 4, "expected a PCI address"),
        ("bad-errno", Array("platform:\n  iommus: []\nworkload:\n  - retry-deferred-probes: x\n    expect: EWHAT\n".utf8), 5, "unknown errno"),
        ("virtio-bad-feature", Array("platform:\n  iommus: []\n  devices: [{name: d, bus: platform}]\n  virtio-iommu:\n    features: [version-1, warp-drive]\n    endpoints: []\n".utf8), 5, "unknown feature 'warp-drive'"),
        ("virtio-endpoint-behind-iommu", Array("platform:\n  iommus: [{name: s, kind: smmu}]\n  devices: [{name: d, bus: platform, iommu: s, stream-ids: [1]}]\n  virtio-iommu:\n    endpoints: [{device: d, id: 8}]\n".utf8), 5, "a virtio-iommu endpoint has no 'iommu'"),
        ("virtio-input-range", Array("platform:\n  iommus: []\n  virtio-iommu:\n    input-range: [0, 0x1_0000_0000_0000]\n    endpoints: []\n".utf8), 4, "out of range"),
        ("virtio-step-without-device", Array("platform:\n  iommus: []\nworkload:\n  - virtio-negotiate: linux\n".utf8), 4, "needs a 'virtio-iommu' section"),
        ("virtio-request-two-kinds", Array("platform:\n  iommus: []\n  devices: [{name: d, pci: {address: \"00:01.0\"}}]\n  virtio-iommu:\n    endpoints: [{device: d, id: 8}]\nworkload:\n  - virtio-request:\n      attach: {domain: 1, endpoint: d}\n      detach: {domain: 1, endpoint: d}\n".utf8), 9, "expected exactly one of"),
        ("virtio-request-missing-field", Array("platform:\n  iommus: []\n  devices: [{name: d, pci: {address: \"00:01.0\"}}]\n  virtio-iommu:\n    endpoints: [{device: d, id: 8}]\nworkload:\n  - virtio-request:\n      map: {domain: 1, virt-start: 0x1000, phys-start: 0x80000000}\n".utf8), 8, "missing required key 'virt-end'"),
        ("virtio-request-bad-flags", Array("platform:\n  iommus: []\n  devices: [{name: d, pci: {address: \"00:01.0\"}}]\n  virtio-iommu:\n    endpoints: [{device: d, id: 8}]\nworkload:\n  - virtio-request:\n      map: {domain: 1, virt-start: 0, virt-end: 0xfff, phys-start: 0, flags: rwx}\n".utf8), 8, "unknown map flag 'x'"),
        ("virtio-raw-without-writable", Array("platform:\n  iommus: []\n  devices: [{name: d, pci: {address: \"00:01.0\"}}]\n  virtio-iommu:\n    endpoints: [{device: d, id: 8}]\nworkload:\n  - virtio-request: {readable: \"02 00 00 00\"}\n".utf8), 7, "needs 'writable"),
        ("virtio-raw-bad-hex", Array("platform:\n  iommus: []\n  devices: [{name: d, pci: {address: \"00:01.0\"}}]\n  virtio-iommu:\n    endpoints: [{device: d, id: 8}]\nworkload:\n  - virtio-request: {readable: \"0g\", writable: 4}\n".utf8), 7, "is not a hex byte"),
        ("virtio-unknown-endpoint", Array("platform:\n  iommus: []\n  devices: [{name: d, pci: {address: \"00:01.0\"}}]\n  virtio-iommu:\n    endpoints: [{device: d, id: 8}]\nworkload:\n  - virtio-dma-read: {endpoint: ghost, iova: 0, length: 4}\n".utf8), 7, "unknown endpoint 'ghost'"),
        ("virtio-bad-status", Array("platform:\n  iommus: []\n  devices: [{name: d, pci: {address: \"00:01.0\"}}]\n  virtio-iommu:\n    endpoints: [{device: d, id: 8}]\nworkload:\n  - virtio-negotiate: linux\n    expect: {virtio-status: MAYBE}\n".utf8), 8, "unknown virtio status 'MAYBE'"),
        ("virtio-bad-fault-reason", Array("platform:\n  iommus: []\n  devices: [{name: d, pci: {address: \"00:01.0\"}}]\n  virtio-iommu:\n    endpoints: [{device: d, id: 8}]\nworkload:\n  - virtio-events: {take: true}\n    expect: {fault-event: {reason: cosmic-ray}}\n".utf8), 8, "unknown fault reason"),
    ]

    @Test(arguments: malformed.indices)
    func malformedInputIsExitTwoWithFileAndLine(_ index: Int) throws {
        let c = Self.malformed[index]
        let path = writeTemporary(c.bytes, name: c.name + ".yaml")
        let outcome = try RunCommand.parse([path]).execute()
        #expect(outcome.status == 2, "\(c.name): \(outcome.standardError)")
        #expect(outcome.standardError.hasPrefix("\(path):\(c.line): "), "\(c.name): \(outcome.standardError)")
        #expect(outcome.standardError.contains(c.message), "\(c.name): \(outcome.standardError)")
        #expect(outcome.standardOutput.isEmpty)
    }

    @Test func missingFileIsExitTwo() throws {
        let outcome = try RunCommand.parse(["/nonexistent/scenario.yaml"]).execute()
        #expect(outcome.status == 2)
        #expect(outcome.standardError.hasPrefix("/nonexistent/scenario.yaml:1: cannot read scenario"))
    }
}

@Suite("iommu inspect")
struct InspectCommandTests {
    @Test func showsGroupsReservedRegionsAndStreamTable() throws {
        let path = repositoryRoot + "/examples/03-probe-deferral.yaml"
        let outcome = try InspectCommand.parse([path]).execute()
        #expect(outcome.status == 0)
        let text = outcome.standardOutput
        #expect(text.contains("group 0: nic0, nic1"))
        #expect(text.contains("0x0000000008000000 0x00000000080fffff msi"))
        #expect(text.contains("id 0x300 mask 0x0 -> S2CR translate"))
    }

    @Test func atStepZeroShowsDeferredBoot() throws {
        let path = repositoryRoot + "/examples/03-probe-deferral.yaml"
        let outcome = try InspectCommand.parse([path, "--at", "0", "--json"]).execute()
        #expect(outcome.status == 0)
        #expect(outcome.standardOutput.contains("\"groups\": []"))
    }

    @Test func mappingsAndIOVASpaceAppear() throws {
        let path = repositoryRoot + "/examples/01-bogus-unmap.yaml"
        let outcome = try InspectCommand.parse([path, "--at", "3", "--tables"]).execute()
        #expect(outcome.standardOutput.contains("0xffffe000..0xffffffff -> "))
        #expect(outcome.standardOutput.contains("allocated 0xffffe000..0xffffffff"))
        #expect(outcome.standardOutput.contains("table 0x"))
        #expect(outcome.standardOutput.contains("Flush queues:\n  domain#1 strict: queued 0, freed 0"))
        #expect(outcome.standardOutput.contains("Live DMA mappings:\n  nic0: device#1 page 0xffffe000 size 8192 DMA_BIDIRECTIONAL"))
    }

    @Test func virtioSectionShowsDomainsEndpointsQueues() throws {
        let path = repositoryRoot + "/examples/06-virtio-iommu-guest.yaml"
        let text = try InspectCommand.parse([path, "--at", "8"]).execute().standardOutput
        #expect(text.contains("virtio-iommu:"))
        #expect(text.contains("negotiated INPUT_RANGE|DOMAIN_RANGE|MAP_UNMAP|PROBE|MMIO|BYPASS_CONFIG|VERSION_1"))
        #expect(text.contains("domain 1: arm-lpae-s2/4K"))
        #expect(text.contains("[0xfffff000, 0xffffffff] -> 0xa0100000 rw"))
        #expect(text.contains("endpoint 8 (nic0): domain 1"))
        #expect(text.contains("resv msi [0xfee00000, 0xfeefffff]"))
        #expect(text.contains("eventq: 4 buffer(s) posted, 0 used not taken, 0 event(s) delivered, 1 dropped"))
        #expect(text.contains("consistency: page tables agree"))
        let json = try InspectCommand.parse([path, "--at", "16", "--json"]).execute().standardOutput
        #expect(json.contains("\"virtio_iommu\""))
        #expect(json.contains("\"consistency_violations\": []"))
        #expect(json.contains("\"delivered\": 1"))
        #expect(json.contains("\"domain\": null"))
        let plain = try InspectCommand.parse([repositoryRoot + "/examples/01-bogus-unmap.yaml", "--json"]).execute().standardOutput
        #expect(plain.contains("\"virtio_iommu\": null"))
    }

    @Test func virtioBypassConfigNegotiationAndRawRequestsRun() throws {
        let text = """
            platform:
              iommus: []
              devices: [{name: d, pci: {address: "00:01.0"}}]
              virtio-iommu:
                features: [version-1, map-unmap, bypass-config]
                boot-bypass: true
                endpoints: [{device: d, id: 8}]
            workload:
              - virtio-negotiate: [map-unmap]
                expect: EINVAL
              - virtio-negotiate: [version-1, map-unmap, bypass-config]
              - virtio-translate: {endpoint: d, iova: 0x1234}
                expect: {virtio-translation: {endpoint: d, iova: 0x1234, bypass: true}}
              - virtio-config-write: {offset: 36, data: "00"}
                expect: {virtio-translation: {endpoint: 8, iova: 0x1234, fault: true}}
              - virtio-config-read: {offset: 36, length: 1}
                expect: {data: "00"}
              - virtio-request:
                  attach: {domain: 0, endpoint: d, bypass: true}
                expect: {virtio-status: OK, virtio-endpoint: {endpoint: d, domain: 0}, dma-path: {device: d, path: identity}}
              - virtio-request: {readable: "01 00 00 00 05 00 00 00 08 00 00 00 00 00 00 00 00 00 00 00", writable: 4}
                expect: {virtio-status: OK, virtio-endpoint: {endpoint: d, domain: 5}}
              - virtio-request:
                  map: {domain: 5, virt-start: 0x1000, virt-end: 0x1fff, phys-start: 0xa0000000, flags: r}
              - virtio-dma-write: {endpoint: d, iova: 0x1000, data: "ff"}
                expect: {faults: 1}
              - virtio-events: {take: true}
                expect: {virtio-events: 0}
              - virtio-request:
                  probe: {endpoint: 99}
                note: PROBE is not offered here - no reply at all
                expect: {used-length: 0}
            """
        let path = writeTemporary(Array(text.utf8), name: "virtio-bypass.yaml")
        let outcome = try RunCommand.parse([path]).execute()
        #expect(outcome.status == 0, "\(outcome.standardOutput)\(outcome.standardError)")
        #expect(outcome.standardOutput.contains("dropped"))
    }

    @Test func virtioFailedExpectationExitsOne() throws {
        let text = """
            platform:
              iommus: []
              devices: [{name: d, pci: {address: "00:01.0"}}]
              virtio-iommu:
                endpoints: [{device: d, id: 8}]
            workload:
              - virtio-negotiate: linux
              - virtio-request:
                  map: {domain: 1, virt-start: 0x1000, virt-end: 0x1fff, phys-start: 0xa0000000}
                expect: {virtio-status: OK}
            """
        let path = writeTemporary(Array(text.utf8), name: "virtio-fail.yaml")
        let outcome = try RunCommand.parse([path]).execute()
        #expect(outcome.status == 1)
        #expect(outcome.standardOutput.contains("✗ expect virtio status OK: got NOENT"))
    }

    @Test func atOutOfRangeIsExitTwo() throws {
        let path = repositoryRoot + "/examples/01-bogus-unmap.yaml"
        let outcome = try InspectCommand.parse([path, "--at", "999"]).execute()
        #expect(outcome.status == 2)
    }
}

@Suite("docs/scenarios.md")
struct ScenarioDocsTests {
    @Test func completeExampleRunsGreen() throws {
        guard case .success(let bytes) = readFileBytes(repositoryRoot + "/docs/scenarios.md") else {
            Issue.record("cannot read docs/scenarios.md"); return
        }
        let doc = String(decoding: bytes, as: UTF8.self)
        guard let section = doc.firstRange(of: "## A complete example"),
              let open = doc[section.upperBound...].firstRange(of: "```yaml\n"),
              let close = doc[open.upperBound...].firstRange(of: "```")
        else { Issue.record("no example block"); return }
        let yaml = String(doc[open.upperBound..<close.lowerBound])
        let scenario = try Scenario.parse(yaml)
        let runner = try ScenarioRunner(scenario: scenario)
        runner.run()
        #expect(runner.report.passed, "\(runner.report.text)")
        #expect(runner.report.heldExpectations >= 7)
    }
}

@Suite("iommu bench groups")
struct BenchGroupTests {
    @Test func translateMeasuresHitsAndMisses() throws {
        let rows = try TranslateBench.run(iterations: 200, repeats: 1)
        #expect(rows.count == 5)
        #expect(rows.allSatisfy { $0.value > 0 })
        #expect(abs(rows[4].value - 50) < 5, "miss share \(rows[4].value)")
    }

    @Test func pageTableAndVFIOGroupsRun() throws {
        #expect(try PageTableBench.run(iterations: 100, repeats: 1).count == 5)
        #expect(try VFIOBench.run(bytes: 2 << 20, iterations: 1, pairs: 10).count == 4)
    }

    @Test func benchDefaultsToAll() throws {
        let command = try IOMMUCommand.parseAsRoot(["bench"])
        #expect(command is AllBenchCommand)
    }
}
