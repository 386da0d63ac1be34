"""The NAT lab's peers: rndz-cli (found), cpair (built against build/librndz.so), v1peer.py,
and the command lines each role runs."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from common import BUILD, CFG, HERE, ROOT, V1PEER

# ---- the peers: rndz-cli and cpair ------------------------------------------------------------
class Tools:
    def __init__(self, run):
        self.cli, self.cli_problem = self.find_cli()
        self.cli_origin = self.cli
        if self.cli:
            # Run a private copy: a `swift build` meanwhile cannot replace it mid-run.
            copy = run.logdir / "rndz-cli"
            try:
                shutil.copy2(self.cli, copy)
                if subprocess.run([str(copy), "--version"], capture_output=True,
                                  timeout=20).returncode == 0:
                    self.cli = str(copy)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.cpair, self.cpair_problem, self.cpair_tcp = self.build_cpair(run.logdir)

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
    def build_cpair(logdir):
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
        libdir = logdir / "lib"
        libdir.mkdir(parents=True, exist_ok=True)
        for f in BUILD.glob("librndz.so*"):
            dst = libdir / f.name
            if f.is_symlink():
                dst.symlink_to(os.readlink(f))
            else:
                shutil.copy2(f, dst)
        out = logdir / "cpair"
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
    def server_argv(self, impl, listens, sc=None):
        """`listens`: the addresses to serve on (several: --listen-addr / --listen repeated)."""
        if sc is not None and sc.raw_v1("server"):
            return [sys.executable, str(V1PEER), "udp-server", "--listen", listens[0]]
        if impl == "cli":
            relay = ["--relay-addr", sc.relay_address()] if sc is not None and sc.relay else []
            return [self.cli, "server"] + sum([["--listen-addr", a] for a in listens], []) + relay
        return [self.cpair, "server"] + sum([["--listen", a] for a in listens], [])

    def listener_argv(self, impl, transport, pid, server, sc=None):
        if sc is not None and sc.raw_v1("listener"):
            return [sys.executable, str(V1PEER), f"{transport}-listen", "--id", pid,
                    "--server", server]
        if impl == "cli":
            return [self.cli, "client", "--id", pid, "--server-addr", server] + \
                local_flags(sc) + tcp_flags(transport) + \
                list(sc.listener_flags if sc is not None else ())
        return [self.cpair, "listen", "--id", pid, "--server", server] + tcp_flags(transport)

    def connector_argv(self, impl, transport, cid, server, target, sc=None):
        if sc is not None and sc.raw_v1("connector"):
            return [sys.executable, str(V1PEER), f"{transport}-connect", "--id", cid,
                    "--server", server, "--target", target, "--timeout", str(CFG["timeout"])]
        if impl == "cli":
            # The same deadline as cpair's: the attempt's (connect, then reply).
            return [self.cli, "client", "--id", cid, "--server-addr", server,
                    "--remote-peer", target] + connect_timeout_flags(sc) + \
                local_flags(sc) + tcp_flags(transport)
        return [self.cpair, "connect", "--id", cid, "--server", server, "--target", target] + \
            connect_timeout_flags() + tcp_flags(transport)


def connect_timeout_flags(sc=None):
    """The connectors' --timeout (ms): the attempt's, or RNDZ_NATLAB_CONNECT_TIMEOUT's; none
    with 0 (the library's default), as in rows that must fail in time (`sc.refuse`)."""
    t = 0 if sc is not None and sc.refuse else CFG["connect_timeout"]
    if t == 0:
        return []
    return ["--timeout", str((CFG["timeout"] if t < 0 else t) * 1000)]


def tcp_flags(transport):
    if transport != "tcp":
        return []
    return ["--tcp"] + (["--tcp-rto-max", str(CFG["tcp_rto_max"])] if CFG["tcp_rto_max"] else [])


def local_flags(sc):
    """The CLI clients' --local-addr, where the scenario sets one."""
    return ["--local-addr", sc.local] if sc is not None and sc.local else []


def child_env():
    env = dict(os.environ)
    env.setdefault("RNDZ_LOG", "debug")
    return env
