/* xen-cowbench: the workload of `blkfront-sim bench`, run on the cow/ engine directly (no ring,
 * no grants, no event channels), so bench/xen-sim-bench.sh can print the ring path's cost as a
 * ratio measured in the same run.
 *
 *   xen-cowbench STORE_ROOT CONTAINER|IMAGE [--qd N] [--bs BYTES] [--write-pct P] [--seconds S]
 *                [--first-writes]
 * prints "iops=... p50_us=... p99_us=... ops=... errors=..." like blkfront-sim. */
#include "common/log.h"
#include "cow/cow.h"
#include "layer-store/layer_store.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define QD_MAX 256

struct req {
	struct cow_request c;
	struct iovec iov;
	uint64_t t0;
	bool busy;
};

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static uint64_t *lat;
static uint64_t nlat, cap, done, errors;

static void complete(struct cow_request *c, int result)
{
	struct req *r = c->opaque;
	if (result) errors++;
	if (nlat < cap) lat[nlat++] = now_ns() - r->t0;
	done++;
	r->busy = false;
}

static int cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: xen-cowbench STORE DISK [--qd N] [--bs B] [--write-pct P] [--seconds S] [--first-writes]\n");
		return 2;
	}
	unsigned qd = 1, bs = 4096, wpct = 0;
	double seconds = 2;
	bool first = false;
	for (int i = 3; i < argc; i++) {
		if (!strcmp(argv[i], "--qd") && i + 1 < argc) qd = (unsigned)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--bs") && i + 1 < argc) bs = (unsigned)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--write-pct") && i + 1 < argc) wpct = (unsigned)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--seconds") && i + 1 < argc) seconds = atof(argv[++i]);
		else if (!strcmp(argv[i], "--first-writes")) first = true;
		else return 2;
	}
	if (qd < 1 || qd > QD_MAX || bs < 512 || bs % 512) return 2;
	struct layer_store *store;
	struct cow_device *dev;
	if (layer_store_open(argv[1], 0, &store)) return 1;
	struct container_record crec;
	int r = layer_store_container_get(store, argv[2], &crec) == 0 ? cow_device_open_container(store, argv[2], &dev)
									 : cow_device_open_image(store, argv[2], &dev);
	if (r) return 1;
	struct cow_queue *q;
	if (cow_queue_create(dev, qd, &q)) return 1;
	struct req *reqs = calloc(qd, sizeof(*reqs));
	uint8_t *bufs = aligned_alloc(4096, (size_t)qd * bs);
	memset(bufs, 0x5A, (size_t)qd * bs);
	cap = 4000000;
	lat = malloc(cap * sizeof(uint64_t));
	uint64_t blocks = cow_device_size_bytes(dev) / bs, next = 0, rng = 0x9E3779B97F4A7C15ull;
	uint64_t t0 = now_ns(), end = t0 + (uint64_t)(seconds * 1e9);
	while (now_ns() < end) {
		for (unsigned i = 0; i < qd; i++) {
			struct req *rq = &reqs[i];
			if (rq->busy) continue;
			rng ^= rng >> 12;
			rng ^= rng << 25;
			rng ^= rng >> 27;
			uint64_t x = rng * 2685821657736338717ull;
			bool w = x % 100 < wpct;
			uint64_t blk = first ? next++ % blocks : (x >> 8) % blocks;
			rq->iov = (struct iovec){ bufs + (size_t)i * bs, bs };
			rq->c = (struct cow_request){ .op = w ? COW_OP_WRITE : COW_OP_READ, .offset_bytes = blk * bs,
						      .length_bytes = bs, .iov = &rq->iov, .iov_count = 1,
						      .complete = complete, .opaque = rq };
			rq->t0 = now_ns();
			rq->busy = true;
			if (cow_queue_submit(q, &rq->c)) {
				rq->busy = false;
				errors++;
			}
		}
		cow_queue_poll(q, 1);
	}
	while (cow_queue_in_flight(q)) cow_queue_poll(q, 1);
	double el = (double)(now_ns() - t0) / 1e9;
	qsort(lat, nlat, sizeof(uint64_t), cmp);
	printf("iops=%.0f p50_us=%.1f p99_us=%.1f ops=%" PRIu64 " errors=%" PRIu64 "\n", done / el,
	       nlat ? lat[nlat / 2] / 1000.0 : 0, nlat ? lat[nlat * 99 / 100] / 1000.0 : 0, done, errors);
	cow_queue_destroy(q);
	cow_device_close(dev);
	layer_store_close(store);
	return errors ? 1 : 0;
}
