#!/usr/bin/env python3
"""Generate the fuzz seed corpora (Tests/fuzz/corpus/<target>/) from the wire vectors.

    Tests/fuzz/gen_corpus.py [--vectors Tests/vectors/rndz-v1-vectors.txt] [--out Tests/fuzz/corpus]

The output is committed; run this again when the vectors change (it rewrites the directories;
it is deterministic). Seeds are named after the vectors they come from.
"""
import argparse
import hashlib
import hmac
import os
import re
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# fuzz_server_udp's input format (see fuzz_server_udp.c): records `ctl` + datagram, joined by SEP.
SEP = bytes([0xFF, 0xFE, 0xFD, 0xFC])
STEP_MS = [0, 1, 10, 1000, 10000, 30000, 59999, 60001]


def read_vectors(path):
    """{name: (transport, direction, bytes)} of the message vectors, and
    [(name, request bytes)] of the probes (request side only)."""
    vectors, probes = {}, []
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 4:
            name, transport, direction, hx = parts
            vectors[name] = (transport, direction, bytes.fromhex(hx))
        elif len(parts) == 3 and parts[0].startswith("probe."):
            name, _transport, rest = parts
            probes.append((name, bytes.fromhex(rest.split("->", 1)[0])))
        else:
            sys.exit(f"gen_corpus: cannot read vector line: {line!r}")
    return vectors, probes


# A minimal v1 encoder, checked against the vectors below, for the server scenarios.
def _varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _string(field, s):
    b = s.encode()
    return bytes([field << 3 | 2]) + _varint(len(b)) + b if b else b""


REQ_FIELD = {"ping": 2, "isync": 3, "fsync": 4, "rsync": 5, "bye": 6}


def request(cmd, id, peer="", addr=""):
    sub = _string(1, peer) + _string(2, addr)
    return _string(1, id) + bytes([REQ_FIELD[cmd] << 3 | 2]) + _varint(len(sub)) + sub


# The fields v1 skips (Sources/CRndz/ext.h, auth.h), for seeds that reach their parsers.
def ext_fields(cands=(), nonce=None, rtt=None):
    out = b"".join(b"\x8a\x01" + _varint(len(c)) + c.encode() for c in cands)  # 17: cand
    if nonce is not None:
        out += b"\x91\x01" + nonce.to_bytes(8, "little")  # 18: nonce, fixed64
    if rtt is not None:
        out += b"\x98\x01" + _varint(rtt)  # 19: the connector's RTT to the server, varint
    return out


def signed(msg, secret, id, ts, nonce):
    """msg with an Auth field (16) signed as auth.h says."""
    cred = hmac.new(secret, b"rndz id credential v1" + id.encode(), hashlib.sha256).digest()
    mac = hmac.new(cred, ts.to_bytes(8, "big") + bytes([len(nonce)]) + nonce + msg,
                   hashlib.sha256).digest()
    sub = b"\x08" + _varint(ts) + b"\x12" + bytes([len(nonce)]) + nonce + b"\x1a\x20" + mac
    return msg + b"\x82\x01" + _varint(len(sub)) + sub


def probe(kind, seq, nonce):
    return b"\xd5rndzPRB" + bytes([kind, 0, 0, 0]) + seq.to_bytes(4, "big") + nonce.to_bytes(8, "big")


def rec(source, data, step_ms=0, tick=False, auth=0):
    """One record: ctl (source, clock step, expiry tick), auth (0 as is, 1 signed, 2 the
    previous datagram again, 3 signed stale; +4 another id's credential), the datagram."""
    ctl = source | STEP_MS.index(step_ms) << 3 | (0x40 if tick else 0)
    return bytes([ctl, auth]) + data


SECRET, TIGHT, NO_LIMITS, SHORT_IDS = 0x10, 1 << 5, 2 << 5, 3 << 5


def server_input(records, config=0):
    """config: bits 0-1 max_peers (1, 1024, 2048, 4096), bits 2-3 udp_expiry_ms (default, 1,
    1000, 30000), bit 4 a secret, bits 5-6 limits (default, tight, off, max_id_len 4)."""
    return bytes([config]) + SEP.join(records)


def write_dir(out, target, seeds):
    d = os.path.join(out, target)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    seen = set()
    for name, data in seeds:
        if data in seen:
            continue  # the same bytes under another name
        seen.add(data)
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    return len(seen)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", default=os.path.join(ROOT, "Tests/vectors/rndz-v1-vectors.txt"))
    ap.add_argument("--out", default=os.path.join(HERE, "corpus"))
    a = ap.parse_args()
    vectors, probes = read_vectors(a.vectors)

    # The encoder must reproduce the captured requests byte for byte.
    for name, want in [("udp.ping", request("ping", "c1")),
                       ("udp.isync", request("isync", "c2", "c1")),
                       ("udp.rsync", request("rsync", "c1", "c2")),
                       ("udp.bye", request("bye", "o2"))]:
        if vectors[name][2] != want:
            sys.exit(f"gen_corpus: encoder disagrees with vector {name}")

    bodies = []  # (name, message body) of every vector, UDP datagram or TCP frame body
    for name, (transport, _direction, data) in vectors.items():
        if transport == "tcp":
            n = data[0] << 8 | data[1]
            if n != len(data) - 2:
                sys.exit(f"gen_corpus: {name}: frame length {n} but {len(data) - 2} bytes")
            data = data[2:]
        bodies.append((name, data))
    bodies += probes

    # fuzz_wire: every message body, and some with the fields v1 skips.
    cands = ["192.0.2.1:4000", "[2001:db8::1]:4000"]
    key = b"fuzz_wire secret: not a real one"
    ext_isync = request("isync", "c2", "c1") + ext_fields(cands, 0x0123456789ABCDEF)
    ext_seeds = [
        ("ext.isync", ext_isync),
        ("ext.fsync", vectors["udp.fsync"][2] + ext_fields(cands, 0x0123456789ABCDEF)),
        ("ext.nonce-only", request("rsync", "c1", "c2") + ext_fields((), 1)),
        ("ext.tcp-isync-rtt", request("isync", "c2", "c1") + ext_fields(cands, 5, rtt=51)),
        ("ext.rtt-huge", request("isync", "c2", "c1") + ext_fields((), 5, rtt=(1 << 63) + 3)),
        ("auth.ping", signed(request("ping", "c1"), key, "c1", 1764000000000, b"0123456789abcdef")),
        ("auth.isync.ext", signed(ext_isync, key, "c2", 1764000000001, b"nonce-8b")),
        ("probe.probe", probe(1, 7, 0x0123456789ABCDEF)),
        ("probe.ack", probe(2, 7, 0x0123456789ABCDEF)),
    ]
    counts = {"fuzz_wire": write_dir(a.out, "fuzz_wire", bodies + ext_seeds)}

    # fuzz_frame: byte 0 = number of cuts k, k chunk lengths, then the stream.
    frames = [(n, d) for n, (t, _, d) in vectors.items() if t == "tcp"]
    stream = b"".join(d for _, d in frames)
    frame_seeds = [(n, b"\x00" + d) for n, d in frames]
    frame_seeds += [
        ("all.whole", b"\x00" + stream),
        ("all.cut-1-1-7-3", bytes([4, 1, 1, 7, 3]) + stream),  # header split, body split
        ("all.cut-bytewise", bytes([15]) + bytes([1] * 15) + stream),
        ("ping.then-oversize", b"\x00" + frames[0][1] + bytes([0x05, 0xDD]) + b"\x00" * 8),
        ("empty-frame.then-ping", b"\x00" + b"\x00\x00" + frames[0][1]),
        ("ping.truncated", b"\x00" + frames[0][1][:-2]),
    ]
    counts["fuzz_frame"] = write_dir(a.out, "fuzz_frame", frame_seeds)

    # fuzz_addr: the addresses inside the vectors, and hand-picked text around them.
    addr_re = re.compile(rb"(?:\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:.%]+\]):\d{1,5}")
    addr_seeds = []
    for name, data in bodies:
        for i, m in enumerate(addr_re.findall(data)):
            addr_seeds.append((f"{name}.addr{i}", m))
    addr_seeds += [("hand." + re.sub(r"[^0-9A-Za-z.]", "_", s), s.encode()) for s in [
        "0.0.0.0:8888", "[::]:0", "[fe80::1%2]:5", "[::ffff:192.0.2.1]:80",
        "255.255.255.255:65535", "192.0.2.1:65536", "[2001:db8::1]:5678", "localhost:1",
        "1.2.3.4", "[::1]", "debug", "3"]]
    counts["fuzz_addr"] = write_dir(a.out, "fuzz_addr", addr_seeds)

    # fuzz_server_udp: each request vector alone, then scenarios over several sources
    # (0,1,2,3,6,7: IPv4 loopback sinks; 4: source 0 IPv4-mapped; 5: [::1]).
    req = {n: d for n, (t, direction, d) in vectors.items()
           if t == "udp" and direction.endswith("-> srv")}
    server_seeds = [(n, server_input([rec(0, d)])) for n, d in req.items()]
    server_seeds += [(n, server_input([rec(0, d)])) for n, d in probes]
    P = request
    V = lambda name: vectors[name][2]  # noqa: E731
    pair = [rec(0, V("udp.ping")),                 # c1 registers
            rec(1, V("udp.isync"), 10),            # c2 asks for c1: Fsync to c1
            rec(0, V("udp.rsync"), 1),             # c1 answers: Redirect to c2
            rec(1, P("ping", "c2"), 1000),
            rec(0, P("bye", "c1")), rec(1, P("bye", "c2"))]
    server_seeds += [
        ("pair", server_input(pair)),
        ("foreign-bye", server_input([
            rec(0, P("ping", "c1")), rec(1, P("bye", "c1")), rec(4, P("bye", "c1")),
            rec(2, P("isync", "c9", "c1"))])),
        ("expiry", server_input([
            rec(0, P("ping", "c1")), rec(1, P("ping", "c2"), 30000, True),
            rec(2, P("isync", "c3", "c1"), 60001, True),
            rec(3, P("rsync", "c3", "c2"), 59999, True)])),
        ("move", server_input([
            rec(0, P("ping", "c1")), rec(2, P("ping", "c1"), 1000), rec(3, P("isync", "c2", "c1")),
            rec(6, P("isync", "c1", "nobody"))])),
        ("ipv6", server_input([
            rec(5, P("ping", "v1")), rec(7, P("isync", "v2", "v1")), rec(1, P("ping", "v3")),
            rec(5, P("rsync", "v1", "v3")), rec(5, P("bye", "v1"))])),
        ("fsync-to-server", server_input([
            rec(0, P("fsync", "c1", "c2", "127.0.0.1:1")), rec(0, b"\x12\x00"), rec(0, b"")])),
        # max_peers 1 still holds a shard's slack (64 and more): fill it past that.
        ("table-full", server_input(
            [rec(i % 4, P("ping", f"p{i}")) for i in range(80)] +
            [rec(6, P("isync", "late", "p0")), rec(7, P("isync", "p79", "late"))])),
        ("short-expiry", server_input([
            rec(0, P("ping", "c1")), rec(1, P("isync", "c2", "c1"), 1000, True),
            rec(2, P("rsync", "c3", "c2"), 10, True)], config=2 << 2)),
        # With a secret: signed, then a replay, a stale one, another id's credential, none.
        ("auth-pair", server_input(
            [r[:1] + b"\x01" + r[2:] for r in pair[:4]] +
            [rec(1, b"", auth=2), rec(0, P("ping", "c1"), auth=3), rec(2, P("ping", "c1"), auth=5),
             rec(3, P("ping", "c1")), rec(0, P("bye", "c1"), auth=1)], config=SECRET)),
        ("v1-server-signed", server_input([r[:1] + b"\x01" + r[2:] for r in pair])),
        # Extension fields the server copies from Isync into Fsync, from Rsync into Redirect.
        ("ext-forward", server_input([
            rec(0, P("ping", "c1")),
            rec(1, P("isync", "c2", "c1") + ext_fields(["192.0.2.7:4000", "[2001:db8::7]:4000"], 7)),
            rec(0, P("rsync", "c1", "c2") + ext_fields(["198.51.100.1:5000"], 7))])),
        ("limits-tight", server_input(
            [rec(0, P("ping", "t"))] + [rec(1, P("isync", f"s{i}", "t")) for i in range(4)] +
            [rec(2, P("rsync", "x", "t"), 1000), rec(2, P("rsync", "x", "t"))], config=TIGHT)),
        ("limits-off", server_input(
            [rec(0, P("ping", "t"))] + [rec(1, P("isync", f"s{i}", "t")) for i in range(4)],
            config=NO_LIMITS | 1)),
        ("short-ids", server_input([
            rec(0, P("ping", "four")), rec(1, P("ping", "fives")), rec(2, P("isync", "ab", "fives")),
            rec(3, P("isync", "ab", "four"))], config=SHORT_IDS | 3)),
    ]
    counts["fuzz_server_udp"] = write_dir(a.out, "fuzz_server_udp", server_seeds)

    # fuzz_server_tcp: the same records on connections 0-7 (sources: slot % 4; 2 is IPv6),
    # auth byte bit 3 = raw stream bytes, else one body, framed (and signed per bits 0-2).
    RAW = 8
    treq = {n: d for n, (t, direction, d) in vectors.items()
            if t == "tcp" and direction.endswith("-> srv")}
    frame = lambda body: len(body).to_bytes(2, "big") + body  # noqa: E731
    tcp_seeds = [(n, server_input([rec(0, d, auth=RAW)])) for n, d in treq.items()]
    tpair = [rec(0, P("ping", "c1")), rec(1, P("isync", "c2", "c1"), 10),
             rec(0, P("rsync", "c1", "c2"), 1), rec(1, P("ping", "c2"), 1000),
             rec(0, P("bye", "c1")), rec(1, P("isync", "c3", "c1"))]
    tcp_seeds += [
        ("pair", server_input(tpair)),
        ("takeover", server_input([
            rec(0, P("ping", "c1")), rec(3, P("ping", "c1")), rec(1, P("isync", "c2", "c1")),
            rec(3, P("bye", "c1")), rec(1, P("isync", "c2", "c1")), rec(0, P("ping", "c1"))])),
        ("self-isync", server_input([rec(0, P("ping", "c1")), rec(0, P("isync", "c1", "c1")),
                                     rec(0, P("rsync", "c1", "c1"))])),
        ("frames-in-one", server_input([
            rec(0, frame(P("ping", "c1")) + frame(P("ping", "c1"))[:3], auth=RAW),
            rec(0, frame(P("ping", "c1"))[3:] + frame(P("isync", "c1", "c9")), auth=RAW)])),
        ("oversize", server_input([rec(0, P("ping", "c1")), rec(0, bytes([0x05, 0xDD]) + b"\0" * 8, auth=RAW),
                                   rec(1, P("isync", "c2", "c1"))])),
        ("empty-and-junk", server_input([rec(0, b"\x00\x00", auth=RAW), rec(1, b"\x00\x03abc", auth=RAW),
                                         rec(2, P("fsync", "c1", "c2", "127.0.0.1:1"))])),
        ("idle", server_input([
            rec(0, P("ping", "c1")), rec(1, P("ping", "c2"), 1000, True),
            rec(2, P("isync", "c3", "c1"), 1000, True)], config=2)),
        ("ext-forward", server_input([
            rec(0, P("ping", "c1")),
            rec(1, P("isync", "c2", "c1") + ext_fields(["192.0.2.7:4000"], 7, rtt=40)),
            rec(0, P("rsync", "c1", "c2") + ext_fields(["198.51.100.1:5000"], 7))])),
        ("auth-pair", server_input(
            [r[:1] + b"\x01" + r[2:] for r in tpair[:4]] +
            [rec(1, b"", auth=2), rec(4, P("ping", "c1"), auth=3), rec(5, P("ping", "c1"), auth=5),
             rec(6, P("ping", "c1")), rec(0, P("ping", "c1"), auth=1)], config=SECRET)),
        ("limits-tight", server_input(
            [rec(0, P("ping", "t"))] + [rec(1 + i % 3, P("isync", f"s{i}", "t")) for i in range(4)],
            config=TIGHT)),
        ("short-ids", server_input([
            rec(0, P("ping", "four")), rec(1, P("ping", "fives"))], config=SHORT_IDS)),
    ]
    counts["fuzz_server_tcp"] = write_dir(a.out, "fuzz_server_tcp", tcp_seeds)

    for t, n in counts.items():
        print(f"gen_corpus: {t}: {n} seeds")


if __name__ == "__main__":
    main()
