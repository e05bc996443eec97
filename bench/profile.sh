#!/usr/bin/env bash
# Instructions per request of piko-server and piko-sidecar, each under callgrind in turn,
# for a fixed number of 1 KiB keep-alive GETs over HTTP/1.1 and over h2c (h2load -n).
# Instruction counts are stable on a shared machine, unlike wall-clock figures.
# See docs/benchmarks.md, "Per-request cost: profile".
#
# Usage: bench/profile.sh [BIN_DIR]     (default: build/bin)
#
# Environment (defaults in brackets):
#   REQUESTS [20000]   requests counted per protocol (after a 2,000-request warm-up)
#   CONNS [50]         HTTP/1.1 connections (h2load --h1 -c)
#   H2_CLIENTS [10]  H2_STREAMS [10]   h2c connections and streams per connection
#   SERVER_FLAGS, SIDECAR_FLAGS [empty]   extra flags for the two processes, e.g.
#                      SERVER_FLAGS="--log.access=false" to measure without the access log
#   OUT_DIR [unset]    keep the callgrind output files there (callgrind_annotate reads them)
set -euo pipefail
# shellcheck source=scripts/proc.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/proc.sh"

bin_dir="${1:-build/bin}"
REQUESTS="${REQUESTS:-20000}"
CONNS="${CONNS:-50}"
H2_CLIENTS="${H2_CLIENTS:-10}"
H2_STREAMS="${H2_STREAMS:-10}"
SERVER_FLAGS="${SERVER_FLAGS:-}"
SIDECAR_FLAGS="${SIDECAR_FLAGS:-}"
OUT_DIR="${OUT_DIR:-}"
HEADER="x-piko-endpoint: bench"

log() { printf 'profile: %s\n' "$*" >&2; }
die() {
    log "$*"
    exit 1
}
for tool in valgrind callgrind_control h2load nginx curl python3; do
    command -v "$tool" >/dev/null || die "$tool not found"
done

work="$(mktemp -d "${TMPDIR:-/tmp}/piko-profile.XXXXXX")"
pids=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ "${#pids[@]}" -eq 0 ] || stop_pids "${pids[@]}"
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_ok() {
    local tries=$(($1 * 10))
    shift
    while [ "$tries" -gt 0 ]; do
        curl -fsS -o /dev/null --max-time 2 "$@" 2>/dev/null && return 0
        sleep 0.1
        tries=$((tries - 1))
    done
    return 1
}

read -r svc_port proxy_port upstream_port admin_port scadmin_port < <(free_ports 5)

mkdir -p "$work/www" "$work/nginx/tmp"
head -c 1024 /dev/zero | tr '\0' 'x' >"$work/www/1k.bin"
nginx_user=""
if [ "$(id -u)" -eq 0 ]; then nginx_user="user root;"; fi
cat >"$work/nginx/nginx.conf" <<CONF
$nginx_user
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $work/nginx/tmp/body;
    proxy_temp_path $work/nginx/tmp/proxy;
    fastcgi_temp_path $work/nginx/tmp/fastcgi;
    uwsgi_temp_path $work/nginx/tmp/uwsgi;
    scgi_temp_path $work/nginx/tmp/scgi;
    server { listen 127.0.0.1:$svc_port; root $work/www; }
}
CONF
nginx -p "$work/nginx" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf" \
    >"$work/nginx/stdout.log" 2>&1 &
pids+=($!)
wait_ok 10 "http://127.0.0.1:$svc_port/1k.bin" || die "nginx did not start"

# run_once WHICH: starts the server and the sidecar, WHICH (server|sidecar) under callgrind,
# and prints "PROTOCOL Ir/request" for HTTP/1.1 and h2c.
run_once() {
    local which="$1" vg_server=() vg_sidecar=() vg=() target_pid proto out ir
    vg=(valgrind --tool=callgrind --callgrind-out-file="$work/cg.$which.%p"
        --collect-atstart=yes --dump-instr=no)
    if [ "$which" = server ]; then vg_server=("${vg[@]}"); else vg_sidecar=("${vg[@]}"); fi
    # shellcheck disable=SC2086
    "${vg_server[@]}" "$bin_dir/piko-server" \
        --proxy.bind-addr "127.0.0.1:$proxy_port" \
        --upstream.bind-addr "127.0.0.1:$upstream_port" \
        --admin.bind-addr "127.0.0.1:$admin_port" \
        --grace-period 1s --log.level warn $SERVER_FLAGS >"$work/server.log" 2>&1 &
    local server_pid=$!
    pids+=("$server_pid")
    wait_ok 60 "http://127.0.0.1:$admin_port/health" || die "piko-server did not start"
    # shellcheck disable=SC2086
    "${vg_sidecar[@]}" "$bin_dir/piko-sidecar" \
        --connect.url "http://127.0.0.1:$upstream_port" \
        --endpoint "bench=127.0.0.1:$svc_port" \
        --admin.bind-addr "127.0.0.1:$scadmin_port" \
        --grace-period 1s --local.max-idle 64 --log.level warn $SIDECAR_FLAGS \
        >"$work/sidecar.log" 2>&1 &
    local sidecar_pid=$!
    pids+=("$sidecar_pid")
    wait_ok 60 "http://127.0.0.1:$scadmin_port/ready" || die "piko-sidecar not ready"
    wait_ok 30 -H "$HEADER" "http://127.0.0.1:$proxy_port/1k.bin" || die "no answer through Piko"
    if [ "$which" = server ]; then target_pid="$server_pid"; else target_pid="$sidecar_pid"; fi
    local url="http://127.0.0.1:$proxy_port/1k.bin"
    for proto in HTTP/1.1 h2c; do
        local args=(-c"$H2_CLIENTS" -m"$H2_STREAMS")
        if [ "$proto" = HTTP/1.1 ]; then args=(--h1 -c"$CONNS"); fi
        h2load "${args[@]}" -n 2000 -H "$HEADER" "$url" >/dev/null 2>&1 || die "warm-up failed"
        callgrind_control -z "$target_pid" >/dev/null 2>&1
        out="$(h2load "${args[@]}" -n "$REQUESTS" -H "$HEADER" "$url" 2>&1)" \
            || die "h2load failed: $out"
        grep -q " $REQUESTS succeeded, 0 failed, 0 errored" <<<"$out" \
            || die "h2load: not every request succeeded: $out"
        local slug="${proto//\//}" file="" tries=300
        # Each dump is a new file, <out-file>.<n>; it is complete once its totals are in.
        local before
        before="$(find "$work" -name "cg.$which.$target_pid.*" | wc -l)"
        callgrind_control -d "$slug" "$target_pid" >/dev/null 2>&1
        while [ "$tries" -gt 0 ]; do
            if [ "$(find "$work" -name "cg.$which.$target_pid.*" | wc -l)" -gt "$before" ]; then
                file="$(ls -t "$work/cg.$which.$target_pid".* | head -n 1)"
                grep -q '^totals:' "$file" && break
            fi
            sleep 0.1
            tries=$((tries - 1))
        done
        [ "$tries" -gt 0 ] || die "no callgrind dump from $which"
        ir="$(awk '/^summary:/ { print $2; exit }' "$file")"
        printf '%s\t%s\t%s\n' "$which" "$proto" "$((ir / REQUESTS))"
        if [ -n "$OUT_DIR" ]; then
            mkdir -p "$OUT_DIR"
            cp "$file" "$OUT_DIR/callgrind.$which.$slug.out"
        fi
    done
    stop_pids "$sidecar_pid" "$server_pid"
    pids=("${pids[0]}")
}

log "$REQUESTS requests per protocol; HTTP/1.1: h2load --h1 -c$CONNS; h2c: -c$H2_CLIENTS -m$H2_STREAMS"
printf 'process\tprotocol\tIr/request\n'
run_once server
run_once sidecar
