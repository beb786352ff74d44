import Synchronization

/// Makes the N-th fallible operation from now fail, as Linux iommufd's `fail_nth` does.
///
/// Every fallible allocation or external call in IOMMUKit asks its injector `shouldFail()` first.
/// Disabled (the default), that is one relaxed atomic load. Armed with `failOn(n)`, the n-th call
/// from then on returns true (once), so a test can walk n = 1, 2, 3, … through an operation until
/// it succeeds and check after each failure that nothing leaked.
public final class FailNth: Sendable {
    /// Calls left before the failing one; 0 = disarmed.
    private let countdown = Atomic<Int>(0)
    private let calls = Atomic<Int>(0)
    private let failures = Atomic<Int>(0)

    public init() {}

    /// Arms the injector so that the `n`-th call of `shouldFail()` from now fails (n >= 1).
    public func failOn(_ n: Int) {
        precondition(n >= 1, "fail_nth counts from 1")
        countdown.store(n, ordering: .sequentiallyConsistent)
    }

    /// Disarms the injector.
    public func disarm() { countdown.store(0, ordering: .sequentiallyConsistent) }

    /// How many fallible calls were made since creation.
    public var callCount: Int { calls.load(ordering: .relaxed) }
    /// How many calls were made to fail.
    public var failureCount: Int { failures.load(ordering: .relaxed) }

    /// True if this call must fail.
    @inlinable
    public func shouldFail() -> Bool {
        recordCall()
        return consumeCountdown()
    }

    /// `shouldFail()` for hot paths (IOVA allocation in the DMA layer): while disarmed it is one
    /// relaxed load and the call is not counted, so concurrent callers share no written cache
    /// line. `callCount` then counts only the calls made while armed.
    @inlinable
    public func shouldFailWhenArmed() -> Bool {
        guard isArmed else { return false }
        recordCall()
        return consumeCountdown()
    }

    @usableFromInline
    var isArmed: Bool { countdown.load(ordering: .relaxed) > 0 }

    @usableFromInline
    func recordCall() { calls.wrappingAdd(1, ordering: .relaxed) }

    @usableFromInline
    func consumeCountdown() -> Bool {
        var current = countdown.load(ordering: .relaxed)
        while current > 0 {
            let (exchanged, original) = countdown.compareExchange(
                expected: current, desired: current - 1, ordering: .relaxed)
            if exchanged {
                if original == 1 {
                    failures.wrappingAdd(1, ordering: .relaxed)
                    return true
                }
                return false
            }
            current = original
        }
        return false
    }
}
