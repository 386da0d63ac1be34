internal import CRndz

/// A protocol v1 message (the protobuf `Request` and `Response` of rndz 0.1.5), for tools
/// and tests that look at raw datagrams: e.g. to tell a peer's punch packet from its data.
public struct WireMessage: Hashable, Sendable {
    /// The command a message carries.
    public enum Command: Hashable, Sendable, CaseIterable {
        /// Request: register / keep alive.
        case ping
        /// Request: connect me to ``WireMessage/peerID``.
        case isync
        /// Request `Fsync` (defined by v1, unused by its clients).
        case fsync
        /// Request: answer to a forwarded connection request (and the punch to the peer).
        case rsync
        /// Request: forget me.
        case bye
        /// Response to ``ping``.
        case pong
        /// Response: ``WireMessage/peerID`` is at ``WireMessage/address`` ("" = not found).
        case redirect
        /// Response: ``WireMessage/peerID`` at ``WireMessage/address`` wants to connect.
        case fsyncResponse

        /// `true` for the commands of a `Response`.
        public var isResponse: Bool {
            switch self {
            case .pong, .redirect, .fsyncResponse: true
            default: false
            }
        }

        var c: rndz_cmd {
            switch self {
            case .ping: RNDZ_REQ_PING
            case .isync: RNDZ_REQ_ISYNC
            case .fsync: RNDZ_REQ_FSYNC
            case .rsync: RNDZ_REQ_RSYNC
            case .bye: RNDZ_REQ_BYE
            case .pong: RNDZ_RSP_PONG
            case .redirect: RNDZ_RSP_REDIRECT
            case .fsyncResponse: RNDZ_RSP_FSYNC
            }
        }

        init?(_ c: rndz_cmd) {
            guard let v = Command.allCases.first(where: { $0.c == c }) else { return nil }
            self = v
        }
    }

    /// The command.
    public var command: Command
    /// Field 1 of the message: the sender's id in a request, the addressee's in a response.
    public var id: String
    /// The id inside the command ("" for commands without one).
    public var peerID: String
    /// The address inside the command ("" for commands without one).
    public var address: String

    /// A message to encode.
    public init(_ command: Command, id: String, peerID: String = "", address: String = "") {
        self.command = command
        self.id = id
        self.peerID = peerID
        self.address = address
    }

    /// Decodes a `Request` (the messages clients send).
    ///
    /// - Throws: ``RndzError/truncated``, ``RndzError/malformedVarint``,
    ///   ``RndzError/wireType``, ``RndzError/invalidField``, ``RndzError/invalidUTF8``,
    ///   ``RndzError/noCommand``, ``RndzError/tooBig``.
    public init(request bytes: [UInt8]) throws(RndzError) {
        try self.init(bytes, response: false)
    }

    /// Decodes a `Response` (the messages servers send). Errors as ``init(request:)``.
    public init(response bytes: [UInt8]) throws(RndzError) {
        try self.init(bytes, response: true)
    }

    private init(_ bytes: [UInt8], response: Bool) throws(RndzError) {
        var m = rndz_msg()
        let rc = bytes.withUnsafeBufferPointer {
            rndz_msg_decode($0.baseAddress, $0.count, response ? 1 : 0, &m)
        }
        _ = try check(rc)
        guard let cmd = Command(m.cmd) else { throw .noCommand }
        // The string fields point into `bytes`, which is alive here; the codec checked UTF-8.
        func text(_ p: UnsafePointer<CChar>?, _ n: Int) -> String {
            guard let p, n > 0 else { return "" }
            return p.withMemoryRebound(to: UInt8.self, capacity: n) {
                String(decoding: UnsafeBufferPointer(start: $0, count: n), as: UTF8.self)
            }
        }
        self.command = cmd
        self.id = text(m.id, m.id_len)
        self.peerID = text(m.peer_id, m.peer_id_len)
        self.address = text(m.addr, m.addr_len)
    }

    /// Encodes the message as a UDP datagram body.
    ///
    /// - Throws: ``RndzError/tooBig`` over 1500 bytes.
    public func encoded() throws(RndzError) -> [UInt8] { try encode(framed: false) }

    /// Encodes the message as a TCP frame: a 2-byte big-endian length, then the body.
    public func framed() throws(RndzError) -> [UInt8] { try encode(framed: true) }

    private func encode(framed: Bool) throws(RndzError) -> [UInt8] {
        var id = self.id, peer = self.peerID, addr = self.address
        let cap = 2 + Int(RNDZ_MAX_MSG)
        var out = [UInt8](repeating: 0, count: cap)
        let n = id.withUTF8 { i in
            peer.withUTF8 { p in
                addr.withUTF8 { a in
                    i.withMemoryRebound(to: CChar.self) { i in
                        p.withMemoryRebound(to: CChar.self) { p in
                            a.withMemoryRebound(to: CChar.self) { a in
                                var m = rndz_msg(
                                    cmd: command.c, id: i.baseAddress, id_len: i.count,
                                    peer_id: p.baseAddress, peer_id_len: p.count,
                                    addr: a.baseAddress, addr_len: a.count)
                                return out.withUnsafeMutableBufferPointer { o in
                                    framed
                                        ? rndz_frame_encode(&m, o.baseAddress, o.count)
                                        : rndz_msg_encode(&m, o.baseAddress, o.count)
                                }
                            }
                        }
                    }
                }
            }
        }
        let len = try check(n)
        out.removeSubrange(Int(len)...)
        return out
    }
}
