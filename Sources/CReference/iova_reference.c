// Plain-C reference of the Swift IOVA allocator; see include/IOVAReference.h.
#include "IOVAReference.h"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ORDERS 6
#define MAG_SIZE 127
#define MAX_CACHED 32ULL
#define DEPOT_DELAY_NS 100000000ULL
#define NONE (-1)

typedef struct { uint64_t n; uint64_t pfns[MAG_SIZE]; } magazine;

typedef struct {
    pthread_mutex_t lock;
    magazine *loaded[ORDERS];
    magazine *previous[ORDERS];
    char pad[64];
} cpu_slot;

typedef struct { uint64_t lo, hi, gap, maxgap; int32_t left, right; int8_t height; } node;

typedef struct {
    node *nodes; int32_t count, cap;
    int32_t *free_nodes; int32_t nfree, freecap;
    int32_t root;
    uint64_t start, end;
    uint64_t pending_gap;
    int ranges;
} tree;

struct ref_iova {
    int cpus;
    cpu_slot *slots;
    pthread_mutex_t lock;
    tree t;
    uint64_t max32;
    uint64_t dma32;
    magazine **depot[ORDERS]; int ndepot[ORDERS], depotcap[ORDERS];
    magazine **spare; int nspare, sparecap;
    uint64_t trim_due; int trim_armed;
};

static uint64_t now_ns(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

// ---- tree (same algorithm as IOVATree.swift) ----

static int8_t h(tree *t, int32_t n) { return n == NONE ? 0 : t->nodes[n].height; }
static uint64_t mg(tree *t, int32_t n) { return n == NONE ? 0 : t->nodes[n].maxgap; }
static uint64_t max64(uint64_t a, uint64_t b) { return a > b ? a : b; }

static void update(tree *t, int32_t n) {
    node *x = &t->nodes[n];
    int8_t hl = h(t, x->left), hr = h(t, x->right);
    x->height = (hl > hr ? hl : hr) + 1;
    x->maxgap = max64(x->gap, max64(mg(t, x->left), mg(t, x->right)));
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
static int32_t balance(tree *t, int32_t n) {
    update(t, n);
    int b = h(t, t->nodes[n].left) - h(t, t->nodes[n].right);
    if (b > 1) {
        int32_t l = t->nodes[n].left;
        if (h(t, t->nodes[l].left) < h(t, t->nodes[l].right)) t->nodes[n].left = rot_left(t, l);
        return rot_right(t, n);
    }
    if (b < -1) {
        int32_t r = t->nodes[n].right;
        if (h(t, t->nodes[r].right) < h(t, t->nodes[r].left)) t->nodes[n].right = rot_right(t, r);
        return rot_left(t, n);
    }
    return n;
}
static int32_t new_node(tree *t, uint64_t lo, uint64_t hi, uint64_t gap) {
    int32_t i;
    if (t->nfree > 0) i = t->free_nodes[--t->nfree];
    else {
        if (t->count == t->cap) { t->cap *= 2; t->nodes = realloc(t->nodes, sizeof(node) * t->cap); }
        i = t->count++;
    }
    node x = { lo, hi, gap, gap, NONE, NONE, 1 };
    t->nodes[i] = x;
    return i;
}
static int overlaps(tree *t, uint64_t lo, uint64_t hi) {
    int32_t n = t->root;
    while (n != NONE) {
        node *x = &t->nodes[n];
        if (hi < x->lo) n = x->left; else if (lo > x->hi) n = x->right; else return 1;
    }
    return 0;
}
static int32_t ins(tree *t, int32_t n, uint64_t lo, uint64_t hi, uint64_t pred_hi) {
    if (n == NONE) return new_node(t, lo, hi, lo - pred_hi - 1);
    if (hi < t->nodes[n].lo) {
        uint64_t gap_start = t->nodes[n].lo - t->nodes[n].gap;
        if (gap_start <= lo) t->nodes[n].gap = t->nodes[n].lo - hi - 1;
        int32_t c = ins(t, t->nodes[n].left, lo, hi, pred_hi);
        t->nodes[n].left = c;
    } else {
        int32_t c = ins(t, t->nodes[n].right, lo, hi, t->nodes[n].hi);
        t->nodes[n].right = c;
    }
    return balance(t, n);
}
static int tree_insert(tree *t, uint64_t lo, uint64_t hi) {
    if (lo > hi || lo < t->start || hi > t->end + 1 || overlaps(t, lo, hi)) return 0;
    t->root = ins(t, t->root, lo, hi, t->start - 1);
    t->ranges++;
    return 1;
}
static void t_insert_free(tree *t, uint64_t lo, uint64_t hi) {
    t->root = ins(t, t->root, lo, hi, t->start - 1);
    t->ranges++;
}
static int32_t find(tree *t, uint64_t pfn) {
    int32_t n = t->root;
    while (n != NONE) {
        node *x = &t->nodes[n];
        if (pfn < x->lo) n = x->left; else if (pfn > x->hi) n = x->right; else return n;
    }
    return NONE;
}
static int32_t remove_min(tree *t, int32_t n, int32_t *minimum) {
    if (t->nodes[n].left == NONE) { *minimum = n; return t->nodes[n].right; }
    int32_t c = remove_min(t, t->nodes[n].left, minimum);
    t->nodes[n].left = c;
    return balance(t, n);
}
static int32_t rem(tree *t, int32_t n, uint64_t lo) {
    if (lo < t->nodes[n].lo) { int32_t c = rem(t, t->nodes[n].left, lo); t->nodes[n].left = c; }
    else if (lo > t->nodes[n].lo) { int32_t c = rem(t, t->nodes[n].right, lo); t->nodes[n].right = c; }
    else {
        int32_t l = t->nodes[n].left, r = t->nodes[n].right;
        uint64_t gap = t->nodes[n].gap;
        if (t->nfree == t->freecap) { t->freecap *= 2; t->free_nodes = realloc(t->free_nodes, sizeof(int32_t) * t->freecap); }
        t->free_nodes[t->nfree++] = n;
        if (l == NONE || r == NONE) {
            int32_t child = l == NONE ? r : l;
            t->pending_gap = gap;
            return child == NONE ? NONE : balance(t, child);
        }
        int32_t s = NONE;
        int32_t nr = remove_min(t, r, &s);
        t->nodes[s].left = l; t->nodes[s].right = nr; t->nodes[s].gap += gap;
        t->pending_gap = 0;
        return balance(t, s);
    }
    return balance(t, n);
}
static int32_t grow(tree *t, int32_t n, uint64_t hi, uint64_t extra, int *done) {
    if (n == NONE) return n;
    if (t->nodes[n].lo > hi) {
        int32_t c = grow(t, t->nodes[n].left, hi, extra, done);
        t->nodes[n].left = c;
        if (!*done) { t->nodes[n].gap += extra; *done = 1; }
    } else {
        int32_t c = grow(t, t->nodes[n].right, hi, extra, done);
        t->nodes[n].right = c;
    }
    update(t, n);
    return n;
}
static int tree_remove(tree *t, uint64_t lo) {
    if (lo > t->end) return 0;
    int32_t n = find(t, lo);
    if (n == NONE || t->nodes[n].lo != lo) return 0;
    uint64_t hi = t->nodes[n].hi;
    t->root = rem(t, t->root, lo);
    int done = 0;
    uint64_t extra = hi - lo + 1 + t->pending_gap;
    t->pending_gap = 0;
    t->root = grow(t, t->root, hi, extra, &done);
    t->ranges--;
    return 1;
}
#define SEARCH_BUDGET 8
static uint64_t search(tree *t, int32_t n, uint64_t size, uint64_t min_gap, uint64_t align, uint64_t limit, int64_t *budget) {
    if (n == NONE || *budget <= 0) return 0;
    (*budget)--;
    node x = t->nodes[n];
    if (x.maxgap < min_gap) return 0;
    uint64_t gap_start = x.lo - x.gap;
    if (gap_start <= limit) {
        uint64_t f = search(t, x.right, size, min_gap, align, limit, budget);
        if (f) return f;
        if (x.gap >= min_gap) {
            uint64_t top = x.lo - 1 < limit ? x.lo - 1 : limit;
            if (top >= gap_start && top - gap_start + 1 >= size) {
                uint64_t cand = (top - size + 1) & ~(align - 1);
                if (cand >= gap_start && cand >= t->start) return cand;
            }
        }
    }
    return search(t, x.left, size, min_gap, align, limit, budget);
}
static uint64_t find_highest(tree *t, uint64_t size, uint64_t align, uint64_t limit) {
    int64_t budget = SEARCH_BUDGET, unlimited = INT64_MAX;
    uint64_t f = search(t, t->root, size, size, align, limit, &budget);
    if (f || budget > 0) return f;
    if (size + align - 1 >= size) {
        f = search(t, t->root, size, size + align - 1, align, limit, &unlimited);
        if (f) return f;
    }
    return search(t, t->root, size, size, align, limit, &unlimited);
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
        pthread_mutex_init(&d->slots[i].lock, NULL);
        for (int o = 0; o < ORDERS; o++) { d->slots[i].loaded[o] = mag_new(); d->slots[i].previous[o] = mag_new(); }
    }
    pthread_mutex_init(&d->lock, NULL);
    tree *t = &d->t;
    t->start = start_pfn < 1 ? 1 : start_pfn;
    t->end = end_pfn < t->start ? t->start : end_pfn;
    t->cap = 64; t->nodes = malloc(sizeof(node) * t->cap);
    t->freecap = 64; t->free_nodes = malloc(sizeof(int32_t) * t->freecap);
    t->root = NONE;
    tree_insert(t, t->end + 1, t->end + 1);
    t->ranges = 0;
    d->max32 = UINT64_MAX;
    d->dma32 = 1ULL << 20;
    for (int o = 0; o < ORDERS; o++) { d->depotcap[o] = 16; d->depot[o] = malloc(sizeof(magazine *) * 16); }
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
    for (int o = 0; o < ORDERS; o++) { for (int i = 0; i < d->ndepot[o]; i++) free(d->depot[o][i]); free(d->depot[o]); }
    for (int i = 0; i < d->nspare; i++) free(d->spare[i]);
    free(d->spare); free(d->slots); free(d->t.nodes); free(d->t.free_nodes); free(d);
}

static void trim_depot(ref_iova *d) {
    int total = 0;
    for (int o = 0; o < ORDERS; o++) total += d->ndepot[o];
    if (total <= d->cpus) { d->trim_armed = 0; return; }
    uint64_t now = now_ns();
    if (!d->trim_armed) { d->trim_armed = 1; d->trim_due = now + DEPOT_DELAY_NS; return; }
    if (now < d->trim_due) return;
    int best = 0;
    for (int o = 1; o < ORDERS; o++) if (d->ndepot[o] > d->ndepot[best]) best = o;
    if (d->ndepot[best] > 0) {
        magazine *m = d->depot[best][--d->ndepot[best]];
        drain(d, m);
        if (d->nspare == d->sparecap) { d->sparecap *= 2; d->spare = realloc(d->spare, sizeof(magazine *) * d->sparecap); }
        d->spare[d->nspare++] = m;
    }
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

static uint64_t tree_alloc(ref_iova *d, uint64_t size, uint64_t limit) {
    pthread_mutex_lock(&d->lock);
    int is32 = limit < d->dma32;
    if (is32 && size >= d->max32) { pthread_mutex_unlock(&d->lock); return 0; }
    uint64_t align = size <= 1 ? 1 : 1ULL << (64 - __builtin_clzll(size - 1));
    uint64_t lo = find_highest(&d->t, size, align, limit < d->t.end ? limit : d->t.end);
    if (!lo) {
        if (is32) d->max32 = size;
        pthread_mutex_unlock(&d->lock);
        return 0;
    }
    t_insert_free(&d->t, lo, lo + size - 1);
    pthread_mutex_unlock(&d->lock);
    return lo;
}

uint64_t ref_iova_alloc(ref_iova *d, uint64_t pages, uint64_t limit, int cpu) {
    if (pages == 0 || pages > limit) return 0;
    uint64_t size = rounded(pages);
    if (size <= MAX_CACHED) {
        int o = order_of(size);
        cpu_slot *c = &d->slots[cpu % d->cpus];
        pthread_mutex_lock(&c->lock);
        uint64_t pfn = mag_pop(c->loaded[o], size, limit);
        if (!pfn && c->previous[o]->n > 0) {
            magazine *t = c->loaded[o]; c->loaded[o] = c->previous[o]; c->previous[o] = t;
            pfn = mag_pop(c->loaded[o], size, limit);
        }
        if (!pfn && c->loaded[o]->n == 0) {
            pthread_mutex_lock(&d->lock);
            trim_depot(d);
            if (d->ndepot[o] > 0) {
                magazine *full = d->depot[o][--d->ndepot[o]];
                if (d->nspare == d->sparecap) { d->sparecap *= 2; d->spare = realloc(d->spare, sizeof(magazine *) * d->sparecap); }
                d->spare[d->nspare++] = c->loaded[o];
                c->loaded[o] = full;
                pthread_mutex_unlock(&d->lock);
                pfn = mag_pop(full, size, limit);
            } else {
                pthread_mutex_unlock(&d->lock);
            }
        }
        pthread_mutex_unlock(&c->lock);
        if (pfn) return pfn;
    }
    uint64_t pfn = tree_alloc(d, size, limit);
    if (pfn) return pfn;
    // Flush every cache into the tree and retry once.
    for (int i = 0; i < d->cpus; i++) {
        pthread_mutex_lock(&d->slots[i].lock);
        pthread_mutex_lock(&d->lock);
        for (int o = 0; o < ORDERS; o++) { drain(d, d->slots[i].loaded[o]); drain(d, d->slots[i].previous[o]); }
        pthread_mutex_unlock(&d->lock);
        pthread_mutex_unlock(&d->slots[i].lock);
    }
    pthread_mutex_lock(&d->lock);
    for (int o = 0; o < ORDERS; o++) {
        while (d->ndepot[o] > 0) {
            magazine *m = d->depot[o][--d->ndepot[o]];
            drain(d, m);
            if (d->nspare == d->sparecap) { d->sparecap *= 2; d->spare = realloc(d->spare, sizeof(magazine *) * d->sparecap); }
            d->spare[d->nspare++] = m;
        }
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
    cpu_slot *c = &d->slots[cpu % d->cpus];
    pthread_mutex_lock(&c->lock);
    if (c->loaded[o]->n == MAG_SIZE) {
        if (c->previous[o]->n < MAG_SIZE) {
            magazine *t = c->loaded[o]; c->loaded[o] = c->previous[o]; c->previous[o] = t;
        } else {
            pthread_mutex_lock(&d->lock);
            if (d->ndepot[o] == d->depotcap[o]) { d->depotcap[o] *= 2; d->depot[o] = realloc(d->depot[o], sizeof(magazine *) * d->depotcap[o]); }
            d->depot[o][d->ndepot[o]++] = c->loaded[o];
            trim_depot(d);
            magazine *e = d->nspare > 0 ? d->spare[--d->nspare] : mag_new();
            pthread_mutex_unlock(&d->lock);
            c->loaded[o] = e;
        }
    }
    magazine *m = c->loaded[o];
    m->pfns[m->n++] = pfn;
    pthread_mutex_unlock(&c->lock);
}

int ref_iova_allocated(ref_iova *d) {
    pthread_mutex_lock(&d->lock);
    int n = d->t.ranges;
    pthread_mutex_unlock(&d->lock);
    return n;
}
