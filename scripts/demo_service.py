#!/usr/bin/env python3
"""The sample service that `make demo` puts behind Piko.

A plain HTTP/1.1 server from the standard library. It never opens a public
port: it listens on loopback and Piko's sidecar dials out on its behalf. Every
answer says which path it was asked for and the x-forwarded-for it saw, so the
demo shows that the request really went through the proxy.

Usage: demo_service.py [--host 127.0.0.1] [--port 8080]
"""

import argparse
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 with Content-Length on every answer, so the sidecar's
    # keep-alive pool can reuse connections.
    protocol_version = "HTTP/1.1"
    server_version = "piko-demo-service"
    sys_version = ""

    def _answer(self, send_body):
        length = int(self.headers.get("Content-Length") or 0)
        received = self.rfile.read(length) if length > 0 else b""
        lines = [
            "Hello from the service behind Piko",
            f"method: {self.command}",
            f"path: {self.path}",
            f"x-forwarded-for: {self.headers.get('x-forwarded-for', '(none)')}",
        ]
        if received:
            lines.append(f"request body: {len(received)} bytes")
        body = ("\n".join(lines) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def do_GET(self):  # noqa: N802 (http.server naming)
        self._answer(True)

    def do_POST(self):  # noqa: N802
        self._answer(True)

    def do_PUT(self):  # noqa: N802
        self._answer(True)

    def do_HEAD(self):  # noqa: N802
        self._answer(False)

    def log_message(self, format, *args):  # noqa: A002 (base class signature)
        sys.stderr.write("demo-service: %s %s\n" % (self.address_string(), format % args))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True

    def stop(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"demo-service: listening on http://{args.host}:{server.server_port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
