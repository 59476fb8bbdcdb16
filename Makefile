# ironcell — the two commands of the README:
#   make demo   set up this machine, build, and run a container from the bundled test image
#   make test   set up this machine and run every test (needs root, like any container runtime)
# Both install what they need from Debian's packages through scripts/setup.sh.

SHELL := /bin/bash
CARGO ?= cargo
IMAGE_DIR ?= build/test-image
# The release binary is linked statically (glibc and libseccomp): no dynamic
# loader work at each start and ~1 MiB less resident memory. Its relative
# relocations are packed (DT_RELR, glibc 2.36+): a static PIE applies them at
# every start, and the unpacked table alone was ~700 KiB of pages read.
TARGET := x86_64-unknown-linux-gnu
IRONCELL := target/$(TARGET)/release/ironcell
# ironcell-vmm's release build is linked with musl (statically, as Rust's
# musl target does): glibc's static start-up runs CPUID dozens of times
# (cache and feature probing for its string functions), each an exit to the
# hypervisor on a nested host; spawn to the guest's first byte went from
# about 2.3 to 1.7 ms (docs/vmm.md). Firecracker ships musl builds too.
VMM_TARGET := x86_64-unknown-linux-musl
VMM := target/$(VMM_TARGET)/release/ironcell-vmm
# The functions a run executes are placed first in the text
# (scripts/link-ordered.sh, list recorded by scripts/profile-link-order.py);
# v0 symbol mangling gives that list names that survive rebuilds.
RELEASE_RUSTFLAGS := -C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs -C symbol-mangling-version=v0 -C linker=$(CURDIR)/scripts/link-ordered.sh
STATIC_ENV := RUSTFLAGS="$(RELEASE_RUSTFLAGS)" LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu

.PHONY: setup build image demo test lint unit bench bench-vmm bench-vm bench-daemon bench-wasm fuzz clean print-rustflags link-order guest-kernel guest

setup:
	bash scripts/setup.sh

build: setup
	$(STATIC_ENV) $(CARGO) build --release --target $(TARGET) --workspace
	@cat target/$(TARGET)/release/link-order.report
	$(CARGO) build --release --target $(VMM_TARGET) -p vmm --bin ironcell-vmm

image: setup
	bash scripts/build-test-image.sh $(IMAGE_DIR)

demo: build image
	@echo "== ironcell run of the bundled test image ($(IMAGE_DIR)/bundle)"
	$(IRONCELL) --root /run/ironcell run --bundle $(IMAGE_DIR)/bundle ironcell-demo-$$$$
	@echo "== the same image through podman with ironcell as its runtime"
	CONTAINERS_CONF=$(CURDIR)/scripts/containers.conf podman load -q -i $(IMAGE_DIR)/ironcell-test.docker.tar
	CONTAINERS_CONF=$(CURDIR)/scripts/containers.conf podman --runtime $(CURDIR)/$(IRONCELL) run --rm localhost/ironcell-test:latest sh -c 'echo hello from podman + ironcell; uname -a'

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The guest image (kernel and initramfs) is built (or taken from its cache)
# first: the VMM's tests and the vm sandbox's boot it. So is the kernel's
# test-only pvm-test variant, which the tests boot on PVM hosts
# (guest/README.md).
test: setup image lint
	set -o pipefail; bash scripts/build-guest-image.sh > build/guest-image.txt && \
	GUEST_KERNEL=$$(tail -n 2 build/guest-image.txt | head -n 1) && GUEST_INITRD=$$(tail -n 1 build/guest-image.txt) && \
	GUEST_KERNEL_PVM_TEST=$$(bash scripts/build-guest-kernel.sh --variant pvm-test | tail -n 1) && \
	IRONCELL_GUEST_KERNEL=$$GUEST_KERNEL IRONCELL_GUEST_INITRD=$$GUEST_INITRD \
	IRONCELL_GUEST_KERNEL_PVM_TEST=$$GUEST_KERNEL_PVM_TEST \
	IRONCELL_TEST_IMAGE=$(CURDIR)/$(IMAGE_DIR) $(CARGO) test --workspace -- --nocapture 2>&1 | tee build/test.log
	@# The VMM's tests again on its release build: musl (other syscalls
	@# behind the same calls, which its seccomp allowlists must admit) with
	@# LTO (which once left a libc function unlinked, see rng.rs).
	set -o pipefail; GUEST_KERNEL=$$(bash scripts/build-guest-kernel.sh | tail -n 1) && \
	GUEST_KERNEL_PVM_TEST=$$(bash scripts/build-guest-kernel.sh --variant pvm-test | tail -n 1) && \
	IRONCELL_GUEST_KERNEL=$$GUEST_KERNEL IRONCELL_GUEST_KERNEL_PVM_TEST=$$GUEST_KERNEL_PVM_TEST \
	$(CARGO) test --release -p vmm --target $(VMM_TARGET) -- --nocapture 2>&1 | tee -a build/test.log
	@awk '/^test result:/ {p += $$4; f += $$6} END {printf "%d passed, %d failed\n", p, f}' build/test.log

bench: build image
	python3 bench/run_bench.py --runtime ironcell=$(IRONCELL) --runtime runc=/usr/sbin/runc --runtime crun=/usr/bin/crun --bundle $(IMAGE_DIR)/bundle

# ironcell-vmm against QEMU's microvm, minimal guest (bench/README.md).
bench-vmm: build
	bash scripts/setup.sh bench
	python3 bench/vmm_bench.py --vmm $(VMM)

# ironcelld against containerd's runc shim: ctr run latency and management
# PSS with 1, 10 and 50 tasks, then CRI pod start latency through containerd
# 1.7 (bench/README.md).
bench-daemon: build image
	python3 bench/daemon_bench.py
	$(STATIC_ENV) $(CARGO) build --release --target $(TARGET) -p ironcelld --example cri_bench
	target/$(TARGET)/release/examples/cri_bench

# The wasm sandbox: `ironcell run` of a hello-world module, cache warm and
# cold, beside the native build as a namespace container (ironcell, crun,
# runc); then wasm tasks per second through ironcelld (bench/README.md).
bench-wasm: build image
	mkdir -p build/bench
	clang-14 --target=wasm32-wasi -O2 -o build/bench/hello.wasm bench/wasm/hello.c
	gcc -O2 -static -o build/bench/hello bench/wasm/hello.c
	python3 bench/wasm_bench.py --ironcell $(IRONCELL) --wasm build/bench/hello.wasm --native build/bench/hello
	$(STATIC_ENV) $(CARGO) build --release --target $(TARGET) -p ironcelld --example wasm_stress
	target/$(TARGET)/release/examples/wasm_stress --tasks 1000 --parallel 100

# The vm sandbox (bench/vm_bench.py, docs/vm.md): guest memory in use and the
# agent's RSS for one sleeping container, the host processes ironcell adds
# per VM, and `ironcell run` of /bin/true against the namespace sandbox,
# under QEMU with TCG (BENCH_VM_ARGS="--hypervisor ironcell-vmm" on a KVM
# host with VT-x or AMD-V); then VM pods through containerd 1.7's CRI
# against namespace pods, and the host memory per VM pod at 1, 5 and 10.
BENCH_VM_ARGS ?=
bench-vm: build image guest
	$(STATIC_ENV) $(CARGO) build --release --target $(TARGET) -p ironcell-sandbox --example guest_details
	python3 bench/vm_bench.py --ironcell $(IRONCELL) $(BENCH_VM_ARGS)
	$(STATIC_ENV) $(CARGO) build --release --target $(TARGET) -p ironcelld --example cri_vm_bench
	target/$(TARGET)/release/examples/cri_vm_bench

# Fuzzes request decoding and handling (fuzz/): ironcelld's (FUZZ_TARGET
# requests, the default) or the guest agent's (FUZZ_TARGET=agent_requests).
# Needs the nightly toolchain and cargo-fuzz, installed by
# `scripts/setup.sh fuzz`. FUZZ_SECONDS bounds the run (default 120).
FUZZ_SECONDS ?= 120
FUZZ_TARGET ?= requests
fuzz:
	bash scripts/setup.sh fuzz
	cd fuzz && $(CARGO) +nightly fuzz run $(FUZZ_TARGET) -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096

# Re-record crates/cli/link-order.txt (root, tracefs; see the script).
link-order: image
	python3 scripts/profile-link-order.py

print-rustflags:
	@echo '$(RELEASE_RUSTFLAGS)'

clean:
	$(CARGO) clean
	rm -rf build

# The microVM guest kernel (guest/README.md); prints the cached vmlinux path.
guest-kernel:
	bash scripts/build-guest-kernel.sh

# The vm sandbox's guest (guest/README.md): the script builds the kernel
# (scripts/build-guest-kernel.sh, as guest-kernel) and the initramfs holding
# only ironcell-agent as /init, both cached under /var/cache/ironcell/. The
# last two lines printed are the stable paths ironcell reads by default,
# /var/cache/ironcell/guest/vmlinux and /var/cache/ironcell/guest/initrd.img.
# Its cargo and kernel builds take turns on /tmp/ironcell-heavy.lock.
guest: setup
	bash scripts/build-guest-image.sh
