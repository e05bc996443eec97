"""Cluster failures (docs/architecture/cluster.md "Failure"): kill -9 of the node that
holds a sidecar's tunnel (the sidecar reconnects through a load balancer over the
upstream ports; the outage seen at the other nodes is measured and printed, the dead node
turns unreachable, then is no longer listed and does not come back); a node restarted
under the same id is a new incarnation whose old table is not used; a node started
before its peers finds them when they appear."""

import collections
import os
import signal
import threading
import time

import pytest

from cluster import PEER_TIMEOUT, Cluster, eventually, request
from helpers import SLOW, assert_json_error, poll


class Poller(threading.Thread):
    """GET /whoami for endpoint at host:port on a new connection every `interval`;
    records (start, end, ok, detail)."""

    def __init__(self, host, port, endpoint, want_body, interval=0.02, timeout=2.0):
        super().__init__(daemon=True)
        self.args = (host, port, endpoint, want_body)
        self.interval = interval
        self.timeout = timeout * SLOW
        self.results = []
        self.stopping = threading.Event()

    def run(self):
        host, port, endpoint, want = self.args
        next_at = time.monotonic()
        while not self.stopping.is_set():
            t0 = time.monotonic()
            try:
                r = request(host, port, "GET", "/whoami", headers={
                    "x-piko-endpoint": endpoint}, timeout=self.timeout)
                ok = r.status == 200 and r.body == want
                detail = "%d %s" % (r.status, r.body[:80].decode(errors="replace"))
            except Exception as e:  # noqa: BLE001 - recorded
                ok, detail = False, type(e).__name__ + ": " + str(e)[:80]
            self.results.append((t0, time.monotonic(), ok, detail))
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay < 0:
                next_at = time.monotonic()
            else:
                self.stopping.wait(delay)

    def stop(self):
        self.stopping.set()
        self.join(10 * SLOW)

    def recovered_after(self, t, streak=10):
        """True once the last `streak` answers, all started after t, succeeded."""
        tail = [r for r in self.results if r[0] > t][-streak:]
        return len(tail) == streak and all(r[2] for r in tail)

    def summary(self, t_event):
        # A request in flight at the event belongs to "after" (it may fail: the
        # architecture fails a forwarded request whose link dies under it).
        before = [r for r in self.results if r[1] < t_event]
        after = [r for r in self.results if r[1] >= t_event]
        fails = [r for r in after if not r[2]]
        # Time without service: the longest stretch between two successful answers
        # (their completion times) that spans or follows the event.
        ok_ends = [r[1] for r in self.results if r[2]]
        gap = 0.0
        prev = max([e for e in ok_ends if e < t_event], default=t_event)
        for e in (e for e in ok_ends if e >= t_event):
            gap = max(gap, e - prev)
            prev = e
        first_fail = fails[0][0] - t_event if fails else None
        last_fail = fails[-1][1] - t_event if fails else None
        return {"polls_before": len(before), "failures_before": sum(1 for r in before
                                                                    if not r[2]),
                "polls_after": len(after), "failures": len(fails), "gap_s": gap,
                "first_failure_s": first_fail, "last_failure_end_s": last_fail,
                "failure_kinds": collections.Counter(r[3] for r in fails).most_common(4)}


def holder_of(cl, endpoint, nodes):
    """The one node (index) among nodes whose local table has endpoint."""
    def one():
        holders = [i for i in nodes
                   if cl.node_status(i)[1].get("endpoint_table", {}).get(endpoint)]
        assert len(holders) == 1, "holders of %s: %r" % (endpoint, holders)
        return holders[0]
    return eventually(one, 10 * SLOW)


def watch_membership(cl, observers, node_id, until, stop_when=None):
    """Polls observers' /status/cluster/nodes every 20 ms until `until` (monotonic) or
    stop_when(timelines); returns {observer: [(t, status or None), ...]} (changes only)."""
    timelines = {i: [] for i in observers}
    while time.monotonic() < until:
        for i in observers:
            v = cl.view(i)
            st = v[node_id]["status"] if node_id in v else None
            tl = timelines[i]
            if not tl or tl[-1][1] != st:
                tl.append((time.monotonic(), st))
        if stop_when is not None and stop_when(timelines):
            break
        time.sleep(0.02)
    return timelines


@pytest.mark.deadline(120)
def test_kill_9_of_the_node_holding_the_tunnel(piko):
    cl = Cluster(piko, 3)
    cl.wait_converged()
    lb = cl.upstream_balancer()
    assert lb.wait_ready(3, 10 * SLOW), lb.stats()
    svc = piko.service("svc")
    piko.sidecar({"fo": svc.addr}, connect_url=lb.url, name="sidecar")
    cl.wait_routes("fo")
    holder = holder_of(cl, "fo", range(3))
    others = [i for i in range(3) if i != holder]
    dead_id = cl.node_id(holder)

    pollers = [Poller("127.0.0.1", cl.nodes[i].proxy_port, "fo", b"svc") for i in others]
    for p in pollers:
        p.start()
    time.sleep(0.5)
    t_kill = time.monotonic()
    cl.nodes[holder].kill()
    try:
        poll(lambda: all(p.recovered_after(t_kill) for p in pollers), 30 * SLOW,
             interval=0.05, message="requests at nodes %s succeed again" % [
                 i + 1 for i in others])
    finally:
        for p in pollers:
            p.stop()
    for i, p in zip(others, pollers):
        s = p.summary(t_kill)
        print("kill -9 of node %d: node %d went %.3fs without a successful answer "
              "(%d of %d polls failed; first failure at +%s s, last ended at +%s s; %r)" % (
                  holder + 1, i + 1, s["gap_s"], s["failures"], s["polls_after"],
                  s["first_failure_s"] and round(s["first_failure_s"], 3),
                  s["last_failure_end_s"] and round(s["last_failure_end_s"], 3),
                  s["failure_kinds"]))
        assert s["failures_before"] == 0, "failures before the kill: %r" % [
            r for r in p.results if not r[2] and r[1] < t_kill][:5]
    new_holder = holder_of(cl, "fo", others)
    print("the tunnel moved from node %d to node %d; balancer: %r" % (
        holder + 1, new_holder + 1, [(b["addr"], b["connections"], b["active"])
                                     for b in lb.stats()["backends"]]))

    # Membership: unreachable after ~peer-timeout, unlisted after ~another, not back.
    t0 = time.monotonic()
    timelines = watch_membership(
        cl, others, dead_id, t0 + (4 * PEER_TIMEOUT + 10) * SLOW,
        stop_when=lambda tls: all(any(s == "unreachable" for _, s in tl) and tl[-1][1] is None
                                  for tl in tls.values()))
    for i, tl in timelines.items():
        shown = [(round(t - t_kill, 3), s) for t, s in tl]
        print("node %d's view of node %d after the kill: %r" % (i + 1, holder + 1, shown))
        states = [s for _, s in tl]
        assert "unreachable" in states, "node %d never listed the dead node as " \
            "unreachable: %r" % (i + 1, shown)
        assert states[-1] is None, "node %d still lists the dead node: %r" % (i + 1, shown)
        assert states.index("unreachable") < len(states) - 1
    later = watch_membership(cl, others, dead_id, time.monotonic() + 3 * PEER_TIMEOUT * SLOW)
    for i, tl in later.items():
        assert [s for _, s in tl] == [None], "node %d lists the dead node again: %r" % (
            i + 1, [(round(t - t_kill, 3), s) for t, s in tl])
    cl.wait_converged(nodes=others, members=others, timeout=2)
    for i in others:
        r = cl.get(i, "/whoami", "fo")
        assert (r.status, r.body) == (200, b"svc"), r


@pytest.mark.deadline(90)
def test_restarted_node_replaces_its_old_table(piko):
    """Node 3 holds the only tunnel of "ghost"; its sidecar is frozen (SIGSTOP) so it
    cannot reconnect; node 3 is killed and restarted at once under the same node id.
    Nodes 1 and 2 must take the new incarnation's (empty) table, without waiting for a
    peer timeout, and not route to the old one."""
    cl = Cluster(piko, 3)
    cl.wait_converged()
    svc = piko.service("ghost-svc")
    sc = piko.sidecar({"ghost": svc.addr}, server=cl.nodes[2], name="sidecar-n3")
    cl.wait_routes("ghost")
    old_inc = cl.node_status(2)[1]["incarnation"]
    sc.signal(signal.SIGSTOP)
    try:
        cl.nodes[2].kill()
        cl.start(2)
        new_inc = cl.node_status(2)[1]["incarnation"]
        assert new_inc != old_inc, "a restarted node must have a new incarnation"

        def replaced():
            for i in (0, 1):
                obj = cl.view(i).get(cl.node_id(2))
                assert obj is not None and obj["incarnation"] == new_inc, (i + 1, obj)
                assert obj["status"] == "active" and obj["endpoints"] == 0, (i + 1, obj)
        t0 = time.monotonic()
        eventually(replaced, 10 * SLOW)
        print("new incarnation of node 3 seen by nodes 1 and 2 %.3fs after it was ready" % (
            time.monotonic() - t0))
        for i in (0, 1):
            assert_json_error(cl.get(i, "/whoami", "ghost"), 502, "no available upstreams")
    finally:
        os.kill(sc.pid, signal.SIGCONT)
    # Thawed, the sidecar finds its tunnel dead and dials the new node 3.
    cl.wait_routes("ghost", timeout=30)
    for i in range(3):
        assert cl.get(i, "/whoami", "ghost").body == b"ghost-svc"


@pytest.mark.deadline(90)
def test_node_started_before_its_peers_finds_them(piko):
    # Default node ids (hostname + random suffix); every port is chosen up front.
    cl = Cluster(piko, 3, node_ids=None, start=False)
    cl.start(0)
    st, me = cl.node_status(0)
    assert st == 200 and me["local"] is True and me["id"], me
    assert [o["id"] for o in cl.nodes_status(0) if o.get("status") == "active"] == [
        me["id"]], "alone, node 1 lists only itself as active: %r" % cl.nodes_status(0)
    svc = piko.service("early")
    piko.sidecar({"early": svc.addr}, server=cl.nodes[0], name="sidecar-n1")
    time.sleep(1.5)  # several resolve intervals with nobody at the other addresses
    assert cl.nodes[0].running()
    cl.start(1)
    cl.start(2)
    t0 = time.monotonic()
    cl.wait_converged(timeout=20)
    print("3 nodes converged %.3fs after nodes 2 and 3 were ready" % (time.monotonic() - t0))
    ids = [cl.node_id(i) for i in range(3)]
    assert len(set(ids)) == 3 and all(ids), "default node ids must differ: %r" % ids
    cl.wait_routes("early")
    for i in (1, 2):
        r = cl.get(i, "/whoami", "early")
        assert (r.status, r.body) == (200, b"early"), r
