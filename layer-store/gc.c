/* Reference counts, garbage collection and fsck of the store.
 *
 * Invariants: reference counts are derived from the records every time (never stored), so they
 * cannot drift; gc holds the store lock for its whole run, so no record can start referencing a
 * layer it is deleting, and it never removes what someone holds (an open layer, a held temp: see
 * ls_claim), so work that adds layers and then a record keeps them by keeping them open;
 * fsck only reads and reports (each problem logged once, with what and where). */
#include "layer-store/layer_store_private.h"

#include "common/checked.h"
#include "common/log.h"
#include "common/vfs.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* A set of digests (sorted array, binary search). */
struct digest_set {
	char (*v)[SHA256_DIGEST_STRLEN];
	size_t n, cap;
};

static int set_add(struct digest_set *s, const char *d)
{
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 64;
		void *nv = realloc(s->v, cap * sizeof *s->v);
		if (!nv) return -ENOMEM;
		s->v = nv;
		s->cap = cap;
	}
	snprintf(s->v[s->n++], SHA256_DIGEST_STRLEN, "%s", d);
	return 0;
}

static int cmp_digest(const void *a, const void *b) { return strcmp(a, b); }
static void set_sort(struct digest_set *s) { if (s->n) qsort(s->v, s->n, sizeof *s->v, cmp_digest); }
static int set_has(const struct digest_set *s, const char *d)
{
	return s->n && bsearch(d, s->v, s->n, sizeof *s->v, cmp_digest) != NULL;
}

/* Walks every record: fn gets each chain (image or container). */
struct walk {
	struct layer_store *store;
	int (*fn)(struct walk *w, const char *kind, const char *name, uint32_t count,
		  const char layers[][SHA256_DIGEST_STRLEN]);
	void *opaque;
	uint64_t images, containers, bad_records;
};

static int walk_image(const char *name, void *opaque)
{
	struct walk *w = opaque;
	struct image_record *rec = calloc(1, sizeof *rec);
	int r;
	if (!rec) return -ENOMEM;
	w->images++;
	r = layer_store_image_get(w->store, name, rec);
	if (r == -EIO) {
		w->bad_records++;
		r = 0;
	} else if (!r) {
		r = w->fn(w, "image", name, rec->layer_count, rec->layers);
	}
	image_record_clear(rec);
	free(rec);
	return r;
}

static int walk_container(const char *name, void *opaque)
{
	struct walk *w = opaque;
	struct container_record *rec = calloc(1, sizeof *rec);
	int r;
	if (!rec) return -ENOMEM;
	w->containers++;
	r = layer_store_container_get(w->store, name, rec);
	if (r == -EIO || r == -ENOENT) {
		/* a container directory without a readable record */
		if (r == -ENOENT) log_error(-EIO, "container %s: record missing", name);
		w->bad_records++;
		r = 0;
	} else if (!r) {
		r = w->fn(w, "container", name, rec->layer_count, rec->layers);
	}
	free(rec);
	return r;
}

static int walk_records(struct walk *w)
{
	int r = layer_store_image_foreach(w->store, walk_image, w);
	if (!r) r = layer_store_container_foreach(w->store, walk_container, w);
	return r;
}

/* ---------------------------------------------------------------- refcount ---------------- */

struct refcount_ctx {
	const char *digest;
	uint64_t count;
};

static int refcount_fn(struct walk *w, const char *kind, const char *name, uint32_t count,
		       const char layers[][SHA256_DIGEST_STRLEN])
{
	struct refcount_ctx *c = w->opaque;
	for (uint32_t i = 0; i < count; i++)
		if (!strcmp(layers[i], c->digest)) {
			c->count++;
			break;
		}
	return 0;
}

int layer_store_layer_refcount(struct layer_store *s, const char *digest, uint64_t *count)
{
	struct refcount_ctx c = { .digest = digest };
	struct walk w = { .store = s, .fn = refcount_fn, .opaque = &c };
	int r;
	if (sha256_parse_digest(digest, NULL)) return log_error(-EINVAL, "refcount: bad digest \"%s\"", digest);
	r = layer_store_lock(s);
	if (r) return r;
	r = walk_records(&w);
	layer_store_unlock(s);
	if (!r) *count = c.count;
	return r;
}

/* ---------------------------------------------------------------- gc ---------------------- */

static int collect_fn(struct walk *w, const char *kind, const char *name, uint32_t count,
		      const char layers[][SHA256_DIGEST_STRLEN])
{
	for (uint32_t i = 0; i < count; i++) {
		int r = set_add(w->opaque, layers[i]);
		if (r) return r;
	}
	return 0;
}

static int all_layers_fn(const char *digest, void *opaque) { return set_add(opaque, digest); }

/* Removes entries of dir older than min_age (matching keep), counting them. */
static int sweep_dir(const char *dir, int (*keep)(const char *), unsigned min_age, uint64_t *removed)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	time_t now = time(NULL);
	int r = 0;
	if (!d) return log_error(-errno, "gc: list %s: %s", dir, strerror(errno));
	while ((de = readdir(d))) {
		char p[OCIBLK_PATH_MAX];
		struct stat st;
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") || !keep(de->d_name)) continue;
		if ((size_t)snprintf(p, sizeof p, "%s/%s", dir, de->d_name) >= sizeof p) continue;
		if (lstat(p, &st) < 0) continue;
		if (min_age && now - st.st_mtime < (time_t)min_age) continue;
		int fd, rr = ls_claim(p, &fd);
		if (rr <= 0) continue; /* held: work in progress (or already gone) */
		rr = ls_remove_tree(p);
		if (fd >= 0) close(fd);
		if (rr) {
			log_warn("gc: remove %s: %s", p, strerror(-rr));
			if (!r) r = rr;
		} else {
			(*removed)++;
		}
	}
	closedir(d);
	if (*removed) vfs_fsync_dir(dir);
	return r;
}

static int any_entry(const char *n) { (void)n; return 1; }
/* A temp of vfs_write_file_atomic: "<file>.tmp.<pid>.<n>" (non-empty <file>, decimal <pid> and
 * <n>).  Records end in ".json" (images, container config.json) or are 64 hex digits (chains), and
 * a container's other files are "lock", "upper.data" and "upper.map", so a record whose name
 * merely contains ".tmp." never matches. */
static int atomic_tmp_entry(const char *n)
{
	size_t l = strlen(n), i = l;
	int groups = 0;
	if ((l > 5 && !strcmp(n + l - 5, ".json")) || ls_is_hex64(n)) return 0;
	while (groups < 2) {
		size_t end = i;
		while (i > 0 && n[i - 1] >= '0' && n[i - 1] <= '9') i--;
		if (i == end || i == 0 || n[i - 1] != '.') return 0;
		i--;
		groups++;
	}
	return i > 4 && !strncmp(n + i - 4, ".tmp", 4);
}

/* The <pid> of an atomic-write temp "<file>.tmp.<pid>.<n>" names its writer: while that process
 * lives, the temp may be a rewrite in flight (cow/'s upper.map runs without the store lock). */
static int atomic_tmp_writer_alive(const char *n)
{
	const char *dot = strrchr(n, '.');
	size_t i = dot ? (size_t)(dot - n) : 0;
	while (i > 0 && n[i - 1] >= '0' && n[i - 1] <= '9') i--;
	long pid = strtol(n + i, NULL, 10);
	return pid > 0 && (kill((pid_t)pid, 0) == 0 || errno == EPERM);
}

static int stale_atomic_tmp_entry(const char *n) { return atomic_tmp_entry(n) && !atomic_tmp_writer_alive(n); }

struct sweep_ctx {
	struct layer_store *store;
	unsigned min_age;
	uint64_t *removed;
};

/* Temps of interrupted atomic writes in a container directory: config.json by the store,
 * upper.map by cow/ (a crash during its rewrite).  The live files themselves never match. */
static int sweep_container(const char *name, void *opaque)
{
	struct sweep_ctx *c = opaque;
	char dir[OCIBLK_PATH_MAX];
	/* Not by taking the container's lock: a device opening it meanwhile would get -EBUSY. */
	if (!layer_store_container_dir(c->store, name, dir, sizeof dir))
		sweep_dir(dir, stale_atomic_tmp_entry, c->min_age, c->removed);
	return 0;
}

/* Under the store lock, for a layer no record references: removes it unless someone has it
 * open (pinned: a commit or an import before its record).  1 removed (*bytes its size), 0 kept,
 * -errno. */
static int remove_unpinned(struct layer_store *s, const char *digest, uint64_t *bytes)
{
	char p[OCIBLK_PATH_MAX];
	struct stat st;
	int fd, r = layer_store_layer_path(s, digest, p, sizeof p);
	*bytes = 0;
	if (r) return r;
	r = ls_claim(p, &fd);
	if (r == -ENOENT) return 1; /* gone already */
	if (r <= 0) return r;
	if (fd >= 0 && fstat(fd, &st) == 0) *bytes = (uint64_t)st.st_size;
	r = vfs_unlink(p);
	if (fd >= 0) close(fd);
	if (r == -ENOENT) return 1;
	if (r) return log_error(r, "gc: remove layer %s: %s", digest, strerror(-r));
	log_info("gc: removed layer %s (%llu bytes)", digest, (unsigned long long)*bytes);
	return 1;
}

int layer_store_layer_remove_unused(struct layer_store *s, const char *digest)
{
	struct refcount_ctx c = { .digest = digest };
	struct walk w = { .store = s, .fn = refcount_fn, .opaque = &c };
	char p[OCIBLK_PATH_MAX];
	uint64_t bytes;
	int r;
	if (sha256_parse_digest(digest, NULL)) return log_error(-EINVAL, "remove layer: bad digest \"%s\"", digest);
	r = layer_store_lock(s);
	if (r) return r;
	r = walk_records(&w);
	if (!r && (w.bad_records || c.count)) r = 0; /* referenced, or maybe by an unreadable record */
	else if (!r && (r = remove_unpinned(s, digest, &bytes)) == 1 && !(r = ls_path(s, p, sizeof p, "layers")))
		r = vfs_fsync_dir(p) ? -EIO : 1;
	layer_store_unlock(s);
	return r;
}

int layer_store_gc(struct layer_store *s, unsigned min_tmp_age_seconds, struct layer_store_gc_stats *stats)
{
	struct digest_set used = { 0 }, all = { 0 };
	struct walk w = { .store = s, .fn = collect_fn, .opaque = &used };
	char p[OCIBLK_PATH_MAX];
	DIR *d = NULL;
	struct dirent *de;
	int r;

	memset(stats, 0, sizeof *stats);
	r = layer_store_lock(s);
	if (r) return r;
	r = walk_records(&w);
	if (r) goto out;
	if (w.bad_records) {
		/* A record we cannot read may reference anything: deleting layers now could destroy
		 * data it needs.  fsck says which; fix or remove it, then gc again. */
		r = log_error(-EUCLEAN, "gc: %llu unreadable records; refusing to remove layers (run fsck)",
			      (unsigned long long)w.bad_records);
		goto out;
	}
	set_sort(&used);
	r = layer_store_layer_foreach(s, all_layers_fn, &all);
	if (r) goto out;
	for (size_t i = 0; i < all.n; i++) {
		uint64_t bytes;
		if (set_has(&used, all.v[i])) continue;
		r = remove_unpinned(s, all.v[i], &bytes);
		if (r < 0) goto out;
		if (r == 0) {
			stats->layers_in_use++;
			continue;
		}
		stats->layers_removed++;
		stats->bytes_freed += bytes;
	}
	r = 0;
	if (stats->layers_removed && !(r = ls_path(s, p, sizeof p, "layers"))) r = vfs_fsync_dir(p);
	if (r) goto out;

	/* Chain-id records whose layer is gone (just removed, or missing for any reason). */
	r = ls_path(s, p, sizeof p, "chains");
	if (r) goto out;
	d = opendir(p);
	if (!d) {
		r = log_error(-errno, "gc: list %s: %s", p, strerror(errno));
		goto out;
	}
	while ((de = readdir(d))) {
		char id[SHA256_DIGEST_STRLEN], layer[SHA256_DIGEST_STRLEN], cp[OCIBLK_PATH_MAX];
		if (!ls_is_hex64(de->d_name)) continue;
		memcpy(id, "sha256:", 7);
		memcpy(id + 7, de->d_name, SHA256_HEX_LEN + 1);
		int rr = layer_store_chain_get(s, id, layer);
		if (rr != -ENOENT && rr != -EIO) continue;
		if (ls_path(s, cp, sizeof cp, "chains/%s", de->d_name) || vfs_unlink(cp)) continue;
		stats->chain_records_removed++;
	}
	closedir(d);
	if (stats->chain_records_removed) vfs_fsync_dir(p);

	/* Temp files: the tmp/ directory, and temps of interrupted atomic record writes. */
	if (!ls_path(s, p, sizeof p, "tmp")) sweep_dir(p, any_entry, min_tmp_age_seconds, &stats->temp_files_removed);
	if (!ls_path(s, p, sizeof p, "images")) sweep_dir(p, atomic_tmp_entry, min_tmp_age_seconds, &stats->temp_files_removed);
	if (!ls_path(s, p, sizeof p, "chains")) sweep_dir(p, atomic_tmp_entry, min_tmp_age_seconds, &stats->temp_files_removed);
	struct sweep_ctx sc = { .store = s, .min_age = min_tmp_age_seconds, .removed = &stats->temp_files_removed };
	layer_store_container_foreach(s, sweep_container, &sc);
	r = 0;
out:
	layer_store_unlock(s);
	free(used.v);
	free(all.v);
	return r;
}

/* ---------------------------------------------------------------- fsck -------------------- */

struct fsck_ctx {
	struct layer_store_fsck_report *report;
	struct digest_set bad_layers;   /* layers that failed their own check */
};

static int fsck_layer(const char *digest, void *opaque)
{
	struct walk *w = opaque;
	struct fsck_ctx *c = w->opaque;
	struct layer *l = NULL;
	const struct layer_extent *x;
	uint64_t n;
	uint8_t *buf = NULL;
	int r;

	c->report->layers_checked++;
	r = layer_open(w->store, digest, true, &l);
	if (r) {
		if (r == -ENOMEM) return r;
		goto bad; /* logged by layer_open */
	}
	x = layer_get_extents(l, &n);
	buf = malloc((size_t)LAYER_CHUNK_BLOCKS_MAX * LAYER_BLOCK_SIZE);
	if (!buf) {
		layer_close(l);
		return -ENOMEM;
	}
	for (uint64_t i = 0; i < n; i++) {
		if (x[i].kind != LAYER_EXTENT_DATA) continue;
		if (layer_read_extent(l, i, buf)) {
			/* logged with the extent; one error per layer is enough for the count */
			r = -EIO;
		}
	}
	free(buf);
	layer_close(l);
	if (!r) return 0;
bad:
	c->report->errors++;
	return set_add(&c->bad_layers, digest);
}

static int fsck_chain(struct walk *w, const char *kind, const char *name, uint32_t count,
		      const char layers[][SHA256_DIGEST_STRLEN])
{
	struct fsck_ctx *c = w->opaque;
	for (uint32_t i = 0; i < count; i++) {
		struct layer *l = NULL;
		const char *want = i ? layers[i - 1] : "";
		int r = layer_store_layer_exists(w->store, layers[i]);
		if (r < 0) return r;
		if (!r) {
			log_error(-ENOENT, "fsck: %s %s: layer %u (%s) is missing", kind, name, i, layers[i]);
			c->report->errors++;
			continue;
		}
		if (set_has(&c->bad_layers, layers[i])) {
			log_error(-EIO, "fsck: %s %s: layer %u (%s) is corrupt", kind, name, i, layers[i]);
			c->report->errors++;
			continue;
		}
		r = layer_open(w->store, layers[i], false, &l);
		if (r) {
			c->report->errors++;
			continue;
		}
		if (strcmp(layer_get_info(l)->parent_digest, want)) {
			log_error(-EIO, "fsck: %s %s: layer %u (%s) has parent \"%s\" but sits on \"%s\"", kind, name, i,
				  layers[i], layer_get_info(l)->parent_digest, want);
			c->report->errors++;
		}
		layer_close(l);
	}
	return 0;
}

int layer_store_fsck(struct layer_store *s, struct layer_store_fsck_report *report)
{
	struct fsck_ctx c = { .report = report };
	struct walk w = { .store = s, .fn = fsck_chain, .opaque = &c };
	int r;

	memset(report, 0, sizeof *report);
	r = layer_store_lock(s);
	if (r) return r;
	r = layer_store_layer_foreach(s, fsck_layer, &w);
	if (r) goto out;
	set_sort(&c.bad_layers);
	r = walk_records(&w);
	if (r) goto out;
	report->images_checked = w.images;
	report->containers_checked = w.containers;
	report->errors += w.bad_records;
out:
	layer_store_unlock(s);
	free(c.bad_layers.v);
	if (r) return r;
	return report->errors ? -EUCLEAN : 0;
}
