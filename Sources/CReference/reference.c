#include "CReference.h"
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct { uint64_t key0, key1, stamp; uint64_t pasid_dir; uint32_t limit, rid_pasid; uint8_t flags; } ctx_slot;
typedef struct { uint64_t key0, key1, stamp; uint64_t ss_root, fs_root; uint16_t did; uint8_t pgtt, flags, ss_levels, fs_levels; } pasid_slot;
typedef struct { uint64_t key0, key1, stamp; uint64_t page_base; uint8_t shift, perms, pgtt, write_ready; } iotlb_slot;

#define VALID (1ULL << 63)
#define ADDR_MASK 0x000FFFFFFFFFF000ULL

struct ref_unit {
    uint8_t *base; const uint64_t *bitmap; uint64_t size; uint64_t root; uint64_t amask;
    ctx_slot *ctx; int ctx_ways; uint64_t ctx_setmask; unsigned ctx_shift;
    pasid_slot *pas; int pas_ways; uint64_t pas_setmask; unsigned pas_shift;
    iotlb_slot *tlb; int tlb_ways; uint64_t tlb_setmask; unsigned tlb_shift;
    uint64_t clock, hits, misses, translations;
};

static int sets_for(int capacity, int ways) { int s = 1; while (s * ways < capacity) s <<= 1; return s; }
static unsigned log2u(int v) { unsigned n = 0; while ((1 << n) < v) n++; return n; }

ref_unit *ref_unit_create(void *memory_base, const uint64_t *backed_bitmap, uint64_t memory_size, uint64_t root_table,
                          int iotlb_entries, int iotlb_ways, int context_entries, int context_ways,
                          int pasid_entries, int pasid_ways, uint64_t address_mask) {
    ref_unit *u = calloc(1, sizeof *u);
    u->base = memory_base; u->bitmap = backed_bitmap; u->size = memory_size; u->root = root_table; u->amask = address_mask;
    int s;
    s = sets_for(context_entries, context_ways); u->ctx = calloc((size_t)s * context_ways, sizeof(ctx_slot));
    u->ctx_ways = context_ways; u->ctx_setmask = s - 1; u->ctx_shift = 64 - log2u(s);
    s = sets_for(pasid_entries, pasid_ways); u->pas = calloc((size_t)s * pasid_ways, sizeof(pasid_slot));
    u->pas_ways = pasid_ways; u->pas_setmask = s - 1; u->pas_shift = 64 - log2u(s);
    s = sets_for(iotlb_entries, iotlb_ways); u->tlb = calloc((size_t)s * iotlb_ways, sizeof(iotlb_slot));
    u->tlb_ways = iotlb_ways; u->tlb_setmask = s - 1; u->tlb_shift = 64 - log2u(s);
    return u;
}

void ref_unit_destroy(ref_unit *u) { free(u->ctx); free(u->pas); free(u->tlb); free(u); }
uint64_t ref_iotlb_hits(const ref_unit *u) { return u->hits; }
uint64_t ref_iotlb_misses(const ref_unit *u) { return u->misses; }

uint64_t ref_now_ns(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static inline uint64_t set_index(uint64_t k0, uint64_t k1, uint64_t setmask, unsigned shift) {
    uint64_t h = (k0 ^ (k1 * 0x9E3779B97F4A7C15ULL)) * 0xFF51AFD7ED558CCDULL;
    return setmask == 0 ? 0 : (h >> shift);
}

/* Device-side 64-bit load: in range and backed, else -1. */
static inline int dev_load64(const ref_unit *u, uint64_t pa, uint64_t *out) {
    if (pa >= u->size || u->size - pa < 8) return -1;
    uint64_t f = pa >> 12;
    if (!(u->bitmap[f >> 6] & (1ULL << (f & 63)))) return -1;
    memcpy(out, u->base + pa, 8);
    return 0;
}

#define LRU_INSERT(slots, ways, setbase, K0, K1, FILL) do { \
    int victim = -1, inval = -1, lru = 0; \
    for (int i = 0; i < (ways); i++) { \
        if ((setbase)[i].key0 == (K0) && (setbase)[i].key1 == ((K1) | VALID)) { victim = i; break; } \
        if (!((setbase)[i].key1 & VALID)) { if (inval < 0) inval = i; } \
        else if ((setbase)[i].stamp < (setbase)[lru].stamp || !((setbase)[lru].key1 & VALID)) lru = i; \
    } \
    if (victim < 0) victim = inval >= 0 ? inval : lru; \
    u->clock++; \
    (setbase)[victim].key0 = (K0); (setbase)[victim].key1 = (K1) | VALID; (setbase)[victim].stamp = u->clock; \
    FILL; \
} while (0)

#include "nested_walk.h"

__attribute__((noinline))
int ref_translate(ref_unit *u, uint16_t sid, uint64_t address, int write, uint64_t *pa) {
    u->translations++;
    /* Context cache. */
    uint64_t k = sid;
    ctx_slot *cs = u->ctx + set_index(k, 0, u->ctx_setmask, u->ctx_shift) * u->ctx_ways;
    ctx_slot *ctx = NULL;
    for (int i = 0; i < u->ctx_ways; i++)
        if (cs[i].key0 == k && cs[i].key1 == VALID) { cs[i].stamp = ++u->clock; ctx = &cs[i]; break; }
    if (!ctx) {
        uint64_t lo, hi, c0, c1;
        uint64_t ra = u->root + (uint64_t)(sid >> 8) * 16;
        if (dev_load64(u, ra, &lo) || dev_load64(u, ra + 8, &hi)) return 0x38;
        uint8_t devfn = sid & 0xff;
        uint64_t half = devfn < 128 ? lo : hi;
        if (!(half & 1)) return 0x39;
        uint64_t ca = (half & ~0xFFFULL) + (uint64_t)(devfn & 0x7f) * 32;
        if (dev_load64(u, ca, &c0) || dev_load64(u, ca + 8, &c1)) return 0x40;
        if (!(c0 & 1)) return 0x41;
        uint32_t pdts = (uint32_t)((c0 >> 9) & 7);
        uint32_t limit = (1u << (pdts + 7)) * 64; if (limit > (1u << 20)) limit = 1u << 20;
        LRU_INSERT(u->ctx, u->ctx_ways, cs, k, 0, (cs[victim].pasid_dir = c0 & ~0xFFFULL, cs[victim].limit = limit,
                   cs[victim].rid_pasid = (uint32_t)(c1 & 0xFFFFF), cs[victim].flags = 0, ctx = &cs[victim]));
    }
    uint32_t pasid = ctx->rid_pasid;
    if (pasid >= ctx->limit) return 0x48;
    /* PASID cache. */
    uint64_t pk = ((uint64_t)sid << 20) | pasid;
    pasid_slot *ps = u->pas + set_index(pk, 0, u->pas_setmask, u->pas_shift) * u->pas_ways;
    pasid_slot *pe = NULL;
    for (int i = 0; i < u->pas_ways; i++)
        if (ps[i].key0 == pk && ps[i].key1 == VALID) { ps[i].stamp = ++u->clock; pe = &ps[i]; break; }
    if (!pe) {
        uint64_t d, v0, v1, v2;
        if (dev_load64(u, ctx->pasid_dir + (uint64_t)(pasid >> 6) * 8, &d)) return 0x50;
        if (!(d & 1)) return 0x51;
        uint64_t ea = (d & ~0xFFFULL) + (uint64_t)(pasid & 63) * 64;
        if (dev_load64(u, ea, &v0) || dev_load64(u, ea + 8, &v1) || dev_load64(u, ea + 16, &v2)) return 0x58;
        if (!(v0 & 1)) return 0x59;
        uint8_t pgtt = (uint8_t)((v0 >> 6) & 7), aw = (uint8_t)((v0 >> 2) & 7);
        if ((pgtt != 2 && pgtt != 3) || aw < 1 || aw > 3) return 0x5B;
        if (pgtt == 3 && ((v2 >> 2) & 3) > 1) return 0x5B;
        LRU_INSERT(u->pas, u->pas_ways, ps, pk, 0, (ps[victim].ss_root = v0 & ~0xFFFULL, ps[victim].did = (uint16_t)v1,
                   ps[victim].pgtt = pgtt, ps[victim].flags = (uint8_t)((v0 >> 9) & 1), ps[victim].ss_levels = (uint8_t)(aw + 2),
                   ps[victim].fs_root = v2 & ~0xFFFULL, ps[victim].fs_levels = (uint8_t)(((v2 >> 2) & 3) ? 5 : 4),
                   pe = &ps[victim]));
    }
    /* IOTLB (second-stage tags carry no PASID). */
    uint64_t k1 = pe->pgtt == 2 ? (1ULL << 51) | ((uint64_t)pe->did << 20) : ((uint64_t)pe->did << 20) | pasid;
    uint64_t k0 = address >> 12;
    iotlb_slot *ts = u->tlb + set_index(k0, k1, u->tlb_setmask, u->tlb_shift) * u->tlb_ways;
    for (int i = 0; i < u->tlb_ways; i++) {
        if (ts[i].key0 == k0 && ts[i].key1 == (k1 | VALID)) {
            if (write && !ts[i].write_ready) break;
            ts[i].stamp = ++u->clock;
            u->hits++;
            if (ts[i].pgtt == 3) {
                int f = fs_rights(ts[i].perms, write);
                if (f) return f;
            } else {
                if (write && !(ts[i].perms & 2)) return 0x79;
                if (!write && !(ts[i].perms & 1)) return 0x79;
            }
            *pa = ts[i].page_base | (address & ((1ULL << ts[i].shift) - 1));
            return 0;
        }
    }
    u->misses++;
    if (pe->pgtt == 3) return nested_walk(u, pe, pasid, address, write, pa);
    /* Walk. */
    int levels = pe->ss_levels;
    if (address >> (12 + 9 * levels)) return 0x83;
    uint64_t table = pe->ss_root;
    uint8_t perms = 0x0F;
    for (int level = levels; ; level--) {
        unsigned shift = 12 + 9 * (level - 1);
        uint64_t e;
        if (dev_load64(u, table + ((address >> shift) & 511) * 8, &e)) return 0x78;
        if (!(e & 3)) return 0x79;
        int leaf = level == 1 || (level <= 3 && (e & 0x80));
        uint64_t rsv = (ADDR_MASK & ~u->amask) | 0x800;
        if (level >= 4) rsv |= 0x80;
        if (leaf && level > 1) rsv |= ((1ULL << shift) - 1) & ~0xFFFULL;
        if (e & rsv) return 0x7A;
        uint8_t p = 0x08; if (e & 1) p |= 1; if (e & 2) p |= 2; if (e & 4) p |= 4;
        perms &= p;
        if (leaf) {
            uint64_t page = (e & ADDR_MASK) & ~((1ULL << shift) - 1);
            uint64_t key0 = address >> shift;
            uint64_t key1 = ((uint64_t)(level - 1) << 52) | k1;
            iotlb_slot *fs = u->tlb + set_index(key0, key1, u->tlb_setmask, u->tlb_shift) * u->tlb_ways;
            LRU_INSERT(u->tlb, u->tlb_ways, fs, key0, key1, (fs[victim].page_base = page, fs[victim].shift = (uint8_t)shift,
                       fs[victim].perms = perms, fs[victim].pgtt = 2, fs[victim].write_ready = 1));
            if ((write && !(perms & 2)) || (!write && !(perms & 1))) return 0x79;
            *pa = page | (address & ((1ULL << shift) - 1));
            return 0;
        }
        table = e & ADDR_MASK;
    }
}
