"""Security regressions (issue "Security", second review; docs/manage/security.md):

- the cluster port: a standalone node (no --cluster.join) does not open it, so a forged
  forwarded request (piko-endpoint + piko-forwarded-by, no secret) cannot bypass
  proxy.auth through it; a node with --cluster.join refuses to start without
  cluster.secret, cluster mTLS or an explicit --cluster.insecure-no-secret (which warns);
  with the secret, forged streams get 401 and the secret is what peers forward with;
- TLS key exchange groups: X25519, P-256 and P-384 only by default (--tls.groups), so
  ffdhe handshakes (~190 ms of server CPU each for ffdhe8192) are refused and a flood of
  them costs the server little; successful handshakes are counted;
- the TLS handshake and the first request head have a deadline from accept (a ClientHello
  or a head trickled a byte every 0.5 s does not hold a connection) and a connection
  counts against the port's limit from accept (proxy and upstream ports; plain proxy port);
- descriptor exhaustion (the server under `prlimit --nofile=1024:1024`, 1,100 connections
  held): the accept loop does not spin and logs at most about once a second, and the
  server serves again once the connections are gone;
- duplicate authorization fields under proxy.auth: only the field that carried the token
  is removed (HTTP/1.1 and h2c); two x-piko-authorization fields are a 400.

Every test fails against the code before the fix (d0aceab) and passes after it."""

import http.client
import json
import os
import re
import resource
import selectors
import socket
import ssl
import subprocess
import threading
import time

import pytest

from cluster import SECRET as CLUSTER_SECRET
from cluster import Cluster
from conftest import binary, free_port, server_has_flag
from helpers import SLOW, RawConn, Response, assert_json_error, h1, poll
from tcp_services import END_HEADERS, END_STREAM, HEADERS, H2Client, H2Stream, hpack_encode
from tokens import claims, hs256

PROXY_SECRET = "e2e-proxy-secret-46-0123456789abcdef"
EP = "echo"
BASIC = "Basic dXNlcjpwYXNz"  # user:pass


def ptoken(endpoints=None):
    return hs256(PROXY_SECRET, claims(exp_in=600, endpoints=endpoints))


# ---------------------------------------------------------------------------------------
# Helpers


def cpu_seconds(pid):
    """utime + stime of a process, in seconds (/proc/PID/stat fields 14 and 15)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_lines_between(path, start, end, sample=1 << 20):
    """Lines written to a log file between byte offsets start and end (counted in the
    first `sample` bytes and extrapolated: a spinning server writes hundreds of MB)."""
    n = end - start
    if n <= 0:
        return 0
    with open(path, "rb") as f:
        f.seek(start)
        chunk = f.read(min(n, sample))
    return chunk.count(b"\n") * n // max(1, len(chunk))


def run_server(args, timeout=3.0):
    """(exit status, stderr) of piko-server with args on fresh loopback ports, or
    (None, stderr so far) when it is still running after timeout (then killed)."""
    argv = [binary("piko-server"), "--proxy.bind-addr", "127.0.0.1:%d" % free_port(),
            "--upstream.bind-addr", "127.0.0.1:%d" % free_port(), "--admin.bind-addr",
            "127.0.0.1:%d" % free_port()] + list(args)
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout * SLOW)
    except subprocess.TimeoutExpired as e:
        err = e.stderr or b""
        return None, err.decode(errors="replace") if isinstance(err, bytes) else err
    return p.returncode, p.stderr


def wait_routed(srv, endpoint, token, timeout=10.0):
    """Until the proxy (with proxy.auth) no longer answers 502 "no available upstreams"."""
    def routed():
        r = h1(srv.proxy_port, "GET", "/_probe", headers={
            "x-piko-endpoint": endpoint, "x-piko-authorization": "Bearer " + token})
        return not (r.status == 502 and b"no available upstreams" in r.body)
    poll(routed, timeout * SLOW, message="endpoint %s routed" % endpoint)


def curl_h2c(port, path, fields, timeout=5.0):
    """curl --http2-prior-knowledge: (curl exit status, HTTP status or None, body)."""
    argv = ["curl", "-sS", "--max-time", str(timeout * SLOW), "--http2-prior-knowledge",
            "-o", "-", "-w", "\n%{http_code}"]
    for k, v in fields:
        argv += ["-H", "%s: %s" % (k, v)]
    argv.append("http://127.0.0.1:%d%s" % (port, path))
    p = subprocess.run(argv, capture_output=True, timeout=timeout * SLOW + 10)
    if p.returncode != 0:
        return p.returncode, None, p.stderr
    body, _, code = p.stdout.rpartition(b"\n")
    return 0, int(code), body


def h2_request(port, fields, path="/echo", timeout=10.0):
    """One GET stream with exactly these extra fields (repeats allowed) on a new h2c
    connection; returns the H2Stream (status None if the connection closed first)."""
    c = H2Client(port, timeout=timeout)
    try:
        sid = c.next_sid
        c.next_sid += 2
        st = H2Stream(sid)
        st.send_window = c.peer_initial_window
        c.streams[sid] = st
        hdrs = [(":method", "GET"), (":scheme", "http"), (":path", path),
                (":authority", "127.0.0.1")] + list(fields)
        c.sock.sendall(c._frame(HEADERS, END_HEADERS | END_STREAM, sid, hpack_encode(hdrs)))
        try:
            c.wait(lambda: st.ended or st.reset is not None)
        except (EOFError, ConnectionError):
            pass
        return st
    finally:
        c.close()


def service_authorization(body):
    """The authorization values the echo service received, in order."""
    got = json.loads(body)
    return [v for k, v in got["headers"] if k == "authorization"], got


# ---------------------------------------------------------------------------------------
# Certificates: an EC CA and an RSA leaf (RSA, so that a DHE-RSA cipher suite would be
# usable with the certificate if the server offered one).


def _openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, capture_output=True, timeout=60)


class Certs:
    def __init__(self, d):
        self.d = d
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-out", self["ca.key"])
        _openssl("req", "-x509", "-new", "-key", self["ca.key"], "-subj", "/CN=piko test CA 46",
                 "-days", "2", "-out", self["ca.pem"])
        _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out",
                 self["srv.key"])
        _openssl("req", "-new", "-key", self["srv.key"], "-subj", "/CN=localhost", "-out",
                 self["srv.csr"])
        (d / "srv.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                                   "extendedKeyUsage=serverAuth\n")
        _openssl("x509", "-req", "-in", self["srv.csr"], "-CA", self["ca.pem"], "-CAkey",
                 self["ca.key"], "-CAcreateserial", "-days", "2", "-extfile",
                 self["srv.ext"], "-out", self["srv.pem"])

    def __getitem__(self, name):
        return str(self.d / name)

    def flags(self, port):
        return {"%s.tls.cert" % port: self["srv.pem"], "%s.tls.key" % port: self["srv.key"]}

    def ctx(self):
        return ssl.create_default_context(cafile=self["ca.pem"])


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certs(tmp_path_factory.mktemp("certs46"))


def status_tls(srv):
    st, body = srv.admin("/status/cluster/nodes/local")
    assert st == 200, body
    return json.loads(body)["tls"]


def s_client(port, *args, timeout=10.0):
    """openssl s_client against 127.0.0.1:port; (handshake completed, output)."""
    argv = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-servername",
            "localhost"] + list(args)
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=timeout * SLOW)
    out = p.stdout + p.stderr
    ok = p.returncode == 0 and re.search(r"Cipher is (?!\(NONE\))", out) is not None
    return ok, out


def client_hello():
    """The bytes of a valid TLS ClientHello, made in memory with the ssl module."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16" and len(hello) > 100, hello[:20]
    return hello


# ---------------------------------------------------------------------------------------
# Slow clients: n connections, each sending its payload one byte every `interval`


def trickle(port, payloads, interval=0.5, run_for=6.0):
    """Open one connection per payload (as fast as possible), then send each payload a
    byte every `interval` s (b"": send nothing) for at most run_for s or until the server
    has closed them all. Returns (connect times, close times: None if still open)."""
    n = len(payloads)
    socks, t_conn = [], []
    closed = [None] * n
    pos = [0] * n
    sel = selectors.DefaultSelector()
    try:
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=5 * SLOW)
            t_conn.append(time.monotonic())
            s.setblocking(False)
            socks.append(s)
            sel.register(s, selectors.EVENT_READ, i)
        end = time.monotonic() + run_for
        next_send = time.monotonic()
        while time.monotonic() < end and any(c is None for c in closed):
            now = time.monotonic()
            if now >= next_send:
                for i, s in enumerate(socks):
                    if closed[i] is None and pos[i] < len(payloads[i]):
                        try:
                            pos[i] += s.send(payloads[i][pos[i]:pos[i] + 1])
                        except BlockingIOError:
                            pass
                        except OSError:  # reset by the server
                            closed[i] = now
                            sel.unregister(s)
                next_send = now + interval
            for key, _ in sel.select(timeout=0.02):
                i = key.data
                if closed[i] is not None:
                    continue
                try:
                    data = socks[i].recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:  # EOF or reset: closed by the server
                    closed[i] = time.monotonic()
                    sel.unregister(socks[i])
                # else: an alert or a 408 before the close; the close follows
    finally:
        sel.close()
        for s in socks:
            s.close()
    return t_conn, closed


def check_deadline_and_limit(t_conn, closed, limit, deadline):
    """At most `limit` held (the rest closed at once), every held one closed within
    deadline of its connect. Returns the number held."""
    at_once = [i for i, c in enumerate(closed) if c is not None and c - t_conn[i] < 1.0]
    held = [i for i in range(len(closed)) if i not in at_once]
    still_open = [i for i in held if closed[i] is None]
    late = sorted(round(closed[i] - t_conn[i], 2) for i in held
                  if closed[i] is not None and closed[i] - t_conn[i] > deadline)
    assert len(held) <= limit, (
        "%d of %d connections held with a limit of %d (handshakes in flight not counted?); "
        "%d still open at the end" % (len(held), len(closed), limit, len(still_open)))
    assert not still_open, (
        "%d connections still open %.1fs after they connected: the deadline is not a "
        "deadline" % (len(still_open), time.monotonic() - t_conn[0]))
    assert not late, "closed later than %.1fs after connect: %r" % (deadline, late[:10])
    if held:
        spans = [closed[i] - t_conn[i] for i in held]
        print("%d of %d held, closed %.2f-%.2fs after connect" % (
            len(held), len(closed), min(spans), max(spans)))
    return len(held)


# ---------------------------------------------------------------------------------------
# 1. The cluster port


def test_standalone_node_has_no_cluster_port_to_bypass_proxy_auth(piko):
    """The bypass: a forged forwarded request on the cluster port of a node without
    --cluster.join reached a tunnel without any token. Now that port is not open."""
    svc = piko.service("echo-svc")
    srv = piko.server({"proxy.auth.hmac-secret-key": PROXY_SECRET})
    piko.sidecar({EP: svc.addr}, server=srv, routable=False)
    good = ptoken([EP])
    wait_routed(srv, EP, good)
    # The proxy port wants a token; with one the endpoint is served (the control).
    r = h1(srv.proxy_port, "GET", "/echo", headers={"x-piko-endpoint": EP})
    assert_json_error(r, 401, "missing token")
    r = h1(srv.proxy_port, "GET", "/echo?control=1",
           headers={"x-piko-endpoint": EP, "authorization": "Bearer " + good})
    assert r.status == 200 and r.json()["service"] == "echo-svc", r
    before = svc.requests
    # The forged forwarded request on the cluster port.
    rc, status, body = curl_h2c(srv.cluster_port, "/echo?forged=1",
                                [("piko-endpoint", EP), ("piko-forwarded-by", "x")])
    assert svc.requests == before, (
        "a forged forwarded request on the cluster port reached the service without a "
        "token (curl status %r): %r" % (status, body[:300]))
    assert rc == 7 and status is None, (
        "the cluster port of a standalone node answered (curl exit %d, HTTP %r): %r" % (
            rc, status, body[:300]))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", srv.cluster_port), timeout=2 * SLOW).close()
    srv.wait_log(lambda t: "cluster port not opened" in t, timeout=2,
                 message="'cluster port not opened'")


def test_clustered_node_needs_a_secret_and_forged_streams_get_401(piko):
    # Without secret, mTLS or the explicit opt-out, a node with cluster.join does not start.
    cport = free_port()
    rc, err = run_server(["--cluster.bind-addr", "127.0.0.1:%d" % cport, "--cluster.join",
                          "127.0.0.1:%d" % cport])
    assert rc == 2, (
        "a node with cluster.join and no cluster.secret %s; stderr:\n%s" % (
            "started" if rc is None else "exited with %s" % rc, err[-2000:]))
    assert "cluster.secret" in err, err
    # With the secret (the Cluster helper passes one): a forged forwarded stream on the
    # cluster port gets 401 and reaches nothing; with the secret it is served.
    cl = Cluster(piko, 1, flags={"proxy.auth.hmac-secret-key": PROXY_SECRET})
    node = cl.nodes[0]
    svc = piko.service("echo-svc")
    piko.sidecar({EP: svc.addr}, server=node, routable=False)
    wait_routed(node, EP, ptoken([EP]))
    peer = [("piko-endpoint", EP), ("piko-forwarded-by", "x")]
    rc, status, body = curl_h2c(node.cluster_port, "/echo?forged=1", peer)
    assert (rc, status) == (0, 401), (rc, status, body[:300])
    assert json.loads(body).get("error"), body
    assert svc.requests == 0
    rc, status, body = curl_h2c(node.cluster_port, "/echo?peer=1",
                                peer + [("piko-authorization", "Bearer " + CLUSTER_SECRET)])
    assert (rc, status) == (0, 200), (rc, status, body[:300])
    got = json.loads(body)
    assert got["service"] == "echo-svc" and got["path"] == "/echo?peer=1", got
    assert svc.requests == 1


def test_cluster_insecure_no_secret_starts_and_warns(piko):
    if not server_has_flag("cluster.insecure-no-secret"):
        pytest.skip("binary without --cluster.insecure-no-secret (the flag's own behaviour)")
    cport = free_port()
    srv = piko.server({"cluster.join": "127.0.0.1:%d" % cport}, ports={
        "proxy": free_port(), "upstream": free_port(), "admin": free_port(),
        "cluster": cport}, args=["--cluster.insecure-no-secret"])
    srv.wait_log(lambda t: any("INSECURE" in ln and "cluster.insecure-no-secret" in ln
                               for ln in t.splitlines() if not ln.startswith("$ ")),
                 timeout=3, message="the INSECURE warning naming cluster.insecure-no-secret")
    socket.create_connection(("127.0.0.1", cport), timeout=2 * SLOW).close()


# ---------------------------------------------------------------------------------------
# 2. TLS key exchange groups


def test_tls_ports_refuse_ffdhe_and_old_protocols(piko, certs):
    f = certs.flags("proxy")
    f.update(certs.flags("upstream"))
    srv = piko.server(f)
    for port, name in ((srv.proxy_port, "proxy"), (srv.upstream_port, "upstream")):
        for group in ("ffdhe2048", "ffdhe8192"):
            ok, out = s_client(port, "-tls1_3", "-groups", group)
            assert not ok, "%s port: a TLS 1.3 handshake with %s was accepted:\n%s" % (
                name, group, out[-1500:])
    ok, out = s_client(srv.proxy_port, "-tls1_2", "-groups", "ffdhe2048:ffdhe8192")
    assert not ok, "TLS 1.2 with only ffdhe groups was accepted:\n" + out[-1500:]
    ok, out = s_client(srv.proxy_port, "-tls1_2", "-cipher", "DHE-RSA-AES128-GCM-SHA256")
    assert not ok, "a DHE-RSA cipher suite was accepted:\n" + out[-1500:]
    for proto in ("-tls1", "-tls1_1"):  # SECLEVEL=0: so that the client offers them
        ok, out = s_client(srv.proxy_port, proto, "-cipher", "DEFAULT:@SECLEVEL=0")
        assert not ok, "%s was accepted:\n%s" % (proto, out[-1500:])
    good = 0
    for group in ("X25519", "P-256", "P-384"):
        for v in ("-tls1_3", "-tls1_2"):
            ok, out = s_client(srv.proxy_port, v, "-groups", group)
            assert ok, "%s with %s refused:\n%s" % (v, group, out[-1500:])
            good += 1
    ok, out = s_client(srv.upstream_port, "-tls1_3", "-groups", "X25519")
    assert ok, out[-1500:]
    # "handshakes" counts the successful ones, "handshake_failures" the others.
    tls = status_tls(srv)
    assert tls["proxy"].get("handshakes") == good, tls
    assert tls["proxy"]["handshake_failures"] >= 6, tls
    assert tls["upstream"].get("handshakes") == 1, tls
    assert tls["upstream"]["handshake_failures"] >= 2, tls
    assert tls["proxy"]["mtls"] is False, tls


def test_tls_groups_flag(piko, certs):
    if not server_has_flag("tls.groups"):
        pytest.skip("binary without --tls.groups (the flag's own behaviour)")
    rc, err = run_server(["--proxy.tls.cert", certs["srv.pem"], "--proxy.tls.key",
                          certs["srv.key"], "--tls.groups", "X25519:no-such-group"])
    assert rc == 2 and "tls.groups" in err, (rc, err)
    rc, err = run_server(["--tls.groups", ""])
    assert rc == 2 and "tls.groups" in err, (rc, err)
    srv = piko.server(dict(certs.flags("proxy"), **{"tls.groups": "P-384"}))
    assert s_client(srv.proxy_port, "-tls1_3", "-groups", "P-384")[0]
    ok, out = s_client(srv.proxy_port, "-tls1_3", "-groups", "X25519:P-256")
    assert not ok, out[-1500:]


@pytest.mark.deadline(60)
def test_ffdhe8192_handshake_flood_is_refused_cheaply(piko, certs):
    srv = piko.server(certs.flags("proxy"))
    assert s_client(srv.proxy_port, "-tls1_3", "-groups", "X25519")[0]
    st0 = status_tls(srv)["proxy"]
    cpu0 = cpu_seconds(srv.pid)
    results = []
    lock = threading.Lock()
    todo = list(range(40))

    def worker():
        while True:
            with lock:
                if not todo:
                    return
                todo.pop()
            ok, _ = s_client(srv.proxy_port, "-tls1_3", "-groups", "ffdhe8192", timeout=20)
            with lock:
                results.append(ok)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(4)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(45 * SLOW)
    wall = time.monotonic() - t0
    used = cpu_seconds(srv.pid) - cpu0
    print("40 ffdhe8192 handshakes: %.2fs wall, %.2fs server CPU, %d accepted" % (
        wall, used, sum(results)))
    assert len(results) == 40, "only %d of 40 attempts finished" % len(results)
    assert used < 2.0, "the flood cost the server %.2fs of CPU (%d of 40 accepted)" % (
        used, sum(results))
    assert not any(results), "%d of 40 ffdhe8192 handshakes accepted" % sum(results)
    st1 = status_tls(srv)["proxy"]
    assert st1["handshakes"] == st0["handshakes"] == 1, (st0, st1)
    assert st1["handshake_failures"] - st0["handshake_failures"] >= 40, (st0, st1)


# ---------------------------------------------------------------------------------------
# 3. Handshake and head deadlines from accept, connections counted from accept


def test_proxy_tls_trickled_client_hello_deadline_and_limit(piko, certs):
    f = certs.flags("proxy")
    f.update({"proxy.max-connections": "50", "proxy.head-timeout": "2s"})
    srv = piko.server(f)
    hello = client_hello()
    t_conn, closed = trickle(srv.proxy_port, [hello] * 60, run_for=5.0 * SLOW)
    held = check_deadline_and_limit(t_conn, closed, 50, 2.0 + 1.5 * SLOW)
    assert held >= 40, "only %d connections were held (the limit is 50)" % held
    # Served again at once.
    t0 = time.monotonic()
    c = http.client.HTTPSConnection("127.0.0.1", srv.proxy_port, context=certs.ctx(),
                                    timeout=1.0 * SLOW)
    try:
        c.request("GET", "/x", headers={"x-piko-endpoint": "nobody"})
        r = c.getresponse()
        resp = Response(r.status, [(k.lower(), v) for k, v in r.getheaders()], r.read())
    finally:
        c.close()
    assert time.monotonic() - t0 < 1.0 * SLOW
    assert_json_error(resp, 502, "no available upstreams")


def test_upstream_tls_trickled_client_hello_deadline_and_limit(piko, certs):
    f = certs.flags("upstream")
    f["upstream.max-connections"] = "50"
    # Before upstream.handshake-timeout the upstream TLS handshake used
    # proxy.head-timeout (as an idle timeout): give both, so that the old binary fails
    # on its behaviour rather than on an unknown flag.
    f["proxy.head-timeout"] = "2s"
    if server_has_flag("upstream.handshake-timeout"):
        f["upstream.handshake-timeout"] = "2s"
    srv = piko.server(f)
    hello = client_hello()
    t_conn, closed = trickle(srv.upstream_port, [hello] * 60, run_for=5.0 * SLOW)
    held = check_deadline_and_limit(t_conn, closed, 50, 2.0 + 1.5 * SLOW)
    assert held >= 40, "only %d connections were held (the limit is 50)" % held
    # A TLS connection completes its handshake and gets an HTTP answer at once.
    t0 = time.monotonic()
    raw = socket.create_connection(("127.0.0.1", srv.upstream_port), timeout=1.0 * SLOW)
    with certs.ctx().wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        first = s.recv(64)
    assert first.startswith(b"HTTP/1.1 "), first
    assert time.monotonic() - t0 < 1.0 * SLOW
    # And a sidecar's tunnel is accepted.
    svc = piko.service()
    piko.sidecar({EP: svc.addr}, server=srv,
                 connect_url="https://localhost:%d" % srv.upstream_port,
                 flags={"connect.tls.root-cas": certs["ca.pem"]})
    r = h1(srv.proxy_port, "GET", "/echo", headers={"x-piko-endpoint": EP})
    assert r.status == 200, r


def test_plain_proxy_port_head_deadline_from_accept(piko):
    srv = piko.server({"proxy.head-timeout": "2s", "proxy.max-connections": "50"})
    head = (b"GET /echo HTTP/1.1\r\nHost: x\r\nx-piko-endpoint: " + EP.encode() +
            b"\r\nx-slow: " + b"a" * 100 + b"\r\n\r\n")
    payloads = [b""] * 10 + [head] * 10  # silent ones, then trickled heads
    t_conn, closed = trickle(srv.proxy_port, payloads, run_for=5.0 * SLOW)
    silent = [(t_conn[i], closed[i]) for i in range(10)]
    open_silent = sum(1 for _, c in silent if c is None)
    assert not open_silent, (
        "%d connections that sent nothing still open %.1fs after connect" % (
            open_silent, time.monotonic() - t_conn[0]))
    check_deadline_and_limit(t_conn, closed, 50, 2.0 + 1.5 * SLOW)
    r = h1(srv.proxy_port, "GET", "/x", headers={"x-piko-endpoint": "nobody"}, timeout=1.0)
    assert_json_error(r, 502, "no available upstreams")


# ---------------------------------------------------------------------------------------
# 4. Descriptor exhaustion


@pytest.mark.deadline(60)
def test_descriptor_exhaustion_does_not_spin(piko):
    svc = piko.service()
    srv = piko.server({"proxy.head-timeout": "5s"}, prefix=["prlimit", "--nofile=1024:1024"])
    with open("/proc/%d/limits" % srv.pid) as f:
        limits = f.read()
    assert re.search(r"Max open files\s+1024\s+1024", limits), limits
    piko.sidecar({EP: svc.addr}, server=srv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    socks = []
    try:
        for _ in range(1100):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            socks.append(s)
            s.connect_ex(("127.0.0.1", srv.proxy_port))  # 0 or EINPROGRESS
        t_last = time.monotonic()
        srv.wait_log(lambda t: "Too many open files" in t, timeout=3,
                     message="the descriptor limit reached (accept: Too many open files)")
        time.sleep(max(0.0, t_last + 0.5 - time.monotonic()))
        cpu0, size0, w0 = cpu_seconds(srv.pid), os.path.getsize(srv.log_path), \
            time.monotonic()
        time.sleep(3.0)
        cpu1, size1, w1 = cpu_seconds(srv.pid), os.path.getsize(srv.log_path), \
            time.monotonic()
        cpu_share = (cpu1 - cpu0) / (w1 - w0)
        lines = log_lines_between(srv.log_path, size0, size1)
        print("while exhausted: server CPU %.0f%%, %.1f log lines/s" % (
            100 * cpu_share, lines / (w1 - w0)))
        assert cpu_share < 0.20 * SLOW, (
            "the server used %.0f%% of a CPU with its descriptors exhausted (%d log lines "
            "in %.1fs)" % (100 * cpu_share, lines, w1 - w0))
        assert lines <= 5 * (w1 - w0) + 1, (
            "%d log lines in %.1fs with the descriptors exhausted" % (lines, w1 - w0))
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    # Served again without a restart.
    poll(lambda: h1(srv.proxy_port, "GET", "/echo?after=1", headers={
        "x-piko-endpoint": EP}, timeout=2.0).status == 200, 10 * SLOW,
        message="a request served after the connections closed")
    assert srv.running()
    assert "accept failed port=proxy: Too many open files" in srv.log_text()


# ---------------------------------------------------------------------------------------
# 5. Duplicate authorization fields under proxy.auth


@pytest.fixture
def astack(shared):
    def build(h):
        svc = h.service("echo-svc")
        srv = h.server({"proxy.auth.hmac-secret-key": PROXY_SECRET})
        h.sidecar({EP: svc.addr}, server=srv, routable=False)
        wait_routed(srv, EP, ptoken([EP]))
        return srv, svc
    return shared("astack", build)


def test_duplicate_authorization_only_the_token_field_is_removed(astack):
    srv, svc = astack
    tok = ptoken([EP])
    with RawConn(srv.proxy_port) as c:
        c.send(("GET /echo?dup=h1 HTTP/1.1\r\nHost: x\r\nx-piko-endpoint: %s\r\n"
                "Authorization: Bearer %s\r\nAuthorization: %s\r\n\r\n" % (
                    EP, tok, BASIC)).encode())
        r = c.read_response()
    assert r.status == 200, r
    auth, got = service_authorization(r.body)
    assert auth == [BASIC], "HTTP/1.1: the service got authorization %r: %r" % (
        auth, got["headers"])
    st = h2_request(srv.proxy_port, [("x-piko-endpoint", EP),
                                     ("authorization", "Bearer " + tok),
                                     ("authorization", BASIC)], path="/echo?dup=h2")
    assert st.status == 200, (st.status, st.reset, bytes(st.data[:300]))
    auth, got = service_authorization(bytes(st.data))
    assert auth == [BASIC], "h2c: the service got authorization %r: %r" % (
        auth, got["headers"])
    assert svc.requests == 2


def test_two_x_piko_authorization_fields_are_400(astack):
    srv, svc = astack
    tok = ptoken([EP])
    for second in ("Bearer not-a-token", "Bearer " + tok):
        with RawConn(srv.proxy_port) as c:
            c.send(("GET /echo HTTP/1.1\r\nHost: x\r\nx-piko-endpoint: %s\r\n"
                    "x-piko-authorization: Bearer %s\r\nx-piko-authorization: %s\r\n\r\n" % (
                        EP, tok, second)).encode())
            r = c.read_response()
        assert r.status == 400, "HTTP/1.1, second field %r: %r" % (second[:20], r)
        assert r.header("content-type", "").split(";")[0].strip() == "application/json", r
        assert "x-piko-authorization" in r.json()["error"], r
    st = h2_request(srv.proxy_port, [("x-piko-endpoint", EP),
                                     ("x-piko-authorization", "Bearer " + tok),
                                     ("x-piko-authorization", "Bearer not-a-token")])
    assert st.status == 400, (st.status, st.reset, bytes(st.data[:300]))
    assert "x-piko-authorization" in json.loads(bytes(st.data))["error"], bytes(st.data)
    assert svc.requests == 0
