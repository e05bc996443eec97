#!/usr/bin/env python3
"""The work of bench/cluster.sh (see bench/CLUSTER.md): a 3-node piko-server cluster on
loopback, then
  1. propagation: PROP_N times, a sidecar for a fresh endpoint connects to node 1; the
     time until node 1 lists it in its own table, and from then until nodes 2 and 3 both
     list it in their copy of node 1's table (GET /status/cluster/nodes/{id}, each node
     polled by its own thread every POLL_MS); the same for its removal when the sidecar
     stops; a request through nodes 2 and 3 checks that they route it;
  2. kill -9 outage: KILL_TRIALS times, the node holding a sidecar's tunnel (the sidecar
     dials through a TCP load balancer over the upstream ports, e2e/balancer.py) is
     killed; the two other nodes are polled with requests every 20 ms; reported: the
     longest time without a successful answer at either, failed polls, the time until
     the dead node is listed unreachable and until it is no longer listed. The killed
     node is started again before the next trial.
Writes the Markdown report to --out. Standard library only.
"""

import argparse
import ctypes
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "e2e"))
from balancer import Balancer  # noqa: E402  (standard library only)

_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent():
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def log(msg):
    print("bench-cluster: " + msg, file=sys.stderr, flush=True)


def free_ports(n):
    held = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        held.append(s)
    ports = [s.getsockname()[1] for s in held]
    for s in held:
        s.close()
    return ports


def http_get(port, path, headers=None, timeout=2.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


# ---------------------------------------------------------------------------------------


class Service:
    """An HTTP service answering "ok" (thread in this process)."""

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_GET(self):
            body = b"ok"
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    def __init__(self):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self.H)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class Procs:
    def __init__(self, work):
        self.work = Path(work)
        self.procs = []
        self.n = 0

    def start(self, name, argv):
        self.n += 1
        logf = open(self.work / ("%03d-%s.log" % (self.n, name)), "wb")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                             preexec_fn=_die_with_parent)
        logf.close()
        p.name = name
        self.procs.append(p)
        return p

    def stop_all(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def wait_until(fn, timeout, what, interval=0.02):
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = fn()
            if v:
                return v
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for " + what)
        time.sleep(interval)


class Cluster:
    def __init__(self, args, procs):
        self.args = args
        self.procs = procs
        self.ports = []
        for _ in range(3):
            proxy, upstream, admin, cluster = free_ports(4)
            self.ports.append({"proxy": proxy, "upstream": upstream, "admin": admin,
                               "cluster": cluster})
        self.ids = ["bench-n%d" % (i + 1) for i in range(3)]
        self.join = ",".join("127.0.0.1:%d" % p["cluster"] for p in self.ports)
        self.nodes = [None] * 3
        self.runs = [0] * 3

    def start(self, i):
        p = self.ports[i]
        a = self.args
        self.runs[i] += 1
        argv = [str(Path(a.bin_dir) / "piko-server"),
                "--proxy.bind-addr", "127.0.0.1:%d" % p["proxy"],
                "--upstream.bind-addr", "127.0.0.1:%d" % p["upstream"],
                "--admin.bind-addr", "127.0.0.1:%d" % p["admin"],
                "--cluster.bind-addr", "127.0.0.1:%d" % p["cluster"],
                "--cluster.node-id", self.ids[i], "--cluster.join", self.join,
                "--cluster.secret", "bench-secret",
                "--cluster.peer-timeout", a.peer_timeout,
                "--cluster.resolve-interval", a.resolve_interval,
                "--grace-period", "2s", "--log.level", "warn"]
        self.nodes[i] = self.procs.start("node%d-run%d" % (i + 1, self.runs[i]), argv)
        return self.nodes[i]

    def wait_ready(self, i):
        wait_until(lambda: http_get(self.ports[i]["admin"], "/ready")[0] == 200, 15,
                   "node %d ready" % (i + 1))

    def view(self, i):
        st, body = http_get(self.ports[i]["admin"], "/status/cluster/nodes")
        return {o["id"]: o for o in json.loads(body)} if st == 200 else {}

    def wait_converged(self, members):
        want = {self.ids[j] for j in members}

        def ok():
            for i in members:
                v = self.view(i)
                if set(v) != want or any(o["status"] != "active" for o in v.values()):
                    return False
            return True
        wait_until(ok, 30, "cluster converged")

    def table(self, i, node_id):
        st, body = http_get(self.ports[i]["admin"], "/status/cluster/nodes/" + node_id,
                            timeout=1.0)
        if st != 200:
            return {}
        return json.loads(body).get("endpoint_table", {})


def sidecar(args, procs, name, endpoint, service_port, connect_port):
    admin = free_ports(1)[0]
    argv = [str(Path(args.bin_dir) / "piko-sidecar"),
            "--connect.url", "http://127.0.0.1:%d" % connect_port,
            "--admin.bind-addr", "127.0.0.1:%d" % admin,
            "--endpoint", "%s=127.0.0.1:%d" % (endpoint, service_port),
            "--grace-period", "1s", "--log.level", "warn"]
    return procs.start(name, argv)


# ---------------------------------------------------------------------------------------
# 1. propagation


def watch_table(cl, i, node_id, endpoint, present, interval, out, key, deadline):
    """Polls node i's copy of node_id's table until endpoint's presence == present."""
    while time.monotonic() < deadline:
        try:
            if (endpoint in cl.table(i, node_id)) == present:
                out[key] = time.monotonic()
                return
        except (OSError, http.client.HTTPException, ValueError):
            pass
        time.sleep(interval)


def propagation(args, cl, procs, svc):
    interval = args.poll_ms / 1000.0
    rows = []
    for k in range(args.prop_n):
        ep = "prop-%d-%d" % (os.getpid(), k)
        for present in (True, False):
            out = {}
            deadline = time.monotonic() + 30
            threads = [threading.Thread(target=watch_table, args=(
                cl, i, cl.ids[0] if i else "local", ep, present, interval, out, i,
                deadline)) for i in range(3)]
            for t in threads:
                t.start()
            t0 = time.monotonic()
            if present:
                sc = sidecar(args, procs, "sidecar-%s" % ep, ep, svc.port,
                             cl.ports[0]["upstream"])
            else:
                sc.send_signal(signal.SIGTERM)
            for t in threads:
                t.join()
            if len(out) != 3:
                raise RuntimeError("endpoint %s %s not seen by nodes %s" % (
                    ep, "added" if present else "removed",
                    [i + 1 for i in range(3) if i not in out]))
            row = {"endpoint": ep, "event": "add" if present else "remove",
                   "local_s": out[0] - t0,
                   "prop_s": max(out[1], out[2]) - out[0],
                   "node2_s": out[1] - out[0], "node3_s": out[2] - out[0]}
            if present:
                for i in (1, 2):  # they do route it
                    st, body = http_get(cl.ports[i]["proxy"], "/", {"x-piko-endpoint": ep})
                    if (st, body) != (200, b"ok"):
                        raise RuntimeError("node %d does not route %s: %d %r" % (
                            i + 1, ep, st, body[:200]))
            else:
                sc.wait(10)
            rows.append(row)
        if (k + 1) % 20 == 0:
            log("propagation: %d/%d" % (k + 1, args.prop_n))
    return rows


# ---------------------------------------------------------------------------------------
# 2. kill -9


class Poller(threading.Thread):
    def __init__(self, port, endpoint, interval=0.02):
        super().__init__(daemon=True)
        self.port, self.endpoint, self.interval = port, endpoint, interval
        self.results = []
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            t0 = time.monotonic()
            try:
                st, body = http_get(self.port, "/", {"x-piko-endpoint": self.endpoint})
                ok = (st, body) == (200, b"ok")
            except (OSError, http.client.HTTPException):
                ok = False
            self.results.append((t0, time.monotonic(), ok))
            self.stopping.wait(max(0.0, self.interval - (time.monotonic() - t0)))

    def recovered_after(self, t, streak=10):
        tail = [r for r in self.results if r[0] > t][-streak:]
        return len(tail) == streak and all(r[2] for r in tail)

    def gap(self, t_event):
        ends = [r[1] for r in self.results if r[2]]
        prev = max([e for e in ends if e < t_event], default=t_event)
        gap = 0.0
        for e in (e for e in ends if e >= t_event):
            gap = max(gap, e - prev)
            prev = e
        fails = sum(1 for r in self.results if not r[2] and r[1] >= t_event)
        return gap, fails


def holder(cl, endpoint, candidates):
    def one():
        hs = [i for i in candidates if endpoint in cl.table(i, "local")]
        return hs[0] + 1 if len(hs) == 1 else None
    return wait_until(one, 15, "one holder of " + endpoint) - 1


def kill_trials(args, cl, procs, svc):
    lb = Balancer([("127.0.0.1:%d" % p["upstream"], "http://127.0.0.1:%d/ready" % p["admin"])
                   for p in cl.ports], name="bench-lb").start()
    rows = []
    try:
        if not lb.wait_ready(3, 10):
            raise RuntimeError("balancer: backends not ready %r" % lb.stats())
        ep = "killed-%d" % os.getpid()
        sidecar(args, procs, "sidecar-" + ep, ep, svc.port, lb.port)
        for trial in range(args.kill_trials):
            h = holder(cl, ep, range(3))
            others = [i for i in range(3) if i != h]
            for i in others:
                wait_until(lambda: http_get(cl.ports[i]["proxy"], "/", {
                    "x-piko-endpoint": ep})[0] == 200, 15, "node %d routes" % (i + 1))
            pollers = [Poller(cl.ports[i]["proxy"], ep) for i in others]
            for p in pollers:
                p.start()
            time.sleep(0.5)
            t_kill = time.monotonic()
            cl.nodes[h].kill()
            cl.nodes[h].wait()
            try:
                wait_until(lambda: all(p.recovered_after(t_kill) for p in pollers), 60,
                           "recovery after kill -9", interval=0.05)
            finally:
                for p in pollers:
                    p.stopping.set()
                    p.join()
            gaps = [p.gap(t_kill) for p in pollers]
            # Membership as the survivors see it.
            seen = {}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(seen) < 2 * len(others):
                for i in others:
                    st = cl.view(i).get(cl.ids[h], {}).get("status")
                    if st == "unreachable" and ("u", i) not in seen:
                        seen[("u", i)] = time.monotonic() - t_kill
                    if st is None and ("u", i) in seen and ("g", i) not in seen:
                        seen[("g", i)] = time.monotonic() - t_kill
                time.sleep(0.02)
            rows.append({
                "trial": trial + 1, "killed": h + 1,
                "gap_s": max(g for g, _ in gaps), "failed": sum(f for _, f in gaps),
                "polls": sum(len(p.results) for p in pollers),
                "unreachable_s": max([seen.get(("u", i), float("nan")) for i in others]),
                "gone_s": max([seen.get(("g", i), float("nan")) for i in others]),
            })
            log("kill trial %d: node %d, outage %.3fs, %d failed polls" % (
                trial + 1, h + 1, rows[-1]["gap_s"], rows[-1]["failed"]))
            cl.start(h)
            cl.wait_ready(h)
            cl.wait_converged(range(3))
    finally:
        lb.close()
    return rows


# ---------------------------------------------------------------------------------------


def fmt_ms(s):
    return "%.1f" % (s * 1000.0)


def report(args, meta, prop, kills):
    out = ["# Piko cluster benchmark", ""]
    for k, v in meta:
        out.append("- **%s**: %s" % (k, v))
    out.append("")
    out.append("## Propagation of routing state")
    out.append("")
    out.append("%d endpoints, one at a time: a sidecar for a fresh endpoint dials node 1; "
               "*local* is the time from its start until node 1 lists the endpoint in "
               "its own table; *propagation* is the time from then until nodes 2 and 3 "
               "both list it in their copy of node 1's table (each node polled by its own "
               "thread every %d ms, so resolution is a few ms). Removal: from SIGTERM to "
               "the sidecar, then until nodes 2 and 3 no longer list it. After each "
               "addition one request through node 2 and one through node 3 must reach "
               "the service." % (args.prop_n, args.poll_ms))
    out.append("")
    out.append("| event | measure | p50 ms | p99 ms | max ms | mean ms |")
    out.append("|---|---|---:|---:|---:|---:|")
    for event in ("add", "remove"):
        rows = [r for r in prop if r["event"] == event]
        if not rows:
            continue
        for key, label in (("local_s", "local (node 1)"),
                           ("prop_s", "propagation (nodes 2 and 3)")):
            v = [r[key] for r in rows]
            out.append("| %s | %s | %s | %s | %s | %s |" % (
                event, label, fmt_ms(pct(v, 50)), fmt_ms(pct(v, 99)), fmt_ms(max(v)),
                fmt_ms(statistics.mean(v))))
    out.append("")
    out.append("## kill -9 of the node holding the tunnel")
    out.append("")
    out.append("The sidecar dials through a TCP load balancer over the three upstream "
               "ports (readiness-checked every 100 ms, like a Kubernetes Service). The two "
               "other nodes are polled with a request every 20 ms (new connection each). "
               "*outage*: the longest time without a successful answer at either "
               "surviving node around the kill; *unreachable* / *gone*: when both "
               "survivors list the dead node as unreachable / no longer list it "
               "(peer timeout %s). The node is restarted before the next trial." %
               args.peer_timeout)
    out.append("")
    out.append("| trial | killed node | outage ms | failed polls / polls | unreachable after s |"
               " gone after s |")
    out.append("|---:|---:|---:|---:|---:|---:|")
    for r in kills:
        out.append("| %d | %d | %s | %d / %d | %.2f | %.2f |" % (
            r["trial"], r["killed"], fmt_ms(r["gap_s"]), r["failed"], r["polls"],
            r["unreachable_s"], r["gone_s"]))
    out.append("")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--prop-n", type=int, default=100)
    ap.add_argument("--kill-trials", type=int, default=3)
    ap.add_argument("--poll-ms", type=int, default=2)
    ap.add_argument("--peer-timeout", default="5s")
    ap.add_argument("--resolve-interval", default="5s")
    ap.add_argument("--meta", default="", help="key\\tvalue lines (a file)")
    args = ap.parse_args()

    procs = Procs(args.work)
    svc = Service()
    try:
        cl = Cluster(args, procs)
        for i in range(3):
            cl.start(i)
        for i in range(3):
            cl.wait_ready(i)
        cl.wait_converged(range(3))
        log("3 nodes up; propagation x%d" % args.prop_n)
        prop = propagation(args, cl, procs, svc) if args.prop_n else []
        log("kill -9 x%d (peer timeout %s)" % (args.kill_trials, args.peer_timeout))
        kills = kill_trials(args, cl, procs, svc) if args.kill_trials else []
    finally:
        procs.stop_all()
        svc.close()
    meta = []
    if args.meta:
        for line in open(args.meta):
            k, _, v = line.rstrip("\n").partition("\t")
            meta.append((k, v))
    meta.append(("cluster", "3 nodes on loopback, static join list, --cluster.peer-timeout "
                 "%s, --cluster.resolve-interval %s, --log.level warn" % (
                     args.peer_timeout, args.resolve_interval)))
    text = report(args, meta, prop, kills)
    Path(args.out).write_text(text + "\n")
    raw = Path(args.work) / "raw.json"
    raw.write_text(json.dumps({"propagation": prop, "kill": kills}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
