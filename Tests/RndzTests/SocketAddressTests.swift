import Rndz
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("SocketAddress")
struct SocketAddressTests {
    @Test func ipv4() throws {
        let a = try SocketAddress(parsing: "1.2.3.4:5678")
        #expect(a.family == .ipv4)
        #expect(a.addressBytes == [1, 2, 3, 4])
        #expect(a.port == 5678)
        #expect(a.description == "1.2.3.4:5678")
        #expect(a == SocketAddress(ipv4: 1, 2, 3, 4, port: 5678))
        #expect(try SocketAddress(parsing: "0.0.0.0:0").isUnspecified)
    }

    @Test func ipv6() throws {
        let a = try SocketAddress(parsing: "[2001:db8::1]:5678")
        #expect(a.family == .ipv6)
        #expect(a.addressBytes == [0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 11) + [1])
        #expect(a.port == 5678)
        #expect(a.scopeID == 0)
        #expect(a.description == "[2001:db8::1]:5678")
        #expect(!a.isIPv4Mapped)
        #expect(a.unmapped == a)
        let scoped = try SocketAddress(parsing: "[fe80::1%2]:80")
        #expect(scoped.scopeID == 2)
        #expect(scoped.description == "[fe80::1%2]:80")
        #expect(scoped != (try SocketAddress(parsing: "[fe80::1]:80")))
        #expect(try SocketAddress(parsing: "[::]:0").isUnspecified)
    }

    @Test func ipv4Mapped() throws {
        let m = try SocketAddress(parsing: "[::ffff:1.2.3.4]:5")
        #expect(m.family == .ipv6)
        #expect(m.isIPv4Mapped)
        // Written in IPv4 form, as on the wire; the value itself stays IPv6.
        #expect(m.description == "1.2.3.4:5")
        #expect(m.unmapped == (try SocketAddress(parsing: "1.2.3.4:5")))
        #expect(m != m.unmapped)
        #expect(try SocketAddress(m.storage) == m)
    }

    @Test(arguments: [
        "", "1.2.3.4", "1.2.3.4:", "1.2.3.4:65536", "1.2.3.4:-1", "1.2.3.4:x", "1.2.3.256:1",
        "::1:80", "[::1]80", "[::1]", "[1.2.3.4]:5", "[::1%]:5", "localhost:80", ":80",
    ])
    func malformed(_ text: String) {
        #expect(throws: RndzError.badAddress) { try SocketAddress(parsing: text) }
    }

    @Test(arguments: ["1.2.3.4:5678", "255.255.255.255:65535", "[2001:db8::1]:1", "[::1]:0",
                      "[fe80::abcd%7]:9", "[::ffff:10.0.0.1]:4"])
    func roundTrips(_ text: String) throws {
        let a = try SocketAddress(parsing: text)
        // through sockaddr_storage
        #expect(try SocketAddress(a.storage) == a)
        // through a sockaddr pointer and length
        let b = try a.withSockAddr { sa, len in try SocketAddress(sa, length: len) }
        #expect(b == a)
        #expect(Int(a.length) == (a.family == .ipv4 ? MemoryLayout<sockaddr_in>.size : MemoryLayout<sockaddr_in6>.size))
        // through text (mapped addresses come back unmapped, by design)
        #expect(try SocketAddress(parsing: a.description) == a.unmapped)
    }

    @Test func storageLayout() throws {
        let a = try SocketAddress(parsing: "1.2.3.4:258")
        var ss = a.storage
        let sin = withUnsafeBytes(of: &ss) { $0.loadUnaligned(as: sockaddr_in.self) }
        #expect(Int32(sin.sin_family) == AF_INET)
        #expect(sin.sin_port == UInt16(258).bigEndian)
        #expect(sin.sin_addr.s_addr == UInt32(0x0102_0304).bigEndian)
    }

    @Test func otherFamiliesRejected() {
        var ss = sockaddr_storage()
        ss.ss_family = sa_family_t(AF_UNIX)
        #expect(throws: RndzError(errno: EAFNOSUPPORT)) { try SocketAddress(ss) }
    }

    @Test func resolve() async throws {
        // Numeric text needs no lookup; "localhost" comes from /etc/hosts.
        #expect(try syncResolve("[::1]:7") == (try SocketAddress(parsing: "[::1]:7")))
        let l = try syncResolve("localhost:80", family: .ipv4)
        #expect(l == SocketAddress(ipv4: 127, 0, 0, 1, port: 80))
        let asyncL = try await SocketAddress.resolve("localhost:81", family: .ipv4)
        #expect(asyncL.port == 81)
        #expect(throws: RndzError.badAddress) { try syncResolve("[localhost]:80") }
        await #expect(throws: RndzError.badAddress) { try await SocketAddress.resolve("nope") }
    }

    @Test func hashable() throws {
        let s: Set<SocketAddress> = [
            try SocketAddress(parsing: "1.2.3.4:5"), SocketAddress(ipv4: 1, 2, 3, 4, port: 5),
            try SocketAddress(parsing: "[::1]:5"),
        ]
        #expect(s.count == 2)
    }
}

func syncResolve(_ text: String, family: SocketAddress.Family? = nil) throws(RndzError) -> SocketAddress {
    try SocketAddress.resolve(text, family: family)
}
