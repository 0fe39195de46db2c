/* The sim's message framing, shared by its client (blkback/xenif.c) and its daemon
 * (blkback/xensim_server.c): one SOCK_SEQPACKET message = struct xsim_hdr + payload, with up to
 * XSIM_FDS_MAX file descriptors as SCM_RIGHTS.  Written once so both sides frame alike. */
#include "blkback/xensim_proto.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int xsim_send(int fd, uint32_t op, uint32_t tx, int32_t err, const void *p1, uint32_t l1, const void *p2,
	      uint32_t l2, const int *fds, unsigned nfds)
{
	struct xsim_hdr h = { op, tx, err, l1 + l2 };
	struct iovec iov[3] = { { &h, sizeof(h) }, { (void *)p1, l1 }, { (void *)p2, l2 } };
	struct msghdr m = { .msg_iov = iov, .msg_iovlen = 3 };
	char cbuf[CMSG_SPACE(sizeof(int) * XSIM_FDS_MAX)];
	if (sizeof(h) + l1 + l2 > XSIM_MSG_MAX || nfds > XSIM_FDS_MAX) return -E2BIG;
	if (nfds) {
		memset(cbuf, 0, sizeof(cbuf));
		m.msg_control = cbuf;
		m.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
	}
	ssize_t r;
	do r = sendmsg(fd, &m, MSG_NOSIGNAL);
	while (r < 0 && errno == EINTR);
	return r < 0 ? -errno : 0;
}

int xsim_take_fds(struct msghdr *m, int fds[XSIM_FDS_MAX])
{
	int n = 0;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(m); cm; cm = CMSG_NXTHDR(m, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
		int k = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
		for (int i = 0; i < k; i++) {
			int fd;
			memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
			if (n < (int)XSIM_FDS_MAX) fds[n++] = fd;
			else close(fd);
		}
	}
	return n;
}
