import Rndz
import Testing

/// The Swift example of README.md, compiled and run here so that it cannot rot. The lines
/// between the BEGIN/END markers must appear verbatim (unindented) in README.md.
@Suite("README", .timeLimit(.minutes(1)))
struct ReadmeExampleTests {
    @Test func swiftExampleRuns() async throws {
        // BEGIN README
        // A rendezvous server on a free loopback port, serving in the background.
        let listen = try SocketAddress(parsing: "127.0.0.1:0")
        let server = try RndzServer(options: ServerOptions(listenAddress: listen))
        try server.start()
        let servers = ["\(server.localAddress)"]

        // Alice registers under her id and waits for peers.
        let alice = try UDPListener(options: ClientOptions(id: "alice", servers: servers))
        try await alice.waitRegistered(timeout: .seconds(5))

        // Bob asks the server for "alice" and gets a UDP socket connected to her.
        let bob = try await UDPConnector(options: ClientOptions(id: "bob", servers: servers))
            .connect(to: "alice")
        try await bob.send(Array("hello".utf8))

        // Alice echoes what she receives; Bob reads the reply.
        if let datagram = try await alice.receive(timeout: .seconds(5)) {
            try await alice.send(datagram.bytes, to: datagram.sender)
        }
        let reply = try await bob.receive(timeout: .seconds(5))
        print("\(bob.peer) replied \(String(decoding: reply ?? [], as: UTF8.self))")
        // END README
        #expect(reply == Array("hello".utf8))
    }

    @Test func readmeHasTheExample() throws {
        guard let readme = readTextFile(packageRoot + "/README.md") else { return }  // not written yet
        let source = try #require(readTextFile(packageRoot + "/Tests/RndzTests/ReadmeExampleTests.swift"))
        let lines = source.split(separator: "\n", omittingEmptySubsequences: false)
        let begin = try #require(lines.firstIndex { $0.hasSuffix("// BEGIN README") })
        let end = try #require(lines.firstIndex { $0.hasSuffix("// END README") })
        let indent = lines[begin].prefix { $0 == " " }.count
        let snippet = lines[(begin + 1)..<end].map { $0.dropFirst(min(indent, $0.prefix { $0 == " " }.count)) }
            .joined(separator: "\n")
        #expect(readme.contains(snippet), "README.md must contain the Swift example verbatim:\n\(snippet)")
    }
}
