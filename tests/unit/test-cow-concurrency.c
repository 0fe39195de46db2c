/* Concurrency test of cow queues: two threads, each with its own queue kept full (32 in flight),
 * issue overlapping writes, reads, flushes and FUA writes over a small hot area whose blocks live
 * in a lower layer (so first writes copy up while other requests on the same blocks are in
 * flight).  Every sector a write stores is self-describing (write id + sector number).
 * Afterwards:
 *   - every sector of the device and of every read holds either its initial data or an intact
 *     sector of a write that covered it (no torn or misplaced sector);
 *   - the results equal some serial order: a precedence graph (for each sector, every other
 *     write covering it precedes the write that is visible there; a write seen by a read precedes
 *     it, and precedes a write seen by the same read on a sector both cover) has no cycle.
 * The seed is printed; OCIBLK_SEED replays the request mix (not the thread interleaving). */
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include "common/log.h"
#include "tests/unit/test-cow-util.h"

#define DEV_BLOCKS 256u
#define HOT_SECTORS (64u * 8u)
#define REQS_PER_THREAD 2500u
#define DEPTH 32u
#define MAX_LEN_SECTORS 32u

enum { K_WRITE, K_READ, K_FLUSH };

struct op {
	int kind;
	unsigned flags;
	uint32_t id;          /* write id (1-based) or read node number */
	uint64_t sector, count;
	uint8_t *data;        /* write payload / read result */
	int result;
	int done;
	struct iovec iov[2];
	struct cow_request req;
};

static struct cow_device *dev;
static uint8_t *initial;         /* initial contents of the hot area */
static atomic_uint next_write_id = 1;
static struct op *all_ops[2];
static unsigned n_ops[2];
static uint64_t seeds[2];

static void sector_fill(uint8_t *p, uint32_t id, uint32_t sector)
{
	memcpy(p, &id, 4);
	memcpy(p + 4, &sector, 4);
	for (unsigned i = 8; i < 512; i++) p[i] = (uint8_t)(id * 31u + sector * 17u + i);
}

/* The write id a sector holds: 0 = initial data, -1 = garbage. */
static long sector_decode(const uint8_t *p, uint32_t sector)
{
	if (!memcmp(p, initial + (uint64_t)sector * 512, 512)) return 0;
	uint32_t id, s;
	memcpy(&id, p, 4);
	memcpy(&s, p + 4, 4);
	if (s != sector || id == 0) return -1;
	uint8_t want[512];
	sector_fill(want, id, sector);
	return memcmp(p, want, 512) ? -1 : (long)id;
}

static void on_done(struct cow_request *req, int result)
{
	struct op *o = req->opaque;
	o->result = result;
	o->done++;
}

static void *worker(void *arg)
{
	int t = (int)(intptr_t)arg;
	uint64_t rng = seeds[t];
	struct cow_queue *q;
	if (cow_queue_create(dev, DEPTH, &q)) return (void *)1;
	struct op *ops = calloc(REQS_PER_THREAD, sizeof *ops);
	all_ops[t] = ops;
	unsigned submitted = 0, completed = 0;
	while (completed < REQS_PER_THREAD) {
		while (submitted < REQS_PER_THREAD && cow_queue_in_flight(q) < DEPTH) {
			struct op *o = &ops[submitted];
			uint64_t r = tap_rand(&rng) % 100;
			o->kind = r < 60 ? K_WRITE : r < 97 ? K_READ : K_FLUSH;
			o->count = 1 + tap_rand(&rng) % MAX_LEN_SECTORS;
			o->sector = tap_rand(&rng) % (HOT_SECTORS - o->count + 1);
			if (tap_rand(&rng) % 3 == 0) o->sector &= ~7ull; /* some block-aligned */
			o->req.complete = on_done;
			o->req.opaque = o;
			if (o->kind == K_FLUSH) {
				o->req.op = COW_OP_FLUSH;
			} else {
				o->data = malloc(o->count * 512);
				o->req.offset_bytes = o->sector * 512;
				o->req.length_bytes = o->count * 512;
				/* two iovecs split at an arbitrary byte */
				uint64_t cut = tap_rand(&rng) % (o->count * 512 + 1);
				o->iov[0] = (struct iovec){ o->data, cut };
				o->iov[1] = (struct iovec){ o->data + cut, o->count * 512 - cut };
				o->req.iov = o->iov;
				o->req.iov_count = 2;
				if (o->kind == K_WRITE) {
					o->id = atomic_fetch_add(&next_write_id, 1);
					for (uint64_t s = 0; s < o->count; s++)
						sector_fill(o->data + s * 512, o->id, (uint32_t)(o->sector + s));
					o->req.op = COW_OP_WRITE;
					o->req.flags = tap_rand(&rng) % 20 == 0 ? COW_FUA : 0;
				} else {
					o->req.op = COW_OP_READ;
				}
			}
			int rc = cow_queue_submit(q, &o->req);
			if (rc) {
				tap_diag("thread %d: submit failed %d", t, rc);
				return (void *)1;
			}
			submitted++;
		}
		int n;
		if (t == 0) {
			n = cow_queue_poll(q, 1);
		} else {
			/* the epoll-loop style: wait on the eventfd, then reap without blocking */
			struct pollfd pfd = { .fd = cow_queue_event_fd(q), .events = POLLIN };
			poll(&pfd, 1, 1000);
			n = cow_queue_poll(q, 0);
		}
		if (n < 0) return (void *)1;
		completed += (unsigned)n;
	}
	n_ops[t] = submitted;
	cow_queue_destroy(q);
	return NULL;
}

/* ---- precedence graph ---- */
struct graph {
	uint32_t nodes;
	uint32_t *head, *next_e, *to;
	uint64_t n_edges, cap;
};

static void add_edge(struct graph *g, uint32_t a, uint32_t b)
{
	if (a == b) return;
	if (g->n_edges == g->cap) {
		g->cap = g->cap ? g->cap * 2 : 1 << 16;
		g->next_e = realloc(g->next_e, g->cap * sizeof *g->next_e);
		g->to = realloc(g->to, g->cap * sizeof *g->to);
	}
	g->to[g->n_edges] = b;
	g->next_e[g->n_edges] = g->head[a];
	g->head[a] = (uint32_t)g->n_edges + 1;
	g->n_edges++;
}

/* Kahn: 1 when acyclic. */
static int acyclic(struct graph *g)
{
	uint32_t *indeg = calloc(g->nodes, sizeof *indeg), *stack = malloc(g->nodes * sizeof *stack);
	for (uint64_t e = 0; e < g->n_edges; e++) indeg[g->to[e]]++;
	uint32_t sp = 0, seen = 0;
	for (uint32_t v = 0; v < g->nodes; v++)
		if (!indeg[v]) stack[sp++] = v;
	while (sp) {
		uint32_t v = stack[--sp];
		seen++;
		for (uint32_t e = g->head[v]; e; e = g->next_e[e - 1])
			if (!--indeg[g->to[e - 1]]) stack[sp++] = g->to[e - 1];
	}
	free(indeg);
	free(stack);
	return seen == g->nodes;
}

/* Many reads in flight through the chain at once: more than the queue has chunk buffers, so
 * some wait for a buffer; every read must return the chain's data. */
static void test_lower_reads(struct layer_store *s, uint64_t *rng, int zstd)
{
	enum { BLOCKS = 1024, RD_DEPTH = 64 };
	struct layer_writer_options o = { .virtual_size_bytes = BLOCKS * BS, .chunk_blocks = 4, .zstd_level = zstd };
	struct layer_writer *w;
	uint8_t *model = malloc((size_t)BLOCKS * BS);
	char chain[1][SHA256_DIGEST_STRLEN];
	int r = layer_writer_create(s, &o, &w);
	for (uint64_t b = 0; b < BLOCKS; b++) {
		pattern_block(model + b * BS, 77, b);
		/* pattern blocks are incompressible: half zeros makes zstd chunks really compressed */
		if (zstd) memset(model + b * BS + BS / 2, 0, BS / 2);
	}
	memset(model + 100 * BS, 0, 50 * BS); /* a gap */
	if (!r) r = layer_writer_add_data(w, 0, model, 100);
	if (!r) r = layer_writer_add_data(w, 150, model + 150 * BS, BLOCKS - 150);
	TAP_IS(r ? r : layer_writer_commit(w, chain[0]), 0, "lower reads: layer of 4-block chunks (%s)", zstd ? "zstd" : "raw");
	{
		char path[4096];
		struct layer *l = NULL;
		uint64_t n = 0, compressed = 0;
		if (!layer_store_layer_path(s, chain[0], path, sizeof path) && !layer_open_path(path, NULL, false, &l)) {
			const struct layer_extent *x = layer_get_extents(l, &n);
			for (uint64_t i = 0; i < n; i++) compressed += x[i].compressed;
			layer_close(l);
		}
		TAP_OK(zstd ? compressed > 0 : compressed == 0, "lower reads: %llu of %llu extents compressed",
		       (unsigned long long)compressed, (unsigned long long)n);
	}
	const char *name = zstd ? "many" : "manyraw";
	int put = test_image_put(s, name, BLOCKS * BS, chain, 1);
	TAP_IS(put, 0, "lower reads: image");
	struct cow_device *img;
	struct cow_queue *q;
	TAP_IS(cow_device_open_image(s, name, &img), 0, "lower reads: open image");
	TAP_IS(cow_queue_create(img, RD_DEPTH, &q), 0, "lower reads: queue of depth %d", RD_DEPTH);
	static struct op ops[RD_DEPTH];
	static uint8_t bufs[RD_DEPTH][65536];
	unsigned bad = 0, total = 0;
	for (int round = 0; round < 30; round++) {
		for (int i = 0; i < RD_DEPTH; i++) {
			struct op *x = &ops[i];
			memset(x, 0, sizeof *x);
			x->count = 1 + tap_rand(rng) % 128;
			x->sector = tap_rand(rng) % (BLOCKS * 8 - x->count + 1);
			x->iov[0] = (struct iovec){ bufs[i], x->count * 512 };
			x->req = (struct cow_request){ .op = COW_OP_READ, .offset_bytes = x->sector * 512,
						       .length_bytes = x->count * 512, .iov = x->iov, .iov_count = 1,
						       .complete = on_done, .opaque = x };
			if (cow_queue_submit(q, &x->req)) bad++;
		}
		while (cow_queue_in_flight(q))
			if (cow_queue_poll(q, 1) < 0) break;
		for (int i = 0; i < RD_DEPTH; i++, total++)
			if (ops[i].done != 1 || ops[i].result || memcmp(bufs[i], model + ops[i].sector * 512, ops[i].count * 512))
				bad++;
	}
	TAP_IS(bad, 0, "%u reads, %d in flight at once, returned the chain's %s data (%s)", total, RD_DEPTH,
	       zstd ? "zstd" : "raw (whole chunks read straight into the request)",
	       getenv("OCIBLK_COW_RING_ONLY") ? "all through io_uring" : "page-cache hits and small writes inline");
	cow_queue_destroy(q);
	cow_device_close(img);
	free(model);
}

static void on_done_count(struct cow_request *req, int result)
{
	struct op *o = req->opaque;
	o->result = result;
	o->done++;
}

/* One queued read; its result. */
static int queue_read(struct cow_queue *q, uint64_t off, void *buf, uint64_t len)
{
	struct op o = { 0 };
	o.iov[0] = (struct iovec){ buf, len };
	o.req = (struct cow_request){ .op = COW_OP_READ, .offset_bytes = off, .length_bytes = len, .iov = o.iov,
				      .iov_count = 1, .complete = on_done_count, .opaque = &o };
	int r = cow_queue_submit(q, &o.req);
	while (!r && !o.done)
		if ((r = cow_queue_poll(q, 1)) > 0) r = 0;
	return r ? r : o.result;
}

/* A raw chunk read straight into the request's buffer is still verified: a corrupt byte in the
 * layer file fails the read that covers the chunk (EIO), and reads of other chunks still work. */
static void test_direct_corrupt(struct layer_store *s, const char *name)
{
	enum { BLOCKS = 64 };
	struct layer_writer_options o = { .virtual_size_bytes = BLOCKS * BS, .chunk_blocks = 4 };
	struct layer_writer *w;
	static uint8_t model[BLOCKS * BS], buf[BLOCKS * BS];
	char chain[1][SHA256_DIGEST_STRLEN], path[4096];
	for (uint64_t b = 0; b < BLOCKS; b++) pattern_block(model + b * BS, 91, b);
	int r = layer_writer_create(s, &o, &w);
	if (!r) r = layer_writer_add_data(w, 0, model, BLOCKS);
	if (!r) r = layer_writer_commit(w, chain[0]);
	if (!r) r = test_image_put(s, name, BLOCKS * BS, chain, 1);
	if (!r) r = layer_store_layer_path(s, chain[0], path, sizeof path);
	/* corrupt one byte inside the chunk of blocks 8..11 */
	struct layer *l = NULL;
	if (!r) r = layer_open_path(path, NULL, false, &l);
	if (!r) {
		uint64_t n;
		const struct layer_extent *x = layer_get_extents(l, &n);
		uint64_t at = 0;
		for (uint64_t i = 0; i < n; i++)
			if (x[i].block_index == 8) at = x[i].offset_bytes + 100;
		layer_close(l);
		int fd = open(path, O_WRONLY);
		uint8_t bad = 0x5a ^ model[8 * BS + 100];
		if (fd < 0 || !at || pwrite(fd, &bad, 1, (off_t)at) != 1) r = -EIO;
		if (fd >= 0) close(fd);
	}
	TAP_IS(r, 0, "direct reads: raw layer with one corrupt byte in chunk 8..11");
	struct cow_device *img = NULL;
	struct cow_queue *q = NULL;
	if (!r) r = cow_device_open_image(s, name, &img);
	if (!r) r = cow_queue_create(img, 4, &q);
	TAP_IS(r, 0, "direct reads: open");
	if (r) return;
	TAP_IS(queue_read(q, 0, buf, 16 * BS), -EIO, "a read covering the corrupt chunk whole fails with EIO");
	TAP_IS(queue_read(q, 8 * BS, buf, 4 * BS), -EIO, "so does a read of exactly that chunk");
	memset(buf, 0, sizeof buf);
	TAP_IS(queue_read(q, 16 * BS, buf, 48 * BS), 0, "a read of the other chunks works");
	TAP_OK(!memcmp(buf, model + 16 * BS, 48 * BS), "and returns their data");
	cow_queue_destroy(q);
	cow_device_close(img);
}

int main(void)
{
	uint64_t rng = tap_seed();
	seeds[0] = tap_rand(&rng) | 1;
	seeds[1] = tap_rand(&rng) | 1;
	struct layer_store *s = test_store_open("store");
	uint8_t *model = calloc(DEV_BLOCKS, BS);
	char chain[1][SHA256_DIGEST_STRLEN];
	struct spec_extent ext[] = { { 0, 48, 0, 5 }, { 56, 100, 0, 5 } };
	TAP_IS(test_layer_write(s, NULL, DEV_BLOCKS, ext, 2, model, 0, chain[0]), 0, "base layer under the hot area");
	TAP_IS(test_image_put(s, "conc", DEV_BLOCKS * BS, chain, 1), 0, "image");
	TAP_IS(layer_store_container_create(s, "conc", "cc"), 0, "container");
	TAP_IS(cow_device_open_container(s, "cc", &dev), 0, "open");
	initial = model;
	test_lower_reads(s, &rng, 1);
	test_lower_reads(s, &rng, 0);
	test_direct_corrupt(s, "corrupt-inline");
	/* once more with every read through the ring: chunk buffers run out, requests wait for them */
	setenv("OCIBLK_COW_RING_ONLY", "1", 1);
	test_lower_reads(s, &rng, 1);
	test_lower_reads(s, &rng, 0);
	test_direct_corrupt(s, "corrupt-ring");

	pthread_t th[2];
	void *ret[2];
	for (int t = 0; t < 2; t++) pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t);
	for (int t = 0; t < 2; t++) pthread_join(th[t], &ret[t]);
	TAP_OK(!ret[0] && !ret[1], "both threads ran %u requests each", REQS_PER_THREAD);

	uint32_t writes = atomic_load(&next_write_id) - 1;
	unsigned failures = 0, reads = 0, copyups_seen;
	struct op **by_id = calloc(writes + 1, sizeof *by_id);
	for (int t = 0; t < 2; t++)
		for (unsigned i = 0; i < n_ops[t]; i++) {
			struct op *o = &all_ops[t][i];
			if (o->done != 1 || o->result) {
				if (failures++ < 5) tap_diag("request failed or completed %d times: %d", o->done, o->result);
			}
			if (o->kind == K_WRITE) by_id[o->id] = o;
			if (o->kind == K_READ) o->id = writes + 1 + reads++;
		}
	TAP_IS(failures, 0, "every request completed once, successfully");

	struct graph g = { .nodes = writes + 1 + reads };
	g.head = calloc(g.nodes, sizeof *g.head);
	/* final state */
	uint8_t *fin = malloc(HOT_SECTORS * 512);
	TAP_IS(cow_device_read(dev, 0, fin, HOT_SECTORS * 512), 0, "read the final hot area");
	/* coverage lists per sector */
	uint32_t **cov = calloc(HOT_SECTORS, sizeof *cov);
	uint32_t *ncov = calloc(HOT_SECTORS, sizeof *ncov), *capcov = calloc(HOT_SECTORS, sizeof *capcov);
	for (uint32_t w = 1; w <= writes; w++)
		for (uint64_t sct = by_id[w]->sector; sct < by_id[w]->sector + by_id[w]->count; sct++) {
			if (ncov[sct] == capcov[sct]) {
				capcov[sct] = capcov[sct] ? capcov[sct] * 2 : 16;
				cov[sct] = realloc(cov[sct], capcov[sct] * sizeof **cov);
			}
			cov[sct][ncov[sct]++] = w;
		}
	unsigned bad_final = 0;
	for (uint32_t sct = 0; sct < HOT_SECTORS; sct++) {
		long f = sector_decode(fin + (uint64_t)sct * 512, sct);
		int covers = 0;
		for (uint32_t k = 0; k < ncov[sct]; k++) covers |= (long)cov[sct][k] == f;
		if (f < 0 || (f > 0 && !covers) || (f == 0 && ncov[sct])) {
			if (bad_final++ < 5) tap_diag("final sector %u holds %ld (covered by %u writes)", sct, f, ncov[sct]);
			continue;
		}
		for (uint32_t k = 0; k < ncov[sct]; k++) add_edge(&g, cov[sct][k], (uint32_t)f);
	}
	TAP_IS(bad_final, 0, "every final sector is an intact sector of the last write covering it in some order");

	unsigned bad_reads = 0;
	long *seen = malloc(MAX_LEN_SECTORS * sizeof *seen);
	for (int t = 0; t < 2; t++)
		for (unsigned i = 0; i < n_ops[t]; i++) {
			struct op *o = &all_ops[t][i];
			if (o->kind != K_READ) continue;
			for (uint64_t k = 0; k < o->count; k++) {
				uint32_t sct = (uint32_t)(o->sector + k);
				long w = sector_decode(o->data + k * 512, sct);
				int covers = w == 0;
				for (uint32_t c = 0; c < ncov[sct] && !covers; c++) covers = (long)cov[sct][c] == w;
				if (w < 0 || !covers) {
					if (bad_reads++ < 5) tap_diag("read of sector %u returned %ld", sct, w);
					w = 0;
				}
				seen[k] = w;
				if (w > 0) add_edge(&g, (uint32_t)w, o->id);
			}
			/* a write seen by this read precedes the write seen on any sector it also covers */
			for (uint64_t k = 0; k < o->count; k++) {
				uint32_t sct = (uint32_t)(o->sector + k);
				for (uint64_t j = 0; j < o->count; j++) {
					long w = seen[j];
					if (w <= 0 || w == seen[k]) continue;
					const struct op *wo = by_id[w];
					if (sct < wo->sector || sct >= wo->sector + wo->count) continue;
					if (seen[k] == 0) {
						/* saw initial data on a sector that a write it saw elsewhere covers */
						if (bad_reads++ < 5) tap_diag("read saw write %ld on part of its range only", w);
					} else {
						add_edge(&g, (uint32_t)w, (uint32_t)seen[k]);
					}
				}
			}
		}
	TAP_IS(bad_reads, 0, "%u reads returned intact, consistent sectors", reads);
	TAP_OK(acyclic(&g), "writes and reads equal a serial order (%u writes, %u reads, %llu precedence edges)", writes,
	       reads, (unsigned long long)g.n_edges);

	struct cow_device_stats st;
	cow_device_get_stats(dev, &st);
	copyups_seen = (unsigned)st.copy_ups;
	TAP_OK(st.copy_ups <= 48 + 8, "copy-ups (%llu) at most one per lower block in the hot area", (unsigned long long)st.copy_ups);
	(void)copyups_seen;
	TAP_IS(cow_device_close(dev), 0, "close");
	TAP_IS(cow_device_open_container(s, "cc", &dev), 0, "reopen");
	uint8_t *again = malloc(HOT_SECTORS * 512);
	TAP_OK(cow_device_read(dev, 0, again, HOT_SECTORS * 512) == 0 && !memcmp(again, fin, HOT_SECTORS * 512),
	       "reopened device holds the final state");
	cow_device_close(dev);
	layer_store_close(s);
	for (int t = 0; t < 2; t++) {
		for (unsigned i = 0; i < REQS_PER_THREAD; i++) free(all_ops[t][i].data);
		free(all_ops[t]);
	}
	for (uint32_t sct = 0; sct < HOT_SECTORS; sct++) free(cov[sct]);
	free(cov);
	free(ncov);
	free(capcov);
	free(by_id);
	free(fin);
	free(again);
	free(seen);
	free(g.head);
	free(g.next_e);
	free(g.to);
	free(model);
	return tap_done();
}
