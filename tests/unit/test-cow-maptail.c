/* upper.map keeps a synced zero tail past its journal (COW_MAP_TAIL_STEP) so a journal append is
 * an overwrite within the file: replay must stop at the zeros, a torn record inside the tail must
 * be dropped at open, and appends after that must land where replay looks for them. */
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "cow/cow_internal.h"
#include "tests/unit/test-cow-util.h"

#define SIZE_BLOCKS 256u

static int64_t file_size(const char *path)
{
	struct stat st;
	return stat(path, &st) ? -1 : (int64_t)st.st_size;
}

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

/* writes block b with pattern version v and flushes */
static int write_flush(struct cow_device *d, uint8_t *model, uint64_t b, uint64_t v)
{
	uint8_t blk[BS];
	pattern_block(blk, v, b);
	memcpy(model + b * BS, blk, BS);
	int r = cow_device_write(d, b * BS, blk, BS, 0);
	return r ? r : cow_device_flush(d);
}

int main(void)
{
	struct layer_store *s = test_store_open("store");
	char l[1][SHA256_DIGEST_STRLEN], dir[OCIBLK_PATH_MAX], path[OCIBLK_PATH_MAX + 32];
	uint8_t *model = calloc(SIZE_BLOCKS, BS);
	struct spec_extent e0[] = { { 0, 128, 0, 1 } };
	struct cow_device *d;
	struct cow_check_report rep;

	TAP_IS(test_layer_write(s, NULL, SIZE_BLOCKS, e0, 1, model, 0, l[0]), 0, "base layer");
	TAP_IS(test_image_put(s, "base", SIZE_BLOCKS * BS, l, 1), 0, "image");
	TAP_IS(layer_store_container_create(s, "base", "c1"), 0, "container");
	layer_store_container_dir(s, "c1", dir, sizeof dir);
	snprintf(path, sizeof path, "%s/upper.map", dir);

	TAP_IS(cow_device_open_container(s, "c1", &d), 0, "open");
	int64_t sz0 = file_size(path);
	TAP_OK(sz0 > 0 && sz0 % COW_MAP_TAIL_STEP == 0, "fresh upper.map is padded to the tail step (%lld)", (long long)sz0);
	int r = 0;
	for (uint64_t b = 0; b < 40 && !r; b += 2) r = write_flush(d, model, b, 2);
	TAP_IS(r, 0, "20 first writes, each flushed (one journal record each)");
	TAP_IS(file_size(path), sz0, "the records went into the tail: upper.map did not grow");
	TAP_IS(cow_device_close(d), 0, "close");
	TAP_IS(cow_container_check(s, "c1", &rep), 0, "check is clean with the zero tail");

	TAP_IS(cow_device_open_container(s, "c1", &d), 0, "reopen");
	TAP_OK(read_all_equal(d, model, SIZE_BLOCKS * BS, "replayed"), "replay stops at the zeros and reads as the model");
	TAP_IS(file_size(path), sz0, "a clean zero tail is kept at open");
	TAP_IS(cow_device_close(d), 0, "close");

	/* garbage inside the tail (a torn append): dropped at open, later appends still replay */
	int fd = open(path, O_RDWR);
	uint8_t junk[64];
	memset(junk, 0xA5, sizeof junk);
	TAP_OK(fd >= 0 && pwrite(fd, junk, sizeof junk, (uint64_t)sz0 - 4096) == (ssize_t)sizeof junk, "scribble in the tail");
	if (fd >= 0) close(fd);
	TAP_IS(cow_device_open_container(s, "c1", &d), 0, "reopen with a dirty tail");
	TAP_OK(file_size(path) < sz0, "the dirty tail was cut at the journal end");
	r = 0;
	for (uint64_t b = 1; b < 41 && !r; b += 2) r = write_flush(d, model, b, 3);
	TAP_IS(r, 0, "20 more first writes, flushed (the first one regrows the tail)");
	int64_t sz1 = file_size(path);
	TAP_OK(sz1 > 0 && sz1 % COW_MAP_TAIL_STEP == 0, "upper.map padded again (%lld)", (long long)sz1);
	TAP_IS(cow_device_close(d), 0, "close");
	TAP_IS(cow_container_check(s, "c1", &rep), 0, "check clean");
	TAP_IS(cow_device_open_container(s, "c1", &d), 0, "reopen");
	TAP_OK(read_all_equal(d, model, SIZE_BLOCKS * BS, "after regrow"), "all 40 flushed writes replay");
	TAP_IS(cow_device_close(d), 0, "close");

	free(model);
	layer_store_close(s);
	return tap_done();
}
