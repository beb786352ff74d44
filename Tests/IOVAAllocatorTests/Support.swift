#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Reads a whole text file (tests only; no Foundation).
func readTextFile(_ path: String) throws -> String {
    guard let file = fopen(path, "r") else { throw FixtureError(path: path) }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&buffer, 1, buffer.count, file)
        if n <= 0 { break }
        bytes += buffer[0..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}

struct FixtureError: Error { var path: String }

/// IOMMUKIT_STRESS=1 turns on the long runs (10^6 operations).
let stressEnabled: Bool = {
    guard let value = getenv("IOMMUKIT_STRESS") else { return false }
    return String(cString: value) == "1"
}()
