/* hello: the minimal guest (also the guest of bench/vmm_bench.py).
 * Prints "hello from ironcell guest\n" on COM1 and resets; prints nothing
 * else (no device scan, no IRONCELL-TEST line: the message is the test).
 * About 3 + 4 * 26 + 2 instructions, one IoOut exit per byte. */
#include "pvh-note.S"

	.section .text.entry, "ax"
	.code32
	.globl _start
_start:
	movl $msg, %esi
	movl $msg_len, %ecx
	movw $0x3f8, %dx
1:	movb (%esi), %al
	outb %al, %dx
	incl %esi
	decl %ecx
	jnz 1b
	/* i8042 reset: ironcell-vmm exits 0 here. */
	movb $0xfe, %al
	outb %al, $0x64
	/* No i8042 (QEMU microvm): triple fault, which -no-reboot ends on. */
	lidt no_idt
	ud2
2:	jmp 2b

	.balign 2
no_idt:	.word 0
	.long 0
msg:	.ascii "hello from ironcell guest\n"
	msg_len = . - msg
