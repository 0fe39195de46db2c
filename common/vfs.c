/* POSIX implementation of the vfs layer and the helpers built on it.
 * Invariant: every helper here uses only vfs_get()->ops, so a test vfs sees every durable write. */
#include "common/vfs.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int px_open(const char *p, int flags, mode_t mode)
{
	int fd = open(p, flags | O_CLOEXEC, mode);
	return fd < 0 ? -errno : fd;
}
static int px_close(int fd) { return close(fd) < 0 ? -errno : 0; }
static ssize_t px_pread(int fd, void *b, size_t n, uint64_t off)
{
	ssize_t r = pread(fd, b, n, (off_t)off);
	return r < 0 ? -errno : r;
}
static ssize_t px_pwrite(int fd, const void *b, size_t n, uint64_t off)
{
	ssize_t r = pwrite(fd, b, n, (off_t)off);
	return r < 0 ? -errno : r;
}
static int px_fsync(int fd) { return fsync(fd) < 0 ? -errno : 0; }
static int px_fdatasync(int fd) { return fdatasync(fd) < 0 ? -errno : 0; }
static int px_ftruncate(int fd, uint64_t len) { return ftruncate(fd, (off_t)len) < 0 ? -errno : 0; }
static int px_punch(int fd, uint64_t off, uint64_t len)
{
	return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) < 0 ? -errno : 0;
}
static int px_rename(const char *a, const char *b) { return rename(a, b) < 0 ? -errno : 0; }
static int px_unlink(const char *p) { return unlink(p) < 0 ? -errno : 0; }
static int px_mkdir(const char *p, mode_t m) { return mkdir(p, m) < 0 ? -errno : 0; }
static int px_rmdir(const char *p) { return rmdir(p) < 0 ? -errno : 0; }
static int px_fsync_dir(const char *d)
{
	int fd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC), r = 0;
	if (fd < 0) return -errno;
	if (fsync(fd) < 0) r = -errno;
	close(fd);
	return r;
}
static uint64_t px_size(int fd, int *err)
{
	struct stat st;
	if (fstat(fd, &st) < 0) {
		*err = -errno;
		return 0;
	}
	*err = 0;
	return (uint64_t)st.st_size;
}

static const struct vfs_ops posix_ops = {
	.open = px_open, .close = px_close, .pread = px_pread, .pwrite = px_pwrite,
	.fsync = px_fsync, .ftruncate = px_ftruncate, .punch_hole = px_punch,
	.rename = px_rename, .unlink = px_unlink, .fsync_dir = px_fsync_dir, .size = px_size,
	.fdatasync = px_fdatasync, .mkdir = px_mkdir, .rmdir = px_rmdir,
};

static const struct vfs_ops *_Atomic current = &posix_ops;

const struct vfs_ops *vfs_get(void) { return atomic_load(&current); }
void vfs_set(const struct vfs_ops *ops) { atomic_store(&current, ops ? ops : &posix_ops); }
int vfs_is_posix(void) { return atomic_load(&current) == &posix_ops; }

int vfs_open(const char *p, int f, mode_t m) { return vfs_get()->open(p, f, m); }
int vfs_close(int fd) { return vfs_get()->close(fd); }
int vfs_fsync(int fd) { return vfs_get()->fsync(fd); }
int vfs_fdatasync(int fd)
{
	const struct vfs_ops *ops = vfs_get();
	return ops->fdatasync ? ops->fdatasync(fd) : ops->fsync(fd);
}
int vfs_ftruncate(int fd, uint64_t l) { return vfs_get()->ftruncate(fd, l); }
int vfs_punch_hole(int fd, uint64_t o, uint64_t l) { return vfs_get()->punch_hole(fd, o, l); }
int vfs_rename(const char *a, const char *b) { return vfs_get()->rename(a, b); }
int vfs_unlink(const char *p) { return vfs_get()->unlink(p); }
int vfs_fsync_dir(const char *d) { return vfs_get()->fsync_dir(d); }
int vfs_mkdir(const char *p, mode_t m) { return vfs_get()->mkdir(p, m); }
int vfs_rmdir(const char *p) { return vfs_get()->rmdir(p); }
int vfs_size(int fd, uint64_t *out)
{
	int err = 0;
	uint64_t s = vfs_get()->size(fd, &err);
	if (err) return err;
	*out = s;
	return 0;
}

int vfs_pread_full(int fd, void *buf, size_t len, uint64_t off)
{
	char *p = buf;
	while (len) {
		ssize_t n = vfs_get()->pread(fd, p, len, off);
		if (n == -EINTR) continue;
		if (n < 0) return (int)n;
		if (n == 0) return -ENODATA;
		p += n, len -= (size_t)n, off += (uint64_t)n;
	}
	return 0;
}

int vfs_pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
	const char *p = buf;
	while (len) {
		ssize_t n = vfs_get()->pwrite(fd, p, len, off);
		if (n == -EINTR) continue;
		if (n < 0) return (int)n;
		if (n == 0) return -EIO;
		p += n, len -= (size_t)n, off += (uint64_t)n;
	}
	return 0;
}

static void dir_of(const char *path, char *out, size_t outlen)
{
	const char *slash = strrchr(path, '/');
	if (!slash) {
		snprintf(out, outlen, ".");
	} else if (slash == path) {
		snprintf(out, outlen, "/");
	} else {
		snprintf(out, outlen, "%.*s", (int)(slash - path), path);
	}
}

int vfs_fsync_parent(const char *path)
{
	char name[PATH_MAX], dir[PATH_MAX];
	size_t n = strlen(path);
	if (n >= sizeof name) return -ENAMETOOLONG;
	memcpy(name, path, n + 1);
	while (n > 1 && name[n - 1] == '/') name[--n] = 0; /* "a/b/" names b, held by a */
	dir_of(name, dir, sizeof dir);
	return vfs_fsync_dir(dir);
}

int vfs_write_file_atomic(const char *path, const void *data, size_t len)
{
	static atomic_uint seq;
	char tmp[PATH_MAX], dir[PATH_MAX];
	int fd, r;
	if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp.%d.%u", path, (int)getpid(), atomic_fetch_add(&seq, 1)) >= sizeof tmp)
		return -ENAMETOOLONG;
	dir_of(path, dir, sizeof dir);
	fd = vfs_open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0) return fd;
	r = vfs_pwrite_full(fd, data, len, 0);
	if (!r) r = vfs_fsync(fd);
	vfs_close(fd);
	if (!r) r = vfs_rename(tmp, path);
	if (r) {
		vfs_unlink(tmp);
		return r;
	}
	return vfs_fsync_dir(dir);
}

int vfs_read_file(const char *path, size_t max_bytes, char **out, size_t *len_out)
{
	uint64_t size;
	char *buf;
	int fd = vfs_open(path, O_RDONLY, 0), r;
	if (fd < 0) return fd;
	r = vfs_size(fd, &size);
	if (r) goto out;
	if (size > max_bytes) {
		r = -EFBIG;
		goto out;
	}
	buf = malloc(size + 1);
	if (!buf) {
		r = -ENOMEM;
		goto out;
	}
	r = vfs_pread_full(fd, buf, size, 0);
	if (r) {
		free(buf);
		goto out;
	}
	buf[size] = 0;
	*out = buf;
	if (len_out) *len_out = size;
out:
	vfs_close(fd);
	return r;
}
