#!/usr/bin/env python3
"""Fast start vs cold boot vs runc, and the host memory of idle containers.

One invocation measures, on this host:
  - `hull run --rm busybox true` end to end: cold boot (HULL_FAST_START=0)
    vs fast path (restore from the VM snapshot) vs `runc run` of an OCI
    bundle made from the same rootfs; median of --runs each, as ratios;
  - the fast path with the uniprocessor guest kernel hull boots for one
    vCPU (the default) vs the SMP kernel (HULL_KERNEL_UP=off), interleaved;
  - host memory of --idle idle containers (`hull run -d IMAGE sleep`) for
    the fast path and --idle-cold for cold boots: sum of the VMM processes'
    PSS (proportional set size: pages shared between VMs, e.g. clean pages
    of the snapshot's memory file, are split among them) and RSS;
  - where a warm start's time goes (one traced run, hull's debug lines),
    with a projection of it onto hardware KVM against runc.

Needs hull built (HULL_BIN or target/release/hull), HULL_KERNEL/HULL_AGENT
as for the tests, /bin/busybox, and runc (or crun) for the peer.
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


def sh(cmd, env=None, check=True):
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if check and r.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed: {r.stderr.strip()}")
    return r


def busybox_rootfs(path):
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "data"]:
        os.makedirs(os.path.join(path, d), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(path, "bin", "busybox"))
    for applet in sh(["/bin/busybox", "--list"]).stdout.split():
        if applet != "busybox":
            os.symlink("busybox", os.path.join(path, "bin", applet))
    with open(os.path.join(path, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    with open(os.path.join(path, "etc", "group"), "w") as f:
        f.write("root:x:0:\n")


def timed(cmd, env=None):
    t = time.monotonic()
    sh(cmd, env=env)
    return time.monotonic() - t


# Where a warm start's time goes: the debug lines hull logs at each step
# (RUST_LOG=hull=debug), in order, and what lies between the previous one
# and each. The first and the last steps are mostly host work (hull, passt
# and VMM processes, the restore's mapping; the VM's end); the others are
# the guest's (its kernel emulated on PVM).
STEPS = [
    ("agent answers", "launch to restored VM, agent connected", "host"),
    ("container root ready, process started",
     "one round trip: identity, disks, set-up, process created and started", "guest"),
    ("exited with", "the process's own run (busybox true) until its exit is reported", "guest"),
    ("process exited at", "output closed, the guest's other processes killed", "guest"),
    (None, "VM ended, hull exits", "host"),
]
# Guest-kernel costs on PVM against the same work on this host natively
# (docs/measurements.md, PLATFORM.md: getppid 544 us vs 0.1 us, a fresh
# page fault 3.6-5.6 ms vs 1.4 us): on hardware KVM the guest kernel runs
# natively, so guest-bound steps shrink by at least the smaller ratio.
PVM_OVER_KVM = min(544 / 0.1, 3600 / 1.4)


def breakdown(env):
    """One traced fast-path run: seconds per step of STEPS."""
    import re
    traced = dict(env, RUST_LOG="hull=debug")
    t = time.monotonic()
    r = sh([HULL, "run", "--rm", "busybox:bench", "true"], env=traced)
    wall = time.monotonic() - t
    stamps = []
    for line in re.sub(r"\x1b\[[0-9;]*m", "", r.stderr).splitlines():
        m = re.match(r"(\d+-\d+-\d+T(\d+):(\d+):([\d.]+))Z", line)
        if m:
            secs = int(m.group(2)) * 3600 + int(m.group(3)) * 60 + float(m.group(4))
            stamps.append((secs, line))
    if not stamps:
        sys.exit("bench: no debug lines from hull (RUST_LOG=hull=debug)")
    # The first log line comes a few ms after launch (hull's own start-up):
    # counted in the first step by anchoring it at the wall clock's end.
    times = []
    for needle, _, _ in STEPS[:-1]:
        hit = next((s for s, l in stamps if needle in l), None)
        if hit is None:
            sys.exit(f"bench: hull logged no {needle!r} line")
        times.append(hit)
    end = stamps[-1][0] + (wall - (stamps[-1][0] - stamps[0][0]))
    start = end - wall
    points = [start] + times + [end]
    return [b - a for a, b in zip(points, points[1:])]


def print_breakdown(steps, runc_median):
    print("warm start, step by step (one traced run; tracing adds little):")
    for (_, what, side), secs in zip(STEPS, steps):
        print(f"  {secs*1000:7.0f} ms  [{side:5s}] {what}")
    host = sum(s for s, (_, _, side) in zip(steps, STEPS) if side == "host")
    guest = sum(s for s, (_, _, side) in zip(steps, STEPS) if side == "guest")
    kvm = host + guest / PVM_OVER_KVM
    print(f"  host-side steps {host*1000:.0f} ms, guest-side steps {guest*1000:.0f} ms")
    print(f"projection for hardware KVM (an estimate: guest-side steps / {PVM_OVER_KVM:.0f}, "
          f"host-side steps as measured here, though they hold some guest work): "
          f"{kvm*1000:.0f} ms = {kvm/runc_median:.1f}x runc (goal <= 1.0x)")


def vmm_memory(root, env, names):
    """Sum of PSS and RSS (KiB) of the VMM processes of the named containers
    (the hull process supervising each VM and its confined VMM process)."""
    pss = rss = 0
    for n in names:
        info = json.loads(sh([HULL, "inspect", n], env=env).stdout)
        info = info[0] if isinstance(info, list) else info
        vm = info.get("VM", {})
        pids = {vm.get("VmmPid"), vm.get("VmProcessPid")} - {None}
        for pid in pids:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    k, v = line.split(":", 1)
                    if k == "Pss":
                        pss += int(v.split()[0])
                    elif k == "Rss":
                        rss += int(v.split()[0])
    return pss, rss


def idle(env, count, label):
    names = [f"idle-{label}-{i}" for i in range(count)]
    t = time.monotonic()
    for n in names:
        sh([HULL, "run", "-d", "--name", n, "busybox:bench", "sleep", "100000"], env=env)
    started = time.monotonic() - t
    time.sleep(5)
    pss, rss = vmm_memory(None, env, names)
    for n in names:
        sh([HULL, "rm", "-f", n], env=env)
    return started, pss, rss


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cold-runs", type=int, default=None, help="default: --runs")
    ap.add_argument("--idle", type=int, default=50, help="idle fast-started containers")
    ap.add_argument("--idle-cold", type=int, default=10, help="idle cold-booted containers")
    args = ap.parse_args()
    cold_runs = args.cold_runs or args.runs
    runc = shutil.which("runc") or shutil.which("crun")
    if not runc:
        sys.exit("bench: runc (or crun) is missing: apt-get install runc")

    work = tempfile.mkdtemp(prefix="hull-bench-fast-")
    env = dict(os.environ, HULL_ROOT=os.path.join(work, "root"))
    cold_env = dict(env, HULL_FAST_START="0")
    smp_env = dict(env, HULL_KERNEL_UP="off")
    try:
        rootfs = os.path.join(work, "bundle", "rootfs")
        busybox_rootfs(rootfs)
        tar = os.path.join(work, "rootfs.tar")
        sh(["tar", "-C", rootfs, "-cf", tar, "."])
        sh([HULL, "import", tar, "busybox:bench"], env=env)
        host = next(
            (l.split(":", 1)[1].strip() for l in sh([HULL, "info"], env=env).stdout.splitlines()
             if l.startswith("Hypervisor:")), "unknown")
        print(f"host: {host}; {os.cpu_count()} CPUs")

        t = timed([HULL, "run", "--rm", "busybox:bench", "true"], env=cold_env)
        print(f"first run (rootfs preparation + cold boot): {t:.2f} s")
        t = timed([HULL, "run", "--rm", "busybox:bench", "true"], env=env)
        print(f"first fast-path run (template boot + snapshot + restore): {t:.2f} s")
        t = timed([HULL, "run", "--rm", "busybox:bench", "true"], env=smp_env)
        print(f"first fast-path run, SMP kernel (its own template and snapshots): {t:.2f} s")

        bundle = os.path.join(work, "bundle")
        sh([runc, "spec", "--rootless"] if os.geteuid() else [runc, "spec"], env=None)
        shutil.move("config.json", os.path.join(bundle, "config.json"))
        with open(os.path.join(bundle, "config.json")) as f:
            spec = json.load(f)
        spec["process"]["args"] = ["true"]
        spec["process"]["terminal"] = False
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(spec, f)

        results = {"cold": [], "fast": [], "smp": [], "runc": []}
        for i in range(max(args.runs, cold_runs)):
            if i < cold_runs:
                results["cold"].append(
                    timed([HULL, "run", "--rm", "busybox:bench", "true"], env=cold_env))
            if i < args.runs:
                results["fast"].append(
                    timed([HULL, "run", "--rm", "busybox:bench", "true"], env=env))
                results["smp"].append(
                    timed([HULL, "run", "--rm", "busybox:bench", "true"], env=smp_env))
                results["runc"].append(
                    timed([runc, "run", "--bundle", bundle, f"bench-{os.getpid()}-{i}"]))
        med = {k: statistics.median(v) for k, v in results.items()}
        for k, v in results.items():
            print(f"{k:5s} median {med[k]*1000:9.1f} ms  runs: "
                  + " ".join(f"{x*1000:.0f}" for x in v))
        print(f"fast / cold  = {med['fast']/med['cold']:.3f}")
        print(f"fast / smp   = {med['fast']/med['smp']:.3f}  (uniprocessor vs SMP guest kernel)")
        print(f"fast / {os.path.basename(runc)} = {med['fast']/med['runc']:.1f}")
        print(f"cold / {os.path.basename(runc)} = {med['cold']/med['runc']:.1f}")
        print_breakdown(breakdown(env), med["runc"])

        for label, e, n in [("fast", env, args.idle), ("cold", cold_env, args.idle_cold)]:
            if n <= 0:
                continue
            started, pss, rss = idle(e, n, label)
            print(f"{n} idle {label} containers: started in {started:.1f} s; VMM PSS "
                  f"{pss/1024:.1f} MiB total, {pss/1024/n:.1f} MiB each; RSS "
                  f"{rss/1024:.1f} MiB total, {rss/1024/n:.1f} MiB each")
    finally:
        sh([HULL, "system", "prune"], env=env, check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
