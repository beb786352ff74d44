import IOMMUBase
import Testing
@testable import IOMMUScenario

/// `ScenarioRunner.reach(device:)` on small platforms whose answers are worked out by hand
/// from the scenario: physical addresses are given explicitly (`paddr:`), so every expected
/// range below follows from the buffer address, its length and the leaf size alone.
@Suite("Isolation audit (reach)")
struct DeviceReachTests {
    func runner(_ yaml: String, upTo step: Int? = nil) throws -> ScenarioRunner {
        let runner = try ScenarioRunner(scenario: try Scenario.parse(yaml))
        runner.run(upTo: step)
        #expect(runner.report.passed, "\(runner.report.text)")
        return runner
    }

    struct Range: Equatable, CustomStringConvertible {
        var first: UInt64, last: UInt64, reason: DeviceReach.Reason, iova: UInt64?
        var description: String { "0x\(String(first, radix: 16))..0x\(String(last, radix: 16)) \(reason.rawValue) iova \(iova.map { String($0, radix: 16) } ?? "-")" }
    }

    func ranges(_ r: DeviceReach?) -> [Range] {
        (r?.entries ?? []).map { Range(first: $0.first, last: $0.last, reason: $0.reason, iova: $0.iova) }
    }

    static let smmuPlatform = """
        platform:
          cpu-page-size: 4K
          iommus:
            - {name: smmu0, kind: smmu, unmatched-stream: bypass}
            - {name: smmu1, kind: smmu, unmatched-stream: fault}
          devices:
            - {name: gpu0, pci: {address: "0000:01:00.0"}, iommu: smmu0, stream-ids: [0x10]}
            - {name: dsp0, bus: platform, iommu: smmu0, stream-ids: [0x20], dma-mask: 32}
            - {name: late0, bus: platform, iommu: smmu0, stream-ids: [0x30], dma-mask: 40, present-at-boot: false}
            - {name: late1, bus: platform, iommu: smmu1, stream-ids: [0x30], present-at-boot: false}
            - {name: legacy0, pci: {address: "0000:09:00.0"}, dma-mask: 36}
        workload:
          - allocate-domain: {device: gpu0, type: unmanaged, as: u}
          - attach: {device: gpu0, domain: u}
          - map: {device: gpu0, iova: 0x10000, length: 4K, paddr: 0x80400000, prot: rw}
          - map: {device: gpu0, iova: 0x20000, length: 4K, paddr: 0x80500000, prot: r}
          - allocate-domain: {device: dsp0, type: identity, as: id}
          - attach: {device: dsp0, domain: id}
        """

    @Test func twoFourKMappingsAreExactlyTheirPages() throws {
        let r = try runner(Self.smmuPlatform).reach(device: "gpu0")
        #expect(ranges(r) == [
            Range(first: 0x8040_0000, last: 0x8040_0FFF, reason: .mapping, iova: 0x10000),
            Range(first: 0x8050_0000, last: 0x8050_0FFF, reason: .mapping, iova: 0x20000),
        ])
        #expect(r?.entries.map(\.prot) == ["rw", "r"])
        #expect(r?.entries.allSatisfy { $0.granule == 4096 && $0.owner?.hasPrefix("map step") == true } == true)
        #expect(r?.routes.first?.contains("S2CR translate cb") == true)
        #expect(r?.bytes(.mapping) == 8192)
        #expect(r?.beyondBufferBytes == 0)
    }

    @Test func bypassS2CRUnmatchedStreamsAndNoIOMMU() throws {
        let runner = try runner(Self.smmuPlatform)
        // Identity domain → S2CR bypass: all a 32-bit device can address.
        #expect(ranges(runner.reach(device: "dsp0")) == [Range(first: 0, last: 0xFFFF_FFFF, reason: .bypass, iova: nil)])
        #expect(runner.reach(device: "dsp0")?.routes == ["smmu0 sid 0x20: SMR1 → S2CR bypass — bypass"])
        // Not added: no SMR matches; smmu0 lets unmatched streams through (USFCFG=0), smmu1 faults them.
        let late0 = runner.reach(device: "late0")
        #expect(ranges(late0) == [Range(first: 0, last: 0xFF_FFFF_FFFF, reason: .bypass, iova: nil)])
        #expect(late0?.routes.last?.contains("USFCFG=0") == true)
        let late1 = runner.reach(device: "late1")
        #expect(ranges(late1).isEmpty)
        #expect(late1?.routes.last?.contains("USFCFG=1") == true)
        // No IOMMU at all.
        #expect(ranges(runner.reach(device: "legacy0")) == [Range(first: 0, last: 0xF_FFFF_FFFF, reason: .bypass, iova: nil)])
        #expect(runner.reach(device: "nosuch") == nil)
    }

    @Test func subPageBufferOnSixteenKDARTExposesFifteenK() throws {
        let runner = try runner("""
            platform:
              cpu-page-size: 16K
              iommus: [{name: dart0, kind: dart, page-sizes: [16K]}]
              devices: [{name: usb0, bus: platform, iommu: dart0, stream-ids: [1]}]
            workload:
              - dma-map-page: {device: usb0, paddr: 0x80200400, length: 1K, direction: from-device, as: rx}
            """)
        let rx = try #require(runner.namedValues["rx"])
        #expect(rx & 0x3FFF == 0x400)  // the DMA address keeps the offset in the 16K page
        let r = runner.reach(device: "usb0")
        // The 16K leaf 0x80200000..0x80203fff: 1K before the buffer, the buffer, 14K after it.
        #expect(ranges(r) == [
            Range(first: 0x8020_0000, last: 0x8020_03FF, reason: .granuleRounding, iova: rx - 0x400),
            Range(first: 0x8020_0400, last: 0x8020_07FF, reason: .mapping, iova: rx),
            Range(first: 0x8020_0800, last: 0x8020_3FFF, reason: .granuleRounding, iova: rx + 0x400),
        ])
        #expect(r?.beyondBufferBytes == 15 * 1024)
        #expect(r?.bytes(.mapping) == 1024)
        #expect(r?.entries.allSatisfy { $0.granule == 16384 && $0.prot == "w" } == true)
        #expect(r?.entries[1].owner?.contains("dma-map-page $rx") == true)
        #expect(r?.routes.first?.contains("TCR translate") == true)
    }

    @Test func fourKBufferOnSixtyFourKGranuleExposesSixtyK() throws {
        let r = try runner("""
            platform:
              cpu-page-size: 64K
              iommus: [{name: smmu0, kind: smmu, page-sizes: [64K]}]
              devices: [{name: nic0, pci: {address: "0000:01:00.0"}, iommu: smmu0, stream-ids: [0x100]}]
            workload:
              - dma-map-page: {device: nic0, paddr: 0x80431000, length: 4K, direction: bidirectional, as: buf}
            """).reach(device: "nic0")
        #expect(ranges(r).map { [$0.first, $0.last] } == [[0x8043_0000, 0x8043_0FFF], [0x8043_1000, 0x8043_1FFF], [0x8043_2000, 0x8043_FFFF]])
        #expect(r?.entries.map(\.reason) == [.granuleRounding, .mapping, .granuleRounding])
        #expect(r?.beyondBufferBytes == 60 * 1024)
        #expect(r?.entries.first?.prot == "rw")
    }

    static let lazy = """
        platform:
          cpu-page-size: 4K
          default-domain: lazy
          iommus: [{name: smmu0, kind: smmu}]
          devices:
            - {name: nic0, pci: {address: "0000:01:00.0"}, iommu: smmu0, stream-ids: [0x100]}
        workload:
          - dma-map-page: {device: nic0, paddr: 0x80300000, length: 4K, direction: to-device, as: tx}
          - dma-read: {device: nic0, iova: $tx, length: 4}
          - dma-unmap-page: {device: nic0, address: $tx, length: 4K, direction: to-device}
          - advance-clock: 10ms
        """

    @Test func staleTLBEntryAfterLazyUnmapUntilTheFlush() throws {
        let mapped = try runner(Self.lazy, upTo: 2)
        let tx = try #require(mapped.namedValues["tx"])
        #expect(ranges(mapped.reach(device: "nic0")) == [Range(first: 0x8030_0000, last: 0x8030_0FFF, reason: .mapping, iova: tx)])

        // Unmapped from the table, IOVA in the flush queue, TLB not invalidated: still reachable.
        let unmapped = try runner(Self.lazy, upTo: 3)
        let r = unmapped.reach(device: "nic0")
        #expect(ranges(r) == [Range(first: 0x8030_0000, last: 0x8030_0FFF, reason: .staleTLB, iova: tx)])
        #expect(r?.entries.first?.prot == "r")
        #expect(r?.entries.first?.detail.contains("mapping removed, not invalidated") == true)
        #expect(r?.bytes(.staleTLB) == 4096)

        // The flush-queue timer fired: the invalidation completed, nothing is left.
        let flushed = try runner(Self.lazy)
        #expect(ranges(flushed.reach(device: "nic0")).isEmpty)
    }

    @Test func strictUnmapLeavesNoStaleEntry() throws {
        let runner = try runner(Self.lazy.replacing("default-domain: lazy", with: "default-domain: strict"), upTo: 3)
        #expect(ranges(runner.reach(device: "nic0")).isEmpty)
    }

    @Test func virtioEndpointMappingsAndBypass() throws {
        let yaml = """
            platform:
              iommus: []
              devices: [{name: d, pci: {address: "00:01.0"}}]
              virtio-iommu:
                features: [version-1, input-range, domain-range, map-unmap, bypass-config]
                boot-bypass: true
                endpoints: [{device: d, id: 8}]
            workload:
              - virtio-negotiate: linux
              - virtio-request:
                  attach: {domain: 1, endpoint: d}
              - virtio-request:
                  map: {domain: 1, virt-start: 0x1000, virt-end: 0x2fff, phys-start: 0xa0000000, flags: rw}
            """
        #expect(ranges(try runner(yaml, upTo: 1).reach(device: "d")).map(\.reason) == [.bypass])
        let r = try runner(yaml).reach(device: "d")
        #expect(ranges(r) == [Range(first: 0xA000_0000, last: 0xA000_1FFF, reason: .mapping, iova: 0x1000)])
    }
}
