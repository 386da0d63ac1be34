// CredentialCommand.swift: rndz-cli credential, and reading secrets and credentials.
import Dispatch
import Rndz
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// MARK: - credential

let credentialCommand = Command(
    name: "credential",
    summary: "print the credential of an id under a server secret",
    usage: "rndz-cli credential --secret-file FILE --id ID",
    details: """
        Prints, on stdout, the credential of ID under the secret in FILE (the file
        a server takes with --secret-file): 64 hex digits. Hand it to the holder of
        ID only; they pass it to the client with --credential-file. Anyone holding
        the secret can make every credential: keep it on the servers.
        """,
    flags: [
        Flag("secret-file", value: "FILE", "the server secret (required)"),
        Flag("id", value: "ID", "the id (required)"),
    ],
    run: runCredential)

@Sendable func runCredential(_ f: ParsedFlags, _ v: Verbosity) -> Int32 {
    guard let path = f.last("secret-file"), let id = f.last("id") else {
        v.error("credential needs --secret-file FILE and --id ID (see 'rndz-cli credential --help')")
        return ExitCode.usage
    }
    let secret: [UInt8]
    switch readSecret(path) {
    case .success(let s): secret = s
    case .failure(let e):
        v.error(e.message)
        return ExitCode.usage
    }
    do {
        printOut(try Credential.derive(secret: secret, id: id).hex)
        return ExitCode.ok
    } catch {
        v.error("cannot derive the credential: \(error)")
        return ExitCode.failure
    }
}

/// The bytes of a file, or nil (errno set).
func readFileBytes(_ path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    if fd < 0 { return nil }
    defer { close(fd) }
    var out = [UInt8]()
    var buf = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            return nil
        }
        if n == 0 { return out }
        out += buf[0..<n]
        if out.count > 65536 { return out } // a secret, not a data file
    }
}

/// A server secret from a file: its bytes without trailing newlines (so `echo` or an editor
/// can write it); at least 16 bytes.
func readSecret(_ path: String) -> Result<[UInt8], UsageError> {
    guard var bytes = readFileBytes(path) else {
        return .failure(UsageError(
            message: "cannot read --secret-file '\(path)': \(String(cString: strerror(errno)))"))
    }
    while let last = bytes.last, last == 0x0a || last == 0x0d { bytes.removeLast() }
    guard bytes.count >= 16 else {
        return .failure(UsageError(
            message: "--secret-file '\(path)' holds \(bytes.count) bytes; a secret needs at least 16 "
                + "(e.g. head -c 32 /dev/urandom | base64 > FILE)"))
    }
    return .success(bytes)
}
