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
/* Version 2 (cow/FORMAT.md): a header with first_seq, records that may carry the data of the
 * blocks they cover (payloads) and checkpoints.  Version 1 maps still open (upgraded at open). */
#define COW_MAP_VERSION 2u
#define COW_MAP_VERSION_V1 1u
#define COW_JOURNAL_MAGIC 0x4c4e524au    /* "JRNL": version-1 record */
#define COW_JOURNAL_MAGIC_V2 0x324e524au /* "JRN2": version-2 record */
/* Record flag: every payload of a record with seq < covers_seq is durable in upper.data. */
#define COW_RECORD_CHECKPOINT 1u

/* upper.map keeps a tail of written, synced zeros past the journal, grown in steps of this
 * many bytes: an append inside it is an overwrite within i_size, so its sync commits no
 * block allocation or size change.  Replay stops at the zeros (no record has magic 0). */
#define COW_MAP_TAIL_STEP (1u << 20)

/* Header of upper.map, version 1 (little-endian host layout, fixed size). */
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

/* Version 2: the same, then the sequence number of the first journal record.  Sequence numbers
 * go on across compactions, so a checkpoint's covers_seq stays meaningful in a new file. */
struct cow_map_header_v2 {
	struct cow_map_header h;
	uint64_t first_seq;
};

struct cow_journal_header {
	uint32_t magic;
	uint32_t entry_count;
	uint64_t seq;
};

struct cow_journal_header_v2 {
	uint32_t magic;          /* COW_JOURNAL_MAGIC_V2 */
	uint32_t entry_count;    /* state changes (16 bytes each) */
	uint64_t seq;
	uint32_t payload_count;  /* blocks carried: u64 index each, then 4096 bytes each */
	uint32_t flags;          /* COW_RECORD_CHECKPOINT */
	uint64_t covers_seq;     /* with COW_RECORD_CHECKPOINT: payloads of records before it are in upper.data */
};

/* The result of parsing a map file. */
struct cow_map_parsed {
	struct cow_map_header hdr;
	uint32_t version;
	uint64_t first_seq;
	uint64_t journal_offset;  /* where records start */
	uint64_t journal_end;     /* end of the last valid record */
	uint64_t next_seq;
	uint64_t records;
	uint64_t covered_seq;     /* payloads of records before this seq are durable in upper.data */
	uint64_t payload_records; /* records carrying payloads (covered or not) */
	uint64_t last_payload_seq;/* seq of the last of them (0: none) */
	uint64_t errors;          /* corruption found (snapshot bad, entries out of range) */
};

/* Parses map bytes (version 1 or 2) into states (size_blocks bytes, zeroed by caller).  Returns
 * 0 or -EUCLEAN (errors logged when log_errors). */
int cow_map_parse(const uint8_t *buf, uint64_t len, uint64_t size_blocks, uint8_t *states,
		  struct cow_map_parsed *out, bool log_errors, const char *path);
/* Calls apply for each payload that recovery must replay (records at or after p->covered_seq,
 * in order, so a later one of the same block comes later; only blocks whose final state is
 * COW_UPPER_DATA); *blocks_out counts them.  buf/p as parsed; states: the parsed states. */
int cow_map_replay(const uint8_t *buf, const struct cow_map_parsed *p, const uint8_t *states,
		   int (*apply)(void *ctx, uint64_t block_index, const uint8_t *data), void *ctx, uint64_t *blocks_out);
/* Serialises a version-2 snapshot of states into a malloc'd buffer. */
int cow_map_serialize(const uint8_t *states, uint64_t size_blocks, uint64_t generation, uint32_t base_layer_count,
		      const char *base_top, uint64_t first_seq, uint8_t **out, uint64_t *len_out);
/* Builds a version-2 journal record: the changes, payload_count blocks (indexes and 4096-byte
 * contents), flags and covers_seq.  *len_out is its length. */
int cow_journal_record(const struct cow_change *changes, uint64_t count, uint64_t seq, uint32_t flags,
		       uint64_t covers_seq, const uint64_t *payload_blocks, const uint8_t *payload_data,
		       uint32_t payload_count, uint8_t **out, uint64_t *len_out);
/* Bytes of a version-2 record with these counts. */
uint64_t cow_journal_record_bytes(uint64_t count, uint32_t payload_count);

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
	uint64_t journal_covered_seq;  /* payloads of records before it are durable in upper.data */
	uint64_t journal_last_payload_seq; /* last record of this file with payloads (0: none) */
	uint64_t stats_payload_flushes, stats_checkpoints;

	/* Blocks whose upper.data content changed since the last flush captured them, with that
	 * content (under mu): a flush writes them into its journal record instead of syncing
	 * upper.data.  dirty_overflow: some change is not held here (too many blocks, or a failed
	 * flush): the next flush must sync upper.data (a checkpoint). */
	uint64_t *dirty_block;
	uint8_t *dirty_data;          /* dirty_max blocks of 4096 bytes */
	uint32_t dirty_count, dirty_max;
	uint32_t dirty_cap;           /* in force (<= dirty_max; tests lower it) */
	bool dirty_overflow;
	uint32_t checkpoints_in_flight; /* captured, upper.data sync or record pending */

	/* A read-only container whose journal holds flushed blocks that upper.data may lack (a
	 * crash of its writer): their replayed content, sorted by block, served by reads instead
	 * of upper.data (which a read-only device never writes). */
	uint64_t *ro_block;
	uint8_t *ro_data;
	uint32_t ro_count, ro_cap;

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
 * data write completed).  For COW_UPPER_DATA use cow_write_done. */
int cow_set_state(struct cow_device *dev, uint64_t first, uint64_t end, uint8_t s);
/* A write of blocks [first, end) of upper.data completed (range lock held): remembers their
 * content for the next flush's record, then sets them COW_UPPER_DATA, atomically for flushes. */
int cow_write_done(struct cow_device *dev, uint64_t first, uint64_t end);

/* Flush.  The common case needs no sync of upper.data: cow_flush_journal_payload writes one
 * record with the changes and the content of every block written since the last flush, and
 * syncs upper.map (*done set).  When it cannot (too many blocks, a checkpoint in flight, the
 * journal full), a checkpoint: capture, sync upper.data, then cow_flush_journal. */
int cow_flush_journal_payload(struct cow_device *dev, bool *done);
struct cow_flush_ticket {
	uint64_t target;     /* changes up to here are journaled by this flush */
	uint64_t covers_seq; /* records before this seq had their payloads written before the sync */
};
struct cow_flush_ticket cow_flush_capture(struct cow_device *dev);
/* sync_result: of the upper.data sync (a failure is returned after undoing the capture). */
int cow_flush_journal(struct cow_device *dev, const struct cow_flush_ticket *t, int sync_result);
/* All of it with a synchronous fdatasync. */
int cow_flush(struct cow_device *dev);
/* When the journal holds payload records: sync upper.data and rewrite upper.map without them
 * (close; no request in flight). */
int cow_journal_compact(struct cow_device *dev);
/* Preallocates the dirty-block slots of a container (max_blocks of them). */
int cow_dirty_alloc(struct cow_device *dev, uint32_t max_blocks);
/* Read-only open: the payloads recovery needs, kept in memory (dev->ro_*). */
int cow_map_recover_readonly(struct cow_device *dev, const uint8_t *buf, const struct cow_map_parsed *p);
/* Open: replays the payloads recovery needs into upper.data, syncs it and rewrites upper.map
 * (also upgrades a version-1 map).  buf/len: the map as read, p: as parsed into dev->jstate. */
int cow_map_recover(struct cow_device *dev, const uint8_t *buf, const struct cow_map_parsed *p);

/* Range locks, granted FIFO: a range waits behind every earlier conflicting one (held or
 * waiting).  acquire blocks; try_acquire returns true when granted at once, else parks lk and
 * calls wake (under dev->mu, from the releasing thread) when it is granted. */
void cow_range_acquire(struct cow_device *dev, struct cow_range_lock *lk, uint64_t first, uint64_t end, bool exclusive);
bool cow_range_try_acquire(struct cow_device *dev, struct cow_range_lock *lk, uint64_t first, uint64_t end,
			   bool exclusive, void (*wake)(struct cow_range_lock *lk));
void cow_range_release(struct cow_device *dev, struct cow_range_lock *lk);

#endif
