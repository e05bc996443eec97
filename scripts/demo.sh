#!/usr/bin/env bash
# The Piko demo, run by `make demo`: a sample service that never opens a public port, a
# piko-server, and a piko-sidecar that exposes the service as endpoint `my-service`. Then
# one request goes through the proxy port and the answer is shown.
#
# Usage: scripts/demo.sh [BIN_DIR]       (default: build/bin)
#   DEMO_KEEP=1 scripts/demo.sh build/bin   keeps everything running until Ctrl-C.
#
# Exits non-zero if anything fails to start or the request does not come back with 200.
set -euo pipefail
# shellcheck source=scripts/proc.sh
source "$(dirname "${BASH_SOURCE[0]}")/proc.sh"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin_dir="${1:-build/bin}"
server_bin="$bin_dir/piko-server"
sidecar_bin="$bin_dir/piko-sidecar"
keep="${DEMO_KEEP:-0}"
endpoint="my-service"

if [ -t 1 ]; then
    bold=$'\033[1m'
    green=$'\033[32m'
    red=$'\033[31m'
    reset=$'\033[0m'
else
    bold="" green="" red="" reset=""
fi

heading() { printf '\n%s==> %s%s\n' "$bold" "$*" "$reset"; }
info() { printf '    %s\n' "$*"; }
fail() {
    printf '\n%sdemo: %s%s\n' "$red" "$*" "$reset" >&2
    exit 1
}

for f in "$server_bin" "$sidecar_bin"; do
    [ -x "$f" ] || fail "$f not found or not executable (build first: make build)"
done
command -v curl >/dev/null || fail "curl is needed (scripts/install-deps.sh demo)"
command -v python3 >/dev/null || fail "python3 is needed (scripts/install-deps.sh demo)"

work="$(mktemp -d "${TMPDIR:-/tmp}/piko-demo.XXXXXX")"
pids=()
ok=0

# Stop children in reverse start order (sidecar, server, service): TERM, then KILL
# whatever is still there after a few seconds.
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ "${#pids[@]}" -eq 0 ] || stop_pids "${pids[@]}"
    if [ "$ok" -eq 1 ]; then
        rm -rf "$work"
    else
        local log
        for log in "$work"/*.log; do
            [ -s "$log" ] || continue
            printf '\n--- last lines of %s ---\n' "$log" >&2
            tail -n 20 "$log" >&2
        done
        printf '\ndemo: logs kept in %s\n' "$work" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Prints free loopback TCP ports, one per argument. A port is the argument itself when
# it is free, else one the kernel picks. All sockets stay open until every port is
# chosen, so the ports are distinct.
pick_ports() {
    python3 - "$@" <<'EOF'
import socket, sys
held, ports = [], []
for want in map(int, sys.argv[1:]):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", want))
    except OSError:
        s.bind(("127.0.0.1", 0))
    held.append(s)
    ports.append(s.getsockname()[1])
print(" ".join(map(str, ports)))
EOF
}

# wait_http URL SECONDS PID: waits until URL answers 200, failing early if PID died.
wait_http() {
    local url="$1" seconds="$2" pid="$3" tries
    tries=$((seconds * 10))
    while [ "$tries" -gt 0 ]; do
        if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
        tries=$((tries - 1))
    done
    return 1
}

read -r svc_port proxy_port upstream_port admin_port sidecar_admin_port \
    < <(pick_ports 8080 8000 8001 8002 5000)

heading "Piko demo"
info "binaries: $bin_dir   logs: $work"

heading "Starting the sample service (scripts/demo_service.py)"
python3 "$here/demo_service.py" --host 127.0.0.1 --port "$svc_port" >"$work/service.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$svc_port/" 10 "${pids[-1]}" || fail "the sample service did not start"
info "listening on 127.0.0.1:$svc_port (loopback only: nobody outside can reach it)"

heading "Starting piko-server"
"$server_bin" \
    --proxy.bind-addr "127.0.0.1:$proxy_port" \
    --upstream.bind-addr "127.0.0.1:$upstream_port" \
    --admin.bind-addr "127.0.0.1:$admin_port" \
    --grace-period 2s \
    --log.level info >"$work/piko-server.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$admin_port/health" 10 "${pids[-1]}" || fail "piko-server did not start"
info "proxy    127.0.0.1:$proxy_port   clients send requests here"
info "upstream 127.0.0.1:$upstream_port   sidecars dial in here"
info "admin    127.0.0.1:$admin_port   status page /, /health, /ready, /metrics, /status/..."

heading "Starting piko-sidecar: endpoint $endpoint -> 127.0.0.1:$svc_port"
"$sidecar_bin" \
    --connect.url "http://127.0.0.1:$upstream_port" \
    --endpoint "$endpoint=127.0.0.1:$svc_port" \
    --admin.bind-addr "127.0.0.1:$sidecar_admin_port" \
    --grace-period 2s \
    --log.level info >"$work/piko-sidecar.log" 2>&1 &
pids+=($!)
info "the sidecar dials out to the server and keeps a tunnel open"
info "waiting for its /ready (http://127.0.0.1:$sidecar_admin_port/ready)"
wait_http "http://127.0.0.1:$sidecar_admin_port/ready" 15 "${pids[-1]}" \
    || fail "the sidecar's tunnel did not come up within 15s"
info "tunnel up"

heading "Sending a request through Piko's proxy port"
cmd=(curl -sS -i -H "x-piko-endpoint: $endpoint" "http://127.0.0.1:$proxy_port/hello")
printf '$ curl -sS -i -H '\''x-piko-endpoint: %s'\'' http://127.0.0.1:%s/hello\n\n' \
    "$endpoint" "$proxy_port"
if ! answer="$("${cmd[@]}" 2>&1)"; then
    printf '%s\n' "$answer"
    fail "curl failed"
fi
printf '%s\n' "$answer" | tr -d '\r'
status="${answer%%$'\n'*}"
status="${status%$'\r'}"
case "$status" in
    HTTP/*" 200"*) ;;
    *) fail "expected 200, got: $status" ;;
esac
printf '%s\n' "$answer" | grep -q "Hello from the service behind Piko" \
    || fail "the answer did not come from the sample service"

printf '\n%sIt works:%s curl -> piko-server (:%s) -> tunnel -> piko-sidecar -> service (:%s)\n' \
    "$green" "$reset" "$proxy_port" "$svc_port"

heading "What the server saw (its admin port, through the status CLI)"
for what in tunnels requests; do
    printf '$ piko-server status %s --server.url http://127.0.0.1:%s\n' "$what" "$admin_port"
    "$server_bin" status "$what" --server.url "http://127.0.0.1:$admin_port" \
        || fail "piko-server status $what failed"
    printf '\n'
done
info "status page: http://127.0.0.1:$admin_port/   metrics: http://127.0.0.1:$admin_port/metrics"

if [ "$keep" = "1" ]; then
    heading "Still running (DEMO_KEEP=1). Try it:"
    info "curl -i -H 'x-piko-endpoint: $endpoint' http://127.0.0.1:$proxy_port/anything"
    info "curl -i --http2-prior-knowledge -H 'x-piko-endpoint: $endpoint' http://127.0.0.1:$proxy_port/h2"
    info "curl -i -H 'x-piko-endpoint: nobody' http://127.0.0.1:$proxy_port/   (502: no available upstreams)"
    info "curl -i http://127.0.0.1:$admin_port/ready   (server admin)"
    info "curl -i http://127.0.0.1:$sidecar_admin_port/ready   (sidecar admin)"
    info "tail -f $work/*.log"
    info "Press Ctrl-C to stop."
    ok=1
    trap 'heading Stopping; exit 0' INT
    # Returns when any child exits (or on Ctrl-C, through the INT trap).
    set +e
    wait -n "${pids[@]}"
    set -e
    ok=0
    fail "a demo process exited on its own"
fi

heading "Stopping"
ok=1
