/* The simulated Xen's daemon: an in-memory xenstore (permissions, watches, transactions,
 * quotas), a registry of guest memories (memfds holding grant table + pages) and a broker for
 * event channels (eventfd pairs).  Single-threaded poll loop over SOCK_SEQPACKET clients.
 *
 * Invariants: every client message is validated before use (lengths, NUL termination, path
 * syntax, quotas); the tree is a flat array of nodes keyed by absolute path whose every node's
 * parent exists; a transaction works on a private copy of the array and commits only if the
 * global generation did not move since it started; a domain's tree is removed when the
 * connection that created the domain closes. */
#include "blkback/xenif.h"
#include "blkback/xensim_proto.h"
#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_CLIENTS 256
#define MAX_DOMAINS 64
#define MAX_CHANNELS 1024
#define MAX_TX_PER_CLIENT 8

struct perm { uint32_t id; char p; }; /* p: 'n','r','w','b' */

struct node {
	char *path;
	char *value;
	uint32_t len;
	uint32_t nperms;
	struct perm perms[XSIM_PERMS_MAX];
};

struct tree {
	struct node *nodes;
	uint32_t count, cap;
};

struct watch { char *path; char *token; };

struct txn {
	uint32_t id;
	uint64_t base_gen;
	struct tree tree;
	char **changed;   /* paths changed inside, fired on commit */
	uint32_t nchanged;
	bool changed_overflow;
};

struct client {
	int fd;
	uint32_t domid;
	bool owns_domain;
	struct watch watches[XSIM_WATCHES_MAX];
	uint32_t nwatches;
	struct txn *tx[MAX_TX_PER_CLIENT];
};

struct domain {
	bool used;
	uint32_t domid;
	int memfd;
	uint32_t npages, ngrants;
	struct client *owner;
};

struct channel {
	bool used;
	uint32_t alloc_domid, alloc_port;
	uint32_t remote_domid;
	bool bound;
	uint32_t bind_port;
	int fd_alloc_rx, fd_bind_rx;
	void *binder; /* the client that bound it: unbound when that client goes away */
};

struct server {
	struct tree tree;
	uint64_t gen;
	uint32_t next_tx;
	struct client *clients[MAX_CLIENTS];
	struct domain domains[MAX_DOMAINS];
	struct channel channels[MAX_CHANNELS];
	uint32_t next_port[MAX_DOMAINS + 1];
	bool stop;
};

/* ------------------------------------------------------------------ tree ------------------- */

static void node_free(struct node *n)
{
	free(n->path);
	free(n->value);
}

static void tree_free(struct tree *t)
{
	for (uint32_t i = 0; i < t->count; i++) node_free(&t->nodes[i]);
	free(t->nodes);
	t->nodes = NULL;
	t->count = t->cap = 0;
}

static int tree_copy(const struct tree *src, struct tree *dst)
{
	dst->nodes = calloc(src->count ? src->count : 1, sizeof(*dst->nodes));
	if (!dst->nodes) return -ENOMEM;
	dst->cap = src->count ? src->count : 1;
	dst->count = 0;
	for (uint32_t i = 0; i < src->count; i++) {
		struct node *d = &dst->nodes[i];
		*d = src->nodes[i];
		d->path = strdup(src->nodes[i].path);
		d->value = malloc(src->nodes[i].len + 1);
		if (!d->path || !d->value) {
			free(d->path);
			free(d->value);
			tree_free(dst);
			return -ENOMEM;
		}
		memcpy(d->value, src->nodes[i].value, src->nodes[i].len + 1);
		dst->count++;
	}
	return 0;
}

static struct node *tree_find(struct tree *t, const char *path)
{
	for (uint32_t i = 0; i < t->count; i++)
		if (!strcmp(t->nodes[i].path, path)) return &t->nodes[i];
	return NULL;
}

/* 1 if child is path or below it. */
static bool path_under(const char *child, const char *path)
{
	size_t n = strlen(path);
	if (!strcmp(path, "/")) return child[0] == '/';
	return !strncmp(child, path, n) && (child[n] == '\0' || child[n] == '/');
}

static int path_valid(const char *p)
{
	size_t n = strlen(p);
	if (n == 0 || n > XSIM_PATH_MAX || p[0] != '/') return 0;
	if (n > 1 && p[n - 1] == '/') return 0;
	for (size_t i = 0; i < n; i++) {
		char c = p[i];
		if (c == '/' && i + 1 < n && p[i + 1] == '/') return 0;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '/' || c == '-' || c == '_' || c == '@' || c == '.'))
			return 0;
	}
	return 1;
}

static void parent_of(const char *path, char *out)
{
	strcpy(out, path);
	char *s = strrchr(out, '/');
	if (s == out) out[1] = '\0';
	else *s = '\0';
}

static char perm_for(const struct node *n, uint32_t domid)
{
	if (domid == 0) return 'b';
	if (n->perms[0].id == domid) return 'b';
	for (uint32_t i = 1; i < n->nperms; i++)
		if (n->perms[i].id == domid) return n->perms[i].p;
	return n->perms[0].p;
}

static bool can_read(const struct node *n, uint32_t domid)
{
	char p = perm_for(n, domid);
	return p == 'r' || p == 'b';
}

static bool can_write(const struct node *n, uint32_t domid)
{
	char p = perm_for(n, domid);
	return p == 'w' || p == 'b';
}

static uint32_t owned_nodes(const struct tree *t, uint32_t domid)
{
	uint32_t c = 0;
	for (uint32_t i = 0; i < t->count; i++) c += t->nodes[i].perms[0].id == domid;
	return c;
}

static int tree_add(struct tree *t, const char *path, const struct node *parent, uint32_t creator)
{
	if (t->count >= XSIM_NODES_MAX) return -ENOSPC;
	if (creator != 0 && owned_nodes(t, creator) >= XSIM_DOMU_NODES_MAX) return -EDQUOT;
	if (t->count == t->cap) {
		uint32_t cap = t->cap ? t->cap * 2 : 64;
		struct node *nn = realloc(t->nodes, cap * sizeof(*nn));
		if (!nn) return -ENOMEM;
		t->nodes = nn;
		t->cap = cap;
	}
	struct node *n = &t->nodes[t->count];
	memset(n, 0, sizeof(*n));
	n->path = strdup(path);
	n->value = strdup("");
	if (!n->path || !n->value) {
		free(n->path);
		free(n->value);
		return -ENOMEM;
	}
	if (parent) {
		n->nperms = parent->nperms;
		memcpy(n->perms, parent->perms, sizeof(n->perms));
	} else {
		n->nperms = 1;
		n->perms[0] = (struct perm){ 0, 'n' };
	}
	if (creator != 0) n->perms[0].id = creator;
	t->count++;
	return 0;
}

/* Creates path and missing ancestors (each inheriting its parent's permissions).  Needs write
 * permission on the deepest existing ancestor. */
static int tree_ensure(struct tree *t, const char *path, uint32_t domid, struct node **out)
{
	struct node *n = tree_find(t, path);
	if (n) {
		*out = n;
		return 0;
	}
	char parent[XSIM_PATH_MAX + 1];
	parent_of(path, parent);
	struct node *p = tree_find(t, parent);
	if (!p) {
		int r = tree_ensure(t, parent, domid, &p);
		if (r) return r;
	} else if (!can_write(p, domid)) {
		return -EACCES;
	}
	p = tree_find(t, parent); /* tree_add may move the array */
	struct node copy = *p;
	int r = tree_add(t, path, &copy, domid);
	if (r) return r;
	*out = &t->nodes[t->count - 1];
	return 0;
}

static void tree_rm(struct tree *t, const char *path)
{
	uint32_t w = 0;
	for (uint32_t i = 0; i < t->count; i++) {
		if (path_under(t->nodes[i].path, path)) {
			node_free(&t->nodes[i]);
			continue;
		}
		t->nodes[w++] = t->nodes[i];
	}
	t->count = w;
}

/* ------------------------------------------------------------------ messaging -------------- */

static int send_msg(int fd, uint32_t op, uint32_t tx, int32_t err, const void *payload, uint32_t len,
		    const int *fds, unsigned nfds)
{
	return xsim_send(fd, op, tx, err, payload, len, NULL, 0, fds, nfds);
}

static int reply(struct client *c, uint32_t tx, int err, const void *p, uint32_t len)
{
	return send_msg(c->fd, XSIM_REPLY, tx, err, p, len, NULL, 0);
}

static void fire_watches(struct server *s, const char *path, bool removal)
{
	for (int i = 0; i < MAX_CLIENTS; i++) {
		struct client *c = s->clients[i];
		if (!c) continue;
		for (uint32_t w = 0; w < c->nwatches; w++) {
			struct watch *wa = &c->watches[w];
			bool hit = path_under(path, wa->path) || (removal && path_under(wa->path, path));
			if (path[0] == '@' || wa->path[0] == '@') hit = !strcmp(path, wa->path);
			if (!hit) continue;
			if (path[0] != '@' && c->domid != 0) {
				/* Like xenstored: a domain only hears about nodes it may read (or that are gone). */
				struct node *n = tree_find(&s->tree, path);
				if (n && !can_read(n, c->domid)) continue;
			}
			/* Event for the watched path itself when a parent was removed, else the changed path. */
			const char *ev = (removal && path_under(wa->path, path)) ? wa->path : path;
			size_t pl = strlen(ev) + 1, tl = strlen(wa->token) + 1;
			char buf[XSIM_PATH_MAX + 1 + XSIM_PATH_MAX + 1];
			memcpy(buf, ev, pl);
			memcpy(buf + pl, wa->token, tl);
			/* A client that does not read its events loses them (bounded by the socket buffer). */
			struct xsim_hdr h = { XSIM_EVENT, 0, 0, (uint32_t)(pl + tl) };
			struct iovec iov[2] = { { &h, sizeof(h) }, { buf, pl + tl } };
			struct msghdr m = { .msg_iov = iov, .msg_iovlen = 2 };
			(void)sendmsg(c->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
		}
	}
}

/* ------------------------------------------------------------------ domains / channels ----- */

static struct domain *domain_find(struct server *s, uint32_t domid)
{
	for (int i = 0; i < MAX_DOMAINS; i++)
		if (s->domains[i].used && s->domains[i].domid == domid) return &s->domains[i];
	return NULL;
}

static void domain_destroy(struct server *s, struct domain *d)
{
	char path[64];
	snprintf(path, sizeof(path), "/local/domain/%u", d->domid);
	if (tree_find(&s->tree, path)) {
		tree_rm(&s->tree, path);
		s->gen++;
		fire_watches(s, path, true);
	}
	for (int i = 0; i < MAX_CHANNELS; i++) {
		struct channel *ch = &s->channels[i];
		if (ch->used && ch->alloc_domid == d->domid) {
			close(ch->fd_alloc_rx);
			close(ch->fd_bind_rx);
			ch->used = false;
		}
	}
	close(d->memfd);
	d->used = false;
	fire_watches(s, "@releaseDomain", false);
}

static void client_free(struct server *s, int idx)
{
	struct client *c = s->clients[idx];
	s->clients[idx] = NULL;
	for (int i = 0; i < MAX_CHANNELS; i++)
		if (s->channels[i].used && s->channels[i].binder == c) {
			s->channels[i].bound = false;
			s->channels[i].binder = NULL;
		}
	for (int i = 0; i < MAX_DOMAINS; i++)
		if (s->domains[i].used && s->domains[i].owner == c) domain_destroy(s, &s->domains[i]);
	for (uint32_t w = 0; w < c->nwatches; w++) {
		free(c->watches[w].path);
		free(c->watches[w].token);
	}
	for (int t = 0; t < MAX_TX_PER_CLIENT; t++) {
		if (!c->tx[t]) continue;
		tree_free(&c->tx[t]->tree);
		for (uint32_t i = 0; i < c->tx[t]->nchanged; i++) free(c->tx[t]->changed[i]);
		free(c->tx[t]->changed);
		free(c->tx[t]);
	}
	close(c->fd);
	free(c);
}

/* ------------------------------------------------------------------ request handling ------- */

/* Splits payload into NUL-terminated strings; returns how many (at most max), -EINVAL when the
 * payload does not end in NUL. */
static int split_strings(char *p, uint32_t len, char **out, int max)
{
	if (len == 0 || p[len - 1] != '\0') return -EINVAL;
	int n = 0;
	for (uint32_t off = 0; off < len && n < max;) {
		out[n++] = p + off;
		off += strlen(p + off) + 1;
	}
	return n;
}

static struct txn *tx_get(struct client *c, uint32_t id)
{
	for (int t = 0; t < MAX_TX_PER_CLIENT; t++)
		if (c->tx[t] && c->tx[t]->id == id) return c->tx[t];
	return NULL;
}

static void note_change(struct server *s, struct txn *tx, const char *path, bool removal)
{
	if (!tx) {
		s->gen++;
		fire_watches(s, path, removal);
		return;
	}
	if (tx->nchanged >= 256) {
		tx->changed_overflow = true;
		return;
	}
	char **nc = realloc(tx->changed, (tx->nchanged + 1) * sizeof(*nc));
	if (!nc) return;
	tx->changed = nc;
	/* Prefix records removal so commit fires it as one. */
	size_t l = strlen(path);
	char *e = malloc(l + 2);
	if (!e) return;
	e[0] = removal ? 'R' : 'W';
	memcpy(e + 1, path, l + 1);
	tx->changed[tx->nchanged++] = e;
}

static int handle_xs(struct server *s, struct client *c, struct xsim_hdr *h, char *p)
{
	struct txn *tx = NULL;
	struct tree *t = &s->tree;
	if (h->tx && h->op != XSIM_XS_TX_END) {
		tx = tx_get(c, h->tx);
		if (!tx) return reply(c, h->tx, -ENOENT, NULL, 0);
		t = &tx->tree;
	}
	char *str[XSIM_PERMS_MAX + 2];
	int ns = 0;
	if (h->op != XSIM_XS_TX_START && h->op != XSIM_XS_TX_END) {
		if (h->op == XSIM_XS_WRITE) {
			/* path NUL value (value may hold any bytes) */
			char *z = memchr(p, '\0', h->len);
			if (!z) return reply(c, h->tx, -EINVAL, NULL, 0);
			str[0] = p;
			ns = 1;
		} else {
			ns = split_strings(p, h->len, str, XSIM_PERMS_MAX + 2);
			if (ns < 1) return reply(c, h->tx, -EINVAL, NULL, 0);
		}
		bool special = str[0][0] == '@' && (h->op == XSIM_XS_WATCH || h->op == XSIM_XS_UNWATCH);
		if (!special && !path_valid(str[0])) return reply(c, h->tx, -EINVAL, NULL, 0);
	}
	switch (h->op) {
	case XSIM_XS_READ: {
		struct node *n = tree_find(t, str[0]);
		if (!n) return reply(c, h->tx, -ENOENT, NULL, 0);
		if (!can_read(n, c->domid)) return reply(c, h->tx, -EACCES, NULL, 0);
		return reply(c, h->tx, 0, n->value, n->len);
	}
	case XSIM_XS_WRITE:
	case XSIM_XS_MKDIR: {
		uint32_t vlen = 0;
		const char *val = "";
		if (h->op == XSIM_XS_WRITE) {
			size_t pl = strlen(str[0]) + 1;
			vlen = h->len - (uint32_t)pl;
			val = p + pl;
			if (vlen > XSIM_VALUE_MAX) return reply(c, h->tx, -E2BIG, NULL, 0);
		}
		struct node *n = tree_find(t, str[0]);
		if (n && h->op == XSIM_XS_MKDIR) return reply(c, h->tx, 0, NULL, 0);
		if (n && !can_write(n, c->domid)) return reply(c, h->tx, -EACCES, NULL, 0);
		if (!n) {
			int r = tree_ensure(t, str[0], c->domid, &n);
			if (r) return reply(c, h->tx, r, NULL, 0);
		}
		if (h->op == XSIM_XS_WRITE) {
			char *v = malloc(vlen + 1);
			if (!v) return reply(c, h->tx, -ENOMEM, NULL, 0);
			memcpy(v, val, vlen);
			v[vlen] = '\0';
			free(n->value);
			n->value = v;
			n->len = vlen;
		}
		note_change(s, tx, str[0], false);
		return reply(c, h->tx, 0, NULL, 0);
	}
	case XSIM_XS_RM: {
		struct node *n = tree_find(t, str[0]);
		if (!n) return reply(c, h->tx, 0, NULL, 0);
		if (!strcmp(str[0], "/")) return reply(c, h->tx, -EINVAL, NULL, 0);
		if (!can_write(n, c->domid)) return reply(c, h->tx, -EACCES, NULL, 0);
		tree_rm(t, str[0]);
		note_change(s, tx, str[0], true);
		return reply(c, h->tx, 0, NULL, 0);
	}
	case XSIM_XS_DIR: {
		struct node *n = tree_find(t, str[0]);
		if (!n) return reply(c, h->tx, -ENOENT, NULL, 0);
		if (!can_read(n, c->domid)) return reply(c, h->tx, -EACCES, NULL, 0);
		char *buf = malloc(XSIM_MSG_MAX);
		if (!buf) return reply(c, h->tx, -ENOMEM, NULL, 0);
		uint32_t off = 0;
		size_t pl = strlen(str[0]);
		bool root = !strcmp(str[0], "/");
		int err = 0;
		for (uint32_t i = 0; i < t->count; i++) {
			const char *cp = t->nodes[i].path;
			if (!path_under(cp, str[0]) || !strcmp(cp, str[0])) continue;
			const char *rest = cp + (root ? 1 : pl + 1);
			if (strchr(rest, '/')) continue;
			size_t l = strlen(rest) + 1;
			if (off + l > XSIM_MSG_MAX - sizeof(struct xsim_hdr)) {
				err = -E2BIG;
				break;
			}
			memcpy(buf + off, rest, l);
			off += (uint32_t)l;
		}
		int r = reply(c, h->tx, err, err ? NULL : buf, err ? 0 : off);
		free(buf);
		return r;
	}
	case XSIM_XS_SETPERMS: {
		struct node *n = tree_find(t, str[0]);
		if (!n) return reply(c, h->tx, -ENOENT, NULL, 0);
		if (c->domid != 0 && n->perms[0].id != c->domid) return reply(c, h->tx, -EACCES, NULL, 0);
		if (ns < 2 || ns - 1 > (int)XSIM_PERMS_MAX) return reply(c, h->tx, -EINVAL, NULL, 0);
		struct perm np[XSIM_PERMS_MAX];
		for (int i = 1; i < ns; i++) {
			char *e;
			char k = str[i][0];
			if (k != 'n' && k != 'r' && k != 'w' && k != 'b') return reply(c, h->tx, -EINVAL, NULL, 0);
			errno = 0;
			unsigned long id = strtoul(str[i] + 1, &e, 10);
			if (errno || e == str[i] + 1 || *e || id > 65535) return reply(c, h->tx, -EINVAL, NULL, 0);
			np[i - 1] = (struct perm){ (uint32_t)id, k };
		}
		memcpy(n->perms, np, sizeof(np));
		n->nperms = (uint32_t)(ns - 1);
		note_change(s, tx, str[0], false);
		return reply(c, h->tx, 0, NULL, 0);
	}
	case XSIM_XS_WATCH: {
		if (ns < 2) return reply(c, h->tx, -EINVAL, NULL, 0);
		for (uint32_t w = 0; w < c->nwatches; w++)
			if (!strcmp(c->watches[w].path, str[0]) && !strcmp(c->watches[w].token, str[1]))
				return reply(c, h->tx, -EEXIST, NULL, 0);
		if (c->nwatches >= XSIM_WATCHES_MAX || strlen(str[1]) > XSIM_PATH_MAX)
			return reply(c, h->tx, -E2BIG, NULL, 0);
		struct watch *w = &c->watches[c->nwatches];
		w->path = strdup(str[0]);
		w->token = strdup(str[1]);
		if (!w->path || !w->token) {
			free(w->path);
			free(w->token);
			return reply(c, h->tx, -ENOMEM, NULL, 0);
		}
		c->nwatches++;
		int r = reply(c, h->tx, 0, NULL, 0);
		/* xenstored fires every new watch once. */
		size_t pl = strlen(w->path) + 1, tl = strlen(w->token) + 1;
		char buf[2 * XSIM_PATH_MAX + 2];
		memcpy(buf, w->path, pl);
		memcpy(buf + pl, w->token, tl);
		send_msg(c->fd, XSIM_EVENT, 0, 0, buf, (uint32_t)(pl + tl), NULL, 0);
		return r;
	}
	case XSIM_XS_UNWATCH: {
		if (ns < 2) return reply(c, h->tx, -EINVAL, NULL, 0);
		for (uint32_t w = 0; w < c->nwatches; w++) {
			if (strcmp(c->watches[w].path, str[0]) || strcmp(c->watches[w].token, str[1])) continue;
			free(c->watches[w].path);
			free(c->watches[w].token);
			c->watches[w] = c->watches[--c->nwatches];
			return reply(c, h->tx, 0, NULL, 0);
		}
		return reply(c, h->tx, -ENOENT, NULL, 0);
	}
	case XSIM_XS_TX_START: {
		int slot = -1;
		for (int i = 0; i < MAX_TX_PER_CLIENT; i++)
			if (!c->tx[i]) slot = i;
		if (slot < 0) return reply(c, 0, -EBUSY, NULL, 0);
		struct txn *nt = calloc(1, sizeof(*nt));
		if (!nt || tree_copy(&s->tree, &nt->tree)) {
			free(nt);
			return reply(c, 0, -ENOMEM, NULL, 0);
		}
		nt->id = ++s->next_tx;
		if (nt->id == 0) nt->id = ++s->next_tx;
		nt->base_gen = s->gen;
		c->tx[slot] = nt;
		return reply(c, 0, 0, &nt->id, sizeof(nt->id));
	}
	case XSIM_XS_TX_END: {
		uint32_t commit;
		if (h->len != sizeof(commit)) return reply(c, h->tx, -EINVAL, NULL, 0);
		memcpy(&commit, p, sizeof(commit));
		int slot = -1;
		for (int i = 0; i < MAX_TX_PER_CLIENT; i++)
			if (c->tx[i] && c->tx[i]->id == h->tx) slot = i;
		if (slot < 0) return reply(c, h->tx, -ENOENT, NULL, 0);
		struct txn *x = c->tx[slot];
		c->tx[slot] = NULL;
		int err = 0;
		if (commit && x->base_gen != s->gen) {
			err = -EAGAIN;
		} else if (commit) {
			tree_free(&s->tree);
			s->tree = x->tree;
			x->tree = (struct tree){ 0 };
			s->gen++;
			for (uint32_t i = 0; i < x->nchanged; i++)
				fire_watches(s, x->changed[i] + 1, x->changed[i][0] == 'R');
			if (x->changed_overflow) fire_watches(s, "/", false);
		}
		tree_free(&x->tree);
		for (uint32_t i = 0; i < x->nchanged; i++) free(x->changed[i]);
		free(x->changed);
		free(x);
		return reply(c, h->tx, err, NULL, 0);
	}
	}
	return reply(c, h->tx, -ENOSYS, NULL, 0);
}

static uint32_t alloc_port(struct server *s, uint32_t domid)
{
	(void)domid;
	/* Ports are unique across the sim (simpler than per domain and still opaque to users). */
	return ++s->next_port[0];
}

static int handle_msg(struct server *s, struct client *c, struct xsim_hdr *h, char *p, int *fds, int nfds)
{
	uint32_t u[2] = { 0, 0 };
	switch (h->op) {
	case XSIM_HELLO:
		if (h->len != 4) return reply(c, 0, -EINVAL, NULL, 0);
		memcpy(&c->domid, p, 4);
		if (c->domid > 0x7FEF) return reply(c, 0, -EINVAL, NULL, 0);
		return reply(c, 0, 0, NULL, 0);
	case XSIM_XS_READ: case XSIM_XS_WRITE: case XSIM_XS_MKDIR: case XSIM_XS_RM: case XSIM_XS_DIR:
	case XSIM_XS_SETPERMS: case XSIM_XS_WATCH: case XSIM_XS_UNWATCH: case XSIM_XS_TX_START:
	case XSIM_XS_TX_END:
		return handle_xs(s, c, h, p);
	case XSIM_GUEST_CREATE: {
		if (nfds != 1 || h->len != 8) return reply(c, 0, -EINVAL, NULL, 0);
		memcpy(u, p, 8);
		if (c->domid == 0 || u[0] == 0 || u[0] > XSIM_GUEST_PAGES_MAX || u[1] == 0 || u[1] > XSIM_GUEST_GRANTS_MAX)
			return reply(c, 0, -EINVAL, NULL, 0);
		if (domain_find(s, c->domid)) return reply(c, 0, -EEXIST, NULL, 0);
		struct stat st;
		if (fstat(fds[0], &st) || (uint64_t)st.st_size < xsim_guest_bytes(u[0], u[1]))
			return reply(c, 0, -EINVAL, NULL, 0);
		struct domain *d = NULL;
		for (int i = 0; i < MAX_DOMAINS && !d; i++)
			if (!s->domains[i].used) d = &s->domains[i];
		if (!d) return reply(c, 0, -ENOSPC, NULL, 0);
		*d = (struct domain){ true, c->domid, fds[0], u[0], u[1], c };
		fds[0] = -1;
		char path[64];
		snprintf(path, sizeof(path), "/local/domain/%u", c->domid);
		struct node *n;
		if (!tree_find(&s->tree, path) && tree_ensure(&s->tree, path, 0, &n) == 0) {
			n->nperms = 1;
			n->perms[0] = (struct perm){ c->domid, 'n' };
			s->gen++;
			fire_watches(s, path, false);
		}
		fire_watches(s, "@introduceDomain", false);
		return reply(c, 0, 0, NULL, 0);
	}
	case XSIM_GUEST_MEM: {
		if (h->len != 4) return reply(c, 0, -EINVAL, NULL, 0);
		memcpy(u, p, 4);
		struct domain *d = domain_find(s, u[0]);
		if (!d) return reply(c, 0, -ESRCH, NULL, 0);
		uint32_t info[2] = { d->npages, d->ngrants };
		return send_msg(c->fd, XSIM_REPLY, 0, 0, info, sizeof(info), &d->memfd, 1);
	}
	case XSIM_EVT_ALLOC: {
		if (nfds != 2 || h->len != 4) return reply(c, 0, -EINVAL, NULL, 0);
		memcpy(u, p, 4);
		struct channel *ch = NULL;
		for (int i = 0; i < MAX_CHANNELS && !ch; i++)
			if (!s->channels[i].used) ch = &s->channels[i];
		if (!ch) return reply(c, 0, -ENOSPC, NULL, 0);
		*ch = (struct channel){ true, c->domid, alloc_port(s, c->domid), u[0], false, 0, fds[0], fds[1], NULL };
		fds[0] = fds[1] = -1;
		return reply(c, 0, 0, &ch->alloc_port, 4);
	}
	case XSIM_EVT_BIND: {
		if (h->len != 8) return reply(c, 0, -EINVAL, NULL, 0);
		memcpy(u, p, 8);
		for (int i = 0; i < MAX_CHANNELS; i++) {
			struct channel *ch = &s->channels[i];
			if (!ch->used || ch->alloc_domid != u[0] || ch->alloc_port != u[1]) continue;
			if (ch->remote_domid != c->domid) return reply(c, 0, -EPERM, NULL, 0);
			if (ch->bound) return reply(c, 0, -EBUSY, NULL, 0);
			ch->bound = true;
			ch->binder = c;
			ch->bind_port = alloc_port(s, c->domid);
			int f[2] = { ch->fd_alloc_rx, ch->fd_bind_rx };
			return send_msg(c->fd, XSIM_REPLY, 0, 0, &ch->bind_port, 4, f, 2);
		}
		return reply(c, 0, -EINVAL, NULL, 0);
	}
	case XSIM_EVT_CLOSE: {
		if (h->len != 4) return reply(c, 0, -EINVAL, NULL, 0);
		memcpy(u, p, 4);
		for (int i = 0; i < MAX_CHANNELS; i++) {
			struct channel *ch = &s->channels[i];
			if (!ch->used) continue;
			if (ch->alloc_domid == c->domid && ch->alloc_port == u[0]) {
				close(ch->fd_alloc_rx);
				close(ch->fd_bind_rx);
				ch->used = false;
				return reply(c, 0, 0, NULL, 0);
			}
			if (ch->bound && ch->remote_domid == c->domid && ch->bind_port == u[0]) {
				/* The backend unbinding: the frontend may let it rebind (reconnect). */
				ch->bound = false;
				ch->binder = NULL;
				return reply(c, 0, 0, NULL, 0);
			}
		}
		return reply(c, 0, -EINVAL, NULL, 0);
	}
	case XSIM_SHUTDOWN:
		s->stop = true;
		return reply(c, 0, 0, NULL, 0);
	}
	return reply(c, h->tx, -ENOSYS, NULL, 0);
}

/* Reads one message; returns 0, or -errno to drop the client. */
static int client_read(struct server *s, struct client *c)
{
	static char buf[XSIM_MSG_MAX];
	char cbuf[CMSG_SPACE(sizeof(int) * XSIM_FDS_MAX)];
	struct iovec iov = { buf, sizeof(buf) };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
	ssize_t n = recvmsg(c->fd, &m, MSG_CMSG_CLOEXEC);
	if (n < 0) return errno == EINTR || errno == EAGAIN ? 0 : -errno;
	if (n == 0) return -ECONNRESET;
	int fds[XSIM_FDS_MAX] = { -1, -1, -1, -1 }, nfds = xsim_take_fds(&m, fds);
	int r = 0;
	struct xsim_hdr h;
	if ((size_t)n < sizeof(h) || (m.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
		r = -EPROTO;
	} else {
		memcpy(&h, buf, sizeof(h));
		if (h.len != (size_t)n - sizeof(h)) r = -EPROTO;
		else r = handle_msg(s, c, &h, buf + sizeof(h), fds, nfds);
		if (r == -EAGAIN || r == -ENOBUFS) r = 0; /* reply lost: client is not reading */
	}
	for (int i = 0; i < nfds; i++)
		if (fds[i] >= 0) close(fds[i]);
	return r;
}

int xensim_server_run(const char *socket_path, int ready_fd)
{
	struct server *s = calloc(1, sizeof(*s));
	if (!s) return -ENOMEM;
	int r = 0;
	struct node *n;
	if (tree_add(&s->tree, "/", NULL, 0) || tree_ensure(&s->tree, "/local/domain/0", 0, &n) ||
	    tree_ensure(&s->tree, "/tool", 0, &n)) {
		r = -ENOMEM;
		goto out;
	}
	int lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (lfd < 0) {
		r = log_error(-errno, "xensim: socket: %s", strerror(errno));
		goto out;
	}
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	if (strlen(socket_path) >= sizeof(a.sun_path)) {
		close(lfd);
		r = log_error(-ENAMETOOLONG, "xensim: socket path too long: %s", socket_path);
		goto out;
	}
	strcpy(a.sun_path, socket_path);
	unlink(socket_path);
	if (bind(lfd, (struct sockaddr *)&a, sizeof(a)) || listen(lfd, 64)) {
		r = log_error(-errno, "xensim: bind %s: %s", socket_path, strerror(errno));
		close(lfd);
		goto out;
	}
	signal(SIGPIPE, SIG_IGN);
	if (ready_fd >= 0) {
		(void)!write(ready_fd, "r", 1);
		close(ready_fd);
	}
	while (!s->stop) {
		struct pollfd pfd[MAX_CLIENTS + 1];
		int idx[MAX_CLIENTS + 1];
		int np = 0;
		pfd[np] = (struct pollfd){ lfd, POLLIN, 0 };
		idx[np++] = -1;
		for (int i = 0; i < MAX_CLIENTS; i++) {
			if (!s->clients[i]) continue;
			pfd[np] = (struct pollfd){ s->clients[i]->fd, POLLIN, 0 };
			idx[np++] = i;
		}
		if (poll(pfd, np, -1) < 0) {
			if (errno == EINTR) continue;
			r = -errno;
			break;
		}
		for (int k = 1; k < np; k++) {
			if (!pfd[k].revents || !s->clients[idx[k]]) continue;
			if (client_read(s, s->clients[idx[k]]) < 0) client_free(s, idx[k]);
		}
		if (pfd[0].revents & POLLIN) {
			int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
			if (cfd < 0) continue;
			int slot = -1;
			for (int i = 0; i < MAX_CLIENTS && slot < 0; i++)
				if (!s->clients[i]) slot = i;
			struct client *c = slot >= 0 ? calloc(1, sizeof(*c)) : NULL;
			if (!c) {
				close(cfd);
				continue;
			}
			c->fd = cfd;
			s->clients[slot] = c;
		}
	}
	for (int i = 0; i < MAX_CLIENTS; i++)
		if (s->clients[i]) client_free(s, i);
	close(lfd);
	unlink(socket_path);
out:
	tree_free(&s->tree);
	free(s);
	return r;
}
