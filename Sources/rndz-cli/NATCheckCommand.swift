// NATCheckCommand.swift: rndz-cli nat-check, its text and JSON reports.
import Dispatch
import Rndz
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// MARK: - nat-check

let natCheckCommand = Command(
    name: "nat-check",
    summary: "tell how the NAT in front of this host maps, allocates and filters UDP",
    usage: "rndz-cli nat-check --server-addr ADDR [--server-addr ADDR ...] [--local-addr ADDR] [--json] [--no-port-mapping]",
    details: """
        Asks the rendezvous servers what address they see for one local port (and the
        servers' other addresses, which they name): the same address everywhere is an
        endpoint-independent mapping ("cone"), one per destination an
        endpoint-dependent one ("symmetric"), whose port allocation is then told
        (preserving, sequential with its step, or random). Filtering is tested where
        a server has a second address, hairpinning by a datagram to our own public
        address, and NAT-PMP / PCP by asking the default gateway. Nothing is
        registered. Give two server addresses (or a server on two) to tell the
        mapping. --json prints one JSON object (key "mapping": "endpoint-independent",
        "endpoint-dependent" or "unknown"). Exit status 1 if no server answered.
        """,
    flags: [
        Flag("server-addr", value: "ADDR", "a rendezvous server, host:port (required; repeatable)"),
        Flag("local-addr", value: "ADDR", "local address to check from (default: any, port chosen)"),
        Flag("json", "print one JSON object instead of text"),
        Flag("no-port-mapping", "do not ask the default gateway (NAT-PMP, PCP)"),
        Flag("timeout", value: "MS", "wait at most MS ms (up to 3000) for the servers"),
    ],
    run: runNATCheck)

@Sendable func runNATCheck(_ f: ParsedFlags, _ v: Verbosity) -> Int32 {
    let servers = f.all("server-addr")
    guard !servers.isEmpty else {
        v.error("nat-check needs at least one --server-addr ADDR (see 'rndz-cli nat-check --help')")
        return ExitCode.usage
    }
    var opts = ClientOptions(id: "rndz-nat-check", servers: servers)
    if let text = f.last("local-addr") {
        do {
            opts.localAddress = try SocketAddress(parsing: text)
        } catch {
            v.error("bad --local-addr '\(text)': \(error)")
            return ExitCode.usage
        }
    }
    if let text = f.last("timeout") {
        guard let ms = Int64(text), ms > 0 else {
            v.error("bad --timeout '\(text)': a positive number of milliseconds")
            return ExitCode.usage
        }
        opts.timeout = .milliseconds(ms)
    }
    let report: NATReport
    do {
        report = try checkNAT(options: opts, portMapping: !f.has("no-port-mapping"))
    } catch .timedOut {
        v.error("no rendezvous server answered (\(servers.joined(separator: ", ")))")
        return ExitCode.failure
    } catch {
        v.error("nat check failed: \(error)")
        return ExitCode.failure
    }
    printOut(f.has("json") ? natJSON(report) : natText(report))
    return ExitCode.ok
}

func natAllocationWord(_ a: NATReport.Allocation) -> String {
    switch a {
    case .unknown: "unknown"
    case .preserving: "preserving"
    case .random: "random"
    case .sequential(let step): "sequential, step \(step)"
    }
}

/// Human output, like `tailscale netcheck`: one fact per line.
func natText(_ r: NATReport) -> String {
    var lines = ["NAT check from \(r.local):"]
    for o in r.observations {
        let seen = o.observed.map { "\($0)" } ?? "no answer"
        let rtt = o.rtt.map { " (\(milliseconds($0)) ms)" } ?? ""
        lines.append("  * \(o.server) sees \(seen)\(rtt)")
    }
    let pub = r.publicAddresses.map(\.description).joined(separator: ", ")
    lines.append("  * public address: \(pub.isEmpty ? "unknown" : pub)"
        + (r.behindNAT ? "" : " (this host's own: no NAT)"))
    let mappingNote =
        switch r.mapping {
        case .endpointIndependent: " (one public port for every destination: hole punching works)"
        case .endpointDependent: " (a public port per destination: \"symmetric\")"
        case .unknown: " (ask two server addresses to tell)"
        }
    lines.append("  * mapping: \(r.mapping.rawValue)\(mappingNote)")
    lines.append("  * port allocation: \(natAllocationWord(r.allocation))")
    lines.append("  * filtering: \(r.filtering.rawValue)"
        + (r.filtering == .unknown ? " (needs a server on two addresses)" : ""))
    lines.append("  * hairpinning: " + (r.hairpinning.map { $0 ? "yes" : "no" } ?? "not tested"))
    lines.append("  * port mapping (NAT-PMP, PCP): " + (r.portMapping ?? "not tried"))
    return lines.joined(separator: "\n")
}

func jsonString(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case _ where u.value < 0x20:
            let hex = String(u.value, radix: 16)
            out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
        default: out.unicodeScalars.append(u)
        }
    }
    return out + "\""
}

func natJSON(_ r: NATReport) -> String {
    let obs = r.observations.map { o in
        "{\"server\":\(jsonString(o.server.description)),\"observed\":"
            + (o.observed.map { jsonString($0.description) } ?? "null") + ",\"rtt_ms\":"
            + (o.rtt.map { "\(milliseconds($0))" } ?? "null") + "}"
    }
    var step = "null"
    if case .sequential(let s) = r.allocation { step = "\(s)" }
    let alloc: String =
        switch r.allocation {
        case .unknown: "unknown"
        case .preserving: "preserving"
        case .random: "random"
        case .sequential: "sequential"
        }
    let fields = [
        "\"local\":\(jsonString(r.local.description))",
        "\"public\":[" + r.publicAddresses.map { jsonString($0.description) }.joined(separator: ",") + "]",
        "\"behind_nat\":\(r.behindNAT)",
        "\"mapping\":\(jsonString(r.mapping.rawValue))",
        "\"allocation\":\(jsonString(alloc))",
        "\"port_step\":\(step)",
        "\"filtering\":\(jsonString(r.filtering.rawValue))",
        "\"hairpinning\":" + (r.hairpinning.map { "\($0)" } ?? "null"),
        "\"port_mapping\":" + (r.portMapping.map(jsonString) ?? "null"),
        "\"observations\":[" + obs.joined(separator: ",") + "]",
    ]
    return "{" + fields.joined(separator: ",") + "}"
}
