/* `ociblk layer add-raw FILE` turns a raw disk image into a base layer plus an image record;
 * `ociblk layer ls` lists the layer files of the store with their reference counts.
 *
 * add-raw reads the file once, front to back.  Holes (SEEK_HOLE) and all-zero 4 KiB blocks become
 * ZERO extents, everything else DATA (zstd-compressed unless --no-compress); the layer is
 * published first, then the image record, both under the store lock so gc cannot reclaim the
 * new layer in between. */
#include "cli/cli.h"
#include "common/checked.h"
#include "common/cleanup.h"
#include "common/log.h"
#include "layer-store/layer_store.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <json-c/json.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ADD_RAW_BATCH_BLOCKS 256u            /* 1 MiB read buffer */
#define ADD_RAW_ZERO_RUN_MAX (1u << 30)       /* ZERO extents count blocks in 32 bits */
#define ADD_RAW_DEFAULT_ZSTD_LEVEL 3

static const char layer_usage[] =
	"usage: ociblk layer add-raw FILE [--name IMAGE] [--size BYTES] [--no-compress] [--zstd-level N] [--force]\n"
	"       ociblk layer ls [--json]\n"
	"\n"
	"add-raw: FILE (a raw disk image or block device) becomes a base layer and an image record.\n"
	"  --name IMAGE     image name (default: FILE's base name without its extension)\n"
	"  --size BYTES     device size, >= FILE's size, a multiple of 4096 (suffixes K, M, G, T);\n"
	"                   default: FILE's size rounded up to 4 KiB\n"
	"  --no-compress    store data chunks raw (default: zstd)\n"
	"  --zstd-level N   zstd level 1..19 (default 3)\n"
	"  --force          replace an existing image of that name\n"
	"Holes and all-zero 4 KiB blocks are stored as ZERO extents and take no space.\n"
	"\n"
	"ls: every layer file of the store: digest, parent, sizes, references.\n";

struct zero_run {
	uint64_t start;
	uint64_t count;
};

static int flush_zero(struct layer_writer *w, struct zero_run *z)
{
	while (z->count) {
		uint64_t n = z->count > ADD_RAW_ZERO_RUN_MAX ? ADD_RAW_ZERO_RUN_MAX : z->count;
		int err = layer_writer_add_zero(w, z->start, n);
		if (err) return err;
		z->start += n;
		z->count -= n;
	}
	return 0;
}

static bool block_is_zero(const unsigned char *p)
{
	const uint64_t *q = (const uint64_t *)p;
	for (size_t i = 0; i < LAYER_BLOCK_SIZE / sizeof *q; i++)
		if (q[i]) return false;
	return true;
}

/* Feeds blocks [first, first+count) read from fd into w: zero blocks extend the pending zero run,
 * data runs are added as they come.  buf holds ADD_RAW_BATCH_BLOCKS blocks. */
static int feed_data_region(struct layer_writer *w, int fd, uint64_t file_size, uint64_t first, uint64_t count,
			    unsigned char *buf, struct zero_run *z, uint64_t *data_blocks)
{
	while (count) {
		uint64_t n = count > ADD_RAW_BATCH_BLOCKS ? ADD_RAW_BATCH_BLOCKS : count;
		uint64_t off = first * LAYER_BLOCK_SIZE;
		uint64_t want = n * LAYER_BLOCK_SIZE;
		uint64_t avail = off < file_size ? file_size - off : 0;
		if (avail > want) avail = want;
		memset(buf + avail, 0, want - avail);
		for (uint64_t got = 0; got < avail;) {
			ssize_t r = pread(fd, buf + got, avail - got, off + got);
			if (r < 0 && errno == EINTR) continue;
			if (r < 0) return log_error(-errno, "add-raw: read at %llu: %s", (unsigned long long)(off + got), strerror(errno));
			if (r == 0) return log_error(-EIO, "add-raw: file shrank while reading (at %llu)", (unsigned long long)(off + got));
			got += (uint64_t)r;
		}
		uint64_t i = 0;
		while (i < n) {
			if (block_is_zero(buf + i * LAYER_BLOCK_SIZE)) {
				if (z->count == 0) z->start = first + i;
				z->count++;
				i++;
				continue;
			}
			int err = flush_zero(w, z);
			if (err) return err;
			uint64_t j = i + 1;
			while (j < n && !block_is_zero(buf + j * LAYER_BLOCK_SIZE)) j++;
			err = layer_writer_add_data(w, first + i, buf + i * LAYER_BLOCK_SIZE, j - i);
			if (err) return err;
			*data_blocks += j - i;
			z->start = first + j;
			i = j;
		}
		first += n;
		count -= n;
	}
	return 0;
}

/* Next data region at or after pos (byte offsets), using SEEK_DATA/SEEK_HOLE where the file
 * system supports them, else the whole rest of the file. */
static void next_data_region(int fd, uint64_t pos, uint64_t file_size, uint64_t *data_start, uint64_t *data_end)
{
	off_t d = lseek(fd, (off_t)pos, SEEK_DATA);
	if (d < 0) {
		*data_start = errno == ENXIO ? file_size : pos;
		*data_end = file_size;
		return;
	}
	off_t h = lseek(fd, d, SEEK_HOLE);
	*data_start = (uint64_t)d;
	*data_end = h < 0 ? file_size : (uint64_t)h;
}

static void default_name(const char *file, char *out, size_t len)
{
	const char *base = strrchr(file, '/');
	base = base ? base + 1 : file;
	snprintf(out, len, "%s", base);
	char *dot = strrchr(out, '.');
	if (dot && dot != out) *dot = '\0';
}

static int add_raw(int argc, char **argv, const struct cli_globals *g)
{
	static const struct option opts[] = {
		{ "name", required_argument, 0, 'n' },
		{ "size", required_argument, 0, 's' },
		{ "no-compress", no_argument, 0, 'N' },
		{ "zstd-level", required_argument, 0, 'z' },
		{ "force", no_argument, 0, 'f' },
		{ 0, 0, 0, 0 },
	};
	const char *name = NULL;
	uint64_t size_bytes = 0;
	bool have_size = false, force = false, no_compress = false;
	int level_arg = ADD_RAW_DEFAULT_ZSTD_LEVEL;
	int c;

	cli_getopt_reset();
	while ((c = getopt_long(argc, argv, "n:s:fz:", opts, NULL)) != -1) {
		switch (c) {
		case 'n': name = optarg; break;
		case 's':
			if (cli_parse_bytes(optarg, &size_bytes))
				return cli_usage_error(layer_usage, "layer add-raw: bad --size '%s'", optarg);
			have_size = true;
			break;
		case 'N': no_compress = true; break;
		case 'z': {
			char *end;
			long v = strtol(optarg, &end, 10);
			if (*end || v < 1 || v > 19)
				return cli_usage_error(layer_usage, "layer add-raw: --zstd-level must be 1..19, not '%s'", optarg);
			level_arg = (int)v;
			break;
		}
		case 'f': force = true; break;
		default: return cli_bad_option(layer_usage, argc, argv);
		}
	}
	if (argc - optind != 1) return cli_usage_error(layer_usage, "layer add-raw: expected one FILE");
	const char *file = argv[optind];
	int zstd_level = no_compress ? 0 : level_arg;

	char name_buf[OCIBLK_NAME_MAX + 64];
	if (!name) {
		default_name(file, name_buf, sizeof name_buf);
		name = name_buf;
	}
	if (strlen(name) > OCIBLK_NAME_MAX || layer_store_name_validate("image", name)) {
		fprintf(stderr, "ociblk: choose another image name with --name\n");
		return 1;
	}

	CLEANUP_CLOSE int fd = open(file, O_RDONLY | O_CLOEXEC);
	if (fd < 0) return cli_exit_status(log_error(-errno, "layer add-raw: open %s: %s", file, strerror(errno)));
	struct stat st;
	if (fstat(fd, &st) < 0) return cli_exit_status(log_error(-errno, "layer add-raw: stat %s: %s", file, strerror(errno)));
	uint64_t file_size;
	if (S_ISREG(st.st_mode)) {
		file_size = (uint64_t)st.st_size;
	} else if (S_ISBLK(st.st_mode)) {
		if (ioctl(fd, BLKGETSIZE64, &file_size) < 0)
			return cli_exit_status(log_error(-errno, "layer add-raw: size of %s: %s", file, strerror(errno)));
	} else {
		return cli_exit_status(log_error(-EINVAL, "layer add-raw: %s is not a regular file or block device", file));
	}
	if (!have_size) {
		size_bytes = DIV_ROUND_UP(file_size, LAYER_BLOCK_SIZE) * LAYER_BLOCK_SIZE;
		if (size_bytes == 0) return cli_exit_status(log_error(-EINVAL, "layer add-raw: %s is empty (give --size to make an empty disk)", file));
	} else {
		if (size_bytes == 0 || size_bytes % LAYER_BLOCK_SIZE)
			return cli_usage_error(layer_usage, "layer add-raw: --size must be a non-zero multiple of 4096");
		if (size_bytes < file_size)
			return cli_exit_status(log_error(-EINVAL, "layer add-raw: --size %llu is smaller than %s (%llu bytes)",
							 (unsigned long long)size_bytes, file, (unsigned long long)file_size));
	}
	if (size_bytes > LAYER_VIRTUAL_SIZE_MAX)
		return cli_exit_status(log_error(-EFBIG, "layer add-raw: size %llu is above the limit of %llu bytes",
						 (unsigned long long)size_bytes, (unsigned long long)LAYER_VIRTUAL_SIZE_MAX));

	struct layer_store *store = NULL;
	if (cli_store_open(g, true, &store)) return 1;

	int err;
	struct image_record rec;
	memset(&rec, 0, sizeof rec);
	if (!force) {
		err = layer_store_image_get(store, name, &rec);
		image_record_clear(&rec);
		if (err == 0) {
			log_error(-EEXIST, "layer add-raw: image %s already exists (use --force to replace it, or --name)", name);
			layer_store_close(store);
			return 1;
		}
	}

	struct layer_writer_options wo = {
		.virtual_size_bytes = size_bytes,
		.parent_digest = NULL,
		.chunk_blocks = 0,
		.zstd_level = zstd_level,
		.detect_zero_blocks = true,
	};
	struct layer_writer *w = NULL;
	CLEANUP_FREE unsigned char *buf = NULL;
	char digest[SHA256_DIGEST_STRLEN] = "";
	struct zero_run z = { 0, 0 };
	uint64_t data_blocks = 0, total_blocks = size_bytes / LAYER_BLOCK_SIZE;
	bool locked = false;

	if (posix_memalign((void **)&buf, 4096, ADD_RAW_BATCH_BLOCKS * LAYER_BLOCK_SIZE)) {
		err = log_error(-ENOMEM, "layer add-raw: out of memory");
		goto out;
	}
	err = layer_writer_create(store, &wo, &w);
	if (err) goto out;

	/* Walk the data regions of the file; everything else (holes, the tail past EOF) is zero. */
	uint64_t block = 0;
	while (block < total_blocks) {
		uint64_t ds, de;
		next_data_region(fd, block * LAYER_BLOCK_SIZE, file_size, &ds, &de);
		uint64_t first = ds / LAYER_BLOCK_SIZE;
		uint64_t end = de >= file_size ? DIV_ROUND_UP(file_size, LAYER_BLOCK_SIZE) : DIV_ROUND_UP(de, LAYER_BLOCK_SIZE);
		if (first > total_blocks) first = total_blocks;
		if (end > total_blocks) end = total_blocks;
		if (first < block) first = block;
		if (first > block) { /* a hole */
			if (z.count == 0) z.start = block;
			z.count += first - block;
			block = first;
		}
		if (first >= end) {
			if (ds >= file_size) { /* no more data: the rest is zero */
				if (z.count == 0) z.start = block;
				z.count += total_blocks - block;
				block = total_blocks;
			}
			continue;
		}
		err = feed_data_region(w, fd, file_size, first, end - first, buf, &z, &data_blocks);
		if (err) goto out;
		block = end;
	}
	err = flush_zero(w, &z);
	if (err) goto out;

	err = layer_store_lock(store);
	if (err) goto out;
	locked = true;
	err = layer_writer_commit(w, digest);
	w = NULL;
	if (err) goto out;

	memset(&rec, 0, sizeof rec);
	memcpy(rec.name, name, strlen(name) + 1); /* validated: at most OCIBLK_NAME_MAX */
	rec.size_bytes = size_bytes;
	rec.layer_count = 1;
	snprintf(rec.layers[0], sizeof rec.layers[0], "%s", digest);
	rec.created_unix = (int64_t)time(NULL);
	err = layer_store_image_put(store, &rec);
	if (err) goto out;

	uint64_t layer_file_bytes = 0;
	{
		struct layer *l = NULL;
		if (layer_open(store, digest, false, &l) == 0) {
			layer_file_bytes = layer_get_info(l)->file_size_bytes;
			layer_close(l);
		}
	}
	if (g->json) {
		struct json_object *o = json_object_new_object();
		json_object_object_add(o, "image", json_object_new_string(name));
		json_object_object_add(o, "layer", json_object_new_string(digest));
		json_object_object_add(o, "size_bytes", json_object_new_int64((int64_t)size_bytes));
		json_object_object_add(o, "source_bytes", json_object_new_int64((int64_t)file_size));
		json_object_object_add(o, "data_blocks", json_object_new_int64((int64_t)data_blocks));
		json_object_object_add(o, "zero_blocks", json_object_new_int64((int64_t)(total_blocks - data_blocks)));
		json_object_object_add(o, "layer_file_bytes", json_object_new_int64((int64_t)layer_file_bytes));
		json_object_object_add(o, "compressed", json_object_new_boolean(zstd_level != 0));
		cli_json_print(o);
	} else if (!g->quiet) {
		char a[32], b[32], d[32];
		printf("image %s: %s device, layer %s\n", name, cli_human_bytes(size_bytes, a, sizeof a), digest);
		printf("  %llu data blocks, %llu zero blocks; layer file %s (%s of data)\n",
		       (unsigned long long)data_blocks, (unsigned long long)(total_blocks - data_blocks),
		       cli_human_bytes(layer_file_bytes, b, sizeof b),
		       cli_human_bytes(data_blocks * LAYER_BLOCK_SIZE, d, sizeof d));
	}
out:
	if (w) layer_writer_abort(w);
	if (locked) layer_store_unlock(store);
	layer_store_close(store);
	return cli_exit_status(err);
}

struct ls_ctx {
	struct layer_store *store;
	struct json_object *arr;
	bool json;
	int errors;
};

static int ls_one(const char *digest, void *opaque)
{
	struct ls_ctx *ctx = opaque;
	struct layer *l = NULL;
	uint64_t refs = 0;
	int err = layer_store_layer_refcount(ctx->store, digest, &refs);
	if (err) return err;
	if (layer_open(ctx->store, digest, false, &l)) {
		ctx->errors++;
		if (ctx->json) {
			struct json_object *o = json_object_new_object();
			json_object_object_add(o, "digest", json_object_new_string(digest));
			json_object_object_add(o, "refs", json_object_new_int64((int64_t)refs));
			json_object_object_add(o, "error", json_object_new_string("cannot open (corrupt?)"));
			json_object_array_add(ctx->arr, o);
		} else {
			printf("%-71s %4llu  (cannot open: run ociblk fsck)\n", digest, (unsigned long long)refs);
		}
		return 0;
	}
	const struct layer_info *in = layer_get_info(l);
	if (ctx->json) {
		struct json_object *o = json_object_new_object();
		json_object_object_add(o, "digest", json_object_new_string(digest));
		json_object_object_add(o, "parent", json_object_new_string(in->parent_digest));
		json_object_object_add(o, "virtual_size_bytes", json_object_new_int64((int64_t)in->virtual_size_bytes));
		json_object_object_add(o, "file_size_bytes", json_object_new_int64((int64_t)in->file_size_bytes));
		json_object_object_add(o, "extents", json_object_new_int64((int64_t)in->extent_count));
		json_object_object_add(o, "data_blocks", json_object_new_int64((int64_t)in->data_blocks));
		json_object_object_add(o, "zero_blocks", json_object_new_int64((int64_t)in->zero_blocks));
		json_object_object_add(o, "refs", json_object_new_int64((int64_t)refs));
		json_object_array_add(ctx->arr, o);
	} else {
		char a[32], b[32];
		printf("%-71s %4llu  %10s  %10s  %s\n", digest, (unsigned long long)refs,
		       cli_human_bytes(in->file_size_bytes, a, sizeof a),
		       cli_human_bytes(in->virtual_size_bytes, b, sizeof b),
		       in->parent_digest[0] ? in->parent_digest : "-");
	}
	layer_close(l);
	return 0;
}

static int layer_ls(int argc, char **argv, const struct cli_globals *g)
{
	if (argc != 1) return cli_usage_error(layer_usage, "layer ls: unexpected argument '%s'", argv[1]);
	struct layer_store *store = NULL;
	if (cli_store_open(g, false, &store)) return 1;
	struct ls_ctx ctx = { .store = store, .json = g->json };
	if (g->json) ctx.arr = json_object_new_array();
	else printf("%-71s %4s  %10s  %10s  %s\n", "LAYER", "REFS", "FILE", "DEVICE", "PARENT");
	int err = layer_store_layer_foreach(store, ls_one, &ctx);
	if (g->json) {
		if (err) json_object_put(ctx.arr);
		else cli_json_print(ctx.arr);
	}
	layer_store_close(store);
	return err || ctx.errors ? 1 : 0;
}

static int cmd_layer(int argc, char **argv, const struct cli_globals *g)
{
	if (argc < 2) return cli_usage_error(layer_usage, "layer: missing subcommand (add-raw, ls)");
	if (!strcmp(argv[1], "add-raw")) return add_raw(argc - 1, argv + 1, g);
	if (!strcmp(argv[1], "ls")) return layer_ls(argc - 1, argv + 1, g);
	return cli_usage_error(layer_usage, "layer: unknown subcommand '%s' (add-raw, ls)", argv[1]);
}

CLI_COMMAND(layer, "layer", "add a raw disk image as a layer (add-raw), list layers (ls)", layer_usage, cmd_layer)
