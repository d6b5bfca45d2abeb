#!/usr/bin/env python3
"""The guest kernel's memory-op doorbell (issue 22), on vs off in one run.

For each HULL_PVM_MEMOPS setting (a bit mask of the guest kernel's hooks:
1 clear_page, 2 copy_page, 4 copy_to/from_user; 0 = doorbell off), in a
fresh hull root with a busybox image holding tests/guest/memops_bench.c
(static, gcc):

- guest-side figures from memops_bench in a container: first touch of an
  anonymous page (us), write() and read() of a FILE_MIB MiB file in the
  page cache (MB/s, 64 KiB calls), a pipe between two processes (MB/s);
- warm `hull run --rm IMAGE true` (median of --runs; the first run of each
  setting makes its snapshots and is reported apart);
- with --boot-bench, the guest kernel's own timing of the doorbell against
  its native loops at boot (`hull debug boot --append hull_pvm_memops_bench`):
  the cost of one port-I/O exit round trip, clear_page, copy_page and
  copies of 64 B to 4 KiB.

Settings alternate run by run, so machine load drifts hit both alike.

Usage: bench/memops.py [--runs 3] [--settings 0,7] [--file-mib 16]
                       [--fault-pages 256] [--min BYTES] [--boot-bench]
Env:   HULL=/path/to/hull (default target/release/hull), HULL_KERNEL,
       HULL_AGENT as for hull itself (eval "$(./scripts/build-all)").
Needs: gcc, tar, busybox-static.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = [
    ("fault_us", "anonymous page fault (us)", False),
    ("write_mbs", "write() into the page cache (MB/s)", True),
    ("read_mbs", "read() of a page-cached file (MB/s)", True),
    ("pipe_mbs", "pipe (MB/s)", True),
]


def die(msg):
    sys.exit(f"memops: {msg}")


def sh(argv, env=None, check=True):
    p = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env)
    if check and p.returncode != 0:
        die(f"{' '.join(argv)} failed ({p.returncode}): {p.stdout.strip()} {p.stderr.strip()}")
    return p


def make_image(hull, env, work):
    rootfs = os.path.join(work, "rootfs")
    for d in ["bin", "tmp", "proc", "dev", "sys", "etc"]:
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(rootfs, "bin/busybox"))
    with open(os.path.join(rootfs, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    with open(os.path.join(rootfs, "etc/group"), "w") as f:
        f.write("root:x:0:\n")
    for applet in ["sh", "dmesg", "grep", "true"]:
        os.symlink("busybox", os.path.join(rootfs, "bin", applet))
    sh(["gcc", "-static", "-O2", "-o", os.path.join(rootfs, "memops_bench"),
        os.path.join(REPO, "tests/guest/memops_bench.c")])
    tar = os.path.join(work, "rootfs.tar")
    sh(["tar", "-C", rootfs, "-cf", tar, "."])
    sh([hull, "import", tar, "memops:bench"], env=env)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--settings", default="0,7")
    ap.add_argument("--file-mib", type=int, default=16)
    ap.add_argument("--fault-pages", type=int, default=256)
    ap.add_argument("--min", type=int, help="HULL_PVM_MEMOPS_MIN (bytes)")
    ap.add_argument("--boot-bench", action="store_true")
    args = ap.parse_args()
    settings = args.settings.split(",")
    hull = os.environ.get("HULL", os.path.join(REPO, "target/release/hull"))
    if not os.path.exists(hull):
        die(f"{hull} missing: run scripts/build-all first")
    work = tempfile.mkdtemp(prefix="hull-memops-bench-")
    base_env = dict(os.environ, HULL_ROOT=os.path.join(work, "root"))
    if args.min:
        base_env["HULL_PVM_MEMOPS_MIN"] = str(args.min)
    try:
        make_image(hull, base_env, work)
        envs = {s: dict(base_env, HULL_PVM_MEMOPS=s) for s in settings}
        first, warm, figures, hooks = {}, {s: [] for s in settings}, {}, {}
        for s in settings:
            t = time.monotonic()
            sh([hull, "run", "--rm", "memops:bench", "true"], env=envs[s])
            first[s] = time.monotonic() - t
        for _ in range(args.runs):
            for s in settings:
                t = time.monotonic()
                sh([hull, "run", "--rm", "memops:bench", "true"], env=envs[s])
                warm[s].append(time.monotonic() - t)
        for s in settings:
            out = sh([hull, "run", "--rm", "memops:bench", "sh", "-c",
                      f"dmesg | grep hull_memops:; /memops_bench /tmp {args.file_mib} {args.fault_pages}"],
                     env=envs[s]).stdout
            figures[s] = {k: float(v) for k, v in re.findall(r"^(\w+) ([\d.]+)$", out, re.M)}
            m = re.search(r"hooks (0x[0-9a-f]+), user copies from (\d+)", out)
            hooks[s] = f"hooks {m.group(1)}, user >= {m.group(2)} B" if m else "doorbell off"
        boot = {}
        if args.boot_bench:
            for s in settings:
                p = sh([hull, "debug", "boot", "--console", "--append", "hull_pvm_memops_bench"],
                       env=envs[s], check=False)
                boot[s] = re.findall(r"hull_memops: bench: (.*)", p.stdout + p.stderr)

        print(f"# bench/memops.py: {args.file_mib} MiB file, {args.fault_pages} fresh pages, "
              f"{args.runs} warm runs per setting")
        for s in settings:
            print(f"# HULL_PVM_MEMOPS={s}: {hooks[s]}")
        head = "| figure | " + " | ".join(f"memops={s}" for s in settings) + " | last/first |"
        print(head)
        print("|" + "---|" * (len(settings) + 2))
        rows = [(label, [figures[s].get(k) for s in settings], hib) for k, label, hib in KEYS]
        rows.append(("warm `run --rm true`, median (s)",
                     [statistics.median(warm[s]) for s in settings], False))
        rows.append(("first run (makes snapshots) (s)", [first[s] for s in settings], False))
        for label, vals, _ in rows:
            cells = " | ".join("-" if v is None else f"{v:.2f}" for v in vals)
            ratio = (f"{vals[-1] / vals[0]:.2f}x" if vals[0] and vals[-1] else "-")
            print(f"| {label} | {cells} | {ratio} |")
        for s in settings:
            print(f"# warm runs memops={s}: " + ", ".join(f"{x:.2f}" for x in warm[s]))
        for s, lines in boot.items():
            print(f"# boot bench memops={s}:")
            for line in lines:
                print(f"#   {line}")
    finally:
        sh([hull, "system", "prune", "--force"], env=base_env, check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
