/* block: the block device (virtio id 2; the first one on the command line).
 *
 * Negotiates VIRTIO_BLK_F_RO (bit 5) and VIRTIO_BLK_F_FLUSH (bit 9) when
 * offered, queue 0 with at most 8 descriptors, one request at a time
 * (header, data, status: three descriptors). Prints:
 *   block: capacity <N> sectors
 *   block: serial <GET_ID string, at most 20 bytes>
 *   block: sector0 <first 16 bytes of sector 0 as 32 hex digits>
 * then, on a writable disk:
 *   block: wrote sector 1, flushed, read back ok
 * (or "..., no flush (not offered), read back ok" without FLUSH), or on a
 * disk offered with VIRTIO_BLK_F_RO:
 *   block: read-only ok
 * (a write to sector 1 must complete with status IOERR or UNSUPP), and
 *   IRONCELL-TEST PASS block
 *
 * The disk needs at least 2 sectors. The pattern written to sector 1
 * (bytes 512..1023 of the disk file, which the test can check afterwards):
 * "IRONCELL-BLOCK-1" followed by byte i = (i * 7 + 3) & 0xff for
 * i = 16..511.
 */
#include "lib.h"

const char test_name[] = "block";

#define VIRTIO_BLK_F_RO    (1ULL << 5)
#define VIRTIO_BLK_F_FLUSH (1ULL << 9)

#define VIRTIO_BLK_T_IN     0
#define VIRTIO_BLK_T_OUT    1
#define VIRTIO_BLK_T_FLUSH  4
#define VIRTIO_BLK_T_GET_ID 8

#define VIRTIO_BLK_S_OK     0
#define VIRTIO_BLK_S_IOERR  1
#define VIRTIO_BLK_S_UNSUPP 2

struct blk_req_hdr {
	u32 type;
	u32 reserved;
	u64 sector;
} __attribute__((packed));

static struct virtq q;
static struct blk_req_hdr *hdr;
static volatile u8 *status;

/* One request: header, optional data buffer, status byte. Returns the
 * status; checks the used length covers the status byte. */
static u8 request(u32 type, u64 sector, void *data, u32 len, const char *what)
{
	hdr->type = type;
	hdr->reserved = 0;
	hdr->sector = sector;
	*status = 0xff;
	struct vbuf b[3];
	u32 n = 0;
	b[n++] = (struct vbuf){ hdr, sizeof(*hdr), 0 };
	if (data)
		b[n++] = (struct vbuf){ data, len, type != VIRTIO_BLK_T_OUT };
	b[n++] = (struct vbuf){ (const void *)status, 1, 1 };
	u32 used = virtq_transfer(&q, b, n, 5000, what);
	if (*status == 0xff)
		fail("%s: status byte not written (used length %u)", what, used);
	if (used < 1)
		fail("%s: used length 0", what);
	return *status;
}

static void pattern(u8 *p)
{
	memcpy(p, "IRONCELL-BLOCK-1", 16);
	for (u32 i = 16; i < 512; i++)
		p[i] = (u8)(i * 7 + 3);
}

void guest_main(void)
{
	struct vdev d;
	virtio_find(VIRTIO_ID_BLOCK, &d);
	virtio_init(&d, VIRTIO_BLK_F_RO | VIRTIO_BLK_F_FLUSH);

	u64 capacity = vcfg_read64(&d, 0);
	printf("block: capacity %llu sectors\n", capacity);
	if (capacity < 2)
		fail("capacity %llu, the test needs at least 2 sectors", capacity);

	virtq_setup(&d, &q, 0, 8);
	virtio_driver_ok(&d);

	hdr = dma_alloc(sizeof(*hdr), 16);
	status = dma_alloc(1, 4);
	u8 *buf = dma_alloc(512, 512), *buf2 = dma_alloc(512, 512);

	/* GET_ID: 20 bytes, NUL-terminated only when shorter. */
	u8 st = request(VIRTIO_BLK_T_GET_ID, 0, buf, 20, "GET_ID");
	if (st != VIRTIO_BLK_S_OK)
		fail("GET_ID status %u", st);
	buf[20] = 0;
	printf("block: serial %s\n", (const char *)buf);

	st = request(VIRTIO_BLK_T_IN, 0, buf, 512, "read sector 0");
	if (st != VIRTIO_BLK_S_OK)
		fail("read sector 0: status %u", st);
	printf("block: sector0 ");
	print_hex(buf, 16);
	putc('\n');

	pattern(buf);
	if (d.features & VIRTIO_BLK_F_RO) {
		st = request(VIRTIO_BLK_T_OUT, 1, buf, 512, "write to a read-only disk");
		if (st != VIRTIO_BLK_S_IOERR && st != VIRTIO_BLK_S_UNSUPP)
			fail("write to a read-only disk: status %u, want IOERR (1) or UNSUPP (2)", st);
		printf("block: read-only ok\n");
		return;
	}

	st = request(VIRTIO_BLK_T_OUT, 1, buf, 512, "write sector 1");
	if (st != VIRTIO_BLK_S_OK)
		fail("write sector 1: status %u", st);
	int flushed = 0;
	if (d.features & VIRTIO_BLK_F_FLUSH) {
		st = request(VIRTIO_BLK_T_FLUSH, 0, NULL, 0, "flush");
		if (st != VIRTIO_BLK_S_OK)
			fail("flush: status %u", st);
		flushed = 1;
	}
	memset(buf2, 0, 512);
	st = request(VIRTIO_BLK_T_IN, 1, buf2, 512, "read sector 1");
	if (st != VIRTIO_BLK_S_OK)
		fail("read sector 1: status %u", st);
	if (memcmp(buf, buf2, 512) != 0) {
		u32 i = 0;
		while (buf[i] == buf2[i])
			i++;
		fail("sector 1 read back differs at byte %u (%02x, want %02x)", i, buf2[i], buf[i]);
	}
	printf("block: wrote sector 1, %s, read back ok\n",
	       flushed ? "flushed" : "no flush (not offered)");
}
