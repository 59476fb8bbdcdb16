/* The Xen PVH ELF note (XEN_ELFNOTE_PHYS32_ENTRY = 18): name "Xen", a
 * 4-byte 32-bit entry address. Included by every guest's entry file. */
	.pushsection .note.Xen, "a", @note
	.balign 4
	.long 4          /* namesz: "Xen\0" */
	.long 4          /* descsz */
	.long 18         /* type: XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.long _start     /* 32-bit physical entry */
	.popsection
