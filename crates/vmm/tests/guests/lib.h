/* Shared runtime of the ironcell test guests (see build.sh and start.S).
 *
 * The guests run in 32-bit protected mode with paging off, as the PVH boot
 * ABI enters them (docs/vmm.md), with interrupts disabled. They never wait
 * for interrupts: they poll the used rings of their virtqueues, with
 * timeouts measured with rdtsc. No libc, no floating point or SIMD (on the
 * PVM host, ring-0 guest code runs through KVM's instruction emulator,
 * which lacks SSE/x87).
 */
#ifndef IRONCELL_GUEST_LIB_H
#define IRONCELL_GUEST_LIB_H

#include <stdarg.h>

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef int s32;
typedef unsigned int uptr;

#define NULL ((void *)0)
#define barrier() __asm__ __volatile__("" ::: "memory")

/* ---- PVH start info (xen/include/public/arch-x86/hvm/start_info.h) ---- */
#define HVM_START_MAGIC 0x336ec578
struct hvm_start_info {
	u32 magic;
	u32 version;
	u32 flags;
	u32 nr_modules;
	u64 modlist_paddr;
	u64 cmdline_paddr;
	u64 rsdp_paddr;
	u64 memmap_paddr;   /* version >= 1 */
	u32 memmap_entries; /* version >= 1 */
	u32 reserved;
} __attribute__((packed));

/* Set by start.S before guest_main() runs. */
extern struct hvm_start_info *start_info;
/* The guest's name in the IRONCELL-TEST line; each guest defines it. */
extern const char test_name[];
/* Each guest defines it; start.S calls it and resets when it returns. */
void guest_main(void);

/* ---- port I/O, MMIO ---- */
static inline void outb(u16 port, u8 v) { __asm__ __volatile__("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ __volatile__("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 mmio_read32(uptr a) { return *(volatile u32 *)a; }
static inline u16 mmio_read16(uptr a) { return *(volatile u16 *)a; }
static inline u8 mmio_read8(uptr a) { return *(volatile u8 *)a; }
static inline void mmio_write32(uptr a, u32 v) { *(volatile u32 *)a = v; }
static inline u64 rdtsc(void) { u32 lo, hi; __asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi)); return ((u64)hi << 32) | lo; }

/* ---- libc-ish ---- */
void *memset(void *d, int c, u32 n);
void *memcpy(void *d, const void *s, u32 n);
int memcmp(const void *a, const void *b, u32 n);
u32 strlen(const char *s);

/* ---- time (rdtsc; TICKS_PER_MS assumes a TSC of about 2 GHz, which is
 * all that the bounded waits need: a 3 GHz TSC makes them 1.5x shorter) ---- */
#define TICKS_PER_MS 2000000ULL
u64 deadline_ms(u32 ms);        /* rdtsc() + ms * TICKS_PER_MS */
int expired(u64 deadline);

/* ---- serial output (COM1, 0x3f8) and printing ---- */
void putc(char c);
void puts(const char *s);                 /* no newline added */
void printf(const char *fmt, ...);        /* %s %c %d %u %x %llu %llx, widths %02x %08llx */
void vprintf(const char *fmt, va_list ap);
void print_hex(const void *p, u32 n);     /* n bytes as lowercase hex, no separator */

/* ---- ending a test ---- */
void reset(void) __attribute__((noreturn));             /* outb 0xFE, 0x64 (+ triple fault) */
void pass(void) __attribute__((noreturn));              /* IRONCELL-TEST PASS <name> */
void fail(const char *fmt, ...) __attribute__((noreturn)); /* IRONCELL-TEST FAIL <name>: <reason> */
/* The index in heads[0..n) of the buffer whose chain head the device
 * returned as id; fails the test for an id the guest never posted. */
u32 chain_slot(const u16 *heads, u32 n, u32 id);

/* ---- simple bump allocator for DMA memory at fixed guest addresses
 * (2 MiB upwards; the image itself ends well below 2 MiB) ---- */
#define DMA_BASE 0x200000u
void *dma_alloc(u32 size, u32 align);   /* zeroed */

/* ---- virtio-mmio (virtio 1.x, section 4.2.2) ---- */
#define VIRTIO_MMIO_MAGIC_VALUE         0x000
#define VIRTIO_MMIO_VERSION             0x004
#define VIRTIO_MMIO_DEVICE_ID           0x008
#define VIRTIO_MMIO_VENDOR_ID           0x00c
#define VIRTIO_MMIO_DEVICE_FEATURES     0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_MMIO_DRIVER_FEATURES     0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL           0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX       0x034
#define VIRTIO_MMIO_QUEUE_NUM           0x038
#define VIRTIO_MMIO_QUEUE_READY         0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY        0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS    0x060
#define VIRTIO_MMIO_INTERRUPT_ACK       0x064
#define VIRTIO_MMIO_STATUS              0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW      0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH     0x084
#define VIRTIO_MMIO_QUEUE_AVAIL_LOW     0x090
#define VIRTIO_MMIO_QUEUE_AVAIL_HIGH    0x094
#define VIRTIO_MMIO_QUEUE_USED_LOW      0x0a0
#define VIRTIO_MMIO_QUEUE_USED_HIGH     0x0a4
#define VIRTIO_MMIO_CONFIG_GENERATION   0x0fc
#define VIRTIO_MMIO_CONFIG              0x100

#define VIRTIO_MMIO_MAGIC 0x74726976 /* "virt" */

#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER      2
#define VIRTIO_STATUS_DRIVER_OK   4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 64
#define VIRTIO_STATUS_FAILED      128

#define VIRTIO_F_VERSION_1 (1ULL << 32)

#define VIRTIO_ID_NET   1
#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_RNG   4
#define VIRTIO_ID_VSOCK 19

struct vdev {
	uptr base;         /* MMIO window (guest-physical) */
	u32 size;          /* window size from the command line */
	u32 irq;           /* GSI from the command line */
	u32 device_id;
	u64 device_features;
	u64 features;      /* negotiated */
};

/* Scans the virtio_mmio.device=<size>@<base>:<irq>[:<id>] entries of the
 * command line (in order) and fills *d with the first whose DeviceID is
 * device_id. Prints one "virtio: ..." line per entry. Fails the test if
 * there is no such device, or it is not a virtio-mmio version 2 device. */
void virtio_find(u32 device_id, struct vdev *d);

/* Reset, ACKNOWLEDGE, DRIVER, features (VIRTIO_F_VERSION_1 | (wanted &
 * offered); fails if VERSION_1 is not offered), FEATURES_OK and its check.
 * Fills d->device_features, d->features. */
void virtio_init(struct vdev *d, u64 wanted);
void virtio_driver_ok(struct vdev *d);

static inline u32 vreg_read(struct vdev *d, u32 off) { return mmio_read32(d->base + off); }
static inline void vreg_write(struct vdev *d, u32 off, u32 v) { mmio_write32(d->base + off, v); }
/* Device config space: 8/16/32-bit reads at VIRTIO_MMIO_CONFIG + off. */
static inline u8 vcfg_read8(struct vdev *d, u32 off) { return mmio_read8(d->base + VIRTIO_MMIO_CONFIG + off); }
static inline u16 vcfg_read16(struct vdev *d, u32 off) { return mmio_read16(d->base + VIRTIO_MMIO_CONFIG + off); }
static inline u32 vcfg_read32(struct vdev *d, u32 off) { return mmio_read32(d->base + VIRTIO_MMIO_CONFIG + off); }
u64 vcfg_read64(struct vdev *d, u32 off);  /* two 32-bit reads, ConfigGeneration-checked */

/* ---- split virtqueues ---- */
#define VRING_DESC_F_NEXT  1
#define VRING_DESC_F_WRITE 2

struct vring_desc { u64 addr; u32 len; u16 flags; u16 next; };
struct vring_avail { u16 flags; u16 idx; u16 ring[]; };
struct vring_used_elem { u32 id; u32 len; };
struct vring_used { u16 flags; u16 idx; struct vring_used_elem ring[]; };

struct virtq {
	struct vdev *dev;
	u32 index;
	u16 size;
	u16 free_head;
	u16 num_free;
	u16 avail_idx;      /* next avail->idx to publish */
	u16 last_used;      /* used->idx already consumed */
	volatile struct vring_desc *desc;
	volatile struct vring_avail *avail;
	volatile struct vring_used *used;
};

/* A buffer of a chain: guest-physical address, length, device-writable? */
struct vbuf { const void *addr; u32 len; int write; };

/* QueueSel index, QueueNum = min(QueueNumMax, max_size) (a power of 2),
 * rings in DMA memory (descriptor table, avail ring and used ring each in
 * its own 4 KiB page), Queue{Desc,Driver,Device}{Low,High}, QueueReady=1.
 * Fails the test if the queue is already ready or QueueNumMax is 0. */
void virtq_setup(struct vdev *d, struct virtq *q, u32 index, u16 max_size);
/* Adds a chain (read-only buffers must come before device-writable ones)
 * and publishes it in the avail ring; returns the head descriptor id.
 * Fails the test if the queue has fewer than n free descriptors. */
u16 virtq_add(struct virtq *q, const struct vbuf *bufs, u32 n);
void virtq_notify(struct virtq *q);
/* Takes one used element if there is one: returns 1 and sets *id, *len
 * (and returns the chain's descriptors to the free list), else 0. */
int virtq_get_used(struct virtq *q, u32 *id, u32 *len);
/* virtq_get_used in a loop until the deadline (ms from now): 1 or 0 on timeout. */
int virtq_wait(struct virtq *q, u32 *id, u32 *len, u32 timeout_ms);
/* Add + notify + wait for that chain; fails the test on timeout or if the
 * device returns another id. Returns the used length. */
u32 virtq_transfer(struct virtq *q, const struct vbuf *bufs, u32 n, u32 timeout_ms, const char *what);

#endif
