/* cow_device_open_container_readonly: the container reads as a read-write open would recover it,
 * and nothing of it is written: upper.data and upper.map keep their bytes and their mtime (also
 * with a torn journal tail, which a read-write open would cut, and with a map one commit behind
 * its record, which a read-write open would reset), a never-opened container gets no upper files;
 * writes, discards, write_zeroes, commit and queued writes are -EROFS.  The container lock
 * (FORMAT.md): read-only opens share it, a read-write open or a remove is -EBUSY meanwhile, and a
 * read-only open is -EBUSY while a read-write device holds it. */
#include "tests/unit/test-cow-util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#define SIZE_BLOCKS 64u

static struct layer_store *s;
static char dir[1024], map_path[1100], data_path[1100];

struct snap {
	int exists;
	uint8_t *bytes;
	size_t len;
	struct timespec mtime;
};

static void snap_take(const char *path, struct snap *sn)
{
	struct stat st;
	memset(sn, 0, sizeof *sn);
	if (stat(path, &st) < 0) return;
	sn->exists = 1;
	sn->len = (size_t)st.st_size;
	sn->mtime = st.st_mtim;
	sn->bytes = malloc(sn->len ? sn->len : 1);
	int fd = open(path, O_RDONLY);
	if (fd < 0 || pread(fd, sn->bytes, sn->len, 0) != (ssize_t)sn->len) sn->exists = -1;
	if (fd >= 0) close(fd);
}

static int snap_same(const char *path, const struct snap *a)
{
	struct snap b;
	snap_take(path, &b);
	int same = a->exists == b.exists && a->len == b.len && (!a->exists || !memcmp(a->bytes, b.bytes, a->len)) &&
		   a->mtime.tv_sec == b.mtime.tv_sec && a->mtime.tv_nsec == b.mtime.tv_nsec;
	free(b.bytes);
	return same;
}

static void snap_free(struct snap *sn) { free(sn->bytes); }

static int reads_as(struct cow_device *d, const uint8_t *model)
{
	uint8_t *buf = malloc(SIZE_BLOCKS * BS);
	int r = cow_device_read(d, 0, buf, SIZE_BLOCKS * BS);
	long long at = r ? -2 : test_first_diff(buf, model, SIZE_BLOCKS * BS);
	if (at != -1) tap_diag("read: %d, first difference at byte %lld", r, at);
	free(buf);
	return at == -1;
}

static void write_block(struct cow_device *d, uint8_t *model, uint64_t b, uint64_t v)
{
	pattern_block(model + b * BS, v, b);
	if (cow_device_write(d, b * BS, model + b * BS, BS, 0)) tap_diag("write block %llu failed", (unsigned long long)b);
}

/* Opens read-only, checks reads and refusals, closes; the upper files must not change. */
static void readonly_round(const char *what, const uint8_t *model)
{
	struct snap m, dt;
	struct cow_device *d = NULL, *d2 = NULL, *rw = NULL;
	uint8_t blk[BS] = { 0 };
	snap_take(map_path, &m);
	snap_take(data_path, &dt);
	TAP_IS(cow_device_open_container_readonly(s, "c1", &d), 0, "%s: open read-only", what);
	if (!d) return;
	TAP_OK(cow_device_is_readonly(d), "%s: the device says read-only", what);
	TAP_OK(reads_as(d, model), "%s: reads what a read-write open would", what);
	TAP_IS(cow_device_write(d, 0, blk, BS, 0), -EROFS, "%s: write is -EROFS", what);
	TAP_IS(cow_device_discard(d, 0, BS), -EROFS, "%s: discard is -EROFS", what);
	TAP_IS(cow_device_write_zeroes(d, 0, BS, 0), -EROFS, "%s: write_zeroes is -EROFS", what);
	TAP_IS(cow_device_commit(d, "never", NULL), -EROFS, "%s: commit is -EROFS", what);
	TAP_IS(cow_device_flush(d), 0, "%s: flush succeeds (nothing to make durable)", what);
	struct cow_queue *q = NULL;
	struct iovec iov = { blk, BS };
	struct cow_request req = { .op = COW_OP_WRITE, .offset_bytes = 0, .length_bytes = BS, .iov = &iov, .iov_count = 1 };
	TAP_IS(cow_queue_create(d, 4, &q), 0, "%s: queue on the read-only device", what);
	if (q) {
		TAP_IS(cow_queue_submit(q, &req), -EROFS, "%s: a queued write is -EROFS", what);
		cow_queue_destroy(q);
	}
	TAP_IS(cow_device_open_container_readonly(s, "c1", &d2), 0, "%s: a second read-only open shares the lock", what);
	TAP_IS(cow_device_open_container(s, "c1", &rw), -EBUSY, "%s: a read-write open is -EBUSY meanwhile", what);
	TAP_IS(layer_store_container_remove(s, "c1"), -EBUSY, "%s: remove is -EBUSY meanwhile", what);
	TAP_IS(cow_device_close(d2), 0, "%s: close the second", what);
	TAP_IS(cow_device_close(d), 0, "%s: close", what);
	TAP_OK(snap_same(map_path, &m), "%s: upper.map unchanged (bytes, size, mtime; exists %d)", what, m.exists);
	TAP_OK(snap_same(data_path, &dt), "%s: upper.data unchanged (bytes, size, mtime; exists %d)", what, dt.exists);
	snap_free(&m);
	snap_free(&dt);
}

int main(void)
{
	uint8_t *model = calloc(SIZE_BLOCKS, BS);
	char base[1][SHA256_DIGEST_STRLEN];
	struct spec_extent ext = { 0, SIZE_BLOCKS, 0, 1 };
	struct cow_device *d = NULL, *ro = NULL;
	s = test_store_open("store");
	TAP_IS(test_layer_write(s, NULL, SIZE_BLOCKS, &ext, 1, model, 1, base[0]), 0, "base layer");
	TAP_IS(test_image_put(s, "img", SIZE_BLOCKS * BS, base, 1), 0, "image");
	TAP_IS(layer_store_container_create(s, "img", "c1"), 0, "container");
	layer_store_container_dir(s, "c1", dir, sizeof dir);
	snprintf(map_path, sizeof map_path, "%s/upper.map", dir);
	snprintf(data_path, sizeof data_path, "%s/upper.data", dir);

	readonly_round("never opened", model);
	TAP_OK(access(map_path, F_OK) != 0 && access(data_path, F_OK) != 0, "never opened: no upper files were created");

	TAP_IS(cow_device_open_container(s, "c1", &d), 0, "read-write open");
	for (uint64_t b = 3; b < 6; b++) write_block(d, model, b, 2);
	TAP_IS(cow_device_discard(d, 10 * BS, BS), 0, "discard block 10");
	memset(model + 10 * BS, 0, BS);
	TAP_IS(cow_device_open_container_readonly(s, "c1", &ro), -EBUSY, "read-only open while read-write: -EBUSY");
	TAP_IS(cow_device_close(d), 0, "close (flushes)");
	readonly_round("flushed upper", model);

	/* a torn append in the journal's zero tail: a read-write open cuts it, read-only leaves it */
	struct stat st;
	int fd = open(map_path, O_RDWR);
	uint8_t junk[64];
	memset(junk, 0xA5, sizeof junk);
	TAP_OK(fd >= 0 && fstat(fd, &st) == 0 && st.st_size > 4096 &&
	       pwrite(fd, junk, sizeof junk, st.st_size - 4096) == (ssize_t)sizeof junk, "scribble in the map's tail");
	if (fd >= 0) close(fd);
	readonly_round("torn tail", model);

	/* the map one commit behind the record: a crash after the commit wrote the records */
	struct snap m, dt;
	snap_take(map_path, &m);
	snap_take(data_path, &dt);
	TAP_IS(cow_device_open_container(s, "c1", &d), 0, "read-write open to commit");
	TAP_IS(cow_device_commit(d, "img2", NULL), 0, "commit");
	TAP_IS(cow_device_close(d), 0, "close");
	int restored = 0;
	for (int i = 0; i < 2; i++) {
		const char *p = i ? data_path : map_path;
		const struct snap *sn = i ? &dt : &m;
		fd = open(p, O_WRONLY | O_TRUNC);
		restored += fd >= 0 && pwrite(fd, sn->bytes, sn->len, 0) == (ssize_t)sn->len;
		if (fd >= 0) close(fd);
	}
	TAP_IS(restored, 2, "upper files put back as they were before the commit");
	snap_free(&m);
	snap_free(&dt);
	readonly_round("map one commit behind", model);
	TAP_IS(cow_device_open_container(s, "c1", &d), 0, "read-write open resets that upper");
	TAP_OK(d && reads_as(d, model), "and reads the same");
	if (d) cow_device_close(d);

	TAP_IS(layer_store_container_remove(s, "c1"), 0, "remove once nothing holds it");
	free(model);
	layer_store_close(s);
	return tap_done();
}
