internal import CRndz

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What a NAT check found out about the NAT in front of this host (`rndz_nat_check`).
public struct NATReport: Sendable, Hashable {
    /// How the NAT maps one local port (RFC 4787).
    public enum Mapping: String, Sendable, Hashable {
        case unknown
        /// One public address for every destination ("cone").
        case endpointIndependent = "endpoint-independent"
        /// One public address per destination ("symmetric").
        case endpointDependent = "endpoint-dependent"
    }
    /// How it picks public ports.
    public enum Allocation: Sendable, Hashable {
        case unknown, preserving, random
        case sequential(step: Int)
    }
    /// One destination asked, and what it saw (nil: no answer).
    public struct Observation: Sendable, Hashable {
        public var server: SocketAddress
        public var observed: SocketAddress?
        public var rtt: Duration?
    }

    public var local: SocketAddress
    public var observations: [Observation]
    public var mapping: Mapping
    public var allocation: Allocation
    /// Filtering, where a server on two addresses could test it.
    public var filtering: Mapping
    /// A datagram to our own public address came back (nil: not tested).
    public var hairpinning: Bool?
    /// The default gateway answered NAT-PMP ("nat-pmp"), PCP ("pcp"), nothing ("none"); nil:
    /// not tried.
    public var portMapping: String?
    /// The address the servers saw is not one of this host's.
    public var behindNAT: Bool

    /// The public addresses seen, without repeats, in the order of the observations.
    public var publicAddresses: [SocketAddress] {
        var seen: [SocketAddress] = []
        for o in observations { if let a = o.observed, !seen.contains(a) { seen.append(a) } }
        return seen
    }
}

extension NATReport.Mapping {
    init(_ c: Int32) {
        self = c == RNDZ_NAT_ENDPOINT_INDEPENDENT ? .endpointIndependent
            : c == RNDZ_NAT_ENDPOINT_DEPENDENT ? .endpointDependent : .unknown
    }
}

/// Checks the NAT in front of this host by asking rendezvous servers (`options.servers`; the
/// id is not needed and nothing is registered). Blocks for about a second (up to three with
/// a silent server). See `rndz_nat_check` for what each part means.
///
/// - Parameters:
///   - portMapping: ask the default gateway for NAT-PMP / PCP.
///   - hairpin: test hairpinning.
/// - Throws: ``RndzError/timedOut`` if no server answered; option errors.
public func checkNAT(options: ClientOptions, portMapping: Bool = true, hairpin: Bool = true)
    throws(RndzError) -> NATReport
{
    var r = rndz_nat_report()
    let flags = (portMapping ? 0 : RNDZ_NAT_NO_PORT_MAPPING) | (hairpin ? 0 : RNDZ_NAT_NO_HAIRPIN)
    let box = options.socketConfigure.map(SocketConfigBox.init)
    let rc = try options.withC(box) { (o) throws(RndzError) in
        withExtendedLifetime(box) { rndz_nat_check(o, UInt32(flags), &r) }
    }
    _ = try check(rc)
    var obs: [NATReport.Observation] = []
    let dests = withUnsafeBytes(of: r.dest) { Array($0.bindMemory(to: sockaddr_storage.self)) }
    let seen = withUnsafeBytes(of: r.observed) { Array($0.bindMemory(to: sockaddr_storage.self)) }
    let rtts = withUnsafeBytes(of: r.rtt_ms) { Array($0.bindMemory(to: UInt32.self)) }
    for i in 0..<min(Int(r.n_dest), dests.count) {
        let observed = seen[i].ss_family == 0 ? nil : try? SocketAddress(seen[i])
        obs.append(.init(server: try SocketAddress(dests[i]), observed: observed,
                         rtt: observed == nil ? nil : .milliseconds(Int(rtts[i]))))
    }
    let allocation: NATReport.Allocation =
        switch r.allocation {
        case RNDZ_NAT_PORT_PRESERVING: .preserving
        case RNDZ_NAT_PORT_SEQUENTIAL: .sequential(step: Int(r.port_step))
        case RNDZ_NAT_PORT_RANDOM: .random
        default: .unknown
        }
    return NATReport(
        local: try SocketAddress(r.local), observations: obs, mapping: .init(r.mapping),
        allocation: allocation, filtering: .init(r.filtering),
        hairpinning: r.hairpin < 0 ? nil : r.hairpin == 1,
        portMapping: r.port_mapping < 0 ? nil : ["none", "nat-pmp", "pcp"][Int(r.port_mapping)],
        behindNAT: r.behind_nat != 0)
}
