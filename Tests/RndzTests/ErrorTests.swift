import CRndz
import Rndz
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("RndzError")
struct ErrorTests {
    /// Every named member against the C table: a renumbering on either side fails here.
    @Test func namedMembersMatchTheCTable() {
        let table: [(RndzError, rndz_errno, String)] = [
            (.truncated, RNDZ_E_TRUNCATED, "RNDZ_E_TRUNCATED"),
            (.malformedVarint, RNDZ_E_VARINT, "RNDZ_E_VARINT"),
            (.wireType, RNDZ_E_WIRETYPE, "RNDZ_E_WIRETYPE"),
            (.invalidField, RNDZ_E_FIELD, "RNDZ_E_FIELD"),
            (.invalidUTF8, RNDZ_E_UTF8, "RNDZ_E_UTF8"),
            (.noCommand, RNDZ_E_NOCMD, "RNDZ_E_NOCMD"),
            (.tooBig, RNDZ_E_TOOBIG, "RNDZ_E_TOOBIG"),
            (.noSpace, RNDZ_E_NOSPACE, "RNDZ_E_NOSPACE"),
            (.badAddress, RNDZ_E_BADADDR, "RNDZ_E_BADADDR"),
            (.resolveFailed, RNDZ_E_RESOLVE, "RNDZ_E_RESOLVE"),
            (.notFound, RNDZ_E_NOTFOUND, "RNDZ_E_NOTFOUND"),
            (.timedOut, RNDZ_E_TIMEDOUT, "RNDZ_E_TIMEDOUT"),
            (.closed, RNDZ_E_CLOSED, "RNDZ_E_CLOSED"),
            (.badID, RNDZ_E_BADID, "RNDZ_E_BADID"),
            (.noServer, RNDZ_E_NOSERVER, "RNDZ_E_NOSERVER"),
            (.badFrame, RNDZ_E_FRAME, "RNDZ_E_FRAME"),
            (.wrongKind, RNDZ_E_WRONGKIND, "RNDZ_E_WRONGKIND"),
            (.peerFailed, RNDZ_E_PEERFAIL, "RNDZ_E_PEERFAIL"),
            (.otherTransport, RNDZ_E_TRANSPORT, "RNDZ_E_TRANSPORT"),
        ]
        for (e, c, name) in table {
            #expect(e.code == c.rawValue)
            #expect(e.name == name)
            #expect(e.errno == nil)
            #expect(e.description == String(cString: rndz_strerror(c.rawValue)))
        }
        #expect(Set(table.map(\.0)).count == table.count)
        // The codes the brief fixes.
        #expect(RndzError.notFound.code == -1011)
        #expect(RndzError.timedOut.code == -1012)
    }

    @Test func descriptions() {
        #expect(RndzError.notFound.description == "target not found on any rendezvous server")
        #expect(RndzError.timedOut.description == "no answer from any rendezvous server")
        #expect(RndzError.badAddress.description == "malformed address")
        #expect("\(RndzError.notFound)" == "target not found on any rendezvous server")
        #expect(RndzError.notFound.debugDescription.contains("RNDZ_E_NOTFOUND"))
        #expect(RndzError(code: -999_999).description == "unknown error")
    }

    @Test func osErrors() {
        let e = RndzError(errno: ECONNREFUSED)
        #expect(e == .connectionRefused)
        #expect(e.code == -ECONNREFUSED)
        #expect(e.errno == ECONNREFUSED)
        #expect(e.name == "ECONNREFUSED")
        // glibc's text, as the C test checks it (case aside).
        #expect(e.description.lowercased() == "connection refused")
        #expect(RndzError.addressInUse.description.lowercased() == "address already in use")
        #expect(RndzError.canceled.errno == ECANCELED)
    }

    @Test func equalityAndHashing() {
        #expect(RndzError(code: -1011) == .notFound)
        #expect(RndzError.notFound != .timedOut)
        #expect(Set([RndzError.notFound, RndzError(code: -1011), .timedOut]).count == 2)
    }

    @Test func typedThrowsMatchByMember() {
        func fails() throws(RndzError) { throw .notFound }
        var matched = false
        do {
            try fails()
        } catch .timedOut {
            Issue.record("wrong member matched")
        } catch .notFound {
            matched = true
        } catch {
            Issue.record("unexpected \(error)")
        }
        #expect(matched)
    }
}
