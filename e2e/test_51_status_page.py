"""The status API of this node's tunnels (/status/upstream/endpoints, /status/tunnels) and
the status page at / on the server's admin port (issue "Observability": status API and
page). The page is rendered in a headless Chromium driven over the DevTools protocol
(cdp.py): it must show the connected sidecar's endpoint and the recent requests, keep
every client-supplied value as text, refresh itself, ask for the admin token when the
routes need one, and log no error in the console."""

import datetime
import json
import threading
import time

import pytest

import cdp
import tokens
from conftest import BIN_DIR
from helpers import SLOW, h1, poll
from tcp_services import tcp_sidecar

EP = {"x-piko-endpoint": "my-service"}
SECRET = "status-page-test-secret-0123456789abcdef"

ENDPOINT_KEYS = {"endpoint", "tunnels", "tcp", "streams", "streams_total", "bytes_in",
                 "bytes_out"}
TUNNEL_KEYS = {"id", "endpoint", "tcp", "sidecar", "sidecar_id", "state", "connected_at",
               "age_s", "streams", "streams_total", "bytes_in", "bytes_out"}


def admin_json(srv, path, headers=None):
    r = h1(srv.admin_port, "GET", path, headers or {})
    assert r.status == 200, r
    assert r.header("content-type") == "application/json", r
    return json.loads(r.body)


def endpoints(srv, headers=None):
    return {e["endpoint"]: e for e in admin_json(srv, "/status/upstream/endpoints", headers)}


def tunnels_of(srv, endpoint):
    return [t for t in admin_json(srv, "/status/tunnels") if t["endpoint"] == endpoint]


def totals(ts):
    return {k: sum(t[k] for t in ts) for k in ("streams", "streams_total", "bytes_in",
                                               "bytes_out")}


def test_endpoints_and_tunnels_follow_the_sidecars_and_the_traffic(piko):
    svc = piko.service()
    srv = piko.server()
    started = datetime.datetime.now(datetime.timezone.utc)
    sc1 = piko.sidecar({"my-service": svc.addr}, server=srv, name="sidecar-1")
    piko.sidecar({"my-service": svc.addr}, server=srv, name="sidecar-2")
    tcp_sidecar(piko, srv, tcp={"db": svc.addr}, name="sidecar-tcp")

    eps = admin_json(srv, "/status/upstream/endpoints")
    assert [e["endpoint"] for e in eps] == ["db", "my-service"]  # by name
    for e in eps:
        assert set(e) == ENDPOINT_KEYS, e
    eps = {e["endpoint"]: e for e in eps}
    assert eps["my-service"]["tunnels"] == 2 and eps["my-service"]["tcp"] is False
    assert eps["db"]["tunnels"] == 1 and eps["db"]["tcp"] is True

    ts = admin_json(srv, "/status/tunnels")
    assert len(ts) == 3
    assert [t["id"] for t in ts] == sorted(t["id"] for t in ts)  # oldest first
    assert len({t["id"] for t in ts}) == 3
    for t in ts:
        assert set(t) == TUNNEL_KEYS, t
        assert t["state"] == "active"
        assert t["tcp"] == (t["endpoint"] == "db")
        host, port = t["sidecar"].rsplit(":", 1)
        assert host == "127.0.0.1" and 0 < int(port) < 65536
        at = datetime.datetime.fromisoformat(t["connected_at"].replace("Z", "+00:00"))
        assert started - datetime.timedelta(seconds=1) <= at <= \
            datetime.datetime.now(datetime.timezone.utc)
        assert 0 <= t["age_s"] < 60 * SLOW
        assert t["streams"] == 0
    mine = [t for t in ts if t["endpoint"] == "my-service"]
    assert mine[0]["sidecar_id"] != mine[1]["sidecar_id"]  # two processes

    # Bodies both ways: the counters move by at least the body bytes (DATA payloads).
    before = totals(tunnels_of(srv, "my-service"))
    for _ in range(3):
        assert h1(srv.proxy_port, "GET", "/echo", EP).status == 200
    assert h1(srv.proxy_port, "POST", "/upload", EP, body=b"u" * 5000).status == 200
    r = h1(srv.proxy_port, "GET", "/download?bytes=100000&seed=3", EP)
    assert r.status == 200 and len(r.body) == 100000
    after = totals(tunnels_of(srv, "my-service"))
    assert after["streams_total"] - before["streams_total"] == 5
    assert after["bytes_out"] - before["bytes_out"] >= 5000  # to the sidecars
    assert after["bytes_in"] - before["bytes_in"] >= 100000  # from the sidecars
    assert after["streams"] == 0
    # The endpoint is the sum of its tunnels.
    ep = endpoints(srv)["my-service"]
    assert {k: ep[k] for k in after} == after

    # A request in flight is a stream on one tunnel until it ends.
    t = threading.Thread(target=h1, args=(srv.proxy_port, "GET", "/slow?ms=%d"
                                          % int(1500 * SLOW), EP))
    t.start()
    try:
        poll(lambda: endpoints(srv)["my-service"]["streams"] == 1, 5 * SLOW,
             message="one stream in flight")
        assert sorted(x["streams"] for x in tunnels_of(srv, "my-service")) == [0, 1]
    finally:
        t.join()
    poll(lambda: endpoints(srv)["my-service"]["streams"] == 0, 5 * SLOW,
         message="the stream closed")

    # A sidecar that goes takes its tunnel out of both lists.
    sc1.stop()
    poll(lambda: endpoints(srv)["my-service"]["tunnels"] == 1, 10 * SLOW,
         message="one tunnel left")
    assert len(tunnels_of(srv, "my-service")) == 1


def test_status_routes_need_the_admin_token_but_the_page_does_not(piko):
    srv = piko.server({"admin.auth.hmac-secret-key": SECRET})
    for path in ("/status/upstream/endpoints", "/status/tunnels"):
        r = h1(srv.admin_port, "GET", path)
        assert r.status == 401, (path, r)
        assert r.header("www-authenticate") == "Bearer", r
        bad = tokens.hs256("not-the-secret-0123456789abcdef0123", tokens.claims())
        assert h1(srv.admin_port, "GET", path, {"Authorization": "Bearer " + bad}).status == 401
    good = {"Authorization": "Bearer " + tokens.hs256(SECRET, tokens.claims())}
    assert admin_json(srv, "/status/upstream/endpoints", good) == []
    assert admin_json(srv, "/status/tunnels", good) == []
    node = admin_json(srv, "/status/cluster/nodes/local", good)

    # The page holds no data: it is served to anyone, and fetches the rest with a token.
    r = h1(srv.admin_port, "GET", "/")
    assert r.status == 200, r
    assert r.header("content-type") == "text/html; charset=utf-8"
    csp = r.header("content-security-policy")
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp, csp
    assert "script-src 'sha256-" in csp and "unsafe-inline" not in csp, csp
    assert r.header("x-content-type-options") == "nosniff"
    assert r.header("cache-control") == "no-store"
    page = r.body.decode()
    assert node["id"] not in page and node["incarnation"] not in page
    for forbidden in ("http://", "https://", "src=\"/", "href=\"/"):
        assert forbidden not in page, forbidden  # self-contained, relative URLs only
    head = h1(srv.admin_port, "HEAD", "/")
    assert head.status == 200 and head.body == b""
    assert head.header("content-length") == str(len(r.body))
    # Only "/" is the page: other unknown paths still need the token.
    assert h1(srv.admin_port, "GET", "/index.html").status == 401


# ---------------------------------------------------------------------------------------
# The page in a browser

needs_chromium = pytest.mark.skipif(
    cdp.chromium_path() is None,
    reason="chromium not installed (scripts/install-deps.sh test installs it)")

PROBE = "/orders/<img/src=x/onerror=document.title='pwned'>"


def requests_shown(page):
    return page.evaluate("document.getElementById('requests-body').innerText")


@needs_chromium
def test_status_page_shows_the_node_tunnels_and_requests(piko, tmp_path):
    svc = piko.service()
    srv = piko.server()
    piko.sidecar({"my-service": svc.addr}, server=srv, name="sidecar-1")
    piko.sidecar({"my-service": svc.addr}, server=srv, name="sidecar-2")
    tcp_sidecar(piko, srv, tcp={"db": svc.addr}, name="sidecar-tcp")
    assert h1(srv.proxy_port, "GET", "/echo?user=42", EP).status == 200
    assert h1(srv.proxy_port, "POST", "/upload", EP, body=b"x" * 20000).status == 200
    assert h1(srv.proxy_port, "GET", "/status/404", EP).status == 404
    assert h1(srv.proxy_port, "GET", "/reports", {"x-piko-endpoint": "billing"}).status == 502
    assert h1(srv.proxy_port, "GET", "/download?bytes=300000&seed=1", EP).status == 200
    node = admin_json(srv, "/status/cluster/nodes/local")

    with cdp.Browser(tmp_path) as browser:
        page = browser.page()
        page.navigate("http://127.0.0.1:%d/" % srv.admin_port)
        page.wait_for(lambda: "/download?bytes=300000" in requests_shown(page), 10,
                      message="the recent requests on the page")
        text = page.text()
        assert node["id"] in text
        assert "my-service" in page.evaluate(
            "document.getElementById('endpoints-body').innerText")
        tunnels = page.evaluate("document.getElementById('tunnels-body').innerText")
        for t in admin_json(srv, "/status/tunnels"):
            assert t["sidecar"] in tunnels
        shown = requests_shown(page)
        for path in ("/echo?user=42", "/upload", "/status/404", "/reports"):
            assert path in shown, path
        assert "no available upstreams" in shown
        assert page.evaluate("document.getElementById('auth').hidden") is True
        page.screenshot(BIN_DIR.parent / "status-page.png")

        # It refreshes itself: a request made now shows up, markup in it as text.
        r = h1(srv.proxy_port, "GET", PROBE, EP)
        assert r.status == 404, r
        page.wait_for(lambda: PROBE in requests_shown(page), 6,
                      message="the page's own refresh")
        assert page.evaluate("document.querySelectorAll('#requests-body img').length") == 0
        assert page.evaluate("document.title") == "Piko \u00b7 " + node["id"]
        page.pump(0.5)
        assert page.errors() == []


@needs_chromium
def test_status_page_asks_for_the_admin_token(piko, tmp_path):
    svc = piko.service()
    srv = piko.server({"admin.auth.hmac-secret-key": SECRET})
    piko.sidecar({"my-service": svc.addr}, server=srv)
    with cdp.Browser(tmp_path) as browser:
        page = browser.page()
        page.navigate("http://127.0.0.1:%d/" % srv.admin_port)
        page.wait_for(lambda: page.evaluate("document.getElementById('auth').hidden") is False,
                      10, message="the token form")
        assert "my-service" not in page.text()

        def submit(token):
            page.evaluate("(function () { var f = document.getElementById('auth');"
                          " document.getElementById('auth-token').value = %s;"
                          " f.requestSubmit(); })()" % json.dumps(token))

        # A refused token brings the form back with its reason.
        submit(tokens.hs256("not-the-secret-0123456789abcdef0123", tokens.claims()))
        page.wait_for(lambda: "refused" in page.evaluate(
            "document.getElementById('auth-msg').innerText"), 10, message="token refused")
        token = tokens.hs256(SECRET, tokens.claims())
        submit("Bearer " + token)
        page.wait_for(lambda: "my-service" in page.evaluate(
            "document.getElementById('endpoints-body').innerText"), 10,
            message="the endpoints with the token")
        assert page.evaluate("document.getElementById('auth').hidden") is True
        assert page.evaluate("sessionStorage.getItem('piko.admin-token')") == token
        time.sleep(2.5 * SLOW)  # a refresh with the stored token: still no form
        page.pump(0.1)
        assert page.evaluate("document.getElementById('auth').hidden") is True
        # The 401s the page got before it had a token are the browser's network log
        # entries; nothing else may be an error.
        others = [e for e in page.errors() if "status of 401" not in e]
        assert others == []
