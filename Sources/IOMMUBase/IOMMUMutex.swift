import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

#if IOMMUKIT_TSAN
/// The lock every IOMMUKit layer uses for shared state.
///
/// In a build for ThreadSanitizer (`-Xswiftc -DIOMMUKIT_TSAN`, as CI's stress run does) it is a
/// `pthread_mutex_t`: `Synchronization.Mutex` on Linux takes its futex fast path inside the
/// (uninstrumented) standard library, so ThreadSanitizer cannot see it order memory and reports
/// every protected access as a race. pthread mutexes are intercepted by ThreadSanitizer. The API is
/// `Mutex`'s, so code does not change between the two builds.
public struct IOMMUMutex<Value: ~Copyable>: ~Copyable, @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let storage: UnsafeMutablePointer<Value>

    public init(_ initialValue: consuming sending Value) {
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        storage = .allocate(capacity: 1)
        storage.initialize(to: initialValue)
    }

    deinit {
        storage.deinitialize(count: 1)
        storage.deallocate()
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    public borrowing func withLock<Result: ~Copyable, E: Error>(
        _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&storage.pointee)
    }

    public borrowing func withLockIfAvailable<Result: ~Copyable, E: Error>(
        _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result? {
        guard pthread_mutex_trylock(mutex) == 0 else { return nil }
        defer { pthread_mutex_unlock(mutex) }
        return try body(&storage.pointee)
    }
}
#else
/// The lock every IOMMUKit layer uses for shared state: `Synchronization.Mutex`.
///
/// Built with `-Xswiftc -DIOMMUKIT_TSAN` it becomes a pthread mutex with the same API, because
/// ThreadSanitizer cannot see `Mutex`'s futex fast path on Linux (it would report every access
/// the lock protects as a race).
public typealias IOMMUMutex<Value: ~Copyable> = Mutex<Value>
#endif
