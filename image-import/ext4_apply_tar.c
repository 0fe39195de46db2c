/* Applies one tar layer to the ext4 filesystem, as container runtimes extract layers (the
 * semantics follow umoci's and containerd's extractors and the OCI image spec's changeset rules):
 *
 *   - Paths are normalised ("./a//b/" -> "a/b"); a ".." component or an escape is an error.
 *   - Parent directories are resolved without ever following a symlink: every intermediate
 *     component must be a directory (a symlink or another non-directory there is an error naming
 *     the entry); missing ones are created (0755, root, the image timestamp).
 *   - An entry replaces what is at its path, except that a directory entry over an existing
 *     directory only updates its metadata (xattrs are replaced by the entry's).
 *   - Hard links point at the inode found at the target path (this layer's or a lower one's);
 *     a missing target or a directory is an error.
 *   - Whiteouts ".wh.NAME" and opaque markers ".wh..wh..opq" remove what lower layers put there:
 *     a path written earlier in this same layer (or an ancestor of one) is kept, its lower
 *     children are still removed (umoci's upperPaths rule).
 *   - File data is written block by block; all-zero 4 KiB blocks and tar holes stay holes.
 *   - ctime and crtime are the image timestamp; a missing mtime is the image timestamp too and a
 *     missing atime is the mtime: the result depends on nothing but the input.
 * Every loop over the archive is bounded by the limits in common/limits.h. */
#define OCIBLK_IMAGE_IMPORT_INTERNAL
#include "image-import/ext4_apply.h"
#include "image-import/ext4_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <archive.h>
#include <archive_entry.h>

#include "common/limits.h"
#include "common/log.h"

#define WH_PREFIX ".wh."
#define WH_OPAQUE ".wh..wh..opq"
#define WH_META_PREFIX ".wh..wh."

static const uint8_t zero_block[4096];

static bool is_zero(const uint8_t *p, size_t n)
{
	return n <= sizeof(zero_block) ? !memcmp(p, zero_block, n) : false;
}

/* "a/b//./c/" -> "a/b/c"; leading "/" and "./" vanish; "" is the root.  ".." is refused. */
static int path_normalize(struct ext4_apply *a, const char *raw, char *out, size_t cap, const char *what)
{
	size_t o = 0;
	const char *p = raw;

	while (*p) {
		const char *s = p;
		while (*p && *p != '/') p++;
		size_t n = (size_t)(p - s);
		if (*p) p++;
		if (n == 0 || (n == 1 && s[0] == '.')) continue;
		if (n == 2 && s[0] == '.' && s[1] == '.')
			return log_error(-EINVAL, "%s: entry %s: %s has a \"..\" component (escapes the image root)",
					 a->label, a->entry, what);
		if (n > EXT2_NAME_LEN)
			return log_error(-ENAMETOOLONG, "%s: entry %s: %s has a component longer than %d bytes",
					 a->label, a->entry, what, EXT2_NAME_LEN);
		if (o + n + 2 > cap)
			return log_error(-ENAMETOOLONG, "%s: entry %s: %s too long", a->label, a->entry, what);
		if (o) out[o++] = '/';
		memcpy(out + o, s, n);
		o += n;
	}
	out[o] = '\0';
	return 0;
}

static int mark_upper(struct ext4_apply *a, const char *path)
{
	size_t len = strlen(path);
	while (len) {
		int r = ext4_pathset_add(&a->upper, path, len);
		if (r) return log_error(r, "%s: out of memory", a->label);
		while (len && path[len - 1] != '/') len--;
		if (len) len--;
	}
	return 0;
}

static struct ext4_meta default_dir_meta(const struct ext4_apply *a)
{
	struct ext4_meta m = { .mode = LINUX_S_IFDIR | 0755 };
	m.atime.sec = m.mtime.sec = a->params.timestamp_unix;
	return m;
}

/* Resolves the directory that holds the last component of path.  With create, missing
 * directories are made and a non-directory in the way is an error (logged); without, -ENOENT or
 * -ENOTDIR comes back unlogged.  *base points at the last component inside path. */
static int resolve_parent(struct ext4_apply *a, const char *path, bool create, ext2_ino_t *dir_out,
			  const char **base)
{
	ext2_ino_t dir = EXT2_ROOT_INO;
	const char *p = path;
	char comp[EXT2_NAME_LEN + 1];

	for (const char *slash; (slash = strchr(p, '/')); p = slash + 1) {
		size_t n = (size_t)(slash - p);
		ext2_ino_t child;
		memcpy(comp, p, n);
		comp[n] = '\0';
		int r = ext4_dir_lookup(a, dir, comp, &child);
		if (r == -ENOENT) {
			if (!create) return -ENOENT;
			struct ext4_meta m = default_dir_meta(a);
			r = ext4_mkdir(a, dir, comp, &m, 0, &child);
			if (r) return r;
		} else if (r) {
			return r;
		} else {
			struct ext2_inode_large in;
			r = ext4_read_inode(a, child, &in);
			if (r) return r;
			if (!LINUX_S_ISDIR(in.i_mode)) {
				if (!create) return -ENOTDIR;
				return log_error(-ENOTDIR, "%s: entry %s: parent %.*s is %s, not a directory%s", a->label,
						 a->entry, (int)(slash - path), path,
						 LINUX_S_ISLNK(in.i_mode) ? "a symlink" : "a non-directory",
						 LINUX_S_ISLNK(in.i_mode) ? " (symlinks are never followed)" : "");
			}
		}
		dir = child;
	}
	*dir_out = dir;
	*base = p;
	return 0;
}

/* ---------------------------------------------------------------- metadata ------------------ */

static int entry_meta(struct ext4_apply *a, struct archive_entry *e, uint16_t type, struct ext4_meta *m)
{
	int64_t uid = archive_entry_uid(e), gid = archive_entry_gid(e);
	if (uid < 0 || uid > UINT32_MAX - 1 || gid < 0 || gid > UINT32_MAX - 1)
		return log_error(-EINVAL, "%s: entry %s: uid/gid out of range", a->label, a->entry);
	m->mode = type | (uint16_t)(archive_entry_mode(e) & 07777);
	/* symlink(2) always makes 0777: a symlink's mode bits mean nothing and runtimes never set them */
	if (type == AE_IFLNK) m->mode = type | 0777;
	m->uid = (uint32_t)uid;
	m->gid = (uint32_t)gid;
	if (archive_entry_mtime_is_set(e)) {
		m->mtime.sec = archive_entry_mtime(e);
		m->mtime.nsec = archive_entry_mtime_nsec(e);
	} else {
		m->mtime.sec = a->params.timestamp_unix;
		m->mtime.nsec = 0;
	}
	if (archive_entry_atime_is_set(e)) {
		m->atime.sec = archive_entry_atime(e);
		m->atime.nsec = archive_entry_atime_nsec(e);
	} else {
		m->atime = m->mtime;
	}
	return 0;
}

static bool xattr_name_ok(const char *name)
{
	static const char *const prefixes[] = { "user.", "trusted.", "security." };
	size_t len = strlen(name);
	if (len == 0 || len > 255) return false;
	for (size_t i = 0; i < sizeof(prefixes) / sizeof(prefixes[0]); i++) {
		size_t pl = strlen(prefixes[i]);
		if (len > pl && !strncmp(name, prefixes[i], pl)) return true;
	}
	return !strcmp(name, "system.posix_acl_access") || !strcmp(name, "system.posix_acl_default");
}

struct xattr_names {
	char **names;
	size_t count, cap;
	int err;
};

static int collect_xattr(char *name, char *value, size_t value_len, void *priv)
{
	struct xattr_names *x = priv;
	if (x->count == x->cap) {
		size_t ncap = x->cap ? x->cap * 2 : 16;
		char **nn = realloc(x->names, ncap * sizeof(*nn));
		if (!nn) goto nomem;
		x->names = nn;
		x->cap = ncap;
	}
	if (!(x->names[x->count] = strdup(name))) goto nomem;
	x->count++;
	return 0;
nomem:
	x->err = -ENOMEM;
	return XATTR_ABORT;
}

/* Sets the entry's xattrs on ino; with replace, the ones already there go first. */
static int apply_xattrs(struct ext4_apply *a, struct archive_entry *e, ext2_ino_t ino, bool replace)
{
	struct ext2_xattr_handle *h = NULL;
	struct xattr_names old = { 0 };
	const char *name;
	const void *value;
	size_t size;
	errcode_t err;
	int r = 0, n = archive_entry_xattr_reset(e);
	bool changed = false;

	if (n <= 0 && !replace) return 0;
	if (n > (int)IMAGE_IMPORT_XATTRS_PER_ENTRY_MAX)
		return log_error(-E2BIG, "%s: entry %s: %d xattrs (limit %u)", a->label, a->entry, n,
				 IMAGE_IMPORT_XATTRS_PER_ENTRY_MAX);
	err = ext2fs_xattrs_open(a->fs, ino, &h);
	if (!err) err = ext2fs_xattrs_read(h);
	if (err) {
		r = ext4_fail(a, err, "read xattrs");
		goto out;
	}
	if (replace) {
		err = ext2fs_xattrs_iterate(h, collect_xattr, &old);
		if (old.err) {
			r = log_error(old.err, "%s: out of memory", a->label);
			goto out;
		}
		if (err) {
			r = ext4_fail(a, err, "list xattrs");
			goto out;
		}
		for (size_t i = 0; i < old.count; i++) {
			err = ext2fs_xattr_remove(h, old.names[i]);
			if (err) {
				r = ext4_fail(a, err, "remove xattr");
				goto out;
			}
			changed = true;
		}
	}
	while (archive_entry_xattr_next(e, &name, &value, &size) == ARCHIVE_OK) {
		if (!name || !xattr_name_ok(name)) {
			log_warn("%s: entry %s: skipping xattr %s (not a user., trusted., security. or ACL name)",
				 a->label, a->entry, name ? name : "(null)");
			continue;
		}
		if (size > IMAGE_IMPORT_XATTR_VALUE_BYTES_MAX) {
			r = log_error(-E2BIG, "%s: entry %s: xattr %s is %zu bytes (limit %u)", a->label, a->entry,
				      name, size, IMAGE_IMPORT_XATTR_VALUE_BYTES_MAX);
			goto out;
		}
		err = ext2fs_xattr_set(h, name, value, size);
		if (err == EXT2_ET_EA_NO_SPACE) {
			r = log_error(-E2BIG, "%s: entry %s: xattrs do not fit in the inode and one block", a->label,
				      a->entry);
			goto out;
		}
		if (err) {
			r = ext4_fail(a, err, "set xattr");
			goto out;
		}
		changed = true;
	}
	if (changed) {
		err = ext2fs_xattrs_write(h);
		if (err == EXT2_ET_EA_NO_SPACE) {
			r = log_error(-E2BIG, "%s: entry %s: xattrs do not fit in the inode and one block", a->label,
				      a->entry);
			goto out;
		}
		if (err) r = ext4_fail(a, err, "write xattrs");
	}
out:
	for (size_t i = 0; i < old.count; i++) free(old.names[i]);
	free(old.names);
	if (h) ext2fs_xattrs_close(&h);
	return r;
}

/* ---------------------------------------------------------------- file data ----------------- */

struct data_writer {
	struct ext4_apply *a;
	ext2_file_t file;
	uint64_t size;
	uint64_t block;        /* logical block held in buf, UINT64_MAX: none */
	uint8_t buf[4096];
};

static int data_flush_block(struct data_writer *w)
{
	if (w->block == UINT64_MAX) return 0;
	uint64_t off = w->block * sizeof(w->buf);
	size_t n = w->size - off < sizeof(w->buf) ? (size_t)(w->size - off) : sizeof(w->buf);
	unsigned written = 0;
	errcode_t err = 0;

	w->block = UINT64_MAX;
	if (is_zero(w->buf, n)) return 0; /* stays a hole */
	err = ext2fs_file_llseek(w->file, off, EXT2_SEEK_SET, NULL);
	if (!err) err = ext2fs_file_write(w->file, w->buf, (unsigned)n, &written);
	if (!err && written != n) err = EXT2_ET_SHORT_WRITE;
	return err ? ext4_fail(w->a, err, "write file data") : 0;
}

static int data_put(struct data_writer *w, uint64_t off, const uint8_t *p, size_t len)
{
	while (len) {
		uint64_t b = off / sizeof(w->buf);
		size_t in = (size_t)(off % sizeof(w->buf)), n = sizeof(w->buf) - in;
		if (n > len) n = len;
		if (b != w->block) {
			if (w->block != UINT64_MAX && b < w->block)
				return log_error(-EINVAL, "%s: entry %s: data blocks out of order", w->a->label,
						 w->a->entry);
			int r = data_flush_block(w);
			if (r) return r;
			w->block = b;
			memset(w->buf, 0, sizeof(w->buf));
		}
		memcpy(w->buf + in, p, n);
		off += n;
		p += n;
		len -= n;
	}
	return 0;
}

static int write_data(struct ext4_apply *a, struct archive *tar, ext2_ino_t ino, uint64_t size)
{
	struct data_writer *w = calloc(1, sizeof(*w));
	errcode_t err;
	int r = 0;

	if (!w) return log_error(-ENOMEM, "%s: out of memory", a->label);
	w->a = a;
	w->size = size;
	w->block = UINT64_MAX;
	err = ext2fs_file_open2(a->fs, ino, NULL, EXT2_FILE_WRITE, &w->file);
	if (err) {
		free(w);
		return ext4_fail(a, err, "open file");
	}
	for (;;) {
		const void *buf;
		size_t len;
		la_int64_t off;
		int ar = archive_read_data_block(tar, &buf, &len, &off);
		if (ar == ARCHIVE_EOF) break;
		if (ar < ARCHIVE_WARN) {
			r = log_error(-EIO, "%s: entry %s: read data: %s", a->label, a->entry,
				      archive_error_string(tar) ? archive_error_string(tar) : "error");
			goto out;
		}
		if (off < 0 || (uint64_t)off > size || len > size - (uint64_t)off) {
			r = log_error(-EINVAL, "%s: entry %s: data beyond the entry's size", a->label, a->entry);
			goto out;
		}
		r = data_put(w, (uint64_t)off, buf, len);
		if (r) goto out;
	}
	r = data_flush_block(w);
	if (r) goto out;
	err = ext2fs_file_set_size2(w->file, size);
	if (err) r = ext4_fail(a, err, "set file size");
out:
	err = ext2fs_file_close(w->file);
	if (err && !r) r = ext4_fail(a, err, "close file");
	free(w);
	return r;
}

/* ---------------------------------------------------------------- whiteouts ----------------- */

static char *path_join(const char *dir, const char *name)
{
	size_t dl = strlen(dir), nl = strlen(name);
	char *p = malloc(dl + nl + 2);
	if (!p) return NULL;
	memcpy(p, dir, dl);
	if (dl) p[dl++] = '/';
	memcpy(p + dl, name, nl + 1);
	return p;
}

/* Removes name (at path dir_path/name, inode ino) unless this layer wrote it; if it did, walks
 * into it (when a directory) and removes what it did not write. */
static int whiteout_walk(struct ext4_apply *a, ext2_ino_t dir, const char *dir_path, const char *name, ext2_ino_t ino)
{
	char *path = path_join(dir_path, name);
	int r;

	if (!path) return log_error(-ENOMEM, "%s: out of memory", a->label);
	/* The filesystem's own lost+found (e2fsck needs it) is not image content: never whited out. */
	if (dir == EXT2_ROOT_INO && !strcmp(name, "lost+found")) {
		free(path);
		return 0;
	}
	if (!ext4_pathset_has(&a->upper, path, strlen(path))) {
		free(path);
		return ext4_remove(a, dir, name, ino);
	}
	struct ext2_inode_large in;
	r = ext4_read_inode(a, ino, &in);
	if (!r && LINUX_S_ISDIR(in.i_mode)) {
		struct ext4_dir_list l;
		r = ext4_dir_list(a, ino, &l);
		for (size_t i = 0; !r && i < l.count; i++) r = whiteout_walk(a, ino, path, l.names[i], l.inos[i]);
		ext4_dir_list_free(&l);
	}
	free(path);
	return r;
}

static int apply_whiteout(struct ext4_apply *a, const char *path, const char *base)
{
	ext2_ino_t dir, ino;
	const char *b;
	int r = resolve_parent(a, path, false, &dir, &b);

	if (r == -ENOENT || r == -ENOTDIR) return 0; /* nothing below to hide */
	if (r) return r;
	size_t dir_len = (size_t)(base - path);
	char *dir_path = strndup(path, dir_len ? dir_len - 1 : 0);
	if (!dir_path) return log_error(-ENOMEM, "%s: out of memory", a->label);

	if (!strcmp(base, WH_OPAQUE)) {
		struct ext4_dir_list l;
		r = ext4_dir_list(a, dir, &l);
		for (size_t i = 0; !r && i < l.count; i++) r = whiteout_walk(a, dir, dir_path, l.names[i], l.inos[i]);
		ext4_dir_list_free(&l);
	} else if (!strncmp(base, WH_META_PREFIX, strlen(WH_META_PREFIX))) {
		log_debug("%s: entry %s: ignoring whiteout metadata", a->label, a->entry);
	} else {
		const char *name = base + strlen(WH_PREFIX);
		if (!*name || !strcmp(name, ".") || !strcmp(name, "..")) {
			r = log_error(-EINVAL, "%s: entry %s: invalid whiteout", a->label, a->entry);
		} else {
			r = ext4_dir_lookup(a, dir, name, &ino);
			if (r == -ENOENT) r = 0;
			else if (!r) r = whiteout_walk(a, dir, dir_path, name, ino);
		}
	}
	free(dir_path);
	return r;
}

/* ---------------------------------------------------------------- entries ------------------- */

static int apply_hardlink(struct ext4_apply *a, ext2_ino_t dir, const char *name, const char *target_raw)
{
	char *target = malloc(IMAGE_IMPORT_PATH_BYTES_MAX + 1);
	ext2_ino_t tdir, tino;
	const char *tbase;
	struct ext2_inode_large in;
	int r;

	if (!target) return log_error(-ENOMEM, "%s: out of memory", a->label);
	if (strlen(target_raw) > IMAGE_IMPORT_PATH_BYTES_MAX) {
		r = log_error(-ENAMETOOLONG, "%s: entry %s: hard link target too long", a->label, a->entry);
		goto out;
	}
	r = path_normalize(a, target_raw, target, IMAGE_IMPORT_PATH_BYTES_MAX + 1, "hard link target");
	if (r) goto out;
	if (!*target) {
		r = log_error(-EPERM, "%s: entry %s: hard link to the root directory", a->label, a->entry);
		goto out;
	}
	r = resolve_parent(a, target, false, &tdir, &tbase);
	if (!r) r = ext4_dir_lookup(a, tdir, tbase, &tino);
	if (r == -ENOENT || r == -ENOTDIR) {
		r = log_error(-ENOENT, "%s: entry %s: hard link target %s does not exist", a->label, a->entry, target);
		goto out;
	}
	if (r) goto out;
	r = ext4_read_inode(a, tino, &in);
	if (r) goto out;
	if (LINUX_S_ISDIR(in.i_mode)) {
		r = log_error(-EPERM, "%s: entry %s: hard link target %s is a directory", a->label, a->entry, target);
		goto out;
	}
	if (in.i_links_count >= EXT2_LINK_MAX) {
		r = log_error(-EMLINK, "%s: entry %s: hard link target %s has too many links", a->label, a->entry,
			      target);
		goto out;
	}
	r = ext4_dir_add(a, dir, name, tino, ext4_file_type(in.i_mode));
	if (r) goto out;
	r = ext4_read_inode(a, tino, &in);
	if (r) goto out;
	in.i_links_count++;
	r = ext4_write_inode(a, tino, &in);
out:
	free(target);
	return r;
}

static int apply_entry(struct ext4_apply *a, struct archive *tar, struct archive_entry *e, char *path)
{
	const char *raw = archive_entry_pathname(e), *base, *hardlink = archive_entry_hardlink(e);
	unsigned type = archive_entry_filetype(e);
	struct ext4_meta m;
	ext2_ino_t dir, ino, old;
	int r;

	if (!raw) raw = archive_entry_pathname_utf8(e);
	if (!raw) return log_error(-EINVAL, "%s: an entry has no usable name", a->label);
	a->entry = raw;
	if (strlen(raw) > IMAGE_IMPORT_PATH_BYTES_MAX)
		return log_error(-ENAMETOOLONG, "%s: entry %.64s...: path longer than %u bytes", a->label, raw,
				 IMAGE_IMPORT_PATH_BYTES_MAX);
	r = path_normalize(a, raw, path, IMAGE_IMPORT_PATH_BYTES_MAX + 1, "path");
	if (r) return r;
	base = strrchr(path, '/');
	base = base ? base + 1 : path;

	if (!strncmp(base, WH_PREFIX, strlen(WH_PREFIX))) return apply_whiteout(a, path, base);

	if (hardlink) {
		type = 0;
	} else {
		switch (type) {
		case AE_IFREG: case AE_IFDIR: case AE_IFLNK: case AE_IFCHR: case AE_IFBLK: case AE_IFIFO:
		case AE_IFSOCK:
			break;
		default:
			return log_error(-EINVAL, "%s: entry %s: unsupported entry type 0%o", a->label, raw, type);
		}
		r = entry_meta(a, e, (uint16_t)type, &m);
		if (r) return r;
	}

	if (!*path) {
		/* The root itself: only its metadata can change. */
		if (type != AE_IFDIR)
			return log_error(-EINVAL, "%s: entry %s: the root can only be a directory", a->label, raw);
		r = ext4_set_meta(a, EXT2_ROOT_INO, &m);
		return r ? r : apply_xattrs(a, e, EXT2_ROOT_INO, true);
	}

	r = resolve_parent(a, path, true, &dir, &base);
	if (r) return r;
	r = ext4_dir_lookup(a, dir, base, &old);
	if (r && r != -ENOENT) return r;
	if (!r) {
		struct ext2_inode_large in;
		r = ext4_read_inode(a, old, &in);
		if (r) return r;
		if (type == AE_IFDIR && LINUX_S_ISDIR(in.i_mode)) {
			r = ext4_set_meta(a, old, &m);
			if (!r) r = apply_xattrs(a, e, old, true);
			return r ? r : mark_upper(a, path);
		}
		r = ext4_remove(a, dir, base, old);
		if (r) return r;
	}

	if (hardlink) {
		r = apply_hardlink(a, dir, base, hardlink);
		return r ? r : mark_upper(a, path);
	}
	switch (type) {
	case AE_IFDIR:
		r = ext4_mkdir(a, dir, base, &m, 0, &ino);
		if (!r) r = apply_xattrs(a, e, ino, false);
		return r ? r : mark_upper(a, path);
	case AE_IFREG: {
		int64_t size = archive_entry_size(e);
		if (size < 0 || (uint64_t)size > IMAGE_IMPORT_FILE_BYTES_MAX)
			return log_error(-EFBIG, "%s: entry %s: file size %lld out of range", a->label, raw,
					 (long long)size);
		r = ext4_new_inode(a, dir, &m, &ino);
		if (!r) r = write_data(a, tar, ino, (uint64_t)size);
		break;
	}
	case AE_IFLNK: {
		const char *target = archive_entry_symlink(e);
		if (!target) target = archive_entry_symlink_utf8(e);
		if (!target || !*target)
			return log_error(-EINVAL, "%s: entry %s: symlink without a target", a->label, raw);
		if (strlen(target) > IMAGE_IMPORT_SYMLINK_BYTES_MAX)
			return log_error(-ENAMETOOLONG, "%s: entry %s: symlink target longer than %u bytes", a->label,
					 raw, IMAGE_IMPORT_SYMLINK_BYTES_MAX);
		r = ext4_new_symlink(a, dir, &m, target, &ino);
		break;
	}
	default: {
		uint64_t major = archive_entry_rdevmajor(e), minor = archive_entry_rdevminor(e);
		if (type != AE_IFCHR && type != AE_IFBLK) major = minor = 0;
		if (major > 0xfff || minor > 0xfffff)
			return log_error(-EINVAL, "%s: entry %s: device number %llu:%llu out of range", a->label, raw,
					 (unsigned long long)major, (unsigned long long)minor);
		r = ext4_new_special(a, dir, &m, (uint32_t)major, (uint32_t)minor, &ino);
		break;
	}
	}
	if (!r) r = apply_xattrs(a, e, ino, false);
	if (!r) r = ext4_dir_add(a, dir, base, ino, ext4_file_type(m.mode));
	return r ? r : mark_upper(a, path);
}

int ext4_apply_tar(struct ext4_apply *a, struct archive *tar, const char *label)
{
	char *path = malloc(IMAGE_IMPORT_PATH_BYTES_MAX + 1);
	int r = 0;

	if (!path) return log_error(-ENOMEM, "%s: out of memory", label);
	a->label = label ? label : "layer";
	a->entry = NULL;
	ext4_pathset_clear(&a->upper);
	for (uint64_t n = 0;; n++) {
		struct archive_entry *e;
		int ar = archive_read_next_header(tar, &e);
		if (ar == ARCHIVE_EOF) break;
		if (ar < ARCHIVE_WARN) {
			const char *msg = archive_error_string(tar);
			r = log_error(-EIO, "%s: read tar after %llu entries: %s", a->label, (unsigned long long)n,
				      msg ? msg : "error");
			break;
		}
		if (n >= IMAGE_IMPORT_LAYER_ENTRIES_MAX) {
			r = log_error(-E2BIG, "%s: more than %u entries", a->label, IMAGE_IMPORT_LAYER_ENTRIES_MAX);
			break;
		}
		r = apply_entry(a, tar, e, path);
		a->entry = NULL;
		if (r) break;
	}
	free(path);
	ext4_pathset_clear(&a->upper);
	a->label = a->fs_label;
	return r;
}
