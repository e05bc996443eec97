#!/usr/bin/env python3
"""A small TCP load balancer for the cluster tests, in the manner of a Kubernetes Service
in front of a StatefulSet: round robin over the backends that are *ready*, a readiness
URL per backend polled every 100 ms (a backend without one is always ready), a failed
connect tries the next ready backend, bytes spliced both ways with half-close (a reset
on one side resets the other). Existing connections stay where they are when a backend
turns not ready, as with kube-proxy.

In-process (one selectors thread for all connections, one probe thread per backend):

    lb = Balancer([("127.0.0.1:8001", "http://127.0.0.1:8002/ready"), ...]).start()
    lb.port, lb.addr, lb.url          # where it listens
    lb.wait_ready(3)                  # until 3 backends answer their probe with 200
    lb.disable(i), lb.enable(i)       # keep new connections off a ready backend
    lb.stats()                        # {"backends": [{"addr", "ready", "connections",
                                      #   "active", "connect_failures"}], "no_backend": n}
    lb.close()

Standalone (prints "listening on HOST:PORT", runs until SIGTERM/SIGINT, then prints the
stats as JSON):

    python3 e2e/balancer.py --listen 127.0.0.1:0 \\
        --backend 127.0.0.1:P1,http://127.0.0.1:A1/ready --backend 127.0.0.1:P2,...

Standard library only.
"""

import argparse
import errno
import http.client
import json
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from urllib.parse import urlsplit

PROBE_INTERVAL = 0.1
PROBE_TIMEOUT = 0.5
BUF_LIMIT = 256 * 1024  # per direction: stop reading one side while the other lags
READ_SIZE = 64 * 1024


def _split_hostport(text):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError("expected HOST:PORT, got %r" % text)
    return host.strip("[]"), int(port)


class Backend:
    def __init__(self, addr, ready_url=None):
        self.addr = addr
        self.hostport = _split_hostport(addr)
        self.ready_url = ready_url
        self.ready = ready_url is None
        self.enabled = True        # a test may take a ready backend out (disable())
        self.connections = 0       # connections handed to this backend (connect succeeded)
        self.active = 0            # of which still open
        self.connect_failures = 0
        self.probe_failures = 0    # probes that did not answer 200
        self.ready_changes = []    # (monotonic time, ready) whenever readiness changed
        self._thread = None

    def snapshot(self):
        return {"addr": self.addr, "ready_url": self.ready_url, "ready": self.ready,
                "enabled": self.enabled,
                "connections": self.connections, "active": self.active,
                "connect_failures": self.connect_failures}


class _Side:
    """One socket of a spliced pair and what is waiting to be written to it."""

    __slots__ = ("sock", "out", "eof", "shut_wr", "events", "registered")

    def __init__(self, sock):
        self.sock = sock
        self.out = bytearray()   # bytes to write to this socket
        self.eof = False         # read EOF from this socket
        self.shut_wr = False     # we half-closed this socket
        self.events = 0
        self.registered = False


class _Conn:
    __slots__ = ("client", "backend", "tried", "bidx", "connecting", "closed")

    def __init__(self, client_sock):
        self.client = _Side(client_sock)
        self.backend = None
        self.tried = set()
        self.bidx = None
        self.connecting = False
        self.closed = False


class Balancer:
    def __init__(self, backends, listen="127.0.0.1:0", probe_interval=PROBE_INTERVAL,
                 name="balancer"):
        """backends: iterable of "HOST:PORT", (addr, ready_url) or Backend."""
        self.name = name
        self.backends = []
        for b in backends:
            if isinstance(b, Backend):
                self.backends.append(b)
            elif isinstance(b, str):
                addr, _, url = b.partition(",")
                self.backends.append(Backend(addr, url or None))
            else:
                self.backends.append(Backend(b[0], b[1] if len(b) > 1 else None))
        self.probe_interval = probe_interval
        host, port = _split_hostport(listen)
        self._lsock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._lsock.bind((host, port))
        self._lsock.listen(1024)
        self._lsock.setblocking(False)
        self.host = host
        self.port = self._lsock.getsockname()[1]
        self.no_backend = 0        # clients closed because no backend was ready/reachable
        self.accepted = 0
        self._rr = 0
        self._sel = selectors.DefaultSelector()
        self._conns = set()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._thread = None

    # ---- public ---------------------------------------------------------------------

    @property
    def addr(self):
        return "%s:%d" % (self.host, self.port)

    @property
    def url(self):
        return "http://%s" % self.addr

    def start(self):
        for b in self.backends:
            if b.ready_url is not None:
                b._thread = threading.Thread(target=self._probe_loop, args=(b,),
                                             name="%s-probe-%s" % (self.name, b.addr),
                                             daemon=True)
                b._thread.start()
        self._sel.register(self._lsock, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()
        return self

    def close(self):
        """Stops probing and splicing; every spliced connection is closed."""
        self._stop.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(10)
        for b in self.backends:
            if b._thread is not None:
                b._thread.join(5)
                b._thread = None
        self._wake_r.close()
        self._wake_w.close()
        self._sel.close()

    # Piko.close() treats services and helpers alike: release_all() then stop().
    def release_all(self):
        pass

    stop = close

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def ready_count(self):
        return sum(1 for b in self.backends if b.ready)

    def wait_ready(self, n=None, timeout=10.0):
        """Wait until at least n (default: all) backends are ready; returns True if so."""
        n = len(self.backends) if n is None else n
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.ready_count() < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def wait_not_ready(self, index, timeout=10.0):
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.backends[index].ready:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def disable(self, index):
        """New connections avoid backend index even while it is ready."""
        self.backends[index].enabled = False

    def enable(self, index):
        self.backends[index].enabled = True

    def stats(self):
        with self._lock:
            return {"listen": self.addr, "accepted": self.accepted,
                    "no_backend": self.no_backend,
                    "backends": [b.snapshot() for b in self.backends]}

    def active_by_backend(self):
        """{backend index: open connections}."""
        with self._lock:
            return {i: b.active for i, b in enumerate(self.backends)}

    # ---- readiness ------------------------------------------------------------------

    def _probe_once(self, b):
        u = urlsplit(b.ready_url)
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=PROBE_TIMEOUT)
        try:
            conn.request("GET", u.path or "/")
            r = conn.getresponse()
            r.read()
            return r.status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def _probe_loop(self, b):
        next_at = time.monotonic()
        while not self._stop.is_set():
            ok = self._probe_once(b)
            with self._cond:
                if not ok:
                    b.probe_failures += 1
                if ok != b.ready:
                    b.ready = ok
                    b.ready_changes.append((time.monotonic(), ok))
                    self._cond.notify_all()
            next_at += self.probe_interval
            delay = next_at - time.monotonic()
            if delay < 0:  # a slow probe: do not try to catch up
                next_at = time.monotonic()
                delay = 0
            self._stop.wait(delay)

    # ---- the loop -------------------------------------------------------------------

    def _loop(self):
        try:
            while not self._stop.is_set():
                for key, ev in self._sel.select(timeout=0.5):
                    data = key.data
                    if data == "listen":
                        self._accept()
                    elif data == "wake":
                        try:
                            self._wake_r.recv(64)
                        except OSError:
                            pass
                    else:
                        conn, which = data
                        if not conn.closed:
                            self._on_event(conn, which, ev)
        finally:
            for conn in list(self._conns):
                self._close(conn, reset=False)
            try:
                self._sel.unregister(self._lsock)
            except (KeyError, ValueError):
                pass
            self._lsock.close()

    def _accept(self):
        for _ in range(256):
            try:
                sock, _ = self._lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return
                raise
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(sock)
            with self._lock:
                self.accepted += 1
            self._conns.add(conn)
            self._connect_next(conn)

    def _pick(self, tried):
        n = len(self.backends)
        for k in range(n):
            i = (self._rr + k) % n
            b = self.backends[i]
            if i not in tried and b.ready and b.enabled:
                self._rr = (i + 1) % n
                return i
        return None

    def _connect_next(self, conn):
        """Connects conn to the next ready backend it has not tried; closes it when
        there is none left."""
        while True:
            i = self._pick(conn.tried)
            if i is None:
                with self._lock:
                    self.no_backend += 1
                self._close(conn, reset=True)
                return
            conn.tried.add(i)
            b = self.backends[i]
            s = socket.socket(socket.AF_INET6 if ":" in b.hostport[0] else socket.AF_INET)
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            rc = s.connect_ex(b.hostport)
            if rc not in (0, errno.EINPROGRESS):
                s.close()
                with self._lock:
                    b.connect_failures += 1
                continue
            conn.backend = _Side(s)
            conn.bidx = i
            conn.connecting = True
            self._update(conn)
            return

    def _connected(self, conn):
        s = conn.backend.sock
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            b = self.backends[conn.bidx]
            with self._lock:
                b.connect_failures += 1
            self._set_events(conn, conn.backend, 0)
            s.close()
            conn.backend = None
            conn.bidx = None
            conn.connecting = False
            self._connect_next(conn)
            return
        conn.connecting = False
        b = self.backends[conn.bidx]
        with self._lock:
            b.connections += 1
            b.active += 1
        self._update(conn)

    def _on_event(self, conn, which, ev):
        if which == "b" and conn.connecting:
            self._connected(conn)
            return
        side = conn.client if which == "c" else conn.backend
        other = conn.backend if which == "c" else conn.client
        try:
            if ev & selectors.EVENT_WRITE and side.out:
                n = side.sock.send(side.out)
                del side.out[:n]
            if ev & selectors.EVENT_READ and not side.eof:
                data = side.sock.recv(READ_SIZE)
                if data:
                    other.out += data
                    # Write at once when possible: saves a loop turn per chunk.
                    n = other.sock.send(other.out)
                    del other.out[:n]
                else:
                    side.eof = True
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(conn, reset=True)
            return
        self._update(conn)

    def _update(self, conn):
        """Half-closes what has to be, closes the pair when both directions are done,
        and sets the events each socket waits for."""
        if conn.closed:
            return
        c, b = conn.client, conn.backend
        if b is None:
            return
        if conn.connecting:
            self._set_events(conn, c, 0)
            self._set_events(conn, b, selectors.EVENT_WRITE)
            return
        try:
            for src, dst in ((c, b), (b, c)):
                if src.eof and not dst.out and not dst.shut_wr:
                    dst.sock.shutdown(socket.SHUT_WR)
                    dst.shut_wr = True
        except OSError:
            self._close(conn, reset=True)
            return
        if c.shut_wr and b.shut_wr:
            self._close(conn, reset=False)
            return
        for side, other in ((c, b), (b, c)):
            ev = 0
            if not side.eof and len(other.out) < BUF_LIMIT:
                ev |= selectors.EVENT_READ
            if side.out:
                ev |= selectors.EVENT_WRITE
            self._set_events(conn, side, ev)

    def _set_events(self, conn, side, ev):
        if ev == side.events and side.registered == bool(ev):
            return
        data = (conn, "c" if side is conn.client else "b")
        if ev == 0:
            if side.registered:
                self._sel.unregister(side.sock)
                side.registered = False
        elif side.registered:
            self._sel.modify(side.sock, ev, data)
        else:
            self._sel.register(side.sock, ev, data)
            side.registered = True
        side.events = ev

    def _close(self, conn, reset):
        if conn.closed:
            return
        conn.closed = True
        self._conns.discard(conn)
        for side in (conn.client, conn.backend):
            if side is None:
                continue
            if side.registered:
                try:
                    self._sel.unregister(side.sock)
                except (KeyError, ValueError):
                    pass
                side.registered = False
            if reset:
                try:  # RST instead of FIN: an error on one side is one on the other
                    side.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                         struct.pack("ii", 1, 0))
                except OSError:
                    pass
            side.sock.close()
        if conn.bidx is not None and not conn.connecting:
            b = self.backends[conn.bidx]
            with self._lock:
                b.active -= 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any)")
    ap.add_argument("--backend", action="append", required=True,
                    help="HOST:PORT[,READY_URL] (repeatable; a comma list of backends "
                         "separated by spaces is not accepted)")
    ap.add_argument("--probe-interval", type=float, default=PROBE_INTERVAL)
    args = ap.parse_args(argv)
    lb = Balancer(args.backend, listen=args.listen, probe_interval=args.probe_interval)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    lb.start()
    print("listening on %s" % lb.addr, flush=True)
    while not stop.wait(0.2):
        pass
    lb.close()
    print(json.dumps(lb.stats()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
