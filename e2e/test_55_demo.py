"""`make demo`'s script (scripts/demo.sh) as a new user runs it, on a machine where the
default ports are taken (issue "Observability", first run, item 1 and acceptance 5): it
picks free ports for every listener, the request comes back with 200, and it shows what
the server saw through the status CLI."""

import os
import socket
import subprocess
from pathlib import Path

from conftest import BIN_DIR

ROOT = Path(__file__).resolve().parent.parent


def hold(port):
    """A listening socket on port, or None when something else holds it already (taken
    either way)."""
    s = socket.socket()
    try:
        s.bind(("0.0.0.0", port))
        s.listen()
        return s
    except OSError:
        s.close()
        return None


def test_demo_with_default_ports_taken():
    held = [hold(p) for p in (8000, 8001, 8002, 8003, 5000)]
    try:
        env = dict(os.environ)
        env.pop("DEMO_KEEP", None)
        p = subprocess.run([str(ROOT / "scripts" / "demo.sh"), str(BIN_DIR)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120, env=env)
    finally:
        for s in held:
            if s:
                s.close()
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "It works" in out, out
    assert "Hello from the service behind Piko" in out, out
    # What the server saw: the tunnel of my-service and the request, as tables.
    assert "ENDPOINT" in out and "my-service" in out, out
    assert "/hello" in out.split("status requests", 1)[1], out
    assert "status page: http://127.0.0.1:" in out, out
