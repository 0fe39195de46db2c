/* Power-loss test of the store's durability promises, on tests/lib/crashvfs: a sequence of store
 * mutations (creating the store on a root that does not exist, two layer commits, image put, chain put, container create / put, image remove,
 * container remove, gc) is cut at every mutating I/O operation in turn, the disk is rewritten
 * into a state a real disk could hold after the power loss (several seeds per cut), and the store
 * is reopened.  Checked each time: fsck is clean; every step that had returned 0 before the cut
 * is still in effect (a store whose creation returned opens without being created again; one whose
 * creation was cut is created again); gc then runs and fsck is still clean. */
#include "layer-store/layer_store.h"
#include "common/log.h"
#include "common/vfs.h"
#include "tests/lib/crashvfs.h"
#include "tests/lib/tap.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SEEDS_PER_POINT 3
#define STEPS 9

static const char *CID = "sha256:4444444444444444444444444444444444444444444444444444444444444444";
static char digest_a[SHA256_DIGEST_STRLEN], digest_b[SHA256_DIGEST_STRLEN];

static int write_layer(struct layer_store *s, const char *parent, uint8_t fill, char out[SHA256_DIGEST_STRLEN])
{
	struct layer_writer_options o = { .virtual_size_bytes = 64 * 4096, .parent_digest = parent, .zstd_level = 1 };
	struct layer_writer *w;
	uint8_t blk[4096 * 20];
	int r = layer_writer_create(s, &o, &w);
	if (r) return r;
	for (size_t i = 0; i < sizeof blk; i++) blk[i] = (uint8_t)(fill + i / 4096 + (i % 97 == 0 ? i : 0));
	r = layer_writer_add_data(w, 3, blk, 20);
	if (!r) r = layer_writer_add_zero(w, 30, 5);
	if (r) {
		layer_writer_abort(w);
		return r;
	}
	return layer_writer_commit(w, out);
}

/* Runs the steps in order; returns how many returned 0 before the first failure. */
static int run_steps(struct layer_store *s)
{
	struct image_record img;
	struct container_record c;
	struct layer_store_gc_stats st;
	char d[SHA256_DIGEST_STRLEN];
	int k = 0;

	if (write_layer(s, NULL, 1, d) || strcmp(d, digest_a)) return k;
	k++;
	if (write_layer(s, digest_a, 2, d) || strcmp(d, digest_b)) return k;
	k++;
	memset(&img, 0, sizeof img);
	strcpy(img.name, "library/app:1");
	img.size_bytes = 64 * 4096;
	img.layer_count = 2;
	strcpy(img.layers[0], digest_a);
	strcpy(img.layers[1], digest_b);
	if (layer_store_image_put(s, &img)) return k;
	k++;
	if (layer_store_chain_put(s, CID, digest_b)) return k;
	k++;
	if (layer_store_container_create(s, "library/app:1", "ctr")) return k;
	k++;
	if (layer_store_container_get(s, "ctr", &c)) return k;
	c.layer_count = 1;
	if (layer_store_container_put(s, &c)) return k;
	k++;
	if (layer_store_image_remove(s, "library/app:1")) return k;
	k++;
	if (layer_store_container_remove(s, "ctr")) return k;
	k++;
	if (layer_store_gc(s, 0, &st)) return k;
	k++;
	return k;
}

/* Checks the promises of the first `done` steps on the reopened store; returns a description of
 * the first broken one, or NULL. */
static const char *check(struct layer_store *s, int done)
{
	struct layer_store_fsck_report rep;
	struct layer_store_gc_stats st;
	struct image_record img;
	struct container_record c;
	char d[SHA256_DIGEST_STRLEN];
	struct layer *l = NULL;

	/* Step s's effect must hold once it returned (done >= s) and while the step that undoes
	 * it (u) has not started (done + 1 < u): a step cut in the middle may or may not be in effect. */
	if (layer_store_fsck(s, &rep)) return "fsck not clean after the crash";
	if (done >= 1 && done + 1 < 9) {
		if (layer_open(s, digest_a, true, &l)) return "committed layer A lost or damaged";
		layer_close(l);
	}
	if (done >= 2 && done + 1 < 9) {
		if (layer_open(s, digest_b, true, &l)) return "committed layer B lost or damaged";
		layer_close(l);
	}
	if (done >= 3 && done + 1 < 7) {
		if (layer_store_image_get(s, "library/app:1", &img)) return "image record lost";
		if (img.layer_count != 2 || strcmp(img.layers[1], digest_b)) return "image record wrong";
	}
	if (done >= 7 && layer_store_image_get(s, "library/app:1", &img) != -ENOENT) return "removed image came back";
	if (done >= 4 && done + 1 < 9) {
		if (layer_store_chain_get(s, CID, d) || strcmp(d, digest_b)) return "chain record lost";
	}
	if (done >= 5 && done + 1 < 8) {
		if (layer_store_container_get(s, "ctr", &c)) return "container record lost";
		if (done >= 6 && c.layer_count != 1) return "container put lost";
		int fd = layer_store_container_lock(s, "ctr");
		if (fd < 0) return "container lock file lost";
		close(fd);
	}
	if (done >= 8 && layer_store_container_get(s, "ctr", &c) != -ENOENT) return "removed container came back";
	if (done >= 9 && (layer_store_layer_exists(s, digest_a) || layer_store_layer_exists(s, digest_b)))
		return "layers removed by gc came back";
	if (layer_store_gc(s, 0, &st)) return "gc after the crash failed";
	if (layer_store_fsck(s, &rep)) return "fsck not clean after gc";
	return NULL;
}

int main(void)
{
	uint64_t seed = tap_seed(), total_ops;
	char base[600], root[700], stash[700];
	struct layer_store *s;
	int failures = 0, points = 0, uncreated = 0, done_hist[STEPS + 1] = { 0 };

	snprintf(base, sizeof base, "%s", tap_tmpdir());
	snprintf(stash, sizeof stash, "%s/stash", base);

	/* Reference run (no crash) for the digests and the number of operations. */
	snprintf(root, sizeof root, "%s/ref", base);
	if (layer_store_open(root, LAYER_STORE_CREATE, &s)) return 1;
	if (write_layer(s, NULL, 1, digest_a) || write_layer(s, digest_a, 2, digest_b)) return 1;
	layer_store_close(s);
	snprintf(root, sizeof root, "%s/count", base);
	crashvfs_install(stash);
	if (layer_store_open(root, LAYER_STORE_CREATE, &s)) return 1;
	int k = run_steps(s);
	total_ops = crashvfs_op_count();
	crashvfs_uninstall();
	layer_store_close(s);
	TAP_IS(k, STEPS, "reference run completes all %d steps in %llu mutating operations", STEPS, (unsigned long long)total_ops);

	log_set_quiet(1);
	for (uint64_t n = 0; n <= total_ops; n++) {
		for (int sd = 0; sd < SEEDS_PER_POINT; sd++) {
			uint64_t crash_seed = seed * 1000003 + n * 31 + (uint64_t)sd;
			snprintf(root, sizeof root, "%s/s-%llu-%d", base, (unsigned long long)n, sd);
			crashvfs_install(stash);
			crashvfs_arm(n);
			s = NULL;
			bool created = layer_store_open(root, LAYER_STORE_CREATE, &s) == 0;
			int done = created ? run_steps(s) : 0;
			layer_store_close(s);
			if (crashvfs_crash(crash_seed, NULL)) return 1;
			crashvfs_uninstall();
			points++;
			done_hist[done]++;
			uncreated += !created;
			/* a store whose creation returned must open as it is; else creating it again must work */
			if (layer_store_open(root, created ? 0 : LAYER_STORE_CREATE, &s)) {
				failures++;
				tap_diag("crash at op %llu seed %llu: store does not %s", (unsigned long long)n, (unsigned long long)crash_seed,
					 created ? "reopen" : "create again");
				continue;
			}
			const char *why = check(s, done);
			if (why) {
				failures++;
				if (failures < 10)
					tap_diag("crash at op %llu (after %d steps) seed %llu: %s", (unsigned long long)n, done,
						 (unsigned long long)crash_seed, why);
			}
			layer_store_close(s);
			char cmd[800];
			if (!why) {
				snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
				if (system(cmd)) return 1;
			}
		}
	}
	log_set_quiet(0);
	tap_diag("crash points inside store creation: %d", uncreated);
	tap_diag("crash points by completed steps: 0:%d 1:%d 2:%d 3:%d 4:%d 5:%d 6:%d 7:%d 8:%d 9:%d", done_hist[0], done_hist[1],
		 done_hist[2], done_hist[3], done_hist[4], done_hist[5], done_hist[6], done_hist[7], done_hist[8], done_hist[9]);
	TAP_IS(failures, 0, "%d crash points: every one leaves a clean store with all completed steps in effect", points);
	return tap_done();
}
