"""Graceful shutdown: SIGTERM/SIGINT lets in-flight requests finish, then exit 0."""

import http.client
import json
import signal
import threading
import time

import pytest

from helpers import SLOW, assert_json_error, h1

EP = {"x-piko-endpoint": "my-service"}
N = 20


class InFlight:
    """N concurrent GET /slow?ms=2000, each on its own connection."""

    def __init__(self, port, n=N, ms=2000):
        self.results = [None] * n
        self.threads = [threading.Thread(target=self._one, args=(port, i, ms), daemon=True)
                        for i in range(n)]
        for t in self.threads:
            t.start()

    def _one(self, port, i, ms):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30 * SLOW)
        try:
            conn.request("GET", "/slow?ms=%d&i=%d" % (ms, i), headers=EP)
            r = conn.getresponse()
            self.results[i] = (r.status, r.read())
        except Exception as e:  # noqa: BLE001 - reported by check()
            self.results[i] = ("exception", repr(e))
        finally:
            conn.close()

    def join(self, timeout):
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "requests still hanging"

    def check_all_ok(self):
        bad = []
        for i, res in enumerate(self.results):
            if res is None or res[0] != 200:
                bad.append((i, res))
                continue
            got = json.loads(res[1])
            if got["path"] != "/slow?ms=2000&i=%d" % i:
                bad.append((i, got))
        assert not bad, "%d of %d in-flight requests failed: %r" % (
            len(bad), len(self.results), bad[:5])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_server_drains_in_flight_requests(piko, sig):
    svc = piko.service()
    srv = piko.server({"grace-period": "20s"})
    piko.sidecar({"my-service": svc.addr}, server=srv)
    load = InFlight(srv.proxy_port)
    assert svc.wait_in_flight(N, 10 * SLOW), "only %d requests reached the service" % (
        svc.in_flight)
    t0 = time.monotonic()
    srv.signal(sig)
    # Draining: not ready while the requests are still running (they need ~2 s).
    seen = []
    while time.monotonic() - t0 < 1.5:
        seen.append(srv.ready_status())
        if seen[-1] == 503:
            break
        time.sleep(0.02)
    assert 503 in seen, "/ready during drain answered %r" % sorted(set(seen), key=str)
    load.join(20 * SLOW)
    load.check_all_ok()
    assert srv.wait(15) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_sidecar_drains_in_flight_requests(piko, sig):
    svc = piko.service()
    srv = piko.server()
    sc = piko.sidecar({"my-service": svc.addr}, server=srv, flags={"grace-period": "20s"})
    load = InFlight(srv.proxy_port)
    assert svc.wait_in_flight(N, 10 * SLOW), "only %d requests reached the service" % (
        svc.in_flight)
    sc.signal(sig)
    load.join(20 * SLOW)
    load.check_all_ok()
    assert sc.wait(15) == 0
    # It was the only sidecar: the endpoint is gone, the server goes on.
    r = h1(srv.proxy_port, "GET", "/echo", EP)
    assert_json_error(r, 502, "no available upstreams")
    assert srv.ready_status() == 200


def test_server_grace_period_bounds_shutdown(piko):
    """A request that never ends does not keep a draining server alive past its grace
    period; the client sees the connection end, not a hang."""
    svc = piko.service()
    srv = piko.server({"grace-period": "1s"})
    piko.sidecar({"my-service": svc.addr}, server=srv)
    result = {}

    def hang():
        try:
            result["r"] = h1(srv.proxy_port, "GET", "/hang", EP, timeout=30)
        except Exception as e:  # noqa: BLE001
            result["e"] = e

    t = threading.Thread(target=hang, daemon=True)
    t.start()
    assert svc.wait_in_flight(1, 10 * SLOW)
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    srv.wait(10)
    elapsed = time.monotonic() - t0
    assert elapsed < 6 * SLOW, "exit took %.1fs with grace-period 1s" % elapsed
    t.join(10 * SLOW)
    assert not t.is_alive(), "client still hanging after the server exited"
    if "r" in result:  # a response is acceptable only if it is an error
        assert result["r"].status >= 500, result["r"]
