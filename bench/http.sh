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
#   Piko, cross-node        client -> piko-server A -> cluster link -> piko-server B
#                           -> tunnel -> piko-sidecar -> service (a 2-node cluster)
# Each nginx is its own process with one worker, like each Piko process has one loop.
# HTTP/1.1 is measured with wrk, h2c (prior knowledge) with h2load. During every
# measurement the CPU time (utime + stime) of the proxy processes is read from
# /proc/PID/stat before and after, and reported per request: the nginx proxy workers,
# the piko-server(s) and the sidecar.
# After the rounds, latency at a fixed rate: h2load --rps at half of the highest req/s
# that nginx two hops reached (same protocol), against nginx two hops and Piko; p50,
# p99, p99.9 from h2load's per-request log.
#
# Environment (defaults in brackets):
#   DURATION [10s]  CONNS [50]  THREADS [1]    wrk: -d, -c, -t
#   H2_CLIENTS [10]  H2_STREAMS [10]           h2load: -c, -m (-D is DURATION)
#   WARMUP [2s]                                unmeasured run before each measurement
#   ROUNDS [3]                                 repeat every measurement; the report shows
#                                              the median round and the req/s range
#   UPSTREAM_KEEPALIVE [64]                    idle connections kept to the next hop, by
#                                              each nginx proxy and by the sidecar alike
#   CROSS_NODE [1]                             0: no cross-node rows (no cluster started)
#   RATE_LATENCY [1]                           0: no fixed-rate latency runs
#   PROTOCOLS ["HTTP/1.1 h2c"]                 the protocols measured
#   PIKO_ONLY [0]                              1: measure only "Piko (server + sidecar)"
#                                              (no nginx rows, no rate runs)
#   WORKERS [unset]                            pass --workers N to piko-server and
#                                              piko-sidecar (fails if they lack the flag)
#   RESULTS_DIR [bench/results]                where http-<date>.md and .json are written
#   BASELINE_BIN_DIR [unset]                   also measure the piko-server/piko-sidecar
#                                              of this directory (e.g. a build of an older
#                                              commit) in the same run, as "Piko baseline"
#   KEEP_WORK=1                                keep the work dir (configs, raw output)
set -euo pipefail
LOG_PREFIX=bench
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin_dir="${1:-build/bin}"
http_load_defaults
CROSS_NODE="${CROSS_NODE:-1}"
RATE_LATENCY="${RATE_LATENCY:-1}"
PROTOCOLS="${PROTOCOLS:-HTTP/1.1 h2c}"
PIKO_ONLY="${PIKO_ONLY:-0}"
RESULTS_DIR="${RESULTS_DIR:-$here/results}"
KEEP_WORK="${KEEP_WORK:-0}"
if [ "$PIKO_ONLY" = "1" ]; then
    CROSS_NODE=0
    RATE_LATENCY=0
fi

require_tools wrk h2load nginx curl python3
workers_flag="$(piko_workers_flag "$bin_dir")"
bench_work piko-bench
declare -A role_pid=()

read -r svc_port svc_h2_port hop1_port hop1_h2_port hop2_port hop2_h2_port \
    piko_proxy_port piko_upstream_port piko_admin_port sidecar_admin_port \
    base_proxy_port base_upstream_port base_admin_port base_sidecar_admin_port \
    < <(free_ports 14)
BASELINE_BIN_DIR="${BASELINE_BIN_DIR:-}"

# ---------------------------------------------------------------- nginx ------------
write_1k "$work/www"

# A proxy hop that forwards everything to 127.0.0.1:$3 over kept-alive HTTP/1.1.
hop_block() {
    local port="$1" h2_port="$2" next="$3"
    cat <<EOB
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
EOB
}

log "starting nginx: service :$svc_port (h2c :$svc_h2_port), one hop :$hop1_port" \
    "(h2c :$hop1_h2_port), two hops :$hop2_port (h2c :$hop2_h2_port)"
start_nginx service "    server {
        listen 127.0.0.1:$svc_port;
        listen 127.0.0.1:$svc_h2_port http2;
        root $work/www;
    }"
role_pid[nginx-service]=$NGINX_PID
start_nginx hop1 "$(hop_block "$hop1_port" "$hop1_h2_port" "$svc_port")"
role_pid[nginx-hop1]=$NGINX_PID
start_nginx hop2 "$(hop_block "$hop2_port" "$hop2_h2_port" "$hop1_port")"
role_pid[nginx-hop2]=$NGINX_PID

for name in service hop1 hop2; do
    port_var="${name/service/svc}_port"
    wait_ok 10 "${role_pid[nginx-$name]}" "http://127.0.0.1:${!port_var}$PATH_1K" || {
        cat "$work/nginx-$name/error.log" >&2 2>/dev/null || true
        die "nginx $name did not start"
    }
    role_pid[nginx-$name-worker]="$(nginx_worker "${role_pid[nginx-$name]}")"
done

# ---------------------------------------------------------------- Piko -------------
# start_piko ROLE_SUFFIX BIN_DIR PROXY UPSTREAM ADMIN SIDECAR_ADMIN: a server and a sidecar;
# sets START_STATUS to "ok" or why it was skipped.
start_piko() {
    local sfx="$1" bin="$2" proxy="$3" upstream="$4" admin="$5" scadmin="$6"
    if [ ! -x "$bin/piko-server" ] || [ ! -x "$bin/piko-sidecar" ]; then
        START_STATUS="skipped: binaries not found in $bin"
        return
    fi
    log "starting piko-server$sfx :$proxy and piko-sidecar$sfx ($ENDPOINT -> :$svc_port) from $bin"
    if ! start_server "piko-server$sfx" "$bin" "$proxy" "$upstream" "$admin"; then
        START_STATUS="skipped: piko-server did not start"
    elif ! start_sidecar "piko-sidecar$sfx" "$bin" "$upstream" "$scadmin" "$svc_port"; then
        START_STATUS="skipped: sidecar not ready"
    elif ! check_target "piko$sfx http/1.1" "http://127.0.0.1:$proxy$PATH_1K"; then
        START_STATUS="skipped: request through Piko failed"
    else
        START_STATUS="ok"
    fi
}

# start_cross: two clustered servers, A and B, and a sidecar whose tunnel is on B; the
# client will hit A's proxy port (cross_proxy_port). Sets START_STATUS.
start_cross() {
    local a_up a_adm a_cl b_px b_up b_adm b_cl sc_adm join tries
    read -r cross_proxy_port a_up a_adm a_cl b_px b_up b_adm b_cl sc_adm < <(free_ports 9)
    join="127.0.0.1:$a_cl,127.0.0.1:$b_cl"
    # (--help is read whole first: grep -q would close the pipe early, and pipefail fail it)
    if ! grep -q -- '--cluster.join' <<<"$("$bin_dir/piko-server" --help 2>&1 || true)"; then
        START_STATUS="skipped: piko-server has no --cluster.join"
        return
    fi
    log "starting a 2-node cluster: node A :$cross_proxy_port, node B (holds the tunnel)"
    if ! start_server piko-node-a "$bin_dir" "$cross_proxy_port" "$a_up" "$a_adm" \
        --cluster.bind-addr "127.0.0.1:$a_cl" --cluster.join "$join" \
        --cluster.node-id bench-a --cluster.secret bench-secret ||
        ! start_server piko-node-b "$bin_dir" "$b_px" "$b_up" "$b_adm" \
            --cluster.bind-addr "127.0.0.1:$b_cl" --cluster.join "$join" \
            --cluster.node-id bench-b --cluster.secret bench-secret; then
        START_STATUS="skipped: a cluster node did not start"
        return
    fi
    if ! start_sidecar piko-sidecar-cross "$bin_dir" "$b_up" "$sc_adm" "$svc_port"; then
        START_STATUS="skipped: cross-node sidecar not ready"
        return
    fi
    # Node A learns of the endpoint from node B's routing state: wait for it.
    for tries in $(seq 100); do
        curl -fsS -o /dev/null --max-time 1 -H "$HEADER" \
            "http://127.0.0.1:$cross_proxy_port$PATH_1K" 2>/dev/null && break
        sleep 0.1
    done
    if check_target "piko cross-node" "http://127.0.0.1:$cross_proxy_port$PATH_1K"; then
        START_STATUS="ok"
    else
        START_STATUS="skipped: request through node A to node B failed (after $tries tries)"
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
cross_status="skipped: CROSS_NODE=0"
cross_proxy_port=0
if [ "$CROSS_NODE" = "1" ] && [ "$piko_status" = "ok" ]; then
    start_cross
    cross_status="$START_STATUS"
    if [ "$cross_status" != "ok" ]; then
        log "piko cross-node: $cross_status"
        KEEP_WORK=1
        piko_failed=1
    fi
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
declare -A peak=() # protocol -> highest req/s of nginx two hops over the rounds

# rps_of TOOL FILE: the req/s that wrk or h2load printed (integer), or 0.
rps_of() {
    if [ "$1" = "wrk" ]; then
        awk '/^Requests\/sec:/ { printf "%d\n", $2; f = 1 } END { if (!f) print 0 }' "$2"
    else
        sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' "$2" |
            awk '{ printf "%d\n", $1; f = 1 } END { if (!f) print 0 }'
    fi
}

# measure ROUND PROTOCOL TARGET STATUS URL [PID...]: one measured run, and the CPU time
# of PID... (the proxy processes of the target) during it.
measure() {
    local round="$1" protocol="$2" target="$3" status="$4" url="$5" slug out tool ticks
    shift 5
    slug="$(printf 'r%s-%s-%s' "$round" "$protocol" "$target" | tr -c 'A-Za-z0-9\n' '-')"
    out="$work/$slug.txt"
    if [ "$status" != "ok" ]; then
        printf '%s\t%s\t-\t-\t-\t%s\t-\t-\n' "$protocol" "$target" "$status" >>"$manifest"
        return 0
    fi
    tool=wrk
    [ "$protocol" = "HTTP/1.1" ] || tool=h2load
    log "round $round/$ROUNDS: $protocol $target: $(load_cmd "$protocol")"
    ticks="$(run_load "$protocol" "$url" "$out" "$work/$slug.log" "$@")"
    printf '%s\t%s\t%s\t%s\t%s\tok\t%s\t%s\n' "$protocol" "$target" "$tool" "$out" \
        "$work/$slug.log" "$ticks" "$#" >>"$manifest"
    if [ "$target" = "nginx, two hops" ]; then
        local r
        r="$(rps_of "$tool" "$out")"
        [ "$r" -le "${peak[$protocol]:-0}" ] || peak[$protocol]="$r"
    fi
}

# The processes whose CPU time each target's rows report.
pid_of() { printf '%s\n' "${role_pid[$1]:-}"; }
piko_pids=("$(pid_of piko-server)" "$(pid_of piko-sidecar)")
cross_pids=("$(pid_of piko-node-a)" "$(pid_of piko-node-b)" "$(pid_of piko-sidecar-cross)")
base_pids=("$(pid_of piko-server-baseline)" "$(pid_of piko-sidecar-baseline)")
hop1_worker="$(pid_of nginx-hop1-worker)"
hop2_worker="$(pid_of nginx-hop2-worker)"

load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$ROUNDS"); do
    for protocol in $PROTOCOLS; do
        if [ "$protocol" = "HTTP/1.1" ]; then
            p_svc=$svc_port p_hop1=$hop1_port p_hop2=$hop2_port st=$piko_status
        else
            p_svc=$svc_h2_port p_hop1=$hop1_h2_port p_hop2=$hop2_h2_port st=$piko_h2_status
        fi
        if [ "$PIKO_ONLY" != "1" ]; then
            # nginx direct has no proxy process: no CPU figure.
            measure "$round" "$protocol" "nginx, direct" ok "http://127.0.0.1:$p_svc$PATH_1K"
            measure "$round" "$protocol" "nginx, one hop" ok "http://127.0.0.1:$p_hop1$PATH_1K" \
                "$hop1_worker"
            measure "$round" "$protocol" "nginx, two hops" ok "http://127.0.0.1:$p_hop2$PATH_1K" \
                "$hop1_worker" "$hop2_worker"
        fi
        measure "$round" "$protocol" "Piko (server + sidecar)" "$st" \
            "http://127.0.0.1:$piko_proxy_port$PATH_1K" "${piko_pids[@]}"
        if [ "$CROSS_NODE" = "1" ]; then
            measure "$round" "$protocol" "Piko, cross-node" "$cross_status" \
                "http://127.0.0.1:$cross_proxy_port$PATH_1K" "${cross_pids[@]}"
        fi
        if [ -n "$BASELINE_BIN_DIR" ]; then
            measure "$round" "$protocol" "Piko baseline" "$base_status" \
                "http://127.0.0.1:$base_proxy_port$PATH_1K" "${base_pids[@]}"
        fi
    done
done

# ---------------------------------------------------------------- fixed rate -------
# Latency at half of nginx two hops' peak req/s, with h2load --rps (a rate per client).
rate_manifest="$work/rate.tsv"
: >"$rate_manifest"
rate_run() { # PROTOCOL TARGET STATUS URL RATE
    local protocol="$1" target="$2" status="$3" url="$4" rate="$5" slug opts clients
    slug="$(printf 'rate-%s-%s' "$protocol" "$target" | tr -c 'A-Za-z0-9\n' '-')"
    if [ "$status" != "ok" ]; then
        printf '%s\t%s\t%s\t-\t-\t%s\n' "$protocol" "$target" "$rate" "$status" >>"$rate_manifest"
        return 0
    fi
    if [ "$protocol" = "HTTP/1.1" ]; then
        clients="$CONNS"
        opts=(--h1 -c"$CONNS" -m1)
    else
        clients="$H2_CLIENTS"
        opts=(-c"$H2_CLIENTS" -m"$H2_STREAMS")
    fi
    local per_client=$(((rate + clients - 1) / clients))
    log "fixed rate: $protocol $target: h2load ${opts[*]} --rps=$per_client -D $DURATION"
    h2load "${opts[@]}" -D "$WARMUP" -H "$HEADER" "$url" >/dev/null 2>&1 || true
    h2load "${opts[@]}" --rps="$per_client" -D "$DURATION" -H "$HEADER" \
        --log-file="$work/$slug.log" "$url" >"$work/$slug.txt" 2>&1 ||
        log "fixed rate: $protocol $target: h2load exited with an error"
    printf '%s\t%s\t%s\t%s\t%s\tok\n' "$protocol" "$target" "$((per_client * clients))" \
        "$work/$slug.txt" "$work/$slug.log" >>"$rate_manifest"
}
if [ "$RATE_LATENCY" = "1" ]; then
    for protocol in $PROTOCOLS; do
        rate=$((${peak[$protocol]:-0} / 2))
        [ "$rate" -gt 0 ] || continue
        if [ "$protocol" = "HTTP/1.1" ]; then
            p_hop2=$hop2_port st=$piko_status
        else
            p_hop2=$hop2_h2_port st=$piko_h2_status
        fi
        rate_run "$protocol" "nginx, two hops" ok "http://127.0.0.1:$p_hop2$PATH_1K" "$rate"
        rate_run "$protocol" "Piko (server + sidecar)" "$st" \
            "http://127.0.0.1:$piko_proxy_port$PATH_1K" "$rate"
        if [ "$CROSS_NODE" = "1" ]; then
            rate_run "$protocol" "Piko, cross-node" "$cross_status" \
                "http://127.0.0.1:$cross_proxy_port$PATH_1K" "$rate"
        fi
    done
fi

# ---------------------------------------------------------------- memory -----------
rss="$work/rss.tsv"
: >"$rss"
for role in piko-server piko-sidecar piko-node-a piko-node-b piko-sidecar-cross \
    piko-server-baseline piko-sidecar-baseline; do
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
    worker="${role_pid[nginx-$name-worker]}"
    if [ -n "$worker" ]; then
        printf 'nginx %s worker\t%s\n' "$name" "$(vmhwm "$worker")" >>"$rss"
    fi
done

# ---------------------------------------------------------------- report -----------
meta="$work/meta.tsv"
stamp="${STAMP:-$(date -u +%Y%m%d-%H%M%S)}"
{
    meta_common
    printf 'tools\t%s; %s; %s\n' "$(wrk --version 2>&1 | head -n 1 | cut -d' ' -f1-2)" \
        "$(h2load --version 2>&1 | head -n 1)" "$(nginx -v 2>&1 | sed 's/^nginx version: //')"
    printf 'HTTP/1.1 load\twrk -t%s -c%s -d%s --latency (after a %s warm-up)\n' \
        "$THREADS" "$CONNS" "$DURATION" "$WARMUP"
    printf 'h2c load\th2load -c%s -m%s -D %s, latency from --log-file (after a %s warm-up)\n' \
        "$H2_CLIENTS" "$H2_STREAMS" "$DURATION" "$WARMUP"
    printf 'rounds\t%s (median round shown)\n' "$ROUNDS"
    printf 'upstream keep-alive\t%s idle connections (nginx keepalive, sidecar --local.max-idle)\n' \
        "$UPSTREAM_KEEPALIVE"
    printf 'CPU per request\tutime + stime (/proc/PID/stat) of the proxy processes during the measured run, divided by the requests: nginx one hop: its worker; two hops: both workers; Piko: server + sidecar; cross-node: both servers + sidecar\n'
    if [ "$RATE_LATENCY" = "1" ]; then
        printf 'fixed rate\th2load --rps (per client) for %s at half of the highest req/s of nginx two hops (HTTP/1.1: --h1 -c%s -m1; h2c: -c%s -m%s); percentiles from --log-file\n' \
            "$DURATION" "$CONNS" "$H2_CLIENTS" "$H2_STREAMS"
    fi
    if [ -n "$workers_flag" ]; then
        printf 'Piko workers\t%s\n' "$workers_flag"
    fi
    printf 'load average before / after\t%s / %s (other work on the machine skews results)\n' \
        "$load_start" "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf 'request\tGET %s (1024-byte body), header "%s" on every target\n' "$PATH_1K" "$HEADER"
    if [ -n "$BASELINE_BIN_DIR" ]; then
        printf 'Piko baseline\tthe binaries of %s\n' "$BASELINE_BIN_DIR"
    fi
} >"$meta"

mkdir -p "$RESULTS_DIR"
result_file="$RESULTS_DIR/http-$stamp.md"
python3 "$here/report.py" --manifest "$manifest" --rate "$rate_manifest" --meta "$meta" \
    --rss "$rss" --clk-tck "$clk_tck" --json "$RESULTS_DIR/http-$stamp.json" >"$result_file"
cat "$result_file"
log "written to $result_file and http-$stamp.json"
if [ "$piko_failed" -eq 1 ]; then
    die "Piko did not work through the whole run: see the logs in $work"
fi
