import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A small lock on one atomic word in stable memory: acquire with an exchange (one atomic
/// instruction when uncontended, like Linux's spinlock), spin on plain loads while held, and
/// yield the CPU after a short spin so a preempted holder can run.
///
/// Used for the per-CPU caches, the depots and the tree. Being made of this module's atomics,
/// it is visible to ThreadSanitizer, unlike `Synchronization.Mutex` on Linux.
@inlinable @inline(always)
func spinLock(_ word: UnsafeMutablePointer<Atomic<UInt32>>) {
    if word.pointee.exchange(1, ordering: .acquiring) == 0 { return }
    spinLockSlow(word)
}

@usableFromInline @inline(never)
func spinLockSlow(_ word: UnsafeMutablePointer<Atomic<UInt32>>) {
    var spins = 0
    while true {
        while word.pointee.load(ordering: .relaxed) != 0 {
            spins += 1
            if spins >= 64 {
                sched_yield()
                spins = 0
            }
        }
        if word.pointee.exchange(1, ordering: .acquiring) == 0 { return }
    }
}

@inlinable @inline(always)
func spinUnlock(_ word: UnsafeMutablePointer<Atomic<UInt32>>) {
    word.pointee.store(0, ordering: .releasing)
}
