#!/usr/bin/env python3
"""Bind-mount (virtio-fs) throughput against the same I/O on the host, in one run.

    bench/bind_mounts.py [--runs N] [--mib N] [--json FILE] [--root DIR]

Each run is one `hull run --rm -v DIR:/b` container that, timed inside the
guest (so the VM's start is not counted):
  - write: `dd` of --mib MiB (default 8) with fsync into a file of the
    bind mount (virtiofsd writes it to the host file);
  - read: `cat` of a --mib MiB file the host wrote before the container
    started (nothing of it is in the guest's page cache);
against the same `dd` and `cat` on the host directory (the host's read is
from its page cache, as virtiofsd's is). The same write into a volume
(virtio-blk, ext4 in the guest) is measured too, for the other data path.
Medians of --runs (default 3), each printed with its ratio; --json writes
them.

Needs hull built (HULL_BIN, else target/release/hull) with its guest
kernel and agent (HULL_KERNEL/HULL_AGENT), virtiofsd, /dev/kvm and
/bin/busybox. State goes to --root (default $HULL_BENCH_ROOT, else
$TMPDIR/hull-bench-bind).
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
from build import busybox_tar, hull  # noqa: E402

UP = "$(cut -d' ' -f1 /proc/uptime)"


def timed_in_container(root, mounts, command):
    """Seconds `command` takes inside a fresh container (the guest's
    /proc/uptime: busybox's date has no %N)."""
    script = f"a={UP}; {command}; b={UP}; echo $a $b"
    args = ["run", "--rm"]
    for m in mounts:
        args += ["-v", m]
    out = hull(root, *args, "busybox:bench", "sh", "-c", script).stdout
    a, b = out.split()[-2:]
    return float(b) - float(a)


def timed_on_host(command):
    t = time.monotonic()
    subprocess.run(["sh", "-c", command], check=True)
    return time.monotonic() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mib", type=int, default=8)
    ap.add_argument("--json")
    ap.add_argument("--root")
    args = ap.parse_args()
    root = args.root or os.environ.get("HULL_BENCH_ROOT") or os.path.join(tempfile.gettempdir(), "hull-bench-bind")
    os.makedirs(root, exist_ok=True)
    work = tempfile.mkdtemp(prefix="hull-bench-bind.")
    shared = os.path.join(work, "shared")
    os.makedirs(shared)
    hull(root, "import", busybox_tar(work), "busybox:bench")
    bind = f"{shared}:/b"
    dd = "dd if=/dev/zero of={path} bs=1M count=" + str(args.mib) + " conv=fsync 2>/dev/null"
    host_file = os.path.join(shared, "from-host.bin")
    with open(host_file, "wb") as f:
        f.write(os.urandom(args.mib << 20))

    # Warm-up: the template snapshots of both VM shapes.
    timed_in_container(root, [bind], "true")
    timed_in_container(root, ["benchvol:/v"], "true")
    results = {"bind_write": [], "bind_read": [], "volume_write": [], "host_write": [], "host_read": []}
    for _ in range(args.runs):
        results["bind_write"].append(timed_in_container(root, [bind], dd.format(path="/b/from-guest.bin")))
        results["bind_read"].append(timed_in_container(root, [bind], "cat /b/from-host.bin > /dev/null"))
        results["volume_write"].append(timed_in_container(root, ["benchvol:/v"], dd.format(path="/v/f")))
        results["host_write"].append(timed_on_host(dd.format(path=os.path.join(shared, "host-dd.bin"))))
        results["host_read"].append(timed_on_host(f"cat {host_file} > /dev/null"))
    med = {k: statistics.median(v) for k, v in results.items()}
    mibs = {k: args.mib / v for k, v in med.items()}
    figures = {
        "runs": args.runs,
        "mib": args.mib,
        **{f"{k}_s": v for k, v in med.items()},
        **{f"{k}_mib_s": v for k, v in mibs.items()},
        "bind_write_over_host": med["bind_write"] / med["host_write"],
        "bind_read_over_host": med["bind_read"] / med["host_read"],
    }
    print(f"{args.mib} MiB, median of {args.runs} (timed inside the guest):")
    print(f"  write + fsync into a bind mount (virtio-fs)  {med['bind_write']:7.2f} s ({mibs['bind_write']:8.1f} MiB/s)")
    print(f"  write + fsync on the host                    {med['host_write']:7.2f} s ({mibs['host_write']:8.1f} MiB/s)"
          f" -> bind / host = {figures['bind_write_over_host']:.1f}x")
    print(f"  read of a host file through the bind mount   {med['bind_read']:7.2f} s ({mibs['bind_read']:8.1f} MiB/s)")
    print(f"  read of it on the host                       {med['host_read']:7.2f} s ({mibs['host_read']:8.1f} MiB/s)"
          f" -> bind / host = {figures['bind_read_over_host']:.1f}x")
    print(f"  write + fsync into a volume (virtio-blk)     {med['volume_write']:7.2f} s ({mibs['volume_write']:8.1f} MiB/s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    hull(root, "volume", "rm", "benchvol", check=False)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
