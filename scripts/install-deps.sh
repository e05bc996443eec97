#!/usr/bin/env bash
# Installs the Debian packages Piko needs to build, test, benchmark and demo.
# Idempotent: only missing packages are installed. Uses sudo when not root.
set -euo pipefail

BUILD_PKGS=(build-essential cmake ninja-build pkg-config
    libnghttp2-dev libevent-dev libssl-dev libc-ares-dev libcurl4-openssl-dev
    libjson-c-dev libcunit1-dev libhttp-parser-dev libyaml-dev libcjose-dev libjansson-dev)
TEST_PKGS=(clang clang-format libclang-rt-14-dev curl nghttp2-client python3 python3-pytest procps dnsmasq-base openssl iproute2 iptables
    chromium fonts-dejavu-core debootstrap)
# gnuplot-nox draws the chart of bench/suite.sh (its pngcairo terminal; fonts-dejavu-core
# above gives it a font).
BENCH_PKGS=(wrk nginx-light iperf3 socat gnuplot-nox)

case "${1:-test}" in
    build) want=("${BUILD_PKGS[@]}") ;;
    test | demo) want=("${BUILD_PKGS[@]}" "${TEST_PKGS[@]}") ;;
    bench) want=("${BUILD_PKGS[@]}" "${TEST_PKGS[@]}" "${BENCH_PKGS[@]}") ;;
    *) echo "usage: $0 [build|test|demo|bench]" >&2; exit 2 ;;
esac

# Python packages the e2e tests import, for whichever python3 runs them (a pyenv or venv
# python does not see Debian's python3-* packages): pip when it can, else Debian's.
python_dep() { # MODULE PIP_NAME DEBIAN_PACKAGE
    python3 -c "import $1" 2>/dev/null && return 0
    echo "install-deps: installing $2 for $(command -v python3)"
    python3 -m pip install -q "$2" 2>/dev/null ||
        python3 -m pip install -q --break-system-packages "$2" 2>/dev/null ||
        want+=("$3")
}
python_deps() {
    python_dep prometheus_client prometheus-client python3-prometheus-client
    python_dep yaml PyYAML python3-yaml # the chart checks read helm's output
}
case "${1:-test}" in test | bench) python_deps ;; esac

# helm and kubeconform for the chart checks (e2e/test_61_charts.py), built with Go from the
# Go module proxy into ~/go/bin once and then reused. Without Go those tests are skipped.
HELM_VERSION=v3.21.4
KUBECONFORM_VERSION=v0.8.0
go_tools() {
    command -v go >/dev/null 2>&1 || {
        echo "install-deps: no go: helm and kubeconform not installed (chart checks skipped)"
        return 0
    }
    local bin="$HOME/go/bin"
    if [ ! -x "$bin/helm" ]; then
        echo "install-deps: building helm $HELM_VERSION into $bin (go install, a few minutes)"
        GOBIN="$bin" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" ||
            echo "install-deps: go install helm failed (chart checks will be skipped)"
    fi
    if [ ! -x "$bin/kubeconform" ]; then
        echo "install-deps: building kubeconform $KUBECONFORM_VERSION into $bin (go install)"
        GOBIN="$bin" go install "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION" ||
            echo "install-deps: go install kubeconform failed (chart checks will be skipped)"
    fi
}
case "${1:-test}" in test) go_tools ;; esac

missing=()
for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# A new cloud VM often runs unattended upgrades at boot: wait for their lock (5 minutes)
# instead of failing at once.
LOCK=(-o DPkg::Lock::Timeout=300)
$SUDO apt-get "${LOCK[@]}" update -qq
$SUDO apt-get "${LOCK[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
