"""Many requests on one downstream connection: HTTP/1.1 keep-alive and h2c
multiplexing."""

import http.client
import json

import pytest

from helpers import SLOW, h2load

EP = {"x-piko-endpoint": "my-service"}


@pytest.mark.deadline(120)
def test_1000_sequential_requests_one_keepalive_connection(shared_stack):
    srv, _, svc = shared_stack
    conn = http.client.HTTPConnection("127.0.0.1", srv.proxy_port, timeout=10 * SLOW)
    try:
        sock = None
        for i in range(1000):
            if i % 2:
                body = ("body-%d" % i).encode()
                conn.request("POST", "/echo?i=%d" % i, body=body, headers=EP)
            else:
                body = b""
                conn.request("GET", "/echo?i=%d" % i, headers=EP)
            if sock is None:
                sock = conn.sock
            assert conn.sock is sock, "request %d needed a new connection" % i
            r = conn.getresponse()
            data = r.read()
            assert r.status == 200, (i, data[:300])
            got = json.loads(data)
            assert got["path"] == "/echo?i=%d" % i
            assert got["body_length"] == len(body)
            assert not r.will_close, "proxy closed the keep-alive connection at %d" % i
    finally:
        conn.close()
    assert svc.requests == 1000


@pytest.mark.deadline(90)
def test_h2load_200_concurrent_streams_one_connection(shared_stack):
    srv, _, svc = shared_stack
    stats = h2load(srv.proxy_port, "/slow?ms=300", n=200, c=1, m=200, headers=EP)
    assert stats["succeeded"] == 200 and stats["failed"] == 0 and stats["errored"] == 0, \
        stats["output"]
    assert stats["2xx"] == 200, stats["output"]
    assert svc.requests == 200
    # Multiplexed end to end, not serialised somewhere on the way.
    assert svc.max_in_flight >= 50, "only %d requests in flight at once" % svc.max_in_flight


@pytest.mark.deadline(90)
def test_200_distinct_concurrent_h2_streams_all_delivered(shared_stack):
    """200 different requests at once on one h2c connection: each reaches the service
    exactly once and every response byte reaches the client. (curl 7.88 cannot reuse
    an h2c prior-knowledge connection, curl issue 10634, and nghttp interleaves the
    bodies of concurrent streams on stdout, so h2load's byte count is the check.)"""
    srv, _, svc = shared_stack
    paths = ["/echo?i=%d" % i for i in range(200)]
    stats = h2load(srv.proxy_port, paths, n=200, c=1, m=200, headers=EP)
    assert stats["succeeded"] == 200 and stats["2xx"] == 200, stats["output"]
    assert sorted(svc.paths) == sorted(paths)
    assert stats["data_bytes"] == svc.body_bytes_sent, stats["output"]
