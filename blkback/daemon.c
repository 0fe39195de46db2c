/* The backend daemon: watches its backend type in xenstore and runs every device in a forked
 * process of its own (blkback_device_serve), so a device that crashes takes no other with it.
 *
 * Invariants: a device is started only once its backend directory has a `state` node (the
 * toolstack writes it last); at most one process serves a device path; a process that dies
 * abnormally while its directory still exists is restarted (at most BLKBACK_DEVICE_RESTARTS_MAX
 * times); one that exits normally is not restarted until its directory disappears and comes
 * back; the daemon itself touches no device state, so its own restart re-serves everything. */
#include "blkback/blkback.h"
#include "blkback/xenif.h"
#include "common/limits.h"
#include "common/log.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

struct child {
	char path[256];
	pid_t pid;          /* 0 when not running */
	unsigned restarts;
	bool done;          /* exited normally or gave up: not restarted while the dir exists */
	bool seen;          /* scan marker */
};

struct daemon {
	const char *store_root;
	const struct blkback_options *opts;
	struct xenif *x;
	struct xenif_xs *xs;
	struct child children[BLKBACK_DEVICES_MAX];
	sigset_t oldmask;
};

static void start_child(struct daemon *dm, struct child *c)
{
	pid_t pid = fork();
	if (pid < 0) {
		log_warn("blkback: fork for %s: %s", c->path, strerror(errno));
		return;
	}
	if (pid == 0) {
		close(xenif_xs_fd(dm->xs)); /* the parent's connection is not ours */
		sigprocmask(SIG_SETMASK, &dm->oldmask, NULL);
		signal(SIGTERM, SIG_DFL);
		struct blkback_options o = *dm->opts;
		if (strstr(c->path, "/backend/vbd/")) o.type = "vbd";
		int r = blkback_device_serve(dm->store_root, c->path, &o);
		exit(r ? 1 : 0); /* not _exit: under ASan the leak check runs at exit */
	}
	c->pid = pid;
	log_info("blkback: serving %s in process %d", c->path, (int)pid);
}

static void scan_type(struct daemon *dm, const char *type)
{
	char base[128];
	snprintf(base, sizeof(base), "/local/domain/%u/backend/%s", xenif_domid(dm->x), type);
	char **doms;
	unsigned nd;
	if (xenif_xs_directory(dm->xs, 0, base, &doms, &nd)) return;
	for (unsigned i = 0; i < nd && i < BLKBACK_DEVICES_MAX; i++) {
		char dpath[256];
		snprintf(dpath, sizeof(dpath), "%s/%s", base, doms[i]);
		char **devs;
		unsigned nv;
		if (xenif_xs_directory(dm->xs, 0, dpath, &devs, &nv)) continue;
		for (unsigned k = 0; k < nv && k < BLKBACK_DEVICES_MAX; k++) {
			char path[256], sp[300];
			if ((size_t)snprintf(path, sizeof(path), "%s/%s", dpath, devs[k]) >= sizeof(path)) continue;
			snprintf(sp, sizeof(sp), "%s/state", path);
			char *v;
			if (xenif_xs_read(dm->xs, 0, sp, &v, NULL)) continue; /* not complete yet */
			free(v);
			struct child *c = NULL, *free_slot = NULL;
			for (unsigned j = 0; j < BLKBACK_DEVICES_MAX; j++) {
				if (dm->children[j].path[0] && !strcmp(dm->children[j].path, path)) c = &dm->children[j];
				else if (!dm->children[j].path[0] && !free_slot) free_slot = &dm->children[j];
			}
			if (c) {
				c->seen = true;
				continue;
			}
			if (!free_slot) {
				log_warn("blkback: too many devices, not serving %s", path);
				continue;
			}
			memset(free_slot, 0, sizeof(*free_slot));
			strcpy(free_slot->path, path);
			free_slot->seen = true;
			start_child(dm, free_slot);
		}
		free(devs);
	}
	free(doms);
}

static void scan(struct daemon *dm)
{
	for (unsigned j = 0; j < BLKBACK_DEVICES_MAX; j++) dm->children[j].seen = false;
	scan_type(dm, dm->opts->type);
	if (dm->opts->serve_vbd && strcmp(dm->opts->type, "vbd")) scan_type(dm, "vbd");
	/* Forget finished devices whose directory is gone. */
	for (unsigned j = 0; j < BLKBACK_DEVICES_MAX; j++) {
		struct child *c = &dm->children[j];
		if (c->path[0] && !c->seen && c->pid == 0) c->path[0] = '\0';
	}
}

static void scan(struct daemon *dm);

/* Whether a watch event at path can start or end a device: anything at or above a device
 * directory, or its state node.  The devices' own writes below their directories (statistics,
 * features, the handshake) fire the same watch many times a second and change nothing here. */
static bool event_may_change_devices(const struct daemon *dm, const char *path)
{
	char base[64];
	int n = snprintf(base, sizeof(base), "/local/domain/%u/backend/", xenif_domid(dm->x));
	if (strncmp(path, base, (size_t)n)) return true;
	const char *rest = path + n; /* TYPE/DOMID/VDEV/KEY... */
	for (int depth = 0; depth < 3; depth++) {
		rest = strchr(rest, '/');
		if (!rest) return true;
		rest++;
	}
	return !strcmp(rest, "state");
}

static void reap(struct daemon *dm)
{
	int st;
	pid_t pid;
	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		for (unsigned j = 0; j < BLKBACK_DEVICES_MAX; j++) {
			struct child *c = &dm->children[j];
			if (c->pid != pid) continue;
			c->pid = 0;
			bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
			char sp[300], *v;
			snprintf(sp, sizeof(sp), "%s/state", c->path);
			bool exists = xenif_xs_read(dm->xs, 0, sp, &v, NULL) == 0;
			if (exists) free(v);
			if (ok || !exists) {
				/* Done: forget it; a directory that exists (again) is a new attach. */
				c->path[0] = '\0';
				if (exists) scan(dm);
				break;
			}
			if (WIFSIGNALED(st)) log_warn("blkback: device process for %s killed by signal %d", c->path, WTERMSIG(st));
			else log_warn("blkback: device process for %s exited with %d", c->path, WEXITSTATUS(st));
			if (exists && c->restarts < BLKBACK_DEVICE_RESTARTS_MAX) {
				c->restarts++;
				start_child(dm, c);
			} else {
				c->done = true;
			}
			break;
		}
	}
}

int blkback_serve(const char *store_root, const struct blkback_options *opts)
{
	struct daemon *dm = calloc(1, sizeof(*dm));
	if (!dm) return -ENOMEM;
	dm->store_root = store_root;
	dm->opts = opts;
	int r, sfd = -1;
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigprocmask(SIG_BLOCK, &mask, &dm->oldmask);
	if ((r = xenif_open(&dm->x)) || (r = xenif_xs_open(dm->x, &dm->xs))) goto out;
	sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sfd < 0) {
		r = -errno;
		goto out;
	}
	char w[128];
	snprintf(w, sizeof(w), "/local/domain/%u/backend/%s", xenif_domid(dm->x), opts->type);
	if ((r = xenif_xs_watch(dm->xs, w, "type"))) goto out;
	if (opts->serve_vbd) {
		snprintf(w, sizeof(w), "/local/domain/%u/backend/vbd", xenif_domid(dm->x));
		if ((r = xenif_xs_watch(dm->xs, w, "vbd"))) goto out;
	}
	log_info("blkback: serving backend type %s%s", opts->type, opts->serve_vbd ? " and vbd" : "");
	bool stop = false;
	while (!stop) {
		char *p, *t;
		bool any = false;
		while ((r = xenif_xs_read_watch(dm->xs, &p, &t)) == 0) {
			if (event_may_change_devices(dm, p)) any = true;
			free(p);
			free(t);
		}
		if (r != -EAGAIN) {
			log_error(r, "blkback: xenstore connection lost");
			break;
		}
		r = 0;
		if (any) {
			scan(dm);
			continue; /* events that arrived during the scan are queued in memory, not on the fd */
		}
		struct pollfd pfd[2] = { { xenif_xs_fd(dm->xs), POLLIN, 0 }, { sfd, POLLIN, 0 } };
		if (poll(pfd, 2, -1) < 0 && errno != EINTR) {
			r = -errno;
			break;
		}
		struct signalfd_siginfo si;
		while (read(sfd, &si, sizeof(si)) == sizeof(si)) {
			if (si.ssi_signo == SIGCHLD) reap(dm);
			else stop = true;
		}
	}
out:
	/* Stop every device: each closes its rings and exits. */
	for (unsigned j = 0; j < BLKBACK_DEVICES_MAX; j++)
		if (dm->children[j].pid > 0) kill(dm->children[j].pid, SIGTERM);
	for (unsigned j = 0; j < BLKBACK_DEVICES_MAX; j++)
		if (dm->children[j].pid > 0) waitpid(dm->children[j].pid, NULL, 0);
	if (sfd >= 0) close(sfd);
	xenif_xs_close(dm->xs);
	if (dm->x) xenif_close(dm->x);
	sigprocmask(SIG_SETMASK, &dm->oldmask, NULL);
	free(dm);
	return r;
}
