"""Debian packages for test images: resolving, downloading and caching.

Shared by tests/support/make-python-image and tests/support/make-debian-image
(imported from this directory; not a script). Everything goes through the
host's apt (apt-cache, apt-get download) and Debian's mirror; the .debs and
the images built from them are kept in one cache directory (see
`cache_dir`), used by one builder at a time (see `locked`).
"""

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

# The name error messages start with; each script sets its own.
PROG = "debian-image"


def die(msg):
    print(f"{PROG}: {msg}", file=sys.stderr)
    sys.exit(1)


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        die(f"{' '.join(map(str, cmd))} failed: {p.stderr.strip() or p.stdout.strip()}")
    return p.stdout


def need_tools(*tools):
    """Dies naming the first missing tool; puts /usr/sbin and /sbin on PATH
    (ldconfig, debootstrap live there and a non-login root shell may lack them)."""
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    for tool in tools:
        if not shutil.which(tool):
            die(f"missing {tool}: install it (scripts/apt-packages-test)")


def cache_dir(arg=None):
    """The cache: arg, else $HULL_TEST_DEB_CACHE, else /var/cache/hull-test-debs
    for root and ~/.cache/hull-test-debs for others. Created if missing."""
    cache = arg or os.environ.get("HULL_TEST_DEB_CACHE")
    if not cache:
        cache = "/var/cache/hull-test-debs"
        if os.geteuid() != 0:
            base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
            cache = os.path.join(base, "hull-test-debs")
    cache = Path(cache)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        die(f"cannot create the cache {cache}: {e}")
    return cache


@contextmanager
def locked(cache):
    """One builder at a time per cache: parallel tests share downloads."""
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def show(names, virtual_ok=False):
    """apt-cache show for candidates: {name: {field: value}}. A name with no
    candidate (a virtual package) is an error unless virtual_ok."""
    out = run(["apt-cache", "show", "--no-all-versions", *sorted(names)])
    pkgs = {}
    for para in out.strip().split("\n\n"):
        fields, key = {}, None
        for line in para.splitlines():
            if line.startswith(" ") and key:
                fields[key] += "\n" + line
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" in fields:
            pkgs[fields["Package"]] = fields
    missing = set(names) - set(pkgs)
    if missing and not virtual_ok:
        die(f"apt knows no candidate for {sorted(missing)} (run apt-get update?)")
    return pkgs


def dep_groups(fields):
    """Depends and Pre-Depends as lists of alternative package names."""
    groups = []
    for key in ("Pre-Depends", "Depends"):
        for dep in filter(None, (d.strip() for d in fields.get(key, "").split(","))):
            alts = []
            for alt in dep.split("|"):
                name = alt.strip().split()[0].split(":")[0]
                alts.append(name)
            groups.append(alts)
    return groups


def resolve(roots, skip=frozenset(), virtual_ok=False):
    """The Depends closure of roots, minus the packages in skip: {name: fields}.
    With virtual_ok, dependencies on virtual packages are left out (enough
    for a cache key when their providers are among the roots)."""
    chosen, todo, seen = {}, list(roots), set()
    while todo:
        fresh = [n for n in dict.fromkeys(todo) if n not in chosen and n not in skip and n not in seen]
        seen.update(fresh)
        todo = []
        if not fresh:
            break
        info = show(fresh, virtual_ok)
        chosen.update(info)
        for name in filter(info.__contains__, fresh):
            groups = dep_groups(info[name])
            wanted = {g[0] for g in groups if len(g) == 1}
            for g in groups:
                if len(g) == 1:
                    todo.append(g[0])
                elif not any(a in chosen or a in wanted or a in skip for a in g):
                    # An alternative: one already chosen wins, else the first.
                    todo.append(g[0])
    return chosen


def deb_name(fields):
    version = fields["Version"].replace(":", "%3a")
    return f"{fields['Package']}_{version}_{fields['Architecture']}.deb"


def download(pkgs, cache):
    """The .deb of every package, from the cache or apt-get download."""
    missing = [p for p, f in pkgs.items() if not (cache / deb_name(f)).exists()]
    if missing:
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            run(["apt-get", "download", *sorted(missing)], cwd=tmp)
            for p in missing:
                got = list(Path(tmp).glob(f"{p}_*.deb"))
                if len(got) != 1:
                    die(f"apt-get download {p} gave {got}")
                os.replace(got[0], cache / deb_name(pkgs[p]))
    return [cache / deb_name(f) for f in pkgs.values()]
