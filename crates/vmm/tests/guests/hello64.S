/* hello64: the 64-bit ELF entry (no PVH note). ironcell-vmm enters it in
 * long mode with identity paging and RSI = the zero page, like a vmlinux
 * without PVH support. Prints one line on COM1 and resets. */
	.section .text.entry, "ax"
	.code64
	.globl _start
_start:
	leaq msg(%rip), %rsi
	movl $msg_len, %ecx
	movw $0x3f8, %dx
1:	movb (%rsi), %al
	outb %al, %dx
	incq %rsi
	decl %ecx
	jnz 1b
	movb $0xfe, %al
	outb %al, $0x64
2:	jmp 2b

msg:	.ascii "hello from a 64-bit ironcell guest\n"
	msg_len = . - msg
