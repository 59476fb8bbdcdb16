/* net: the network device (virtio id 1; the first one on the command line).
 *
 * Negotiates VIRTIO_NET_F_MAC (bit 5) when offered, nothing else (no
 * offloads, no mergeable buffers); every buffer starts with the 12-byte
 * virtio_net_hdr of virtio 1.x (num_buffers included). Queue 0 is rx,
 * queue 1 tx.
 *
 * 1. Prints "net: mac xx:xx:xx:xx:xx:xx" (from the config space) or
 *    "net: no mac offered" (then the source address is 02:00:00:00:00:01).
 * 2. Posts 4 rx buffers of 2048 bytes (one descriptor each) on queue 0
 *    before sending, so an answer cannot arrive before there is room.
 * 3. Sends one broadcast frame on queue 1 (one descriptor: header + frame):
 *    dst ff:ff:ff:ff:ff:ff, src = our MAC, ethertype 0x88b5, payload
 *    "ironcell-net-test", zero-padded to a 60-byte frame, and prints
 *    "net: sent 60-byte frame, ethertype 88b5".
 * 4. Waits up to 10 s for a frame with ethertype 0x88b6 (any other frame,
 *    e.g. the host's IPv6 chatter on a new tap, is counted, ignored and its
 *    buffer reposted) and prints
 *    "net: got 88b6 frame from xx:xx:xx:xx:xx:xx: <payload up to the first
 *    NUL or non-printable byte, at most 64 characters>"
 *    then "IRONCELL-TEST PASS net".
 */
#include "lib.h"

const char test_name[] = "net";

#define VIRTIO_NET_F_MAC (1ULL << 5)
#define NET_HDR_LEN 12
#define RX_BUFS 4
#define RX_BUF_LEN 2048
#define FRAME_LEN 60

static void print_mac(const u8 *m)
{
	printf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
}

void guest_main(void)
{
	struct vdev d;
	static struct virtq rx, tx;
	virtio_find(VIRTIO_ID_NET, &d);
	virtio_init(&d, VIRTIO_NET_F_MAC);

	u8 mac[6] = { 0x02, 0, 0, 0, 0, 1 };
	if (d.features & VIRTIO_NET_F_MAC) {
		for (u32 i = 0; i < 6; i++)
			mac[i] = vcfg_read8(&d, i);
		printf("net: mac ");
		print_mac(mac);
		putc('\n');
	} else {
		printf("net: no mac offered\n");
	}

	virtq_setup(&d, &rx, 0, 8);
	virtq_setup(&d, &tx, 1, 8);
	virtio_driver_ok(&d);

	u8 *rxbuf[RX_BUFS];
	u16 rxhead[RX_BUFS];
	for (u32 i = 0; i < RX_BUFS; i++) {
		rxbuf[i] = dma_alloc(RX_BUF_LEN, 64);
		struct vbuf b = { rxbuf[i], RX_BUF_LEN, 1 };
		rxhead[i] = virtq_add(&rx, &b, 1);
	}
	virtq_notify(&rx);

	u8 *pkt = dma_alloc(NET_HDR_LEN + FRAME_LEN, 64); /* header all zero */
	u8 *f = pkt + NET_HDR_LEN;
	memset(f, 0xff, 6);
	memcpy(f + 6, mac, 6);
	f[12] = 0x88;
	f[13] = 0xb5;
	memcpy(f + 14, "ironcell-net-test", 17);
	struct vbuf tb = { pkt, NET_HDR_LEN + FRAME_LEN, 0 };
	virtq_transfer(&tx, &tb, 1, 5000, "tx");
	printf("net: sent %u-byte frame, ethertype 88b5\n", FRAME_LEN);

	u32 other = 0;
	u64 dl = deadline_ms(10000);
	for (;;) {
		u32 id, len;
		if (!virtq_get_used(&rx, &id, &len)) {
			if (expired(dl))
				fail("no frame with ethertype 88b6 within 10 s (%u other frames)", other);
			continue;
		}
		u32 slot = chain_slot(rxhead, RX_BUFS, id);
		u8 *p = rxbuf[slot];
		if (len > RX_BUF_LEN)
			fail("rx: used length %u larger than the buffer", len);
		const u8 *e = p + NET_HDR_LEN;
		if (len >= NET_HDR_LEN + 14 && e[12] == 0x88 && e[13] == 0xb6) {
			printf("net: got 88b6 frame from ");
			print_mac(e + 6);
			printf(": ");
			for (u32 i = NET_HDR_LEN + 14; i < len && i < NET_HDR_LEN + 14 + 64; i++) {
				if (p[i] < 0x20 || p[i] > 0x7e)
					break;
				putc((char)p[i]);
			}
			putc('\n');
			return;
		}
		other++;
		struct vbuf b = { p, RX_BUF_LEN, 1 };
		rxhead[slot] = virtq_add(&rx, &b, 1);
		virtq_notify(&rx);
	}
}
