#!/bin/sh
# Seed corpora for the fuzz targets that need structured input (tar
# layers, gzip/zstd streams, protocol frames, references, manifests).
# Writes fuzz/corpus/<target>/ (gitignored); run from anywhere.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
corpus="$here/corpus"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A small tree with what layers hold: dirs, files, a symlink, a hard
# link, a whiteout, an opaque-dir marker, a long name and an xattr-free
# PAX record (the pax format writes one for the long name).
mkdir -p "$work/t/etc/sub" "$work/t/usr/bin" "$work/t/gone"
printf 'hello\n' > "$work/t/etc/hosts"
head -c 3000 /dev/zero | tr '\0' 'x' > "$work/t/usr/bin/tool"
ln -s ../etc/hosts "$work/t/usr/link"
ln "$work/t/etc/hosts" "$work/t/etc/hard"
: > "$work/t/etc/.wh.old"
: > "$work/t/gone/.wh..wh..opq"
long=$(printf 'd%.0s' $(seq 120))
mkdir -p "$work/t/$long"
: > "$work/t/$long/f"
mkdir -p "$corpus/agent_tar" "$corpus/layer_tar" "$corpus/agent_gzip"
for fmt in ustar gnu pax; do
    tar --format=$fmt -C "$work/t" -cf "$work/$fmt.tar" . 2>/dev/null || continue
    for c in agent_tar layer_tar; do
        cp "$work/$fmt.tar" "$corpus/$c/$fmt.tar"
        gzip -c "$work/$fmt.tar" > "$corpus/$c/$fmt.tar.gz"
        zstd -q -c "$work/$fmt.tar" > "$corpus/$c/$fmt.tar.zst"
    done
    # agent_gzip: a control byte, then the stream.
    { printf '\007'; gzip -c "$work/$fmt.tar"; } > "$corpus/agent_gzip/$fmt"
done
{ printf '\077'; printf 'abc' | gzip -c; printf 'def' | gzip -c; } > "$corpus/agent_gzip/two-members"
{ printf '\001'; printf '' | gzip -c; } > "$corpus/agent_gzip/empty"
{ printf '\010'; gzip -c -N "$work/t/etc/hosts"; } > "$corpus/agent_gzip/named"

python3 - "$corpus" <<'PY'
import json, os, struct, sys
corpus = sys.argv[1]
def put(target, name, data):
    os.makedirs(f"{corpus}/{target}", exist_ok=True)
    with open(f"{corpus}/{target}/{name}", "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
def frame(msg):
    body = json.dumps(msg).encode()
    return struct.pack("<I", len(body)) + body
msgs = [
    {"Hello": {"version": "0.9.0"}},
    {"Create": {"argv": ["/bin/sh", "-c", "echo"], "env": ["PATH=/bin"], "cwd": "/",
                "root": "/mnt/root", "user": "", "tty": {"rows": 24, "cols": 80}}},
    {"Signal": {"id": 3, "signal": 15}},
    "KillAll",
    {"Exited": {"code": 0, "signal": None}},
    {"Error": {"message": "no"}},
    {"layers": [{"window": {"guest_addr": 4096, "len": 8192}, "size": 100}],
     "output": {"guest_addr": 65536, "len": 4096}},
    {"Done": {"compressed_bytes": 1, "tar_bytes": 2, "entries": 3, "whiteouts": 0,
              "image_bytes": 4096, "seconds": 0.25}},
]
for i, m in enumerate(msgs):
    put("agent_protocol", f"msg{i}", frame(m))
put("agent_protocol", "lines", "ATTACH 1 stdout\nTCP 8080\nhull-agent: ready version=0.9.0 uptime=1.25\n"
    "hull-agent: shutdown status=3\nhull-agent: error mount failed\n")
d = "sha256:" + "ab" * 32
for i, r in enumerate(["busybox", "busybox:1.36", "library/busybox@" + d,
                       "localhost:5000/a/b:t", "ghcr.io/o/r:v1.0@" + d, "[::1]:5000/x",
                       "index.docker.io/library/alpine", d, "linux/arm64/v8", "linux/amd64"]):
    put("image_reference", f"ref{i}", r)
cfg = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d, "size": 2}
layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": 3}
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": cfg, "layers": [layer]}
index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
         "manifests": [{"mediaType": manifest["mediaType"], "digest": d, "size": 5,
                        "platform": {"os": "linux", "architecture": "amd64"}},
                       {"mediaType": manifest["mediaType"], "digest": d, "size": 5,
                        "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}]}
config = {"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
          "rootfs": {"type": "layers", "diff_ids": [d]}, "history": [{"created_by": "x"}]}
for i, (pick, doc) in enumerate([(1, manifest), (0, manifest), (2, index), (0, index),
                                  (4, index), (3, manifest), (5, config)]):
    put("image_manifest", f"doc{i}", bytes([pick]) + json.dumps(doc).encode())
PY
# layer_tar, agent_tar: a checksummed header whose base-256 size is
# 2^64 - 1 (tarwalk's padded length overflowed on it).
python3 - "$corpus" <<'PY'
import sys
h = bytearray(512)
h[0:3] = b"big"
for at, field in ((100, b"0000644\0"), (108, b"0000000\0"), (116, b"0000000\0"),
                  (136, b"00000000000\0")):
    h[at:at + len(field)] = field
h[124:136] = b"\x80\0\0\0" + b"\xff" * 8
h[156] = ord("0")
h[257:265] = b"ustar\x0000"
h[148:156] = b" " * 8
h[148:156] = ("%06o\0 " % sum(h)).encode()
for target in ("layer_tar", "agent_tar"):
    open(f"{sys.argv[1]}/{target}/size-overflow", "wb").write(bytes(h) + bytes(1024))
PY

# agent_unpack: the layers above, and layers that try to leave the target
# (the fuzzer runs next to a directory "outside" holding "canary").
mkdir -p "$corpus/agent_unpack"
cp "$corpus/agent_tar/"* "$corpus/agent_unpack/"
python3 - "$corpus/agent_unpack" <<'PY'
import io, sys, tarfile
out = sys.argv[1]
def layer(name, entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for kind, path, arg in entries:
            i = tarfile.TarInfo(path)
            if kind == "file":
                i.size = len(arg)
                t.addfile(i, io.BytesIO(arg))
                continue
            if kind == "dir":
                i.type, i.mode = tarfile.DIRTYPE, arg
            elif kind == "sym":
                i.type, i.linkname = tarfile.SYMTYPE, arg
            elif kind == "hard":
                i.type, i.linkname = tarfile.LNKTYPE, arg
            t.addfile(i)
    open(f"{out}/{name}", "wb").write(buf.getvalue())
layer("dotdot", [("file", "../outside/canary", b"x"), ("file", "../../x", b"y")])
layer("symlink-dir", [("sym", "l", "../outside"), ("file", "l/canary", b"x"), ("file", "l/new", b"n")])
layer("symlink-abs", [("sym", "a", "/"), ("dir", "a/d", 0o755), ("file", "a/f", b"f")])
layer("hardlink-out", [("hard", "h", "../outside/canary"), ("file", "h", b"x")])
layer("whiteouts", [("dir", "d", 0o000), ("file", "d/f", b"f"), ("file", "d/.wh.f", b""),
                    ("file", ".wh...", b""), ("file", "d/.wh..wh..opq", b""), ("sym", "s", ".."),
                    ("file", ".wh.s", b""), ("file", "s/.wh.outside", b"")])
PY
echo "seeded $corpus"
