/* One blkif device served in the calling process: the xenstore handshake and state machine (as
 * Linux's xen-blkback/xenbus.c does it) on the main thread, and one thread per ring moving
 * requests between the shared ring and a cow/ queue.
 *
 * Invariants:
 *   - every request slot is copied off the shared ring exactly once (memcpy into a private
 *     buffer) before it is decoded; indirect pages are grant-copied into private memory before
 *     their segments are decoded; only blkback_request_validate decides what runs;
 *   - the ring's producer index is checked on every read (at most one ring ahead of our
 *     responses), else the ring is declared corrupt and the device disconnects;
 *   - all per-ring memory (request pool, bounce buffers, indirect pages, persistent-grant table)
 *     is allocated at connect and bounded by common/limits.h; nothing grows with guest input;
 *   - a request slot of the pool belongs to at most one cow request at a time; a ring thread is
 *     the only user of its cow_queue, evtchn handle and grant handle;
 *   - statistics: each queue's counters are written by its ring thread only (relaxed atomic
 *     stores) and read by the main thread, which folds them into the device's totals when the
 *     queue is torn down, so the totals run on across reconnections for the life of the device
 *     process.  The main thread publishes them under <backend>/statistics/ (at most every
 *     BLKBACK_STATS_INTERVAL_MS while connected, and when the frontend closes) and logs them when
 *     a connection ends. */
#include "blkback/blkback.h"
#include "blkback/request.h"
#include "blkback/xenif.h"
#include "common/checked.h"
#include "common/limits.h"
#include "common/log.h"
#include "cow/cow.h"
#include "layer-store/layer_store.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <xen/io/blkif.h>
#include <xen/io/xenbus.h>

#define PATH_LEN 256

struct bb_queue;

/* Per-device counters (see blkback.h for what each one counts). */
#define BB_STATS(X)                                                                                   \
	X(rd_req) X(wr_req) X(f_req) X(ds_req) X(indirect_req) X(oo_req) X(err_req) X(rd_sect) X(wr_sect) \
	X(ds_sect) X(pgnt_mapped) X(pgnt_reused) X(gnt_map_segs) X(gnt_copy_segs)
struct bb_stats {
#define BB_STAT_FIELD(n) uint64_t n;
	BB_STATS(BB_STAT_FIELD)
#undef BB_STAT_FIELD
};
/* The ring thread owning q is the only writer of q->st. */
#define STAT_ADD(q, field, n) __atomic_store_n(&(q)->st.field, (q)->st.field + (n), __ATOMIC_RELAXED)

struct bb_slot {
	struct bb_queue *q;
	struct bb_slot *next_free;
	struct blkback_req req;
	struct cow_request creq;
	struct iovec iov[BLKBACK_INDIRECT_SEGS_MAX];
	uint8_t *buf;          /* bounce buffer: max segments * 4 KiB */
	uint8_t *ipages;       /* copies of indirect pages */
	void *tmp_map;         /* map mode: non-persistent mappings of this request */
	unsigned tmp_map_count;
	uint64_t sectors;
	uint8_t data_op;
	bool flush_after;      /* FLUSH/BARRIER with data: write, then flush */
	bool barrier;
};

struct pgrant {
	uint32_t gref;
	bool used;
	void *addr;
};

struct bb_queue {
	struct bb_dev *dev;
	unsigned index;
	pthread_t thread;
	bool thread_started;
	/* ring */
	uint32_t ring_refs[1u << BLKBACK_RING_PAGE_ORDER_MAX];
	unsigned ring_pages;
	uint8_t *ring;         /* mapped shared ring */
	unsigned nslots;
	size_t entry;
	uint32_t req_cons, rsp_prod_pvt;
	uint32_t remote_port, local_port;
	struct xenif_evt *evt;
	struct xenif_gnt *gnt;
	struct cow_queue *cq;
	int stop_fd;
	/* pool */
	struct bb_slot *slots;
	unsigned nslots_pool;
	struct bb_slot *free_list;
	unsigned in_use;
	uint8_t *bounce;       /* one mapping for every slot's buffers */
	size_t bounce_bytes;
	struct bb_slot *parked_barrier; /* waits for in_use == 1 */
	bool ordered;          /* a barrier is parked or running: consume nothing */
	bool dead;             /* ring corrupt: the main thread disconnects */
	bool notify_pending;
	/* persistent grants (map mode) */
	struct pgrant *pg;
	unsigned pg_cap, pg_count;
	struct bb_stats st;
};

struct bb_dev {
	struct blkback_options opts;
	struct xenif *x;
	struct xenif_xs *xs;
	struct layer_store *store;
	struct cow_device *cow;
	char be[PATH_LEN], fe[PATH_LEN];
	uint16_t fe_domid;
	bool readonly;
	struct blkback_limits lim;
	int state;              /* our XenbusState */
	bool connected;
	bool fe_gone;           /* the frontend's directory has vanished (logged once) */
	enum blkback_abi abi;
	bool persistent;
	unsigned nqueues;
	struct bb_queue queues[BLKBACK_QUEUES_MAX];
	int attn_fd;            /* ring threads -> main thread */
	struct bb_stats st_total;     /* of queues torn down */
	struct bb_stats st_published; /* last values written to xenstore */
	uint64_t st_published_ms;
};

/* ------------------------------------------------------------------ xenstore helpers ------- */

static int be_write(struct bb_dev *d, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int be_write(struct bb_dev *d, const char *key, const char *fmt, ...)
{
	char path[PATH_LEN + 64], val[256];
	va_list ap;
	snprintf(path, sizeof(path), "%s/%s", d->be, key);
	va_start(ap, fmt);
	vsnprintf(val, sizeof(val), fmt, ap);
	va_end(ap);
	return xenif_xs_write(d->xs, 0, path, val, strlen(val));
}

static int xs_read_key(struct bb_dev *d, const char *dir, const char *key, char **out)
{
	char path[PATH_LEN + 64];
	snprintf(path, sizeof(path), "%s/%s", dir, key);
	return xenif_xs_read(d->xs, 0, path, out, NULL);
}

static int xs_read_u(struct bb_dev *d, const char *dir, const char *key, uint64_t max, uint64_t *out)
{
	char path[PATH_LEN + 64];
	snprintf(path, sizeof(path), "%s/%s", dir, key);
	return xenif_xs_read_uint(d->xs, 0, path, max, out);
}

static void switch_state(struct bb_dev *d, int st)
{
	if (d->state == st) return;
	d->state = st;
	be_write(d, "state", "%d", st);
	log_debug("blkback %s: state %d", d->be, st);
}

static void fatal(struct bb_dev *d, const char *msg)
{
	log_warn("blkback %s: %s", d->be, msg);
	be_write(d, "error", "%s", msg);
}

/* ------------------------------------------------------------------ ring ------------------- */

/* Shared ring header fields, read and written with atomics: the guest may change them any time. */
static inline uint32_t *ring_field(struct bb_queue *q, unsigned off) { return (uint32_t *)(q->ring + off); }
#define SR_REQ_PROD 0
#define SR_REQ_EVENT 4
#define SR_RSP_PROD 8
#define SR_RSP_EVENT 12

static void make_response(struct bb_queue *q, uint64_t id, uint8_t op, int16_t status)
{
	uint8_t *slot = q->ring + BLKBACK_SRING_HEADER_BYTES + (size_t)(q->rsp_prod_pvt % q->nslots) * q->entry;
	blkback_response_encode(q->dev->abi, slot, id, op, status);
	q->rsp_prod_pvt++;
	q->notify_pending = true;
	if (status != BLKIF_RSP_OKAY) STAT_ADD(q, err_req, 1);
}

static void push_responses(struct bb_queue *q)
{
	if (!q->notify_pending) return;
	q->notify_pending = false;
	uint32_t old = __atomic_load_n(ring_field(q, SR_RSP_PROD), __ATOMIC_RELAXED);
	uint32_t nw = q->rsp_prod_pvt;
	__atomic_store_n(ring_field(q, SR_RSP_PROD), nw, __ATOMIC_RELEASE);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	uint32_t ev = __atomic_load_n(ring_field(q, SR_RSP_EVENT), __ATOMIC_RELAXED);
	if ((uint32_t)(nw - ev) < (uint32_t)(nw - old)) xenif_evt_notify(q->evt, q->local_port);
}

static void slot_free(struct bb_queue *q, struct bb_slot *s)
{
	if (s->tmp_map) {
		xenif_gnt_unmap(q->gnt, s->tmp_map, s->tmp_map_count);
		s->tmp_map = NULL;
	}
	s->next_free = q->free_list;
	q->free_list = s;
	q->in_use--;
}

static void finish(struct bb_slot *s, int16_t status)
{
	struct bb_queue *q = s->q;
	/* As Linux blkback: an indirect request is answered with its indirect_op, which is what
	 * Linux blkfront checks a response's operation against. */
	uint8_t op = s->req.operation == BLKIF_OP_INDIRECT ? s->req.indirect_op : s->req.operation;
	make_response(q, s->req.id, op, status);
	if (s->barrier) q->ordered = false;
	slot_free(q, s);
}

/* Segment i's bytes inside the request's data, in bytes. */
static inline uint32_t seg_bytes(const struct blkback_seg *g) { return (uint32_t)(g->last_sect - g->first_sect + 1) * 512u; }

/* Copy mode: moves the data of all segments between the bounce buffer and the guest. */
static int copy_segments(struct bb_slot *s, bool to_guest)
{
	struct bb_queue *q = s->q;
	struct xenif_copy_seg cs[64];
	uint16_t nseg = blkback_request_segments(&s->req);
	size_t off = 0;
	for (unsigned base = 0; base < nseg; base += 64) {
		unsigned n = nseg - base < 64 ? nseg - base : 64;
		for (unsigned i = 0; i < n; i++) {
			const struct blkback_seg *g = &s->req.seg[base + i];
			cs[i] = (struct xenif_copy_seg){ .gref = g->gref, .offset = (uint16_t)(g->first_sect * 512u),
							 .len = (uint16_t)seg_bytes(g), .local = s->buf + off, .to_guest = to_guest };
			off += seg_bytes(g);
		}
		if (xenif_gnt_copy(q->gnt, q->dev->fe_domid, cs, n)) return -EIO;
	}
	STAT_ADD(q, gnt_copy_segs, nseg);
	return 0;
}

static struct pgrant *pg_lookup(struct bb_queue *q, uint32_t gref, bool insert)
{
	if (!q->pg_cap) return NULL;
	unsigned tbl = q->pg_cap * 2;
	unsigned h = (gref * 2654435761u) % tbl;
	for (unsigned i = 0; i < tbl; i++) {
		struct pgrant *p = &q->pg[(h + i) % tbl];
		if (p->used && p->gref == gref) return p;
		if (!p->used) {
			if (!insert || q->pg_count >= q->pg_cap) return NULL;
			p->used = true;
			p->gref = gref;
			p->addr = NULL;
			q->pg_count++;
			return p;
		}
	}
	return NULL;
}

/* Map mode: builds s->iov over the guest's pages (persistent grants stay mapped; the rest are
 * mapped for this request only).  writable: the backend writes into the pages (a read). */
static int map_segments(struct bb_slot *s, bool writable)
{
	struct bb_queue *q = s->q;
	uint16_t nseg = blkback_request_segments(&s->req);
	uint32_t tmp_refs[BLKBACK_INDIRECT_SEGS_MAX];
	int tmp_idx[BLKBACK_INDIRECT_SEGS_MAX];
	unsigned ntmp = 0;
	for (unsigned i = 0; i < nseg; i++) {
		const struct blkback_seg *g = &s->req.seg[i];
		s->iov[i].iov_len = seg_bytes(g);
		struct pgrant *p = q->dev->persistent ? pg_lookup(q, g->gref, false) : NULL;
		if (!p && q->dev->persistent) {
			/* A new persistent grant: map it read-write for good, if the table has room. */
			void *a;
			if (q->pg_count < q->pg_cap && xenif_gnt_map(q->gnt, q->dev->fe_domid, &g->gref, 1, true, &a) == 0) {
				p = pg_lookup(q, g->gref, true);
				if (p) {
					p->addr = a;
					STAT_ADD(q, pgnt_mapped, 1);
				} else {
					xenif_gnt_unmap(q->gnt, a, 1);
				}
			}
		} else if (p) {
			STAT_ADD(q, pgnt_reused, 1);
		}
		if (p) {
			s->iov[i].iov_base = (uint8_t *)p->addr + g->first_sect * 512u;
			continue;
		}
		tmp_idx[ntmp] = (int)i;
		tmp_refs[ntmp++] = g->gref;
	}
	if (ntmp) {
		void *a;
		int r = xenif_gnt_map(q->gnt, q->dev->fe_domid, tmp_refs, ntmp, writable, &a);
		if (r) return r;
		s->tmp_map = a;
		s->tmp_map_count = ntmp;
		STAT_ADD(q, gnt_map_segs, ntmp);
		for (unsigned k = 0; k < ntmp; k++) {
			const struct blkback_seg *g = &s->req.seg[tmp_idx[k]];
			s->iov[tmp_idx[k]].iov_base = (uint8_t *)a + (size_t)k * 4096 + g->first_sect * 512u;
		}
	}
	return 0;
}

static void submit(struct bb_slot *s);

static void complete_cb(struct cow_request *creq, int result)
{
	struct bb_slot *s = creq->opaque;
	struct bb_queue *q = s->q;
	if (result < 0) {
		log_debug("blkback %s: request %" PRIu64 " failed: %s", q->dev->be, s->req.id, strerror(-result));
		finish(s, BLKIF_RSP_ERROR);
		return;
	}
	if (s->flush_after && creq->op == COW_OP_WRITE) {
		s->creq = (struct cow_request){ .op = COW_OP_FLUSH, .complete = complete_cb, .opaque = s };
		int r = cow_queue_submit(q->cq, &s->creq);
		if (r) finish(s, BLKIF_RSP_ERROR);
		return;
	}
	if (s->data_op == BLKIF_OP_READ && !q->dev->opts.grant_map && copy_segments(s, true)) {
		finish(s, BLKIF_RSP_ERROR);
		return;
	}
	finish(s, BLKIF_RSP_OKAY);
}

/* Starts the validated request in s. */
static void submit(struct bb_slot *s)
{
	struct bb_queue *q = s->q;
	uint16_t nseg = blkback_request_segments(&s->req);
	bool is_read = s->data_op == BLKIF_OP_READ;
	struct cow_request *c = &s->creq;
	*c = (struct cow_request){ .complete = complete_cb, .opaque = s };
	if (s->data_op == BLKIF_OP_DISCARD) {
		c->op = COW_OP_DISCARD;
		c->offset_bytes = s->req.sector_number * 512;
		c->length_bytes = s->sectors * 512;
	} else if (nseg == 0) {
		c->op = COW_OP_FLUSH;
	} else {
		c->op = is_read ? COW_OP_READ : COW_OP_WRITE;
		c->offset_bytes = s->req.sector_number * 512;
		c->length_bytes = s->sectors * 512;
		if (q->dev->opts.grant_map) {
			if (map_segments(s, is_read)) {
				finish(s, BLKIF_RSP_ERROR);
				return;
			}
			c->iov = s->iov;
			c->iov_count = nseg;
		} else {
			if (!is_read && copy_segments(s, false)) {
				finish(s, BLKIF_RSP_ERROR);
				return;
			}
			s->iov[0] = (struct iovec){ s->buf, (size_t)c->length_bytes };
			c->iov = s->iov;
			c->iov_count = 1;
		}
	}
	int r = cow_queue_submit(q->cq, c);
	if (r) {
		log_debug("blkback %s: submit: %s", q->dev->be, strerror(-r));
		finish(s, BLKIF_RSP_ERROR);
	}
}

/* Counts a validated request (by what it does, as Linux blkback's statistics do). */
static void count_request(struct bb_queue *q, const struct bb_slot *s)
{
	if (s->req.operation == BLKIF_OP_INDIRECT) STAT_ADD(q, indirect_req, 1);
	switch (s->data_op) {
	case BLKIF_OP_READ:
		STAT_ADD(q, rd_req, 1);
		STAT_ADD(q, rd_sect, s->sectors);
		break;
	case BLKIF_OP_WRITE:
		STAT_ADD(q, wr_req, 1);
		STAT_ADD(q, wr_sect, s->sectors);
		break;
	case BLKIF_OP_DISCARD:
		STAT_ADD(q, ds_req, 1);
		STAT_ADD(q, ds_sect, s->sectors);
		break;
	case BLKIF_OP_FLUSH_DISKCACHE:
	case BLKIF_OP_WRITE_BARRIER:
		STAT_ADD(q, f_req, 1);
		if (s->sectors) { /* a flush carrying data writes it first */
			STAT_ADD(q, wr_req, 1);
			STAT_ADD(q, wr_sect, s->sectors);
		}
		break;
	default:
		break;
	}
}

/* Decodes, validates and starts one request that was copied into slot_copy. */
static void handle_request(struct bb_queue *q, const uint8_t *slot_copy)
{
	struct bb_slot *s = q->free_list;
	q->free_list = s->next_free;
	q->in_use++;
	s->tmp_map = NULL;
	s->barrier = false;
	s->flush_after = false;
	blkback_request_decode(q->dev->abi, slot_copy, &s->req);
	unsigned np = blkback_request_indirect_pages(&s->req, q->dev->lim.max_indirect_segs);
	if (np) {
		struct xenif_copy_seg cs[BLKBACK_INDIRECT_PAGES_MAX];
		for (unsigned i = 0; i < np; i++)
			cs[i] = (struct xenif_copy_seg){ .gref = s->req.indirect_grefs[i], .offset = 0, .len = 4096,
							 .local = s->ipages + (size_t)i * 4096, .to_guest = false };
		if (xenif_gnt_copy(q->gnt, q->dev->fe_domid, cs, np)) {
			finish(s, BLKIF_RSP_ERROR);
			return;
		}
		blkback_request_load_indirect(&s->req, s->ipages, np);
	}
	int v = blkback_request_validate(&s->req, &q->dev->lim, &s->sectors);
	if (v != BLKIF_RSP_OKAY) {
		finish(s, (int16_t)v);
		return;
	}
	s->data_op = blkback_request_data_op(&s->req);
	uint16_t nseg = blkback_request_segments(&s->req);
	count_request(q, s);
	if (s->data_op == BLKIF_OP_FLUSH_DISKCACHE || s->data_op == BLKIF_OP_WRITE_BARRIER) {
		s->flush_after = nseg > 0;
		if (nseg > 0) s->data_op = BLKIF_OP_WRITE;
	}
	if (s->req.operation == BLKIF_OP_WRITE_BARRIER) {
		/* Drain: everything before completes first, nothing after starts until it is done. */
		s->barrier = true;
		q->ordered = true;
		if (q->in_use > 1) {
			q->parked_barrier = s;
			return;
		}
	}
	submit(s);
}

/* Consumes requests while the pool has room.  Returns -EPROTO when the ring is corrupt. */
static int process_ring(struct bb_queue *q)
{
	uint8_t copy[128];
	for (;;) {
		uint32_t rp = __atomic_load_n(ring_field(q, SR_REQ_PROD), __ATOMIC_ACQUIRE);
		if (!blkback_ring_prod_sane(rp, q->rsp_prod_pvt, q->nslots)) {
			log_warn("blkback %s: frontend producer index %u is %u ahead of responses %u (ring of %u): ring corrupt",
				 q->dev->be, rp, rp - q->rsp_prod_pvt, q->rsp_prod_pvt, q->nslots);
			return -EPROTO;
		}
		/* Bounded: at most one ring's worth per pass (the sanity check above). */
		while (q->req_cons != rp && q->free_list && !q->ordered) {
			const uint8_t *src = q->ring + BLKBACK_SRING_HEADER_BYTES + (size_t)(q->req_cons % q->nslots) * q->entry;
			memcpy(copy, src, q->entry); /* RING_COPY_REQUEST: the only read of this slot */
			__atomic_signal_fence(__ATOMIC_SEQ_CST);
			q->req_cons++;
			handle_request(q, copy);
		}
		if (q->req_cons != rp) { /* pool full or ordered: completions bring us back */
			if (!q->free_list) STAT_ADD(q, oo_req, 1);
			return 0;
		}
		__atomic_store_n(ring_field(q, SR_REQ_EVENT), q->req_cons + 1, __ATOMIC_RELAXED);
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
		if (__atomic_load_n(ring_field(q, SR_REQ_PROD), __ATOMIC_ACQUIRE) == q->req_cons) return 0;
	}
}

static void *queue_thread(void *arg)
{
	struct bb_queue *q = arg;
	uint64_t one = 1;
	/* Requests may already be waiting (a reconnect after a restart). */
	if (process_ring(q) < 0) q->dead = true;
	push_responses(q);
	while (!q->dead) {
		struct pollfd p[3] = { { xenif_evt_fd(q->evt), POLLIN, 0 },
				       { cow_queue_event_fd(q->cq), POLLIN, 0 },
				       { q->stop_fd, POLLIN, 0 } };
		if (poll(p, 3, -1) < 0 && errno != EINTR) break;
		if (p[2].revents) break;
		while (xenif_evt_pending(q->evt) >= 0) {}
		cow_queue_poll(q->cq, 0);
		if (q->parked_barrier && q->in_use == 1) {
			struct bb_slot *s = q->parked_barrier;
			q->parked_barrier = NULL;
			submit(s);
			cow_queue_poll(q->cq, 0);
		}
		if (process_ring(q) < 0) q->dead = true;
		push_responses(q);
	}
	if (q->dead) (void)!write(q->dev->attn_fd, &one, sizeof(one));
	return NULL;
}

/* ------------------------------------------------------------------ connect / disconnect --- */

static void queue_teardown(struct bb_queue *q)
{
	if (q->thread_started) {
		uint64_t one = 1;
		(void)!write(q->stop_fd, &one, sizeof(one));
		pthread_join(q->thread, NULL);
		q->thread_started = false;
	}
	if (q->cq) {
		cow_queue_destroy(q->cq); /* runs outstanding callbacks: they write into the ring */
		q->cq = NULL;
	}
	if (q->parked_barrier) {
		slot_free(q, q->parked_barrier);
		q->parked_barrier = NULL;
	}
	if (q->ring && q->notify_pending) push_responses(q);
	if (q->pg) {
		unsigned tbl = q->pg_cap * 2;
		for (unsigned i = 0; i < tbl; i++)
			if (q->pg[i].used && q->pg[i].addr) xenif_gnt_unmap(q->gnt, q->pg[i].addr, 1);
		free(q->pg);
		q->pg = NULL;
	}
	if (q->ring) {
		xenif_gnt_unmap(q->gnt, q->ring, q->ring_pages);
		q->ring = NULL;
	}
	if (q->evt) {
		if (q->local_port) xenif_evt_unbind(q->evt, q->local_port);
		xenif_evt_close(q->evt);
		q->evt = NULL;
	}
	if (q->gnt) {
		xenif_gnt_close(q->gnt);
		q->gnt = NULL;
	}
	if (q->bounce) munmap(q->bounce, q->bounce_bytes);
	q->bounce = NULL;
	free(q->slots);
	q->slots = NULL;
	if (q->stop_fd >= 0) close(q->stop_fd);
	q->stop_fd = -1;
	q->local_port = 0;
}

/* The device's counters: totals of past connections plus the live queues'. */
static void stats_sum(struct bb_dev *d, struct bb_stats *out)
{
	*out = d->st_total;
	for (unsigned i = 0; i < d->nqueues; i++) {
#define BB_STAT_SUM(n) out->n += __atomic_load_n(&d->queues[i].st.n, __ATOMIC_RELAXED);
		BB_STATS(BB_STAT_SUM)
#undef BB_STAT_SUM
	}
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Writes the counters that changed since the last time under <backend>/statistics/.  Only while
 * the backend directory is ours to write (never after the toolstack or a vanished frontend
 * removed it: that would recreate it). */
static void stats_publish(struct bb_dev *d)
{
	struct bb_stats cur;
	stats_sum(d, &cur);
	bool first = d->st_published_ms == 0;
#define BB_STAT_PUT(n) \
	if (first || cur.n != d->st_published.n) be_write(d, "statistics/" #n, "%" PRIu64, cur.n);
	BB_STATS(BB_STAT_PUT)
#undef BB_STAT_PUT
	d->st_published = cur;
	d->st_published_ms = now_ms();
}

static void stats_log(struct bb_dev *d, const char *why)
{
	struct bb_stats c;
	stats_sum(d, &c);
	char line[640];
	size_t off = 0;
#define BB_STAT_FMT(n) \
	if (off < sizeof(line)) off += (size_t)snprintf(line + off, sizeof(line) - off, " " #n "=%" PRIu64, c.n);
	BB_STATS(BB_STAT_FMT)
#undef BB_STAT_FMT
	log_info("blkback %s: %s; statistics:%s", d->be, why, line);
}

/* Tears down every ring; the queues' counters are folded into the device's totals. */
static void disconnect(struct bb_dev *d)
{
	bool was = d->connected;
	for (unsigned i = 0; i < d->nqueues; i++) {
		struct bb_queue *q = &d->queues[i];
		queue_teardown(q);
#define BB_STAT_FOLD(n) d->st_total.n += q->st.n;
		BB_STATS(BB_STAT_FOLD)
#undef BB_STAT_FOLD
		memset(&q->st, 0, sizeof(q->st));
	}
	d->nqueues = 0;
	d->connected = false;
	if (was) stats_log(d, "disconnected");
}

/* Reads one ring's references and event channel from dir, maps and binds. */
static int queue_setup(struct bb_dev *d, struct bb_queue *q, const char *dir, unsigned order)
{
	char key[32];
	uint64_t v;
	q->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (q->stop_fd < 0) return -errno;
	q->ring_pages = 1u << order;
	for (unsigned i = 0; i < q->ring_pages; i++) {
		if (order == 0) snprintf(key, sizeof(key), "ring-ref");
		else snprintf(key, sizeof(key), "ring-ref%u", i);
		if (xs_read_u(d, dir, key, UINT32_MAX, &v)) {
			fatal(d, "reading ring references");
			return -EINVAL;
		}
		q->ring_refs[i] = (uint32_t)v;
	}
	if (xs_read_u(d, dir, "event-channel", UINT32_MAX, &v)) {
		fatal(d, "reading event-channel");
		return -EINVAL;
	}
	q->remote_port = (uint32_t)v;
	int r = xenif_gnt_open(d->x, &q->gnt);
	if (r) return r;
	void *ring;
	r = xenif_gnt_map(q->gnt, d->fe_domid, q->ring_refs, q->ring_pages, true, &ring);
	if (r) {
		fatal(d, "mapping ring");
		return r;
	}
	q->ring = ring;
	q->entry = blkback_ring_entry_size(d->abi);
	q->nslots = blkback_ring_slots(d->abi, (size_t)q->ring_pages * 4096);
	/* Resume where the ring stands (0 on a fresh ring; after a backend restart, past every
	 * response the frontend has seen). */
	q->rsp_prod_pvt = q->req_cons = __atomic_load_n(ring_field(q, SR_RSP_PROD), __ATOMIC_ACQUIRE);
	r = xenif_evt_open(d->x, &q->evt);
	if (!r) r = xenif_evt_bind(q->evt, d->fe_domid, q->remote_port, &q->local_port);
	if (r) {
		fatal(d, "binding event channel");
		return r;
	}
	/* The pool. */
	unsigned segs = d->lim.max_indirect_segs > BLKIF_MAX_SEGMENTS_PER_REQUEST ? d->lim.max_indirect_segs
										   : BLKIF_MAX_SEGMENTS_PER_REQUEST;
	unsigned ipages = DIV_ROUND_UP(segs, BLKBACK_SEGS_PER_INDIRECT_PAGE);
	q->nslots_pool = q->nslots < BLKBACK_INFLIGHT_PER_QUEUE ? q->nslots : BLKBACK_INFLIGHT_PER_QUEUE;
	q->slots = calloc(q->nslots_pool, sizeof(*q->slots));
	size_t per = (size_t)(d->opts.grant_map ? 0 : segs) * 4096 + (size_t)ipages * 4096;
	q->bounce_bytes = per * q->nslots_pool;
	q->bounce = mmap(NULL, q->bounce_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (!q->slots || q->bounce == MAP_FAILED) {
		q->bounce = NULL;
		return -ENOMEM;
	}
	q->free_list = NULL;
	q->in_use = 0;
	for (unsigned i = 0; i < q->nslots_pool; i++) {
		struct bb_slot *s = &q->slots[i];
		s->q = q;
		s->ipages = q->bounce + per * i;
		s->buf = s->ipages + (size_t)ipages * 4096;
		s->next_free = q->free_list;
		q->free_list = s;
	}
	if (d->opts.grant_map && d->persistent) {
		q->pg_cap = BLKBACK_PERSISTENT_GRANTS_MAX / d->nqueues;
		q->pg = calloc((size_t)q->pg_cap * 2, sizeof(*q->pg));
		if (!q->pg) return -ENOMEM;
	}
	r = cow_queue_create(d->cow, q->nslots_pool * 2, &q->cq);
	if (r) return r;
	q->ordered = false;
	q->dead = false;
	if (pthread_create(&q->thread, NULL, queue_thread, q)) return -EAGAIN;
	q->thread_started = true;
	return 0;
}

static int connect_rings(struct bb_dev *d)
{
	uint64_t nq = 1, order = 0, v;
	int r = xs_read_u(d, d->fe, "multi-queue-num-queues", d->opts.max_queues, &nq);
	if (r == -ENOENT) nq = 1;
	else if (r || nq == 0) {
		fatal(d, "bad multi-queue-num-queues");
		return -EINVAL;
	}
	r = xs_read_u(d, d->fe, "ring-page-order", d->opts.max_ring_page_order, &order);
	if (r == -ENOENT) order = 0;
	else if (r) {
		fatal(d, "bad ring-page-order");
		return -EINVAL;
	}
	char *proto = NULL;
	r = xs_read_key(d, d->fe, "protocol", &proto);
	if (r && r != -ENOENT) return r;
	r = blkback_abi_parse(proto, &d->abi);
	free(proto);
	if (r) {
		fatal(d, "unknown protocol");
		return -EINVAL;
	}
	d->persistent = false;
	if (d->opts.persistent && xs_read_u(d, d->fe, "feature-persistent", 1, &v) == 0) d->persistent = v == 1;
	d->nqueues = (unsigned)nq;
	for (unsigned i = 0; i < d->nqueues; i++) {
		struct bb_queue *q = &d->queues[i];
		memset(q, 0, sizeof(*q));
		q->dev = d;
		q->index = i;
		q->stop_fd = -1;
	}
	for (unsigned i = 0; i < d->nqueues; i++) {
		char dir[PATH_LEN + 32];
		if (nq == 1) snprintf(dir, sizeof(dir), "%s", d->fe);
		else snprintf(dir, sizeof(dir), "%s/queue-%u", d->fe, i);
		r = queue_setup(d, &d->queues[i], dir, (unsigned)order);
		if (r) {
			disconnect(d);
			return r;
		}
	}
	d->connected = true;
	log_info("blkback %s: connected %u queue(s), ring order %u, %s, %s grants%s", d->be, d->nqueues, (unsigned)order,
		 blkback_abi_name(d->abi), d->opts.grant_map ? "mapped" : "copied", d->persistent ? ", persistent" : "");
	return 0;
}

static void publish_features(struct bb_dev *d)
{
	be_write(d, "feature-flush-cache", "1");
	be_write(d, "feature-barrier", "1");
	if (d->lim.discard) {
		be_write(d, "feature-discard", "1");
		be_write(d, "discard-granularity", "4096");
		be_write(d, "discard-alignment", "0");
		be_write(d, "discard-secure", "0");
	}
	be_write(d, "feature-persistent", "%d", d->opts.persistent ? 1 : 0);
	be_write(d, "feature-max-indirect-segments", "%u", d->opts.max_indirect_segs);
	be_write(d, "multi-queue-max-queues", "%u", d->opts.max_queues);
	be_write(d, "max-ring-page-order", "%u", d->opts.max_ring_page_order);
}

static int do_connect(struct bb_dev *d)
{
	disconnect(d); /* idempotent; as Linux, before anything the frontend could leak */
	int r = connect_rings(d);
	if (r) return r;
	be_write(d, "sectors", "%" PRIu64, d->lim.size_sectors);
	be_write(d, "info", "%u", d->readonly ? VDISK_READONLY : 0);
	be_write(d, "sector-size", "512");
	be_write(d, "physical-sector-size", "4096");
	switch_state(d, XenbusStateConnected);
	return 0;
}

/* ------------------------------------------------------------------ state machine ---------- */

enum step { STEP_CONTINUE, STEP_EXIT };

static enum step step(struct bb_dev *d)
{
	char *v = NULL;
	uint64_t u;
	/* The toolstack removed us. */
	int r = xs_read_key(d, d->be, "state", &v);
	if (r == -ENOENT) {
		disconnect(d);
		return STEP_EXIT;
	}
	if (!r && d->state != XenbusStateClosing && !strcmp(v, "5")) {
		/* The toolstack asks us to close (xl detach / destroy). */
		d->state = XenbusStateClosing;
		disconnect(d);
		stats_publish(d);
	}
	free(v);
	bool online = !(xs_read_u(d, d->be, "online", 1, &u) == 0 && u == 0);
	for (unsigned i = 0; i < d->nqueues; i++) {
		if (!__atomic_load_n(&d->queues[i].dead, __ATOMIC_ACQUIRE)) continue;
		fatal(d, "frontend corrupted its ring: disconnected");
		disconnect(d);
		switch_state(d, XenbusStateClosing);
		break;
	}
	r = xs_read_u(d, d->fe, "state", 255, &u);
	if (r == -ENOENT || r == -EACCES) {
		if (!d->fe_gone) log_info("blkback %s: frontend %s is gone", d->be, d->fe);
		d->fe_gone = true;
		disconnect(d);
		if (!online) {
			/* A toolstack is removing the device (libxl: online=0, state=5): it waits for
			 * Closed and then removes the directory itself; we leave when it does. */
			stats_publish(d);
			switch_state(d, XenbusStateClosed);
			return STEP_CONTINUE;
		}
		/* Nobody else will (xl destroy of a guest attached with xen-attach): tidy up. */
		xenif_xs_rm_tidy(d->xs, d->be);
		return STEP_EXIT;
	}
	if (r) u = 255;
	switch (u) {
	case XenbusStateInitialising:
		if (d->state == XenbusStateClosed && online) {
			log_info("blkback %s: frontend reconnecting", d->be);
			publish_features(d);
			be_write(d, "error", "%s", "");
			switch_state(d, XenbusStateInitWait);
		} else if (d->state == XenbusStateConnected) {
			/* The guest restarted without closing. */
			disconnect(d);
			switch_state(d, XenbusStateInitWait);
		}
		break;
	case XenbusStateInitWait:
		break;
	case XenbusStateInitialised:
	case XenbusStateConnected:
		if (d->state == XenbusStateConnected && d->connected) break;
		if (d->state != XenbusStateInitWait || !online) break;
		if (do_connect(d)) {
			disconnect(d);
			switch_state(d, XenbusStateClosing);
		}
		break;
	case XenbusStateClosing:
		disconnect(d);
		stats_publish(d);
		switch_state(d, XenbusStateClosing);
		break;
	case XenbusStateClosed:
	case XenbusStateUnknown:
		disconnect(d);
		stats_publish(d);
		switch_state(d, XenbusStateClosed);
		break;
	default:
		if (d->state != XenbusStateClosing && d->state != XenbusStateClosed) {
			fatal(d, "frontend wrote an invalid state");
			disconnect(d);
			switch_state(d, XenbusStateClosing);
		}
		break;
	}
	return STEP_CONTINUE;
}

static int open_disk(struct bb_dev *d, const char *store_root)
{
	char *params = NULL, *mode = NULL;
	int r = xs_read_key(d, d->be, "params", &params);
	if (r) return log_error(r, "blkback %s: read params: %s", d->be, strerror(-r));
	if (xs_read_key(d, d->be, "mode", &mode) == 0 && strcmp(mode, "w") != 0) d->readonly = true;
	free(mode);
	r = layer_store_open(store_root, 0, &d->store);
	if (!r) {
		struct container_record rec;
		if (layer_store_container_get(d->store, params, &rec) != 0) r = cow_device_open_image(d->store, params, &d->cow);
		else if (d->readonly) r = cow_device_open_container_readonly(d->store, params, &d->cow);
		else r = cow_device_open_container(d->store, params, &d->cow);
	}
	if (r) {
		be_write(d, "error", "cannot open %s", params);
		free(params);
		return r;
	}
	free(params);
	if (cow_device_is_readonly(d->cow)) d->readonly = true;
	d->lim.size_sectors = cow_device_size_bytes(d->cow) / 512;
	d->lim.readonly = d->readonly;
	d->lim.flush = true;
	d->lim.discard = d->opts.discard && !d->readonly;
	d->lim.max_indirect_segs = (uint16_t)d->opts.max_indirect_segs;
	return 0;
}

static void options_clamp(struct blkback_options *o)
{
	if (!o->type) o->type = BLKBACK_TYPE_DEFAULT;
	if (o->max_queues < 1) o->max_queues = 1;
	if (o->max_queues > BLKBACK_QUEUES_MAX) o->max_queues = BLKBACK_QUEUES_MAX;
	if (o->max_ring_page_order > BLKBACK_RING_PAGE_ORDER_MAX) o->max_ring_page_order = BLKBACK_RING_PAGE_ORDER_MAX;
	if (o->max_indirect_segs > BLKBACK_INDIRECT_SEGS_MAX) o->max_indirect_segs = BLKBACK_INDIRECT_SEGS_MAX;
}

void blkback_options_default(struct blkback_options *o)
{
	*o = (struct blkback_options){ .type = BLKBACK_TYPE_DEFAULT,
				       .max_queues = BLKBACK_QUEUES_MAX,
				       .max_ring_page_order = BLKBACK_RING_PAGE_ORDER_MAX,
				       .max_indirect_segs = BLKBACK_INDIRECT_SEGS_DEFAULT,
				       .persistent = true,
				       .grant_map = false,
				       .discard = true };
}

int blkback_device_serve(const char *store_root, const char *backend_path, const struct blkback_options *opts)
{
	struct bb_dev *d = calloc(1, sizeof(*d));
	if (!d) return -ENOMEM;
	d->opts = *opts;
	options_clamp(&d->opts);
	d->attn_fd = -1;
	int r = -ENAMETOOLONG;
	if (strlen(backend_path) >= sizeof(d->be)) goto out;
	strcpy(d->be, backend_path);
	if ((r = xenif_open(&d->x)) || (r = xenif_xs_open(d->x, &d->xs))) goto out;
	d->attn_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (d->attn_fd < 0) {
		r = -errno;
		goto out;
	}
	char *fe = NULL;
	uint64_t fe_id;
	r = xs_read_key(d, d->be, "frontend", &fe);
	if (!r && strlen(fe) >= sizeof(d->fe)) r = -ENAMETOOLONG;
	if (!r) strcpy(d->fe, fe);
	free(fe);
	if (!r) r = xs_read_u(d, d->be, "frontend-id", 0x7FEF, &fe_id);
	if (r) {
		r = log_error(r, "blkback %s: read frontend: %s", d->be, strerror(-r));
		goto out;
	}
	d->fe_domid = (uint16_t)fe_id;
	if ((r = open_disk(d, store_root))) {
		switch_state(d, XenbusStateClosed);
		goto out;
	}
	publish_features(d);
	stats_publish(d);
	d->state = -1;
	switch_state(d, XenbusStateInitWait);
	char w[PATH_LEN + 16];
	snprintf(w, sizeof(w), "%s/state", d->fe);
	if ((r = xenif_xs_watch(d->xs, w, "fe"))) goto out;
	snprintf(w, sizeof(w), "%s/state", d->be);
	if ((r = xenif_xs_watch(d->xs, w, "be"))) goto out;
	snprintf(w, sizeof(w), "%s/online", d->be);
	if ((r = xenif_xs_watch(d->xs, w, "be"))) goto out;
	for (;;) {
		bool any = false;
		char *p, *t;
		while ((r = xenif_xs_read_watch(d->xs, &p, &t)) == 0) {
			free(p);
			free(t);
			any = true;
		}
		if (r != -EAGAIN) {
			log_error(r, "blkback %s: xenstore connection lost: %s", d->be, strerror(-r));
			break;
		}
		uint64_t cnt;
		if (read(d->attn_fd, &cnt, sizeof(cnt)) == sizeof(cnt)) any = true;
		int wait_ms = -1;
		if (d->connected) {
			uint64_t since = now_ms() - d->st_published_ms;
			if (since >= BLKBACK_STATS_INTERVAL_MS) {
				stats_publish(d);
				since = 0;
			}
			wait_ms = (int)(BLKBACK_STATS_INTERVAL_MS - since);
		}
		if (any) {
			if (step(d) == STEP_EXIT) {
				r = 0;
				break;
			}
			continue; /* step's own calls may have queued events in memory: drain before polling */
		}
		struct pollfd pfd[2] = { { xenif_xs_fd(d->xs), POLLIN, 0 }, { d->attn_fd, POLLIN, 0 } };
		if (poll(pfd, 2, wait_ms) < 0 && errno != EINTR) {
			r = -errno;
			break;
		}
	}
out:
	disconnect(d);
	if (d->cow) cow_device_close(d->cow);
	if (d->store) layer_store_close(d->store);
	if (d->attn_fd >= 0) close(d->attn_fd);
	xenif_xs_close(d->xs);
	if (d->x) xenif_close(d->x);
	free(d);
	return r;
}
