#!/usr/bin/env python3
"""The latency tail, plumeway against nginx: both in front of the same nginx
backend as in compare.py, measured by wrk in turns, the order reversed
every round, for many short rounds. compare.py's p99 is a median of few
rounds, and on this machine one round's p99 moves by ±30%; this takes
more rounds and reads p90, p99 and p99.9 from wrk's own histogram (a Lua
`done` hook), where `--latency` prints only up to p99.

    python3 bench/tail.py [--chain] [--rounds 10] [--seconds 3] [--connections 10,50,200] NAME=BINARY ...

Prints, per connection count, each proxy's median requests/s, p50, p90,
p99, p99.9 (µs) and CPU µs per request, then for each plumeway build the
median of its per-round ratios to nginx, with the rounds' p99 ratios. Needs
wrk and nginx (bench/compare.sh installs them); stops what it started by
PID.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import (  # noqa: E402
    CHAIN,
    CHAIN_ROUTE,
    PATH,
    free_port,
    measure,
    nginx_backend,
    nginx_binary,
    nginx_conf,
    plumeway_conf,
    start,
    wait_port,
)

# wrk's `done` hook: requests, duration and the percentiles in µs, then
# the failed requests (non-2xx/3xx, and socket errors, whose requests are
# missing from the histogram), on one line.
REPORT = """done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("TAIL %d %d %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max,
    e.status + e.connect + e.read + e.write + e.timeout))
end
"""

COLUMNS = ["req/s", "p50", "p90", "p99", "p99.9", "max", "CPU µs/req"]


def run(pid, port, connections, seconds, script):
    """One wrk run: the columns of COLUMNS."""
    out, cpu = measure(pid, ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", script, f"http://127.0.0.1:{port}{PATH}"])
    line = next((line for line in out.splitlines() if line.startswith("TAIL ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no report for port {port}: {out!r}")
    requests, duration, p50, p90, p99, p999, top, failed = map(int, line.split()[1:])
    if requests == 0 or failed:
        raise RuntimeError(f"port {port}: {requests} requests, {failed} failed or errors")
    return [requests / duration * 1e6, p50, p90, p99, p999, top, sum(cpu) / requests * 1e6]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("builds", nargs="+", metavar="NAME=BINARY")
    ap.add_argument("--chain", action="store_true", help="plumeway with the 3-plugin chain")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seconds", type=int, default=3, help="per wrk run")
    ap.add_argument("--connections", default="10,50,200")
    args = ap.parse_args()
    builds = [b.split("=", 1) for b in args.builds]
    names = [b[0] for b in builds]
    if any(len(b) != 2 for b in builds) or "nginx" in names or len(set(names)) != len(names):
        ap.error("builds are NAME=BINARY, with names of their own other than nginx")
    plugins, route = (CHAIN, CHAIN_ROUTE) if args.chain else ("", "")
    procs = []
    with tempfile.TemporaryDirectory() as work, nginx_backend(work) as backend:
        try:
            script = os.path.join(work, "tail.lua")
            with open(script, "w") as f:
                f.write(REPORT)
            port = free_port()
            conf = nginx_conf(
                work,
                "nginx",
                f"""upstream b {{ server 127.0.0.1:{backend}; keepalive 256; }}
  server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}""",
            )
            proxies = [("nginx", start(procs, [nginx_binary(), "-c", conf, "-p", work]).pid, port)]
            for name, binary in builds:
                port = free_port()
                conf = plumeway_conf(work, name, port, backend, None, plugins, route)
                proxies.append((name, start(procs, [os.path.abspath(binary), "run", conf, "--log", "warn"]).pid, port))
            for _, _, port in proxies:
                wait_port(port)
            time.sleep(1)
            for _, pid, port in proxies:
                run(pid, port, 50, 1, script)
            for c in (int(c) for c in args.connections.split(",")):
                runs = {name: [] for name, _, _ in proxies}
                for r in range(args.rounds):
                    for name, pid, port in proxies if r % 2 == 0 else reversed(proxies):
                        runs[name].append(run(pid, port, c, args.seconds, script))
                chain = " (plumeway with the 3-plugin chain)" if args.chain else ""
                print(f"\n{c} connections, {args.rounds} rounds of {args.seconds} s{chain}; medians, latencies in µs:")
                print(f"{'':12}" + "".join(f"{col:>12}" for col in COLUMNS))
                for name, rows in runs.items():
                    medians = [statistics.median(col) for col in zip(*rows)]
                    print(f"{name:12}" + "".join(f"{m:12,.0f}" for m in medians[:-1]) + f"{medians[-1]:12.2f}")
                base = runs["nginx"]
                for name, rows in runs.items():
                    if name == "nginx":
                        continue
                    ratios = [[mine / theirs for mine, theirs in zip(m, t)] for m, t in zip(rows, base)]
                    print(f"{name + '/nginx':12}" + "".join(f"{statistics.median(col):11.2f}×" for col in zip(*ratios)))
                    print(f"{'':12}p99 by round: " + " ".join(f"{r[3]:.2f}" for r in ratios))
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


if __name__ == "__main__":
    main()
