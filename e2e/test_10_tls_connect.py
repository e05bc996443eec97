"""The sidecar dials an https:// connect URL over TLS: SNI, certificate verification
against the system roots (OpenSSL's default paths, so SSL_CERT_FILE points them at a test
CA), and a clear error when verification fails. Here a TLS terminator written with
Python's ssl module sits in front of a plain upstream port; the server's own TLS ports are
covered by test_40_tls."""

import os
import socket
import ssl
import subprocess
import threading

import pytest

from conftest import SidecarProc, binary, free_port
from helpers import h1


def make_ca_and_cert(d):
    def run(*args):
        subprocess.run(["openssl"] + list(args), check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=piko test CA",
        "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", str(d / "srv.key"), "-out", str(d / "srv.csr"))
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", str(d / "srv.csr"), "-CA", str(d / "ca.pem"), "-CAkey",
        str(d / "ca.key"), "-CAcreateserial", "-days", "2", "-extfile", str(d / "ext.cnf"),
        "-out", str(d / "srv.pem"))


class TlsTerminator:
    """Accepts TLS on a loopback port and relays the plaintext to target_port."""

    def __init__(self, cert, key, target_port):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.target = target_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.sni = []
        self.ctx.sni_callback = lambda s, name, c: self.sni.append(name)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            t = self.ctx.wrap_socket(c, server_side=True)
        except (ssl.SSLError, OSError):
            c.close()
            return
        u = socket.create_connection(("127.0.0.1", self.target))

        def pump(a, b):
            try:
                while True:
                    data = a.recv(65536)
                    if not data:
                        break
                    b.sendall(data)
            except OSError:
                pass
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        threading.Thread(target=pump, args=(u, t), daemon=True).start()
        pump(t, u)

    def close(self):
        self.sock.close()


@pytest.fixture
def tls_setup(piko, tmp_path):
    make_ca_and_cert(tmp_path)
    srv = piko.server()
    term = TlsTerminator(str(tmp_path / "srv.pem"), str(tmp_path / "srv.key"),
                         srv.ports["upstream"])
    yield srv, term, tmp_path
    term.close()


def start_sidecar(piko, url, svc_port, env):
    admin = free_port()
    argv = [binary("piko-sidecar"), "--connect.url", url, "--admin.bind-addr",
            "127.0.0.1:%d" % admin, "--endpoint", "my-service=127.0.0.1:%d" % svc_port]
    proc = SidecarProc("sidecar-tls", argv, piko._log_path("sidecar-tls"), admin,
                       {"my-service": svc_port}, env=env)
    piko.procs.append(proc)
    proc.start()
    return proc


def test_https_connect_url_verifies_and_serves(piko, tls_setup):
    srv, term, d = tls_setup
    svc = piko.service()
    env = dict(os.environ, SSL_CERT_FILE=str(d / "ca.pem"))
    sc = start_sidecar(piko, "https://localhost:%d" % term.port, svc.port, env)
    sc.wait_ready()
    piko.wait_routable(srv, "my-service")
    r = h1(srv.ports["proxy"], "GET", "/echo?tls=1", {"x-piko-endpoint": "my-service"})
    assert r.status == 200, r
    assert r.json()["path"] == "/echo?tls=1"
    assert "localhost" in term.sni, term.sni


def test_https_untrusted_certificate_is_refused_with_reason(piko, tls_setup):
    srv, term, d = tls_setup
    svc = piko.service()
    env = dict(os.environ)
    env.pop("SSL_CERT_FILE", None)
    env["SSL_CERT_DIR"] = str(d)  # holds no hashed CA links: nothing is trusted
    env["SSL_CERT_FILE"] = str(d / "ext.cnf")
    sc = start_sidecar(piko, "https://localhost:%d" % term.port, svc.port, env)
    sc.wait_log(lambda t: "certificate verify failed" in t, timeout=5.0,
                message="a log line naming the certificate failure")
    assert sc.ready_status() == 503
    assert sc.running()
