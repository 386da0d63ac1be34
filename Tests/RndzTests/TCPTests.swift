import Rndz
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

// In an async context the async overloads win; these call the blocking forms.
func syncTCPConnect(_ o: ClientOptions, to target: String) throws(RndzError) -> TCPStream {
    try TCPConnector(options: o).connect(to: target)
}
func syncWaitRegistered(_ l: TCPListener, timeout: Duration) throws(RndzError) {
    try l.waitRegistered(timeout: timeout)
}
func syncAccept(_ l: TCPListener, timeout: Duration?) throws(RndzError) -> TCPStream {
    try l.accept(timeout: timeout)
}
func syncSend(_ s: TCPStream, _ bytes: [UInt8]) throws(RndzError) {
    try s.send(bytes)
}
func syncReceive(_ s: TCPStream, timeout: Duration?) throws(RndzError) -> [UInt8]? {
    try s.receive(timeout: timeout)
}

/// Exactly `count` bytes from a stream (fewer only if it ends first).
func receiveExactly(_ s: TCPStream, _ count: Int, timeout: Duration = .seconds(5)) throws(RndzError) -> [UInt8] {
    let deadline = ContinuousClock.now + timeout
    var out: [UInt8] = []
    while out.count < count {
        guard let got = try s.receive(maxLength: count - out.count, timeout: deadline - ContinuousClock.now)
        else { break }
        out += got
    }
    return out
}

/// A registered TCP listener on a fresh loopback server.
func registeredTCPListener(_ server: RndzServer, id: String = uniqueID("alice")) throws -> TCPListener {
    let l = try TCPListener(options: ClientOptions(id: id, servers: ["\(server.localAddress)"]))
    try l.waitRegistered(timeout: .seconds(5))
    return l
}

/// The two ends of a connection made through `server`: (connector's, listener's accepted).
func tcpPair(_ server: RndzServer, _ l: TCPListener) throws -> (TCPStream, TCPStream) {
    let bob = try syncTCPConnect(clientOptions("bob", server), to: l.id)
    let a = try syncAccept(l, timeout: .seconds(5))
    return (bob, a)
}

@Suite("TCP pairing", .timeLimit(.minutes(1)))
struct TCPPairingTests {
    /// Server, listener, connector, bytes both ways, end of stream: synchronous API.
    @Test(arguments: ["127.0.0.1:0", "[::1]:0"])
    func pairs(_ listen: String) throws {
        let server = try loopbackServer(listen)
        let alice = try TCPListener(options: clientOptions("alice", server))
        #expect(alice.id.hasPrefix("alice-"))
        #expect(alice.localAddress.port != 0)
        try alice.waitRegistered(timeout: .seconds(5))
        #expect(eventually { server.stats.tcpPeers == 1 })

        let bob = try TCPConnector(options: clientOptions("bob", server))
            .connect(to: alice.id)
        #expect(bob.peer.port == alice.localAddress.port)
        #expect(bob.peer.family == server.localAddress.family)
        #expect(bob.localAddress.port != 0)
        #expect(bob.fileDescriptor >= 0)
        // What the connect found: the handshake proved the path, over the address the server
        // saw (loopback is no LAN), with the kernel's RTT (at least the 1 ms it rounds up to).
        #expect(bob.path.verified)
        #expect(!bob.path.advertised && !bob.path.lan)
        #expect(bob.path.rtt.map { $0 >= .milliseconds(1) && $0 < .seconds(1) } == true)
        #expect(bob.path.elapsed < .seconds(5))

        let a = try alice.accept(timeout: .seconds(5))
        #expect(!a.path.verified)  // accepted streams carry no connect report
        // The accepted peer is the connector's port: the one it asked the server from.
        #expect(a.peer.port == bob.localAddress.port)
        #expect(a.peer.family == server.localAddress.family)
        #expect(a.localAddress.port == alice.localAddress.port)

        try bob.send(Array("hello".utf8))
        #expect(try receiveExactly(a, 5) == Array("hello".utf8))
        try a.send(Array("world!".utf8))
        #expect(try receiveExactly(bob, 6) == Array("world!".utf8))

        // End of stream is nil, distinct from a timeout.
        #expect(throws: RndzError.timedOut) { _ = try a.receive(timeout: .milliseconds(50)) }
        // A half close: bob reads alice's end after her data, and can still send to her.
        try a.send(Array("bye".utf8))
        try a.finishSending()
        #expect(try receiveExactly(bob, 3) == Array("bye".utf8))
        #expect(try bob.receive(timeout: .seconds(5)) == nil)
        try bob.send(Array("ok".utf8))
        #expect(try receiveExactly(a, 2) == Array("ok".utf8))
        bob.close()
        #expect(try a.receive(timeout: .seconds(5)) == nil)
        a.close()
        #expect(throws: RndzError.closed) { try a.finishSending() }
    }

    /// The same with the async API, and a payload larger than the socket buffers.
    @Test(arguments: ["127.0.0.1:0", "[::1]:0"])
    func pairsAsync(_ listen: String) async throws {
        let server = try loopbackServer(listen)
        let alice = try TCPListener(options: clientOptions("alice", server))
        try await alice.waitRegistered(timeout: .seconds(5))
        async let accepted = alice.accept(timeout: .seconds(5))
        let bob = try await TCPConnector(options: clientOptions("bob", server))
            .connect(to: alice.id)
        let a = try await accepted
        #expect(a.peer.port == bob.localAddress.port)
        #expect(bob.peer.port == alice.localAddress.port)

        // 4 MiB: a 64 KiB pattern (odd length, so chunks do not line up) repeated.
        let payload: [UInt8] = {
            let pattern = (0..<65_521).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 8) }
            var p: [UInt8] = []
            p.reserveCapacity(65 * pattern.count)
            for _ in 0..<65 { p += pattern }
            return p
        }()
        async let sent: Void = bob.send(payload)
        var got: [UInt8] = []
        while got.count < payload.count {
            guard let chunk = try await a.receive(timeout: .seconds(5)) else { break }
            got += chunk
        }
        try await sent
        #expect(got.count == payload.count)
        #expect(got == payload)

        try await a.send(Array("back".utf8))
        #expect(try await bob.receive(maxLength: 4, timeout: .seconds(5)) == Array("back".utf8))
        a.close()
        #expect(try await bob.receive(timeout: .seconds(5)) == nil)
    }

    @Test func connectionsYieldStreamsAndEndOnClose() async throws {
        let server = try loopbackServer()
        let alice = try registeredTCPListener(server)
        let consumer = Task {
            var streams: [TCPStream] = []  // kept: a released stream closes
            for try await stream in alice.connections {
                try await stream.send(Array("hi".utf8))
                streams.append(stream)
            }
            return streams
        }
        var bobs: [TCPStream] = []
        for _ in 0..<2 {
            let bob = try await TCPConnector(options: clientOptions("bob", server))
                .connect(to: alice.id)
            #expect(try await bob.receive(timeout: .seconds(5)) == Array("hi".utf8))
            bobs.append(bob)
        }
        let start = ContinuousClock.now
        alice.close()
        let accepted = try await consumer.value
        #expect(accepted.map(\.peer.port) == bobs.map(\.localAddress.port))
        #expect(ContinuousClock.now - start < .seconds(2))
        // Closing does not touch connections already accepted: the peers are still open (no
        // end of stream), only silent.
        #expect(throws: RndzError.timedOut) { _ = try syncReceive(bobs[0], timeout: .milliseconds(50)) }
        // A closed listener's sequence is empty.
        var more = 0
        for try await _ in alice.connections { more += 1 }
        #expect(more == 0)
    }

    @Test func connectionsEndOnCancel() async throws {
        let server = try loopbackServer()
        let alice = try registeredTCPListener(server)
        let consumer = Task {
            var n = 0
            for try await _ in alice.connections { n += 1 }
            return n
        }
        try await Task.sleep(for: .milliseconds(100))
        consumer.cancel()
        #expect(try await consumer.value == 0)
        // The listener itself is still open.
        #expect(throws: RndzError.timedOut) { try syncAccept(alice, timeout: .milliseconds(10)) }
    }

    /// The sequence's failure is typed: a `throws(RndzError)` function can iterate it.
    @Test func connectionsThrowTyped() async throws {
        func count(_ l: TCPListener) async throws(RndzError) -> Int {
            var n = 0
            for try await _ in l.connections { n += 1 }
            return n
        }
        let server = try loopbackServer()
        let alice = try registeredTCPListener(server)
        alice.close()
        #expect(try await count(alice) == 0)
    }

    @Test func notFoundIsTypedAndFast() async throws {
        try await expectNotFoundFast(
            sync: { (o, id) throws(RndzError) in _ = try syncTCPConnect(o, to: id) },
            async: { (o, id) async throws(RndzError) in _ = try await TCPConnector(options: o).connect(to: id) })
    }

    @Test func timedOutIsTypedAndDistinct() async throws {
        let silent = try RawTCPServer()  // accepts, never answers
        var o = ClientOptions(id: uniqueID("c"), servers: ["\(silent.address)"])
        o.timeout = .milliseconds(300)
        await expectTimedOut(
            o, sync: { (o, id) throws(RndzError) in _ = try syncTCPConnect(o, to: id) },
            async: { (o, id) async throws(RndzError) in _ = try await TCPConnector(options: o).connect(to: id) })
        // The silent server saw the connector's Isync, as a v1 frame.
        let c = try #require(silent.accept())
        let isync = try WireMessage(request: try #require(c.readFrame()))
        #expect(isync == WireMessage(.isync, id: o.id, peerID: "anyone"))
        #expect(RndzError.timedOut != RndzError.notFound)
    }

    /// A server that gives an address where nothing listens: the peer is found but cannot be
    /// reached, which is neither "not found" nor a server timeout.
    @Test func peerFailedIsTypedAndDistinct() throws {
        let fake = try RawTCPServer()
        let closedPort = try RawTCPServer(listening: false)  // bound, not listening: refuses
        var o = ClientOptions(id: uniqueID("c"), servers: ["\(fake.address)"])
        o.timeout = .milliseconds(800)
        let connecting = TestThread { [o] in
            Result { () throws(RndzError) in try syncTCPConnect(o, to: "ghost") }
        }
        let c = fake.accept()
        #expect(c != nil)
        if let c {
            let isync = try WireMessage(request: try #require(c.readFrame()))
            #expect(isync.command == .isync && isync.peerID == "ghost")
            c.send(try WireMessage(.redirect, id: "", peerID: "ghost", address: "\(closedPort.address)").framed())
        }
        #expect(throws: RndzError.peerFailed) { _ = try connecting.join().get() }
    }

    @Test func acceptTimesOutCancelsAndWakesOnClose() async throws {
        let server = try loopbackServer()
        let l = try registeredTCPListener(server)
        #expect(throws: RndzError.timedOut) { _ = try syncAccept(l, timeout: .milliseconds(50)) }
        #expect(throws: RndzError.timedOut) { _ = try syncAccept(l, timeout: .zero) }
        await #expect(throws: RndzError.timedOut) { _ = try await l.accept(timeout: .milliseconds(50)) }

        let cancelled = Task { try await l.accept() }
        try await Task.sleep(for: .milliseconds(50))
        cancelled.cancel()
        await #expect(throws: RndzError.canceled) { _ = try await cancelled.value }

        // close() wakes waiting accepts, blocking and async, without a limit.
        let blocked = TestThread { Result { () throws(RndzError) in try syncAccept(l, timeout: nil) } }
        let waiting = Task { try await l.accept() }
        try await Task.sleep(for: .milliseconds(100))
        let start = ContinuousClock.now
        l.close()
        #expect(throws: RndzError.closed) { _ = try blocked.join().get() }
        await #expect(throws: RndzError.closed) { _ = try await waiting.value }
        #expect(ContinuousClock.now - start < .seconds(2))
        #expect(throws: RndzError.closed) { _ = try syncAccept(l, timeout: nil) }
        l.close()  // idempotent
        // The server heard the Bye.
        #expect(eventually { server.stats.tcpPeers == 0 })
    }

    @Test func waitRegisteredTimesOutCancelsAndCloses() async throws {
        let silent = try RawTCPServer()
        let l = try TCPListener(options: ClientOptions(id: uniqueID("l"), servers: ["\(silent.address)"]))
        #expect(throws: RndzError.timedOut) { try syncWaitRegistered(l, timeout: .milliseconds(100)) }
        await #expect(throws: RndzError.timedOut) { try await l.waitRegistered(timeout: .milliseconds(100)) }
        let t = Task { try await l.waitRegistered(timeout: .seconds(30)) }
        try await Task.sleep(for: .milliseconds(50))
        t.cancel()
        await #expect(throws: RndzError.canceled) { try await t.value }
        // The silent server saw the listener's Ping, as a v1 frame, from the listening port.
        let c = try #require(silent.accept())
        #expect(c.peer.port == l.localAddress.port)
        #expect(try WireMessage(request: try #require(c.readFrame())) == WireMessage(.ping, id: l.id))
        l.close()
        let start = ContinuousClock.now
        #expect(throws: RndzError.closed) { try syncWaitRegistered(l, timeout: .seconds(5)) }
        await #expect(throws: RndzError.closed) { try await l.waitRegistered(timeout: .seconds(5)) }
        #expect(ContinuousClock.now - start < .seconds(1))
    }

    @Test func streamCloseWakesCallsAndRefusesLaterOnes() async throws {
        let server = try loopbackServer()
        let l = try registeredTCPListener(server)
        let (bob, a) = try tcpPair(server, l)
        let started = Atomic<Bool>(false)
        let reading = Task {
            started.store(true, ordering: .releasing)
            return try await a.receive()
        }
        // The pool may be busy with other tests: wait until the reader runs, then until it
        // is surely blocked in receive (a thread of its own, scheduled by the OS).
        while !started.load(ordering: .acquiring) { try await Task.sleep(for: .milliseconds(5)) }
        try await Task.sleep(for: .milliseconds(100))
        let start = ContinuousClock.now
        a.close()
        #expect(try await reading.value == nil)  // woken as at end of stream
        #expect(ContinuousClock.now - start < .seconds(2))
        #expect(throws: RndzError.closed) { try syncSend(a, [1]) }
        #expect(throws: RndzError.closed) { _ = try syncReceive(a, timeout: .zero) }
        await #expect(throws: RndzError.closed) { try await a.send([1]) }
        a.close()  // idempotent
        // The peer sees the end of the stream; sending to a closed peer fails, typed.
        #expect(try await bob.receive(timeout: .seconds(5)) == nil)
        var failed: RndzError?
        for _ in 0..<50 where failed == nil {
            do { try await bob.send([UInt8](repeating: 0, count: 65_536)) } catch { failed = error }
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(failed == RndzError(errno: EPIPE) || failed == RndzError(errno: ECONNRESET))
    }

    @Test func receiveCancels() async throws {
        let server = try loopbackServer()
        let l = try registeredTCPListener(server)
        let (bob, a) = try tcpPair(server, l)  // both kept: a released stream closes
        let t = Task { try await bob.receive() }
        try await Task.sleep(for: .milliseconds(50))
        t.cancel()
        await #expect(throws: RndzError.canceled) { _ = try await t.value }
        // The stream still works afterwards.
        #expect(throws: RndzError.timedOut) { _ = try syncReceive(bob, timeout: .milliseconds(10)) }
        try syncSend(a, [7])
        #expect(try syncReceive(bob, timeout: .seconds(5)) == [7])
    }

    @Test func badOptions() throws {
        try expectBadListenerOptionsRefused { (o) throws(RndzError) in _ = try TCPListener(options: o) }
        let server = try loopbackServer()
        let c = TCPConnector(options: clientOptions("a", server))
        #expect(throws: RndzError.badID) { _ = try c.connect(to: "") }
        #expect(throws: RndzError.badID) { _ = try c.connect(to: "x\0y") }
        #expect(throws: RndzError.noServer) {
            _ = try TCPConnector(options: ClientOptions(id: "a", servers: [])).connect(to: "b")
        }
    }

    @Test func explicitLocalAddressAndSocketConfigure() throws {
        let server = try loopbackServer()
        let types = Mutex<Set<Int32>>([])
        var o = clientOptions("l", server)
        o.localAddress = try SocketAddress(parsing: "127.0.0.1:0")
        o.socketConfigure = { _, _, type in types.withLock { _ = $0.insert(type) } }
        let l = try TCPListener(options: o)
        #expect(l.localAddress.addressBytes == [127, 0, 0, 1])
        #expect(l.localAddress.port != 0)
        try l.waitRegistered(timeout: .seconds(5))
        #expect(types.withLock { $0 } == [Int32(SOCK_STREAM.rawValue)])
        o.socketConfigure = { _, _, _ throws(RndzError) in throw RndzError(errno: EPERM) }
        #expect(throws: RndzError(errno: EPERM)) { _ = try TCPListener(options: o) }
    }
}
