"""Fixtures for the end-to-end suite: real piko-server / piko-sidecar processes on
loopback, driven by real clients.

PIKO_BIN_DIR names the directory holding the binaries (default: <repo>/build/bin). A
path containing "asan" marks a sanitized build: waits are stretched (helpers.SLOW) and
peak-RSS assertions are skipped.

Fixtures: `piko` (a per-test harness: piko.service(), piko.server(), piko.sidecar(),
piko.stack()), the `server`/`sidecar`/`service` factories, `stack`, and `shared` /
`shared_stack` (one set of processes per module, for tests that do not change process
state).

Every process writes stdout+stderr to a log file in the test's tmp_path; the tail of
each log (and the head of any sanitizer report) is attached to the report of a failing
test. At teardown every process still
running gets SIGTERM (then SIGKILL after a bound); a process that crashed, exited
non-zero after SIGTERM, ignored SIGTERM, or printed a sanitizer report makes the test
error at teardown.
"""

import ctypes
import http.client
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from helpers import SLOW, poll
from services import Service

REPO = Path(__file__).resolve().parent.parent
BIN_DIR = Path(os.environ.get("PIKO_BIN_DIR") or REPO / "build" / "bin")
MiB = 1 << 20

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "SUMMARY: UndefinedBehaviorSanitizer", "WARNING: ThreadSanitizer")

# Children die with pytest (PR_SET_PDEATHSIG), so an interrupted run leaves no orphans.
# Processes are only ever started from the main thread, which lives as long as pytest.
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent():
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def binary(name):
    path = BIN_DIR / name
    if not path.exists():
        pytest.fail("%s not found (PIKO_BIN_DIR=%s); build first" % (path, BIN_DIR),
                    pytrace=False)
    return str(path)


# ---------------------------------------------------------------------------------------
# Ports

_handed_out = set()
_rng = random.Random(os.getpid() ^ int(time.time()))


def free_port():
    """A loopback TCP port that is free now. Chosen below the kernel's ephemeral range
    (32768+) so outgoing connections of other tests cannot grab it in the meantime."""
    for _ in range(1000):
        port = _rng.randint(20000, 32000)
        if port in _handed_out:
            continue
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port")


# ---------------------------------------------------------------------------------------
# Processes


def http_get(port, path, timeout=1.0, host="127.0.0.1"):
    """(status, body) of GET http://host:port/path; raises OSError if unreachable."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def read_status_kib(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


class Proc:
    """One piko binary. stdout+stderr go to `log_path`."""

    def __init__(self, name, argv, log_path, admin_port, env=None):
        self.name = name
        self.argv = argv
        self.log_path = Path(log_path)
        self.admin_port = admin_port
        self.admin_host = "127.0.0.1"  # where the admin port answers (cluster tests)
        self.env = env
        self.popen = None
        self.expected_exit = False  # set once a test deliberately stops it
        self.returncode = None

    def start(self):
        self._log = open(self.log_path, "ab", buffering=0)
        self._log.write(("$ %s\n" % " ".join(self.argv)).encode())
        self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=self._log, env=self.env,
                                      preexec_fn=_die_with_parent)
        return self

    @property
    def pid(self):
        return self.popen.pid

    def running(self):
        return self.popen is not None and self.popen.poll() is None

    # -- admin ------------------------------------------------------------------------

    def admin(self, path, timeout=1.0):
        return http_get(self.admin_port, path, timeout * SLOW, host=self.admin_host)

    def ready_status(self):
        """Status of GET /ready, or None when the admin port does not answer."""
        try:
            return self.admin("/ready")[0]
        except (OSError, http.client.HTTPException):
            return None

    def wait_ready(self, timeout=10.0):
        deadline = time.monotonic() + timeout * SLOW
        while True:
            if not self.running():
                raise AssertionError("%s exited with %s before it was ready\n%s" % (
                    self.name, self.popen.returncode, self.log_tail()))
            if self.ready_status() == 200:
                return self
            if time.monotonic() > deadline:
                raise AssertionError("%s not ready (/ready=%s) after %.0fs\n%s" % (
                    self.name, self.ready_status(), timeout * SLOW, self.log_tail()))
            time.sleep(0.05)

    # -- signals ----------------------------------------------------------------------

    def signal(self, sig):
        self.expected_exit = True
        self.popen.send_signal(sig)

    def wait(self, timeout=15.0):
        """Exit status (negative = killed by that signal). Raises if still running."""
        try:
            self.returncode = self.popen.wait(timeout * SLOW)
        except subprocess.TimeoutExpired:
            raise AssertionError("%s still running after %.0fs\n%s" % (
                self.name, timeout * SLOW, self.log_tail()))
        return self.returncode

    def stop(self, sig=None, timeout=15.0):
        """Send sig (default SIGTERM), wait for the exit, return the exit status."""
        if sig is None:
            sig = signal.SIGTERM
        if self.running():
            self.signal(sig)
        self.expected_exit = True
        return self.wait(timeout)

    def kill(self):
        self.expected_exit = True
        if self.running():
            self.popen.kill()
        self.returncode = self.popen.wait(10)
        return self.returncode

    # -- observation ------------------------------------------------------------------

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines=60):
        text = self.log_text().splitlines()
        out = "---- %s (%s), last %d lines ----\n%s" % (
            self.name, self.log_path, lines, "\n".join(text[-lines:]))
        # A sanitizer report is long; its first lines (what and where) matter most.
        for i, line in enumerate(text):
            if any(m in line for m in SANITIZER_MARKERS):
                if i < len(text) - lines:
                    out = "---- %s: sanitizer report ----\n%s\n%s" % (
                        self.name, "\n".join(text[max(0, i - 2):i + 30]), out)
                break
        return out

    def wait_log(self, predicate, timeout=5.0, message="log line"):
        return poll(lambda: predicate(self.log_text()), timeout * SLOW,
                    message="%s in %s log" % (message, self.name))

    def rss_kib(self):
        return {"VmHWM": read_status_kib(self.pid, "VmHWM"),
                "VmRSS": read_status_kib(self.pid, "VmRSS")}

    def close_log(self):
        log = getattr(self, "_log", None)
        if log is not None:
            log.close()
            self._log = None


class ServerProc(Proc):
    def __init__(self, name, argv, log_path, ports, env=None, host="127.0.0.1"):
        super().__init__(name, argv, log_path, ports["admin"], env)
        self.ports = dict(ports)
        self.proxy_port = ports["proxy"]
        self.upstream_port = ports["upstream"]
        self.cluster_port = ports.get("cluster")
        self.host = host
        self.admin_host = host

    @property
    def connect_url(self):
        return "http://%s:%d" % (self.host, self.upstream_port)

    @property
    def cluster_addr(self):
        return "%s:%d" % (self.host, self.cluster_port)


class SidecarProc(Proc):
    def __init__(self, name, argv, log_path, admin_port, endpoints, env=None):
        super().__init__(name, argv, log_path, admin_port, env)
        self.endpoints = dict(endpoints)


_help_cache = {}


def server_has_flag(flag):
    """Whether piko-server's --help lists --flag (cached per binary)."""
    path = binary("piko-server")
    if path not in _help_cache:
        try:
            p = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=30)
            _help_cache[path] = p.stdout + p.stderr
        except (OSError, subprocess.TimeoutExpired):
            _help_cache[path] = ""
    return ("--%s " % flag) in _help_cache[path]


def _env(extra):
    if not extra:
        return None
    env = dict(os.environ)
    env.update(extra)
    return env


def flags_to_argv(flags):
    argv = []
    for key, value in flags.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            for v in value:
                argv += ["--" + key, str(v)]
        else:
            argv += ["--" + key, str(value)]
    return argv


# ---------------------------------------------------------------------------------------
# The harness: services + processes of one test, torn down in a safe order.


class Piko:
    DEFAULT_SERVER_FLAGS = {"log.level": "info", "grace-period": "5s"}
    DEFAULT_SIDECAR_FLAGS = {"log.level": "info", "grace-period": "5s"}

    def __init__(self, tmp_path):
        self.tmp_path = Path(tmp_path)
        self.procs = []
        self.services = []
        self._counter = 0

    def _log_path(self, name):
        self._counter += 1
        return self.tmp_path / ("%02d-%s.log" % (self._counter, name))

    # -- services ---------------------------------------------------------------------

    def service(self, name="svc"):
        svc = Service(name, gate_timeout=60.0 * SLOW).start()
        self.services.append(svc)
        return svc

    # -- server -----------------------------------------------------------------------

    @staticmethod
    def new_server_ports():
        return {"proxy": free_port(), "upstream": free_port(), "admin": free_port(),
                "cluster": free_port()}

    def server(self, flags=None, ports=None, wait=True, args=(), name="server", env=None,
               host="127.0.0.1", prefix=()):
        """Start piko-server on explicit loopback ports; waits for /ready 200.
        flags: {"proxy.timeout": "1s", ...}; a None value drops a default flag.
        env: extra environment variables for this process only.
        host: the address every port binds to; prefix: argv put before the binary
        (e.g. ["ip", "netns", "exec", NS], which execs it: same pid)."""
        ports = dict(ports or self.new_server_ports())
        all_flags = {
            "proxy.bind-addr": "%s:%d" % (host, ports["proxy"]),
            "upstream.bind-addr": "%s:%d" % (host, ports["upstream"]),
            "admin.bind-addr": "%s:%d" % (host, ports["admin"]),
        }
        # Every server gets its own cluster port (the default :8003 would be shared by
        # all the servers of a run). Binaries older than the cluster feature lack it.
        if server_has_flag("cluster.bind-addr"):
            ports.setdefault("cluster", free_port())
            all_flags["cluster.bind-addr"] = "%s:%d" % (host, ports["cluster"])
        all_flags.update(self.DEFAULT_SERVER_FLAGS)
        all_flags.update(flags or {})
        argv = list(prefix) + [binary("piko-server")] + flags_to_argv(all_flags) + list(args)
        proc = ServerProc(name, argv, self._log_path(name), ports, env=_env(env), host=host)
        self.procs.append(proc)
        proc.start()
        if wait:
            proc.wait_ready()
        return proc

    # -- sidecar ----------------------------------------------------------------------

    def sidecar(self, endpoints, server=None, connect_url=None, flags=None, wait=True,
                routable=True, args=(), name="sidecar", env=None, admin_host="127.0.0.1",
                prefix=()):
        """Start piko-sidecar serving endpoints {name: addr}. With wait, waits for
        /ready 200 and (routable) until the server routes every endpoint to a tunnel.
        admin_host: the address its admin port binds to; prefix: argv put before the
        binary (see server())."""
        admin_port = free_port()
        if connect_url is None:
            connect_url = server.connect_url
        all_flags = {
            "connect.url": connect_url,
            "admin.bind-addr": "%s:%d" % (admin_host, admin_port),
            "endpoint": ["%s=%s" % (k, v) for k, v in endpoints.items()],
        }
        all_flags.update(self.DEFAULT_SIDECAR_FLAGS)
        all_flags.update(flags or {})
        argv = list(prefix) + [binary("piko-sidecar")] + flags_to_argv(all_flags) + list(args)
        proc = SidecarProc(name, argv, self._log_path(name), admin_port, endpoints,
                           env=_env(env))
        proc.admin_host = admin_host
        self.procs.append(proc)
        proc.start()
        if wait:
            proc.wait_ready()
            if routable and server is not None:
                for ep in endpoints:
                    self.wait_routable(server, ep)
        return proc

    def wait_routable(self, server, endpoint, timeout=10.0):
        """Wait until the proxy no longer answers 502 "no available upstreams" for
        endpoint (the sidecar may report ready a moment before the server has counted
        its tunnel). The probe route is not counted by the test services."""
        def routed():
            conn = http.client.HTTPConnection(server.host, server.proxy_port,
                                              timeout=2 * SLOW)
            try:
                conn.request("GET", "/_probe", headers={"x-piko-endpoint": endpoint})
                r = conn.getresponse()
                body = r.read()
            except socket.timeout:
                return True  # routed somewhere and stuck there: the test will tell
            finally:
                conn.close()
            return not (r.status == 502 and b"no available upstreams" in body)
        poll(routed, timeout * SLOW, message="endpoint %s routable" % endpoint)

    # -- the usual stack --------------------------------------------------------------

    def stack(self, endpoint="my-service", server_flags=None, sidecar_flags=None,
              service_name="svc"):
        """A server, one service and one sidecar serving it as `endpoint`."""
        svc = self.service(service_name)
        srv = self.server(server_flags)
        sc = self.sidecar({endpoint: svc.addr}, server=srv, flags=sidecar_flags)
        return srv, sc, svc

    # -- teardown ---------------------------------------------------------------------

    def close(self):
        """Stop everything; return a list of problems found (crashes, sanitizer
        reports, processes that ignored SIGTERM or exited non-zero after it)."""
        problems = []
        for svc in self.services:
            svc.release_all()  # lets in-flight /hang and /sse streams finish
        live = [p for p in self.procs if p.popen is not None]
        for p in live:
            if not p.running() and not p.expected_exit:
                problems.append("%s exited by itself with status %s during the test" % (
                    p.name, p.popen.returncode))
        # Sidecars first (so servers do not wait for tunnels), then servers.
        sidecars = [p for p in live if isinstance(p, SidecarProc)]
        others = [p for p in live if not isinstance(p, SidecarProc)]
        for group in (sidecars, others):
            stopping = [p for p in group if p.running()]
            for p in stopping:
                p.popen.send_signal(signal.SIGTERM)
            for p in stopping:
                try:
                    rc = p.popen.wait(15 * SLOW)
                except subprocess.TimeoutExpired:
                    p.popen.kill()
                    p.popen.wait(10)
                    problems.append("%s ignored SIGTERM for %.0fs (killed)" % (
                        p.name, 15 * SLOW))
                    continue
                if rc != 0:
                    problems.append("%s exited with status %s after SIGTERM at teardown" % (
                        p.name, rc))
        for p in live:
            if p.running():  # belt and braces
                p.popen.kill()
                p.popen.wait(10)
            p.close_log()
            text = p.log_text()
            for marker in SANITIZER_MARKERS:
                if marker in text:
                    problems.append("%s log contains a sanitizer report (%r)" % (
                        p.name, marker))
                    break
        for svc in self.services:
            svc.stop()
        return problems


PIKO_KEY = pytest.StashKey()


@pytest.fixture
def piko(request, tmp_path):
    h = Piko(tmp_path)
    request.node.stash[PIKO_KEY] = h
    try:
        yield h
    finally:
        problems = h.close()
    if problems:
        pytest.fail("teardown found problems:\n  " + "\n  ".join(problems), pytrace=False)


@pytest.fixture(scope="module")
def module_piko(tmp_path_factory, request):
    """A harness shared by the tests of one module (saves process start-ups for tests
    that do not change process state). Use through `shared`."""
    h = Piko(tmp_path_factory.mktemp(request.module.__name__.replace("test_", "")))
    h.shared_objects = {}
    try:
        yield h
    finally:
        problems = h.close()
    if problems:
        pytest.fail("module teardown found problems:\n  " + "\n  ".join(problems),
                    pytrace=False)


@pytest.fixture
def shared(module_piko, request):
    """shared(key, factory) -> factory(module_piko) built once per module. Before each
    test it checks that every shared process is still alive and resets the counters of
    the shared services; failures show the shared logs."""
    h = module_piko
    request.node.stash[PIKO_KEY] = h

    def get(key, factory):
        if key not in h.shared_objects:
            h.shared_objects[key] = factory(h)
        for p in h.procs:
            if not p.expected_exit and not p.running():
                pytest.fail("%s died in an earlier test (status %s)\n%s" % (
                    p.name, p.popen.returncode, p.log_tail()), pytrace=False)
        for svc in h.services:
            reset = getattr(svc, "reset_counters", None)  # TCP services, balancers: none
            if reset is not None:
                reset()
        return h.shared_objects[key]

    return get


@pytest.fixture
def shared_stack(shared):
    """Like `stack`, but one per module."""
    return shared("stack", lambda h: h.stack())


@pytest.fixture
def server(piko):
    """Factory: server(flags=None, ports=None, wait=True) -> ServerProc."""
    return piko.server


@pytest.fixture
def sidecar(piko):
    """Factory: sidecar(endpoints, server=..., flags=None) -> SidecarProc."""
    return piko.sidecar


@pytest.fixture
def service(piko):
    """Factory: service(name) -> a started services.Service."""
    return piko.service


@pytest.fixture
def stack(piko):
    """(server, sidecar, service): endpoint "my-service" served by one sidecar."""
    return piko.stack()


# ---------------------------------------------------------------------------------------
# Per-test deadline (no plugin needed) and log tails on failure.


@pytest.fixture(autouse=True)
def _deadline(request):
    marker = request.node.get_closest_marker("deadline")
    secs = (marker.args[0] if marker else 60) * SLOW

    def on_alarm(signum, frame):
        raise TimeoutError("test exceeded its deadline of %.0fs" % secs)

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, secs)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    h = item.stash.get(PIKO_KEY, None)
    if h is None:
        return
    for p in h.procs:
        rep.sections.append(("log of %s" % p.name, p.log_tail()))
