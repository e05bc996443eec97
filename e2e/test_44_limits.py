"""Limits at the proxy and upstream ports (issue "Security", hardening): slowloris
connections are closed at the head timeout without starving normal requests; request
bodies over proxy.max-body-bytes get 413; connections above a listener's limit are closed
at once while the ones inside it are served."""

import selectors
import socket
import subprocess
import threading
import time

import pytest

from helpers import SLOW, RawConn, h1

EP = {"x-piko-endpoint": "my-service"}


def test_slowloris_does_not_starve_and_is_closed_at_head_timeout(piko):
    svc = piko.service()
    srv = piko.server({"proxy.head-timeout": "3s"})
    piko.sidecar({"my-service": svc.addr}, server=srv)
    n = 1000
    sel = selectors.DefaultSelector()
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", srv.proxy_port), timeout=5)
        s.setblocking(False)
        socks.append(s)
        sel.register(s, selectors.EVENT_READ, i)
    head = b"GET / HTTP/1.1\r\nHost: my-service.example\r\nX-Slow: " + b"a" * 64
    pos = [0] * n
    closed = [None] * n  # time each one was closed by the server
    got_408 = 0
    stop = threading.Event()
    probe = {"ok": 0, "failed": []}

    def prober():
        while not stop.is_set():
            try:
                r = h1(srv.proxy_port, "GET", "/echo?probe=1", EP)
                if r.status == 200:
                    probe["ok"] += 1
                else:
                    probe["failed"].append(r.status)
            except Exception as e:  # noqa: BLE001
                probe["failed"].append(repr(e))
            time.sleep(0.05)

    t = threading.Thread(target=prober, daemon=True)
    t.start()
    start = time.monotonic()
    deadline = start + 12 * SLOW
    next_send = start
    try:
        while time.monotonic() < deadline and any(c is None for c in closed):
            now = time.monotonic()
            if now >= next_send:  # one more header byte per connection per second
                for i, s in enumerate(socks):
                    if closed[i] is None and pos[i] < len(head):
                        try:
                            s.send(head[pos[i]:pos[i] + 1])
                            pos[i] += 1
                        except OSError:
                            closed[i] = now
                next_send = now + 1.0
            for key, _ in sel.select(timeout=0.1):
                i = key.data
                try:
                    d = socks[i].recv(4096)
                except OSError:
                    d = b""
                if d.startswith(b"HTTP/1.1 408"):
                    got_408 += 1
                if not d or closed[i] is None and not d:
                    pass
                if not d:
                    closed[i] = time.monotonic()
                    sel.unregister(socks[i])
    finally:
        stop.set()
        t.join(10)
        for s in socks:
            s.close()
    still_open = sum(1 for c in closed if c is None)
    assert still_open == 0, "%d slow connections still open after %.0fs" % (
        still_open, time.monotonic() - start)
    first = min(closed) - start
    assert first >= 2.5, "closed before the head timeout (%.2fs)" % first
    assert got_408 > n * 0.9, "only %d of %d got a 408" % (got_408, n)
    assert not probe["failed"], "normal requests failed: %r" % probe["failed"][:5]
    assert probe["ok"] >= 20, probe
    assert srv.running()


def test_body_limit(piko, tmp_path):
    svc = piko.service()
    srv = piko.server({"proxy.max-body-bytes": "1KiB"})
    piko.sidecar({"my-service": svc.addr}, server=srv)
    r = h1(srv.proxy_port, "POST", "/echo", EP, body=b"x" * 1024)
    assert r.status == 200, r
    r = h1(srv.proxy_port, "POST", "/echo", EP, body=b"x" * 1025)
    assert r.status == 413, r
    assert r.json() == {"error": "request body too large"}
    # chunked: the limit applies to the bytes as they arrive
    with RawConn(srv.proxy_port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nx-piko-endpoint: my-service\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + b"400\r\n" + b"y" * 1024 + b"\r\n" +
               b"10\r\n" + b"z" * 16 + b"\r\n0\r\n\r\n")
        try:
            r = c.read_response()
            assert r.status == 413, r
        except (ConnectionResetError, EOFError, OSError):
            pass  # the service answered first: then the connection is cut instead
        assert c.closed_by_peer()
    assert h1(srv.proxy_port, "GET", "/echo?after=1", EP).status == 200
    # h2c: the content-length is checked before routing. nghttp, not curl: curl 7.88 takes
    # the END_STREAM + RST_STREAM(NO_ERROR) that ends an upload early for an error.
    body = tmp_path / "body"
    body.write_bytes(b"x" * 2000)
    out = subprocess.run(["nghttp", "-v", "-H", "x-piko-endpoint: my-service", "-d", str(body),
                          "http://127.0.0.1:%d/echo" % srv.proxy_port],
                         capture_output=True, text=True, timeout=10 * SLOW)
    assert ":status: 413" in out.stdout, out.stdout[-2000:]
    assert "request body too large" in out.stdout


def test_proxy_connection_limit(piko):
    svc = piko.service()
    srv = piko.server({"proxy.max-connections": "20"})
    piko.sidecar({"my-service": svc.addr}, server=srv)
    time.sleep(0.5 * SLOW)  # the routability probe's connection is gone
    held = [RawConn(srv.proxy_port) for _ in range(20)]
    try:
        for i, c in enumerate(held):  # each one is open and served (keep-alive)
            c.send(b"GET /echo?held=%d HTTP/1.1\r\nHost: x\r\nx-piko-endpoint: my-service"
                   b"\r\n\r\n" % i)
            assert c.read_response().status == 200
        extra = RawConn(srv.proxy_port)
        try:
            assert extra.closed_by_peer(timeout=3), "connection 21 was not closed"
        finally:
            extra.close()
        # one held connection still works
        held[0].send(b"GET /echo?held=1 HTTP/1.1\r\nHost: x\r\nx-piko-endpoint: my-service\r\n\r\n")
        assert held[0].read_response().status == 200
    finally:
        for c in held:
            c.close()
    time.sleep(0.3)
    assert h1(srv.proxy_port, "GET", "/echo?after=1", EP).status == 200
    srv.wait_log(lambda t: "proxy connection limit (20) reached" in t, message="the limit logged")


def test_upstream_connection_limit(piko):
    svc = piko.service()
    srv = piko.server({"upstream.max-connections": "1"})
    piko.sidecar({"my-service": svc.addr}, server=srv)
    sc2 = piko.sidecar({"other": svc.addr}, server=srv, wait=False, name="sidecar2")
    srv.wait_log(lambda t: "upstream connection limit (1) reached" in t,
                 timeout=10 * SLOW, message="the limit logged")
    assert h1(srv.proxy_port, "GET", "/echo", EP).status == 200
    r = h1(srv.proxy_port, "GET", "/echo", {"x-piko-endpoint": "other"})
    assert r.status == 502, r
