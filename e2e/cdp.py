"""A headless Chromium driven over the Chrome DevTools Protocol, with the standard library
only: a minimal WebSocket client (RFC 6455, client side) and a CDP session on one page.

    with Browser(tmp_path) as b:
        page = b.page()
        page.navigate("http://127.0.0.1:8002/")
        page.wait_for(lambda: "my-service" in page.text(), 10)
        page.screenshot(path)
        assert not page.errors()

page.errors() lists what an operator would see as errors in the browser's console:
console.error/assert calls (Runtime.consoleAPICalled), uncaught exceptions
(Runtime.exceptionThrown) and the browser's own error entries (Log.entryAdded: failed
loads, CSP violations, network errors)."""

import base64
import ctypes
import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from helpers import SLOW, poll

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync")
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent():
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: no browser outlives pytest


def chromium_path():
    """The Chromium binary, or None (scripts/install-deps.sh test installs it)."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class WebSocket:
    """Client side of RFC 6455 over a plain TCP socket: sends masked text frames,
    receives text messages (fragmented or not), answers pings."""

    def __init__(self, url, timeout=10.0):
        u = urlsplit(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(("GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n"
                           % (u.path, u.hostname, u.port, key)).encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in lines[0] + " ":
            raise ConnectionError("websocket upgrade refused: %s" % lines[0])
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        fields = {ln.split(":", 1)[0].strip().lower(): ln.split(":", 1)[1].strip()
                  for ln in lines[1:] if ":" in ln}
        if fields.get("sec-websocket-accept") != accept:
            raise ConnectionError("bad Sec-WebSocket-Accept")

    def _fill(self):
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionError("websocket closed by the browser")
        self.buf += data

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send_frame(self, opcode, payload):
        head = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def send(self, text):
        self._send_frame(0x1, text.encode())

    def recv(self, timeout):
        """One text message, or None when none came within timeout seconds."""
        self.sock.settimeout(timeout)
        parts = []
        try:
            while True:
                b0, b1 = self._take(2)
                n = b1 & 0x7F
                if n == 126:
                    n = struct.unpack("!H", self._take(2))[0]
                elif n == 127:
                    n = struct.unpack("!Q", self._take(8))[0]
                mask = self._take(4) if b1 & 0x80 else None
                payload = self._take(n)
                if mask:
                    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                opcode = b0 & 0x0F
                if opcode == 0x8:
                    raise ConnectionError("websocket closed by the browser")
                if opcode == 0x9:
                    self._send_frame(0xA, payload)
                    continue
                if opcode == 0xA:
                    continue
                parts.append(payload)
                if b0 & 0x80:
                    return b"".join(parts).decode()
        except socket.timeout:
            if parts:
                raise
            return None

    def close(self):
        try:
            self._send_frame(0x8, b"")
        except OSError:
            pass
        self.sock.close()


class Page:
    """A CDP session on one page target. Events are kept in self.events as
    (method, params), in order."""

    def __init__(self, ws_url):
        self.ws = WebSocket(ws_url, timeout=10 * SLOW)
        self.next_id = 0
        self.events = []
        self.call("Runtime.enable")
        self.call("Log.enable")
        self.call("Page.enable")

    def _dispatch(self, msg):
        m = json.loads(msg)
        if "method" in m:
            self.events.append((m["method"], m.get("params", {})))
        return m

    def call(self, method, timeout=20.0, **params):
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        deadline = time.monotonic() + timeout * SLOW
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer to %s" % method)
            msg = self.ws.recv(left)
            if msg is None:
                continue
            m = self._dispatch(msg)
            if m.get("id") == mid:
                if "error" in m:
                    raise RuntimeError("%s: %s" % (method, m["error"]))
                return m.get("result", {})

    def pump(self, seconds):
        """Collects events for a while."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            msg = self.ws.recv(left)
            if msg is not None:
                self._dispatch(msg)

    def navigate(self, url, timeout=15.0):
        self.events = [e for e in self.events if e[0] != "Page.loadEventFired"]
        self.call("Page.navigate", url=url)
        poll(lambda: self.pump(0.05) or
             any(e[0] == "Page.loadEventFired" for e in self.events),
             timeout * SLOW, message="page load of %s" % url)

    def evaluate(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                      awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError("evaluate %r: %s" % (expression, r["exceptionDetails"]))
        return r["result"].get("value")

    def text(self):
        """The page's visible text."""
        return self.evaluate("document.body.innerText")

    def wait_for(self, predicate, timeout, message="page condition"):
        poll(lambda: self.pump(0.1) or predicate(), timeout * SLOW, interval=0.1,
             message=message)

    def errors(self):
        """Console errors, uncaught exceptions and the browser's error log entries, as
        strings."""
        out = []
        for method, p in self.events:
            if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console.%s: %s" % (p["type"], " ".join(
                    str(a.get("value", a.get("description", ""))) for a in p.get("args", []))))
            elif method == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append("exception: %s %s" % (
                    d.get("text", ""), d.get("exception", {}).get("description", "")))
            elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                e = p["entry"]
                out.append("log (%s): %s %s" % (e.get("source"), e.get("text"), e.get("url", "")))
        return out

    def screenshot(self, path, full_page=True):
        """A PNG of the viewport, or of the whole page (its full height)."""
        params = {"format": "png"}
        if full_page:
            w, h = self.evaluate("[document.documentElement.scrollWidth,"
                                 " document.documentElement.scrollHeight]")
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": w, "height": h, "scale": 1})
        data = self.call("Page.captureScreenshot", **params)["data"]
        Path(path).write_bytes(base64.b64decode(data))

    def close(self):
        self.ws.close()


class Browser:
    """A headless Chromium with remote debugging on a free port of its choosing, its
    profile and log under tmp_path."""

    def __init__(self, tmp_path, window=(1280, 900)):
        self.window = window
        path = chromium_path()
        if not path:
            raise RuntimeError("chromium not found")
        self.dir = Path(tmp_path) / "chromium"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = open(self.dir / "chromium.log", "wb")
        argv = [path, *CHROMIUM_FLAGS, "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
                "--user-data-dir=%s" % (self.dir / "profile"),
                "--window-size=%d,%d" % window, "--hide-scrollbars", "about:blank"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        self.pages = []
        # Chromium writes its port into the profile once DevTools listens.
        port_file = self.dir / "profile" / "DevToolsActivePort"

        def listening():
            return self.proc.poll() is not None or (
                port_file.exists() and port_file.read_text().strip())
        poll(listening, 30 * SLOW, message="chromium DevTools port")
        if self.proc.poll() is not None:
            self.log.close()
            raise RuntimeError("chromium exited with %s: %s" % (
                self.proc.returncode, (self.dir / "chromium.log").read_text()[-2000:]))
        self.port = int(port_file.read_text().split()[0])

    def page(self):
        """A CDP session on the browser's first page (about:blank at start)."""
        def targets():
            with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % self.port,
                                        timeout=5) as r:
                return [t for t in json.load(r) if t.get("type") == "page"]
        poll(lambda: targets(), 10 * SLOW, message="a chromium page target")
        p = Page(targets()[0]["webSocketDebuggerUrl"])
        self.pages.append(p)
        # The viewport exactly (--window-size sizes the window, browser UI included).
        p.call("Emulation.setDeviceMetricsOverride", width=self.window[0],
               height=self.window[1], deviceScaleFactor=1, mobile=False)
        return p

    def close(self):
        for p in self.pages:
            p.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
