#!/usr/bin/env bash
# Build hull's guest kernel: Debian's linux-source-6.1 + our patches +
# `make tinyconfig` + config.fragment + `make olddefconfig`, artefact the ELF
# vmlinux (entered through its PVH note). Two variants from one source tree:
# vmlinux (SMP, for VMs with more than one vCPU) and vmlinux-up (the same
# with config.up.fragment on top: uniprocessor, what hull boots for the
# usual one-vCPU VM; see docs/guest-kernel.md for why).
#
# Cached: the output directory is named after a hash of (linux-source version,
# config.fragment, patches/*.patch, this script), so the build runs once per
# machine and per change; a cached build prints its path in well under a
# second.
#
#   guest-kernel/build.sh            build (or find) the kernel
#   guest-kernel/build.sh --print    print the path it would have, build nothing
#
# Environment:
#   HULL_KERNEL_CACHE       cache root (default /var/lib/hull/kernel)
#   HULL_LINUX_SOURCE       source tarball (default /usr/src/linux-source-6.1.tar.xz)
#   HULL_KERNEL_JOBS        make -j (default: nproc)
#   HULL_KERNEL_KEEP_BUILD  1 = keep the build tree for incremental rebuilds
#
# Output: ${HULL_KERNEL_CACHE}/<hash>/{vmlinux,config,vmlinux-up,config-up,version},
# and the symlink
# ${HULL_KERNEL_CACHE}/current -> <hash>.  Progress goes to stderr; the last
# line of stdout is the vmlinux path.  Installs nothing: a missing package is
# reported with its name.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
self="$here/$(basename "${BASH_SOURCE[0]}")"
fragment="$here/config.fragment"
up_fragment="$here/config.up.fragment"
patch_dir="$here/patches"
cache=${HULL_KERNEL_CACHE:-/var/lib/hull/kernel}
source_tar=${HULL_LINUX_SOURCE:-/usr/src/linux-source-6.1.tar.xz}
jobs=${HULL_KERNEL_JOBS:-$(nproc 2>/dev/null || echo 2)}
keep_build=${HULL_KERNEL_KEEP_BUILD:-0}

log() { printf 'guest-kernel: %s\n' "$*" >&2; }
die() { printf 'guest-kernel: error: %s\n' "$*" >&2; exit 1; }

print_only=0
case "${1:-}" in
    "") ;;
    --print) print_only=1 ;;
    -h | --help) sed -n '2,24p' "$self" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (usage: build.sh [--print])" ;;
esac

# ---- inputs -----------------------------------------------------------------
[[ -f $fragment ]] || die "missing $fragment"
[[ -f $up_fragment ]] || die "missing $up_fragment"
[[ -f $source_tar ]] || die "missing $source_tar: install Debian's linux-source-6.1 package (apt-get install linux-source-6.1)"

patches=()
if [[ -d $patch_dir ]]; then
    while IFS= read -r -d '' p; do patches+=("$p"); done \
        < <(find "$patch_dir" -maxdepth 1 -name '*.patch' -print0 | LC_ALL=C sort -z)
fi

# The source version: the Debian package version when dpkg knows the tarball
# (cheap), else a checksum of the tarball itself.
source_version() {
    local pkg ver
    if command -v dpkg-query >/dev/null 2>&1 &&
        pkg=$(dpkg-query -S "$source_tar" 2>/dev/null | head -n1 | cut -d: -f1) &&
        [[ -n $pkg ]] &&
        ver=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null) && [[ -n $ver ]]; then
        printf '%s %s %s\n' "$pkg" "$ver" "$(stat -c %s "$source_tar")"
    else
        sha256sum "$source_tar" | cut -d' ' -f1
    fi
}

src_ver=$(source_version)
# Hash of everything that decides the tree (source + patches): names the
# build directory, so config-only changes can rebuild incrementally.
tree_hash=$(
    {
        printf 'source %s\n' "$src_ver"
        for p in "${patches[@]}"; do printf 'patch %s\n' "$(basename "$p")"; cat "$p"; done
    } | sha256sum | cut -c1-16
)
hash=$(
    {
        printf 'tree %s\n' "$tree_hash"
        printf 'fragment\n'; cat "$fragment"
        printf 'up fragment\n'; cat "$up_fragment"
        printf 'build.sh\n'; cat "$self"
    } | sha256sum | cut -c1-16
)
out="$cache/$hash"

point_current() {
    local tmp="$cache/.current.$$"
    ln -sfn "$hash" "$tmp"
    mv -T "$tmp" "$cache/current"
}

if [[ $print_only == 1 ]]; then
    echo "$out/vmlinux"
    exit 0
fi

if [[ -f $out/vmlinux ]]; then
    point_current
    log "cached: $out"
    echo "$out/vmlinux"
    exit 0
fi

# ---- tools --------------------------------------------------------------------
missing=()
for t in make gcc ld flex bison bc perl tar xz patch readelf sha256sum flock; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
[[ -e /usr/include/libelf.h || -e /usr/include/gelf.h ]] || missing+=("libelf headers (libelf-dev)")
[[ -e /usr/include/openssl/opensslv.h ]] || missing+=("openssl headers (libssl-dev)")
((${#missing[@]} == 0)) || die "missing build tools: ${missing[*]} (Debian: build-essential flex bison bc libelf-dev libssl-dev)"

mkdir -p "$cache"
# One build per source tree at a time (builds of the same sources share the
# build directory); a second caller waits, then finds the cache.
exec 9>"$cache/.lock-$tree_hash"
flock 9
if [[ -f $out/vmlinux ]]; then
    point_current
    echo "$out/vmlinux"
    exit 0
fi

build="$cache/build-$tree_hash"
stamp="$build/.hull-prepared"
start=$(date +%s)

# ---- source tree ------------------------------------------------------------
if [[ ! -f $stamp ]]; then
    log "unpacking $source_tar into $build"
    rm -rf "$build"
    mkdir -p "$build"
    tar -xf "$source_tar" -C "$build" --strip-components=1
    for p in "${patches[@]}"; do
        log "applying $(basename "$p")"
        patch -d "$build" -p1 --forward --batch --quiet <"$p" ||
            die "patch $(basename "$p") does not apply to $source_tar"
    done
    touch "$stamp"
else
    log "reusing prepared tree $build"
fi

# ---- configuration and build, per variant -----------------------------------
mk() { make -C "$build" -s "$@"; }

# Whether the final .config has every option of fragment $1 as it asks,
# except those fragment $2 (a later one, or /dev/null) sets itself: Kconfig
# drops an option silently when one of its dependencies is missing.
check_fragment() {
    local want=$1 later=$2 line name bad=()
    while IFS= read -r line; do
        if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]] || [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
            name=${BASH_REMATCH[1]}
            grep -qE "^(# )?${name}[= ]" "$later" && continue
        fi
        if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
            grep -qxF -- "$line" "$build/.config" ||
                bad+=("${BASH_REMATCH[1]} wanted ${BASH_REMATCH[2]}, got $(grep -E "^(# )?${BASH_REMATCH[1]}[= ]" "$build/.config" || echo 'nothing (unknown or unmet dependency)')")
        elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
            if grep -qE "^${BASH_REMATCH[1]}=" "$build/.config"; then
                bad+=("${BASH_REMATCH[1]} wanted unset, got $(grep -E "^${BASH_REMATCH[1]}=" "$build/.config")")
            fi
        fi
    done <"$want"
    if ((${#bad[@]})); then
        printf 'guest-kernel: error: option not as %s asks: %s\n' "$(basename "$want")" "${bad[@]}" >&2
        die "${#bad[@]} option(s) of $(basename "$want") did not survive olddefconfig (see above)"
    fi
}

# Configure the tree from tinyconfig and the fragments given, and build
# vmlinux in it (a second variant rebuilds what its options change).
build_variant() {
    local name=$1
    shift
    log "configuring $name (tinyconfig + $(for f in "$@"; do printf '%s ' "$(basename "$f")"; done)+ olddefconfig)"
    mk tinyconfig >"$build/hull-config.log" 2>&1 || { cat "$build/hull-config.log" >&2; die "make tinyconfig failed"; }
    "$build/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "$@" \
        >>"$build/hull-config.log" 2>&1 || { cat "$build/hull-config.log" >&2; die "merging $* failed"; }
    mk olddefconfig >>"$build/hull-config.log" 2>&1 || { cat "$build/hull-config.log" >&2; die "make olddefconfig failed"; }
    local i
    for ((i = 1; i <= $#; i++)); do
        local later=/dev/null
        ((i < $#)) && later=${!#}
        check_fragment "${!i}" "$later"
    done

    log "building $name with make -j$jobs (a clean build takes minutes; log: $build/hull-build.log)"
    if ! make -C "$build" -j"$jobs" vmlinux >"$build/hull-build.log" 2>&1; then
        tail -n 40 "$build/hull-build.log" >&2
        die "kernel build ($name) failed (full log: $build/hull-build.log)"
    fi
    # The VMM enters the ELF vmlinux through its PVH entry: the Xen ELF note
    # XEN_ELFNOTE_PHYS32_ENTRY (type 0x12) must be there.
    if ! readelf -n "$build/vmlinux" | grep -E '^\s*Xen\s' | grep -qiE '0x0*12\b|PHYS32_ENTRY'; then
        die "$build/vmlinux ($name) has no PVH entry note (Xen note 0x12): is CONFIG_PVH set?"
    fi
}

tmp=$(mktemp -d "$cache/.tmp-$hash.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
build_variant vmlinux "$fragment"
cp "$build/vmlinux" "$tmp/vmlinux"
cp "$build/.config" "$tmp/config"
release=$(cat "$build/include/config/kernel.release")
build_variant vmlinux-up "$fragment" "$up_fragment"
cp "$build/vmlinux" "$tmp/vmlinux-up"
cp "$build/.config" "$tmp/config-up"

# ---- publish atomically -------------------------------------------------------
printf '%s\n' "$release" >"$tmp/version"
chmod 755 "$tmp"
rm -rf "$out"
mv -T "$tmp" "$out"
trap - EXIT
point_current

if [[ $keep_build != 1 ]]; then
    rm -rf "$build"
fi

log "built $release in $(($(date +%s) - start)) s: $out"
echo "$out/vmlinux"
