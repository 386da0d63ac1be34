"""The NAT lab's common ground: paths, the configuration (environment), logging, commands."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BUILD = ROOT / "build"
PROBE = HERE / "probe.py"
V1PEER = HERE / "v1peer.py"    # a raw rndz 0.1.5 peer and UDP server (the captured bytes)
DELAY = HERE / "delay.py"      # a user-space wire with a fixed delay (no netem here), and ping


# ---- configuration: the environment (README.md, "Knobs"); main() applies the command line ----
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
    # The relay matrix (every pair of NAT kinds, relay on): 20 per cell is the bar.
    "relay_repeats": env_int("RNDZ_NATLAB_RELAY_REPEATS", 5),
    # Port prediction (dd-a, dd-b, UDP): the bar is 9 in 10.
    "predict_repeats": env_int("RNDZ_NATLAB_PREDICT_REPEATS", 10),
    "loss": env_int("RNDZ_NATLAB_LOSS", 10),
    "loss_min": env_int("RNDZ_NATLAB_LOSS_MIN", 0),
    # The delay scenario: D ms one way on each router's WAN link (peer RTT 4D, server RTT 2D).
    "delay_ms": env_int("RNDZ_NATLAB_DELAY_MS", 25),
    "delay_repeats": env_int("RNDZ_NATLAB_DELAY_REPEATS", 10),
    "timeout": env_int("RNDZ_NATLAB_TIMEOUT", 20),
    # The connectors' own --timeout, seconds: -1 the attempt timeout above; 0 none given (the
    # library's default, as a user who gives none gets it).
    "connect_timeout": env_int("RNDZ_NATLAB_CONNECT_TIMEOUT", -1),
    "tcp": truthy(os.environ.get("RNDZ_NATLAB_TCP", "1")),
    # TCP rows: the peers' connections keep TCP's retransmission timeout at most this many ms
    # (--tcp-rto-max; 0: the kernel's default once connected).
    "tcp_rto_max": env_int("RNDZ_NATLAB_TCP_RTO_MAX", 0),
    "keep_logs": truthy(os.environ.get("RNDZ_NATLAB_KEEP_LOGS")),
    "verbose": truthy(os.environ.get("RNDZ_NATLAB_VERBOSE")),
    "only": [s for s in os.environ.get("RNDZ_NATLAB_ONLY", "").split(",") if s],
}


# ---- errors, logging, commands --------------------------------------------------------------
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


def wait_until(pred, timeout, step=0.03, alive=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        if alive is not None and alive.poll() is not None:
            return False
        time.sleep(step)
    return pred()


def last_json(text):
    """The JSON object on the last line of `text` (probe.py and delay.py --ping end with one)."""
    return json.loads(text.strip().splitlines()[-1])
