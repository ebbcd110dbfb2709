/* What the shim's files share (preload.c: our files and the shared state; memory.c: the
 * program's mapping changes; guard.c: fault-safe copies). Private to the shim. */
#ifndef SWIFTIOMMU_SHIM_H
#define SWIFTIOMMU_SHIM_H
#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>

static inline void *next(const char *name) { return dlsym(RTLD_NEXT, name); }

#define REAL(ret, name, args) \
    static ret (*real_##name) args; \
    if (!real_##name) real_##name = (ret (*) args) next(#name);


/* Set while this thread runs the shim's Swift side: its own calls go straight to libc. */
extern __thread int in_shim;
/* Counts what may unmap the program's memory (swiftiommu_shim_release_events). */
void note_release(void);
/* A change of the program's mappings is about to happen (the Swift side hears of it). */
void range_changing(void *addr, size_t len, int kind);

#endif
