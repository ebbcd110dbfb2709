#ifndef IOVA_REFERENCE_H
#define IOVA_REFERENCE_H
#include <stdint.h>

/// A plain-C reference of the Swift IOVA allocator (Kernel/DMA/IOVA), used only by
/// `iommu-sim bench iova` to report Swift/C ratios: the same per-CPU magazine caches
/// (6 size classes, 127-entry loaded and previous magazines, a depot trimmed one magazine
/// per 100 ms while it holds more than one per CPU), the same gap-augmented AVL tree in
/// flat storage (iterative, one descent per operation), top-down size-aligned allocation,
/// and the same locks (one per CPU slot, one for tree and depot).
typedef struct ref_iova ref_iova;

ref_iova *ref_iova_create(uint64_t start_pfn, uint64_t end_pfn, int cpus);
void ref_iova_destroy(ref_iova *d);
/// First frame of `pages` granules ending at or below `limit_pfn`, or 0 on failure.
uint64_t ref_iova_alloc(ref_iova *d, uint64_t pages, uint64_t limit_pfn, int cpu);
void ref_iova_free(ref_iova *d, uint64_t pfn, uint64_t pages, int cpu);
/// Ranges allocated in the tree (cached ones included).
int ref_iova_allocated(ref_iova *d);
#endif
