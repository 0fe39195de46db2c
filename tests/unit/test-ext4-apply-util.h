/* Helpers for the ext4_apply tests: tar layers built in memory with libarchive's writer (pax),
 * applied on scratch cow devices of a temp store, and the result exported to a raw image that is
 * checked with e2fsck -fn and read back through libext2fs's own unix I/O manager (an independent
 * path from the cow io_manager that wrote it). */
#ifndef OCIBLK_TESTS_EXT4_APPLY_UTIL_H
#define OCIBLK_TESTS_EXT4_APPLY_UTIL_H

#define OCIBLK_IMAGE_IMPORT_INTERNAL
#include "image-import/ext4_apply.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>
#include <ext2fs/ext2fs.h>

#include "common/log.h"
#include "cow/cow.h"
#include "layer-store/layer_store.h"
#include "tests/lib/tap.h"

/* ---------------------------------------------------------------- tar building -------------- */

struct tarbuf {
	struct archive *w;
	uint8_t *data;
	size_t len, cap;
};

static la_ssize_t tarbuf_write_cb(struct archive *a, void *priv, const void *buf, size_t n)
{
	struct tarbuf *t = priv;
	(void)a;
	if (t->len + n > t->cap) {
		size_t nc = t->cap ? t->cap * 2 : 1 << 16;
		while (nc < t->len + n) nc *= 2;
		uint8_t *nd = realloc(t->data, nc);
		if (!nd) return -1;
		t->data = nd;
		t->cap = nc;
	}
	memcpy(t->data + t->len, buf, n);
	t->len += n;
	return (la_ssize_t)n;
}

static inline void tar_begin_format(struct tarbuf *t, int (*set_format)(struct archive *))
{
	memset(t, 0, sizeof(*t));
	t->w = archive_write_new();
	set_format(t->w);
	archive_write_set_bytes_per_block(t->w, 0);
	if (archive_write_open(t->w, t, NULL, tarbuf_write_cb, NULL) != ARCHIVE_OK) {
		tap_diag("archive_write_open: %s", archive_error_string(t->w));
		exit(1);
	}
}

static inline void tar_begin(struct tarbuf *t) { tar_begin_format(t, archive_write_set_format_pax); }

static inline void tar_end(struct tarbuf *t)
{
	archive_write_close(t->w);
	archive_write_free(t->w);
	t->w = NULL;
}

static inline void tar_free(struct tarbuf *t) { free(t->data); memset(t, 0, sizeof(*t)); }

/* One entry; data (len bytes) for regular files.  xattrs: NULL-terminated name/value pairs. */
struct tar_spec {
	const char *path;
	unsigned type;           /* AE_IF* */
	unsigned perm;
	int64_t uid, gid;
	int64_t mtime;
	long mtime_nsec;
	const char *link;        /* symlink target */
	const char *hardlink;    /* hard link target */
	const void *data;
	size_t len;
	unsigned rmajor, rminor;
	const char *const *xattrs;  /* name, value (string), name, value, ..., NULL */
	const size_t *xattr_lens;   /* value lengths (NULL: strlen) */
};

static inline void tar_add(struct tarbuf *t, const struct tar_spec *s)
{
	struct archive_entry *e = archive_entry_new();
	archive_entry_set_pathname(e, s->path);
	archive_entry_set_filetype(e, s->type ? s->type : AE_IFREG);
	archive_entry_set_perm(e, s->perm ? s->perm : 0644);
	archive_entry_set_uid(e, s->uid);
	archive_entry_set_gid(e, s->gid);
	archive_entry_set_mtime(e, s->mtime ? s->mtime : 1600000000, s->mtime_nsec);
	if (s->link) archive_entry_set_symlink(e, s->link);
	if (s->hardlink) archive_entry_set_hardlink(e, s->hardlink);
	if (s->type == AE_IFCHR || s->type == AE_IFBLK) {
		archive_entry_set_rdevmajor(e, s->rmajor);
		archive_entry_set_rdevminor(e, s->rminor);
	}
	for (size_t i = 0; s->xattrs && s->xattrs[2 * i]; i++)
		archive_entry_xattr_add_entry(e, s->xattrs[2 * i], s->xattrs[2 * i + 1],
					      s->xattr_lens ? s->xattr_lens[i] : strlen(s->xattrs[2 * i + 1]));
	archive_entry_set_size(e, (!s->hardlink && (!s->type || s->type == AE_IFREG)) ? (la_int64_t)s->len : 0);
	if (archive_write_header(t->w, e) != ARCHIVE_OK) {
		tap_diag("archive_write_header %s: %s", s->path, archive_error_string(t->w));
		exit(1);
	}
	if (s->len && !s->hardlink && (!s->type || s->type == AE_IFREG)) archive_write_data(t->w, s->data, s->len);
	archive_entry_free(e);
}

/* ---------------------------------------------------------------- devices ------------------- */

static inline struct archive *tar_reader(const struct tarbuf *t)
{
	struct archive *r = archive_read_new();
	archive_read_support_format_tar(r);
	if (archive_read_open_memory(r, t->data, t->len) != ARCHIVE_OK) {
		tap_diag("archive_read_open_memory: %s", archive_error_string(r));
		archive_read_free(r);
		return NULL;
	}
	return r;
}

static inline struct ext4_params test_params(void)
{
	struct ext4_params p;
	for (int i = 0; i < 16; i++) {
		p.uuid[i] = (uint8_t)(0x10 + i);
		p.hash_seed[i] = (uint8_t)(0xa0 + i);
	}
	p.timestamp_unix = 1700000000;
	return p;
}

/* Applies layer tar (mkfs first when dev has no layers yet).  Returns ext4_apply_tar's result. */
static inline int apply_layer(struct cow_device *dev, const struct tarbuf *t, bool mkfs, const char *label)
{
	struct ext4_params p = test_params();
	struct ext4_apply *fs;
	int r = mkfs ? ext4_apply_mkfs(dev, &p, label, &fs) : ext4_apply_open(dev, &p, label, &fs);
	if (r) return r;
	struct archive *rd = tar_reader(t);
	r = rd ? ext4_apply_tar(fs, rd, label) : -EIO;
	if (rd) archive_read_free(rd);
	if (r) {
		ext4_apply_abort(fs);
		return r;
	}
	return ext4_apply_close(fs);
}

/* Exports the whole device to a sparse raw file. */
static inline int export_raw(struct cow_device *dev, const char *path)
{
	uint64_t size = cow_device_size_bytes(dev), blocks = size / 4096;
	uint8_t *buf = malloc(256 * 4096);
	int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644), r = 0;
	if (fd < 0 || !buf || ftruncate(fd, (off_t)size)) {
		r = -errno;
		goto out;
	}
	for (uint64_t b = 0; b < blocks;) {
		enum cow_block_state st;
		uint64_t run;
		r = cow_device_block_status(dev, b, blocks - b, &st, &run);
		if (r) goto out;
		if (st != COW_BLOCK_ZERO) {
			for (uint64_t k = 0; k < run; k += 256) {
				uint64_t n = run - k < 256 ? run - k : 256;
				r = cow_device_read(dev, (b + k) * 4096, buf, n * 4096);
				if (r) goto out;
				if (pwrite(fd, buf, n * 4096, (off_t)((b + k) * 4096)) != (ssize_t)(n * 4096)) {
					r = -EIO;
					goto out;
				}
			}
		}
		b += run;
	}
out:
	if (fd >= 0) close(fd);
	free(buf);
	return r;
}

static inline const char *e2fsck_path(void)
{
	static const char *const c[] = { "/sbin/e2fsck", "/usr/sbin/e2fsck", "/bin/e2fsck", "/usr/bin/e2fsck" };
	for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++)
		if (!access(c[i], X_OK)) return c[i];
	return NULL;
}

/* e2fsck -fn on a raw image: 0 when clean (its output is shown as diagnostics otherwise). */
static inline int run_e2fsck(const char *image)
{
	const char *e2fsck = e2fsck_path();
	char cmd[4096];
	if (!e2fsck) {
		tap_diag("e2fsck not found");
		return -1;
	}
	snprintf(cmd, sizeof cmd, "%s -fn '%s' > '%s.fsck' 2>&1", e2fsck, image, image);
	int st = system(cmd);
	int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
	if (code) {
		char line[512];
		snprintf(cmd, sizeof cmd, "%s.fsck", image);
		FILE *f = fopen(cmd, "r");
		while (f && fgets(line, sizeof line, f)) tap_diag("e2fsck: %s", strtok(line, "\n") ? line : "");
		if (f) fclose(f);
	}
	return code;
}

/* ---------------------------------------------------------------- checks via libext2fs ------ */

static inline ext2_filsys check_open(const char *image)
{
	ext2_filsys fs = NULL;
	errcode_t err = ext2fs_open(image, EXT2_FLAG_64BITS, 0, 0, unix_io_manager, &fs);
	if (err) {
		tap_diag("ext2fs_open %s: %ld", image, (long)err);
		return NULL;
	}
	return fs;
}

/* Looks up path without following its last component: 0 if missing. */
static inline ext2_ino_t check_lookup(ext2_filsys fs, const char *path)
{
	ext2_ino_t ino = 0;
	if (ext2fs_namei(fs, EXT2_ROOT_INO, EXT2_ROOT_INO, path, &ino)) return 0;
	return ino;
}

static inline int check_inode(ext2_filsys fs, const char *path, struct ext2_inode_large *in)
{
	ext2_ino_t ino = check_lookup(fs, path);
	memset(in, 0, sizeof(*in));
	if (!ino) return -ENOENT;
	return ext2fs_read_inode_full(fs, ino, (struct ext2_inode *)in, sizeof(*in)) ? -EIO : 0;
}

/* Reads a regular file's content (at most cap bytes); returns its length or -1. */
static inline long check_read(ext2_filsys fs, const char *path, void *buf, size_t cap)
{
	ext2_ino_t ino = check_lookup(fs, path);
	ext2_file_t f;
	unsigned got = 0;
	if (!ino || ext2fs_file_open(fs, ino, 0, &f)) return -1;
	uint64_t size = EXT2_I_SIZE(ext2fs_file_get_inode(f));
	if (size > cap) size = cap;
	errcode_t err = ext2fs_file_read(f, buf, (unsigned)size, &got);
	ext2fs_file_close(f);
	return err ? -1 : (long)got;
}

static inline int check_symlink(ext2_filsys fs, const char *path, char *out, size_t cap)
{
	struct ext2_inode_large in;
	if (check_inode(fs, path, &in) || !LINUX_S_ISLNK(in.i_mode)) return -1;
	size_t len = EXT2_I_SIZE(&in);
	if (len + 1 > cap) return -1;
	if (ext2fs_is_fast_symlink((struct ext2_inode *)&in)) {
		memcpy(out, in.i_block, len);
	} else {
		long n = 0;
		ext2_file_t f;
		unsigned got = 0;
		if (ext2fs_file_open(fs, check_lookup(fs, path), 0, &f)) return -1;
		n = ext2fs_file_read(f, out, (unsigned)len, &got) ? -1 : (long)got;
		ext2fs_file_close(f);
		if (n != (long)len) return -1;
	}
	out[len] = '\0';
	return 0;
}

/* The value of xattr name on path into out; its length or -1. */
static inline long check_xattr(ext2_filsys fs, const char *path, const char *name, void *out, size_t cap)
{
	ext2_ino_t ino = check_lookup(fs, path);
	struct ext2_xattr_handle *h;
	void *val = NULL;
	size_t len = 0;
	long r = -1;
	if (!ino || ext2fs_xattrs_open(fs, ino, &h)) return -1;
	if (!ext2fs_xattrs_read(h) && !ext2fs_xattr_get(h, name, &val, &len) && len <= cap) {
		memcpy(out, val, len);
		r = (long)len;
	}
	if (val) ext2fs_free_mem(&val);
	ext2fs_xattrs_close(&h);
	return r;
}

static inline uint32_t t_uid(const struct ext2_inode_large *in)
{
	return in->i_uid | (uint32_t)in->osd2.linux2.l_i_uid_high << 16;
}

static inline uint32_t t_gid(const struct ext2_inode_large *in)
{
	return in->i_gid | (uint32_t)in->osd2.linux2.l_i_gid_high << 16;
}

#endif
