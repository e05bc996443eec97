"""The status CLI and the admin port's ?forward= (issue "Observability", CLI part;
docs/manage/observability.md "The status CLI"): `piko-server status nodes|node ID|
endpoints|tunnels|requests` against a three-node cluster, as a table and as JSON; --forward
returns another node's view, asked through the cluster port, whose status path needs the
cluster secret; the admin token from --token and --token-file; clear errors and non-zero
exits for an unreachable server, a missing token, an unknown node, a peer that is down or
silent, a reply that is not JSON; --version on both binaries."""

import http.server
import json
import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest

import tokens
from cluster import SECRET, Cluster, eventually, get_json, request
from conftest import binary, free_port
from helpers import SLOW, assert_json_error
from test_40_tls import Certs, tls_flags

ADMIN_SECRET = "status-cli-admin-secret-0123456789abcdef"


def cli(*args, timeout=20):
    """piko-server status ARGS...: the CompletedProcess (text)."""
    return subprocess.run([binary("piko-server"), "status"] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=timeout * SLOW)


def url(node):
    return "http://%s:%d" % (node.host, node.admin_port)


def ok(p):
    assert p.returncode == 0, "exit %d\nstdout: %s\nstderr: %s" % (p.returncode, p.stdout,
                                                                   p.stderr)
    return p.stdout


def failed(p):
    """The stderr of a run that must fail, checked to be one clear line and no output."""
    assert p.returncode == 1, "want exit 1, got %d\nstdout: %s\nstderr: %s" % (
        p.returncode, p.stdout, p.stderr)
    assert p.stdout == "", p.stdout
    assert p.stderr.startswith("piko-server status: "), p.stderr
    return p.stderr


def cmake_version():
    text = (Path(__file__).resolve().parent.parent / "CMakeLists.txt").read_text()
    return re.search(r"project\(piko VERSION ([0-9.]+)", text).group(1)


@pytest.fixture
def cl3(shared):
    """Three nodes joined by a static list, converged (one per module)."""
    def build(h):
        c = Cluster(h, 3, name="cli-node")
        c.wait_converged()
        return c
    return shared("cluster3", build)


# ---- nodes and node --------------------------------------------------------------------


def test_nodes_lists_every_node_as_a_table_and_as_json(cl3):
    ids = [cl3.node_id(i) for i in range(3)]
    out = ok(cli("nodes", "--server.url", url(cl3.nodes[0])))
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "PROXY", "ADDR", "ENDPOINTS", "TUNNELS"], out
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == set(ids), out
    assert all(r[1] == "active" for r in rows.values()), out
    assert rows[ids[1]][2] == cl3.proxy_addr(1), out
    # The local node comes first.
    assert lines[1].split()[0] == ids[0], out

    out = ok(cli("nodes", "--server.url", url(cl3.nodes[1]), "--output", "json"))
    doc = json.loads(out)
    assert sorted(n["id"] for n in doc) == sorted(ids), doc
    assert out.startswith("[\n  {\n"), "JSON output is indented: %r" % out[:40]
    # The same document as the admin port gives.
    st, raw = get_json(cl3.nodes[1].host, cl3.nodes[1].admin_port, "/status/cluster/nodes")
    assert st == 200 and sorted(n["id"] for n in raw) == sorted(ids)


def test_node_by_id_and_local(cl3):
    id2 = cl3.node_id(1)
    out = ok(cli("node", id2, "--server.url", url(cl3.nodes[0])))
    fields = dict(line.split(None, 1) for line in out.splitlines() if line and " " in line)
    assert fields["id"] == id2, out
    assert fields["local"] == "false" and fields["link"] == "up", out

    doc = json.loads(ok(cli("node", "local", "--server.url", url(cl3.nodes[0]),
                            "--output=json")))
    assert doc["id"] == cl3.node_id(0) and doc["local"] is True, doc
    assert doc["build_version"] == cmake_version(), doc
    assert "endpoint_table" in doc, doc

    err = failed(cli("node", "nobody-here", "--server.url", url(cl3.nodes[0])))
    assert "node nobody-here not found" in err, err


# ---- --forward and the cluster port ----------------------------------------------------


def test_forward_returns_the_peers_view(cl3):
    id2, id3 = cl3.node_id(1), cl3.node_id(2)
    doc = json.loads(ok(cli("node", "local", "--forward", id2, "--server.url",
                            url(cl3.nodes[0]), "--output", "json")))
    assert doc["id"] == id2 and doc["local"] is True, doc
    # The peer's list: itself first, as local.
    doc = json.loads(ok(cli("nodes", "--forward", id3, "--server.url", url(cl3.nodes[0]),
                            "--output", "json")))
    assert doc[0]["id"] == id3 and doc[0]["local"] is True, doc
    # forward=local and forward=<own id> are answered here.
    for me in ("local", cl3.node_id(0)):
        doc = json.loads(ok(cli("node", "local", "--forward", me, "--server.url",
                                url(cl3.nodes[0]), "--output", "json")))
        assert doc["id"] == cl3.node_id(0), doc


def test_forward_requests_shows_the_peers_requests(cl3):
    """/status/requests of another node, with the rest of the query kept."""
    marker = "/cli-forward-marker-%d" % free_port()
    r = cl3.get(1, marker, endpoint="nobody-serves-this")
    assert r.status == 502, r
    id2 = cl3.node_id(1)

    def seen():
        doc = json.loads(ok(cli("requests", "--forward", id2, "--server.url",
                                url(cl3.nodes[0]), "--output", "json")))
        assert any(rec.get("path") == marker for rec in doc), doc
        return doc
    eventually(seen, 5 * SLOW)
    out = ok(cli("requests", "--forward", id2, "--server.url", url(cl3.nodes[0])))
    assert out.splitlines()[0].split()[:4] == ["TIME", "METHOD", "HOST", "PATH"], out
    assert marker in out and "502" in out, out
    # Node 1 did not see it.
    doc = json.loads(ok(cli("requests", "--server.url", url(cl3.nodes[0]), "--output",
                            "json")))
    assert not any(rec.get("path") == marker for rec in doc), doc


def test_forward_endpoints_and_tunnels_of_a_peer(cl3, shared):
    """A sidecar on node 2: its endpoint and tunnel as node 2 lists them, asked of node 1
    (the routes /status/upstream/endpoints and /status/tunnels are the status API's)."""
    for path in ("/status/upstream/endpoints", "/status/tunnels"):
        if request(cl3.nodes[0].host, cl3.nodes[0].admin_port, path=path).status == 404:
            pytest.skip("%s is not served by this build" % path)

    def build(h):
        svc = h.service("cli-svc")
        return h.sidecar({"cli-ep": svc.addr}, server=cl3.nodes[1], name="cli-sidecar")
    shared("sidecar-on-2", build)
    cl3.wait_routes("cli-ep")
    id2 = cl3.node_id(1)
    out = ok(cli("endpoints", "--forward", id2, "--server.url", url(cl3.nodes[0])))
    assert out.splitlines()[0].split()[:2] == ["ENDPOINT", "TUNNELS"], out
    assert any(line.split()[:2] == ["cli-ep", "1"] for line in out.splitlines()[1:]), out
    out = ok(cli("tunnels", "--forward", id2, "--server.url", url(cl3.nodes[0])))
    assert "cli-ep" in out, out
    # Node 1 has no tunnel of its own.
    out = ok(cli("tunnels", "--server.url", url(cl3.nodes[0])))
    assert "cli-ep" not in out, out


def test_forward_to_an_unknown_node(cl3):
    node = cl3.nodes[0]
    r = request(node.host, node.admin_port, path="/status/cluster/nodes?forward=nope")
    assert_json_error(r, 404, "node not found")
    r = request(node.host, node.admin_port, path="/status/cluster/nodes?forward=")
    assert_json_error(r, 404, "node not found")
    err = failed(cli("nodes", "--forward", "nope", "--server.url", url(node)))
    assert "--forward: node nope not found" in err, err


def test_cluster_status_path_needs_the_cluster_secret(cl3):
    node = cl3.nodes[1]
    path = "/_piko/v1/cluster/status/cluster/nodes/local"
    for headers in ({}, {"Authorization": "Bearer wrong-secret"},
                    {"piko-authorization": "Bearer " + SECRET[:-1]}):
        r = request(node.host, node.cluster_port, path=path, headers=headers)
        assert r.status == 401, (headers, r)
        assert "id" not in r.json(), r
    for name in ("Authorization", "piko-authorization"):
        r = request(node.host, node.cluster_port, path=path,
                    headers={name: "Bearer " + SECRET})
        assert r.status == 200, r
        assert r.json()["id"] == cl3.node_id(1), r
    # Nothing but status paths, and no forwarding from there (one hop).
    r = request(node.host, node.cluster_port, path="/_piko/v1/cluster/status/nothing",
                headers={"piko-authorization": "Bearer " + SECRET})
    assert_json_error(r, 404, "not found")
    r = request(node.host, node.cluster_port,
                path=path + "?forward=" + cl3.node_id(2),
                headers={"piko-authorization": "Bearer " + SECRET})
    assert r.status == 200 and r.json()["id"] == cl3.node_id(1), r


def test_forward_to_a_peer_that_is_down_or_silent(piko):
    """A listed peer that does not answer: 504 naming it (SIGSTOP: connections are
    accepted by the kernel, nothing answers); one that refuses connections: 502. The node
    stays listed for two peer timeouts, so the checks come right after the change."""
    c = Cluster(piko, 3, name="cli-fail")
    c.wait_converged()
    first, silent, dead = c.nodes[0], c.nodes[1], c.nodes[2]
    silent_id, dead_id = c.node_id(1), c.node_id(2)
    silent.popen.send_signal(signal.SIGSTOP)
    try:
        r = request(first.host, first.admin_port,
                    path="/status/cluster/nodes/local?forward=" + silent_id, timeout=10)
        assert r.status == 504, r
        assert silent_id in r.json()["error"], r
    finally:
        silent.popen.send_signal(signal.SIGCONT)
    dead.kill()
    p = cli("node", "local", "--forward", dead_id, "--server.url", url(first))
    err = failed(p)
    assert "502" in err and dead_id in err and "unreachable" in err, err


# ---- admin auth ---------------------------------------------------------------------------


def test_admin_token_from_flag_and_file(piko, tmp_path):
    srv = piko.server({"admin.auth.hmac-secret-key": ADMIN_SECRET})
    token = tokens.hs256(ADMIN_SECRET, tokens.claims())
    err = failed(cli("nodes", "--server.url", url(srv)))
    assert "admin port requires a token: pass --token or --token-file" in err, err
    assert "401" in err, err

    out = ok(cli("nodes", "--server.url", url(srv), "--token", token))
    assert out.splitlines()[0].startswith("ID"), out
    path = tmp_path / "admin-token"
    path.write_text(token + "\n")
    doc = json.loads(ok(cli("node", "local", "--server.url", url(srv), "--token-file", path,
                            "--output", "json")))
    assert doc["local"] is True, doc

    bad = tokens.hs256("another-secret-0123456789abcdef0123", tokens.claims())
    err = failed(cli("nodes", "--server.url", url(srv), "--token", bad))
    assert "refused the token" in err and "--token" in err, err
    # A token file that cannot be read is a usage error (exit 2).
    p = cli("nodes", "--server.url", url(srv), "--token-file", tmp_path / "missing")
    assert p.returncode == 2 and "--token-file" in p.stderr, p


def test_forward_with_admin_auth(piko):
    """The node asked checks the client's token; the peer trusts the cluster secret and
    needs no admin token of its own (its status routes are behind it for clients)."""
    c = Cluster(piko, 2, name="cli-auth", flags={"admin.auth.hmac-secret-key": ADMIN_SECRET})
    token = tokens.hs256(ADMIN_SECRET, tokens.claims())
    id2 = c.node_id(1)

    def both_listed():
        doc = json.loads(ok(cli("nodes", "--server.url", url(c.nodes[0]), "--token", token,
                                "--output", "json")))
        assert {n["id"] for n in doc} == {c.node_id(0), id2}, doc
        assert all(n["status"] == "active" for n in doc), doc
    eventually(both_listed, 10 * SLOW)
    doc = json.loads(ok(cli("node", "local", "--forward", id2, "--server.url",
                            url(c.nodes[0]), "--token", token, "--output", "json")))
    assert doc["id"] == id2, doc
    err = failed(cli("node", "local", "--forward", id2, "--server.url", url(c.nodes[0])))
    assert "requires a token" in err, err
    r = request(c.nodes[1].host, c.nodes[1].admin_port, path="/status/cluster/nodes/local")
    assert r.status == 401, r


def test_admin_over_https_with_a_client_certificate(piko, tmp_path):
    """https: the admin port's certificate verified against --server.tls.root-cas (host
    name included), a client certificate for admin.tls.client-cas."""
    (tmp_path / "certs").mkdir()
    certs = Certs(tmp_path / "certs")
    ports = piko.new_server_ports()
    flags = tls_flags("admin", certs, client_cas=True)
    flags["admin.bind-addr"] = "0.0.0.0:%d" % ports["admin"]  # 127.0.0.2 too, below
    srv = piko.server(flags, ports=ports, wait=False)
    base = "https://localhost:%d" % srv.admin_port
    mtls = ["--server.tls.root-cas", certs["ca.pem"], "--server.tls.cert",
            certs["client.pem"], "--server.tls.key", certs["client.key"]]

    def up():
        doc = json.loads(ok(cli("node", "local", "--server.url", base, "--output", "json",
                                *mtls)))
        assert doc["local"] is True, doc
    eventually(up, 10 * SLOW, interval=0.1)
    # The system's CAs do not know the test CA.
    err = failed(cli("nodes", "--server.url", base))
    assert "cannot reach the admin port at %s" % base in err and "certificate" in err, err
    # Without a client certificate the handshake is refused.
    err = failed(cli("nodes", "--server.url", base, "--server.tls.root-cas", certs["ca.pem"]))
    assert "cannot reach the admin port" in err, err
    # The certificate names localhost and 127.0.0.1, not 127.0.0.2.
    err = failed(cli("nodes", "--server.url", "https://127.0.0.2:%d" % srv.admin_port, *mtls))
    assert "cannot reach the admin port" in err and "127.0.0.2" in err, err


# ---- errors and --version -------------------------------------------------------------


def test_unreachable_server(piko):
    port = free_port()
    err = failed(cli("nodes", "--server.url", "http://127.0.0.1:%d" % port))
    assert "cannot reach the admin port at http://127.0.0.1:%d" % port in err, err


def test_usage_errors_exit_2():
    for args, msg in ((["nodez"], "unknown command 'nodez'"), ([], "missing command"),
                      (["node"], "missing node ID"), (["nodes", "--output", "yaml"],
                                                      "--output")):
        p = cli(*args)
        assert p.returncode == 2, (args, p)
        assert msg in p.stderr, (args, p.stderr)
    p = cli("--help")
    assert p.returncode == 0 and "--server.url" in p.stdout and "node ID" in p.stdout, p


class _HtmlHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"<html>not json</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_reply_that_is_not_json():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HtmlHandler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        err = failed(cli("nodes", "--server.url", "http://127.0.0.1:%d" % httpd.server_port))
        assert "not JSON" in err and "text/html" in err, err
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_version_of_both_binaries():
    want = cmake_version()
    for name in ("piko-server", "piko-sidecar"):
        p = subprocess.run([binary(name), "--version"], capture_output=True, text=True,
                           timeout=10)
        assert p.returncode == 0, p
        assert p.stdout == "%s %s\n" % (name, want), p
    p = subprocess.run([binary("piko-server"), "--help"], capture_output=True, text=True,
                       timeout=10)
    assert "--version" in p.stdout and "piko-server status --help" in p.stdout, p.stdout
