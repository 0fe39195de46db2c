/* `ociblk ps` / `ociblk ls`: the containers of the store, with the disk space their uppers use
 * and whether a device holds them open right now (their lock is taken). */
#include "cli/cli.h"
#include "common/log.h"
#include "layer-store/layer_store.h"

#include <errno.h>
#include <ftw.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const char ps_usage[] =
	"usage: ociblk ps [--json]      (also: ociblk ls)\n"
	"\n"
	"Lists containers: name, image, device size, layers in its chain, disk space used by its\n"
	"private upper, and whether it is in use (open read-write by a server or another command).\n"
	"--json prints an array of {name, image, size_bytes, layer_count, top_layer, disk_bytes, in_use}.\n";

static uint64_t du_total;

static int du_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	if (flag == FTW_F) du_total += (uint64_t)st->st_blocks * 512;
	return 0;
}

/* Bytes of disk used by the files under dir (0 when it cannot be walked). */
static uint64_t disk_usage(const char *dir)
{
	du_total = 0;
	nftw(dir, du_one, 16, FTW_PHYS);
	return du_total;
}

struct ps_ctx {
	struct layer_store *store;
	struct json_object *arr;
	bool json;
};

static int ps_one(const char *name, void *opaque)
{
	struct ps_ctx *ctx = opaque;
	struct container_record rec;
	char dir[OCIBLK_PATH_MAX];
	uint64_t upper = 0;
	memset(&rec, 0, sizeof rec);
	int err = layer_store_container_get(ctx->store, name, &rec);
	if (err) return err;
	if (layer_store_container_dir(ctx->store, name, dir, sizeof dir) == 0) upper = disk_usage(dir);
	bool in_use = layer_store_container_in_use(ctx->store, name) == 1;
	const char *top = rec.layer_count ? rec.layers[rec.layer_count - 1] : "";
	if (ctx->json) {
		struct json_object *o = json_object_new_object();
		json_object_object_add(o, "name", json_object_new_string(rec.name));
		json_object_object_add(o, "image", json_object_new_string(rec.image));
		json_object_object_add(o, "size_bytes", json_object_new_int64((int64_t)rec.size_bytes));
		json_object_object_add(o, "layer_count", json_object_new_int64(rec.layer_count));
		json_object_object_add(o, "top_layer", json_object_new_string(top));
		json_object_object_add(o, "disk_bytes", json_object_new_int64((int64_t)upper));
		json_object_object_add(o, "in_use", json_object_new_boolean(in_use));
		json_object_object_add(o, "created_unix", json_object_new_int64(rec.created_unix));
		json_object_array_add(ctx->arr, o);
	} else {
		char sz[32], up[32];
		printf("%-24s %-24s %10s %6u %10s  %s\n", rec.name, rec.image, cli_human_bytes(rec.size_bytes, sz, sizeof sz),
		       rec.layer_count, cli_human_bytes(upper, up, sizeof up), in_use ? "in use" : "-");
	}
	return 0;
}

static int cmd_ps(int argc, char **argv, const struct cli_globals *g)
{
	if (argc > 1) return cli_usage_error(ps_usage, "%s: unexpected argument '%s'", argv[0], argv[1]);
	struct layer_store *store = NULL;
	if (cli_store_open(g, false, &store)) return 1;
	struct ps_ctx ctx = { .store = store, .json = g->json };
	if (g->json) ctx.arr = json_object_new_array();
	else printf("%-24s %-24s %10s %6s %10s  %s\n", "CONTAINER", "IMAGE", "SIZE", "LAYERS", "DISK", "STATE");
	int err = layer_store_container_foreach(store, ps_one, &ctx);
	if (g->json) {
		if (err) json_object_put(ctx.arr);
		else cli_json_print(ctx.arr);
	}
	layer_store_close(store);
	return cli_exit_status(err);
}

CLI_COMMAND(ps, "ps", "list containers", ps_usage, cmd_ps)
CLI_COMMAND(ls, "ls", "list containers (same as ps)", ps_usage, cmd_ps)
