"""A configurable HTTP/1.1 test service that plays the upstream behind a sidecar.

It runs in a thread of the pytest process (ThreadingHTTPServer, keep-alive) so tests
can read its counters and open its gates directly. Routes:

  /echo            JSON: service name, method, path, version, headers (in order, with
                   duplicates), body length and sha256 (content-length or chunked body).
  /upload          reads the body streaming (content-length or chunked), answers JSON
                   with its length, sha256 and any request trailers. ?pause_ms=N (with
                   content-length): read 1 MiB, set `upload_paused`, stop reading N ms.
  /download        ?bytes=N&seed=S[&chunked=1][&chunk=K] streams N deterministic bytes
                   (see pattern_stream); content-length unless chunked=1.
                   `download_sent` counts the bytes written to the socket.
  /sse             sends event 1, waits for `sse_release` (set by the test), sends
                   event 2, ends. `sse_waited` records whether the gate was opened.
  /slow?ms=N       answers after N ms (counted in `in_flight`, `arrived`).
  /hang            never answers until the test or the shutdown releases it.
  /status/CODE     answers CODE (204 and 304 without a body).
  /trailers        chunked response with trailers x-trailer-one and x-body-sha256.
  /whoami          the service's name as text.
  /drop            reads the request and closes the connection without a response.
  /close           answers with Connection: close.
  HEAD             on every route: the GET head without a body.
"""

import hashlib
import json
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MiB = 1 << 20
# An odd period so that a misplaced, repeated or dropped chunk changes the hash.
PATTERN_PERIOD = MiB + 7

_pattern_cache = {}
_hash_cache = {}


def pattern(seed):
    """Two periods of the seed's pattern (so any period-long slice is contiguous)."""
    p = _pattern_cache.get(seed)
    if p is None:
        block = random.Random(seed).randbytes(PATTERN_PERIOD)
        p = memoryview(block + block)
        _pattern_cache[seed] = p
    return p


def pattern_stream(nbytes, seed, chunk=MiB):
    """Yield memoryviews covering `nbytes` bytes of the deterministic stream."""
    p = pattern(seed)
    chunk = min(chunk, PATTERN_PERIOD)
    pos = 0
    while pos < nbytes:
        n = min(chunk, nbytes - pos)
        off = pos % PATTERN_PERIOD
        yield p[off:off + n]
        pos += n


def pattern_sha256(nbytes, seed):
    key = (nbytes, seed)
    h = _hash_cache.get(key)
    if h is None:
        d = hashlib.sha256()
        for piece in pattern_stream(nbytes, seed):
            d.update(piece)
        h = d.hexdigest()
        _hash_cache[key] = h
    return h


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # The default backlog of 5 drops SYNs when a sidecar opens many connections at once.
    request_queue_size = 1024

    def __init__(self, addr, service):
        self.service = service
        super().__init__(addr, _Handler)

    def handle_error(self, request, client_address):
        # Proxies reset connections on purpose in several tests; keep stderr quiet.
        self.service.errors += 1


class _BodyError(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "piko-e2e-service"
    # Head and body are separate writes: without TCP_NODELAY every keep-alive response
    # would wait for a delayed ACK (40 ms) and timing-bound tests would measure that.
    disable_nagle_algorithm = True
    timeout = 120  # socket timeout: a stuck proxy never pins a thread forever

    @property
    def svc(self):
        return self.server.service

    def log_message(self, fmt, *args):
        pass

    # Python answers Expect: 100-continue itself; record that the proxy let one through.
    def handle_expect_100(self):
        self.svc.saw_expect += 1
        return super().handle_expect_100()

    # ---- request bodies -------------------------------------------------------------

    def _read_body(self, sink):
        """Feed the request body to sink(memoryview). Returns the trailers (list)."""
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            return self._read_chunked(sink)
        cl = self.headers.get("Content-Length")
        if cl is None:
            return []
        remaining = int(cl)
        buf = bytearray(MiB)
        mv = memoryview(buf)
        while remaining > 0:
            n = self.rfile.readinto(mv[: min(remaining, MiB)])
            if not n:
                raise _BodyError("body ended early, %d bytes missing" % remaining)
            sink(mv[:n])
            remaining -= n
        return []

    def _read_chunked(self, sink):
        buf = bytearray(MiB)
        mv = memoryview(buf)
        while True:
            line = self.rfile.readline(1024)
            if not line.endswith(b"\n"):
                raise _BodyError("bad chunk size line %r" % line)
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                break
            remaining = size
            while remaining > 0:
                n = self.rfile.readinto(mv[: min(remaining, MiB)])
                if not n:
                    raise _BodyError("chunk ended early")
                sink(mv[:n])
                remaining -= n
            if self.rfile.readline(16) not in (b"\r\n", b"\n"):
                raise _BodyError("missing CRLF after chunk")
        trailers = []
        while True:
            line = self.rfile.readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            trailers.append([name.strip().lower(), value.strip()])
        return trailers

    def _hash_body(self):
        d = hashlib.sha256()
        count = [0]

        def sink(piece):
            d.update(piece)
            count[0] += len(piece)

        trailers = self._read_body(sink)
        return count[0], d.hexdigest(), trailers

    # ---- responses ------------------------------------------------------------------

    def _send(self, code, body=b"", ctype="application/json", extra=()):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Service-Name", self.svc.name)
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
            with self.svc.lock:
                self.svc.body_bytes_sent += len(body)

    def _json(self, obj, code=200, extra=()):
        self._send(code, json.dumps(obj) + "\n", extra=extra)

    def _chunk(self, data):
        self.wfile.write(b"%x\r\n" % len(data))
        self.wfile.write(data)
        self.wfile.write(b"\r\n")

    # ---- dispatch -------------------------------------------------------------------

    def do_GET(self):
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = do_GET

    def _dispatch(self):
        svc = self.svc
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        route = url.path
        if route == "/_probe":  # readiness probes of the harness: not counted
            self._hash_body()
            self._send(200, "probe\n", ctype="text/plain")
            return
        with svc.lock:
            svc.requests += 1
            svc.paths.append(self.path)
            svc.in_flight += 1
            svc.max_in_flight = max(svc.max_in_flight, svc.in_flight)
            svc.arrived += 1
            svc.cond.notify_all()
        try:
            handler = getattr(self, "_route_" + route.strip("/").split("/")[0], None)
            if handler is None:
                self._json({"error": "no route " + route}, code=404)
            else:
                handler(url, query)
        except _BodyError as e:
            svc.body_errors.append(str(e))
            self.close_connection = True
        finally:
            with svc.lock:
                svc.in_flight -= 1
                svc.cond.notify_all()

    def _route_echo(self, url, query):
        length, sha, trailers = self._hash_body()
        self._json(
            {
                "service": self.svc.name,
                "method": self.command,
                "path": self.path,
                "version": self.request_version,
                "headers": [[k.lower(), v] for k, v in self.headers.items()],
                "body_length": length,
                "body_sha256": sha,
                "trailers": trailers,
            }
        )

    def _route_upload(self, url, query):
        pause_ms = int(query.get("pause_ms", "0"))
        if pause_ms:
            # Read 1 MiB, then stop reading for a while: the sender must be held back.
            first = self.rfile.read(MiB)
            self.svc.upload_paused.set()
            time.sleep(pause_ms / 1000.0)
            d = hashlib.sha256(first)
            count = [len(first)]

            def sink(piece):
                d.update(piece)
                count[0] += len(piece)

            cl = int(self.headers.get("Content-Length", "0"))
            self.headers.replace_header("Content-Length", str(cl - len(first)))
            trailers = self._read_body(sink)
            length, sha = count[0], d.hexdigest()
        else:
            length, sha, trailers = self._hash_body()
        self._json(
            {"service": self.svc.name, "length": length, "sha256": sha, "trailers": trailers}
        )

    def _route_whoami(self, url, query):
        self._hash_body()
        self._send(200, self.svc.name, ctype="text/plain")

    def _route_close(self, url, query):
        self._hash_body()
        self.close_connection = True
        self._send(200, "bye\n", ctype="text/plain", extra=[("Connection", "close")])

    def _route_drop(self, url, query):
        """Reads the request, then closes the connection without answering."""
        self._hash_body()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _route_download(self, url, query):
        self._hash_body()
        n = int(query.get("bytes", "0"))
        seed = int(query.get("seed", "1"))
        chunk = int(query.get("chunk", str(MiB)))
        chunked = query.get("chunked") == "1"
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("X-Service-Name", self.svc.name)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(n))
        self.end_headers()
        if self.command == "HEAD":
            return
        svc = self.svc
        for piece in pattern_stream(n, seed, chunk):
            if chunked:
                self._chunk(piece)
            else:
                self.wfile.write(piece)
            svc.download_sent += len(piece)  # written into the socket (backpressure)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _route_sse(self, url, query):
        self._hash_body()
        svc = self.svc
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if self.command == "HEAD":
            return
        self._chunk(b"id: 1\ndata: event-1\n\n")
        svc.sse_sent_first.set()
        svc.sse_waited = svc.sse_release.wait(svc.gate_timeout)
        self._chunk(b"id: 2\ndata: event-2\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _route_slow(self, url, query):
        self._hash_body()
        ms = int(query.get("ms", "1000"))
        time.sleep(ms / 1000.0)
        self._json({"service": self.svc.name, "slept_ms": ms, "path": self.path})

    def _route_hang(self, url, query):
        self._hash_body()
        self.svc.hang_release.wait(self.svc.gate_timeout)
        self._json({"service": self.svc.name, "released": True})

    def _route_status(self, url, query):
        self._hash_body()
        code = int(url.path.rstrip("/").rsplit("/", 1)[1])
        if code in (204, 304) or code < 200:
            self.send_response(code)
            self.send_header("X-Service-Name", self.svc.name)
            if code == 304:
                self.send_header("ETag", '"e2e-etag"')
            self.end_headers()
            return
        self._json({"status": code}, code=code)

    def _route_trailers(self, url, query):
        self._hash_body()
        body = b"trailers-body-" * 100
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Trailer", "x-trailer-one, x-body-sha256")
        self.end_headers()
        if self.command == "HEAD":
            return
        self._chunk(body[:700])
        self._chunk(body[700:])
        self.wfile.write(b"0\r\n")
        self.wfile.write(b"x-trailer-one: one\r\n")
        self.wfile.write(b"x-body-sha256: %s\r\n" % hashlib.sha256(body).hexdigest().encode())
        self.wfile.write(b"\r\n")


class Service:
    """One test service on 127.0.0.1:<free port>. Use start()/stop() or `with`."""

    def __init__(self, name="svc", port=0, gate_timeout=60.0):
        self.name = name
        self.gate_timeout = gate_timeout
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.requests = 0
        self.arrived = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.paths = []
        self.errors = 0
        self.body_errors = []
        self.saw_expect = 0
        self.sse_release = threading.Event()
        self.sse_sent_first = threading.Event()
        self.sse_waited = None
        self.hang_release = threading.Event()
        self.upload_paused = threading.Event()
        self.download_sent = 0
        self.body_bytes_sent = 0
        self._httpd = _Server(("127.0.0.1", port), self)
        self.port = self._httpd.server_address[1]
        self._thread = None

    def reset_counters(self):
        with self.lock:
            self.requests = 0
            self.arrived = 0
            self.max_in_flight = self.in_flight
            self.paths = []
            self.body_errors = []
            self.saw_expect = 0
            self.body_bytes_sent = 0

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def start(self):
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
            name="service-" + self.name, daemon=True)
        self._thread.start()
        return self

    def release_all(self):
        self.sse_release.set()
        self.hang_release.set()

    def stop(self):
        self.release_all()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self._httpd.server_close()

    def wait_arrived(self, n, timeout):
        """Wait until at least n requests arrived in total."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.arrived < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True

    def wait_in_flight(self, n, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.in_flight < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def closed_port():
    """A loopback port with nothing listening (bound then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
