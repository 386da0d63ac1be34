"""The NAT lab's scenarios: what each one builds and expects (all_scenarios()), its rows
(a transport and a peer implementation each, with their attempts and verdict), and how they run.
"""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import CFG, PROBE, V1PEER, LabError, Stopped, last_json, sh, tail, vlog, wait_until
from peers import child_env
from topology import HOSTS, PORT, RELAY_PORT, ROUTERS, SRV4, SRV4B, SRV6, SRV6B, WAN4, Lab


# ---- results: a row is one transport x implementation of a scenario ------------------------
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

    def ok_times(self):
        """Wall times (s) of the successful attempts."""
        return [s for ok, s, _ in self.attempts if ok and s is not None]

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
        if self.expect == "rate90":
            return "PASS" if 10 * k >= 9 * n else "FAIL"
        # "rate": report the success rate; fails only under RNDZ_NATLAB_LOSS_MIN.
        return "RATE" if 100 * k >= CFG["loss_min"] * n else "FAIL"

    def failed(self):
        return self.verdict() == "FAIL"

    def first_failure(self):
        for ok, _, note in self.attempts:
            if not ok:
                return note
        return ""


# ---- scenarios -------------------------------------------------------------------------------
class Scenario:
    def __init__(self, name, what, kind, nat=("eim", "eim"), loss=0, family=4, listen=None,
                 server_host="srv", listener="b", connector="a", transports=("udp", "tcp"),
                 impls=("cli", "capi"), expect="pass", repeats="clean", concurrent=False,
                 v1=None, local=None, record_path=False, expects=None, liberal=(), delay=0,
                 rst=(), via=(1, 1), relay=False, want_path=None, refuse=False, upnp=(),
                 listener_flags=()):
        self.__dict__.update(locals())
        del self.__dict__["self"]
        self.rows = []
        if kind == "filter":
            self.rows = [Row(name, t, "raw", "pass", what) for t in ("udp", "tcp")]
        elif kind == "natcheck":
            self.rows = [Row(name, "udp", f, "pass", what) for f in ("json", "text")]
        elif kind in ("pipe", "forward"):
            self.rows = [Row(name, "tcp", "cli", "pass", what)]
        elif kind == "forward-udp":
            self.rows = [Row(name, "udp", "cli", "pass", what)]
        elif kind == "metrics":
            self.rows = [Row(name, "udp", "cli", "pass", what)]
        elif kind == "serverset":
            self.rows = [Row(name, t, "cli", "pass", what) for t in ("udp", "tcp")]
        else:
            for t in transports:
                for i in impls:
                    self.rows.append(Row(name, t, i, (expects or {}).get(t, expect), what))

    def listens(self):
        """The server's --listen-addr values: `listen` (one, or a tuple given as several
        --listen-addr), by default the server host's first address of `family`."""
        if self.listen is None:
            return [self.server_address(1)]
        return [self.listen] if isinstance(self.listen, str) else list(self.listen)

    def server_address(self, n):
        """The server host's address n (1 or 2) of `family`, with the port."""
        if self.family == 6:
            return f"[{SRV6 if n == 1 else SRV6B}]:{PORT}"
        return f"{SRV4 if n == 1 else SRV4B}:{PORT}"

    def relay_address(self):
        """The server's --relay-addr: `relay` when it is an address, else the server host's
        first address of `family`, RELAY_PORT."""
        if isinstance(self.relay, str):
            return self.relay
        return f"[{SRV6}]:{RELAY_PORT}" if self.family == 6 else f"{SRV4}:{RELAY_PORT}"

    def client_servers(self):
        """The server address the listener and the connector use (`via`: which of the server
        host's addresses each writes to)."""
        return self.server_address(self.via[0]), self.server_address(self.via[1])

    def raw_v1(self, role):
        """Is `role` ("listener", "connector", "server") played by the raw v1 peer?"""
        return role in (self.v1 or "").split("+")

    def n_repeats(self, row=None):
        if row is not None and row.expect == "xfail":
            return CFG["xfail_repeats"]
        if self.repeats == "predict":
            return CFG["predict_repeats"]
        return CFG[{"clean": "clean_repeats", "loss": "loss_repeats",
                    "xfail": "xfail_repeats", "delay": "delay_repeats",
                    "relay": "relay_repeats"}[self.repeats]]


def all_scenarios():
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
        # One side behind a destination-dependent NAT with random ports, no relay: the NAT
        # check (the server on both its addresses) tells each side which one is hard, and
        # port prediction finds a direct path; UDP at least 9 times in 10 (TCP has no
        # prediction: an expected failure).
        Scenario("dd-a", "destination-dependent NAT (random ports) on a's side (the "
                 "connector), no relay: port prediction, direct", "pair",
                 nat=("random", "eim"), impls=("cli",), expects={"udp": "rate90", "tcp": "xfail"},
                 repeats="predict", concurrent=True,
                 listen=(f"{SRV4}:{PORT}", f"{SRV4B}:{PORT}"), want_path="predicted"),
        Scenario("dd-b", "destination-dependent NAT (random ports) on b's side (the "
                 "listener), no relay: port prediction, direct", "pair",
                 nat=("eim", "random"), impls=("cli",), expects={"udp": "rate90", "tcp": "xfail"},
                 repeats="predict", concurrent=True,
                 listen=(f"{SRV4}:{PORT}", f"{SRV4B}:{PORT}"), want_path="predicted"),
        # No direct path and no relay: each connect must fail on its own, in time (the
        # library's default 10 s), exit 1, and say why.
        Scenario("dd-both", "destination-dependent NAT on both sides, no relay: the "
                 "connector fails by itself in time (exit 1) and says the peer cannot be "
                 "reached", "pair", nat=("random", "random"), impls=("cli",), refuse=True,
                 repeats="relay", concurrent=True),
        # The relay matrix: every pair of NAT kinds with the server's relay on. Each connects
        # every time; cone/cone must go direct, symmetric/symmetric through the relay (no
        # direct path exists); the one-sided rows report which it was (issue 13 makes them
        # direct). The dd-* rows above are the same NATs with the relay off.
        Scenario("relay-cone", "relay on, endpoint-independent NATs on both sides: direct, "
                 "never the relay", "pair", impls=("cli",), relay=True, want_path="direct",
                 repeats="relay", concurrent=True),
        Scenario("relay-dd-a", "relay on, destination-dependent NAT on a's side", "pair",
                 nat=("random", "eim"), impls=("cli",), relay=True, repeats="relay",
                 concurrent=True),
        Scenario("relay-dd-b", "relay on, destination-dependent NAT on b's side", "pair",
                 nat=("eim", "random"), impls=("cli",), relay=True, repeats="relay",
                 concurrent=True),
        Scenario("relay-dd-both", "relay on, destination-dependent NATs on both sides: "
                 "through the relay", "pair", nat=("random", "random"), impls=("cli",),
                 relay=True, want_path="relay", repeats="relay", concurrent=True),
        # The relay on a wildcard address, the clients writing to the server host's second
        # address: the relay is handed out as 0.0.0.0:7001, so the peers use the address they
        # reach the server at, and every relayed datagram must leave from it (IP_PKTINFO).
        Scenario("relay-addr2", f"relay on 0.0.0.0:{RELAY_PORT}, server on 0.0.0.0:{PORT}, "
                 f"destination-dependent NATs on both sides, clients write to {SRV4B}: "
                 "through the relay, answered from the address written to", "pair",
                 nat=("random", "random"), impls=("cli",), listen=f"0.0.0.0:{PORT}",
                 via=(2, 2), relay=f"0.0.0.0:{RELAY_PORT}", want_path="relay",
                 repeats="relay", concurrent=True),
        # rndz-cli nat-check from a, against the server on both its IPv4 addresses: it must
        # tell a cone NAT from a symmetric one every time, in JSON and in text.
        Scenario("natcheck-cone", "rndz-cli nat-check behind an endpoint-independent NAT "
                 "(server on two addresses): mapping endpoint-independent", "natcheck",
                 listen=(f"{SRV4}:{PORT}", f"{SRV4B}:{PORT}"),
                 expects={"mapping": "endpoint-independent"}),
        Scenario("natcheck-symmetric", "rndz-cli nat-check behind a destination-dependent NAT "
                 "with random ports: mapping endpoint-dependent, allocation random", "natcheck",
                 nat=("random", "eim"), listen=(f"{SRV4}:{PORT}", f"{SRV4B}:{PORT}"),
                 expects={"mapping": "endpoint-dependent", "allocation": "random"}),
        # Both sides behind destination-dependent NATs (random ports), no relay; b's router
        # runs the real miniupnpd (NAT-PMP, PCP): b's listener maps its port there
        # (--port-mapping) and advertises the mapping, which a's probes reach directly.
        Scenario("pmp", "destination-dependent NATs on both sides, b's router runs miniupnpd "
                 "(NAT-PMP/PCP) and b's listener maps its port; the relay is on but not "
                 "needed: direct through the mapping",
                 "pair", nat=("random", "random"), impls=("cli",), transports=("udp",),
                 upnp=("r2",), want_path="mapped", listener_flags=("--port-mapping",),
                 relay=True),
        # rndz-cli expose (b, in front of an echo service) and forward (a): 8 connections at
        # once through two NATs, 10 MB each way on each, echoed back byte for byte.
        Scenario("forward", "rndz-cli expose in b (an echo service behind it) and forward in "
                 "a, through two endpoint-independent NATs: 8 connections at once, 10 MB each "
                 "way on each, SHA-256 equal", "forward", repeats="xfail"),
        # The server's /metrics scraped from a (through its NAT) while b's listener registers.
        Scenario("metrics", "rndz-cli server --metrics-addr: GET /metrics from a, through a's "
                 "NAT, before and while b's listener is registered: rndz_udp_peers 0, then 1",
                 "metrics", repeats="xfail"),
        # The same with --udp: 1,000 datagrams through a UDP echo, at least 99% back intact.
        Scenario("forward-udp", "rndz-cli expose --udp in b (a UDP echo behind it) and forward "
                 "--udp in a, through two endpoint-independent NATs: 1,000 datagrams, at least "
                 "99% back intact", "forward-udp", repeats="xfail"),
        # Server sets from DNS: one name, two servers; each id on one of them (K = 1).
        Scenario("server-set", f"two servers ({SRV4}:{PORT}, {SRV4B}:{PORT}) behind one name "
                 "(the hosts file of a and b): --server-addr rndz-set:PORT --servers-per-id 1; "
                 "each listener registers with exactly one, the connector finds it there",
                 "serverset", repeats="xfail"),
        # rndz-cli pipe through two NATs: 1 MB from a's stdin to b's stdout, hashes equal.
        Scenario("pipe", "rndz-cli pipe through two endpoint-independent NATs: 1 MB of random "
                 "bytes from a's stdin arrives at b's stdout, SHA-256 equal", "pipe"),
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
        # The server host has a second address per family, one the kernel never picks as a
        # source; the clients write to it. A server that answers UDP from the address the
        # kernel picks is not heard (the NAT / firewall sees no reply).
        Scenario("addr2-any-v4", f"server on 0.0.0.0:{PORT}, clients write to the server "
                 f"host's second IPv4 address {SRV4B}: answers must come from it", "pair",
                 listen=f"0.0.0.0:{PORT}", via=(2, 2)),
        Scenario("addr2-any-v6", f"server on [::]:{PORT}, clients write over IPv6 to the "
                 f"server host's second address {SRV6B}: answers must come from it", "pair",
                 family=6, listen=f"[::]:{PORT}", via=(2, 2)),
        Scenario("addr2-two-v4", f"--listen-addr twice ({SRV4}:{PORT}, {SRV4B}:{PORT}), "
                 "clients write to the second", "pair",
                 listen=(f"{SRV4}:{PORT}", f"{SRV4B}:{PORT}"), via=(2, 2)),
        Scenario("addr2-two-v6", f"--listen-addr twice ([{SRV6}]:{PORT}, [{SRV6B}]:{PORT}), "
                 "clients write over IPv6 to the second", "pair", family=6,
                 listen=(f"[{SRV6}]:{PORT}", f"[{SRV6B}]:{PORT}"), via=(2, 2)),
        Scenario("addr2-cross", f"--listen-addr twice ({SRV4}:{PORT}, {SRV4B}:{PORT}), the "
                 "listener writes to the second, the connector to the first: the request "
                 "forwarded to the listener leaves from the address it wrote to", "pair",
                 listen=(f"{SRV4}:{PORT}", f"{SRV4B}:{PORT}"), via=(2, 1)),
    ]


# ---- running them: one lab per scenario --------------------------------------------------------
def probe_json(p, what):
    try:
        return last_json(Path(p.natlab_out).read_text())
    except (ValueError, IndexError, OSError):
        raise LabError(f"{what}: probe output unreadable: {tail(p.natlab_err)}")


def run_filter(sc, run):
    """Without rndz: plain sockets show the lab filters one-sided traffic (the packet is
    dropped at b's router) and lets two-sided traffic through (a hand-made punch), for UDP
    and TCP (simultaneous open), IPv4 through NAT and IPv6 through the stateful firewall."""
    rows = {r.transport: r for r in sc.rows}
    lab = Lab(run, sc.name)
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



def run_natcheck(sc, run, tools):
    """rndz-cli nat-check in a, `sc.expects` the fields its report must have, each repeat;
    the text row checks the same words in the human output."""
    lab = Lab(run, sc.name, nat=sc.nat)
    rows = {r.impl: r for r in sc.rows}
    if tools.problem("cli", "udp"):
        for r in sc.rows:
            r.error = tools.problem("cli", "udp")
        return
    try:
        lab.up()
        problems, seen = lab.check_mapping()
        rows["json"].notes.append("lab mapping: " + seen)
        if problems:
            for r in sc.rows:
                r.error = "lab NAT behaviour wrong: " + "; ".join(problems)
            return
        listens = sc.listens()
        server = lab.spawn("srv", tools.server_argv("cli", listens, sc), "natcheck.server",
                           env=child_env())
        if not wait_until(lambda: lab.listening("srv", "udp", PORT), 5, alive=server):
            for r in sc.rows:
                r.error = f"rndz-cli server does not listen: {tail(server.natlab_err)}"
            return
        for i in range(sc.n_repeats()):
            for fmt, row in rows.items():
                argv = [tools.cli, "nat-check", "--server-addr", listens[0]] + \
                    (["--json"] if fmt == "json" else [])
                t0 = time.monotonic()
                p = lab.spawn(sc.connector, argv, f"natcheck-{fmt}{i + 1}", env=child_env())
                try:
                    rc = p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    lab.stop([p])
                    row.add(False, None, f"attempt {i + 1}: no result in 15 s")
                    continue
                secs = time.monotonic() - t0
                out = Path(p.natlab_out).read_text(errors="replace")
                if rc != 0:
                    row.add(False, None, f"attempt {i + 1}: exit {rc}: {tail(p.natlab_err, 2)}")
                    continue
                wrong = []
                if fmt == "json":
                    try:
                        got = json.loads(out)
                    except ValueError:
                        row.add(False, None, f"attempt {i + 1}: not one JSON object: {out[:120]!r}")
                        continue
                    wrong = [f"{k} {got.get(k)!r} (want {v!r})" for k, v in sc.expects.items()
                             if got.get(k) != v]
                    if i == 0:
                        row.notes.append(f"report: {out.strip()[:300]}")
                else:
                    want = {"mapping": f"mapping: {sc.expects['mapping']}"}
                    if "allocation" in sc.expects:
                        want["allocation"] = f"port allocation: {sc.expects['allocation']}"
                    wrong = [f"no {v!r} line" for k, v in want.items() if v not in out]
                row.add(not wrong, secs, f"attempt {i + 1}: " + "; ".join(wrong))
        lab.stop([server])
    finally:
        lab.down()


def start_cli_server(lab, sc, tools, row):
    """rndz-cli server on the server host, listening on TCP; None (row.error set) if not."""
    server = lab.spawn("srv", tools.server_argv("cli", sc.listens(), sc), f"{sc.name}.server",
                       env=child_env())
    if not wait_until(lambda: lab.listening("srv", "tcp", PORT), 5, alive=server):
        row.error = f"rndz-cli server does not listen: {tail(server.natlab_err)}"
        return None
    return server


ECHO_PY = r"""
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(64); print("ready", flush=True)
def serve(c):
    while True:
        d = c.recv(65536)
        if not d: break
        c.sendall(d)
    c.shutdown(socket.SHUT_WR); c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

CLIENT_PY = r"""
import hashlib, json, os, socket, sys, threading, time
host, port = sys.argv[1].rsplit(":", 1); n, size = int(sys.argv[2]), int(sys.argv[3])
res = {}
def one(i):
    data = os.urandom(size); got = bytearray()
    c = socket.create_connection((host, int(port)), timeout=30)
    def rd():
        while True:
            d = c.recv(1 << 16)
            if not d: break
            got.extend(d)
    t = threading.Thread(target=rd); t.start()
    c.sendall(data); c.shutdown(socket.SHUT_WR); t.join(); c.close()
    res[i] = hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
t0 = time.time()
ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
[t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps({"ok": sum(res.values()), "n": n, "secs": time.time() - t0}))
"""


UDP_ECHO_PY = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", int(sys.argv[1])))
while True:
    d, a = s.recvfrom(65536); s.sendto(d, a)
"""

UDP_CLIENT_PY = r"""
import json, socket, sys, time
host, port = sys.argv[1].rsplit(":", 1); n = int(sys.argv[2])
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.settimeout(2)
ok = 0; t0 = time.time()
for i in range(n):
    m = (b"%06d" % i) * 100
    c.sendto(m, (host, int(port)))
    try:
        ok += c.recv(65536) == m
    except socket.timeout:
        pass
print(json.dumps({"ok": ok, "n": n, "secs": time.time() - t0}))
"""


def run_forward_udp(sc, run, tools):
    """expose --udp in b in front of a UDP echo, forward --udp in a: N datagrams of 600 bytes
    one after the other; at least 99% must come back intact."""
    row = sc.rows[0]
    if tools.problem("cli", "udp"):
        row.error = tools.problem("cli", "udp")
        return
    lab = Lab(run, sc.name, nat=sc.nat)
    try:
        lab.up()
        server = start_cli_server(lab, sc, tools, row)
        if server is None:
            return
        srv = sc.server_address(1)
        echo = lab.spawn("b", [sys.executable, "-c", UDP_ECHO_PY, "7200"], "fwdu.echo")
        expose = lab.spawn("b", [tools.cli, "expose", "--udp", "--id", "usvc-b", "--server-addr",
                                 srv, "--to", "127.0.0.1:7200"], "fwdu.expose", env=child_env())
        fwd = lab.spawn("a", [tools.cli, "forward", "--udp", "--remote-peer", "usvc-b",
                              "--server-addr", srv, "--listen", "127.0.0.1:7300"], "fwdu.forward",
                        env=child_env())
        if not wait_until(lambda: "exposing" in Path(expose.natlab_out).read_text() and
                          "forwarding" in Path(fwd.natlab_out).read_text(), 10):
            row.error = (f"expose/forward not ready: {tail(expose.natlab_err)} | "
                         f"{tail(fwd.natlab_err)}")
            return
        t0 = time.monotonic()
        cl = lab.spawn("a", [sys.executable, "-c", UDP_CLIENT_PY, "127.0.0.1:7300", "1000"],
                       "fwdu.client")
        try:
            cl.wait(timeout=120)
            r = last_json(Path(cl.natlab_out).read_text())
        except (subprocess.TimeoutExpired, ValueError, IndexError):
            lab.stop([cl])
            row.add(False, None, f"client: {tail(cl.natlab_err)}")
            return
        ok = 100 * r["ok"] >= 99 * r["n"]
        row.add(ok, time.monotonic() - t0, "" if ok else f"{r['ok']}/{r['n']} datagrams back")
        row.notes.append(f"{r['ok']}/{r['n']} datagrams back intact in {r['secs']:.2f} s")
        lab.stop([fwd, expose, echo, server])
    finally:
        lab.down()


def run_forward(sc, run, tools):
    """expose in b in front of an echo service, forward in a: N connections at once, each
    sending SIZE bytes and reading them back; all must hash equal."""
    row = sc.rows[0]
    if tools.problem("cli", "tcp"):
        row.error = tools.problem("cli", "tcp")
        return
    lab = Lab(run, sc.name, nat=sc.nat)
    try:
        lab.up()
        server = start_cli_server(lab, sc, tools, row)
        if server is None:
            return
        srv = sc.server_address(1)
        echo = lab.spawn("b", [sys.executable, "-c", ECHO_PY, "7200"], "fwd.echo")
        expose = lab.spawn("b", [tools.cli, "expose", "--id", "svc-b", "--server-addr", srv,
                                 "--to", "127.0.0.1:7200"], "fwd.expose", env=child_env())
        fwd = lab.spawn("a", [tools.cli, "forward", "--remote-peer", "svc-b", "--server-addr",
                              srv, "--listen", "127.0.0.1:7300"], "fwd.forward", env=child_env())
        ready = wait_until(lambda: "exposing" in Path(expose.natlab_out).read_text() and
                           "forwarding" in Path(fwd.natlab_out).read_text(), 10)
        if not ready:
            row.error = (f"expose/forward not ready: {tail(expose.natlab_err)} | "
                         f"{tail(fwd.natlab_err)}")
            return
        for i in range(max(1, sc.n_repeats())):
            t0 = time.monotonic()
            cl = lab.spawn("a", [sys.executable, "-c", CLIENT_PY, "127.0.0.1:7300", "8",
                                 str(10 << 20)], f"fwd.client{i + 1}")
            try:
                cl.wait(timeout=120)
            except subprocess.TimeoutExpired:
                lab.stop([cl])
                row.add(False, None, f"attempt {i + 1}: no end in 120 s")
                continue
            try:
                r = last_json(Path(cl.natlab_out).read_text())
            except (ValueError, IndexError):
                row.add(False, None, f"attempt {i + 1}: client said {tail(cl.natlab_err)}")
                continue
            ok = r["ok"] == r["n"]
            row.add(ok, time.monotonic() - t0,
                    "" if ok else f"attempt {i + 1}: {r['ok']}/{r['n']} connections intact")
            row.notes.append(f"8 connections x 10 MB each way: {r['secs']:.2f} s")
        lab.stop([fwd, expose, echo, server])
    finally:
        lab.down()


SCRAPE_PY = r"""
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
c = socket.create_connection((host, int(port)), timeout=5)
c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
out = b""
while True:
    d = c.recv(65536)
    if not d: break
    out += d
sys.stdout.write(out.decode())
"""


def run_metrics(sc, run, tools):
    """Scrape /metrics from a: rndz_udp_peers 0 before b's listener, 1 while it is there."""
    row = sc.rows[0]
    if tools.problem("cli", "udp"):
        row.error = tools.problem("cli", "udp")
        return
    lab = Lab(run, sc.name, nat=sc.nat)
    try:
        lab.up()
        maddr = f"{SRV4}:9888"
        server = lab.spawn("srv", tools.server_argv("cli", sc.listens(), sc) +
                           ["--metrics-addr", maddr], "metrics.server", env=child_env())
        if not wait_until(lambda: lab.listening("srv", "tcp", 9888), 5, alive=server):
            row.error = f"no metrics endpoint: {tail(server.natlab_err)}"
            return

        def scrape(tag):
            p = lab.spawn("a", [sys.executable, "-c", SCRAPE_PY, maddr], f"metrics.{tag}")
            p.wait(timeout=10)
            return Path(p.natlab_out).read_text(errors="replace")

        t0 = time.monotonic()
        before = scrape("before")
        lp, problem = start_listener(sc, lab, tools, row, sc.server_address(1), "b-metrics", 0)
        if problem:
            row.error = problem
            return
        during = ""
        ok = wait_until(lambda: "rndz_udp_peers 1\n" in (during := scrape("during")), 5)
        good = before.startswith("HTTP/1.1 200") and "rndz_udp_peers 0\n" in before and ok
        row.add(good, time.monotonic() - t0,
                "" if good else f"before: {before[:80]!r}; during: {during[-200:]!r}")
        if good:
            row.notes.append("scraped from a: rndz_udp_peers 0, then 1 with b registered")
        lab.stop([lp, server])
    finally:
        lab.down()


def run_serverset(sc, run, tools):
    """Two servers behind one name (a and b's hosts files, which `ip netns exec` puts in
    place): with --servers-per-id 1 a listener registers with exactly one of them (its -v log
    says which) and a connector that knows only the name finds it."""
    if tools.problem("cli", "udp"):
        for row in sc.rows:
            row.error = tools.problem("cli", "udp")
        return
    lab = Lab(run, sc.name, nat=sc.nat)
    etc = [Path("/etc/netns") / lab.ns(n) for n in ("a", "b")]
    try:
        lab.up()
        for d in etc:
            d.mkdir(parents=True, exist_ok=True)
            (d / "hosts").write_text(f"127.0.0.1 localhost\n{SRV4} rndz-set\n{SRV4B} rndz-set\n")
        servers = [lab.spawn("srv", [tools.cli, "server", "--listen-addr", f"{a}:{PORT}"],
                             f"set.server{i}", env=child_env()) for i, a in enumerate((SRV4, SRV4B))]
        if not wait_until(lambda: len(lab.x("srv", ["ss", "-Hlnt", f"sport = :{PORT}"],
                                            check=False).stdout.splitlines()) >= 2, 5):
            for row in sc.rows:
                row.error = "the two servers do not listen"
            return
        name = f"rndz-set:{PORT}"
        for row in sc.rows:
            tcp = ["--tcp"] if row.transport == "tcp" else []
            for i in range(3):
                t0 = time.monotonic()
                pid = f"set-{row.transport}-{i}"
                lp = lab.spawn("b", [tools.cli, "-v", "client", *tcp, "--id", pid, "--server-addr",
                                     name, "--servers-per-id", "1"], f"set.{pid}", env=child_env())
                if not wait_until(lambda: "registered as" in Path(lp.natlab_out).read_text(), 8,
                                  alive=lp):
                    row.add(False, time.monotonic() - t0, f"listener: {tail(lp.natlab_err)}")
                    lab.stop([lp])
                    continue
                c = lab.spawn("a", [tools.cli, "client", *tcp, "--id", f"c{pid}", "--server-addr",
                                    name, "--servers-per-id", "1", "--remote-peer", pid],
                              f"set.c{pid}", env=child_env())
                rc = c.wait(timeout=20)
                err = Path(lp.natlab_err).read_text(errors="replace")
                regs = {a for a in (SRV4, SRV4B) if f"registered with {a}:{PORT}" in err}
                good = rc == 0 and len(regs) == 1
                row.add(good, time.monotonic() - t0,
                        "" if good else f"connector rc {rc}: {tail(c.natlab_err)}; listener "
                        f"registered with {sorted(regs)}")
                if good:
                    row.notes.append(f"{pid} registered with {regs.pop()} only; found there")
                lab.stop([lp])
        lab.stop(servers)
    finally:
        for d in etc:
            shutil.rmtree(d, ignore_errors=True)
        lab.down()


def run_pipe(sc, run, tools):
    """rndz-cli pipe: b waits (stdin empty), a sends 1 MB of random bytes; b's stdout must
    hash the same; both exit 0."""
    import hashlib
    row = sc.rows[0]
    if tools.problem("cli", "tcp"):
        row.error = tools.problem("cli", "tcp")
        return
    lab = Lab(run, sc.name, nat=sc.nat)
    try:
        lab.up()
        server = start_cli_server(lab, sc, tools, row)
        if server is None:
            return
        srv = sc.server_address(1)
        for i in range(sc.n_repeats()):
            data = os.urandom(1 << 20)
            src = lab.logfile(f"pipe{i + 1}.in")
            src.write_bytes(data)
            bid = f"b-pipe{i + 1}"
            b = lab.spawn("b", [tools.cli, "pipe", "--id", bid, "--server-addr", srv],
                          f"pipe{i + 1}.b", env=child_env())
            if not wait_until(lambda: "waiting for a peer" in Path(b.natlab_err).read_text(
                    errors="replace"), 10, alive=b):
                row.add(False, None, f"attempt {i + 1}: b not registered: {tail(b.natlab_err)}")
                lab.stop([b])
                continue
            t0 = time.monotonic()
            a = lab.spawn("a", ["sh", "-c", f'exec "$0" pipe --id a-pipe{i + 1} --server-addr '
                                f'{srv} --remote-peer {bid} < "$1"', tools.cli, str(src)],
                          f"pipe{i + 1}.a", env=child_env())
            try:
                ra, rb = a.wait(timeout=CFG["timeout"]), b.wait(timeout=CFG["timeout"])
            except subprocess.TimeoutExpired:
                lab.stop([a, b])
                row.add(False, None, f"attempt {i + 1}: no end in {CFG['timeout']} s")
                continue
            secs = time.monotonic() - t0
            got = Path(b.natlab_out).read_bytes()
            same = hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
            note = "" if same else (f"attempt {i + 1}: b's stdout has {len(got)} bytes, "
                                    f"SHA-256 differs from what a sent")
            if ra or rb:
                note = (f"attempt {i + 1}: exit a {ra}, b {rb}: {tail(a.natlab_err, 1)} | "
                        f"{tail(b.natlab_err, 1)}")
            row.add(same and not ra and not rb, secs, note)
        lab.stop([server])
    finally:
        lab.down()


def run_pair(sc, run, tools):
    """Each row on its own server (rndz-cli rows: `rndz-cli server`; C API rows: `cpair
    server`, i.e. rndz_server from librndz.so), listener and connectors; one lab per
    scenario."""
    lab = Lab(run, sc.name, nat=sc.nat, loss=sc.loss, liberal=sc.liberal, delay=sc.delay,
              rst=sc.rst, upnp=sc.upnp)
    runnable = []
    for row in sc.rows:
        if row.transport == "tcp" and not CFG["tcp"]:
            row.skipped = "TCP rows off (RNDZ_NATLAB_TCP=0)"
        elif tools.problem(row.impl, row.transport):
            row.error = tools.problem(row.impl, row.transport)
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
    if sc.upnp and not shutil.which("miniupnpd"):
        for row in runnable:
            row.error = ("needs miniupnpd on this host (the lab runs it in a router's namespace): "
                         "apt-get install -y miniupnpd-nftables (.ci/run does)")
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
        srv_addrs = sc.client_servers()
        listens = sc.listens()
        listen = " --listen-addr ".join(listens)
        for row in runnable:
            server = lab.spawn("srv", tools.server_argv(row.impl, listens, sc),
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
                run_row(sc, lab, tools, row, srv_addrs)
                if server.poll() is not None:
                    row.notes.append(f"{who} died during the row ({server.returncode}): "
                                     f"{tail(server.natlab_err, 2)}")
            lab.stop([server])
    finally:
        lab.down()
        if lab.delay_counts:
            runnable[0].notes.append(f"delay wire (whole scenario): {lab.delay_counts}")


def start_listener(sc, lab, tools, row, srv_addr, pid, gen):
    """Starts the listener, writing to the server at `srv_addr`; waits until registered."""
    host_router = HOSTS[sc.listener][0]
    cname = f"reg_{sc.listener}_{row.transport}"
    before = lab.counter(host_router, cname)
    drops0 = lab.drop_counters()
    p = lab.spawn(sc.listener, tools.listener_argv(row.impl, row.transport, pid, srv_addr, sc),
                  f"{row.transport}-{row.impl}.listener{gen}", env=child_env())
    # Registered = the router forwarded an answer from the server to the listener (a Pong).
    limit = 25 if sc.loss else 10
    ok = wait_until(lambda: lab.counter(host_router, cname) > before, limit, step=0.05, alive=p)
    if not ok:
        if p.poll() is not None:
            return p, (f"listener exited ({p.returncode}) before registering: "
                       f"{tail(p.natlab_err)}")
        drops = lab.drop_counters()
        dropped = ", ".join(f"{k} +{drops[k] - drops0[k]}" for k in drops if drops[k] != drops0[k])
        return p, (f"listener not registered after {limit}s (no answer from the server at "
                   f"{srv_addr} reached it" + (f"; router drops meanwhile: {dropped}"
                                               if dropped else "") + ")")
    return p, None


def run_row(sc, lab, tools, row, srv_addrs):
    """One row: `srv_addrs` is the server address of the listener and of the connector."""
    srv_addr, conn_srv_addr = srv_addrs
    n = sc.n_repeats(row)
    pid = f"{sc.listener}-{row.transport}-{row.impl}"
    t_row = time.monotonic()
    gen = 0
    lp, problem = start_listener(sc, lab, tools, row, srv_addr, pid, gen)
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
            lp, problem = start_listener(sc, lab, tools, row, srv_addr, pid, gen)
            if problem:
                row.add(False, None, f"restarted {problem}")
                break
        cid = f"{sc.connector}-try{i + 1}-{row.transport}-{row.impl}"  # never a listener's id (a2-...)
        peer0 = lab.counter(lrouter, peer_counter)
        drops0 = lab.drop_counters()
        wire0 = lab.wire_counters()
        name = f"{row.transport}-{row.impl}.connect{i + 1}"
        t0 = time.monotonic()
        cp = lab.spawn(sc.connector, tools.connector_argv(row.impl, row.transport, cid,
                                                          conn_srv_addr, pid, sc),
                       name, env=child_env())
        rc = None
        try:
            # An attempt still running after 2.5 s is probably failing: snapshot both ends'
            # TCP/UDP sockets (queues, states) for the logs.
            rc = cp.wait(timeout=min(2.5, CFG["timeout"]))
        except subprocess.TimeoutExpired:
            with open(lab.logfile(f"{name}.ss"), "w") as f:
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
            with open(lab.logfile(f"{name}.conntrack"), "w") as f:
                for r in sorted(ROUTERS):
                    res = lab.x(r, ["cat", "/proc/net/nf_conntrack"], check=False)
                    f.write(f"== {r} conntrack\n{res.stdout}")
                    res = lab.x(r, ["nft", "list", "ruleset"], check=False)
                    f.write(f"== {r} ruleset (counters since the lab started)\n{res.stdout}")

        if sc.refuse:
            # A clean refusal: exit 1 by itself within the default timeout (10 s, + the
            # process's start), naming the cause.
            err = Path(cp.natlab_err).read_text(errors="replace")
            if rc == 1 and secs <= 13 and "could not be reached" in err:
                row.add(True, secs)
            else:
                failed(f"wanted exit 1 within 13 s saying the peer could not be reached; got "
                       f"{'no exit' if rc is None else f'exit {rc}'} after {secs:.2f}s: "
                       f"{tail(cp.natlab_err, 2)}")
        elif rc is None:
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
        elif (sc.relay or sc.want_path) and (problem := path_problem(sc, row, out)):
            failed(problem)
        else:
            direct = lab.counter(lrouter, peer_counter) - peer0
            if is_relayed(out):
                row.add(True, secs)  # through the server: no packet from the peer expected
                ms = connect_ms(out)
                if ms is not None:
                    row.connect_ms.append(ms)
            elif sc.listener == "b" and direct == 0:
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
    if sc.relay or sc.want_path:
        row.notes.append(f"paths: {getattr(row, 'direct', 0)} direct "
                         f"({getattr(row, 'predicted', 0)} by port prediction), "
                         f"{getattr(row, 'relayed', 0)} through the relay"
                         + (f"; median time to connect {statistics.median(row.connect_ms):.0f} ms"
                            if row.connect_ms else ""))
    if sc.record_path:
        summarize_paths(row)
        v6 = {h: lab.counter(HOSTS[h][0], f"peer6_in_{h}") - v6_0[h] for h in v6_0}
        row.notes.append("IPv6 packets forwarded from the other side during the row: "
                         + ", ".join(f"to {h} {v6[h]}" for h in v6))
    if sc.loss:
        try:
            row.loss_seen = (lab.counter("inet", "dropped", "bridge", "loss") - loss0[0],
                             lab.counter("inet", "frames", "bridge", "loss") - loss0[1])
        except LabError:
            pass
    row.elapsed = time.monotonic() - t_row


def is_relayed(out):
    """The CLI connector's path line names the relay: "path to ID: relay ADDR (...)"."""
    return re.search(r"^path to \S+: relay ", out, re.M) is not None


def path_problem(sc, row, out):
    """Relay rows: count direct and relayed attempts; None, or why this one is wrong."""
    if not re.search(r"^path to ", out, re.M):
        return "no path line on stdout"
    relayed = is_relayed(out)
    predicted = re.search(r"^path to \S+: predicted ", out, re.M) is not None
    row.relayed = getattr(row, "relayed", 0) + relayed
    row.direct = getattr(row, "direct", 0) + (not relayed)
    row.predicted = getattr(row, "predicted", 0) + predicted
    if sc.want_path == "predicted" and not predicted:
        return "connected, but not by port prediction (the path line says no 'predicted')"
    if sc.want_path == "mapped" and not re.search(r"^path to \S+: mapped \S+ \(an address it "
                                                   r"advertised", out, re.M):
        return "connected, but not through the port mapping (no 'mapped' on the path line)"
    if sc.want_path == "direct" and relayed:
        return "went through the relay, but a direct path exists (cone NATs)"
    if sc.want_path == "relay" and not relayed:
        return "went direct where no direct path exists: the path line is wrong"
    return None


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


def run_scenario(sc, run, tools):
    t0 = time.monotonic()
    try:
        if sc.kind == "filter":
            run_filter(sc, run)
        elif sc.kind == "natcheck":
            run_natcheck(sc, run, tools)
        elif sc.kind == "pipe":
            run_pipe(sc, run, tools)
        elif sc.kind == "forward":
            run_forward(sc, run, tools)
        elif sc.kind == "forward-udp":
            run_forward_udp(sc, run, tools)
        elif sc.kind == "metrics":
            run_metrics(sc, run, tools)
        elif sc.kind == "serverset":
            run_serverset(sc, run, tools)
        else:
            run_pair(sc, run, tools)
    except Stopped:
        raise
    except Exception as e:  # a broken lab fails the scenario, not the run's cleanup
        if run.stopping:
            raise Stopped()
        for row in sc.rows:
            if not row.attempts and not row.skipped:
                row.error = row.error or f"lab error: {e}"
            elif not row.skipped:
                row.notes.append(f"lab error: {e}")
    sc.elapsed = time.monotonic() - t0
    vlog(f"scenario {sc.name}: {sc.elapsed:.1f}s")
