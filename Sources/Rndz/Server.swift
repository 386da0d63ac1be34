internal import CRndz

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Counters of a running ``RndzServer``.
public struct ServerStats: Hashable, Sendable {
    /// UDP datagrams received.
    public var udpReceived: UInt64
    /// UDP datagrams sent.
    public var udpSent: UInt64
    /// UDP datagrams dropped as undecodable or not a request.
    public var udpMalformed: UInt64
    /// UDP ids expired for silence.
    public var udpExpired: UInt64
    /// UDP ids registered now.
    public var udpPeers: UInt64
    /// TCP connections open now.
    public var tcpConnections: UInt64
    /// TCP ids registered now.
    public var tcpPeers: UInt64
    /// TCP connections dropped for a bad frame or message.
    public var tcpMalformed: UInt64
    /// Requests dropped (server with a secret): no proof, a wrong or malformed one, or a
    /// timestamp outside the window. UDP and TCP.
    public var authFailed: UInt64
    /// Requests dropped (server with a secret): replays.
    public var authReplayed: UInt64
    /// Isync/Rsync dropped: their source address was over its rate.
    public var syncLimited: UInt64
    /// Fsync/Redirect not sent: their target was over its rate.
    public var fsyncLimited: UInt64
    /// Requests dropped: an id over the length limit.
    public var idRefused: UInt64
    /// TCP connections closed at once: over the total or per-address cap.
    public var tcpRefused: UInt64
    /// Relay sessions open now.
    public var relaySessions: UInt64 = 0
    /// Datagrams (and TCP chunks) the relay received, and forwarded to a peer.
    public var relayReceived: UInt64 = 0
    public var relayForwarded: UInt64 = 0
    /// Bytes the relay forwarded.
    public var relayBytes: UInt64 = 0
    /// Relay datagrams from an address in no session (or before the other peer joined).
    public var relayForeign: UInt64 = 0
    /// Relay joins refused: a forged or expired token, a role taken, the table full.
    public var relayRefused: UInt64 = 0
    /// Relay datagrams dropped over a rate (TCP: reads paused).
    public var relayLimited: UInt64 = 0
    /// Relay sessions ended (idle, or a TCP side closed).
    public var relayExpired: UInt64 = 0
}

/// A rendezvous server (protocol v1): registers peers and forwards connection requests.
///
/// `init` creates and binds the sockets, so ``localAddress`` (and ``localAddresses``, with
/// several ``ServerOptions/listenAddresses``) is known at once (useful with port 0). Serve either in the background with ``start()`` or on the calling thread with
/// ``run()`` (or `await run()`); ``stop()`` ends either. Releasing the last reference stops
/// the server, joins its thread and closes its sockets.
///
/// ```swift
/// let server = try RndzServer(options: ServerOptions(listenAddress: try SocketAddress(parsing: "127.0.0.1:0")))
/// try server.start()
/// print("serving on \(server.localAddress)")
/// ```
///
/// Several addresses, one server (one table of ids; every UDP request is answered from the
/// address it reached):
///
/// ```swift
/// let both = try RndzServer(options: ServerOptions(listenAddresses: [
///     try SocketAddress(parsing: "0.0.0.0:8888"), try SocketAddress(parsing: "[::]:8888")]))
/// ```
public final class RndzServer: @unchecked Sendable {
    // Unchecked: the C handle may be used from any thread (rndz.h, THREAD SAFETY) except
    // for destroy, which only deinit calls, when no other reference exists.
    private let handle: OpaquePointer
    private let configBox: SocketConfigBox?

    /// The address actually bound: the first of ``localAddresses``.
    public let localAddress: SocketAddress
    /// Every address bound, in the order of ``ServerOptions/listenAddresses`` (ports chosen
    /// for port 0 filled in).
    public let localAddresses: [SocketAddress]

    /// Creates the server and binds its sockets. Does not serve yet.
    ///
    /// - Throws: e.g. ``RndzError/addressInUse``, ``RndzError/badAddress``,
    ///   ``RndzError/invalidArgument`` for a ``ServerOptions/secret`` under 16 bytes, or for
    ///   no ``ServerOptions/listenAddresses`` or more than
    ///   ``ServerOptions/maxListenAddresses``.
    public init(options: ServerOptions = ServerOptions()) throws(RndzError) {
        let box = options.socketConfigure.map(SocketConfigBox.init)
        var h: OpaquePointer?
        let rc = try options.withC(box) { rndz_server_create($0, &h) }
        _ = try check(rc)
        guard let h else { throw .closed }
        let locals = try cleaningUp({ rndz_server_destroy(h) }) { () throws(RndzError) in
            var ss = [sockaddr_storage](repeating: sockaddr_storage(),
                                        count: ServerOptions.maxListenAddresses)
            let n = min(rndz_server_local_addrs(h, &ss, ss.count), ss.count)
            guard n > 0 else {
                return [try cLocalAddress { rndz_server_local_addr(h, $0, nil) }]
            }
            var out: [SocketAddress] = []
            for i in 0..<n { out.append(try SocketAddress(ss[i])) }
            return out
        }
        self.handle = h
        self.configBox = box
        self.localAddresses = locals
        self.localAddress = locals[0]
    }

    deinit { rndz_server_destroy(handle) }

    /// Serves on a new background thread until ``stop()`` or deinit.
    public func start() throws(RndzError) {
        _ = try check(rndz_server_start(handle))
    }

    /// Serves on the calling thread until ``stop()`` is called (from another thread or a
    /// signal handler). Blocks.
    public func run() throws(RndzError) {
        _ = try check(rndz_server_run(handle))
    }

    /// Serves on a thread of its own until ``stop()`` is called or the task is cancelled;
    /// the cooperative thread pool is not blocked.
    public func run() async throws(RndzError) {
        try await onOwnThread(onCancel: { [self] in stop() }) { [self] () throws(RndzError) in try run() }
    }

    /// Asks the server to stop; returns at once. Safe from any thread. A stopped server does
    /// not serve again (``run()`` returns at once or fails with `EBUSY`): create a new one.
    public func stop() {
        _ = rndz_server_stop(handle)
    }

    /// The server's counters now.
    public var stats: ServerStats {
        var s = rndz_server_stats()
        let rc = rndz_server_stats_get(handle, &s)
        precondition(rc == 0, "rndz_server_stats_get failed: \(rc)")
        return ServerStats(
            udpReceived: s.udp_rx, udpSent: s.udp_tx, udpMalformed: s.udp_malformed,
            udpExpired: s.udp_expired, udpPeers: s.udp_peers, tcpConnections: s.tcp_conns,
            tcpPeers: s.tcp_peers, tcpMalformed: s.tcp_malformed, authFailed: s.auth_failed,
            authReplayed: s.auth_replayed, syncLimited: s.sync_limited,
            fsyncLimited: s.fsync_limited, idRefused: s.id_refused, tcpRefused: s.tcp_refused,
            relaySessions: s.relay_sessions, relayReceived: s.relay_rx, relayForwarded: s.relay_tx,
            relayBytes: s.relay_bytes, relayForeign: s.relay_foreign,
            relayRefused: s.relay_refused, relayLimited: s.relay_limited,
            relayExpired: s.relay_expired)
    }

    /// The counters in the Prometheus text format (`rndz_server_metrics`): HELP and TYPE
    /// lines, names `rndz_`-prefixed (counters end in `_total`), e.g. `rndz_udp_peers`.
    public var metricsText: String {
        var cap = 8192
        while true {
            var buf = [CChar](repeating: 0, count: cap)
            let n = Int(rndz_server_metrics(handle, &buf, cap))
            precondition(n >= 0, "rndz_server_metrics failed: \(n)")
            if n < cap {
                return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            }
            cap = n + 1
        }
    }

    /// The relay's address (``ServerOptions/relayAddress`` with the port bound), or nil
    /// without a relay.
    public var relayAddress: SocketAddress? {
        var ss = sockaddr_storage()
        guard rndz_server_relay_addr(handle, &ss, nil) == 0 else { return nil }
        return try? SocketAddress(ss)
    }
}
