"""The Helm charts' configuration forms a working cluster, checked without Kubernetes
(issue "Kubernetes", acceptance 2): charts/piko is rendered with 3 replicas, and three
piko-server nodes start with the rendered StatefulSet's arguments and environment and the
rendered ConfigMap's server.yaml, on three loopback addresses, with dnsmasq serving the
SRV and A records the headless Service would serve. A sidecar starts with the arguments
the piko-sidecar library chart renders into charts/examples/app. Requests go through every
node; then the three nodes restart in StatefulSet order (highest ordinal first) under load,
and no request fails.

What differs from a cluster, and why: the ports move to free ones (this machine's
8000-8003 may be taken; the SRV record carries the cluster port as Kubernetes' does), the
in-cluster DNS names are served by dnsmasq, and a small balancer stands in for the
Services (it routes to ready nodes only, as kube-proxy does with readiness)."""

import base64
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cluster import DnsMasq, request
from conftest import free_port
from helpers import SLOW, poll

yaml = pytest.importorskip("yaml", reason="PyYAML is installed by scripts/install-deps.sh test")

ROOT = Path(__file__).resolve().parent.parent
HELM = shutil.which("helm") or os.path.expanduser("~/go/bin/helm")
HOSTS = ["127.0.10.1", "127.0.10.2", "127.0.10.3"]
EP = "app"  # charts/examples/app: --endpoint=app=8080

pytestmark = pytest.mark.skipif(not os.path.exists(HELM),
                                reason="helm not found (scripts/install-deps.sh test "
                                       "installs it with go install into ~/go/bin)")


def helm(*args, cwd=ROOT):
    p = subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert p.returncode == 0, "helm %s: %s" % (" ".join(args), p.stderr)
    return p.stdout


def render(chart, *sets):
    out = helm("template", "piko", str(ROOT / chart), "--namespace", "default", *sets)
    return [d for d in yaml.safe_load_all(out) if d]


def find(docs, kind):
    found = [d for d in docs if d.get("kind") == kind]
    assert found, "no %s in the rendered chart" % kind
    return found


def secret_value(docs, name, key):
    for d in find(docs, "Secret"):
        if d["metadata"]["name"] != name:
            continue
        if key in (d.get("stringData") or {}):
            return d["stringData"][key]
        return base64.b64decode(d["data"][key]).decode()
    raise AssertionError("secret %s/%s not rendered" % (name, key))


def container_env(docs, container):
    env = {}
    for e in container.get("env") or []:
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secret_value(docs, ref["name"], ref["key"])
    return env


def server_argv(container, config_path):
    """The rendered args, the config file's path moved to the rendered copy."""
    args = list(container.get("args") or [])
    out = []
    for a in args:
        if a.endswith("/server.yaml"):
            a = (a.split("=", 1)[0] + "=" if a.startswith("--") and "=" in a else "") + config_path
        out.append(a)
    return out


def srv_name(server_yaml):
    join = yaml.safe_load(server_yaml)["cluster"]["join"]
    assert join.startswith("srv:"), join
    return join[len("srv:"):]


def test_rendered_chart_forms_a_cluster_and_rolls_without_loss(piko, tmp_path):
    from balancer import Balancer
    from test_32_cluster_drain import Load

    docs = render("charts/piko", "--set", "replicaCount=3",
                  "--set", "cluster.secret=chart-check-secret-0123456789abcdef")
    sts = find(docs, "StatefulSet")[0]
    assert sts["spec"]["replicas"] == 3
    server = sts["spec"]["template"]["spec"]["containers"][0]
    config = find(docs, "ConfigMap")[0]["data"]["server.yaml"]
    cfg_path = tmp_path / "server.yaml"
    cfg_path.write_text(config)
    args = server_argv(server, str(cfg_path))
    env = container_env(docs, server)
    assert env.get("PIKO_CLUSTER_SECRET"), "the cluster secret is not passed to the pods"

    ports = {k: free_port() for k in ("proxy", "upstream", "admin", "cluster")}
    dns = DnsMasq(tmp_path / "dnsmasq.log", targets=[(h, ports["cluster"]) for h in HOSTS],
                  srv_name=srv_name(config)).start()
    piko.services.append(dns)

    def start(i):
        # Only what cannot be as in a pod changes: the addresses and the DNS server.
        return piko.server(flags={"log.level": None, "grace-period": None,
                                  "dns.servers": dns.servers},
                           ports=ports, host=HOSTS[i], args=args, env=env,
                           name="piko-%d" % i)

    nodes = [start(i) for i in range(3)]

    def balancer(key, name):
        lb = Balancer([("%s:%d" % (h, ports[key]), "http://%s:%d/ready" % (h, ports["admin"]))
                       for h in HOSTS], name=name).start()
        piko.services.append(lb)
        return lb

    up, px = balancer("upstream", "svc-upstream"), balancer("proxy", "svc-proxy")
    assert up.wait_ready(3, 10 * SLOW) and px.wait_ready(3, 10 * SLOW)

    def converged():
        for h in HOSTS:
            r = request(h, ports["admin"], "GET", "/status/cluster/nodes")
            if r.status != 200 or len([n for n in __import__("json").loads(r.body)
                                       if n.get("status") == "active"]) != 3:
                return False
        return True
    poll(converged, 20 * SLOW, message="three active nodes in every node's view")

    # The sidecar as the library chart renders it into the example application.
    helm("dependency", "build", str(ROOT / "charts/examples/app"))
    app = render("charts/examples/app")
    pod = find(app, "Deployment")[0]["spec"]["template"]["spec"]
    sidecar = next(c for c in pod["containers"] if c["name"] == "piko-sidecar")
    svc = piko.service("app")
    sc_args = []
    for a in sidecar.get("args") or []:
        # What only a pod has becomes the test's: the connect URL (the upstream Service:
        # the balancer here), the app's localhost port (the test service), the admin port
        # (the harness picks a free one).
        if a.startswith("--connect.url="):
            a = "--connect.url=" + up.url
        elif a.startswith("--endpoint="):
            name = a[len("--endpoint="):].split("=", 1)[0]
            a = "--endpoint=%s=%s" % (name, svc.addr)
        elif a.startswith("--admin.bind-addr="):
            continue
        sc_args.append(a)
    assert "--endpoint=%s=%s" % (EP, svc.addr) in sc_args, sc_args
    piko.sidecar({}, connect_url=up.url, args=sc_args,
                 flags={"connect.url": None, "log.level": None, "grace-period": None},
                 name="app-sidecar")

    for i, h in enumerate(HOSTS):
        poll(lambda: request(h, ports["proxy"], "GET", "/whoami",
                             headers={"x-piko-endpoint": EP}).status == 200,
             10 * SLOW, message="node %d routes %s" % (i, EP))

    load = Load(px.port, EP, want={"app"}).start()
    try:
        time.sleep(1.0)
        for i in (2, 1, 0):  # a StatefulSet's rolling update: highest ordinal first
            nodes[i].signal(signal.SIGTERM)
            rc = nodes[i].wait(timeout=60 * SLOW)
            assert rc == 0, nodes[i].log_tail()
            nodes[i] = start(i)
            assert px.wait_ready(3, 20 * SLOW) and up.wait_ready(3, 20 * SLOW)
            poll(converged, 20 * SLOW, message="cluster converged after node %d" % i)
            time.sleep(0.5)
        while len(load.results) < 1000:
            time.sleep(0.2)
    finally:
        load.stop()
    fails = load.failures()
    print("rolling restart of the rendered cluster: %d requests, %d failed" % (
        len(load.results), len(fails)))
    assert len(load.results) >= 1000, len(load.results)
    assert not fails, "%d of %d requests failed during the rolling restart: %s" % (
        len(fails), len(load.results), [f[5] for f in fails[:10]])
