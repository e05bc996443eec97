"""The Helm charts (issue "Kubernetes"): charts/piko, the library chart charts/piko-sidecar
and the example application charts/examples/app that injects it.

- `helm lint` on the three charts;
- `helm template` with default and other values (1 and 3 replicas, TLS, auth, the
  ServiceMonitor, the injected sidecar), each output checked by `kubeconform -strict`
  against the schemas vendored in charts/tests/schemas (offline; a kind without a schema
  is an error);
- the values schema and the templates' own checks refuse bad values with their message;
- the rendered configuration is the real one: piko-server runs from the ConfigMap's
  server.yaml, the StatefulSet's args and env (Secrets and mounts laid out as Kubernetes
  would) and turns ready; piko-sidecar runs with the args the library chart renders and a
  request goes through both.

helm and kubeconform come from scripts/install-deps.sh (go install into ~/go/bin); without
them these tests are skipped.
"""

import copy
import http.client
import os
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, ServerProc, SidecarProc, binary, free_port
from helpers import SLOW, poll
import tokens

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read helm's output "
                           "(scripts/install-deps.sh test installs it)")


def _tool(name):
    found = shutil.which(name)
    if found:
        return found
    path = Path.home() / "go" / "bin" / name
    return str(path) if path.exists() else None


HELM = _tool("helm")
KUBECONFORM = _tool("kubeconform")

pytestmark = pytest.mark.skipif(
    not (HELM and KUBECONFORM),
    reason="helm and kubeconform not found on PATH or in ~/go/bin "
           "(scripts/install-deps.sh test builds them with go install)")

CHARTS = REPO / "charts"
SCHEMAS = CHARTS / "tests" / "schemas"
K8S_VERSION = "1.29.0"


# ---------------------------------------------------------------------------------------
# Tools


def run(argv, ok=True, stdin=None):
    p = subprocess.run(argv, capture_output=True, text=True, input=stdin, timeout=120 * SLOW)
    if ok and p.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s%s" % (" ".join(argv), p.returncode,
                                                          p.stdout, p.stderr))
    return p


@pytest.fixture(scope="module")
def charts(tmp_path_factory):
    """A copy of charts/ (helm dependency build writes into the chart it builds), with
    the example app's dependency built."""
    root = tmp_path_factory.mktemp("charts") / "charts"
    shutil.copytree(CHARTS, root, ignore=shutil.ignore_patterns("tests"))
    shutil.rmtree(root / "examples" / "app" / "charts", ignore_errors=True)
    run([HELM, "dependency", "build", str(root / "examples" / "app")])
    return root


def template(chart, *args, ok=True):
    """helm template; returns the CompletedProcess (stdout: the manifests)."""
    return run([HELM, "template", "t", str(chart), "--namespace", "piko"] + list(args), ok=ok)


def docs(text):
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(manifests, kind):
    found = [d for d in manifests if d["kind"] == kind]
    assert found, "no %s in %s" % (kind, [d["kind"] for d in manifests])
    return found


def kubeconform(text):
    p = run([KUBECONFORM, "-strict", "-summary", "-kubernetes-version", K8S_VERSION,
             "-schema-location",
             str(SCHEMAS) + "/{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}"
             "/{{ .ResourceKind }}{{ .KindSuffix }}.json",
             "-schema-location",
             str(SCHEMAS) + "/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json",
             "-"], ok=False, stdin=text)
    return p.returncode, p.stdout + p.stderr


def assert_valid(text):
    rc, out = kubeconform(text)
    assert rc == 0 and "Invalid: 0, Errors: 0, Skipped: 0" in out, out
    return out


def values_file(tmp_path, values, name="values.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return str(path)


# ---------------------------------------------------------------------------------------
# Lint


def test_helm_lint_the_three_charts(charts):
    for chart in ("piko", "piko-sidecar", "examples/app"):
        out = run([HELM, "lint", "--strict", str(charts / chart)]).stdout
        assert "1 chart(s) linted, 0 chart(s) failed" in out, out


# ---------------------------------------------------------------------------------------
# piko: renders and validates


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return {"rsa": tokens.Key(d, "signer", "rsa"), "ec": tokens.Key(d, "admin", "ec")}


def server_values(keys, replicas=3):
    """Every option of the chart that changes what it renders, at once."""
    return {
        "replicaCount": replicas,
        "cluster": {"secret": "test-cluster-secret-0123456789"},
        "tls": {"proxy": {"secretName": "piko-tls"},
                "upstream": {"secretName": "piko-tls", "clientCAKey": ""},
                "admin": {"secretName": "piko-tls"},
                "cluster": {"secretName": "piko-cluster-tls", "clientCAKey": "ca.crt"}},
        "auth": {"upstream": {"hmacSecret": {"name": "piko-auth"}, "audience": "piko"},
                 "proxy": {"rsaPublicKey": keys["rsa"].public_pem, "issuer": "e2e"},
                 "admin": {"ecdsaPublicKey": keys["ec"].public_pem}},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"},
                           "tokenSecret": {"name": "piko-metrics-token"},
                           "caSecret": {"name": "piko-tls"}},
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                      "limits": {"memory": "256Mi"}},
        "server": {"drainDelay": "10s", "gracePeriod": "1m"},
    }


def test_default_values_render_valid_manifests(charts):
    out = template(charts / "piko").stdout
    assert_valid(out)
    m = docs(out)
    kinds = sorted(d["kind"] for d in m)
    assert kinds == ["ConfigMap", "PodDisruptionBudget", "Secret", "Service", "Service",
                     "StatefulSet"], kinds
    sts = by_kind(m, "StatefulSet")[0]
    assert sts["spec"]["replicas"] == 3
    pod = sts["spec"]["template"]["spec"]
    # 5 s + 30 s + 10 s of headroom.
    assert pod["terminationGracePeriodSeconds"] == 45
    assert pod["containers"][0]["args"][:2] == ["--config.path", "/etc/piko/config/server.yaml"]


def test_one_replica_without_secret_is_standalone(charts):
    out = template(charts / "piko", "--set", "replicaCount=1",
                   "--set", "cluster.generateSecret=false").stdout
    assert_valid(out)
    m = docs(out)
    assert sorted(d["kind"] for d in m) == ["ConfigMap", "Service", "Service", "StatefulSet"]
    cfg = yaml.safe_load(by_kind(m, "ConfigMap")[0]["data"]["server.yaml"])
    assert "join" not in cfg["cluster"] and "secret" not in cfg["cluster"], cfg


def test_tls_auth_and_service_monitor_render_valid_manifests(charts, keys, tmp_path):
    out = template(charts / "piko", "-f", values_file(tmp_path, server_values(keys))).stdout
    assert_valid(out)
    m = docs(out)
    cfg = yaml.safe_load(by_kind(m, "ConfigMap")[0]["data"]["server.yaml"])
    assert cfg["proxy"]["tls"] == {"cert": "/etc/piko/tls/proxy/tls.crt",
                                   "key": "/etc/piko/tls/proxy/tls.key"}
    assert cfg["cluster"]["tls"] == {"cert": "/etc/piko/tls/cluster/tls.crt",
                                     "key": "/etc/piko/tls/cluster/tls.key",
                                     "client_cas": "/etc/piko/tls/cluster/ca.crt",
                                     "root_cas": "/etc/piko/tls/cluster/ca.crt"}
    assert cfg["upstream"]["auth"] == {"hmac_secret_key": "${PIKO_UPSTREAM_HMAC_SECRET}",
                                       "audience": "piko"}
    assert cfg["proxy"]["auth"]["rsa_public_key"].startswith("-----BEGIN PUBLIC KEY-----")
    assert cfg["admin"]["auth"]["ecdsa_public_key"] == keys["ec"].public_pem
    sts = by_kind(m, "StatefulSet")[0]
    pod = sts["spec"]["template"]["spec"]
    c = pod["containers"][0]
    # The HMAC secret comes from the Secret, never from the ConfigMap.
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"]}
    assert env["PIKO_UPSTREAM_HMAC_SECRET"] == {"name": "piko-auth", "key": "hmac-secret"}
    mounts = {v["name"]: v["mountPath"] for v in c["volumeMounts"]}
    assert mounts == {"config": "/etc/piko/config", "tls-proxy": "/etc/piko/tls/proxy",
                      "tls-upstream": "/etc/piko/tls/upstream",
                      "tls-admin": "/etc/piko/tls/admin",
                      "tls-cluster": "/etc/piko/tls/cluster"}, mounts
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert c["resources"]["limits"] == {"memory": "256Mi"}
    # 10 s + 60 s + 10 s.
    assert pod["terminationGracePeriodSeconds"] == 80
    sm = by_kind(m, "ServiceMonitor")[0]
    ep = sm["spec"]["endpoints"][0]
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert ep["port"] == "admin" and ep["path"] == "/metrics" and ep["scheme"] == "https"
    assert ep["authorization"]["credentials"] == {"name": "piko-metrics-token", "key": "token"}
    assert ep["tlsConfig"]["ca"]["secret"] == {"name": "piko-tls", "key": "ca.crt"}
    # The metrics Service selects the pods and is the one the ServiceMonitor selects.
    svc = [s for s in by_kind(m, "Service") if s["metadata"]["name"] == "t-piko-metrics"][0]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()


def test_kubeconform_refuses_what_kubernetes_would(charts):
    """The schemas are in use and strict: an unknown field of a rendered object fails."""
    m = docs(template(charts / "piko").stdout)
    sts = copy.deepcopy(by_kind(m, "StatefulSet")[0])
    sts["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesystem"] = True
    rc, out = kubeconform(yaml.safe_dump(sts))
    assert rc != 0 and "additional properties 'readOnlyRootFilesystem' not allowed" in out, out
    rc, out = kubeconform("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n")
    assert rc != 0 and "could not find schema for Pod" in out, out


# ---------------------------------------------------------------------------------------
# piko: refusals


@pytest.mark.parametrize("args,message", [
    (["--set", "replicaCont=3"], "additional properties 'replicaCont' not allowed"),
    (["--set", "replicaCount=three"], "at '/replicaCount': got string, want integer"),
    (["--set", "tls.proxy.secretname=x"], "at '/tls/proxy': additional properties "
                                          "'secretname' not allowed"),
    (["--set", "service.type=Ingress"], "at '/service/type'"),
    (["--set", "server.drainDelay=5"], "at '/server/drainDelay'"),
    (["--set", "terminationGracePeriodSeconds=30"],
     "terminationGracePeriodSeconds (30) must be longer than server.drainDelay + "
     "server.gracePeriod (5s + 30s = 35s)"),
    (["--set", "auth.proxy.jwksEndpoint=https://auth.example/jwks",
      "--set", "auth.proxy.hmacSecret.name=s"], "auth.proxy: give one key source"),
    (["--set", "auth.admin.issuer=x"], "auth.admin.audience/issuer need a key source"),
    (["--set", "tls.admin.secretName=t", "--set", "tls.admin.clientCAKey=ca.crt"],
     "tls.admin.clientCAKey: the kubelet's probes cannot present a client certificate"),
    (["--set", "serviceMonitor.enabled=true", "--set", "auth.admin.jwksEndpoint=https://a/j"],
     "serviceMonitor.tokenSecret.name is empty"),
    (["--set", "replicaCount=3", "--set", "cluster.generateSecret=false"],
     "replicaCount > 1 needs a cluster secret"),
])
def test_bad_values_are_refused_with_a_message(charts, args, message):
    p = template(charts / "piko", *args, ok=False)
    assert p.returncode != 0, p.stdout
    assert message in p.stderr, p.stderr


def notes(charts, *args):
    """NOTES.txt as helm install would print it. helm template skips NOTES.txt and helm
    install needs a cluster: a copy of the chart renders it inside a ConfigMap."""
    copy_dir = charts.parent / "piko-notes"
    if not copy_dir.exists():
        shutil.copytree(charts / "piko", copy_dir)
        text = (copy_dir / "templates" / "NOTES.txt").read_text()
        (copy_dir / "templates" / "NOTES.txt").unlink()
        (copy_dir / "templates" / "_notes.tpl").write_text(
            '{{- define "notes" }}' + text + "{{- end }}")
        (copy_dir / "templates" / "notes.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n  notes: |\n"
            '    {{- include "notes" . | nindent 4 }}\n')
    out = template(copy_dir, "--show-only", "templates/notes.yaml", *args).stdout
    return docs(out)[0]["data"]["notes"]


def test_notes_name_the_right_commands(charts):
    text = notes(charts)
    assert "piko-server status nodes --server.url http://localhost:8002\n" in text, text
    assert "http://piko.piko.svc:8001" not in text and "http://t-piko.piko.svc:8001" in text
    text = notes(charts, "--set", "tls.admin.secretName=t", "--set", "serviceMonitor.enabled=true",
                 "--set", "auth.admin.jwksEndpoint=https://a.example/jwks",
                 "--set", "serviceMonitor.tokenSecret.name=tok")
    assert ("piko-server status nodes --server.url https://localhost:8002 "
            "--server.tls.root-cas ca.crt --token-file TOKEN") in text, text
    assert "open https://localhost:8002/ for the status page" in text, text
    assert "the ServiceMonitor t-piko scrapes /metrics" in text, text


def test_termination_grace_period_set_longer_is_kept(charts):
    m = docs(template(charts / "piko", "--set", "terminationGracePeriodSeconds=36").stdout)
    pod = by_kind(m, "StatefulSet")[0]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 36


# ---------------------------------------------------------------------------------------
# piko-sidecar: the example app and the plain manifest


def sidecar_of(manifests):
    pod = by_kind(manifests, "Deployment")[0]["spec"]["template"]["spec"]
    names = [c["name"] for c in pod["containers"]]
    assert names == ["app", "piko-sidecar"], names
    return pod["containers"][1], pod.get("volumes", [])


def test_example_app_injects_the_sidecar(charts):
    out = template(charts / "examples" / "app").stdout
    assert_valid(out)
    c, volumes = sidecar_of(docs(out))
    assert c["args"] == ["--connect.url=http://piko.piko.svc:8001", "--endpoint=app=8080",
                         "--admin.bind-addr=:5000", "--log.level=info", "--grace-period=25s"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "piko-admin"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "piko-admin"}
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"], sc
    assert volumes == [] and "volumeMounts" not in c


def test_example_app_with_token_ca_and_forwards(charts, tmp_path):
    values = {"piko": {"connectUrl": "https://piko.piko.svc:8001",
                       "endpoints": ["app=8080"], "tcpEndpoints": ["db=5432,proxy-protocol=v2"],
                       "forwards": ["127.0.0.1:6000=cache"], "forwardUrl": "https://piko:8000",
                       "connections": 2,
                       "token": {"secretName": "piko-token"},
                       "forwardToken": {"secretName": "piko-client-token", "key": "jwt"},
                       "rootCA": {"secretName": "piko-ca"},
                       "clientCert": {"secretName": "piko-client-tls"},
                       "resources": {"limits": {"memory": "64Mi"}}}}
    out = template(charts / "examples" / "app", "-f", values_file(tmp_path, values)).stdout
    assert_valid(out)
    c, volumes = sidecar_of(docs(out))
    args = c["args"]
    for a in ("--connect.connections=2", "--tcp-endpoint=db=5432,proxy-protocol=v2",
              "--forward=127.0.0.1:6000=cache", "--forward.url=https://piko:8000",
              "--connect.token-file=/etc/piko-sidecar/token/token",
              "--forward.token-file=/etc/piko-sidecar/forward-token/jwt",
              "--connect.tls.root-cas=/etc/piko-sidecar/ca/ca.crt",
              "--connect.tls.cert=/etc/piko-sidecar/client/tls.crt",
              "--connect.tls.key=/etc/piko-sidecar/client/tls.key"):
        assert a in args, args
    assert sorted(v["name"] for v in volumes) == [
        "piko-sidecar-ca", "piko-sidecar-client", "piko-sidecar-forward-token",
        "piko-sidecar-token"]
    assert sorted(m["name"] for m in c["volumeMounts"]) == sorted(v["name"] for v in volumes)
    assert c["resources"] == {"limits": {"memory": "64Mi"}}


@pytest.mark.parametrize("args,message", [
    (["--set", "piko.endpont=x"], 'piko-sidecar: unknown value "endpont"'),
    (["--set", "piko.token.secretname=x"], 'piko-sidecar: unknown value "secretname" in token'),
    (["--set", "piko.connectUrl="], "piko-sidecar: connectUrl is empty"),
    (["--set", "piko.endpoints={bad}"], 'piko-sidecar: endpoint "bad": want NAME=ADDR'),
    (["--set", "piko.connections=65"], "piko-sidecar: connections must be between 1 and 64"),
    (["--set", "piko.rootCA.secretName=a", "--set", "piko.rootCA.configMapName=b"],
     "piko-sidecar: rootCA: give secretName or configMapName, not both"),
])
def test_bad_sidecar_values_are_refused(charts, args, message):
    p = template(charts / "examples" / "app", *args, ok=False)
    assert p.returncode != 0 and message in p.stderr, p.stderr


def test_plain_manifest_is_valid_and_matches_the_library(charts):
    """examples/plain-manifest.yaml is what the library renders for the values in its
    header: users without Helm get the same sidecar."""
    plain_text = (CHARTS / "piko-sidecar" / "examples" / "plain-manifest.yaml").read_text()
    assert_valid(plain_text)
    plain = sidecar_of(docs(plain_text))
    rendered = sidecar_of(docs(template(
        charts / "examples" / "app", "--set", "piko.connectUrl=https://piko.piko.svc:8001",
        "--set", "piko.token.secretName=piko-token",
        "--set", "piko.rootCA.configMapName=piko-ca").stdout))
    assert plain == rendered


# ---------------------------------------------------------------------------------------
# The rendered configuration runs


def lay_out(root, secrets):
    """Files as Kubernetes mounts them: {dir: {key: source path or text}}."""
    for d, files in secrets.items():
        (root / d).mkdir(parents=True, exist_ok=True)
        for key, src in files.items():
            dest = root / d / key
            if isinstance(src, Path):
                shutil.copy(src, dest)
            else:
                dest.write_text(src)


def server_from_render(piko, manifests, root, env_values, name="server"):
    """piko-server started as the StatefulSet's container would be: its command, args and
    env, the ConfigMap's server.yaml at the mount path (all under root), every port moved
    to a free loopback port."""
    cfg_map = by_kind(manifests, "ConfigMap")[0]
    sts = by_kind(manifests, "StatefulSet")[0]
    c = sts["spec"]["template"]["spec"]["containers"][0]
    cfg = yaml.safe_load(cfg_map["data"]["server.yaml"])
    ports = {}
    for port in ("proxy", "upstream", "admin", "cluster"):
        ports[port] = free_port()
        assert cfg[port]["bind_addr"] == ":%d" % {"proxy": 8000, "upstream": 8001,
                                                  "admin": 8002, "cluster": 8003}[port]
        cfg[port]["bind_addr"] = "127.0.0.1:%d" % ports[port]
    text = yaml.safe_dump(cfg).replace("/etc/piko/", str(root / "etc/piko") + "/")
    config_dir = root / "etc/piko/config"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "server.yaml").write_text(text)
    assert c["command"] == ["piko-server"]
    args = [a.replace("/etc/piko/", str(root / "etc/piko") + "/") for a in c["args"]]
    env = dict(os.environ)
    names = set()
    for e in c.get("env", []):
        names.add(e["name"])
        env[e["name"]] = env_values[e["name"]]
    assert names == set(env_values), names
    proc = ServerProc(name, [binary("piko-server")] + args, piko._log_path(name), ports,
                      env=env)
    piko.procs.append(proc)
    return proc.start()


def sidecar_from_render(piko, manifests, root, name="sidecar"):
    c, _ = sidecar_of(manifests)
    assert c["command"] == ["piko-sidecar"]
    admin = free_port()
    args = []
    for a in c["args"]:
        if a == "--admin.bind-addr=:5000":
            a = "--admin.bind-addr=127.0.0.1:%d" % admin
        args.append(a.replace("/etc/piko-sidecar/", str(root / "etc/piko-sidecar") + "/"))
    proc = SidecarProc(name, [binary("piko-sidecar")] + args, piko._log_path(name), admin, {})
    piko.procs.append(proc)
    return proc.start()


def wait_https_ready(proc, ctx, timeout=15.0):
    def ready():
        assert proc.running(), proc.log_tail()
        conn = http.client.HTTPSConnection("127.0.0.1", proc.ports["admin"], context=ctx,
                                           timeout=2 * SLOW)
        try:
            conn.request("GET", "/ready")
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()
    poll(ready, timeout * SLOW, message="/ready 200 over TLS on the admin port")


def https_get(port, path, ctx, headers=None):
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10 * SLOW)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@pytest.mark.deadline(120)
def test_default_render_runs_and_routes_through_the_rendered_sidecar(piko, charts, tmp_path):
    """Default values (3 replicas: a cluster secret and the headless Service's SRV record,
    which does not resolve here) and the example app pointed at that server."""
    m = docs(template(charts / "piko").stdout)
    srv = server_from_render(piko, m, tmp_path / "server",
                             {"PIKO_CLUSTER_SECRET": "from-the-secret-0123456789"})
    srv.wait_ready()
    svc = piko.service()
    app = docs(template(charts / "examples" / "app",
                        "--set", "piko.connectUrl=http://127.0.0.1:%d" % srv.upstream_port,
                        "--set", "piko.endpoints={app=%s}" % svc.addr).stdout)
    sc = sidecar_from_render(piko, app, tmp_path / "app")
    sc.wait_ready()
    piko.wait_routable(srv, "app")
    status, body = http_get_endpoint(srv.proxy_port, "app")
    assert status == 200, body


def http_get_endpoint(port, endpoint, path="/echo"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10 * SLOW)
    try:
        conn.request("GET", path, headers={"x-piko-endpoint": endpoint})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    from test_40_tls import Certs
    return Certs(tmp_path_factory.mktemp("chart-certs"))


@pytest.mark.deadline(120)
def test_tls_and_auth_render_runs_and_routes(piko, charts, keys, certs, tmp_path):
    """TLS on every port and a token on the proxy, upstream and admin ports, from the
    chart's values; the Secrets laid out as Kubernetes mounts them."""
    values = server_values(keys)
    root = tmp_path / "server"
    tls = {"tls.crt": Path(certs["srv.pem"]), "tls.key": Path(certs["srv.key"]),
           "ca.crt": Path(certs["ca.pem"])}
    lay_out(root, {"etc/piko/tls/%s" % p: tls for p in ("proxy", "upstream", "admin",
                                                          "cluster")})
    m = docs(template(charts / "piko", "-f", values_file(tmp_path, values)).stdout)
    hmac = "an-hmac-secret-of-at-least-32-bytes!"
    srv = server_from_render(piko, m, root, {"PIKO_CLUSTER_SECRET": values["cluster"]["secret"],
                                             "PIKO_UPSTREAM_HMAC_SECRET": hmac})
    ctx = ssl.create_default_context(cafile=certs["ca.pem"])
    wait_https_ready(srv, ctx)
    # The admin port wants an ES256 token for /metrics (what the ServiceMonitor sends).
    assert https_get(srv.ports["admin"], "/metrics", ctx)[0] == 401
    admin_token = keys["ec"].sign(tokens.claims())
    status, body = https_get(srv.ports["admin"], "/metrics", ctx,
                             {"authorization": "Bearer " + admin_token})
    assert status == 200 and b"piko_" in body, body[:200]

    # The sidecar, rendered by the library with a token Secret and a CA ConfigMap.
    sc_root = tmp_path / "app"
    lay_out(sc_root, {
        "etc/piko-sidecar/token": {"token": tokens.hs256(hmac, tokens.claims(
            endpoints=["app"], aud="piko"))},
        "etc/piko-sidecar/ca": {"ca.crt": Path(certs["ca.pem"])}})
    svc = piko.service()
    app = docs(template(charts / "examples" / "app",
                        "--set", "piko.connectUrl=https://localhost:%d" % srv.upstream_port,
                        "--set", "piko.endpoints={app=%s}" % svc.addr,
                        "--set", "piko.token.secretName=piko-token",
                        "--set", "piko.rootCA.configMapName=piko-ca").stdout)
    sc = sidecar_from_render(piko, app, sc_root)
    sc.wait_ready()
    # A client of the proxy port: TLS and an RS256 token with the issuer the chart set.
    client_token = keys["rsa"].sign(tokens.claims(endpoints=["app"], iss="e2e"))
    headers = {"x-piko-endpoint": "app", "x-piko-authorization": "Bearer " + client_token}

    def routed():
        status, _ = https_get(srv.proxy_port, "/echo", ctx, headers)
        return status == 200
    poll(routed, 10 * SLOW, message="a request through the proxy port over TLS")
    assert https_get(srv.proxy_port, "/echo", ctx, {"x-piko-endpoint": "app"})[0] == 401
