#!/usr/bin/env python3
"""Cache misses per request at many connections, simulated by callgrind:
what a request costs in memory traffic once each connection's state has gone
cold while the others were served. Machines without hardware counters (the
virtual machines these benchmarks run on) cannot count misses; callgrind's
simulation is repeatable and needs none.

    python3 bench/cache.py [--connections 200] [--seconds 10] [--top 20] NAME=BINARY ...

Each build runs under `valgrind --tool=callgrind --cache-sim=yes` in front of
one nginx backend (as in compare.py, no plugins; a BINARY named `nginx` is
run as the proxy instead, configured as compare.py configures it), is warmed by wrk with
`--connections` connections, has its counters zeroed, then serves wrk for
`--seconds`. Prints, per request: instructions, first-level data misses
(D1, 32 KiB) and last-level data misses (a 512 KiB cache, one core's L2 on
the machine this was written on; where a core's L2 is larger, as the 2 MiB
of session 20's Xeon, these over-count, and fewer of them need not mean less
time: bench/RESULTS.md, session 20), and the functions with the most last-level misses, the
`memcpy` calls among them by caller. wrk opens its connections anew for
the counted run, so their accepts are in it, spread over `--seconds`
(`accept_loop`, which copies each new connection's future into its task).
The simulation covers the proxy's user code only: the kernel and the other
processes that share the real caches are not in it, so real misses are
more. Needs valgrind, wrk and nginx; stops what it started by PID.
"""

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import PATH, free_port, nginx_backend, nginx_conf, plumeway_conf, wait_listening  # noqa: E402

# Cache geometry: size, bytes per line... as valgrind takes it.
CACHES = ["--I1=65536,4,64", "--D1=32768,8,64", "--LL=524288,8,64"]


def run(work, name, binary, backend, connections, seconds):
    """Serves wrk under callgrind; returns the counted dump and the requests."""
    port = free_port()
    if os.path.basename(binary) == "nginx":
        # nginx as the proxy, set up as compare.py sets it up: one worker
        # process (here, no master), keep-alive to the backend.
        conf = nginx_conf(
            work,
            name,
            f"""upstream b {{ server 127.0.0.1:{backend}; keepalive 256; }}
  server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}""",
        )
        argv = [binary, "-c", conf, "-p", work]
    else:
        argv = [binary, "run", plumeway_conf(work, name, port, backend), "--log", "warn"]
    out = os.path.join(work, f"{name}.callgrind")
    proc = subprocess.Popen(
        # Names in full in each dump, so the counted one can be read alone.
        ["valgrind", "--tool=callgrind", "--cache-sim=yes", "--compress-strings=no", *CACHES, f"--callgrind-out-file={out}", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(proc, port, name)
        url = f"http://127.0.0.1:{port}{PATH}"
        wrk = ["wrk", "-t1", f"-c{connections}"]
        subprocess.run([*wrk, "-d4s", url], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "--zero", str(proc.pid)], check=True, capture_output=True)
        text = subprocess.run([*wrk, f"-d{seconds}s", url], check=True, capture_output=True, text=True).stdout
        subprocess.run(["callgrind_control", "--dump", str(proc.pid)], check=True, capture_output=True)
    finally:
        proc.terminate()
        proc.wait()
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    # The dump after the zeroing is the one with a numbered suffix.
    dump = sorted(p for p in os.listdir(work) if p.startswith(f"{name}.callgrind."))[0]
    return os.path.join(work, dump), requests


def read(path):
    """Self cost per function, and the cost of calls to `memcpy` per caller."""
    events, fn, callee, call_line = [], None, None, False
    own = collections.defaultdict(lambda: collections.Counter())
    memcpy = collections.defaultdict(lambda: collections.Counter())
    for line in open(path):
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("fn="):
            fn = line[3:].strip()
        elif line.startswith("cfn="):
            callee = line[4:].strip()
        elif line.startswith("calls="):
            call_line = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            costs = dict(zip(events, map(int, line.split()[1:])))
            if call_line:
                # The line after `calls=` is the call's inclusive cost.
                call_line = False
                if "memcpy" in callee:
                    memcpy[fn].update(costs)
            else:
                own[fn].update(costs)
    return own, memcpy


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("builds", nargs="+", metavar="NAME=BINARY")
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work, nginx_backend(work) as backend:
        for build in args.builds:
            name, binary = build.split("=", 1)
            path, n = run(work, name, binary, backend, args.connections, args.seconds)
            report(name, args.connections, n, *read(path), args.top)


def report(name, connections, n, own, memcpy, top):
    """Prints one build's misses per request: in all, by function, and in
    `memcpy` by caller."""
    total = sum(own.values(), collections.Counter())

    def ll(c):
        return (c["DLmr"] + c["DLmw"]) / n

    print(
        f"{name}, {connections} connections, {n} requests: per request {total['Ir'] / n:,.0f} instructions, "
        f"{(total['D1mr'] + total['D1mw']) / n:,.0f} D1 misses, {ll(total):,.0f} last-level misses"
    )
    print("  last-level misses per request, by function:")
    for fn, c in sorted(own.items(), key=lambda kv: ll(kv[1]), reverse=True)[:top]:
        print(f"  {ll(c):7.1f}  {c['Ir'] / n:7,.0f} instr  {fn[:110]}")
    print("  ... of which in memcpy, by caller:")
    for fn, c in sorted(memcpy.items(), key=lambda kv: ll(kv[1]), reverse=True)[:8]:
        print(f"  {ll(c):7.1f}  {c['Ir'] / n:7,.0f} instr  {fn[:110]}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
