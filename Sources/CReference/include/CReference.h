#ifndef CREFERENCE_H
#define CREFERENCE_H
#include <stdint.h>
#include <stddef.h>

/// A plain-C reference of the emulated VT-d translate path, used only by benchmarks to
/// report Swift/C ratios. Same algorithm and geometry as the Swift unit: a context cache
/// keyed by source-id, a PASID cache keyed by (source-id, PASID), a set-associative IOTLB
/// with LRU replacement, and on an IOTLB miss a second-stage walk over the same flat
/// simulated physical memory (bounds- and backing-checked at every fetch).
typedef struct ref_unit ref_unit;

ref_unit *ref_unit_create(void *memory_base, const uint64_t *backed_bitmap, uint64_t memory_size,
                          uint64_t root_table, int iotlb_entries, int iotlb_ways,
                          int context_entries, int context_ways, int pasid_entries, int pasid_ways,
                          uint64_t address_mask);
void ref_unit_destroy(ref_unit *unit);

/// Translates one request without PASID. Returns 0 and the physical address in *pa, or the
/// VT-d fault reason. Not inlined into callers, like the Swift entry point.
int ref_translate(ref_unit *unit, uint16_t sid, uint64_t address, int write, uint64_t *pa);

/// Counters: hits and misses of the IOTLB.
uint64_t ref_iotlb_hits(const ref_unit *unit);
uint64_t ref_iotlb_misses(const ref_unit *unit);

/// Monotonic clock in ns.
uint64_t ref_now_ns(void);
#include "IOVAReference.h"
#include "SMMUReference.h"
#endif
