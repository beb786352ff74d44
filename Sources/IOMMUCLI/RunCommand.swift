import ArgumentParser
import IOMMUKit
import IOMMUScenario

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Reads a whole file as bytes (the scenario parser checks text-ness itself).
func readFileBytes(_ path: String) -> Result<[UInt8], FileReadError> {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { return .failure(FileReadError(message: String(cString: strerror(errno)))) }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65_536)
    while true {
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count < 0 { return .failure(FileReadError(message: String(cString: strerror(errno)))) }
        if count == 0 { break }
        bytes.append(contentsOf: buffer[0..<count])
    }
    return .success(bytes)
}

/// Loads and parses a scenario file; `file:line: message` on failure.
func loadScenario(_ path: String) -> Result<Scenario, InputError> {
    switch readFileBytes(path) {
    case .failure(let e): return .failure(InputError(file: path, line: 1, message: "cannot read scenario: \(e.message)"))
    case .success(let bytes):
        do throws(ScenarioInputError) {
            return .success(try Scenario.parse(bytes: bytes))
        } catch {
            return .failure(InputError(file: path, line: error.line, message: error.message))
        }
    }
}

/// `iommu run FILE`: execute a scenario and narrate what happened.
struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a scenario file (platform + workload) and print a narrated report.",
        discussion: """
            A scenario is a YAML file with a 'platform' (CPU page size, IOMMUs of kind smmu or \
            dart, devices with stream IDs, PCI topology, trust, reserved regions and DMA masks, \
            default domain policy strict/lazy/identity) and a 'workload' of steps (register an \
            IOMMU, add/remove devices, bind/unbind drivers, map/unmap, IOVA alloc/free, device \
            DMA reads and writes, VFIO calls, clock advances) with 'expect' checks. The schema is \
            in docs/scenarios.md; examples/ has one scenario per seed thread.

            The report lists, per step, the trace events, kernel-style warnings, IOMMU faults \
            and each expectation (✓ held, ✗ failed), then the final state.

            Exit status: 0 when every expectation held, 1 when one failed, 2 for a bad file \
            (printed as file:line: what was expected).
            """
    )

    @Argument(help: "The scenario file (YAML).")
    var file: String

    @Option(help: "Seed, recorded in the report (the current step set has no random choices; same file, same report).")
    var seed: UInt64 = 1

    @Flag(help: "Print the report as JSON.")
    var json = false

    func run() throws {
        let outcome = execute()
        if !outcome.standardOutput.isEmpty { print(outcome.standardOutput, terminator: "") }
        if !outcome.standardError.isEmpty {
            var stderr = StandardError()
            print(outcome.standardError, terminator: "", to: &stderr)
        }
        if outcome.status != 0 { throw ExitCode(outcome.status) }
    }

    /// In-process entry point for tests.
    func execute() -> PageTableCommand.Outcome {
        switch loadScenario(file) {
        case .failure(let e): return .init(standardError: e.description + "\n", status: 2)
        case .success(let scenario):
            let runner: ScenarioRunner
            do throws(IOMMUError) {
                runner = try ScenarioRunner(scenario: scenario, seed: seed)
            } catch {
                return .init(standardError: "\(file):1: cannot build the platform: \(error)\n", status: 2)
            }
            runner.run()
            let report = runner.report
            let text = json ? Self.json(report).rendered(pretty: true) + "\n" : report.text
            return .init(standardOutput: text, status: report.passed ? 0 : 1)
        }
    }

    static func json(_ report: ScenarioReport) -> JSON {
        .object([
            ("scenario", .string(report.name)), ("seed", .uint(report.seed)), ("passed", .bool(report.passed)),
            ("expectations_held", .int(Int64(report.heldExpectations))), ("expectations_failed", .int(Int64(report.failedExpectations))),
            ("boot", .array(report.boot.map(JSON.string))),
            ("steps", .array(report.steps.map { s in
                .object([
                    ("index", .int(Int64(s.index))), ("line", .int(Int64(s.line))), ("action", .string(s.action)),
                    ("result", .string(s.result)), ("events", .array(s.events.map(JSON.string))),
                    ("warnings", .array(s.warnings.map(JSON.string))), ("faults", .array(s.faults.map(JSON.string))),
                    ("held", .array(s.checks.map(JSON.string))), ("failed", .array(s.failures.map(JSON.string))),
                ])
            })),
            ("final_state", .array(report.finalState.map(JSON.string))),
        ])
    }
}
