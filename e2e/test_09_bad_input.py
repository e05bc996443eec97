"""Bad input never crashes a process: malformed requests, oversized heads, bad config,
an unreachable server. After each, a normal request is still served."""

import json
import socket
import subprocess
import time

import pytest

from conftest import binary, free_port
from helpers import SLOW, RawConn, assert_json_error, h1

EP = {"x-piko-endpoint": "my-service"}


def assert_still_serves(srv):
    assert srv.running(), "server died"
    r = h1(srv.proxy_port, "GET", "/echo?still=1", EP)
    assert r.status == 200, r
    assert r.json()["path"] == "/echo?still=1"


def expect_json_error_then_close(port, data, status, message=None):
    with RawConn(port) as c:
        try:
            c.send(data)
            r = c.read_response()
        except ConnectionResetError:
            raise AssertionError("connection reset before the %d answer was read "
                                 "(no lingering close?)" % status)
        assert r.status == status, r
        assert r.header("content-type", "").split(";")[0] == "application/json", r
        obj = json.loads(r.body)
        assert isinstance(obj.get("error"), str) and obj["error"], obj
        if message is not None:
            assert obj == {"error": message}, obj
        assert c.closed_by_peer(), "connection must be closed after a malformed request"


# ---- malformed requests --------------------------------------------------------------


@pytest.mark.parametrize("data", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1 trailing-junk\r\nHost: my-service.example.com\r\n\r\n",
    b"G\x00T / HTTP/1.1\r\nHost: my-service.example.com\r\n\r\n",
    b"GET / HTZP/1.1\r\nHost: my-service.example.com\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: my-service.example.com\r\nBad Header: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: my-service.example.com\r\nNoColon\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : my-service.example.com\r\n\r\n",  # RFC 9112 5.1: MUST 400
    b"POST / HTTP/1.1\r\nHost: my-service.example.com\r\nContent-Length: abc\r\n\r\n",
], ids=["garbage", "junk-after-version", "nul-in-method", "bad-version",
        "space-in-field-name", "field-without-colon", "space-before-colon",
        "bad-content-length"])
def test_malformed_request_gets_400_and_close(shared_stack, data):
    srv, _, svc = shared_stack
    expect_json_error_then_close(srv.proxy_port, data, 400)
    assert svc.requests == 0
    assert_still_serves(srv)


def test_malformed_after_good_request_on_same_connection(shared_stack):
    srv, _, _ = shared_stack
    with RawConn(srv.proxy_port) as c:
        c.send(b"GET /echo HTTP/1.1\r\nHost: my-service.example.com\r\n\r\n")
        assert c.read_response().status == 200
        c.send(b"NOT A REQUEST AT ALL\r\n\r\n")
        r = c.read_response()
        assert r.status == 400, r
        assert c.closed_by_peer()
    assert_still_serves(srv)


@pytest.mark.parametrize("shape", ["one-huge-field", "many-fields"])
def test_oversized_head_gets_431(shared_stack, shape):
    srv, _, svc = shared_stack
    if shape == "one-huge-field":
        fields = b"X-Big: " + b"v" * (70 * 1024) + b"\r\n"
    else:
        fields = b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 1000) for i in range(80))
    data = b"GET /echo HTTP/1.1\r\nHost: my-service.example.com\r\n" + fields + b"\r\n"
    expect_json_error_then_close(srv.proxy_port, data, 431,
                                 "request header fields too large")
    assert svc.requests == 0
    assert_still_serves(srv)


def test_large_head_under_limit_is_served(shared_stack):
    srv, _, _ = shared_stack
    fields = b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 6000) for i in range(8))  # ~48 KiB
    with RawConn(srv.proxy_port) as c:
        c.send(b"GET /echo HTTP/1.1\r\nHost: my-service.example.com\r\n" + fields + b"\r\n")
        r = c.read_response()
    assert r.status == 200, r
    seen = dict((k, v) for k, v in r.json()["headers"])
    assert seen.get("x-f7") == "v" * 6000


def test_client_disconnect_mid_request_does_not_hurt(shared_stack):
    srv, _, _ = shared_stack
    for data in (b"GET /echo HTTP/1.1\r\nHost: my-serv",
                 b"POST /upload HTTP/1.1\r\nHost: my-service.example.com\r\n"
                 b"Content-Length: 1000000\r\n\r\n" + b"x" * 5000,
                 b"GET /hang HTTP/1.1\r\nHost: my-service.example.com\r\n\r\n"):
        with RawConn(srv.proxy_port) as c:
            c.send(data)
            time.sleep(0.1)
    assert_still_serves(srv)


# ---- bad configuration ----------------------------------------------------------------


def run_expect_exit_2(argv, timeout=5):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout * SLOW)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2, "expected exit 2, got %s; stderr:\n%s" % (p.returncode, p.stderr)
    assert len(lines) == 1, "expected one line on stderr, got:\n%s" % p.stderr
    return lines[0]


def server_base_args():
    return ["--proxy.bind-addr", "127.0.0.1:%d" % free_port(),
            "--upstream.bind-addr", "127.0.0.1:%d" % free_port(),
            "--admin.bind-addr", "127.0.0.1:%d" % free_port()]


@pytest.mark.parametrize("args,key", [
    (["--proxy.bogus", "1"], "proxy.bogus"),
    (["--proxy.timeout", "banana"], "proxy.timeout"),
    (["--grace-period", "-5s"], "grace-period"),
    (["--log.level", "loud"], "log.level"),
    (["--upstream.heartbeat-interval", "10"], "upstream.heartbeat-interval"),
    (["--proxy.bind-addr", "127.0.0.1:99999"], "proxy.bind-addr"),
], ids=["unknown-flag", "bad-duration", "negative-duration", "bad-level",
        "duration-without-unit", "port-out-of-range"])
def test_server_bad_flag_exits_2(args, key):
    line = run_expect_exit_2([binary("piko-server")] + server_base_args() + args)
    assert key in line, "the message must name %r: %r" % (key, line)


@pytest.mark.parametrize("yaml_text,line_no,key", [
    ("proxy:\n  timeout: 1s\n  bogus_key: 1\n", 3, "bogus"),
    ("log:\n  level: info\nproxy:\n  timeout: banana\n", 4, "timeout"),
    ("grace_period: 5s\nnot_a_section:\n  x: 1\n", 2, "not_a_section"),
], ids=["unknown-key", "bad-value", "unknown-section"])
def test_server_bad_yaml_exits_2_with_line(tmp_path, yaml_text, line_no, key):
    path = tmp_path / "piko.yaml"
    path.write_text(yaml_text)
    line = run_expect_exit_2([binary("piko-server")] + server_base_args() +
                             ["--config.path", str(path)])
    assert "%s:%d" % (path, line_no) in line, "want %s:%d in %r" % (path, line_no, line)
    assert key in line or key.replace("_", "-") in line, line


def test_server_malformed_yaml_exits_2(tmp_path):
    path = tmp_path / "piko.yaml"
    path.write_text("proxy:\n  timeout: 1s\n bad-indent: [\n")
    line = run_expect_exit_2([binary("piko-server")] + server_base_args() +
                             ["--config.path", str(path)])
    assert str(path) in line, line


def test_server_missing_config_file_exits_2(tmp_path):
    line = run_expect_exit_2([binary("piko-server")] + server_base_args() +
                             ["--config.path", str(tmp_path / "nope.yaml")])
    assert "nope.yaml" in line, line


def test_server_yaml_config_is_applied(piko, tmp_path):
    """Addresses and proxy.timeout from the YAML file (dashes become underscores)."""
    ports = piko.new_server_ports()
    path = tmp_path / "piko.yaml"
    path.write_text(
        "proxy:\n  bind_addr: 127.0.0.1:%d\n  timeout: 1s\n"
        "upstream:\n  bind_addr: 127.0.0.1:%d\n"
        "admin:\n  bind_addr: 127.0.0.1:%d\n"
        "log:\n  level: info\n"
        "grace_period: 5s\n" % (ports["proxy"], ports["upstream"], ports["admin"]))
    svc = piko.service()
    srv = piko.server({"proxy.bind-addr": None, "upstream.bind-addr": None,
                       "admin.bind-addr": None, "log.level": None, "grace-period": None},
                      ports=ports, args=["--config.path", str(path)])
    piko.sidecar({"my-service": svc.addr}, server=srv)
    t0 = time.monotonic()
    r = h1(srv.proxy_port, "GET", "/hang", EP, timeout=20)
    assert_json_error(r, 504, "upstream timeout")
    assert time.monotonic() - t0 < 8 * SLOW, "proxy.timeout from YAML not applied"


@pytest.mark.parametrize("args,key", [
    (["--bogus", "1"], "bogus"),
    (["--endpoint", "no-equals-sign"], "endpoint"),
    (["--endpoint", "bad!name=127.0.0.1:1"], "endpoint"),
    (["--endpoint", "ok=127.0.0.1:99999"], "endpoint"),
    (["--log.level", "loud"], "log.level"),
    (["--grace-period", "soon"], "grace-period"),
], ids=["unknown-flag", "endpoint-no-equals", "endpoint-bad-id", "endpoint-bad-port",
        "bad-level", "bad-duration"])
def test_sidecar_bad_flag_exits_2(args, key):
    argv = [binary("piko-sidecar"), "--connect.url", "http://127.0.0.1:%d" % free_port(),
            "--admin.bind-addr", "127.0.0.1:%d" % free_port()]
    if "--endpoint" not in args:
        argv += ["--endpoint", "my-service=127.0.0.1:%d" % free_port()]
    line = run_expect_exit_2(argv + args)
    assert key in line, "the message must name %r: %r" % (key, line)


# ---- unreachable server ----------------------------------------------------------------


def test_sidecar_with_unreachable_server_keeps_trying(piko):
    svc = piko.service()
    ports = piko.new_server_ports()  # nothing listens there yet
    sc = piko.sidecar({"my-service": svc.addr},
                      connect_url="http://127.0.0.1:%d" % ports["upstream"], wait=False)
    sc.wait_log(lambda text: "connection refused" in text.lower(), timeout=5,
                message="a warning naming the reason (Connection refused)")
    assert sc.running(), "an unreachable server is not fatal"
    assert sc.admin("/health")[0] == 200
    assert sc.ready_status() == 503
    time.sleep(0.5)
    assert sc.running() and sc.ready_status() == 503
    # It kept retrying: once a server listens there, the tunnel comes up.
    srv = piko.server(ports=ports)
    sc.wait_ready(timeout=20)
    piko.wait_routable(srv, "my-service")
    assert_still_serves(srv)


@pytest.mark.parametrize("key", ["proxy.bind-addr", "upstream.bind-addr", "admin.bind-addr",
                                 "cluster.bind-addr"])
def test_address_in_use_names_the_option(key):
    """A port that cannot be bound is reported with the option at fault (it used to say
    only "cannot listen on ..."): `make demo` with :8003 taken could not tell which."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    addr = "127.0.0.1:%d" % busy.getsockname()[1]
    try:
        argv = [binary("piko-server")]
        for k in ("proxy.bind-addr", "upstream.bind-addr", "admin.bind-addr",
                  "cluster.bind-addr"):
            argv += ["--" + k, addr if k == key else "127.0.0.1:%d" % free_port()]
        argv += ["--cluster.join", "127.0.0.1:1", "--cluster.secret", "s" * 32]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10 * SLOW)
        assert p.returncode != 0
        assert "%s: cannot listen on '%s'" % (key, addr) in p.stderr, p.stderr
    finally:
        busy.close()
