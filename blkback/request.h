/* The blkif request path's pure half (private to blkback/ and its tests/fuzzer): ring geometry
 * per ABI, decoding a request slot that was already copied off the shared ring, loading the
 * segments of an indirect request from copied indirect pages, one validation function, and
 * response encoding.  Nothing here touches shared memory: callers copy first. */
#ifndef OCIBLK_BLKBACK_REQUEST_H
#define OCIBLK_BLKBACK_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/limits.h"

enum blkback_abi {
	BLKBACK_ABI_NATIVE = 0,
	BLKBACK_ABI_X86_32 = 1,
	BLKBACK_ABI_X86_64 = 2,
};

/* Parses the frontend's "protocol" node; absent (NULL) means native.  -EINVAL when unknown. */
int blkback_abi_parse(const char *protocol, enum blkback_abi *out);
const char *blkback_abi_name(enum blkback_abi abi);

/* Bytes of one ring slot (union of request and response) and of the shared ring header. */
size_t blkback_ring_entry_size(enum blkback_abi abi);
#define BLKBACK_SRING_HEADER_BYTES 64u
/* Slots in a shared ring of ring_bytes (a power of two, as __RING_SIZE computes). */
unsigned blkback_ring_slots(enum blkback_abi abi, size_t ring_bytes);

/* Sectors per 4 KiB page (segments address 512-byte sectors 0..7 of a page). */
#define BLKBACK_SECTORS_PER_PAGE 8u
/* Segments per indirect page: sizeof(struct blkif_request_segment) == 8. */
#define BLKBACK_SEGS_PER_INDIRECT_PAGE 512u
#define BLKBACK_INDIRECT_PAGES_MAX 8u /* BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST */

struct blkback_seg {
	uint32_t gref;
	uint8_t first_sect, last_sect;
};

/* A request in our own layout, decoded from a private copy of a ring slot. */
struct blkback_req {
	uint8_t operation;          /* BLKIF_OP_* as on the ring */
	uint8_t indirect_op;        /* INDIRECT: BLKIF_OP_READ/WRITE as sent */
	uint8_t discard_flag;
	uint16_t nr_segments;       /* as sent (not yet validated) */
	uint16_t handle;
	uint64_t id;
	uint64_t sector_number;
	uint64_t nr_sectors;        /* DISCARD */
	uint32_t indirect_grefs[BLKBACK_INDIRECT_PAGES_MAX];
	uint16_t loaded_segments;   /* how many seg[] entries were filled */
	struct blkback_seg seg[BLKBACK_INDIRECT_SEGS_MAX];
};

/* What the device offers; the validation checks requests against it. */
struct blkback_limits {
	uint64_t size_sectors;
	bool readonly;
	bool flush;                 /* feature-flush-cache (and barrier) */
	bool discard;               /* feature-discard */
	uint16_t max_indirect_segs; /* 0 = no indirect */
};

/* Decodes one slot (blkback_ring_entry_size(abi) bytes, already copied) into *out.  Direct
 * segments are loaded (at most BLKIF_MAX_SEGMENTS_PER_REQUEST); indirect ones are not. */
void blkback_request_decode(enum blkback_abi abi, const void *slot, struct blkback_req *out);
/* Indirect pages the request names: 0 when not indirect or when nr_segments is outside
 * 1..max_indirect_segs (validation rejects it then). */
unsigned blkback_request_indirect_pages(const struct blkback_req *req, uint16_t max_indirect_segs);
/* Loads the segments of an indirect request from copies of its indirect pages. */
void blkback_request_load_indirect(struct blkback_req *req, const void *pages, unsigned npages);

/* The one validation of a guest request.  Returns BLKIF_RSP_OKAY when it may be executed, else
 * BLKIF_RSP_ERROR or BLKIF_RSP_EOPNOTSUPP (unknown op, or a feature we did not offer).  On OKAY,
 * *data_sectors is the number of 512-byte sectors the request moves (segments' total, or the
 * discard length; 0 for a pure flush).  Pure: no I/O, no shared memory. */
int blkback_request_validate(const struct blkback_req *req, const struct blkback_limits *lim,
			     uint64_t *data_sectors);

/* The effective data op of a validated request: BLKIF_OP_READ, BLKIF_OP_WRITE, or the op itself
 * for FLUSH/BARRIER/DISCARD (FLUSH/BARRIER with segments write them). */
uint8_t blkback_request_data_op(const struct blkback_req *req);
/* Number of data segments of a validated request. */
uint16_t blkback_request_segments(const struct blkback_req *req);

/* Writes a response into a slot of the shared ring (caller passes the slot address). */
void blkback_response_encode(enum blkback_abi abi, void *slot, uint64_t id, uint8_t operation, int16_t status);

/* The producer index a frontend published is sane when it is at most one ring ahead of the
 * responses we produced (Linux's RING_REQUEST_PROD_OVERFLOW). */
static inline bool blkback_ring_prod_sane(uint32_t req_prod, uint32_t rsp_prod_pvt, unsigned slots)
{
	return (uint32_t)(req_prod - rsp_prod_pvt) <= slots;
}

#endif
