// ForwardCommands.swift: rndz-cli expose and forward (TCP), carried by the C core's bridge.
import Dispatch
import Rndz
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

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
    guard serversPerIDOption(f, &opts, v) else { return nil }
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
    serversPerIDFlag,
    Flag("relay-only", "use the server's relay at once"),
    Flag("credential-file", value: "FILE", "sign requests with our id's credential"),
    Flag("udp", "UDP: datagrams both ways, one flow per local source (a WireGuard tunnel, say)"),
]

let exposeCommand = Command(
    name: "expose",
    summary: "carry each peer's connection to a local TCP service",
    usage: "rndz-cli expose --id ID --server-addr ADDR --to HOST:PORT [--udp] [--idle SECONDS] [--no-relay | --relay-only]",
    details: """
        Registers as ID (TCP) and, for each peer that connects (rndz-cli forward, or any
        rndz TCP connector), opens a connection to the service at HOST:PORT and carries
        the bytes both ways, unchanged, half-closes included, until both ends ended, one
        broke, or it was silent for --idle seconds. Direct when a path exists, else
        through the server's relay. Bytes are moved by the C core (splice), many
        connections on one thread. With --udp: each peer's datagrams go to the UDP
        service at HOST:PORT and back, a flow per peer, ended by --idle. Prints
        "exposing HOST:PORT as ID" once registered; runs until SIGINT or SIGTERM.
        """,
    flags: [Flag("id", value: "ID", "our id (required)"),
            Flag("to", value: "HOST:PORT", "the local service (required)")] + streamFlags,
    run: runExpose)

let forwardCommand = Command(
    name: "forward",
    summary: "a local TCP port that leads to a peer's exposed service",
    usage: "rndz-cli forward --remote-peer ID --server-addr ADDR --listen HOST:PORT [--udp] [--id ID] [--idle SECONDS] [--no-relay | --relay-only]",
    details: """
        Listens on HOST:PORT (port 0: any); each local connection gets its own path to
        the peer ID (which runs rndz-cli expose), many at once, and carries the bytes
        both ways, unchanged, half-closes included, until both ends ended, one broke
        (a lost peer ends its local connections), or it was silent for --idle seconds.
        With --udp: the local port's datagrams go to the peer and back, one flow (one
        path) per local source, ended by --idle (a WireGuard endpoint, say).
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
    if f.has("udp") { return exposeUDP(opts, to: to, idle: idle, bridge, stop, v) }
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
    let udp = f.has("udp")
    do {
        bridge = try Bridge()
        (lfd, bound) = udp ? try bindUDP(listenAddr) : try listenTCP(listenAddr)
    } catch {
        v.error("cannot listen on \(listenAddr): \(error)")
        return ExitCode.failure
    }
    defer { Glibc.close(lfd) }
    let stop = StopSignal()
    printOut("forwarding \(bound) to \(peer)\(udp ? " (UDP)" : "")")
    if udp { return forwardUDP(lfd, bound: bound, peer: peer, opts, idle: idle, bridge, stop, v) }
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
                v.notice(connectFailure(error, peer: peer, over: "TCP", signed: connectOpts.credential != nil))
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

/// A UDP socket connected to `addr` (bound like `sharing` when given: SO_REUSEPORT on the
/// same address, for a flow of a forward's listening port); the fd or nil (errno set).
func udpSocket(connectedTo addr: SocketAddress, sharing local: SocketAddress? = nil) -> Int32? {
    let family = (local ?? addr).family == .ipv4 ? AF_INET : AF_INET6
    let fd = socket(family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    if fd < 0 { return nil }
    var one: Int32 = 1
    if let local {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(MemoryLayout<Int32>.size))
        if local.withSockAddr({ bind(fd, $0, $1) }) < 0 {
            Glibc.close(fd)
            return nil
        }
    }
    if addr.withSockAddr({ connect(fd, $0, $1) }) < 0 {
        let e = errno
        Glibc.close(fd)
        errno = e
        return nil
    }
    return fd
}

/// expose --udp: each peer on a socket of its own (direct or relayed) joined with a socket
/// connected to the service.
func exposeUDP(_ opts: ClientOptions, to: SocketAddress, idle: Duration?, _ bridge: Bridge,
               _ stop: StopSignal, _ v: Verbosity) -> Int32 {
    let (opened, code) = openListener(
        opts, stop, v, create: { (o) throws(RndzError) in try UDPListener(options: o) },
        waitRegistered: { (l, t) throws(RndzError) in try l.waitRegistered(timeout: t) },
        localAddress: \.localAddress, announce: false)
    guard let listener = opened else { return code }
    printOut("exposing \(to) as \(opts.id) (UDP)")
    while !stop.isSet {
        let socket: UDPSocket
        do {
            guard let s = try listener.accept(timeout: .milliseconds(200)) else { continue }
            socket = s
        } catch {
            v.error("accept failed: \(error)")
            return ExitCode.failure
        }
        v.notice("peer '\(socket.peerID)' \(socket.path.relayed ? "through the relay " : "")"
            + "\(socket.peer): its datagrams go to \(to)")
        guard let local = udpSocket(connectedTo: to) else {
            v.notice("cannot reach \(to): \(String(cString: strerror(errno)))")
            continue
        }
        let peerFD = dup(socket.fileDescriptor)
        do {
            try bridge.join(peerFD, local, idle: idle)
        } catch {
            v.notice("cannot carry '\(socket.peerID)': \(error)")
        }
    }
    v.info("stopped by signal (\(bridge.count) flow(s) still open closed)")
    return ExitCode.ok
}

/// forward --udp: datagrams to the listening port, one flow per local source: the first
/// datagram of a source opens a socket connected to it on the same port (the kernel then
/// hands it that source's datagrams) and a connect to the peer; the two are joined, with
/// what came meanwhile sent on.
func forwardUDP(_ lfd: Int32, bound: SocketAddress, peer: String, _ opts: ClientOptions,
                idle: Duration?, _ bridge: Bridge, _ stop: StopSignal, _ v: Verbosity) -> Int32 {
    final class Pending: @unchecked Sendable {  // guarded by lock
        let lock = Mutex<[SocketAddress: [[UInt8]]]>([:])
    }
    let pending = Pending()
    var n = 0
    var buf = [UInt8](repeating: 0, count: 65536)
    while !stop.isSet {
        var p = pollfd(fd: lfd, events: Int16(POLLIN), revents: 0)
        if poll(&p, 1, 200) <= 0 { continue }
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let got = buf.withUnsafeMutableBytes { b in
            withUnsafeMutablePointer(to: &ss) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    recvfrom(lfd, b.baseAddress, b.count, Int32(MSG_DONTWAIT), $0, &len)
                }
            }
        }
        guard got >= 0, let src = try? SocketAddress(ss) else { continue }
        let datagram = Array(buf[0..<got])
        // a source whose flow is being set up: keep what it sends meanwhile (a few)
        let isNew = pending.lock.withLock { flows -> Bool in
            if var q = flows[src] {
                if q.count < 64 { q.append(datagram) }
                flows[src] = q
                return false
            }
            flows[src] = [datagram]
            return true
        }
        guard isNew else { continue }
        guard let cfd = udpSocket(connectedTo: src, sharing: bound) else {
            v.notice("cannot open a flow for \(src): \(String(cString: strerror(errno)))")
            pending.lock.withLock { _ = $0.removeValue(forKey: src) }
            continue
        }
        n += 1
        var o = opts
        if o.credential == nil { o.id = "\(opts.id)-\(n)" }
        let connectOpts = o
        DispatchQueue.global().async {
            let socket: UDPSocket
            do throws(RndzError) {
                socket = try UDPConnector(options: connectOpts).connect(to: peer)
            } catch {
                v.notice(connectFailure(error, peer: peer, over: "UDP", signed: connectOpts.credential != nil))
                Glibc.close(cfd)
                pending.lock.withLock { _ = $0.removeValue(forKey: src) }
                return
            }
            v.info("a flow from \(src) to \(peer) at \(socket.path.relayed ? "relay " : "")\(socket.peer)")
            let early = pending.lock.withLock { $0.removeValue(forKey: src) } ?? []
            for d in early { _ = try? socket.send(d) }
            do {
                try bridge.join(dup(socket.fileDescriptor), cfd, idle: idle)
            } catch {
                v.notice("cannot carry the flow from \(src): \(error)")
            }
        }
    }
    v.info("stopped by signal (\(bridge.count) flow(s) still open closed)")
    return ExitCode.ok
}

/// A UDP socket on `addr` that flows share (SO_REUSEPORT), and the address it got.
func bindUDP(_ addr: SocketAddress) throws(RndzError) -> (Int32, SocketAddress) {
    let fd = socket(addr.family == .ipv4 ? AF_INET : AF_INET6,
                    Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    if fd < 0 { throw RndzError(errno: errno) }
    var one: Int32 = 1
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(MemoryLayout<Int32>.size))
    if addr.withSockAddr({ bind(fd, $0, $1) }) < 0 {
        let e = errno
        Glibc.close(fd)
        throw RndzError(errno: e)
    }
    return (fd, socketName(fd) ?? addr)
}

/// The local address of a socket.
func socketName(_ fd: Int32) -> SocketAddress? {
    var ss = sockaddr_storage()
    var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
    _ = withUnsafeMutablePointer(to: &ss) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    return try? SocketAddress(ss)
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
