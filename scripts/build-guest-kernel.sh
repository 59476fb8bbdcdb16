#!/usr/bin/env bash
# Builds the ironcell guest kernel (an uncompressed `vmlinux` with a PVH entry
# for ironcell-vmm, docs/vmm.md) from guest/kernel/ironcell.config on top of
# `make allnoconfig`, using Debian's linux-source-6.1 package. As root.
#
# The result is cached outside the repository, keyed by the fragment, this
# script's version and the source package's version:
#   ${IRONCELL_KERNEL_CACHE:-/var/cache/ironcell/guest-kernel}/<key>/vmlinux
# A cached vmlinux is reused without rebuilding. The last line on stdout is
# the path of the vmlinux (all progress goes to stderr, the kernel build's
# output to <key>/build.log).
#
#   --config-only   stop after the .config was produced and verified; the last
#                   stdout line is then the path of that .config.
# Environment: IRONCELL_KERNEL_CACHE (cache root), IRONCELL_KERNEL_KEEP_TREE=1
# (keep the unpacked, built source tree next to the vmlinux; ~1 GiB).
set -euo pipefail

# Bump when a change here changes the resulting kernel (it is part of the key).
SCRIPT_VERSION=1

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FRAGMENT=$REPO/guest/kernel/ironcell.config
SRC_PKG=linux-source-6.1
SRC_TAR=/usr/src/linux-source-6.1.tar.xz
CACHE_ROOT=${IRONCELL_KERNEL_CACHE:-/var/cache/ironcell/guest-kernel}
KARCH=x86_64

CONFIG_ONLY=0
case "${1:-}" in
  "") ;;
  --config-only) CONFIG_ONLY=1 ;;
  *) echo "usage: $0 [--config-only]" >&2; exit 2 ;;
esac

log() { echo "build-guest-kernel: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ -f "$FRAGMENT" ] || die "missing $FRAGMENT"

# --- build dependencies (same pattern as scripts/setup.sh) -------------------
PKGS=(
  # the kernel source (/usr/src/linux-source-6.1.tar.xz) and its unpacking
  "$SRC_PKG" xz-utils
  # compiler, make, binutils (readelf), perl
  build-essential
  # kconfig's parser (bison, flex), kernel/time/timeconst.bc (bc),
  # objtool (libelf-dev; ORC unwinder, retpoline/rethunk annotations)
  bison flex bc libelf-dev
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || die "missing packages ${missing[*]}; run as root to install them"
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # No init system runs services here: keep package scripts from starting
  # daemons (and leave an existing policy alone).
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    own_policy=1
  fi
  # Another apt-get (scripts/setup.sh, a parallel job) may hold the lock.
  apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >&2
  [ "$own_policy" -eq 0 ] || rm -f /usr/sbin/policy-rc.d
fi
[ -f "$SRC_TAR" ] || die "$SRC_TAR missing although $SRC_PKG is installed"

# --- cache key ---------------------------------------------------------------
src_version=$(dpkg-query -W -f='${Version}' "$SRC_PKG")
key=$({ cat "$FRAGMENT"; echo "script-version=$SCRIPT_VERSION"; echo "$SRC_PKG=$src_version"; } \
      | sha256sum | cut -c1-16)
dir=$CACHE_ROOT/$key
out=$dir/vmlinux

if [ "$CONFIG_ONLY" -eq 0 ] && [ -f "$out" ]; then
  echo "$out"
  exit 0
fi

mkdir -p "$dir"
exec 9>"$dir/.lock"
if ! flock -n 9; then
  log "another build of $key is running; waiting for it"
  flock 9
fi
if [ "$CONFIG_ONLY" -eq 0 ] && [ -f "$out" ]; then
  echo "$out"
  exit 0
fi

tree=$dir/linux
buildlog=$dir/build.log
: > "$buildlog"
trap 'rc=$?; if [ $rc -ne 0 ]; then log "failed; last lines of $buildlog:"; tail -n 30 "$buildlog" >&2; fi' EXIT

# Everything runs at the lowest CPU priority: other builds on the machine
# keep progressing.
kmake() {
  nice -n 19 make -C "$tree" ARCH="$KARCH" \
    KBUILD_BUILD_USER=ironcell KBUILD_BUILD_HOST=ironcell "$@" >>"$buildlog" 2>&1
}

log "unpacking $SRC_PKG $src_version into $tree"
rm -rf "$tree"
mkdir -p "$tree"
nice -n 19 tar -xJf "$SRC_TAR" -C "$tree" --strip-components=1

# --- configuration -----------------------------------------------------------
log "configuring: allnoconfig + $(basename "$FRAGMENT")"
kmake allnoconfig
(cd "$tree" && ARCH="$KARCH" scripts/kconfig/merge_config.sh -m .config "$FRAGMENT") >>"$buildlog" 2>&1
kmake olddefconfig

# Every option the fragment sets must have survived olddefconfig: an option
# whose dependencies are unmet is silently dropped by kconfig.
dropped=()
while IFS= read -r line || [ -n "$line" ]; do
  line=${line%"${line##*[![:space:]]}"}        # strip trailing whitespace
  case "$line" in
    CONFIG_*=*)
      name=${line%%=*}
      if ! grep -qxF -- "$line" "$tree/.config"; then
        final=$(grep -E "^($name=|# $name is not set)" "$tree/.config" || true)
        dropped+=("$line  (final: ${final:-absent})")
      fi
      ;;
    "# CONFIG_"*" is not set")
      name=${line#\# }
      name=${name%% *}
      if final=$(grep -E "^$name=" "$tree/.config"); then
        dropped+=("$line  (final: $final)")
      fi
      ;;
  esac
done < "$FRAGMENT"
if [ "${#dropped[@]}" -gt 0 ]; then
  log "error: ${#dropped[@]} option(s) of $FRAGMENT did not survive into $tree/.config"
  log "(unmet dependencies or unknown symbols; see scripts/kconfig/merge_config.sh's warnings in $buildlog):"
  for d in "${dropped[@]}"; do log "  $d"; done
  exit 1
fi
cp "$tree/.config" "$dir/config"
log "configuration verified ($(grep -cE '^CONFIG_|^# CONFIG_.* is not set' "$FRAGMENT") fragment options)"

if [ "$CONFIG_ONLY" -eq 1 ]; then
  echo "$dir/config"
  exit 0
fi

# --- build -------------------------------------------------------------------
log "building vmlinux with $(nproc) jobs under nice 19 (log: $buildlog)"
start=$SECONDS
kmake -j"$(nproc)" vmlinux
log "built $(cat "$tree/include/config/kernel.release") in $((SECONDS - start)) s"

# ironcell-vmm boots through the PVH entry: the Xen ELF note of type 0x12
# (XEN_ELFNOTE_PHYS32_ENTRY) must be there.
if ! readelf -n "$tree/vmlinux" | awk '$1 == "Xen" && /0x00000012|PHYS32_ENTRY/ {found = 1} END {exit !found}'; then
  readelf -n "$tree/vmlinux" >&2 || true
  die "$tree/vmlinux has no Xen PHYS32_ENTRY (0x12) ELF note: no PVH entry"
fi

cp "$tree/vmlinux" "$out.tmp"
mv "$out.tmp" "$out"
if [ "${IRONCELL_KERNEL_KEEP_TREE:-0}" != 1 ]; then
  rm -rf "$tree"
fi
log "vmlinux: $(stat -c %s "$out") bytes, PVH note present"
echo "$out"
