/* Wire protocol between sim clients (blkback/xenif_sim.c) and the sim daemon
 * (blkback/xensim_server.c).  Private to blkback/.
 *
 * One SOCK_SEQPACKET message per request/reply/event: a struct xsim_hdr then len payload bytes;
 * file descriptors travel as SCM_RIGHTS.  Strings in payloads are NUL-terminated and
 * concatenated.  The daemon validates every message (it is the sim's trust boundary). */
#ifndef OCIBLK_BLKBACK_XENSIM_PROTO_H
#define OCIBLK_BLKBACK_XENSIM_PROTO_H

#include <stdint.h>

enum xsim_op {
	XSIM_HELLO = 1,        /* u32 domid */
	XSIM_XS_READ,          /* path */
	XSIM_XS_WRITE,         /* path, then raw value to the end */
	XSIM_XS_MKDIR,         /* path */
	XSIM_XS_RM,            /* path */
	XSIM_XS_DIR,           /* path -> names */
	XSIM_XS_SETPERMS,      /* path, perm strings */
	XSIM_XS_WATCH,         /* path, token */
	XSIM_XS_UNWATCH,       /* path, token */
	XSIM_XS_TX_START,      /* -> u32 tx */
	XSIM_XS_TX_END,        /* u32 commit(1)/abort(0); hdr.tx names it */
	XSIM_GUEST_CREATE,     /* fd: memfd; u32 npages, u32 ngrants */
	XSIM_GUEST_MEM,        /* u32 domid -> fd + u32 npages, u32 ngrants */
	XSIM_EVT_ALLOC,        /* fds: rx of allocator, rx of binder; u32 remote domid -> u32 port */
	XSIM_EVT_BIND,         /* u32 domid, u32 port -> fds (allocator rx, binder rx) + u32 local port */
	XSIM_EVT_CLOSE,        /* u32 port (allocator side) */
	XSIM_SHUTDOWN,
	XSIM_REPLY = 100,      /* hdr.err = 0 or -errno */
	XSIM_EVENT = 101,      /* path, token */
};

struct xsim_hdr {
	uint32_t op;
	uint32_t tx;
	int32_t err;
	uint32_t len;
};

/* Largest message: a xenstore value (4096) plus path and header, with room. */
#define XSIM_MSG_MAX (16u << 10)

/* Guest memory memfd layout: one header page, the grant table, then the guest's pages. */
#define XSIM_GUEST_MAGIC 0x4f43494253494d47ull /* "OCIBSIMG" */
struct xsim_guest_header {
	uint64_t magic;
	uint32_t npages;
	uint32_t ngrants;
};
/* Grant entry v1, as Xen's grant_entry_v1_t. */
struct xsim_grant_entry {
	uint16_t flags;
	uint16_t domid;
	uint32_t frame;
};
#define XSIM_GTF_permit_access 1u
#define XSIM_GTF_readonly (1u << 2)

static inline uint64_t xsim_grant_table_pages(uint32_t ngrants)
{
	return ((uint64_t)ngrants * sizeof(struct xsim_grant_entry) + 4095) / 4096;
}
static inline uint64_t xsim_guest_page_offset(uint32_t ngrants, uint32_t page)
{
	return (1 + xsim_grant_table_pages(ngrants) + (uint64_t)page) * 4096;
}
static inline uint64_t xsim_guest_bytes(uint32_t npages, uint32_t ngrants)
{
	return xsim_guest_page_offset(ngrants, npages);
}

/* Bounds the sim enforces. */
#define XSIM_GUEST_PAGES_MAX (1u << 18)   /* 1 GiB of guest memory */
#define XSIM_GUEST_GRANTS_MAX (1u << 16)
#define XSIM_PATH_MAX 3072u               /* XENSTORE_ABS_PATH_MAX */
#define XSIM_VALUE_MAX 4096u              /* XENSTORE_PAYLOAD_MAX */
#define XSIM_DOMU_NODES_MAX 1000u         /* xenstored's default per-domain quota */
#define XSIM_NODES_MAX 100000u
#define XSIM_WATCHES_MAX 128u             /* per connection */
#define XSIM_PERMS_MAX 16u
#define XSIM_FDS_MAX 4u                   /* file descriptors in one message */

/* Framing (xensim_proto.c), for both sides.  xsim_send: one message with payload p1 then p2 and
 * nfds fds as SCM_RIGHTS; 0 or -errno (-E2BIG past XSIM_MSG_MAX or XSIM_FDS_MAX).  xsim_take_fds:
 * the fds a received message carried, into fds; past XSIM_FDS_MAX they are closed; returns how
 * many were kept. */
struct msghdr;
int xsim_send(int fd, uint32_t op, uint32_t tx, int32_t err, const void *p1, uint32_t l1, const void *p2,
	      uint32_t l2, const int *fds, unsigned nfds);
int xsim_take_fds(struct msghdr *m, int fds[XSIM_FDS_MAX]);

#endif
