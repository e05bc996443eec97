"""Client-side helpers: HTTP/1.1 over raw sockets and http.client, curl/nghttp/h2load."""

import http.client
import json
import os
import re
import select
import socket
import subprocess
import tempfile
import time

import pytest

SANITIZED = "asan" in os.environ.get("PIKO_BIN_DIR", "").lower()
# Sanitized builds run 2-3x slower: stretch waits (never the product's own contracts
# unless a test says so).
SLOW = 3.0 if SANITIZED else 1.0


class Response:
    def __init__(self, status, headers, body, trailers=None, reason=""):
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (lower-case name, value)
        self.body = body
        self.trailers = trailers or []

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        body = self.body[:300]
        return "<Response %s headers=%r body=%r>" % (self.status, self.headers[:12], body)


def assert_json_error(resp, status, message):
    """The proxy's error contract: status, application/json, {"error": message}."""
    assert resp.status == status, "expected %d %r, got %r" % (status, message, resp)
    ctype = resp.header("content-type", "")
    assert ctype.split(";")[0].strip().lower() == "application/json", (
        "error %d must be application/json, got content-type %r" % (status, ctype))
    try:
        obj = json.loads(resp.body)
    except ValueError:
        raise AssertionError("error body is not JSON: %r" % resp.body[:300])
    assert obj == {"error": message} or obj.get("error") == message, (
        "expected {\"error\": %r}, got %r" % (message, obj))


# ---------------------------------------------------------------------------------------
# http.client


def h1(port, method, path, headers=None, body=None, timeout=10.0, conn=None):
    """One request with http.client; reuses `conn` if given (keep-alive)."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout * SLOW)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return Response(r.status, [(k.lower(), v) for k, v in r.getheaders()], data,
                        reason=r.reason)
    finally:
        if own:
            conn.close()


# ---------------------------------------------------------------------------------------
# Raw sockets: exact bytes on the wire, incremental reads.


class RawConn:
    def __init__(self, port, timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout * SLOW)
        self.buf = b""

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed by peer; buffered %r" % self.buf[:200])
        self.buf += data

    def read_until(self, sep, limit=1 << 20):
        while sep not in self.buf:
            if len(self.buf) > limit:
                raise AssertionError("no %r within %d bytes" % (sep, limit))
            self._fill()
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_head(self):
        """Read one response head. Returns (status, reason, headers)."""
        head = self.read_until(b"\r\n\r\n", limit=256 * 1024).decode("latin-1")
        lines = head.split("\r\n")
        m = re.match(r"HTTP/1\.[01] (\d{3})(?: (.*))?$", lines[0])
        assert m, "bad status line %r" % lines[0]
        headers = []
        for line in lines[1:]:
            if not line:
                continue
            k, _, v = line.partition(":")
            headers.append((k.strip().lower(), v.strip()))
        return int(m.group(1)), m.group(2) or "", headers

    def read_response(self, method="GET", skip_1xx=False):
        while True:
            status, reason, headers = self.read_head()
            if skip_1xx and 100 <= status < 200 and status != 101:
                continue
            break
        resp = Response(status, headers, b"", reason=reason)
        te = (resp.header("transfer-encoding") or "").lower()
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return resp
        if "chunked" in te:
            body = []
            while True:
                line = self.read_until(b"\r\n")
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    break
                body.append(self.read_exact(size))
                assert self.read_exact(2) == b"\r\n", "chunk not followed by CRLF"
            while True:
                line = self.read_until(b"\r\n")
                if line == b"\r\n":
                    break
                k, _, v = line.decode("latin-1").partition(":")
                resp.trailers.append((k.strip().lower(), v.strip()))
            resp.body = b"".join(body)
        elif resp.header("content-length") is not None:
            resp.body = self.read_exact(int(resp.header("content-length")))
        else:
            resp.body = self.read_to_eof()
        return resp

    def read_to_eof(self):
        chunks = [self.buf]
        self.buf = b""
        while True:
            data = self.sock.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)

    def closed_by_peer(self, timeout=5.0):
        """True if the peer closes (EOF or reset) within timeout with no more bytes."""
        if self.buf:
            return False
        deadline = time.monotonic() + timeout * SLOW
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                return False
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return True
            if not data:
                return True
            self.buf += data
            return False


def raw_exchange(port, data, method="GET", timeout=10.0):
    with RawConn(port, timeout) as c:
        c.send(data)
        return c.read_response(method)


# ---------------------------------------------------------------------------------------
# curl, nghttp, h2load


def curl(port, path="/echo", headers=None, http2=False, method=None, data=None,
         extra=(), timeout=10.0, host="127.0.0.1"):
    """Run curl; returns Response (headers of the final response, trailers dropped)."""
    url = "http://%s:%d%s" % (host, port, path)
    with tempfile.NamedTemporaryFile(prefix="curl-head-") as head:
        argv = ["curl", "-sS", "--max-time", str(timeout * SLOW), "-D", head.name, "-o", "-"]
        argv += ["--http2-prior-knowledge"] if http2 else ["--http1.1"]
        if method == "HEAD":
            argv += ["-I"]
        elif method:
            argv += ["-X", method]
        for k, v in (headers or {}).items():
            argv += ["-H", "%s: %s" % (k, v)]
        if data is not None:
            argv += ["--data-binary", "@-"]
        argv += list(extra)
        argv.append(url)
        p = subprocess.run(argv, input=data, capture_output=True, timeout=timeout * SLOW + 10)
        if p.returncode != 0:
            raise AssertionError("curl failed (%d): %s\nargv=%r" % (
                p.returncode, p.stderr.decode(errors="replace"), argv))
        out = head.read()
    body = p.stdout
    if method == "HEAD":
        body = b""  # -I writes the head to stdout as well
    return _parse_curl_headers(out, body)


def _parse_curl_headers(out, body):
    # -D - may contain several heads (100 Continue, ...); keep the last.
    text = out.decode("latin-1")
    blocks = [b for b in re.split(r"\r?\n\r?\n", text) if b.strip()]
    assert blocks, "curl printed no response head"
    lines = blocks[-1].splitlines()
    m = re.match(r"HTTP/(?:1\.[01]|2) (\d{3})(?: (.*))?$", lines[0].strip())
    assert m, "bad status line %r" % lines[0]
    headers = []
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.append((k.strip().lower(), v.strip()))
    return Response(int(m.group(1)), headers, body, reason=m.group(2) or "")


def h2load(port, path, n, c=1, m=None, headers=None, timeout=60.0):
    """Run h2load over h2c (prior knowledge); returns its counters as a dict."""
    argv = ["h2load", "-n", str(n), "-c", str(c)]
    if m:
        argv += ["-m", str(m)]
    for k, v in (headers or {}).items():
        argv += ["-H", "%s: %s" % (k, v)]
    paths = [path] if isinstance(path, str) else list(path)  # several: used in turn
    argv += ["http://127.0.0.1:%d%s" % (port, p) for p in paths]
    p = subprocess.run(argv, capture_output=True, timeout=timeout * SLOW, text=True)
    out = p.stdout
    stats = {}
    mreq = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                     r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    mst = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    assert mreq and mst, "cannot parse h2load output (rc=%d):\n%s\n%s" % (
        p.returncode, out, p.stderr)
    for key, val in zip(("total", "started", "done", "succeeded", "failed", "errored",
                         "timeout"), mreq.groups()):
        stats[key] = int(val)
    for key, val in zip(("2xx", "3xx", "4xx", "5xx"), mst.groups()):
        stats[key] = int(val)
    mdata = re.search(r"traffic: .* \((\d+)\) data", out)
    stats["data_bytes"] = int(mdata.group(1)) if mdata else None
    stats["output"] = out + p.stderr
    stats["h2"] = "h2c" in out or "Application protocol: h2c" in out
    return stats


def nghttp(port, paths, headers=None, extra=(), timeout=60.0):
    """nghttp over h2c prior knowledge; all paths are requested concurrently on one
    connection. Returns (returncode, stdout bytes, stderr text)."""
    argv = ["nghttp"] + list(extra)
    for k, v in (headers or {}).items():
        argv += ["-H", "%s: %s" % (k, v)]
    argv += ["http://127.0.0.1:%d%s" % (port, p) for p in paths]
    p = subprocess.run(argv, capture_output=True, timeout=timeout * SLOW)
    err = p.stderr.decode(errors="replace")
    if p.returncode == 0 and not p.stdout.strip():
        # nghttp exits 0 even when the connection failed; an empty body is a failure.
        return 1, p.stdout, "nghttp printed nothing; stderr: " + err
    return p.returncode, p.stdout, err


def poll(fn, timeout, interval=0.05, message="condition"):
    """Call fn() until it returns a truthy value; returns it or raises AssertionError."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = fn()
            if v:
                return v
            last_exc = None
        except Exception as e:  # noqa: BLE001 - reported below
            last_exc = e
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s (last error: %r)" % (
                timeout, message, last_exc))
        time.sleep(interval)


def peak_rss_check(procs, limit_mib=64):
    """Assert VmHWM < limit for each proc; under ASan skip (shadow memory and the
    allocator's quarantine make RSS meaningless). Call it after the functional asserts."""
    usage = {}
    for p in procs:
        usage[p.name] = p.rss_kib()
    if SANITIZED:
        pytest.skip("transfer verified; peak-RSS limit (%d MiB) not asserted under ASan "
                    "(measured KiB: %r)" % (limit_mib, usage))
    for name, u in usage.items():
        assert u["VmHWM"] < limit_mib * 1024, "%s peak RSS %.1f MiB >= %d MiB (%r)" % (
            name, u["VmHWM"] / 1024.0, limit_mib, u)
    return usage
