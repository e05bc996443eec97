"""TLS on the server's ports and in the sidecar (docs/manage/security.md, "TLS"):
<port>.tls.cert/.key/.client-cas on proxy, upstream, admin and cluster; ALPN h2 and
http/1.1 on the proxy port; the sidecar verifying the upstream port against
--connect.tls.root-cas, with a client certificate for mTLS, or not at all
(--connect.tls.insecure-skip-verify, with a warning); SIGHUP reloading certificates
(new connections see the new one, established ones go on, a bad file keeps the old one);
--forward over https with the close_notify of PROTOCOL.md 2; a 3-node cluster with TLS
and mTLS instead of the cluster secret. Certificates are made with the openssl CLI."""

import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time

import pytest

from cluster import Cluster, eventually
from conftest import binary, free_port
from helpers import SLOW, poll
from services import pattern_sha256
from tcp_services import TcpService, echo_roundtrip, plain_connect, tcp_sidecar

EP = "my-service"


# ---------------------------------------------------------------------------------------
# Certificates


def _openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, capture_output=True)


def _key(path):
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out",
             str(path))


def _issue(d, name, ca, cn, ext):
    """name.key + name.pem, a leaf signed by ca (a prefix in d), extensions ext."""
    _key(d / (name + ".key"))
    _openssl("req", "-new", "-key", str(d / (name + ".key")), "-subj", "/CN=" + cn, "-out",
             str(d / (name + ".csr")))
    (d / (name + ".ext")).write_text(ext)
    _openssl("x509", "-req", "-in", str(d / (name + ".csr")), "-CA", str(d / (ca + ".pem")),
             "-CAkey", str(d / (ca + ".key")), "-CAcreateserial", "-days", "2", "-extfile",
             str(d / (name + ".ext")), "-out", str(d / (name + ".pem")))


def _ca(d, name, cn):
    _key(d / (name + ".key"))
    _openssl("req", "-x509", "-new", "-key", str(d / (name + ".key")), "-subj", "/CN=" + cn,
             "-days", "2", "-out", str(d / (name + ".pem")))


SERVER_EXT = ("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
              "extendedKeyUsage=serverAuth,clientAuth\n")
CLIENT_EXT = "extendedKeyUsage=clientAuth\n"


class Certs:
    def __init__(self, d):
        self.d = d
        _ca(d, "ca", "piko test CA")
        _ca(d, "other-ca", "someone else's CA")
        _issue(d, "srv", "ca", "localhost", SERVER_EXT)
        _issue(d, "srv2", "ca", "localhost", SERVER_EXT)  # for the reload: a new serial
        _issue(d, "client", "ca", "sidecar-1", CLIENT_EXT)
        _issue(d, "stranger", "other-ca", "stranger", CLIENT_EXT)

    def __getitem__(self, name):
        return str(self.d / name)

    def serial(self, name):
        out = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", self[name]],
                             check=True, capture_output=True, text=True).stdout
        return out.strip().split("=", 1)[1].upper()

    def client_ctx(self, cert=None, alpn=None, verify=True):
        ctx = ssl.create_default_context(cafile=self["ca.pem"])
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cert:
            ctx.load_cert_chain(self[cert + ".pem"], self[cert + ".key"])
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certs(tmp_path_factory.mktemp("certs"))


def tls_flags(port, certs, client_cas=False, cert="srv"):
    f = {"%s.tls.cert" % port: certs[cert + ".pem"], "%s.tls.key" % port: certs[cert + ".key"]}
    if client_cas:
        f["%s.tls.client-cas" % port] = certs["ca.pem"]
    return f


# ---------------------------------------------------------------------------------------
# Clients


def https(port, path, ctx, headers=None, conn=None, timeout=5.0):
    """(status, body, HTTPSConnection) of one request; conn keeps a connection alive."""
    c = conn or http.client.HTTPSConnection("localhost", port, context=ctx,
                                           timeout=timeout * SLOW)
    c.request("GET", path, headers=headers or {})
    r = c.getresponse()
    return r.status, r.read(), c


def curl_https(port, path, certs, extra=(), headers=None):
    argv = ["curl", "-sS", "--max-time", str(10 * SLOW), "--cacert", certs["ca.pem"], "-o", "-",
            "-w", "\n%{http_code} %{http_version}"]
    for k, v in (headers or {}).items():
        argv += ["-H", "%s: %s" % (k, v)]
    argv += list(extra) + ["https://localhost:%d%s" % (port, path)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30 * SLOW)
    assert p.returncode == 0, "curl failed (%d): %s" % (p.returncode, p.stderr)
    body, _, last = p.stdout.rpartition("\n")
    status, version = last.split()
    return int(status), version, body


def handshake(port, ctx, alpn=None, timeout=5.0):
    """An open TLS socket to 127.0.0.1:port (server name localhost)."""
    if alpn:
        ctx.set_alpn_protocols(alpn)
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout * SLOW)
    try:
        return ctx.wrap_socket(raw, server_hostname="localhost")
    except Exception:
        raw.close()
        raise


def handshake_refused(port, ctx):
    """True when the server refuses the TLS connection (at the handshake or, TLS 1.3 with a
    client certificate required, with the alert that follows it)."""
    try:
        s = handshake(port, ctx)
    except (ssl.SSLError, OSError):
        return True
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        return s.recv(1) == b""
    except (ssl.SSLError, OSError):
        return True
    finally:
        s.close()


def wait_routable_tls(port, ctx, endpoint=EP, timeout=10.0):
    def ok():
        try:
            st, body, c = https(port, "/_probe", ctx, {"x-piko-endpoint": endpoint})
            c.close()
        except (OSError, http.client.HTTPException, ssl.SSLError):
            return False
        return not (st == 502 and b"no available upstreams" in body)
    poll(ok, timeout * SLOW, message="endpoint %s routable over TLS" % endpoint)


def https_sidecar(piko, srv, svc, certs, flags=None, wait=True, name="sidecar"):
    f = {"connect.tls.root-cas": certs["ca.pem"]}
    f.update(flags or {})
    return piko.sidecar({EP: svc.addr}, server=srv,
                        connect_url="https://localhost:%d" % srv.upstream_port, flags=f,
                        wait=wait, routable=wait, name=name)


def status_local(srv):
    st, body = srv.admin("/status/cluster/nodes/local")
    assert st == 200, body
    return json.loads(body)


# ---------------------------------------------------------------------------------------
# The proxy port


def test_proxy_port_tls_http11_and_h2_by_alpn(piko, certs):
    svc = piko.service()
    srv = piko.server(tls_flags("proxy", certs))
    piko.sidecar({EP: svc.addr}, server=srv, routable=False)
    ctx = certs.client_ctx()
    wait_routable_tls(srv.proxy_port, ctx)
    h = {"x-piko-endpoint": EP}
    st, ver, body = curl_https(srv.proxy_port, "/echo?v=1", certs, ["--http1.1"], h)
    assert (st, ver) == (200, "1.1"), body
    assert json.loads(body)["path"] == "/echo?v=1"
    st, ver, body = curl_https(srv.proxy_port, "/echo?v=2", certs, ["--http2"], h)
    assert (st, ver) == (200, "2"), body
    assert json.loads(body)["path"] == "/echo?v=2"
    # What the server picked, seen from the client; without ALPN the preface decides.
    for offer, want in ((["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1"),
                        (["spdy/3"], None)):
        with handshake(srv.proxy_port, certs.client_ctx(), offer) as s:
            assert s.selected_alpn_protocol() == want, offer
    st, body, c = https(srv.proxy_port, "/echo?noalpn=1", certs.client_ctx(), h)
    c.close()
    assert st == 200 and json.loads(body)["path"] == "/echo?noalpn=1"
    # x-forwarded-proto tells the service the client spoke https.
    assert ["x-forwarded-proto", "https"] in [list(x) for x in json.loads(body)["headers"]]
    # Plain HTTP to the TLS port is not served.
    with socket.create_connection(("127.0.0.1", srv.proxy_port), timeout=5 * SLOW) as s:
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nx-piko-endpoint: my-service\r\n\r\n")
        try:
            got = s.recv(100)
        except OSError:
            got = b""
        assert not got.startswith(b"HTTP/1.1 200"), got
    assert svc.requests == 3


def test_bulk_both_ways_over_tls_ports(piko, certs, tmp_path):
    """16 MiB down and 8 MiB up through a TLS proxy port (h2 and HTTP/1.1) and a TLS
    tunnel: every byte arrives in order (large writes, partial socket writes)."""
    svc = piko.service()
    f = tls_flags("proxy", certs)
    f.update(tls_flags("upstream", certs, client_cas=True))
    srv = piko.server(f)
    https_sidecar(piko, srv, svc, certs, {"connect.tls.cert": certs["client.pem"],
                                          "connect.tls.key": certs["client.key"]}, wait=False)
    ctx = certs.client_ctx()
    wait_routable_tls(srv.proxy_port, ctx)
    up = tmp_path / "up.bin"
    data = os.urandom(8 << 20)
    up.write_bytes(data)
    url = "https://localhost:%d" % srv.proxy_port
    for proto in ("--http2", "--http1.1"):
        out = tmp_path / "down.bin"
        argv = ["curl", "-sS", "--max-time", str(60 * SLOW), "--cacert", certs["ca.pem"], proto,
                "-H", "x-piko-endpoint: " + EP, "-o", str(out),
                url + "/download?bytes=%d&seed=5" % (16 << 20)]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=120 * SLOW)
        assert p.returncode == 0, p.stderr
        d = hashlib.sha256(out.read_bytes()).hexdigest()
        assert d == pattern_sha256(16 << 20, 5), proto
        argv = ["curl", "-sS", "--max-time", str(60 * SLOW), "--cacert", certs["ca.pem"], proto,
                "-H", "x-piko-endpoint: " + EP, "--data-binary", "@" + str(up),
                url + "/upload"]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=120 * SLOW)
        assert p.returncode == 0, p.stderr
        got = json.loads(p.stdout)
        assert got["length"] == len(data), proto
        assert got["sha256"] == hashlib.sha256(data).hexdigest(), proto


def test_proxy_port_handshake_timeout_and_failures_are_counted(piko, certs):
    srv = piko.server(dict(tls_flags("proxy", certs), **{"proxy.head-timeout": "1s"}))
    with socket.create_connection(("127.0.0.1", srv.proxy_port), timeout=10 * SLOW) as s:
        t0 = time.monotonic()
        assert s.recv(10) == b""  # closed by the server, no handshake from us
        assert time.monotonic() - t0 < 8 * SLOW
    # A client that trusts another CA aborts the handshake.
    bad = ssl.create_default_context(cafile=certs["other-ca.pem"])
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(srv.proxy_port, bad)
    srv.wait_log(lambda t: "handshake failed port=proxy" in t and "timeout" in t,
                 message="the handshake timeout logged")
    poll(lambda: status_local(srv)["tls"]["proxy"]["handshake_failures"] >= 2, 5 * SLOW,
         message="two failed handshakes counted")


# ---------------------------------------------------------------------------------------
# The upstream port and the sidecar


def test_upstream_tls_sidecar_verifies_with_root_cas(piko, certs):
    svc = piko.service()
    srv = piko.server(tls_flags("upstream", certs))
    https_sidecar(piko, srv, svc, certs)
    st, body = http.client.HTTPConnection("127.0.0.1", srv.proxy_port), None
    st.request("GET", "/echo?tunnel=tls", headers={"x-piko-endpoint": EP})
    r = st.getresponse()
    assert r.status == 200 and json.loads(r.read())["path"] == "/echo?tunnel=tls"
    # The upstream port speaks HTTP/1.1 only (then reverse h2 inside the upgrade).
    with handshake(srv.upstream_port, certs.client_ctx(), ["h2", "http/1.1"]) as s:
        assert s.selected_alpn_protocol() == "http/1.1"
    # A sidecar trusting another CA refuses the server, and says why.
    sc = https_sidecar(piko, srv, svc, certs, {"connect.tls.root-cas": certs["other-ca.pem"]},
                       wait=False, name="sidecar-wrong-ca")
    sc.wait_log(lambda t: "certificate verify failed" in t, message="the verify failure")
    assert sc.ready_status() == 503


def test_upstream_mtls_refuses_a_sidecar_without_client_certificate(piko, certs):
    svc = piko.service()
    srv = piko.server(tls_flags("upstream", certs, client_cas=True))
    sc = https_sidecar(piko, srv, svc, certs, wait=False, name="sidecar-no-cert")
    sc.wait_log(lambda t: "certificate required" in t,
                message="the refusal with its TLS reason")
    srv.wait_log(lambda t: "handshake failed port=upstream" in t and
                 "peer did not return a certificate" in t, message="the server's reason")
    assert sc.ready_status() == 503
    # A certificate from another CA is refused too.
    sc2 = https_sidecar(piko, srv, svc, certs,
                        {"connect.tls.cert": certs["stranger.pem"],
                         "connect.tls.key": certs["stranger.key"]}, wait=False,
                        name="sidecar-stranger")
    srv.wait_log(lambda t: "certificate verify failed" in t or "unknown ca" in t,
                 message="the stranger's certificate refused")
    assert sc2.ready_status() == 503
    sc.stop()
    sc2.stop()
    # With a certificate of the CA it works.
    https_sidecar(piko, srv, svc, certs, {"connect.tls.cert": certs["client.pem"],
                                          "connect.tls.key": certs["client.key"]},
                  name="sidecar-cert")
    c = http.client.HTTPConnection("127.0.0.1", srv.proxy_port, timeout=5 * SLOW)
    c.request("GET", "/echo?mtls=1", headers={"x-piko-endpoint": EP})
    assert c.getresponse().status == 200
    tls = status_local(srv)["tls"]["upstream"]
    assert tls["mtls"] is True and tls["handshake_failures"] >= 2, tls
    assert handshake_refused(srv.upstream_port, certs.client_ctx())


def test_insecure_skip_verify_works_and_warns(piko, certs):
    svc = piko.service()
    srv = piko.server(tls_flags("upstream", certs))
    sc = piko.sidecar({EP: svc.addr}, server=srv,
                      connect_url="https://localhost:%d" % srv.upstream_port,
                      args=["--connect.tls.insecure-skip-verify"])
    assert "warn" in sc.log_text() and "insecure-skip-verify is on" in sc.log_text()
    c = http.client.HTTPConnection("127.0.0.1", srv.proxy_port, timeout=5 * SLOW)
    c.request("GET", "/echo", headers={"x-piko-endpoint": EP})
    assert c.getresponse().status == 200


# ---------------------------------------------------------------------------------------
# SIGHUP


def test_sighup_reloads_certificates(piko, certs, tmp_path):
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(certs["srv.pem"], live_cert)
    shutil.copy(certs["srv.key"], live_key)
    svc = piko.service()
    srv = piko.server({"proxy.tls.cert": str(live_cert), "proxy.tls.key": str(live_key)})
    piko.sidecar({EP: svc.addr}, server=srv, routable=False)
    ctx = certs.client_ctx()
    wait_routable_tls(srv.proxy_port, ctx)
    h = {"x-piko-endpoint": EP}
    old, new = certs.serial("srv.pem"), certs.serial("srv2.pem")
    assert old != new

    st, _, kept = https(srv.proxy_port, "/echo?n=1", ctx, h)  # stays open (keep-alive)
    assert st == 200
    assert kept.sock.getpeercert()["serialNumber"] == old

    shutil.copy(certs["srv2.pem"], tmp_path / "new.pem")
    shutil.copy(certs["srv2.key"], tmp_path / "new.key")
    os.replace(tmp_path / "new.pem", live_cert)
    os.replace(tmp_path / "new.key", live_key)
    srv.popen.send_signal(signal.SIGHUP)
    srv.wait_log(lambda t: "reloaded port=proxy" in t, message="the reload")

    st, _, fresh = https(srv.proxy_port, "/echo?n=2", ctx, h)
    assert st == 200
    assert fresh.sock.getpeercert()["serialNumber"] == new
    fresh.close()
    st, _, _ = https(srv.proxy_port, "/echo?n=3", ctx, h, conn=kept)
    assert st == 200, "the established connection must go on"
    assert kept.sock.getpeercert()["serialNumber"] == old
    kept.close()

    # A broken file: the current certificate stays, and the log says which file failed.
    live_cert.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n")
    srv.popen.send_signal(signal.SIGHUP)
    srv.wait_log(lambda t: "reload failed port=proxy" in t and "proxy.tls.cert" in t and
                 str(live_cert) in t, message="the failed reload naming key and file")
    st, _, c = https(srv.proxy_port, "/echo?n=4", ctx, h)
    assert st == 200
    assert c.sock.getpeercert()["serialNumber"] == new
    c.close()
    assert srv.running()


def test_sidecar_sighup_rereads_its_client_certificate(piko, certs, tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "c.key"
    shutil.copy(certs["client.pem"], cert)
    shutil.copy(certs["client.key"], key)
    svc = piko.service()
    srv = piko.server(tls_flags("upstream", certs, client_cas=True))
    sc = https_sidecar(piko, srv, svc, certs,
                       {"connect.tls.cert": str(cert), "connect.tls.key": str(key)})
    key.write_text("garbage\n")
    sc.popen.send_signal(signal.SIGHUP)
    sc.wait_log(lambda t: "TLS reload failed" in t and "connect.tls.key" in t,
                message="the failed reload naming the key")
    shutil.copy(certs["client.key"], key)
    sc.popen.send_signal(signal.SIGHUP)
    sc.wait_log(lambda t: "TLS settings reloaded" in t, message="the reload")
    assert sc.running() and sc.ready_status() == 200


# ---------------------------------------------------------------------------------------
# Raw streams over TLS: --forward over https, close_notify


def test_forward_over_https(piko, certs):
    echo = TcpService(name="echo")
    push = TcpService(name="push", mode="push", nbytes=300000, seed=7)
    piko.services += [echo, push]
    srv = piko.server(tls_flags("proxy", certs))
    tcp_sidecar(piko, srv, tcp={"echo": echo.addr, "push": push.addr}, name="exposer",
                wait=False)
    ctx = certs.client_ctx()
    wait_routable_tls(srv.proxy_port, ctx, "echo")
    wait_routable_tls(srv.proxy_port, ctx, "push")
    p_echo, p_push = free_port(), free_port()
    fwd = piko.sidecar({}, server=srv, wait=False, name="forwarder", flags={
        "forward": ["127.0.0.1:%d=echo" % p_echo, "127.0.0.1:%d=push" % p_push],
        "forward.url": "https://localhost:%d" % srv.proxy_port,
        "connect.tls.root-cas": certs["ca.pem"]})
    fwd.wait_log(lambda t: "listening local=127.0.0.1:%d" % p_push in t, message="forwards")
    for i in range(3):
        with plain_connect(p_echo) as s:
            msg = b"over tls %d " % i * 1000
            assert echo_roundtrip(s, msg, shutdown=False) == msg
    # The service's FIN comes back as the proxy's close_notify, then as a FIN here.
    with plain_connect(p_push) as s:
        h, n = hashlib.sha256(), 0
        while True:
            d = s.recv(65536)
            if not d:
                break
            h.update(d)
            n += len(d)
        assert n == 300000 and h.hexdigest() == pattern_sha256(300000, 7)


def test_raw_stream_end_is_a_close_notify(piko, certs):
    """PROTOCOL.md 2: over TLS the end of the stream from the tunnel side is flushed, then
    a close_notify (Python raises SSLEOFError on an EOF without one)."""
    push = TcpService(name="push", mode="push", nbytes=200000, seed=3)
    piko.services.append(push)
    srv = piko.server(tls_flags("proxy", certs))
    tcp_sidecar(piko, srv, tcp={"push": push.addr}, wait=False)
    wait_routable_tls(srv.proxy_port, certs.client_ctx(), "push")
    s = handshake(srv.proxy_port, certs.client_ctx(), ["http/1.1"])
    with s:
        s.sendall(b"GET /_piko/v1/tcp/push HTTP/1.1\r\nHost: localhost\r\n"
                  b"Connection: Upgrade\r\nUpgrade: piko-tcp\r\n\r\n")
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = s.recv(4096)
            assert d, buf
            buf += d
        head, _, rest = buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        h = hashlib.sha256(rest)
        while True:
            d = s.recv(65536)  # SSLEOFError here would mean no close_notify
            if not d:
                break
            h.update(d)
        assert h.hexdigest() == pattern_sha256(200000, 3)


# ---------------------------------------------------------------------------------------
# The admin port


def test_admin_over_tls(piko, certs):
    srv = piko.server(tls_flags("admin", certs), wait=False)
    ctx = certs.client_ctx()

    def ready():
        try:
            st, body, c = https(srv.admin_port, "/ready", ctx)
            c.close()
            return st == 200
        except (OSError, ssl.SSLError, http.client.HTTPException):
            return False
    poll(ready, 10 * SLOW, message="admin /ready over TLS")
    st, body, c = https(srv.admin_port, "/status/cluster/nodes/local", ctx)
    c.close()
    assert st == 200 and "admin" in json.loads(body)["tls"]
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(srv.admin_port, ssl.create_default_context(cafile=certs["other-ca.pem"]))
    srv.wait_log(lambda t: "handshake failed port=admin" in t, message="the admin failure")


def test_admin_mtls(piko, certs):
    srv = piko.server(tls_flags("admin", certs, client_cas=True), wait=False)

    def ready():
        try:
            st, _, c = https(srv.admin_port, "/health", certs.client_ctx("client"))
            c.close()
            return st == 200
        except (OSError, ssl.SSLError, http.client.HTTPException):
            return False
    poll(ready, 10 * SLOW, message="admin /health with a client certificate")
    assert handshake_refused(srv.admin_port, certs.client_ctx())


# ---------------------------------------------------------------------------------------
# Configuration errors


def run_server(args, timeout=10):
    argv = [binary("piko-server"), "--proxy.bind-addr", "127.0.0.1:%d" % free_port(),
            "--upstream.bind-addr", "127.0.0.1:%d" % free_port(), "--admin.bind-addr",
            "127.0.0.1:%d" % free_port(), "--cluster.bind-addr",
            "127.0.0.1:%d" % free_port()] + args
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout * SLOW)
    except subprocess.TimeoutExpired:
        raise AssertionError("piko-server %r did not exit" % args)
    return p.returncode, p.stderr


def test_config_errors_name_the_key_and_file(certs, tmp_path):
    rc, err = run_server(["--proxy.tls.cert", certs["srv.pem"]])
    assert rc == 2 and "proxy.tls.key" in err, err
    rc, err = run_server(["--upstream.tls.key", certs["srv.key"]])
    assert rc == 2 and "upstream.tls.cert" in err, err
    rc, err = run_server(["--cluster.tls.cert", certs["srv.pem"], "--cluster.tls.key",
                          certs["srv.key"], "--cluster.join", "127.0.0.1:1"])
    assert rc == 2 and "cluster.tls.root-cas" in err, err
    missing = str(tmp_path / "nope.pem")
    rc, err = run_server(["--admin.tls.cert", missing, "--admin.tls.key", certs["srv.key"]])
    assert rc == 1 and "admin.tls.cert" in err and missing in err, err
    rc, err = run_server(["--proxy.tls.cert", certs["srv.pem"], "--proxy.tls.key",
                          certs["client.key"]])
    assert rc == 1 and "proxy.tls.key" in err and "mismatch" in err, err
    bad = tmp_path / "bad.pem"
    bad.write_text("hello\n")
    rc, err = run_server(["--proxy.tls.cert", certs["srv.pem"], "--proxy.tls.key",
                          certs["srv.key"], "--proxy.tls.client-cas", str(bad)])
    assert rc == 1 and "proxy.tls.client-cas" in err and str(bad) in err, err


# ---------------------------------------------------------------------------------------
# The cluster


def test_cluster_tls_and_mtls_routes_across_nodes(piko, certs):
    flags = {"cluster.tls.cert": certs["srv.pem"], "cluster.tls.key": certs["srv.key"],
             "cluster.tls.client-cas": certs["ca.pem"], "cluster.tls.root-cas": certs["ca.pem"]}
    cl = Cluster(piko, 3, secret=None, flags=flags)  # mTLS replaces the cluster secret
    cl.wait_converged()
    svc = piko.service()
    piko.sidecar({EP: svc.addr}, server=cl.nodes[0])
    cl.wait_routes(EP)
    for i in (1, 2):  # forwarded over a TLS peer link to node 1
        r = cl.get(i, "/echo?node=%d" % i, endpoint=EP)
        assert r.status == 200, r
        assert json.loads(r.body)["path"] == "/echo?node=%d" % i
    assert svc.requests >= 2
    port = cl.nodes[0].cluster_port
    # A peer's certificate authenticates a state call without any secret...
    st, body, c = https(port, "/_piko/v1/cluster/state", certs.client_ctx("client"))
    c.close()
    assert st == 200 and json.loads(body)["node_id"] == cl.node_id(0)
    # ...and without a certificate of the cluster CA nothing gets through.
    assert handshake_refused(port, certs.client_ctx())
    assert handshake_refused(port, certs.client_ctx("stranger"))
    with socket.create_connection(("127.0.0.1", port), timeout=5 * SLOW) as s:
        s.sendall(b"GET /_piko/v1/cluster/state HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            got = s.recv(100)
        except OSError:
            got = b""
        assert not got.startswith(b"HTTP/1.1 200"), got
    for node in cl.nodes:
        assert "handshake failed" not in "\n".join(
            line for line in node.log_text().splitlines() if "port=cluster peer=127" in line
            and "unknown ca" in line)


def test_cluster_without_the_peers_ca_does_not_converge(piko, certs):
    """Tests can fail: a node verifying peers against another CA gets no state."""
    flags = {"cluster.tls.cert": certs["srv.pem"], "cluster.tls.key": certs["srv.key"],
             "cluster.tls.root-cas": certs["ca.pem"]}
    cl = Cluster(piko, 2, flags=flags, wait=False)
    cl.nodes[1].stop()
    cl.start(1, wait=False, flags={"cluster.tls.root-cas": certs["other-ca.pem"]})
    cl.nodes[1].wait_log(lambda t: "SSL peer certificate" in t,
                         timeout=10, message="peer verification failure")
    eventually(lambda: _not_member(cl, 1, 0), 5 * SLOW)


def _not_member(cl, i, j):
    view = cl.view(i)
    assert cl.node_id(j) not in view or view[cl.node_id(j)]["status"] != "active", view
    return True
