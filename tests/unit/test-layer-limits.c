/* Limits of the layer parser: hand-made layer files (encoded here from FORMAT.md, independently
 * of the writer) with valid checksums but one bad field each must be rejected with -EIO at open;
 * the hand-made baseline must open, so each rejection is due to the field under test. */
#include "layer-store/layer_store.h"
#include "common/log.h"
#include "tests/lib/tap.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }

struct ext {
	uint64_t block_index;
	uint32_t block_count;
	uint8_t kind, compressed;
	uint64_t offset;
	uint32_t stored;
	int data_bytes;  /* how many bytes of data this extent appends to the data area (-1: stored) */
};

struct hdr {
	uint32_t version, header_bytes, block_size, chunk_blocks, compression, checksum_type;
	uint64_t virtual_size, flags, extent_count_override, data_offset;
	int64_t index_offset_delta, index_length_delta, data_length_delta;
	int extent_count_set;
	uint8_t reserved_byte;
};

static char path[600];

/* Builds a file: header, data (pattern bytes), index; writes it; returns layer_open_path's result. */
static int build(const struct hdr *h, const struct ext *e, int n)
{
	size_t data_len = 0;
	for (int i = 0; i < n; i++) data_len += e[i].data_bytes < 0 ? e[i].stored : (size_t)e[i].data_bytes;
	size_t index_len = (size_t)n * 40, len = 4096 + data_len + index_len;
	uint8_t *f = calloc(1, len);
	uint8_t *d = f + 4096, *x = f + 4096 + data_len;
	size_t off = 0;
	for (int i = 0; i < n; i++) {
		size_t nb = e[i].data_bytes < 0 ? e[i].stored : (size_t)e[i].data_bytes;
		for (size_t k = 0; k < nb; k++) d[off + k] = (uint8_t)(k * 7 + (size_t)i);
		uint8_t *p = x + i * 40;
		put64(p, e[i].block_index);
		put32(p + 8, e[i].block_count);
		p[12] = e[i].kind;
		p[13] = e[i].compressed;
		put64(p + 16, e[i].offset);
		put32(p + 24, e[i].stored);
		if (e[i].kind == 1) {
			uint64_t o = e[i].offset >= 4096 ? e[i].offset - 4096 : 0;
			put64(p + 32, o + e[i].stored <= data_len ? XXH3_64bits(d + o, e[i].stored) : 0);
		}
		off += nb;
	}
	memcpy(f, "OCIBLKLF", 8);
	put32(f + 8, h->version);
	put32(f + 12, h->header_bytes);
	put32(f + 16, h->block_size);
	put32(f + 20, h->chunk_blocks);
	put64(f + 24, h->virtual_size);
	put64(f + 32, h->flags);
	put32(f + 40, h->compression);
	put32(f + 44, h->checksum_type);
	put64(f + 48, h->extent_count_set ? h->extent_count_override : (uint64_t)n);
	put64(f + 56, (uint64_t)((int64_t)(4096 + data_len) + h->index_offset_delta));
	put64(f + 64, (uint64_t)((int64_t)index_len + h->index_length_delta));
	put64(f + 72, XXH3_64bits(x, index_len));
	put64(f + 80, h->data_offset);
	put64(f + 88, (uint64_t)((int64_t)data_len + h->data_length_delta));
	f[200] = h->reserved_byte;
	put64(f + 4088, XXH3_64bits(f, 4088));
	FILE *fp = fopen(path, "wb");
	fwrite(f, 1, len, fp);
	fclose(fp);
	free(f);
	struct layer *l = NULL;
	int r = layer_open_path(path, NULL, false, &l);
	layer_close(l);
	return r;
}

static const struct hdr H = {
	.version = 1, .header_bytes = 4096, .block_size = 4096, .chunk_blocks = 16, .compression = 0,
	.checksum_type = 1, .virtual_size = 1 << 20, .data_offset = 4096,
};

int main(void)
{
	struct hdr h;
	/* Baseline: a raw 2-block chunk at block 0, a zero run at 10..19, a raw 1-block chunk at 255. */
	struct ext base[3] = {
		{ 0, 2, 1, 0, 4096, 8192, -1 },
		{ 10, 10, 2, 0, 0, 0, 0 },
		{ 255, 1, 1, 0, 4096 + 8192, 4096, -1 },
	};
	struct ext e[3];

	tap_seed();
	snprintf(path, sizeof path, "%s/crafted", tap_tmpdir());
	TAP_IS(build(&H, base, 3), 0, "hand-made baseline opens (the test encodes FORMAT.md right)");
	log_set_quiet(1);

#define HDR_CASE(field, value, what) do { h = H; h.field = value; TAP_IS(build(&h, base, 3), -EIO, what); } while (0)
	HDR_CASE(virtual_size, LAYER_VIRTUAL_SIZE_MAX + 4096, "virtual size above the limit");
	HDR_CASE(virtual_size, (1 << 20) + 1, "virtual size not a block multiple");
	HDR_CASE(virtual_size, 0, "virtual size zero");
	HDR_CASE(virtual_size, 255 * 4096, "virtual size too small for the last extent");
	HDR_CASE(chunk_blocks, 0, "chunk_blocks zero");
	HDR_CASE(chunk_blocks, LAYER_CHUNK_BLOCKS_MAX + 1, "chunk_blocks above the limit");
	HDR_CASE(chunk_blocks, 1, "chunk_blocks smaller than an extent");
	HDR_CASE(version, 2, "unknown version");
	HDR_CASE(header_bytes, 8192, "other header size");
	HDR_CASE(block_size, 512, "other block size");
	HDR_CASE(flags, 2, "unknown flag");
	HDR_CASE(compression, 2, "unknown compression");
	HDR_CASE(checksum_type, 2, "unknown checksum type");
	HDR_CASE(data_offset, 8192, "data area not right after the header");
	HDR_CASE(reserved_byte, 1, "reserved header byte set");
	HDR_CASE(index_offset_delta, 40, "index offset beyond the data end");
	HDR_CASE(index_offset_delta, -40, "index offset inside the data");
	HDR_CASE(index_length_delta, 40, "index length larger than the extents");
	HDR_CASE(data_length_delta, -1, "data length disagreeing with the index offset");
	h = H;
	h.extent_count_set = 1;
	h.extent_count_override = (uint64_t)LAYER_EXTENTS_MAX + 1;
	TAP_IS(build(&h, base, 3), -EIO, "extent count above the limit");
	h.extent_count_override = UINT64_MAX / 8;
	TAP_IS(build(&h, base, 3), -EIO, "extent count whose index size overflows");
	h.extent_count_override = 4;
	TAP_IS(build(&h, base, 3), -EIO, "extent count larger than the index");
	h = H;
	h.flags = 1; /* parent flag with an all-zero parent: accepted (a digest of zeros is a digest) */
	TAP_IS(build(&h, base, 3), 0, "parent flag accepted");

#define EXT_CASE(stmt, what) do { memcpy(e, base, sizeof e); stmt; TAP_IS(build(&H, e, 3), -EIO, what); } while (0)
	EXT_CASE(e[1].block_index = 1, "overlapping extents");
	EXT_CASE((e[0].block_index = 100, e[1].block_index = 10), "unsorted extents");
	EXT_CASE(e[2].block_index = 256, "extent beyond the virtual size");
	EXT_CASE(e[2].block_index = UINT64_MAX, "extent index wrapping past 2^64");
	EXT_CASE(e[1].block_count = 0, "empty extent");
	EXT_CASE(e[1].kind = 3, "unknown kind");
	EXT_CASE(e[1].offset = 4096, "zero extent with an offset");
	EXT_CASE(e[1].stored = 1, "zero extent with a stored length");
	EXT_CASE(e[0].compressed = 2, "bad compressed flag");
	EXT_CASE((e[0].compressed = 1), "compressed chunk not smaller than its blocks");
	EXT_CASE((e[0].stored = 4096, e[0].data_bytes = 8192), "raw chunk shorter than its blocks");
	EXT_CASE(e[2].offset = 4096 + 8192 + 1, "chunk running past the data area");
	EXT_CASE(e[2].offset = 100, "chunk inside the header");
	EXT_CASE(e[2].offset = UINT64_MAX - 10, "chunk offset wrapping past 2^64");
	EXT_CASE((e[2].block_index = 200, e[2].block_count = 17, e[2].stored = 17 * 4096), "data extent longer than chunk_blocks");
	log_set_quiet(0);
	return tap_done();
}
