/* xenif: the one interface through which blkback touches the hypervisor (private to blkback/ and
 * its tests).
 *
 * Two implementations behind the same calls:
 *   - real: libxenstore, libxengnttab, libxenevtchn (always compiled and linked; chosen when
 *     /dev/xen exists and $OCIBLK_XEN_SIM is unset);
 *   - sim: a simulated Xen served by a small daemon (xensim_server_run, tests/tools/xen-simd)
 *     over a unix socket named by $OCIBLK_XEN_SIM:
 *       * xenstore: an in-memory tree in the daemon with permissions (owner, default, ACL as
 *         xenstored has them), watches (fired once on registration, then for writes/removals at
 *         or below the watched path, and for removals above it), and transactions (a private
 *         copy of the tree, committed atomically, -EAGAIN when anything changed meanwhile);
 *       * grant tables: a guest's memory is a memfd holding its grant table (v1 entries:
 *         flags, domid, frame) and its pages; the daemon hands the memfd to mappers over
 *         SCM_RIGHTS.  A map checks each entry (permit_access, granted to the mapper's domid,
 *         frame in range, readonly) and mmaps the guest's page itself (true shared memory);
 *       * event channels: an eventfd per direction, exchanged through the daemon; a handle's
 *         fd is an epoll fd over its ports' eventfds.
 *     Each process says which domain it is when it connects (the sim trusts that claim: it is a
 *     test harness, not a security boundary between processes).  When the connection that
 *     created a guest domain closes, the domain is destroyed: its /local/domain/<id> tree is
 *     removed (watches fire, "@releaseDomain" fires) and its memory can no longer be mapped
 *     (existing mappings stay valid, as with Xen).
 *
 * Everything returns 0 (or a count/fd) or -errno.  Paths are absolute xenstore paths.
 * Handles are not shared across fork(); a child opens its own.  An evtchn or gnt handle may be
 * used by one thread at a time; xs handles likewise. */
#ifndef OCIBLK_BLKBACK_XENIF_H
#define OCIBLK_BLKBACK_XENIF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define XENIF_PAGE_SIZE 4096u

/* Environment variable naming the sim daemon's socket. */
#define XENIF_SIM_ENV "OCIBLK_XEN_SIM"
/* Environment variable giving the domid a sim client claims (default 0 = dom0). */
#define XENIF_SIM_DOMID_ENV "OCIBLK_XEN_SIM_DOMID"

struct xenif;     /* which implementation + own domid; cheap; one per process */
struct xenif_xs;  /* a xenstore connection */
struct xenif_gnt; /* a grant-table handle (maps and copies foreign grants) */
struct xenif_evt; /* an event-channel handle (several ports) */

/* Chooses sim when $OCIBLK_XEN_SIM is set, else real when /dev/xen exists, else -ENODEV. */
int xenif_open(struct xenif **out);
/* A sim client claiming domid (used by test frontends and the toolstack side of tests). */
int xenif_open_sim(const char *socket_path, uint16_t domid, struct xenif **out);
void xenif_close(struct xenif *x);
bool xenif_is_sim(const struct xenif *x);
uint16_t xenif_domid(const struct xenif *x);

/* ---------------------------------------------------------------- xenstore ---------------- */

typedef uint32_t xenif_tx_t; /* 0 = no transaction */

int xenif_xs_open(struct xenif *x, struct xenif_xs **out);
void xenif_xs_close(struct xenif_xs *xs);
/* *value is malloc'd and NUL-terminated (len excludes the NUL); -ENOENT when missing, -EACCES. */
int xenif_xs_read(struct xenif_xs *xs, xenif_tx_t t, const char *path, char **value, size_t *len);
int xenif_xs_write(struct xenif_xs *xs, xenif_tx_t t, const char *path, const void *value, size_t len);
int xenif_xs_printf(struct xenif_xs *xs, xenif_tx_t t, const char *path, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* Reads an unsigned decimal; -EINVAL when the value is not one or is above max. */
int xenif_xs_read_uint(struct xenif_xs *xs, xenif_tx_t t, const char *path, uint64_t max, uint64_t *out);
int xenif_xs_mkdir(struct xenif_xs *xs, xenif_tx_t t, const char *path);
/* Removes the node and everything below; removing a missing node is 0. */
int xenif_xs_rm(struct xenif_xs *xs, xenif_tx_t t, const char *path);
/* Removes path, then its parent directory if that is left empty (best effort, transactional). */
int xenif_xs_rm_tidy(struct xenif_xs *xs, const char *path);
/* Child names: *names is one malloc'd block (array + strings); free(*names). */
int xenif_xs_directory(struct xenif_xs *xs, xenif_tx_t t, const char *path, char ***names, unsigned *count);
/* perms as xenstore-chmod writes them: "n0", "r5", "w3", "b1" ... first = owner + others. */
int xenif_xs_set_perms(struct xenif_xs *xs, xenif_tx_t t, const char *path, const char *const *perms,
		       unsigned count);
int xenif_xs_watch(struct xenif_xs *xs, const char *path, const char *token);
int xenif_xs_unwatch(struct xenif_xs *xs, const char *path, const char *token);
/* Poll this fd for watch events; but first drain xenif_xs_read_watch until -EAGAIN, since
 * events may already be queued in the process. */
int xenif_xs_fd(struct xenif_xs *xs);
/* Next pending watch event without blocking: *path and *token malloc'd; -EAGAIN when none. */
int xenif_xs_read_watch(struct xenif_xs *xs, char **path, char **token);
int xenif_xs_transaction_start(struct xenif_xs *xs, xenif_tx_t *t);
/* abort=false commits; -EAGAIN when the transaction conflicted (retry it). */
int xenif_xs_transaction_end(struct xenif_xs *xs, xenif_tx_t t, bool abort);

/* ---------------------------------------------------------------- grants ------------------ */

int xenif_gnt_open(struct xenif *x, struct xenif_gnt **out);
void xenif_gnt_close(struct xenif_gnt *g);
/* Maps count grants of domid contiguously; writable false maps read-only. */
int xenif_gnt_map(struct xenif_gnt *g, uint16_t domid, const uint32_t *grefs, unsigned count, bool writable,
		  void **addr);
int xenif_gnt_unmap(struct xenif_gnt *g, void *addr, unsigned count);

struct xenif_copy_seg {
	uint32_t gref;
	uint16_t offset;      /* within the granted page */
	uint16_t len;         /* offset + len <= XENIF_PAGE_SIZE */
	void *local;
	bool to_guest;        /* true: local -> guest page (needs a writable grant) */
	int16_t status;       /* out: 0 or -errno for this segment */
};
/* Copies every segment; returns 0 if all succeeded, else -EIO with per-segment status set. */
int xenif_gnt_copy(struct xenif_gnt *g, uint16_t domid, struct xenif_copy_seg *segs, unsigned count);

/* ---------------------------------------------------------------- event channels ---------- */

int xenif_evt_open(struct xenif *x, struct xenif_evt **out);
void xenif_evt_close(struct xenif_evt *e);
/* Backend side: binds to the remote domain's unbound port; *local_port receives our port. */
int xenif_evt_bind(struct xenif_evt *e, uint16_t domid, uint32_t remote_port, uint32_t *local_port);
/* Frontend side: a port remote_domid may bind to. */
int xenif_evt_alloc_unbound(struct xenif_evt *e, uint16_t remote_domid, uint32_t *port);
int xenif_evt_unbind(struct xenif_evt *e, uint32_t port);
int xenif_evt_notify(struct xenif_evt *e, uint32_t port);
/* Readable when some port is pending. */
int xenif_evt_fd(struct xenif_evt *e);
/* A pending port (cleared and unmasked), or -EAGAIN when none. */
int xenif_evt_pending(struct xenif_evt *e);

/* ---------------------------------------------------------------- sim only ---------------- */

/* Runs the sim daemon on socket_path until a client sends "shutdown" or the daemon is killed.
 * ready_fd (>= 0) gets one byte written once the socket listens, then is closed. */
int xensim_server_run(const char *socket_path, int ready_fd);

struct xensim_guest; /* a guest domain's memory and grant table, for test frontends */

/* Creates domain domid in the sim with npages pages of memory and ngrants grant entries; the
 * domain lives until xensim_guest_destroy (or the process exits). Creates /local/domain/<domid>. */
int xensim_guest_create(struct xenif *x, uint32_t npages, uint32_t ngrants, struct xensim_guest **out);
void xensim_guest_destroy(struct xensim_guest *g);
void *xensim_guest_page(struct xensim_guest *g, uint32_t page);
uint32_t xensim_guest_npages(const struct xensim_guest *g);
/* Grants page to remote_domid; returns the gref (>= 1) or -ENOSPC. */
int xensim_guest_grant(struct xensim_guest *g, uint32_t page, uint16_t remote_domid, bool readonly);
/* Writes a raw grant entry (hostile tests). */
void xensim_guest_grant_raw(struct xensim_guest *g, uint32_t gref, uint16_t flags, uint16_t domid, uint32_t frame);
void xensim_guest_ungrant(struct xensim_guest *g, uint32_t gref);
/* Asks the daemon to stop (tests). */
int xensim_shutdown(const char *socket_path);

#endif
