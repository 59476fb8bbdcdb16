/* rng: the entropy device (virtio id 4).
 *
 * Asks twice for 64 bytes (one device-writable descriptor each; a short
 * answer is topped up with further requests) and prints
 *   rng: <128 hex digits>
 *   rng: <128 hex digits>
 *   IRONCELL-TEST PASS rng
 * Fails if a block is all zero or both are equal.
 */
#include "lib.h"

const char test_name[] = "rng";

static void fill(struct virtq *q, u8 *buf, u32 n)
{
	u32 got = 0;
	for (int tries = 0; got < n; tries++) {
		if (tries == 16)
			fail("device returned only %u of %u bytes in 16 requests", got, n);
		struct vbuf b = { buf + got, n - got, 1 };
		u32 len = virtq_transfer(q, &b, 1, 5000, "rng request");
		if (len > n - got)
			fail("used length %u larger than the buffer (%u)", len, n - got);
		got += len;
	}
}

void guest_main(void)
{
	struct vdev d;
	struct virtq q;
	virtio_find(VIRTIO_ID_RNG, &d);
	virtio_init(&d, 0);
	virtq_setup(&d, &q, 0, 8);
	virtio_driver_ok(&d);

	u8 *a = dma_alloc(64, 64), *b = dma_alloc(64, 64), zero[64];
	memset(zero, 0, sizeof(zero));
	fill(&q, a, 64);
	printf("rng: ");
	print_hex(a, 64);
	putc('\n');
	fill(&q, b, 64);
	printf("rng: ");
	print_hex(b, 64);
	putc('\n');
	if (!memcmp(a, zero, 64) || !memcmp(b, zero, 64))
		fail("all-zero random bytes");
	if (!memcmp(a, b, 64))
		fail("both requests returned the same bytes");
}
