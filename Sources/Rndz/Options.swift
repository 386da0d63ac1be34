internal import CRndz

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Configures every socket rndz creates, before it is bound (like rndz's `SocketConfigure`):
/// e.g. to set `SO_MARK` or `SO_BINDTODEVICE`. Throwing aborts the operation with that error.
/// Called on rndz's threads; it must not destroy the object that is creating the socket.
///
/// - Parameters:
///   - fd: the new socket (borrowed).
///   - family: `AF_INET` or `AF_INET6`.
///   - socketType: `SOCK_DGRAM` or `SOCK_STREAM`.
public typealias SocketConfigure =
    @Sendable (_ fd: Int32, _ family: Int32, _ socketType: Int32) throws(RndzError) -> Void

/// Keeps a ``SocketConfigure`` alive for as long as C may call it.
final class SocketConfigBox: Sendable {
    let configure: SocketConfigure
    init(_ configure: @escaping SocketConfigure) { self.configure = configure }

    var user: UnsafeMutableRawPointer { Unmanaged.passUnretained(self).toOpaque() }

    /// The C trampoline: `user` is a `SocketConfigBox`.
    static let trampoline: rndz_sock_config_fn = { fd, family, type, user in
        let box = Unmanaged<SocketConfigBox>.fromOpaque(user!).takeUnretainedValue()
        do throws(RndzError) {
            try box.configure(fd, family, type)
            return 0
        } catch {
            return error.code < 0 ? error.code : -EINVAL
        }
    }
}

/// Options of a ``RndzServer``. Defaults are the C library's (`rndz_server_options_init`).
public struct ServerOptions: Sendable {
    /// The most addresses one server serves on (`RNDZ_MAX_LISTEN`).
    public static let maxListenAddresses = Int(RNDZ_MAX_LISTEN)

    /// The numeric addresses to serve on, UDP and TCP on each: one server, one table of ids,
    /// e.g. an IPv4 and an IPv6 address, or two addresses of a multi-homed host. Default
    /// `[0.0.0.0:8888]`; 1 to ``maxListenAddresses`` of them (none, or more, and
    /// ``RndzServer/init(options:)`` throws ``RndzError/invalidArgument``).
    ///
    /// Port 0: the first address gets a free port and the others with port 0 take the same
    /// one. An IPv6 address serves IPv4 clients too unless ``ipv6Only`` is set. Every UDP
    /// request is answered from the address it was sent to (also on a wildcard address such
    /// as `0.0.0.0` or `[::]` on a host with several addresses), and a request forwarded to
    /// a peer leaves from the address that peer wrote to.
    public var listenAddresses: [SocketAddress]

    /// The address to serve on: the first of ``listenAddresses``. Setting it serves that one
    /// address only (``listenAddresses`` becomes `[newValue]`), as it did before there were
    /// several. With ``listenAddresses`` empty it reads as the default, `0.0.0.0:8888`.
    public var listenAddress: SocketAddress {
        get { listenAddresses.first ?? ServerOptions.defaultListenAddress }
        set { listenAddresses = [newValue] }
    }

    /// For IPv6 addresses in ``listenAddresses`` (each of them): serve IPv6 clients only.
    /// IPv4 addresses are not affected.
    public var ipv6Only: Bool
    /// Serve UDP. Default true.
    public var enableUDP: Bool
    /// Serve TCP on the same address and port. Default true.
    public var enableTCP: Bool
    /// Forget UDP ids silent this long. Default 60 s.
    public var udpExpiry: Duration
    /// Drop TCP connections silent this long. Default 30 s.
    public var tcpIdle: Duration
    /// Called with every socket the server creates, before bind.
    public var socketConfigure: SocketConfigure?
    /// Authenticated ids (SECURITY.md): nil (the default) serves plain v1. With a secret (at
    /// least 16 bytes) the server serves only requests signed with the credential of their
    /// id (``Credential/derive(secret:id:)``), fresh, and never the same twice.
    public var secret: [UInt8]?
    /// Isync/Rsync per second from one source address (IPv6: its /64), and the burst.
    /// Default 20 and 40; `UInt32.max`: no limit.
    public var syncRate: UInt32
    public var syncBurst: UInt32
    /// Fsync/Redirect the server sends toward one id per second, and the burst. Default 10
    /// and 20; `UInt32.max`: no limit.
    public var fsyncRate: UInt32
    public var fsyncBurst: UInt32
    /// TCP connections at once, in all and from one source address. Default 65536 and 256.
    public var maxTCPConnections: UInt32
    public var maxTCPConnectionsPerAddress: UInt32
    /// Requests whose id or target id is longer (bytes) are dropped. Default 255
    /// (`RNDZ_MAX_ID_LEN`, the longest id the clients send).
    public var maxIDLength: UInt32
    /// UDP worker threads (SO_REUSEPORT sockets); 0 (the default): one per core.
    public var workers: UInt32 = 0
    /// UDP ids the server holds at most (about). Default 1,000,000.
    public var maxPeers: UInt64
    /// With a secret: how far a request's timestamp may be from the server's clock. Default 30 s.
    public var authWindow: Duration
    /// The relay (`rndz.h`, `relay_addr`; SECURITY.md, "Relay"): nil (the default) for none,
    /// or the address (port 0: any) where the server relays UDP and TCP between the two peers
    /// of a connect that no direct path serves. Only peers the server paired, holding its
    /// token, join a session; it forwards only between their two addresses.
    public var relayAddress: SocketAddress?
    /// Relay sessions at once. Default 1024.
    public var relayMaxSessions: UInt32
    /// Bytes per second per relay session. Default 1 MiB/s.
    public var relayRate: UInt32
    /// Bytes per second through the relay in all. Default 64 MiB/s.
    public var relayTotalRate: UInt32
    /// A relay session with no traffic this long ends. Default 60 s.
    public var relayIdle: Duration

    /// The C library's default listen address (`0.0.0.0:8888`).
    static let defaultListenAddress: SocketAddress = {
        var o = rndz_server_options()
        rndz_server_options_init(&o)
        var def = sockaddr_storage()
        let rc = rndz_addr_parse(o.listen_addr, &def, nil)
        precondition(rc == 0, "the C default listen address does not parse")
        // The C default is numeric and IPv4 or IPv6, so the conversion cannot fail.
        return try! SocketAddress(def)
    }()

    /// The defaults, optionally with another listen address.
    public init(listenAddress: SocketAddress? = nil) {
        self.init(listenAddresses: [listenAddress ?? ServerOptions.defaultListenAddress])
    }

    /// The defaults, serving on `listenAddresses` (see ``listenAddresses``).
    public init(listenAddresses: [SocketAddress]) {
        var o = rndz_server_options()
        rndz_server_options_init(&o)
        self.listenAddresses = listenAddresses
        self.ipv6Only = o.ipv6_only != 0
        self.enableUDP = o.enable_udp != 0
        self.enableTCP = o.enable_tcp != 0
        self.udpExpiry = .milliseconds(o.udp_expiry_ms)
        self.tcpIdle = .milliseconds(o.tcp_idle_ms)
        self.socketConfigure = nil
        self.secret = nil
        self.syncRate = o.sync_rate
        self.syncBurst = o.sync_burst
        self.fsyncRate = o.fsync_rate
        self.fsyncBurst = o.fsync_burst
        self.maxTCPConnections = o.max_tcp_conns
        self.maxTCPConnectionsPerAddress = o.max_tcp_conns_per_ip
        self.maxIDLength = o.max_id_len
        self.maxPeers = o.max_peers
        self.authWindow = .milliseconds(o.auth_window_ms)
        self.relayAddress = nil
        self.relayMaxSessions = o.relay_max_sessions
        self.relayRate = o.relay_rate
        self.relayTotalRate = o.relay_total_rate
        self.relayIdle = .milliseconds(o.relay_idle_ms)
    }

    /// Calls `body` with the C form. Strings live until `body` returns. One address goes to C
    /// as `listen_addr`, several as `listen_addrs`.
    func withC<R>(
        _ box: SocketConfigBox?, _ body: (UnsafePointer<rndz_server_options>) -> R
    ) throws(RndzError) -> R {
        guard (1...ServerOptions.maxListenAddresses).contains(listenAddresses.count) else {
            throw .invalidArgument
        }
        var o = rndz_server_options()
        rndz_server_options_init(&o)
        o.ipv6_only = ipv6Only ? 1 : 0
        o.enable_udp = enableUDP ? 1 : 0
        o.enable_tcp = enableTCP ? 1 : 0
        o.udp_expiry_ms = cMilliseconds(udpExpiry)
        o.tcp_idle_ms = cMilliseconds(tcpIdle)
        o.sync_rate = max(1, syncRate)
        o.sync_burst = max(1, syncBurst)
        o.fsync_rate = max(1, fsyncRate)
        o.fsync_burst = max(1, fsyncBurst)
        o.max_tcp_conns = max(1, maxTCPConnections)
        o.max_tcp_conns_per_ip = max(1, maxTCPConnectionsPerAddress)
        o.max_id_len = max(1, maxIDLength)
        o.workers = workers
        o.max_peers = max(1, maxPeers)
        o.auth_window_ms = cMilliseconds(authWindow)
        o.relay_max_sessions = max(1, relayMaxSessions)
        o.relay_rate = max(1, relayRate)
        o.relay_total_rate = max(1, relayTotalRate)
        o.relay_idle_ms = cMilliseconds(relayIdle)
        if let box {
            o.sock_config = SocketConfigBox.trampoline
            o.sock_config_user = box.user
        }
        let addrs: [UnsafeMutablePointer<CChar>?] = listenAddresses.map { strdup($0.description) }
        defer { for p in addrs { free(p) } }
        guard !addrs.contains(where: { $0 == nil }) else { throw RndzError(errno: ENOMEM) }
        let caddrs = addrs.map { UnsafePointer($0) }
        let crelay = relayAddress.map { strdup($0.description) }
        defer { if let crelay { free(crelay) } }
        if crelay == .some(nil) { throw RndzError(errno: ENOMEM) }
        o.relay_addr = crelay.map { UnsafePointer($0) } ?? nil
        return caddrs.withUnsafeBufferPointer { ap in
            if caddrs.count == 1 {
                o.listen_addr = caddrs[0]
            } else {
                o.listen_addrs = ap.baseAddress
                o.n_listen_addrs = caddrs.count
            }
            guard let secret else { return body(&o) }
            // An empty array has no address: C must still see a (too short) secret.
            return (secret.isEmpty ? [0] : secret).withUnsafeBufferPointer { sp in
                o.secret = sp.baseAddress
                o.secret_len = secret.count
                return body(&o)
            }
        }
    }
}

extension ClientOptions {
    /// Runs one of the C connects (`rndz_udp_connect_info`, `rndz_tcp_connect_info`) with
    /// these options: the connected fd (the caller owns it), the peer's address and what the
    /// connect found. The fd is closed again if the address cannot be represented.
    func connect(
        to target: String,
        _ call: (UnsafePointer<rndz_client_options>, UnsafePointer<CChar>,
                 UnsafeMutablePointer<rndz_peer_info>) -> Int32
    ) throws(RndzError) -> (fd: Int32, peer: SocketAddress, info: rndz_peer_info) {
        if target.utf8.contains(0) { throw .badID }
        let box = socketConfigure.map(SocketConfigBox.init)
        var info = rndz_peer_info()
        let fd = try withC(box) { (o) throws(RndzError) in
            withExtendedLifetime(box) { call(o, target, &info) }
        }
        _ = try check(fd)
        let peer = try cleaningUp({ close(fd) }) { () throws(RndzError) in try SocketAddress(info.addr) }
        return (fd, peer, info)
    }
}

/// Options of a listener or connector, UDP or TCP. Defaults are the C library's
/// (`rndz_client_options_init`).
public struct ClientOptions: Sendable {
    /// Our id: 1 to 255 bytes of UTF-8.
    public var id: String
    /// The rendezvous servers, `host:port` (host names are resolved). At least one.
    public var servers: [String]
    /// The local address to bind; nil: any address, port chosen by the system, of the
    /// family that fits the servers.
    public var localAddress: SocketAddress?
    /// Listener: how often to ping the servers (jittered by +-20%, capped at 25 s because
    /// Linux conntrack forgets one-way UDP flows after 30 s). Default 10 s.
    public var keepalive: Duration
    /// UDP connector: the longest wait before asking the servers again. Rounds start at
    /// 200 ms and double up to this. Default 1 s.
    public var round: Duration
    /// Connector: how long to try before failing with ``RndzError/timedOut`` (TCP: the whole
    /// connect, server and peer). Default 10 s.
    public var timeout: Duration
    /// Called with every socket rndz creates, before bind.
    public var socketConfigure: SocketConfigure?
    /// Our id's credential, for servers started with a secret: every request to the servers
    /// then carries a proof (v1 servers skip it). nil (the default): unsigned.
    public var credential: Credential?
    /// TCP: the cap on the retransmission timeout that connections keep once rndz hands them
    /// over (`TCP_RTO_MAX_MS`, Linux 6.15 and later; ignored before). While connecting rndz
    /// always caps it at 1 s. nil (the default): the kernel's default cap (120 s). 1 to
    /// 120 s: data lost early is resent at least this often, and a connection whose path
    /// died gives up sooner too (15 s with 1 s). A stream closed with data not yet
    /// acknowledged is then dropped by the kernel once its RTO reaches the cap: let the peer
    /// close first (`rndz.h`, `tcp_rto_max_ms`).
    public var tcpRetransmitCap: Duration?
    /// Whether a connect may go through the server's relay (`rndz.h`, `relay`).
    public var relay: RelayMode
    /// With ``RelayMode/auto``: join the relay when no direct path verified this long after
    /// the peer was found. Default 2 s.
    public var relayAfter: Duration
    /// UDP listener: ask the IPv4 default gateway for a mapping of the shared port (PCP, then
    /// NAT-PMP), keep it, and advertise it to connectors (`rndz.h`, `port_mapping`). Off by
    /// default.
    public var portMapping = false
    /// Server sets: of ``servers`` (a host name counts once per address its DNS answer
    /// holds), a listener registers with the K that rendezvous hashing of its id ranks first,
    /// and a connector asks those for it; a server that is down is replaced by the next of the
    /// ranking until it is back (`rndz.h`, `servers_per_id`; README, "Server sets"). All of
    /// them when there are no more than K. Default 2.
    public var serversPerID = 2

    /// When a connect uses the rendezvous server's relay (a server with
    /// ``ServerOptions/relayAddress``; both peers must allow it, and a v1 peer or server
    /// never relays).
    public enum RelayMode: Sendable, Hashable {
        /// Direct first; the relay when no direct path verified within ``relayAfter``.
        case auto
        /// Direct paths only.
        case never
        /// The relay at once (a direct path is known to be impossible).
        case only
    }

    /// Options for `id`, talking to `servers`, with the library's defaults otherwise.
    public init(id: String, servers: [String]) {
        var o = rndz_client_options()
        rndz_client_options_init(&o)
        self.id = id
        self.servers = servers
        self.localAddress = nil
        self.keepalive = .milliseconds(o.keepalive_ms)
        self.round = .milliseconds(o.round_ms)
        self.timeout = .milliseconds(o.timeout_ms)
        self.socketConfigure = nil
        self.credential = nil
        self.tcpRetransmitCap = nil
        self.relay = .auto
        self.relayAfter = .milliseconds(o.relay_after_ms)
    }

    /// Calls `body` with the C form. Strings live until `body` returns.
    func withC<R>(
        _ box: SocketConfigBox?,
        _ body: (UnsafePointer<rndz_client_options>) throws(RndzError) -> R
    ) throws(RndzError) -> R {
        // C strings end at the first NUL: refuse what would be silently truncated.
        if id.utf8.contains(0) { throw .badID }
        if servers.contains(where: { $0.utf8.contains(0) }) { throw .badAddress }
        var o = rndz_client_options()
        rndz_client_options_init(&o)
        o.keepalive_ms = cMilliseconds(keepalive)
        o.round_ms = cMilliseconds(round)
        o.timeout_ms = cMilliseconds(timeout)
        if let cap = tcpRetransmitCap { o.tcp_rto_max_ms = cMilliseconds(cap) }
        o.relay = switch relay {
        case .auto: RNDZ_RELAY_AUTO
        case .never: RNDZ_RELAY_NEVER
        case .only: RNDZ_RELAY_ONLY
        }
        o.relay_after_ms = cMilliseconds(relayAfter)
        o.port_mapping = portMapping ? 1 : 0
        o.servers_per_id = UInt32(clamping: max(serversPerID, 1))
        if let box {
            o.sock_config = SocketConfigBox.trampoline
            o.sock_config_user = box.user
        }
        let cid = strdup(id)
        let cservers: [UnsafePointer<CChar>?] = servers.map { UnsafePointer(strdup($0)) }
        let clocal = localAddress.map { strdup($0.description) }
        defer {
            free(cid)
            for p in cservers { free(UnsafeMutablePointer(mutating: p)) }
            if let clocal { free(clocal) }
        }
        guard cid != nil, !cservers.contains(where: { $0 == nil }), clocal != .some(nil) else {
            throw RndzError(errno: ENOMEM)
        }
        o.id = UnsafePointer(cid)
        o.local_addr = clocal.map { UnsafePointer($0) } ?? nil
        o.n_servers = cservers.count
        return try cservers.withUnsafeBufferPointer { (sp) throws(RndzError) -> R in
            o.servers = sp.baseAddress
            guard let credential else { return try body(&o) }
            return try credential.bytes.withUnsafeBufferPointer { (cp) throws(RndzError) -> R in
                o.credential = cp.baseAddress
                return try body(&o)
            }
        }
    }
}

/// A duration for a C option, where 0 means "the default": at least 1 ms.
private func cMilliseconds(_ d: Duration) -> UInt32 {
    UInt32(max(1, d.clampedMilliseconds()))
}
