/* The pure half of the blkif request path: ABI layouts (byte offsets per ABI, from Linux's
 * drivers/block/xen-blkback/common.h and Xen's public io/blkif.h), decoding, the single
 * validation function the backend and the fuzzer both call, and response encoding.
 *
 * Invariants: decoding reads only the private copy it is given and fills every field, so a
 * decoded request never holds uninitialised data; validation is total (any bit pattern yields
 * OKAY, ERROR or EOPNOTSUPP) and never does arithmetic that can overflow. */
#include "blkback/request.h"
#include "common/checked.h"

#include <errno.h>
#include <string.h>

#include <xen/io/blkif.h>
#include <xen/io/protocols.h>

struct abi_layout {
	size_t entry;            /* slot size */
	/* read/write (and flush/barrier) */
	size_t rw_id, rw_sector, rw_seg;
	/* discard */
	size_t d_id, d_sector, d_nr;
	/* indirect */
	size_t i_id, i_sector, i_handle, i_grefs;
};

static const struct abi_layout layouts[] = {
	/* x86_32: 4-byte aligned 64-bit fields (#pragma pack(4) in Linux). */
	[BLKBACK_ABI_X86_32] = { 108, 4, 12, 20, 4, 12, 20, 4, 12, 20, 24 },
	/* x86_64 (and the native layout of every 64-bit architecture). */
	[BLKBACK_ABI_X86_64] = { 112, 8, 16, 24, 8, 16, 24, 8, 16, 24, 28 },
};

static const struct abi_layout *layout(enum blkback_abi abi)
{
#if defined(__i386__)
	if (abi == BLKBACK_ABI_NATIVE) abi = BLKBACK_ABI_X86_32;
#else
	if (abi == BLKBACK_ABI_NATIVE) abi = BLKBACK_ABI_X86_64;
#endif
	return &layouts[abi];
}

int blkback_abi_parse(const char *protocol, enum blkback_abi *out)
{
	if (!protocol || !*protocol) *out = BLKBACK_ABI_NATIVE;
	else if (!strcmp(protocol, XEN_IO_PROTO_ABI_X86_32)) *out = BLKBACK_ABI_X86_32;
	else if (!strcmp(protocol, XEN_IO_PROTO_ABI_X86_64)) *out = BLKBACK_ABI_X86_64;
	else return -EINVAL;
	return 0;
}

const char *blkback_abi_name(enum blkback_abi abi)
{
	switch (abi) {
	case BLKBACK_ABI_X86_32: return XEN_IO_PROTO_ABI_X86_32;
	case BLKBACK_ABI_X86_64: return XEN_IO_PROTO_ABI_X86_64;
	default: return "native";
	}
}

size_t blkback_ring_entry_size(enum blkback_abi abi)
{
	return layout(abi)->entry;
}

unsigned blkback_ring_slots(enum blkback_abi abi, size_t ring_bytes)
{
	if (ring_bytes <= BLKBACK_SRING_HEADER_BYTES) return 0;
	size_t n = (ring_bytes - BLKBACK_SRING_HEADER_BYTES) / layout(abi)->entry;
	unsigned p = 1;
	while ((size_t)p * 2 <= n) p *= 2;
	return n ? p : 0;
}

static uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }

void blkback_request_decode(enum blkback_abi abi, const void *slot, struct blkback_req *out)
{
	const struct abi_layout *l = layout(abi);
	const uint8_t *s = slot;
	/* Only the header fields and the loaded segments are ever read; clear the header. */
	memset(out, 0, offsetof(struct blkback_req, seg));
	out->operation = s[0];
	switch (out->operation) {
	case BLKIF_OP_DISCARD:
		out->discard_flag = s[1];
		out->handle = rd16(s + 2);
		out->id = rd64(s + l->d_id);
		out->sector_number = rd64(s + l->d_sector);
		out->nr_sectors = rd64(s + l->d_nr);
		break;
	case BLKIF_OP_INDIRECT:
		out->indirect_op = s[1];
		out->nr_segments = rd16(s + 2);
		out->id = rd64(s + l->i_id);
		out->sector_number = rd64(s + l->i_sector);
		out->handle = rd16(s + l->i_handle);
		for (unsigned i = 0; i < BLKBACK_INDIRECT_PAGES_MAX; i++) out->indirect_grefs[i] = rd32(s + l->i_grefs + 4 * i);
		break;
	default: /* READ, WRITE, FLUSH, BARRIER and unknown ops share the rw layout */
		out->nr_segments = s[1];
		out->handle = rd16(s + 2);
		out->id = rd64(s + l->rw_id);
		out->sector_number = rd64(s + l->rw_sector);
		unsigned n = out->nr_segments < BLKIF_MAX_SEGMENTS_PER_REQUEST ? out->nr_segments : BLKIF_MAX_SEGMENTS_PER_REQUEST;
		for (unsigned i = 0; i < n; i++) {
			const uint8_t *g = s + l->rw_seg + 8 * i;
			out->seg[i].gref = rd32(g);
			out->seg[i].first_sect = g[4];
			out->seg[i].last_sect = g[5];
		}
		out->loaded_segments = (uint16_t)n;
		break;
	}
}

unsigned blkback_request_indirect_pages(const struct blkback_req *req, uint16_t max_indirect_segs)
{
	if (req->operation != BLKIF_OP_INDIRECT) return 0;
	if (req->nr_segments == 0 || req->nr_segments > max_indirect_segs || req->nr_segments > BLKBACK_INDIRECT_SEGS_MAX)
		return 0;
	return DIV_ROUND_UP((unsigned)req->nr_segments, BLKBACK_SEGS_PER_INDIRECT_PAGE);
}

void blkback_request_load_indirect(struct blkback_req *req, const void *pages, unsigned npages)
{
	const uint8_t *p = pages;
	unsigned n = req->nr_segments;
	if (n > BLKBACK_INDIRECT_SEGS_MAX) n = BLKBACK_INDIRECT_SEGS_MAX;
	if (n > npages * BLKBACK_SEGS_PER_INDIRECT_PAGE) n = npages * BLKBACK_SEGS_PER_INDIRECT_PAGE;
	for (unsigned i = 0; i < n; i++) {
		const uint8_t *g = p + 8 * (size_t)i;
		req->seg[i].gref = rd32(g);
		req->seg[i].first_sect = g[4];
		req->seg[i].last_sect = g[5];
	}
	req->loaded_segments = (uint16_t)n;
}

uint8_t blkback_request_data_op(const struct blkback_req *req)
{
	return req->operation == BLKIF_OP_INDIRECT ? req->indirect_op : req->operation;
}

uint16_t blkback_request_segments(const struct blkback_req *req)
{
	return req->operation == BLKIF_OP_DISCARD ? 0 : req->nr_segments;
}

/* Checks the segments and the sector range they cover. */
static int check_segments(const struct blkback_req *req, const struct blkback_limits *lim, uint64_t *sectors)
{
	if (req->loaded_segments != req->nr_segments) return BLKIF_RSP_ERROR;
	uint64_t total = 0;
	for (unsigned i = 0; i < req->nr_segments; i++) {
		const struct blkback_seg *s = &req->seg[i];
		if (s->first_sect > s->last_sect || s->last_sect >= BLKBACK_SECTORS_PER_PAGE) return BLKIF_RSP_ERROR;
		total += (uint64_t)(s->last_sect - s->first_sect + 1);
	}
	if (!ck_range_within(req->sector_number, total, lim->size_sectors)) return BLKIF_RSP_ERROR;
	*sectors = total;
	return BLKIF_RSP_OKAY;
}

int blkback_request_validate(const struct blkback_req *req, const struct blkback_limits *lim, uint64_t *data_sectors)
{
	uint64_t sectors = 0;
	int r;
	switch (req->operation) {
	case BLKIF_OP_READ:
	case BLKIF_OP_WRITE:
		if (req->nr_segments < 1 || req->nr_segments > BLKIF_MAX_SEGMENTS_PER_REQUEST) return BLKIF_RSP_ERROR;
		if (req->operation == BLKIF_OP_WRITE && lim->readonly) return BLKIF_RSP_ERROR;
		r = check_segments(req, lim, &sectors);
		break;
	case BLKIF_OP_FLUSH_DISKCACHE:
	case BLKIF_OP_WRITE_BARRIER:
		if (!lim->flush) return BLKIF_RSP_EOPNOTSUPP;
		if (req->nr_segments > BLKIF_MAX_SEGMENTS_PER_REQUEST) return BLKIF_RSP_ERROR;
		/* With segments it also writes them; a pure flush on a read-only disk is harmless. */
		if (req->nr_segments > 0 && lim->readonly) return BLKIF_RSP_ERROR;
		/* A pure flush carries no sector: Linux blkfront sends blk_rq_pos() of its flush request,
		 * which is (sector_t)-1 (blk_rq_init), so the range is only checked when there is data. */
		if (req->nr_segments == 0) {
			r = req->loaded_segments == 0 ? BLKIF_RSP_OKAY : BLKIF_RSP_ERROR;
			break;
		}
		r = check_segments(req, lim, &sectors);
		break;
	case BLKIF_OP_DISCARD:
		if (!lim->discard) return BLKIF_RSP_EOPNOTSUPP;
		if (lim->readonly) return BLKIF_RSP_ERROR;
		if (req->nr_sectors == 0 || req->sector_number % BLKBACK_SECTORS_PER_PAGE ||
		    req->nr_sectors % BLKBACK_SECTORS_PER_PAGE)
			return BLKIF_RSP_ERROR;
		if (!ck_range_within(req->sector_number, req->nr_sectors, lim->size_sectors)) return BLKIF_RSP_ERROR;
		sectors = req->nr_sectors;
		r = BLKIF_RSP_OKAY;
		break;
	case BLKIF_OP_INDIRECT:
		if (lim->max_indirect_segs == 0) return BLKIF_RSP_EOPNOTSUPP;
		if (req->indirect_op != BLKIF_OP_READ && req->indirect_op != BLKIF_OP_WRITE) return BLKIF_RSP_ERROR;
		if (req->nr_segments < 1 || req->nr_segments > lim->max_indirect_segs ||
		    req->nr_segments > BLKBACK_INDIRECT_SEGS_MAX)
			return BLKIF_RSP_ERROR;
		if (req->indirect_op == BLKIF_OP_WRITE && lim->readonly) return BLKIF_RSP_ERROR;
		r = check_segments(req, lim, &sectors);
		break;
	default:
		return BLKIF_RSP_EOPNOTSUPP;
	}
	if (r == BLKIF_RSP_OKAY) *data_sectors = sectors;
	return r;
}

void blkback_response_encode(enum blkback_abi abi, void *slot, uint64_t id, uint8_t operation, int16_t status)
{
	(void)abi; /* id@0, operation@8, status@10 in every ABI; only the slot stride differs */
	uint8_t buf[12] = { 0 };
	memcpy(buf, &id, 8);
	buf[8] = operation;
	memcpy(buf + 10, &status, 2);
	memcpy(slot, buf, sizeof(buf));
}
