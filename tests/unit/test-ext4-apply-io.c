/* The cow io_manager and its write-back cache against an in-memory model: random reads and writes
 * of every shape libext2fs uses (1 KiB and 4 KiB channel blocks, byte counts, write_byte,
 * zeroout, flush) over a working set four times the cache, so eviction and write-back run all the
 * time.  Every read must equal the model; after close the device itself must equal it.
 * OCIBLK_SEED replays a run. */
#define OCIBLK_IMAGE_IMPORT_INTERNAL
#include "image-import/ext4_io.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cow/cow.h"
#include "layer-store/layer_store.h"
#include "tests/lib/tap.h"

#define DEV_BYTES (64ull << 20)
#define OPS 20000

static uint8_t *model, *buf, *got;

static uint64_t rnd(uint64_t *s, uint64_t n) { return tap_rand(s) % n; }

int main(void)
{
	uint64_t seed = tap_seed(), s = seed;
	const char *none[1] = { NULL };
	struct layer_store *store;
	struct cow_device *dev;
	io_channel ch;
	char root[1024];
	int bad_reads = 0, errors = 0;

	model = calloc(1, DEV_BYTES);
	buf = malloc(1 << 20);
	got = malloc(1 << 20);
	snprintf(root, sizeof root, "%s/store", tap_tmpdir());
	TAP_IS(layer_store_open(root, LAYER_STORE_CREATE, &store), 0, "store");
	TAP_IS(cow_device_open_scratch(store, none, 0, DEV_BYTES, &dev), 0, "scratch device");
	ext4_io_bind(dev);
	TAP_IS(ext4_io_manager->open("cow", IO_FLAG_RW, &ch), 0, "open channel");

	for (int op = 0; op < OPS; op++) {
		int bs = rnd(&s, 2) ? 4096 : 1024;
		io_channel_set_blksize(ch, bs);
		uint64_t nblk = DEV_BYTES / (uint64_t)bs;
		unsigned kind = (unsigned)rnd(&s, 100);
		/* mostly small (metadata-like) requests, some large ones (file data) */
		int count = rnd(&s, 10) ? 1 + (int)rnd(&s, 4) : 1 + (int)rnd(&s, 256 * 1024 / bs);
		uint64_t blk = rnd(&s, nblk - (uint64_t)count);
		uint64_t off = blk * (uint64_t)bs, len = (uint64_t)count * (uint64_t)bs;
		errcode_t err = 0;

		if (kind < 5) {
			err = io_channel_flush(ch);
		} else if (kind < 8) {
			err = io_channel_zeroout(ch, blk, (unsigned long long)count);
			if (!err) memset(model + off, 0, len);
			else if (err == EXT2_ET_UNIMPLEMENTED) err = 0;
		} else if (kind < 20) {
			/* write_byte: any offset and length */
			uint64_t o = rnd(&s, DEV_BYTES - 8192), l = 1 + rnd(&s, 8192);
			for (uint64_t i = 0; i < l; i++) buf[i] = (uint8_t)tap_rand(&s);
			err = io_channel_write_byte(ch, (unsigned long)o, (int)l, buf);
			if (!err) memcpy(model + o, buf, l);
		} else if (kind < 30) {
			/* negative count: a byte length from a block start */
			uint64_t l = 1 + rnd(&s, 3 * 4096);
			if (off + l > DEV_BYTES) l = DEV_BYTES - off;
			err = io_channel_read_blk64(ch, blk, -(int)l, got);
			if (!err && memcmp(got, model + off, l)) bad_reads++;
		} else if (kind < 65) {
			for (uint64_t i = 0; i < len; i += 8) {
				uint64_t x = tap_rand(&s);
				memcpy(buf + i, &x, 8);
			}
			err = io_channel_write_blk64(ch, blk, count, buf);
			if (!err) memcpy(model + off, buf, len);
		} else {
			err = io_channel_read_blk64(ch, blk, count, got);
			if (!err && memcmp(got, model + off, len)) bad_reads++;
		}
		if (err) errors++;
	}
	TAP_IS(errors, 0, "no I/O errors in %d operations", OPS);
	TAP_IS(bad_reads, 0, "every read equals the model");
	struct ext4_io_stats st;
	ext4_io_get_stats(ch, &st);
	tap_diag("cache hits %llu misses %llu, device reads %llu writes %llu (%llu MiB written)",
		 (unsigned long long)st.cache_hits, (unsigned long long)st.cache_misses,
		 (unsigned long long)st.device_reads, (unsigned long long)st.device_writes,
		 (unsigned long long)(st.device_write_bytes >> 20));
	TAP_IS(io_channel_close(ch), 0, "close writes back");

	int same = 1;
	for (uint64_t off = 0; off < DEV_BYTES && same; off += 1 << 20) {
		if (cow_device_read(dev, off, got, 1 << 20)) same = 0;
		else if (memcmp(got, model + off, 1 << 20)) same = 0;
	}
	TAP_OK(same, "the device equals the model after close");

	/* drop_dirty: an aborted filesystem leaves the device as it was at the last write-back */
	ext4_io_bind(dev);
	TAP_IS(ext4_io_manager->open("cow", IO_FLAG_RW, &ch), 0, "reopen channel");
	memset(buf, 0xee, 4096);
	TAP_IS(io_channel_write_blk64(ch, 7, 1, buf), 0, "cached write");
	ext4_io_drop_dirty(ch);
	TAP_IS(io_channel_close(ch), 0, "close dropping dirty blocks");
	TAP_IS(cow_device_read(dev, 7 * 4096, got, 4096), 0, "read block 7");
	TAP_OK(!memcmp(got, model + 7 * 4096, 4096), "dropped write never reached the device");

	TAP_IS(cow_device_close(dev), 0, "close device");
	layer_store_close(store);
	free(model);
	free(buf);
	free(got);
	(void)seed;
	return tap_done();
}
