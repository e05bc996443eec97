#!/usr/bin/env python3
"""Regenerates the flag blocks of docs/manage/configure.md from the binaries' --help.

usage: scripts/gen-configure-docs.py [BIN_DIR]   (default build/bin)

The first fenced block after "## piko-server" and after "## piko-sidecar" is replaced by
the flag lines of that binary's --help; the rest of the file is left as it is.
"""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "manage" / "configure.md"


def flag_lines(binary):
    out = subprocess.run([str(binary), "--help"], capture_output=True, text=True,
                         timeout=10)
    text = out.stdout + out.stderr
    return [line for line in text.splitlines() if line.startswith("  --")]


def replace_block(lines, heading, new):
    start = lines.index(heading)
    open_i = next(i for i in range(start, len(lines)) if lines[i].startswith("```"))
    close_i = next(i for i in range(open_i + 1, len(lines)) if lines[i].startswith("```"))
    return lines[:open_i + 1] + new + lines[close_i:]


def main():
    bin_dir = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "build" / "bin")
    lines = DOC.read_text().splitlines()
    for name in ("piko-server", "piko-sidecar"):
        flags = flag_lines(bin_dir / name)
        if not flags:
            sys.exit("%s --help printed no flags" % name)
        lines = replace_block(lines, "## " + name, flags)
    DOC.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
