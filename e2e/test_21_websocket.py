"""WebSocket through an HTTP endpoint (issue 3, PROTOCOL.md 1.2 "HTTP Upgrade"): the
service computes Sec-WebSocket-Accept, the proxy answers 101 with the service's fields,
then frames pass untouched in both directions; idle upgraded connections outlive
proxy.timeout. The echo app and the client (RFC 6455 framing) are in tcp_services."""

import os
import random
import struct
import time

import pytest

from helpers import SLOW, assert_json_error, h1
from tcp_services import H2Client, WsClient, WsService, ws_accept, ws_frame

EP = {"x-piko-endpoint": "ws"}


def ws_service(piko):
    svc = WsService("ws")
    piko.services.append(svc)
    return svc


@pytest.fixture
def ws_stack(piko):
    svc = ws_service(piko)
    srv = piko.server({"proxy.timeout": "1s"})
    sc = piko.sidecar({"ws": svc.addr}, server=srv)
    return srv, sc, svc


def assert_handshake(ws):
    r = ws.response
    assert r.status == 101, r
    assert (r.header("upgrade") or "").lower() == "websocket", r
    assert "upgrade" in (r.header("connection") or "").lower(), r
    assert r.header("sec-websocket-accept") == ws_accept(ws.key), (
        "Sec-WebSocket-Accept %r does not match the key %r" % (
            r.header("sec-websocket-accept"), ws.key))
    assert r.header("x-ws-service") == "ws", "the service's 101 fields must be relayed: %r" % r


@pytest.mark.parametrize("routing", ["x-piko-endpoint", "host"])
def test_handshake(ws_stack, routing):
    srv, _, svc = ws_stack
    headers = dict(EP) if routing == "x-piko-endpoint" else {"Host": "ws.example.com"}
    with WsClient(srv.proxy_port, "/ws?room=1", headers=headers) as ws:
        assert_handshake(ws)
        ws.send("hello")
        assert ws.recv() == (0x1, b"hello")
    up = svc.upgrades[-1]
    assert up["line"] == "GET /ws?room=1 HTTP/1.1", up
    h = dict(up["headers"])
    assert h.get("sec-websocket-key") == ws.key, up
    assert h.get("sec-websocket-version") == "13", up
    assert h.get("upgrade", "").lower() == "websocket", up
    assert "upgrade" in h.get("connection", "").lower(), up
    assert h.get("x-forwarded-for", "").endswith("127.0.0.1"), up
    assert not [k for k in h if k.startswith("piko-")], "piko-* fields reached the service"
    if routing == "host":
        assert h.get("host") == "ws.example.com", up


@pytest.mark.deadline(120)
def test_10000_messages_round_trip(ws_stack):
    srv, _, svc = ws_stack
    rng = random.Random(5)
    with WsClient(srv.proxy_port, headers=EP) as ws:
        assert_handshake(ws)
        t0 = time.monotonic()
        window = []
        sent = 0
        received = 0
        total = 10000
        # A few messages in flight at a time; order and content are checked one by one.
        while received < total:
            while sent < total and len(window) < 16:
                size = rng.choice((0, 1, 7, 125, 126, 200, 1000, 4096, 65535, 65536, 70000)) \
                    if sent % 50 == 0 else rng.randrange(0, 300)
                if sent % 3 == 0:
                    msg = ("m%d-" % sent + "x" * size)
                    ws.send(msg)
                    window.append((0x1, msg.encode()))
                else:
                    msg = rng.randbytes(size)
                    ws.send(msg)
                    window.append((0x2, msg))
                sent += 1
            got = ws.recv()
            want = window.pop(0)
            assert got == want, "message %d differs: got (%d, %d bytes), want (%d, %d bytes)" % (
                received, got[0], len(got[1]), want[0], len(want[1]))
            received += 1
        elapsed = time.monotonic() - t0
        ws.send(struct.pack("!H", 1000) + b"bye", opcode=0x8)
        assert ws.recv() == (0x8, struct.pack("!H", 1000))
        assert ws.sock.recv(1) == b"", "after the close handshake the connection ends"
    assert svc.messages == total
    print("10000 WebSocket messages in %.1fs" % elapsed)


def test_large_messages(ws_stack):
    srv, _, _ = ws_stack
    with WsClient(srv.proxy_port, headers=EP) as ws:
        assert_handshake(ws)
        for size in (1 << 20, 8 << 20):
            m = os.urandom(size)
            ws.send(m)
            assert ws.recv() == (0x2, m)


def test_ping_pong_and_close(ws_stack):
    srv, _, _ = ws_stack
    with WsClient(srv.proxy_port, headers=EP) as ws:
        ws.send(b"are you there", opcode=0x9)
        assert ws.recv() == (0xA, b"are you there")
        ws.send(struct.pack("!H", 1001), opcode=0x8)
        assert ws.recv() == (0x8, struct.pack("!H", 1001))
        ws.sock.settimeout(5 * SLOW)
        assert ws.sock.recv(1) == b""


@pytest.mark.deadline(60)
def test_idle_longer_than_proxy_timeout(ws_stack):
    srv, _, _ = ws_stack   # proxy.timeout 1s
    with WsClient(srv.proxy_port, headers=EP) as ws:
        assert_handshake(ws)
        ws.send("before")
        assert ws.recv() == (0x1, b"before")
        time.sleep(2.5)
        ws.send("after 2.5s idle")
        assert ws.recv() == (0x1, b"after 2.5s idle")
        time.sleep(2.5)
        ws.send(b"\x00" * 100000)
        assert ws.recv() == (0x2, b"\x00" * 100000)


def test_service_refuses_upgrade_status_relayed(ws_stack):
    """A non-101 answer to the upgrade is relayed with its fields and body."""
    srv, _, _ = ws_stack
    with WsClient(srv.proxy_port, headers=EP, version="12") as ws:
        r = ws.response
        assert r.status == 400, r
        assert r.header("sec-websocket-version") == "13", r
        assert r.body == b"unsupported websocket version\n", r


def test_upgrade_no_available_upstreams(ws_stack):
    srv, _, _ = ws_stack
    with WsClient(srv.proxy_port, headers={"x-piko-endpoint": "nobody"}) as ws:
        assert_json_error(ws.response, 502, "no available upstreams")


def test_two_connections_and_plain_requests_interleaved(ws_stack):
    """Upgraded connections do not disturb plain requests to the same endpoint."""
    srv, _, _ = ws_stack
    with WsClient(srv.proxy_port, headers=EP) as a, WsClient(srv.proxy_port, headers=EP) as b:
        a.send("to a")
        b.send("to b")
        r = h1(srv.proxy_port, "GET", "/plain", EP)
        assert r.status == 200 and r.body == b"ok\n", r
        assert b.recv() == (0x1, b"to b")
        assert a.recv() == (0x1, b"to a")


def test_client_frames_untouched_bytewise(ws_stack):
    """Frames pass as bytes: a frame split across many small writes arrives whole."""
    srv, _, _ = ws_stack
    with WsClient(srv.proxy_port, headers=EP) as ws:
        frame = ws_frame(0x2, b"0123456789" * 100, mask=True)
        for i in range(0, len(frame), 7):
            ws.sock.sendall(frame[i:i + 7])
            time.sleep(0.001)
        assert ws.recv() == (0x2, b"0123456789" * 100)


def test_h2c_websocket_rfc8441(ws_stack):
    """An HTTP/2 client (RFC 8441) sends no key: the sidecar makes one and checks the
    accept; the proxy answers 200; frames flow on DATA."""
    srv, _, svc = ws_stack
    with H2Client(srv.proxy_port) as h:
        assert h.settings_enable_connect(), h.peer_settings
        st = h.connect("/ws-h2", protocol="websocket", authority="ws.example.com",
                       extra=[("sec-websocket-version", "13")])
        assert h.wait_status(st) == 200, (st.status, st.reset, bytes(st.data[:200]))
        h.send_data(st, ws_frame(0x1, b"over h2", mask=True))
        h.wait(lambda: len(st.data) >= 9 or st.ended or st.reset is not None)
        assert bytes(st.data[:9]) == b"\x81\x07over h2", bytes(st.data)
    up = svc.upgrades[-1]
    assert up["line"].startswith("GET /ws-h2 "), up
    assert dict(up["headers"]).get("sec-websocket-key"), "the sidecar must add a key"
