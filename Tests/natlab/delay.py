#!/usr/bin/env python3
"""delay.py: a user-space wire with a fixed one-way delay, for the NAT lab (no netem needed).

    delay.py --ms 25 r1:r1d r2:r2d      relay Ethernet frames r1 <-> r1d and r2 <-> r2d, each
                                        frame held 25 ms in each direction
    delay.py --ping ADDR [--count 5] [--interval 0.2] [--timeout 2]
                                        ICMP/ICMPv6 echo to ADDR (there is no ping(8) in the
                                        lab's image): one warm-up echo (neighbour resolution
                                        across the delayed links), then COUNT measured ones;
                                        prints JSON {"addr", "rtts_ms", "lost"} on stdout

Relay: one AF_PACKET SOCK_RAW socket (ETH_P_ALL) bound to each interface, both interfaces in
promiscuous mode, one thread: poll, queue every received frame in a heap as (due, seq, out
socket, frame), send what is due. Frames this process sent itself come back to its sockets as
PACKET_OUTGOING and are skipped, so nothing loops. The sockets use PACKET_VNET_HDR: a frame
keeps its checksum-offload and segmentation-offload state across the wire (veths hand over
TCP/UDP packets with the checksum not yet computed, and TSO super-frames), so no ethtool is
needed. Prints "ready" on stdout once every socket is bound; on SIGTERM/SIGINT prints the
frames relayed per direction on stderr ("delay: r1->r1d 12 frames ...") and exits 0.

Run it inside the switch namespace that owns the interfaces (the lab: `ip netns exec`).
"""
import heapq
import json
import math
import os
import select
import signal
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_VNET_HDR = 15
PACKET_OUTGOING = 4


class Stop(Exception):
    pass


def on_signal(sig, frame):
    raise Stop()


def open_port(ifname):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 21)
    s.bind((ifname, ETH_P_ALL))
    ifindex = socket.if_nametoindex(ifname)
    # struct packet_mreq { int mr_ifindex; unsigned short mr_type, mr_alen;
    #                      unsigned char mr_address[8]; }
    mreq = struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b"")
    s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
    s.setblocking(False)
    return s


def relay(pairs, ms):
    delay = ms / 1000.0
    ports = {}        # fd -> (socket, name, peer socket, peer name)
    counts = {}       # "a->b" -> frames relayed
    errors = {}       # "a->b" -> send errors
    for a, b in pairs:
        sa, sb = open_port(a), open_port(b)
        ports[sa.fileno()] = (sa, a, sb, b)
        ports[sb.fileno()] = (sb, b, sa, a)
        counts[f"{a}->{b}"] = counts[f"{b}->{a}"] = 0
    poller = select.poll()
    for fd in ports:
        poller.register(fd, select.POLLIN)
    heap = []
    seq = 0
    print(f"ready: {ms} ms each way on " + ", ".join(f"{a}<->{b}" for a, b in pairs), flush=True)
    try:
        while True:
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                _, _, out, frame, key = heapq.heappop(heap)
                try:
                    out.send(frame)
                    counts[key] += 1
                except OSError as e:
                    errors[key] = errors.get(key, 0) + 1
                    if errors[key] <= 3:
                        print(f"delay: {key}: send: {e}", file=sys.stderr, flush=True)
            timeout = -1 if not heap else max(0, math.ceil((heap[0][0] - now) * 1000))
            for fd, _ in poller.poll(timeout):
                s, name, peer, pname = ports[fd]
                while True:
                    try:
                        frame, addr = s.recvfrom(65536 + 64)
                    except (BlockingIOError, InterruptedError):
                        break
                    if addr[2] == PACKET_OUTGOING:  # our own send on this interface
                        continue
                    seq += 1
                    heapq.heappush(heap, (time.monotonic() + delay, seq, peer, frame,
                                          f"{name}->{pname}"))
    except Stop:
        pass
    finally:
        print("delay: " + ", ".join(f"{k} {v} frames" for k, v in counts.items())
              + (f"; {len(heap)} frames in flight dropped at exit" if heap else "")
              + ("; send errors: " + ", ".join(f"{k} {v}" for k, v in errors.items())
                 if errors else ""), file=sys.stderr, flush=True)


def checksum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ping(addr, count, interval, timeout):
    v6 = ":" in addr
    if v6:
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        req, rep = 128, 129
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        req, rep = 8, 0
    ident = os.getpid() & 0xFFFF
    rtts, lost = [], 0
    for n in range(count + 1):  # echo 0: warm-up (ARP / neighbour discovery), not counted
        payload = struct.pack("!d", time.monotonic()) + b"natlab-delay"
        hdr = struct.pack("!BBHHH", req, 0, 0, ident, n)
        if not v6:  # the kernel fills ICMPv6 checksums of raw sockets itself
            hdr = struct.pack("!BBHHH", req, 0, checksum(hdr + payload), ident, n)
        t0 = time.monotonic()
        s.sendto(hdr + payload, (addr, 0))
        got = None
        end = t0 + timeout
        while got is None and time.monotonic() < end:
            r, _, _ = select.select([s], [], [], max(0.0, end - time.monotonic()))
            if not r:
                break
            data = s.recv(2048)
            t1 = time.monotonic()
            if not v6:
                data = data[(data[0] & 0x0F) * 4:]  # IPv4 raw sockets include the IP header
            if len(data) >= 8:
                typ, _, _, rid, rseq = struct.unpack("!BBHHH", data[:8])
                if typ == rep and rid == ident and rseq == n:
                    got = (t1 - t0) * 1000
        if n > 0:
            if got is None:
                lost += 1
            else:
                rtts.append(round(got, 2))
        if n < count:
            time.sleep(interval)
    print(json.dumps({"addr": addr, "rtts_ms": rtts, "lost": lost}), flush=True)
    return 0 if rtts else 1


def main(argv):
    ms, pairs = 25.0, []
    ping_addr, count, interval, timeout = None, 5, 0.2, 2.0
    it = iter(argv)
    for a in it:
        if a == "--ms":
            ms = float(next(it))
        elif a == "--ping":
            ping_addr = next(it)
        elif a == "--count":
            count = int(next(it))
        elif a == "--interval":
            interval = float(next(it))
        elif a == "--timeout":
            timeout = float(next(it))
        elif a in ("-h", "--help"):
            print(__doc__)
            return 0
        elif ":" in a and not a.startswith("-"):
            x, y = a.split(":", 1)
            pairs.append((x, y))
        else:
            print(f"delay.py: unknown argument {a!r} (see --help)", file=sys.stderr)
            return 2
    if ping_addr:
        return ping(ping_addr, count, interval, timeout)
    if not pairs:
        print("delay.py: no interface pairs (IF:IF ...)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    relay(pairs, ms)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
