/* The merged index of a layer chain: one sorted array naming, for every range of blocks, the
 * topmost layer that holds it as DATA.  Built once at open by overlaying each layer's sorted extent
 * list over the result of the layers below (one linear merge per layer); ZERO extents remove what
 * is below them and are not stored (gaps read zero).  Lookups are a binary search, so their cost
 * does not depend on the number of layers.
 * Invariants: entries sorted by block_index, non-overlapping, block_count >= 1, all below
 * size_blocks. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "cow/cow_internal.h"

struct ivec {
	struct cow_index_entry *v;
	uint64_t n, cap;
};

static int ivec_push(struct ivec *a, struct cow_index_entry e)
{
	if (e.block_count == 0) return 0;
	/* coalesce with the previous entry when it continues the same extent */
	if (a->n) {
		struct cow_index_entry *p = &a->v[a->n - 1];
		if (p->layer == e.layer && p->extent == e.extent && p->block_index + p->block_count == e.block_index) {
			p->block_count += e.block_count;
			return 0;
		}
	}
	if (a->n == a->cap) {
		uint64_t nc = a->cap ? a->cap * 2 : 64;
		struct cow_index_entry *nv = realloc(a->v, nc * sizeof *nv);
		if (!nv) return log_error(-ENOMEM, "build merged index: out of memory");
		a->v = nv;
		a->cap = nc;
	}
	a->v[a->n++] = e;
	return 0;
}

/* out = old overlaid with layer's extents (DATA replaces, ZERO removes). */
static int overlay(const struct ivec *old, const struct layer_extent *ext, uint64_t count, uint32_t layer,
		   uint64_t size_blocks, struct ivec *out)
{
	uint64_t i = 0; /* position in old */
	uint64_t cur = 0; /* blocks below cur are emitted */
	int r;

	for (uint64_t k = 0; k <= count; k++) {
		uint64_t start = k < count ? ext[k].block_index : size_blocks;
		uint64_t end = k < count ? ext[k].block_index + ext[k].block_count : size_blocks;
		if (start > size_blocks) start = size_blocks;
		if (end > size_blocks) end = size_blocks;
		/* copy old entries in [cur, start) */
		while (i < old->n && old->v[i].block_index < start) {
			struct cow_index_entry e = old->v[i];
			uint64_t es = e.block_index, ee = e.block_index + e.block_count;
			if (ee <= cur) { i++; continue; }
			if (es < cur) es = cur;
			if (ee > start) ee = start;
			if (es < ee) {
				struct cow_index_entry piece = e;
				piece.block_index = es;
				piece.block_count = (uint32_t)(ee - es);
				if ((r = ivec_push(out, piece))) return r;
			}
			if (e.block_index + e.block_count <= start) i++;
			else break;
		}
		if (k == count) break;
		if (ext[k].kind == LAYER_EXTENT_DATA && start < end) {
			/* split so that a merged entry remembers its offset within the extent through
			 * block_index - extent's block_index; block_count stays within the extent */
			struct cow_index_entry e = { .block_index = start, .block_count = (uint32_t)(end - start),
						     .extent = (uint32_t)k, .layer = layer };
			if ((r = ivec_push(out, e))) return r;
		}
		if (end > cur) cur = end;
	}
	return 0;
}

int cow_index_build(struct cow_index *idx, const struct layer_extent *const *extents, const uint64_t *counts,
		    uint32_t layer_count, uint64_t size_blocks)
{
	struct ivec a = { 0 }, b = { 0 };
	int r = 0;

	for (uint32_t l = 0; l < layer_count; l++) {
		b.n = 0;
		if ((r = overlay(&a, extents[l], counts[l], l, size_blocks, &b))) goto out;
		struct ivec t = a;
		a = b;
		b = t;
	}
	free(b.v);
	b.v = NULL;
	if (a.n && a.n < a.cap) {
		struct cow_index_entry *nv = realloc(a.v, a.n * sizeof *nv);
		if (nv) a.v = nv;
	}
	idx->entries = a.v;
	idx->count = a.n;
	return 0;
out:
	free(a.v);
	free(b.v);
	return r;
}

void cow_index_free(struct cow_index *idx)
{
	free(idx->entries);
	idx->entries = NULL;
	idx->count = 0;
}

uint64_t cow_index_find(const struct cow_index *idx, uint64_t block_index)
{
	uint64_t lo = 0, hi = idx->count;
	while (lo < hi) {
		uint64_t mid = lo + (hi - lo) / 2;
		const struct cow_index_entry *e = &idx->entries[mid];
		if (e->block_index + e->block_count <= block_index) lo = mid + 1;
		else hi = mid;
	}
	return lo;
}
