/* upper.map keeps a synced zero tail past its journal (COW_MAP_TAIL_STEP) so a journal append is
 * an overwrite within the file: replay must stop at the zeros, a torn record inside the tail must
 * be dropped at open, and appends after that must land where replay looks for them.
 * Flushes carry the written blocks in their record (payloads): a flushed block whose upper.data
 * copy never reached the disk is replayed from upper.map at open, the map is compacted then (and
 * at close) so it keeps no payloads, a version-1 map still opens (and is upgraded), and a map of
 * an unknown version is refused. */
#include <fcntl.h>
#include <xxhash.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "common/vfs.h"
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

static int copy_file(const char *from, const char *to)
{
	char *buf = NULL;
	size_t len = 0;
	int r = vfs_read_file(from, 64u << 20, &buf, &len);
	if (!r) r = vfs_write_file_atomic(to, buf, len);
	free(buf);
	return r;
}

static uint32_t map_version(const char *path)
{
	struct cow_map_header h;
	int fd = open(path, O_RDONLY);
	ssize_t k = fd >= 0 ? pread(fd, &h, sizeof h, 0) : -1;
	if (fd >= 0) close(fd);
	return k == (ssize_t)sizeof h ? h.version : 0;
}

/* A version-1 map (as the previous build wrote it): blocks [0, 4) upper data in the snapshot,
 * one record setting block 9 upper data and block 1 zero, then a zero tail. */
static int write_v1_map(const char *path, uint64_t size_blocks, const char *base_top)
{
	uint8_t buf[8192];
	struct cow_map_header h;
	struct { uint64_t b; uint32_t n, s; } run = { 0, 4, COW_UPPER_DATA }, ent[2] = { { 9, 1, COW_UPPER_DATA }, { 1, 1, COW_UPPER_ZERO } };
	struct cow_journal_header jh = { .magic = COW_JOURNAL_MAGIC, .entry_count = 2, .seq = 1 };
	memset(buf, 0, sizeof buf);
	memset(&h, 0, sizeof h);
	memcpy(h.magic, COW_MAP_MAGIC, 8);
	h.version = 1;
	h.header_bytes = sizeof h;
	h.size_blocks = size_blocks;
	h.generation = 1;
	h.base_layer_count = 1;
	snprintf(h.base_top, sizeof h.base_top, "%s", base_top);
	h.run_count = 1;
	size_t o = 0;
	memcpy(buf, &h, sizeof h), o += sizeof h;
	memcpy(buf + o, &run, sizeof run), o += sizeof run;
	uint64_t sum = XXH3_64bits(buf, o);
	memcpy(buf + o, &sum, 8), o += 8;
	size_t rec = o;
	memcpy(buf + o, &jh, sizeof jh), o += sizeof jh;
	memcpy(buf + o, ent, sizeof ent), o += sizeof ent;
	sum = XXH3_64bits(buf + rec, o - rec);
	memcpy(buf + o, &sum, 8), o += 8;
	return vfs_write_file_atomic(path, buf, sizeof buf);
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

	/* a flushed block that reached upper.map but not upper.data is replayed at open */
	char saved[OCIBLK_PATH_MAX + 64], data_path[OCIBLK_PATH_MAX + 32];
	snprintf(saved, sizeof saved, "%s/saved.map", dir);
	snprintf(data_path, sizeof data_path, "%s/upper.data", dir);
	TAP_IS(cow_device_open_container(s, "c1", &d), 0, "reopen");
	r = write_flush(d, model, 100, 7);      /* first write */
	if (!r) r = write_flush(d, model, 2, 8); /* overwrite of an upper block */
	if (!r) r = write_flush(d, model, 100, 9); /* the last flushed content must win */
	TAP_IS(r, 0, "three writes, each flushed with its block in the record");
	TAP_IS(copy_file(path, saved), 0, "upper.map as a power cut would leave it");
	TAP_IS(cow_device_close(d), 0, "close");
	{
		struct cow_map_parsed p;
		char *mb = NULL;
		size_t ml = 0;
		uint8_t *st = calloc(SIZE_BLOCKS, 1);
		TAP_OK(!vfs_read_file(path, 64u << 20, &mb, &ml) &&
			       !cow_map_parse((uint8_t *)mb, ml, SIZE_BLOCKS, st, &p, true, path) && p.records == 0 &&
			       p.version == COW_MAP_VERSION,
		       "close compacted upper.map: version %u, no records", COW_MAP_VERSION);
		free(mb);
		free(st);
	}
	TAP_OK(rename(saved, path) == 0, "put back the map with the payload records");
	fd = open(data_path, O_RDWR);
	uint8_t stale[BS];
	memset(stale, 0x5A, sizeof stale);
	TAP_OK(fd >= 0 && pwrite(fd, stale, BS, 100 * BS) == BS && pwrite(fd, stale, BS, 2 * BS) == BS,
	       "upper.data lost both blocks (stale bytes in their place)");
	if (fd >= 0) close(fd);
	{
		char *before = NULL, *after = NULL;
		size_t lb = 0, la = 0;
		int rb = vfs_read_file(path, 64u << 20, &before, &lb);
		TAP_IS(cow_device_open_container_readonly(s, "c1", &d), 0, "a read-only open of the crashed upper");
		TAP_OK(read_all_equal(d, model, SIZE_BLOCKS * BS, "read-only replay"),
		       "it reads the flushed blocks from the journal (replayed in memory)");
		TAP_IS(cow_device_close(d), 0, "close read-only");
		int ra = vfs_read_file(path, 64u << 20, &after, &la);
		TAP_OK(!rb && !ra && la == lb && !memcmp(before, after, la), "and wrote nothing to upper.map");
		free(before);
		free(after);
	}
	TAP_IS(cow_device_open_container(s, "c1", &d), 0, "reopen replays the journal");
	TAP_OK(read_all_equal(d, model, SIZE_BLOCKS * BS, "replayed payloads"), "both blocks read their last flushed content");
	TAP_IS(map_version(path), COW_MAP_VERSION, "upper.map rewritten at open");
	TAP_IS(cow_device_close(d), 0, "close");
	TAP_IS(cow_container_check(s, "c1", &rep), 0, "check clean");

	/* a version-1 map still opens and is upgraded */
	TAP_IS(layer_store_container_create(s, "base", "c2"), 0, "second container");
	char dir2[OCIBLK_PATH_MAX], path2[OCIBLK_PATH_MAX + 32];
	layer_store_container_dir(s, "c2", dir2, sizeof dir2);
	snprintf(path2, sizeof path2, "%s/upper.map", dir2);
	snprintf(data_path, sizeof data_path, "%s/upper.data", dir2);
	uint8_t *m2 = calloc(SIZE_BLOCKS, BS);
	TAP_IS(cow_device_open_container(s, "c2", &d), 0, "open c2");
	TAP_OK(cow_device_read(d, 0, m2, SIZE_BLOCKS * BS) == 0, "read c2");
	TAP_IS(cow_device_close(d), 0, "close c2");
	/* blocks 0-3 and 9 in upper.data as the version-1 map will name them; block 1 zero */
	fd = open(data_path, O_RDWR | O_CREAT, 0644);
	uint8_t blk[BS];
	int ok = fd >= 0;
	for (uint64_t b = 0; b < 10 && ok; b++) {
		pattern_block(blk, 40, b);
		ok = pwrite(fd, blk, BS, b * BS) == BS;
		if (b < 4 || b == 9) memcpy(m2 + b * BS, blk, BS);
	}
	memset(m2 + 1 * BS, 0, BS);
	if (fd >= 0) close(fd);
	TAP_OK(ok && write_v1_map(path2, SIZE_BLOCKS, l[0]) == 0,
	       "c2 given a version-1 upper.map");
	TAP_IS(cow_container_check(s, "c2", &rep), 0, "check reads version 1");
	TAP_IS(cow_device_open_container(s, "c2", &d), 0, "a version-1 map opens");
	TAP_OK(read_all_equal(d, m2, SIZE_BLOCKS * BS, "version 1"), "its snapshot and record read back");
	TAP_IS(map_version(path2), COW_MAP_VERSION, "and it was upgraded to version %u", COW_MAP_VERSION);
	TAP_IS(cow_device_close(d), 0, "close");
	TAP_IS(cow_device_open_container(s, "c2", &d), 0, "reopen upgraded");
	TAP_OK(read_all_equal(d, m2, SIZE_BLOCKS * BS, "upgraded"), "same contents");
	TAP_IS(cow_device_close(d), 0, "close");

	/* an unknown version is refused */
	fd = open(path2, O_RDWR);
	uint32_t v9 = 9;
	TAP_OK(fd >= 0 && pwrite(fd, &v9, 4, 8) == 4, "c2's upper.map claims version 9");
	if (fd >= 0) close(fd);
	log_set_quiet(1);
	TAP_IS(cow_device_open_container(s, "c2", &d), -EUCLEAN, "a map of an unknown version is refused");
	log_set_quiet(0);

	free(m2);
	free(model);
	layer_store_close(s);
	return tap_done();
}
