/* The libext2fs io_manager over a cow/ device (see ext4_io.h).
 *
 * libext2fs addresses the device in units of its current block size (1024 while it probes the
 * superblock, 4096 after) and sometimes by byte (write_byte); the cow device wants 512-byte
 * aligned I/O and is organised in 4 KiB blocks.  Everything here is done in whole 4 KiB device
 * blocks: partial blocks are read-modify-written through the cache.
 *
 * Cache invariants: a device block is in at most one slot; a slot's data is what the device
 * would return after all writes so far (clean: equal to the device; dirty: newer).  Small
 * requests (metadata) go through the cache; large whole-block writes of uncached blocks (file
 * data) go straight to the device.  Dirty blocks are written back in block order, coalesced, when
 * the cache fills up, on flush and on close: libext2fs's own order of writes never reaches the
 * device, only the final content, so the result is deterministic. */
#define OCIBLK_IMAGE_IMPORT_INTERNAL
#include "image-import/ext4_io.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "cow/cow.h"

#define IO_BLOCK COW_BLOCK_SIZE
/* 16 MiB of cache: holds the inode tables, bitmaps and directories a layer touches at once. */
#define IO_CACHE_SLOTS 4096u
#define IO_CACHE_BUCKETS 8192u
/* Requests of at most this many device blocks are cached on read and absorbed on write. */
#define IO_SMALL_BLOCKS 8u
/* Write-back and uncached reads move at most this many blocks per device call (1 MiB). */
#define IO_STAGE_BLOCKS 256u

enum { SLOT_USED = 1, SLOT_DIRTY = 2, SLOT_REF = 4 };

struct cow_io {
	struct cow_device *dev;
	uint64_t dev_blocks;
	uint8_t *data;          /* IO_CACHE_SLOTS * IO_BLOCK */
	uint64_t *slot_block;
	uint8_t *slot_flags;
	uint32_t *next;         /* hash chain, slot+1, 0 ends */
	uint32_t *bucket;       /* slot+1, 0 empty */
	uint32_t used;          /* slots [0, used) have been filled once */
	uint32_t hand;          /* clock hand for eviction */
	uint8_t *stage;         /* IO_STAGE_BLOCKS * IO_BLOCK: uncached reads */
	uint8_t *wb_stage;      /* IO_STAGE_BLOCKS * IO_BLOCK: write-back (may run inside a read) */
	int first_error;
	bool drop_dirty;
	struct ext4_io_stats stats;
};

static __thread struct cow_device *bound_dev;

void ext4_io_bind(struct cow_device *dev) { bound_dev = dev; }

static struct cow_io *channel_io(io_channel ch)
{
	if (!ch || ch->manager != ext4_io_manager) return NULL;
	return ch->private_data;
}

/* libext2fs error codes may be plain errno values. */
static errcode_t io_fail(struct cow_io *io, int neg_errno)
{
	if (!io->first_error) io->first_error = neg_errno;
	return (errcode_t)-neg_errno;
}

static errcode_t dev_read(struct cow_io *io, uint64_t block, uint64_t count, void *buf)
{
	int r = cow_device_read(io->dev, block * IO_BLOCK, buf, count * IO_BLOCK);
	io->stats.device_reads++;
	io->stats.device_read_bytes += count * IO_BLOCK;
	return r ? io_fail(io, r) : 0;
}

static errcode_t dev_write(struct cow_io *io, uint64_t block, uint64_t count, const void *buf)
{
	int r = cow_device_write(io->dev, block * IO_BLOCK, buf, count * IO_BLOCK, 0);
	io->stats.device_writes++;
	io->stats.device_write_bytes += count * IO_BLOCK;
	return r ? io_fail(io, r) : 0;
}

static uint32_t hash_block(uint64_t b)
{
	b *= 0x9e3779b97f4a7c15ull;
	return (uint32_t)(b >> 40) & (IO_CACHE_BUCKETS - 1);
}

static int cache_lookup(struct cow_io *io, uint64_t block)
{
	for (uint32_t s = io->bucket[hash_block(block)]; s; s = io->next[s - 1])
		if (io->slot_block[s - 1] == block) return (int)(s - 1);
	return -1;
}

static void cache_unhash(struct cow_io *io, uint32_t slot)
{
	uint32_t *p = &io->bucket[hash_block(io->slot_block[slot])];
	while (*p != slot + 1) p = &io->next[*p - 1];
	*p = io->next[slot];
	io->next[slot] = 0;
}

static uint8_t *slot_data(struct cow_io *io, uint32_t slot) { return io->data + (size_t)slot * IO_BLOCK; }

static int cmp_slot_block(const void *a, const void *b, void *arg)
{
	const struct cow_io *io = arg;
	uint64_t x = io->slot_block[*(const uint32_t *)a], y = io->slot_block[*(const uint32_t *)b];
	return x < y ? -1 : x > y;
}

/* Writes every dirty block back, in block order, coalescing neighbours. */
static errcode_t cache_writeback(struct cow_io *io)
{
	uint32_t n = 0, *order;
	errcode_t err = 0;

	for (uint32_t s = 0; s < io->used; s++)
		if (io->slot_flags[s] & SLOT_DIRTY) n++;
	if (!n) return 0;
	order = malloc(n * sizeof(*order));
	if (!order) return io_fail(io, -ENOMEM);
	n = 0;
	for (uint32_t s = 0; s < io->used; s++)
		if (io->slot_flags[s] & SLOT_DIRTY) order[n++] = s;
	qsort_r(order, n, sizeof(*order), cmp_slot_block, io);
	for (uint32_t i = 0; i < n && !err;) {
		uint32_t run = 1;
		while (i + run < n && run < IO_STAGE_BLOCKS &&
		       io->slot_block[order[i + run]] == io->slot_block[order[i]] + run)
			run++;
		if (run == 1) {
			err = dev_write(io, io->slot_block[order[i]], 1, slot_data(io, order[i]));
		} else {
			for (uint32_t k = 0; k < run; k++)
				memcpy(io->wb_stage + (size_t)k * IO_BLOCK, slot_data(io, order[i + k]), IO_BLOCK);
			err = dev_write(io, io->slot_block[order[i]], run, io->wb_stage);
		}
		if (!err)
			for (uint32_t k = 0; k < run; k++) io->slot_flags[order[i + k]] &= ~SLOT_DIRTY;
		i += run;
	}
	free(order);
	return err;
}

/* A slot for block (not cached yet), hashed in, flags SLOT_USED|SLOT_REF, data undefined. */
static errcode_t cache_insert(struct cow_io *io, uint64_t block, uint32_t *slot_out)
{
	uint32_t slot = UINT32_MAX;

	if (io->used < IO_CACHE_SLOTS) {
		slot = io->used++;
	} else {
		for (int round = 0; round < 3 && slot == UINT32_MAX; round++) {
			for (uint32_t i = 0; i < 2 * IO_CACHE_SLOTS; i++) {
				uint32_t s = io->hand;
				io->hand = (io->hand + 1) % IO_CACHE_SLOTS;
				if (io->slot_flags[s] & SLOT_DIRTY) continue;
				if (io->slot_flags[s] & SLOT_REF) {
					io->slot_flags[s] &= ~SLOT_REF;
					continue;
				}
				slot = s;
				break;
			}
			if (slot == UINT32_MAX) {
				/* Everything is dirty: write it all back, then evict clean blocks. */
				errcode_t err = cache_writeback(io);
				if (err) return err;
			}
		}
		if (slot == UINT32_MAX) return io_fail(io, -EIO); /* cannot happen: all clean now */
		cache_unhash(io, slot);
	}
	uint32_t h = hash_block(block);
	io->slot_block[slot] = block;
	io->slot_flags[slot] = SLOT_USED | SLOT_REF;
	io->next[slot] = io->bucket[h];
	io->bucket[h] = slot + 1;
	*slot_out = slot;
	return 0;
}

static errcode_t io_read_bytes(struct cow_io *io, uint64_t off, uint64_t len, uint8_t *buf)
{
	if (!len) return 0;
	uint64_t first = off / IO_BLOCK, last = (off + len - 1) / IO_BLOCK;
	bool small = last - first + 1 <= IO_SMALL_BLOCKS;

	if (last >= io->dev_blocks) return io_fail(io, -EINVAL);
	for (uint64_t b = first; b <= last;) {
		int slot = cache_lookup(io, b);
		if (slot >= 0) {
			uint64_t bs = b * IO_BLOCK, from = off > bs ? off - bs : 0;
			uint64_t to = off + len < bs + IO_BLOCK ? off + len - bs : IO_BLOCK;
			memcpy(buf + (bs + from - off), slot_data(io, (uint32_t)slot) + from, to - from);
			io->slot_flags[slot] |= SLOT_REF;
			io->stats.cache_hits++;
			b++;
			continue;
		}
		/* A run of uncached blocks, read in one call. */
		uint64_t run = 1;
		while (b + run <= last && run < IO_STAGE_BLOCKS && cache_lookup(io, b + run) < 0) run++;
		errcode_t err = dev_read(io, b, run, io->stage);
		if (err) return err;
		io->stats.cache_misses += run;
		for (uint64_t k = 0; k < run; k++) {
			uint64_t bs = (b + k) * IO_BLOCK, from = off > bs ? off - bs : 0;
			uint64_t to = off + len < bs + IO_BLOCK ? off + len - bs : IO_BLOCK;
			const uint8_t *src = io->stage + k * IO_BLOCK;
			memcpy(buf + (bs + from - off), src + from, to - from);
			if (small) {
				uint32_t s;
				err = cache_insert(io, b + k, &s);
				if (err) return err;
				memcpy(slot_data(io, s), src, IO_BLOCK);
			}
		}
		b += run;
	}
	return 0;
}

static errcode_t io_write_bytes(struct cow_io *io, uint64_t off, uint64_t len, const uint8_t *buf)
{
	if (!len) return 0;
	uint64_t first = off / IO_BLOCK, last = (off + len - 1) / IO_BLOCK;
	bool small = last - first + 1 <= IO_SMALL_BLOCKS;
	errcode_t err;

	if (last >= io->dev_blocks) return io_fail(io, -EINVAL);
	for (uint64_t b = first; b <= last;) {
		uint64_t bs = b * IO_BLOCK, from = off > bs ? off - bs : 0;
		uint64_t to = off + len < bs + IO_BLOCK ? off + len - bs : IO_BLOCK;
		bool full = from == 0 && to == IO_BLOCK;
		int slot = cache_lookup(io, b);

		if (slot < 0 && full && !small) {
			/* Straight to the device: a run of whole, uncached blocks. */
			uint64_t run = 1;
			while (b + run <= last && run < IO_STAGE_BLOCKS && (b + run + 1) * IO_BLOCK <= off + len &&
			       cache_lookup(io, b + run) < 0)
				run++;
			err = dev_write(io, b, run, buf + (bs - off));
			if (err) return err;
			b += run;
			continue;
		}
		if (slot < 0) {
			uint32_t s;
			err = cache_insert(io, b, &s);
			if (err) return err;
			if (!full) {
				err = dev_read(io, b, 1, slot_data(io, s));
				if (err) {
					/* Leave no slot with undefined data behind. */
					cache_unhash(io, s);
					io->slot_flags[s] = 0;
					io->slot_block[s] = UINT64_MAX;
					return err;
				}
			}
			slot = (int)s;
		}
		memcpy(slot_data(io, (uint32_t)slot) + from, buf + (bs + from - off), to - from);
		io->slot_flags[slot] |= SLOT_DIRTY | SLOT_REF;
		b++;
	}
	return 0;
}

static errcode_t io_range(io_channel ch, unsigned long long block, int count, uint64_t *off, uint64_t *len)
{
	uint64_t bs = (uint64_t)ch->block_size;
	*len = count < 0 ? (uint64_t)-(int64_t)count : (uint64_t)count * bs;
	if (__builtin_mul_overflow(block, bs, off)) return EXT2_ET_LLSEEK_FAILED;
	return 0;
}

/* Frees the handle and every buffer it owns (all may be NULL: io_open's partial allocations). */
static void cow_io_free(struct cow_io *io)
{
	if (!io) return;
	free(io->data);
	free(io->slot_block);
	free(io->slot_flags);
	free(io->next);
	free(io->bucket);
	free(io->stage);
	free(io->wb_stage);
	free(io);
}

static errcode_t io_open(const char *name, int flags, io_channel *out)
{
	struct cow_device *dev = bound_dev;
	io_channel ch = NULL;
	struct cow_io *io = NULL;

	bound_dev = NULL;
	if (!dev) return EXT2_ET_BAD_DEVICE_NAME;
	ch = calloc(1, sizeof(*ch));
	io = calloc(1, sizeof(*io));
	if (!ch || !io) goto nomem;
	io->dev = dev;
	io->dev_blocks = cow_device_size_bytes(dev) / IO_BLOCK;
	io->data = malloc((size_t)IO_CACHE_SLOTS * IO_BLOCK);
	io->slot_block = malloc(IO_CACHE_SLOTS * sizeof(*io->slot_block));
	io->slot_flags = calloc(IO_CACHE_SLOTS, 1);
	io->next = calloc(IO_CACHE_SLOTS, sizeof(*io->next));
	io->bucket = calloc(IO_CACHE_BUCKETS, sizeof(*io->bucket));
	io->stage = malloc((size_t)IO_STAGE_BLOCKS * IO_BLOCK);
	io->wb_stage = malloc((size_t)IO_STAGE_BLOCKS * IO_BLOCK);
	ch->name = strdup(name ? name : "cow");
	if (!io->data || !io->slot_block || !io->slot_flags || !io->next || !io->bucket || !io->stage || !io->wb_stage ||
	    !ch->name)
		goto nomem;
	ch->magic = EXT2_ET_MAGIC_IO_CHANNEL;
	ch->manager = ext4_io_manager;
	ch->block_size = 1024;
	ch->refcount = 1;
	ch->private_data = io;
	*out = ch;
	return 0;
nomem:
	cow_io_free(io);
	if (ch) free(ch->name);
	free(ch);
	return EXT2_ET_NO_MEMORY;
}

static errcode_t io_close(io_channel ch)
{
	struct cow_io *io = ch->private_data;
	errcode_t err = 0;

	if (--ch->refcount > 0) return 0;
	if (!io->drop_dirty) err = cache_writeback(io);
	cow_io_free(io);
	free(ch->name);
	free(ch);
	return err;
}

static errcode_t io_set_blksize(io_channel ch, int blksize)
{
	if (blksize <= 0 || blksize % 512) return EXT2_ET_INVALID_ARGUMENT;
	ch->block_size = blksize;
	return 0;
}

static errcode_t io_read_blk64(io_channel ch, unsigned long long block, int count, void *data)
{
	uint64_t off, len;
	errcode_t err = io_range(ch, block, count, &off, &len);
	return err ? err : io_read_bytes(ch->private_data, off, len, data);
}

static errcode_t io_write_blk64(io_channel ch, unsigned long long block, int count, const void *data)
{
	uint64_t off, len;
	errcode_t err = io_range(ch, block, count, &off, &len);
	return err ? err : io_write_bytes(ch->private_data, off, len, data);
}

static errcode_t io_read_blk(io_channel ch, unsigned long block, int count, void *data)
{
	return io_read_blk64(ch, block, count, data);
}

static errcode_t io_write_blk(io_channel ch, unsigned long block, int count, const void *data)
{
	return io_write_blk64(ch, block, count, data);
}

static errcode_t io_write_byte(io_channel ch, unsigned long offset, int count, const void *data)
{
	if (count < 0) return EXT2_ET_INVALID_ARGUMENT;
	return io_write_bytes(ch->private_data, offset, (uint64_t)count, data);
}

static errcode_t io_flush(io_channel ch)
{
	struct cow_io *io = ch->private_data;
	errcode_t err = cache_writeback(io);
	if (err) return err;
	int r = cow_device_flush(io->dev);
	return r ? io_fail(io, r) : 0;
}

/* Zeroes [block, block+count) in channel blocks: the device punches or zeroes, the cache forgets
 * nothing but holds zeros (clean, since the device reads zero afterwards). */
static errcode_t io_zeroout(io_channel ch, unsigned long long block, unsigned long long count)
{
	struct cow_io *io = ch->private_data;
	uint64_t bs = (uint64_t)ch->block_size, off, len;

	if (__builtin_mul_overflow(block, bs, &off) || __builtin_mul_overflow(count, bs, &len))
		return EXT2_ET_INVALID_ARGUMENT;
	if (!len) return 0;
	if (off % IO_BLOCK || len % IO_BLOCK) return EXT2_ET_UNIMPLEMENTED; /* caller writes zeros */
	if ((off + len) / IO_BLOCK > io->dev_blocks) return io_fail(io, -EINVAL);
	int r = cow_device_write_zeroes(io->dev, off, len, 0);
	if (r) return io_fail(io, r);
	for (uint64_t b = off / IO_BLOCK; b < (off + len) / IO_BLOCK; b++) {
		int slot = cache_lookup(io, b);
		if (slot >= 0) {
			memset(slot_data(io, (uint32_t)slot), 0, IO_BLOCK);
			io->slot_flags[slot] &= ~SLOT_DIRTY;
		}
	}
	return 0;
}

static struct struct_io_manager cow_io_manager_struct = {
	.magic = EXT2_ET_MAGIC_IO_MANAGER,
	.name = "ociblk cow device I/O manager",
	.open = io_open,
	.close = io_close,
	.set_blksize = io_set_blksize,
	.read_blk = io_read_blk,
	.write_blk = io_write_blk,
	.flush = io_flush,
	.write_byte = io_write_byte,
	.read_blk64 = io_read_blk64,
	.write_blk64 = io_write_blk64,
	.zeroout = io_zeroout,
};

io_manager ext4_io_manager = &cow_io_manager_struct;

void ext4_io_get_stats(io_channel ch, struct ext4_io_stats *out)
{
	struct cow_io *io = channel_io(ch);
	if (io) *out = io->stats;
	else memset(out, 0, sizeof(*out));
}

int ext4_io_first_error(io_channel ch)
{
	struct cow_io *io = channel_io(ch);
	return io ? io->first_error : 0;
}

void ext4_io_drop_dirty(io_channel ch)
{
	struct cow_io *io = channel_io(ch);
	if (io) io->drop_dirty = true;
}
