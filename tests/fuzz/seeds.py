#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into tests/fuzz/corpus/<target>/.

The committed corpus is this script's output; edit the seeds here and run it again
(python3 tests/fuzz/seeds.py). Files are named after what they exercise. Inputs that the
fuzzer finds interesting go to build-fuzz/, never here (docs/fuzzing.md)."""
import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

# fuzz_h1_request and fuzz_handshake: the first byte chooses how the rest is split into
# reads (0: one read; n: pieces of 1..n bytes), the rest is what the client sends.
WHOLE, BYTES, SMALL, MEDIUM = b"\x00", b"\x01", b"\x07", b"\x40"

H = "GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n"

H1 = {
    "get": H,
    "get-bytewise": (BYTES, H),
    "get-x-piko-endpoint-http10": "GET /a?b=c HTTP/1.0\r\nx-piko-endpoint: app\r\n\r\n",
    "get-x-endpoint-id": "GET /x HTTP/1.1\r\nHost: localhost:8000\r\nX-Endpoint-Id: app\r\n\r\n",
    "get-no-host": "GET / HTTP/1.1\r\n\r\n",
    "get-host-ipv4": "GET / HTTP/1.1\r\nHost: 10.0.0.1:8000\r\n\r\n",
    "get-host-ipv6": "GET / HTTP/1.1\r\nHost: [::1]:8000\r\nx-piko-endpoint: app\r\n\r\n",
    "get-absolute-form": "GET http://app.example.com:8080/p/q?x=1#f HTTP/1.1\r\nHost: other\r\n\r\n",
    "get-absolute-form-no-path": "GET http://app.example.com?x HTTP/1.1\r\n\r\n",
    "get-absolute-userinfo": "GET http://u:p@app.example.com/ HTTP/1.1\r\n\r\n",
    "options-asterisk": "OPTIONS * HTTP/1.1\r\nHost: app.example.com\r\n\r\n",
    "head": "HEAD /h HTTP/1.1\r\nHost: app.example.com\r\n\r\n",
    "post-content-length": (SMALL, "POST /up HTTP/1.1\r\nHost: app.example.com\r\n"
                            "Content-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world"),
    "post-content-length-zero": "POST / HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 0\r\n\r\n",
    "post-chunked": (SMALL, "POST /c HTTP/1.1\r\nHost: app.example.com\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"),
    "post-chunked-trailers": ("POST /t HTTP/1.1\r\nHost: app.example.com\r\nTE: trailers\r\n"
                              "Trailer: x-sum\r\nTransfer-Encoding: chunked\r\n\r\n"
                              "3\r\nabc\r\n0\r\nX-Sum: 42\r\nX-Other: a b\r\n\r\n"),
    "post-chunked-trailer-hop-by-hop": ("POST /t HTTP/1.1\r\nHost: app.example.com\r\n"
                                        "Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n"
                                        "Connection: close\r\nTransfer-Encoding: x\r\n\r\n"),
    "post-chunked-empty-trailers": ("POST / HTTP/1.1\r\nHost: app.example.com\r\n"
                                    "Transfer-Encoding: chunked\r\n\r\n0\r\nX: 1\r\n\r\n"),
    "post-chunk-size-overflow": ("POST / HTTP/1.1\r\nHost: app.example.com\r\n"
                                 "Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nx\r\n"),
    "post-chunk-bare-lf": ("POST / HTTP/1.1\nHost: app.example.com\nTransfer-Encoding: chunked\n\n"
                           "2\nab\n0\n\n"),
    "smuggle-cl-te": ("POST / HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 4\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\n\r\n"),
    "smuggle-te-cl": ("POST / HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: chunked\r\n"
                      "Content-Length: 3\r\n\r\n0\r\n\r\n"),
    "smuggle-te-gzip-chunked": ("POST / HTTP/1.1\r\nHost: app.example.com\r\n"
                                "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
    "smuggle-te-chunked-gzip": ("POST / HTTP/1.1\r\nHost: app.example.com\r\n"
                                "Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
    "smuggle-te-twice": ("POST / HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: chunked\r\n"
                         "Transfer-Encoding: identity\r\n\r\n0\r\n\r\n"),
    "smuggle-te-space-before-colon": ("POST / HTTP/1.1\r\nHost: app.example.com\r\n"
                                      "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
    "smuggle-te-obs-fold": ("POST / HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding:\r\n"
                            " chunked\r\n\r\n0\r\n\r\n"),
    "smuggle-cl-twice-same": ("POST / HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 2\r\n"
                              "Content-Length: 2\r\n\r\nab"),
    "smuggle-cl-twice-different": ("POST / HTTP/1.1\r\nHost: app.example.com\r\n"
                                   "Content-Length: 2\r\nContent-Length: 3\r\n\r\nabc"),
    "smuggle-cl-list": "POST / HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 2, 2\r\n\r\nab",
    "smuggle-cl-plus": "POST / HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: +2\r\n\r\nab",
    "smuggle-cl-huge": ("POST / HTTP/1.1\r\nHost: app.example.com\r\n"
                        "Content-Length: 18446744073709551616\r\n\r\n"),
    "obs-fold": "GET / HTTP/1.1\r\nHost: app.example.com\r\nX-Folded: a\r\n  b\r\n\tc\r\n\r\n",
    "bare-cr-in-value": "GET / HTTP/1.1\r\nHost: app.example.com\r\nX-A: a\rb\r\n\r\n",
    "bare-cr-line-end": "GET / HTTP/1.1\rHost: app.example.com\r\r\n",
    "bare-lf": "GET / HTTP/1.1\nHost: app.example.com\n\n",
    "nul-in-value": "GET / HTTP/1.1\r\nHost: app.example.com\r\nX-A: a\x00b\r\n\r\n",
    "high-bytes-in-value": "GET / HTTP/1.1\r\nHost: app.example.com\r\nX-A: caf\xc3\xa9 \xff\r\n\r\n",
    "ctl-in-value": "GET / HTTP/1.1\r\nHost: app.example.com\r\nX-A: a\x01\x7fb\r\n\r\n",
    "whitespace-around-value": "GET / HTTP/1.1\r\nHost:  app.example.com \t\r\nX-A:\t x \r\n\r\n",
    "empty-value": "GET / HTTP/1.1\r\nHost: app.example.com\r\nX-Empty:\r\nX-Sp: \r\n\r\n",
    "bad-field-name": "GET / HTTP/1.1\r\nHost: app.example.com\r\nBad Name: x\r\n\r\n",
    "bad-field-name-colon-space": "GET / HTTP/1.1\r\nHost: app.example.com\r\n: x\r\n\r\n",
    "field-name-chars": "GET / HTTP/1.1\r\nHost: app.example.com\r\nX!#$%&'*+-.^_`|~9: v\r\n\r\n",
    "upper-case-names": "GET / HTTP/1.1\r\nHOST: app.example.com\r\nX-UPPER-CASE: V\r\n\r\n",
    "connection-named-fields": ("GET / HTTP/1.1\r\nHost: app.example.com\r\n"
                                "Connection: keep-alive, X-Hop, TE\r\nX-Hop: 1\r\nX-Keep: 2\r\n"
                                "Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n"
                                "TE: trailers, deflate\r\nConnection: x-second\r\n"
                                "X-Second: 3\r\n\r\n"),
    "connection-close": "GET / HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    "te-gzip": "GET / HTTP/1.1\r\nHost: app.example.com\r\nTE: gzip\r\n\r\n",
    "expect-continue": ("POST / HTTP/1.1\r\nHost: app.example.com\r\nExpect: 100-continue\r\n"
                        "Content-Length: 1\r\n\r\nx"),
    "spoofed-piko-fields": ("GET / HTTP/1.1\r\nHost: app.example.com\r\n"
                            "Piko-Client-Addr: 1.2.3.4:5\r\nPiko-Endpoint: other\r\n"
                            "Piko-Forwarded-By: node\r\nX-Piko-Authorization: Bearer s\r\n"
                            "X-Forwarded-For: 10.1.1.1\r\nX-Forwarded-Host: evil\r\n"
                            "X-Forwarded-Proto: https\r\n\r\n"),
    "websocket-upgrade": (MEDIUM, "GET /ws HTTP/1.1\r\nHost: app.example.com\r\n"
                          "Connection: Upgrade\r\nUpgrade: websocket\r\n"
                          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                          "Sec-WebSocket-Version: 13\r\n\r\n\x81\x05hello"),
    "upgrade-token-list": ("GET / HTTP/1.1\r\nHost: app.example.com\r\nConnection: upgrade\r\n"
                           "Upgrade: h2c, websocket/13\r\n\r\n"),
    "upgrade-post-with-body": ("POST / HTTP/1.1\r\nHost: app.example.com\r\nConnection: upgrade\r\n"
                               "Upgrade: websocket\r\nContent-Length: 2\r\n\r\nab"
                               "GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n"),
    "upgrade-post-no-body": ("POST / HTTP/1.1\r\nHost: app.example.com\r\nConnection: upgrade\r\n"
                             "Upgrade: websocket\r\n\r\n"),
    "tcp-tunnel": ("GET /_piko/v1/tcp/db HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n"
                   "Upgrade: piko-tcp\r\n\r\nraw bytes"),
    "tcp-tunnel-no-upgrade": "GET /_piko/v1/tcp/db HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "tcp-tunnel-bad-id": ("GET /_piko/v1/tcp/a/b HTTP/1.1\r\nConnection: Upgrade\r\n"
                          "Upgrade: piko-tcp\r\n\r\n"),
    "connect": "CONNECT app.example.com:443 HTTP/1.1\r\nHost: app.example.com:443\r\n\r\n",
    "pipelined-gets": (SMALL, H + "GET /2 HTTP/1.1\r\nHost: app.example.com\r\n\r\n" +
                       "GET /3 HTTP/1.1\r\nx-piko-endpoint: b\r\nConnection: close\r\n\r\n"),
    "pipelined-post-get": ("POST / HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 3\r\n\r\n"
                           "abcGET /after HTTP/1.1\r\nHost: app.example.com\r\n\r\n"),
    "pipelined-chunked-get": ("POST / HTTP/1.1\r\nHost: app.example.com\r\n"
                              "Transfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n"
                              "\r\nGET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n"),
    "pipelined-http10": "GET / HTTP/1.0\r\nHost: app.example.com\r\n\r\nGET / HTTP/1.0\r\n\r\n",
    "http10-keep-alive": ("GET / HTTP/1.0\r\nHost: app.example.com\r\nConnection: keep-alive\r\n\r\n"
                          "GET / HTTP/1.0\r\nHost: app.example.com\r\n\r\n"),
    "http10-close-delimited": "POST / HTTP/1.0\r\nHost: app.example.com\r\n\r\nbody until close",
    "leading-empty-lines": "\r\n\r\n\nGET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n",
    "version-http2": "GET / HTTP/2.0\r\nHost: app.example.com\r\n\r\n",
    "version-http12": "GET / HTTP/1.2\r\nHost: app.example.com\r\n\r\n",
    "version-lowercase": "GET / http/1.1\r\nHost: app.example.com\r\n\r\n",
    "h2-preface": "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "unknown-method": "BREW /pot HTTP/1.1\r\nHost: app.example.com\r\n\r\n",
    "webdav-method": "PROPFIND /d HTTP/1.1\r\nHost: app.example.com\r\nDepth: 1\r\n\r\n",
    "space-in-target": "GET /a b HTTP/1.1\r\nHost: app.example.com\r\n\r\n",
    "host-odd-chars": "GET / HTTP/1.1\r\nHost: app.example.com\"<>{}\r\nx-piko-endpoint: app\r\n\r\n",
    "host-empty": "GET / HTTP/1.1\r\nHost:\r\nx-piko-endpoint: app\r\n\r\n",
    "host-twice": "GET / HTTP/1.1\r\nHost: a.example.com\r\nHost: b.example.com\r\n\r\n",
    "endpoint-invalid": "GET / HTTP/1.1\r\nx-piko-endpoint: a/b\r\n\r\n",
    "long-header": "GET / HTTP/1.1\r\nHost: app.example.com\r\nX-Long: " + "a" * 3000 + "\r\n\r\n",
    "many-headers": "GET / HTTP/1.1\r\nHost: app.example.com\r\n" +
                    "".join("X-H%d: %d\r\n" % (i, i) for i in range(150)) + "\r\n",
    "incomplete-head": "GET / HTTP/1.1\r\nHost: app.exa",
    "incomplete-body": "POST / HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 10\r\n\r\nabc",
}

HS = ("GET /piko/v1/upstream/app HTTP/1.1\r\nHost: piko:8001\r\nConnection: Upgrade\r\n"
      "Upgrade: piko-reverse-h2\r\nPiko-Sidecar-Id: sc-1\r\n\r\n")
PREFACE = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"

HANDSHAKE = {
    "accept": HS,
    "accept-bytewise": (BYTES, HS),
    "accept-with-h2-preface": (SMALL, HS + PREFACE),
    "accept-endpoint-chars": HS.replace("/app ", "/My_App-1.v2 "),
    "accept-endpoint-128": HS.replace("/app ", "/" + "e" * 128 + " "),
    "accept-upgrade-list": HS.replace("Upgrade: piko-reverse-h2", "Upgrade: h2c, piko-reverse-h2"),
    "accept-http10": HS.replace("HTTP/1.1", "HTTP/1.0"),
    "endpoint-129": HS.replace("/app ", "/" + "e" * 129 + " "),
    "endpoint-empty": HS.replace("/app ", "/ "),
    "endpoint-slash": HS.replace("/app ", "/a/b "),
    "endpoint-query": HS.replace("/app ", "/app?x=1 "),
    "endpoint-percent": HS.replace("/app ", "/a%2Fb "),
    "wrong-prefix": HS.replace("/piko/v1/upstream/", "/piko/v2/upstream/"),
    "absolute-form": HS.replace("GET /piko", "GET http://piko:8001/piko"),
    "post": HS.replace("GET ", "POST "),
    "no-upgrade": "GET /piko/v1/upstream/app HTTP/1.1\r\nHost: piko\r\n\r\n",
    "wrong-upgrade-token": HS.replace("piko-reverse-h2", "websocket"),
    "upgrade-with-body": HS.replace("\r\n\r\n", "\r\nContent-Length: 3\r\n\r\nabc"),
    "upgrade-chunked": HS.replace("\r\n\r\n", "\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    "sidecar-id-odd": HS.replace("sc-1", "sc 1 \x7f\xff"),
    "no-sidecar-id": HS.replace("Piko-Sidecar-Id: sc-1\r\n", ""),
    "malformed": "GET /piko/v1/upstream/app HTTP/1.1\r\nBad Header\r\n\r\n",
    "connect": "CONNECT piko:8001 HTTP/1.1\r\nHost: piko:8001\r\n\r\n",
    "incomplete": HS[:40],
}

SERVER_YAML = {
    "full": """\
proxy:
  bind_addr: ":8000"
  timeout: 30s
  max_header_bytes: 64KiB
  head_timeout: 10s
  idle_timeout: 5m
  max_h2_streams: 256
  raw_idle_timeout: 0
upstream:
  bind_addr: ":8001"
  heartbeat_interval: 10s
  heartbeat_timeout: 10s
  stream_window: 1MiB
  connection_window: 16MiB
  rebalance:
    threshold: "0.2"
    interval: 1s
admin:
  bind_addr: ":8002"
cluster:
  bind_addr: ":8003"
  node_id: node-1
  join: srv:_cluster._tcp.piko.default.svc.cluster.local,10.0.0.5:8003,dns:piko:8003
  resolve_interval: 5s
  peer_timeout: 5s
  secret: s3cr3t
dns:
  servers: 127.0.0.1:53,[::1]:53
log:
  level: debug
grace_period: 30s
drain_delay: 0s
""",
    "dotted-keys": "proxy.bind-addr: 127.0.0.1:9000\nupstream.heartbeat_interval: 1m30s\n"
                   "cluster.node-id: n.2\n",
    "env-vars": "proxy:\n  bind_addr: ${PIKO_FUZZ_ADDR}\n  timeout: ${PIKO_FUZZ_DURATION:5s}\n"
                "cluster:\n  secret: ${PIKO_FUZZ_EMPTY:fallback}$$literal\n"
                "  node_id: ${PIKO_FUZZ_UNSET:node-x}\n",
    "env-unset": "proxy:\n  bind_addr: ${PIKO_FUZZ_UNSET}\n",
    "env-unterminated": "proxy:\n  bind_addr: ${PIKO_FUZZ_ADDR\n",
    "env-bad-name": "proxy:\n  bind_addr: ${1BAD}\n",
    "env-nested": "log:\n  level: ${PIKO_FUZZ_${X}}\n",
    "null-values": "proxy:\n  bind_addr: ~\nadmin:\ncluster:\n  secret: null\n",
    "flow-style": "{proxy: {bind_addr: ':1', timeout: 1s}, log: {level: warn}}\n",
    "anchors-aliases": "a: &x 1\nproxy:\n  timeout: *x\n",
    "alias-section": "base: &b {bind_addr: ':1'}\nproxy: *b\nadmin: *b\n",
    "merge-key": "proxy:\n  <<: {bind_addr: ':1'}\n",
    "duplicate-key": "proxy:\n  timeout: 1s\n  timeout: 2s\n",
    "duplicate-dash-underscore": "proxy:\n  bind_addr: ':1'\n  bind-addr: ':2'\n",
    "duplicate-dotted-nested": "proxy.timeout: 1s\nproxy:\n  timeout: 2s\n",
    "unknown-key": "proxy:\n  nope: 1\n",
    "bad-duration": "proxy:\n  timeout: soon\n",
    "bad-durations": "proxy:\n  timeout: -1s\n  head_timeout: 1.5.5s\n",
    "duration-overflow": "proxy:\n  timeout: 99999999999999999999h\n",
    "bad-size": "proxy:\n  max_header_bytes: 1.5MiB\n",
    "size-overflow": "upstream:\n  stream_window: 99999999999999TiB\n",
    "bad-int": "proxy:\n  max_h2_streams: 12abc\n",
    "int-overflow": "proxy:\n  max_h2_streams: 9223372036854775808\n",
    "section-scalar": "proxy: 5\n",
    "option-mapping": "proxy:\n  timeout: {a: 1}\n",
    "option-sequence": "proxy:\n  timeout: [1s, 2s]\n",
    "top-sequence": "- a\n- b\n",
    "top-scalar": "hello\n",
    "empty": "",
    "comment-only": "# nothing\n",
    "two-documents": "proxy:\n  timeout: 1s\n---\nproxy:\n  timeout: 2s\n",
    "trailing-document-marker": "proxy:\n  timeout: 1s\n---\n",
    "syntax-error": "proxy:\n  timeout: [1s\n",
    "tab-indent": "proxy:\n\ttimeout: 1s\n",
    "bad-utf8": "proxy:\n  bind_addr: \"\xff\xfe\"\n",
    "nul-in-value": "proxy:\n  bind_addr: \"a\\0b\"\n",
    "nul-in-key": "\"proxy\\0x\": 1\n",
    "non-scalar-key": "? [a, b]\n: 1\n",
    "quoted-styles": "proxy:\n  bind_addr: '127.0.0.1:1'\nlog:\n  level: |\n    info\n",
    "check-fails": "proxy:\n  timeout: 0s\n  max_header_bytes: 1B\n",
    "bad-join": "cluster:\n  join: \"srv:,dns:x:99999,::\"\n",
    "bad-node-id": "cluster:\n  node_id: a/b\n",
    "threshold": "upstream:\n  rebalance:\n    threshold: 1e3\n",
}

SIDECAR_YAML = {
    "full": """\
connect:
  url: https://piko.example.com:8001
  timeout: 10s
  heartbeat_interval: 10s
  heartbeat_timeout: 10s
  max_streams: 1024
  stream_window: 1MiB
  connection_window: 16MiB
endpoint:
  - app=8080
  - web=http://127.0.0.1:3000/
  - api=localhost:9000
tcp_endpoint:
  - db=5432,proxy-protocol=v2
  - ssh=127.0.0.1:22,proxy-protocol=v1
forward:
  - 127.0.0.1:15432=db
forward.url: http://piko.example.com:8000
local:
  connect_timeout: 5s
  max_idle: 64
admin:
  bind_addr: 127.0.0.1:5000
log:
  level: info
grace_period: 30s
dns:
  servers: 1.1.1.1
""",
    "endpoint-scalar": "endpoint: app=8080\n",
    "endpoint-env": "endpoint:\n  - ${PIKO_FUZZ_EP:app=8080}\n  - b=${PIKO_FUZZ_PORT:9}\n",
    "endpoint-empty-list": "endpoint: []\n",
    "endpoint-null": "endpoint: ~\n",
    "endpoint-nested-list": "endpoint:\n  - [a=1]\n",
    "endpoint-mapping": "endpoint:\n  app: 8080\n",
    "endpoint-bad": "endpoint:\n  - =8080\n  - a/b=1\n  - app\n",
    "endpoint-option-on-http": "endpoint:\n  - app=8080,proxy-protocol=v1\n",
    "tcp-endpoint-bad-option": "tcp_endpoint:\n  - db=5432,proxy-protocol=v3\n",
    "forward-bad": "endpoint: [a=1]\nforward:\n  - nonsense\n",
    "bad-url": "endpoint: [a=1]\nconnect:\n  url: ftp://x\n",
    "max-streams-zero": "endpoint: [a=1]\nconnect:\n  max_streams: 0\n",
    "long-address": "endpoint:\n  - a=" + "9" * 600 + "\n",
}


def state(**kw):
    d = {"node_id": "node-1", "incarnation": "0123456789abcdef", "version": 7,
         "proxy_addr": "10.0.0.1:8000", "admin_addr": "10.0.0.1:8002",
         "cluster_addr": "10.0.0.1:8003", "draining": False,
         "endpoints": {"app": 2, "db": 1}}
    for k, v in kw.items():
        if v is DEL:
            d.pop(k, None)
        else:
            d[k] = v
    return json.dumps(d)


DEL = object()

STATE = {
    "full": state(),
    "minimal": '{"node_id":"n","incarnation":"i","version":0}',
    "no-endpoints": state(endpoints=DEL),
    "empty-endpoints": state(endpoints={}),
    "zero-count": state(endpoints={"a": 0, "b": 3}),
    "many-endpoints": state(endpoints={"ep-%03d" % i: i for i in range(60)}),
    "max-count": state(endpoints={"a": 2147483647}),
    "count-over": state(endpoints={"a": 2147483648}),
    "count-negative": state(endpoints={"a": -1}),
    "count-float": state(endpoints={"a": 1.5}),
    "count-string": state(endpoints={"a": "1"}),
    "endpoint-id-invalid": state(endpoints={"a/b": 1}),
    "endpoint-id-long": state(endpoints={"e" * 129: 1}),
    "endpoints-array": state(endpoints=[1, 2]),
    "draining": state(draining=True),
    "draining-string": state(draining="yes"),
    "nulls": state(proxy_addr=None, admin_addr=None, cluster_addr=None),
    "missing-node-id": state(node_id=DEL),
    "node-id-invalid": state(node_id="node 1"),
    "node-id-number": state(node_id=5),
    "incarnation-empty": state(incarnation=""),
    "incarnation-65": state(incarnation="i" * 65),
    "version-max": state(version=9223372036854775807),
    "version-u64": state(version=18446744073709551615),
    "version-negative": state(version=-1),
    "version-float": state(version=1.0),
    "version-string": state(version="7"),
    "unknown-fields": state(extra={"nested": [1, 2, {"x": None}]}),
    "unicode-escapes": state(proxy_addr="\u00e9\u2603\ud83d\ude00", incarnation="\u0001x"),
    "nul-escape": '{"node_id":"n\\u0000x","incarnation":"i","version":1}',
    "nul-escape-key": '{"node_id":"n","incarnation":"i","version":1,"endpoints":{"a\\u0000b":1,"a":2}}',
    "duplicate-keys": '{"node_id":"a","node_id":"b","incarnation":"i","version":1,"version":2}',
    "duplicate-endpoints": '{"node_id":"n","incarnation":"i","version":1,"endpoints":{"a":1,"a":2}}',
    "trailing-space": state() + " \n\t\r",
    "trailing-garbage": state() + "x",
    "two-objects": state() + state(),
    "truncated": state()[:50],
    "deep-nesting": '{"node_id":"n","incarnation":"i","version":1,"x":' + "[" * 10 + "]" * 10 + "}",
    "not-object": "[1,2,3]",
    "string": '"node"',
    "empty": "",
    "comments": '/* c */{"node_id":"n","incarnation":"i","version":1} // x',
    "single-quotes": "{'node_id':'n','incarnation':'i','version':1}",
    "nan": '{"node_id":"n","incarnation":"i","version":NaN}',
    "bad-utf8": b'{"node_id":"n","incarnation":"\xff\xfe","version":1}',
}


def addr_pair(src, dst):
    return src.encode() + b"\x00" + dst.encode()


PROXYPROTO = {
    "v4": addr_pair("192.0.2.1:40000", "10.0.0.2:8080"),
    "v6": addr_pair("[2001:db8::1]:443", "[::1]:8080"),
    "v6-full": addr_pair("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                         "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"),
    "mapped": addr_pair("[::ffff:192.0.2.1]:1", "10.0.0.2:2"),
    "mixed": addr_pair("[2001:db8::1]:1", "10.0.0.2:2"),
    "port-zero": addr_pair("0.0.0.0:0", "255.255.255.255:65535"),
    "port-over": addr_pair("1.2.3.4:65536", "1.2.3.4:1"),
    "port-sign": addr_pair("1.2.3.4:+1", "1.2.3.4: 1"),
    "port-long": addr_pair("1.2.3.4:000001", "1.2.3.4:00080"),
    "no-port": addr_pair("1.2.3.4", "[::1]"),
    "unbracketed-v6": addr_pair("::1:80", "2001:db8::1:443"),
    "zone-id": addr_pair("[fe80::1%eth0]:80", "[fe80::1]:80"),
    "v4-in-brackets": addr_pair("[1.2.3.4]:80", "[::1.2.3.4]:80"),
    "octal-v4": addr_pair("010.0.0.1:80", "1.2.3:80"),
    "hostname": addr_pair("localhost:80", "example.com:443"),
    "long": addr_pair("[" + "0" * 70 + "::1]:80", "1" * 80),
    "empty": addr_pair("", ""),
    "one-only": b"192.0.2.1:40000",
}


def write(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for name, v in seeds.items():
        if isinstance(v, tuple):
            prefix, v = v
        else:
            prefix = None
        b = v if isinstance(v, bytes) else v.encode("latin-1")
        if prefix is not None:
            b = prefix + b
        with open(os.path.join(d, name), "wb") as f:
            f.write(b)


def split_seeds(seeds):
    """HTTP seeds: the first byte is the read pattern (one read unless the seed says)."""
    return {k: v if isinstance(v, tuple) else (WHOLE, v) for k, v in seeds.items()}


def main():
    write("fuzz_h1_request", split_seeds(H1))
    write("fuzz_handshake", split_seeds(HANDSHAKE))
    # fuzz_config: the first byte's low bit picks the table (0 server, 1 sidecar).
    cfg = {"server-" + k: (b"\x00", v) for k, v in SERVER_YAML.items()}
    cfg.update({"sidecar-" + k: (b"\x01", v) for k, v in SIDECAR_YAML.items()})
    cfg["server-with-flag-override"] = (b"\x02", SERVER_YAML["env-vars"])
    cfg["sidecar-with-flag-override"] = (b"\x03", SIDECAR_YAML["full"])
    write("fuzz_config", cfg)
    write("fuzz_cluster_state", STATE)
    write("fuzz_proxyproto", PROXYPROTO)


if __name__ == "__main__":
    main()
