/* blkback: the userspace Xen block (blkif) backend.
 *
 * `blkback_serve` is the dom0 daemon: it watches /local/domain/<own>/backend/<type>/ (type
 * "ociblk" by default, never "vbd" unless asked, so the kernel's xen-blkback does not compete)
 * and serves every device that appears there in its own forked process, so a crashing device
 * takes no other down; a device process that dies abnormally is restarted (bounded) and resumes
 * the rings its frontend still has.  `params` names a container (read-write unless mode is "r")
 * or an image (always read-only) of the store.
 *
 * Each device does the handshake of Linux's xen-blkback: features, InitWait, the frontend's
 * rings (ring-ref or ring-page-order + ring-refN, per-queue directories, event channels,
 * protocol ABI), Connected; Closing/Closed from either side, the frontend's domain vanishing
 * (the backend directory is removed), and reconnection after the frontend returns to
 * Initialising.  Requests are copied off the ring once, validated by one pure function
 * (blkback/request.h), executed on the cow/ queue API from one thread per ring; a frontend that
 * corrupts its ring is disconnected.
 *
 * Statistics: each device keeps counters for the life of its process (across reconnections of
 * its frontend) and writes them under <backend>/statistics/ (changed ones at most once per
 * BLKBACK_STATS_INTERVAL_MS while connected, all of them when the frontend closes), and logs them
 * at info level ("...: disconnected; statistics: ...") whenever a connection ends:
 *   rd_req, wr_req, f_req, ds_req   read / write / flush+barrier / discard requests accepted
 *                                   (a flush that carries data counts as a write too);
 *   indirect_req                    requests that came as BLKIF_OP_INDIRECT;
 *   oo_req                          times requests waited on the ring because the pool was full;
 *   err_req                         responses other than BLKIF_RSP_OKAY;
 *   rd_sect, wr_sect, ds_sect       512-byte sectors read / written / discarded;
 *   pgnt_mapped, pgnt_reused        (--grant-map with feature-persistent) grants mapped for good,
 *                                   and segments served by an already mapped persistent grant;
 *   gnt_map_segs, gnt_copy_segs     data segments moved by a per-request grant map / grant copy.
 *
 * All hypervisor access goes through blkback/xenif.h: real Xen, or the simulated Xen when
 * $OCIBLK_XEN_SIM names a sim daemon's socket.  Returns 0 or -errno everywhere. */
#ifndef OCIBLK_BLKBACK_H
#define OCIBLK_BLKBACK_H

#include <stdbool.h>
#include <stdint.h>

#define BLKBACK_TYPE_DEFAULT "ociblk"

struct blkback_options {
	const char *type;              /* backend type in xenstore (default "ociblk") */
	bool serve_vbd;                /* also serve backend/vbd devices (xl backendtype=phy) */
	unsigned max_queues;           /* multi-queue-max-queues, 1..BLKBACK_QUEUES_MAX */
	unsigned max_ring_page_order;  /* max-ring-page-order, 0..BLKBACK_RING_PAGE_ORDER_MAX */
	unsigned max_indirect_segs;    /* feature-max-indirect-segments, 0 = no indirect */
	bool persistent;               /* feature-persistent */
	bool grant_map;                /* move data by grant mapping (else grant copy) */
	bool discard;                  /* feature-discard (read-write devices) */
};

/* Fills the defaults (type ociblk, 4 queues, order 4, 32 indirect segments, persistent grants,
 * grant copy, discard). */
void blkback_options_default(struct blkback_options *o);

/* The daemon: serves devices until SIGTERM/SIGINT, then stops every device process (they close
 * their rings; the frontends see Closing). */
int blkback_serve(const char *store_root, const struct blkback_options *opts);

/* Serves the one device at backend_path in the calling process until it goes away (frontend
 * gone, or the toolstack removed the backend directory).  The daemon's children run this. */
int blkback_device_serve(const char *store_root, const char *backend_path, const struct blkback_options *opts);

/* Toolstack side.  attach writes the backend and frontend nodes for domid's virtual device vdev
 * (51712 = xvda) with the permissions a toolstack uses, state=1 written last.  readonly selects
 * mode "r".  detach asks the backend to close (online=0, state=5), waits up to timeout_ms for
 * state 6 (0 = do not wait) and removes both directories. */
int blkback_attach(const char *type, uint16_t domid, uint32_t vdev, const char *params, bool readonly);
int blkback_detach(const char *type, uint16_t domid, uint32_t vdev, unsigned timeout_ms);

/* 51712 for "xvda", 51728 for "xvdb" ... ; also accepts a decimal number.  -EINVAL otherwise. */
int blkback_vdev_parse(const char *s, uint32_t *vdev);

#endif
