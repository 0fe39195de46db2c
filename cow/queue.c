/* Asynchronous request queues.
 *
 * A queue owns a preallocated pool of `depth` request slots, a chunk cache and an eventfd.
 * cow_queue_submit validates a request, takes a slot (-EAGAIN when all are busy), executes it
 * (cow_exec: range-locked against every other request of the device, so overlapping requests
 * from any queue or thread take effect in some serial order) and queues its completion;
 * cow_queue_poll runs completion callbacks on the caller's thread.  The eventfd is signalled
 * whenever a completion is queued.
 * Invariants: in_flight == submitted - callbacks run; a request's effect is visible before its
 * completion is queued; nothing is allocated per request. */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "common/log.h"
#include "cow/cow_internal.h"

struct cow_queue_slot {
	struct cow_request *req;
	int result;
};

struct cow_queue {
	struct cow_device *dev;
	unsigned depth;
	unsigned in_flight;
	struct cow_queue_slot *slots;  /* completion ring of depth entries */
	unsigned head, count;          /* completions waiting for poll */
	int event_fd;
	struct cow_chunk_cache cache;
};

int cow_queue_create(struct cow_device *dev, unsigned depth, struct cow_queue **out)
{
	if (depth == 0 || depth > COW_QUEUE_DEPTH_MAX)
		return log_error(-EINVAL, "create queue: depth %u not in 1..%u", depth, COW_QUEUE_DEPTH_MAX);
	struct cow_queue *q = calloc(1, sizeof *q);
	if (!q) return log_error(-ENOMEM, "create queue: out of memory");
	q->dev = dev;
	q->depth = depth;
	q->event_fd = -1;
	q->slots = calloc(depth, sizeof *q->slots);
	int r = -ENOMEM;
	if (!q->slots) goto fail;
	if ((r = cow_chunk_cache_init(&q->cache))) goto fail;
	q->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (q->event_fd < 0) {
		r = log_error(-errno, "create queue: eventfd: %s", strerror(errno));
		goto fail;
	}
	*out = q;
	return 0;
fail:
	free(q->slots);
	cow_chunk_cache_free(&q->cache);
	free(q);
	return r == -ENOMEM ? log_error(r, "create queue: out of memory") : r;
}

void cow_queue_destroy(struct cow_queue *q)
{
	if (!q) return;
	while (q->in_flight) {
		if (cow_queue_poll(q, 1) < 0) break;
	}
	if (q->event_fd >= 0) close(q->event_fd);
	cow_chunk_cache_free(&q->cache);
	free(q->slots);
	free(q);
}

static void signal_event(struct cow_queue *q)
{
	uint64_t one = 1;
	ssize_t k = write(q->event_fd, &one, sizeof one);
	(void)k; /* EAGAIN only when the counter is saturated: it is readable then anyway */
}

int cow_queue_submit(struct cow_queue *q, struct cow_request *req)
{
	int r = cow_validate(q->dev, req);
	if (r) return r;
	if (req->op != COW_OP_READ && req->op != COW_OP_FLUSH && cow_device_is_readonly(q->dev)) return -EROFS;
	if (q->in_flight >= q->depth) return -EAGAIN;
	q->in_flight++;
	r = cow_exec(q->dev, &q->cache, req);
	unsigned pos = (q->head + q->count) % q->depth;
	q->slots[pos].req = req;
	q->slots[pos].result = r;
	q->count++;
	signal_event(q);
	return 0;
}

int cow_queue_poll(struct cow_queue *q, unsigned min_complete)
{
	int ran = 0;
	uint64_t v;
	ssize_t k = read(q->event_fd, &v, sizeof v);
	(void)k;
	unsigned n = q->count;
	while (n--) {
		struct cow_queue_slot s = q->slots[q->head];
		q->head = (q->head + 1) % q->depth;
		q->count--;
		q->in_flight--;
		ran++;
		/* the callback may submit again: the slot is already free */
		s.req->complete(s.req, s.result);
	}
	if (q->count) signal_event(q); /* callbacks submitted more */
	(void)min_complete; /* every request completes inside submit: nothing to wait for */
	return ran;
}

int cow_queue_event_fd(const struct cow_queue *q) { return q->event_fd; }
unsigned cow_queue_in_flight(const struct cow_queue *q) { return q->in_flight; }
