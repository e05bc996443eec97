"""HTTP/2 floods on the proxy port (issue "Security", hardening): a rapid-reset flood, a
CONTINUATION flood, a SETTINGS flood and a PING flood each end only the offending
connection (GOAWAY or close), and the node keeps serving other clients meanwhile."""

import socket
import struct
import threading
import time

from helpers import SLOW, h1

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EP = {"x-piko-endpoint": "my-service"}

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, CONTINUATION = 0, 1, 3, 4, 6, 7, 9
END_STREAM, END_HEADERS = 0x1, 0x4


def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", sid) + payload


def request_block(authority=b"my-service.example"):
    # HPACK: :method GET (static 2), :path / (4), :scheme http (6), :authority literal
    # without indexing (name index 1).
    return b"\x82\x84\x86" + b"\x01" + bytes([len(authority)]) + authority


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5 * SLOW)
    s.sendall(PREFACE + frame(SETTINGS, 0, 0))
    return s


def drain_until_closed(s, timeout):
    """Reads until the peer closes; returns (closed, saw_goaway)."""
    deadline = time.monotonic() + timeout
    buf = b""
    goaway = False
    s.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            d = s.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, OSError):
            return True, goaway
        if not d:
            return True, goaway
        buf += d
        # walk the frames seen so far
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + n:
                break
            if buf[3] == GOAWAY:
                goaway = True
            buf = buf[9 + n:]
    return False, goaway


class Prober(threading.Thread):
    """A well-behaved client sending a request every 20 ms while a flood runs."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.ok = 0
        self.failed = []

    def run(self):
        while not self.stop.is_set():
            try:
                r = h1(self.port, "GET", "/echo?probe=1", EP)
                if r.status == 200:
                    self.ok += 1
                else:
                    self.failed.append(r.status)
            except Exception as e:  # noqa: BLE001 - any failure counts
                self.failed.append(repr(e))
            time.sleep(0.02)


def run_flood(srv, flood):
    p = Prober(srv.proxy_port)
    p.start()
    try:
        closed, goaway = flood(srv.proxy_port)
    finally:
        time.sleep(0.2)
        p.stop.set()
        p.join(10)
    assert srv.running(), "server died"
    assert not p.failed, "normal requests failed during the flood: %r" % p.failed[:5]
    assert p.ok > 0
    assert h1(srv.proxy_port, "GET", "/echo?after=1", EP).status == 200
    return closed, goaway


def test_rapid_reset_flood(shared_stack):
    srv, sc, svc = shared_stack

    def flood(port):
        s = connect(port)
        sid = 1
        burst = b""
        closed = False
        for i in range(5000):
            burst += frame(HEADERS, END_HEADERS | END_STREAM, sid, request_block())
            burst += frame(RST_STREAM, 0, sid, struct.pack(">I", 8))  # CANCEL
            sid += 2
            if len(burst) > 32768:
                try:
                    s.sendall(burst)
                except OSError:
                    closed = True
                    break
                burst = b""
        res = drain_until_closed(s, 5 * SLOW)
        s.close()
        return closed or res[0], res[1]

    closed, goaway = run_flood(srv, flood)
    assert closed, "the connection survived 5000 HEADERS+RST_STREAM pairs"


def test_continuation_flood(shared_stack):
    srv, sc, svc = shared_stack

    def flood(port):
        s = connect(port)
        block = request_block()
        s.sendall(frame(HEADERS, 0, 1, block))
        closed = False
        for i in range(2000):
            try:
                s.sendall(frame(CONTINUATION, 0, 1, b"\x40\x01a\x01b"))  # literal a: b
            except OSError:
                closed = True
                break
        res = drain_until_closed(s, 5 * SLOW)
        s.close()
        return closed or res[0], res[1]

    closed, goaway = run_flood(srv, flood)
    assert closed, "the connection survived 2000 CONTINUATION frames"


def test_settings_and_ping_floods(shared_stack):
    """SETTINGS and PINGs sent without ever reading the ACKs: the node stops reading that
    connection once its output is full (or nghttp2 ends it after 1000 queued ACKs), so
    its memory stays bounded, and other clients are served."""
    srv, sc, svc = shared_stack
    rss_before = srv.rss_kib()["VmRSS"]

    def flood(port):
        s = connect(port)
        s.settimeout(2 * SLOW)
        chunk = (frame(SETTINGS, 0, 0, b"\x00\x03\x00\x00\x00\x64") +
                 frame(PING, 0, 0, b"12345678")) * 256
        closed = False
        sent = 0
        for i in range(400):  # up to 3.2 MB of frames, about 100,000 ACKs owed
            try:
                s.sendall(chunk)
                sent += len(chunk)
            except socket.timeout:
                break  # the node stopped reading: backpressure, not buffering
            except OSError:
                closed = True
                break
        s.close()
        return closed, sent

    closed, sent = run_flood(srv, flood)
    grown = srv.rss_kib()["VmRSS"] - rss_before
    assert grown < 32 * 1024, "RSS grew by %d KiB under the flood" % grown
