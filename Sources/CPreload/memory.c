/* The program's mapping changes seen before they happen (munmap, mremap, mprotect, madvise;
 * mmap with MAP_FIXED is in preload.c), and the libc calls that may unmap memory inside libc
 * (free, realloc, malloc_trim, thread creation): the Swift side's moved and parked pages
 * follow them (docs/architecture.md, "The C ABI"). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <ucontext.h>
#include <unistd.h>
#include "CPreload.h"
#include "shim.h"

int munmap(void *addr, size_t length) {
    range_changing(addr, length, 0);
    REAL(int, munmap, (void *, size_t));
    return real_munmap(addr, length);
}

void *mremap(void *old, size_t old_size, size_t new_size, int flags, ...) {
    va_list ap; va_start(ap, flags); void *new_address = (flags & MREMAP_FIXED) ? va_arg(ap, void *) : NULL; va_end(ap);
    range_changing(old, old_size, 1);
    if (flags & MREMAP_FIXED) range_changing(new_address, new_size, 0);
    REAL(void *, mremap, (void *, size_t, size_t, int, ...));
    return real_mremap(old, old_size, new_size, flags, new_address);
}

int mprotect(void *addr, size_t len, int prot) {
    range_changing(addr, len, 2);
    REAL(int, mprotect, (void *, size_t, int));
    return real_mprotect(addr, len, prot);
}

int madvise(void *addr, size_t len, int advice) {
    range_changing(addr, len, 2);
    REAL(int, madvise, (void *, size_t, int));
    return real_madvise(addr, len, advice);
}

/* The shim's own frees (in_shim) do not count: glibc can only give back memory the program
 * freed before (which counted) or the shim's own. */
void free(void *p) {
    if (p && !in_shim) note_release();
    REAL(void, free, (void *));
    real_free(p);
}

void *realloc(void *p, size_t n) {
    if (p && !in_shim) note_release();
    REAL(void *, realloc, (void *, size_t));
    return real_realloc(p, n);
}

int malloc_trim(size_t pad) {
    note_release();
    REAL(int, malloc_trim, (size_t));
    return real_malloc_trim(pad);
}

int pthread_create(pthread_t *t, const pthread_attr_t *attr, void *(*start)(void *), void *arg) {
    note_release();
    REAL(int, pthread_create, (pthread_t *, const pthread_attr_t *, void *(*)(void *), void *));
    return real_pthread_create(t, attr, start, arg);
}

