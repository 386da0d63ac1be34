internal import CRndz

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// An error from rndz: the C library's negative error code, wrapped.
///
/// Library failures have their own codes (below -1000, see `rndz.h`); operating-system
/// failures are `-errno`. Compare against the named members:
///
/// ```swift
/// do { _ = try connector.connect(to: "alice") }
/// catch .notFound { print("alice is not registered") }
/// catch { print("failed: \(error)") }
/// ```
///
/// Codes are stable: rndz never renumbers or removes one.
public struct RndzError: Error, Hashable, Sendable, CustomStringConvertible,
    CustomDebugStringConvertible
{
    /// The raw C code: negative, `RNDZ_E_*` or `-errno`.
    public let code: Int32

    /// Wraps a raw C code (as returned by a `rndz_*` function).
    public init(code: Int32) { self.code = code }

    /// Wraps an operating-system error number (a positive `errno` value).
    public init(errno: Int32) { self.code = -errno }

    /// The `errno` value, if this is an operating-system error; `nil` for rndz's own codes.
    public var errno: Int32? { code < 0 && code > -1000 ? -code : nil }

    /// A one-line English description, from `rndz_strerror()`.
    public var description: String { String(cString: rndz_strerror(code)) }

    /// The symbolic name, from `rndz_err_name()`: `"RNDZ_E_NOTFOUND"`, `"ECONNREFUSED"`, ...
    public var name: String { String(cString: rndz_err_name(code)) }

    public var debugDescription: String { "RndzError(\(name) \(code): \(description))" }

    private init(_ e: rndz_errno) { self.code = e.rawValue }

    // The library's codes (RNDZ_ERRNO_MAP in rndz.h).

    /// A message ended in the middle of a field.
    public static let truncated = RndzError(RNDZ_E_TRUNCATED)
    /// A protobuf varint was malformed.
    public static let malformedVarint = RndzError(RNDZ_E_VARINT)
    /// A protobuf field had an unexpected wire type.
    public static let wireType = RndzError(RNDZ_E_WIRETYPE)
    /// A protobuf field number was invalid.
    public static let invalidField = RndzError(RNDZ_E_FIELD)
    /// A string field was not valid UTF-8.
    public static let invalidUTF8 = RndzError(RNDZ_E_UTF8)
    /// A message carried no command.
    public static let noCommand = RndzError(RNDZ_E_NOCMD)
    /// A message was larger than 1500 bytes.
    public static let tooBig = RndzError(RNDZ_E_TOOBIG)
    /// An output buffer was too small.
    public static let noSpace = RndzError(RNDZ_E_NOSPACE)
    /// An address was not of the form `1.2.3.4:5` or `[2001:db8::1]:5`.
    public static let badAddress = RndzError(RNDZ_E_BADADDR)
    /// A host name could not be resolved.
    public static let resolveFailed = RndzError(RNDZ_E_RESOLVE)
    /// Every rendezvous server answered that the target is not registered.
    public static let notFound = RndzError(RNDZ_E_NOTFOUND)
    /// Every rendezvous server answered that the target is not registered, and one has it
    /// registered over the other transport (UDP for a TCP connect, TCP for a UDP connect).
    public static let otherTransport = RndzError(RNDZ_E_TRANSPORT)
    /// No rendezvous server answered in time (and none knew the target).
    public static let timedOut = RndzError(RNDZ_E_TIMEDOUT)
    /// The handle was closed.
    public static let closed = RndzError(RNDZ_E_CLOSED)
    /// An id was empty or longer than 255 bytes.
    public static let badID = RndzError(RNDZ_E_BADID)
    /// No rendezvous server was given.
    public static let noServer = RndzError(RNDZ_E_NOSERVER)
    /// A TCP frame was malformed or oversize.
    public static let badFrame = RndzError(RNDZ_E_FRAME)
    /// A message of a kind not valid in this place.
    public static let wrongKind = RndzError(RNDZ_E_WRONGKIND)
    /// The peer could not be reached.
    public static let peerFailed = RndzError(RNDZ_E_PEERFAIL)

    // Operating-system errors the overlay itself produces or callers commonly match.

    /// The operation was canceled (`ECANCELED`): an `async` call whose task was cancelled.
    public static let canceled = RndzError(errno: ECANCELED)
    /// The local address is already in use (`EADDRINUSE`).
    public static let addressInUse = RndzError(errno: EADDRINUSE)
    /// The peer refused the datagram (`ECONNREFUSED`, from an ICMP port unreachable).
    public static let connectionRefused = RndzError(errno: ECONNREFUSED)
    /// An argument was invalid (`EINVAL`).
    public static let invalidArgument = RndzError(errno: EINVAL)
}

/// Turns a C return value into a Swift result: negative values throw.
@inline(__always)
func check(_ rc: Int32) throws(RndzError) -> Int32 {
    if rc < 0 { throw RndzError(code: rc) }
    return rc
}

/// The current thread's `errno` as an error.
@inline(__always)
func lastErrno() -> RndzError { RndzError(errno: errno) }
