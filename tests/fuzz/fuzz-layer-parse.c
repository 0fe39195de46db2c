/* libFuzzer target: the input bytes are a layer file.  layer_open_path must either reject it or
 * give a consistent index, and every DATA extent must then read back or fail with -EIO: never
 * a crash, a leak or an out-of-bounds access (ASan+UBSan are on).
 *
 * The first input byte picks a mode.  Odd: the rest is the file as is (checksums protect it, so
 * mutations mostly stop at the header checksum).  Even: the harness first recomputes the chunk,
 * index and header checksums (offsets from FORMAT.md, kept here on purpose rather than shared
 * with the parser), so mutations reach the field validation and the zstd decoder. */
#include "layer-store/layer_store.h"
#include "common/log.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <xxhash.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t get64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
	return v;
}
static uint32_t get32(const uint8_t *p) { return (uint32_t)get64((const uint8_t[8]){ p[0], p[1], p[2], p[3] }); }
static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }

static void fix_checksums(uint8_t *f, size_t size)
{
	uint64_t io, il;
	if (size < 4096) return;
	io = get64(f + 56);
	il = get64(f + 64);
	if (io <= size && il <= size - io) {
		for (uint64_t e = io; e + 40 <= io + il; e += 40) {
			uint64_t off = get64(f + e + 16), len = get32(f + e + 24);
			if (f[e + 12] == 1 && off <= size && len <= size - off) put64(f + e + 32, XXH3_64bits(f + off, len));
		}
		put64(f + 72, XXH3_64bits(f + io, il));
	}
	put64(f + 4088, XXH3_64bits(f, 4088));
}

static char tmp_path[4096];
static void remove_tmp(void) { unlink(tmp_path); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int fd = -1;
	static uint8_t out[LAYER_CHUNK_BLOCKS_MAX * LAYER_BLOCK_SIZE];
	char path[64];
	struct layer *l = NULL;

	if (fd < 0) {
		log_set_quiet(1);
		/* A linked file, not a memfd: opening a layer pins it and refuses one with no links
		 * left (gc removed it), which a memfd always looks like. */
		const char *dir = getenv("TMPDIR");
		snprintf(tmp_path, sizeof tmp_path, "%s/fuzz-layer.XXXXXX", dir && *dir ? dir : "/tmp");
		fd = mkstemp(tmp_path);
		if (fd < 0) abort();
		atexit(remove_tmp);
	}
	if (size < 1) return 0;
	uint8_t mode = data[0];
	data++, size--;
	uint8_t *copy = malloc(size ? size : 1);
	memcpy(copy, data, size);
	if (!(mode & 1)) fix_checksums(copy, size);
	if (ftruncate(fd, 0) || (size && pwrite(fd, copy, size, 0) != (ssize_t)size)) abort();
	/* The remote reader (header + index buffers) must accept exactly what the file reader accepts. */
	int remote_ok = 0;
	if (size >= 4096) {
		uint64_t io = 0, il = 0;
		struct layer *rl = NULL;
		if (layer_remote_index_range(copy, size, &io, &il) == 0) {
			if (io > size || il > size - io) abort(); /* the range it names is inside the file */
			remote_ok = layer_open_remote(copy, copy + io, size, NULL, &rl) == 0;
			layer_close(rl);
		}
	}
	free(copy);
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	int file_ok = layer_open_path(path, NULL, size < 4096 * 4, &l) == 0;
	if (file_ok != remote_ok) abort();
	if (file_ok) {
		uint64_t n, prev_end = 0;
		const struct layer_extent *x = layer_get_extents(l, &n);
		const struct layer_info *info = layer_get_info(l);
		for (uint64_t i = 0; i < n; i++) {
			/* the parser's promises */
			if (x[i].block_index < prev_end || x[i].block_count == 0) abort();
			prev_end = x[i].block_index + x[i].block_count;
			if (prev_end * LAYER_BLOCK_SIZE > info->virtual_size_bytes) abort();
			if (x[i].kind == LAYER_EXTENT_DATA) {
				if (x[i].block_count > LAYER_CHUNK_BLOCKS_MAX) abort();
				if (x[i].offset_bytes + x[i].stored_bytes > info->file_size_bytes) abort();
				int r = layer_read_extent(l, i, out);
				if (r && r != -EIO) abort();
			}
		}
		layer_close(l);
	}
	return 0;
}
