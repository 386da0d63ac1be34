import Rndz
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Authenticated ids through the overlay and the CLI (the C tests cover the protocol in
/// depth: Tests/c/test_security.c, Tests/unit/test_auth.c).
@Suite("Security", .timeLimit(.minutes(1)))
struct SecurityTests {
    static let secret = Array("0123456789abcdef0123456789abcdef".utf8)
    /// HMAC-SHA256(secret, "rndz id credential v1" || "alice"), computed with Python's hmac.
    static let aliceHex = "f9416554cb40020c881fcee3ab30ce1b95a72b4f18c556b0970456217bef9a19"

    @Test func credentialDeriveAndHex() throws {
        let c = try Credential.derive(secret: Self.secret, id: "alice")
        #expect(c.hex == Self.aliceHex)
        #expect(c.bytes.count == Credential.length)
        #expect(Credential(hex: "  \(Self.aliceHex.uppercased())\n") == c)
        #expect(Credential(hex: String(Self.aliceHex.dropLast())) == nil)
        #expect(Credential(hex: String(Self.aliceHex.dropLast()) + "g") == nil)
        #expect(Credential(bytes: [1, 2, 3]) == nil)
        #expect(!c.description.contains(Self.aliceHex.prefix(8)))  // not printed
        #expect(try Credential.derive(secret: Self.secret, id: "bob") != c)
        #expect(throws: RndzError.invalidArgument) {
            try Credential.derive(secret: Array("short".utf8), id: "alice")
        }
    }

    @Test func serverWithSecret() throws {
        var so = ServerOptions(listenAddress: try SocketAddress(parsing: "127.0.0.1:0"))
        so.secret = Array("short".utf8)
        #expect(throws: RndzError.invalidArgument) { try RndzServer(options: so) }
        so.secret = []
        #expect(throws: RndzError.invalidArgument) { try RndzServer(options: so) }
        so.secret = Self.secret
        let server = try RndzServer(options: so)
        try server.start()
        let id = uniqueID("alice")
        var co = ClientOptions(id: id, servers: ["\(server.localAddress)"])
        co.localAddress = try SocketAddress(parsing: "127.0.0.1:0")
        // without a credential: refused
        let lonely = try UDPListener(options: co)
        #expect(throws: RndzError.timedOut) { try lonely.waitRegistered(timeout: .milliseconds(500)) }
        #expect(eventually { server.stats.authFailed > 0 })
        // with another id's credential: refused
        co.credential = try Credential.derive(secret: Self.secret, id: "mallory")
        let wrong = try UDPListener(options: co)
        #expect(throws: RndzError.timedOut) { try wrong.waitRegistered(timeout: .milliseconds(500)) }
        // with its own: registered, and a connector with its own finds it
        co.credential = try Credential.derive(secret: Self.secret, id: id)
        let listener = try UDPListener(options: co)
        try listener.waitRegistered(timeout: .seconds(3))
        let cid = uniqueID("carol")
        var cc = ClientOptions(id: cid, servers: ["\(server.localAddress)"])
        cc.localAddress = try SocketAddress(parsing: "127.0.0.1:0")
        cc.credential = try Credential.derive(secret: Self.secret, id: cid)
        cc.timeout = .seconds(5)
        let sock = try syncConnect(cc, to: id)
        #expect(sock.peer == listener.localAddress)
        #expect(server.stats.authReplayed == 0)
    }

    @Test func limitsInOptionsAndStats() throws {
        var so = ServerOptions(listenAddress: try SocketAddress(parsing: "127.0.0.1:0"))
        #expect(so.syncRate == 20 && so.syncBurst == 40)
        #expect(so.fsyncRate == 10 && so.fsyncBurst == 20)
        #expect(so.maxTCPConnections == 65536 && so.maxTCPConnectionsPerAddress == 256)
        #expect(so.maxIDLength == 255)
        so.maxIDLength = 8
        let server = try RndzServer(options: so)
        try server.start()
        var co = ClientOptions(id: "a-rather-long-id", servers: ["\(server.localAddress)"])
        co.localAddress = try SocketAddress(parsing: "127.0.0.1:0")
        let l = try UDPListener(options: co)
        #expect(throws: RndzError.timedOut) { try l.waitRegistered(timeout: .milliseconds(300)) }
        #expect(server.stats.idRefused > 0)
    }
}

/// A file in /tmp with these contents; the caller unlinks it.
func tempFile(_ contents: String) -> String {
    var template = Array("/tmp/rndz-test-XXXXXX".utf8CString)
    let fd = mkstemp(&template)
    precondition(fd >= 0)
    _ = contents.withCString { write(fd, $0, strlen($0)) }
    close(fd)
    let path = template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    return String(decoding: path, as: UTF8.self)
}

/// The CLI: `credential`, `server --secret-file`, `client --credential-file`. In CLITests'
/// suite, which is serialized: its child-process helper wants no other spawn at the same time.
extension CLITests {
    @Test func credentialCommand() throws {
        let secretFile = tempFile("0123456789abcdef0123456789abcdef\n")  // newline stripped
        defer { unlink(secretFile) }
        let c = try Child.run(["credential", "--secret-file", secretFile, "--id", "alice"])
        #expect(c.status == 0, "\(c.stderrText)")
        #expect(c.stdoutText == SecurityTests.aliceHex + "\n")
        let short = tempFile("too short\n")
        defer { unlink(short) }
        for args in [["credential", "--id", "alice"],
                     ["credential", "--secret-file", short, "--id", "alice"],
                     ["credential", "--secret-file", "/nonexistent/x", "--id", "alice"],
                     ["server", "--secret-file", short]] {
            let m = try Child.run(args)
            #expect(m.status == 2, "\(args): \(m.stderrText)")
            #expect(m.stdoutText.isEmpty)
        }
        let help = try Child.run(["--help"])
        #expect(help.stdoutText.contains("credential"))
    }

    @Test func pairingWithCredentials() throws {
        let secretFile = tempFile("a secret of more than sixteen bytes")
        defer { unlink(secretFile) }
        let server = try Child(["server", "--listen-addr", "127.0.0.1:0", "--secret-file", secretFile])
        let line = try #require(server.readLine(), "server said: \(server.stderrText)")
        let addr = String(line.dropFirst("listening on ".count))
        let lid = uniqueID("L"), cid = uniqueID("C")
        func credFile(_ id: String) throws -> String {
            let r = try Child.run(["credential", "--secret-file", secretFile, "--id", id])
            return tempFile(r.stdoutText)
        }
        let lcred = try credFile(lid), ccred = try credFile(cid)
        defer { unlink(lcred); unlink(ccred) }
        let listener = try Child(["client", "--id", lid, "--server-addr", addr, "--credential-file", lcred])
        let reg = try #require(listener.readLine(), "listener said: \(listener.stderrText)")
        #expect(reg.hasPrefix("registered as \(lid) on "))
        // without a credential the connector finds nothing (its requests are dropped)
        let anon = try Child.run(["client", "--id", cid, "--server-addr", addr, "--remote-peer", lid,
                                  "--timeout", "500"])
        #expect(anon.status == 1)
        let c = try Child.run(["client", "--id", cid, "--server-addr", addr, "--remote-peer", lid,
                               "--credential-file", ccred])
        #expect(c.status == 0, "connector said: \(c.stderrText)")
        #expect(c.stdoutText.contains("hello"))
        let bad = try Child.run(["client", "--id", cid, "--server-addr", addr, "--remote-peer", lid,
                                 "--credential-file", secretFile])
        #expect(bad.status == 2)
        #expect(bad.stderrText.contains("64 hex digits"))
        listener.signal(SIGINT)
        #expect(listener.wait() == 0)
        server.signal(SIGTERM)
        #expect(server.wait() == 0)
    }
}
