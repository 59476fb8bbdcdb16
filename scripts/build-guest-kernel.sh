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
#   --variant NAME  build a variant of the kernel: guest/kernel/NAME/ holds its
#                   patches (*.patch, applied in name order with patch -p1), a
#                   config fragment NAME.config merged after ironcell.config,
#                   and the kernel command line the variant needs (`cmdline`,
#                   copied next to its vmlinux). Its cache key covers all of
#                   them. The only variant is pvm-test (guest/README.md): a
#                   test-only kernel for PVM hosts. Without --variant the
#                   kernel is built from ironcell.config alone, as always.
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

usage() { echo "usage: $0 [--config-only] [--variant NAME]" >&2; exit 2; }
CONFIG_ONLY=0
VARIANT=
while [ $# -gt 0 ]; do
  case "$1" in
    --config-only) CONFIG_ONLY=1 ;;
    --variant) [ $# -ge 2 ] || usage; VARIANT=$2; shift ;;
    --variant=*) VARIANT=${1#--variant=} ;;
    *) usage ;;
  esac
  shift
done

log() { echo "build-guest-kernel: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ -f "$FRAGMENT" ] || die "missing $FRAGMENT"

# A variant's files: its patches, its config fragment and its command line.
VARIANT_DIR=
VARIANT_FRAGMENT=
VARIANT_PATCHES=()
if [ -n "$VARIANT" ]; then
  case "$VARIANT" in
    *[!a-z0-9-]* | -*) die "bad variant name '$VARIANT'" ;;
  esac
  VARIANT_DIR=$REPO/guest/kernel/$VARIANT
  [ -d "$VARIANT_DIR" ] || die "no variant '$VARIANT' ($VARIANT_DIR does not exist)"
  [ ! -f "$VARIANT_DIR/$VARIANT.config" ] || VARIANT_FRAGMENT=$VARIANT_DIR/$VARIANT.config
  for p in "$VARIANT_DIR"/*.patch; do
    [ -f "$p" ] && VARIANT_PATCHES+=("$p")
  done
fi

# --- build dependencies (same pattern as scripts/setup.sh) -------------------
PKGS=(
  # the kernel source (/usr/src/linux-source-6.1.tar.xz) and its unpacking
  "$SRC_PKG" xz-utils
  # compiler, make, binutils (readelf), perl
  build-essential
  # kconfig's parser (bison, flex), kernel/time/timeconst.bc (bc),
  # objtool (libelf-dev; ORC unwinder, retpoline/rethunk annotations)
  bison flex bc libelf-dev
  # a variant's patches
  patch
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
# The default kernel's key is exactly what it always was; a variant's adds
# its name and every file of its directory (name and content).
key=$({
  cat "$FRAGMENT"; echo "script-version=$SCRIPT_VERSION"; echo "$SRC_PKG=$src_version"
  if [ -n "$VARIANT" ]; then
    echo "variant=$VARIANT"
    (cd "$VARIANT_DIR" && LC_ALL=C find . -type f | LC_ALL=C sort | while IFS= read -r f; do
      echo "file=$f"; cat "$f"
    done)
  fi
} | sha256sum | cut -c1-16)
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

# --- a variant's patches -----------------------------------------------------
for p in "${VARIANT_PATCHES[@]}"; do
  log "applying $VARIANT/$(basename "$p")"
  if ! patch -d "$tree" -p1 --batch --forward --no-backup-if-mismatch <"$p" >>"$buildlog" 2>&1; then
    die "$p does not apply to $SRC_PKG $src_version"
  fi
done

# --- configuration -----------------------------------------------------------
FRAGMENTS=("$FRAGMENT")
[ -z "$VARIANT_FRAGMENT" ] || FRAGMENTS+=("$VARIANT_FRAGMENT")
log "configuring: allnoconfig + $(for f in "${FRAGMENTS[@]}"; do basename "$f"; done | paste -sd+ | sed 's/+/ + /g')"
kmake allnoconfig
(cd "$tree" && ARCH="$KARCH" scripts/kconfig/merge_config.sh -m .config "${FRAGMENTS[@]}") >>"$buildlog" 2>&1
kmake olddefconfig

# The options a fragment sets, one "NAME<TAB>LINE" per line.
fragment_options() {
  local line name
  while IFS= read -r line || [ -n "$line" ]; do
    line=${line%"${line##*[![:space:]]}"}        # strip trailing whitespace
    case "$line" in
      CONFIG_*=*) name=${line%%=*} ;;
      "# CONFIG_"*" is not set") name=${line#\# }; name=${name%% *} ;;
      *) continue ;;
    esac
    printf '%s\t%s\n' "$name" "$line"
  done < "$1"
}

# Every option the fragments set must have survived olddefconfig: an option
# whose dependencies are unmet is silently dropped by kconfig. A variant's
# fragment overrides ironcell.config for the options it names.
overridden=$( [ -z "$VARIANT_FRAGMENT" ] || fragment_options "$VARIANT_FRAGMENT" | cut -f1)
dropped=()
for f in "${FRAGMENTS[@]}"; do
  while IFS=$'\t' read -r name line; do
    if [ "$f" = "$FRAGMENT" ] && grep -qxF -- "$name" <<<"$overridden"; then
      continue
    fi
    case "$line" in
      CONFIG_*=*)
        if ! grep -qxF -- "$line" "$tree/.config"; then
          final=$(grep -E "^($name=|# $name is not set)" "$tree/.config" || true)
          dropped+=("$(basename "$f"): $line  (final: ${final:-absent})")
        fi
        ;;
      *)
        if final=$(grep -E "^$name=" "$tree/.config"); then
          dropped+=("$(basename "$f"): $line  (final: $final)")
        fi
        ;;
    esac
  done < <(fragment_options "$f")
done
if [ "${#dropped[@]}" -gt 0 ]; then
  log "error: ${#dropped[@]} fragment option(s) did not survive into $tree/.config"
  log "(unmet dependencies or unknown symbols; see scripts/kconfig/merge_config.sh's warnings in $buildlog):"
  for d in "${dropped[@]}"; do log "  $d"; done
  exit 1
fi
cp "$tree/.config" "$dir/config"
log "configuration verified ($(cat "${FRAGMENTS[@]}" | grep -cE '^CONFIG_|^# CONFIG_.* is not set') fragment options)"

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

# A variant's command line goes next to its vmlinux, for the tests and the
# runtime to read (written before the vmlinux, whose presence marks the
# cache entry complete).
if [ -n "$VARIANT" ] && [ -f "$VARIANT_DIR/cmdline" ]; then
  cp "$VARIANT_DIR/cmdline" "$dir/cmdline"
fi
cp "$tree/vmlinux" "$out.tmp"
mv "$out.tmp" "$out"
if [ "${IRONCELL_KERNEL_KEEP_TREE:-0}" != 1 ]; then
  rm -rf "$tree"
fi
log "vmlinux: $(stat -c %s "$out") bytes, PVH note present"
echo "$out"
