#!/usr/bin/env python3
"""What a layer of the VMM's confinement costs: `hull run --rm busybox true`
and the host memory of idle containers, with the layer and without, in one
invocation, runs interleaved. --layer seccomp: the syscall filters
(HULL_SECCOMP=off without); --layer jail: the VMM in its own jailed process
with its cgroup (HULL_JAIL=off without: the VM on a thread of hull).

Prints the median of --runs per mode and the ratio with / without, and the
summed PSS/RSS of --idle idle containers per mode.

Needs hull built (HULL_BIN or target/release/hull), HULL_KERNEL/HULL_AGENT
as for the tests, and /bin/busybox. Reuses bench/fast_start.py's helpers.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fast_start  # noqa: E402  (its helpers: sh, timed, busybox_rootfs, idle)

HULL = fast_start.HULL


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--idle", type=int, default=3, help="idle containers per mode")
    ap.add_argument("--layer", choices=["seccomp", "jail"], default="jail")
    args = ap.parse_args()
    switch = {"seccomp": "HULL_SECCOMP", "jail": "HULL_JAIL"}[args.layer]
    work = tempfile.mkdtemp(prefix="hull-bench-confinement-")
    on = dict(os.environ, HULL_ROOT=os.path.join(work, "root"))
    on.pop("HULL_SECCOMP", None)
    on.pop("HULL_JAIL", None)
    off = dict(on, **{switch: "off"})
    try:
        rootfs = os.path.join(work, "rootfs")
        fast_start.busybox_rootfs(rootfs)
        tar = os.path.join(work, "rootfs.tar")
        fast_start.sh(["tar", "-C", rootfs, "-cf", tar, "."])
        fast_start.sh([HULL, "import", tar, "busybox:bench"], env=on)
        # Preparation, template and warm snapshots: not part of what is compared.
        fast_start.timed([HULL, "run", "--rm", "busybox:bench", "true"], env=on)
        times = {"with": [], "without": []}
        for _ in range(args.runs):
            times["without"].append(
                fast_start.timed([HULL, "run", "--rm", "busybox:bench", "true"], env=off))
            times["with"].append(
                fast_start.timed([HULL, "run", "--rm", "busybox:bench", "true"], env=on))
        med = {k: statistics.median(v) for k, v in times.items()}
        for k, v in times.items():
            runs = " ".join(f"{x:.2f}" for x in v)
            print(f"{args.layer}: run --rm true {k:7s} median {med[k]:.3f} s  runs: {runs}")
        print(f"{args.layer}: with / without: {med['with'] / med['without']:.3f}")
        for label, env in [("without", off), ("with", on)]:
            _, pss, rss = fast_start.idle(env, args.idle, label)
            print(f"{args.layer}: idle x{args.idle} {label:7s} PSS {pss / 1024 / args.idle:.1f} MiB"
                  f"  RSS {rss / 1024 / args.idle:.1f} MiB per VMM")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
