/* cow devices: open (chain + merged index + upper), close, the synchronous API, block status,
 * statistics, commit and the container check.
 *
 * Upper files of a container (in its directory): upper.data (sparse, block i at i*4096) and
 * upper.map (cow/upper_map.c).  upper.map names the chain it sits on (layer count and top
 * digest), which makes commit atomic: the layer is written first, then the container record with
 * the new chain, then a fresh empty upper.map.  At open, a record one layer ahead of upper.map
 * means the crash hit between the last two steps: the upper is already in the new layer and is
 * reset. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/checked.h"
#include "common/log.h"
#include "common/vfs.h"
#include "cow/cow_internal.h"

#define COMMIT_ZSTD_LEVEL 3

static int rebuild_index(struct cow_device *dev)
{
	const struct layer_extent *ext[LAYER_CHAIN_MAX];
	uint64_t counts[LAYER_CHAIN_MAX];
	struct cow_index idx = { 0 };
	for (uint32_t i = 0; i < dev->layer_count; i++) ext[i] = layer_get_extents(dev->layers[i], &counts[i]);
	int r = cow_index_build(&idx, ext, counts, dev->layer_count, dev->size_blocks);
	if (r) return r;
	cow_index_free(&dev->index);
	dev->index = idx;
	dev->max_stored_bytes = 0;
	for (uint32_t i = 0; i < dev->layer_count; i++)
		for (uint64_t k = 0; k < counts[i]; k++)
			if (ext[i][k].kind == LAYER_EXTENT_DATA && ext[i][k].stored_bytes > dev->max_stored_bytes)
				dev->max_stored_bytes = ext[i][k].stored_bytes;
	dev->chain_generation++;
	dev->stats.index_extents = idx.count;
	dev->stats.index_bytes = idx.count * sizeof(struct cow_index_entry);
	return 0;
}

/* Adds an open layer on top of the chain (the device owns it from here, also on failure). */
static int push_layer(struct cow_device *dev, struct layer *l, const char *digest)
{
	const struct layer_info *info = layer_get_info(l);
	if (dev->layer_count >= LAYER_CHAIN_MAX) {
		layer_close(l);
		return log_error(-E2BIG, "open chain: more than %u layers", LAYER_CHAIN_MAX);
	}
	if (info->virtual_size_bytes > dev->size_bytes) {
		/* a layer may be smaller (the device grew), never larger */
		layer_close(l);
		return log_error(-EIO, "open chain: layer %s is %llu bytes, device %llu", digest,
				 (unsigned long long)info->virtual_size_bytes, (unsigned long long)dev->size_bytes);
	}
	dev->layers[dev->layer_count] = l;
	snprintf(dev->digests[dev->layer_count], SHA256_DIGEST_STRLEN, "%s", digest);
	dev->layer_count++;
	return 0;
}

static int open_layer_into(struct cow_device *dev, const char *digest)
{
	struct layer *l;
	int r = layer_open(dev->store, digest, false, &l);
	if (r) return r;
	return push_layer(dev, l, digest);
}

static struct cow_device *device_alloc(struct layer_store *store, enum cow_device_kind kind, uint64_t size_bytes)
{
	struct cow_device *dev = calloc(1, sizeof *dev);
	if (!dev) return NULL;
	dev->store = store;
	dev->kind = kind;
	dev->size_bytes = size_bytes;
	dev->size_blocks = size_bytes / COW_BLOCK_SIZE;
	dev->lock_fd = dev->data_fd = dev->map_fd = -1;
	dev->journal_limit = COW_JOURNAL_BYTES_MAX;
	pthread_mutex_init(&dev->mu, NULL);
	pthread_mutex_init(&dev->journal_mu, NULL);
	pthread_mutex_init(&dev->sync_mu, NULL);
	pthread_cond_init(&dev->range_cv, NULL);
	if (cow_chunk_cache_init(&dev->sync_cache)) {
		free(dev);
		return NULL;
	}
	return dev;
}

static void device_free(struct cow_device *dev)
{
	for (uint32_t i = 0; i < dev->layer_count; i++) layer_close(dev->layers[i]);
	cow_index_free(&dev->index);
	if (dev->data_fd >= 0) vfs_close(dev->data_fd);
	if (dev->map_fd >= 0) vfs_close(dev->map_fd);
	if (dev->lock_fd >= 0) close(dev->lock_fd);
	free(dev->state);
	free(dev->jstate);
	free(dev->changes);
	free(dev->dirty_block);
	free(dev->dirty_data);
	free(dev->ro_block);
	free(dev->ro_data);
	cow_chunk_cache_free(&dev->sync_cache);
	pthread_mutex_destroy(&dev->mu);
	pthread_mutex_destroy(&dev->journal_mu);
	pthread_mutex_destroy(&dev->sync_mu);
	pthread_cond_destroy(&dev->range_cv);
	free(dev);
}

static int check_size(uint64_t size_bytes)
{
	if (size_bytes == 0 || size_bytes % COW_BLOCK_SIZE || size_bytes > LAYER_VIRTUAL_SIZE_MAX)
		return log_error(-EINVAL, "open device: size %llu is not a positive multiple of 4096 within limits",
				 (unsigned long long)size_bytes);
	return 0;
}

static int alloc_states(struct cow_device *dev)
{
	dev->state = calloc(dev->size_blocks, 1);
	dev->jstate = calloc(dev->size_blocks, 1);
	if (!dev->state || !dev->jstate) return log_error(-ENOMEM, "open upper: out of memory for block states");
	return 0;
}

/* Writes a fresh empty upper.map naming the current chain and empties upper.data. */
static int upper_reset_files(struct cow_device *dev)
{
	int r;
	dev->map_generation++;
	memset(dev->jstate, 0, dev->size_blocks);
	if (dev->kind == COW_KIND_CONTAINER && (r = cow_map_rewrite(dev))) return r;
	if ((r = vfs_ftruncate(dev->data_fd, 0)) || (r = vfs_ftruncate(dev->data_fd, dev->size_bytes)) ||
	    (r = vfs_fsync(dev->data_fd)))
		return log_error(r, "reset upper %s: %s", dev->data_path, strerror(-r));
	pthread_mutex_lock(&dev->mu);
	memset(dev->state, 0, dev->size_blocks);
	dev->change_count = 0;
	dev->change_merge_floor = 0;
	dev->dirty_count = 0;
	dev->dirty_overflow = false;
	dev->stats.upper_blocks = 0;
	pthread_mutex_unlock(&dev->mu);
	return 0;
}

int cow_map_rewrite(struct cow_device *dev)
{
	uint8_t *buf = NULL;
	uint64_t len = 0;
	if (!dev->journal_seq) dev->journal_seq = 1; /* sequence numbers go on across rewrites */
	int r = cow_map_serialize(dev->jstate, dev->size_blocks, dev->map_generation, dev->layer_count,
				  dev->layer_count ? dev->digests[dev->layer_count - 1] : "", dev->journal_seq, &buf, &len);
	if (r) return r;
	/* followed by a zero tail (see COW_MAP_TAIL_STEP) */
	uint64_t padded = (len + COW_MAP_TAIL_STEP) / COW_MAP_TAIL_STEP * COW_MAP_TAIL_STEP;
	uint8_t *grown = realloc(buf, padded);
	if (!grown) {
		free(buf);
		return log_error(-ENOMEM, "write upper map %s: out of memory", dev->map_path);
	}
	buf = grown;
	memset(buf + len, 0, padded - len);
	r = vfs_write_file_atomic(dev->map_path, buf, padded);
	free(buf);
	if (r) return log_error(r, "write upper map %s: %s", dev->map_path, strerror(-r));
	int fd = vfs_open(dev->map_path, O_RDWR, 0);
	if (fd < 0) return log_error(fd, "open upper map %s: %s", dev->map_path, strerror(-fd));
	if (dev->map_fd >= 0) vfs_close(dev->map_fd);
	dev->map_fd = fd;
	dev->journal_offset = dev->journal_end = len;
	dev->map_tail_end = padded;
	dev->journal_covered_seq = dev->journal_seq;
	dev->journal_last_payload_seq = 0;
	return 0;
}

static int open_upper_data(struct cow_device *dev, bool excl)
{
	int fd = vfs_open(dev->data_path, O_RDWR | O_CREAT | (excl ? O_EXCL : 0), 0644);
	if (fd < 0) return log_error(fd, "open upper %s: %s", dev->data_path, strerror(-fd));
	dev->data_fd = fd;
	uint64_t sz;
	int r = vfs_size(fd, &sz);
	if (r) return log_error(r, "size upper %s: %s", dev->data_path, strerror(-r));
	if (sz < dev->size_bytes && (r = vfs_ftruncate(fd, dev->size_bytes)))
		return log_error(r, "extend upper %s: %s", dev->data_path, strerror(-r));
	return 0;
}

static int open_upper_map_parsed(struct cow_device *dev, const uint8_t *buf, size_t len, const struct cow_map_parsed *pp,
				 bool tail_zero);

/* Loads upper.map (creating it when missing) into state/jstate. */
static int open_upper_map(struct cow_device *dev, const char *dir)
{
	char *buf = NULL;
	size_t len = 0;
	int r = vfs_read_file(dev->map_path, (size_t)COW_JOURNAL_BYTES_MAX * 4 + dev->size_blocks * 16 + 4096, &buf, &len);
	if (r == -ENOENT) {
		if ((r = cow_map_rewrite(dev))) return r;
		if ((r = vfs_fsync_dir(dir))) return log_error(r, "sync %s: %s", dir, strerror(-r));
		return 0;
	}
	if (r) return log_error(r, "read upper map %s: %s", dev->map_path, strerror(-r));
	struct cow_map_parsed p;
	r = cow_map_parse((const uint8_t *)buf, len, dev->size_blocks, dev->jstate, &p, true, dev->map_path);
	/* past the journal: the zero tail, or (after a crash) a torn record, possibly in the tail */
	bool tail_zero = true;
	for (size_t i = r ? len : p.journal_end; i < len && tail_zero; i++) tail_zero = buf[i] == 0;
	if (!r) r = open_upper_map_parsed(dev, (const uint8_t *)buf, len, &p, tail_zero);
	free(buf);
	return r;
}

static int open_upper_map_parsed(struct cow_device *dev, const uint8_t *buf, size_t len, const struct cow_map_parsed *pp,
				 bool tail_zero)
{
	struct cow_map_parsed p = *pp;
	int r;
	dev->map_generation = p.hdr.generation;
	const char *top = dev->layer_count ? dev->digests[dev->layer_count - 1] : "";
	if (p.hdr.base_layer_count == dev->layer_count && !strcmp(p.hdr.base_top, top)) {
		int fd = vfs_open(dev->map_path, O_RDWR, 0);
		if (fd < 0) return log_error(fd, "open upper map %s: %s", dev->map_path, strerror(-fd));
		dev->map_fd = fd;
		dev->journal_offset = p.journal_offset;
		dev->journal_end = p.journal_end;
		dev->journal_seq = p.next_seq;
		dev->journal_covered_seq = p.covered_seq;
		dev->journal_last_payload_seq = p.last_payload_seq;
		dev->map_tail_end = tail_zero ? len : p.journal_end;
		if (!tail_zero) {
			/* drop a torn tail so the next record lands where replay looks for it */
			if ((r = vfs_ftruncate(fd, p.journal_end)) || (r = vfs_fsync(fd)))
				return log_error(r, "truncate upper map %s: %s", dev->map_path, strerror(-r));
		}
		/* flushed blocks held only in the journal go to upper.data; version 1 is upgraded */
		if ((p.payload_records || p.version != COW_MAP_VERSION) && (r = cow_map_recover(dev, buf, &p))) return r;
		memcpy(dev->state, dev->jstate, dev->size_blocks);
		uint64_t n = 0;
		for (uint64_t b = 0; b < dev->size_blocks; b++) n += dev->state[b] == COW_UPPER_DATA;
		dev->stats.upper_blocks = n;
		return 0;
	}
	if (dev->layer_count == p.hdr.base_layer_count + 1 &&
	    (p.hdr.base_layer_count == 0 || !strcmp(dev->digests[p.hdr.base_layer_count - 1], p.hdr.base_top))) {
		/* a commit wrote the layer and the record, then crashed before resetting the upper */
		log_info("open container %s: upper already committed into %s, resetting it", dev->name, top);
		return upper_reset_files(dev);
	}
	return log_error(-EUCLEAN, "open container %s: upper.map sits on %u layers (top %s), record has %u (top %s)",
			 dev->name, p.hdr.base_layer_count, p.hdr.base_top, dev->layer_count, top);
}

/* The read-only counterpart of open_upper_data + open_upper_map: loads the state from the files
 * as they are and touches nothing. */
static int load_upper_readonly(struct cow_device *dev)
{
	int fd = vfs_open(dev->data_path, O_RDONLY, 0);
	if (fd < 0 && fd != -ENOENT) return log_error(fd, "open upper %s: %s", dev->data_path, strerror(-fd));
	dev->data_fd = fd < 0 ? -1 : fd;
	char *buf = NULL;
	size_t len = 0;
	int r = vfs_read_file(dev->map_path, (size_t)COW_JOURNAL_BYTES_MAX * 4 + dev->size_blocks * 16 + 4096, &buf, &len);
	if (r == -ENOENT) return 0; /* never opened read-write: no upper yet */
	if (r) return log_error(r, "read upper map %s: %s", dev->map_path, strerror(-r));
	struct cow_map_parsed p;
	r = cow_map_parse((const uint8_t *)buf, len, dev->size_blocks, dev->jstate, &p, true, dev->map_path);
	const char *top = dev->layer_count ? dev->digests[dev->layer_count - 1] : "";
	bool same = !r && p.hdr.base_layer_count == dev->layer_count && !strcmp(p.hdr.base_top, top);
	/* flushed blocks held only in the journal: kept in memory (nothing is written) */
	if (same && p.payload_records) r = cow_map_recover_readonly(dev, (const uint8_t *)buf, &p);
	free(buf);
	if (r) return r;
	if (same) {
		uint64_t n = 0;
		memcpy(dev->state, dev->jstate, dev->size_blocks);
		for (uint64_t b = 0; b < dev->size_blocks; b++) n += dev->state[b] == COW_UPPER_DATA;
		dev->stats.upper_blocks = n;
		if (n && dev->data_fd < 0)
			return log_error(-EUCLEAN, "open container %s read-only: upper.map names %llu blocks, upper.data is missing",
					 dev->name, (unsigned long long)n);
		return 0;
	}
	if (dev->layer_count == p.hdr.base_layer_count + 1 &&
	    (p.hdr.base_layer_count == 0 || !strcmp(dev->digests[p.hdr.base_layer_count - 1], p.hdr.base_top)))
		return 0; /* a crash after a commit's record: the upper is in the top layer already */
	return log_error(-EUCLEAN, "open container %s: upper.map sits on %u layers (top %s), record has %u (top %s)",
			 dev->name, p.hdr.base_layer_count, p.hdr.base_top, dev->layer_count, top);
}

/* With the container's exclusive lock held: removes the temps of upper.map rewrites
 * ("upper.map.tmp.<pid>.<n>", vfs_write_file_atomic) that a crash or kill left behind.  Only the
 * lock holder rewrites upper.map, so none is in flight; gc also sweeps them, but judges by the
 * pid in the name, which a reboot may have given to a live process.  Each can hold up to a MiB
 * (the journal's zero tail).  Best effort: a temp that stays costs space, not correctness. */
static void remove_map_temps(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d) return;
	struct dirent *de;
	unsigned removed = 0, seen = 0;
	char p[OCIBLK_PATH_MAX];
	/* bounded: a container directory holds a handful of files; stop early on a strange one */
	while ((de = readdir(d)) && seen++ < 4096) {
		if (strncmp(de->d_name, "upper.map.tmp.", 14)) continue;
		if ((size_t)snprintf(p, sizeof p, "%s/%s", dir, de->d_name) >= sizeof p) continue;
		int r = vfs_unlink(p);
		if (r && r != -ENOENT) log_warn("open container: remove stale %s: %s", p, strerror(-r));
		else if (!r) removed++;
	}
	closedir(d);
	if (removed) {
		log_info("open container: removed %u stale upper.map temp file(s) in %s", removed, dir);
		vfs_fsync_dir(dir);
	}
}

static int open_container(struct layer_store *store, const char *container, bool readonly, struct cow_device **out)
{
	struct container_record rec;
	char dir[OCIBLK_PATH_MAX];
	int r = layer_store_container_get(store, container, &rec);
	if (r) return r;
	if ((r = check_size(rec.size_bytes))) return r;
	struct cow_device *dev = device_alloc(store, COW_KIND_CONTAINER, rec.size_bytes);
	if (!dev) return log_error(-ENOMEM, "open container %s: out of memory", container);
	snprintf(dev->name, sizeof dev->name, "%s", container);
	dev->readonly = readonly;
	int fd = readonly ? layer_store_container_lock_shared(store, container) : layer_store_container_lock(store, container);
	if (fd < 0) {
		r = fd;
		goto fail;
	}
	dev->lock_fd = fd;
	for (uint32_t i = 0; i < rec.layer_count && i < LAYER_CHAIN_MAX; i++)
		if ((r = open_layer_into(dev, rec.layers[i]))) goto fail;
	if ((r = rebuild_index(dev))) goto fail;
	if ((r = layer_store_container_dir(store, container, dir, sizeof dir))) goto fail;
	if ((size_t)snprintf(dev->data_path, sizeof dev->data_path, "%s/upper.data", dir) >= sizeof dev->data_path ||
	    (size_t)snprintf(dev->map_path, sizeof dev->map_path, "%s/upper.map", dir) >= sizeof dev->map_path) {
		r = log_error(-ENAMETOOLONG, "open container %s: path too long", container);
		goto fail;
	}
	if ((r = alloc_states(dev))) goto fail;
	if (!readonly && (r = cow_dirty_alloc(dev, COW_FLUSH_PAYLOAD_BLOCKS_MAX))) goto fail;
	if (readonly) {
		if ((r = load_upper_readonly(dev))) goto fail;
	} else {
		remove_map_temps(dir);
		if ((r = open_upper_data(dev, false))) goto fail;
		if ((r = open_upper_map(dev, dir))) goto fail;
	}
	*out = dev;
	return 0;
fail:
	device_free(dev);
	return r;
}

int cow_device_open_container(struct layer_store *store, const char *container, struct cow_device **out)
{
	return open_container(store, container, false, out);
}

int cow_device_open_container_readonly(struct layer_store *store, const char *container, struct cow_device **out)
{
	return open_container(store, container, true, out);
}

int cow_device_open_image(struct layer_store *store, const char *image, struct cow_device **out)
{
	struct image_record rec;
	int r = layer_store_image_get(store, image, &rec);
	if (r) return r;
	image_record_clear(&rec);
	if ((r = check_size(rec.size_bytes))) return r;
	struct cow_device *dev = device_alloc(store, COW_KIND_IMAGE, rec.size_bytes);
	if (!dev) return log_error(-ENOMEM, "open image %s: out of memory", image);
	snprintf(dev->name, sizeof dev->name, "%s", image);
	for (uint32_t i = 0; i < rec.layer_count && i < LAYER_CHAIN_MAX; i++)
		if ((r = open_layer_into(dev, rec.layers[i]))) goto fail;
	if ((r = rebuild_index(dev))) goto fail;
	*out = dev;
	return 0;
fail:
	device_free(dev);
	return r;
}

int cow_device_open_scratch(struct layer_store *store, const char *const *layer_digests, uint32_t layer_count,
			    uint64_t size_bytes, struct cow_device **out)
{
	int r;
	if ((r = check_size(size_bytes))) return r;
	if (layer_count > LAYER_CHAIN_MAX) return log_error(-E2BIG, "open scratch: %u layers", layer_count);
	struct cow_device *dev = device_alloc(store, COW_KIND_SCRATCH, size_bytes);
	if (!dev) return log_error(-ENOMEM, "open scratch: out of memory");
	snprintf(dev->name, sizeof dev->name, "scratch");
	for (uint32_t i = 0; i < layer_count; i++)
		if ((r = open_layer_into(dev, layer_digests[i]))) goto fail;
	if ((r = rebuild_index(dev))) goto fail;
	char tmp[OCIBLK_PATH_MAX - 16];
	if ((r = layer_store_tmp_path(store, "scratch-upper", tmp, sizeof tmp))) goto fail;
	snprintf(dev->data_path, sizeof dev->data_path, "%s.data", tmp);
	if ((r = alloc_states(dev))) goto fail;
	if ((r = open_upper_data(dev, true))) goto fail;
	/* held while the device is open, so gc leaves this temp alone however long an import runs */
	if ((r = dev->lock_fd = layer_store_tmp_hold(dev->data_path)) < 0) goto fail;
	*out = dev;
	return 0;
fail:
	if (dev->data_fd >= 0) vfs_unlink(dev->data_path);
	device_free(dev);
	return r;
}

int cow_device_close(struct cow_device *dev)
{
	int r = 0;
	if (!dev) return 0;
	if (dev->kind == COW_KIND_CONTAINER && !dev->readonly) r = cow_device_flush(dev);
	if (dev->kind == COW_KIND_CONTAINER && !dev->readonly && !r) r = cow_journal_compact(dev); /* upper.map keeps no payloads */
	if (dev->kind == COW_KIND_SCRATCH && dev->data_fd >= 0) {
		vfs_close(dev->data_fd);
		dev->data_fd = -1;
		vfs_unlink(dev->data_path);
	}
	device_free(dev);
	return r;
}

void cow_device_set_journal_limit(struct cow_device *dev, uint64_t journal_bytes)
{
	pthread_mutex_lock(&dev->journal_mu);
	dev->journal_limit = journal_bytes ? journal_bytes : COW_JOURNAL_BYTES_MAX;
	pthread_mutex_unlock(&dev->journal_mu);
}

uint64_t cow_device_size_bytes(const struct cow_device *dev) { return dev->size_bytes; }
bool cow_device_is_readonly(const struct cow_device *dev) { return dev->readonly || dev->state == NULL; }
uint32_t cow_device_layer_count(const struct cow_device *dev) { return dev->layer_count; }
const char *cow_device_layer_digest(const struct cow_device *dev, uint32_t i)
{
	return i < dev->layer_count ? dev->digests[i] : NULL;
}

/* ---------------------------------------------------------------- synchronous API ---------- */

static int sync_exec(struct cow_device *dev, struct cow_request *req)
{
	int r = cow_validate(dev, req);
	if (r) return r;
	if (req->op != COW_OP_READ && req->op != COW_OP_FLUSH && !dev->state) return -EROFS;
	pthread_mutex_lock(&dev->sync_mu);
	r = cow_exec(dev, &dev->sync_cache, req);
	pthread_mutex_unlock(&dev->sync_mu);
	return r;
}

int cow_device_read(struct cow_device *dev, uint64_t offset_bytes, void *buf, uint64_t length_bytes)
{
	struct iovec iov = { .iov_base = buf, .iov_len = length_bytes };
	struct cow_request req = { .op = COW_OP_READ, .offset_bytes = offset_bytes, .length_bytes = length_bytes,
				   .iov = &iov, .iov_count = 1 };
	return sync_exec(dev, &req);
}

int cow_device_write(struct cow_device *dev, uint64_t offset_bytes, const void *buf, uint64_t length_bytes,
		     unsigned flags)
{
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = length_bytes };
	struct cow_request req = { .op = COW_OP_WRITE, .flags = flags, .offset_bytes = offset_bytes,
				   .length_bytes = length_bytes, .iov = &iov, .iov_count = 1 };
	return sync_exec(dev, &req);
}

int cow_device_flush(struct cow_device *dev)
{
	struct cow_request req = { .op = COW_OP_FLUSH };
	return sync_exec(dev, &req);
}

int cow_device_discard(struct cow_device *dev, uint64_t offset_bytes, uint64_t length_bytes)
{
	struct cow_request req = { .op = COW_OP_DISCARD, .offset_bytes = offset_bytes, .length_bytes = length_bytes };
	return sync_exec(dev, &req);
}

int cow_device_write_zeroes(struct cow_device *dev, uint64_t offset_bytes, uint64_t length_bytes, unsigned flags)
{
	struct cow_request req = { .op = COW_OP_WRITE_ZEROES, .flags = flags, .offset_bytes = offset_bytes,
				   .length_bytes = length_bytes };
	return sync_exec(dev, &req);
}

static enum cow_block_state public_state(const struct cow_device *dev, uint64_t b, uint64_t *k)
{
	uint8_t s = dev->state ? dev->state[b] : COW_UPPER_FALL;
	if (s == COW_UPPER_DATA) return COW_BLOCK_UPPER;
	if (s == COW_UPPER_ZERO) return COW_BLOCK_ZERO;
	while (*k < dev->index.count && dev->index.entries[*k].block_index + dev->index.entries[*k].block_count <= b)
		(*k)++;
	if (*k < dev->index.count && dev->index.entries[*k].block_index <= b) return COW_BLOCK_LOWER;
	return COW_BLOCK_ZERO;
}

int cow_device_block_status(struct cow_device *dev, uint64_t block_index, uint64_t max_blocks,
			    enum cow_block_state *state, uint64_t *run_blocks)
{
	if (block_index >= dev->size_blocks || max_blocks == 0) return -EINVAL;
	if (max_blocks > dev->size_blocks - block_index) max_blocks = dev->size_blocks - block_index;
	pthread_mutex_lock(&dev->mu);
	uint64_t k = cow_index_find(&dev->index, block_index);
	enum cow_block_state s = public_state(dev, block_index, &k);
	uint64_t n = 1;
	while (n < max_blocks && public_state(dev, block_index + n, &k) == s) n++;
	pthread_mutex_unlock(&dev->mu);
	*state = s;
	*run_blocks = n;
	return 0;
}

void cow_device_get_stats(const struct cow_device *dev, struct cow_device_stats *out)
{
	pthread_mutex_lock((pthread_mutex_t *)&dev->mu);
	*out = dev->stats;
	pthread_mutex_unlock((pthread_mutex_t *)&dev->mu);
}

/* ---------------------------------------------------------------- commit ------------------ */

/* Writes the merged view of the upper as a layer on top of the chain; *opened is the new layer,
 * open and so pinned against gc until the records that reference it are written. */
static int write_upper_layer(struct cow_device *dev, char digest[SHA256_DIGEST_STRLEN], struct layer **opened)
{
	struct layer_writer *w;
	struct layer_writer_options o = {
		.virtual_size_bytes = dev->size_bytes,
		.parent_digest = dev->layer_count ? dev->digests[dev->layer_count - 1] : NULL,
		.zstd_level = COMMIT_ZSTD_LEVEL,
		.detect_zero_blocks = false,
	};
	if (dev->layer_count >= LAYER_CHAIN_MAX)
		return log_error(-E2BIG, "commit %s: chain already has %u layers", dev->name, dev->layer_count);
	int r = layer_writer_create(dev->store, &o, &w);
	if (r) return r;
	uint8_t *buf = malloc((size_t)LAYER_CHUNK_BLOCKS_DEFAULT * COW_BLOCK_SIZE);
	if (!buf) {
		layer_writer_abort(w);
		return log_error(-ENOMEM, "commit %s: out of memory", dev->name);
	}
	for (uint64_t b = 0; b < dev->size_blocks && !r;) {
		uint8_t s = dev->state[b];
		uint64_t e = b + 1;
		while (e < dev->size_blocks && dev->state[e] == s) e++;
		if (s == COW_UPPER_DATA) {
			for (uint64_t p = b; p < e && !r; p += LAYER_CHUNK_BLOCKS_DEFAULT) {
				uint64_t n = e - p < LAYER_CHUNK_BLOCKS_DEFAULT ? e - p : LAYER_CHUNK_BLOCKS_DEFAULT;
				r = vfs_pread_full(dev->data_fd, buf, n * COW_BLOCK_SIZE, p * COW_BLOCK_SIZE);
				if (r == -ENODATA) { /* short upper: the rest reads zero */
					memset(buf, 0, n * COW_BLOCK_SIZE);
					r = 0;
				}
				if (r) r = log_error(r, "commit %s: read upper: %s", dev->name, strerror(-r));
				if (!r) r = layer_writer_add_data(w, p, buf, n);
			}
		} else if (s == COW_UPPER_ZERO) {
			/* ZERO extents only where they mask data of the chain */
			for (uint64_t k = cow_index_find(&dev->index, b); k < dev->index.count && !r; k++) {
				const struct cow_index_entry *x = &dev->index.entries[k];
				if (x->block_index >= e) break;
				uint64_t zs = x->block_index > b ? x->block_index : b;
				uint64_t ze = x->block_index + x->block_count < e ? x->block_index + x->block_count : e;
				/* merge with the next entry when contiguous, to keep the layer's index small */
				while (k + 1 < dev->index.count && dev->index.entries[k + 1].block_index == ze && ze < e) {
					k++;
					const struct cow_index_entry *y = &dev->index.entries[k];
					ze = y->block_index + y->block_count < e ? y->block_index + y->block_count : e;
				}
				r = layer_writer_add_zero(w, zs, ze - zs);
			}
		}
		b = e;
	}
	free(buf);
	if (r) {
		layer_writer_abort(w);
		return r;
	}
	return layer_writer_commit_open(w, digest, opened);
}

/* The device continues on chain + the new layer (which it now owns) with an empty upper. */
static int switch_chain(struct cow_device *dev, struct layer *l, const char *digest)
{
	int r = push_layer(dev, l, digest);
	if (r) return r;
	if ((r = rebuild_index(dev))) return r;
	return upper_reset_files(dev);
}

/* The device's chain plus new_top, written into layers; returns the new layer count. */
static uint32_t chain_with_top(const struct cow_device *dev, const char *new_top,
			       char layers[LAYER_CHAIN_MAX][SHA256_DIGEST_STRLEN])
{
	for (uint32_t i = 0; i < dev->layer_count; i++) snprintf(layers[i], SHA256_DIGEST_STRLEN, "%s", dev->digests[i]);
	snprintf(layers[dev->layer_count], SHA256_DIGEST_STRLEN, "%s", new_top);
	return dev->layer_count + 1;
}

/* A container's record must follow its upper onto the new chain (images have no record to move). */
static int container_record_follow(struct cow_device *dev, const char *new_top)
{
	struct container_record rec;
	int r;
	if (dev->kind != COW_KIND_CONTAINER) return 0;
	if ((r = layer_store_container_get(dev->store, dev->name, &rec))) return r;
	rec.layer_count = chain_with_top(dev, new_top, rec.layers);
	return layer_store_container_put(dev->store, &rec);
}

/* The new layer stays open (pinned) from its publication until the device owns it, so a gc
 * running between the steps never removes it; a failure after publication leaves an unreferenced
 * layer, which the next gc removes. */
int cow_device_commit_layer(struct cow_device *dev, char digest_out[SHA256_DIGEST_STRLEN])
{
	char digest[SHA256_DIGEST_STRLEN];
	struct layer *l = NULL;
	if (cow_device_is_readonly(dev)) return log_error(-EROFS, "commit %s: read-only device", dev->name);
	int r = cow_device_flush(dev);
	if (r) return r;
	if ((r = write_upper_layer(dev, digest, &l))) return r;
	if ((r = container_record_follow(dev, digest))) {
		layer_close(l);
		return r;
	}
	if ((r = switch_chain(dev, l, digest))) return r;
	if (digest_out) snprintf(digest_out, SHA256_DIGEST_STRLEN, "%s", digest);
	return 0;
}

int cow_device_commit(struct cow_device *dev, const char *image, char digest_out[SHA256_DIGEST_STRLEN])
{
	char digest[SHA256_DIGEST_STRLEN];
	struct layer *l = NULL;
	int r;
	if (cow_device_is_readonly(dev)) return log_error(-EROFS, "commit %s: read-only device", dev->name);
	if ((r = layer_store_name_validate("image", image))) return r;
	if ((r = cow_device_flush(dev))) return r;
	if ((r = write_upper_layer(dev, digest, &l))) return r;

	struct image_record *img = calloc(1, sizeof *img);
	if (!img) {
		layer_close(l);
		return log_error(-ENOMEM, "commit %s: out of memory", dev->name);
	}
	snprintf(img->name, sizeof img->name, "%s", image);
	img->size_bytes = dev->size_bytes;
	img->layer_count = chain_with_top(dev, digest, img->layers);
	img->created_unix = (int64_t)time(NULL);
	r = layer_store_image_put(dev->store, img);
	free(img);
	if (!r) r = container_record_follow(dev, digest);
	if (r) {
		layer_close(l);
		return r;
	}
	if ((r = switch_chain(dev, l, digest))) return r;
	if (digest_out) snprintf(digest_out, SHA256_DIGEST_STRLEN, "%s", digest);
	return 0;
}

/* ---------------------------------------------------------------- check ------------------- */

int cow_container_check(struct layer_store *store, const char *container, struct cow_check_report *report)
{
	struct container_record rec;
	char dir[OCIBLK_PATH_MAX], path[OCIBLK_PATH_MAX + 16];
	struct cow_check_report rep = { 0 };
	int r = layer_store_container_get(store, container, &rec);
	if (r) return r;
	if ((r = layer_store_container_dir(store, container, dir, sizeof dir))) return r;
	uint64_t size_blocks = rec.size_bytes / COW_BLOCK_SIZE;
	snprintf(path, sizeof path, "%s/upper.map", dir);
	char *buf = NULL;
	size_t len = 0;
	r = vfs_read_file(path, (size_t)COW_JOURNAL_BYTES_MAX * 4 + size_blocks * 16 + 4096, &buf, &len);
	if (r == -ENOENT) {
		/* never opened: no upper yet */
	} else if (r) {
		rep.errors++;
		log_error(r, "check container %s: read %s: %s", container, path, strerror(-r));
	} else {
		uint8_t *states = calloc(size_blocks ? size_blocks : 1, 1);
		if (!states) {
			free(buf);
			return log_error(-ENOMEM, "check container %s: out of memory", container);
		}
		struct cow_map_parsed p;
		r = cow_map_parse((const uint8_t *)buf, len, size_blocks, states, &p, true, path);
		rep.errors += p.errors;
		if (!r) {
			rep.blocks_checked = size_blocks;
			const char *top = rec.layer_count ? rec.layers[rec.layer_count - 1] : "";
			bool same = p.hdr.base_layer_count == rec.layer_count && !strcmp(p.hdr.base_top, top);
			bool committed = rec.layer_count == p.hdr.base_layer_count + 1 &&
					 (p.hdr.base_layer_count == 0 ||
					  !strcmp(rec.layers[p.hdr.base_layer_count - 1], p.hdr.base_top));
			if (!same && !committed) {
				rep.errors++;
				log_error(-EUCLEAN, "check container %s: upper.map sits on %u layers (top %s), record has %u",
					  container, p.hdr.base_layer_count, p.hdr.base_top, rec.layer_count);
			}
		}
		free(states);
		free(buf);
	}
	snprintf(path, sizeof path, "%s/upper.data", dir);
	int fd = vfs_open(path, O_RDONLY, 0);
	if (fd >= 0) {
		uint64_t sz = 0;
		r = vfs_size(fd, &sz);
		vfs_close(fd);
		if (r) {
			rep.errors++;
			log_error(r, "check container %s: size of %s: %s", container, path, strerror(-r));
		} else if (sz > rec.size_bytes) {
			rep.errors++;
			log_error(-EUCLEAN, "check container %s: %s is %llu bytes, device %llu", container, path,
				  (unsigned long long)sz, (unsigned long long)rec.size_bytes);
		}
	} else if (fd != -ENOENT) {
		rep.errors++;
		log_error(fd, "check container %s: open %s: %s", container, path, strerror(-fd));
	}
	if (report) *report = rep;
	return rep.errors ? -EUCLEAN : 0;
}

uint64_t cow_device_journal_compactions(const struct cow_device *dev)
{
	return dev->stats_compactions;
}
