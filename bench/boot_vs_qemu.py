#!/usr/bin/env python3
"""Boot-to-agent-ready: hull's VMM vs QEMU microvm, same kernel, initramfs
and command line, alternating runs, median of N. Also the VMM's own RSS
(everything but guest memory) sampled when the agent is ready.

Usage: bench/boot_vs_qemu.py [--runs 5] [--memory 128]
Needs: target/release/hull, the guest kernel, the agent (scripts/build-all).
"""
import argparse, glob, os, re, shutil, statistics, subprocess, sys, tempfile, time

READY = re.compile(rb"hull-agent: ready version=\S+ uptime=([0-9.]+)")


def own_rss_kib(pid, guest_kib):
    """(RSS, private RSS) of `pid` in KiB, excluding the mapping(s) that hold
    guest memory. Private excludes pages shared with other processes (libc)."""
    total, private, size = 0, 0, None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if line.startswith("Size:"):
                size = int(line.split()[1])
            elif size != guest_kib and line.startswith("Rss:"):
                total += int(line.split()[1])
            elif size != guest_kib and line.startswith(("Private_Clean:", "Private_Dirty:")):
                private += int(line.split()[1])
    return total, private


def timed_boot(argv, guest_kib, env=None):
    """Runs argv until the agent-ready line; returns (seconds, guest uptime, rss KiB)."""
    start = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    ready_at = uptime = rss = None
    for line in p.stdout:
        m = READY.search(line)
        if m and ready_at is None:
            ready_at = time.monotonic() - start
            uptime = float(m.group(1))
            rss = own_rss_kib(p.pid, guest_kib)
    p.wait(timeout=120)
    if ready_at is None:
        sys.exit(f"no agent ready line from {argv[0]} (exit {p.returncode})")
    return ready_at, uptime, rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--memory", type=int, default=128, help="MiB")
    args = ap.parse_args()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    hull = os.path.join(repo, "target/release/hull")
    root = tempfile.mkdtemp(prefix="hull-bench-")
    env = dict(os.environ, HULL_ROOT=root)
    # One hull boot to learn the exact command line and build the initramfs.
    out = subprocess.run([hull, "--debug", "debug", "boot", "--memory", f"{args.memory}m"],
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"hull debug boot failed: {out.stderr.strip()}")
    cmdline = re.search(r"command line: (.*)", out.stderr).group(1).strip()
    kernel = re.search(r"Kernel: (\S+)", subprocess.run([hull, "info"], env=env, capture_output=True, text=True).stdout).group(1)
    initrd = glob.glob(os.path.join(root, "cache", "initramfs-*.cpio"))[0]
    guest_kib = args.memory * 1024
    if not shutil.which("qemu-system-x86_64"):
        sys.exit("bench: qemu-system-x86_64 is missing: apt-get install qemu-system-x86 "
                 "(not in scripts/apt-packages-test: it conflicts with backports' qemu-utils)")
    qemu = ["qemu-system-x86_64", "-M", "microvm,acpi=off", "-enable-kvm",
            "-cpu", "host,-arch-capabilities", "-m", str(args.memory), "-smp", "1",
            "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
            "-device", "i8042", "-no-reboot",
            "-kernel", kernel, "-initrd", initrd, "-append", cmdline]
    hull_cmd = [hull, "debug", "boot", "--memory", f"{args.memory}m"]
    res = {"hull": [], "qemu": []}
    for i in range(args.runs):
        for name, argv in (("hull", hull_cmd), ("qemu", qemu)):
            r = timed_boot(argv, guest_kib, env)
            res[name].append(r)
            print(f"run {i + 1} {name}: ready {r[0]:.2f} s (guest uptime {r[1]:.2f} s), "
                  f"VMM RSS excl. guest memory {r[2][0] / 1024:.1f} MiB "
                  f"(private {r[2][1] / 1024:.1f} MiB)", flush=True)
    med = {k: [statistics.median(x[0] for x in v), statistics.median(x[1] for x in v),
               statistics.median(x[2][0] for x in v), statistics.median(x[2][1] for x in v)]
           for k, v in res.items()}
    print(f"\nkernel {kernel}\ncmdline {cmdline}\nguest memory {args.memory} MiB, {args.runs} runs each")
    for k in ("hull", "qemu"):
        print(f"{k:5}: median ready {med[k][0]:.2f} s, guest uptime at agent ready {med[k][1]:.2f} s, "
              f"VMM RSS excl. guest {med[k][2] / 1024:.1f} MiB, private {med[k][3] / 1024:.1f} MiB")
    print(f"ratio hull/qemu boot-to-ready: {med['hull'][0] / med['qemu'][0]:.2f} (goal <= 0.8)")


if __name__ == "__main__":
    main()
