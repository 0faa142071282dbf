#!/usr/bin/env python3
"""Two or more plumeway builds against each other, and nothing else: each
behind the same nginx backend as in compare.py, measured by wrk in turns,
the order reversed every round, for many short rounds. For changes too
small for compare.py's few rounds, whose medians move by more than the
change between runs on a shared machine.

    python3 bench/ab.py [--chain] [--rounds 12] [--seconds 3] [--connections 50,200] NAME=BINARY ...

Prints, per connection count, each build's median CPU µs per request
(user + system, from /proc/PID/stat) and requests/s, and for every build
after the first the median of its per-round difference from the first:
a difference measured in the same round is the figure to quote. Needs wrk
and nginx (bench/compare.sh installs them); stops what it started by PID.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import CHAIN, CHAIN_ROUTE, Proxy, free_port, nginx_backend, plumeway_conf, start, wait_port, wrk  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("builds", nargs="+", metavar="NAME=BINARY")
    ap.add_argument("--chain", action="store_true", help="every build with the 3-plugin chain")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--seconds", type=int, default=3, help="per wrk run")
    ap.add_argument("--connections", default="50,200")
    args = ap.parse_args()
    builds = [b.split("=", 1) for b in args.builds]
    plugins, route = (CHAIN, CHAIN_ROUTE) if args.chain else ("", "")
    procs = []
    with tempfile.TemporaryDirectory() as work, nginx_backend(work) as backend:
        try:
            proxies = []
            for name, binary in builds:
                port = free_port()
                conf = plumeway_conf(work, name, port, backend, None, plugins, route)
                p = start(procs, [os.path.abspath(binary), "run", conf, "--log", "warn"])
                proxies.append(Proxy(name, p.pid, port, port, port))
            for p in proxies:
                wait_port(p.http1)
            time.sleep(1)
            for p in proxies:
                wrk(p, 50, 1)
            for c in (int(c) for c in args.connections.split(",")):
                runs = {p.name: [] for p in proxies}
                for r in range(args.rounds):
                    for p in proxies if r % 2 == 0 else reversed(proxies):
                        runs[p.name].append(wrk(p, c, args.seconds))
                first = runs[proxies[0].name]
                print(f"\n{c} connections, {args.rounds} rounds of {args.seconds} s{' (3-plugin chain)' if args.chain else ''}:")
                for p in proxies:
                    mine = runs[p.name]
                    cpu = statistics.median(x["cpu"] for x in mine)
                    rps = statistics.median(x["rps"] for x in mine)
                    line = f"  {p.name:>12}  {cpu:6.2f} µs/req  {rps:9,.0f} req/s"
                    if mine is not first:
                        diffs = [a["cpu"] - b["cpu"] for a, b in zip(mine, first)]
                        wins = sum(d < 0 for d in diffs)
                        line += f"  {statistics.median(diffs):+.2f} µs against {proxies[0].name} (lower in {wins} of {len(diffs)} rounds)"
                    print(line, flush=True)
        finally:
            for p in reversed(procs):
                p.terminate()
            for p in procs:
                p.wait()


if __name__ == "__main__":
    main()
