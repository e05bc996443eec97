#!/usr/bin/env bash
# The bulk byte path in system calls: one TCP stream through Piko (client -> piko-sidecar
# --forward -> piko-server proxy port -> tunnel -> piko-sidecar --tcp-endpoint -> iperf3),
# measured twice per build: without tracing (Gbit/s, CPU time of each Piko process per GiB)
# and under `strace -c -f` (system calls per MiB per process, and the most frequent ones).
# With a second build directory both are measured in the same run, so that a change to the
# byte path is judged against its baseline on the same machine at the same time.
#
# Usage: bench/syscalls.sh BIN_DIR [BASELINE_BIN_DIR]
#
# Environment (defaults in brackets):
#   BYTES [256M]               bytes per direction (iperf3 -n syntax)
#   RESULTS_DIR [bench/results] where syscalls-<UTC date>-<time>.md is written
set -euo pipefail
LOG_PREFIX=bench-syscalls
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BYTES="${BYTES:-256M}"
RESULTS_DIR="${RESULTS_DIR:-$here/results}"
builds=("${1:-build/bin}")
[ -n "${2:-}" ] && builds+=("$2")

require_tools iperf3 strace python3
for b in "${builds[@]}"; do
    if ! [ -x "$b/piko-server" ] || ! [ -x "$b/piko-sidecar" ]; then
        die "no piko-server / piko-sidecar in $b"
    fi
done
bench_work piko-bench-syscalls

wait_port() { # PORT: up to 10 s
    for _ in $(seq 100); do
        (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# run BIN LABEL: one build's measurements, appended to $work/rows.tsv.
run() {
    local bin="$1" label="$2" iperf server exposer forwarder dir mode
    read -r ip_port proxy_port up_port adm1 adm2 adm3 fwd_port < <(free_ports 7)
    iperf3 -s -B 127.0.0.1 -p "$ip_port" >"$work/iperf3.log" 2>&1 &
    iperf=$!
    "$bin/piko-server" --proxy.bind-addr "127.0.0.1:$proxy_port" \
        --upstream.bind-addr "127.0.0.1:$up_port" --admin.bind-addr "127.0.0.1:$adm1" \
        --grace-period 1s --log.level warn --log.access=false >"$work/server.log" 2>&1 &
    server=$!
    wait_port "$up_port" || { log "piko-server did not start"; exit 1; }
    "$bin/piko-sidecar" --connect.url "http://127.0.0.1:$up_port" \
        --admin.bind-addr "127.0.0.1:$adm2" --tcp-endpoint "iperf=127.0.0.1:$ip_port" \
        --grace-period 1s --log.level warn --log.access=false >"$work/exposer.log" 2>&1 &
    exposer=$!
    "$bin/piko-sidecar" --connect.url "http://127.0.0.1:$up_port" \
        --admin.bind-addr "127.0.0.1:$adm3" --forward "127.0.0.1:$fwd_port=iperf" \
        --forward.url "http://127.0.0.1:$proxy_port" --grace-period 1s --log.level warn \
        --log.access=false >"$work/forwarder.log" 2>&1 &
    forwarder=$!
    pids=("$iperf" "$server" "$exposer" "$forwarder")
    wait_port "$fwd_port" || { log "the forwarder did not start: $(cat "$work/forwarder.log")"; exit 1; }
    wait_port "$ip_port" || { log "iperf3 -s did not start: $(cat "$work/iperf3.log")"; exit 1; }
    # The tunnel is up a moment after the exposer starts: one short transfer first.
    for _ in $(seq 50); do
        iperf3 -c 127.0.0.1 -p "$fwd_port" -n 64K >/dev/null 2>&1 && break
        sleep 0.2
    done
    for dir in upload download; do
        local rflag=()
        [ "$dir" = download ] && rflag=(-R)
        for mode in plain strace; do
            local tracers=() p
            if [ "$mode" = strace ]; then
                for p in server exposer forwarder; do
                    strace -c -f -o "$work/strace.$p" -p "${!p}" 2>/dev/null &
                    tracers+=($!)
                done
                sleep 0.5
            fi
            local before after
            before="$(cpu_ticks "$server") $(cpu_ticks "$exposer") $(cpu_ticks "$forwarder")"
            iperf3 -c 127.0.0.1 -p "$fwd_port" -n "$BYTES" "${rflag[@]}" -J >"$work/iperf.json"
            after="$(cpu_ticks "$server") $(cpu_ticks "$exposer") $(cpu_ticks "$forwarder")"
            if [ "$mode" = strace ]; then
                kill -INT "${tracers[@]}"
                wait "${tracers[@]}" 2>/dev/null || true
            fi
            python3 - "$work" "$label" "$dir" "$mode" "$before" "$after" "$clk_tck" \
                >>"$work/rows.tsv" <<'PY'
import json, sys
work, label, direction, mode, before, after, hz = sys.argv[1:]
j = json.load(open(f"{work}/iperf.json"))
end = j["end"]
moved = end.get("sum_received", end.get("sum"))["bytes"]
gbps = end.get("sum_received", end.get("sum"))["bits_per_second"] / 1e9
mib = moved / 2**20
row = [label, direction, mode, f"{gbps:.2f}"]
for name, b, a in zip(("server", "exposer", "forwarder"), before.split(), after.split()):
    ms_per_gib = (int(a) - int(b)) * 1000 / int(hz) / (moved / 2**30)
    calls, top = "", ""
    if mode == "strace":
        rows = []
        for line in open(f"{work}/strace.{name}"):
            f = line.split()
            if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
                rows.append((int(f[3]), f[-1]))
            elif f and f[-1] == "total":
                calls = f"{int(f[3]) / mib:.1f}"
        rows.sort(reverse=True)
        top = ", ".join(f"{n} {c / mib:.1f}" for c, n in rows[:4])
    row += [f"{ms_per_gib:.0f}", calls, top]
print("\t".join(row))
PY
        done
    done
    stop_pids "${pids[@]}"
    pids=()
}

run "${builds[0]}" "this build"
[ "${#builds[@]}" -gt 1 ] && run "${builds[1]}" "baseline"

mkdir -p "$RESULTS_DIR"
report="$RESULTS_DIR/syscalls-$(date -u +%Y%m%d-%H%M%S).md"
python3 - "$work/rows.tsv" "$BYTES" "$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo -)" \
    "${builds[@]}" >"$report" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
size, commit, builds = sys.argv[2], sys.argv[3], sys.argv[4:]
print(f"# Bulk path in system calls ({size} per direction, commit {commit})\n")
print("One TCP stream: iperf3 -> piko-sidecar --forward -> piko-server -> tunnel -> "
      "piko-sidecar --tcp-endpoint -> iperf3 -s. Builds: " +
      ", ".join(f"`{b}`" for b in builds) + " (the first is \"this build\").\n")
print("| build | direction | Gbit/s | CPU ms per GiB: server / exposer / forwarder |")
print("|---|---|---:|---:|")
for r in rows:
    if r[2] == "plain":
        print(f"| {r[0]} | {r[1]} | {r[3]} | {r[4]} / {r[7]} / {r[10]} |")
print("\nUnder `strace -c -f` (slower; counts per MiB moved):\n")
print("| build | direction | process | syscalls per MiB | most frequent (per MiB) |")
print("|---|---|---|---:|---|")
for r in rows:
    if r[2] == "strace":
        for i, name in enumerate(("server", "exposer", "forwarder")):
            print(f"| {r[0]} | {r[1]} | {name} | {r[5 + 3 * i]} | {r[6 + 3 * i]} |")
PY
cat "$report"
log "report: $report"
