// A value behind a pthread mutex.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A value that threads share, behind a pthread mutex: `withLock` runs a closure with the
/// value while holding it. The overlay uses this rather than `Synchronization.Mutex`:
/// ThreadSanitizer (`make swift-tsan`) did not see that one's hand-offs on this toolchain and
/// reported the accesses it protects as races; pthread mutexes it understands.
final class Locked<Value>: @unchecked Sendable {
    // Unchecked: `value` is only touched with `mutex` held.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    init(_ value: Value) {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        self.value = value
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with the value, the mutex held.
    func withLock<R, E: Error>(_ body: (inout Value) throws(E) -> R) throws(E) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
