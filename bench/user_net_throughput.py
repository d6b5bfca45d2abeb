#!/usr/bin/env python3
"""TCP throughput container -> container over a hull user network, against
the same client and server in two plain network namespaces joined by a
veth pair (the container model's cost), in one run.

The server is busybox `httpd` serving an N MiB file of zeros; the client is
busybox `wget -O /dev/null`:
  * hull: both in containers on a user network (guest TCP stack ->
    virtio-net -> the VMM -> a tap on the network's bridge -> the other
    VM's tap -> its VMM -> its guest). The client times the fetch with its
    own clock (/proc/uptime before and after), so the `hull exec` round
    trip is not counted;
  * peer: `ip netns exec` of the same busybox in two namespaces this script
    makes (hullbench-a/-b, veth between them), timed on the host.

Both containers serve every run. Prints each run, the medians and the
ratio (hull / veth), and the average ping round trip of each pair. The namespaces, the network and the containers are
removed at the end.

Usage: bench/user_net_throughput.py [--runs 5] [--mib 4]
Needs a hull binary (HULL_BIN, default target/release/hull), kernel and
agent (scripts/build-all), busybox-static, aardvark-dns, iproute2.
"""
import argparse, os, shutil, statistics, subprocess, sys, tempfile, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HULL = os.environ.get("HULL_BIN", os.path.join(REPO, "target/release/hull"))
BUSYBOX = "/bin/busybox"
NS_A, NS_B = "hullbench-a", "hullbench-b"


def hull(root, *args, check=True):
    out = subprocess.run([HULL, *args], env=dict(os.environ, HULL_ROOT=root),
                         capture_output=True, text=True)
    if check and out.returncode != 0:
        sys.exit(f"hull {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def import_image(root):
    d = tempfile.mkdtemp()
    for sub in ("bin", "etc", "proc", "dev", "sys", "tmp"):
        os.makedirs(os.path.join(d, sub))
    shutil.copy(BUSYBOX, os.path.join(d, "bin/busybox"))
    for applet in subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True).stdout.split():
        if applet != "busybox":
            os.symlink("busybox", os.path.join(d, "bin", applet))
    tar = os.path.join(tempfile.mkdtemp(), "rootfs.tar")
    subprocess.run(["tar", "-C", d, "-cf", tar, "."], check=True)
    hull(root, "import", tar, "bench-unet:1")
    shutil.rmtree(d)


def hull_runs(root, mib, runs):
    """Seconds per fetch between two containers on a user network."""
    hull(root, "network", "create", "benchnet")
    hull(root, "run", "-d", "--name", "srv", "--network", "benchnet", "bench-unet:1", "sh", "-c",
         f"mkdir -p /www && dd if=/dev/zero of=/www/blob bs=64k count={mib * 16} 2>/dev/null"
         " && exec httpd -f -p 80 -h /www")
    hull(root, "run", "-d", "--name", "cli", "--network", "benchnet", "bench-unet:1",
         "sleep", "100000")
    # The server writes its file before it listens: wait for a whole fetch.
    deadline = time.time() + 600
    fetch = ("a=$(cut -d' ' -f1 /proc/uptime); wget -q -O /dev/null http://srv/blob || exit 1;"
             " b=$(cut -d' ' -f1 /proc/uptime); echo $a $b")
    while hull(root, "exec", "cli", "sh", "-c", fetch, check=False) == "":
        if time.time() > deadline:
            sys.exit("the server container never served its file")
        time.sleep(2)
    out = []
    for i in range(runs):
        a, b = map(float, hull(root, "exec", "cli", "sh", "-c", fetch).split())
        out.append(b - a)
        print(f"  hull run {i + 1}: {mib / (b - a):.2f} MiB/s ({b - a:.2f} s)", flush=True)
    rtt = ping_rtt(hull(root, "exec", "cli", "ping", "-q", "-c", str(PINGS), "srv"))
    print(f"  hull ping srv: average {rtt:.3f} ms", flush=True)
    return out, rtt


PINGS = 10


def ping_rtt(out):
    """busybox ping -q's average round trip (ms)."""
    line = next(l for l in out.splitlines() if "round-trip" in l)
    return float(line.split("=")[1].split("/")[1])


def ns(*args):
    subprocess.run(["ip", *args], check=True)


def veth_runs(mib, runs):
    """Seconds per fetch between two namespaces joined by veth."""
    www = tempfile.mkdtemp()
    with open(os.path.join(www, "blob"), "wb") as f:
        f.write(b"\0" * (mib << 20))
    ns("netns", "add", NS_A)
    ns("netns", "add", NS_B)
    server = None
    try:
        ns("-n", NS_A, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", NS_B)
        for name, dev, addr in ((NS_A, "va", "10.123.0.1/24"), (NS_B, "vb", "10.123.0.2/24")):
            ns("-n", name, "addr", "add", addr, "dev", dev)
            ns("-n", name, "link", "set", dev, "up")
            ns("-n", name, "link", "set", "lo", "up")
        server = subprocess.Popen(["ip", "netns", "exec", NS_A, BUSYBOX, "httpd", "-f", "-p", "80",
                                   "-h", www])
        time.sleep(0.5)
        out = []
        for i in range(runs):
            t = time.monotonic()
            subprocess.run(["ip", "netns", "exec", NS_B, BUSYBOX, "wget", "-q", "-O", "/dev/null",
                            "http://10.123.0.1/blob"], check=True)
            out.append(time.monotonic() - t)
            print(f"  veth run {i + 1}: {mib / out[-1]:.1f} MiB/s", flush=True)
        ping = subprocess.run(["ip", "netns", "exec", NS_B, BUSYBOX, "ping", "-q", "-c", str(PINGS),
                               "10.123.0.1"], capture_output=True, text=True, check=True).stdout
        rtt = ping_rtt(ping)
        print(f"  veth ping: average {rtt:.3f} ms", flush=True)
        return out, rtt
    finally:
        if server:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "del", NS_A])
        subprocess.run(["ip", "netns", "del", NS_B])
        shutil.rmtree(www)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--mib", type=int, default=4)
    a = p.parse_args()
    root = tempfile.mkdtemp(prefix="hull-bench-unet-")
    try:
        import_image(root)
        print(f"{a.mib} MiB over a hull user network, {a.runs} runs:", flush=True)
        h, h_rtt = hull_runs(root, a.mib, a.runs)
        print(f"{a.mib} MiB over veth between two namespaces, {a.runs} runs:", flush=True)
        v, v_rtt = veth_runs(a.mib, a.runs)
    finally:
        hull(root, "rm", "-f", "srv", "cli", check=False)
        hull(root, "network", "rm", "benchnet", check=False)
        shutil.rmtree(root, ignore_errors=True)
    hm, vm = a.mib / statistics.median(h), a.mib / statistics.median(v)
    print(f"median: hull user network {hm:.2f} MiB/s, veth {vm:.1f} MiB/s, ratio {hm / vm:.4f}")
    print(f"round trip ({PINGS} pings): hull {h_rtt:.3f} ms, veth {v_rtt:.3f} ms, "
          f"ratio {h_rtt / v_rtt:.0f}x")


if __name__ == "__main__":
    main()
