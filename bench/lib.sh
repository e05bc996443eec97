# shellcheck shell=bash
# Helpers shared by the benchmark scripts of bench/: sourced, not run. The script sets
# LOG_PREFIX (e.g. "bench") before sourcing, and after it `pids` (an array), `work` (its
# work directory) and KEEP_WORK are what bench_cleanup acts on.
# shellcheck source=scripts/proc.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/proc.sh"

log() { printf '%s: %s\n' "${LOG_PREFIX:-bench}" "$*" >&2; }
die() {
    log "$*"
    exit 1
}

# require_tools TOOL...: dies naming the install command when one is missing.
require_tools() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || die "$tool not found (run: scripts/install-deps.sh bench)"
    done
}

# bench_work NAME: creates the work directory ($work), and installs the EXIT trap that
# stops every process in `pids` (reverse start order) and removes the directory unless
# the run failed or KEEP_WORK=1.
bench_work() {
    work="$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")"
    pids=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}
bench_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ "${#pids[@]}" -eq 0 ] || stop_pids "${pids[@]}"
    if [ "$rc" -eq 0 ] && [ "${KEEP_WORK:-0}" != "1" ]; then
        rm -rf "$work"
    else
        log "work dir kept: $work"
    fi
    exit "$rc"
}

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

# check_target LABEL CURL_ARGS...: one request (with $HEADER) must return 200 with the
# 1 KiB body.
check_target() {
    local label="$1" got
    shift
    got="$(curl -sS -o /dev/null -w '%{http_code} %{size_download}' --max-time 5 \
        -H "$HEADER" "$@" 2>&1)" || true
    if [ "$got" != "200 1024" ]; then
        log "$label: sanity request failed (got: $got)"
        return 1
    fi
}

# write_1k DIR: the 1 KiB file every HTTP target serves, as DIR/1k.bin.
write_1k() {
    mkdir -p "$1"
    head -c 1024 /dev/zero | tr '\0' 'x' >"$1/1k.bin"
}

# start_nginx NAME SERVER_BLOCK: one nginx (master + one worker) with its own prefix
# $work/nginx-NAME, in the background; its master's pid goes to `pids` and NGINX_PID.
start_nginx() {
    local server_block="$2" dir="$work/nginx-$1" user=""
    if [ "$(id -u)" -eq 0 ]; then user="user root;"; fi
    mkdir -p "$dir/tmp"
    cat >"$dir/nginx.conf" <<EOF
$user
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
    NGINX_PID=$!
    pids+=("$NGINX_PID")
}

# nginx_worker MASTER_PID: the pid of its worker (its only child), or nothing.
nginx_worker() {
    local children
    children="$(cat "/proc/$1/task/$1/children" 2>/dev/null || true)"
    children="${children%% *}"
    printf '%s\n' "${children// /}"
}

# cpu_ticks PID...: user + system CPU time of the processes so far (utime + stime of
# /proc/PID/stat), in clock ticks (getconf CLK_TCK per second); a gone process counts 0.
cpu_ticks() {
    local pid total=0 t
    for pid in "$@"; do
        t="$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0)"
        total=$((total + ${t:-0}))
    done
    echo "$total"
}
# shellcheck disable=SC2034 # for the scripts that source this file
clk_tck="$(getconf CLK_TCK)"

# vmhwm PID: peak resident set size in kB, or "-".
vmhwm() {
    awk '/^VmHWM:/ { print $2; found = 1 } END { if (!found) print "-" }' \
        "/proc/$1/status" 2>/dev/null || echo "-"
}

# bench_commit: the short commit of the checkout, "(with local changes)" when dirty.
bench_commit() {
    local root c
    root="$(dirname "${BASH_SOURCE[0]}")/.."
    c="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo "uncommitted")"
    if [ -n "$(git -C "$root" status --porcelain 2>/dev/null | head -c 1)" ]; then
        c="$c (with local changes)"
    fi
    printf '%s\n' "$c"
}

# meta_common: the date, commit and machine lines (TSV key, value) that open every
# report's header.
meta_common() {
    printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf 'commit\t%s\n' "$(bench_commit)"
    printf 'machine\t%s cores, %s, Linux %s\n' "$(nproc)" \
        "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" "$(uname -r)"
}

# piko_workers_flag BIN_DIR: "--workers $WORKERS" when WORKERS is set and the binaries
# of BIN_DIR have the flag; nothing otherwise (dies when WORKERS is set without it).
piko_workers_flag() {
    [ -n "${WORKERS:-}" ] || return 0
    local help
    help="$("$1/piko-server" --help 2>&1 || true)"
    grep -q -- '--workers' <<<"$help" || die "WORKERS=$WORKERS: $1/piko-server has no --workers"
    printf -- '--workers %s\n' "$WORKERS"
}

# run_load PROTOCOL URL OUT H2LOG [PID...]: a WARMUP run, then the measured DURATION run
# of wrk (HTTP/1.1: -t$THREADS -c$CONNS --latency) or h2load (h2c: -c$H2_CLIENTS
# -m$H2_STREAMS, per-request log to H2LOG), every request with $HEADER, output to OUT.
# Prints the CPU clock ticks of PID... during the measured run ("-" without PIDs).
run_load() {
    local protocol="$1" url="$2" out="$3" h2log="$4" t0
    shift 4
    if [ "$protocol" = "HTTP/1.1" ]; then
        wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" -H "$HEADER" "$url" >/dev/null 2>&1 || true
        t0="$(cpu_ticks "$@")"
        wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -H "$HEADER" "$url" >"$out" 2>&1 ||
            log "$protocol $url: wrk exited with an error"
    else
        h2load -c"$H2_CLIENTS" -m"$H2_STREAMS" -D "$WARMUP" -H "$HEADER" "$url" >/dev/null 2>&1 ||
            true
        t0="$(cpu_ticks "$@")"
        h2load -c"$H2_CLIENTS" -m"$H2_STREAMS" -D "$DURATION" -H "$HEADER" \
            --log-file="$h2log" "$url" >"$out" 2>&1 ||
            log "$protocol $url: h2load exited with an error"
    fi
    if [ "$#" -eq 0 ]; then echo "-"; else echo "$(($(cpu_ticks "$@") - t0))"; fi
}

# load_cmd PROTOCOL: the load command line, for the log.
load_cmd() {
    if [ "$1" = "HTTP/1.1" ]; then
        printf 'wrk -t%s -c%s -d%s' "$THREADS" "$CONNS" "$DURATION"
    else
        printf 'h2load -c%s -m%s -D %s' "$H2_CLIENTS" "$H2_STREAMS" "$DURATION"
    fi
}

# start_server ROLE BIN PROXY UPSTREAM ADMIN [FLAG...]: a piko-server at --log.level warn
# (plus $workers_flag when set), log in $work/ROLE.log; fails if it does not answer
# /health. start_sidecar ROLE BIN UPSTREAM ADMIN SERVICE_PORT [FLAG...]: a sidecar
# serving $ENDPOINT from 127.0.0.1:SERVICE_PORT; fails if it does not get ready. Not in
# a subshell: they record the processes in pids and role_pid.
start_server() {
    local role="$1" bin="$2" proxy="$3" upstream="$4" admin="$5"
    shift 5
    # shellcheck disable=SC2086 # the workers flag is words
    "$bin/piko-server" \
        --proxy.bind-addr "127.0.0.1:$proxy" \
        --upstream.bind-addr "127.0.0.1:$upstream" \
        --admin.bind-addr "127.0.0.1:$admin" \
        --grace-period 1s \
        --log.level warn ${workers_flag:-} "$@" >"$work/$role.log" 2>&1 &
    pids+=($!)
    role_pid["$role"]=$!
    wait_ok 10 "$!" "http://127.0.0.1:$admin/health"
}
start_sidecar() {
    local role="$1" bin="$2" upstream="$3" admin="$4" service="$5"
    shift 5
    # shellcheck disable=SC2086
    "$bin/piko-sidecar" \
        --connect.url "http://127.0.0.1:$upstream" \
        --endpoint "$ENDPOINT=127.0.0.1:$service" \
        --admin.bind-addr "127.0.0.1:$admin" \
        --grace-period 1s \
        --local.max-idle "$UPSTREAM_KEEPALIVE" \
        --log.level warn ${workers_flag:-} "$@" >"$work/$role.log" 2>&1 &
    pids+=($!)
    # shellcheck disable=SC2034 # role_pid is the sourcing script's
    role_pid["$role"]=$!
    wait_ok 15 "$!" "http://127.0.0.1:$admin/ready"
}

# http_load_defaults: the load parameters of bench/http.sh and bench/metrics.sh (each
# from the environment, else its default) and the request every target gets, header
# included, so that request sizes are equal.
http_load_defaults() {
    DURATION="${DURATION:-10s}"
    CONNS="${CONNS:-50}"
    THREADS="${THREADS:-1}"
    H2_CLIENTS="${H2_CLIENTS:-10}"
    H2_STREAMS="${H2_STREAMS:-10}"
    WARMUP="${WARMUP:-2s}"
    ROUNDS="${ROUNDS:-3}"
    UPSTREAM_KEEPALIVE="${UPSTREAM_KEEPALIVE:-64}"
    ENDPOINT="bench"
    # shellcheck disable=SC2034 # for the sourcing script
    PATH_1K="/1k.bin"
    HEADER="x-piko-endpoint: $ENDPOINT"
}
