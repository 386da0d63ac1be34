#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// An IPv4 or IPv6 socket address (address and port): a plain value.
///
/// Text forms are `1.2.3.4:5678` and `[2001:db8::1]:5678` (`[fe80::1%2]:5678` with a
/// numeric scope). ``init(parsing:)`` never touches the network; ``resolve(_:family:)``
/// looks host names up (and blocks, or suspends in its `async` form).
///
/// An IPv4-mapped IPv6 address (`::ffff:1.2.3.4`) stays IPv6 in the value (it round-trips
/// through `sockaddr_storage` unchanged) but is *written* in IPv4 form, as rndz writes it on
/// the wire; ``unmapped`` gives the plain IPv4 value.
public struct SocketAddress: Hashable, Sendable, CustomStringConvertible {
    /// The address family.
    public enum Family: Hashable, Sendable {
        case ipv4
        case ipv6

        var af: Int32 { self == .ipv4 ? AF_INET : AF_INET6 }
    }

    /// The address family.
    public let family: Family
    /// The address in network byte order: 4 bytes for IPv4, 16 for IPv6.
    public let addressBytes: [UInt8]
    /// The port, in host byte order.
    public let port: UInt16
    /// The IPv6 scope (interface index); 0 for IPv4 and unscoped IPv6.
    public let scopeID: UInt32

    /// An IPv4 address from its four bytes, in the order they are written.
    public init(ipv4 a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8, port: UInt16) {
        self.family = .ipv4
        self.addressBytes = [a, b, c, d]
        self.port = port
        self.scopeID = 0
    }

    /// An IPv6 address from its 16 bytes in network order; `nil` if `bytes` is not 16 long.
    public init?(ipv6 bytes: [UInt8], port: UInt16, scopeID: UInt32 = 0) {
        guard bytes.count == 16 else { return nil }
        self.family = .ipv6
        self.addressBytes = bytes
        self.port = port
        self.scopeID = scopeID
    }

    /// Parses a numeric `a.b.c.d:port` or `[v6]:port`. No name lookup.
    ///
    /// - Throws: ``RndzError/badAddress``.
    public init(parsing text: String) throws(RndzError) {
        var ss = sockaddr_storage()
        _ = try check(cAddrParse(text, &ss))
        try self.init(ss)
    }

    /// Parses `text` like ``init(parsing:)`` and, if it is `host:port` with a host name,
    /// resolves the name. Blocks while resolving.
    ///
    /// - Parameter family: which family to pick among the results; `nil`: the first.
    /// - Throws: ``RndzError/badAddress``, ``RndzError/resolveFailed``.
    public static func resolve(_ text: String, family: Family? = nil) throws(RndzError)
        -> SocketAddress
    {
        var ss = sockaddr_storage()
        _ = try check(cAddrResolve(text, family?.af ?? AF_UNSPEC, &ss))
        return try SocketAddress(ss)
    }

    /// Resolves like ``resolve(_:family:)``, on a dedicated thread, so that the name lookup
    /// does not block Swift's cooperative thread pool.
    public static func resolve(_ text: String, family: Family? = nil) async throws(RndzError)
        -> SocketAddress
    {
        try await offPool { () throws(RndzError) in try resolve(text, family: family) }
    }

    /// Converts from a `sockaddr_storage` holding `AF_INET` or `AF_INET6`.
    ///
    /// - Throws: `EAFNOSUPPORT` for any other family.
    public init(_ storage: sockaddr_storage) throws(RndzError) {
        var ss = storage
        let r: SocketAddress? = withUnsafeBytes(of: &ss) { raw in
            switch Int32(storage.ss_family) {
            case AF_INET:
                let sin = raw.loadUnaligned(as: sockaddr_in.self)
                let a = withUnsafeBytes(of: sin.sin_addr) { Array($0) }
                return SocketAddress(ipv4: a[0], a[1], a[2], a[3], port: UInt16(bigEndian: sin.sin_port))
            case AF_INET6:
                let sin6 = raw.loadUnaligned(as: sockaddr_in6.self)
                let a = withUnsafeBytes(of: sin6.sin6_addr) { Array($0) }
                return SocketAddress(
                    ipv6: a, port: UInt16(bigEndian: sin6.sin6_port),
                    scopeID: sin6.sin6_scope_id)
            default:
                return nil
            }
        }
        guard let r else { throw RndzError(errno: EAFNOSUPPORT) }
        self = r
    }

    /// Converts from a `sockaddr` of `length` bytes (as `recvfrom` or `getsockname` fill).
    ///
    /// - Throws: `EAFNOSUPPORT` for a family other than IPv4 and IPv6, `EINVAL` if `length`
    ///   is too short for the family.
    public init(_ address: UnsafePointer<sockaddr>, length: socklen_t) throws(RndzError) {
        var ss = sockaddr_storage()
        let n = min(Int(length), MemoryLayout<sockaddr_storage>.size)
        let need: Int
        switch Int32(address.pointee.sa_family) {
        case AF_INET: need = MemoryLayout<sockaddr_in>.size
        case AF_INET6: need = MemoryLayout<sockaddr_in6>.size
        default: throw RndzError(errno: EAFNOSUPPORT)
        }
        guard n >= need else { throw RndzError.invalidArgument }
        withUnsafeMutableBytes(of: &ss) { dst in
            dst.copyMemory(from: UnsafeRawBufferPointer(start: address, count: n))
        }
        try self.init(ss)
    }

    /// The address as a `sockaddr_storage` (`AF_INET` or `AF_INET6`).
    public var storage: sockaddr_storage {
        var ss = sockaddr_storage()
        withUnsafeMutableBytes(of: &ss) { raw in
            switch family {
            case .ipv4:
                var sin = sockaddr_in()
                sin.sin_family = sa_family_t(AF_INET)
                sin.sin_port = port.bigEndian
                withUnsafeMutableBytes(of: &sin.sin_addr) { $0.copyBytes(from: addressBytes) }
                raw.storeBytes(of: sin, as: sockaddr_in.self)
            case .ipv6:
                var sin6 = sockaddr_in6()
                sin6.sin6_family = sa_family_t(AF_INET6)
                sin6.sin6_port = port.bigEndian
                sin6.sin6_scope_id = scopeID
                withUnsafeMutableBytes(of: &sin6.sin6_addr) { $0.copyBytes(from: addressBytes) }
                raw.storeBytes(of: sin6, as: sockaddr_in6.self)
            }
        }
        return ss
    }

    /// The length of the `sockaddr` for this family.
    public var length: socklen_t {
        socklen_t(family == .ipv4 ? MemoryLayout<sockaddr_in>.size : MemoryLayout<sockaddr_in6>.size)
    }

    /// Calls `body` with a `sockaddr` pointer and its length, e.g. for `sendto` or `bind`.
    public func withSockAddr<R, E: Error>(
        _ body: (UnsafePointer<sockaddr>, socklen_t) throws(E) -> R
    ) throws(E) -> R {
        var ss = storage
        let len = length
        return try withUnsafePointer(to: &ss) { p throws(E) -> R in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa throws(E) -> R in
                try body(sa, len)
            }
        }
    }

    /// `true` for an IPv6 address of the form `::ffff:a.b.c.d`.
    public var isIPv4Mapped: Bool {
        family == .ipv6 && addressBytes[0..<10].allSatisfy { $0 == 0 }
            && addressBytes[10] == 0xff && addressBytes[11] == 0xff
    }

    /// The IPv4 form of an IPv4-mapped IPv6 address; any other address unchanged.
    public var unmapped: SocketAddress {
        guard isIPv4Mapped else { return self }
        let a = addressBytes
        return SocketAddress(ipv4: a[12], a[13], a[14], a[15], port: port)
    }

    /// `true` for `0.0.0.0` and `::`.
    public var isUnspecified: Bool { addressBytes.allSatisfy { $0 == 0 } }

    /// The text form, `1.2.3.4:5678` or `[2001:db8::1]:5678` (from `rndz_addr_format`).
    public var description: String {
        withSockAddr { sa, _ in cAddrFormat(sa) }
    }
}
