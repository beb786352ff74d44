#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Runs `body(index)` for `index` in `0..<count`, each on its own new POSIX thread, all at once,
/// and returns when every thread has finished.
///
/// For what Linux does on several CPUs at the same time (DMA map/unmap, IOVA fast paths, device
/// DMA racing an unmap): real threads that the scheduler runs in parallel, not tasks of Swift's
/// cooperative pool (which may run them one after the other). Used by the stress tests, the soak
/// and the multi-threaded benchmarks.
public func runOnThreads(_ count: Int, _ body: @escaping @Sendable (_ index: Int) -> Void) {
    final class Start: @unchecked Sendable {
        let body: @Sendable (Int) -> Void
        let index: Int
        init(_ body: @escaping @Sendable (Int) -> Void, _ index: Int) {
            self.body = body
            self.index = index
        }
    }
    var threads: [pthread_t] = []
    threads.reserveCapacity(count)
    for index in 0..<count {
        #if canImport(Glibc)
        var thread = pthread_t()
        #else
        var thread: pthread_t?
        #endif
        let context = Unmanaged.passRetained(Start(body, index)).toOpaque()
        let rc = pthread_create(&thread, nil, { raw in
            let start = Unmanaged<Start>.fromOpaque(raw!).takeRetainedValue()
            start.body(start.index)
            return nil
        }, context)
        precondition(rc == 0, "pthread_create failed: \(rc)")
        #if canImport(Glibc)
        threads.append(thread)
        #else
        threads.append(thread!)
        #endif
    }
    for thread in threads { pthread_join(thread, nil) }
}
