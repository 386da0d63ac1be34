// The overlay's async calls wait on one event thread (Reactor.swift), not a thread each:
// thread counts, cancellation latency, timeouts and data through it; the bounded pool.
@testable import Rndz
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The names of this process's threads now (the entries of /proc/self/task).
func threadNames() -> [String] {
    guard let d = opendir("/proc/self/task") else { return [] }
    defer { closedir(d) }
    var names: [String] = []
    while let e = readdir(d) {
        let tid = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if tid.hasPrefix(".") { continue }
        let comm = readTextFile("/proc/self/task/\(tid)/comm") ?? "?"
        names.append(comm.hasSuffix("\n") ? String(comm.dropLast()) : comm)
    }
    return names
}

/// A UDP socket on loopback connected to `peer`, as a ``UDPSocket``.
func connectedUDPSocket(to peer: SocketAddress) throws -> UDPSocket {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw RndzError(errno: errno) }
    let local = try SocketAddress(parsing: "127.0.0.1:0")
    guard local.withSockAddr({ bind(fd, $0, $1) }) == 0, peer.withSockAddr({ connect(fd, $0, $1) }) == 0 else {
        let e = errno
        close(fd)
        throw RndzError(errno: e)
    }
    return try UDPSocket(owning: fd, peer: peer, ourID: "us", peerID: "them")
}

/// Whole nanoseconds from `start` to now.
func nanoseconds(since start: ContinuousClock.Instant) -> Int64 {
    let (s, atto) = (ContinuousClock.now - start).components
    return s * 1_000_000_000 + atto / 1_000_000_000
}

/// Waits (polling) until the reactor holds `count` waits on `fds`.
func untilPending(_ count: Int, on fds: [Int32], timeout: Duration = .seconds(10)) async throws {
    let deadline = ContinuousClock.now + timeout
    while fds.reduce(0, { $0 + Reactor.shared.pendingWaits(on: $1) }) < count {
        try #require(ContinuousClock.now < deadline, "the waits never registered")
        try await Task.sleep(for: .milliseconds(2))
    }
}

@Suite("Reactor", .serialized, .timeLimit(.minutes(1)))
struct ReactorTests {
    /// 1,000 concurrent receives (250 sockets, 4 on each) hold no thread each; then a
    /// datagram for each arrives through the reactor.
    @Test func thousandReceivesHoldFewThreads() async throws {
        let sender = try RawUDP()
        let sockets = try (0..<250).map { _ in try connectedUDPSocket(to: sender.address) }
        let before = threadNames().count
        try await withThrowingTaskGroup(of: [UInt8]?.self) { group in
            for s in sockets {
                for _ in 0..<4 { group.addTask { try await s.receive(timeout: .seconds(30)) } }
            }
            try await untilPending(1000, on: sockets.map(\.fileDescriptor))
            let names = threadNames()
            let overlay = names.filter { $0 == "rndz-reactor" || $0 == "rndz-blocking" }
            print("threads: \(before) before, \(names.count) with 1,000 receives pending; the overlay's: \(overlay)")
            // The overlay's own threads: the event thread and at most the pool's few (none
            // of which a receive uses).
            #expect(overlay.filter { $0 == "rndz-reactor" }.count == 1)
            #expect(overlay.count <= 1 + max(4, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))))
            // All of them: other suites run meanwhile in this process (servers, listeners and
            // their threads come and go), so the bound is loose; a thread per call would
            // add 1,000. Alone, this test sees one thread more (the event thread).
            #expect(names.count - before < 100)
            for (i, s) in sockets.enumerated() {
                for k in 0..<4 { sender.send([UInt8(i & 0xff), UInt8(k)], to: s.localAddress) }
            }
            var got = 0
            for try await bytes in group {
                #expect(bytes?.count == 2)
                got += 1
            }
            #expect(got == 1000)
        }
        #expect(sockets.reduce(0) { $0 + Reactor.shared.pendingWaits(on: $1.fileDescriptor) } == 0)
    }

    /// A cancelled receive ends at once, not at the next poll.
    @Test func cancelledReceiveReturnsWithinMilliseconds() async throws {
        let sender = try RawUDP()
        let s = try connectedUDPSocket(to: sender.address)
        var latencies: [Duration] = []
        let zero = ContinuousClock.now
        for _ in 0..<5 {
            let ended = Atomic<Int64>(0)  // nanoseconds after `zero`, when the receive ended
            let t = Task {
                defer { ended.store(nanoseconds(since: zero), ordering: .releasing) }
                return try await s.receive()
            }
            try await untilPending(1, on: [s.fileDescriptor])
            let start = ContinuousClock.now
            t.cancel()
            await #expect(throws: RndzError.canceled) { _ = try await t.value }
            latencies.append(.nanoseconds(ended.load(ordering: .acquiring)) - (start - zero))
        }
        latencies.sort()
        print("cancel latencies: \(latencies)")
        #expect(latencies[2] < .milliseconds(20))  // the median: the machine is shared
        #expect(Reactor.shared.pendingWaits(on: s.fileDescriptor) == 0)
        // The socket still works.
        sender.send([9], to: s.localAddress)
        #expect(try await s.receive(timeout: .seconds(5)) == [9])
    }

    @Test func alreadyCancelledTaskDoesNotWait() async throws {
        let s = try connectedUDPSocket(to: try RawUDP().address)
        let t = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return try await s.receive(timeout: .seconds(30))
        }
        let start = ContinuousClock.now
        await #expect(throws: RndzError.canceled) { _ = try await t.value }
        #expect(ContinuousClock.now - start < .seconds(1))
    }

    /// Deadlines: each wait ends at its own, also one shorter than the one the event thread
    /// sleeps toward.
    @Test func timeoutsEndEachWaitOnTime() async throws {
        let sender = try RawUDP()
        let s = try connectedUDPSocket(to: sender.address)
        let start = ContinuousClock.now
        async let long = s.receive(timeout: .seconds(2))
        try await untilPending(1, on: [s.fileDescriptor])
        async let a = s.receive(timeout: .milliseconds(300))
        async let b = s.receive(timeout: .milliseconds(100))
        #expect(try await b == nil)
        let tb = ContinuousClock.now - start
        #expect(try await a == nil)
        let ta = ContinuousClock.now - start
        #expect(tb >= .milliseconds(100) && tb < .milliseconds(600))
        #expect(ta >= .milliseconds(300) && ta < .milliseconds(900))
        sender.send([1, 2, 3], to: s.localAddress)  // the long one gets data, not a timeout
        #expect(try await long == [1, 2, 3])
        #expect(ContinuousClock.now - start < .seconds(2))
    }

    /// Closing a descriptor through the reactor ends its waits (no hang).
    @Test func closeEndsWaits() async throws {
        let s = try connectedUDPSocket(to: try RawUDP().address)
        let fd = s.fileDescriptor
        let waits = (0..<3).map { _ in
            Task { await Reactor.shared.wait(fd: fd, for: Reactor.readable, until: nil) }
        }
        try await untilPending(3, on: [fd])
        Reactor.shared.close(fd)
        for w in waits { #expect(await w.value == .closed) }
        #expect(Reactor.shared.pendingWaits(on: fd) == 0)
    }

    @Test func unwatchableDescriptorFails() async {
        #expect(await Reactor.shared.wait(fd: 1_000_000, for: Reactor.readable, until: nil)
            == .failed(RndzError(errno: EBADF)))
    }

    /// The pool runs at most max(4, cores) blocking calls at once, and all of them.
    @Test func poolIsBounded() async throws {
        final class Gauge: Sendable { let m = Mutex((now: 0, most: 0)) }
        let gauge = Gauge()
        try await withThrowingTaskGroup(of: Int.self) { group in
            for i in 0..<24 {
                group.addTask {
                    try await offPool { () throws(RndzError) -> Int in
                        gauge.m.withLock { $0.now += 1; $0.most = max($0.most, $0.now) }
                        usleep(20_000)
                        gauge.m.withLock { $0.now -= 1 }
                        return i
                    }
                }
            }
            var sum = 0
            for try await i in group { sum += i }
            #expect(sum == (0..<24).reduce(0, +))
        }
        let limit = max(4, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        #expect(gauge.m.withLock { $0.most } <= limit)
    }
}
