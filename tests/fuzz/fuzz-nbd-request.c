/* libFuzzer target for the NBD server's client-facing parsers (nbd/proto.c): the option parser
 * (handshake) and the request validator (transmission), the only code that interprets bytes a
 * client sent.  Input: byte 0 picks the parser; for options, bytes 1..4 are the option number and
 * the rest its payload; for requests, bytes 1..11 describe the session (size, flags) and the rest
 * is a stream of 28-byte headers validated one after another.  Beyond "no crash, no read out of
 * bounds" (ASan), the properties the server relies on are checked and abort on violation. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/checked.h"
#include "nbd/nbd.h"

static void check(int cond)
{
	if (!cond) abort();
}

static void fuzz_option(const uint8_t *data, size_t size)
{
	if (size < 5) return;
	uint32_t option = (uint32_t)data[1] << 24 | (uint32_t)data[2] << 16 | (uint32_t)data[3] << 8 | data[4];
	option %= 16; /* mostly known options */
	const uint8_t *p = data + 5;
	uint32_t len = (uint32_t)(size - 5);
	/* Copy to an exact-size heap buffer so ASan sees any overread. */
	uint8_t *buf = malloc(len ? len : 1);
	if (!buf) return;
	memcpy(buf, p, len);
	struct nbd_option_parsed o;
	uint32_t rc = nbd_option_parse(option, buf, len, &o);
	if (rc == 0) {
		check(o.export_name_len <= NBD_STRING_BYTES_MAX);
		if (o.export_name_len) {
			check((const uint8_t *)o.export_name >= buf && (const uint8_t *)o.export_name + o.export_name_len <= buf + len);
			check(memchr(o.export_name, 0, o.export_name_len) == NULL);
		}
		if (o.info_count) check(o.info_requests >= buf && o.info_requests + 2u * o.info_count <= buf + len);
		check(o.query_count <= NBD_META_QUERIES_MAX);
		for (uint32_t i = 0; i < o.query_count; i++) {
			check(o.query_lens[i] <= NBD_STRING_BYTES_MAX);
			check((const uint8_t *)o.queries[i] >= buf && (const uint8_t *)o.queries[i] + o.query_lens[i] <= buf + len);
		}
	} else {
		check(rc & 0x80000000u);
	}
	free(buf);
}

static void fuzz_requests(const uint8_t *data, size_t size)
{
	if (size < 12) return;
	struct nbd_session s = { 0 };
	for (int i = 0; i < 8; i++) s.size_bytes = s.size_bytes << 8 | data[1 + i];
	s.size_bytes &= (1ull << 44) - 1;
	s.transmission_flags = (uint16_t)(data[9] << 8 | data[10]) | NBD_FLAG_HAS_FLAGS;
	s.structured_replies = data[11] & 1;
	s.meta_base_allocation = data[11] & 2;
	for (size_t off = 12; off + NBD_REQUEST_HEADER_BYTES <= size; off += NBD_REQUEST_HEADER_BYTES) {
		uint8_t hdr[NBD_REQUEST_HEADER_BYTES];
		memcpy(hdr, data + off, sizeof(hdr));
		if (data[11] & 4) { hdr[0] = 0x25; hdr[1] = 0x60; hdr[2] = 0x95; hdr[3] = 0x13; } /* reach past the magic */
		struct nbd_request r;
		uint32_t err;
		enum nbd_verdict v = nbd_request_validate(hdr, &s, &r, &err);
		switch (v) {
		case NBD_VERDICT_OK:
			check(err == 0);
			if (r.type != NBD_CMD_DISC && r.type != NBD_CMD_FLUSH) {
				check(r.length_bytes > 0);
				check(ck_range_within(r.offset_bytes, r.length_bytes, s.size_bytes));
			}
			if (r.type == NBD_CMD_READ || r.type == NBD_CMD_WRITE) check(r.length_bytes <= NBD_REQUEST_BYTES_MAX);
			if (r.type == NBD_CMD_WRITE || r.type == NBD_CMD_TRIM || r.type == NBD_CMD_WRITE_ZEROES)
				check(!(s.transmission_flags & NBD_FLAG_READ_ONLY));
			if (r.type == NBD_CMD_BLOCK_STATUS) check(s.meta_base_allocation && s.structured_replies);
			check(r.type <= NBD_CMD_BLOCK_STATUS && r.type != NBD_CMD_CACHE);
			break;
		case NBD_VERDICT_ERROR:
			check(err == NBD_EINVAL || err == NBD_EPERM || err == NBD_ENOSPC);
			/* a write's payload gets skipped: it must be a length the server can skip */
			if (r.type == NBD_CMD_WRITE) check(r.length_bytes <= NBD_REQUEST_BYTES_MAX);
			break;
		case NBD_VERDICT_CLOSE:
			break;
		default:
			check(0);
		}
		check(nbd_errno_to_wire(-(int)(hdr[5] % 140)) != 0 || hdr[5] % 140 == 0);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1) return 0;
	if (data[0] & 1) fuzz_option(data, size);
	else fuzz_requests(data, size);
	return 0;
}
