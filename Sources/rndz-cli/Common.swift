// Common.swift: what every rndz-cli command shares: output, the command table and the flag
// parser, the signals that stop a command.
import Dispatch
import Rndz
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// MARK: - Output

/// Writes all of `text` to `fd`, unbuffered (so a line on stdout is visible at once to a
/// script reading a pipe).
func writeAll(_ fd: Int32, _ text: String) {
    var text = text
    text.withUTF8 { buf in
        var off = 0
        while off < buf.count {
            let n = write(fd, buf.baseAddress! + off, buf.count - off)
            if n < 0 {
                if errno == EINTR { continue }
                return
            }
            off += n
        }
    }
}

func printOut(_ line: String) { writeAll(1, line + "\n") }
func printErr(_ line: String) { writeAll(2, line + "\n") }

/// The verbosity of the tool's own messages (the library's follows the same level).
struct Verbosity: Sendable {
    var level: LogLevel

    /// Errors: always shown.
    func error(_ msg: String) { logLine(.error, "rndz-cli", msg) }
    /// Events worth seeing by default (new peers, warnings): hidden by --quiet.
    func notice(_ msg: String) { if level >= .warn { logLine(.warn, "rndz-cli", msg) } }
    /// Details: shown with -v.
    func info(_ msg: String) { if level >= .info { logLine(.info, "rndz-cli", msg) } }
    /// Per-datagram details: shown with -vv.
    func debug(_ msg: String) { if level >= .debug { logLine(.debug, "rndz-cli", msg) } }
}

/// --log-format json: every log line on stderr is one JSON object (set once, before any
/// thread runs).
nonisolated(unsafe) var logJSON = false

/// One log line on stderr: "SOURCE: message", or with --log-format json
/// {"ts_ms":..., "level":"warn", "source":"rndz-cli", "msg":"..."} (the library's lines too).
func logLine(_ level: LogLevel, _ source: String, _ msg: String) {
    guard logJSON else {
        printErr("\(source): \(msg)")
        return
    }
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    let ms = Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    printErr("{\"ts_ms\":\(ms),\"level\":\(jsonString(level.description)),\"source\":"
        + "\(jsonString(source)),\"msg\":\(jsonString(msg))}")
}

enum ExitCode {
    static let ok: Int32 = 0
    static let failure: Int32 = 1
    static let usage: Int32 = 2
}

// MARK: - Command table and option parsing

struct Command: Sendable {
    let name: String
    let summary: String
    let usage: String
    let details: String
    let flags: [Flag]
    let run: @Sendable (_ opts: ParsedFlags, _ v: Verbosity) -> Int32
}

struct Flag: Sendable {
    let long: String
    let short: Character?
    let value: String?  // the value's placeholder; nil for a switch
    let help: String

    init(_ long: String, short: Character? = nil, value: String? = nil, _ help: String) {
        self.long = long
        self.short = short
        self.value = value
        self.help = help
    }
}

/// Flags accepted before the command and by every command.
let globalFlags = [
    Flag("log-format", value: "FORMAT", "text (default) or json: one JSON object per log line on stderr"),
    Flag("verbose", short: "v", "more log output on stderr (repeat for more: -vv, -vvv)"),
    Flag("quiet", short: "q", "only errors on stderr"),
    Flag("help", short: "h", "show this help"),
]

struct UsageError: Error {
    let message: String
}

/// Flags as given, in order; switches have a nil value.
struct ParsedFlags: Sendable {
    var items: [(name: String, value: String?)] = []

    func has(_ name: String) -> Bool { items.contains { $0.name == name } }
    func count(_ name: String) -> Int { items.filter { $0.name == name }.count }
    func last(_ name: String) -> String? { items.last { $0.name == name }?.value }
    func all(_ name: String) -> [String] { items.filter { $0.name == name }.compactMap(\.value) }
}

/// Parses `--name value`, `--name=value`, `-x value`, and bundled switches (`-vv`). Stops at
/// the first argument that is not a flag if `stopAtPositional`, else rejects it.
func parseFlags(
    _ args: inout ArraySlice<String>, _ flags: [Flag], stopAtPositional: Bool
) throws(UsageError) -> ParsedFlags {
    var out = ParsedFlags()
    while let arg = args.first {
        if arg == "--" {
            args.removeFirst()
            if let extra = args.first { throw UsageError(message: "unexpected argument '\(extra)'") }
            break
        }
        if arg.hasPrefix("--") {
            args.removeFirst()
            var name = String(arg.dropFirst(2))
            var inline: String? = nil
            if let eq = name.firstIndex(of: "=") {
                inline = String(name[name.index(after: eq)...])
                name = String(name[..<eq])
            }
            guard let f = flags.first(where: { $0.long == name }) else {
                throw UsageError(message: "unknown option '--\(name)'")
            }
            if f.value != nil {
                if let inline {
                    out.items.append((name, inline))
                } else if let v = args.first {
                    args.removeFirst()
                    out.items.append((name, v))
                } else {
                    throw UsageError(message: "option '--\(name)' needs a value")
                }
            } else {
                if inline != nil { throw UsageError(message: "option '--\(name)' takes no value") }
                out.items.append((name, nil))
            }
        } else if arg.hasPrefix("-") && arg.count > 1 {
            args.removeFirst()
            var chars = Substring(arg.dropFirst())
            while let c = chars.first {
                chars = chars.dropFirst()
                guard let f = flags.first(where: { $0.short == c }) else {
                    throw UsageError(message: "unknown option '-\(c)'")
                }
                if f.value != nil {
                    if !chars.isEmpty {
                        out.items.append((f.long, String(chars)))
                    } else if let v = args.first {
                        args.removeFirst()
                        out.items.append((f.long, v))
                    } else {
                        throw UsageError(message: "option '-\(c)' needs a value")
                    }
                    break
                }
                out.items.append((f.long, nil))
            }
        } else {
            if stopAtPositional { break }
            throw UsageError(message: "unexpected argument '\(arg)'")
        }
    }
    return out
}

func flagHelp(_ flags: [Flag]) -> String {
    flags.map { f in
        var left = f.short.map { "-\($0), " } ?? "    "
        left += "--\(f.long)"
        if let v = f.value { left += " \(v)" }
        let pad = max(1, 28 - left.count)
        return "  " + left + String(repeating: " ", count: pad) + f.help
    }.joined(separator: "\n")
}

func mainUsage() -> String {
    var s = """
        usage: rndz-cli [-v|--verbose]... [-q|--quiet] <command> [<options>]

        rndz: NAT hole punching through a rendezvous server (protocol of rndz 0.1.5).

        commands:

        """
    for c in commands { s += "  " + c.name.padding(12) + c.summary + "\n" }
    s += """
          help        show this help, or a command's: rndz-cli help <command>
          version     show the version

        options:
          -V, --version               show the version
        \(flagHelp(globalFlags))

        The log level is also read from RNDZ_LOG (error|warn|info|debug|trace).
        """
    return s
}

func commandUsage(_ c: Command) -> String {
    "usage: \(c.usage)\n\n\(c.details)\n\noptions:\n\(flagHelp(c.flags + globalFlags))"
}

extension String {
    func padding(_ n: Int) -> String { self + String(repeating: " ", count: max(1, n - count)) }
}

// MARK: - Signals

/// A flag one thread sets and others read.
final class AtomicFlag: Sendable {
    private let value = Atomic<Bool>(false)
    var isSet: Bool { value.load(ordering: .acquiring) }
    func set() { value.store(true, ordering: .releasing) }
}

/// SIGINT and SIGTERM stay blocked in every thread from the start of `main`, before any
/// thread exists (threads inherit the mask), so one that arrives at any moment waits as
/// pending until a `StopSignal` collects it, never lost and never killing the process
/// half-way. (Setting SIG_IGN and then creating a dispatch source lost a signal that came
/// in between: libdispatch sets up its signalfd asynchronously.)
func blockStopSignals(_ block: Bool = true) {
    var set = sigset_t()
    sigemptyset(&set)
    sigaddset(&set, SIGINT)
    sigaddset(&set, SIGTERM)
    pthread_sigmask(block ? SIG_BLOCK : SIG_UNBLOCK, &set, nil)
}

/// Set by SIGINT / SIGTERM; `then` runs on a dispatch queue when one arrives. Keep it alive
/// while the signals should be handled. The signals are blocked (`blockStopSignals`): the
/// dispatch sources read them from a signalfd, including one already pending.
final class StopSignal {
    private let flag = AtomicFlag()
    private var sources: [any DispatchSourceSignal] = []

    var isSet: Bool { flag.isSet }

    init(then action: @escaping @Sendable () -> Void = {}) {
        for sig in [SIGINT, SIGTERM] {
            let src = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            src.setEventHandler { [flag] in
                flag.set()
                action()
            }
            src.resume()
            sources.append(src)
        }
    }
}
