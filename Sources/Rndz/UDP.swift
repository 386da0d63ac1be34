internal import CRndz

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A UDP listener: registers ``ClientOptions/id`` with every rendezvous server, keeps the
/// registration alive from a background thread, and answers connection requests by punching
/// toward the peer. Peers' datagrams arrive on ``fileDescriptor``, the peer socket, which
/// shares the local port with the server sockets; ``receive(maxLength:timeout:)`` and
/// ``send(_:to:)`` use it. Peers that connected come out of ``nextPeer(timeout:)`` or
/// ``peers``. The `async` calls hold no thread while they wait (the overlay's event thread
/// resumes them) and end at once when their task is cancelled.
///
/// Releasing the last reference sends `Bye` to every server, stops the background thread and
/// closes every socket (``fileDescriptor`` included).
public final class UDPListener: Sendable {
    private let base: ListenerHandle
    private var handle: OpaquePointer { base.handle }

    /// The unconnected peer socket. Borrowed: owned and closed by the listener; do not close
    /// it, and do not use it after the listener is gone.
    public let fileDescriptor: Int32

    /// The local address shared by the peer socket and the server sockets.
    public var localAddress: SocketAddress { base.localAddress }

    /// Our id.
    public let id: String

    /// Sockets taken by ``connections`` when it switched the listener over, for its first
    /// iterations.
    private let pending = Locked<[UDPSocket]>([])

    /// Creates the listener and starts registering. Returns at once; see
    /// ``waitRegistered(timeout:)``.
    ///
    /// - Throws: ``RndzError/badID``, ``RndzError/noServer``, ``RndzError/resolveFailed``,
    ///   ``RndzError/badAddress``, OS errors.
    public init(options: ClientOptions) throws(RndzError) {
        let base = try ListenerHandle(
            options: options, create: { rndz_udp_listener_create($0, $1) },
            destroy: { rndz_udp_listener_destroy($0) }, readyFD: { rndz_udp_listener_ready_fd($0) },
            localAddress: { rndz_udp_listener_local_addr($0, $1, nil) })
        self.base = base
        self.fileDescriptor = rndz_udp_listener_fd(base.handle) // valid for a live handle
        self.id = options.id
    }

    deinit { rndz_udp_listener_destroy(handle) }

    /// Waits until at least one server has answered a ping. Blocks.
    ///
    /// - Throws: ``RndzError/timedOut`` if none answered within `timeout`.
    public func waitRegistered(timeout: Duration) throws(RndzError) {
        _ = try check(rndz_udp_listener_wait_registered(handle, UInt32(timeout.clampedMilliseconds())))
    }

    /// A peer that connected to this listener.
    public struct Peer: Sendable, Hashable {
        /// The peer's id and the address its traffic comes from.
        public var id: String
        public var address: SocketAddress
        /// What is known of the path (verified by probes, or a v1 peer's unverified one).
        public var path: PathInfo
    }

    /// Waits up to `timeout` for the next peer that connected: once probes verified the path
    /// (a peer that speaks them), or when the server forwarded a v1 peer's request. Blocks.
    ///
    /// - Returns: the peer, or `nil` when the time ran out.
    public func nextPeer(timeout: Duration) throws(RndzError) -> Peer? {
        try nextPeer(ms: UInt32(timeout.clampedMilliseconds(max: Int64(UInt32.max) - 1)))
    }

    /// Waits like ``nextPeer(timeout:)`` without holding a thread (`timeout` nil: no limit).
    ///
    /// - Returns: the peer, or `nil` when the time ran out.
    /// - Throws: ``RndzError/canceled`` if the task is cancelled (at once).
    public func nextPeer(timeout: Duration? = nil) async throws(RndzError) -> Peer? {
        try await awaitListener(readyFD: base.readyFD, deadline: timeout.map { .now + $0 }) { () throws(RndzError) in
            try nextPeer(ms: 0)
        }
    }

    /// The next queued peer, waiting up to `ms` (C's `UINT32_MAX`: no limit); nil on timeout.
    private func nextPeer(ms: UInt32) throws(RndzError) -> Peer? {
        var info = rndz_peer_info()
        let rc = rndz_udp_listener_next_peer(handle, ms, &info)
        if rc == RNDZ_E_TIMEDOUT.rawValue { return nil }
        _ = try check(rc)
        let id = withUnsafeBytes(of: info.id) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        return Peer(id: id, address: try SocketAddress(info.addr), path: PathInfo(info))
    }

    /// The peers that connect, as they do (see ``nextPeer(timeout:)``), until the consuming
    /// task is cancelled (then the sequence ends). Peers are taken from the listener's queue
    /// only as the sequence is iterated.
    ///
    /// ```swift
    /// for try await peer in listener.peers {
    ///     print("\(peer.id) at \(peer.address)")
    /// }
    /// ```
    public var peers: Peers {
        Peers { [self] () async throws(RndzError) in try await nextPeer() }
    }

    /// The peers of a ``UDPListener``: see ``UDPListener/peers``.
    public typealias Peers = ListenerSequence<Peer>

    /// Waits up to `timeout` for the next peer and returns a socket of its own, connected to
    /// it: on the shared port for a direct path, or to the server's relay for a relayed one
    /// (``PathInfo/relayed``); either way it carries the peer's datagrams unchanged. Blocks.
    ///
    /// The first call switches the listener to per-peer sockets (`rndz_udp_listener_accept`):
    /// from then on it offers the relay to connectors, a peer's datagrams reach its own
    /// socket rather than ``receive(maxLength:timeout:)``, and ``nextPeer(timeout:)`` should
    /// no longer be used.
    ///
    /// - Returns: the socket, or `nil` when the time ran out.
    public func accept(timeout: Duration) throws(RndzError) -> UDPSocket? {
        try accept(ms: UInt32(timeout.clampedMilliseconds(max: Int64(UInt32.max) - 1)))
    }

    /// Waits like ``accept(timeout:)`` without holding a thread (`timeout` nil: no limit).
    ///
    /// - Throws: ``RndzError/canceled`` if the task is cancelled (at once).
    public func accept(timeout: Duration? = nil) async throws(RndzError) -> UDPSocket? {
        // the first try (at once) switches the C listener to per-peer sockets
        try await awaitListener(readyFD: base.readyFD, deadline: timeout.map { .now + $0 }) { () throws(RndzError) in
            try accept(ms: 0)
        }
    }

    /// Each peer on a socket of its own, as ``accept(timeout:)`` hands them out, until the
    /// listener is closed or the consuming task is cancelled (then the sequence ends). Making
    /// the sequence switches the listener to per-peer sockets at once (so the relay is
    /// offered from then on), before the first iteration.
    ///
    /// ```swift
    /// for try await socket in listener.connections {
    ///     Task { try await serve(socket) }  // socket.path.relayed: through the relay
    /// }
    /// ```
    public var connections: Connections {
        // accept(0) switches at once; a peer it already returns waits for the first next()
        if let early = try? accept(ms: 0) { pending.withLock { $0.append(early) } }
        return Connections { [self] () async throws(RndzError) in
            if let early = pending.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) { return early }
            while true {
                if let s = try await accept() { return s }
            }
        }
    }

    /// The per-peer sockets of a ``UDPListener``: see ``UDPListener/connections``.
    public typealias Connections = ListenerSequence<UDPSocket>

    private func accept(ms: UInt32) throws(RndzError) -> UDPSocket? {
        var info = rndz_peer_info()
        let fd = rndz_udp_listener_accept(handle, ms, &info)
        if fd == RNDZ_E_TIMEDOUT.rawValue { return nil }
        _ = try check(fd)
        let peerID = withUnsafeBytes(of: info.id) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        let peer = try cleaningUp({ close(fd) }) { () throws(RndzError) in try SocketAddress(info.addr) }
        let socket = try UDPSocket(owning: fd, peer: peer, ourID: id, peerID: peerID)
        socket.path = PathInfo(info)
        return socket
    }

    /// Waits like ``waitRegistered(timeout:)`` without holding a thread.
    ///
    /// - Throws: also ``RndzError/canceled`` if the task is cancelled (at once).
    public func waitRegistered(timeout: Duration) async throws(RndzError) {
        try await awaitRegistered(deadline: .now + timeout) { rndz_udp_listener_wait_registered(handle, 0) }
    }

    /// Receives one datagram on the peer socket. Blocks until one arrives or `timeout`
    /// passes (nil: no limit).
    ///
    /// Datagrams are delivered as they come: a v1 peer's punch packet (an `Rsync` request,
    /// see ``WireMessage``) may arrive here too.
    ///
    /// - Returns: the datagram, or nil on timeout. Longer datagrams are cut to `maxLength`.
    public func receive(maxLength: Int = Datagram.maxSize, timeout: Duration? = nil)
        throws(RndzError) -> Datagram?
    {
        try receiveDatagram(fd: fileDescriptor, maxLength: maxLength, timeout: timeout)
    }

    /// Receives like ``receive(maxLength:timeout:)`` without holding a thread.
    ///
    /// - Throws: also ``RndzError/canceled`` if the task is cancelled (at once).
    public func receive(maxLength: Int = Datagram.maxSize, timeout: Duration? = nil)
        async throws(RndzError) -> Datagram?
    {
        try await receiveDatagram(fd: fileDescriptor, maxLength: maxLength, timeout: timeout)
    }

    /// Sends one datagram from the peer socket to `address`. Returns the bytes sent.
    @discardableResult
    public func send(_ bytes: [UInt8], to address: SocketAddress) throws(RndzError) -> Int {
        try withBytes(bytes) { (b) throws(RndzError) in
            try sendDatagram(fd: fileDescriptor, bytes: b, to: address)
        }
    }

    /// Sends like ``send(_:to:)`` without holding a thread (sending waits only while the
    /// socket buffer is full).
    ///
    /// - Throws: also ``RndzError/canceled`` if the task is cancelled.
    @discardableResult
    public func send(_ bytes: [UInt8], to address: SocketAddress) async throws(RndzError) -> Int {
        try await sendDatagram(fd: fileDescriptor, bytes: bytes, to: address)
    }
}

/// A UDP socket connected to a peer, returned by ``UDPConnector/connect(to:)``: bound to the
/// port that asked the rendezvous server, so the peer's NAT and firewall let it through.
///
/// The socket is owned: deinit closes it.
public final class UDPSocket: @unchecked Sendable {
    // Unchecked: the fd is immutable and used only through thread-safe system calls; it is
    // closed only by deinit, when no other reference exists.

    /// The socket. Owned by this object, which closes it; use it only while the object lives.
    public let fileDescriptor: Int32
    /// The peer it is connected to.
    public let peer: SocketAddress
    /// The local address (the same port the rendezvous server saw).
    public let localAddress: SocketAddress
    /// What the connect found out about the path.
    public internal(set) var path = PathInfo()
    /// Our id and the peer's, to recognise the peer's punch packet.
    private let ourID: String
    /// The peer's id.
    public let peerID: String

    /// Takes ownership of a connected UDP socket. On error the fd is closed.
    init(owning fd: Int32, peer: SocketAddress, ourID: String, peerID: String) throws(RndzError) {
        self.localAddress = try cleaningUp({ close(fd) }) { () throws(RndzError) in try socketLocalAddress(fd) }
        self.fileDescriptor = fd
        self.peer = peer
        self.ourID = ourID
        self.peerID = peerID
    }

    /// The peer listener's punch, `Request{id: peer, Rsync{id: us}}` (see the vector
    /// `udp.rsync.punch`), which may arrive after the connector handed the socket over. It is
    /// rendezvous traffic, not the peer's data.
    private func isPunch(_ bytes: ArraySlice<UInt8>) -> Bool {
        guard bytes.count <= ourID.utf8.count + peerID.utf8.count + 16,  // cheap pre-check
            let m = try? WireMessage(request: Array(bytes))
        else { return false }
        return m.command == .rsync && m.id == peerID && m.peerID == ourID
    }

    deinit { close(fileDescriptor) }

    /// Sends one datagram to the peer. Returns the bytes sent.
    ///
    /// - Throws: e.g. ``RndzError/connectionRefused`` after the peer's host reported its
    ///   port closed.
    @discardableResult
    public func send(_ bytes: [UInt8]) throws(RndzError) -> Int {
        try withBytes(bytes) { (b) throws(RndzError) in
            try sendDatagram(fd: fileDescriptor, bytes: b, to: nil)
        }
    }

    /// Sends like ``send(_:)`` without holding a thread.
    ///
    /// - Throws: also ``RndzError/canceled`` if the task is cancelled.
    @discardableResult
    public func send(_ bytes: [UInt8]) async throws(RndzError) -> Int {
        try await sendDatagram(fd: fileDescriptor, bytes: bytes, to: nil)
    }

    /// Receives one datagram from the peer. Blocks until one arrives or `timeout` passes
    /// (nil: no limit).
    ///
    /// The peer's punch packet (the v1 `Rsync` its listener sends to open its NAT) is not
    /// data and is dropped here; reading ``fileDescriptor`` directly may still see it.
    ///
    /// - Returns: the payload, or nil on timeout. Longer datagrams are cut to `maxLength`.
    /// - Throws: e.g. ``RndzError/connectionRefused`` when the peer's port is closed.
    public func receive(maxLength: Int = Datagram.maxSize, timeout: Duration? = nil)
        throws(RndzError) -> [UInt8]?
    {
        try receiveDatagram(
            fd: fileDescriptor, maxLength: maxLength, timeout: timeout, skip: isPunch)?.bytes
    }

    /// Receives like ``receive(maxLength:timeout:)`` without holding a thread.
    ///
    /// - Throws: also ``RndzError/canceled`` if the task is cancelled (at once).
    public func receive(maxLength: Int = Datagram.maxSize, timeout: Duration? = nil)
        async throws(RndzError) -> [UInt8]?
    {
        try await receiveDatagram(
            fd: fileDescriptor, maxLength: maxLength, timeout: timeout, skip: isPunch)?.bytes
    }
}

/// A UDP connector: asks the rendezvous servers for a peer by id and returns a socket
/// connected to it.
///
/// ```swift
/// let socket = try await UDPConnector(options: ClientOptions(id: "bob", servers: ["rndz.example.org:8888"]))
///     .connect(to: "alice")
/// try await socket.send(Array("hello".utf8))
/// ```
/// What a connect learned about the path to the peer.
public struct PathInfo: Sendable, Hashable {
    /// Probes proved the path both ways (a peer that speaks them, through a server that
    /// forwards them). `false`: a v1 peer or server; the path is the server's word, unverified.
    public var verified = false
    /// The round-trip time the probes measured (`nil` when not measured).
    public var rtt: Duration?
    /// Time from the start of the connect to the path being ready.
    public var elapsed: Duration = .zero
    /// The peer's address is a private (LAN) one: the peers share a network.
    public var lan = false
    /// The address is one the peer advertised (its LAN or IPv6 address), not the one the
    /// rendezvous server saw.
    public var advertised = false
    /// The path goes through the rendezvous server's relay: the address is the relay's. The
    /// socket carries the peer's bytes unchanged all the same.
    public var relayed = false
    /// A direct path through a destination-dependent NAT, found by port prediction.
    public var predicted = false
    /// A direct path to a port mapping the listener holds at its gateway (PCP, NAT-PMP).
    public var mapped = false

    public init() {}

    init(_ info: rndz_peer_info) {
        verified = info.verified != 0
        rtt = info.rtt_ms > 0 ? .milliseconds(Int(info.rtt_ms)) : nil
        elapsed = .milliseconds(Int(info.elapsed_ms))
        lan = info.lan != 0
        advertised = info.advertised != 0
        relayed = info.relayed != 0
        predicted = info.predicted != 0
        mapped = info.mapped != 0
    }
}

public struct UDPConnector: Sendable {
    /// Our id, the servers, and the round and timeout of the search.
    public var options: ClientOptions

    public init(options: ClientOptions) { self.options = options }

    /// Asks every server for `target`, in rounds of ``ClientOptions/round``, until one
    /// answers with its address or ``ClientOptions/timeout`` passes. Blocks.
    ///
    /// - Returns: a socket bound to the port that asked and connected to the peer.
    /// - Throws: ``RndzError/notFound`` (every server said so), ``RndzError/otherTransport``
    ///   (not found, but registered over TCP), ``RndzError/timedOut`` (not
    ///   every server answered and none knew the target), ``RndzError/badID``,
    ///   ``RndzError/noServer``, ``RndzError/resolveFailed``, OS errors.
    public func connect(to target: String) throws(RndzError) -> UDPSocket {
        let c = try options.connect(to: target) { rndz_udp_connect_info($0, $1, $2) }
        let socket = try UDPSocket(owning: c.fd, peer: c.peer, ourID: options.id, peerID: target)
        socket.path = PathInfo(c.info)
        return socket
    }

    /// Connects like ``connect(to:)`` on one of a few threads kept for blocking calls, so the
    /// cooperative thread pool is not blocked. The search is not interrupted by task
    /// cancellation; it ends within ``ClientOptions/timeout``.
    public func connect(to target: String) async throws(RndzError) -> UDPSocket {
        try await offPool { [self] () throws(RndzError) in try connect(to: target) }
    }
}
