import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Where the DMA layer reads time: flush-queue timeouts, stale-TLB windows, mapping history.
///
/// Injected so tests are deterministic; nothing in `DMAMapping` runs a hidden timer thread — the
/// flush-queue timer fires only from `DMAAPI.tick()`.
public protocol DMAClock: AnyObject, Sendable {
    /// Nanoseconds since an arbitrary origin; never decreases.
    var nanoseconds: Int64 { get }
}

/// A clock that moves only when told to (tests, replays).
public final class ManualDMAClock: DMAClock {
    private let value: Atomic<Int64>
    public init(startingAt start: Int64 = 0) { value = Atomic(start) }
    public var nanoseconds: Int64 { value.load(ordering: .acquiring) }
    /// Moves time forward by `delta` nanoseconds.
    public func advance(nanoseconds delta: Int64) {
        precondition(delta >= 0, "time does not run backwards")
        value.wrappingAdd(delta, ordering: .acquiringAndReleasing)
    }
    /// Moves time forward by `delta` milliseconds.
    public func advance(milliseconds delta: Int64) { advance(nanoseconds: delta * 1_000_000) }
}

/// The host's monotonic clock (`CLOCK_MONOTONIC`).
public final class MonotonicDMAClock: DMAClock {
    public init() {}
    public var nanoseconds: Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }
}
