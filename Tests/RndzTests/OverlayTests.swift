import Rndz
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Polls `condition` until it holds or `timeout` passes.
func eventually(timeout: Duration = .seconds(5), _ condition: () -> Bool) -> Bool {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        if ContinuousClock.now >= deadline { return false }
        usleep(5_000)
    }
    return true
}

/// The next datagram that is not a protocol packet.
func receiveData(_ l: UDPListener, timeout: Duration = .seconds(5)) throws -> Datagram? {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        guard let d = try l.receive(timeout: deadline - ContinuousClock.now) else { return nil }
        if !isProtocol(d.bytes) { return d }
    }
    return nil
}


// In an async context the async overloads win; these call the blocking forms.
func syncConnect(_ o: ClientOptions, to target: String) throws(RndzError) -> UDPSocket {
    try UDPConnector(options: o).connect(to: target)
}
func syncWaitRegistered(_ l: UDPListener, timeout: Duration) throws(RndzError) {
    try l.waitRegistered(timeout: timeout)
}
func syncReceive(_ l: UDPListener, timeout: Duration) throws(RndzError) -> Datagram? {
    try l.receive(timeout: timeout)
}
func syncAccept(_ l: UDPListener, timeout: Duration) throws(RndzError) -> UDPSocket? {
    try l.accept(timeout: timeout)
}

@Suite("Server", .timeLimit(.minutes(1)))
struct ServerTests {
    @Test func bindsStartsStops() throws {
        let server = try loopbackServer()
        #expect(server.localAddress.family == .ipv4)
        #expect(server.localAddress.port != 0)
        #expect(server.localAddress.addressBytes == [127, 0, 0, 1])
        let s0 = server.stats
        #expect(s0.udpReceived == 0 && s0.udpSent == 0 && s0.udpMalformed == 0 && s0.udpPeers == 0)
        // A v1 ping, as the captured bytes show, gets a v1 pong.
        let raw = try RawUDP()
        let id = uniqueID("p")
        raw.send(try WireMessage(.ping, id: id).encoded(), to: server.localAddress)
        let pong = try #require(raw.receive())
        #expect(try WireMessage(response: pong.bytes) == WireMessage(.pong, id: id))
        #expect(pong.sender == server.localAddress)
        // Counters are updated by the server thread around the send: wait for them.
        #expect(eventually { let s = server.stats; return s.udpReceived == 1 && s.udpSent == 1 && s.udpPeers == 1 })
        raw.send([0xff, 0xff, 0xff], to: server.localAddress)
        raw.send(try WireMessage(.ping, id: id).encoded(), to: server.localAddress)
        _ = try #require(raw.receive())
        #expect(eventually { server.stats.udpMalformed == 1 })
        server.stop()
    }

    @Test func ipv6AndDualStack() throws {
        let v6 = try loopbackServer("[::1]:0")
        #expect(v6.localAddress.family == .ipv6)
        #expect(v6.localAddress.description == "[::1]:\(v6.localAddress.port)")
        // [::] serves IPv4 clients too, and answers them from an IPv4 address.
        let dual = try loopbackServer("[::]:0")
        let raw = try RawUDP()
        raw.send(try WireMessage(.ping, id: uniqueID("d")).encoded(),
                 to: SocketAddress(ipv4: 127, 0, 0, 1, port: dual.localAddress.port))
        let pong = try #require(raw.receive())
        #expect(try WireMessage(response: pong.bytes).command == .pong)
        // ... unless it is IPv6-only.
        var o = ServerOptions(listenAddress: try SocketAddress(parsing: "[::]:0"))
        o.ipv6Only = true
        let only = try RndzServer(options: o)
        try only.start()
        raw.send(try WireMessage(.ping, id: uniqueID("o")).encoded(),
                 to: SocketAddress(ipv4: 127, 0, 0, 1, port: only.localAddress.port))
        #expect(raw.receive(timeout: .milliseconds(300)) == nil)
    }

    @Test func addressInUse() throws {
        let a = try loopbackServer()
        #expect(throws: RndzError.addressInUse) {
            _ = try RndzServer(options: ServerOptions(listenAddress: a.localAddress))
        }
    }

    @Test func runAsyncStopsOnStopAndOnCancel() async throws {
        let s1 = try RndzServer(options: ServerOptions(listenAddress: try SocketAddress(parsing: "127.0.0.1:0")))
        let t1 = Task { try await s1.run() }
        try await Task.sleep(for: .milliseconds(50))
        s1.stop()
        try await t1.value

        let s2 = try RndzServer(options: ServerOptions(listenAddress: try SocketAddress(parsing: "127.0.0.1:0")))
        let t2 = Task { try await s2.run() }
        try await Task.sleep(for: .milliseconds(50))
        t2.cancel()
        try await t2.value  // run() returns normally once the cancellation stopped it
    }

    @Test func socketConfigureIsCalledAndCanAbort() throws {
        let seen = Mutex<[Int32]>([])  // socket types
        var o = ServerOptions(listenAddress: try SocketAddress(parsing: "127.0.0.1:0"))
        o.socketConfigure = { fd, family, type in
            #expect(fd >= 0 && family == AF_INET)
            seen.withLock { $0.append(type) }
        }
        _ = try RndzServer(options: o)
        // One call per socket: UDP, and TCP when the library serves it too (with port 0 the
        // library may try more than one port to find one free for both).
        let types = Set(seen.withLock { $0 })
        #expect(types == (o.enableTCP ? [Int32(SOCK_DGRAM.rawValue), Int32(SOCK_STREAM.rawValue)]
                                      : [Int32(SOCK_DGRAM.rawValue)]))
        o.socketConfigure = { _, _, _ throws(RndzError) in throw RndzError(errno: EPERM) }
        #expect(throws: RndzError(errno: EPERM)) { _ = try RndzServer(options: o) }
    }
}

@Suite("UDP pairing", .timeLimit(.minutes(1)))
struct PairingTests {
    /// Server, listener, connector, hello and echo: synchronous API.
    @Test(arguments: ["127.0.0.1:0", "[::1]:0"])
    func pairs(_ listen: String) throws {
        let server = try loopbackServer(listen)
        let alice = try UDPListener(options: clientOptions("alice", server))
        #expect(alice.id.hasPrefix("alice-"))
        #expect(alice.fileDescriptor >= 0)
        try alice.waitRegistered(timeout: .seconds(5))
        #expect(eventually { server.stats.udpPeers == 1 })

        let bob = try UDPConnector(options: clientOptions("bob", server))
            .connect(to: alice.id)
        #expect(bob.peer.port == alice.localAddress.port)
        #expect(bob.peer.family == server.localAddress.family)
        #expect(bob.localAddress.port != 0)
        try bob.send(Array("hello".utf8))

        let got = try #require(try receiveData(alice))
        #expect(got.bytes == Array("hello".utf8))
        #expect(got.sender.port == bob.localAddress.port)
        try alice.send(got.bytes, to: got.sender)
        // UDPSocket drops the listener's punch itself: the first datagram is the echo.
        #expect(try bob.receive(timeout: .seconds(5)) == Array("hello".utf8))
    }

    @Test(arguments: ["127.0.0.1:0", "[::1]:0"])
    func pairsAsync(_ listen: String) async throws {
        let server = try loopbackServer(listen)
        let alice = try UDPListener(options: clientOptions("alice", server))
        try await alice.waitRegistered(timeout: .seconds(5))
        let bob = try await UDPConnector(options: clientOptions("bob", server))
            .connect(to: alice.id)
        try await bob.send(Array("ping".utf8))
        var got: Datagram?
        while got == nil {
            let d = try #require(try await alice.receive(timeout: .seconds(5)))
            if !isProtocol(d.bytes) { got = d }
        }
        try await alice.send(got!.bytes, to: got!.sender)
        #expect(try await bob.receive(timeout: .seconds(5)) == Array("ping".utf8))
    }

    /// A v1 listener (raw bytes as captured) against our connector; its punch arrives only
    /// after the connector returned, and UDPSocket drops exactly that packet.
    @Test func v1ListenerAndLatePunch() async throws {
        let server = try loopbackServer()
        let v1 = try RawUDP()
        let v1ID = uniqueID("v1")
        v1.send(try WireMessage(.ping, id: v1ID).encoded(), to: server.localAddress)
        #expect(try WireMessage(response: try #require(v1.receive()).bytes) == WireMessage(.pong, id: v1ID))

        let bobID = uniqueID("bob")
        // On a thread of its own: this test blocks its pool thread in v1.receive() meanwhile.
        let options = ClientOptions(id: bobID, servers: ["\(server.localAddress)"])
        let connecting = TestThread { Result { () throws(RndzError) in try syncConnect(options, to: v1ID) } }
        let fsync = try WireMessage(response: try #require(v1.receive()).bytes)
        #expect(fsync.command == .fsyncResponse && fsync.id == v1ID && fsync.peerID == bobID)
        let bobAddr = try SocketAddress(parsing: fsync.address)
        v1.send(try WireMessage(.rsync, id: v1ID, peerID: bobID).encoded(), to: server.localAddress)
        let bob = try connecting.join().get()
        #expect(bob.peer == v1.address)
        #expect(bob.localAddress.port == bobAddr.port)

        v1.send(try WireMessage(.rsync, id: v1ID, peerID: bobID).encoded(), to: bobAddr)  // the punch
        let other = try WireMessage(.rsync, id: "someone", peerID: bobID).encoded()
        v1.send(other, to: bobAddr)  // not the punch: data as far as rndz knows
        v1.send(Array("data".utf8), to: bobAddr)
        #expect(try await bob.receive(timeout: .seconds(5)) == other)
        #expect(try await bob.receive(timeout: .seconds(5)) == Array("data".utf8))
        try await bob.send(Array("back".utf8))
        #expect(v1.receive()?.bytes == Array("back".utf8))
    }

    /// The listener's peers as an AsyncSequence: the connector shows up, verified; the
    /// sequence ends when the consuming task is cancelled.
    @Test func peersSequenceYieldsConnectorsAndEndsOnCancel() async throws {
        let server = try loopbackServer()
        let alice = try UDPListener(options: clientOptions("alice", server))
        try await alice.waitRegistered(timeout: .seconds(5))
        #expect(try await alice.nextPeer(timeout: .milliseconds(20)) == nil)
        final class Seen: Sendable { let peers = Mutex<[UDPListener.Peer]>([]) }
        let seen = Seen()
        let consumer = Task {
            for try await peer in alice.peers { seen.peers.withLock { $0.append(peer) } }
        }
        let bobOptions = clientOptions("bob", server)
        let bobID = bobOptions.id
        let bob = try await UDPConnector(options: bobOptions).connect(to: alice.id)
        // Queued once the listener's probes verified the path.
        #expect(eventually { seen.peers.withLock { $0.contains { $0.id == bobID } } })
        let peer = try #require(seen.peers.withLock { $0.first { $0.id == bobID } })
        #expect(peer.address.port == bob.localAddress.port)
        #expect(peer.path.verified)
        let start = ContinuousClock.now
        consumer.cancel()
        try await consumer.value  // ends without an error
        #expect(ContinuousClock.now - start < .milliseconds(500))
    }

    @Test func notFoundIsTypedAndFast() async throws {
        try await expectNotFoundFast(
            sync: { (o, id) throws(RndzError) in _ = try syncConnect(o, to: id) },
            async: { (o, id) async throws(RndzError) in _ = try await UDPConnector(options: o).connect(to: id) })
    }

    @Test func timedOutIsTypedAndDistinct() async throws {
        let silent = try RawUDP()  // a "server" that never answers
        var o = ClientOptions(id: uniqueID("c"), servers: ["\(silent.address)"])
        o.round = .milliseconds(100)
        o.timeout = .milliseconds(300)
        await expectTimedOut(
            o, sync: { (o, id) throws(RndzError) in _ = try syncConnect(o, to: id) },
            async: { (o, id) async throws(RndzError) in _ = try await UDPConnector(options: o).connect(to: id) })
        // The connector asked in rounds.
        #expect(silent.receive(timeout: .milliseconds(100)) != nil)
        #expect(RndzError.timedOut != RndzError.notFound)
    }

    @Test func listenerWaitTimesOutAndCancels() async throws {
        let silent = try RawUDP()
        let l = try UDPListener(options: ClientOptions(id: uniqueID("l"), servers: ["\(silent.address)"]))
        #expect(throws: RndzError.timedOut) { try syncWaitRegistered(l, timeout: .milliseconds(100)) }
        await #expect(throws: RndzError.timedOut) { try await l.waitRegistered(timeout: .milliseconds(100)) }
        let t = Task { try await l.waitRegistered(timeout: .seconds(30)) }
        try await Task.sleep(for: .milliseconds(50))
        t.cancel()
        let r = await t.result
        #expect(throws: RndzError.canceled) { try r.get() }
        // The silent server saw the listener's pings, as v1 bytes.
        let ping = try #require(silent.receive())
        #expect(try WireMessage(request: ping.bytes).command == .ping)
    }

    @Test func receiveTimesOutAndCancels() async throws {
        let server = try loopbackServer()
        let l = try UDPListener(options: clientOptions("l", server))
        #expect(try syncReceive(l, timeout: .milliseconds(50)) == nil)
        #expect(try await l.receive(timeout: .milliseconds(50)) == nil)
        let t = Task { try await l.receive() }
        try await Task.sleep(for: .milliseconds(50))
        t.cancel()
        let r = await t.result
        #expect(throws: RndzError.canceled) { try r.get() }
    }

    @Test func byeOnDeinit() throws {
        let server = try loopbackServer()
        do {
            let l = try UDPListener(options: clientOptions("l", server))
            try l.waitRegistered(timeout: .seconds(5))
            #expect(eventually { server.stats.udpPeers == 1 })
        }
        #expect(eventually { server.stats.udpPeers == 0 })
    }

    @Test func badOptions() throws {
        try expectBadListenerOptionsRefused { (o) throws(RndzError) in _ = try UDPListener(options: o) }
        let server = try loopbackServer()
        #expect(throws: RndzError.badID) { _ = try UDPConnector(options: clientOptions("a", server)).connect(to: "") }
    }

    @Test func explicitLocalAddress() throws {
        let server = try loopbackServer()
        var o = clientOptions("l", server)
        o.localAddress = try SocketAddress(parsing: "127.0.0.1:0")
        let l = try UDPListener(options: o)
        #expect(l.localAddress.addressBytes == [127, 0, 0, 1])
        #expect(l.localAddress.port != 0)
    }
}

@Suite("Logging", .serialized)
struct LogTests {
    @Test func handlerGetsLibraryMessages() throws {
        let lines = Mutex<[String]>([])
        setLogHandler(level: .info) { level, msg in
            if level <= .info { lines.withLock { $0.append(msg) } }
        }
        defer { setLogHandler(level: .warn, nil) }
        let server = try RndzServer(options: ServerOptions(listenAddress: try SocketAddress(parsing: "127.0.0.1:0")))
        try server.start()
        // Logged by the server thread as it starts serving.
        #expect(eventually { lines.withLock { $0.contains { $0.contains("server listening on \(server.localAddress)") } } })
        server.stop()
    }

    @Test func levels() {
        #expect(LogLevel(parsing: "debug") == .debug)
        #expect(LogLevel(parsing: "WARN") == .warn)
        #expect(LogLevel(parsing: "4") == .trace)
        #expect(LogLevel(parsing: "loud") == nil)
        #expect(LogLevel.error < LogLevel.trace)
        #expect(RndzVersion.string == "\(RndzVersion.major).\(RndzVersion.minor).\(RndzVersion.patch)")
    }
}

@Suite("Server sets")
struct ServerSetTests {
    static let servers = ["192.0.2.1:8888", "192.0.2.2:8888", "192.0.2.3:8888", "198.51.100.7:8888",
                          "[2001:db8::1]:8888", "[2001:db8::2]:9999", "203.0.113.5:1", "203.0.113.5:65535"]

    /// The ranking of Tests/vectors/hrw.txt (made by Python's hashlib), in any order given.
    @Test func rankingMatchesTheVectors() throws {
        #expect(try serverRanking(id: "alice", servers: Self.servers) == [3, 2, 1, 5, 0, 6, 7, 4])
        let reversed = Array(Self.servers.reversed())
        let r = try serverRanking(id: "alice", servers: reversed).map { reversed[$0] }
        #expect(r == [3, 2, 1, 5, 0, 6, 7, 4].map { Self.servers[$0] })
        #expect(try serverRanking(id: "alice", servers: []) == [])
        #expect(throws: RndzError.badAddress) { try serverRanking(id: "x", servers: ["nonsense:"]) }
    }

    @Test func serversPerIDDefaultsToTwo() {
        #expect(ClientOptions(id: "a", servers: ["127.0.0.1:1"]).serversPerID == 2)
    }
}
