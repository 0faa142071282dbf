#!/usr/bin/env python3
"""Instructions per request, counted by callgrind: repeatable for the same
binary and inputs, whatever else the machine is doing, so small changes on
the hot path show where wall-clock runs are noise.

    python3 bench/instructions.py [--chain] [--requests 3000] [--keep DIR] NAME=BINARY ...

Each build runs under `valgrind --tool=callgrind` in front of one nginx
backend (as in compare.py). One keep-alive connection sends `--warmup`
GETs, the counters are zeroed, then `--requests` GETs one after another;
the instructions of the whole process (every thread) are divided by the
requests. Needs valgrind (callgrind_control) and nginx; stops what it
started by PID.

With `--chain`, through compare.py's 3-plugin chain. Valgrind cannot map
the thousand memory slots wasmtime's pooling allocator reserves ("failed
to create memory pool mapping"), so the proxy is started with
PLUMEWAY_POOL_SLOTS=8 (the same compiled code, a smaller reservation), and
each plugin's time limit is raised to a minute: under valgrind its init
takes seconds. With PLUMEWAY_PERF_MAP=1 in the environment, the plugins'
functions are named in /tmp/perf-PID.map, where the `???:0x…` entries of
the callgrind file can be looked up.
"""

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import CHAIN, CHAIN_ROUTE, free_port, nginx_backend, plumeway_conf, wait_listening  # noqa: E402

REQUEST = b"GET /api/hello HTTP/1.1\r\nHost: bench\r\n\r\n"


def get_all(sock, n):
    """Sends `n` GETs one after another, reading each whole response."""
    buf = b""
    for _ in range(n):
        sock.sendall(REQUEST)
        while True:
            head_end = buf.find(b"\r\n\r\n")
            if head_end >= 0:
                m = re.search(rb"content-length: (\d+)", buf[:head_end].lower())
                total = head_end + 4 + int(m.group(1))
                if len(buf) >= total:
                    assert buf.startswith(b"HTTP/1.1 200"), buf[:100]
                    buf = buf[total:]
                    break
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("the proxy closed the connection")
            buf += chunk


def measure(work, keep, name, binary, backend, warmup, requests, chain):
    port = free_port()
    if chain:
        # Under valgrind a plugin's init takes seconds, not microseconds.
        plugins = re.sub(r"(?m)^(config = .*)$", r'\1\nlimits = { time = "60s" }', CHAIN)
        conf = plumeway_conf(work, name, port, backend, plugins=plugins, chain_keys=CHAIN_ROUTE)
    else:
        conf = plumeway_conf(work, name, port, backend)
    out = os.path.join(keep or work, f"{name}.callgrind")
    log = open(os.path.join(work, f"{name}.log"), "w")
    proc = subprocess.Popen(
        # Names written out in full in every dump: the counted dump is the
        # second, and callgrind_annotate cannot read it alone otherwise.
        ["valgrind", "--tool=callgrind", "--compress-strings=no", f"--callgrind-out-file={out}", binary, "run", conf, "--log", "warn"],
        stdout=log,
        stderr=log,
        env={**os.environ, "PLUMEWAY_POOL_SLOTS": "8"},
    )
    try:
        wait_listening(proc, port, name)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            get_all(sock, warmup)
            subprocess.run(["callgrind_control", "--zero", str(proc.pid)], check=True, capture_output=True)
            get_all(sock, requests)
            subprocess.run(["callgrind_control", "--dump", str(proc.pid)], check=True, capture_output=True)
    except Exception:
        with open(log.name) as f:
            sys.stderr.write(f.read()[-3000:])
        raise
    finally:
        proc.terminate()
        proc.wait()
        log.close()
    total = 0
    # The dump after the zeroing is the one with a numbered suffix.
    folder = keep or work
    for path in sorted(p for p in os.listdir(folder) if p.startswith(f"{name}.callgrind.")):
        with open(os.path.join(folder, path)) as f:
            for line in f:
                if line.startswith("summary:") or line.startswith("totals:"):
                    total = int(line.split()[1])
                    break
        break
    return total / requests


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("builds", nargs="+", metavar="NAME=BINARY")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--chain", action="store_true", help="through the 3-plugin chain")
    ap.add_argument("--keep", metavar="DIR", help="keep the callgrind files here, for callgrind_annotate")
    args = ap.parse_args()
    if args.keep:
        # callgrind cannot write into a directory that is not there.
        os.makedirs(args.keep, exist_ok=True)
    with tempfile.TemporaryDirectory() as work, nginx_backend(work) as backend:
        for build in args.builds:
            name, binary = build.split("=", 1)
            per = measure(work, args.keep, name, binary, backend, args.warmup, args.requests, args.chain)
            print(f"{name}: {per:,.0f} instructions per request", flush=True)
            time.sleep(0.1)


if __name__ == "__main__":
    main()
