/* The NBD server: listening socket, export table, and one thread per connection.
 *
 * Invariants:
 *   - One struct nbd_export (and one cow_device) per export name, opened at the first connection
 *     that selects it and kept open until nbd_server_free; all its connections share it, which is
 *     what makes CAN_MULTI_CONN true (a flush is a flush of the device, not of a connection).
 *   - A connection is served by one thread owning its socket, its cow_queue and its request
 *     slots.  Completions run on that thread (cow_queue_poll), so replies are written by one
 *     thread only and never interleave; no socket lock is needed.
 *   - Client bytes are interpreted only by nbd_option_parse and nbd_request_validate (proto.c).
 *   - A request is replied to only after cow/ reported its completion, so a FLUSH (submitted
 *     after its header arrived) covers every write we replied to before, as the protocol asks.
 *   - Input is read without blocking and only while a slot is free and fewer than
 *     NBD_INFLIGHT_BYTES_MAX buffer bytes are in flight: a flood waits in the socket.  One recv
 *     takes in up to NBD_RECV_BUFFER_BYTES (many pipelined requests); bytes received but not
 *     yet acted on stay in rbuf until a slot frees; the rest of a big WRITE payload goes straight
 *     into its slot's buffer.
 *   - Replies are gathered during one round of the connection loop (completions reaped, input
 *     acted on) and sent together with one sendmsg before the thread sleeps; a READ's data is
 *     sent from its slot's buffer, so such a slot is released only after that send.  Nothing in
 *     the loop allocates: slot buffers are kept (up to NBD_KEPT_BUFFER_BYTES_MAX) and reused.
 *   - Unaligned (not 512-byte) requests are done synchronously, read-modify-write under the
 *     export's rmw_lock; we advertise a 512-byte minimum block size, so clients rarely send them. */
#include "nbd/nbd.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "common/checked.h"
#include "common/limits.h"
#include "common/log.h"
#include "cow/cow.h"

#define SECTOR 512u
/* Aligned TRIM/WRITE_ZEROES are issued to cow/ in pieces of at most this (block aligned). */
#define RANGE_PIECE_BYTES (COW_REQUEST_BYTES_MAX & ~(uint64_t)(COW_BLOCK_SIZE - 1))
/* Slot buffers up to this size are kept for reuse; bigger ones are freed after the request. */
#define SLOT_BUF_KEEP_BYTES (256u << 10)
/* Reads at least this long are scanned for all-zero blocks sent as OFFSET_HOLE chunks. */
#define HOLE_SCAN_MIN_BYTES (64u << 10)
#define HOLE_CHUNKS_MAX 64u

struct nbd_export {
	struct nbd_export *next;
	char name[OCIBLK_NAME_MAX + 1];
	bool container;
	struct cow_device *dev;
	pthread_mutex_t rmw_lock;
};

struct nbd_conn;

struct nbd_slot {
	struct cow_request req;    /* first: the completion callback gets it back */
	struct nbd_conn *conn;
	struct nbd_request nreq;
	struct iovec iov;
	uint8_t *buf;
	size_t buf_cap;
	uint64_t accounted_bytes;
	uint64_t next_offset, end_offset;  /* TRIM / WRITE_ZEROES issued in pieces */
	bool flush_after;                  /* TRIM with FUA: a flush follows the discard */
	bool busy;
	bool out_ref;                      /* the send queue points into buf: released after the send */
	struct nbd_slot *next;             /* free list or pending (resubmit) list */
};

struct nbd_conn {
	struct nbd_server *srv;
	struct nbd_conn *next;
	int fd;
	pthread_t thread;
	bool finished;                     /* under srv->lock: the thread has returned */
	unsigned id;

	/* handshake */
	bool no_zeroes, structured, meta_base;
	char meta_export[OCIBLK_NAME_MAX + 1];
	bool meta_export_valid;
	struct nbd_export *exp;
	struct nbd_session sess;

	/* transmission */
	struct cow_queue *q;
	struct nbd_slot *slots, *free_slots, *pending;
	unsigned inflight;
	uint64_t inflight_bytes;
	uint64_t buf_bytes;                /* payload buffer bytes held by all slots */
	uint8_t *rbuf;                     /* received bytes [rpos, rlen) not yet consumed */
	uint32_t rpos, rlen;
	uint8_t *obuf;                     /* replies of this round: bytes copied here ... */
	uint32_t olen;
	struct iovec oiov[NBD_SEND_IOVECS_MAX]; /* ... and the iovecs to send, into obuf or slot buffers */
	unsigned oiov_n;
	struct nbd_slot *held;             /* slots with out_ref, released by conn_out_flush */
	struct nbd_slot *in_slot;          /* WRITE whose payload is being read */
	uint32_t payload_got;
	uint32_t discard_left;             /* payload of a rejected WRITE being dropped */
	struct nbd_request discard_req;
	uint32_t discard_error;
	bool broken;                       /* socket unusable or protocol violated: stop now */
	bool disc;                         /* no more input (DISC, EOF, shutdown): drain then close */
};

struct nbd_server {
	struct layer_store *store;
	char **limit;
	unsigned limit_count;
	int listen_fd, stop_fd, reap_fd;
	char address[OCIBLK_PATH_MAX + 32];
	char unix_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	pthread_mutex_t lock;              /* exports, conns, and every call into the store */
	struct nbd_export *exports;
	struct nbd_conn *conns;
	unsigned conn_count, next_conn_id;
};

/* ---------------------------------------------------------------- byte helpers ------------- */

static void put_be16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v; }
static void put_be32(uint8_t *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }
static void put_be64(uint8_t *p, uint64_t v) { put_be32(p, v >> 32); put_be32(p + 4, (uint32_t)v); }
static uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static uint64_t get_be64(const uint8_t *p) { return (uint64_t)get_be32(p) << 32 | get_be32(p + 4); }

static bool all_zero(const uint8_t *p, size_t n)
{
	return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

/* ---------------------------------------------------------------- socket I/O --------------- */

/* Sends everything or marks the connection broken (SO_SNDTIMEO bounds a client that never reads). */
static int conn_sendv(struct nbd_conn *c, struct iovec *iov, int n)
{
	if (c->broken) return -EPIPE;
	while (n > 0) {
		struct msghdr m = { .msg_iov = iov, .msg_iovlen = n };
		ssize_t w = sendmsg(c->fd, &m, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR) continue;
			log_debug("nbd conn %u: send: %s", c->id, strerror(errno));
			c->broken = true;
			return -errno;
		}
		while (n > 0 && (size_t)w >= iov->iov_len) {
			w -= iov->iov_len;
			iov++;
			n--;
		}
		if (n > 0) {
			iov->iov_base = (uint8_t *)iov->iov_base + w;
			iov->iov_len -= w;
		}
	}
	return 0;
}

static int conn_send(struct nbd_conn *c, const void *p, size_t len)
{
	struct iovec iov = { (void *)p, len };
	return conn_sendv(c, &iov, 1);
}

/* Handshake read: blocks until len bytes came, the client closed, the handshake deadline passed,
 * or the server is stopping.  0 or -errno. */
static int hs_read(struct nbd_conn *c, void *buf, size_t len, time_t deadline)
{
	size_t got = 0;
	while (got < len) {
		time_t now = time(NULL);
		if (now >= deadline) return -ETIMEDOUT;
		struct pollfd p[2] = { { c->fd, POLLIN, 0 }, { c->srv->stop_fd, POLLIN, 0 } };
		int r = poll(p, 2, (int)(deadline - now) * 1000);
		if (r < 0 && errno == EINTR) continue;
		if (r < 0) return -errno;
		if (p[1].revents & POLLIN) return -ESHUTDOWN;
		if (!p[0].revents) continue;
		ssize_t n = recv(c->fd, (uint8_t *)buf + got, len - got, MSG_DONTWAIT);
		if (n == 0) return -ECONNRESET;
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR) continue;
			return -errno;
		}
		got += n;
	}
	return 0;
}

/* ---------------------------------------------------------------- exports ------------------ */

struct name_probe {
	const char *name;
	bool found;
};

static int probe_fn(const char *name, void *opaque)
{
	struct name_probe *p = opaque;
	if (!strcmp(name, p->name)) {
		p->found = true;
		return 1;
	}
	return 0;
}

/* 1 container, 2 image, 0 neither (caller holds srv->lock).  Probing by listing keeps a
 * client's unknown name from logging errors in the store. */
static int store_kind(struct nbd_server *srv, const char *name)
{
	struct name_probe p = { name, false };
	if (layer_store_container_foreach(srv->store, probe_fn, &p) >= 0 && p.found) return 1;
	p.found = false;
	if (layer_store_image_foreach(srv->store, probe_fn, &p) >= 0 && p.found) return 2;
	return 0;
}

static bool name_allowed(const struct nbd_server *srv, const char *name)
{
	if (srv->limit_count == 0) return true;
	for (unsigned i = 0; i < srv->limit_count; i++)
		if (!strcmp(srv->limit[i], name)) return true;
	return false;
}

/* The export a client asked for by name (len bytes, not NUL-terminated), opening its device at
 * the first use.  -ENOENT when it is not exported; errors of cow_device_open_* otherwise. */
static int server_export_get(struct nbd_server *srv, const char *name_in, uint32_t len, struct nbd_export **out)
{
	char name[OCIBLK_NAME_MAX + 1];
	if (len > OCIBLK_NAME_MAX) return -ENOENT;
	memcpy(name, name_in, len);
	name[len] = 0;
	if (len == 0) {
		if (srv->limit_count == 0) return -ENOENT;
		snprintf(name, sizeof(name), "%s", srv->limit[0]);
	}
	if (!name_allowed(srv, name)) return -ENOENT;

	int rc = 0;
	pthread_mutex_lock(&srv->lock);
	struct nbd_export *e;
	for (e = srv->exports; e; e = e->next)
		if (!strcmp(e->name, name)) break;
	if (!e) {
		int kind = store_kind(srv, name);
		if (!kind) {
			rc = -ENOENT;
			goto out;
		}
		struct cow_device *dev = NULL;
		rc = kind == 1 ? cow_device_open_container(srv->store, name, &dev)
			       : cow_device_open_image(srv->store, name, &dev);
		if (rc < 0) goto out;
		e = calloc(1, sizeof(*e));
		if (!e) {
			cow_device_close(dev);
			rc = -ENOMEM;
			goto out;
		}
		snprintf(e->name, sizeof(e->name), "%s", name);
		e->container = kind == 1;
		e->dev = dev;
		pthread_mutex_init(&e->rmw_lock, NULL);
		e->next = srv->exports;
		srv->exports = e;
		log_info("nbd: export %s opened (%s, %llu bytes)", name, e->container ? "container, read-write" : "image, read-only",
			 (unsigned long long)cow_device_size_bytes(dev));
	}
	*out = e;
out:
	pthread_mutex_unlock(&srv->lock);
	return rc;
}

/* NBD_OPT_LIST: names are collected under the lock, sent after it (a slow client must not hold
 * the server lock). */
struct name_list {
	struct nbd_server *srv;
	char **names;
	size_t count, cap;
	bool containers_pass;
	int rc;
};

static int list_fn(const char *name, void *opaque)
{
	struct name_list *l = opaque;
	if (!name_allowed(l->srv, name) || strlen(name) > NBD_STRING_BYTES_MAX) return 0;
	if (!l->containers_pass) {
		/* a container of the same name hides the image */
		struct name_probe p = { name, false };
		if (layer_store_container_foreach(l->srv->store, probe_fn, &p) >= 0 && p.found) return 0;
	}
	if (l->count == l->cap) {
		size_t cap = l->cap ? 2 * l->cap : 16;
		char **n = realloc(l->names, cap * sizeof(*n));
		if (!n) return l->rc = -ENOMEM;
		l->names = n;
		l->cap = cap;
	}
	if (!(l->names[l->count] = strdup(name))) return l->rc = -ENOMEM;
	l->count++;
	return 0;
}

/* ---------------------------------------------------------------- handshake ---------------- */

static int opt_reply(struct nbd_conn *c, uint32_t option, uint32_t type, const void *data, uint32_t len)
{
	uint8_t h[20];
	put_be64(h, NBD_MAGIC_OPT_REPLY);
	put_be32(h + 8, option);
	put_be32(h + 12, type);
	put_be32(h + 16, len);
	struct iovec iov[2] = { { h, sizeof(h) }, { (void *)data, len } };
	return conn_sendv(c, iov, len ? 2 : 1);
}

static int opt_error(struct nbd_conn *c, uint32_t option, uint32_t type, const char *msg)
{
	return opt_reply(c, option, type, msg, (uint32_t)strlen(msg));
}

static uint16_t export_tflags(const struct nbd_conn *c, const struct nbd_export *e)
{
	uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_CAN_MULTI_CONN;
	if (cow_device_is_readonly(e->dev)) f |= NBD_FLAG_READ_ONLY;
	else f |= NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES;
	if (c->structured) f |= NBD_FLAG_SEND_DF;
	return f;
}

static void conn_select_export(struct nbd_conn *c, struct nbd_export *e)
{
	c->exp = e;
	c->sess.size_bytes = cow_device_size_bytes(e->dev);
	c->sess.transmission_flags = export_tflags(c, e);
	c->sess.structured_replies = c->structured;
	/* Contexts selected for another name do not apply (the protocol says so). */
	c->sess.meta_base_allocation = c->meta_base && c->meta_export_valid && !strcmp(c->meta_export, e->name);
}

/* INFO and GO.  Returns 1 when GO succeeded (enter transmission), 0 to continue, <0 on error. */
static int handle_info_go(struct nbd_conn *c, const struct nbd_option_parsed *o)
{
	struct nbd_export *e;
	int rc = server_export_get(c->srv, o->export_name, o->export_name_len, &e);
	if (rc < 0) {
		char msg[128 + OCIBLK_NAME_MAX];
		snprintf(msg, sizeof(msg), "export %.*s: %s", (int)(o->export_name_len > OCIBLK_NAME_MAX ? OCIBLK_NAME_MAX : o->export_name_len),
			 o->export_name, rc == -ENOENT ? "not exported by this server" : strerror(-rc));
		return opt_error(c, o->option, rc == -ENOENT ? NBD_REP_ERR_UNKNOWN : NBD_REP_ERR_POLICY, msg);
	}
	uint16_t tflags = export_tflags(c, e);
	uint8_t b[12 + NBD_STRING_BYTES_MAX];
	put_be16(b, NBD_INFO_EXPORT);
	put_be64(b + 2, cow_device_size_bytes(e->dev));
	put_be16(b + 10, tflags);
	if ((rc = opt_reply(c, o->option, NBD_REP_INFO, b, 12)) < 0) return rc;
	put_be16(b, NBD_INFO_BLOCK_SIZE);
	put_be32(b + 2, SECTOR);
	put_be32(b + 6, COW_BLOCK_SIZE);
	put_be32(b + 10, NBD_REQUEST_BYTES_MAX);
	if ((rc = opt_reply(c, o->option, NBD_REP_INFO, b, 14)) < 0) return rc;
	for (uint16_t i = 0; i < o->info_count; i++) {
		uint16_t what = (uint16_t)(o->info_requests[2 * i] << 8 | o->info_requests[2 * i + 1]);
		const char *s = NULL;
		if (what == NBD_INFO_NAME) s = e->name;
		else if (what == NBD_INFO_DESCRIPTION) s = e->container ? "ociblk container (read-write)" : "ociblk image (read-only)";
		else continue;
		size_t n = strlen(s);
		put_be16(b, (uint16_t)what);
		memcpy(b + 2, s, n);
		if ((rc = opt_reply(c, o->option, NBD_REP_INFO, b, (uint32_t)(2 + n))) < 0) return rc;
	}
	if ((rc = opt_reply(c, o->option, NBD_REP_ACK, NULL, 0)) < 0) return rc;
	if (o->option != NBD_OPT_GO) return 0;
	conn_select_export(c, e);
	return 1;
}

static bool query_matches(const char *q, uint32_t len, bool list)
{
	static const char ctx[] = NBD_META_BASE_ALLOCATION;
	if (len == sizeof(ctx) - 1 && !memcmp(q, ctx, len)) return true;
	/* LIST may ask for a whole namespace. */
	return list && len == 5 && !memcmp(q, "base:", 5);
}

static int handle_meta(struct nbd_conn *c, const struct nbd_option_parsed *o)
{
	const bool list = o->option == NBD_OPT_LIST_META_CONTEXT;
	if (!c->structured) return opt_error(c, o->option, NBD_REP_ERR_INVALID, "structured replies not negotiated");
	struct nbd_export *e;
	int rc = server_export_get(c->srv, o->export_name, o->export_name_len, &e);
	if (rc < 0) return opt_error(c, o->option, NBD_REP_ERR_UNKNOWN, "no such export");
	bool match = list && o->query_count == 0;
	for (uint32_t i = 0; i < o->query_count; i++)
		if (query_matches(o->queries[i], o->query_lens[i], list)) match = true;
	if (!list) {
		c->meta_base = match;
		snprintf(c->meta_export, sizeof(c->meta_export), "%s", e->name);
		c->meta_export_valid = true;
	}
	if (match) {
		uint8_t b[4 + sizeof(NBD_META_BASE_ALLOCATION)];
		put_be32(b, list ? 0 : NBD_META_BASE_ALLOCATION_ID);
		memcpy(b + 4, NBD_META_BASE_ALLOCATION, sizeof(NBD_META_BASE_ALLOCATION) - 1);
		if ((rc = opt_reply(c, o->option, NBD_REP_META_CONTEXT, b, sizeof(b) - 1)) < 0) return rc;
	}
	return opt_reply(c, o->option, NBD_REP_ACK, NULL, 0);
}

/* Returns 1 to enter transmission, 0 to close quietly, <0 on error (connection closed). */
static int conn_handshake(struct nbd_conn *c)
{
	time_t deadline = time(NULL) + NBD_HANDSHAKE_TIMEOUT_SECONDS;
	uint8_t b[18];
	put_be64(b, NBD_MAGIC_INIT);
	put_be64(b + 8, NBD_MAGIC_OPTS);
	put_be16(b + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
	int rc = conn_send(c, b, 18);
	if (rc < 0) return rc;
	if ((rc = hs_read(c, b, 4, deadline)) < 0) return rc;
	uint32_t cflags = get_be32(b);
	if (cflags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
		log_debug("nbd conn %u: unknown client flags %#x", c->id, cflags);
		return -EPROTO;
	}
	c->no_zeroes = cflags & NBD_FLAG_C_NO_ZEROES;

	uint8_t *data = malloc(NBD_OPTION_BYTES_MAX);
	if (!data) return -ENOMEM;
	rc = -EPROTO;
	for (unsigned n = 0; n < NBD_OPTIONS_MAX; n++) {
		uint8_t h[NBD_OPTION_HEADER_BYTES];
		if ((rc = hs_read(c, h, sizeof(h), deadline)) < 0) break;
		uint32_t option = get_be32(h + 8), len = get_be32(h + 12);
		if (get_be64(h) != NBD_MAGIC_OPTS || len > NBD_OPTION_BYTES_MAX) {
			log_debug("nbd conn %u: bad option header (option %u, %u bytes)", c->id, option, len);
			rc = -EPROTO;
			break;
		}
		if (len && (rc = hs_read(c, data, len, deadline)) < 0) break;
		struct nbd_option_parsed o;
		uint32_t perr = nbd_option_parse(option, data, len, &o);
		if (option == NBD_OPT_EXPORT_NAME) {
			/* No error reply exists for this option: failure closes the connection. */
			struct nbd_export *e;
			if (perr || server_export_get(c->srv, o.export_name, o.export_name_len, &e) < 0) {
				rc = -ENOENT;
				break;
			}
			conn_select_export(c, e);
			uint8_t r[10 + 124] = { 0 };
			put_be64(r, c->sess.size_bytes);
			put_be16(r + 8, c->sess.transmission_flags);
			rc = conn_send(c, r, c->no_zeroes ? 10 : sizeof(r));
			if (rc == 0) rc = 1;
			break;
		}
		if (perr) {
			rc = opt_error(c, option, perr, perr == NBD_REP_ERR_UNSUP ? "option not supported" : "malformed option");
			if (rc < 0) break;
			continue;
		}
		if (option == NBD_OPT_ABORT) {
			opt_reply(c, option, NBD_REP_ACK, NULL, 0);
			rc = 0;
			break;
		}
		switch (option) {
		case NBD_OPT_LIST: {
			struct name_list l = { .srv = c->srv, .containers_pass = true };
			pthread_mutex_lock(&c->srv->lock);
			layer_store_container_foreach(c->srv->store, list_fn, &l);
			l.containers_pass = false;
			if (l.rc == 0) layer_store_image_foreach(c->srv->store, list_fn, &l);
			pthread_mutex_unlock(&c->srv->lock);
			rc = 0;
			for (size_t i = 0; i < l.count; i++) {
				size_t nl = strlen(l.names[i]);
				uint8_t b4[4];
				put_be32(b4, (uint32_t)nl);
				uint8_t rh[20];
				put_be64(rh, NBD_MAGIC_OPT_REPLY);
				put_be32(rh + 8, option);
				put_be32(rh + 12, NBD_REP_SERVER);
				put_be32(rh + 16, (uint32_t)(4 + nl));
				struct iovec iov[3] = { { rh, 20 }, { b4, 4 }, { l.names[i], nl } };
				if (rc == 0) rc = conn_sendv(c, iov, 3);
				free(l.names[i]);
			}
			free(l.names);
			if (rc == 0) rc = l.rc < 0 ? opt_error(c, option, NBD_REP_ERR_UNKNOWN, "listing failed")
					       : opt_reply(c, option, NBD_REP_ACK, NULL, 0);
			break;
		}
		case NBD_OPT_STRUCTURED_REPLY:
			if (c->structured) {
				rc = opt_error(c, option, NBD_REP_ERR_INVALID, "structured replies already negotiated");
			} else {
				c->structured = true;
				rc = opt_reply(c, option, NBD_REP_ACK, NULL, 0);
			}
			break;
		case NBD_OPT_INFO:
		case NBD_OPT_GO:
			rc = handle_info_go(c, &o);
			break;
		case NBD_OPT_LIST_META_CONTEXT:
		case NBD_OPT_SET_META_CONTEXT:
			rc = handle_meta(c, &o);
			break;
		default:
			rc = opt_error(c, option, NBD_REP_ERR_UNSUP, "option not supported");
			break;
		}
		if (rc != 0) break;
		rc = -EPROTO; /* in case the option budget runs out */
	}
	free(data);
	return rc;
}

/* ---------------------------------------------------------------- replies ------------------ */

static void slot_put(struct nbd_conn *c, struct nbd_slot *s);

/* Replies are gathered during one round of the connection loop and sent by conn_out_flush with
 * one sendmsg: headers and small payloads are copied into obuf, a READ's data is pointed at in
 * its slot's buffer (the slot is then released only after the send). */
static void conn_out_flush(struct nbd_conn *c)
{
	if (c->oiov_n) conn_sendv(c, c->oiov, (int)c->oiov_n); /* marks c->broken on failure */
	c->oiov_n = 0;
	c->olen = 0;
	while (c->held) {
		struct nbd_slot *s = c->held;
		c->held = s->next;
		s->out_ref = false;
		slot_put(c, s);
	}
}

/* Appends len bytes to the round's replies: copied when owner is NULL, else pointed at (owner's
 * buffer stays put until the send). */
static void conn_out(struct nbd_conn *c, const void *p, uint32_t len, struct nbd_slot *owner)
{
	if (!len) return;
	if (c->oiov_n == NBD_SEND_IOVECS_MAX || (!owner && c->olen + len > NBD_SEND_BUFFER_BYTES)) conn_out_flush(c);
	if (owner) {
		owner->out_ref = true;
		c->oiov[c->oiov_n++] = (struct iovec){ (void *)p, len };
		return;
	}
	/* every copied piece is at most a header, an error message or a block status reply */
	assert(len <= NBD_SEND_BUFFER_BYTES);
	uint8_t *dst = c->obuf + c->olen;
	memcpy(dst, p, len);
	c->olen += len;
	struct iovec *last = c->oiov_n ? &c->oiov[c->oiov_n - 1] : NULL;
	if (last && (uint8_t *)last->iov_base + last->iov_len == dst) last->iov_len += len;
	else c->oiov[c->oiov_n++] = (struct iovec){ dst, len };
}

static void reply_simple(struct nbd_conn *c, uint64_t handle, uint32_t error, const void *data, uint32_t len,
			 struct nbd_slot *owner)
{
	uint8_t h[16];
	put_be32(h, NBD_MAGIC_SIMPLE_REPLY);
	put_be32(h + 4, error);
	put_be64(h + 8, handle);
	conn_out(c, h, 16, NULL);
	conn_out(c, data, len, owner);
}

/* One structured chunk: header, a small fixed part, then optional data (in owner's buffer, or
 * copied when owner is NULL). */
static void reply_chunk(struct nbd_conn *c, uint64_t handle, uint16_t flags, uint16_t type, const void *fixed,
			uint32_t fixed_len, const void *data, uint32_t len, struct nbd_slot *owner)
{
	uint8_t h[20];
	put_be32(h, NBD_MAGIC_STRUCTURED_REPLY);
	put_be16(h + 4, flags);
	put_be16(h + 6, type);
	put_be64(h + 8, handle);
	put_be32(h + 16, fixed_len + len);
	conn_out(c, h, 20, NULL);
	conn_out(c, fixed, fixed_len, NULL);
	conn_out(c, data, len, owner);
}

static void reply_error(struct nbd_conn *c, const struct nbd_request *r, uint32_t error)
{
	if (!c->structured) {
		reply_simple(c, r->handle, error, NULL, 0, NULL);
		return;
	}
	const char *msg = strerror((int)error);
	size_t n = strlen(msg);
	if (n > 200) n = 200;
	uint8_t p[6];
	put_be32(p, error);
	put_be16(p + 4, (uint16_t)n);
	reply_chunk(c, r->handle, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, p, 6, msg, (uint32_t)n, NULL);
}

static void reply_ok(struct nbd_conn *c, const struct nbd_request *r)
{
	reply_simple(c, r->handle, 0, NULL, 0, NULL);
}

/* A successful READ of s's range, whose data is in s->buf (sent from there: the caller's
 * slot_put releases s only after the send). */
static void reply_read(struct nbd_conn *c, struct nbd_slot *s)
{
	const struct nbd_request *r = &s->nreq;
	const uint8_t *buf = s->buf;
	const uint32_t len = r->length_bytes;
	if (!c->structured) {
		reply_simple(c, r->handle, 0, buf, len, s);
		return;
	}
	if (!(r->flags & NBD_CMD_FLAG_DF) && len >= HOLE_SCAN_MIN_BYTES) {
		/* Runs of all-zero 4 KiB blocks (device-aligned) become OFFSET_HOLE chunks. */
		struct { uint32_t start, len; bool hole; } run[HOLE_CHUNKS_MAX];
		unsigned n = 0;
		bool any_hole = false;
		uint32_t pos = 0;
		while (pos < len) {
			uint64_t abs = r->offset_bytes + pos;
			uint32_t step = COW_BLOCK_SIZE - (uint32_t)(abs % COW_BLOCK_SIZE);
			if (step > len - pos) step = len - pos;
			bool hole = step == COW_BLOCK_SIZE && all_zero(buf + pos, step);
			if (n && run[n - 1].hole == hole) {
				run[n - 1].len += step;
			} else {
				if (n == HOLE_CHUNKS_MAX) break;
				run[n].start = pos;
				run[n].len = step;
				run[n].hole = hole;
				n++;
			}
			any_hole |= hole;
			pos += step;
		}
		if (pos == len && any_hole) {
			for (unsigned i = 0; i < n; i++) {
				uint16_t fl = i + 1 == n ? NBD_REPLY_FLAG_DONE : 0;
				uint8_t p[12];
				put_be64(p, r->offset_bytes + run[i].start);
				if (run[i].hole) {
					put_be32(p + 8, run[i].len);
					reply_chunk(c, r->handle, fl, NBD_REPLY_TYPE_OFFSET_HOLE, p, 12, NULL, 0, NULL);
				} else {
					reply_chunk(c, r->handle, fl, NBD_REPLY_TYPE_OFFSET_DATA, p, 8, buf + run[i].start, run[i].len, s);
				}
			}
			return;
		}
	}
	uint8_t p[8];
	put_be64(p, r->offset_bytes);
	reply_chunk(c, r->handle, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, p, 8, buf, len, s);
}

/* ---------------------------------------------------------------- requests ----------------- */

static void slot_buffer_free(struct nbd_conn *c, struct nbd_slot *s)
{
	c->buf_bytes -= s->buf_cap;
	free(s->buf);
	s->buf = NULL;
	s->buf_cap = 0;
}

static int slot_buffer(struct nbd_conn *c, struct nbd_slot *s, size_t len)
{
	if (s->buf_cap < len) {
		slot_buffer_free(c, s);
		size_t cap = len < SECTOR ? SECTOR : len;
		if (posix_memalign((void **)&s->buf, COW_BLOCK_SIZE, cap)) return -ENOMEM;
		s->buf_cap = cap;
		c->buf_bytes += cap;
	}
	s->accounted_bytes = len;
	c->inflight_bytes += len;
	return 0;
}

static struct nbd_slot *slot_get(struct nbd_conn *c)
{
	struct nbd_slot *s = c->free_slots;
	c->free_slots = s->next;
	s->next = NULL;
	s->busy = true;
	s->flush_after = false;
	s->accounted_bytes = 0;
	c->inflight++;
	return s;
}

/* Releases s, or (when the send queue points into its buffer) holds it until conn_out_flush. */
static void slot_put(struct nbd_conn *c, struct nbd_slot *s)
{
	if (s->out_ref) {
		s->next = c->held;
		c->held = s;
		return;
	}
	c->inflight_bytes -= s->accounted_bytes;
	s->accounted_bytes = 0;
	/* big buffers are kept for the next request while all buffers stay under a budget (a
	 * stream of 1 MiB requests then allocates nothing) */
	if (s->buf_cap > SLOT_BUF_KEEP_BYTES && c->buf_bytes > NBD_KEPT_BUFFER_BYTES_MAX) slot_buffer_free(c, s);
	s->busy = false;
	s->next = c->free_slots;
	c->free_slots = s;
	c->inflight--;
}

static void slot_complete(struct cow_request *req, int result);

/* Submits the slot's cow request as currently set up; on failure replies at once. */
static void slot_submit(struct nbd_conn *c, struct nbd_slot *s)
{
	s->req.complete = slot_complete;
	s->req.opaque = s;
	int rc = cow_queue_submit(c->q, &s->req);
	if (rc == -EAGAIN) {
		/* queue full (cannot happen with depth == slots, but be safe): retry after a poll */
		s->next = c->pending;
		c->pending = s;
		return;
	}
	if (rc < 0) {
		reply_error(c, &s->nreq, nbd_errno_to_wire(rc));
		slot_put(c, s);
	}
}

/* Sets up the next piece of a TRIM / WRITE_ZEROES, or the flush after a FUA TRIM. */
static void slot_next_piece(struct nbd_slot *s)
{
	uint64_t start = s->next_offset, end = s->end_offset;
	uint64_t piece_end = end;
	if (end - start > RANGE_PIECE_BYTES) piece_end = (start + RANGE_PIECE_BYTES) & ~(uint64_t)(COW_BLOCK_SIZE - 1);
	if (piece_end <= start) piece_end = start + RANGE_PIECE_BYTES;
	memset(&s->req, 0, sizeof(s->req));
	s->req.op = s->nreq.type == NBD_CMD_TRIM ? COW_OP_DISCARD : COW_OP_WRITE_ZEROES;
	if (s->nreq.type == NBD_CMD_WRITE_ZEROES) {
		if (s->nreq.flags & NBD_CMD_FLAG_FUA) s->req.flags |= COW_FUA;
		if (s->nreq.flags & NBD_CMD_FLAG_NO_HOLE) s->req.flags |= COW_NO_HOLE;
	}
	s->req.offset_bytes = start;
	s->req.length_bytes = piece_end - start;
	s->next_offset = piece_end;
}

static void slot_complete(struct cow_request *req, int result)
{
	struct nbd_slot *s = req->opaque;
	struct nbd_conn *c = s->conn;
	if (result < 0) {
		reply_error(c, &s->nreq, nbd_errno_to_wire(result));
		slot_put(c, s);
		return;
	}
	if ((s->nreq.type == NBD_CMD_TRIM || s->nreq.type == NBD_CMD_WRITE_ZEROES) && req->op != COW_OP_FLUSH) {
		if (s->next_offset < s->end_offset) {
			slot_next_piece(s);
		} else if (s->flush_after) {
			memset(&s->req, 0, sizeof(s->req));
			s->req.op = COW_OP_FLUSH;
		} else {
			goto done;
		}
		/* Submitting from inside cow_queue_poll is not promised to be safe: queue it. */
		s->next = c->pending;
		c->pending = s;
		return;
	}
done:
	if (s->nreq.type == NBD_CMD_READ) reply_read(c, s);
	else reply_ok(c, &s->nreq);
	slot_put(c, s);
}

static void conn_submit_pending(struct nbd_conn *c)
{
	struct nbd_slot *list = c->pending;
	c->pending = NULL;
	while (list) {
		struct nbd_slot *s = list;
		list = s->next;
		s->next = NULL;
		slot_submit(c, s);
	}
}

/* cow_device_read/write/write_zeroes over a range of any size, in pieces cow/ accepts. */
static int dev_read_all(struct cow_device *dev, uint64_t off, uint8_t *buf, uint64_t len)
{
	for (uint64_t done = 0; done < len;) {
		uint64_t n = len - done > RANGE_PIECE_BYTES ? RANGE_PIECE_BYTES : len - done;
		int rc = cow_device_read(dev, off + done, buf + done, n);
		if (rc < 0) return rc;
		done += n;
	}
	return 0;
}

static int dev_write_all(struct cow_device *dev, uint64_t off, const uint8_t *buf, uint64_t len, unsigned flags)
{
	for (uint64_t done = 0; done < len;) {
		uint64_t n = len - done > RANGE_PIECE_BYTES ? RANGE_PIECE_BYTES : len - done;
		int rc = cow_device_write(dev, off + done, buf + done, n, flags);
		if (rc < 0) return rc;
		done += n;
	}
	return 0;
}

/* An unaligned READ, WRITE or WRITE_ZEROES, done synchronously on the 512-byte-aligned cover of
 * its range.  Writes hold the export's rmw_lock so two unaligned writes into one sector do not
 * lose each other's bytes. */
static int do_unaligned(struct nbd_conn *c, struct nbd_slot *s)
{
	const struct nbd_request *r = &s->nreq;
	struct cow_device *dev = c->exp->dev;
	uint64_t a_off = r->offset_bytes & ~(uint64_t)(SECTOR - 1);
	uint64_t a_end = (r->offset_bytes + r->length_bytes + SECTOR - 1) & ~(uint64_t)(SECTOR - 1);
	uint64_t skip = r->offset_bytes - a_off, a_len = a_end - a_off;
	unsigned flags = (r->flags & NBD_CMD_FLAG_FUA) ? COW_FUA : 0;
	int rc;
	uint8_t *tmp = NULL;
	if (posix_memalign((void **)&tmp, COW_BLOCK_SIZE, a_len)) return -ENOMEM;
	if (r->type == NBD_CMD_READ) {
		rc = dev_read_all(dev, a_off, tmp, a_len);
		if (rc == 0) memcpy(s->buf, tmp + skip, r->length_bytes);
		free(tmp);
		return rc;
	}
	pthread_mutex_lock(&c->exp->rmw_lock);
	rc = cow_device_read(dev, a_off, tmp, SECTOR);
	if (rc == 0 && a_len > SECTOR) rc = cow_device_read(dev, a_end - SECTOR, tmp + a_len - SECTOR, SECTOR);
	if (rc == 0) {
		if (r->type == NBD_CMD_WRITE) memcpy(tmp + skip, s->buf, r->length_bytes);
		else memset(tmp + skip, 0, r->length_bytes);
		rc = dev_write_all(dev, a_off, tmp, a_len, flags);
	}
	pthread_mutex_unlock(&c->exp->rmw_lock);
	free(tmp);
	return rc;
}

static void do_block_status(struct nbd_conn *c, const struct nbd_request *r)
{
	struct cow_device *dev = c->exp->dev;
	const unsigned max_desc = (r->flags & NBD_CMD_FLAG_REQ_ONE) ? 1 : NBD_BLOCK_STATUS_EXTENTS_MAX;
	static __thread uint8_t out[4 + 8 * NBD_BLOCK_STATUS_EXTENTS_MAX];
	uint64_t pos = r->offset_bytes, end = r->offset_bytes + r->length_bytes;
	uint64_t end_block = DIV_ROUND_UP(end, COW_BLOCK_SIZE);
	unsigned n = 0;
	uint32_t last_len = 0, last_flags = 0;
	put_be32(out, NBD_META_BASE_ALLOCATION_ID);
	for (unsigned iter = 0; pos < end && iter < 8 * NBD_BLOCK_STATUS_EXTENTS_MAX; iter++) {
		uint64_t block = pos / COW_BLOCK_SIZE, run = 0;
		enum cow_block_state st;
		int rc = cow_device_block_status(dev, block, end_block - block, &st, &run);
		if (rc < 0) {
			reply_error(c, r, nbd_errno_to_wire(rc));
			return;
		}
		if (run < 1) run = 1;
		uint64_t run_end = (block + run) * COW_BLOCK_SIZE;
		if (run_end > end) run_end = end;
		uint32_t flags = st == COW_BLOCK_ZERO ? (NBD_STATE_HOLE | NBD_STATE_ZERO) : 0;
		uint32_t add = (uint32_t)(run_end - pos);
		if (n && flags == last_flags) {
			last_len += add;
		} else {
			if (n == max_desc) break;
			if (n) {
				put_be32(out + 4 + 8 * (n - 1), last_len);
				put_be32(out + 8 + 8 * (n - 1), last_flags);
			}
			n++;
			last_len = add;
			last_flags = flags;
		}
		pos = run_end;
	}
	put_be32(out + 4 + 8 * (n - 1), last_len);
	put_be32(out + 8 + 8 * (n - 1), last_flags);
	reply_chunk(c, r->handle, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, out, 4 + 8 * n, NULL, 0, NULL);
}

static bool aligned(const struct nbd_request *r)
{
	return r->offset_bytes % SECTOR == 0 && r->length_bytes % SECTOR == 0;
}

/* A validated request whose payload (if any) is in s->buf: run it. */
static void slot_execute(struct nbd_conn *c, struct nbd_slot *s)
{
	const struct nbd_request *r = &s->nreq;
	memset(&s->req, 0, sizeof(s->req));
	switch (r->type) {
	case NBD_CMD_READ:
	case NBD_CMD_WRITE:
		if (!aligned(r)) {
			int rc = do_unaligned(c, s);
			if (rc < 0) reply_error(c, r, nbd_errno_to_wire(rc));
			else if (r->type == NBD_CMD_READ) reply_read(c, s);
			else reply_ok(c, r);
			slot_put(c, s);
			return;
		}
		s->req.op = r->type == NBD_CMD_READ ? COW_OP_READ : COW_OP_WRITE;
		if (r->type == NBD_CMD_WRITE && (r->flags & NBD_CMD_FLAG_FUA)) s->req.flags = COW_FUA;
		s->req.offset_bytes = r->offset_bytes;
		s->req.length_bytes = r->length_bytes;
		s->iov.iov_base = s->buf;
		s->iov.iov_len = r->length_bytes;
		s->req.iov = &s->iov;
		s->req.iov_count = 1;
		slot_submit(c, s);
		return;
	case NBD_CMD_FLUSH:
		s->req.op = COW_OP_FLUSH;
		slot_submit(c, s);
		return;
	case NBD_CMD_TRIM: {
		/* TRIM is advisory: discard the 512-byte-aligned interior. */
		uint64_t a = (r->offset_bytes + SECTOR - 1) & ~(uint64_t)(SECTOR - 1);
		uint64_t b = (r->offset_bytes + r->length_bytes) & ~(uint64_t)(SECTOR - 1);
		s->flush_after = r->flags & NBD_CMD_FLAG_FUA;
		if (b <= a) {
			if (s->flush_after) {
				s->req.op = COW_OP_FLUSH;
				slot_submit(c, s);
				return;
			}
			reply_ok(c, r);
			slot_put(c, s);
			return;
		}
		s->next_offset = a;
		s->end_offset = b;
		slot_next_piece(s);
		slot_submit(c, s);
		return;
	}
	case NBD_CMD_WRITE_ZEROES:
		if (!aligned(r)) {
			int rc = do_unaligned(c, s);
			if (rc < 0) reply_error(c, r, nbd_errno_to_wire(rc));
			else reply_ok(c, r);
			slot_put(c, s);
			return;
		}
		s->next_offset = r->offset_bytes;
		s->end_offset = r->offset_bytes + r->length_bytes;
		slot_next_piece(s);
		slot_submit(c, s);
		return;
	case NBD_CMD_BLOCK_STATUS:
		do_block_status(c, r);
		slot_put(c, s);
		return;
	default:
		reply_error(c, r, NBD_EINVAL);
		slot_put(c, s);
		return;
	}
}

/* No more input (DISC, EOF, shutdown): a request whose payload was still arriving is dropped
 * (it was never acknowledged, so nothing is lost that was promised), and so are received bytes
 * not yet acted on. */
static void conn_stop_input(struct nbd_conn *c)
{
	c->disc = true;
	if (c->in_slot) {
		slot_put(c, c->in_slot);
		c->in_slot = NULL;
	}
	c->discard_left = 0;
	c->rpos = c->rlen = 0;
}

/* A full request header arrived at hdr. */
static void conn_header(struct nbd_conn *c, const uint8_t *hdr)
{
	struct nbd_request r;
	uint32_t err;
	enum nbd_verdict v = nbd_request_validate(hdr, &c->sess, &r, &err);
	if (v == NBD_VERDICT_CLOSE) {
		log_warn("nbd conn %u: protocol violation (bad magic or oversized write): closing", c->id);
		c->broken = true;
		return;
	}
	if (v == NBD_VERDICT_ERROR) {
		if (r.type == NBD_CMD_WRITE && r.length_bytes) {
			c->discard_left = r.length_bytes;
			c->discard_req = r;
			c->discard_error = err;
		} else {
			reply_error(c, &r, err);
		}
		return;
	}
	if (r.type == NBD_CMD_DISC) {
		conn_stop_input(c);
		return;
	}
	struct nbd_slot *s = slot_get(c);
	s->nreq = r;
	if (r.type == NBD_CMD_READ || r.type == NBD_CMD_WRITE) {
		if (slot_buffer(c, s, r.length_bytes) < 0) {
			if (r.type == NBD_CMD_WRITE) {
				c->discard_left = r.length_bytes;
				c->discard_req = r;
				c->discard_error = NBD_ENOMEM;
			} else {
				reply_error(c, &r, NBD_ENOMEM);
			}
			slot_put(c, s);
			return;
		}
	}
	if (r.type == NBD_CMD_WRITE) {
		c->in_slot = s;
		c->payload_got = 0;
		return;
	}
	slot_execute(c, s);
}

/* true while the next input can be acted on: a payload is arriving, or a new request fits (a
 * slot is free and buffers in flight are under their budget). */
static bool conn_input_wanted(const struct nbd_conn *c)
{
	return !c->disc && !c->broken &&
	       (c->in_slot || c->discard_left || (c->free_slots && c->inflight_bytes < NBD_INFLIGHT_BYTES_MAX));
}

/* A WRITE payload got its last byte. */
static void conn_payload_done(struct nbd_conn *c)
{
	struct nbd_slot *s = c->in_slot;
	c->in_slot = NULL;
	slot_execute(c, s);
}

/* Acts on the received bytes in rbuf as far as they and the free slots go. */
static void conn_consume(struct nbd_conn *c)
{
	while (conn_input_wanted(c)) {
		uint32_t avail = c->rlen - c->rpos;
		const uint8_t *p = c->rbuf + c->rpos;
		if (c->discard_left) {
			uint32_t k = avail < c->discard_left ? avail : c->discard_left;
			if (!k) return;
			c->rpos += k;
			c->discard_left -= k;
			if (!c->discard_left) reply_error(c, &c->discard_req, c->discard_error);
		} else if (c->in_slot) {
			uint32_t want = c->in_slot->nreq.length_bytes - c->payload_got;
			uint32_t k = avail < want ? avail : want;
			if (!k && want) return;
			memcpy(c->in_slot->buf + c->payload_got, p, k);
			c->rpos += k;
			c->payload_got += k;
			if (c->payload_got == c->in_slot->nreq.length_bytes) conn_payload_done(c);
		} else {
			if (avail < NBD_REQUEST_HEADER_BYTES) return;
			c->rpos += NBD_REQUEST_HEADER_BYTES;
			conn_header(c, p);
		}
	}
}

/* Reads what the socket has (without blocking) and acts on complete requests.  Bytes are
 * received in big batches into rbuf (many small requests per recv); the rest of a big WRITE
 * payload is received straight into its slot's buffer. */
static void conn_read_input(struct nbd_conn *c)
{
	for (unsigned iter = 0; iter < 64; iter++) {
		conn_consume(c);
		if (!conn_input_wanted(c)) return;
		ssize_t n;
		if (c->in_slot && c->rpos == c->rlen &&
		    c->in_slot->nreq.length_bytes - c->payload_got >= NBD_RECV_DIRECT_MIN_BYTES) {
			struct nbd_slot *s = c->in_slot;
			n = recv(c->fd, s->buf + c->payload_got, s->nreq.length_bytes - c->payload_got, MSG_DONTWAIT);
			if (n > 0) {
				c->payload_got += (uint32_t)n;
				if (c->payload_got == s->nreq.length_bytes) conn_payload_done(c);
				continue;
			}
		} else {
			/* keep the unconsumed tail (a partial header or payload) at the start */
			if (c->rpos) {
				memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
				c->rlen -= c->rpos;
				c->rpos = 0;
			}
			n = recv(c->fd, c->rbuf + c->rlen, NBD_RECV_BUFFER_BYTES - c->rlen, MSG_DONTWAIT);
			if (n > 0) {
				c->rlen += (uint32_t)n;
				continue;
			}
		}
		if (n == 0) {
			conn_stop_input(c); /* client closed: whatever it half-sent is dropped */
			return;
		}
		if (errno == EINTR) continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK) c->broken = true;
		return;
	}
}

static void conn_transmission(struct nbd_conn *c)
{
	int rc = cow_queue_create(c->exp->dev, NBD_INFLIGHT_MAX, &c->q);
	if (rc < 0) {
		log_error(rc, "nbd conn %u: create queue: %s", c->id, strerror(-rc));
		return;
	}
	c->slots = calloc(NBD_INFLIGHT_MAX, sizeof(*c->slots));
	c->rbuf = malloc(NBD_RECV_BUFFER_BYTES);
	c->obuf = malloc(NBD_SEND_BUFFER_BYTES);
	if (!c->slots || !c->rbuf || !c->obuf) {
		log_error(-ENOMEM, "nbd conn %u: allocate connection buffers", c->id);
		c->broken = true;
		goto out;
	}
	for (unsigned i = NBD_INFLIGHT_MAX; i-- > 0;) {
		c->slots[i].conn = c;
		c->slots[i].next = c->free_slots;
		c->free_slots = &c->slots[i];
	}
	const int efd = cow_queue_event_fd(c->q);
	if (efd < 0) {
		log_error(efd, "nbd conn %u: queue has no event fd", c->id);
		c->broken = true;
	}
	bool stopping = false;
	/* One round: start follow-up pieces, reap completions, act on buffered input, send the
	 * round's replies together, then sleep until the socket, the queue or a stop wakes us. */
	while (!c->broken) {
		conn_submit_pending(c);
		rc = cow_queue_poll(c->q, 0);
		if (rc < 0) {
			log_error(rc, "nbd conn %u: poll queue: %s", c->id, strerror(-rc));
			c->broken = true;
			break;
		}
		conn_consume(c);
		conn_out_flush(c);
		if (c->broken) break;
		if (c->pending) continue; /* callbacks queued follow-up pieces */
		if (c->disc && c->inflight == 0) break;
		/* held slots came free in the flush: buffered requests may go on now */
		if (conn_input_wanted(c) && c->rlen - c->rpos >= NBD_REQUEST_HEADER_BYTES && !c->in_slot && !c->discard_left)
			continue;
		bool want_in = conn_input_wanted(c);
		struct pollfd p[3] = {
			{ c->fd, want_in ? POLLIN : 0, 0 },
			{ efd, POLLIN, 0 },
			{ c->srv->stop_fd, stopping ? 0 : POLLIN, 0 },
		};
		if (poll(p, 3, -1) < 0) {
			if (errno == EINTR) continue;
			c->broken = true;
			break;
		}
		if (p[2].revents & POLLIN) {
			/* Shutdown: take no new requests, finish those in flight, then close. */
			stopping = true;
			conn_stop_input(c);
		}
		/* efd is reset by cow_queue_poll at the top of the loop */
		if (p[0].revents & POLLERR) c->broken = true;
		else if (p[0].revents & POLLIN) conn_read_input(c);
		else if (p[0].revents & POLLHUP) conn_stop_input(c);
	}
	/* Broken or done: let what is in flight finish (a broken socket gets no more replies and
	 * follow-up pieces are not submitted). */
	while (cow_queue_in_flight(c->q) > 0) {
		if (cow_queue_poll(c->q, 1) < 0) break;
		conn_out_flush(c);
	}
out:
	conn_out_flush(c);
	cow_queue_destroy(c->q);
	c->q = NULL;
	if (c->slots)
		for (unsigned i = 0; i < NBD_INFLIGHT_MAX; i++) free(c->slots[i].buf);
	free(c->slots);
	c->slots = NULL;
	free(c->rbuf);
	c->rbuf = NULL;
	free(c->obuf);
	c->obuf = NULL;
}

static void *conn_thread(void *arg)
{
	struct nbd_conn *c = arg;
	log_debug("nbd conn %u: open", c->id);
	int rc = conn_handshake(c);
	if (rc == 1) {
		log_debug("nbd conn %u: export %s", c->id, c->exp->name);
		conn_transmission(c);
	} else if (rc < 0) {
		log_debug("nbd conn %u: handshake ended: %s", c->id, strerror(-rc));
	}
	shutdown(c->fd, SHUT_RDWR);
	close(c->fd);
	c->fd = -1;
	log_debug("nbd conn %u: closed", c->id);
	pthread_mutex_lock(&c->srv->lock);
	c->finished = true;
	pthread_mutex_unlock(&c->srv->lock);
	uint64_t one = 1;
	if (write(c->srv->reap_fd, &one, sizeof(one)) < 0) { /* the reaper also runs at shutdown */ }
	return NULL;
}

/* ---------------------------------------------------------------- listener ---------------- */

static int listen_unix(struct nbd_server *srv, const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path))
		return log_error(-ENAMETOOLONG, "nbd listen %s: path too long for a unix socket", path);
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) return log_error(-errno, "nbd listen %s: socket: %s", path, strerror(errno));
	struct stat st;
	if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
		/* A stale socket of a dead server is replaced; a live one is not. */
		int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		int live = probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0;
		if (probe >= 0) close(probe);
		if (live) {
			close(fd);
			return log_error(-EADDRINUSE, "nbd listen %s: another server is listening there", path);
		}
		unlink(path);
	}
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 64) < 0) {
		int e = -errno;
		close(fd);
		return log_error(e, "nbd listen %s: %s", path, strerror(-e));
	}
	snprintf(srv->unix_path, sizeof(srv->unix_path), "%s", path);
	snprintf(srv->address, sizeof(srv->address), "unix:%s", path);
	srv->listen_fd = fd;
	return 0;
}

static int listen_tcp(struct nbd_server *srv, const char *hostport)
{
	char host[256];
	const char *colon = strrchr(hostport, ':');
	if (!colon) return log_error(-EINVAL, "nbd listen tcp:%s: expected HOST:PORT", hostport);
	size_t hl = colon - hostport;
	if (hl >= sizeof(host)) return log_error(-EINVAL, "nbd listen tcp:%s: host too long", hostport);
	memcpy(host, hostport, hl);
	host[hl] = 0;
	if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
		memmove(host, host + 1, hl - 2);
		host[hl - 2] = 0;
	}
	const char *port = colon + 1;
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV }, *ai;
	/* An empty host means loopback: exporting a disk to the network must be asked for. */
	int g = getaddrinfo(host[0] ? host : "127.0.0.1", port, &hints, &ai);
	if (g) return log_error(-EINVAL, "nbd listen tcp:%s: %s", hostport, gai_strerror(g));
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int e = 0;
	if (fd < 0) {
		e = -errno;
	} else {
		int one = 1;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 64) < 0) e = -errno;
	}
	freeaddrinfo(ai);
	if (e) {
		if (fd >= 0) close(fd);
		return log_error(e, "nbd listen tcp:%s: %s", hostport, strerror(-e));
	}
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char h[INET6_ADDRSTRLEN] = "?", pbuf[16] = "?";
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
		getnameinfo((struct sockaddr *)&ss, sl, h, sizeof(h), pbuf, sizeof(pbuf), NI_NUMERICHOST | NI_NUMERICSERV);
	snprintf(srv->address, sizeof(srv->address), strchr(h, ':') ? "tcp:[%s]:%s" : "tcp:%s:%s", h, pbuf);
	srv->listen_fd = fd;
	return 0;
}

int nbd_server_create(struct layer_store *store, const struct nbd_server_options *opts, struct nbd_server **out)
{
	struct nbd_server *srv = calloc(1, sizeof(*srv));
	if (!srv) return log_error(-ENOMEM, "nbd server: out of memory");
	srv->store = store;
	srv->listen_fd = -1;
	pthread_mutex_init(&srv->lock, NULL);
	srv->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	srv->reap_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	int rc = 0;
	if (srv->stop_fd < 0 || srv->reap_fd < 0) {
		rc = log_error(-errno, "nbd server: eventfd: %s", strerror(errno));
		goto fail;
	}
	if (opts->export_count) {
		srv->limit = calloc(opts->export_count, sizeof(char *));
		if (!srv->limit) {
			rc = log_error(-ENOMEM, "nbd server: out of memory");
			goto fail;
		}
		for (unsigned i = 0; i < opts->export_count; i++) {
			if ((rc = layer_store_name_validate("export", opts->exports[i])) < 0) goto fail;
			if (!(srv->limit[i] = strdup(opts->exports[i]))) {
				rc = log_error(-ENOMEM, "nbd server: out of memory");
				goto fail;
			}
			srv->limit_count = i + 1;
		}
	}
	if (!opts->listen) {
		rc = log_error(-EINVAL, "nbd server: no listen address");
	} else if (!strncmp(opts->listen, "unix:", 5)) {
		rc = listen_unix(srv, opts->listen + 5);
	} else if (!strncmp(opts->listen, "tcp:", 4)) {
		rc = listen_tcp(srv, opts->listen + 4);
	} else {
		rc = log_error(-EINVAL, "nbd listen %s: expected unix:PATH or tcp:HOST:PORT", opts->listen);
	}
	if (rc < 0) goto fail;
	*out = srv;
	return 0;
fail:
	nbd_server_free(srv);
	return rc;
}

const char *nbd_server_address(const struct nbd_server *srv)
{
	return srv->address;
}

void nbd_server_stop(struct nbd_server *srv)
{
	uint64_t one = 1;
	ssize_t w = write(srv->stop_fd, &one, sizeof(one)); /* async-signal-safe */
	(void)w;
}

/* Joins finished connection threads; with all, waits for every one. */
static void reap_connections(struct nbd_server *srv, bool all)
{
	for (;;) {
		struct nbd_conn *victim = NULL;
		pthread_mutex_lock(&srv->lock);
		for (struct nbd_conn **pp = &srv->conns; *pp; pp = &(*pp)->next) {
			if (all || (*pp)->finished) {
				victim = *pp;
				*pp = victim->next;
				srv->conn_count--;
				break;
			}
		}
		pthread_mutex_unlock(&srv->lock);
		if (!victim) return;
		pthread_join(victim->thread, NULL);
		free(victim);
	}
}

static void accept_one(struct nbd_server *srv)
{
	int fd = accept4(srv->listen_fd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0) {
		if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
			log_warn("nbd accept: %s", strerror(errno));
			if (errno == EMFILE || errno == ENFILE || errno == ENOMEM) poll(NULL, 0, 100);
		}
		return;
	}
	pthread_mutex_lock(&srv->lock);
	bool full = srv->conn_count >= NBD_CONNECTIONS_MAX;
	pthread_mutex_unlock(&srv->lock);
	if (full) {
		log_warn("nbd accept: %u connections already, refusing one", NBD_CONNECTIONS_MAX);
		close(fd);
		return;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)); /* fails harmlessly on unix sockets */
	struct timeval tv = { .tv_sec = NBD_SEND_TIMEOUT_SECONDS };
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	struct nbd_conn *c = calloc(1, sizeof(*c));
	if (!c) {
		close(fd);
		return;
	}
	c->srv = srv;
	c->fd = fd;
	pthread_mutex_lock(&srv->lock);
	c->id = ++srv->next_conn_id;
	if (pthread_create(&c->thread, NULL, conn_thread, c) != 0) {
		pthread_mutex_unlock(&srv->lock);
		log_warn("nbd accept: cannot start a thread");
		close(fd);
		free(c);
		return;
	}
	c->next = srv->conns;
	srv->conns = c;
	srv->conn_count++;
	pthread_mutex_unlock(&srv->lock);
}

int nbd_server_run(struct nbd_server *srv)
{
	for (;;) {
		struct pollfd p[3] = {
			{ srv->listen_fd, POLLIN, 0 },
			{ srv->stop_fd, POLLIN, 0 },
			{ srv->reap_fd, POLLIN, 0 },
		};
		if (poll(p, 3, -1) < 0) {
			if (errno == EINTR) continue;
			return log_error(-errno, "nbd server: poll: %s", strerror(errno));
		}
		if (p[1].revents & POLLIN) break;
		if (p[2].revents & POLLIN) {
			uint64_t v;
			if (read(srv->reap_fd, &v, sizeof(v)) < 0) { /* EAGAIN: another wakeup took it */ }
			reap_connections(srv, false);
		}
		if (p[0].revents & POLLIN) accept_one(srv);
	}
	/* Stop accepting; connections see stop_fd too, finish what is in flight and close. */
	close(srv->listen_fd);
	srv->listen_fd = -1;
	if (srv->unix_path[0]) {
		unlink(srv->unix_path);
		srv->unix_path[0] = 0;
	}
	reap_connections(srv, true);
	return 0;
}

int nbd_server_free(struct nbd_server *srv)
{
	if (!srv) return 0;
	int first = 0;
	reap_connections(srv, true);
	if (srv->listen_fd >= 0) close(srv->listen_fd);
	if (srv->unix_path[0]) unlink(srv->unix_path);
	while (srv->exports) {
		struct nbd_export *e = srv->exports;
		srv->exports = e->next;
		int rc = cow_device_close(e->dev);
		if (rc < 0 && !first) first = log_error(rc, "nbd: close export %s: %s", e->name, strerror(-rc));
		pthread_mutex_destroy(&e->rmw_lock);
		free(e);
	}
	for (unsigned i = 0; i < srv->limit_count; i++) free(srv->limit[i]);
	free(srv->limit);
	if (srv->stop_fd >= 0) close(srv->stop_fd);
	if (srv->reap_fd >= 0) close(srv->reap_fd);
	pthread_mutex_destroy(&srv->lock);
	free(srv);
	return first;
}
