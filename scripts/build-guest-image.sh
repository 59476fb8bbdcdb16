#!/usr/bin/env bash
# Builds the vm sandbox's guest image (guest/README.md): an initramfs whose
# only program is ironcell-agent, as /init. As root.
#
#  1. Builds ironcell-agent in release, linked statically (glibc and
#     libseccomp), with the flags of `make build` (the Makefile's
#     RELEASE_RUSTFLAGS, read through `make print-rustflags`), and checks
#     that it needs no dynamic loader.
#  2. Packs it into a newc cpio, deterministically: sorted names, inode
#     numbers 1.., mtime 0, uid/gid 0, and nothing taken from the build
#     machine but the binary's bytes. The same agent gives the same image,
#     byte for byte; the script packs twice and compares before it keeps
#     the result. The cpio is not compressed: the kernel copies it out
#     instead of inflating it at every boot (guest/README.md).
#  3. Keeps it outside the repository, in
#       ${IRONCELL_GUEST_CACHE:-/var/cache/ironcell/guest}/<key>/initrd.img
#     where <key> is the first 16 hex digits of the SHA-256 over the agent
#     binary and this script's version, and points the stable links that
#     ironcell reads by default at it and at the guest kernel
#     (scripts/build-guest-kernel.sh, built or taken from its cache):
#       /var/cache/ironcell/guest/vmlinux
#       /var/cache/ironcell/guest/initrd.img
#
# Progress goes to stderr; the last two lines on stdout are the paths of
# those two links (kernel first, initramfs second).
#
# Every cargo and kernel build runs under `flock /tmp/ironcell-heavy.lock`:
# heavy builds on the machine take turns.
set -euo pipefail

# Bump when a change here changes the resulting image (it is part of the key).
SCRIPT_VERSION=1

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE_ROOT=${IRONCELL_GUEST_CACHE:-/var/cache/ironcell/guest}
HEAVY_LOCK=/tmp/ironcell-heavy.lock
TARGET=x86_64-unknown-linux-gnu
CARGO=${CARGO:-cargo}

log() { echo "build-guest-image: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ $# -eq 0 ] || { echo "usage: $0" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "run as root (the cache is under /var/cache)"
command -v python3 >/dev/null || die "python3 is needed to pack the initramfs"
command -v flock >/dev/null || die "flock (util-linux) is needed"

# --- 1. the agent -------------------------------------------------------------
start=$(date +%s%N)
RUSTFLAGS_RELEASE=$(make -s -C "$REPO" print-rustflags)
log "building ironcell-agent (release, static; waiting for $HEAVY_LOCK if another build holds it)"
# As the Makefile's STATIC_ENV: glibc and libseccomp linked in.
(cd "$REPO" && flock "$HEAVY_LOCK" env RUSTFLAGS="$RUSTFLAGS_RELEASE" \
  LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu \
  "$CARGO" build --release --target "$TARGET" -p ironcell-agent) >&2
AGENT=$REPO/target/$TARGET/release/ironcell-agent
[ -x "$AGENT" ] || die "no $AGENT after the build"
# PID 1 of the guest has no dynamic loader and no libraries to load.
if readelf -lW "$AGENT" | grep -q 'Requesting program interpreter'; then
  die "$AGENT is dynamically linked (it has a program interpreter)"
fi
if readelf -dW "$AGENT" | grep -q '(NEEDED)'; then
  die "$AGENT needs shared libraries: $(readelf -dW "$AGENT" | grep '(NEEDED)' | tr -s ' ')"
fi

# --- 2. the initramfs ---------------------------------------------------------
# The entries, in name order:
#   dev/          0755  where the kernel opens the console
#   dev/console   0600  character device 5:1: the kernel opens it for /init's
#                       stdin, stdout and stderr before running /init (without
#                       it /init starts with fds 0-2 closed, and the first
#                       files it opens would take their numbers)
#   init          0755  ironcell-agent
# Everything else (/proc, /sys, devtmpfs on /dev, /run, /tmp, cgroup2, the
# shared directory) the agent mounts itself (crates/agent/src/init.rs).
pack() { # pack AGENT OUT
  python3 - "$1" "$2" <<'EOF'
import sys

agent_path, out_path = sys.argv[1], sys.argv[2]
with open(agent_path, "rb") as f:
    agent = f.read()

# (name, mode, rdev major, rdev minor, data)
entries = sorted([
    ("dev", 0o040755, 0, 0, b""),
    ("dev/console", 0o020600, 5, 1, b""),
    ("init", 0o100755, 0, 0, agent),
])

def pad4(n):
    return (4 - n % 4) % 4

out = bytearray()
def entry(ino, name, mode, nlink, rmaj, rmin, data):
    name_bytes = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmaj, rmin, len(name_bytes), 0]
    header = b"070701" + b"".join(b"%08X" % v for v in fields)
    out.extend(header + name_bytes + b"\0" * pad4(len(header) + len(name_bytes)))
    out.extend(data + b"\0" * pad4(len(data)))

for ino, (name, mode, rmaj, rmin, data) in enumerate(entries, start=1):
    entry(ino, name, mode, 2 if mode & 0o040000 else 1, rmaj, rmin, data)
entry(0, "TRAILER!!!", 0, 1, 0, 0, b"")
out.extend(b"\0" * pad4(len(out)))

with open(out_path, "wb") as f:
    f.write(out)
EOF
}

KEY=$( { sha256sum <"$AGENT"; echo "build-guest-image $SCRIPT_VERSION"; } | sha256sum | cut -c1-16)
DIR=$CACHE_ROOT/$KEY
IMAGE=$DIR/initrd.img
mkdir -p "$DIR"
exec 9>"$DIR/.lock"
flock 9
if [ -f "$IMAGE" ]; then
  log "cached: $IMAGE"
else
  tmp=$(mktemp -d "$DIR/.tmp.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  pack "$AGENT" "$tmp/a"
  pack "$AGENT" "$tmp/b"
  cmp -s "$tmp/a" "$tmp/b" || die "two packs of the same agent differ: the packing is not deterministic"
  cp "$AGENT" "$tmp/ironcell-agent"
  mv "$tmp/ironcell-agent" "$DIR/ironcell-agent"
  mv "$tmp/a" "$IMAGE"
  rm -rf "$tmp"
  trap - EXIT
  log "packed $IMAGE"
fi
flock -u 9

# --- 3. the kernel and the stable links ---------------------------------------
log "guest kernel (scripts/build-guest-kernel.sh; built once, then cached)"
VMLINUX=$(flock "$HEAVY_LOCK" bash "$REPO/scripts/build-guest-kernel.sh" | tail -n 1)
[ -f "$VMLINUX" ] || die "the kernel build printed no vmlinux path (got '$VMLINUX')"

link() { # link TARGET NAME: replaces NAME atomically
  ln -sfn "$1" "$CACHE_ROOT/.$2.new"
  mv -Tf "$CACHE_ROOT/.$2.new" "$CACHE_ROOT/$2"
}
link "$VMLINUX" vmlinux
link "$IMAGE" initrd.img

size=$(stat -c %s "$IMAGE")
log "initramfs: $(( (size + 1023) / 1024 )) KiB, sha256 $(sha256sum <"$IMAGE" | cut -c1-16)...; agent $(stat -c %s "$AGENT") bytes"
ms=$(( ($(date +%s%N) - start) / 1000000 ))
log "done in $((ms / 1000)).$(printf '%03d' $((ms % 1000))) s"
echo "$CACHE_ROOT/vmlinux"
echo "$CACHE_ROOT/initrd.img"
