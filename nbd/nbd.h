/* nbd: an NBD server exporting cow/ devices (containers read-write, images read-only).
 *
 * Protocol: the NBD protocol (NetworkBlockDevice/nbd doc/proto.md) with the fixed newstyle
 * handshake: NBD_OPT_EXPORT_NAME, ABORT, LIST, INFO, GO, STRUCTURED_REPLY, LIST_META_CONTEXT and
 * SET_META_CONTEXT (the one context "base:allocation"); in transmission READ, WRITE, DISC, FLUSH,
 * TRIM, WRITE_ZEROES (+NO_HOLE), BLOCK_STATUS, with FUA, structured replies (OFFSET_DATA,
 * OFFSET_HOLE, BLOCK_STATUS, ERROR) and CAN_MULTI_CONN: all connections to one export share one
 * cow device, so a flush or FUA on any connection covers writes completed on every connection.
 *
 * Server model: one thread per connection, each with its own cow_queue; a connection reads
 * requests while earlier ones are in flight (at most NBD_INFLIGHT_MAX requests and about
 * NBD_INFLIGHT_BYTES_MAX bytes of buffers), and sends the replies of the requests completed in
 * one round of its loop together.
 * Only that thread writes to its socket, so replies never interleave.  One slow or hostile
 * client only ever blocks its own thread.
 *
 * The pure parsers below (nbd_option_parse, nbd_request_validate) are the only code that
 * interprets bytes from a client; the fuzz target tests/fuzz/fuzz-nbd-request.c calls them.
 * Returns 0 or -errno everywhere unless said otherwise. */
#ifndef OCIBLK_NBD_H
#define OCIBLK_NBD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/limits.h"
#include "layer-store/layer_store.h"

/* ---------------------------------------------------------------- wire constants ---------- */

#define NBD_MAGIC_INIT 0x4e42444d41474943ull          /* "NBDMAGIC" */
#define NBD_MAGIC_OPTS 0x49484156454f5054ull          /* "IHAVEOPT" */
#define NBD_MAGIC_OPT_REPLY 0x3e889045565a9ull
#define NBD_MAGIC_REQUEST 0x25609513u
#define NBD_MAGIC_SIMPLE_REPLY 0x67446698u
#define NBD_MAGIC_STRUCTURED_REPLY 0x668e33efu

#define NBD_FLAG_FIXED_NEWSTYLE 1u                    /* handshake flags (server) */
#define NBD_FLAG_NO_ZEROES 2u
#define NBD_FLAG_C_FIXED_NEWSTYLE 1u                  /* client flags */
#define NBD_FLAG_C_NO_ZEROES 2u

/* Transmission flags. */
#define NBD_FLAG_HAS_FLAGS (1u << 0)
#define NBD_FLAG_READ_ONLY (1u << 1)
#define NBD_FLAG_SEND_FLUSH (1u << 2)
#define NBD_FLAG_SEND_FUA (1u << 3)
#define NBD_FLAG_ROTATIONAL (1u << 4)
#define NBD_FLAG_SEND_TRIM (1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1u << 6)
#define NBD_FLAG_SEND_DF (1u << 7)
#define NBD_FLAG_CAN_MULTI_CONN (1u << 8)

enum nbd_option {
	NBD_OPT_EXPORT_NAME = 1,
	NBD_OPT_ABORT = 2,
	NBD_OPT_LIST = 3,
	NBD_OPT_STARTTLS = 5,
	NBD_OPT_INFO = 6,
	NBD_OPT_GO = 7,
	NBD_OPT_STRUCTURED_REPLY = 8,
	NBD_OPT_LIST_META_CONTEXT = 9,
	NBD_OPT_SET_META_CONTEXT = 10,
	NBD_OPT_EXTENDED_HEADERS = 11,
};

#define NBD_REP_ACK 1u
#define NBD_REP_SERVER 2u
#define NBD_REP_INFO 3u
#define NBD_REP_META_CONTEXT 4u
#define NBD_REP_ERR_UNSUP (0x80000000u + 1)
#define NBD_REP_ERR_POLICY (0x80000000u + 2)
#define NBD_REP_ERR_INVALID (0x80000000u + 3)
#define NBD_REP_ERR_PLATFORM (0x80000000u + 4)
#define NBD_REP_ERR_TLS_REQD (0x80000000u + 5)
#define NBD_REP_ERR_UNKNOWN (0x80000000u + 6)
#define NBD_REP_ERR_SHUTDOWN (0x80000000u + 7)
#define NBD_REP_ERR_BLOCK_SIZE_REQD (0x80000000u + 8)
#define NBD_REP_ERR_TOO_BIG (0x80000000u + 9)

#define NBD_INFO_EXPORT 0u
#define NBD_INFO_NAME 1u
#define NBD_INFO_DESCRIPTION 2u
#define NBD_INFO_BLOCK_SIZE 3u

enum nbd_cmd {
	NBD_CMD_READ = 0,
	NBD_CMD_WRITE = 1,
	NBD_CMD_DISC = 2,
	NBD_CMD_FLUSH = 3,
	NBD_CMD_TRIM = 4,
	NBD_CMD_CACHE = 5,
	NBD_CMD_WRITE_ZEROES = 6,
	NBD_CMD_BLOCK_STATUS = 7,
};

#define NBD_CMD_FLAG_FUA (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE (1u << 1)
#define NBD_CMD_FLAG_DF (1u << 2)
#define NBD_CMD_FLAG_REQ_ONE (1u << 3)
#define NBD_CMD_FLAG_FAST_ZERO (1u << 4)

#define NBD_REPLY_FLAG_DONE 1u
#define NBD_REPLY_TYPE_NONE 0u
#define NBD_REPLY_TYPE_OFFSET_DATA 1u
#define NBD_REPLY_TYPE_OFFSET_HOLE 2u
#define NBD_REPLY_TYPE_BLOCK_STATUS 5u
#define NBD_REPLY_TYPE_ERROR (0x8000u + 1)
#define NBD_REPLY_TYPE_ERROR_OFFSET (0x8000u + 2)

/* base:allocation flags. */
#define NBD_STATE_HOLE 1u
#define NBD_STATE_ZERO 2u

/* The error values the protocol allows (they equal Linux errno values, but are protocol values). */
#define NBD_EPERM 1u
#define NBD_EIO 5u
#define NBD_ENOMEM 12u
#define NBD_EINVAL 22u
#define NBD_ENOSPC 28u
#define NBD_EOVERFLOW 75u
#define NBD_ENOTSUP 95u
#define NBD_ESHUTDOWN 108u

#define NBD_REQUEST_HEADER_BYTES 28u
#define NBD_OPTION_HEADER_BYTES 16u
/* The one metadata context we serve, and the id we give it. */
#define NBD_META_BASE_ALLOCATION "base:allocation"
#define NBD_META_BASE_ALLOCATION_ID 1u

/* ---------------------------------------------------------------- pure protocol functions -- */

/* A cow/ (negative errno) result as an NBD error value: EROFS/EPERM/EACCES -> EPERM,
 * ENOSPC/EDQUOT/EFBIG -> ENOSPC, EINVAL, ENOMEM, EOVERFLOW, ESHUTDOWN as themselves, anything
 * else -> EIO.  0 maps to 0. */
uint32_t nbd_errno_to_wire(int err);

/* An option's payload, parsed.  Pointers point into the caller's buffer. */
struct nbd_option_parsed {
	uint32_t option;                 /* enum nbd_option or anything the client sent */
	const char *export_name;         /* EXPORT_NAME, INFO, GO, LIST/SET_META_CONTEXT */
	uint32_t export_name_len;
	uint16_t info_count;             /* INFO, GO: requested NBD_INFO_* items */
	const uint8_t *info_requests;    /* info_count big-endian u16s */
	uint32_t query_count;            /* LIST/SET_META_CONTEXT */
	const char *queries[NBD_META_QUERIES_MAX];
	uint32_t query_lens[NBD_META_QUERIES_MAX];
};

/* Parses the payload of one option (data, len bytes, as it came off the socket, after the
 * 16-byte option header).  Returns 0, or an NBD_REP_ERR_* value to send back: ERR_UNSUP for an
 * option this server does not know (STARTTLS, EXTENDED_HEADERS, ...), ERR_INVALID for a
 * payload that does not match its option's layout (lengths that overrun, trailing bytes, names
 * longer than the protocol's 4096-byte string limit, NUL bytes in strings, more than
 * NBD_META_QUERIES_MAX queries).  Never reads outside [data, data+len). */
uint32_t nbd_option_parse(uint32_t option, const uint8_t *data, uint32_t len, struct nbd_option_parsed *out);

/* What a connection negotiated, as far as request validation needs it. */
struct nbd_session {
	uint64_t size_bytes;         /* export size */
	uint16_t transmission_flags; /* what we told the client (NBD_FLAG_*) */
	bool structured_replies;
	bool meta_base_allocation;   /* base:allocation selected for this export */
};

struct nbd_request {
	uint16_t flags;      /* NBD_CMD_FLAG_* */
	uint16_t type;       /* enum nbd_cmd */
	uint64_t handle;
	uint64_t offset_bytes;
	uint32_t length_bytes;
};

/* The verdict on one request header. */
enum nbd_verdict {
	NBD_VERDICT_OK = 0,       /* execute it */
	NBD_VERDICT_ERROR = 1,    /* reply with *error_out; a WRITE's payload must still be read and dropped */
	NBD_VERDICT_CLOSE = 2,    /* the stream cannot be trusted (bad magic, a WRITE longer than
	                           * NBD_REQUEST_BYTES_MAX): hard disconnect */
};

/* Decodes and validates one 28-byte request header against the session.  Checks, in order:
 * magic; type known and offered; command flags allowed for the type and offered; read-only
 * export (EPERM for WRITE/TRIM/WRITE_ZEROES); length (READ/WRITE at most NBD_REQUEST_BYTES_MAX,
 * zero lengths EINVAL, FLUSH/DISC with nonzero offset or length EINVAL); range (beyond the end:
 * ENOSPC for writes, EINVAL otherwise); BLOCK_STATUS needs base:allocation.  *req is filled
 * whenever the magic is right (so an error reply can name the handle).  Unaligned offsets and
 * lengths are valid: the server handles them. Pure. */
enum nbd_verdict nbd_request_validate(const uint8_t raw[NBD_REQUEST_HEADER_BYTES], const struct nbd_session *s,
				      struct nbd_request *req, uint32_t *error_out);

/* ---------------------------------------------------------------- server ----------------- */

struct nbd_server; /* opaque */

struct nbd_server_options {
	/* "unix:PATH" or "tcp:HOST:PORT" (HOST may be empty for loopback, "[v6]" for IPv6).  A stale
	 * unix socket file is replaced; the file is removed when the server is freed. */
	const char *listen;
	/* When export_count > 0 only these records are exported (and the empty export name "" means
	 * the first of them); otherwise every container (read-write) and every image (read-only). */
	const char *const *exports;
	unsigned export_count;
};

/* Binds the listening socket.  The store stays owned by the caller and must outlive the server. */
int nbd_server_create(struct layer_store *store, const struct nbd_server_options *opts, struct nbd_server **out);
/* The bound address as "unix:PATH" or "tcp:HOST:PORT" (the real port when 0 was asked for). */
const char *nbd_server_address(const struct nbd_server *srv);
/* Accepts and serves connections until nbd_server_stop; then stops accepting, lets every
 * connection finish the requests it has in flight (their replies are sent), closes the
 * connections, and returns 0. */
int nbd_server_run(struct nbd_server *srv);
/* Asks nbd_server_run to return.  Async-signal-safe (a SIGTERM handler calls it). */
void nbd_server_stop(struct nbd_server *srv);
/* Flushes and closes every device, closes the socket; returns the first error of those. */
int nbd_server_free(struct nbd_server *srv);

#endif
