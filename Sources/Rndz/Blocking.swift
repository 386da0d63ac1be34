// Where blocking work runs (a small bounded pool; the event thread of Reactor.swift for
// socket waits), and datagram I/O on a socket, blocking and async.
internal import CRndz

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

private final class ThreadBody {
    let run: @Sendable () -> Void
    init(_ run: @escaping @Sendable () -> Void) { self.run = run }
}

/// Runs `body` on a new detached thread, named `name` (at most 15 bytes; seen in
/// /proc/<pid>/task/*/comm and debuggers) if given. Returns nil, or the error if no thread
/// could start.
func spawnThread(named name: String? = nil, _ body: @escaping @Sendable () -> Void) -> RndzError? {
    let box = Unmanaged.passRetained(ThreadBody {
        if let name { setThreadName(name) }
        body()
    }).toOpaque()
    var attr = pthread_attr_t()
    pthread_attr_init(&attr)
    defer { pthread_attr_destroy(&attr) }
    pthread_attr_setdetachstate(&attr, Int32(PTHREAD_CREATE_DETACHED))
    var tid = pthread_t()
    let rc = pthread_create(&tid, &attr, { raw in
        Unmanaged<ThreadBody>.fromOpaque(raw!).takeRetainedValue().run()
        return nil
    }, box)
    if rc != 0 {
        Unmanaged<ThreadBody>.fromOpaque(box).release()
        return RndzError(errno: rc)
    }
    return nil
}

private typealias SetName = @convention(c) (pthread_t, UnsafePointer<CChar>) -> Int32
/// `pthread_setname_np`, not in Swift's Glibc module.
nonisolated(unsafe) private let pthreadSetName = libcFunction("pthread_setname_np", as: SetName.self)

/// Names the calling thread.
private func setThreadName(_ name: String) { _ = pthreadSetName(pthread_self(), name) }

/// A few threads for the C calls that truly block (the connects, name resolution): at most
/// `max(4, cores)`, started as needed and kept; more work waits in a queue. Waits on
/// sockets and listeners never come here (they go through ``Reactor``), so they cannot
/// starve a connect.
final class BlockingPool: Sendable {
    static let shared = BlockingPool(limit: max(4, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))))

    private final class Job: Sendable {
        let run: @Sendable () -> Void
        init(_ run: @escaping @Sendable () -> Void) { self.run = run }
    }

    private struct State {
        var queue: [Job] = []
        var head = 0  // queue[head...] waits
        var threads = 0
        var idle = 0
        var queued: Int { queue.count - head }
    }

    private let limit: Int
    private let state = Locked(State())
    /// One token per queued job. (sem_post and sem_wait are thread-safe.)
    nonisolated(unsafe) private let tokens: UnsafeMutablePointer<sem_t>

    private init(limit: Int) {
        self.limit = limit
        tokens = .allocate(capacity: 1)
        sem_init(tokens, 0, 0)
    }

    /// Queues `work`. Fails only if no thread could be started and none runs.
    func submit(_ work: @escaping @Sendable () -> Void) -> RndzError? {
        let job = Job(work)
        let start = state.withLock { s in
            s.queue.append(job)
            guard s.queued > s.idle, s.threads < limit else { return false }
            s.threads += 1
            return true
        }
        sem_post(tokens)
        guard start, let failed = spawnThread(named: "rndz-blocking", { [self] in worker() }) else {
            return nil
        }
        // Leave the job to the threads there are; with none, take it back.
        let orphan = state.withLock { s in
            s.threads -= 1
            guard s.threads == 0, let i = s.queue[s.head...].firstIndex(where: { $0 === job }) else {
                return false
            }
            s.queue.remove(at: i)
            return true
        }
        if orphan {
            sem_wait(tokens)
            return failed
        }
        return nil
    }

    private func worker() {
        while true {
            state.withLock { $0.idle += 1 }
            while sem_wait(tokens) != 0 {}  // EINTR
            let job = state.withLock { s in
                s.idle -= 1
                let j = s.queue[s.head]
                s.head += 1
                if s.head > 64 && s.head * 2 > s.queue.count {
                    s.queue.removeFirst(s.head)
                    s.head = 0
                }
                return j
            }
            job.run()
        }
    }
}

/// Runs blocking `work` on the ``BlockingPool`` and suspends until it finishes, so the
/// cooperative pool is never blocked. On task cancellation `onCancel` runs (e.g. to stop
/// what `work` waits for); the work decides how fast it ends.
func offPool<T: Sendable>(
    onCancel: @escaping @Sendable () -> Void = {},
    _ work: @escaping @Sendable () throws(RndzError) -> T
) async throws(RndzError) -> T {
    try await runBlocking(onCancel: onCancel, work) { BlockingPool.shared.submit($0) }
}

/// The same on a thread of its own, for work that lasts as long as it is not stopped (a
/// server's run): it must not hold one of the pool's few threads.
func onOwnThread<T: Sendable>(
    onCancel: @escaping @Sendable () -> Void = {},
    _ work: @escaping @Sendable () throws(RndzError) -> T
) async throws(RndzError) -> T {
    try await runBlocking(onCancel: onCancel, work) { spawnThread(named: "rndz-run", $0) }
}

private func runBlocking<T: Sendable>(
    onCancel: @escaping @Sendable () -> Void,
    _ work: @escaping @Sendable () throws(RndzError) -> T,
    start: (@escaping @Sendable () -> Void) -> RndzError?
) async throws(RndzError) -> T {
    let result = await withTaskCancellationHandler {
        await withCheckedContinuation { (cont: CheckedContinuation<Result<T, RndzError>, Never>) in
            let failed = start {
                cont.resume(returning: Result { () throws(RndzError) -> T in try work() })
            }
            if let failed { cont.resume(returning: .failure(failed)) }
        }
    } onCancel: {
        onCancel()
    }
    return try result.get()
}

extension Duration {
    /// Whole milliseconds, rounded up, clamped to `0...max`.
    func clampedMilliseconds(max: Int64 = Int64(UInt32.max)) -> Int64 {
        let (s, atto) = components
        if s < 0 || (s == 0 && atto <= 0) { return 0 }
        if s >= max / 1000 { return max }
        let ms = s * 1000 + (atto + 999_999_999_999_999) / 1_000_000_000_000_000
        return Swift.min(ms, max)
    }
}

/// What a socket call waits for; the same bits in poll(2) and epoll(7).
enum Interest: UInt32 {
    case read = 0x001  // POLLIN, EPOLLIN
    case write = 0x004  // POLLOUT, EPOLLOUT
}

/// Waits until `fd` is ready for `interest`, blocking the thread. Returns false when
/// `deadline` passed first.
func waitFD(_ fd: Int32, _ interest: Interest, deadline: ContinuousClock.Instant?) throws(RndzError) -> Bool {
    while true {
        var ms: Int32 = -1
        if let deadline {
            let left = deadline - ContinuousClock.now
            if left <= .zero { return false }
            ms = Int32(left.clampedMilliseconds(max: Int64(Int32.max)))
        }
        var p = pollfd(fd: fd, events: Int16(interest.rawValue), revents: 0)
        let n = poll(&p, 1, ms)
        if n < 0 {
            if errno == EINTR { continue }
            throw lastErrno()
        }
        if n > 0 {
            if p.revents & Int16(POLLNVAL) != 0 { throw RndzError(errno: EBADF) }
            return true  // readable, writable, or an error the next call reports
        }
    }
}

/// Runs the non-blocking socket call `attempt` until it does not return nil ("would
/// block"), waiting for `interest` in between with poll(2). Returns nil when `deadline`
/// passed first.
func blockingIO<T>(
    _ fd: Int32, _ interest: Interest, deadline: ContinuousClock.Instant?,
    _ attempt: () throws(RndzError) -> T?
) throws(RndzError) -> T? {
    while true {
        if let v = try attempt() { return v }
        guard try waitFD(fd, interest, deadline: deadline) else { return nil }
    }
}

/// The same without a thread: waits through the ``Reactor``.
///
/// - Throws: ``RndzError/canceled`` when the task is cancelled (at once, also while
///   waiting), ``RndzError/closed`` when the descriptor is closed meanwhile.
func asyncIO<T>(
    _ fd: Int32, _ interest: Interest, deadline: ContinuousClock.Instant?,
    _ attempt: () throws(RndzError) -> T?
) async throws(RndzError) -> T? {
    while true {
        if Task.isCancelled { throw .canceled }
        if let v = try attempt() { return v }
        switch await Reactor.shared.wait(fd: fd, for: interest.rawValue, until: deadline) {
        case .ready: continue
        case .timedOut: return nil
        case .canceled: throw .canceled
        case .closed: throw .closed
        case .failed(let e): throw e
        }
    }
}

/// How often a wait with no descriptor to watch asks C again: a listener's registration,
/// which has no readiness descriptor.
let listenerPollInterval = Duration.milliseconds(50)

/// Waits for a listener's queue without a thread: `take` (the C call with timeout 0; nil
/// when it timed out) until it gives something, waiting in between for `readyFD` (the
/// listener's readiness descriptor: `rndz_*_listener_ready_fd`) to be readable, or, with no
/// descriptor, for the next tick of ``listenerPollInterval``. Returns nil when `deadline`
/// passed.
///
/// - Throws: ``RndzError/canceled`` when the task is cancelled (at once).
func awaitListener<T>(
    readyFD: Int32?, deadline: ContinuousClock.Instant?, _ take: () throws(RndzError) -> T?
) async throws(RndzError) -> T? {
    if let readyFD { return try await asyncIO(readyFD, .read, deadline: deadline, take) }
    while true {
        if Task.isCancelled { throw .canceled }
        if let v = try take() { return v }
        let tick = ContinuousClock.now + listenerPollInterval
        if let deadline, deadline <= tick {
            // The last slice: one more look once it is over.
            if await Reactor.shared.sleep(until: deadline) == .canceled { throw .canceled }
            return try take()
        }
        if await Reactor.shared.sleep(until: tick) == .canceled { throw .canceled }
    }
}

/// A listener's `wait_registered` without a thread: `poll` is the C call with timeout 0.
///
/// - Throws: ``RndzError/timedOut`` after `deadline`, ``RndzError/canceled`` when the task is
///   cancelled (at once), or what C reports (``RndzError/closed``).
func awaitRegistered(
    deadline: ContinuousClock.Instant, _ poll: () -> Int32
) async throws(RndzError) {
    let done: Void? = try await awaitListener(readyFD: nil, deadline: deadline) { () throws(RndzError) -> Void? in
        let rc = poll()
        if rc == RNDZ_E_TIMEDOUT.rawValue { return nil }
        _ = try check(rc)
        return ()
    }
    if done == nil { throw .timedOut }
}

/// What a listener hands out, as it does: ``TCPListener/connections``,
/// ``UDPListener/peers``. The sequence ends (for good) once the listener is closed or the
/// consuming task is cancelled; other errors are thrown, typed.
public struct ListenerSequence<Element: Sendable>: AsyncSequence, Sendable {
    public typealias Failure = RndzError

    /// Waits for the next element (nil: none will come).
    let produce: @Sendable () async throws(RndzError) -> Element?

    public func makeAsyncIterator() -> Iterator { Iterator(produce: produce) }

    /// Iterates a ``ListenerSequence``.
    public struct Iterator: AsyncIteratorProtocol, Sendable {
        public typealias Failure = RndzError

        let produce: @Sendable () async throws(RndzError) -> Element?
        var finished = false

        /// The next element; nil once the listener is closed or the task cancelled.
        public mutating func next() async throws(RndzError) -> Element? {
            if finished { return nil }
            do throws(RndzError) {
                if let v = try await produce() { return v }
                finished = true
                return nil
            } catch .closed {
                finished = true
                return nil
            } catch .canceled {
                finished = true
                return nil
            } catch {
                finished = true
                throw error
            }
        }

        /// The same; the isolation does not matter (the wait is on the overlay's event thread).
        public mutating func next(isolation actor: isolated (any Actor)?) async throws(RndzError) -> Element? {
            try await next()
        }
    }
}

/// A datagram received on an unconnected socket: its bytes and who sent it.
public struct Datagram: Hashable, Sendable {
    /// The payload.
    public var bytes: [UInt8]
    /// The sender (IPv4 senders in IPv4 form, even on a dual-stack IPv6 socket).
    public var sender: SocketAddress

    /// The largest UDP payload: the default receive buffer size.
    public static let maxSize = 65_535

    /// A datagram with these bytes from `sender`.
    public init(bytes: [UInt8], sender: SocketAddress) {
        self.bytes = bytes
        self.sender = sender
    }
}

private let recvFlags = Int32(MSG_DONTWAIT)
private let sendFlags = Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL)

/// One `recvfrom` that does not wait: nil when nothing is queued. Datagrams for which
/// `skip` returns true are dropped, and the next one is read.
func receiveDatagramNow(
    fd: Int32, into buf: inout [UInt8], skip: ((_ bytes: ArraySlice<UInt8>) -> Bool)?
) throws(RndzError) -> Datagram? {
    while true {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let n = buf.withUnsafeMutableBytes { b in
            withUnsafeMutablePointer(to: &ss) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    recvfrom(fd, b.baseAddress, b.count, recvFlags, $0, &len)
                }
            }
        }
        if n < 0 {
            if errno == EINTR { continue }
            if errno == EAGAIN || errno == EWOULDBLOCK { return nil }
            throw lastErrno()
        }
        if let skip, skip(buf[..<n]) { continue }
        return Datagram(bytes: Array(buf[..<n]), sender: try SocketAddress(ss).unmapped)
    }
}

/// Receives one datagram, waiting at most `timeout` (nil: no limit). Returns nil on timeout.
/// Datagrams for which `skip` returns true are dropped, and the wait goes on.
func receiveDatagram(
    fd: Int32, maxLength: Int, timeout: Duration?,
    skip: ((_ bytes: ArraySlice<UInt8>) -> Bool)? = nil
) throws(RndzError) -> Datagram? {
    precondition(maxLength > 0, "maxLength must be positive")
    var buf = [UInt8](repeating: 0, count: maxLength)
    return try blockingIO(fd, .read, deadline: timeout.map { .now + $0 }) { () throws(RndzError) in
        try receiveDatagramNow(fd: fd, into: &buf, skip: skip)
    }
}

/// The same, waiting through the ``Reactor``.
func receiveDatagram(
    fd: Int32, maxLength: Int, timeout: Duration?,
    skip: ((_ bytes: ArraySlice<UInt8>) -> Bool)? = nil
) async throws(RndzError) -> Datagram? {
    precondition(maxLength > 0, "maxLength must be positive")
    var buf = [UInt8](repeating: 0, count: maxLength)
    return try await asyncIO(fd, .read, deadline: timeout.map { .now + $0 }) { () throws(RndzError) in
        try receiveDatagramNow(fd: fd, into: &buf, skip: skip)
    }
}

/// One `send` (to `address`, or on a connected socket when nil) that does not wait: the
/// number of bytes sent, or nil when the socket buffer is full.
func sendNow(fd: Int32, bytes: UnsafeRawBufferPointer, to address: SocketAddress?) throws(RndzError) -> Int? {
    while true {
        let n: Int
        if let address {
            n = address.withSockAddr { sa, len in
                sendto(fd, bytes.baseAddress, bytes.count, sendFlags, sa, len)
            }
        } else {
            n = send(fd, bytes.baseAddress, bytes.count, sendFlags)
        }
        if n >= 0 { return n }
        if errno == EINTR { continue }
        if errno == EAGAIN || errno == EWOULDBLOCK { return nil }
        throw lastErrno()
    }
}

/// Sends one datagram (to `address`, or on a connected socket when nil), waiting for buffer
/// space if needed. Returns the number of bytes sent.
func sendDatagram(fd: Int32, bytes: UnsafeRawBufferPointer, to address: SocketAddress?) throws(RndzError) -> Int {
    try blockingIO(fd, .write, deadline: nil) { () throws(RndzError) in
        try sendNow(fd: fd, bytes: bytes, to: address)
    }!  // no deadline: never nil
}

/// The same, waiting through the ``Reactor``.
func sendDatagram(fd: Int32, bytes: [UInt8], to address: SocketAddress?) async throws(RndzError) -> Int {
    try await asyncIO(fd, .write, deadline: nil) { () throws(RndzError) in
        try withBytes(bytes) { (b) throws(RndzError) in try sendNow(fd: fd, bytes: b, to: address) }
    }!  // no deadline: never nil
}

/// Runs `body`; when it throws, runs `cleanUp` first (e.g. closes or destroys what `body`
/// looked at).
func cleaningUp<R>(_ cleanUp: () -> Void, _ body: () throws(RndzError) -> R) throws(RndzError) -> R {
    do throws(RndzError) {
        return try body()
    } catch {
        cleanUp()
        throw error
    }
}

/// The address a C `*_local_addr` call (`get`) reports.
func cLocalAddress(_ get: (UnsafeMutablePointer<sockaddr_storage>) -> Int32) throws(RndzError) -> SocketAddress {
    var ss = sockaddr_storage()
    _ = try check(get(&ss))
    return try SocketAddress(ss)
}

/// The local address of a socket.
func socketLocalAddress(_ fd: Int32) throws(RndzError) -> SocketAddress {
    var ss = sockaddr_storage()
    var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
    let rc = withUnsafeMutablePointer(to: &ss) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    if rc < 0 { throw lastErrno() }
    return try SocketAddress(ss)
}

/// Runs `body` over the bytes of `array`, keeping the typed error.
func withBytes<R>(
    _ array: [UInt8], _ body: (UnsafeRawBufferPointer) throws(RndzError) -> R
) throws(RndzError) -> R {
    let r = array.withUnsafeBytes { b in Result { () throws(RndzError) -> R in try body(b) } }
    return try r.get()
}
