#!/usr/bin/env python3
"""The rndz NAT lab: real Linux NATs and stateful firewalls in network namespaces.

Started by Tests/natlab/run (or `make natlab`). See Tests/natlab/README.md for the topology, the
scenarios and the knobs. Needs root, iproute2, nftables and python3; nothing else.
"""
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BUILD = ROOT / "build"
PROBE = HERE / "probe.py"
V1PEER = HERE / "v1peer.py"    # a raw rndz 0.1.5 peer and UDP server (the captured bytes)
DELAY = HERE / "delay.py"      # a user-space wire with a fixed delay (no netem here), and ping

# ---- addresses: TEST-NET and 10.x, only ever inside the lab's own namespaces -----------------
SRV4, SRV6 = "203.0.113.1", "2001:db8::1"
PORT = 7000                      # rendezvous server, UDP and TCP
ECHO_PORTS = (7100, 7101)        # probe.py echo on the server host: NAT mapping checks
WAN4 = {"r1": "203.0.113.11", "r2": "203.0.113.12"}
WAN6 = {"r1": "2001:db8::11", "r2": "2001:db8::12"}
LAN = {  # router -> (lan ipv4 gw, lan ipv6 gw, ipv6 prefix)
    "r1": ("10.1.0.1", "2001:db8:1::1", "2001:db8:1::/64"),
    "r2": ("10.2.0.1", "2001:db8:2::1", "2001:db8:2::/64"),
}
HOSTS = {  # host -> (router, ipv4, ipv6)
    "a": ("r1", "10.1.0.10", "2001:db8:1::10"),
    "a2": ("r1", "10.1.0.20", "2001:db8:1::20"),
    "b": ("r2", "10.2.0.10", "2001:db8:2::10"),
}
OTHER = {"r1": "r2", "r2": "r1"}
NODES = ["inet", "sw1", "srv", "r1", "r2", "a", "a2", "b"]
SWITCHES = {"inet", "sw1"}
ROUTERS = {"r1", "r2"}


def env_int(name, default):
    v = os.environ.get(name, "")
    try:
        return int(v) if v != "" else default
    except ValueError:
        sys.exit(f"natlab: {name}={v!r} is not an integer")


def truthy(v):
    return v not in (None, "", "0", "false", "False", "no")


REQUIRED = truthy(os.environ.get("CI")) or truthy(os.environ.get("RNDZ_NATLAB_REQUIRED"))
CFG = {
    "clean_repeats": env_int("RNDZ_NATLAB_CLEAN_REPEATS", 5),
    "loss_repeats": env_int("RNDZ_NATLAB_REPEATS", 20),
    "xfail_repeats": env_int("RNDZ_NATLAB_XFAIL_REPEATS", 1),
    "loss": env_int("RNDZ_NATLAB_LOSS", 10),
    "loss_min": env_int("RNDZ_NATLAB_LOSS_MIN", 0),
    # The delay scenario: D ms one way on each router's WAN link (peer RTT 4D, server RTT 2D).
    "delay_ms": env_int("RNDZ_NATLAB_DELAY_MS", 25),
    "delay_repeats": env_int("RNDZ_NATLAB_DELAY_REPEATS", 10),
    "timeout": env_int("RNDZ_NATLAB_TIMEOUT", 20),
    "tcp": truthy(os.environ.get("RNDZ_NATLAB_TCP", "1")),
    # TCP rows: the peers' connections keep TCP's retransmission timeout at most this many ms
    # (--tcp-rto-max; 0: the kernel's default once connected).
    "tcp_rto_max": env_int("RNDZ_NATLAB_TCP_RTO_MAX", 0),
    "keep_logs": truthy(os.environ.get("RNDZ_NATLAB_KEEP_LOGS")),
    "verbose": truthy(os.environ.get("RNDZ_NATLAB_VERBOSE")),
    "only": [s for s in os.environ.get("RNDZ_NATLAB_ONLY", "").split(",") if s],
}


class LabError(Exception):
    pass


class Stopped(Exception):
    pass


def log(msg):
    print(f"natlab: {msg}", flush=True)


def vlog(msg):
    if CFG["verbose"]:
        log(msg)


def sh(argv, check=True, input=None, timeout=30):
    r = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed ({r.returncode}): {r.stderr.strip()}")
    return r


def tail(path, n=4):
    try:
        lines = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(l.strip() for l in lines[-n:])


# ---- the run: every namespace and process it made, and how to remove them --------------------
class Run:
    def __init__(self):
        self.prefix = f"rz{os.getpid()}-"
        self.lock = threading.Lock()
        self.namespaces = []     # in creation order
        self.procs = []          # Popen objects we started
        self.stopping = False
        self.logdir = BUILD / "natlab" / self.prefix.rstrip("-")

    def add_ns(self, name):
        with self.lock:
            if self.stopping:
                raise Stopped()
            self.namespaces.append(name)  # first: an interrupt mid-add still removes it
            sh(["ip", "netns", "add", name])

    def spawn(self, argv, out, err, env=None):
        with self.lock:
            if self.stopping:
                raise Stopped()
            p = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                 env=env, start_new_session=True)
            self.procs.append(p)
            return p

    def stop_procs(self, procs, grace=1.0):
        for p in procs:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        end = time.monotonic() + grace
        for p in procs:
            try:
                p.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        with self.lock:
            self.procs = [p for p in self.procs if p not in procs]

    def delete_ns(self, names):
        for ns in names:
            # Whatever still runs inside (ours: nothing else lives in our namespaces).
            r = sh(["ip", "netns", "pids", ns], check=False)
            for pid in r.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh(["ip", "netns", "del", ns], check=False)
            with self.lock:
                if ns in self.namespaces:
                    self.namespaces.remove(ns)

    def teardown_all(self):
        with self.lock:
            self.stopping = True
            procs = list(self.procs)
        self.stop_procs(procs, grace=0.5)
        self.delete_ns(list(reversed(self.namespaces)))

    def leftovers(self):
        r = sh(["ip", "netns", "list"], check=False)
        return [l.split()[0] for l in r.stdout.splitlines() if l.startswith(self.prefix)]


RUN = None


# ---- one lab: the whole topology, with a NAT type per router and loss on the WAN links -------
class Lab:
    """
    public segment 203.0.113.0/24 + 2001:db8::/64: bridge in switch ns `inet`
        srv  203.0.113.1   2001:db8::1        (rendezvous server, echo probes)
        r1   203.0.113.11  2001:db8::11  wan ─ lan 10.1.0.1  2001:db8:1::1 ─ bridge in ns `sw1`
                                                     ├─ a   10.1.0.10  2001:db8:1::10
                                                     └─ a2  10.1.0.20  2001:db8:1::20
        r2   203.0.113.12  2001:db8::12  wan ─ lan 10.2.0.1  2001:db8:2::1 ─ b 10.2.0.10 2001:db8:2::10
    Routers: IPv4 masquerade on wan (endpoint-independent, or `random` = destination-dependent);
    IPv6 routed, no NAT; both filtered statefully like a home router. Loss: nft numgen in the
    `inet` switch, on the frames to and from r1 and r2 (the WAN links), each direction.
    Delay (no netem in every kernel): r1 and r2 are then not bridge ports; in `inet` a veth pair
    rXd <-> rXb per router, rXb in br0, and delay.py relays frames rX <-> rXd D ms late.
    """

    def __init__(self, tag, nat=("eim", "eim"), loss=0, liberal=(), delay=0, rst=()):
        self.tag = tag
        self.pfx = f"{RUN.prefix}{tag}-"
        self.nat = {"r1": nat[0], "r2": nat[1]}
        self.loss = loss
        self.delay = delay            # ms one way on each router WAN link (0: none)
        self.delay_proc = None        # delay.py relaying the WAN links
        self.delay_counts = None      # its frame counts per direction, once stopped
        self.rtt = {}                 # delay: RTTs measured by ping, ms (see measure_rtt)
        self.liberal = set(liberal)   # routers with nf_conntrack_tcp_be_liberal=1
        self.rst = set(rst)           # routers that answer unsolicited TCP with a RST
        self.procs = []
        self.namespaces = []

    def ns(self, node):
        return self.pfx + node

    def x(self, node, argv, check=True, input=None, timeout=30):
        return sh(["ip", "netns", "exec", self.ns(node)] + argv, check=check, input=input,
                  timeout=timeout)

    def ip(self, node, *args):
        return sh(["ip", "-n", self.ns(node)] + list(args))

    def up(self):
        t0 = time.monotonic()
        for n in NODES:
            RUN.add_ns(self.ns(n))
            self.namespaces.append(self.ns(n))
            # Repeats are independent trials: no host carries TCP metrics from one connection
            # to the next (else one lossy attempt's RTT sets the next one's first RTO to 3x
            # it, toward the same public address: 3.5 s was seen).
            sysctl = ["net/ipv6/conf/all/accept_dad=0", "net/ipv6/conf/default/accept_dad=0",
                      "net/ipv6/conf/all/accept_ra=0", "net/ipv6/conf/default/accept_ra=0",
                      "net/ipv4/tcp_no_metrics_save=1"]
            if n in ROUTERS:
                sysctl += ["net/ipv4/ip_forward=1", "net/ipv6/conf/all/forwarding=1"]
                if n in self.liberal:
                    # Conntrack does not judge TCP windows: out-of-window segments are not
                    # "invalid" (many routers and firewalls run like this).
                    sysctl += ["net/netfilter/nf_conntrack_tcp_be_liberal=1"]
            if n in SWITCHES:
                sysctl += ["net/ipv6/conf/all/disable_ipv6=1",
                           "net/ipv6/conf/default/disable_ipv6=1",
                           "?net/bridge/bridge-nf-call-iptables=0",
                           "?net/bridge/bridge-nf-call-ip6tables=0",
                           "?net/bridge/bridge-nf-call-arptables=0"]
            script = "; ".join(
                f"echo {kv.split('=')[1]} > /proc/sys/{kv.split('=')[0].lstrip('?')}"
                + (" 2>/dev/null || true" if kv.startswith("?") else "")
                for kv in sysctl)
            self.x(n, ["sh", "-ec", script])
            self.ip(n, "link", "set", "dev", "lo", "up")

        def veth(a, an, b, bn):
            sh(["ip", "link", "add", an, "netns", self.ns(a), "type", "veth",
                "peer", "name", bn, "netns", self.ns(b)])

        veth("srv", "eth0", "inet", "srv")
        veth("r1", "wan", "inet", "r1")
        veth("r2", "wan", "inet", "r2")
        veth("r1", "lan", "sw1", "r1")
        veth("a", "eth0", "sw1", "a")
        veth("a2", "eth0", "sw1", "a2")
        veth("b", "eth0", "r2", "lan")
        wan_ports = ["r1", "r2"]
        if self.delay:
            # rX <-> (delay.py) <-> rXd ~ rXb <-> br0: the WAN links hold frames D ms each way.
            wan_ports = []
            for r in sorted(ROUTERS):
                self.ip("inet", "link", "add", f"{r}d", "type", "veth", "peer", "name", f"{r}b")
                for dev in (r, f"{r}d"):
                    self.ip("inet", "link", "set", "dev", dev, "promisc", "on", "up")
                wan_ports.append(f"{r}b")
        for sw, ports in (("inet", ["srv"] + wan_ports), ("sw1", ["r1", "a", "a2"])):
            self.ip(sw, "link", "add", "br0", "type", "bridge", "stp_state", "0",
                    "forward_delay", "0", "mcast_snooping", "0")
            for p in ports:
                self.ip(sw, "link", "set", "dev", p, "master", "br0", "up")
            self.ip(sw, "link", "set", "dev", "br0", "up")

        def addr(node, dev, a4, a6):
            self.ip(node, "addr", "add", a4, "dev", dev)
            self.ip(node, "addr", "add", a6, "dev", dev, "nodad")
            self.ip(node, "link", "set", "dev", dev, "up")

        addr("srv", "eth0", f"{SRV4}/24", f"{SRV6}/64")
        for r in ROUTERS:
            addr(r, "wan", f"{WAN4[r]}/24", f"{WAN6[r]}/64")
            addr(r, "lan", f"{LAN[r][0]}/24", f"{LAN[r][1]}/64")
            o = OTHER[r]
            self.ip(r, "-6", "route", "add", LAN[o][2], "via", WAN6[o])
            self.ip("srv", "-6", "route", "add", LAN[r][2], "via", WAN6[r])
        for h, (r, a4, a6) in HOSTS.items():
            addr(h, "eth0", f"{a4}/24", f"{a6}/64")
            self.ip(h, "route", "add", "default", "via", LAN[r][0])
            self.ip(h, "-6", "route", "add", "default", "via", LAN[r][1])
        for r in ROUTERS:
            self.x(r, ["nft", "-f", "-"], input=self.router_rules(r))
        if self.loss:
            self.x("inet", ["nft", "-f", "-"], input=self.loss_rules())
        if self.delay:
            self.start_delay()
        vlog(f"lab {self.tag}: up in {time.monotonic() - t0:.2f}s "
             f"(r1 {self.nat['r1']}, r2 {self.nat['r2']}, loss {self.loss}%"
             + (f", delay {self.delay} ms each way on both WAN links" if self.delay else "")
             + ")")
        if self.delay:
            self.measure_rtt()

    def start_delay(self):
        pairs = [f"{r}:{r}d" for r in sorted(ROUTERS)]
        p = self.spawn("inet", [sys.executable, str(DELAY), "--ms", str(self.delay)] + pairs,
                       "delay")
        self.delay_proc = p
        if not wait_until(lambda: "ready" in Path(p.natlab_out).read_text(errors="replace"),
                          5, step=0.02, alive=p):
            raise LabError(f"delay.py did not start ({p.poll()}): {tail(p.natlab_err)}")

    def ping(self, node, addr):
        """Median RTT in ms of ICMP echoes from `node` to `addr` (delay.py --ping), or None."""
        p = self.spawn(node, [sys.executable, str(DELAY), "--ping", addr, "--count", "5"],
                       f"ping-{node}-{addr.replace(':', '_')}")
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        self.stop([p])
        try:
            rtts = json.loads(Path(p.natlab_out).read_text().strip().splitlines()[-1])["rtts_ms"]
        except (ValueError, IndexError, KeyError, OSError):
            rtts = []
        return statistics.median(rtts) if rtts else None

    def measure_rtt(self):
        """The delayed lab's RTTs by ping (after a warm-up echo): a and b to the server (one WAN
        link each way: 2D), a to r2's WAN address over IPv6 (both WAN links each way, like a to
        b's public mapping: 4D; r2's firewall answers ICMPv6 on its WAN, not IPv4 echo)."""
        d = self.delay
        probes = {"server": ("a", SRV4, 2 * d), "server_b": ("b", SRV4, 2 * d),
                  "peer": ("a", WAN6["r2"], 4 * d)}
        res = {}

        def one(k, node, addr):
            res[k] = self.ping(node, addr)

        threads = [threading.Thread(target=one, args=(k, v[0], v[1])) for k, v in probes.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        problems = []
        for k, (node, addr, want) in probes.items():
            got = res.get(k)
            if got is None:
                problems.append(f"no echo reply {node} -> {addr}")
            elif not (want * 0.95 <= got <= want * 1.3 + 10):
                problems.append(f"{node} -> {addr}: RTT {got:.1f} ms, expected ~{want} ms")
            self.rtt[k] = got
        vlog(f"lab {self.tag}: ping RTT a <-> srv {res.get('server')} ms (want {2 * d}), "
             f"b <-> srv {res.get('server_b')} ms (want {2 * d}), a <-> r2's WAN "
             f"[{WAN6['r2']}] {res.get('peer')} ms (want {4 * d}: a <-> b's public side)")
        if problems:
            raise LabError("delay wire wrong: " + "; ".join(problems))

    def router_rules(self, r):
        hosts = [h for h, v in HOSTS.items() if v[0] == r]
        o = OTHER[r]
        counters, marks = [], []
        for h in hosts:
            _, a4, a6 = HOSTS[h]
            counters += [f"counter reg_{h}_udp {{}}", f"counter reg_{h}_tcp {{}}",
                         f"counter peer_in_{h} {{}}", f"counter peer6_in_{h} {{}}"]
            for fam, s, d in (("ip", SRV4, a4), ("ip6", SRV6, a6)):
                marks.append(f'iifname "wan" {fam} saddr {s} {fam} daddr {d} udp sport {PORT} '
                             f"counter name reg_{h}_udp")
                marks.append(f'iifname "wan" {fam} saddr {s} {fam} daddr {d} tcp sport {PORT} '
                             f"tcp flags & psh == psh counter name reg_{h}_tcp")
            marks.append(f'iifname "wan" ip saddr {WAN4[o]} ip daddr {a4} counter name peer_in_{h}')
            marks.append(f'iifname "wan" ip6 saddr {LAN[o][2]} ip6 daddr {a6} '
                         f"counter name peer_in_{h}")
            marks.append(f'iifname "wan" ip6 saddr {LAN[o][2]} ip6 daddr {a6} '
                         f"counter name peer6_in_{h}")
        masq = "masquerade random" if self.nat[r] == "random" else "masquerade"
        # A router that refuses unsolicited TCP on its WAN address with a RST, as many do
        # (the IPv4 NAT case: a SYN with no mapping is addressed to the router itself).
        rst_rule = ('iifname "wan" meta l4proto tcp counter name wan_in_rst reject with tcp reset'
                    if r in self.rst else "")
        nl = "\n        "
        return f"""
table inet rz {{
    counter wan_in_drop {{}}
    counter wan_in_rst {{}}
    counter fwd_drop {{}}
    counter fwd_invalid {{}}
    counter in_invalid {{}}
    {nl.join(counters)}
    chain input {{
        type filter hook input priority filter; policy accept;
        ct state invalid tcp flags & (syn | ack) == syn counter comment "invalid syn"
        ct state invalid tcp flags & (syn | ack) == syn | ack counter comment "invalid syn-ack"
        ct state invalid counter name in_invalid drop
        ct state established,related accept
        iifname "wan" meta l4proto ipv6-icmp accept
        {rst_rule}
        iifname "wan" counter name wan_in_drop drop
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        {nl.join(marks)}
        iifname "lan" tcp flags & (syn | ack) == syn counter comment "syn out"
        iifname "lan" tcp flags & (syn | ack) == syn | ack counter comment "syn-ack out"
        iifname "wan" tcp flags & (syn | ack) == syn counter comment "syn in"
        iifname "wan" tcp flags & (syn | ack) == syn | ack counter comment "syn-ack in"
        ct state invalid counter name fwd_invalid drop
        ct state established,related accept
        iifname "lan" oifname "wan" accept
        counter name fwd_drop
    }}
}}
table ip nat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" {masq}
    }}
}}
"""

    def loss_rules(self):
        n = self.loss
        return f"""
table bridge loss {{
    counter frames {{}}
    counter dropped {{}}
    counter r1r2_in {{}}
    counter r1r2_out {{}}
    counter r2r1_in {{}}
    counter r2r1_out {{}}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "r1" oifname "r2" ether type ip counter name r1r2_in
        iifname "r2" oifname "r1" ether type ip counter name r2r1_in
        iifname {{ "r1", "r2" }} ether type ip counter name frames
        oifname {{ "r1", "r2" }} ether type ip counter name frames
        iifname {{ "r1", "r2" }} ether type ip numgen random mod 100 < {n} counter name dropped drop
        oifname {{ "r1", "r2" }} ether type ip numgen random mod 100 < {n} counter name dropped drop
        iifname {{ "r1", "r2" }} ip6 nexthdr {{ udp, tcp }} numgen random mod 100 < {n} counter name dropped drop
        oifname {{ "r1", "r2" }} ip6 nexthdr {{ udp, tcp }} numgen random mod 100 < {n} counter name dropped drop
        iifname "r1" oifname "r2" ether type ip counter name r1r2_out
        iifname "r2" oifname "r1" ether type ip counter name r2r1_out
    }}
}}
"""

    def counter(self, node, name, family="inet", table="rz"):
        r = self.x(node, ["nft", "-j", "list", "counter", family, table, name])
        for item in json.loads(r.stdout)["nftables"]:
            if "counter" in item:
                return item["counter"]["packets"]
        raise LabError(f"counter {name} not found in {node}")

    DROPS = ("fwd_invalid", "in_invalid", "fwd_drop", "wan_in_drop", "wan_in_rst")

    def drop_counters(self):
        """Every drop the routers' firewalls counted: {"r1 fwd_invalid": n, ...}."""
        out = {}
        for r in sorted(ROUTERS):
            res = self.x(r, ["nft", "-j", "list", "counters", "table", "inet", "rz"])
            for item in json.loads(res.stdout)["nftables"]:
                c = item.get("counter")
                if c and c["name"] in self.DROPS:
                    out[f"{r} {c['name']}"] = c["packets"]
        return out

    def wire_counters(self):
        """Frames between r1 and r2 seen by, and let through, the loss rules ({} without)."""
        if not self.loss:
            return {}
        res = self.x("inet", ["nft", "-j", "list", "counters", "table", "bridge", "loss"])
        return {i["counter"]["name"]: i["counter"]["packets"]
                for i in json.loads(res.stdout)["nftables"] if "counter" in i}

    def spawn(self, node, argv, name, env=None):
        out = open(RUN.logdir / f"{self.tag}.{name}.out", "w")
        err = open(RUN.logdir / f"{self.tag}.{name}.err", "w")
        try:
            p = RUN.spawn(["ip", "netns", "exec", self.ns(node)] + argv, out, err, env=env)
        finally:
            out.close()
            err.close()
        p.natlab_out = RUN.logdir / f"{self.tag}.{name}.out"
        p.natlab_err = RUN.logdir / f"{self.tag}.{name}.err"
        self.procs.append(p)
        return p

    def stop(self, procs):
        RUN.stop_procs(procs)
        self.procs = [p for p in self.procs if p not in procs]

    def down(self):
        if self.delay_proc is not None:
            # First, alone: its exit line counts the frames it relayed per direction.
            self.stop([self.delay_proc])
            try:
                err = Path(self.delay_proc.natlab_err).read_text(errors="replace")
            except OSError:
                err = ""
            counts = re.findall(r"^delay: (.* frames.*)$", err, re.M)  # the exit line
            self.delay_counts = counts[-1] if counts else \
                f"no counts ({tail(self.delay_proc.natlab_err)})"
            self.delay_proc = None
        RUN.stop_procs(self.procs)
        self.procs = []
        RUN.delete_ns(list(reversed(self.namespaces)))
        self.namespaces = []

    def listening(self, node, proto, port):
        r = self.x(node, ["ss", "-Hln" + ("u" if proto == "udp" else "t"), f"sport = :{port}"],
                   check=False)
        return r.returncode == 0 and r.stdout.strip() != ""

    # -- the NAT behaviour the lab promises, seen from outside (a tiny STUN on srv) ---------
    def check_mapping(self):
        """Return a list of problems: each router must map as configured."""
        echo = self.spawn("srv", [sys.executable, str(PROBE), "echo", "--duration", "30"]
                          + sum([["--bind", f"{SRV4}:{p}"] for p in ECHO_PORTS], []), "echo")
        problems, seen_all = [], []
        try:
            end = time.monotonic() + 5
            while not all(self.listening("srv", "udp", p) for p in ECHO_PORTS):
                if time.monotonic() > end or echo.poll() is not None:
                    return [f"echo probe did not start: {tail(echo.natlab_err)}"], ""
                time.sleep(0.02)
            for h in ("a", "b"):
                r = HOSTS[h][0]
                lport = 45000 + len(h)
                out = self.x(h, [sys.executable, str(PROBE), "observe", "--bind",
                                 f"0.0.0.0:{lport}", "--timeout", "3"]
                             + sum([["--to", f"{SRV4}:{p}"] for p in ECHO_PORTS], []),
                             timeout=20).stdout
                seen = list(json.loads(out.strip().splitlines()[-1])["seen"].values())
                if None in seen:
                    problems.append(f"{h}: no answer from the echo probe ({seen})")
                    continue
                ports = {s.rsplit(":", 1)[1] for s in seen}
                hosts_ = {s.rsplit(":", 1)[0] for s in seen}
                if hosts_ != {WAN4[r]}:
                    problems.append(f"{h}: mapped to {seen}, expected {WAN4[r]}")
                elif self.nat[r] == "eim" and ports != {str(lport)}:
                    problems.append(f"{h} behind {r}: endpoint-independent NAT gave {seen}, "
                                    f"expected port {lport} for every destination")
                elif self.nat[r] == "random" and len(ports) != len(seen):
                    problems.append(f"{h} behind {r}: `masquerade random` gave one mapping "
                                    f"{seen} for two destinations")
                seen_all.append(f"{r} {self.nat[r]}: {h}:{lport} -> "
                                + ", ".join(s.rsplit(":", 1)[1] for s in seen))
                vlog(f"lab {self.tag}: {h} behind {r} ({self.nat[r]}) seen as {seen}")
        finally:
            self.stop([echo])
        return problems, "; ".join(seen_all) + " (public port per destination)"


# ---- results ---------------------------------------------------------------------------------
class Row:
    def __init__(self, scenario, transport, impl, expect, what):
        self.scenario, self.transport, self.impl, self.expect = scenario, transport, impl, expect
        self.what = what
        self.attempts = []       # (ok, seconds or None, note)
        self.error = None        # the row could not run at all: reason
        self.skipped = None      # reason (development gates only)
        self.notes = []
        self.paths = []          # dual-stack rows: (family, address, how) of each winner
        self.connect_ms = []     # the library's time to connect (ms) of each successful attempt
        self.bar = None          # delay rows: {"delay", "peer", "server", "bar"} in ms

    def add(self, ok, secs, note=""):
        self.attempts.append((ok, secs, note))

    def bar_problem(self):
        """Delay rows: why the median time to connect misses 3 peer RTTs + 1 server RTT."""
        if self.bar is None or not self.ok_count:
            return None
        if len(self.connect_ms) < self.ok_count:
            return (f"{self.ok_count - len(self.connect_ms)} successful attempt(s) printed no "
                    "time to connect (CLI: 'connected in N ms', cpair: 'elapsed_ms=N')")
        med = statistics.median(self.connect_ms)
        if med > self.bar["bar"]:
            return (f"median time to connect {med:.0f} ms is over the bar "
                    f"{self.bar['bar']:.0f} ms (3 peer RTTs + 1 server RTT)")
        return None

    @property
    def ok_count(self):
        return sum(1 for a in self.attempts if a[0])

    def verdict(self):
        if self.skipped:
            return "SKIP"
        if self.error:
            return "FAIL"
        n, k = len(self.attempts), self.ok_count
        if n == 0:
            return "FAIL"
        if self.expect == "pass":
            return "PASS" if k == n and not self.bar_problem() else "FAIL"
        if self.expect == "xfail":
            return "XPASS" if k == n else "XFAIL"
        # "rate": report the success rate; fails only under RNDZ_NATLAB_LOSS_MIN.
        return "RATE" if 100 * k >= CFG["loss_min"] * n else "FAIL"

    def failed(self):
        return self.verdict() == "FAIL"

    def first_failure(self):
        for ok, _, note in self.attempts:
            if not ok:
                return note
        return ""


# ---- the peers: rndz-cli and cpair ------------------------------------------------------------
class Tools:
    def __init__(self):
        self.cli, self.cli_problem = self.find_cli()
        self.cli_origin = self.cli
        if self.cli:
            # Run a private copy: a `swift build` meanwhile cannot replace it mid-run.
            copy = RUN.logdir / "rndz-cli"
            try:
                shutil.copy2(self.cli, copy)
                if subprocess.run([str(copy), "--version"], capture_output=True,
                                  timeout=20).returncode == 0:
                    self.cli = str(copy)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.cpair, self.cpair_problem, self.cpair_tcp = self.build_cpair()

    @staticmethod
    def find_cli():
        env = os.environ.get("RNDZ_CLI")
        if env:
            p = Path(env)
            if p.is_file() and os.access(p, os.X_OK):
                return str(p.resolve()), None
            return None, f"RNDZ_CLI={env} is not an executable file"
        cands = []
        swift = shutil.which("swift")
        if swift:
            try:
                r = subprocess.run([swift, "build", "--show-bin-path"], cwd=ROOT,
                                   capture_output=True, text=True, timeout=20)
                if r.returncode == 0 and r.stdout.strip():
                    cands.append(Path(r.stdout.strip().splitlines()[-1]) / "rndz-cli")
            except (subprocess.TimeoutExpired, OSError):
                pass
        cands += [ROOT / ".build" / "debug" / "rndz-cli", ROOT / ".build" / "release" / "rndz-cli"]
        for c in cands:
            if c.is_file() and os.access(c, os.X_OK):
                return str(c), None
        return None, ("rndz-cli not found (looked at " + ", ".join(str(c) for c in cands)
                      + "): build it with `swift build`, or set RNDZ_CLI")

    @staticmethod
    def build_cpair():
        r = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "all"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            last = (r.stderr or r.stdout).strip().splitlines()[-3:]
            return None, "`make` (build/librndz.so) failed: " + " | ".join(last), False
        lib = BUILD / "librndz.so"
        if not lib.exists():
            return None, f"`make` did not produce {lib}", False
        header = (ROOT / "include" / "rndz.h").read_text()
        tcp = all(f in header for f in ("rndz_tcp_connect", "rndz_tcp_listener_create",
                                        "rndz_tcp_listener_accept"))
        # This run's own copy of the library and of cpair: a `make` running meanwhile (or
        # another run) cannot swap them under us.
        libdir = RUN.logdir / "lib"
        libdir.mkdir(parents=True, exist_ok=True)
        for f in BUILD.glob("librndz.so*"):
            dst = libdir / f.name
            if f.is_symlink():
                dst.symlink_to(os.readlink(f))
            else:
                shutil.copy2(f, dst)
        out = RUN.logdir / "cpair"
        argv = ["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-g",
                "-I", str(ROOT / "include"), str(HERE / "cpair.c"), "-o", str(out),
                "-L", str(libdir), f"-Wl,-rpath,{libdir}", "-lrndz", "-lpthread"]
        tcp_problem = None
        if tcp:
            r = subprocess.run(argv[:1] + ["-DCPAIR_TCP"] + argv[1:], capture_output=True,
                               text=True)
            if r.returncode == 0:
                return str(out), None, True
            tcp_problem = ("the C TCP API is declared in include/rndz.h but cpair does not "
                           "build with it: " + " | ".join(r.stderr.strip().splitlines()[:2]))
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode != 0:
            return None, "cpair.c does not compile against include/rndz.h: " + \
                " | ".join(r.stderr.strip().splitlines()[:3]), False
        return str(out), None, tcp_problem or False

    def problem(self, impl, transport):
        if impl == "cli":
            return self.cli_problem
        if impl == "capi":
            if self.cpair_problem:
                return self.cpair_problem
            if transport == "tcp" and isinstance(self.cpair_tcp, str):
                return self.cpair_tcp
            if transport == "tcp" and not self.cpair_tcp:
                return ("no TCP in the C API: include/rndz.h declares no rndz_tcp_connect / "
                        "rndz_tcp_listener_create / rndz_tcp_listener_accept")
        return None

    # `sc.v1` puts a raw rndz 0.1.5 peer (v1peer.py, the captured bytes) in roles:
    # "listener", "connector", "server" (joined by "+"); `sc.local` is the clients'
    # --local-addr.
    def server_argv(self, impl, listen, sc=None):
        if sc is not None and sc.raw_v1("server"):
            return [sys.executable, str(V1PEER), "udp-server", "--listen", listen]
        if impl == "cli":
            return [self.cli, "server", "--listen-addr", listen]
        return [self.cpair, "server", "--listen", listen]

    def listener_argv(self, impl, transport, pid, server, sc=None):
        if sc is not None and sc.raw_v1("listener"):
            return [sys.executable, str(V1PEER), f"{transport}-listen", "--id", pid,
                    "--server", server]
        local = ["--local-addr", sc.local] if sc is not None and sc.local else []
        if impl == "cli":
            return [self.cli, "client", "--id", pid, "--server-addr", server] + local + \
                tcp_flags(transport)
        return [self.cpair, "listen", "--id", pid, "--server", server] + tcp_flags(transport)

    def connector_argv(self, impl, transport, cid, server, target, sc=None):
        if sc is not None and sc.raw_v1("connector"):
            return [sys.executable, str(V1PEER), f"{transport}-connect", "--id", cid,
                    "--server", server, "--target", target, "--timeout", str(CFG["timeout"])]
        local = ["--local-addr", sc.local] if sc is not None and sc.local else []
        if impl == "cli":
            # The same deadline as cpair's: the attempt's (connect, then reply).
            return [self.cli, "client", "--id", cid, "--server-addr", server,
                    "--remote-peer", target, "--timeout", str(CFG["timeout"] * 1000)] + \
                local + tcp_flags(transport)
        return [self.cpair, "connect", "--id", cid, "--server", server, "--target", target,
                "--timeout", str(CFG["timeout"] * 1000)] + tcp_flags(transport)


def tcp_flags(transport):
    if transport != "tcp":
        return []
    return ["--tcp"] + (["--tcp-rto-max", str(CFG["tcp_rto_max"])] if CFG["tcp_rto_max"] else [])


TOOLS = None


def child_env():
    env = dict(os.environ)
    env.setdefault("RNDZ_LOG", "debug")
    return env


# ---- scenarios -------------------------------------------------------------------------------
class Scenario:
    def __init__(self, name, what, kind, nat=("eim", "eim"), loss=0, family=4, listen=None,
                 server_host="srv", listener="b", connector="a", transports=("udp", "tcp"),
                 impls=("cli", "capi"), expect="pass", repeats="clean", concurrent=False,
                 v1=None, local=None, record_path=False, expects=None, liberal=(), delay=0,
                 rst=()):
        self.__dict__.update(locals())
        del self.__dict__["self"]
        self.rows = []
        if kind == "filter":
            self.rows = [Row(name, t, "raw", "pass", what) for t in ("udp", "tcp")]
        else:
            for t in transports:
                for i in impls:
                    self.rows.append(Row(name, t, i, (expects or {}).get(t, expect), what))

    def raw_v1(self, role):
        """Is `role` ("listener", "connector", "server") played by the raw v1 peer?"""
        return role in (self.v1 or "").split("+")

    def n_repeats(self, row=None):
        if row is not None and row.expect == "xfail":
            return CFG["xfail_repeats"]
        return CFG[{"clean": "clean_repeats", "loss": "loss_repeats",
                    "xfail": "xfail_repeats", "delay": "delay_repeats"}[self.repeats]]


def scenarios():
    L = CFG["loss"]
    D = CFG["delay_ms"]
    return [
        Scenario("filter", "no rndz: one-sided packets are dropped (v4 NAT, v6 firewall); "
                 "a hand-made two-sided punch passes (UDP; TCP simultaneous open)", "filter"),
        Scenario("eim-v4", "a<->b through two endpoint-independent NATs", "pair"),
        Scenario("eim-v4-dual", "same, server on [::] (dual-stack, IPv4 clients)", "pair",
                 listen=f"[::]:{PORT}", impls=("cli",)),
        Scenario("v6", "a<->b over IPv6 through two stateful firewalls", "pair", family=6),
        Scenario(f"loss{L}", f"{L}% loss each way on both WAN links, EIM NATs", "pair",
                 loss=L, expect="rate", repeats="loss"),
        Scenario(f"loss{2 * L}", f"{2 * L}% loss each way on both WAN links, EIM NATs", "pair",
                 loss=2 * L, expect="rate", repeats="loss"),
        Scenario("delay", f"{D} ms one way on both WAN links (peer RTT {4 * D} ms, server RTT "
                 f"{2 * D} ms), EIM NATs: median library time to connect <= 3 peer RTTs + 1 "
                 "server RTT", "pair", delay=D, repeats="delay"),
        # With the lab's sub-millisecond RTT no timing can make two SYNs cross in flight (the
        # processes' jitter is longer than the path), so this row runs on the delayed links.
        Scenario("rst", f"both routers answer unsolicited TCP with a RST, {D} ms one way on "
                 "both WAN links: the listener's first SYN is refused; its coordinated SYN, "
                 "half the relayed round trip later, crosses the connector's", "pair",
                 transports=("tcp",), rst=("r1", "r2"), delay=D, repeats="delay"),
        Scenario("dd-a", "destination-dependent NAT on a's side (connector)", "pair",
                 nat=("random", "eim"), impls=("cli",), expect="xfail", repeats="xfail",
                 concurrent=True),
        Scenario("dd-b", "destination-dependent NAT on b's side (listener)", "pair",
                 nat=("eim", "random"), impls=("cli",), expect="xfail", repeats="xfail",
                 concurrent=True),
        Scenario("dd-both", "destination-dependent NAT on both sides", "pair",
                 nat=("random", "random"), impls=("cli",), expect="xfail", repeats="xfail",
                 concurrent=True),
        Scenario("same-nat", "a<->a2 behind the same NAT: no hairpinning on Linux, the LAN "
                 "candidates connect them", "pair", listener="a2"),
        Scenario("v1-listener", "a raw v1 listener in b (the captured bytes) and our connector "
                 "in a, our server: falls back to v1 (TCP: rndz 0.1.5's listener design fails "
                 "behind a router that drops conntrack-invalid packets, whoever connects)",
                 "pair", impls=("cli",), v1="listener", expects={"tcp": "xfail"}),
        Scenario("v1-listener-lib", "the v1 TCP listener again, b's router not judging TCP "
                 "windows (nf_conntrack_tcp_be_liberal=1)", "pair", impls=("cli",),
                 v1="listener", transports=("tcp",), liberal=("r2",)),
        Scenario("v1-connector", "our listener in b and a raw v1 connector in a, our server: "
                 "falls back to v1", "pair", impls=("cli",), v1="connector"),
        Scenario("v1-server", "our listener and connector through a raw v1 UDP server: "
                 "falls back to v1", "pair", impls=("cli",), v1="server",
                 transports=("udp",)),
        Scenario("dual-stack", "server over IPv4 only, clients on [::]:0 also advertise IPv6 "
                 "candidates: which family wins", "pair", impls=("cli",), local="[::]:0",
                 record_path=True),
    ]


def probe_json(p, what):
    try:
        return json.loads(Path(p.natlab_out).read_text().strip().splitlines()[-1])
    except (ValueError, IndexError, OSError):
        raise LabError(f"{what}: probe output unreadable: {tail(p.natlab_err)}")


def run_filter(sc):
    """Without rndz: plain sockets show the lab filters one-sided traffic (the packet is
    dropped at b's router) and lets two-sided traffic through (a hand-made punch), for UDP
    and TCP (simultaneous open), IPv4 through NAT and IPv6 through the stateful firewall."""
    rows = {r.transport: r for r in sc.rows}
    lab = Lab(sc.name)
    try:
        lab.up()
        problems, seen = lab.check_mapping()
        rows["udp"].notes.append("lab mapping: " + seen)
        if problems:
            for r in sc.rows:
                r.error = "lab NAT behaviour wrong: " + "; ".join(problems)
            return
        port = 40000

        def addrs(fam, pa, pb):
            if fam == 4:
                return (f"0.0.0.0:{pa}", f"0.0.0.0:{pb}", f"{WAN4['r2']}:{pb}",
                        f"{WAN4['r1']}:{pa}", "b's public mapping")
            return (f"[::]:{pa}", f"[::]:{pb}", f"[{HOSTS['b'][2]}]:{pb}",
                    f"[{HOSTS['a'][2]}]:{pa}", "b's address")

        def drops():
            return lab.counter("r2", "wan_in_drop") + lab.counter("r2", "fwd_drop")

        for proto in ("udp", "tcp"):
            row = rows[proto]
            for fam in (4, 6):
                for both in (False, True):
                    port += 2
                    a_bind, b_bind, a_to, b_to, target = addrs(fam, port, port + 1)
                    what = (f"v{fam} {proto.upper()} " +
                            ("both sides at once" + (" (simultaneous open)" if proto == "tcp"
                                                     else "") if both
                             else f"one-sided a -> {target}"))
                    d0 = drops()
                    tag = f"{proto}{fam}{'both' if both else 'one'}"
                    if proto == "udp":
                        bp = lab.spawn("b", [sys.executable, str(PROBE), "udp", "--bind", b_bind,
                                             "--duration", "1.0", "--tag", "b"]
                                       + (["--to", b_to] if both else []), f"{tag}.b")
                        time.sleep(0.2 if both else 0.1)
                        ap = lab.spawn("a", [sys.executable, str(PROBE), "udp", "--bind", a_bind,
                                             "--to", a_to, "--duration", "0.8", "--tag", "a"],
                                       f"{tag}.a")
                    else:
                        bp = lab.spawn("b", [sys.executable, str(PROBE), "tcp", "--bind", b_bind,
                                             "--duration", "3" if both else "2", "--tag", "b"]
                                       + (["--to", b_to] if both else ["--listen"]), f"{tag}.b")
                        time.sleep(0.2)
                        ap = lab.spawn("a", [sys.executable, str(PROBE), "tcp", "--bind", a_bind,
                                             "--to", a_to, "--duration", "2.5" if both else "1.5",
                                             "--tag", "a"], f"{tag}.a")
                    ap.wait(timeout=15)
                    bp.wait(timeout=15)
                    ra, rb = probe_json(ap, what), probe_json(bp, what)
                    dropped = drops() - d0
                    if proto == "udp":
                        got_b = [m for m, _ in rb["received"] if m.startswith("probe a")]
                        got_a = [m for m, _ in ra["received"] if m.startswith("probe b")]
                        if not both:
                            ok = ra["sent"] > 0 and not got_b and dropped > 0
                            note = (f"{what}: sent {ra['sent']}, b received {len(got_b)}, "
                                    f"b's router dropped {dropped}")
                        else:
                            ok = bool(got_a) and bool(got_b)
                            note = (f"{what}: a got {len(got_a)}/{rb['sent']}, "
                                    f"b got {len(got_b)}/{ra['sent']}")
                    else:
                        if not both:
                            ok = not ra["connected"] and not rb["connected"] and dropped > 0
                            note = (f"{what}: a connected: {ra['connected']} "
                                    f"({ra['error']}), b accepted: {rb['connected']}, "
                                    f"b's router dropped {dropped}")
                        else:
                            ok = (ra["received"] == "probe b" and rb["received"] == "probe a")
                            note = (f"{what}: a <- {ra['received']!r} "
                                    f"({ra['error'] or 'ok'}), b <- {rb['received']!r} "
                                    f"({rb['error'] or 'ok'})")
                    row.add(ok, None, note)
                    row.notes.append(("ok   " if ok else "FAIL ") + note)
    finally:
        lab.down()


def wait_until(pred, timeout, step=0.03, alive=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        if alive is not None and alive.poll() is not None:
            return False
        time.sleep(step)
    return pred()


def run_pair(sc):
    """Each row on its own server (rndz-cli rows: `rndz-cli server`; C API rows: `cpair
    server`, i.e. rndz_server from librndz.so), listener and connectors; one lab per
    scenario."""
    lab = Lab(sc.name, nat=sc.nat, loss=sc.loss, liberal=sc.liberal, delay=sc.delay, rst=sc.rst)
    runnable = []
    for row in sc.rows:
        if row.transport == "tcp" and not CFG["tcp"]:
            row.skipped = "TCP rows off (RNDZ_NATLAB_TCP=0)"
        elif TOOLS.problem(row.impl, row.transport):
            row.error = TOOLS.problem(row.impl, row.transport)
        else:
            runnable.append(row)
    if runnable and sc.v1:
        # The raw v1 peer must speak exactly the captured bytes: check it against every vector.
        r = sh([sys.executable, str(V1PEER), "selftest"], check=False)
        if r.returncode != 0:
            for row in runnable:
                row.error = "v1peer.py does not match the captured v1 vectors: " + \
                    " | ".join((r.stdout + r.stderr).strip().splitlines()[-3:])
            return
    if not runnable:
        return
    try:
        lab.up()
        problems, seen = lab.check_mapping()
        if "random" in sc.nat:
            runnable[0].notes.append("lab mapping: " + seen)
        if problems:
            for row in runnable:
                row.error = "lab NAT behaviour wrong: " + "; ".join(problems)
            return
        if lab.delay:
            # The bar: 3 round trips between the peers plus one to the server, as measured.
            peer, server = lab.rtt["peer"], lab.rtt["server"]
            for row in runnable:
                row.bar = {"delay": lab.delay, "peer": peer, "server": server,
                           "server_b": lab.rtt.get("server_b"), "bar": 3 * peer + server}
        srv_addr = f"[{SRV6}]:{PORT}" if sc.family == 6 else f"{SRV4}:{PORT}"
        listen = sc.listen or srv_addr
        for row in runnable:
            server = lab.spawn("srv", TOOLS.server_argv(row.impl, listen, sc),
                               f"{row.transport}-{row.impl}.server", env=child_env())
            who = ("v1peer.py udp-server (raw v1)" if sc.raw_v1("server") else
                   "rndz-cli server" if row.impl == "cli" else "cpair server (rndz_server)")
            # Both transports are served from one start: once UDP is up, TCP gets 1.5 s more.
            ok = wait_until(lambda: lab.listening("srv", "udp", PORT), 5, alive=server)
            if ok and row.transport == "tcp":
                ok = wait_until(lambda: lab.listening("srv", "tcp", PORT), 1.5, alive=server)
            if server.poll() is not None:
                row.error = f"{who} --listen-addr {listen} exited ({server.returncode}): " \
                    f"{tail(server.natlab_err)}"
            elif not ok:
                row.error = (f"{who} --listen-addr {listen} does not listen on "
                             f"{row.transport.upper()} :{PORT} (ss shows no such socket)")
            else:
                run_row(sc, lab, row, srv_addr)
                if server.poll() is not None:
                    row.notes.append(f"{who} died during the row ({server.returncode}): "
                                     f"{tail(server.natlab_err, 2)}")
            lab.stop([server])
    finally:
        lab.down()
        if lab.delay_counts:
            runnable[0].notes.append(f"delay wire (whole scenario): {lab.delay_counts}")


def start_listener(sc, lab, row, srv_addr, pid, gen):
    host_router = HOSTS[sc.listener][0]
    cname = f"reg_{sc.listener}_{row.transport}"
    before = lab.counter(host_router, cname)
    p = lab.spawn(sc.listener, TOOLS.listener_argv(row.impl, row.transport, pid, srv_addr, sc),
                  f"{row.transport}-{row.impl}.listener{gen}", env=child_env())
    # Registered = the router forwarded an answer from the server to the listener (a Pong).
    limit = 25 if sc.loss else 10
    ok = wait_until(lambda: lab.counter(host_router, cname) > before, limit, step=0.05, alive=p)
    if not ok:
        if p.poll() is not None:
            return p, (f"listener exited ({p.returncode}) before registering: "
                       f"{tail(p.natlab_err)}")
        return p, f"listener not registered after {limit}s (no answer from the server reached it)"
    return p, None


def run_row(sc, lab, row, srv_addr):
    n = sc.n_repeats(row)
    pid = f"{sc.listener}-{row.transport}-{row.impl}"
    t_row = time.monotonic()
    gen = 0
    lp, problem = start_listener(sc, lab, row, srv_addr, pid, gen)
    if problem:
        row.error = problem
        lab.stop([lp])
        return
    lrouter = HOSTS[sc.listener][0]
    peer_counter = f"peer_in_{sc.listener}"
    if sc.record_path:  # IPv6 packets each router forwarded from the other side
        v6_0 = {h: lab.counter(HOSTS[h][0], f"peer6_in_{h}")
                for h in (sc.listener, sc.connector)}
    if sc.loss:
        loss0 = (lab.counter("inet", "dropped", "bridge", "loss"),
                 lab.counter("inet", "frames", "bridge", "loss"))
    for i in range(n):
        if lp.poll() is not None:
            row.notes.append(f"listener exited ({lp.returncode}) before attempt {i + 1}: "
                             f"{tail(lp.natlab_err, 2)}; restarted")
            gen += 1
            lp, problem = start_listener(sc, lab, row, srv_addr, pid, gen)
            if problem:
                row.add(False, None, f"restarted {problem}")
                break
        cid = f"{sc.connector}-try{i + 1}-{row.transport}-{row.impl}"  # never a listener's id (a2-...)
        peer0 = lab.counter(lrouter, peer_counter)
        drops0 = lab.drop_counters()
        wire0 = lab.wire_counters()
        name = f"{row.transport}-{row.impl}.connect{i + 1}"
        t0 = time.monotonic()
        cp = lab.spawn(sc.connector, TOOLS.connector_argv(row.impl, row.transport, cid,
                                                          srv_addr, pid, sc),
                       name, env=child_env())
        rc = None
        try:
            # An attempt still running after 2.5 s is probably failing: snapshot both ends'
            # TCP/UDP sockets (queues, states) for the logs.
            rc = cp.wait(timeout=min(2.5, CFG["timeout"]))
        except subprocess.TimeoutExpired:
            with open(RUN.logdir / f"{lab.tag}.{name}.ss", "w") as f:
                for h in (sc.listener, sc.connector):
                    res = lab.x(h, ["ss", "-tuanpoi"], check=False)
                    f.write(f"== {h} at 2.5s\n{res.stdout}")
            try:
                rc = cp.wait(timeout=max(0.0, CFG["timeout"] - (time.monotonic() - t0)))
            except subprocess.TimeoutExpired:
                rc = None
        secs = time.monotonic() - t0
        if rc is None:
            lab.stop([cp])
        out = Path(cp.natlab_out).read_text(errors="replace")
        drops = lab.drop_counters()
        invalid = "".join(f"; {k} +{drops[k] - drops0[k]}" for k in drops
                          if drops[k] != drops0[k])
        if invalid:
            invalid = "; router drops meanwhile" + invalid[1:]
        wire = lab.wire_counters()
        if wire:
            d = {k: wire[k] - wire0[k] for k in wire}
            invalid += (f"; a's router -> b's router: {d['r1r2_out']} of {d['r1r2_in']} IPv4 "
                        f"frames passed the loss, back: {d['r2r1_out']} of {d['r2r1_in']}")

        # The connect itself (the library returned a path: the connectors print it before
        # they say hello), apart from the hello/reply exchange that follows.
        if re.search(r"^path(:| to )", out, re.M):
            row.connected = getattr(row, "connected", 0) + 1

        def failed(note):
            row.add(False, None, f"attempt {i + 1}: {note}{invalid}")
            # Evidence: both routers' conntrack tables right after the failure.
            with open(RUN.logdir / f"{lab.tag}.{name}.conntrack", "w") as f:
                for r in sorted(ROUTERS):
                    res = lab.x(r, ["cat", "/proc/net/nf_conntrack"], check=False)
                    f.write(f"== {r} conntrack\n{res.stdout}")
                    res = lab.x(r, ["nft", "list", "ruleset"], check=False)
                    f.write(f"== {r} ruleset (counters since the lab started)\n{res.stdout}")

        if rc is None:
            failed(f"no result after {CFG['timeout']}s (killed); "
                   f"stderr: {tail(cp.natlab_err, 2)}")
        elif rc != 0:
            failed(f"exit {rc} after {secs:.2f}s; stderr: {tail(cp.natlab_err, 2)}")
        elif "hello" not in out:
            why = ""
            if cid in out or pid in out:
                why = (" -- the printed reply holds rndz ids: a protocol message (the "
                       "listener's punch) reached the application as the reply")
            failed(f"exit 0 but no 'hello' reply on stdout (stdout: {out.strip()[:120]!r}; "
                   f"stderr: {tail(cp.natlab_err, 2)}){why}")
        else:
            direct = lab.counter(lrouter, peer_counter) - peer0
            if sc.listener == "b" and direct == 0:
                failed(f"reply printed but {lrouter} forwarded no packet from the peer: not a "
                       "punched path")
            else:
                row.add(True, secs)
                ms = connect_ms(out)
                if ms is not None:
                    row.connect_ms.append(ms)
            m = re.search(r"^stray: (\d+)", out, re.M)
            if m:
                row.stray = getattr(row, "stray", 0) + int(m.group(1))
            if sc.record_path and row.attempts[-1][0]:
                record_path(row, out, Path(cp.natlab_err).read_text(errors="replace"), pid)
        vlog(f"{sc.name} {row.transport} {row.impl} #{i + 1}: "
             f"{'ok' if row.attempts[-1][0] else row.attempts[-1][2]} ({secs:.2f}s)"
             + (f", library time to connect {connect_ms(out)} ms"
                if row.bar is not None and row.attempts[-1][0] else ""))
    lab.stop([lp])
    if sc.record_path:
        summarize_paths(row)
        v6 = {h: lab.counter(HOSTS[h][0], f"peer6_in_{h}") - v6_0[h] for h in v6_0}
        row.notes.append("IPv6 packets forwarded from the other side during the row: "
                         + ", ".join(f"to {h} {v6[h]}" for h in v6))
    if sc.loss and TOOLS:
        try:
            row.loss_seen = (lab.counter("inet", "dropped", "bridge", "loss") - loss0[0],
                             lab.counter("inet", "frames", "bridge", "loss") - loss0[1])
        except LabError:
            pass
    row.elapsed = time.monotonic() - t_row


def connect_ms(out):
    """The library's time to connect, from the connector's stdout: rndz-cli prints "path to
    ID: ADDR (...), rtt N ms, connected in N ms", cpair "path: ADDR rtt_ms=N elapsed_ms=N ..."."""
    m = re.search(r"connected in (\d+) ms", out) or re.search(r"^path: .*\belapsed_ms=(\d+)",
                                                             out, re.M)
    return int(m.group(1)) if m else None


def record_path(row, out, err, pid):
    """Which of the listener's addresses won: the CLI connector prints "path to ID: ADDR
    (...)" for UDP; for TCP the library logs "tcp connect: ID is at ADDR" (RNDZ_LOG=debug)."""
    m = re.search(rf"^path to {re.escape(pid)}: (\S+) \(([^,)]*)", out, re.M)
    if m:
        addr, via = m.group(1), m.group(2)
    else:
        m = re.search(rf"tcp connect: {re.escape(pid)} is at (\S+?)(,| \(|$)", err, re.M)
        if not m:
            row.paths.append(("?", "?", "no path line on stdout nor tcp connect line in the log"))
            return
        addr = m.group(1)
        via = "an address it advertised" if m.group(2) == "," else "the address the server saw"
    host = addr.rsplit(":", 1)[0].strip("[]")
    fam = "IPv4" if ":" not in host or host.lower().startswith("::ffff:") else "IPv6"
    row.paths.append((fam, addr, via))


def summarize_paths(row):
    if not row.paths:
        return
    fams = {}
    for fam, addr, via in row.paths:
        fams.setdefault(fam, []).append(f"{addr} ({via})")
    row.notes.append("winner: " + "; ".join(
        f"{fam} {len(v)}/{len(row.paths)}, e.g. {v[0]}" for fam, v in sorted(fams.items())))


def run_scenario(sc):
    t0 = time.monotonic()
    try:
        if sc.kind == "filter":
            run_filter(sc)
        else:
            run_pair(sc)
    except Stopped:
        raise
    except Exception as e:  # a broken lab fails the scenario, not the run's cleanup
        if RUN.stopping:
            raise Stopped()
        for row in sc.rows:
            if not row.attempts and not row.skipped:
                row.error = row.error or f"lab error: {e}"
            elif not row.skipped:
                row.notes.append(f"lab error: {e}")
    sc.elapsed = time.monotonic() - t0
    vlog(f"scenario {sc.name}: {sc.elapsed:.1f}s")


# ---- output ----------------------------------------------------------------------------------
def fmt_ms(secs):
    return "-" if secs is None else f"{secs * 1000:.0f}ms"


def print_matrix(scs, wall):
    rows = [r for sc in scs for r in sc.rows]
    print()
    print(f"NAT LAB MATRIX  (run {RUN.prefix}; repeats: clean {CFG['clean_repeats']}, loss "
          f"{CFG['loss_repeats']} at {CFG['loss']}%, expected-fail {CFG['xfail_repeats']}; "
          f"attempt timeout {CFG['timeout']}s; {wall:.0f}s)")
    hdr = ("scenario", "transport", "impl", "expect", "verdict", "ok/n", "rate",
           "median", "max")
    table = []
    for r in rows:
        times = [s for ok, s, _ in r.attempts if ok and s is not None]
        n = len(r.attempts)
        table.append((r.scenario, r.transport, r.impl, r.expect, r.verdict(),
                      f"{r.ok_count}/{n}" if n else "-",
                      f"{100 * r.ok_count // n}%" if n else "-",
                      fmt_ms(statistics.median(times)) if times else "-",
                      fmt_ms(max(times)) if times else "-"))
    w = [max(len(str(x[i])) for x in table + [hdr]) for i in range(len(hdr))]
    line = "  ".join(f"{{:<{x}}}" for x in w)
    print(line.format(*hdr))
    print(line.format(*["-" * x for x in w]))
    for t in table:
        print(line.format(*t))
    print()
    print("times: wall time of the connecting process (start to exit, reply received); "
          "ok/n over the repeats")
    for sc in scs:
        el = getattr(sc, "elapsed", None)
        print(f"  {sc.name:<12} {sc.what}" + (f" [{el:.0f}s]" if el is not None else ""))
    print()
    for r in rows:
        v = r.verdict()
        label = f"{r.scenario} {r.transport} {r.impl}"
        n, k = len(r.attempts), r.ok_count
        if r.skipped:
            print(f"{v:<5} {label}: {r.skipped}")
        elif r.error:
            print(f"{v:<5} {label}: {r.error}")
        elif k < n and r.impl != "raw":
            fails = [a[2] for a in r.attempts if not a[0]]
            print(f"{v:<5} {label}: {k}/{n} ok; first failure: {fails[0]}")
        elif r.bar_problem():
            print(f"{v:<5} {label}: {k}/{n} ok; {r.bar_problem()}")
        else:
            print(f"{v:<5} {label}: {k}/{n} ok")
        if r.bar is not None and not r.error and not r.skipped:
            b, c = r.bar, r.connect_ms
            print("      time to connect (the library's, printed by the connector): "
                  + (f"median {statistics.median(c):.0f} ms, max {max(c)} ms over {len(c)}"
                     if c else "none printed"))
            print(f"      RTT by ping: a <-> b's side {b['peer']:.1f} ms (a -> r2's WAN, IPv6), "
                  f"a <-> srv {b['server']:.1f} ms"
                  + (f", b <-> srv {b['server_b']:.1f} ms" if b.get("server_b") else "")
                  + f" ({b['delay']} ms one way on each WAN link: nominal {4 * b['delay']} "
                  f"and {2 * b['delay']} ms)")
            print(f"      bar: 3 x {b['peer']:.1f} + {b['server']:.1f} = {b['bar']:.0f} ms "
                  "(3 round trips between the peers plus one to the server): "
                  + ("FAIL" if r.bar_problem() else "PASS")
                  + (f" (median {statistics.median(c):.0f} ms)" if c else ""))
        if v == "XFAIL" and k:
            print(f"      note: passed {k} of {n}: partly working now")
        for note in r.notes:
            print(f"      {note}")
        if getattr(r, "stray", 0):
            print(f"      note: the application read {r.stray} datagram(s) on the connected "
                  "socket that were not the peer's echo (rndz protocol packets, e.g. the "
                  "listener's Rsync punch)")
        if r.transport == "tcp" and hasattr(r, "connected") and r.connected != r.ok_count:
            print(f"      connects (the library returned the connection): "
                  f"{r.connected}/{len(r.attempts)}; the rest of the failures "
                  "came after it, in the hello/reply exchange (TCP's own retransmissions)")
        if getattr(r, "loss_seen", None):
            d, f = r.loss_seen
            print(f"      loss applied: {d} of {f} IPv4 WAN-link crossings dropped "
                  f"({100 * d / max(f, 1):.1f}%)")
        if v == "XPASS":
            print()
            print("!" * 78)
            print(f"!!! XPASS: {label} NOW PASSES ({r.ok_count}/{len(r.attempts)}): it was "
                  "expected to fail.")
            print("!!! Make it an expected pass in Tests/natlab/natlab.py (scenarios()).")
            print("!" * 78)
            print()


def write_json(path, scs):
    out = []
    for sc in scs:
        for r in sc.rows:
            times = [t for ok, t, _ in r.attempts if ok and t is not None]
            out.append({
                "scenario": r.scenario, "transport": r.transport, "impl": r.impl,
                "expect": r.expect, "verdict": r.verdict(), "ok": r.ok_count,
                "attempts": len(r.attempts),
                "median_ms": round(statistics.median(times) * 1000, 1) if times else None,
                "error": r.error, "skipped": r.skipped,
                "connect_ms": r.connect_ms, "bar": r.bar,
                "failures": [n for ok, _, n in r.attempts if not ok], "notes": r.notes})
    path.write_text(json.dumps({"run": RUN.prefix, "config": CFG, "rows": out}, indent=1))


# ---- entry -----------------------------------------------------------------------------------
def cannot_run(reason):
    if REQUIRED:
        print(f"NAT LAB FAILED: cannot run: {reason} (CI / RNDZ_NATLAB_REQUIRED set, so "
              "not running the lab is a failure)", flush=True)
        sys.exit(1)
    bar = "*" * 78
    print(f"{bar}\n*** NAT LAB SKIPPED: {reason}\n*** (run as root with network namespaces "
          f"and nftables; set CI=1 or RNDZ_NATLAB_REQUIRED=1 to make this fatal)\n{bar}",
          flush=True)
    sys.exit(0)


def preflight():
    if os.geteuid() != 0:
        cannot_run("not root (network namespaces and nftables need root)")
    for tool in ("ip", "nft", "ss"):
        if not shutil.which(tool):
            pkg = {"ip": "iproute2", "nft": "nftables", "ss": "iproute2"}[tool]
            cannot_run(f"`{tool}` not found (Debian package {pkg})")
    probe = f"{RUN.prefix}probe"
    r = sh(["ip", "netns", "add", probe], check=False)
    if r.returncode != 0:
        cannot_run(f"no network namespace support: `ip netns add` said: {r.stderr.strip()}")
    try:
        r = sh(["ip", "netns", "exec", probe, "nft", "-f", "-"], check=False,
               input="table ip t {\n chain c {\n type nat hook postrouting priority srcnat;\n"
                     " masquerade random\n }\n}\n"
                     "table bridge l {\n chain f {\n type filter hook forward priority filter;\n"
                     " numgen random mod 100 < 10 drop\n }\n}\n")
        if r.returncode != 0:
            cannot_run(f"nftables NAT/numgen not usable in a namespace: {r.stderr.strip()}")
        r = sh(["ip", "link", "add", "v0", "netns", probe, "type", "veth", "peer", "name",
                "v1", "netns", probe], check=False)
        if r.returncode != 0:
            cannot_run(f"veth pairs not available: {r.stderr.strip()}")
    finally:
        sh(["ip", "netns", "del", probe], check=False)


def run_alive(pid):
    """Is `pid` a live natlab run (not gone, not a zombie, not a reused pid)?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and b"natlab" in cmd


def cleanup_stale():
    """Remove namespaces left by runs killed with SIGKILL (their pid is gone)."""
    r = sh(["ip", "netns", "list"], check=False)
    for l in r.stdout.splitlines():
        name = l.split()[0] if l.split() else ""
        m = re.match(r"^rz(\d+)-", name)
        if m and not run_alive(int(m.group(1))):
            pids = sh(["ip", "netns", "pids", name], check=False).stdout.split()
            for p in pids:
                try:
                    os.kill(int(p), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh(["ip", "netns", "del", name], check=False)
            print(f"removed stale namespace {name}")


def main(argv):
    global RUN, TOOLS
    if "-h" in argv or "--help" in argv:
        print((HERE / "README.md").read_text() if (HERE / "README.md").exists() else __doc__)
        return 0
    RUN = Run()
    if "--cleanup-stale" in argv:
        if os.geteuid() != 0:
            cannot_run("not root")
        cleanup_stale()
        return 0
    if "--list" in argv:
        for sc in scenarios():
            print(f"{sc.name:<12} {sc.what}")
        return 0
    for a in argv:
        if a.startswith("--only="):
            CFG["only"] = [s for s in a.split("=", 1)[1].split(",") if s]
        elif a.startswith("--repeats="):
            CFG["loss_repeats"] = int(a.split("=", 1)[1])
        elif a in ("-v", "--verbose"):
            CFG["verbose"] = True
        else:
            print(f"natlab: unknown argument {a!r} (see --help)", file=sys.stderr)
            return 2

    def on_signal(sig, frame):
        raise KeyboardInterrupt(f"signal {sig}")

    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python then
    # leaves it ignored.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    preflight()
    before = set(sh(["ip", "netns", "list"]).stdout.split("\n"))
    scs = scenarios()
    if CFG["only"]:
        # scenario[/transport[/impl]], e.g. loss10/tcp/cli
        sel = [tuple(o.split("/")) for o in CFG["only"]]
        unknown = {o[0] for o in sel} - {s.name for s in scs}
        if unknown:
            print(f"natlab: unknown scenario(s) {sorted(unknown)}; --list shows them",
                  file=sys.stderr)
            return 2

        def wanted(r):
            return any(o[0] == r.scenario and (len(o) < 2 or o[1] == r.transport)
                       and (len(o) < 3 or o[2] == r.impl) for o in sel)

        for sc in scs:
            sc.rows = [r for r in sc.rows if wanted(r)]
        scs = [s for s in scs if s.rows]
    RUN.logdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    interrupted = False
    try:
        TOOLS = Tools()
        log(f"run {RUN.prefix}: rndz-cli: "
            + (f"{TOOLS.cli_origin}" if TOOLS.cli else "MISSING: " + TOOLS.cli_problem))
        log(f"run {RUN.prefix}: cpair (C API): "
            + (f"{TOOLS.cpair} (TCP: {'yes' if TOOLS.cpair_tcp is True else 'no'})" if TOOLS.cpair
               else "MISSING: " + TOOLS.cpair_problem))
        if not CFG["tcp"]:
            log("TCP rows are OFF (RNDZ_NATLAB_TCP=0): development only")
        seq = [s for s in scs if not s.concurrent]
        par = [s for s in scs if s.concurrent]
        for sc in seq:
            log(f"scenario {sc.name}: {sc.what}")
            run_scenario(sc)
        if par:
            log("scenarios " + ", ".join(s.name for s in par) + " (expected failures, "
                "run side by side)")
            def quietly(s):
                try:
                    run_scenario(s)
                except Stopped:
                    pass

            threads = [threading.Thread(target=quietly, args=(s,), daemon=True) for s in par]
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
    except (KeyboardInterrupt, Stopped) as e:
        interrupted = True
        print(f"\nnatlab: interrupted ({e or 'SIGINT'}): tearing down", flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        RUN.teardown_all()
    left = RUN.leftovers()
    after = set(sh(["ip", "netns", "list"]).stdout.split("\n"))
    if interrupted:
        print(f"natlab: cleanup {'FAILED, left: ' + ' '.join(left) if left else 'ok'}")
        return 130
    print_matrix(scs, time.monotonic() - t0)
    if os.environ.get("RNDZ_NATLAB_JSON"):
        write_json(Path(os.environ["RNDZ_NATLAB_JSON"]), scs)
    failed = [r for sc in scs for r in sc.rows if r.failed()]
    if left:
        print(f"CLEANUP FAILED: namespaces left behind: {' '.join(left)}")
    else:
        same = "same as before the run" if after == before else \
            "differs from before the run, but not by this run's namespaces (another run?)"
        print(f"cleanup: ok (no {RUN.prefix}* namespaces left; `ip netns list` {same})")
    if failed or left:
        print(f"NAT LAB FAILED: {len(failed)} row(s) expected to pass did not; logs in "
              f"{RUN.logdir}")
        return 1
    if not CFG["keep_logs"]:
        shutil.rmtree(RUN.logdir, ignore_errors=True)
    xpass = [f"{r.scenario} {r.transport} {r.impl}" for sc in scs for r in sc.rows
             if r.verdict() == "XPASS"]
    print("NAT LAB PASSED" + ("" if CFG["tcp"] else " (TCP rows were OFF)")
          + (f" -- XPASS (expected failures that now pass): {', '.join(xpass)}" if xpass
             else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
