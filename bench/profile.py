#!/usr/bin/env python3
"""Where plumeway's CPU goes under load, kernel included: `perf record`
samples the proxy while wrk drives it, as in compare.py (one nginx backend,
one worker, keep-alive, access log off).

    python3 bench/profile.py [--chain | --nginx] [--seconds 5] [--connections 50] [--keep DIR] [BINARY]

Prints the proxy's user and system CPU per request (from /proc/PID/stat),
perf's flat profile by symbol, kernel and user together, so a cost can be
told apart as instructions of ours or system calls, and (in a second run
of wrk) system calls, context switches and wake-ups per request, counted
by tracepoints. Samples are
taken by the `cpu-clock` software event, which works on virtual machines
without hardware counters. plumeway runs with `PLUMEWAY_PERF_MAP=1`, so
time inside a plugin is reported by the plugin's own function names
(wasmtime writes them to /tmp/perf-PID.map, removed at the end).
`--keep` leaves perf.data for `perf report`.
Needs perf (Debian's linux-perf), wrk and nginx; stops what it started by
PID.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import (  # noqa: E402
    CHAIN,
    CHAIN_ROUTE,
    PATH,
    RELEASE,
    cpu_seconds,
    free_port,
    nginx_backend,
    nginx_binary,
    nginx_conf,
    plumeway_conf,
    start,
    wait_port,
)


# The system calls a proxy makes per request on this path.
SYSCALLS = ["recvfrom", "read", "sendto", "write", "writev", "epoll_wait", "epoll_ctl", "futex", "madvise", "mprotect", "mmap", "munmap"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("binary", nargs="?", default=os.path.join(RELEASE, "plumeway"))
    parser.add_argument("--chain", action="store_true", help="with the 3-plugin chain")
    parser.add_argument("--nginx", action="store_true", help="profile nginx as the proxy instead, for comparison")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--keep", help="directory to leave perf.data in")
    parser.add_argument("--top", type=int, default=60, help="symbols to print")
    args = parser.parse_args()
    if args.keep:
        # perf record cannot write into a directory that is not there, and
        # fails quietly: the profile would come out empty.
        os.makedirs(args.keep, exist_ok=True)
    nginx = nginx_binary()
    procs = []
    with tempfile.TemporaryDirectory() as work, nginx_backend(work) as backend:
        try:
            port = free_port()
            if args.nginx:
                # nginx as the proxy, configured as compare.py measures it.
                upstream = f"upstream b {{ server 127.0.0.1:{backend}; keepalive 256; }}"
                location = 'location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; }'
                conf = nginx_conf(work, "nginx", f"{upstream} server {{ listen 127.0.0.1:{port}; {location} }}")
                proxy = start(procs, [nginx, "-c", conf, "-p", work])
            else:
                plugins, route = (CHAIN, CHAIN_ROUTE) if args.chain else ("", "")
                conf = plumeway_conf(work, "plumeway", port, backend, None, plugins, route)
                # Names the plugins' compiled functions for perf (/tmp/perf-PID.map).
                env = dict(os.environ, PLUMEWAY_PERF_MAP="1")
                proxy = start(procs, [args.binary, "run", conf, "--log", "warn"], env=env)
            wait_port(port)
            url = f"http://127.0.0.1:{port}{PATH}"
            # Warm up: pooled plugin instances, backend connections.
            subprocess.run(["wrk", "-t1", f"-c{args.connections}", "-d1s", url], capture_output=True, check=True)
            data = os.path.join(args.keep or work, "perf.data")
            perf = subprocess.Popen(
                ["perf", "record", "-e", "cpu-clock", "-F", "4999", "-g", "-p", str(proxy.pid), "-o", data],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            before = cpu_seconds(proxy.pid)
            out = subprocess.run(
                ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", url], capture_output=True, text=True, check=True
            ).stdout
            after = cpu_seconds(proxy.pid)
            perf.send_signal(2)
            if perf.wait() not in (0, -2) or not os.path.exists(data):
                sys.exit(f"perf record failed (exit {perf.returncode}); is perf (linux-perf) installed?")
            total = int(re.search(r"(\d+) requests in", out).group(1))
            user, system = ((a - b) * 1e6 / total for a, b in zip(after, before))
            print(f"{total} requests: {user:.2f} µs user + {system:.2f} µs system per request")
            report = subprocess.run(
                ["perf", "report", "-i", data, "--no-children", "--sort", "dso,symbol", "--stdio", "-g", "none", "--percent-limit", "0.3"],
                capture_output=True,
                text=True,
            ).stdout
            lines = [line.rstrip() for line in report.splitlines() if line.strip() and not line.startswith("#")]
            print("\n".join(lines[: args.top]))
            events = [f"syscalls:sys_enter_{name}" for name in SYSCALLS] + ["sched:sched_switch", "sched:sched_wakeup", "page-faults", "cpu-migrations"]
            stat = subprocess.Popen(
                ["perf", "stat", "-x", ",", "-e", ",".join(events), "-p", str(proxy.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            out = subprocess.run(
                ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", url], capture_output=True, text=True, check=True
            ).stdout
            stat.send_signal(2)
            counts = stat.communicate()[1]
            total = int(re.search(r"(\d+) requests in", out).group(1))
            print(f"\nper request, over {total} requests (the proxy's threads):")
            for line in counts.splitlines():
                fields = line.split(",")
                if len(fields) > 2 and fields[0].isdigit() and int(fields[0]) > 0:
                    print(f"  {int(fields[0]) / total:7.3f}  {fields[2].split(':')[-1]}")
        finally:
            for p in reversed(procs):
                p.terminate()
            for p in procs:
                p.wait()
                if not args.keep and os.path.exists(f"/tmp/perf-{p.pid}.map"):
                    os.remove(f"/tmp/perf-{p.pid}.map")


if __name__ == "__main__":
    main()
