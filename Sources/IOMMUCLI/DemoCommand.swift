import ArgumentParser
import IOMMUKit
import IOMMUScenario

/// `iommu demo`: the end-to-end tour on the built-in server platform.
struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "An end-to-end tour of every layer on the built-in server platform.",
        discussion: """
            Boots the server platform of examples/server.yaml (three Arm SMMU models, 34 \
            devices, lazy DMA domains with untrusted ports forced strict) and runs its workload: \
            probe deferral until the third SMMU's driver loads, IOMMU groups, a DMA mapping \
            through which a NIC really moves bytes (SMMU TLB + page-table walk), a driver's \
            bogus unmap caught and reported, lazy vs strict domains, and a VFIO mapping whose \
            unmap notifies a vendor driver that pinned a page. Ends with a short look at the \
            NIC's page table and the SMMU's TLB. Exit status 1 if any expectation of the tour \
            failed.

            --page-table prints the older, detailed page-table walk-through instead.
            """
    )

    @Flag(help: "Show the detailed page-table walk-through (descriptors, walker, block split) instead.")
    var pageTable = false

    func run() throws {
        var out = ""
        if pageTable {
            try Self.narrate(into: &out)
            print(out, terminator: "")
            return
        }
        let passed = try Self.tour(into: &out)
        print(out, terminator: "")
        if !passed { throw checkFailedExit }
    }

    /// The server tour; returns whether every expectation held (tests call this directly).
    static func tour(into out: inout String) throws -> Bool {
        let clock = ContinuousClock()
        let start = clock.now
        let scenario = try Scenario.parse(BuiltInScenarios.server)
        let runner = try ScenarioRunner(scenario: scenario, seed: 1)
        runner.run()
        out += runner.report.text
        let inspection = runner.inspect()
        out += "\nPage table (short): the NIC's domain, walked from the SMMU context bank's TTBR0:\n"
        if let domain = inspection.domains.first(where: { $0.devices.contains("nic0") }) {
            for m in domain.mappings {
                out += "  mapping \(InspectCommand.hex(m.iova))..\(InspectCommand.hex(m.iova + m.length - 1)) -> \(InspectCommand.hex(m.paddr)) \(m.prot)\n"
            }
            for t in domain.tables {
                let shown = t.entries.prefix(4).map { "[\($0.index)] \(DescriptorText.hex16($0.descriptor))" }.joined(separator: " ")
                out += "  L\(t.level) table \(InspectCommand.hex(t.address)): \(shown)\(t.entries.count > 4 ? " …" : "")\n"
            }
        }
        for (name, tlb) in runner.tlbStatistics { out += "  \(name) TLB: \(tlb.hits) hit(s), \(tlb.misses) miss(es), \(tlb.staleHits) stale\n" }
        let elapsed = clock.now - start
        out += "\nTour finished in \(elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000) ms.\n"
        return runner.report.passed
    }

    static func hex(_ value: UInt64) -> String { DescriptorText.hex(value) }

    /// The whole narration, appended to `out` (tests call this directly).
    static func narrate(into out: inout String) throws {
        func say(_ line: String = "") { out += line + "\n" }
        func describe(_ pte: UInt64, _ level: Int) -> String {
            DescriptorText.describe(pte, level: level, kind: .armLPAEStage1, granuleShift: 12, lastLevel: 3)
        }

        say("1. A machine: 4 GiB of RAM at 0x80000000, and a frame allocator for table pages.")
        let memory = try PhysicalMemory()
        let frames = FrameAllocator(memory: memory)
        let warnings = RecordingWarningSink()

        let table = try IOPageTable<ARMLPAEStage1<Granule4K>>(
            configuration: PageTableConfiguration(ias: 48, oas: 48), frames: frames, warnings: warnings)
        let g = table.geometry
        say()
        say("2. An Arm LPAE stage-1 table, 4 KiB granule, 48-bit IOVAs and PAs:")
        say("   \(4 - g.startLevel) levels starting at L\(g.startLevel), pgd of \(1 << g.pgdBits) entries at \(table.roots[0]); page sizes \(g.pageSizes).")
        guard case .stage1(let registers) = table.registers else { return }
        say("   Registers: TTBR0 \(hex(registers.ttbr))  TCR \(hex(registers.tcr))  MAIR \(hex(registers.mair))")
        say("   (TCR: T0SZ \(registers.fields.tsz), TG0 4K, SH inner, IRGN/ORGN write-back, IPS \(registers.fields.ps) = 48 bits)")

        say()
        say("3. Map three 4 KiB pages (rw, cacheable) and one 2 MiB block (read-only, no-exec).")
        try table.map(iova: IOVA(0x1000_0000), paddr: PhysAddr(0x9000_0000), length: 0x3000, prot: [.read, .write, .cache])
        try table.map(iova: IOVA(0x4000_0000), paddr: PhysAddr(0xA000_0000), length: 0x20_0000, prot: [.read, .noExec])
        say("   iommu_map(0x10000000 -> 0x90000000, 12K, rwc) and iommu_map(0x40000000 -> 0xa0000000, 2M, rn): ok")
        say("   Table pages in use: \(frames.framesInUse) (pgd + L1 + two L2 + one L3).")

        say()
        say("4. The descriptors a walk of IOVA 0x10001234 meets, level by level:")
        let iova: UInt64 = 0x1000_1234
        var tableAddress = table.roots[0].rawValue
        for level in g.startLevel...3 {
            let index = g.index(iova, level: level)
            let pte = try memory.load64(PhysAddr(tableAddress + UInt64(index) * 8))
            say("   L\(level) [\(index)] at \(hex(tableAddress + UInt64(index) * 8)): \(DescriptorText.hex16(pte))  \(describe(pte, level))")
            if level < 3 { tableAddress = DescriptorText.lpaeAddress(pte, granuleShift: 12) }
        }
        if let block = table.leafDescriptor(IOVA(0x4000_0000)) {
            say("   and the block for 0x40000000 at L\(block.level): \(DescriptorText.hex16(block.descriptor))  \(describe(block.descriptor, block.level))")
        }

        say()
        say("5. The hardware walker, configured only from TTBR0/TCR/MAIR, decodes the raw bits itself:")
        let walker = try HardwareWalker(memory: memory, ttbr: registers.ttbr, tcr: registers.tcr, mair: registers.mair)
        for (address, access, name) in [(UInt64(0x1000_1234), WalkAccess.write, "write"), (0x4012_3456, .read, "read")] {
            switch walker.translate(IOVA(address), access: access) {
            case .translated(let t):
                say("   \(name) \(hex(address)) -> \(t.physicalAddress) (L\(t.level), \(formatByteSize(1 << UInt64(t.blockShift))) leaf, "
                    + "\(t.readable ? "r" : "-")\(t.writable ? "w" : "-")\(t.executable ? "x" : "-"), \(t.memoryType))")
            case .fault(let fault):
                say("   \(name) \(hex(address)) -> \(fault)")
            }
        }
        say("   iova_to_phys(0x40123456) from the table code agrees: \(table.iovaToPhys(IOVA(0x4012_3456)).map(\.description) ?? "none")")

        say()
        say("6. Unmap one 4 KiB page inside the block: Linux 6.12 splits the block into an L3 table.")
        var gather = IOTLBGather()
        var invalidator = RecordingTLBInvalidator()
        let unmapped = table.unmap(iova: IOVA(0x4000_3000), length: 0x1000, gather: &gather, invalidator: &invalidator)
        say("   iommu_unmap(0x40003000, 4K) = \(hex(unmapped)) bytes; TLB hooks: \(invalidator.events.map(\.description).joined(separator: ", "))")
        for warning in warnings.drain() { say("   warning: \(warning)") }
        if let leaf = table.leafDescriptor(IOVA(0x4000_4000)) {
            say("   0x40004000 is now an L\(leaf.level) page: \(DescriptorText.hex16(leaf.descriptor))  \(describe(leaf.descriptor, leaf.level))")
        }
        say("   Table pages in use: \(frames.framesInUse).")

        say()
        say("7. Faults are outcomes, not errors:")
        for (address, access, name) in [(UInt64(0x4000_3000), WalkAccess.read, "read"), (0x4000_5000, .write, "write"),
                                        (0x5000_0000, .read, "read"), (0x4000_5000, WalkAccess(execute: true), "exec")] {
            if case .fault(let fault) = walker.translate(IOVA(address), access: access) {
                say("   \(name) \(hex(address)): \(fault)")
            }
        }

        say()
        var flushes = RecordingTLBInvalidator()
        table.destroy(invalidator: &flushes)
        say("8. Destroy: \(flushes.events.map(\.description).joined(separator: ", ")), then every table page is freed; frames in use: \(frames.framesInUse).")
    }
}
