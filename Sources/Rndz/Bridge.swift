internal import CRndz

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Pairs of connected stream sockets joined end to end on one event thread of the C core
/// (`rndz_bridge_*`): bytes move with `splice(2)`, never through Swift, and a joined pair
/// costs no thread. A half-close passes through; a pair ends (both sockets closed) when both
/// directions ended, on an error, or after `idle` without a byte.
public final class Bridge: @unchecked Sendable {
    // Unchecked: the handle is immutable; the C bridge is safe from any thread.
    private let handle: OpaquePointer

    public init() throws(RndzError) {
        var h: OpaquePointer?
        _ = try check(rndz_bridge_create(&h))
        guard let h else { throw .closed }
        handle = h
    }

    deinit { rndz_bridge_destroy(handle) }

    /// Joins two connected stream sockets. The bridge owns both descriptors from now on
    /// (also when this throws: they are closed).
    public func join(_ a: Int32, _ b: Int32, idle: Duration? = nil) throws(RndzError) {
        let ms = idle.map { UInt32($0.clampedMilliseconds(max: Int64(UInt32.max))) } ?? 0
        _ = try check(rndz_bridge_add(handle, a, b, ms))
    }

    /// Joins a stream with a socket (the stream's descriptor is duplicated for the bridge, and
    /// the stream closed).
    public func join(_ stream: TCPStream, _ fd: Int32, idle: Duration? = nil) throws(RndzError) {
        let dupFD = dup(stream.fileDescriptor)
        let e = errno
        stream.close()
        if dupFD < 0 {
            close(fd)
            throw RndzError(errno: e)
        }
        try join(dupFD, fd, idle: idle)
    }

    /// Pairs still carrying.
    public var count: Int { Int(rndz_bridge_count(handle)) }
}
