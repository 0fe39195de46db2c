/* `ociblk xen-backend` (the dom0 blkif backend daemon), `ociblk xen-attach` / `xen-detach` (the
 * toolstack's part of attaching a disk to a guest) and `ociblk xen-sim` (the simulated Xen's
 * daemon, for tests and demos without a hypervisor).  Thin: parse flags, call blkback/. */
#include "blkback/blkback.h"
#include "blkback/xenif.h"
#include "cli/cli.h"
#include "common/limits.h"
#include "common/log.h"
#include "layer-store/layer_store.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char backend_usage[] =
	"usage: ociblk xen-backend [--type NAME] [--vbd] [--max-queues N] [--max-ring-page-order N]\n"
	"                          [--max-indirect-segments N] [--no-persistent] [--grant-map] [--no-discard]\n"
	"\n"
	"Serves Xen guests' virtual disks from the store: watches /local/domain/0/backend/NAME (default\n"
	"\"ociblk\") and serves each device there in a process of its own.  `params` names a container\n"
	"(read-write unless mode is r) or an image (read-only).  With $OCIBLK_XEN_SIM set, talks to the\n"
	"simulated Xen at that socket instead of the hypervisor.\n"
	"  --vbd                      also serve backend/vbd (xl disks with backendtype=phy)\n"
	"  --max-queues N             multi-queue-max-queues (1..4, default 4)\n"
	"  --max-ring-page-order N    max-ring-page-order (0..4, default 4)\n"
	"  --max-indirect-segments N  feature-max-indirect-segments (0..256, default 32; 0 disables)\n"
	"  --no-persistent            do not offer feature-persistent\n"
	"  --grant-map                move data by mapping grants (default: grant copy)\n"
	"  --no-discard               do not offer feature-discard\n";

static const char attach_usage[] =
	"usage: ociblk xen-attach DOMID VDEV CONTAINER|IMAGE [--ro] [--type NAME]\n"
	"\n"
	"Writes the backend and frontend xenstore nodes that give domain DOMID the disk VDEV (xvda,\n"
	"xvdb... or a number) served by `ociblk xen-backend`.  A container is attached read-write unless\n"
	"--ro; an image is always read-only.  Attach to a paused guest, then unpause it.\n";

static const char detach_usage[] =
	"usage: ociblk xen-detach DOMID VDEV [--type NAME] [--timeout MS]\n"
	"\n"
	"Asks the backend to close the disk (online=0, state=5), waits up to MS milliseconds (default\n"
	"10000) for it to reach Closed, then removes the backend and frontend nodes.\n";

static const char sim_usage[] =
	"usage: ociblk xen-sim SOCKET\n"
	"\n"
	"Runs the simulated Xen (xenstore, grant tables, event channels) on the unix socket SOCKET.\n"
	"Point the backend and test frontends at it with OCIBLK_XEN_SIM=SOCKET.\n";

static int parse_uint(const char *s, unsigned max, unsigned *out)
{
	char *e;
	errno = 0;
	unsigned long v = strtoul(s, &e, 10);
	if (errno || e == s || *e || v > max || s[0] == '-') return -EINVAL;
	*out = (unsigned)v;
	return 0;
}

static int cmd_backend(int argc, char **argv, const struct cli_globals *g)
{
	struct blkback_options o;
	blkback_options_default(&o);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		bool has = i + 1 < argc;
		if (!strcmp(a, "--type") && has) o.type = argv[++i];
		else if (!strcmp(a, "--vbd")) o.serve_vbd = true;
		else if (!strcmp(a, "--max-queues") && has) {
			if (parse_uint(argv[++i], BLKBACK_QUEUES_MAX, &o.max_queues) || o.max_queues == 0)
				return cli_usage_error(backend_usage, "xen-backend: bad --max-queues");
		} else if (!strcmp(a, "--max-ring-page-order") && has) {
			if (parse_uint(argv[++i], BLKBACK_RING_PAGE_ORDER_MAX, &o.max_ring_page_order))
				return cli_usage_error(backend_usage, "xen-backend: bad --max-ring-page-order");
		} else if (!strcmp(a, "--max-indirect-segments") && has) {
			if (parse_uint(argv[++i], BLKBACK_INDIRECT_SEGS_MAX, &o.max_indirect_segs))
				return cli_usage_error(backend_usage, "xen-backend: bad --max-indirect-segments");
		} else if (!strcmp(a, "--no-persistent")) o.persistent = false;
		else if (!strcmp(a, "--grant-map")) o.grant_map = true;
		else if (!strcmp(a, "--no-discard")) o.discard = false;
		else return cli_usage_error(backend_usage, "xen-backend: unknown argument '%s'", a);
	}
	if (!o.type[0] || strchr(o.type, '/')) return cli_usage_error(backend_usage, "xen-backend: bad --type");
	return blkback_serve(g->root, &o) ? 1 : 0;
}

static int cmd_attach(int argc, char **argv, const struct cli_globals *g)
{
	const char *pos[3];
	int np = 0;
	bool ro = false;
	const char *type = BLKBACK_TYPE_DEFAULT;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--ro")) ro = true;
		else if (!strcmp(argv[i], "--type") && i + 1 < argc) type = argv[++i];
		else if (argv[i][0] == '-') return cli_usage_error(attach_usage, "xen-attach: unknown option '%s'", argv[i]);
		else if (np < 3) pos[np++] = argv[i];
		else return cli_usage_error(attach_usage, "xen-attach: too many arguments");
	}
	if (np != 3) return cli_usage_error(attach_usage, "xen-attach: expected DOMID VDEV CONTAINER|IMAGE");
	unsigned domid;
	uint32_t vdev;
	if (parse_uint(pos[0], 0x7FEF, &domid) || domid == 0) return cli_usage_error(attach_usage, "xen-attach: bad DOMID");
	if (blkback_vdev_parse(pos[1], &vdev)) return cli_usage_error(attach_usage, "xen-attach: bad VDEV '%s'", pos[1]);
	struct layer_store *store;
	if (cli_store_open(g, false, &store)) return 1;
	struct container_record crec;
	struct image_record irec;
	memset(&irec, 0, sizeof(irec));
	int r = layer_store_container_get(store, pos[2], &crec);
	if (r == -ENOENT) {
		r = layer_store_image_get(store, pos[2], &irec);
		image_record_clear(&irec);
		ro = true;
	}
	layer_store_close(store);
	if (r == -ENOENT) {
		log_error(r, "xen-attach: no container or image named '%s'", pos[2]);
		return 1;
	}
	if (r) return 1;
	r = blkback_attach(type, (uint16_t)domid, vdev, pos[2], ro);
	if (!r && !g->quiet) printf("/local/domain/0/backend/%s/%u/%u\n", type, domid, vdev);
	return r ? 1 : 0;
}

static int cmd_detach(int argc, char **argv, const struct cli_globals *g)
{
	const char *pos[2];
	int np = 0;
	const char *type = BLKBACK_TYPE_DEFAULT;
	unsigned timeout = 10000;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--type") && i + 1 < argc) type = argv[++i];
		else if (!strcmp(argv[i], "--timeout") && i + 1 < argc) {
			if (parse_uint(argv[++i], 3600000, &timeout)) return cli_usage_error(detach_usage, "xen-detach: bad --timeout");
		} else if (argv[i][0] == '-') return cli_usage_error(detach_usage, "xen-detach: unknown option '%s'", argv[i]);
		else if (np < 2) pos[np++] = argv[i];
		else return cli_usage_error(detach_usage, "xen-detach: too many arguments");
	}
	if (np != 2) return cli_usage_error(detach_usage, "xen-detach: expected DOMID VDEV");
	unsigned domid;
	uint32_t vdev;
	if (parse_uint(pos[0], 0x7FEF, &domid) || domid == 0) return cli_usage_error(detach_usage, "xen-detach: bad DOMID");
	if (blkback_vdev_parse(pos[1], &vdev)) return cli_usage_error(detach_usage, "xen-detach: bad VDEV '%s'", pos[1]);
	(void)g;
	return blkback_detach(type, (uint16_t)domid, vdev, timeout) ? 1 : 0;
}

static int cmd_sim(int argc, char **argv, const struct cli_globals *g)
{
	(void)g;
	if (argc != 2 || argv[1][0] == '-') return cli_usage_error(sim_usage, "xen-sim: expected SOCKET");
	return xensim_server_run(argv[1], -1) ? 1 : 0;
}

CLI_COMMAND(xen_backend, "xen-backend", "serve Xen guests' disks (blkif backend daemon)", backend_usage, cmd_backend)
CLI_COMMAND(xen_attach, "xen-attach", "attach a container or image to a Xen guest", attach_usage, cmd_attach)
CLI_COMMAND(xen_detach, "xen-detach", "detach a disk from a Xen guest", detach_usage, cmd_detach)
CLI_COMMAND(xen_sim, "xen-sim", "run the simulated Xen (tests, demos)", sim_usage, cmd_sim)
