/* crashvfs: a test-only vfs (common/vfs.h) that simulates power loss.
 *
 * It operates on the real files (so readdir, stat and plain reads keep working) and records, next
 * to them, what a disk with a volatile write cache and a filesystem without ordering guarantees
 * could still lose:
 *   - data: every pwrite / ftruncate / punch_hole since the last fsync of the file is volatile;
 *     fsync of the file makes all of them durable (data and size);
 *   - names: every create (open with O_CREAT that made a file), mkdir, rmdir, rename and unlink is
 *     volatile until fsync_dir of its directory (for rename: of the source's or the destination's
 *     directory, since journaling filesystems commit a rename as one transaction).  A volatile name
 *     operation may be undone at a crash, unless a later operation that is kept depends on it (same
 *     path, same inode, or a path below it), so the namespace after a crash is always one a real
 *     filesystem could show: a directory whose mkdir was never made durable still survives when
 *     an entry inside it does (a file created in it and its fsync_dir, as a journaling filesystem
 *     commits the mkdir with or before it), but an unsynced mkdir with nothing durable below it
 *     can vanish, and an unsynced rmdir can come back (empty, or with what the undone unlinks
 *     before it held).  Directories made or removed outside the vfs (plain mkdir, rmdir) count as
 *     durable at once.
 *
 * Crash points: every mutating op (pwrite, fsync, ftruncate, punch_hole, rename, unlink, mkdir,
 * rmdir, fsync_dir, open with O_CREAT or O_TRUNC) is numbered from 0 since install/arm/crash.  crashvfs_arm(n) makes op n
 * and every one after it fail with -EIO without touching the disk ("power cut"); reads and close
 * keep working.  crashvfs_crash(seed) then rewrites the real files into a state the disk could
 * hold after the power loss: durable contents plus a random subset of the volatile writes, some of
 * them torn at 512-byte sector granularity (each sector of a write either reached the disk or not),
 * and volatile name operations kept or undone as allowed.  Deterministic for a given seed and the
 * same sequence of operations.
 *
 * Real fsync is never called (speed): durability here is only simulated.
 * $CRASHVFS_TRACE=1 prints every mutating op with its number on stderr (to locate a crash point).
 * Thread-safe (one mutex). */
#ifndef OCIBLK_TESTS_CRASHVFS_H
#define OCIBLK_TESTS_CRASHVFS_H

#include <stdbool.h>
#include <stdint.h>

struct crashvfs_report {
	uint64_t files_rewritten;       /* files with volatile data ops replayed */
	uint64_t data_ops_kept;         /* pwrite / ftruncate / punch that reached the disk whole */
	uint64_t data_ops_dropped;      /* ... that were lost */
	uint64_t data_ops_torn;         /* ... that reached the disk in part (some sectors) */
	uint64_t dir_ops_kept;          /* volatile create / rename / unlink / mkdir / rmdir kept */
	uint64_t dir_ops_undone;        /* ... undone */
	uint64_t dir_ops_undo_failed;   /* ... that could not be undone (their directory was removed
					 * outside the vfs): they are kept */
};

/* Installs the crashvfs (vfs_set) with empty state: everything on disk now counts as durable.
 * stash_dir: a directory on the same filesystem as the files under test (created if missing),
 * outside any directory the code under test lists; unlinked and replaced files are kept there as
 * hard links until their removal is durable. */
int crashvfs_install(const char *stash_dir);
/* Forgets the volatile state (as if everything were synced) and restores the POSIX vfs. */
void crashvfs_uninstall(void);

/* Forgets the volatile state: everything on disk now counts as durable (the crashvfs stays
 * installed; it never calls the real fsync, so tests may keep it for their setup and checks). */
void crashvfs_settle(void);

/* Mutating ops since install / arm / crash. */
uint64_t crashvfs_op_count(void);
/* Power cut at op n (0-based, counted from this call): ops 0..n-1 run, op n and all after fail
 * with -EIO. */
void crashvfs_arm(uint64_t n);
/* True once an armed power cut has happened. */
bool crashvfs_power_is_cut(void);

/* Simulates the power loss now: rewrites the files as described above, then forgets the volatile
 * state, disarms and resets the op counter (the crashvfs stays installed).  File descriptors the
 * code under test still holds keep pointing at the same files.  report may be NULL.
 * Returns 0 or -errno when the real filesystem failed (a harness failure, not a crash outcome). */
int crashvfs_crash(uint64_t seed, struct crashvfs_report *report);

/* Test helpers (plain syscalls, outside any vfs): recursive copy of a directory tree (regular
 * files, directories, symlinks; copy_file_range) and recursive removal.  0 or -errno. */
int crashvfs_copy_tree(const char *from, const char *to);
int crashvfs_remove_tree(const char *path);

/* A fresh private directory for a crash test's files: under $TMPDIR when set, else under /dev/shm
 * when it is writable (a tmpfs: thousands of crash runs create and delete stores, and rmdir on a
 * disk filesystem costs milliseconds), else under /tmp.  crashvfs_workdir_done(keep) removes it
 * unless keep (then it says where it is on stderr). */
const char *crashvfs_workdir(void);
void crashvfs_workdir_done(bool keep);

#endif
