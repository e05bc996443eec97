"""The typical Internet-facing deployment (issue "Security", acceptance 1): the upstream
port with TLS and HMAC token auth together. A sidecar with a valid token serves; missing,
expired, wrongly signed and alg-none tokens get 401 over the TLS connection and the
sidecar logs the reason and backs off; a token whose piko.endpoints lacks the endpoint
gets 403."""

import http.client
import json
import re

import tokens
from test_40_tls import EP, certs, https_sidecar, tls_flags  # noqa: F401 (fixture)

SECRET = "e2e-upstream-secret-0123456789abcdef"


def server(piko, certs):
    f = tls_flags("upstream", certs)
    f["upstream.auth.hmac-secret-key"] = SECRET
    return piko.server(f)


def get(srv, path):
    c = http.client.HTTPConnection("127.0.0.1", srv.proxy_port, timeout=5)
    c.request("GET", path, headers={"x-piko-endpoint": EP})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


def test_valid_token_over_tls_serves(piko, certs):
    svc = piko.service()
    srv = server(piko, certs)
    tok = tokens.hs256(SECRET, tokens.claims(endpoints=[EP]))
    https_sidecar(piko, srv, svc, certs, {"connect.token": tok})
    status, body = get(srv, "/echo?tls=auth")
    assert status == 200, body
    obj = json.loads(body)
    assert obj["path"] == "/echo?tls=auth"
    names = [k for k, v in obj["headers"]]
    assert "x-piko-authorization" not in names and "authorization" not in names, names


def refused(piko, srv, svc, certs, token, status, reason, name):
    flags = {"connect.token": token} if token else {}
    sc = https_sidecar(piko, srv, svc, certs, flags, wait=False, name=name)
    sc.wait_log(lambda t: ("status %d" % status) in t and reason in t,
                message="the sidecar logging %d %s" % (status, reason))
    srv.wait_log(lambda t: "handshake refused" in t and ("status=%d" % status) in t,
                 message="the server logging the refusal")
    # 401 and 403 back off straight to the maximum (15 s, +-20 % jitter)
    text = sc.log_text()
    assert re.search(r"retry in 1[2-8]\d{3}ms", text), text[-400:]
    assert sc.ready_status() == 503
    sc.stop()


def test_bad_tokens_over_tls_are_refused(piko, certs):
    svc = piko.service()
    srv = server(piko, certs)
    refused(piko, srv, svc, certs, None, 401, "missing token", "sc-missing")
    refused(piko, srv, svc, certs, tokens.hs256(SECRET, tokens.claims(exp_in=-60)), 401,
            "expired token", "sc-expired")
    refused(piko, srv, svc, certs, tokens.hs256("wrong-secret", tokens.claims()), 401,
            "invalid token", "sc-wrong")
    refused(piko, srv, svc, certs, tokens.unsigned(tokens.claims()), 401, "invalid token",
            "sc-none")
    refused(piko, srv, svc, certs, tokens.hs256(SECRET, tokens.claims(endpoints=["other"])),
            403, "endpoint not permitted", "sc-403")
    status, body = get(srv, "/echo")
    assert status == 502 and b"no available upstreams" in body
