/* Unit tests for the store's records: name validation and encoding, image / container /
 * chain-id records round trip, container directory and lock, the store lock, temp paths. */
#include "layer-store/layer_store.h"
#include "common/log.h"
#include "common/vfs.h"
#include "tests/lib/tap.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int make_layer(struct layer_store *s, const char *parent, uint8_t fill, char digest[SHA256_DIGEST_STRLEN])
{
	struct layer_writer_options o = { .virtual_size_bytes = 64 * 4096, .parent_digest = parent };
	struct layer_writer *w;
	uint8_t blk[4096];
	int r = layer_writer_create(s, &o, &w);
	if (r) return r;
	memset(blk, fill, sizeof blk);
	r = layer_writer_add_data(w, fill % 64, blk, 1);
	if (r) {
		layer_writer_abort(w);
		return r;
	}
	return layer_writer_commit(w, digest);
}

struct names {
	char v[8][OCIBLK_NAME_MAX + 1];
	int n;
};

static int collect(const char *name, void *opaque)
{
	struct names *n = opaque;
	if (n->n < 8) snprintf(n->v[n->n], sizeof n->v[0], "%s", name);
	n->n++;
	return 0;
}

int main(void)
{
	struct layer_store *s = NULL, *s2 = NULL;
	char root[512], l1[SHA256_DIGEST_STRLEN], l2[SHA256_DIGEST_STRLEN], got[SHA256_DIGEST_STRLEN], p[4096];
	struct image_record img, back;
	struct container_record c;
	struct names names = { 0 };
	char name129[130];
	int fd;

	tap_seed();
	/* Names. */
	log_set_quiet(1);
	TAP_IS(layer_store_name_validate("image", "docker.io/library/ubuntu:22.04"), 0, "registry reference is a valid name");
	TAP_IS(layer_store_name_validate("image", "a@sha256:00ff+x_y-z"), 0, "digest-ish name is valid");
	TAP_IS(layer_store_name_validate("image", ""), -EINVAL, "empty name rejected");
	TAP_IS(layer_store_name_validate("image", ".hidden"), -EINVAL, "leading dot rejected");
	TAP_IS(layer_store_name_validate("image", "/abs"), -EINVAL, "leading slash rejected");
	TAP_IS(layer_store_name_validate("image", "a/../b"), -EINVAL, "dot-dot rejected");
	TAP_IS(layer_store_name_validate("image", "a b"), -EINVAL, "space rejected");
	TAP_IS(layer_store_name_validate("image", "a%2Fb"), -EINVAL, "percent rejected");
	TAP_IS(layer_store_name_validate("image", "a\nb"), -EINVAL, "newline rejected");
	memset(name129, 'a', 129);
	name129[129] = 0;
	TAP_IS(layer_store_name_validate("image", name129), -EINVAL, "129 characters rejected");
	name129[128] = 0;
	TAP_IS(layer_store_name_validate("image", name129), 0, "128 characters accepted");
	log_set_quiet(0);

	snprintf(root, sizeof root, "%s/store", tap_tmpdir());
	TAP_IS(layer_store_open(root, LAYER_STORE_CREATE, &s), 0, "create store");
	TAP_IS(layer_store_open(root, 0, &s2), 0, "open the existing store again");
	TAP_OK(!strcmp(layer_store_root(s), root), "root path");
	TAP_IS(make_layer(s, NULL, 1, l1), 0, "base layer");
	TAP_IS(make_layer(s, l1, 2, l2), 0, "child layer");

	/* Temp paths. */
	char t1[4096], t2[4096];
	TAP_IS(layer_store_tmp_path(s, "x", t1, sizeof t1), 0, "tmp path");
	layer_store_tmp_path(s, "x", t2, sizeof t2);
	snprintf(p, sizeof p, "%s/tmp/x.", root);
	TAP_OK(!strncmp(t1, p, strlen(p)) && strcmp(t1, t2), "tmp paths are under tmp/ and distinct");

	/* Images. */
	memset(&img, 0, sizeof img);
	snprintf(img.name, sizeof img.name, "docker.io/library/busybox:latest");
	img.size_bytes = 64 * 4096;
	img.layer_count = 2;
	strcpy(img.layers[0], l1);
	strcpy(img.layers[1], l2);
	img.created_unix = 1700000000;
	img.extra_json = strdup("{\"config\":\"sha256:abc\",\"n\":[1,2]}");
	TAP_IS(layer_store_image_put(s, &img), 0, "image put");
	TAP_IS(layer_store_image_get(s2, img.name, &back), 0, "image get (other handle)");
	TAP_OK(!strcmp(back.name, img.name) && back.size_bytes == img.size_bytes && back.layer_count == 2 &&
	       !strcmp(back.layers[0], l1) && !strcmp(back.layers[1], l2) && back.created_unix == img.created_unix,
	       "image record round trips");
	TAP_OK(back.extra_json && strstr(back.extra_json, "\"config\"") && strstr(back.extra_json, "sha256:abc"),
	       "image extra JSON round trips: %s", back.extra_json ? back.extra_json : "(null)");
	image_record_clear(&back);
	TAP_IS(layer_store_image_foreach(s, collect, &names), 0, "image foreach");
	TAP_OK(names.n == 1 && !strcmp(names.v[0], img.name), "foreach gives the decoded name");
	snprintf(p, sizeof p, "%s/images/docker.io%%2Flibrary%%2Fbusybox:latest.json", root);
	TAP_OK(access(p, F_OK) == 0, "record file name is percent-encoded");

	log_set_quiet(1);
	struct image_record bad = img;
	bad.extra_json = NULL;
	strcpy(bad.layers[1], "sha256:1111111111111111111111111111111111111111111111111111111111111111");
	TAP_IS(layer_store_image_put(s, &bad), -ENOENT, "image put with a missing layer rejected");
	bad.layer_count = 0;
	TAP_IS(layer_store_image_put(s, &bad), -EINVAL, "image put with no layers rejected");
	bad = img;
	bad.extra_json = (char *)"[1,2]";
	TAP_IS(layer_store_image_put(s, &bad), -EINVAL, "image put with non-object extra rejected");
	strcpy(bad.name, "bad name");
	bad.extra_json = NULL;
	TAP_IS(layer_store_image_put(s, &bad), -EINVAL, "image put with a bad name rejected");
	TAP_IS(layer_store_image_get(s, "nope", &back), -ENOENT, "image get of a missing image is -ENOENT");
	{
		/* 80 'a' and 48 '/' (128 characters): 224 bytes once encoded, the most that fits */
		char deep[130], slashes[130];
		size_t k = 0;
		for (int i = 0; i < 49; i++) {
			deep[k++] = 'a';
			if (i < 48) deep[k++] = '/';
		}
		for (int i = 0; i < 31; i++) deep[k++] = 'b';
		deep[k] = 0;
		struct image_record d = img;
		d.extra_json = NULL;
		memcpy(d.name, deep, strlen(deep) + 1);
		TAP_IS(layer_store_image_put(s, &d), 0, "a 128-character name with 48 slashes works");
		TAP_IS(layer_store_image_get(s, deep, &back), 0, "and reads back");
		TAP_IS(layer_store_image_remove(s, deep), 0, "and is removed");
		/* 'a' and 127 slashes: 382 bytes once encoded: refused, documented */
		slashes[0] = 'a';
		memset(slashes + 1, '/', 127);
		slashes[128] = 0;
		memcpy(d.name, slashes, strlen(slashes) + 1);
		TAP_IS(layer_store_image_put(s, &d), -ENAMETOOLONG, "a name too long once encoded is -ENAMETOOLONG");
	}
	/* A malformed record file is -EIO, not a crash. */
	snprintf(p, sizeof p, "%s/images/broken.json", root);
	const char *broken = "{\"version\":1,\"name\":\"broken\",\"layers\":\"x\"}";
	vfs_write_file_atomic(p, broken, strlen(broken));
	TAP_IS(layer_store_image_get(s, "broken", &back), -EIO, "malformed image record is -EIO");
	vfs_write_file_atomic(p, "{\"version\":1,", 13);
	TAP_IS(layer_store_image_get(s, "broken", &back), -EIO, "truncated image record is -EIO");
	unlink(p);
	log_set_quiet(0);

	/* Containers. */
	TAP_IS(layer_store_container_create(s, img.name, "web/1"), 0, "container create");
	log_set_quiet(1);
	TAP_IS(layer_store_container_create(s, img.name, "web/1"), -EEXIST, "container create twice is -EEXIST");
	TAP_IS(layer_store_container_create(s, "no-such-image", "web2"), -ENOENT, "container from a missing image is -ENOENT");
	log_set_quiet(0);
	TAP_IS(layer_store_container_get(s, "web/1", &c), 0, "container get");
	TAP_OK(!strcmp(c.name, "web/1") && !strcmp(c.image, img.name) && c.layer_count == 2 && !strcmp(c.layers[1], l2) &&
	       c.size_bytes == img.size_bytes && c.created_unix > 0, "container record copies the image chain");
	TAP_IS(layer_store_container_dir(s, "web/1", p, sizeof p), 0, "container dir");
	struct stat st;
	TAP_OK(stat(p, &st) == 0 && S_ISDIR(st.st_mode), "container dir exists");
	fd = layer_store_container_lock(s, "web/1");
	TAP_OK(fd >= 0, "container lock");
	log_set_quiet(1);
	TAP_IS(layer_store_container_lock(s2, "web/1"), -EBUSY, "second container lock is -EBUSY");
	TAP_IS(layer_store_container_remove(s, "web/1"), -EBUSY, "removing a locked container is -EBUSY");
	log_set_quiet(0);
	close(fd);
	fd = layer_store_container_lock(s2, "web/1");
	TAP_OK(fd >= 0, "lock again after release");
	close(fd);
	c.layer_count = 1;
	TAP_IS(layer_store_container_put(s, &c), 0, "container put");
	memset(&c, 0, sizeof c);
	TAP_IS(layer_store_container_get(s, "web/1", &c), 0, "container get after put");
	TAP_OK(c.layer_count == 1 && !strcmp(c.layers[0], l1), "container put round trips");
	names.n = 0;
	TAP_IS(layer_store_container_create(s, img.name, "a-first"), 0, "second container");
	TAP_IS(layer_store_container_foreach(s, collect, &names), 0, "container foreach");
	TAP_OK(names.n == 2 && !strcmp(names.v[0], "a-first") && !strcmp(names.v[1], "web/1"), "container names sorted and decoded");
	TAP_IS(layer_store_container_remove(s, "web/1"), 0, "container remove");
	TAP_OK(stat(p, &st) < 0, "container dir gone");
	log_set_quiet(1);
	TAP_IS(layer_store_container_get(s, "web/1", &c), -ENOENT, "removed container is -ENOENT");
	TAP_IS(layer_store_container_remove(s, "web/1"), -ENOENT, "removing twice is -ENOENT");
	log_set_quiet(0);

	/* Chain ids. */
	const char *cid = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
	log_set_quiet(1);
	TAP_IS(layer_store_chain_get(s, cid, got), -ENOENT, "missing chain id is -ENOENT");
	TAP_IS(layer_store_chain_put(s, cid, "sha256:3333333333333333333333333333333333333333333333333333333333333333"), -ENOENT,
	       "chain to a missing layer rejected");
	log_set_quiet(0);
	TAP_IS(layer_store_chain_put(s, cid, l2), 0, "chain put");
	TAP_IS(layer_store_chain_get(s2, cid, got), 0, "chain get");
	TAP_OK(!strcmp(got, l2), "chain round trips");

	/* Store lock: recursive within a handle. */
	TAP_IS(layer_store_lock(s), 0, "lock");
	TAP_IS(layer_store_lock(s), 0, "lock recursively");
	TAP_IS(layer_store_image_put(s, &img), 0, "record functions work under the caller's lock");
	layer_store_unlock(s);
	layer_store_unlock(s);
	TAP_IS(layer_store_image_remove(s, img.name), 0, "image remove");
	log_set_quiet(1);
	TAP_IS(layer_store_image_remove(s, img.name), -ENOENT, "image remove twice is -ENOENT");
	log_set_quiet(0);

	image_record_clear(&img);
	layer_store_close(s2);
	layer_store_close(s);
	return tap_done();
}
