/* Power-loss test of the cow engine (the DURABILITY CONTRACT of cow/cow.h).
 *
 * A store holds a 2 MiB image of two layers (data, ZERO extents, holes) and a container on it.
 * A seeded workload of a few hundred requests in 50 epochs, each ending in one flush (see "the
 * workload" below), runs on the container: partial and whole-block writes into lower and upper
 * blocks, FUA writes, flushes, discards, write-zeroes (punching or not), reads checked against the
 * model, a cow_device_commit in the middle, journal compaction, and the final close.  A clean run counts its crash points K;
 * then for >= 1000 runs spread over [0, K] (K itself: the uncut run): a fresh copy of the starting
 * store, the crashvfs armed at the point, the workload until it fails, a crash, and the checks:
 *   - the store and the container reopen; layer_store_fsck and cow_container_check are clean;
 *   - every 512-byte sector of the device reads either its value at the last completed flush /
 *     FUA write / commit / close, or the value of a write issued after it (the contract);
 *   - the recovered device works: new writes + flush survive a close and reopen, nothing else moves.
 * Every third run crashes a second time during recovery (open, flush, close of the container)
 * before the checks, which hold to the same model.
 *
 * All of it runs under several configurations of the flush path (cow/exec.c), each with its own
 * clean run and crash runs:
 *   - a tiny journal limit: every flush is a checkpoint (sync of upper.data, then a record), and
 *     the journal is compacted every few flushes;
 *   - flushes that carry the written blocks in their record (payloads, no sync of upper.data),
 *     compaction every few dozen: recovery replays payloads into upper.data at open;
 *   - the same on a hot set of 24 blocks, so blocks are overwritten, discarded and rewritten
 *     between payload flushes and replay order matters (the last flushed content must win, and
 *     must not clobber content made durable by a later checkpoint);
 *   - a dirty cap of 3 blocks: payload flushes and overflow checkpoints interleave.
 * The workload is built so that each configuration takes its paths for every seed (the plan
 * above plan_workload); its clean run checks that it did: one flush path per epoch, payload
 * flushes, compactions, overflow checkpoints.
 *
 * Seeds: a new one each run (time-based), printed first; OCIBLK_SEED replays the whole run
 * (workload and crash outcomes); OCIBLK_CRASH_POINTS sets the number of crash runs per
 * configuration (default: K+1, every crash point once; 0 runs only the clean runs, to sweep seeds). */
#include "common/log.h"
#include "common/vfs.h"
#include "cow/cow.h"
#include "cow/cow_internal.h"
#include "layer-store/layer_store.h"
#include "tests/lib/crashvfs.h"
#include "tests/lib/tap.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BLK 4096u
#define SEC 512u
#define DEV_BLOCKS 512u
#define DEV_BYTES ((uint64_t)DEV_BLOCKS * BLK)
#define SECTORS (DEV_BLOCKS * (BLK / SEC))
#define V_ZERO 0u
#define V_BASE 1u

static uint64_t seed;

struct config {
	const char *name;
	uint64_t journal_limit;  /* bytes (cow_device_set_journal_limit) */
	uint32_t dirty_cap;      /* blocks a flush may carry (0: the default) */
	uint32_t hot_blocks;     /* requests start in the first hot_blocks blocks (0: anywhere) */
	bool want_payloads, want_overflow;
};
static const struct config configs[] = {
	{ "checkpoint flushes, journal limit 1 KiB", 1024, 0, 0, false, false },
	{ "payload flushes, journal limit 48 KiB", 48 << 10, 0, 0, true, false },
	{ "payload flushes on 24 hot blocks", 48 << 10, 0, 24, true, false },
	{ "payload flushes on 24 hot blocks, dirty cap 3", 48 << 10, 3, 24, true, true },
};
static const struct config *cfg;
static uint8_t base[DEV_BYTES];          /* what the image reads as */
static char workdir[512], template_root[600], run_root[600], stash[600];

/* ---------------------------------------------------------------- contents ------------------ */

static void pattern_sector(uint32_t v, uint64_t s, uint8_t *out)
{
	for (unsigned i = 0; i < SEC; i += 8) {
		uint64_t x = ((uint64_t)v * 0x9E3779B97F4A7C15ull) ^ (s * 0xC2B2AE3D27D4EB4Full) ^ i ^ seed;
		x ^= x >> 29;
		x *= 0xBF58476D1CE4E5B9ull;
		x ^= x >> 32;
		memcpy(out + i, &x, 8);
	}
}

/* Sector s as version v holds it: 0 zeros, 1 the base image, else a pattern. */
static void sector_of(uint32_t v, uint64_t s, uint8_t *out)
{
	if (v == V_ZERO) memset(out, 0, SEC);
	else if (v == V_BASE) memcpy(out, base + s * SEC, SEC);
	else pattern_sector(v, s, out);
}

/* ---------------------------------------------------------------- the model ----------------- */

/* cur: the value now; dur: at the last durable point; since: every value written to the sector
 * after it (the op in progress included) -- the sector may hold dur or any of these. */
struct model {
	uint32_t cur[SECTORS], dur[SECTORS];
	uint32_t *since[SECTORS];
	uint16_t n[SECTORS], cap[SECTORS];
	uint32_t next_version;
};

static void model_init(struct model *m)
{
	for (uint64_t s = 0; s < SECTORS; s++) {
		m->cur[s] = m->dur[s] = V_BASE;
		m->n[s] = 0;
	}
	m->next_version = 2;
}

static void model_free(struct model *m)
{
	for (uint64_t s = 0; s < SECTORS; s++) {
		free(m->since[s]);
		m->since[s] = NULL;
		m->cap[s] = m->n[s] = 0;
	}
}

/* Before an op writes v over [first, first+count) sectors. */
static void model_allow(struct model *m, uint64_t first, uint64_t count, uint32_t v)
{
	for (uint64_t s = first; s < first + count; s++) {
		if (m->n[s] && m->since[s][m->n[s] - 1] == v) continue;
		if (m->n[s] == m->cap[s]) {
			m->cap[s] = m->cap[s] ? (uint16_t)(m->cap[s] * 2) : 4;
			m->since[s] = realloc(m->since[s], m->cap[s] * sizeof(uint32_t));
			if (!m->since[s]) abort();
		}
		m->since[s][m->n[s]++] = v;
	}
}

/* After the op completed. */
static void model_set(struct model *m, uint64_t first, uint64_t count, uint32_t v)
{
	for (uint64_t s = first; s < first + count; s++) m->cur[s] = v;
}

/* A flush, FUA write, commit or close completed: everything so far is durable. */
static void model_durable(struct model *m)
{
	memcpy(m->dur, m->cur, sizeof m->dur);
	memset(m->n, 0, sizeof m->n);
}

static bool sector_allowed(const struct model *m, uint64_t s, const uint8_t *got)
{
	uint8_t want[SEC];
	sector_of(m->dur[s], s, want);
	if (!memcmp(got, want, SEC)) return true;
	for (unsigned i = 0; i < m->n[s]; i++) {
		sector_of(m->since[s][i], s, want);
		if (!memcmp(got, want, SEC)) return true;
	}
	return false;
}

/* Which known version the sector holds (for messages): a version, or -1. */
static long long sector_identify(const struct model *m, uint64_t s, const uint8_t *got)
{
	uint8_t want[SEC];
	for (uint32_t v = 0; v < m->next_version; v++) {
		sector_of(v, s, want);
		if (!memcmp(got, want, SEC)) return v;
	}
	return -1;
}

/* ---------------------------------------------------------------- setup --------------------- */

static int add_layer(struct layer_store *s, const char *parent, int layer, uint64_t *rng, char digest[SHA256_DIGEST_STRLEN])
{
	struct layer_writer_options o = { .virtual_size_bytes = DEV_BYTES, .parent_digest = parent,
					  .zstd_level = layer ? 3 : 0, .chunk_blocks = 8 };
	struct layer_writer *w;
	static uint8_t buf[64 * BLK];
	int r = layer_writer_create(s, &o, &w);
	if (r) return r;
	for (uint64_t b = tap_rand(rng) % 8; b < DEV_BLOCKS && !r;) {
		uint64_t n = 1 + tap_rand(rng) % (layer ? 12 : 40), kind = tap_rand(rng) % 6;
		if (n > DEV_BLOCKS - b) n = DEV_BLOCKS - b;
		if (kind == 0) {
			r = layer_writer_add_zero(w, b, n);
			memset(base + b * BLK, 0, n * BLK);
		} else {
			for (uint64_t k = 0; k < n; k++)
				for (unsigned i = 0; i < BLK; i += 8) {
					/* layer 1 compressible: zstd chunks too */
					uint64_t x = tap_rand(rng);
					if (layer) x &= 0x00FF00FF00FF00FFull;
					memcpy(buf + k * BLK + i, &x, 8);
				}
			for (uint64_t p = 0; p < n && !r; p += 64) {
				uint64_t k = n - p < 64 ? n - p : 64;
				r = layer_writer_add_data(w, b + p, buf + p * BLK, k);
			}
			memcpy(base + b * BLK, buf, n * BLK);
		}
		b += n + (layer ? tap_rand(rng) % 30 : tap_rand(rng) % 6);
	}
	if (r) {
		layer_writer_abort(w);
		return r;
	}
	return layer_writer_commit(w, digest);
}

static int make_template(void)
{
	struct layer_store *s;
	struct image_record *img = calloc(1, sizeof *img);
	uint64_t rng = seed ^ 0x5EED;
	int r = layer_store_open(template_root, LAYER_STORE_CREATE, &s);
	if (r) return r;
	memset(base, 0, sizeof base);
	snprintf(img->name, sizeof img->name, "base");
	img->size_bytes = DEV_BYTES;
	img->layer_count = 2;
	r = add_layer(s, NULL, 0, &rng, img->layers[0]);
	if (!r) r = add_layer(s, img->layers[0], 1, &rng, img->layers[1]);
	if (!r) r = layer_store_image_put(s, img);
	if (!r) r = layer_store_container_create(s, "base", "c");
	free(img);
	layer_store_close(s);
	return r;
}

/* ---------------------------------------------------------------- the workload -------------- */

struct outcome {
	int ops_done;        /* requests that completed */
	int failed_op;       /* index of the op that failed, or -1 */
	int live_mismatch;   /* reads that disagreed with the model (a bug without any crash) */
	char what[128];      /* the op in progress when it failed */
	bool cut_in_commit, cut_in_close;
	int path_mismatch;   /* epochs whose flush did not take the planned path */
	char path_what[400]; /* the first of them */
	uint64_t payload_flushes, checkpoints, compactions; /* flush paths taken (before close) */
};

static int do_write(struct cow_device *dev, struct model *m, uint64_t off, uint64_t len, unsigned flags)
{
	static uint8_t buf[16 * BLK];
	uint32_t v = m->next_version++;
	uint64_t first = off / SEC, n = len / SEC;
	int r;
	for (uint64_t i = 0; i < n; i++) sector_of(v, first + i, buf + i * SEC);
	model_allow(m, first, n, v);
	r = cow_device_write(dev, off, buf, len, flags);
	if (r) return r;
	model_set(m, first, n, v);
	if (flags & COW_FUA) model_durable(m);
	return 0;
}

static int do_zero(struct cow_device *dev, struct model *m, bool discard, uint64_t off, uint64_t len, unsigned flags)
{
	uint64_t first = off / SEC, n = len / SEC;
	int r;
	model_allow(m, first, n, V_ZERO);
	r = discard ? cow_device_discard(dev, off, len) : cow_device_write_zeroes(dev, off, len, flags);
	if (r) return r;
	model_set(m, first, n, V_ZERO);
	if (flags & COW_FUA) model_durable(m);
	return 0;
}

/* A random sector-aligned range: partial within a block, whole blocks, or spanning unaligned. */
static void pick_range(uint64_t *rng, uint64_t *off, uint64_t *len)
{
	uint64_t kind = tap_rand(rng) % 4;
	uint64_t b = tap_rand(rng) % (cfg->hot_blocks ? cfg->hot_blocks : DEV_BLOCKS);
	if (kind == 0) { /* whole blocks */
		uint64_t n = 1 + tap_rand(rng) % 4;
		if (b + n > DEV_BLOCKS) n = DEV_BLOCKS - b;
		*off = b * BLK;
		*len = n * BLK;
	} else if (kind == 1 || kind == 2) { /* inside one block */
		uint64_t s0 = tap_rand(rng) % 8, ns = 1 + tap_rand(rng) % (8 - s0);
		*off = b * BLK + s0 * SEC;
		*len = ns * SEC;
	} else { /* unaligned, up to 3 blocks */
		uint64_t s0 = tap_rand(rng) % SECTORS, ns = 1 + tap_rand(rng) % 24;
		if (s0 + ns > SECTORS) ns = SECTORS - s0;
		*off = s0 * SEC;
		*len = ns * SEC;
	}
}


/* The workload is planned before it runs (the same plan for the clean run and every crash run of
 * a configuration) as N_EPOCHS epochs, each ending in exactly one flush: a flush request, a FUA
 * write, or (the middle epoch) the commit.  An epoch is a random body of writes, discards,
 * write-zeroes and reads, then a closing part that decides which flush path the epoch's flush must
 * take, whatever the seed:
 *   - payload epoch: the blocks the epoch modifies stay within the configuration's budget (at most
 *     the dirty cap, and few enough that every record fits half the journal room), and it ends by
 *     zeroing a whole anchor block (state zero) and writing into it (state upper data): the flush
 *     has a state change and a payload, so it is a payload flush when the record fits the journal,
 *     else a checkpoint with a record that compacts (the journal is then past half its room).
 *     With a dirty cap, the closing part writes every block the epoch touched plus new ones:
 *     exactly cap blocks, the most a payload flush carries.
 *   - overflow epoch (with a dirty cap, one of the first three epochs of every four): ends with one
 *     write over cap + 1 blocks, so the flush is an overflow checkpoint.
 *   - overwrite epoch (right after a checkpoint: with the 1 KiB journal every fourth epoch, with a
 *     dirty cap the epoch after the overflow): only writes into blocks the plan knows are upper
 *     data, at most cap of them: no state change and every payload covered, so the flush is a
 *     checkpoint without a record (a sync of upper.data alone).
 * The executor checks each epoch's flush against its kind (the device's path counters and journal
 * sequence before and after it).  Hence per configuration (the commit empties the journal, so each
 * half of 25 epochs counts on its own; a payload record is >= 4160 bytes, one of 4 blocks < 17 KiB):
 *   - 1 KiB journal: no payload record fits, so every flush is a checkpoint; >= 3 of 4 have a
 *     record of >= 56 bytes, so every <= 14 epochs the journal passes 512 bytes and compacts: >= 2;
 *   - 48 KiB, budget 4 blocks: a payload flush unless the record does not fit; then the journal
 *     is past 31 KiB, so the checkpoint compacts.  At most 11 payload flushes fit between two
 *     compactions and at least 2: >= 2 compactions a half, >= 2 of 3 epochs payload flushes;
 *   - dirty cap 3: of every 4 epochs, 1 overflow, 1 overwrite and 2 payload epochs, whose records
 *     carry 3 blocks (> 12 KiB): the journal passes half its room after 2 payload flushes, and the
 *     next overflow (<= 4 payload epochs later) compacts; a payload epoch is a checkpoint only when
 *     the journal is full (after >= 3 payload flushes): >= 2 compactions, >= 17 payload flushes.
 * The body's ops, ranges, block choices and contents, the closing writes' ranges and the FUA/flush
 * choice stay random per seed. */
#define N_EPOCHS 50
#define COMMIT_EPOCH (N_EPOCHS / 2)
#define MAX_OPS (N_EPOCHS * 16)
#define BUDGET_BLOCKS 4u /* blocks a payload epoch may modify without a dirty cap */

enum op_kind { OP_WRITE, OP_ZEROES, OP_DISCARD, OP_READ, OP_FLUSH, OP_COMMIT };
/* What the flush ending an epoch must do. */
enum expect {
	EXPECT_NONE,          /* not the end of an epoch */
	EXPECT_ANY,           /* the commit */
	EXPECT_PAYLOAD,       /* a payload flush, or (journal full) a checkpoint with a record that compacts */
	EXPECT_CHECKPOINT,    /* a checkpoint with a record */
	EXPECT_OVERFLOW,      /* a checkpoint */
	EXPECT_NO_RECORD,     /* a checkpoint that appends no record */
};
static const char *const expect_name[] = { "", "any", "payload flush", "checkpoint", "overflow checkpoint",
					   "checkpoint without a record" };
struct op {
	enum op_kind kind;
	enum expect expect;
	unsigned flags;
	uint64_t off, len;
};
static struct op plan[MAX_OPS];
static int plan_ops, plan_epochs[4]; /* epochs planned of kind EXPECT_PAYLOAD..EXPECT_NO_RECORD */

/* Blocks [first, end) a sector range touches. */
static void range_blocks(uint64_t off, uint64_t len, uint64_t *first, uint64_t *end)
{
	*first = off / BLK;
	*end = (off + len + BLK - 1) / BLK;
}

/* A random sector range inside block b: whole, or a run of sectors. */
static void range_in_block(uint64_t *rng, uint64_t b, uint64_t *off, uint64_t *len)
{
	uint64_t s0 = tap_rand(rng) % 8, ns = 1 + tap_rand(rng) % (8 - s0);
	if (tap_rand(rng) % 3 == 0) s0 = 0, ns = 8;
	*off = b * BLK + s0 * SEC;
	*len = ns * SEC;
}

struct blockset {
	uint64_t block[DEV_BLOCKS];
	uint32_t n;
};

static bool set_has(const struct blockset *t, uint64_t b)
{
	for (uint32_t i = 0; i < t->n; i++)
		if (t->block[i] == b) return true;
	return false;
}

/* Blocks of [first, end) the set does not hold yet. */
static uint32_t set_new(const struct blockset *t, uint64_t first, uint64_t end)
{
	uint32_t k = 0;
	for (uint64_t b = first; b < end; b++) k += !set_has(t, b);
	return k;
}

static void set_add(struct blockset *t, uint64_t first, uint64_t end)
{
	for (uint64_t b = first; b < end; b++)
		if (!set_has(t, b)) t->block[t->n++] = b;
}

/* Blocks the plan knows are in state upper data (cow/exec.c: a write, or write-zeroes with
 * NO_HOLE, makes every block it touches upper data; a discard or punching write-zeroes makes its
 * whole blocks zero and leaves an upper-data partial end upper data; a commit empties the upper). */
static bool known_upper[DEV_BLOCKS];

static void plan_add(enum op_kind kind, unsigned flags, uint64_t off, uint64_t len)
{
	uint64_t first, end;
	if (plan_ops == MAX_OPS) abort();
	plan[plan_ops++] = (struct op){ .kind = kind, .flags = flags, .off = off, .len = len };
	range_blocks(off, len, &first, &end);
	if (kind == OP_WRITE || (kind == OP_ZEROES && (flags & COW_NO_HOLE)))
		for (uint64_t b = first; b < end; b++) known_upper[b] = true;
	else if (kind == OP_DISCARD || kind == OP_ZEROES)
		for (uint64_t b = (off + BLK - 1) / BLK; b < (off + len) / BLK; b++) known_upper[b] = false;
	else if (kind == OP_COMMIT)
		memset(known_upper, 0, sizeof known_upper);
}

/* The body of an epoch: n random ops; modifying ones stay within `limit` blocks (0: any). */
static void plan_body(uint64_t *rng, uint64_t n, struct blockset *t, uint32_t limit)
{
	uint64_t off, len, first, end;
	for (uint64_t i = 0; i < n; i++) {
		uint64_t op = tap_rand(rng) % 100;
		enum op_kind k = op < 48 ? OP_WRITE : op < 58 ? OP_DISCARD : op < 70 ? OP_ZEROES : OP_READ;
		pick_range(rng, &off, &len);
		range_blocks(off, len, &first, &end);
		if (k != OP_READ && limit && t->n + set_new(t, first, end) > limit) {
			/* over the budget: stay inside a block the epoch already touched */
			range_in_block(rng, t->block[tap_rand(rng) % t->n], &off, &len);
			range_blocks(off, len, &first, &end);
		}
		if (k != OP_READ) set_add(t, first, end);
		plan_add(k, k == OP_ZEROES && (op & 1) ? COW_NO_HOLE : 0, off, len);
	}
}

/* An overwrite epoch: 1 to 4 writes (or NO_HOLE write-zeroes) into at most `limit` blocks known
 * to be upper data, with reads in between.  False when the plan knows no such block. */
static bool plan_overwrites(uint64_t *rng, uint32_t limit)
{
	static struct blockset known;
	uint64_t off, len;
	known.n = 0;
	for (uint64_t b = 0; b < DEV_BLOCKS; b++)
		if (known_upper[b]) known.block[known.n++] = b;
	if (!known.n) return false;
	if (limit > known.n) limit = known.n;
	uint64_t start = tap_rand(rng) % known.n;
	for (uint64_t i = 0, n = 1 + tap_rand(rng) % 4; i < n; i++) {
		if (tap_rand(rng) % 3 == 0) {
			pick_range(rng, &off, &len);
			plan_add(OP_READ, 0, off, len);
		}
		range_in_block(rng, known.block[(start + tap_rand(rng) % limit) % known.n], &off, &len);
		if (tap_rand(rng) % 4) plan_add(OP_WRITE, 0, off, len);
		else plan_add(OP_ZEROES, COW_NO_HOLE, off, len);
	}
	return true;
}

static void plan_workload(void)
{
	static struct blockset t;
	uint64_t rng = seed * 7 + 3, overflow_at = 0;
	uint64_t hot = cfg->hot_blocks ? cfg->hot_blocks : DEV_BLOCKS;
	uint32_t budget = cfg->dirty_cap ? cfg->dirty_cap : cfg->want_payloads ? BUDGET_BLOCKS : 0;
	plan_ops = 0;
	memset(plan_epochs, 0, sizeof plan_epochs);
	memset(known_upper, 0, sizeof known_upper);
	for (int e = 0; e < N_EPOCHS; e++) {
		uint64_t off, len, a = tap_rand(&rng) % hot;
		enum expect kind = cfg->want_payloads ? EXPECT_PAYLOAD : EXPECT_CHECKPOINT;
		if (e % 4 == 0) overflow_at = (uint64_t)e + tap_rand(&rng) % 3;
		if (cfg->dirty_cap && (uint64_t)e == overflow_at) kind = EXPECT_OVERFLOW;
		else if (e != COMMIT_EPOCH && e - 1 != COMMIT_EPOCH &&
			 ((cfg->dirty_cap && (uint64_t)e == overflow_at + 1) || (!cfg->want_payloads && e % 4 == 3)) &&
			 plan_overwrites(&rng, budget ? budget : BUDGET_BLOCKS))
			kind = EXPECT_NO_RECORD;
		if (kind == EXPECT_OVERFLOW) {
			t.n = 0;
			plan_body(&rng, tap_rand(&rng) % 6, &t, 0);
			/* one write over cap + 1 blocks, from any sector of the first to any of the last */
			uint64_t b = tap_rand(&rng) % (hot - cfg->dirty_cap), s0 = b * 8 + tap_rand(&rng) % 8;
			uint64_t s1 = (b + cfg->dirty_cap) * 8 + 1 + tap_rand(&rng) % 8;
			plan_add(OP_WRITE, 0, s0 * SEC, (s1 - s0) * SEC);
		} else if (kind != EXPECT_NO_RECORD) {
			t.n = 0;
			set_add(&t, a, a + 1);
			plan_body(&rng, tap_rand(&rng) % 6, &t, budget);
			/* with a dirty cap, the epoch's flush carries exactly cap blocks */
			while (cfg->dirty_cap && t.n < cfg->dirty_cap) {
				uint64_t b = tap_rand(&rng) % hot;
				set_add(&t, b, b + 1);
			}
			for (uint32_t i = 1; cfg->dirty_cap && i < t.n; i++) {
				range_in_block(&rng, t.block[i], &off, &len);
				plan_add(OP_WRITE, 0, off, len);
			}
			/* the anchor: zero state, then upper data (a state change the flush must journal) */
			plan_add(tap_rand(&rng) & 1 ? OP_DISCARD : OP_ZEROES, 0, a * BLK, BLK);
			range_in_block(&rng, a, &off, &len);
			if (tap_rand(&rng) % 5) plan_add(OP_WRITE, 0, off, len);
			else plan_add(OP_ZEROES, COW_NO_HOLE, off, len);
		}
		if (e == COMMIT_EPOCH) {
			plan_add(OP_COMMIT, 0, 0, 0);
			kind = EXPECT_ANY;
		} else {
			plan_epochs[kind - EXPECT_PAYLOAD]++;
			if (tap_rand(&rng) & 1) plan[plan_ops - 1].flags |= COW_FUA;
			else plan_add(OP_FLUSH, 0, 0, 0);
		}
		plan[plan_ops - 1].expect = kind;
	}
}

/* Runs the planned workload until it ends or an op fails (the power cut). */
static void workload(struct layer_store *s, struct model *m, struct outcome *o)
{
	struct cow_device *dev = NULL;
	static uint8_t rbuf[16 * BLK], want[SEC];
	int r = 0, i;
	memset(o, 0, sizeof *o);
	o->failed_op = -1;
	snprintf(o->what, sizeof o->what, "open");
	r = cow_device_open_container(s, "c", &dev);
	if (r) {
		o->failed_op = 0;
		return;
	}
	cow_device_set_journal_limit(dev, cfg->journal_limit);
	if (cfg->dirty_cap) dev->dirty_cap = cfg->dirty_cap;
	for (i = 0; i < plan_ops; i++) {
		const struct op *p = &plan[i];
		unsigned long long off = p->off, len = p->len;
		uint64_t pf = dev->stats_payload_flushes, cp = dev->stats_checkpoints, cm = dev->stats_compactions;
		uint64_t seq = dev->journal_seq;
		switch (p->kind) {
		case OP_COMMIT:
			snprintf(o->what, sizeof o->what, "commit");
			r = cow_device_commit(dev, "snap", NULL);
			if (!r) model_durable(m);
			break;
		case OP_FLUSH:
			snprintf(o->what, sizeof o->what, "flush");
			r = cow_device_flush(dev);
			if (!r) model_durable(m);
			break;
		case OP_WRITE:
			snprintf(o->what, sizeof o->what, "write %llu+%llu flags %u", off, len, p->flags);
			r = do_write(dev, m, p->off, p->len, p->flags);
			break;
		case OP_DISCARD:
			snprintf(o->what, sizeof o->what, "discard %llu+%llu", off, len);
			r = do_zero(dev, m, true, p->off, p->len, p->flags);
			break;
		case OP_ZEROES:
			snprintf(o->what, sizeof o->what, "write_zeroes %llu+%llu flags %u", off, len, p->flags);
			r = do_zero(dev, m, false, p->off, p->len, p->flags);
			break;
		case OP_READ:
			snprintf(o->what, sizeof o->what, "read %llu+%llu", off, len);
			r = cow_device_read(dev, p->off, rbuf, p->len);
			for (uint64_t k = 0; !r && k < p->len / SEC; k++) {
				sector_of(m->cur[p->off / SEC + k], p->off / SEC + k, want);
				if (memcmp(rbuf + k * SEC, want, SEC)) {
					o->live_mismatch++;
					break;
				}
			}
			break;
		}
		if (r) {
			o->failed_op = i + 1;
			o->cut_in_commit = p->kind == OP_COMMIT;
			break;
		}
		o->ops_done++;
		if (p->expect > EXPECT_ANY) {
			pf = dev->stats_payload_flushes - pf, cp = dev->stats_checkpoints - cp;
			cm = dev->stats_compactions - cm, seq = dev->journal_seq - seq;
			bool ok = p->expect == EXPECT_PAYLOAD ? seq == 1 && ((pf == 1 && cp == 0) || (pf == 0 && cp == 1 && cm == 1))
				: p->expect == EXPECT_CHECKPOINT ? seq == 1 && pf == 0 && cp == 1
				: p->expect == EXPECT_OVERFLOW	 ? pf == 0 && cp == 1
								 : seq == 0 && pf == 0 && cp == 1;
			if (!ok && !o->path_mismatch++)
				snprintf(o->path_what, sizeof o->path_what,
					 "op %d (%s) ends an epoch planned as a %s: %llu payload flushes, %llu checkpoints, "
					 "%llu compactions, %llu records", i + 1, o->what, expect_name[p->expect],
					 (unsigned long long)pf, (unsigned long long)cp, (unsigned long long)cm, (unsigned long long)seq);
		}
	}
	if (!r) snprintf(o->what, sizeof o->what, "close");
	o->payload_flushes = dev->stats_payload_flushes;
	o->checkpoints = dev->stats_checkpoints;
	o->compactions = dev->stats_compactions;
	r = cow_device_close(dev); /* flushes; after a power cut it fails and only frees */
	if (!r && o->failed_op < 0) model_durable(m);
	else if (r && o->failed_op < 0) o->failed_op = plan_ops + 1, o->cut_in_close = true;
}

/* ---------------------------------------------------------------- one crash run ------------- */

static struct model model;
static uint64_t stale_temp_runs; /* runs after which the container directory kept a temp file */

/* Files in the container directory other than cow's and the store's own (a leaked temp file);
 * *map_temps: how many of them are upper.map rewrite temps, which opening the container (under
 * its lock) must have removed. */
static int count_stray_files(int *map_temps)
{
	char dir[700];
	DIR *d;
	struct dirent *de;
	int n = 0;
	*map_temps = 0;
	snprintf(dir, sizeof dir, "%s/containers/c", run_root);
	if (!(d = opendir(dir))) return -1;
	while ((de = readdir(d)))
		if (de->d_name[0] != '.' && strcmp(de->d_name, "upper.data") && strcmp(de->d_name, "upper.map") &&
		    strcmp(de->d_name, "lock") && strcmp(de->d_name, "config.json")) {
			if (!stale_temp_runs && !n) tap_diag("stray file left in the container directory: %s", de->d_name);
			if (!strncmp(de->d_name, "upper.map.tmp.", 14)) (*map_temps)++;
			n++;
		}
	closedir(d);
	return n;
}

static int check_after_crash(const struct model *m, uint64_t point, char *why, size_t why_len)
{
	struct layer_store *s = NULL;
	struct layer_store_fsck_report fr;
	struct cow_check_report cr;
	struct cow_device *dev = NULL;
	static uint8_t got[DEV_BYTES], again[DEV_BYTES], blk[BLK];
	uint64_t rng = seed ^ (point * 0x2545F4914F6CDD1Dull);
	int r;

	if ((r = layer_store_open(run_root, 0, &s))) {
		snprintf(why, why_len, "store does not open: %d", r);
		return -1;
	}
	if ((r = layer_store_fsck(s, &fr))) {
		snprintf(why, why_len, "layer_store_fsck: %d (%llu errors)", r, (unsigned long long)fr.errors);
		goto fail;
	}
	if ((r = cow_container_check(s, "c", &cr))) {
		snprintf(why, why_len, "cow_container_check: %d (%llu errors)", r, (unsigned long long)cr.errors);
		goto fail;
	}
	if ((r = cow_device_open_container(s, "c", &dev))) {
		snprintf(why, why_len, "container does not open: %d", r);
		goto fail;
	}
	if ((r = cow_device_read(dev, 0, got, DEV_BYTES))) {
		snprintf(why, why_len, "read of the device: %d", r);
		goto fail;
	}
	for (uint64_t sct = 0; sct < SECTORS; sct++) {
		if (sector_allowed(m, sct, got + sct * SEC)) continue;
		{
			char list[200];
			size_t o = 0;
			list[0] = 0;
			for (unsigned i = 0; i < m->n[sct] && o < sizeof list - 12; i++)
				o += (size_t)snprintf(list + o, sizeof list - o, " %u", m->since[sct][i]);
			snprintf(why, why_len,
				 "sector %llu (block %llu) holds version %lld; allowed: %u (at last flush) or written since:%s",
				 (unsigned long long)sct, (unsigned long long)(sct / 8), sector_identify(m, sct, got + sct * SEC),
				 m->dur[sct], list[0] ? list : " none");
		}
		goto fail;
	}
	/* the recovered device keeps working: new writes + flush survive a reopen */
	for (int i = 0; i < 8 && !r; i++) {
		uint64_t b = tap_rand(&rng) % DEV_BLOCKS, len = (i & 1) ? BLK : 2 * SEC; /* whole and partial */
		for (unsigned k = 0; k < BLK / SEC; k++) pattern_sector(0xFFFF0000u + (uint32_t)i, b * 8 + k, blk + k * SEC);
		r = cow_device_write(dev, b * BLK, blk, len, 0);
		memcpy(got + b * BLK, blk, len);
	}
	if (r || (r = cow_device_flush(dev))) {
		snprintf(why, why_len, "write/flush after recovery: %d", r);
		goto fail;
	}
	r = cow_device_close(dev);
	dev = NULL;
	if (r || (r = cow_device_open_container(s, "c", &dev)) || (r = cow_device_read(dev, 0, again, DEV_BYTES))) {
		snprintf(why, why_len, "close/reopen/read after recovery: %d", r);
		goto fail;
	}
	for (uint64_t b = 0; b < DEV_BLOCKS; b++)
		if (memcmp(got + b * BLK, again + b * BLK, BLK)) {
			snprintf(why, why_len, "after recovery, a flushed write + reopen: block %llu differs", (unsigned long long)b);
			goto fail;
		}
	cow_device_close(dev);
	{
		struct layer_store_gc_stats gs;
		if ((r = layer_store_gc(s, 0, &gs)) || (r = layer_store_fsck(s, &fr))) {
			snprintf(why, why_len, "gc + fsck after recovery: %d", r);
			dev = NULL;
			goto fail;
		}
	}
	int map_temps;
	if (count_stray_files(&map_temps) > 0) stale_temp_runs++;
	if (map_temps) {
		snprintf(why, why_len, "%d upper.map temp file(s) left after the container was reopened", map_temps);
		layer_store_close(s);
		return -1;
	}
	layer_store_close(s);
	return 0;
fail:
	if (dev) cow_device_close(dev);
	layer_store_close(s);
	return -1;
}

/* A second power cut during recovery: the store and container are opened (recovering the upper),
 * flushed and closed with the power cut at op `point2`, then crashed again. */
static int crash_during_recovery(uint64_t point2, uint64_t crash_seed)
{
	struct layer_store *s = NULL;
	struct cow_device *dev = NULL;
	crashvfs_arm(point2);
	log_set_quiet(1);
	if (!layer_store_open(run_root, 0, &s)) {
		if (!cow_device_open_container(s, "c", &dev)) {
			cow_device_flush(dev);
			cow_device_close(dev);
		}
		layer_store_close(s);
	}
	log_set_quiet(0);
	return crashvfs_crash(crash_seed, NULL);
}

static int crash_run(uint64_t point, uint64_t crash_seed, bool twice, struct outcome *o, char *why, size_t why_len)
{
	struct layer_store *s = NULL;
	int r;
	if ((r = crashvfs_remove_tree(run_root)) || (r = crashvfs_copy_tree(template_root, run_root))) {
		snprintf(why, why_len, "copy of the starting store: %d", r);
		return -1;
	}
	crashvfs_settle();
	if ((r = layer_store_open(run_root, 0, &s))) {
		snprintf(why, why_len, "store open: %d", r);
		return -1;
	}
	model_free(&model);
	model_init(&model);
	crashvfs_arm(point);
	log_set_quiet(1);
	workload(s, &model, o);
	log_set_quiet(0);
	layer_store_close(s);
	if (o->failed_op >= 0 && !crashvfs_power_is_cut()) {
		snprintf(why, why_len, "op %d (%s) failed without a power cut", o->failed_op, o->what);
		return -1;
	}
	if (o->live_mismatch) {
		snprintf(why, why_len, "%d reads disagreed with the model before the crash", o->live_mismatch);
		return -1;
	}
	if ((r = crashvfs_crash(crash_seed, NULL))) {
		snprintf(why, why_len, "crashvfs_crash: %d", r);
		return -1;
	}
	/* still bound by the same model: recovery must not lose or invent anything either */
	if (twice && (r = crash_during_recovery(crash_seed % 12, crash_seed >> 8))) {
		snprintf(why, why_len, "second crashvfs_crash: %d", r);
		return -1;
	}
	return check_after_crash(&model, point, why, why_len);
}

/* The clean run and the crash runs of the current configuration.  Returns failed runs. */
static int run_config(void)
{
	struct outcome o;
	uint64_t k_ops, runs, passed = 0, cut_in_commit = 0, cut_in_close = 0, uncut = 0;
	const char *e = getenv("OCIBLK_CRASH_POINTS");
	char why[1024];
	int failures = 0, r;

	tap_diag("configuration: %s", cfg->name);
	plan_workload();
	if (crashvfs_remove_tree(run_root) || crashvfs_copy_tree(template_root, run_root)) return 1;
	{
		struct layer_store *s;
		crashvfs_settle();
		layer_store_open(run_root, 0, &s);
		model_free(&model);
		model_init(&model);
		crashvfs_arm(UINT64_MAX);
		workload(s, &model, &o);
		k_ops = crashvfs_op_count();
		layer_store_close(s);
	}
	TAP_OK(o.failed_op < 0 && o.ops_done == plan_ops, "%s: workload of %d requests in %d epochs runs clean (%s at %d): %llu crash points",
	       cfg->name, plan_ops, N_EPOCHS, o.what, o.failed_op, (unsigned long long)k_ops);
	TAP_IS(o.live_mismatch, 0, "every read of the workload matches the model");
	/* every epoch ends in exactly one flush, and each flush is a payload flush or a checkpoint */
	TAP_IS(o.payload_flushes + o.checkpoints, N_EPOCHS,
	       "one flush path per epoch: %llu flushes carrying payloads, %llu checkpoints (%llu compactions)",
	       (unsigned long long)o.payload_flushes, (unsigned long long)o.checkpoints, (unsigned long long)o.compactions);
	TAP_OK(cfg->want_payloads ? o.payload_flushes >= 10 : o.payload_flushes == 0, "%s payload flushes",
	       cfg->want_payloads ? "at least 10" : "no");
	TAP_OK(o.compactions >= 2, "the journal was compacted during the workload (%llu times)", (unsigned long long)o.compactions);
	TAP_IS(o.path_mismatch, 0, "each epoch's flush took its planned path (%d payload, %d checkpoint, %d overflow, %d no-record epochs) %s",
	       plan_epochs[0], plan_epochs[1], plan_epochs[2], plan_epochs[3], o.path_what);
	if (cfg->want_overflow) TAP_OK(plan_epochs[2] >= 10, "the workload overflows the dirty cap in %d epochs", plan_epochs[2]);
	if (!cfg->want_payloads || cfg->dirty_cap)
		TAP_OK(plan_epochs[3] >= 5, "the workload has %d epochs of overwrites only", plan_epochs[3]);
	if (o.failed_op >= 0) return 1;
	why[0] = 0;
	r = crashvfs_crash(seed, NULL);
	TAP_OK(!r && check_after_crash(&model, 0, why, sizeof why) == 0, "a crash after the clean run loses nothing %s", why);

	runs = e ? strtoull(e, NULL, 0) : k_ops + 1;
	for (uint64_t i = 0; i < runs; i++) {
		uint64_t point = runs >= k_ops + 1 ? i % (k_ops + 1) : i * (k_ops + 1) / runs;
		uint64_t crash_seed = seed ^ ((i + 1) * 0x9E3779B97F4A7C15ull) ^ (uint64_t)(cfg - configs);
		bool twice = i % 3 == 2;
		if (crash_run(point, crash_seed, twice, &o, why, sizeof why) == 0) {
			passed++;
			if (o.failed_op < 0) uncut++;
			else if (o.cut_in_commit) cut_in_commit++;
			else if (o.cut_in_close) cut_in_close++;
		} else if (failures++ < 10) {
			tap_ok(0, "%s: crash point %llu of %llu%s, crash seed %llu (replay: OCIBLK_SEED=%llu), cut in op %d (%s): %s",
			       cfg->name, (unsigned long long)point, (unsigned long long)k_ops,
			       twice ? " and again in recovery" : "", (unsigned long long)crash_seed, (unsigned long long)seed,
			       o.failed_op, o.what, why);
		}
	}
	TAP_IS(passed, runs, "%s: %llu of %llu crash runs passed (reopen, fsck, container check, every sector old or new)",
	       cfg->name, (unsigned long long)passed, (unsigned long long)runs);
	tap_diag("runs cut inside the commit: %llu, inside the final close: %llu, not cut: %llu",
		 (unsigned long long)cut_in_commit, (unsigned long long)cut_in_close, (unsigned long long)uncut);
	return failures;
}

int main(void)
{
	int failures = 0;
	seed = tap_seed();
	snprintf(workdir, sizeof workdir, "%s", crashvfs_workdir());
	snprintf(template_root, sizeof template_root, "%s/template", workdir);
	snprintf(run_root, sizeof run_root, "%s/run", workdir);
	snprintf(stash, sizeof stash, "%s/stash", workdir);
	if (!TAP_IS(crashvfs_install(stash), 0, "crashvfs installed")) return tap_done();
	if (!TAP_IS(make_template(), 0, "starting store: 2-layer image of %u blocks and a container", DEV_BLOCKS))
		return tap_done();
	for (size_t i = 0; i < sizeof configs / sizeof configs[0]; i++) {
		cfg = &configs[i];
		failures += run_config();
	}
	tap_diag("runs after which (and after gc) the container directory still held a stray temp file: %llu",
		 (unsigned long long)stale_temp_runs);
	model_free(&model);
	crashvfs_uninstall();
	crashvfs_workdir_done(failures != 0);
	return tap_done();
}
