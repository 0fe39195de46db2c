/* Private header of cow/: the merged index, the upper (state bytes + map file), the device. */
#ifndef OCIBLK_COW_INTERNAL_H
#define OCIBLK_COW_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "cow/cow.h"

/* ---------------------------------------------------------------- merged index ------------- */

/* One entry of the merged index: blocks [block_index, block_index + block_count) are DATA in
 * layer `layer` (chain position), extent number `extent` of that layer.  Gaps read zero. */
struct cow_index_entry {
	uint64_t block_index;
	uint32_t block_count;
	uint32_t extent;
	uint32_t layer;
};

struct cow_index {
	struct cow_index_entry *entries; /* sorted, non-overlapping, DATA only */
	uint64_t count;
};

/* Overlays the layers' extent lists (bottom first) into one merged index. */
int cow_index_build(struct cow_index *idx, const struct layer_extent *const *extents, const uint64_t *counts,
		    uint32_t layer_count, uint64_t size_blocks);
void cow_index_free(struct cow_index *idx);
/* Position of the first entry whose end is after block_index (count when none). */
uint64_t cow_index_find(const struct cow_index *idx, uint64_t block_index);

/* ---------------------------------------------------------------- upper ------------------- */

/* In-memory state byte per block. */
enum cow_upper_state {
	COW_UPPER_FALL = 0,  /* falls through to the chain */
	COW_UPPER_DATA = 1,  /* held in upper.data */
	COW_UPPER_ZERO = 2,  /* reads zero (masks the chain) */
};

struct cow_change {
	uint64_t block_index;
	uint32_t block_count;
	uint32_t state;
};

#define COW_MAP_MAGIC "OCIBLKUP"
#define COW_MAP_VERSION 1u
#define COW_JOURNAL_MAGIC 0x4c4e524au /* "JRNL" */

/* upper.map keeps a tail of written, synced zeros past the journal, grown in steps of this
 * many bytes: an append inside it is an overwrite within i_size, so its sync commits no
 * block allocation or size change.  Replay stops at the zeros (no record has magic 0). */
#define COW_MAP_TAIL_STEP (1u << 20)

/* Header of upper.map (little-endian host layout, fixed size). */
struct cow_map_header {
	char magic[8];
	uint32_t version;
	uint32_t header_bytes;
	uint64_t size_blocks;
	uint64_t generation;
	uint32_t base_layer_count;
	uint32_t reserved;
	char base_top[SHA256_DIGEST_STRLEN]; /* top of the chain the upper sits on, "" if none */
	uint64_t run_count;                  /* snapshot runs that follow */
};

struct cow_journal_header {
	uint32_t magic;
	uint32_t entry_count;
	uint64_t seq;
};

/* The result of parsing a map file. */
struct cow_map_parsed {
	struct cow_map_header hdr;
	uint64_t journal_offset;  /* where records start */
	uint64_t journal_end;     /* end of the last valid record */
	uint64_t next_seq;
	uint64_t records;
	uint64_t errors;          /* corruption found (snapshot bad, entries out of range) */
};

/* Parses map bytes into states (size_blocks bytes, zeroed by caller).  Returns 0 or -EUCLEAN
 * (errors logged when log_errors). */
int cow_map_parse(const uint8_t *buf, uint64_t len, uint64_t size_blocks, uint8_t *states,
		  struct cow_map_parsed *out, bool log_errors, const char *path);
/* Serialises a snapshot of states into a malloc'd buffer. */
int cow_map_serialize(const uint8_t *states, uint64_t size_blocks, uint64_t generation, uint32_t base_layer_count,
		      const char *base_top, uint8_t **out, uint64_t *len_out);
/* Builds a journal record of the changes. */
int cow_journal_record(const struct cow_change *changes, uint64_t count, uint64_t seq, uint8_t **out,
		       uint64_t *len_out);

/* ---------------------------------------------------------------- range locks --------------- */

struct cow_range_lock {
	uint64_t first_block, end_block; /* [first, end) */
	bool exclusive;
	bool waiting;                             /* queued behind a conflicting earlier range */
	void (*wake)(struct cow_range_lock *lk);  /* async waiter: called under dev->mu when granted */
	uint64_t ticket;
	struct cow_range_lock *next;
};

/* ---------------------------------------------------------------- chunk cache --------------- */

#define COW_CHUNK_CACHE_SLOTS 4u

struct cow_chunk_cache {
	struct {
		uint32_t layer;
		uint64_t extent;
		uint64_t generation; /* device chain generation */
		uint64_t stamp;
		bool valid;
	} slot[COW_CHUNK_CACHE_SLOTS];
	uint8_t *data[COW_CHUNK_CACHE_SLOTS]; /* decoded chunks */
	size_t cap[COW_CHUNK_CACHE_SLOTS];
	uint8_t *stored;                      /* raw chunk buffer */
	size_t stored_cap;
	uint8_t *block;                       /* one block for read-modify-write */
	uint64_t clock;
};

int cow_chunk_cache_init(struct cow_chunk_cache *c);
/* The cached decoded chunk, or NULL. */
const uint8_t *cow_chunk_lookup(const struct cow_device *dev, struct cow_chunk_cache *c, uint32_t layer,
				uint64_t extent);
/* A slot to decode into (invalidated until published). */
unsigned cow_chunk_claim(struct cow_chunk_cache *c);
/* Makes slot hold at least bytes. */
int cow_chunk_reserve(struct cow_chunk_cache *c, unsigned slot, size_t bytes);
const uint8_t *cow_chunk_publish(const struct cow_device *dev, struct cow_chunk_cache *c, unsigned slot,
				 uint32_t layer, uint64_t extent);
/* -EIO (logged) unless extent is a DATA extent of a sane size. */
int cow_chunk_check_extent(const struct cow_device *dev, uint32_t layer, uint64_t extent);
/* Looked up, else read synchronously, verified and decoded. */
int cow_chunk_get(struct cow_device *dev, struct cow_chunk_cache *c, uint32_t layer, uint64_t extent,
		  const uint8_t **out);
void cow_chunk_cache_free(struct cow_chunk_cache *c);

/* ---------------------------------------------------------------- device ------------------- */

enum cow_device_kind { COW_KIND_IMAGE, COW_KIND_CONTAINER, COW_KIND_SCRATCH };

struct cow_device {
	struct layer_store *store;
	enum cow_device_kind kind;
	bool readonly;            /* a container opened read-only: state is loaded, never changed */
	char name[OCIBLK_NAME_MAX + 1];
	uint64_t size_bytes, size_blocks;

	uint32_t layer_count;
	struct layer *layers[LAYER_CHAIN_MAX];
	char digests[LAYER_CHAIN_MAX][SHA256_DIGEST_STRLEN];
	struct cow_index index;
	uint64_t chain_generation; /* bumped when the chain changes (invalidates chunk caches) */

	/* upper (absent on images) */
	int lock_fd;
	int data_fd, map_fd;
	char data_path[OCIBLK_PATH_MAX], map_path[OCIBLK_PATH_MAX];
	uint8_t *state;           /* live state per block */
	uint8_t *jstate;          /* state as recorded durably in upper.map */
	uint64_t map_generation;

	pthread_mutex_t mu;       /* state, changes, stats, range locks */
	pthread_cond_t range_cv;
	struct cow_range_lock *ranges;  /* in-flight requests' ranges, in ticket order */
	uint64_t next_ticket;

	/* completed state changes not yet journaled */
	struct cow_change *changes;
	uint64_t change_count, change_cap;
	uint64_t change_merge_floor;  /* entries below this are captured by a flush: never merged into */
	uint64_t changes_dropped;     /* entries already journaled and removed from the front */

	pthread_mutex_t journal_mu; /* serialises journal appends and compaction */
	uint64_t journal_end, journal_offset, journal_seq;
	uint64_t map_tail_end;     /* upper.map holds synced zeros from journal_end up to here */
	uint64_t journal_limit;    /* compact past this many journal bytes */
	uint64_t stats_compactions;

	pthread_mutex_t sync_mu;   /* the synchronous API's chunk cache */
	struct cow_chunk_cache sync_cache;

	struct cow_device_stats stats;
	uint32_t max_stored_bytes; /* largest DATA chunk of the chain as stored (sizes queue buffers) */
};

/* Executes one validated request synchronously (range lock taken inside). */
int cow_exec(struct cow_device *dev, struct cow_chunk_cache *cache, const struct cow_request *req);
int cow_validate(const struct cow_device *dev, const struct cow_request *req);

/* Rewrites upper.map atomically as a snapshot of jstate (the journaled state) and reopens it;
 * the journal restarts empty (compaction, and the reset after a commit). */
int cow_map_rewrite(struct cow_device *dev);

/* The same without taking the range lock (the caller holds it); no FUA handling. */
int cow_exec_locked(struct cow_device *dev, struct cow_chunk_cache *c, const struct cow_request *req);
void cow_count_op(struct cow_device *dev, enum cow_op op);
/* 1 when req (range lock held) is one readv/writev of upper.data: a read of blocks all in the
 * upper, or a write whose partial head/tail blocks are already in the upper (no copy-up). */
bool cow_upper_direct(const struct cow_device *dev, const struct cow_request *req);
/* 1 when every block of req's range falls through to the chain (range lock held). */
bool cow_read_all_lower(const struct cow_device *dev, const struct cow_request *req);
bool cow_req_modifies(const struct cow_request *req);
void cow_req_blocks(const struct cow_request *req, uint64_t *first, uint64_t *end);
/* Sets blocks [first, end) to state s and records the changes for the journal (call after the
 * data write completed). */
int cow_set_state(struct cow_device *dev, uint64_t first, uint64_t end, uint8_t s);
/* Flush in two halves: capture the completed changes (before syncing upper.data), then journal
 * them (after). */
uint64_t cow_flush_capture(struct cow_device *dev);
int cow_flush_journal(struct cow_device *dev, uint64_t target);
/* Both halves with a synchronous fsync. */
int cow_flush(struct cow_device *dev);

/* Range locks, granted FIFO: a range waits behind every earlier conflicting one (held or
 * waiting).  acquire blocks; try_acquire returns true when granted at once, else parks lk and
 * calls wake (under dev->mu, from the releasing thread) when it is granted. */
void cow_range_acquire(struct cow_device *dev, struct cow_range_lock *lk, uint64_t first, uint64_t end, bool exclusive);
bool cow_range_try_acquire(struct cow_device *dev, struct cow_range_lock *lk, uint64_t first, uint64_t end,
			   bool exclusive, void (*wake)(struct cow_range_lock *lk));
void cow_range_release(struct cow_device *dev, struct cow_range_lock *lk);

#endif
