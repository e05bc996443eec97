"""Limits of the admin port (lib/admin) on both binaries: a request body is refused with
413 before it is read (a 200 MiB POST /health used to take the server from 11 to 214 MiB
RSS under evhttp); admin.max-connections closes connections above it at once; idle admin
connections cannot use up the descriptors the proxy port needs."""

import http.client
import json
import resource
import socket
import ssl
import threading
import time

import pytest

from helpers import SANITIZED, SLOW, RawConn, assert_json_error, h1, poll
from test_40_tls import Certs, tls_flags

MiB = 1 << 20


def _vm_rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise KeyError("VmRSS")


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_admin_large_body_refused_without_reading_it(piko, method):
    srv = piko.server()
    before = _vm_rss_kib(srv.pid)
    total = 200 * MiB
    conn = RawConn(srv.admin_port, timeout=30)
    conn.send(b"%s /health HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % (method.encode(), total))
    sent = {"bytes": 0}

    def body():
        chunk = b"x" * MiB
        for _ in range(total // MiB):
            yield chunk

    def sender():
        try:
            for chunk in body():
                conn.sock.sendall(chunk)
                sent["bytes"] += len(chunk)
        except OSError:
            pass  # the server closed: the rest of the body is not wanted

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    try:
        resp = conn.read_response()
        assert_json_error(resp, 413, "request body not accepted")
        assert resp.header("connection") == "close"
        t.join(60 * SLOW)
        assert not t.is_alive(), "the body sender is stuck"
        after = _vm_rss_kib(srv.pid)
    finally:
        conn.close()
    # ASan's quarantine keeps the freed read buffers of the discarded body: no RSS check.
    assert SANITIZED or after - before < 2 * 1024, "VmRSS grew from %d to %d KiB (%d MiB sent)" % (
        before, after, sent["bytes"] // MiB)
    # The port still serves, and the refusal was logged with its peer.
    assert srv.admin("/health")[0] == 200
    srv.wait_log(lambda t: "status=413" in t, message="the 413 logged")


def _check_admin_cap(proc, cap):
    """cap connections are served (keep-alive); one more is closed at once; after they
    close the port serves again."""
    time.sleep(0.3 * SLOW)  # the readiness probes' connections are gone
    held = [RawConn(proc.admin_port) for _ in range(cap)]
    try:
        for c in held:
            c.send(b"GET /health HTTP/1.1\r\nHost: admin\r\n\r\n")
            r = c.read_response()
            assert r.status == 200 and json.loads(r.body) == {"status": "ok"}, r
        extra = RawConn(proc.admin_port)
        try:
            assert extra.closed_by_peer(timeout=3), "connection %d was not closed" % (cap + 1)
        finally:
            extra.close()
        held[0].send(b"GET /ready HTTP/1.1\r\nHost: admin\r\n\r\n")
        assert held[0].read_response().status in (200, 503)
    finally:
        for c in held:
            c.close()
    poll(lambda: proc.ready_status() is not None, 5 * SLOW, message="admin port serves again")
    proc.wait_log(lambda t: "connection limit (%d) reached" % cap in t,
                  message="the limit logged")


def test_admin_connection_cap_server(piko):
    srv = piko.server({"admin.max-connections": "4"})
    _check_admin_cap(srv, 4)


def test_admin_connection_cap_sidecar(piko):
    svc = piko.service()
    srv = piko.server()
    sc = piko.sidecar({"my-service": svc.addr}, server=srv,
                      flags={"admin.max-connections": "3"})
    _check_admin_cap(sc, 3)


def test_idle_admin_connections_do_not_starve_the_proxy(piko):
    n = 1100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < n + 200:
        pytest.skip("this process may open only %d descriptors" % hard)
    if soft != resource.RLIM_INFINITY and soft < n + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    srv = piko.server(prefix=["prlimit", "--nofile=1024:1024"])
    socks = []
    try:
        for _ in range(n):
            try:
                socks.append(socket.create_connection(("127.0.0.1", srv.admin_port),
                                                      timeout=2 * SLOW))
            except OSError:
                pass  # a full backlog: what matters is the proxy port below
        time.sleep(0.5 * SLOW)
        # No sidecar: the proxy answers 502 JSON, which needs a descriptor for the
        # connection and none of the idle admin ones' to be left over.
        resp = h1(srv.proxy_port, "GET", "/", {"x-piko-endpoint": "nothing-here"}, timeout=5)
        assert_json_error(resp, 502, "no available upstreams")
        srv.wait_log(lambda t: "connection limit (128) reached" in t,
                     message="the admin limit logged")
    finally:
        for s in socks:
            s.close()
    poll(lambda: srv.ready_status() == 200, 10 * SLOW, message="/ready after the idle ones")
    assert srv.admin("/health")[0] == 200
    assert srv.running()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certs(tmp_path_factory.mktemp("certs"))


def _tls_health(port, ctx):
    c = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=5 * SLOW)
    try:
        c.request("GET", "/health")
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def test_admin_tls_handshakes_count_against_the_cap(piko, certs):
    flags = tls_flags("admin", certs)
    flags["admin.max-connections"] = "2"
    srv = piko.server(flags, wait=False)
    ctx = certs.client_ctx()

    def healthy():
        try:
            return _tls_health(srv.admin_port, ctx)[0] == 200
        except (OSError, ssl.SSLError, http.client.HTTPException):
            return False
    poll(healthy, 10 * SLOW, message="admin /health over TLS")
    time.sleep(0.3 * SLOW)
    # Two connections that never start their handshake fill the cap.
    silent = [RawConn(srv.admin_port) for _ in range(2)]
    try:
        time.sleep(0.3 * SLOW)
        extra = RawConn(srv.admin_port)
        try:
            assert extra.closed_by_peer(timeout=3), "a third connection was not closed"
        finally:
            extra.close()
    finally:
        for c in silent:
            c.close()
    poll(healthy, 5 * SLOW, message="admin /health over TLS after the silent ones")
    srv.wait_log(lambda t: "connection limit (2) reached" in t, message="the limit logged")
