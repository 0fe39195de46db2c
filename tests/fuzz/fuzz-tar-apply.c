/* libFuzzer target: the input bytes are a tar layer, applied with ext4_apply_tar on top of a small
 * base filesystem (directories, files, a symlink, a hard link, a device, xattrs) on a scratch cow
 * device.  Whatever the bytes, the applier must return 0 or -errno: never crash, leak or touch
 * memory out of bounds (ASan+UBSan are on).  A successful apply is also closed (bitmaps, group
 * descriptors and superblock written), so the close path sees every state the applier leaves.
 *
 * The store lives in a private temp directory made on the first input and removed at exit; the
 * base layer is built once, each input gets a fresh scratch device over it.
 *
 * With OCIBLK_FUZZ_FSCK=1 every accepted layer is also exported and must pass e2fsck -fn (about
 * ten times slower, but it turns "does not crash" into "always leaves a consistent filesystem"). */
#define OCIBLK_IMAGE_IMPORT_INTERNAL
#include "image-import/ext4_apply.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>

#include "common/log.h"
#include "cow/cow.h"
#include "layer-store/layer_store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_DEV_BYTES (32ull << 20)

static struct layer_store *store;
static char base_digest[SHA256_DIGEST_STRLEN];
static char tmpdir[256];

static const struct ext4_params params = {
	.uuid = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 },
	.hash_seed = { 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1 },
	.timestamp_unix = 1700000000,
};

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st; (void)flag; (void)ftw;
	return remove(p);
}

static void cleanup(void)
{
	if (store) layer_store_close(store);
	if (tmpdir[0]) nftw(tmpdir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

struct membuf {
	uint8_t *data;
	size_t len, cap;
};

static la_ssize_t mem_write(struct archive *a, void *priv, const void *buf, size_t n)
{
	struct membuf *m = priv;
	(void)a;
	if (m->len + n > m->cap) {
		size_t nc = m->cap ? m->cap * 2 : 65536;
		while (nc < m->len + n) nc *= 2;
		uint8_t *nd = realloc(m->data, nc);
		if (!nd) abort();
		m->data = nd;
		m->cap = nc;
	}
	memcpy(m->data + m->len, buf, n);
	m->len += n;
	return (la_ssize_t)n;
}

static void add(struct archive *w, const char *path, unsigned type, const char *data, const char *link,
		const char *hardlink)
{
	struct archive_entry *e = archive_entry_new();
	size_t len = data ? strlen(data) : 0;
	archive_entry_set_pathname(e, path);
	archive_entry_set_filetype(e, type);
	archive_entry_set_perm(e, type == AE_IFDIR ? 0755 : 0644);
	archive_entry_set_mtime(e, 1600000000, 0);
	if (link) archive_entry_set_symlink(e, link);
	if (hardlink) archive_entry_set_hardlink(e, hardlink);
	if (type == AE_IFCHR) archive_entry_set_rdev(e, 0x0103);
	if (!strcmp(path, "d/f")) archive_entry_xattr_add_entry(e, "user.k", "v", 1);
	archive_entry_set_size(e, hardlink ? 0 : (la_int64_t)len);
	if (archive_write_header(w, e) != ARCHIVE_OK) abort();
	if (len && !hardlink) archive_write_data(w, data, len);
	archive_entry_free(e);
}

/* The base layer every input is applied on. */
static void setup(void)
{
	const char *none[1] = { NULL };
	struct membuf m = { 0 };
	struct cow_device *dev;
	struct ext4_apply *fs;
	const char *t = getenv("TMPDIR");

	log_set_quiet(1);
	snprintf(tmpdir, sizeof tmpdir, "%s/fuzz-tar-apply.XXXXXX", t && *t ? t : "/tmp");
	if (!mkdtemp(tmpdir)) abort();
	atexit(cleanup);
	if (layer_store_open(tmpdir, LAYER_STORE_CREATE, &store)) abort();

	struct archive *w = archive_write_new();
	archive_write_set_format_pax(w);
	archive_write_set_bytes_per_block(w, 0);
	if (archive_write_open(w, &m, NULL, mem_write, NULL) != ARCHIVE_OK) abort();
	add(w, "d", AE_IFDIR, NULL, NULL, NULL);
	add(w, "d/f", AE_IFREG, "file data", NULL, NULL);
	add(w, "d/sub/g", AE_IFREG, "g", NULL, NULL);
	add(w, "d/h", AE_IFREG, NULL, NULL, "d/f");
	add(w, "l", AE_IFLNK, NULL, "d", NULL);
	add(w, "dev/null", AE_IFCHR, NULL, NULL, NULL);
	add(w, "e", AE_IFDIR, NULL, NULL, NULL);
	archive_write_close(w);
	archive_write_free(w);

	struct archive *r = archive_read_new();
	archive_read_support_format_tar(r);
	if (archive_read_open_memory(r, m.data, m.len) != ARCHIVE_OK) abort();
	if (cow_device_open_scratch(store, none, 0, FUZZ_DEV_BYTES, &dev)) abort();
	if (ext4_apply_mkfs(dev, &params, "fuzz base", &fs)) abort();
	if (ext4_apply_tar(fs, r, "fuzz base")) abort();
	if (ext4_apply_close(fs)) abort();
	if (cow_device_commit_layer(dev, base_digest)) abort();
	cow_device_close(dev);
	archive_read_free(r);
	free(m.data);
}

/* Exports dev to a file and runs e2fsck -fn on it: aborts (a finding) unless clean. */
static void fsck_device(struct cow_device *dev)
{
	static uint8_t buf[1 << 20];
	char img[300], cmd[700];
	snprintf(img, sizeof img, "%s/fsck.img", tmpdir);
	int fd = open(img, O_CREAT | O_TRUNC | O_WRONLY, 0600);
	if (fd < 0) abort();
	for (uint64_t off = 0; off < FUZZ_DEV_BYTES; off += sizeof(buf)) {
		if (cow_device_read(dev, off, buf, sizeof(buf))) abort();
		if (pwrite(fd, buf, sizeof(buf), (off_t)off) != (ssize_t)sizeof(buf)) abort();
	}
	close(fd);
	snprintf(cmd, sizeof cmd, "PATH=$PATH:/sbin:/usr/sbin e2fsck -fn %s > %s.log 2>&1", img, img);
	if (system(cmd) != 0) {
		fprintf(stderr, "fuzz-tar-apply: e2fsck found errors, see %s.log\n", img);
		abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *chain[1] = { base_digest };
	struct cow_device *dev;
	struct ext4_apply *fs;

	if (!store) setup();
	if (cow_device_open_scratch(store, chain, 1, FUZZ_DEV_BYTES, &dev)) abort();
	if (ext4_apply_open(dev, &params, "fuzz", &fs)) abort();
	struct archive *r = archive_read_new();
	archive_read_support_format_tar(r);
	if (archive_read_open_memory(r, data, size) == ARCHIVE_OK && ext4_apply_tar(fs, r, "fuzz") == 0) {
		if (ext4_apply_close(fs)) abort(); /* closing a filesystem the applier accepted must work */
		if (getenv("OCIBLK_FUZZ_FSCK")) fsck_device(dev);
	} else {
		ext4_apply_abort(fs);
	}
	archive_read_free(r);
	cow_device_close(dev);
	return 0;
}
