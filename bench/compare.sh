#!/usr/bin/env bash
# plumeway side by side with nginx and HAProxy, in one run: HTTP/1.1 (wrk)
# at 10, 50 and 200 connections, HTTP/2 (h2load), WebSocket echo, idle
# memory and memory per idle keep-alive connection. Prints one table with
# the ratios plumeway/nginx and writes it to target/bench-compare.md.
#
#   bash bench/compare.sh [--seconds 5] [--rounds 3] [--connections 10,50,200] [--idle 10000]
#
# A/B runs while optimising: `--quick` (HTTP/1.1 only), `--also NAME=PATH`
# (another plumeway binary, no plugins) and `--also-chain` (those builds
# with the 3-plugin chain too).
#
# Installs Debian's nginx-light, haproxy, wrk and nghttp2-client (h2load)
# when missing, builds plumeway and the bench tools in release mode, and
# stops everything it started by PID. Takes about 5 minutes with the
# defaults, plus the build.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
export PATH="$PATH:/usr/sbin"
cargo build --release -q -p plumeway -p plumeway-bench
exec python3 bench/compare.py "$@"
