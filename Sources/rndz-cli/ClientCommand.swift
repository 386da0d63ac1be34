// ClientCommand.swift: rndz-cli client: a listener that echoes (UDP) or answers hello (TCP),
// or a connector that says hello; the "path to" line.
import Dispatch
import Rndz
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// MARK: - client

let clientCommand = Command(
    name: "client",
    summary: "register and answer peers, or --remote-peer: say hello to a peer",
    usage:
        "rndz-cli client --id ID --server-addr ADDR [--server-addr ADDR ...] [--remote-peer ID] [--tcp] [--local-addr ADDR] [--timeout MS] [--tcp-rto-max MS] [--credential-file FILE] [--no-relay | --relay-only] [--port-mapping] [--servers-per-id K]",
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
        Flag("timeout", value: "MS", "connector: give up finding the peer, and waiting for its reply, after MS ms (default \(milliseconds(ClientOptions(id: "-", servers: []).timeout)))"),
        Flag("tcp-rto-max", value: "MS", "with --tcp: the peer connection keeps TCP's retransmission timeout at most MS ms (1000..120000; Linux 6.15+)"),
        Flag("credential-file", value: "FILE", "sign requests with ID's credential (hex, from 'rndz-cli credential')"),
        Flag("no-relay", "never use the server's relay (direct paths only)"),
        Flag("relay-only", "use the server's relay at once (a direct path is known to be impossible)"),
        Flag("port-mapping", "listener: ask the gateway for a mapping of our port (PCP, NAT-PMP) and advertise it"),
        serversPerIDFlag,
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
    guard serversPerIDOption(f, &opts, v) else { return ExitCode.usage }
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
    guard awaitRegistration(stop, v, signed: opts.credential != nil,
                            { (t) throws(RndzError) in try waitRegistered(listener, t) }) else {
        return (nil, stop.isSet ? ExitCode.ok : ExitCode.failure)
    }
    if announce { printOut("registered as \(opts.id) on \(localAddress(listener))") }
    return (listener, ExitCode.ok)
}

/// Waits until `waitRegistered` succeeds (the listener pings on), saying so if it takes a
/// while. Returns false if a signal came first or registration failed.
func awaitRegistration(
    _ stop: StopSignal, _ v: Verbosity, signed: Bool = false,
    _ waitRegistered: (Duration) throws(RndzError) -> Void
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
                v.notice("no rendezvous server answered yet; still trying"
                    + (signed ? credentialHint : ""))
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
        v.error(connectFailure(error, peer: peer, over: "UDP", signed: opts.credential != nil))
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

/// Why a server with a secret may stay silent: it answers nothing signed with a credential it
/// refuses (made from another secret, or for another id).
let credentialHint = " (a server with a secret answers nothing signed with a credential it "
    + "refuses: check that --credential-file holds this id's credential, made from that "
    + "server's secret)"

/// What the connector says when the connect fails (`signed`: we sent a credential).
func connectFailure(_ error: RndzError, peer: String, over transport: String, signed: Bool = false)
    -> String
{
    if signed, case .timedOut = error {
        return "no answer about peer '\(peer)' from the rendezvous server(s) in time" + credentialHint
    }
    return switch error {
    case .notFound: "peer '\(peer)' not found: no rendezvous server knows it"
    case .otherTransport:
        "peer '\(peer)' is registered over \(transport == "TCP" ? "UDP" : "TCP") only, not "
            + "\(transport): the listener and the connector must use the same transport"
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
        v.error(connectFailure(error, peer: peer, over: "TCP", signed: opts.credential != nil))
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

/// Server sets: --servers-per-id K (client, expose, forward, pipe).
let serversPerIDFlag = Flag(
    "servers-per-id", value: "K",
    "server sets: register with (and ask) the K of the --server-addr servers that hashing of the id ranks first; the next when one is down (default 2; all when no more are given)")

/// Reads --servers-per-id into opts; false (and said why) when it is not a positive number.
func serversPerIDOption(_ f: ParsedFlags, _ opts: inout ClientOptions, _ v: Verbosity) -> Bool {
    guard let text = f.last("servers-per-id") else { return true }
    guard let k = Int(text), (1...16).contains(k) else {
        v.error("bad --servers-per-id '\(text)': a number from 1 to 16")
        return false
    }
    opts.serversPerID = k
    return true
}
