#!/usr/bin/env python3
"""Checks that a list of Debian packages (scripts/runtime-packages.txt, the list the
container image's runtime stage installs) is enough to run the given binaries, without
building the image: it resolves what the binaries load on this (bookworm) machine and
asks dpkg which package owns each library.

    scripts/check-runtime-packages.py [--list FILE] BINARY...

For every binary:
  - each library it links to directly (readelf -d, NEEDED) must come from a package that
    the list names, or from the base image (BASE below);
  - each library it loads at all (ldd: the whole closure) must come from a package that
    `apt-get install --no-install-recommends` of the list brings in on top of the base
    image: the list, BASE, and their Pre-Depends/Depends, recursively, as recorded in
    this machine's dpkg database.
And every listed package must be installed here (else nothing about it can be checked)
and must own at least one library a binary loads (else the entry is stale).

Exits 0 when all holds, 1 naming each missing library and its package, 2 on usage or
environment errors. Python standard library only; needs ldd, readelf and dpkg-query.
"""

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

DEFAULT_LIST = Path(__file__).resolve().parent / "runtime-packages.txt"

# Packages of debian:bookworm-slim the binaries may rely on without listing them. Kept to
# the C runtime on purpose: libc6 (libc, libm, libresolv, the loader) and libgcc-s1
# (libgcc_s, which libc6 itself depends on; sanitizer builds link it directly). Other
# libraries the slim image happens to hold (zlib1g, libzstd1, libgnutls30 through apt)
# are not counted on: they must be reached through the list's Depends like any other.
BASE = ("libc6", "libgcc-s1")


class EnvError(Exception):
    pass


def run(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise EnvError("%s not found (a Debian system with binutils is needed)" % cmd[0])
    return p


def read_list(path):
    pkgs = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pkgs.extend(line.split())
    return pkgs


def needed(binary):
    """The sonames binary links to directly (DT_NEEDED)."""
    p = run(["readelf", "-d", binary])
    if p.returncode != 0:
        raise EnvError("readelf -d %s: %s" % (binary, p.stderr.strip()))
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", p.stdout)


def loaded(binary):
    """soname -> path for every library the loader maps for binary (ldd)."""
    p = run(["ldd", binary])
    if p.returncode != 0:
        raise EnvError("ldd %s: %s" % (binary, (p.stderr or p.stdout).strip()))
    libs = {}
    for line in p.stdout.splitlines():
        line = line.strip()
        m = re.match(r"(\S+) => (.+?) \(0x[0-9a-f]+\)$", line)
        if m:
            libs[m.group(1)] = m.group(2)
            continue
        m = re.match(r"(\S+) => not found$", line)
        if m:
            raise EnvError("%s: %s not found on this machine" % (binary, m.group(1)))
        m = re.match(r"(/\S+) \(0x[0-9a-f]+\)$", line)  # the loader itself
        if m:
            libs[os.path.basename(m.group(1))] = m.group(1)
        # linux-vdso.so.1 is the kernel's: no file, no package.
    return libs


def usr_variants(path):
    """path as ldd printed it, its target, and each with /usr added or removed: on a
    merged-/usr system dpkg may have recorded any of them."""
    out = []
    for p in (path, os.path.realpath(path)):
        out.append(p)
        out.append(p[4:] if p.startswith("/usr/") else "/usr" + p)
    return list(dict.fromkeys(out))


def owners(paths):
    """path -> owning package (architecture qualifier dropped), from one dpkg-query -S."""
    cands = {p: usr_variants(p) for p in paths}
    allc = sorted({c for cs in cands.values() for c in cs})
    p = run(["dpkg-query", "-S"] + allc)  # non-zero when some variant is unowned: fine
    found = {}
    for line in p.stdout.splitlines():
        if line.startswith("diversion "):
            continue
        pkgs, sep, path = line.rpartition(": ")
        if sep and path in allc:
            found[path] = pkgs.split(",")[0].strip().split(":")[0]
    result = {}
    for path, cs in cands.items():
        for c in cs:
            if c in found:
                result[path] = found[c]
                break
    return result


def installed():
    """package -> (list of dependencies, each a list of alternatives), and virtual
    package -> providers, for the packages installed here."""
    p = run(["dpkg-query", "-W", "-f",
             "${Package}\t${db:Status-Abbrev}\t${Pre-Depends}\t${Depends}\t${Provides}\n"])
    if p.returncode != 0:
        raise EnvError("dpkg-query -W: %s" % p.stderr.strip())
    deps, provides = {}, {}

    def names(field):
        out = []
        for dep in field.split(","):
            alts = [re.sub(r"\(.*?\)|\[.*?\]|<.*?>", "", a).strip().split(":")[0]
                    for a in dep.split("|")]
            alts = [a for a in alts if a]
            if alts:
                out.append(alts)
        return out

    for line in p.stdout.splitlines():
        name, status, pre, dep, prov = (line.split("\t") + [""] * 5)[:5]
        if not status.startswith("ii"):
            continue
        deps[name] = names(pre) + names(dep)
        for alts in names(prov):
            provides.setdefault(alts[0], []).append(name)
    return deps, provides


def closure(roots, deps, provides):
    """What apt would install for roots: their dependencies, recursively. For an
    alternative (a | b) or a virtual package the first one installed here is taken;
    apt may pick another in the image, which only matters if that one lacks a library
    (then the image run, not this check, would show it)."""
    seen, todo = set(), list(roots)
    while todo:
        pkg = todo.pop()
        if pkg in seen or pkg not in deps:
            continue
        seen.add(pkg)
        for alts in deps[pkg]:
            for a in alts:
                real = [a] if a in deps else [x for x in provides.get(a, []) if x in deps]
                if real:
                    todo.append(real[0])
                    break
    return seen


def check(listed, binaries, list_name):
    deps, provides = installed()
    errors = []
    for pkg in listed:
        if pkg not in deps:
            errors.append("%s lists %s, which is not installed on this machine: "
                          "install it (or fix the name) so it can be checked"
                          % (list_name, pkg))
    base = set(BASE)
    direct_ok = set(listed) | base
    brought = closure(list(listed) + list(BASE), deps, provides)

    per_bin = {b: (needed(b), loaded(b)) for b in binaries}
    all_paths = {path for _, libs in per_bin.values() for path in libs.values()}
    owner = owners(all_paths)
    used = set()
    for b, (direct, libs) in per_bin.items():
        name = os.path.basename(b)
        for soname, path in sorted(libs.items()):
            pkg = owner.get(path)
            if pkg is None:
                errors.append("%s loads %s (%s), which no Debian package owns: "
                              "the image cannot install it" % (name, soname, path))
                continue
            used.add(pkg)
            if soname in direct and pkg not in direct_ok:
                errors.append("%s links to %s (%s) from package %s, which %s does not "
                              "list" % (name, soname, path, pkg, list_name))
            elif pkg not in brought:
                errors.append("%s loads %s (%s) from package %s, which neither %s nor "
                              "its packages' Depends bring in" % (name, soname, path, pkg,
                                                                  list_name))
        for soname in direct:
            if soname not in libs:
                errors.append("%s links to %s, which ldd did not resolve" % (name, soname))
    for pkg in listed:
        if pkg in deps and pkg not in used:
            errors.append("%s lists %s, which owns no library the binaries load "
                          "(stale entry?)" % (list_name, pkg))
    return errors, sorted(used)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", default=str(DEFAULT_LIST),
                    help="package list (default: %(default)s)")
    ap.add_argument("binaries", nargs="+")
    args = ap.parse_args()
    list_name = os.path.basename(args.list)
    try:
        listed = read_list(args.list)
        for b in args.binaries:
            if not os.path.isfile(b):
                raise EnvError("%s: no such file" % b)
        errors, used = check(listed, args.binaries, list_name)
    except (EnvError, OSError) as e:
        print("check-runtime-packages: %s" % e, file=sys.stderr)
        return 2
    for e in errors:
        print("check-runtime-packages: %s" % e, file=sys.stderr)
    if errors:
        return 1
    print("check-runtime-packages: ok: %s covers %s (%d packages load libraries: %s)"
          % (list_name, ", ".join(os.path.basename(b) for b in args.binaries), len(used),
             " ".join(used)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
