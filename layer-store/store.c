/* The store: its directory, its lock, names, layer paths, and the image / container / chain-id
 * records (JSON via json-c).
 *
 * Layout under root (FORMAT.md has the details):
 *   lock                         flock'ed for every mutation (recursive within one handle)
 *   layers/<hex>                 layer files, named after the sha256 of their whole content
 *   tmp/                         temp files and directories (layer writers, removals in flight)
 *   images/<enc-name>.json       image records
 *   containers/<enc-name>/       config.json (the record), lock, and cow/'s upper files
 *   chains/<hex>                 chain-id records
 * Invariants: every record is written with vfs_write_file_atomic (temp, fsync, rename, fsync dir);
 * a container directory appears and disappears with one rename; records are parsed as untrusted
 * input (a malformed record is -EIO, logged, never a crash). */
#include "layer-store/layer_store_private.h"

#include "common/checked.h"
#include "common/log.h"
#include "common/vfs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define RECORD_VERSION 1

/* ---------------------------------------------------------------- helpers ----------------- */

int ls_path(const struct layer_store *store, char *out, size_t out_len, const char *fmt, ...)
{
	char sub[OCIBLK_PATH_MAX];
	va_list ap;
	int n;
	va_start(ap, fmt);
	n = vsnprintf(sub, sizeof sub, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof sub) return log_error(-ENAMETOOLONG, "store path: too long");
	n = snprintf(out, out_len, "%s/%s", store->root, sub);
	if (n < 0 || (size_t)n >= out_len) return log_error(-ENAMETOOLONG, "store path %s/%s: too long", store->root, sub);
	return 0;
}

int ls_is_hex64(const char *s)
{
	for (int i = 0; i < SHA256_HEX_LEN; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
	return s[SHA256_HEX_LEN] == 0;
}

static int name_char_ok(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '.' || c == '_' || c == ':' || c == '/' || c == '@' || c == '+' || c == '-';
}

/* Characters kept as they are in file names; everything else becomes %XX. */
static int file_char_ok(char c) { return name_char_ok(c) && c != '/'; }

int ls_name_encode(const char *name, char *out, size_t out_len)
{
	size_t o = 0;
	for (const char *p = name; *p; p++) {
		if (o + 4 > out_len) return log_error(-ENAMETOOLONG, "name %s: too long once encoded", name);
		if (file_char_ok(*p)) out[o++] = *p;
		else o += (size_t)snprintf(out + o, 4, "%%%02X", (unsigned char)*p);
	}
	/* 224 leaves room within NAME_MAX (255) for ".json" and the ".tmp.<pid>.<n>" of an atomic
	 * write: every name with at most 48 '/' fits. */
	if (o > 224) return log_error(-ENAMETOOLONG, "name %s: %zu characters once encoded, above 224", name, o);
	out[o] = 0;
	return 0;
}

static int hexdig(char c)
{
	if (c >= '0' && c <= '9') return c - '0';
	if (c >= 'A' && c <= 'F') return c - 'A' + 10;
	return -1;
}

int ls_name_decode(const char *enc, char *out, size_t out_len)
{
	size_t o = 0;
	for (const char *p = enc; *p; p++) {
		int c = (unsigned char)*p;
		if (o + 1 >= out_len) return -ENAMETOOLONG;
		if (c == '%') {
			int hi = hexdig(p[1]), lo = hi >= 0 ? hexdig(p[2]) : -1;
			if (hi < 0 || lo < 0) return -EINVAL;
			c = hi * 16 + lo;
			p += 2;
		}
		out[o++] = (char)c;
	}
	out[o] = 0;
	return 0;
}

int layer_store_name_validate(const char *kind, const char *name)
{
	size_t n = name ? strlen(name) : 0;
	if (n < 1 || n > OCIBLK_NAME_MAX)
		return log_error(-EINVAL, "%s name \"%s\": must be 1..%u characters", kind, name ? name : "", OCIBLK_NAME_MAX);
	for (size_t i = 0; i < n; i++)
		if (!name_char_ok(name[i]))
			return log_error(-EINVAL, "%s name \"%s\": character %zu is not one of [A-Za-z0-9._:/@+-]", kind, name, i + 1);
	if (name[0] == '.' || name[0] == '/')
		return log_error(-EINVAL, "%s name \"%s\": must not start with '.' or '/'", kind, name);
	if (strstr(name, ".."))
		return log_error(-EINVAL, "%s name \"%s\": must not contain \"..\"", kind, name);
	return 0;
}

int ls_remove_tree(const char *path)
{
	struct stat st;
	if (lstat(path, &st) < 0) return errno == ENOENT ? 0 : -errno;
	if (S_ISDIR(st.st_mode)) {
		DIR *d = opendir(path);
		struct dirent *de;
		int r = 0;
		if (!d) return -errno;
		while ((de = readdir(d))) {
			char sub[OCIBLK_PATH_MAX];
			if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
			if ((size_t)snprintf(sub, sizeof sub, "%s/%s", path, de->d_name) >= sizeof sub) {
				r = -ENAMETOOLONG;
				continue;
			}
			int rr = ls_remove_tree(sub);
			if (rr && !r) r = rr;
		}
		closedir(d);
		if (r) return r;
		return vfs_rmdir(path);
	}
	return vfs_unlink(path);
}

int ls_hold_fd(int fd)
{
	struct stat st;
	int r;
	while ((r = flock(fd, LOCK_SH)) < 0 && errno == EINTR)
		;
	if (r < 0 || fstat(fd, &st) < 0) return -errno;
	return st.st_nlink ? 0 : -ENOENT;
}

int ls_claim(const char *path, int *fd_out)
{
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC), r;
	*fd_out = -1;
	if (fd < 0) return errno == ENOENT ? -ENOENT : 1;
	while ((r = flock(fd, LOCK_EX | LOCK_NB)) < 0 && errno == EINTR)
		;
	if (r < 0) {
		r = errno;
		close(fd);
		return r == EWOULDBLOCK ? 0 : 1;
	}
	*fd_out = fd;
	return 1;
}

/* Makes path and its missing parents; each directory it makes has its entry synced in its parent
 * (a new directory's name is durable only after fsync of the directory holding it). */
static int mkdir_p(const char *path)
{
	char buf[OCIBLK_PATH_MAX];
	size_t n = strlen(path);
	if (n >= sizeof buf) return -ENAMETOOLONG;
	memcpy(buf, path, n + 1);
	for (size_t i = 1; i <= n; i++) {
		if (buf[i] != '/' && buf[i] != 0) continue;
		char c = buf[i];
		buf[i] = 0;
		int r = vfs_mkdir(buf, 0755);
		if (!r) r = vfs_fsync_parent(buf);
		if (r && r != -EEXIST) return r;
		buf[i] = c;
	}
	return 0;
}

/* ---------------------------------------------------------------- store ------------------- */

static const char *const store_dirs[] = { "layers", "tmp", "images", "containers", "chains" };

int layer_store_open(const char *root, unsigned flags, struct layer_store **out)
{
	struct layer_store *s;
	pthread_mutexattr_t attr;
	char p[OCIBLK_PATH_MAX];
	size_t n;
	int r;

	*out = NULL;
	if (!root) root = getenv("OCIBLK_ROOT");
	if (!root || !root[0]) root = LAYER_STORE_DEFAULT_ROOT;
	n = strlen(root);
	while (n > 1 && root[n - 1] == '/') n--;
	if (n + 64 >= OCIBLK_PATH_MAX) return log_error(-ENAMETOOLONG, "open store %s: path too long", root);
	s = calloc(1, sizeof *s);
	if (!s) return -ENOMEM;
	memcpy(s->root, root, n);
	s->root[n] = 0;
	s->lock_fd = -1;

	if (flags & LAYER_STORE_CREATE) {
		r = mkdir_p(s->root);
		if (r) {
			r = log_error(r, "create store %s: %s", s->root, strerror(-r));
			goto fail;
		}
		for (size_t i = 0; i < ARRAY_SIZE(store_dirs); i++) {
			ls_path(s, p, sizeof p, "%s", store_dirs[i]);
			r = vfs_mkdir(p, 0755);
			if (r && r != -EEXIST) {
				r = log_error(r, "create store %s: %s", p, strerror(-r));
				goto fail;
			}
		}
		/* the lock file too, so that its entry is made durable with the subdirectories' (a
		 * reader without write access to the root could not create it after a crash) */
		ls_path(s, p, sizeof p, "lock");
		int lfd = vfs_open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
		if (lfd < 0 && lfd != -EACCES && lfd != -EROFS && lfd != -EPERM) {
			r = log_error(lfd, "create store %s: lock file: %s", s->root, strerror(-lfd));
			goto fail;
		}
		if (lfd >= 0) vfs_close(lfd);
		/* the entries made above: until this returns they may vanish at a crash */
		r = vfs_fsync_dir(s->root);
		if (r) {
			r = log_error(r, "create store %s: sync: %s", s->root, strerror(-r));
			goto fail;
		}
	}
	for (size_t i = 0; i < ARRAY_SIZE(store_dirs); i++) {
		struct stat st;
		ls_path(s, p, sizeof p, "%s", store_dirs[i]);
		if (stat(p, &st) < 0 || !S_ISDIR(st.st_mode)) {
			r = errno == ENOENT || !errno ? -ENOENT : -errno;
			r = log_error(r, "open store %s: %s missing (create the store first)", s->root, store_dirs[i]);
			goto fail;
		}
	}
	ls_path(s, p, sizeof p, "lock");
	s->lock_fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (s->lock_fd < 0 && (errno == EACCES || errno == EROFS || errno == EPERM))
		s->lock_fd = open(p, O_RDONLY | O_CLOEXEC); /* read-only access to the store: flock works too */
	if (s->lock_fd < 0) {
		r = log_error(-errno, "open store %s: lock file: %s", s->root, strerror(errno));
		goto fail;
	}
	pthread_mutexattr_init(&attr);
	pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
	pthread_mutex_init(&s->mutex, &attr);
	pthread_mutexattr_destroy(&attr);
	*out = s;
	return 0;
fail:
	free(s);
	return r;
}

void layer_store_close(struct layer_store *s)
{
	if (!s) return;
	if (s->lock_fd >= 0) close(s->lock_fd);
	pthread_mutex_destroy(&s->mutex);
	free(s);
}

const char *layer_store_root(const struct layer_store *s) { return s->root; }

int layer_store_lock(struct layer_store *s)
{
	pthread_mutex_lock(&s->mutex);
	if (s->lock_depth == 0) {
		int r;
		while ((r = flock(s->lock_fd, LOCK_EX)) < 0 && errno == EINTR)
			;
		if (r < 0) {
			r = -errno;
			pthread_mutex_unlock(&s->mutex);
			return log_error(r, "lock store %s: %s", s->root, strerror(-r));
		}
	}
	s->lock_depth++;
	return 0;
}

void layer_store_unlock(struct layer_store *s)
{
	if (--s->lock_depth == 0) flock(s->lock_fd, LOCK_UN);
	pthread_mutex_unlock(&s->mutex);
}

int layer_store_tmp_path(struct layer_store *s, const char *prefix, char *out, size_t out_len)
{
	static _Atomic unsigned seq;
	uint64_t rnd = 0;
	if (getrandom(&rnd, sizeof rnd, 0) != sizeof rnd) rnd = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 20);
	rnd ^= (uint64_t)seq++ << 48;
	if (!prefix || !prefix[0] || strchr(prefix, '/')) prefix = "tmp";
	int n = snprintf(out, out_len, "%s/tmp/%s.%d.%016llx", s->root, prefix, (int)getpid(), (unsigned long long)rnd);
	if (n < 0 || (size_t)n >= out_len) return log_error(-ENAMETOOLONG, "temp path in %s: too long", s->root);
	return 0;
}

int layer_store_tmp_hold(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC), r;
	if (fd < 0) return log_error(-errno, "hold %s: %s", path, strerror(errno));
	r = ls_hold_fd(fd);
	if (r) {
		close(fd);
		if (r == -ENOENT) return r; /* the caller makes a fresh one */
		return log_error(r, "hold %s: %s", path, strerror(-r));
	}
	return fd;
}

/* ---------------------------------------------------------------- layers ------------------ */

int layer_store_layer_path(struct layer_store *s, const char *digest, char *out, size_t out_len)
{
	if (!digest || sha256_parse_digest(digest, NULL))
		return log_error(-EINVAL, "layer digest \"%s\": not sha256:<64 lowercase hex>", digest ? digest : "");
	return ls_path(s, out, out_len, "layers/%s", digest + 7);
}

int layer_store_layer_exists(struct layer_store *s, const char *digest)
{
	char p[OCIBLK_PATH_MAX];
	struct stat st;
	int r = layer_store_layer_path(s, digest, p, sizeof p);
	if (r) return r;
	if (stat(p, &st) == 0) return S_ISREG(st.st_mode) ? 1 : 0;
	if (errno == ENOENT) return 0;
	return log_error(-errno, "stat layer %s: %s", digest, strerror(errno));
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Lists the entries of root/sub accepted by keep(), sorted; *names is an array of strings. */
static int list_dir(struct layer_store *s, const char *sub, int (*keep)(const char *), char ***names, size_t *count)
{
	char p[OCIBLK_PATH_MAX];
	DIR *d;
	struct dirent *de;
	char **v = NULL;
	size_t n = 0, cap = 0;
	int r = ls_path(s, p, sizeof p, "%s", sub);
	*names = NULL;
	*count = 0;
	if (r) return r;
	d = opendir(p);
	if (!d) return log_error(-errno, "list %s: %s", p, strerror(errno));
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.' || !keep(de->d_name)) continue;
		if (n == cap) {
			char **nv = realloc(v, (cap = cap ? cap * 2 : 32) * sizeof *v);
			if (!nv) goto nomem;
			v = nv;
		}
		if (!(v[n] = strdup(de->d_name))) goto nomem;
		n++;
	}
	closedir(d);
	if (n) qsort(v, n, sizeof *v, cmp_str);
	*names = v;
	*count = n;
	return 0;
nomem:
	closedir(d);
	for (size_t i = 0; i < n; i++) free(v[i]);
	free(v);
	return log_error(-ENOMEM, "list %s: no memory", p);
}

static void free_list(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++) free(v[i]);
	free(v);
}

int layer_store_layer_foreach(struct layer_store *s, int (*fn)(const char *digest, void *opaque), void *opaque)
{
	char **v;
	size_t n;
	int r = list_dir(s, "layers", ls_is_hex64, &v, &n);
	if (r) return r;
	for (size_t i = 0; i < n && !r; i++) {
		char digest[SHA256_DIGEST_STRLEN];
		snprintf(digest, sizeof digest, "sha256:%s", v[i]);
		r = fn(digest, opaque);
	}
	free_list(v, n);
	return r;
}

/* ---------------------------------------------------------------- record JSON ------------- */

static int json_get_u64(struct json_object *o, const char *key, uint64_t *out)
{
	struct json_object *v;
	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int)) return -EIO;
	errno = 0;
	*out = json_object_get_uint64(v);
	if (json_object_get_int64(v) < 0 && *out == 0) return -EIO;
	return 0;
}

static int json_get_i64(struct json_object *o, const char *key, int64_t *out)
{
	struct json_object *v;
	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int)) return -EIO;
	*out = json_object_get_int64(v);
	return 0;
}

static int json_get_str(struct json_object *o, const char *key, char *out, size_t out_len)
{
	struct json_object *v;
	const char *s;
	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string)) return -EIO;
	s = json_object_get_string(v);
	if (strlen(s) >= out_len) return -EIO;
	strcpy(out, s);
	return 0;
}

static int json_get_layers(struct json_object *o, uint32_t *count, char layers[][SHA256_DIGEST_STRLEN])
{
	struct json_object *arr;
	size_t n;
	if (!json_object_object_get_ex(o, "layers", &arr) || !json_object_is_type(arr, json_type_array)) return -EIO;
	n = json_object_array_length(arr);
	if (n < 1 || n > LAYER_CHAIN_MAX) return -EIO;
	for (size_t i = 0; i < n; i++) {
		struct json_object *e = json_object_array_get_idx(arr, i);
		const char *d;
		if (!json_object_is_type(e, json_type_string)) return -EIO;
		d = json_object_get_string(e);
		if (sha256_parse_digest(d, NULL)) return -EIO;
		strcpy(layers[i], d);
	}
	*count = (uint32_t)n;
	return 0;
}

static struct json_object *layers_to_json(uint32_t count, const char layers[][SHA256_DIGEST_STRLEN])
{
	struct json_object *arr = json_object_new_array();
	for (uint32_t i = 0; arr && i < count; i++) json_object_array_add(arr, json_object_new_string(layers[i]));
	return arr;
}

/* Reads and parses a record file: -ENOENT when missing, -EIO (logged) when malformed. */
static int record_load(const char *path, const char *what, struct json_object **out)
{
	char *text = NULL;
	size_t len = 0;
	struct json_tokener *tok;
	struct json_object *o;
	int r = vfs_read_file(path, LAYER_RECORD_BYTES_MAX, &text, &len);
	*out = NULL;
	if (r == -ENOENT) return r;
	if (r) return log_error(r == -EFBIG ? -EIO : r, "read %s %s: %s", what, path, strerror(-r));
	tok = json_tokener_new();
	if (!tok) {
		free(text);
		return -ENOMEM;
	}
	o = json_tokener_parse_ex(tok, text, (int)len);
	if (!o || json_tokener_get_error(tok) != json_tokener_success || tok->char_offset != (int)len ||
	    !json_object_is_type(o, json_type_object)) {
		json_object_put(o);
		o = NULL;
	}
	json_tokener_free(tok);
	free(text);
	if (!o) return log_error(-EIO, "read %s %s: not a JSON object", what, path);
	*out = o;
	return 0;
}

static int record_store(const char *path, const char *what, struct json_object *o)
{
	const char *text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE);
	int r;
	if (!text) return -ENOMEM;
	r = vfs_write_file_atomic(path, text, strlen(text));
	if (r) return log_error(r, "write %s %s: %s", what, path, strerror(-r));
	return 0;
}

static int check_chain_exists(struct layer_store *s, const char *what, const char *name, uint32_t count,
			      const char layers[][SHA256_DIGEST_STRLEN])
{
	if (count < 1 || count > LAYER_CHAIN_MAX)
		return log_error(-EINVAL, "%s %s: %u layers (1..%u allowed)", what, name, count, LAYER_CHAIN_MAX);
	for (uint32_t i = 0; i < count; i++) {
		int r = layer_store_layer_exists(s, layers[i]);
		if (r < 0) return r;
		if (!r) return log_error(-ENOENT, "%s %s: layer %s does not exist", what, name, layers[i]);
	}
	return 0;
}

/* ---------------------------------------------------------------- images ------------------ */

void image_record_clear(struct image_record *rec)
{
	if (!rec) return;
	free(rec->extra_json);
	rec->extra_json = NULL;
}

static int image_path(struct layer_store *s, const char *name, char *out, size_t out_len)
{
	char enc[OCIBLK_NAME_MAX * 3 + 1];
	int r = layer_store_name_validate("image", name);
	if (!r) r = ls_name_encode(name, enc, sizeof enc);
	if (!r) r = ls_path(s, out, out_len, "images/%s.json", enc);
	return r;
}

int layer_store_image_put(struct layer_store *s, const struct image_record *rec)
{
	char path[OCIBLK_PATH_MAX];
	struct json_object *o = NULL, *extra = NULL;
	int r = image_path(s, rec->name, path, sizeof path);
	if (r) return r;
	if (rec->extra_json) {
		size_t n = strlen(rec->extra_json);
		if (n > LAYER_IMAGE_EXTRA_BYTES_MAX)
			return log_error(-EINVAL, "image %s: extra JSON of %zu bytes above %u", rec->name, n, LAYER_IMAGE_EXTRA_BYTES_MAX);
		extra = json_tokener_parse(rec->extra_json);
		if (!extra || !json_object_is_type(extra, json_type_object)) {
			json_object_put(extra);
			return log_error(-EINVAL, "image %s: extra is not a JSON object", rec->name);
		}
	}
	r = layer_store_lock(s);
	if (r) {
		json_object_put(extra);
		return r;
	}
	r = check_chain_exists(s, "image", rec->name, rec->layer_count, rec->layers);
	if (r) goto out;
	o = json_object_new_object();
	json_object_object_add(o, "version", json_object_new_int(RECORD_VERSION));
	json_object_object_add(o, "name", json_object_new_string(rec->name));
	json_object_object_add(o, "size_bytes", json_object_new_uint64(rec->size_bytes));
	json_object_object_add(o, "layers", layers_to_json(rec->layer_count, rec->layers));
	json_object_object_add(o, "created_unix", json_object_new_int64(rec->created_unix));
	if (extra) json_object_object_add(o, "extra", extra);
	extra = NULL;
	r = record_store(path, "image", o);
out:
	layer_store_unlock(s);
	json_object_put(o);
	json_object_put(extra);
	return r;
}

int layer_store_image_get(struct layer_store *s, const char *name, struct image_record *out)
{
	char path[OCIBLK_PATH_MAX];
	struct json_object *o = NULL, *extra;
	int64_t ver;
	int r = image_path(s, name, path, sizeof path);
	memset(out, 0, sizeof *out);
	if (r) return r;
	r = record_load(path, "image", &o);
	if (r) return r;
	if (json_get_i64(o, "version", &ver) || ver != RECORD_VERSION || json_get_str(o, "name", out->name, sizeof out->name) ||
	    strcmp(out->name, name) || json_get_u64(o, "size_bytes", &out->size_bytes) ||
	    json_get_layers(o, &out->layer_count, out->layers) || json_get_i64(o, "created_unix", &out->created_unix)) {
		r = log_error(-EIO, "read image %s: malformed record %s", name, path);
		goto out;
	}
	if (json_object_object_get_ex(o, "extra", &extra)) {
		const char *t = json_object_to_json_string_ext(extra, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
		if (!json_object_is_type(extra, json_type_object) || !t) {
			r = log_error(-EIO, "read image %s: malformed extra", name);
			goto out;
		}
		if (!(out->extra_json = strdup(t))) r = -ENOMEM;
	}
out:
	json_object_put(o);
	if (r) {
		image_record_clear(out);
		memset(out, 0, sizeof *out);
	}
	return r;
}

int layer_store_image_remove(struct layer_store *s, const char *name)
{
	char path[OCIBLK_PATH_MAX], dir[OCIBLK_PATH_MAX];
	int r = image_path(s, name, path, sizeof path);
	if (r) return r;
	r = layer_store_lock(s);
	if (r) return r;
	r = vfs_unlink(path);
	if (r == -ENOENT) r = log_error(-ENOENT, "remove image %s: no such image", name);
	else if (r) r = log_error(r, "remove image %s: %s", name, strerror(-r));
	else if (!(r = ls_path(s, dir, sizeof dir, "images"))) r = vfs_fsync_dir(dir);
	layer_store_unlock(s);
	return r;
}

static int is_image_file(const char *n)
{
	size_t l = strlen(n);
	/* the temps of vfs_write_file_atomic end in ".tmp.<pid>.<n>", never in ".json" */
	return l > 5 && !strcmp(n + l - 5, ".json");
}

/* Container directories are built in tmp/ and renamed in whole: everything here is one. */
static int is_container_dir(const char *n) { (void)n; return 1; }

static int foreach_names(struct layer_store *s, const char *sub, int (*keep)(const char *), size_t strip,
			 int (*fn)(const char *name, void *opaque), void *opaque)
{
	char **v;
	size_t n;
	int r = list_dir(s, sub, keep, &v, &n);
	char **names;
	if (r) return r;
	/* Decode first, then sort by the decoded names. */
	names = calloc(n ? n : 1, sizeof *names);
	if (!names) {
		free_list(v, n);
		return -ENOMEM;
	}
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		char name[OCIBLK_NAME_MAX + 1];
		v[i][strlen(v[i]) - strip] = 0;
		if (ls_name_decode(v[i], name, sizeof name) || layer_store_name_validate("record", name)) {
			log_warn("list %s: ignoring unexpected entry %s", sub, v[i]);
			continue;
		}
		names[k++] = strdup(name);
		if (!names[k - 1]) {
			r = -ENOMEM;
			break;
		}
	}
	free_list(v, n);
	if (!r && k) qsort(names, k, sizeof *names, cmp_str);
	for (size_t i = 0; i < k && !r; i++) r = fn(names[i], opaque);
	free_list(names, k);
	return r;
}

int layer_store_image_foreach(struct layer_store *s, int (*fn)(const char *name, void *opaque), void *opaque)
{
	return foreach_names(s, "images", is_image_file, 5, fn, opaque);
}

/* ---------------------------------------------------------------- containers -------------- */

int layer_store_container_dir(struct layer_store *s, const char *name, char *out, size_t out_len)
{
	char enc[OCIBLK_NAME_MAX * 3 + 1];
	int r = layer_store_name_validate("container", name);
	if (!r) r = ls_name_encode(name, enc, sizeof enc);
	if (!r) r = ls_path(s, out, out_len, "containers/%s", enc);
	return r;
}

static struct json_object *container_to_json(const struct container_record *rec)
{
	struct json_object *o = json_object_new_object();
	json_object_object_add(o, "version", json_object_new_int(RECORD_VERSION));
	json_object_object_add(o, "name", json_object_new_string(rec->name));
	json_object_object_add(o, "image", json_object_new_string(rec->image));
	json_object_object_add(o, "size_bytes", json_object_new_uint64(rec->size_bytes));
	json_object_object_add(o, "layers", layers_to_json(rec->layer_count, rec->layers));
	json_object_object_add(o, "created_unix", json_object_new_int64(rec->created_unix));
	return o;
}

int layer_store_container_create(struct layer_store *s, const char *image, const char *name)
{
	char dir[OCIBLK_PATH_MAX], tmp[OCIBLK_PATH_MAX], p[OCIBLK_PATH_MAX];
	struct image_record img;
	struct container_record rec;
	struct json_object *o = NULL;
	struct stat st;
	int r = layer_store_container_dir(s, name, dir, sizeof dir), fd;
	if (r) return r;
	r = layer_store_lock(s);
	if (r) return r;
	tmp[0] = 0;
	r = layer_store_image_get(s, image, &img);
	if (r) {
		if (r == -ENOENT) r = log_error(-ENOENT, "create container %s: no image %s", name, image);
		goto out;
	}
	if (lstat(dir, &st) == 0) {
		r = log_error(-EEXIST, "create container %s: the name is taken", name);
		goto out;
	}
	memset(&rec, 0, sizeof rec);
	snprintf(rec.name, sizeof rec.name, "%s", name);
	snprintf(rec.image, sizeof rec.image, "%s", image);
	rec.size_bytes = img.size_bytes;
	rec.layer_count = img.layer_count;
	memcpy(rec.layers, img.layers, sizeof rec.layers);
	rec.created_unix = (int64_t)time(NULL);
	r = check_chain_exists(s, "container", name, rec.layer_count, rec.layers);
	if (r) goto out;
	/* Build the directory in tmp/, then publish it with one rename. */
	r = layer_store_tmp_path(s, "container", tmp, sizeof tmp);
	if (r) goto out;
	if ((r = vfs_mkdir(tmp, 0755))) {
		r = log_error(r, "create container %s: %s", name, strerror(-r));
		tmp[0] = 0;
		goto out;
	}
	if ((size_t)snprintf(p, sizeof p, "%s/lock", tmp) >= sizeof p) {
		r = -ENAMETOOLONG;
		goto out;
	}
	fd = vfs_open(p, O_RDWR | O_CREAT, 0644);
	if (fd < 0) {
		r = log_error(fd, "create container %s: lock file: %s", name, strerror(-fd));
		goto out;
	}
	vfs_close(fd);
	if ((size_t)snprintf(p, sizeof p, "%s/config.json", tmp) >= sizeof p) {
		r = -ENAMETOOLONG;
		goto out;
	}
	o = container_to_json(&rec);
	r = record_store(p, "container", o);
	if (r) goto out;
	r = vfs_fsync_dir(tmp);
	if (!r) r = vfs_rename(tmp, dir);
	if (r) {
		r = log_error(r == -ENOTEMPTY ? -EEXIST : r, "create container %s: %s", name, strerror(-r));
		goto out;
	}
	tmp[0] = 0;
	if (!(r = ls_path(s, p, sizeof p, "containers"))) r = vfs_fsync_dir(p);
out:
	if (tmp[0]) ls_remove_tree(tmp);
	json_object_put(o);
	image_record_clear(&img);
	layer_store_unlock(s);
	return r;
}

int layer_store_container_put(struct layer_store *s, const struct container_record *rec)
{
	char dir[OCIBLK_PATH_MAX], p[OCIBLK_PATH_MAX];
	struct json_object *o;
	struct stat st;
	int r = layer_store_container_dir(s, rec->name, dir, sizeof dir);
	if (r) return r;
	if (rec->image[0] && layer_store_name_validate("image", rec->image)) return -EINVAL;
	r = layer_store_lock(s);
	if (r) return r;
	if (stat(dir, &st) < 0) {
		r = log_error(-ENOENT, "write container %s: no such container", rec->name);
		goto out;
	}
	r = check_chain_exists(s, "container", rec->name, rec->layer_count, rec->layers);
	if (r) goto out;
	if ((size_t)snprintf(p, sizeof p, "%s/config.json", dir) >= sizeof p) {
		r = -ENAMETOOLONG;
		goto out;
	}
	o = container_to_json(rec);
	r = record_store(p, "container", o);
	json_object_put(o);
out:
	layer_store_unlock(s);
	return r;
}

int layer_store_container_get(struct layer_store *s, const char *name, struct container_record *out)
{
	char dir[OCIBLK_PATH_MAX], p[OCIBLK_PATH_MAX];
	struct json_object *o = NULL;
	int64_t ver;
	int r = layer_store_container_dir(s, name, dir, sizeof dir);
	memset(out, 0, sizeof *out);
	if (r) return r;
	if ((size_t)snprintf(p, sizeof p, "%s/config.json", dir) >= sizeof p) return -ENAMETOOLONG;
	r = record_load(p, "container", &o);
	if (r) return r;
	if (json_get_i64(o, "version", &ver) || ver != RECORD_VERSION || json_get_str(o, "name", out->name, sizeof out->name) ||
	    strcmp(out->name, name) || json_get_str(o, "image", out->image, sizeof out->image) ||
	    json_get_u64(o, "size_bytes", &out->size_bytes) || json_get_layers(o, &out->layer_count, out->layers) ||
	    json_get_i64(o, "created_unix", &out->created_unix)) {
		memset(out, 0, sizeof *out);
		r = log_error(-EIO, "read container %s: malformed record %s", name, p);
	}
	json_object_put(o);
	return r;
}

int layer_store_container_remove(struct layer_store *s, const char *name)
{
	char dir[OCIBLK_PATH_MAX], tmp[OCIBLK_PATH_MAX], p[OCIBLK_PATH_MAX];
	int r = layer_store_container_dir(s, name, dir, sizeof dir), lock_fd;
	struct stat st;
	if (r) return r;
	r = layer_store_lock(s);
	if (r) return r;
	if (lstat(dir, &st) < 0) {
		r = log_error(-ENOENT, "remove container %s: no such container", name);
		goto out;
	}
	lock_fd = layer_store_container_lock(s, name);
	if (lock_fd < 0) {
		r = lock_fd;
		goto out;
	}
	/* One rename takes it out of the store; the tree is deleted from tmp/ (gc finishes the job
	 * after a crash). */
	r = layer_store_tmp_path(s, "rm-container", tmp, sizeof tmp);
	if (!r) r = vfs_rename(dir, tmp);
	close(lock_fd);
	if (r) {
		r = log_error(r, "remove container %s: %s", name, strerror(-r));
		goto out;
	}
	/* A rename is durable once both directories are synced (the destination first). */
	if (!(r = ls_path(s, p, sizeof p, "tmp"))) r = vfs_fsync_dir(p);
	if (!r && !(r = ls_path(s, p, sizeof p, "containers"))) r = vfs_fsync_dir(p);
	if (r) {
		r = log_error(r, "remove container %s: fsync: %s", name, strerror(-r));
		goto out;
	}
	ls_remove_tree(tmp);
out:
	layer_store_unlock(s);
	return r;
}

int layer_store_container_foreach(struct layer_store *s, int (*fn)(const char *name, void *opaque), void *opaque)
{
	return foreach_names(s, "containers", is_container_dir, 0, fn, opaque);
}

static int container_lock(struct layer_store *s, const char *name, int how);

int layer_store_container_lock(struct layer_store *s, const char *name)
{
	return container_lock(s, name, LOCK_EX);
}

int layer_store_container_lock_shared(struct layer_store *s, const char *name)
{
	return container_lock(s, name, LOCK_SH);
}

static int container_lock(struct layer_store *s, const char *name, int how)
{
	char dir[OCIBLK_PATH_MAX], p[OCIBLK_PATH_MAX];
	int fd, r = layer_store_container_dir(s, name, dir, sizeof dir);
	if (r) return r;
	if ((size_t)snprintf(p, sizeof p, "%s/lock", dir) >= sizeof p) return -ENAMETOOLONG;
	fd = open(p, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		if (r == -ENOENT) return log_error(-ENOENT, "lock container %s: no such container", name);
		return log_error(r, "lock container %s: %s", name, strerror(-r));
	}
	/* Probes (gc sweeping a container's temps, ps, fsck) take this lock for a moment too; every
	 * attempt is made under the store lock, so a probe is never mistaken for a device: an open
	 * racing gc waits for it instead of failing with -EBUSY. */
	r = layer_store_lock(s);
	if (r) {
		close(fd);
		return r;
	}
	while ((r = flock(fd, how | LOCK_NB)) < 0 && errno == EINTR)
		;
	r = r < 0 ? (errno == EWOULDBLOCK ? -EBUSY : -errno) : 0;
	layer_store_unlock(s);
	if (r < 0) {
		close(fd);
		return log_error(r, "lock container %s: %s", name,
				 r != -EBUSY ? strerror(-r) : how == LOCK_SH ? "open read-write by another device" : "in use by another device");
	}
	return fd;
}

int layer_store_container_in_use(struct layer_store *s, const char *name)
{
	char dir[OCIBLK_PATH_MAX], p[OCIBLK_PATH_MAX];
	int fd, r = layer_store_container_dir(s, name, dir, sizeof dir);
	if (r) return r;
	if ((size_t)snprintf(p, sizeof p, "%s/lock", dir) >= sizeof p) return -ENAMETOOLONG;
	fd = open(p, O_RDWR | O_CLOEXEC);
	if (fd < 0) return -errno;
	r = layer_store_lock(s);
	if (!r) {
		while ((r = flock(fd, LOCK_EX | LOCK_NB)) < 0 && errno == EINTR)
			;
		r = r < 0 ? (errno == EWOULDBLOCK ? 1 : -errno) : 0;
		close(fd); /* releases the probe's lock, still under the store lock */
		fd = -1;
		layer_store_unlock(s);
	}
	if (fd >= 0) close(fd);
	return r;
}

/* ---------------------------------------------------------------- chain ids --------------- */

static int chain_path(struct layer_store *s, const char *chain_id, char *out, size_t out_len)
{
	if (!chain_id || sha256_parse_digest(chain_id, NULL))
		return log_error(-EINVAL, "chain id \"%s\": not sha256:<64 lowercase hex>", chain_id ? chain_id : "");
	return ls_path(s, out, out_len, "chains/%s", chain_id + 7);
}

int layer_store_chain_put(struct layer_store *s, const char *chain_id, const char *layer_digest)
{
	char path[OCIBLK_PATH_MAX];
	struct json_object *o;
	int r = chain_path(s, chain_id, path, sizeof path);
	if (r) return r;
	r = layer_store_lock(s);
	if (r) return r;
	r = layer_store_layer_exists(s, layer_digest);
	if (r == 0) r = log_error(-ENOENT, "chain %s: layer %s does not exist", chain_id, layer_digest);
	if (r < 0) goto out;
	o = json_object_new_object();
	json_object_object_add(o, "version", json_object_new_int(RECORD_VERSION));
	json_object_object_add(o, "chain_id", json_object_new_string(chain_id));
	json_object_object_add(o, "layer", json_object_new_string(layer_digest));
	r = record_store(path, "chain", o);
	json_object_put(o);
out:
	layer_store_unlock(s);
	return r;
}

int layer_store_chain_get(struct layer_store *s, const char *chain_id, char layer_digest_out[SHA256_DIGEST_STRLEN])
{
	char path[OCIBLK_PATH_MAX], id[SHA256_DIGEST_STRLEN + 1];
	struct json_object *o;
	int64_t ver;
	int r = chain_path(s, chain_id, path, sizeof path);
	layer_digest_out[0] = 0;
	if (r) return r;
	r = record_load(path, "chain", &o);
	if (r) return r;
	if (json_get_i64(o, "version", &ver) || ver != RECORD_VERSION || json_get_str(o, "chain_id", id, sizeof id) ||
	    strcmp(id, chain_id) || json_get_str(o, "layer", layer_digest_out, SHA256_DIGEST_STRLEN) ||
	    sha256_parse_digest(layer_digest_out, NULL)) {
		layer_digest_out[0] = 0;
		r = log_error(-EIO, "read chain %s: malformed record %s", chain_id, path);
	}
	json_object_put(o);
	if (r) return r;
	r = layer_store_layer_exists(s, layer_digest_out);
	if (r == 1) return 0;
	layer_digest_out[0] = 0;
	return r < 0 ? r : -ENOENT;
}
