// rndz-cli: the command-line tool of rndz. A table of subcommands, as wireguard-tools' wg, one
// file per command around a small shared flag parser (Common.swift):
//
//   rndz-cli server      ServerCommand.swift     rndz-cli client      ClientCommand.swift
//   rndz-cli expose      ForwardCommands.swift   rndz-cli forward     ForwardCommands.swift
//   rndz-cli pipe        PipeCommand.swift       rndz-cli nat-check   NATCheckCommand.swift
//   rndz-cli credential  CredentialCommand.swift
//
// Results go to stdout, logs and errors to stderr. Exit status: 0 success, 1 failure,
// 2 misuse (one line on stderr, pointing to --help).
import Dispatch
import Rndz
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

let commands = [serverCommand, clientCommand, exposeCommand, forwardCommand, pipeCommand,
                natCheckCommand, credentialCommand]

func versionText() -> String { "rndz-cli \(RndzVersion.string)" }

func main(_ argv: [String]) -> Int32 {
    blockStopSignals()
    var args = ArraySlice(argv.dropFirst())
    let v0 = Verbosity(level: .warn)
    // Global options, then the command.
    let global: ParsedFlags
    do {
        global = try parseFlags(
            &args, globalFlags + [Flag("version", short: "V", "")], stopAtPositional: true)
    } catch {
        v0.error(error.message + " (see 'rndz-cli --help')")
        return ExitCode.usage
    }
    if global.has("help") {
        printOut(mainUsage())
        return ExitCode.ok
    }
    if global.has("version") {
        printOut(versionText())
        return ExitCode.ok
    }
    guard let name = args.popFirst() else {
        printErr(mainUsage())
        return ExitCode.usage
    }
    switch name {
    case "help":
        if let c = args.first.flatMap({ n in commands.first { $0.name == n } }) {
            printOut(commandUsage(c))
        } else {
            printOut(mainUsage())
        }
        return ExitCode.ok
    case "version":
        printOut(versionText())
        return ExitCode.ok
    default:
        break
    }
    guard let command = commands.first(where: { $0.name == name }) else {
        v0.error("unknown command '\(name)' (see 'rndz-cli --help')")
        return ExitCode.usage
    }
    let flags: ParsedFlags
    do {
        flags = try parseFlags(&args, command.flags + globalFlags, stopAtPositional: false)
    } catch {
        v0.error(error.message + " (see 'rndz-cli \(command.name) --help')")
        return ExitCode.usage
    }
    if flags.has("help") {
        printOut(commandUsage(command))
        return ExitCode.ok
    }
    // Verbosity: -q, else -v (repeatable) above warn, else RNDZ_LOG, else warn.
    let verbose = global.count("verbose") + flags.count("verbose")
    let quiet = global.has("quiet") || flags.has("quiet")
    var level = getenv("RNDZ_LOG").flatMap { LogLevel(parsing: String(cString: $0)) } ?? .warn
    if quiet {
        level = .error
    } else if verbose > 0 {
        level = LogLevel(rawValue: min(LogLevel.trace.rawValue, LogLevel.warn.rawValue + verbose))!
    }
    if quiet || verbose > 0 { setLogLevel(level) }
    switch flags.last("log-format") ?? global.last("log-format") ?? "text" {
    case "text": break
    case "json":
        logJSON = true
        setLogHandler(level: level) { l, msg in
            // the library's lines ("rndz info: ..." in text) as JSON too
            logLine(l, "rndz", msg)
        }
    case let other:
        v0.error("bad --log-format '\(other)': text or json (see 'rndz-cli --help')")
        return ExitCode.usage
    }
    return command.run(flags, Verbosity(level: level))
}

exit(main(CommandLine.arguments))
