/* crashvfs: simulated power loss under common/vfs.h (see crashvfs.h for the model).
 *
 * Data: per dirty inode (dev, ino) an undo/redo log of the ops since its last fsync.  Each entry
 * keeps the new bytes (redo) and the bytes it overwrote plus the size before it (undo), so a crash
 * rolls the real file back to its durable state and replays a random subset, torn per sector.
 * Only touched ranges are kept in memory, never whole files.  A private O_RDWR descriptor per dirty
 * inode (reopened through /proc/self/fd) lets the crash rewrite a file whatever became of its name.
 *
 * Names: one global list of create / rename / unlink / mkdir / rmdir ops, in order, each marked durable when
 * fsync_dir reaches its directory (a rename: either of its two, as the journal of ext4 / xfs commits
 * a rename as one transaction; a rename is never split into a kept half and a lost one).  A file that a volatile op removed from the namespace (unlink,
 * rename over it) stays reachable as a hard link in the stash directory until the op is durable or
 * the crash is over.  At a crash ops are decided from the last to the first: durable ones are kept;
 * a volatile one is kept when a later kept op depends on it (shares a path or an inode, or a path
 * below a renamed directory), else kept or undone at random; undoing goes in reverse order.  An
 * undone mkdir is an rmdir of the (then empty) directory; an undone rmdir makes it again with its
 * mode, and the earlier ops on the old inode are renumbered to the new one.
 *
 * Invariant: outside a crash the real files hold every op performed (as a crash-free machine
 * would); the logs describe how to get from the durable state to them. */
#include "tests/lib/crashvfs.h"

#include "common/vfs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SECTOR 512u

enum data_kind { D_WRITE = 1, D_TRUNC = 2, D_PUNCH = 3 };

struct data_op {
	uint8_t kind;
	uint64_t off, len;        /* WRITE/PUNCH: range; TRUNC: off = new length, len = 0 */
	uint64_t old_size;        /* file size before the op */
	uint64_t old_off;         /* where old bytes start */
	uint64_t old_len;
	uint8_t *old;             /* bytes the op overwrote or cut off */
	uint8_t *data;            /* WRITE: the new bytes */
};

struct inode {
	dev_t dev;
	ino_t ino;
	int fd;                   /* private O_RDWR descriptor */
	struct data_op *ops;
	size_t n, cap;
};

enum dir_kind { N_CREATE = 1, N_RENAME = 2, N_UNLINK = 3, N_MKDIR = 4, N_RMDIR = 5 };

struct dir_op {
	uint8_t kind;
	bool durable;
	bool no_undo;             /* cannot be undone (e.g. rename over a directory): kept */
	char *path;               /* CREATE/UNLINK/MKDIR/RMDIR: the name; RENAME: from */
	char *to;                 /* RENAME: to */
	char *durable_dir;        /* fsync_dir of this directory makes it durable */
	char *durable_dir2;       /* RENAME: or of this one (the source's) */
	dev_t dev;
	ino_t ino;                /* the inode created / moved / unlinked / made / removed */
	mode_t mode;              /* RMDIR: the permissions to make it again with */
	bool has_replaced;
	ino_t replaced_ino;       /* RENAME: the inode `to` named before */
	char *stash;              /* hard link keeping the removed inode (UNLINK, RENAME over a file) */
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char stash_dir[PATH_MAX];
static uint64_t stash_seq;
static uint64_t ops_done, arm_at;
static bool armed, cut, trace;
static struct inode *inodes;
static size_t n_inodes, cap_inodes;
static struct dir_op *dirops;
static size_t n_dirops, cap_dirops;

/* ------------------------------------------------------------------------- helpers ---------- */

static void *xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);
	if (!q) {
		fprintf(stderr, "crashvfs: out of memory\n");
		abort();
	}
	return q;
}

static char *xstrdup(const char *s)
{
	char *d = strdup(s);
	if (!d) abort();
	return d;
}

static uint64_t rnd(uint64_t *x)
{
	*x ^= *x >> 12;
	*x ^= *x << 25;
	*x ^= *x >> 27;
	return *x * 0x2545F4914F6CDD1DULL;
}

/* Canonical form of a path: realpath of its directory + "/" + its last component. */
static int canon(const char *path, char *out)
{
	char dir[PATH_MAX], real[PATH_MAX];
	const char *slash, *base;
	size_t plen = strlen(path);
	while (plen > 1 && path[plen - 1] == '/') plen--; /* "a/b/" names b */
	if (plen >= PATH_MAX) return -ENAMETOOLONG;
	memcpy(dir, path, plen);
	dir[plen] = 0;
	slash = strrchr(dir, '/');
	if (!slash) {
		base = dir;
		if (!realpath(".", real)) return -errno;
	} else {
		dir[slash - dir] = 0;
		base = slash + 1;
		if (!realpath(slash == dir ? "/" : dir, real)) return -errno;
	}
	if ((size_t)snprintf(out, PATH_MAX, "%s/%s", strcmp(real, "/") ? real : "", base) >= PATH_MAX)
		return -ENAMETOOLONG;
	return 0;
}

static char *parent_of(const char *canon_path)
{
	char *d = xstrdup(canon_path), *s = strrchr(d, '/');
	if (s == d) s[1] = 0;
	else if (s) *s = 0;
	return d;
}

static void fd_path(int fd, char *out, size_t len)
{
	char p[64];
	ssize_t n;
	snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
	n = readlink(p, out, len - 1);
	if (n < 0) n = 0;
	out[n] = 0;
}

static void trace_op(const char *what, int fd, const char *path, uint64_t a, uint64_t b)
{
	char fp[PATH_MAX];
	if (!trace) return;
	if (fd >= 0) fd_path(fd, fp, sizeof fp);
	fprintf(stderr, "crashvfs op %llu: %s %s %llu %llu\n", (unsigned long long)ops_done, what,
		fd >= 0 ? fp : path, (unsigned long long)a, (unsigned long long)b);
}

/* Counts one mutating op; -EIO once the power is cut. Called with mu held. */
static int tick(const char *what, int fd, const char *path, uint64_t a, uint64_t b)
{
	if (cut) return -EIO;
	if (armed && ops_done >= arm_at) {
		cut = true;
		if (trace) fprintf(stderr, "crashvfs: power cut at op %llu (%s)\n", (unsigned long long)ops_done, what);
		return -EIO;
	}
	trace_op(what, fd, path, a, b);
	ops_done++;
	return 0;
}

static int pread_all(int fd, void *buf, size_t len, uint64_t off)
{
	uint8_t *p = buf;
	while (len) {
		ssize_t n = pread(fd, p, len, (off_t)off);
		if (n < 0 && errno == EINTR) continue;
		if (n < 0) return -errno;
		if (n == 0) { /* short file: the rest reads as zero */
			memset(p, 0, len);
			return 0;
		}
		p += n, len -= (size_t)n, off += (uint64_t)n;
	}
	return 0;
}

static int pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
	const uint8_t *p = buf;
	while (len) {
		ssize_t n = pwrite(fd, p, len, (off_t)off);
		if (n < 0 && errno == EINTR) continue;
		if (n <= 0) return n < 0 ? -errno : -EIO;
		p += n, len -= (size_t)n, off += (uint64_t)n;
	}
	return 0;
}

static int file_size(int fd, uint64_t *out)
{
	struct stat st;
	if (fstat(fd, &st) < 0) return -errno;
	*out = (uint64_t)st.st_size;
	return 0;
}

/* ------------------------------------------------------------------------- inodes ----------- */

static struct inode *inode_find(dev_t dev, ino_t ino)
{
	for (size_t i = 0; i < n_inodes; i++)
		if (inodes[i].dev == dev && inodes[i].ino == ino) return &inodes[i];
	return NULL;
}

/* The record of fd's inode, created (with a private RDWR descriptor) on first use. */
static int inode_get(int fd, struct inode **out)
{
	struct stat st;
	char p[64];
	struct inode *in;
	int pfd;
	if (fstat(fd, &st) < 0) return -errno;
	if (!S_ISREG(st.st_mode)) return -EINVAL;
	in = inode_find(st.st_dev, st.st_ino);
	if (in) {
		*out = in;
		return 0;
	}
	snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
	pfd = open(p, O_RDWR | O_CLOEXEC);
	if (pfd < 0 && errno == EACCES) { /* e.g. a 0444 file written through its creating fd */
		if (fchmod(fd, (st.st_mode & 07777) | 0600) == 0) {
			pfd = open(p, O_RDWR | O_CLOEXEC);
			fchmod(fd, st.st_mode & 07777);
		}
	}
	if (pfd < 0) return -errno;
	if (n_inodes == cap_inodes) {
		cap_inodes = cap_inodes ? cap_inodes * 2 : 16;
		inodes = xrealloc(inodes, cap_inodes * sizeof *inodes);
	}
	in = &inodes[n_inodes++];
	memset(in, 0, sizeof *in);
	in->dev = st.st_dev;
	in->ino = st.st_ino;
	in->fd = pfd;
	*out = in;
	return 0;
}

static struct data_op *inode_push(struct inode *in)
{
	if (in->n == in->cap) {
		in->cap = in->cap ? in->cap * 2 : 8;
		in->ops = xrealloc(in->ops, in->cap * sizeof *in->ops);
	}
	memset(&in->ops[in->n], 0, sizeof in->ops[0]);
	return &in->ops[in->n++];
}

static void inode_free_ops(struct inode *in)
{
	for (size_t i = 0; i < in->n; i++) {
		free(in->ops[i].old);
		free(in->ops[i].data);
	}
	free(in->ops);
	in->ops = NULL;
	in->n = in->cap = 0;
}

static void inode_drop(struct inode *in)
{
	inode_free_ops(in);
	close(in->fd);
	*in = inodes[--n_inodes];
}

/* Saves [off, off+len) ∩ [0, old_size) of the inode into op->old. */
static int save_old(struct inode *in, struct data_op *op, uint64_t off, uint64_t len)
{
	op->old_off = off;
	op->old_len = off < op->old_size ? (op->old_size - off < len ? op->old_size - off : len) : 0;
	if (!op->old_len) return 0;
	op->old = xrealloc(NULL, op->old_len);
	return pread_all(in->fd, op->old, op->old_len, off);
}

/* Records a truncate of the inode to len and performs it. Called with mu held. */
static int do_truncate(struct inode *in, uint64_t len)
{
	struct data_op *op;
	uint64_t size;
	int r = file_size(in->fd, &size);
	if (r) return r;
	op = inode_push(in);
	op->kind = D_TRUNC;
	op->off = len;
	op->old_size = size;
	r = save_old(in, op, len, size > len ? size - len : 0);
	if (!r && ftruncate(in->fd, (off_t)len) < 0) r = -errno;
	if (r) {
		free(op->old);
		in->n--;
	}
	return r;
}

/* ------------------------------------------------------------------------- names ------------ */

static struct dir_op *dirop_push(void)
{
	if (n_dirops == cap_dirops) {
		cap_dirops = cap_dirops ? cap_dirops * 2 : 32;
		dirops = xrealloc(dirops, cap_dirops * sizeof *dirops);
	}
	memset(&dirops[n_dirops], 0, sizeof dirops[0]);
	return &dirops[n_dirops++];
}

/* A name op on one path (create, unlink, mkdir, rmdir): durable after fsync_dir of its parent. */
static struct dir_op *dirop_push_path(uint8_t kind, const char *canon_path, const struct stat *st)
{
	struct dir_op *d = dirop_push();
	d->kind = kind;
	d->path = xstrdup(canon_path);
	d->durable_dir = parent_of(canon_path);
	d->dev = st->st_dev;
	d->ino = st->st_ino;
	return d;
}

static void dirop_free(struct dir_op *d)
{
	if (d->stash) unlink(d->stash);
	free(d->path);
	free(d->to);
	free(d->durable_dir);
	free(d->durable_dir2);
	free(d->stash);
}

/* Hard-links path into the stash; returns the malloc'd stash path or NULL (not stashable). */
static char *stash_link(const char *path)
{
	char s[PATH_MAX + 32];
	snprintf(s, sizeof s, "%s/%llu", stash_dir, (unsigned long long)stash_seq++);
	if (link(path, s) < 0) return NULL;
	return xstrdup(s);
}

/* a equals b or is a directory above it. */
static bool path_covers(const char *a, const char *b)
{
	size_t la;
	if (!a || !b) return false;
	la = strlen(a);
	return !strncmp(a, b, la) && (b[la] == 0 || b[la] == '/');
}

static bool paths_related(const char *a, const char *b)
{
	return path_covers(a, b) || path_covers(b, a);
}

static bool dirops_conflict(const struct dir_op *x, const struct dir_op *y)
{
	const char *px[2] = { x->path, x->to }, *py[2] = { y->path, y->to };
	if (x->dev == y->dev) {
		if (x->ino == y->ino) return true;
		if (x->has_replaced && (x->replaced_ino == y->ino || (y->has_replaced && x->replaced_ino == y->replaced_ino)))
			return true;
		if (y->has_replaced && y->replaced_ino == x->ino) return true;
	}
	for (int i = 0; i < 2; i++)
		for (int j = 0; j < 2; j++)
			if (paths_related(px[i], py[j])) return true;
	return false;
}

static void dirops_prune(void)
{
	size_t k = 0;
	while (k < n_dirops && dirops[k].durable) dirop_free(&dirops[k++]);
	if (!k) return;
	memmove(dirops, dirops + k, (n_dirops - k) * sizeof *dirops);
	n_dirops -= k;
}

static void mark_dir_durable(const char *dir)
{
	for (size_t i = 0; i < n_dirops; i++) {
		struct dir_op *d = &dirops[i];
		if (d->durable || (strcmp(d->durable_dir, dir) && (!d->durable_dir2 || strcmp(d->durable_dir2, dir)))) continue;
		d->durable = true;
		if (d->stash) {
			unlink(d->stash);
			free(d->stash);
			d->stash = NULL;
		}
	}
	dirops_prune();
}

/* ------------------------------------------------------------------------- vfs ops ---------- */

static int cv_open(const char *path, int flags, mode_t mode)
{
	char cp[PATH_MAX];
	struct stat st;
	struct inode *in;
	bool created = false;
	int fd, r;
	if (!(flags & (O_CREAT | O_TRUNC))) { /* not a mutating op */
		fd = open(path, flags | O_CLOEXEC, mode);
		return fd < 0 ? -errno : fd;
	}
	pthread_mutex_lock(&mu);
	r = tick((flags & O_CREAT) ? "open-create" : "open-trunc", -1, path, 0, 0);
	if (r) goto out;
	fd = -1;
	if (flags & O_CREAT) {
		fd = open(path, (flags & ~O_TRUNC) | O_EXCL | O_CLOEXEC, mode);
		if (fd >= 0) created = true;
		else if (errno != EEXIST || (flags & O_EXCL)) {
			r = -errno;
			goto out;
		}
	}
	if (fd < 0) {
		fd = open(path, (flags & ~(O_CREAT | O_TRUNC)) | O_CLOEXEC, mode);
		if (fd < 0) {
			r = -errno;
			goto out;
		}
	}
	if (created) {
		r = canon(path, cp);
		if (!r && fstat(fd, &st) < 0) r = -errno;
		if (r) {
			close(fd);
			goto out;
		}
		dirop_push_path(N_CREATE, cp, &st);
	} else if (flags & O_TRUNC) {
		r = inode_get(fd, &in);
		if (!r) r = do_truncate(in, 0);
		if (r) {
			close(fd);
			goto out;
		}
	}
	r = fd;
out:
	pthread_mutex_unlock(&mu);
	return r;
}

static int cv_close(int fd) { return close(fd) < 0 ? -errno : 0; }

static ssize_t cv_pread(int fd, void *buf, size_t len, uint64_t off)
{
	ssize_t n = pread(fd, buf, len, (off_t)off);
	return n < 0 ? -errno : n;
}

static ssize_t cv_pwrite(int fd, const void *buf, size_t len, uint64_t off)
{
	struct inode *in;
	struct data_op *op;
	uint64_t size;
	ssize_t r;
	pthread_mutex_lock(&mu);
	r = tick("pwrite", fd, NULL, off, len);
	if (!r) r = inode_get(fd, &in);
	if (!r) r = file_size(in->fd, &size);
	if (r) goto out;
	op = inode_push(in);
	op->kind = D_WRITE;
	op->off = off;
	op->old_size = size;
	r = save_old(in, op, off, len);
	if (!r) {
		r = pwrite(fd, buf, len, (off_t)off);
		if (r < 0) r = -errno;
	}
	if (r <= 0) {
		free(op->old);
		in->n--;
		goto out;
	}
	op->len = (uint64_t)r;
	if (op->old_len > op->len) op->old_len = op->len;
	op->data = xrealloc(NULL, op->len);
	memcpy(op->data, buf, op->len);
out:
	pthread_mutex_unlock(&mu);
	return r;
}

static int fsync_dir_locked(const char *dir)
{
	char real[PATH_MAX];
	if (!realpath(dir, real)) return -errno;
	mark_dir_durable(real);
	return 0;
}

static int cv_fsync(int fd)
{
	struct stat st;
	struct inode *in;
	int r;
	pthread_mutex_lock(&mu);
	r = tick("fsync", fd, NULL, 0, 0);
	if (r) goto out;
	if (fstat(fd, &st) < 0) {
		r = -errno;
		goto out;
	}
	if (S_ISDIR(st.st_mode)) {
		char p[PATH_MAX];
		fd_path(fd, p, sizeof p);
		r = fsync_dir_locked(p);
	} else if ((in = inode_find(st.st_dev, st.st_ino))) {
		inode_drop(in);
	}
out:
	pthread_mutex_unlock(&mu);
	return r;
}

static int cv_ftruncate(int fd, uint64_t len)
{
	struct inode *in;
	int r;
	pthread_mutex_lock(&mu);
	r = tick("ftruncate", fd, NULL, len, 0);
	if (!r) r = inode_get(fd, &in);
	if (!r) r = do_truncate(in, len);
	pthread_mutex_unlock(&mu);
	return r;
}

static int cv_punch(int fd, uint64_t off, uint64_t len)
{
	struct inode *in;
	struct data_op *op;
	uint64_t size;
	int r;
	pthread_mutex_lock(&mu);
	r = tick("punch", fd, NULL, off, len);
	if (!r) r = inode_get(fd, &in);
	if (!r) r = file_size(in->fd, &size);
	if (r) goto out;
	op = inode_push(in);
	op->kind = D_PUNCH;
	op->off = off;
	op->len = len;
	op->old_size = size;
	r = save_old(in, op, off, len);
	if (!r && fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) < 0) r = -errno;
	if (r) {
		free(op->old);
		in->n--;
	}
out:
	pthread_mutex_unlock(&mu);
	return r;
}

static int cv_rename(const char *from, const char *to)
{
	char cf[PATH_MAX], ct[PATH_MAX];
	struct stat sf, st;
	struct dir_op *d;
	char *stash = NULL;
	bool replaced = false, no_undo = false;
	int r;
	pthread_mutex_lock(&mu);
	r = tick("rename", -1, from, 0, 0);
	if (!r) r = canon(from, cf);
	if (!r) r = canon(to, ct);
	if (!r && lstat(cf, &sf) < 0) r = -errno;
	if (r) goto out;
	if (lstat(ct, &st) == 0) {
		if (st.st_dev == sf.st_dev && st.st_ino == sf.st_ino) goto out; /* same file: no-op */
		replaced = true;
		if (S_ISDIR(st.st_mode) || !(stash = stash_link(ct))) no_undo = true;
	}
	if (rename(cf, ct) < 0) {
		r = -errno;
		if (stash) {
			unlink(stash);
			free(stash);
		}
		goto out;
	}
	d = dirop_push();
	d->kind = N_RENAME;
	d->path = xstrdup(cf);
	d->to = xstrdup(ct);
	d->durable_dir = parent_of(ct);
	d->durable_dir2 = parent_of(cf);
	d->dev = sf.st_dev;
	d->ino = sf.st_ino;
	d->has_replaced = replaced;
	d->replaced_ino = replaced ? st.st_ino : 0;
	d->stash = stash;
	d->no_undo = no_undo;
out:
	pthread_mutex_unlock(&mu);
	return r;
}

static int cv_unlink(const char *path)
{
	char cp[PATH_MAX];
	struct stat st;
	struct dir_op *d;
	char *stash = NULL;
	int r;
	pthread_mutex_lock(&mu);
	r = tick("unlink", -1, path, 0, 0);
	if (!r) r = canon(path, cp);
	if (!r && lstat(cp, &st) < 0) r = -errno;
	if (r) goto out;
	if (!S_ISDIR(st.st_mode)) stash = stash_link(cp);
	if (unlink(cp) < 0) {
		r = -errno;
		if (stash) {
			unlink(stash);
			free(stash);
		}
		goto out;
	}
	d = dirop_push_path(N_UNLINK, cp, &st);
	d->stash = stash;
	d->no_undo = !stash;
out:
	pthread_mutex_unlock(&mu);
	return r;
}

/* A directory made or removed: a name op like create / unlink, durable after fsync_dir of the
 * parent.  mkdir over an existing name ticks (a crash point) but records nothing. */
static int cv_mkdir(const char *path, mode_t mode)
{
	char cp[PATH_MAX];
	struct stat st;
	int r;
	pthread_mutex_lock(&mu);
	r = tick("mkdir", -1, path, 0, 0);
	if (!r) r = canon(path, cp);
	if (!r && mkdir(cp, mode) < 0) r = -errno;
	if (!r && lstat(cp, &st) < 0) r = -errno; /* made but not statable: kept as durable */
	if (r) goto out;
	dirop_push_path(N_MKDIR, cp, &st);
out:
	pthread_mutex_unlock(&mu);
	return r;
}

static int cv_rmdir(const char *path)
{
	char cp[PATH_MAX];
	struct stat st;
	int r;
	pthread_mutex_lock(&mu);
	r = tick("rmdir", -1, path, 0, 0);
	if (!r) r = canon(path, cp);
	if (!r && lstat(cp, &st) < 0) r = -errno;
	if (!r && rmdir(cp) < 0) r = -errno;
	if (r) goto out;
	dirop_push_path(N_RMDIR, cp, &st)->mode = st.st_mode & 07777;
out:
	pthread_mutex_unlock(&mu);
	return r;
}

static int cv_fsync_dir(const char *dir)
{
	int r;
	pthread_mutex_lock(&mu);
	r = tick("fsync_dir", -1, dir, 0, 0);
	if (!r) r = fsync_dir_locked(dir);
	pthread_mutex_unlock(&mu);
	return r;
}

static uint64_t cv_size(int fd, int *err)
{
	uint64_t s = 0;
	*err = file_size(fd, &s);
	return s;
}

static const struct vfs_ops crash_ops = {
	.open = cv_open, .close = cv_close, .pread = cv_pread, .pwrite = cv_pwrite,
	.fsync = cv_fsync, .ftruncate = cv_ftruncate, .punch_hole = cv_punch,
	.rename = cv_rename, .unlink = cv_unlink, .fsync_dir = cv_fsync_dir, .size = cv_size,
	.mkdir = cv_mkdir, .rmdir = cv_rmdir,
};

/* ------------------------------------------------------------------------- crash ------------ */

/* Undoes one name op on the real filesystem; false when it cannot be (then it stays). */
static bool dirop_undo(const struct dir_op *d)
{
	struct stat st;
	switch (d->kind) {
	case N_CREATE:
		if (lstat(d->path, &st) < 0 || st.st_ino != d->ino || st.st_dev != d->dev) return false;
		return unlink(d->path) == 0;
	case N_RENAME:
		if (lstat(d->to, &st) < 0 || st.st_ino != d->ino || st.st_dev != d->dev) return false;
		if (lstat(d->path, &st) == 0) return false; /* `from` was reused outside the vfs */
		if (rename(d->to, d->path) < 0) return false;
		if (d->has_replaced && link(d->stash, d->to) < 0) {
			rename(d->path, d->to);
			return false;
		}
		return true;
	case N_UNLINK:
		return link(d->stash, d->path) == 0;
	case N_MKDIR: /* only an empty directory: whatever a kept op put in it kept the mkdir too */
		if (lstat(d->path, &st) < 0 || !S_ISDIR(st.st_mode) || st.st_ino != d->ino || st.st_dev != d->dev) return false;
		return rmdir(d->path) == 0;
	case N_RMDIR:
		return mkdir(d->path, d->mode) == 0;
	}
	return false;
}

/* After op i (an rmdir) was undone, its directory is back under a new inode: the earlier ops that
 * name the old one (its mkdir, renames of it) now name the new one, so they can be undone too. */
static void dirop_renumber(size_t i)
{
	struct stat st;
	const struct dir_op *d = &dirops[i];
	if (lstat(d->path, &st) < 0) return;
	for (size_t j = 0; j < i; j++)
		if (dirops[j].dev == d->dev && dirops[j].ino == d->ino) {
			dirops[j].dev = st.st_dev;
			dirops[j].ino = st.st_ino;
		}
}

/* Rolls the inode back to its durable state, then replays a random subset of its ops. */
static int inode_crash(struct inode *in, uint64_t *rng, struct crashvfs_report *rep)
{
	unsigned mode = (unsigned)(rnd(rng) % 4); /* 0 lose all, 1 keep all, 2-3 per op */
	for (size_t k = in->n; k-- > 0;) {
		struct data_op *op = &in->ops[k];
		if (ftruncate(in->fd, (off_t)op->old_size) < 0) return -errno;
		if (op->old_len) {
			int r = pwrite_all(in->fd, op->old, op->old_len, op->old_off);
			if (r) return r;
		}
	}
	for (size_t k = 0; k < in->n; k++) {
		struct data_op *op = &in->ops[k];
		unsigned fate = mode == 0 ? 0 : mode == 1 ? 1 : (unsigned)(rnd(rng) % 3); /* 0 lost 1 kept 2 torn */
		uint64_t first, last;
		bool any = false, all = true;
		if (op->kind == D_TRUNC || fate != 2) {
			if (fate == 2) fate = rnd(rng) & 1;
			if (fate == 0) {
				rep->data_ops_dropped++;
				continue;
			}
			rep->data_ops_kept++;
			if (op->kind == D_TRUNC) {
				if (ftruncate(in->fd, (off_t)op->off) < 0) return -errno;
			} else if (op->kind == D_WRITE) {
				int r = pwrite_all(in->fd, op->data, op->len, op->off);
				if (r) return r;
			} else if (fallocate(in->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)op->off, (off_t)op->len) < 0) {
				return -errno;
			}
			continue;
		}
		/* torn: each 512-byte sector of the file the op touches reached the disk or not */
		if (!op->len) continue;
		first = op->off / SECTOR;
		last = (op->off + op->len - 1) / SECTOR;
		for (uint64_t s = first; s <= last; s++) {
			uint64_t a = s * SECTOR > op->off ? s * SECTOR : op->off;
			uint64_t b = (s + 1) * SECTOR < op->off + op->len ? (s + 1) * SECTOR : op->off + op->len;
			if (!(rnd(rng) & 1)) {
				all = false;
				continue;
			}
			any = true;
			if (op->kind == D_WRITE) {
				int r = pwrite_all(in->fd, op->data + (a - op->off), b - a, a);
				if (r) return r;
			} else if (fallocate(in->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)a, (off_t)(b - a)) < 0) {
				return -errno;
			}
		}
		if (all) rep->data_ops_kept++;
		else if (any) rep->data_ops_torn++;
		else rep->data_ops_dropped++;
	}
	rep->files_rewritten++;
	return 0;
}

static void forget_all(void)
{
	while (n_inodes) inode_drop(&inodes[n_inodes - 1]);
	for (size_t i = 0; i < n_dirops; i++) dirop_free(&dirops[i]);
	n_dirops = 0;
}

int crashvfs_crash(uint64_t seed, struct crashvfs_report *report)
{
	struct crashvfs_report rep = { 0 };
	uint64_t rng = seed + 0x9E3779B97F4A7C15ULL; /* splitmix64 finaliser: nearby seeds diverge */
	unsigned mode;
	bool *keep;
	int r = 0;
	rng = (rng ^ (rng >> 30)) * 0xBF58476D1CE4E5B9ULL;
	rng = (rng ^ (rng >> 27)) * 0x94D049BB133111EBULL;
	rng ^= rng >> 31;
	if (!rng) rng = 1;
	pthread_mutex_lock(&mu);
	mode = (unsigned)(rnd(&rng) % 4); /* 0 undo all allowed, 1 keep all, 2-3 each at random */
	keep = xrealloc(NULL, (n_dirops ? n_dirops : 1) * sizeof *keep);
	for (size_t i = n_dirops; i-- > 0;) {
		struct dir_op *d = &dirops[i];
		bool k = d->durable || d->no_undo;
		for (size_t j = i + 1; !k && j < n_dirops; j++)
			if (keep[j] && dirops_conflict(d, &dirops[j])) k = true;
		if (!k) k = mode == 1 || (mode >= 2 && (rnd(&rng) & 1));
		if (d->durable || d->no_undo) {
			/* not counted: only volatile ops are */
		} else if (k) {
			rep.dir_ops_kept++;
		} else if (dirop_undo(d)) {
			rep.dir_ops_undone++;
			if (d->kind == N_RMDIR) dirop_renumber(i);
		} else {
			k = true;
			rep.dir_ops_undo_failed++;
		}
		keep[i] = k;
	}
	free(keep);
	for (size_t i = 0; i < n_inodes && !r; i++) r = inode_crash(&inodes[i], &rng, &rep);
	forget_all();
	armed = cut = false;
	ops_done = 0;
	pthread_mutex_unlock(&mu);
	if (report) *report = rep;
	return r;
}

/* ------------------------------------------------------------------------- control ---------- */

int crashvfs_install(const char *dir)
{
	char real[PATH_MAX];
	if (mkdir(dir, 0700) < 0 && errno != EEXIST) return -errno;
	if (!realpath(dir, real)) return -errno;
	pthread_mutex_lock(&mu);
	forget_all();
	snprintf(stash_dir, sizeof stash_dir, "%s", real);
	ops_done = 0;
	armed = cut = false;
	trace = getenv("CRASHVFS_TRACE") && strcmp(getenv("CRASHVFS_TRACE"), "0");
	pthread_mutex_unlock(&mu);
	vfs_set(&crash_ops);
	return 0;
}

void crashvfs_uninstall(void)
{
	vfs_set(NULL);
	pthread_mutex_lock(&mu);
	forget_all();
	armed = cut = false;
	pthread_mutex_unlock(&mu);
}

void crashvfs_settle(void)
{
	pthread_mutex_lock(&mu);
	forget_all();
	pthread_mutex_unlock(&mu);
}

uint64_t crashvfs_op_count(void)
{
	uint64_t n;
	pthread_mutex_lock(&mu);
	n = ops_done;
	pthread_mutex_unlock(&mu);
	return n;
}

void crashvfs_arm(uint64_t n)
{
	pthread_mutex_lock(&mu);
	ops_done = 0;
	arm_at = n;
	armed = true;
	cut = false;
	pthread_mutex_unlock(&mu);
}

bool crashvfs_power_is_cut(void)
{
	bool c;
	pthread_mutex_lock(&mu);
	c = cut;
	pthread_mutex_unlock(&mu);
	return c;
}

/* ------------------------------------------------------------------------- tree helpers ----- */

static int copy_file(const char *from, const char *to, mode_t mode)
{
	int in = open(from, O_RDONLY | O_CLOEXEC), out, r = 0;
	struct stat st;
	if (in < 0) return -errno;
	out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode & 07777);
	if (out < 0) {
		r = -errno;
		close(in);
		return r;
	}
	if (fstat(in, &st) < 0) r = -errno;
	for (off_t left = st.st_size; !r && left > 0;) {
		ssize_t n = copy_file_range(in, NULL, out, NULL, (size_t)left, 0);
		if (n < 0 && errno == EINTR) continue;
		if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL)) { /* plain copy */
			static char buf[1 << 16];
			off_t off = st.st_size - left;
			ssize_t m = pread(in, buf, sizeof buf, off);
			if (m <= 0) r = m < 0 ? -errno : -EIO;
			else if (pwrite_all(out, buf, (size_t)m, (uint64_t)off)) r = -EIO;
			else left -= m;
			continue;
		}
		if (n <= 0) r = n < 0 ? -errno : -EIO;
		else left -= n;
	}
	close(in);
	if (close(out) < 0 && !r) r = -errno;
	return r;
}

int crashvfs_copy_tree(const char *from, const char *to)
{
	struct stat st;
	DIR *d;
	struct dirent *de;
	int r = 0;
	if (lstat(from, &st) < 0) return -errno;
	if (S_ISREG(st.st_mode)) return copy_file(from, to, st.st_mode);
	if (S_ISLNK(st.st_mode)) {
		char target[PATH_MAX];
		ssize_t n = readlink(from, target, sizeof target - 1);
		if (n < 0) return -errno;
		target[n] = 0;
		return symlink(target, to) < 0 ? -errno : 0;
	}
	if (!S_ISDIR(st.st_mode)) return 0; /* sockets, fifos: not copied */
	if (mkdir(to, st.st_mode & 07777) < 0) return -errno;
	d = opendir(from);
	if (!d) return -errno;
	while (!r && (de = readdir(d))) {
		char a[PATH_MAX], b[PATH_MAX];
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
		if ((size_t)snprintf(a, sizeof a, "%s/%s", from, de->d_name) >= sizeof a ||
		    (size_t)snprintf(b, sizeof b, "%s/%s", to, de->d_name) >= sizeof b) {
			r = -ENAMETOOLONG;
			break;
		}
		r = crashvfs_copy_tree(a, b);
	}
	closedir(d);
	return r;
}

int crashvfs_remove_tree(const char *path)
{
	struct stat st;
	DIR *d;
	struct dirent *de;
	int r = 0;
	if (lstat(path, &st) < 0) return errno == ENOENT ? 0 : -errno;
	if (!S_ISDIR(st.st_mode)) return unlink(path) < 0 ? -errno : 0;
	d = opendir(path);
	if (!d) return -errno;
	while ((de = readdir(d))) {
		char a[PATH_MAX];
		int rr;
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
		if ((size_t)snprintf(a, sizeof a, "%s/%s", path, de->d_name) >= sizeof a) {
			r = -ENAMETOOLONG;
			continue;
		}
		rr = crashvfs_remove_tree(a);
		if (rr && !r) r = rr;
	}
	closedir(d);
	if (!r && rmdir(path) < 0) r = -errno;
	return r;
}

static char workdir[PATH_MAX];

const char *crashvfs_workdir(void)
{
	const char *base = getenv("TMPDIR");
	if (workdir[0]) return workdir;
	if (!base || !*base) base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
	snprintf(workdir, sizeof workdir, "%s/ociblk-crash-XXXXXX", base);
	if (!mkdtemp(workdir)) {
		fprintf(stderr, "crashvfs: mkdtemp %s: %s\n", workdir, strerror(errno));
		abort();
	}
	return workdir;
}

void crashvfs_workdir_done(bool keep)
{
	if (!workdir[0]) return;
	if (keep) fprintf(stderr, "crashvfs: kept %s for inspection\n", workdir);
	else crashvfs_remove_tree(workdir);
	workdir[0] = 0;
}
