#!/usr/bin/env python3
"""The guest kernel's memory-op doorbell (issue 22): on vs off in one run.

For each setting MASK[+WORD...] (MASK: HULL_PVM_MEMOPS, a bit mask of the
guest kernel's hooks: 1 clear_page, 2 copy_page, 4 copy_to/from_user; 0 =
doorbell off; WORDs: more guest kernel words, e.g. 7+hull_vsock_rx_buf=64K
or 7+hull_vsock_rx_buf=4K when hull passes a bigger one), in one
fresh hull root with a busybox image holding tests/support/memops-bench.c
(static, gcc) and a random file served by busybox httpd:

- guest-side figures from memops-bench in a container: first touch of an
  anonymous page (us), write() and read() of a --file-mib MiB file in the
  page cache (MB/s, 64 KiB calls), a pipe between two processes (MB/s);
- vsock host -> guest: `hull exec -i C dd of=/dev/null bs=64k` fed
  --stream-mib MiB on stdin (dd reads the vsock stream itself), minus the
  same exec fed nothing (MiB/s);
- `-p` download: the random --http-mib MiB file fetched from busybox httpd
  in the container through a published port (MB/s);
- image preparation (`hull debug prepare --no-cache`) of the busybox image
  and, with --python, the python-minimal test image (tests/support/
  make-debian-image; needs the Debian mirror or its cache);
- warm `hull run --rm IMAGE true` (median of --runs; the first run of each
  setting makes its snapshots and is reported apart);
- with --boot-bench, the guest kernel's own timing of the doorbell against
  its native loops at boot (`hull debug boot --append hull_pvm_memops_bench`).

Settings alternate run by run, so machine load drifts hit both alike; each
figure is the median of --runs.

Usage: bench/memops.py [--runs 3] [--settings 0,7] [--file-mib 16]
                       [--fault-pages 256] [--stream-mib 8] [--http-mib 4]
                       [--python] [--boot-bench]
Env:   HULL=/path/to/hull (default target/release/hull), HULL_KERNEL,
       HULL_AGENT as for hull itself (eval "$(./scripts/build-all)").
Needs: gcc (static libc), tar, busybox-static.
"""
import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAKE_IMAGE = os.path.join(REPO, "tests", "support", "make-debian-image")
IMAGE = "memops:bench"
GUEST_KEYS = [
    ("fault_us", "anonymous page fault (us)"),
    ("write_mbs", "write() into the page cache (MB/s)"),
    ("read_mbs", "read() of a page-cached file (MB/s)"),
    ("pipe_mbs", "pipe (MB/s)"),
]


def die(msg):
    sys.exit(f"memops: {msg}")


def sh(argv, env=None, check=True, stdin=None):
    p = subprocess.run(argv, capture_output=True, input=stdin,
                       stdin=None if stdin is not None else subprocess.DEVNULL, env=env)
    if check and p.returncode != 0:
        die(f"{' '.join(argv)} failed ({p.returncode}): "
            f"{p.stderr.decode(errors='replace').strip()[-400:]}")
    return p


def timed(argv, env, stdin=None):
    t = time.monotonic()
    sh(argv, env=env, stdin=stdin)
    return time.monotonic() - t


def make_image(hull, env, work, http_mib):
    rootfs = os.path.join(work, "rootfs")
    for d in ["bin", "tmp", "proc", "dev", "sys", "etc", "www"]:
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(rootfs, "bin/busybox"))
    with open(os.path.join(rootfs, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    with open(os.path.join(rootfs, "etc/group"), "w") as f:
        f.write("root:x:0:\n")
    for applet in ["sh", "dmesg", "grep", "true", "cat", "dd", "httpd", "sleep"]:
        os.symlink("busybox", os.path.join(rootfs, "bin", applet))
    with open(os.path.join(rootfs, "www/big"), "wb") as f:
        f.write(os.urandom(http_mib << 20))
    sh(["gcc", "-static", "-O2", "-o", os.path.join(rootfs, "memops_bench"),
        os.path.join(REPO, "tests/support/memops-bench.c")])
    tar = os.path.join(work, "rootfs.tar")
    sh(["tar", "-C", rootfs, "-cf", tar, "."])
    sh([hull, "import", tar, IMAGE], env=env)


def import_python_image(hull, env, work):
    out = os.path.join(work, "python-minimal.tar.zst")
    r = subprocess.run([MAKE_IMAGE, "python-minimal", out], capture_output=True, text=True)
    if r.returncode != 0:
        lines = r.stderr.strip().splitlines()
        die(f"make-debian-image python-minimal (needs the Debian mirror or its cache): "
            f"{lines[-1] if lines else 'failed'}")
    sh([hull, "import", out, "memops:python"], env=env)
    return "memops:python"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def download_mbs(port, size):
    """One fetch of /big through the published port, in MB/s."""
    deadline = time.monotonic() + 30
    while True:
        try:
            t = time.monotonic()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/big", timeout=60) as r:
                body = r.read()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    if len(body) != size:
        die(f"download through -p gave {len(body)} bytes, not {size}")
    return size / (time.monotonic() - t) / 1e6


def stream_figures(hull, envs, settings, args):
    """vsock and -p figures from one running container per setting."""
    names, ports = {}, {}
    vsock = {s: [] for s in settings}
    http = {s: [] for s in settings}
    data = os.urandom(args.stream_mib << 20)
    try:
        for i, s in enumerate(settings):
            names[s], ports[s] = f"memops-bench-{i}", free_port()
            sh([hull, "run", "-d", "--name", names[s], "-p", f"127.0.0.1:{ports[s]}:80",
                IMAGE, "httpd", "-f", "-p", "80", "-h", "/www"], env=envs[s])
        for _ in range(args.runs):
            for s in settings:
                # stdin is the vsock stream itself (the agent hands it over, no pipe)
                sink = [hull, "exec", "-i", names[s], "dd", "of=/dev/null", "bs=64k"]
                empty = timed(sink, envs[s], stdin=b"")
                full = timed(sink, envs[s], stdin=data)
                vsock[s].append(len(data) / (1 << 20) / max(full - empty, 1e-3))
                http[s].append(download_mbs(ports[s], args.http_mib << 20))
    finally:
        for s, name in names.items():
            sh([hull, "rm", "-f", name], env=envs[s], check=False)
    return vsock, http


def prepare_seconds(hull, env, image):
    out = sh([hull, "debug", "prepare", "--no-cache", image], env=env).stdout
    try:
        stats = json.loads(out)
    except json.JSONDecodeError:
        die(f"hull debug prepare printed no JSON: {out[:200]!r}")
    return stats["total_seconds"]


def guest_figures(hull, env, args):
    out = sh([hull, "run", "--rm", IMAGE, "sh", "-c",
              f"dmesg | grep hull_memops:; /memops_bench /tmp {args.file_mib} {args.fault_pages}"],
             env=env).stdout.decode()
    figures = {k: float(v) for k, v in re.findall(r"^(\w+) ([\d.]+)$", out, re.M)}
    m = re.search(r"hooks (0x[0-9a-f]+), user copies from (\d+)", out)
    hooks = f"hooks {m.group(1)}, user copies >= {m.group(2)} B" if m else "doorbell off"
    return figures, hooks


def setting_env(base_env, setting):
    """The environment of a setting "MASK[+WORD...]": HULL_PVM_MEMOPS=MASK
    and the WORDs as extra guest kernel words (HULL_KERNEL_ARGS)."""
    mask, *words = setting.split("+")
    env = dict(base_env, HULL_PVM_MEMOPS=mask)
    if words:
        env["HULL_KERNEL_ARGS"] = " ".join(words)
    return env


def print_table(settings, rows):
    print("| figure | " + " | ".join(f"memops={s}" for s in settings) + " | last/first |")
    print("|" + "---|" * (len(settings) + 2))
    for label, vals in rows:
        cells = " | ".join("-" if v is None else f"{v:.2f}" for v in vals)
        ratio = f"{vals[-1] / vals[0]:.2f}x" if vals[0] and vals[-1] else "-"
        print(f"| {label} | {cells} | {ratio} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--settings", default="0,7")
    ap.add_argument("--file-mib", type=int, default=16)
    ap.add_argument("--fault-pages", type=int, default=256)
    ap.add_argument("--stream-mib", type=int, default=8)
    ap.add_argument("--http-mib", type=int, default=4)
    ap.add_argument("--min", type=int, help="HULL_PVM_MEMOPS_MIN (bytes)")
    ap.add_argument("--python", action="store_true", help="also prepare the python-minimal image")
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
    envs = {s: setting_env(base_env, s) for s in settings}
    try:
        make_image(hull, base_env, work, args.http_mib)
        images = [IMAGE] + ([import_python_image(hull, base_env, work)] if args.python else [])
        first, warm = {}, {s: [] for s in settings}
        for s in settings:
            first[s] = timed([hull, "run", "--rm", IMAGE, "true"], envs[s])
        for _ in range(args.runs):
            for s in settings:
                warm[s].append(timed([hull, "run", "--rm", IMAGE, "true"], envs[s]))
        prep = {(s, i): [] for s in settings for i in images}
        for _ in range(args.runs):
            for i in images:
                for s in settings:
                    prep[(s, i)].append(prepare_seconds(hull, envs[s], i))
        vsock, http = stream_figures(hull, envs, settings, args)
        figures, hooks = {}, {}
        for s in settings:
            figures[s], hooks[s] = guest_figures(hull, envs[s], args)
        boot = {}
        if args.boot_bench:
            for s in settings:
                p = sh([hull, "debug", "boot", "--console", "--append", "hull_pvm_memops_bench"],
                       env=envs[s], check=False)
                text = (p.stdout + p.stderr).decode(errors="replace")
                boot[s] = re.findall(r"hull_memops: bench: (.*)", text)

        med = statistics.median
        print(f"# bench/memops.py: {args.file_mib} MiB file, {args.fault_pages} fresh pages, "
              f"{args.stream_mib} MiB over vsock, {args.http_mib} MiB over -p, "
              f"median of {args.runs} runs per setting")
        for s in settings:
            print(f"# HULL_PVM_MEMOPS={s}: {hooks[s]}")
        rows = [(label, [figures[s].get(k) for s in settings]) for k, label in GUEST_KEYS]
        rows.append(("vsock host->guest, `exec -i` into dd bs=64k (MiB/s)", [med(vsock[s]) for s in settings]))
        rows.append(("`-p` download (MB/s)", [med(http[s]) for s in settings]))
        for i in images:
            rows.append((f"preparation of {i} (s)", [med(prep[(s, i)]) for s in settings]))
        rows.append(("warm `run --rm true` (s)", [med(warm[s]) for s in settings]))
        rows.append(("first run (snapshots; 1st setting also prepares the image) (s)", [first[s] for s in settings]))
        print_table(settings, rows)
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
