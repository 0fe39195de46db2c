/* xenif: the hypervisor interface, real (libxenstore/libxengnttab/libxenevtchn) and simulated
 * (a client of blkback/xensim_server.c).  See xenif.h for the contract.
 *
 * Invariants of the sim client: each handle owns one SOCK_SEQPACKET connection; a call sends one
 * request and reads messages until its reply, queueing watch events met on the way (bounded);
 * grant entries are read from the guest's shared memory exactly once per use, as one 64-bit
 * load, and checked before the page is touched. */
#include "blkback/xenif.h"
#include "blkback/xensim_proto.h"
#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <xenevtchn.h>
#include <xengnttab.h>
#include <xenstore.h>
#include <xen/grant_table.h>

#define XS_EVENT_QUEUE_MAX 4096u
#define SIM_DOMAINS_CACHED 8
#define SIM_PORTS_MAX 64

struct xenif {
	bool sim;
	uint16_t domid;
	char sock[108];
};

/* ------------------------------------------------------------------ sim connection --------- */

struct sim_event {
	struct sim_event *next;
	char *path, *token;
};

struct sim_conn {
	int fd;
	struct sim_event *head, *tail;
	unsigned queued;
};

static int sim_connect(const struct xenif *x, struct sim_conn *c);

static void sim_queue_event(struct sim_conn *c, const char *p, uint32_t len)
{
	if (len == 0 || p[len - 1] != '\0') return;
	const char *path = p;
	size_t pl = strlen(path) + 1;
	if (pl >= len) return;
	const char *token = p + pl;
	if (c->queued >= XS_EVENT_QUEUE_MAX) {
		log_warn("xensim: watch event queue full, dropping event for %s", path);
		return;
	}
	struct sim_event *e = calloc(1, sizeof(*e));
	if (!e) return;
	e->path = strdup(path);
	e->token = strdup(token);
	if (!e->path || !e->token) {
		free(e->path);
		free(e->token);
		free(e);
		return;
	}
	if (c->tail) c->tail->next = e;
	else c->head = e;
	c->tail = e;
	c->queued++;
}

/* Receives one message; flags MSG_DONTWAIT for polling.  *reply_len and fds are filled. */
static int sim_recv(struct sim_conn *c, int flags, struct xsim_hdr *h, char *buf, int *fds, int *nfds)
{
	char cbuf[CMSG_SPACE(sizeof(int) * XSIM_FDS_MAX)];
	struct xsim_hdr hh;
	struct iovec iov[2] = { { &hh, sizeof(hh) }, { buf, XSIM_MSG_MAX } };
	struct msghdr m = { .msg_iov = iov, .msg_iovlen = 2, .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
	ssize_t n;
	do n = recvmsg(c->fd, &m, flags | MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0) return -errno;
	if (n == 0) return -ECONNRESET;
	*nfds = xsim_take_fds(&m, fds);
	if ((size_t)n < sizeof(hh) || hh.len != (size_t)n - sizeof(hh)) {
		for (int i = 0; i < *nfds; i++) close(fds[i]);
		return -EPROTO;
	}
	*h = hh;
	return 0;
}

/* One request/reply.  reply (XSIM_MSG_MAX bytes) may be NULL when no payload is expected. */
static int sim_call(struct sim_conn *c, uint32_t op, uint32_t tx, const void *p1, uint32_t l1, const void *p2,
		    uint32_t l2, const int *fds_in, unsigned nfds_in, char *reply, uint32_t *reply_len, int *fds_out,
		    int *nfds_out)
{
	int r = xsim_send(c->fd, op, tx, 0, p1, l1, p2, l2, fds_in, nfds_in);
	if (r) return r;
	char *buf = reply ? reply : malloc(XSIM_MSG_MAX);
	if (!buf) return -ENOMEM;
	for (;;) {
		struct xsim_hdr h;
		int fds[4], nfds = 0;
		r = sim_recv(c, 0, &h, buf, fds, &nfds);
		if (r) break;
		if (h.op == XSIM_EVENT) {
			sim_queue_event(c, buf, h.len);
			for (int i = 0; i < nfds; i++) close(fds[i]);
			continue;
		}
		r = h.err;
		if (reply_len) *reply_len = h.len;
		if (fds_out && r == 0) {
			memcpy(fds_out, fds, sizeof(int) * nfds);
			*nfds_out = nfds;
		} else {
			for (int i = 0; i < nfds; i++) close(fds[i]);
		}
		break;
	}
	if (!reply) free(buf);
	return r;
}

static int sim_connect(const struct xenif *x, struct sim_conn *c)
{
	memset(c, 0, sizeof(*c));
	c->fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (c->fd < 0) return log_error(-errno, "xensim: socket: %s", strerror(errno));
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	strcpy(a.sun_path, x->sock);
	if (connect(c->fd, (struct sockaddr *)&a, sizeof(a))) {
		int e = -errno;
		close(c->fd);
		c->fd = -1;
		return log_error(e, "xensim: connect %s: %s", x->sock, strerror(-e));
	}
	uint32_t d = x->domid;
	int r = sim_call(c, XSIM_HELLO, 0, &d, 4, NULL, 0, NULL, 0, NULL, NULL, NULL, NULL);
	if (r) {
		close(c->fd);
		c->fd = -1;
	}
	return r;
}

static void sim_disconnect(struct sim_conn *c)
{
	if (c->fd >= 0) close(c->fd);
	c->fd = -1;
	while (c->head) {
		struct sim_event *e = c->head;
		c->head = e->next;
		free(e->path);
		free(e->token);
		free(e);
	}
	c->tail = NULL;
	c->queued = 0;
}

/* ------------------------------------------------------------------ xenif ------------------ */

int xenif_open_sim(const char *socket_path, uint16_t domid, struct xenif **out)
{
	struct xenif *x = calloc(1, sizeof(*x));
	if (!x) return -ENOMEM;
	if (strlen(socket_path) >= sizeof(x->sock)) {
		free(x);
		return log_error(-ENAMETOOLONG, "xensim: socket path too long: %s", socket_path);
	}
	x->sim = true;
	x->domid = domid;
	strcpy(x->sock, socket_path);
	*out = x;
	return 0;
}

int xenif_open(struct xenif **out)
{
	const char *sim = getenv(XENIF_SIM_ENV);
	if (sim && *sim) {
		const char *d = getenv(XENIF_SIM_DOMID_ENV);
		unsigned long domid = d ? strtoul(d, NULL, 10) : 0;
		return xenif_open_sim(sim, (uint16_t)domid, out);
	}
	if (access("/dev/xen", F_OK) != 0)
		return log_error(-ENODEV, "xen: /dev/xen missing (not a Xen dom0?) and $%s unset", XENIF_SIM_ENV);
	struct xenif *x = calloc(1, sizeof(*x));
	if (!x) return -ENOMEM;
	x->sim = false;
	x->domid = 0;
	*out = x;
	return 0;
}

void xenif_close(struct xenif *x) { free(x); }
bool xenif_is_sim(const struct xenif *x) { return x->sim; }
uint16_t xenif_domid(const struct xenif *x) { return x->domid; }

/* ------------------------------------------------------------------ xenstore --------------- */

struct xenif_xs {
	bool sim;
	struct sim_conn c;
	struct xs_handle *h;
	char *buf; /* XSIM_MSG_MAX reply buffer */
};

int xenif_xs_open(struct xenif *x, struct xenif_xs **out)
{
	struct xenif_xs *xs = calloc(1, sizeof(*xs));
	if (!xs) return -ENOMEM;
	xs->sim = x->sim;
	if (x->sim) {
		xs->buf = malloc(XSIM_MSG_MAX);
		int r = xs->buf ? sim_connect(x, &xs->c) : -ENOMEM;
		if (r) {
			free(xs->buf);
			free(xs);
			return r;
		}
	} else {
		xs->h = xs_open(0);
		if (!xs->h) {
			int e = -errno;
			free(xs);
			return log_error(e ? e : -EIO, "xenstore: open: %s", strerror(e ? -e : EIO));
		}
	}
	*out = xs;
	return 0;
}

void xenif_xs_close(struct xenif_xs *xs)
{
	if (!xs) return;
	if (xs->sim) sim_disconnect(&xs->c);
	else xs_close(xs->h);
	free(xs->buf);
	free(xs);
}

static int sim_xs_path_call(struct xenif_xs *xs, uint32_t op, xenif_tx_t t, const char *path, const void *extra,
			    uint32_t elen, uint32_t *rlen)
{
	size_t pl = strlen(path) + 1;
	if (pl > XSIM_PATH_MAX + 1) return -EINVAL;
	return sim_call(&xs->c, op, t, path, (uint32_t)pl, extra, elen, NULL, 0, xs->buf, rlen, NULL, NULL);
}

int xenif_xs_read(struct xenif_xs *xs, xenif_tx_t t, const char *path, char **value, size_t *len)
{
	if (xs->sim) {
		uint32_t rl = 0;
		int r = sim_xs_path_call(xs, XSIM_XS_READ, t, path, NULL, 0, &rl);
		if (r) return r;
		char *v = malloc(rl + 1);
		if (!v) return -ENOMEM;
		memcpy(v, xs->buf, rl);
		v[rl] = '\0';
		*value = v;
		if (len) *len = rl;
		return 0;
	}
	unsigned int l = 0;
	char *v = xs_read(xs->h, t, path, &l);
	if (!v) return errno ? -errno : -EIO;
	*value = v;
	if (len) *len = l;
	return 0;
}

int xenif_xs_write(struct xenif_xs *xs, xenif_tx_t t, const char *path, const void *value, size_t len)
{
	if (len > XSIM_VALUE_MAX) return -E2BIG;
	if (xs->sim) return sim_xs_path_call(xs, XSIM_XS_WRITE, t, path, value, (uint32_t)len, NULL);
	return xs_write(xs->h, t, path, value, (unsigned)len) ? 0 : (errno ? -errno : -EIO);
}

int xenif_xs_printf(struct xenif_xs *xs, xenif_tx_t t, const char *path, const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(buf)) return -E2BIG;
	return xenif_xs_write(xs, t, path, buf, (size_t)n);
}

int xenif_xs_read_uint(struct xenif_xs *xs, xenif_tx_t t, const char *path, uint64_t max, uint64_t *out)
{
	char *v = NULL;
	int r = xenif_xs_read(xs, t, path, &v, NULL);
	if (r) return r;
	char *e;
	errno = 0;
	unsigned long long u = strtoull(v, &e, 10);
	r = (v[0] < '0' || v[0] > '9' || *e || errno || u > max) ? -EINVAL : 0;
	free(v);
	if (!r) *out = u;
	return r;
}

int xenif_xs_mkdir(struct xenif_xs *xs, xenif_tx_t t, const char *path)
{
	if (xs->sim) return sim_xs_path_call(xs, XSIM_XS_MKDIR, t, path, NULL, 0, NULL);
	return xs_mkdir(xs->h, t, path) ? 0 : (errno ? -errno : -EIO);
}

int xenif_xs_rm(struct xenif_xs *xs, xenif_tx_t t, const char *path)
{
	if (xs->sim) return sim_xs_path_call(xs, XSIM_XS_RM, t, path, NULL, 0, NULL);
	if (xs_rm(xs->h, t, path)) return 0;
	return errno == ENOENT ? 0 : (errno ? -errno : -EIO);
}

int xenif_xs_rm_tidy(struct xenif_xs *xs, const char *path)
{
	int r = xenif_xs_rm(xs, 0, path);
	if (r) return r;
	/* Then the per-domain parent (backend/TYPE/DOMID), as a toolstack does, but only while it is
	 * empty: a transaction so that a sibling device written meanwhile is never removed. */
	char parent[512];
	const char *slash = strrchr(path, '/');
	if (!slash || slash == path || (size_t)(slash - path) >= sizeof(parent)) return 0;
	memcpy(parent, path, (size_t)(slash - path));
	parent[slash - path] = '\0';
	for (int attempt = 0; attempt < 8; attempt++) {
		xenif_tx_t t;
		if (xenif_xs_transaction_start(xs, &t)) return 0;
		char **names = NULL;
		unsigned n = 0;
		int dr = xenif_xs_directory(xs, t, parent, &names, &n);
		free(names);
		if (dr || n) {
			xenif_xs_transaction_end(xs, t, true);
			return 0;
		}
		xenif_xs_rm(xs, t, parent);
		int e = xenif_xs_transaction_end(xs, t, false);
		if (e != -EAGAIN) return 0;
	}
	return 0;
}

int xenif_xs_directory(struct xenif_xs *xs, xenif_tx_t t, const char *path, char ***names, unsigned *count)
{
	if (!xs->sim) {
		unsigned n = 0;
		char **d = xs_directory(xs->h, t, path, &n);
		if (!d) return errno ? -errno : -EIO;
		*names = d;
		*count = n;
		return 0;
	}
	uint32_t rl = 0;
	int r = sim_xs_path_call(xs, XSIM_XS_DIR, t, path, NULL, 0, &rl);
	if (r) return r;
	unsigned n = 0;
	for (uint32_t i = 0; i < rl; i++) n += xs->buf[i] == '\0';
	char **arr = malloc((n + 1) * sizeof(char *) + rl);
	if (!arr) return -ENOMEM;
	char *s = (char *)(arr + n + 1);
	memcpy(s, xs->buf, rl);
	unsigned k = 0;
	for (uint32_t off = 0; off < rl && k < n; k++) {
		arr[k] = s + off;
		off += (uint32_t)strlen(s + off) + 1;
	}
	arr[n] = NULL;
	*names = arr;
	*count = n;
	return 0;
}

int xenif_xs_set_perms(struct xenif_xs *xs, xenif_tx_t t, const char *path, const char *const *perms,
		       unsigned count)
{
	if (count == 0 || count > XSIM_PERMS_MAX) return -EINVAL;
	if (xs->sim) {
		char buf[XSIM_PERMS_MAX * 16];
		uint32_t off = 0;
		for (unsigned i = 0; i < count; i++) {
			size_t l = strlen(perms[i]) + 1;
			if (off + l > sizeof(buf)) return -EINVAL;
			memcpy(buf + off, perms[i], l);
			off += (uint32_t)l;
		}
		return sim_xs_path_call(xs, XSIM_XS_SETPERMS, t, path, buf, off, NULL);
	}
	struct xs_permissions p[XSIM_PERMS_MAX];
	for (unsigned i = 0; i < count; i++) {
		const char *s = perms[i];
		switch (s[0]) {
		case 'n': p[i].perms = XS_PERM_NONE; break;
		case 'r': p[i].perms = XS_PERM_READ; break;
		case 'w': p[i].perms = XS_PERM_WRITE; break;
		case 'b': p[i].perms = XS_PERM_READ | XS_PERM_WRITE; break;
		default: return -EINVAL;
		}
		p[i].id = (unsigned)strtoul(s + 1, NULL, 10);
	}
	return xs_set_permissions(xs->h, t, path, p, count) ? 0 : (errno ? -errno : -EIO);
}

int xenif_xs_watch(struct xenif_xs *xs, const char *path, const char *token)
{
	if (xs->sim) {
		size_t tl = strlen(token) + 1;
		return sim_xs_path_call(xs, XSIM_XS_WATCH, 0, path, token, (uint32_t)tl, NULL);
	}
	return xs_watch(xs->h, path, token) ? 0 : (errno ? -errno : -EIO);
}

int xenif_xs_unwatch(struct xenif_xs *xs, const char *path, const char *token)
{
	if (xs->sim) {
		size_t tl = strlen(token) + 1;
		return sim_xs_path_call(xs, XSIM_XS_UNWATCH, 0, path, token, (uint32_t)tl, NULL);
	}
	return xs_unwatch(xs->h, path, token) ? 0 : (errno ? -errno : -EIO);
}

int xenif_xs_fd(struct xenif_xs *xs)
{
	return xs->sim ? xs->c.fd : xs_fileno(xs->h);
}

int xenif_xs_read_watch(struct xenif_xs *xs, char **path, char **token)
{
	if (!xs->sim) {
		char **v = xs_check_watch(xs->h);
		if (!v) return errno == EAGAIN || errno == 0 ? -EAGAIN : -errno;
		*path = strdup(v[XS_WATCH_PATH]);
		*token = strdup(v[XS_WATCH_TOKEN]);
		free(v);
		if (!*path || !*token) {
			free(*path);
			free(*token);
			return -ENOMEM;
		}
		return 0;
	}
	/* Pull whatever the socket holds without blocking. */
	for (;;) {
		struct xsim_hdr h;
		int fds[4], nfds = 0;
		int r = sim_recv(&xs->c, MSG_DONTWAIT, &h, xs->buf, fds, &nfds);
		for (int i = 0; i < nfds; i++) close(fds[i]);
		if (r == -EAGAIN || r == -EWOULDBLOCK) break;
		if (r) return r;
		if (h.op == XSIM_EVENT) sim_queue_event(&xs->c, xs->buf, h.len);
	}
	struct sim_event *e = xs->c.head;
	if (!e) return -EAGAIN;
	xs->c.head = e->next;
	if (!xs->c.head) xs->c.tail = NULL;
	xs->c.queued--;
	*path = e->path;
	*token = e->token;
	free(e);
	return 0;
}

int xenif_xs_transaction_start(struct xenif_xs *xs, xenif_tx_t *t)
{
	if (xs->sim) {
		uint32_t rl = 0;
		int r = sim_call(&xs->c, XSIM_XS_TX_START, 0, NULL, 0, NULL, 0, NULL, 0, xs->buf, &rl, NULL, NULL);
		if (r) return r;
		if (rl != 4) return -EPROTO;
		memcpy(t, xs->buf, 4);
		return 0;
	}
	xs_transaction_t tt = xs_transaction_start(xs->h);
	if (tt == XBT_NULL) return errno ? -errno : -EIO;
	*t = tt;
	return 0;
}

int xenif_xs_transaction_end(struct xenif_xs *xs, xenif_tx_t t, bool abort)
{
	if (xs->sim) {
		uint32_t commit = !abort;
		return sim_call(&xs->c, XSIM_XS_TX_END, t, &commit, 4, NULL, 0, NULL, 0, xs->buf, NULL, NULL, NULL);
	}
	return xs_transaction_end(xs->h, t, abort) ? 0 : (errno ? -errno : -EIO);
}

/* ------------------------------------------------------------------ grants ----------------- */

struct sim_dom {
	uint16_t domid;
	bool used;
	uint8_t *base;
	uint64_t bytes;
	uint32_t npages, ngrants;
	int memfd;
};

struct xenif_gnt {
	bool sim;
	uint16_t my_domid;
	xengnttab_handle *h;
	struct sim_conn c;
	struct sim_dom doms[SIM_DOMAINS_CACHED];
};

int xenif_gnt_open(struct xenif *x, struct xenif_gnt **out)
{
	struct xenif_gnt *g = calloc(1, sizeof(*g));
	if (!g) return -ENOMEM;
	g->sim = x->sim;
	g->my_domid = x->domid;
	if (x->sim) {
		int r = sim_connect(x, &g->c);
		if (r) {
			free(g);
			return r;
		}
	} else {
		g->h = xengnttab_open(NULL, 0);
		if (!g->h) {
			int e = errno ? -errno : -EIO;
			free(g);
			return log_error(e, "xen: gnttab open: %s", strerror(-e));
		}
	}
	*out = g;
	return 0;
}

void xenif_gnt_close(struct xenif_gnt *g)
{
	if (!g) return;
	if (g->sim) {
		for (int i = 0; i < SIM_DOMAINS_CACHED; i++) {
			if (!g->doms[i].used) continue;
			munmap(g->doms[i].base, g->doms[i].bytes);
			close(g->doms[i].memfd);
		}
		sim_disconnect(&g->c);
	} else {
		xengnttab_close(g->h);
	}
	free(g);
}

static int sim_dom_get(struct xenif_gnt *g, uint16_t domid, struct sim_dom **out)
{
	int free_slot = -1;
	for (int i = 0; i < SIM_DOMAINS_CACHED; i++) {
		if (g->doms[i].used && g->doms[i].domid == domid) {
			*out = &g->doms[i];
			return 0;
		}
		if (!g->doms[i].used) free_slot = i;
	}
	if (free_slot < 0) return -ENOSPC;
	uint32_t d = domid, rl = 0;
	char reply[64];
	int fds[4], nfds = 0;
	/* The reply is tiny; use a small buffer by asking through the generic call with a big one. */
	char *buf = malloc(XSIM_MSG_MAX);
	if (!buf) return -ENOMEM;
	int r = sim_call(&g->c, XSIM_GUEST_MEM, 0, &d, 4, NULL, 0, NULL, 0, buf, &rl, fds, &nfds);
	if (!r && (rl != 8 || nfds != 1)) {
		for (int i = 0; i < nfds; i++) close(fds[i]);
		r = -EPROTO;
	}
	if (!r) memcpy(reply, buf, 8);
	free(buf);
	if (r) return r;
	uint32_t info[2];
	memcpy(info, reply, 8);
	struct sim_dom *sd = &g->doms[free_slot];
	sd->bytes = xsim_guest_bytes(info[0], info[1]);
	void *base = mmap(NULL, sd->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
	if (base == MAP_FAILED) {
		close(fds[0]);
		return -errno;
	}
	sd->base = base;
	sd->memfd = fds[0];
	sd->npages = info[0];
	sd->ngrants = info[1];
	sd->domid = domid;
	sd->used = true;
	*out = sd;
	return 0;
}

/* Checks grant gref of d for access by me; returns the frame or -errno. */
static int64_t sim_grant_check(const struct xenif_gnt *g, const struct sim_dom *d, uint32_t gref, bool write)
{
	if (gref >= d->ngrants) return -EINVAL;
	const uint64_t *tbl = (const uint64_t *)(d->base + 4096);
	uint64_t raw = __atomic_load_n(&tbl[gref], __ATOMIC_ACQUIRE);
	struct xsim_grant_entry e;
	memcpy(&e, &raw, sizeof(e));
	if (!(e.flags & XSIM_GTF_permit_access)) return -EINVAL;
	if (e.domid != g->my_domid) return -EPERM;
	if (write && (e.flags & XSIM_GTF_readonly)) return -EACCES;
	if (e.frame >= d->npages) return -EINVAL;
	return e.frame;
}

int xenif_gnt_map(struct xenif_gnt *g, uint16_t domid, const uint32_t *grefs, unsigned count, bool writable,
		  void **addr)
{
	if (count == 0 || count > 1024) return -EINVAL;
	if (!g->sim) {
		uint32_t refs[1024];
		memcpy(refs, grefs, count * sizeof(uint32_t));
		void *a = xengnttab_map_domain_grant_refs(g->h, count, domid, refs,
							  PROT_READ | (writable ? PROT_WRITE : 0));
		if (!a) return errno ? -errno : -EIO;
		*addr = a;
		return 0;
	}
	struct sim_dom *d;
	int r = sim_dom_get(g, domid, &d);
	if (r) return r;
	uint8_t *area = mmap(NULL, (size_t)count * 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (area == MAP_FAILED) return -errno;
	for (unsigned i = 0; i < count; i++) {
		int64_t f = sim_grant_check(g, d, grefs[i], writable);
		if (f < 0) {
			munmap(area, (size_t)count * 4096);
			return (int)f;
		}
		void *m = mmap(area + (size_t)i * 4096, 4096, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED | MAP_FIXED,
			       d->memfd, (off_t)xsim_guest_page_offset(d->ngrants, (uint32_t)f));
		if (m == MAP_FAILED) {
			r = -errno;
			munmap(area, (size_t)count * 4096);
			return r;
		}
	}
	*addr = area;
	return 0;
}

int xenif_gnt_unmap(struct xenif_gnt *g, void *addr, unsigned count)
{
	if (!g->sim) return xengnttab_unmap(g->h, addr, count) ? (errno ? -errno : -EIO) : 0;
	return munmap(addr, (size_t)count * 4096) ? -errno : 0;
}

int xenif_gnt_copy(struct xenif_gnt *g, uint16_t domid, struct xenif_copy_seg *segs, unsigned count)
{
	int bad = 0;
	if (!g->sim) {
		xengnttab_grant_copy_segment_t cs[64];
		for (unsigned base = 0; base < count; base += 64) {
			unsigned n = count - base < 64 ? count - base : 64;
			for (unsigned i = 0; i < n; i++) {
				struct xenif_copy_seg *s = &segs[base + i];
				memset(&cs[i], 0, sizeof(cs[i]));
				if (s->to_guest) {
					cs[i].source.virt = s->local;
					cs[i].dest.foreign.ref = s->gref;
					cs[i].dest.foreign.offset = s->offset;
					cs[i].dest.foreign.domid = domid;
					cs[i].flags = GNTCOPY_dest_gref;
				} else {
					cs[i].dest.virt = s->local;
					cs[i].source.foreign.ref = s->gref;
					cs[i].source.foreign.offset = s->offset;
					cs[i].source.foreign.domid = domid;
					cs[i].flags = GNTCOPY_source_gref;
				}
				cs[i].len = s->len;
			}
			if (xengnttab_grant_copy(g->h, n, cs)) return errno ? -errno : -EIO;
			for (unsigned i = 0; i < n; i++) {
				segs[base + i].status = cs[i].status == GNTST_okay ? 0 : -EIO;
				bad |= cs[i].status != GNTST_okay;
			}
		}
		return bad ? -EIO : 0;
	}
	struct sim_dom *d;
	int r = sim_dom_get(g, domid, &d);
	if (r) {
		for (unsigned i = 0; i < count; i++) segs[i].status = (int16_t)r;
		return -EIO;
	}
	for (unsigned i = 0; i < count; i++) {
		struct xenif_copy_seg *s = &segs[i];
		if ((uint32_t)s->offset + s->len > 4096) {
			s->status = -EINVAL;
			bad = 1;
			continue;
		}
		int64_t f = sim_grant_check(g, d, s->gref, s->to_guest);
		if (f < 0) {
			s->status = (int16_t)f;
			bad = 1;
			continue;
		}
		uint8_t *page = d->base + xsim_guest_page_offset(d->ngrants, (uint32_t)f);
		if (s->to_guest) memcpy(page + s->offset, s->local, s->len);
		else memcpy(s->local, page + s->offset, s->len);
		s->status = 0;
	}
	return bad ? -EIO : 0;
}

/* ------------------------------------------------------------------ event channels --------- */

struct sim_port {
	bool used;
	bool allocator;  /* we allocated it (frontend side) */
	uint32_t port;
	int rx, tx;
};

struct xenif_evt {
	bool sim;
	xenevtchn_handle *h;
	struct sim_conn c;
	int epfd;
	struct sim_port ports[SIM_PORTS_MAX];
};

int xenif_evt_open(struct xenif *x, struct xenif_evt **out)
{
	struct xenif_evt *e = calloc(1, sizeof(*e));
	if (!e) return -ENOMEM;
	e->sim = x->sim;
	e->epfd = -1;
	if (x->sim) {
		e->epfd = epoll_create1(EPOLL_CLOEXEC);
		int r = e->epfd < 0 ? -errno : sim_connect(x, &e->c);
		if (r) {
			if (e->epfd >= 0) close(e->epfd);
			free(e);
			return r;
		}
	} else {
		e->h = xenevtchn_open(NULL, 0);
		if (!e->h) {
			int r = errno ? -errno : -EIO;
			free(e);
			return log_error(r, "xen: evtchn open: %s", strerror(-r));
		}
		/* libxenevtchn opens /dev/xen/evtchn blocking: xenevtchn_pending() would then sleep in
		 * read() once the pending events are drained, and the queue thread would never get back
		 * to its ring (nor see its stop request). */
		int fd = xenevtchn_fd(e->h);
		int fl = fcntl(fd, F_GETFL);
		if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
			int r = -errno;
			xenevtchn_close(e->h);
			free(e);
			return log_error(r, "xen: evtchn O_NONBLOCK: %s", strerror(-r));
		}
	}
	*out = e;
	return 0;
}

void xenif_evt_close(struct xenif_evt *e)
{
	if (!e) return;
	if (e->sim) {
		for (int i = 0; i < SIM_PORTS_MAX; i++) {
			if (!e->ports[i].used) continue;
			close(e->ports[i].rx);
			close(e->ports[i].tx);
		}
		close(e->epfd);
		sim_disconnect(&e->c);
	} else {
		xenevtchn_close(e->h);
	}
	free(e);
}

static int sim_port_add(struct xenif_evt *e, uint32_t port, int rx, int tx, bool allocator)
{
	for (int i = 0; i < SIM_PORTS_MAX; i++) {
		if (e->ports[i].used) continue;
		struct epoll_event ev = { .events = EPOLLIN, .data.u32 = port };
		if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, rx, &ev)) return -errno;
		e->ports[i] = (struct sim_port){ true, allocator, port, rx, tx };
		return 0;
	}
	return -ENOSPC;
}

static struct sim_port *sim_port_find(struct xenif_evt *e, uint32_t port)
{
	for (int i = 0; i < SIM_PORTS_MAX; i++)
		if (e->ports[i].used && e->ports[i].port == port) return &e->ports[i];
	return NULL;
}

int xenif_evt_bind(struct xenif_evt *e, uint16_t domid, uint32_t remote_port, uint32_t *local_port)
{
	if (!e->sim) {
		xenevtchn_port_or_error_t p = xenevtchn_bind_interdomain(e->h, domid, remote_port);
		if (p < 0) return errno ? -errno : -EIO;
		*local_port = (uint32_t)p;
		return 0;
	}
	uint32_t req[2] = { domid, remote_port }, rl = 0;
	int fds[4], nfds = 0;
	char *buf = malloc(XSIM_MSG_MAX);
	if (!buf) return -ENOMEM;
	int r = sim_call(&e->c, XSIM_EVT_BIND, 0, req, 8, NULL, 0, NULL, 0, buf, &rl, fds, &nfds);
	uint32_t port = 0;
	if (!r && (rl != 4 || nfds != 2)) {
		for (int i = 0; i < nfds; i++) close(fds[i]);
		r = -EPROTO;
	}
	if (!r) memcpy(&port, buf, 4);
	free(buf);
	if (r) return r;
	/* fds[0] is the allocator's rx (our tx), fds[1] ours. */
	r = sim_port_add(e, port, fds[1], fds[0], false);
	if (r) {
		close(fds[0]);
		close(fds[1]);
		return r;
	}
	*local_port = port;
	return 0;
}

int xenif_evt_alloc_unbound(struct xenif_evt *e, uint16_t remote_domid, uint32_t *port)
{
	if (!e->sim) {
		xenevtchn_port_or_error_t p = xenevtchn_bind_unbound_port(e->h, remote_domid);
		if (p < 0) return errno ? -errno : -EIO;
		*port = (uint32_t)p;
		return 0;
	}
	int fds[2];
	fds[0] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	fds[1] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	int r = (fds[0] < 0 || fds[1] < 0) ? -errno : 0;
	uint32_t rd = remote_domid, rl = 0, p = 0;
	char *buf = r ? NULL : malloc(XSIM_MSG_MAX);
	if (!r && !buf) r = -ENOMEM;
	if (!r) r = sim_call(&e->c, XSIM_EVT_ALLOC, 0, &rd, 4, NULL, 0, fds, 2, buf, &rl, NULL, NULL);
	if (!r && rl != 4) r = -EPROTO;
	if (!r) memcpy(&p, buf, 4);
	free(buf);
	if (!r) r = sim_port_add(e, p, fds[0], fds[1], true);
	if (r) {
		if (fds[0] >= 0) close(fds[0]);
		if (fds[1] >= 0) close(fds[1]);
		return r;
	}
	*port = p;
	return 0;
}

int xenif_evt_unbind(struct xenif_evt *e, uint32_t port)
{
	if (!e->sim) return xenevtchn_unbind(e->h, port) ? (errno ? -errno : -EIO) : 0;
	struct sim_port *sp = sim_port_find(e, port);
	if (!sp) return -EINVAL;
	epoll_ctl(e->epfd, EPOLL_CTL_DEL, sp->rx, NULL);
	close(sp->rx);
	close(sp->tx);
	sp->used = false;
	uint32_t p = port;
	return sim_call(&e->c, XSIM_EVT_CLOSE, 0, &p, 4, NULL, 0, NULL, 0, NULL, NULL, NULL, NULL);
}

int xenif_evt_notify(struct xenif_evt *e, uint32_t port)
{
	if (!e->sim) return xenevtchn_notify(e->h, port) ? (errno ? -errno : -EIO) : 0;
	struct sim_port *sp = sim_port_find(e, port);
	if (!sp) return -EINVAL;
	uint64_t one = 1;
	ssize_t n = write(sp->tx, &one, sizeof(one));
	/* EAGAIN: the counter is saturated, the peer is certainly notified. */
	return n == sizeof(one) || errno == EAGAIN ? 0 : -errno;
}

int xenif_evt_fd(struct xenif_evt *e)
{
	return e->sim ? e->epfd : xenevtchn_fd(e->h);
}

int xenif_evt_pending(struct xenif_evt *e)
{
	if (!e->sim) {
		xenevtchn_port_or_error_t p = xenevtchn_pending(e->h);
		if (p < 0) return errno == EAGAIN ? -EAGAIN : (errno ? -errno : -EIO);
		if (xenevtchn_unmask(e->h, (evtchn_port_t)p)) return errno ? -errno : -EIO;
		return p;
	}
	struct epoll_event ev;
	int n = epoll_wait(e->epfd, &ev, 1, 0);
	if (n < 0) return errno == EINTR ? -EAGAIN : -errno;
	if (n == 0) return -EAGAIN;
	struct sim_port *sp = sim_port_find(e, ev.data.u32);
	if (!sp) return -EAGAIN;
	uint64_t v;
	(void)!read(sp->rx, &v, sizeof(v));
	return (int)sp->port;
}

/* ------------------------------------------------------------------ sim guests ------------- */

struct xensim_guest {
	struct sim_conn c;
	int memfd;
	uint8_t *base;
	uint64_t bytes;
	uint32_t npages, ngrants;
	uint32_t next_gref;
	pthread_mutex_t lock;
};

int xensim_guest_create(struct xenif *x, uint32_t npages, uint32_t ngrants, struct xensim_guest **out)
{
	if (!x->sim || x->domid == 0) return -EINVAL;
	struct xensim_guest *g = calloc(1, sizeof(*g));
	if (!g) return -ENOMEM;
	g->npages = npages;
	g->ngrants = ngrants;
	g->bytes = xsim_guest_bytes(npages, ngrants);
	g->memfd = memfd_create("ociblk-xensim-guest", MFD_CLOEXEC);
	int r = g->memfd < 0 ? -errno : 0;
	if (!r && ftruncate(g->memfd, (off_t)g->bytes)) r = -errno;
	if (!r) {
		g->base = mmap(NULL, g->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, g->memfd, 0);
		if (g->base == MAP_FAILED) {
			g->base = NULL;
			r = -errno;
		}
	}
	if (!r) {
		struct xsim_guest_header h = { XSIM_GUEST_MAGIC, npages, ngrants };
		memcpy(g->base, &h, sizeof(h));
		r = sim_connect(x, &g->c);
	}
	if (!r) {
		uint32_t info[2] = { npages, ngrants };
		r = sim_call(&g->c, XSIM_GUEST_CREATE, 0, info, 8, NULL, 0, &g->memfd, 1, NULL, NULL, NULL, NULL);
		if (r) sim_disconnect(&g->c);
	}
	if (r) {
		if (g->base) munmap(g->base, g->bytes);
		if (g->memfd >= 0) close(g->memfd);
		free(g);
		return r;
	}
	g->next_gref = 1; /* gref 0 is never handed out, as in Linux */
	pthread_mutex_init(&g->lock, NULL);
	*out = g;
	return 0;
}

void xensim_guest_destroy(struct xensim_guest *g)
{
	if (!g) return;
	sim_disconnect(&g->c);
	munmap(g->base, g->bytes);
	close(g->memfd);
	pthread_mutex_destroy(&g->lock);
	free(g);
}

void *xensim_guest_page(struct xensim_guest *g, uint32_t page)
{
	if (page >= g->npages) return NULL;
	return g->base + xsim_guest_page_offset(g->ngrants, page);
}

uint32_t xensim_guest_npages(const struct xensim_guest *g) { return g->npages; }

void xensim_guest_grant_raw(struct xensim_guest *g, uint32_t gref, uint16_t flags, uint16_t domid, uint32_t frame)
{
	if (gref >= g->ngrants) return;
	struct xsim_grant_entry e = { flags, domid, frame };
	uint64_t raw;
	memcpy(&raw, &e, sizeof(raw));
	__atomic_store_n(&((uint64_t *)(g->base + 4096))[gref], raw, __ATOMIC_RELEASE);
}

int xensim_guest_grant(struct xensim_guest *g, uint32_t page, uint16_t remote_domid, bool readonly)
{
	if (page >= g->npages) return -EINVAL;
	pthread_mutex_lock(&g->lock);
	const uint64_t *tbl = (const uint64_t *)(g->base + 4096);
	int found = -ENOSPC;
	for (uint32_t k = 0; k < g->ngrants; k++) {
		uint32_t ref = g->next_gref;
		g->next_gref = g->next_gref + 1 >= g->ngrants ? 1 : g->next_gref + 1;
		if (ref == 0 || __atomic_load_n(&tbl[ref], __ATOMIC_ACQUIRE) != 0) continue;
		xensim_guest_grant_raw(g, ref, (uint16_t)(XSIM_GTF_permit_access | (readonly ? XSIM_GTF_readonly : 0)),
				       remote_domid, page);
		found = (int)ref;
		break;
	}
	pthread_mutex_unlock(&g->lock);
	return found;
}

void xensim_guest_ungrant(struct xensim_guest *g, uint32_t gref)
{
	xensim_guest_grant_raw(g, gref, 0, 0, 0);
}

int xensim_shutdown(const char *socket_path)
{
	struct xenif *x;
	int r = xenif_open_sim(socket_path, 0, &x);
	if (r) return r;
	struct sim_conn c;
	r = sim_connect(x, &c);
	if (!r) {
		r = sim_call(&c, XSIM_SHUTDOWN, 0, NULL, 0, NULL, 0, NULL, 0, NULL, NULL, NULL, NULL);
		sim_disconnect(&c);
	}
	xenif_close(x);
	return r;
}
