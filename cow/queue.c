/* Asynchronous request queues.
 *
 * A queue owns one io_uring, a preallocated pool of `depth` request contexts, a chunk cache and
 * an eventfd (registered with the ring, and written for completions made without the ring).
 *
 * Life of a request: submit validates it, takes a context (-EAGAIN when none is free) and asks
 * for the device-wide range lock (cow_range_try_acquire).  If an earlier conflicting request of
 * any queue holds or awaits the range, the context is parked; the releasing thread grants it and
 * moves it to this queue's ready list (mutex) and signals the eventfd, and poll starts it.  A
 * started request either
 *   - is one readv/writev on upper.data when it touches only the upper (reads of upper blocks,
 *     overwrites, whole-block writes: cow_upper_direct): writes up to
 *     COW_QUEUE_INLINE_WRITE_BYTES are a pwritev at start, bigger ones and reads go to the ring;
 *     the result finishes it (upper_io_done: state change for writes, then FUA's flush), or, for
 *     a FLUSH, one journal record and one sync of upper.map made at start
 *     (cow_flush_journal_payload), or when it must checkpoint, the fsync of upper.data on the
 *     ring, or
 *   - runs synchronously at start (reads through the chain, first partial writes with their
 *     one-block copy-up, discard, write-zeroes) with the same code as the synchronous API.
 * Then the range is released (granting parked requests) and the completion queued; callbacks run
 * only in cow_queue_poll.  When vfs_is_posix() is false (crash tests) nothing uses the ring: every
 * request runs synchronously through common/vfs.h.
 * Reads first try preadv2(RWF_NOWAIT): a page-cache hit completes at once, without a thread hop;
 * misses go to the ring.  A chunk that a lower read covers whole, in one iovec, goes straight
 * into the request's buffer: a raw one is read there and its checksum verified there, a compressed
 * one is decoded there from a stored-chunk buffer; other chunks are decoded into the chunk cache
 * and copied out.  (ext4 has no non-blocking buffered write: a small inline write may
 * block the caller's thread on dirty-page throttling, which only delays that queue's requests;
 * big writes stay on the ring.)  OCIBLK_COW_RING_ONLY=1 sends all reads and writes through the
 * ring (tests cover both paths).  Completions made at submit signal the eventfd once per poll
 * round (self_signalled), not once per request.
 * Invariants: in_flight == contexts not free; a request's effect (data and state) is complete
 * before its range is released and before its completion is queued; nothing is allocated per
 * request. */
#include <errno.h>
#include <liburing.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common/log.h"
#include "common/vfs.h"
#include "cow/cow_internal.h"

/* Whole-block writes of upper.data up to this size are done with pwritev on the caller's thread:
 * a buffered write to ext4 is a memcpy into the page cache, cheaper than the io-wq thread hop it
 * takes through the ring (ext4 has no non-blocking buffered write, so the ring punts it).  Larger
 * writes go through the ring, which overlaps their copy with the caller's next request. */
#define COW_QUEUE_INLINE_WRITE_BYTES (64u << 10)

enum ctx_stage { STAGE_IDLE, STAGE_PARKED, STAGE_IO, STAGE_FSYNC, STAGE_LOWER, STAGE_LOWER_IO, STAGE_DONE };

struct cow_ctx {
	struct cow_queue *q;
	struct cow_request *req;
	struct cow_range_lock lk;
	enum ctx_stage stage;
	bool locked;
	int result;
	struct cow_flush_ticket flush; /* a checkpoint waiting for its sync of upper.data */
	/* lower read in progress: next device byte to produce, chunk being read into buffer buf
	 * (-1: a raw chunk read straight into the request's buffer at direct) */
	uint64_t pos;
	int buf;
	uint8_t *direct;
	uint32_t io_layer;
	uint64_t io_extent;
	struct cow_ctx *next; /* free list, ready list, buffer-wait list or done list */
};

struct cow_queue {
	struct cow_device *dev;
	unsigned depth;
	unsigned in_flight;
	bool use_ring;
	bool try_inline;  /* reads try preadv2(RWF_NOWAIT) before the ring */
	struct io_uring ring;
	bool ring_ok;
	struct cow_ctx *ctxs;
	struct cow_ctx *free_list;
	struct cow_ctx *done_head, *done_tail;    /* completions waiting for poll */
	pthread_mutex_t ready_mu;
	struct cow_ctx *ready_head, *ready_tail;  /* granted by another thread, to start */
	int event_fd;
	bool self_signalled;  /* this thread wrote event_fd since poll_once last read it */
	struct cow_chunk_cache cache;
	/* buffers for stored chunks read through the ring */
	uint8_t *pool;
	size_t pool_buf_bytes;
	unsigned pool_n;
	int *pool_free;
	unsigned pool_free_n;
	struct cow_ctx *bufwait_head, *bufwait_tail;
};

static void signal_event(struct cow_queue *q)
{
	uint64_t one = 1;
	ssize_t k = write(q->event_fd, &one, sizeof one);
	(void)k; /* EAGAIN only when the counter is saturated: it is readable then anyway */
}

/* On the queue's thread: completions wait for poll; one wakeup per poll round is enough. */
static void signal_done(struct cow_queue *q)
{
	if (q->done_head && !q->self_signalled) {
		q->self_signalled = true;
		signal_event(q);
	}
}

int cow_queue_create(struct cow_device *dev, unsigned depth, struct cow_queue **out)
{
	if (depth == 0 || depth > COW_QUEUE_DEPTH_MAX)
		return log_error(-EINVAL, "create queue: depth %u not in 1..%u", depth, COW_QUEUE_DEPTH_MAX);
	struct cow_queue *q = calloc(1, sizeof *q);
	if (!q) return log_error(-ENOMEM, "create queue: out of memory");
	q->dev = dev;
	q->depth = depth;
	q->event_fd = -1;
	pthread_mutex_init(&q->ready_mu, NULL);
	q->ctxs = calloc(depth, sizeof *q->ctxs);
	int r = -ENOMEM;
	if (!q->ctxs) goto fail;
	for (unsigned i = 0; i < depth; i++) {
		q->ctxs[i].q = q;
		q->ctxs[i].next = q->free_list;
		q->free_list = &q->ctxs[i];
	}
	if ((r = cow_chunk_cache_init(&q->cache))) goto fail;
	q->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (q->event_fd < 0) {
		r = log_error(-errno, "create queue: eventfd: %s", strerror(errno));
		goto fail;
	}
	/* the ring is only used over real files */
	q->use_ring = vfs_is_posix();
	/* OCIBLK_COW_RING_ONLY=1 sends every read and write through the ring (tests cover that path) */
	q->try_inline = !getenv("OCIBLK_COW_RING_ONLY");
	if (q->use_ring && dev->max_stored_bytes) {
		q->pool_n = depth < COW_QUEUE_CHUNK_BUFFERS ? depth : COW_QUEUE_CHUNK_BUFFERS;
		q->pool_buf_bytes = dev->max_stored_bytes;
		q->pool = malloc(q->pool_n * q->pool_buf_bytes);
		q->pool_free = calloc(q->pool_n, sizeof *q->pool_free);
		r = -ENOMEM;
		if (!q->pool || !q->pool_free) goto fail;
		for (unsigned i = 0; i < q->pool_n; i++) q->pool_free[q->pool_free_n++] = (int)i;
	}
	if (q->use_ring) {
		r = io_uring_queue_init(depth < 8 ? 8 : depth, &q->ring, 0);
		if (r < 0) {
			r = log_error(r, "create queue: io_uring: %s", strerror(-r));
			goto fail;
		}
		q->ring_ok = true;
		r = io_uring_register_eventfd(&q->ring, q->event_fd);
		if (r < 0) {
			r = log_error(r, "create queue: register eventfd: %s", strerror(-r));
			goto fail;
		}
	}
	*out = q;
	return 0;
fail:
	if (q->ring_ok) io_uring_queue_exit(&q->ring);
	if (q->event_fd >= 0) close(q->event_fd);
	free(q->ctxs);
	free(q->pool);
	free(q->pool_free);
	cow_chunk_cache_free(&q->cache);
	pthread_mutex_destroy(&q->ready_mu);
	free(q);
	return r == -ENOMEM ? log_error(r, "create queue: out of memory") : r;
}

void cow_queue_destroy(struct cow_queue *q)
{
	if (!q) return;
	while (q->in_flight)
		if (cow_queue_poll(q, 1) < 0) break;
	if (q->ring_ok) io_uring_queue_exit(&q->ring);
	if (q->event_fd >= 0) close(q->event_fd);
	cow_chunk_cache_free(&q->cache);
	pthread_mutex_destroy(&q->ready_mu);
	free(q->ctxs);
	free(q->pool);
	free(q->pool_free);
	free(q);
}

static void push_done(struct cow_ctx *c, int result)
{
	struct cow_queue *q = c->q;
	c->result = result;
	c->stage = STAGE_DONE;
	c->next = NULL;
	if (q->done_tail) q->done_tail->next = c;
	else q->done_head = c;
	q->done_tail = c;
}

static void release_range(struct cow_ctx *c)
{
	if (c->locked) {
		cow_range_release(c->q->dev, &c->lk);
		c->locked = false;
	}
}

/* Called under dev->mu by whichever thread released the range that blocked c. */
static void wake_parked(struct cow_range_lock *lk)
{
	struct cow_ctx *c = (struct cow_ctx *)((char *)lk - offsetof(struct cow_ctx, lk));
	struct cow_queue *q = c->q;
	pthread_mutex_lock(&q->ready_mu);
	c->next = NULL;
	if (q->ready_tail) q->ready_tail->next = c;
	else q->ready_head = c;
	q->ready_tail = c;
	pthread_mutex_unlock(&q->ready_mu);
	signal_event(q);
}

static struct io_uring_sqe *get_sqe(struct cow_queue *q)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&q->ring);
	if (!sqe) {
		io_uring_submit(&q->ring);
		sqe = io_uring_get_sqe(&q->ring);
	}
	return sqe;
}

/* A flush (or FUA): usually one journal record with the written blocks and a sync of upper.map,
 * done here; else a checkpoint, whose sync of upper.data goes through the ring. */
static void start_fsync(struct cow_ctx *c)
{
	struct cow_queue *q = c->q;
	bool done;
	int r = cow_flush_journal_payload(q->dev, &done);
	if (r || done) {
		push_done(c, r);
		return;
	}
	c->flush = cow_flush_capture(q->dev);
	struct io_uring_sqe *sqe = get_sqe(q);
	if (!sqe) {
		/* cannot happen with one SQE per context, but never lose a flush */
		r = vfs_fdatasync(q->dev->data_fd);
		push_done(c, cow_flush_journal(q->dev, &c->flush, r));
		return;
	}
	io_uring_prep_fsync(sqe, q->dev->data_fd, IORING_FSYNC_DATASYNC);
	io_uring_sqe_set_data(sqe, c);
	c->stage = STAGE_FSYNC;
	io_uring_submit(&q->ring);
}

/* Copies len bytes (NULL: zeros) to byte `at` of the request's iovecs. */
static void iov_put(const struct cow_request *req, uint64_t at, const uint8_t *src, uint64_t len)
{
	for (unsigned i = 0; i < req->iov_count && len; i++) {
		uint64_t l = req->iov[i].iov_len;
		if (at >= l) {
			at -= l;
			continue;
		}
		uint64_t k = l - at < len ? l - at : len;
		uint8_t *d = (uint8_t *)req->iov[i].iov_base + at;
		if (src) {
			memcpy(d, src, k);
			src += k;
		} else {
			memset(d, 0, k);
		}
		len -= k;
		at = 0;
	}
}

/* The request's buffer bytes [at, at + len) when they lie in one iovec, else NULL. */
static uint8_t *iov_span(const struct cow_request *req, uint64_t at, uint64_t len)
{
	for (unsigned i = 0; i < req->iov_count; i++) {
		uint64_t l = req->iov[i].iov_len;
		if (at < l) return at + len <= l ? (uint8_t *)req->iov[i].iov_base + at : NULL;
		at -= l;
	}
	return NULL;
}

static ssize_t pread_nowait(int fd, void *buf, size_t len, uint64_t off)
{
	struct iovec v = { buf, len };
	return preadv2(fd, &v, 1, (off_t)off, RWF_NOWAIT);
}

static void lower_fail(struct cow_ctx *c, int r)
{
	release_range(c);
	push_done(c, r);
}

/* Produces the read from the chain from c->pos on: zeros and cached chunks are copied at once;
 * the first chunk not cached is read through the ring (continued by lower_io_done). */
static void lower_step(struct cow_ctx *c)
{
	struct cow_queue *q = c->q;
	struct cow_device *dev = q->dev;
	const struct cow_request *req = c->req;
	uint64_t end = req->offset_bytes + req->length_bytes;
	c->stage = STAGE_LOWER;
	while (c->pos < end) {
		uint64_t k = cow_index_find(&dev->index, c->pos / COW_BLOCK_SIZE);
		const struct cow_index_entry *e = k < dev->index.count ? &dev->index.entries[k] : NULL;
		uint64_t es = e ? e->block_index * COW_BLOCK_SIZE : end;
		if (es > c->pos) {
			uint64_t seg_end = es < end ? es : end;
			iov_put(req, c->pos - req->offset_bytes, NULL, seg_end - c->pos);
			c->pos = seg_end;
			continue;
		}
		uint64_t ee = (e->block_index + e->block_count) * COW_BLOCK_SIZE;
		uint64_t seg_end = ee < end ? ee : end;
		const uint8_t *chunk = cow_chunk_lookup(dev, &q->cache, e->layer, e->extent);
		if (!chunk) {
			int r = cow_chunk_check_extent(dev, e->layer, e->extent);
			if (r) return lower_fail(c, r);
			uint64_t n;
			const struct layer_extent *x = &layer_get_extents(dev->layers[e->layer], &n)[e->extent];
			/* the request's buffer for the whole chunk, when the request covers it: the chunk is
			 * then decoded there, not through the cache */
			uint8_t *dst = NULL;
			if (c->pos == es && x->block_index == e->block_index && x->block_count == e->block_count && seg_end == ee)
				dst = iov_span(req, c->pos - req->offset_bytes, (uint64_t)x->block_count * COW_BLOCK_SIZE);
			if (dst && !x->compressed && x->stored_bytes == (uint64_t)x->block_count * COW_BLOCK_SIZE) {
				/* a raw chunk the request covers whole: read and verify it in the request's
				 * buffer, no copy through the cache */
				int fd = layer_get_fd(dev->layers[e->layer]);
				ssize_t got = q->try_inline ? pread_nowait(fd, dst, x->stored_bytes, x->offset_bytes) : -1;
				if (got >= 0 && (uint64_t)got == x->stored_bytes) {
					r = layer_decode_extent(dev->layers[e->layer], e->extent, dst, dst);
					if (r) return lower_fail(c, r);
					c->pos = seg_end;
					continue;
				}
				struct io_uring_sqe *sqe = get_sqe(q);
				if (sqe) {
					c->buf = -1;
					c->direct = dst;
					c->io_layer = e->layer;
					c->io_extent = e->extent;
					io_uring_prep_read(sqe, fd, dst, x->stored_bytes, x->offset_bytes);
					io_uring_sqe_set_data(sqe, c);
					c->stage = STAGE_LOWER_IO;
					io_uring_submit(&q->ring);
					return;
				}
			}
			if (x->stored_bytes > q->pool_buf_bytes || !q->pool_n) {
				r = cow_chunk_get(dev, &q->cache, e->layer, e->extent, &chunk);
				if (r) return lower_fail(c, r);
			} else {
				if (!q->pool_free_n) {
					/* wait for a buffer: resumed by lower_io_done of another request */
					c->next = NULL;
					if (q->bufwait_tail) q->bufwait_tail->next = c;
					else q->bufwait_head = c;
					q->bufwait_tail = c;
					return;
				}
				uint8_t *sb = q->pool + (size_t)q->pool_free[q->pool_free_n - 1] * q->pool_buf_bytes;
				ssize_t got = q->try_inline ? pread_nowait(layer_get_fd(dev->layers[e->layer]), sb,
									   x->stored_bytes, x->offset_bytes)
							    : -1;
				if (got >= 0 && (uint64_t)got == x->stored_bytes && dst) {
					r = layer_decode_extent(dev->layers[e->layer], e->extent, sb, dst);
					if (r) return lower_fail(c, r);
					c->pos = seg_end;
					continue;
				}
				if (got >= 0 && (uint64_t)got == x->stored_bytes) {
					/* in the page cache: decode now */
					unsigned slot = cow_chunk_claim(&q->cache);
					r = cow_chunk_reserve(&q->cache, slot, (size_t)x->block_count * COW_BLOCK_SIZE);
					if (!r) r = layer_decode_extent(dev->layers[e->layer], e->extent, sb, q->cache.data[slot]);
					if (r) return lower_fail(c, r);
					chunk = cow_chunk_publish(dev, &q->cache, slot, e->layer, e->extent);
					goto copy;
				}
				struct io_uring_sqe *sqe = get_sqe(q);
				if (!sqe) {
					r = cow_chunk_get(dev, &q->cache, e->layer, e->extent, &chunk);
					if (r) return lower_fail(c, r);
				} else {
					c->buf = q->pool_free[--q->pool_free_n];
					c->direct = dst;
					c->io_layer = e->layer;
					c->io_extent = e->extent;
					io_uring_prep_read(sqe, layer_get_fd(dev->layers[e->layer]),
							   q->pool + (size_t)c->buf * q->pool_buf_bytes, x->stored_bytes,
							   x->offset_bytes);
					io_uring_sqe_set_data(sqe, c);
					c->stage = STAGE_LOWER_IO;
					io_uring_submit(&q->ring);
					return;
				}
			}
		}
	copy:;
		uint64_t n;
		const struct layer_extent *x = &layer_get_extents(dev->layers[e->layer], &n)[e->extent];
		iov_put(req, c->pos - req->offset_bytes, chunk + (c->pos - x->block_index * COW_BLOCK_SIZE), seg_end - c->pos);
		c->pos = seg_end;
	}
	release_range(c);
	push_done(c, 0);
}

/* The stored chunk arrived: verify + decode into the cache, free the buffer, continue. */
static void lower_io_done(struct cow_ctx *c, int res)
{
	struct cow_queue *q = c->q;
	struct cow_device *dev = q->dev;
	uint64_t n;
	const struct layer_extent *x = &layer_get_extents(dev->layers[c->io_layer], &n)[c->io_extent];
	int r;
	if (res < 0)
		r = log_error(res, "read layer %s extent %llu: %s", dev->digests[c->io_layer],
			      (unsigned long long)c->io_extent, strerror(-res));
	else if ((uint64_t)res != x->stored_bytes)
		r = log_error(-EIO, "read layer %s extent %llu: short file", dev->digests[c->io_layer],
			      (unsigned long long)c->io_extent);
	else if (c->direct) {
		/* a raw chunk read straight into the request (verified in place), or a stored chunk
		 * decoded into it; then go past the chunk */
		const uint8_t *stored = c->buf < 0 ? c->direct : q->pool + (size_t)c->buf * q->pool_buf_bytes;
		r = layer_decode_extent(dev->layers[c->io_layer], c->io_extent, stored, c->direct);
		if (!r) c->pos = (x->block_index + x->block_count) * COW_BLOCK_SIZE;
	} else {
		unsigned slot = cow_chunk_claim(&q->cache);
		r = cow_chunk_reserve(&q->cache, slot, (size_t)x->block_count * COW_BLOCK_SIZE);
		if (!r)
			r = layer_decode_extent(dev->layers[c->io_layer], c->io_extent,
						q->pool + (size_t)c->buf * q->pool_buf_bytes, q->cache.data[slot]);
		if (!r) cow_chunk_publish(dev, &q->cache, slot, c->io_layer, c->io_extent);
	}
	if (c->buf >= 0) q->pool_free[q->pool_free_n++] = c->buf;
	c->buf = -1;
	c->direct = NULL;
	if (r) lower_fail(c, r);
	else lower_step(c);
	/* a freed buffer lets a waiting request go on */
	while (q->bufwait_head && q->pool_free_n) {
		struct cow_ctx *w = q->bufwait_head;
		q->bufwait_head = w->next;
		if (!q->bufwait_head) q->bufwait_tail = NULL;
		lower_step(w);
	}
}

static void upper_io_done(struct cow_ctx *c, int res);

/* Runs a request whose range lock is held (or that needs none). */
static void start(struct cow_ctx *c)
{
	struct cow_queue *q = c->q;
	struct cow_device *dev = q->dev;
	struct cow_request *req = c->req;
	int r;

	if (req->op == COW_OP_FLUSH && q->use_ring && dev->data_fd >= 0) {
		start_fsync(c);
		return;
	}
	if (req->op == COW_OP_READ && q->use_ring && c->locked && req->length_bytes && cow_read_all_lower(dev, req)) {
		c->pos = req->offset_bytes;
		lower_step(c);
		return;
	}
	if (q->use_ring && c->locked && cow_upper_direct(dev, req)) {
		if (req->op == COW_OP_READ && q->try_inline) {
			/* page-cache hits complete here without a trip through the ring */
			ssize_t k = preadv2(dev->data_fd, req->iov, (int)req->iov_count, (off_t)req->offset_bytes, RWF_NOWAIT);
			if (k >= 0 && (uint64_t)k == req->length_bytes) {
				release_range(c);
				push_done(c, 0);
				return;
			}
		}
		if (req->op == COW_OP_WRITE && q->try_inline && req->length_bytes <= COW_QUEUE_INLINE_WRITE_BYTES) {
			/* a small buffered write costs less done here than the io-wq hop it takes on the ring */
			ssize_t k = pwritev(dev->data_fd, req->iov, (int)req->iov_count, (off_t)req->offset_bytes);
			upper_io_done(c, k < 0 ? -errno : (int)k);
			return;
		}
		struct io_uring_sqe *sqe = get_sqe(q);
		if (sqe) {
			if (req->op == COW_OP_READ)
				io_uring_prep_readv(sqe, dev->data_fd, req->iov, req->iov_count, req->offset_bytes);
			else
				io_uring_prep_writev(sqe, dev->data_fd, req->iov, req->iov_count, req->offset_bytes);
			io_uring_sqe_set_data(sqe, c);
			c->stage = STAGE_IO;
			io_uring_submit(&q->ring);
			return;
		}
	}
	/* synchronous path */
	if (req->op == COW_OP_FLUSH || req->length_bytes == 0) {
		
		r = (req->op == COW_OP_FLUSH || (req->flags & COW_FUA)) ? cow_flush(dev) : 0;
		push_done(c, r);
		return;
	}
	r = cow_exec_locked(dev, &q->cache, req);
	release_range(c);
	if (!r && cow_req_modifies(req) && (req->flags & COW_FUA)) {
		if (q->use_ring) {
			start_fsync(c);
			return;
		}
		r = cow_flush(dev);
	}
	push_done(c, r);
}

/* A CQE for c. */
static void on_cqe(struct cow_ctx *c, int res)
{
	struct cow_queue *q = c->q;
	struct cow_device *dev = q->dev;
	if (c->stage == STAGE_LOWER_IO) {
		lower_io_done(c, res);
		return;
	}
	if (c->stage == STAGE_FSYNC) {
		int r = res < 0 ? log_error(res, "flush upper %s: %s", dev->data_path, strerror(-res)) : 0;
		push_done(c, cow_flush_journal(dev, &c->flush, r));
		return;
	}
	upper_io_done(c, res);
}

/* The readv/writev of upper.data of c (STAGE_IO) returned res. */
static void upper_io_done(struct cow_ctx *c, int res)
{
	struct cow_queue *q = c->q;
	struct cow_device *dev = q->dev;
	struct cow_request *req = c->req;
	int r = 0;
	if (res < 0) {
		r = log_error(res, "%s upper %s at %llu: %s", req->op == COW_OP_READ ? "read" : "write", dev->data_path,
			      (unsigned long long)req->offset_bytes, strerror(-res));
	} else if ((uint64_t)res != req->length_bytes) {
		/* short transfer: redo the whole request synchronously (idempotent) */
		r = cow_exec_locked(dev, &q->cache, req);
	} else if (req->op == COW_OP_WRITE) {
		uint64_t first, end;
		cow_req_blocks(req, &first, &end);
		r = cow_write_done(dev, first, end);
	}
	release_range(c);
	if (!r && req->op == COW_OP_WRITE && (req->flags & COW_FUA)) {
		start_fsync(c);
		return;
	}
	push_done(c, r);
}

int cow_queue_submit(struct cow_queue *q, struct cow_request *req)
{
	int r = cow_validate(q->dev, req);
	if (r) return r;
	if (cow_req_modifies(req) && cow_device_is_readonly(q->dev)) return -EROFS;
	if (!q->free_list) return -EAGAIN;
	struct cow_ctx *c = q->free_list;
	q->free_list = c->next;
	c->next = NULL;
	c->req = req;
	c->result = 0;
	c->locked = false;
	req->internal = c;
	q->in_flight++;
	cow_count_op(q->dev, req->op);
	if (req->op == COW_OP_FLUSH || req->length_bytes == 0) {
		start(c);
	} else {
		uint64_t first, end;
		cow_req_blocks(req, &first, &end);
		c->stage = STAGE_PARKED;
		c->locked = true; /* held once granted; release_range undoes both */
		if (cow_range_try_acquire(q->dev, &c->lk, first, end, cow_req_modifies(req), wake_parked)) start(c);
	}
	signal_done(q);
	return 0;
}

/* One pass: CQEs, granted requests, then callbacks.  Returns callbacks run. */
static int poll_once(struct cow_queue *q)
{
	uint64_t v;
	ssize_t k = read(q->event_fd, &v, sizeof v);
	(void)k;
	q->self_signalled = false;
	if (q->ring_ok) {
		struct io_uring_cqe *cqe;
		while (io_uring_peek_cqe(&q->ring, &cqe) == 0) {
			struct cow_ctx *c = io_uring_cqe_get_data(cqe);
			int res = cqe->res;
			io_uring_cqe_seen(&q->ring, cqe);
			on_cqe(c, res);
		}
	}
	for (;;) {
		pthread_mutex_lock(&q->ready_mu);
		struct cow_ctx *c = q->ready_head;
		if (c) {
			q->ready_head = c->next;
			if (!q->ready_head) q->ready_tail = NULL;
		}
		pthread_mutex_unlock(&q->ready_mu);
		if (!c) break;
		start(c);
	}
	int ran = 0;
	struct cow_ctx *list = q->done_head;
	q->done_head = q->done_tail = NULL;
	while (list) {
		struct cow_ctx *c = list;
		list = c->next;
		struct cow_request *req = c->req;
		int result = c->result;
		c->stage = STAGE_IDLE;
		c->req = NULL;
		c->next = q->free_list;
		q->free_list = c;
		q->in_flight--;
		req->internal = NULL;
		ran++;
		/* the callback may submit again: the context is already free */
		req->complete(req, result);
	}
	return ran;
}

int cow_queue_poll(struct cow_queue *q, unsigned min_complete)
{
	int ran = 0;
	for (;;) {
		int n = poll_once(q);
		ran += n;
		if ((unsigned)ran >= min_complete || q->in_flight == 0) break;
		if (q->done_head) continue;
		struct pollfd pfd = { .fd = q->event_fd, .events = POLLIN };
		int p = poll(&pfd, 1, -1);
		if (p < 0 && errno != EINTR) return log_error(-errno, "poll queue: %s", strerror(errno));
	}
	signal_done(q); /* callbacks submitted more */
	return ran;
}

int cow_queue_event_fd(const struct cow_queue *q) { return q->event_fd; }
unsigned cow_queue_in_flight(const struct cow_queue *q) { return q->in_flight; }
