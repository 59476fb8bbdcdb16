/* fs: the virtio-fs device (virtio id 26; the first one on the command line).
 *
 * Speaks FUSE (protocol 7.31) as Linux's virtiofs driver does: requests on
 * queue 1, one at a time (request, reply: two descriptors), FORGET on the
 * high-priority queue 0 (one descriptor, no reply). The share must hold
 * hello.txt (at most 200 bytes). Prints:
 *   fs: tag <tag>
 *   fs: hello.txt: <its content>
 *   fs: names stay in the share
 * ("..": LOOKUP of ".." at the root must answer the root, nodeid 1, and
 * LOOKUP of "../outside.txt" must fail with EINVAL), then on a writable
 * share creates from-guest.txt with "written by the guest\n" and prints
 *   fs: wrote from-guest.txt
 * or, on a read-only share (CREATE answered EROFS),
 *   fs: read-only ok
 * and
 *   IRONCELL-TEST PASS fs
 */
#include "lib.h"

const char test_name[] = "fs";

#define VIRTIO_ID_FS 26

#define FUSE_LOOKUP  1
#define FUSE_FORGET  2
#define FUSE_OPEN    14
#define FUSE_READ    15
#define FUSE_WRITE   16
#define FUSE_RELEASE 18
#define FUSE_INIT    26
#define FUSE_CREATE  35

#define EINVAL 22
#define EROFS  30

struct in_hdr {
	u32 len;
	u32 opcode;
	u64 unique;
	u64 nodeid;
	u32 uid, gid, pid, padding;
} __attribute__((packed));

struct out_hdr {
	u32 len;
	s32 error;
	u64 unique;
} __attribute__((packed));

/* struct fuse_entry_out: nodeid, generation, entry_valid, attr_valid,
 * their nsecs, then struct fuse_attr (ino, size, ...). */
#define ENTRY_NODEID 0
#define ENTRY_SIZE   (40 + 8)
#define ENTRY_LEN    128

static struct virtq req_q, hiprio_q;
static u8 *req, *rep;
static u64 unique;

/* One request: opcode for nodeid with `len` bytes of body; returns the
 * reply's error (0 or -errno) and sets *body_len; the body is at rep + 16. */
static s32 fuse(u32 opcode, u64 nodeid, const void *body, u32 len, u32 *body_len, const char *what)
{
	struct in_hdr *h = (struct in_hdr *)req;
	h->len = sizeof(*h) + len;
	h->opcode = opcode;
	h->unique = ++unique;
	h->nodeid = nodeid;
	h->uid = 0;
	h->gid = 0;
	h->pid = 1;
	h->padding = 0;
	memcpy(req + sizeof(*h), body, len);
	memset(rep, 0xee, sizeof(struct out_hdr));
	struct vbuf b[2] = { { req, sizeof(*h) + len, 0 }, { rep, 1024, 1 } };
	u32 used = virtq_transfer(&req_q, b, 2, 5000, what);
	struct out_hdr *o = (struct out_hdr *)rep;
	if (used < sizeof(*o) || o->len != used || o->unique != unique)
		fail("%s: bad reply (used %u, header length %u)", what, used, o->len);
	if (body_len)
		*body_len = used - sizeof(*o);
	return o->error;
}

static u64 get64(const u8 *p) { return *(const u64 *)p; }

static s32 lookup(u64 parent, const char *name, u64 *nodeid)
{
	u32 n;
	s32 err = fuse(FUSE_LOOKUP, parent, name, strlen(name) + 1, &n, name);
	if (err == 0) {
		if (n < ENTRY_LEN)
			fail("LOOKUP %s: reply of %u bytes", name, n);
		*nodeid = get64(rep + 16 + ENTRY_NODEID);
	}
	return err;
}

static void release(u64 nodeid, u64 fh)
{
	u8 in[24];
	memset(in, 0, sizeof(in));
	memcpy(in, &fh, 8);
	s32 err = fuse(FUSE_RELEASE, nodeid, in, sizeof(in), NULL, "RELEASE");
	if (err)
		fail("RELEASE: error %d", err);
}

void guest_main(void)
{
	struct vdev d;
	virtio_find(VIRTIO_ID_FS, &d);
	virtio_init(&d, 0);
	char tag[37];
	for (u32 i = 0; i < 36; i++)
		tag[i] = (char)vcfg_read8(&d, i);
	tag[36] = 0;
	printf("fs: tag %s\n", tag);
	u32 queues = vcfg_read32(&d, 36);
	if (queues != 1)
		fail("num_request_queues %u, want 1", queues);
	virtq_setup(&d, &hiprio_q, 0, 8);
	virtq_setup(&d, &req_q, 1, 8);
	virtio_driver_ok(&d);
	req = dma_alloc(1024, 64);
	rep = dma_alloc(1024, 64);

	u32 init[4] = { 7, 31, 0, 0 }; /* major, minor, max_readahead, flags */
	u32 n;
	s32 err = fuse(FUSE_INIT, 0, init, sizeof(init), &n, "INIT");
	if (err || n < 8 || ((u32 *)(rep + 16))[0] != 7)
		fail("INIT: error %d, %u bytes", err, n);

	u64 hello;
	err = lookup(1, "hello.txt", &hello);
	if (err)
		fail("LOOKUP hello.txt: error %d", err);
	u64 size = get64(rep + 16 + ENTRY_SIZE);
	if (size > 200)
		fail("hello.txt is %llu bytes, at most 200", size);
	u32 open_in[2] = { 0, 0 }; /* O_RDONLY */
	err = fuse(FUSE_OPEN, hello, open_in, sizeof(open_in), &n, "OPEN");
	if (err || n < 16)
		fail("OPEN: error %d", err);
	u64 fh = get64(rep + 16);
	u8 read_in[40];
	memset(read_in, 0, sizeof(read_in));
	memcpy(read_in, &fh, 8);
	u32 want = 256;
	memcpy(read_in + 16, &want, 4);
	err = fuse(FUSE_READ, hello, read_in, sizeof(read_in), &n, "READ");
	if (err || n != size)
		fail("READ: error %d, %u bytes of %llu", err, n, size);
	char text[201];
	memcpy(text, rep + 16, n);
	text[n] = 0;
	printf("fs: hello.txt: %s", text);
	release(hello, fh);

	/* FORGET on the high-priority queue: used, without a reply. */
	struct in_hdr *h = (struct in_hdr *)req;
	h->len = sizeof(*h) + 8;
	h->opcode = FUSE_FORGET;
	h->unique = ++unique;
	h->nodeid = hello;
	u64 nlookup = 1;
	memcpy(req + sizeof(*h), &nlookup, 8);
	struct vbuf fb[1] = { { req, sizeof(*h) + 8, 0 } };
	if (virtq_transfer(&hiprio_q, fb, 1, 5000, "FORGET") != 0)
		fail("FORGET: a reply");

	u64 up;
	err = lookup(1, "..", &up);
	if (err || up != 1)
		fail("LOOKUP .. at the root: error %d, nodeid %llu", err, up);
	err = lookup(1, "../outside.txt", &up);
	if (err != -EINVAL)
		fail("LOOKUP ../outside.txt: error %d, want %d", err, -EINVAL);
	printf("fs: names stay in the share\n");

	static const char name[] = "from-guest.txt";
	u8 create_in[16 + sizeof(name)];
	u32 create[4] = { 0x41 /* O_WRONLY | O_CREAT */, 0100644, 022, 0 };
	memcpy(create_in, create, 16);
	memcpy(create_in + 16, name, sizeof(name));
	err = fuse(FUSE_CREATE, 1, create_in, sizeof(create_in), &n, "CREATE");
	if (err == -EROFS) {
		printf("fs: read-only ok\n");
		return;
	}
	if (err || n < ENTRY_LEN + 16)
		fail("CREATE: error %d, %u bytes", err, n);
	u64 created = get64(rep + 16 + ENTRY_NODEID);
	fh = get64(rep + 16 + ENTRY_LEN);
	static const char data[] = "written by the guest\n";
	u8 write_in[40 + sizeof(data) - 1];
	memset(write_in, 0, 40);
	memcpy(write_in, &fh, 8);
	u32 len = sizeof(data) - 1;
	memcpy(write_in + 16, &len, 4);
	memcpy(write_in + 40, data, len);
	err = fuse(FUSE_WRITE, created, write_in, sizeof(write_in), &n, "WRITE");
	if (err || n < 8 || ((u32 *)(rep + 16))[0] != len)
		fail("WRITE: error %d", err);
	release(created, fh);
	printf("fs: wrote from-guest.txt\n");
}
