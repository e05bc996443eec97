"""What a new user meets first (issue "Observability", the "first run" list): a
forward-only sidecar that logs what it does and never speaks of tunnels it does not open;
the admin port's responses written like the proxy port's (lower-case field names); and
configuration errors in one form on both binaries, `PROG: config: [FILE:LINE: ]KEY: ...`
with exit status 2, while a start-up failure is an error line of the log (exit status 1)."""

import os
import re
import socket
import subprocess

import pytest

from conftest import binary, free_port
from helpers import SLOW, RawConn
from tcp_services import (TcpService, echo_roundtrip, outcome_of_reading, plain_connect,
                          tcp_sidecar)

# ---- 7a: a forward-only sidecar ----------------------------------------------------------


def test_forward_only_sidecar_logs_its_forwards_and_no_tunnel(piko):
    svc = TcpService(name="echo")
    piko.services.append(svc)
    srv = piko.server()
    port = free_port()
    tcp_sidecar(piko, srv, tcp={"db": svc.addr}, name="exposer")
    fwd = tcp_sidecar(piko, srv, forwards={port: "db"}, name="forwarder")
    with plain_connect(port) as s:
        assert echo_roundtrip(s, b"hello") == b"hello"
    # One connection the proxy refuses (no such endpoint) is logged as a forward's failure.
    missing = free_port()
    fwd2 = tcp_sidecar(piko, srv, forwards={missing: "nobody"}, name="forwarder-2")
    with plain_connect(missing) as s:
        outcome, n = outcome_of_reading(s, 5)
        assert outcome in ("eof", "reset") and n == 0, (outcome, n)
    fwd2.wait_log(lambda t: "closing the connection" in t, message="the refused forward")
    for proc in (fwd, fwd2):
        assert proc.stop() == 0
    via = "server=http://127.0.0.1:%d" % srv.proxy_port
    text = fwd.log_text()
    assert "listening local=127.0.0.1:%d endpoint=db %s" % (port, via) in text, text
    assert "every forwarded connection closed: exiting" in text, text
    assert "forwarded connections open" in text, text
    text2 = fwd2.log_text()
    assert "endpoint=nobody: closing the connection: proxy answered status 502" in text2, text2
    for t in (text, text2):
        # Nothing about connect.url (never dialled) nor about tunnels (none is opened). The
        # binaries' directory may appear in the log (and hold any word): left out.
        t = t.replace(os.environ.get("PIKO_BIN_DIR", "\0"), "")
        assert "connect urls" not in t, t
        assert "tunnel" not in t.lower(), t


def test_sidecar_with_endpoints_still_speaks_of_tunnels(piko):
    """The other side of the test above: the wording depends on what the sidecar runs."""
    svc = piko.service()
    srv = piko.server()
    sc = piko.sidecar({"my-service": svc.addr}, server=srv)
    assert sc.stop() == 0
    text = sc.log_text()
    assert "connect urls=%s connections=1" % srv.connect_url in text, text
    assert "shutting down: 0 streams in flight\n" in text, text
    assert "every tunnel closed: exiting" in text, text
    assert "forwarded" not in text, text


# ---- 7b: one style of response heads on the admin and proxy ports ---------------------------


def raw_head(port, request):
    with RawConn(port) as c:
        c.send(request)
        return c.read_until(b"\r\n\r\n")


def field_names(head):
    lines = head.decode("latin-1").split("\r\n")[1:]
    return [ln.split(":", 1)[0] for ln in lines if ln]


def test_admin_and_proxy_ports_write_field_names_alike(piko):
    svc = piko.service()  # it writes Content-Type, X-Service-Name...
    srv = piko.server()
    sc = piko.sidecar({"my-service": svc.addr}, server=srv)
    heads = {
        "proxy, relayed": raw_head(srv.proxy_port, b"GET /echo HTTP/1.1\r\nHost: x\r\n"
                                   b"x-piko-endpoint: my-service\r\n\r\n"),
        "proxy, its own error": raw_head(srv.proxy_port, b"GET / HTTP/1.1\r\nHost: x\r\n"
                                         b"x-piko-endpoint: nobody\r\n\r\n"),
        "server admin 200": raw_head(srv.admin_port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"),
        "server admin 404": raw_head(srv.admin_port, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"),
        "server admin 405": raw_head(srv.admin_port, b"POST /health HTTP/1.1\r\nHost: x\r\n"
                                     b"Content-Length: 0\r\n\r\n"),
        "server admin close": raw_head(srv.admin_port, b"GET /metrics HTTP/1.0\r\n\r\n"),
        "sidecar admin": raw_head(sc.admin_port, b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n"),
    }
    assert b"X-Service-Name" not in heads["proxy, relayed"]  # relayed, and in our style
    for what, head in heads.items():
        names = field_names(head)
        assert names, (what, head)
        assert names == [n.lower() for n in names], (what, head)
        assert b"\r\ncontent-type: " in head, (what, head)
    assert b"\r\nallow: GET, HEAD\r\n" in heads["server admin 405"]
    assert b"\r\nconnection: close\r\n" in heads["server admin close"]
    assert b"\r\nx-service-name: " in heads["proxy, relayed"]


# ---- 7c: configuration errors ---------------------------------------------------------------


def base_args(prog):
    if prog == "piko-server":
        return ["--proxy.bind-addr", "127.0.0.1:%d" % free_port(),
                "--upstream.bind-addr", "127.0.0.1:%d" % free_port(),
                "--admin.bind-addr", "127.0.0.1:%d" % free_port(),
                "--cluster.bind-addr", "127.0.0.1:%d" % free_port()]
    return ["--connect.url", "http://127.0.0.1:%d" % free_port(),
            "--admin.bind-addr", "127.0.0.1:%d" % free_port(), "--endpoint", "x=1"]


def run(prog, args, timeout=10):
    try:
        p = subprocess.run([binary(prog)] + base_args(prog) + args, capture_output=True,
                           text=True, timeout=timeout * SLOW)
    except subprocess.TimeoutExpired:
        raise AssertionError("%s %r did not exit" % (prog, args))
    return p.returncode, [ln for ln in p.stderr.splitlines() if ln.strip()]


def config_error(prog, args):
    rc, lines = run(prog, args)
    assert rc == 2, (rc, lines)
    assert len(lines) == 1, lines
    prefix = "%s: config: " % prog
    assert lines[0].startswith(prefix), lines[0]
    return lines[0][len(prefix):]


FLAG_CASES = [
    (["--grace-period", "soon"], "grace-period: invalid duration 'soon'"),
    (["--grace-period"], "grace-period: the flag needs a value"),
    (["--grace.period=1s"], "--grace.period: unknown flag (see --help)"),
    (["--admin.bind-addr", "nowhere"], "admin.bind-addr: invalid address 'nowhere'"),
    (["--admin.max-connections=-1"], "admin.max-connections: must not be negative"),
    (["--log.level", "loud"], "log.level: invalid level 'loud'"),
    (["--dns.servers", "ns1.example.com"], "dns.servers: 'ns1.example.com' is not an IP"),
]


@pytest.mark.parametrize("prog", ["piko-server", "piko-sidecar"])
@pytest.mark.parametrize("args,want", FLAG_CASES,
                         ids=["bad-value", "no-value", "unknown-flag", "bad-address",
                              "negative", "bad-level", "dns-servers"])
def test_flag_errors_one_form(prog, args, want):
    msg = config_error(prog, args)
    assert msg.startswith(want), msg


def test_program_specific_flag_errors():
    assert config_error("piko-server", ["--upstream.heartbeat-timeout=0"]).startswith(
        "upstream.heartbeat-timeout: must be greater than 0")
    assert config_error("piko-server", ["--cluster.resolve-interval=10ms"]).startswith(
        "cluster.resolve-interval: must be at least 100ms")
    assert config_error("piko-sidecar", ["--connect.connection-window=1"]).startswith(
        "connect.connection-window: must be between 64KiB and 2GiB")
    assert config_error("piko-sidecar", ["--endpoint", "nonsense"]).startswith(
        "endpoint: 'nonsense' is not NAME=ADDR")


YAML_CASES = [
    ("log:\n  level: info\ngrace_period: soon\n", 3, "grace-period: invalid duration 'soon'"),
    ("admin:\n  bind_addr: 127.0.0.1:1\n  max_connectons: 5\n", 3,
     "admin.max_connectons: unknown key"),
    ("admin: [\n", 2, "YAML syntax error: "),
    ("grace_period: 1s\ngrace-period: 2s\n", 2, "grace-period: duplicate key"),
    # Refused by a check after the file was read: still the file's line.
    ("log: {level: info}\n\nadmin:\n  max_connections: -1\n", 4,
     "admin.max-connections: must not be negative"),
    ("dns:\n  servers: 127.0.0.1,resolver\n", 2, "dns.servers: 'resolver' is not an IP"),
]


@pytest.mark.parametrize("prog", ["piko-server", "piko-sidecar"])
@pytest.mark.parametrize("yaml_text,line,want", YAML_CASES,
                         ids=["bad-value", "unknown-key", "syntax", "duplicate",
                              "checked-later", "dns-servers"])
def test_yaml_errors_one_form_with_the_line(tmp_path, prog, yaml_text, line, want):
    path = tmp_path / "piko.yaml"
    path.write_text(yaml_text)
    msg = config_error(prog, ["--config.path", str(path)])
    assert msg.startswith("%s:%d: %s" % (path, line, want)), msg


@pytest.mark.parametrize("prog", ["piko-server", "piko-sidecar"])
def test_flag_over_the_file_is_the_one_named(tmp_path, prog):
    """The file's value is overridden: the flag is at fault, and no file line is given."""
    path = tmp_path / "piko.yaml"
    path.write_text("grace_period: 1s\nadmin:\n  max_connections: 5\n")
    msg = config_error(prog, ["--config.path", str(path), "--admin.max-connections=-1"])
    assert msg == "admin.max-connections: must not be negative", msg
    # ...and the file's bad value alone is named with its line.
    path.write_text("grace_period: 1s\nadmin:\n  max_connections: -1\n")
    msg = config_error(prog, ["--config.path", str(path)])
    assert msg == "%s:3: admin.max-connections: must not be negative" % path, msg


@pytest.mark.parametrize("prog", ["piko-server", "piko-sidecar"])
def test_missing_config_file_names_config_path(tmp_path, prog):
    msg = config_error(prog, ["--config.path", str(tmp_path / "nope.yaml")])
    assert msg == "config.path: cannot read '%s': No such file or directory" % (
        tmp_path / "nope.yaml"), msg


def test_start_failure_is_a_log_line_naming_key_and_file(tmp_path):
    """Valid configuration, unusable file: exit status 1 and an error line of the
    configured log (JSON here), pointing at the file's line."""
    path = tmp_path / "piko.yaml"
    missing = tmp_path / "missing.pem"
    path.write_text("proxy:\n  tls:\n    cert: %s\n    key: %s.key\n" % (missing, missing))
    rc, lines = run("piko-server", ["--config.path", str(path), "--log.format", "json"])
    assert rc == 1, (rc, lines)
    last = lines[-1]
    assert '"level":"error"' in last and '"subsystem":"server"' in last, lines
    assert "cannot start: %s:3: proxy.tls.cert: cannot read '%s'" % (path, missing) in last, last
    assert not any(": config: " in ln for ln in lines), lines


def test_sidecar_start_failure_names_the_forward():
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        rc, lines = run("piko-sidecar", ["--forward", "127.0.0.1:%d=db" % port])
    finally:
        busy.close()
    assert rc == 1, (rc, lines)
    assert re.search(r" error +sidecar +cannot start: forward: cannot listen on "
                     r"'127\.0\.0\.1:%d'" % port, lines[-1]), lines
