#!/usr/bin/env python3
"""`ctr run --rm` under containerd (issue 18): the hull runtime
(`io.containerd.hull.v2`, each task in its own microVM) vs runc
(`io.containerd.runc.v2`) on the same image, in one run.

A private containerd (root, state and socket in a temporary directory,
this build's shim first on its PATH) imports a busybox image that hull
makes and `hull save`s as an OCI archive. One untimed run per runtime
(and of `hull run`) warms caches (for hull: the image's EROFS disk and
warm VM snapshot);
then --runs timed `ctr run --rm IMAGE ID echo ok` each, alternating with
`hull run --rm --network none` of the same image (what containerd and the
shim add to hull's own run), and the medians and their ratios are printed.

Usage: bench/containerd.py [--runs 7]
Env:   HULL_BIN_DIR=dir holding hull and containerd-shim-hull-v2
       (default: target/release; scripts/build-all builds both)
       HULL_KERNEL, HULL_AGENT as for hull itself.
Needs: containerd, runc (scripts/apt-packages-test), erofs-utils and
       busybox-static (scripts/apt-packages).
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = "docker.io/library/busybox:hull-bench"
RUNTIMES = {"hull": "io.containerd.hull.v2", "runc": "io.containerd.runc.v2"}


def die(msg):
    sys.exit(f"containerd bench: {msg}")


def sh(argv, env=None):
    p = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env)
    if p.returncode != 0:
        die(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


def busybox_tar(work):
    rootfs = os.path.join(work, "rootfs")
    for d in ("bin", "etc", "tmp", "proc", "dev", "sys"):
        os.makedirs(os.path.join(rootfs, d))
    shutil.copy("/bin/busybox", os.path.join(rootfs, "bin/busybox"))
    for applet in sh(["/bin/busybox", "--list"]).split():
        if applet != "busybox":
            os.symlink("busybox", os.path.join(rootfs, "bin", applet))
    tar = os.path.join(work, "rootfs.tar")
    sh(["tar", "--sort=name", "--mtime=@0", "--owner=0", "--group=0", "-C", rootfs, "-cf", tar, "."])
    return tar


def start_containerd(work, env):
    sock = os.path.join(work, "containerd.sock")
    config = os.path.join(work, "config.toml")
    with open(config, "w") as f:
        f.write(
            f'version = 2\nroot = "{work}/root"\nstate = "{work}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{sock}"\n'
        )
    log = open(os.path.join(work, "containerd.log"), "w")
    proc = subprocess.Popen(["containerd", "--config", config], env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while not os.path.exists(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            die(f"containerd did not start (see {log.name})")
        time.sleep(0.05)
    return proc, sock


def timed_run(ctr, runtime, cid):
    start = time.monotonic()
    out = sh(ctr + ["run", "--rm", "--runtime", runtime, IMAGE, cid, "echo", "ok"])
    elapsed = time.monotonic() - start
    if out.strip() != "ok":
        die(f"{runtime}: unexpected output {out!r}")
    return elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    bindir = os.path.abspath(os.environ.get("HULL_BIN_DIR", os.path.join(REPO, "target/release")))
    hull = os.path.join(bindir, "hull")
    for f in (hull, os.path.join(bindir, "containerd-shim-hull-v2")):
        if not os.access(f, os.X_OK):
            die(f"{f} is missing: run scripts/build-all (or set HULL_BIN_DIR)")
    for tool in ("containerd", "ctr", "runc", "mkfs.erofs"):
        if shutil.which(tool) is None:
            die(f"{tool} is missing: scripts/install-deps --tests")
    work = tempfile.mkdtemp(prefix="hull-containerd-bench-")
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", HULL_ROOT=os.path.join(work, "hull"))
    proc = None
    try:
        sh([hull, "import", busybox_tar(work), "busybox:hull-bench"], env=env)
        oci = os.path.join(work, "busybox-oci.tar")
        sh([hull, "save", "--format", "oci-archive", "-o", oci, "busybox:hull-bench"], env=env)
        proc, sock = start_containerd(work, env)
        ctr = ["ctr", "--address", sock, "--namespace", "bench"]
        sh(ctr + ["image", "import", "--all-platforms", oci])
        times = {name: [] for name in list(RUNTIMES) + ["hull run"]}
        for name, runtime in RUNTIMES.items():
            first = timed_run(ctr, runtime, f"warm-{name}")
            print(f"first run ({name}, untimed warm-up): {first:.2f} s")
        hull_run = [hull, "run", "--rm", "--network", "none", "busybox:hull-bench", "echo", "ok"]
        # hull's own run has its own image disk (prepared in a helper VM)
        # and so its own warm snapshot: made here, untimed.
        sh(hull_run, env=env)
        for i in range(args.runs):
            for name, runtime in RUNTIMES.items():
                times[name].append(timed_run(ctr, runtime, f"{name}-{i}"))
            start = time.monotonic()
            sh(hull_run, env=env)
            times["hull run"].append(time.monotonic() - start)
        med = {name: statistics.median(ts) for name, ts in times.items()}
        for name, ts in times.items():
            label = f"ctr run --rm ({RUNTIMES[name]})" if name in RUNTIMES else "hull run --rm (no containerd)"
            spread = ", ".join(f"{t:.3f}" for t in ts)
            print(f"{label}: median {med[name]:.3f} s  [{spread}]")
        print(f"ctr run, hull runtime / runc runtime: {med['hull'] / med['runc']:.1f}x")
        print(f"ctr run, hull runtime / hull run: {med['hull'] / med['hull run']:.2f}x")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
