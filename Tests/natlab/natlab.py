#!/usr/bin/env python3
"""The rndz NAT lab: real Linux NATs and stateful firewalls in network namespaces.

Started by Tests/natlab/run (or `make natlab`). See Tests/natlab/README.md for the topology, the
scenarios and the knobs. Needs root, iproute2, nftables and python3; nothing else.

This file is the command line; the lab itself: common.py (paths, configuration, logging),
topology.py (namespaces, links, nftables, cleanup), peers.py (rndz-cli, cpair, v1peer.py),
scenarios.py (the scenarios, their rows, running them), report.py (the matrix, JSON).
"""
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from common import CFG, HERE, REQUIRED, Stopped, log, sh
from peers import Tools
from report import print_matrix, write_json
from scenarios import all_scenarios, run_scenario
from topology import Run, cleanup_stale, preflight


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


def main(argv):
    if "-h" in argv or "--help" in argv:
        print((HERE / "README.md").read_text() if (HERE / "README.md").exists() else __doc__)
        return 0
    run = Run()
    if "--cleanup-stale" in argv:
        if os.geteuid() != 0:
            cannot_run("not root")
        cleanup_stale()
        return 0
    if "--list" in argv:
        for sc in all_scenarios():
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
    reason = preflight(run)
    if reason:
        cannot_run(reason)
    before = set(sh(["ip", "netns", "list"]).stdout.split("\n"))
    scs = all_scenarios()
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
    run.logdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    interrupted = False
    try:
        tools = Tools(run)
        log(f"run {run.prefix}: rndz-cli: "
            + (f"{tools.cli_origin}" if tools.cli else "MISSING: " + tools.cli_problem))
        log(f"run {run.prefix}: cpair (C API): "
            + (f"{tools.cpair} (TCP: {'yes' if tools.cpair_tcp is True else 'no'})" if tools.cpair
               else "MISSING: " + tools.cpair_problem))
        if not CFG["tcp"]:
            log("TCP rows are OFF (RNDZ_NATLAB_TCP=0): development only")
        seq = [s for s in scs if not s.concurrent]
        par = [s for s in scs if s.concurrent]
        for sc in seq:
            log(f"scenario {sc.name}: {sc.what}")
            run_scenario(sc, run, tools)
        if par:
            log("scenarios " + ", ".join(s.name for s in par) + " (expected failures, "
                "run side by side)")
            def quietly(s):
                try:
                    run_scenario(s, run, tools)
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
        run.teardown_all()
    left = run.leftovers()
    after = set(sh(["ip", "netns", "list"]).stdout.split("\n"))
    if interrupted:
        print(f"natlab: cleanup {'FAILED, left: ' + ' '.join(left) if left else 'ok'}")
        return 130
    print_matrix(scs, time.monotonic() - t0, run)
    if os.environ.get("RNDZ_NATLAB_JSON"):
        write_json(Path(os.environ["RNDZ_NATLAB_JSON"]), scs, run)
    failed = [r for sc in scs for r in sc.rows if r.failed()]
    if left:
        print(f"CLEANUP FAILED: namespaces left behind: {' '.join(left)}")
    else:
        same = "same as before the run" if after == before else \
            "differs from before the run, but not by this run's namespaces (another run?)"
        print(f"cleanup: ok (no {run.prefix}* namespaces left; `ip netns list` {same})")
    if failed or left:
        print(f"NAT LAB FAILED: {len(failed)} row(s) expected to pass did not; logs in "
              f"{run.logdir}")
        return 1
    if not CFG["keep_logs"]:
        shutil.rmtree(run.logdir, ignore_errors=True)
    xpass = [f"{r.scenario} {r.transport} {r.impl}" for sc in scs for r in sc.rows
             if r.verdict() == "XPASS"]
    print("NAT LAB PASSED" + ("" if CFG["tcp"] else " (TCP rows were OFF)")
          + (f" -- XPASS (expected failures that now pass): {', '.join(xpass)}" if xpass
             else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
