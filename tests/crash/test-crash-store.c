/* Power-loss test of the layer store: a seeded workload of layer commits and record updates
 * (layer_writer_commit, image_put/remove, chain_put, container_create/put/remove, gc) is cut at
 * every crash point of the crashvfs, several times with different crash outcomes.  After each
 * crash the store must open, fsck must be clean, every record must be exactly its value before
 * or after the step that was cut (never partial, never lost once its call returned), every layer a
 * record names must be there, every container must open as a cow device, and gc must then clean
 * the temp files and leave fsck clean.
 * Store creation (layer_store_open with LAYER_STORE_CREATE on a root whose parent does not exist
 * either) is cut at each of its crash points too: once it has returned 0 the store must open
 * without LAYER_STORE_CREATE after the crash; whatever the cut, creating it again must work and
 * give a usable store.
 *
 * OCIBLK_SEED replays a run; OCIBLK_CRASH_POINTS sets the number of crash runs (default 1200). */
#include "common/log.h"
#include "common/vfs.h"
#include "cow/cow.h"
#include "layer-store/layer_store.h"
#include "tests/lib/crashvfs.h"
#include "tests/lib/tap.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_KEYS 64
#define VAL_MAX 1024
#define KEY_MAX 400
#define N_LAYERS 4
#define N_STEPS 18

static const char *const chain_ids[] = {
	"sha256:1111111111111111111111111111111111111111111111111111111111111111",
	"sha256:3333333333333333333333333333333333333333333333333333333333333333",
	"sha256:4444444444444444444444444444444444444444444444444444444444444444",
};

/* A state of the store as key -> value strings ("image:NAME" -> "size chain..."). */
struct state {
	int n;
	char key[MAX_KEYS][KEY_MAX];
	char val[MAX_KEYS][VAL_MAX];
};

static uint64_t seed;
static char digests[N_LAYERS][SHA256_DIGEST_STRLEN];

static const char *state_get(const struct state *s, const char *key)
{
	for (int i = 0; i < s->n; i++)
		if (!strcmp(s->key[i], key)) return s->val[i];
	return NULL;
}

static void state_set(struct state *s, const char *key, const char *val)
{
	for (int i = 0; i < s->n; i++)
		if (!strcmp(s->key[i], key)) {
			snprintf(s->val[i], VAL_MAX, "%s", val);
			return;
		}
	if (s->n < MAX_KEYS) {
		snprintf(s->key[s->n], sizeof s->key[0], "%s", key);
		snprintf(s->val[s->n], VAL_MAX, "%s", val);
		s->n++;
	}
}

static void state_del(struct state *s, const char *key)
{
	for (int i = 0; i < s->n; i++)
		if (!strcmp(s->key[i], key)) {
			s->n--;
			if (i != s->n) {
				memcpy(s->key[i], s->key[s->n], sizeof s->key[0]);
				memcpy(s->val[i], s->val[s->n], sizeof s->val[0]);
			}
			return;
		}
}

static void chain_str(char *out, size_t len, uint64_t size, uint32_t n, const char layers[][SHA256_DIGEST_STRLEN])
{
	size_t o = (size_t)snprintf(out, len, "%llu", (unsigned long long)size);
	for (uint32_t i = 0; i < n && o < len; i++) o += (size_t)snprintf(out + o, len - o, " %s", layers[i]);
}

/* ---------------------------------------------------------------- reading the store --------- */

struct snap_ctx {
	struct layer_store *store;
	struct state *st;
	int bad;
};

static int snap_image(const char *name, void *opaque)
{
	struct snap_ctx *c = opaque;
	struct image_record rec;
	char key[KEY_MAX], val[VAL_MAX];
	snprintf(key, sizeof key, "image:%s", name);
	if (layer_store_image_get(c->store, name, &rec)) {
		state_set(c->st, key, "<unreadable>");
		c->bad++;
		return 0;
	}
	chain_str(val, sizeof val, rec.size_bytes, rec.layer_count, rec.layers);
	image_record_clear(&rec);
	state_set(c->st, key, val);
	return 0;
}

static int snap_container(const char *name, void *opaque)
{
	struct snap_ctx *c = opaque;
	struct container_record rec;
	char key[KEY_MAX], val[VAL_MAX], ch[VAL_MAX - 200];
	snprintf(key, sizeof key, "container:%s", name);
	if (layer_store_container_get(c->store, name, &rec)) {
		state_set(c->st, key, "<unreadable>");
		c->bad++;
		return 0;
	}
	chain_str(ch, sizeof ch, rec.size_bytes, rec.layer_count, rec.layers);
	snprintf(val, sizeof val, "from %s: %s", rec.image, ch);
	state_set(c->st, key, val);
	return 0;
}

static int snap_layer(const char *digest, void *opaque)
{
	struct snap_ctx *c = opaque;
	char key[KEY_MAX];
	snprintf(key, sizeof key, "layer:%s", digest);
	state_set(c->st, key, "present");
	return 0;
}

static int snapshot(struct layer_store *store, struct state *st)
{
	struct snap_ctx c = { .store = store, .st = st };
	int r;
	st->n = 0;
	r = layer_store_image_foreach(store, snap_image, &c);
	if (!r) r = layer_store_container_foreach(store, snap_container, &c);
	if (!r) r = layer_store_layer_foreach(store, snap_layer, &c);
	for (size_t i = 0; !r && i < sizeof chain_ids / sizeof chain_ids[0]; i++) {
		char layer[SHA256_DIGEST_STRLEN], key[KEY_MAX];
		int g = layer_store_chain_get(store, chain_ids[i], layer);
		snprintf(key, sizeof key, "chain:%s", chain_ids[i]);
		if (!g) state_set(st, key, layer);
		else if (g != -ENOENT) state_set(st, key, "<unreadable>");
	}
	return r ? r : c.bad;
}

/* ---------------------------------------------------------------- the workload -------------- */

/* Layer i of the workload: deterministic from the seed. */
static int commit_layer_to(struct layer_store *s, int i, const char *parent, char digest[SHA256_DIGEST_STRLEN])
{
	struct layer_writer_options o = { .virtual_size_bytes = 96 * 4096, .parent_digest = parent,
					  .chunk_blocks = 4, .zstd_level = (i & 1) ? 3 : 0 };
	struct layer_writer *w;
	uint64_t x = seed * 31 + (uint64_t)i + 1;
	static uint8_t buf[8 * 4096];
	int r = layer_writer_create(s, &o, &w);
	if (r) return r;
	for (uint64_t b = 0; b < 96 && !r;) {
		uint64_t kind = tap_rand(&x) % 4, n = 1 + tap_rand(&x) % 8;
		if (b + n > 96) n = 96 - b;
		if (kind == 0) {
			r = layer_writer_add_zero(w, b, n);
		} else if (kind != 1) {
			for (size_t k = 0; k < n * 4096; k += 8) {
				uint64_t v = (i & 1) ? (tap_rand(&x) & 0x0F0F0F0F0F0F0F0Full) : tap_rand(&x);
				memcpy(buf + k, &v, 8);
			}
			r = layer_writer_add_data(w, b, buf, n);
		}
		b += n;
	}
	if (r) {
		layer_writer_abort(w);
		return r;
	}
	return layer_writer_commit(w, digest);
}

/* digest is only updated when the commit succeeds (a cut commit may scribble on its output). */
static int commit_layer(struct layer_store *s, int i, const char *parent, char digest[SHA256_DIGEST_STRLEN])
{
	char d[SHA256_DIGEST_STRLEN];
	int r = commit_layer_to(s, i, parent, d);
	if (!r) memcpy(digest, d, sizeof d);
	return r;
}

static int put_image(struct layer_store *s, struct state *m, const char *name, int n, const int *layers)
{
	struct image_record rec = { 0 };
	char key[KEY_MAX], val[VAL_MAX];
	int r;
	snprintf(rec.name, sizeof rec.name, "%s", name);
	rec.size_bytes = 96 * 4096;
	rec.layer_count = (uint32_t)n;
	rec.created_unix = 1700000000;
	for (int i = 0; i < n; i++) memcpy(rec.layers[i], digests[layers[i]], SHA256_DIGEST_STRLEN);
	r = layer_store_image_put(s, &rec);
	if (r) return r;
	snprintf(key, sizeof key, "image:%s", name);
	chain_str(val, sizeof val, rec.size_bytes, rec.layer_count, rec.layers);
	state_set(m, key, val);
	return 0;
}

static void set_container(struct state *m, const char *name, const char *image)
{
	char key[KEY_MAX], val[VAL_MAX], ik[KEY_MAX];
	snprintf(ik, sizeof ik, "image:%s", image);
	snprintf(key, sizeof key, "container:%s", name);
	snprintf(val, sizeof val, "from %s: %s", image, state_get(m, ik));
	state_set(m, key, val);
}

static void set_layer(struct state *m, int i)
{
	char key[KEY_MAX];
	snprintf(key, sizeof key, "layer:%s", digests[i]);
	state_set(m, key, "present");
}

static void del_key(struct state *m, const char *prefix, const char *name)
{
	char key[KEY_MAX];
	snprintf(key, sizeof key, "%s:%s", prefix, name);
	state_del(m, key);
}

/* Runs step k on the store, updating the model m (which holds the state before it) on success. */
static int run_step(struct layer_store *s, int k, struct state *m)
{
	static const int l0[] = { 0 }, l01[] = { 0, 1 };
	struct layer_store_gc_stats gs;
	struct container_record c;
	char key[KEY_MAX];
	int r;
	switch (k) {
	case 0:
		r = commit_layer(s, 0, NULL, digests[0]);
		if (!r) set_layer(m, 0);
		return r;
	case 1: return put_image(s, m, "img-a", 1, l0);
	case 2:
		r = layer_store_chain_put(s, chain_ids[0], digests[0]);
		snprintf(key, sizeof key, "chain:%s", chain_ids[0]);
		if (!r) state_set(m, key, digests[0]);
		return r;
	case 3:
		r = commit_layer(s, 1, digests[0], digests[1]);
		if (!r) set_layer(m, 1);
		return r;
	case 4: return put_image(s, m, "img-b", 2, l01);
	case 5:
		r = layer_store_container_create(s, "img-b", "ctr-1");
		if (!r) set_container(m, "ctr-1", "img-b");
		return r;
	case 6: return put_image(s, m, "img-a", 2, l01); /* replaces the record */
	case 7:
		r = layer_store_container_create(s, "img-a", "ctr-2");
		if (!r) set_container(m, "ctr-2", "img-a");
		return r;
	case 8:
		r = commit_layer(s, 2, digests[1], digests[2]);
		if (!r) set_layer(m, 2);
		return r;
	case 9:
		r = layer_store_chain_put(s, chain_ids[1], digests[2]);
		snprintf(key, sizeof key, "chain:%s", chain_ids[1]);
		if (!r) state_set(m, key, digests[2]);
		return r;
	case 10: /* what cow_device_commit does to the container: a new chain */
		r = layer_store_container_get(s, "ctr-2", &c);
		if (r) return r;
		c.layer_count = 3;
		memcpy(c.layers[2], digests[2], SHA256_DIGEST_STRLEN);
		r = layer_store_container_put(s, &c);
		if (!r) {
			char val[VAL_MAX], ch[VAL_MAX - 200];
			chain_str(ch, sizeof ch, c.size_bytes, c.layer_count, c.layers);
			snprintf(val, sizeof val, "from %s: %s", c.image, ch);
			state_set(m, "container:ctr-2", val);
		}
		return r;
	case 11:
		r = layer_store_container_remove(s, "ctr-1");
		if (!r) del_key(m, "container", "ctr-1");
		return r;
	case 12:
		r = layer_store_image_remove(s, "img-b");
		if (!r) del_key(m, "image", "img-b");
		return r;
	case 13:
		r = commit_layer(s, 3, NULL, digests[3]);
		if (!r) set_layer(m, 3);
		return r;
	case 14:
		r = layer_store_chain_put(s, chain_ids[2], digests[3]);
		snprintf(key, sizeof key, "chain:%s", chain_ids[2]);
		if (!r) state_set(m, key, digests[3]);
		return r;
	case 15: /* layer 3 is unreferenced: removed with its chain record */
	case 17: /* after ctr-2 is gone, layer 2 too */
		r = layer_store_gc(s, 0, &gs);
		if (!r) {
			int gone = k == 15 ? 3 : 2;
			del_key(m, "layer", digests[gone]);
			del_key(m, "chain", chain_ids[k == 15 ? 2 : 1]);
		}
		return r;
	case 16:
		r = layer_store_container_remove(s, "ctr-2");
		if (!r) del_key(m, "container", "ctr-2");
		return r;
	}
	return -EINVAL;
}

/* ---------------------------------------------------------------- one crash run ------------- */

static char root[512], stash[512], init_root[512];
static struct state states[N_STEPS + 1];

/* Fresh empty store at root (POSIX vfs). */
static int fresh_store(struct layer_store **out)
{
	int r = crashvfs_remove_tree(root);
	if (r) return r;
	return layer_store_open(root, LAYER_STORE_CREATE, out);
}

/* Every key of got must hold its value in a or in b ("absent" included). */
static int check_state(const struct state *got, const struct state *a, const struct state *b, char *why, size_t why_len)
{
	const struct state *all[3] = { got, a, b };
	for (int w = 0; w < 3; w++)
		for (int i = 0; i < all[w]->n; i++) {
			const char *key = all[w]->key[i];
			const char *g = state_get(got, key), *va = state_get(a, key), *vb = state_get(b, key);
			bool ok_a = (!g && !va) || (g && va && !strcmp(g, va));
			bool ok_b = (!g && !vb) || (g && vb && !strcmp(g, vb));
			if (!ok_a && !ok_b) {
				snprintf(why, why_len, "%s is \"%.200s\", expected \"%.200s\" or \"%.200s\"", key, g ? g : "(absent)",
					 va ? va : "(absent)", vb ? vb : "(absent)");
				return -1;
			}
		}
	return 0;
}

static int count_entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	int n = 0;
	if (!d) return -1;
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) n++;
	closedir(d);
	return n;
}

/* Runs the workload cut at op `point`, crashes with crash_seed, checks.  0 when all is well, else
 * fills why.  *cut_step receives the step that was cut (N_STEPS if none). */
static int crash_run(uint64_t point, uint64_t crash_seed, int *cut_step, char *why, size_t why_len)
{
	struct layer_store *s = NULL;
	struct layer_store_fsck_report fr;
	struct layer_store_gc_stats gs;
	struct state m = { 0 }, got, after_gc;
	char p[700];
	int k, r;

	r = fresh_store(&s);
	if (r) {
		snprintf(why, why_len, "fresh store: %d", r);
		return -1;
	}
	crashvfs_settle();
	crashvfs_arm(point);
	log_set_quiet(1);
	for (k = 0; k < N_STEPS; k++) {
		r = run_step(s, k, &m);
		if (r) break;
	}
	layer_store_close(s);
	s = NULL;
	log_set_quiet(0);
	*cut_step = k;
	if (r && !crashvfs_power_is_cut()) {
		snprintf(why, why_len, "step %d failed with %d without a power cut", k, r);
		return -1;
	}
	r = crashvfs_crash(crash_seed, NULL); /* the checks below run on the crashvfs too: no real fsync */
	if (r) {
		snprintf(why, why_len, "crashvfs_crash: %d", r);
		return -1;
	}

	r = layer_store_open(root, 0, &s);
	if (r) {
		snprintf(why, why_len, "store does not open after the crash: %d", r);
		return -1;
	}
	r = layer_store_fsck(s, &fr);
	if (r) {
		snprintf(why, why_len, "fsck after the crash: %d (%llu errors)", r, (unsigned long long)fr.errors);
		goto fail;
	}
	r = snapshot(s, &got);
	if (r) {
		snprintf(why, why_len, "reading the records after the crash: %d", r);
		goto fail;
	}
	if (check_state(&got, &states[k], &states[k < N_STEPS ? k + 1 : k], why, why_len)) goto fail;
	/* every container that is there is usable by cow/ */
	for (int i = 0; i < got.n; i++) {
		struct cow_device *dev;
		struct cow_check_report cr;
		const char *name = got.key[i] + strlen("container:");
		if (strncmp(got.key[i], "container:", 10)) continue;
		if ((r = cow_device_open_container(s, name, &dev)) || (r = cow_device_close(dev)) ||
		    (r = cow_container_check(s, name, &cr))) {
			snprintf(why, why_len, "container %s after the crash: cow open/close/check: %d", name, r);
			goto fail;
		}
	}
	r = layer_store_gc(s, 0, &gs);
	if (r) {
		snprintf(why, why_len, "gc after the crash: %d", r);
		goto fail;
	}
	r = layer_store_fsck(s, &fr);
	if (r) {
		snprintf(why, why_len, "fsck after gc: %d (%llu errors)", r, (unsigned long long)fr.errors);
		goto fail;
	}
	snprintf(p, sizeof p, "%s/tmp", root);
	if (count_entries(p) != 0) {
		snprintf(why, why_len, "gc left %d entries in tmp/", count_entries(p));
		goto fail;
	}
	r = snapshot(s, &after_gc);
	if (r) {
		snprintf(why, why_len, "reading the records after gc: %d", r);
		goto fail;
	}
	/* gc changes no record and removes only unreferenced layers (fsck proved the rest are there) */
	for (int i = 0; i < got.n; i++) {
		const char *v = state_get(&after_gc, got.key[i]);
		if (!strncmp(got.key[i], "layer:", 6) || !strncmp(got.key[i], "chain:", 6)) continue;
		if (!v || strcmp(v, got.val[i])) {
			snprintf(why, why_len, "gc changed %s", got.key[i]);
			goto fail;
		}
	}
	layer_store_close(s);
	return 0;
fail:
	layer_store_close(s);
	return -1;
}

/* ---------------------------------------------------------------- store creation ------------ */

/* Creates the store at init_root (its parent made too) cut at op `point`, crashes, checks.  0 when
 * all is well, else fills why.  *returned: whether the creation returned 0 before the cut. */
static int init_run(uint64_t point, uint64_t crash_seed, int *returned, char *why, size_t why_len)
{
	struct layer_store *s = NULL;
	struct layer_store_fsck_report fr;
	char parent[600], d[SHA256_DIGEST_STRLEN];
	int r;
	snprintf(parent, sizeof parent, "%s/init", crashvfs_workdir());
	r = crashvfs_remove_tree(parent);
	if (r) {
		snprintf(why, why_len, "removing %s: %d", parent, r);
		return -1;
	}
	crashvfs_settle();
	crashvfs_arm(point);
	log_set_quiet(1);
	r = layer_store_open(init_root, LAYER_STORE_CREATE, &s);
	log_set_quiet(0);
	*returned = r == 0;
	layer_store_close(s);
	s = NULL;
	if (r && !crashvfs_power_is_cut()) {
		snprintf(why, why_len, "store creation failed with %d without a power cut", r);
		return -1;
	}
	r = crashvfs_crash(crash_seed, NULL);
	if (r) {
		snprintf(why, why_len, "crashvfs_crash: %d", r);
		return -1;
	}
	if (*returned) {
		/* before any open, which would make it again: a reader without write access cannot */
		char lock[700];
		struct stat lst;
		snprintf(lock, sizeof lock, "%s/lock", init_root);
		if (stat(lock, &lst) < 0) {
			snprintf(why, why_len, "store creation had returned, but its lock file is gone after the crash");
			return -1;
		}
		log_set_quiet(1);
		r = layer_store_open(init_root, 0, &s);
		log_set_quiet(0);
		if (r) {
			snprintf(why, why_len, "store creation had returned, but the store does not open after the crash: %d", r);
			return -1;
		}
		r = layer_store_fsck(s, &fr);
		layer_store_close(s);
		s = NULL;
		if (r) {
			snprintf(why, why_len, "fsck after the crash: %d", r);
			return -1;
		}
	}
	r = layer_store_open(init_root, LAYER_STORE_CREATE, &s);
	if (r) {
		snprintf(why, why_len, "creating the store again after the crash: %d", r);
		return -1;
	}
	r = commit_layer(s, 0, NULL, d);
	if (!r) r = layer_store_fsck(s, &fr);
	layer_store_close(s);
	if (r) {
		snprintf(why, why_len, "the store created again after the crash: layer commit / fsck: %d", r);
		return -1;
	}
	return 0;
}

/* Every crash point of store creation, several crash outcomes each. */
static void test_store_creation(void)
{
	uint64_t k_ops, runs = 0, passed = 0, returned_runs = 0;
	struct layer_store *s = NULL;
	int failures = 0, r, returned;
	char parent[600];
	snprintf(init_root, sizeof init_root, "%s/init/store", crashvfs_workdir());
	snprintf(parent, sizeof parent, "%s/init", crashvfs_workdir());
	crashvfs_remove_tree(parent);
	crashvfs_settle();
	crashvfs_arm(UINT64_MAX);
	r = layer_store_open(init_root, LAYER_STORE_CREATE, &s);
	k_ops = crashvfs_op_count();
	layer_store_close(s);
	if (!TAP_IS(r, 0, "store creation runs without a crash: %llu crash points", (unsigned long long)k_ops)) return;
	for (uint64_t point = 0; point <= k_ops; point++)
		for (uint64_t j = 0; j < 8; j++, runs++) {
			uint64_t crash_seed = seed ^ ((runs + 1) * 0xD1B54A32D192ED03ull);
			char why[1024];
			if (init_run(point, crash_seed, &returned, why, sizeof why) == 0) {
				passed++;
				returned_runs += (uint64_t)returned;
			} else if (failures++ < 10) {
				tap_ok(0, "store creation cut at crash point %llu, crash seed %llu: %s", (unsigned long long)point,
				       (unsigned long long)crash_seed, why);
			}
		}
	TAP_IS(passed, runs, "%llu of %llu cut store creations passed (%llu had returned: the store opens after the crash)",
	       (unsigned long long)passed, (unsigned long long)runs, (unsigned long long)returned_runs);
}

int main(void)
{
	struct layer_store *s;
	uint64_t k_ops, runs, passed = 0, step_hist[N_STEPS + 1] = { 0 };
	const char *e = getenv("OCIBLK_CRASH_POINTS");
	int failures = 0, r = 0;

	seed = tap_seed();
	runs = e ? strtoull(e, NULL, 0) : 1200;
	snprintf(root, sizeof root, "%s/store", crashvfs_workdir());
	snprintf(stash, sizeof stash, "%s/stash", crashvfs_workdir());

	/* The clean run: model states after each step, and the number of crash points. */
	TAP_IS(crashvfs_install(stash), 0, "crashvfs installed");
	if (!TAP_IS(fresh_store(&s), 0, "fresh store")) return tap_done();
	crashvfs_settle();
	crashvfs_arm(UINT64_MAX);
	for (int k = 0; k < N_STEPS && !r; k++) {
		states[k + 1] = states[k];
		r = run_step(s, k, &states[k + 1]);
		if (r) tap_diag("step %d: %d", k, r);
	}
	k_ops = crashvfs_op_count();
	layer_store_close(s);
	TAP_IS(r, 0, "workload of %d steps runs without a crash: %llu crash points", N_STEPS, (unsigned long long)k_ops);
	if (r) return tap_done();
	/* the same seed gives the same layers: the states are valid for every run */
	{
		char d0[SHA256_DIGEST_STRLEN];
		memcpy(d0, digests[0], sizeof d0);
		fresh_store(&s);
		r = commit_layer(s, 0, NULL, digests[0]);
		layer_store_close(s);
		TAP_OK(!r && !memcmp(d0, digests[0], sizeof d0), "layers are deterministic");
	}

	for (uint64_t i = 0; i < runs; i++) {
		/* spread over [0, K]: point K is the uncut run, whose crash must keep everything */
		uint64_t point = runs > k_ops + 1 ? i % (k_ops + 1) : i * (k_ops + 1) / runs;
		uint64_t crash_seed = seed ^ (i * 0x9E3779B97F4A7C15ull);
		char why[1024];
		int cut;
		if (crash_run(point, crash_seed, &cut, why, sizeof why) == 0) {
			passed++;
			step_hist[cut]++;
		} else if (failures++ < 10) {
			tap_ok(0, "crash point %llu (step %d), crash seed %llu: %s", (unsigned long long)point, cut,
			       (unsigned long long)crash_seed, why);
		}
	}
	test_store_creation();
	crashvfs_uninstall();
	TAP_IS(passed, runs, "%llu of %llu crash runs passed (store opens, fsck clean, records old or new, gc clean)",
	       (unsigned long long)passed, (unsigned long long)runs);
	for (int k = 0; k <= N_STEPS; k++)
		tap_diag("cut in step %d: %llu runs", k, (unsigned long long)step_hist[k]);
	crashvfs_workdir_done(passed != runs);
	return tap_done();
}
