// Running blocking C calls off Swift's cooperative thread pool, and datagram I/O on a socket.
internal import CRndz
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Set when the task that waits for a blocking call is cancelled. Blocking loops that wait in
/// short slices check it between slices.
final class CancelFlag: Sendable {
    private let state = Atomic<Bool>(false)
    var isCancelled: Bool { state.load(ordering: .acquiring) }
    func cancel() { state.store(true, ordering: .releasing) }
}

private final class ThreadBody {
    let run: @Sendable () -> Void
    init(_ run: @escaping @Sendable () -> Void) { self.run = run }
}

/// Runs `body` on a new detached thread. Returns nil, or the error if no thread could start.
private func spawnThread(_ body: @escaping @Sendable () -> Void) -> RndzError? {
    let box = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
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

/// Runs a blocking call on a dedicated thread and suspends until it finishes, so the
/// cooperative pool is never blocked. On task cancellation `flag` is set and `onCancel` runs
/// (e.g. to stop a server); the work decides how fast it notices.
func offPool<T: Sendable>(
    onCancel: @escaping @Sendable () -> Void = {},
    _ work: @escaping @Sendable (_ flag: CancelFlag) throws(RndzError) -> T
) async throws(RndzError) -> T {
    let flag = CancelFlag()
    let result = await withTaskCancellationHandler {
        await withCheckedContinuation { (cont: CheckedContinuation<Result<T, RndzError>, Never>) in
            let failed = spawnThread {
                cont.resume(returning: Result { () throws(RndzError) -> T in try work(flag) })
            }
            if let failed { cont.resume(returning: .failure(failed)) }
        }
    } onCancel: {
        flag.cancel()
        onCancel()
    }
    return try result.get()
}

/// Same, for work that does not watch for cancellation.
func offPool<T: Sendable>(
    _ work: @escaping @Sendable () throws(RndzError) -> T
) async throws(RndzError) -> T {
    try await offPool(onCancel: {}) { (_: CancelFlag) throws(RndzError) -> T in try work() }
}

/// How long blocking loops sleep between checks of a ``CancelFlag``.
let cancelSliceMs: Int32 = 50

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

/// Waits until `fd` has one of `events`. Returns false when `deadline` passed first.
/// Throws ``RndzError/canceled`` once `cancel` is set.
func waitFD(
    _ fd: Int32, events: Int16, deadline: ContinuousClock.Instant?, cancel: CancelFlag?
) throws(RndzError) -> Bool {
    while true {
        if let cancel, cancel.isCancelled { throw .canceled }
        var ms: Int32 = -1
        if let deadline {
            let left = deadline - ContinuousClock.now
            if left <= .zero { return false }
            ms = Int32(left.clampedMilliseconds(max: Int64(Int32.max)))
        }
        if cancel != nil { ms = ms < 0 ? cancelSliceMs : Swift.min(ms, cancelSliceMs) }
        var p = pollfd(fd: fd, events: events, revents: 0)
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

/// Receives one datagram, waiting at most `timeout` (nil: no limit). Returns nil on timeout.
/// Datagrams for which `skip` returns true are dropped, and the wait goes on.
func receiveDatagram(
    fd: Int32, maxLength: Int, timeout: Duration?, cancel: CancelFlag?,
    skip: ((_ bytes: ArraySlice<UInt8>) -> Bool)? = nil
) throws(RndzError) -> Datagram? {
    precondition(maxLength > 0, "maxLength must be positive")
    let deadline = timeout.map { ContinuousClock.now + $0 }
    var buf = [UInt8](repeating: 0, count: maxLength)
    while true {
        guard try waitFD(fd, events: Int16(POLLIN), deadline: deadline, cancel: cancel) else {
            return nil
        }
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
            if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR { continue }
            throw lastErrno()
        }
        if let skip, skip(buf[..<n]) { continue }
        return Datagram(bytes: Array(buf[..<n]), sender: try SocketAddress(ss).unmapped)
    }
}

/// Sends one datagram (to `address`, or on a connected socket when nil), waiting for buffer
/// space if needed. Returns the number of bytes sent.
func sendDatagram(
    fd: Int32, bytes: UnsafeRawBufferPointer, to address: SocketAddress?, cancel: CancelFlag?
) throws(RndzError) -> Int {
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
        if errno == EAGAIN || errno == EWOULDBLOCK {
            _ = try waitFD(fd, events: Int16(POLLOUT), deadline: nil, cancel: cancel)
            continue
        }
        throw lastErrno()
    }
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
