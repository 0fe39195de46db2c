/* ext4_apply against an in-memory model of the OCI layer semantics: random layers of files,
 * directories, symlinks, hard links (also to lower layers' inodes), whiteouts and opaque markers
 * over a small name space (so entries replace each other all the time: file <-> directory, a
 * directory with children by a file, a link by another...).  After each layer the exported
 * filesystem must be e2fsck-clean and hold exactly the model's tree: types, file contents,
 * symlink targets, hard-link groups and link counts (files and directories).
 * Replay a run with OCIBLK_SEED. */
#include "tests/unit/test-ext4-apply-util.h"

#define DEV_BYTES (64ull << 20)
#define LAYERS 4
#define OPS_PER_LAYER 120
#define MAX_NODES 512
#define RUNS 4

struct mnode {
	char path[64];
	char type;       /* 'f', 'd', 'l' */
	int inode;       /* 'f'/'l': index into inodes (hard links share it) */
};
struct minode {
	char content[48]; /* file data or symlink target */
	char type;
};

static struct mnode nodes[MAX_NODES];
static int nnodes;
static struct minode inodes[LAYERS * OPS_PER_LAYER + 8];
static int ninodes;
static char upper[MAX_NODES * 2][64];
static int nupper;

static int m_find(const char *p)
{
	for (int i = 0; i < nnodes; i++)
		if (!strcmp(nodes[i].path, p)) return i;
	return -1;
}

static int under(const char *p, const char *dir)
{
	size_t n = strlen(dir);
	return !strncmp(p, dir, n) && p[n] == '/';
}

static void m_remove_tree(const char *p)
{
	char q[64];
	snprintf(q, sizeof q, "%s", p);
	for (int i = 0; i < nnodes;) {
		if (!strcmp(nodes[i].path, q) || under(nodes[i].path, q)) nodes[i] = nodes[--nnodes];
		else i++;
	}
}

static void m_add(const char *p, char type, int inode)
{
	if (nnodes == MAX_NODES) return;
	snprintf(nodes[nnodes].path, sizeof nodes[nnodes].path, "%s", p);
	nodes[nnodes].type = type;
	nodes[nnodes].inode = inode;
	nnodes++;
}

static int in_upper(const char *p)
{
	for (int i = 0; i < nupper; i++)
		if (!strcmp(upper[i], p)) return 1;
	return 0;
}

static void mark_upper(const char *p)
{
	char q[64];
	snprintf(q, sizeof q, "%s", p);
	for (;;) {
		if (!in_upper(q) && nupper < (int)(sizeof(upper) / sizeof(upper[0]))) snprintf(upper[nupper++], 64, "%s", q);
		char *s = strrchr(q, '/');
		if (!s) break;
		*s = '\0';
	}
}

/* umoci's whiteout walk: remove what this layer did not write, descend into what it did. */
static void m_walk(const char *p)
{
	int i = m_find(p);
	if (i < 0) return;
	if (!in_upper(p)) {
		m_remove_tree(p);
		return;
	}
	if (nodes[i].type != 'd') return;
	char kids[MAX_NODES][64];
	int nk = 0;
	for (int j = 0; j < nnodes; j++)
		if (under(nodes[j].path, p) && !strchr(nodes[j].path + strlen(p) + 1, '/')) memcpy(kids[nk++], nodes[j].path, 64);
	for (int k = 0; k < nk; k++) m_walk(kids[k]);
}

/* Parents of p: 0 when all are directories or missing (missing ones get created). */
static int parents_ok(const char *p)
{
	char q[64];
	snprintf(q, sizeof q, "%s", p);
	for (char *s = strrchr(q, '/'); s; s = strrchr(q, '/')) {
		*s = '\0';
		int i = m_find(q);
		if (i >= 0 && nodes[i].type != 'd') return 0;
	}
	return 1;
}

static void m_mkparents(const char *p)
{
	char q[64];
	for (const char *s = strchr(p, '/'); s; s = strchr(s + 1, '/')) {
		snprintf(q, sizeof q, "%.*s", (int)(s - p), p);
		if (m_find(q) < 0) m_add(q, 'd', -1);
	}
}

static void random_path(uint64_t *s, char *out)
{
	unsigned r = (unsigned)(tap_rand(s) % 100);
	int depth = r < 10 ? 1 : r < 40 ? 2 : 3, o = 0;
	for (int d = 0; d < depth; d++) {
		if (d) out[o++] = '/';
		out[o++] = (char)('a' + tap_rand(s) % 5);
	}
	out[o] = '\0';
}

static void build_layer(uint64_t *s, struct tarbuf *t)
{
	nupper = 0;
	tar_begin(t);
	for (int op = 0; op < OPS_PER_LAYER; op++) {
		char p[64], name[80];
		unsigned kind = (unsigned)(tap_rand(s) % 100);
		random_path(s, p);
		if (kind < 80) {
			/* file, directory, symlink or hard link at p */
			if (!parents_ok(p)) continue;
			char type = kind < 40 ? 'f' : kind < 58 ? 'd' : kind < 66 ? 'l' : 'h';
			if (!strchr(p, '/') && tap_rand(s) % 4) type = 'd'; /* keep most top-level names directories */
			char tpath[64] = "";
			int tinode = -1;
			if (type == 'h') {
				int cands[MAX_NODES], nc = 0;
				for (int i = 0; i < nnodes; i++)
					if (nodes[i].type != 'd' && strcmp(nodes[i].path, p) && !under(nodes[i].path, p)) cands[nc++] = i;
				if (!nc) continue;
				int ti = cands[tap_rand(s) % (uint64_t)nc];
				snprintf(tpath, sizeof tpath, "%s", nodes[ti].path);
				tinode = nodes[ti].inode;
			}
			int ex = m_find(p);
			if (!(ex >= 0 && nodes[ex].type == 'd' && type == 'd')) {
				if (ex >= 0) m_remove_tree(p);
				m_mkparents(p);
				if (type == 'd') {
					m_add(p, 'd', -1);
				} else if (type == 'h') {
					m_add(p, inodes[tinode].type, tinode);
				} else {
					struct minode *in = &inodes[ninodes];
					in->type = type;
					snprintf(in->content, sizeof in->content, "%c%d-%llu", type, ninodes,
						 (unsigned long long)(tap_rand(s) % 100000));
					m_add(p, type, ninodes++);
				}
			} else {
				m_mkparents(p);
			}
			if (type == 'd') {
				tar_add(t, &(struct tar_spec){ .path = p, .type = AE_IFDIR, .perm = 0755 });
			} else if (type == 'f') {
				const char *c = inodes[ninodes - 1].content;
				tar_add(t, &(struct tar_spec){ .path = p, .data = c, .len = strlen(c) });
			} else if (type == 'l') {
				tar_add(t, &(struct tar_spec){ .path = p, .type = AE_IFLNK, .link = inodes[ninodes - 1].content });
			} else {
				tar_add(t, &(struct tar_spec){ .path = p, .hardlink = tpath });
			}
			mark_upper(p);
		} else if (kind < 94) {
			/* whiteout of an existing path (or of a missing one now and then) */
			if (nnodes && tap_rand(s) % 4) snprintf(p, sizeof p, "%s", nodes[tap_rand(s) % (uint64_t)nnodes].path);
			if (!parents_ok(p)) continue;
			char *sl = strrchr(p, '/');
			if (sl) snprintf(name, sizeof name, "%.*s/.wh.%s", (int)(sl - p), p, sl + 1);
			else snprintf(name, sizeof name, ".wh.%s", p);
			tar_add(t, &(struct tar_spec){ .path = name });
			char parent[64];
			snprintf(parent, sizeof parent, "%.*s", sl ? (int)(sl - p) : 0, p);
			if (!*parent || m_find(parent) >= 0) m_walk(p);
		} else {
			/* opaque marker in an existing directory */
			int dirs[MAX_NODES], nd = 0;
			for (int i = 0; i < nnodes; i++)
				if (nodes[i].type == 'd') dirs[nd++] = i;
			if (!nd) continue;
			char d[64];
			snprintf(d, sizeof d, "%s", nodes[dirs[tap_rand(s) % (uint64_t)nd]].path);
			snprintf(name, sizeof name, "%s/.wh..wh..opq", d);
			tar_add(t, &(struct tar_spec){ .path = name });
			char kids[MAX_NODES][64];
			int nk = 0;
			for (int j = 0; j < nnodes; j++)
				if (under(nodes[j].path, d) && !strchr(nodes[j].path + strlen(d) + 1, '/'))
					memcpy(kids[nk++], nodes[j].path, 64);
			for (int k = 0; k < nk; k++) m_walk(kids[k]);
		}
	}
	tar_end(t);
}

/* ---------------------------------------------------------------- the filesystem's tree ----- */

struct fsnode {
	char path[64];
	ext2_ino_t ino;
	char type;
	unsigned links;
	char content[64];
	unsigned subdirs;
};
static struct fsnode fsn[MAX_NODES * 2];
static int nfsn, fs_errors;

struct walk_ctx {
	ext2_filsys fs;
	const char *dir;
	char names[MAX_NODES][64];
	ext2_ino_t inos[MAX_NODES];
	int n;
};

static int walk_cb(ext2_ino_t d, int entry, struct ext2_dir_entry *de, int off, int bs, char *buf, void *priv)
{
	struct walk_ctx *w = priv;
	int len = ext2fs_dirent_name_len(de);
	if (entry == DIRENT_DOT_FILE || entry == DIRENT_DOT_DOT_FILE || !de->inode) return 0;
	if (w->n == MAX_NODES || len > 60) {
		fs_errors++;
		return DIRENT_ABORT;
	}
	snprintf(w->names[w->n], 64, "%.*s", len, de->name);
	w->inos[w->n++] = de->inode;
	return 0;
}

static unsigned fs_walk(ext2_filsys fs, ext2_ino_t dir, const char *path)
{
	struct walk_ctx *w = calloc(1, sizeof(*w));
	unsigned subdirs = 0;
	w->fs = fs;
	if (ext2fs_dir_iterate2(fs, dir, 0, NULL, walk_cb, w)) fs_errors++;
	for (int i = 0; i < w->n; i++) {
		char p[64];
		struct ext2_inode_large in;
		if (!*path && !strcmp(w->names[i], "lost+found")) {
			subdirs++;
			continue;
		}
		snprintf(p, sizeof p, "%s%s%s", path, *path ? "/" : "", w->names[i]);
		if (nfsn == MAX_NODES * 2 || ext2fs_read_inode_full(fs, w->inos[i], (struct ext2_inode *)&in, sizeof in)) {
			fs_errors++;
			continue;
		}
		struct fsnode *f = &fsn[nfsn++];
		memset(f, 0, sizeof(*f));
		snprintf(f->path, sizeof f->path, "%s", p);
		f->ino = w->inos[i];
		f->links = in.i_links_count;
		if (LINUX_S_ISDIR(in.i_mode)) {
			f->type = 'd';
			subdirs++;
			f->subdirs = fs_walk(fs, w->inos[i], f->path);
		} else if (LINUX_S_ISLNK(in.i_mode)) {
			f->type = 'l';
			if (check_symlink(fs, p, f->content, sizeof f->content)) fs_errors++;
		} else {
			f->type = 'f';
			long n = check_read(fs, p, f->content, sizeof f->content - 1);
			if (n < 0) fs_errors++;
			else f->content[n] = '\0';
		}
	}
	free(w);
	return subdirs;
}

static int compare(ext2_filsys fs, int layer)
{
	int bad = 0;
	nfsn = 0;
	fs_errors = 0;
	unsigned root_subdirs = fs_walk(fs, EXT2_ROOT_INO, "");
	struct ext2_inode root;
	if (ext2fs_read_inode(fs, EXT2_ROOT_INO, &root) || root.i_links_count != 2 + root_subdirs) {
		tap_diag("layer %d: root has %u links, %u subdirectories", layer, root.i_links_count, root_subdirs);
		bad++;
	}
	if (nfsn != nnodes) {
		tap_diag("layer %d: filesystem has %d entries, model %d", layer, nfsn, nnodes);
		bad++;
	}
	for (int i = 0; i < nnodes; i++) {
		struct fsnode *f = NULL;
		for (int j = 0; j < nfsn; j++)
			if (!strcmp(fsn[j].path, nodes[i].path)) f = &fsn[j];
		if (!f) {
			tap_diag("layer %d: %s missing", layer, nodes[i].path);
			bad++;
			continue;
		}
		if (f->type != nodes[i].type) {
			tap_diag("layer %d: %s is '%c', model '%c'", layer, f->path, f->type, nodes[i].type);
			bad++;
			continue;
		}
		if (f->type == 'd') {
			if (f->links != 2 + f->subdirs) {
				tap_diag("layer %d: dir %s has %u links, %u subdirs", layer, f->path, f->links, f->subdirs);
				bad++;
			}
			continue;
		}
		if (strcmp(f->content, inodes[nodes[i].inode].content)) {
			tap_diag("layer %d: %s holds '%s', model '%s'", layer, f->path, f->content, inodes[nodes[i].inode].content);
			bad++;
		}
		unsigned group = 0;
		for (int k = 0; k < nnodes; k++) {
			if (nodes[k].inode != nodes[i].inode || nodes[k].type == 'd') continue;
			group++;
			for (int j = 0; j < nfsn; j++)
				if (!strcmp(fsn[j].path, nodes[k].path) && fsn[j].ino != f->ino) {
					tap_diag("layer %d: %s and %s should share an inode", layer, f->path, nodes[k].path);
					bad++;
				}
		}
		if (f->links != group) {
			tap_diag("layer %d: %s has %u links, model %u", layer, f->path, f->links, group);
			bad++;
		}
	}
	for (int j = 0; j < nfsn; j++)
		if (m_find(fsn[j].path) < 0) {
			tap_diag("layer %d: %s should not exist", layer, fsn[j].path);
			bad++;
		}
	return bad + fs_errors;
}

static void run(uint64_t *s, int n, struct layer_store *store)
{
	const char *none[1] = { NULL };
	struct cow_device *d;
	char img[1024], digest[SHA256_DIGEST_STRLEN];

	nnodes = ninodes = 0;
	if (cow_device_open_scratch(store, none, 0, DEV_BYTES, &d)) {
		TAP_OK(0, "run %d: scratch device", n);
		return;
	}
	snprintf(img, sizeof img, "%s/model-%d.img", tap_tmpdir(), n);
	for (int l = 0; l < LAYERS; l++) {
		struct tarbuf t;
		build_layer(s, &t);
		int r = apply_layer(d, &t, l == 0, "model layer");
		tar_free(&t);
		TAP_IS(r, 0, "run %d layer %d: applied", n, l);
		if (r) break;
		if (cow_device_commit_layer(d, digest) || export_raw(d, img)) {
			TAP_OK(0, "run %d layer %d: commit and export", n, l);
			break;
		}
		TAP_IS(run_e2fsck(img), 0, "run %d layer %d: e2fsck -fn clean", n, l);
		ext2_filsys fs = check_open(img);
		TAP_OK(fs && compare(fs, l) == 0, "run %d layer %d: filesystem equals the model (%d entries)", n, l, nnodes);
		if (fs) ext2fs_close(fs);
	}
	cow_device_close(d);
}

int main(void)
{
	uint64_t s = tap_seed();
	struct layer_store *store;
	char root[1024];

	if (!e2fsck_path()) tap_skip_all("e2fsck not installed");
	snprintf(root, sizeof root, "%s/store", tap_tmpdir());
	TAP_IS(layer_store_open(root, LAYER_STORE_CREATE, &store), 0, "store");
	for (int n = 0; n < RUNS; n++) run(&s, n, store);
	layer_store_close(store);
	return tap_done();
}
