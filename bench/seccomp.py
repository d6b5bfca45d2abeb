#!/usr/bin/env python3
"""What the VMM's seccomp filters cost: `hull run --rm busybox true` and the
host memory of idle containers, with the filters (HULL_SECCOMP unset) and
without (HULL_SECCOMP=off), in one invocation, runs interleaved.

Prints the median of --runs per mode and the ratio filtered / unfiltered,
and the summed PSS/RSS of --idle idle containers per mode.

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
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="hull-bench-seccomp-")
    on = dict(os.environ, HULL_ROOT=os.path.join(work, "root"))
    on.pop("HULL_SECCOMP", None)
    off = dict(on, HULL_SECCOMP="off")
    try:
        rootfs = os.path.join(work, "rootfs")
        fast_start.busybox_rootfs(rootfs)
        tar = os.path.join(work, "rootfs.tar")
        fast_start.sh(["tar", "-C", rootfs, "-cf", tar, "."])
        fast_start.sh([HULL, "import", tar, "busybox:bench"], env=on)
        # Preparation, template and warm snapshots: not part of what is compared.
        fast_start.timed([HULL, "run", "--rm", "busybox:bench", "true"], env=on)
        times = {"filtered": [], "unfiltered": []}
        for _ in range(args.runs):
            times["unfiltered"].append(
                fast_start.timed([HULL, "run", "--rm", "busybox:bench", "true"], env=off))
            times["filtered"].append(
                fast_start.timed([HULL, "run", "--rm", "busybox:bench", "true"], env=on))
        med = {k: statistics.median(v) for k, v in times.items()}
        for k, v in times.items():
            runs = " ".join(f"{x:.2f}" for x in v)
            print(f"run --rm true {k:10s} median {med[k]:.3f} s  runs: {runs}")
        print(f"filtered / unfiltered: {med['filtered'] / med['unfiltered']:.3f}")
        for label, env in [("unfiltered", off), ("filtered", on)]:
            _, pss, rss = fast_start.idle(env, args.idle, label)
            print(f"idle x{args.idle} {label:10s} PSS {pss / 1024 / args.idle:.1f} MiB"
                  f"  RSS {rss / 1024 / args.idle:.1f} MiB per VMM")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
