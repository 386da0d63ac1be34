#!/usr/bin/env python3
"""Property fuzzing of rndz-cli's argument parsing: run the built binary with mutated argument
vectors and check that it never crashes or hangs.

    Tests/fuzz/cli_args.py [--runs N | --seconds T] [--seed S] [--kill-after SECONDS] [--no-netns]

The binary is $RNDZ_CLI, else `swift build --show-bin-path`/rndz-cli (build it first: this
script does not build). Each run starts from a valid argument vector (SEEDS below) and applies
one to three mutations: drop, repeat, swap or insert arguments, replace a value with an odd one
(empty, huge numbers, bad addresses, long or non-UTF-8 ids, secret and credential files good,
short, malformed, missing, /dev/zero), byte-level edits, --flag=value joins and splits, bundled
short flags.

Properties, for every run:
  - no signal (a Swift runtime trap is SIGILL/SIGTRAP) and an exit status in {0, 1, 2};
  - it ends on its own within --kill-after seconds (default 2), unless it is a command that
    legitimately keeps running (a server, a listener, a connector without a short --timeout):
    those get SIGTERM once they print their ready line or the time is up, and must then end
    within 3 s with status 0 (or die of that SIGTERM, for a connector, which does not handle it).
  - a connector given --timeout MS ends within 2*MS + 2 s.

Addresses: loopback only. As root, the whole run happens in a new network namespace
(`unshare -n`, only `lo` up), so no mutated host name or address can reach any other network.
Without that (or with --no-netns), any argument that could name a host is checked, and replaced
unless it is rejected before name resolution or is a loopback address.

A rendezvous server, a UDP listener (fz-l) and a TCP listener (fz-t) run for the whole session
(the binary itself, on 127.0.0.1), so connectors can succeed too. Failures are printed with the
argument vector (as a Python list of bytes) and written to --out (default
build-fuzz/cli_args/failures.txt). Exit status: 0 if every run held the properties.
"""
import argparse
import hashlib
import hmac
import ipaddress
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
NETNS_MARK = "RNDZ_CLI_FUZZ_IN_NETNS"

# Flags that take a value (rndz-cli --help): the only ones whose next argument is consumed.
VALUE_FLAGS = {b"id", b"server-addr", b"remote-peer", b"local-addr", b"timeout", b"listen-addr",
               b"secret-file", b"credential-file"}
SWITCHES = [b"--tcp", b"--ipv6-only", b"-v", b"-vv", b"-q", b"-h", b"--help", b"--verbose",
            b"--quiet", b"-V", b"--version", b"--", b"-", b"---", b"--=", b"-x"]
COMMANDS = [b"server", b"client", b"credential", b"help", b"version", b"serve", b"CLIENT", b""]

ODD_VALUES = [
    b"", b" ", b"0", b"-1", b"1", b"+5", b"007", b"1e3", b"0x10", b"4294967296",
    b"9223372036854775807", b"9223372036854775808", b"-9223372036854775808",
    b"18446744073709551616", b"99999999999999999999999999",
    b"127.0.0.1", b"127.0.0.1:", b":80", b"[::1]", b"[::1]:", b"[::1]:99999", b"[::1",
    b"127.0.0.1:65535", b"127.0.0.1:65536", b"127.0.0.1:0", b"[::1]:0", b"[::ffff:127.0.0.1]:0",
    b"[fe80::1%99999999999]:1", b"[::1%lo]:1", b"localhost:0", b"127.1:1", b"127.0.0.1:-1",
    b"127.0.0.1:+1", b"127.0.0.1: 1", b"127.0.0.1:1 ", b"::1:80",
    b"x" * 255, b"x" * 256, b"x" * 5000, "é".encode(), "\U0001F600".encode(), b"\xff\xfe",
    b"\xc0\x80", b"\xed\xa0\x80", b"%s%n%x", b"--id", b"-v", b"=", b"a=b", b"\n", b"\t\r",
    # files (read only): {K} a secret, {s} a 8-byte one, {C} c1's credential, {B} a bad one
    b"{K}", b"{s}", b"{C}", b"{B}", b"/nonexistent/secret", b"/dev/null", b"/", b"/dev/zero",
]

# Valid argument vectors. {S}: the session's server; {F}: a loopback port nothing listens on;
# {K}, {C}: a secret file and c1's credential file under it.
SEEDS = [
    [b"--help"], [b"-h"], [b"--version"], [b"-V"], [b"version"], [b"help"],
    [b"help", b"server"], [b"help", b"client"], [b"server", b"--help"], [b"client", b"-h"],
    [b"server", b"--listen-addr", b"127.0.0.1:0"],
    [b"-v", b"server", b"--listen-addr=127.0.0.1:0"],
    [b"-q", b"server", b"--listen-addr", b"[::1]:0", b"--ipv6-only"],
    [b"client", b"--id", b"c1", b"--server-addr", b"{S}"],
    [b"client", b"--id", b"c1", b"--server-addr", b"{S}", b"--tcp"],
    [b"client", b"--id", b"c2", b"--server-addr", b"{S}", b"--remote-peer", b"fz-l",
     b"--timeout", b"500"],
    [b"client", b"--id", b"c2", b"--server-addr", b"{S}", b"--remote-peer", b"fz-t", b"--tcp",
     b"--timeout", b"500"],
    [b"client", b"--id", b"c3", b"--server-addr", b"{S}", b"--server-addr", b"127.0.0.1:{F}",
     b"--remote-peer", b"nobody", b"--timeout", b"300"],
    [b"-vv", b"client", b"--id=c4", b"--server-addr", b"{S}", b"--local-addr", b"127.0.0.1:0",
     b"--remote-peer", b"fz-l", b"--timeout=400"],
    [b"client", b"-v", b"--id", b"c5", b"--server-addr", b"[::1]:{F}", b"--remote-peer", b"x",
     b"--timeout", b"200"],
    [b"credential", b"--secret-file", b"{K}", b"--id", b"c1"],
    [b"help", b"credential"],
    [b"server", b"--listen-addr", b"127.0.0.1:0", b"--secret-file", b"{K}"],
    [b"client", b"--id", b"c1", b"--server-addr", b"{S}", b"--credential-file", b"{C}"],
    [b"client", b"--id", b"c1", b"--server-addr", b"{S}", b"--credential-file", b"{C}",
     b"--remote-peer", b"fz-l", b"--timeout", b"400"],
]


# --- what a run may legitimately do ---------------------------------------------------------

GLOBAL_LONG = {b"verbose", b"quiet", b"help", b"version"}
COMMAND_FLAGS = {  # name -> takes a value (rndz-cli help server / client / credential)
    b"server": {b"listen-addr": True, b"ipv6-only": False, b"secret-file": True},
    b"client": {b"id": True, b"server-addr": True, b"remote-peer": True, b"tcp": False,
                b"local-addr": True, b"timeout": True, b"credential-file": True},
    b"credential": {b"secret-file": True, b"id": True},
}


def classify(argv):
    """'fast' (help, version, usage error: ends at once), 'serve' (server or listener: runs
    until signalled), or ('connect', ms or None). Follows rndz-cli's documented grammar; where
    it cannot tell (a bad address, a bad --timeout) it answers the more lenient kind."""
    i = 0
    while i < len(argv) and argv[i].startswith(b"-") and len(argv[i]) > 1:
        a = argv[i]
        if a == b"--" or a in (b"--help", b"--version") or (
                not a.startswith(b"--") and (b"h" in a or b"V" in a)):
            return "fast"  # help, version, or "--" (then a usage error)
        if a.startswith(b"--") and a[2:] not in GLOBAL_LONG:
            return "fast"  # unknown option, or a switch given a value
        if not a.startswith(b"--") and any(c not in b"vq" for c in a[1:]):
            return "fast"
        i += 1
    if i >= len(argv) or argv[i] not in COMMAND_FLAGS:
        return "fast"
    cmd, known, flags, i = argv[i], COMMAND_FLAGS[argv[i]], {}, i + 1
    while i < len(argv):
        a = argv[i]
        i += 1
        if a == b"--":
            if i < len(argv):
                return "fast"
            break
        if a.startswith(b"--"):
            name, eq, val = a[2:].partition(b"=")
            if name in (b"verbose", b"quiet"):
                if eq:
                    return "fast"
                continue
            if name == b"help" or name not in known or (eq and not known[name]):
                return "fast"
            if known[name] and not eq:
                if i >= len(argv):
                    return "fast"
                val = argv[i]
                i += 1
            flags.setdefault(name, []).append(val if known[name] else None)
        elif a.startswith(b"-") and len(a) > 1:
            if any(c not in b"vq" for c in a[1:]):
                return "fast"  # -h (help) or an unknown short flag
        else:
            return "fast"  # a positional argument is a usage error
    if cmd == b"credential":
        return "fast"
    if cmd == b"server":
        return "serve"
    if b"id" not in flags or b"server-addr" not in flags:
        return "fast"
    if b"remote-peer" not in flags:
        return "serve"
    t = flags.get(b"timeout", [None])[-1]
    ms = int(t) if t is not None and re.fullmatch(rb"[0-9]{1,18}", t) else None
    return ("connect", ms if ms else None)


# --- loopback only, without a network namespace ---------------------------------------------

def loopback_ok(token):
    """True if rndz-cli could not reach anything but loopback with this text as an address:
    it is refused before any name lookup, or it is a numeric loopback address, or localhost."""
    t = token.partition(b"=")[2] if token.startswith(b"--") and b"=" in token else token
    if b":" not in t:
        return True  # no port: refused as an address before resolution
    try:
        s = t.decode()
    except UnicodeDecodeError:
        return True  # never a valid host name or address; refused
    if s.startswith("["):
        host, sep, port = s[1:].partition("]:")
        if not sep:
            return True
        host = host.split("%", 1)[0]
    else:
        host, _, port = s.rpartition(":")
        if ":" in host:
            return True  # bare IPv6: refused
    if not host or not port or not port.isdigit() or len(port) > 5:
        return True  # refused before resolution
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # would be looked up: not allowed outside a namespace
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


# --- mutations -----------------------------------------------------------------------------

def mutate_bytes(rng, b):
    b = bytearray(b)
    op = rng.randrange(5)
    if op == 0 and b:
        k = rng.randrange(len(b))
        del b[k:k + rng.randint(1, 3)]
    elif op == 1:
        k = rng.randint(0, len(b))
        b[k:k] = bytes([rng.choice(b"-=:[]%.0123456789abcfvqhx\xff\xc3 ")])
    elif op == 2 and b:
        k = rng.randrange(len(b))
        b[k] = rng.randrange(1, 256)
    elif op == 3 and b:
        b = b[:rng.randrange(len(b))]
    else:
        b = b + b
    return bytes(c for c in b if c) or b"x"  # argv cannot carry NUL


def mutate(rng, argv):
    argv = list(argv)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(10)
        k = rng.randrange(len(argv)) if argv else 0
        if op == 0 and argv:
            del argv[k]
        elif op == 1 and argv:
            argv.insert(k, argv[k])
        elif op == 2 and len(argv) > 1:
            j = rng.randrange(len(argv))
            argv[k], argv[j] = argv[j], argv[k]
        elif op == 3:
            argv.insert(rng.randint(0, len(argv)), rng.choice(
                SWITCHES + COMMANDS + [b"--" + f for f in VALUE_FLAGS]))
        elif op in (4, 5) and argv:
            argv[k] = rng.choice(ODD_VALUES)
        elif op == 6 and argv:
            argv[k] = mutate_bytes(rng, argv[k])
        elif op == 7 and k + 1 < len(argv) and argv[k].startswith(b"--"):
            argv[k:k + 2] = [argv[k] + b"=" + argv[k + 1]]  # join
        elif op == 8 and argv and argv[k].startswith(b"--") and b"=" in argv[k]:
            argv[k:k + 1] = list(argv[k].split(b"=", 1))  # split
        elif op == 9:
            argv.insert(rng.randint(0, len(argv)), b"-" + bytes(
                rng.choice(b"vqhVx") for _ in range(rng.randint(1, 4))))
    return argv


# --- running -------------------------------------------------------------------------------

def start_daemon(cli, args, ready):
    p = subprocess.Popen([cli] + args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    line = b""
    while time.monotonic() < deadline and ready not in line:
        r, _, _ = select.select([p.stdout], [], [], 0.2)
        if r:
            line = p.stdout.readline()
            if not line:
                break
    if ready not in line:
        p.kill()
        sys.exit(f"cli_args: {' '.join(args)} did not print {ready!r}")
    return p, line.decode().strip()


def free_port():
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run_one(cli, argv, kill_after):
    """Returns (outcome, detail); outcome 'ok' or a failure description."""
    cls = classify(argv)
    p = subprocess.Popen([cli.encode()] + argv, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    limit = kill_after
    if isinstance(cls, tuple) and cls[1] is not None and cls[1] <= 5000:
        limit = 2 * cls[1] / 1000 + 2
    start = time.monotonic()
    out = err = b""
    killed = False
    open_pipes = [p.stdout, p.stderr]
    while True:
        left = start + limit - time.monotonic()
        if left <= 0:
            break
        r, _, _ = select.select(open_pipes, [], [], min(left, 0.05))
        for f in r:
            chunk = os.read(f.fileno(), 65536)
            if not chunk:
                open_pipes.remove(f)
            elif f is p.stdout:
                out += chunk
            else:
                err += chunk
        if p.poll() is not None:
            break
        if not open_pipes:
            time.sleep(0.02)
        # A server or listener that says it is ready has shown what it does: stop it.
        if cls == "serve" and (b"listening on" in out or b"registered as" in out):
            break
    if p.poll() is None:
        killed = True
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(3)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            return "hang: still running 3 s after SIGTERM", err
    rest_out, rest_err = p.communicate()
    err += rest_err
    rc = p.returncode
    took = time.monotonic() - start
    if rc < 0 and not (killed and rc == -signal.SIGTERM):
        return f"died of signal {signal.Signals(-rc).name}", err
    if rc not in (0, 1, 2, -signal.SIGTERM):
        return f"exit status {rc}", err
    if killed:
        if cls == "fast":
            return f"hang: help/version/usage error still running after {took:.1f} s", err
        if isinstance(cls, tuple) and cls[1] is not None and cls[1] <= 5000:
            return f"hang: connector with --timeout {cls[1]} still running after {took:.1f} s", err
        if cls == "serve" and rc != 0:
            return f"exit status {rc} after SIGTERM (a server or listener ends with 0)", err
    return "ok", (rc, killed)


def enter_netns(args):
    """Re-run this script in a new network namespace with only loopback, if we can."""
    if os.environ.get(NETNS_MARK):
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        return True
    if args.no_netns or os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    env = dict(os.environ, **{NETNS_MARK: "1"})
    r = subprocess.run(["unshare", "-n", "--", sys.executable] + sys.argv, env=env)
    sys.exit(r.returncode)


def find_cli():
    if os.environ.get("RNDZ_CLI"):
        return os.environ["RNDZ_CLI"]
    r = subprocess.run(["swift", "build", "--show-bin-path"], cwd=ROOT, capture_output=True,
                       text=True)
    if r.returncode != 0:
        sys.exit("cli_args: set RNDZ_CLI, or build rndz-cli first (swift build)")
    return os.path.join(r.stdout.strip(), "rndz-cli")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=None,
                    help="run for this long instead of --runs times")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: time)")
    ap.add_argument("--kill-after", type=float, default=2.0)
    ap.add_argument("--no-netns", action="store_true", help="do not use a network namespace")
    ap.add_argument("--out", default=os.path.join(ROOT, "build-fuzz/cli_args/failures.txt"))
    args = ap.parse_args()
    in_netns = enter_netns(args)
    cli_src = find_cli()
    if not os.access(cli_src, os.X_OK):
        sys.exit(f"cli_args: {cli_src} is not an executable (build rndz-cli first)")
    # A private copy: a concurrent `swift build` may replace the binary mid-run.
    tmp = tempfile.mkdtemp(prefix="rndz-cli-fuzz.")
    cli = os.path.join(tmp, "rndz-cli")
    shutil.copy2(cli_src, cli)
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    budget = f"{args.seconds:.0f} s" if args.seconds else f"{args.runs} runs"
    print(f"cli_args: {cli_src}, {budget}, seed {seed}, "
          f"{'in a network namespace (loopback only)' if in_netns else 'loopback-checked args'}")

    server, line = start_daemon(cli, ["server", "--listen-addr", "127.0.0.1:0"], b"listening on")
    saddr = line.split("listening on", 1)[1].strip().encode()
    daemons = [server]
    daemons.append(start_daemon(cli, ["client", "--id", "fz-l", "--server-addr", saddr.decode()],
                                b"registered as")[0])
    daemons.append(start_daemon(cli, ["client", "--id", "fz-t", "--tcp", "--server-addr",
                                      saddr.decode()], b"registered as")[0])
    fport = str(free_port()).encode()
    files = {b"{K}": os.path.join(tmp, "secret"), b"{s}": os.path.join(tmp, "short"),
             b"{C}": os.path.join(tmp, "c1.cred"), b"{B}": os.path.join(tmp, "bad.cred")}
    secret = b"cli_args fuzz secret: 32 bytes.."
    with open(files[b"{K}"], "wb") as f:
        f.write(secret + b"\n")
    with open(files[b"{s}"], "wb") as f:
        f.write(b"8 bytes\n")
    with open(files[b"{C}"], "w") as f:  # HMAC-SHA256(secret, label || id), as SECURITY.md
        f.write(hmac.new(secret, b"rndz id credential v1c1", hashlib.sha256).hexdigest() + "\n")
    with open(files[b"{B}"], "w") as f:
        f.write("not hex at all\n")

    def fill(a):
        a = a.replace(b"{S}", saddr).replace(b"{F}", fport)
        for k, path in files.items():
            a = a.replace(k, path.encode())
        return a

    counts, failures = {}, []
    t0 = time.monotonic()
    try:
        n = 0
        while (time.monotonic() - t0 < args.seconds) if args.seconds else (n < args.runs):
            seed_argv = SEEDS[n] if n < len(SEEDS) else rng.choice(SEEDS)  # the seeds first
            base = [fill(a) for a in seed_argv]
            argv = base if n < len(SEEDS) else [fill(a) for a in mutate(rng, base)]
            if not in_netns:
                argv = [a if loopback_ok(a) else b"127.0.0.1:" + fport for a in argv]
            outcome, detail = run_one(cli, argv, args.kill_after)
            if outcome == "ok":
                rc, killed = detail
                key = f"exit {rc}" + (" after SIGTERM" if killed else "")
                counts[key] = counts.get(key, 0) + 1
            else:
                failures.append((argv, outcome, detail))
                print(f"cli_args: FAIL {outcome}: {argv!r}")
                print("    stderr: " + detail.decode(errors="replace")[-2000:].replace("\n", "\n    "))
            n += 1
    finally:
        for d in daemons:
            d.send_signal(signal.SIGTERM)
        for d in daemons:
            try:
                d.wait(3)
            except subprocess.TimeoutExpired:
                d.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    took = time.monotonic() - t0
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    kinds = {}
    for _, outcome, _ in failures:
        kind = re.sub(r"[0-9.]+ s\b", "N s", outcome)
        kinds[kind] = kinds.get(kind, 0) + 1
    print(f"cli_args: {n} runs in {took:.0f} s, seed {seed}: {summary}; {len(failures)} failed"
          + "".join(f"\n    {v} x {k}" for k, v in sorted(kinds.items())))
    if failures:
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "a") as f:
            for argv, outcome, err in failures:
                f.write(f"seed {seed}: {outcome}: {argv!r}\n")
        print(f"cli_args: failures appended to {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
