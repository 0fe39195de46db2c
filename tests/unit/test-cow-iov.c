/* Requests whose iovecs include empty ones (legal, as in preadv/pwritev: test-cow-concurrency
 * splits its buffers at a random byte, 0 included) complete with the right data through every
 * path: a write that starts block-aligned with an empty first iovec used to spin forever in the
 * upper write loop.  An alarm turns such a hang into a failure. */
#include "tests/unit/test-cow-util.h"

#include <signal.h>
#include <sys/uio.h>
#include <unistd.h>

#define SIZE_BLOCKS 64u

static int done_result = 1;
static void on_done(struct cow_request *req, int result) { (void)req; done_result = result; }

static int run(struct cow_queue *q, enum cow_op op, uint64_t off, const struct iovec *iov, unsigned n, uint64_t len)
{
	struct cow_request req = { .op = op, .offset_bytes = off, .length_bytes = len, .iov = iov, .iov_count = n,
				   .complete = on_done };
	done_result = 1;
	int r = cow_queue_submit(q, &req);
	if (r) return r;
	while (done_result == 1)
		if ((r = cow_queue_poll(q, 1)) < 0) return r;
	return done_result;
}

int main(void)
{
	uint8_t *model = calloc(SIZE_BLOCKS, BS), *got = calloc(SIZE_BLOCKS, BS), *src = malloc(3 * BS);
	char base[1][SHA256_DIGEST_STRLEN];
	struct spec_extent ext = { 0, SIZE_BLOCKS, 0, 1 };
	struct cow_device *d = NULL;
	struct cow_queue *q = NULL;
	alarm(60);
	struct layer_store *s = test_store_open("store");
	TAP_IS(test_layer_write(s, NULL, SIZE_BLOCKS, &ext, 1, model, 1, base[0]), 0, "base layer");
	TAP_IS(test_image_put(s, "img", SIZE_BLOCKS * BS, base, 1), 0, "image");
	TAP_IS(layer_store_container_create(s, "img", "c"), 0, "container");
	TAP_IS(cow_device_open_container(s, "c", &d), 0, "open");
	TAP_IS(cow_queue_create(d, 4, &q), 0, "queue");
	for (unsigned i = 0; i < 3 * BS; i++) src[i] = (uint8_t)(i * 7 + 3);
	/* (offset, length, where the empty iovecs go): aligned start + partial tail (the hang),
	 * whole blocks, a partial head; empty first, middle and last */
	static const struct { uint64_t off, len; } cases[] = { { 22 * BS, BS + 2560 }, { 30 * BS, 2 * BS }, { 40 * BS + 512, BS } };
	for (unsigned c = 0; c < 3; c++) {
		uint64_t off = cases[c].off, len = cases[c].len, cut = len / 3;
		struct iovec w[5] = { { src, 0 }, { src, cut }, { src + cut, 0 }, { src + cut, len - cut }, { src + len, 0 } };
		TAP_IS(run(q, COW_OP_WRITE, off, w, 5, len), 0, "write %llu+%llu with empty iovecs first, middle, last",
		       (unsigned long long)off, (unsigned long long)len);
		memcpy(model + off, src, len);
		uint8_t *r = got + off;
		struct iovec rv[4] = { { r, 0 }, { r, cut }, { r + cut, 0 }, { r + cut, len - cut } };
		TAP_IS(run(q, COW_OP_READ, off, rv, 4, len), 0, "read it back through empty iovecs");
		TAP_OK(!memcmp(got + off, model + off, len), "same bytes");
	}
	cow_queue_destroy(q);
	TAP_IS(cow_device_read(d, 0, got, SIZE_BLOCKS * BS), 0, "read the whole device");
	TAP_IS(test_first_diff(got, model, SIZE_BLOCKS * BS), -1, "the device reads as the model");
	TAP_IS(cow_device_close(d), 0, "close");
	layer_store_close(s);
	free(model);
	free(got);
	free(src);
	return tap_done();
}
