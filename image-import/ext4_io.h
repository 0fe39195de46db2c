/* Private to image-import/: a libext2fs io_manager whose channel reads and writes a cow/ device,
 * with a write-back block cache in front of it (libext2fs issues many small metadata I/Os).
 *
 * Usage: ext4_io_bind(dev) on the calling thread, then pass ext4_io_manager to ext2fs_initialize
 * or ext2fs_open2 (any device name): the channel opened by that call takes the bound device.
 * Every read sees every earlier write (cached or not); io_channel_flush writes all dirty blocks
 * back in block order and then flushes the device. */
#ifndef OCIBLK_IMAGE_IMPORT_EXT4_IO_H
#define OCIBLK_IMAGE_IMPORT_EXT4_IO_H
#ifndef OCIBLK_IMAGE_IMPORT_INTERNAL
#error "ext4_io.h is private to image-import/"
#endif

#include <stdint.h>

#include <ext2fs/ext2fs.h>

struct cow_device;

extern io_manager ext4_io_manager;

/* Binds dev to the next channel opened by ext4_io_manager on this thread. */
void ext4_io_bind(struct cow_device *dev);

struct ext4_io_stats {
	uint64_t device_reads, device_writes;       /* cow_device_read / cow_device_write calls */
	uint64_t device_read_bytes, device_write_bytes;
	uint64_t cache_hits, cache_misses;
};
/* Statistics of a channel opened by ext4_io_manager (zeros for any other channel). */
void ext4_io_get_stats(io_channel channel, struct ext4_io_stats *out);
/* The -errno of the first failed device operation on this channel, or 0.  libext2fs turns our
 * errors into its own codes; this keeps the original for the error message. */
int ext4_io_first_error(io_channel channel);
/* From now on, closing the channel drops dirty blocks instead of writing them (abort path: the
 * device is being discarded). */
void ext4_io_drop_dirty(io_channel channel);

#endif
