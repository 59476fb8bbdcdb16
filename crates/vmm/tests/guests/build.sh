#!/bin/sh
# Builds the ironcell test guests: build.sh OUTDIR writes OUTDIR/<name>.elf
# for hello, triple, block, rng, vsock, net, irq, cpuid and fs, and hello64 (a 64-bit ELF
# without PVH note: the VMM's long-mode entry).
#
# Only gcc, as, ld and objcopy (Debian's build-essential/binutils; no
# multilib needed: the guests use no libc and no libgcc). Each guest is
# 32-bit code linked at 1 MiB (link.ld), entered through its Xen PVH note
# (pvh-note.S) in 32-bit protected mode, and written as an ELF64 (EM_X86_64)
# file like a Linux vmlinux. Deterministic: no debug info, no build id, no
# paths or dates in the output. Takes well under a second.
set -eu

if [ $# -ne 1 ]; then
	echo "usage: $0 OUTDIR" >&2
	exit 2
fi
OUT=$1
SRC=$(cd "$(dirname "$0")" && pwd)
CC=${CC:-gcc}
LD=${LD:-ld}
OBJCOPY=${OBJCOPY:-objcopy}

# Ring-0 guest code runs through KVM's instruction emulator on the PVM
# host: general registers only, no SSE/MMX/x87, no CET endbr32, no
# multi-byte NOP padding (-falign-*=1), and no calls to memset/memcpy
# synthesized from loops inside lib.c's own memset/memcpy.
CFLAGS="-m32 -march=i686 -std=gnu11 -ffreestanding -fno-pic -fno-pie -O2
 -mgeneral-regs-only -mno-sse -mno-mmx -mno-80387
 -fno-stack-protector -fno-asynchronous-unwind-tables -fno-unwind-tables
 -fcf-protection=none -fno-tree-loop-distribute-patterns -fno-jump-tables
 -falign-functions=1 -falign-jumps=1 -falign-loops=1 -falign-labels=1
 -Wall -Wextra -Werror -Wno-unused-parameter"
ASFLAGS="-m32 -fno-pic"

mkdir -p "$OUT/obj"
OBJ=$OUT/obj

compile_c() { # src obj
	# shellcheck disable=SC2086
	$CC $CFLAGS -c "$1" -o "$2"
}
assemble() { # src obj
	# shellcheck disable=SC2086
	$CC $ASFLAGS -I"$SRC" -c "$1" -o "$2"
}
link() { # name objs...
	name=$1
	shift
	$LD -m elf_i386 -nostdlib -static --no-dynamic-linker --build-id=none \
		-z noexecstack --no-warn-rwx-segments \
		-T "$SRC/link.ld" -o "$OBJ/$name.elf32" "$@"
	$OBJCOPY -I elf32-i386 -O elf64-x86-64 "$OBJ/$name.elf32" "$OUT/$name.elf"
}

# Assembly-only guests.
for g in hello triple; do
	assemble "$SRC/$g.S" "$OBJ/$g.o"
	link "$g" "$OBJ/$g.o"
done

# The 64-bit entry: 64-bit code, no PVH note, plain ELF64 at 1 MiB.
$CC -m64 -fno-pic -c "$SRC/hello64.S" -o "$OBJ/hello64.o"
$LD -m elf_x86_64 -nostdlib -static --no-dynamic-linker --build-id=none -z noexecstack \
	-Ttext=0x100000 -e _start -o "$OUT/hello64.elf" "$OBJ/hello64.o"

# C guests on the shared runtime.
assemble "$SRC/start.S" "$OBJ/start.o"
compile_c "$SRC/lib.c" "$OBJ/lib.o"
# A guest with assembly of its own has it in <name>-stubs.S (irq: GDT,
# interrupt entry stubs).
for g in block rng vsock net irq cpuid fs; do
	compile_c "$SRC/$g.c" "$OBJ/$g.o"
	if [ -f "$SRC/$g-stubs.S" ]; then
		assemble "$SRC/$g-stubs.S" "$OBJ/$g-stubs.o"
		link "$g" "$OBJ/start.o" "$OBJ/$g.o" "$OBJ/$g-stubs.o" "$OBJ/lib.o"
	else
		link "$g" "$OBJ/start.o" "$OBJ/$g.o" "$OBJ/lib.o"
	fi
done
