#!/usr/bin/env bash
# Piko on a real Kubernetes cluster (kind), end to end:
#   1. builds the image from the repository's Dockerfile and loads it into a new kind cluster;
#   2. installs charts/piko (3 replicas) and charts/examples/app (an application whose pods
#      get the piko-sidecar container from the library chart charts/piko-sidecar);
#   3. sends requests through a port-forward to the proxy Service and checks the answers;
#   4. port-forwards a pod's admin port and runs `piko-server status nodes` through it
#      (three nodes, all active);
#   5. runs `kubectl rollout restart statefulset` while a load pod inside the cluster sends
#      requests to the proxy Service, and counts the failures (the run fails on any);
#   6. deletes the cluster (KEEP=1 keeps it).
#
# Needs docker (with a daemon), kind, kubectl and helm on PATH, and a built
# build/bin/piko-server for the status CLI (`make build`). It is not part of `make test`:
# CI machines have no container engine. Usage: e2e/kind/run.sh
#
# Environment: KIND_CLUSTER [piko-e2e]  IMAGE [piko:kind]  KEEP [0]
#              LOAD_SECONDS [120]  NAMESPACE [piko-e2e]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="${KIND_CLUSTER:-piko-e2e}"
IMAGE="${IMAGE:-piko:kind}"
NS="${NAMESPACE:-piko-e2e}"
LOAD_SECONDS="${LOAD_SECONDS:-120}"
KEEP="${KEEP:-0}"
REPO="${IMAGE%%:*}"
TAG="${IMAGE##*:}"
pids=()

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'kind e2e: FAILED: %s\n' "$*" >&2; exit 1; }

for tool in docker kind kubectl helm curl; do
    command -v "$tool" >/dev/null || die "$tool not found on PATH"
done
docker info >/dev/null 2>&1 || die "docker has no daemon to talk to"
[ -x "$ROOT/build/bin/piko-server" ] || die "build/bin/piko-server missing: run make build"

cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ "$KEEP" = "1" ]; then
        echo "kind e2e: cluster $CLUSTER kept (kind delete cluster --name $CLUSTER)"
    else
        kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

# A free local port for a port-forward.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# kubectl port-forward in the background; waits until the local port answers.
forward() { # forward TARGET LOCAL REMOTE
    kubectl -n "$NS" port-forward "$1" "$2:$3" >/dev/null 2>&1 &
    pids+=($!)
    for _ in $(seq 50); do
        curl -s -o /dev/null "http://127.0.0.1:$2/" && return 0
        sleep 0.2
    done
    die "port-forward to $1 did not come up"
}

step "Building $IMAGE"
docker build -t "$IMAGE" "$ROOT"

step "Creating kind cluster $CLUSTER"
kind create cluster --name "$CLUSTER" --wait 180s
kind load docker-image "$IMAGE" --name "$CLUSTER"
kubectl create namespace "$NS"

step "Installing charts/piko (3 replicas)"
helm install piko "$ROOT/charts/piko" -n "$NS" \
    --set image.repository="$REPO" --set image.tag="$TAG" --set image.pullPolicy=Never \
    --set replicaCount=3 --wait --timeout 5m
kubectl -n "$NS" rollout status statefulset/piko --timeout 5m

step "Installing charts/examples/app with the injected sidecar"
helm dependency build "$ROOT/charts/examples/app" >/dev/null
helm install app "$ROOT/charts/examples/app" -n "$NS" \
    --set piko.image.repository="$REPO" --set piko.image.tag="$TAG" \
    --set piko.image.pullPolicy=Never \
    --set piko.connectUrl="http://piko.$NS.svc:8001" --wait --timeout 5m
ENDPOINT="$(helm get values app -n "$NS" --all -o json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["piko"]["endpoints"][0].split("=")[0])')"

step "Requests through the proxy Service (endpoint $ENDPOINT)"
PROXY_PORT="$(free_port)"
forward svc/piko "$PROXY_PORT" 8000
ok=0
for i in $(seq 100); do
    code="$(curl -s -o /dev/null -w '%{http_code}' -H "x-piko-endpoint: $ENDPOINT" \
        "http://127.0.0.1:$PROXY_PORT/?n=$i")"
    [ "$code" = "200" ] && ok=$((ok + 1))
done
echo "$ok/100 answered 200"
[ "$ok" = "100" ] || die "only $ok of 100 requests answered 200"

step "piko-server status nodes through a port-forward to piko-0's admin port"
ADMIN_PORT="$(free_port)"
forward pod/piko-0 "$ADMIN_PORT" 8002
"$ROOT/build/bin/piko-server" status nodes --server.url "http://127.0.0.1:$ADMIN_PORT"
active="$("$ROOT/build/bin/piko-server" status nodes --output json \
    --server.url "http://127.0.0.1:$ADMIN_PORT" |
    python3 -c 'import json,sys; print(sum(n.get("status")=="active" for n in json.load(sys.stdin)))')"
[ "$active" = "3" ] || die "expected 3 active nodes, got $active"

step "Rolling restart under load (${LOAD_SECONDS}s of requests from inside the cluster)"
# The load runs in a pod: a port-forward follows one pod and dies with it.
kubectl -n "$NS" run piko-load --image=curlimages/curl:8.11.1 --restart=Never --command -- \
    sh -c "end=\$((\$(date +%s) + $LOAD_SECONDS)); ok=0; fail=0;
           while [ \$(date +%s) -lt \$end ]; do
             c=\$(curl -s -o /dev/null -m 10 -w '%{http_code}' -H 'x-piko-endpoint: $ENDPOINT' http://piko.$NS.svc:8000/);
             if [ \"\$c\" = 200 ]; then ok=\$((ok+1)); else fail=\$((fail+1)); echo \"failed: \$c\"; fi;
           done; echo \"ok=\$ok fail=\$fail\""
kubectl -n "$NS" wait --for=condition=Ready pod/piko-load --timeout 120s
sleep 5
kubectl -n "$NS" rollout restart statefulset/piko
kubectl -n "$NS" rollout status statefulset/piko --timeout 10m
kubectl -n "$NS" wait --for=jsonpath='{.status.phase}'=Succeeded pod/piko-load \
    --timeout "$((LOAD_SECONDS + 120))s"
tally="$(kubectl -n "$NS" logs piko-load | tail -1)"
echo "$tally"
case "$tally" in
    ok=*" fail=0") ;;
    *) kubectl -n "$NS" logs piko-load | grep failed | head -20; die "requests failed during the rolling restart: $tally" ;;
esac

step "All checks passed"
