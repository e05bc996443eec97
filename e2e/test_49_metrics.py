"""Prometheus metrics on the server's admin port (issue "Observability", first part): the
exposition parses with prometheus_client's parser, and the request counters, histograms
and gauges move exactly as a scripted workload implies."""

import time

import pytest

import tokens
from helpers import h1

prom_parser = pytest.importorskip(
    "prometheus_client.parser",
    reason="prometheus_client is installed by scripts/install-deps.sh test")

EP = {"x-piko-endpoint": "my-service"}


def scrape(proc, headers=None):
    """(samples, content-type) of a server's or sidecar's /metrics:
    {(name, frozenset(labels.items())): value}."""
    r = h1(proc.admin_port, "GET", "/metrics", headers or {})
    assert r.status == 200, r
    text = r.body.decode()
    samples = {}
    for fam in prom_parser.text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, r.header("content-type")


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
