"""JSON errors of the proxy port (PROTOCOL.md section 4)."""

import time

import pytest

from helpers import SLOW, RawConn, assert_json_error, curl, raw_exchange
from services import closed_port

PROTOCOLS = ["http1", "h2c"]


def get(port, proto, headers, path="/echo", **kw):
    return curl(port, path, headers=headers, http2=(proto == "h2c"), **kw)


@pytest.mark.parametrize("proto", PROTOCOLS)
@pytest.mark.parametrize("headers", [
    {},                                     # Host: 127.0.0.1:PORT (an IP)
    {"Host": "localhost"},                  # no dot
    {"Host": "localhost:8000"},
    {"Host": "10.1.2.3"},                   # IPv4 literal with dots
    {"Host": "[::1]:8000"},                 # IPv6 literal
], ids=["ip-host", "no-dot", "no-dot-port", "ipv4", "ipv6"])
def test_missing_endpoint_id(shared_stack, proto, headers):
    srv, _, svc = shared_stack
    r = get(srv.proxy_port, proto, headers)
    assert_json_error(r, 400, "missing endpoint id")
    assert svc.requests == 0


@pytest.mark.parametrize("proto", PROTOCOLS)
@pytest.mark.parametrize("headers", [
    {"x-piko-endpoint": "bad!id"},
    {"x-piko-endpoint": "bad id"},
    {"x-piko-endpoint": "a" * 129},
    {"x-endpoint-id": "bad/id"},
    {"x-piko-endpoint": "bad:id", "x-endpoint-id": "my-service"},  # the first wins
], ids=["bang", "space", "129-chars", "slash-in-x-endpoint-id", "piko-header-wins"])
def test_invalid_endpoint_id(shared_stack, proto, headers):
    srv, _, svc = shared_stack
    r = get(srv.proxy_port, proto, headers)
    assert_json_error(r, 400, "invalid endpoint id")
    assert svc.requests == 0


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_no_available_upstreams(shared_stack, proto):
    srv, _, _ = shared_stack
    r = get(srv.proxy_port, proto, {"x-piko-endpoint": "nobody-serves-this"})
    assert_json_error(r, 502, "no available upstreams")
    # 128 characters of the allowed alphabet is a valid id: routed, nobody serves it.
    r = get(srv.proxy_port, proto, {"x-piko-endpoint": "A-z0.9_" * 18 + "ab"})
    assert_json_error(r, 502, "no available upstreams")


def _dead(piko):
    srv = piko.server(name="server-dead")
    sc = piko.sidecar({"dead": "127.0.0.1:%d" % closed_port()}, server=srv,
                      name="sidecar-dead")
    return srv, sc


@pytest.fixture
def dead_upstream(shared):
    """Endpoint "dead" served by a sidecar whose local service port is closed."""
    return shared("dead", _dead)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_upstream_unreachable(dead_upstream, proto):
    srv, _ = dead_upstream
    r = get(srv.proxy_port, proto, {"x-piko-endpoint": "dead"})
    assert_json_error(r, 502, "upstream unreachable")
    # With a request body (cannot be retried elsewhere).
    r = get(srv.proxy_port, proto, {"x-piko-endpoint": "dead"}, method="POST",
            data=b"x" * 5000)
    assert_json_error(r, 502, "upstream unreachable")


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_upstream_closes_without_response(shared_stack, proto):
    srv, _, svc = shared_stack
    r = get(srv.proxy_port, proto, {"x-piko-endpoint": "my-service"}, path="/drop")
    assert_json_error(r, 502, "upstream unreachable")
    # The tunnel survives: the next request is served.
    r = get(srv.proxy_port, proto, {"x-piko-endpoint": "my-service"})
    assert r.status == 200, r


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_upstream_timeout(piko, proto):
    svc = piko.service()
    srv = piko.server({"proxy.timeout": "1s"})
    piko.sidecar({"my-service": svc.addr}, server=srv)
    t0 = time.monotonic()
    r = get(srv.proxy_port, proto, {"x-piko-endpoint": "my-service"}, path="/hang")
    elapsed = time.monotonic() - t0
    assert_json_error(r, 504, "upstream timeout")
    assert 0.9 <= elapsed < 8 * SLOW, "504 after %.2fs with proxy.timeout=1s" % elapsed
    # Other requests still work after a timeout.
    svc.hang_release.set()
    r = get(srv.proxy_port, proto, {"x-piko-endpoint": "my-service"})
    assert r.status == 200, r


def test_error_on_keepalive_connection_keeps_it_usable(shared_stack):
    """A JSON error is a normal response: the keep-alive connection goes on."""
    srv, _, _ = shared_stack
    with RawConn(srv.proxy_port) as c:
        c.send(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        r = c.read_response()
        assert_json_error(r, 400, "missing endpoint id")
        c.send(b"GET /echo HTTP/1.1\r\nHost: nobody.example.com\r\n\r\n")
        assert_json_error(c.read_response(), 502, "no available upstreams")
        c.send(b"GET /echo HTTP/1.1\r\nHost: my-service.example.com\r\n\r\n")
        assert c.read_response().status == 200


def test_error_body_length_matches(shared_stack):
    srv, _, _ = shared_stack
    r = raw_exchange(srv.proxy_port, b"GET / HTTP/1.1\r\nHost: nobody.example.com\r\n\r\n")
    assert_json_error(r, 502, "no available upstreams")
    assert r.header("content-length") == str(len(r.body)) or \
        "chunked" in (r.header("transfer-encoding") or "")
