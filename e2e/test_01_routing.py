"""Routing on the proxy port and what the service sees (PROTOCOL.md 1.4 and 4)."""

import json

import pytest

from helpers import RawConn, curl, nghttp, raw_exchange

PROTOCOLS = ["http1", "h2c"]


def get(port, proto, headers, path="/echo", **kw):
    return curl(port, path, headers=headers, http2=(proto == "h2c"), **kw)


def seen_headers(resp):
    """Headers as the service saw them: {name: [values]}."""
    out = {}
    for k, v in resp.json()["headers"]:
        out.setdefault(k, []).append(v)
    return out


def _three(piko):
    svcs = {n: piko.service(n) for n in ("ep-a", "ep-b", "ep-c")}
    srv = piko.server(name="server-3")
    piko.sidecar({n: s.addr for n, s in svcs.items()}, server=srv, name="sidecar-3")
    return srv, svcs


@pytest.fixture
def three(shared):
    """Endpoints ep-a, ep-b, ep-c served by one sidecar, each by its own service."""
    return shared("three", _three)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_route_by_x_piko_endpoint(shared_stack, proto):
    srv, _, svc = shared_stack
    r = get(srv.proxy_port, proto, {"x-piko-endpoint": "my-service"}, path="/echo?q=1")
    assert r.status == 200, r
    body = r.json()
    assert body["service"] == "svc"
    assert body["method"] == "GET"
    assert body["path"] == "/echo?q=1"
    assert svc.requests == 1


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_route_by_host_first_label(shared_stack, proto):
    srv, _, _ = shared_stack
    r = get(srv.proxy_port, proto, {"Host": "my-service.example.com"})
    assert r.status == 200, r
    assert seen_headers(r)["host"] == ["my-service.example.com"]


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_route_by_x_endpoint_id(shared_stack, proto):
    srv, _, _ = shared_stack
    r = get(srv.proxy_port, proto, {"x-endpoint-id": "my-service"})
    assert r.status == 200, r
    assert r.json()["service"] == "svc"


@pytest.mark.parametrize("proto", PROTOCOLS)
@pytest.mark.parametrize("headers,expected", [
    ({"x-piko-endpoint": "ep-a", "x-endpoint-id": "ep-b", "Host": "ep-c.example.com"}, "ep-a"),
    ({"x-piko-endpoint": "ep-a", "Host": "ep-c.example.com"}, "ep-a"),
    ({"x-piko-endpoint": "ep-b", "x-endpoint-id": "ep-a"}, "ep-b"),
    ({"x-endpoint-id": "ep-b", "Host": "ep-c.example.com"}, "ep-b"),
    ({"Host": "ep-c.example.com"}, "ep-c"),
    ({"Host": "ep-a.example.com:8000"}, "ep-a"),
    ({"Host": "ep-b.svc.cluster.local"}, "ep-b"),
], ids=["piko>id>host", "piko>host", "piko>id", "id>host", "host", "host-with-port",
        "host-many-labels"])
def test_precedence(three, proto, headers, expected):
    srv, svcs = three
    r = get(srv.proxy_port, proto, headers)
    assert r.status == 200, r
    assert r.json()["service"] == expected
    assert r.header("x-service-name") == expected
    for name, svc in svcs.items():
        assert svc.requests == (1 if name == expected else 0), name


def test_absolute_form_target_routes_by_its_host(three):
    srv, svcs = three
    r = raw_exchange(srv.proxy_port,
                     b"GET http://ep-c.example.com/echo?abs=1 HTTP/1.1\r\n"
                     b"Host: ep-c.example.com\r\n\r\n")
    assert r.status == 200, r
    assert r.json()["service"] == "ep-c"
    assert r.json()["path"] == "/echo?abs=1", "origin-form must reach the service"


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_forwarded_headers(shared_stack, proto):
    srv, _, _ = shared_stack
    r = get(srv.proxy_port, proto, {
        "Host": "my-service.example.com",
        "X-Forwarded-For": "10.9.8.7",
        "X-Forwarded-Proto": "https",       # replaced: the client spoke http
        "X-Forwarded-Host": "spoofed.example.org",
        "Authorization": "Bearer app-token",
        "Cookie": "a=1; b=2",
        "X-Custom": "kept",
        "x-piko-authorization": "Bearer piko-token",
        "piko-client-addr": "6.6.6.6:1",
        "piko-forwarded-by": "evil-node",
        "piko-endpoint": "other",
    }, method="POST", data=b"hello")
    assert r.status == 200, r
    h = seen_headers(r)
    assert h["host"] == ["my-service.example.com"]
    assert h["x-forwarded-for"] == ["10.9.8.7, 127.0.0.1"]
    assert h["x-forwarded-proto"] == ["http"]
    assert h["x-forwarded-host"] == ["my-service.example.com"]
    assert h["authorization"] == ["Bearer app-token"]
    assert h["cookie"] == ["a=1; b=2"]
    assert h["x-custom"] == ["kept"]
    leaked = sorted(k for k in h if k == "x-piko-authorization" or k.startswith("piko-"))
    assert not leaked, "must never reach the service: %r" % leaked
    body = r.json()
    assert body["method"] == "POST"
    assert body["body_length"] == 5


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_x_forwarded_for_added_and_routing_headers_kept(shared_stack, proto):
    srv, _, _ = shared_stack
    r = get(srv.proxy_port, proto, {"x-piko-endpoint": "my-service",
                                    "x-endpoint-id": "my-service"})
    assert r.status == 200, r
    h = seen_headers(r)
    assert h["x-forwarded-for"] == ["127.0.0.1"]
    assert h["x-forwarded-proto"] == ["http"]
    # PROTOCOL.md 1.4: x-piko-endpoint and x-endpoint-id are kept.
    assert h.get("x-piko-endpoint") == ["my-service"]
    assert h.get("x-endpoint-id") == ["my-service"]


def _raw_echo(port, head_lines, body=b""):
    req = "\r\n".join(head_lines).encode() + b"\r\n\r\n" + body
    return raw_exchange(port, req)


def test_hop_by_hop_headers_removed(shared_stack):
    srv, _, _ = shared_stack
    r = _raw_echo(srv.proxy_port, [
        "POST /echo HTTP/1.1",
        "Host: my-service.example.com",
        "Connection: keep-alive, X-Hop-Custom",
        "X-Hop-Custom: secret",
        "Keep-Alive: timeout=5",
        "Proxy-Connection: keep-alive",
        "TE: gzip",
        "X-Keep-Me: yes",
        "Content-Length: 5",
    ], b"hello")
    assert r.status == 200, r
    h = seen_headers(r)
    for name in ("x-hop-custom", "keep-alive", "proxy-connection", "te", "upgrade",
                 "transfer-encoding", "expect"):
        assert name not in h, "hop-by-hop %r reached the service: %r" % (name, h)
    for v in h.get("connection", []):
        assert "x-hop-custom" not in v.lower(), h["connection"]
    assert h["x-keep-me"] == ["yes"]
    assert r.json()["body_length"] == 5


def test_te_trailers_is_kept(shared_stack):
    srv, _, _ = shared_stack
    r = _raw_echo(srv.proxy_port, [
        "GET /echo HTTP/1.1",
        "Host: my-service.example.com",
        "TE: trailers",
    ])
    assert r.status == 200, r
    h = seen_headers(r)
    assert [v.lower() for v in h.get("te", [])] == ["trailers"], h


def test_upgrade_on_post_is_forwarded_as_plain_exchange(shared_stack):
    """RFC 9110 7.8: a request with a body and Upgrade is served as a plain exchange;
    Upgrade is hop-by-hop and never reaches the service."""
    srv, _, _ = shared_stack
    r = _raw_echo(srv.proxy_port, [
        "POST /echo HTTP/1.1",
        "Host: my-service.example.com",
        "Connection: Upgrade",
        "Upgrade: foo/1",
        "Content-Length: 3",
    ], b"abc")
    assert r.status == 200, r
    h = seen_headers(r)
    assert "upgrade" not in h, h
    assert r.json()["body_length"] == 3


def test_http10_without_host_uses_endpoint_as_authority(shared_stack):
    srv, _, _ = shared_stack
    with RawConn(srv.proxy_port) as c:
        c.send(b"GET /echo HTTP/1.0\r\nx-piko-endpoint: my-service\r\n\r\n")
        r = c.read_response()
        assert r.status == 200, r
        assert seen_headers(r)["host"] == ["my-service"]
        assert c.closed_by_peer(), "HTTP/1.0 without keep-alive: the proxy closes"


def test_split_cookie_fields_joined_for_http1(shared_stack):
    """An h2 client may split cookies into several fields; HTTP/1.1 needs one."""
    srv, _, _ = shared_stack
    rc, out, err = nghttp(srv.proxy_port, ["/echo"], headers={
        "x-piko-endpoint": "my-service", "cookie": "a=1"}, extra=["-H", "cookie: b=2"])
    assert rc == 0, err
    body = json.loads(out)
    cookies = [v for k, v in body["headers"] if k == "cookie"]
    assert len(cookies) == 1, cookies
    assert sorted(c.strip() for c in cookies[0].split(";")) == ["a=1", "b=2"]
