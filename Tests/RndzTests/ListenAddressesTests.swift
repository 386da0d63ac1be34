// One server on several addresses (ServerOptions.listenAddresses, RndzServer.localAddresses),
// and every UDP request answered from the address it was sent to. On Linux all of 127/8 is
// local, so 127.0.0.1 and 127.0.0.2 are two addresses of this host.
import Rndz
import Testing

#if canImport(Glibc)
import Glibc
#endif

private func addr(_ text: String) throws -> SocketAddress { try SocketAddress(parsing: text) }

/// A started server on `texts`.
private func server(_ texts: [String]) throws -> RndzServer {
    let s = try RndzServer(options: ServerOptions(listenAddresses: try texts.map(addr)))
    try s.start()
    return s
}

/// `a` with another port.
private func withPort(_ a: SocketAddress, _ port: UInt16) throws -> SocketAddress {
    let host = a.description.hasPrefix("[") ? String(a.description.prefix { $0 != "]" }) + "]"
                                            : String(a.description.prefix { $0 != ":" })
    return try addr("\(host):\(port)")
}

/// A Ping from a fresh socket on `from` to `to`; the Pong's sender, or nil if none came.
private func pongSender(from: String, to: SocketAddress) throws -> SocketAddress? {
    let raw = try RawUDP(bind: from)
    let id = uniqueID("p")
    raw.send(try WireMessage(.ping, id: id).encoded(), to: to)
    guard let pong = raw.receive(timeout: .seconds(2)) else { return nil }
    #expect(try WireMessage(response: pong.bytes) == WireMessage(.pong, id: id))
    return pong.sender
}

@Suite("Several listen addresses", .timeLimit(.minutes(1)))
struct ListenAddressesTests {
    @Test func listenAddressIsTheFirstOfListenAddresses() throws {
        var o = ServerOptions()
        #expect(o.listenAddresses.map(\.description) == ["0.0.0.0:8888"])
        #expect(o.listenAddress.description == "0.0.0.0:8888")
        let a = try addr("127.0.0.1:0"), b = try addr("127.0.0.2:0")
        o.listenAddresses = [a, b]
        #expect(o.listenAddress == a)
        o.listenAddress = b
        #expect(o.listenAddresses == [b])
        #expect(ServerOptions(listenAddress: a).listenAddresses == [a])
        #expect(ServerOptions(listenAddresses: [b, a]).listenAddress == b)
        #expect(ServerOptions(listenAddresses: []).listenAddress.description == "0.0.0.0:8888")
        #expect(ServerOptions.maxListenAddresses == 16)
    }

    @Test func noneOrTooManyIsInvalid() throws {
        #expect(throws: RndzError.invalidArgument) {
            _ = try RndzServer(options: ServerOptions(listenAddresses: []))
        }
        let many = try (1...17).map { try addr("127.0.0.\($0):0") }
        #expect(throws: RndzError.invalidArgument) {
            _ = try RndzServer(options: ServerOptions(listenAddresses: many))
        }
    }

    /// Every address bound, in order, one port for all (port 0), each answering a Ping from
    /// itself.
    @Test func servesEveryAddress() throws {
        let texts = ["127.0.0.1:0", "127.0.0.2:0", "[::1]:0"]
        let s = try server(texts)
        #expect(s.localAddresses.count == 3)
        guard s.localAddresses.count == 3 else { return }
        #expect(s.localAddress == s.localAddresses[0])
        let port = s.localAddress.port
        #expect(port != 0)
        for (local, text) in zip(s.localAddresses, texts) {
            #expect(local == (try withPort(addr(text), port)), "\(s.localAddresses)")
            let from = local.family == .ipv4 ? "127.0.0.1:0" : "[::1]:0"
            #expect(try pongSender(from: from, to: local) == local)
        }
    }

    /// An explicit port is kept; the other address, with port 0, gets one too.
    @Test func explicitPortIsKept() throws {
        let a = try server(["127.0.0.1:0"])
        let port = a.localAddress.port
        a.stop()
        let b: RndzServer
        do {
            b = try server(["127.0.0.1:\(port)", "127.0.0.2:0"])
        } catch let e as RndzError where e == .addressInUse {
            return  // another test took the port meanwhile
        }
        #expect(b.localAddresses.count == 2)
        #expect(b.localAddresses.first == (try addr("127.0.0.1:\(port)")))
        #expect(b.localAddresses.last.map { $0.port != 0 && $0.addressBytes == [127, 0, 0, 2] } == true)
    }

    /// A listener registered through one address is found by a connector asking through the
    /// other: one table of ids, and the request forwarded to the listener leaves from the
    /// address the listener wrote to (else its socket, connected or not, would not take it).
    @Test func udpPairsAcrossAddresses() throws {
        let s = try server(["127.0.0.1:0", "127.0.0.2:0"])
        try #require(s.localAddresses.count == 2)
        let alice = try UDPListener(options: ClientOptions(
            id: uniqueID("alice"), servers: ["\(s.localAddresses[1])"]))
        try alice.waitRegistered(timeout: .seconds(5))
        let bob = try UDPConnector(options: ClientOptions(
            id: uniqueID("bob"), servers: ["\(s.localAddresses[0])"])).connect(to: alice.id)
        try bob.send(Array("hello".utf8))
        let got = try #require(try receiveData(alice))
        #expect(got.bytes == Array("hello".utf8))
        try alice.send(got.bytes, to: got.sender)
        #expect(try bob.receive(timeout: .seconds(5)) == Array("hello".utf8))
    }

    @Test func tcpPairsAcrossAddresses() throws {
        let s = try server(["127.0.0.1:0", "127.0.0.2:0"])
        try #require(s.localAddresses.count == 2)
        let alice = try TCPListener(options: ClientOptions(
            id: uniqueID("alice"), servers: ["\(s.localAddresses[1])"]))
        try alice.waitRegistered(timeout: .seconds(5))
        let bob = try TCPConnector(options: ClientOptions(
            id: uniqueID("bob"), servers: ["\(s.localAddresses[0])"])).connect(to: alice.id)
        let a = try syncAccept(alice, timeout: .seconds(5))
        try bob.send(Array("hello".utf8))
        #expect(try receiveExactly(a, 5) == Array("hello".utf8))
    }

    /// A server on a wildcard address answers a Ping sent to 127.0.0.2 from 127.0.0.2, not
    /// from the address the kernel would pick toward the client (127.0.0.1): IP_PKTINFO,
    /// also on a dual-stack IPv6 socket (an IPv4-mapped request).
    @Test(arguments: ["0.0.0.0:0", "[::]:0"])
    func wildcardAnswersFromTheAddressReached(_ listen: String) throws {
        let s = try server([listen])
        let to = try addr("127.0.0.2:\(s.localAddress.port)")
        #expect(try pongSender(from: "127.0.0.1:0", to: to) == to)
    }
}
