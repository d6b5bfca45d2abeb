#!/usr/bin/env python3
"""`hull run` end to end (issue 5), each figure next to its peer, in one run:

- `hull run --rm IMAGE true` vs `runc run` of an OCI bundle made from the
  same rootfs tarball (median of --runs each);
- the first `hull run` of a fresh hull root (it prepares the image's root
  filesystem in a helper VM) vs the later runs;
- that preparation vs the host doing the same job: `tar -x` of the same
  layer plus `mkfs.ext4 -d` (median of --runs);
- host memory per idle container: N busybox containers running
  `sleep 1000` (`hull run -d`), each VMM's RSS split into guest pages
  touched (guest memory is one anonymous mapping of the VMM) and the VMM's
  own, its PSS, and how many such containers the host's MemAvailable holds.
  Then all are removed (`hull rm -f`) and `hull ps -a` must be empty.

Usage: bench/run_vs_runc.py [--runs 5] [--idle 10] [--parallel 2]
                            [--image busybox|python]
Env:   HULL=/path/to/hull     (default: target/release/hull; scripts/build-all)
       HULL_RUN_ARGS="..."    extra arguments for every `hull run`
                              (e.g. "--memory 128m", or a fast-start flag)
       HULL_KERNEL, HULL_AGENT as for hull itself.
Needs: runc, tar, zstd (scripts/apt-packages-test), e2fsprogs, busybox-static (scripts/apt-packages);
       --image python also needs apt (tests/support/make-python-image).
"""
import argparse
import concurrent.futures
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def die(msg):
    sys.exit(f"run_vs_runc: {msg}")


def sh(argv, **kw):
    p = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kw)
    if p.returncode != 0:
        die(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


def timed(argv, **kw):
    start = time.monotonic()
    sh(argv, **kw)
    return time.monotonic() - start


def median(xs):
    return statistics.median(xs)


def fmt_runs(xs):
    return ", ".join(f"{x:.3f}" if x < 1 else f"{x:.1f}" for x in xs)


class Hull:
    def __init__(self, binary, root):
        self.binary = binary
        self.env = dict(os.environ, HULL_ROOT=root)
        self.root = root
        self.run_args = shlex.split(os.environ.get("HULL_RUN_ARGS", ""))

    def __call__(self, *args):
        return sh([self.binary, *args], env=self.env)

    def run_argv(self, *args):
        return [self.binary, "run", *self.run_args, *args]

    def timed_run(self, *args):
        return timed(self.run_argv(*args), env=self.env)


def busybox_tarball(work):
    """The tests' busybox image (tests/common: busybox_rootfs) as a tarball."""
    busybox = "/bin/busybox"
    if not os.path.exists(busybox):
        die("missing /bin/busybox: install busybox-static (scripts/apt-packages)")
    rootfs = os.path.join(work, "busybox-rootfs")
    for d in ["bin", "etc", "data", "proc", "dev", "sys", "tmp"]:
        os.makedirs(os.path.join(rootfs, d))
    shutil.copy(busybox, os.path.join(rootfs, "bin/busybox"))
    for applet in sh([busybox, "--list"]).split():
        if applet != "busybox" and "/" not in applet:
            os.symlink("busybox", os.path.join(rootfs, "bin", applet))
    with open(os.path.join(rootfs, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    with open(os.path.join(rootfs, "etc/group"), "w") as f:
        f.write("root:x:0:\n")
    tarball = os.path.join(work, "busybox.tar")
    sh(["tar", "-C", rootfs, "-cf", tarball, "."])
    return tarball


def python_tarball(work):
    tarball = os.path.join(work, "python.tar.zst")
    p = subprocess.run([os.path.join(REPO, "tests/support/make-python-image"), tarball],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if p.returncode != 0:
        die(f"make-python-image failed: {p.stderr.strip()}")
    return tarball


def tar_extract_argv(tarball, dest):
    with open(tarball, "rb") as f:
        magic = f.read(4)
    flags = ["-I", "zstd"] if magic == b"\x28\xb5\x2f\xfd" else ["-z"] if magic[:2] == b"\x1f\x8b" else []
    return ["tar", *flags, "-C", dest, "-xf", tarball]


def host_prepare(tarball, work):
    """Host `tar -x` + `mkfs.ext4 -d` of the layer, with hull's mkfs options
    and disk size (src/rootfs.rs); returns seconds."""
    d = tempfile.mkdtemp(dir=work)
    img = os.path.join(work, "host.ext4")
    size_mib = -(-os.path.getsize(tarball) // (1 << 20)) * 4 + 64
    start = time.monotonic()
    sh(tar_extract_argv(tarball, d))
    sh(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-m", "0", "-i", "8192", "-d", d, img, f"{size_mib}M"])
    elapsed = time.monotonic() - start
    shutil.rmtree(d)
    os.unlink(img)
    return elapsed


def runc_bundle(tarball, work, cmd):
    bundle = os.path.join(work, "bundle")
    os.makedirs(os.path.join(bundle, "rootfs"))
    sh(tar_extract_argv(tarball, os.path.join(bundle, "rootfs")))
    sh(["runc", "spec"], cwd=bundle)
    with open(os.path.join(bundle, "config.json")) as f:
        spec = json.load(f)
    spec["process"]["args"] = cmd
    spec["process"]["terminal"] = False
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(spec, f)
    return bundle


def meminfo_kib(key):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def vmm_memory_kib(pids, guest_kib):
    """(RSS of guest memory, RSS of everything else, PSS) in KiB of a VMM:
    its processes (the hull process supervising the VM and the confined
    VMM process that holds it). Guest memory is the mapping of exactly the
    guest's size: its RSS is the guest pages touched so far."""
    guest, own, pss, size = 0, 0, 0, None
    for pid in {p for p in pids if p}:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                if line.startswith("Size:"):
                    size = int(line.split()[1])
                elif line.startswith("Rss:"):
                    if size == guest_kib:
                        guest += int(line.split()[1])
                    else:
                        own += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
    return guest, own, pss


def idle_containers(hull, n, parallel):
    """Starts n idle busybox containers, measures, removes them all."""
    names = [f"bench-idle-{i}" for i in range(n)]
    started = []
    start = time.monotonic()
    try:
        def start_one(name):
            sh(hull.run_argv("-d", "--name", name, "busybox:bench", "sleep", "1000"), env=hull.env)
            return name

        with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
            for name in pool.map(start_one, names):
                started.append(name)
        start_all = time.monotonic() - start
        time.sleep(5)  # let the guests settle into idle
        per = []
        for name in names:
            info = json.loads(hull("inspect", name))
            info = info[0] if isinstance(info, list) else info
            if not info["State"]["Running"]:
                die(f"{name} is not running: {info['State']}")
            guest_mib = info["VM"]["MemoryMiB"]
            guest, own, pss = vmm_memory_kib(
                [info["VM"]["VmmPid"], info["VM"].get("VmProcessPid")], guest_mib * 1024)
            per.append({"guest": guest / 1024, "own": own / 1024, "pss": pss / 1024, "memory": guest_mib})
    finally:
        for name in started:
            subprocess.run([hull.binary, "rm", "-f", name], env=hull.env, capture_output=True)
    left = hull("ps", "-a", "-q").split()
    if left:
        die(f"containers left after rm -f: {left}")
    return per, start_all


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="runs per median (>= 5 for the record)")
    ap.add_argument("--idle", type=int, default=10, help="idle busybox containers to start")
    ap.add_argument("--parallel", type=int, default=2, help="idle containers started at once")
    ap.add_argument("--image", choices=["busybox", "python"], default="busybox")
    args = ap.parse_args()
    for tool in ["runc", "tar", "zstd", "mkfs.ext4"]:
        if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
            die(f"missing {tool}: install it (scripts/apt-packages-test)")
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    binary = os.environ.get("HULL", os.path.join(target, "release/hull"))
    if not os.access(binary, os.X_OK):
        die(f"no hull binary at {binary}: run scripts/build-all or set HULL")

    work = tempfile.mkdtemp(prefix="hull-run-bench-")
    try:
        hull = Hull(binary, os.path.join(work, "root"))
        host = next((l.split(":", 1)[1].strip() for l in hull("info").splitlines()
                     if l.startswith("Hypervisor:")), "unknown")
        busybox = busybox_tarball(work)
        hull("import", busybox, "busybox:bench")
        if args.image == "python":
            tarball, cmd = python_tarball(work), ["python3", "-c", "pass"]
            hull("import", "--change", 'CMD ["python3"]', tarball, "python:bench")
            image = "python:bench"
        else:
            tarball, cmd, image = busybox, ["true"], "busybox:bench"
        layer_mb = os.path.getsize(tarball) / 1e6
        print(f"host: {host}")
        print(f"hull: {binary} run {' '.join(hull.run_args)}".rstrip())
        print(f"image: {image} ({layer_mb:.1f} MB layer), command: {' '.join(cmd)}; "
              f"{args.runs} runs per median", flush=True)

        # The first run of a fresh root prepares the rootfs.
        first = hull.timed_run("--rm", image, *cmd)
        preps = [json.load(open(os.path.join(hull.root, "rootfs", f)))
                 for f in os.listdir(os.path.join(hull.root, "rootfs")) if f.endswith(".json")]
        if len(preps) != 1:
            die(f"expected one rootfs preparation after the first run, found {len(preps)}")
        prep = preps[0]
        later = [hull.timed_run("--rm", image, *cmd) for _ in range(args.runs)]
        print(f"hull run --rm (later runs): {fmt_runs(later)}", flush=True)

        bundle = runc_bundle(tarball, work, cmd)
        runc = [timed(["runc", "run", "--bundle", bundle, f"hull-bench-{os.getpid()}-{i}"])
                for i in range(args.runs)]
        print(f"runc run: {fmt_runs(runc)}", flush=True)
        host_prep = [host_prepare(tarball, work) for _ in range(args.runs)]
        print(f"host tar -x + mkfs.ext4 -d: {fmt_runs(host_prep)}", flush=True)

        h, r, hp = median(later), median(runc), median(host_prep)
        mb = prep["tar_bytes"] / 1e6
        print()
        print(f"{'hull run --rm, median':44} {h:9.2f} s")
        print(f"{'runc run, same rootfs, median':44} {r:9.3f} s")
        print(f"{'ratio hull/runc':44} {h / r:9.0f} x")
        print(f"{'first hull run (prepares the rootfs)':44} {first:9.2f} s")
        print(f"{'ratio first/later':44} {first / h:9.2f} x")
        print(f"{'preparation in the helper VM':44} {prep['total_seconds']:9.2f} s"
              f"  (unpack {prep['unpack_seconds']:.1f} s: {mb / prep['unpack_seconds']:.2f} MB/s,"
              f" {prep['entries'] / prep['unpack_seconds']:.1f} entries/s; {mb:.1f} MB,"
              f" {prep['entries']} entries)")
        print(f"{'host tar -x + mkfs.ext4 -d, median':44} {hp:9.3f} s")
        print(f"{'ratio preparation/host':44} {prep['total_seconds'] / hp:9.0f} x", flush=True)

        if args.idle > 0:
            available = meminfo_kib("MemAvailable") / 1024
            per, took = idle_containers(hull, args.idle, args.parallel)
            guest = median([p["guest"] for p in per])
            own = median([p["own"] for p in per])
            pss = median([p["pss"] for p in per])
            memory = per[0]["memory"]
            print()
            print(f"{len(per)} idle busybox containers (sleep 1000, {memory} MiB guests) started in {took:.0f} s")
            print(f"{'per container, median: VMM RSS':44} {guest + own:9.1f} MiB"
                  f"  = guest pages touched {guest:.1f} + VMM's own {own:.1f}; PSS {pss:.1f} MiB")
            print(f"{'idle containers that fit in MemAvailable':44} {available / pss:9.0f}"
                  f"  ({available:.0f} MiB available before; {available / (memory + own):.0f}"
                  f" if every guest touched all its memory)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
