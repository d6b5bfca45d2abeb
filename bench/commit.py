#!/usr/bin/env python3
"""`hull commit` and volume writes against their host-side peers, in one run.

    bench/commit.py [--runs N] [--files N] [--mib N] [--json FILE] [--root DIR]

  - commit: a stopped container whose writable layer holds --files files
    (default 1000) of --mib MiB in all (default 50), put there with
    `hull cp`; `hull commit` (helper VM, layer tar written in the guest,
    gzip and store on the host) against what `podman commit` does with the
    same tree on the host: tar it and gzip it (level 3, as hull), median
    of --runs (default 3);
  - volume write: `dd` of 32 MiB with fsync into a volume inside a
    container, against the same `dd` into a file on the host (timed inside
    each, so the VM's start is not counted).
Every figure is printed with its ratio; --json writes them.

Needs hull built (HULL_BIN, else target/release/hull) with its guest kernel
and agent (HULL_KERNEL/HULL_AGENT), /dev/kvm, /bin/busybox and tar. State
goes to --root (default $HULL_BENCH_ROOT, else $TMPDIR/hull-bench-commit).
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
sys.path.insert(0, HERE)
from build import busybox_tar, die, hull, median_of  # noqa: E402

DD = "dd if=/dev/zero of={path} bs=1M count=32 conv=fsync 2>/dev/null"


def make_tree(work, files, mib):
    tree = os.path.join(work, "tree")
    per_file = (mib << 20) // files
    for i in range(files):
        d = os.path.join(tree, f"d{i % 20}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i}"), "wb") as f:
            f.write(os.urandom(per_file))
    return tree


def host_commit(tree):
    """The host-side peer: tar the tree and gzip it."""
    tar = subprocess.Popen(["tar", "-C", tree, "-cf", "-", "."], stdout=subprocess.PIPE)
    subprocess.run(["gzip", "-3"], stdin=tar.stdout, stdout=subprocess.DEVNULL, check=True)
    tar.wait()


def timed_inside(root, args):
    """Seconds a shell command takes inside a container (by the guest's
    /proc/uptime: busybox's date has no %N)."""
    up = "$(cut -d' ' -f1 /proc/uptime)"
    script = f"a={up}; {args}; b={up}; echo $a $b"
    out = hull(root, "run", "--rm", "-v", "benchvol:/v", "busybox:bench", "sh", "-c", script).stdout
    a, b = out.split()[-2:]
    return float(b) - float(a)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--mib", type=int, default=50)
    ap.add_argument("--json")
    ap.add_argument("--root")
    args = ap.parse_args()
    root = args.root or os.environ.get("HULL_BENCH_ROOT") or os.path.join(tempfile.gettempdir(), "hull-bench-commit")
    os.makedirs(root, exist_ok=True)
    work = tempfile.mkdtemp(prefix="hull-bench-commit.")
    hull(root, "import", busybox_tar(work), "busybox:bench")
    tree = make_tree(work, args.files, args.mib)
    hull(root, "rm", "-f", "bench-c", check=False)
    hull(root, "create", "--name", "bench-c", "busybox:bench", "true")
    t = time.monotonic()
    hull(root, "cp", tree, "bench-c:/tree")
    cp_in = time.monotonic() - t
    commit = median_of(args.runs, lambda: hull(root, "commit", "bench-c", "bench:committed"))
    peer = median_of(args.runs, lambda: host_commit(tree))
    print(f"  hull commit {commit:.2f} s, host tar | gzip -3 {peer:.2f} s", flush=True)

    timed_inside(root, "true")  # warm-up: snapshots for the volume's VM shape
    vol = statistics.median(timed_inside(root, DD.format(path="/v/f")) for _ in range(args.runs))
    host_file = os.path.join(work, "dd.out")

    def host_dd():
        subprocess.run(["sh", "-c", DD.format(path=host_file)], check=True)

    host = median_of(args.runs, host_dd)
    hull(root, "rm", "-f", "bench-c")
    figures = {
        "runs": args.runs,
        "files": args.files,
        "mib": args.mib,
        "cp_in_s": cp_in,
        "commit_s": commit,
        "host_tar_gzip_s": peer,
        "commit_over_host": commit / peer,
        "volume_dd_32mib_s": vol,
        "host_dd_32mib_s": host,
        "volume_over_host": vol / host,
    }
    print(f"{args.files} files, {args.mib} MiB; median of {args.runs}:")
    print(f"  hull cp of the tree into the container   {cp_in:7.2f} s (once)")
    print(f"  hull commit                              {commit:7.2f} s")
    print(f"  host tar | gzip -3 (podman's work)       {peer:7.2f} s  -> hull / host = {commit / peer:.1f}x")
    print(f"  dd 32 MiB + fsync into a volume          {vol:7.2f} s ({32 / vol:.1f} MiB/s)")
    print(f"  dd 32 MiB + fsync on the host            {host:7.2f} s ({32 / host:.1f} MiB/s) -> {vol / host:.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
