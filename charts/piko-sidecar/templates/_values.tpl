{{/*
Defaults of the values given to the piko-sidecar templates. Every key the caller sets
must be one of these (a typo fails the render); nested maps are merged key by key.
*/}}
{{- define "piko-sidecar.defaults" -}}
image:
  repository: piko
  # The piko version this library was written for (its appVersion).
  tag: "0.1.0"
  pullPolicy: IfNotPresent
command:
  - piko-sidecar
# Container name (must be unique in the pod).
name: piko-sidecar
# The piko-server upstream URL (or a comma list), e.g. http://piko.piko.svc:8001.
connectUrl: ""
# Tunnels kept per endpoint (connect.connections), 1-64.
connections: 1
# HTTP endpoints, NAME=ADDR (ADDR: a port of the pod, host:port or http://host:port).
endpoints: []
# TCP endpoints, NAME=ADDR[,proxy-protocol=v1|v2].
tcpEndpoints: []
# --forward LOCAL_ADDR=ENDPOINT: listen in the pod, tunnel each connection to a TCP
# endpoint through forwardUrl (the server's proxy port).
forwards: []
forwardUrl: ""
# Bearer token of tunnel handshakes (the server's auth.upstream): a Secret mounted into
# the container, read again at every dial (--connect.token-file).
token:
  secretName: ""
  key: token
# Bearer token of --forward connections (the server's auth.proxy), the same way.
forwardToken:
  secretName: ""
  key: token
# https:// connect URLs: the CA certificates the server is verified against, from a
# Secret or a ConfigMap (one of them); empty: the image's system roots.
rootCA:
  secretName: ""
  configMapName: ""
  key: ca.crt
# Client certificate for servers that require one (upstream.tls.client_cas): a Secret.
clientCert:
  secretName: ""
  certKey: tls.crt
  keyKey: tls.key
# Admin port: GET /health (liveness) and GET /ready (readiness: every endpoint has a
# tunnel). It listens on every address of the pod so that the kubelet can probe it.
adminPort: 5000
logLevel: info
# Time allowed for in-flight streams on SIGTERM (keep it below the pod's
# terminationGracePeriodSeconds).
gracePeriod: 25s
extraArgs: []
env: []
resources: {}
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  readOnlyRootFilesystem: true
  allowPrivilegeEscalation: false
  capabilities:
    drop:
      - ALL
  seccompProfile:
    type: RuntimeDefault
livenessProbe:
  httpGet:
    path: /health
    port: piko-admin
  periodSeconds: 10
  timeoutSeconds: 2
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /ready
    port: piko-admin
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 2
{{- end }}
