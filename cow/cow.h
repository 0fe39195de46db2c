/* cow: the device engine.  A device is a merged read-only view of a chain of block layers plus
 * (for containers) a private writable upper at 4 KiB block granularity.
 *
 * Index: cow_device_open builds once a merged index of the chain (one sorted array of extents,
 * each naming the topmost layer that holds it), so a lookup costs O(log extents) whatever the
 * number of layers.
 *
 * Upper: the first write to a block that lives in a lower layer copies at most that one block
 * (a whole-block write copies nothing).  Writes are 512-byte aligned; partial blocks are
 * read-modify-written.  Discard makes blocks read zero and punches holes in the upper.
 *
 * DURABILITY CONTRACT
 *   - When a flush, or a write with COW_FUA, completes, every write that completed before it was
 *     submitted (and the FUA write itself) survives a process crash or a power loss.
 *   - The upper's metadata is never corrupt after a crash at any instant: reopening always
 *     succeeds and every block reads either the data of some completed write or what it held at
 *     the last completed flush (unflushed writes may be lost, or read back in part at 512-byte
 *     sector granularity, as on a disk).
 *   - cow_device_commit is atomic: after a crash the container is on the old chain with its
 *     upper, or on the new chain with an empty upper.
 *
 * CONCURRENCY
 *   Requests are asynchronous (liburing).  Many may be in flight, including overlapping writes
 *   and reads of a block being copied up: the result always equals some serial order of the
 *   requests.  A request's completion is reported after its effect is visible to later requests.
 *   A struct cow_queue is used by one thread at a time; several queues of one device may run on
 *   several threads.  The synchronous calls are safe from any thread.
 *
 * Units: offsets and lengths at this API are bytes (they must be multiples of 512); block indexes
 * are 4 KiB blocks.  Returns 0 or -errno everywhere. */
#ifndef OCIBLK_COW_H
#define OCIBLK_COW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "layer-store/layer_store.h"

#define COW_BLOCK_SIZE 4096u
#define COW_SECTOR_SIZE 512u

struct cow_device; /* opaque */
struct cow_queue;  /* opaque */

/* ---------------------------------------------------------------- open / close ------------- */

/* A container, read-write (takes the container lock: -EBUSY if another device holds it). */
int cow_device_open_container(struct layer_store *store, const char *container, struct cow_device **out);
/* A container, read-only: its chain and its upper as the last read-write device left them on disk
 * (every flushed write; after a crash, what a read-write open would recover).  It never writes,
 * creates, truncates or renames any file: not upper.data, not upper.map (a torn journal tail is
 * ignored, not cut; a map one commit behind its record reads as the empty upper that commit left,
 * without resetting it; a container never opened read-write reads as its chain alone).  Takes the
 * container lock shared (layer_store_container_lock_shared): read-only opens coexist, and -EBUSY
 * while a read-write device has it (its upper is changing), as a read-write open is -EBUSY while
 * this is open.  Writes, discards, commit: -EROFS; flush does nothing. */
int cow_device_open_container_readonly(struct layer_store *store, const char *container, struct cow_device **out);
/* An image, read-only: writes fail with -EROFS. */
int cow_device_open_image(struct layer_store *store, const char *image, struct cow_device **out);
/* A chain given by digests (bottom first) with a scratch upper in the store's tmp/ that is
 * deleted on close: image-import builds each layer on one of these, then cow_device_commit_layer. */
int cow_device_open_scratch(struct layer_store *store, const char *const *layer_digests, uint32_t layer_count,
			    uint64_t size_bytes, struct cow_device **out);
/* Flushes (for a read-write device) and closes.  Outstanding requests must have completed. */
int cow_device_close(struct cow_device *dev);

uint64_t cow_device_size_bytes(const struct cow_device *dev);
bool cow_device_is_readonly(const struct cow_device *dev);
/* Number of layers in the chain, and the digest of layer i (0 = bottom). */
uint32_t cow_device_layer_count(const struct cow_device *dev);
const char *cow_device_layer_digest(const struct cow_device *dev, uint32_t i);

/* ---------------------------------------------------------------- synchronous I/O ---------- */

enum cow_write_flags {
	COW_FUA = 1u << 0,      /* durable when it completes (write, write_zeroes) */
	COW_NO_HOLE = 1u << 1,  /* write_zeroes: allocate zeroed blocks rather than punch holes */
};

int cow_device_read(struct cow_device *dev, uint64_t offset_bytes, void *buf, uint64_t length_bytes);
int cow_device_write(struct cow_device *dev, uint64_t offset_bytes, const void *buf, uint64_t length_bytes,
		     unsigned flags);
int cow_device_flush(struct cow_device *dev);
/* After discard the range reads zero; whole blocks in the upper are released (hole punched);
 * the unaligned head and tail of a range are zeroed by read-modify-write. */
int cow_device_discard(struct cow_device *dev, uint64_t offset_bytes, uint64_t length_bytes);
int cow_device_write_zeroes(struct cow_device *dev, uint64_t offset_bytes, uint64_t length_bytes, unsigned flags);

enum cow_block_state {
	COW_BLOCK_UPPER = 1, /* held in the writable upper */
	COW_BLOCK_LOWER = 2, /* held as data by a layer of the chain */
	COW_BLOCK_ZERO = 3,  /* reads as zero (never written, discarded, or a ZERO extent) */
};
/* State of block_index and how many following blocks (at most max_blocks, >= 1) share it. */
int cow_device_block_status(struct cow_device *dev, uint64_t block_index, uint64_t max_blocks,
			    enum cow_block_state *state, uint64_t *run_blocks);

/* ---------------------------------------------------------------- asynchronous I/O --------- */

enum cow_op {
	COW_OP_READ = 1,
	COW_OP_WRITE = 2,
	COW_OP_FLUSH = 3,
	COW_OP_DISCARD = 4,
	COW_OP_WRITE_ZEROES = 5,
};

/* A request owned by the caller until its completion callback runs.  iov describes the data
 * buffer (READ/WRITE); its total length must equal length_bytes. */
struct cow_request {
	enum cow_op op;
	unsigned flags;            /* enum cow_write_flags */
	uint64_t offset_bytes;
	uint64_t length_bytes;
	const struct iovec *iov;
	unsigned iov_count;
	/* Called from cow_queue_poll on the queue's thread with 0 or -errno. */
	void (*complete)(struct cow_request *req, int result);
	void *opaque;
	/* private to cow/: */
	void *internal;
};

/* A queue: one io_uring and up to depth requests in flight.  Memory is allocated here, never per
 * request. depth <= COW_QUEUE_DEPTH_MAX. */
int cow_queue_create(struct cow_device *dev, unsigned depth, struct cow_queue **out);
/* Waits for in-flight requests to finish, then frees the queue. */
void cow_queue_destroy(struct cow_queue *q);
/* Validates and starts a request.  -EINVAL (bad alignment/range, returned at once, no callback),
 * -EAGAIN when depth requests are in flight, -EROFS on a read-only device. */
int cow_queue_submit(struct cow_queue *q, struct cow_request *req);
/* Reaps completions and calls their callbacks.  min_complete > 0 blocks until at least that many
 * callbacks ran (or nothing is in flight).  Returns the number of callbacks run or -errno. */
int cow_queue_poll(struct cow_queue *q, unsigned min_complete);
/* An eventfd that becomes readable when cow_queue_poll has work; for epoll loops.
 * (A thread must not call the synchronous API on a range that a request of its own queue still
 * has in flight: the synchronous call would wait for a completion only that thread can reap.) */
int cow_queue_event_fd(const struct cow_queue *q);
unsigned cow_queue_in_flight(const struct cow_queue *q);

/* ---------------------------------------------------------------- commit / export / check -- */

/* The upper becomes a new immutable layer on top of the chain (what `docker commit` does): an image
 * record named image is written with the new chain, and the container continues on it with an
 * empty upper.  No request may be in flight. digest_out may be NULL. */
int cow_device_commit(struct cow_device *dev, const char *image, char digest_out[SHA256_DIGEST_STRLEN]);
/* For image-import: writes the upper (of a scratch device) as a layer whose parent is the top of
 * the chain, returns its digest, and leaves records alone.  The device continues on the new
 * chain with an empty upper. */
int cow_device_commit_layer(struct cow_device *dev, char digest_out[SHA256_DIGEST_STRLEN]);

/* Statistics, for benchmarks and for tests that check what happened (not only that it worked). */
struct cow_device_stats {
	uint64_t reads, writes, flushes, discards, write_zeroes;
	uint64_t copy_ups;              /* lower blocks copied into the upper by partial writes */
	uint64_t upper_blocks;          /* blocks currently held in the upper */
	uint64_t index_extents;         /* merged index entries */
	uint64_t index_bytes;           /* memory held by the merged index */
};
void cow_device_get_stats(const struct cow_device *dev, struct cow_device_stats *out);

/* Compacts upper.map into a snapshot when its journal passes journal_bytes (default and 0:
 * COW_JOURNAL_BYTES_MAX).  For tests that want compaction to happen often. */
void cow_device_set_journal_limit(struct cow_device *dev, uint64_t journal_bytes);
/* Number of journal compactions done since open (for tests). */
uint64_t cow_device_journal_compactions(const struct cow_device *dev);

struct cow_check_report {
	uint64_t blocks_checked;
	uint64_t errors;   /* each one logged */
};
/* Checks a container's upper metadata against its files (used by `ociblk fsck` and crash tests);
 * the container must not be open elsewhere. 0 when clean, -EUCLEAN when errors were found. */
int cow_container_check(struct layer_store *store, const char *container, struct cow_check_report *report);

#endif
