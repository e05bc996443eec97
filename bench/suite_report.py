#!/usr/bin/env python3
"""The report of bench/suite.sh: reads the JSON summaries that the scenario scripts wrote
into one directory, and writes one Markdown report (ratios first, then absolute figures,
then the machine) and one PNG chart (gnuplot, one panel per scenario).

  --dir     the scenarios' results: http-STAMP.json, tcp-STAMP.json, memory-*.json,
            http-STAMP-workersN.json and tcp-STAMP-workersN.json (and their .md)
  --stamp   the suite's stamp
  --meta    TSV key, value: the machine and the tools
  --status  TSV scenario, status, seconds: "ok", "failed (...)" or "not ... (why)"
  --md, --png   the outputs

Standard library only; the chart needs gnuplot (Debian: gnuplot-nox) on PATH, and is
left out, with a line saying so in the report, without it.
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import read_tsv  # noqa: E402  (bench/report.py, standard library only)

TWO_HOPS = "nginx, two hops"
PIKO = "Piko (server + sidecar)"
CROSS = "Piko, cross-node"
HTTP_TARGETS = ("nginx, direct", "nginx, one hop", TWO_HOPS, PIKO, CROSS)
PROTOCOLS = ("HTTP/1.1", "h2c")
TCP_TARGETS = ("direct", "socat relay", "Piko, forward")
TCP_PIKO = "Piko, forward"
# The issue's targets, quoted next to the ratios (not asserted).
TARGETS = {
    "rps": ">= 1.1 (aim 1.25)",
    "cpu": "< 1.0",
    "p99": "<= 1.0",
    "bulk": ">= 1.0 vs socat",
    "server_tunnel": "< 8 KiB",
    "sidecar_tunnel": "< 12 KiB",
}


def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def num(v, fmt=".2f", none="n/a"):
    return none if v is None else format(v, fmt)


def http_row(doc, protocol, target):
    for r in (doc or {}).get("rows", []):
        if r["protocol"] == protocol and r["target"] == target:
            return r
    return None


def rate_row(doc, protocol, target):
    for r in (doc or {}).get("rate", []):
        if r["protocol"] == protocol and r["target"] == target:
            return r
    return None


def ratio(a, b):
    return None if a is None or not b else a / b


class Report:
    def __init__(self, args):
        self.args = args
        d, s = args.dir, args.stamp
        self.http = load(os.path.join(d, f"http-{s}.json"))
        self.tcp = load(os.path.join(d, f"tcp-{s}.json"))
        mem = sorted(glob.glob(os.path.join(d, "memory-*.json")))
        self.memory = load(mem[-1]) if mem else None
        self.scale_http = {n: load(os.path.join(d, f"http-{s}-workers{n}.json")) for n in (1, 2)}
        self.scale_tcp = {n: load(os.path.join(d, f"tcp-{s}-workers{n}.json")) for n in (1, 2)}
        self.meta = [r for r in read_tsv(args.meta) if len(r) > 1]
        self.status = {r[0]: r[1] for r in read_tsv(args.status) if len(r) > 1}
        self.out = []

    def w(self, line=""):
        self.out.append(line)

    def why_missing(self, *names):
        """The recorded status of the first of these scenarios that is not ok."""
        for n in names:
            st = self.status.get(n)
            if st and st != "ok":
                return st
        ran = [n for n in names if n in self.status]
        if ran:
            return f"not measured ({ran[0]} wrote no JSON summary)"
        return "not measured"

    # ---------------------------------------------------------------- figures ----------

    def http_ratio(self, protocol, target, key):
        """target / nginx two hops: the median of the per-round ratios that http.sh
        computed (req/s, p50, p99, cpu_us)."""
        return ((self.http or {}).get("ratios", {}).get(target, {}).get(protocol, {})
                .get(key))

    def rate_ratio(self, protocol, target, key):
        a, b = rate_row(self.http, protocol, target), rate_row(self.http, protocol, TWO_HOPS)
        return ratio(a and a.get(key), b and b.get(key))

    def tcp_ratio(self, ref, key):
        return (self.tcp or {}).get("ratios", {}).get(ref, {}).get(key)

    def scaling(self):
        """{"rps": {1: x, 2: y}, "up": ..., "down": ...} from the workers runs."""
        out = {"rps": {}, "up": {}, "down": {}}
        for n in (1, 2):
            r = http_row(self.scale_http[n], "HTTP/1.1", PIKO)
            out["rps"][n] = r and r.get("rps")
            t = (self.scale_tcp[n] or {}).get("targets", {}).get(TCP_PIKO, {})
            out["up"][n] = t.get("upload_gbit_s")
            out["down"][n] = t.get("download_gbit_s")
        return out

    # ---------------------------------------------------------------- Markdown ---------

    def ratios_table(self):
        w = self.w
        w("## Ratios (Piko / baseline of the same run)")
        w()
        w("| scenario | measure | baseline | ratio | issue's target |")
        w("|---|---|---|---:|---|")
        for protocol in PROTOCOLS:
            for target in (PIKO, CROSS):
                w(f"| 1. 1 KiB GET, {protocol} | {target}: req/s | nginx two hops | "
                  f"{num(self.http_ratio(protocol, target, 'rps'))} | {TARGETS['rps']} |")
                w(f"| 1. 1 KiB GET, {protocol} | {target}: proxy CPU us per request | "
                  f"nginx two hops (both workers) | "
                  f"{num(self.http_ratio(protocol, target, 'cpu_us'))} | {TARGETS['cpu']} |")
        for protocol in PROTOCOLS:
            for target in (PIKO, CROSS):
                for key, label in (("p50", "p50"), ("p99", "p99"), ("p999", "p99.9")):
                    tgt = TARGETS["p99"] if key == "p99" else ""
                    w(f"| 2. fixed rate, {protocol} | {target}: {label} | nginx two hops | "
                      f"{num(self.rate_ratio(protocol, target, key))} | {tgt} |")
        for key, label in (("upload_gbit_s", "upload"), ("download_gbit_s", "download")):
            for ref in ("socat relay", "direct"):
                tgt = TARGETS["bulk"] if ref == "socat relay" else ""
                w(f"| 3. bulk TCP | {label} Gbit/s | {ref} | {num(self.tcp_ratio(ref, key))} |"
                  f" {tgt} |")
        if self.memory:
            m = self.memory
            w(f"| 4. memory, {num(m.get('tunnels'), ',')} idle tunnels | server bytes per tunnel | "
              f"(absolute) | {num(m.get('server_bytes_per_tunnel'), ',.0f')} | "
              f"{TARGETS['server_tunnel']} |")
            w(f"| 4. memory | sidecar bytes per tunnel | (absolute) | "
              f"{num(m.get('sidecar_bytes_per_tunnel'), ',.0f')} | "
              f"{TARGETS['sidecar_tunnel']} |")
        else:
            w(f"| 4. memory | bytes per idle tunnel | | {self.why_missing('memory')} | |")
        sc = self.scaling()
        if any(sc["rps"].values()):
            for key, label in (("rps", "HTTP/1.1 Piko req/s"), ("up", "bulk upload"),
                               ("down", "bulk download")):
                w(f"| 5. scaling | {label}, 2 workers | 1 worker | "
                  f"{num(ratio(sc[key][2], sc[key][1]))} | |")
        else:
            w(f"| 5. scaling | req/s and bulk, 2 workers | 1 worker | "
              f"{self.why_missing('scaling', 'scaling-http-1', 'scaling-http-2')} | |")
        w()
        w("Ratios of req/s and Gbit/s: higher is better; of CPU and latency: lower is better. "
          "Scenario 1's ratios are the median of the per-round ratios.")
        w()

    def absolute(self):
        w = self.w
        w("## Absolute figures")
        w()
        w("### 1. 1 KiB GET, keep-alive")
        w()
        if self.http:
            w("| protocol | target | req/s | p50 ms | p99 ms | errors | proxy CPU us/req |")
            w("|---|---|---:|---:|---:|---:|---:|")
            for r in self.http["rows"]:
                if r["status"] != "ok":
                    w(f"| {r['protocol']} | {r['target']} | {r['status']} | | | | |")
                    continue
                w(f"| {r['protocol']} | {r['target']} | {num(r['rps'], ',.0f')} | "
                  f"{num(r['p50'])} | {num(r['p99'])} | {r['errors']} | "
                  f"{num(r['cpu_us'], '.1f', '-')} |")
            w()
            w("Proxy CPU: utime + stime of the proxy processes during the measured run, per "
              "request: nginx one hop its worker, two hops both workers, Piko the server and "
              "the sidecar, cross-node both servers and the sidecar (nginx direct has no "
              "proxy).")
        else:
            w(f"Not measured: {self.why_missing('http')}.")
        w()
        w("### 2. Latency at a fixed rate")
        w()
        rate = (self.http or {}).get("rate") or []
        if rate:
            w("| protocol | target | offered req/s | achieved req/s | p50 ms | p99 ms | "
              "p99.9 ms | errors |")
            w("|---|---|---:|---:|---:|---:|---:|---:|")
            for r in rate:
                if r["status"] != "ok":
                    w(f"| {r['protocol']} | {r['target']} | {num(r['offered_rps'], ',')} | "
                      f"{r['status']} | | | | |")
                    continue
                w(f"| {r['protocol']} | {r['target']} | {num(r['offered_rps'], ',')} | "
                  f"{num(r['rps'], ',.0f')} | {num(r['p50'])} | {num(r['p99'])} | "
                  f"{num(r['p999'])} | {r['errors']} |")
            w()
            w("The offered rate is half of the highest req/s nginx two hops reached in "
              "scenario 1 (same protocol), sent with h2load --rps.")
        else:
            w(f"Not measured: {self.why_missing('http')}.")
        w()
        w("### 3. Bulk TCP")
        w()
        if self.tcp:
            w(f"{self.tcp['meta'].get('bulk', '')}.")
            w()
            w("| target | upload Gbit/s | download Gbit/s | ping-pong p50 us | p99 us |")
            w("|---|---:|---:|---:|---:|")
            for t, v in self.tcp["targets"].items():
                w(f"| {t} | {num(v['upload_gbit_s'])} | {num(v['download_gbit_s'])} | "
                  f"{num(v['pingpong_p50_us'], '.1f')} | {num(v['pingpong_p99_us'], '.1f')} |")
        else:
            w(f"Not measured: {self.why_missing('tcp')}.")
        w()
        w("### 4. Memory per idle tunnel")
        w()
        if self.memory:
            m = self.memory
            w("| tunnels | server bytes/tunnel | sidecar bytes/tunnel | server idle RSS "
              "(as bench/memory.sh reports it) | sidecar idle RSS |")
            w("|---:|---:|---:|---:|---:|")
            w(f"| {m.get('tunnels')} | {num(m.get('server_bytes_per_tunnel'), ',.0f')} | "
              f"{num(m.get('sidecar_bytes_per_tunnel'), ',.0f')} | "
              f"{num(m.get('server_idle_rss'), ',')} | {num(m.get('sidecar_idle_rss'), ',')} |")
        else:
            w(f"{self.why_missing('memory')}.")
        w()
        w("### 5. Scaling")
        w()
        sc = self.scaling()
        if any(sc["rps"].values()):
            w("| workers | HTTP/1.1 Piko req/s | bulk upload Gbit/s | bulk download Gbit/s |")
            w("|---:|---:|---:|---:|")
            for n in (1, 2):
                w(f"| {n} | {num(sc['rps'][n], ',.0f')} | {num(sc['up'][n])} | "
                  f"{num(sc['down'][n])} |")
        else:
            w(f"{self.why_missing('scaling', 'scaling-http-1', 'scaling-http-2')}.")
        w()
        w(self.load_generator_note())
        w()

    def load_generator_note(self):
        """What the load generator's share of the cores allows one to conclude."""
        cores = next((v for k, v in self.meta if k == "nproc"), "?")
        share = ""
        r = http_row(self.http, "HTTP/1.1", PIKO)
        if r and r.get("rps") and r.get("cpu_us"):
            used = r["rps"] * r["cpu_us"] / 1e6
            share = (f" In scenario 1, Piko's two processes used {used:.2f} of the {cores} "
                     f"cores at {r['rps']:,.0f} req/s (CPU per request x req/s); the rest "
                     "went to wrk, the service nginx and the kernel's loopback work.")
        return ("What the scaling rows allow one to conclude: everything runs on the same "
                f"{cores} cores. The load generator (wrk with one thread, or iperf3) keeps "
                "about one core busy and the service another share, so a second Piko worker "
                "finds at most the remainder of a core free: a gain from 1 to 2 workers shows "
                "that the work spreads over threads, but its size here is capped by the load "
                "generator's share, not by Piko; no gain does not show that workers do not "
                "scale. Measuring scaling needs more cores than the load generator uses, or "
                "the load generator on another machine." + share)

    def machine(self):
        w = self.w
        w("## Machine and tools")
        w()
        for k, v in self.meta:
            if k not in ("date", "note"):
                w(f"- {k}: {v}")
        w()
        w("| scenario | status | seconds |")
        w("|---|---|---:|")
        for r in read_tsv(self.args.status):
            w(f"| {r[0]} | {r[1]} | {r[2] if len(r) > 2 else ''} |")
        w()

    def scenario_reports(self):
        """Each scenario's own Markdown, folded, so that the suite's report is whole."""
        paths = sorted(glob.glob(os.path.join(self.args.dir, "*.md")))
        if not paths:
            return
        self.w("## The scenarios' own reports")
        self.w()
        for p in paths:
            with open(p, encoding="utf-8") as f:
                body = f.read().strip()
            # Their titles become sub-headings of this report.
            body = "\n".join(("###" + line[1:]) if line.startswith("# ") else
                             ("####" + line[2:]) if line.startswith("## ") else line
                             for line in body.splitlines())
            self.w(f"<details><summary>{os.path.basename(p)}</summary>")
            self.w()
            self.w(body)
            self.w()
            self.w("</details>")
            self.w()

    def markdown(self, chart_note):
        date = next((v for k, v in self.meta if k == "date"), "")
        self.w(f"# Piko benchmark suite, {date}")
        self.w()
        self.w("Every scenario against baselines measured in the same run, on loopback. The "
               "load generators, nginx and Piko share the machine's cores, and the machine may "
               "be shared with other work: compare the ratios of one run, not absolute figures "
               "across runs or machines.")
        self.w()
        note = next((v for k, v in self.meta if k == "note"), None)
        if note:
            self.w(f"**Note:** {note}")
            self.w()
        self.w(chart_note)
        self.w()
        self.ratios_table()
        self.absolute()
        self.machine()
        self.scenario_reports()
        return "\n".join(self.out).rstrip() + "\n"

    # ---------------------------------------------------------------- chart ------------

    def panels(self):
        """[(title, ylabel, groups, series, values[group][series], note)]"""
        out = []
        # 1: req/s ratio to nginx two hops, per protocol.
        vals, series = {}, list(HTTP_TARGETS)
        for protocol in PROTOCOLS:
            ref = http_row(self.http, protocol, TWO_HOPS)
            vals[protocol] = {}
            for t in series:
                r = http_row(self.http, protocol, t)
                vals[protocol][t] = ratio(r and r.get("rps"), ref and ref.get("rps"))
        out.append(("1. 1 KiB GET: req/s relative to nginx two hops (higher is better)",
                    "req/s / nginx two hops", list(PROTOCOLS), series, vals,
                    None if self.http else self.why_missing("http")))
        # 1: CPU per request.
        series = [t for t in HTTP_TARGETS if t != "nginx, direct"]
        vals = {p: {t: (http_row(self.http, p, t) or {}).get("cpu_us") for t in series}
                for p in PROTOCOLS}
        out.append(("1. 1 KiB GET: CPU of the proxy processes per request (lower is better)",
                    "CPU microseconds per request", list(PROTOCOLS), series, vals,
                    None if self.http else self.why_missing("http")))
        # 2: fixed-rate latency.
        groups, series, vals = [], [TWO_HOPS, PIKO, CROSS], {}
        for p in PROTOCOLS:
            for key, label in (("p50", "p50"), ("p99", "p99"), ("p999", "p99.9")):
                g = f"{'h1' if p == 'HTTP/1.1' else p} {label}"
                groups.append(g)
                vals[g] = {t: (rate_row(self.http, p, t) or {}).get(key) for t in series}
        rate_note = None if (self.http or {}).get("rate") else self.why_missing("http")
        out.append(("2. Latency at half of nginx two hops' peak rate, h1 = HTTP/1.1 "
                    "(lower is better)",
                    "milliseconds (log scale)", groups, series, vals, rate_note))
        # 3: bulk TCP.
        groups = ["upload", "download"]
        targets = (self.tcp or {}).get("targets", {})
        series = [t for t in TCP_TARGETS if t in targets] or list(TCP_TARGETS)
        vals = {g: {t: targets.get(t, {}).get(f"{g}_gbit_s") for t in series} for g in groups}
        out.append(("3. Bulk TCP, one stream each way (higher is better)", "Gbit/s", groups,
                    series, vals, None if self.tcp else self.why_missing("tcp")))
        # 4: memory.
        m = self.memory or {}
        kib = lambda v: None if v is None else v / 1024.0
        vals = {"server": {"measured": kib(m.get("server_bytes_per_tunnel")), "target": 8},
                "sidecar": {"measured": kib(m.get("sidecar_bytes_per_tunnel")), "target": 12}}
        title = "4. Memory per idle tunnel (lower is better)"
        if m.get("tunnels"):
            title = f"4. Memory per idle tunnel, {m['tunnels']:,} tunnels (lower is better)"
        out.append((title, "KiB per tunnel", ["server", "sidecar"], ["measured", "target"],
                    vals, None if self.memory else self.why_missing("memory")))
        # 5: scaling.
        sc = self.scaling()
        groups = ["HTTP/1.1 req/s", "bulk upload", "bulk download"]
        vals = {g: {f"{n} worker{'s' if n > 1 else ''}": ratio(sc[k][n], sc[k][1])
                    for n in (1, 2)} for g, k in zip(groups, ("rps", "up", "down"))}
        note = None if any(sc["rps"].values()) else self.why_missing(
            "scaling", "scaling-http-1", "scaling-http-2")
        out.append(("5. Scaling: relative to 1 worker (higher is better)", "x 1 worker", groups,
                    ["1 worker", "2 workers"], vals, note))
        return out

    def chart(self, png):
        """Draws the panels with gnuplot; returns None, or why there is no chart."""
        gnuplot = shutil.which("gnuplot")
        if not gnuplot:
            return "gnuplot not found (scripts/install-deps.sh bench installs gnuplot-nox)"
        tmp = tempfile.mkdtemp(prefix="piko-suite-chart.")
        date = next((v for k, v in self.meta if k == "date"), "")
        cores = next((v for k, v in self.meta if k == "nproc"), "?")
        script = [
            "set terminal pngcairo size 1600,1500 font 'DejaVu Sans,10'",
            f"set output {gp_str(png)}",
            "set datafile missing '?'",
            "set datafile separator '\\t'",
            "set style data histograms",
            "set style histogram clustered gap 1",
            "set style fill solid 0.85 border -1",
            "set boxwidth 0.9",
            "set grid ytics",
            "set key outside right top vertical font ',9' samplen 1.5",
            # The first line of every data file names the series (bars and their labels).
            "set key autotitle columnheader",
            "set xtics nomirror",
            "set ytics nomirror",
            f"set multiplot layout 3,2 title {gp_str(f'Piko benchmark suite, {date} ({cores} shared cores, loopback)')} font ',13'",
        ]
        gap = 1
        for i, (title, ylabel, groups, series, vals, note) in enumerate(self.panels()):
            script += ["unset label", "unset logscale y",
                       f"set title {gp_str(title)} font ',11'", f"set ylabel {gp_str(ylabel)}",
                       "set yrange [0:*]", "set xtics ()", "set xtics auto",
                       "set ytics auto", "set border"]
            have = any(vals[g][s] is not None for g in groups for s in series)
            if note or not have:
                script += [f"set label 1 {gp_str(note or 'no data')} at graph 0.5,0.5 center "
                           "font ',12'", "set xrange [0:1]", "set yrange [0:1]",
                           "unset xtics", "unset ytics", "plot NaN notitle",
                           "set xrange [*:*]", "set xtics", "set ytics"]
                continue
            data = os.path.join(tmp, f"panel{i}.tsv")
            with open(data, "w", encoding="utf-8") as f:
                f.write("group\t" + "\t".join(series) + "\n")
                for g in groups:
                    f.write(g + "\t" + "\t".join(
                        "?" if vals[g][s] is None else repr(vals[g][s]) for s in series) + "\n")
            script += ["set xrange [-0.6:%f]" % (len(groups) - 0.4),
                       "set offsets 0, 0, graph 0.08, 0"]
            if "log scale" in ylabel:
                script += ["set logscale y", "set yrange [*:*]", "set offsets 0, 0, 0, 0"]
            n = len(series)
            plots = []
            for k in range(n):
                col = k + 2
                plots.append(f"{gp_str(data)} using {col}:xtic(1)" if k == 0 else
                             f"'' using {col}")
            fmtv = "%.3g"
            for k in range(n):
                col = k + 2
                off = (k - (n - 1) / 2.0) / (n + gap)
                plots.append(f"'' using ($0+({off})):{col}:(sprintf('{fmtv}',${col})) "
                             "with labels offset 0,0.7 font ',8' notitle")
            script.append("plot " + ", \\\n  ".join(plots))
        script.append("unset multiplot")
        path = os.path.join(tmp, "chart.gp")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(script) + "\n")
        res = subprocess.run([gnuplot, path], capture_output=True, text=True)
        if res.returncode != 0 or not os.path.exists(png):
            return f"gnuplot failed: {res.stderr.strip()[-300:]} (script: {path})"
        shutil.rmtree(tmp, ignore_errors=True)
        return None


def gp_str(s):
    return "'" + str(s).replace("'", "''") + "'"


def main():
    ap = argparse.ArgumentParser()
    for a in ("--dir", "--stamp", "--meta", "--status", "--md", "--png"):
        ap.add_argument(a, required=True)
    args = ap.parse_args()
    rep = Report(args)
    why = rep.chart(args.png)
    if why:
        note = f"No chart: {why}."
        print("bench-suite: " + note, file=sys.stderr)
    else:
        note = f"![the suite's chart]({os.path.basename(args.png)})"
    with open(args.md, "w", encoding="utf-8") as f:
        f.write(rep.markdown(note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
