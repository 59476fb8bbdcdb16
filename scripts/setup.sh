#!/usr/bin/env bash
# Installs everything ironcell's build, demo and tests need on a fresh Debian 12
# machine, as root. Idempotent: a second run only checks.
set -euo pipefail

PKGS=(
  # build
  build-essential pkg-config libseccomp-dev protobuf-compiler
  # the bundled test image
  busybox-static
  # real clients and reference runtimes for the tests and benchmarks
  podman conmon containerd runc crun docker.io iptables
  # tools used by the tests and benchmarks (cpio: the VMM's Linux boot test)
  jq procps util-linux iproute2 time cpio
  # WASI test and benchmark programs in C (wasi-libc; clang's wasm32 target)
  clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32
  # the vm sandbox's guest side under QEMU TCG (docs/qemu-recipe.md), and the
  # VMM benchmark's reference; libcap-ng-dev (and libseccomp-dev above) for
  # building virtiofsd below
  qemu-system-x86 libcap-ng-dev
)
# `setup.sh fuzz`: the nightly toolchain and cargo-fuzz (crates.io), for
# `make fuzz`; nothing from Debian beyond the build packages.
if [ "${1:-}" = fuzz ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
  rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
  command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # No init system runs services here: keep package scripts from starting daemons.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
  rm -f /usr/sbin/policy-rc.d
else
  echo "setup: all packages present"
fi

# crun (Debian 12: 1.8.1) refuses to start on cgroup v1 unless the hugetlb
# controller is mounted.
if [ ! -d /sys/fs/cgroup/unified ] || grep -q ' /sys/fs/cgroup cgroup2 ' /proc/self/mountinfo; then
  :
fi
if grep -q ' /sys/fs/cgroup tmpfs ' /proc/self/mountinfo \
   && ! grep -q ' /sys/fs/cgroup/hugetlb ' /proc/self/mountinfo \
   && grep -qw hugetlb /proc/cgroups; then
  mkdir -p /sys/fs/cgroup/hugetlb
  mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb || echo "setup: warning: could not mount hugetlb cgroup"
fi

# Rust's musl target: ironcell-vmm's release build (Makefile). glibc's
# static start-up executes CPUID dozens of times, each an exit to the
# hypervisor on a nested host (0.3 ms here); musl's does not.
if command -v rustup >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/rustup" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
  rustup target list --installed | grep -qx x86_64-unknown-linux-musl \
    || rustup target add x86_64-unknown-linux-musl
fi

# containerd 1.7 (Debian 13's) and 2.x (Debian unstable's), unpacked under
# /var/cache/ironcell, for the daemon's CRI tests.
bash "$(dirname "$0")/fetch-containerd.sh" 1.7 >/dev/null
bash "$(dirname "$0")/fetch-containerd.sh" 2 >/dev/null

# vhost-user backends for the vm sandbox under QEMU with
# `qemu_device_backend = "external"` (by default ironcell-vmm serves QEMU's
# devices; docs/vm.md, docs/qemu-recipe.md): virtiofsd (virtio-fs) and
# vhost-device-vsock (hybrid vsock over vhost-user-vsock). Debian 12 packages
# neither, so they are built from
# crates.io at pinned versions, with the crates' own Cargo.lock (--locked),
# into a project-owned prefix. The build takes the shared heavy-build lock
# (other builds run on this 2-core machine at the same time).
TOOLS_ROOT=${IRONCELL_TOOLS_ROOT:-/var/cache/ironcell/tools}
VHOST_TOOLS=(
  "virtiofsd 1.14.0"
  "vhost-device-vsock 0.3.0"
)
export PATH="$HOME/.cargo/bin:$PATH"
for tool in "${VHOST_TOOLS[@]}"; do
  read -r crate version <<<"$tool"
  bin=$TOOLS_ROOT/bin/$crate
  if [ "$("$bin" --version 2>/dev/null)" != "$crate $version" ]; then
    command -v cargo >/dev/null || { echo "setup: cargo is needed to build $crate" >&2; exit 1; }
    echo "setup: building $crate $version into $TOOLS_ROOT (about 1-2 minutes)"
    flock /tmp/ironcell-heavy.lock nice -n 10 \
      cargo install --locked --quiet --root "$TOOLS_ROOT" "$crate@$version"
    [ "$("$bin" --version 2>/dev/null)" = "$crate $version" ] \
      || { echo "setup: $bin --version does not say $crate $version" >&2; exit 1; }
  fi
  echo "setup: $crate $version: $bin"
done
echo "setup: qemu: $(command -v qemu-system-x86_64) ($(qemu-system-x86_64 --version | head -n1))"
