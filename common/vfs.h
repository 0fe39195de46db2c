/* The file I/O layer every durable write of ociblk goes through (layer files, records, the upper).
 *
 * Like SQLite's VFS: production uses the POSIX implementation; the crash tests (tests/crash/)
 * install one that records which writes were synced and can "lose power" at any write, dropping
 * or tearing what was not synced.  Code that must survive a crash therefore never calls
 * write/fsync/rename directly, only these.
 *
 * All functions return 0 (or a byte count / fd) on success and -errno on failure.
 * Paths are absolute or relative to the process cwd. */
#ifndef OCIBLK_COMMON_VFS_H
#define OCIBLK_COMMON_VFS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct vfs_ops {
	int (*open)(const char *path, int flags, mode_t mode);    /* fd or -errno */
	int (*close)(int fd);
	ssize_t (*pread)(int fd, void *buf, size_t len, uint64_t offset_bytes);
	ssize_t (*pwrite)(int fd, const void *buf, size_t len, uint64_t offset_bytes);
	int (*fsync)(int fd);                                     /* data and metadata of fd */
	int (*ftruncate)(int fd, uint64_t length_bytes);
	int (*punch_hole)(int fd, uint64_t offset_bytes, uint64_t length_bytes); /* reads zero after */
	int (*rename)(const char *from, const char *to);          /* atomic; durable after fsync_dir */
	int (*unlink)(const char *path);
	int (*fsync_dir)(const char *dir_path);
	uint64_t (*size)(int fd, int *err);                       /* file size in bytes */
	/* Data plus the metadata needed to read it back (size, allocation), not timestamps.
	 * Optional: NULL means fsync (a test vfs models both alike). */
	int (*fdatasync)(int fd);
	/* Directories: like create / unlink, the new or removed entry is durable only after
	 * fsync_dir of the parent.  mkdir fails with -EEXIST when path exists (then nothing changed). */
	int (*mkdir)(const char *path, mode_t mode);
	int (*rmdir)(const char *path);                           /* must be empty */
};

/* The ops in force.  Default: POSIX. */
const struct vfs_ops *vfs_get(void);
/* Install ops (NULL restores POSIX).  Only tests call this, before opening anything. */
void vfs_set(const struct vfs_ops *ops);
/* 1 when the POSIX ops are in force: only then may cow/ bypass this layer with io_uring on the
 * same file descriptors. */
int vfs_is_posix(void);

/* Thin wrappers over vfs_get()->op. */
int vfs_open(const char *path, int flags, mode_t mode);
int vfs_close(int fd);
int vfs_fsync(int fd);
/* fdatasync: enough for data durability, cheaper than fsync when only data changed. */
int vfs_fdatasync(int fd);
int vfs_ftruncate(int fd, uint64_t length_bytes);
int vfs_punch_hole(int fd, uint64_t offset_bytes, uint64_t length_bytes);
int vfs_rename(const char *from, const char *to);
int vfs_unlink(const char *path);
int vfs_fsync_dir(const char *dir_path);
int vfs_mkdir(const char *path, mode_t mode);
int vfs_rmdir(const char *path);
/* fsync_dir of the directory holding path (its last component's entry): after vfs_mkdir,
 * vfs_rmdir, a create, unlink or rename, what makes that name change durable. */
int vfs_fsync_parent(const char *path);
int vfs_size(int fd, uint64_t *size_bytes);

/* Loop until all len bytes are transferred.  A read past EOF returns -ENODATA (a short file is
 * corruption for every caller); EINTR is retried. */
int vfs_pread_full(int fd, void *buf, size_t len, uint64_t offset_bytes);
int vfs_pwrite_full(int fd, const void *buf, size_t len, uint64_t offset_bytes);

/* Durably replaces path with data: write "<path>.tmp.<pid>.<n>" → fsync → rename → fsync(dir).
 * After a crash at any point, path holds either its old contents or data, never a mix. */
int vfs_write_file_atomic(const char *path, const void *data, size_t len);
/* Reads a whole (small) file; *out is malloc'd and NUL-terminated; -EFBIG if over max_bytes. */
int vfs_read_file(const char *path, size_t max_bytes, char **out, size_t *len_out);

#endif
