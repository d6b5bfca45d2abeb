#!/usr/bin/env python3
"""What one page costs the guest kernel, by operation, against the host.

tests/support/page-costs.c (static, gcc) maps, touches and unmaps pages
in each way a process start does (anonymous write and read faults, file
pages of the page cache by fault and by MAP_POPULATE, unmapping) and
times one system call. It runs --runs times natively on the host and
--runs times in one hull container (`hull run --rm` of a busybox image
holding it, the file it maps being the image's /bin/busybox) in the same
invocation; the table gives the median microseconds per page of each and
their ratio.

Why: on PVM hosts every guest-kernel instruction is emulated, and a start
is made of page operations (an exec maps a binary, a fork copies page
tables, an exit unmaps). Comparing a fault with MAP_POPULATE of the same
pages separates the fault's entry and exit from the work per page.

Usage: bench/page_costs.py [--runs 3] [--pages 256]
Env:   HULL (default target/release/hull), HULL_KERNEL, HULL_AGENT as
       for hull itself (eval "$(./scripts/build-all)").
Needs: gcc (static libc), busybox-static.
"""
import argparse
import collections
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(REPO, "tests", "support", "page-costs.c")
HULL = os.environ.get("HULL", os.path.join(REPO, "target", "release", "hull"))
IMAGE = "pagecosts:bench"


def sh(argv, env=None):
    p = subprocess.run(argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        sys.exit(f"page_costs: {' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()[-400:]}")
    return p.stdout


def parse(out):
    return {k: float(v) for k, v in (line.split() for line in out.splitlines())}


def make_image(work, env):
    """A busybox image with the program; its tar imported into hull."""
    prog = os.path.join(work, "page-costs")
    sh(["gcc", "-O2", "-static", "-o", prog, SOURCE])
    rootfs = os.path.join(work, "rootfs")
    os.makedirs(os.path.join(rootfs, "bin"))
    shutil.copy("/bin/busybox", os.path.join(rootfs, "bin", "busybox"))
    shutil.copy(prog, os.path.join(rootfs, "bin", "page-costs"))
    tar = os.path.join(work, "image.tar")
    sh(["tar", "-C", rootfs, "-cf", tar, "."])
    sh([HULL, "import", tar, IMAGE], env=env)
    return prog


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pages", type=int, default=256)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="hull-page-costs-")
    env = dict(os.environ, HULL_ROOT=os.path.join(work, "root"))
    try:
        prog = make_image(work, env)
        native, guest = collections.defaultdict(list), collections.defaultdict(list)
        # The first container run makes the image's snapshots: not counted.
        sh([HULL, "run", "--rm", IMAGE, "/bin/busybox", "true"], env=env)
        for _ in range(args.runs):
            for k, v in parse(sh([prog, "/bin/busybox", str(args.pages)])).items():
                native[k].append(v)
            out = sh([HULL, "run", "--rm", IMAGE, "/bin/page-costs", "/bin/busybox", str(args.pages)], env=env)
            for k, v in parse(out).items():
                guest[k].append(v)
        print(f"median of {args.runs} runs, microseconds per page (per call for getppid)\n")
        print(f"{'operation':18s} {'guest':>10s} {'host':>8s} {'ratio':>8s}")
        for k in guest:
            g, n = statistics.median(guest[k]), statistics.median(native[k])
            print(f"{k:18s} {g:10.1f} {n:8.2f} {g / n if n else float('inf'):7.0f}x")
    finally:
        subprocess.run([HULL, "system", "prune", "-f"], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
