#!/usr/bin/env bash
# The benchmark suite: every scenario in one run, then ONE Markdown report and ONE PNG
# chart in RESULTS_DIR (suite-<UTC stamp>.md and .png). See docs/benchmarks.md.
#
# Usage: bench/suite.sh [BIN_DIR]        (default: build/bin; `make bench` passes it)
#
# Scenarios, each against baselines measured in the same run:
#   1. 1 KiB GET keep-alive (bench/http.sh): nginx direct, one hop, two hops, Piko,
#      Piko cross-node; req/s, latency and CPU per request of the proxy processes
#   2. latency at a fixed rate (bench/http.sh, after the rounds): half of nginx two hops'
#      peak, p50 / p99 / p99.9 of nginx two hops and Piko
#   3. bulk TCP (bench/tcp.sh): BULK_BYTES each way, direct, socat relay, Piko
#   4. memory per idle tunnel (bench/memory.sh, when present and executable)
#   5. scaling: scenario 1's HTTP/1.1 Piko row and bulk with --workers 1 and 2 (when
#      piko-server --help lists --workers)
#
# Environment (defaults in brackets; the scenario scripts' own variables pass through):
#   QUICK=1                  a quick run (a couple of minutes): DURATION=3s WARMUP=1s
#                            ROUNDS=1 BULK_BYTES=128M N=2000 CONN_N=100, unless set
#   DURATION [10s] WARMUP [2s] ROUNDS [3]    bench/http.sh (scenarios 1, 2, 5)
#   BULK_BYTES [1G]  N [10000]  CONN_N [500]  TCP_ROUNDS [1]    bench/tcp.sh (3, 5)
#   SCALING_BULK_BYTES [BULK_BYTES]          bulk per direction in the scaling runs
#   MEMORY_SCRIPT [bench/memory.sh]          the memory scenario's script
#   RESULTS_DIR [bench/results]              where suite-<stamp>.md and .png go
#   REPORT_NOTE [unset]                      a sentence for the report's head (e.g. what
#                                            else ran on the machine)
#   KEEP_WORK=1                              keep the scenarios' own reports and JSON
set -euo pipefail
LOG_PREFIX=bench-suite
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin_dir="${1:-build/bin}"
if [ "${QUICK:-0}" = "1" ]; then
    export DURATION="${DURATION:-3s}" WARMUP="${WARMUP:-1s}" ROUNDS="${ROUNDS:-1}"
    export BULK_BYTES="${BULK_BYTES:-128M}" N="${N:-2000}" CONN_N="${CONN_N:-100}"
fi
RESULTS_DIR="${RESULTS_DIR:-$here/results}"
MEMORY_SCRIPT="${MEMORY_SCRIPT:-$here/memory.sh}"
TCP_ROUNDS="${TCP_ROUNDS:-1}"
KEEP_WORK="${KEEP_WORK:-0}"
bin_dir="$(cd "$bin_dir" && pwd)" || die "no $bin_dir (build first)"
[ -x "$bin_dir/piko-server" ] && [ -x "$bin_dir/piko-sidecar" ] ||
    die "piko-server and piko-sidecar not found in $bin_dir (build first)"
require_tools wrk h2load nginx curl python3

bench_work piko-bench-suite
out="$work/results"
mkdir -p "$out"
stamp="$(date -u +%Y%m%d-%H%M%S)"
status="$work/status.tsv" # scenario, status ("ok", "failed", "not available: ...")
: >"$status"
started="$(date +%s)"

# scenario NAME LOGFILE CMD...: runs one scenario script, its output to LOGFILE and its
# progress lines ("bench...: ...") to stderr; a failure is recorded, not fatal: the
# report says which scenario failed.
scenario() {
    local name="$1" logf="$2" t0 rc=0
    shift 2
    t0="$(date +%s)"
    log "scenario $name: $*"
    # (pipefail: the pipeline fails with the script, the grep never fails it)
    RESULTS_DIR="$out" "$@" 2>&1 | tee "$work/$logf" |
        { grep --line-buffered -E '^bench[a-z-]*: ' || true; } >&2 || rc=$?
    if [ "$rc" -eq 0 ]; then
        printf '%s\tok\t%s\n' "$name" "$(($(date +%s) - t0))" >>"$status"
    else
        printf '%s\tfailed (exit %s; output kept in the work dir)\t%s\n' "$name" "$rc" \
            "$(($(date +%s) - t0))" >>"$status"
        log "scenario $name failed: $(tail -n 3 "$work/$logf" | tr '\n' ' ')"
        KEEP_WORK=1
    fi
}

# 1 + 2: the HTTP targets, then the fixed-rate latency runs.
STAMP="$stamp" scenario http http.log "$here/http.sh" "$bin_dir"

# 3: bulk TCP (and bench/tcp.sh's latency figures).
ROUNDS="$TCP_ROUNDS" STAMP="$stamp" scenario tcp tcp.log "$here/tcp.sh" "$bin_dir"

# 4: memory per idle tunnel, by its own script when there is one.
if [ -f "$MEMORY_SCRIPT" ] && [ -x "$MEMORY_SCRIPT" ]; then
    scenario memory memory.log "$MEMORY_SCRIPT" "$bin_dir"
else
    printf 'memory\tnot available (%s missing)\t0\n' \
        "$(realpath --relative-to="$here/.." "$MEMORY_SCRIPT" 2>/dev/null || echo "$MEMORY_SCRIPT")" \
        >>"$status"
fi

# 5: scaling, when the binaries have --workers.
server_help="$("$bin_dir/piko-server" --help 2>&1 || true)"
if grep -q -- '--workers' <<<"$server_help"; then
    for n in 1 2; do
        WORKERS="$n" PIKO_ONLY=1 PROTOCOLS=HTTP/1.1 STAMP="$stamp-workers$n" \
            scenario "scaling-http-$n" "scaling-http-$n.log" "$here/http.sh" "$bin_dir"
        WORKERS="$n" LATENCY=0 ROUNDS="$TCP_ROUNDS" STAMP="$stamp-workers$n" \
            BULK_BYTES="${SCALING_BULK_BYTES:-${BULK_BYTES:-1G}}" \
            scenario "scaling-tcp-$n" "scaling-tcp-$n.log" "$here/tcp.sh" "$bin_dir"
    done
else
    printf 'scaling\tnot built (no --workers flag)\t0\n' >>"$status"
fi

# The machine and the tools, for the report's header.
{
    meta_common
    printf 'kernel\t%s\n' "$(uname -srm)"
    printf 'nproc\t%s\n' "$(nproc)"
    printf 'nginx\t%s\n' "$(nginx -v 2>&1 | sed 's/^nginx version: //')"
    printf 'wrk\t%s\n' "$(wrk --version 2>&1 | head -n 1 | cut -d' ' -f1-2)"
    printf 'h2load\t%s\n' "$(h2load --version 2>&1 | head -n 1)"
    if command -v iperf3 >/dev/null; then
        printf 'iperf3\t%s\n' "$(iperf3 --version | head -n 1 | cut -d' ' -f1-2)"
    fi
    if command -v socat >/dev/null; then
        printf 'socat\t%s\n' "$(socat -V | sed -n 2p | cut -d' ' -f1-3)"
    fi
    if command -v gnuplot >/dev/null; then
        printf 'gnuplot\t%s\n' "$(gnuplot --version)"
    fi
    printf 'parameters\tQUICK=%s DURATION=%s WARMUP=%s ROUNDS=%s BULK_BYTES=%s TCP_ROUNDS=%s\n' \
        "${QUICK:-0}" "${DURATION:-10s}" "${WARMUP:-2s}" "${ROUNDS:-3}" "${BULK_BYTES:-1G}" \
        "$TCP_ROUNDS"
    printf 'duration\t%s s for all scenarios\n' "$(($(date +%s) - started))"
    if [ -n "${REPORT_NOTE:-}" ]; then
        printf 'note\t%s\n' "$REPORT_NOTE"
    fi
} >"$work/meta.tsv"

mkdir -p "$RESULTS_DIR"
python3 "$here/suite_report.py" --dir "$out" --stamp "$stamp" --meta "$work/meta.tsv" \
    --status "$status" --md "$RESULTS_DIR/suite-$stamp.md" --png "$RESULTS_DIR/suite-$stamp.png"
cat "$RESULTS_DIR/suite-$stamp.md"
log "written to $RESULTS_DIR/suite-$stamp.md and suite-$stamp.png"
if grep -q $'\tfailed' "$status"; then
    die "a scenario failed: see $work"
fi
