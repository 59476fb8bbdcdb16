/* irq: interrupts end to end, rng device -> IOAPIC -> local APIC -> IDT.
 *
 * Loads its own flat GDT and a 32-bit IDT (irq-stubs.S): vector 0x30 counts,
 * writes the local APIC's EOI register and irets; 0xff (the spurious
 * vector) irets; every other vector fails the test with
 *   IRONCELL-TEST FAIL irq: unexpected vector 0x<vv> (error <x>, eip <x>)
 * Enables the local APIC (xAPIC MMIO at 0xfee00000: SVR = 0x1ff, TPR = 0),
 * reads the IOAPIC (0xfec00000) version register and fails unless its
 * maximum redirection entry is 23. Routes the rng device's pin (the number
 * after the colon of its virtio_mmio.device= entry) to vector 0x30: fixed,
 * physical, destination = this CPU's APIC ID, active high, edge, unmasked
 * (high dword written first), and checks the entry reads back so. Then
 * sti, virtio initialisation as in rng.c (queue 0, at most 8 descriptors),
 * and:
 *  1. one 16-byte request; waits (rdtsc-bounded, 5 s) for the interrupt,
 *     reads InterruptStatus (bit 0 must be set), acks it, checks the used
 *     ring holds the buffer and that exactly one interrupt came;
 *  2. masks the entry, posts a second request, polls the used ring (without
 *     touching InterruptStatus), checks that no interrupt arrives for 100 ms,
 *     acks it, unmasks the entry and checks that the dropped edge does not
 *     come late (100 ms): an edge on a masked pin is lost, as on the
 *     82093AA and in QEMU's and KVM's IOAPICs; then a third request must
 *     interrupt again (5 s).
 * Prints (the "virtio:" lines come from lib.c):
 *   virtio: <size>@<base> irq <pin>: magic 74726976 version 2 device 4   (one per device)
 *   irq: ioapic version 0x<vv> max entry 23
 *   irq: pin <pin> routed to vector 0x30 on apic <id>
 *   virtio: device 4 features offered <x> negotiated <x>
 *   irq: interrupt delivered on pin <pin> vector 0x30
 *   irq: masked edge dropped, next one delivered after unmask
 *   IRONCELL-TEST PASS irq
 * Never uses hlt (it does not return on the PVM host): all waits poll. Never
 * uses iret either (KVM's emulator has it in real mode only): the handlers
 * return with popfl; ret (irq-stubs.S).
 */
#include "lib.h"

const char test_name[] = "irq";

#define VECTOR 0x30
#define SPURIOUS_VECTOR 0xff

#define LAPIC_BASE 0xfee00000u
#define LAPIC_ID   0x020
#define LAPIC_TPR  0x080
#define LAPIC_EOI  0x0b0
#define LAPIC_SVR  0x0f0
#define LAPIC_SVR_ENABLE (1u << 8)

#define IOAPIC_BASE   0xfec00000u
#define IOAPIC_REGSEL 0x00
#define IOAPIC_WIN    0x10
#define IOAPIC_REG_VER 0x01
#define IOAPIC_REDTBL(n) (0x10 + 2 * (n))
#define IOAPIC_MASKED (1u << 16)
/* Read-only bits of the low dword: delivery status (12), remote IRR (14). */
#define IOAPIC_RO_BITS ((1u << 12) | (1u << 14))

/* irq-stubs.S */
void irq_load_gdt(void);
void irq_vector30(void);
void irq_spurious(void);
extern const char irq_stub_table[];
#define STUB_SIZE 16
#define CODE_SELECTOR 0x08

/* Counted by the stubs. */
volatile u32 irq_count;
volatile u32 irq_spurious_count;

void irq_unexpected(const u32 *frame);

void irq_unexpected(const u32 *frame)
{
	/* frame: vector, error code (0 if the CPU pushed none), eip, cs, eflags */
	fail("unexpected vector 0x%02x (error %x, eip %x)", frame[0], frame[1], frame[2]);
}

struct gate {
	u16 offset_lo;
	u16 selector;
	u8 zero;
	u8 type;   /* 0x8e: present, DPL 0, 32-bit interrupt gate */
	u16 offset_hi;
} __attribute__((packed));

static struct gate idt[256] __attribute__((aligned(8)));

static void set_gate(u32 vector, const void *handler)
{
	u32 a = (u32)(uptr)handler;
	idt[vector].offset_lo = (u16)a;
	idt[vector].selector = CODE_SELECTOR;
	idt[vector].zero = 0;
	idt[vector].type = 0x8e;
	idt[vector].offset_hi = (u16)(a >> 16);
}

static void setup_idt(void)
{
	for (u32 v = 0; v < 256; v++)
		set_gate(v, irq_stub_table + STUB_SIZE * v);
	set_gate(VECTOR, irq_vector30);
	set_gate(SPURIOUS_VECTOR, irq_spurious);
	struct { u16 limit; u32 base; } __attribute__((packed)) d = { sizeof(idt) - 1, (u32)(uptr)idt };
	__asm__ __volatile__("lidt %0" : : "m"(d) : "memory");
}

static u32 lapic_read(u32 reg) { return mmio_read32(LAPIC_BASE + reg); }
static void lapic_write(u32 reg, u32 v) { mmio_write32(LAPIC_BASE + reg, v); }

static u32 ioapic_read(u32 reg)
{
	mmio_write32(IOAPIC_BASE + IOAPIC_REGSEL, reg);
	return mmio_read32(IOAPIC_BASE + IOAPIC_WIN);
}

static void ioapic_write(u32 reg, u32 v)
{
	mmio_write32(IOAPIC_BASE + IOAPIC_REGSEL, reg);
	mmio_write32(IOAPIC_BASE + IOAPIC_WIN, v);
}

static void check_entry(u32 pin, u32 want_lo, u32 want_hi, const char *what)
{
	u32 lo = ioapic_read(IOAPIC_REDTBL(pin)), hi = ioapic_read(IOAPIC_REDTBL(pin) + 1);
	if ((lo & ~IOAPIC_RO_BITS) != want_lo || hi != want_hi)
		fail("%s: redirection entry %u reads %x:%08x, want %x:%08x", what, pin, hi, lo, want_hi, want_lo);
}

static void sti(void) { __asm__ __volatile__("sti" : : : "memory"); }
static void cli(void) { __asm__ __volatile__("cli" : : : "memory"); }

/* Waits until irq_count reaches want; 0 on timeout. */
static int wait_count(u32 want, u32 timeout_ms)
{
	u64 dl = deadline_ms(timeout_ms);
	while (irq_count < want)
		if (expired(dl))
			return 0;
	return 1;
}

/* InterruptStatus must have the used-buffer bit; acks what it reads. */
static void ack_isr(struct vdev *d, const char *what)
{
	u32 isr = vreg_read(d, VIRTIO_MMIO_INTERRUPT_STATUS);
	if (!(isr & 1))
		fail("%s: InterruptStatus %x after the interrupt, want bit 0 set", what, isr);
	vreg_write(d, VIRTIO_MMIO_INTERRUPT_ACK, isr);
}

/* The used ring must hold exactly the chain head, with 1 to 16 bytes. */
static void check_used(struct virtq *q, u16 head, const char *what)
{
	u32 id, len;
	if (!virtq_get_used(q, &id, &len))
		fail("%s: interrupt but the used ring is empty", what);
	if (id != head)
		fail("%s: device returned chain %u, want %u", what, id, head);
	if (len == 0 || len > 16)
		fail("%s: used length %u, want 1 to 16", what, len);
}

void guest_main(void)
{
	irq_load_gdt();
	setup_idt();

	/* Local APIC: software-enable with the spurious vector, accept all
	 * priorities. */
	u32 apic_id = lapic_read(LAPIC_ID) >> 24;
	lapic_write(LAPIC_SVR, LAPIC_SVR_ENABLE | SPURIOUS_VECTOR);
	lapic_write(LAPIC_TPR, 0);
	if (!(lapic_read(LAPIC_SVR) & LAPIC_SVR_ENABLE))
		fail("local APIC SVR reads %x after enabling", lapic_read(LAPIC_SVR));

	u32 ver = ioapic_read(IOAPIC_REG_VER);
	u32 max_entry = (ver >> 16) & 0xff;
	printf("irq: ioapic version 0x%02x max entry %u\n", ver & 0xff, max_entry);
	if (max_entry != 23)
		fail("ioapic max redirection entry %u, want 23 (version register %x)", max_entry, ver);

	struct vdev d;
	struct virtq q;
	virtio_find(VIRTIO_ID_RNG, &d);
	u32 pin = d.irq;
	if (pin > max_entry)
		fail("rng pin %u beyond the ioapic's %u entries", pin, max_entry + 1);

	/* Fixed, physical, active high, edge, unmasked; high dword first. */
	u32 hi = apic_id << 24, lo = VECTOR;
	ioapic_write(IOAPIC_REDTBL(pin) + 1, hi);
	ioapic_write(IOAPIC_REDTBL(pin), lo);
	check_entry(pin, lo, hi, "routing");
	printf("irq: pin %u routed to vector 0x%02x on apic %u\n", pin, VECTOR, apic_id);

	sti();

	virtio_init(&d, 0);
	virtq_setup(&d, &q, 0, 8);
	virtio_driver_ok(&d);
	u8 *buf1 = dma_alloc(16, 16), *buf2 = dma_alloc(16, 16);

	/* 1: an unmasked pin. */
	struct vbuf b = { buf1, 16, 1 };
	u16 head = virtq_add(&q, &b, 1);
	virtq_notify(&q);
	if (!wait_count(1, 5000))
		fail("no interrupt within 5000 ms (used idx %u, InterruptStatus %x, spurious %u)",
		     q.used->idx, vreg_read(&d, VIRTIO_MMIO_INTERRUPT_STATUS), irq_spurious_count);
	ack_isr(&d, "first request");
	check_used(&q, head, "first request");
	if (irq_count != 1)
		fail("%u interrupts for one request", irq_count);
	printf("irq: interrupt delivered on pin %u vector 0x%02x\n", pin, VECTOR);

	/* 2: an edge on a masked pin is dropped, as on the 82093AA (and in
	 * QEMU's and KVM's IOAPICs); after unmask the next one arrives. */
	ioapic_write(IOAPIC_REDTBL(pin), lo | IOAPIC_MASKED);
	check_entry(pin, lo | IOAPIC_MASKED, hi, "masking");
	b.addr = buf2;
	head = virtq_add(&q, &b, 1);
	virtq_notify(&q);
	u64 dl = deadline_ms(5000);
	while (q.used->idx == q.last_used)
		if (expired(dl))
			fail("masked: no used buffer within 5000 ms");
	dl = deadline_ms(100);
	while (!expired(dl))
		if (irq_count != 1)
			fail("interrupt delivered on a masked pin");
	ack_isr(&d, "second request");
	check_used(&q, head, "second request");
	ioapic_write(IOAPIC_REDTBL(pin), lo);
	dl = deadline_ms(100);
	while (!expired(dl))
		if (irq_count != 1)
			fail("the edge that came while the pin was masked was delivered at unmask");
	head = virtq_add(&q, &b, 1);
	virtq_notify(&q);
	if (!wait_count(2, 5000))
		fail("no interrupt after unmask within 5000 ms (InterruptStatus %x)",
		     vreg_read(&d, VIRTIO_MMIO_INTERRUPT_STATUS));
	ack_isr(&d, "third request");
	check_used(&q, head, "third request");
	if (irq_count != 2)
		fail("%u interrupts for three requests, one masked", irq_count);
	printf("irq: masked edge dropped, next one delivered after unmask\n");
	cli();
}
