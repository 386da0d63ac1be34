internal import CRndz

/// The credential of one id under a server's secret (``ServerOptions/secret``): 32 bytes the
/// operator derives (``derive(secret:id:)``, or `rndz-cli credential`) and hands to the holder
/// of that id only. A client holding it signs every request it sends to the servers
/// (``ClientOptions/credential``); a server with the secret serves nothing unsigned, nothing
/// signed for another id, and no replay. See SECURITY.md.
///
/// ```swift
/// let cred = try Credential.derive(secret: secretBytes, id: "alice")
/// print(cred.hex)   // for rndz-cli client --credential-file
/// ```
public struct Credential: Hashable, Sendable, CustomStringConvertible {
    /// The length of a credential in bytes (32).
    public static let length = Int(RNDZ_CREDENTIAL_LEN)

    /// The raw bytes (``length`` of them).
    public let bytes: [UInt8]

    /// Wraps raw bytes; nil unless there are exactly ``length``.
    public init?(bytes: [UInt8]) {
        guard bytes.count == Self.length else { return nil }
        self.bytes = bytes
    }

    /// Parses 64 hex digits (either case); whitespace around them is ignored. nil otherwise.
    public init?(hex: String) {
        var digits = Array(hex.utf8)
        while let c = digits.last, Self.isSpace(c) { digits.removeLast() }
        digits = Array(digits.drop(while: Self.isSpace))
        guard digits.count == 2 * Self.length else { return nil }
        var out = [UInt8]()
        out.reserveCapacity(Self.length)
        for i in stride(from: 0, to: digits.count, by: 2) {
            guard let hi = Self.nibble(digits[i]), let lo = Self.nibble(digits[i + 1]) else {
                return nil
            }
            out.append(hi << 4 | lo)
        }
        self.bytes = out
    }

    /// The bytes as 64 lowercase hex digits (what `rndz-cli credential` prints).
    public var hex: String {
        let digits = Array("0123456789abcdef".utf8)
        var s = [UInt8]()
        s.reserveCapacity(2 * bytes.count)
        for b in bytes {
            s.append(digits[Int(b >> 4)])
            s.append(digits[Int(b & 15)])
        }
        return String(decoding: s, as: UTF8.self)
    }

    /// Does not show the bytes: a credential is a secret.
    public var description: String { "Credential(\(Self.length) bytes)" }

    /// The credential of `id` under `secret` (at least 16 bytes):
    /// HMAC-SHA256(secret, "rndz id credential v1" || id).
    ///
    /// - Throws: ``RndzError/invalidArgument`` for a secret shorter than 16 bytes.
    public static func derive(secret: [UInt8], id: String) throws(RndzError) -> Credential {
        var out = [UInt8](repeating: 0, count: length)
        let idBytes = Array(id.utf8)
        let rc = secret.withUnsafeBufferPointer { sp in
            idBytes.withUnsafeBufferPointer { ip in
                ip.withMemoryRebound(to: CChar.self) { cp in
                    out.withUnsafeMutableBufferPointer { op in
                        rndz_credential_derive(sp.baseAddress, sp.count, cp.baseAddress, cp.count,
                                               op.baseAddress)
                    }
                }
            }
        }
        _ = try check(rc)
        return Credential(bytes: out)!
    }

    private static func isSpace(_ c: UInt8) -> Bool { c == 0x20 || (c >= 0x09 && c <= 0x0d) }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x61...0x66: return c - 0x61 + 10
        case 0x41...0x46: return c - 0x41 + 10
        default: return nil
        }
    }
}
