/* The toolstack side of a device: writing and removing the xenstore nodes that attach a virtual
 * disk to a guest, as XAPI/tapdisk or libxl do it (see ../shared/xen-e2e/NOTES.md), so a runtime
 * can attach an ociblk disk to a paused guest without xl's disk syntax.
 *
 * Invariants: the backend directory is readable but not writable by the guest (n0,r<D>), the
 * frontend directory belongs to the guest (n<D>,r0); everything is written in one transaction
 * and the backend's state=1 is its last key, so a watching backend never sees half a device. */
#include "blkback/blkback.h"
#include "blkback/xenif.h"
#include "common/log.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int blkback_vdev_parse(const char *s, uint32_t *vdev)
{
	if (!strncmp(s, "xvd", 3) && s[3] >= 'a' && s[3] <= 'z' && s[4] == '\0') {
		*vdev = (202u << 8) | (uint32_t)(s[3] - 'a') << 4;
		return 0;
	}
	char *e;
	errno = 0;
	unsigned long v = strtoul(s, &e, 10);
	if (errno || e == s || *e || v == 0 || v > 0xFFFFFFFul) return -EINVAL;
	*vdev = (uint32_t)v;
	return 0;
}

static void vdev_name(uint32_t vdev, char *out, size_t n)
{
	if ((vdev >> 8) == 202 && (vdev & 0xF) == 0 && ((vdev & 0xFF) >> 4) < 16)
		snprintf(out, n, "xvd%c", 'a' + (int)((vdev & 0xFF) >> 4));
	else
		snprintf(out, n, "%u", vdev);
}

static int wr(struct xenif_xs *xs, xenif_tx_t t, const char *dir, const char *key, const char *val)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", dir, key);
	return xenif_xs_write(xs, t, path, val, strlen(val));
}

static int attach_tx(struct xenif_xs *xs, xenif_tx_t t, const char *type, uint16_t domid, uint16_t bdom, uint32_t vdev,
		     const char *be, const char *fe, const char *params, bool readonly)
{
	char *v;
	int r = xenif_xs_read(xs, t, be, &v, NULL);
	if (r == 0) {
		free(v);
		return -EEXIST;
	}
	char perm_be0[16], perm_be1[16], perm_fe0[16], perm_fe1[16], num[32], name[16];
	snprintf(perm_be0, sizeof(perm_be0), "n%u", bdom);
	snprintf(perm_be1, sizeof(perm_be1), "r%u", domid);
	snprintf(perm_fe0, sizeof(perm_fe0), "n%u", domid);
	snprintf(perm_fe1, sizeof(perm_fe1), "r%u", bdom);
	const char *pbe[] = { perm_be0, perm_be1 }, *pfe[] = { perm_fe0, perm_fe1 };
	vdev_name(vdev, name, sizeof(name));
	if ((r = xenif_xs_mkdir(xs, t, be)) || (r = xenif_xs_set_perms(xs, t, be, pbe, 2))) return r;
	snprintf(num, sizeof(num), "%u", domid);
	if ((r = wr(xs, t, be, "frontend", fe)) || (r = wr(xs, t, be, "frontend-id", num)) ||
	    (r = wr(xs, t, be, "online", "1")) || (r = wr(xs, t, be, "params", params)) ||
	    (r = wr(xs, t, be, "mode", readonly ? "r" : "w")) || (r = wr(xs, t, be, "type", type)) ||
	    (r = wr(xs, t, be, "dev", name)) || (r = wr(xs, t, be, "device-type", "disk")) ||
	    (r = wr(xs, t, be, "removable", "0")) || (r = wr(xs, t, be, "bootable", "1")) ||
	    (r = wr(xs, t, be, "discard-enable", readonly ? "0" : "1")))
		return r;
	if ((r = xenif_xs_mkdir(xs, t, fe)) || (r = xenif_xs_set_perms(xs, t, fe, pfe, 2))) return r;
	snprintf(num, sizeof(num), "%u", bdom);
	if ((r = wr(xs, t, fe, "backend", be)) || (r = wr(xs, t, fe, "backend-id", num))) return r;
	snprintf(num, sizeof(num), "%u", vdev);
	if ((r = wr(xs, t, fe, "virtual-device", num)) || (r = wr(xs, t, fe, "device-type", "disk")) ||
	    (r = wr(xs, t, fe, "state", "1")))
		return r;
	return wr(xs, t, be, "state", "1");
}

int blkback_attach(const char *type, uint16_t domid, uint32_t vdev, const char *params, bool readonly)
{
	if (!type) type = BLKBACK_TYPE_DEFAULT;
	if (domid == 0 || domid >= 0x7FF0) return log_error(-EINVAL, "xen attach: bad domain id %u", domid);
	struct xenif *x;
	struct xenif_xs *xs;
	int r = xenif_open(&x);
	if (r) return r;
	if ((r = xenif_xs_open(x, &xs))) {
		xenif_close(x);
		return r;
	}
	uint16_t bdom = xenif_domid(x);
	char be[256], fe[256];
	snprintf(be, sizeof(be), "/local/domain/%u/backend/%s/%u/%u", bdom, type, domid, vdev);
	snprintf(fe, sizeof(fe), "/local/domain/%u/device/vbd/%u", domid, vdev);
	for (int attempt = 0; attempt < 100; attempt++) {
		xenif_tx_t t;
		if ((r = xenif_xs_transaction_start(xs, &t))) break;
		r = attach_tx(xs, t, type, domid, bdom, vdev, be, fe, params, readonly);
		if (r) {
			xenif_xs_transaction_end(xs, t, true);
			break;
		}
		r = xenif_xs_transaction_end(xs, t, false);
		if (r != -EAGAIN) break;
	}
	if (r == -EEXIST) log_error(r, "xen attach: %s already exists", be);
	else if (r) log_error(r, "xen attach %s: %s", be, strerror(-r));
	xenif_xs_close(xs);
	xenif_close(x);
	return r;
}

int blkback_detach(const char *type, uint16_t domid, uint32_t vdev, unsigned timeout_ms)
{
	if (!type) type = BLKBACK_TYPE_DEFAULT;
	struct xenif *x;
	struct xenif_xs *xs;
	int r = xenif_open(&x);
	if (r) return r;
	if ((r = xenif_xs_open(x, &xs))) {
		xenif_close(x);
		return r;
	}
	char be[256], fe[256], path[300];
	snprintf(be, sizeof(be), "/local/domain/%u/backend/%s/%u/%u", xenif_domid(x), type, domid, vdev);
	snprintf(fe, sizeof(fe), "/local/domain/%u/device/vbd/%u", domid, vdev);
	char *v = NULL;
	snprintf(path, sizeof(path), "%s/state", be);
	r = xenif_xs_read(xs, 0, path, &v, NULL);
	free(v);
	if (r == -ENOENT) {
		r = log_error(-ENOENT, "xen detach: %s does not exist", be);
		goto out;
	}
	/* As libxl: online=0, state=5, then wait for the backend to reach Closed. */
	snprintf(path, sizeof(path), "%s/online", be);
	xenif_xs_write(xs, 0, path, "0", 1);
	snprintf(path, sizeof(path), "%s/state", be);
	xenif_xs_write(xs, 0, path, "5", 1);
	struct timespec t0, now;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		v = NULL;
		int rr = xenif_xs_read(xs, 0, path, &v, NULL);
		bool closed = rr == -ENOENT || (rr == 0 && !strcmp(v, "6"));
		free(v);
		if (closed) break;
		clock_gettime(CLOCK_MONOTONIC, &now);
		long ms = (now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000;
		if ((unsigned long)ms >= timeout_ms) {
			if (timeout_ms) log_warn("xen detach: backend %s did not close within %u ms, removing it", be, timeout_ms);
			break;
		}
		usleep(20000);
	}
	r = xenif_xs_rm_tidy(xs, be);
	int r2 = xenif_xs_rm(xs, 0, fe);
	if (!r) r = r2;
out:
	xenif_xs_close(xs);
	xenif_close(x);
	return r;
}
