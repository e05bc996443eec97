#!/usr/bin/env bash
# Cluster benchmark of Piko on loopback: how fast routing state propagates between
# nodes, and how long an endpoint is unavailable when the node holding its tunnel is
# killed. See bench/CLUSTER.md; the work is done by bench/cluster.py.
#
# Usage: bench/cluster.sh [BIN_DIR]        (default: build/bin)
#
# Environment (defaults in brackets):
#   PROP_N [100]              endpoints added (and removed) one at a time
#   POLL_MS [2]               status polling interval of the propagation measurement
#   KILL_TRIALS [3]           kill -9 trials
#   PEER_TIMEOUT [5s]         --cluster.peer-timeout of the nodes (the product default)
#   RESOLVE_INTERVAL [5s]     --cluster.resolve-interval
#   RESULTS_DIR [bench/results]   where cluster-<date>.md is written
#   KEEP_WORK=1               keep the work dir (node and sidecar logs, raw.json)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin_dir="${1:-build/bin}"
PROP_N="${PROP_N:-100}"
POLL_MS="${POLL_MS:-2}"
KILL_TRIALS="${KILL_TRIALS:-3}"
PEER_TIMEOUT="${PEER_TIMEOUT:-5s}"
RESOLVE_INTERVAL="${RESOLVE_INTERVAL:-5s}"
RESULTS_DIR="${RESULTS_DIR:-$here/results}"
KEEP_WORK="${KEEP_WORK:-0}"

log() { printf 'bench-cluster: %s\n' "$*" >&2; }
die() {
    log "$*"
    exit 1
}

command -v python3 >/dev/null || die "python3 not found"
[ -x "$bin_dir/piko-server" ] && [ -x "$bin_dir/piko-sidecar" ] ||
    die "piko-server / piko-sidecar not found in $bin_dir (build first)"
"$bin_dir/piko-server" --help 2>&1 | grep -q -- '--cluster.join' ||
    die "$bin_dir/piko-server has no --cluster.join (cluster not built)"

work="$(mktemp -d "${TMPDIR:-/tmp}/piko-bench-cluster.XXXXXX")"
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
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
    printf 'binaries\t%s\n' "$bin_dir"
    printf 'load average before\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
} >"$work/meta.tsv"

mkdir -p "$RESULTS_DIR"
result_file="$RESULTS_DIR/cluster-$stamp.md"
# cluster.py stops every process it started (they also die with it: PR_SET_PDEATHSIG).
python3 "$here/cluster.py" --bin-dir "$bin_dir" --work "$work" --out "$result_file" \
    --prop-n "$PROP_N" --poll-ms "$POLL_MS" --kill-trials "$KILL_TRIALS" \
    --peer-timeout "$PEER_TIMEOUT" --resolve-interval "$RESOLVE_INTERVAL" \
    --meta "$work/meta.tsv"
log "written to $result_file"
