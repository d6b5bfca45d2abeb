#!/usr/bin/env python3
"""Where a guest's time goes, by guest-kernel function (a sampling profile).

The VMM samples each vCPU's instruction pointer when HULL_GUEST_PROFILE is
set (vmm/src/cpu/profile.rs); this runs a hull command that way and prints
the samples by kernel symbol, by subsystem and over time. On PVM hosts the
guest kernel's code is emulated, so this is where slow starts and slow
transfers come from; `perf` on the host sees only the emulator.

  bench/guest_profile.py -- run --rm busybox true      # run and report
  bench/guest_profile.py --files /tmp/p.123.vcpu0      # report only

The profiled VMM runs on a thread of hull (HULL_JAIL=off): the jailed VMM
process has nowhere to write its samples. Needs HULL_KERNEL (the vmlinux
whose symbols are used; for a one-vCPU VM hull boots its uniprocessor
variant vmlinux-up beside it, which this then reads) and hull built
(HULL_BIN or target/release/hull).
"""

import argparse
import bisect
import collections
import glob
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
HULL = os.environ.get("HULL_BIN", os.path.join(HERE, "..", "target", "release", "hull"))
KERNEL_SPACE = 0x8000_0000_0000_0000

# Subsystems by symbol name, first match wins: a rough map, enough to see
# which part of the kernel a start is made of.
CATEGORIES = [
    ("user", r"^\[user\]$"),
    ("idle", r"idle|safe_halt|cpuidle"),
    ("time", r"hrtimer|ktime|clocksource|clock_|timekeeping|tick|timer|vsyscall|jiffies|second_overflow"),
    ("sched", r"load_avg|sched|pick_next|enqueue|dequeue|update_curr|wake_up|ttwu|switch_to|"
              r"finish_task|cfs|rq_clock|set_next|put_prev|check_preempt|account|resched|vruntime"),
    ("random", r"blake2s|chacha|crng|random|entropy"),
    ("mm", r"page|folio|fault|pte|pmd|mm_|vma|lru|memcg|unmap|mas_|mt_|mtree|zap|alloc|free|"
           r"rmap|mmap|slab|kmem|cache|tlb|cgroup_rstat"),
    ("vsock/virtio", r"vsock|virtio|virtqueue|vring|vp_|skb|sock|recv|send"),
    ("fs", r"path|dentry|inode|file|lookup|permission|step_into|walk_component|vfs|ext4|erofs|"
           r"mount|seq_|proc_|kernfs|sysfs|format_decode|vsnprintf"),
    ("entry/irq", r"entry|swapgs|irq|exit_to_user|syscall|apic|iret|softirq|bh_|sync_regs|error_"),
    ("locks/rcu", r"spin|lock|rcu|mutex|rwsem|futex"),
]


class Symbols:
    """Text symbols of a vmlinux, for address lookups."""

    def __init__(self, vmlinux):
        out = subprocess.run(["nm", "-n", vmlinux], capture_output=True, text=True, check=True)
        self.names, self.addrs = [], []
        for line in out.stdout.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] in "tTwW":
                self.addrs.append(int(parts[0], 16))
                self.names.append(parts[2])

    def name(self, rip):
        if rip < KERNEL_SPACE:
            return "[user]"
        i = bisect.bisect_right(self.addrs, rip) - 1
        return self.names[i] if i >= 0 else "[unknown]"


def category(name):
    for cat, pattern in CATEGORIES:
        if re.search(pattern, name):
            return cat
    return "other"


def read_samples(paths):
    """(microseconds since the vCPU started, rip) of every file."""
    samples = []
    for path in paths:
        with open(path) as f:
            for line in f:
                at, rip = line.split()
                samples.append((int(at), int(rip, 16)))
    return samples


def report(samples, symbols, top, bucket_ms):
    n = len(samples)
    if n == 0:
        sys.exit("guest_profile: no samples")
    names = [(at, symbols.name(rip)) for at, rip in samples]
    span = (max(a for a, _ in samples) - min(a for a, _ in samples)) / 1e6
    print(f"{n} samples over {span:.2f} s (all vCPUs)\n")
    print("by subsystem (a rough map by symbol name):")
    cats = collections.Counter(category(name) for _, name in names)
    for cat, count in cats.most_common():
        print(f"  {cat:14s} {count:6d} {100 * count / n:5.1f}%")
    print(f"\ntop {top} functions:")
    for name, count in collections.Counter(name for _, name in names).most_common(top):
        print(f"  {count:6d} {100 * count / n:5.1f}%  {name}")
    print(f"\nover time ({bucket_ms} ms buckets: samples, top functions):")
    buckets = collections.defaultdict(collections.Counter)
    for at, name in names:
        buckets[at // (bucket_ms * 1000)][name] += 1
    for b in sorted(buckets):
        c = buckets[b]
        tops = ", ".join(f"{name} {k}" for name, k in c.most_common(3))
        print(f"  {b * bucket_ms / 1000:7.2f} s {sum(c.values()):5d}  {tops}")


def run_profiled(hull_args):
    """Runs hull with the profiler on; returns the sample files."""
    tmp = tempfile.mkdtemp(prefix="hull-profile-")
    env = dict(os.environ, HULL_JAIL="off", HULL_GUEST_PROFILE=os.path.join(tmp, "p"))
    done = subprocess.run([HULL] + hull_args, env=env)
    files = sorted(glob.glob(os.path.join(tmp, "p.*")))
    print(f"hull exited {done.returncode}; samples in {tmp}\n", file=sys.stderr)
    return files


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vmlinux", help="default: $HULL_KERNEL, or its -up variant for a one-vCPU VM")
    ap.add_argument("--files", nargs="+", help="report on these sample files instead of running hull")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--bucket-ms", type=int, default=100)
    ap.add_argument("hull_args", nargs="*", help="arguments of hull (after --)")
    args = ap.parse_args()
    if not (args.vmlinux or os.environ.get("HULL_KERNEL")):
        sys.exit("guest_profile: set HULL_KERNEL or pass --vmlinux")
    files = args.files or run_profiled(args.hull_args)
    if not files:
        sys.exit("guest_profile: no sample files (did a VM run?)")
    report(read_samples(files), Symbols(args.vmlinux or booted_kernel(files)), args.top, args.bucket_ms)


def booted_kernel(files):
    """The kernel hull booted: HULL_KERNEL's uniprocessor variant when the
    VM had one vCPU and the variant is there (hull's own rule), else HULL_KERNEL."""
    smp = os.environ["HULL_KERNEL"]
    up = smp + "-up"
    one_vcpu = not any(f.endswith(".vcpu1") for f in files)
    up_wanted = os.environ.get("HULL_KERNEL_UP", "") not in ("0", "off", "false", "no")
    return up if one_vcpu and up_wanted and os.path.isfile(up) else smp


if __name__ == "__main__":
    main()
