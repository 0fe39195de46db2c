/* Unit test of the NBD server's pure protocol functions (nbd/proto.c): option payload parsing,
 * request header validation (every verdict and error value the server relies on), and the
 * errno -> NBD error mapping.  The fuzz target tests/fuzz/fuzz-nbd-request.c drives the same
 * functions with random bytes; this test pins the expected answers. */
#include <errno.h>
#include <string.h>

#include "nbd/nbd.h"
#include "tests/lib/tap.h"

static size_t put32(uint8_t *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; return 4; }

static void hdr(uint8_t *b, uint32_t magic, uint16_t flags, uint16_t type, uint64_t handle, uint64_t off, uint32_t len)
{
	put32(b, magic);
	b[4] = flags >> 8; b[5] = flags;
	b[6] = type >> 8; b[7] = type;
	put32(b + 8, handle >> 32); put32(b + 12, (uint32_t)handle);
	put32(b + 16, off >> 32); put32(b + 20, (uint32_t)off);
	put32(b + 24, len);
}

static enum nbd_verdict v(const struct nbd_session *s, uint16_t flags, uint16_t type, uint64_t off, uint32_t len, uint32_t *err)
{
	uint8_t b[NBD_REQUEST_HEADER_BYTES];
	struct nbd_request r;
	hdr(b, NBD_MAGIC_REQUEST, flags, type, 0x1122334455667788ull, off, len);
	enum nbd_verdict res = nbd_request_validate(b, s, &r, err);
	if (res != NBD_VERDICT_CLOSE && r.handle != 0x1122334455667788ull) tap_ok(0, "handle decoded");
	return res;
}

int main(void)
{
	const uint64_t size = 64 << 20;
	struct nbd_session rw = { size, NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM |
					      NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_DF | NBD_FLAG_CAN_MULTI_CONN, true, true };
	struct nbd_session ro = { size, NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY | NBD_FLAG_SEND_FLUSH, false, false };
	uint32_t e;

	/* ---- requests */
	TAP_IS(v(&rw, 0, NBD_CMD_READ, 0, 4096, &e), NBD_VERDICT_OK, "aligned read ok");
	TAP_IS(v(&rw, 0, NBD_CMD_READ, 3, 7, &e), NBD_VERDICT_OK, "unaligned read ok (the server handles it)");
	TAP_OK(v(&rw, 0, NBD_CMD_READ, size, 1, &e) == NBD_VERDICT_ERROR && e == NBD_EINVAL, "read past the end: EINVAL");
	TAP_OK(v(&rw, 0, NBD_CMD_READ, UINT64_MAX - 10, 4096, &e) == NBD_VERDICT_ERROR && e == NBD_EINVAL, "offset+length overflow: EINVAL");
	TAP_OK(v(&rw, 0, NBD_CMD_WRITE, size - 512, 1024, &e) == NBD_VERDICT_ERROR && e == NBD_ENOSPC, "write past the end: ENOSPC");
	TAP_OK(v(&rw, 0, NBD_CMD_READ, 0, 0, &e) == NBD_VERDICT_ERROR && e == NBD_EINVAL, "zero-length read: EINVAL");
	TAP_OK(v(&rw, 0, NBD_CMD_READ, 0, NBD_REQUEST_BYTES_MAX + 1, &e) == NBD_VERDICT_ERROR && e == NBD_EINVAL, "read over the maximum: EINVAL");
	TAP_IS(v(&rw, 0, NBD_CMD_WRITE, 0, NBD_REQUEST_BYTES_MAX + 1, &e), NBD_VERDICT_CLOSE, "write over the maximum: close (payload not trusted)");
	TAP_IS(v(&rw, 0, NBD_CMD_WRITE, 0, NBD_REQUEST_BYTES_MAX, &e), NBD_VERDICT_OK, "write of exactly the maximum ok");
	TAP_IS(v(&rw, NBD_CMD_FLAG_FUA, NBD_CMD_WRITE, 0, 512, &e), NBD_VERDICT_OK, "FUA write ok");
	TAP_OK(v(&rw, NBD_CMD_FLAG_NO_HOLE, NBD_CMD_WRITE, 0, 512, &e) == NBD_VERDICT_ERROR && e == NBD_EINVAL, "NO_HOLE on write: EINVAL");
	TAP_IS(v(&rw, NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FUA, NBD_CMD_WRITE_ZEROES, 0, 1 << 30 >> 7, &e), NBD_VERDICT_OK, "WRITE_ZEROES NO_HOLE|FUA ok");
	TAP_IS(v(&rw, 0, NBD_CMD_TRIM, 0, (uint32_t)size, &e), NBD_VERDICT_OK, "TRIM of the whole export ok (no size limit)");
	TAP_IS(v(&rw, NBD_CMD_FLAG_DF, NBD_CMD_READ, 0, 4096, &e), NBD_VERDICT_OK, "DF read with structured replies ok");
	TAP_OK(v(&ro, NBD_CMD_FLAG_DF, NBD_CMD_READ, 0, 4096, &e) == NBD_VERDICT_ERROR && e == NBD_EINVAL, "DF without structured replies: EINVAL");
	TAP_IS(v(&rw, NBD_CMD_FLAG_REQ_ONE, NBD_CMD_BLOCK_STATUS, 0, 4096, &e), NBD_VERDICT_OK, "BLOCK_STATUS REQ_ONE ok");
	TAP_OK(v(&ro, 0, NBD_CMD_BLOCK_STATUS, 0, 4096, &e) == NBD_VERDICT_ERROR && e == NBD_EINVAL, "BLOCK_STATUS without base:allocation: EINVAL");
	TAP_IS(v(&rw, 0, NBD_CMD_FLUSH, 0, 0, &e), NBD_VERDICT_OK, "FLUSH ok");
	TAP_OK(v(&rw, 0, NBD_CMD_FLUSH, 0, 1, &e) == NBD_VERDICT_ERROR && e == NBD_EINVAL, "FLUSH with a length: EINVAL");
	TAP_IS(v(&rw, 0, NBD_CMD_DISC, 0, 0, &e), NBD_VERDICT_OK, "DISC ok");
	TAP_OK(v(&rw, 0, NBD_CMD_CACHE, 0, 4096, &e) == NBD_VERDICT_ERROR && e == NBD_EINVAL, "CACHE (not offered): EINVAL");
	TAP_OK(v(&rw, 0, 42, 0, 4096, &e) == NBD_VERDICT_ERROR && e == NBD_EINVAL, "unknown command: EINVAL");
	TAP_OK(v(&rw, 0x4000, NBD_CMD_READ, 0, 4096, &e) == NBD_VERDICT_ERROR && e == NBD_EINVAL, "unknown flag: EINVAL");
	TAP_OK(v(&ro, 0, NBD_CMD_WRITE, 0, 512, &e) == NBD_VERDICT_ERROR && e == NBD_EPERM, "write to read-only: EPERM");
	TAP_OK(v(&ro, 0, NBD_CMD_TRIM, 0, 512, &e) == NBD_VERDICT_ERROR && e == NBD_EPERM, "trim on read-only: EPERM");
	TAP_OK(v(&ro, 0, NBD_CMD_WRITE_ZEROES, 0, 512, &e) == NBD_VERDICT_ERROR && e == NBD_EPERM, "write zeroes on read-only: EPERM");
	TAP_OK(v(&ro, NBD_CMD_FLAG_FUA, NBD_CMD_READ, 0, 512, &e) == NBD_VERDICT_ERROR && e == NBD_EINVAL, "FUA not offered: EINVAL");
	{
		uint8_t b[NBD_REQUEST_HEADER_BYTES];
		struct nbd_request r;
		hdr(b, 0x12345678, 0, NBD_CMD_READ, 1, 0, 512);
		TAP_IS(nbd_request_validate(b, &rw, &r, &e), NBD_VERDICT_CLOSE, "bad magic: close");
	}

	/* ---- options */
	struct nbd_option_parsed o;
	uint8_t p[256];
	size_t n = 0;
	n += put32(p + n, 3); memcpy(p + n, "ctr", 3); n += 3; p[n++] = 0; p[n++] = 2; p[n++] = 0; p[n++] = 3; p[n++] = 0; p[n++] = 1;
	TAP_OK(nbd_option_parse(NBD_OPT_GO, p, (uint32_t)n, &o) == 0 && o.export_name_len == 3 && !memcmp(o.export_name, "ctr", 3) &&
	       o.info_count == 2, "GO: name and two info requests");
	TAP_IS(nbd_option_parse(NBD_OPT_GO, p, (uint32_t)n - 1, &o), NBD_REP_ERR_INVALID, "GO with a truncated info list: INVALID");
	put32(p, 300);
	TAP_IS(nbd_option_parse(NBD_OPT_INFO, p, (uint32_t)n, &o), NBD_REP_ERR_INVALID, "INFO name length past the payload: INVALID");
	TAP_IS(nbd_option_parse(NBD_OPT_LIST, p, 1, &o), NBD_REP_ERR_INVALID, "LIST with data: INVALID");
	TAP_IS(nbd_option_parse(NBD_OPT_LIST, NULL, 0, &o), 0u, "LIST ok");
	TAP_IS(nbd_option_parse(NBD_OPT_STARTTLS, NULL, 0, &o), NBD_REP_ERR_UNSUP, "STARTTLS: UNSUP");
	TAP_IS(nbd_option_parse(NBD_OPT_EXTENDED_HEADERS, NULL, 0, &o), NBD_REP_ERR_UNSUP, "EXTENDED_HEADERS: UNSUP");
	TAP_OK(nbd_option_parse(NBD_OPT_EXPORT_NAME, (const uint8_t *)"img", 3, &o) == 0 && o.export_name_len == 3, "EXPORT_NAME");
	TAP_IS(nbd_option_parse(NBD_OPT_EXPORT_NAME, (const uint8_t *)"a\0b", 3, &o), NBD_REP_ERR_INVALID, "NUL in a name: INVALID");
	n = 0;
	n += put32(p + n, 0);
	n += put32(p + n, 2);
	n += put32(p + n, 15); memcpy(p + n, "base:allocation", 15); n += 15;
	n += put32(p + n, 5); memcpy(p + n, "base:", 5); n += 5;
	TAP_OK(nbd_option_parse(NBD_OPT_SET_META_CONTEXT, p, (uint32_t)n, &o) == 0 && o.query_count == 2 && o.query_lens[0] == 15 &&
	       !memcmp(o.queries[1], "base:", 5), "SET_META_CONTEXT: two queries");
	TAP_IS(nbd_option_parse(NBD_OPT_SET_META_CONTEXT, p, (uint32_t)n + 1, &o), NBD_REP_ERR_INVALID, "trailing byte: INVALID");
	put32(p + 4, NBD_META_QUERIES_MAX + 1);
	TAP_IS(nbd_option_parse(NBD_OPT_LIST_META_CONTEXT, p, (uint32_t)n, &o), NBD_REP_ERR_INVALID, "too many queries: INVALID");

	/* ---- errno mapping */
	TAP_OK(nbd_errno_to_wire(-EROFS) == NBD_EPERM && nbd_errno_to_wire(-EDQUOT) == NBD_ENOSPC && nbd_errno_to_wire(-EFBIG) == NBD_ENOSPC &&
	       nbd_errno_to_wire(-EIO) == NBD_EIO && nbd_errno_to_wire(-EUCLEAN) == NBD_EIO && nbd_errno_to_wire(-ENOMEM) == NBD_ENOMEM &&
	       nbd_errno_to_wire(0) == 0, "errno mapping");
	return tap_done();
}
