// PipeCommand.swift: rndz-cli pipe, like nc over a reliable stream.
import Dispatch
import Rndz
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// MARK: - pipe

let pipeCommand = Command(
    name: "pipe",
    summary: "like nc: stdin to a peer, the peer's bytes to stdout, over a reliable stream",
    usage: "rndz-cli pipe --id ID --server-addr ADDR [--server-addr ADDR ...] [--remote-peer PEER] [--timeout MS] [--no-relay | --relay-only] [--credential-file FILE]",
    details: """
        Without --remote-peer: registers as ID (TCP) and waits for one peer; with it:
        connects to PEER. Then copies stdin to the peer and the peer's bytes to
        stdout, unchanged, both at once; our end of the stream closes when stdin ends
        (the peer sees the end), and the command exits 0 once both directions ended.
        Direct when a path exists, else through the server's relay. Only data goes
        to stdout; what happens is told on stderr ("connected to PEER ..."). Exit 1
        when the peer cannot be found or reached, or the stream breaks.
        """,
    flags: [
        Flag("id", value: "ID", "our id (required)"),
        Flag("server-addr", value: "ADDR", "a rendezvous server, host:port (required; repeatable)"),
        Flag("remote-peer", value: "ID", "connect to this peer instead of waiting for one"),
        Flag("timeout", value: "MS", "give up finding or reaching the peer after MS ms"),
        Flag("no-relay", "never use the server's relay"),
        Flag("relay-only", "use the server's relay at once"),
        Flag("credential-file", value: "FILE", "sign requests with ID's credential"),
    ],
    run: runPipe)

@Sendable func runPipe(_ f: ParsedFlags, _ v: Verbosity) -> Int32 {
    guard let id = f.last("id"), !f.all("server-addr").isEmpty else {
        v.error("pipe needs --id ID and --server-addr ADDR (see 'rndz-cli pipe --help')")
        return ExitCode.usage
    }
    guard let opts = streamClientOptions(f, id: id, v) else { return ExitCode.usage }
    let stream: TCPStream
    if let peer = f.last("remote-peer") {
        do {
            stream = try TCPConnector(options: opts).connect(to: peer)
        } catch {
            v.error(connectFailure(error, peer: peer, over: "TCP", signed: opts.credential != nil))
            return ExitCode.failure
        }
        v.notice("connected to \(peer) at \(stream.path.relayed ? "relay " : "")\(stream.peer)")
    } else {
        let stop = StopSignal()
        let listener: TCPListener
        do {
            listener = try TCPListener(options: opts)
        } catch {
            v.error("cannot register as '\(id)': \(error)")
            return ExitCode.failure
        }
        guard awaitRegistration(stop, v, signed: opts.credential != nil,
                                { (t) throws(RndzError) in try listener.waitRegistered(timeout: t) }) else {
            return stop.isSet ? ExitCode.ok : ExitCode.failure
        }
        v.notice("registered as \(id); waiting for a peer")
        var got: TCPStream?
        while got == nil && !stop.isSet {
            do {
                got = try listener.accept(timeout: .milliseconds(200))
            } catch .timedOut {
                continue
            } catch {
                v.error("accept failed: \(error)")
                return ExitCode.failure
            }
        }
        listener.close()
        guard let s = got else { return ExitCode.ok }
        stream = s
        blockStopSignals(false) /* from here SIGINT ends the pipe at once, as for nc */
        v.notice("peer connected from \(stream.path.relayed ? "relay " : "")\(stream.peer)")
    }
    return pipeBytes(stream.fileDescriptor, v) ? ExitCode.ok : ExitCode.failure
}

/// Copy stdin to fd (then end our direction) and fd to stdout, at once (a thread each way, so
/// neither direction waits for the other); true when both ended cleanly.
func pipeBytes(_ fd: Int32, _ v: Verbosity) -> Bool {
    /// Written by the copying thread before it signals, read after the wait.
    final class Outcome: @unchecked Sendable { var ok = true }
    let outbound = DispatchSemaphore(value: 0)
    let sent = Outcome()
    DispatchQueue.global().async {
        sent.ok = copyFD(from: 0, to: fd, socketOut: true)
        shutdown(fd, Int32(SHUT_WR))
        outbound.signal()
    }
    let receivedOK = copyFD(from: fd, to: 1, socketOut: false)
    if !receivedOK { v.error("the stream from the peer broke") }
    outbound.wait()
    let ok = sent.ok
    if !ok { v.error("the stream to the peer broke") }
    return ok && receivedOK
}

/// Read from one fd and write everything to the other until the end; false on an error.
func copyFD(from src: Int32, to dst: Int32, socketOut: Bool) -> Bool {
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buf.withUnsafeMutableBytes { read(src, $0.baseAddress, $0.count) }
        if n == 0 { return true }
        if n < 0 {
            if errno == EINTR { continue }
            return false
        }
        var off = 0
        while off < n {
            let w = buf.withUnsafeBytes { b in
                socketOut ? send(dst, b.baseAddress! + off, n - off, Int32(MSG_NOSIGNAL))
                          : write(dst, b.baseAddress! + off, n - off)
            }
            if w < 0 {
                if errno == EINTR { continue }
                return false
            }
            off += w
        }
    }
}
