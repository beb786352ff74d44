import ArgumentParser
import Foundation
import Testing
@testable import IOMMUCLI

@Suite("iommu bench --soak")
struct SoakBenchCommandTests {
    @Test func durationsParseToNanoseconds() {
        #expect(SoakBench.parseDuration("30s") == 30_000_000_000)
        #expect(SoakBench.parseDuration("5m") == 300_000_000_000)
        #expect(SoakBench.parseDuration("1h") == 3_600_000_000_000)
        #expect(SoakBench.parseDuration("250ms") == 250_000_000)
        #expect(SoakBench.parseDuration("168h") == 168 * 3_600_000_000_000)
        for bad in ["", "30", "0s", "-1s", "1.5s", "s", "10x", "169h", "1 s", "１s", "99999999999999999999s"] {
            #expect(SoakBench.parseDuration(bad) == nil, "\(bad)")
        }
    }

    @Test func theIssueSpellingReachesTheSoak() throws {
        let command = try IOMMUCommand.parseAsRoot(["bench", "--soak", "30s", "--seed", "5", "--json"])
        let bench = try #require(command as? AllBenchCommand)
        #expect(bench.soak == "30s" && bench.seed == 5 && bench.json)
        let plain = try #require(try IOMMUCommand.parseAsRoot(["bench"]) as? AllBenchCommand)
        #expect(plain.soak == nil)
    }

    @Test func aBadDurationExitsWithStatusTwo() {
        for bad in ["30", "0s", "forever"] {
            do {
                _ = try IOMMUCommand.parseAsRoot(["bench", "--soak", bad])
                Issue.record("--soak \(bad) was accepted")
            } catch {
                #expect(IOMMUCommand.exitCode(for: error).rawValue == 2, "\(bad): \(error)")
            }
        }
    }

    @Test func shortSoakPrintsOneJSONObjectWithNoViolation() throws {
        var out = ""
        let status = SoakBench.run(durationNanoseconds: 150_000_000, seed: 2, json: true, stdout: &out)
        #expect(status == 0)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        #expect(object["violation_count"] as? Int == 0)
        #expect((object["violations"] as? [Any])?.isEmpty == true)
        #expect((object["warnings"] as? [String: Any])?.isEmpty == true)
        let operations = try #require(object["operations"] as? [String: Int])
        #expect(operations.count == 22 && operations.values.allSatisfy { $0 > 0 })
        #expect(operations.values.reduce(0, +) == object["total_operations"] as? Int)
        #expect((object["checker_runs"] as? Int ?? 0) >= 2)
        #expect((object["elapsed_ns"] as? Int ?? 0) >= 150_000_000)
    }
}
