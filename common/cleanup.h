/* __attribute__((cleanup)) helpers.  A function uses these or one `out:` label, never both. */
#ifndef OCIBLK_COMMON_CLEANUP_H
#define OCIBLK_COMMON_CLEANUP_H

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static inline void cleanup_freep(void *p) { free(*(void **)p); }
static inline void cleanup_closep(int *fd) { if (*fd >= 0) close(*fd); }
static inline void cleanup_fclosep(FILE **f) { if (*f) fclose(*f); }

#define CLEANUP_FREE __attribute__((cleanup(cleanup_freep)))
#define CLEANUP_CLOSE __attribute__((cleanup(cleanup_closep)))
#define CLEANUP_FCLOSE __attribute__((cleanup(cleanup_fclosep)))

/* Hand ownership out of a cleanup variable: `return TAKE_FD(fd);`. */
#define TAKE_PTR(p) ({ __typeof__(p) _t = (p); (p) = NULL; _t; })
#define TAKE_FD(fd) ({ int _t = (fd); (fd) = -1; _t; })

#endif
