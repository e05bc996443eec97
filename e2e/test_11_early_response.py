"""A service that answers before reading the request body (PROTOCOL.md 1.3): the client
gets the complete response; the rest of its upload is not needed. Over HTTP/1.1 the proxy
closes the connection after the response; over HTTP/2 the stream ends with
RST_STREAM(NO_ERROR) after the response."""

import socket
import subprocess
import threading

from helpers import SLOW


class EarlyService:
    """Reads a request head, answers 413 at once, then reads and discards for a while."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(10)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = c.recv(65536)
                if not chunk:
                    return
                data += chunk
            c.sendall(b"HTTP/1.1 413 Payload Too Large\r\ncontent-type: text/plain\r\n"
                      b"content-length: 9\r\nconnection: close\r\n\r\ntoo large")
            while c.recv(65536):
                pass
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.sock.close()


def test_early_response_http1(piko):
    svc = EarlyService()
    srv = piko.server()
    piko.sidecar({"early": "127.0.0.1:%d" % svc.port}, server=srv)
    s = socket.create_connection(("127.0.0.1", srv.proxy_port), timeout=10 * SLOW)
    s.sendall(b"POST /upload HTTP/1.1\r\nHost: early.example.com\r\n"
              b"Content-Length: 50000000\r\n\r\n" + b"x" * 65536)
    got = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        got += chunk
    s.close()
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), got[:200]
    assert body == b"too large", got[:300]
    assert b"connection: close" in head.lower(), head
    svc.close()
    assert srv.running()


def test_early_response_h2(piko, tmp_path):
    """nghttp shows the frames: the complete response (END_STREAM), then
    RST_STREAM(NO_ERROR). (curl 7.88 reports an error for that sequence while it is still
    uploading, so nghttp is the client here.)"""
    svc = EarlyService()
    srv = piko.server()
    piko.sidecar({"early": "127.0.0.1:%d" % svc.port}, server=srv)
    big = tmp_path / "big"
    big.write_bytes(b"y" * (20 << 20))
    p = subprocess.run(["nghttp", "-v", "-d", str(big), "-H", "x-piko-endpoint: early",
                        "http://127.0.0.1:%d/upload" % srv.proxy_port],
                       capture_output=True, timeout=30 * SLOW)
    out = p.stdout.decode(errors="replace")
    assert ":status: 413" in out, out[-2000:]
    assert "too large" in out, out[-2000:]
    end = out.index("; END_STREAM", out.index(":status: 413"))
    rst = out.index("recv RST_STREAM frame", end)
    assert "error_code=NO_ERROR" in out[rst:rst + 200], out[rst:rst + 200]
    svc.close()
    assert srv.running()
