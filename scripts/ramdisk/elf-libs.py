#!/usr/bin/env python3
"""The shared libraries and loader an ELF program needs, found in a tree of unpacked Debian
packages (dpkg -x): what ldd says of a program of this machine, for a program of another
architecture (the arm64 ramdisk built here), which ldd cannot run.

usage: elf-libs.py TREE PROGRAM
Prints one line per file: its real path under TREE, a tab, the path the loader opens it by.
Exits 1 naming every library it cannot find in TREE.
"""
import os
import re
import subprocess
import sys

TRIPLETS = {"AArch64": "aarch64-linux-gnu", "Advanced Micro Devices X86-64": "x86_64-linux-gnu"}


def inside(tree, path, depth=0):
    """PATH (absolute, as the target system sees it) with every symlink followed inside TREE:
    Debian's packages hold absolute links (/lib/ld-linux-aarch64.so.1 -> /usr/lib/...)."""
    if depth > 40:
        sys.exit(f"elf-libs: symlink loop under {path}")
    parts = [p for p in path.split("/") if p]
    cur = ""
    for i, part in enumerate(parts):
        nxt = f"{cur}/{part}"
        full = tree + nxt
        if os.path.islink(full):
            target = os.readlink(full)
            base = target if target.startswith("/") else f"{cur}/{target}"
            rest = "/".join(parts[i + 1:])
            return inside(tree, os.path.normpath(f"{base}/{rest}" if rest else base), depth + 1)
        cur = nxt
    return cur or "/"


def readelf(*args):
    out = subprocess.run(["readelf", "-W", *args], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"elf-libs: readelf {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    tree, prog = os.path.abspath(sys.argv[1]).rstrip("/"), sys.argv[2]
    machine = re.search(r"Machine:\s+(.*)", readelf("-h", prog))
    triplet = TRIPLETS.get(machine.group(1).strip() if machine else "")
    if not triplet:
        sys.exit(f"elf-libs: {prog}: no library directory known for machine {machine and machine.group(1)}")
    dirs = [f"/lib/{triplet}", f"/usr/lib/{triplet}", "/lib", "/usr/lib"]
    printed, missing = set(), []
    interp = re.search(r"Requesting program interpreter: ([^\]]+)\]", readelf("-l", prog))
    if interp:
        real = tree + inside(tree, interp.group(1))
        if not os.path.isfile(real):
            missing.append(f"loader {interp.group(1)}")
        else:
            print(f"{real}\t{interp.group(1)}")
            printed.add(interp.group(1))
    queue, seen = [prog], set()
    while queue:
        elf = queue.pop()
        for name in re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", readelf("-d", elf)):
            if name in seen:
                continue
            seen.add(name)
            for d in dirs:
                real = tree + inside(tree, f"{d}/{name}")
                if os.path.isfile(real):
                    if f"{d}/{name}" not in printed:
                        print(f"{real}\t{d}/{name}")
                        printed.add(f"{d}/{name}")
                    queue.append(real)
                    break
            else:
                missing.append(name)
    if missing:
        sys.exit(f"elf-libs: {prog} needs what {tree} lacks: {', '.join(missing)}")


if __name__ == "__main__":
    main()
