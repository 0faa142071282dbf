#!/usr/bin/env python3
"""What each hook of the 3-plugin chain costs alone: one plumeway per route
(no plugins; only the rewrite; only the request filter; only the response
filter; all three), measured by wrk interleaved, in one run, in front of
one nginx backend as in compare.py.

    python3 bench/hooks.py [--seconds 5] [--rounds 5] [--connections 50] [BINARY]

Prints, per route, the median requests/s and proxy CPU per request (user
and system, from /proc/PID/stat) and the difference from no plugins. Needs
wrk and nginx (bench/compare.sh installs them); stops what it started by
PID.
"""

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import (  # noqa: E402
    CHAIN,
    CHAIN_ROUTE,
    RELEASE,
    Proxy,
    free_port,
    nginx_backend,
    plumeway_conf,
    start,
    wait_port,
    wrk,
)

# Each route's plugin keys; the plugins are CHAIN's, declared for all.
ROUTES = [
    ("no plugins", ""),
    ('rewrite = "strip"', 'rewrite = "strip"\n'),
    ('request = ["req"]', 'request = ["req"]\n'),
    ('response = ["resp"]', 'response = ["resp"]\n'),
    ("all three", CHAIN_ROUTE),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("binary", nargs="?", default=os.path.join(RELEASE, "plumeway"))
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    procs = []
    with tempfile.TemporaryDirectory() as work, nginx_backend(work) as backend:
        try:
            proxies = []
            for i, (name, keys) in enumerate(ROUTES):
                port = free_port()
                # Every proxy loads the same plugins, so they differ only in
                # which hooks the route calls.
                conf = plumeway_conf(work, f"p{i}", port, backend, None, CHAIN, keys)
                proc = start(procs, [args.binary, "run", conf, "--log", "warn"])
                wait_port(port)
                proxies.append(Proxy(name, proc.pid, port, None, None))
            for p in proxies:
                wrk(p, args.connections, 1)  # warm: plugin instances, backend connections
            runs = {p.name: [] for p in proxies}
            for r in range(args.rounds):
                for p in proxies:
                    runs[p.name].append(wrk(p, args.connections, args.seconds))
                print(f"round {r + 1} of {args.rounds} done", file=sys.stderr)
        finally:
            for p in reversed(procs):
                p.terminate()
            for p in procs:
                p.wait()

    def median(name, key):
        return statistics.median(run[key] for run in runs[name])

    base = median("no plugins", "cpu")
    print(f"wrk -t1 -c{args.connections}, {args.seconds} s per run, {args.rounds} interleaved rounds, medians\n")
    print("| route | requests/s | CPU µs/req | of which system | over no plugins |")
    print("|---|---|---|---|---|")
    for name, _ in ROUTES:
        cpu = median(name, "cpu")
        over = "" if name == "no plugins" else f"{cpu - base:+.2f}"
        print(f"| `{name}` | {median(name, 'rps'):,.0f} | {cpu:.2f} | {median(name, 'sys'):.2f} | {over} |")


if __name__ == "__main__":
    main()
