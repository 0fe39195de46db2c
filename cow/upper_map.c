/* The upper's metadata file, upper.map: a checksummed snapshot of block states followed by an
 * append-only journal of checksummed records (byte layout: cow/FORMAT.md).
 *
 *   version 2: header (struct cow_map_header_v2: version-1 header + u64 first_seq)
 *   | run_count runs {u64 block_index, u32 block_count, u32 state} | u64 XXH3-64 of header+runs
 *   | record* where record = struct cow_journal_header_v2 {u32 "JRN2", u32 entry_count, u64 seq,
 *     u32 payload_count, u32 flags, u64 covers_seq} | entries (same layout as runs)
 *     | payload_count u64 block indexes | payload_count blocks of 4096 bytes
 *     | u64 XXH3-64 of header+entries+payloads
 *   | zero tail (written and synced ahead, COW_MAP_TAIL_STEP: appends overwrite it in place)
 *   version 1 (still read): header without first_seq (records start at seq 1), records
 *   {u32 "JRNL", u32 entry_count, u64 seq} | entries | u64 XXH3-64, no payloads.
 *
 * A record's payloads are the content of blocks written since the previous flush, so a flush
 * syncs only upper.map (write-ahead logging with data).  A record flagged COW_RECORD_CHECKPOINT
 * was written after a sync of upper.data that covered the payloads of every record before
 * covers_seq.  Recovery applies the snapshot, then records in order while they are whole,
 * checksummed and carry the expected sequence number; the first short or bad record ends the
 * journal (a record torn by a crash was never acknowledged: its flush had not completed); zeros
 * end it too, as no record has magic 0.  Then it writes into upper.data, in record order (the
 * last wins), the payloads of records at or after the highest covers_seq (first_seq when no
 * checkpoint) whose block's final state is upper data, and syncs it (cow_map_recover).
 * Why that is exact: every flush either carries the latest content of every block written
 * since the previous flush or is a checkpoint, so a flushed block's latest content is in
 * upper.data (synced) or in the last uncovered payload that names it.
 * A bad snapshot, or a checksummed record naming blocks past the device, an unknown state or
 * flag, or a covers_seq past its own seq, is corruption.
 * States in the file: 0 fall through, 1 upper data, 2 zero (enum cow_upper_state). */
#include <assert.h>
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
_Static_assert(sizeof(struct cow_map_header) == 120, "v1 header layout");
_Static_assert(sizeof(struct cow_map_header_v2) == 128, "v2 header layout");
_Static_assert(sizeof(struct cow_journal_header) == 16, "v1 record header layout");
_Static_assert(sizeof(struct cow_journal_header_v2) == 32, "v2 record header layout");

#define PAYLOAD_BYTES ((uint64_t)COW_BLOCK_SIZE)

static bool run_valid(const struct run_disk *r, uint64_t size_blocks)
{
	return r->block_count >= 1 && r->state <= COW_UPPER_ZERO && r->block_index < size_blocks &&
	       r->block_count <= size_blocks - r->block_index;
}

uint64_t cow_journal_record_bytes(uint64_t count, uint32_t payload_count)
{
	return sizeof(struct cow_journal_header_v2) + count * sizeof(struct run_disk) +
	       (uint64_t)payload_count * (8 + PAYLOAD_BYTES) + 8;
}

/* One version-2 record at buf[pos..len): its header and total length, or false when the journal
 * ends here (short, bad magic or sequence, checksum). */
static bool record_v2_at(const uint8_t *buf, uint64_t len, uint64_t pos, uint64_t seq,
			 struct cow_journal_header_v2 *jh, uint64_t *rec_len)
{
	if (len - pos < sizeof *jh) return false;
	memcpy(jh, buf + pos, sizeof *jh);
	if (jh->magic != COW_JOURNAL_MAGIC_V2 || jh->seq != seq) return false;
	uint64_t room = len - pos - sizeof *jh;
	if (jh->entry_count > room / sizeof(struct run_disk) || jh->payload_count > room / (8 + PAYLOAD_BYTES)) return false;
	uint64_t total = cow_journal_record_bytes(jh->entry_count, jh->payload_count);
	if (total > len - pos) return false;
	uint64_t sum;
	memcpy(&sum, buf + pos + total - 8, 8);
	if (XXH3_64bits(buf + pos, total - 8) != sum) return false;
	*rec_len = total;
	return true;
}

/* One version-1 record, likewise. */
static bool record_v1_at(const uint8_t *buf, uint64_t len, uint64_t pos, uint64_t seq,
			 struct cow_journal_header_v2 *jh, uint64_t *rec_len)
{
	struct cow_journal_header j1;
	if (len - pos < sizeof j1) return false;
	memcpy(&j1, buf + pos, sizeof j1);
	if (j1.magic != COW_JOURNAL_MAGIC || j1.seq != seq) return false;
	if (j1.entry_count == 0 || j1.entry_count > (len - pos - sizeof j1) / sizeof(struct run_disk)) return false;
	uint64_t body = sizeof j1 + (uint64_t)j1.entry_count * sizeof(struct run_disk);
	if (len - pos - body < 8) return false;
	uint64_t sum;
	memcpy(&sum, buf + pos + body, 8);
	if (XXH3_64bits(buf + pos, body) != sum) return false;
	*jh = (struct cow_journal_header_v2){ .magic = j1.magic, .entry_count = j1.entry_count, .seq = j1.seq };
	*rec_len = body + 8;
	return true;
}

int cow_map_parse(const uint8_t *buf, uint64_t len, uint64_t size_blocks, uint8_t *states,
		  struct cow_map_parsed *out, bool log_errors, const char *path)
{
	struct cow_map_header h;
	memset(out, 0, sizeof *out);
#define BAD(...) do { out->errors++; if (log_errors) log_error(-EUCLEAN, __VA_ARGS__); else log_debug(__VA_ARGS__); return -EUCLEAN; } while (0)
	if (len < sizeof h) BAD("parse upper map %s: short header (%llu bytes)", path, (unsigned long long)len);
	memcpy(&h, buf, sizeof h);
	if (memcmp(h.magic, COW_MAP_MAGIC, 8)) BAD("parse upper map %s: bad magic", path);
	if (h.version != COW_MAP_VERSION && h.version != COW_MAP_VERSION_V1)
		BAD("parse upper map %s: format version %u, this build reads 1 and %u", path, h.version, COW_MAP_VERSION);
	uint64_t hdr_bytes = h.version == COW_MAP_VERSION_V1 ? sizeof h : sizeof(struct cow_map_header_v2);
	if (h.header_bytes != hdr_bytes || len < hdr_bytes)
		BAD("parse upper map %s: header of %u bytes for version %u", path, h.header_bytes, h.version);
	out->first_seq = 1;
	if (h.version == COW_MAP_VERSION) {
		struct cow_map_header_v2 h2;
		memcpy(&h2, buf, sizeof h2);
		out->first_seq = h2.first_seq;
		if (h2.first_seq == 0 || h2.first_seq > UINT64_MAX / 2) BAD("parse upper map %s: bad first sequence", path);
	}
	if (h.size_blocks != size_blocks)
		BAD("parse upper map %s: size %llu blocks, device has %llu", path, (unsigned long long)h.size_blocks,
		    (unsigned long long)size_blocks);
	if (h.base_top[SHA256_DIGEST_STRLEN - 1] != 0) BAD("parse upper map %s: unterminated base digest", path);
	if (h.run_count > size_blocks || h.run_count > (len - hdr_bytes) / sizeof(struct run_disk))
		BAD("parse upper map %s: run count %llu does not fit", path, (unsigned long long)h.run_count);
	uint64_t snap_end = hdr_bytes + h.run_count * sizeof(struct run_disk);
	if (len - snap_end < 8) BAD("parse upper map %s: truncated snapshot", path);
	uint64_t sum;
	memcpy(&sum, buf + snap_end, 8);
	if (XXH3_64bits(buf, snap_end) != sum) BAD("parse upper map %s: snapshot checksum mismatch", path);
	out->hdr = h;
	out->version = h.version;
	uint64_t prev_end = 0;
	for (uint64_t i = 0; i < h.run_count; i++) {
		struct run_disk r;
		memcpy(&r, buf + hdr_bytes + i * sizeof r, sizeof r);
		if (!run_valid(&r, size_blocks) || r.block_index < prev_end)
			BAD("parse upper map %s: snapshot run %llu invalid", path, (unsigned long long)i);
		memset(states + r.block_index, (int)r.state, r.block_count);
		prev_end = r.block_index + r.block_count;
	}
	uint64_t pos = snap_end + 8, seq = out->first_seq;
	out->journal_offset = pos;
	out->covered_seq = seq;
	for (;;) {
		struct cow_journal_header_v2 jh;
		uint64_t rec_len;
		bool ok = h.version == COW_MAP_VERSION_V1 ? record_v1_at(buf, len, pos, seq, &jh, &rec_len)
							  : record_v2_at(buf, len, pos, seq, &jh, &rec_len);
		if (!ok) break;
		/* a whole, checksummed record: everything in it must be valid */
		const uint8_t *entries = buf + pos + (h.version == COW_MAP_VERSION_V1 ? sizeof(struct cow_journal_header)
										    : sizeof jh);
		const uint8_t *pidx = entries + (uint64_t)jh.entry_count * sizeof(struct run_disk);
		if (jh.flags & ~COW_RECORD_CHECKPOINT)
			BAD("parse upper map %s: journal record %llu has unknown flags %#x", path, (unsigned long long)seq,
			    jh.flags);
		if ((jh.flags & COW_RECORD_CHECKPOINT) && jh.covers_seq > seq)
			BAD("parse upper map %s: journal record %llu covers %llu", path, (unsigned long long)seq,
			    (unsigned long long)jh.covers_seq);
		for (uint32_t i = 0; i < jh.entry_count; i++) {
			struct run_disk r;
			memcpy(&r, entries + (uint64_t)i * sizeof r, sizeof r);
			if (!run_valid(&r, size_blocks))
				BAD("parse upper map %s: journal record %llu entry %u invalid", path,
				    (unsigned long long)seq, i);
		}
		for (uint32_t i = 0; i < jh.payload_count; i++) {
			uint64_t b;
			memcpy(&b, pidx + (uint64_t)i * 8, 8);
			if (b >= size_blocks)
				BAD("parse upper map %s: journal record %llu payload %u names block %llu", path,
				    (unsigned long long)seq, i, (unsigned long long)b);
		}
		for (uint32_t i = 0; i < jh.entry_count; i++) {
			struct run_disk r;
			memcpy(&r, entries + (uint64_t)i * sizeof r, sizeof r);
			memset(states + r.block_index, (int)r.state, r.block_count);
		}
		if ((jh.flags & COW_RECORD_CHECKPOINT) && jh.covers_seq > out->covered_seq) out->covered_seq = jh.covers_seq;
		if (jh.payload_count) {
			out->payload_records++;
			out->last_payload_seq = seq;
		}
		pos += rec_len;
		seq++;
		out->records++;
	}
#undef BAD
	out->journal_end = pos;
	out->next_seq = seq;
	return 0;
}

int cow_map_replay(const uint8_t *buf, const struct cow_map_parsed *p, const uint8_t *states,
		   int (*apply)(void *ctx, uint64_t block_index, const uint8_t *data), void *ctx, uint64_t *blocks_out)
{
	uint64_t pos = p->journal_offset, n = 0;
	*blocks_out = 0;
	if (p->version == COW_MAP_VERSION_V1) return 0; /* no payloads */
	for (uint64_t k = 0; k < p->records; k++) {
		struct cow_journal_header_v2 jh;
		uint64_t rec_len;
		bool ok = record_v2_at(buf, p->journal_end, pos, p->first_seq + k, &jh, &rec_len);
		assert(ok); /* parsed before */
		if (!ok) return -EUCLEAN;
		if (jh.seq >= p->covered_seq && jh.payload_count) {
			const uint8_t *pidx = buf + pos + sizeof jh + (uint64_t)jh.entry_count * sizeof(struct run_disk);
			const uint8_t *pdata = pidx + (uint64_t)jh.payload_count * 8;
			for (uint32_t i = 0; i < jh.payload_count; i++) {
				uint64_t b;
				memcpy(&b, pidx + (uint64_t)i * 8, 8);
				if (states[b] != COW_UPPER_DATA) continue; /* discarded since: reads zero or the chain */
				int r = apply(ctx, b, pdata + (uint64_t)i * PAYLOAD_BYTES);
				if (r) return r;
				n++;
			}
		}
		pos += rec_len;
	}
	*blocks_out = n;
	return 0;
}

int cow_map_serialize(const uint8_t *states, uint64_t size_blocks, uint64_t generation, uint32_t base_layer_count,
		      const char *base_top, uint64_t first_seq, uint8_t **out, uint64_t *len_out)
{
	uint64_t runs = 0;
	for (uint64_t b = 0; b < size_blocks;) {
		uint64_t e = b + 1;
		while (e < size_blocks && states[e] == states[b] && e - b < UINT32_MAX) e++;
		if (states[b] != COW_UPPER_FALL) runs++;
		b = e;
	}
	struct cow_map_header_v2 h2;
	struct cow_map_header *h = &h2.h;
	memset(&h2, 0, sizeof h2);
	memcpy(h->magic, COW_MAP_MAGIC, 8);
	h->version = COW_MAP_VERSION;
	h->header_bytes = sizeof h2;
	h->size_blocks = size_blocks;
	h->generation = generation;
	h->base_layer_count = base_layer_count;
	snprintf(h->base_top, sizeof h->base_top, "%s", base_top ? base_top : "");
	h->run_count = runs;
	h2.first_seq = first_seq;
	uint64_t len = sizeof h2 + runs * sizeof(struct run_disk) + 8;
	uint8_t *buf = malloc(len);
	if (!buf) return log_error(-ENOMEM, "serialize upper map: out of memory");
	memcpy(buf, &h2, sizeof h2);
	uint64_t k = 0;
	for (uint64_t b = 0; b < size_blocks;) {
		uint64_t e = b + 1;
		while (e < size_blocks && states[e] == states[b] && e - b < UINT32_MAX) e++;
		if (states[b] != COW_UPPER_FALL) {
			struct run_disk r = { .block_index = b, .block_count = (uint32_t)(e - b), .state = states[b] };
			memcpy(buf + sizeof h2 + k++ * sizeof r, &r, sizeof r);
		}
		b = e;
	}
	uint64_t sum = XXH3_64bits(buf, len - 8);
	memcpy(buf + len - 8, &sum, 8);
	*out = buf;
	*len_out = len;
	return 0;
}

int cow_journal_record(const struct cow_change *changes, uint64_t count, uint64_t seq, uint32_t flags,
		       uint64_t covers_seq, const uint64_t *payload_blocks, const uint8_t *payload_data,
		       uint32_t payload_count, uint8_t **out, uint64_t *len_out)
{
	struct cow_journal_header_v2 jh = { .magic = COW_JOURNAL_MAGIC_V2, .entry_count = (uint32_t)count, .seq = seq,
					    .payload_count = payload_count, .flags = flags, .covers_seq = covers_seq };
	if (count > UINT32_MAX || (count == 0 && payload_count == 0 && !(flags & COW_RECORD_CHECKPOINT)))
		return log_error(-EINVAL, "journal record: %llu entries, %u payloads", (unsigned long long)count, payload_count);
	uint64_t total = cow_journal_record_bytes(count, payload_count);
	uint8_t *buf = malloc(total);
	if (!buf) return log_error(-ENOMEM, "journal record: out of memory");
	uint8_t *p = buf;
	memcpy(p, &jh, sizeof jh);
	p += sizeof jh;
	if (count) memcpy(p, changes, count * sizeof *changes);
	p += count * sizeof *changes;
	if (payload_count) {
		memcpy(p, payload_blocks, (uint64_t)payload_count * 8);
		p += (uint64_t)payload_count * 8;
		memcpy(p, payload_data, (uint64_t)payload_count * PAYLOAD_BYTES);
		p += (uint64_t)payload_count * PAYLOAD_BYTES;
	}
	uint64_t sum = XXH3_64bits(buf, total - 8);
	memcpy(p, &sum, 8);
	*out = buf;
	*len_out = total;
	return 0;
}
