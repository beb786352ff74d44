import IOMMUBase
import IOMMUHardware
import Testing
@testable import IOMMUScenario

/// `ScenarioRunner.consistencyChecks()`: clean on healthy platforms, and each checker it adds
/// (DART stream registers, DMA cookie) — as well as the SMMU's — reports state broken behind
/// the driver's back through `@testable` access to the platform's hardware.
@Suite("Scenario consistency checks")
struct ScenarioConsistencyCheckTests {
    func runner(_ yaml: String) throws -> ScenarioRunner {
        let runner = try ScenarioRunner(scenario: try Scenario.parse(yaml))
        runner.run()
        return runner
    }

    static let dart = """
        platform:
          cpu-page-size: 16K
          iommus: [{name: dart0, kind: dart, page-sizes: [16K]}]
          devices:
            - {name: usb0, bus: platform, iommu: dart0, stream-ids: [1]}
            - {name: usb1, bus: platform, iommu: dart0, stream-ids: [2]}
        workload:
          - dma-map-page: {device: usb0, paddr: 0x80200400, length: 1K, direction: from-device, as: rx}
          - allocate-domain: {device: usb1, type: identity, as: id}
          - attach: {device: usb1, domain: id}
        """

    func names(_ checks: [ScenarioConsistencyCheck]) -> [String] { checks.map(\.checker) }

    @Test func aHealthyDARTPlatformIsConsistentAndEveryCheckerRan() throws {
        let runner = try runner(Self.dart)
        let checks = runner.consistencyChecks()
        #expect(runner.checkConsistency() == [], "\(checks)")
        let serial = try #require(runner.dmaLayer.devices["usb0"]?.cookie?.domain.serial)
        for name in ["core", "apple-dart dart0", "page-table domain#\(serial)", "dma-iova domain#\(serial)", "dma-cookie domain#\(serial)"] {
            #expect(names(checks).contains(name), "\(names(checks))")
        }
    }

    @Test func dartCheckerReportsAStreamRegisterWrittenBehindTheDriver() throws {
        let runner = try runner(Self.dart)
        guard case .dart(let dart, _)? = runner.hardware["dart0"] else { Issue.record("no DART"); return }
        // usb0's stream loses its TTBRs; usb1 (identity) is switched to translate with usb0's table.
        let saved = dart.readStream(1)
        dart.writeStream(1, tcr: 0, ttbrs: [])
        dart.writeStream(2, tcr: saved.tcr, ttbrs: saved.ttbrs)
        let found = runner.consistencyChecks().first { $0.checker == "apple-dart dart0" }?.violations ?? []
        #expect(found.count == 2, "\(found)")
        #expect(found.allSatisfy { $0.component == "apple-dart" })
        #expect(found.contains { $0.message.hasPrefix("stream 1 of") && $0.message.contains("(DMA)") })
        #expect(found.contains { $0.message.hasPrefix("stream 2 of") && $0.message.contains("(identity)") })
        // A stream nobody uses must be off.
        dart.writeStream(1, tcr: saved.tcr, ttbrs: saved.ttbrs)
        dart.writeStream(2, tcr: DARTRegister.tcrBypassDART, ttbrs: [])
        dart.writeStream(5, tcr: DARTRegister.tcrBypassDART, ttbrs: [])
        #expect(runner.checkConsistency().map(\.message) == ["stream 5 is used by no device but is enabled (TCR 0x100)"])
    }

    @Test func cookieCheckerReportsALiveDMAMappingUnmappedUnderneath() throws {
        // `unmap` through the core (iommu_unmap) under a live dma_map_page mapping.
        let runner = try runner(Self.dart + """

              - unmap: {device: usb0, iova: 0xffffc000, length: 16K}
            """)
        let rx = try #require(runner.namedValues["rx"])
        #expect(rx == 0xFFFF_C400, "the hand-written unmap above assumes this IOVA")
        let found = runner.consistencyChecks().filter { $0.checker.hasPrefix("dma-cookie") }.flatMap(\.violations)
        #expect(found.count == 1, "\(found)")
        #expect(found.first?.message.contains("1 granule(s) not mapped in the page table, first at 0xffffc000") == true)
    }

    @Test func cookieCheckerReportsALiveMappingWhoseIOVAWasFreed() throws {
        let runner = try runner(Self.dart)
        let cookie = try #require(runner.dmaLayer.devices["usb0"]?.cookie)
        _ = cookie.iovad.free(PFN(0xFFFF_C400 >> 14))
        let found = cookie.checkConsistency()
        #expect(found.map(\.message) == ["domain#\(cookie.domain.serial): page mapping 0xffffc400 size 1024 of \(runner.deviceIDs["usb0"]!) has no IOVA allocation"])
    }

    @Test func smmuCheckerAndReachSeeAnS2CRFlippedToBypass() throws {
        let runner = try runner("""
            platform:
              iommus: [{name: smmu0, kind: smmu}]
              devices: [{name: nic0, pci: {address: "0000:01:00.0"}, iommu: smmu0, stream-ids: [0x100], dma-mask: 32}]
            workload:
              - dma-map-page: {device: nic0, paddr: 0x80300000, length: 4K, direction: to-device}
            """)
        #expect(runner.checkConsistency() == [])
        guard case .smmu(let smmu, _)? = runner.hardware["smmu0"] else { Issue.record("no SMMU"); return }
        smmu.writeS2CR(0, StreamToContextRegister(type: .bypass).raw)
        let found = runner.checkConsistency()
        #expect(found.count == 1 && found.first?.component == "arm-smmu", "\(found)")
        #expect(found.first?.message.hasPrefix("S2CR0 register") == true)
        // The audit follows the registers, not the driver: the device now reaches everything.
        #expect(runner.reach(device: "nic0")?.entries.map(\.reason) == [.bypass])
        #expect(runner.reach(device: "nic0")?.entries.first?.last == 0xFFFF_FFFF)
    }
}
