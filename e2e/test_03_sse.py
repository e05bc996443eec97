"""Server-sent events are flushed as they come: the client receives event 1 while the
service is still blocked before event 2 (it only sends event 2 once the test has seen
event 1). A proxy that buffers makes the first read time out."""

import os
import select
import subprocess
import time

from helpers import SLOW, RawConn


def test_sse_event_flushed_http1(stack):
    srv, _, svc = stack
    with RawConn(srv.proxy_port, timeout=10) as c:
        c.send(b"GET /sse HTTP/1.1\r\nHost: my-service.example.com\r\n"
               b"Accept: text/event-stream\r\n\r\n")
        status, _, headers = c.read_head()
        assert status == 200
        assert dict(headers).get("content-type", "").startswith("text/event-stream")
        got = c.read_until(b"data: event-1\n\n")
        assert b"id: 1" in got
        assert svc.sse_waited is None and not svc.sse_release.is_set()
        svc.sse_release.set()
        c.read_until(b"data: event-2\n\n")
        c.read_until(b"0\r\n\r\n")  # end of the chunked body
    assert svc.sse_waited is True


def test_sse_event_flushed_h2(stack):
    srv, _, svc = stack
    p = subprocess.Popen(["curl", "-sS", "-N", "--http2-prior-knowledge",
                          "-H", "x-piko-endpoint: my-service",
                          "http://127.0.0.1:%d/sse" % srv.proxy_port],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        fd = p.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + 10 * SLOW
        while b"data: event-1\n\n" not in buf:
            left = deadline - time.monotonic()
            assert left > 0, "event 1 not received within 10s (buffered?): %r" % buf
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 65536)
                assert chunk, "stream ended before event 1: %r %r" % (buf, p.stderr.read())
                buf += chunk
        assert svc.sse_waited is None
        svc.sse_release.set()
        out, err = p.communicate(timeout=10 * SLOW)
        buf += out
        assert p.returncode == 0, err
        assert buf.endswith(b"data: event-2\n\n"), buf
        assert svc.sse_waited is True
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
