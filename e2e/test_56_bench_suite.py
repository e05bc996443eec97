"""`make bench`'s suite (bench/suite.sh, bench/suite_report.py): the report reads the
scenarios' JSON summaries, puts the ratios first and says why a scenario has no figures;
the chart is a PNG; a short run of the whole suite writes both. Timing is not asserted."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BIN_DIR

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def http_summary():
    rows, ratios = [], {}
    for protocol, rps in (("HTTP/1.1", 1.0), ("h2c", 0.8)):
        for target, rel, cpu in (("nginx, direct", 3.0, None), ("nginx, one hop", 1.6, 9.0),
                                 ("nginx, two hops", 1.0, 19.0),
                                 ("Piko (server + sidecar)", 0.9, 25.0),
                                 ("Piko, cross-node", 0.6, 40.0)):
            rows.append({"protocol": protocol, "target": target, "tool": "wrk", "status": "ok",
                         "rps": 40000 * rps * rel, "p50": 1.0, "p99": 3.0, "errors": 0,
                         "cpu_us": cpu, "rps_range": None})
        ratios.setdefault("Piko (server + sidecar)", {})[protocol] = {
            "rps": 0.9, "p50": 1.2, "p99": 1.1, "cpu_us": 25.0 / 19.0}
        ratios.setdefault("Piko, cross-node", {})[protocol] = {
            "rps": 0.6, "p50": 1.5, "p99": 1.4, "cpu_us": 40.0 / 19.0}
    rate = [{"protocol": p, "target": t, "offered_rps": 20000, "status": "ok", "rps": 19990,
             "p50": p50, "p99": p50 * 3, "p999": p50 * 6, "errors": 0}
            for p in ("HTTP/1.1", "h2c")
            for t, p50 in (("nginx, two hops", 1.0), ("Piko (server + sidecar)", 1.25),
                           ("Piko, cross-node", 2.0))]
    return {"scenario": "http", "meta": {}, "rows": rows, "ratios": ratios, "rate": rate,
            "rss_kb": {}}


def tcp_summary():
    targets = {t: {"upload_gbit_s": g, "download_gbit_s": g, "pingpong_p50_us": 10.0,
                   "pingpong_p99_us": 20.0, "connect_p50_us": 100.0, "connect_p99_us": 200.0}
               for t, g in (("direct", 16.0), ("socat relay", 5.0), ("Piko, forward", 2.5))}
    ratios = {ref: {"upload_gbit_s": 2.5 / targets[ref]["upload_gbit_s"],
                    "download_gbit_s": 2.5 / targets[ref]["download_gbit_s"]}
              for ref in ("direct", "socat relay")}
    return {"scenario": "tcp", "meta": {"bulk": "1G each way"}, "targets": targets,
            "ratios": ratios, "rss_kb": {}}


def run_report(d, status, memory=None):
    (d / "http-S.json").write_text(json.dumps(http_summary()))
    (d / "tcp-S.json").write_text(json.dumps(tcp_summary()))
    if memory:
        (d / "memory-20990101-000000.json").write_text(json.dumps(memory))
    (d / "meta.tsv").write_text("date\t2099-01-01 00:00 UTC\nnproc\t2\nnote\tA test.\n")
    (d / "status.tsv").write_text("".join("%s\t%s\t1\n" % kv for kv in status))
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "suite_report.py"),
                        "--dir", str(d), "--stamp", "S", "--meta", str(d / "meta.tsv"),
                        "--status", str(d / "status.tsv"), "--md", str(d / "out.md"),
                        "--png", str(d / "out.png")], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    return (d / "out.md").read_text()


def check_png(path):
    if shutil.which("gnuplot"):
        assert path.read_bytes()[:8] == PNG_MAGIC


def test_report_ratios_first_and_missing_scenarios(tmp_path):
    md = run_report(tmp_path, [("http", "ok"), ("tcp", "ok"),
                               ("memory", "not available (bench/memory.sh missing)"),
                               ("scaling", "not built (no --workers flag)")])
    assert md.index("## Ratios") < md.index("## Absolute figures") < md.index("## Machine")
    assert "**Note:** A test." in md
    ratios = md[md.index("## Ratios"):md.index("## Absolute figures")]
    assert ("| 1. 1 KiB GET, HTTP/1.1 | Piko (server + sidecar): req/s | nginx two hops | "
            "0.90 |") in ratios
    assert "| 2. fixed rate, h2c | Piko (server + sidecar): p99 | nginx two hops | 1.25 |" \
        in ratios
    assert "| 3. bulk TCP | upload Gbit/s | socat relay | 0.50 |" in ratios
    assert "| 4. memory | bytes per idle tunnel | | not available (bench/memory.sh missing) |" \
        in ratios
    assert "not built (no --workers flag)" in ratios
    check_png(tmp_path / "out.png")


def test_report_includes_the_memory_summary(tmp_path):
    md = run_report(tmp_path, [("http", "ok"), ("tcp", "ok"), ("memory", "ok"),
                               ("scaling", "not built (no --workers flag)")],
                    memory={"scenario": "memory", "tunnels": 10000,
                            "server_bytes_per_tunnel": 7000, "sidecar_bytes_per_tunnel": 11000,
                            "server_idle_rss": 80000000, "sidecar_idle_rss": 120000000})
    assert "| 4. memory, 10,000 idle tunnels | server bytes per tunnel | (absolute) | 7,000 |" \
        in md
    assert "| 4. memory | sidecar bytes per tunnel | (absolute) | 11,000 |" in md
    check_png(tmp_path / "out.png")


@pytest.mark.deadline(400)
def test_suite_short_run(tmp_path):
    missing = [t for t in ("wrk", "h2load", "nginx") if not shutil.which(t)]
    if missing:
        pytest.skip("not installed: %s (scripts/install-deps.sh bench)" % ", ".join(missing))
    fake = tmp_path / "memory.sh"
    fake.write_text("#!/bin/sh\nset -e\nmkdir -p \"$RESULTS_DIR\"\n"
                    "echo '# memory' > \"$RESULTS_DIR/memory-20990101-000000.md\"\n"
                    "echo '{\"scenario\":\"memory\",\"tunnels\":3,\"server_bytes_per_tunnel\":1,"
                    "\"sidecar_bytes_per_tunnel\":2,\"server_idle_rss\":3,"
                    "\"sidecar_idle_rss\":4}' > \"$RESULTS_DIR/memory-20990101-000000.json\"\n")
    fake.chmod(0o755)
    env = dict(os.environ, DURATION="1s", WARMUP="1s", ROUNDS="1", BULK_BYTES="16M",
               N="100", CONN_N="10", MEMORY_SCRIPT=str(fake), RESULTS_DIR=str(tmp_path / "out"))
    for k in ("QUICK", "KEEP_WORK", "WORKERS", "PIKO_ONLY", "PROTOCOLS", "REPORT_NOTE"):
        env.pop(k, None)
    p = subprocess.run([str(ROOT / "bench" / "suite.sh"), str(BIN_DIR)], cwd=ROOT,
                       capture_output=True, text=True, timeout=380, env=env)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    mds = list((tmp_path / "out").glob("suite-*.md"))
    assert len(mds) == 1
    md = mds[0].read_text()
    for row in ("| 1. 1 KiB GET, HTTP/1.1 | Piko (server + sidecar): req/s |",
                "| 1. 1 KiB GET, h2c | Piko, cross-node: proxy CPU us per request |",
                "| 2. fixed rate, HTTP/1.1 | Piko (server + sidecar): p99.9 |",
                "| 3. bulk TCP | download Gbit/s | socat relay |" if shutil.which("socat")
                else "| 3. bulk TCP | download Gbit/s | direct |",
                "| 4. memory, 3 idle tunnels | server bytes per tunnel | (absolute) | 1 |"):
        assert row in md, md
    ratios = md.split("## Absolute figures")[0]
    for line in ratios.splitlines():
        if line.startswith(("| 1.", "| 2.")):
            assert "| n/a |" not in line, line
    check_png(mds[0].with_suffix(".png"))
