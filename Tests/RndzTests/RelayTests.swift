import Rndz
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A started server on loopback with its relay on a free port.
func relayServer() throws -> RndzServer {
    var o = ServerOptions(listenAddress: try SocketAddress(parsing: "127.0.0.1:0"))
    o.relayAddress = try SocketAddress(parsing: "127.0.0.1:0")
    let server = try RndzServer(options: o)
    try server.start()
    return server
}

@Suite("Relay", .timeLimit(.minutes(1)))
struct RelayTests {
    @Test func udpRelayedBothWays() async throws {
        let server = try relayServer()
        let relay = try #require(server.relayAddress)
        #expect(relay.port != 0)
        let lo = clientOptions("rl", server)
        let listener = try UDPListener(options: lo)
        try await listener.waitRegistered(timeout: .seconds(3))
        // The first accept switches the listener to per-peer sockets (and the relay): before
        // the connector asks.
        #expect(try syncAccept(listener, timeout: .zero) == nil)
        var co = clientOptions("rc", server)
        co.relay = .only
        let target = lo.id
        async let accepted = listener.accept(timeout: .seconds(8))
        let socket = try await UDPConnector(options: co).connect(to: target)
        let peer = try #require(try await accepted)
        #expect(socket.path.relayed && peer.path.relayed)
        #expect(socket.peer == relay && peer.peer == relay)
        #expect(peer.peerID == co.id)
        try await socket.send(Array("ping".utf8))
        #expect(try await peer.receive(timeout: .seconds(3)) == Array("ping".utf8))
        try await peer.send(Array("pong".utf8))
        #expect(try await socket.receive(timeout: .seconds(3)) == Array("pong".utf8))
        #expect(eventually { server.stats.relayForwarded >= 2 && server.stats.relaySessions == 1 })
        server.stop()
    }

    @Test func udpDirectByDefaultOnLoopback() async throws {
        let server = try relayServer()
        let lo = clientOptions("dl", server)
        let listener = try UDPListener(options: lo)
        try await listener.waitRegistered(timeout: .seconds(3))
        #expect(try syncAccept(listener, timeout: .zero) == nil)
        async let accepted = listener.accept(timeout: .seconds(8))
        let socket = try await UDPConnector(options: clientOptions("dc", server)).connect(to: lo.id)
        let peer = try #require(try await accepted)
        #expect(!socket.path.relayed && !peer.path.relayed)
        try await socket.send(Array("direct".utf8))
        let got = try await peer.receive(timeout: .seconds(3))
        #expect(got == Array("direct".utf8), "got \(got.map { "\($0)" } ?? "nothing")")
        #expect(server.stats.relayReceived == 0)
        server.stop()
    }

    @Test func udpConnectionsSequence() async throws {
        let server = try relayServer()
        let lo = clientOptions("sl", server)
        let listener = try UDPListener(options: lo)
        try await listener.waitRegistered(timeout: .seconds(3))
        let peers = listener.connections  // switches to per-peer sockets now
        var co = clientOptions("sc", server)
        co.relay = .only
        let socket = try await UDPConnector(options: co).connect(to: lo.id)
        var it = peers.makeAsyncIterator()
        let peer = try #require(try await it.next())
        #expect(peer.path.relayed && socket.path.relayed && peer.peerID == co.id)
        try await socket.send([1, 2, 3])
        #expect(try await peer.receive(timeout: .seconds(3)) == [1, 2, 3])
        server.stop()
    }

    @Test func tcpRelayed() async throws {
        let server = try relayServer()
        let lo = clientOptions("tl", server)
        let listener = try TCPListener(options: lo)
        try await listener.waitRegistered(timeout: .seconds(3))
        var co = clientOptions("tc", server)
        co.relay = .only
        async let accepted = listener.accept(timeout: .seconds(8))
        let stream = try await TCPConnector(options: co).connect(to: lo.id)
        let peer = try await accepted
        #expect(stream.path.relayed && peer.path.relayed)
        try await stream.send(Array("over the relay".utf8))
        try stream.finishSending()
        var got: [UInt8] = []
        while let chunk = try await peer.receive(timeout: .seconds(3)) { got += chunk }
        #expect(got == Array("over the relay".utf8))  // then the half-close came through
        stream.close()
        peer.close()
        listener.close()
        server.stop()
    }
}

@Suite("NAT check", .timeLimit(.minutes(1)))
struct NATCheckTests {
    @Test func loopbackHasNoNAT() throws {
        var so = ServerOptions(listenAddresses: [try SocketAddress(parsing: "127.0.0.1:0"),
                                                 try SocketAddress(parsing: "127.0.0.2:0")])
        so.enableTCP = false
        let server = try RndzServer(options: so)
        try server.start()
        let r = try checkNAT(options: ClientOptions(id: "x", servers: ["\(server.localAddress)"]),
                             portMapping: false)
        #expect(r.observations.count == 2)
        #expect(r.observations.allSatisfy { $0.observed != nil })
        #expect(r.mapping == .endpointIndependent)
        #expect(r.allocation == .preserving)
        #expect(!r.behindNAT)
        #expect(r.filtering == .endpointIndependent)
        #expect(r.portMapping == nil && r.hairpinning == nil)
        #expect(server.stats.udpPeers == 0)
        server.stop()
    }

    @Test func noServerTimesOut() throws {
        let quiet = try RawUDP()  // bound, never answers
        var o = ClientOptions(id: "x", servers: ["\(quiet.address)"])
        o.timeout = .milliseconds(500)
        #expect(throws: RndzError.timedOut) { try checkNAT(options: o, portMapping: false) }
    }
}
