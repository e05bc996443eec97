#!/usr/bin/env python3
"""Turns the raw output of bench/metrics.sh into its Markdown report.

Inputs (written by bench/metrics.sh into its work directory):
  --manifest  TSV: round, protocol, configuration, tool (wrk|h2load), output file,
              h2load log file (or "-"), status ("ok" or "skipped: <why>"), the server's
              CPU time during the run in clock ticks.
  --meta      TSV: key, value; printed as the run's header.
  --clk-tck   clock ticks per second (getconf CLK_TCK).

The reference of every ratio is the configuration "off" (metrics and access log off) of
the same round and protocol: a ratio is computed per round, and the median of those is
reported, so that a slow moment of the machine weighs on both sides of a ratio. Besides
req/s, the server's CPU time per request is reported: on a machine shared with other work
it moves much less than req/s, which depends on what else got the cores.
Standard library only; the parsers are bench/report.py's.
"""

import argparse
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import fmt_num, median_of, parse_h2load, parse_wrk, read_tsv  # noqa: E402

CONFIGS = [("off", "metrics off, access log off"),
           ("metrics", "metrics on, access log off"),
           ("metrics+log", "metrics on, access log on")]
REFERENCE = "off"
TARGET = 0.97  # metrics on within 3% of off


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--meta", required=True)
    ap.add_argument("--clk-tck", type=float, default=100.0)
    args = ap.parse_args()

    runs = collections.defaultdict(dict)  # (protocol, config) -> {round: result}
    skipped = {}
    for rnd, protocol, config, tool, out, log, status, ticks in read_tsv(args.manifest):
        if status != "ok":
            skipped[config] = status
            continue
        res = parse_wrk(out) if tool == "wrk" else parse_h2load(out, log)
        res["cpu_us"] = (float(ticks) / args.clk_tck * 1e6 / res["requests"]
                         if res["requests"] else None)
        runs[(protocol, config)][rnd] = res

    w = sys.stdout.write
    w("# Metrics and access log cost\n\n")
    for key, value in read_tsv(args.meta):
        w(f"- {key}: {value}\n")
    w("\nreq/s is the median over the rounds (range in brackets); the ratio is the median "
      "of the per-round ratios to \"metrics off, access log off\" of the same round.\n\n")
    notes = []
    for protocol in ("HTTP/1.1", "h2c"):
        w(f"## {protocol}\n\n")
        w("| configuration | req/s | ratio to off | server CPU us/request | ratio to off | "
          "p50 ms | p99 ms | errors |\n")
        w("|---|---:|---:|---:|---:|---:|---:|---:|\n")
        ref = runs.get((protocol, REFERENCE), {})
        for config, label in CONFIGS:
            r = runs.get((protocol, config))
            if not r:
                w(f"| {label} | {skipped.get(config, 'not measured')} | | | | | | |\n")
                continue
            rps = [m["rps"] for m in r.values() if m["rps"] is not None]
            ratios = [r[k]["rps"] / ref[k]["rps"] for k in r
                      if k in ref and r[k]["rps"] and ref[k]["rps"]]
            ratio = median_of(ratios)
            cpu = median_of([m["cpu_us"] for m in r.values()])
            cpu_ratios = [r[k]["cpu_us"] / ref[k]["cpu_us"] for k in r
                          if k in ref and r[k]["cpu_us"] and ref[k]["cpu_us"]]
            cpu_ratio = median_of(cpu_ratios)
            p50 = median_of([m["p50"] for m in r.values()])
            p99 = median_of([m["p99"] for m in r.values()])
            errors = sum(m["errors"] for m in r.values())
            rng = f" ({min(rps):.0f}-{max(rps):.0f})" if len(rps) > 1 else ""
            w(f"| {label} | {fmt_num(median_of(rps), '.0f')}{rng} | "
              f"{fmt_num(ratio, '.3f')} | {fmt_num(cpu, '.2f')} | {fmt_num(cpu_ratio, '.3f')} | "
              f"{fmt_num(p50, '.2f')} | {fmt_num(p99, '.2f')} | {errors} |\n")
            if config == "metrics" and ratio is not None:
                verdict = "within" if ratio >= TARGET else "NOT within"
                notes.append(f"{protocol}: metrics on / off = {ratio:.3f} x req/s (per round: "
                             f"{', '.join(f'{x:.3f}' for x in ratios)}): {verdict} the 3% "
                             f"target; server CPU per request {fmt_num(cpu_ratio, '.3f')} x "
                             f"(per round: {', '.join(f'{x:.3f}' for x in cpu_ratios)})")
            if config == "metrics+log" and ratio is not None:
                notes.append(f"{protocol}: metrics and access log on / off = {ratio:.3f} x "
                             f"req/s, server CPU per request {fmt_num(cpu_ratio, '.3f')} x")
        w("\n")
    if notes:
        w("## Summary\n\n")
        for n in notes:
            w(f"- {n}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
