/* Shared runtime of the ironcell test guests: see lib.h. */
#include "lib.h"

struct hvm_start_info *start_info;

/* ---------------------------------------------------------------- libc-ish */

/* String instructions: the emulator runs a `rep stosl` about 25 times
 * faster than the equivalent byte loop (9 ms per 4 KiB). */
void *memset(void *d, int c, u32 n)
{
	void *p = d;
	u32 words = n >> 2, bytes = n & 3;
	u32 v = (u8)c * 0x01010101u;
	__asm__ __volatile__("rep stosl" : "+D"(p), "+c"(words) : "a"(v) : "memory");
	__asm__ __volatile__("rep stosb" : "+D"(p), "+c"(bytes) : "a"(v) : "memory");
	return d;
}

void *memcpy(void *d, const void *s, u32 n)
{
	void *p = d;
	u32 words = n >> 2, bytes = n & 3;
	__asm__ __volatile__("rep movsl" : "+D"(p), "+S"(s), "+c"(words) : : "memory");
	__asm__ __volatile__("rep movsb" : "+D"(p), "+S"(s), "+c"(bytes) : : "memory");
	return d;
}

int memcmp(const void *a, const void *b, u32 n)
{
	const u8 *p = a, *q = b;
	for (; n; n--, p++, q++)
		if (*p != *q)
			return *p < *q ? -1 : 1;
	return 0;
}

u32 strlen(const char *s)
{
	u32 n = 0;
	while (s[n])
		n++;
	return n;
}

/* -------------------------------------------------------------------- time */

u64 deadline_ms(u32 ms)
{
	return rdtsc() + (u64)ms * TICKS_PER_MS;
}

int expired(u64 deadline)
{
	return rdtsc() >= deadline;
}

/* ------------------------------------------------------------------ serial */

#define COM1 0x3f8
#define COM1_LSR (COM1 + 5)
#define LSR_THRE 0x20

void putc(char c)
{
	/* Wait (bounded) for an empty transmit holding register. vm-superio and
	 * QEMU report it empty at once, so this costs one port read per byte. */
	for (u32 i = 0; i < 1000; i++)
		if (inb(COM1_LSR) & LSR_THRE)
			break;
	outb(COM1, (u8)c);
}

void puts(const char *s)
{
	while (*s)
		putc(*s++);
}

static const char hexdigits[] = "0123456789abcdef";

void print_hex(const void *p, u32 n)
{
	const u8 *b = p;
	for (u32 i = 0; i < n; i++) {
		putc(hexdigits[b[i] >> 4]);
		putc(hexdigits[b[i] & 15]);
	}
}

/* Unsigned 64-bit value in base 10 or 16 without libgcc's 64-bit division:
 * divide 16 bits at a time (the remainder times 65536 fits in 32 bits). */
static void print_u64(u64 v, u32 base, u32 width, char pad)
{
	char buf[24];
	u32 n = 0;
	do {
		u32 limbs[4] = { (u32)(v >> 48) & 0xffff, (u32)(v >> 32) & 0xffff,
				 (u32)(v >> 16) & 0xffff, (u32)v & 0xffff };
		u32 r = 0;
		u64 q = 0;
		for (int i = 0; i < 4; i++) {
			u32 cur = (r << 16) | limbs[i];
			q = (q << 16) | (cur / base);
			r = cur % base;
		}
		buf[n++] = hexdigits[r];
		v = q;
	} while (v);
	while (n < width && n < sizeof(buf))
		buf[n++] = pad;
	while (n)
		putc(buf[--n]);
}

void vprintf(const char *fmt, va_list ap)
{
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			if (*fmt == '\n')
				putc('\n');
			else
				putc(*fmt);
			continue;
		}
		fmt++;
		char pad = ' ';
		u32 width = 0;
		int longlong = 0;
		if (*fmt == '0') {
			pad = '0';
			fmt++;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (u32)(*fmt++ - '0');
		while (*fmt == 'l') {
			longlong++;
			fmt++;
		}
		switch (*fmt) {
		case 's': {
			const char *s = va_arg(ap, const char *);
			puts(s ? s : "(null)");
			break;
		}
		case 'c':
			putc((char)va_arg(ap, int));
			break;
		case 'd': {
			s32 v = va_arg(ap, s32);
			if (v < 0) {
				putc('-');
				print_u64((u64)(-(long long)v), 10, width, pad);
			} else {
				print_u64((u64)v, 10, width, pad);
			}
			break;
		}
		case 'u':
		case 'x': {
			u64 v = longlong >= 2 ? va_arg(ap, u64) : (u64)va_arg(ap, u32);
			print_u64(v, *fmt == 'u' ? 10 : 16, width, pad);
			break;
		}
		case '%':
			putc('%');
			break;
		case 0:
			return;
		default:
			putc('%');
			putc(*fmt);
		}
	}
}

void printf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
}

/* --------------------------------------------------------------- the end */

void reset(void)
{
	/* The i8042 reset (docs/vmm.md): the VMM exits with status 0. */
	outb(0x64, 0xfe);
	/* Still running: no i8042 (QEMU's microvm has none). Triple fault: an
	 * empty IDT, then an undefined instruction (#UD -> #GP -> #DF ->
	 * shutdown), which QEMU with -no-reboot ends on. */
	static const struct { u16 limit; u32 base; } __attribute__((packed)) no_idt = { 0, 0 };
	__asm__ __volatile__("lidt %0\n\tud2" : : "m"(no_idt));
	for (;;)
		;
}

void pass(void)
{
	printf("IRONCELL-TEST PASS %s\n", test_name);
	reset();
}

void fail(const char *fmt, ...)
{
	va_list ap;
	printf("IRONCELL-TEST FAIL %s: ", test_name);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putc('\n');
	reset();
}

/* ------------------------------------------------------------- DMA memory */

static uptr dma_next = DMA_BASE;

void *dma_alloc(u32 size, u32 align)
{
	uptr p = (dma_next + align - 1) & ~(uptr)(align - 1);
	dma_next = p + size;
	memset((void *)p, 0, size);
	return (void *)p;
}

/* ---------------------------------------------------- command line parsing */

/* Linux's memparse: a number (0x.. hex, 0.. octal, else decimal) with an
 * optional K/M/G suffix. Returns the character after it. */
static const char *parse_num(const char *s, u64 *out, int suffix)
{
	u64 v = 0;
	u32 base = 10;
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		s += 2;
	} else if (s[0] == '0' && s[1] >= '0' && s[1] <= '7') {
		base = 8;
	}
	for (;; s++) {
		u32 dgt;
		if (*s >= '0' && *s <= '9')
			dgt = (u32)(*s - '0');
		else if (*s >= 'a' && *s <= 'f')
			dgt = (u32)(*s - 'a' + 10);
		else if (*s >= 'A' && *s <= 'F')
			dgt = (u32)(*s - 'A' + 10);
		else
			break;
		if (dgt >= base)
			break;
		v = base == 16 ? (v << 4) | dgt : base == 8 ? (v << 3) | dgt : v * 10 + dgt;
	}
	if (suffix) {
		switch (*s) {
		case 'G': case 'g': v <<= 10; /* fall through */
		case 'M': case 'm': v <<= 10; /* fall through */
		case 'K': case 'k': v <<= 10; s++; break;
		}
	}
	*out = v;
	return s;
}

static const char *cmdline(void)
{
	if (!start_info || start_info->magic != HVM_START_MAGIC)
		fail("no hvm_start_info (EBX=%x)", (u32)(uptr)start_info);
	u64 p = start_info->cmdline_paddr;
	if (p == 0 || p >= 0x100000000ULL)
		fail("no command line in hvm_start_info (cmdline_paddr=%llx)", p);
	return (const char *)(uptr)p;
}

static const char key[] = "virtio_mmio.device=";

void virtio_find(u32 device_id, struct vdev *d)
{
	const char *s = cmdline();
	u32 klen = sizeof(key) - 1;
	int entries = 0;
	while (*s) {
		while (*s == ' ')
			s++;
		const char *word = s;
		while (*s && *s != ' ')
			s++;
		if ((u32)(s - word) <= klen || memcmp(word, key, klen) != 0)
			continue;
		/* <size>@<base>:<irq>[:<id>] */
		u64 size, base, irq;
		const char *p = parse_num(word + klen, &size, 1);
		if (*p != '@')
			fail("bad virtio_mmio.device entry (want <size>@<base>:<irq>)");
		p = parse_num(p + 1, &base, 1);
		if (*p != ':')
			fail("bad virtio_mmio.device entry (want <size>@<base>:<irq>)");
		p = parse_num(p + 1, &irq, 0);
		entries++;
		if (base == 0 || base >= 0x100000000ULL || size < 0x100)
			fail("unusable virtio_mmio.device entry %d (%llx@%llx)", entries, size, base);
		uptr b = (uptr)base;
		u32 magic = mmio_read32(b + VIRTIO_MMIO_MAGIC_VALUE);
		u32 version = mmio_read32(b + VIRTIO_MMIO_VERSION);
		u32 id = mmio_read32(b + VIRTIO_MMIO_DEVICE_ID);
		printf("virtio: %x@%x irq %u: magic %x version %u device %u\n",
		       (u32)size, (u32)base, (u32)irq, magic, version, id);
		if (id != device_id)
			continue;
		if (magic != VIRTIO_MMIO_MAGIC)
			fail("bad virtio-mmio magic %x at %x", magic, (u32)base);
		if (version != 2)
			fail("virtio-mmio version %u at %x, want 2 (modern)", version, (u32)base);
		d->base = b;
		d->size = (u32)size;
		d->irq = (u32)irq;
		d->device_id = id;
		return;
	}
	if (!entries)
		fail("no virtio_mmio.device= on the command line");
	fail("no virtio device with id %u", device_id);
}

/* ------------------------------------------------------------------ virtio */

void virtio_init(struct vdev *d, u64 wanted)
{
	vreg_write(d, VIRTIO_MMIO_STATUS, 0); /* reset */
	if (vreg_read(d, VIRTIO_MMIO_STATUS) != 0)
		fail("device status %x after reset, want 0", vreg_read(d, VIRTIO_MMIO_STATUS));
	vreg_write(d, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
	vreg_write(d, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);

	vreg_write(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	u64 lo = vreg_read(d, VIRTIO_MMIO_DEVICE_FEATURES);
	vreg_write(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	u64 hi = vreg_read(d, VIRTIO_MMIO_DEVICE_FEATURES);
	d->device_features = (hi << 32) | lo;
	if (!(d->device_features & VIRTIO_F_VERSION_1))
		fail("device does not offer VIRTIO_F_VERSION_1 (features %llx)", d->device_features);
	d->features = (wanted & d->device_features) | VIRTIO_F_VERSION_1;

	vreg_write(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	vreg_write(d, VIRTIO_MMIO_DRIVER_FEATURES, (u32)d->features);
	vreg_write(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	vreg_write(d, VIRTIO_MMIO_DRIVER_FEATURES, (u32)(d->features >> 32));

	u32 st = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK;
	vreg_write(d, VIRTIO_MMIO_STATUS, st);
	u32 got = vreg_read(d, VIRTIO_MMIO_STATUS);
	if (!(got & VIRTIO_STATUS_FEATURES_OK)) {
		vreg_write(d, VIRTIO_MMIO_STATUS, st | VIRTIO_STATUS_FAILED);
		fail("device refused FEATURES_OK (status %x, features %llx)", got, d->features);
	}
	printf("virtio: device %u features offered %llx negotiated %llx\n",
	       d->device_id, d->device_features, d->features);
}

void virtio_driver_ok(struct vdev *d)
{
	u32 st = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
		 VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK;
	vreg_write(d, VIRTIO_MMIO_STATUS, st);
	u32 got = vreg_read(d, VIRTIO_MMIO_STATUS);
	if (got != st)
		fail("device status %x after DRIVER_OK, want %x", got, st);
}

u64 vcfg_read64(struct vdev *d, u32 off)
{
	for (int tries = 0; tries < 100; tries++) {
		u32 gen = vreg_read(d, VIRTIO_MMIO_CONFIG_GENERATION);
		u64 lo = vcfg_read32(d, off);
		u64 hi = vcfg_read32(d, off + 4);
		if (vreg_read(d, VIRTIO_MMIO_CONFIG_GENERATION) == gen)
			return (hi << 32) | lo;
	}
	fail("config generation keeps changing");
}

/* --------------------------------------------------------------- virtqueue */

void virtq_setup(struct vdev *d, struct virtq *q, u32 index, u16 max_size)
{
	vreg_write(d, VIRTIO_MMIO_QUEUE_SEL, index);
	if (vreg_read(d, VIRTIO_MMIO_QUEUE_READY))
		fail("queue %u already ready", index);
	u32 nmax = vreg_read(d, VIRTIO_MMIO_QUEUE_NUM_MAX);
	if (nmax == 0)
		fail("queue %u not available (QueueNumMax 0)", index);
	u32 n = max_size;
	while (n > nmax)
		n >>= 1;
	if (n == 0)
		n = 1;

	q->dev = d;
	q->index = index;
	q->size = (u16)n;
	/* 16 * 256 bytes of descriptors at most: one page each is enough. */
	q->desc = dma_alloc(4096, 4096);
	q->avail = dma_alloc(4096, 4096);
	q->used = dma_alloc(4096, 4096);
	for (u32 i = 0; i < n; i++)
		q->desc[i].next = (u16)(i + 1);
	q->free_head = 0;
	q->num_free = (u16)n;
	q->avail_idx = 0;
	q->last_used = 0;

	vreg_write(d, VIRTIO_MMIO_QUEUE_NUM, n);
	vreg_write(d, VIRTIO_MMIO_QUEUE_DESC_LOW, (u32)(uptr)q->desc);
	vreg_write(d, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
	vreg_write(d, VIRTIO_MMIO_QUEUE_AVAIL_LOW, (u32)(uptr)q->avail);
	vreg_write(d, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, 0);
	vreg_write(d, VIRTIO_MMIO_QUEUE_USED_LOW, (u32)(uptr)q->used);
	vreg_write(d, VIRTIO_MMIO_QUEUE_USED_HIGH, 0);
	vreg_write(d, VIRTIO_MMIO_QUEUE_READY, 1);
	if (vreg_read(d, VIRTIO_MMIO_QUEUE_READY) != 1)
		fail("queue %u: QueueReady reads back %u", index, vreg_read(d, VIRTIO_MMIO_QUEUE_READY));
}

u16 virtq_add(struct virtq *q, const struct vbuf *bufs, u32 n)
{
	if (n == 0 || n > q->num_free)
		fail("queue %u: no room for a chain of %u (%u free)", q->index, n, q->num_free);
	u16 head = q->free_head, idx = head, last = head;
	for (u32 i = 0; i < n; i++) {
		volatile struct vring_desc *dsc = &q->desc[idx];
		dsc->addr = (u32)(uptr)bufs[i].addr;
		dsc->len = bufs[i].len;
		dsc->flags = (u16)((bufs[i].write ? VRING_DESC_F_WRITE : 0) |
				   (i + 1 < n ? VRING_DESC_F_NEXT : 0));
		last = idx;
		idx = dsc->next;
	}
	q->free_head = q->desc[last].next;
	q->num_free = (u16)(q->num_free - n);
	q->avail->ring[q->avail_idx % q->size] = head;
	barrier(); /* descriptors and ring entry before the index (x86: stores are ordered) */
	q->avail_idx++;
	q->avail->idx = q->avail_idx;
	barrier();
	return head;
}

void virtq_notify(struct virtq *q)
{
	vreg_write(q->dev, VIRTIO_MMIO_QUEUE_NOTIFY, q->index);
}

int virtq_get_used(struct virtq *q, u32 *id, u32 *len)
{
	if (q->used->idx == q->last_used)
		return 0;
	barrier(); /* the index before the element */
	volatile struct vring_used_elem *e = &q->used->ring[q->last_used % q->size];
	u32 i = e->id, l = e->len;
	q->last_used++;
	if (i >= q->size)
		fail("queue %u: used id %u out of range", q->index, i);
	/* Give the chain back. */
	u16 idx = (u16)i;
	u16 count = 1;
	while (q->desc[idx].flags & VRING_DESC_F_NEXT) {
		idx = q->desc[idx].next;
		if (++count > q->size)
			fail("queue %u: descriptor loop", q->index);
	}
	q->desc[idx].next = q->free_head;
	q->free_head = (u16)i;
	q->num_free = (u16)(q->num_free + count);
	/* Acknowledge the interrupt the device may have raised (the guest runs
	 * with interrupts off, but a level-triggered line should not stay up). */
	u32 isr = vreg_read(q->dev, VIRTIO_MMIO_INTERRUPT_STATUS);
	if (isr)
		vreg_write(q->dev, VIRTIO_MMIO_INTERRUPT_ACK, isr);
	*id = i;
	*len = l;
	return 1;
}

int virtq_wait(struct virtq *q, u32 *id, u32 *len, u32 timeout_ms)
{
	u64 dl = deadline_ms(timeout_ms);
	for (;;) {
		if (virtq_get_used(q, id, len))
			return 1;
		if (expired(dl))
			return 0;
	}
}

u32 virtq_transfer(struct virtq *q, const struct vbuf *bufs, u32 n, u32 timeout_ms, const char *what)
{
	u16 head = virtq_add(q, bufs, n);
	virtq_notify(q);
	u32 id, len;
	if (!virtq_wait(q, &id, &len, timeout_ms))
		fail("%s: timeout after %u ms waiting for the used ring of queue %u", what, timeout_ms, q->index);
	if (id != head)
		fail("%s: device returned chain %u, want %u", what, id, head);
	return len;
}

u32 chain_slot(const u16 *heads, u32 n, u32 id)
{
	for (u32 i = 0; i < n; i++)
		if (heads[i] == id)
			return i;
	fail("rx: device returned unknown chain %u", id);
}
