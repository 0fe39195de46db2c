/* blkfront-sim: a blkif frontend over the simulated Xen, doing the handshake the way Linux's
 * xen-blkfront does (features, rings single or multi-page, multi-queue, protocol ABI, persistent
 * grants, indirect requests), for tests and benchmarks of ociblk's backend.
 *
 *   blkfront-sim pattern FILE BYTES          write the deterministic initial disk contents
 *   blkfront-sim [opts] check                random I/O checked against an in-memory model
 *   blkfront-sim [opts] bench                QD/bs/mix load: IOPS and latency percentiles
 *   blkfront-sim [opts] hostile CASE         one misbehaviour; prints "result: error|disconnect|
 *                                            refused|ok|crash..." and exits 0 when the backend
 *                                            answered as expected
 * opts: --sim SOCK (default $OCIBLK_XEN_SIM) --domid D --vdev V --queues N --order N
 *       --abi native|x86_32|x86_64 --persistent --indirect --ops N --seed S --model FILE
 *       --reconnect N (check: close and reconnect N times) --qd N --bs BYTES --write-pct P
 *       --seconds S --pause FILE (wait for FILE to exist before I/O) --first-writes
 *
 * The request encoders use their own struct definitions (Xen's blkif.h for native, Linux's
 * common.h layouts for x86_32/x86_64), independent of blkback/request.c. */
#include "blkback/xenif.h"
#include "common/log.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <xen/io/blkif.h>
#include <xen/io/xenbus.h>

#pragma pack(push, 4)
struct x32_rw { uint8_t op, nr_segments; uint16_t handle; uint64_t id; uint64_t sector; struct blkif_request_segment seg[11]; };
struct x32_discard { uint8_t op, flag; uint16_t handle; uint64_t id; uint64_t sector; uint64_t nr_sectors; };
struct x32_indirect {
	uint8_t op, indirect_op; uint16_t nr_segments; uint64_t id; uint64_t sector; uint16_t handle; uint16_t pad1;
	uint32_t grefs[8]; uint64_t pad2;
};
struct x32_rsp { uint64_t id; uint8_t op; int16_t status; };
#pragma pack(pop)
struct x64_rw { uint8_t op, nr_segments; uint16_t handle; uint32_t pad; uint64_t id; uint64_t sector; struct blkif_request_segment seg[11]; };
struct x64_discard { uint8_t op, flag; uint16_t handle; uint32_t pad; uint64_t id; uint64_t sector; uint64_t nr_sectors; };
struct x64_indirect {
	uint8_t op, indirect_op; uint16_t nr_segments; uint32_t pad1; uint64_t id; uint64_t sector; uint16_t handle;
	uint16_t pad2; uint32_t grefs[8]; uint32_t pad3;
};

enum abi { ABI_NATIVE, ABI_X86_32, ABI_X86_64 };

#define QD_MAX 64
#define SEGS_MAX 32
#define QUEUES_MAX 4
#define TIMEOUT_MS 10000

struct lreq {
	uint8_t op, indirect_op;
	bool indirect;
	uint16_t nseg;
	uint64_t id, sector, nr_sectors;
	struct blkif_request_segment seg[256];
	uint32_t igrefs[8];
};

struct slot {
	bool busy;
	uint8_t op;           /* data direction: READ/WRITE/other */
	uint64_t sector;
	uint32_t nsect;
	uint32_t off0;        /* sector offset of the data in the first page */
	uint32_t page0;       /* first data page (guest page index) */
	uint32_t ipage;       /* indirect page */
	int grefs[SEGS_MAX];  /* persistent: fixed; else per request */
	int igref;
	unsigned ngrants;
	bool check_read;
	int expect;           /* expected status */
	uint8_t rsp_op;       /* expected response operation (indirect: the indirect_op) */
	struct timespec t0;
};

struct fq {
	uint32_t port;
	uint8_t *ring;
	unsigned pages, nslots;
	uint32_t ring_page0;
	int ring_grefs[16];
	uint32_t req_prod_pvt, rsp_cons;
	struct slot slots[QD_MAX];
	unsigned inflight;
};

struct fe {
	struct xenif *x;
	struct xenif_xs *xs;
	struct xensim_guest *g;
	struct xenif_evt *evt;
	uint16_t domid;
	uint32_t vdev;
	char fe[256], be[256];
	enum abi abi;
	bool want_persistent, want_indirect;
	unsigned want_queues, want_order;
	/* negotiated */
	unsigned nq, order, max_indirect;
	bool persistent, discard, flush, readonly;
	uint64_t sectors;
	struct fq q[QUEUES_MAX];
	uint32_t next_page;
	unsigned qd;
	uint8_t *model;
	uint64_t rng;
	/* stats */
	uint64_t done, errors, mismatches, bad_ids;
	int last_status;
	uint64_t *lat_ns;
	uint64_t nlat, cap_lat;
	const char *hostile;   /* current hostile case (for xenstore tweaks) */
};

static uint64_t rnd(struct fe *f)
{
	f->rng ^= f->rng >> 12;
	f->rng ^= f->rng << 25;
	f->rng ^= f->rng >> 27;
	return f->rng * 2685821657736338717ull;
}

static uint8_t pattern_byte(uint64_t off)
{
	uint64_t s = off / 512;
	return (uint8_t)((s * 2654435761u) >> 7 ^ (off % 512) * 31);
}

static struct fe *volatile live_fe; /* volatile: the store must not be optimised away */

static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "blkfront-sim: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	printf("result: fail\n");
	exit(1);
}

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

/* ------------------------------------------------------------------ xenstore -------------- */

static int xread(struct fe *f, const char *dir, const char *key, char *out, size_t n)
{
	char path[512], *v;
	snprintf(path, sizeof(path), "%s/%s", dir, key);
	int r = xenif_xs_read(f->xs, 0, path, &v, NULL);
	if (r) return r;
	snprintf(out, n, "%s", v);
	free(v);
	return 0;
}

static long xread_long(struct fe *f, const char *dir, const char *key, long dflt)
{
	char b[64];
	if (xread(f, dir, key, b, sizeof(b))) return dflt;
	return strtol(b, NULL, 10);
}

static int xwrite(struct fe *f, xenif_tx_t t, const char *dir, const char *key, const char *fmt, ...)
{
	char path[512], val[4200];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(val, sizeof(val), fmt, ap);
	va_end(ap);
	snprintf(path, sizeof(path), "%s/%s", dir, key);
	return xenif_xs_write(f->xs, t, path, val, strlen(val));
}

static void set_state(struct fe *f, int st) { xwrite(f, 0, f->fe, "state", "%d", st); }

static int be_state(struct fe *f) { return (int)xread_long(f, f->be, "state", -1); }

/* Waits until the backend's state is one of want (bitmask); returns the state or -ETIMEDOUT. */
static int wait_be_state(struct fe *f, unsigned want, int timeout_ms)
{
	uint64_t end = now_ns() + (uint64_t)timeout_ms * 1000000ull;
	for (;;) {
		int s = be_state(f);
		if (s >= 0 && s < 32 && (want & (1u << s))) return s;
		if (now_ns() > end) return -ETIMEDOUT;
		char *p, *t;
		while (xenif_xs_read_watch(f->xs, &p, &t) == 0) {
			free(p);
			free(t);
		}
		struct pollfd pfd = { xenif_xs_fd(f->xs), POLLIN, 0 };
		poll(&pfd, 1, 20);
	}
}

/* ------------------------------------------------------------------ rings ----------------- */

static size_t entry_size(enum abi a) { return a == ABI_X86_32 ? sizeof(struct x32_rw) : sizeof(union blkif_sring_entry); }

static unsigned ring_slots(enum abi a, unsigned pages)
{
	size_t n = ((size_t)pages * 4096 - 64) / entry_size(a);
	unsigned p = 1;
	while (p * 2 <= n) p *= 2;
	return p;
}

static uint32_t alloc_pages(struct fe *f, unsigned n)
{
	if (f->next_page + n > xensim_guest_npages(f->g)) die("out of guest pages");
	uint32_t p = f->next_page;
	f->next_page += n;
	return p;
}

static void encode(struct fe *f, const struct lreq *r, uint8_t *dst)
{
	uint8_t buf[112];
	memset(buf, 0, sizeof(buf));
	if (r->op == BLKIF_OP_DISCARD) {
		if (f->abi == ABI_X86_32) {
			struct x32_discard d = { r->op, 0, 0, r->id, r->sector, r->nr_sectors };
			memcpy(buf, &d, sizeof(d));
		} else {
			struct x64_discard d = { r->op, 0, 0, 0, r->id, r->sector, r->nr_sectors };
			memcpy(buf, &d, sizeof(d));
		}
	} else if (r->indirect) {
		if (f->abi == ABI_X86_32) {
			struct x32_indirect d = { BLKIF_OP_INDIRECT, r->indirect_op, r->nseg, r->id, r->sector, 0, 0, { 0 }, 0 };
			memcpy(d.grefs, r->igrefs, sizeof(d.grefs));
			memcpy(buf, &d, sizeof(d));
		} else {
			struct x64_indirect d = { BLKIF_OP_INDIRECT, r->indirect_op, r->nseg, 0, r->id, r->sector, 0, 0, { 0 }, 0 };
			memcpy(d.grefs, r->igrefs, sizeof(d.grefs));
			memcpy(buf, &d, sizeof(d));
		}
	} else {
		unsigned n = r->nseg < 11 ? r->nseg : 11;
		if (f->abi == ABI_X86_32) {
			struct x32_rw d = { r->op, (uint8_t)r->nseg, 0, r->id, r->sector, { { 0, 0, 0 } } };
			memcpy(d.seg, r->seg, n * sizeof(r->seg[0]));
			memcpy(buf, &d, sizeof(d));
		} else if (f->abi == ABI_X86_64) {
			struct x64_rw d = { r->op, (uint8_t)r->nseg, 0, 0, r->id, r->sector, { { 0, 0, 0 } } };
			memcpy(d.seg, r->seg, n * sizeof(r->seg[0]));
			memcpy(buf, &d, sizeof(d));
		} else {
			struct blkif_request d;
			memset(&d, 0, sizeof(d));
			d.operation = r->op;
			d.nr_segments = (uint8_t)r->nseg;
			d.id = r->id;
			d.sector_number = r->sector;
			memcpy(d.seg, r->seg, n * sizeof(r->seg[0]));
			memcpy(buf, &d, sizeof(d));
		}
	}
	memcpy(dst, buf, entry_size(f->abi));
}

static void ring_put(struct fe *f, struct fq *q, const struct lreq *r)
{
	uint8_t *slot = q->ring + 64 + (size_t)(q->req_prod_pvt % q->nslots) * entry_size(f->abi);
	encode(f, r, slot);
	q->req_prod_pvt++;
}

static void ring_push(struct fe *f, struct fq *q)
{
	uint32_t *req_prod = (uint32_t *)q->ring, *req_event = (uint32_t *)(q->ring + 4);
	uint32_t old = __atomic_load_n(req_prod, __ATOMIC_RELAXED), nw = q->req_prod_pvt;
	__atomic_store_n(req_prod, nw, __ATOMIC_RELEASE);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if ((uint32_t)(nw - __atomic_load_n(req_event, __ATOMIC_RELAXED)) < (uint32_t)(nw - old)) xenif_evt_notify(f->evt, q->port);
}

/* ------------------------------------------------------------------ handshake ------------- */

static void setup_queue(struct fe *f, struct fq *q)
{
	memset(q, 0, sizeof(*q));
	q->pages = 1u << f->order;
	q->ring_page0 = alloc_pages(f, q->pages);
	q->ring = xensim_guest_page(f->g, q->ring_page0); /* pages are contiguous in the memfd */
	for (unsigned i = 0; i < q->pages; i++) {
		memset(xensim_guest_page(f->g, q->ring_page0 + i), 0, 4096);
		q->ring_grefs[i] = xensim_guest_grant(f->g, q->ring_page0 + i, 0, false);
		if (q->ring_grefs[i] < 0) die("grant ring");
	}
	/* SHARED_RING_INIT */
	uint32_t *h = (uint32_t *)q->ring;
	h[0] = h[2] = 0;
	h[1] = h[3] = 1;
	q->nslots = ring_slots(f->abi, q->pages);
	if (xenif_evt_alloc_unbound(f->evt, 0, &q->port)) die("alloc event channel");
	unsigned segs = f->max_indirect > 11 ? f->max_indirect : 11;
	for (unsigned i = 0; i < QD_MAX; i++) {
		struct slot *s = &q->slots[i];
		s->page0 = alloc_pages(f, segs);
		s->ipage = alloc_pages(f, 1);
		if (f->persistent) {
			for (unsigned k = 0; k < segs; k++) s->grefs[k] = xensim_guest_grant(f->g, s->page0 + k, 0, false);
			s->igref = xensim_guest_grant(f->g, s->ipage, 0, true);
		}
	}
}

/* Writes the frontend's keys: hostile cases alter some of them. */
static int write_rings(struct fe *f, xenif_tx_t t)
{
	const char *h = f->hostile ? f->hostile : "";
	char dir[300];
	if (f->order > 0 || !strcmp(h, "ring-order-too-big")) xwrite(f, t, f->fe, "ring-page-order", "%u", !strcmp(h, "ring-order-too-big") ? 9 : f->order);
	if (f->nq > 1 || !strcmp(h, "queues-too-many") || !strcmp(h, "queues-zero"))
		xwrite(f, t, f->fe, "multi-queue-num-queues", "%u", !strcmp(h, "queues-too-many") ? 64 : !strcmp(h, "queues-zero") ? 0 : f->nq);
	for (unsigned i = 0; i < f->nq; i++) {
		struct fq *q = &f->q[i];
		if (f->nq > 1) snprintf(dir, sizeof(dir), "%s/queue-%u", f->fe, i);
		else snprintf(dir, sizeof(dir), "%s", f->fe);
		for (unsigned p = 0; p < q->pages; p++) {
			char key[32];
			if (f->order == 0) snprintf(key, sizeof(key), "ring-ref");
			else snprintf(key, sizeof(key), "ring-ref%u", p);
			if (!strcmp(h, "missing-ring-ref")) continue;
			if (!strcmp(h, "bad-ring-ref")) xwrite(f, t, dir, key, "%d", 16100);
			else if (!strcmp(h, "ring-ref-garbage")) xwrite(f, t, dir, key, "12abc");
			else if (!strcmp(h, "ring-ref-huge-value")) {
				char big[4097];
				memset(big, '9', 4096);
				big[4096] = 0;
				xwrite(f, t, dir, key, "%s", big);
			} else xwrite(f, t, dir, key, "%d", q->ring_grefs[p]);
		}
		if (!strcmp(h, "bad-evtchn")) xwrite(f, t, dir, "event-channel", "%u", 999999);
		else xwrite(f, t, dir, "event-channel", "%u", q->port);
	}
	if (!strcmp(h, "bad-protocol")) xwrite(f, t, f->fe, "protocol", "arm-abi-nonsense");
	else if (!strcmp(h, "abi-mismatch")) xwrite(f, t, f->fe, "protocol", "%s", f->abi == ABI_X86_32 ? "x86_64-abi" : "x86_32-abi");
	else if (f->abi == ABI_X86_32) xwrite(f, t, f->fe, "protocol", "x86_32-abi");
	else if (f->abi == ABI_X86_64) xwrite(f, t, f->fe, "protocol", "x86_64-abi");
	xwrite(f, t, f->fe, "feature-persistent", "%d", f->want_persistent ? 1 : 0);
	return xwrite(f, t, f->fe, "state", "%d", XenbusStateInitialised);
}

/* The Linux blkfront handshake.  Returns 0 when connected, -ECONNREFUSED when the backend went
 * to Closing/Closed instead, -ETIMEDOUT. */
static int fe_connect(struct fe *f)
{
	if (wait_be_state(f, 1u << XenbusStateInitWait, TIMEOUT_MS) < 0) return -ETIMEDOUT;
	long maxq = xread_long(f, f->be, "multi-queue-max-queues", 1);
	long maxo = xread_long(f, f->be, "max-ring-page-order", 0);
	long maxind = xread_long(f, f->be, "feature-max-indirect-segments", 0);
	f->nq = f->want_queues < (unsigned)(maxq < 1 ? 1 : maxq) ? f->want_queues : (unsigned)(maxq < 1 ? 1 : maxq);
	if (f->nq == 0) f->nq = 1;
	f->order = f->want_order < (unsigned)maxo ? f->want_order : (unsigned)maxo;
	f->persistent = f->want_persistent && xread_long(f, f->be, "feature-persistent", 0) == 1;
	f->max_indirect = f->want_indirect ? (unsigned)(maxind < SEGS_MAX ? maxind : SEGS_MAX) : 0;
	if (f->max_indirect <= 11) f->max_indirect = 0;
	f->discard = xread_long(f, f->be, "feature-discard", 0) == 1;
	f->flush = xread_long(f, f->be, "feature-flush-cache", 0) == 1;
	f->next_page = 0;
	for (unsigned i = 0; i < f->nq; i++) setup_queue(f, &f->q[i]);
	int r;
	for (int attempt = 0; attempt < 20; attempt++) {
		xenif_tx_t t;
		if ((r = xenif_xs_transaction_start(f->xs, &t))) die("transaction: %d", r);
		write_rings(f, t);
		r = xenif_xs_transaction_end(f->xs, t, false);
		if (r != -EAGAIN) break;
	}
	if (r) die("transaction end: %d", r);
	int s = wait_be_state(f, 1u << XenbusStateConnected | 1u << XenbusStateClosing | 1u << XenbusStateClosed, TIMEOUT_MS);
	if (s < 0) return -ETIMEDOUT;
	if (s != XenbusStateConnected) return -ECONNREFUSED;
	f->sectors = (uint64_t)xread_long(f, f->be, "sectors", 0);
	f->readonly = (xread_long(f, f->be, "info", 0) & VDISK_READONLY) != 0;
	if (xread_long(f, f->be, "sector-size", 0) != 512) die("sector-size is not 512");
	set_state(f, XenbusStateConnected);
	return 0;
}

static void release_queues(struct fe *f)
{
	for (unsigned i = 0; i < f->nq; i++) {
		struct fq *q = &f->q[i];
		xenif_evt_unbind(f->evt, q->port);
		for (unsigned p = 0; p < q->pages; p++) xensim_guest_ungrant(f->g, (uint32_t)q->ring_grefs[p]);
		for (unsigned k = 0; k < QD_MAX; k++) {
			struct slot *s = &q->slots[k];
			if (!f->persistent) continue;
			unsigned segs = f->max_indirect > 11 ? f->max_indirect : 11;
			for (unsigned j = 0; j < segs; j++) xensim_guest_ungrant(f->g, (uint32_t)s->grefs[j]);
			xensim_guest_ungrant(f->g, (uint32_t)s->igref);
		}
	}
}

/* Orderly close as blkfront: Closing, wait for the backend, Closed. */
static int fe_close(struct fe *f)
{
	set_state(f, XenbusStateClosing);
	int s = wait_be_state(f, 1u << XenbusStateClosing | 1u << XenbusStateClosed, TIMEOUT_MS);
	set_state(f, XenbusStateClosed);
	if (s >= 0) s = wait_be_state(f, 1u << XenbusStateClosed, TIMEOUT_MS);
	release_queues(f);
	return s < 0 ? s : 0;
}

/* ------------------------------------------------------------------ requests -------------- */

static struct slot *slot_get(struct fq *q, unsigned qd, uint64_t *id)
{
	for (unsigned i = 0; i < qd && i < QD_MAX; i++) {
		if (!q->slots[i].busy) {
			*id = i;
			return &q->slots[i];
		}
	}
	return NULL;
}

static bool overlaps_inflight(struct fe *f, uint64_t sector, uint32_t nsect)
{
	for (unsigned qi = 0; qi < f->nq; qi++)
		for (unsigned i = 0; i < QD_MAX; i++) {
			struct slot *s = &f->q[qi].slots[i];
			if (s->busy && sector < s->sector + s->nsect && s->sector < sector + nsect) return true;
		}
	return false;
}

/* Builds a request of op over [sector, sector+nsect) whose data starts off0 sectors into the
 * slot's first page.  The data for writes is taken from data (nsect*512 bytes). */
static void build(struct fe *f, struct fq *q, struct slot *s, uint64_t id, uint8_t op, uint64_t sector, uint32_t nsect,
		  uint32_t off0, const uint8_t *data, struct lreq *r)
{
	memset(r, 0, offsetof(struct lreq, seg));
	r->op = op;
	r->id = id;
	r->sector = sector;
	s->op = op;
	s->sector = sector;
	s->nsect = nsect;
	s->off0 = off0;
	s->ngrants = 0;
	if (op == BLKIF_OP_DISCARD) {
		r->nr_sectors = nsect;
		return;
	}
	bool is_read = op == BLKIF_OP_READ;
	uint32_t left = nsect, pos = off0;
	unsigned k = 0;
	while (left) {
		uint32_t first = pos % 8, n = 8 - first < left ? 8 - first : left;
		uint32_t page = s->page0 + pos / 8;
		if (data) memcpy((uint8_t *)xensim_guest_page(f->g, page) + first * 512, data + (size_t)(nsect - left) * 512, n * 512);
		int gref;
		if (f->persistent) gref = s->grefs[pos / 8];
		else {
			gref = xensim_guest_grant(f->g, page, 0, !is_read);
			s->grefs[s->ngrants++] = gref;
		}
		r->seg[k++] = (struct blkif_request_segment){ (grant_ref_t)gref, (uint8_t)first, (uint8_t)(first + n - 1) };
		pos += n;
		left -= n;
	}
	r->nseg = (uint16_t)k;
	if (k > 11) {
		r->indirect = true;
		r->indirect_op = op;
		r->op = BLKIF_OP_INDIRECT;
		memcpy(xensim_guest_page(f->g, s->ipage), r->seg, k * sizeof(r->seg[0]));
		r->igrefs[0] = f->persistent ? (uint32_t)s->igref : (uint32_t)xensim_guest_grant(f->g, s->ipage, 0, true);
		if (!f->persistent) s->igref = (int)r->igrefs[0];
	}
}

static void submit_lreq(struct fe *f, struct fq *q, struct slot *s, const struct lreq *r, int expect)
{
	s->busy = true;
	s->expect = expect;
	s->rsp_op = r->indirect || r->op == BLKIF_OP_INDIRECT ? r->indirect_op : r->op;
	s->t0.tv_sec = 0;
	clock_gettime(CLOCK_MONOTONIC, &s->t0);
	q->inflight++;
	ring_put(f, q, r);
}

static void slot_release(struct fe *f, struct slot *s, bool was_indirect)
{
	if (!f->persistent) {
		for (unsigned i = 0; i < s->ngrants; i++) xensim_guest_ungrant(f->g, (uint32_t)s->grefs[i]);
		if (was_indirect) xensim_guest_ungrant(f->g, (uint32_t)s->igref);
	}
	s->ngrants = 0;
	s->busy = false;
}

/* Consumes responses of q; returns how many. */
static unsigned reap(struct fe *f, struct fq *q)
{
	unsigned n = 0;
	for (;;) {
		uint32_t rp = __atomic_load_n((uint32_t *)(q->ring + 8), __ATOMIC_ACQUIRE);
		while (q->rsp_cons != rp) {
			uint8_t *slot = q->ring + 64 + (size_t)(q->rsp_cons % q->nslots) * entry_size(f->abi);
			uint64_t id;
			int16_t status;
			memcpy(&id, slot, 8);
			memcpy(&status, slot + 10, 2);
			q->rsp_cons++;
			n++;
			if (id >= QD_MAX || !q->slots[id].busy) {
				f->bad_ids++;
				continue;
			}
			struct slot *s = &q->slots[id];
			f->last_status = status;
			if (f->lat_ns && f->nlat < f->cap_lat) {
				struct timespec t;
				clock_gettime(CLOCK_MONOTONIC, &t);
				f->lat_ns[f->nlat++] = (uint64_t)(t.tv_sec - s->t0.tv_sec) * 1000000000ull + (uint64_t)(t.tv_nsec - s->t0.tv_nsec);
			}
			uint8_t rop = slot[8];
			if (rop != s->rsp_op) {
				f->errors++;
				fprintf(stderr, "blkfront-sim: response has operation %u, expected %u (as Linux blkfront checks)\n", rop,
					s->rsp_op);
			}
			if (status != s->expect) {
				f->errors++;
				fprintf(stderr, "blkfront-sim: request op %u sector %" PRIu64 " n %u: status %d, expected %d\n", s->op,
					s->sector, s->nsect, status, s->expect);
			} else if (s->check_read && status == BLKIF_RSP_OKAY && f->model) {
				for (uint32_t k = 0; k < s->nsect; k++) {
					uint32_t pos = s->off0 + k;
					const uint8_t *got = (uint8_t *)xensim_guest_page(f->g, s->page0 + pos / 8) + (pos % 8) * 512;
					if (memcmp(got, f->model + (s->sector + k) * 512, 512)) {
						f->mismatches++;
						fprintf(stderr, "blkfront-sim: data mismatch at sector %" PRIu64 "\n", s->sector + k);
						break;
					}
				}
			}
			bool was_indirect = s->nsect > 0 && s->op != BLKIF_OP_DISCARD && (s->off0 + s->nsect + 7) / 8 > 11;
			slot_release(f, s, was_indirect);
			q->inflight--;
			f->done++;
		}
		__atomic_store_n((uint32_t *)(q->ring + 12), q->rsp_cons + 1, __ATOMIC_RELAXED);
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
		if (__atomic_load_n((uint32_t *)(q->ring + 8), __ATOMIC_ACQUIRE) == q->rsp_cons) return n;
	}
}

/* Waits for responses until at most `until` requests remain in flight.  Returns 0, or -EPIPE
 * when the backend left Connected, -ETIMEDOUT. */
static int wait_inflight(struct fe *f, unsigned until)
{
	uint64_t end = now_ns() + (uint64_t)TIMEOUT_MS * 1000000ull;
	for (;;) {
		unsigned total = 0;
		for (unsigned i = 0; i < f->nq; i++) {
			reap(f, &f->q[i]);
			total += f->q[i].inflight;
		}
		if (total <= until) return 0;
		struct pollfd pfd = { xenif_evt_fd(f->evt), POLLIN, 0 };
		int pr = poll(&pfd, 1, 50);
		while (xenif_evt_pending(f->evt) >= 0) {}
		if (pr == 0) {
			/* InitWait is a backend restarting: it resumes our ring.  Closing/Closed is not. */
			int s = be_state(f);
			if (s == XenbusStateClosing || s == XenbusStateClosed || s < 0) return -EPIPE;
			if (now_ns() > end) return -ETIMEDOUT;
		}
	}
}

/* One request, waited for. */
static int do_io(struct fe *f, unsigned qi, uint8_t op, uint64_t sector, uint32_t nsect, const uint8_t *data, int expect,
		 bool check)
{
	struct fq *q = &f->q[qi];
	uint64_t id = 0;
	struct slot *s = slot_get(q, QD_MAX, &id);
	if (!s) die("no free slot");
	static struct lreq r;
	build(f, q, s, id, op, sector, nsect, (uint32_t)(rnd(f) % 8), data, &r);
	s->check_read = check;
	submit_lreq(f, q, s, &r, expect);
	ring_push(f, q);
	return wait_inflight(f, 0);
}

/* ------------------------------------------------------------------ check ------------------ */

static void model_apply(struct fe *f, uint8_t op, uint64_t sector, uint32_t nsect, const uint8_t *data)
{
	if (!f->model) return;
	if (op == BLKIF_OP_DISCARD) memset(f->model + sector * 512, 0, (size_t)nsect * 512);
	else memcpy(f->model + sector * 512, data, (size_t)nsect * 512);
}

/* Random mixed I/O with up to qd requests in flight per queue, all checked. */
static int run_check(struct fe *f, unsigned ops)
{
	uint8_t *data = malloc((size_t)SEGS_MAX * 4096);
	unsigned maxsect = (f->max_indirect ? f->max_indirect : 11) * 8 - 7;
	for (unsigned i = 0; i < ops; i++) {
		unsigned qi = (unsigned)(rnd(f) % f->nq);
		struct fq *q = &f->q[qi];
		uint64_t id = 0;
		struct slot *s;
		while (!(s = slot_get(q, f->qd, &id)))
			if (wait_inflight(f, 0)) goto out;
		unsigned kind = (unsigned)(rnd(f) % 100);
		uint8_t op;
		uint32_t nsect = 1 + (uint32_t)(rnd(f) % (kind < 10 ? maxsect : 16));
		if (nsect > f->sectors) nsect = (uint32_t)f->sectors;
		uint64_t sector = rnd(f) % (f->sectors - nsect + 1);
		int expect = BLKIF_RSP_OKAY;
		if (kind < 45) op = BLKIF_OP_READ;
		else if (kind < 85) op = BLKIF_OP_WRITE;
		else if (kind < 90) op = BLKIF_OP_FLUSH_DISKCACHE; /* with data */
		else if (kind < 93) op = BLKIF_OP_WRITE_BARRIER;
		else if (kind < 96) {
			op = BLKIF_OP_DISCARD;
			sector &= ~7ull;
			nsect = (nsect + 7) & ~7u;
			if (sector + nsect > f->sectors) continue;
			if (!f->discard) expect = f->readonly ? BLKIF_RSP_EOPNOTSUPP : BLKIF_RSP_EOPNOTSUPP;
		} else {
			/* pure flush */
			wait_inflight(f, 0);
			int r = do_io(f, qi, BLKIF_OP_FLUSH_DISKCACHE, 0, 0, NULL, BLKIF_RSP_OKAY, false);
			if (r) goto out;
			continue;
		}
		if (overlaps_inflight(f, sector, nsect)) continue;
		if (op != BLKIF_OP_READ && op != BLKIF_OP_DISCARD) {
			for (uint32_t k = 0; k < nsect * 512; k += 8) {
				uint64_t v = rnd(f);
				memcpy(data + k, &v, 8);
			}
		}
		if (f->readonly && op != BLKIF_OP_READ && expect == BLKIF_RSP_OKAY) expect = BLKIF_RSP_ERROR;
		if ((op == BLKIF_OP_FLUSH_DISKCACHE || op == BLKIF_OP_WRITE_BARRIER) && nsect > 88) nsect = 88; /* no indirect flush */
		static struct lreq r;
		build(f, q, s, id, op, sector, nsect, (uint32_t)(rnd(f) % 8), op == BLKIF_OP_READ || op == BLKIF_OP_DISCARD ? NULL : data, &r);
		s->check_read = op == BLKIF_OP_READ;
		if (expect == BLKIF_RSP_OKAY && op != BLKIF_OP_READ) model_apply(f, op, sector, nsect, data);
		submit_lreq(f, q, s, &r, expect);
		ring_push(f, q);
		for (unsigned k = 0; k < f->nq; k++) reap(f, &f->q[k]);
	}
	wait_inflight(f, 0);
	/* Read everything back. */
	for (uint64_t sct = 0; sct < f->sectors; sct += 64) {
		uint32_t n = f->sectors - sct < 64 ? (uint32_t)(f->sectors - sct) : 64;
		if (n > (f->max_indirect ? f->max_indirect * 8 - 8 : 80)) n = f->max_indirect ? f->max_indirect * 8 - 8 : 80;
		if (do_io(f, (unsigned)(sct / 64 % f->nq), BLKIF_OP_READ, sct, n, NULL, BLKIF_RSP_OKAY, true)) goto out;
		if (n < 64) sct -= 64 - n;
	}
out:
	free(data);
	int r = wait_inflight(f, 0);
	printf("# ops done %" PRIu64 ", status errors %" PRIu64 ", data mismatches %" PRIu64 ", bad ids %" PRIu64 "\n", f->done,
	       f->errors, f->mismatches, f->bad_ids);
	return r || f->errors || f->mismatches || f->bad_ids ? 1 : 0;
}

/* ------------------------------------------------------------------ bench ------------------ */

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static int run_bench(struct fe *f, unsigned bs, unsigned write_pct, double seconds, bool first_writes)
{
	uint32_t nsect = bs / 512;
	uint8_t *data = malloc(bs);
	memset(data, 0x5A, bs);
	f->cap_lat = 4000000;
	f->lat_ns = malloc(f->cap_lat * sizeof(uint64_t));
	uint64_t t0 = now_ns(), end = t0 + (uint64_t)(seconds * 1e9);
	uint64_t blocks = f->sectors / nsect, next_block = 0;
	unsigned qi = 0;
	while (now_ns() < end) {
		struct fq *q = &f->q[qi];
		qi = (qi + 1) % f->nq;
		uint64_t id = 0;
		struct slot *s;
		while ((s = slot_get(q, f->qd, &id))) {
			bool w = (rnd(f) % 100) < write_pct;
			uint64_t blk = first_writes ? next_block++ % blocks : rnd(f) % blocks;
			static struct lreq r;
			build(f, q, s, id, w ? BLKIF_OP_WRITE : BLKIF_OP_READ, blk * nsect, nsect, 0, w ? data : NULL, &r);
			s->check_read = false;
			submit_lreq(f, q, s, &r, BLKIF_RSP_OKAY);
		}
		ring_push(f, q);
		if (wait_inflight(f, f->qd * f->nq - 1)) break;
	}
	wait_inflight(f, 0);
	double el = (double)(now_ns() - t0) / 1e9;
	qsort(f->lat_ns, f->nlat, sizeof(uint64_t), cmp_u64);
	double p50 = f->nlat ? f->lat_ns[f->nlat / 2] / 1000.0 : 0, p99 = f->nlat ? f->lat_ns[f->nlat * 99 / 100] / 1000.0 : 0;
	printf("iops=%.0f p50_us=%.1f p99_us=%.1f ops=%" PRIu64 " errors=%" PRIu64 "\n", f->done / el, p50, p99, f->done, f->errors);
	free(data);
	return f->errors ? 1 : 0;
}

/* ------------------------------------------------------------------ hostile ---------------- */

/* A request-level case: build a valid request, break it, expect the given status, then check
 * the device still serves a good request. */
static int hostile_request(struct fe *f, const char *c)
{
	struct fq *q = &f->q[0];
	uint64_t id = 0;
	struct slot *s = slot_get(q, QD_MAX, &id);
	static struct lreq r;
	uint8_t data[4096 * 2];
	memset(data, 0x77, sizeof(data));
	int expect = BLKIF_RSP_ERROR;
	bool indirect_case = !strncmp(c, "indirect-", 9);
	uint32_t nsect = indirect_case ? 8 * 12 : 8;
	uint8_t *big = calloc(1, (size_t)nsect * 512);
	build(f, q, s, id, BLKIF_OP_READ, 8, nsect, 0, NULL, &r);
	if (!strcmp(c, "rw-zero-segs")) r.nseg = 0;
	else if (!strcmp(c, "rw-12-segs")) { r.op = BLKIF_OP_WRITE; r.nseg = 12; }
	else if (!strcmp(c, "rw-255-segs")) { r.op = BLKIF_OP_WRITE; r.nseg = 255; }
	else if (!strcmp(c, "first-gt-last")) { r.seg[0].first_sect = 5; r.seg[0].last_sect = 4; }
	else if (!strcmp(c, "last-sect-8")) r.seg[0].last_sect = 8;
	else if (!strcmp(c, "sector-past-end")) r.sector = f->sectors - 4;
	else if (!strcmp(c, "sector-overflow")) r.sector = ~0ull - 3;
	else if (!strcmp(c, "bad-gref")) r.seg[0].gref = 16100;
	else if (!strcmp(c, "gref-out-of-table")) r.seg[0].gref = 0x7fffffff;
	else if (!strcmp(c, "gref-other-domain")) {
		xensim_guest_grant_raw(f->g, 16001, 1, 5, s->page0);
		r.seg[0].gref = 16001;
	} else if (!strcmp(c, "read-into-readonly-grant")) {
		xensim_guest_grant_raw(f->g, 16002, 1 | 4, 0, s->page0);
		r.seg[0].gref = 16002;
	} else if (!strcmp(c, "indirect-too-many")) r.nseg = (uint16_t)(f->max_indirect + 1);
	else if (!strcmp(c, "indirect-zero-segs")) r.nseg = 0;
	else if (!strcmp(c, "indirect-bad-gref")) r.igrefs[0] = 16003;
	else if (!strcmp(c, "indirect-bad-op")) r.indirect_op = BLKIF_OP_FLUSH_DISKCACHE;
	else if (!strcmp(c, "indirect-bad-segment")) {
		struct blkif_request_segment *sg = xensim_guest_page(f->g, s->ipage);
		sg[3].first_sect = 7;
		sg[3].last_sect = 2;
	} else if (!strcmp(c, "indirect-past-end")) r.sector = f->sectors - 8;
	else if (!strcmp(c, "indirect-revoked-page")) {
		/* the indirect page is not granted at all */
		xensim_guest_grant_raw(f->g, r.igrefs[0], 0, 0, 0);
	} else if (!strcmp(c, "discard-misaligned")) { r.op = BLKIF_OP_DISCARD; r.sector = 3; r.nr_sectors = 8; }
	else if (!strcmp(c, "discard-past-end")) { r.op = BLKIF_OP_DISCARD; r.sector = f->sectors; r.nr_sectors = 8; }
	else if (!strcmp(c, "discard-overflow")) { r.op = BLKIF_OP_DISCARD; r.sector = 8; r.nr_sectors = ~7ull; }
	else if (!strcmp(c, "unknown-op")) { r.op = 200; expect = BLKIF_RSP_EOPNOTSUPP; }
	else if (!strcmp(c, "reserved-op")) { r.op = BLKIF_OP_RESERVED_1; expect = BLKIF_RSP_EOPNOTSUPP; }
	else if (!strcmp(c, "write-to-image")) r.op = BLKIF_OP_WRITE;
	else if (!strcmp(c, "discard-on-image")) { r.op = BLKIF_OP_DISCARD; r.nr_sectors = 8; r.nseg = 0; expect = 0x100; }
	else die("unknown request case %s", c);
	if (r.op == BLKIF_OP_DISCARD) s->op = BLKIF_OP_DISCARD;
	s->check_read = false;
	submit_lreq(f, q, s, &r, expect == 0x100 ? BLKIF_RSP_ERROR : expect);
	ring_push(f, q);
	int w = wait_inflight(f, 0);
	free(big);
	if (w) {
		printf("result: disconnect\n");
		return 2;
	}
	bool good = expect == 0x100 ? (f->last_status == BLKIF_RSP_ERROR || f->last_status == BLKIF_RSP_EOPNOTSUPP)
				    : f->last_status == expect;
	printf("# bad request answered with status %d\n", f->last_status);
	if (!good) {
		printf("result: wrong-status\n");
		return 1;
	}
	/* The device still works. */
	f->errors = 0;
	if (f->readonly) {
		if (do_io(f, 0, BLKIF_OP_READ, 0, 8, NULL, BLKIF_RSP_OKAY, true) || f->errors || f->mismatches) {
			printf("result: broken-after-error\n");
			return 1;
		}
	} else {
		if (do_io(f, 0, BLKIF_OP_WRITE, 16, 8, data, BLKIF_RSP_OKAY, false) ||
		    do_io(f, 0, BLKIF_OP_READ, 16, 8, NULL, BLKIF_RSP_OKAY, false) || f->errors) {
			printf("result: broken-after-error\n");
			return 1;
		}
		model_apply(f, BLKIF_OP_WRITE, 16, 8, data);
	}
	printf("result: error\n");
	return 0;
}

/* A ring-level case: corrupt the producer index; expect the backend to disconnect. */
static int hostile_ring(struct fe *f, const char *c)
{
	struct fq *q = &f->q[0];
	uint32_t *req_prod = (uint32_t *)q->ring;
	uint32_t rsp = __atomic_load_n((uint32_t *)(q->ring + 8), __ATOMIC_ACQUIRE);
	if (!strcmp(c, "prod-overrun")) __atomic_store_n(req_prod, rsp + q->nslots + 1, __ATOMIC_RELEASE);
	else if (!strcmp(c, "prod-huge")) __atomic_store_n(req_prod, rsp + 0x80000000u, __ATOMIC_RELEASE);
	else if (!strcmp(c, "prod-backwards")) __atomic_store_n(req_prod, rsp - 5, __ATOMIC_RELEASE);
	else die("unknown ring case %s", c);
	xenif_evt_notify(f->evt, q->port);
	int s = wait_be_state(f, 1u << XenbusStateClosing | 1u << XenbusStateClosed, TIMEOUT_MS);
	char err[256] = "";
	xread(f, f->be, "error", err, sizeof(err));
	printf("# backend state %d, error \"%s\"\n", s, err);
	if (s < 0) {
		printf("result: no-disconnect\n");
		return 1;
	}
	printf("result: disconnect\n");
	return 0;
}

static int run_hostile(struct fe *f, const char *c)
{
	f->hostile = c;
	static const char *const refused[] = { "bad-ring-ref", "ring-ref-garbage", "ring-ref-huge-value", "ring-order-too-big",
					       "queues-too-many", "queues-zero", "bad-protocol", "bad-evtchn",
					       "missing-ring-ref", NULL };
	for (int i = 0; refused[i]; i++) {
		if (strcmp(c, refused[i])) continue;
		int r = fe_connect(f);
		char err[256] = "";
		xread(f, f->be, "error", err, sizeof(err));
		printf("# connect: %d, backend error \"%s\"\n", r, err);
		if (r == -ECONNREFUSED) {
			printf("result: refused\n");
			return 0;
		}
		printf("result: %s\n", r == 0 ? "connected" : "timeout");
		return 1;
	}
	if (!strcmp(c, "state-garbage") || !strcmp(c, "state-99") || !strcmp(c, "state-connected-early")) {
		if (wait_be_state(f, 1u << XenbusStateInitWait, TIMEOUT_MS) < 0) return 1;
		if (!strcmp(c, "state-garbage")) xwrite(f, 0, f->fe, "state", "banana");
		else if (!strcmp(c, "state-99")) xwrite(f, 0, f->fe, "state", "99");
		else xwrite(f, 0, f->fe, "state", "4"); /* Connected without any ring */
		int s = wait_be_state(f, 1u << XenbusStateClosing | 1u << XenbusStateClosed, TIMEOUT_MS);
		printf("# backend state %d\n", s);
		if (s < 0) {
			printf("result: ignored\n");
			return 1;
		}
		printf("result: refused\n");
		return 0;
	}
	f->hostile = NULL;
	if (!strcmp(c, "abi-mismatch")) f->hostile = c;
	int r = fe_connect(f);
	if (r) {
		printf("result: connect-failed %d\n", r);
		return 1;
	}
	f->hostile = NULL;
	if (!strncmp(c, "prod-", 5)) return hostile_ring(f, c);
	if (!strcmp(c, "abi-mismatch")) {
		/* Requests in our layout, backend decoding another: nothing may come back as success
		 * for the request we sent; garbage ids, errors or a disconnect are all acceptable. */
		struct fq *q = &f->q[0];
		uint64_t id = 0;
		struct slot *s = slot_get(q, QD_MAX, &id);
		static struct lreq rq;
		build(f, q, s, id, BLKIF_OP_READ, 8, 8, 0, NULL, &rq);
		s->check_read = false;
		submit_lreq(f, q, s, &rq, BLKIF_RSP_OKAY);
		ring_push(f, q);
		uint64_t end = now_ns() + 3000000000ull;
		while (now_ns() < end && !f->bad_ids && !f->done && be_state(f) == XenbusStateConnected) {
			reap(f, q);
			usleep(1000);
		}
		printf("# bad ids %" PRIu64 ", done %" PRIu64 ", status %d, backend state %d\n", f->bad_ids, f->done,
		       f->last_status, be_state(f));
		bool detected = f->bad_ids || (f->done && f->last_status != BLKIF_RSP_OKAY) || be_state(f) != XenbusStateConnected;
		printf("result: %s\n", detected ? "error" : "accepted-garbage");
		return detected ? 0 : 1;
	}
	if (!strcmp(c, "evtchn-storm")) {
		for (int i = 0; i < 100000; i++) xenif_evt_notify(f->evt, f->q[0].port);
		uint8_t data[4096];
		memset(data, 1, sizeof(data));
		int rr = do_io(f, 0, BLKIF_OP_WRITE, 8, 8, data, BLKIF_RSP_OKAY, false);
		printf("result: %s\n", rr || f->errors ? "broken" : "error");
		return rr || f->errors ? 1 : 0;
	}
	if (!strcmp(c, "reconnect-storm")) {
		for (int i = 0; i < 10; i++) {
			if (fe_close(f)) {
				printf("result: close-failed\n");
				return 1;
			}
			set_state(f, XenbusStateInitialising);
			if (fe_connect(f)) {
				printf("result: reconnect-failed\n");
				return 1;
			}
		}
		int rr = do_io(f, 0, BLKIF_OP_READ, 0, 8, NULL, BLKIF_RSP_OKAY, true);
		printf("result: %s\n", rr || f->errors || f->mismatches ? "broken" : "error");
		return rr || f->errors || f->mismatches ? 1 : 0;
	}
	if (!strcmp(c, "revoke-ring")) {
		/* The guest ungrants its ring while connected: the backend keeps its mapping (as with
		 * Xen), nothing breaks; a later close still completes. */
		xensim_guest_ungrant(f->g, (uint32_t)f->q[0].ring_grefs[0]);
		int rr = do_io(f, 0, BLKIF_OP_READ, 0, 8, NULL, BLKIF_RSP_OKAY, true);
		printf("result: %s\n", rr ? "broken" : "error");
		return rr ? 1 : 0;
	}
	return hostile_request(f, c);
}

/* ------------------------------------------------------------------ main ------------------- */

static int write_pattern(const char *path, uint64_t bytes)
{
	FILE *fp = fopen(path, "wb");
	if (!fp) return 1;
	uint8_t buf[4096];
	for (uint64_t off = 0; off < bytes; off += sizeof(buf)) {
		for (unsigned i = 0; i < sizeof(buf); i++) buf[i] = pattern_byte(off + i);
		fwrite(buf, 1, sizeof(buf), fp);
	}
	return fclose(fp) ? 1 : 0;
}

int main(int argc, char **argv)
{
	if (argc == 4 && !strcmp(argv[1], "pattern")) return write_pattern(argv[2], strtoull(argv[3], NULL, 0));
	if ((argc == 3 || argc == 4) && (!strcmp(argv[1], "xs-read") || !strcmp(argv[1], "xs-write"))) {
		/* Script helpers, as dom0: print a node (exit 1 when missing) or write one. */
		struct xenif *x;
		struct xenif_xs *xs;
		const char *sk = getenv(XENIF_SIM_ENV);
		log_set_quiet(1);
		if (!sk || xenif_open_sim(sk, 0, &x)) return 2;
		if (xenif_xs_open(x, &xs)) {
			xenif_close(x);
			return 2;
		}
		int xr;
		if (argc == 4) {
			xr = xenif_xs_write(xs, 0, argv[2], argv[3], strlen(argv[3])) ? 1 : 0;
		} else {
			char *v = NULL;
			xr = xenif_xs_read(xs, 0, argv[2], &v, NULL) ? 1 : 0;
			if (!xr) printf("%s\n", v);
			free(v);
		}
		xenif_xs_close(xs);
		xenif_close(x);
		return xr;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct fe *f = calloc(1, sizeof(*f));
	live_fe = f; /* a root for LeakSanitizer when die() exits with everything still in use */
	const char *sock = getenv(XENIF_SIM_ENV), *model_path = NULL, *pause_file = NULL, *cmd = NULL, *arg = NULL;
	const char *until_file = NULL;
	unsigned ops = 2000, reconnect = 0, bs = 4096, write_pct = 0;
	double seconds = 2;
	bool first_writes = false;
	f->domid = 1;
	f->vdev = 51712;
	f->want_queues = 1;
	f->qd = 8;
	f->rng = 0x9E3779B97F4A7C15ull;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--sim") && v) sock = argv[++i];
		else if (!strcmp(a, "--domid") && v) f->domid = (uint16_t)atoi(argv[++i]);
		else if (!strcmp(a, "--vdev") && v) f->vdev = (uint32_t)atoi(argv[++i]);
		else if (!strcmp(a, "--queues") && v) f->want_queues = (unsigned)atoi(argv[++i]);
		else if (!strcmp(a, "--order") && v) f->want_order = (unsigned)atoi(argv[++i]);
		else if (!strcmp(a, "--abi") && v) {
			i++;
			f->abi = !strcmp(v, "x86_32") ? ABI_X86_32 : !strcmp(v, "x86_64") ? ABI_X86_64 : ABI_NATIVE;
		} else if (!strcmp(a, "--persistent")) f->want_persistent = true;
		else if (!strcmp(a, "--indirect")) f->want_indirect = true;
		else if (!strcmp(a, "--ops") && v) ops = (unsigned)atoi(argv[++i]);
		else if (!strcmp(a, "--seed") && v) f->rng = strtoull(argv[++i], NULL, 0) | 1;
		else if (!strcmp(a, "--model") && v) model_path = argv[++i];
		else if (!strcmp(a, "--reconnect") && v) reconnect = (unsigned)atoi(argv[++i]);
		else if (!strcmp(a, "--qd") && v) f->qd = (unsigned)atoi(argv[++i]);
		else if (!strcmp(a, "--bs") && v) bs = (unsigned)atoi(argv[++i]);
		else if (!strcmp(a, "--write-pct") && v) write_pct = (unsigned)atoi(argv[++i]);
		else if (!strcmp(a, "--seconds") && v) seconds = atof(argv[++i]);
		else if (!strcmp(a, "--pause") && v) pause_file = argv[++i];
		else if (!strcmp(a, "--until") && v) until_file = argv[++i];
		else if (!strcmp(a, "--first-writes")) first_writes = true;
		else if (!cmd) cmd = a;
		else if (!arg) arg = a;
		else die("unexpected argument %s", a);
	}
	if (!cmd || !sock) die("usage: blkfront-sim [--sim SOCK] [opts] check|bench|hostile CASE");
	if (f->qd < 1 || f->qd > QD_MAX) die("--qd 1..%d", QD_MAX);
	if (bs < 512 || bs % 512 || bs > 11 * 4096) die("--bs: 512..45056, multiple of 512");
	log_set_quiet(1);
	if (xenif_open_sim(sock, f->domid, &f->x) || xenif_xs_open(f->x, &f->xs) || xenif_evt_open(f->x, &f->evt))
		die("cannot reach the sim at %s", sock);
	if (xensim_guest_create(f->x, 16384, 16384, &f->g)) die("cannot create guest domain %u", f->domid);
	snprintf(f->fe, sizeof(f->fe), "/local/domain/%u/device/vbd/%u", f->domid, f->vdev);
	if (xread(f, f->fe, "backend", f->be, sizeof(f->be))) die("no frontend node %s (attach first)", f->fe);
	char w[300];
	snprintf(w, sizeof(w), "%s/state", f->be);
	xenif_xs_watch(f->xs, w, "be");
	int rc;
	if (!strcmp(cmd, "hostile")) {
		if (!arg) die("hostile needs a CASE");
		rc = run_hostile(f, arg);
		goto out;
	}
	if ((rc = fe_connect(f))) die("connect: %s", strerror(-rc));
	printf("# connected: %u queue(s), ring order %u, %s, persistent %d, indirect %u, discard %d, readonly %d, %" PRIu64
	       " sectors\n",
	       f->nq, f->order, f->abi == ABI_X86_32 ? "x86_32" : f->abi == ABI_X86_64 ? "x86_64" : "native", f->persistent,
	       f->max_indirect, f->discard, f->readonly, f->sectors);
	if (pause_file) {
		while (access(pause_file, F_OK) != 0) usleep(10000);
		if (wait_be_state(f, 1u << XenbusStateConnected, TIMEOUT_MS) < 0) die("backend not connected after pause");
	}
	if (!strcmp(cmd, "bench")) {
		rc = run_bench(f, bs, write_pct, seconds, first_writes);
		fe_close(f);
		goto out;
	}
	if (strcmp(cmd, "check")) die("unknown command %s", cmd);
	f->model = malloc(f->sectors * 512);
	FILE *mf = model_path ? fopen(model_path, "rb") : NULL;
	if (mf) {
		if (fread(f->model, 1, f->sectors * 512, mf) != f->sectors * 512) die("short model file");
		fclose(mf);
	} else {
		for (uint64_t o = 0; o < f->sectors * 512; o++) f->model[o] = pattern_byte(o);
	}
	rc = run_check(f, ops);
	unsigned rounds = 1;
	while (until_file && rc == 0 && access(until_file, F_OK) != 0) {
		rc = run_check(f, ops);
		rounds++;
	}
	if (until_file) printf("# %u check rounds\n", rounds);
	for (unsigned k = 0; k < reconnect && rc == 0; k++) {
		if (fe_close(f)) die("close for reconnect");
		set_state(f, XenbusStateInitialising);
		if ((rc = fe_connect(f))) die("reconnect %u: %s", k, strerror(-rc));
		printf("# reconnected (%u)\n", k + 1);
		rc = run_check(f, ops / 4);
	}
	if (model_path && rc == 0) {
		mf = fopen(model_path, "wb");
		if (!mf || fwrite(f->model, 1, f->sectors * 512, mf) != f->sectors * 512 || fclose(mf)) die("write model");
	}
	if (fe_close(f)) {
		printf("# close did not complete\n");
		rc = 1;
	}
	printf("result: %s\n", rc ? "fail" : "ok");
out:
	/* Free everything so ASan's leak check stays meaningful for the library code. */
	free(f->model);
	free(f->lat_ns);
	xenif_evt_close(f->evt);
	xenif_xs_close(f->xs);
	xensim_guest_destroy(f->g);
	xenif_close(f->x);
	free(f);
	return rc;
}
