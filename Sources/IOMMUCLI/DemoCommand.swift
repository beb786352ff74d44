import ArgumentParser
import IOMMUKit

/// `iommu demo`: a narrated tour of the stack.
struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "A short narrated walk through building and walking an IO page table."
    )

    func run() throws {
        print("IOMMUKit demo")
    }
}
