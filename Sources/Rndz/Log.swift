internal import CRndz

/// The level of a log message; a handler gets every message at or below its level.
public enum LogLevel: Int, Comparable, Sendable, CaseIterable, CustomStringConvertible {
    case error = 0
    case warn = 1
    case info = 2
    case debug = 3
    case trace = 4

    /// Parses `"error"`, `"warn"`, `"info"`, `"debug"`, `"trace"` (any case) or `"0"`...`"4"`,
    /// as the `RNDZ_LOG` environment variable is read.
    public init?(parsing text: String) {
        let v = rndz_log_level_parse(text)
        guard v >= 0, let l = LogLevel(rawValue: Int(v)) else { return nil }
        self = l
    }

    public static func < (a: LogLevel, b: LogLevel) -> Bool { a.rawValue < b.rawValue }

    public var description: String {
        switch self {
        case .error: "error"
        case .warn: "warn"
        case .info: "info"
        case .debug: "debug"
        case .trace: "trace"
        }
    }

    var c: rndz_log_level { rndz_log_level(rawValue: UInt32(rawValue)) }
}

/// A log handler: called from rndz's threads, one message at a time.
public typealias LogHandler = @Sendable (_ level: LogLevel, _ message: String) -> Void

private final class LogBox: Sendable {
    let handler: LogHandler
    init(_ handler: @escaping LogHandler) { self.handler = handler }
}

/// The installed handler, kept alive while C may call it.
private let installedLog = Locked<LogBox?>(nil)

/// Installs the process-wide log handler of the rndz library (`rndz_set_log`) and the most
/// verbose level it receives. `nil` restores the default, which writes to stderr.
///
/// Without a call, the level comes from the `RNDZ_LOG` environment variable (default
/// `warn`). The handler runs on rndz's threads while the library holds its log lock: it must
/// not call `setLogHandler` itself.
public func setLogHandler(level: LogLevel, _ handler: LogHandler?) {
    installedLog.withLock { current in
        let box = handler.map(LogBox.init)
        if let box {
            rndz_set_log({ level, msg, user in
                let box = Unmanaged<LogBox>.fromOpaque(user!).takeUnretainedValue()
                let l = LogLevel(rawValue: Int(level.rawValue)) ?? .trace
                box.handler(l, msg.map { String(cString: $0) } ?? "")
            }, Unmanaged.passUnretained(box).toOpaque(), level.c)
        } else {
            rndz_set_log(nil, nil, level.c)
        }
        // rndz_set_log takes the lock every log call holds: no call into the old box is
        // running any more, so it may go.
        current = box
    }
}

/// Sets the most verbose level of the default log output (stderr), removing any handler.
public func setLogLevel(_ level: LogLevel) {
    setLogHandler(level: level, nil)
}

/// The version of the rndz C library that is loaded.
public enum RndzVersion {
    /// `major.minor.patch`, e.g. `"0.3.0"`.
    public static var string: String { String(cString: rndz_version_string()) }
    /// The major version: same major, same ABI.
    public static var major: Int { Int(rndz_version() >> 16) }
    /// The minor version.
    public static var minor: Int { Int((rndz_version() >> 8) & 0xff) }
    /// The patch version.
    public static var patch: Int { Int(rndz_version() & 0xff) }
}
