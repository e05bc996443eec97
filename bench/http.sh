#!/usr/bin/env bash
# HTTP benchmark of Piko against nginx on loopback, measured in one run so that the
# ratios are comparable. See bench/README.md and docs/benchmarks.md.
#
# Usage: bench/http.sh [BIN_DIR]        (default: build/bin; `make bench` passes it)
#
# Targets, all serving the same 1 KiB static file from one nginx ("the service"):
#   nginx, direct           client -> service
#   nginx, one hop          client -> nginx proxy -> service
#   nginx, two hops         client -> nginx proxy -> nginx proxy -> service
#   Piko (server + sidecar) client -> piko-server -> tunnel -> piko-sidecar -> service
# Each nginx is its own process with one worker, like each Piko process has one loop.
# HTTP/1.1 is measured with wrk, h2c (prior knowledge) with h2load.
#
# Environment (defaults in brackets):
#   DURATION [10s]  CONNS [50]  THREADS [1]    wrk: -d, -c, -t
#   H2_CLIENTS [10]  H2_STREAMS [10]           h2load: -c, -m (-D is DURATION)
#   WARMUP [2s]                                unmeasured run before each measurement
#   ROUNDS [3]                                 repeat every measurement; the report shows
#                                              the median round and the req/s range
#   UPSTREAM_KEEPALIVE [64]                    idle connections kept to the next hop, by
#                                              each nginx proxy and by the sidecar alike
#   RESULTS_DIR [bench/results]                where http-<date>.md is written
#   BASELINE_BIN_DIR [unset]                   also measure the piko-server/piko-sidecar
#                                              of this directory (e.g. a build of an older
#                                              commit) in the same run, as "Piko baseline"
#   KEEP_WORK=1                                keep the work dir (configs, raw output)
set -euo pipefail
# shellcheck source=scripts/proc.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/proc.sh"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin_dir="${1:-build/bin}"
DURATION="${DURATION:-10s}"
CONNS="${CONNS:-50}"
THREADS="${THREADS:-1}"
H2_CLIENTS="${H2_CLIENTS:-10}"
H2_STREAMS="${H2_STREAMS:-10}"
WARMUP="${WARMUP:-2s}"
ROUNDS="${ROUNDS:-3}"
UPSTREAM_KEEPALIVE="${UPSTREAM_KEEPALIVE:-64}"
RESULTS_DIR="${RESULTS_DIR:-$here/results}"
KEEP_WORK="${KEEP_WORK:-0}"

ENDPOINT="bench"
PATH_1K="/1k.bin"
# Every target gets the same request, header included, so request sizes are equal.
HEADER="x-piko-endpoint: $ENDPOINT"

log() { printf 'bench: %s\n' "$*" >&2; }
die() {
    log "$*"
    exit 1
}

for tool in wrk h2load nginx curl python3; do
    command -v "$tool" >/dev/null || die "$tool not found (run: scripts/install-deps.sh bench)"
done

work="$(mktemp -d "${TMPDIR:-/tmp}/piko-bench.XXXXXX")"
pids=()       # every process we started, in start order
declare -A role_pid=()

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ "${#pids[@]}" -eq 0 ] || stop_pids "${pids[@]}"
    if [ "$rc" -eq 0 ] && [ "$KEEP_WORK" != "1" ]; then
        rm -rf "$work"
    else
        log "work dir kept: $work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_ok SECONDS PID CURL_ARGS...: waits until curl succeeds (2xx), or PID dies.
wait_ok() {
    local seconds="$1" pid="$2" tries
    shift 2
    tries=$((seconds * 10))
    while [ "$tries" -gt 0 ]; do
        curl -fsS -o /dev/null --max-time 1 "$@" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
        tries=$((tries - 1))
    done
    return 1
}

# check_target LABEL CURL_ARGS...: one request must return 200 with the 1 KiB body.
check_target() {
    local label="$1" got
    shift
    got="$(curl -sS -o "$work/check.body" -w '%{http_code} %{size_download}' --max-time 5 \
        -H "$HEADER" "$@" 2>&1)" || true
    if [ "$got" != "200 1024" ]; then
        log "$label: sanity request failed (got: $got)"
        return 1
    fi
}

read -r svc_port svc_h2_port hop1_port hop1_h2_port hop2_port hop2_h2_port \
    piko_proxy_port piko_upstream_port piko_admin_port sidecar_admin_port \
    base_proxy_port base_upstream_port base_admin_port base_sidecar_admin_port \
    < <(free_ports 14)
BASELINE_BIN_DIR="${BASELINE_BIN_DIR:-}"

# ---------------------------------------------------------------- nginx ------------
nginx_user=""
if [ "$(id -u)" -eq 0 ]; then nginx_user="user root;"; fi

mkdir -p "$work/www"
head -c 1024 /dev/zero | tr '\0' 'x' >"$work/www/1k.bin"

# start_nginx NAME SERVER_BLOCK: one nginx (master + one worker) with its own prefix.
start_nginx() {
    local name="$1" server_block="$2" dir="$work/nginx-$1"
    mkdir -p "$dir/tmp"
    cat >"$dir/nginx.conf" <<EOF
$nginx_user
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    default_type application/octet-stream;
    keepalive_requests 1000000;
    keepalive_timeout 65s;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
$server_block
}
EOF
    nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" >"$dir/stdout.log" 2>&1 &
    pids+=($!)
    role_pid[nginx-$name]=$!
}

# A proxy hop that forwards everything to 127.0.0.1:$3 over kept-alive HTTP/1.1.
hop_block() {
    local port="$1" h2_port="$2" next="$3"
    cat <<EOF
    upstream next {
        server 127.0.0.1:$next;
        keepalive $UPSTREAM_KEEPALIVE;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$port;
        listen 127.0.0.1:$h2_port http2;
        location / {
            proxy_pass http://next;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
EOF
}

log "starting nginx: service :$svc_port (h2c :$svc_h2_port), one hop :$hop1_port" \
    "(h2c :$hop1_h2_port), two hops :$hop2_port (h2c :$hop2_h2_port)"
start_nginx service "    server {
        listen 127.0.0.1:$svc_port;
        listen 127.0.0.1:$svc_h2_port http2;
        root $work/www;
    }"
start_nginx hop1 "$(hop_block "$hop1_port" "$hop1_h2_port" "$svc_port")"
start_nginx hop2 "$(hop_block "$hop2_port" "$hop2_h2_port" "$hop1_port")"

for name in service hop1 hop2; do
    port_var="${name/service/svc}_port"
    wait_ok 10 "${role_pid[nginx-$name]}" "http://127.0.0.1:${!port_var}$PATH_1K" || {
        cat "$work/nginx-$name/error.log" >&2 2>/dev/null || true
        die "nginx $name did not start"
    }
done

# ---------------------------------------------------------------- Piko -------------
# start_piko ROLE_SUFFIX BIN_DIR PROXY UPSTREAM ADMIN SIDECAR_ADMIN: a server and a sidecar
# serving $ENDPOINT from the service; sets START_STATUS to "ok" or why it was skipped (not
# in a subshell: it records the processes in pids and role_pid).
start_piko() {
    local sfx="$1" bin="$2" proxy="$3" upstream="$4" admin="$5" scadmin="$6"
    if [ ! -x "$bin/piko-server" ] || [ ! -x "$bin/piko-sidecar" ]; then
        START_STATUS="skipped: binaries not found in $bin"
        return
    fi
    log "starting piko-server$sfx :$proxy and piko-sidecar$sfx ($ENDPOINT -> :$svc_port) from $bin"
    "$bin/piko-server" \
        --proxy.bind-addr "127.0.0.1:$proxy" \
        --upstream.bind-addr "127.0.0.1:$upstream" \
        --admin.bind-addr "127.0.0.1:$admin" \
        --grace-period 1s \
        --log.level warn >"$work/piko-server$sfx.log" 2>&1 &
    pids+=($!)
    role_pid[piko-server$sfx]=$!
    if ! wait_ok 10 "${role_pid[piko-server$sfx]}" "http://127.0.0.1:$admin/health"; then
        START_STATUS="skipped: piko-server did not start"
        return
    fi
    "$bin/piko-sidecar" \
        --connect.url "http://127.0.0.1:$upstream" \
        --endpoint "$ENDPOINT=127.0.0.1:$svc_port" \
        --admin.bind-addr "127.0.0.1:$scadmin" \
        --grace-period 1s \
        --local.max-idle "$UPSTREAM_KEEPALIVE" \
        --log.level warn >"$work/piko-sidecar$sfx.log" 2>&1 &
    pids+=($!)
    role_pid[piko-sidecar$sfx]=$!
    if ! wait_ok 15 "${role_pid[piko-sidecar$sfx]}" "http://127.0.0.1:$scadmin/ready"; then
        START_STATUS="skipped: sidecar not ready"
    elif ! check_target "piko$sfx http/1.1" "http://127.0.0.1:$proxy$PATH_1K"; then
        START_STATUS="skipped: request through Piko failed"
    else
        START_STATUS="ok"
    fi
}

piko_failed=0 # binaries present but Piko did not work: report, then exit non-zero
start_piko "" "$bin_dir" "$piko_proxy_port" "$piko_upstream_port" "$piko_admin_port" \
    "$sidecar_admin_port"
piko_status="$START_STATUS"
if [ "$piko_status" != "ok" ]; then
    log "piko: $piko_status (logs: $work/piko-*.log)"
    case "$piko_status" in "skipped: binaries not found"*) ;; *) KEEP_WORK=1; piko_failed=1 ;; esac
fi
base_status="skipped: no BASELINE_BIN_DIR"
if [ -n "$BASELINE_BIN_DIR" ]; then
    start_piko "-baseline" "$BASELINE_BIN_DIR" "$base_proxy_port" "$base_upstream_port" \
        "$base_admin_port" "$base_sidecar_admin_port"
    base_status="$START_STATUS"
    [ "$base_status" = "ok" ] || log "piko baseline: $base_status"
fi

# ---------------------------------------------------------------- checks -----------
check_target "nginx direct" "http://127.0.0.1:$svc_port$PATH_1K" || die "nginx direct broken"
check_target "nginx one hop" "http://127.0.0.1:$hop1_port$PATH_1K" || die "nginx one hop broken"
check_target "nginx two hops" "http://127.0.0.1:$hop2_port$PATH_1K" || die "nginx two hops broken"
h2c_ok=1
for p in "$svc_h2_port" "$hop1_h2_port" "$hop2_h2_port"; do
    check_target "nginx h2c :$p" --http2-prior-knowledge "http://127.0.0.1:$p$PATH_1K" || h2c_ok=0
done
[ "$h2c_ok" -eq 1 ] || die "nginx h2c broken"
piko_h2_status="$piko_status"
if [ "$piko_status" = "ok" ] && ! check_target "piko h2c" --http2-prior-knowledge \
    "http://127.0.0.1:$piko_proxy_port$PATH_1K"; then
    piko_h2_status="skipped: h2c request through Piko failed"
    KEEP_WORK=1
    piko_failed=1
fi

# ---------------------------------------------------------------- measure ----------
manifest="$work/manifest.tsv"
: >"$manifest"

# measure ROUND PROTOCOL TARGET STATUS URL
measure() {
    local round="$1" protocol="$2" target="$3" status="$4" url="$5" slug out
    slug="$(printf 'r%s-%s-%s' "$round" "$protocol" "$target" | tr -c 'A-Za-z0-9\n' '-')"
    out="$work/$slug.txt"
    if [ "$status" != "ok" ]; then
        printf '%s\t%s\t-\t-\t-\t%s\n' "$protocol" "$target" "$status" >>"$manifest"
        return 0
    fi
    if [ "$protocol" = "HTTP/1.1" ]; then
        log "round $round/$ROUNDS: $protocol $target: wrk -t$THREADS -c$CONNS -d$DURATION"
        wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" -H "$HEADER" "$url" >/dev/null 2>&1 || true
        wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -H "$HEADER" "$url" >"$out" 2>&1 \
            || log "$protocol $target: wrk exited with an error"
        printf '%s\t%s\twrk\t%s\t-\tok\n' "$protocol" "$target" "$out" >>"$manifest"
    else
        log "round $round/$ROUNDS: $protocol $target: h2load -c$H2_CLIENTS -m$H2_STREAMS -D $DURATION"
        h2load -c"$H2_CLIENTS" -m"$H2_STREAMS" -D "$WARMUP" -H "$HEADER" "$url" >/dev/null 2>&1 \
            || true
        h2load -c"$H2_CLIENTS" -m"$H2_STREAMS" -D "$DURATION" -H "$HEADER" \
            --log-file="$work/$slug.log" "$url" >"$out" 2>&1 \
            || log "$protocol $target: h2load exited with an error"
        printf '%s\t%s\th2load\t%s\t%s\tok\n' "$protocol" "$target" "$out" "$work/$slug.log" \
            >>"$manifest"
    fi
}

load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$ROUNDS"); do
    piko_url="http://127.0.0.1:$piko_proxy_port$PATH_1K"
    measure "$round" HTTP/1.1 "nginx, direct" ok "http://127.0.0.1:$svc_port$PATH_1K"
    measure "$round" HTTP/1.1 "nginx, one hop" ok "http://127.0.0.1:$hop1_port$PATH_1K"
    measure "$round" HTTP/1.1 "nginx, two hops" ok "http://127.0.0.1:$hop2_port$PATH_1K"
    measure "$round" HTTP/1.1 "Piko (server + sidecar)" "$piko_status" "$piko_url"
    if [ -n "$BASELINE_BIN_DIR" ]; then
        measure "$round" HTTP/1.1 "Piko baseline" "$base_status" \
            "http://127.0.0.1:$base_proxy_port$PATH_1K"
    fi
    measure "$round" h2c "nginx, direct" ok "http://127.0.0.1:$svc_h2_port$PATH_1K"
    measure "$round" h2c "nginx, one hop" ok "http://127.0.0.1:$hop1_h2_port$PATH_1K"
    measure "$round" h2c "nginx, two hops" ok "http://127.0.0.1:$hop2_h2_port$PATH_1K"
    measure "$round" h2c "Piko (server + sidecar)" "$piko_h2_status" "$piko_url"
    if [ -n "$BASELINE_BIN_DIR" ]; then
        measure "$round" h2c "Piko baseline" "$base_status" \
            "http://127.0.0.1:$base_proxy_port$PATH_1K"
    fi
done

# ---------------------------------------------------------------- memory -----------
# vmhwm PID: peak resident set size in kB, or "-".
vmhwm() {
    awk '/^VmHWM:/ { print $2; found = 1 } END { if (!found) print "-" }' \
        "/proc/$1/status" 2>/dev/null || echo "-"
}
# The worker of an nginx master (its only child).
nginx_worker() {
    local children
    children="$(cat "/proc/$1/task/$1/children" 2>/dev/null || true)"
    printf '%s\n' "${children%% *}"
}

rss="$work/rss.tsv"
: >"$rss"
for role in piko-server piko-sidecar piko-server-baseline piko-sidecar-baseline; do
    if [ -n "${role_pid[$role]:-}" ] && kill -0 "${role_pid[$role]}" 2>/dev/null; then
        printf '%s\t%s\n' "$role" "$(vmhwm "${role_pid[$role]}")" >>"$rss"
    elif [ -n "${role_pid[$role]:-}" ]; then
        printf '%s\t-\n' "$role (exited during the run)" >>"$rss"
        log "$role exited during the run (log: $work/$role.log)"
        KEEP_WORK=1
        piko_failed=1
    fi
done
for name in hop1 hop2; do
    worker="$(nginx_worker "${role_pid[nginx-$name]}")"
    if [ -n "$worker" ]; then
        printf 'nginx %s worker\t%s\n' "$name" "$(vmhwm "$worker")" >>"$rss"
    fi
done

# ---------------------------------------------------------------- report -----------
meta="$work/meta.tsv"
stamp="$(date -u +%Y%m%d-%H%M%S)"
commit="$(git -C "$here/.." rev-parse --short HEAD 2>/dev/null || echo "uncommitted")"
if [ -n "$(git -C "$here/.." status --porcelain 2>/dev/null | head -c 1)" ]; then
    commit="$commit (with local changes)"
fi
{
    printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf 'commit\t%s\n' "$commit"
    printf 'machine\t%s cores, %s, Linux %s\n' "$(nproc)" \
        "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" "$(uname -r)"
    printf 'tools\t%s; %s; %s\n' "$(wrk --version 2>&1 | head -n 1 | cut -d' ' -f1-2)" \
        "$(h2load --version 2>&1 | head -n 1)" "$(nginx -v 2>&1 | sed 's/^nginx version: //')"
    printf 'HTTP/1.1 load\twrk -t%s -c%s -d%s --latency (after a %s warm-up)\n' \
        "$THREADS" "$CONNS" "$DURATION" "$WARMUP"
    printf 'h2c load\th2load -c%s -m%s -D %s, latency from --log-file (after a %s warm-up)\n' \
        "$H2_CLIENTS" "$H2_STREAMS" "$DURATION" "$WARMUP"
    printf 'rounds\t%s (median round shown)\n' "$ROUNDS"
    printf 'upstream keep-alive\t%s idle connections (nginx keepalive, sidecar --local.max-idle)\n' \
        "$UPSTREAM_KEEPALIVE"
    printf 'load average before / after\t%s / %s (other work on the machine skews results)\n' \
        "$load_start" "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf 'request\tGET %s (1024-byte body), header "%s" on every target\n' "$PATH_1K" "$HEADER"
    if [ -n "$BASELINE_BIN_DIR" ]; then
        printf 'Piko baseline\tthe binaries of %s\n' "$BASELINE_BIN_DIR"
    fi
} >"$meta"

mkdir -p "$RESULTS_DIR"
result_file="$RESULTS_DIR/http-$stamp.md"
python3 "$here/report.py" --manifest "$manifest" --meta "$meta" --rss "$rss" >"$result_file"
cat "$result_file"
log "written to $result_file"
if [ "$piko_failed" -eq 1 ]; then
    die "Piko did not work through the whole run: see the logs in $work"
fi
