# Container image of piko-server and piko-sidecar: `make image` (docker build -t piko:VERSION .).
# The entrypoint is piko-server; run the sidecar by overriding it:
#   docker run --rm -p 8000:8000 -p 8001:8001 piko:0.1.0
#   docker run --rm --entrypoint piko-sidecar piko:0.1.0 --connect.url http://piko:8001 ...
# (in Kubernetes: `command: [piko-sidecar]`).

# Build stage: the same packages and build type as `make build`.
FROM debian:bookworm-slim AS build
WORKDIR /src
COPY scripts/install-deps.sh scripts/
RUN scripts/install-deps.sh build && rm -rf /var/lib/apt/lists/*
COPY . .
# --strip-debug drops the DWARF but keeps the symbol table, so backtraces still name
# functions; the unstripped binaries stay in this stage (docker build --target build).
RUN rm -rf build \
 && cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
 && cmake --build build --target piko-server piko-sidecar \
 && mkdir -p /out \
 && strip --strip-debug -o /out/piko-server build/bin/piko-server \
 && strip --strip-debug -o /out/piko-sidecar build/bin/piko-sidecar

# Runtime stage: the shared libraries the binaries load, from the one list that
# scripts/check-runtime-packages.py checks against the built binaries in `make test`.
FROM debian:bookworm-slim
COPY scripts/runtime-packages.txt /tmp/runtime-packages.txt
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
      $(sed -e 's/#.*//' /tmp/runtime-packages.txt) \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt \
 && groupadd --system --gid 65532 piko \
 && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin piko
COPY --from=build /out/piko-server /out/piko-sidecar /usr/local/bin/
USER 65532:65532
# proxy, upstream (sidecar tunnels), admin (health, metrics, status), cluster
EXPOSE 8000 8001 8002 8003
ENTRYPOINT ["piko-server"]
