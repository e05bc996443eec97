"""Bodies stream both ways, byte-identical, in bounded memory; HTTP framing details."""

import hashlib
import http.client
import json
import re
import subprocess
import threading
import time

import pytest

from helpers import SANITIZED, assert_json_error, SLOW, RawConn, curl, nghttp, peak_rss_check
from services import MiB, pattern_sha256, pattern_stream

GiB = 1 << 30
EP = {"x-piko-endpoint": "my-service"}


def download_sha(conn_port, path, headers=None, timeout=120):
    conn = http.client.HTTPConnection("127.0.0.1", conn_port, timeout=timeout * SLOW)
    try:
        conn.request("GET", path, headers=headers or EP)
        r = conn.getresponse()
        assert r.status == 200, (r.status, r.read(300))
        buf = bytearray(MiB)
        mv = memoryview(buf)
        d = hashlib.sha256()
        total = 0
        while True:
            n = r.readinto(mv)
            if not n:
                break
            d.update(mv[:n])
            total += n
        return r, total, d.hexdigest()
    finally:
        conn.close()


def upload(port, nbytes, seed, chunked=False, timeout=120, path="/upload", progress=None):
    """POST nbytes of the seed's pattern; progress[0] counts the bytes handed to the
    socket so far."""
    def body():
        for piece in pattern_stream(nbytes, seed):
            yield piece
            if progress is not None:
                progress[0] += len(piece)

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout * SLOW)
    try:
        headers = dict(EP)
        if not chunked:
            headers["Content-Length"] = str(nbytes)
        conn.request("POST", path, body=body(), headers=headers, encode_chunked=chunked)
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200, (r.status, body[:300])
        return json.loads(body)
    finally:
        conn.close()


# ---- 1 GiB each way ------------------------------------------------------------------


@pytest.mark.deadline(150)
def test_upload_1gib_identical_and_bounded_memory(stack):
    srv, sc, svc = stack
    got = upload(srv.proxy_port, GiB, seed=11)
    assert got["length"] == GiB
    assert got["sha256"] == pattern_sha256(GiB, 11)
    assert not svc.body_errors, svc.body_errors
    peak_rss_check([srv, sc])


@pytest.mark.deadline(150)
def test_download_1gib_identical_and_bounded_memory(stack):
    srv, sc, _ = stack
    r, total, sha = download_sha(srv.proxy_port, "/download?bytes=%d&seed=12" % GiB)
    assert r.getheader("content-length") == str(GiB)
    assert total == GiB
    assert sha == pattern_sha256(GiB, 12)
    peak_rss_check([srv, sc])


def wait_stable(read, settle=0.5, timeout=10.0):
    """Poll read() until its value has not changed for `settle` seconds."""
    deadline = time.monotonic() + timeout * SLOW
    last, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        v = read()
        if v != last:
            last, since = v, time.monotonic()
        elif time.monotonic() - since >= settle:
            break
    return last


# In flight between a stalled reader and the writer: socket buffers on three hops (a few
# MiB each on loopback) plus the tunnel's windows (1 MiB stream, 16 MiB connection).
BACKPRESSURE_BOUND = 128 * MiB


@pytest.mark.deadline(90)
def test_download_backpressure_stalled_client(stack):
    srv, sc, svc = stack
    n = 512 * MiB
    conn = http.client.HTTPConnection("127.0.0.1", srv.proxy_port, timeout=60 * SLOW)
    try:
        conn.request("GET", "/download?bytes=%d&seed=21" % n, headers=EP)
        r = conn.getresponse()
        assert r.status == 200
        d = hashlib.sha256(r.read(MiB))
        # The client stops reading: the service must be held back, not the proxy fill up.
        sent = wait_stable(lambda: svc.download_sent)
        assert sent <= BACKPRESSURE_BOUND, (
            "service wrote %d MiB while the client read 1 MiB: no backpressure" % (sent >> 20))
        rss = {p.name: p.rss_kib()["VmRSS"] for p in (srv, sc)}
        buf = bytearray(MiB)
        mv = memoryview(buf)
        total = MiB
        while True:
            k = r.readinto(mv)
            if not k:
                break
            d.update(mv[:k])
            total += k
    finally:
        conn.close()
    assert (total, d.hexdigest()) == (n, pattern_sha256(n, 21))
    if not SANITIZED:
        for name, kib in rss.items():
            assert kib < 64 * 1024, "%s RSS %d MiB while the client stalled" % (
                name, kib >> 10)


@pytest.mark.deadline(90)
def test_upload_backpressure_stalled_service(stack):
    srv, sc, svc = stack
    n = 512 * MiB
    progress = [0]
    result = {}

    def run():
        try:
            result["got"] = upload(srv.proxy_port, n, seed=22, progress=progress,
                                   path="/upload?pause_ms=%d" % int(3000 * SLOW))
        except Exception as e:  # noqa: BLE001 - reported below
            result["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert svc.upload_paused.wait(10 * SLOW), "upload never reached the service"
    sent = wait_stable(lambda: progress[0], timeout=2.0)
    assert sent <= BACKPRESSURE_BOUND, (
        "client sent %d MiB while the service read 1 MiB: no backpressure" % (sent >> 20))
    rss = {p.name: p.rss_kib()["VmRSS"] for p in (srv, sc)}
    t.join(60 * SLOW)
    assert "error" not in result, result.get("error")
    got = result["got"]
    assert (got["length"], got["sha256"]) == (n, pattern_sha256(n, 22))
    if not SANITIZED:
        for name, kib in rss.items():
            assert kib < 64 * 1024, "%s RSS %d MiB while the service stalled" % (
                name, kib >> 10)


@pytest.mark.deadline(90)
def test_chunked_upload_and_download_http1(stack):
    srv, _, _ = stack
    n = 64 * MiB + 12345
    got = upload(srv.proxy_port, n, seed=13, chunked=True)
    assert (got["length"], got["sha256"]) == (n, pattern_sha256(n, 13))
    r, total, sha = download_sha(srv.proxy_port,
                                 "/download?bytes=%d&seed=14&chunked=1&chunk=70000" % n)
    assert (total, sha) == (n, pattern_sha256(n, 14))


@pytest.mark.deadline(90)
def test_h2_download_and_upload_256mib(stack):
    srv, _, _ = stack
    n = 256 * MiB
    url = "http://127.0.0.1:%d" % srv.proxy_port
    # Download over h2c.
    p = subprocess.Popen(["curl", "-sS", "--http2-prior-knowledge", "-H",
                          "x-piko-endpoint: my-service",
                          url + "/download?bytes=%d&seed=15" % n],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    d = hashlib.sha256()
    total = 0
    while True:
        b = p.stdout.read1(MiB)
        if not b:
            break
        d.update(b)
        total += len(b)
    err = p.stderr.read()
    assert p.wait(30) == 0, err
    assert (total, d.hexdigest()) == (n, pattern_sha256(n, 15))

    # Upload over h2c from stdin (no content-length: DATA frames until END_STREAM).
    p = subprocess.Popen(["curl", "-sS", "--http2-prior-knowledge", "-H",
                          "x-piko-endpoint: my-service", "-X", "POST", "-T", "-",
                          url + "/upload"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)

    def feed():
        try:
            for piece in pattern_stream(n, 16):
                p.stdin.write(piece)
            p.stdin.close()
        except BrokenPipeError:
            pass

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    out = p.stdout.read()  # the JSON answer comes once the whole body was read
    err = p.stderr.read()
    t.join(10)
    assert p.wait(30) == 0, err
    got = json.loads(out)
    assert (got["length"], got["sha256"]) == (n, pattern_sha256(n, 16))


# ---- trailers ------------------------------------------------------------------------


def test_request_trailers_reach_service(shared_stack):
    srv, _, svc = shared_stack
    parts = [b"a" * 1000, b"b" * 70000, b"c"]
    body = b"".join(parts)
    wire = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
    with RawConn(srv.proxy_port) as c:
        c.send(b"POST /upload HTTP/1.1\r\nHost: my-service.example.com\r\n"
               b"Transfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n" + wire +
               b"0\r\nx-checksum: " + hashlib.sha256(body).hexdigest().encode() +
               b"\r\n\r\n")
        r = c.read_response()
    assert r.status == 200, r
    got = r.json()
    assert got["length"] == len(body)
    assert got["sha256"] == hashlib.sha256(body).hexdigest()
    assert ["x-checksum", hashlib.sha256(body).hexdigest()] in got["trailers"], got


def test_response_trailers_http1(shared_stack):
    srv, _, _ = shared_stack
    with RawConn(srv.proxy_port) as c:
        c.send(b"GET /trailers HTTP/1.1\r\nHost: my-service.example.com\r\nTE: trailers\r\n\r\n")
        r = c.read_response()
        assert r.status == 200, r
        assert "chunked" in (r.header("transfer-encoding") or ""), r
        trailers = dict(r.trailers)
        assert trailers.get("x-trailer-one") == "one", r.trailers
        assert trailers.get("x-body-sha256") == hashlib.sha256(r.body).hexdigest()
        # The connection is still usable.
        c.send(b"GET /echo HTTP/1.1\r\nHost: my-service.example.com\r\n\r\n")
        assert c.read_response().status == 200


def test_response_trailers_h2(shared_stack):
    srv, _, _ = shared_stack
    rc, out, err = nghttp(srv.proxy_port, ["/trailers"], headers=EP, extra=["-v"])
    assert rc == 0, err
    text = out.decode("latin-1")
    m1 = re.search(r"recv \(stream_id=(\d+)\) x-trailer-one: one", text)
    assert m1, "trailer x-trailer-one not received over h2:\n" + text[-3000:]
    m2 = re.search(r"recv \(stream_id=\d+\) x-body-sha256: ([0-9a-f]{64})", text)
    assert m2, text[-3000:]
    data_pos = text.find("recv DATA frame")
    assert 0 <= data_pos < m1.start(), "trailers must come after the body"


# ---- HEAD, 204, 304 ------------------------------------------------------------------


def test_head_204_304_keep_connection_usable_http1(shared_stack):
    srv, _, _ = shared_stack
    with RawConn(srv.proxy_port) as c:
        host = b"Host: my-service.example.com\r\n"
        c.send(b"HEAD /download?bytes=12345 HTTP/1.1\r\n" + host + b"\r\n")
        r = c.read_response("HEAD")
        assert r.status == 200 and r.header("content-length") == "12345", r
        c.send(b"GET /status/204 HTTP/1.1\r\n" + host + b"\r\n")
        r = c.read_response()
        assert r.status == 204, r
        assert r.header("transfer-encoding") is None, r
        assert r.header("content-length") in (None, "0"), r
        c.send(b"GET /status/304 HTTP/1.1\r\n" + host + b"If-None-Match: \"e2e-etag\"\r\n\r\n")
        r = c.read_response()
        assert r.status == 304 and r.header("etag") == '"e2e-etag"', r
        # Had the proxy sent a body (or chunk framing) after any of them, this request
        # would read garbage.
        c.send(b"GET /echo?after=1 HTTP/1.1\r\n" + host + b"\r\n")
        r = c.read_response()
        assert r.status == 200 and r.json()["path"] == "/echo?after=1", r
        assert c.buf == b""


def test_head_204_304_h2(shared_stack):
    srv, _, _ = shared_stack
    r = curl(srv.proxy_port, "/download?bytes=12345", headers=EP, http2=True, method="HEAD")
    assert r.status == 200 and r.header("content-length") == "12345", r
    r = curl(srv.proxy_port, "/status/204", headers=EP, http2=True)
    assert r.status == 204 and r.body == b"", r
    r = curl(srv.proxy_port, "/status/304", headers=EP, http2=True)
    assert r.status == 304 and r.body == b"", r


# ---- Expect: 100-continue -------------------------------------------------------------


def test_expect_100_continue_answered_by_proxy(shared_stack):
    srv, _, svc = shared_stack
    body = b"0123456789" * 100
    with RawConn(srv.proxy_port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: my-service.example.com\r\n"
               b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        # Nothing of the body is sent until the proxy says 100.
        r = c.read_response()
        assert r.status == 100, "expected an interim 100 Continue, got %r" % r
        c.send(body)
        r = c.read_response()
        assert r.status == 200, "exactly one 100 and then the final response: %r" % r
        got = r.json()
        assert got["body_length"] == len(body)
        assert got["body_sha256"] == hashlib.sha256(body).hexdigest()
        assert "expect" not in [k for k, _ in got["headers"]], got["headers"]
    assert svc.saw_expect == 0


def test_expect_100_continue_curl_large_body(shared_stack):
    srv, _, _ = shared_stack
    body = b"".join(pattern_stream(3 * MiB, 17))
    t0 = time.monotonic()
    r = curl(srv.proxy_port, "/upload", headers=dict(EP, Expect="100-continue"),
             method="POST", data=body, extra=["--expect100-timeout", "30"])
    elapsed = time.monotonic() - t0
    assert r.status == 200, r
    assert r.json()["sha256"] == hashlib.sha256(body).hexdigest()
    # curl waits up to --expect100-timeout for the 100; the proxy must send it.
    assert elapsed < 10 * SLOW, "curl waited %.1fs: no 100 Continue?" % elapsed


def test_expect_100_continue_not_sent_when_no_upstream(shared_stack):
    """The proxy says 100 only once it has found a tunnel; otherwise the final error
    comes at once and the client never has to send its body."""
    srv, _, _ = shared_stack
    with RawConn(srv.proxy_port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: nobody.example.com\r\n"
               b"Expect: 100-continue\r\nContent-Length: 1000000\r\n\r\n")
        r = c.read_response()
        assert_json_error(r, 502, "no available upstreams")
