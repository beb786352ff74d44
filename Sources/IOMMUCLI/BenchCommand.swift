import ArgumentParser
import IOMMUKit

/// `iommu bench`: performance figures for users, measured in this process.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure IOMMUKit's hot paths and compare them with Linux's figures.",
        discussion: """
            Groups: iova (IOVA allocator workloads vs Linux), pgtable (page-table map/unmap, \
            iovaToPhys, hardware walker), translate (device DMA through the SMMU model: TLB hit/miss), \
            vfio (type1 MAP/UNMAP), dma-map (Linux dma_map_benchmark-style map/unmap latency). \
            `iommu bench` alone runs `all`, a quick version of each. Build in release \
            (`swift build -c release`) before trusting the numbers.
            """,
        subcommands: [
            AllBenchCommand.self, IOVABenchCommand.self, PageTableBenchCommand.self, TranslateBenchCommand.self,
            VFIOBenchCommand.self, DMAMapBenchCommand.self,
        ],
        defaultSubcommand: AllBenchCommand.self
    )
}

extension IOVADomain.Policy: ExpressibleByArgument {}

/// `iommu bench iova`: the IOVA workloads of perf-baseline.md.
struct IOVABenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "iova",
        abstract: "IOVA allocator workloads W1, W1b, W2, W3 (rand, rand 48-bit only, fifo) and W4.",
        discussion: """
            Prints ns per alloc+free pair (median of --repeats runs) next to Linux's median on the \
            same kind of machine (perf-baseline.md). W4 reports ns per thread per pair and the \
            aggregate speed-up of two threads over one.

            --json prints one object:
              {"scale": S, "repeats": R, "results": [{"workload": "W1", "policy": "checking",
                "ns_per_pair": N, "samples": [..], "linux_ns_per_pair": L, "ratio_to_linux": N/L,
                ("w4_single_thread_ns_per_pair": T, "w4_aggregate_speedup": X)}, ...]}
            """
    )

    @Option(help: "Allocator policy: checking or linux-compatible (default: both).")
    var policy: IOVADomain.Policy?

    @Option(name: .customLong("workload"), help: "Only these workloads (W1, W1b, W2, W3rand, W3rand48, W3fifo, W4); repeatable.")
    var workloads: [String] = []

    @Option(help: "Multiply the baseline's operation counts (e.g. 0.01 for a quick run).")
    var scale: Double = 1

    @Option(help: "Runs per figure; the median is reported.")
    var repeats: Int = 5

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    func validate() throws {
        guard scale > 0, scale <= 10 else { throw ValidationError("--scale must be in (0, 10]") }
        guard repeats >= 1, repeats <= 100 else { throw ValidationError("--repeats must be in 1...100") }
        for w in workloads where Self.workload(named: w) == nil {
            throw ValidationError("unknown workload '\(w)'; expected W1, W1b, W2, W3rand, W3rand48, W3fifo or W4")
        }
    }

    static func workload(named name: String) -> IOVAWorkload? {
        let key = name.lowercased().filter { $0 != " " && $0 != "-" && $0 != "_" }
        return IOVAWorkload.allCases.first {
            $0.rawValue.lowercased().filter { $0 != " " && $0 != "-" }.replacingOccurrences("48bitonly", "48") == key
        }
    }

    func run() throws {
        let selected = workloads.isEmpty ? IOVAWorkload.allCases : workloads.compactMap(Self.workload(named:))
        let policies = policy.map { [$0] } ?? [.linuxCompatible, .checking]
        var rows: [JSON] = []
        if !json {
            print("IOVA allocator, ns per alloc+free pair (median of \(repeats)), scale \(scale)")
            print(pad("workload", 22) + pad("policy", 18) + pad("IOMMUKit", 12, right: true) + pad("Linux", 12, right: true) + pad("ratio", 9, right: true))
        }
        for workload in selected {
            for policy in policies {
                var samples: [Double] = [], singles: [Double] = []
                for r in 0..<repeats {
                    let result = try runIOVAWorkload(workload, policy: policy, scale: scale, seed: UInt64(r + 1))
                    samples.append(result.nsPerPair)
                    if let s = result.singleThreadNsPerPair { singles.append(s) }
                }
                let median = medianOf(samples)
                var members: [(String, JSON)] = [
                    ("workload", .string(workload.rawValue)), ("policy", .string(policy.rawValue)),
                    ("ns_per_pair", .double(rounded(median))), ("samples", .array(samples.map { .double(rounded($0)) })),
                    ("linux_ns_per_pair", .double(workload.linuxNanoseconds)),
                    ("ratio_to_linux", .double(rounded(median / workload.linuxNanoseconds, 3))),
                ]
                var note = ""
                if !singles.isEmpty {
                    let single = medianOf(singles)
                    let speedup = 2 * single / median
                    members.append(("w4_single_thread_ns_per_pair", .double(rounded(single))))
                    members.append(("w4_aggregate_speedup", .double(rounded(speedup, 2))))
                    note = "  (1 thread \(format(single)) ns; aggregate \(format(speedup, 2))x)"
                }
                rows.append(.object(members))
                if !json {
                    print(pad(workload.rawValue, 22) + pad(policy.rawValue, 18) + pad(format(median), 12, right: true)
                          + pad(format(workload.linuxNanoseconds), 12, right: true)
                          + pad(format(median / workload.linuxNanoseconds, 3), 9, right: true) + note)
                }
            }
        }
        if json {
            print(JSON.object([("scale", .double(scale)), ("repeats", .int(Int64(repeats))), ("results", .array(rows))]).rendered(pretty: true))
        }
    }
}

func medianOf(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}

func rounded(_ value: Double, _ digits: Int = 1) -> Double {
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    return (value * scale).rounded() / scale
}

func format(_ value: Double, _ digits: Int = 1) -> String {
    let r = rounded(value, digits)
    var text = String(r)
    if text.hasSuffix(".0") && digits <= 1 { text.removeLast(2) }
    return text
}

func pad(_ text: String, _ width: Int, right: Bool = false) -> String {
    let fill = String(repeating: " ", count: max(0, width - text.count))
    return right ? fill + text : text + fill
}

extension String {
    func replacingOccurrences(_ target: String, _ replacement: String) -> String {
        guard !target.isEmpty else { return self }
        var out = "", rest = Substring(self)
        while let range = rest.firstRange(of: target) {
            out += rest[rest.startIndex..<range.lowerBound] + replacement
            rest = rest[range.upperBound...]
        }
        return out + rest
    }
}
