"""Helpers of the cluster tests (test_3x): N piko-server nodes sharing a secret and a
join list, dnsmasq for `srv:` discovery, load balancers in front of the nodes' upstream
and proxy ports, the nodes' /status/cluster views, and a network namespace joined by a
veth pair for partitions.

    cl = Cluster(piko, n=3, discovery="static")   # or "srv" (dnsmasq); started, ready
    cl.wait_converged()                # every node lists every node as active
    cl.nodes[0]                        # ServerProc (ports, proxy_port, cluster_port, ...)
    piko.sidecar({"ep": svc.addr}, server=cl.nodes[0])
    cl.wait_routes("ep")               # every node routes ep
    cl.view(1)                         # {node_id: node object} as node 2 lists them
    lb = cl.upstream_balancer()        # sidecars: connect_url=lb.url
    lb = cl.proxy_balancer()           # clients

Standalone (for a service inside a network namespace):
    python3 e2e/cluster.py serve-http NAME PORT     # services.Service on 127.0.0.1:PORT
"""

import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from helpers import SANITIZED, SLOW, Response, poll  # noqa: E402

SECRET = "e2e-cluster-secret-0123456789"
# Short enough for a fast suite, long enough not to flap on 2 busy cores (and ASan).
PEER_TIMEOUT = 2.0 if SANITIZED else 1.0
RESOLVE_INTERVAL = "500ms"
SRV_NAME = "_cluster._tcp.piko.test"
DNS_NAME = "nodes.piko.test"


def _die_with_parent():
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def secs(x):
    """A duration flag from seconds ("1500ms")."""
    return "%dms" % int(round(x * 1000))


# ---------------------------------------------------------------------------------------
# HTTP to any host (the conftest helpers speak to 127.0.0.1 only)


def request(host, port, method="GET", path="/", headers=None, body=None, timeout=5.0):
    """One request on a new connection; returns helpers.Response."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return Response(r.status, [(k.lower(), v) for k, v in r.getheaders()], data,
                        reason=r.reason)
    finally:
        conn.close()


def get_json(host, port, path, timeout=2.0, headers=None):
    r = request(host, port, "GET", path, headers=headers, timeout=timeout * SLOW)
    try:
        return r.status, json.loads(r.body)
    except ValueError:
        raise AssertionError("GET %s:%d%s: body is not JSON: %r" % (host, port, path, r))


def eventually(check, timeout, interval=0.05):
    """Call check() (which asserts) until it passes, for eventually consistent state;
    returns its value or re-raises its last AssertionError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(interval)


# ---------------------------------------------------------------------------------------
# dnsmasq: SRV records for `--cluster.join srv:...`


def _udp_and_tcp_free(port, host="127.0.0.1"):
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.bind((host, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


class DnsMasq:
    """dnsmasq on 127.0.0.1:<port> answering for piko.test: an SRV record
    `srv_name` -> nodeN.piko.test:PORT for each (ip, port) of targets, and nodeN's A
    record; plus the A records of a_records. Stopped with the test's services
    (Piko.close)."""

    def __init__(self, log_path, targets=(), srv_name=SRV_NAME, a_records=None):
        self.log_path = Path(log_path)
        self.targets = list(targets)
        self.srv_name = srv_name
        self.a_records = dict(a_records or {})  # {name: [ip, ...]}
        self.port = None
        self.popen = None
        self.binary = shutil.which("dnsmasq") or next(
            (p for p in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq") if os.path.exists(p)), None)

    @property
    def servers(self):
        return "127.0.0.1:%d" % self.port

    def argv(self, port):
        argv = [self.binary, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
                "--no-hosts", "--port=%d" % port, "--listen-address=127.0.0.1",
                "--bind-interfaces", "--local=/piko.test/", "--local-ttl=1",
                "--log-facility=-"]
        if os.geteuid() == 0:
            argv.append("--user=root")  # no need to drop to nobody for a test
        for i, (ip, p) in enumerate(self.targets):
            name = "node%d.piko.test" % (i + 1)
            argv.append("--srv-host=%s,%s,%d" % (self.srv_name, name, p))
            argv.append("--host-record=%s,%s" % (name, ip))
        for name, ips in self.a_records.items():
            argv += ["--host-record=%s,%s" % (name, ip) for ip in ips]
        return argv

    def start(self):
        import pytest
        if self.binary is None:
            pytest.fail("dnsmasq not found: apt-get install dnsmasq-base", pytrace=False)
        from conftest import free_port
        last = ""
        for _ in range(5):
            port = free_port()
            if not _udp_and_tcp_free(port):
                continue
            log = open(self.log_path, "ab", buffering=0)
            argv = self.argv(port)
            log.write(("$ %s\n" % " ".join(argv)).encode())
            self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=log, preexec_fn=_die_with_parent)
            log.close()
            deadline = time.monotonic() + 5 * SLOW
            while time.monotonic() < deadline:
                if self.popen.poll() is not None:
                    break
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    self.port = port
                    return self
                except OSError:
                    time.sleep(0.05)
            last = self.log_path.read_text(errors="replace")[-2000:]
            self.stop()
        pytest.fail("dnsmasq did not start:\n%s" % last, pytrace=False)

    def release_all(self):
        pass

    def stop(self):
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


# ---------------------------------------------------------------------------------------
# The cluster


class Cluster:
    """n piko-server nodes on `hosts[i]` (default 127.0.0.1), each with its own ports
    (kept across restarts), sharing `secret` and a join list: "static" (every node's
    cluster address, its own included), "srv" (an SRV name served by dnsmasq) or "dns"
    (one name with an A record per node and one cluster port: needs distinct hosts).
    node_ids: explicit --cluster.node-id values (default n1-<tag>, ...); None for a
    node keeps the binary's default id."""

    def __init__(self, piko, n=3, discovery="static", secret=SECRET, flags=None,
                 hosts=None, prefixes=None, node_ids="default", start=True, wait=True,
                 peer_timeout=PEER_TIMEOUT, resolve_interval=RESOLVE_INTERVAL,
                 name="node"):
        self.piko = piko
        self.n = n
        self.discovery = discovery
        self.secret = secret
        self.peer_timeout = peer_timeout
        self.extra_flags = dict(flags or {})
        self.hosts = list(hosts or ["127.0.0.1"] * n)
        self.prefixes = list(prefixes or [()] * n)
        self.name = name
        self.ports = [piko.new_server_ports() for _ in range(n)]
        tag = "%04x" % random.randrange(1 << 16)
        if node_ids == "default":
            node_ids = ["n%d-%s" % (i + 1, tag) for i in range(n)]
        self.fixed_ids = list(node_ids or [None] * n)
        self.nodes = [None] * n
        self.generations = [0] * n
        self.base_flags = {
            "cluster.peer-timeout": secs(peer_timeout),
            "cluster.resolve-interval": resolve_interval,
            "grace-period": "5s",
        }
        if secret is not None:
            self.base_flags["cluster.secret"] = secret
        self.dns = None
        if discovery == "srv":
            self.dns = DnsMasq(piko._log_path("dnsmasq"),
                               [(self.hosts[i], self.ports[i]["cluster"]) for i in range(n)])
            self.dns.start()
            piko.services.append(self.dns)
            self.base_flags["dns.servers"] = self.dns.servers
            self.join = "srv:" + SRV_NAME
        elif discovery == "dns":
            # One name with every node's address (distinct 127.0.0.x hosts), one port.
            assert len(set(self.hosts)) == n, "dns: discovery needs one host per node"
            from conftest import free_port
            while True:
                port = free_port()
                if all(_udp_and_tcp_free(port, h) for h in self.hosts):
                    break
            for p in self.ports:
                p["cluster"] = port
            self.dns = DnsMasq(piko._log_path("dnsmasq"),
                               a_records={DNS_NAME: list(self.hosts)})
            self.dns.start()
            piko.services.append(self.dns)
            self.base_flags["dns.servers"] = self.dns.servers
            self.join = "dns:%s:%d" % (DNS_NAME, port)
        elif discovery == "static":
            self.join = ",".join(self.cluster_addr(i) for i in range(n))
        else:
            self.join = discovery  # a literal --cluster.join value
        if start:
            self.start_all(wait=wait)

    # -- addresses --------------------------------------------------------------------

    def cluster_addr(self, i):
        return "%s:%d" % (self.hosts[i], self.ports[i]["cluster"])

    def proxy_addr(self, i):
        return "%s:%d" % (self.hosts[i], self.ports[i]["proxy"])

    # -- processes --------------------------------------------------------------------

    def flags(self, i):
        f = dict(self.base_flags)
        f["cluster.join"] = self.join
        if self.fixed_ids[i] is not None:
            f["cluster.node-id"] = self.fixed_ids[i]
        f.update(self.extra_flags)
        return f

    def start(self, i, wait=True, flags=None, args=()):
        """Start node i (again) on its ports; returns the ServerProc. args: more argv
        (boolean flags: ["--metrics.endpoint-labels"])."""
        self.generations[i] += 1
        name = "%s%d" % (self.name, i + 1)
        if self.generations[i] > 1:
            name += "-run%d" % self.generations[i]
        f = self.flags(i)
        f.update(flags or {})
        proc = self.piko.server(f, ports=self.ports[i], wait=wait, name=name,
                                host=self.hosts[i], prefix=self.prefixes[i], args=args)
        self.nodes[i] = proc
        return proc

    def start_all(self, wait=True):
        for i in range(self.n):
            self.start(i, wait=False)
        if wait:
            for p in self.nodes:
                p.wait_ready()

    def running(self):
        return [i for i in range(self.n) if self.nodes[i] is not None and
                self.nodes[i].running()]

    # -- views ------------------------------------------------------------------------

    def nodes_status(self, i, timeout=2.0):
        """GET /status/cluster/nodes of node i: the list of node objects."""
        node = self.nodes[i]
        st, obj = get_json(node.host, node.admin_port, "/status/cluster/nodes", timeout)
        assert st == 200, "node %d: /status/cluster/nodes answered %d: %r" % (i + 1, st, obj)
        assert isinstance(obj, list), "/status/cluster/nodes must be a JSON array: %r" % obj
        return obj

    def node_status(self, i, node_id="local", timeout=2.0):
        """(status, object) of GET /status/cluster/nodes/{node_id} of node i."""
        node = self.nodes[i]
        return get_json(node.host, node.admin_port, "/status/cluster/nodes/" + node_id,
                        timeout)

    def view(self, i):
        """{node id: node object} as node i lists them."""
        out = {}
        for obj in self.nodes_status(i):
            assert obj.get("id") not in out, "node %d lists id %r twice: %r" % (
                i + 1, obj.get("id"), self.nodes_status(i))
            out[obj["id"]] = obj
        return out

    def node_id(self, i):
        """Node i's id as it reports it (GET /status/cluster/nodes/local)."""
        if self.fixed_ids[i] is not None:
            return self.fixed_ids[i]
        st, obj = self.node_status(i)
        assert st == 200, obj
        return obj["id"]

    def wait_converged(self, nodes=None, members=None, timeout=10.0):
        """Until every node in `nodes` (default: the running ones) lists exactly the
        node ids of `members` (default: the running nodes), all "active"."""
        nodes = self.running() if nodes is None else nodes
        members = self.running() if members is None else members
        want = {self.node_id(j) for j in members}
        last = {}

        def ok():
            for i in nodes:
                v = self.view(i)
                last[i + 1] = {k: o.get("status") for k, o in v.items()}
                if set(v) != want or any(o.get("status") != "active" for o in v.values()):
                    return False
            return True
        try:
            poll(ok, timeout * SLOW, interval=0.05, message="cluster converged")
        except AssertionError as e:
            raise AssertionError("%s: want %s active everywhere; views (by node): %r" % (
                e, sorted(want), last))

    def wait_status(self, i, node_id, status, timeout):
        """Until node i lists node_id with `status` (None: not listed). Returns the
        elapsed seconds."""
        t0 = time.monotonic()
        seen = []

        def ok():
            v = self.view(i)
            got = v[node_id]["status"] if node_id in v else None
            if not seen or seen[-1] != got:
                seen.append(got)
            return got == status
        try:
            poll(ok, timeout, interval=0.02, message="node %d listing %s as %s" % (
                i + 1, node_id, status))
        except AssertionError as e:
            raise AssertionError("%s; statuses seen in turn: %r" % (e, seen))
        return time.monotonic() - t0

    def wait_routes(self, endpoint, nodes=None, timeout=10.0):
        for i in (self.running() if nodes is None else nodes):
            self.piko.wait_routable(self.nodes[i], endpoint, timeout=timeout)

    def get(self, i, path="/echo", endpoint=None, headers=None, timeout=5.0, **kw):
        h = dict(headers or {})
        if endpoint is not None:
            h["x-piko-endpoint"] = endpoint
        node = self.nodes[i]
        return request(node.host, node.proxy_port, "GET", path, headers=h,
                       timeout=timeout * SLOW, **kw)

    # -- balancers --------------------------------------------------------------------

    def _balancer(self, port_key, name):
        from balancer import Balancer
        backends = [("%s:%d" % (self.hosts[i], self.ports[i][port_key]),
                     "http://%s:%d/ready" % (self.hosts[i], self.ports[i]["admin"]))
                    for i in range(self.n)]
        lb = Balancer(backends, name=name).start()
        self.piko.services.append(lb)  # closed after the processes at teardown
        return lb

    def upstream_balancer(self):
        """A Service in front of the upstream ports (for sidecars: connect_url=lb.url)."""
        return self._balancer("upstream", "lb-upstream")

    def proxy_balancer(self):
        """A Service in front of the proxy ports (for clients)."""
        return self._balancer("proxy", "lb-proxy")


# ---------------------------------------------------------------------------------------
# A network namespace joined to the host by a veth pair


def netns_unavailable():
    """Why partitions cannot be tested here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and iptables); euid is %d" % os.geteuid()
    if shutil.which("ip") is None:
        return "`ip` (iproute2) not found"
    if shutil.which("iptables") is None:
        return "`iptables` not found (apt-get install iptables)"
    return None


def _run(argv, check=True):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise RuntimeError("%s -> %d: %s" % (" ".join(argv), p.returncode,
                                             (p.stderr or p.stdout).strip()))
    return p


class Netns:
    """Namespace `pke2e-<pid>-<rand>`, veth `pkh<rand>` (host, 10.231.K.1/24) and
    `pkn<rand>` (inside, 10.231.K.2/24), K unused on the host. close() removes it all
    (processes inside must have been stopped before)."""

    def __init__(self):
        tag = "%05x" % random.randrange(1 << 20)
        self.name = "pke2e-%d-%s" % (os.getpid(), tag)
        self.host_if = "pkh" + tag
        self.ns_if = "pkn" + tag
        used = _run(["ip", "-o", "-4", "addr", "show"]).stdout
        for _ in range(100):
            k = random.randrange(256)
            if (" 10.231.%d." % k) not in used:
                break
        self.host_ip = "10.231.%d.1" % k
        self.ns_ip = "10.231.%d.2" % k
        self.prefix = ["ip", "netns", "exec", self.name]
        self.created = False
        self.isolated = False

    def setup(self):
        _run(["ip", "netns", "add", self.name])
        self.created = True
        _run(["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if])
        _run(["ip", "link", "set", self.ns_if, "netns", self.name])
        _run(["ip", "addr", "add", self.host_ip + "/24", "dev", self.host_if])
        _run(["ip", "link", "set", self.host_if, "up"])
        self.run(["ip", "link", "set", "lo", "up"])
        self.run(["ip", "addr", "add", self.ns_ip + "/24", "dev", self.ns_if])
        self.run(["ip", "link", "set", self.ns_if, "up"])
        # iptables must work in there, or the test cannot partition anything.
        self.run(["iptables", "-w", "-S"])
        return self

    def run(self, argv, check=True):
        return _run(self.prefix + list(argv), check=check)

    def _rules(self, op):
        self.run(["iptables", "-w", op, "INPUT", "-i", self.ns_if, "-j", "DROP"])
        self.run(["iptables", "-w", op, "OUTPUT", "-o", self.ns_if, "-j", "DROP"])

    def isolate(self):
        """Drops every packet through the veth pair, both ways (loopback inside and
        outside keeps working)."""
        self._rules("-A")
        self.isolated = True

    def heal(self):
        self._rules("-D")
        self.isolated = False

    def close(self):
        if not self.created:
            return
        # Anything still running in there was started by this test: stop it.
        pids = _run(["ip", "netns", "pids", self.name], check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        _run(["ip", "link", "del", self.host_if], check=False)
        _run(["ip", "netns", "del", self.name], check=False)
        self.created = False


# ---------------------------------------------------------------------------------------


def _serve_http(name, port):
    from services import Service
    svc = Service(name, port=port).start()
    print("serving %s on %s" % (name, svc.addr), flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    signal.signal(signal.SIGINT, lambda *a: stop.append(1))
    while not stop:
        time.sleep(0.1)
    svc.stop()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "serve-http":
        sys.exit(_serve_http(sys.argv[2], int(sys.argv[3])))
    sys.exit("usage: cluster.py serve-http NAME PORT")
