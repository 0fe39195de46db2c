/* Helpers shared by the cow/ unit tests: a temp store, deterministic block patterns, layers built
 * from a list of extents with the layer writer, and an in-memory model of what they read as. */
#ifndef OCIBLK_TESTS_COW_UTIL_H
#define OCIBLK_TESTS_COW_UTIL_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cow/cow.h"
#include "layer-store/layer_store.h"
#include "tests/lib/tap.h"

#define BS 4096u

/* Block b of "version" v: every 8 bytes hold (v, b, position) mixed, so any misplaced block,
 * sector or version shows. */
static inline void pattern_block(uint8_t *out, uint64_t v, uint64_t b)
{
	for (unsigned i = 0; i < BS; i += 8) {
		uint64_t x = (v * 0x9E3779B97F4A7C15ull) ^ (b * 0xC2B2AE3D27D4EB4Full) ^ i;
		x ^= x >> 29;
		x *= 0xBF58476D1CE4E5B9ull;
		x ^= x >> 32;
		memcpy(out + i, &x, 8);
	}
}

struct spec_extent {
	uint64_t block_index, block_count;
	int zero;       /* 1: ZERO extent */
	uint64_t version;
};

static inline struct layer_store *test_store_open(const char *sub)
{
	char root[1024];
	struct layer_store *s = NULL;
	snprintf(root, sizeof root, "%s/%s", tap_tmpdir(), sub);
	if (layer_store_open(root, LAYER_STORE_CREATE, &s)) {
		tap_diag("cannot create store %s", root);
		exit(1);
	}
	return s;
}

/* Writes a layer of size_blocks with the given sorted extents, applies it to model (when
 * non-NULL, size_blocks*4096 bytes).  Returns 0 or -errno. */
static inline int test_layer_write(struct layer_store *s, const char *parent, uint64_t size_blocks,
				   const struct spec_extent *ext, unsigned n, uint8_t *model, int zstd,
				   char digest[SHA256_DIGEST_STRLEN])
{
	struct layer_writer_options o = { .virtual_size_bytes = size_blocks * BS, .parent_digest = parent,
					   .zstd_level = zstd, .chunk_blocks = 64 };
	struct layer_writer *w;
	uint8_t *buf = malloc(64 * BS);
	int r = layer_writer_create(s, &o, &w);
	if (r) {
		free(buf);
		return r;
	}
	for (unsigned i = 0; i < n && !r; i++) {
		if (ext[i].zero) {
			r = layer_writer_add_zero(w, ext[i].block_index, ext[i].block_count);
			if (model) memset(model + ext[i].block_index * BS, 0, ext[i].block_count * BS);
			continue;
		}
		for (uint64_t p = 0; p < ext[i].block_count && !r; p += 64) {
			uint64_t k = ext[i].block_count - p < 64 ? ext[i].block_count - p : 64;
			for (uint64_t j = 0; j < k; j++) pattern_block(buf + j * BS, ext[i].version, ext[i].block_index + p + j);
			r = layer_writer_add_data(w, ext[i].block_index + p, buf, k);
			if (model) memcpy(model + (ext[i].block_index + p) * BS, buf, k * BS);
		}
	}
	free(buf);
	if (r) {
		layer_writer_abort(w);
		return r;
	}
	return layer_writer_commit(w, digest);
}

/* Random sorted non-overlapping extents within size_blocks (some ZERO). */
static inline unsigned test_random_extents(uint64_t *rng, uint64_t size_blocks, unsigned max_extents,
					   uint64_t version, struct spec_extent *out)
{
	unsigned n = 0;
	uint64_t b = tap_rand(rng) % 64;
	while (n < max_extents && b < size_blocks) {
		uint64_t len = 1 + tap_rand(rng) % 200;
		if (len > size_blocks - b) len = size_blocks - b;
		out[n].block_index = b;
		out[n].block_count = len;
		out[n].zero = tap_rand(rng) % 5 == 0;
		out[n].version = version;
		n++;
		b += len + tap_rand(rng) % 300;
	}
	return n;
}

/* An image record over a chain. */
static inline int test_image_put(struct layer_store *s, const char *name, uint64_t size_bytes,
				 char (*layers)[SHA256_DIGEST_STRLEN], uint32_t n)
{
	struct image_record *img = calloc(1, sizeof *img);
	snprintf(img->name, sizeof img->name, "%s", name);
	img->size_bytes = size_bytes;
	img->layer_count = n;
	for (uint32_t i = 0; i < n; i++) memcpy(img->layers[i], layers[i], SHA256_DIGEST_STRLEN);
	int r = layer_store_image_put(s, img);
	free(img);
	return r;
}

/* Index of the first differing byte, or -1. */
static inline long long test_first_diff(const uint8_t *a, const uint8_t *b, uint64_t n)
{
	if (!memcmp(a, b, n)) return -1;
	for (uint64_t i = 0; i < n; i++)
		if (a[i] != b[i]) return (long long)i;
	return -1;
}

#endif
