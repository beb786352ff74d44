import IOMMUBase
import IOMMUCore
import IOMMUTestSupport
import Testing

/// The injectors the core + hardware sweeps arm: the frame allocator (page tables), the IOMMU
/// driver's own `failNth`, and the core's domain allocation.
enum SweepInjector: String, CaseIterable, CustomTestStringConvertible {
    case frames, driver, core
    var testDescription: String { rawValue }
}

/// A fresh machine for one step of a sweep (`FailNthSweepTests.Fixture`, the DART's).
protocol SweepFixture: AnyObject {
    init() throws
    var machine: TestMachine { get }
    func injector(_ kind: SweepInjector) -> FailNth
    /// Every checker that applies (core, driver, the attached domain's table).
    func expectConsistent(_ label: String, sourceLocation: SourceLocation)
}

extension SweepFixture {
    func disarmAll() { for kind in SweepInjector.allCases { injector(kind).disarm() } }
}

/// iommufd-style `fail_nth` sweep: for n = 1, 2, … a fresh fixture, `setUp`, the n-th call of
/// `injector` armed to fail, `attempt` (true: it succeeded). A failure must leave only the
/// documented effect (`afterFailure`), clean checkers, and the operation must succeed once
/// disarmed; after `tearDown` no frame or domain is left. Stops at the first n where nothing
/// was injected (a failure absorbed by a fallback counts as a success that fired, and the sweep
/// goes on) and returns it; prints `fail_nth sweep: LABEL [injector] … succeeded at n = N`.
@discardableResult
func failNthSweep<F: SweepFixture>(
    _: F.Type, _ injector: SweepInjector, _ label: String, limit: Int = 64,
    setUp: (F) throws -> Void,
    attempt: (F) throws -> Bool,
    afterFailure: (F, Int) throws -> Void,
    tearDown: (F) throws -> Void,
    sourceLocation: SourceLocation = #_sourceLocation
) throws -> Int {
    for n in 1...limit {
        let f = try F()
        try setUp(f)
        f.injector(injector).failOn(n)
        let ok = try attempt(f)
        let fired = f.injector(injector).failureCount > 0
        f.disarmAll()
        let step = "\(label) [\(injector)] n=\(n)"
        if !fired {
            #expect(ok, "\(step): nothing failed, yet the operation failed", sourceLocation: sourceLocation)
            f.expectConsistent("\(step) success", sourceLocation: sourceLocation)
            try tearDown(f)
            #expect(f.machine.frames.framesInUse == 0, "\(step) success path leaked frames", sourceLocation: sourceLocation)
            print("fail_nth sweep: \(label) [\(injector)] failed for n = 1..<\(n), succeeded at n = \(n)")
            return n
        }
        if !ok {
            try afterFailure(f, n)
            f.expectConsistent(step, sourceLocation: sourceLocation)
            #expect(try attempt(f), "\(step): retry after the failure", sourceLocation: sourceLocation)
            f.expectConsistent("\(step) after retry", sourceLocation: sourceLocation)
        }
        try tearDown(f)
        #expect(f.machine.frames.framesInUse == 0, "\(step) leaked \(f.machine.frames.framesInUse) frames", sourceLocation: sourceLocation)
        #expect(f.machine.core.liveDomainCount == 0, "\(step) leaked domains", sourceLocation: sourceLocation)
        f.expectConsistent("\(step) after teardown", sourceLocation: sourceLocation)
    }
    Issue.record("\(label) [\(injector)] did not succeed within \(limit) failures", sourceLocation: sourceLocation)
    return limit
}
