import Synchronization

/// Where `IOMMUWarning`s go. Injected into every layer that can warn; the default discards them.
///
/// Linux prints a WARN backtrace to the kernel log and continues; IOMMUKit hands the caller a
/// value at the faulty call instead, so a test can assert it and a tool can print it.
public protocol WarningSink: Sendable {
    func warn(_ warning: IOMMUWarning)
}

/// Discards every warning.
public struct DiscardingWarningSink: WarningSink {
    @inlinable public init() {}
    @inlinable public func warn(_ warning: IOMMUWarning) {}
}

/// Keeps every warning (up to `capacity`, then the newest `capacity`) and a total count.
///
/// The sink tests and the CLI use: `#expect(sink.warnings == [.splitBlockOnUnmap(…)])`.
public final class RecordingWarningSink: WarningSink {
    private struct State {
        var warnings: [IOMMUWarning] = []
        var total = 0
    }

    private let state = IOMMUMutex(State())
    /// The most warnings kept; older ones are dropped first (the total still counts them).
    public let capacity: Int

    public init(capacity: Int = 10_000) {
        precondition(capacity > 0, "capacity must be positive")
        self.capacity = capacity
    }

    public func warn(_ warning: IOMMUWarning) {
        state.withLock { state in
            state.total += 1
            if state.warnings.count == capacity { state.warnings.removeFirst() }
            state.warnings.append(warning)
        }
    }

    /// The warnings kept, oldest first.
    public var warnings: [IOMMUWarning] { state.withLock { $0.warnings } }
    /// How many warnings were reported in all.
    public var totalCount: Int { state.withLock { $0.total } }

    /// Returns the warnings kept so far and forgets them.
    public func drain() -> [IOMMUWarning] {
        state.withLock { state in
            defer { state.warnings.removeAll() }
            return state.warnings
        }
    }
}

/// Forwards each warning to a closure (for example, to print it).
public struct ClosureWarningSink: WarningSink {
    public let body: @Sendable (IOMMUWarning) -> Void
    public init(_ body: @escaping @Sendable (IOMMUWarning) -> Void) { self.body = body }
    public func warn(_ warning: IOMMUWarning) { body(warning) }
}
