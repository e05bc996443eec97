"""Authentication (issue "Security"; docs/manage/security.md; PROTOCOL.md 1.1, 1.4, 1.5,
4): JWTs on the upstream port (tunnel handshakes), the proxy port (every request,
HTTP/1.1, h2c, upgrades, /_piko/v1/tcp, --forward) and the admin port (all but /health and
/ready). Tokens are minted here (tokens.py: HS256 with hmac, RS256/ES256 with the openssl
CLI); keys come from openssl genpkey."""

import base64
import json
import re
import socket
import subprocess
import threading
import time

import pytest

from cluster import Cluster
from conftest import binary, free_port
from helpers import SLOW, assert_json_error, curl, h1, nghttp, poll
from tcp_services import (H2Client, TcpService, UpgradeRefused, WsClient, WsService,
                          echo_roundtrip, h2_body_json, plain_connect, tcp_connect,
                          upgrade_request, wait_listening)
from tokens import Key, claims, hs256, unsigned, write_jwks

SECRET = "e2e-upstream-secret-0123456789abcdef"
EP = "my-service"

# The sidecar's backoff after 401/403 is the maximum, 15 s with 20 % jitter.
MIN_AUTH_BACKOFF_MS = 12000


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return {"rsa": Key(d, "rsa", "rsa"), "rsa2": Key(d, "rsa2", "rsa"),
            "ec": Key(d, "ec", "ec")}


def token_hs(endpoints=None, exp_in=300, secret=SECRET, **extra):
    return hs256(secret, claims(exp_in=exp_in, endpoints=endpoints, **extra))


def handshake_refusals(sc):
    """(status, message, retry_ms) of every refused handshake the sidecar logged."""
    return [(int(m.group(1)), m.group(2), int(m.group(3))) for m in re.finditer(
        r"handshake refused by \S+: status (\d+): (.*?) \(retry in (\d+)ms\)", sc.log_text())]


def server_refusals(srv):
    """(endpoint, status, reason, detail) of every refused handshake the server logged."""
    return [(m.group(1), int(m.group(2)), m.group(3), m.group(4)) for m in re.finditer(
        r"handshake refused endpoint=(\S+) sidecar=\S+ peer=\S+ status=(\d+) reason=(.*?): "
        r"(.*)", srv.log_text())]


def auth_status(srv, token=None):
    headers = {"x-piko-authorization": "Bearer " + token} if token else {}
    r = h1(srv.ports["admin"], "GET", "/status/auth", headers=headers)
    assert r.status == 200, r
    return r.json()


def wait_routed(srv, endpoint, token, timeout=10.0):
    """Until the proxy no longer answers 502 "no available upstreams" for endpoint (the
    harness's own probe cannot see through proxy.auth)."""
    def routed():
        r = h1(srv.proxy_port, "GET", "/_probe", headers={
            "x-piko-endpoint": endpoint, "x-piko-authorization": "Bearer " + token})
        return not (r.status == 502 and b"no available upstreams" in r.body)
    poll(routed, timeout * SLOW, message="endpoint %s routed" % endpoint)


def echo(port, endpoint=EP, headers=None, path="/echo"):
    h = {"x-piko-endpoint": endpoint}
    h.update(headers or {})
    return h1(port, "GET", path, headers=h)


def service_headers(resp):
    assert resp.status == 200, resp
    return [(k, v) for k, v in resp.json()["headers"]]


# ---- the upstream port: tunnel handshakes ------------------------------------------------


def test_valid_token_serves_and_the_service_never_sees_it(piko):
    svc = piko.service()
    srv = piko.server({"upstream.auth.hmac-secret-key": SECRET})
    piko.sidecar({EP: svc.addr}, server=srv, flags={"connect.token": token_hs([EP])})
    r = echo(srv.proxy_port, headers={"x-piko-authorization": "Bearer client-side",
                                      "authorization": "Basic YXBwOmFwcA=="})
    names = [k for k, _ in service_headers(r)]
    assert "x-piko-authorization" not in names, names
    assert ("authorization", "Basic YXBwOmFwcA==") in service_headers(r), (
        "authorization belongs to the application when proxy.auth is off")
    assert svc.requests == 1
    st = auth_status(srv)
    assert st["upstream"]["accepted"] == 1, st
    assert st["proxy"] is None and st["admin"] is None, st


def _refused_case(keys, case):
    """(server flags, sidecar token or None, client message, server reason)."""
    hs = {"upstream.auth.hmac-secret-key": SECRET}
    if case == "missing":
        return hs, None, "missing token", "missing token"
    if case == "expired":
        return hs, token_hs([EP], exp_in=-60), "expired token", "expired"
    if case == "wrong-signature":
        return hs, token_hs([EP], secret=SECRET + "x"), "invalid token", "bad signature"
    if case == "alg-none":
        return hs, unsigned(claims(endpoints=[EP])), "invalid token", "alg not allowed"
    if case == "wrong-audience":
        flags = dict(hs)
        flags["upstream.auth.audience"] = "piko-upstream"
        return flags, token_hs([EP], aud="someone-else"), "invalid token", "wrong audience"
    if case == "hs256-with-the-rsa-public-key":
        # Algorithm confusion: the public key used as an HMAC secret.
        flags = {"upstream.auth.rsa-public-key": str(keys["rsa"].public_path)}
        return (flags, hs256(keys["rsa"].public_pem, claims(endpoints=[EP])),
                "invalid token", "alg not allowed")
    if case == "not-a-jwt":
        return hs, "not-a-jwt", "invalid token", "malformed"
    raise ValueError(case)


@pytest.mark.parametrize("case", ["missing", "expired", "wrong-signature", "alg-none",
                                  "wrong-audience", "hs256-with-the-rsa-public-key",
                                  "not-a-jwt"])
def test_refused_handshake_401_logged_and_backed_off(piko, keys, case):
    flags, token, message, reason = _refused_case(keys, case)
    svc = piko.service()
    srv = piko.server(flags)
    sc_flags = {"connect.token": token} if token else {}
    sc = piko.sidecar({EP: svc.addr}, server=srv, flags=sc_flags, wait=False)
    got = poll(lambda: handshake_refusals(sc), 10 * SLOW, message="a refused handshake")
    assert got[0][:2] == (401, message), got
    assert got[0][2] >= MIN_AUTH_BACKOFF_MS, "401 must back off to the maximum: %r" % got
    assert re.search(r"error tunnel .*handshake refused", sc.log_text()), (
        "a 401 is logged as an error")
    refusals = poll(lambda: server_refusals(srv), 5 * SLOW, message="the server's log line")
    assert refusals[0][:3] == (EP, 401, reason), refusals
    # Backed off: no second attempt for a while, the sidecar is not ready, no tunnel.
    time.sleep(2)
    assert len(handshake_refusals(sc)) == 1 and len(server_refusals(srv)) == 1, (
        sc.log_text()[-2000:])
    assert sc.ready_status() == 503
    assert_json_error(echo(srv.proxy_port), 502, "no available upstreams")
    st = auth_status(srv)["upstream"]
    assert st["accepted"] == 0 and st["rejected"][reason] == 1, st


def test_handshake_401_answer_is_json_with_www_authenticate(piko):
    srv = piko.server({"upstream.auth.hmac-secret-key": SECRET})
    with socket.create_connection(("127.0.0.1", srv.upstream_port), timeout=5 * SLOW) as s:
        s.sendall(b"GET /piko/v1/upstream/x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                  b"Upgrade: piko-reverse-h2\r\nx-piko-authorization: Bearer " +
                  token_hs(exp_in=-5).encode() + b"\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b"}\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 "), data
    assert b"www-authenticate: bearer" in head.lower(), head
    assert b"content-type: application/json" in head.lower(), head
    assert json.loads(body) == {"error": "expired token"}


def test_endpoint_not_permitted_403(piko):
    svc = piko.service()
    srv = piko.server({"upstream.auth.hmac-secret-key": SECRET})
    sc = piko.sidecar({EP: svc.addr, "forbidden": svc.addr}, server=srv, wait=False,
                      flags={"connect.token": token_hs([EP, "another"])})
    got = poll(lambda: handshake_refusals(sc), 10 * SLOW, message="a refused handshake")
    assert got[0][:2] == (403, "endpoint not permitted"), got
    assert got[0][2] >= MIN_AUTH_BACKOFF_MS, got
    assert ("forbidden", 403, "endpoint not permitted") in [
        r[:3] for r in poll(lambda: server_refusals(srv), 5 * SLOW)]
    # The permitted endpoint of the same sidecar is served.
    piko.wait_routable(srv, EP)
    assert echo(srv.proxy_port).status == 200
    assert_json_error(echo(srv.proxy_port, "forbidden"), 502, "no available upstreams")
    assert auth_status(srv)["upstream"]["rejected"]["endpoint not permitted"] == 1


def _server_key_flags(keys, case, tmp_path):
    key = keys["ec" if case.startswith("ec") else "rsa"]
    opt = "upstream.auth.%s-public-key" % ("ecdsa" if case.startswith("ec") else "rsa")
    if case.endswith("file"):
        return key, {opt: str(key.public_path)}, ()
    if case.endswith("text"):
        # PEM text on the command line: --opt=VALUE (a separate value may not start with -).
        return key, {}, ["--%s=%s" % (opt, key.public_pem)]
    path = tmp_path / "server.yaml"
    indented = "".join("      " + line + "\n" for line in key.public_pem.splitlines())
    path.write_text("upstream:\n  auth:\n    %s: |\n%s" % (opt.split(".")[-1].replace(
        "-", "_"), indented))
    return key, {"config.path": str(path)}, ()


@pytest.mark.parametrize("case", ["rsa-text", "rsa-file", "rsa-yaml", "ec-text", "ec-file"])
def test_rsa_and_ecdsa_keys(piko, keys, tmp_path, case):
    key, flags, args = _server_key_flags(keys, case, tmp_path)
    svc = piko.service()
    srv = piko.server(flags, args=args)
    piko.sidecar({EP: svc.addr}, server=srv, name="good",
                 flags={"connect.token": key.sign(claims(endpoints=[EP]))})
    assert echo(srv.proxy_port).status == 200
    # Signed by another key of the same type: refused.
    other = keys["rsa2"] if key.kind == "rsa" else Key(tmp_path, "ec-other", "ec")
    bad = piko.sidecar({"other": svc.addr}, server=srv, name="bad", wait=False,
                       flags={"connect.token": other.sign(claims())})
    got = poll(lambda: handshake_refusals(bad), 10 * SLOW, message="a refused handshake")
    assert got[0][:2] == (401, "invalid token"), got
    assert ("other", 401, "bad signature") in [r[:3] for r in server_refusals(srv)]


def test_jwks_file_key_rotation(piko, keys, tmp_path):
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, [keys["rsa"].jwk("k1")])
    svc = piko.service()
    srv = piko.server({"upstream.auth.jwks.endpoint": str(jwks)})
    piko.sidecar({"a": svc.addr}, server=srv, name="old-key",
                 flags={"connect.token": keys["rsa"].sign(claims(), kid="k1")})
    # Rotation: the file now holds only the new key, under a new kid.
    write_jwks(jwks, [keys["rsa2"].jwk("k2")])
    piko.sidecar({"b": svc.addr}, server=srv, name="new-key",
                 flags={"connect.token": keys["rsa2"].sign(claims(), kid="k2")})
    late = piko.sidecar({"c": svc.addr}, server=srv, name="late-old-key", wait=False,
                        flags={"connect.token": keys["rsa"].sign(claims(), kid="k1")})
    got = poll(lambda: handshake_refusals(late), 10 * SLOW, message="a refused handshake")
    assert got[0][:2] == (401, "invalid token"), got
    assert ("c", 401, "unknown kid") in [r[:3] for r in server_refusals(srv)]
    # The tunnel accepted under the old key stays; both serve.
    for ep in ("a", "b"):
        assert echo(srv.proxy_port, ep).status == 200, ep
    assert len(re.findall(r"jwks loaded option=upstream.auth.jwks.endpoint", srv.log_text())) == 2
    assert auth_status(srv)["upstream"]["jwks_keys"] == 1


def test_tunnel_drained_at_token_expiry_and_redialled_with_the_refreshed_file(piko, tmp_path):
    tok = tmp_path / "token"
    lifetime = int(4 * SLOW)
    first = token_hs([EP], exp_in=lifetime)
    exp = json.loads(base64.urlsafe_b64decode(first.split(".")[1] + "=="))["exp"]
    tok.write_text(first + "\n")
    svc = piko.service()
    srv = piko.server({"upstream.auth.hmac-secret-key": SECRET})
    sc = piko.sidecar({EP: svc.addr}, server=srv, flags={"connect.token-file": str(tok)})
    tok.write_text(token_hs([EP], exp_in=600) + "\n")  # refreshed on disk meanwhile
    # Requests keep working across the expiry: they wait for the replacement tunnel.
    results, stop = [], threading.Event()

    def load():
        while not stop.is_set():
            try:
                results.append(echo(srv.proxy_port).status)
            except OSError as e:
                results.append(repr(e))
            time.sleep(0.05)
    t = threading.Thread(target=load, daemon=True)
    t.start()
    try:
        srv.wait_log(lambda s: "token expired: draining the tunnel endpoint=%s" % EP in s,
                     timeout=lifetime + 5, message="the expiry drain")
        assert time.time() >= exp - 0.5, "drained before the token expired"
        sc.wait_log(lambda s: "server sent GOAWAY endpoint=%s" % EP in s, message="GOAWAY")
        sc.wait_log(lambda s: s.count("tunnel up endpoint=%s" % EP) == 2,
                    message="the replacement tunnel")
        srv.wait_log(lambda s: s.count("tunnel up endpoint=%s" % EP) == 2,
                     message="the replacement accepted")
        time.sleep(0.5)
    finally:
        stop.set()
        t.join(10)
    assert results and all(r == 200 for r in results), results
    assert echo(srv.proxy_port).status == 200
    assert not server_refusals(srv), "the refreshed token must be used"


def test_disable_disconnect_on_expiry_keeps_the_tunnel(piko):
    svc = piko.service()
    srv = piko.server({"upstream.auth.hmac-secret-key": SECRET},
                      args=["--upstream.auth.disable-disconnect-on-expiry"])
    sc = piko.sidecar({EP: svc.addr}, server=srv,
                      flags={"connect.token": token_hs([EP], exp_in=int(2 * SLOW))})
    time.sleep(2 * SLOW + 2)
    assert echo(srv.proxy_port).status == 200
    assert "token expired" not in srv.log_text()
    assert "GOAWAY" not in sc.log_text()


def test_token_file_missing_is_logged_and_retried(piko, tmp_path):
    tok = tmp_path / "late-token"
    svc = piko.service()
    srv = piko.server({"upstream.auth.hmac-secret-key": SECRET})
    sc = piko.sidecar({EP: svc.addr}, server=srv, wait=False,
                      flags={"connect.token-file": str(tok)})
    sc.wait_log(lambda s: re.search(r"error tunnel .*no token to dial with: "
                                    r"connect.token-file: cannot read \S+late-token: No such "
                                    r"file", s), message="the missing file")
    assert sc.ready_status() == 503
    tok.write_text(token_hs([EP]))
    sc.wait_ready(timeout=20)  # normal backoff: at most a few seconds by now
    piko.wait_routable(srv, EP)
    assert echo(srv.proxy_port).status == 200
    assert not server_refusals(srv), "no dial without a token"


# ---- the proxy port ------------------------------------------------------------------------


PROXY_SECRET = "e2e-proxy-secret-0123456789abcdef0123"


def ptoken(endpoints=None, **kw):
    return token_hs(endpoints, secret=PROXY_SECRET, **kw)


@pytest.fixture
def pstack(shared):
    """A server with proxy.auth (upstream open), an HTTP service as my-service, a WebSocket
    app as ws, a TCP echo as db, and a --forward listener to db with a valid token."""
    def build(h):
        svc = h.service("svc")
        ws = WsService("ws")
        h.services.append(ws)
        db = TcpService(name="echo")
        h.services.append(db)
        srv = h.server({"proxy.auth.hmac-secret-key": PROXY_SECRET})
        h.sidecar({EP: svc.addr, "ws": ws.addr}, server=srv, routable=False, name="exposer",
                  flags={"tcp-endpoint": ["db=%s" % db.addr]})
        good = ptoken(["my-service", "ws", "db"])
        for ep in (EP, "ws", "db"):
            wait_routed(srv, ep, good)
        fwd_ok, fwd_none = free_port(), free_port()
        url = "http://127.0.0.1:%d" % srv.proxy_port
        h.sidecar({}, server=srv, name="forwarder", routable=False, flags={
            "forward": ["127.0.0.1:%d=db" % fwd_ok], "forward.url": url,
            "forward.token": ptoken(["db"])})
        h.sidecar({}, server=srv, name="forwarder-no-token", routable=False, flags={
            "forward": ["127.0.0.1:%d=db" % fwd_none], "forward.url": url})
        wait_listening(fwd_ok)
        wait_listening(fwd_none)
        return {"srv": srv, "svc": svc, "ws": ws, "db": db, "good": good, "fwd_ok": fwd_ok,
                "fwd_none": fwd_none, "h": h}
    return shared("pstack", build)


def test_proxy_missing_token_401_before_routing(pstack):
    srv, svc = pstack["srv"], pstack["svc"]
    r = echo(srv.proxy_port)
    assert_json_error(r, 401, "missing token")
    assert r.header("www-authenticate") == "Bearer", r
    # 401 comes before any routing answer (as Go Piko): no endpoint named at all.
    assert_json_error(h1(srv.proxy_port, "GET", "/echo"), 401, "missing token")
    # A token that is not a bearer token is missing too.
    assert_json_error(echo(srv.proxy_port, headers={"authorization": "Basic YTpi"}), 401,
                      "missing token")
    r = h1(srv.proxy_port, "HEAD", "/echo", headers={"x-piko-endpoint": EP})
    assert r.status == 401 and r.body == b"", r
    assert svc.requests == 0


@pytest.mark.parametrize("case,status,message", [
    ("expired", 401, "expired token"),
    ("wrong-secret", 401, "invalid token"),
    ("alg-none", 401, "invalid token"),
    ("other-endpoint", 403, "endpoint not permitted"),
])
def test_proxy_refused_tokens(pstack, case, status, message):
    srv, svc = pstack["srv"], pstack["svc"]
    tok = {"expired": ptoken([EP], exp_in=-10),
           "wrong-secret": token_hs([EP], secret=SECRET),
           "alg-none": unsigned(claims(endpoints=[EP])),
           "other-endpoint": ptoken(["someone-else"])}[case]
    for field in ("x-piko-authorization", "authorization"):
        assert_json_error(echo(srv.proxy_port, headers={field: "Bearer " + tok}), status,
                          message)
    assert svc.requests == 0


def test_proxy_valid_token_in_x_piko_authorization(pstack):
    srv = pstack["srv"]
    r = echo(srv.proxy_port, headers={"x-piko-authorization": "Bearer " + pstack["good"],
                                      "authorization": "Basic YXBwOmFwcA=="})
    got = service_headers(r)
    assert "x-piko-authorization" not in [k for k, _ in got], got
    assert ("authorization", "Basic YXBwOmFwcA==") in got, (
        "authorization is the application's when x-piko-authorization carried the token")


def test_proxy_valid_token_in_authorization_is_not_forwarded(pstack):
    srv = pstack["srv"]
    r = echo(srv.proxy_port, headers={"authorization": "Bearer " + pstack["good"]})
    names = [k for k, _ in service_headers(r)]
    assert "authorization" not in names and "x-piko-authorization" not in names, names


def test_proxy_token_without_endpoint_claim_allows_every_endpoint(pstack):
    r = echo(pstack["srv"].proxy_port, headers={"authorization": "Bearer " + ptoken()})
    assert r.status == 200, r


def test_proxy_h2c(pstack):
    srv = pstack["srv"]
    h = {"x-piko-endpoint": EP}
    assert_json_error(curl(srv.proxy_port, "/echo", headers=h, http2=True), 401,
                      "missing token")
    other = {"x-piko-endpoint": EP, "authorization": "Bearer " + ptoken(["ws"])}
    assert_json_error(curl(srv.proxy_port, "/echo", headers=other, http2=True), 403,
                      "endpoint not permitted")
    h["x-piko-authorization"] = "Bearer " + pstack["good"]
    r = curl(srv.proxy_port, "/echo", headers=h, http2=True)
    assert r.status == 200, r
    assert "x-piko-authorization" not in [k for k, _ in r.json()["headers"]]
    # Several streams of one connection, each verified.
    rc, out, err = nghttp(srv.proxy_port, ["/whoami?i=%d" % i for i in range(5)], headers=h)
    assert rc == 0, err
    assert out.decode() == "svc" * 5, out


def test_proxy_websocket_upgrade(pstack):
    srv = pstack["srv"]
    with WsClient(srv.proxy_port, headers={"x-piko-endpoint": "ws"}) as ws:
        assert_json_error(ws.response, 401, "missing token")
    with WsClient(srv.proxy_port, headers={"x-piko-endpoint": "ws",
                                           "authorization": "Bearer " + ptoken([EP])}) as ws:
        assert_json_error(ws.response, 403, "endpoint not permitted")
    with WsClient(srv.proxy_port, headers={
            "x-piko-endpoint": "ws", "x-piko-authorization": "Bearer " + pstack["good"]}) as ws:
        assert ws.response.status == 101, ws.response
        ws.send("hello")
        assert ws.recv() == (0x1, b"hello")
    up = pstack["ws"].upgrades[-1]
    assert "x-piko-authorization" not in [k for k, _ in up["headers"]], up


def test_proxy_tcp_upgrade(pstack):
    srv = pstack["srv"]
    for extra, status, msg in [({}, 401, "missing token"),
                               ({"authorization": "Bearer " + ptoken([EP])}, 403,
                                "endpoint not permitted")]:
        with pytest.raises(UpgradeRefused) as e:
            tcp_connect(srv.proxy_port, "db",
                        request=upgrade_request("db", extra=extra, port=srv.proxy_port))
        assert_json_error(e.value.response, status, msg)
    req = upgrade_request("db", port=srv.proxy_port,
                          extra={"x-piko-authorization": "Bearer " + pstack["good"]})
    with tcp_connect(srv.proxy_port, "db", request=req) as s:
        assert echo_roundtrip(s, b"over tcp " * 100) == b"over tcp " * 100


def test_proxy_h2c_extended_connect(pstack):
    srv = pstack["srv"]
    with H2Client(srv.proxy_port) as h:
        st = h.connect("/_piko/v1/tcp/db")
        assert h.wait_status(st) == 401, (st.status, bytes(st.data))
        h.wait(lambda: st.ended or st.reset is not None)
        assert h2_body_json(st) == {"error": "missing token"}
        st = h.connect("/_piko/v1/tcp/db",
                       extra=[("x-piko-authorization", "Bearer " + pstack["good"])])
        assert h.wait_status(st) == 200, (st.status, bytes(st.data))
        h.send_data(st, b"ping over h2")
        assert h.read_data(st, 12) == b"ping over h2"


def test_forward_with_and_without_token(pstack):
    with plain_connect(pstack["fwd_ok"]) as s:
        assert echo_roundtrip(s, b"forwarded " * 50) == b"forwarded " * 50
    with plain_connect(pstack["fwd_none"]) as s:
        s.sock.settimeout(10 * SLOW)
        assert s.recv(1) == b"", "a refused forward closes the local connection"
    h = pstack["h"]
    fwd = [p for p in h.procs if p.name == "forwarder-no-token"][0]
    fwd.wait_log(lambda t: "proxy answered status 401: missing token" in t,
                 message="the refusal's reason")


def test_proxy_auth_counters(pstack):
    st = auth_status(pstack["srv"])
    assert st["upstream"] is None, st
    assert st["proxy"]["accepted"] >= 1, st
    echo(pstack["srv"].proxy_port, headers={"authorization": "Bearer " + ptoken(["nope"])})
    after = auth_status(pstack["srv"])["proxy"]["rejected"]["endpoint not permitted"]
    assert after == st["proxy"]["rejected"]["endpoint not permitted"] + 1


def test_forwarded_requests_are_not_verified_again(piko):
    """Node 2 verifies the token and forwards to node 1 (which holds the tunnel): node 1
    does not verify again; the token (in authorization) never reaches the service."""
    cl = Cluster(piko, n=2, flags={"proxy.auth.hmac-secret-key": PROXY_SECRET})
    cl.wait_converged()
    svc = piko.service()
    piko.sidecar({EP: svc.addr}, server=cl.nodes[0], routable=False)
    good = ptoken([EP])
    for i in (0, 1):
        wait_routed(cl.nodes[i], EP, good)
    r = echo(cl.nodes[1].proxy_port, headers={"authorization": "Bearer " + good})
    names = [k for k, _ in service_headers(r)]
    assert "authorization" not in names, names
    assert_json_error(echo(cl.nodes[1].proxy_port), 401, "missing token")
    assert "request refused" not in cl.nodes[0].log_text()


# ---- the admin port ------------------------------------------------------------------------


ADMIN_SECRET = "e2e-admin-secret-0123456789abcdef0123"


def test_admin_auth(piko):
    srv = piko.server({"admin.auth.hmac-secret-key": ADMIN_SECRET})  # waits on /ready
    port = srv.ports["admin"]
    good = token_hs(secret=ADMIN_SECRET)
    for path in ("/health", "/ready"):
        assert h1(port, "GET", path).status == 200, path
    for path in ("/status/cluster/nodes", "/status/cluster/nodes/local", "/status/auth",
                 "/no-such-page"):
        r = h1(port, "GET", path)
        assert_json_error(r, 401, "missing token")
        assert r.header("www-authenticate") == "Bearer", r
        assert_json_error(h1(port, "GET", path, headers={
            "authorization": "Bearer " + token_hs(secret=SECRET)}), 401, "invalid token")
        assert_json_error(h1(port, "GET", path, headers={
            "authorization": "Bearer " + token_hs(secret=ADMIN_SECRET, exp_in=-1)}), 401,
            "expired token")
    for field in ("authorization", "x-piko-authorization"):
        r = h1(port, "GET", "/status/cluster/nodes", headers={field: "Bearer " + good})
        assert r.status == 200, r
        assert r.json()[0]["local"] is True
    assert h1(port, "GET", "/no-such-page",
              headers={"authorization": "Bearer " + good}).status == 404
    st = auth_status(srv, good)["admin"]
    assert st["rejected"]["missing token"] == 4 and st["rejected"]["bad signature"] == 4, st
    assert "request refused peer=127.0.0.1" in srv.log_text()


# ---- configuration -------------------------------------------------------------------------


def run_server(args):
    argv = [binary("piko-server"), "--proxy.bind-addr", "127.0.0.1:0", "--upstream.bind-addr",
            "127.0.0.1:0", "--admin.bind-addr", "127.0.0.1:0", "--cluster.bind-addr",
            "127.0.0.1:0", "--grace-period", "1s"] + list(args)
    return subprocess.run(argv, capture_output=True, text=True, timeout=20 * SLOW)


@pytest.mark.parametrize("args,expect", [
    (["--upstream.auth.rsa-public-key", "/nonexistent/key.pem"],
     "upstream.auth.rsa-public-key: not PEM text (-----BEGIN ...) and cannot read "
     "'/nonexistent/key.pem'"),
    (["--proxy.auth.rsa-public-key=-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC "
      "KEY-----\n"], "proxy.auth.rsa-public-key:"),
    (["--admin.auth.ecdsa-public-key", "RSA"], "admin.auth.ecdsa-public-key:"),
    (["--upstream.auth.hmac-secret-key", "x", "--upstream.auth.jwks.endpoint", "/tmp/j"],
     "upstream.auth: more than one key source"),
    (["--proxy.auth.audience", "aud"], "proxy.auth: no key source"),
    (["--admin.auth.jwks.endpoint", "/nonexistent/jwks.json"], "admin.auth.jwks.endpoint:"),
    (["--upstream.auth.jwks.endpoint", "http://127.0.0.1:1/jwks"],
     "upstream.auth.jwks.endpoint: http:// is refused"),
])
def test_bad_auth_configuration_stops_the_server(args, expect):
    p = run_server(args)
    assert p.returncode != 0, p.stdout + p.stderr
    assert expect in p.stderr, p.stderr
    assert "listening" not in p.stderr, "it must stop before binding any port"


def test_a_key_of_the_wrong_type_names_the_option(keys):
    p = run_server(["--upstream.auth.rsa-public-key", str(keys["ec"].public_path)])
    assert p.returncode != 0
    assert "upstream.auth.rsa-public-key:" in p.stderr, p.stderr


@pytest.mark.parametrize("args,expect", [
    (["--connect.token", "a", "--connect.token-file", "/tmp/x"],
     "connect.token and connect.token-file: give one of them"),
    (["--connect.token=two words"], "connect.token: not a token"),
    (["--forward.token", "a", "--forward.token-file", "/tmp/x"],
     "forward.token and forward.token-file: give one of them"),
])
def test_bad_sidecar_token_flags(args, expect):
    argv = [binary("piko-sidecar"), "--endpoint", "x=1", "--admin.bind-addr",
            "127.0.0.1:0"] + args
    p = subprocess.run(argv, capture_output=True, text=True, timeout=20 * SLOW)
    assert p.returncode == 2, p.stderr
    assert expect in p.stderr, p.stderr
