"""Metrics after a scripted workload (issue "Observability", metrics part 2): a two-node
cluster, one sidecar on each node, and requests answered 200, 404, 502 (an unknown
endpoint, a service that refuses connections) and 504 (a slow service, proxy.timeout 1s),
a TCP stream through --forward and a WebSocket with known bytes, proxy.auth rejections, a
request forwarded from node 2 to node 1, then node 2 drained (its sidecar moves to node
1). Every process's /metrics parses with prometheus_client's parser, and every counter and
histogram count moved by exactly what the workload implies: the ones listed below, all
others by 0 (but the few that count background work, IGNORED)."""

import struct
import time

import pytest

import tokens
from cluster import Cluster, request
from conftest import free_port
from helpers import SLOW, poll
from prom import delta, scrape
from services import closed_port
from tcp_services import (TcpService, WsClient, WsService, echo_roundtrip, plain_connect,
                          wait_listening, ws_frame)

SECRET = "workload-proxy-secret-0123456789abcdef"
# Counters of background work whose value no workload fixes.
IGNORED = {"process_cpu_seconds_total", "piko_cluster_state_updates_total",
           "piko_cluster_state_failures_total"}
TCP_BYTES = 1000


def check_counts(proc, before, after, expected):
    """Every counter sample and histogram _count of proc moved by expected[(name, labels)]
    (labels: a dict), or by 0; series present only after count from 0."""
    want = {(name, frozenset(labels.items())): v for (name, labels), v in expected}
    got = {}
    for key in set(before.counts()) | set(after.counts()):
        if key[0] in IGNORED:
            continue
        d = after.get(key, 0.0) - before.get(key, 0.0)
        if d or key in want:
            got[key] = d
    wrong = {"%s%s" % (k[0], dict(k[1])): (got.get(k, 0.0), want.get(k, 0.0))
             for k in set(got) | set(want) if got.get(k, 0.0) != want.get(k, 0.0)}
    assert not wrong, "%s: (moved by, expected) of the counters that differ: %r" % (
        proc.name, wrong)


def C(name, v, **labels):
    return ((name, labels), v)


@pytest.mark.deadline(120)
def test_every_count_follows_the_workload(piko):
    svc = piko.service("svc")
    ws = WsService("ws")
    echo = TcpService(name="echo")
    piko.services += [ws, echo]
    cl = Cluster(piko, 2, start=False)
    n1 = cl.start(0, wait=False, flags={"proxy.timeout": "1s"},
                  args=["--metrics.endpoint-labels"])
    n2 = cl.start(1, wait=False, flags={"proxy.auth.hmac-secret-key": SECRET,
                                        "drain-delay": "60s", "grace-period": "70s"})
    n1.wait_ready()
    n2.wait_ready()
    cl.wait_converged()
    id1, id2 = cl.node_id(0), cl.node_id(1)
    fwd_port = free_port()
    sa = piko.sidecar({"my-service": svc.addr, "ws": ws.addr, "dead": "127.0.0.1:%d" %
                       closed_port()}, server=n1, name="sidecar-a", flags={
        "tcp-endpoint": "echo=%s" % echo.addr,
        "forward": "127.0.0.1:%d=echo" % fwd_port,
        "forward.url": "http://127.0.0.1:%d" % n1.proxy_port})
    piko.wait_routable(n1, "echo")
    wait_listening(fwd_port, sa)
    # Sidecar B dials node 2 first, node 1 after a failure (one tunnel).
    sb = piko.sidecar({"beta": svc.addr}, server=n2, name="sidecar-b", flags={
        "connect.url": "%s,%s" % (n2.connect_url, n1.connect_url)})
    token = tokens.hs256(SECRET, tokens.claims())
    poll(lambda: request("127.0.0.1", n2.proxy_port, "GET", "/whoami", headers={
        "x-piko-endpoint": "my-service", "authorization": "Bearer " + token}).status == 200,
        10 * SLOW, message="node 2 routes my-service through node 1")
    procs = {"node1": n1, "node2": n2, "sidecar-a": sa, "sidecar-b": sb}
    before = {k: scrape(p) for k, p in procs.items()}

    # ---- node 1: HTTP -----------------------------------------------------------------
    body_out = {"my-service": 0, "nobody": 0, "dead": 0}

    def get(port, path, endpoint, status, headers=None):
        h = {"x-piko-endpoint": endpoint}
        h.update(headers or {})
        r = request("127.0.0.1", port, "GET", path, headers=h, timeout=10 * SLOW)
        assert r.status == status, r
        return r

    for _ in range(3):
        body_out["my-service"] += len(get(n1.proxy_port, "/echo", "my-service", 200).body)
    body_out["my-service"] += len(get(n1.proxy_port, "/status/404", "my-service", 404).body)
    body_out["my-service"] += len(get(n1.proxy_port, "/slow?ms=3000", "my-service", 504).body)
    body_out["nobody"] += len(get(n1.proxy_port, "/", "nobody", 502).body)
    body_out["dead"] += len(get(n1.proxy_port, "/", "dead", 502).body)

    # ---- node 1: a TCP stream through sidecar A's --forward, then a WebSocket -----------
    data = bytes(range(256)) * (TCP_BYTES // 256) + b"x" * (TCP_BYTES % 256)
    with plain_connect(fwd_port) as s:
        assert echo_roundtrip(s, data) == data
        assert s.recv_to_eof() == b""
    with WsClient(n1.proxy_port, headers={"x-piko-endpoint": "ws"}) as c:
        assert c.response.status == 101, c.response
        c.send("hello")
        assert c.recv() == (1, b"hello")
        c.sock.sendall(ws_frame(0x8, struct.pack("!H", 1000), mask=True))
        assert c.recv() == (8, struct.pack("!H", 1000))
        assert c.sock.recv(16) == b""  # the service closed after its close frame
    ws_in = (2 + 4 + 5) + (2 + 4 + 2)  # masked text and close frames
    ws_out = (2 + 5) + (2 + 2)

    # ---- node 2: proxy.auth, and a request forwarded to node 1 --------------------------
    get(n2.proxy_port, "/echo", "my-service", 401)
    bad = tokens.hs256("not-the-secret-0123456789abcdef0123", tokens.claims())
    get(n2.proxy_port, "/echo", "my-service", 401, {"authorization": "Bearer " + bad})
    get(n2.proxy_port, "/echo", "my-service", 200, {"authorization": "Bearer " + token})

    # ---- node 2 drains: sidecar B is refused there once, then moves to node 1 -----------
    n2.signal(15)
    poll(lambda: delta(scrape(n1), before["node1"],
                       "piko_upstreams_tunnel_connects_total") == 1, 10 * SLOW,
         message="sidecar B's tunnel up on node 1")

    # Exchanges are counted when they end: wait for the last ones everywhere.
    poll(lambda: delta(scrape(n1), before["node1"], "piko_proxy_streams_total",
                       kind="upgrade") == 1, 5 * SLOW, message="the WebSocket counted")
    poll(lambda: delta(scrape(sa), before["sidecar-a"], "piko_sidecar_streams_total",
                       endpoint="ws", kind="upgrade") == 1, 5 * SLOW,
         message="the WebSocket counted by sidecar A")
    time.sleep(0.2 * SLOW)
    after = {k: scrape(p) for k, p in procs.items()}
    n2.kill()

    # ---- the expected moves -----------------------------------------------------------
    P = "piko_proxy_requests_total"
    check_counts(n1, before["node1"], after["node1"], [
        C(P, 5, status="200", method="GET"),  # 3 echo, the TCP stream, the WebSocket
        C(P, 1, status="404", method="GET"),
        C(P, 2, status="502", method="GET"),
        C(P, 1, status="504", method="GET"),
        C("piko_proxy_request_latency_seconds_count", 9),
        C("piko_proxy_request_size_bytes_count", 9),
        C("piko_proxy_response_size_bytes_count", 9),
        C("piko_proxy_streams_total", 1, kind="tcp"),
        C("piko_proxy_streams_total", 1, kind="upgrade"),
        C("piko_proxy_stream_bytes_total", TCP_BYTES, kind="tcp", direction="in"),
        C("piko_proxy_stream_bytes_total", TCP_BYTES, kind="tcp", direction="out"),
        C("piko_proxy_stream_bytes_total", ws_in, kind="upgrade", direction="in"),
        C("piko_proxy_stream_bytes_total", ws_out, kind="upgrade", direction="out"),
        C("piko_proxy_aborts_total", 1, kind="timeout"),
        # Node 1's 8 streams (all but the 502 "nobody"), and node 2's forwarded one.
        C("piko_upstreams_upstream_requests_total", 9),
        C("piko_cluster_forwards_total", 1, node_id=id2),
        C("piko_upstreams_tunnel_connects_total", 1),  # sidecar B
        C("piko_endpoint_requests_total", 3, endpoint="my-service", status_class="2xx"),
        C("piko_endpoint_requests_total", 1, endpoint="my-service", status_class="4xx"),
        C("piko_endpoint_requests_total", 1, endpoint="my-service", status_class="5xx"),
        C("piko_endpoint_requests_total", 1, endpoint="nobody", status_class="5xx"),
        C("piko_endpoint_requests_total", 1, endpoint="dead", status_class="5xx"),
        C("piko_endpoint_requests_total", 1, endpoint="echo", status_class="2xx"),
        C("piko_endpoint_requests_total", 1, endpoint="ws", status_class="2xx"),
        C("piko_endpoint_bytes_total", body_out["my-service"], endpoint="my-service",
          direction="out"),
        C("piko_endpoint_bytes_total", body_out["nobody"], endpoint="nobody", direction="out"),
        C("piko_endpoint_bytes_total", body_out["dead"], endpoint="dead", direction="out"),
        C("piko_endpoint_bytes_total", TCP_BYTES, endpoint="echo", direction="in"),
        C("piko_endpoint_bytes_total", TCP_BYTES, endpoint="echo", direction="out"),
        C("piko_endpoint_bytes_total", ws_in, endpoint="ws", direction="in"),
        C("piko_endpoint_bytes_total", ws_out, endpoint="ws", direction="out"),
    ])
    a1, b1 = after["node1"], before["node1"]
    assert delta(a1, b1, "piko_proxy_request_size_bytes_sum") == TCP_BYTES + ws_in
    assert delta(a1, b1, "piko_proxy_response_size_bytes_sum") == (
        sum(body_out.values()) + TCP_BYTES + ws_out)
    assert a1.value("piko_cluster_nodes", status="active") == 1
    assert a1.value("piko_cluster_nodes", status="draining") == 1
    assert a1.value("piko_cluster_nodes", status="unreachable") == 0
    assert a1.value("piko_upstreams_connected_upstreams") == 5
    assert a1.value("piko_upstreams_registered_endpoints") == 5
    assert a1.value("piko_proxy_requests_in_flight") == 0
    assert a1.value("piko_cluster_state_updates_total", direction="received") > 0
    assert a1.value("piko_cluster_state_updates_total", direction="sent") > 0

    check_counts(n2, before["node2"], after["node2"], [
        C(P, 2, status="401", method="GET"),
        C(P, 1, status="200", method="GET"),
        C("piko_proxy_request_latency_seconds_count", 3),
        C("piko_proxy_request_size_bytes_count", 3),
        C("piko_proxy_response_size_bytes_count", 3),
        C("piko_proxy_auth_rejections_total", 1, reason="missing_token"),
        C("piko_proxy_auth_rejections_total", 1, reason="bad_signature"),
        C("piko_upstreams_remote_requests_total", 1, node_id=id1),
        C("piko_upstreams_tunnel_disconnects_total", 1, reason="drain"),
        C("piko_upstreams_handshake_rejections_total", 1, reason="draining"),
    ])
    a2 = after["node2"]
    assert a2.value("piko_cluster_nodes", status="active") == 1
    assert a2.value("piko_cluster_nodes", status="draining") == 1
    assert a2.value("piko_upstreams_connected_upstreams") == 0

    R = "piko_sidecar_requests_total"
    check_counts(sa, before["sidecar-a"], after["sidecar-a"], [
        C(R, 4, endpoint="my-service", status="200", method="GET"),  # 3 + node 2's
        C(R, 1, endpoint="my-service", status="404", method="GET"),
        C(R, 1, endpoint="my-service", status="0", method="GET"),  # the 504: cancelled
        C(R, 1, endpoint="dead", status="0", method="GET"),
        C("piko_sidecar_request_latency_seconds_count", 6, endpoint="my-service"),
        C("piko_sidecar_request_latency_seconds_count", 1, endpoint="dead"),
        C("piko_sidecar_local_errors_total", 1, endpoint="dead", reason="connect"),
        C("piko_sidecar_streams_total", 1, endpoint="echo", kind="tcp"),
        C("piko_sidecar_streams_total", 1, endpoint="ws", kind="upgrade"),
        C("piko_sidecar_stream_bytes_total", TCP_BYTES, endpoint="echo", kind="tcp",
          direction="in"),
        C("piko_sidecar_stream_bytes_total", TCP_BYTES, endpoint="echo", kind="tcp",
          direction="out"),
        C("piko_sidecar_stream_bytes_total", ws_in, endpoint="ws", kind="upgrade",
          direction="in"),
        C("piko_sidecar_stream_bytes_total", ws_out, endpoint="ws", kind="upgrade",
          direction="out"),
        C("piko_sidecar_forward_connections_total", 1, port=str(fwd_port)),
    ])
    assert after["sidecar-a"].value("piko_sidecar_tunnels_connected") == 4
    assert after["sidecar-a"].value("piko_sidecar_streams_in_flight") == 0

    check_counts(sb, before["sidecar-b"], after["sidecar-b"], [
        C("piko_sidecar_tunnel_connects_total", 1),
        C("piko_sidecar_tunnel_disconnects_total", 1, reason="goaway"),
    ])
    assert after["sidecar-b"].value("piko_sidecar_tunnels_connected") == 1
