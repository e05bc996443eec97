"""Prometheus metrics on the admin ports (issue "Observability"): the exposition parses
with prometheus_client's parser, and the request counters, histograms and gauges move
exactly as a scripted workload implies (a larger workload: test_52); --metrics.enabled
false; --metrics.endpoint-labels and its bound; the Grafana dashboard only queries
metrics that exist."""

import http.client
import json
import re
import time
from pathlib import Path

import tokens
from helpers import h1
from prom import scrape as prom_scrape

EP = {"x-piko-endpoint": "my-service"}
DOCS = Path(__file__).resolve().parent.parent / "docs"
DASHBOARD = DOCS / "grafana" / "piko.json"
REFERENCE = DOCS / "manage" / "metrics.md"


def scrape(proc, headers=None):
    """(samples, content-type) of a server's or sidecar's /metrics:
    {(name, frozenset(labels.items())): value}."""
    s = prom_scrape(proc, headers)
    return s, s.content_type


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_request_metrics_follow_the_workload(piko):
    svc = piko.service()
    srv = piko.server()
    sc = piko.sidecar({"my-service": svc.addr}, server=srv)
    before, ctype = scrape(srv)
    sc_before, _ = scrape(sc)
    assert ctype.startswith("text/plain; version=0.0.4"), ctype
    for _ in range(3):
        assert h1(srv.proxy_port, "GET", "/echo", EP).status == 200
    assert h1(srv.proxy_port, "GET", "/status/404", EP).status == 404
    assert h1(srv.proxy_port, "POST", "/upload", EP, body=b"x" * 1000).status == 200
    assert h1(srv.proxy_port, "GET", "/", {"x-piko-endpoint": "nobody"}).status == 502
    assert h1(srv.proxy_port, "DELETE", "/", {}).status == 400  # no endpoint: "other" not needed
    time.sleep(0.2)  # the exchanges are counted when they are freed
    after, _ = scrape(srv)
    sc_after, _ = scrape(sc)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    def sc_delta(name, **labels):
        return value(sc_after, name, **labels) - value(sc_before, name, **labels)

    # The sidecar saw the five requests that reached the service.
    sreq = "piko_sidecar_requests_total"
    assert sc_delta(sreq, endpoint="my-service", status="200", method="GET") == 3
    assert sc_delta(sreq, endpoint="my-service", status="404", method="GET") == 1
    assert sc_delta(sreq, endpoint="my-service", status="200", method="POST") == 1
    assert sc_delta("piko_sidecar_request_latency_seconds_count", endpoint="my-service") == 5
    assert value(sc_after, "piko_sidecar_tunnels_connected") == 1
    assert value(sc_after, "piko_sidecar_streams_in_flight") == 0
    assert value(sc_after, "process_open_fds") > 3

    total = "piko_proxy_requests_total"
    assert delta(total, status="200", method="GET") == 3
    assert delta(total, status="404", method="GET") == 1
    assert delta(total, status="200", method="POST") == 1
    assert delta(total, status="502", method="GET") == 1
    assert delta(total, status="400", method="DELETE") == 1
    assert delta("piko_proxy_request_latency_seconds_count") == 7
    assert delta("piko_proxy_request_size_bytes_count") == 7
    assert delta("piko_proxy_request_size_bytes_sum") == 1000
    assert delta("piko_proxy_request_size_bytes_bucket", le="1024") == 7
    assert delta("piko_proxy_request_size_bytes_bucket", le="256") == 6
    assert delta("piko_proxy_response_size_bytes_count") == 7
    assert value(after, "piko_proxy_requests_in_flight") == 0
    assert value(after, "piko_upstreams_connected_upstreams") == 1
    assert value(after, "piko_upstreams_registered_endpoints") == 1
    assert value(after, "process_open_fds") > 3
    assert value(after, "process_resident_memory_bytes") > 1 << 20
    assert value(after, "process_start_time_seconds") > time.time() - 600
    assert value(after, "piko_connections_refused_total") == 0


def test_metrics_need_the_admin_token_when_admin_auth_is_on(piko):
    secret = "metrics-test-secret-0123456789abcdef"
    srv = piko.server({"admin.auth.hmac-secret-key": secret})
    r = h1(srv.admin_port, "GET", "/metrics")
    assert r.status == 401, r
    token = tokens.hs256(secret, tokens.claims())
    samples, _ = scrape(srv, {"Authorization": "Bearer " + token})
    assert value(samples, "piko_upstreams_connected_upstreams") == 0


def test_metrics_disabled(piko):
    srv = piko.server(args=["--metrics.enabled=false"])
    r = h1(srv.admin_port, "GET", "/metrics")
    assert r.status == 404, r
    assert json.loads(r.body) == {"error": "metrics disabled"}
    assert h1(srv.proxy_port, "GET", "/", EP).status == 502  # nothing to count it in


def test_endpoint_labels_are_bounded(piko):
    """Every endpoint a client names gets its series: at most 10000 of them, then the
    requests are counted as dropped (3 series for a new endpoint: its status class and
    its bytes in and out)."""
    srv = piko.server(args=["--metrics.endpoint-labels"])
    plain = piko.server(name="server-plain")
    conn = http.client.HTTPConnection("127.0.0.1", srv.proxy_port, timeout=10)
    n = 10000 // 3 + 5
    try:
        for i in range(n):
            r = h1(srv.proxy_port, "GET", "/", {"x-piko-endpoint": "ep-%d" % i}, conn=conn)
            assert r.status == 502, r
    finally:
        conn.close()
    m = prom_scrape(srv)
    classes = [k for k in m if k[0] == "piko_endpoint_requests_total"]
    assert len(classes) == 10000 // 3, len(classes)
    assert m.value("piko_endpoint_requests_total", endpoint="ep-7", status_class="5xx") == 1
    assert m.value("piko_endpoint_bytes_total", endpoint="ep-7", direction="out") > 0
    assert m.value("piko_endpoint_requests_dropped_total") == n - 10000 // 3
    assert m.value("piko_proxy_requests_total", status="502", method="GET") == n
    # Off by default: no such family at all.
    assert not [k for k in prom_scrape(plain).types if k.startswith("piko_endpoint_")]


def test_grafana_dashboard_and_reference_match_the_metrics(piko):
    """docs/grafana/piko.json is JSON Grafana imports (schema 38, a Prometheus data
    source input), and every metric name in its queries is in a live scrape; the
    reference docs/manage/metrics.md names every family of both binaries, and no other."""
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] >= 36 and dash["title"]
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    exprs = []
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        exprs += [t["expr"] for t in panel["targets"]]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["query"]["query"])
    used = set()
    for e in exprs:
        used |= set(re.findall(r"\b((?:piko|process)_[a-z0-9_]+)\b", e))
    svc = piko.service()
    srv = piko.server(args=["--metrics.endpoint-labels"])
    sc = piko.sidecar({"my-service": svc.addr}, server=srv)
    scrapes = [prom_scrape(srv), prom_scrape(sc)]
    known = scrapes[0].sample_names() | scrapes[1].sample_names()
    missing = sorted(used - known)
    assert not missing, "the dashboard queries metrics that no scrape has: %r" % missing
    doc = REFERENCE.read_text()
    families = set(scrapes[0].types) | set(scrapes[1].types)
    undocumented = sorted(f for f in families if "`%s`" % f not in doc)
    assert not undocumented, "families missing from metrics.md: %r" % undocumented
    stale = sorted(set(re.findall(r"`((?:piko|process)_[a-z0-9_]+)`", doc)) - families)
    assert not stale, "metrics.md names metrics no scrape has: %r" % stale
    for name in ("piko_proxy_requests_total", "piko_proxy_request_latency_seconds_bucket",
                 "piko_proxy_requests_in_flight", "piko_upstreams_connected_upstreams",
                 "piko_upstreams_registered_endpoints", "piko_cluster_nodes",
                 "piko_proxy_stream_bytes_total", "piko_proxy_aborts_total",
                 "piko_proxy_auth_rejections_total"):
        assert name in used, "the dashboard has no panel on %s" % name
