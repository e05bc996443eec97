#!/usr/bin/env bash
# The cost of metrics and of the access log: req/s through one piko-server (and its
# sidecar) in three configurations, measured in one run, round after round, so that the
# ratios are comparable. See bench/README.md and docs/benchmarks.md.
#
# Usage: bench/metrics.sh [BIN_DIR]     (default: build/bin)
#
# Configurations of the server (the sidecar is the same in all three: access log off):
#   off        --metrics.enabled=false --log.access=false
#   metrics    --log.access=false                (metrics on: the default)
#   metrics+log                                  (metrics and access log on: the defaults;
#                                                 the log lines go to a file)
# Every server runs at --log.level warn; the third one adds --log.subsystems access so
# that its access log lines (info) are written. A binary without --log.access skips the
# third row, and says so in the report.
#
# Environment (defaults in brackets):
#   DURATION [10s]  CONNS [50]  THREADS [1]    wrk: -d, -c, -t
#   H2_CLIENTS [10]  H2_STREAMS [10]           h2load: -c, -m (-D is DURATION)
#   WARMUP [2s]  ROUNDS [3]                    as in bench/http.sh; the order of the
#                                              configurations rotates from round to round
#   UPSTREAM_KEEPALIVE [64]                    the sidecar's --local.max-idle
#   PERF [1 when perf is installed]            after the rounds, profile the "metrics on"
#                                              server under one more HTTP/1.1 load and
#                                              report the share of its CPU samples in the
#                                              metrics code (steadier than req/s ratios on
#                                              a busy machine)
#   RESULTS_DIR [bench/results]                where metrics-<date>.md is written
#   KEEP_WORK=1                                keep the work dir (logs, raw output)
set -euo pipefail
LOG_PREFIX=bench
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin_dir="${1:-build/bin}"
http_load_defaults
RESULTS_DIR="${RESULTS_DIR:-$here/results}"
KEEP_WORK="${KEEP_WORK:-0}"

require_tools wrk h2load nginx curl python3
[ -x "$bin_dir/piko-server" ] && [ -x "$bin_dir/piko-sidecar" ] ||
    die "piko-server and piko-sidecar not found in $bin_dir (build first)"

bench_work piko-bench-metrics
declare -A role_pid=()

# ---------------------------------------------------------------- the service ------
read -r svc_port < <(free_ports 1)
write_1k "$work/www"
start_nginx service "    server {
        listen 127.0.0.1:$svc_port;
        root $work/www;
    }"
wait_ok 10 "$NGINX_PID" "http://127.0.0.1:$svc_port$PATH_1K" || die "nginx did not start"

# ---------------------------------------------------------------- Piko -------------
# (--help is read whole first: grep -q would close the pipe early, and pipefail fail it)
server_help="$("$bin_dir/piko-server" --help 2>&1 || true)"
sidecar_help="$("$bin_dir/piko-sidecar" --help 2>&1 || true)"
has_access_flag=0
if grep -q -- '--log.access ' <<<"$server_help"; then
    has_access_flag=1
fi

configs=(off metrics metrics+log)
declare -A label=(
    [off]="metrics off, access log off"
    [metrics]="metrics on, access log off"
    [metrics+log]="metrics on, access log on"
)
declare -A flags=(
    [off]="--metrics.enabled=false --log.access=false"
    [metrics]="--log.access=false"
    [metrics+log]="--log.subsystems access"
)
declare -A proxy_port=() status=()
if [ "$has_access_flag" -eq 0 ]; then
    flags[off]="--metrics.enabled=false"
    flags[metrics]=""
fi
sidecar_flags="--log.access=false"
grep -q -- '--log.access ' <<<"$sidecar_help" || sidecar_flags=""

# start_piko CONFIG: a server with that configuration's flags and a sidecar serving
# $ENDPOINT from the service; sets status[CONFIG].
start_piko() {
    local c="$1" p u a s
    read -r p u a s < <(free_ports 4)
    proxy_port[$c]="$p"
    log "starting piko-server ($c: ${flags[$c]:-defaults}) :$p and its sidecar"
    # shellcheck disable=SC2086 # the flags are words
    if ! start_server "server-$c" "$bin_dir" "$p" "$u" "$a" ${flags[$c]}; then
        status[$c]="skipped: piko-server did not start (see its log)"
        return
    fi
    # shellcheck disable=SC2086
    if ! start_sidecar "sidecar-$c" "$bin_dir" "$u" "$s" "$svc_port" $sidecar_flags; then
        status[$c]="skipped: sidecar not ready"
    elif ! check_target "$c" "http://127.0.0.1:$p$PATH_1K"; then
        status[$c]="skipped: request through Piko failed"
    elif ! check_target "$c h2c" --http2-prior-knowledge "http://127.0.0.1:$p$PATH_1K"; then
        status[$c]="skipped: h2c request through Piko failed"
    else
        status[$c]="ok"
    fi
}

for c in "${configs[@]}"; do
    if [ "$c" = "metrics+log" ] && [ "$has_access_flag" -eq 0 ]; then
        status[$c]="skipped: this piko-server has no --log.access flag"
        continue
    fi
    start_piko "$c"
    [ "${status[$c]}" = "ok" ] || { log "$c: ${status[$c]}"; KEEP_WORK=1; }
done
[ "${status[off]}" = "ok" ] || die "the reference configuration (off) did not start"

# ---------------------------------------------------------------- measure ----------
manifest="$work/manifest.tsv"
: >"$manifest"

# measure ROUND PROTOCOL CONFIG: one measured run, and the server's CPU time during it.
measure() {
    local round="$1" protocol="$2" c="$3" url slug tool ticks pid="${role_pid[server-$3]:-}"
    url="http://127.0.0.1:${proxy_port[$c]:-0}$PATH_1K"
    slug="r$round-$protocol-$c"
    slug="${slug//[^A-Za-z0-9-]/-}"
    if [ "${status[$c]}" != "ok" ]; then
        printf '%s\t%s\t%s\t-\t-\t-\t%s\t0\n' "$round" "$protocol" "$c" "${status[$c]}" \
            >>"$manifest"
        return 0
    fi
    tool=wrk
    [ "$protocol" = "HTTP/1.1" ] || tool=h2load
    log "round $round/$ROUNDS: $protocol $c: $(load_cmd "$protocol")"
    ticks="$(run_load "$protocol" "$url" "$work/$slug.txt" "$work/$slug.log" "$pid")"
    printf '%s\t%s\t%s\t%s\t%s\t%s\tok\t%s\n' "$round" "$protocol" "$c" "$tool" \
        "$work/$slug.txt" "$work/$slug.log" "$ticks" >>"$manifest"
}

load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
n="${#configs[@]}"
for round in $(seq "$ROUNDS"); do
    for protocol in HTTP/1.1 h2c; do
        # Rotate the order: no configuration always runs first (or after a given one).
        for i in $(seq 0 $((n - 1))); do
            measure "$round" "$protocol" "${configs[$(((i + round - 1) % n))]}"
        done
    done
done

# The share of the metrics-on server's CPU samples in the metrics code (perf, user and
# kernel samples of the process), or why it was not measured.
perf_share="not measured (PERF=0)"
if [ "${PERF:-1}" = "1" ] && [ "${status[metrics]}" = "ok" ]; then
    if ! command -v perf >/dev/null; then
        perf_share="not measured (perf not installed)"
    else
        url="http://127.0.0.1:${proxy_port[metrics]}$PATH_1K"
        log "profiling the metrics-on server under wrk -c$CONNS -d$DURATION"
        wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" -H "$HEADER" "$url" >/dev/null 2>&1 &
        wrk_pid=$!
        sleep 1
        secs="${DURATION%s}"
        if perf record -F 999 -p "${role_pid[server-metrics]}" -o "$work/perf.data" \
            -- sleep "$((secs > 3 ? secs - 2 : 1))" >"$work/perf.log" 2>&1; then
            perf_share="$(perf report -i "$work/perf.data" --no-children --sort symbol -g none \
                --stdio 2>/dev/null | awk '
                    /^#/ || NF < 3 { next }
                    {
                        pct = $1; sub(/%/, "", pct)
                        sym = ""
                        for (i = 2; i < NF; i++) if ($i == "[.]" || $i == "[k]") sym = $(i + 1)
                    }
                    sym ~ /^(pk_server_metrics_|pk_mseries_|pk_mfamily_|pk_metrics_|request_series|ep_count)/ {
                        share += pct; names = names (names ? ", " : "") sym
                    }
                    END { printf "%.2f%% of the server'"'"'s CPU samples (%s)", share, names }')"
        else
            perf_share="not measured (perf record failed: see $work/perf.log)"
            KEEP_WORK=1
        fi
        wait "$wrk_pid" || true
    fi
fi

access_lines=0
if [ "${status[metrics+log]}" = "ok" ]; then
    access_lines="$(grep -c '"subsystem":"access"\|access ' "$work/server-metrics+log.log" || true)"
fi

# ---------------------------------------------------------------- report -----------
meta="$work/meta.tsv"
stamp="$(date -u +%Y%m%d-%H%M%S)"
{
    meta_common
    printf 'HTTP/1.1 load\twrk -t%s -c%s -d%s --latency (after a %s warm-up)\n' \
        "$THREADS" "$CONNS" "$DURATION" "$WARMUP"
    printf 'h2c load\th2load -c%s -m%s -D %s (after a %s warm-up)\n' \
        "$H2_CLIENTS" "$H2_STREAMS" "$DURATION" "$WARMUP"
    printf 'rounds\t%s, the order of the configurations rotating\n' "$ROUNDS"
    printf 'load average before / after\t%s / %s (other work on the machine skews results)\n' \
        "$load_start" "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf 'request\tGET %s (1024-byte body) through piko-server and piko-sidecar to nginx\n' \
        "$PATH_1K"
    printf 'sidecar\tthe same in every configuration: %s\n' "${sidecar_flags:-defaults}"
    for c in "${configs[@]}"; do
        printf 'flags: %s\t%s\n' "${label[$c]}" "${flags[$c]:-(defaults)}"
    done
    printf 'access log lines written\t%s (metrics on, access log on)\n' "$access_lines"
    printf 'perf, metrics on, HTTP/1.1\tmetrics code: %s\n' "$perf_share"
} >"$meta"

mkdir -p "$RESULTS_DIR"
result_file="$RESULTS_DIR/metrics-$stamp.md"
python3 "$here/metrics_report.py" --manifest "$manifest" --meta "$meta" --clk-tck "$clk_tck" \
    >"$result_file"
cat "$result_file"
log "written to $result_file"
