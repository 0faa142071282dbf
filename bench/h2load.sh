#!/usr/bin/env bash
# HTTP/2 side by side: h2load (h2c, prior knowledge) against plumeway and
# nginx, each proxying to the same nginx backend (a 6-byte body) over
# HTTP/1.1 keep-alive, access logs off (nginx one worker; plumeway its
# default runtime, so compare CPU per request, not only throughput); interleaved
# rounds; proxy CPU per request from /proc/PID/stat.
#
#   bash bench/h2load.sh [REQUESTS] [CLIENTS] [STREAMS_PER_CLIENT]
#
# Installs Debian's nghttp2-client (h2load) and nginx-light if missing,
# builds plumeway in release mode, and stops everything it started by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

requests=${1:-50000}
clients=${2:-10}
streams=${3:-10}
rounds=3

missing=()
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
if ((${#missing[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
cargo build --release -q -p plumeway

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
backend_port=$(free_port)
nginx_port=$(free_port)
plumeway_port=$(free_port)

nginx_conf() { # name, body of the server block
  cat > "$work/$1.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $work/$1.pid;
error_log $work/$1.error.log;
events { worker_connections 4096; }
http {
  access_log off;
  $2
}
EOF
}
nginx_conf backend "server { listen 127.0.0.1:$backend_port; keepalive_requests 1000000; location / { return 200 'hello\n'; } }"
nginx_conf proxy "upstream b { server 127.0.0.1:$backend_port; keepalive 64; }
  server { listen 127.0.0.1:$nginx_port http2; keepalive_requests 1000000; http2_max_concurrent_streams 100;
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
cat > "$work/plumeway.toml" <<EOF
[server]
listen = "127.0.0.1:$plumeway_port"
[access_log]
enabled = false
[upstreams.b]
targets = ["http://127.0.0.1:$backend_port"]
[[routes]]
upstream = "b"
EOF

"$nginx_bin" -c "$work/backend.conf" -p "$work" & pids+=($!)
"$nginx_bin" -c "$work/proxy.conf" -p "$work" & pids+=($!); nginx_pid=$!
target/release/plumeway run "$work/plumeway.toml" --log warn & pids+=($!); plumeway_pid=$!
sleep 1

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks_per_s=$(getconf CLK_TCK)

run() { # name, pid, port
  local before after out rps
  before=$(cpu_ticks "$2")
  out=$(h2load -n "$requests" -c "$clients" -m "$streams" "http://127.0.0.1:$3/" 2>&1)
  after=$(cpu_ticks "$2")
  rps=$(echo "$out" | awk '/^finished in/ {print $4}')
  local ok
  ok=$(echo "$out" | awk '/^requests:/ {print $8}')
  local us
  us=$(python3 -c "print(f'{($after-$before)/$ticks_per_s*1e6/$requests:.2f}')")
  printf '%-10s %6s %12s %10s %14s\n' "$1" "$4" "$rps" "$ok" "$us"
}

echo "h2load -n $requests -c $clients -m $streams, h2c to the proxy, HTTP/1.1 keep-alive to one nginx backend"
printf '%-10s %6s %12s %10s %14s\n' proxy round 'requests/s' succeeded 'CPU µs/req'
for round in $(seq 1 $rounds); do
  run plumeway "$plumeway_pid" "$plumeway_port" "$round"
  run nginx "$nginx_pid" "$nginx_port" "$round"
done
