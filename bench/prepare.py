#!/usr/bin/env python3
"""Image preparation (OCI layers -> the root filesystem a container VM
mounts) in hull vs the host doing the same job natively.

    bench/prepare.py [--images busybox,python-minimal,flask] [--runs N]
                     [--host-only] [--quick] [--json FILE] [--root DIR]

For each image (Debian-made rootfs tarballs from
tests/support/make-debian-image, one zstd layer each, cached), the median
of --runs (default 3) of:
  - hull: preparing the image's root filesystem from scratch. With
    `hull debug prepare --no-cache IMAGE` when this hull has it (its JSON:
    compressed_bytes, tar_bytes, entries, unpack_seconds, total_seconds);
    otherwise by deleting the image's cached disk
    ($HULL_ROOT/rootfs/<key>.*, key = first 32 hex digits of the sha256
    over each layer digest + "\\n") and running `hull run --rm IMAGE true`
    with HULL_FAST_START=0 (no warm snapshot is left per run; the
    container's own cold boot is not counted), reading the figures from
    the PrepareStats hull writes to $HULL_ROOT/rootfs/<key>.json. Which one
    is used is printed first;
  - host: `tar --zstd -xf` of the same layer into a temporary directory,
    then `mkfs.ext4 -d` of it into a sparse file sized and formatted as hull
    sizes and formats its disks, then an fsync of that file.
It prints, per image and in a final table, seconds, MB/s (uncompressed tar
bytes per second), entries/s and the ratio hull/host (of total preparation
time; hull's unpack-only time is shown too), and with --json writes the
figures. --quick is `--images busybox --runs 1`; --host-only skips hull
(before issue 15 the flask image took ~30 min to prepare in hull on PVM
hosts; now ~17 s).

Needs hull built (HULL_BIN, else target/release/hull), its guest kernel and
agent found as for `hull run` (HULL_KERNEL/HULL_AGENT), /dev/kvm, tar,
zstd, mkfs.ext4 (e2fsprogs), and what make-debian-image needs (apt, Debian's
mirror; debootstrap and root for flask). State goes to --root (default
$HULL_BENCH_ROOT, else $TMPDIR/hull-bench-prepare, kept between runs so the
images are imported once).
"""

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
HULL = os.environ.get("HULL_BIN", os.path.join(REPO, "target", "release", "hull"))
MAKE_IMAGE = os.path.join(REPO, "tests", "support", "make-debian-image")
IMAGES = ["busybox", "python-minimal", "flask"]


def fail(msg):
    sys.exit(f"bench: {msg}")


def sh(cmd, env=None, check=True):
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if check and r.returncode != 0:
        err = (r.stderr.strip() or r.stdout.strip()).splitlines()
        fail(f"{' '.join(map(str, cmd))} failed: {err[-1] if err else f'exit {r.returncode}'}")
    return r


def prerequisites(host_only):
    for tool in ["tar", "zstd", "mkfs.ext4", "python3"]:
        if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
            fail(f"missing {tool} (scripts/apt-packages-test)")
    if host_only:
        return
    if not os.access(HULL, os.X_OK):
        fail(f"no hull binary at {HULL}: build it (cargo build --release) or set HULL_BIN")
    if not os.path.exists("/dev/kvm"):
        fail("/dev/kvm is missing: hull cannot run microVMs here")


def has_debug_prepare(env):
    """Whether this hull has `hull debug prepare`."""
    r = subprocess.run([HULL, "debug", "prepare", "--help"], env=env, capture_output=True, text=True)
    return r.returncode == 0


def chain_key(digests):
    """src/guest/rootfs.rs chain_key: the rootfs cache key of a layer chain."""
    h = hashlib.sha256()
    for d in digests:
        h.update(d.encode() + b"\n")
    return h.hexdigest()[:32]


def disk_size(compressed):
    """src/guest/rootfs.rs disk_size: hull's disk for layers of this size."""
    mib = -(-compressed // (1 << 20)) * 4 + 64
    return mib << 20


def make_image(kind, workdir):
    out = os.path.join(workdir, f"{kind}.tar.zst")
    r = subprocess.run([MAKE_IMAGE, kind, out], capture_output=True, text=True)
    if r.returncode != 0:
        lines = r.stderr.strip().splitlines()
        fail(f"make-debian-image {kind}: {lines[0] if lines else 'failed'}")
    print(f"  {r.stderr.strip()}", flush=True)
    with open(out + ".json") as f:
        return out, json.load(f)


def import_image(kind, tarball, env):
    name = f"prepbench-{kind}:latest"
    if not sh([HULL, "images", "-q", name], env=env, check=False).stdout.strip():
        sh([HULL, "import", tarball, name], env=env)
    inspected = json.loads(sh([HULL, "image", "inspect", name], env=env).stdout)
    inspected = inspected[0] if isinstance(inspected, list) else inspected
    return name, [layer["Digest"] for layer in inspected["Layers"]]


def hull_prepare_command(name, env):
    """One preparation with `hull debug prepare --no-cache`."""
    r = sh([HULL, "debug", "prepare", "--no-cache", name], env=env)
    try:
        return json.loads(r.stdout)
    except json.JSONDecodeError:
        fail(f"hull debug prepare printed no JSON object: {r.stdout.strip()[:200]}")


def hull_prepare_fallback(name, key, root, env):
    """One preparation by dropping the cached disk and running the image."""
    cache = os.path.join(root, "rootfs")
    for suffix in (".ext4", ".json"):
        try:
            os.remove(os.path.join(cache, key + suffix))
        except FileNotFoundError:
            pass
    env = dict(env, HULL_FAST_START="0")
    # The image may have no `true` (python-minimal): the run then fails
    # after the preparation, which is all this measures.
    r = sh([HULL, "run", "--rm", "--network", "none", name, "true"], env=env, check=False)
    stats = os.path.join(cache, key + ".json")
    if not os.path.exists(stats):
        err = r.stderr.strip().splitlines()
        fail(f"hull run {name} prepared nothing: {err[-1] if err else f'exit {r.returncode}'}")
    with open(stats) as f:
        return json.load(f)


def host_prepare(tarball, meta, workdir):
    """tar -x then mkfs.ext4 -d into a sparse file, fsynced: seconds."""
    tree = tempfile.mkdtemp(prefix="tree.", dir=workdir)
    disk = os.path.join(workdir, "host.ext4")
    t0 = time.monotonic()
    sh(["tar", "--zstd", "-xf", tarball, "-C", tree])
    t1 = time.monotonic()
    with open(disk, "w") as f:
        f.truncate(disk_size(meta["compressed_bytes"]))
    sh(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-m", "0", "-i", "8192", "-d", tree, disk])
    fd = os.open(disk, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    t2 = time.monotonic()
    shutil.rmtree(tree)
    os.remove(disk)
    return {"tar_seconds": t1 - t0, "mkfs_seconds": t2 - t1, "total_seconds": t2 - t0}


def rates(seconds, meta):
    return meta["tar_bytes"] / 1e6 / seconds, meta["entries"] / seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default=",".join(IMAGES), help="comma-separated, of " + ",".join(IMAGES))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="busybox only, 1 run")
    ap.add_argument("--host-only", action="store_true", help="time only the host side")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--root", help="hull root for the bench (kept)")
    args = ap.parse_args()
    images = ["busybox"] if args.quick else [i for i in args.images.split(",") if i]
    runs = 1 if args.quick else args.runs
    unknown = set(images) - set(IMAGES)
    if unknown or not images or runs < 1:
        fail(f"--images must name some of {','.join(IMAGES)} and --runs be >= 1")
    prerequisites(args.host_only)

    tmp = os.environ.get("TMPDIR", "/tmp")
    root = args.root or os.environ.get("HULL_BENCH_ROOT") or os.path.join(tmp, "hull-bench-prepare")
    os.makedirs(root, exist_ok=True)
    env = dict(os.environ, HULL_ROOT=root)
    mode = None
    if not args.host_only:
        mode = "debug-prepare" if has_debug_prepare(env) else "run-fallback"
        how = {
            "debug-prepare": "hull debug prepare --no-cache",
            "run-fallback": "cached disk deleted, then hull run --rm IMAGE true (no `hull debug prepare` in this hull)",
        }[mode]
        print(f"bench: hull {HULL}, root {root}; hull side: {how}", flush=True)

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-prepare.", dir=tmp) as work:
        warmed = False
        for kind in images:
            print(f"== {kind}", flush=True)
            tarball, meta = make_image(kind, work)
            res = {
                "tar_bytes": meta["tar_bytes"],
                "compressed_bytes": meta["compressed_bytes"],
                "entries": meta["entries"],
            }
            host = [host_prepare(tarball, meta, work) for _ in range(runs)]
            h = statistics.median(r["total_seconds"] for r in host)
            mb, ent = rates(h, meta)
            res["host"] = {"runs": host, "median_seconds": h, "mb_per_s": mb, "entries_per_s": ent}
            print(
                f"  host tar -x + mkfs.ext4 -d: {h:.2f} s "
                f"(tar {statistics.median(r['tar_seconds'] for r in host):.2f} s), "
                f"{mb:.1f} MB/s, {ent:.0f} entries/s",
                flush=True,
            )
            if not args.host_only:
                name, digests = import_image(kind, tarball, env)
                key = chain_key(digests)
                got = []
                if mode == "debug-prepare" and not warmed:
                    # The first preparation in a root also makes the helper
                    # VM's snapshot (a cold boot): a one-time cost, shown
                    # but not counted.
                    warm = hull_prepare_command(name, env)
                    print(f"  hull warm-up (first preparation in this root makes the helper's snapshot): "
                          f"{warm['total_seconds']:.1f} s", flush=True)
                    warmed = True
                for i in range(runs):
                    if mode == "debug-prepare":
                        stats = hull_prepare_command(name, env)
                    else:
                        stats = hull_prepare_fallback(name, key, root, env)
                    got.append(stats)
                    print(
                        f"  hull run {i + 1}/{runs}: {stats['total_seconds']:.1f} s "
                        f"(unpack {stats['unpack_seconds']:.1f} s), {stats['entries']} entries, "
                        f"{stats['tar_bytes'] / 1e6:.1f} MB tar",
                        flush=True,
                    )
                t = statistics.median(s["total_seconds"] for s in got)
                u = statistics.median(s["unpack_seconds"] for s in got)
                mb, ent = rates(t, meta)
                res["hull"] = {
                    "mode": mode,
                    "runs": got,
                    "median_seconds": t,
                    "median_unpack_seconds": u,
                    "mb_per_s": mb,
                    "entries_per_s": ent,
                    "unpack_mb_per_s": rates(u, meta)[0] if u > 0 else None,
                }
                res["ratio"] = t / h
                print(
                    f"  hull: {t:.1f} s (unpack {u:.1f} s), {mb:.2f} MB/s, {ent:.1f} entries/s; "
                    f"hull/host {t / h:.0f}x",
                    flush=True,
                )
            results[kind] = res

    print(f"\nmedian of {runs} run(s); MB = uncompressed tar bytes / 1e6")
    head = f"{'image':<15}{'tar MB':>8}{'entries':>9}{'host s':>9}{'host MB/s':>11}"
    if not args.host_only:
        head += f"{'hull s':>9}{'unpack s':>10}{'hull MB/s':>11}{'hull ent/s':>12}{'hull/host':>11}"
    print(head)
    for kind, r in results.items():
        line = (
            f"{kind:<15}{r['tar_bytes'] / 1e6:>8.1f}{r['entries']:>9}"
            f"{r['host']['median_seconds']:>9.2f}{r['host']['mb_per_s']:>11.1f}"
        )
        if "hull" in r:
            hl = r["hull"]
            line += (
                f"{hl['median_seconds']:>9.1f}{hl['median_unpack_seconds']:>10.1f}"
                f"{hl['mb_per_s']:>11.2f}{hl['entries_per_s']:>12.1f}{r['ratio']:>10.0f}x"
            )
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"hull_mode": mode, "runs": runs, "images": results}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
