#!/usr/bin/env python3
"""plumeway side by side with nginx and HAProxy, measured in one run.

Run through `bash bench/compare.sh`, which installs the tools and builds
plumeway first. One backend (nginx, a 6-byte body, access log off) sits
behind nginx, HAProxy and plumeway (no plugins, and with the 3-plugin
chain), each with one worker and keep-alive to the backend. The load
generators run against them in interleaved rounds, and each proxy's CPU
time comes from /proc/PID/stat. Everything started here is stopped by PID.
"""

import argparse
import contextlib
import datetime
import os
import platform
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
TICKS = os.sysconf("SC_CLK_TCK")
PATH = "/api/hello"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """User and system CPU seconds the process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def listening(port):
    """Whether something accepts connections on `port` now."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if listening(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


# The 3-plugin chain: strip-prefix rewrite + a request header + a response
# header (also used by instructions.py).
CHAIN = """
[plugins.strip]
builtin = "strip-prefix"
config = { prefix = "/api" }
[plugins.req]
builtin = "headers"
config = { set = { "x-gateway" = "plumeway" } }
[plugins.resp]
builtin = "headers"
config = { set = { "x-content-type-options" = "nosniff" } }
"""
CHAIN_ROUTE = 'rewrite = "strip"\nrequest = ["req"]\nresponse = ["resp"]\n'


class Proxy:
    def __init__(self, name, pid, http1, h2, ws):
        self.name, self.pid, self.http1, self.h2, self.ws = name, pid, http1, h2, ws


def nginx_conf(work, name, body, connections=20000):
    path = os.path.join(work, f"{name}.conf")
    with open(path, "w") as f:
        f.write(
            f"""daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile {connections};
pid {work}/{name}.pid;
error_log {work}/{name}.error.log;
events {{ worker_connections {connections}; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  {body}
}}
"""
        )
    return path


def nginx_binary():
    """nginx on the PATH, else where Debian puts it (/usr/sbin is not on
    every user's PATH)."""
    found = subprocess.run(["sh", "-c", "command -v nginx"], capture_output=True).returncode == 0
    return "nginx" if found else "/usr/sbin/nginx"


def backend_conf(work, port):
    """The config of the backend every measurement runs against: one nginx
    answering every request on `port` with a 6-byte body."""
    return nginx_conf(work, "backend", f"server {{ listen 127.0.0.1:{port}; location / {{ return 200 'hello\\n'; }} }}")


@contextlib.contextmanager
def nginx_backend(work):
    """The backend (`backend_conf`) on a free port, which is yielded;
    stopped by PID at the end."""
    port = free_port()
    nginx = subprocess.Popen([nginx_binary(), "-c", backend_conf(work, port), "-p", work])
    try:
        wait_port(port)
        yield port
    finally:
        nginx.terminate()
        nginx.wait()


def wait_listening(proc, port, name):
    """Waits until `port` accepts, as long as `proc` lives: a proxy under
    valgrind takes many seconds to start, and one that fails never does."""
    while proc.poll() is None:
        if listening(port):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{name} exited before it listened")


def start(procs, argv, **kw):
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    procs.append(p)
    return p


def start_all(work, procs, nginx_bin, also=(), also_chain=False):
    backend = free_port()
    start(procs, [nginx_bin, "-c", backend_conf(work, backend), "-p", work])
    ws = subprocess.Popen([os.path.join(RELEASE, "ws-bench"), "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    procs.append(ws)
    ws_port = int(ws.stdout.readline())
    proxies = []

    n1, n2 = free_port(), free_port()
    nginx_locations = f"""location / {{ proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    location /ws {{ proxy_pass http://w; proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection "upgrade"; proxy_read_timeout 300s; }}"""
    conf = nginx_conf(
        work,
        "nginx",
        f"""upstream b {{ server 127.0.0.1:{backend}; keepalive 256; }}
  upstream w {{ server 127.0.0.1:{ws_port}; }}
  server {{ listen 127.0.0.1:{n1}; {nginx_locations} }}
  server {{ listen 127.0.0.1:{n2} http2; http2_max_concurrent_streams 100; {nginx_locations} }}""",
    )
    proxies.append(Proxy("nginx", start(procs, [nginx_bin, "-c", conf, "-p", work]).pid, n1, n2, n1))

    h1, h2 = free_port(), free_port()
    conf = os.path.join(work, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(
            f"""global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout tunnel 300s
  timeout http-keep-alive 300s
  http-reuse always
frontend h1
  bind 127.0.0.1:{h1}
  use_backend w if {{ path_beg /ws }}
  default_backend b
frontend h2
  bind 127.0.0.1:{h2} proto h2
  default_backend b
backend b
  server s1 127.0.0.1:{backend}
backend w
  server s1 127.0.0.1:{ws_port}
"""
        )
    proxies.append(Proxy("haproxy", start(procs, ["haproxy", "-f", conf, "-db"]).pid, h1, h2, h1))

    chain, chain_route = CHAIN, CHAIN_ROUTE
    variants = [
        ("plumeway", "", "", "plumeway"),
        ("plumeway+3", chain, chain_route, "plumeway"),
    ]
    # Other builds of plumeway, no plugins (and with the chain when asked),
    # for A/B runs while optimising.
    variants += [(name, "", "", path) for name, path in also]
    if also_chain:
        variants += [(f"{name}+3", chain, chain_route, path) for name, path in also]
    for name, plugins, chain_keys, binary in variants:
        port = free_port()
        conf = plumeway_conf(work, name, port, backend, ws_port, plugins, chain_keys)
        p = start(procs, [os.path.join(RELEASE, binary), "run", conf, "--log", "warn"])
        proxies.append(Proxy(name, p.pid, port, port, port))
    for port in [backend] + [p.http1 for p in proxies] + [p.h2 for p in proxies]:
        wait_port(port)
    return proxies, ws


def plumeway_conf(work, name, port, backend, ws_port=None, plugins="", chain_keys=""):
    """Writes the config plumeway is measured with: one worker, access log
    off, keep-alive to `backend`; a WebSocket route to `ws_port` when given.
    Returns its path."""
    ws_upstream, ws_route = "", ""
    if ws_port is not None:
        ws_upstream = f'[upstreams.w]\ntargets = ["http://127.0.0.1:{ws_port}"]\n'
        ws_route = '[[routes]]\nmatch = { path_prefix = "/ws" }\nupstream = "w"\nwebsocket = true\n'
    conf = os.path.join(work, f"{name}.toml")
    with open(conf, "w") as f:
        f.write(
            f"""[server]
listen = "127.0.0.1:{port}"
workers = 1
timeouts = {{ header_read = "300s" }}
limits = {{ max_connections = 20000 }}
[access_log]
enabled = false
[upstreams.b]
targets = ["http://127.0.0.1:{backend}"]
pool = {{ max_idle_per_endpoint = 256 }}
{ws_upstream}{plugins}
{ws_route}[[routes]]
upstream = "b"
{chain_keys}"""
        )
    return conf


def duration_us(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if m is None:
        raise RuntimeError(f"wrk printed a latency of {text!r}")
    value, unit = float(m.group(1)), m.group(2)
    return value * {"us": 1, "ms": 1e3, "s": 1e6, "m": 6e7}[unit]


def measure(pid, argv):
    before = cpu_seconds(pid)
    run = subprocess.run(argv, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {run.stderr.strip()}")
    after = cpu_seconds(pid)
    return run.stdout, (after[0] - before[0], after[1] - before[1])


def wrk(proxy, connections, seconds):
    out, (user, system) = measure(proxy.pid, ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{proxy.http1}{PATH}"])
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    p50 = duration_us(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = duration_us(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    return {"rps": rps, "p50": p50, "p99": p99, "cpu": (user + system) * 1e6 / max(total, 1), "sys": system * 1e6 / max(total, 1), "bad": int(bad.group(1)) if bad else 0, "errors": errors.group(1) if errors else ""}


def h2load(proxy, requests):
    out, (user, system) = measure(proxy.pid, ["h2load", "-n", str(requests), "-c", "10", "-m", "10", f"http://127.0.0.1:{proxy.h2}{PATH}"])
    rps = float(re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out).group(1))
    ok = int(re.search(r"requests: .* (\d+) succeeded", out).group(1))
    return {"rps": rps, "cpu": (user + system) * 1e6 / max(ok, 1), "ok": ok}


def websocket(proxy, seconds):
    try:
        out, (user, system) = measure(proxy.pid, [os.path.join(RELEASE, "ws-bench"), "load", f"ws://127.0.0.1:{proxy.ws}/ws", "50", str(seconds)])
    except RuntimeError as err:
        print(f"  websocket through {proxy.name}: {str(err).splitlines()[0]}", file=sys.stderr)
        return {"mps": 0.0, "cpu": 0.0}
    n, rate = out.split()
    return {"mps": float(rate), "cpu": (user + system) * 1e6 / max(int(n), 1)}


def idle_connections(proxy, n):
    before = rss_kib(proxy.pid)
    holder = subprocess.Popen([os.path.join(RELEASE, "idle-conns"), f"127.0.0.1:{proxy.http1}", str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = holder.stdout.readline().split()
        held = int(line[1]) if len(line) == 2 else 0
        time.sleep(1)
        after = rss_kib(proxy.pid)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    return {"held": held, "kib": (after - before) / max(held, 1), "before": before, "after": after}


def idle_rss_with_builtins(work, procs):
    port = free_port()
    conf = os.path.join(work, "builtins.toml")
    backend = free_port()
    plugins = {
        "strip": 'builtin = "strip-prefix"\nconfig = { prefix = "/api" }',
        "rx": 'builtin = "regex-rewrite"\nconfig = { pattern = "^/old/(.*)$", replacement = "/new/$1" }',
        "hdr": 'builtin = "headers"\nconfig = { set = { "x-a" = "b" } }',
        "cors": 'builtin = "cors"\nconfig = { allow_origins = ["https://example.com"] }',
        "key": 'builtin = "api-key"\nconfig = { keys = ["k"] }',
        "json": 'builtin = "json-errors"',
        "canary": 'builtin = "canary"\nconfig = { header = "x-canary", percent = 10 }',
    }
    text = f'[server]\nlisten = "127.0.0.1:{port}"\nworkers = 1\n[access_log]\nenabled = false\n[upstreams.b]\ntargets = ["http://127.0.0.1:{backend}"]\nbalancer = {{ plugin = "canary" }}\n'
    for name, body in plugins.items():
        text += f"[plugins.{name}]\n{body}\n"
    # Every plugin in a chain, so each is loaded and initialised.
    text += '[[routes]]\nmatch = { path_prefix = "/a" }\nupstream = "b"\nrewrite = "strip"\nrequest = ["cors", "key", "hdr"]\nresponse = ["cors"]\non_error = "json"\n'
    text += '[[routes]]\nupstream = "b"\nrewrite = "rx"\n'
    with open(conf, "w") as f:
        f.write(text)
    check = subprocess.run([os.path.join(RELEASE, "plumeway"), "check", conf], capture_output=True, text=True)
    if check.returncode != 0:
        return None, check.stderr.strip()
    p = start(procs, [os.path.join(RELEASE, "plumeway"), "run", conf, "--log", "warn"])
    wait_port(port)
    time.sleep(2)
    # Anonymous (private) and file-backed (the binary's own pages) apart.
    return (rss_kib(p.pid), rss_kib(p.pid, "RssAnon"), rss_kib(p.pid, "RssFile")), None


def paired(runs, base, key, op, fmt):
    """`op` of each round's run and the base's run in the same round: the
    median, with the lowest and highest in brackets."""
    values = sorted(op(a[key], b[key]) for a, b in zip(runs, base))
    return f"{fmt.format(statistics.median(values))} ({fmt.format(values[0])}–{fmt.format(values[-1])})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5, help="per wrk run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", default="10,50,200")
    ap.add_argument("--h2-requests", type=int, default=50000)
    ap.add_argument("--idle", type=int, default=10000, help="idle keep-alive connections to hold")
    ap.add_argument("--quick", action="store_true", help="HTTP/1.1 only: no h2load, WebSocket or memory")
    ap.add_argument("--also", action="append", default=[], metavar="NAME=PATH", help="another plumeway binary to compare (no plugins)")
    ap.add_argument("--also-chain", action="store_true", help="run the --also builds with the 3-plugin chain too")
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "bench-compare.md"))
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    nginx_bin = nginx_binary()

    lines = []

    def say(line=""):
        print(line, flush=True)
        lines.append(line)

    also = [a.split("=", 1) for a in args.also]
    work = tempfile.mkdtemp(prefix="plumeway-compare-")
    procs = []
    try:
        proxies, ws = start_all(work, procs, nginx_bin, also, args.also_chain)
        time.sleep(1)
        # Warm every proxy's pools (and plumeway's plugin instances).
        for p in proxies:
            wrk(p, 50, 1)
        conns = [int(c) for c in args.connections.split(",")]
        results = {}
        for c in conns:
            for r in range(args.rounds):
                # Each round starts with the next proxy: none always runs
                # just after another's load has warmed or cooled the caches.
                for p in proxies[r % len(proxies):] + proxies[: r % len(proxies)]:
                    results.setdefault((p.name, c), []).append(wrk(p, c, args.seconds))
                    print(f"  wrk c={c} round {r + 1} {p.name}: {results[(p.name, c)][-1]}", file=sys.stderr, flush=True)
        h2, wsr, idle = {}, {}, {}
        if not args.quick:
            for r in range(args.rounds):
                for p in proxies:
                    h2.setdefault(p.name, []).append(h2load(p, args.h2_requests))
            for r in range(args.rounds):
                for p in proxies:
                    wsr.setdefault(p.name, []).append(websocket(p, args.seconds))
            idle = {p.name: idle_connections(p, args.idle) for p in proxies if not p.name.endswith("+3")}
            builtin_rss, builtin_err = idle_rss_with_builtins(work, procs)

        med = lambda runs, key: statistics.median(run[key] for run in runs)
        say(f"# plumeway vs nginx vs HAProxy, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
        say()
        say(f"Machine: {os.cpu_count()} CPUs, {platform.platform()}. Command: `bash bench/compare.sh {' '.join(sys.argv[1:])}`.")
        say(f"wrk -t1, {args.seconds} s per run, {args.rounds} interleaved rounds, medians; path {PATH}; CPU = proxy user+system time / requests.")
        say()
        say("| proxy | conns | requests/s | p50 µs | p99 µs | CPU µs/req | of which system | non-2xx / socket errors |")
        say("|---|---|---|---|---|---|---|---|")
        for c in conns:
            for p in proxies:
                runs = results[(p.name, c)]
                errs = sum(r["bad"] for r in runs)
                sock = "; ".join(r["errors"] for r in runs if r["errors"])
                say(f"| {p.name} | {c} | {med(runs, 'rps'):,.0f} | {med(runs, 'p50'):.0f} | {med(runs, 'p99'):.0f} | {med(runs, 'cpu'):.2f} | {med(runs, 'sys'):.2f} | {errs} {sock} |")
        say()
        # This machine's speed drifts by up to 2× within minutes, the same
        # for every proxy: a ratio is taken within each round, between runs
        # seconds apart, and the median of those is the figure.
        say(f"Ratios plumeway/nginx, each the median of the {args.rounds} rounds' own ratios, the range in brackets (throughput: higher is better; CPU and latency: lower is better):")
        say()
        say("| plumeway | conns | throughput | CPU/req | p50 | p99 |")
        say("|---|---|---|---|---|---|")
        for c in conns:
            n = results[("nginx", c)]
            for name in [p.name for p in proxies if p.name.startswith("plumeway")]:
                r = results[(name, c)]
                cells = [paired(r, n, key, lambda a, b: a / b, "{:.2f}×") for key in ("rps", "cpu", "p50", "p99")]
                say(f"| {name} | {c} | " + " | ".join(cells) + " |")
        say()
        for base in ["plumeway"] + [name for name, _ in also]:
            for c in conns:
                if (f"{base}+3", c) not in results:
                    continue
                chained, plain = results[(f"{base}+3", c)], results[(base, c)]
                who = "" if base == "plumeway" else f" ({base})"
                added = paired(chained, plain, "cpu", lambda a, b: a - b, "{:+.2f}")
                over = paired(chained, results[("nginx", c)], "cpu", lambda a, b: a / b, "{:.2f}×")
                say(f"3-plugin chain at {c} connections{who}: {added} µs CPU per request over no plugins; {over} nginx's.")
        if not args.quick:
            say()
            say(f"HTTP/2 (h2load -n {args.h2_requests} -c 10 -m 10, h2c; HTTP/1.1 to the backend):")
            say()
            say("| proxy | requests/s | CPU µs/req |")
            say("|---|---|---|")
            for p in proxies:
                say(f"| {p.name} | {med(h2[p.name], 'rps'):,.0f} | {med(h2[p.name], 'cpu'):.2f} |")
            say()
            say(f"WebSocket echo (50 connections, 64-byte messages, one at a time each, {args.seconds} s):")
            say()
            say("| proxy | messages/s | CPU µs/message |")
            say("|---|---|---|")
            for p in proxies:
                say(f"| {p.name} | {med(wsr[p.name], 'mps'):,.0f} | {med(wsr[p.name], 'cpu'):.2f} |")
            say()
            say(f"Memory: {args.idle:,} idle keep-alive connections (one request each, then idle):")
            say()
            say("| proxy | held | RSS before KiB | RSS after KiB | KiB per connection |")
            say("|---|---|---|---|---|")
            for name, m in idle.items():
                say(f"| {name} | {m['held']:,} | {m['before']:,} | {m['after']:,} | {m['kib']:.1f} |")
            say()
            if builtin_rss is not None:
                total, anon, file = builtin_rss
                say(f"plumeway idle RSS with the 7 built-in plugins loaded: {total / 1024:.1f} MiB ({anon / 1024:.1f} MiB anonymous, {file / 1024:.1f} MiB file-backed: the binary's code and data pages).")
            else:
                say(f"plumeway with the built-in plugins did not start: {builtin_err}")
        ws.stdin.close()
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    subprocess.run(["rm", "-rf", work])
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
