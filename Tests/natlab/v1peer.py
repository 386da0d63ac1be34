#!/usr/bin/env python3
"""v1peer.py: a raw rndz v1 (rndz 0.1.5) peer and server for the NAT lab, no rndz code.

Speaks exactly the bytes captured from the reference implementation
(Tests/vectors/rndz-v1-vectors.txt): the protobuf is built and parsed by hand here, and
`selftest` checks every captured vector against this encoder (and the server's answers to the
captured odd inputs). Unknown fields (our extension fields 16, 17, 18, ...) are skipped, as a
v1 decoder does. Runs inside a lab namespace (the harness starts it with `ip netns exec`).

  v1peer.py selftest [VECTORS]
  v1peer.py udp-listen --id ID --server ADDR [--bind ADDR] [--ping S]
      rndz 0.1.5's UDP listener: a socket connected to the server pings it every S seconds;
      on Fsync{id:P, addr:B} it sends Rsync{id:P} to the server and the same bytes to B from
      the same port; a second socket on that port (the peer socket) echoes every datagram.
  v1peer.py tcp-listen --id ID --server ADDR [--bind ADDR] [--ping S]
      rndz 0.1.5's TCP listener: a listening socket and a server connection on one port
      (SO_REUSEADDR + SO_REUSEPORT), Ping every S seconds; on Fsync{id:P, addr:B} a connect
      from the same port to B that is given up at once (its SYN opens our NAT; rndz 0.1.5 uses
      a 1 us timeout and drops the socket), then Rsync{id:P}; accepted peers: read, answer
      "hello", close.
  v1peer.py udp-connect --id ID --server ADDR --target T [--timeout S]
      rndz 0.1.5's UDP connector: Isync{id:T} to the server (again every second), on
      Redirect{addr:B} Bye to the server, then "hello" to B from the same port until an answer
      that is not a protocol packet arrives; prints "reply from B: TEXT" and exits 0.
  v1peer.py tcp-connect --id ID --server ADDR --target T [--timeout S]
      rndz 0.1.5's TCP connector: Isync over a server connection, Redirect{addr:B}, connect
      from the same local port to B, send "hello", read the reply; prints "reply from B: TEXT".
  v1peer.py udp-server --listen ADDR
      rndz 0.1.5's UDP server (Ping, Isync, Rsync, Bye; 60 s expiry); anything it cannot
      decode, or an unknown command, is dropped.

Every protocol message sent or received is logged on stderr (hex). Connectors print
"stray: N" when N datagrams on the peer path were rndz protocol packets (e.g. the listener's
Rsync punch), not the peer's data.
"""
import argparse
import select
import socket
import sys
import time
from pathlib import Path

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "rndz-v1-vectors.txt"

# Request  { 1: id; oneof cmd { 2: Ping{} 3: Isync{1: id} 4: Fsync{1: id, 2: addr}
#                               5: Rsync{1: id} 6: Bye{} } }
# Response { 1: id; oneof cmd { 2: Pong{} 3: Redirect{1: id, 2: addr} 4: Fsync{1: id, 2: addr} } }
REQ = {"ping": 2, "isync": 3, "fsync": 4, "rsync": 5, "bye": 6}
RSP = {"pong": 2, "redirect": 3, "fsync": 4}


# ---- protobuf by hand --------------------------------------------------------------------------
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_bytes(num, data):
    return varint(num << 3 | 2) + varint(len(data)) + data


def string_field(num, text):
    # proto3: an empty string is not written at all.
    return field_bytes(num, text.encode()) if text else b""


def sub(id_="", addr=""):
    return string_field(1, id_) + string_field(2, addr)


def encode(kind, cmd, id_="", peer="", addr=""):
    """kind "req" or "rsp"; cmd a key of REQ/RSP; peer/addr the inner message's fields.
    A oneof member is written even when empty (presence), as rust-protobuf does."""
    num = (REQ if kind == "req" else RSP)[cmd]
    return string_field(1, id_) + field_bytes(num, sub(peer, addr))


def frame(body):
    return len(body).to_bytes(2, "big") + body


def read_varint(buf, i):
    n, shift = 0, 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, i
        shift += 7


def fields(buf):
    """[(num, wiretype, value)]; length-delimited values as bytes. Raises ValueError."""
    out, i = [], 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise ValueError("field 0")
        if wt == 0:
            v, i = read_varint(buf, i)
        elif wt == 1:
            v, i = buf[i:i + 8], i + 8
        elif wt == 5:
            v, i = buf[i:i + 4], i + 4
        elif wt == 2:
            n, i = read_varint(buf, i)
            v, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"wire type {wt}")
        if i > len(buf):
            raise ValueError("truncated")
        out.append((num, wt, v))
    return out


def decode(kind, buf):
    """-> (id, cmd or None, peer id, addr); unknown fields skipped; last value wins.
    Raises ValueError on bytes that are not a valid message."""
    names = {v: k for k, v in (REQ if kind == "req" else RSP).items()}
    id_, cmd, peer, addr = "", None, "", ""
    for num, wt, v in fields(buf):
        if num == 1 and wt == 2:
            id_ = v.decode()
        elif num in names and wt == 2:
            cmd, peer, addr = names[num], "", ""
            for n2, w2, v2 in fields(v):
                if n2 == 1 and w2 == 2:
                    peer = v2.decode()
                elif n2 == 2 and w2 == 2:
                    addr = v2.decode()
    return id_, cmd, peer, addr


def try_decode(kind, buf):
    try:
        return decode(kind, buf)
    except (ValueError, UnicodeDecodeError):
        return None


def is_protocol(buf):
    """Does this datagram decode as an rndz message with a command (a punch, a probe)?"""
    for kind in ("req", "rsp"):
        m = try_decode(kind, buf)
        if m and m[1] is not None:
            return True
    return False


# ---- addresses, logging --------------------------------------------------------------------------
def parse_addr(text):
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        return socket.AF_INET6, (host[1:-1], int(port))
    return socket.AF_INET, (host, int(port))


def fmt(sa):
    """rndz's text form of a socket address (a v4-mapped IPv6 address stays as Rust prints it:
    rndz 0.1.5's server formats the SocketAddr it got)."""
    host, port = sa[0], sa[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


T0 = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - T0:8.3f}] {msg}", file=sys.stderr, flush=True)


def hx(b):
    return b.hex(" ")


def reuse_socket(fam, typ, reuseport):
    s = socket.socket(fam, typ)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return s


def endpoints(a):
    """The server's address, and the family and address to bind (--bind, else the wildcard
    address of the server's family)."""
    sfam, saddr = parse_addr(a.server)
    bfam, baddr = parse_addr(a.bind or ("[::]:0" if sfam == socket.AF_INET6 else "0.0.0.0:0"))
    return saddr, bfam, baddr


def recv_rsp(s):
    """One datagram from the connected server socket `s`, logged and decoded as a response:
    (data, message or None), or (None, None) after a socket error (ICMP, ...)."""
    try:
        data = s.recv(1500)
    except OSError as e:
        log(f"server socket: {e}")
        return None, None
    m = try_decode("rsp", data)
    log(f"<- server {hx(data)} = {m}")
    return data, m


def recv_exact(s, n, deadline):
    buf = b""
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        s.settimeout(left)
        got = s.recv(n - len(buf))
        if not got:
            raise ConnectionError("closed by the other side")
        buf += got
    return buf


def read_frame(s, deadline):
    n = int.from_bytes(recv_exact(s, 2, deadline), "big")
    return recv_exact(s, n, deadline)


# ---- UDP listener ------------------------------------------------------------------------------
def cmd_udp_listen(a):
    saddr, bfam, baddr = endpoints(a)
    # rndz 0.1.5: the server socket is bound and connected; the peer socket is bound to the same
    # address later (SO_REUSEADDR on both; UDP needs no SO_REUSEPORT for that on Linux).
    svr = reuse_socket(bfam, socket.SOCK_DGRAM, False)
    svr.bind(baddr)
    svr.connect(saddr)
    local = svr.getsockname()
    peer = reuse_socket(bfam, socket.SOCK_DGRAM, False)
    peer.bind(local)
    log(f"udp listener {a.id}: local {fmt(local)}, server {a.server}")
    ping = encode("req", "ping", a.id)
    next_ping = 0.0
    while True:
        now = time.monotonic()
        if now >= next_ping:
            svr.send(ping)
            log(f"-> server Ping {hx(ping)}")
            next_ping = now + a.ping
        r, _, _ = select.select([svr, peer], [], [], max(0.0, next_ping - now))
        if svr in r:
            data, m = recv_rsp(svr)
            if data is None:
                continue
            if not m or m[0] != a.id:
                continue
            if m[1] == "fsync":
                rsync = encode("req", "rsync", a.id, m[2])
                svr.send(rsync)  # rndz 0.1.5: to the server first, then to the peer
                log(f"-> server Rsync {hx(rsync)}")
                try:
                    _, paddr = parse_addr(m[3])
                    svr.sendto(rsync, paddr)
                    log(f"-> {m[3]} Rsync (punch) {hx(rsync)}")
                except (OSError, ValueError) as e:
                    log(f"punch to {m[3]!r}: {e}")
        if peer in r:
            try:
                data, src = peer.recvfrom(1500)
            except OSError as e:
                log(f"peer socket: {e}")
                continue
            log(f"<- {fmt(src)} {len(data)} bytes {data[:64]!r}; echo")
            try:
                peer.sendto(data, src)
            except OSError as e:
                log(f"echo to {fmt(src)}: {e}")


# ---- TCP listener ------------------------------------------------------------------------------
def cmd_tcp_listen(a):
    saddr, bfam, baddr = endpoints(a)
    lst = reuse_socket(bfam, socket.SOCK_STREAM, True)
    lst.bind(baddr)
    local = lst.getsockname()
    lst.listen(10)
    lst.setblocking(False)
    log(f"tcp listener {a.id}: listening on {fmt(local)}, server {a.server}")
    ping = frame(encode("req", "ping", a.id))
    svr, buf, next_ping, retry_at = None, b"", 0.0, 0.0
    peers = {}  # socket -> (address, deadline, bytes read)
    while True:
        now = time.monotonic()
        if svr is None and now >= retry_at:
            try:
                svr = reuse_socket(bfam, socket.SOCK_STREAM, True)
                svr.bind(local)
                svr.settimeout(5)
                svr.connect(saddr)
                svr.setblocking(False)
                buf, next_ping = b"", now
                log(f"connected to the server from {fmt(svr.getsockname())}")
            except OSError as e:
                log(f"server connect: {e}; again in 1 s")
                svr.close()
                svr, retry_at = None, now + 1
        if svr is not None and now >= next_ping:
            try:
                svr.sendall(ping)
                log(f"-> server Ping {hx(ping)}")
            except OSError as e:
                log(f"server send: {e}")
            next_ping = now + a.ping
        rs = [lst] + list(peers) + ([svr] if svr is not None else [])
        wake = min([next_ping if svr is not None else retry_at]
                   + [d for _, d, _ in peers.values()])
        r, _, _ = select.select(rs, [], [], max(0.0, wake - time.monotonic()))
        now = time.monotonic()
        if svr is not None and svr in r:
            try:
                got = svr.recv(4096)
            except OSError as e:
                got, err = b"", e
            else:
                err = "closed"
            if not got:
                log(f"server connection lost ({err}); reconnecting")
                svr.close()
                svr, retry_at = None, now + 1
            buf += got
            while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
                n = int.from_bytes(buf[:2], "big")
                body, buf = buf[2:2 + n], buf[2 + n:]
                m = try_decode("rsp", body)
                log(f"<- server {hx(frame(body))} = {m}")
                if not m or m[1] != "fsync":
                    continue
                try:
                    pfam, paddr = parse_addr(m[3])
                    c = reuse_socket(bfam, socket.SOCK_STREAM, True)
                    c.bind(local)
                    c.setblocking(False)
                    e = c.connect_ex(paddr)  # sends the SYN; given up at once, as rndz 0.1.5
                    c.close()
                    log(f"connect {fmt(local)} -> {m[3]}: SYN sent ({e}), socket dropped")
                except (OSError, ValueError) as e:
                    log(f"connect to {m[3]!r}: {e}")
                rsync = frame(encode("req", "rsync", a.id, m[2]))
                try:
                    svr.sendall(rsync)
                    log(f"-> server Rsync {hx(rsync)}")
                except OSError as e:
                    log(f"server send: {e}")
        if lst in r:
            try:
                c, src = lst.accept()
                c.setblocking(False)
                peers[c] = (src, now + 20, b"")
                log(f"accepted {fmt(src)}")
            except OSError as e:
                log(f"accept: {e}")
        for c in list(peers):
            src, dl, got = peers[c]
            done = False
            if c in r:
                try:
                    data = c.recv(1500)
                except OSError as e:
                    log(f"{fmt(src)}: {e}")
                    data, done = b"", True
                if data:
                    log(f"<- {fmt(src)} {data!r}; answering hello")
                    try:
                        c.sendall(b"hello")
                    except OSError as e:
                        log(f"send to {fmt(src)}: {e}")
                done = True
            elif now >= dl:
                log(f"{fmt(src)} sent nothing in time")
                done = True
            if done:
                c.close()
                del peers[c]


# ---- UDP connector -----------------------------------------------------------------------------
def cmd_udp_connect(a):
    saddr, bfam, baddr = endpoints(a)
    deadline = time.monotonic() + a.timeout
    s = reuse_socket(bfam, socket.SOCK_DGRAM, False)
    s.bind(baddr)
    s.connect(saddr)
    local = s.getsockname()
    isync = encode("req", "isync", a.id, a.target)
    target, next_isync = None, 0.0
    while target is None:
        now = time.monotonic()
        if now >= deadline:
            log("no Redirect in time")
            return 1
        if now >= next_isync:
            s.send(isync)
            log(f"-> server Isync {hx(isync)}")
            next_isync = now + 1
        r, _, _ = select.select([s], [], [], max(0.0, min(next_isync, deadline) - now))
        if not r:
            continue
        data, m = recv_rsp(s)
        if m and m[0] == a.id and m[1] == "redirect":
            if not m[3]:
                log(f"target {a.target} not found")
                return 1
            target = m[3]
    bye = encode("req", "bye", a.id)
    s.send(bye)
    log(f"-> server Bye {hx(bye)}")
    # rndz 0.1.5: the server socket goes, a socket on the same port is connected to the peer.
    s.close()
    pfam, paddr = parse_addr(target)
    p = reuse_socket(bfam, socket.SOCK_DGRAM, False)
    p.bind(local)
    p.connect(paddr)
    log(f"talking to {target} from {fmt(local)}")
    stray, next_send = 0, 0.0
    while True:
        now = time.monotonic()
        if now >= deadline:
            log("no reply in time")
            print(f"stray: {stray}", flush=True)
            return 1
        if now >= next_send:
            try:
                p.send(b"hello")
                log(f"-> {target} hello")
            except OSError as e:
                log(f"send: {e}")
            next_send = now + 1
        r, _, _ = select.select([p], [], [], max(0.0, min(next_send, deadline) - now))
        if not r:
            continue
        try:
            data = p.recv(1500)
        except OSError as e:  # e.g. ECONNREFUSED from an ICMP error
            log(f"recv: {e}")
            continue
        if is_protocol(data):
            stray += 1
            log(f"<- {target} a protocol packet {hx(data)} (skipped)")
            continue
        log(f"<- {target} {data!r}")
        print(f"reply from {target}: {data.decode(errors='replace')}")
        if stray:
            print(f"stray: {stray}")
        sys.stdout.flush()
        return 0


# ---- TCP connector -----------------------------------------------------------------------------
def cmd_tcp_connect(a):
    saddr, bfam, baddr = endpoints(a)
    deadline = time.monotonic() + a.timeout
    svr = reuse_socket(bfam, socket.SOCK_STREAM, True)
    svr.bind(baddr)
    svr.settimeout(max(0.1, deadline - time.monotonic()))
    svr.connect(saddr)
    local = svr.getsockname()
    isync = frame(encode("req", "isync", a.id, a.target))
    svr.sendall(isync)
    log(f"-> server Isync {hx(isync)} from {fmt(local)}")
    try:
        body = read_frame(svr, deadline)
    except (OSError, TimeoutError, ConnectionError) as e:
        log(f"server: {e}")
        return 1
    m = try_decode("rsp", body)
    log(f"<- server {hx(frame(body))} = {m}")
    if not m or m[1] != "redirect":
        log("invalid server response")
        return 1
    if not m[3]:
        log(f"target {a.target} not found")
        return 1
    target = m[3]
    # rndz 0.1.5: one connect from the same local port (the server connection stays open
    # until connect returns); its failure is the caller's error.
    pfam, paddr = parse_addr(target)
    c = reuse_socket(bfam, socket.SOCK_STREAM, True)
    c.bind(local)
    c.settimeout(max(0.1, deadline - time.monotonic()))
    try:
        c.connect(paddr)
    except OSError as e:
        log(f"connect {fmt(local)} -> {target}: {e}")
        return 1
    svr.close()
    log(f"connected {fmt(local)} -> {target}")
    try:
        c.sendall(b"hello")
        c.settimeout(max(0.1, deadline - time.monotonic()))
        data = c.recv(5)
    except OSError as e:
        log(f"{target}: {e}")
        return 1
    log(f"<- {target} {data!r}")
    print(f"reply from {target}: {data.decode(errors='replace')}", flush=True)
    return 0 if data else 1


# ---- UDP server --------------------------------------------------------------------------------
class Server:
    """rndz 0.1.5's UDP server logic: handle(datagram, source) -> [(reply, destination)]."""
    EXPIRE = 60.0

    def __init__(self, clock=time.monotonic):
        self.clients = {}  # id -> (address, last seen)
        self.clock = clock
        self.next_gc = clock() + self.EXPIRE

    def handle(self, data, src):
        now = self.clock()
        if now > self.next_gc:
            self.clients = {k: v for k, v in self.clients.items()
                            if now - v[1] < self.EXPIRE}
            self.next_gc = now + self.EXPIRE
        m = try_decode("req", data)
        if m is None or m[1] is None:
            return []
        id_, cmd, peer, _ = m
        if cmd == "ping":
            self.clients[id_] = (src, now)
            return [(encode("rsp", "pong", id_), src)]
        if cmd == "isync":
            t = self.clients.get(peer)
            if t is not None:
                self.clients[id_] = (src, now)
                return [(encode("rsp", "fsync", peer, id_, fmt(src)), t[0])]
            return [(encode("rsp", "redirect", id_, peer), src)]
        if cmd == "rsync":
            t = self.clients.get(peer)
            if t is not None:
                return [(encode("rsp", "redirect", peer, id_, fmt(src)), t[0])]
            return []
        if cmd == "bye":
            self.clients.pop(id_, None)
        return []


def cmd_udp_server(a):
    fam, addr = parse_addr(a.listen)
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(addr)
    log(f"v1 udp server on {a.listen}")
    srv = Server()
    while True:
        data, src = s.recvfrom(1500)
        m = try_decode("req", data)
        log(f"<- {fmt(src)} {hx(data)} = {m}")
        for reply, dst in srv.handle(data, src):
            try:
                s.sendto(reply, dst)
                log(f"-> {fmt(dst)} {hx(reply)} = {try_decode('rsp', reply)}")
            except OSError as e:
                log(f"send to {fmt(dst)}: {e}")


# ---- selftest: our bytes are the captured bytes ------------------------------------------------
def cmd_selftest(a):
    path = Path(a.vectors)
    problems, checked = [], 0
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("|")]
        name, transport = parts[0], parts[1]
        if name.startswith("probe."):
            req_hex, _, rest = parts[2].partition("->")
            want = rest.split("(")[0].strip()
            data = bytes.fromhex(req_hex.strip())
            out = Server().handle(data, ("198.51.100.7", 4000))
            got = hx(out[0][0]) if out else "none"
            if got != want:
                problems.append(f"{name}: server answered {got}, captured {want}")
            checked += 1
            continue
        raw = bytes.fromhex(parts[3])
        body = raw
        if transport == "tcp":
            if int.from_bytes(raw[:2], "big") != len(raw) - 2:
                problems.append(f"{name}: bad frame length")
                continue
            body = raw[2:]
        # Requests are sent by clients (c1 ->, c2 ->, ...), responses by the server.
        kind = "rsp" if parts[2].startswith("srv") else "req"
        m = try_decode(kind, body)
        if m is None or m[1] is None:
            problems.append(f"{name}: does not decode as a {kind}")
            continue
        id_, cmd, peer, addr = m
        again = encode(kind, cmd, id_, peer, addr)
        if transport == "tcp":
            again = frame(again)
        if again != raw:
            problems.append(f"{name}: encoded {hx(again)}, captured {hx(raw)}")
        checked += 1
    # The server's own answers, in the captured shapes (in that capture c1 was at port 37681,
    # c2 at 57456).
    srv = Server()
    c1, c2 = ("127.0.0.1", 37681), ("127.0.0.1", 57456)
    want = {
        "udp.pong": (srv.handle(encode("req", "ping", "c1"), c1), c1),
        "udp.fsync": (srv.handle(encode("req", "isync", "c2", "c1"), c2), c1),
        "udp.redirect": (srv.handle(encode("req", "rsync", "c1", "c2"), c1), c2),
        "udp.redirect.empty": (srv.handle(encode("req", "isync", "c3", "nobody"), c2), c2),
    }
    vec = {p[0].strip(): p[3].strip() for p in
           (l.split("|") for l in path.read_text().splitlines()
            if l.strip() and not l.startswith("#")) if len(p) >= 4}
    for name, (out, dest) in want.items():
        ours = hx(out[0][0]) if out else "none"
        if ours != vec[name] or (out and out[0][1] != dest):
            problems.append(f"server {name}: {ours} to {out[0][1] if out else None}, "
                            f"captured {vec[name]} to {dest}")
    # Unknown fields (our extensions 16, 17, 18) are skipped.
    ext = encode("req", "isync", "c2", "c1") + field_bytes(17, b"10.0.0.1:5") + \
        varint(18 << 3 | 0) + varint(12345)
    if try_decode("req", ext) != ("c2", "isync", "c1", ""):
        problems.append("extension fields not skipped")
    if problems:
        print("v1peer selftest FAILED:\n  " + "\n  ".join(problems))
        return 1
    print(f"v1peer selftest ok: {checked} captured vectors")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sp = ap.add_subparsers(dest="cmd", required=True)
    p = sp.add_parser("selftest")
    p.add_argument("vectors", nargs="?", default=str(VECTORS))
    for name in ("udp-listen", "tcp-listen"):
        p = sp.add_parser(name)
        p.add_argument("--id", required=True)
        p.add_argument("--server", required=True)
        p.add_argument("--bind")
        p.add_argument("--ping", type=float, default=5.0)
    for name in ("udp-connect", "tcp-connect"):
        p = sp.add_parser(name)
        p.add_argument("--id", required=True)
        p.add_argument("--server", required=True)
        p.add_argument("--target", required=True)
        p.add_argument("--bind")
        p.add_argument("--timeout", type=float, default=12.0)
    p = sp.add_parser("udp-server")
    p.add_argument("--listen", required=True)
    a = ap.parse_args()
    fn = {"selftest": cmd_selftest, "udp-listen": cmd_udp_listen, "tcp-listen": cmd_tcp_listen,
          "udp-connect": cmd_udp_connect, "tcp-connect": cmd_tcp_connect,
          "udp-server": cmd_udp_server}[a.cmd]
    try:
        return fn(a) or 0
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
