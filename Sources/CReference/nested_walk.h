/* Nested (PGTT=011) walk of the C reference, included by reference.c: a first-stage walk
 * whose every table pointer and final output are translated by a second-stage walk, with
 * the same checks, A/D handling and IOTLB fill as the Swift unit's nestedWalkAndFill
 * (without paging-structure caches: the benchmark runs the Swift unit with them off). */

/* Device-side atomic OR into a 64-bit word: in range and backed, else -1. */
static inline int dev_or64(const ref_unit *u, uint64_t pa, uint64_t bits) {
    if (pa >= u->size || u->size - pa < 8) return -1;
    uint64_t f = pa >> 12;
    if (!(u->bitmap[f >> 6] & (1ULL << (f & 63)))) return -1;
    __atomic_fetch_or((uint64_t *)(u->base + pa), bits, __ATOMIC_SEQ_CST);
    return 0;
}

/* Rights of a first-stage or nested translation for a request without PASID (user,
 * no execute). perms: 1 R, 2 W, 4 X, 8 U. 0 or the fault reason. */
static inline int fs_rights(uint8_t perms, int write) {
    if (write && !(perms & 2)) return 0x85;
    if (!write && !(perms & 1)) return 0x86;
    if (!(perms & 8)) return 0x81;
    return 0;
}

typedef struct { uint64_t hpa, leaf, raw; unsigned shift; uint8_t perms; } ss_result;

/* A guest-physical address through the second stage of a nested entry (A set with SSADE). */
static inline int ss_translate(const ref_unit *u, const pasid_slot *pe, uint64_t gpa, ss_result *r) {
    int levels = pe->ss_levels;
    if (gpa >> (12 + 9 * levels)) return 0x74;
    uint64_t table = pe->ss_root;
    uint8_t perms = 0x0F;
    for (int level = levels; ; level--) {
        unsigned shift = 12 + 9 * (level - 1);
        uint64_t ea = table + ((gpa >> shift) & 511) * 8, e;
        if (dev_load64(u, ea, &e)) return 0x78;
        if (!(e & 3)) return 0x79;
        int leaf = level == 1 || (level <= 3 && (e & 0x80));
        uint64_t rsv = (ADDR_MASK & ~u->amask) | 0x800;
        if (level >= 4) rsv |= 0x80;
        if (leaf && level > 1) rsv |= ((1ULL << shift) - 1) & ~0xFFFULL;
        if ((e & rsv) || (leaf && level > 3)) return 0x7A;
        uint8_t p = 0x08; if (e & 1) p |= 1; if (e & 2) p |= 2; if (e & 4) p |= 4;
        perms &= p;
        if (leaf) {
            if ((pe->flags & 1) && !(e & 0x100)) dev_or64(u, ea, 0x100);
            r->hpa = ((e & ADDR_MASK) & ~((1ULL << shift) - 1)) | (gpa & ((1ULL << shift) - 1));
            r->leaf = ea; r->raw = e; r->shift = shift; r->perms = perms;
            return 0;
        }
        table = e & ADDR_MASK;
    }
}

/* Sets first-stage bits in the entry at ea: needs the table page writable by stage 2. */
static inline int fs_set(const ref_unit *u, const pasid_slot *pe, uint64_t ea, uint64_t bits, int writable, uint64_t table_leaf) {
    if (!writable) return 0x77;
    dev_or64(u, ea, bits);
    if ((pe->flags & 1) && table_leaf) dev_or64(u, table_leaf, 0x300);
    return 0;
}

static int nested_walk(ref_unit *u, const pasid_slot *pe, uint32_t pasid, uint64_t address, int write, uint64_t *pa) {
    int levels = pe->fs_levels;
    int64_t top = (int64_t)address >> ((levels == 5 ? 57 : 48) - 1);
    if (top != 0 && top != -1) return 0x80;
    ss_result s;
    int f;
    if ((f = ss_translate(u, pe, pe->fs_root, &s))) return f;
    if (!(s.perms & 1)) return 0x75;
    uint64_t table = s.hpa, table_leaf = s.leaf;
    int writable = (s.perms & 2) != 0;
    uint8_t perms = 0x0F;
    for (int level = levels; ; level--) {
        unsigned shift = 12 + 9 * (level - 1);
        uint64_t ea = table + ((address >> shift) & 511) * 8, e;
        if (dev_load64(u, ea, &e)) return level == levels ? 0x73 : 0x70;
        if (!(e & 1)) return 0x71;
        int leaf = level == 1 || (level <= 3 && (e & 0x80));
        uint64_t rsv = ADDR_MASK & ~u->amask;
        if (level >= 4) rsv |= 0x80;
        if (leaf && level > 1) rsv |= ((1ULL << shift) - 1) & ~0x1FFFULL;
        if ((e & rsv) || (leaf && level > 3)) return 0x72;
        uint8_t p = 0x01; if (e & 2) p |= 2; if (e & 4) p |= 8; if (!(e >> 63)) p |= 4;
        perms &= p;
        uint64_t next = e & (leaf && level > 1 ? 0x000FFFFFFFFFE000ULL : ADDR_MASK);
        if (leaf) {
            uint64_t gpa = (next & ~((1ULL << shift) - 1)) | (address & ((1ULL << shift) - 1));
            if ((f = ss_translate(u, pe, gpa, &s))) return f;
            perms &= (uint8_t)(s.perms | 0x0C);
            unsigned out = shift < s.shift ? shift : s.shift;
            uint64_t page = s.hpa & ~((1ULL << out) - 1);
            int fault = fs_rights(perms, write), ready = 0;
            if (!fault) {
                uint64_t want = 0x20 | (write ? 0x40 : 0);
                if ((e & want) != want && (f = fs_set(u, pe, ea, want & ~e, writable, table_leaf))) return f;
                ready = write || (e & 0x40);
                if (pe->flags & 1) {
                    if (write && !(s.raw & 0x200)) dev_or64(u, s.leaf, 0x300);
                    ready = ready && (write || (s.raw & 0x200));
                }
            }
            uint64_t key0 = address >> out;
            uint64_t key1 = ((uint64_t)((out - 12) / 9) << 52) | ((uint64_t)pe->did << 20) | pasid;
            iotlb_slot *fs = u->tlb + set_index(key0, key1, u->tlb_setmask, u->tlb_shift) * u->tlb_ways;
            LRU_INSERT(u->tlb, u->tlb_ways, fs, key0, key1, (fs[victim].page_base = page, fs[victim].shift = (uint8_t)out,
                       fs[victim].perms = perms, fs[victim].pgtt = 3, fs[victim].write_ready = (uint8_t)ready));
            if (fault) return fault;
            *pa = page | (address & ((1ULL << out) - 1));
            return 0;
        }
        if (!(e & 0x20) && (f = fs_set(u, pe, ea, 0x20, writable, table_leaf))) return f;
        if ((f = ss_translate(u, pe, next, &s))) return f;
        if (!(s.perms & 1)) return 0x76;
        table = s.hpa; table_leaf = s.leaf; writable = (s.perms & 2) != 0;
    }
}
