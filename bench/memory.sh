#!/usr/bin/env bash
# Memory per idle tunnel (benchmark scenario 4): what one idle tunnel costs piko-server and
# piko-sidecar, in resident memory. See docs/benchmarks.md "Memory per idle tunnel".
#
# Usage: bench/memory.sh [BIN_DIR]        (default: build/bin)
#
# Server: one piko-server; bench/tunnels.py opens TUNNELS idle tunnels to its upstream port
# (the handshake, then the least HTTP/2 a sidecar speaks: SETTINGS, SETTINGS ACK, PING ACK),
# one endpoint name per tunnel unless ENDPOINTS says fewer. Once the server counts them all
# (piko_upstreams_connected_upstreams at /metrics) and a heartbeat has gone by,
#   server bytes per tunnel = (VmRSS with TUNNELS tunnels - VmRSS before any) / TUNNELS.
# Sidecar: a real piko-sidecar with SIDECAR_BASE --endpoint entries, then another with
# SIDECAR_TUNNELS (each endpoint is one tunnel), both against that server:
#   sidecar bytes per tunnel = (VmRSS(SIDECAR_TUNNELS) - VmRSS(SIDECAR_BASE)) /
#                              (SIDECAR_TUNNELS - SIDECAR_BASE)
# (the slope: the sidecar's fixed costs cancel). With TLS=1 (the default) both are measured
# again with TLS on the upstream port (a throwaway CA and certificate from the openssl CLI).
#
# Environment (defaults in brackets):
#   TUNNELS [10000]          tunnels held by bench/tunnels.py against the server
#   ENDPOINTS [TUNNELS]      endpoint names they are spread over
#   SIDECAR_TUNNELS [TUNNELS] and SIDECAR_BASE [100]   the two sidecar sizes
#   SETTLE [12]              seconds to wait once the tunnels are up (a heartbeat is 10 s)
#   TLS [1]                  0: cleartext only
#   RESULTS_DIR [bench/results]   where memory-<date>.md and .json are written
#   KEEP_WORK=1              keep the work dir (logs)
set -euo pipefail
LOG_PREFIX=bench-memory
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin_dir="${1:-build/bin}"
TUNNELS="${TUNNELS:-10000}"
ENDPOINTS="${ENDPOINTS:-$TUNNELS}"
SIDECAR_TUNNELS="${SIDECAR_TUNNELS:-$TUNNELS}"
SIDECAR_BASE="${SIDECAR_BASE:-100}"
SETTLE="${SETTLE:-12}"
TLS="${TLS:-1}"
RESULTS_DIR="${RESULTS_DIR:-$here/results}"
KEEP_WORK="${KEEP_WORK:-0}"

require_tools python3 curl
[ -x "$bin_dir/piko-server" ] && [ -x "$bin_dir/piko-sidecar" ] ||
    die "piko-server / piko-sidecar not found in $bin_dir (build first)"
[ "$SIDECAR_TUNNELS" -gt "$SIDECAR_BASE" ] || die "SIDECAR_TUNNELS must exceed SIDECAR_BASE"
if [ "$TLS" = "1" ] && ! command -v openssl >/dev/null; then
    log "openssl not found: cleartext only"
    TLS=0
fi
# Every tunnel is a descriptor in the server, the client and the sidecar.
need=$((TUNNELS > SIDECAR_TUNNELS ? TUNNELS : SIDECAR_TUNNELS))
need=$((need + 512))
ulimit -n "$need" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -ge "$need" ] || die "ulimit -n $(ulimit -n) is below $need (raise the hard limit)"

bench_work piko-bench-memory

rss() { awk '/^VmRSS:/ { print $2 * 1024 }' "/proc/$1/status"; }

# wait_tunnels ADMIN_PORT N SECONDS: until the server counts N tunnels.
wait_tunnels() {
    local n=-1
    for _ in $(seq $(($3 * 10))); do
        n="$(curl -s "http://127.0.0.1:$1/metrics" |
            awk '/^piko_upstreams_connected_upstreams / { print $2 }')" || true
        [ "${n:-x}" = "$2" ] && return 0
        sleep 0.1
    done
    die "the server counts ${n:-?} tunnels, not $2, after $3 s"
}

stop_one() {
    local pid="$1" keep=() p
    stop_pids "$pid"
    for p in "${pids[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
    pids=("${keep[@]}")
}

if [ "$TLS" = "1" ]; then
    (
        cd "$work"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
            -subj /CN=bench-ca -keyout ca.key -out ca.pem 2>/dev/null
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -subj /CN=localhost -keyout srv.key -out srv.csr 2>/dev/null
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >srv.ext
        openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
            -extfile srv.ext -out srv.pem 2>/dev/null
    )
fi

# measure MODE (plain|tls): sets srv_idle srv_full srv_maps sc_base sc_full.
measure() {
    local mode="$1" ports proxy up admin cluster sc_admin tls_flags=() scheme=http client_tls=()
    local sc_tls=()
    ports="$(free_ports 5)"
    read -r proxy up admin cluster sc_admin <<<"$ports"
    if [ "$mode" = tls ]; then
        tls_flags=(--upstream.tls.cert "$work/srv.pem" --upstream.tls.key "$work/srv.key")
        scheme=https
        client_tls=(--tls)
        sc_tls=(--connect.tls.root-cas "$work/ca.pem")
    fi
    "$bin_dir/piko-server" --proxy.bind-addr "127.0.0.1:$proxy" \
        --upstream.bind-addr "127.0.0.1:$up" --admin.bind-addr "127.0.0.1:$admin" \
        --cluster.bind-addr "127.0.0.1:$cluster" \
        --upstream.max-connections $((need + 100)) --log.level warn --log.access=false \
        "${tls_flags[@]}" >"$work/server-$mode.log" 2>&1 &
    local srv=$!
    pids+=("$srv")
    wait_tunnels "$admin" 0 10
    sleep 1
    srv_idle="$(rss "$srv")"

    log "$mode: opening $TUNNELS tunnels to the server ($ENDPOINTS endpoint names)"
    python3 "$here/tunnels.py" "127.0.0.1:$up" "$TUNNELS" --endpoints "$ENDPOINTS" \
        "${client_tls[@]}" >"$work/tunnels-$mode.log" 2>&1 &
    local cli=$!
    pids+=("$cli")
    wait_tunnels "$admin" "$TUNNELS" 600
    sleep "$SETTLE"
    wait_tunnels "$admin" "$TUNNELS" 1
    srv_full="$(rss "$srv")"
    srv_maps="$(wc -l <"/proc/$srv/maps")"
    stop_one "$cli"
    wait_tunnels "$admin" 0 60

    # The sidecar: each --endpoint is one tunnel (lib/sidecar: one per endpoint and
    # connect.connections). Nothing listens on the local address; no request is sent.
    local size args sc
    for size in "$SIDECAR_BASE" "$SIDECAR_TUNNELS"; do
        log "$mode: piko-sidecar with $size endpoints"
        args=()
        for ((i = 0; i < size; i++)); do args+=(--endpoint "sc$i=127.0.0.1:9"); done
        "$bin_dir/piko-sidecar" --connect.url "$scheme://127.0.0.1:$up" \
            "${sc_tls[@]}" --admin.bind-addr "127.0.0.1:$sc_admin" \
            --log.level warn "${args[@]}" >"$work/sidecar-$mode-$size.log" 2>&1 &
        sc=$!
        pids+=("$sc")
        wait_tunnels "$admin" "$size" 600
        sleep "$SETTLE"
        wait_tunnels "$admin" "$size" 1
        if [ "$size" = "$SIDECAR_BASE" ]; then sc_base="$(rss "$sc")"; else sc_full="$(rss "$sc")"; fi
        stop_one "$sc"
        wait_tunnels "$admin" 0 60
    done
    stop_one "$srv"
}

measure plain
p_srv_idle=$srv_idle p_srv_full=$srv_full p_sc_base=$sc_base p_sc_full=$sc_full p_maps=$srv_maps
if [ "$TLS" = "1" ]; then
    measure tls
    t_srv_idle=$srv_idle t_srv_full=$srv_full t_sc_base=$sc_base t_sc_full=$sc_full
fi

stamp="$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$RESULTS_DIR"
md="$RESULTS_DIR/memory-$stamp.md"
json="$RESULTS_DIR/memory-$stamp.json"
commit="$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)"
python3 - "$md" "$json" "$commit" "$TUNNELS" "$ENDPOINTS" "$SIDECAR_BASE" "$SIDECAR_TUNNELS" \
    "$p_srv_idle" "$p_srv_full" "$p_sc_base" "$p_sc_full" "$p_maps" \
    "${t_srv_idle:-}" "${t_srv_full:-}" "${t_sc_base:-}" "${t_sc_full:-}" <<'PY'
import json, sys
(md, js, commit, n, eps, sb, sn, psi, psf, pcb, pcf, pmaps, tsi, tsf, tcb, tcf) = sys.argv[1:]
n, eps, sb, sn = int(n), int(eps), int(sb), int(sn)


def per(mode, si, sf, cb, cf):
    si, sf, cb, cf = int(si), int(sf), int(cb), int(cf)
    return {"server_idle_rss": si, "server_rss": sf,
            "server_bytes_per_tunnel": round((sf - si) / n),
            "sidecar_idle_rss": cb, "sidecar_rss": cf,
            "sidecar_bytes_per_tunnel": round((cf - cb) / (sn - sb))}


plain = per("plain", psi, psf, pcb, pcf)
out = {"scenario": "memory", "tunnels": n,
       "server_bytes_per_tunnel": plain["server_bytes_per_tunnel"],
       "sidecar_bytes_per_tunnel": plain["sidecar_bytes_per_tunnel"],
       "server_idle_rss": plain["server_idle_rss"],
       "sidecar_idle_rss": plain["sidecar_idle_rss"],
       "endpoints": eps, "sidecar_tunnels": [sb, sn], "server_mappings": int(pmaps),
       "commit": commit}
rows = [("cleartext", plain)]
if tsi:
    tls = per("tls", tsi, tsf, tcb, tcf)
    out.update({"tls_" + k: v for k, v in tls.items()})
    rows.append(("TLS", tls))
with open(js, "w") as f:
    json.dump(out, f)
    f.write("\n")
kib = lambda b: "%.1f KiB" % (b / 1024)
mib = lambda b: "%.1f MiB" % (b / 1048576)
lines = ["# Memory per idle tunnel", "",
         "Commit %s. Server: %d idle tunnels from bench/tunnels.py over %d endpoint names, "
         "(VmRSS with them - VmRSS before) / %d. Sidecar: one piko-sidecar with %d, then %d "
         "endpoints (one tunnel each), the slope between the two. The loaded cleartext server "
         "had %s memory mappings (/proc/PID/maps lines)." % (commit, n, eps, n, sb, sn, pmaps),
         "",
         "| transport | server per tunnel | server RSS idle -> loaded | sidecar per tunnel "
         "| sidecar RSS %d -> %d tunnels |" % (sb, sn),
         "|---|---:|---:|---:|---:|"]
for name, r in rows:
    lines.append("| %s | %s | %s -> %s | %s | %s -> %s |" % (
        name, kib(r["server_bytes_per_tunnel"]), mib(r["server_idle_rss"]), mib(r["server_rss"]),
        kib(r["sidecar_bytes_per_tunnel"]), mib(r["sidecar_idle_rss"]), mib(r["sidecar_rss"])))
with open(md, "w") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
log "report: $md"
log "json:   $json"
