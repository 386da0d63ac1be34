"""The NAT lab's report: the matrix on stdout, and the same rows as JSON (RNDZ_NATLAB_JSON)."""
import json
import statistics

from common import CFG

def fmt_ms(secs):
    return "-" if secs is None else f"{secs * 1000:.0f}ms"


def print_matrix(scs, wall, run):
    rows = [r for sc in scs for r in sc.rows]
    print()
    print(f"NAT LAB MATRIX  (run {run.prefix}; repeats: clean {CFG['clean_repeats']}, loss "
          f"{CFG['loss_repeats']} at {CFG['loss']}%, expected-fail {CFG['xfail_repeats']}; "
          f"attempt timeout {CFG['timeout']}s; {wall:.0f}s)")
    hdr = ("scenario", "transport", "impl", "expect", "verdict", "ok/n", "rate",
           "median", "max")
    table = []
    for r in rows:
        times = r.ok_times()
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
            print(f"{v:<5} {label}: {k}/{n} ok; first failure: {r.first_failure()}")
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
            print("!!! Make it an expected pass in Tests/natlab/scenarios.py (all_scenarios()).")
            print("!" * 78)
            print()


def write_json(path, scs, run):
    out = []
    for sc in scs:
        for r in sc.rows:
            times = r.ok_times()
            out.append({
                "scenario": r.scenario, "transport": r.transport, "impl": r.impl,
                "expect": r.expect, "verdict": r.verdict(), "ok": r.ok_count,
                "attempts": len(r.attempts),
                "median_ms": round(statistics.median(times) * 1000, 1) if times else None,
                "error": r.error, "skipped": r.skipped,
                "connect_ms": r.connect_ms, "bar": r.bar,
                "failures": [n for ok, _, n in r.attempts if not ok], "notes": r.notes})
    path.write_text(json.dumps({"run": run.prefix, "config": CFG, "rows": out}, indent=1))
