"""The access log and /status/requests (issue "Observability"): one JSON line per request
and per raw stream on the server and on the sidecar, matching a scripted workload one to
one (status, bytes, route, error); 5xx at warn; header allow and block lists, credentials
never logged; --log.access=false; --log.format json makes every line JSON; log.subsystems
turns on one subsystem's debug lines; config errors name the key."""

import json
import socket
import subprocess
import time

import pytest

from cluster import Cluster
from conftest import binary, free_port
from helpers import SLOW, h1, poll
from tcp_services import TcpService, WsClient, WsService, echo_roundtrip, tcp_connect, tcp_sidecar

EP = {"x-piko-endpoint": "my-service"}


def access_lines(proc):
    """The access records of a process's log, probes of wait_routable left out."""
    out = []
    for line in proc.log_text().splitlines():
        if not line.startswith("{"):
            continue
        rec = json.loads(line)  # every JSON-looking line must parse
        if rec.get("subsystem") == "access" and rec.get("path") != "/_probe":
            out.append(rec)
    return out


def wait_count(proc, n, timeout=5.0):
    poll(lambda: len(access_lines(proc)) >= n, timeout * SLOW,
         message="%d access lines in %s" % (n, proc.name))
    time.sleep(0.1)
    return access_lines(proc)


def test_access_log_matches_the_workload(piko):
    svc = piko.service()
    ws = WsService("ws")
    echo = TcpService(name="echo")
    piko.services += [ws, echo]
    srv = piko.server({"proxy.timeout": "500ms"})
    sc = piko.sidecar({"my-service": svc.addr, "ws": ws.addr}, server=srv,
                      flags={"tcp-endpoint": ["db=%s" % echo.addr]})
    piko.wait_routable(srv, "db")
    base_srv, base_sc = len(access_lines(srv)), len(access_lines(sc))

    assert h1(srv.proxy_port, "GET", "/echo?a=1", EP).status == 200
    assert h1(srv.proxy_port, "POST", "/upload", EP, body=b"x" * 1000).status == 200
    assert h1(srv.proxy_port, "GET", "/status/404", EP).status == 404
    assert h1(srv.proxy_port, "GET", "/nowhere", {"x-piko-endpoint": "nobody"}).status == 502
    assert h1(srv.proxy_port, "GET", "/slow?ms=2000", EP).status == 504
    with WsClient(srv.proxy_port, "/chat", headers={"x-piko-endpoint": "ws"}) as c:
        c.send("hello")
        assert c.recv() == (0x1, b"hello")
    with tcp_connect(srv.proxy_port, "db") as s:
        assert echo_roundtrip(s, b"y" * 5000) == b"y" * 5000

    recs = wait_count(srv, base_srv + 7)[base_srv:]
    by_path = {}
    for r in recs:
        by_path.setdefault(r.get("path") or r["kind"], []).append(r)
    assert len(recs) == 7, recs

    ok = by_path["/echo?a=1"][0]
    assert ok["status"] == 200 and ok["method"] == "GET" and ok["endpoint"] == "my-service", ok
    assert ok["route"] == "tunnel" and ok["tunnel"], ok
    assert ok["level"] == "info" and ok["msg"] == "request" and ok["kind"] == "http", ok
    assert ok["node"] and ok["client"].startswith("127.0.0.1:"), ok
    assert ok["bytes_out"] > 0 and ok["bytes_in"] == 0 and ok["duration_ms"] >= 0, ok
    assert "error" not in ok, ok

    up = by_path["/upload"][0]
    assert up["method"] == "POST" and up["bytes_in"] == 1000 and up["status"] == 200, up
    assert by_path["/status/404"][0]["status"] == 404

    nobody = by_path["/nowhere"][0]
    assert nobody["status"] == 502 and nobody["level"] == "warn", nobody
    assert nobody["route"] == "proxy" and nobody["error"] == "no available upstreams", nobody
    assert nobody["endpoint"] == "nobody", nobody

    slow = by_path["/slow?ms=2000"][0]
    assert slow["status"] == 504 and slow["error"] == "upstream timeout", slow
    assert slow["level"] == "warn" and slow["duration_ms"] >= 400, slow

    wsr = by_path["/chat"][0]
    assert wsr["kind"] == "upgrade" and wsr["msg"] == "stream" and wsr["status"] == 101, wsr
    assert wsr["bytes_in"] > 0 and wsr["bytes_out"] > 0, wsr

    tcp = by_path["/_piko/v1/tcp/db"][0]
    assert tcp["endpoint"] == "db" and tcp["msg"] == "stream", tcp
    assert tcp["bytes_in"] == 5000 and tcp["bytes_out"] == 5000, tcp

    # The sidecar saw what reached the services: every request but the 502, the stream
    # of the WebSocket and the TCP connection.
    sc_recs = wait_count(sc, base_sc + 6)[base_sc:]
    assert len(sc_recs) == 6, sc_recs
    sc_by = {(r.get("path") or r["kind"]): r for r in sc_recs}
    assert sc_by["/echo?a=1"]["status"] == 200 and sc_by["/echo?a=1"]["route"] == "service"
    assert sc_by["/upload"]["bytes_in"] == 1000
    assert sc_by["/status/404"]["status"] == 404
    assert sc_by["/chat"]["kind"] == "upgrade" and sc_by["/chat"]["status"] == 101
    assert sc_by["tcp"]["bytes_in"] == 5000 and sc_by["tcp"]["bytes_out"] == 5000
    # The 504's stream was cancelled by the server before the service answered.
    assert sc_by["/slow?ms=2000"]["status"] in (0, 200), sc_by["/slow?ms=2000"]
    assert "nowhere" not in json.dumps(sc_recs)

    # /status/requests: the same records, newest first, on both processes.
    st = json.loads(h1(srv.admin_port, "GET", "/status/requests").body)
    paths = [r.get("path") for r in st if r.get("path") != "/_probe"]
    assert paths[:2] == ["/_piko/v1/tcp/db", "/chat"], paths
    assert "/echo?a=1" in paths and "/slow?ms=2000" in paths
    assert all("level" not in r for r in st)
    sc_st = json.loads(h1(sc.admin_port, "GET", "/status/requests").body)
    assert sc_st[0]["kind"] == "tcp" and sc_st[0]["bytes_in"] == 5000, sc_st[0]


def test_status_requests_keeps_the_last_100(piko):
    svc = piko.service()
    srv = piko.server(args=["--log.access=false"])
    piko.sidecar({"my-service": svc.addr}, server=srv)
    for i in range(120):
        assert h1(srv.proxy_port, "GET", "/echo?n=%d" % i, EP).status == 200
    time.sleep(0.1)
    st = json.loads(h1(srv.admin_port, "GET", "/status/requests").body)
    assert len(st) == 100, len(st)
    assert st[0]["path"] == "/echo?n=119" and st[99]["path"] == "/echo?n=20", (st[0], st[99])
    # log.access=false: no access line at all, the ring still fills.
    assert access_lines(srv) == []


def test_headers_allow_and_block_lists(piko):
    flags = {"log.access-request-headers": "*", "log.access-response-headers": "content-type",
             "log.access-block-headers": "x-secret"}
    srv, sc, _ = piko.stack(server_flags=flags, sidecar_flags={"log.access-request-headers":
                                                               "user-agent,x-trace"})
    hdrs = dict(EP, **{"Authorization": "Bearer app-token", "Cookie": "session=1",
                       "X-Secret": "s3", "X-Trace": "t-1", "User-Agent": "e2e"})
    assert h1(srv.proxy_port, "GET", "/echo", hdrs).status == 200
    rec = [r for r in wait_count(srv, 1) if r["path"] == "/echo"][-1]
    req = rec["request_headers"]
    assert req.get("x-trace") == "t-1" and req.get("user-agent") == "e2e", req
    for never in ("authorization", "cookie", "x-secret", "x-piko-authorization"):
        assert never not in req, req
    assert list(rec["response_headers"]) == ["content-type"], rec
    text = srv.log_text() + sc.log_text()
    assert "app-token" not in text and "session=1" not in text and "s3" not in text
    sc_rec = [r for r in wait_count(sc, 1) if r["path"] == "/echo"][-1]
    assert sc_rec["request_headers"] == {"user-agent": "e2e", "x-trace": "t-1"}, sc_rec
    assert "response_headers" not in sc_rec


def test_log_level_warn_keeps_only_failures(piko):
    srv, _, _ = piko.stack(server_flags={"log.level": "warn"})
    assert h1(srv.proxy_port, "GET", "/echo", EP).status == 200
    assert h1(srv.proxy_port, "GET", "/", {"x-piko-endpoint": "nobody"}).status == 502
    recs = wait_count(srv, 1)
    assert [r["status"] for r in recs if r["path"] in ("/echo", "/")] == [502], recs


def test_json_format_and_subsystems(piko):
    srv, sc, _ = piko.stack(server_flags={"log.format": "json", "log.subsystems": "proxy"},
                            sidecar_flags={"log.format": "json"})
    assert h1(srv.proxy_port, "GET", "/", {"x-piko-endpoint": "nobody"}).status == 502
    assert h1(srv.proxy_port, "GET", "/echo", EP).status == 200
    wait_count(srv, 2)
    for proc in (srv, sc):
        # (the harness writes the command line first, as "$ argv")
        lines = [ln for ln in proc.log_text().splitlines() if ln.strip() and ln[:2] != "$ "]
        assert lines
        for ln in lines:
            rec = json.loads(ln)
            assert {"time", "level", "subsystem", "msg"} <= set(rec), rec
    recs = [json.loads(ln) for ln in srv.log_text().splitlines() if ln[:2] != "$ "]
    # log.subsystems=proxy: the proxy's debug lines are written at log.level info...
    assert any(r["level"] == "debug" and r["subsystem"] == "proxy" for r in recs), recs[-5:]
    # ...and no other subsystem's.
    assert not any(r["level"] == "debug" and r["subsystem"] != "proxy" for r in recs)


@pytest.mark.parametrize("flag,value,key", [
    ("log.format", "xml", "log.format"),
    ("log.subsystems", "proxy,Bad Name", "log.subsystems"),
    ("log.access-request-headers", "good,bad header", "log.access-request-headers"),
    ("log.access-block-headers", "*", "log.access-block-headers"),
])
@pytest.mark.parametrize("prog", ["piko-server", "piko-sidecar"])
def test_bad_log_options_name_the_key(prog, flag, value, key):
    args = [binary(prog), "--%s=%s" % (flag, value)]
    if prog == "piko-sidecar":
        args += ["--endpoint", "x=8080"]
    p = subprocess.run(args, capture_output=True, text=True, timeout=10)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert key in p.stderr, p.stderr


def test_forwarded_request_is_logged_on_both_nodes(piko):
    cl = Cluster(piko, 2, name="al-node")
    cl.wait_converged()
    svc = piko.service("svc-al")
    piko.sidecar({"far": svc.addr}, server=cl.nodes[1], name="al-sidecar")
    cl.wait_routes("far")
    r = cl.get(0, "/echo?x=forwarded", endpoint="far")
    assert r.status == 200, r
    n0 = [r for r in wait_count(cl.nodes[0], 1) if r["path"] == "/echo?x=forwarded"]
    n1 = [r for r in wait_count(cl.nodes[1], 1) if r["path"] == "/echo?x=forwarded"]
    assert len(n0) == 1 and len(n1) == 1, (n0, n1)
    assert n0[0]["route"] == "peer" and n0[0]["peer"] == cl.node_id(1), n0
    assert n1[0]["route"] == "tunnel" and n1[0]["forwarded_by"] == cl.node_id(0), n1
    assert n0[0]["status"] == n1[0]["status"] == 200


def test_forward_connections_are_logged_on_the_sidecar(piko):
    echo = TcpService(name="echo-fwd")
    piko.services.append(echo)
    srv = piko.server()
    tcp_sidecar(piko, srv, tcp={"db": echo.addr}, name="exposer")
    fwd_port = free_port()
    fwd = tcp_sidecar(piko, srv, forwards={fwd_port: "db", fwd_port + 1: "nobody"},
                      name="forwarder")
    with socket.create_connection(("127.0.0.1", fwd_port), timeout=5 * SLOW) as s:
        s.sendall(b"z" * 3000)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while len(got) < 3000:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    assert got == b"z" * 3000
    with socket.create_connection(("127.0.0.1", fwd_port + 1), timeout=5 * SLOW) as s:
        s.settimeout(5 * SLOW)
        assert s.recv(1) == b""  # closed: the endpoint has no tunnel
    recs = wait_count(fwd, 2)
    ok = [r for r in recs if r["endpoint"] == "db"][-1]
    assert ok["kind"] == "tcp" and ok["route"] == "server" and ok["status"] == 101, ok
    assert ok["bytes_in"] == 3000 and ok["bytes_out"] == 3000, ok
    bad = [r for r in recs if r["endpoint"] == "nobody"][-1]
    assert bad["status"] == 502 and "no available upstreams" in bad["error"], bad
    assert bad["level"] == "warn", bad
