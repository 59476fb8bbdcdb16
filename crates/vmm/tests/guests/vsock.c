/* vsock: the vsock device (virtio id 19), enough of the virtio-vsock stream
 * protocol for two connections, one after the other.
 *
 * Queues: 0 rx (8 buffers of 44 + 4096 bytes, one device-writable
 * descriptor each, as Linux posts them), 1 tx (a packet is one descriptor
 * for the 44-byte header plus, for RW, one for the payload, as Linux sends
 * them), 2 event (2 buffers; a transport reset event is printed). Every
 * packet the guest sends advertises buf_alloc 65536 and the connection's
 * fwd_cnt (bytes of its RW payloads the guest has consumed); the guest
 * respects the host's credit (buf_alloc - (tx_cnt - fwd_cnt)) and asks for
 * a CREDIT_UPDATE when it runs out. Packets of unknown connections get a
 * RST; CREDIT_REQUEST gets a CREDIT_UPDATE; a SHUTDOWN with both flags gets
 * a RST and ends the connection.
 *
 * Output (host CID 2; <cid> from the config space):
 *   vsock: guest cid <cid>
 *   vsock: listening on port 1234
 * Part 1, host-initiated. The host connects to guest port 1234 (with the
 * VMM's unix socket: "CONNECT 1234\n", then "OK <hostport>\n"), sends a
 * line ending in "\n" (at most 200 bytes) within 10 s of connecting, and
 * must read the answer before it closes. The guest waits up to 30 s for
 * the REQUEST, answers RESPONSE and prints
 *   vsock: accepted connection from cid 2 port <hostport>
 *   vsock: port 1234 received: <line>
 * sends the line back with a-z uppercased, prints
 *   vsock: port 1234 sent: <LINE>
 * and waits up to 5 s for the host to close (SHUTDOWN or RST):
 *   vsock: port 1234 closed by the host
 * or else shuts the connection down itself (SHUTDOWN, both flags; RST
 * after 2 s without the host's RST):
 *   vsock: port 1234 closed by the guest
 * Part 2, guest-initiated. The guest connects from its port 49152 to host
 * CID 2 port 5678 (the VMM forwards that to the unix socket <path>_5678),
 * waits up to 5 s for RESPONSE, prints
 *   vsock: connected to host port 5678
 * sends "ping from guest\n", prints
 *   vsock: port 5678 sent: ping from guest
 * waits up to 10 s for one line (the host's reply), prints
 *   vsock: port 5678 received: <line>
 * then sends SHUTDOWN (both flags) and waits up to 2 s for the RST (or the
 * host's own SHUTDOWN/RST) before it sends a RST itself:
 *   vsock: port 5678 closed
 *   IRONCELL-TEST PASS vsock
 * Lines are printed without their "\n"; a received line that ends without
 * one (the host closed first) fails the test.
 */
#include "lib.h"

const char test_name[] = "vsock";

#define HOST_CID 2
#define LISTEN_PORT 1234
#define HOST_PORT 5678
#define LOCAL_PORT 49152
#define BUF_ALLOC 65536

#define VSOCK_TYPE_STREAM 1
enum {
	OP_INVALID,
	OP_REQUEST,
	OP_RESPONSE,
	OP_RST,
	OP_SHUTDOWN,
	OP_RW,
	OP_CREDIT_UPDATE,
	OP_CREDIT_REQUEST,
};
#define SHUTDOWN_RCV 1
#define SHUTDOWN_SEND 2

struct vsock_hdr {
	u64 src_cid;
	u64 dst_cid;
	u32 src_port;
	u32 dst_port;
	u32 len;
	u16 type;
	u16 op;
	u32 flags;
	u32 buf_alloc;
	u32 fwd_cnt;
} __attribute__((packed));

#define RX_BUFS 8
#define RX_PAYLOAD 4096
#define RX_BUF_LEN (sizeof(struct vsock_hdr) + RX_PAYLOAD)
#define EV_BUFS 2

enum { C_FREE, C_CONNECTING, C_CONNECTED, C_CLOSED };

struct conn {
	int state;
	int closed_by_host;   /* RST or SHUTDOWN from the host ended it */
	u32 local_port;
	u32 peer_port;
	u32 fwd_cnt;          /* RW payload bytes consumed */
	u32 tx_cnt;           /* RW payload bytes sent */
	u32 peer_buf_alloc;
	u32 peer_fwd_cnt;
	u32 want_credit;      /* bytes send_data() is waiting to send */
	char line[256];
	u32 line_len;
};

static struct vdev dev;
static struct virtq rxq, txq, evq;
static u64 guest_cid;
static u8 *rxbuf[RX_BUFS];
static u16 rxhead[RX_BUFS];
static u32 *evbuf[EV_BUFS];
static u16 evhead[EV_BUFS];
static struct vsock_hdr *txhdr;
static u8 *txdata;
static int listening;
static struct conn c1, c2; /* part 1 (accepted), part 2 (connected) */

/* ------------------------------------------------------------------ tx */

static void send_pkt(u32 src_port, u32 dst_port, u16 op, u32 flags, u32 fwd_cnt,
		     const void *data, u32 len)
{
	txhdr->src_cid = guest_cid;
	txhdr->dst_cid = HOST_CID;
	txhdr->src_port = src_port;
	txhdr->dst_port = dst_port;
	txhdr->len = len;
	txhdr->type = VSOCK_TYPE_STREAM;
	txhdr->op = op;
	txhdr->flags = flags;
	txhdr->buf_alloc = BUF_ALLOC;
	txhdr->fwd_cnt = fwd_cnt;
	struct vbuf b[2] = { { txhdr, sizeof(*txhdr), 0 }, { txdata, len, 0 } };
	if (len) {
		if (len > 4096)
			fail("internal: tx payload too long");
		memcpy(txdata, data, len);
	}
	virtq_transfer(&txq, b, len ? 2 : 1, 5000, "vsock tx");
}

static void send_conn(struct conn *c, u16 op, u32 flags, const void *data, u32 len)
{
	send_pkt(c->local_port, c->peer_port, op, flags, c->fwd_cnt, data, len);
}

/* ------------------------------------------------------------------ rx */

static void rx_post(u32 slot)
{
	struct vbuf b = { rxbuf[slot], RX_BUF_LEN, 1 };
	rxhead[slot] = virtq_add(&rxq, &b, 1);
}

static struct conn *lookup(const struct vsock_hdr *h)
{
	struct conn *cs[2] = { &c1, &c2 };
	for (int i = 0; i < 2; i++) {
		struct conn *c = cs[i];
		if ((c->state == C_CONNECTING || c->state == C_CONNECTED) &&
		    h->src_cid == HOST_CID && h->src_port == c->peer_port &&
		    h->dst_port == c->local_port)
			return c;
	}
	return NULL;
}

static void handle(const struct vsock_hdr *h, const u8 *payload)
{
	if (h->dst_cid != guest_cid)
		printf("vsock: note: packet for cid %llu, not ours\n", h->dst_cid);
	if (h->type != VSOCK_TYPE_STREAM) {
		if (h->op != OP_RST)
			send_pkt(h->dst_port, h->src_port, OP_RST, 0, 0, NULL, 0);
		return;
	}
	struct conn *c = lookup(h);
	if (!c) {
		if (h->op == OP_REQUEST && listening && h->dst_port == LISTEN_PORT &&
		    h->src_cid == HOST_CID) {
			c = &c1;
			c->state = C_CONNECTED;
			c->local_port = LISTEN_PORT;
			c->peer_port = h->src_port;
			c->peer_buf_alloc = h->buf_alloc;
			c->peer_fwd_cnt = h->fwd_cnt;
			listening = 0;
			send_conn(c, OP_RESPONSE, 0, NULL, 0);
			printf("vsock: accepted connection from cid %llu port %u\n", h->src_cid, h->src_port);
			return;
		}
		if (h->op != OP_RST) {
			printf("vsock: note: op %u for unknown connection %llu:%u -> %u, sending RST\n",
			       h->op, h->src_cid, h->src_port, h->dst_port);
			send_pkt(h->dst_port, h->src_port, OP_RST, 0, 0, NULL, 0);
		}
		return;
	}
	c->peer_buf_alloc = h->buf_alloc;
	c->peer_fwd_cnt = h->fwd_cnt;
	switch (h->op) {
	case OP_RESPONSE:
		if (c->state == C_CONNECTING) {
			c->state = C_CONNECTED;
		} else {
			send_conn(c, OP_RST, 0, NULL, 0);
			c->state = C_CLOSED;
			fail("RESPONSE on an established connection (port %u)", c->local_port);
		}
		break;
	case OP_RW:
		if (c->line_len + h->len >= sizeof(c->line))
			fail("port %u: more than %u bytes received", c->local_port, (u32)sizeof(c->line) - 1);
		memcpy(c->line + c->line_len, payload, h->len);
		c->line_len += h->len;
		c->line[c->line_len] = 0;
		c->fwd_cnt += h->len; /* consumed: it is in the line buffer */
		break;
	case OP_CREDIT_UPDATE:
		break;
	case OP_CREDIT_REQUEST:
		send_conn(c, OP_CREDIT_UPDATE, 0, NULL, 0);
		break;
	case OP_SHUTDOWN:
		if ((h->flags & (SHUTDOWN_RCV | SHUTDOWN_SEND)) == (SHUTDOWN_RCV | SHUTDOWN_SEND)) {
			send_conn(c, OP_RST, 0, NULL, 0);
			c->state = C_CLOSED;
			c->closed_by_host = 1;
		}
		break;
	case OP_RST:
		c->state = C_CLOSED;
		c->closed_by_host = 1;
		break;
	default: /* REQUEST on an open connection, or an unknown op */
		send_conn(c, OP_RST, 0, NULL, 0);
		c->state = C_CLOSED;
		fail("op %u on an open connection (port %u)", h->op, c->local_port);
	}
}

/* Handles at most one received packet (and any event); 1 if there was one. */
static int poll_once(void)
{
	u32 id, len;
	if (virtq_get_used(&evq, &id, &len)) {
		for (u32 i = 0; i < EV_BUFS; i++) {
			if (evhead[i] != id)
				continue;
			printf("vsock: note: event %u (0 = transport reset)\n", *evbuf[i]);
			struct vbuf b = { evbuf[i], 4, 1 };
			evhead[i] = virtq_add(&evq, &b, 1);
			virtq_notify(&evq);
		}
	}
	if (!virtq_get_used(&rxq, &id, &len))
		return 0;
	u32 slot = chain_slot(rxhead, RX_BUFS, id);
	const struct vsock_hdr *h = (const struct vsock_hdr *)rxbuf[slot];
	if (len < sizeof(*h))
		fail("rx: used length %u shorter than the header", len);
	if (h->len > RX_PAYLOAD || sizeof(*h) + h->len > len)
		fail("rx: header len %u does not fit the used length %u", h->len, len);
	handle(h, rxbuf[slot] + sizeof(*h));
	rx_post(slot);
	virtq_notify(&rxq);
	return 1;
}

/* Processes packets until cond(c) holds (1) or timeout_ms passed (0). */
static int wait_for(int (*cond)(struct conn *), struct conn *c, u32 timeout_ms)
{
	u64 dl = deadline_ms(timeout_ms);
	while (!cond(c)) {
		if (!poll_once() && expired(dl))
			return 0;
	}
	return 1;
}

static int is_open(struct conn *c) { return c->state == C_CONNECTED; }
static int is_not_connecting(struct conn *c) { return c->state != C_CONNECTING; }
static int is_closed(struct conn *c) { return c->state == C_CLOSED; }
static int has_line(struct conn *c)
{
	return c->state != C_CONNECTED || (c->line_len && c->line[c->line_len - 1] == '\n');
}
static int has_credit(struct conn *c)
{
	return c->state != C_CONNECTED || c->peer_buf_alloc - (c->tx_cnt - c->peer_fwd_cnt) >= c->want_credit;
}

/* Sends data on c within the host's credit. */
static void send_data(struct conn *c, const char *data, u32 len)
{
	c->want_credit = len;
	if (!has_credit(c)) {
		send_conn(c, OP_CREDIT_REQUEST, 0, NULL, 0);
		if (!wait_for(has_credit, c, 5000))
			fail("port %u: no credit for %u bytes within 5 s", c->local_port, len);
	}
	if (c->state != C_CONNECTED)
		fail("port %u: connection closed by the host before the guest could send", c->local_port);
	send_conn(c, OP_RW, 0, data, len);
	c->tx_cnt += len;
}

/* Reads one line on c: returns it without the "\n" (in c->line). */
static const char *read_line(struct conn *c, u32 timeout_ms)
{
	if (!wait_for(has_line, c, timeout_ms))
		fail("port %u: no complete line within %u ms (got %u bytes)", c->local_port, timeout_ms, c->line_len);
	if (!c->line_len || c->line[c->line_len - 1] != '\n')
		fail("port %u: connection closed before a complete line (got %u bytes)", c->local_port, c->line_len);
	c->line[--c->line_len] = 0;
	return c->line;
}

/* SHUTDOWN (both flags), then wait for the host's RST; RST after 2 s. */
static void guest_close(struct conn *c)
{
	send_conn(c, OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND, NULL, 0);
	if (!wait_for(is_closed, c, 2000))
		send_conn(c, OP_RST, 0, NULL, 0);
	c->state = C_CLOSED;
}

void guest_main(void)
{
	virtio_find(VIRTIO_ID_VSOCK, &dev);
	virtio_init(&dev, 0);
	guest_cid = vcfg_read64(&dev, 0);
	printf("vsock: guest cid %llu\n", guest_cid);
	if (guest_cid <= 2)
		fail("guest cid %llu is reserved", guest_cid);

	virtq_setup(&dev, &rxq, 0, 16);
	virtq_setup(&dev, &txq, 1, 8);
	virtq_setup(&dev, &evq, 2, 4);
	virtio_driver_ok(&dev);

	txhdr = dma_alloc(sizeof(*txhdr), 64);
	txdata = dma_alloc(4096, 64);
	for (u32 i = 0; i < RX_BUFS; i++) {
		rxbuf[i] = dma_alloc(RX_BUF_LEN, 64);
		rx_post(i);
	}
	virtq_notify(&rxq);
	for (u32 i = 0; i < EV_BUFS; i++) {
		evbuf[i] = dma_alloc(4, 4);
		struct vbuf b = { evbuf[i], 4, 1 };
		evhead[i] = virtq_add(&evq, &b, 1);
	}
	virtq_notify(&evq);

	/* Part 1: host-initiated, to guest port 1234. */
	listening = 1;
	printf("vsock: listening on port %u\n", LISTEN_PORT);
	if (!wait_for(is_open, &c1, 30000))
		fail("no connection request to port %u within 30 s", LISTEN_PORT);
	const char *line = read_line(&c1, 10000);
	printf("vsock: port %u received: %s\n", LISTEN_PORT, line);
	char up[256];
	u32 n = c1.line_len;
	for (u32 i = 0; i < n; i++)
		up[i] = (char)(line[i] >= 'a' && line[i] <= 'z' ? line[i] - 'a' + 'A' : line[i]);
	up[n] = '\n';
	c1.line_len = 0; /* the line is consumed */
	send_data(&c1, up, n + 1);
	up[n] = 0;
	printf("vsock: port %u sent: %s\n", LISTEN_PORT, up);
	if (wait_for(is_closed, &c1, 5000) && c1.closed_by_host) {
		printf("vsock: port %u closed by the host\n", LISTEN_PORT);
	} else {
		guest_close(&c1);
		printf("vsock: port %u closed by the guest\n", LISTEN_PORT);
	}

	/* Part 2: guest-initiated, to host port 5678. */
	c2.state = C_CONNECTING;
	c2.local_port = LOCAL_PORT;
	c2.peer_port = HOST_PORT;
	send_conn(&c2, OP_REQUEST, 0, NULL, 0);
	if (!wait_for(is_not_connecting, &c2, 5000))
		fail("no RESPONSE from host port %u within 5 s", HOST_PORT);
	if (c2.state != C_CONNECTED)
		fail("connection to host port %u refused (RST)", HOST_PORT);
	printf("vsock: connected to host port %u\n", HOST_PORT);
	static const char ping[] = "ping from guest\n";
	send_data(&c2, ping, sizeof(ping) - 1);
	printf("vsock: port %u sent: ping from guest\n", HOST_PORT);
	line = read_line(&c2, 10000);
	printf("vsock: port %u received: %s\n", HOST_PORT, line);
	if (c2.state == C_CONNECTED)
		guest_close(&c2);
	printf("vsock: port %u closed\n", HOST_PORT);
}
