/* Interrupt entry code of the irq guest (see irq.c): its own flat GDT, the
 * handler of vector 0x30, the spurious-vector handler, and one catch-all stub
 * per vector. General registers only, no hlt and no iret (the PVM host's
 * emulator: see IRET_WITHOUT_IRET). */

	.code32

	/* Flat 4 GiB segments: 0x08 code, 0x10 data (accessed bits preset, so
	 * the CPU never writes the table). */
	.section .data
	.balign 8
gdt:
	.quad 0
	.quad 0x00cf9b000000ffff
	.quad 0x00cf93000000ffff
gdt_end:
	.balign 2
gdt_desc:
	.word gdt_end - gdt - 1
	.long gdt

	.text

/* void irq_load_gdt(void): lgdt, far jump to reload CS = 0x08, data
 * segments = 0x10 (the PVH ABI leaves GDTR undefined, and an interrupt gate
 * needs a code selector that the GDT really has). */
	.globl irq_load_gdt
irq_load_gdt:
	lgdt gdt_desc
	ljmp $0x08, $1f
1:	movl $0x10, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %fs
	movl %eax, %gs
	movl %eax, %ss
	ret

/* Returns from an interrupt without iret: KVM's instruction emulator, which
 * runs ring-0 guest code on the PVM host, implements iret in real mode only
 * (a 32-bit iret ends the VM with "emulation failure", checked in QEMU on
 * the CI host). Same privilege level and code segment, no error code: turn
 * the frame { eip, cs, eflags } into { eflags, eip } and popfl; ret. The
 * interrupt-gate handler runs with IF clear; popfl sets it again one
 * instruction before ret, so a further interrupt may nest there, which is
 * harmless (its own frame returns to the ret). */
	.macro IRET_WITHOUT_IRET
	pushl %eax
	movl 4(%esp), %eax      /* eip */
	xchgl %eax, 12(%esp)    /* eflags slot <- eip, eax <- eflags */
	movl %eax, 8(%esp)      /* cs slot <- eflags */
	popl %eax
	addl $4, %esp           /* drop the old eip slot */
	popfl
	ret
	.endm

/* Vector 0x30: count, EOI to the local APIC, return. */
	.globl irq_vector30
irq_vector30:
	incl irq_count
	movl $0, 0xfee000b0
	IRET_WITHOUT_IRET

/* The spurious vector (0xff): no EOI for spurious interrupts. */
	.globl irq_spurious
irq_spurious:
	incl irq_spurious_count
	IRET_WITHOUT_IRET

/* irq_stub_table + 16 * v: the catch-all entry of vector v. Pushes a zero
 * error code (unless the CPU pushed one: exceptions 8, 10-14, 17, 21, 29,
 * 30) and the vector, then calls irq_unexpected(frame) with frame =
 * { vector, error code, eip, cs, eflags }, which fails the test. The
 * padding after each stub is int3 and never executed. */
	.globl irq_stub_table
	.balign 16, 0xcc
irq_stub_table:
	.set vec, 0
	.rept 256
	.if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
	.else
	pushl $0
	.endif
	pushl $vec
	jmp unexpected_common
	/* Pads to 16 bytes; an error ("attempt to move .org backwards") if a
	 * stub is longer. */
	.org irq_stub_table + 16 * (vec + 1), 0xcc
	.set vec, vec + 1
	.endr

unexpected_common:
	cld
	pushl %esp
	call irq_unexpected
1:	jmp 1b
