#ifndef CPRELOAD_H
#define CPRELOAD_H

/* The preload shim (preload.c) interposes libc's file calls and hands those on /dev/iommu to
 * the Swift side of the library through these entry points (defined with @_cdecl in
 * Sources/Preload). Each returns a result >= 0 or -errno. */

/* Marks `fd` (a descriptor the shim reserved) as an iommufd file, or forgets it. */
void swiftiommu_shim_mark(int fd, int ours);
/* Whether the shim has been told `fd` is an iommufd file. */
int swiftiommu_shim_is_ours(int fd);
/* Marks the calling thread as the library's own (1): its libc calls are not the program's,
 * so they pass through (a thread that serves a forked child). */
void swiftiommu_shim_set_inside(int inside);

#include <stddef.h>

/* A new eventfd for a file the machine serves (a fault queue): marked as ours; -errno on failure. */
int swiftiommu_shim_eventfd(int cloexec);
/* Sets the eventfd's readiness: readable (count 1) or not (count 0). */
void swiftiommu_shim_signal(int fd, int readable);
#include <stdint.h>

/* Bumped by every change of this process's mappings (mmap, munmap, mremap, mprotect,
 * madvise through libc): a parse of /proc/self/maps is good while it is unchanged. */
uint64_t swiftiommu_shim_maps_generation(void);

/* Moves with every call that may unmap memory behind the shim's back (free, realloc,
 * malloc_trim, thread creation) and every mapping change it sees. */
uint64_t swiftiommu_shim_release_events(void);

/* copy_from_user / copy_to_user on this process: the whole `n` bytes or nothing reported
 * (returns 1 on success, 0 when any byte is not accessible), never a fault. */
int swiftiommu_copy_from_user(void *dst, uint64_t src, size_t n);
int swiftiommu_copy_to_user(uint64_t dst, const void *src, size_t n);

/* Copies from (write 0) or to (write 1) the memory of process `pid`: 1 when all `n` bytes
 * moved, else 0. */
int swiftiommu_copy_process(int pid, void *local_buffer, uint64_t address, size_t n, int write);

/* The same without a system call where the guard is installed: a plain copy whose fault the
 * shim's SIGSEGV/SIGBUS handler turns into a failure (1 on success, 0 on a fault). */
int swiftiommu_copy_from_user_fast(void *dst, uint64_t src, size_t n);
int swiftiommu_copy_to_user_fast(uint64_t dst, const void *src, size_t n);
/* Installs that guard; [start, end) is the emulated RAM window, where a SIGBUS (a truncated
 * file a frame aliases) maps a zero page instead of killing the program. */
void swiftiommu_shim_install_guard(uint64_t start, uint64_t end);

#endif
