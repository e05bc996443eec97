"""`piko-sidecar --forward LOCAL_ADDR=ENDPOINT` (issue 3): every accepted local
connection is tunnelled through the server's proxy port (`/_piko/v1/tcp/{endpoint}`
upgrade). A failure closes that one local connection (and is logged); the listener and
every other forward keep working. One sidecar may expose and forward at once.
Half-close, resets, PROXY protocol, idle streams and bulk through a forward are in
test_20_tcp (parametrized "forward")."""

import hashlib
import os
import signal
import socket
import struct
import subprocess
import time

import pytest

from conftest import binary, free_port
from helpers import SLOW, h1, poll
from tcp_services import (TcpService, echo_roundtrip, outcome_of_reading, plain_connect,
                          stream_pattern_both_ways, tcp_sidecar,
                          wait_listening)
from services import MiB, pattern_sha256


def tcp_service(piko, **kw):
    svc = TcpService(**kw)
    piko.services.append(svc)
    return svc


def closed_within(stream, timeout=5.0):
    """How a local connection ended: "eof", "reset", or "timeout" if it stayed open."""
    outcome, n = outcome_of_reading(stream, timeout)
    assert n == 0, "a failed forward must not produce bytes (got %d)" % n
    return outcome


def fd_count(proc):
    return len(os.listdir("/proc/%d/fd" % proc.pid))


def test_forward_echo_sequential_connections(piko):
    svc = tcp_service(piko, name="echo")
    srv = piko.server()
    port = free_port()
    tcp_sidecar(piko, srv, tcp={"db": svc.addr}, name="exposer")
    fwd = tcp_sidecar(piko, srv, forwards={port: "db"}, name="forwarder")
    for i in range(5):
        with plain_connect(port) as s:
            msg = b"message %d " % i * 100
            assert echo_roundtrip(s, msg) == msg
            assert s.recv(1) == b""
    assert fwd.running()


@pytest.mark.parametrize("first", [True, False], ids=["first-connection", "later"])
def test_client_speaks_first_without_half_close(piko, first):
    """The client writes a few bytes right after connect (before the tunnel's 101 can
    have arrived) and waits for the answer without closing anything, like iperf3's
    cookie or a database's startup message: the bytes must not wait for more input."""
    svc = tcp_service(piko, name="echo")
    srv = piko.server()
    port = free_port()
    tcp_sidecar(piko, srv, tcp={"db": svc.addr}, name="exposer")
    tcp_sidecar(piko, srv, forwards={port: "db"}, name="forwarder")
    rounds = 1 if first else 30
    for i in range(rounds):
        s = socket.create_connection(("127.0.0.1", port), timeout=5 * SLOW)
        try:
            s.sendall(b"c" * 37)
            got = b""
            try:
                while len(got) < 37:
                    d = s.recv(100)
                    if not d:
                        break
                    got += d
            except socket.timeout:
                raise AssertionError(
                    "connection %d: 37 bytes written right after connect were not echoed "
                    "within 5 s (got %d): stuck before the service" % (i, len(got)))
            assert got == b"c" * 37, (i, got)
        finally:
            s.close()


@pytest.mark.deadline(90)
def test_forward_no_fd_leak_after_many_connections(piko):
    svc = tcp_service(piko, name="echo")
    srv = piko.server()
    port = free_port()
    exp = tcp_sidecar(piko, srv, tcp={"db": svc.addr}, name="exposer")
    fwd = tcp_sidecar(piko, srv, forwards={port: "db"}, name="forwarder")
    with plain_connect(port) as s:
        assert echo_roundtrip(s, b"warm-up") == b"warm-up"
    time.sleep(0.5)
    before = {p.name: fd_count(p) for p in (srv, exp, fwd)}
    for i in range(300):
        with plain_connect(port) as s:
            if i % 3 == 0:
                assert echo_roundtrip(s, b"x%d" % i) == b"x%d" % i
            elif i % 3 == 1:
                s.sendall(b"abandoned")  # closed without reading
            # else: opened and closed at once
    # Closing connections settle: every fd is given back.
    def settled():
        now = {p.name: fd_count(p) for p in (srv, exp, fwd)}
        return now if all(now[k] <= before[k] + 2 for k in now) else None
    try:
        poll(settled, 10 * SLOW, message="fd counts back to %r" % before)
    except AssertionError:
        raise AssertionError("fd leak: before %r, now %r" % (
            before, {p.name: fd_count(p) for p in (srv, exp, fwd)}))


@pytest.mark.deadline(60)
def test_no_upstream_closes_that_connection_others_keep_working(piko):
    svc = tcp_service(piko, name="echo")
    srv = piko.server()
    dead_port, live_port = free_port(), free_port()
    tcp_sidecar(piko, srv, tcp={"db": svc.addr}, name="exposer")
    fwd = tcp_sidecar(piko, srv, forwards={dead_port: "nobody", live_port: "db"},
                      name="forwarder")
    with plain_connect(live_port) as live:
        assert echo_roundtrip(live, b"one", shutdown=False) == b"one"
        with plain_connect(dead_port) as dead:
            dead.sendall(b"hello?")
            outcome = closed_within(dead)
            assert outcome in ("eof", "reset"), (
                "a local connection to an endpoint without upstream must be closed "
                "(it stayed open)")
        fwd.wait_log(lambda t: "nobody" in t and ("no available upstreams" in t
                                                  or "502" in t),
                     message="a line naming the endpoint and why (502 no available "
                             "upstreams)")
        # The open connection through the other forward is untouched ...
        assert echo_roundtrip(live, b"two", shutdown=False) == b"two"
    # ... new ones work, and the failing forward still listens and fails again.
    with plain_connect(live_port) as s:
        assert echo_roundtrip(s, b"three") == b"three"
    with plain_connect(dead_port) as dead:
        assert closed_within(dead) in ("eof", "reset")
    assert fwd.running()
    # Once someone serves the endpoint, the same listener works.
    svc2 = tcp_service(piko, name="echo2")
    tcp_sidecar(piko, srv, tcp={"nobody": svc2.addr}, name="late-exposer")
    with plain_connect(dead_port) as s:
        assert echo_roundtrip(s, b"now served") == b"now served"


def test_upstream_unreachable_closes_local_connection(piko):
    srv = piko.server()
    port = free_port()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_addr = "127.0.0.1:%d" % closed.getsockname()[1]
    closed.close()
    tcp_sidecar(piko, srv, tcp={"dead": dead_addr}, name="exposer")
    fwd = tcp_sidecar(piko, srv, forwards={port: "dead"}, name="forwarder")
    with plain_connect(port) as s:
        assert closed_within(s) in ("eof", "reset")
    fwd.wait_log(lambda t: "dead" in t and ("unreachable" in t or "502" in t),
                 message="a line naming the endpoint and why (502 upstream unreachable)")
    assert fwd.running()


def test_server_down_closes_local_connection_then_recovers(piko):
    """--forward.url unreachable: the local connection is closed, the reason logged;
    once the server is up, new connections work."""
    svc = tcp_service(piko, name="echo")
    ports = piko.new_server_ports()
    port = free_port()
    fwd = piko.sidecar({}, connect_url="http://127.0.0.1:%d" % ports["upstream"],
                       flags={"forward": ["127.0.0.1:%d=db" % port],
                              "forward.url": "http://127.0.0.1:%d" % ports["proxy"]},
                       wait=False, name="forwarder")
    wait_listening(port, fwd)
    with plain_connect(port) as s:
        assert closed_within(s) in ("eof", "reset")
    fwd.wait_log(lambda t: "refused" in t.lower(),
                 message="a line naming the reason (connection refused)")
    assert fwd.running()
    srv = piko.server(ports=ports)
    tcp_sidecar(piko, srv, tcp={"db": svc.addr}, name="exposer")
    with plain_connect(port) as s:
        assert echo_roundtrip(s, b"recovered") == b"recovered"


def test_expose_and_forward_in_one_sidecar(piko):
    svc = tcp_service(piko, name="echo")
    web = piko.service("web")
    srv = piko.server()
    port = free_port()
    sc = tcp_sidecar(piko, srv, tcp={"db": svc.addr}, http={"web": web.addr},
                     forwards={port: "db"}, name="both")
    with plain_connect(port) as s:
        total, sha, err = stream_pattern_both_ways(s, 64 * MiB, seed=81)
        assert (total, sha, err) == (64 * MiB, pattern_sha256(64 * MiB, 81), None)
    r = h1(srv.proxy_port, "GET", "/echo", {"x-piko-endpoint": "web"})
    assert r.status == 200, r
    assert sc.running()


def test_forward_to_http_endpoint(piko):
    """A forward to an HTTP endpoint: the local client speaks HTTP itself."""
    web = piko.service("web")
    srv = piko.server()
    port = free_port()
    piko.sidecar({"web": web.addr}, server=srv, name="exposer")
    tcp_sidecar(piko, srv, forwards={port: "web"}, name="forwarder")
    with plain_connect(port) as s:
        s.sendall(b"GET /whoami HTTP/1.1\r\nHost: local\r\n\r\n"
                  b"GET /echo HTTP/1.1\r\nHost: local\r\nConnection: close\r\n\r\n")
        data = s.recv_to_eof()
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert data.count(b"HTTP/1.1 200") == 2, data[:600]
    assert b"web" in data


def test_several_forwards_one_sidecar(piko):
    a = tcp_service(piko, name="a", mode="push", nbytes=12345, seed=91)
    b = tcp_service(piko, name="b", mode="push", nbytes=54321, seed=92)
    srv = piko.server()
    pa, pb = free_port(), free_port()
    tcp_sidecar(piko, srv, tcp={"ep-a": a.addr, "ep-b": b.addr}, name="exposer")
    tcp_sidecar(piko, srv, forwards={pa: "ep-a", pb: "ep-b"}, name="forwarder")
    with plain_connect(pa) as s:
        assert hashlib.sha256(s.recv_to_eof()).hexdigest() == pattern_sha256(12345, 91)
    with plain_connect(pb) as s:
        assert hashlib.sha256(s.recv_to_eof()).hexdigest() == pattern_sha256(54321, 92)


def test_local_client_reset_reaches_service(piko):
    svc = tcp_service(piko, name="echo")
    srv = piko.server()
    port = free_port()
    tcp_sidecar(piko, srv, tcp={"db": svc.addr}, name="exposer")
    tcp_sidecar(piko, srv, forwards={port: "db"}, name="forwarder")
    svc.reset()
    s = plain_connect(port)
    assert echo_roundtrip(s, b"hi", shutdown=False) == b"hi"
    s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    rec = svc.wait_conns(1)[-1]
    assert rec.done.wait(5 * SLOW), "the service connection outlived the client's reset"


@pytest.mark.deadline(60)
def test_forward_survives_server_restart(piko):
    svc = tcp_service(piko, name="echo")
    srv = piko.server()
    port = free_port()
    tcp_sidecar(piko, srv, tcp={"db": svc.addr}, name="exposer")
    fwd = tcp_sidecar(piko, srv, forwards={port: "db"}, name="forwarder")
    with plain_connect(port) as s:
        assert echo_roundtrip(s, b"before") == b"before"
    srv.stop()
    srv2 = piko.server(ports=srv.ports, name="server-restarted")
    piko.wait_routable(srv2, "db", timeout=15)

    def works():
        with plain_connect(port) as s:
            return echo_roundtrip(s, b"after") == b"after"
    poll(works, 10 * SLOW, message="a forwarded echo after the restart")
    assert fwd.running()


@pytest.mark.parametrize("who", ["forwarder", "exposer"])
def test_sigterm_with_open_raw_stream_bounded_by_grace_period(piko, who):
    """A raw stream may never end by itself: a sidecar draining on SIGTERM exits after
    its grace period, and the local client's connection ends (no hang)."""
    svc = tcp_service(piko, name="echo")
    srv = piko.server()
    port = free_port()
    exp = tcp_sidecar(piko, srv, tcp={"db": svc.addr}, name="exposer",
                      flags={"grace-period": "1s"})
    fwd = tcp_sidecar(piko, srv, forwards={port: "db"}, name="forwarder",
                      flags={"grace-period": "1s"})
    target = fwd if who == "forwarder" else exp
    with plain_connect(port) as s:
        assert echo_roundtrip(s, b"open", shutdown=False) == b"open"
        t0 = time.monotonic()
        target.signal(signal.SIGTERM)
        rc = target.wait(10)
        elapsed = time.monotonic() - t0
        assert rc == 0, "exit status %s" % rc
        assert elapsed < 5 * SLOW, "exit took %.1fs with grace-period 1s" % elapsed
        outcome, _ = outcome_of_reading(s, 5)
        assert outcome in ("eof", "reset"), "the local connection hangs after the exit"


# ---- bad flags ----------------------------------------------------------------------------


def run_sidecar_expect_exit_2(args, timeout=5):
    argv = [binary("piko-sidecar"), "--connect.url", "http://127.0.0.1:%d" % free_port(),
            "--admin.bind-addr", "127.0.0.1:%d" % free_port()] + args
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout * SLOW)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2, "expected exit 2, got %s; stderr:\n%s" % (p.returncode, p.stderr)
    assert len(lines) == 1, "expected one line on stderr, got:\n%s" % p.stderr
    return lines[0]


@pytest.mark.parametrize("args,key", [
    (["--tcp-endpoint", "no-equals-sign"], "tcp-endpoint"),
    (["--tcp-endpoint", "bad!id=127.0.0.1:1"], "tcp-endpoint"),
    (["--tcp-endpoint", "db=127.0.0.1:99999"], "tcp-endpoint"),
    (["--tcp-endpoint", "db=127.0.0.1:1,proxy-protocol=v3"], "tcp-endpoint"),
    (["--tcp-endpoint", "db=127.0.0.1:1,bogus=1"], "tcp-endpoint"),
    (["--forward", "no-equals-sign", "--forward.url", "http://127.0.0.1:1"], "forward"),
    (["--forward", "127.0.0.1:99999=db", "--forward.url", "http://127.0.0.1:1"], "forward"),
    (["--forward", "127.0.0.1:1=bad!id", "--forward.url", "http://127.0.0.1:1"], "forward"),
    (["--forward", "127.0.0.1:1=db", "--forward.url", "ftp://127.0.0.1:1"], "forward.url"),
], ids=["tcp-no-equals", "tcp-bad-id", "tcp-bad-port", "tcp-bad-proxy-version",
        "tcp-unknown-option", "fwd-no-equals", "fwd-bad-port", "fwd-bad-id",
        "fwd-bad-url"])
def test_bad_flags_exit_2(args, key):
    line = run_sidecar_expect_exit_2(args)
    assert key in line, "the message must name %r: %r" % (key, line)


def test_forward_address_in_use_fails_at_start(piko):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        argv = [binary("piko-sidecar"), "--connect.url", "http://127.0.0.1:%d" % free_port(),
                "--admin.bind-addr", "127.0.0.1:%d" % free_port(),
                "--forward", "127.0.0.1:%d=db" % port,
                "--forward.url", "http://127.0.0.1:%d" % free_port()]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10 * SLOW)
        assert p.returncode != 0, "a forward that cannot listen must be fatal at start"
        assert str(port) in p.stderr, p.stderr
    finally:
        busy.close()
