internal import CRndz

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Server sets: the order in which rndz ranks `servers` for `id` (`rndz_server_rank`). A
/// listener registers with the first ``ClientOptions/serversPerID`` of it and a connector asks
/// those; every client ranks the same servers the same way, in whatever order they are given.
///
/// - Parameters:
///   - id: the id.
///   - servers: `host:port` of each server (a name is resolved to its first address); at
///     most 16.
/// - Returns: indices into `servers`, the server ranked first first.
/// - Throws: ``RndzError/badAddress``, ``RndzError/resolveFailed``, `E2BIG` (more than 16).
public func serverRanking(id: String, servers: [String]) throws(RndzError) -> [Int] {
    if id.utf8.contains(0) { throw .badID }
    if servers.contains(where: { $0.utf8.contains(0) }) { throw .badAddress }
    let c: [UnsafePointer<CChar>?] = servers.map { UnsafePointer(strdup($0)) }
    defer { for p in c { free(UnsafeMutablePointer(mutating: p)) } }
    var order = [Int](repeating: 0, count: servers.count)
    let rc = c.withUnsafeBufferPointer { cs in
        order.withUnsafeMutableBufferPointer { o in
            rndz_server_rank(id, cs.baseAddress, servers.count, o.baseAddress)
        }
    }
    if rc != 0 { throw RndzError(code: rc) }
    return order
}
