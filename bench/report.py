#!/usr/bin/env python3
"""Turns the raw output of bench/http.sh into one Markdown report.

Inputs (all written by bench/http.sh into its work directory):
  --manifest  TSV: protocol, target, tool (wrk|h2load), output file, h2load log file
              (or "-"), status ("ok" or "skipped: <why>"), CPU clock ticks of the proxy
              processes during the run (or "-"), how many processes; one line per
              measured target and round.
  --rate      TSV: protocol, target, offered req/s, h2load output, h2load log file,
              status; the fixed-rate latency runs (optional).
  --clk-tck   clock ticks per second of the CPU figures (getconf CLK_TCK).
  --meta      TSV: key, value; printed as the run's header (machine, tools, parameters).
  --rss       TSV: process, VmHWM in kB (or "-"); peak resident memory after the run.
  --json      where to write the summary as JSON (optional): the rows, the ratios to
              nginx two hops, the fixed-rate percentiles and the meta lines.

The reference for every ratio is "nginx, two hops" of the same protocol: Piko is two
proxy processes (server and sidecar) in front of the service, like two nginx hops.
Standard library only.
"""

import argparse
import math
import re
import sys

REFERENCE = "nginx, two hops"
PIKO = "Piko (server + sidecar)"
CROSS = "Piko, cross-node"
PIKO_TARGETS = (PIKO, CROSS, "Piko baseline")

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(path):
    """Returns dict(rps, p50, p99, requests, errors) from `wrk --latency` output."""
    text = open(path, encoding="utf-8", errors="replace").read()
    out = {"rps": None, "p50": None, "p99": None, "requests": None, "errors": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        out["rps"] = float(m.group(1))
    for pct, key in (("50", "p50"), ("99", "p99")):
        m = re.search(r"^\s+" + pct + r"(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        if m:
            out[key] = float(m.group(1)) * UNITS_MS[m.group(2)]
    m = re.search(r"(\d+) requests in", text)
    if m:
        out["requests"] = int(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        out["errors"] += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["errors"] += sum(int(x) for x in m.groups())
    return out


def percentile(sorted_values, pct):
    if not sorted_values:
        return None
    k = max(0, math.ceil(pct / 100.0 * len(sorted_values)) - 1)
    return sorted_values[k]


def parse_h2load(path, log_path):
    """Returns dict(rps, p50, p99, requests, errors) from h2load output and --log-file."""
    text = open(path, encoding="utf-8", errors="replace").read()
    out = {"rps": None, "p50": None, "p99": None, "requests": None, "errors": 0}
    m = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", text)
    if m:
        out["rps"] = float(m.group(1))
    m = re.search(
        r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        text,
    )
    if m:
        out["requests"] = int(m.group(1))
        out["errors"] += int(m.group(3)) + int(m.group(5))
    m = re.search(r"status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        out["errors"] += sum(int(x) for x in m.groups())
    latencies = []
    if log_path and log_path != "-":
        try:
            with open(log_path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    cols = line.split("\t")
                    if len(cols) >= 3 and cols[1].startswith("2"):
                        latencies.append(int(cols[2]) / 1000.0)
        except OSError:
            pass
    latencies.sort()
    out["p50"] = percentile(latencies, 50)
    out["p99"] = percentile(latencies, 99)
    out["p999"] = percentile(latencies, 99.9)
    return out


def fold_rounds(rounds):
    """The round with the median req/s, plus the req/s range and the errors of all rounds."""
    if not rounds:
        return None
    ranked = sorted(rounds, key=lambda m: m["rps"] or 0.0)
    median = dict(ranked[(len(ranked) - 1) // 2])
    rps = [m["rps"] for m in rounds if m["rps"] is not None]
    median["range"] = (min(rps), max(rps)) if len(rps) > 1 else None
    median["errors"] = sum(m["errors"] for m in rounds)
    median["cpu_us"] = median_of([m.get("cpu_us") for m in rounds])
    median["rounds"] = rounds
    return median


def median_of(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def fmt_num(v, fmt):
    return "n/a" if v is None else format(v, fmt)


def fmt_ratio(a, b):
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}"


def read_tsv(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line:
                rows.append(line.split("\t"))
    return rows


def cpu_us(ticks, nprocs, clk_tck, requests):
    """CPU microseconds per request from a tick count, or None."""
    if ticks in ("-", "") or nprocs in ("-", "", "0") or not requests:
        return None
    return int(ticks) * 1e6 / clk_tck / requests


def read_rate(path):
    """The fixed-rate runs: [(protocol, target, offered req/s, status, metrics or None)]."""
    out = []
    if not path:
        return out
    for row in read_tsv(path):
        protocol, target, rate, output, log, status = (row + ["-"] * 6)[:6]
        m = parse_h2load(output, log) if status == "ok" else None
        out.append((protocol, target, int(rate) if rate.isdigit() else None, status, m))
    return out


def write_json(path, meta, results, ratios, rate, rss):
    import json

    def row(protocol, target, tool, status, m):
        d = {"protocol": protocol, "target": target, "tool": tool, "status": status}
        if m:
            d.update({k: m.get(k) for k in ("rps", "p50", "p99", "errors", "cpu_us")})
            d["rps_range"] = list(m["range"]) if m.get("range") else None
        return d

    doc = {
        "scenario": "http",
        "meta": {r[0]: r[1] for r in meta if len(r) > 1},
        "rows": [row(*r) for r in results],
        # target -> protocol -> Piko / nginx two hops (median of the per-round ratios)
        "ratios": ratios,
        "rate": [
            dict({"protocol": p, "target": t, "offered_rps": rate_rps, "status": st},
                 **({k: m.get(k) for k in ("rps", "p50", "p99", "p999", "errors")} if m else {}))
            for p, t, rate_rps, st, m in rate
        ],
        "rss_kb": {r[0]: (int(r[1]) if len(r) > 1 and r[1].isdigit() else None) for r in rss},
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--meta", required=True)
    ap.add_argument("--rss", required=True)
    ap.add_argument("--rate", default="")
    ap.add_argument("--clk-tck", type=int, default=100)
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    # One manifest line per target and round; rounds of a target are folded into one row.
    groups = {}  # (protocol, target) -> [tool, status, [metrics of each round]]
    for row in read_tsv(args.manifest):
        protocol, target, tool, output, log, status, ticks, nprocs = (row + ["-"] * 8)[:8]
        g = groups.setdefault((protocol, target), [tool, status, []])
        if status == "ok":
            g[0], g[1] = tool, "ok"
            m = parse_wrk(output) if tool == "wrk" else parse_h2load(output, log)
            m["cpu_us"] = cpu_us(ticks, nprocs, args.clk_tck, m["requests"])
            g[2].append(m)
    results = []  # (protocol, target, tool, status, metrics or None)
    for (protocol, target), (tool, status, rounds) in groups.items():
        results.append((protocol, target, tool, status, fold_rounds(rounds)))
    rate = read_rate(args.rate)

    meta = read_tsv(args.meta)
    w = sys.stdout.write
    title = dict((r[0], r[1]) for r in meta if len(r) > 1).get("date", "")
    w(f"# Piko HTTP benchmark, {title}\n\n")
    for r in meta:
        if len(r) > 1 and r[0] != "date":
            w(f"- {r[0]}: {r[1]}\n")
    w("\nAll processes (load generator, nginx, Piko) share the same cores on loopback: "
      "compare ratios within this run, not absolute numbers across machines or runs.\n\n")

    multi = any(m and m.get("range") for _, _, _, _, m in results)
    w("| protocol | target | tool | req/s | p50 (ms) | p99 (ms) | errors | req/s vs nginx two hops |"
      " proxy CPU us/req |" + (" req/s range over rounds |" if multi else "") + "\n")
    w("|---|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if multi else "") + "\n")
    ref = {}
    for protocol, target, tool, status, m in results:
        if target == REFERENCE and m:
            ref[protocol] = m
    for protocol, target, tool, status, m in results:
        if m is None:
            w(f"| {protocol} | {target} | {tool} | {status} | | | | | |" + (" |" if multi else "")
              + "\n")
            continue
        r = ref.get(protocol)
        w(
            f"| {protocol} | {target} | {tool} | {fmt_num(m['rps'], ',.0f')} | "
            f"{fmt_num(m['p50'], '.2f')} | {fmt_num(m['p99'], '.2f')} | {m['errors']} | "
            f"{fmt_ratio(m['rps'], r['rps'] if r else None)} | "
            f"{'-' if m['cpu_us'] is None else format(m['cpu_us'], '.1f')} |"
        )
        if multi:
            lo_hi = m.get("range")
            w(f" {lo_hi[0]:,.0f} - {lo_hi[1]:,.0f} |" if lo_hi else " |")
        w("\n")

    if rate:
        w("\nLatency at a fixed rate (h2load --rps, half of nginx two hops' highest req/s):\n\n"
          "| protocol | target | offered req/s | achieved req/s | p50 (ms) | p99 (ms) |"
          " p99.9 (ms) | errors |\n|---|---|---:|---:|---:|---:|---:|---:|\n")
        for protocol, target, rate_rps, status, m in rate:
            if m is None:
                w(f"| {protocol} | {target} | {fmt_num(rate_rps, ',')} | {status} | | | | |\n")
                continue
            w(f"| {protocol} | {target} | {fmt_num(rate_rps, ',')} | {fmt_num(m['rps'], ',.0f')} | "
              f"{fmt_num(m['p50'], '.2f')} | {fmt_num(m['p99'], '.2f')} | "
              f"{fmt_num(m['p999'], '.2f')} | {m['errors']} |\n")

    rss = read_tsv(args.rss)
    if rss:
        w("\n| process | peak RSS (VmHWM) |\n|---|---:|\n")
        for r in rss:
            name, kb = (r + ["-"])[:2]
            shown = "n/a" if kb in ("-", "") else f"{int(kb) / 1024:.1f} MiB"
            w(f"| {name} | {shown} |\n")

    w("\n## Closing note\n\n")
    ratios = {}  # target -> protocol -> {rps, p50, p99, cpu_us}: target / nginx two hops
    any_piko = False
    for protocol, target, tool, status, m in results:
        if target not in PIKO_TARGETS:
            continue
        if m is None:
            w(f"- {protocol}: {target} {status}\n")
            continue
        any_piko = True
        r = ref.get(protocol)
        if not r:
            w(f"- {protocol}: no nginx two-hop reference measured\n")
            continue
        # Each round's Piko figure is compared with the nginx two-hop figure of the same
        # round (measured a minute apart, under the same background load), and the median
        # of those ratios is reported.
        per_round = list(zip(m["rounds"], r["rounds"]))
        got = {}
        for key in ("rps", "p50", "p99", "cpu_us"):
            got[key] = median_of([a[key] / b[key] for a, b in per_round
                                  if a.get(key) and b.get(key)])
        ratios.setdefault(target, {})[protocol] = got
        cpu = ""
        if got["cpu_us"] is not None:
            cpu = (f", {got['cpu_us']:.2f} x proxy CPU per request "
                   f"({m['cpu_us']:.1f} us against {r['cpu_us']:.1f} us)")
        if len(per_round) > 1:
            rps_list = ", ".join(
                f"{a['rps'] / b['rps']:.2f}" for a, b in per_round if a["rps"] and b["rps"])
            w(
                f"- {protocol}: {target} / nginx two hops, median over {len(per_round)} rounds"
                f" = {fmt_num(got['rps'], '.2f')} x req/s (rounds: {rps_list}), "
                f"{fmt_num(got['p50'], '.2f')} x p50, {fmt_num(got['p99'], '.2f')} x p99{cpu}\n"
            )
        else:
            w(
                f"- {protocol}: {target} / nginx two hops = {fmt_num(got['rps'], '.2f')} x req/s, "
                f"{fmt_num(got['p50'], '.2f')} x p50, {fmt_num(got['p99'], '.2f')} x p99{cpu}\n"
            )
        if m["errors"]:
            w(f"  ({m['errors']} errors: these numbers are not valid)\n")
    for protocol, target, rate_rps, status, m in rate:
        if target == REFERENCE or m is None:
            continue
        base = next((x[4] for x in rate if x[0] == protocol and x[1] == REFERENCE), None)
        if base:
            w(f"- {protocol}, fixed rate {rate_rps:,} req/s: {target} / nginx two hops = "
              f"{fmt_ratio(m['p50'], base['p50'])} x p50, {fmt_ratio(m['p99'], base['p99'])}"
              f" x p99, {fmt_ratio(m['p999'], base['p999'])} x p99.9\n")
    if any_piko and rss:
        piko_rss = [f"{r[0]} {int(r[1]) / 1024:.1f} MiB" for r in rss
                    if r[0].startswith("piko") and len(r) > 1 and r[1] not in ("-", "")]
        if piko_rss:
            w(f"- peak RSS after the run: {', '.join(piko_rss)}\n")
    if not any(t == PIKO for _, t, _, _, _ in results):
        w("- Piko was not measured in this run\n")
    if args.json:
        write_json(args.json, meta, results, ratios, rate, rss)
    return 0


if __name__ == "__main__":
    sys.exit(main())
