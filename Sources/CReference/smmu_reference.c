/* C reference of the emulated SMMUv3 stage-1 translate path (SMMUv3Unit+Translate.swift,
 * SMMUv3Unit+Walk.swift): STE cache -> CD cache -> TLB -> VMSAv8-64 stage-1 walk (4 KiB
 * granule), over the same flat memory. Written for `bench translate --arch smmuv3`. */
#include "SMMUReference.h"
#include <stdlib.h>
#include <string.h>

/* Cached STE fields (STECacheEntry). */
typedef struct { uint64_t key0, key1, stamp; uint64_t ctx_ptr; uint16_t vmid; uint8_t config, s1fmt, s1cdmax, s1dss, world, flags; } ste_slot;
/* Cached CD fields (CDCacheEntry). */
typedef struct { uint64_t key0, key1, stamp; uint64_t ttb0, ttb1; uint16_t asid; uint8_t t0bits, t1bits, obits, flags; } cd_slot;
/* TLB entry (SMMUTLBEntry). */
typedef struct { uint64_t key0, key1, stamp; uint64_t page_base; uint8_t shift, perms, upgradable; } tlb_slot;

#define VALID (1ULL << 63)
#define P_R 1
#define P_W 2
#define P_X 4
#define P_U 8
#define A_READ 1
#define A_WRITE 2
#define A_EXEC 4
#define A_PRIV 8

/* STE flags (STECacheEntry), CD flags (CDCacheEntry). */
#define STE_S1STALLD 1
#define STE_SUBSTREAMS 64
#define CD_AFFD 1
#define CD_HA 2
#define CD_HD 4
#define CD_TBI0 32
#define CD_TBI1 64

/* Event numbers (IHI 0070 §7.3). */
#define F_STE_FETCH 0x03
#define C_BAD_STE 0x04
#define F_STREAM_DISABLED 0x06
#define C_BAD_SUBSTREAMID 0x08
#define F_CD_FETCH 0x09
#define C_BAD_CD 0x0A
#define F_WALK_EABT 0x0B
#define F_TRANSLATION 0x10
#define F_ADDR_SIZE 0x11
#define F_ACCESS 0x12
#define F_PERMISSION 0x13
#define C_BAD_STREAMID 0x02

/* VMSAv8-64 stage-1 descriptor bits (Arm ARM D8.3; ArmStage1Format). */
#define D_VALID 1ULL
#define D_TYPE 2ULL
#define D_AP1 (1ULL << 6)
#define D_AP2 (1ULL << 7)
#define D_AF (1ULL << 10)
#define D_DBM (1ULL << 51)
#define D_PXN (1ULL << 53)
#define D_UXN (1ULL << 54)
#define D_PXNT (1ULL << 59)
#define D_UXNT (1ULL << 60)
#define D_APT_NOEL0 (1ULL << 61)
#define D_APT_RO (1ULL << 62)
#define D_OA 0x0000FFFFFFFFF000ULL

/* One set-associative cache with the TaggedCache hash, LRU and bookkeeping. */
typedef struct { void *slots; size_t slot_size; int ways; uint64_t setmask; unsigned shift; uint64_t clock, count, evictions; } cache;

struct smmu_ref_unit {
    uint8_t *base; const uint64_t *bitmap; uint64_t size;
    uint64_t strtab; uint32_t strtab_log2; int oas, ssid_bits, enabled, gbpa_abort, e2h;
    cache ste, cd, tlb;
    uint64_t superpages;
    uint64_t translations, ste_hits, ste_misses, cd_hits, cd_misses, tlb_hits, tlb_misses, walks, walk_accesses;
};

static int sets_for(int capacity, int ways) { int s = 1; while (s * ways < capacity) s <<= 1; return s; }
static unsigned log2u(int v) { unsigned n = 0; while ((1 << n) < v) n++; return n; }

static void cache_init(cache *c, size_t slot_size, int capacity, int ways) {
    if (ways < 1) ways = 1;
    int s = sets_for(capacity, ways);
    c->slots = calloc((size_t)s * ways, slot_size);
    c->slot_size = slot_size; c->ways = ways; c->setmask = (uint64_t)s - 1; c->shift = 64 - log2u(s);
    c->clock = c->count = c->evictions = 0;
}

/* Every slot type starts with key0, key1, stamp. */
typedef struct { uint64_t key0, key1, stamp; } slot_head;
#define SLOT(c, i) ((slot_head *)((uint8_t *)(c)->slots + (size_t)(i) * (c)->slot_size))

static inline uint64_t set_of(const cache *c, uint64_t k0, uint64_t k1) {
    uint64_t h = (k0 ^ (k1 * 0x9E3779B97F4A7C15ULL)) * 0xFF51AFD7ED558CCDULL;
    return c->setmask == 0 ? 0 : (h >> c->shift);
}

static inline slot_head *cache_lookup(cache *c, uint64_t k0, uint64_t k1) {
    uint64_t first = set_of(c, k0, k1) * (uint64_t)c->ways;
    uint64_t kv = k1 | VALID;
    for (int i = 0; i < c->ways; i++) {
        slot_head *s = SLOT(c, first + i);
        if (s->key0 == k0 && s->key1 == kv) { s->stamp = ++c->clock; return s; }
    }
    return NULL;
}

/* The slot to fill for (k0, k1): the match, else the first invalid, else the LRU. Keys and
 * stamp are set; the caller writes the payload. */
static slot_head *cache_insert(cache *c, uint64_t k0, uint64_t k1) {
    uint64_t first = set_of(c, k0, k1) * (uint64_t)c->ways;
    uint64_t kv = k1 | VALID;
    slot_head *match = NULL, *inval = NULL, *lru = SLOT(c, first);
    for (int i = 0; i < c->ways; i++) {
        slot_head *s = SLOT(c, first + i);
        if (s->key0 == k0 && s->key1 == kv) { match = s; break; }
        if (!(s->key1 & VALID)) { if (!inval) inval = s; }
        else if (s->stamp < lru->stamp || !(lru->key1 & VALID)) lru = s;
    }
    slot_head *v = match ? match : inval ? inval : lru;
    if (!(v->key1 & VALID)) c->count++;
    else if (v->key0 != k0 || v->key1 != kv) c->evictions++;
    c->clock++;
    v->key0 = k0; v->key1 = kv; v->stamp = c->clock;
    return v;
}

smmu_ref_unit *smmu_ref_create(void *memory_base, const uint64_t *backed_bitmap, uint64_t memory_size,
                               uint64_t strtab_base, uint32_t strtab_cfg, int sid_bits, int oas_bits,
                               int ssid_bits, int enabled, int gbpa_abort, int e2h,
                               int ste_entries, int ste_ways, int cd_entries, int cd_ways,
                               int tlb_entries, int tlb_ways) {
    smmu_ref_unit *u = calloc(1, sizeof *u);
    if (!u) return NULL;
    u->base = memory_base; u->bitmap = backed_bitmap; u->size = memory_size;
    /* Linear stream table: LOG2SIZE capped by SIDSIZE, base aligned to the table (§6.3.24). */
    uint32_t log2 = strtab_cfg & 0x3F;
    if ((int)log2 > sid_bits) log2 = (uint32_t)sid_bits;
    uint64_t a = strtab_base & 0x000FFFFFFFFFFFC0ULL;
    unsigned align = (strtab_cfg & 0x3F) + 6;
    u->strtab = align >= 64 ? 0 : a & ~((1ULL << align) - 1);
    u->strtab_log2 = ((strtab_cfg >> 16) & 3) == 1 ? 0xFF : log2;   /* 2-level: unsupported */
    u->oas = oas_bits; u->ssid_bits = ssid_bits; u->enabled = enabled; u->gbpa_abort = gbpa_abort; u->e2h = e2h;
    cache_init(&u->ste, sizeof(ste_slot), ste_entries, ste_ways);
    cache_init(&u->cd, sizeof(cd_slot), cd_entries, cd_ways);
    cache_init(&u->tlb, sizeof(tlb_slot), tlb_entries, tlb_ways);
    return u;
}

void smmu_ref_destroy(smmu_ref_unit *u) {
    if (!u) return;
    free(u->ste.slots); free(u->cd.slots); free(u->tlb.slots); free(u);
}

uint64_t smmu_ref_tlb_hits(const smmu_ref_unit *u) { return u->tlb_hits; }
uint64_t smmu_ref_tlb_misses(const smmu_ref_unit *u) { return u->tlb_misses; }

/* Device-side 64-bit load: in range and backed, else -1. */
static inline int dev_load64(const smmu_ref_unit *u, uint64_t pa, uint64_t *out) {
    if (pa >= u->size || u->size - pa < 8) return -1;
    uint64_t f = pa >> 12;
    if (!(u->bitmap[f >> 6] & (1ULL << (f & 63)))) return -1;
    memcpy(out, u->base + pa, 8);
    return 0;
}

static inline int dev_ok(const smmu_ref_unit *u, uint64_t pa) {
    if (pa >= u->size || u->size - pa < 8) return 0;
    uint64_t f = pa >> 12;
    return (u->bitmap[f >> 6] & (1ULL << (f & 63))) != 0;
}

static int addr_bits(unsigned code) {
    static const int b[8] = { 32, 36, 40, 42, 44, 48, 52, 52 };
    return b[code & 7];
}

static inline uint64_t addr_mask(int bits) {
    int w = bits < 12 ? 12 : bits > 52 ? 52 : bits;
    return ((1ULL << w) - 1) & ~0xFFFULL;
}

/* STE fetch through a linear stream table (IHI 0070 §3.3.1, §5.2). Caches valid STEs. */
static int fetch_ste(smmu_ref_unit *u, uint32_t sid, ste_slot **out) {
    if (u->strtab_log2 == 0xFF) return SMMU_REF_UNSUPPORTED;
    if (u->strtab_log2 < 32 && ((uint64_t)sid >> u->strtab_log2) != 0) return C_BAD_STREAMID;
    uint64_t a = u->strtab + (uint64_t)sid * 64, w[8];
    for (int i = 0; i < 8; i++) if (dev_load64(u, a + (uint64_t)i * 8, &w[i])) return F_STE_FETCH;
    if (!(w[0] & 1)) return C_BAD_STE;                                    /* V */
    uint8_t config = (uint8_t)((w[0] >> 1) & 7);
    if (config != 0 && config != 4 && config != 5 && config != 6 && config != 7) return C_BAD_STE;
    ste_slot e = {0};
    e.config = config;
    if (config & 4) {
        if (config != 4 && config != 5) return SMMU_REF_UNSUPPORTED;        /* stage 2, nested */
        if (config == 5) {
            e.s1fmt = (uint8_t)((w[0] >> 4) & 3);
            if (e.s1fmt == 1 || e.s1fmt == 2) return SMMU_REF_UNSUPPORTED;  /* 2-level CD tables */
            e.ctx_ptr = w[0] & 0x000FFFFFFFFFFFC0ULL;
            e.s1cdmax = (uint8_t)((w[0] >> 59) & 0x1F);
            e.s1dss = (uint8_t)(w[1] & 3);
            if (w[1] & (1ULL << 27)) e.flags |= STE_S1STALLD;
            if (e.s1cdmax != 0 && u->ssid_bits != 0) e.flags |= STE_SUBSTREAMS;
            e.world = ((w[1] >> 30) & 3) == 2 ? (u->e2h ? 2 : 1) : 0;    /* STRW (§5.2) */
        }
        if (config != 4) e.vmid = (uint16_t)w[2];                          /* S2VMID */
    }
    ste_slot *s = (ste_slot *)cache_insert(&u->ste, sid, 0);
    s->ctx_ptr = e.ctx_ptr; s->vmid = e.vmid; s->config = e.config; s->s1fmt = e.s1fmt;
    s->s1cdmax = e.s1cdmax; s->s1dss = e.s1dss; s->world = e.world; s->flags = e.flags;
    *out = s;
    return 0;
}

/* CD fetch through a linear CD table (§3.9, §5.4), with the CD checks that apply to an
 * AArch64 4 KiB-granule CD. Caches valid CDs. */
static int fetch_cd(smmu_ref_unit *u, const ste_slot *ste, uint32_t sid, uint32_t index, cd_slot **out) {
    uint64_t a;
    if (ste->s1cdmax != 0 && u->ssid_bits != 0) {
        if (((uint64_t)index >> ste->s1cdmax) != 0) return C_BAD_SUBSTREAMID;
        a = (ste->ctx_ptr & ~((64ULL << ste->s1cdmax) - 1)) + (uint64_t)index * 64;
    } else {
        a = ste->ctx_ptr;
    }
    uint64_t w[8];
    for (int i = 0; i < 8; i++) if (dev_load64(u, a + (uint64_t)i * 8, &w[i])) return F_CD_FETCH;
    if (!(w[0] & (1ULL << 31))) return C_BAD_CD;                          /* V */
    if ((ste->flags & STE_S1STALLD) && (w[0] & (1ULL << 44))) return C_BAD_CD;
    if (!(w[0] & (1ULL << 41))) return C_BAD_CD;                          /* AA64 */
    int el2 = ste->world == 1;
    int walk0 = el2 || !(w[0] & (1ULL << 14)), walk1 = !el2 && !(w[0] & (1ULL << 30));
    if ((walk0 || walk1) && (w[0] & (1ULL << 15))) return C_BAD_CD;       /* ENDI */
    int ips = addr_bits((unsigned)(w[0] >> 32) & 7);
    if (ips > u->oas) ips = u->oas;
    int ttb_bits = ips < 48 ? ips : 48;
    cd_slot e = {0};
    if (walk0) {
        unsigned t0sz = (unsigned)(w[0] & 0x3F), tg0 = (unsigned)((w[0] >> 6) & 3);
        if (t0sz < 16 || t0sz > 39 || tg0 != 0) return C_BAD_CD;
        e.ttb0 = w[1] & 0x000FFFFFFFFFFFF0ULL;
        if (ttb_bits < 64 && (e.ttb0 >> ttb_bits)) return C_BAD_CD;
        e.t0bits = (uint8_t)(64 - t0sz);
    }
    if (walk1) {
        unsigned t1sz = (unsigned)((w[0] >> 16) & 0x3F), tg1 = (unsigned)((w[0] >> 22) & 3);
        if (t1sz < 16 || t1sz > 39 || tg1 != 0) return C_BAD_CD;
        e.ttb1 = w[2] & 0x000FFFFFFFFFFFF0ULL;
        if (ttb_bits < 64 && (e.ttb1 >> ttb_bits)) return C_BAD_CD;
        e.t1bits = (uint8_t)(64 - t1sz);
    }
    e.asid = (uint16_t)(w[0] >> 48);
    e.obits = (uint8_t)ips;
    if (w[0] & (1ULL << 35)) e.flags |= CD_AFFD;
    if (w[0] & (1ULL << 43)) { e.flags |= CD_HA; if (w[0] & (1ULL << 42)) e.flags |= CD_HD; }
    if (w[0] & (1ULL << 38)) e.flags |= CD_TBI0;
    if (w[0] & (1ULL << 39)) e.flags |= CD_TBI1;
    cd_slot *s = (cd_slot *)cache_insert(&u->cd, sid, index);
    s->ttb0 = e.ttb0; s->ttb1 = e.ttb1; s->asid = e.asid; s->t0bits = e.t0bits; s->t1bits = e.t1bits;
    s->obits = e.obits; s->flags = e.flags;
    *out = s;
    return 0;
}

/* Stage 1 rights: write needs W, read R, execute X; an unprivileged access needs AP[1]. */
static inline int perm_fault(uint8_t p, int access) {
    if ((access & A_WRITE) && !(p & P_W)) return 1;
    if ((access & A_READ) && !(p & P_R)) return 1;
    if ((access & A_EXEC) && !(p & P_X)) return 1;
    if (!(access & A_PRIV) && !(p & P_U)) return 1;
    return 0;
}

static inline tlb_slot *tlb_lookup(smmu_ref_unit *u, uint64_t input, uint64_t key1) {
    slot_head *s = cache_lookup(&u->tlb, input >> 12, key1);
    if (s || !u->superpages) return (tlb_slot *)s;
    s = cache_lookup(&u->tlb, input >> 21, key1 | 1ULL << 56);
    if (!s) s = cache_lookup(&u->tlb, input >> 30, key1 | 2ULL << 56);
    return (tlb_slot *)s;
}

/* VMSAv8-64 stage-1 walk, 4 KiB granule (Arm ARM D8; IHI 0070 §3.4, §3.13 HTTU), then the
 * TLB fill and the permission check. */
static int walk(smmu_ref_unit *u, const cd_slot *cd, uint64_t input, int access, uint64_t key1, uint64_t *pa) {
    uint64_t ttb; unsigned ia;
    if (cd->t0bits && (input >> cd->t0bits) == 0) { ttb = cd->ttb0; ia = cd->t0bits; }
    else if (cd->t1bits && ((~input) >> cd->t1bits) == 0) { ttb = cd->ttb1; ia = cd->t1bits; }
    else return F_TRANSLATION;
    int levels = (int)((ia - 12 + 8) / 9);
    unsigned top = ia - (12 + 9 * (unsigned)(levels - 1));
    uint64_t mask = addr_mask(cd->obits);
    uint64_t table = ttb & ~((8ULL << top) - 1);
    uint8_t perms = P_R | P_W | P_X | P_U;
    for (int level = levels; ; ) {
        unsigned shift = 12 + 9 * (unsigned)(level - 1);
        unsigned bits = level == levels ? top : 9;
        uint64_t ea = table + ((input >> shift) & ((1ULL << bits) - 1)) * 8, raw;
        u->walk_accesses++;
        if (dev_load64(u, ea, &raw)) return F_WALK_EABT;
        int type = (raw & D_TYPE) != 0;
        int present = (raw & D_VALID) && (type || level == 2 || level == 3);
        int leaf = level == 1 || (level <= 3 && !type);
        uint64_t oa = raw & D_OA;
        if (!present) return F_TRANSLATION;
        if (oa & ~mask) return F_ADDR_SIZE;
        uint8_t p;
        if (leaf) {
            p = P_R;
            if (!(raw & D_AP2)) p |= P_W;
            if (raw & D_AP1) p |= P_U;
            if (!(raw & (D_PXN | D_UXN))) p |= P_X;
        } else {
            p = P_R | P_W | P_X | P_U;
            if (raw & D_APT_RO) p &= (uint8_t)~P_W;
            if (raw & D_APT_NOEL0) p &= (uint8_t)~P_U;
            if (raw & (D_PXNT | D_UXNT)) p &= (uint8_t)~P_X;
        }
        uint8_t table_perms = perms;
        perms &= p;
        if (!leaf) { table = oa; level--; continue; }
        /* Access flag: HA sets it, AFFD ignores it, else an Access flag fault. */
        if (!(raw & D_AF)) {
            if (cd->flags & CD_HA) {
                if (dev_ok(u, ea)) raw = __atomic_fetch_or((uint64_t *)(u->base + ea), D_AF, __ATOMIC_SEQ_CST);
                raw |= D_AF;
            } else if (!(cd->flags & CD_AFFD)) return F_ACCESS;
        }
        /* Dirty state: writable-clean (DBM and AP[2]) becomes writable-dirty on a write with HD. */
        int upgradable = (cd->flags & CD_HD) && (raw & (D_AP2 | D_DBM)) == (D_AP2 | D_DBM) && (table_perms & P_W);
        if (upgradable && (access & A_WRITE) && dev_ok(u, ea)) {
            uint64_t expected = raw;
            if (__atomic_compare_exchange_n((uint64_t *)(u->base + ea), &expected, raw & ~D_AP2, 0,
                                            __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
                perms |= P_W; upgradable = 0;
            }
        }
        uint64_t page = oa & ~((1ULL << shift) - 1);
        uint64_t size_class = shift == 30 ? 2 : shift == 21 ? 1 : 0;
        if (size_class) u->superpages++;
        tlb_slot *t = (tlb_slot *)cache_insert(&u->tlb, input >> shift, key1 | size_class << 56);
        t->page_base = page; t->shift = (uint8_t)shift; t->perms = perms; t->upgradable = (uint8_t)upgradable;
        if (perm_fault(perms, access)) return F_PERMISSION;
        *pa = page | (input & ((1ULL << shift) - 1));
        return 0;
    }
}

__attribute__((noinline))
int smmu_ref_translate(smmu_ref_unit *u, uint32_t sid, uint64_t address, int access, uint64_t *pa) {
    u->translations++;
    if (!u->enabled) {                                  /* SMMUEN = 0: GBPA (§6.3.14) */
        if (u->gbpa_abort) return SMMU_REF_ABORT;
        *pa = address; return 0;
    }
    ste_slot *ste = (ste_slot *)cache_lookup(&u->ste, sid, 0);
    if (ste) u->ste_hits++;
    else { u->ste_misses++; int r = fetch_ste(u, sid, &ste); if (r) return r; }
    switch (ste->config) {
    case 4: *pa = address; return 0;                    /* bypass */
    case 5: break;                                      /* stage 1 */
    case 6: case 7: return SMMU_REF_UNSUPPORTED;
    default: return SMMU_REF_ABORT;
    }
    /* A transaction without a SubstreamID (§3.9, STE.S1DSS). */
    uint32_t index = 0;
    if (ste->flags & STE_SUBSTREAMS) {
        if (ste->s1dss == 1) { *pa = address; return 0; }
        if (ste->s1dss != 2) return F_STREAM_DISABLED;
    }
    cd_slot *cd = (cd_slot *)cache_lookup(&u->cd, sid, index);
    if (cd) u->cd_hits++;
    else {
        u->cd_misses++;
        int r = fetch_cd(u, ste, sid, index, &cd); if (r) return r;
    }
    uint64_t world = ste->world == 0 ? 0 : 1;
    uint16_t vmid = world == 1 ? 0 : ste->vmid;
    /* Top-byte-ignore for the half the address is in (CD.TBIx). */
    uint64_t input = address;
    int upper = (address >> 55) & 1;
    if (cd->flags & (upper ? CD_TBI1 : CD_TBI0)) input = upper ? address | 0xFF00000000000000ULL : address & 0x00FFFFFFFFFFFFFFULL;
    uint64_t key1 = world << 48 | (uint64_t)vmid << 16 | cd->asid;
    tlb_slot *t = tlb_lookup(u, input, key1);
    if (t) {
        if (!perm_fault(t->perms, access)) {
            u->tlb_hits++;
            *pa = t->page_base | (input & ((1ULL << t->shift) - 1));
            return 0;
        }
        if (!(t->upgradable && (access & A_WRITE))) { u->tlb_hits++; return F_PERMISSION; }
    }
    u->tlb_misses++;
    u->walks++;
    return walk(u, cd, input, access, key1, pa);
}
