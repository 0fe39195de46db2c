/* The simulated Xen (blkback/xenif.h, sim implementation): xenstore semantics (read/write/dir/rm,
 * permissions, watches, transactions, quotas, garbage), grants (map, copy, read-only, wrong
 * domain, bad refs) and event channels between two processes, and domain destruction. */
#include "blkback/xenif.h"
#include "common/log.h"
#include "tests/lib/tap.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char sock[512];
static pid_t daemon_pid;

static void start_daemon(void)
{
	snprintf(sock, sizeof(sock), "%s/xs.sock", tap_tmpdir());
	int p[2];
	if (pipe(p)) exit(1);
	daemon_pid = fork();
	if (daemon_pid == 0) {
		close(p[0]);
		_exit(xensim_server_run(sock, p[1]) ? 1 : 0);
	}
	close(p[1]);
	char c;
	if (read(p[0], &c, 1) != 1) exit(1);
	close(p[0]);
}

static int xs_readstr(struct xenif_xs *xs, const char *path, char *out, size_t n)
{
	char *v = NULL;
	int r = xenif_xs_read(xs, 0, path, &v, NULL);
	if (r) return r;
	snprintf(out, n, "%s", v);
	free(v);
	return 0;
}

/* Drains watch events; returns 1 if one for path arrived within ~1 s. */
static int saw_event(struct xenif_xs *xs, const char *path, const char *token)
{
	for (int tries = 0; tries < 100; tries++) {
		char *p, *t;
		while (xenif_xs_read_watch(xs, &p, &t) == 0) {
			int hit = !strcmp(p, path) && !strcmp(t, token);
			free(p);
			free(t);
			if (hit) return 1;
		}
		struct pollfd pfd = { xenif_xs_fd(xs), POLLIN, 0 };
		poll(&pfd, 1, 10);
	}
	return 0;
}

static void drain(struct xenif_xs *xs)
{
	char *p, *t;
	usleep(20000);
	while (xenif_xs_read_watch(xs, &p, &t) == 0) {
		free(p);
		free(t);
	}
}

static void test_xenstore(void)
{
	struct xenif *x0, *x7;
	struct xenif_xs *d0, *d7;
	TAP_OK(xenif_open_sim(sock, 0, &x0) == 0 && xenif_open_sim(sock, 7, &x7) == 0, "open sim handles");
	TAP_OK(xenif_xs_open(x0, &d0) == 0 && xenif_xs_open(x7, &d7) == 0, "connect xenstore as dom0 and dom7");

	char buf[256];
	TAP_IS(xenif_xs_write(d0, 0, "/a/b/c", "hello", 5), 0, "write creates parents");
	TAP_OK(xs_readstr(d0, "/a/b/c", buf, sizeof(buf)) == 0 && !strcmp(buf, "hello"), "read back");
	TAP_IS(xs_readstr(d0, "/a/b/missing", buf, sizeof(buf)), -ENOENT, "missing node is ENOENT");
	xenif_xs_write(d0, 0, "/a/b/d", "", 0);
	char **names;
	unsigned n;
	TAP_OK(xenif_xs_directory(d0, 0, "/a/b", &names, &n) == 0 && n == 2 &&
		       ((!strcmp(names[0], "c") && !strcmp(names[1], "d")) || (!strcmp(names[0], "d") && !strcmp(names[1], "c"))),
	       "directory lists children");
	free(names);
	uint64_t u;
	xenif_xs_write(d0, 0, "/a/num", "4096", 4);
	TAP_OK(xenif_xs_read_uint(d0, 0, "/a/num", 1 << 20, &u) == 0 && u == 4096, "read_uint");
	xenif_xs_write(d0, 0, "/a/num", "12x", 3);
	TAP_IS(xenif_xs_read_uint(d0, 0, "/a/num", 1 << 20, &u), -EINVAL, "read_uint rejects garbage");
	TAP_IS(xenif_xs_rm(d0, 0, "/a/b"), 0, "rm subtree");
	TAP_IS(xs_readstr(d0, "/a/b/c", buf, sizeof(buf)), -ENOENT, "rm removed children");
	TAP_IS(xenif_xs_rm(d0, 0, "/a/b"), 0, "rm of a missing node is 0");

	/* garbage */
	TAP_IS(xenif_xs_write(d0, 0, "relative", "x", 1), -EINVAL, "relative path rejected");
	TAP_IS(xenif_xs_write(d0, 0, "/a//b", "x", 1), -EINVAL, "empty path component rejected");
	TAP_IS(xenif_xs_write(d0, 0, "/a/b\x01", "x", 1), -EINVAL, "control char in path rejected");
	char big[5000];
	memset(big, 'v', sizeof(big));
	TAP_IS(xenif_xs_write(d0, 0, "/a/big", big, sizeof(big)), -E2BIG, "value above 4096 bytes rejected");

	/* permissions */
	xenif_xs_write(d0, 0, "/local/domain/0/backend/t/7/0/params", "secret", 6);
	TAP_IS(xs_readstr(d7, "/local/domain/0/backend/t/7/0/params", buf, sizeof(buf)), -EACCES,
	       "domU cannot read dom0's node");
	const char *p1[] = { "n0", "r7" };
	TAP_IS(xenif_xs_set_perms(d0, 0, "/local/domain/0/backend/t/7/0/params", p1, 2), 0, "dom0 sets perms n0,r7");
	TAP_OK(xs_readstr(d7, "/local/domain/0/backend/t/7/0/params", buf, sizeof(buf)) == 0 && !strcmp(buf, "secret"),
	       "domU reads with r7");
	TAP_IS(xenif_xs_write(d7, 0, "/local/domain/0/backend/t/7/0/params", "x", 1), -EACCES, "domU cannot write r7 node");
	const char *p2[] = { "b7" };
	TAP_IS(xenif_xs_set_perms(d7, 0, "/local/domain/0/backend/t/7/0/params", p2, 1), -EACCES,
	       "domU cannot change perms of a node it does not own");
	xenif_xs_mkdir(d0, 0, "/local/domain/7");
	const char *p3[] = { "n7", "r0" };
	xenif_xs_set_perms(d0, 0, "/local/domain/7", p3, 2);
	TAP_IS(xenif_xs_write(d7, 0, "/local/domain/7/device/vbd/51712/state", "1", 1), 0, "domU writes in its own tree");
	TAP_IS(xenif_xs_write(d7, 0, "/local/domain/8/x", "1", 1), -EACCES, "domU cannot create outside its tree");
	const char *bad[] = { "q0" };
	TAP_IS(xenif_xs_set_perms(d0, 0, "/local/domain/7", bad, 1), -EINVAL, "bad perm string rejected");

	/* quota */
	int r = 0, i;
	for (i = 0; i < 1100 && r == 0; i++) {
		char path[64];
		snprintf(path, sizeof(path), "/local/domain/7/q/%d", i);
		r = xenif_xs_write(d7, 0, path, "1", 1);
	}
	TAP_OK(r == -EDQUOT && i < 1100, "domU node quota enforced (stopped at %d)", i);
	xenif_xs_rm(d0, 0, "/local/domain/7/q");

	/* watches */
	TAP_IS(xenif_xs_watch(d0, "/w/x", "tok"), 0, "watch");
	TAP_OK(saw_event(d0, "/w/x", "tok"), "watch fires once on registration");
	xenif_xs_write(d0, 0, "/w/x/y", "1", 1);
	TAP_OK(saw_event(d0, "/w/x/y", "tok"), "write below the watch fires");
	xenif_xs_rm(d0, 0, "/w");
	TAP_OK(saw_event(d0, "/w/x", "tok"), "removing a parent fires the watch");
	xenif_xs_write(d0, 0, "/w/other", "1", 1);
	drain(d0);
	TAP_IS(xenif_xs_unwatch(d0, "/w/x", "tok"), 0, "unwatch");
	xenif_xs_write(d0, 0, "/w/x", "1", 1);
	TAP_OK(!saw_event(d0, "/w/x", "tok"), "no event after unwatch");
	/* a domU does not hear about nodes it cannot read */
	xenif_xs_watch(d7, "/hidden", "h");
	saw_event(d7, "/hidden", "h");
	xenif_xs_write(d0, 0, "/hidden/k", "1", 1);
	TAP_OK(!saw_event(d7, "/hidden/k", "h"), "watch event withheld from a domU without read permission");

	/* transactions */
	xenif_tx_t t;
	TAP_IS(xenif_xs_transaction_start(d0, &t), 0, "transaction start");
	xenif_xs_write(d0, t, "/tx/a", "1", 1);
	TAP_IS(xs_readstr(d0, "/tx/a", buf, sizeof(buf)), -ENOENT, "transaction writes invisible outside");
	char *v = NULL;
	TAP_OK(xenif_xs_read(d0, t, "/tx/a", &v, NULL) == 0 && !strcmp(v, "1"), "visible inside");
	free(v);
	TAP_IS(xenif_xs_transaction_end(d0, t, false), 0, "commit");
	TAP_OK(xs_readstr(d0, "/tx/a", buf, sizeof(buf)) == 0 && !strcmp(buf, "1"), "visible after commit");
	xenif_xs_transaction_start(d0, &t);
	xenif_xs_write(d0, t, "/tx/b", "1", 1);
	xenif_xs_write(d7, 0, "/local/domain/7/noise", "1", 1);
	TAP_IS(xenif_xs_transaction_end(d0, t, false), -EAGAIN, "conflicting commit is EAGAIN");
	TAP_IS(xs_readstr(d0, "/tx/b", buf, sizeof(buf)), -ENOENT, "conflicted transaction left nothing");
	xenif_xs_transaction_start(d0, &t);
	xenif_xs_write(d0, t, "/tx/c", "1", 1);
	xenif_xs_transaction_end(d0, t, true);
	TAP_IS(xs_readstr(d0, "/tx/c", buf, sizeof(buf)), -ENOENT, "aborted transaction left nothing");
	TAP_IS(xenif_xs_write(d0, 12345, "/tx/d", "1", 1), -ENOENT, "unknown transaction id rejected");

	xenif_xs_close(d0);
	xenif_xs_close(d7);
	xenif_close(x0);
	xenif_close(x7);
}

/* The guest side, in a child process: creates domain 9's memory, grants pages, an event
 * channel, reports them over a pipe, then echoes notifications and checks data. */
static int guest_child(int wr, int rd)
{
	struct xenif *x;
	struct xensim_guest *g;
	struct xenif_evt *e;
	if (xenif_open_sim(sock, 9, &x) || xensim_guest_create(x, 16, 64, &g) || xenif_evt_open(x, &e)) return 1;
	memset(xensim_guest_page(g, 3), 0xA5, 4096);
	int rw = xensim_guest_grant(g, 3, 0, false);
	int ro = xensim_guest_grant(g, 4, 0, true);
	int other = xensim_guest_grant(g, 5, 1, false);
	uint32_t port;
	if (xenif_evt_alloc_unbound(e, 0, &port)) return 2;
	uint32_t msg[4] = { (uint32_t)rw, (uint32_t)ro, (uint32_t)other, port };
	if (write(wr, msg, sizeof(msg)) != sizeof(msg)) return 3;
	/* wait for the backend's notification */
	struct pollfd pfd = { xenif_evt_fd(e), POLLIN, 0 };
	if (poll(&pfd, 1, 5000) != 1) return 4;
	if (xenif_evt_pending(e) != (int)port) return 5;
	/* the backend wrote 0x5A into page 3 through its mapping */
	if (((uint8_t *)xensim_guest_page(g, 3))[100] != 0x5A) return 6;
	if (xenif_evt_notify(e, port)) return 7;
	char c;
	if (read(rd, &c, 1) != 1) return 8; /* wait until told to die */
	xenif_evt_close(e);
	xensim_guest_destroy(g);
	xenif_close(x);
	return 0;
}

static void test_grants_evtchn(void)
{
	int a[2], b[2];
	if (pipe(a) || pipe(b)) exit(1);
	struct xenif *x0;
	struct xenif_xs *xs;
	xenif_open_sim(sock, 0, &x0);
	xenif_xs_open(x0, &xs);
	xenif_xs_watch(xs, "/local/domain/9", "dom9");
	drain(xs);
	pid_t pid = fork();
	if (pid == 0) _exit(guest_child(a[1], b[0]));
	close(a[1]);
	close(b[0]);
	uint32_t msg[4];
	TAP_OK(read(a[0], msg, sizeof(msg)) == sizeof(msg), "guest process reported grants and port");
	TAP_OK(saw_event(xs, "/local/domain/9", "dom9"), "guest creation made /local/domain/9");

	struct xenif_gnt *g;
	TAP_IS(xenif_gnt_open(x0, &g), 0, "gnt open");
	void *addr = NULL;
	TAP_IS(xenif_gnt_map(g, 9, &msg[0], 1, true, &addr), 0, "map a writable grant");
	TAP_OK(addr && ((uint8_t *)addr)[0] == 0xA5, "mapping shows the guest's page");
	if (addr) memset(addr, 0x5A, 4096);
	TAP_IS(xenif_gnt_map(g, 9, &msg[1], 1, true, &addr), -EACCES, "writable map of a read-only grant refused");
	void *ro = NULL;
	TAP_IS(xenif_gnt_map(g, 9, &msg[1], 1, false, &ro), 0, "read-only map of a read-only grant");
	if (ro) xenif_gnt_unmap(g, ro, 1);
	TAP_IS(xenif_gnt_map(g, 9, &msg[2], 1, false, &ro), -EPERM, "grant for another domain refused");
	uint32_t badref = 63, hugeref = 1u << 30;
	TAP_IS(xenif_gnt_map(g, 9, &badref, 1, false, &ro), -EINVAL, "unused grant entry refused");
	TAP_IS(xenif_gnt_map(g, 9, &hugeref, 1, false, &ro), -EINVAL, "grant ref beyond the table refused");
	TAP_IS(xenif_gnt_map(g, 77, &msg[0], 1, false, &ro), -ESRCH, "unknown domain refused");

	uint8_t local[512];
	memset(local, 0x11, sizeof(local));
	struct xenif_copy_seg segs[3] = {
		{ .gref = msg[0], .offset = 512, .len = 512, .local = local, .to_guest = true },
		{ .gref = msg[1], .offset = 0, .len = 512, .local = local, .to_guest = true },
		{ .gref = msg[0], .offset = 4000, .len = 512, .local = local, .to_guest = false },
	};
	TAP_IS(xenif_gnt_copy(g, 9, segs, 3), -EIO, "copy batch with bad segments fails");
	TAP_OK(segs[0].status == 0 && segs[1].status == -EACCES && segs[2].status == -EINVAL,
	       "per-segment status: ok, read-only, crosses page (%d %d %d)", segs[0].status, segs[1].status, segs[2].status);
	TAP_OK(addr && ((uint8_t *)addr)[512] == 0x11 && ((uint8_t *)addr)[1024] == 0x5A, "copy to guest landed in the page");
	uint8_t back[512];
	struct xenif_copy_seg rs = { .gref = msg[0], .offset = 512, .len = 512, .local = back, .to_guest = false };
	TAP_OK(xenif_gnt_copy(g, 9, &rs, 1) == 0 && back[0] == 0x11 && back[511] == 0x11, "copy from guest");
	if (addr) memset((uint8_t *)addr + 512, 0x5A, 512);

	struct xenif_evt *e;
	uint32_t lport;
	TAP_IS(xenif_evt_open(x0, &e), 0, "evtchn open");
	TAP_IS(xenif_evt_bind(e, 9, msg[3], &lport), 0, "bind interdomain");
	struct xenif_evt *e2;
	uint32_t lport2;
	xenif_evt_open(x0, &e2);
	TAP_IS(xenif_evt_bind(e2, 9, msg[3], &lport2), -EBUSY, "second bind of the same port refused");
	TAP_IS(xenif_evt_bind(e2, 9, 99999, &lport2), -EINVAL, "bind of an unknown port refused");
	xenif_evt_close(e2);
	TAP_IS(xenif_evt_pending(e), -EAGAIN, "nothing pending yet");
	TAP_IS(xenif_evt_notify(e, lport), 0, "notify guest");
	struct pollfd pfd = { xenif_evt_fd(e), POLLIN, 0 };
	TAP_OK(poll(&pfd, 1, 5000) == 1 && xenif_evt_pending(e) == (int)lport, "guest notified us back (it saw our data)");
	TAP_IS(xenif_evt_pending(e), -EAGAIN, "pending cleared");

	/* guest dies: domain destroyed */
	(void)!write(b[1], "x", 1);
	int st;
	waitpid(pid, &st, 0);
	TAP_OK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "guest process checks passed (status %d)", WEXITSTATUS(st));
	char buf[16];
	int gone = 0;
	for (int i = 0; i < 100 && !gone; i++) {
		gone = xs_readstr(xs, "/local/domain/9", buf, sizeof(buf)) == -ENOENT;
		if (!gone) usleep(10000);
	}
	TAP_OK(gone, "destroyed domain's tree removed");
	TAP_OK(saw_event(xs, "/local/domain/9", "dom9"), "watch fired on destruction");
	TAP_OK(addr && ((uint8_t *)addr)[0] == 0x5A, "existing mapping stays valid after destruction");
	if (addr) xenif_gnt_unmap(g, addr, 1);
	struct xenif_gnt *g2;
	xenif_gnt_open(x0, &g2);
	TAP_IS(xenif_gnt_map(g2, 9, &msg[0], 1, false, &ro), -ESRCH, "new maps of a destroyed domain refused");
	xenif_gnt_close(g2);
	xenif_gnt_close(g);
	xenif_evt_close(e);
	xenif_xs_close(xs);
	xenif_close(x0);
}

int main(void)
{
	log_set_quiet(1);
	start_daemon();
	test_xenstore();
	test_grants_evtchn();
	TAP_IS(xensim_shutdown(sock), 0, "shutdown daemon");
	int st;
	waitpid(daemon_pid, &st, 0);
	TAP_OK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "daemon exited cleanly");
	return tap_done();
}
