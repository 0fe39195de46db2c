/* `ociblk fsck`: re-hashes every layer, re-checks every chunk and record (layer_store_fsck), then
 * checks the upper metadata of every container (cow_container_check).  Exit 0 only when clean. */
#include "cli/cli.h"
#include "common/log.h"
#include "cow/cow.h"
#include "layer-store/layer_store.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const char fsck_usage[] =
	"usage: ociblk fsck [--json]\n"
	"\n"
	"Checks the whole store: re-hashes every layer file against its digest, verifies every chunk\n"
	"checksum, the parent links and every record's references, then the upper of every container.\n"
	"Each problem is reported on stderr.  Exit status 0 when clean, 1 when anything is wrong.\n"
	"Containers open in a server are skipped (reported as in use).\n";

struct fsck_ctx {
	struct layer_store *store;
	struct json_object *arr;
	uint64_t containers, container_errors, busy, blocks;
};

static int fsck_container(const char *name, void *opaque)
{
	struct fsck_ctx *ctx = opaque;
	struct cow_check_report rep;
	memset(&rep, 0, sizeof rep);
	/* Hold the container's lock while checking, so no device writes its upper meanwhile; a
	 * container open elsewhere is skipped and said so. */
	log_set_quiet(1);
	int lock_fd = layer_store_container_lock(ctx->store, name);
	log_set_quiet(0);
	int err = lock_fd == -EBUSY ? -EBUSY : cow_container_check(ctx->store, name, &rep);
	if (lock_fd >= 0) close(lock_fd);
	if (err == -EBUSY) log_warn("fsck: container %s is in use: not checked", name);
	const char *state = "clean";
	ctx->containers++;
	ctx->blocks += rep.blocks_checked;
	if (err == -EBUSY) {
		state = "in use";
		ctx->busy++;
	} else if (err) {
		state = "errors";
		ctx->container_errors += rep.errors ? rep.errors : 1;
		log_error(err, "fsck: container %s: %llu errors", name, (unsigned long long)rep.errors);
	}
	if (ctx->arr) {
		struct json_object *o = json_object_new_object();
		json_object_object_add(o, "name", json_object_new_string(name));
		json_object_object_add(o, "state", json_object_new_string(state));
		json_object_object_add(o, "blocks_checked", json_object_new_int64((int64_t)rep.blocks_checked));
		json_object_object_add(o, "errors", json_object_new_int64((int64_t)(err && err != -EBUSY && !rep.errors ? 1 : rep.errors)));
		json_object_array_add(ctx->arr, o);
	}
	return 0;
}

static int cmd_fsck(int argc, char **argv, const struct cli_globals *g)
{
	if (argc > 1) return cli_usage_error(fsck_usage, "fsck: unexpected argument '%s'", argv[1]);
	struct layer_store *store = NULL;
	if (cli_store_open(g, false, &store)) return 1;
	struct layer_store_fsck_report rep;
	memset(&rep, 0, sizeof rep);
	int store_err = layer_store_fsck(store, &rep);
	uint64_t store_errors = rep.errors;
	if (store_err && !store_errors) store_errors = 1; /* an operational failure counts too */

	struct fsck_ctx ctx = { .store = store };
	if (g->json) ctx.arr = json_object_new_array();
	int err = layer_store_container_foreach(store, fsck_container, &ctx);
	if (err) ctx.container_errors++;
	layer_store_close(store);

	uint64_t total = store_errors + ctx.container_errors;
	if (g->json) {
		struct json_object *o = json_object_new_object();
		json_object_object_add(o, "clean", json_object_new_boolean(total == 0));
		json_object_object_add(o, "layers_checked", json_object_new_int64((int64_t)rep.layers_checked));
		json_object_object_add(o, "images_checked", json_object_new_int64((int64_t)rep.images_checked));
		json_object_object_add(o, "containers_checked", json_object_new_int64((int64_t)ctx.containers));
		json_object_object_add(o, "containers_in_use", json_object_new_int64((int64_t)ctx.busy));
		json_object_object_add(o, "store_errors", json_object_new_int64((int64_t)store_errors));
		json_object_object_add(o, "container_errors", json_object_new_int64((int64_t)ctx.container_errors));
		json_object_object_add(o, "containers", ctx.arr);
		cli_json_print(o);
	} else if (!g->quiet || total) {
		printf("checked %llu layers, %llu images, %llu containers (%llu blocks%s): %s\n",
		       (unsigned long long)rep.layers_checked, (unsigned long long)rep.images_checked,
		       (unsigned long long)ctx.containers, (unsigned long long)ctx.blocks,
		       ctx.busy ? ", some in use and skipped" : "",
		       total ? "ERRORS FOUND" : "clean");
		if (total) printf("%llu errors (details above on stderr)\n", (unsigned long long)total);
	}
	return total ? 1 : 0;
}

CLI_COMMAND(fsck, "fsck", "check every layer, record and container", fsck_usage, cmd_fsck)
