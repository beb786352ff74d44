import IOMMUKit
import IOMMUScenario

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Reads a whole file as UTF-8 without Foundation; on failure, the C error text.
func readTextFile(_ path: String) -> Result<String, FileReadError> {
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
    guard let text = String(validating: bytes, as: UTF8.self) else {
        return .failure(FileReadError(message: "not UTF-8 text"))
    }
    return .success(text)
}

struct FileReadError: Error {
    var message: String
}
