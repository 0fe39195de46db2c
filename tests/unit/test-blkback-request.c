/* blkback/request.c: ABI layouts against the structs of Xen's public header (native) and Linux's
 * common.h (x86_32 and x86_64 packed variants), ring geometry, and the validation table. */
#include "blkback/request.h"
#include "tests/lib/tap.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>

#include <xen/io/blkif.h>

/* Linux drivers/block/xen-blkback/common.h layouts, restated independently of request.c. */
#pragma pack(push, 4)
struct x32_seg { uint32_t gref; uint8_t first_sect, last_sect; };
struct x32_rw { uint8_t op, nr_segments; uint16_t handle; uint64_t id; uint64_t sector; struct x32_seg seg[11]; };
struct x32_discard { uint8_t op, flag; uint16_t handle; uint64_t id; uint64_t sector; uint64_t nr_sectors; };
struct x32_indirect {
	uint8_t op, indirect_op; uint16_t nr_segments; uint64_t id; uint64_t sector; uint16_t handle; uint16_t pad1;
	uint32_t grefs[8]; uint64_t pad2;
};
#pragma pack(pop)
struct x64_rw { uint8_t op, nr_segments; uint16_t handle; uint32_t pad; uint64_t id; uint64_t sector; struct x32_seg seg[11]; };
struct x64_discard { uint8_t op, flag; uint16_t handle; uint32_t pad; uint64_t id; uint64_t sector; uint64_t nr_sectors; };

static struct blkback_req req;

static int validate(const struct blkback_limits *lim, uint64_t *sectors)
{
	uint64_t s = ~0ull;
	int r = blkback_request_validate(&req, lim, &s);
	if (sectors) *sectors = s;
	return r;
}

static void rw(uint8_t op, uint8_t nseg, uint64_t sector)
{
	struct blkif_request r;
	memset(&r, 0, sizeof(r));
	r.operation = op;
	r.nr_segments = nseg;
	r.id = 42;
	r.sector_number = sector;
	for (unsigned i = 0; i < 11; i++) r.seg[i] = (struct blkif_request_segment){ 100 + i, 0, 7 };
	uint8_t slot[112] = { 0 };
	memcpy(slot, &r, sizeof(r));
	blkback_request_decode(BLKBACK_ABI_NATIVE, slot, &req);
}

int main(void)
{
	/* geometry */
	TAP_IS(blkback_ring_entry_size(BLKBACK_ABI_X86_64), sizeof(union blkif_sring_entry), "native/x86_64 slot size = blkif.h's");
	TAP_IS(blkback_ring_entry_size(BLKBACK_ABI_X86_32), sizeof(struct x32_rw), "x86_32 slot size = Linux's (108)");
	TAP_IS(blkback_ring_slots(BLKBACK_ABI_NATIVE, 4096), (unsigned)__CONST_RING_SIZE(blkif, 4096), "1-page ring slots = __CONST_RING_SIZE");
	TAP_IS(blkback_ring_slots(BLKBACK_ABI_NATIVE, 16 * 4096), (unsigned)__CONST_RING_SIZE(blkif, 16 * 4096), "16-page ring slots");
	TAP_IS(blkback_ring_slots(BLKBACK_ABI_X86_32, 4096), 32u, "x86_32 1-page ring has 32 slots");
	TAP_IS(offsetof(struct blkif_sring, ring), (size_t)BLKBACK_SRING_HEADER_BYTES, "sring header is 64 bytes");
	enum blkback_abi abi;
	TAP_OK(blkback_abi_parse("x86_32-abi", &abi) == 0 && abi == BLKBACK_ABI_X86_32, "parse x86_32-abi");
	TAP_OK(blkback_abi_parse(NULL, &abi) == 0 && abi == BLKBACK_ABI_NATIVE, "no protocol = native");
	TAP_IS(blkback_abi_parse("arm-abi", &abi), -EINVAL, "unknown protocol rejected");

	/* decode per ABI */
	struct x32_rw a32 = { BLKIF_OP_WRITE, 2, 7, 0x1122334455667788ull, 999, { { 5, 1, 6 }, { 6, 0, 7 } } };
	blkback_request_decode(BLKBACK_ABI_X86_32, &a32, &req);
	TAP_OK(req.operation == BLKIF_OP_WRITE && req.nr_segments == 2 && req.handle == 7 && req.id == 0x1122334455667788ull &&
		       req.sector_number == 999 && req.seg[0].gref == 5 && req.seg[0].first_sect == 1 && req.seg[0].last_sect == 6 &&
		       req.seg[1].gref == 6 && req.loaded_segments == 2,
	       "x86_32 read/write decoded");
	struct x64_rw a64 = { BLKIF_OP_READ, 1, 3, 0, 77, 12345, { { 9, 2, 3 } } };
	blkback_request_decode(BLKBACK_ABI_X86_64, &a64, &req);
	TAP_OK(req.operation == BLKIF_OP_READ && req.id == 77 && req.sector_number == 12345 && req.seg[0].gref == 9 &&
		       req.seg[0].last_sect == 3,
	       "x86_64 read/write decoded");
	struct x32_discard d32 = { BLKIF_OP_DISCARD, 1, 0, 5, 64, 128 };
	blkback_request_decode(BLKBACK_ABI_X86_32, &d32, &req);
	TAP_OK(req.id == 5 && req.sector_number == 64 && req.nr_sectors == 128 && req.discard_flag == 1, "x86_32 discard decoded");
	struct x64_discard d64 = { BLKIF_OP_DISCARD, 0, 0, 0, 6, 72, 8 };
	blkback_request_decode(BLKBACK_ABI_X86_64, &d64, &req);
	TAP_OK(req.id == 6 && req.sector_number == 72 && req.nr_sectors == 8, "x86_64 discard decoded");
	struct x32_indirect i32 = { BLKIF_OP_INDIRECT, BLKIF_OP_READ, 600, 8, 16, 2, 0, { 11, 12, 13 }, 0 };
	TAP_IS(sizeof(i32), 64u, "x86_32 indirect is 64 bytes");
	uint8_t slot32[108] = { 0 };
	memcpy(slot32, &i32, sizeof(i32));
	blkback_request_decode(BLKBACK_ABI_X86_32, slot32, &req);
	TAP_OK(req.indirect_op == BLKIF_OP_READ && req.nr_segments == 600 && req.id == 8 && req.sector_number == 16 &&
		       req.indirect_grefs[0] == 11 && req.indirect_grefs[2] == 13,
	       "x86_32 indirect decoded");
	struct blkif_request_indirect in64;
	memset(&in64, 0, sizeof(in64));
	in64.operation = BLKIF_OP_INDIRECT;
	in64.indirect_op = BLKIF_OP_WRITE;
	in64.nr_segments = 20;
	in64.id = 9;
	in64.sector_number = 80;
	in64.indirect_grefs[0] = 33;
	uint8_t slot64[112] = { 0 };
	memcpy(slot64, &in64, sizeof(in64));
	blkback_request_decode(BLKBACK_ABI_NATIVE, slot64, &req);
	TAP_OK(req.indirect_op == BLKIF_OP_WRITE && req.nr_segments == 20 && req.id == 9 && req.indirect_grefs[0] == 33,
	       "native indirect decoded");
	TAP_IS(blkback_request_indirect_pages(&req, 32), 1u, "20 segments need 1 indirect page");
	TAP_IS(blkback_request_indirect_pages(&req, 16), 0u, "more segments than offered: no pages loaded");
	struct blkif_request_segment ip[512];
	for (int i = 0; i < 512; i++) ip[i] = (struct blkif_request_segment){ 1000 + i, 0, 7 };
	blkback_request_load_indirect(&req, ip, 1);
	TAP_OK(req.loaded_segments == 20 && req.seg[19].gref == 1019, "indirect segments loaded from the page copy");

	/* response */
	uint8_t rsp[16];
	memset(rsp, 0xEE, sizeof(rsp));
	blkback_response_encode(BLKBACK_ABI_NATIVE, rsp, 0xABCDEF, BLKIF_OP_READ, BLKIF_RSP_ERROR);
	struct blkif_response br;
	memcpy(&br, rsp, sizeof(br));
	TAP_OK(br.id == 0xABCDEF && br.operation == BLKIF_OP_READ && br.status == BLKIF_RSP_ERROR, "response encoded as blkif_response");

	/* validation table */
	struct blkback_limits lim = { .size_sectors = 2048, .readonly = false, .flush = true, .discard = true, .max_indirect_segs = 32 };
	struct blkback_limits ro = lim;
	ro.readonly = true;
	uint64_t s;
	rw(BLKIF_OP_READ, 2, 0);
	TAP_OK(validate(&lim, &s) == BLKIF_RSP_OKAY && s == 16, "2 full segments read: 16 sectors");
	rw(BLKIF_OP_READ, 0, 0);
	TAP_IS(validate(&lim, NULL), BLKIF_RSP_ERROR, "0 segments read: error");
	rw(BLKIF_OP_WRITE, 12, 0);
	TAP_IS(validate(&lim, NULL), BLKIF_RSP_ERROR, "12 segments direct: error");
	rw(BLKIF_OP_WRITE, 255, 0);
	TAP_IS(validate(&lim, NULL), BLKIF_RSP_ERROR, "255 segments direct: error");
	rw(BLKIF_OP_READ, 11, 2048 - 88);
	TAP_IS(validate(&lim, NULL), BLKIF_RSP_OKAY, "11 segments ending at the last sector: ok");
	rw(BLKIF_OP_READ, 11, 2048 - 87);
	TAP_IS(validate(&lim, NULL), BLKIF_RSP_ERROR, "one sector past the end: error");
	rw(BLKIF_OP_READ, 1, ~0ull - 3);
	TAP_IS(validate(&lim, NULL), BLKIF_RSP_ERROR, "sector range wrapping 2^64: error");
	rw(BLKIF_OP_READ, 1, 0);
	req.seg[0].first_sect = 5;
	req.seg[0].last_sect = 4;
	TAP_IS(validate(&lim, NULL), BLKIF_RSP_ERROR, "first_sect > last_sect: error");
	req.seg[0].first_sect = 0;
	req.seg[0].last_sect = 8;
	TAP_IS(validate(&lim, NULL), BLKIF_RSP_ERROR, "last_sect 8: error");
	req.seg[0].first_sect = 7;
	req.seg[0].last_sect = 7;
	TAP_OK(validate(&lim, &s) == BLKIF_RSP_OKAY && s == 1, "single last sector of a page: ok");
	rw(BLKIF_OP_WRITE, 1, 0);
	TAP_IS(validate(&ro, NULL), BLKIF_RSP_ERROR, "write to read-only: error");
	rw(BLKIF_OP_READ, 1, 0);
	TAP_IS(validate(&ro, NULL), BLKIF_RSP_OKAY, "read of read-only: ok");
	rw(BLKIF_OP_FLUSH_DISKCACHE, 0, 0);
	TAP_OK(validate(&lim, &s) == BLKIF_RSP_OKAY && s == 0, "pure flush: ok");
	TAP_IS(validate(&ro, NULL), BLKIF_RSP_OKAY, "pure flush on read-only: ok");
	rw(BLKIF_OP_FLUSH_DISKCACHE, 0, ~0ull); /* Linux blkfront: blk_rq_pos() of a flush is (sector_t)-1 */
	TAP_OK(validate(&lim, &s) == BLKIF_RSP_OKAY && s == 0, "pure flush at sector 2^64-1 (as Linux sends it): ok");
	rw(BLKIF_OP_FLUSH_DISKCACHE, 2, 0);
	TAP_IS(validate(&ro, NULL), BLKIF_RSP_ERROR, "flush with data on read-only: error");
	struct blkback_limits noflush = lim;
	noflush.flush = false;
	rw(BLKIF_OP_WRITE_BARRIER, 0, 0);
	TAP_IS(validate(&noflush, NULL), BLKIF_RSP_EOPNOTSUPP, "barrier without the feature: eopnotsupp");
	rw(BLKIF_OP_RESERVED_1, 1, 0);
	TAP_IS(validate(&lim, NULL), BLKIF_RSP_EOPNOTSUPP, "reserved op: eopnotsupp");
	rw(200, 1, 0);
	TAP_IS(validate(&lim, NULL), BLKIF_RSP_EOPNOTSUPP, "unknown op 200: eopnotsupp");

	blkback_request_decode(BLKBACK_ABI_X86_64, &d64, &req); /* 72 + 8 */
	TAP_OK(validate(&lim, &s) == BLKIF_RSP_OKAY && s == 8, "aligned discard: ok");
	TAP_IS(validate(&ro, NULL), BLKIF_RSP_ERROR, "discard on read-only: error");
	struct blkback_limits nodisc = lim;
	nodisc.discard = false;
	TAP_IS(validate(&nodisc, NULL), BLKIF_RSP_EOPNOTSUPP, "discard without the feature: eopnotsupp");
	req.sector_number = 73;
	TAP_IS(validate(&lim, NULL), BLKIF_RSP_ERROR, "misaligned discard start: error");
	req.sector_number = 72;
	req.nr_sectors = 0;
	TAP_IS(validate(&lim, NULL), BLKIF_RSP_ERROR, "empty discard: error");
	req.nr_sectors = ~0ull & ~7ull;
	TAP_IS(validate(&lim, NULL), BLKIF_RSP_ERROR, "discard range overflowing: error");

	blkback_request_decode(BLKBACK_ABI_NATIVE, slot64, &req);
	blkback_request_load_indirect(&req, ip, 1);
	TAP_OK(validate(&lim, &s) == BLKIF_RSP_OKAY && s == 160, "indirect write of 20 segments: ok");
	TAP_IS(validate(&ro, NULL), BLKIF_RSP_ERROR, "indirect write on read-only: error");
	struct blkback_limits noind = lim;
	noind.max_indirect_segs = 0;
	TAP_IS(validate(&noind, NULL), BLKIF_RSP_EOPNOTSUPP, "indirect without the feature: eopnotsupp");
	req.indirect_op = BLKIF_OP_FLUSH_DISKCACHE;
	TAP_IS(validate(&lim, NULL), BLKIF_RSP_ERROR, "indirect flush: error");
	req.indirect_op = BLKIF_OP_READ;
	req.nr_segments = 33;
	TAP_IS(validate(&lim, NULL), BLKIF_RSP_ERROR, "indirect above the advertised maximum: error");
	req.nr_segments = 21; /* only 20 loaded */
	TAP_IS(validate(&lim, NULL), BLKIF_RSP_ERROR, "segments not loaded: error");
	req.nr_segments = 0;
	TAP_IS(validate(&lim, NULL), BLKIF_RSP_ERROR, "indirect with 0 segments: error");

	TAP_OK(blkback_ring_prod_sane(32, 0, 32), "producer one ring ahead: sane");
	TAP_OK(!blkback_ring_prod_sane(33, 0, 32), "producer beyond a ring: corrupt");
	TAP_OK(blkback_ring_prod_sane(5, 0xFFFFFFF0u, 32), "producer wrapped around 2^32: sane");
	TAP_OK(!blkback_ring_prod_sane(0xFFFFFFF0u, 5, 32), "producer behind responses: corrupt");
	return tap_done();
}
