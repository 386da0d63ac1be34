// rndz-cli: the command-line tool of rndz. A table of subcommands, as wireguard-tools' wg:
//
//   rndz-cli server [--listen-addr ADDR ...] [--ipv6-only] [--secret-file FILE]
//   rndz-cli client --id ID --server-addr ADDR [--server-addr ADDR ...] [--remote-peer ID] [--tcp]
//                   [--credential-file FILE]
//   rndz-cli credential --secret-file FILE --id ID
//
// Results go to stdout, logs and errors to stderr. Exit status: 0 success, 1 failure,
// 2 misuse (usage printed on stderr).
import Dispatch
import Rndz
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// MARK: - Output

/// Writes all of `text` to `fd`, unbuffered (so a line on stdout is visible at once to a
/// script reading a pipe).
func writeAll(_ fd: Int32, _ text: String) {
    var text = text
    text.withUTF8 { buf in
        var off = 0
        while off < buf.count {
            let n = write(fd, buf.baseAddress! + off, buf.count - off)
            if n < 0 {
                if errno == EINTR { continue }
                return
            }
            off += n
        }
    }
}

func printOut(_ line: String) { writeAll(1, line + "\n") }
func printErr(_ line: String) { writeAll(2, line + "\n") }

/// The verbosity of the tool's own messages (the library's follows the same level).
struct Verbosity: Sendable {
    var level: LogLevel

    /// Errors: always shown.
    func error(_ msg: String) { printErr("rndz-cli: \(msg)") }
    /// Events worth seeing by default (new peers, warnings): hidden by --quiet.
    func notice(_ msg: String) { if level >= .warn { printErr("rndz-cli: \(msg)") } }
    /// Details: shown with -v.
    func info(_ msg: String) { if level >= .info { printErr("rndz-cli: \(msg)") } }
    /// Per-datagram details: shown with -vv.
    func debug(_ msg: String) { if level >= .debug { printErr("rndz-cli: \(msg)") } }
}

enum ExitCode {
    static let ok: Int32 = 0
    static let failure: Int32 = 1
    static let usage: Int32 = 2
}

// MARK: - Command table and option parsing

struct Command: Sendable {
    let name: String
    let summary: String
    let usage: String
    let details: String
    let flags: [Flag]
    let run: @Sendable (_ opts: ParsedFlags, _ v: Verbosity) -> Int32
}

struct Flag: Sendable {
    let long: String
    let short: Character?
    let value: String?  // the value's placeholder; nil for a switch
    let help: String

    init(_ long: String, short: Character? = nil, value: String? = nil, _ help: String) {
        self.long = long
        self.short = short
        self.value = value
        self.help = help
    }
}

/// Flags accepted before the command and by every command.
let globalFlags = [
    Flag("verbose", short: "v", "more log output on stderr (repeat for more: -vv, -vvv)"),
    Flag("quiet", short: "q", "only errors on stderr"),
    Flag("help", short: "h", "show this help"),
]

struct UsageError: Error {
    let message: String
}

/// Flags as given, in order; switches have a nil value.
struct ParsedFlags: Sendable {
    var items: [(name: String, value: String?)] = []

    func has(_ name: String) -> Bool { items.contains { $0.name == name } }
    func count(_ name: String) -> Int { items.filter { $0.name == name }.count }
    func last(_ name: String) -> String? { items.last { $0.name == name }?.value }
    func all(_ name: String) -> [String] { items.filter { $0.name == name }.compactMap(\.value) }
}

/// Parses `--name value`, `--name=value`, `-x value`, and bundled switches (`-vv`). Stops at
/// the first argument that is not a flag if `stopAtPositional`, else rejects it.
func parseFlags(
    _ args: inout ArraySlice<String>, _ flags: [Flag], stopAtPositional: Bool
) throws(UsageError) -> ParsedFlags {
    var out = ParsedFlags()
    while let arg = args.first {
        if arg == "--" {
            args.removeFirst()
            if let extra = args.first { throw UsageError(message: "unexpected argument '\(extra)'") }
            break
        }
        if arg.hasPrefix("--") {
            args.removeFirst()
            var name = String(arg.dropFirst(2))
            var inline: String? = nil
            if let eq = name.firstIndex(of: "=") {
                inline = String(name[name.index(after: eq)...])
                name = String(name[..<eq])
            }
            guard let f = flags.first(where: { $0.long == name }) else {
                throw UsageError(message: "unknown option '--\(name)'")
            }
            if f.value != nil {
                if let inline {
                    out.items.append((name, inline))
                } else if let v = args.first {
                    args.removeFirst()
                    out.items.append((name, v))
                } else {
                    throw UsageError(message: "option '--\(name)' needs a value")
                }
            } else {
                if inline != nil { throw UsageError(message: "option '--\(name)' takes no value") }
                out.items.append((name, nil))
            }
        } else if arg.hasPrefix("-") && arg.count > 1 {
            args.removeFirst()
            var chars = Substring(arg.dropFirst())
            while let c = chars.first {
                chars = chars.dropFirst()
                guard let f = flags.first(where: { $0.short == c }) else {
                    throw UsageError(message: "unknown option '-\(c)'")
                }
                if f.value != nil {
                    if !chars.isEmpty {
                        out.items.append((f.long, String(chars)))
                    } else if let v = args.first {
                        args.removeFirst()
                        out.items.append((f.long, v))
                    } else {
                        throw UsageError(message: "option '-\(c)' needs a value")
                    }
                    break
                }
                out.items.append((f.long, nil))
            }
        } else {
            if stopAtPositional { break }
            throw UsageError(message: "unexpected argument '\(arg)'")
        }
    }
    return out
}

func flagHelp(_ flags: [Flag]) -> String {
    flags.map { f in
        var left = f.short.map { "-\($0), " } ?? "    "
        left += "--\(f.long)"
        if let v = f.value { left += " \(v)" }
        let pad = max(1, 28 - left.count)
        return "  " + left + String(repeating: " ", count: pad) + f.help
    }.joined(separator: "\n")
}

func mainUsage() -> String {
    var s = """
        usage: rndz-cli [-v|--verbose]... [-q|--quiet] <command> [<options>]

        rndz: NAT hole punching through a rendezvous server (protocol of rndz 0.1.5).

        commands:

        """
    for c in commands { s += "  " + c.name.padding(12) + c.summary + "\n" }
    s += """
          help        show this help, or a command's: rndz-cli help <command>
          version     show the version

        options:
          -V, --version               show the version
        \(flagHelp(globalFlags))

        The log level is also read from RNDZ_LOG (error|warn|info|debug|trace).
        """
    return s
}

func commandUsage(_ c: Command) -> String {
    "usage: \(c.usage)\n\n\(c.details)\n\noptions:\n\(flagHelp(c.flags + globalFlags))"
}

extension String {
    func padding(_ n: Int) -> String { self + String(repeating: " ", count: max(1, n - count)) }
}

// MARK: - Signals

/// A flag one thread sets and others read.
final class AtomicFlag: Sendable {
    private let value = Atomic<Bool>(false)
    var isSet: Bool { value.load(ordering: .acquiring) }
    func set() { value.store(true, ordering: .releasing) }
}

/// SIGINT and SIGTERM stay blocked in every thread from the start of `main`, before any
/// thread exists (threads inherit the mask), so one that arrives at any moment waits as
/// pending until a `StopSignal` collects it, never lost and never killing the process
/// half-way. (Setting SIG_IGN and then creating a dispatch source lost a signal that came
/// in between: libdispatch sets up its signalfd asynchronously.)
func blockStopSignals(_ block: Bool = true) {
    var set = sigset_t()
    sigemptyset(&set)
    sigaddset(&set, SIGINT)
    sigaddset(&set, SIGTERM)
    pthread_sigmask(block ? SIG_BLOCK : SIG_UNBLOCK, &set, nil)
}

/// Set by SIGINT / SIGTERM; `then` runs on a dispatch queue when one arrives. Keep it alive
/// while the signals should be handled. The signals are blocked (`blockStopSignals`): the
/// dispatch sources read them from a signalfd, including one already pending.
final class StopSignal {
    private let flag = AtomicFlag()
    private var sources: [any DispatchSourceSignal] = []

    var isSet: Bool { flag.isSet }

    init(then action: @escaping @Sendable () -> Void = {}) {
        for sig in [SIGINT, SIGTERM] {
            let src = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            src.setEventHandler { [flag] in
                flag.set()
                action()
            }
            src.resume()
            sources.append(src)
        }
    }
}

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
    ],
    run: runServer)

@Sendable func runServer(_ f: ParsedFlags, _ v: Verbosity) -> Int32 {
    var opts = ServerOptions()
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

// MARK: - client

let clientCommand = Command(
    name: "client",
    summary: "register and answer peers, or --remote-peer: say hello to a peer",
    usage:
        "rndz-cli client --id ID --server-addr ADDR [--server-addr ADDR ...] [--remote-peer ID] [--tcp] [--local-addr ADDR] [--timeout MS] [--tcp-rto-max MS] [--credential-file FILE] [--no-relay | --relay-only] [--port-mapping]",
    details: """
        Without --remote-peer (listener): registers as ID with every server, prints
        "registered as ID on ADDR" on stdout, and answers peers until SIGINT or
        SIGTERM: over UDP it echoes every datagram back to its sender; with --tcp it
        accepts each peer's connection, reads what the peer sends, answers "hello"
        and closes the connection.
        With --remote-peer PEER (connector): finds PEER through the servers (with
        --tcp: connects to it over TCP), sends "hello", prints "reply from ADDR: TEXT"
        on stdout and exits 0; exits 1 if the peer is not found, cannot be reached,
        or does not answer in time.
        With a server that relays (server --relay-addr), a peer that no direct path
        reaches within 2 s is reached through the relay; the connector's "path to"
        line then says "relay" and the relay's address. --no-relay: direct only;
        --relay-only: through the relay at once. A path found by port prediction
        (one side behind a NAT that maps per destination, with a server on two
        addresses) says "predicted", one through the listener's --port-mapping
        "mapped".
        """,
    flags: [
        Flag("id", value: "ID", "our id (required)"),
        Flag("server-addr", value: "ADDR", "a rendezvous server, host:port (required; repeatable)"),
        Flag("remote-peer", value: "ID", "connect to this peer instead of listening"),
        Flag("tcp", "use TCP instead of UDP"),
        Flag("local-addr", value: "ADDR", "local address to bind (default: any, port chosen)"),
        Flag("timeout", value: "MS", "connector: give up finding the peer, and waiting for its reply, after MS ms"),
        Flag("tcp-rto-max", value: "MS", "with --tcp: the peer connection keeps TCP's retransmission timeout at most MS ms (1000..120000; Linux 6.15+)"),
        Flag("credential-file", value: "FILE", "sign requests with ID's credential (hex, from 'rndz-cli credential')"),
        Flag("no-relay", "never use the server's relay (direct paths only)"),
        Flag("relay-only", "use the server's relay at once (a direct path is known to be impossible)"),
        Flag("port-mapping", "listener: ask the gateway for a mapping of our port (PCP, NAT-PMP) and advertise it"),
    ],
    run: runClient)

@Sendable func runClient(_ f: ParsedFlags, _ v: Verbosity) -> Int32 {
    guard let id = f.last("id") else {
        v.error("client needs --id ID (see 'rndz-cli client --help')")
        return ExitCode.usage
    }
    let servers = f.all("server-addr")
    guard !servers.isEmpty else {
        v.error("client needs at least one --server-addr ADDR (see 'rndz-cli client --help')")
        return ExitCode.usage
    }
    /* a name that does not resolve is the server's problem, not the peer's: say which */
    for s in servers {
        do {
            _ = try SocketAddress.resolve(s)
        } catch {
            v.error("cannot resolve the rendezvous server --server-addr '\(s)': \(error)")
            return ExitCode.failure
        }
    }
    var opts = ClientOptions(id: id, servers: servers)
    if let path = f.last("credential-file") {
        guard let bytes = readFileBytes(path) else {
            v.error("cannot read --credential-file '\(path)': \(String(cString: strerror(errno)))")
            return ExitCode.usage
        }
        guard let cred = Credential(hex: String(decoding: bytes, as: UTF8.self)) else {
            v.error("--credential-file '\(path)' does not hold a credential (64 hex digits)")
            return ExitCode.usage
        }
        opts.credential = cred
    }
    if let text = f.last("local-addr") {
        do {
            opts.localAddress = try SocketAddress(parsing: text)
        } catch {
            v.error("bad --local-addr '\(text)': \(error)")
            return ExitCode.usage
        }
    }
    // As long as the connect may take: under loss a TCP stream whose SYN was retransmitted
    // starts with a 3 s retransmission timeout, so one lost "hello" costs 3 s.
    var replyTimeout = Duration.seconds(10)
    if let text = f.last("timeout") {
        guard let ms = Int64(text), ms > 0 else {
            v.error("bad --timeout '\(text)': a positive number of milliseconds")
            return ExitCode.usage
        }
        opts.timeout = .milliseconds(ms)
        replyTimeout = .milliseconds(ms)
    }
    if let text = f.last("tcp-rto-max") {
        guard let ms = Int64(text), (1000...120_000).contains(ms) else {
            v.error("bad --tcp-rto-max '\(text)': milliseconds from 1000 to 120000")
            return ExitCode.usage
        }
        opts.tcpRetransmitCap = .milliseconds(ms)
    }
    if f.has("no-relay") && f.has("relay-only") {
        v.error("--no-relay and --relay-only exclude each other")
        return ExitCode.usage
    }
    if f.has("no-relay") { opts.relay = .never }
    opts.portMapping = f.has("port-mapping")
    if f.has("relay-only") { opts.relay = .only }
    let tcp = f.has("tcp")
    if let peer = f.last("remote-peer") {
        // A connector has nothing to clean up: SIGINT and SIGTERM end it at once, as usual.
        blockStopSignals(false)
        return tcp
            ? runTCPConnector(opts, peer: peer, replyTimeout: replyTimeout, v)
            : runConnector(opts, peer: peer, replyTimeout: replyTimeout, v)
    }
    return tcp ? runTCPListener(opts, v) : runListener(opts, v)
}

/// A datagram that is a v1 protocol message (e.g. a listener's `Rsync` punch), not peer data.
func isProtocolPacket(_ bytes: [UInt8]) -> WireMessage? {
    (try? WireMessage(request: bytes)) ?? (try? WireMessage(response: bytes))
}

/// Creates a listener with `create` and waits until it is registered (`waitRegistered`),
/// then says so. Returns it, or nil and the exit code (a signal came first: success).
func openListener<L>(
    _ opts: ClientOptions, _ stop: StopSignal, _ v: Verbosity,
    create: (ClientOptions) throws(RndzError) -> L,
    waitRegistered: (L, Duration) throws(RndzError) -> Void,
    localAddress: (L) -> SocketAddress, announce: Bool = true
) -> (L?, Int32) {
    let listener: L
    do {
        listener = try create(opts)
    } catch {
        v.error("cannot register as '\(opts.id)': \(error)")
        return (nil, ExitCode.failure)
    }
    guard awaitRegistration(stop, v, { (t) throws(RndzError) in try waitRegistered(listener, t) }) else {
        return (nil, stop.isSet ? ExitCode.ok : ExitCode.failure)
    }
    if announce { printOut("registered as \(opts.id) on \(localAddress(listener))") }
    return (listener, ExitCode.ok)
}

/// Waits until `waitRegistered` succeeds (the listener pings on), saying so if it takes a
/// while. Returns false if a signal came first or registration failed.
func awaitRegistration(
    _ stop: StopSignal, _ v: Verbosity, _ waitRegistered: (Duration) throws(RndzError) -> Void
) -> Bool {
    let start = ContinuousClock.now
    var warned = false
    while true {
        if stop.isSet { return false }
        do {
            try waitRegistered(.milliseconds(200))
            return true
        } catch .timedOut {
            if !warned && ContinuousClock.now - start > .seconds(5) {
                v.notice("no rendezvous server answered yet; still trying")
                warned = true
            }
        } catch {
            v.error("registration failed: \(error)")
            return false
        }
    }
}

func runListener(_ opts: ClientOptions, _ v: Verbosity) -> Int32 {
    let stop = StopSignal()
    let (opened, code) = openListener(
        opts, stop, v, create: { (o) throws(RndzError) in try UDPListener(options: o) },
        waitRegistered: { (l, t) throws(RndzError) in try l.waitRegistered(timeout: t) }, localAddress: \.localAddress)
    guard let listener = opened else { return code }
    // Each peer gets a socket of its own (direct, or through the server's relay), echoed on
    // its own task; the overlay's async calls do not block the thread pool.
    while !stop.isSet {
        let socket: UDPSocket
        do {
            guard let got = try listener.accept(timeout: .milliseconds(200)) else { continue }
            socket = got
        } catch {
            v.error("accept failed: \(error)")
            return ExitCode.failure
        }
        let p = socket.path
        let rtt = p.rtt.map { ", rtt \($0)" } ?? ""
        v.notice("peer '\(socket.peerID)' connected from \(socket.peer): "
            + (p.relayed ? "through the relay" : p.verified ? "path verified both ways\(rtt)"
                : "v1 peer, unverified"))
        Task.detached { await echoUDPPeer(socket, v) }
    }
    v.info("stopped by signal")
    return ExitCode.ok
}

/// How long a UDP peer may stay silent before the listener forgets it.
let udpPeerIdle = Duration.seconds(60)

/// Echoes every datagram of one peer back to it until it is silent for `udpPeerIdle`.
func echoUDPPeer(_ socket: UDPSocket, _ v: Verbosity) async {
    while true {
        let got: [UInt8]
        do {
            guard let d = try await socket.receive(timeout: udpPeerIdle) else {
                v.info("peer '\(socket.peerID)' silent for \(udpPeerIdle); forgetting it")
                return
            }
            got = d
        } catch .connectionRefused {
            continue  // an ICMP error for an earlier datagram: the peer may come back
        } catch {
            v.notice("peer '\(socket.peerID)': \(error)")
            return
        }
        if let m = isProtocolPacket(got) {
            v.debug("ignored a protocol packet (\(m.command) from '\(m.id)') from \(socket.peer)")
            continue
        }
        v.debug("echo \(got.count) bytes to \(socket.peer)")
        do {
            try await socket.send(got)
        } catch {
            v.notice("echo to \(socket.peer) failed: \(error)")
        }
    }
}

func runConnector(_ opts: ClientOptions, peer: String, replyTimeout: Duration, _ v: Verbosity)
    -> Int32
{
    let socket: UDPSocket
    do {
        socket = try UDPConnector(options: opts).connect(to: peer)
    } catch {
        v.error(connectFailure(error, peer: peer, over: "UDP"))
        return ExitCode.failure
    }
    v.info("peer '\(peer)' is at \(socket.peer); talking from \(socket.localAddress)")
    printPath(to: peer, at: socket.peer, socket.path, proof: "verified both ways")
    let hello = Array("hello".utf8)
    let deadline = ContinuousClock.now + replyTimeout
    // Send "hello" again every second until the peer answers: the first one may arrive before
    // the peer's side of the hole is open.
    let resend = Duration.seconds(1)
    var nextSend = ContinuousClock.now
    while ContinuousClock.now < deadline {
        if ContinuousClock.now >= nextSend {
            do {
                try socket.send(hello)
            } catch {
                v.debug("send to \(socket.peer): \(error)")
            }
            nextSend = ContinuousClock.now + resend
        }
        let wait = min(nextSend, deadline) - ContinuousClock.now
        let reply: [UInt8]
        do {
            guard let got = try socket.receive(timeout: max(wait, .milliseconds(1))) else { continue }
            reply = got
        } catch .connectionRefused {
            v.debug("\(socket.peer) refused a datagram; retrying")
            continue
        } catch {
            v.error("receive from \(socket.peer) failed: \(error)")
            return ExitCode.failure
        }
        if let m = isProtocolPacket(reply) {
            v.debug("ignored a protocol packet (\(m.command) from '\(m.id)')")
            continue
        }
        printOut("reply from \(socket.peer): \(String(decoding: reply, as: UTF8.self))")
        return ExitCode.ok
    }
    v.error("no reply from peer '\(peer)' at \(socket.peer) in time")
    return ExitCode.failure
}

// MARK: - client --tcp

/// How long the TCP listener waits for a peer to send something before it gives up on it.
let tcpPeerReadTimeout = Duration.seconds(20)

func runTCPListener(_ opts: ClientOptions, _ v: Verbosity) -> Int32 {
    let stop = StopSignal()
    let (opened, code) = openListener(
        opts, stop, v, create: { (o) throws(RndzError) in try TCPListener(options: o) },
        waitRegistered: { (l, t) throws(RndzError) in try l.waitRegistered(timeout: t) }, localAddress: \.localAddress)
    guard let listener = opened else { return code }
    while !stop.isSet {
        let stream: TCPStream
        do {
            stream = try listener.accept(timeout: .milliseconds(200))
        } catch .timedOut {
            continue
        } catch {
            v.error("accept failed: \(error)")
            return ExitCode.failure
        }
        v.notice("peer \(stream.peer) connected")
        // Each peer on its own task; the overlay's async calls do not block the thread pool.
        Task.detached { await answerTCPPeer(stream, v) }
    }
    listener.close()
    v.info("stopped by signal")
    return ExitCode.ok
}

/// Reads what the peer sends, answers "hello", and closes the connection.
func answerTCPPeer(_ stream: TCPStream, _ v: Verbosity) async {
    defer { stream.close() }
    do {
        guard let got = try await stream.receive(timeout: tcpPeerReadTimeout) else {
            v.info("peer \(stream.peer) closed the connection without sending")
            return
        }
        v.debug("received \(got.count) bytes from \(stream.peer); answering hello")
        try await stream.send(Array("hello".utf8))
        // Our end, then wait for the peer's (within the same 20 s): the connection stays ours
        // (not an orphan the kernel may give up on) until the reply is acknowledged.
        try stream.finishSending()
        let deadline = ContinuousClock.now + tcpPeerReadTimeout
        while ContinuousClock.now < deadline {
            do {
                guard try await stream.receive(timeout: deadline - ContinuousClock.now) != nil
                else { return }
            } catch .timedOut {
                break
            }
        }
        v.debug("peer \(stream.peer) did not end the connection in time; closing")
    } catch .timedOut {
        v.notice("peer \(stream.peer) sent nothing in time; closing")
    } catch {
        v.notice("peer \(stream.peer): \(error)")
    }
}

/// What the connector says when the connect fails.
func connectFailure(_ error: RndzError, peer: String, over transport: String) -> String {
    switch error {
    case .notFound: "peer '\(peer)' not found: no rendezvous server knows it"
    case .connectionRefused:
        "the rendezvous server(s) refused the connection: connection refused (no server on that "
            + "TCP port?)"
    case .timedOut: "no answer about peer '\(peer)' from the rendezvous server(s) in time"
    case .peerFailed: "peer '\(peer)' was found but could not be reached over \(transport)"
    default: "cannot connect to peer '\(peer)': \(error)"
    }
}

/// Whole milliseconds of a duration.
func milliseconds(_ d: Duration) -> Int64 {
    d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000
}

/// The connector's "path to ID: [relay |predicted ]ADDR (which candidate, verified or not),
/// rtt, connected in" line on stdout: "relay" and the relay's address for a relayed path,
/// "predicted" for a direct one that port prediction found.
func printPath(to peer: String, at addr: SocketAddress, _ p: PathInfo, proof: String) {
    let rtt = p.rtt.map { "\(milliseconds($0)) ms" } ?? "not measured"
    let via = p.relayed ? "the rendezvous server forwards it"
        : p.advertised ? (p.lan ? "its LAN address" : "an address it advertised")
        : "the address the server saw"
    printOut("path to \(peer): \(p.relayed ? "relay " : p.predicted ? "predicted " : p.mapped ? "mapped " : "")\(addr) (\(via), "
        + "\(p.verified ? proof : "unverified: v1 peer or server")), rtt \(rtt), "
        + "connected in \(milliseconds(p.elapsed)) ms")
}

func runTCPConnector(_ opts: ClientOptions, peer: String, replyTimeout: Duration, _ v: Verbosity)
    -> Int32
{
    let stream: TCPStream
    do {
        stream = try TCPConnector(options: opts).connect(to: peer)
    } catch {
        v.error(connectFailure(error, peer: peer, over: "TCP"))
        return ExitCode.failure
    }
    v.info("connected to peer '\(peer)' at \(stream.peer) from \(stream.localAddress)")
    printPath(to: peer, at: stream.peer, stream.path, proof: "TCP handshake both ways")
    let hello = Array("hello".utf8)
    do {
        try stream.send(hello)
    } catch {
        v.error("send to \(stream.peer) failed: \(error)")
        return ExitCode.failure
    }
    // The reply is a stream of bytes: read until as many as we sent arrived (a v1 peer answers
    // exactly "hello") or the peer closes.
    let deadline = ContinuousClock.now + replyTimeout
    var reply: [UInt8] = []
    var closed = false
    while reply.count < hello.count {
        let left = deadline - ContinuousClock.now
        do {
            guard left > .zero else { break }
            guard let got = try stream.receive(timeout: left) else {
                closed = true
                break
            }
            reply += got
        } catch .timedOut {
            break
        } catch {
            v.error("receive from \(stream.peer) failed: \(error)")
            return ExitCode.failure
        }
    }
    stream.close()
    if reply.isEmpty {
        v.error(closed ? "peer '\(peer)' at \(stream.peer) closed the connection without replying"
                       : "no reply from peer '\(peer)' at \(stream.peer) in time")
        return ExitCode.failure
    }
    printOut("reply from \(stream.peer): \(String(decoding: reply, as: UTF8.self))")
    return ExitCode.ok
}

// MARK: - main

// MARK: - credential

let credentialCommand = Command(
    name: "credential",
    summary: "print the credential of an id under a server secret",
    usage: "rndz-cli credential --secret-file FILE --id ID",
    details: """
        Prints, on stdout, the credential of ID under the secret in FILE (the file
        a server takes with --secret-file): 64 hex digits. Hand it to the holder of
        ID only; they pass it to the client with --credential-file. Anyone holding
        the secret can make every credential: keep it on the servers.
        """,
    flags: [
        Flag("secret-file", value: "FILE", "the server secret (required)"),
        Flag("id", value: "ID", "the id (required)"),
    ],
    run: runCredential)

@Sendable func runCredential(_ f: ParsedFlags, _ v: Verbosity) -> Int32 {
    guard let path = f.last("secret-file"), let id = f.last("id") else {
        v.error("credential needs --secret-file FILE and --id ID (see 'rndz-cli credential --help')")
        return ExitCode.usage
    }
    let secret: [UInt8]
    switch readSecret(path) {
    case .success(let s): secret = s
    case .failure(let e):
        v.error(e.message)
        return ExitCode.usage
    }
    do {
        printOut(try Credential.derive(secret: secret, id: id).hex)
        return ExitCode.ok
    } catch {
        v.error("cannot derive the credential: \(error)")
        return ExitCode.failure
    }
}

/// The bytes of a file, or nil (errno set).
func readFileBytes(_ path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    if fd < 0 { return nil }
    defer { close(fd) }
    var out = [UInt8]()
    var buf = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            return nil
        }
        if n == 0 { return out }
        out += buf[0..<n]
        if out.count > 65536 { return out } // a secret, not a data file
    }
}

/// A server secret from a file: its bytes without trailing newlines (so `echo` or an editor
/// can write it); at least 16 bytes.
func readSecret(_ path: String) -> Result<[UInt8], UsageError> {
    guard var bytes = readFileBytes(path) else {
        return .failure(UsageError(
            message: "cannot read --secret-file '\(path)': \(String(cString: strerror(errno)))"))
    }
    while let last = bytes.last, last == 0x0a || last == 0x0d { bytes.removeLast() }
    guard bytes.count >= 16 else {
        return .failure(UsageError(
            message: "--secret-file '\(path)' holds \(bytes.count) bytes; a secret needs at least 16 "
                + "(e.g. head -c 32 /dev/urandom | base64 > FILE)"))
    }
    return .success(bytes)
}

// MARK: - nat-check

let natCheckCommand = Command(
    name: "nat-check",
    summary: "tell how the NAT in front of this host maps, allocates and filters UDP",
    usage: "rndz-cli nat-check --server-addr ADDR [--server-addr ADDR ...] [--local-addr ADDR] [--json] [--no-port-mapping]",
    details: """
        Asks the rendezvous servers what address they see for one local port (and the
        servers' other addresses, which they name): the same address everywhere is an
        endpoint-independent mapping ("cone"), one per destination an
        endpoint-dependent one ("symmetric"), whose port allocation is then told
        (preserving, sequential with its step, or random). Filtering is tested where
        a server has a second address, hairpinning by a datagram to our own public
        address, and NAT-PMP / PCP by asking the default gateway. Nothing is
        registered. Give two server addresses (or a server on two) to tell the
        mapping. --json prints one JSON object (key "mapping": "endpoint-independent",
        "endpoint-dependent" or "unknown"). Exit status 1 if no server answered.
        """,
    flags: [
        Flag("server-addr", value: "ADDR", "a rendezvous server, host:port (required; repeatable)"),
        Flag("local-addr", value: "ADDR", "local address to check from (default: any, port chosen)"),
        Flag("json", "print one JSON object instead of text"),
        Flag("no-port-mapping", "do not ask the default gateway (NAT-PMP, PCP)"),
        Flag("timeout", value: "MS", "wait at most MS ms (up to 3000) for the servers"),
    ],
    run: runNATCheck)

@Sendable func runNATCheck(_ f: ParsedFlags, _ v: Verbosity) -> Int32 {
    let servers = f.all("server-addr")
    guard !servers.isEmpty else {
        v.error("nat-check needs at least one --server-addr ADDR (see 'rndz-cli nat-check --help')")
        return ExitCode.usage
    }
    var opts = ClientOptions(id: "rndz-nat-check", servers: servers)
    if let text = f.last("local-addr") {
        do {
            opts.localAddress = try SocketAddress(parsing: text)
        } catch {
            v.error("bad --local-addr '\(text)': \(error)")
            return ExitCode.usage
        }
    }
    if let text = f.last("timeout") {
        guard let ms = Int64(text), ms > 0 else {
            v.error("bad --timeout '\(text)': a positive number of milliseconds")
            return ExitCode.usage
        }
        opts.timeout = .milliseconds(ms)
    }
    let report: NATReport
    do {
        report = try checkNAT(options: opts, portMapping: !f.has("no-port-mapping"))
    } catch .timedOut {
        v.error("no rendezvous server answered (\(servers.joined(separator: ", ")))")
        return ExitCode.failure
    } catch {
        v.error("nat check failed: \(error)")
        return ExitCode.failure
    }
    printOut(f.has("json") ? natJSON(report) : natText(report))
    return ExitCode.ok
}

func natAllocationWord(_ a: NATReport.Allocation) -> String {
    switch a {
    case .unknown: "unknown"
    case .preserving: "preserving"
    case .random: "random"
    case .sequential(let step): "sequential, step \(step)"
    }
}

/// Human output, like `tailscale netcheck`: one fact per line.
func natText(_ r: NATReport) -> String {
    var lines = ["NAT check from \(r.local):"]
    for o in r.observations {
        let seen = o.observed.map { "\($0)" } ?? "no answer"
        let rtt = o.rtt.map { " (\(milliseconds($0)) ms)" } ?? ""
        lines.append("  * \(o.server) sees \(seen)\(rtt)")
    }
    let pub = r.publicAddresses.map(\.description).joined(separator: ", ")
    lines.append("  * public address: \(pub.isEmpty ? "unknown" : pub)"
        + (r.behindNAT ? "" : " (this host's own: no NAT)"))
    let mappingNote =
        switch r.mapping {
        case .endpointIndependent: " (one public port for every destination: hole punching works)"
        case .endpointDependent: " (a public port per destination: \"symmetric\")"
        case .unknown: " (ask two server addresses to tell)"
        }
    lines.append("  * mapping: \(r.mapping.rawValue)\(mappingNote)")
    lines.append("  * port allocation: \(natAllocationWord(r.allocation))")
    lines.append("  * filtering: \(r.filtering.rawValue)"
        + (r.filtering == .unknown ? " (needs a server on two addresses)" : ""))
    lines.append("  * hairpinning: " + (r.hairpinning.map { $0 ? "yes" : "no" } ?? "not tested"))
    lines.append("  * port mapping (NAT-PMP, PCP): " + (r.portMapping ?? "not tried"))
    return lines.joined(separator: "\n")
}

func jsonString(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case _ where u.value < 0x20:
            let hex = String(u.value, radix: 16)
            out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
        default: out.unicodeScalars.append(u)
        }
    }
    return out + "\""
}

func natJSON(_ r: NATReport) -> String {
    let obs = r.observations.map { o in
        "{\"server\":\(jsonString(o.server.description)),\"observed\":"
            + (o.observed.map { jsonString($0.description) } ?? "null") + ",\"rtt_ms\":"
            + (o.rtt.map { "\(milliseconds($0))" } ?? "null") + "}"
    }
    var step = "null"
    if case .sequential(let s) = r.allocation { step = "\(s)" }
    let alloc: String =
        switch r.allocation {
        case .unknown: "unknown"
        case .preserving: "preserving"
        case .random: "random"
        case .sequential: "sequential"
        }
    let fields = [
        "\"local\":\(jsonString(r.local.description))",
        "\"public\":[" + r.publicAddresses.map { jsonString($0.description) }.joined(separator: ",") + "]",
        "\"behind_nat\":\(r.behindNAT)",
        "\"mapping\":\(jsonString(r.mapping.rawValue))",
        "\"allocation\":\(jsonString(alloc))",
        "\"port_step\":\(step)",
        "\"filtering\":\(jsonString(r.filtering.rawValue))",
        "\"hairpinning\":" + (r.hairpinning.map { "\($0)" } ?? "null"),
        "\"port_mapping\":" + (r.portMapping.map(jsonString) ?? "null"),
        "\"observations\":[" + obs.joined(separator: ",") + "]",
    ]
    return "{" + fields.joined(separator: ",") + "}"
}

// MARK: - expose, forward

/// A forwarded connection silent this long either way ends (both ends closed).
let forwardIdleDefault = Duration.seconds(600)

/// The client options shared by pipe, expose and forward: servers, timeout, relay, credential.
func streamClientOptions(_ f: ParsedFlags, id: String, _ v: Verbosity) -> ClientOptions? {
    var opts = ClientOptions(id: id, servers: f.all("server-addr"))
    if let text = f.last("timeout") {
        guard let ms = Int64(text), ms > 0 else {
            v.error("bad --timeout '\(text)': a positive number of milliseconds")
            return nil
        }
        opts.timeout = .milliseconds(ms)
    }
    if f.has("no-relay") && f.has("relay-only") {
        v.error("--no-relay and --relay-only exclude each other")
        return nil
    }
    if f.has("no-relay") { opts.relay = .never }
    if f.has("relay-only") { opts.relay = .only }
    if let path = f.last("credential-file") {
        guard let bytes = readFileBytes(path),
            let cred = Credential(hex: String(decoding: bytes, as: UTF8.self))
        else {
            v.error("cannot read a credential from --credential-file '\(path)'")
            return nil
        }
        opts.credential = cred
    }
    return opts
}

/// --idle SECONDS, or the default.
func idleOption(_ f: ParsedFlags, _ v: Verbosity) -> Duration?? {
    guard let text = f.last("idle") else { return .some(forwardIdleDefault) }
    guard let s = Int64(text), s >= 0 else {
        v.error("bad --idle '\(text)': seconds (0: never)")
        return nil
    }
    return .some(s == 0 ? nil : .seconds(s))
}

let streamFlags = [
    Flag("server-addr", value: "ADDR", "a rendezvous server, host:port (required; repeatable)"),
    Flag("timeout", value: "MS", "give up finding or reaching the peer after MS ms"),
    Flag("idle", value: "SECONDS", "end a forwarded connection silent this long (default 600; 0: never)"),
    Flag("no-relay", "never use the server's relay"),
    Flag("relay-only", "use the server's relay at once"),
    Flag("credential-file", value: "FILE", "sign requests with our id's credential"),
]

let exposeCommand = Command(
    name: "expose",
    summary: "carry each peer's connection to a local TCP service",
    usage: "rndz-cli expose --id ID --server-addr ADDR --to HOST:PORT [--idle SECONDS] [--no-relay | --relay-only]",
    details: """
        Registers as ID (TCP) and, for each peer that connects (rndz-cli forward, or any
        rndz TCP connector), opens a connection to the service at HOST:PORT and carries
        the bytes both ways, unchanged, half-closes included, until both ends ended, one
        broke, or it was silent for --idle seconds. Direct when a path exists, else
        through the server's relay. Bytes are moved by the C core (splice), many
        connections on one thread. Prints "exposing HOST:PORT as ID" once registered;
        runs until SIGINT or SIGTERM.
        """,
    flags: [Flag("id", value: "ID", "our id (required)"),
            Flag("to", value: "HOST:PORT", "the local service (required)")] + streamFlags,
    run: runExpose)

let forwardCommand = Command(
    name: "forward",
    summary: "a local TCP port that leads to a peer's exposed service",
    usage: "rndz-cli forward --remote-peer ID --server-addr ADDR --listen HOST:PORT [--id ID] [--idle SECONDS] [--no-relay | --relay-only]",
    details: """
        Listens on HOST:PORT (port 0: any); each local connection gets its own path to
        the peer ID (which runs rndz-cli expose), many at once, and carries the bytes
        both ways, unchanged, half-closes included, until both ends ended, one broke
        (a lost peer ends its local connections), or it was silent for --idle seconds.
        Our own id defaults to a random one; each connection connects as ID-1, ID-2,
        ... (the server answers by id), or, with --credential-file, one at a time as ID.
        Prints "forwarding ADDR to ID" once listening; runs until SIGINT or SIGTERM.
        """,
    flags: [Flag("remote-peer", value: "ID", "the exposing peer (required)"),
            Flag("listen", value: "HOST:PORT", "the local address to listen on (required)"),
            Flag("id", value: "ID", "our id (default: random)")] + streamFlags,
    run: runForward)

/// The address of a HOST:PORT flag, or nil (said why).
func resolveFlag(_ name: String, _ text: String, _ v: Verbosity) -> SocketAddress? {
    do {
        return try SocketAddress.resolve(text)
    } catch {
        v.error("bad --\(name) '\(text)': \(error)")
        return nil
    }
}

/// A TCP connection to `addr`, within `timeout`; the fd or nil (errno set).
func tcpConnect(_ addr: SocketAddress, timeout: Duration) -> Int32? {
    let fd = socket(addr.family == .ipv4 ? AF_INET : AF_INET6,
                    Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    if fd < 0 { return nil }
    var tv = timeval(tv_sec: Int(timeout.components.seconds), tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    if addr.withSockAddr({ connect(fd, $0, $1) }) < 0 {
        let e = errno
        Glibc.close(fd)
        errno = e
        return nil
    }
    return fd
}

@Sendable func runExpose(_ f: ParsedFlags, _ v: Verbosity) -> Int32 {
    guard let id = f.last("id"), let toText = f.last("to"), !f.all("server-addr").isEmpty else {
        v.error("expose needs --id ID, --server-addr ADDR and --to HOST:PORT (see 'rndz-cli expose --help')")
        return ExitCode.usage
    }
    guard let to = resolveFlag("to", toText, v) else { return ExitCode.usage }
    guard let opts = streamClientOptions(f, id: id, v), let idle = idleOption(f, v) else {
        return ExitCode.usage
    }
    let bridge: Bridge
    do {
        bridge = try Bridge()
    } catch {
        v.error("cannot start the bridge: \(error)")
        return ExitCode.failure
    }
    let stop = StopSignal()
    let (opened, code) = openListener(
        opts, stop, v, create: { (o) throws(RndzError) in try TCPListener(options: o) },
        waitRegistered: { (l, t) throws(RndzError) in try l.waitRegistered(timeout: t) },
        localAddress: \.localAddress, announce: false)
    guard let listener = opened else { return code }
    printOut("exposing \(to) as \(id)")
    while !stop.isSet {
        let stream: TCPStream
        do {
            stream = try listener.accept(timeout: .milliseconds(200))
        } catch .timedOut {
            continue
        } catch {
            v.error("accept failed: \(error)")
            return ExitCode.failure
        }
        v.notice("peer \(stream.path.relayed ? "through the relay " : "")\(stream.peer): "
            + "connecting it to \(to)")
        DispatchQueue.global().async {
            guard let fd = tcpConnect(to, timeout: .seconds(5)) else {
                v.notice("cannot reach \(to) for \(stream.peer): \(String(cString: strerror(errno)))")
                stream.close()
                return
            }
            do {
                try bridge.join(stream, fd, idle: idle)
            } catch {
                v.notice("cannot carry \(stream.peer): \(error)")
            }
        }
    }
    listener.close()
    v.info("stopped by signal (\(bridge.count) connection(s) still open closed)")
    return ExitCode.ok
}

@Sendable func runForward(_ f: ParsedFlags, _ v: Verbosity) -> Int32 {
    guard let peer = f.last("remote-peer"), let listenText = f.last("listen"),
        !f.all("server-addr").isEmpty
    else {
        v.error("forward needs --remote-peer ID, --server-addr ADDR and --listen HOST:PORT (see 'rndz-cli forward --help')")
        return ExitCode.usage
    }
    guard let listenAddr = resolveFlag("listen", listenText, v) else { return ExitCode.usage }
    let id = f.last("id") ?? "fwd-\(UInt32.random(in: 0...UInt32.max))"
    guard let opts = streamClientOptions(f, id: id, v), let idle = idleOption(f, v) else {
        return ExitCode.usage
    }
    let bridge: Bridge
    let lfd: Int32
    let bound: SocketAddress
    do {
        bridge = try Bridge()
        (lfd, bound) = try listenTCP(listenAddr)
    } catch {
        v.error("cannot listen on \(listenAddr): \(error)")
        return ExitCode.failure
    }
    defer { Glibc.close(lfd) }
    let stop = StopSignal()
    printOut("forwarding \(bound) to \(peer)")
    // The server routes a peer's answer by our id: connects that run at once need ids of
    // their own (ID-1, ID-2, ...), or, with a credential (which is the id's), one at a time.
    let oneAtATime = DispatchSemaphore(value: opts.credential == nil ? Int.max : 1)
    var n = 0
    while !stop.isSet {
        var p = pollfd(fd: lfd, events: Int16(POLLIN), revents: 0)
        if poll(&p, 1, 200) <= 0 { continue }
        let c = accept(lfd, nil, nil)
        if c < 0 { continue }
        _ = fcntl(c, F_SETFD, FD_CLOEXEC)
        n += 1
        var o = opts
        if o.credential == nil { o.id = "\(id)-\(n)" }
        let connectOpts = o
        DispatchQueue.global().async {
            let stream: TCPStream
            oneAtATime.wait()
            defer { oneAtATime.signal() }
            do throws(RndzError) {
                stream = try TCPConnector(options: connectOpts).connect(to: peer)
            } catch {
                v.notice(connectFailure(error, peer: peer, over: "TCP"))
                Glibc.close(c)
                return
            }
            v.info("a local connection to \(peer) at \(stream.path.relayed ? "relay " : "")\(stream.peer)")
            do {
                try bridge.join(stream, c, idle: idle)
            } catch {
                v.notice("cannot carry a connection to \(peer): \(error)")
            }
        }
    }
    v.info("stopped by signal (\(bridge.count) connection(s) still open closed)")
    return ExitCode.ok
}

/// A listening TCP socket on `addr`, and the address it got.
func listenTCP(_ addr: SocketAddress) throws(RndzError) -> (Int32, SocketAddress) {
    let fd = socket(addr.family == .ipv4 ? AF_INET : AF_INET6,
                    Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    if fd < 0 { throw RndzError(errno: errno) }
    var one: Int32 = 1
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
    if addr.withSockAddr({ bind(fd, $0, $1) }) < 0 || listen(fd, 128) < 0 {
        let e = errno
        Glibc.close(fd)
        throw RndzError(errno: e)
    }
    var ss = sockaddr_storage()
    var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
    _ = withUnsafeMutablePointer(to: &ss) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    return (fd, (try? SocketAddress(ss)) ?? addr)
}

// MARK: - pipe

let pipeCommand = Command(
    name: "pipe",
    summary: "like nc: stdin to a peer, the peer's bytes to stdout, over a reliable stream",
    usage: "rndz-cli pipe --id ID --server-addr ADDR [--server-addr ADDR ...] [--remote-peer PEER] [--timeout MS] [--no-relay | --relay-only] [--credential-file FILE]",
    details: """
        Without --remote-peer: registers as ID (TCP) and waits for one peer; with it:
        connects to PEER. Then copies stdin to the peer and the peer's bytes to
        stdout, unchanged, both at once; our end of the stream closes when stdin ends
        (the peer sees the end), and the command exits 0 once both directions ended.
        Direct when a path exists, else through the server's relay. Only data goes
        to stdout; what happens is told on stderr ("connected to PEER ..."). Exit 1
        when the peer cannot be found or reached, or the stream breaks.
        """,
    flags: [
        Flag("id", value: "ID", "our id (required)"),
        Flag("server-addr", value: "ADDR", "a rendezvous server, host:port (required; repeatable)"),
        Flag("remote-peer", value: "ID", "connect to this peer instead of waiting for one"),
        Flag("timeout", value: "MS", "give up finding or reaching the peer after MS ms"),
        Flag("no-relay", "never use the server's relay"),
        Flag("relay-only", "use the server's relay at once"),
        Flag("credential-file", value: "FILE", "sign requests with ID's credential"),
    ],
    run: runPipe)

@Sendable func runPipe(_ f: ParsedFlags, _ v: Verbosity) -> Int32 {
    guard let id = f.last("id"), !f.all("server-addr").isEmpty else {
        v.error("pipe needs --id ID and --server-addr ADDR (see 'rndz-cli pipe --help')")
        return ExitCode.usage
    }
    guard let opts = streamClientOptions(f, id: id, v) else { return ExitCode.usage }
    let stream: TCPStream
    if let peer = f.last("remote-peer") {
        do {
            stream = try TCPConnector(options: opts).connect(to: peer)
        } catch {
            v.error(connectFailure(error, peer: peer, over: "TCP"))
            return ExitCode.failure
        }
        v.notice("connected to \(peer) at \(stream.path.relayed ? "relay " : "")\(stream.peer)")
    } else {
        let stop = StopSignal()
        let listener: TCPListener
        do {
            listener = try TCPListener(options: opts)
        } catch {
            v.error("cannot register as '\(id)': \(error)")
            return ExitCode.failure
        }
        guard awaitRegistration(stop, v, { (t) throws(RndzError) in try listener.waitRegistered(timeout: t) }) else {
            return stop.isSet ? ExitCode.ok : ExitCode.failure
        }
        v.notice("registered as \(id); waiting for a peer")
        var got: TCPStream?
        while got == nil && !stop.isSet {
            do {
                got = try listener.accept(timeout: .milliseconds(200))
            } catch .timedOut {
                continue
            } catch {
                v.error("accept failed: \(error)")
                return ExitCode.failure
            }
        }
        listener.close()
        guard let s = got else { return ExitCode.ok }
        stream = s
        blockStopSignals(false) /* from here SIGINT ends the pipe at once, as for nc */
        v.notice("peer connected from \(stream.path.relayed ? "relay " : "")\(stream.peer)")
    }
    return pipeBytes(stream.fileDescriptor, v) ? ExitCode.ok : ExitCode.failure
}

/// Copy stdin to fd (then end our direction) and fd to stdout, at once (a thread each way, so
/// neither direction waits for the other); true when both ended cleanly.
func pipeBytes(_ fd: Int32, _ v: Verbosity) -> Bool {
    /// Written by the copying thread before it signals, read after the wait.
    final class Outcome: @unchecked Sendable { var ok = true }
    let outbound = DispatchSemaphore(value: 0)
    let sent = Outcome()
    DispatchQueue.global().async {
        sent.ok = copyFD(from: 0, to: fd, socketOut: true)
        shutdown(fd, Int32(SHUT_WR))
        outbound.signal()
    }
    let receivedOK = copyFD(from: fd, to: 1, socketOut: false)
    if !receivedOK { v.error("the stream from the peer broke") }
    outbound.wait()
    let ok = sent.ok
    if !ok { v.error("the stream to the peer broke") }
    return ok && receivedOK
}

/// Read from one fd and write everything to the other until the end; false on an error.
func copyFD(from src: Int32, to dst: Int32, socketOut: Bool) -> Bool {
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buf.withUnsafeMutableBytes { read(src, $0.baseAddress, $0.count) }
        if n == 0 { return true }
        if n < 0 {
            if errno == EINTR { continue }
            return false
        }
        var off = 0
        while off < n {
            let w = buf.withUnsafeBytes { b in
                socketOut ? send(dst, b.baseAddress! + off, n - off, Int32(MSG_NOSIGNAL))
                          : write(dst, b.baseAddress! + off, n - off)
            }
            if w < 0 {
                if errno == EINTR { continue }
                return false
            }
            off += w
        }
    }
}

let commands = [serverCommand, clientCommand, exposeCommand, forwardCommand, pipeCommand,
                natCheckCommand, credentialCommand]

func versionText() -> String { "rndz-cli \(RndzVersion.string)" }

func main(_ argv: [String]) -> Int32 {
    blockStopSignals()
    var args = ArraySlice(argv.dropFirst())
    let v0 = Verbosity(level: .warn)
    // Global options, then the command.
    let global: ParsedFlags
    do {
        global = try parseFlags(
            &args, globalFlags + [Flag("version", short: "V", "")], stopAtPositional: true)
    } catch {
        v0.error(error.message + " (see 'rndz-cli --help')")
        return ExitCode.usage
    }
    if global.has("help") {
        printOut(mainUsage())
        return ExitCode.ok
    }
    if global.has("version") {
        printOut(versionText())
        return ExitCode.ok
    }
    guard let name = args.popFirst() else {
        printErr(mainUsage())
        return ExitCode.usage
    }
    switch name {
    case "help":
        if let c = args.first.flatMap({ n in commands.first { $0.name == n } }) {
            printOut(commandUsage(c))
        } else {
            printOut(mainUsage())
        }
        return ExitCode.ok
    case "version":
        printOut(versionText())
        return ExitCode.ok
    default:
        break
    }
    guard let command = commands.first(where: { $0.name == name }) else {
        v0.error("unknown command '\(name)' (see 'rndz-cli --help')")
        return ExitCode.usage
    }
    let flags: ParsedFlags
    do {
        flags = try parseFlags(&args, command.flags + globalFlags, stopAtPositional: false)
    } catch {
        v0.error(error.message + " (see 'rndz-cli \(command.name) --help')")
        return ExitCode.usage
    }
    if flags.has("help") {
        printOut(commandUsage(command))
        return ExitCode.ok
    }
    // Verbosity: -q, else -v (repeatable) above warn, else RNDZ_LOG, else warn.
    let verbose = global.count("verbose") + flags.count("verbose")
    let quiet = global.has("quiet") || flags.has("quiet")
    var level = getenv("RNDZ_LOG").flatMap { LogLevel(parsing: String(cString: $0)) } ?? .warn
    if quiet {
        level = .error
    } else if verbose > 0 {
        level = LogLevel(rawValue: min(LogLevel.trace.rawValue, LogLevel.warn.rawValue + verbose))!
    }
    if quiet || verbose > 0 { setLogLevel(level) }
    return command.run(flags, Verbosity(level: level))
}

exit(main(CommandLine.arguments))
