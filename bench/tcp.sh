#!/usr/bin/env bash
# Raw TCP benchmark of Piko (issue 3) on loopback, measured in one run so that the ratios
# are comparable. See bench/TCP.md.
#
# Usage: bench/tcp.sh [BIN_DIR]        (default: build/bin)
#
# Targets, all in front of the same services (an iperf3 server for bulk, a small Python
# echo server for latency):
#   direct                   client -> service
#   socat relay              client -> socat (fork per connection) -> service
#   Piko, proxy port         client (does the /_piko/v1/tcp upgrade itself) -> piko-server
#                            -> tunnel -> piko-sidecar -> service          (latency only)
#   Piko, forward            client -> piko-sidecar --forward -> piko-server proxy port
#                            -> tunnel -> piko-sidecar --tcp-endpoint -> service
# Bulk: 1 GiB client -> service ("upload") and service -> client ("download"), with
# iperf3 (-n, one stream) or, without iperf3, a Python sender/receiver.
# Latency: request/response ping-pong of MSG bytes on one connection (N round trips,
# p50/p99), and connection set-up: connect + one 1-byte round trip on a new connection
# (CONN_N times, p50/p99).
#
# Environment (defaults in brackets):
#   BULK_BYTES [1G]      bytes per bulk direction (iperf3 -n syntax: 512M, 1G, ...)
#   N [10000]            ping-pong round trips     MSG [64]   ping-pong message size
#   CONN_N [500]         connection set-ups
#   ROUNDS [1]           repeat every measurement; the median round is reported
#   LATENCY [1]          0: bulk only (no ping-pong, no connection set-ups)
#   WORKERS [unset]      pass --workers N to piko-server and the sidecars (fails if
#                        they lack the flag)
#   NO_IPERF=1           use the Python bulk client even if iperf3 is installed
#   RESULTS_DIR [bench/results]   where tcp-<date>.md and tcp-<date>.json are written
#   KEEP_WORK=1          keep the work dir (logs, raw output)
set -euo pipefail
LOG_PREFIX=bench-tcp
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin_dir="${1:-build/bin}"
BULK_BYTES="${BULK_BYTES:-1G}"
N="${N:-10000}"
MSG="${MSG:-64}"
CONN_N="${CONN_N:-500}"
ROUNDS="${ROUNDS:-1}"
LATENCY="${LATENCY:-1}"
NO_IPERF="${NO_IPERF:-0}"
RESULTS_DIR="${RESULTS_DIR:-$here/results}"
KEEP_WORK="${KEEP_WORK:-0}"

command -v python3 >/dev/null || die "python3 not found"
[ -x "$bin_dir/piko-server" ] && [ -x "$bin_dir/piko-sidecar" ] ||
    die "piko-server / piko-sidecar not found in $bin_dir (build first)"
# (--help is read whole first: grep -q would close the pipe early, and pipefail fail it)
grep -q -- '--forward' <<<"$("$bin_dir/piko-sidecar" --help 2>&1 || true)" ||
    die "$bin_dir/piko-sidecar has no --forward (raw TCP not built)"
workers_flag="$(piko_workers_flag "$bin_dir")"
read -ra workers_args <<<"$workers_flag"
use_iperf=0
if [ "$NO_IPERF" != "1" ] && command -v iperf3 >/dev/null; then
    use_iperf=1
else
    log "iperf3 not used: bulk runs with the Python sender/receiver (apt-get install iperf3)"
fi
have_socat=0
if command -v socat >/dev/null; then
    have_socat=1
else
    log "socat not found: no relay rows (apt-get install socat)"
fi

bench_work piko-bench-tcp
declare -A role_pid=()

# ---------------------------------------------------------------- the Python tool ------
cat >"$work/tcp_tool.py" <<'EOF'
"""Servers and clients of bench/tcp.sh. Standard library only.
  echo PORT                         threaded echo server (TCP_NODELAY)
  bulk PORT                         bulk server: 'U'+u64 n -> reads n, answers 8 bytes;
                                    'D'+u64 n -> sends n bytes
  pingpong PORT N MSG [ENDPOINT]    N round trips of MSG bytes on one connection
  connects PORT N [ENDPOINT]        N x (connect, 1-byte round trip, close)
  bulkc PORT up|down BYTES [ENDPOINT]
With ENDPOINT the client first upgrades on PORT (a Piko proxy port) to
/_piko/v1/tcp/ENDPOINT. Client commands print one JSON line."""
import json, socket, struct, sys, threading, time


def serve(port, handler):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(4096)
    while True:
        c, _ = ls.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=handler, args=(c,), daemon=True).start()


def echo(c):
    try:
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
    except OSError:
        pass
    c.close()


def exact(c, n):
    b = b""
    while len(b) < n:
        d = c.recv(n - len(b))
        if not d:
            raise EOFError
        b += d
    return b


def bulk(c):
    try:
        op, n = struct.unpack("!cQ", exact(c, 9))
        buf = bytearray(1 << 20)
        if op == b"U":
            left = n
            while left:
                r = c.recv_into(buf, min(left, len(buf)))
                if not r:
                    break
                left -= r
            c.sendall(struct.pack("!Q", n - left))
        else:
            mv = memoryview(buf)
            left = n
            while left:
                k = min(left, len(buf))
                c.sendall(mv[:k])
                left -= k
    except (OSError, EOFError):
        pass
    c.close()


def connect(port, endpoint):
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if endpoint:
        s.sendall(("GET /_piko/v1/tcp/%s HTTP/1.1\r\nHost: bench\r\nConnection: Upgrade\r\n"
                   "Upgrade: piko-tcp\r\n\r\n" % endpoint).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            d = s.recv(1)  # byte by byte: nothing past the head is consumed
            if not d:
                raise SystemExit("upgrade: connection closed")
            head += d
        if not head.startswith(b"HTTP/1.1 101"):
            raise SystemExit("upgrade refused: %r" % head[:200])
    return s


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def stats(us):
    return {"n": len(us), "p50_us": pct(us, 50), "p99_us": pct(us, 99),
            "mean_us": sum(us) / len(us), "max_us": max(us)}


def main():
    cmd, port = sys.argv[1], int(sys.argv[2])
    if cmd == "echo":
        serve(port, echo)
    elif cmd == "bulk":
        serve(port, bulk)
    elif cmd == "pingpong":
        n, size = int(sys.argv[3]), int(sys.argv[4])
        ep = sys.argv[5] if len(sys.argv) > 5 else None
        s = connect(port, ep)
        msg = b"p" * size
        for _ in range(min(200, n)):   # warm-up
            s.sendall(msg)
            exact(s, size)
        out = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            s.sendall(msg)
            exact(s, size)
            out.append((time.perf_counter_ns() - t0) / 1000.0)
        s.close()
        print(json.dumps(stats(out)))
    elif cmd == "connects":
        n = int(sys.argv[3])
        ep = sys.argv[4] if len(sys.argv) > 4 else None
        out = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            s = connect(port, ep)
            s.sendall(b"x")
            exact(s, 1)
            out.append((time.perf_counter_ns() - t0) / 1000.0)
            s.close()
        print(json.dumps(stats(out)))
    elif cmd == "bulkc":
        direction, n = sys.argv[3], int(sys.argv[4])
        ep = sys.argv[5] if len(sys.argv) > 5 else None
        s = connect(port, ep)
        buf = bytearray(1 << 20)
        t0 = time.perf_counter()
        if direction == "up":
            s.sendall(struct.pack("!cQ", b"U", n))
            mv = memoryview(buf)
            left = n
            while left:
                k = min(left, len(buf))
                s.sendall(mv[:k])
                left -= k
            got = struct.unpack("!Q", exact(s, 8))[0]
        else:
            s.sendall(struct.pack("!cQ", b"D", n))
            got = 0
            while got < n:
                r = s.recv_into(buf)
                if not r:
                    break
                got += r
        dt = time.perf_counter() - t0
        s.close()
        if got != n:
            raise SystemExit("bulk %s: %d of %d bytes" % (direction, got, n))
        print(json.dumps({"bytes": n, "seconds": dt, "gbit_s": n * 8 / dt / 1e9}))


main()
EOF

to_bytes() {
    python3 - "$1" <<'EOF'
import re, sys
m = re.fullmatch(r"(\d+)([KMGkmg]?)", sys.argv[1])
if not m:
    sys.exit("bad size " + sys.argv[1])
print(int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()])
EOF
}
bulk_bytes="$(to_bytes "$BULK_BYTES")"

# wait_port SECONDS PID PORT: until something listens on 127.0.0.1:PORT (/proc/net/tcp,
# so that no connection is opened), or PID dies.
wait_port() {
    local seconds="$1" pid="$2" port="$3" hex tries
    hex="$(printf ':%04X' "$port")"
    tries=$((seconds * 10))
    while [ "$tries" -gt 0 ]; do
        if awk -v p="$hex" 'NR > 1 && $4 == "0A" && substr($2, length($2) - 4) == p { f = 1 }
                            END { exit !f }' /proc/net/tcp; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
        tries=$((tries - 1))
    done
    return 1
}

wait_ready() { # SECONDS PID ADMIN_PORT
    wait_ok "$1" "$2" "http://127.0.0.1:$3/ready"
}

start() { # ROLE CMD...: background, output to $work/ROLE.log
    local role="$1"
    shift
    "$@" >"$work/$role.log" 2>&1 &
    pids+=($!)
    role_pid[$role]=$!
}

read -r iperf_port echo_port bulk_port relay_iperf_port relay_echo_port relay_bulk_port \
    proxy_port upstream_port admin_port exp_admin_port fwd_admin_port \
    fwd_iperf_port fwd_echo_port fwd_bulk_port < <(free_ports 14)

# ---------------------------------------------------------------- services ------------
tool=(python3 "$work/tcp_tool.py")
start echo "${tool[@]}" echo "$echo_port"
start bulk "${tool[@]}" bulk "$bulk_port"
wait_port 10 "${role_pid[echo]}" "$echo_port" || die "echo server did not start"
wait_port 10 "${role_pid[bulk]}" "$bulk_port" || die "bulk server did not start"
if [ "$use_iperf" -eq 1 ]; then
    start iperf3 iperf3 -s -B 127.0.0.1 -p "$iperf_port"
    wait_port 10 "${role_pid[iperf3]}" "$iperf_port" || die "iperf3 -s did not start"
fi
if [ "$have_socat" -eq 1 ]; then
    for pair in "iperf:$relay_iperf_port:$iperf_port" "echo:$relay_echo_port:$echo_port" \
        "bulk:$relay_bulk_port:$bulk_port"; do
        IFS=: read -r name lport rport <<<"$pair"
        start "socat-$name" socat "TCP-LISTEN:$lport,bind=127.0.0.1,fork,reuseaddr,nodelay" \
            "TCP:127.0.0.1:$rport,nodelay"
        wait_port 10 "${role_pid[socat-$name]}" "$lport" || die "socat relay $name did not start"
    done
fi

# ---------------------------------------------------------------- Piko -----------------
log "piko-server proxy :$proxy_port; exposer (iperf, echo, bulk); forwarder" \
    ":$fwd_iperf_port :$fwd_echo_port :$fwd_bulk_port"
start piko-server "$bin_dir/piko-server" --proxy.bind-addr "127.0.0.1:$proxy_port" \
    --upstream.bind-addr "127.0.0.1:$upstream_port" --admin.bind-addr "127.0.0.1:$admin_port" \
    --grace-period 1s --log.level warn "${workers_args[@]}"
wait_ready 10 "${role_pid[piko-server]}" "$admin_port" || die "piko-server did not start"
start piko-sidecar-exposer "$bin_dir/piko-sidecar" \
    --connect.url "http://127.0.0.1:$upstream_port" --admin.bind-addr "127.0.0.1:$exp_admin_port" \
    --tcp-endpoint "iperf=127.0.0.1:$iperf_port" --tcp-endpoint "echo=127.0.0.1:$echo_port" \
    --tcp-endpoint "bulk=127.0.0.1:$bulk_port" --grace-period 1s --log.level warn "${workers_args[@]}"
start piko-sidecar-forwarder "$bin_dir/piko-sidecar" \
    --connect.url "http://127.0.0.1:$upstream_port" --admin.bind-addr "127.0.0.1:$fwd_admin_port" \
    --forward "127.0.0.1:$fwd_iperf_port=iperf" --forward "127.0.0.1:$fwd_echo_port=echo" \
    --forward "127.0.0.1:$fwd_bulk_port=bulk" --forward.url "http://127.0.0.1:$proxy_port" \
    --grace-period 1s --log.level warn "${workers_args[@]}"
wait_ready 15 "${role_pid[piko-sidecar-exposer]}" "$exp_admin_port" || die "exposer not ready"
for p in "$fwd_iperf_port" "$fwd_echo_port" "$fwd_bulk_port"; do
    wait_port 10 "${role_pid[piko-sidecar-forwarder]}" "$p" || die "forwarder not listening on :$p"
done
# The exposer is ready a moment before the server routes to it: wait for one echo.
ok=0
for _ in $(seq 50); do
    if "${tool[@]}" pingpong "$fwd_echo_port" 1 8 >/dev/null 2>&1; then
        ok=1
        break
    fi
    sleep 0.1
done
[ "$ok" -eq 1 ] || die "no echo through Piko (logs: $work)"

# ---------------------------------------------------------------- measure --------------
raw="$work/raw.tsv" # target, metric, round, json
: >"$raw"

bulk_run() { # TARGET DIRECTION PORT_IPERF PORT_BULK
    local target="$1" dir="$2" ip="$3" bp="$4" round="$5" out
    if [ "$use_iperf" -eq 1 ]; then
        local rflag=()
        [ "$dir" = "down" ] && rflag=(-R)
        out="$(iperf3 -c 127.0.0.1 -p "$ip" -n "$bulk_bytes" "${rflag[@]}" -J 2>&1)" || {
            log "iperf3 $target $dir failed: $(printf '%s' "$out" | tail -n 3)"
            return 1
        }
        out="$(printf '%s' "$out" | python3 -c '
import json, sys
d = json.load(sys.stdin)
if d.get("error"):
    sys.exit(d["error"])
e = d["end"]["sum_received"]
print(json.dumps({"bytes": e["bytes"], "seconds": e["seconds"],
                  "gbit_s": e["bits_per_second"] / 1e9}))')" || return 1
    else
        out="$("${tool[@]}" bulkc "$bp" "$dir" "$bulk_bytes")" || return 1
    fi
    printf '%s\tbulk-%s\t%s\t%s\n' "$target" "$dir" "$round" "$out" >>"$raw"
}

lat_run() { # TARGET PORT [ENDPOINT]
    local target="$1" port="$2" round="$3" ep="${4:-}" out
    out="$("${tool[@]}" pingpong "$port" "$N" "$MSG" $ep)" || return 1
    printf '%s\tpingpong\t%s\t%s\n' "$target" "$round" "$out" >>"$raw"
    out="$("${tool[@]}" connects "$port" "$CONN_N" $ep)" || return 1
    printf '%s\tconnect\t%s\t%s\n' "$target" "$round" "$out" >>"$raw"
}

failed=0
load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$ROUNDS"); do
    for dir in up down; do
        log "round $round/$ROUNDS: bulk $dir $BULK_BYTES"
        bulk_run "direct" "$dir" "$iperf_port" "$bulk_port" "$round" || failed=1
        if [ "$have_socat" -eq 1 ]; then
            bulk_run "socat relay" "$dir" "$relay_iperf_port" "$relay_bulk_port" "$round" ||
                failed=1
        fi
        bulk_run "Piko, forward" "$dir" "$fwd_iperf_port" "$fwd_bulk_port" "$round" || failed=1
    done
    [ "$LATENCY" = "1" ] || continue
    log "round $round/$ROUNDS: latency ($N x $MSG B ping-pong, $CONN_N connection set-ups)"
    lat_run "direct" "$echo_port" "$round" || failed=1
    if [ "$have_socat" -eq 1 ]; then
        lat_run "socat relay" "$relay_echo_port" "$round" || failed=1
    fi
    lat_run "Piko, proxy port" "$proxy_port" "$round" echo || failed=1
    lat_run "Piko, forward" "$fwd_echo_port" "$round" || failed=1
done

# ---------------------------------------------------------------- memory ---------------
rss="$work/rss.tsv"
: >"$rss"
for role in piko-server piko-sidecar-exposer piko-sidecar-forwarder; do
    pid="${role_pid[$role]}"
    if kill -0 "$pid" 2>/dev/null; then
        printf '%s\t%s\t%s\n' "$role" \
            "$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")" \
            "$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")" >>"$rss"
    else
        printf '%s\t-\t-\n' "$role (exited during the run)" >>"$rss"
        failed=1
    fi
done

# ---------------------------------------------------------------- report ---------------
stamp="${STAMP:-$(date -u +%Y%m%d-%H%M%S)}"
meta="$work/meta.tsv"
{
    meta_common
    if [ "$use_iperf" -eq 1 ]; then
        printf 'bulk\t%s each way, one stream: %s -n (upload), -n -R (download)\n' \
            "$BULK_BYTES" "$(iperf3 --version | head -n 1 | cut -d' ' -f1-2)"
    else
        printf 'bulk\t%s each way, one stream, Python sender/receiver\n' "$BULK_BYTES"
    fi
    printf 'latency\t%s round trips of %s bytes on one connection (after 200 unmeasured); %s x connect + 1-byte round trip + close; Python client and echo server, TCP_NODELAY\n' \
        "$N" "$MSG" "$CONN_N"
    if [ "$have_socat" -eq 1 ]; then
        printf 'relay\t%s, fork per connection, nodelay\n' "$(socat -V | sed -n 2p | cut -d' ' -f1-3)"
    fi
    printf 'rounds\t%s (median round shown)\n' "$ROUNDS"
    if [ "${#workers_args[@]}" -gt 0 ]; then
        printf 'Piko workers\t%s\n' "${workers_args[*]}"
    fi
    printf 'load average before / after\t%s / %s\n' "$load_start" "$(cut -d' ' -f1-3 /proc/loadavg)"
} >"$meta"

mkdir -p "$RESULTS_DIR"
result_file="$RESULTS_DIR/tcp-$stamp.md"
python3 - "$raw" "$meta" "$rss" "$RESULTS_DIR/tcp-$stamp.json" >"$result_file" <<'EOF'
import json, statistics, sys

raw_path, meta_path, rss_path, json_path = sys.argv[1:5]
rows = {}
for line in open(raw_path):
    target, metric, rnd, js = line.rstrip("\n").split("\t", 3)
    rows.setdefault((target, metric), []).append(json.loads(js))

TARGETS = ["direct", "socat relay", "Piko, proxy port", "Piko, forward"]
PIKO = "Piko, forward"


def median_run(runs, key):
    runs = sorted(runs, key=lambda r: r[key])
    return runs[(len(runs) - 1) // 2]


def get(target, metric, key):
    runs = rows.get((target, metric))
    if not runs:
        return None
    return median_run(runs, key)[key]


def fmt(v, f="%.2f"):
    return "-" if v is None else f % v


def ratio(a, b):
    return "-" if a is None or b is None or b == 0 else "%.2f" % (a / b)


print("# Piko raw TCP benchmark\n")
for line in open(meta_path):
    k, v = line.rstrip("\n").split("\t", 1)
    print("- **%s**: %s" % (k, v))
print()
print("Client -> service through each target, all on loopback. Piko, forward: client ->"
      " piko-sidecar --forward -> piko-server proxy port -> tunnel -> piko-sidecar"
      " --tcp-endpoint -> service. Piko, proxy port: the client does the"
      " /_piko/v1/tcp upgrade itself (no forward hop).\n")
print("| target | upload Gbit/s | download Gbit/s | ping-pong p50 us | p99 us |"
      " connect+RTT p50 us | p99 us |")
print("|---|---:|---:|---:|---:|---:|---:|")
present = [t for t in TARGETS if any(k[0] == t for k in rows)]
for t in present:
    print("| %s | %s | %s | %s | %s | %s | %s |" % (
        t, fmt(get(t, "bulk-up", "gbit_s")), fmt(get(t, "bulk-down", "gbit_s")),
        fmt(get(t, "pingpong", "p50_us"), "%.1f"), fmt(get(t, "pingpong", "p99_us"), "%.1f"),
        fmt(get(t, "connect", "p50_us"), "%.0f"), fmt(get(t, "connect", "p99_us"), "%.0f")))
print()
print("Ratios of Piko, forward (throughput: Piko / reference, higher is better; latency:"
      " Piko / reference, lower is better):\n")
print("| reference | upload | download | ping-pong p50 | p99 | connect p50 | p99 |")
print("|---|---:|---:|---:|---:|---:|---:|")
for ref in ("direct", "socat relay"):
    if ref not in present:
        continue
    print("| %s | %s | %s | %s | %s | %s | %s |" % (
        ref,
        ratio(get(PIKO, "bulk-up", "gbit_s"), get(ref, "bulk-up", "gbit_s")),
        ratio(get(PIKO, "bulk-down", "gbit_s"), get(ref, "bulk-down", "gbit_s")),
        ratio(get(PIKO, "pingpong", "p50_us"), get(ref, "pingpong", "p50_us")),
        ratio(get(PIKO, "pingpong", "p99_us"), get(ref, "pingpong", "p99_us")),
        ratio(get(PIKO, "connect", "p50_us"), get(ref, "connect", "p50_us")),
        ratio(get(PIKO, "connect", "p99_us"), get(ref, "connect", "p99_us"))))
print()
print("Peak memory after the run (VmHWM / VmRSS):\n")
print("| process | VmHWM MiB | VmRSS MiB |")
print("|---|---:|---:|")
rss_rows = [line.rstrip("\n").split("\t") for line in open(rss_path)]
for name, hwm, cur in rss_rows:
    f = lambda x: "-" if x == "-" else "%.1f" % (int(x) / 1024.0)
    print("| %s | %s | %s |" % (name, f(hwm), f(cur)))

# The summary for bench/suite.sh: every target's medians and Piko's ratios.
METRICS = (("bulk-up", "gbit_s", "upload_gbit_s"), ("bulk-down", "gbit_s", "download_gbit_s"),
           ("pingpong", "p50_us", "pingpong_p50_us"), ("pingpong", "p99_us", "pingpong_p99_us"),
           ("connect", "p50_us", "connect_p50_us"), ("connect", "p99_us", "connect_p99_us"))
summary = {
    "scenario": "tcp",
    "meta": dict(line.rstrip("\n").split("\t", 1) for line in open(meta_path)),
    "targets": {t: {name: get(t, m, k) for m, k, name in METRICS} for t in present},
    "ratios": {ref: {name: (None if get(PIKO, m, k) is None or not get(ref, m, k)
                            else get(PIKO, m, k) / get(ref, m, k))
                     for m, k, name in METRICS}
               for ref in ("direct", "socat relay") if ref in present},
    "rss_kb": {r[0]: {"hwm": None if r[1] == "-" else int(r[1]),
                      "rss": None if r[2] == "-" else int(r[2])} for r in rss_rows},
}
with open(json_path, "w") as f:
    json.dump(summary, f, indent=1)
    f.write("\n")
EOF
cat "$result_file"
log "written to $result_file and tcp-$stamp.json"
[ "$failed" -eq 0 ] || die "some measurements failed (logs: $work)"
