/* cow/ unit tests: the merged index (overlaps, ZERO masking, 1 vs 64 layers), block status,
 * copy-up counts, request validation, read-only images, scratch devices, commit, journal
 * recovery after a process crash, and the container check. */
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/log.h"
#include "tests/unit/test-cow-util.h"

#define SIZE_BLOCKS 1024u

static int read_all_equal(struct cow_device *d, const uint8_t *model, uint64_t bytes, const char *what)
{
	uint8_t *buf = malloc(bytes);
	int r = cow_device_read(d, 0, buf, bytes);
	long long diff = r ? -2 : test_first_diff(buf, model, bytes);
	free(buf);
	if (r) tap_diag("%s: read failed %d", what, r);
	else if (diff >= 0) tap_diag("%s: first difference at byte %lld (block %lld)", what, diff, diff / BS);
	return !r && diff == -1;
}

static void test_index_merge(struct layer_store *s)
{
	char l[3][SHA256_DIGEST_STRLEN];
	uint8_t *model = calloc(SIZE_BLOCKS, BS);
	struct cow_device *d;
	struct cow_device_stats st;
	enum cow_block_state bs;
	uint64_t run;

	/* L0: DATA [0,16) and [32,48); L1: DATA [8,40) over both; L2: ZERO [10,20) masks L1 */
	struct spec_extent e0[] = { { 0, 16, 0, 1 }, { 32, 16, 0, 1 } };
	struct spec_extent e1[] = { { 8, 32, 0, 2 } };
	struct spec_extent e2[] = { { 10, 10, 1, 0 }, { 100, 5, 0, 3 } };
	TAP_IS(test_layer_write(s, NULL, SIZE_BLOCKS, e0, 2, model, 0, l[0]), 0, "index: layer 0");
	TAP_IS(test_layer_write(s, l[0], SIZE_BLOCKS, e1, 1, model, 3, l[1]), 0, "index: layer 1 (zstd)");
	TAP_IS(test_layer_write(s, l[1], SIZE_BLOCKS, e2, 2, model, 0, l[2]), 0, "index: layer 2 with a ZERO extent");
	TAP_IS(test_image_put(s, "idx", SIZE_BLOCKS * BS, l, 3), 0, "index: image record");
	TAP_IS(cow_device_open_image(s, "idx", &d), 0, "index: open image");
	TAP_OK(read_all_equal(d, model, SIZE_BLOCKS * BS, "merged"), "index: overlapping + masking layers read as the model");
	cow_device_get_stats(d, &st);
	/* [0,8) L0, [8,10) L1, [20,40) L1, [40,48) L0, [100,105) L2 */
	TAP_IS(st.index_extents, 5, "index: 5 merged extents (got %llu)", (unsigned long long)st.index_extents);
	TAP_OK(st.index_bytes >= st.index_extents * 16, "index: index_bytes reported (%llu)", (unsigned long long)st.index_bytes);
	TAP_OK(cow_device_block_status(d, 0, 100, &bs, &run) == 0 && bs == COW_BLOCK_LOWER && run == 10, "status: [0,10) lower");
	TAP_OK(cow_device_block_status(d, 10, 100, &bs, &run) == 0 && bs == COW_BLOCK_ZERO && run == 10, "status: [10,20) zero (masked)");
	TAP_OK(cow_device_block_status(d, 20, 100, &bs, &run) == 0 && bs == COW_BLOCK_LOWER && run == 28, "status: [20,48) lower");
	TAP_OK(cow_device_block_status(d, 48, 1000, &bs, &run) == 0 && bs == COW_BLOCK_ZERO && run == 52, "status: [48,100) zero");
	TAP_OK(cow_device_block_status(d, SIZE_BLOCKS - 1, 5, &bs, &run) == 0 && run == 1, "status: run clipped at the end");
	TAP_IS(cow_device_block_status(d, SIZE_BLOCKS, 1, &bs, &run), -EINVAL, "status: past the end rejected");
	TAP_OK(cow_device_is_readonly(d), "image device is read-only");
	uint8_t blk[BS] = { 0 };
	TAP_IS(cow_device_write(d, 0, blk, BS, 0), -EROFS, "write to an image: -EROFS");
	TAP_IS(cow_device_discard(d, 0, BS), -EROFS, "discard on an image: -EROFS");
	TAP_IS(cow_device_flush(d), 0, "flush on an image is a no-op");
	TAP_IS(cow_device_layer_count(d), 3, "layer count");
	TAP_OK(!strcmp(cow_device_layer_digest(d, 2), l[2]), "layer digest of the top");
	cow_device_close(d);
	free(model);
}

/* 64 layers, each adding random extents, read the same as one flattened layer. */
static void test_64_layers(struct layer_store *s, uint64_t *rng)
{
	static char chain[64][SHA256_DIGEST_STRLEN];
	char flat[1][SHA256_DIGEST_STRLEN];
	uint8_t *model = calloc(SIZE_BLOCKS, BS);
	struct spec_extent ext[64];
	int ok = 1;
	for (unsigned i = 0; i < 64 && ok; i++) {
		unsigned n = test_random_extents(rng, SIZE_BLOCKS, 8, 100 + i, ext);
		ok = test_layer_write(s, i ? chain[i - 1] : NULL, SIZE_BLOCKS, ext, n, model, i % 2 ? 1 : 0, chain[i]) == 0;
	}
	TAP_OK(ok, "64 layers written");
	/* flattened: one layer holding the model's non-zero blocks */
	struct layer_writer_options o = { .virtual_size_bytes = SIZE_BLOCKS * BS };
	struct layer_writer *w;
	int r = layer_writer_create(s, &o, &w);
	static const uint8_t zero[BS];
	for (uint64_t b = 0; b < SIZE_BLOCKS && !r; b++)
		if (memcmp(model + b * BS, zero, BS)) r = layer_writer_add_data(w, b, model + b * BS, 1);
	TAP_IS(r ? r : layer_writer_commit(w, flat[0]), 0, "flattened layer written");
	TAP_IS(test_image_put(s, "deep", SIZE_BLOCKS * BS, chain, 64), 0, "64-layer image");
	TAP_IS(test_image_put(s, "flat", SIZE_BLOCKS * BS, flat, 1), 0, "1-layer image");
	struct cow_device *d64, *d1;
	TAP_IS(cow_device_open_image(s, "deep", &d64), 0, "open 64-layer image");
	TAP_IS(cow_device_open_image(s, "flat", &d1), 0, "open 1-layer image");
	TAP_OK(read_all_equal(d64, model, SIZE_BLOCKS * BS, "64 layers"), "64-layer chain reads as the model");
	TAP_OK(read_all_equal(d1, model, SIZE_BLOCKS * BS, "1 layer"), "1-layer chain reads the same data");
	/* random small reads agree too */
	uint8_t a[16384], b2[16384];
	int same = 1;
	for (int i = 0; i < 2000 && same; i++) {
		uint64_t len = (1 + tap_rand(rng) % 32) * 512, off = tap_rand(rng) % (SIZE_BLOCKS * BS / 512 - 32) * 512;
		same = !cow_device_read(d64, off, a, len) && !cow_device_read(d1, off, b2, len) && !memcmp(a, b2, len) &&
		       !memcmp(a, model + off, len);
	}
	TAP_OK(same, "2000 random sector reads agree between 1 and 64 layers");
	struct cow_device_stats s64, s1;
	cow_device_get_stats(d64, &s64);
	cow_device_get_stats(d1, &s1);
	tap_diag("merged index: 64 layers -> %llu extents (%llu bytes); 1 layer -> %llu extents",
		 (unsigned long long)s64.index_extents, (unsigned long long)s64.index_bytes,
		 (unsigned long long)s1.index_extents);
	TAP_OK(s64.index_extents > 0 && s64.index_extents <= 64 * 8, "64-layer merged index is one array of %llu extents",
	       (unsigned long long)s64.index_extents);
	cow_device_close(d64);
	cow_device_close(d1);
	free(model);
}

static void test_container(struct layer_store *s)
{
	char l[2][SHA256_DIGEST_STRLEN];
	uint8_t *model = calloc(SIZE_BLOCKS, BS);
	struct spec_extent e0[] = { { 0, 64, 0, 7 }, { 200, 10, 0, 7 } };
	struct cow_device *d, *d2;
	struct cow_device_stats st;
	uint8_t blk[BS * 2];
	enum cow_block_state bs;
	uint64_t run;

	TAP_IS(test_layer_write(s, NULL, SIZE_BLOCKS, e0, 2, model, 0, l[0]), 0, "container: base layer");
	TAP_IS(test_image_put(s, "base", SIZE_BLOCKS * BS, l, 1), 0, "container: image");
	TAP_IS(layer_store_container_create(s, "base", "c1"), 0, "container: create");
	TAP_IS(cow_device_open_container(s, "c1", &d), 0, "container: open");
	log_set_quiet(1);
	TAP_IS(cow_device_open_container(s, "c1", &d2), -EBUSY, "container: second open is -EBUSY");
	log_set_quiet(0);
	TAP_OK(!cow_device_is_readonly(d), "container is writable");

	/* copy-up counts */
	memset(blk, 0xAB, BS);
	TAP_IS(cow_device_write(d, 3 * BS, blk, BS, 0), 0, "whole-block first write to a lower block");
	cow_device_get_stats(d, &st);
	TAP_IS(st.copy_ups, 0, "a 4 KiB first write copies nothing");
	memcpy(model + 3 * BS, blk, BS);
	TAP_IS(cow_device_write(d, 5 * BS + 512, blk, 512, 0), 0, "512-byte first write to a lower block");
	cow_device_get_stats(d, &st);
	TAP_IS(st.copy_ups, 1, "a 512-byte first write copies exactly one block");
	memcpy(model + 5 * BS + 512, blk, 512);
	TAP_IS(cow_device_write(d, 5 * BS + 1024, blk, 512, 0), 0, "second partial write of the same block");
	cow_device_get_stats(d, &st);
	TAP_IS(st.copy_ups, 1, "an upper block is not copied again");
	memcpy(model + 5 * BS + 1024, blk, 512);
	TAP_IS(cow_device_write(d, 7 * BS + 3584, blk, 1024, 0), 0, "512+512 write straddling two lower blocks");
	cow_device_get_stats(d, &st);
	TAP_IS(st.copy_ups, 3, "straddling write copies exactly the two blocks");
	memcpy(model + 7 * BS + 3584, blk, 1024);
	TAP_IS(cow_device_write(d, 500 * BS + 512, blk, 512, 0), 0, "partial write to a never-written block");
	cow_device_get_stats(d, &st);
	TAP_IS(st.copy_ups, 3, "a block absent from the chain copies nothing");
	memcpy(model + 500 * BS + 512, blk, 512);
	TAP_IS(st.upper_blocks, 5, "upper holds 5 blocks (got %llu)", (unsigned long long)st.upper_blocks);
	TAP_OK(cow_device_block_status(d, 3, 10, &bs, &run) == 0 && bs == COW_BLOCK_UPPER && run == 1, "status: block 3 upper");
	TAP_OK(cow_device_block_status(d, 4, 10, &bs, &run) == 0 && bs == COW_BLOCK_LOWER && run == 1, "status: block 4 lower");

	/* discard: whole blocks -> zero, hole punched; unaligned ends zeroed */
	TAP_IS(cow_device_discard(d, 2 * BS + 1024, 4 * BS), 0, "discard an unaligned range");
	memset(model + 2 * BS + 1024, 0, 4 * BS);
	TAP_OK(cow_device_block_status(d, 3, 10, &bs, &run) == 0 && bs == COW_BLOCK_ZERO && run == 3, "status: discarded blocks zero (%d %llu)", bs, (unsigned long long)run);
	TAP_IS(cow_device_write_zeroes(d, 40 * BS, 8 * BS, COW_NO_HOLE), 0, "write_zeroes with NO_HOLE");
	memset(model + 40 * BS, 0, 8 * BS);
	TAP_OK(cow_device_block_status(d, 40, 100, &bs, &run) == 0 && bs == COW_BLOCK_UPPER && run == 8, "status: NO_HOLE zeroes are upper");
	TAP_IS(cow_device_write_zeroes(d, 50 * BS, 4 * BS, COW_FUA), 0, "write_zeroes (hole) with FUA");
	memset(model + 50 * BS, 0, 4 * BS);
	TAP_OK(read_all_equal(d, model, SIZE_BLOCKS * BS, "container"), "container reads as the model");

	/* validation */
	TAP_IS(cow_device_write(d, 100, blk, 512, 0), -EINVAL, "unaligned offset rejected");
	TAP_IS(cow_device_write(d, 0, blk, 100, 0), -EINVAL, "unaligned length rejected");
	TAP_IS(cow_device_read(d, SIZE_BLOCKS * BS - 512, blk, 1024), -EINVAL, "read past the end rejected");
	TAP_IS(cow_device_discard(d, UINT64_MAX - 511, 1024), -EINVAL, "wrapping range rejected");
	TAP_IS(cow_device_write(d, 0, blk, 512, 0x80), -EINVAL, "unknown flag rejected");
	struct cow_queue *q;
	TAP_IS(cow_queue_create(d, 4, &q), 0, "queue create");
	struct iovec iov = { blk, 1024 };
	struct cow_request bad = { .op = COW_OP_WRITE, .offset_bytes = 0, .length_bytes = 2048, .iov = &iov, .iov_count = 1 };
	TAP_IS(cow_queue_submit(q, &bad), -EINVAL, "iov total != length rejected");
	bad.length_bytes = (uint64_t)COW_REQUEST_BYTES_MAX + 512;
	TAP_IS(cow_queue_submit(q, &bad), -EINVAL, "request above COW_REQUEST_BYTES_MAX rejected");
	bad.op = 99;
	TAP_IS(cow_queue_submit(q, &bad), -EINVAL, "unknown op rejected");
	TAP_IS(cow_queue_in_flight(q), 0, "nothing in flight after rejected requests");
	cow_queue_destroy(q);

	/* reopen: flushed state comes back */
	TAP_IS(cow_device_close(d), 0, "container: close");
	TAP_IS(cow_device_open_container(s, "c1", &d), 0, "container: reopen");
	TAP_OK(read_all_equal(d, model, SIZE_BLOCKS * BS, "reopened"), "reopened container reads as the model");

	/* process crash: a child writes A, flushes, writes B and dies; B's block reads its old data */
	cow_device_close(d);
	pid_t pid = fork();
	if (pid == 0) {
		struct cow_device *c;
		uint8_t x[BS];
		if (cow_device_open_container(s, "c1", &c)) _exit(2);
		memset(x, 0x11, BS);
		if (cow_device_write(c, 10 * BS, x, BS, 0) || cow_device_flush(c)) _exit(3);
		memset(x, 0x22, BS);
		if (cow_device_write(c, 11 * BS, x, BS, 0)) _exit(4);
		memset(x, 0x33, 512);
		if (cow_device_write(c, 12 * BS, x, 512, COW_FUA)) _exit(5);
		memset(x, 0x44, BS);
		if (cow_device_write(c, 13 * BS, x, BS, 0)) _exit(6);
		_exit(0); /* no close, no flush */
	}
	int wst;
	waitpid(pid, &wst, 0);
	TAP_OK(WIFEXITED(wst) && WEXITSTATUS(wst) == 0, "crash child ran (status %d)", WEXITSTATUS(wst));
	memset(model + 10 * BS, 0x11, BS);
	memset(model + 11 * BS, 0x22, BS); /* made durable by the FUA write that completed after it */
	memset(model + 12 * BS, 0x33, 512);
	TAP_IS(cow_device_open_container(s, "c1", &d), 0, "reopen after the crash");
	TAP_OK(read_all_equal(d, model, SIZE_BLOCKS * BS, "after crash"),
	       "flushed writes present, the unflushed write to block 13 reads its old (lower) data");

	/* commit: new layer, container continues on it with an empty upper */
	char digest[SHA256_DIGEST_STRLEN];
	TAP_IS(cow_device_commit(d, "c1-snap", digest), 0, "commit");
	TAP_IS(cow_device_layer_count(d), 2, "chain grew by one");
	cow_device_get_stats(d, &st);
	TAP_IS(st.upper_blocks, 0, "upper is empty after commit");
	TAP_OK(read_all_equal(d, model, SIZE_BLOCKS * BS, "after commit"), "container reads the same after commit");
	struct cow_device *img;
	TAP_IS(cow_device_open_image(s, "c1-snap", &img), 0, "open the committed image");
	TAP_OK(read_all_equal(img, model, SIZE_BLOCKS * BS, "committed image"), "committed image reads as the model");
	cow_device_close(img);
	struct container_record rec;
	TAP_OK(layer_store_container_get(s, "c1", &rec) == 0 && rec.layer_count == 2 && !strcmp(rec.layers[1], digest),
	       "container record names the new chain");
	memset(blk, 0x5A, BS);
	TAP_IS(cow_device_write(d, 2 * BS, blk, BS, 0), 0, "write after commit");
	memcpy(model + 2 * BS, blk, BS);
	TAP_IS(cow_device_close(d), 0, "close");
	struct cow_check_report rep;
	TAP_IS(cow_container_check(s, "c1", &rep), 0, "container check clean");
	TAP_IS(cow_device_open_container(s, "c1", &d), 0, "reopen on the new chain");
	TAP_OK(read_all_equal(d, model, SIZE_BLOCKS * BS, "new chain"), "new chain + upper reads as the model");
	cow_device_close(d);

	/* a corrupt upper.map is found by the check and refused by open */
	char dir[OCIBLK_PATH_MAX], path[OCIBLK_PATH_MAX + 32];
	layer_store_container_dir(s, "c1", dir, sizeof dir);
	snprintf(path, sizeof path, "%s/upper.map", dir);
	int fd = open(path, O_RDWR);
	uint8_t byte;
	TAP_OK(fd >= 0 && pread(fd, &byte, 1, 20) == 1, "read a header byte of upper.map");
	byte ^= 0x40;
	TAP_OK(pwrite(fd, &byte, 1, 20) == 1, "flip a bit in upper.map");
	close(fd);
	log_set_quiet(1);
	unsigned long errs = log_error_count();
	TAP_IS(cow_container_check(s, "c1", &rep), -EUCLEAN, "check finds the corruption");
	TAP_OK(rep.errors >= 1 && log_error_count() > errs, "check counted and logged errors");
	TAP_IS(cow_device_open_container(s, "c1", &d), -EUCLEAN, "open refuses a corrupt upper.map");
	log_set_quiet(0);
	free(model);
}

static void test_scratch(struct layer_store *s)
{
	char base[1][SHA256_DIGEST_STRLEN], digest[SHA256_DIGEST_STRLEN];
	uint8_t *model = calloc(SIZE_BLOCKS, BS);
	struct spec_extent e0[] = { { 0, 100, 0, 9 } };
	struct cow_device *d;
	TAP_IS(test_layer_write(s, NULL, SIZE_BLOCKS, e0, 1, model, 0, base[0]), 0, "scratch: base layer");
	const char *chain[] = { base[0] };
	TAP_IS(cow_device_open_scratch(s, chain, 1, SIZE_BLOCKS * BS, &d), 0, "scratch: open");
	uint8_t blk[BS];
	memset(blk, 0x77, BS);
	TAP_IS(cow_device_write(d, 150 * BS, blk, BS, 0), 0, "scratch: write");
	memcpy(model + 150 * BS, blk, BS);
	TAP_IS(cow_device_discard(d, 10 * BS, 20 * BS), 0, "scratch: discard over lower data");
	memset(model + 10 * BS, 0, 20 * BS);
	TAP_IS(cow_device_commit_layer(d, digest), 0, "scratch: commit_layer");
	TAP_IS(cow_device_layer_count(d), 2, "scratch: continues on 2 layers");
	TAP_OK(read_all_equal(d, model, SIZE_BLOCKS * BS, "scratch"), "scratch reads as the model after commit_layer");
	cow_device_close(d);
	/* the new layer over the base alone reads the same */
	char chain2[2][SHA256_DIGEST_STRLEN];
	memcpy(chain2[0], base[0], SHA256_DIGEST_STRLEN);
	memcpy(chain2[1], digest, SHA256_DIGEST_STRLEN);
	TAP_IS(test_image_put(s, "scratch-img", SIZE_BLOCKS * BS, chain2, 2), 0, "image over the committed layer");
	TAP_IS(cow_device_open_image(s, "scratch-img", &d), 0, "open it");
	TAP_OK(read_all_equal(d, model, SIZE_BLOCKS * BS, "scratch image"), "ZERO extents of the new layer mask the base");
	cow_device_close(d);
	/* the scratch upper is gone */
	char tmpdir[OCIBLK_PATH_MAX + 8];
	snprintf(tmpdir, sizeof tmpdir, "%s/tmp", layer_store_root(s));
	char cmd[OCIBLK_PATH_MAX + 64];
	snprintf(cmd, sizeof cmd, "ls %s | grep -q scratch-upper", tmpdir);
	TAP_OK(system(cmd) != 0, "scratch upper removed on close");
	free(model);
}

int main(void)
{
	uint64_t rng = tap_seed();
	struct layer_store *s = test_store_open("store");
	test_index_merge(s);
	test_64_layers(s, &rng);
	test_container(s);
	test_scratch(s);
	layer_store_close(s);
	return tap_done();
}
