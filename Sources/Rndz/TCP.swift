internal import CRndz

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A TCP listener: a listening socket and a connection to every rendezvous server, all from
/// the same local port. A background thread registers ``ClientOptions/id`` with every server
/// (ping every ``ClientOptions/keepalive``, reconnecting with backoff when a server connection
/// breaks) and, when a peer asks for us, connects from the same port toward it so that both
/// NATs open for the flow. Peers' connections come out of ``accept(timeout:)`` or
/// ``connections``. The `async` calls hold no thread while they wait (the overlay's event
/// thread resumes them) and end at once when their task is cancelled.
///
/// ```swift
/// let listener = try TCPListener(options: ClientOptions(id: "alice", servers: ["rndz.example.org:8888"]))
/// for try await stream in listener.connections {
///     Task { try await stream.send(Array("hi".utf8)) }
/// }
/// ```
///
/// ``close()`` stops accepting (waiting accepts fail with ``RndzError/closed``) and sends
/// `Bye`; releasing the last reference closes it too, and closes the sockets and every
/// connection nobody accepted.
public final class TCPListener: Sendable {
    private let base: ListenerHandle
    private var handle: OpaquePointer { base.handle }

    /// The local address shared by the listening socket and the server connections.
    public var localAddress: SocketAddress { base.localAddress }

    /// Our id.
    public let id: String

    /// Creates the listener and starts registering. Returns at once; see
    /// ``waitRegistered(timeout:)``.
    ///
    /// - Throws: ``RndzError/badID``, ``RndzError/noServer``, ``RndzError/resolveFailed``,
    ///   ``RndzError/badAddress``, OS errors (e.g. ``RndzError/addressInUse``).
    public init(options: ClientOptions) throws(RndzError) {
        self.base = try ListenerHandle(
            options: options, create: { rndz_tcp_listener_create($0, $1) },
            destroy: { rndz_tcp_listener_destroy($0) }, readyFD: { rndz_tcp_listener_ready_fd($0) },
            localAddress: { rndz_tcp_listener_local_addr($0, $1, nil) })
        self.id = options.id
    }

    deinit { rndz_tcp_listener_destroy(handle) }

    /// Waits until at least one server has answered a ping. Blocks.
    ///
    /// - Throws: ``RndzError/timedOut`` if none answered within `timeout`,
    ///   ``RndzError/closed`` after ``close()`` (also when it is called meanwhile).
    public func waitRegistered(timeout: Duration) throws(RndzError) {
        _ = try check(rndz_tcp_listener_wait_registered(handle, UInt32(timeout.clampedMilliseconds())))
    }

    /// Waits like ``waitRegistered(timeout:)`` without holding a thread.
    ///
    /// - Throws: also ``RndzError/canceled`` if the task is cancelled (at once).
    public func waitRegistered(timeout: Duration) async throws(RndzError) {
        try await awaitRegistered(deadline: .now + timeout) { rndz_tcp_listener_wait_registered(handle, 0) }
    }

    /// Waits for a peer's connection (one the listening socket accepted, or one whose SYN
    /// crossed ours). Blocks until one arrives, `timeout` passes (nil: no limit), or the
    /// listener is closed. Several threads may wait at once.
    ///
    /// - Returns: the connection, owned by the caller.
    /// - Throws: ``RndzError/timedOut``, ``RndzError/closed`` after ``close()``.
    public func accept(timeout: Duration? = nil) throws(RndzError) -> TCPStream {
        // UINT32_MAX means "no limit" to C: a finite timeout stays below it.
        let ms = timeout.map { UInt32($0.clampedMilliseconds(max: Int64(UInt32.max) - 1)) } ?? UInt32.max
        return try accept(ms: ms)
    }

    /// Accepts like ``accept(timeout:)`` without holding a thread. Many tasks may wait at once.
    ///
    /// - Throws: also ``RndzError/canceled`` if the task is cancelled (at once).
    public func accept(timeout: Duration? = nil) async throws(RndzError) -> TCPStream {
        let got = try await awaitListener(readyFD: base.readyFD, deadline: timeout.map { .now + $0 }) {
            () throws(RndzError) -> TCPStream? in
            do throws(RndzError) { return try accept(ms: 0) } catch .timedOut { return nil }
        }
        guard let got else { throw .timedOut }
        return got
    }

    private func accept(ms: UInt32) throws(RndzError) -> TCPStream {
        var info = rndz_peer_info()
        let fd = try check(rndz_tcp_listener_accept_info(handle, ms, &info))
        let peer = try cleaningUp({ closeFD(fd) }) { () throws(RndzError) in try SocketAddress(info.addr) }
        // An accepted stream knows only whether it came through the relay.
        var path = PathInfo()
        path.relayed = info.relayed != 0
        return try TCPStream(owning: fd, peer: peer, path: path)
    }

    /// The peers' connections as they are accepted, until the listener is closed or the
    /// consuming task is cancelled (then the sequence ends). Each element is owned by the
    /// consumer. Connections are accepted only as the sequence is iterated; until then they
    /// wait in the listener's queue.
    ///
    /// ```swift
    /// for try await stream in listener.connections {
    ///     Task { try await handle(stream) }
    /// }
    /// ```
    public var connections: Connections {
        Connections { [self] () async throws(RndzError) in try await accept() }
    }

    /// The accepted connections of a ``TCPListener``: see ``TCPListener/connections``.
    public typealias Connections = ListenerSequence<TCPStream>

    /// Stops accepting: every waiting accept fails with ``RndzError/closed`` and
    /// ``connections`` ends; sends `Bye` to the servers and stops the background thread.
    /// Connections already accepted stay open. Safe to call from any thread, more than once.
    public func close() {
        _ = rndz_tcp_listener_close(handle)
    }
}

/// A TCP connection to a peer, from ``TCPListener/accept(timeout:)`` or
/// ``TCPConnector/connect(to:)``: bound to the port the rendezvous server saw, so the peer's
/// NAT and firewall let it through.
///
/// The socket is owned: ``close()`` or deinit closes it.
public final class TCPStream: @unchecked Sendable {
    // Unchecked: the fd is used only through thread-safe system calls, and `state` makes sure
    // it is closed only once no call uses it (so a concurrent call never sees the number of
    // a reused descriptor).

    /// The socket, in blocking mode. Owned by this object; use it only until ``close()`` and
    /// while the object lives.
    public let fileDescriptor: Int32
    /// The peer's address.
    public let peer: SocketAddress
    /// The local address (the same port the rendezvous server saw).
    public let localAddress: SocketAddress
    /// What the connect found out (connector side): which address carried the connection,
    /// the handshake's RTT and the time to connect. On accepted streams only
    /// ``PathInfo/relayed`` is set.
    public let path: PathInfo

    private struct State {
        var closed = false  // close() was called: no new calls
        var users = 0  // calls using the fd now
        var fdClosed = false
    }
    private let state = Locked(State())

    /// Takes ownership of a connected TCP socket. On error the fd is closed.
    init(owning fd: Int32, peer: SocketAddress, path: PathInfo = PathInfo()) throws(RndzError) {
        self.localAddress = try cleaningUp({ closeFD(fd) }) { () throws(RndzError) in try socketLocalAddress(fd) }
        self.fileDescriptor = fd
        self.peer = peer
        self.path = path
    }

    deinit {
        // No call can be running: each holds a reference.
        if !state.withLock({ $0.fdClosed }) { closeFD(fileDescriptor) }
    }

    /// Closes the connection. Calls waiting in another thread or task return at once (a
    /// receive as at end of stream); later calls fail with ``RndzError/closed``. Idempotent.
    public func close() {
        let closeNow: Bool? = state.withLock { s in
            if s.closed { return nil }
            s.closed = true
            if s.users > 0 { return false }
            s.fdClosed = true
            return true
        }
        switch closeNow {
        case true?: closeFD(fileDescriptor)
        case false?:
            // Wakes the users (blocking ones through poll); the last one closes the fd.
            shutdown(fileDescriptor, Int32(SHUT_RDWR))
            Reactor.closing(fileDescriptor)
        case nil: break
        }
    }

    /// Runs `body` with the fd, which stays open until it returns.
    private func using<R>(_ body: (Int32) throws(RndzError) -> R) throws(RndzError) -> R {
        try acquire()
        defer { release() }
        return try body(fileDescriptor)
    }

    /// The same for an async `body`.
    private func using<R>(_ body: (Int32) async throws(RndzError) -> R) async throws(RndzError) -> R {
        try acquire()
        defer { release() }
        return try await body(fileDescriptor)
    }

    /// Starts a use of the fd, unless ``close()`` was called.
    private func acquire() throws(RndzError) {
        let ok = state.withLock { s in
            if s.closed { return false }
            s.users += 1
            return true
        }
        guard ok else { throw .closed }
    }

    /// Ends a use of the fd; the last one after ``close()`` closes it.
    private func release() {
        let last = state.withLock { s in
            s.users -= 1
            if s.closed && s.users == 0 && !s.fdClosed {
                s.fdClosed = true
                return true
            }
            return false
        }
        if last { closeFD(fileDescriptor) }
    }

    /// Sends all of `bytes`, waiting for buffer space as needed.
    ///
    /// - Throws: e.g. `EPIPE` or `ECONNRESET` once the peer closed, ``RndzError/closed``
    ///   after ``close()``.
    public func send(_ bytes: [UInt8]) throws(RndzError) {
        try using { (fd) throws(RndzError) in
            try withBytes(bytes) { (b) throws(RndzError) in
                var off = 0
                while off < b.count {
                    off += try sendDatagram(fd: fd, bytes: UnsafeRawBufferPointer(rebasing: b[off...]), to: nil)
                }
            }
        }
    }

    /// Sends like ``send(_:)`` without holding a thread.
    ///
    /// - Throws: also ``RndzError/canceled`` if the task is cancelled (part of `bytes` may
    ///   have been sent), ``RndzError/closed`` if ``close()`` is called meanwhile.
    public func send(_ bytes: [UInt8]) async throws(RndzError) {
        try await using { (fd) async throws(RndzError) in
            var off = 0
            while off < bytes.count {
                off += try await asyncIO(fd, .write, deadline: nil) { () throws(RndzError) in
                    try withBytes(bytes) { (b) throws(RndzError) in
                        try sendNow(fd: fd, bytes: UnsafeRawBufferPointer(rebasing: b[off...]), to: nil)
                    }
                }!  // no deadline: never nil
            }
        }
    }

    /// Ends our direction of the stream (`shutdown(SHUT_WR)`): the peer reads the end of the
    /// stream once it has everything sent before; we can still receive. Closing only after
    /// the peer's end arrived keeps the connection ours until all our data is acknowledged
    /// (a close()d one is the kernel's, which gives up on it sooner).
    ///
    /// - Throws: e.g. `ENOTCONN`, ``RndzError/closed`` after ``close()``.
    public func finishSending() throws(RndzError) {
        try using { (fd) throws(RndzError) in
            if shutdown(fd, Int32(SHUT_WR)) < 0 { throw RndzError(errno: errno) }
        }
    }

    /// Receives what has arrived, at most `maxLength` bytes, waiting until something does or
    /// `timeout` passes (nil: no limit).
    ///
    /// - Returns: the bytes (never empty), or nil at the end of the stream (the peer closed
    ///   its side, or ``close()`` was called meanwhile).
    /// - Throws: ``RndzError/timedOut`` when nothing arrived in time, e.g. `ECONNRESET`,
    ///   ``RndzError/closed`` after ``close()``.
    public func receive(maxLength: Int = 65_536, timeout: Duration? = nil) throws(RndzError) -> [UInt8]? {
        precondition(maxLength > 0, "maxLength must be positive")
        var buf = [UInt8](repeating: 0, count: maxLength)
        let got = try using { (fd) throws(RndzError) in
            try blockingIO(fd, .read, deadline: timeout.map { .now + $0 }) { () throws(RndzError) in
                try receiveNow(fd: fd, into: &buf)
            }
        }
        guard let got else { throw .timedOut }
        return got.isEmpty ? nil : got
    }

    /// Receives like ``receive(maxLength:timeout:)`` without holding a thread.
    ///
    /// - Throws: also ``RndzError/canceled`` if the task is cancelled (at once).
    public func receive(maxLength: Int = 65_536, timeout: Duration? = nil) async throws(RndzError)
        -> [UInt8]?
    {
        precondition(maxLength > 0, "maxLength must be positive")
        var buf = [UInt8](repeating: 0, count: maxLength)
        let got: [UInt8]?
        do throws(RndzError) {
            got = try await using { (fd) async throws(RndzError) in
                try await asyncIO(fd, .read, deadline: timeout.map { .now + $0 }) { () throws(RndzError) in
                    try receiveNow(fd: fd, into: &buf)
                }
            }
        } catch .closed where isClosing {
            return nil  // close() was called meanwhile: as at end of stream
        }
        guard let got else { throw .timedOut }
        return got.isEmpty ? nil : got
    }

    /// ``close()`` was called.
    private var isClosing: Bool { state.withLock { $0.closed } }
}

/// `close(2)`, under a name the types' own `close()` does not hide.
private func closeFD(_ fd: Int32) { _ = close(fd) }

/// One `recv` that does not wait: the bytes, empty at the end of the stream, nil when
/// nothing has arrived.
private func receiveNow(fd: Int32, into buf: inout [UInt8]) throws(RndzError) -> [UInt8]? {
    while true {
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        if n >= 0 { return Array(buf[..<n]) }
        if errno == EINTR { continue }
        if errno == EAGAIN || errno == EWOULDBLOCK { return nil }
        throw lastErrno()
    }
}

/// A TCP connector: asks a rendezvous server for a peer by id and connects to it from the
/// same local port.
///
/// ```swift
/// let stream = try await TCPConnector(options: ClientOptions(id: "bob", servers: ["rndz.example.org:8888"]))
///     .connect(to: "alice")
/// try await stream.send(Array("hello".utf8))
/// ```
public struct TCPConnector: Sendable {
    /// Our id, the servers, and the timeout of the whole connect.
    public var options: ClientOptions

    public init(options: ClientOptions) { self.options = options }

    /// Asks the servers for `target`, then connects from the same local port to the address
    /// given, retrying until ``ClientOptions/timeout`` (which bounds the whole connect,
    /// server and peer) passes. Blocks.
    ///
    /// - Returns: the connected stream, owned by the caller.
    /// - Throws: ``RndzError/notFound`` (every server said so), ``RndzError/otherTransport``
    ///   (not found, but registered over UDP), ``RndzError/timedOut`` (no
    ///   server answered in time), ``RndzError/peerFailed`` (the peer's address was given but
    ///   no connection could be made), ``RndzError/badID``, ``RndzError/noServer``,
    ///   ``RndzError/resolveFailed``, OS errors.
    public func connect(to target: String) throws(RndzError) -> TCPStream {
        let c = try options.connect(to: target) { rndz_tcp_connect_info($0, $1, $2) }
        return try TCPStream(owning: c.fd, peer: c.peer, path: PathInfo(c.info))
    }

    /// Connects like ``connect(to:)`` on one of a few threads kept for blocking calls, so the
    /// cooperative thread pool is not blocked. The connect is not interrupted by task
    /// cancellation; it ends within ``ClientOptions/timeout``.
    public func connect(to target: String) async throws(RndzError) -> TCPStream {
        try await offPool { [self] () throws(RndzError) in try connect(to: target) }
    }
}
