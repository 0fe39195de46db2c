/* Unit tests for reference counts, gc and fsck: gc removes exactly the unreferenced layers,
 * the chain-id records of removed layers and old temp files; fsck is clean on a healthy store and
 * reports corrupt layers, records pointing at missing layers, wrong parent links and malformed
 * records. */
#include "layer-store/layer_store.h"
#include "common/log.h"
#include "common/vfs.h"
#include "tests/lib/tap.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <utime.h>

static struct layer_store *s;
static char root[512];

static void make_layer(const char *parent, uint8_t fill, int nblocks, char digest[SHA256_DIGEST_STRLEN])
{
	struct layer_writer_options o = { .virtual_size_bytes = 64 * 4096, .parent_digest = parent, .zstd_level = 1 };
	struct layer_writer *w;
	uint8_t blk[4096];
	memset(blk, fill, sizeof blk);
	if (layer_writer_create(s, &o, &w)) abort();
	for (int i = 0; i < nblocks; i++) {
		blk[0] = (uint8_t)i;
		if (layer_writer_add_data(w, (uint64_t)i, blk, 1)) abort();
	}
	if (layer_writer_commit(w, digest)) abort();
}

static void put_image(const char *name, int count, const char *a, const char *b)
{
	struct image_record img;
	memset(&img, 0, sizeof img);
	snprintf(img.name, sizeof img.name, "%s", name);
	img.size_bytes = 64 * 4096;
	img.layer_count = (uint32_t)count;
	strcpy(img.layers[0], a);
	if (count > 1) strcpy(img.layers[1], b);
	if (layer_store_image_put(s, &img)) abort();
}

static uint64_t refs(const char *d)
{
	uint64_t c = 999;
	if (layer_store_layer_refcount(s, d, &c)) return 998;
	return c;
}

static uint64_t file_size(const char *digest)
{
	char p[4096];
	struct stat st;
	layer_store_layer_path(s, digest, p, sizeof p);
	return stat(p, &st) == 0 ? (uint64_t)st.st_size : 0;
}

static void touch_old(const char *path, time_t age)
{
	struct utimbuf t = { .actime = time(NULL) - age, .modtime = time(NULL) - age };
	FILE *f = fopen(path, "w");
	fputs("x", f);
	fclose(f);
	utime(path, &t);
}

int main(void)
{
	char l1[SHA256_DIGEST_STRLEN], l2[SHA256_DIGEST_STRLEN], l3[SHA256_DIGEST_STRLEN], l4[SHA256_DIGEST_STRLEN],
		l5[SHA256_DIGEST_STRLEN], got[SHA256_DIGEST_STRLEN], p[4096];
	const char *cid1 = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
	const char *cid2 = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
	struct layer_store_gc_stats st;
	struct layer_store_fsck_report rep;

	tap_seed();
	snprintf(root, sizeof root, "%s/store", tap_tmpdir());
	if (layer_store_open(root, LAYER_STORE_CREATE, &s)) return 1;
	make_layer(NULL, 1, 10, l1);
	make_layer(l1, 2, 5, l2);
	make_layer(l1, 3, 7, l3); /* unreferenced */
	make_layer(NULL, 4, 3, l4); /* unreferenced */
	put_image("img", 2, l1, l2);
	put_image("base", 1, l1, NULL);
	TAP_IS(layer_store_container_create(s, "img", "ctr"), 0, "container from img");
	TAP_IS(layer_store_chain_put(s, cid1, l2), 0, "chain record to a referenced layer");
	TAP_IS(layer_store_chain_put(s, cid2, l3), 0, "chain record to an unreferenced layer");

	TAP_IS(refs(l1), 3, "l1 referenced by two images and a container");
	TAP_IS(refs(l2), 2, "l2 referenced by an image and a container");
	TAP_IS(refs(l3), 0, "l3 unreferenced");

	TAP_IS(layer_store_fsck(s, &rep), 0, "fsck of a healthy store is clean");
	TAP_OK(rep.layers_checked == 4 && rep.images_checked == 2 && rep.containers_checked == 1 && rep.errors == 0,
	       "fsck counts: %llu layers, %llu images, %llu containers", (unsigned long long)rep.layers_checked,
	       (unsigned long long)rep.images_checked, (unsigned long long)rep.containers_checked);

	/* Temp files: one old, one fresh, an old interrupted atomic record write. */
	snprintf(p, sizeof p, "%s/tmp/layer.1.old", root);
	touch_old(p, 7200);
	snprintf(p, sizeof p, "%s/tmp/layer.1.fresh", root);
	touch_old(p, 0);
	snprintf(p, sizeof p, "%s/images/x.json.tmp.1.2", root);
	touch_old(p, 7200);
	/* In a container directory the <pid> must be dead too (cow/ rewrites upper.map without the
	 * store lock): a child that has exited and been reaped is the writer that crashed. */
	pid_t dead = fork();
	if (dead == 0) _exit(0);
	waitpid(dead, NULL, 0);
	layer_store_container_dir(s, "ctr", p, sizeof p);
	snprintf(p + strlen(p), sizeof p - strlen(p), "/config.json.tmp.%d.8", (int)dead);
	touch_old(p, 7200);
	/* cow/ crashed while rewriting upper.map (vfs_write_file_atomic's temp), long ago and just now. */
	char cdir[1024];
	layer_store_container_dir(s, "ctr", cdir, sizeof cdir);
	snprintf(p, sizeof p, "%s/upper.map.tmp.%d.9", cdir, (int)dead);
	touch_old(p, 7200);
	snprintf(p, sizeof p, "%s/upper.map.tmp.%d.10", cdir, (int)dead);
	touch_old(p, 0);
	/* an old one whose writer lives (a device rewriting its map right now): kept */
	snprintf(p, sizeof p, "%s/upper.map.tmp.%d.11", cdir, (int)getpid());
	touch_old(p, 7200);
	/* Names that are not "<file>.tmp.<pid>.<n>", and the container's own files, all old: kept. */
	static const char *const not_temps[] = { "upper.map.tmp.7", "upper.map.tmp.x.1", "upper.map.tmp.1.", ".tmp.1.2",
						 "upper.maptmp.1.2", "config.json", "lock" };
	for (size_t i = 0; i < sizeof not_temps / sizeof not_temps[0]; i++) {
		struct utimbuf t = { .actime = time(NULL) - 7200, .modtime = time(NULL) - 7200 };
		snprintf(p, sizeof p, "%s/%s", cdir, not_temps[i]);
		if (access(p, F_OK)) touch_old(p, 7200);
		else utime(p, &t);
	}
	/* A real record whose name looks like a temp: never swept. */
	put_image("odd.tmp.1.2", 1, l1, NULL);
	snprintf(p, sizeof p, "%s/images/odd.tmp.1.2.json", root);
	{
		struct utimbuf t = { .actime = time(NULL) - 7200, .modtime = time(NULL) - 7200 };
		utime(p, &t);
	}
	uint64_t freed = file_size(l3) + file_size(l4);

	TAP_IS(layer_store_gc(s, 3600, &st), 0, "gc");
	TAP_IS(st.layers_removed, 2, "gc removed 2 layers");
	TAP_IS(st.bytes_freed, freed, "gc freed their bytes (%llu)", (unsigned long long)freed);
	TAP_IS(st.chain_records_removed, 1, "gc removed the chain record of a removed layer");
	TAP_IS(st.temp_files_removed, 4, "gc removed the 4 old temp files");
	snprintf(p, sizeof p, "%s/upper.map.tmp.%d.9", cdir, (int)dead);
	TAP_OK(access(p, F_OK) != 0, "old upper.map temp of a crashed cow rewrite removed");
	snprintf(p, sizeof p, "%s/upper.map.tmp.%d.10", cdir, (int)dead);
	TAP_OK(access(p, F_OK) == 0, "fresh upper.map temp kept (a rewrite may be in progress)");
	snprintf(p, sizeof p, "%s/upper.map.tmp.%d.11", cdir, (int)getpid());
	TAP_OK(access(p, F_OK) == 0, "old upper.map temp of a live writer kept");
	unlink(p);
	for (size_t i = 0; i < sizeof not_temps / sizeof not_temps[0]; i++) {
		snprintf(p, sizeof p, "%s/%s", cdir, not_temps[i]);
		TAP_OK(access(p, F_OK) == 0, "old %s in the container directory kept", not_temps[i]);
	}
	{
		struct container_record cr;
		TAP_IS(layer_store_container_get(s, "ctr", &cr), 0, "container record still reads after gc");
	}
	TAP_OK(layer_store_layer_exists(s, l1) == 1 && layer_store_layer_exists(s, l2) == 1, "referenced layers kept");
	TAP_OK(layer_store_layer_exists(s, l3) == 0 && layer_store_layer_exists(s, l4) == 0, "unreferenced layers gone");
	TAP_IS(layer_store_chain_get(s, cid1, got), 0, "chain record of a kept layer kept");
	{
		struct image_record odd;
		TAP_IS(layer_store_image_get(s, "odd.tmp.1.2", &odd), 0, "an old record named like a temp file survives gc");
		TAP_IS(layer_store_image_remove(s, "odd.tmp.1.2"), 0, "remove it");
	}
	log_set_quiet(1);
	TAP_IS(layer_store_chain_get(s, cid2, got), -ENOENT, "chain record of a removed layer gone");
	log_set_quiet(0);
	snprintf(p, sizeof p, "%s/tmp/layer.1.fresh", root);
	TAP_OK(access(p, F_OK) == 0, "fresh temp file kept");
	TAP_IS(layer_store_gc(s, 3600, &st), 0, "gc again");
	TAP_OK(st.layers_removed == 0 && st.chain_records_removed == 0 && st.temp_files_removed == 0, "second gc removes nothing");

	/* A layer only a container references survives gc. */
	TAP_IS(layer_store_image_remove(s, "img"), 0, "remove image img");
	TAP_IS(refs(l2), 1, "l2 now referenced by the container only");
	TAP_IS(layer_store_gc(s, 3600, &st), 0, "gc");
	TAP_IS(st.layers_removed, 0, "l2 kept for the container");
	TAP_IS(layer_store_container_remove(s, "ctr"), 0, "remove the container");
	TAP_IS(layer_store_gc(s, 0, &st), 0, "gc with min age 0");
	TAP_IS(st.layers_removed, 1, "l2 removed once unreferenced");
	TAP_IS(st.temp_files_removed, 1, "min age 0 removes the fresh temp file too");
	TAP_IS(layer_store_chain_get(s, cid1, got), -ENOENT, "its chain record went with it");
	TAP_IS(layer_store_fsck(s, &rep), 0, "fsck clean after gc");

	/* fsck problems, one at a time. */
	log_set_quiet(1);
	/* 1. A corrupt chunk in a referenced layer: the layer and the image using it. */
	{
		char lp[4096];
		uint8_t b;
		layer_store_layer_path(s, l1, lp, sizeof lp);
		int fd = open(lp, O_RDWR);
		pread(fd, &b, 1, 4096 + 10);
		b ^= 4;
		pwrite(fd, &b, 1, 4096 + 10);
		TAP_IS(layer_store_fsck(s, &rep), -EUCLEAN, "fsck finds a flipped bit in a chunk");
		TAP_IS(rep.errors, 2, "the layer and the image that uses it");
		b ^= 4;
		pwrite(fd, &b, 1, 4096 + 10);
		close(fd);
		TAP_IS(layer_store_fsck(s, &rep), 0, "clean again once repaired");
	}
	/* 2. A record pointing at a missing layer. */
	make_layer(l1, 5, 2, l5);
	put_image("two", 2, l1, l5);
	layer_store_layer_path(s, l5, p, sizeof p);
	unlink(p);
	TAP_IS(layer_store_fsck(s, &rep), -EUCLEAN, "fsck finds a record pointing at a missing layer");
	TAP_IS(rep.errors, 1, "one error");
	layer_store_image_remove(s, "two");
	/* 3. A wrong parent link: l2 (parent l1) at the bottom of a chain. */
	make_layer(l1, 2, 5, l2);
	put_image("wrong", 1, l2, NULL);
	TAP_IS(layer_store_fsck(s, &rep), -EUCLEAN, "fsck finds a layer whose parent is not the layer below");
	TAP_IS(rep.errors, 1, "one error");
	layer_store_image_remove(s, "wrong");
	/* 4. A malformed record: reported, and gc refuses to delete layers while it exists. */
	snprintf(p, sizeof p, "%s/images/junk.json", root);
	vfs_write_file_atomic(p, "not json", 8);
	TAP_IS(layer_store_fsck(s, &rep), -EUCLEAN, "fsck reports a malformed record");
	TAP_IS(rep.errors, 1, "one error");
	TAP_IS(layer_store_gc(s, 0, &st), -EUCLEAN, "gc refuses to run with an unreadable record");
	TAP_IS(layer_store_layer_exists(s, l2), 1, "nothing was removed");
	unlink(p);
	TAP_IS(layer_store_gc(s, 0, &st), 0, "gc runs once the record is gone");
	TAP_IS(st.layers_removed, 1, "and removes the now unreferenced l2");
	TAP_IS(layer_store_fsck(s, &rep), 0, "fsck clean at the end");
	log_set_quiet(0);

	layer_store_close(s);
	return tap_done();
}
