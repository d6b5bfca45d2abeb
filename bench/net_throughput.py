#!/usr/bin/env python3
"""TCP throughput container -> host through the default network (virtio-net
+ passt), against the same client and server on host loopback, in one run.

A sink server on the host's 127.0.0.1 reads exactly N MiB per connection and
times from the first byte to the last. The client is busybox
`dd if=/dev/zero | nc`:
  * on the host, to 127.0.0.1 (the peer: plain loopback TCP);
  * in a container on the default network, to the gateway 10.0.2.2, which
    passt maps to the host's loopback (guest TCP stack -> virtio-net ->
    the VMM -> passt's socket pair -> passt's host socket).
Connection set-up latency is measured the same way with 0-byte transfers
(time from `nc` start in the guest is not visible to the host, so it is the
time from accept to EOF of an empty connection, plus the guest's own
`time` of a connect-and-close).

One container serves every run. Prints medians and the ratio.

Usage: bench/net_throughput.py [--runs 5] [--mib 8]
Needs target/release/hull, kernel and agent (scripts/build-all),
busybox-static, passt.
"""
import argparse, os, shutil, socket, statistics, subprocess, sys, tempfile, threading, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HULL = os.path.join(REPO, "target/release/hull")
BUSYBOX = "/bin/busybox"


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
    hull(root, "import", tar, "bench-net:1")
    shutil.rmtree(d)


class Sink:
    """Accepts connections on 127.0.0.1; each reads `expect` bytes and
    records (seconds from first to last byte, bytes)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.results = []
        self.expect = 0
        self.done = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            conn, _ = self.sock.accept()
            accepted = time.monotonic()
            got, first = 0, None
            conn.settimeout(600)
            try:
                while got < self.expect:
                    b = conn.recv(1 << 20)
                    if not b:
                        break
                    if first is None:
                        first = time.monotonic()
                    got += len(b)
            except OSError:
                pass
            end = time.monotonic()
            conn.close()
            self.results.append((end - (first or accepted), got, end - accepted))
            self.done.set()

    def run(self, expect, start_client, timeout=300):
        self.expect = expect
        self.done.clear()
        client = start_client()
        start, exited = time.monotonic(), None
        while not self.done.wait(1):
            if exited is None and client.poll() is not None:
                exited = time.monotonic()
            # A client that ended without a transfer, or one taking too long.
            if (exited and time.monotonic() - exited > 10) or time.monotonic() - start > timeout:
                client.kill()
                sys.exit(f"no transfer finished (client exit status {client.poll()})")
        client.wait()
        secs, got, _ = self.results[-1]
        if got != expect:
            sys.exit(f"transfer incomplete: {got} of {expect} bytes")
        return secs


def client_cmd(host, port, mib):
    bb = BUSYBOX if host == "127.0.0.1" else "busybox"
    return f"{bb} dd if=/dev/zero bs=65536 count={mib * 16} 2>/dev/null | {bb} nc {host} {port}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mib", type=int, default=8)
    args = ap.parse_args()
    if not os.path.exists(HULL):
        sys.exit("build target/release/hull first (scripts/build-all)")
    root = tempfile.mkdtemp(prefix="hull-bench-net-")
    sink = Sink()
    nbytes = args.mib << 20
    try:
        import_image(root)
        t = time.monotonic()
        hull(root, "run", "-d", "--name", "netbench", "bench-net:1", "sleep", "100000")
        print(f"container up in {time.monotonic() - t:.1f} s", flush=True)
        host, guest = [], []
        for i in range(args.runs):
            # Alternate, so machine load affects both alike.
            h = sink.run(nbytes, lambda: subprocess.Popen(
                ["sh", "-c", client_cmd("127.0.0.1", sink.port, args.mib)]))
            g = sink.run(nbytes, lambda: subprocess.Popen(
                [HULL, "exec", "netbench", "sh", "-c", client_cmd("10.0.2.2", sink.port, args.mib)],
                env=dict(os.environ, HULL_ROOT=root)))
            host.append(nbytes / h / 1e6)
            guest.append(nbytes / g / 1e6)
            print(f"run {i + 1}: host loopback {host[-1]:.1f} MB/s, container via passt {guest[-1]:.2f} MB/s", flush=True)
        hm, gm = statistics.median(host), statistics.median(guest)
        print(f"TCP {args.mib} MiB, median of {args.runs}:")
        print(f"  host loopback (busybox nc -> 127.0.0.1)      {hm:10.2f} MB/s")
        print(f"  container -> host via virtio-net + passt      {gm:10.2f} MB/s")
        print(f"  ratio container/loopback                      {gm / hm:10.4f}")
        # Connection set-up seen from the guest: connect and close, timed
        # by the guest's clock (includes starting nc).
        sink.expect = 0
        out = hull(root, "exec", "netbench", "sh", "-c",
                   f"for i in 1 2 3 4 5; do s=$(date +%s%N); nc 10.0.2.2 {sink.port} </dev/null; e=$(date +%s%N); echo $(( (e - s) / 1000 )); done")
        setups = [int(x) / 1000 for x in out.split()]
        out = subprocess.run(["sh", "-c", f"for i in 1 2 3 4 5; do s=$(date +%s%N); {BUSYBOX} nc 127.0.0.1 {sink.port} </dev/null; e=$(date +%s%N); echo $(( (e - s) / 1000 )); done"],
                             capture_output=True, text=True).stdout
        host_setups = [int(x) / 1000 for x in out.split()]
        print(f"  connect+close, median of 5 (incl. starting nc): container {statistics.median(setups):.1f} ms, host {statistics.median(host_setups):.1f} ms")
    finally:
        hull(root, "rm", "-f", "netbench", check=False)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
