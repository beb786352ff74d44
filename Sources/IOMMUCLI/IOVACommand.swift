import ArgumentParser
import IOMMUKit

/// `iommu iova`: the IOVA allocator from the command line.
struct IOVACommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "iova",
        abstract: "IOVA allocator tools.",
        subcommands: [IOVAReplayCommand.self]
    )
}
