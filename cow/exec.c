/* Request execution: validation, range locks, reads through upper/merged index, writes with
 * one-block copy-up, discard/write-zeroes, flush with the journal.
 *
 * Invariants:
 *  - A request holds a range lock on the blocks it touches for its whole execution; conflicting
 *    requests (overlapping, one of them modifying) run in ticket (submission) order, so the
 *    result always equals a serial order.
 *  - A block's state changes only under its range lock and under dev->mu; the change is appended
 *    to dev->changes (journal-eligible) only after its data write completed.
 *  - A write's content is kept for the next flush (dirty blocks) in the same hold of dev->mu as
 *    its state change, so a flush captures both or neither.
 *  - Flush, common case: one record with the completed changes and the content of every block
 *    written since the previous flush, one sync of upper.map, no sync of upper.data.  Otherwise
 *    (too many blocks, a checkpoint in flight, journal full, or only overwrites while every
 *    payload is covered: then the checkpoint needs no record) a checkpoint: capture the changes,
 *    sync upper.data, append a record with them flagged COW_RECORD_CHECKPOINT with covers_seq =
 *    the seq at capture, sync upper.map.  No payload record is appended while a checkpoint is in
 *    flight, so one whose seq is >= a checkpoint's covers_seq only carries blocks written after
 *    that checkpoint's capture: recovery replays exactly the payloads no sync has covered.
 *  - Records are appended under journal_mu in capture order, so replay reproduces the live state
 *    of every flushed change; compaction runs only when every payload is covered.
 *  - At most one block is copied from the chain per partial block written (head and tail). */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common/checked.h"
#include "common/log.h"
#include "common/vfs.h"
#include "cow/cow_internal.h"

static const uint8_t zero_page[65536];

/* ---------------------------------------------------------------- iov cursor -------------- */

struct iovc {
	const struct iovec *iov; /* NULL: a source of zeros */
	unsigned n, i;
	size_t off;
};

/* Also steps over empty iovecs at the cursor (legal in a request), so a caller that moved 0
 * bytes because the current iovec is empty makes progress next time round. */
static void iovc_skip(struct iovc *c, size_t len)
{
	if (!c->iov) return;
	while (c->i < c->n) {
		size_t avail = c->iov[c->i].iov_len - c->off;
		if (!len && avail) break;
		size_t k = len < avail ? len : avail;
		c->off += k;
		len -= k;
		if (c->off == c->iov[c->i].iov_len) {
			c->i++;
			c->off = 0;
		}
	}
}

/* Copies len bytes out of the cursor into dst. */
static void iovc_get(struct iovc *c, void *dst, size_t len)
{
	uint8_t *d = dst;
	if (!c->iov) {
		memset(d, 0, len);
		return;
	}
	while (len && c->i < c->n) {
		size_t avail = c->iov[c->i].iov_len - c->off;
		size_t k = len < avail ? len : avail;
		memcpy(d, (const uint8_t *)c->iov[c->i].iov_base + c->off, k);
		d += k;
		iovc_skip(c, k);
		len -= k;
	}
}

/* Copies len bytes (or zeros when src is NULL) into the cursor. */
static void iovc_put(struct iovc *c, const void *src, size_t len)
{
	const uint8_t *s = src;
	while (len && c->i < c->n) {
		size_t avail = c->iov[c->i].iov_len - c->off;
		size_t k = len < avail ? len : avail;
		uint8_t *d = (uint8_t *)c->iov[c->i].iov_base + c->off;
		if (s) {
			memcpy(d, s, k);
			s += k;
		} else {
			memset(d, 0, k);
		}
		iovc_skip(c, k);
		len -= k;
	}
}

/* pread that reads zeros past the end of the file (upper.data is sparse and may be short after a
 * crash). */
static int upper_pread(int fd, void *buf, size_t len, uint64_t off)
{
	uint8_t *p = buf;
	while (len) {
		ssize_t n = vfs_get()->pread(fd, p, len, off);
		if (n == -EINTR) continue;
		if (n < 0) return log_error((int)n, "read upper at %llu: %s", (unsigned long long)off, strerror((int)-n));
		if (n == 0) {
			memset(p, 0, len);
			return 0;
		}
		p += n, len -= (size_t)n, off += (uint64_t)n;
	}
	return 0;
}

static int upper_pwrite(int fd, const void *buf, size_t len, uint64_t off)
{
	int r = vfs_pwrite_full(fd, buf, len, off);
	if (r) return log_error(r, "write upper at %llu: %s", (unsigned long long)off, strerror(-r));
	return 0;
}

static int iovc_pread(struct iovc *c, int fd, size_t len, uint64_t off)
{
	while (len && c->i < c->n) {
		size_t avail = c->iov[c->i].iov_len - c->off;
		size_t k = len < avail ? len : avail;
		int r = upper_pread(fd, (uint8_t *)c->iov[c->i].iov_base + c->off, k, off);
		if (r) return r;
		iovc_skip(c, k);
		len -= k;
		off += k;
	}
	return 0;
}

static int iovc_pwrite(struct iovc *c, int fd, size_t len, uint64_t off)
{
	while (len) {
		const void *src;
		size_t k;
		if (!c->iov) {
			src = zero_page;
			k = len < sizeof zero_page ? len : sizeof zero_page;
		} else {
			if (c->i >= c->n) return log_error(-EIO, "write upper: iov exhausted");
			size_t avail = c->iov[c->i].iov_len - c->off;
			k = len < avail ? len : avail;
			src = (const uint8_t *)c->iov[c->i].iov_base + c->off;
		}
		int r = upper_pwrite(fd, src, k, off);
		if (r) return r;
		iovc_skip(c, k);
		len -= k;
		off += k;
	}
	return 0;
}

/* ---------------------------------------------------------------- chunk cache ------------- */

static uint32_t ro_find(const struct cow_device *dev, uint64_t b);

/* Reads upper bytes [off, off+len) into the cursor: from upper.data, except blocks replayed
 * into memory by a read-only open. */
static int upper_read(struct cow_device *dev, struct iovc *cur, uint64_t len, uint64_t off)
{
	if (!dev->ro_count) return iovc_pread(cur, dev->data_fd, len, off);
	while (len) {
		uint64_t b = off / COW_BLOCK_SIZE, in = off % COW_BLOCK_SIZE;
		uint64_t k = COW_BLOCK_SIZE - in < len ? COW_BLOCK_SIZE - in : len;
		uint32_t i = ro_find(dev, b);
		if (i < dev->ro_count && dev->ro_block[i] == b) {
			iovc_put(cur, dev->ro_data + (size_t)i * COW_BLOCK_SIZE + in, k);
		} else {
			int r = iovc_pread(cur, dev->data_fd, k, off);
			if (r) return r;
		}
		off += k;
		len -= k;
	}
	return 0;
}


#define CHUNK_BYTES ((size_t)LAYER_CHUNK_BLOCKS_MAX * COW_BLOCK_SIZE)
#define STORED_BYTES (CHUNK_BYTES + 65536)
#define INITIAL_CHUNK_BYTES ((size_t)LAYER_CHUNK_BLOCKS_DEFAULT * COW_BLOCK_SIZE)

int cow_chunk_cache_init(struct cow_chunk_cache *c)
{
	/* sized for the default chunk; grown (rarely, once) by cow_chunk_reserve for bigger ones */
	memset(c, 0, sizeof *c);
	for (unsigned i = 0; i < COW_CHUNK_CACHE_SLOTS; i++) {
		c->data[i] = malloc(INITIAL_CHUNK_BYTES);
		if (!c->data[i]) goto oom;
		c->cap[i] = INITIAL_CHUNK_BYTES;
	}
	c->stored = malloc(INITIAL_CHUNK_BYTES);
	c->stored_cap = INITIAL_CHUNK_BYTES;
	c->block = malloc(COW_BLOCK_SIZE);
	if (!c->stored || !c->block) goto oom;
	return 0;
oom:
	cow_chunk_cache_free(c);
	return log_error(-ENOMEM, "chunk cache: out of memory");
}

void cow_chunk_cache_free(struct cow_chunk_cache *c)
{
	for (unsigned i = 0; i < COW_CHUNK_CACHE_SLOTS; i++) {
		free(c->data[i]);
		c->data[i] = NULL;
	}
	free(c->stored);
	c->stored = NULL;
	free(c->block);
	c->block = NULL;
}

static int grow(uint8_t **p, size_t *cap, size_t need)
{
	if (need <= *cap) return 0;
	uint8_t *n = realloc(*p, need);
	if (!n) return log_error(-ENOMEM, "chunk cache: out of memory");
	*p = n;
	*cap = need;
	return 0;
}

int cow_chunk_reserve(struct cow_chunk_cache *c, unsigned slot, size_t bytes)
{
	return grow(&c->data[slot], &c->cap[slot], bytes);
}

const uint8_t *cow_chunk_lookup(const struct cow_device *dev, struct cow_chunk_cache *c, uint32_t layer,
				uint64_t extent)
{
	for (unsigned i = 0; i < COW_CHUNK_CACHE_SLOTS; i++)
		if (c->slot[i].valid && c->slot[i].layer == layer && c->slot[i].extent == extent &&
		    c->slot[i].generation == dev->chain_generation) {
			c->slot[i].stamp = ++c->clock;
			return c->data[i];
		}
	return NULL;
}

unsigned cow_chunk_claim(struct cow_chunk_cache *c)
{
	unsigned victim = 0;
	for (unsigned i = 0; i < COW_CHUNK_CACHE_SLOTS; i++)
		if (!c->slot[i].valid || (c->slot[victim].valid && c->slot[i].stamp < c->slot[victim].stamp)) victim = i;
	c->slot[victim].valid = false;
	return victim;
}

const uint8_t *cow_chunk_publish(const struct cow_device *dev, struct cow_chunk_cache *c, unsigned slot,
				 uint32_t layer, uint64_t extent)
{
	c->slot[slot].valid = true;
	c->slot[slot].layer = layer;
	c->slot[slot].extent = extent;
	c->slot[slot].generation = dev->chain_generation;
	c->slot[slot].stamp = ++c->clock;
	return c->data[slot];
}

int cow_chunk_check_extent(const struct cow_device *dev, uint32_t layer, uint64_t extent)
{
	uint64_t n;
	const struct layer_extent *ext = layer_get_extents(dev->layers[layer], &n);
	if (extent >= n || ext[extent].kind != LAYER_EXTENT_DATA || ext[extent].block_count > LAYER_CHUNK_BLOCKS_MAX)
		return log_error(-EIO, "read layer %s: bad extent %llu", dev->digests[layer], (unsigned long long)extent);
	return 0;
}

/* The decoded chunk of extent `extent` of chain layer `layer` (read synchronously if not cached). */
int cow_chunk_get(struct cow_device *dev, struct cow_chunk_cache *c, uint32_t layer, uint64_t extent,
		  const uint8_t **out)
{
	const uint8_t *hit = cow_chunk_lookup(dev, c, layer, extent);
	if (hit) {
		*out = hit;
		return 0;
	}
	int r = cow_chunk_check_extent(dev, layer, extent);
	if (r) return r;
	uint64_t n;
	const struct layer_extent *ext = layer_get_extents(dev->layers[layer], &n);
	unsigned victim = cow_chunk_claim(c);
	if ((r = cow_chunk_reserve(c, victim, (size_t)ext[extent].block_count * COW_BLOCK_SIZE))) return r;
	if (ext[extent].stored_bytes <= STORED_BYTES && !grow(&c->stored, &c->stored_cap, ext[extent].stored_bytes)) {
		int fd = layer_get_fd(dev->layers[layer]);
		size_t len = ext[extent].stored_bytes, done = 0;
		while (done < len) {
			ssize_t k = pread(fd, c->stored + done, len - done, (off_t)(ext[extent].offset_bytes + done));
			if (k < 0 && errno == EINTR) continue;
			if (k <= 0)
				return log_error(-EIO, "read layer %s extent %llu: %s", dev->digests[layer],
						 (unsigned long long)extent, k < 0 ? strerror(errno) : "short file");
			done += (size_t)k;
		}
		r = layer_decode_extent(dev->layers[layer], extent, c->stored, c->data[victim]);
	} else {
		r = layer_read_extent(dev->layers[layer], extent, c->data[victim]);
	}
	if (r) return r;
	*out = cow_chunk_publish(dev, c, victim, layer, extent);
	return 0;
}

/* Reads device bytes [off, off+len) as the chain presents them into the cursor (or into dst when
 * dst is non-NULL). */
static int read_lower(struct cow_device *dev, struct cow_chunk_cache *c, uint64_t off, uint64_t len,
		      struct iovc *cur, uint8_t *dst)
{
	uint64_t end = off + len;
	uint64_t k = cow_index_find(&dev->index, off / COW_BLOCK_SIZE);
	while (off < end) {
		uint64_t seg_end = end;
		const struct cow_index_entry *e = k < dev->index.count ? &dev->index.entries[k] : NULL;
		uint64_t es = e ? e->block_index * COW_BLOCK_SIZE : end;
		if (es > off) {
			/* a gap: zeros */
			if (es < seg_end) seg_end = es;
			if (dst) memset(dst, 0, seg_end - off), dst += seg_end - off;
			else iovc_put(cur, NULL, seg_end - off);
			off = seg_end;
			continue;
		}
		uint64_t ee = (e->block_index + e->block_count) * COW_BLOCK_SIZE;
		if (ee < seg_end) seg_end = ee;
		const uint8_t *chunk = NULL;
		int r = cow_chunk_get(dev, c, e->layer, e->extent, &chunk);
		if (r) return r;
		uint64_t n;
		const struct layer_extent *ext = layer_get_extents(dev->layers[e->layer], &n);
		uint64_t in = off - ext[e->extent].block_index * COW_BLOCK_SIZE;
		if (dst) memcpy(dst, chunk + in, seg_end - off), dst += seg_end - off;
		else iovc_put(cur, chunk + in, seg_end - off);
		off = seg_end;
		k++;
	}
	return 0;
}

/* 1 when the chain holds data in block b. */
static bool lower_has_data(const struct cow_device *dev, uint64_t b)
{
	uint64_t k = cow_index_find(&dev->index, b);
	return k < dev->index.count && dev->index.entries[k].block_index <= b;
}

static uint8_t state_of(const struct cow_device *dev, uint64_t b)
{
	return dev->state ? dev->state[b] : COW_UPPER_FALL;
}

/* ---------------------------------------------------------------- range locks ------------- */

static bool conflicts(const struct cow_range_lock *a, const struct cow_range_lock *b)
{
	return (a->exclusive || b->exclusive) && a->first_block < b->end_block && b->first_block < a->end_block;
}

/* Under dev->mu: 1 when an earlier entry (held or waiting) conflicts with lk. */
static bool range_blocked(struct cow_device *dev, const struct cow_range_lock *lk)
{
	for (struct cow_range_lock *o = dev->ranges; o && o != lk; o = o->next)
		if (conflicts(o, lk)) return true;
	return false;
}

static void range_enqueue(struct cow_device *dev, struct cow_range_lock *lk, uint64_t first, uint64_t end,
			  bool exclusive)
{
	lk->first_block = first;
	lk->end_block = end;
	lk->exclusive = exclusive;
	lk->next = NULL;
	lk->waiting = true;
	lk->ticket = dev->next_ticket++;
	struct cow_range_lock **pp = &dev->ranges;
	while (*pp) pp = &(*pp)->next;
	*pp = lk;
}

void cow_range_acquire(struct cow_device *dev, struct cow_range_lock *lk, uint64_t first, uint64_t end, bool exclusive)
{
	pthread_mutex_lock(&dev->mu);
	lk->wake = NULL;
	range_enqueue(dev, lk, first, end, exclusive);
	while (range_blocked(dev, lk)) pthread_cond_wait(&dev->range_cv, &dev->mu);
	lk->waiting = false;
	pthread_mutex_unlock(&dev->mu);
}

bool cow_range_try_acquire(struct cow_device *dev, struct cow_range_lock *lk, uint64_t first, uint64_t end,
			   bool exclusive, void (*wake)(struct cow_range_lock *lk))
{
	pthread_mutex_lock(&dev->mu);
	lk->wake = wake;
	range_enqueue(dev, lk, first, end, exclusive);
	bool granted = !range_blocked(dev, lk);
	if (granted) lk->waiting = false;
	pthread_mutex_unlock(&dev->mu);
	return granted;
}

void cow_range_release(struct cow_device *dev, struct cow_range_lock *lk)
{
	pthread_mutex_lock(&dev->mu);
	for (struct cow_range_lock **pp = &dev->ranges; *pp; pp = &(*pp)->next)
		if (*pp == lk) {
			*pp = lk->next;
			break;
		}
	/* grant parked asynchronous waiters that are no longer blocked; blocking waiters re-check */
	for (struct cow_range_lock *o = dev->ranges; o; o = o->next)
		if (o->waiting && o->wake && !range_blocked(dev, o)) {
			o->waiting = false;
			o->wake(o);
		}
	pthread_cond_broadcast(&dev->range_cv);
	pthread_mutex_unlock(&dev->mu);
}

/* ---------------------------------------------------------------- dirty blocks ------------ */

int cow_dirty_alloc(struct cow_device *dev, uint32_t max_blocks)
{
	dev->dirty_block = calloc(max_blocks, sizeof *dev->dirty_block);
	dev->dirty_data = malloc((size_t)max_blocks * COW_BLOCK_SIZE);
	if (!dev->dirty_block || !dev->dirty_data) return log_error(-ENOMEM, "open upper: out of memory for flush blocks");
	dev->dirty_max = dev->dirty_cap = max_blocks;
	return 0;
}

/* Under dev->mu: the slot of block b, or dirty_count when it has none. */
static uint32_t dirty_find(const struct cow_device *dev, uint64_t b)
{
	for (uint32_t i = 0; i < dev->dirty_count; i++)
		if (dev->dirty_block[i] == b) return i;
	return dev->dirty_count;
}

/* Under dev->mu (range lock of the write held): keeps the content of blocks [first, end) of
 * upper.data, just written, for the next flush's record; past the cap, marks the overflow. */
static void dirty_note_locked(struct cow_device *dev, uint64_t first, uint64_t end)
{
	if (!dev->dirty_max || dev->dirty_overflow) return;
	if (end - first > dev->dirty_cap) {
		dev->dirty_overflow = true;
		return;
	}
	for (uint64_t b = first; b < end; b++) {
		uint32_t i = dirty_find(dev, b);
		if (i == dev->dirty_count) {
			if (dev->dirty_count >= dev->dirty_cap) {
				dev->dirty_overflow = true;
				return;
			}
			dev->dirty_block[dev->dirty_count++] = b;
		}
		/* from the page cache: the data was written a moment ago */
		if (upper_pread(dev->data_fd, dev->dirty_data + (size_t)i * COW_BLOCK_SIZE, COW_BLOCK_SIZE,
				b * COW_BLOCK_SIZE)) {
			dev->dirty_overflow = true;
			return;
		}
	}
}

/* Under dev->mu: blocks [first, end) no longer need their content journaled (they read zero). */
static void dirty_forget_locked(struct cow_device *dev, uint64_t first, uint64_t end)
{
	for (uint32_t i = 0; i < dev->dirty_count;) {
		uint64_t b = dev->dirty_block[i];
		if (b < first || b >= end) {
			i++;
			continue;
		}
		uint32_t last = --dev->dirty_count;
		if (i != last) {
			dev->dirty_block[i] = dev->dirty_block[last];
			memcpy(dev->dirty_data + (size_t)i * COW_BLOCK_SIZE, dev->dirty_data + (size_t)last * COW_BLOCK_SIZE,
			       COW_BLOCK_SIZE);
		}
	}
}

/* ---------------------------------------------------------------- state changes ----------- */

/* Under dev->mu: record a completed change of [b, b+n) to state s. */
static int log_change_locked(struct cow_device *dev, uint64_t b, uint64_t n, uint8_t s)
{
	if (dev->map_fd < 0) return 0; /* no journal (scratch) */
	if (dev->change_count > dev->change_merge_floor) {
		struct cow_change *p = &dev->changes[dev->change_count - 1];
		if (p->state == s && p->block_index + p->block_count == b && (uint64_t)p->block_count + n <= UINT32_MAX) {
			p->block_count += (uint32_t)n;
			return 0;
		}
	}
	if (dev->change_count == dev->change_cap) {
		uint64_t nc = dev->change_cap ? dev->change_cap * 2 : 256;
		struct cow_change *nv = realloc(dev->changes, nc * sizeof *nv);
		if (!nv) return log_error(-ENOMEM, "record upper change: out of memory");
		dev->changes = nv;
		dev->change_cap = nc;
	}
	dev->changes[dev->change_count++] = (struct cow_change){ .block_index = b, .block_count = (uint32_t)n, .state = s };
	return 0;
}

/* Under dev->mu: sets the state of [first, end) to s and records the changed runs. */
static int set_state_locked(struct cow_device *dev, uint64_t first, uint64_t end, uint8_t s)
{
	int r = 0;
	for (uint64_t b = first; b < end && !r;) {
		if (dev->state[b] == s) {
			b++;
			continue;
		}
		uint64_t e = b;
		while (e < end && dev->state[e] != s && e - b < UINT32_MAX) {
			if (dev->state[e] == COW_UPPER_DATA) dev->stats.upper_blocks--;
			dev->state[e] = s;
			e++;
		}
		if (s == COW_UPPER_DATA) dev->stats.upper_blocks += e - b;
		r = log_change_locked(dev, b, e - b, s);
		b = e;
	}
	return r;
}

/* After a state change (dev->mu released): a writer that never flushes must not grow the change
 * list without bound: flushing early is always allowed. */
static int bound_changes(struct cow_device *dev, int r)
{
	pthread_mutex_lock(&dev->mu);
	bool too_many = dev->change_count > COW_PENDING_CHANGES_MAX;
	pthread_mutex_unlock(&dev->mu);
	if (!r && too_many) r = cow_flush(dev);
	return r;
}

int cow_set_state(struct cow_device *dev, uint64_t first, uint64_t end, uint8_t s)
{
	pthread_mutex_lock(&dev->mu);
	if (s != COW_UPPER_DATA) dirty_forget_locked(dev, first, end);
	int r = set_state_locked(dev, first, end, s);
	pthread_mutex_unlock(&dev->mu);
	return bound_changes(dev, r);
}

int cow_write_done(struct cow_device *dev, uint64_t first, uint64_t end)
{
	/* one hold of dev->mu: a flush captures both the content and the state change, or neither */
	pthread_mutex_lock(&dev->mu);
	dirty_note_locked(dev, first, end);
	int r = set_state_locked(dev, first, end, COW_UPPER_DATA);
	pthread_mutex_unlock(&dev->mu);
	return bound_changes(dev, r);
}

/* ---------------------------------------------------------------- flush ------------------- */

/* Under journal_mu: writes the record at journal_end and syncs upper.map.  Inside the zero tail
 * that is an overwrite within the file; past it, the same write grows the tail (record + zeros,
 * one sync).  *rec may be replaced (grown). */
static int journal_write(struct cow_device *dev, uint8_t **rec, uint64_t rec_len)
{
	int r;
	uint64_t tail_end = dev->map_tail_end;
	if (dev->journal_end + rec_len > tail_end) {
		tail_end = (dev->journal_end + rec_len + COW_MAP_TAIL_STEP) / COW_MAP_TAIL_STEP * COW_MAP_TAIL_STEP;
		uint8_t *grown = realloc(*rec, tail_end - dev->journal_end);
		if (!grown) return log_error(-ENOMEM, "append journal %s: out of memory", dev->map_path);
		memset(grown + rec_len, 0, tail_end - dev->journal_end - rec_len);
		*rec = grown;
		r = vfs_pwrite_full(dev->map_fd, grown, tail_end - dev->journal_end, dev->journal_end);
	} else {
		r = vfs_pwrite_full(dev->map_fd, *rec, rec_len, dev->journal_end);
	}
	if (!r) r = vfs_fdatasync(dev->map_fd);
	if (r) return log_error(r, "append journal %s: %s", dev->map_path, strerror(-r));
	dev->map_tail_end = tail_end;
	return 0;
}

/* Under journal_mu, once a record of rec_len bytes holding the first n pending changes is
 * durable: they are the journaled state now. */
static void journal_commit(struct cow_device *dev, uint64_t n, uint64_t rec_len)
{
	dev->journal_end += rec_len;
	dev->journal_seq++;
	pthread_mutex_lock(&dev->mu);
	for (uint64_t i = 0; i < n; i++)
		memset(dev->jstate + dev->changes[i].block_index, (int)dev->changes[i].state, dev->changes[i].block_count);
	if (n && dev->change_count > n)
		memmove(dev->changes, dev->changes + n, (dev->change_count - n) * sizeof *dev->changes);
	dev->change_count -= n;
	dev->changes_dropped += n;
	dev->change_merge_floor = dev->change_merge_floor > n ? dev->change_merge_floor - n : 0;
	pthread_mutex_unlock(&dev->mu);
}

/* Journal bytes past which flushes stop carrying payloads (and the next checkpoint compacts). */
static uint64_t journal_room(const struct cow_device *dev)
{
	return dev->journal_limit < COW_JOURNAL_PAYLOAD_BYTES_MAX ? dev->journal_limit : COW_JOURNAL_PAYLOAD_BYTES_MAX;
}

/* Under journal_mu, with every payload of the journal durable in upper.data: rewrite upper.map
 * as a snapshot of the journaled state. */
static int compact_locked(struct cow_device *dev)
{
	assert(dev->journal_last_payload_seq < dev->journal_covered_seq);
	int r = cow_map_rewrite(dev);
	if (!r) dev->stats_compactions++;
	return r;
}

int cow_flush_journal_payload(struct cow_device *dev, bool *done)
{
	uint8_t *rec = NULL;
	uint64_t rec_len = 0;
	int r = 0;
	*done = false;
	if (dev->map_fd < 0 || !dev->dirty_max) return 0;
	pthread_mutex_lock(&dev->journal_mu);
	pthread_mutex_lock(&dev->mu);
	uint64_t n = dev->change_count;
	uint32_t pc = dev->dirty_count;
	/* Only overwrites of blocks whose content no uncovered payload holds: a sync of upper.data
	 * alone makes them durable (no record, no allocation), cheaper than journaling them. */
	bool uncovered = dev->journal_last_payload_seq && dev->journal_last_payload_seq >= dev->journal_covered_seq;
	bool overwrites_only = n == 0 && pc > 0 && !uncovered;
	if (dev->dirty_overflow || dev->checkpoints_in_flight || overwrites_only ||
	    dev->journal_end - dev->journal_offset + cow_journal_record_bytes(n, pc) > journal_room(dev)) {
		pthread_mutex_unlock(&dev->mu);
		pthread_mutex_unlock(&dev->journal_mu);
		return 0; /* a checkpoint */
	}
	if (n == 0 && pc == 0) {
		/* every completed write is journaled or was synced by a completed checkpoint */
		pthread_mutex_unlock(&dev->mu);
		pthread_mutex_unlock(&dev->journal_mu);
		*done = true;
		return 0;
	}
	r = cow_journal_record(dev->changes, n, dev->journal_seq, 0, 0, dev->dirty_block, dev->dirty_data, pc, &rec,
			       &rec_len);
	if (!r) {
		dev->dirty_count = 0;
		dev->change_merge_floor = n; /* later changes must not merge into captured entries */
	}
	pthread_mutex_unlock(&dev->mu);
	if (!r) r = journal_write(dev, &rec, rec_len);
	if (!r) {
		if (pc) dev->journal_last_payload_seq = dev->journal_seq;
		journal_commit(dev, n, rec_len);
		if (pc) dev->stats_payload_flushes++;
		*done = true;
	} else {
		/* the captured blocks are in no durable record: the next flush syncs upper.data */
		pthread_mutex_lock(&dev->mu);
		dev->dirty_overflow = true;
		pthread_mutex_unlock(&dev->mu);
	}
	pthread_mutex_unlock(&dev->journal_mu);
	free(rec);
	return r;
}

struct cow_flush_ticket cow_flush_capture(struct cow_device *dev)
{
	struct cow_flush_ticket t;
	/* journal_mu: records before covers_seq were appended (their payloads written to upper.data)
	 * before this point, records after it are captured after it */
	pthread_mutex_lock(&dev->journal_mu);
	pthread_mutex_lock(&dev->mu);
	t.target = dev->changes_dropped + dev->change_count;
	t.covers_seq = dev->journal_seq;
	dev->change_merge_floor = dev->change_count;
	/* the coming sync of upper.data covers every block written so far */
	dev->dirty_count = 0;
	dev->dirty_overflow = false;
	dev->checkpoints_in_flight++;
	pthread_mutex_unlock(&dev->mu);
	pthread_mutex_unlock(&dev->journal_mu);
	return t;
}

int cow_flush_journal(struct cow_device *dev, const struct cow_flush_ticket *t, int sync_result)
{
	uint8_t *rec = NULL;
	uint64_t rec_len = 0, n = 0;
	int r = sync_result;
	pthread_mutex_lock(&dev->journal_mu);
	if (r || dev->map_fd < 0) goto out;
	pthread_mutex_lock(&dev->mu);
	if (dev->changes_dropped < t->target) {
		n = t->target - dev->changes_dropped;
		if (n > dev->change_count) n = dev->change_count;
	}
	bool uncovered = dev->journal_last_payload_seq && dev->journal_last_payload_seq >= dev->journal_covered_seq;
	if (n || uncovered)
		r = cow_journal_record(dev->changes, n, dev->journal_seq, COW_RECORD_CHECKPOINT, t->covers_seq, NULL, NULL,
				       0, &rec, &rec_len);
	pthread_mutex_unlock(&dev->mu);
	if (r) goto out;
	if (rec) {
		if ((r = journal_write(dev, &rec, rec_len))) goto out;
		journal_commit(dev, n, rec_len);
		if (t->covers_seq > dev->journal_covered_seq) dev->journal_covered_seq = t->covers_seq;
	}
	dev->stats_checkpoints++;
	/* past half the room, compact now (payloads covered): payload flushes need room again */
	if (dev->journal_end - dev->journal_offset > journal_room(dev) / 2 &&
	    dev->journal_last_payload_seq < dev->journal_covered_seq)
		r = compact_locked(dev);
out:
	pthread_mutex_lock(&dev->mu);
	dev->checkpoints_in_flight--;
	/* a failed checkpoint forgot blocks it did not make durable: the next one must sync */
	if (r) dev->dirty_overflow = true;
	pthread_mutex_unlock(&dev->mu);
	pthread_mutex_unlock(&dev->journal_mu);
	free(rec);
	return r;
}

int cow_flush(struct cow_device *dev)
{
	if (dev->data_fd < 0) return 0; /* read-only image: nothing to make durable */
	bool done;
	int r = cow_flush_journal_payload(dev, &done);
	if (r || done) return r;
	struct cow_flush_ticket t = cow_flush_capture(dev);
	r = vfs_fdatasync(dev->data_fd);
	if (r) log_error(r, "flush upper %s: %s", dev->data_path, strerror(-r));
	return cow_flush_journal(dev, &t, r);
}

int cow_journal_compact(struct cow_device *dev)
{
	int r = 0;
	if (dev->map_fd < 0) return 0;
	pthread_mutex_lock(&dev->journal_mu);
	if (dev->journal_last_payload_seq && !dev->checkpoints_in_flight) {
		/* the payloads' blocks are in upper.data (as new or newer): make that durable */
		r = vfs_fdatasync(dev->data_fd);
		if (r) {
			log_error(r, "flush upper %s: %s", dev->data_path, strerror(-r));
		} else {
			dev->journal_covered_seq = dev->journal_seq;
			r = compact_locked(dev);
		}
	}
	pthread_mutex_unlock(&dev->journal_mu);
	return r;
}

static int replay_to_file(void *ctx, uint64_t b, const uint8_t *data)
{
	struct cow_device *dev = ctx;
	return upper_pwrite(dev->data_fd, data, COW_BLOCK_SIZE, b * COW_BLOCK_SIZE);
}

/* Position of block b in the sorted read-only overlay, or where it would go. */
static uint32_t ro_find(const struct cow_device *dev, uint64_t b)
{
	uint32_t lo = 0, hi = dev->ro_count;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (dev->ro_block[mid] < b) lo = mid + 1;
		else hi = mid;
	}
	return lo;
}

static int replay_to_memory(void *ctx, uint64_t b, const uint8_t *data)
{
	struct cow_device *dev = ctx;
	uint32_t i = ro_find(dev, b);
	if (i == dev->ro_count || dev->ro_block[i] != b) {
		if (dev->ro_count == dev->ro_cap) {
			/* bounded by the journal's payloads, which open read whole */
			uint32_t nc = dev->ro_cap ? dev->ro_cap * 2 : 64;
			uint64_t *nb = realloc(dev->ro_block, nc * sizeof *nb);
			if (nb) dev->ro_block = nb;
			uint8_t *nd = nb ? realloc(dev->ro_data, (size_t)nc * COW_BLOCK_SIZE) : NULL;
			if (!nd) return log_error(-ENOMEM, "open container %s read-only: out of memory for replay", dev->name);
			dev->ro_data = nd;
			dev->ro_cap = nc;
		}
		memmove(dev->ro_block + i + 1, dev->ro_block + i, (dev->ro_count - i) * sizeof *dev->ro_block);
		memmove(dev->ro_data + (size_t)(i + 1) * COW_BLOCK_SIZE, dev->ro_data + (size_t)i * COW_BLOCK_SIZE,
			(size_t)(dev->ro_count - i) * COW_BLOCK_SIZE);
		dev->ro_block[i] = b;
		dev->ro_count++;
	}
	memcpy(dev->ro_data + (size_t)i * COW_BLOCK_SIZE, data, COW_BLOCK_SIZE); /* a later payload wins */
	return 0;
}

int cow_map_recover_readonly(struct cow_device *dev, const uint8_t *buf, const struct cow_map_parsed *p)
{
	uint64_t n = 0;
	return cow_map_replay(buf, p, dev->jstate, replay_to_memory, dev, &n);
}

int cow_map_recover(struct cow_device *dev, const uint8_t *buf, const struct cow_map_parsed *p)
{
	uint64_t n = 0;
	int r = cow_map_replay(buf, p, dev->jstate, replay_to_file, dev, &n);
	if (r) return r;
	if (n && (r = vfs_fdatasync(dev->data_fd))) return log_error(r, "replay upper %s: %s", dev->data_path, strerror(-r));
	if (n) log_info("open container %s: replayed %llu flushed blocks from the journal", dev->name, (unsigned long long)n);
	/* the payloads are in upper.data now; a new map drops them (and upgrades version 1) */
	pthread_mutex_lock(&dev->journal_mu);
	dev->journal_covered_seq = dev->journal_seq;
	r = compact_locked(dev);
	pthread_mutex_unlock(&dev->journal_mu);
	return r;
}

/* ---------------------------------------------------------------- validation -------------- */

int cow_validate(const struct cow_device *dev, const struct cow_request *req)
{
	switch (req->op) {
	case COW_OP_FLUSH:
		return 0;
	case COW_OP_READ:
	case COW_OP_WRITE:
		if (req->length_bytes > COW_REQUEST_BYTES_MAX) return -EINVAL;
		if (req->iov_count > 0 && !req->iov) return -EINVAL;
		if (req->iov_count > COW_IOV_MAX) return -EINVAL;
		{
			uint64_t total = 0;
			for (unsigned i = 0; i < req->iov_count; i++) {
				if (ck_add_u64(total, req->iov[i].iov_len, &total)) return -EINVAL;
				if (req->iov[i].iov_len && !req->iov[i].iov_base) return -EINVAL;
			}
			if (total != req->length_bytes) return -EINVAL;
		}
		break;
	case COW_OP_DISCARD:
	case COW_OP_WRITE_ZEROES:
		break;
	default:
		return -EINVAL;
	}
	if (req->offset_bytes % COW_SECTOR_SIZE || req->length_bytes % COW_SECTOR_SIZE) return -EINVAL;
	if (!ck_range_within(req->offset_bytes, req->length_bytes, dev->size_bytes)) return -EINVAL;
	if (req->flags & ~(unsigned)(COW_FUA | COW_NO_HOLE)) return -EINVAL;
	return 0;
}

/* ---------------------------------------------------------------- operations -------------- */

static int exec_read(struct cow_device *dev, struct cow_chunk_cache *c, const struct cow_request *req)
{
	struct iovc cur = { .iov = req->iov, .n = req->iov_count };
	uint64_t off = req->offset_bytes, end = off + req->length_bytes;
	while (off < end) {
		uint64_t b = off / COW_BLOCK_SIZE;
		uint8_t s = state_of(dev, b);
		uint64_t e = b + 1;
		while (e * COW_BLOCK_SIZE < end && state_of(dev, e) == s) e++;
		uint64_t seg_end = e * COW_BLOCK_SIZE < end ? e * COW_BLOCK_SIZE : end;
		int r = 0;
		if (s == COW_UPPER_DATA) r = upper_read(dev, &cur, seg_end - off, off);
		else if (s == COW_UPPER_ZERO) iovc_put(&cur, NULL, seg_end - off);
		else r = read_lower(dev, c, off, seg_end - off, &cur, NULL);
		if (r) return r;
		off = seg_end;
	}
	return 0;
}

/* The current contents of block b into buf (4 KiB); *copied set when it came from the chain. */
static int read_block(struct cow_device *dev, struct cow_chunk_cache *c, uint64_t b, uint8_t *buf, bool *copied)
{
	uint8_t s = state_of(dev, b);
	*copied = false;
	if (s == COW_UPPER_DATA) return upper_pread(dev->data_fd, buf, COW_BLOCK_SIZE, b * COW_BLOCK_SIZE);
	if (s == COW_UPPER_ZERO) {
		memset(buf, 0, COW_BLOCK_SIZE);
		return 0;
	}
	*copied = lower_has_data(dev, b);
	return read_lower(dev, c, b * COW_BLOCK_SIZE, COW_BLOCK_SIZE, NULL, buf);
}

/* Writes [off, off+len) from the cursor (zeros when cur->iov is NULL) into the upper: partial
 * head/tail blocks are read-modify-written, whole blocks written directly. */
static int write_range(struct cow_device *dev, struct cow_chunk_cache *c, uint64_t off, uint64_t len, struct iovc *cur)
{
	uint64_t end = off + len;
	uint64_t first = off / COW_BLOCK_SIZE, last_end = DIV_ROUND_UP(end, COW_BLOCK_SIZE);
	uint64_t copy_ups = 0;
	uint8_t *blk = c->block;
	int r;
	while (off < end) {
		uint64_t b = off / COW_BLOCK_SIZE;
		uint64_t bstart = b * COW_BLOCK_SIZE;
		if (off != bstart || end - off < COW_BLOCK_SIZE) {
			/* partial block: read-modify-write */
			uint64_t k = (bstart + COW_BLOCK_SIZE < end ? bstart + COW_BLOCK_SIZE : end) - off;
			bool copied;
			if ((r = read_block(dev, c, b, blk, &copied))) return r;
			copy_ups += copied;
			iovc_get(cur, blk + (off - bstart), k);
			if ((r = upper_pwrite(dev->data_fd, blk, COW_BLOCK_SIZE, bstart))) return r;
			off += k;
		} else {
			uint64_t whole = (end - off) / COW_BLOCK_SIZE * COW_BLOCK_SIZE;
			if ((r = iovc_pwrite(cur, dev->data_fd, whole, off))) return r;
			off += whole;
		}
	}
	if (copy_ups) {
		pthread_mutex_lock(&dev->mu);
		dev->stats.copy_ups += copy_ups;
		pthread_mutex_unlock(&dev->mu);
	}
	return cow_write_done(dev, first, last_end);
}

/* Whole blocks of [off, off+len) become zero state (holes punched); partial ends are zeroed by
 * read-modify-write unless they already read zero. */
static int zero_range(struct cow_device *dev, struct cow_chunk_cache *c, uint64_t off, uint64_t len)
{
	uint64_t end = off + len;
	uint64_t wf = DIV_ROUND_UP(off, COW_BLOCK_SIZE), we = end / COW_BLOCK_SIZE;
	struct iovc zero = { 0 };
	int r;
	if (wf >= we) {
		/* within one block or straddling two without a whole one */
		for (uint64_t b = off / COW_BLOCK_SIZE; b * COW_BLOCK_SIZE < end; b++) {
			uint64_t s = b * COW_BLOCK_SIZE > off ? b * COW_BLOCK_SIZE : off;
			uint64_t e = (b + 1) * COW_BLOCK_SIZE < end ? (b + 1) * COW_BLOCK_SIZE : end;
			uint8_t st = state_of(dev, b);
			if (st == COW_UPPER_ZERO || (st == COW_UPPER_FALL && !lower_has_data(dev, b))) continue;
			if ((r = write_range(dev, c, s, e - s, &zero))) return r;
		}
		return 0;
	}
	if (off < wf * COW_BLOCK_SIZE) {
		uint64_t b = off / COW_BLOCK_SIZE;
		uint8_t st = state_of(dev, b);
		if (!(st == COW_UPPER_ZERO || (st == COW_UPPER_FALL && !lower_has_data(dev, b))))
			if ((r = write_range(dev, c, off, wf * COW_BLOCK_SIZE - off, &zero))) return r;
	}
	if (end > we * COW_BLOCK_SIZE) {
		uint8_t st = state_of(dev, we);
		if (!(st == COW_UPPER_ZERO || (st == COW_UPPER_FALL && !lower_has_data(dev, we))))
			if ((r = write_range(dev, c, we * COW_BLOCK_SIZE, end - we * COW_BLOCK_SIZE, &zero))) return r;
	}
	/* punch only where the upper holds data */
	for (uint64_t b = wf; b < we;) {
		if (dev->state[b] != COW_UPPER_DATA) {
			b++;
			continue;
		}
		uint64_t e = b;
		while (e < we && dev->state[e] == COW_UPPER_DATA) e++;
		r = vfs_punch_hole(dev->data_fd, b * COW_BLOCK_SIZE, (e - b) * COW_BLOCK_SIZE);
		if (r) return log_error(r, "punch upper %s: %s", dev->data_path, strerror(-r));
		b = e;
	}
	return cow_set_state(dev, wf, we, COW_UPPER_ZERO);
}

void cow_count_op(struct cow_device *dev, enum cow_op op)
{
	pthread_mutex_lock(&dev->mu);
	switch (op) {
	case COW_OP_READ: dev->stats.reads++; break;
	case COW_OP_WRITE: dev->stats.writes++; break;
	case COW_OP_FLUSH: dev->stats.flushes++; break;
	case COW_OP_DISCARD: dev->stats.discards++; break;
	case COW_OP_WRITE_ZEROES: dev->stats.write_zeroes++; break;
	}
	pthread_mutex_unlock(&dev->mu);
}

bool cow_req_modifies(const struct cow_request *req)
{
	return req->op != COW_OP_READ && req->op != COW_OP_FLUSH;
}

void cow_req_blocks(const struct cow_request *req, uint64_t *first, uint64_t *end)
{
	*first = req->offset_bytes / COW_BLOCK_SIZE;
	*end = DIV_ROUND_UP(req->offset_bytes + req->length_bytes, COW_BLOCK_SIZE);
}

int cow_exec_locked(struct cow_device *dev, struct cow_chunk_cache *c, const struct cow_request *req)
{
	switch (req->op) {
	case COW_OP_READ:
		return exec_read(dev, c, req);
	case COW_OP_WRITE: {
		struct iovc cur = { .iov = req->iov, .n = req->iov_count };
		return write_range(dev, c, req->offset_bytes, req->length_bytes, &cur);
	}
	case COW_OP_WRITE_ZEROES:
		if (req->flags & COW_NO_HOLE) {
			struct iovc zero = { 0 };
			return write_range(dev, c, req->offset_bytes, req->length_bytes, &zero);
		}
		/* fall through */
	case COW_OP_DISCARD:
		return zero_range(dev, c, req->offset_bytes, req->length_bytes);
	default:
		return -EINVAL;
	}
}

int cow_exec(struct cow_device *dev, struct cow_chunk_cache *c, const struct cow_request *req)
{
	struct cow_range_lock lk;
	int r;
	bool modifies = cow_req_modifies(req);
	if (modifies && cow_device_is_readonly(dev)) return -EROFS;
	cow_count_op(dev, req->op);
	if (req->op == COW_OP_FLUSH) return cow_flush(dev);
	if (req->length_bytes == 0) return (req->flags & COW_FUA) ? cow_flush(dev) : 0;
	uint64_t first, end;
	cow_req_blocks(req, &first, &end);
	cow_range_acquire(dev, &lk, first, end, modifies);
	r = cow_exec_locked(dev, c, req);
	cow_range_release(dev, &lk);
	if (!r && modifies && (req->flags & COW_FUA)) r = cow_flush(dev);
	return r;
}

bool cow_upper_direct(const struct cow_device *dev, const struct cow_request *req)
{
	if (!dev->state || req->length_bytes == 0) return false;
	uint64_t first, end;
	cow_req_blocks(req, &first, &end);
	if (req->op == COW_OP_READ) {
		if (dev->ro_count) return false; /* blocks replayed into memory: exec_read */
		for (uint64_t b = first; b < end; b++)
			if (dev->state[b] != COW_UPPER_DATA) return false;
		return true;
	}
	if (req->op == COW_OP_WRITE) {
		if (req->offset_bytes % COW_BLOCK_SIZE && dev->state[first] != COW_UPPER_DATA) return false;
		if ((req->offset_bytes + req->length_bytes) % COW_BLOCK_SIZE && dev->state[end - 1] != COW_UPPER_DATA)
			return false;
		return true;
	}
	return false;
}

bool cow_read_all_lower(const struct cow_device *dev, const struct cow_request *req)
{
	if (!dev->state) return true;
	uint64_t first, end;
	cow_req_blocks(req, &first, &end);
	for (uint64_t b = first; b < end; b++)
		if (dev->state[b] != COW_UPPER_FALL) return false;
	return true;
}
