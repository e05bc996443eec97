"""Tunnels come back after a server restart; a gone sidecar is noticed at once."""

import http.client
import signal
import time

import pytest

from helpers import SLOW, assert_json_error, h1

EP = {"x-piko-endpoint": "my-service"}


def try_get(port, path="/echo", timeout=2.0):
    """Response or None when the connection fails."""
    try:
        return h1(port, "GET", path, EP, timeout=timeout)
    except (OSError, http.client.HTTPException):
        return None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_server_restart_same_ports_sidecar_reconnects(piko, sig):
    svc = piko.service()
    srv = piko.server()
    sc = piko.sidecar({"my-service": svc.addr}, server=srv)
    assert try_get(srv.proxy_port).status == 200

    rc = srv.stop(sig)
    assert rc == (0 if sig == signal.SIGTERM else -signal.SIGKILL), rc
    srv2 = piko.server(ports=srv.ports, name="server-restarted")
    t_ready = time.monotonic()

    # The sidecar reconnects by itself (backoff from 100 ms): served within 3 s.
    limit = 3.0 * SLOW
    last = None
    while True:
        last = try_get(srv2.proxy_port)
        if last is not None and last.status == 200:
            break
        assert time.monotonic() - t_ready < limit, (
            "no successful request %.1fs after the server came back; last: %r" % (
                limit, last))
        time.sleep(0.05)
    assert last.json()["service"] == "svc"
    assert sc.running(), "the sidecar must survive the server restart"
    assert sc.ready_status() == 200


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_stopped_sidecar_gives_no_available_upstreams(stack, sig):
    srv, sc, _ = stack
    assert try_get(srv.proxy_port).status == 200
    rc = sc.stop(sig)
    assert rc == (0 if sig == signal.SIGTERM else -signal.SIGKILL), rc
    t0 = time.monotonic()
    # Right away (about 1 s): the tunnel is gone, nothing else serves the endpoint.
    while True:
        r = try_get(srv.proxy_port, timeout=2.0)
        assert r is not None, "the proxy must answer (it did not)"
        assert r.status == 502, "sidecar is gone, got %r" % r
        if r.json().get("error") == "no available upstreams":
            break
        assert time.monotonic() - t0 < 1.0 * SLOW, (
            "still routed to a dead tunnel after 1s: %r" % r)
        time.sleep(0.02)
    assert_json_error(r, 502, "no available upstreams")
    assert srv.ready_status() == 200, "losing a sidecar does not make the server unready"


def test_sidecar_started_before_server(piko):
    svc = piko.service()
    ports = piko.new_server_ports()
    sc = piko.sidecar({"my-service": svc.addr},
                      connect_url="http://127.0.0.1:%d" % ports["upstream"], wait=False)
    # Not connected: running, not ready.
    time.sleep(0.3)
    assert sc.running()
    assert sc.ready_status() == 503
    srv = piko.server(ports=ports)
    sc.wait_ready(timeout=5.0)
    piko.wait_routable(srv, "my-service", timeout=3.0)
    assert try_get(srv.proxy_port).status == 200


def test_second_sidecar_keeps_endpoint_up(piko):
    """With two sidecars on one endpoint, stopping one leaves the endpoint served."""
    svc = piko.service()
    srv = piko.server()
    sc1 = piko.sidecar({"my-service": svc.addr}, server=srv, name="sidecar-1")
    piko.sidecar({"my-service": svc.addr}, server=srv, name="sidecar-2")
    assert sc1.stop() == 0
    for _ in range(20):
        r = try_get(srv.proxy_port)
        assert r is not None and r.status == 200, r


def test_sidecar_pointed_at_the_proxy_port_says_so(piko):
    """A sidecar whose connect.url is the proxy port used to log only "status 400: missing
    endpoint id" on every retry; the line now says what is wrong."""
    srv = piko.server()
    sc = piko.sidecar({"my-service": "127.0.0.1:1"},
                      connect_url="http://127.0.0.1:%d" % srv.proxy_port, wait=False)
    sc.wait_log(lambda t: "looks like the server's proxy port" in t, timeout=10 * SLOW,
                message="the proxy-port hint")
    assert "status 400: missing endpoint id" in sc.log_text()


def test_non_piko_answer_is_not_copied_into_the_log(piko):
    """Another server's HTML page used to be flattened into every retry line."""
    import http.server
    import threading

    class Html(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html>" + b"x" * 5000 + b"</html>"
            self.send_response(404)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Html)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        sc = piko.sidecar({"my-service": "127.0.0.1:1"},
                          connect_url="http://127.0.0.1:%d" % httpd.server_address[1],
                          wait=False)
        sc.wait_log(lambda t: "status 404 Not Found (an answer that is not Piko's)" in t,
                    timeout=10 * SLOW, message="the short refusal")
        assert "xxxxxxxxxx" not in sc.log_text()
    finally:
        httpd.shutdown()


def test_first_run_log_lines(piko):
    """Small things a new user tripped over: an HTTP request to a TCP endpoint is refused
    with a reason in the sidecar's log; a service that refuses connections is named once
    per line, not twice; the server says "drained: exiting" once; a server without TLS has
    no empty "tls" object in its status."""
    srv = piko.server()
    sc = piko.sidecar({}, server=srv, wait=False,
                      args=["--tcp-endpoint", "db=127.0.0.1:1", "--endpoint",
                            "web=127.0.0.1:1"])
    srv.wait_log(lambda t: "tunnel up endpoint=db" in t and "tunnel up endpoint=web" in t,
                 timeout=10 * SLOW, message="tunnels up")
    assert h1(srv.proxy_port, "GET", "/", {"x-piko-endpoint": "db"}).status == 502
    sc.wait_log(lambda t: "endpoint=db is a TCP endpoint" in t, timeout=5 * SLOW,
                message="the TCP-endpoint reason")
    assert h1(srv.proxy_port, "GET", "/", {"x-piko-endpoint": "web"}).status == 502
    sc.wait_log(lambda t: "endpoint=web service 127.0.0.1:1:" in t, timeout=5 * SLOW,
                message="the refused service")
    line = [ln for ln in sc.log_text().splitlines() if "endpoint=web service" in ln][0]
    assert line.count("127.0.0.1:1") == 1, line
    st, body = srv.admin("/status/cluster/nodes/local")
    assert st == 200 and '"tls"' not in body.decode(), body
    srv.stop()
    assert srv.log_text().count("drained: exiting") == 1, srv.log_text()[-1500:]
