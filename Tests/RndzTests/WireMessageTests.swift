import Rndz
import Testing

/// The captured v1 vectors through the overlay's codec (the C tests check the codec itself in
/// depth; this checks the bridge: every field, both directions, framing).
@Suite("WireMessage")
struct WireMessageTests {
    struct Vector: Sendable, CustomStringConvertible {
        let name: String
        let tcp: Bool
        let response: Bool
        let bytes: [UInt8]
        var description: String { name }
    }

    static let vectors: [Vector] = {
        guard let text = readTextFile(packageRoot + "/Tests/vectors/rndz-v1-vectors.txt") else {
            return []
        }
        var out: [Vector] = []
        for line in text.split(separator: "\n") where !line.hasPrefix("#") && !line.hasPrefix("probe.") {
            let f = line.split(separator: "|").map { $0.trimmingCharacters() }
            guard f.count == 4 else { continue }
            let bytes = f[3].split(separator: " ").compactMap { UInt8($0, radix: 16) }
            // Responses come from the server; everything else (punch included) is a request.
            out.append(Vector(name: f[0], tcp: f[1] == "tcp", response: f[2].hasPrefix("srv"), bytes: bytes))
        }
        return out
    }()

    @Test func vectorsPresent() {
        #expect(Self.vectors.count >= 19)
    }

    @Test(arguments: vectors)
    func decodeEncode(_ v: Vector) throws {
        let body = v.tcp ? Array(v.bytes.dropFirst(2)) : v.bytes
        let m = v.response ? try WireMessage(response: body) : try WireMessage(request: body)
        #expect(m.command.isResponse == v.response)
        if v.tcp {
            #expect(try m.framed() == v.bytes)
        } else {
            #expect(try m.encoded() == v.bytes)
        }
    }

    @Test func fields() throws {
        let byName = Dictionary(uniqueKeysWithValues: Self.vectors.map { ($0.name, $0.bytes) })
        let isync = try WireMessage(request: try #require(byName["udp.isync"]))
        #expect(isync == WireMessage(.isync, id: "c2", peerID: "c1"))
        let fsync = try WireMessage(response: try #require(byName["udp.fsync"]))
        #expect(fsync == WireMessage(.fsyncResponse, id: "c1", peerID: "c2", address: "127.0.0.1:57456"))
        let empty = try WireMessage(response: try #require(byName["udp.redirect.empty"]))
        #expect(empty == WireMessage(.redirect, id: "c3", peerID: "nobody", address: ""))
        let v6 = try WireMessage(response: try #require(byName["udp.fsync.ipv6"]))
        #expect(v6.address == "[::1]:42719")
        let punch = try WireMessage(request: try #require(byName["udp.rsync.punch"]))
        #expect(punch.command == .rsync)
    }

    @Test func malformed() {
        #expect(throws: RndzError.self) { try WireMessage(request: [0xff, 0xff, 0xff]) }
        #expect(throws: RndzError.noCommand) { try WireMessage(request: [0x0a, 0x02, 0x70, 0x33]) }
        #expect(throws: RndzError.truncated) { try WireMessage(request: [0x0a, 0x05, 0x61]) }
        #expect(throws: RndzError.tooBig) { try WireMessage(request: [UInt8](repeating: 0, count: 1501)) }
        #expect(throws: RndzError.tooBig) {
            try WireMessage(.ping, id: String(repeating: "x", count: 1600)).encoded()
        }
        // Application data is not a protocol message.
        #expect(throws: RndzError.self) { try WireMessage(request: Array("hello".utf8)) }
    }
}

extension Substring {
    func trimmingCharacters() -> String {
        String(drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }
}
