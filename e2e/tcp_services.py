"""Raw TCP for the end-to-end suite (issue 3): test services, clients of the
`/_piko/v1/tcp/{endpoint}` upgrade (HTTP/1.1, and a minimal h2c extended CONNECT), a
WebSocket echo app and client (RFC 6455 framing written out here), and the harness glue
(`tcp_sidecar`, `wait_listening`). Python standard library only.

Services (each on 127.0.0.1:<free port>, one thread per connection, every connection
recorded in `svc.conns` as a `ConnRecord`):

  TcpService(mode="echo")       writes back what it reads; on EOF it half-closes
  TcpService(mode="collect")    reads to EOF, then sends everything back, then closes
  TcpService(mode="push", nbytes=N, seed=S)
                                sends N bytes of the pattern as fast as it can, then
                                half-closes and reads (and hashes) to EOF
  TcpService(mode="reset", nbytes=N)
                                waits for one byte, sends N pattern bytes, then closes
                                with SO_LINGER 0 (an RST)
  TcpService(..., proxy_protocol=True)
                                first parses a PROXY protocol v1 or v2 header (recorded
                                in rec.proxy), then behaves as its mode
  WsService()                   HTTP/1.1: `GET` with `Upgrade: websocket` -> 101 with the
                                RFC 6455 accept, then echoes every message; any other
                                request -> 200 "ok" (keep-alive; the harness probes)
"""

import base64
import hashlib
import json
import os
import re
import socket
import struct
import threading

from helpers import SLOW, Response, poll
from services import MiB, pattern_stream

GiB = 1 << 30
PROXY_V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# ---------------------------------------------------------------------------------------
# Services


class ConnRecord:
    """What a service saw on one accepted connection."""

    def __init__(self, peer):
        self.peer = peer
        self.proxy = None        # parsed PROXY header (dict) when proxy_protocol
        self.received = 0        # payload bytes read (after any PROXY header)
        self.sha = hashlib.sha256()
        self.sent = 0
        self.eof = False         # saw a clean EOF from the sidecar
        self.error = None        # exception text, if the connection failed
        self.done = threading.Event()
        self.first_bytes = b""   # the first 256 payload bytes (diagnostics)

    def digest(self):
        return self.sha.hexdigest()

    def __repr__(self):
        return "<ConnRecord peer=%s proxy=%s received=%d sent=%d eof=%s error=%s>" % (
            self.peer, self.proxy, self.received, self.sent, self.eof, self.error)


class _Reader:
    """Exact reads on a socket (for PROXY headers and HTTP heads)."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("EOF")
        self.buf += data

    def exact(self, n):
        while len(self.buf) < n:
            self.fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def until(self, sep, limit=65536):
        while sep not in self.buf:
            if len(self.buf) > limit:
                raise ValueError("no %r within %d bytes" % (sep, limit))
            self.fill()
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out


def parse_proxy_header(reader):
    """Reads one PROXY protocol header (v1 or v2). Returns a dict: version, command,
    family, src, sport, dst, dport, raw."""
    first = reader.exact(5)
    if first == b"PROXY":
        line = first + reader.until(b"\r\n", limit=107)
        parts = line[:-2].decode("ascii").split(" ")
        out = {"version": 1, "raw": line, "family": parts[1], "command": "PROXY"}
        if parts[1] in ("TCP4", "TCP6"):
            assert len(parts) == 6, "bad v1 line %r" % line
            out.update(src=parts[2], dst=parts[3], sport=int(parts[4]),
                       dport=int(parts[5]))
        return out
    if first != PROXY_V2_SIG[:5]:
        raise ValueError("no PROXY header: connection starts with %r" % first)
    rest = reader.exact(11)
    head = first + rest
    if head[:12] != PROXY_V2_SIG:
        raise ValueError("bad PROXY v2 signature %r" % head)
    ver_cmd, fam, length = head[12], head[13], struct.unpack("!H", head[14:16])[0]
    body = reader.exact(length)
    out = {"version": ver_cmd >> 4, "command": {0: "LOCAL", 1: "PROXY"}.get(ver_cmd & 15),
           "family_byte": fam, "raw": head + body}
    if fam == 0x11:  # TCP over IPv4
        out["family"] = "TCP4"
        src, dst, sport, dport = struct.unpack("!4s4sHH", body[:12])
        out.update(src=socket.inet_ntop(socket.AF_INET, src),
                   dst=socket.inet_ntop(socket.AF_INET, dst), sport=sport, dport=dport,
                   tlv=body[12:])
    elif fam == 0x21:  # TCP over IPv6
        out["family"] = "TCP6"
        src, dst, sport, dport = struct.unpack("!16s16sHH", body[:36])
        out.update(src=socket.inet_ntop(socket.AF_INET6, src),
                   dst=socket.inet_ntop(socket.AF_INET6, dst), sport=sport, dport=dport,
                   tlv=body[36:])
    else:
        out["family"] = "0x%02x" % fam
    return out


class _BaseService:
    """Accept loop on 127.0.0.1:<free port>; `handle(sock, rec)` per connection."""

    def __init__(self, name):
        self.name = name
        self.lock = threading.Lock()
        self.conns = []
        self.errors = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(2048)
        self.port = self.sock.getsockname()[1]
        self._stopped = False
        self._open = set()
        self._thread = threading.Thread(target=self._accept, daemon=True,
                                        name="tcp-service-" + name)
        self._thread.start()

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def _accept(self):
        while True:
            try:
                c, peer = self.sock.accept()
            except OSError:
                return
            if self._stopped:
                c.close()
                return
            rec = ConnRecord(peer)
            with self.lock:
                self.conns.append(rec)
                self._open.add(c)
            threading.Thread(target=self._serve, args=(c, rec), daemon=True).start()

    def _serve(self, c, rec):
        c.settimeout(120 * SLOW)
        try:
            self.handle(c, rec)
        except Exception as e:  # noqa: BLE001 - recorded for the tests
            rec.error = "%s: %s" % (type(e).__name__, e)
        finally:
            with self.lock:
                self._open.discard(c)
            try:
                c.close()
            except OSError:
                pass
            rec.done.set()

    def handle(self, c, rec):
        raise NotImplementedError

    def release_all(self):
        """Called by the harness at teardown (like services.Service.release_all)."""

    def data_conns(self):
        """Connections that carried at least one payload byte or a PROXY header."""
        with self.lock:
            return [r for r in self.conns if r.received or r.proxy]

    def reset(self):
        with self.lock:
            self.conns = []

    def wait_conns(self, n, timeout=10.0, data=True):
        def enough():
            got = self.data_conns() if data else list(self.conns)
            return got if len(got) >= n else None
        return poll(enough, timeout * SLOW, message="%d connections at %s" % (n, self.name))

    def stop(self):
        self._stopped = True
        try:
            self.sock.close()
        except OSError:
            pass
        with self.lock:
            open_socks = list(self._open)
        for c in open_socks:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class TcpService(_BaseService):
    def __init__(self, name="tcp", mode="echo", proxy_protocol=False, nbytes=0, seed=1,
                 chunk=256 * 1024):
        self.mode = mode
        self.proxy_protocol = proxy_protocol
        self.nbytes = nbytes
        self.seed = seed
        self.chunk = chunk
        self.release = threading.Event()  # "reset" mode may wait on it (see reset_gate)
        self.reset_gate = False
        super().__init__(name)

    def release_all(self):
        self.release.set()

    def _count_in(self, rec, data):
        if rec.received < 256:
            rec.first_bytes += bytes(data[:256 - rec.received])
        rec.received += len(data)
        rec.sha.update(data)

    def handle(self, c, rec):
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending = b""
        if self.proxy_protocol:
            reader = _Reader(c)
            rec.proxy = parse_proxy_header(reader)
            pending = reader.buf
        getattr(self, "_mode_" + self.mode)(c, rec, pending)

    def _read_loop(self, c, rec, pending, on_data):
        """Feeds pending and then every read to on_data until EOF."""
        if pending:
            self._count_in(rec, pending)
            on_data(memoryview(pending))
        buf = bytearray(self.chunk)
        mv = memoryview(buf)
        while True:
            n = c.recv_into(mv)
            if not n:
                rec.eof = True
                return
            self._count_in(rec, mv[:n])
            on_data(mv[:n])

    def _send(self, c, rec, data):
        c.sendall(data)
        rec.sent += len(data)

    def _mode_echo(self, c, rec, pending):
        self._read_loop(c, rec, pending, lambda d: self._send(c, rec, d))
        c.shutdown(socket.SHUT_WR)
        # Lingering close: wait for the peer's close (or a short while).
        c.settimeout(5 * SLOW)
        try:
            while c.recv(65536):
                pass
        except OSError:
            pass

    def _mode_collect(self, c, rec, pending):
        got = []
        self._read_loop(c, rec, pending, lambda d: got.append(bytes(d)))
        for piece in got:
            self._send(c, rec, piece)
        c.shutdown(socket.SHUT_WR)

    def _mode_push(self, c, rec, pending):
        if pending:
            self._count_in(rec, pending)
        for piece in pattern_stream(self.nbytes, self.seed, self.chunk):
            self._send(c, rec, piece)
        c.shutdown(socket.SHUT_WR)
        self._read_loop(c, rec, b"", lambda d: None)

    def _mode_reset(self, c, rec, pending):
        if not pending:
            pending = c.recv(1)
            if not pending:
                rec.eof = True
                return
        self._count_in(rec, pending)
        for piece in pattern_stream(self.nbytes, self.seed, self.chunk):
            self._send(c, rec, piece)
        if self.reset_gate:
            self.release.wait(60 * SLOW)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        rec.error = "reset sent on purpose"


class WsService(_BaseService):
    """A minimal WebSocket echo app (RFC 6455, server side) that also answers plain
    HTTP/1.1 requests with 200 "ok"."""

    def __init__(self, name="ws"):
        self.upgrades = []    # request heads (dict: line, headers) of upgrade requests
        self.messages = 0
        super().__init__(name)

    def handle(self, c, rec):
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = _Reader(c)
        while True:
            try:
                head = reader.until(b"\r\n\r\n").decode("latin-1")
            except EOFError:
                rec.eof = True
                return
            lines = head.split("\r\n")
            method, target, _version = lines[0].split(" ", 2)
            headers = []
            for line in lines[1:]:
                if line:
                    k, _, v = line.partition(":")
                    headers.append((k.strip().lower(), v.strip()))
            hd = {}
            for k, v in headers:
                hd[k] = v if k not in hd else hd[k] + ", " + v
            tokens = [t.strip().lower() for t in hd.get("connection", "").split(",")]
            if hd.get("upgrade", "").lower() == "websocket" and "upgrade" in tokens:
                with self.lock:
                    self.upgrades.append({"line": lines[0], "headers": headers,
                                          "peer": rec.peer})
                if hd.get("sec-websocket-version") != "13":
                    body = b"unsupported websocket version\n"
                    c.sendall(b"HTTP/1.1 400 Bad Request\r\nSec-WebSocket-Version: 13\r\n"
                              b"Content-Type: text/plain\r\nContent-Length: %d\r\n"
                              b"Connection: close\r\n\r\n%s" % (len(body), body))
                    return
                key = hd.get("sec-websocket-key", "").encode()
                accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
                c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n"
                          b"X-Ws-Service: %s\r\n\r\n" % (accept, self.name.encode()))
                self._echo_frames(c, rec, reader)
                return
            cl = int(hd.get("content-length", "0") or "0")
            if cl:
                reader.exact(cl)
            body = b"ok\n"
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    def _echo_frames(self, c, rec, reader):
        while True:
            try:
                fin, opcode, payload = ws_read_frame(reader, expect_masked=True)
            except EOFError:
                rec.eof = True
                return
            rec.received += len(payload)
            if opcode == 0x8:  # close: answer with the same code, then close
                c.sendall(ws_frame(0x8, payload[:2], mask=False))
                c.shutdown(socket.SHUT_WR)
                try:
                    while c.recv(65536):
                        pass
                except OSError:
                    pass
                return
            if opcode == 0x9:  # ping -> pong
                c.sendall(ws_frame(0xA, payload, mask=False))
                continue
            if opcode == 0xA:
                continue
            c.sendall(ws_frame(opcode, payload, mask=False, fin=fin))
            rec.sent += len(payload)
            with self.lock:
                self.messages += 1


# ---------------------------------------------------------------------------------------
# WebSocket framing (RFC 6455 section 5.2)


def _xor_mask(payload, mask):
    n = len(payload)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def ws_frame(opcode, payload, mask=True, fin=True):
    payload = bytes(payload)
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask:
        key = os.urandom(4)
        return head + key + _xor_mask(payload, key)
    return head + payload


def ws_read_frame(reader, expect_masked):
    """(fin, opcode, payload) of one frame; checks the mask bit's direction."""
    b0, b1 = reader.exact(2)
    fin, opcode = bool(b0 & 0x80), b0 & 0x0F
    if b0 & 0x70:
        raise ValueError("reserved bits set: 0x%02x" % b0)
    masked, n = bool(b1 & 0x80), b1 & 0x7F
    if masked != expect_masked:
        raise ValueError("mask bit %s, expected %s" % (masked, expect_masked))
    if n == 126:
        n = struct.unpack("!H", reader.exact(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", reader.exact(8))[0]
    key = reader.exact(4) if masked else None
    payload = reader.exact(n)
    if masked:
        payload = _xor_mask(payload, key)
    return fin, opcode, payload


def ws_accept(key):
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


class WsClient:
    """A WebSocket client over a raw socket (the handshake is sent by hand so that the
    test sees exactly what the proxy answers)."""

    def __init__(self, port, path="/ws", headers=None, timeout=10.0, version="13"):
        self.key = base64.b64encode(os.urandom(16)).decode()
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout * SLOW)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = _Reader(self.sock)
        fields = {"Host": "127.0.0.1:%d" % port, "Connection": "Upgrade",
                  "Upgrade": "websocket", "Sec-WebSocket-Key": self.key,
                  "Sec-WebSocket-Version": version}
        fields.update(headers or {})
        req = "GET %s HTTP/1.1\r\n" % path + "".join(
            "%s: %s\r\n" % kv for kv in fields.items() if kv[1] is not None) + "\r\n"
        self.sock.sendall(req.encode("latin-1"))
        self.response = read_response_head(self.reader)
        if self.response.status != 101:
            read_body(self.reader, self.response)

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, payload, opcode=None):
        if opcode is None:
            opcode = 0x1 if isinstance(payload, str) else 0x2
        if isinstance(payload, str):
            payload = payload.encode()
        self.sock.sendall(ws_frame(opcode, payload, mask=True))

    def recv(self):
        """(opcode, payload) of the next frame from the server (unmasked)."""
        fin, opcode, payload = ws_read_frame(self.reader, expect_masked=False)
        assert fin, "the echo app never fragments"
        return opcode, payload


# ---------------------------------------------------------------------------------------
# HTTP/1.1 heads on raw sockets


def read_response_head(reader):
    head = reader.until(b"\r\n\r\n", limit=256 * 1024).decode("latin-1")
    lines = head.split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3})(?: (.*))?$", lines[0])
    assert m, "bad status line %r" % lines[0]
    headers = []
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers.append((k.strip().lower(), v.strip()))
    return Response(int(m.group(1)), headers, b"", reason=m.group(2) or "")


def read_body(reader, resp):
    """Reads a Content-Length (or chunked, or to-EOF) body into resp.body."""
    te = (resp.header("transfer-encoding") or "").lower()
    if "chunked" in te:
        parts = []
        while True:
            size = int(reader.until(b"\r\n").split(b";")[0].strip(), 16)
            if size == 0:
                while reader.until(b"\r\n") != b"\r\n":
                    pass
                break
            parts.append(reader.exact(size))
            reader.exact(2)
        resp.body = b"".join(parts)
    elif resp.header("content-length") is not None:
        resp.body = reader.exact(int(resp.header("content-length")))
    else:
        chunks = [reader.buf]
        reader.buf = b""
        while True:
            try:
                d = reader.sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not d:
                break
            chunks.append(d)
        resp.body = b"".join(chunks)
    return resp


# ---------------------------------------------------------------------------------------
# Clients of /_piko/v1/tcp/{endpoint} (HTTP/1.1 upgrade) and of forward listeners


class UpgradeRefused(AssertionError):
    def __init__(self, resp):
        super().__init__("upgrade refused: %r" % (resp,))
        self.response = resp


class TcpStream:
    """A connected raw byte stream: a socket plus bytes already read past the 101."""

    def __init__(self, sock, pending=b"", response=None):
        self.sock = sock
        self.pending = pending
        self.response = response

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def sendall(self, data):
        self.sock.sendall(data)

    def shutdown_write(self):
        self.sock.shutdown(socket.SHUT_WR)

    def recv(self, n=65536):
        if self.pending:
            out, self.pending = self.pending[:n], self.pending[n:]
            return out
        return self.sock.recv(n)

    def recv_into(self, mv):
        if self.pending:
            n = min(len(mv), len(self.pending))
            mv[:n] = self.pending[:n]
            self.pending = self.pending[n:]
            return n
        return self.sock.recv_into(mv)

    def recv_exact(self, n):
        parts, got = [], 0
        while got < n:
            d = self.recv(min(n - got, 1 << 20))
            if not d:
                raise EOFError("EOF after %d of %d bytes" % (got, n))
            parts.append(d)
            got += len(d)
        return b"".join(parts)

    def recv_to_eof(self, limit=1 << 31):
        parts, got = [], 0
        while True:
            d = self.recv(1 << 20)
            if not d:
                return b"".join(parts)
            parts.append(d)
            got += len(d)
            assert got <= limit, "more than %d bytes" % limit

    def getsockname(self):
        return self.sock.getsockname()


def upgrade_request(endpoint, extra=None, path=None, host=None, upgrade="piko-tcp",
                    connection="Upgrade", port=0):
    fields = [("Host", host or "127.0.0.1:%d" % port)]
    if connection is not None:
        fields.append(("Connection", connection))
    if upgrade is not None:
        fields.append(("Upgrade", upgrade))
    fields += list((extra or {}).items())
    return ("GET %s HTTP/1.1\r\n" % (path or "/_piko/v1/tcp/%s" % endpoint) + "".join(
        "%s: %s\r\n" % kv for kv in fields) + "\r\n").encode("latin-1")


def tcp_connect(port, endpoint, timeout=10.0, request=None, nodelay=True):
    """Upgrades a connection to the proxy port into a raw stream to `endpoint`.
    Returns a TcpStream; raises UpgradeRefused (with .response, body read) otherwise."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout * SLOW)
    if nodelay:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.sendall(request or upgrade_request(endpoint, port=port))
        reader = _Reader(sock)
        resp = read_response_head(reader)
        if resp.status != 101:
            read_body(reader, resp)
            raise UpgradeRefused(resp)
        return TcpStream(sock, reader.buf, resp)
    except BaseException:
        sock.close()
        raise


def plain_connect(port, timeout=10.0, nodelay=True):
    """A plain TCP connection (to a --forward listener or to a service)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout * SLOW)
    if nodelay:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return TcpStream(sock)


def upgrade_error(port, endpoint=None, request=None, timeout=10.0):
    """The error answer to an upgrade request that must fail (Response)."""
    try:
        s = tcp_connect(port, endpoint, timeout=timeout, request=request)
    except UpgradeRefused as e:
        return e.response
    s.close()
    raise AssertionError("expected an error, got %r" % (s.response,))


# ---------------------------------------------------------------------------------------
# Transfers


def echo_roundtrip(stream, data, shutdown=True):
    """Sends data (then half-closes if shutdown) and reads len(data) bytes back."""
    err = []

    def send():
        try:
            stream.sendall(data)
            if shutdown:
                stream.shutdown_write()
        except Exception as e:  # noqa: BLE001
            err.append(e)
    t = threading.Thread(target=send, daemon=True)
    t.start()
    got = stream.recv_exact(len(data))
    t.join(30 * SLOW)
    if err:
        raise err[0]
    return got


def stream_pattern_both_ways(stream, nbytes, seed, shutdown=True):
    """Sends nbytes of the seed's pattern from a thread while reading and hashing what
    comes back on this thread. Returns (received_count, sha256 hex, send_error)."""
    err = []

    def send():
        try:
            for piece in pattern_stream(nbytes, seed):
                stream.sendall(piece)
            if shutdown:
                stream.shutdown_write()
        except Exception as e:  # noqa: BLE001
            err.append(e)
    t = threading.Thread(target=send, daemon=True, name="pattern-sender")
    t.start()
    d = hashlib.sha256()
    buf = bytearray(MiB)
    mv = memoryview(buf)
    total = 0
    while total < nbytes:
        n = stream.recv_into(mv)
        if not n:
            break
        d.update(mv[:n])
        total += n
    t.join(60 * SLOW)
    return total, d.hexdigest(), (err[0] if err else None)


def outcome_of_reading(stream, timeout=10.0):
    """Reads until the stream ends. Returns ("eof", n) for a clean EOF, ("reset", n) for
    ECONNRESET/EPIPE, ("timeout", n) if nothing ended it within timeout."""
    stream.sock.settimeout(timeout * SLOW)
    n = 0
    try:
        while True:
            d = stream.recv(1 << 20)
            if not d:
                return "eof", n
            n += len(d)
    except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
        return "reset", n
    except socket.timeout:
        return "timeout", n


# ---------------------------------------------------------------------------------------
# Harness glue


def listening(port):
    """True when a TCP socket listens on 127.0.0.1:port (read from /proc/net/tcp, so that
    checking does not open a connection the sidecar would tunnel)."""
    want = ":%04X" % port
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            local, state = parts[1], parts[3]
            if state == "0A" and local.endswith(want) and local.split(":")[0] in (
                    "0100007F", "00000000"):
                return True
    return False


def wait_listening(port, proc=None, timeout=10.0):
    def ok():
        if proc is not None and not proc.running():
            raise AssertionError("%s exited (%s)\n%s" % (proc.name, proc.popen.returncode,
                                                          proc.log_tail()))
        return listening(port)
    poll(ok, timeout * SLOW, message="a listener on 127.0.0.1:%d" % port)


def tcp_sidecar(piko, server, tcp=None, http=None, forwards=None, flags=None,
                name="sidecar", wait=True):
    """piko-sidecar with --tcp-endpoint NAME=SPEC for each of tcp {name: spec}, --endpoint
    for http {name: addr}, and --forward ADDR=ENDPOINT for each of forwards
    {local_port: endpoint} (with --forward.url pointing at server's proxy port). Waits
    until the server routes every endpoint and every forward port listens."""
    f = {}
    if tcp:
        f["tcp-endpoint"] = ["%s=%s" % kv for kv in tcp.items()]
    if forwards:
        f["forward"] = ["127.0.0.1:%d=%s" % kv for kv in forwards.items()]
        f["forward.url"] = "http://127.0.0.1:%d" % server.proxy_port
    f.update(flags or {})
    sc = piko.sidecar(dict(http or {}), server=server, flags=f, name=name, wait=wait)
    if wait:
        for ep in (tcp or {}):
            piko.wait_routable(server, ep)
        for port in (forwards or {}):
            wait_listening(port, sc)
    return sc


def service_unreachable_closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------
# A minimal h2c client: enough for RFC 8441 extended CONNECT on the proxy port.
# HPACK: requests are sent as literals without indexing (no Huffman); of a response
# only :status is decoded (it comes first), including Huffman-coded digits.

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8, 0x9)
END_STREAM, END_HEADERS, ACK, PADDED, PRIORITY_FLAG = 0x1, 0x4, 0x1, 0x8, 0x20
SETTINGS_ENABLE_CONNECT_PROTOCOL = 0x8
STATIC_STATUS = {8: 200, 9: 204, 10: 206, 11: 304, 12: 400, 13: 404, 14: 500}
# RFC 7541 Appendix B, the digits (all that a :status value holds).
_HUFF_DIGITS = {"00000": "0", "00001": "1", "00010": "2", "011001": "3", "011010": "4",
                "011011": "5", "011100": "6", "011101": "7", "011110": "8",
                "011111": "9"}


def _hpack_int(value, prefix_bits, first_byte_flags):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte_flags | value])
    out = [first_byte_flags | limit]
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def _hpack_read_int(block, pos, prefix_bits):
    limit = (1 << prefix_bits) - 1
    value = block[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    shift = 0
    while True:
        b = block[pos]
        pos += 1
        value += (b & 127) << shift
        shift += 7
        if not b & 128:
            return value, pos


def hpack_encode(fields):
    out = b""
    for name, value in fields:
        n, v = name.encode(), value.encode()
        out += b"\x00" + _hpack_int(len(n), 7, 0) + n + _hpack_int(len(v), 7, 0) + v
    return out


def hpack_status(block):
    """:status of a response header block (the first field), or None."""
    pos = 0
    while pos < len(block) and block[pos] & 0xE0 == 0x20:  # dynamic table size update
        _, pos = _hpack_read_int(block, pos, 5)
    b = block[pos]
    if b & 0x80:
        idx, _ = _hpack_read_int(block, pos, 7)
        return STATIC_STATUS.get(idx)
    prefix = 6 if b & 0x40 else 4
    idx, pos = _hpack_read_int(block, pos, prefix)
    if idx not in STATIC_STATUS:
        return None
    huff = bool(block[pos] & 0x80)
    n, pos = _hpack_read_int(block, pos, 7)
    raw = block[pos:pos + n]
    if not huff:
        return int(raw.decode())
    bits = "".join("{:08b}".format(x) for x in raw)
    out, cur = "", ""
    for bit in bits:
        cur += bit
        if cur in _HUFF_DIGITS:
            out += _HUFF_DIGITS[cur]
            cur = ""
            if len(out) == 3:
                break
    return int(out)


class H2Stream:
    def __init__(self, sid):
        self.sid = sid
        self.status = None
        self.header_blocks = []
        self.data = bytearray()
        self.ended = False        # END_STREAM received
        self.reset = None         # RST_STREAM error code received
        self.send_window = 0


class H2Client:
    """h2c prior knowledge on the proxy port; one thread."""

    def __init__(self, port, timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout * SLOW)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = _Reader(self.sock)
        self.streams = {}
        self.next_sid = 1
        self.peer_settings = {}
        self.peer_initial_window = 65535
        self.conn_send_window = 65535
        self.max_frame = 16384
        self.goaway = None
        big = (1 << 31) - 1
        self.sock.sendall(H2_PREFACE + self._frame(SETTINGS, 0, 0, struct.pack(
            "!HI", 0x4, big)) + self._frame(WINDOW_UPDATE, 0, 0, struct.pack(
                "!I", big - 65535)))
        self.got_settings = False
        while not self.got_settings:
            self._read_frame()

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def _frame(ftype, flags, sid, payload=b""):
        return struct.pack("!I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(
            "!I", sid) + payload

    def _read_frame(self):
        head = self.reader.exact(9)
        length = int.from_bytes(head[:3], "big")
        ftype, flags = head[3], head[4]
        sid = struct.unpack("!I", head[5:9])[0] & 0x7FFFFFFF
        payload = self.reader.exact(length)
        st = self.streams.get(sid)
        if ftype == SETTINGS and not flags & ACK:
            self.got_settings = True
            for i in range(0, len(payload), 6):
                k, v = struct.unpack("!HI", payload[i:i + 6])
                self.peer_settings[k] = v
                if k == 0x4:
                    delta = v - self.peer_initial_window
                    self.peer_initial_window = v
                    for s in self.streams.values():
                        s.send_window += delta
                elif k == 0x5:
                    self.max_frame = v
            self.sock.sendall(self._frame(SETTINGS, ACK, 0))
        elif ftype == PING and not flags & ACK:
            self.sock.sendall(self._frame(PING, ACK, 0, payload))
        elif ftype == WINDOW_UPDATE:
            inc = struct.unpack("!I", payload)[0] & 0x7FFFFFFF
            if sid == 0:
                self.conn_send_window += inc
            elif st is not None:
                st.send_window += inc
        elif ftype == GOAWAY:
            self.goaway = struct.unpack("!II", payload[:8])
        elif st is not None:
            if ftype in (HEADERS, CONTINUATION):
                p = payload
                if ftype == HEADERS:
                    pad = 0
                    if flags & PADDED:
                        pad, p = p[0], p[1:]
                    if flags & PRIORITY_FLAG:
                        p = p[5:]
                    if pad:
                        p = p[:-pad]
                st.header_blocks.append(p)
                if flags & END_HEADERS and st.status is None:
                    st.status = hpack_status(b"".join(st.header_blocks))
                if flags & END_STREAM:
                    st.ended = True
            elif ftype == DATA:
                p = payload
                if flags & PADDED:
                    pad = p[0]
                    p = p[1:len(p) - pad]
                st.data += p
                if flags & END_STREAM:
                    st.ended = True
            elif ftype == RST_STREAM:
                st.reset = struct.unpack("!I", payload)[0]
        return ftype, flags, sid

    def settings_enable_connect(self):
        return self.peer_settings.get(SETTINGS_ENABLE_CONNECT_PROTOCOL) == 1

    def connect(self, path, protocol="piko-tcp", authority="127.0.0.1", extra=()):
        """Opens an extended CONNECT stream; returns it (call wait_status next)."""
        sid = self.next_sid
        self.next_sid += 2
        st = H2Stream(sid)
        st.send_window = self.peer_initial_window
        self.streams[sid] = st
        fields = [(":method", "CONNECT"), (":protocol", protocol), (":scheme", "http"),
                  (":path", path), (":authority", authority)] + list(extra)
        self.sock.sendall(self._frame(HEADERS, END_HEADERS, sid, hpack_encode(fields)))
        return st

    def poll_frames(self):
        """Processes the frames that have already arrived (without blocking on an
        empty socket)."""
        import select
        while self.reader.buf or select.select([self.sock], [], [], 0)[0]:
            self._read_frame()

    def wait(self, cond, what="frame"):
        while not cond():
            self._read_frame()

    def wait_status(self, st):
        self.wait(lambda: st.status is not None or st.reset is not None)
        return st.status

    def send_data(self, st, data, end=False):
        mv = memoryview(data)
        while len(mv) or end:
            n = min(len(mv), self.max_frame)
            while n and (st.send_window <= 0 or self.conn_send_window <= 0):
                if st.reset is not None:
                    raise ConnectionResetError("stream reset (%d)" % st.reset)
                self._read_frame()
            n = min(n, st.send_window, self.conn_send_window)
            last = end and n == len(mv)
            self.sock.sendall(self._frame(DATA, END_STREAM if last else 0, st.sid,
                                          bytes(mv[:n])))
            st.send_window -= n
            self.conn_send_window -= n
            mv = mv[n:]
            if last:
                break

    def read_data(self, st, n):
        """Waits until at least n bytes of DATA arrived (or the stream ended)."""
        self.wait(lambda: len(st.data) >= n or st.ended or st.reset is not None)
        out = bytes(st.data[:n])
        del st.data[:n]
        return out


def h2_body_json(st):
    try:
        return json.loads(bytes(st.data))
    except ValueError:
        raise AssertionError("error body is not JSON: %r" % bytes(st.data[:300]))


