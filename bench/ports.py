#!/usr/bin/env python3
"""Published ports (`hull run -p`) against the same server reached directly
on host loopback, in one run:

  * throughput of a large download: busybox httpd serving an N MiB file in
    a container, fetched through `-p`, vs the same busybox httpd serving the
    same file on the host's 127.0.0.1;
  * small requests (a 20-byte file): requests per second one after another
    and C at once, and the latency `-p` adds per request (median minus the
    host's median);
  * the forwarder's own connection set-up: a published port where nothing
    listens in the container, so the agent's dial is refused; time until the
    client sees its connection end;
  * for scale, the same download with the client inside the guest (busybox
    wget, timed by the guest's clock; includes starting wget).

One VM boot serves every run. Prints medians and ratios.

Usage: bench/ports.py [--runs 5] [--mib 2] [--requests 20] [--parallel 20]
Needs target/release/hull, kernel and agent (scripts/build-all),
busybox-static.
"""
import argparse, os, shutil, socket, statistics, subprocess, sys, tempfile, threading, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HULL = os.path.join(REPO, "target/release/hull")
INDEX = b"hello through vsock\n"


def web_root(path, mib):
    os.makedirs(path)
    with open(os.path.join(path, "index.html"), "wb") as f:
        f.write(INDEX)
    with open(os.path.join(path, "big"), "wb") as f:
        f.write(os.urandom(mib << 20))


def import_image(root, www):
    d = tempfile.mkdtemp()
    for sub in ("bin", "etc", "proc", "dev", "sys", "tmp"):
        os.makedirs(os.path.join(d, sub))
    shutil.copy("/bin/busybox", os.path.join(d, "bin/busybox"))
    for applet in subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True).stdout.split():
        if applet != "busybox":
            os.symlink("busybox", os.path.join(d, "bin", applet))
    shutil.copytree(www, os.path.join(d, "www"))
    tar = os.path.join(tempfile.mkdtemp(), "rootfs.tar")
    subprocess.run(["tar", "-C", d, "-cf", tar, "."], check=True)
    hull(root, "import", tar, "bench-web:1")
    shutil.rmtree(d)


def hull(root, *args):
    out = subprocess.run([HULL, *args], env=dict(os.environ, HULL_ROOT=root),
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"hull {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def get(port, path):
    """GET over HTTP/1.0; returns (seconds, body)."""
    t = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        chunks = []
        while True:
            b = s.recv(1 << 16)
            if not b:
                break
            chunks.append(b)
    reply = b"".join(chunks)
    head, _, body = reply.partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n")[0]:
        raise RuntimeError(f"bad reply on port {port}: {head[:80]!r}")
    return time.monotonic() - t, body


def wait_ready(port, timeout=300):
    start = time.monotonic()
    while True:
        try:
            return get(port, "/index.html")
        except (OSError, RuntimeError):
            if time.monotonic() - start > timeout:
                raise
            time.sleep(0.5)


def refused_connection(port):
    t = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as s:
        try:
            s.recv(1)
        except ConnectionResetError:
            pass
    return time.monotonic() - t


def parallel(port, n):
    errors = []

    def one():
        try:
            _, body = get(port, "/index.html")
            if body != INDEX:
                errors.append("wrong body")
        except Exception as e:  # noqa: BLE001 - counted and reported
            errors.append(str(e))

    threads = [threading.Thread(target=one) for _ in range(n)]
    t = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        sys.exit(f"{len(errors)} of {n} parallel requests failed: {errors[0]}")
    return n / (time.monotonic() - t)


def measure(port, big, args):
    rates = []
    for _ in range(args.runs):
        secs, body = get(port, "/big")
        if body != big:
            sys.exit(f"download through port {port} differs ({len(body)} bytes)")
        rates.append(len(body) / secs / (1 << 20))
    lat = []
    for _ in range(args.requests):
        secs, body = get(port, "/index.html")
        if body != INDEX:
            sys.exit("wrong small body")
        lat.append(secs)
    par = [parallel(port, args.parallel) for _ in range(max(1, args.runs // 2))]
    return statistics.median(rates), statistics.median(lat), statistics.median(par)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mib", type=int, default=2)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--parallel", type=int, default=20)
    args = ap.parse_args()
    for need in (HULL, "/bin/busybox"):
        if not os.path.exists(need):
            sys.exit(f"missing {need} (scripts/build-all; busybox-static)")

    work = tempfile.mkdtemp(prefix="hull-bench-ports-")
    root = os.path.join(work, "root")
    www = os.path.join(work, "www")
    web_root(www, args.mib)
    with open(os.path.join(www, "big"), "rb") as f:
        big = f.read()
    host_httpd = None
    try:
        import_image(root, www)
        t = time.monotonic()
        hull(root, "run", "-d", "--name", "bench-web", "-p", "127.0.0.1::80", "-p", "127.0.0.1::81",
             "bench-web:1", "httpd", "-f", "-p", "80", "-h", "/www")
        ports = {}
        for line in hull(root, "port", "bench-web").splitlines():
            ctr, _, addr = line.partition(" -> ")
            ports[ctr] = int(addr.rsplit(":", 1)[1])
        vm_port, closed_port = ports["80/tcp"], ports["81/tcp"]
        wait_ready(vm_port)
        print(f"container up and answering after {time.monotonic() - t:.1f} s (includes rootfs preparation)")

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            host_port = s.getsockname()[1]
        host_httpd = subprocess.Popen(["/bin/busybox", "httpd", "-f", "-p", f"127.0.0.1:{host_port}", "-h", www])
        wait_ready(host_port, 10)

        # Warm both (page cache in the guest, first fork of httpd).
        get(vm_port, "/big")
        get(host_port, "/big")
        vm = measure(vm_port, big, args)
        host = measure(host_port, big, args)
        setup = statistics.median(refused_connection(closed_port) for _ in range(args.requests))
        guest = hull(root, "exec", "bench-web", "sh", "-c",
                     "a=$(cut -d' ' -f1 /proc/uptime); wget -q -O /dev/null http://127.0.0.1/big; "
                     "b=$(cut -d' ' -f1 /proc/uptime); echo $a $b").split()
        in_guest = args.mib / (float(guest[1]) - float(guest[0]))
    finally:
        if host_httpd:
            host_httpd.kill()
            host_httpd.wait()
        subprocess.run([HULL, "rm", "-f", "bench-web"], env=dict(os.environ, HULL_ROOT=root),
                       capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    print(f"download {args.mib} MiB, median of {args.runs}:")
    print(f"  through -p          {vm[0]:10.3f} MiB/s")
    print(f"  host loopback       {host[0]:10.3f} MiB/s")
    print(f"  ratio -p/host       {vm[0] / host[0]:10.5f}   (goal >= 0.7)")
    print(f"  client in the guest {in_guest:10.3f} MiB/s   (one run; -p/in-guest {vm[0] / in_guest:.2f})")
    print(f"small requests, {args.requests} one after another (median latency):")
    print(f"  through -p          {vm[1] * 1000:10.1f} ms   ({1 / vm[1]:.2f} req/s)")
    print(f"  host loopback       {host[1] * 1000:10.1f} ms   ({1 / host[1]:.1f} req/s)")
    print(f"  ratio req/s         {host[1] / vm[1]:10.5f}")
    print(f"  added per request   {(vm[1] - host[1]) * 1000:10.1f} ms")
    print(f"small requests, {args.parallel} at once (median of {max(1, args.runs // 2)}):")
    print(f"  through -p          {vm[2]:10.2f} req/s")
    print(f"  host loopback       {host[2]:10.1f} req/s")
    print(f"  ratio               {vm[2] / host[2]:10.5f}")
    print(f"forwarder set-up alone (nothing listens in the container): median {setup * 1000:.1f} ms until the client sees EOF")


if __name__ == "__main__":
    main()
