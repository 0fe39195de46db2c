/* Randomised model test of a cow container device: >= 100k operations (reads, writes of random
 * sizes and sector alignments including partial blocks, flushes, FUA writes, discards,
 * write-zeroes with and without holes, block status, reopen, commit) through the synchronous
 * API and through a queue with scattered iovecs, each compared byte for byte with an in-memory
 * model of the device.  The journal limit is small so compaction happens many times.
 * The seed is printed; OCIBLK_SEED replays a run. */
#include <unistd.h>

#include "common/log.h"
#include "tests/unit/test-cow-util.h"

#define DEV_BLOCKS 4096u /* 16 MiB */
#define DEV_BYTES ((uint64_t)DEV_BLOCKS * BS)
#define OPS 100000u

static uint64_t rng;
static uint8_t *model, *buf, *buf2;
static unsigned long failures;

static uint64_t rnd(uint64_t n) { return tap_rand(&rng) % n; }

static void pick_range(uint64_t max_len, uint64_t *off, uint64_t *len)
{
	uint64_t r = rnd(100), l;
	if (r < 60) l = 1 + rnd(16);              /* up to 8 KiB */
	else if (r < 95) l = 1 + rnd(128);        /* up to 64 KiB */
	else l = 1 + rnd(max_len / 512);          /* up to max_len */
	l *= 512;
	if (l > max_len) l = max_len;
	uint64_t o;
	if (rnd(4) == 0) o = rnd(DEV_BYTES / BS) * BS; /* block aligned */
	else o = rnd(DEV_BYTES / 512) * 512;
	if (o + l > DEV_BYTES) o = DEV_BYTES - l;
	*off = o;
	*len = l;
}

static void fill_random(uint8_t *p, uint64_t len)
{
	for (uint64_t i = 0; i < len; i += 8) {
		uint64_t x = tap_rand(&rng);
		memcpy(p + i, &x, 8);
	}
}

struct done {
	int result, called;
};

static void on_complete(struct cow_request *req, int result)
{
	struct done *d = req->opaque;
	d->result = result;
	d->called++;
}

/* Submits one request through the queue with the buffer split into up to 4 iovecs. */
static int queue_do(struct cow_queue *q, enum cow_op op, unsigned flags, uint64_t off, uint64_t len, uint8_t *p)
{
	struct iovec iov[4];
	unsigned n = 0;
	uint64_t left = len, pos = 0;
	if (p) {
		unsigned want = 1 + (unsigned)rnd(4);
		while (left && n < want) {
			/* pieces of any byte length, some sector-sized */
			uint64_t k = n + 1 == want ? left : rnd(2) ? 1 + rnd(left) : (1 + rnd(left / 512 + 1)) * 512;
			if (k > left) k = left;
			iov[n].iov_base = p + pos;
			iov[n].iov_len = k;
			n++;
			pos += k;
			left -= k;
		}
		if (left) {
			iov[n - 1].iov_len += left;
		}
	}
	struct done d = { 0 };
	struct cow_request req = { .op = op, .flags = flags, .offset_bytes = off, .length_bytes = len,
				   .iov = p ? iov : NULL, .iov_count = n, .complete = on_complete, .opaque = &d };
	int r = cow_queue_submit(q, &req);
	if (r) return r;
	while (!d.called) {
		r = cow_queue_poll(q, 1);
		if (r < 0) return r;
	}
	return d.called == 1 ? d.result : -EPROTO;
}

static int full_compare(struct cow_device *dev, const char *what)
{
	int r = cow_device_read(dev, 0, buf, DEV_BYTES);
	long long diff = r ? -2 : test_first_diff(buf, model, DEV_BYTES);
	if (r || diff >= 0) {
		tap_diag("%s: full compare failed: r=%d first diff at %lld (block %lld)", what, r, diff, diff / BS);
		return 0;
	}
	return 1;
}

int main(void)
{
	/* This test checks logic, not disks: on tmpfs its thousands of fsyncs cost nothing. */
	if (!getenv("TMPDIR") && access("/dev/shm", W_OK) == 0) setenv("TMPDIR", "/dev/shm", 1);
	rng = tap_seed();
	struct layer_store *s = test_store_open("store");
	model = calloc(DEV_BLOCKS, BS);
	buf = malloc(DEV_BYTES);
	buf2 = malloc(DEV_BYTES);
	char chain[2][SHA256_DIGEST_STRLEN];
	struct spec_extent ext[64];
	unsigned n = test_random_extents(&rng, DEV_BLOCKS, 40, 1, ext);
	TAP_IS(test_layer_write(s, NULL, DEV_BLOCKS, ext, n, model, 0, chain[0]), 0, "base layer (%u extents)", n);
	n = test_random_extents(&rng, DEV_BLOCKS, 40, 2, ext);
	TAP_IS(test_layer_write(s, chain[0], DEV_BLOCKS, ext, n, model, 3, chain[1]), 0, "second layer (%u extents, zstd)", n);
	TAP_IS(test_image_put(s, "model", DEV_BYTES, chain, 2), 0, "image");
	TAP_IS(layer_store_container_create(s, "model", "mc"), 0, "container");

	struct cow_device *dev;
	struct cow_queue *q;
	TAP_IS(cow_device_open_container(s, "mc", &dev), 0, "open");
	TAP_OK(full_compare(dev, "initial"), "initial contents equal the chain");
	cow_device_set_journal_limit(dev, 16384);
	TAP_IS(cow_queue_create(dev, 8, &q), 0, "queue");

	unsigned long counts[10] = { 0 }, compactions = 0, commits = 0, reopens = 0;
	for (unsigned i = 0; i < OPS && failures < 5; i++) {
		uint64_t r = rnd(1000), off, len;
		int via_queue = rnd(2), rc = 0;
		const char *what;
		if (r < 350) {
			what = "read";
			counts[0]++;
			pick_range(1 << 20, &off, &len);
			rc = via_queue ? queue_do(q, COW_OP_READ, 0, off, len, buf) : cow_device_read(dev, off, buf, len);
			if (!rc && memcmp(buf, model + off, len)) {
				long long d = test_first_diff(buf, model + off, len);
				tap_diag("op %u: read %llu+%llu differs at device byte %llu", i, (unsigned long long)off,
					 (unsigned long long)len, (unsigned long long)(off + (uint64_t)d));
				failures++;
			}
		} else if (r < 700) {
			unsigned flags = rnd(100) < 1 ? COW_FUA : 0;
			what = "write";
			counts[1]++;
			pick_range(1 << 20, &off, &len);
			fill_random(buf, len);
			rc = via_queue ? queue_do(q, COW_OP_WRITE, flags, off, len, buf) : cow_device_write(dev, off, buf, len, flags);
			if (!rc) memcpy(model + off, buf, len);
		} else if (r < 704) {
			what = "flush";
			counts[2]++;
			rc = via_queue ? queue_do(q, COW_OP_FLUSH, 0, 0, 0, NULL) : cow_device_flush(dev);
		} else if (r < 760) {
			what = "discard";
			counts[3]++;
			pick_range(4 << 20, &off, &len);
			rc = via_queue ? queue_do(q, COW_OP_DISCARD, 0, off, len, NULL) : cow_device_discard(dev, off, len);
			if (!rc) memset(model + off, 0, len);
		} else if (r < 800) {
			unsigned flags = (rnd(2) ? COW_NO_HOLE : 0) | (rnd(50) == 0 ? COW_FUA : 0);
			what = "write_zeroes";
			counts[4]++;
			pick_range(1 << 20, &off, &len);
			rc = via_queue ? queue_do(q, COW_OP_WRITE_ZEROES, flags, off, len, NULL)
				       : cow_device_write_zeroes(dev, off, len, flags);
			if (!rc) memset(model + off, 0, len);
		} else if (r < 850) {
			what = "block_status";
			counts[5]++;
			enum cow_block_state st;
			uint64_t run, b = rnd(DEV_BLOCKS);
			rc = cow_device_block_status(dev, b, 1 + rnd(64), &st, &run);
			if (!rc && st == COW_BLOCK_ZERO) {
				static const uint8_t zero[BS];
				for (uint64_t k = b; k < b + run; k++)
					if (memcmp(model + k * BS, zero, BS)) {
						tap_diag("op %u: block %llu reported zero but holds data", i, (unsigned long long)k);
						failures++;
						break;
					}
			}
		} else if (r < 851) {
			what = "reopen";
			counts[6]++;
			reopens++;
			compactions += cow_device_journal_compactions(dev);
			cow_queue_destroy(q);
			rc = cow_device_close(dev);
			if (!rc) rc = cow_device_open_container(s, "mc", &dev);
			if (rc) {
				tap_diag("op %u: reopen failed %d", i, rc);
				failures = 100;
				break;
			}
			cow_device_set_journal_limit(dev, 16384);
			rc = cow_queue_create(dev, 8, &q);
			if (!rc && !full_compare(dev, "reopen")) failures++;
		} else {
			/* read-modify-write style mixed op: small write then read back across it */
			what = "write+read";
			counts[7]++;
			pick_range(16384, &off, &len);
			fill_random(buf, len);
			rc = cow_device_write(dev, off, buf, len, 0);
			if (!rc) memcpy(model + off, buf, len);
			uint64_t o2 = off >= 4096 ? off - 4096 : 0, l2 = len + 8192;
			if (o2 + l2 > DEV_BYTES) l2 = DEV_BYTES - o2;
			if (!rc) rc = queue_do(q, COW_OP_READ, 0, o2, l2, buf2);
			if (!rc && memcmp(buf2, model + o2, l2)) {
				tap_diag("op %u: read-back around a write differs", i);
				failures++;
			}
		}
		if (rc) {
			tap_diag("op %u: %s failed: %d", i, what, rc);
			failures++;
		}
		if (i % 25000 == 24999) {
			char img[64], digest[SHA256_DIGEST_STRLEN];
			struct cow_device *ro;
			snprintf(img, sizeof img, "snap-%u", i / 25000);
			cow_queue_destroy(q);
			q = NULL;
			rc = cow_device_commit(dev, img, digest);
			if (rc) {
				tap_diag("op %u: commit failed %d", i, rc);
				failures = 100;
				break;
			}
			commits++;
			if (!full_compare(dev, "after commit")) failures++;
			if (cow_device_open_image(s, img, &ro) == 0) {
				if (!full_compare(ro, "committed image")) failures++;
				cow_device_close(ro);
			} else {
				failures++;
			}
			if (cow_queue_create(dev, 8, &q)) failures = 100;
		}
	}
	compactions += cow_device_journal_compactions(dev);
	TAP_IS(failures, 0, "%u operations match the model (reads %lu, writes %lu, flushes %lu, discards %lu, "
			    "write_zeroes %lu, status %lu, reopens %lu, write+read %lu)",
	       OPS, counts[0], counts[1], counts[2], counts[3], counts[4], counts[5], counts[6], counts[7]);
	TAP_IS(commits, 4, "4 commits made (chain now %u layers)", cow_device_layer_count(dev));
	TAP_OK(compactions > 0, "the journal was compacted %lu times", compactions);
	TAP_OK(full_compare(dev, "final"), "final full compare");
	struct cow_device_stats st;
	cow_device_get_stats(dev, &st);
	tap_diag("stats: copy_ups %llu upper_blocks %llu index_extents %llu", (unsigned long long)st.copy_ups,
		 (unsigned long long)st.upper_blocks, (unsigned long long)st.index_extents);
	cow_queue_destroy(q);
	TAP_IS(cow_device_close(dev), 0, "close");
	struct cow_check_report rep = { 0 };
	int crc = cow_container_check(s, "mc", &rep);
	TAP_IS(crc, 0, "container check clean (%llu blocks)", (unsigned long long)rep.blocks_checked);
	TAP_IS(cow_device_open_container(s, "mc", &dev), 0, "final reopen");
	TAP_OK(full_compare(dev, "final reopen"), "final reopen equals the model");
	cow_device_close(dev);
	layer_store_close(s);
	free(model);
	free(buf);
	free(buf2);
	return tap_done();
}
