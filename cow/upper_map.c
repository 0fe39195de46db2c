/* The upper's metadata file, upper.map: a checksummed snapshot of block states followed by an
 * append-only journal of checksummed records.
 *
 *   header (struct cow_map_header) | run_count runs {u64 block_index, u32 block_count, u32 state}
 *   | u64 XXH3-64 of header+runs | record* where
 *   record = {u32 magic "JRNL", u32 entry_count, u64 seq} | entries (same layout as runs)
 *            | u64 XXH3-64 of header+entries
 *   | zero tail (written and synced ahead, COW_MAP_TAIL_STEP: appends overwrite it in place)
 *
 * Recovery applies the snapshot, then records in order while they are whole, checksummed and
 * carry the expected sequence number; the first short or bad record ends the journal (a record
 * torn by a crash was never acknowledged: its flush had not completed); zeros end it too, as no
 * record has magic 0.  A bad snapshot, or a
 * checksummed entry naming blocks past the device or an unknown state, is corruption.
 * States in the file: 0 fall through, 1 upper data, 2 zero (enum cow_upper_state). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "common/log.h"
#include "cow/cow_internal.h"

struct run_disk {
	uint64_t block_index;
	uint32_t block_count;
	uint32_t state;
};
_Static_assert(sizeof(struct run_disk) == 16, "run layout");
_Static_assert(sizeof(struct cow_change) == 16, "change layout");

static bool run_valid(const struct run_disk *r, uint64_t size_blocks)
{
	return r->block_count >= 1 && r->state <= COW_UPPER_ZERO && r->block_index < size_blocks &&
	       r->block_count <= size_blocks - r->block_index;
}

int cow_map_parse(const uint8_t *buf, uint64_t len, uint64_t size_blocks, uint8_t *states,
		  struct cow_map_parsed *out, bool log_errors, const char *path)
{
	struct cow_map_header h;
	memset(out, 0, sizeof *out);
#define BAD(...) do { out->errors++; if (log_errors) log_error(-EUCLEAN, __VA_ARGS__); else log_debug(__VA_ARGS__); return -EUCLEAN; } while (0)
	if (len < sizeof h) BAD("parse upper map %s: short header (%llu bytes)", path, (unsigned long long)len);
	memcpy(&h, buf, sizeof h);
	if (memcmp(h.magic, COW_MAP_MAGIC, 8) || h.version != COW_MAP_VERSION || h.header_bytes != sizeof h)
		BAD("parse upper map %s: bad magic or version", path);
	if (h.size_blocks != size_blocks)
		BAD("parse upper map %s: size %llu blocks, device has %llu", path, (unsigned long long)h.size_blocks,
		    (unsigned long long)size_blocks);
	if (h.base_top[SHA256_DIGEST_STRLEN - 1] != 0) BAD("parse upper map %s: unterminated base digest", path);
	if (h.run_count > size_blocks || h.run_count > (len - sizeof h) / sizeof(struct run_disk))
		BAD("parse upper map %s: run count %llu does not fit", path, (unsigned long long)h.run_count);
	uint64_t snap_end = sizeof h + h.run_count * sizeof(struct run_disk);
	if (len - snap_end < 8) BAD("parse upper map %s: truncated snapshot", path);
	uint64_t sum;
	memcpy(&sum, buf + snap_end, 8);
	if (XXH3_64bits(buf, snap_end) != sum) BAD("parse upper map %s: snapshot checksum mismatch", path);
	out->hdr = h;
	uint64_t prev_end = 0;
	for (uint64_t i = 0; i < h.run_count; i++) {
		struct run_disk r;
		memcpy(&r, buf + sizeof h + i * sizeof r, sizeof r);
		if (!run_valid(&r, size_blocks) || r.block_index < prev_end)
			BAD("parse upper map %s: snapshot run %llu invalid", path, (unsigned long long)i);
		memset(states + r.block_index, (int)r.state, r.block_count);
		prev_end = r.block_index + r.block_count;
	}
	uint64_t pos = snap_end + 8, seq = 1;
	out->journal_offset = pos;
	for (;;) {
		struct cow_journal_header jh;
		if (len - pos < sizeof jh) break;
		memcpy(&jh, buf + pos, sizeof jh);
		if (jh.magic != COW_JOURNAL_MAGIC || jh.seq != seq) break;
		if (jh.entry_count == 0 || jh.entry_count > (len - pos - sizeof jh) / sizeof(struct run_disk)) break;
		uint64_t body = sizeof jh + (uint64_t)jh.entry_count * sizeof(struct run_disk);
		if (len - pos - body < 8) break;
		memcpy(&sum, buf + pos + body, 8);
		if (XXH3_64bits(buf + pos, body) != sum) break;
		/* a whole, checksummed record: its entries must be valid */
		for (uint32_t i = 0; i < jh.entry_count; i++) {
			struct run_disk r;
			memcpy(&r, buf + pos + sizeof jh + (uint64_t)i * sizeof r, sizeof r);
			if (!run_valid(&r, size_blocks))
				BAD("parse upper map %s: journal record %llu entry %u invalid", path,
				    (unsigned long long)seq, i);
		}
		for (uint32_t i = 0; i < jh.entry_count; i++) {
			struct run_disk r;
			memcpy(&r, buf + pos + sizeof jh + (uint64_t)i * sizeof r, sizeof r);
			memset(states + r.block_index, (int)r.state, r.block_count);
		}
		pos += body + 8;
		seq++;
		out->records++;
	}
#undef BAD
	out->journal_end = pos;
	out->next_seq = seq;
	return 0;
}

int cow_map_serialize(const uint8_t *states, uint64_t size_blocks, uint64_t generation, uint32_t base_layer_count,
		      const char *base_top, uint8_t **out, uint64_t *len_out)
{
	uint64_t runs = 0;
	for (uint64_t b = 0; b < size_blocks;) {
		uint64_t e = b + 1;
		while (e < size_blocks && states[e] == states[b] && e - b < UINT32_MAX) e++;
		if (states[b] != COW_UPPER_FALL) runs++;
		b = e;
	}
	struct cow_map_header h;
	memset(&h, 0, sizeof h);
	memcpy(h.magic, COW_MAP_MAGIC, 8);
	h.version = COW_MAP_VERSION;
	h.header_bytes = sizeof h;
	h.size_blocks = size_blocks;
	h.generation = generation;
	h.base_layer_count = base_layer_count;
	snprintf(h.base_top, sizeof h.base_top, "%s", base_top ? base_top : "");
	h.run_count = runs;
	uint64_t len = sizeof h + runs * sizeof(struct run_disk) + 8;
	uint8_t *buf = malloc(len);
	if (!buf) return log_error(-ENOMEM, "serialize upper map: out of memory");
	memcpy(buf, &h, sizeof h);
	uint64_t k = 0;
	for (uint64_t b = 0; b < size_blocks;) {
		uint64_t e = b + 1;
		while (e < size_blocks && states[e] == states[b] && e - b < UINT32_MAX) e++;
		if (states[b] != COW_UPPER_FALL) {
			struct run_disk r = { .block_index = b, .block_count = (uint32_t)(e - b), .state = states[b] };
			memcpy(buf + sizeof h + k++ * sizeof r, &r, sizeof r);
		}
		b = e;
	}
	uint64_t sum = XXH3_64bits(buf, len - 8);
	memcpy(buf + len - 8, &sum, 8);
	*out = buf;
	*len_out = len;
	return 0;
}

int cow_journal_record(const struct cow_change *changes, uint64_t count, uint64_t seq, uint8_t **out,
		       uint64_t *len_out)
{
	struct cow_journal_header jh = { .magic = COW_JOURNAL_MAGIC, .entry_count = (uint32_t)count, .seq = seq };
	if (count == 0 || count > UINT32_MAX) return log_error(-EINVAL, "journal record: %llu entries", (unsigned long long)count);
	uint64_t body = sizeof jh + count * sizeof(struct run_disk);
	uint8_t *buf = malloc(body + 8);
	if (!buf) return log_error(-ENOMEM, "journal record: out of memory");
	memcpy(buf, &jh, sizeof jh);
	memcpy(buf + sizeof jh, changes, count * sizeof *changes);
	uint64_t sum = XXH3_64bits(buf, body);
	memcpy(buf + body, &sum, 8);
	*out = buf;
	*len_out = body + 8;
	return 0;
}
