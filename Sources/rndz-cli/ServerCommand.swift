// ServerCommand.swift: rndz-cli server, and the metrics endpoint it serves.
import Dispatch
import Rndz
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// MARK: - server

let serverCommand = Command(
    name: "server",
    summary: "run a rendezvous server until SIGINT or SIGTERM",
    usage: "rndz-cli server [--listen-addr ADDR ...] [--ipv6-only] [--secret-file FILE] [--relay-addr ADDR] [--metrics-addr ADDR]",
    details: """
        Serves the rndz v1 protocol on ADDR, UDP and TCP, until SIGINT or SIGTERM.
        --listen-addr may be given up to \(ServerOptions.maxListenAddresses) times: one server on every ADDR, one
        table of ids (e.g. 0.0.0.0:8888 and [::]:8888 with --ipv6-only, or two
        addresses of a multi-homed host); with port 0 the first gets a free port and
        the others with port 0 the same one. Every UDP request is answered from the
        address it was sent to, also on 0.0.0.0 or [::]. Prints "listening on ADDR"
        (an address actually bound) on stdout for each, in order, once ready.
        With --secret-file, ids are authenticated: the server serves only requests
        signed with the credential of their id (see the credential command and
        SECURITY.md); without it, any v1 client is served.
        With --relay-addr, the server also relays, UDP and TCP on ADDR, between the
        two peers of a connect that no direct path serves (both must allow it), and
        prints "relay on ADDR" once ready. Relayed bytes cost the server bandwidth:
        see SECURITY.md, "Relay", for the limits and what they cost.
        With --metrics-addr, GET /metrics on ADDR answers the counters in the
        Prometheus text format (rndz_udp_peers: UDP ids registered now; counters end
        in _total); prints "metrics on http://ADDR/metrics" once ready.
        """,
    flags: [
        Flag("listen-addr", value: "ADDR",
             "address to serve on (repeatable; default 0.0.0.0:8888; port 0: any)"),
        Flag("ipv6-only", "IPv6 addresses serve IPv6 clients only (not IPv4-mapped)"),
        Flag("secret-file", value: "FILE", "authenticate ids with the secret in FILE (16+ bytes)"),
        Flag("relay-addr", value: "ADDR", "relay between peers no direct path serves, on ADDR (UDP and TCP; port 0: any)"),
        Flag("metrics-addr", value: "ADDR", "serve the counters on http://ADDR/metrics (Prometheus text format; port 0: any)"),
    ] + serverLimits.map { Flag($0.name, value: "N", "\($0.help) (default \($0.shown(ServerOptions())))") },
    run: runServer)

/// Every limit of the C server options as a flag (rndz.h, SECURITY.md "Limits", "Relay").
struct ServerLimit: Sendable {
    let name: String
    let help: String
    let set: @Sendable (inout ServerOptions, UInt32) -> Void
    let shown: @Sendable (ServerOptions) -> String
}

func ms(_ d: Duration) -> UInt32 { UInt32(clamping: milliseconds(d)) }

let serverLimits: [ServerLimit] = [
    .init(name: "workers", help: "UDP worker threads, 0: one per core", set: { $0.workers = $1 },
          shown: { "\($0.workers)" }),
    .init(name: "max-peers", help: "UDP ids held at most", set: { $0.maxPeers = UInt64($1) },
          shown: { "\($0.maxPeers)" }),
    .init(name: "udp-expiry-ms", help: "forget UDP ids silent this long", set: { $0.udpExpiry = .milliseconds($1) },
          shown: { "\(ms($0.udpExpiry))" }),
    .init(name: "tcp-idle-ms", help: "drop TCP connections silent this long", set: { $0.tcpIdle = .milliseconds($1) },
          shown: { "\(ms($0.tcpIdle))" }),
    .init(name: "sync-rate", help: "Isync/Rsync a second from one source address", set: { $0.syncRate = $1 },
          shown: { "\($0.syncRate)" }),
    .init(name: "sync-burst", help: "... and the burst allowed", set: { $0.syncBurst = $1 },
          shown: { "\($0.syncBurst)" }),
    .init(name: "fsync-rate", help: "Fsync/Redirect a second toward one id", set: { $0.fsyncRate = $1 },
          shown: { "\($0.fsyncRate)" }),
    .init(name: "fsync-burst", help: "... and the burst allowed", set: { $0.fsyncBurst = $1 },
          shown: { "\($0.fsyncBurst)" }),
    .init(name: "max-tcp-conns", help: "TCP connections open at once", set: { $0.maxTCPConnections = $1 },
          shown: { "\($0.maxTCPConnections)" }),
    .init(name: "max-tcp-conns-per-ip", help: "TCP connections from one source address",
          set: { $0.maxTCPConnectionsPerAddress = $1 }, shown: { "\($0.maxTCPConnectionsPerAddress)" }),
    .init(name: "max-id-len", help: "longest id taken, bytes", set: { $0.maxIDLength = $1 },
          shown: { "\($0.maxIDLength)" }),
    .init(name: "auth-window-ms", help: "with a secret: the clock skew a proof may have",
          set: { $0.authWindow = .milliseconds($1) }, shown: { "\(ms($0.authWindow))" }),
    .init(name: "relay-max-sessions", help: "relay sessions at once", set: { $0.relayMaxSessions = $1 },
          shown: { "\($0.relayMaxSessions)" }),
    .init(name: "relay-rate", help: "relay bytes a second per session", set: { $0.relayRate = $1 },
          shown: { "\($0.relayRate)" }),
    .init(name: "relay-total-rate", help: "relay bytes a second in all, per transport",
          set: { $0.relayTotalRate = $1 }, shown: { "\($0.relayTotalRate)" }),
    .init(name: "relay-idle-ms", help: "end relay sessions silent this long",
          set: { $0.relayIdle = .milliseconds($1) }, shown: { "\(ms($0.relayIdle))" }),
]

@Sendable func runServer(_ f: ParsedFlags, _ v: Verbosity) -> Int32 {
    var opts = ServerOptions()
    for limit in serverLimits {
        guard let text = f.last(limit.name) else { continue }
        guard let n = UInt32(text), n > 0 || limit.name == "workers" else {
            v.error("bad --\(limit.name) '\(text)': a whole number above 0 (see 'rndz-cli server --help')")
            return ExitCode.usage
        }
        limit.set(&opts, n)
    }
    let texts = f.all("listen-addr")
    if texts.count > ServerOptions.maxListenAddresses {
        v.error("too many --listen-addr (\(texts.count)): at most \(ServerOptions.maxListenAddresses)")
        return ExitCode.usage
    }
    if !texts.isEmpty {
        var addrs: [SocketAddress] = []
        for text in texts {
            do {
                addrs.append(try SocketAddress.resolve(text))
            } catch {
                v.error("bad --listen-addr '\(text)': \(error)")
                return ExitCode.usage
            }
        }
        opts.listenAddresses = addrs
    }
    if f.has("ipv6-only") {
        guard opts.listenAddresses.contains(where: { $0.family == .ipv6 }) else {
            v.error("--ipv6-only needs an IPv6 --listen-addr, e.g. [::]:8888")
            return ExitCode.usage
        }
        opts.ipv6Only = true
    }
    if let text = f.last("relay-addr") {
        do {
            opts.relayAddress = try SocketAddress(parsing: text)
        } catch {
            v.error("bad --relay-addr '\(text)': \(error)")
            return ExitCode.usage
        }
    }
    var metricsAddr: SocketAddress?
    if let text = f.last("metrics-addr") {
        do {
            metricsAddr = try SocketAddress(parsing: text)
        } catch {
            v.error("bad --metrics-addr '\(text)': \(error)")
            return ExitCode.usage
        }
    }
    let wanted = opts.listenAddresses.map(\.description).joined(separator: ", ")
    if let path = f.last("secret-file") {
        switch readSecret(path) {
        case .success(let secret): opts.secret = secret
        case .failure(let e):
            v.error(e.message)
            return ExitCode.usage
        }
        v.info("ids are authenticated (secret from \(path))")
    }
    let server: RndzServer
    do {
        server = try RndzServer(options: opts)
    } catch {
        v.error("cannot listen on \(wanted): \(error)")
        return ExitCode.failure
    }
    var metrics: MetricsEndpoint?
    if let metricsAddr {
        do {
            metrics = try MetricsEndpoint(at: metricsAddr, server: server, v)
        } catch {
            v.error("cannot serve metrics on \(metricsAddr): \(error)")
            return ExitCode.failure
        }
    }
    let stop = StopSignal(then: { server.stop() })
    for a in server.localAddresses { printOut("listening on \(a)") }
    if let r = server.relayAddress { printOut("relay on \(r)") }
    if let m = metrics {
        printOut("metrics on http://\(m.address)/metrics")
        m.start()
    }
    defer { metrics?.close() }
    let bound = server.localAddresses.map(\.description).joined(separator: ", ")
    do {
        try server.run()
    } catch {
        v.error("server failed: \(error)")
        return ExitCode.failure
    }
    let s = server.stats
    v.info(
        "stopped\(stop.isSet ? " by signal" : ""): \(s.udpReceived) datagrams in, \(s.udpSent) out, "
            + "\(s.udpMalformed) malformed, \(s.udpPeers) peers registered; refused: "
            + "\(s.authFailed) unauthenticated, \(s.authReplayed) replayed, "
            + "\(s.syncLimited + s.fsyncLimited) over a rate, \(s.tcpRefused) TCP connections "
            + "(served on \(bound))"
            + (server.relayAddress == nil ? "" : "; relay: \(s.relayForwarded) forwarded "
                + "(\(s.relayBytes) bytes), \(s.relayForeign) foreign, \(s.relayRefused) joins "
                + "refused, \(s.relayLimited) over a rate"))
    return ExitCode.ok
}

/// The server's counters over HTTP: GET /metrics answers them in the Prometheus text
/// format; anything else gets 404. One request per connection, read for at most 2 s and 8 KiB:
/// a scraper, not a web server. Served on a thread of its own (a blocking accept loop).
final class MetricsEndpoint: @unchecked Sendable {
    // Unchecked: fd is set once; close() only shuts the socket down, which ends the loop.
    let fd: Int32
    let address: SocketAddress
    private let server: RndzServer
    private let v: Verbosity

    init(at addr: SocketAddress, server: RndzServer, _ v: Verbosity) throws(RndzError) {
        let family = addr.family == .ipv4 ? AF_INET : AF_INET6
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw RndzError(errno: errno) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let rc = addr.withSockAddr { bind(fd, $0, $1) }
        if rc < 0 || listen(fd, 16) < 0 {
            let e = errno
            Glibc.close(fd)
            throw RndzError(errno: e)
        }
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &ss) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        self.fd = fd
        self.address = (try? SocketAddress(ss)) ?? addr
        self.server = server
        self.v = v
    }

    func start() {
        DispatchQueue(label: "rndz-cli.metrics").async { [self] in
            while true {
                let c = accept(fd, nil, nil)
                if c < 0 {
                    if errno == EINTR || errno == ECONNABORTED { continue }
                    return  // closed
                }
                answer(c)
                Glibc.close(c)
            }
        }
    }

    private func answer(_ c: Int32) {
        var tv = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var req = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 2048)
        while req.count < 8192 {
            let n = buf.withUnsafeMutableBytes { recv(c, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            req += buf[0..<n]
            if req.count >= 4, req.suffix(4) == [13, 10, 13, 10] { break }
        }
        let line = String(decoding: req.prefix { $0 != 13 && $0 != 10 }, as: UTF8.self)
        let parts = line.split(separator: " ")
        let ok = parts.count >= 2 && parts[0] == "GET" && (parts[1] == "/metrics" || parts[1].hasPrefix("/metrics?"))
        let body = ok ? server.metricsText : "not found: GET /metrics\n"
        let head = (ok ? "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            : "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n")
            + "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n"
        var out = Array((head + body).utf8)[...]
        while !out.isEmpty {
            let n = out.withUnsafeBytes { send(c, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return }
            out = out.dropFirst(n)
        }
        v.debug("metrics: \(line)")
    }

    /// Ends the accept loop.
    func close() { shutdown(fd, Int32(SHUT_RDWR)) }
}
