/// A bad trace input: which file, which line, and what was expected there.
///
/// `line` is 1-based; 0 means the file as a whole (it could not be opened or read).
public struct TraceInputError: Error, Hashable, Sendable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var message: String

    public init(file: String, line: Int, message: String) {
        self.file = file
        self.line = line
        self.message = message
    }

    /// `file:line: message`, as every IOMMUKit tool prints bad input.
    public var description: String { "\(file):\(line): \(message)" }
}
