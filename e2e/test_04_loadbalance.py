"""Two sidecars on one endpoint share the load (fewest in-flight streams, ties
round-robin)."""

import collections
import http.client
import threading

import pytest

from helpers import SLOW, nghttp, poll

N = 200


@pytest.fixture
def two(piko):
    a, b = piko.service("A"), piko.service("B")
    srv = piko.server()
    piko.sidecar({"lb": a.addr}, server=srv, name="sidecar-a")
    piko.sidecar({"lb": b.addr}, server=srv, name="sidecar-b")
    # Both tunnels must be in the routing table before counting.
    seen = set()

    def both_seen():
        conn = http.client.HTTPConnection("127.0.0.1", srv.proxy_port, timeout=5 * SLOW)
        try:
            conn.request("GET", "/whoami", headers={"x-piko-endpoint": "lb"})
            r = conn.getresponse()
            if r.status == 200:
                seen.add(r.read().decode())
        finally:
            conn.close()
        return seen == {"A", "B"}

    poll(both_seen, 10 * SLOW, message="both sidecars of endpoint lb in use")
    a.requests = b.requests = 0
    return srv, a, b


def assert_balanced(counts, total):
    assert sum(counts.values()) == total, counts
    for name in ("A", "B"):
        assert counts[name] >= 0.3 * total, "unbalanced: %r" % dict(counts)


def test_sequential_requests_on_one_connection_are_balanced(two):
    srv, a, b = two
    counts = collections.Counter()
    conn = http.client.HTTPConnection("127.0.0.1", srv.proxy_port, timeout=10 * SLOW)
    try:
        for _ in range(N):
            conn.request("GET", "/whoami", headers={"x-piko-endpoint": "lb"})
            r = conn.getresponse()
            body = r.read().decode()
            assert r.status == 200, body
            counts[body] += 1
    finally:
        conn.close()
    assert_balanced(counts, N)
    assert (a.requests, b.requests) == (counts["A"], counts["B"])


def test_concurrent_requests_are_balanced(two):
    srv, a, b = two
    counts = collections.Counter()
    errors = []
    lock = threading.Lock()

    def worker(k):
        conn = http.client.HTTPConnection("127.0.0.1", srv.proxy_port, timeout=20 * SLOW)
        try:
            for i in range(N // 20):
                conn.request("GET", "/slow?ms=20&w=%d&i=%d" % (k, i),
                             headers={"x-piko-endpoint": "lb"})
                r = conn.getresponse()
                body = r.read()
                if r.status != 200:
                    with lock:
                        errors.append((r.status, body[:200]))
                    continue
                with lock:
                    counts[r.getheader("x-service-name")] += 1
        except Exception as e:  # noqa: BLE001
            with lock:
                errors.append(repr(e))
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60 * SLOW)
    assert not errors, errors[:5]
    assert_balanced(counts, N)


def test_h2_multiplexed_requests_are_balanced(two):
    srv, _, _ = two
    rc, out, err = nghttp(srv.proxy_port, ["/whoami?i=%d" % i for i in range(N)],
                          headers={"x-piko-endpoint": "lb"})
    assert rc == 0, err
    text = out.decode()
    assert set(text) <= {"A", "B"} and len(text) == N, text[:300]
    assert_balanced(collections.Counter(text), N)
