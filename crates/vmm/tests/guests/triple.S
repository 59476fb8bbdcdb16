/* triple: for the VMM's negative tests. Prints "triple: faulting now\n",
 * loads an empty IDT (limit 0) and executes ud2: #UD cannot be delivered
 * -> #GP -> #DF -> triple fault, which KVM reports as a shutdown exit (the
 * VMM must end non-zero). If execution ever continues it prints
 * "IRONCELL-TEST FAIL triple: no triple fault" and resets. */
#include "pvh-note.S"

	.section .text.entry, "ax"
	.code32
	.globl _start
_start:
	movl $_stack_top, %esp
	movl $msg1, %esi
	call print
	lidt no_idt
	ud2
	movl $msg2, %esi
	call print
	movb $0xfe, %al
	outb %al, $0x64
3:	jmp 3b

/* Prints the NUL-terminated string at %esi. */
print:
	movw $0x3f8, %dx
1:	movb (%esi), %al
	testb %al, %al
	jz 2f
	outb %al, %dx
	incl %esi
	jmp 1b
2:	ret

	.balign 2
no_idt:	.word 0
	.long 0
msg1:	.asciz "triple: faulting now\n"
msg2:	.asciz "IRONCELL-TEST FAIL triple: no triple fault\n"
