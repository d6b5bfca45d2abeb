#!/usr/bin/env python3
"""virtio-vsock and virtio-blk throughput, each against a host peer measured
in the same run:

  * vsock stream host->guest (a process's stdin through the hybrid vsock
    socket, read by `dd` in the guest) vs loopback TCP on the host (the same
    bytes written to a socat reader on 127.0.0.1);
  * virtio-blk sequential read in the guest (`dd if=/dev/vdb bs=1M`, timed by
    the guest's /proc/uptime) vs host `dd` of the same file.

One VM boot serves all vsock runs (a single long-lived reader) and one more
all block runs. Prints medians and ratios.

Usage: bench/devices.py [--runs 5] [--vsock-mib 64] [--blk-mib 8]
Needs target/release/hull, kernel and agent (scripts/build-all), socat,
busybox-static, mkfs.ext4.
"""
import argparse, os, re, shutil, socket, stat, statistics, subprocess, sys, tempfile, time

HULL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "target/release/hull")


def busybox_rootfs(path):
    d = tempfile.mkdtemp()
    for sub in ("bin", "etc", "proc", "dev", "sys", "tmp"):
        os.makedirs(os.path.join(d, sub))
    shutil.copy("/bin/busybox", os.path.join(d, "bin/busybox"))
    for applet in subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True).stdout.split():
        if applet != "busybox":
            os.symlink("busybox", os.path.join(d, "bin", applet))
    # The root is mounted read-only with nothing on /dev: dd needs /dev/null.
    os.mknod(os.path.join(d, "dev/null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", d, path, "16M"], check=True)
    shutil.rmtree(d)


def hull_run(root, rootfs, extra, cmd, **kw):
    argv = [HULL, "debug", "run", "--disk", f"{rootfs}:ro", "--mount", "/dev/vda:/mnt/root:ro",
            *extra, "--chroot", "/mnt/root", "--", *cmd]
    return subprocess.Popen(argv, env=dict(os.environ, HULL_ROOT=root), **kw)


def vsock_runs(root, rootfs, runs, mib):
    chunk = b"\0" * (1 << 20)
    warmup = 8  # MiB: more than every buffer on the way, so dd is reading
    p = hull_run(root, rootfs, ["-i"], ["/bin/dd", "of=/dev/null", "bs=65536"],
                 stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(warmup):
        p.stdin.write(chunk)
    p.stdin.flush()
    rates = []
    for _ in range(runs):
        t = time.monotonic()
        for _ in range(mib):
            p.stdin.write(chunk)
        p.stdin.flush()
        rates.append(mib / (time.monotonic() - t))
    p.stdin.close()
    p.wait(timeout=600)
    return rates


def tcp_runs(runs, mib):
    chunk = b"\0" * (1 << 20)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reader = subprocess.Popen(["socat", "-u", f"TCP-LISTEN:{port},reuseaddr", "OPEN:/dev/null"])
    for _ in range(100):
        try:
            conn = socket.create_connection(("127.0.0.1", port))
            break
        except OSError:
            time.sleep(0.05)
    rates = []
    for _ in range(runs):
        t = time.monotonic()
        for _ in range(mib):
            conn.sendall(chunk)
        rates.append(mib / (time.monotonic() - t))
    conn.close()
    reader.wait(timeout=30)
    return rates


def blk_runs(root, rootfs, runs, mib, disk):
    script = "; ".join(
        f"cat /proc/uptime; dd if=/dev/vdb of=/dev/null bs=1M count={mib} iflag=direct 2>/dev/null; cat /proc/uptime"
        for _ in range(runs))
    p = hull_run(root, rootfs, ["--disk", f"{disk}:ro", "--mount", "proc:/mnt/root/proc"], ["/bin/sh", "-c", script],
                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out, _ = p.communicate(timeout=3600)
    ups = [float(line.split()[0]) for line in out.splitlines() if re.match(r"^[0-9.]+ ", line)]
    # O_DIRECT: every run reads through virtio-blk, not the guest page cache.
    return [mib / (ups[i + 1] - ups[i]) for i in range(0, len(ups) - 1, 2)]


def host_dd(disk, runs, mib):
    rates = []
    for _ in range(runs):
        t = time.monotonic()
        # The host reads the same file as the VMM does: through its page cache.
        subprocess.run(["dd", f"if={disk}", "of=/dev/null", "bs=1M", f"count={mib}"],
                       check=True, capture_output=True)
        rates.append(mib / (time.monotonic() - t))
    return rates


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--vsock-mib", type=int, default=64)
    ap.add_argument("--blk-mib", type=int, default=8)
    ap.add_argument("--only", choices=["vsock", "blk"], help="run one of the two benchmarks")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="hull-bench-")
    rootfs = os.path.join(root, "busybox.ext4")
    busybox_rootfs(rootfs)
    disk = os.path.join(root, "data.img")
    with open(disk, "wb") as f:
        f.write(os.urandom(args.blk_mib << 20))

    if args.only != "blk":
        v = vsock_runs(root, rootfs, args.runs, args.vsock_mib)
        t = tcp_runs(args.runs, args.vsock_mib)
        print(f"vsock host->guest: {', '.join(f'{x:.1f}' for x in v)} MiB/s; median {statistics.median(v):.1f}")
        print(f"loopback TCP     : {', '.join(f'{x:.1f}' for x in t)} MiB/s; median {statistics.median(t):.1f}")
        print(f"ratio vsock/TCP: {statistics.median(v) / statistics.median(t):.4f}")
    if args.only == "vsock":
        return
    b = blk_runs(root, rootfs, args.runs, args.blk_mib, disk)
    h = host_dd(disk, args.runs, args.blk_mib)
    print(f"virtio-blk read in guest: {', '.join(f'{x:.2f}' for x in b)} MiB/s; median {statistics.median(b):.2f}")
    print(f"host dd of the same file: {', '.join(f'{x:.0f}' for x in h)} MiB/s; median {statistics.median(h):.0f}")
    print(f"ratio guest/host read: {statistics.median(b) / statistics.median(h):.5f}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
