// Plain-C reference of the Swift IOVA allocator; see include/IOVAReference.h.
#include "IOVAReference.h"
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ORDERS 6
#define MAG_SIZE 127
#define MAX_CACHED 32ULL
#define DEPOT_DELAY_NS 100000000ULL
#define NONE (-1)
#define LINE_GRANULES 8ULL

typedef struct { uint64_t n; uint64_t pfns[MAG_SIZE]; } magazine;

// One depot stack: the full magazines one CPU slot gave up for one size class.
typedef struct { magazine **m; int n, cap; } stack;

// A CPU slot's lock, as Swift's PerCPU: one compare-exchange to take, one release store to
// give back; a waiter spins on loads with a pause and yields every 1024 looks.
typedef struct { uint32_t v; } spin_t;

static void spin_wait(spin_t *l) {
    unsigned looks = 0;
    uint32_t expected;
    do {
        while (__atomic_load_n(&l->v, __ATOMIC_RELAXED) != 0) {
            if ((++looks & 1023) == 0) sched_yield();
#if defined(__x86_64__)
            else __builtin_ia32_pause();
#endif
        }
        expected = 0;
    } while (!__atomic_compare_exchange_n(&l->v, &expected, 1, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED));
}

static inline void spin_lock(spin_t *l) {
    uint32_t expected = 0;
    if (!__atomic_compare_exchange_n(&l->v, &expected, 1, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) spin_wait(l);
}

static inline void spin_unlock(spin_t *l) { __atomic_store_n(&l->v, 0, __ATOMIC_RELEASE); }

// The slot a CPU number selects: in range without dividing, else wrapped (Swift's cpuSlot).
static inline int cpu_slot_of(int cpu, int cpus) {
    return (unsigned)cpu < (unsigned)cpus ? cpu : (int)((unsigned)cpu % (unsigned)cpus);
}

typedef struct {
    spin_t lock;
    magazine *loaded[ORDERS];
    magazine *previous[ORDERS];
    char pad[64];
} cpu_slot;

// A node is what a search reads, 32 bytes on a 32-byte boundary; heights and range ends
// live in side arrays under the same slot number (as in IOVATree.swift).
typedef struct { uint64_t lo, gap, maxgap; int32_t left, right; } node;

#define MAX_DEPTH 64

typedef struct {
    node *nodes; int8_t *heights; uint64_t *ends;
    int32_t used, cap;
    int32_t free_list;             // chained through `left`
    int32_t path[MAX_DEPTH];       // scratch root-to-node path of the last descent
    uint8_t went_right[MAX_DEPTH];
    int32_t root;
    uint64_t start, end;
    int ranges;
} tree;

struct ref_iova {
    int cpus;
    cpu_slot *slots;
    pthread_mutex_t lock;
    tree t;
    uint64_t max32;
    uint64_t dma32;
    stack *depot;                  // [order * cpus + slot]
    int per_order[ORDERS], depot_total;
    magazine **spare; int nspare, sparecap;
    uint64_t trim_due; int trim_armed;
};

static uint64_t now_ns(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

// ---- tree (same algorithm as IOVATree.swift) ----

static uint64_t max64(uint64_t a, uint64_t b) { return a > b ? a : b; }
static int8_t h(tree *t, int32_t n) { return n == NONE ? 0 : t->heights[n]; }
static uint64_t mg(tree *t, int32_t n) { return n == NONE ? 0 : t->nodes[n].maxgap; }

// Refreshes n from its children; returns its balance factor.
static inline int update(tree *t, int32_t n) {
    node *x = &t->nodes[n];
    int8_t hl = h(t, x->left), hr = h(t, x->right);
    t->heights[n] = (hl > hr ? hl : hr) + 1;
    x->maxgap = max64(x->gap, max64(mg(t, x->left), mg(t, x->right)));
    return hl - hr;
}
static int32_t rot_right(tree *t, int32_t n) {
    int32_t l = t->nodes[n].left;
    t->nodes[n].left = t->nodes[l].right; t->nodes[l].right = n;
    update(t, n); update(t, l); return l;
}
static int32_t rot_left(tree *t, int32_t n) {
    int32_t r = t->nodes[n].right;
    t->nodes[n].right = t->nodes[r].left; t->nodes[r].left = n;
    update(t, n); update(t, r); return r;
}
static int32_t rotate(tree *t, int32_t n, int b) {
    if (b > 1) {
        int32_t l = t->nodes[n].left;
        if (h(t, t->nodes[l].left) < h(t, t->nodes[l].right)) t->nodes[n].left = rot_left(t, l);
        return rot_right(t, n);
    }
    int32_t r = t->nodes[n].right;
    if (h(t, t->nodes[r].right) < h(t, t->nodes[r].left)) t->nodes[n].right = rot_right(t, r);
    return rot_left(t, n);
}
static inline int32_t balance(tree *t, int32_t n) {
    int b = update(t, n);
    return b > 1 || b < -1 ? rotate(t, n, b) : n;
}
static int32_t new_node(tree *t, uint64_t lo, uint64_t hi, uint64_t gap) {
    int32_t i;
    if (t->free_list != NONE) { i = t->free_list; t->free_list = t->nodes[i].left; }
    else {
        if (t->used == t->cap) {
            node *bigger = aligned_alloc(64, sizeof(node) * t->cap * 2);
            memcpy(bigger, t->nodes, sizeof(node) * t->used);
            free(t->nodes); t->nodes = bigger;
            t->heights = realloc(t->heights, t->cap * 2);
            t->ends = realloc(t->ends, sizeof(uint64_t) * t->cap * 2);
            t->cap *= 2;
        }
        i = t->used++;
    }
    node x = { lo, gap, gap, NONE, NONE };
    t->nodes[i] = x; t->heights[i] = 1; t->ends[i] = hi;
    return i;
}
static void link_at(tree *t, int depth, int32_t child) {
    if (depth == 0) { t->root = child; return; }
    int32_t p = t->path[depth - 1];
    if (t->went_right[depth - 1]) t->nodes[p].right = child; else t->nodes[p].left = child;
}
static void fix_up(tree *t, int top, int must_reach) {
    int d = top - 1;
    while (d >= 0) {
        int32_t n = t->path[d];
        int8_t old_h = t->heights[n]; uint64_t old_g = t->nodes[n].maxgap;
        int32_t q = balance(t, n);
        if (q != n) link_at(t, d, q);
        if (t->heights[q] == old_h && t->nodes[q].maxgap == old_g) {
            if (d <= must_reach) return;
            d = must_reach;
        } else d--;
    }
}
static void attach(tree *t, uint64_t lo, uint64_t hi, uint64_t gap, int depth, int must_reach) {
    int32_t x = new_node(t, lo, hi, gap);
    link_at(t, depth, x);
    t->ranges++;
    fix_up(t, depth, must_reach);
}
static int tree_remove(tree *t, uint64_t lo) {
    if (lo > t->end) return 0;
    int depth = 0, succ = -1; int32_t n = t->root;
    while (n != NONE) {
        uint64_t nlo = t->nodes[n].lo;
        if (lo == nlo) break;
        t->path[depth] = n;
        if (lo < nlo) { t->went_right[depth] = 0; succ = depth; n = t->nodes[n].left; }
        else { t->went_right[depth] = 1; n = t->nodes[n].right; }
        depth++;
    }
    if (n == NONE) return 0;
    node r = t->nodes[n]; uint64_t r_hi = t->ends[n]; int8_t r_h = t->heights[n];
    uint64_t grown = r_hi - r.lo + 1 + r.gap;
    int must_reach;
    if (r.left != NONE && r.right != NONE) {
        int place = depth;
        t->path[depth] = n; t->went_right[depth] = 1; depth++;
        int32_t s = r.right;
        while (t->nodes[s].left != NONE) { t->path[depth] = s; t->went_right[depth] = 0; depth++; s = t->nodes[s].left; }
        int32_t sr = t->nodes[s].right;
        if (t->path[depth - 1] == n) t->nodes[n].right = sr; else t->nodes[t->path[depth - 1]].left = sr;
        node *sp = &t->nodes[s];
        sp->left = r.left; sp->right = t->nodes[n].right;
        t->heights[s] = r_h; sp->maxgap = r.maxgap; sp->gap += grown;
        t->path[place] = s;
        link_at(t, place, s);
        must_reach = place;
    } else if (r.right != NONE) {
        int32_t c = r.right;
        t->nodes[c].gap += grown; t->nodes[c].maxgap = t->nodes[c].gap;
        link_at(t, depth, c);
        must_reach = -1;
    } else {
        link_at(t, depth, r.left);
        t->nodes[t->path[succ]].gap += grown;
        must_reach = succ;
    }
    t->nodes[n].left = t->free_list; t->free_list = n;
    t->ranges--;
    fix_up(t, depth, must_reach);
    return 1;
}
#define SEARCH_BUDGET 4
static inline int32_t worth_entering(tree *t, int32_t c, uint64_t min_gap) {
    return c != NONE && t->nodes[c].maxgap >= min_gap ? c : NONE;
}
// The highest aligned block of `size` in node x's own gap, or 0.
static inline uint64_t block_in(tree *t, node *x, uint64_t size, uint64_t min_gap, uint64_t align, uint64_t limit) {
    if (x->gap < min_gap) return 0;
    uint64_t gap_start = x->lo - x->gap;
    uint64_t top = x->lo - 1 < limit ? x->lo - 1 : limit;
    if (top < gap_start || top - gap_start + 1 < size) return 0;
    uint64_t cand = (top - size + 1) & ~(align - 1);
    return cand >= gap_start && cand >= t->start ? cand : 0;
}
// Reverse in-order walk with pruning, entering at most `budget` nodes; the path doubles as
// its stack. Returns the block start (0: none) and leaves the owner of the gap at
// path[*depth_out - 1].
static uint64_t search(tree *t, uint64_t size, uint64_t min_gap, uint64_t align, uint64_t limit, int64_t *budget, int *depth_out) {
    node *nodes = t->nodes; int32_t *path = t->path; uint8_t *went_right = t->went_right;
    int depth = 0; int32_t n = worth_entering(t, t->root, min_gap);
    for (;;) {
        while (n != NONE && *budget > 0) {
            (*budget)--;
            node *x = &nodes[n];
            path[depth++] = n;
            if (x->lo - x->gap <= limit) {
                int32_t r = worth_entering(t, x->right, min_gap);
                if (r != NONE) { went_right[depth - 1] = 1; n = r; continue; }
                uint64_t f = block_in(t, x, size, min_gap, align, limit);
                if (f) { *depth_out = depth; return f; }
            }
            went_right[depth - 1] = 0;
            n = worth_entering(t, x->left, min_gap);
        }
        while (depth > 0 && !went_right[depth - 1]) depth--;
        if (depth == 0) return 0;
        node *x = &nodes[path[depth - 1]];
        uint64_t f = block_in(t, x, size, min_gap, align, limit);
        if (f) { *depth_out = depth; return f; }
        went_right[depth - 1] = 0;
        n = worth_entering(t, x->left, min_gap);
    }
}
static uint64_t locate(tree *t, uint64_t size, uint64_t align, uint64_t limit, int *depth) {
    int64_t budget = SEARCH_BUDGET, unlimited = INT64_MAX;
    if (limit > t->end) limit = t->end;
    uint64_t f = search(t, size, size, align, limit, &budget, depth);
    if (f || budget > 0) return f;
    if (size + align - 1 >= size) {
        f = search(t, size, size + align - 1, align, limit, &unlimited, depth);
        if (f) return f;
    }
    return search(t, size, size, align, limit, &unlimited, depth);
}
// Finds the block and inserts it along the path the search left.
static uint64_t tree_allocate(tree *t, uint64_t size, uint64_t align, uint64_t limit) {
    int depth = 0;
    uint64_t lo = locate(t, size, align, limit, &depth);
    if (!lo) return 0;
    int owner = depth - 1;
    int32_t o = t->path[owner];
    uint64_t gap_start = t->nodes[o].lo - t->nodes[o].gap, hi = lo + size - 1;
    t->nodes[o].gap = t->nodes[o].lo - hi - 1;
    t->went_right[owner] = 0;
    int d = depth; int32_t c = t->nodes[o].left;
    while (c != NONE) { t->path[d] = c; t->went_right[d] = 1; d++; c = t->nodes[c].right; }
    attach(t, lo, hi, lo - gap_start, d, owner);
    return lo;
}

// ---- allocator ----

static uint64_t rounded(uint64_t pages) {
    if (pages <= 1 || pages > MAX_CACHED) return pages;
    return 1ULL << (64 - __builtin_clzll(pages - 1));
}
static int order_of(uint64_t size) { return 63 - __builtin_clzll(size); }

static magazine *mag_new(void) { return calloc(1, sizeof(magazine)); }

ref_iova *ref_iova_create(uint64_t start_pfn, uint64_t end_pfn, int cpus) {
    ref_iova *d = calloc(1, sizeof(ref_iova));
    d->cpus = cpus < 1 ? 1 : cpus;
    d->slots = aligned_alloc(64, sizeof(cpu_slot) * d->cpus);
    for (int i = 0; i < d->cpus; i++) {
        d->slots[i].lock.v = 0;
        for (int o = 0; o < ORDERS; o++) { d->slots[i].loaded[o] = mag_new(); d->slots[i].previous[o] = mag_new(); }
    }
    pthread_mutex_init(&d->lock, NULL);
    tree *t = &d->t;
    t->start = start_pfn < 1 ? 1 : start_pfn;
    t->end = end_pfn < t->start ? t->start : end_pfn;
    t->cap = 64; t->nodes = aligned_alloc(64, sizeof(node) * t->cap);
    t->heights = malloc(t->cap); t->ends = malloc(sizeof(uint64_t) * t->cap);
    t->free_list = NONE;
    t->root = new_node(t, t->end + 1, t->end + 1, t->end + 1 - t->start);
    t->ranges = 0;
    d->max32 = UINT64_MAX;
    d->dma32 = 1ULL << 20;
    d->depot = calloc((size_t)ORDERS * d->cpus, sizeof(stack));
    d->sparecap = 16; d->spare = malloc(sizeof(magazine *) * 16);
    return d;
}

static void drain(ref_iova *d, magazine *m) {
    while (m->n > 0) {
        uint64_t pfn = m->pfns[m->n - 1];
        if (tree_remove(&d->t, pfn) && pfn < d->dma32) d->max32 = UINT64_MAX;
        m->n--;
    }
}

void ref_iova_destroy(ref_iova *d) {
    for (int i = 0; i < d->cpus; i++)
        for (int o = 0; o < ORDERS; o++) { free(d->slots[i].loaded[o]); free(d->slots[i].previous[o]); }
    for (int i = 0; i < ORDERS * d->cpus; i++) { for (int j = 0; j < d->depot[i].n; j++) free(d->depot[i].m[j]); free(d->depot[i].m); }
    free(d->depot);
    for (int i = 0; i < d->nspare; i++) free(d->spare[i]);
    free(d->spare); free(d->slots); free(d->t.nodes); free(d->t.heights); free(d->t.ends); free(d);
}

static void depot_push(ref_iova *d, int o, int slot, magazine *m) {
    stack *st = &d->depot[o * d->cpus + slot];
    if (st->n == st->cap) { st->cap = st->cap ? st->cap * 2 : 4; st->m = realloc(st->m, sizeof(magazine *) * st->cap); }
    st->m[st->n++] = m;
    d->per_order[o]++; d->depot_total++;
}

// The slot's own last magazine, else another slot's (the slots after it in turn), else NULL.
static magazine *depot_pop(ref_iova *d, int o, int slot) {
    if (d->per_order[o] == 0) return NULL;
    for (int k = 0, s = slot; k < d->cpus; k++, s = s + 1 == d->cpus ? 0 : s + 1) {
        stack *st = &d->depot[o * d->cpus + s];
        if (st->n > 0) { d->per_order[o]--; d->depot_total--; return st->m[--st->n]; }
    }
    return NULL;
}

static void spare_push(ref_iova *d, magazine *m) {
    if (d->nspare == d->sparecap) { d->sparecap *= 2; d->spare = realloc(d->spare, sizeof(magazine *) * d->sparecap); }
    d->spare[d->nspare++] = m;
}

static void trim_depot(ref_iova *d) {
    int total = d->depot_total;
    if (total <= d->cpus) { d->trim_armed = 0; return; }
    uint64_t now = now_ns();
    if (!d->trim_armed) { d->trim_armed = 1; d->trim_due = now + DEPOT_DELAY_NS; return; }
    if (now < d->trim_due) return;
    int best = 0;
    for (int o = 1; o < ORDERS; o++) if (d->per_order[o] > d->per_order[best]) best = o;
    int fullest = 0;
    for (int s = 1; s < d->cpus; s++) if (d->depot[best * d->cpus + s].n > d->depot[best * d->cpus + fullest].n) fullest = s;
    magazine *m = depot_pop(d, best, fullest);
    if (m) { drain(d, m); spare_push(d, m); }
    if (total - 1 > d->cpus) d->trim_due = now + DEPOT_DELAY_NS; else d->trim_armed = 0;
}

static uint64_t mag_pop(magazine *m, uint64_t size, uint64_t limit) {
    uint64_t highest = limit - size + 1;
    for (int64_t i = (int64_t)m->n - 1; i >= 0; i--) {
        uint64_t pfn = m->pfns[i];
        if (pfn <= highest) { m->pfns[i] = m->pfns[m->n - 1]; m->n--; return pfn; }
    }
    return 0;
}

// The shared lock is held.
static uint64_t tree_alloc_locked(ref_iova *d, uint64_t size, uint64_t limit) {
    int is32 = limit < d->dma32;
    if (is32 && size >= d->max32) return 0;
    uint64_t align = size <= 1 ? 1 : 1ULL << (64 - __builtin_clzll(size - 1));
    uint64_t lo = tree_allocate(&d->t, size, align, limit);
    if (!lo && is32) d->max32 = size;
    return lo;
}

static uint64_t tree_alloc(ref_iova *d, uint64_t size, uint64_t limit) {
    pthread_mutex_lock(&d->lock);
    uint64_t lo = tree_alloc_locked(d, size, limit);
    pthread_mutex_unlock(&d->lock);
    return lo;
}

uint64_t ref_iova_alloc(ref_iova *d, uint64_t pages, uint64_t limit, int cpu) {
    if (pages == 0 || pages > limit) return 0;
    uint64_t size = rounded(pages);
    if (size <= MAX_CACHED) {
        int o = order_of(size);
        cpu_slot *c = &d->slots[cpu_slot_of(cpu, d->cpus)];
        spin_lock(&c->lock);
        uint64_t pfn = mag_pop(c->loaded[o], size, limit);
        if (!pfn && c->previous[o]->n > 0) {
            magazine *t = c->loaded[o]; c->loaded[o] = c->previous[o]; c->previous[o] = t;
            pfn = mag_pop(c->loaded[o], size, limit);
        }
        int slot = cpu_slot_of(cpu, d->cpus);
        if (!pfn && c->loaded[o]->n == 0) {
            pthread_mutex_lock(&d->lock);
            trim_depot(d);
            magazine *full = depot_pop(d, o, slot);
            if (full) {
                spare_push(d, c->loaded[o]);
                c->loaded[o] = full;
                pthread_mutex_unlock(&d->lock);
                pfn = mag_pop(full, size, limit);
            } else {
                pthread_mutex_unlock(&d->lock);
            }
        }
        if (!pfn) {
            // Refill: a range from the tree and the ranges of its size right below it down to
            // the start of their page-table line, into the loaded magazine.
            magazine *m = c->loaded[o];
            uint64_t extras[LINE_GRANULES];
            int count = 0, room = MAG_SIZE - (int)m->n;
            if (room > (int)LINE_GRANULES - 1) room = (int)LINE_GRANULES - 1;
            pthread_mutex_lock(&d->lock);
            pfn = tree_alloc_locked(d, size, limit);
            uint64_t lowest = pfn;
            while (pfn && count < room && (lowest & (LINE_GRANULES - 1)) != 0) {
                uint64_t next = tree_allocate(&d->t, size, size, limit);
                if (!next) break;
                extras[count++] = next;
                if (next + size != lowest) break;
                lowest = next;
            }
            pthread_mutex_unlock(&d->lock);
            while (count > 0) m->pfns[m->n++] = extras[--count];
        }
        spin_unlock(&c->lock);
        if (pfn) return pfn;
    } else {
        uint64_t pfn = tree_alloc(d, size, limit);
        if (pfn) return pfn;
    }
    // Flush every cache into the tree and retry once.
    for (int i = 0; i < d->cpus; i++) {
        spin_lock(&d->slots[i].lock);
        pthread_mutex_lock(&d->lock);
        for (int o = 0; o < ORDERS; o++) { drain(d, d->slots[i].loaded[o]); drain(d, d->slots[i].previous[o]); }
        pthread_mutex_unlock(&d->lock);
        spin_unlock(&d->slots[i].lock);
    }
    pthread_mutex_lock(&d->lock);
    for (int o = 0; o < ORDERS; o++) {
        magazine *m;
        while ((m = depot_pop(d, o, 0))) { drain(d, m); spare_push(d, m); }
    }
    d->trim_armed = 0;
    pthread_mutex_unlock(&d->lock);
    return tree_alloc(d, size, limit);
}

void ref_iova_free(ref_iova *d, uint64_t pfn, uint64_t pages, int cpu) {
    uint64_t size = rounded(pages);
    if (size > MAX_CACHED) {
        pthread_mutex_lock(&d->lock);
        if (tree_remove(&d->t, pfn) && pfn < d->dma32) d->max32 = UINT64_MAX;
        pthread_mutex_unlock(&d->lock);
        return;
    }
    int o = order_of(size);
    cpu_slot *c = &d->slots[cpu_slot_of(cpu, d->cpus)];
    spin_lock(&c->lock);
    if (c->loaded[o]->n == MAG_SIZE) {
        if (c->previous[o]->n < MAG_SIZE) {
            magazine *t = c->loaded[o]; c->loaded[o] = c->previous[o]; c->previous[o] = t;
        } else {
            pthread_mutex_lock(&d->lock);
            depot_push(d, o, cpu_slot_of(cpu, d->cpus), c->loaded[o]);
            trim_depot(d);
            magazine *e = d->nspare > 0 ? d->spare[--d->nspare] : mag_new();
            pthread_mutex_unlock(&d->lock);
            c->loaded[o] = e;
        }
    }
    magazine *m = c->loaded[o];
    m->pfns[m->n++] = pfn;
    spin_unlock(&c->lock);
}

int ref_iova_allocated(ref_iova *d) {
    pthread_mutex_lock(&d->lock);
    int n = d->t.ranges;
    pthread_mutex_unlock(&d->lock);
    return n;
}
