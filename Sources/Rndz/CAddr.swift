// The C address helpers, kept in their own file: a file that imports CRndz sees the socket
// types (sockaddr_storage, ...) through it, as internal, and then may not use them in public
// declarations (SocketAddress.swift does).
internal import CRndz

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

func cAddrParse(_ text: String, _ out: inout sockaddr_storage) -> Int32 {
    rndz_addr_parse(text, &out, nil)
}

func cAddrResolve(_ text: String, _ family: Int32, _ out: inout sockaddr_storage) -> Int32 {
    rndz_addr_resolve(text, family, &out, nil)
}

/// The text form of a sockaddr of family AF_INET or AF_INET6.
func cAddrFormat(_ sa: UnsafePointer<sockaddr>) -> String {
    withUnsafeTemporaryAllocation(of: CChar.self, capacity: Int(RNDZ_ADDRSTRLEN)) { buf in
        let n = rndz_addr_format(sa, buf.baseAddress!, buf.count)
        // Formatting an AF_INET/AF_INET6 value into RNDZ_ADDRSTRLEN bytes cannot fail.
        precondition(n >= 0, "rndz_addr_format failed: \(n)")
        return String(cString: buf.baseAddress!)
    }
}
