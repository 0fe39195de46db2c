/* The pure half of the NBD server: everything that interprets bytes a client sent.  No I/O, no
 * allocation, no globals, so the fuzz target (tests/fuzz/fuzz-nbd-request.c) and the unit test
 * drive exactly the code the server runs.  Invariant: every read of client data is bounds-checked
 * against the length the caller passed in. */
#include "nbd/nbd.h"

#include <errno.h>
#include <string.h>

#include "common/checked.h"

static uint16_t get_be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static uint64_t get_be64(const uint8_t *p) { return (uint64_t)get_be32(p) << 32 | get_be32(p + 4); }

uint32_t nbd_errno_to_wire(int err)
{
	switch (err) {
	case 0: return 0;
	case -EPERM: case -EROFS: case -EACCES: return NBD_EPERM;
	case -ENOSPC: case -EDQUOT: case -EFBIG: return NBD_ENOSPC;
	case -EINVAL: return NBD_EINVAL;
	case -ENOMEM: return NBD_ENOMEM;
	case -EOVERFLOW: return NBD_EOVERFLOW;
	case -ESHUTDOWN: return NBD_ESHUTDOWN;
	default: return NBD_EIO;
	}
}

/* A protocol string: at most NBD_STRING_BYTES_MAX bytes, no NUL. */
static bool string_ok(const uint8_t *p, uint32_t len)
{
	return len <= NBD_STRING_BYTES_MAX && memchr(p, 0, len) == NULL;
}

/* Reads "u32 length + string" at *pos; 0 or NBD_REP_ERR_INVALID. */
static uint32_t take_string(const uint8_t *data, uint32_t len, uint32_t *pos, const char **s, uint32_t *slen)
{
	if (len - *pos < 4) return NBD_REP_ERR_INVALID;
	uint32_t n = get_be32(data + *pos);
	*pos += 4;
	if (n > len - *pos || !string_ok(data + *pos, n)) return NBD_REP_ERR_INVALID;
	*s = (const char *)(data + *pos);
	*slen = n;
	*pos += n;
	return 0;
}

uint32_t nbd_option_parse(uint32_t option, const uint8_t *data, uint32_t len, struct nbd_option_parsed *out)
{
	uint32_t pos = 0, rc;
	memset(out, 0, sizeof(*out));
	out->option = option;
	out->export_name = "";
	if (len && !data) return NBD_REP_ERR_INVALID;
	switch (option) {
	case NBD_OPT_EXPORT_NAME:
		/* The whole payload is the name. */
		if (!string_ok(data, len)) return NBD_REP_ERR_INVALID;
		if (len) out->export_name = (const char *)data;
		out->export_name_len = len;
		return 0;
	case NBD_OPT_ABORT:
	case NBD_OPT_LIST:
	case NBD_OPT_STRUCTURED_REPLY:
		return len == 0 ? 0 : NBD_REP_ERR_INVALID;
	case NBD_OPT_INFO:
	case NBD_OPT_GO:
		if ((rc = take_string(data, len, &pos, &out->export_name, &out->export_name_len))) return rc;
		if (len - pos < 2) return NBD_REP_ERR_INVALID;
		out->info_count = get_be16(data + pos);
		pos += 2;
		if ((uint64_t)out->info_count * 2 != len - pos) return NBD_REP_ERR_INVALID;
		out->info_requests = data + pos;
		return 0;
	case NBD_OPT_LIST_META_CONTEXT:
	case NBD_OPT_SET_META_CONTEXT: {
		if ((rc = take_string(data, len, &pos, &out->export_name, &out->export_name_len))) return rc;
		if (len - pos < 4) return NBD_REP_ERR_INVALID;
		uint32_t n = get_be32(data + pos);
		pos += 4;
		if (n > NBD_META_QUERIES_MAX) return NBD_REP_ERR_INVALID;
		for (uint32_t i = 0; i < n; i++)
			if ((rc = take_string(data, len, &pos, &out->queries[i], &out->query_lens[i]))) return rc;
		if (pos != len) return NBD_REP_ERR_INVALID;
		out->query_count = n;
		return 0;
	}
	default:
		return NBD_REP_ERR_UNSUP;
	}
}

enum nbd_verdict nbd_request_validate(const uint8_t raw[NBD_REQUEST_HEADER_BYTES], const struct nbd_session *s,
				      struct nbd_request *req, uint32_t *error_out)
{
	memset(req, 0, sizeof(*req));
	*error_out = 0;
	if (get_be32(raw) != NBD_MAGIC_REQUEST) return NBD_VERDICT_CLOSE;
	req->flags = get_be16(raw + 4);
	req->type = get_be16(raw + 6);
	req->handle = get_be64(raw + 8);
	req->offset_bytes = get_be64(raw + 16);
	req->length_bytes = get_be32(raw + 24);

	const uint16_t tf = s->transmission_flags;
	const bool ro = tf & NBD_FLAG_READ_ONLY;
	uint16_t allowed = (tf & NBD_FLAG_SEND_FUA) ? NBD_CMD_FLAG_FUA : 0;
	bool offered, writes = false, bounded = false;

	/* A WRITE's payload follows the header whatever we think of it: a length we will never
	 * read is a lie about the stream, not an error we can answer. */
	if (req->type == NBD_CMD_WRITE && req->length_bytes > NBD_REQUEST_BYTES_MAX) return NBD_VERDICT_CLOSE;

	switch (req->type) {
	case NBD_CMD_READ:
		offered = true;
		bounded = true;
		if (s->structured_replies && (tf & NBD_FLAG_SEND_DF)) allowed |= NBD_CMD_FLAG_DF;
		break;
	case NBD_CMD_WRITE:
		offered = true;
		writes = true;
		bounded = true;
		break;
	case NBD_CMD_DISC:
		offered = true;
		break;
	case NBD_CMD_FLUSH:
		offered = tf & NBD_FLAG_SEND_FLUSH;
		break;
	case NBD_CMD_TRIM:
		offered = tf & NBD_FLAG_SEND_TRIM;
		writes = true;
		break;
	case NBD_CMD_WRITE_ZEROES:
		offered = tf & NBD_FLAG_SEND_WRITE_ZEROES;
		writes = true;
		allowed |= NBD_CMD_FLAG_NO_HOLE;
		break;
	case NBD_CMD_BLOCK_STATUS:
		offered = s->structured_replies && s->meta_base_allocation;
		allowed |= NBD_CMD_FLAG_REQ_ONE;
		break;
	default:
		offered = false;
		break;
	}
	/* Writes to a read-only export are EPERM even though we do not offer TRIM/WRITE_ZEROES
	 * there: the protocol asks for EPERM on any write or trim to a read-only export. */
	if (writes && ro) {
		*error_out = NBD_EPERM;
		return NBD_VERDICT_ERROR;
	}
	if (!offered || (req->flags & ~allowed)) goto einval;
	if (req->type == NBD_CMD_DISC) return NBD_VERDICT_OK; /* offset/length are ignored: we close anyway */
	if (req->type == NBD_CMD_FLUSH) {
		if (req->offset_bytes || req->length_bytes) goto einval;
		return NBD_VERDICT_OK;
	}
	if (req->length_bytes == 0) goto einval;
	if (bounded && req->length_bytes > NBD_REQUEST_BYTES_MAX) goto einval;
	if (!ck_range_within(req->offset_bytes, req->length_bytes, s->size_bytes)) {
		*error_out = writes ? NBD_ENOSPC : NBD_EINVAL;
		return NBD_VERDICT_ERROR;
	}
	return NBD_VERDICT_OK;
einval:
	*error_out = NBD_EINVAL;
	return NBD_VERDICT_ERROR;
}
