"""Cluster routing (docs/architecture/cluster.md, PROTOCOL.md 3): three nodes that find
each other by a static join list or by DNS SRV (dnsmasq); a sidecar on node 1 serves
HTTP, WebSocket and TCP endpoints; requests at nodes 2 and 3 reach it over one peer-link
hop (HTTP/1.1, h2c, bodies both ways, WebSocket, /_piko/v1/tcp); x-forwarded-* are set
once, by the node the client reached; local tunnels are preferred; a peer's endpoint that
goes away stops being routed; /status/cluster/nodes and /status/cluster/nodes/{id}."""

import hashlib
import json
import threading
import time
from types import SimpleNamespace

import pytest

from cluster import Cluster, eventually, request
from helpers import SLOW, assert_json_error, nghttp, poll
from services import pattern_sha256, pattern_stream
from tcp_services import (TcpService, WsClient, WsService, echo_roundtrip,
                          stream_pattern_both_ways, tcp_connect)

EP = "alpha"        # HTTP service "svc" on node 1
WS_EP = "ws"        # WebSocket echo on node 1
TCP_EP = "echo-db"  # TCP echo on node 1


def build(h, discovery):
    cl = Cluster(h, 3, discovery=discovery, name="%s-node" % discovery)
    cl.wait_converged()
    svc = h.service("svc-" + discovery)
    ws = WsService("ws-" + discovery)
    echo = TcpService(name="echo-" + discovery)
    h.services += [ws, echo]
    sc = h.sidecar({EP: svc.addr, WS_EP: ws.addr}, server=cl.nodes[0],
                   flags={"tcp-endpoint": ["%s=%s" % (TCP_EP, echo.addr)]},
                   name="%s-sidecar-n1" % discovery)
    for ep in (EP, WS_EP, TCP_EP):
        cl.wait_routes(ep)
    return SimpleNamespace(cl=cl, svc=svc, ws=ws, echo=echo, sc=sc, discovery=discovery)


@pytest.fixture(params=["static", "srv"])
def any_cl(request, shared):
    """The three-node cluster found by each discovery mode (one per module each)."""
    return shared("cluster-" + request.param, lambda h: build(h, request.param))


@pytest.fixture
def cl(shared):
    """The statically joined cluster."""
    return shared("cluster-static", lambda h: build(h, "static"))


def echo_headers(resp):
    assert resp.status == 200, resp
    return json.loads(resp.body)["headers"]


def values(headers, name):
    return [v for k, v in headers if k == name]


# ---- HTTP through every node ------------------------------------------------------------


def test_http_reaches_the_sidecar_from_every_node(any_cl):
    c = any_cl
    for i in range(3):
        r = c.cl.get(i, "/echo?via=node%d" % (i + 1), EP,
                     headers={"Host": "app.example.com", "Authorization": "Bearer app"})
        assert r.status == 200, "node %d: %r" % (i + 1, r)
        got = json.loads(r.body)
        assert got["service"] == c.svc.name and got["path"] == "/echo?via=node%d" % (i + 1)
        h = got["headers"]
        # The first node sets x-forwarded-*; the node holding the tunnel adds nothing.
        assert values(h, "x-forwarded-for") == ["127.0.0.1"], (
            "node %d: x-forwarded-for must be the client's address once: %r" % (i + 1, h))
        assert values(h, "x-forwarded-proto") == ["http"], h
        assert values(h, "x-forwarded-host") == ["app.example.com"], h
        assert values(h, "host") == ["app.example.com"], h
        assert values(h, "authorization") == ["Bearer app"], (
            "the application's Authorization must pass untouched: %r" % h)
        assert not [k for k, _ in h if k.startswith("piko-")], (
            "piko-* fields (peer link or tunnel) reached the service: %r" % h)
    assert c.svc.requests == 3, c.svc.paths
    assert sorted(c.svc.paths) == ["/echo?via=node%d" % i for i in (1, 2, 3)]


def test_x_forwarded_for_is_appended_once(cl):
    for i in (1, 2):
        h = echo_headers(cl.cl.get(i, "/echo", EP, headers={
            "X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}))
        assert values(h, "x-forwarded-for") == ["203.0.113.7, 127.0.0.1"], (
            "node %d: the client's address appended exactly once: %r" % (i + 1, h))
        assert values(h, "x-forwarded-proto") == ["http"], h


def test_keep_alive_and_concurrent_requests_through_peers(cl):
    # 100 requests on one keep-alive connection to node 3.
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", cl.cl.nodes[2].proxy_port,
                                      timeout=10 * SLOW)
    try:
        for k in range(100):
            conn.request("GET", "/whoami?k=%d" % k, headers={"x-piko-endpoint": EP})
            r = conn.getresponse()
            body = r.read()
            assert (r.status, body) == (200, cl.svc.name.encode()), (k, r.status, body)
    finally:
        conn.close()
    # 20 clients x 10 requests of 20 ms each at node 2: streams multiplexed on the link.
    errors, lock = [], threading.Lock()

    def worker(w):
        for k in range(10):
            try:
                r = cl.cl.get(1, "/slow?ms=20&w=%d&k=%d" % (w, k), EP, timeout=20)
                if r.status != 200:
                    raise AssertionError(repr(r))
            except Exception as e:  # noqa: BLE001
                with lock:
                    errors.append((w, k, repr(e)))
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60 * SLOW)
    assert not errors, errors[:5]
    assert cl.svc.requests == 300
    assert cl.svc.max_in_flight >= 5, (
        "requests through the peer link were serialised (max in flight %d)" %
        cl.svc.max_in_flight)


def test_h2c_multiplexed_through_node_2(cl):
    n = 100
    rc, out, err = nghttp(cl.cl.nodes[1].proxy_port, ["/whoami?i=%d" % i for i in range(n)],
                          headers={"x-piko-endpoint": EP})
    assert rc == 0, err
    assert out.decode() == cl.svc.name * n, out[:300]


def test_bodies_both_ways_through_node_3(cl):
    size = 32 * (1 << 20)
    r = request("127.0.0.1", cl.cl.nodes[2].proxy_port, "POST", "/upload",
                headers={"x-piko-endpoint": EP, "Content-Length": str(size)},
                body=b"".join(bytes(p) for p in pattern_stream(size, 5)), timeout=60 * SLOW)
    assert r.status == 200, r
    got = json.loads(r.body)
    assert (got["length"], got["sha256"]) == (size, pattern_sha256(size, 5)), got
    r = cl.cl.get(2, "/download?bytes=%d&seed=6" % size, EP, timeout=60)
    assert r.status == 200 and len(r.body) == size, (r.status, len(r.body))
    assert hashlib.sha256(r.body).hexdigest() == pattern_sha256(size, 6)


# ---- WebSocket and TCP ------------------------------------------------------------------


def test_websocket_through_node_3(cl):
    with WsClient(cl.cl.nodes[2].proxy_port, "/ws?room=7",
                  headers={"x-piko-endpoint": WS_EP}) as ws:
        assert ws.response.status == 101, ws.response
        for k in range(50):
            msg = "message-%d" % k
            ws.send(msg)
            assert ws.recv() == (0x1, msg.encode())
    h = dict(cl.ws.upgrades[-1]["headers"])
    assert h.get("x-forwarded-for") == "127.0.0.1", h
    assert not [k for k in h if k.startswith("piko-")], h


@pytest.mark.parametrize("node", [2, 3])
def test_tcp_through_other_node(cl, node):
    port = cl.cl.nodes[node - 1].proxy_port
    with tcp_connect(port, TCP_EP) as s:
        assert echo_roundtrip(s, b"hello through node %d" % node) == (
            b"hello through node %d" % node)
    with tcp_connect(port, TCP_EP, timeout=60) as s:
        total, sha, err = stream_pattern_both_ways(s, 16 << 20, seed=node)
        assert err is None, err
        assert (total, sha) == (16 << 20, pattern_sha256(16 << 20, node))
    rec = cl.echo.wait_conns(2)[-1]
    rec.done.wait(10 * SLOW)
    assert rec.eof, "the client's half-close must reach the service as EOF: %r" % rec


# ---- which node serves ------------------------------------------------------------------


def test_local_tunnel_preferred_and_peers_share_by_tunnel_count(cl, piko):
    """gamma is served on node 2 (service B) and node 3 (service C): node 2 and node 3
    use their own tunnel; node 1 spreads over both peers."""
    b, c = piko.service("B"), piko.service("C")
    piko.sidecar({"gamma": b.addr}, server=cl.cl.nodes[1], name="sidecar-b-n2")
    piko.sidecar({"gamma": c.addr}, server=cl.cl.nodes[2], name="sidecar-c-n3")
    cl.cl.wait_routes("gamma")
    # node 1 must know both holders before counting.
    poll(lambda: cl.cl.view(0)[cl.cl.node_id(1)]["endpoints"] >= 1 and
         cl.cl.view(0)[cl.cl.node_id(2)]["endpoints"] >= 1, 10 * SLOW,
         message="node 1 sees gamma on nodes 2 and 3")
    for i, want in ((1, "B"), (2, "C")):
        names = {cl.cl.get(i, "/whoami", "gamma").body.decode() for _ in range(30)}
        assert names == {want}, "node %d has a local tunnel: it must use it, got %r" % (
            i + 1, names)
    counts = {"B": 0, "C": 0}
    for _ in range(200):
        r = cl.cl.get(0, "/whoami", "gamma")
        assert r.status == 200, r
        counts[r.body.decode()] += 1
    assert min(counts.values()) >= 50, "node 1 must spread gamma over nodes 2 and 3 " \
        "(one tunnel each): %r" % counts


def test_endpoint_leaving_a_peer_stops_being_routed(cl, piko):
    svc = piko.service("beta-svc")
    sc = piko.sidecar({"beta": svc.addr}, server=cl.cl.nodes[2], name="sidecar-beta-n3")
    t0 = time.monotonic()
    cl.cl.wait_routes("beta")
    print("beta routable on every node %.3fs after its sidecar was ready" % (
        time.monotonic() - t0))
    for i in range(3):
        assert cl.cl.get(i, "/whoami", "beta").body == b"beta-svc"
    sc.stop()
    t0 = time.monotonic()
    for i in range(3):
        poll(lambda: cl.cl.get(i, "/whoami", "beta").status == 502, 10 * SLOW,
             message="node %d stops routing beta" % (i + 1))
        assert_json_error(cl.cl.get(i, "/whoami", "beta"), 502, "no available upstreams")
    print("beta gone from every node %.3fs after its sidecar exited" % (
        time.monotonic() - t0))
    for i in range(3):
        st, obj = cl.cl.node_status(i, cl.cl.node_id(2))
        assert st == 200 and "beta" not in obj["endpoint_table"], obj


def test_unknown_endpoint_is_502_on_every_node(cl):
    for i in range(3):
        assert_json_error(cl.cl.get(i, "/echo", "nobody-serves-this"), 502,
                          "no available upstreams")


# ---- status ------------------------------------------------------------------------------


NODE_FIELDS = {"id", "status", "local", "incarnation", "version", "proxy_addr", "admin_addr",
               "cluster_addr", "endpoints", "tunnels"}


def test_status_nodes(any_cl):
    # Eventually consistent: an earlier test's sidecars may have just left.
    eventually(lambda: check_status_nodes(any_cl.cl), 10 * SLOW)


def check_status_nodes(cl):
    ids = [cl.node_id(i) for i in range(3)]
    assert len(set(ids)) == 3, ids
    views = [cl.view(i) for i in range(3)]
    for i, v in enumerate(views):
        assert set(v) == set(ids), "node %d lists %r, want %r" % (i + 1, sorted(v), ids)
        for nid, obj in v.items():
            missing = NODE_FIELDS - set(obj)
            assert not missing, "node %d: %s lacks %s: %r" % (i + 1, nid, missing, obj)
            assert obj["status"] == "active", (i + 1, obj)
            assert obj["local"] is (nid == ids[i]), (i + 1, obj)
            j = ids.index(nid)
            assert obj["proxy_addr"] == "127.0.0.1:%d" % cl.ports[j]["proxy"], obj
            assert obj["admin_addr"] == "127.0.0.1:%d" % cl.ports[j]["admin"], obj
            assert obj["cluster_addr"] == cl.cluster_addr(j), obj
            # endpoints: alpha, ws, echo-db (one tunnel each) on node 1, none elsewhere.
            want = (3, 3) if j == 0 else (0, 0)
            assert (obj["endpoints"], obj["tunnels"]) == want, (
                "node %d's entry for node %d: endpoints/tunnels %r, want %r: %r" % (
                    i + 1, j + 1, (obj["endpoints"], obj["tunnels"]), want, obj))
    # Everybody agrees on each node's identity and version.
    for nid in ids:
        seen = {(v[nid]["incarnation"], v[nid]["version"]) for v in views}
        assert len(seen) == 1, "views of %s differ: %r" % (nid, seen)


def test_status_node_endpoint_table(any_cl):
    eventually(lambda: check_endpoint_table(any_cl.cl), 10 * SLOW)


def check_endpoint_table(cl):
    table = {EP: 1, WS_EP: 1, TCP_EP: 1}
    st, local = cl.node_status(0)
    assert st == 200, local
    assert local["id"] == cl.node_id(0) and local["local"] is True, local
    assert local["endpoint_table"] == table, local
    assert (local["endpoints"], local["tunnels"]) == (3, 3), local
    for i in (1, 2):
        st, obj = cl.node_status(i)
        assert st == 200 and obj["endpoint_table"] == {}, obj
        st, obj = cl.node_status(i, cl.node_id(0))
        assert st == 200, obj
        assert obj["id"] == cl.node_id(0) and obj["local"] is False, obj
        assert obj["endpoint_table"] == table, (
            "node %d's copy of node 1's table: %r" % (i + 1, obj))
    st, obj = cl.node_status(1, "no-such-node")
    assert st == 404, obj
    assert isinstance(obj, dict) and "error" in obj, obj


# ---- dns:NAME:PORT -----------------------------------------------------------------------


def test_dns_a_records_discovery(piko):
    """`--cluster.join dns:NAME:PORT`: one name with an A record per node (127.0.0.11-13,
    one cluster port), the node's own address among them."""
    cl = Cluster(piko, 3, discovery="dns", hosts=["127.0.0.11", "127.0.0.12", "127.0.0.13"])
    cl.wait_converged()
    svc = piko.service("dns-svc")
    piko.sidecar({"dns-ep": svc.addr}, server=cl.nodes[2], name="sidecar-n3")
    cl.wait_routes("dns-ep")
    for i in range(3):
        r = cl.get(i, "/echo", "dns-ep")
        assert r.status == 200, (i + 1, r)
        h = json.loads(r.body)["headers"]
        assert values(h, "x-forwarded-for") == ["127.0.0.1"], h
    for i in range(3):
        v = cl.view(i)
        assert {o["cluster_addr"] for o in v.values()} == {
            "127.0.0.%d:%d" % (11 + j, cl.ports[j]["cluster"]) for j in range(3)}, v
