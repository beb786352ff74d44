@testable import IOMMUCLI
import IOMMUScenario
import Testing

@Suite("iommu inspect --check / --reach")
struct InspectAuditCommandTests {
    @Test(arguments: exampleFiles())
    func everyExampleIsConsistentAtTheEnd(_ path: String) throws {
        let outcome = try InspectCommand.parse([path, "--check"]).execute()
        #expect(outcome.status == 0, "\(outcome.standardOutput)\(outcome.standardError)")
        #expect(outcome.standardOutput.contains("checkers: consistent"))
        #expect(outcome.standardOutput.contains("  core "))
    }

    static let broken = """
        scenario: unmap under a live DMA mapping
        platform:
          cpu-page-size: 16K
          iommus: [{name: dart0, kind: dart, page-sizes: [16K]}]
          devices: [{name: usb0, bus: platform, iommu: dart0, stream-ids: [1]}]
        workload:
          - dma-map-page: {device: usb0, paddr: 0x80200400, length: 1K, direction: from-device, as: rx}
          - unmap: {device: usb0, iova: 0xffffc000, length: 16K}
        """

    @Test func aViolationExitsOneAndNamesTheChecker() throws {
        let path = writeTemporary(Array(Self.broken.utf8), name: "audit-broken.yaml")
        let clean = try InspectCommand.parse([path, "--check", "--at", "1"]).execute()
        #expect(clean.status == 0, "\(clean.standardOutput)")
        let outcome = try InspectCommand.parse([path, "--check"]).execute()
        #expect(outcome.status == 1)
        let text = outcome.standardOutput
        #expect(text.contains("dma-cookie domain#1  1 violation(s)"), "\(text)")
        #expect(text.contains("    - dma-cookie: domain#1: page mapping 0xffffc400 size 1024"))
        #expect(text.contains("apple-dart dart0     ok"))
        #expect(text.hasSuffix("1 violation(s) in 1 of 5 checkers\n"))

        let json = try InspectCommand.parse([path, "--check", "--json"]).execute()
        #expect(json.status == 1)
        #expect(json.standardOutput.contains("\"consistent\": false"))
        #expect(json.standardOutput.contains("\"checker\": \"dma-cookie domain#1\""))
        #expect(json.standardOutput.contains("\"component\": \"dma-cookie\""))
    }

    @Test func reachListsGranuleRoundingAsBeyondTheBuffer() throws {
        let path = writeTemporary(Array(Self.broken.utf8), name: "audit-reach.yaml")
        let outcome = try InspectCommand.parse([path, "--at", "1", "--reach", "usb0"]).execute()
        #expect(outcome.status == 0)
        let text = outcome.standardOutput
        #expect(text.contains("dart0 sid 0x1: TCR translate, TTBRs"))
        #expect(text.contains("0x80200000..0x802003ff  1K  granule-rounding  iova 0xffffc000 w  domain#1 (DMA)"), "\(text)")
        #expect(text.contains("0x80200400..0x802007ff  1K  mapping           iova 0xffffc400 w  domain#1 (DMA)"))
        #expect(text.contains("0x80200800..0x80203fff  14K  granule-rounding  iova 0xffffc800 w"))
        #expect(text.contains("Totals: mapped 1K, beyond the buffers 15K, through stale TLB entries 0, bypass none"))

        // After the core unmap the device reaches nothing (the DART TLB held no entry).
        let after = try InspectCommand.parse([path, "--reach", "usb0"]).execute().standardOutput
        #expect(after.contains("Reachable physical ranges: none"))

        let json = try InspectCommand.parse([path, "--at", "1", "--reach", "usb0", "--json"]).execute().standardOutput
        #expect(json.contains("\"beyond_buffer_bytes\": 15360"))
        #expect(json.contains("\"reason\": \"granule-rounding\""))
        #expect(json.contains("\"first\": \"0x80200400\""))
    }

    @Test func reachOfTheLazyExampleShowsTheStaleEntry() throws {
        let path = repositoryRoot + "/examples/07-lazy-vs-strict.yaml"
        // Step 6 is the lazy dma-unmap-page: the entry the device filled at step 5 is still there.
        let text = try InspectCommand.parse([path, "--at", "6", "--reach", "nic0"]).execute().standardOutput
        #expect(text.contains("stale-tlb"), "\(text)")
        #expect(text.contains("mapping removed, not invalidated"))
    }

    @Test func checkAndReachTogether() throws {
        let path = repositoryRoot + "/examples/05-dart-page-size.yaml"
        let outcome = try InspectCommand.parse([path, "--check", "--reach", "usb0", "--json"]).execute()
        #expect(outcome.status == 0)
        #expect(outcome.standardOutput.contains("\"check\": {"))
        #expect(outcome.standardOutput.contains("\"reach\": {"))
        #expect(outcome.standardOutput.contains("\"reason\": \"bypass\""))
    }

    @Test func unknownDeviceIsExitTwoListingTheNames() throws {
        let path = repositoryRoot + "/examples/05-dart-page-size.yaml"
        let outcome = try InspectCommand.parse([path, "--reach", "gpu9"]).execute()
        #expect(outcome.status == 2)
        #expect(outcome.standardOutput.isEmpty)
        #expect(outcome.standardError == "error: --reach: no device 'gpu9' in \(path); the devices are: usb0, tb0\n")
    }
}
