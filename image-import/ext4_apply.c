/* The ext4 filesystem image-import builds on a cow/ device: deterministic mkfs, open, close, and
 * the inode-level operations (create, link, remove) the tar applier uses (ext4_apply_tar.c).
 *
 * Invariants:
 *   - Determinism: nothing here reads the clock or a random source.  UUID, hash seed and every
 *     time libext2fs or we invent come from ext4_params; allocation is libext2fs's first-fit from
 *     goals that depend only on the filesystem's contents, so the same layers give the same blocks.
 *   - The device starts all-zero: mkfs writes only metadata it needs (inode tables are marked
 *     zeroed, the journal is created lazily), so an empty filesystem costs a few hundred KiB.
 *   - Directories are linear (never EXT2_INDEX_FL): always valid ext4, whatever their size; the
 *     kernel indexes them itself when it adds entries.
 *   - Every inode this file writes has a 256-byte body with i_extra_isize 32 and nanosecond
 *     times; a reused inode number never shows stale bytes (new inodes are written whole). */
#define OCIBLK_IMAGE_IMPORT_INTERNAL
#include "image-import/ext4_apply.h"
#include "image-import/ext4_internal.h"
#include "image-import/ext4_io.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <et/com_err.h>

#include "common/log.h"
#include "cow/cow.h"

/* mkfs parameters (mke2fs's ext4 defaults). */
#define EXT4_MKFS_BLOCK_LOG 2          /* 1024 << 2 = 4096 */
#define EXT4_MKFS_INODE_SIZE 256
#define EXT4_MKFS_INODE_RATIO 16384    /* bytes per inode */
#define EXT4_MKFS_LOG_GROUPS_PER_FLEX 4
#define EXT4_MKFS_MIN_BYTES (16ull << 20)
#define EXT4_LOST_FOUND_BYTES 16384

static int dc_set_new(struct ext4_apply *a, ext2_ino_t ino);

/* ---------------------------------------------------------------- errors -------------------- */

int ext4_errno(errcode_t err)
{
	if (err > 0 && err < 4096) return -(int)err;
	switch (err) {
	case 0: return 0;
	case EXT2_ET_NO_MEMORY: return -ENOMEM;
	case EXT2_ET_BLOCK_ALLOC_FAIL:
	case EXT2_ET_INODE_ALLOC_FAIL:
	case EXT2_ET_DIR_NO_SPACE:
	case EXT2_ET_TOOSMALL:
		return -ENOSPC;
	case EXT2_ET_FILE_NOT_FOUND: return -ENOENT;
	case EXT2_ET_EA_NO_SPACE:
	case EXT2_ET_EA_KEY_NOT_FOUND:
		return -E2BIG;
	default: return -EIO;
	}
}

int ext4_fail(struct ext4_apply *a, errcode_t err, const char *what)
{
	int r = ext4_errno(err);
	int io_err = a->fs ? ext4_io_first_error(a->fs->io) : 0;
	const char *label = a->label && *a->label ? a->label : "ext4";

	if (io_err) r = io_err;
	if (r == -ENOSPC) {
		if (a->entry)
			return log_error(r, "%s: entry %s needs more space than the device has: use --size",
					 label, a->entry);
		return log_error(r, "%s: %s: the device is full: use --size", label, what);
	}
	const char *msg = io_err ? strerror(-io_err) : error_message(err);
	if (a->entry) return log_error(r, "%s: entry %s: %s: %s", label, a->entry, what, msg);
	return log_error(r, "%s: %s: %s", label, what, msg);
}

/* ---------------------------------------------------------------- path set ------------------ */

static uint64_t hash_path(const char *p, size_t len)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < len; i++) h = (h ^ (uint8_t)p[i]) * 0x100000001b3ull;
	return h;
}

static bool slot_matches(const char *slot, const char *p, size_t len)
{
	return !strncmp(slot, p, len) && slot[len] == '\0';
}

bool ext4_pathset_has(const struct ext4_pathset *set, const char *p, size_t len)
{
	if (!set->cap) return false;
	for (size_t i = hash_path(p, len) & (set->cap - 1);; i = (i + 1) & (set->cap - 1)) {
		if (!set->slots[i]) return false;
		if (slot_matches(set->slots[i], p, len)) return true;
	}
}

int ext4_pathset_add(struct ext4_pathset *set, const char *p, size_t len)
{
	if ((set->count + 1) * 2 > set->cap) {
		size_t ncap = set->cap ? set->cap * 2 : 1024;
		char **ns = calloc(ncap, sizeof(*ns));
		if (!ns) return -ENOMEM;
		for (size_t i = 0; i < set->cap; i++) {
			char *s = set->slots[i];
			if (!s) continue;
			size_t j = hash_path(s, strlen(s)) & (ncap - 1);
			while (ns[j]) j = (j + 1) & (ncap - 1);
			ns[j] = s;
		}
		free(set->slots);
		set->slots = ns;
		set->cap = ncap;
	}
	size_t i = hash_path(p, len) & (set->cap - 1);
	for (; set->slots[i]; i = (i + 1) & (set->cap - 1))
		if (slot_matches(set->slots[i], p, len)) return 0;
	set->slots[i] = strndup(p, len);
	if (!set->slots[i]) return -ENOMEM;
	set->count++;
	return 0;
}

void ext4_pathset_clear(struct ext4_pathset *set)
{
	for (size_t i = 0; i < set->cap; i++) free(set->slots[i]);
	free(set->slots);
	memset(set, 0, sizeof(*set));
}

/* ---------------------------------------------------------------- inodes -------------------- */

int ext4_file_type(uint16_t mode)
{
	switch (mode & LINUX_S_IFMT) {
	case LINUX_S_IFREG: return EXT2_FT_REG_FILE;
	case LINUX_S_IFDIR: return EXT2_FT_DIR;
	case LINUX_S_IFCHR: return EXT2_FT_CHRDEV;
	case LINUX_S_IFBLK: return EXT2_FT_BLKDEV;
	case LINUX_S_IFIFO: return EXT2_FT_FIFO;
	case LINUX_S_IFSOCK: return EXT2_FT_SOCK;
	case LINUX_S_IFLNK: return EXT2_FT_SYMLINK;
	default: return EXT2_FT_UNKNOWN;
	}
}

/* ext4's time encoding: 32 low bits of seconds, and in the extra word 2 epoch bits (seconds
 * beyond 32 bits) and 30 bits of nanoseconds.  Representable: [-2^31, 2^34 - 2^31 - 1]. */
static void time_encode(struct ext4_time t, __u32 *lo, __u32 *extra)
{
	const int64_t min = INT32_MIN, max = (int64_t)INT32_MAX + (3ll << 32);
	int64_t s = t.sec < min ? min : t.sec > max ? max : t.sec;
	long ns = t.nsec < 0 || t.nsec > 999999999 ? 0 : t.nsec;
	*lo = (__u32)(uint32_t)s;
	*extra = (__u32)((((uint64_t)(s - (int32_t)(uint32_t)s)) >> 32) & EXT4_EPOCH_MASK) | ((__u32)ns << EXT4_EPOCH_BITS);
}

static void inode_set_meta(struct ext2_inode_large *in, const struct ext4_meta *m)
{
	in->i_mode = m->mode;
	in->i_uid = (__u16)m->uid;
	ext2fs_set_i_uid_high(*in, (__u16)(m->uid >> 16));
	in->i_gid = (__u16)m->gid;
	ext2fs_set_i_gid_high(*in, (__u16)(m->gid >> 16));
	time_encode(m->atime, &in->i_atime, &in->i_atime_extra);
	time_encode(m->mtime, &in->i_mtime, &in->i_mtime_extra);
}

/* A fresh in-memory inode: meta, ctime = crtime = the image timestamp. */
static void inode_init(struct ext4_apply *a, struct ext2_inode_large *in, const struct ext4_meta *m)
{
	struct ext4_time ts = { a->params.timestamp_unix, 0 };
	memset(in, 0, sizeof(*in));
	in->i_extra_isize = sizeof(struct ext2_inode_large) - EXT2_GOOD_OLD_INODE_SIZE;
	inode_set_meta(in, m);
	time_encode(ts, &in->i_ctime, &in->i_ctime_extra);
	time_encode(ts, &in->i_crtime, &in->i_crtime_extra);
}

/* i_block as an extent tree root holding at most one extent (lblk 0 -> blk, count blocks). */
static void inode_set_single_extent(struct ext2_inode_large *in, blk64_t blk, uint16_t count)
{
	struct ext3_extent_header *eh = (struct ext3_extent_header *)in->i_block;
	memset(in->i_block, 0, sizeof(in->i_block));
	eh->eh_magic = ext2fs_cpu_to_le16(EXT3_EXT_MAGIC);
	eh->eh_max = ext2fs_cpu_to_le16((sizeof(in->i_block) - sizeof(*eh)) / sizeof(struct ext3_extent));
	eh->eh_depth = 0;
	in->i_flags |= EXT4_EXTENTS_FL;
	if (!count) return;
	struct ext3_extent *ex = (struct ext3_extent *)(eh + 1);
	eh->eh_entries = ext2fs_cpu_to_le16(1);
	ex->ee_block = 0;
	ex->ee_len = ext2fs_cpu_to_le16(count);
	ex->ee_start = ext2fs_cpu_to_le32((__u32)blk);
	ex->ee_start_hi = ext2fs_cpu_to_le16((__u16)(blk >> 32));
}

int ext4_read_inode(struct ext4_apply *a, ext2_ino_t ino, struct ext2_inode_large *in)
{
	errcode_t err = ext2fs_read_inode_full(a->fs, ino, (struct ext2_inode *)in, sizeof(*in));
	return err ? ext4_fail(a, err, "read inode") : 0;
}

int ext4_write_inode(struct ext4_apply *a, ext2_ino_t ino, struct ext2_inode_large *in)
{
	errcode_t err = ext2fs_write_inode_full(a->fs, ino, (struct ext2_inode *)in, sizeof(*in));
	return err ? ext4_fail(a, err, "write inode") : 0;
}

int ext4_write_new_inode(struct ext4_apply *a, ext2_ino_t ino, struct ext2_inode_large *in)
{
	unsigned size = EXT2_INODE_SIZE(a->fs->super);
	uint8_t buf[1024];
	if (size < sizeof(*in) || size > sizeof(buf)) return log_error(-EINVAL, "ext4: unsupported inode size %u", size);
	memset(buf, 0, size);
	memcpy(buf, in, sizeof(*in));
	errcode_t err = ext2fs_write_inode_full(a->fs, ino, (struct ext2_inode *)buf, size);
	return err ? ext4_fail(a, err, "write inode") : 0;
}

static int alloc_inode(struct ext4_apply *a, ext2_ino_t dir, uint16_t mode, ext2_ino_t *ino)
{
	errcode_t err = ext2fs_new_inode(a->fs, dir, mode, NULL, ino);
	if (err) return ext4_fail(a, err, "allocate inode");
	ext2fs_inode_alloc_stats2(a->fs, *ino, +1, LINUX_S_ISDIR(mode));
	return 0;
}

static int alloc_block(struct ext4_apply *a, ext2_ino_t ino, blk64_t *blk)
{
	struct ext2_inode empty;
	memset(&empty, 0, sizeof(empty));
	blk64_t goal = ext2fs_find_inode_goal(a->fs, ino, &empty, 0);
	errcode_t err = ext2fs_new_block2(a->fs, goal, NULL, blk);
	if (err) return ext4_fail(a, err, "allocate block");
	ext2fs_block_alloc_stats2(a->fs, *blk, +1);
	return 0;
}

int ext4_new_inode(struct ext4_apply *a, ext2_ino_t dir, const struct ext4_meta *m, ext2_ino_t *ino_out)
{
	struct ext2_inode_large in;
	int r = alloc_inode(a, dir, m->mode, ino_out);
	if (r) return r;
	inode_init(a, &in, m);
	in.i_links_count = 1;
	if (LINUX_S_ISREG(m->mode)) inode_set_single_extent(&in, 0, 0);
	return ext4_write_new_inode(a, *ino_out, &in);
}

int ext4_new_special(struct ext4_apply *a, ext2_ino_t dir, const struct ext4_meta *m, uint32_t major,
		     uint32_t minor, ext2_ino_t *ino_out)
{
	struct ext2_inode_large in;
	int r = alloc_inode(a, dir, m->mode, ino_out);
	if (r) return r;
	inode_init(a, &in, m);
	in.i_links_count = 1;
	if (LINUX_S_ISCHR(m->mode) || LINUX_S_ISBLK(m->mode)) {
		/* The kernel's encoding: old 16-bit form when it fits, else the new 32-bit form. */
		if (major < 256 && minor < 256) {
			in.i_block[0] = ext2fs_cpu_to_le32(major << 8 | minor);
		} else {
			in.i_block[1] = ext2fs_cpu_to_le32((minor & 0xff) | ((major & 0xfff) << 8) |
							   ((minor & ~0xffu) << 12));
		}
	}
	return ext4_write_new_inode(a, *ino_out, &in);
}

int ext4_new_symlink(struct ext4_apply *a, ext2_ino_t dir, const struct ext4_meta *m, const char *target,
		     ext2_ino_t *ino_out)
{
	struct ext2_inode_large in;
	size_t len = strlen(target);
	int r;

	if (len >= a->fs->blocksize) return log_error(-ENAMETOOLONG, "%s: entry %s: symlink target too long",
						    a->label, a->entry ? a->entry : "?");
	r = alloc_inode(a, dir, m->mode, ino_out);
	if (r) return r;
	inode_init(a, &in, m);
	in.i_links_count = 1;
	in.i_size = (__u32)len;
	if (len < sizeof(in.i_block)) {
		memcpy(in.i_block, target, len); /* fast symlink: no blocks, no extent flag */
	} else {
		blk64_t blk;
		char *buf;
		r = alloc_block(a, *ino_out, &blk);
		if (r) return r;
		buf = calloc(1, a->fs->blocksize);
		if (!buf) return log_error(-ENOMEM, "%s: out of memory", a->label);
		memcpy(buf, target, len);
		errcode_t err = io_channel_write_blk64(a->fs->io, blk, 1, buf);
		free(buf);
		if (err) return ext4_fail(a, err, "write symlink");
		inode_set_single_extent(&in, blk, 1);
		ext2fs_iblk_set(a->fs, (struct ext2_inode *)&in, 1);
	}
	return ext4_write_new_inode(a, *ino_out, &in);
}

static int parent_links_inc(struct ext4_apply *a, ext2_ino_t parent, int delta)
{
	struct ext2_inode_large in;
	int r = ext4_read_inode(a, parent, &in);
	if (r) return r;
	if (delta > 0) {
		/* dir_nlink: past the limit a directory's count sticks at 1 ("many"). */
		if (in.i_links_count != 1) in.i_links_count = in.i_links_count + 1 >= EXT2_LINK_MAX ? 1 : in.i_links_count + 1;
	} else if (in.i_links_count > 2) {
		in.i_links_count--;
	}
	return ext4_write_inode(a, parent, &in);
}

int ext4_mkdir(struct ext4_apply *a, ext2_ino_t parent, const char *name, const struct ext4_meta *m,
	       ext2_ino_t ino, ext2_ino_t *ino_out)
{
	struct ext2_inode_large in;
	blk64_t blk;
	char *block = NULL;
	errcode_t err;
	int r;

	if (!ino) {
		r = alloc_inode(a, parent, m->mode, &ino);
		if (r) return r;
	} else {
		ext2fs_inode_alloc_stats2(a->fs, ino, +1, 1);
	}
	r = alloc_block(a, ino, &blk);
	if (r) return r;
	err = ext2fs_new_dir_block(a->fs, ino, parent, &block);
	if (!err) err = ext2fs_write_dir_block4(a->fs, blk, block, 0, ino);
	ext2fs_free_mem(&block);
	if (err) return ext4_fail(a, err, "write directory block");
	inode_init(a, &in, m);
	in.i_links_count = 2;
	in.i_size = a->fs->blocksize;
	inode_set_single_extent(&in, blk, 1);
	ext2fs_iblk_set(a->fs, (struct ext2_inode *)&in, 1);
	r = ext4_write_new_inode(a, ino, &in);
	if (!r) r = dc_set_new(a, ino);
	if (r) return r;
	if (name) {
		r = ext4_dir_add(a, parent, name, ino, EXT2_FT_DIR);
		if (r) return r;
		r = parent_links_inc(a, parent, +1);
		if (r) return r;
	}
	if (ino_out) *ino_out = ino;
	return 0;
}

/* ---------------------------------------------------------------- directory cache ----------- */

static uint64_t hash_ent(uint32_t gen, const char *name, size_t len)
{
	return hash_path(name, len) ^ ((uint64_t)gen * 0x9e3779b97f4a7c15ull);
}

static struct ext4_dcache_dir *dc_dir(struct ext4_dcache *c, ext2_ino_t ino, bool create)
{
	if (create && (c->dirs_count + 1) * 2 > c->dirs_cap) {
		size_t ncap = c->dirs_cap ? c->dirs_cap * 2 : 256;
		struct ext4_dcache_dir *nd = calloc(ncap, sizeof(*nd));
		if (!nd) return NULL;
		for (size_t i = 0; i < c->dirs_cap; i++) {
			if (!c->dirs[i].ino) continue;
			size_t j = (c->dirs[i].ino * 0x9e3779b1u) & (ncap - 1);
			while (nd[j].ino) j = (j + 1) & (ncap - 1);
			nd[j] = c->dirs[i];
		}
		free(c->dirs);
		c->dirs = nd;
		c->dirs_cap = ncap;
	}
	if (!c->dirs_cap) return NULL;
	size_t i = (ino * 0x9e3779b1u) & (c->dirs_cap - 1);
	for (; c->dirs[i].ino; i = (i + 1) & (c->dirs_cap - 1))
		if (c->dirs[i].ino == ino) return &c->dirs[i];
	if (!create) return NULL;
	c->dirs[i].ino = ino;
	c->dirs[i].gen = 0;
	c->dirs_count++;
	return &c->dirs[i];
}

static struct ext4_dcache_ent *dc_find(struct ext4_dcache *c, uint32_t gen, const char *name, size_t len)
{
	if (!c->ents_cap) return NULL;
	for (size_t i = hash_ent(gen, name, len) & (c->ents_cap - 1);; i = (i + 1) & (c->ents_cap - 1)) {
		struct ext4_dcache_ent *e = &c->ents[i];
		if (!e->gen) return NULL;
		if (e->gen == gen && !strncmp(e->name, name, len) && e->name[len] == '\0') return e;
	}
}

static int dc_add(struct ext4_dcache *c, uint32_t gen, const char *name, size_t len, ext2_ino_t ino, uint32_t lblk)
{
	if ((c->ents_used + 1) * 2 > c->ents_cap) {
		size_t live = 0, ncap = 1024;
		for (size_t i = 0; i < c->ents_cap; i++) live += c->ents[i].gen && c->ents[i].gen != UINT32_MAX;
		while (ncap < live * 4) ncap *= 2;
		struct ext4_dcache_ent *ne = calloc(ncap, sizeof(*ne));
		if (!ne) return -ENOMEM;
		for (size_t i = 0; i < c->ents_cap; i++) {
			struct ext4_dcache_ent *e = &c->ents[i];
			if (!e->gen || e->gen == UINT32_MAX) continue;
			size_t j = hash_ent(e->gen, e->name, strlen(e->name)) & (ncap - 1);
			while (ne[j].gen) j = (j + 1) & (ncap - 1);
			ne[j] = *e;
		}
		free(c->ents);
		c->ents = ne;
		c->ents_cap = ncap;
		c->ents_used = live;
	}
	size_t i = hash_ent(gen, name, len) & (c->ents_cap - 1);
	while (c->ents[i].gen) i = (i + 1) & (c->ents_cap - 1);
	char *n = strndup(name, len);
	if (!n) return -ENOMEM;
	c->ents[i] = (struct ext4_dcache_ent){ .gen = gen, .ino = ino, .lblk = lblk, .name = n };
	c->ents_used++;
	return 0;
}

static void dc_del(struct ext4_dcache_ent *e)
{
	free(e->name);
	e->name = NULL;
	e->gen = UINT32_MAX;
}

static void dc_free(struct ext4_dcache *c)
{
	for (size_t i = 0; i < c->ents_cap; i++) free(c->ents[i].name);
	free(c->ents);
	free(c->dirs);
	memset(c, 0, sizeof(*c));
}

/* A directory we just created, or one that was freed (its cached entries become unreachable). */
static int dc_set_new(struct ext4_apply *a, ext2_ino_t ino)
{
	struct ext4_dcache_dir *d = dc_dir(&a->dcache, ino, true);
	if (!d) return log_error(-ENOMEM, "%s: out of memory", a->label);
	d->gen = ++a->dcache.next_gen;
	return 0;
}

static void dc_forget(struct ext4_apply *a, ext2_ino_t ino)
{
	struct ext4_dcache_dir *d = dc_dir(&a->dcache, ino, false);
	if (d) d->gen = 0;
}

static unsigned dirblock_end(ext2_filsys fs)
{
	return fs->blocksize - (ext2fs_has_feature_metadata_csum(fs->super) ? sizeof(struct ext2_dir_entry_tail) : 0);
}

/* The entry at *off of a directory block, checked to lie inside [0, end). */
static int dirent_at(ext2_filsys fs, char *buf, unsigned off, unsigned end, struct ext2_dir_entry **de_out,
		     unsigned *rec_len)
{
	struct ext2_dir_entry *de = (struct ext2_dir_entry *)(buf + off);
	unsigned rl;
	if (off + 8 > end || ext2fs_get_rec_len(fs, de, &rl)) return -EUCLEAN;
	if (rl < 8 || rl % 4 || rl > end - off || (unsigned)ext2fs_dirent_name_len(de) + 8 > rl) return -EUCLEAN;
	*de_out = de;
	*rec_len = rl;
	return 0;
}

/* Reads logical block lblk of directory dir: 1 when it is a hole or lacks a checksum tail (then
 * the caller uses libext2fs's generic code), 0 with *pblk and buf filled, or -errno. */
static int dir_block_read(struct ext4_apply *a, ext2_ino_t dir, struct ext2_inode *inode, uint32_t lblk,
			  blk64_t *pblk, char *buf)
{
	errcode_t err = ext2fs_bmap2(a->fs, dir, inode, NULL, 0, lblk, NULL, pblk);
	if (err) return ext4_fail(a, err, "map directory block");
	if (!*pblk) return 1;
	err = ext2fs_read_dir_block4(a->fs, *pblk, buf, 0, dir);
	if (err) return ext4_fail(a, err, "read directory block");
	if (ext2fs_has_feature_metadata_csum(a->fs->super) && !ext2fs_dirent_has_tail(a->fs, (struct ext2_dir_entry *)buf))
		return 1;
	return 0;
}

static bool dir_managed(struct ext4_apply *a, const struct ext2_inode *in)
{
	return !(in->i_flags & (EXT2_INDEX_FL | EXT4_INLINE_DATA_FL)) && EXT2_I_SIZE(in) &&
	       EXT2_I_SIZE(in) % a->fs->blocksize == 0 && EXT2_I_SIZE(in) / a->fs->blocksize < UINT32_MAX;
}

/* The generation of directory dir in the cache, loading it first: > 0, or 0 when the directory
 * is not one this code manages (htree, inline data, unexpected layout), or -errno. */
static int64_t dc_ensure(struct ext4_apply *a, ext2_ino_t dir)
{
	struct ext4_dcache_dir *d = dc_dir(&a->dcache, dir, false);
	struct ext2_inode in;
	char *buf = NULL;
	errcode_t err;
	int r = 0;

	if (d && d->gen) return d->gen;
	err = ext2fs_read_inode(a->fs, dir, &in);
	if (err) return ext4_fail(a, err, "read directory inode");
	if (!LINUX_S_ISDIR(in.i_mode) || !dir_managed(a, &in)) return 0;
	uint32_t gen = ++a->dcache.next_gen, nblocks = (uint32_t)(EXT2_I_SIZE(&in) / a->fs->blocksize);
	unsigned end = dirblock_end(a->fs);
	buf = malloc(a->fs->blocksize);
	if (!buf) return log_error(-ENOMEM, "%s: out of memory", a->label);
	for (uint32_t lblk = 0; lblk < nblocks && !r; lblk++) {
		blk64_t pblk;
		r = dir_block_read(a, dir, &in, lblk, &pblk, buf);
		if (r) break;
		for (unsigned off = 0, rl; off < end && !r; off += rl) {
			struct ext2_dir_entry *de;
			if (dirent_at(a->fs, buf, off, end, &de, &rl)) {
				r = 1;
				break;
			}
			size_t len = (size_t)ext2fs_dirent_name_len(de);
			if (!de->inode || (len == 1 && de->name[0] == '.') ||
			    (len == 2 && de->name[0] == '.' && de->name[1] == '.'))
				continue;
			if (dc_add(&a->dcache, gen, de->name, len, de->inode, lblk)) r = log_error(-ENOMEM, "%s: out of memory", a->label);
		}
	}
	free(buf);
	if (r) return r < 0 ? r : 0; /* 1: not managed; entries under gen stay unreachable */
	d = dc_dir(&a->dcache, dir, true);
	if (!d) return log_error(-ENOMEM, "%s: out of memory", a->label);
	d->gen = gen;
	return gen;
}

/* Appends name -> ino in the last block of dir, growing dir by one block when it is full.
 * 1: the directory does not have the expected layout (caller falls back to ext2fs_link). */
static int dir_append(struct ext4_apply *a, ext2_ino_t dir, const char *name, ext2_ino_t ino, int ft,
		      uint32_t *lblk_out)
{
	size_t len = strlen(name);
	unsigned need = EXT2_DIR_REC_LEN(len), end = dirblock_end(a->fs);
	char *buf = malloc(a->fs->blocksize);
	int r = 1;

	if (!buf) return log_error(-ENOMEM, "%s: out of memory", a->label);
	for (int attempt = 0; attempt < 2; attempt++) {
		struct ext2_inode in;
		blk64_t pblk;
		errcode_t err = ext2fs_read_inode(a->fs, dir, &in);
		if (err) {
			r = ext4_fail(a, err, "read directory inode");
			break;
		}
		if (!dir_managed(a, &in)) break;
		uint32_t lblk = (uint32_t)(EXT2_I_SIZE(&in) / a->fs->blocksize) - 1;
		r = dir_block_read(a, dir, &in, lblk, &pblk, buf);
		if (r) break;
		struct ext2_dir_entry *slot = NULL, *de;
		for (unsigned off = 0, rl; off < end; off += rl) {
			if (dirent_at(a->fs, buf, off, end, &de, &rl)) {
				r = 1;
				goto out;
			}
			if (!de->inode) {
				if (rl >= need) {
					slot = de;
					break;
				}
				continue;
			}
			unsigned used = EXT2_DIR_REC_LEN(ext2fs_dirent_name_len(de));
			if (rl >= used + need) {
				ext2fs_set_rec_len(a->fs, used, de);
				slot = (struct ext2_dir_entry *)((char *)de + used);
				ext2fs_set_rec_len(a->fs, rl - used, slot);
				break;
			}
		}
		if (!slot) {
			if (attempt) {
				r = 1;
				break;
			}
			err = ext2fs_expand_dir(a->fs, dir);
			if (err) {
				r = ext4_fail(a, err, "expand directory");
				break;
			}
			continue;
		}
		slot->inode = ino;
		ext2fs_dirent_set_name_len(slot, (int)len);
		ext2fs_dirent_set_file_type(slot, ft);
		memcpy(slot->name, name, len);
		err = ext2fs_write_dir_block4(a->fs, pblk, buf, 0, dir);
		r = err ? ext4_fail(a, err, "write directory block") : 0;
		*lblk_out = lblk;
		break;
	}
out:
	free(buf);
	return r;
}

int ext4_dir_add(struct ext4_apply *a, ext2_ino_t dir, const char *name, ext2_ino_t ino, int file_type)
{
	uint32_t lblk = UINT32_MAX;
	int64_t gen = dc_ensure(a, dir);
	int r;

	if (gen < 0) return (int)gen;
	r = gen ? dir_append(a, dir, name, ino, file_type, &lblk) : 1;
	if (r < 0) return r;
	if (r) {
		errcode_t err = ext2fs_link(a->fs, dir, name, ino, file_type);
		if (err == EXT2_ET_DIR_NO_SPACE) {
			err = ext2fs_expand_dir(a->fs, dir);
			if (err) return ext4_fail(a, err, "expand directory");
			err = ext2fs_link(a->fs, dir, name, ino, file_type);
		}
		if (err) return ext4_fail(a, err, "add directory entry");
	}
	if (gen && dc_add(&a->dcache, (uint32_t)gen, name, strlen(name), ino, lblk))
		return log_error(-ENOMEM, "%s: out of memory", a->label);
	return 0;
}

int ext4_dir_lookup(struct ext4_apply *a, ext2_ino_t dir, const char *name, ext2_ino_t *ino)
{
	int64_t gen = dc_ensure(a, dir);
	if (gen < 0) return (int)gen;
	if (gen) {
		struct ext4_dcache_ent *e = dc_find(&a->dcache, (uint32_t)gen, name, strlen(name));
		if (!e) return -ENOENT;
		*ino = e->ino;
		return 0;
	}
	errcode_t err = ext2fs_lookup(a->fs, dir, name, (int)strlen(name), NULL, ino);
	if (err == EXT2_ET_FILE_NOT_FOUND) return -ENOENT;
	return err ? ext4_fail(a, err, "look up directory entry") : 0;
}

/* Removes the entry name -> ino from dir: in place when the cache knows its block. */
static int dir_unlink(struct ext4_apply *a, ext2_ino_t dir, const char *name, ext2_ino_t ino)
{
	int64_t gen = dc_ensure(a, dir);
	size_t len = strlen(name);
	struct ext4_dcache_ent *e;
	errcode_t err;

	if (gen < 0) return (int)gen;
	e = gen ? dc_find(&a->dcache, (uint32_t)gen, name, len) : NULL;
	if (e && e->lblk != UINT32_MAX) {
		struct ext2_inode in;
		blk64_t pblk;
		unsigned end = dirblock_end(a->fs);
		char *buf = malloc(a->fs->blocksize);
		int r;
		if (!buf) return log_error(-ENOMEM, "%s: out of memory", a->label);
		err = ext2fs_read_inode(a->fs, dir, &in);
		r = err ? ext4_fail(a, err, "read directory inode") : dir_block_read(a, dir, &in, e->lblk, &pblk, buf);
		if (!r) {
			struct ext2_dir_entry *de, *prev = NULL;
			unsigned rl, prev_rl = 0;
			r = 1;
			for (unsigned off = 0; off < end; off += rl, prev = de, prev_rl = rl) {
				if (dirent_at(a->fs, buf, off, end, &de, &rl)) break;
				if (de->inode != ino || (size_t)ext2fs_dirent_name_len(de) != len || memcmp(de->name, name, len))
					continue;
				if (prev) ext2fs_set_rec_len(a->fs, prev_rl + rl, prev);
				else de->inode = 0;
				err = ext2fs_write_dir_block4(a->fs, pblk, buf, 0, dir);
				r = err ? ext4_fail(a, err, "write directory block") : 0;
				break;
			}
		}
		free(buf);
		if (r <= 0) {
			if (!r) dc_del(e);
			return r;
		}
	}
	err = ext2fs_unlink(a->fs, dir, name, ino, 0);
	if (err) return ext4_fail(a, err, "remove directory entry");
	if (gen && (e = dc_find(&a->dcache, (uint32_t)gen, name, len))) dc_del(e);
	return 0;
}

struct list_ctx {
	struct ext4_dir_list *list;
	int err;
};

static int list_cb(ext2_ino_t dir, int entry, struct ext2_dir_entry *de, int offset, int blocksize, char *buf,
		   void *priv)
{
	struct list_ctx *c = priv;
	struct ext4_dir_list *l = c->list;
	int len = ext2fs_dirent_name_len(de);

	if (entry == DIRENT_DOT_FILE || entry == DIRENT_DOT_DOT_FILE || !de->inode) return 0;
	if (l->count == l->cap) {
		size_t ncap = l->cap ? l->cap * 2 : 64;
		ext2_ino_t *ni = realloc(l->inos, ncap * sizeof(*ni));
		if (!ni) goto nomem;
		l->inos = ni;
		l->cap = ncap;
	}
	if (l->buf_len + (size_t)len + 1 > l->buf_cap) {
		size_t ncap = l->buf_cap ? l->buf_cap * 2 : 4096;
		while (ncap < l->buf_len + (size_t)len + 1) ncap *= 2;
		char *nb = realloc(l->buf, ncap);
		if (!nb) goto nomem;
		l->buf = nb;
		l->buf_cap = ncap;
	}
	memcpy(l->buf + l->buf_len, de->name, (size_t)len);
	l->buf[l->buf_len + (size_t)len] = '\0';
	l->inos[l->count++] = de->inode;
	l->buf_len += (size_t)len + 1;
	return 0;
nomem:
	c->err = -ENOMEM;
	return DIRENT_ABORT;
}

int ext4_dir_list(struct ext4_apply *a, ext2_ino_t ino, struct ext4_dir_list *out)
{
	struct list_ctx c = { out, 0 };
	memset(out, 0, sizeof(*out));
	errcode_t err = ext2fs_dir_iterate2(a->fs, ino, 0, NULL, list_cb, &c);
	if (c.err) {
		ext4_dir_list_free(out);
		return log_error(c.err, "%s: list directory: out of memory", a->label);
	}
	if (err) {
		ext4_dir_list_free(out);
		return ext4_fail(a, err, "list directory");
	}
	out->names = malloc((out->count ? out->count : 1) * sizeof(*out->names));
	if (!out->names) {
		ext4_dir_list_free(out);
		return log_error(-ENOMEM, "%s: list directory: out of memory", a->label);
	}
	for (size_t i = 0, off = 0; i < out->count; i++) {
		out->names[i] = out->buf + off;
		off += strlen(out->buf + off) + 1;
	}
	return 0;
}

void ext4_dir_list_free(struct ext4_dir_list *l)
{
	free(l->inos);
	free(l->names);
	free(l->buf);
	memset(l, 0, sizeof(*l));
}

/* Frees an inode whose last link is gone: its blocks, its xattr block, the inode itself. */
static int inode_free(struct ext4_apply *a, ext2_ino_t ino)
{
	struct ext2_inode_large in;
	errcode_t err;
	int r = ext4_read_inode(a, ino, &in);
	if (r) return r;
	bool isdir = LINUX_S_ISDIR(in.i_mode);

	if (ext2fs_inode_has_valid_blocks2(a->fs, (struct ext2_inode *)&in)) {
		err = ext2fs_punch(a->fs, ino, (struct ext2_inode *)&in, NULL, 0, ~0ULL);
		if (err) return ext4_fail(a, err, "free blocks");
		r = ext4_read_inode(a, ino, &in);
		if (r) return r;
	}
	if (ext2fs_file_acl_block(a->fs, (struct ext2_inode *)&in)) {
		err = ext2fs_free_ext_attr(a->fs, ino, &in);
		if (err) return ext4_fail(a, err, "free xattrs");
		r = ext4_read_inode(a, ino, &in);
		if (r) return r;
	}
	in.i_links_count = 0;
	in.i_dtime = a->params.timestamp_unix > 0 ? (__u32)a->params.timestamp_unix : 1;
	r = ext4_write_inode(a, ino, &in);
	if (r) return r;
	ext2fs_inode_alloc_stats2(a->fs, ino, -1, isdir);
	return 0;
}

/* Removes name -> ino from dir (unless dir itself is going away: unlink false) and frees what
 * lost its last link.  The recursion is bounded by the directory depth, itself bounded by the
 * path length limit of every layer that built the tree. */
static int remove_tree(struct ext4_apply *a, ext2_ino_t dir, const char *name, ext2_ino_t ino, bool unlink)
{
	struct ext2_inode_large in;
	int r = ext4_read_inode(a, ino, &in);
	if (r) return r;

	if (LINUX_S_ISDIR(in.i_mode)) {
		struct ext4_dir_list l;
		r = ext4_dir_list(a, ino, &l);
		if (r) return r;
		for (size_t i = 0; i < l.count && !r; i++) r = remove_tree(a, ino, l.names[i], l.inos[i], false);
		ext4_dir_list_free(&l);
		if (r) return r;
		if (unlink) {
			r = dir_unlink(a, dir, name, ino);
			if (!r) r = parent_links_inc(a, dir, -1);
			if (r) return r;
		}
		dc_forget(a, ino);
		return inode_free(a, ino);
	}
	if (unlink) {
		r = dir_unlink(a, dir, name, ino);
		if (r) return r;
	}
	r = ext4_read_inode(a, ino, &in);
	if (r) return r;
	if (in.i_links_count > 1) {
		in.i_links_count--;
		return ext4_write_inode(a, ino, &in);
	}
	return inode_free(a, ino);
}

int ext4_remove(struct ext4_apply *a, ext2_ino_t dir, const char *name, ext2_ino_t ino)
{
	return remove_tree(a, dir, name, ino, true);
}

int ext4_set_meta(struct ext4_apply *a, ext2_ino_t ino, const struct ext4_meta *m)
{
	struct ext2_inode_large in;
	int r = ext4_read_inode(a, ino, &in);
	if (r) return r;
	uint16_t type = in.i_mode & LINUX_S_IFMT;
	struct ext4_meta mm = *m;
	mm.mode = type | (m->mode & 07777);
	inode_set_meta(&in, &mm);
	return ext4_write_inode(a, ino, &in);
}

/* ---------------------------------------------------------------- mkfs / open / close ------- */

static pthread_once_t error_table_once = PTHREAD_ONCE_INIT;

static void error_table_init(void) { initialize_ext2_error_table(); }

static struct ext4_apply *apply_new(struct cow_device *dev, const struct ext4_params *params, const char *label)
{
	pthread_once(&error_table_once, error_table_init); /* libext2fs messages for error_message() */
	struct ext4_apply *a = calloc(1, sizeof(*a));
	if (!a) return NULL;
	a->dev = dev;
	a->params = *params;
	a->label = a->fs_label = label;
	return a;
}

static void apply_free(struct ext4_apply *a)
{
	ext4_pathset_clear(&a->upper);
	dc_free(&a->dcache);
	free(a);
}

static struct ext4_meta dir_meta(const struct ext4_apply *a, uint16_t perm)
{
	struct ext4_meta m = { .mode = LINUX_S_IFDIR | perm, .uid = 0, .gid = 0 };
	m.atime.sec = m.mtime.sec = a->params.timestamp_unix;
	return m;
}

static int mkfs_layout(struct ext4_apply *a)
{
	ext2_filsys fs = a->fs;
	struct ext4_meta root = dir_meta(a, 0755), lf = dir_meta(a, 0700);
	ext2_ino_t lf_ino;
	errcode_t err;
	int r;

	/* mke2fs: the device is known to read zeros, so inode tables count as zeroed. */
	for (dgrp_t g = 0; g < fs->group_desc_count; g++) {
		ext2fs_bg_flags_set(fs, g, EXT2_BG_INODE_ZEROED);
		ext2fs_group_desc_csum_set(fs, g);
	}
	r = ext4_mkdir(a, EXT2_ROOT_INO, NULL, &root, EXT2_ROOT_INO, NULL);
	if (r) return r;
	r = ext4_mkdir(a, EXT2_ROOT_INO, "lost+found", &lf, 0, &lf_ino);
	if (r) return r;
	/* e2fsck wants room in lost+found without allocating: mke2fs makes it 16 KiB. */
	for (;;) {
		struct ext2_inode_large in;
		r = ext4_read_inode(a, lf_ino, &in);
		if (r) return r;
		if (EXT2_I_SIZE(&in) >= EXT4_LOST_FOUND_BYTES) break;
		err = ext2fs_expand_dir(fs, lf_ino);
		if (err) return ext4_fail(a, err, "expand lost+found");
	}
	/* Reserved inodes (bad blocks inode and 3 .. first_ino-1) are in use, as mke2fs leaves them. */
	ext2fs_inode_alloc_stats2(fs, EXT2_BAD_INO, +1, 0);
	for (ext2_ino_t i = EXT2_ROOT_INO + 1; i < EXT2_FIRST_INODE(fs->super); i++)
		ext2fs_inode_alloc_stats2(fs, i, +1, 0);
	ext2fs_mark_ib_dirty(fs);

	struct ext2fs_journal_params jp;
	err = ext2fs_get_journal_params(&jp, fs);
	if (err) return ext4_fail(a, err, "journal size");
	err = ext2fs_add_journal_inode3(fs, &jp, ~0ULL, EXT2_MKJOURNAL_LAZYINIT | EXT2_MKJOURNAL_NO_MNT_CHECK);
	if (err) return ext4_fail(a, err, "create journal");
	/* The journal inode's times came from fs->now; make them exactly the image's. */
	struct ext2_inode_large jin;
	r = ext4_read_inode(a, EXT2_JOURNAL_INO, &jin);
	if (r) return r;
	struct ext4_time ts = { a->params.timestamp_unix, 0 };
	time_encode(ts, &jin.i_atime, &jin.i_atime_extra);
	time_encode(ts, &jin.i_mtime, &jin.i_mtime_extra);
	time_encode(ts, &jin.i_ctime, &jin.i_ctime_extra);
	time_encode(ts, &jin.i_crtime, &jin.i_crtime_extra);
	return ext4_write_inode(a, EXT2_JOURNAL_INO, &jin);
}

int ext4_apply_mkfs(struct cow_device *dev, const struct ext4_params *params, const char *label,
		    struct ext4_apply **out)
{
	struct ext2_super_block param;
	uint64_t size = cow_device_size_bytes(dev);
	uint64_t blocks = size >> (10 + EXT4_MKFS_BLOCK_LOG);
	struct ext4_apply *a;
	errcode_t err;
	int r;

	*out = NULL;
	if (!label || !*label) label = "ext4";
	if (size < EXT4_MKFS_MIN_BYTES)
		return log_error(-EINVAL, "%s: mkfs: device of %llu bytes is too small (minimum %llu)", label,
				 (unsigned long long)size, (unsigned long long)EXT4_MKFS_MIN_BYTES);
	if (blocks > 0xffffffffull * 16) /* far beyond LAYER_VIRTUAL_SIZE_MAX anyway */
		return log_error(-EINVAL, "%s: mkfs: device too large", label);
	a = apply_new(dev, params, label);
	if (!a) return log_error(-ENOMEM, "%s: mkfs: out of memory", label);

	memset(&param, 0, sizeof(param));
	ext2fs_blocks_count_set(&param, blocks);
	param.s_log_block_size = EXT4_MKFS_BLOCK_LOG;
	param.s_log_cluster_size = EXT4_MKFS_BLOCK_LOG;
	param.s_rev_level = EXT2_DYNAMIC_REV;
	param.s_inode_size = EXT4_MKFS_INODE_SIZE;
	param.s_min_extra_isize = param.s_want_extra_isize = sizeof(struct ext2_inode_large) - EXT2_GOOD_OLD_INODE_SIZE;
	param.s_inodes_count = (__u32)(size / EXT4_MKFS_INODE_RATIO);
	param.s_log_groups_per_flex = EXT4_MKFS_LOG_GROUPS_PER_FLEX;
	param.s_desc_size = EXT2_MIN_DESC_SIZE_64BIT;
	param.s_feature_compat = EXT2_FEATURE_COMPAT_EXT_ATTR | EXT2_FEATURE_COMPAT_DIR_INDEX;
	param.s_feature_incompat = EXT2_FEATURE_INCOMPAT_FILETYPE | EXT3_FEATURE_INCOMPAT_EXTENTS |
				   EXT4_FEATURE_INCOMPAT_64BIT | EXT4_FEATURE_INCOMPAT_FLEX_BG;
	param.s_feature_ro_compat = EXT2_FEATURE_RO_COMPAT_SPARSE_SUPER | EXT2_FEATURE_RO_COMPAT_LARGE_FILE |
				    EXT4_FEATURE_RO_COMPAT_HUGE_FILE | EXT4_FEATURE_RO_COMPAT_DIR_NLINK |
				    EXT4_FEATURE_RO_COMPAT_EXTRA_ISIZE | EXT4_FEATURE_RO_COMPAT_METADATA_CSUM;
	param.s_default_mount_opts = EXT2_DEFM_XATTR_USER | EXT2_DEFM_ACL;
	param.s_errors = EXT2_ERRORS_CONTINUE;
	param.s_max_mnt_count = (__s16)-1;
	memcpy(param.s_uuid, params->uuid, sizeof(param.s_uuid));

	ext4_io_bind(dev);
	err = ext2fs_initialize("cow", EXT2_FLAG_RW | EXT2_FLAG_64BITS, &param, ext4_io_manager, &a->fs);
	if (err) {
		r = ext4_fail(a, err, "mkfs: initialize");
		a->fs = NULL;
		apply_free(a);
		return r;
	}
	ext2_filsys fs = a->fs;
	fs->now = params->timestamp_unix ? (time_t)params->timestamp_unix : 1; /* 0 would mean "ask the clock" */
	struct ext2_super_block *sb = fs->super;
	memcpy(sb->s_uuid, params->uuid, sizeof(sb->s_uuid));
	memcpy(sb->s_hash_seed, params->hash_seed, sizeof(sb->s_hash_seed));
	sb->s_def_hash_version = EXT2_HASH_HALF_MD4;
	sb->s_flags |= EXT2_FLAGS_SIGNED_HASH;
	sb->s_mkfs_time = sb->s_wtime = sb->s_lastcheck = (__u32)params->timestamp_unix;
	sb->s_mtime = 0;
	sb->s_kbytes_written = 0;
	sb->s_checksum_type = EXT2_CRC32C_CHKSUM;
	sb->s_r_blocks_count = 0;
	sb->s_r_blocks_count_hi = 0;
	ext2fs_init_csum_seed(fs);

	err = ext2fs_allocate_tables(fs);
	if (err) {
		r = ext4_fail(a, err, "mkfs: allocate tables");
		goto fail;
	}
	r = mkfs_layout(a);
	if (r) goto fail;
	ext2fs_mark_super_dirty(fs);
	*out = a;
	return 0;
fail:
	ext4_apply_abort(a);
	return r;
}

int ext4_apply_open(struct cow_device *dev, const struct ext4_params *params, const char *label,
		    struct ext4_apply **out)
{
	if (!label || !*label) label = "ext4";
	struct ext4_apply *a = apply_new(dev, params, label);
	errcode_t err;

	*out = NULL;
	if (!a) return log_error(-ENOMEM, "%s: open filesystem: out of memory", label);
	ext4_io_bind(dev);
	err = ext2fs_open2("cow", NULL, EXT2_FLAG_RW | EXT2_FLAG_64BITS, 0, 0, ext4_io_manager, &a->fs);
	if (err) {
		int r = ext4_fail(a, err, "open filesystem");
		a->fs = NULL;
		apply_free(a);
		return r;
	}
	a->fs->now = params->timestamp_unix ? (time_t)params->timestamp_unix : 1;
	if (ext2fs_blocks_count(a->fs->super) * (uint64_t)a->fs->blocksize > cow_device_size_bytes(dev)) {
		int r = log_error(-EINVAL, "%s: open filesystem: it is larger (%llu blocks) than the device (%llu bytes)",
				  label, (unsigned long long)ext2fs_blocks_count(a->fs->super),
				  (unsigned long long)cow_device_size_bytes(dev));
		ext4_apply_abort(a);
		return r;
	}
	err = ext2fs_read_bitmaps(a->fs);
	if (err) {
		int r = ext4_fail(a, err, "open filesystem: read bitmaps");
		ext4_apply_abort(a);
		return r;
	}
	*out = a;
	return 0;
}

int ext4_apply_close(struct ext4_apply *a)
{
	errcode_t err;
	int r = 0;

	if (!a) return 0;
	a->label = a->fs_label;
	a->entry = NULL;
	a->fs->super->s_wtime = (__u32)a->params.timestamp_unix;
	a->fs->super->s_state |= EXT2_VALID_FS;
	ext2fs_mark_super_dirty(a->fs);
	err = ext2fs_close2(a->fs, 0);
	if (err) {
		r = ext4_fail(a, err, "close filesystem");
		/* ext2fs_close2 frees nothing on failure: drop it without writing more. */
		ext4_io_drop_dirty(a->fs->io);
		ext2fs_free(a->fs);
	}
	a->fs = NULL;
	if (!r) {
		r = cow_device_flush(a->dev);
		if (r) log_error(r, "%s: close filesystem: flush device: %s", a->fs_label, strerror(-r));
	}
	apply_free(a);
	return r;
}

void ext4_apply_abort(struct ext4_apply *a)
{
	if (!a) return;
	if (a->fs) {
		ext4_io_drop_dirty(a->fs->io);
		ext2fs_free(a->fs);
	}
	apply_free(a);
}
