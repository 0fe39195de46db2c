/* libFuzzer target: random ring slot contents and indirect pages through the blkif request
 * path's pure half (decode -> indirect load -> blkback_request_validate), under every ABI and
 * random device limits.  Checks that an accepted request really is inside the device and the
 * advertised limits (abort() otherwise), and that nothing reads out of bounds (ASan). */
#include "blkback/request.h"

#include <stdlib.h>
#include <string.h>

#include <xen/io/blkif.h>

static struct blkback_req req;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 12) return 0;
	enum blkback_abi abi = (enum blkback_abi)(data[0] % 3);
	struct blkback_limits lim;
	uint64_t sz;
	memcpy(&sz, data + 1, 8);
	lim.size_sectors = data[9] & 1 ? sz : sz & 0xFFFFF;
	lim.readonly = data[10] & 1;
	lim.flush = data[10] & 2;
	lim.discard = data[10] & 4;
	lim.max_indirect_segs = data[10] & 8 ? 0 : (uint16_t)(1 + data[11] % BLKBACK_INDIRECT_SEGS_MAX);
	data += 12;
	size -= 12;
	/* The slot: copied into a private buffer of exactly the slot size, as the backend does. */
	size_t es = blkback_ring_entry_size(abi);
	uint8_t *slot = calloc(1, es);
	memcpy(slot, data, size < es ? size : es);
	blkback_request_decode(abi, slot, &req);
	free(slot);
	size_t rest = size > es ? size - es : 0;
	unsigned np = blkback_request_indirect_pages(&req, lim.max_indirect_segs);
	if (np > BLKBACK_INDIRECT_PAGES_MAX) abort();
	if (np) {
		uint8_t *pages = calloc(np, 4096);
		memcpy(pages, data + es, rest < np * 4096ul ? rest : np * 4096ul);
		blkback_request_load_indirect(&req, pages, np);
		free(pages);
	}
	uint64_t sectors = 0;
	int r = blkback_request_validate(&req, &lim, &sectors);
	if (r != BLKIF_RSP_OKAY && r != BLKIF_RSP_ERROR && r != BLKIF_RSP_EOPNOTSUPP) abort();
	if (r != BLKIF_RSP_OKAY) return 0;
	uint8_t op = blkback_request_data_op(&req);
	/* A pure flush carries no sector (Linux sends (sector_t)-1): it moves nothing. */
	bool pure_flush = (op == BLKIF_OP_FLUSH_DISKCACHE || op == BLKIF_OP_WRITE_BARRIER) && req.nr_segments == 0;
	if (pure_flush && sectors != 0) abort();
	/* Accepted: must be in range and consistent. */
	if (!pure_flush && (req.sector_number > lim.size_sectors || sectors > lim.size_sectors - req.sector_number))
		abort();
	bool writes = op == BLKIF_OP_WRITE || op == BLKIF_OP_DISCARD ||
		      ((op == BLKIF_OP_FLUSH_DISKCACHE || op == BLKIF_OP_WRITE_BARRIER) && req.nr_segments);
	if (writes && lim.readonly) abort();
	if (req.operation == BLKIF_OP_INDIRECT && (req.nr_segments > lim.max_indirect_segs || np == 0)) abort();
	if (req.operation != BLKIF_OP_INDIRECT && req.operation != BLKIF_OP_DISCARD &&
	    req.nr_segments > BLKIF_MAX_SEGMENTS_PER_REQUEST)
		abort();
	uint64_t total = 0;
	for (unsigned i = 0; i < blkback_request_segments(&req); i++) {
		if (req.seg[i].first_sect > req.seg[i].last_sect || req.seg[i].last_sect > 7) abort();
		total += req.seg[i].last_sect - req.seg[i].first_sect + 1u;
	}
	if (req.operation != BLKIF_OP_DISCARD && total != sectors) abort();
	return 0;
}
