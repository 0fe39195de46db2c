/* Private to the ext4_apply*.c files of image-import/: the filesystem handle and the inode-level
 * operations the tar applier is built from.  All of them log their errors once (naming the label
 * and the entry being applied) and return 0 or -errno. */
#ifndef OCIBLK_IMAGE_IMPORT_EXT4_INTERNAL_H
#define OCIBLK_IMAGE_IMPORT_EXT4_INTERNAL_H
#ifndef OCIBLK_IMAGE_IMPORT_INTERNAL
#error "ext4_internal.h is private to image-import/"
#endif

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ext2fs/ext2fs.h>

#include "image-import/ext4_apply.h"

/* A set of normalized paths ("a/b/c", "" for the root): the paths a layer has written so far,
 * and their ancestors (whiteouts and opaque directories only remove what is not in it). */
struct ext4_pathset {
	char **slots;
	size_t cap, count;
};

/* In-memory index of the directories a layer touches: (directory, name) -> inode and the
 * directory block holding the entry, so lookups, additions and removals cost O(1) instead of a
 * scan of the whole directory (a 10,000-file directory would be quadratic otherwise).  A
 * directory is loaded (one pass over its blocks) on first use and gets a generation number;
 * entries are keyed by generation, so forgetting a directory (it was freed) is O(1). */
struct ext4_dcache_dir {
	ext2_ino_t ino;   /* 0: empty slot */
	uint32_t gen;     /* 0: not loaded */
};
struct ext4_dcache_ent {
	uint32_t gen;     /* 0: empty slot, UINT32_MAX: deleted */
	ext2_ino_t ino;
	uint32_t lblk;    /* directory block of the entry, UINT32_MAX: unknown */
	char *name;
};
struct ext4_dcache {
	struct ext4_dcache_dir *dirs;
	size_t dirs_cap, dirs_count;
	struct ext4_dcache_ent *ents;
	size_t ents_cap, ents_used;  /* used counts deleted slots too */
	uint32_t next_gen;
};

struct ext4_apply {
	ext2_filsys fs;
	struct cow_device *dev;
	struct ext4_params params;
	struct ext4_pathset upper;
	struct ext4_dcache dcache;
	const char *label;   /* for messages: ext4_apply_tar's label while it runs, else fs_label */
	const char *fs_label; /* mkfs/open's label, kept for open, close and everything outside tar */
	const char *entry;   /* the entry being applied, or NULL */
};

/* A timestamp as tar gives it. */
struct ext4_time {
	int64_t sec;
	long nsec;
};

/* What an entry says about the inode it creates or updates. */
struct ext4_meta {
	uint16_t mode;       /* type and permission bits, LINUX_S_IF* | 07777 */
	uint32_t uid, gid;
	struct ext4_time atime, mtime;
};

int ext4_pathset_add(struct ext4_pathset *set, const char *path, size_t len);
bool ext4_pathset_has(const struct ext4_pathset *set, const char *path, size_t len);
void ext4_pathset_clear(struct ext4_pathset *set);

/* Logs "LABEL: entry ENTRY: WHAT: <libext2fs message>" (or without the entry part) and returns the
 * matching -errno; running out of blocks or inodes gets the --size hint. */
int ext4_fail(struct ext4_apply *a, errcode_t err, const char *what);
int ext4_errno(errcode_t err);

/* Creates an inode of meta->mode's type (not a directory: see ext4_mkdir) holding nothing yet,
 * links count 1, not linked anywhere.  *ino_out receives its number. */
int ext4_new_inode(struct ext4_apply *a, ext2_ino_t dir, const struct ext4_meta *meta, ext2_ino_t *ino_out);
/* Creates directory name in parent (or the root directory when ino == EXT2_ROOT_INO). */
int ext4_mkdir(struct ext4_apply *a, ext2_ino_t parent, const char *name, const struct ext4_meta *meta,
	       ext2_ino_t ino, ext2_ino_t *ino_out);
/* Creates a symlink inode (fast when short) with the given target; not linked anywhere. */
int ext4_new_symlink(struct ext4_apply *a, ext2_ino_t dir, const struct ext4_meta *meta, const char *target,
		     ext2_ino_t *ino_out);
/* Creates a device, FIFO or socket inode; not linked anywhere. */
int ext4_new_special(struct ext4_apply *a, ext2_ino_t dir, const struct ext4_meta *meta, uint32_t rdev_major,
		     uint32_t rdev_minor, ext2_ino_t *ino_out);
/* Adds the entry name -> ino to dir (growing dir as needed).  Does not touch ino's link count. */
int ext4_dir_add(struct ext4_apply *a, ext2_ino_t dir, const char *name, ext2_ino_t ino, int file_type);
/* Looks name up in dir: 0 and *ino, or -ENOENT (not logged). */
int ext4_dir_lookup(struct ext4_apply *a, ext2_ino_t dir, const char *name, ext2_ino_t *ino);
/* Removes the entry name (inode ino) from dir, and the whole tree under it when it is a directory:
 * blocks, xattr blocks and inodes are freed when their last link goes. */
int ext4_remove(struct ext4_apply *a, ext2_ino_t dir, const char *name, ext2_ino_t ino);
/* Sets mode bits, owner and times of an existing inode; ctime and crtime stay as they are. */
int ext4_set_meta(struct ext4_apply *a, ext2_ino_t ino, const struct ext4_meta *meta);
int ext4_read_inode(struct ext4_apply *a, ext2_ino_t ino, struct ext2_inode_large *inode);
int ext4_write_inode(struct ext4_apply *a, ext2_ino_t ino, struct ext2_inode_large *inode);
/* The entries of a directory, without "." and "..". */
struct ext4_dir_list {
	size_t count;
	ext2_ino_t *inos;
	char **names;        /* point into buf */
	char *buf;
	size_t buf_len, buf_cap, cap;
};
int ext4_dir_list(struct ext4_apply *a, ext2_ino_t ino, struct ext4_dir_list *out);
void ext4_dir_list_free(struct ext4_dir_list *list);
/* Writes a freshly allocated inode: the whole on-disk inode, zero beyond the large struct. */
int ext4_write_new_inode(struct ext4_apply *a, ext2_ino_t ino, struct ext2_inode_large *inode);
int ext4_file_type(uint16_t mode);

#endif
