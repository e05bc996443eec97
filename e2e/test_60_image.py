"""The container image (issue "Kubernetes"), without a container engine: the runtime
stage's package list (scripts/runtime-packages.txt) brings in every shared library the
built binaries load (scripts/check-runtime-packages.py: ldd/readelf, then dpkg), the
check fails naming what a shorter list lacks, and the Dockerfile installs that same list
and runs the binaries as a non-root user. When root with debootstrap and a Debian mirror,
the runtime stage is also replayed in a bookworm minbase root and the binaries run there."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BIN_DIR
from helpers import SANITIZED

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / "scripts" / "check-runtime-packages.py"
LIST = ROOT / "scripts" / "runtime-packages.txt"
DOCKERFILE = ROOT / "Dockerfile"
BINARIES = ("piko-server", "piko-sidecar")

needs_debian = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("dpkg-query", "readelf", "ldd")),
    reason="needs a Debian system with dpkg-query, readelf and ldd")


def binaries():
    paths = [BIN_DIR / b for b in BINARIES]
    for p in paths:
        if not p.exists():
            pytest.fail("%s not found (PIKO_BIN_DIR=%s); build first" % (p, BIN_DIR),
                        pytrace=False)
    return [str(p) for p in paths]


def check(list_path=LIST):
    p = subprocess.run([sys.executable, str(CHECK), "--list", str(list_path)] + binaries(),
                       capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout + p.stderr


def listed():
    return [line.split("#", 1)[0].strip() for line in LIST.read_text().splitlines()
            if line.split("#", 1)[0].strip()]


def write_list(tmp_path, pkgs):
    path = tmp_path / "runtime-packages.txt"
    path.write_text("".join(p + "\n" for p in pkgs))
    return path


@needs_debian
def test_runtime_packages_cover_the_binaries():
    rc, out = check()
    assert rc == 0, out
    assert "ok" in out
    # The check saw the libraries it is about, not an empty closure.
    for pkg in ("libcjose0", "libnghttp2-14", "libcurl4", "libgnutls30"):
        assert pkg in out, out


@needs_debian
def test_list_without_cjose_fails_naming_it(tmp_path):
    assert "libcjose0" in listed()
    rc, out = check(write_list(tmp_path, [p for p in listed() if p != "libcjose0"]))
    assert rc == 1, out
    assert re.search(r"piko-server links to libcjose\.so\.0 \(\S+\) from package libcjose0",
                     out), out


@needs_debian
def test_runtime_list_of_old_chart_readme_fails(tmp_path):
    """The Dockerfile snippet charts/piko/README.md carried lacked libcjose0 and
    libjansson4: piko-server could not start in that image. Both are named, the second
    although only the first links to it in a release build."""
    old = ["libnghttp2-14", "libevent-2.1-7", "libevent-openssl-2.1-7", "libc-ares2",
           "libhttp-parser2.9", "libyaml-0-2", "libjson-c5", "libssl3", "libcurl4"]
    rc, out = check(write_list(tmp_path, old))
    assert rc == 1, out
    assert re.search(r"libcjose\.so\.0 \(\S+\) from package libcjose0", out), out
    assert re.search(r"libjansson\.so\.4 \(\S+\) from package libjansson4", out), out


@needs_debian
def test_stale_or_unknown_entries_fail(tmp_path):
    rc, out = check(write_list(tmp_path, listed() + ["libpiko-nonexistent0", "zlib1g"]))
    assert rc == 1, out
    assert "lists libpiko-nonexistent0, which is not installed" in out, out
    # zlib1g is installed and loaded (through libcurl4) but listing it adds nothing the
    # Depends do not; an entry that owns no loaded library at all is what is stale.
    assert "zlib1g" not in out, out
    rc, out = check(write_list(tmp_path, listed() + ["ca-certificates"]))
    assert rc == 1, out
    assert "lists ca-certificates, which owns no library the binaries load" in out, out


def runtime_stage():
    """The last stage of the Dockerfile, one instruction per line."""
    text = DOCKERFILE.read_text()
    # Instructions with their continuation lines joined, comments dropped.
    text = re.sub(r"\\\n", " ", re.sub(r"(?m)^\s*#.*\n", "", text))
    stages = re.split(r"(?mi)^FROM\s+", text)[1:]
    assert len(stages) >= 2, "the Dockerfile is not multi-stage"
    for s in stages:
        assert s.startswith("debian:bookworm-slim"), s.splitlines()[0]
    return stages[-1]


def test_dockerfile_installs_the_checked_list_and_runs_as_non_root():
    stage = runtime_stage()
    copy = re.search(r"(?m)^COPY\s+scripts/runtime-packages\.txt\s+(\S+)", stage)
    assert copy, "the runtime stage does not copy scripts/runtime-packages.txt"
    install = re.search(r"(?m)^RUN .*apt-get install .*$", stage)
    assert install and copy.group(1) in install.group(0), \
        "apt-get install does not read %s" % copy.group(1)
    assert "ca-certificates" in install.group(0)
    user = re.findall(r"(?m)^USER\s+(\S+)", stage)
    assert user, "no USER in the runtime stage"
    uid = user[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "USER %s: not a numeric non-root uid" % user[-1]
    # Kubernetes' runAsNonRoot can only verify a numeric USER; the chart uses 65532.
    assert int(uid) == 65532
    for b in BINARIES:
        assert re.search(r"(?m)^COPY --from=\S+ .*\b%s\b.* /usr/local/bin/" % b, stage), b
    assert re.search(r'(?m)^ENTRYPOINT \["piko-server"\]', stage)
    assert sorted(re.search(r"(?m)^EXPOSE (.*)$", stage).group(1).split()) == \
        ["8000", "8001", "8002", "8003"]


def test_make_image_without_a_daemon_says_so():
    """`make image` needs a container engine daemon; without one it stops with a message
    instead of docker's connection error. DOCKER=false stands for a CLI whose daemon does
    not answer, whatever this machine has."""
    p = subprocess.run(["make", "--no-print-directory", "image", "DOCKER=false"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "no container engine daemon answers" in p.stderr, p.stderr
    assert re.search(r"build -t piko:\d+\.\d+\.\d+ \.", p.stderr), p.stderr


@pytest.mark.deadline(240)
def test_runtime_stage_in_a_bookworm_minbase_root(tmp_path):
    """Stronger than the dpkg check, when it can run: a bookworm root from `debootstrap
    --variant=minbase` (the package set debian:bookworm-slim is made of), the Dockerfile's
    runtime stage replayed in it (its COPY and RUN instructions, chrooted; the binaries of
    PIKO_BIN_DIR for COPY --from), then the entrypoint and the sidecar run as its USER.
    With libcjose0 removed piko-server no longer starts, naming libcjose.so.0. Skipped
    without root, debootstrap or a reachable mirror (PIKO_DEBIAN_MIRROR); about 30 s."""
    if os.geteuid() != 0 or not shutil.which("debootstrap") or not shutil.which("chroot"):
        pytest.skip("needs root, debootstrap and chroot")
    if SANITIZED:
        pytest.skip("the image holds the release build; sanitizer runtimes want /proc")
    binaries()
    root = tmp_path / "root"
    mirror = os.environ.get("PIKO_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    try:
        try:
            p = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(root),
                                mirror], capture_output=True, text=True, timeout=150)
        except subprocess.TimeoutExpired:
            pytest.skip("debootstrap took over 150 s")
        if p.returncode != 0:
            pytest.skip("debootstrap failed (no Debian mirror?): %s"
                        % (p.stdout + p.stderr).strip().splitlines()[-1:])

        user, entrypoint = "0:0", None
        for ins in runtime_stage().splitlines():
            op, _, arg = ins.strip().partition(" ")
            if op == "COPY" and arg.startswith("--from="):
                *srcs, dest = arg.split()[1:]
                for src in srcs:
                    shutil.copy(BIN_DIR / os.path.basename(src),
                                root / dest.lstrip("/") / os.path.basename(src))
            elif op == "COPY":
                src, dest = arg.split()
                shutil.copy(ROOT / src, root / dest.lstrip("/"))
            elif op == "RUN":
                r = subprocess.run(["chroot", str(root), "/bin/sh", "-c", arg],
                                   capture_output=True, text=True, timeout=120)
                assert r.returncode == 0, "RUN %s\n%s" % (arg, r.stdout + r.stderr)
            elif op == "USER":
                user = arg.strip()
            elif op == "ENTRYPOINT":
                entrypoint = json.loads(arg)

        def run_as_user(argv):
            # The container runtime's default PATH, on which the entrypoint is found.
            env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
            return subprocess.run(["chroot", "--userspec=" + user, str(root)] + argv,
                                  capture_output=True, text=True, timeout=30, env=env)

        for argv in (entrypoint + ["--version"], ["piko-sidecar", "--version"]):
            r = run_as_user(argv)
            assert r.returncode == 0, "%s: %s" % (argv, r.stdout + r.stderr)
            assert r.stdout.startswith(argv[0] + " "), r.stdout
        r = run_as_user(["id", "-u"])
        assert r.stdout.strip() == user.split(":")[0] != "0"

        r = subprocess.run(["chroot", str(root), "apt-get", "remove", "-y", "-qq",
                            "libcjose0"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        r = run_as_user(entrypoint + ["--version"])
        assert r.returncode != 0
        assert "libcjose.so.0" in r.stderr, r.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)
