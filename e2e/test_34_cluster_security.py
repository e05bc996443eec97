"""Cluster security (PROTOCOL.md 3 "Authentication", docs/architecture/cluster.md):
clients cannot pose as peers (the proxy port drops piko-* fields, so forged
piko-forwarded-by / piko-endpoint / piko-authorization change nothing); every request on
the cluster port, state call or peer-link stream, needs the cluster secret (401 JSON
otherwise, and nothing reaches a tunnel); a node with the wrong secret gets no routing
state. Also the state document and its long poll."""

import json
import re
import threading
import time

import pytest

from cluster import SECRET, Cluster, eventually, request
from helpers import SLOW, assert_json_error, nghttp
from tcp_services import (END_HEADERS, END_STREAM, HEADERS, H2Client, H2Stream,
                          hpack_encode)

REAL, DECOY = "real", "decoy"


@pytest.fixture
def sec(shared):
    def build(h):
        cl = Cluster(h, 3)
        cl.wait_converged()
        real, decoy = h.service("real-svc"), h.service("decoy-svc")
        h.sidecar({REAL: real.addr, DECOY: decoy.addr}, server=cl.nodes[0],
                  name="sidecar-n1")
        cl.wait_routes(REAL)
        cl.wait_routes(DECOY)
        return cl, real, decoy
    return shared("cluster", build)


def forged(cl):
    return {"piko-forwarded-by": cl.node_id(0), "piko-endpoint": DECOY,
            "piko-authorization": "Bearer " + SECRET, "piko-client-addr": "192.0.2.1:1"}


# ---- the proxy port ---------------------------------------------------------------------


def test_forged_peer_fields_on_the_proxy_port_are_ignored(sec):
    cl, real, decoy = sec
    h = {"x-piko-endpoint": REAL}
    h.update(forged(cl))
    for i in (1, 2):  # nodes without the tunnel: honouring piko-forwarded-by would 502
        r = cl.get(i, "/echo?n=%d" % i, headers=h)
        assert r.status == 200, "node %d: %r" % (i + 1, r)
        got = json.loads(r.body)
        assert got["service"] == "real-svc", (
            "node %d routed by a forged piko-endpoint: %r" % (i + 1, got["service"]))
        names = [k for k, _ in got["headers"]]
        assert not [k for k in names if k.startswith("piko-")], got["headers"]
        assert [v for k, v in got["headers"] if k == "x-forwarded-for"] == ["127.0.0.1"], (
            "a forged piko-client-addr must not change the client address: %r" %
            got["headers"])
    assert (real.requests, decoy.requests) == (2, 0)


def test_forged_piko_endpoint_alone_does_not_route(sec):
    cl, real, decoy = sec
    f = forged(cl)
    for i in range(3):
        r = cl.get(i, "/echo", headers={"piko-endpoint": REAL,
                                        "piko-forwarded-by": f["piko-forwarded-by"]})
        assert_json_error(r, 400, "missing endpoint id")
    assert (real.requests, decoy.requests) == (0, 0)


def test_forged_peer_fields_over_h2c_are_ignored(sec):
    cl, real, decoy = sec
    h = {"x-piko-endpoint": REAL}
    h.update(forged(cl))
    rc, out, err = nghttp(cl.nodes[2].proxy_port, ["/whoami?i=%d" % i for i in range(10)],
                          headers=h)
    assert rc == 0, err
    assert out.decode() == "real-svc" * 10, out[:200]
    assert decoy.requests == 0


# ---- the cluster port: state calls --------------------------------------------------------


STATE = "/_piko/v1/cluster/state"


def cluster_get(cl, i, path=STATE, headers=None, timeout=5.0):
    return request("127.0.0.1", cl.ports[i]["cluster"], "GET", path, headers=headers,
                   timeout=timeout * SLOW)


@pytest.mark.parametrize("headers", [
    {},
    {"authorization": "Bearer wrong-secret"},
    {"piko-authorization": "Bearer wrong-secret"},
    {"authorization": "Bearer " + SECRET[:-1]},
    {"authorization": "Bearer " + SECRET + "x"},
    {"authorization": "Basic " + SECRET},
    {"authorization": SECRET},
    {"x-piko-authorization": "Bearer " + SECRET},
], ids=["none", "wrong", "wrong-piko", "prefix", "longer", "basic", "no-scheme",
        "x-piko-field"])
def test_state_call_without_the_secret_is_401(sec, headers):
    cl, _, _ = sec
    r = cluster_get(cl, 0, headers=headers)
    assert r.status == 401, r
    assert r.header("content-type", "").split(";")[0] == "application/json", r
    obj = json.loads(r.body)
    assert isinstance(obj, dict) and obj.get("error"), obj
    assert "endpoints" not in obj and "node_id" not in obj, obj


@pytest.mark.parametrize("field", ["authorization", "piko-authorization"])
def test_state_call_with_the_secret(sec, field):
    cl, _, _ = sec
    r = cluster_get(cl, 0, headers={field: "Bearer " + SECRET})
    assert r.status == 200, r
    assert r.header("content-type", "").split(";")[0] == "application/json", r
    st = json.loads(r.body)
    assert st["node_id"] == cl.node_id(0), st
    assert isinstance(st["version"], int) and st["draining"] is False, st
    assert st["endpoints"] == {REAL: 1, DECOY: 1}, st
    assert st["cluster_addr"] == cl.cluster_addr(0), st
    assert st["proxy_addr"] == "127.0.0.1:%d" % cl.ports[0]["proxy"], st
    assert st["incarnation"] == cl.node_status(0)[1]["incarnation"], st


def test_state_long_poll(sec, piko):
    cl, _, _ = sec
    auth = {"authorization": "Bearer " + SECRET}
    v = json.loads(cluster_get(cl, 1, headers=auth).body)["version"]
    # Nothing changes: the poll answers after about `wait` with the same version.
    t0 = time.monotonic()
    r = cluster_get(cl, 1, STATE + "?after=%d&wait=1s" % v, headers=auth)
    waited = time.monotonic() - t0
    assert r.status == 200 and json.loads(r.body)["version"] == v, r
    assert waited >= 0.8, "a long poll with nothing new answered after %.3fs" % waited
    # A tunnel registering on node 2 ends a waiting poll at once.
    out = {}

    def poller():
        t = time.monotonic()
        out["r"] = cluster_get(cl, 1, STATE + "?after=%d&wait=10s" % v, headers=auth,
                               timeout=20)
        out["t"] = time.monotonic() - t
    th = threading.Thread(target=poller)
    th.start()
    time.sleep(0.3)
    svc = piko.service("lp")
    piko.sidecar({"lp": svc.addr}, server=cl.nodes[1], name="sidecar-lp")
    th.join(20 * SLOW)
    st = json.loads(out["r"].body)
    assert st["version"] > v and st["endpoints"].get("lp") == 1, st
    assert out["t"] < 8, "the poll did not end when the table changed (%.3fs)" % out["t"]
    print("long poll answered %.3fs after it was sent (sidecar started at 0.3s)" % out["t"])


# ---- the cluster port: peer-link streams ------------------------------------------------


def h2_get(port, fields, path="/echo"):
    """One GET stream on a new h2c connection. Returns (H2Stream, goaway or None);
    st.status is None when the connection closed without an answer."""
    c = H2Client(port)
    try:
        sid = c.next_sid
        c.next_sid += 2
        st = H2Stream(sid)
        st.send_window = c.peer_initial_window
        c.streams[sid] = st
        hdrs = [(":method", "GET"), (":scheme", "http"), (":path", path),
                (":authority", "127.0.0.1")] + list(fields)
        c.sock.sendall(c._frame(HEADERS, END_HEADERS | END_STREAM, sid, hpack_encode(hdrs)))
        try:
            c.wait(lambda: st.ended or st.reset is not None)
        except (EOFError, ConnectionError):
            pass
        return st, c.goaway
    finally:
        c.close()


@pytest.mark.parametrize("auth", [None, "Bearer wrong-secret", "Bearer " + SECRET[:-1]],
                         ids=["none", "wrong", "prefix"])
def test_peer_stream_without_the_secret_is_401(sec, auth):
    cl, real, decoy = sec
    fields = [("piko-endpoint", REAL), ("piko-forwarded-by", cl.node_id(1))]
    if auth:
        fields.append(("piko-authorization", auth))
    # Node 1 holds the tunnel: an accepted stream would reach the service.
    st, goaway = h2_get(cl.ports[0]["cluster"], fields)
    assert st.status == 401, "stream without the secret: status %r reset %r goaway %r " \
        "data %r" % (st.status, st.reset, goaway, bytes(st.data[:200]))
    obj = json.loads(bytes(st.data))
    assert isinstance(obj, dict) and obj.get("error"), obj
    assert real.requests == 0 and decoy.requests == 0


def test_peer_stream_with_the_application_authorization_field_is_401(sec):
    """`authorization` belongs to the application on a peer link: it does not carry the
    cluster secret there."""
    cl, real, _ = sec
    st, _ = h2_get(cl.ports[0]["cluster"], [
        ("piko-endpoint", REAL), ("piko-forwarded-by", cl.node_id(1)),
        ("authorization", "Bearer " + SECRET)])
    assert st.status == 401, (st.status, st.reset, bytes(st.data[:200]))
    assert real.requests == 0


def test_peer_stream_with_the_secret_is_served(sec):
    """The positive control of the tests above: the same stream with the secret reaches
    the service, without the peer fields."""
    cl, real, _ = sec
    st, _ = h2_get(cl.ports[0]["cluster"], [
        ("piko-endpoint", REAL), ("piko-forwarded-by", cl.node_id(1)),
        ("piko-authorization", "Bearer " + SECRET)])
    assert st.status == 200, (st.status, st.reset, bytes(st.data[:300]))
    got = json.loads(bytes(st.data))
    assert got["service"] == "real-svc", got
    assert not [k for k, _ in got["headers"] if k.startswith("piko-")], got["headers"]
    assert real.requests == 1


# ---- a node with the wrong secret ---------------------------------------------------------


def intruder_node(piko, cl):
    """A node with a wrong secret whose join list names the cluster's nodes."""
    intruder = Cluster(piko, 1, secret="not-the-cluster-secret", node_ids=["intruder"],
                       start=False, name="intruder")
    intruder.join = ",".join([cl.cluster_addr(i) for i in range(3)] +
                             [intruder.cluster_addr(0)])
    intruder.start(0)
    return intruder


def test_node_with_a_wrong_secret_gets_no_state(sec, piko):
    cl, real, _ = sec
    intruder = intruder_node(piko, cl)
    time.sleep(3 * intruder.peer_timeout)

    def alone():
        v = intruder.view(0)
        active = [k for k, o in v.items() if o["status"] == "active"]
        assert active == ["intruder"], "the intruder's view: %r" % v
        for o in v.values():
            assert o["local"] or o["endpoints"] == 0, o
    eventually(alone, 5 * SLOW)
    assert_json_error(intruder.get(0, "/echo", REAL), 502, "no available upstreams")
    assert real.requests == 0
    for i in range(3):
        assert "intruder" not in cl.view(i)
    # The nodes it called said why.
    for i in range(3):
        cl.nodes[i].wait_log(lambda t: "invalid cluster secret" in t,
                             message="the refusal of the intruder's state calls")


def test_node_with_a_wrong_secret_says_why(sec, piko):
    """An operator who mistyped the secret must learn it from the node's own log (as a
    sidecar logs a 401 naming the cause), not only from its peers' logs."""
    cl, _, _ = sec
    intruder = intruder_node(piko, cl)
    addrs = [cl.cluster_addr(i) for i in range(3)]

    def says_why(text):
        for line in text.splitlines():
            if line.startswith("$ "):  # the command line names the secret and the peers
                continue
            line = line.split(None, 1)[-1]  # not the timestamp (".401Z")
            low = line.lower()
            if re.search(r"\b401\b|unauthori[sz]ed|secret", low) and any(
                    a in line for a in addrs):
                return True
        return False
    intruder.nodes[0].wait_log(says_why, timeout=3 * intruder.peer_timeout + 2,
                               message="a line naming a peer that refused the secret (401)")
