"""Drain and rolling restart (docs/architecture/cluster.md "Drain and rolling restarts"):
three nodes behind two load balancers (one over the proxy ports for clients, one over the
upstream ports for sidecars, both following /ready like a Kubernetes Service); an
endpoint served by two sidecars; a client sending a steady 200 requests/s, a new
connection each; the nodes are restarted one at a time (SIGTERM, exit 0, start again on
the same ports): no request may fail. Also: a draining node is not ready, is listed as
draining by its peers and keeps serving for --drain-delay."""

import collections
import signal
import threading
import time

import pytest

from cluster import Cluster, eventually, request
from helpers import SLOW, poll

RATE = 200
EP = "roll"


class Load:
    """GET /whoami?k=K at `rate` requests/s, each on a new connection, from a pool of
    workers; records (k, scheduled, start, end, ok, detail)."""

    def __init__(self, port, endpoint, want, rate=RATE, workers=48, timeout=10.0):
        self.port = port
        self.endpoint = endpoint
        self.want = set(want)
        self.rate = rate
        self.timeout = timeout * SLOW
        self.results = []
        self.lock = threading.Lock()
        self.next = 0
        self.stop_at = None
        self.t0 = None
        self.threads = [threading.Thread(target=self._worker, daemon=True)
                        for _ in range(workers)]

    def start(self):
        self.t0 = time.monotonic() + 0.05
        for t in self.threads:
            t.start()
        return self

    def _worker(self):
        while True:
            with self.lock:
                k = self.next
                self.next += 1
            sched = self.t0 + k / self.rate
            if self.stop_at is not None and sched >= self.stop_at:
                return
            delay = sched - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if self.stop_at is not None and sched >= self.stop_at:
                return
            start = time.monotonic()
            try:
                r = request("127.0.0.1", self.port, "GET", "/whoami?k=%d" % k,
                            headers={"x-piko-endpoint": self.endpoint},
                            timeout=self.timeout)
                body = r.body.decode(errors="replace")
                ok = r.status == 200 and body in self.want
                detail = "%d %s" % (r.status, body[:100])
            except Exception as e:  # noqa: BLE001 - recorded
                ok, detail = False, "%s: %s" % (type(e).__name__, str(e)[:100])
            with self.lock:
                self.results.append((k, sched, start, time.monotonic(), ok, detail))

    def stop(self):
        self.stop_at = time.monotonic()
        for t in self.threads:
            t.join(30 * SLOW)
        assert not any(t.is_alive() for t in self.threads), "load workers hang"

    def failures(self):
        return sorted((r for r in self.results if not r[4]), key=lambda r: r[0])


def converged_with_counts(cl, tunnels):
    """Every node lists all three as active and the cluster holds `tunnels` tunnels."""
    def check():
        cl.wait_converged(timeout=0.5)
        for i in range(3):
            total = sum(o["tunnels"] for o in cl.nodes_status(i))
            assert total == tunnels, "node %d counts %d tunnels: %r" % (
                i + 1, total, cl.nodes_status(i))
    eventually(check, 15 * SLOW)


@pytest.mark.deadline(150)
def test_rolling_restart_loses_no_request(piko):
    cl = Cluster(piko, 3, flags={"drain-delay": "1s", "grace-period": "10s"})
    cl.wait_converged()
    up, px = cl.upstream_balancer(), cl.proxy_balancer()
    assert up.wait_ready(3, 10 * SLOW) and px.wait_ready(3, 10 * SLOW), (up.stats(),
                                                                         px.stats())
    a, b = piko.service("A"), piko.service("B")
    # Both tunnels start on node 1, restarted first: the endpoint's every tunnel must
    # move off a draining node without a gap (make-before-break). Later placements are
    # the balancer's round robin.
    up.disable(1)
    up.disable(2)
    piko.sidecar({EP: a.addr}, connect_url=up.url, name="sidecar-a")
    piko.sidecar({EP: b.addr}, connect_url=up.url, name="sidecar-b")
    up.enable(1)
    up.enable(2)
    cl.wait_routes(EP)
    converged_with_counts(cl, 2)
    assert cl.node_status(0)[1]["endpoint_table"] == {EP: 2}, cl.node_status(0)
    seen = set()
    poll(lambda: seen.add(request("127.0.0.1", px.port, "GET", "/whoami", headers={
        "x-piko-endpoint": EP}).body.decode()) or seen == {"A", "B"}, 10 * SLOW,
        message="both sidecars serve %s" % EP)

    load = Load(px.port, EP, want={"A", "B"}).start()
    steps = []
    try:
        time.sleep(1.0)
        for i in range(3):
            node = cl.nodes[i]
            t0 = time.monotonic()
            node.signal(signal.SIGTERM)
            rc = node.wait(timeout=30)
            t_exit = time.monotonic() - t0
            assert rc == 0, "node %d exited with %s after SIGTERM\n%s" % (
                i + 1, rc, node.log_tail())
            cl.start(i)
            t_ready = time.monotonic() - t0
            assert px.wait_ready(3, 10 * SLOW) and up.wait_ready(3, 10 * SLOW)
            cl.wait_converged(timeout=10)
            steps.append((i + 1, t_exit, t_ready, time.monotonic() - t0))
            time.sleep(0.5)
        time.sleep(1.0)
    finally:
        load.stop()

    res = load.results
    fails = load.failures()
    span = max(r[3] for r in res) - min(r[2] for r in res)
    served = collections.Counter(r[5].split(" ", 1)[1] for r in res if r[4])
    lag = max(r[2] - r[1] for r in res)
    lat = sorted(r[3] - r[2] for r in res)
    print("rolling restart: %d requests in %.1fs (%.0f/s), %d failed; served by %r; "
          "latency p50 %.1f ms, p99 %.1f ms, max %.1f ms; max start lag %.1f ms" % (
              len(res), span, len(res) / span, len(fails), dict(served),
              1000 * lat[len(lat) // 2], 1000 * lat[int(len(lat) * 0.99)], 1000 * lat[-1],
              1000 * lag))
    for node, t_exit, t_ready, t_done in steps:
        print("  node %d: exit 0 %.2fs after SIGTERM, ready again at %.2fs, converged at "
              "%.2fs" % (node, t_exit, t_ready, t_done))
    print("  proxy balancer: %r" % [(s["addr"], s["connections"]) for s in
                                    px.stats()["backends"]])
    assert len(res) >= 0.9 * RATE * span, "the client did not keep its rate"
    detail = ["k=%d at +%.3fs: %s" % (r[0], r[2] - load.t0, r[5].strip())
              for r in fails[:20]]
    assert len(fails) == 0, "%d of %d requests failed during the rolling restart:\n  %s" % (
        len(fails), len(res), "\n  ".join(detail))
    # The endpoint still has both sidecars, spread over the new nodes.
    converged_with_counts(cl, 2)
    assert {request("127.0.0.1", px.port, "GET", "/whoami",
                    headers={"x-piko-endpoint": EP}).body for _ in range(40)} == {b"A", b"B"}


@pytest.mark.deadline(60)
def test_draining_node_is_listed_draining_and_keeps_serving(piko):
    """During --drain-delay a node answers /ready 503, its peers list it as draining,
    and it still answers requests (forwarding them to the node with the tunnel)."""
    cl = Cluster(piko, 3, flags={"drain-delay": "3s", "grace-period": "10s"})
    cl.wait_converged()
    svc = piko.service("svc")
    piko.sidecar({"d": svc.addr}, server=cl.nodes[0], name="sidecar-n1")
    cl.wait_routes("d")
    node = cl.nodes[2]
    t0 = time.monotonic()
    node.signal(signal.SIGTERM)
    poll(lambda: node.ready_status() == 503, 1.0 * SLOW, interval=0.01,
         message="node 3 not ready after SIGTERM")
    draining_id = cl.node_id(2)
    for i in (0, 1):
        poll(lambda: cl.view(i)[draining_id]["status"] == "draining", 2 * SLOW,
             interval=0.02, message="node %d lists node 3 as draining" % (i + 1))
    served = 0
    while time.monotonic() - t0 < 2.0:
        r = cl.get(2, "/whoami", "d")
        assert (r.status, r.body) == (200, b"svc"), (
            "a node in its drain delay must still serve: %r" % r)
        served += 1
        time.sleep(0.05)
    assert node.wait(20) == 0
    print("node 3 served %d requests during its drain delay" % served)
    for i in (0, 1):
        poll(lambda: draining_id not in cl.view(i) or
             cl.view(i)[draining_id]["status"] != "draining", 10 * SLOW,
             message="node %d stops listing the exited node as draining" % (i + 1))


@pytest.mark.deadline(90)
def test_rebalance_spreads_tunnels_without_losing_requests(piko):
    """--upstream.rebalance.threshold: six tunnels on node 1, the only node when the
    sidecars connected; nodes 2 and 3 join; the tunnels are spread to two per node (one
    GOAWAY notice per interval, the sidecars reconnecting through the balancer) under a
    steady load that loses nothing."""
    cl = Cluster(piko, 3, flags={"upstream.rebalance.threshold": "0.2",
                                 "upstream.rebalance.interval": "300ms"}, start=False)
    cl.start(0)
    up, px = cl.upstream_balancer(), cl.proxy_balancer()
    assert up.wait_ready(1, 10 * SLOW) and px.wait_ready(1, 10 * SLOW)
    svcs = [piko.service("S%d" % k) for k in range(6)]
    for k, svc in enumerate(svcs):
        piko.sidecar({"rb": svc.addr}, connect_url=up.url, name="sidecar-%d" % k)
    cl.wait_routes("rb")
    # Alone, node 1 is the whole cluster: nothing to shed.
    time.sleep(1.0)

    def tunnels():
        return [cl.node_status(i)[1]["tunnels"] if cl.nodes[i] else 0 for i in range(3)]
    assert tunnels() == [6, 0, 0]
    load = Load(px.port, "rb", want={"S%d" % k for k in range(6)}, rate=100).start()
    try:
        time.sleep(0.5)
        cl.start(1)
        cl.start(2)
        t0 = time.monotonic()
        eventually(lambda: _assert_eq(tunnels(), [2, 2, 2]), 20 * SLOW, interval=0.1)
        t_spread = time.monotonic() - t0
        time.sleep(1.0)  # and it stays so
        assert tunnels() == [2, 2, 2]
    finally:
        load.stop()
    fails = load.failures()
    print("6 tunnels spread to 2 per node in %.2fs; %d requests, %d failed; upstream "
          "balancer connections %r" % (t_spread, len(load.results), len(fails), [
              s["connections"] for s in up.stats()["backends"]]))
    assert len(fails) == 0, "%d of %d requests failed while rebalancing: %r" % (
        len(fails), len(load.results), [r[5].strip() for r in fails[:10]])


def _assert_eq(got, want):
    assert got == want, "tunnels per node %r, want %r" % (got, want)
