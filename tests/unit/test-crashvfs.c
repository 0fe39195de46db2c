/* Unit tests of the crash-simulating vfs (tests/lib/crashvfs.c): synced data and durable names
 * always survive; unsynced writes are sometimes kept, lost or torn per 512-byte sector and never
 * anything else; name operations without fsync_dir may be undone but never half done; power cuts
 * happen exactly at the armed op; a seed replays the same outcome. */
#include "common/vfs.h"
#include "tests/lib/crashvfs.h"
#include "tests/lib/tap.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SEEDS 200
#define SECTOR 512

static char dir[512], dir_a[600], dir_b[600];
static uint64_t base_seed;

static void fill(uint8_t *buf, size_t len, uint8_t tag)
{
	for (size_t i = 0; i < len; i++) buf[i] = (uint8_t)(tag ^ (i * 7) ^ (i >> 9));
}

/* Writes data durably through the vfs (file fsync + directory fsync). */
static int put_durable(const char *path, const void *data, size_t len)
{
	int fd = vfs_open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644), r;
	char d[600];
	if (fd < 0) return fd;
	r = vfs_pwrite_full(fd, data, len, 0);
	if (!r) r = vfs_fsync(fd);
	vfs_close(fd);
	snprintf(d, sizeof d, "%s", path);
	*strrchr(d, '/') = 0;
	if (!r) r = vfs_fsync_dir(d);
	return r;
}

/* Reads a whole file with plain syscalls; -ENOENT when missing. */
static int slurp(const char *path, uint8_t *buf, size_t cap, size_t *len)
{
	int fd = open(path, O_RDONLY);
	ssize_t n;
	if (fd < 0) return -errno;
	n = read(fd, buf, cap);
	close(fd);
	if (n < 0) return -EIO;
	*len = (size_t)n;
	return 0;
}

static int exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0;
}

static void test_arm(void)
{
	char p[700];
	uint8_t buf[1024] = { 1 }, back[1024];
	int fd, ok;
	snprintf(p, sizeof p, "%s/arm", dir);
	crashvfs_arm(4);
	fd = vfs_open(p, O_CREAT | O_RDWR, 0644);                       /* op 0 */
	ok = fd >= 0;
	ok &= vfs_pwrite_full(fd, buf, sizeof buf, 0) == 0;             /* op 1 */
	ok &= vfs_fsync(fd) == 0;                                        /* op 2 */
	ok &= vfs_fsync_dir(dir) == 0;                                   /* op 3 */
	TAP_OK(ok, "ops before the armed point succeed");
	TAP_IS(vfs_pwrite_full(fd, buf, sizeof buf, 4096), -EIO, "the armed op fails with -EIO");
	TAP_OK(crashvfs_power_is_cut(), "power is cut");
	TAP_IS(vfs_fsync(fd), -EIO, "every op after the cut fails");
	TAP_IS(vfs_unlink(p), -EIO, "unlink after the cut fails");
	TAP_OK(exists(p), "and did not reach the disk");
	TAP_IS(vfs_pread_full(fd, back, sizeof back, 0), 0, "reads still work after the cut");
	TAP_IS(crashvfs_op_count(), 4u, "op count stops at the cut");
	TAP_IS(crashvfs_crash(1, NULL), 0, "crash");
	TAP_OK(!crashvfs_power_is_cut() && crashvfs_op_count() == 0, "crash disarms and resets the count");
	TAP_OK(vfs_pread_full(fd, back, sizeof back, 0) == 0 && !memcmp(back, buf, sizeof buf), "synced data survived the crash");
	TAP_OK(vfs_unlink(p) == 0, "ops work again after the crash");
	vfs_close(fd);
	crashvfs_crash(1, NULL);
}

/* Durable A over [0, 8K); then unsynced B at [8K, 16K) and C over [1K, 3K). */
static int data_scenario(uint64_t seed, uint8_t *out, size_t *out_len, struct crashvfs_report *rep)
{
	static uint8_t a[8192], b[8192], c[2048];
	char p[700];
	int fd, r;
	snprintf(p, sizeof p, "%s/data", dir);
	unlink(p);
	fill(a, sizeof a, 0xA1);
	fill(b, sizeof b, 0xB2);
	fill(c, sizeof c, 0xC3);
	r = put_durable(p, a, sizeof a);
	if (r) return r;
	fd = vfs_open(p, O_RDWR, 0);
	if (fd < 0) return fd;
	r = vfs_pwrite_full(fd, b, sizeof b, 8192);
	if (!r) r = vfs_pwrite_full(fd, c, sizeof c, 1024);
	vfs_close(fd);
	if (r) return r;
	r = crashvfs_crash(seed, rep);
	if (r) return r;
	return slurp(p, out, 65536, out_len);
}

static void test_data(void)
{
	static uint8_t a[8192], b[8192], c[2048], got[65536], again[65536];
	unsigned b_kept = 0, b_lost = 0, b_torn = 0, c_mixed = 0, bad = 0;
	size_t len = 0, len2 = 0;
	struct crashvfs_report rep;
	fill(a, sizeof a, 0xA1);
	fill(b, sizeof b, 0xB2);
	fill(c, sizeof c, 0xC3);
	for (unsigned s = 0; s < SEEDS; s++) {
		unsigned bs = 0, cs = 0;
		bool okf = true;
		if (data_scenario(base_seed + s, got, &len, &rep)) {
			bad++;
			continue;
		}
		/* size: the durable 8K, or extended by some sector of B */
		if (len < 8192 || len > 16384 || len % SECTOR) okf = false;
		for (size_t off = 0; okf && off < len; off += SECTOR) {
			const uint8_t *g = got + off;
			if (off < 1024 || (off >= 3072 && off < 8192)) {
				okf = !memcmp(g, a + off, SECTOR);             /* synced, untouched */
			} else if (off < 3072) {
				bool is_a = !memcmp(g, a + off, SECTOR), is_c = !memcmp(g, c + off - 1024, SECTOR);
				okf = is_a || is_c;
				cs += is_c;
			} else {
				static const uint8_t zero[SECTOR];
				bool is_b = !memcmp(g, b + off - 8192, SECTOR);
				okf = is_b || !memcmp(g, zero, SECTOR);      /* a hole before a kept sector */
				bs += is_b;
			}
		}
		if (!okf) {
			bad++;
			tap_diag("seed %llu: impossible content (len %zu)", (unsigned long long)(base_seed + s), len);
			continue;
		}
		if (bs == 16) b_kept++;
		else if (bs == 0) b_lost++;
		else b_torn++;
		if (cs > 0 && cs < 4) c_mixed++;
	}
	TAP_IS(bad, 0u, "%d crashes: synced data intact, every sector old or new", SEEDS);
	TAP_OK(b_kept > 0, "unsynced write sometimes kept (%u)", b_kept);
	TAP_OK(b_lost > 0, "unsynced write sometimes lost (%u)", b_lost);
	TAP_OK(b_torn > 0, "unsynced write sometimes torn at sector granularity (%u)", b_torn);
	TAP_OK(c_mixed > 0, "unsynced overwrite sometimes mixes old and new sectors (%u)", c_mixed);

	data_scenario(base_seed + 4242, got, &len, NULL);
	data_scenario(base_seed + 4242, again, &len2, NULL);
	TAP_OK(len == len2 && !memcmp(got, again, len), "same seed, same outcome");
}

/* A synced file survives whatever unsynced ops follow on other files. */
static void test_fsync_survives(void)
{
	static uint8_t a[20000], got[65536];
	char p[700], q[700];
	size_t len = 0;
	unsigned bad = 0;
	fill(a, sizeof a, 0x5A);
	snprintf(p, sizeof p, "%s/synced", dir);
	snprintf(q, sizeof q, "%s/other", dir);
	for (unsigned s = 0; s < SEEDS / 4; s++) {
		int fd;
		unlink(p);
		unlink(q);
		fd = vfs_open(p, O_CREAT | O_WRONLY, 0644);
		vfs_pwrite_full(fd, a, 3000, 0);
		vfs_pwrite_full(fd, a + 3000, sizeof a - 3000, 3000);     /* unaligned pieces */
		vfs_fsync(fd);
		vfs_close(fd);
		vfs_fsync_dir(dir);
		fd = vfs_open(q, O_CREAT | O_WRONLY, 0644);
		vfs_pwrite_full(fd, a, 5000, 0);
		vfs_close(fd);
		crashvfs_crash(base_seed + s, NULL);
		if (slurp(p, got, sizeof got, &len) || len != sizeof a || memcmp(got, a, len)) bad++;
	}
	TAP_IS(bad, 0u, "fsynced file with a durable name always survives intact");
}

static void test_truncate_punch(void)
{
	static uint8_t a[8192], got[65536];
	static const uint8_t zero[SECTOR];
	char p[700];
	size_t len = 0;
	unsigned bad = 0, shrunk = 0, whole = 0, punched = 0, kept = 0;
	fill(a, sizeof a, 0x77);
	snprintf(p, sizeof p, "%s/trunc", dir);
	for (unsigned s = 0; s < SEEDS; s++) {
		int fd;
		unlink(p);
		put_durable(p, a, sizeof a);
		fd = vfs_open(p, O_RDWR, 0);
		vfs_punch_hole(fd, 0, 2048);
		vfs_ftruncate(fd, 4096);
		vfs_close(fd);
		crashvfs_crash(base_seed + s, NULL);
		if (slurp(p, got, sizeof got, &len) || (len != 4096 && len != 8192) || memcmp(got + 2048, a + 2048, len - 2048)) {
			bad++;
			continue;
		}
		for (size_t off = 0; off < 2048; off += SECTOR) {
			if (!memcmp(got + off, zero, SECTOR)) punched++;
			else if (!memcmp(got + off, a + off, SECTOR)) kept++;
			else bad++;
		}
		if (len == 4096) shrunk++;
		else whole++;
	}
	TAP_IS(bad, 0u, "after unsynced truncate/punch every byte is old or cut/zero");
	TAP_OK(shrunk > 0 && whole > 0, "unsynced truncate sometimes kept (%u), sometimes lost (%u)", shrunk, whole);
	TAP_OK(punched > 0 && kept > 0, "unsynced punch per sector sometimes kept (%u), sometimes lost (%u)", punched, kept);
}

static void test_names(void)
{
	static uint8_t a[6000], b[3000], got[65536];
	char p[700], q[700], x[700], y[700];
	size_t len = 0;
	unsigned bad = 0, c_gone = 0, c_there = 0, d_bad = 0, u_back = 0, u_gone = 0, du_bad = 0;
	unsigned r_old = 0, r_new = 0, r_bad = 0, x_bad = 0, src_bad = 0;
	fill(a, sizeof a, 0x11);
	fill(b, sizeof b, 0x22);
	snprintf(p, sizeof p, "%s/created", dir);
	snprintf(q, sizeof q, "%s/target", dir);
	snprintf(x, sizeof x, "%s/x", dir_a);
	snprintf(y, sizeof y, "%s/y", dir_b);
	for (unsigned s = 0; s < SEEDS; s++) {
		int fd;
		bool with_dir_sync = s & 1;
		/* create + fsync, with or without fsync_dir */
		unlink(p);
		fd = vfs_open(p, O_CREAT | O_WRONLY, 0644);
		vfs_pwrite_full(fd, a, sizeof a, 0);
		vfs_fsync(fd);
		vfs_close(fd);
		if (with_dir_sync) vfs_fsync_dir(dir);
		crashvfs_crash(base_seed + s, NULL);
		if (!exists(p)) {
			if (with_dir_sync) d_bad++;
			c_gone++;
		} else {
			if (slurp(p, got, sizeof got, &len) || len != sizeof a || memcmp(got, a, len)) bad++;
			c_there++;
		}

		/* unlink a durable file, with or without fsync_dir */
		unlink(p);
		put_durable(p, a, sizeof a);
		vfs_unlink(p);
		if (with_dir_sync) vfs_fsync_dir(dir);
		crashvfs_crash(base_seed + s, NULL);
		if (exists(p)) {
			if (with_dir_sync) du_bad++;
			if (slurp(p, got, sizeof got, &len) || len != sizeof a || memcmp(got, a, len)) bad++;
			u_back++;
		} else {
			u_gone++;
		}

		/* rename a synced file over a durable one without fsync_dir: one of the two, whole */
		unlink(p);
		unlink(q);
		put_durable(q, b, sizeof b);
		fd = vfs_open(p, O_CREAT | O_WRONLY, 0644);
		vfs_pwrite_full(fd, a, sizeof a, 0);
		vfs_fsync(fd);
		vfs_close(fd);
		vfs_rename(p, q);
		crashvfs_crash(base_seed + s, NULL);
		if (slurp(q, got, sizeof got, &len)) r_bad++;
		else if (len == sizeof a && !memcmp(got, a, len)) r_new++;
		else if (len == sizeof b && !memcmp(got, b, len)) r_old++;
		else r_bad++;

		/* create in a/, rename into b/, fsync_dir(b) only: the durable rename keeps its create */
		unlink(x);
		unlink(y);
		fd = vfs_open(x, O_CREAT | O_WRONLY, 0644);
		vfs_pwrite_full(fd, b, sizeof b, 0);
		vfs_fsync(fd);
		vfs_close(fd);
		vfs_rename(x, y);
		vfs_fsync_dir(dir_b);
		crashvfs_crash(base_seed + s, NULL);
		if (exists(x) || slurp(y, got, sizeof got, &len) || len != sizeof b || memcmp(got, b, len)) x_bad++;

		/* the same with fsync_dir of the source directory only: a rename is one transaction */
		unlink(x);
		unlink(y);
		put_durable(x, a, sizeof a);
		vfs_rename(x, y);
		vfs_fsync_dir(dir_a);
		crashvfs_crash(base_seed + s, NULL);
		if (exists(x) || slurp(y, got, sizeof got, &len) || len != sizeof a || memcmp(got, a, len)) src_bad++;
	}
	TAP_IS(bad, 0u, "a file that exists after a crash holds its synced contents");
	TAP_IS(d_bad, 0u, "create + fsync + fsync_dir always survives");
	TAP_OK(c_gone > 0 && c_there > 0, "create without fsync_dir sometimes undone (%u), sometimes kept (%u)", c_gone, c_there);
	TAP_IS(du_bad, 0u, "unlink + fsync_dir never comes back");
	TAP_OK(u_back > 0 && u_gone > 0, "unlink without fsync_dir sometimes undone (%u), sometimes kept (%u)", u_back, u_gone);
	TAP_IS(r_bad, 0u, "rename over a file is atomic: old or new, whole");
	TAP_OK(r_old > 0 && r_new > 0, "unsynced rename sometimes undone (%u), sometimes kept (%u)", r_old, r_new);
	TAP_IS(x_bad, 0u, "durable rename keeps the create it depends on");
	TAP_IS(src_bad, 0u, "rename is durable after fsync_dir of its source directory too");
}

/* mkdir / rmdir are name ops like create / unlink: undone at a crash unless fsync_dir of the parent
 * made them durable or a kept op below the directory needs it. */
static void test_dirs(void)
{
	static uint8_t a[3000], got[65536];
	char d[700], f[720], e[720];
	size_t len = 0;
	unsigned m_gone = 0, m_there = 0, m_bad = 0, k_bad = 0, r_back = 0, r_gone = 0, r_bad = 0, mr_bad = 0;
	unsigned mr_gone = 0, mr_there = 0, e_bad = 0;
	struct stat st;
	fill(a, sizeof a, 0x33);
	snprintf(d, sizeof d, "%s/newdir", dir);
	snprintf(f, sizeof f, "%s/file", d);
	snprintf(e, sizeof e, "%s/inner", d);
	for (unsigned s = 0; s < SEEDS; s++) {
		bool with_dir_sync = s & 1;
		crashvfs_remove_tree(d);
		/* mkdir alone, with or without fsync_dir of the parent */
		if (vfs_mkdir(d, 0750)) m_bad++;
		if (with_dir_sync) vfs_fsync_dir(dir);
		crashvfs_crash(base_seed + s, NULL);
		if (!exists(d)) {
			if (with_dir_sync) m_bad++;
			m_gone++;
		} else {
			if (stat(d, &st) || !S_ISDIR(st.st_mode) || (st.st_mode & 0777) != 0750) m_bad++;
			m_there++;
		}

		/* mkdir, a file in it made durable by fsync_dir of the new directory only: the directory
		 * stays (a journaling filesystem commits the mkdir with the entry below it) */
		crashvfs_remove_tree(d);
		vfs_mkdir(d, 0755);
		vfs_mkdir(e, 0755);
		put_durable(f, a, sizeof a);
		crashvfs_crash(base_seed + s, NULL);
		if (slurp(f, got, sizeof got, &len) || len != sizeof a || memcmp(got, a, len)) k_bad++;

		/* rmdir of a durable directory (its file unlinked first), with or without fsync_dir */
		crashvfs_remove_tree(d);
		vfs_mkdir(d, 0700);
		put_durable(f, a, sizeof a);
		vfs_fsync_dir(dir);
		vfs_unlink(f);
		vfs_rmdir(d);
		if (with_dir_sync) vfs_fsync_dir(dir);
		crashvfs_crash(base_seed + s, NULL);
		if (exists(d)) {
			if (with_dir_sync) r_bad++;
			if (stat(d, &st) || !S_ISDIR(st.st_mode) || (st.st_mode & 0777) != 0700) r_bad++;
			if (exists(f) && (slurp(f, got, sizeof got, &len) || len != sizeof a || memcmp(got, a, len))) r_bad++;
			r_back++;
		} else {
			r_gone++;
		}

		/* mkdir then rmdir, nothing synced: gone or an empty directory, never an error */
		crashvfs_remove_tree(d);
		if (vfs_mkdir(d, 0755) || vfs_mkdir(d, 0755) != -EEXIST || vfs_rmdir(d)) mr_bad++;
		crashvfs_crash(base_seed + s, NULL);
		if (exists(d)) mr_there++;
		else mr_gone++;

		/* rmdir of a directory that is not empty fails and changes nothing */
		crashvfs_remove_tree(d);
		vfs_mkdir(d, 0755);
		put_durable(f, a, sizeof a);
		vfs_fsync_dir(dir);
		if (vfs_rmdir(d) != -ENOTEMPTY || !exists(f)) e_bad++;
		crashvfs_crash(base_seed + s, NULL);
		if (!exists(f)) e_bad++;
	}
	crashvfs_remove_tree(d);
	crashvfs_settle();
	TAP_IS(m_bad, 0u, "mkdir + fsync_dir(parent) always survives, with its mode");
	TAP_OK(m_gone > 0 && m_there > 0, "mkdir without fsync_dir sometimes undone (%u), sometimes kept (%u)", m_gone, m_there);
	TAP_IS(k_bad, 0u, "a durable entry below an unsynced mkdir keeps the directory");
	TAP_IS(r_bad, 0u, "rmdir + fsync_dir never comes back; an undone rmdir is the directory as it was");
	TAP_OK(r_back > 0 && r_gone > 0, "rmdir without fsync_dir sometimes undone (%u), sometimes kept (%u)", r_back, r_gone);
	TAP_OK(mr_bad == 0 && mr_gone > 0 && mr_there > 0,
	       "mkdir + rmdir unsynced: gone (%u) or back empty (%u), both undone or one kept", mr_gone, mr_there);
	TAP_IS(e_bad, 0u, "rmdir of a non-empty directory fails and loses nothing");
}

/* vfs_write_file_atomic cut at every op: the file is old or new, never partial or missing. */
static void test_atomic_replace(void)
{
	static uint8_t oldv[5000], newv[9000], got[65536];
	char p[700];
	size_t len = 0;
	uint64_t k;
	unsigned bad = 0, n_old = 0, n_new = 0, runs = 0;
	fill(oldv, sizeof oldv, 0x33);
	fill(newv, sizeof newv, 0x44);
	snprintf(p, sizeof p, "%s/record", dir);
	put_durable(p, oldv, sizeof oldv);
	crashvfs_crash(0, NULL);
	vfs_write_file_atomic(p, newv, sizeof newv);
	k = crashvfs_op_count();
	TAP_OK(k >= 5, "an atomic replace is %llu crash points", (unsigned long long)k);
	for (uint64_t i = 0; i <= k; i++) {
		for (unsigned s = 0; s < 20; s++) {
			int r;
			put_durable(p, oldv, sizeof oldv);
			crashvfs_crash(0, NULL);
			crashvfs_arm(i);
			r = vfs_write_file_atomic(p, newv, sizeof newv);
			crashvfs_crash(base_seed + s * 1000 + i, NULL);
			runs++;
			if (slurp(p, got, sizeof got, &len)) bad++;
			else if (len == sizeof newv && !memcmp(got, newv, len)) n_new++;
			else if (len == sizeof oldv && !memcmp(got, oldv, len) && r != 0) n_old++;
			else bad++;
		}
	}
	TAP_IS(bad, 0u, "%u crashes inside an atomic replace: old or new, and new once it returned", runs);
	TAP_OK(n_old > 0 && n_new > 0, "both outcomes seen (old %u, new %u)", n_old, n_new);
}

static void test_helpers(void)
{
	static uint8_t a[70000], got[80000];
	char from[700], to[700], f[800];
	size_t len = 0;
	int fd;
	fill(a, sizeof a, 0x66);
	snprintf(from, sizeof from, "%s/tree", dir);
	snprintf(to, sizeof to, "%s/tree-copy", dir);
	snprintf(f, sizeof f, "%s/sub", from);
	mkdir(from, 0755);
	mkdir(f, 0755);
	snprintf(f, sizeof f, "%s/sub/file", from);
	fd = open(f, O_CREAT | O_WRONLY, 0600);
	TAP_OK(fd >= 0 && write(fd, a, sizeof a) == (ssize_t)sizeof a, "tree to copy");
	close(fd);
	TAP_IS(crashvfs_copy_tree(from, to), 0, "copy_tree");
	snprintf(f, sizeof f, "%s/sub/file", to);
	TAP_OK(!slurp(f, got, sizeof got, &len) && len == sizeof a && !memcmp(got, a, len), "copy_tree copies contents");
	TAP_IS(crashvfs_remove_tree(to), 0, "remove_tree");
	TAP_OK(!exists(to) && exists(from), "remove_tree removes only its tree");
	crashvfs_remove_tree(from);
	snprintf(f, sizeof f, "%s/unsynced", dir);
	fd = vfs_open(f, O_CREAT | O_WRONLY, 0644);
	vfs_pwrite_full(fd, a, 1000, 0);
	vfs_close(fd);
	crashvfs_settle();
	crashvfs_crash(base_seed, NULL);
	TAP_OK(!slurp(f, got, sizeof got, &len) && len == 1000 && !memcmp(got, a, 1000), "settle makes everything durable");
	unlink(f);
}

int main(void)
{
	base_seed = tap_seed();
	snprintf(dir, sizeof dir, "%s/files", tap_tmpdir());
	snprintf(dir_a, sizeof dir_a, "%s/a", dir);
	snprintf(dir_b, sizeof dir_b, "%s/b", dir);
	if (mkdir(dir, 0755) || mkdir(dir_a, 0755) || mkdir(dir_b, 0755)) {
		perror("mkdir");
		return 1;
	}
	{
		char stash[600];
		snprintf(stash, sizeof stash, "%s/stash", tap_tmpdir());
		TAP_IS(crashvfs_install(stash), 0, "install");
	}
	TAP_OK(!vfs_is_posix(), "crashvfs in force");
	test_arm();
	test_data();
	test_fsync_survives();
	test_truncate_punch();
	test_names();
	test_dirs();
	test_atomic_replace();
	test_helpers();
	crashvfs_uninstall();
	TAP_OK(vfs_is_posix(), "uninstall restores posix");
	return tap_done();
}
