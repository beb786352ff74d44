import Foundation
import IOMMUScenario
import IOMMUTestSupport

/// Builds small traces for tests, in the kernel's exact column layout.
struct TraceBuilder {
    var lines: [String] = [
        "# tracer: nop",
        "#",
        "# entries-in-buffer/entries-written: 0/0   #P:1",
    ]
    var microseconds: UInt64 = 1_000_000

    /// Appends `NAME: BODY` as an event of `task`-`pid` on `cpu` with `flags`.
    mutating func add(_ event: String, task: String = "dd", pid: Int = 200, cpu: Int = 0, flags: String = ".....") {
        microseconds += 7
        let seconds = String(microseconds / 1_000_000)
        var fraction = String(microseconds % 1_000_000)
        fraction = String(repeating: "0", count: 6 - fraction.count) + fraction
        var taskColumn = task
        if taskColumn.count < 16 { taskColumn = String(repeating: " ", count: 16 - taskColumn.count) + taskColumn }
        var pidColumn = String(pid)
        if pidColumn.count < 7 { pidColumn += String(repeating: " ", count: 7 - pidColumn.count) }
        var cpuColumn = String(cpu)
        cpuColumn = String(repeating: "0", count: max(0, 3 - cpuColumn.count)) + cpuColumn
        let secondsColumn = String(repeating: " ", count: max(0, 5 - seconds.count)) + seconds
        lines.append("\(taskColumn)-\(pidColumn) [\(cpuColumn)] \(flags) \(secondsColumn).\(fraction): \(event)")
    }

    /// Line number of the last added line.
    var lastLine: Int { lines.count }

    var text: String { lines.joined(separator: "\n") + "\n" }

    // Event bodies.
    static func hex16(_ value: UInt64) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }
    static func map(_ iova: UInt64, _ paddr: UInt64, _ length: UInt64) -> String {
        "map: IOMMU: iova=0x\(hex16(iova)) - 0x\(hex16(iova + length)) paddr=0x\(hex16(paddr)) size=\(length)"
    }
    static func unmap(_ iova: UInt64, _ length: UInt64, unmapped: UInt64? = nil) -> String {
        "unmap: IOMMU: iova=0x\(hex16(iova)) - 0x\(hex16(iova + length)) size=\(length) unmapped_size=\(unmapped ?? length)"
    }
    static func mapPage(_ device: String, _ dma: UInt64, _ length: UInt64, _ phys: UInt64) -> String {
        "dma_map_page: \(device) dir=FROM_DEVICE dma_addr=\(String(dma, radix: 16)) size=\(length) phys_addr=\(String(phys, radix: 16)) attrs="
    }
    static func unmapPage(_ device: String, _ dma: UInt64, _ length: UInt64) -> String {
        "dma_unmap_page: \(device) dir=FROM_DEVICE dma_addr=\(String(dma, radix: 16)) size=\(length) attrs="
    }
    static func mapSG(_ device: String, dma: [UInt64], lengths: [UInt64], phys: [UInt64]) -> String {
        func list(_ values: [UInt64]) -> String { "{" + values.map { "0x" + String($0, radix: 16) }.joined(separator: ",") + "}" }
        return "dma_map_sg: \(device) dir=TO_DEVICE nents=\(phys.count)/\(phys.count) ents=\(dma.count)/\(dma.count) dma_addrs=\(list(dma)) sizes=\(list(lengths)) phys_addrs=\(list(phys)) attrs="
    }
    static func unmapSG(_ device: String, phys: [UInt64]) -> String {
        "dma_unmap_sg: \(device) dir=TO_DEVICE phys_addrs={" + phys.map { "0x" + String($0, radix: 16) }.joined(separator: ",") + "} attrs="
    }
    static func alloc(_ device: String, _ dma: UInt64, _ length: UInt64) -> String {
        "dma_alloc: \(device) dir=BIDIRECTIONAL dma_addr=\(String(dma, radix: 16)) size=\(length) virt_addr=00000000fd088213 flags=GFP_KERNEL attrs="
    }
    static func free(_ device: String, _ dma: UInt64, _ length: UInt64) -> String {
        "dma_free: \(device) dir=BIDIRECTIONAL dma_addr=\(String(dma, radix: 16)) size=\(length) virt_addr=0000000038998cc2 attrs="
    }
    static func addToGroup(_ group: Int, _ device: String) -> String {
        "add_device_to_group: IOMMU: groupID=\(group) device=\(device)"
    }
    static func removeFromGroup(_ group: Int, _ device: String) -> String {
        "remove_device_from_group: IOMMU: groupID=\(group) device=\(device)"
    }
    static func attach(_ device: String) -> String { "attach_device_to_domain: IOMMU: device=\(device)" }
}

enum TraceTestFiles {
    /// The sample trace, `Tests/Fixtures/traces/vtd-strict-smp1.trace.xz`.
    static var sampleTracePath: String { TestSupport.fixturesDirectory() + "/traces/vtd-strict-smp1.trace.xz" }

    /// Writes `bytes` to a fresh temporary file and returns its path.
    static func temporaryFile(_ name: String, _ bytes: [UInt8]) throws -> String {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("iommukit-trace-tests-\(getpid())-\(UInt64.random(in: 0...UInt64.max))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let url = directory.appendingPathComponent(name)
        try Data(bytes).write(to: url)
        return url.path
    }

    /// Replays `text` from memory with the default backend.
    static func replay(_ text: String) throws -> ReplayReport {
        let reader = TraceReader(bytes: Array(text.utf8), name: "test.trace")
        var engine = ReplayEngine(backend: IntervalReplayBackend())
        return try engine.replay(reader)
    }
}
