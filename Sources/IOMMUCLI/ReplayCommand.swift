import ArgumentParser
import IOMMUScenario
import IOMMUBase

/// `iommu replay FILE [--json]`: replays a Linux ftrace of iommu/dma events and checks it.
struct ReplayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Replay a Linux ftrace of iommu and dma events and check its invariants.",
        discussion: """
            FILE is the text output of ftrace (/sys/kernel/tracing/trace) with the iommu:* and \
            dma:* events, plain or xz-compressed (recognised by the .xz extension or the xz magic \
            bytes; decompressed with the xz program). Without FILE, or with '-', the trace is read \
            from standard input. Large traces are streamed; on a terminal, a progress line is shown \
            on standard error.

            map and unmap events name no device or domain: each is attributed to the DMA API call \
            next to it in the same execution context (the same task, or the same CPU at the same \
            interrupt level). dma_map_page, dma_map_sg, dma_alloc and dma_unmap_page are traced \
            right after their map/unmap events; dma_free and dma_unmap_sg right before their unmap; \
            maps followed by attach_device_to_domain are a new domain's direct mappings. A domain is \
            a group's attach generation (DMA -> DMA-FQ keeps it; a PCI remove and rescan re-creates \
            the group).

            Checked: every map or unmap can be attributed; no map overlaps a live mapping of its \
            domain; every unmap covers live mappings completely and its unmapped_size equals what \
            was mapped; each DMA call's addresses lie inside the map/unmap attributed to it.

            Output: event counts, groups, domains and violations with their trace line numbers. \
            With --json, exactly one JSON object: \
            {"events": {"<event name>": count, ...}, "violations": [{"line": N, "what": "..."}]}.

            With --dma, the dma_map_page, dma_map_sg and dma_alloc calls are also replayed through \
            IOMMUKit's DMA layer (a device per traced device, strict DMA domains, 4 KiB granule, \
            PCI 32-bit-first), which chooses its own IOVAs; the summary and the JSON \
            ("dma": {"calls": N, "iovaMatches": N}) say how many calls got the kernel's address.

            Exit status: 0 when no invariant is violated, 1 when some are, 2 on bad input \
            (printed as file:line: message).
            """
    )

    @Argument(help: ArgumentHelp("The trace file (plain text or .xz); '-' or nothing for standard input.", valueName: "file"))
    var file: String?

    @Flag(help: "Print one JSON object (event counts and violations) instead of the summary.")
    var json = false

    @Flag(help: "Also replay dma_map_page, dma_map_sg and dma_alloc through IOMMUKit's DMA layer and count the IOVAs it chose like the kernel.")
    var dma = false

    func run() throws {
        var stdout = StandardOutput()
        var stderr = StandardError()
        let status = ReplayCommand.execute(
            file: file, json: json, dma: dma, stdout: &stdout, stderr: &stderr, showProgress: isatty(2) != 0)
        if status != 0 { throw ExitCode(status) }
    }

    /// Replays `file` and writes the report; returns the exit status (0, 1 or 2).
    static func execute(
        file: String?, json: Bool, dma: Bool = false, stdout: inout some TextOutputStream, stderr: inout some TextOutputStream,
        showProgress: Bool
    ) -> Int32 {
        let report: ReplayReport
        var dmaReplay: DMAReplay?
        if dma {
            do throws(IOMMUError) { dmaReplay = try DMAReplay() } catch {
                print("cannot set up the DMA layer: \(error)", to: &stderr)
                return 2
            }
        }
        let observe: (TraceEvent) -> Void = { [dmaReplay] in dmaReplay?.observe($0) }
        let displayName: String
        let compressed: Bool
        do throws(TraceInputError) {
            let reader = try TraceReader(path: file)
            displayName = reader.displayName
            compressed = reader.isCompressed
            if showProgress {
                var progress = ProgressLine()
                report = try IntervalReplayBackend.replay(reader, progressInterval: 1 << 15, progress: { reader, events in
                    progress.update("\(reader.displayName): \(ReplayOutput.grouped(reader.lineNumber)) lines, \(ReplayOutput.grouped(events)) events")
                }, observe: observe).report
                progress.clear()
            } else {
                report = try IntervalReplayBackend.replay(reader, observe: observe).report
            }
        } catch {
            if showProgress { ProgressLine().clear() }
            print(InputError(file: error.file, line: error.line, message: error.message).description, to: &stderr)
            return 2
        }
        if json {
            let sections: [(String, JSON)] = dmaReplay.map { d in
                [("dma", .object([("calls", .int(Int64(d.calls))), ("iovaMatches", .int(Int64(d.iovaMatches)))]))]
            } ?? []
            print(ReplayOutput.json(report, sections: sections).rendered(), to: &stdout)
        } else {
            stdout.write(ReplayOutput.summary(report, name: displayName, compressed: compressed))
            if let d = dmaReplay {
                stdout.write("DMA layer: \(d.calls) calls replayed (dma_map_page, dma_map_sg, dma_alloc), \(d.iovaMatches) at the kernel's IOVA\(d.failures > 0 ? ", \(d.failures) failed" : "")\n")
            }
        }
        return report.violationCount == 0 ? 0 : checkFailedExit.rawValue
    }
}

/// In-process entry points for tests.
package enum ReplayCommandRunner {
    /// Runs `iommu replay` with `arguments` (those after `replay`) in-process, capturing its
    /// output: what tests use instead of spawning the binary.
    package static func run(_ arguments: [String]) -> (exitCode: Int32, stdout: String, stderr: String) {
        var stdout = ""
        var stderr = ""
        do {
            let command = try ReplayCommand.parse(arguments)
            let status = ReplayCommand.execute(
                file: command.file, json: command.json, dma: command.dma, stdout: &stdout, stderr: &stderr, showProgress: false)
            return (status, stdout, stderr)
        } catch {
            return (ReplayCommand.exitCode(for: error).rawValue, "", ReplayCommand.fullMessage(for: error) + "\n")
        }
    }
}

/// A one-line progress display on standard error (a terminal): rewritten at most every 100 ms.
struct ProgressLine {
    var lastUpdate: UInt64 = 0

    mutating func update(_ text: String) {
        let now = ProgressLine.monotonicNanoseconds()
        guard now &- lastUpdate >= 100_000_000 else { return }
        lastUpdate = now
        var stderr = StandardError()
        stderr.write("\r\u{1B}[K" + text)
    }

    func clear() {
        var stderr = StandardError()
        stderr.write("\r\u{1B}[K")
    }

    static func monotonicNanoseconds() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }
}

/// Standard output as a `TextOutputStream` (unbuffered writes of whole reports).
struct StandardOutput: TextOutputStream {
    mutating func write(_ string: String) {
        var text = string
        text.withUTF8 { bytes in
            var done = 0
            while done < bytes.count {
                let written = outputWrite(1, bytes.baseAddress! + done, bytes.count - done)
                if written <= 0 { return }
                done += written
            }
        }
    }
}

#if canImport(Glibc)
import Glibc
private let outputWrite = Glibc.write
#elseif canImport(Darwin)
import Darwin
private let outputWrite = Darwin.write
#endif
