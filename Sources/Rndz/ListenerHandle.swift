// What the UDP and TCP listeners keep of their C handle.
internal import CRndz

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A listener's C handle with what both listener classes need of it: the socket-configuration
/// box its callback uses (kept alive as long as the handle), its readiness descriptor
/// (borrowed: readable while a peer is queued or once closed) and the local address. The
/// owner destroys the handle in its deinit.
struct ListenerHandle: @unchecked Sendable {
    // Unchecked: the C handle may be used from any thread (rndz.h) except destroy, which only
    // the owner's deinit calls, when no other reference exists.
    let handle: OpaquePointer
    let configBox: SocketConfigBox?
    let readyFD: Int32
    let localAddress: SocketAddress

    /// Creates the C listener with `options`; if a later step fails, destroys it again.
    init(
        options: ClientOptions,
        create: (UnsafePointer<rndz_client_options>, UnsafeMutablePointer<OpaquePointer?>) -> Int32,
        destroy: (OpaquePointer) -> Void,
        readyFD: (OpaquePointer) -> Int32,
        localAddress: (OpaquePointer, UnsafeMutablePointer<sockaddr_storage>) -> Int32
    ) throws(RndzError) {
        let box = options.socketConfigure.map(SocketConfigBox.init)
        var h: OpaquePointer?
        _ = try check(try options.withC(box) { (o) throws(RndzError) in create(o, &h) })
        guard let h else { throw .closed }
        let (ready, local) = try cleaningUp({ destroy(h) }) { () throws(RndzError) in
            (try check(readyFD(h)), try cLocalAddress { localAddress(h, $0) })
        }
        self.handle = h
        self.configBox = box
        self.readyFD = ready
        self.localAddress = local
    }
}
