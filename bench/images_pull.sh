#!/usr/bin/env bash
# Pull benchmark: a ~100 MB, 5-layer image of incompressible data from a local
# docker-registry, `hull pull` vs `skopeo copy docker://... oci:...` of the same
# image in the same run. Prints each run, the medians and the ratio
# hull/skopeo (goal <= 1.0).
#
# Usage: bench/images_pull.sh [RUNS]   (RUNS >= 5, default 5)
# Env:   HULL=/path/to/hull (default: builds a release binary)
#        LAYER_MB=20 (size of each of the 5 layers)
set -euo pipefail

runs=${1:-5}
layer_mb=${LAYER_MB:-20}
here=$(cd "$(dirname "$0")/.." && pwd)
for tool in docker-registry skopeo gzip sha256sum python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool: install it (scripts/apt-packages-test)" >&2; exit 1; }
done
if [[ -z "${HULL:-}" ]]; then
    (cd "$here" && cargo build --release --quiet --bin hull)
    HULL="${CARGO_TARGET_DIR:-$here/target}/release/hull"
fi

work=$(mktemp -d)
reg_pid=
cleanup() {
    [[ -n "$reg_pid" ]] && kill "$reg_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/registry.yml" <<YML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
YML
docker-registry serve "$work/registry.yml" >/dev/null 2>&1 &
reg_pid=$!
for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    sleep 0.1
done

# Build the OCI layout by hand: 5 gzip layers of random data.
layout=$work/layout
mkdir -p "$layout/blobs/sha256"
echo '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"
blob() { # file -> prints "digest size", moves the file into the layout
    local d s
    d=$(sha256sum "$1" | cut -d' ' -f1)
    s=$(stat -c %s "$1")
    mv "$1" "$layout/blobs/sha256/$d"
    echo "sha256:$d $s"
}
layers=""
diffs=""
for i in 1 2 3 4 5; do
    mkdir -p "$work/l$i"
    head -c "${layer_mb}M" /dev/urandom > "$work/l$i/data$i"
    tar -C "$work/l$i" -cf "$work/l$i.tar" .
    diff=$(sha256sum "$work/l$i.tar" | cut -d' ' -f1)
    gzip -1 -n "$work/l$i.tar"
    read -r d s < <(blob "$work/l$i.tar.gz")
    layers+="${layers:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"$d\",\"size\":$s}"
    diffs+="${diffs:+,}\"sha256:$diff\""
done
printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/data1"]},"rootfs":{"type":"layers","diff_ids":[%s]}}' "$diffs" > "$work/config.json"
read -r cd cs < <(blob "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[%s]}' "$cd" "$cs" "$layers" > "$work/manifest.json"
read -r md ms < <(blob "$work/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"bench"}}]}' "$md" "$ms" > "$layout/index.json"
ref=127.0.0.1:$port/bench:1
skopeo copy --quiet --dest-tls-verify=false "oci:$layout:bench" "docker://$ref"
total=$(du -sb "$layout/blobs" | cut -f1)
echo "image: 5 layers, $((total / 1000000)) MB, from $ref"

now() { date +%s%N; }
run_hull() { "$HULL" --root "$work/hull-root" pull --quiet "$ref" >/dev/null; }
run_skopeo() { skopeo copy --quiet --src-tls-verify=false "docker://$ref" "oci:$work/skopeo-dest:bench"; }
hull_times=()
skopeo_times=()
for i in $(seq "$runs"); do
    rm -rf "$work/hull-root" "$work/skopeo-dest"
    # Alternate who goes first so neither always gets the warmer cache.
    if (( i % 2 )); then
        t0=$(now); run_hull; t1=$(now); run_skopeo; t2=$(now)
        h=$(( (t1 - t0) / 1000000 )); s=$(( (t2 - t1) / 1000000 ))
    else
        t0=$(now); run_skopeo; t1=$(now); run_hull; t2=$(now)
        s=$(( (t1 - t0) / 1000000 )); h=$(( (t2 - t1) / 1000000 ))
    fi
    hull_times+=("$h"); skopeo_times+=("$s")
    echo "run $i: hull ${h} ms, skopeo ${s} ms"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
mh=$(median "${hull_times[@]}")
ms=$(median "${skopeo_times[@]}")
echo "median: hull ${mh} ms, skopeo ${ms} ms"
awk -v h="$mh" -v s="$ms" 'BEGIN {printf "ratio hull/skopeo: %.2f (goal <= 1.0)\n", h / s}'
