import ArgumentParser

/// A bad input file: printed as `file:line: message` and exit status 2, never a crash.
struct InputError: Error, CustomStringConvertible {
    var file: String
    var line: Int
    var message: String

    var description: String { "\(file):\(line): \(message)" }
}

/// Prints `error` to standard error and exits with status 2 (bad input), as every subcommand
/// does for a malformed file.
func exitForBadInput(_ error: InputError) -> Never {
    var stderr = StandardError()
    print(error.description, to: &stderr)
    IOMMUCommand.exit(withError: ExitCode(2))
}

/// Exit status 1: the input was fine but a check (mismatch, failed expectation) did not hold.
let checkFailedExit = ExitCode(1)

/// Standard error as a `TextOutputStream`.
struct StandardError: TextOutputStream {
    mutating func write(_ string: String) {
        var text = string
        text.withUTF8 { bytes in
            _ = systemWrite(2, bytes.baseAddress, bytes.count)
        }
    }
}

#if canImport(Glibc)
import Glibc
private let systemWrite = Glibc.write
#elseif canImport(Darwin)
import Darwin
private let systemWrite = Darwin.write
#endif
