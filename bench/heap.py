#!/usr/bin/env python3
"""What an idle keep-alive connection holds on the heap, by allocation
site: the proxy runs under `valgrind --tool=dhat` behind one nginx backend
(as in compare.py, no plugins), `--connections` connections each send one
request and stay open, and dhat's heap at its peak (all of them idle) is
divided by the connections. RSS per connection (compare.py) says how much;
this says what.

    python3 bench/heap.py [--connections 500] [--top 12] [--cookie BYTES] BINARY

Prints the bytes and blocks per connection of the allocation sites that
hold the most at the peak, each with the first frames of ours (or tokio's,
hyper's) that led to it. `--cookie` adds a `Cookie` field of that many
bytes to each request, for what a large head leaves behind. A site with
one block per connection is held by every idle connection. Needs valgrind
and nginx; stops what it started by PID.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import PATH, free_port, nginx_backend, plumeway_conf, wait_listening  # noqa: E402


def hold(port, n, cookie):
    """Opens `n` connections, each with one request answered; returns them."""
    head = f"GET {PATH} HTTP/1.1\r\nHost: x\r\n"
    if cookie:
        head += f"Cookie: {'c' * cookie}\r\n"
    request = (head + "\r\n").encode()
    held = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(request)
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = s.recv(65536)
            if not chunk:
                sys.exit("the proxy closed a connection before answering")
            got += chunk
        held.append(s)
    return held


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binary")
    ap.add_argument("--connections", type=int, default=500)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--cookie", type=int, default=0, metavar="BYTES")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work, nginx_backend(work) as backend:
        port = free_port()
        out = os.path.join(work, "dhat.json")
        proc = subprocess.Popen(
            ["valgrind", "--tool=dhat", f"--dhat-out-file={out}", args.binary, "run", plumeway_conf(work, "p", port, backend), "--log", "warn"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        held = []
        try:
            wait_listening(proc, port, "plumeway")
            held = hold(port, args.connections, args.cookie)
            time.sleep(2)
        finally:
            # dhat writes its file when the proxy exits; the connections
            # are still open, so the peak is with all of them idle.
            proc.terminate()
            proc.wait(timeout=300)
            for s in held:
                s.close()
        report(json.load(open(out)), args.connections, args.top)


def report(dhat, n, top):
    """Prints the sites holding the most at the peak, per connection."""
    frames = dhat["ftbl"]
    sites = sorted(dhat["pps"], key=lambda p: -p.get("gb", 0))
    total = sum(p.get("gb", 0) for p in sites)
    print(f"heap at its peak: {total / n:,.0f} bytes per idle connection ({n} held)")
    for p in sites[:top]:
        ours = [frames[i] for i in p["fs"] if any(k in frames[i] for k in ("plumeway", "tokio::", "hyper"))]
        print(f"{p.get('gb', 0) / n:9,.1f} B  {p.get('gbk', 0) / n:5.2f} blocks")
        for f in ours[:3]:
            # "0xADDR: function (in binary)": the function is what tells.
            print("             ", f.split(": ", 1)[-1].rsplit(" (in ", 1)[0][:120])


if __name__ == "__main__":
    main()
