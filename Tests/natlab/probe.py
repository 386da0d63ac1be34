#!/usr/bin/env python3
"""probe.py: plain UDP sockets for the NAT lab, no rndz involved.

Runs inside a lab namespace (the harness starts it with `ip netns exec`).

  probe.py udp --bind ADDR:PORT [--to ADDR:PORT] [--duration S] [--tag T]
      Bind, and for S seconds send "probe <tag> <n>" to --to every 100 ms (if given) while
      recording every datagram received. Prints one JSON line:
      {"sent": n, "received": [["payload", "ip:port"], ...]}.

  probe.py tcp --bind ADDR:PORT (--to ADDR:PORT | --listen) [--duration S] [--tag T]
      --to: connect from the bound port (SO_REUSEADDR + SO_REUSEPORT) within S seconds; both
      sides doing so at once is a TCP simultaneous open. --listen: accept for S seconds.
      On a connection: send "probe <tag>", read the peer's line. Prints
      {"connected": bool, "peer": "ip:port" or null, "received": "..." or null, "error": ...}.

  probe.py echo --bind ADDR:PORT [--bind ADDR:PORT ...] [--duration S]
      Answer every datagram with the text form of its source address ("ip:port"): a tiny
      STUN, to see which public mapping a NAT gave.

  probe.py observe --bind ADDR:PORT --to ADDR:PORT [--to ADDR:PORT ...] [--timeout S]
      From one local port, ask each echo server at --to which source address it saw. Prints
      {"seen": {"to": "ip:port" or null}}: the mapping per destination.
"""
import argparse
import json
import select
import socket
import sys
import time


def parse_addr(text):
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        return socket.AF_INET6, (host[1:-1], int(port))
    return socket.AF_INET, (host, int(port))


def fmt(sa):
    host, port = sa[0], sa[1]
    if host.startswith("::ffff:"):
        host = host[7:]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bound_socket(text):
    fam, sa = parse_addr(text)
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(sa)
    return s


def cmd_udp(a):
    s = bound_socket(a.bind)
    dest = parse_addr(a.to)[1] if a.to else None
    end = time.monotonic() + a.duration
    next_send = time.monotonic()
    sent, received = 0, []
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if dest is not None and now >= next_send:
            try:
                s.sendto(f"probe {a.tag} {sent}".encode(), dest)
            except OSError as e:  # e.g. unreachable: the point is what arrives
                print(f"send error: {e}", file=sys.stderr)
            sent += 1
            next_send = now + 0.1
        wait = max(0.0, min(end, next_send if dest is not None else end) - now)
        r, _, _ = select.select([s], [], [], wait)
        if r:
            try:
                data, src = s.recvfrom(2048)
            except OSError as e:
                print(f"recv error: {e}", file=sys.stderr)
                continue
            received.append([data.decode(errors="replace"), fmt(src)])
    print(json.dumps({"sent": sent, "received": received}), flush=True)


def cmd_tcp(a):
    fam, sa = parse_addr(a.bind)
    end = time.monotonic() + a.duration
    res = {"connected": False, "peer": None, "received": None, "error": None}
    conn = None
    try:
        if a.listen:
            ls = socket.socket(fam, socket.SOCK_STREAM)
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind(sa)
            ls.listen(4)
            ls.settimeout(a.duration)
            conn, peer = ls.accept()
        else:
            dest = parse_addr(a.to)[1]
            while conn is None and time.monotonic() < end:
                c = socket.socket(fam, socket.SOCK_STREAM)
                c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                c.bind(sa)
                c.settimeout(max(0.1, end - time.monotonic()))
                try:
                    c.connect(dest)
                    conn = c
                except OSError as e:  # refused / timed out: try again while time is left
                    res["error"] = str(e)
                    c.close()
                    time.sleep(0.05)
            if conn is None:
                raise TimeoutError(res["error"] or "no connection")
            peer = conn.getpeername()
        res["connected"], res["peer"], res["error"] = True, fmt(peer), None
        conn.settimeout(max(0.5, end - time.monotonic()))
        conn.sendall(f"probe {a.tag}\n".encode())
        res["received"] = conn.recv(2048).decode(errors="replace").strip()
    except OSError as e:
        res["error"] = str(e) or type(e).__name__
    finally:
        if conn is not None:
            conn.close()
    print(json.dumps(res), flush=True)


def cmd_echo(a):
    socks = [bound_socket(b) for b in a.bind]
    print("ready", flush=True)
    end = time.monotonic() + a.duration
    while time.monotonic() < end:
        r, _, _ = select.select(socks, [], [], 0.2)
        for s in r:
            data, src = s.recvfrom(2048)
            s.sendto(fmt(src).encode(), src)


def cmd_observe(a):
    s = bound_socket(a.bind)
    seen = {}
    for to in a.to:
        dest = parse_addr(to)[1]
        seen[to] = None
        end = time.monotonic() + a.timeout
        while seen[to] is None and time.monotonic() < end:
            s.sendto(b"who am i", dest)
            r, _, _ = select.select([s], [], [], 0.2)
            if r:
                data, src = s.recvfrom(2048)
                if fmt(src) == fmt(dest):
                    seen[to] = data.decode(errors="replace")
    print(json.dumps({"seen": seen}), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("udp")
    u.add_argument("--bind", required=True)
    u.add_argument("--to")
    u.add_argument("--duration", type=float, default=1.5)
    u.add_argument("--tag", default="x")
    t = sub.add_parser("tcp")
    t.add_argument("--bind", required=True)
    t.add_argument("--to")
    t.add_argument("--listen", action="store_true")
    t.add_argument("--duration", type=float, default=3)
    t.add_argument("--tag", default="x")
    e = sub.add_parser("echo")
    e.add_argument("--bind", action="append", required=True)
    e.add_argument("--duration", type=float, default=60)
    o = sub.add_parser("observe")
    o.add_argument("--bind", required=True)
    o.add_argument("--to", action="append", required=True)
    o.add_argument("--timeout", type=float, default=2)
    a = p.parse_args()
    {"udp": cmd_udp, "tcp": cmd_tcp, "echo": cmd_echo, "observe": cmd_observe}[a.cmd](a)


if __name__ == "__main__":
    main()
