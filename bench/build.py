#!/usr/bin/env python3
"""`hull build` against itself and against a peer builder, in one run.

    bench/build.py [--runs N] [--no-peer] [--json FILE] [--root DIR]

On a 6-step Dockerfile over a busybox image (made from Debian's
busybox-static, as the tests make it), the median of --runs (default 3) of:
  - cold: `hull build --no-cache` (every RUN in a build VM, every layer
    made and stored);
  - rebuild: the same build again, unchanged (every step from the cache;
    goal: at most 5% of the cold build);
  - RUN overhead: a one-RUN build (`RUN true`, --no-cache) minus a build
    with no RUN (`ENV`), against `hull run --rm IMAGE true`: what a RUN step
    costs beyond running its command in a container;
  - peer: the same Dockerfile built by `podman build --isolation chroot
    --no-cache` on the same base image (imported into podman from the same
    tarball), if podman runs here; the ratio hull/peer is the figure.
Every figure is printed with its ratio; --json writes them.

Needs hull built (HULL_BIN, else target/release/hull) with its guest kernel
and agent (HULL_KERNEL/HULL_AGENT, as for `hull run`), /dev/kvm,
/bin/busybox (busybox-static) and tar; podman for the peer. State goes to
--root (default $HULL_BENCH_ROOT, else $TMPDIR/hull-bench-build), kept
between runs so snapshots and the prepared image are made once.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
HULL = os.environ.get("HULL_BIN", os.path.join(HERE, "..", "target", "release", "hull"))

DOCKERFILE = """FROM busybox:bench
WORKDIR /app
COPY data.txt .
RUN for i in 1 2 3 4 5; do echo $i >> /app/log; done
RUN sha1sum data.txt > data.sha && wc -l log >> data.sha
ENV MODE=bench
CMD ["cat", "/app/data.sha"]
"""
ONE_RUN = "FROM busybox:bench\nRUN true\n"
NO_RUN = "FROM busybox:bench\nENV A=1\n"


def die(msg):
    print(f"bench/build.py: {msg}", file=sys.stderr)
    sys.exit(1)


def hull(root, *args, check=True):
    env = dict(os.environ, HULL_ROOT=root)
    p = subprocess.run([HULL, *args], env=env, capture_output=True, text=True)
    if check and p.returncode != 0:
        die(f"hull {' '.join(args)} failed: {p.stderr.strip()[-2000:]}")
    return p


def timed(fn):
    t = time.monotonic()
    fn()
    return time.monotonic() - t


def busybox_tar(work):
    rootfs = os.path.join(work, "rootfs")
    shutil.rmtree(rootfs, ignore_errors=True)
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev"]:
        os.makedirs(os.path.join(rootfs, d))
    shutil.copy("/bin/busybox", os.path.join(rootfs, "bin/busybox"))
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True).stdout.split()
    for a in applets:
        if a != "busybox" and "/" not in a:
            os.symlink("busybox", os.path.join(rootfs, "bin", a))
    with open(os.path.join(rootfs, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    tar = os.path.join(work, "busybox.tar")
    subprocess.run(["tar", "-C", rootfs, "-cf", tar, "."], check=True)
    return tar


def context(work, name, dockerfile):
    ctx = os.path.join(work, name)
    os.makedirs(ctx, exist_ok=True)
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write(dockerfile)
    with open(os.path.join(ctx, "data.txt"), "w") as f:
        f.write("x" * 100_000)
    return ctx


def median_of(runs, fn):
    return statistics.median(timed(fn) for _ in range(runs))


def peer_build(ctx, tar, runs):
    """podman build --isolation chroot, or (None, why)."""
    if not shutil.which("podman"):
        return None, "podman is not installed"
    p = subprocess.run(["podman", "import", tar, "busybox:bench"], capture_output=True, text=True)
    if p.returncode != 0:
        return None, f"podman import failed: {p.stderr.strip()}"

    def once():
        q = subprocess.run(
            ["podman", "build", "--isolation", "chroot", "--no-cache", "-q", "-t", "bench-peer", ctx],
            capture_output=True,
            text=True,
        )
        if q.returncode != 0:
            raise RuntimeError(q.stderr.strip()[-500:])

    try:
        once()
    except RuntimeError as e:
        return None, f"podman build failed: {e}"
    return median_of(runs, once), None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--root")
    args = ap.parse_args()
    root = args.root or os.environ.get("HULL_BENCH_ROOT") or os.path.join(tempfile.gettempdir(), "hull-bench-build")
    os.makedirs(root, exist_ok=True)
    work = tempfile.mkdtemp(prefix="hull-bench-build.")
    tar = busybox_tar(work)
    hull(root, "import", tar, "busybox:bench")
    ctx = context(work, "six", DOCKERFILE)
    one = context(work, "one", ONE_RUN)
    none = context(work, "none", NO_RUN)
    # Warm-up (snapshots, the base's prepared image), not counted.
    hull(root, "build", "--no-cache", "-t", "bench:six", ctx)
    hull(root, "run", "--rm", "busybox:bench", "true")

    cold = median_of(args.runs, lambda: hull(root, "build", "--no-cache", "-t", "bench:six", ctx))
    rebuild = median_of(args.runs, lambda: hull(root, "build", "-t", "bench:six", ctx))
    one_run = median_of(args.runs, lambda: hull(root, "build", "--no-cache", "-t", "bench:one", one))
    no_run = median_of(args.runs, lambda: hull(root, "build", "--no-cache", "-t", "bench:none", none))
    run = median_of(args.runs, lambda: hull(root, "run", "--rm", "busybox:bench", "true"))
    peer, why = (None, "skipped (--no-peer)") if args.no_peer else peer_build(ctx, tar, args.runs)

    figures = {
        "runs": args.runs,
        "cold_build_s": cold,
        "rebuild_s": rebuild,
        "rebuild_over_cold": rebuild / cold,
        "run_step_s": one_run - no_run,
        "hull_run_s": run,
        "run_step_over_hull_run": (one_run - no_run) / run,
        "peer": "podman build --isolation chroot",
        "peer_cold_build_s": peer,
        "cold_over_peer": cold / peer if peer else None,
        "peer_note": why,
    }
    print(f"6-step build, median of {args.runs}:")
    print(f"  cold build (--no-cache)       {cold:7.2f} s")
    print(f"  unchanged rebuild             {rebuild:7.2f} s  = {100 * rebuild / cold:.1f}% of cold (goal <= 5%)")
    print(f"  one RUN step (build delta)    {one_run - no_run:7.2f} s")
    print(f"  hull run --rm busybox true    {run:7.2f} s  -> RUN step / run = {(one_run - no_run) / run:.2f}x")
    if peer:
        print(f"  podman build --isolation chroot {peer:5.2f} s  -> hull / podman = {cold / peer:.1f}x")
    else:
        print(f"  peer: {why}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
