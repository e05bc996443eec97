"""Sidecar availability: several tunnels per endpoint (--connect.connections), a list of
server URLs dialled in turn (--connect.url A,B), and make-before-break when a server sends
GOAWAY (PROTOCOL.md 1.5): the old tunnel keeps serving until its replacement is up, then
gets the two-step drain.

The GOAWAY-notice cases use a stand-in for the server's upstream port (FakeUpstream): it
answers the handshake itself and plays the server's end of each tunnel (the HTTP/2
client), so the test decides when a replacement may come up."""

import http.client
import re
import signal
import socket
import struct
import subprocess
import threading

import pytest

from conftest import binary, free_port
from helpers import SLOW, h1, poll
from services import closed_port
from tcp_services import (END_HEADERS, END_STREAM, GOAWAY, H2_PREFACE, HEADERS, SETTINGS,
                          WINDOW_UPDATE, H2Client, H2Stream, _Reader, hpack_encode)
from test_10_tls_connect import TlsTerminator, make_ca_and_cert

EP = "ha"
HDR = {"x-piko-endpoint": EP}


def get_ok(port, path="/echo", timeout=10.0):
    r = h1(port, "GET", path, HDR, timeout=timeout)
    assert r.status == 200, r
    return r


def tunnels_up(text, endpoint=EP):
    """Lines of a log text that say a tunnel of endpoint came up (server or sidecar)."""
    return re.findall(r"tunnel up endpoint=%s " % re.escape(endpoint), text)


# ---- several tunnels per endpoint ------------------------------------------------------


def test_connections_3_opens_three_tunnels_that_all_serve(piko):
    svc = piko.service()
    srv = piko.server()
    sc = piko.sidecar({EP: svc.addr}, server=srv, flags={"connect.connections": 3})
    srv.wait_log(lambda t: len(tunnels_up(t)) >= 3, timeout=10,
                 message="3 'tunnel up endpoint=%s' lines" % EP)
    sc.wait_log(lambda t: all("tunnel up endpoint=%s slot=%d " % (EP, i) in t
                              for i in range(3)), message="slots 0, 1 and 2 up")

    conn = http.client.HTTPConnection("127.0.0.1", srv.proxy_port, timeout=10 * SLOW)
    try:
        for i in range(300):
            conn.request("GET", "/echo?i=%d" % i, headers=HDR)
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200, (i, r.status, body[:200])
    finally:
        conn.close()
    assert svc.requests >= 300
    # Three tunnels, not more: no tunnel churned while serving.
    assert len(tunnels_up(srv.log_text())) == 3, tunnels_up(srv.log_text())

    # Each of the three tunnels carried streams (the server spreads sequential requests
    # round robin over an endpoint's tunnels): they are three live tunnels, not one.
    assert sc.stop() == 0
    srv.wait_log(lambda t: t.count("tunnel closed endpoint=%s " % EP) >= 3,
                 message="3 tunnels closed")
    served = [int(n) for n in re.findall(
        r"tunnel closed endpoint=%s .*?streams_served=(\d+)" % EP, srv.log_text())]
    assert len(served) == 3 and sum(served) >= 300 and min(served) > 0, served


# ---- a list of server URLs -------------------------------------------------------------


def test_url_list_skips_a_dead_server(piko):
    svc = piko.service()
    srv = piko.server()
    dead = "http://127.0.0.1:%d" % closed_port()
    sc = piko.sidecar({EP: svc.addr}, server=srv,
                      connect_url="%s,%s" % (dead, srv.connect_url))
    for i in range(20):
        get_ok(srv.proxy_port, "/echo?i=%d" % i)
    text = sc.log_text()
    assert "cannot connect to %s" % dead in text, "the failed URL is named in the log"
    assert "tunnel up endpoint=%s slot=0 server=%s" % (EP, srv.connect_url) in text, text[-2000:]


def test_url_list_round_robin_puts_tunnels_on_both_servers(piko):
    svc = piko.service()
    a = piko.server(name="server-a")
    b = piko.server(name="server-b")
    sc = piko.sidecar({EP: svc.addr}, connect_url="%s,%s" % (a.connect_url, b.connect_url),
                      flags={"connect.connections": 2})
    for s in (a, b):
        s.wait_log(lambda t: len(tunnels_up(t)) >= 1, timeout=10,
                   message="a tunnel of %s" % EP)
        piko.wait_routable(s, EP)
        for i in range(10):
            get_ok(s.proxy_port, "/echo?via=%s&i=%d" % (s.name, i))
    text = sc.log_text()
    assert "server=%s" % a.connect_url in text and "server=%s" % b.connect_url in text


def test_url_list_mixes_plain_and_tls_with_sni_per_url(piko, tmp_path):
    """TLS and SNI are per URL: a plain URL first, then an https:// one whose host name
    the certificate carries (a TLS terminator in front of the same server)."""
    make_ca_and_cert(tmp_path)
    svc = piko.service()
    srv = piko.server()
    term = TlsTerminator(str(tmp_path / "srv.pem"), str(tmp_path / "srv.key"),
                         srv.ports["upstream"])
    try:
        tls_url = "https://localhost:%d" % term.port
        sc = piko.sidecar({EP: svc.addr}, server=srv,
                          connect_url="%s,%s" % (srv.connect_url, tls_url),
                          flags={"connect.connections": 2},
                          env={"SSL_CERT_FILE": str(tmp_path / "ca.pem")})
        srv.wait_log(lambda t: len(tunnels_up(t)) >= 2, timeout=10, message="2 tunnels")
        text = sc.log_text()
        assert "tunnel up endpoint=%s slot=0 server=%s" % (EP, srv.connect_url) in text, text
        assert "tunnel up endpoint=%s slot=1 server=%s" % (EP, tls_url) in text, text
        assert term.sni and set(term.sni) == {"localhost"}, term.sni
        for i in range(20):
            get_ok(srv.proxy_port, "/echo?i=%d" % i)
    finally:
        term.close()


def run_expect_exit_2(argv, timeout=5):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout * SLOW)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2, "expected exit 2, got %s; stderr:\n%s" % (p.returncode, p.stderr)
    assert len(lines) == 1, "expected one line on stderr, got:\n%s" % p.stderr
    return lines[0]


def sidecar_argv(*args):
    return [binary("piko-sidecar"), "--admin.bind-addr", "127.0.0.1:%d" % free_port(),
            "--endpoint", "%s=127.0.0.1:%d" % (EP, free_port())] + list(args)


@pytest.mark.parametrize("bad,named", [
    ("ftp://127.0.0.1:8001", "ftp://127.0.0.1:8001"),
    ("http://bad!host:8001", "http://bad!host:8001"),
    ("http://127.0.0.1:99999", "http://127.0.0.1:99999"),
    ("", "empty item"),
], ids=["scheme", "host", "port", "empty"])
def test_bad_item_in_url_list_exits_2(bad, named):
    url = "http://127.0.0.1:%d,%s" % (free_port(), bad)
    line = run_expect_exit_2(sidecar_argv("--connect.url", url))
    assert "connect.url" in line and named in line, line


@pytest.mark.parametrize("n", ["0", "65", "-1", "two"])
def test_bad_connections_exits_2(n):
    line = run_expect_exit_2(sidecar_argv("--connect.url", "http://127.0.0.1:%d" % free_port(),
                                          "--connect.connections=%s" % n))
    assert "connect.connections" in line, line


# ---- make-before-break with the real server --------------------------------------------


def test_server_drain_moves_tunnel_to_next_url_before_old_one_goes(piko):
    """Server A drains (SIGTERM) while a request hangs on its tunnel: the sidecar dials a
    replacement, which lands on B (A no longer accepts), drains A's tunnel only then,
    and the hanging request still completes through A."""
    svc = piko.service()
    a = piko.server({"grace-period": "30s"}, name="server-a")
    b = piko.server(name="server-b")
    sc = piko.sidecar({EP: svc.addr}, server=a,
                      connect_url="%s,%s" % (a.connect_url, b.connect_url),
                      flags={"connect.timeout": "1s"})
    get_ok(a.proxy_port)
    result = {}

    def hang():
        try:
            result["r"] = h1(a.proxy_port, "GET", "/hang", HDR, timeout=60)
        except Exception as e:  # noqa: BLE001
            result["e"] = e

    th = threading.Thread(target=hang, daemon=True)
    th.start()
    assert svc.wait_in_flight(1, 10 * SLOW)
    a.signal(signal.SIGTERM)
    sc.wait_log(lambda t: "server sent GOAWAY endpoint=%s" % EP in t, timeout=5,
                message="the GOAWAY")
    # Until the replacement is up the old tunnel still counts: the sidecar stays ready.
    sc.wait_log(lambda t: "tunnel up endpoint=%s slot=0 server=%s" % (EP, b.connect_url) in t,
                timeout=15, message="the replacement tunnel on B")
    sc.wait_log(lambda t: "draining the old tunnel endpoint=%s" % EP in t, timeout=5,
                message="the old tunnel drained after the replacement came up")
    assert sc.ready_status() == 200
    piko.wait_routable(b, EP)
    get_ok(b.proxy_port)
    assert th.is_alive(), "the request on the old tunnel must still be running"
    svc.release_all()
    th.join(20 * SLOW)
    assert "r" in result, result
    assert result["r"].status == 200 and result["r"].json()["released"], result["r"]
    assert a.wait(15) == 0
    assert sc.running() and sc.ready_status() == 200
    get_ok(b.proxy_port)


# ---- make-before-break against a stand-in server ---------------------------------------


class Tunnel(H2Client):
    """The server's end of one tunnel: the HTTP/2 client of PROTOCOL.md 1.1. Reads happen
    only while the test waits for something."""

    def __init__(self, sock, reader):
        self.sock = sock
        self.reader = reader
        self.streams = {}
        self.next_sid = 1
        self.peer_settings = {}
        self.peer_initial_window = 65535
        self.conn_send_window = 65535
        self.max_frame = 16384
        self.goaway = None
        self.goaways = []  # (last_stream_id, error_code) of each GOAWAY from the sidecar
        self.eof = False
        big = (1 << 31) - 1
        self.sock.sendall(H2_PREFACE + self._frame(SETTINGS, 0, 0, struct.pack(
            "!HI", 0x4, big)) + self._frame(WINDOW_UPDATE, 0, 0, struct.pack(
                "!I", big - 65535)))
        self.got_settings = False
        while not self.got_settings:
            self._read_frame()

    def _read_frame(self):
        r = super()._read_frame()
        if r[0] == GOAWAY:
            last, code = self.goaway
            self.goaways.append((last & 0x7FFFFFFF, code))
        return r

    def get(self, path):
        sid = self.next_sid
        self.next_sid += 2
        st = H2Stream(sid)
        self.streams[sid] = st
        fields = [(":method", "GET"), (":scheme", "http"), (":authority", EP), (":path", path),
                  ("piko-client-addr", "127.0.0.1:1")]
        self.sock.sendall(self._frame(HEADERS, END_HEADERS | END_STREAM, sid,
                                      hpack_encode(fields)))
        return st

    def finish(self, st):
        """(status, body) once the stream ended; status None if it was reset."""
        self.wait(lambda: st.ended or st.reset is not None)
        return st.status, bytes(st.data)

    def fetch(self, path):
        return self.finish(self.get(path))

    def send_goaway(self, last=0, code=0):
        self.sock.sendall(self._frame(GOAWAY, 0, 0, struct.pack("!II", last, code)))

    def wait_eof(self):
        try:
            while True:
                self._read_frame()
        except (EOFError, ConnectionResetError):
            self.eof = True

    def close(self):
        self.sock.close()


class FakeUpstream:
    """Listens like the server's upstream port; each accept is under the test's control."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.tunnels = []

    def _accept(self, timeout):
        self.lsock.settimeout(timeout * SLOW)
        c, _ = self.lsock.accept()
        c.settimeout(10 * SLOW)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = _Reader(c)
        head = reader.until(b"\r\n\r\n").decode()
        assert head.startswith("GET /piko/v1/upstream/%s HTTP/1.1\r\n" % EP), head
        assert "upgrade: piko-reverse-h2" in head.lower(), head
        return c, reader

    def accept_tunnel(self, timeout=10.0):
        c, reader = self._accept(timeout)
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                  b"Upgrade: piko-reverse-h2\r\nPiko-Node-Id: fake\r\n\r\n")
        t = Tunnel(c, reader)
        self.tunnels.append(t)
        return t

    def refuse(self, timeout=10.0):
        """Answers one handshake with 503 node draining."""
        c, _ = self._accept(timeout)
        body = b'{"error":"node draining"}'
        c.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        c.close()

    def nothing_within(self, seconds):
        """True when no connection arrives within seconds."""
        self.lsock.settimeout(seconds)
        try:
            c, _ = self.lsock.accept()
        except socket.timeout:
            return True
        c.close()
        return False

    def close(self):
        for t in self.tunnels:
            t.close()
        self.lsock.close()


@pytest.fixture
def fake_upstream():
    up = FakeUpstream()
    yield up
    up.close()


# No heartbeat PINGs while the test is not reading a tunnel.
QUIET = {"connect.heartbeat-interval": "60s", "connect.heartbeat-timeout": "30s"}
# The first GOAWAY of the sidecar's two-step drain (RFC 9113 6.8). nghttp2 does not send
# it on a session that has received a GOAWAY already (nghttp2_submit_shutdown_notice is
# then a no-op): there, only the PING round trip precedes the final GOAWAY.
NOTICE = ((1 << 31) - 1, 0)


def wait_final_goaway(t):
    """The sidecar's GOAWAYs on t, once the final one (a real last-stream-id) came."""
    t.wait(lambda: any(g != NOTICE for g in t.goaways))
    assert all(g == NOTICE for g in t.goaways[:-1]), t.goaways
    return t.goaways[-1]


def start(piko, up, connections=1):
    svc = piko.service()
    flags = dict(QUIET)
    flags["connect.connections"] = connections
    sc = piko.sidecar({EP: svc.addr}, connect_url=up.url, flags=flags, wait=False)
    tunnels = [up.accept_tunnel() for _ in range(connections)]
    sc.wait_ready()
    for i, t in enumerate(tunnels):
        assert t.fetch("/echo?tunnel=%d" % i)[0] == 200
    return svc, sc, tunnels


def hold(svc, t):
    """A request that stays in flight on t until svc.release_all()."""
    st = t.get("/hang")
    assert svc.wait_in_flight(1, 10 * SLOW)
    return st


def test_goaway_notice_keeps_serving_until_replacement_is_up(piko, fake_upstream):
    up = fake_upstream
    svc, sc, (t1,) = start(piko, up)
    held = hold(svc, t1)
    t1.send_goaway(0)  # the server's notice: "reconnect elsewhere"
    sc.wait_log(lambda t: "server sent GOAWAY endpoint=%s" % EP in t, message="the GOAWAY")
    # The server may still open streams on the noticed tunnel: they are served.
    assert t1.fetch("/echo?n=2")[0] == 200

    # The replacement is refused twice (node draining): the old tunnel stays open,
    # serving, and counts for /ready; the sidecar retries with backoff.
    up.refuse()
    up.refuse()
    assert sc.ready_status() == 200
    status, body = t1.fetch("/echo?n=3")
    assert status == 200, body
    last_sid = t1.next_sid - 2
    assert t1.goaways == [], "drained before the replacement was up: %r" % t1.goaways

    t2 = up.accept_tunnel()
    # The replacement is up: the old tunnel gets the two-step drain, whose final GOAWAY
    # names the last stream accepted.
    assert wait_final_goaway(t1) == (last_sid, 0)
    assert sc.ready_status() == 200
    assert t2.fetch("/echo?n=4")[0] == 200
    assert t2.goaways == []

    # A stream accepted before the drain completes on the old tunnel, which then closes.
    svc.release_all()
    status, body = t1.finish(held)
    assert status == 200 and b'"released": true' in body, (status, body)
    t1.wait_eof()
    assert t2.fetch("/echo?n=5")[0] == 200
    assert up.nothing_within(0.5 * SLOW), "one replacement only"
    assert sc.ready_status() == 200
    sc.wait_log(lambda t: "draining the old tunnel endpoint=%s slot=0" % EP in t,
                message="the drain logged")


def test_idle_tunnel_closes_at_goaway_and_is_replaced(piko, fake_upstream):
    """No stream open when the GOAWAY comes: the tunnel closes (PROTOCOL.md 1.5) and its
    slot dials a replacement."""
    up = fake_upstream
    svc, sc, (t1,) = start(piko, up)
    t1.send_goaway(0)
    sc.wait_log(lambda t: "server sent GOAWAY endpoint=%s" % EP in t, message="the GOAWAY")
    t1.wait_eof()
    t2 = up.accept_tunnel()
    sc.wait_ready()
    assert t2.fetch("/echo?n=2")[0] == 200


def test_replaced_tunnel_closed_by_server_keeps_dialling(piko, fake_upstream):
    """The server closes the noticed tunnel before a replacement is up: not ready, and
    the sidecar keeps dialling (once: the slot is not dialled twice)."""
    up = fake_upstream
    svc, sc, (t1,) = start(piko, up)
    hold(svc, t1)
    t1.send_goaway(0)
    sc.wait_log(lambda t: "server sent GOAWAY endpoint=%s" % EP in t, message="the GOAWAY")
    up.refuse()
    t1.close()
    poll(lambda: sc.ready_status() == 503, 5 * SLOW, message="/ready 503 without a tunnel")
    up.refuse()
    t2 = up.accept_tunnel()
    sc.wait_ready()
    assert t2.fetch("/echo")[0] == 200
    assert up.nothing_within(0.5 * SLOW), "one tunnel only"


def test_goaway_on_one_of_two_tunnels_replaces_that_one_only(piko, fake_upstream):
    """A replaced tunnel does not count towards connect.connections: one GOAWAY, one
    replacement, and the other tunnel is left alone."""
    up = fake_upstream
    svc, sc, (t1, t2) = start(piko, up, connections=2)
    held = hold(svc, t1)
    t1.send_goaway(0)
    t3 = up.accept_tunnel()
    assert wait_final_goaway(t1) == (t1.next_sid - 2, 0)
    assert t3.fetch("/echo?t=3")[0] == 200
    assert t2.fetch("/echo?t=2")[0] == 200
    svc.release_all()
    assert t1.finish(held)[0] == 200
    t1.wait_eof()
    assert t2.goaways == [] and t3.goaways == []
    assert up.nothing_within(0.5 * SLOW), "one replacement only"
    assert sc.ready_status() == 200
