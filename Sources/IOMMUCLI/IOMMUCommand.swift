import ArgumentParser

/// The `iommu` tool: the IOMMUKit stack from the command line.
public struct IOMMUCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "iommu",
        abstract: "A userspace model of the Linux IOMMU stack: scenarios, page tables, IOVA allocation, VFIO and more.",
        discussion: """
            Exit status: 0 on success, 1 when a check or expectation failed, 2 on bad input.
            """,
        version: "0.1.0",
        subcommands: [
            DemoCommand.self, RunCommand.self, InspectCommand.self, PageTableCommand.self, IOVACommand.self, ReplayCommand.self,
            BenchCommand.self,
        ]
    )

    public init() {}
}
