/* gc against work in progress (FORMAT.md section 4: in use is a flock, not an age).
 *
 * Deterministic part: an unreferenced layer that is open is kept (layers_in_use) and removed once
 * closed; a held temp of any age is kept and removed once released; a container's atomic-write
 * temp is kept while a device holds the container.
 *
 * Race part (seeded, OCIBLK_SEED replays; OCIBLK_GC_ROUNDS sets the work per worker): separate
 * processes, each with its own store handle, run at once
 *   - gc in a loop with --tmp-age 0 (the harshest setting: no age protects anything);
 *   - two committers: write random blocks into their container, cow_device_commit to a new
 *     image, check the image reads back what the model says, and remove older images (garbage);
 *   - an importer doing what image_import does: a scratch device over an image's chain, two
 *     cow_device_commit_layer, then chain records and the image record under the store lock,
 *     checked by reading the image back; every other round it drops its previous image.
 * Every step must succeed (before the fix a commit's image put failed with -ENOENT when gc removed
 * the fresh layer first), gc must have removed layers while they worked (else the test proved
 * nothing), and afterwards one more gc must leave exactly the referenced layers, an empty tmp/,
 * and a clean fsck: nothing failed and nothing leaked. */
#include "common/log.h"
#include "cow/cow.h"
#include "layer-store/layer_store.h"
#include "tests/lib/tap.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <utime.h>

#define DEV_BLOCKS 64u
#define DEV_BYTES ((uint64_t)DEV_BLOCKS * 4096)

static char root[512];
static uint64_t seed;

static struct layer_store *open_store(void)
{
	struct layer_store *s;
	if (layer_store_open(root, LAYER_STORE_CREATE, &s)) abort();
	return s;
}

static int count_dir(const char *sub)
{
	char p[1024];
	snprintf(p, sizeof p, "%s/%s", root, sub);
	DIR *d = opendir(p);
	struct dirent *de;
	int n = 0;
	if (!d) return -1;
	while ((de = readdir(d)))
		if (de->d_name[0] != '.') n++;
	closedir(d);
	return n;
}

static void fill_block(uint8_t *b, uint64_t tag)
{
	for (int i = 0; i < 4096; i += 8) memcpy(b + i, &tag, 8);
}

static int base_image(struct layer_store *s, const char *name)
{
	struct layer_writer_options o = { .virtual_size_bytes = DEV_BYTES, .zstd_level = 1 };
	struct layer_writer *w;
	struct image_record img;
	uint8_t blk[4096];
	int r = layer_writer_create(s, &o, &w);
	if (r) return r;
	for (uint64_t b = 0; b < DEV_BLOCKS && !r; b++) {
		fill_block(blk, 0xba5e0000u + b);
		r = layer_writer_add_data(w, b, blk, 1);
	}
	memset(&img, 0, sizeof img);
	snprintf(img.name, sizeof img.name, "%s", name);
	img.size_bytes = DEV_BYTES;
	img.layer_count = 1;
	if (r) {
		layer_writer_abort(w);
		return r;
	}
	if ((r = layer_writer_commit(w, img.layers[0]))) return r;
	return layer_store_image_put(s, &img);
}

/* Reads every block of an image and compares with model (the tag each block must hold). */
static int image_matches(struct layer_store *s, const char *image, const uint64_t *model)
{
	struct cow_device *dev;
	uint8_t got[4096], want[4096];
	int r = cow_device_open_image(s, image, &dev);
	if (r) return r;
	for (uint64_t b = 0; b < DEV_BLOCKS && !r; b++) {
		fill_block(want, model[b]);
		r = cow_device_read(dev, b * 4096, got, 4096);
		if (!r && memcmp(got, want, 4096)) {
			fprintf(stderr, "# %s: block %llu differs\n", image, (unsigned long long)b);
			r = -EILSEQ;
		}
	}
	cow_device_close(dev);
	return r;
}

static int write_random(struct cow_device *dev, uint64_t *rng, uint64_t *model, uint64_t tag_base)
{
	uint8_t blk[4096];
	int n = 1 + (int)(tap_rand(rng) % 8), r = 0;
	for (int i = 0; i < n && !r; i++) {
		uint64_t b = tap_rand(rng) % DEV_BLOCKS;
		model[b] = tag_base + (uint64_t)i;
		fill_block(blk, model[b]);
		r = cow_device_write(dev, b * 4096, blk, 4096, 0);
	}
	return r;
}

#define FAIL(...) do { fprintf(stderr, "# " __VA_ARGS__); fputc('\n', stderr); _exit(1); } while (0)

static void committer(int id, int rounds)
{
	struct layer_store *s = open_store();
	uint64_t rng = seed ^ (0x1000u * (uint64_t)(id + 1)), model[DEV_BLOCKS];
	char cname[32], img[64];
	snprintf(cname, sizeof cname, "c%d", id);
	for (uint64_t b = 0; b < DEV_BLOCKS; b++) model[b] = 0xba5e0000u + b;
	for (int i = 0; i < rounds; i++) {
		struct cow_device *dev;
		int r = cow_device_open_container(s, cname, &dev);
		if (r) FAIL("committer %d round %d: open: %s", id, i, strerror(-r));
		if ((r = write_random(dev, &rng, model, ((uint64_t)id << 40) | ((uint64_t)i << 8)))) FAIL("committer %d: write: %s", id, strerror(-r));
		snprintf(img, sizeof img, "c%d-%d", id, i);
		if ((r = cow_device_commit(dev, img, NULL))) FAIL("committer %d round %d: commit: %s", id, i, strerror(-r));
		if ((r = cow_device_close(dev))) FAIL("committer %d: close: %s", id, strerror(-r));
		if ((r = image_matches(s, img, model))) FAIL("committer %d round %d: image %s: %s", id, i, img, strerror(-r));
		if (i >= 2) { /* garbage for gc: the container still references the layers of c<id>-<i> */
			snprintf(img, sizeof img, "c%d-%d", id, i - 2);
			if ((r = layer_store_image_remove(s, img))) FAIL("committer %d: remove %s: %s", id, img, strerror(-r));
		}
	}
	layer_store_close(s);
	_exit(0);
}

/* image_import's protocol, without an OCI source: see image-import/image_import.c build_layers. */
static void importer(int rounds)
{
	struct layer_store *s = open_store();
	uint64_t rng = seed ^ 0xabcdefu, model[DEV_BLOCKS];
	for (int i = 0; i < rounds; i++) {
		struct image_record *rec = calloc(1, sizeof *rec);
		struct cow_device *dev;
		char top[2][SHA256_DIGEST_STRLEN], chain_id[SHA256_DIGEST_STRLEN];
		const char *chain[1];
		int r;
		if (!rec) FAIL("importer: no memory");
		for (uint64_t b = 0; b < DEV_BLOCKS; b++) model[b] = 0xba5e0000u + b;
		if ((r = layer_store_lock(s))) FAIL("importer: lock");
		if ((r = layer_store_image_get(s, "base", rec))) FAIL("importer: base: %s", strerror(-r));
		chain[0] = rec->layers[0];
		r = cow_device_open_scratch(s, chain, 1, DEV_BYTES, &dev);
		layer_store_unlock(s);
		if (r) FAIL("importer round %d: open scratch: %s", i, strerror(-r));
		for (int k = 0; k < 2; k++) {
			if ((r = write_random(dev, &rng, model, (0x77ull << 40) | ((uint64_t)i << 8) | ((uint64_t)k << 4))))
				FAIL("importer: write: %s", strerror(-r));
			if ((r = cow_device_commit_layer(dev, top[k]))) FAIL("importer round %d: commit layer %d: %s", i, k, strerror(-r));
			usleep((useconds_t)(tap_rand(&rng) % 2000)); /* give gc a chance between the steps */
		}
		if ((r = layer_store_lock(s))) FAIL("importer: lock");
		snprintf(chain_id, sizeof chain_id, "sha256:%064x", i + 1);
		if ((r = layer_store_chain_put(s, chain_id, top[1]))) FAIL("importer round %d: chain put: %s", i, strerror(-r));
		snprintf(rec->name, sizeof rec->name, "imp-%d", i);
		rec->layer_count = 3;
		snprintf(rec->layers[1], SHA256_DIGEST_STRLEN, "%s", top[0]);
		snprintf(rec->layers[2], SHA256_DIGEST_STRLEN, "%s", top[1]);
		r = layer_store_image_put(s, rec);
		layer_store_unlock(s);
		if (r) FAIL("importer round %d: image put: %s", i, strerror(-r));
		if ((r = cow_device_close(dev))) FAIL("importer: close scratch: %s", strerror(-r));
		if ((r = image_matches(s, rec->name, model))) FAIL("importer round %d: read back: %s", i, strerror(-r));
		if (i % 2 == 1) {
			snprintf(rec->name, sizeof rec->name, "imp-%d", i - 1);
			if ((r = layer_store_image_remove(s, rec->name))) FAIL("importer: remove: %s", strerror(-r));
		}
		image_record_clear(rec);
		free(rec);
	}
	layer_store_close(s);
	_exit(0);
}

/* Runs gc until stop_path exists; writes the layers it removed to fd. */
static void collector(const char *stop_path, int fd)
{
	struct layer_store *s = open_store();
	uint64_t removed = 0, runs = 0, in_use = 0;
	struct stat st;
	while (stat(stop_path, &st) < 0) {
		struct layer_store_gc_stats gs;
		int r = layer_store_gc(s, 0, &gs);
		if (r) FAIL("gc run %llu: %s", (unsigned long long)runs, strerror(-r));
		removed += gs.layers_removed;
		in_use += gs.layers_in_use;
		runs++;
		usleep(500); /* the machine is shared: race, but do not spin */
	}
	layer_store_close(s);
	uint64_t out[3] = { runs, removed, in_use };
	if (write(fd, out, sizeof out) != sizeof out) _exit(2);
	_exit(0);
}

struct ref_ctx {
	struct layer_store *s;
	int unreferenced;
};

static int ref_fn(const char *digest, void *opaque)
{
	struct ref_ctx *c = opaque;
	uint64_t n = 0;
	if (layer_store_layer_refcount(c->s, digest, &n) || n == 0) {
		tap_diag("leaked layer %s", digest);
		c->unreferenced++;
	}
	return 0;
}

static void deterministic(void)
{
	struct layer_store *s = open_store();
	struct layer_store_gc_stats gs;
	struct layer *l;
	char d[SHA256_DIGEST_STRLEN], p[1024];
	struct layer_writer_options o = { .virtual_size_bytes = DEV_BYTES };
	struct layer_writer *w;
	uint8_t blk[4096] = { 1 };

	TAP_IS(layer_writer_create(s, &o, &w), 0, "pin: layer writer");
	layer_writer_add_data(w, 3, blk, 1);
	TAP_IS(layer_writer_commit_open(w, d, &l), 0, "pin: commit_open publishes an unreferenced layer, open");
	TAP_IS(layer_store_gc(s, 0, &gs), 0, "pin: gc");
	TAP_OK(gs.layers_removed == 0 && gs.layers_in_use == 1 && layer_store_layer_exists(s, d) == 1,
	       "pin: gc keeps the open layer (removed %llu, in use %llu)", (unsigned long long)gs.layers_removed,
	       (unsigned long long)gs.layers_in_use);
	TAP_IS(layer_store_layer_remove_unused(s, d), 0, "pin: remove_unused keeps it too");
	layer_close(l);
	TAP_IS(layer_store_gc(s, 0, &gs), 0, "pin: gc after close");
	TAP_OK(gs.layers_removed == 1 && layer_store_layer_exists(s, d) == 0, "pin: removed once closed");

	/* a held temp, made to look a day old */
	TAP_IS(layer_store_tmp_path(s, "held", p, sizeof p), 0, "hold: temp path");
	int fd = open(p, O_RDWR | O_CREAT | O_EXCL, 0644);
	int hold = layer_store_tmp_hold(p);
	struct utimbuf old = { .actime = time(NULL) - 86400, .modtime = time(NULL) - 86400 };
	utime(p, &old);
	TAP_OK(fd >= 0 && hold >= 0, "hold: temp held");
	TAP_IS(layer_store_gc(s, 3600, &gs), 0, "hold: gc --tmp-age 3600");
	TAP_OK(access(p, F_OK) == 0 && gs.temp_files_removed == 0, "hold: a day-old held temp is kept");
	close(hold);
	close(fd);
	TAP_IS(layer_store_gc(s, 3600, &gs), 0, "hold: gc after release");
	TAP_OK(access(p, F_OK) != 0 && gs.temp_files_removed == 1, "hold: removed once released");

	/* upper.map temps in a container: a live writer's is kept, a dead writer's removed, and gc
	 * never takes the container's lock (a device opening it meanwhile would get -EBUSY) */
	char dir[1024], live[1100], dead[1100];
	TAP_IS(base_image(s, "detbase"), 0, "container: base image");
	TAP_IS(layer_store_container_create(s, "detbase", "det"), 0, "container: created");
	layer_store_container_dir(s, "det", dir, sizeof dir);
	pid_t child = fork();
	if (child == 0) _exit(0);
	waitpid(child, NULL, 0);
	snprintf(live, sizeof live, "%s/upper.map.tmp.%d.1", dir, (int)getpid());
	snprintf(dead, sizeof dead, "%s/upper.map.tmp.%d.1", dir, (int)child);
	int tf = open(live, O_RDWR | O_CREAT, 0644);
	if (tf >= 0) close(tf);
	tf = open(dead, O_RDWR | O_CREAT, 0644);
	if (tf >= 0) close(tf);
	int lock = layer_store_container_lock(s, "det");
	TAP_OK(lock >= 0, "container: a device holds it");
	TAP_IS(layer_store_gc(s, 0, &gs), 0, "container: gc --tmp-age 0 while it is held");
	TAP_OK(access(live, F_OK) == 0, "container: the temp of a live writer is kept (a rewrite may be in flight)");
	TAP_OK(access(dead, F_OK) != 0, "container: the temp of a dead writer is removed");
	close(lock);
	unlink(live);
	TAP_IS(layer_store_container_remove(s, "det"), 0, "container: removed");
	TAP_IS(layer_store_image_remove(s, "detbase"), 0, "container: base image removed");
	layer_store_close(s);
}

int main(void)
{
	log_set_level(LOG_LEVEL_WARN);
	snprintf(root, sizeof root, "%s/store", tap_tmpdir());
	seed = tap_seed();
	int rounds = getenv("OCIBLK_GC_ROUNDS") ? atoi(getenv("OCIBLK_GC_ROUNDS")) : 25;

	deterministic();

	struct layer_store *s = open_store();
	TAP_IS(base_image(s, "base"), 0, "race: base image");
	TAP_IS(layer_store_container_create(s, "base", "c0"), 0, "race: container c0");
	TAP_IS(layer_store_container_create(s, "base", "c1"), 0, "race: container c1");

	char stop[600];
	snprintf(stop, sizeof stop, "%s/stop", tap_tmpdir());
	int pfd[2];
	if (pipe(pfd)) abort();
	pid_t gc_pid = fork();
	if (gc_pid == 0) collector(stop, pfd[1]);
	pid_t workers[3];
	for (int i = 0; i < 2; i++)
		if ((workers[i] = fork()) == 0) committer(i, rounds);
	if ((workers[2] = fork()) == 0) importer(rounds);
	const char *names[3] = { "committer 0", "committer 1", "importer" };
	for (int i = 0; i < 3; i++) {
		int st = 0;
		waitpid(workers[i], &st, 0);
		TAP_OK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "race: %s: %d rounds against a gc loop, every step succeeded", names[i], rounds);
	}
	close(open(stop, O_CREAT | O_WRONLY, 0644));
	int st = 0;
	uint64_t gcout[3] = { 0 };
	waitpid(gc_pid, &st, 0);
	TAP_OK(WIFEXITED(st) && WEXITSTATUS(st) == 0 && read(pfd[0], gcout, sizeof gcout) == sizeof gcout,
	       "race: gc loop never failed");
	tap_diag("gc ran %llu times, removed %llu layers, skipped %llu in use", (unsigned long long)gcout[0],
		 (unsigned long long)gcout[1], (unsigned long long)gcout[2]);
	TAP_OK(gcout[1] > 0, "race: gc removed garbage while the work ran (it really raced)");

	struct layer_store_gc_stats gs;
	TAP_IS(layer_store_gc(s, 0, &gs), 0, "after: final gc");
	TAP_IS(gs.layers_in_use, 0, "after: nothing is held");
	struct ref_ctx rc = { .s = s };
	layer_store_layer_foreach(s, ref_fn, &rc);
	TAP_IS(rc.unreferenced, 0, "after: every layer left is referenced (no leak)");
	TAP_IS(count_dir("tmp"), 0, "after: tmp/ is empty");
	struct layer_store_fsck_report rep;
	int fr = layer_store_fsck(s, &rep);
	TAP_IS(fr, 0, "after: fsck clean (%llu layers)", (unsigned long long)rep.layers_checked);
	layer_store_close(s);
	return tap_done();
}
