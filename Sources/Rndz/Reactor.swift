// The overlay's event thread: one epoll over every descriptor an `async` call waits on (the
// sockets, the listeners' readiness descriptors), which resumes the waiting tasks. No thread
// per call, and no polling for cancellation: a cancelled wait is removed and resumed at once.
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// How a ``Reactor`` wait ended.
enum Readiness: Sendable, Equatable {
    /// The descriptor has one of the events asked for, or an error or hang-up (the next
    /// system call reports it). Readiness can be spurious: retry, and wait again on `EAGAIN`.
    case ready
    /// The deadline passed first.
    case timedOut
    /// The waiting task was cancelled.
    case canceled
    /// The descriptor is being closed (``Reactor/close(_:)``).
    case closed
    /// The descriptor cannot be watched (`epoll_ctl` failed, e.g. `EBADF`).
    case failed(RndzError)
}

// epoll(7) and eventfd(2) are not in Swift's Glibc module: their C entry points, looked up
// once. The constants are the kernel's ABI.
private typealias EpollCreate1 = @convention(c) (Int32) -> Int32
private typealias EpollCtl = @convention(c) (Int32, Int32, Int32, UnsafeMutableRawPointer?) -> Int32
private typealias EpollWait = @convention(c) (Int32, UnsafeMutableRawPointer?, Int32, Int32) -> Int32
private typealias EventFD = @convention(c) (UInt32, Int32) -> Int32

func libcFunction<F>(_ name: String, as type: F.Type) -> F {
    guard let p = dlsym(nil, name) else { fatalError("rndz: \(name) is not available") }
    return unsafeBitCast(p, to: type)
}

private let epollIn: UInt32 = 0x001
private let epollOut: UInt32 = 0x004
private let epollErr: UInt32 = 0x008
private let epollHup: UInt32 = 0x010
private let epollCtlAdd: Int32 = 1
private let epollCtlDel: Int32 = 2
private let epollCtlMod: Int32 = 3
private let closeOnExec: Int32 = 0o2_000_000  // EPOLL_CLOEXEC, EFD_CLOEXEC (= O_CLOEXEC)
private let eventNonBlocking: Int32 = 0o4000  // EFD_NONBLOCK (= O_NONBLOCK)

// struct epoll_event { uint32_t events; epoll_data_t data; }: packed on x86-64.
#if arch(x86_64) || arch(i386)
private let epollEventSize = 12
private let epollDataOffset = 4
#else
private let epollEventSize = 16
private let epollDataOffset = 8
#endif

/// The event the reactor's own wake-up descriptor carries (descriptors are never negative).
private let wakeToken = UInt64.max

/// The overlay's single event thread. An `async` I/O call first tries its non-blocking system
/// call; on `EAGAIN` it awaits ``wait(fd:for:until:)``, which registers the descriptor (the
/// union of every waiter's interest, level-triggered) and suspends the task until the
/// descriptor is ready, the deadline passes, the task is cancelled, or the descriptor is
/// closed through ``close(_:)``. Each wait is resumed exactly once, by whoever removes it from
/// the table under the lock: the event thread (ready, timed out), the cancellation handler, or
/// ``close(_:)``.
final class Reactor: Sendable {
    /// The reactor every `async` call uses; its thread starts on first use.
    static let shared = Reactor()

    /// Interest in reading (`EPOLLIN`) and writing (`EPOLLOUT`).
    static let readable = epollIn
    static let writable = epollOut

    private struct Waiter {
        let fd: Int32  // -1: a timer only
        let events: UInt32
        let timed: Bool  // has an entry in the deadline heap
        let continuation: CheckedContinuation<Readiness, Never>
    }

    /// The waits on one descriptor and the interest registered with epoll for them.
    private struct Watched {
        var waiters: [UInt64] = []
        var registered: UInt32 = 0
    }

    private struct State {
        var nextID: UInt64 = 0
        var waiters: [UInt64: Waiter] = [:]
        var watched: [Int32: Watched] = [:]
        /// Deadlines, a binary min-heap; entries of waits already gone are skipped when they
        /// come to the top, and dropped in bulk when they outnumber the live ones.
        var deadlines: [(at: ContinuousClock.Instant, id: UInt64)] = []
        var timedWaiters = 0

        /// Removes wait `id` from the table (not from its descriptor's list).
        mutating func take(_ id: UInt64) -> Waiter? {
            guard let w = waiters.removeValue(forKey: id) else { return nil }
            if w.timed { timedWaiters -= 1 }
            return w
        }
        /// While the event thread sleeps in epoll_wait: until when (nil: no limit). A new
        /// earlier deadline wakes it.
        var sleeping = false
        var sleepUntil: ContinuousClock.Instant?
    }

    private let state = Locked(State())
    private let epfd: Int32
    private let wakeFD: Int32
    private let epollCtl: EpollCtl
    private let epollWait: EpollWait

    private init() {
        let create = libcFunction("epoll_create1", as: EpollCreate1.self)
        let eventfd = libcFunction("eventfd", as: EventFD.self)
        epollCtl = libcFunction("epoll_ctl", as: EpollCtl.self)
        epollWait = libcFunction("epoll_wait", as: EpollWait.self)
        epfd = create(closeOnExec)
        wakeFD = eventfd(0, closeOnExec | eventNonBlocking)
        precondition(epfd >= 0 && wakeFD >= 0, "rndz: cannot create the event loop (errno \(errno))")
        precondition(control(epollCtlAdd, wakeFD, events: epollIn, data: wakeToken) == 0,
                     "rndz: cannot watch the event loop's eventfd (errno \(errno))")
        let failed = spawnThread(named: "rndz-reactor") { [self] in run() }
        precondition(failed == nil, "rndz: cannot start the event thread: \(failed!)")
        Reactor.started.store(true, ordering: .releasing)
    }

    /// Suspends until `fd` has one of `events` (``readable``, ``writable``), `deadline`
    /// passes (nil: no limit), the task is cancelled, or ``close(_:)`` is called for `fd`.
    /// With `fd` -1 it is a plain timer. Several tasks may wait on the same descriptor.
    func wait(fd: Int32, for events: UInt32, until deadline: ContinuousClock.Instant?) async -> Readiness {
        let id = state.withLock { s in
            s.nextID += 1
            return s.nextID
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Readiness, Never>) in
                let (now, wake) = register(id, Waiter(fd: fd, events: events, timed: deadline != nil, continuation: c), deadline)
                if let now { c.resume(returning: now) }
                if wake { signal() }
            }
        } onCancel: {
            resume(id, with: .canceled)
        }
    }

    /// Suspends until `deadline`, or until the task is cancelled (``Readiness/canceled``).
    func sleep(until deadline: ContinuousClock.Instant) async -> Readiness {
        await wait(fd: -1, for: 0, until: deadline)
    }

    /// Whether ``shared`` has started.
    private static let started = Atomic<Bool>(false)

    /// ``close(_:)`` on the shared reactor, if it has started (else nobody can wait on `fd`).
    static func closing(_ fd: Int32) {
        if started.load(ordering: .acquiring) { shared.close(fd) }
    }

    /// Ends every wait on `fd` with ``Readiness/closed`` and stops watching it. Call it
    /// before closing a descriptor that tasks may be waiting on.
    func close(_ fd: Int32) {
        let ended: [CheckedContinuation<Readiness, Never>] = state.withLock { s in
            guard let w = s.watched.removeValue(forKey: fd) else { return [] }
            if w.registered != 0 { _ = control(epollCtlDel, fd, events: 0, data: 0) }
            return w.waiters.compactMap { s.take($0)?.continuation }
        }
        for c in ended { c.resume(returning: .closed) }
    }

    /// The waits pending now, on `fd` or (nil) in all (for tests and diagnostics).
    func pendingWaits(on fd: Int32? = nil) -> Int {
        state.withLock { s in fd.map { s.watched[$0]?.waiters.count ?? 0 } ?? s.waiters.count }
    }

    /// Adds a wait, unless it ends at once: then returns how. Also whether the event thread
    /// must wake (to sleep less). The cancellation check is under the lock: a cancellation
    /// whose handler ran before the wait was added is seen here, a later one finds the wait.
    private func register(_ id: UInt64, _ w: Waiter, _ deadline: ContinuousClock.Instant?)
        -> (Readiness?, Bool)
    {
        state.withLock { s in
            if Task.isCancelled { return (.canceled, false) }
            if let deadline, deadline <= .now { return (.timedOut, false) }
            if w.fd >= 0 {
                var watched = s.watched[w.fd] ?? Watched()
                let want = watched.registered | w.events
                if want != watched.registered {
                    if let e = update(w.fd, from: watched.registered, to: want) { return (.failed(e), false) }
                    watched.registered = want
                }
                watched.waiters.append(id)
                s.watched[w.fd] = watched
            }
            s.waiters[id] = w
            guard let deadline else { return (nil, false) }
            s.timedWaiters += 1
            s.deadlines.pushHeap((deadline, id))
            if s.sleeping, s.sleepUntil.map({ deadline < $0 }) ?? true {
                s.sleepUntil = deadline  // one wake-up is enough
                return (nil, true)
            }
            return (nil, false)
        }
    }

    /// Removes wait `id`, if it is still there, and resumes it with `result`.
    private func resume(_ id: UInt64, with result: Readiness) {
        let c = state.withLock { s in remove(id, from: &s)?.continuation }
        c?.resume(returning: result)
    }

    /// Removes wait `id` from the table and from its descriptor's interest.
    private func remove(_ id: UInt64, from s: inout State) -> Waiter? {
        guard let w = s.take(id) else { return nil }
        if w.fd >= 0, var watched = s.watched[w.fd] {
            watched.waiters.removeAll { $0 == id }
            reconcile(w.fd, &watched, in: &s)
        }
        return w
    }

    /// Narrows a descriptor's registered interest to what its remaining waits want.
    private func reconcile(_ fd: Int32, _ watched: inout Watched, in s: inout State) {
        let want = watched.waiters.reduce(UInt32(0)) { $0 | (s.waiters[$1]?.events ?? 0) }
        if want != watched.registered {
            _ = update(fd, from: watched.registered, to: want)
            watched.registered = want
        }
        if watched.waiters.isEmpty { s.watched[fd] = nil } else { s.watched[fd] = watched }
    }

    /// Changes the interest epoll has for `fd`. A descriptor closed and reused behind our back
    /// has left epoll (MOD fails with ENOENT) or is still there (ADD fails with EEXIST).
    private func update(_ fd: Int32, from old: UInt32, to new: UInt32) -> RndzError? {
        let data = UInt64(UInt32(bitPattern: fd))
        if new == 0 {
            _ = control(epollCtlDel, fd, events: 0, data: 0)
            return nil
        }
        var rc = control(old == 0 ? epollCtlAdd : epollCtlMod, fd, events: new, data: data)
        if rc < 0 && errno == ENOENT { rc = control(epollCtlAdd, fd, events: new, data: data) }
        if rc < 0 && errno == EEXIST { rc = control(epollCtlMod, fd, events: new, data: data) }
        return rc < 0 ? lastErrno() : nil
    }

    private func control(_ op: Int32, _ fd: Int32, events: UInt32, data: UInt64) -> Int32 {
        withUnsafeTemporaryAllocation(byteCount: epollEventSize, alignment: 8) { ev in
            ev.storeBytes(of: events, toByteOffset: 0, as: UInt32.self)
            ev.storeBytes(of: data, toByteOffset: epollDataOffset, as: UInt64.self)
            return epollCtl(epfd, op, fd, ev.baseAddress)
        }
    }

    private func signal() {
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
    }

    /// The event thread.
    private func run() -> Never {
        let capacity = 256
        let events = UnsafeMutableRawPointer.allocate(byteCount: capacity * epollEventSize, alignment: 8)
        while true {
            let timeout: Int32 = state.withLock { s in
                let next = nextDeadline(&s)
                s.sleeping = true
                s.sleepUntil = next
                guard let next else { return -1 }
                return Int32((next - .now).clampedMilliseconds(max: Int64(Int32.max)))
            }
            let n = epollWait(epfd, events, Int32(capacity), timeout)
            let failure = n < 0 ? errno : 0
            let now = ContinuousClock.now
            var ended: [(CheckedContinuation<Readiness, Never>, Readiness)] = []
            state.withLock { s in
                s.sleeping = false
                for i in 0..<max(0, Int(n)) {
                    let base = i * epollEventSize
                    let got = events.loadUnaligned(fromByteOffset: base, as: UInt32.self)
                    let data = events.loadUnaligned(fromByteOffset: base + epollDataOffset, as: UInt64.self)
                    if data == wakeToken { continue }
                    let fd = Int32(truncatingIfNeeded: data)
                    guard var watched = s.watched[fd] else {
                        _ = control(epollCtlDel, fd, events: 0, data: 0)  // stale: nobody waits
                        continue
                    }
                    watched.waiters.removeAll { id in
                        guard let w = s.waiters[id], got & (w.events | epollErr | epollHup) != 0 else {
                            return false
                        }
                        _ = s.take(id)
                        ended.append((w.continuation, .ready))
                        return true
                    }
                    reconcile(fd, &watched, in: &s)
                }
                while let top = s.deadlines.first, top.at <= now {
                    s.deadlines.popHeap()
                    if let w = remove(top.id, from: &s) { ended.append((w.continuation, .timedOut)) }
                }
            }
            if n > 0, failure == 0 { drainWake(events, count: Int(n)) }
            for (c, r) in ended { c.resume(returning: r) }
        }
    }

    /// The earliest deadline of a wait still there. Drops the heap's dead entries when they
    /// outnumber the live ones.
    private func nextDeadline(_ s: inout State) -> ContinuousClock.Instant? {
        while let top = s.deadlines.first, s.waiters[top.id] == nil { s.deadlines.popHeap() }
        if s.deadlines.count > 64 && s.deadlines.count > 2 * s.timedWaiters {
            let live = s.deadlines.filter { s.waiters[$0.id] != nil }
            s.deadlines = []
            for e in live { s.deadlines.pushHeap(e) }
        }
        return s.deadlines.first?.at
    }

    private func drainWake(_ events: UnsafeMutableRawPointer, count: Int) {
        for i in 0..<count
        where events.loadUnaligned(fromByteOffset: i * epollEventSize + epollDataOffset, as: UInt64.self) == wakeToken {
            var v: UInt64 = 0
            _ = read(wakeFD, &v, 8)
        }
    }
}

extension Array where Element == (at: ContinuousClock.Instant, id: UInt64) {
    /// Adds to a binary min-heap ordered by `at`.
    fileprivate mutating func pushHeap(_ e: Element) {
        append(e)
        var i = count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            if self[parent].at <= self[i].at { break }
            swapAt(parent, i)
            i = parent
        }
    }

    /// Removes the smallest element of a binary min-heap.
    fileprivate mutating func popHeap() {
        guard count > 1 else {
            removeAll()
            return
        }
        self[0] = removeLast()
        var i = 0
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < count && self[l].at < self[m].at { m = l }
            if r < count && self[r].at < self[m].at { m = r }
            if m == i { return }
            swapAt(i, m)
            i = m
        }
    }
}
