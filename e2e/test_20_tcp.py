"""Raw TCP through the tunnel (issue 3, PROTOCOL.md 1.2 "Raw TCP", 1.3, 2): the
`/_piko/v1/tcp/{endpoint}` upgrade on the proxy port, `--tcp-endpoint` on the sidecar
(with PROXY protocol v1/v2), half-close, resets, idle streams and bounded memory.
`--forward` is the client in the bulk tests here; its own contract is test_22_forward."""

import hashlib
import random
import selectors
import socket
import struct
import time

import pytest

from conftest import free_port
from helpers import SLOW, assert_json_error, h1, peak_rss_check
from services import MiB, pattern, pattern_sha256
from tcp_services import (GiB, H2Client, TcpService, TcpStream, _Reader, echo_roundtrip,
                          h2_body_json, outcome_of_reading, plain_connect,
                          read_response_head, service_unreachable_closed_port,
                          stream_pattern_both_ways, tcp_connect, tcp_sidecar,
                          upgrade_error, upgrade_request)


def tcp_service(piko, **kw):
    svc = TcpService(**kw)
    piko.services.append(svc)   # stopped at teardown with the HTTP services
    return svc


def connect(mode, srv, endpoint, forward_port=None, timeout=10.0):
    """A raw stream to endpoint: "direct" upgrades on the proxy port, "forward" goes
    through a --forward listener."""
    if mode == "direct":
        return tcp_connect(srv.proxy_port, endpoint, timeout=timeout)
    return plain_connect(forward_port, timeout=timeout)


@pytest.fixture
def echo_pair(piko):
    """server; echo service exposed as "db" by sidecar "exposer"; sidecar "forwarder"
    forwarding 127.0.0.1:<fwd> to "db"."""
    svc = tcp_service(piko, name="echo")
    srv = piko.server()
    exp = tcp_sidecar(piko, srv, tcp={"db": svc.addr}, name="exposer")
    fwd_port = free_port()
    fwd = tcp_sidecar(piko, srv, forwards={fwd_port: "db"}, name="forwarder")
    return srv, exp, fwd, svc, fwd_port


# ---- acceptance 1: 1 GiB each way, 500 concurrent connections ----------------------------


@pytest.mark.deadline(240)
def test_echo_1gib_each_way_through_forward(echo_pair):
    srv, exp, fwd, svc, fwd_port = echo_pair
    t0 = time.monotonic()
    with plain_connect(fwd_port, timeout=60) as s:
        total, sha, err = stream_pattern_both_ways(s, GiB, seed=31)
        assert err is None, "sending failed: %r" % err
        assert total == GiB, "echoed %d of %d bytes" % (total, GiB)
        assert sha == pattern_sha256(GiB, 31), "echoed bytes differ from the sent ones"
        assert s.recv(1) == b"", "the service's FIN must reach the client after the echo"
    elapsed = time.monotonic() - t0
    recs = svc.wait_conns(1)
    rec = recs[-1]
    rec.done.wait(10 * SLOW)
    assert rec.received == GiB and rec.digest() == pattern_sha256(GiB, 31), rec
    assert rec.eof, "the service must see the client's half-close as EOF: %r" % rec
    print("1 GiB each way through forward + tunnel in %.1fs" % elapsed)
    peak_rss_check([srv, exp, fwd])


@pytest.mark.deadline(90)
def test_500_concurrent_connections_through_one_tunnel(echo_pair):
    srv, exp, fwd, svc, fwd_port = echo_pair
    n, size = 500, 64 * 1024
    rng = random.Random(7)
    sel = selectors.DefaultSelector()
    conns = []
    for i in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", fwd_port))
        c = {"i": i, "sock": s, "payload": rng.randbytes(size), "sent": 0,
             "got": bytearray(), "eof": False, "error": None}
        conns.append(c)
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
    deadline = time.monotonic() + 30 * SLOW
    open_ = n
    while open_ and time.monotonic() < deadline:
        for key, ev in sel.select(timeout=1.0):
            c = key.data
            s = c["sock"]
            try:
                if ev & selectors.EVENT_WRITE and c["sent"] < size:
                    c["sent"] += s.send(c["payload"][c["sent"]:c["sent"] + 65536])
                    if c["sent"] == size:
                        sel.modify(s, selectors.EVENT_READ, c)
                if ev & selectors.EVENT_READ:
                    d = s.recv(65536)
                    if not d:
                        c["eof"] = True
                    c["got"] += d
            except BlockingIOError:
                continue
            except OSError as e:
                c["error"] = repr(e)
            if c["error"] or c["eof"] or len(c["got"]) >= size:
                sel.unregister(s)
                open_ -= 1
    for c in conns:
        c["sock"].close()
    bad = [(c["i"], c["sent"], len(c["got"]), c["eof"], c["error"]) for c in conns
           if bytes(c["got"]) != c["payload"]]
    assert not bad, "%d of %d connections not echoed correctly, e.g. (i, sent, got, eof, " \
        "error) %r" % (len(bad), n, bad[:10])
    assert len(svc.data_conns()) >= n
    assert not [r for r in svc.data_conns() if r.error], "service side errors"
    assert srv.running() and exp.running() and fwd.running()


# ---- acceptance 2: half-close -----------------------------------------------------------


@pytest.fixture
def collect_stack(piko):
    """The "collect" service (reads to EOF, then answers everything) exposed as "db",
    reachable directly and through a forward."""
    svc = tcp_service(piko, name="collect", mode="collect")
    srv = piko.server()
    fwd_port = free_port()
    tcp_sidecar(piko, srv, tcp={"db": svc.addr}, name="exposer")
    tcp_sidecar(piko, srv, forwards={fwd_port: "db"}, name="forwarder")
    return srv, svc, fwd_port


@pytest.mark.parametrize("mode", ["direct", "forward"])
@pytest.mark.deadline(60)
def test_client_half_close_then_full_answer(collect_stack, mode):
    srv, svc, fwd_port = collect_stack
    data = random.Random(3).randbytes(10 * MiB)
    with connect(mode, srv, "db", fwd_port, timeout=30) as s:
        s.sendall(data)
        s.shutdown_write()
        got = s.recv_to_eof()
    rec = svc.wait_conns(1)[-1]
    assert rec.eof and rec.received == len(data), rec
    assert len(got) == len(data), "got %d of %d bytes after the half-close" % (
        len(got), len(data))
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), \
        "answer differs (lost or reordered bytes)"


@pytest.mark.parametrize("mode", ["direct", "forward"])
@pytest.mark.deadline(60)
def test_service_half_close_then_client_keeps_sending(piko, mode):
    """The service sends 10 MiB and half-closes; the client reads to EOF, and only then
    sends its own 10 MiB, which must still arrive."""
    svc = tcp_service(piko, name="push", mode="push", nbytes=10 * MiB, seed=41)
    srv = piko.server()
    fwd_port = free_port()
    tcp_sidecar(piko, srv, tcp={"db": svc.addr}, name="exposer")
    tcp_sidecar(piko, srv, forwards={fwd_port: "db"}, name="forwarder")
    with connect(mode, srv, "db", fwd_port, timeout=30) as s:
        got = s.recv_to_eof()
        assert len(got) == 10 * MiB
        assert hashlib.sha256(got).hexdigest() == pattern_sha256(10 * MiB, 41)
        time.sleep(0.2)  # the FIN has passed every hop: nothing may close our direction
        payload = random.Random(4).randbytes(10 * MiB)
        s.sendall(payload)
        s.shutdown_write()
        rec = svc.wait_conns(1)[-1]
        assert rec.done.wait(20 * SLOW), "service never saw EOF: %r" % rec
    assert rec.error is None, rec
    assert rec.eof and rec.received == len(payload), rec
    assert rec.digest() == hashlib.sha256(payload).hexdigest()


# ---- acceptance 3: slow reader, bounded memory ------------------------------------------


@pytest.mark.parametrize("mode", ["direct", "forward"])
@pytest.mark.deadline(90)
def test_slow_reader_bounded_memory(piko, mode):
    svc = tcp_service(piko, name="push", mode="push", nbytes=GiB, seed=51)
    srv = piko.server()
    fwd_port = free_port()
    exp = tcp_sidecar(piko, srv, tcp={"db": svc.addr}, name="exposer")
    fwd = tcp_sidecar(piko, srv, forwards={fwd_port: "db"}, name="forwarder")
    svc.reset()
    s = connect(mode, srv, "db", fwd_port, timeout=30)
    s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    d = hashlib.sha256()
    got = 0
    t_end = time.monotonic() + 5.0
    while time.monotonic() < t_end:   # 64 KiB/s: 8 KiB every 125 ms
        piece = s.recv_exact(8192)
        d.update(piece)
        got += len(piece)
        time.sleep(0.125)
    sent = svc.wait_conns(1, data=False)[-1].sent
    procs = [srv, exp] + ([fwd] if mode == "forward" else [])
    rss = {p.name: p.rss_kib() for p in procs}
    s.close()
    assert d.hexdigest() == hashlib.sha256(bytes(pattern(51)[:got])).hexdigest()
    # Buffers on every hop plus the tunnel's windows (1 MiB stream, 16 MiB connection).
    assert sent <= 128 * MiB, ("the service wrote %d MiB while the client read %d KiB: "
                               "no backpressure (rss %r)" % (sent >> 20, got >> 10, rss))
    # The service notices the client's close (error or EOF) soon.
    rec = svc.conns[-1]
    assert rec.done.wait(10 * SLOW), "the service was never told that the client left"
    for p in procs:
        assert p.running()
    usage = peak_rss_check(procs)
    print("slow reader (%s): service wrote %.1f MiB, client read %d KiB, VmHWM %r" % (
        mode, sent / MiB, got >> 10, {k: v["VmHWM"] for k, v in usage.items()}))


# ---- acceptance 5: PROXY protocol -------------------------------------------------------


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_proxy_protocol_direct(piko, version):
    svc = tcp_service(piko, name="pp", proxy_protocol=True)
    srv = piko.server()
    tcp_sidecar(piko, srv, tcp={"db": "%s,proxy-protocol=%s" % (svc.addr, version)})
    svc.reset()
    with tcp_connect(srv.proxy_port, "db") as s:
        client_ip, client_port = s.getsockname()[:2]
        assert echo_roundtrip(s, b"after the header", shutdown=False) == b"after the header"
    recs = svc.wait_conns(1)
    assert len(recs) == 1, recs
    hdr = recs[0].proxy
    assert hdr is not None
    assert hdr["version"] == int(version[1]), hdr
    assert hdr["command"] == "PROXY", hdr
    assert hdr["family"] == "TCP4", hdr
    assert hdr["src"] == client_ip == "127.0.0.1", hdr
    assert hdr["sport"] == client_port, (
        "PROXY source port %s is not the client's port %s" % (hdr["sport"], client_port))
    assert recs[0].first_bytes == b"after the header", recs[0]


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_proxy_protocol_through_forward(piko, version):
    """Through --forward the downstream client of the proxy port is the forwarding
    sidecar: the header carries its (loopback) address."""
    svc = tcp_service(piko, name="pp", proxy_protocol=True)
    srv = piko.server()
    fwd_port = free_port()
    tcp_sidecar(piko, srv, tcp={"db": "%s,proxy-protocol=%s" % (svc.addr, version)},
                name="exposer")
    tcp_sidecar(piko, srv, forwards={fwd_port: "db"}, name="forwarder")
    svc.reset()
    with plain_connect(fwd_port) as s:
        assert echo_roundtrip(s, b"x" * 1000, shutdown=False) == b"x" * 1000
    hdr = svc.wait_conns(1)[0].proxy
    assert hdr["version"] == int(version[1]) and hdr["family"] == "TCP4", hdr
    assert hdr["src"] == "127.0.0.1" and 0 < hdr["sport"] < 65536, hdr


def test_no_proxy_header_without_the_option(piko):
    svc = tcp_service(piko, name="echo")
    srv = piko.server()
    tcp_sidecar(piko, srv, tcp={"db": svc.addr})
    with tcp_connect(srv.proxy_port, "db") as s:
        assert echo_roundtrip(s, b"PING\r\n", shutdown=False) == b"PING\r\n"
    assert svc.wait_conns(1)[-1].first_bytes == b"PING\r\n"


# ---- acceptance 6 (proxy port part) and the upgrade's JSON errors --------------------------


@pytest.fixture
def tcp_stack(piko):
    """server; echo service as tcp endpoint "db"; a closed port as tcp endpoint "dead"."""
    svc = tcp_service(piko, name="echo")
    srv = piko.server()
    sc = tcp_sidecar(piko, srv, tcp={"db": svc.addr,
                                     "dead": "127.0.0.1:%d" %
                                     service_unreachable_closed_port()})
    return srv, sc, svc


def test_no_available_upstreams_502(tcp_stack):
    srv, _, _ = tcp_stack
    r = upgrade_error(srv.proxy_port, "x")
    assert_json_error(r, 502, "no available upstreams")


def test_upstream_unreachable_502(tcp_stack):
    srv, _, svc = tcp_stack
    r = upgrade_error(srv.proxy_port, "dead")
    assert_json_error(r, 502, "upstream unreachable")
    # The proxy stays usable, the other endpoint works.
    with tcp_connect(srv.proxy_port, "db") as s:
        assert echo_roundtrip(s, b"still") == b"still"


def test_no_101_before_the_service_accepted(piko):
    """The 101 comes only after the sidecar's connect succeeded: a service whose accept
    queue is full (SYNs dropped) makes the connect time out -> 502, never a 101."""
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    fillers = []
    for _ in range(8):   # fill the accept queue; later SYNs are dropped
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(full.getsockname())
        fillers.append(c)
    time.sleep(0.2)
    try:
        srv = piko.server()
        tcp_sidecar(piko, srv, tcp={"full": "127.0.0.1:%d" % full.getsockname()[1]},
                    flags={"local.connect-timeout": "1s"})
        t0 = time.monotonic()
        r = upgrade_error(srv.proxy_port, "full", timeout=30)
        elapsed = time.monotonic() - t0
        assert_json_error(r, 502, "upstream unreachable")
        assert elapsed >= 0.9, "answered after %.2fs, before the 1s connect timeout" % elapsed
    finally:
        for c in fillers:
            c.close()
        full.close()


@pytest.mark.deadline(90)
def test_echo_64mib_each_way_direct(tcp_stack):
    srv, _, svc = tcp_stack
    with tcp_connect(srv.proxy_port, "db", timeout=30) as s:
        total, sha, err = stream_pattern_both_ways(s, 64 * MiB, seed=32)
        assert err is None and total == 64 * MiB, (err, total)
        assert sha == pattern_sha256(64 * MiB, 32)
        assert s.recv(1) == b""


@pytest.mark.parametrize("endpoint", ["bad!id", "a" * 129, "bad:id"],
                         ids=["bang", "129-chars", "colon"])
def test_invalid_endpoint_id_400(tcp_stack, endpoint):
    srv, _, svc = tcp_stack
    r = upgrade_error(srv.proxy_port, endpoint)
    assert_json_error(r, 400, "invalid endpoint id")
    assert not svc.data_conns()


@pytest.mark.parametrize("fields", [
    dict(upgrade=None, connection=None),
    dict(upgrade=None, connection="Upgrade"),
    dict(upgrade="websocket", connection="Upgrade"),
], ids=["no-upgrade", "connection-only", "other-token"])
def test_without_piko_tcp_upgrade_426(tcp_stack, fields):
    srv, _, svc = tcp_stack
    req = upgrade_request("db", port=srv.proxy_port, **fields)
    r = upgrade_error(srv.proxy_port, request=req)
    assert r.status == 426, r
    assert r.header("content-type", "").split(";")[0] == "application/json", r
    assert isinstance(r.json().get("error"), str), r
    assert not svc.data_conns()


def test_426_names_the_upgrade(tcp_stack):
    """RFC 9110 15.5.22: a 426 MUST carry Upgrade."""
    srv, _, _ = tcp_stack
    r = upgrade_error(srv.proxy_port, request=upgrade_request(
        "db", port=srv.proxy_port, upgrade=None, connection=None))
    assert r.status == 426
    assert "piko-tcp" in (r.header("upgrade") or "").lower(), r


def test_upgrade_with_token_list_and_case(tcp_stack):
    """Connection and Upgrade are token lists, case-insensitive."""
    srv, _, _ = tcp_stack
    req = upgrade_request("db", port=srv.proxy_port, connection="keep-alive, upgrade",
                          upgrade="PIKO-TCP")
    with tcp_connect(srv.proxy_port, "db", request=req) as s:
        assert s.response.status == 101
        assert echo_roundtrip(s, b"tokens") == b"tokens"


def test_101_fields_and_early_bytes(tcp_stack):
    """The 101 names the protocol; bytes sent right behind the request head (before
    the 101 arrived) are not lost."""
    srv, _, _ = tcp_stack
    sock = socket.create_connection(("127.0.0.1", srv.proxy_port), timeout=10 * SLOW)
    try:
        sock.sendall(upgrade_request("db", port=srv.proxy_port) + b"early bytes")
        rd = _Reader(sock)
        resp = read_response_head(rd)
        assert resp.status == 101, resp
        assert (resp.header("upgrade") or "").lower() == "piko-tcp", resp
        assert "upgrade" in (resp.header("connection") or "").lower(), resp
        s = TcpStream(sock, rd.buf, resp)
        assert s.recv_exact(len(b"early bytes")) == b"early bytes"
    finally:
        sock.close()


def test_proxy_port_still_serves_http_after_raw(tcp_stack, piko):
    srv, _, _ = tcp_stack
    with tcp_connect(srv.proxy_port, "db") as s:
        assert echo_roundtrip(s, b"raw") == b"raw"
    r = h1(srv.proxy_port, "GET", "/", {"x-piko-endpoint": "nobody"})
    assert_json_error(r, 502, "no available upstreams")


# ---- raw TCP to an HTTP endpoint ----------------------------------------------------------


def test_raw_tcp_to_http_endpoint(piko):
    """An HTTP --endpoint's address is a TCP address too: raw bytes reach it untouched
    (no x-forwarded-for added, the request is the client's own)."""
    svc = piko.service("web")
    srv = piko.server()
    piko.sidecar({"web": svc.addr}, server=srv)
    with tcp_connect(srv.proxy_port, "web") as s:
        s.sendall(b"GET /echo?raw=1 HTTP/1.1\r\nHost: raw.example\r\nConnection: close\r\n\r\n")
        data = s.recv_to_eof()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data[:300]
    import json
    obj = json.loads(body)
    assert obj["path"] == "/echo?raw=1"
    names = [k for k, _ in obj["headers"]]
    assert "x-forwarded-for" not in names and "piko-client-addr" not in names, obj
    assert dict(obj["headers"])["host"] == "raw.example"


def test_several_tcp_endpoints_and_bare_port(piko):
    a = tcp_service(piko, name="a", mode="push", nbytes=1000, seed=61)
    b = tcp_service(piko, name="b", mode="push", nbytes=2000, seed=62)
    srv = piko.server()
    tcp_sidecar(piko, srv, tcp={"ep-a": a.addr, "ep-b": str(b.port)})
    with tcp_connect(srv.proxy_port, "ep-a") as s:
        assert s.recv_to_eof() == bytes(pattern(61)[:1000])
    with tcp_connect(srv.proxy_port, "ep-b") as s:
        assert s.recv_to_eof() == bytes(pattern(62)[:2000])


# ---- acceptance 7: a reset by the service resets the client ----------------------------


@pytest.mark.parametrize("mode", ["direct", "forward"])
def test_service_reset_resets_client(piko, mode):
    svc = tcp_service(piko, name="reset", mode="reset", nbytes=256 * 1024, seed=71)
    svc.reset_gate = True
    srv = piko.server()
    fwd_port = free_port()
    tcp_sidecar(piko, srv, tcp={"db": svc.addr}, name="exposer")
    tcp_sidecar(piko, srv, forwards={fwd_port: "db"}, name="forwarder")
    with connect(mode, srv, "db", fwd_port) as s:
        s.sendall(b"g")
        # All the data first (the RST must not overtake data that was already sent...)
        first = s.recv_exact(256 * 1024)
        assert first == bytes(pattern(71)[:256 * 1024])
        svc.release.set()   # ... then the service resets.
        outcome, extra = outcome_of_reading(s)
    assert outcome == "reset", (
        "after the service reset its connection the client saw %s (%d more bytes) - "
        "a reset must not become a clean EOF" % (outcome, extra))


@pytest.mark.parametrize("mode", ["direct", "forward"])
def test_service_reset_mid_stream(piko, mode):
    """The service resets while megabytes are still in flight: the client must not see
    a clean EOF after a short stream."""
    svc = tcp_service(piko, name="reset", mode="reset", nbytes=8 * MiB, seed=72)
    srv = piko.server()
    fwd_port = free_port()
    tcp_sidecar(piko, srv, tcp={"db": svc.addr}, name="exposer")
    tcp_sidecar(piko, srv, forwards={fwd_port: "db"}, name="forwarder")
    with connect(mode, srv, "db", fwd_port) as s:
        s.sendall(b"g")
        outcome, n = outcome_of_reading(s)
    assert outcome == "reset", "client saw %s after %d bytes" % (outcome, n)


def test_client_reset_reaches_service(piko):
    """The reverse direction: the client resets, the service's connection fails (or ends)
    promptly, and the proxy is fine."""
    svc = tcp_service(piko, name="echo")
    srv = piko.server()
    tcp_sidecar(piko, srv, tcp={"db": svc.addr})
    s = tcp_connect(srv.proxy_port, "db")
    assert echo_roundtrip(s, b"hello", shutdown=False) == b"hello"
    s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    rec = svc.wait_conns(1)[-1]
    assert rec.done.wait(5 * SLOW), "the service connection outlived the client's reset"
    with tcp_connect(srv.proxy_port, "db") as s2:
        assert echo_roundtrip(s2, b"again") == b"again"


# ---- proxy.timeout never cuts a raw stream -----------------------------------------------


@pytest.mark.parametrize("mode", ["direct", "forward"])
@pytest.mark.deadline(60)
def test_idle_longer_than_proxy_timeout(piko, mode):
    svc = tcp_service(piko, name="echo")
    srv = piko.server({"proxy.timeout": "1s"})
    fwd_port = free_port()
    tcp_sidecar(piko, srv, tcp={"db": svc.addr}, name="exposer")
    tcp_sidecar(piko, srv, forwards={fwd_port: "db"}, name="forwarder")
    with connect(mode, srv, "db", fwd_port) as s:
        assert echo_roundtrip(s, b"before", shutdown=False) == b"before"
        time.sleep(2.5)
        assert echo_roundtrip(s, b"after idle", shutdown=False) == b"after idle"
        # Half-closed and idle: the service's answer may still come later.
        time.sleep(1.5)
        assert echo_roundtrip(s, b"last") == b"last"
        assert s.recv(1) == b""


# ---- HTTP/2 (h2c) extended CONNECT on the proxy port --------------------------------------


def test_h2c_extended_connect_raw_tcp(tcp_stack):
    srv, _, svc = tcp_stack
    with H2Client(srv.proxy_port) as h:
        assert h.settings_enable_connect(), (
            "the proxy port must announce SETTINGS_ENABLE_CONNECT_PROTOCOL=1 "
            "(got %r)" % h.peer_settings)
        st = h.connect("/_piko/v1/tcp/db")
        assert h.wait_status(st) == 200, (st.status, st.reset, bytes(st.data[:300]))
        data = random.Random(9).randbytes(3 * MiB)
        got = bytearray()

        # One thread: send in 64 KiB steps, collect the echo as it comes.
        for i in range(0, len(data), 64 * 1024):
            h.send_data(st, data[i:i + 64 * 1024])
            h.poll_frames()
        h.send_data(st, b"", end=True)
        h.wait(lambda: st.ended or st.reset is not None)
        assert st.reset is None, "stream reset (%d)" % st.reset
        assert bytes(st.data) == data, "echo differs (%d of %d bytes)" % (
            len(st.data), len(data))
    rec = svc.wait_conns(1)[-1]
    assert rec.eof, "END_STREAM must reach the service as EOF: %r" % rec


@pytest.mark.parametrize("endpoint,status,message", [
    ("x", 502, "no available upstreams"),
    ("dead", 502, "upstream unreachable"),
    ("bad!id", 400, "invalid endpoint id"),
])
def test_h2c_extended_connect_errors(tcp_stack, endpoint, status, message):
    srv, _, _ = tcp_stack
    with H2Client(srv.proxy_port) as h:
        st = h.connect("/_piko/v1/tcp/" + endpoint)
        assert h.wait_status(st) == status, (st.status, st.reset)
        h.wait(lambda: st.ended or st.reset is not None)
        assert h2_body_json(st) == {"error": message}


def test_h2c_service_reset_is_rst_stream(piko):
    svc = tcp_service(piko, name="reset", mode="reset", nbytes=1000, seed=73)
    srv = piko.server()
    tcp_sidecar(piko, srv, tcp={"db": svc.addr})
    with H2Client(srv.proxy_port) as h:
        st = h.connect("/_piko/v1/tcp/db")
        assert h.wait_status(st) == 200
        h.send_data(st, b"g")
        h.wait(lambda: st.ended or st.reset is not None)
        assert st.reset is not None and not st.ended, (
            "a reset must be RST_STREAM, not END_STREAM (ended=%s, reset=%s)" % (
                st.ended, st.reset))
        assert st.reset == 0xA, "expected CONNECT_ERROR (0xa), got 0x%x" % st.reset
