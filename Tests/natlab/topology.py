"""The NAT lab's topology: namespaces, veth pairs, bridges, the routers' nftables, and cleanup.

`Run` owns every namespace and process of one run (named rz<pid>-...) and removes them;
`Lab` builds one whole topology (README.md, "Topology") inside a run.
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

from common import BUILD, DELAY, PROBE, LabError, Stopped, last_json, sh, tail, vlog, wait_until

# ---- addresses: TEST-NET and 10.x, only ever inside the lab's own namespaces -----------------
SRV4, SRV6 = "203.0.113.1", "2001:db8::1"
# The server host's second address per family (the addr2-* scenarios: clients write to it).
# The IPv6 one is deprecated (preferred_lft 0): it receives, but the kernel never picks it as
# the source of a reply, as it would not pick the IPv4 secondary either; Lab.up checks both.
SRV4B, SRV6B = "203.0.113.2", "2001:db8::2"
PORT = 7000                      # rendezvous server, UDP and TCP
RELAY_PORT = 7001                # its relay (relay rows), UDP and TCP
ECHO_PORTS = (7100, 7101)        # probe.py echo on the server host: NAT mapping checks
# A router running miniupnpd (the port-mapping rows) maps on an address of its own on the
# WAN: miniupnpd refuses TEST-NET and other reserved external addresses ("port forwarding is
# impossible"). It exists only on that router's WAN link inside the lab's namespaces; r1 and
# the server reach it on-link.
UPNP_EXT = "198.20.0.12"
UPNP_NET = "198.20.0.0/24"
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


def kill_and_delete_ns(name):
    """SIGKILL whatever still runs in namespace `name`, then delete it."""
    for pid in sh(["ip", "netns", "pids", name], check=False).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    sh(["ip", "netns", "del", name], check=False)


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
            # Whatever still runs inside goes too (ours: nothing else lives in our namespaces).
            kill_and_delete_ns(ns)
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


# ---- one lab: the whole topology, with a NAT type per router and loss on the WAN links -------
class Lab:
    """
    public segment 203.0.113.0/24 + 2001:db8::/64: bridge in switch ns `inet`
        srv  203.0.113.1   2001:db8::1        (rendezvous server, echo probes)
             203.0.113.2   2001:db8::2        (its second addresses; the v6 one deprecated)
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

    def __init__(self, run, tag, nat=("eim", "eim"), loss=0, liberal=(), delay=0, rst=(),
                 upnp=()):
        self.run = run
        self.tag = tag
        self.pfx = f"{run.prefix}{tag}-"
        self.nat = {"r1": nat[0], "r2": nat[1]}
        self.loss = loss
        self.delay = delay            # ms one way on each router WAN link (0: none)
        self.delay_proc = None        # delay.py relaying the WAN links
        self.delay_counts = None      # its frame counts per direction, once stopped
        self.rtt = {}                 # delay: RTTs measured by ping, ms (see measure_rtt)
        self.liberal = set(liberal)   # routers with nf_conntrack_tcp_be_liberal=1
        self.rst = set(rst)           # routers that answer unsolicited TCP with a RST
        self.upnp = set(upnp)         # routers running miniupnpd (NAT-PMP and PCP)
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
            self.run.add_ns(self.ns(n))
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
        self.ip("srv", "addr", "add", f"{SRV4B}/24", "dev", "eth0")
        self.ip("srv", "addr", "add", f"{SRV6B}/64", "dev", "eth0", "nodad", "preferred_lft", "0")
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
        for r in self.upnp:
            self.start_upnp(r)
        self.check_source_choice()
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

    def start_upnp(self, r):
        """miniupnpd on router r (NAT-PMP and PCP on its LAN side), mapping on UPNP_EXT: its
        own nftables table with the chains it fills, hooked before the lab's rules; the
        lab's forward chain lets DNAT'd flows in (only miniupnpd makes them)."""
        self.ip(r, "addr", "add", f"{UPNP_EXT}/24", "dev", "wan")
        for n in ("srv", OTHER[r]):
            dev = "eth0" if n == "srv" else "wan"
            self.ip(n, "route", "add", UPNP_NET, "dev", dev)
        self.x(r, ["nft", "-f", "-"], input="""
table inet miniupnpd {
    chain forward { type filter hook forward priority -10; policy accept; jump miniupnpd; }
    chain miniupnpd { }
    chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }
    chain prerouting_miniupnpd { }
    chain postrouting { type nat hook postrouting priority 90; policy accept; jump postrouting_miniupnpd; }
    chain postrouting_miniupnpd { }
}
""")
        conf = self.logfile(f"miniupnpd-{r}.conf")
        with open(conf, "w") as f:
            f.write(f"""ext_ifname=wan
ext_ip={UPNP_EXT}
listening_ip=lan
enable_natpmp=yes
enable_upnp=no
secure_mode=yes
upnp_table_name=miniupnpd
upnp_nat_table_name=miniupnpd
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
allow 1024-65535 {LAN[r][0].rsplit('.', 1)[0]}.0/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
""")
        p = self.spawn(r, ["miniupnpd", "-d", "-f", conf, "-P", self.logfile(f"miniupnpd-{r}.pid")],
                       f"miniupnpd-{r}")
        if not wait_until(lambda: self.listening(r, "udp", 5351), 5, alive=p):
            raise LabError(f"miniupnpd on {r} does not listen on UDP 5351: {tail(p.natlab_err)}")

    def check_source_choice(self):
        """The kernel answers from the server host's first address, never its second: else a
        server on a wildcard address would answer clients that wrote to the second from the
        right address by luck, and the addr2-*-any rows would not test replying from the
        address a request reached."""
        for fam, dst, want in (("-4", WAN4["r2"], SRV4), ("-6", HOSTS["b"][2], SRV6)):
            out = self.x("srv", ["ip", fam, "route", "get", dst]).stdout
            m = re.search(r"\bsrc (\S+)", out)
            if not m or m.group(1) != want:
                raise LabError(f"srv picks {m.group(1) if m else '?'} as the source toward "
                               f"{dst}, expected its first address {want}: {out.strip()}")

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
            rtts = last_json(Path(p.natlab_out).read_text())["rtts_ms"]
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
            # Only what the router lets through: an answer from the server's other address
            # (not the one the client wrote to) is no reply to conntrack, and dropped.
            for fam, s, d in (("ip", f"{{ {SRV4}, {SRV4B} }}", a4),
                              ("ip6", f"{{ {SRV6}, {SRV6B} }}", a6)):
                marks.append(f'iifname "wan" {fam} saddr {s} {fam} daddr {d} udp sport {PORT} '
                             f"ct state established counter name reg_{h}_udp")
                marks.append(f'iifname "wan" {fam} saddr {s} {fam} daddr {d} tcp sport {PORT} '
                             f"tcp flags & psh == psh ct state established "
                             f"counter name reg_{h}_tcp")
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
        {"ct status dnat accept" if r in self.upnp else ""}
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

    def logfile(self, name):
        """This lab's file `name` in the run's log directory (TAG.NAME)."""
        return self.run.logdir / f"{self.tag}.{name}"

    def spawn(self, node, argv, name, env=None):
        out_path, err_path = self.logfile(f"{name}.out"), self.logfile(f"{name}.err")
        with open(out_path, "w") as out, open(err_path, "w") as err:
            p = self.run.spawn(["ip", "netns", "exec", self.ns(node)] + argv, out, err, env=env)
        p.natlab_out = out_path
        p.natlab_err = err_path
        self.procs.append(p)
        return p

    def stop(self, procs):
        self.run.stop_procs(procs)
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
        self.run.stop_procs(self.procs)
        self.procs = []
        self.run.delete_ns(list(reversed(self.namespaces)))
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
                seen = list(last_json(out)["seen"].values())
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


# ---- can this machine run a lab at all; namespaces of runs that were SIGKILLed --------------
def preflight(run):
    """Why a lab cannot run here (root, tools, namespaces, nftables, veth), or None."""
    if os.geteuid() != 0:
        return "not root (network namespaces and nftables need root)"
    for tool in ("ip", "nft", "ss"):
        if not shutil.which(tool):
            pkg = {"ip": "iproute2", "nft": "nftables", "ss": "iproute2"}[tool]
            return f"`{tool}` not found (Debian package {pkg})"
    probe = f"{run.prefix}probe"
    r = sh(["ip", "netns", "add", probe], check=False)
    if r.returncode != 0:
        return f"no network namespace support: `ip netns add` said: {r.stderr.strip()}"
    try:
        r = sh(["ip", "netns", "exec", probe, "nft", "-f", "-"], check=False,
               input="table ip t {\n chain c {\n type nat hook postrouting priority srcnat;\n"
                     " masquerade random\n }\n}\n"
                     "table bridge l {\n chain f {\n type filter hook forward priority filter;\n"
                     " numgen random mod 100 < 10 drop\n }\n}\n")
        if r.returncode != 0:
            return f"nftables NAT/numgen not usable in a namespace: {r.stderr.strip()}"
        r = sh(["ip", "link", "add", "v0", "netns", probe, "type", "veth", "peer", "name",
                "v1", "netns", probe], check=False)
        if r.returncode != 0:
            return f"veth pairs not available: {r.stderr.strip()}"
    finally:
        sh(["ip", "netns", "del", probe], check=False)
    return None


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
            kill_and_delete_ns(name)
            print(f"removed stale namespace {name}")


