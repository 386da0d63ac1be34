// Test helpers: a raw UDP socket (to play a v1 peer or a silent server), a child process
// runner for the CLI tests, and small utilities. Everything binds port 0 on loopback.
import Rndz
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A socket of `type` bound to `text` (then `setUp`, which returns false on failure, with
/// errno set), and the address it got.
func boundSocket(_ type: Int32, _ text: String, setUp: (Int32) -> Bool = { _ in true }) throws
    -> (Int32, SocketAddress)
{
    let local = try SocketAddress(parsing: text)
    let family = local.family == .ipv4 ? AF_INET : AF_INET6
    let fd = socket(family, type | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw RndzError(errno: errno) }
    guard local.withSockAddr({ bind(fd, $0, $1) }) == 0, setUp(fd) else {
        let e = errno
        close(fd)
        throw RndzError(errno: e)
    }
    var ss = sockaddr_storage()
    var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
    _ = withUnsafeMutablePointer(to: &ss) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    return (fd, try SocketAddress(ss))
}

/// A plain UDP socket bound to a loopback port, for speaking raw bytes.
final class RawUDP {
    let fd: Int32
    let address: SocketAddress

    init(bind text: String = "127.0.0.1:0") throws {
        (fd, address) = try boundSocket(Int32(SOCK_DGRAM.rawValue), text)
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8], to: SocketAddress) {
        let n = bytes.withUnsafeBytes { b in
            to.withSockAddr { sendto(fd, b.baseAddress, b.count, 0, $0, $1) }
        }
        precondition(n == bytes.count, "sendto failed: \(errno)")
    }

    /// One datagram, or nil after `timeout`.
    func receive(timeout: Duration = .seconds(5)) -> Datagram? {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let ms = Int32(timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        guard poll(&p, 1, ms) == 1 else { return nil }
        var buf = [UInt8](repeating: 0, count: 2048)
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let n = buf.withUnsafeMutableBytes { b in
            withUnsafeMutablePointer(to: &ss) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    recvfrom(fd, b.baseAddress, b.count, 0, $0, &len)
                }
            }
        }
        guard n >= 0, let from = try? SocketAddress(ss) else { return nil }
        return Datagram(bytes: Array(buf[..<n]), sender: from.unmapped)
    }
}

/// Milliseconds for poll(2), rounded down.
func pollMilliseconds(_ d: Duration) -> Int32 {
    if d <= .zero { return 0 }
    return Int32(min(Int64(Int32.max), d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000))
}

/// A plain TCP listening socket on a loopback port: a rendezvous "server" that accepts (the
/// kernel completes the handshake) and says nothing unless told to, or a port to refuse
/// connections (`listening: false`).
final class RawTCPServer {
    let fd: Int32
    let address: SocketAddress

    init(bind text: String = "127.0.0.1:0", listening: Bool = true) throws {
        (fd, address) = try boundSocket(Int32(SOCK_STREAM.rawValue), text) { fd in
            !listening || listen(fd, 16) == 0
        }
    }

    deinit { close(fd) }

    /// The next connection, or nil if none within `timeout`.
    func accept(timeout: Duration = .seconds(5)) -> RawTCPConnection? {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, pollMilliseconds(timeout)) == 1 else { return nil }
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let c = withUnsafeMutablePointer(to: &ss) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.accept(fd, $0, &len) }
        }
        guard c >= 0, let peer = try? SocketAddress(ss) else { return nil }
        return RawTCPConnection(fd: c, peer: peer.unmapped)
    }
}

/// An accepted raw TCP connection, speaking v1 frames (2-byte big-endian length, body).
final class RawTCPConnection {
    let fd: Int32
    let peer: SocketAddress

    init(fd: Int32, peer: SocketAddress) {
        self.fd = fd
        self.peer = peer
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8]) {
        let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        precondition(n == bytes.count, "send failed: \(errno)")
    }

    /// Exactly `count` bytes, or nil on timeout or end of stream.
    func read(_ count: Int, timeout: Duration = .seconds(5)) -> [UInt8]? {
        let deadline = ContinuousClock.now + timeout
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: count)
        while out.count < count {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, pollMilliseconds(deadline - ContinuousClock.now)) == 1 else { return nil }
            let n = buf.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress, count - out.count, 0) }
            if n <= 0 { return nil }
            out += buf[..<n]
        }
        return out
    }

    /// The body of the next frame, or nil on timeout or end of stream.
    func readFrame(timeout: Duration = .seconds(5)) -> [UInt8]? {
        guard let h = read(2, timeout: timeout) else { return nil }
        let n = Int(h[0]) << 8 | Int(h[1])
        return n == 0 ? [] : read(n, timeout: timeout)
    }
}

private final class ThreadBody {
    let run: @Sendable () -> Void
    init(_ run: @escaping @Sendable () -> Void) { self.run = run }
}

/// Runs `body` on a thread of its own, off Swift's cooperative pool. A test that blocks its
/// pool thread (poll, a blocking call) must not wait there for work that needs the pool (an
/// `async let` child, a `Task`): on a 2-core machine the pool has 2 threads, and tests running
/// in parallel starve each other until their timeouts. Call ``join()`` exactly once.
final class TestThread<T: Sendable>: @unchecked Sendable {
    // Unchecked: `tid` is written by init only; the value is guarded by the mutex.
    private var tid = pthread_t()
    private let value = Mutex<T?>(nil)

    init(_ body: @escaping @Sendable () -> T) {
        let box = Unmanaged.passRetained(ThreadBody { [self] in
            let v = body()
            value.withLock { $0 = v }
        }).toOpaque()
        let rc = pthread_create(&tid, nil, { raw in
            Unmanaged<ThreadBody>.fromOpaque(raw!).takeRetainedValue().run()
            return nil
        }, box)
        precondition(rc == 0, "pthread_create failed: \(rc)")
    }

    /// Waits for the thread to end; its result.
    func join() -> T {
        pthread_join(tid, nil)
        return value.withLock { $0! }
    }
}

/// A unique id per call, so parallel tests never share registrations.
func uniqueID(_ prefix: String) -> String {
    "\(prefix)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
}

/// `true` if the bytes are a v1 protocol message (a punch), not application data.
func isProtocol(_ bytes: [UInt8]) -> Bool {
    (try? WireMessage(request: bytes)) != nil || (try? WireMessage(response: bytes)) != nil
}

/// The package root (for the vectors file and README.md).
let packageRoot: String = {
    var parts = #filePath.split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast(3)  // Tests/RndzTests/Support.swift
    return parts.joined(separator: "/")
}()

func readTextFile(_ path: String) -> String? {
    guard let f = fopen(path, "r") else { return nil }
    defer { fclose(f) }
    var data = [UInt8]()
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&buf, 1, buf.count, f)
        if n <= 0 { break }
        data += buf[..<n]
    }
    return String(decoding: data, as: UTF8.self)
}

// MARK: - Child processes

/// The rndz-cli binary: $RNDZ_CLI, or next to the test bundle (SwiftPM puts both in
/// .build/<config>/).
let cliPath: String = {
    if let env = getenv("RNDZ_CLI") { return String(cString: env) }
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buf, buf.count - 1)
    precondition(n > 0, "cannot read /proc/self/exe")
    let exe = String(decoding: buf[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    let dir = exe.split(separator: "/", omittingEmptySubsequences: false).dropLast()
    return dir.joined(separator: "/") + "/rndz-cli"
}()

/// A running child process with its stdout and stderr on pipes.
final class Child {
    let pid: pid_t
    private var outFD: Int32
    private var errFD: Int32
    private(set) var stdout: [UInt8] = []
    private(set) var stderr: [UInt8] = []
    private var outConsumed = 0
    private(set) var status: Int32?
    /// waitpid's status once reaped by waitAll (wait() then only collects the pipes).
    private var reaped: Int32?

    init(_ args: [String], env: [String] = [], stdin: String = "/dev/null") throws {
        var outPipe: [Int32] = [-1, -1]
        var errPipe: [Int32] = [-1, -1]
        // pipe2 is not visible from Swift's Glibc module; the CLI suite is serialized, so no
        // other spawn can inherit these fds before FD_CLOEXEC is set.
        guard pipe(&outPipe) == 0, pipe(&errPipe) == 0 else { throw RndzError(errno: errno) }
        for fd in outPipe + errPipe { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var fa = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&fa)
        defer { posix_spawn_file_actions_destroy(&fa) }
        posix_spawn_file_actions_addopen(&fa, 0, stdin, O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&fa, outPipe[1], 1)
        posix_spawn_file_actions_adddup2(&fa, errPipe[1], 2)
        let argv: [UnsafeMutablePointer<CChar>?] = ([cliPath] + args).map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = env.map { strdup($0) } + [nil]
        defer {
            for p in argv { free(p) }
            for p in envp { free(p) }
        }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, cliPath, &fa, nil, argv, envp)
        close(outPipe[1])
        close(errPipe[1])
        guard rc == 0 else {
            close(outPipe[0])
            close(errPipe[0])
            throw RndzError(errno: rc)
        }
        self.pid = pid
        self.outFD = outPipe[0]
        self.errFD = errPipe[0]
    }

    deinit {
        if status == nil {
            kill(pid, SIGKILL)
            var st: Int32 = 0
            waitpid(pid, &st, 0)
        }
        if outFD >= 0 { close(outFD) }
        if errFD >= 0 { close(errFD) }
    }

    var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
    var stderrText: String { String(decoding: stderr, as: UTF8.self) }
    /// What stderr holds so far (reading what is there first).
    var stderrTextNow: String {
        pump(ms: 10)
        return stderrText
    }

    /// Reads whatever is available on both pipes, waiting at most `ms`. Returns false once
    /// both are at end of file.
    @discardableResult
    fileprivate func pump(ms: Int32) -> Bool {
        var fds: [pollfd] = []
        if outFD >= 0 { fds.append(pollfd(fd: outFD, events: Int16(POLLIN), revents: 0)) }
        if errFD >= 0 { fds.append(pollfd(fd: errFD, events: Int16(POLLIN), revents: 0)) }
        if fds.isEmpty { return false }
        guard poll(&fds, nfds_t(fds.count), ms) > 0 else { return true }
        var buf = [UInt8](repeating: 0, count: 4096)
        for p in fds where p.revents != 0 {
            let n = read(p.fd, &buf, buf.count)
            if n > 0 {
                if p.fd == outFD { stdout += buf[..<n] } else { stderr += buf[..<n] }
            } else if n == 0 || (errno != EINTR && errno != EAGAIN) {
                close(p.fd)
                if p.fd == outFD { outFD = -1 } else { errFD = -1 }
            }
        }
        return true
    }

    /// The next line on stdout, or nil if none within `timeout`.
    func readLine(timeout: Duration = .seconds(10)) -> String? {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let nl = stdout[outConsumed...].firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: stdout[outConsumed..<nl], as: UTF8.self)
                outConsumed = nl + 1
                return line
            }
            if ContinuousClock.now >= deadline || outFD < 0 { return nil }
            pump(ms: 50)
        }
    }

    func signal(_ sig: Int32) { kill(pid, sig) }

    /// Waits for the exit (collecting all output); kills the child after `timeout`. Returns
    /// the exit status, or 128+signal if it was killed by a signal.
    @discardableResult
    func wait(timeout: Duration = .seconds(20)) -> Int32 {
        if let status { return status }
        let deadline = ContinuousClock.now + timeout
        var st: Int32 = reaped ?? 0
        var exited = reaped != nil
        while !exited {
            pump(ms: 20)
            let r = waitpid(pid, &st, WNOHANG)
            if r == pid { exited = true; break }
            if r < 0 && errno != EINTR { break }
            if ContinuousClock.now >= deadline { kill(pid, SIGKILL) }
        }
        if !exited { while waitpid(pid, &st, 0) < 0 && errno == EINTR {} }
        // Collect what is left in the pipes.
        let drainUntil = ContinuousClock.now + .seconds(1)
        while pump(ms: 20) && ContinuousClock.now < drainUntil {}
        // WIFEXITED / WEXITSTATUS / WTERMSIG, spelled out (the macros are not imported).
        let s = (st & 0x7f) == 0 ? (st >> 8) & 0xff : 128 + (st & 0x7f)
        status = s
        return s
    }

    /// Waits for several children at once, reading all their pipes meanwhile (one that fills
    /// its stdout pipe would otherwise stall the others), each within `timeout`.
    static func waitAll(_ children: [Child], timeout: Duration = .seconds(20)) {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            var running = false
            for c in children where c.status == nil && c.reaped == nil {
                c.pump(ms: 5)
                var st: Int32 = 0
                if waitpid(c.pid, &st, WNOHANG) == c.pid {
                    c.reaped = st
                } else {
                    running = true
                }
            }
            if !running { break }
        }
        for c in children { c.wait(timeout: .seconds(1)) }
    }

    /// Runs a command to completion.
    static func run(_ args: [String], env: [String] = [], timeout: Duration = .seconds(20)) throws
        -> Child
    {
        let c = try Child(args, env: env)
        c.wait(timeout: timeout)
        return c
    }
}

// MARK: - Set-ups and checks the UDP and TCP suites share

/// A started rendezvous server on loopback (port 0).
func loopbackServer(_ text: String = "127.0.0.1:0") throws -> RndzServer {
    let server = try RndzServer(options: ServerOptions(listenAddress: try SocketAddress(parsing: text)))
    try server.start()
    return server
}

/// Client options with a fresh id (`prefix` and a random part) for `server`.
func clientOptions(_ prefix: String, _ server: RndzServer) -> ClientOptions {
    ClientOptions(id: uniqueID(prefix), servers: ["\(server.localAddress)"])
}

/// A connect to an id nobody registered fails with `notFound`, blocking (`sync`) and async,
/// without waiting for the timeout.
func expectNotFoundFast(
    sync: (ClientOptions, String) throws(RndzError) -> Void,
    async: (ClientOptions, String) async throws(RndzError) -> Void
) async throws {
    let server = try loopbackServer()
    var o = clientOptions("c", server)
    o.timeout = .seconds(5)
    let start = ContinuousClock.now
    #expect(throws: RndzError.notFound) { try sync(o, uniqueID("nobody")) }
    await #expect(throws: RndzError.notFound) { try await async(o, uniqueID("nobody")) }
    // Every server said "not found": no need to wait for the timeout.
    #expect(ContinuousClock.now - start < .seconds(3))
}

/// A connect through a server that never answers (options `o`) fails with `timedOut`, not
/// `notFound`, blocking (`sync`) and async, after the timeout.
func expectTimedOut(
    _ o: ClientOptions,
    sync: (ClientOptions, String) throws(RndzError) -> Void,
    async: (ClientOptions, String) async throws(RndzError) -> Void
) async {
    let start = ContinuousClock.now
    do {
        try sync(o, "anyone")
        Issue.record("connected to nobody")
    } catch .notFound {
        Issue.record("a silent server is not 'not found'")
    } catch {
        #expect(error == .timedOut)
    }
    #expect(ContinuousClock.now - start >= .milliseconds(250))
    await #expect(throws: RndzError.timedOut) { try await async(o, "anyone") }
}

/// A listener (made by `make`) refuses bad ids and server lists, typed.
func expectBadListenerOptionsRefused(_ make: (ClientOptions) throws(RndzError) -> Void) throws {
    let server = try loopbackServer()
    let s = ["\(server.localAddress)"]
    #expect(throws: RndzError.badID) { try make(ClientOptions(id: "", servers: s)) }
    #expect(throws: RndzError.badID) { try make(ClientOptions(id: String(repeating: "x", count: 256), servers: s)) }
    #expect(throws: RndzError.badID) { try make(ClientOptions(id: "a\0b", servers: s)) }
    #expect(throws: RndzError.noServer) { try make(ClientOptions(id: "a", servers: [])) }
    #expect(throws: RndzError.badAddress) { try make(ClientOptions(id: "a", servers: ["nonsense"])) }
}
