import IOMMUBase

/// Helpers shared by every IOMMUKit test target.
public enum TestSupport {
    /// The repository's `Tests/Fixtures` folder, found from this file's own path, so fixtures
    /// load without Foundation bundles and from any working directory.
    public static func fixturesDirectory(filePath: String = #filePath) -> String {
        // …/Tests/IOMMUTestSupport/TestSupport.swift → …/Tests/Fixtures
        var parts = filePath.split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(2)
        return parts.joined(separator: "/") + "/Fixtures"
    }

    /// Reads a fixture file as text (`relativePath` under `Tests/Fixtures`).
    public static func fixture(_ relativePath: String) throws -> String {
        let path = fixturesDirectory() + "/" + relativePath
        return try readTextFile(path)
    }

    /// Reads a whole text file with the C library (no Foundation).
    public static func readTextFile(_ path: String) throws -> String {
        guard let file = fopen(path, "rb") else { throw FixtureError(path: path) }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = fread(&buffer, 1, buffer.count, file)
            if count <= 0 { break }
            bytes += buffer[0..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Seeds for property tests: a few fixed ones, plus `IOMMUKIT_SEED` if set (to reproduce a
    /// failure reported by CI).
    public static var propertySeeds: [UInt64] {
        var seeds: [UInt64] = [1, 2, 3, 0xC0FFEE]
        if let text = getenv("IOMMUKIT_SEED"), let seed = UInt64(String(cString: text)) { seeds.append(seed) }
        return seeds
    }

    /// True when the long stress variants should run (`IOMMUKIT_STRESS=1`).
    public static var stressEnabled: Bool {
        guard let text = getenv("IOMMUKIT_STRESS") else { return false }
        return String(cString: text) == "1"
    }
}

public struct FixtureError: Error, CustomStringConvertible {
    public let path: String
    public var description: String { "cannot read fixture \(path)" }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
