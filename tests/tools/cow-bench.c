/* cow-bench: the numbers behind `make bench` (bench/run.sh).  Builds a store in DIR with
 *   - image bench1:  one layer holding every block of an S-byte device (raw chunks, no zstd);
 *   - image bench64: 64 layers holding the same bytes, chunk c in layer c % 64, so both images
 *     have the same chunks and the same merged extents and differ only in depth;
 *   - a plain file with the same bytes;
 * then measures, at queue depth 1 with clock_gettime around each synchronous call:
 *   4 KiB writes: first write of a block that lives in a lower layer, first 512-byte write into one
 *   (a copy-up), overwrite of a block already in the upper, and pwrite into the plain file, each
 *   without and with a flush (cow_device_flush / fdatasync) after every write;
 *   4 KiB random reads through 1 and 64 layers and from the plain file (page cache warm for all);
 *   the merged index memory per GiB of device (cow_device_get_stats index_bytes);
 *   and, for the asynchronous API, random reads and upper overwrites through a cow_queue kept at
 *   32 requests in flight (throughput compared with the QD1 rows: 1e6 / mean QD1 latency).
 * It prints one table; every ratio compares numbers measured in this same run, and rows that are
 * compared run interleaved in rounds so that outside load hits both sides alike.  Not a test: it
 * asserts nothing about speed, it only fails when an operation fails. */
#include "common/log.h"
#include "cow/cow.h"
#include "layer-store/layer_store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BLK 4096u
#define CHUNK_BLOCKS 16u
#define DEEP_LAYERS 64u
#define QD 32u
#define ROUNDS 10u

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 2685821657736338717ull;
}

/* Deterministic contents of block b of the benchmark device (incompressible). */
static void fill_block(uint64_t b, unsigned char *p)
{
	uint64_t s = b * 0x9e3779b97f4a7c15ull + 1;
	for (unsigned i = 0; i < BLK; i += 8) {
		s ^= s >> 12;
		s ^= s << 25;
		s ^= s >> 27;
		uint64_t v = s * 2685821657736338717ull;
		memcpy(p + i, &v, 8);
	}
}

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

struct result {
	double p50, p99, mean;
};

static struct result summarize(double *lat, unsigned n)
{
	struct result r = { 0, 0, 0 };
	if (!n) return r;
	qsort(lat, n, sizeof *lat, cmp_double);
	for (unsigned i = 0; i < n; i++) r.mean += lat[i];
	r.mean /= n;
	r.p50 = lat[n / 2];
	r.p99 = lat[(unsigned)((n - 1) * 0.99)];
	return r;
}

#define DIE(...) do { fprintf(stderr, "cow-bench: " __VA_ARGS__); fputc('\n', stderr); exit(1); } while (0)

/* Layer k of a chain of `layers` over `blocks` blocks: chunk c goes into layer c % layers. */
static void write_layer(struct layer_store *st, uint64_t blocks, unsigned k, unsigned layers, const char *parent,
			char digest[SHA256_DIGEST_STRLEN])
{
	struct layer_writer_options o = {
		.virtual_size_bytes = blocks * BLK,
		.parent_digest = parent,
		.chunk_blocks = CHUNK_BLOCKS,
		.zstd_level = 0,
		.detect_zero_blocks = false,
	};
	struct layer_writer *w;
	static unsigned char buf[CHUNK_BLOCKS * BLK];
	int err = layer_writer_create(st, &o, &w);
	if (err) DIE("layer_writer_create: %s", strerror(-err));
	for (uint64_t c = k; c * CHUNK_BLOCKS < blocks; c += layers) {
		uint64_t first = c * CHUNK_BLOCKS, n = CHUNK_BLOCKS;
		if (first + n > blocks) n = blocks - first;
		for (uint64_t i = 0; i < n; i++) fill_block(first + i, buf + i * BLK);
		err = layer_writer_add_data(w, first, buf, n);
		if (err) DIE("layer_writer_add_data: %s", strerror(-err));
	}
	err = layer_writer_commit(w, digest);
	if (err) DIE("layer_writer_commit: %s", strerror(-err));
}

static void put_image(struct layer_store *st, const char *name, uint64_t size, unsigned count,
		      char (*digests)[SHA256_DIGEST_STRLEN])
{
	struct image_record rec;
	memset(&rec, 0, sizeof rec);
	snprintf(rec.name, sizeof rec.name, "%s", name);
	rec.size_bytes = size;
	rec.layer_count = count;
	for (unsigned i = 0; i < count; i++) memcpy(rec.layers[i], digests[i], SHA256_DIGEST_STRLEN);
	rec.created_unix = time(NULL);
	int err = layer_store_image_put(st, &rec);
	if (err) DIE("image_put %s: %s", name, strerror(-err));
}

enum wkind { W_COW, W_PLAIN };

/* n writes of len bytes at the start of blocks idx[0..n), optional flush after each. */
static struct result bench_writes(enum wkind kind, struct cow_device *dev, int fd, const uint64_t *idx, unsigned n,
				  unsigned len, bool flush, double *lat)
{
	static unsigned char buf[BLK] __attribute__((aligned(4096)));
	for (unsigned i = 0; i < n; i++) {
		uint64_t off = idx[i] * BLK;
		memset(buf, (int)(i & 0xff) | 1, sizeof buf);
		double t0 = now_us();
		if (kind == W_COW) {
			int err = cow_device_write(dev, off, buf, len, 0);
			if (!err && flush) err = cow_device_flush(dev);
			if (err) DIE("cow write at %llu: %s", (unsigned long long)off, strerror(-err));
		} else {
			if (pwrite(fd, buf, len, (off_t)off) != (ssize_t)len) DIE("pwrite: %s", strerror(errno));
			if (flush && fdatasync(fd) < 0) DIE("fdatasync: %s", strerror(errno));
		}
		lat[i] = now_us() - t0;
	}
	return summarize(lat, n);
}

static struct result bench_reads(struct cow_device *dev, int fd, uint64_t blocks, unsigned n, double *lat)
{
	static unsigned char buf[BLK] __attribute__((aligned(4096)));
	static unsigned char want[BLK];
	for (unsigned i = 0; i < n; i++) {
		uint64_t b = rnd() % blocks;
		double t0 = now_us();
		if (dev) {
			int err = cow_device_read(dev, b * BLK, buf, BLK);
			if (err) DIE("cow read at block %llu: %s", (unsigned long long)b, strerror(-err));
		} else if (pread(fd, buf, BLK, (off_t)(b * BLK)) != BLK) {
			DIE("pread: %s", strerror(errno));
		}
		lat[i] = now_us() - t0;
		if (i % 64 == 0) { /* spot-check that the bytes are right */
			fill_block(b, want);
			if (memcmp(buf, want, BLK)) DIE("wrong data read at block %llu", (unsigned long long)b);
		}
	}
	return summarize(lat, n);
}

/* Asynchronous requests through a cow_queue of the given depth, kept full: n requests of 4 KiB
 * (reads at random blocks, or writes at idx[i]).  Fills lat with submit->completion latencies and
 * returns the throughput in requests per second in *iops. */
struct qslot {
	struct cow_request req;
	struct iovec iov;
	double t_submit;
	bool busy;
};
static double *q_lat;
static unsigned q_done;
static void q_complete(struct cow_request *req, int result)
{
	struct qslot *s = req->opaque;
	if (result) DIE("queued request at %llu: %s", (unsigned long long)req->offset_bytes, strerror(-result));
	q_lat[q_done++] = now_us() - s->t_submit;
	s->busy = false;
}

static struct result bench_queue(struct cow_device *dev, enum cow_op op, uint64_t blocks, const uint64_t *idx,
				 unsigned n, unsigned depth, double *lat, double *iops)
{
	struct cow_queue *q;
	int err = cow_queue_create(dev, depth, &q);
	if (err) DIE("cow_queue_create: %s", strerror(-err));
	struct qslot *slots = calloc(depth, sizeof *slots);
	unsigned char *bufs = NULL;
	if (!slots || posix_memalign((void **)&bufs, 4096, (size_t)depth * BLK)) DIE("out of memory");
	memset(bufs, 0x5a, (size_t)depth * BLK);
	q_lat = lat;
	q_done = 0;
	unsigned submitted = 0;
	double t0 = now_us();
	while (q_done < n) {
		for (unsigned i = 0; i < depth && submitted < n; i++) {
			struct qslot *s = &slots[i];
			if (s->busy) continue;
			uint64_t b = op == COW_OP_READ ? rnd() % blocks : idx[submitted];
			s->iov.iov_base = bufs + (size_t)i * BLK;
			s->iov.iov_len = BLK;
			s->req = (struct cow_request){ .op = op, .offset_bytes = b * BLK, .length_bytes = BLK,
						       .iov = &s->iov, .iov_count = 1, .complete = q_complete, .opaque = s };
			s->busy = true;
			s->t_submit = now_us();
			err = cow_queue_submit(q, &s->req);
			if (err == -EAGAIN) {
				s->busy = false;
				break;
			}
			if (err) DIE("cow_queue_submit: %s", strerror(-err));
			submitted++;
		}
		err = cow_queue_poll(q, 1);
		if (err < 0) DIE("cow_queue_poll: %s", strerror(-err));
	}
	*iops = n / ((now_us() - t0) / 1e6);
	cow_queue_destroy(q);
	free(bufs);
	free(slots);
	return summarize(lat, n);
}

static void row(const char *what, struct result r, const char *ratio_name, double ratio)
{
	if (ratio_name) printf("| %-52s | %9.1f | %9.1f | %6.2fx %-18s |\n", what, r.p50, r.p99, ratio, ratio_name);
	else printf("| %-52s | %9.1f | %9.1f | %-26s |\n", what, r.p50, r.p99, "");
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: cow-bench DIR [SIZE_MIB [OPS [SYNC_OPS]]]\n");
		return 2;
	}
	const char *dir = argv[1];
	uint64_t size = (argc > 2 ? strtoull(argv[2], NULL, 10) : 256) << 20;
	unsigned ops = argc > 3 ? (unsigned)strtoul(argv[3], NULL, 10) : 5000;
	unsigned sync_ops = argc > 4 ? (unsigned)strtoul(argv[4], NULL, 10) : 300;
	uint64_t blocks = size / BLK;
	if (blocks < 4ull * (ops + sync_ops) + 2 * CHUNK_BLOCKS * DEEP_LAYERS) DIE("device too small for that many ops");

	char root[4096], plain[4096];
	snprintf(root, sizeof root, "%s/store", dir);
	snprintf(plain, sizeof plain, "%s/plain.dat", dir);
	struct layer_store *st;
	int err = layer_store_open(root, LAYER_STORE_CREATE, &st);
	if (err) DIE("open store %s: %s", root, strerror(-err));

	/* --- build the images and the plain file ------------------------------------------------ */
	double t0 = now_us();
	static char one[1][SHA256_DIGEST_STRLEN];
	write_layer(st, blocks, 0, 1, NULL, one[0]);
	put_image(st, "bench1", size, 1, one);
	static char deep[DEEP_LAYERS][SHA256_DIGEST_STRLEN];
	for (unsigned k = 0; k < DEEP_LAYERS; k++) write_layer(st, blocks, k, DEEP_LAYERS, k ? deep[k - 1] : NULL, deep[k]);
	put_image(st, "bench64", size, DEEP_LAYERS, deep);
	int pfd = open(plain, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (pfd < 0) DIE("create %s: %s", plain, strerror(errno));
	{
		static unsigned char buf[CHUNK_BLOCKS * BLK];
		for (uint64_t b = 0; b < blocks; b += CHUNK_BLOCKS) {
			for (unsigned i = 0; i < CHUNK_BLOCKS; i++) fill_block(b + i, buf + i * BLK);
			if (pwrite(pfd, buf, sizeof buf, (off_t)(b * BLK)) != (ssize_t)sizeof buf) DIE("write plain: %s", strerror(errno));
		}
		if (fsync(pfd) < 0) DIE("fsync plain: %s", strerror(errno));
	}
	double build_s = (now_us() - t0) / 1e6;

	/* --- index memory and open time ----------------------------------------------------------- */
	struct cow_device *d1, *d64;
	struct cow_device_stats s1, s64;
	t0 = now_us();
	err = cow_device_open_image(st, "bench1", &d1);
	double open1 = now_us() - t0;
	if (err) DIE("open bench1: %s", strerror(-err));
	t0 = now_us();
	err = cow_device_open_image(st, "bench64", &d64);
	double open64 = now_us() - t0;
	if (err) DIE("open bench64: %s", strerror(-err));
	cow_device_get_stats(d1, &s1);
	cow_device_get_stats(d64, &s64);

	/* Rows that are compared with each other run interleaved, in ROUNDS rounds, so that load
	 * from other processes on a shared machine falls on both sides of a ratio alike. */
	unsigned nread = ops * 2 / ROUNDS * ROUNDS, rper = nread / ROUNDS;
	unsigned wper = ops / ROUNDS, sper = sync_ops / ROUNDS;
	ops = wper * ROUNDS;
	sync_ops = sper * ROUNDS;
	double *lat = calloc(nread, sizeof *lat), *lat2 = calloc(nread, sizeof *lat), *lat3 = calloc(nread, sizeof *lat);
	if (!lat || !lat2 || !lat3) DIE("out of memory");

	/* --- reads --------------------------------------------------------------------------------- */
	/* warm the page cache for all three so every row measures the same thing: the CPU path */
	bench_reads(d1, -1, blocks, nread / 4, lat);
	bench_reads(d64, -1, blocks, nread / 4, lat);
	bench_reads(NULL, pfd, blocks, nread / 4, lat);
	double q1_s = 0, q64_s = 0, iops;
	for (unsigned r = 0; r < ROUNDS; r++) {
		bench_reads(NULL, pfd, blocks, rper, lat + r * rper);
		bench_reads(d1, -1, blocks, rper, lat2 + r * rper);
		bench_reads(d64, -1, blocks, rper, lat3 + r * rper);
	}
	struct result r_plain = summarize(lat, nread), r1 = summarize(lat2, nread), r64 = summarize(lat3, nread);
	for (unsigned r = 0; r < ROUNDS; r++) {
		bench_queue(d1, COW_OP_READ, blocks, NULL, rper, QD, lat2 + r * rper, &iops);
		q1_s += rper / iops;
		bench_queue(d64, COW_OP_READ, blocks, NULL, rper, QD, lat3 + r * rper, &iops);
		q64_s += rper / iops;
	}
	struct result r1q = summarize(lat2, nread), r64q = summarize(lat3, nread);
	double iops_r1q = nread / q1_s, iops_r64q = nread / q64_s;
	cow_device_close(d64);
	cow_device_close(d1);

	/* --- writes -------------------------------------------------------------------------------- */
	err = layer_store_container_create(st, "bench1", "w");
	if (err) DIE("create container: %s", strerror(-err));
	struct cow_device *dw;
	err = cow_device_open_container(st, "w", &dw);
	if (err) DIE("open container: %s", strerror(-err));
	uint64_t *perm = malloc(blocks * sizeof *perm);
	if (!perm) DIE("out of memory");
	for (uint64_t i = 0; i < blocks; i++) perm[i] = i;
	for (uint64_t i = blocks - 1; i > 0; i--) {
		uint64_t j = rnd() % (i + 1), t = perm[i];
		perm[i] = perm[j];
		perm[j] = t;
	}
	const uint64_t *first_nf = perm, *first_f = perm + ops, *partial = perm + ops + sync_ops;
	struct cow_device_stats before, after;

	/* Plain-file references: writes into a new sparse file (allocating, like a first write) and
	 * overwrites of blocks written just before (like an upper overwrite). */
	char fresh[4200];
	snprintf(fresh, sizeof fresh, "%s/fresh.dat", dir);
	int ffd = open(fresh, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (ffd < 0 || ftruncate(ffd, (off_t)size) < 0) DIE("create %s: %s", fresh, strerror(errno));

	cow_device_get_stats(dw, &before);
	for (unsigned r = 0; r < ROUNDS; r++) {
		bench_writes(W_PLAIN, NULL, ffd, first_nf + r * wper, wper, BLK, false, lat + r * wper);
		bench_writes(W_COW, dw, -1, first_nf + r * wper, wper, BLK, false, lat2 + r * wper);
	}
	struct result w_plain_new = summarize(lat, ops), w_first = summarize(lat2, ops);
	cow_device_get_stats(dw, &after);
	uint64_t copyups_full = after.copy_ups - before.copy_ups;
	before = after;
	struct result w_partial = bench_writes(W_COW, dw, -1, partial, ops, 512, false, lat);
	cow_device_get_stats(dw, &after);
	uint64_t copyups_partial = after.copy_ups - before.copy_ups;
	for (unsigned r = 0; r < ROUNDS; r++) {
		bench_writes(W_PLAIN, NULL, ffd, first_nf + r * wper, wper, BLK, false, lat + r * wper);
		bench_writes(W_COW, dw, -1, first_nf + r * wper, wper, BLK, false, lat2 + r * wper);
	}
	struct result w_plain_over = summarize(lat, ops), w_over = summarize(lat2, ops);
	double iops_wq;
	struct result w_over_q = bench_queue(dw, COW_OP_WRITE, blocks, first_nf, ops, QD, lat, &iops_wq);
	for (unsigned r = 0; r < ROUNDS; r++) {
		bench_writes(W_PLAIN, NULL, ffd, first_f + r * sper, sper, BLK, true, lat + r * sper);
		bench_writes(W_COW, dw, -1, first_f + r * sper, sper, BLK, true, lat2 + r * sper);
	}
	struct result w_plain_new_f = summarize(lat, sync_ops), w_first_f = summarize(lat2, sync_ops);
	for (unsigned r = 0; r < ROUNDS; r++) {
		bench_writes(W_PLAIN, NULL, ffd, first_nf + r * sper, sper, BLK, true, lat + r * sper);
		bench_writes(W_COW, dw, -1, first_nf + r * sper, sper, BLK, true, lat2 + r * sper);
	}
	struct result w_plain_over_f = summarize(lat, sync_ops), w_over_f = summarize(lat2, sync_ops);
	close(ffd);
	cow_device_get_stats(dw, &after);
	cow_device_close(dw);
	close(pfd);

	/* --- the table ------------------------------------------------------------------------------ */
	printf("device %llu MiB, %u ops per write row (%u with flush), %u reads per read row, built in %.1f s\n\n",
	       (unsigned long long)(size >> 20), ops, sync_ops, nread, build_s);
	printf("| %-52s | %9s | %9s | %-26s |\n", "4 KiB operation at QD1", "p50 us", "p99 us", "ratio (p50)");
	printf("|%s|%s|%s|%s|\n", "------------------------------------------------------", "-----------", "-----------", "----------------------------");
	row("plain file: pwrite into a new sparse file", w_plain_new, NULL, 0);
	row("plain file: pwrite over a written block", w_plain_over, NULL, 0);
	row("cow: first write of a block in the lower layer", w_first, "vs plain new", w_first.p50 / w_plain_new.p50);
	row("cow: first 512 B write into a lower block (copy-up)", w_partial, "vs plain new", w_partial.p50 / w_plain_new.p50);
	row("cow: overwrite of a block in the upper", w_over, "vs plain over", w_over.p50 / w_plain_over.p50);
	row("plain file: new block + fdatasync", w_plain_new_f, NULL, 0);
	row("plain file: overwrite + fdatasync", w_plain_over_f, NULL, 0);
	row("cow: first write of a lower block + flush", w_first_f, "vs plain new+sync", w_first_f.p50 / w_plain_new_f.p50);
	row("cow: overwrite of an upper block + flush", w_over_f, "vs plain over+sync", w_over_f.p50 / w_plain_over_f.p50);
	row("plain file pread (page cache)", r_plain, NULL, 0);
	row("cow: random read through 1 layer", r1, "vs plain", r1.p50 / r_plain.p50);
	row("cow: random read through 64 layers", r64, "vs 1 layer", r64.p50 / r1.p50);
	printf("\n");
	printf("| %-52s | %9s | %9s | %-26s |\n", "4 KiB requests through a cow_queue at QD32", "p50 us", "p99 us", "requests/s (vs QD1)");
	printf("|%s|%s|%s|%s|\n", "------------------------------------------------------", "-----------", "-----------", "----------------------------");
	printf("| %-52s | %9.1f | %9.1f | %9.0f (%5.2fx)          |\n", "cow: random read through 1 layer", r1q.p50, r1q.p99, iops_r1q, iops_r1q * r1.mean / 1e6);
	printf("| %-52s | %9.1f | %9.1f | %9.0f (%5.2fx)          |\n", "cow: random read through 64 layers", r64q.p50, r64q.p99, iops_r64q, iops_r64q * r64.mean / 1e6);
	printf("| %-52s | %9.1f | %9.1f | %9.0f (%5.2fx)          |\n", "cow: overwrite of upper blocks", w_over_q.p50, w_over_q.p99, iops_wq, iops_wq * w_over.mean / 1e6);
	printf("\n");
	double gib = (double)size / (1 << 30);
	printf("merged index: 1 layer %llu extents, %.1f KiB per GiB of device; 64 layers %llu extents, %.1f KiB per GiB "
	       "(%.2fx)\n", (unsigned long long)s1.index_extents, s1.index_bytes / 1024.0 / gib,
	       (unsigned long long)s64.index_extents, s64.index_bytes / 1024.0 / gib,
	       s1.index_bytes ? (double)s64.index_bytes / s1.index_bytes : 0.0);
	printf("open (index build): 1 layer %.0f us, 64 layers %.0f us\n", open1, open64);
	printf("copy-ups: %llu for %u whole-block first writes, %llu for %u partial first writes; upper holds %llu blocks\n",
	       (unsigned long long)copyups_full, ops, (unsigned long long)copyups_partial, ops,
	       (unsigned long long)after.upper_blocks);
	free(perm);
	free(lat);
	free(lat2);
	free(lat3);
	layer_store_close(st);
	return 0;
}
