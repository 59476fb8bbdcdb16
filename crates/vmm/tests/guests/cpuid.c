/* cpuid: what the VMM told KVM to answer to CPUID (KVM_SET_CPUID2).
 *
 * Prints
 *   cpuid: max-leaf=<hex> vendor=<12 characters> hypervisor=<0|1> apic-id=<n>
 *   IRONCELL-TEST PASS cpuid
 * from leaf 0 (highest leaf, vendor string in EBX, EDX, ECX) and leaf 1
 * (ECX bit 31, set by the VMM; the initial APIC id in EBX bits 31-24).
 * Fails if the vendor string has a byte outside printable ASCII.
 */
#include "lib.h"

const char test_name[] = "cpuid";

static void cpuid(u32 leaf, u32 *a, u32 *b, u32 *c, u32 *d)
{
	asm volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}

void guest_main(void)
{
	u32 a, b, c, d;
	char vendor[13];
	cpuid(0, &a, &b, &c, &d);
	memcpy(vendor, &b, 4);
	memcpy(vendor + 4, &d, 4);
	memcpy(vendor + 8, &c, 4);
	vendor[12] = 0;
	for (int i = 0; i < 12; i++)
		if (vendor[i] < 0x20 || vendor[i] > 0x7e)
			fail("vendor byte %d is %x", i, (u32)(u8)vendor[i]);
	u32 max = a;
	cpuid(1, &a, &b, &c, &d);
	printf("cpuid: max-leaf=%x vendor=%s hypervisor=%u apic-id=%u\n", max, vendor,
	       c >> 31, b >> 24);
}
