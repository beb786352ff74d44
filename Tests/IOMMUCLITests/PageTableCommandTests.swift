@testable import IOMMUCLI
import Testing

@Suite("iommu pgtable")
struct PageTableCommandTests {
    func run(_ arguments: [String], ops: String, file: String = "ops.txt") throws -> PageTableCommand.Outcome {
        let command = try PageTableCommand.parse(arguments + ["--ops", file])
        return command.execute(opsText: ops, fileName: file)
    }

    let sampleOps = """
        # page, block, split
        map   0x1000      0x40001000  0x1000    rw
        map   0x200000    0x40200000  0x200000  rwc

        unmap 0x201000    0x1000
        map   0x1000      0x50000000  0x1000    r     # EEXIST
        unmap 0x900000    0x1000
        map   0x3000      0x3000      0x1000    c     # no read/write: EINVAL
        map   0x8000000000 0x0        0x1000    r     # beyond ias 39: ERANGE
        """

    @Test func jsonOutputIsExact() throws {
        let ops = """
            map 0x1000 0x40001000 0x1000 rw
            map 0x1000 0x40002000 0x1000 r
            unmap 0x1000 0x2000
            """
        let outcome = try run(["--format", "arm-lpae-s1", "--granule", "4k", "--ias", "39", "--oas", "48", "--json"], ops: ops)
        #expect(outcome.status == 0)
        // Tables: L1 root 0x80000000 → L2 0x80001000 → L3 0x80002000 (entry 1 cleared again).
        #expect(outcome.standardOutput == """
            {"format":"arm-lpae-s1","granule":4096,"ias":39,"oas":48,"startLevel":1,"root":"0x80000000",\
            "ops":[{"op":"map","iova":"0x1000","size":4096,"result":"ok","bytes":4096},\
            {"op":"map","iova":"0x1000","size":4096,"result":"EEXIST","bytes":0},\
            {"op":"unmap","iova":"0x1000","size":8192,"result":"ENOENT","bytes":4096}],\
            "tables":[{"address":"0x80000000","level":1,"entries":[[0,"0x80001003"]]},\
            {"address":"0x80001000","level":2,"entries":[[0,"0x80002003"]]},\
            {"address":"0x80002000","level":3,"entries":[]}]}

            """)
    }

    @Test func jsonListsTheSplitBlockAndEveryResult() throws {
        let outcome = try run(["--format", "arm-lpae-s1", "--ias", "39", "--json"], ops: sampleOps)
        #expect(outcome.status == 0)
        let text = outcome.standardOutput
        #expect(text.contains(#"{"op":"unmap","iova":"0x201000","size":4096,"result":"ok","bytes":4096}"#))
        #expect(text.contains(#""result":"EINVAL","bytes":0"#))
        #expect(text.contains(#""result":"ERANGE","bytes":0"#))
        #expect(text.contains(#"[0,"0x40200f47"],[2,"0x40202f47"]"#))   // entry 1 is the hole
        #expect(outcome.standardError.contains("ops.txt:5: warning: unmap at iova 0x201000 split a 2M block"))
    }

    @Test func humanOutputShowsOpsAndDecodedTables() throws {
        let outcome = try run(["--format", "arm-lpae-s1", "--ias", "39"], ops: sampleOps)
        #expect(outcome.status == 0)
        let text = outcome.standardOutput
        #expect(text.hasPrefix("arm-lpae-s1 page table: granule 4K, ias 39, oas 48, start level 1, pgd 512 entries"))
        #expect(text.contains("TTBR 0x80000000  TCR 0x500803519  MAIR 0xf404ff44"))
        #expect(text.contains("line 3: map iova 0x200000 -> pa 0x40200000 size 0x200000 rwc: ok, 0x200000 bytes mapped"))
        #expect(text.contains("line 6: map iova 0x1000 -> pa 0x50000000 size 0x1000 r: EEXIST, 0x0 bytes mapped"))
        #expect(text.contains("line 7: unmap iova 0x900000 size 0x1000: ENOENT, 0x0 bytes unmapped"))
        #expect(text.contains("[   1] 0x0000000040001e43  page 4K pa 0x40001000 AP rw unpriv AttrIndx 0 (normal-NC) SH outer AF nG"))
        #expect(text.contains("… 508 more entries like these, each one 4K further …"))
    }

    @Test func stage2AndDARTRun() throws {
        let s2 = try run(["--format", "arm-lpae-s2", "--granule", "16k", "--ias", "40", "--oas", "40"],
                         ops: "map 0x2000000 0x2000000 0x2000000 rw\n")
        #expect(s2.status == 0 && s2.standardOutput.contains("block 32M pa 0x2000000 HAP rw MemAttr 0x5 (normal-NC)"))
        let dart = try run(["--format", "apple-dart", "--json"], ops: "map 0x4000 0x800000 0x8000 r\n")
        #expect(dart.status == 0)
        #expect(dart.standardOutput.contains(#""granule":16384,"ias":36,"oas":36,"startLevel":1"#))
        // r only: no-write (bit 7) | SP_DIS | valid = 0x83; subpage end 0xfff<<40.
        #expect(dart.standardOutput.contains(#"[1,"0xfff0000800083"],[2,"0xfff0000804083"]"#))
    }

    @Test(arguments: [
        ("map 0x1000 0x2000\n", "ops.txt:1: expected 'map IOVA PADDR SIZE PROT' (4 operands), got 2 operands"),
        ("# ok\nunmap 0x1000\n", "ops.txt:2: expected 'unmap IOVA SIZE' (2 operands), got 1 operand"),
        ("map 0x1000 0x2000 0x1000 rx\n", "ops.txt:1: expected PROT as letters from r w c n m p (read write cache noexec mmio priv), got 'rx'"),
        ("map zz 0x2000 0x1000 r\n", "ops.txt:1: expected IOVA as a number (hex with 0x, or decimal), got 'zz'"),
        ("\n\nmop 1 2 3 r\n", "ops.txt:3: expected 'map IOVA PADDR SIZE PROT' or 'unmap IOVA SIZE', got 'mop'"),
        ("unmap 0x1000 0x\n", "ops.txt:1: expected SIZE as a number (hex with 0x, or decimal), got '0x'"),
        ("map 0x1000 0x2000 99999999999999999999999 r\n", "ops.txt:1: expected SIZE as a number (hex with 0x, or decimal), got '99999999999999999999999'"),
    ])
    func malformedLinesExitWithStatus2(ops: String, message: String) throws {
        let outcome = try run(["--format", "arm-lpae-s1"], ops: ops)
        #expect(outcome.status == 2)
        #expect(outcome.standardOutput.isEmpty)
        #expect(outcome.standardError == message + "\n")
    }

    @Test(arguments: [
        ["--format", "arm-lpae-s3"],
        ["--format", "arm-lpae-s1", "--granule", "8k"],
        ["--format", "arm-lpae-s1", "--granule", "4k", "--ias", "52"],
        ["--format", "arm-lpae-s1", "--oas", "46"],
        ["--format", "arm-lpae-s1", "--ias", "many"],
        ["--format", "apple-dart", "--granule", "4k"],
        ["--format", "apple-dart", "--ias", "40"],
    ])
    func badConfigurationsExitWithStatus2(arguments: [String]) throws {
        let outcome = try run(arguments, ops: "map 0 0 0x1000 r\n")
        #expect(outcome.status == 2)
        #expect(outcome.standardError.hasPrefix("error: "))
        #expect(outcome.standardOutput.isEmpty)
    }

    @Test func unreadableFileExitsWithStatus2() throws {
        let command = try PageTableCommand.parse(["--format", "arm-lpae-s1", "--ops", "/nonexistent/ops.txt"])
        let outcome = command.execute()
        #expect(outcome.status == 2)
        #expect(outcome.standardError == "error: cannot read ops file '/nonexistent/ops.txt': No such file or directory\n")
    }

    @Test func helpExplainsTheOpsFileFormat() {
        let help = IOMMUCommand.helpMessage(for: PageTableCommand.self)
        #expect(help.contains("map IOVA PADDR SIZE PROT"))
        #expect(help.contains("unmap IOVA SIZE"))
        #expect(help.contains("r w c n m p"))
    }
}
