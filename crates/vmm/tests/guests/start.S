/* Entry of the C test guests (PVH boot ABI: 32-bit protected mode, flat
 * segments, paging off, interrupts off, EBX = struct hvm_start_info). */
#include "pvh-note.S"

	.section .text.entry, "ax"
	.code32
	.globl _start
_start:
	cli
	cld
	movl $_stack_top, %esp
	/* Zero .bss (a fresh VM's RAM is zero anyway; this is for reboots). */
	movl $__bss_start, %edi
	movl $__bss_end, %ecx
	subl %edi, %ecx
	shrl $2, %ecx
	xorl %eax, %eax
	rep stosl
	movl %ebx, start_info
	call guest_main
	call pass
1:	jmp 1b
