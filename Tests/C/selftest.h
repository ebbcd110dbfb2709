/* What the IOMMU_TEST_CMD programs (iommufd_selftest.c, iommufd_selftest_viommu.c) share:
 * the check macros, layout assertions, one helper per ioctl (returning its rc, outputs through
 * pointers), and the driver that runs each area on a fresh /dev/iommu file and checks that
 * nothing is left pinned at the end. The layouts are in uapi.h. */
#ifndef SWIFTIOMMU_TEST_SELFTEST_H
#define SWIFTIOMMU_TEST_SELFTEST_H
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include "uapi.h"

static int passed, failed;
#define CHECK(cond, ...) do { if (cond) passed++; else { failed++; fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
    fprintf(stderr, __VA_ARGS__); fprintf(stderr, " (errno %d %s)\n", errno, strerror(errno)); } } while (0)
/* The call fails with exactly `e`. */
#define CHECK_ERRNO(call, e, what) do { errno = 0; int r_ = (call); CHECK(r_ == -1 && errno == (e), "%s: rc %d, expected errno %d", what, r_, e); } while (0)

_Static_assert(sizeof(struct iommu_test_cmd) == 72 && offsetof(struct iommu_test_cmd, last) == 64, "iommu_test_cmd layout");
_Static_assert(offsetof(struct iommu_test_cmd, dirty.iova) == 24 && offsetof(struct iommu_test_cmd, dirty.out_nr_dirty) == 56 &&
               offsetof(struct iommu_test_cmd, trigger_iopf.addr) == 32 && offsetof(struct iommu_test_cmd, access_rw.flags) == 40 &&
               offsetof(struct iommu_test_cmd, check_refs.refs) == 32, "iommu_test_cmd union layout");
_Static_assert(IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS == 12 && IOMMU_TEST_OP_DIRTY == 13 && IOMMU_TEST_OP_TRIGGER_IOPF == 15 &&
               IOMMU_TEST_OP_PASID_CHECK_HWPT == 21, "selftest op numbers");
_Static_assert(sizeof(struct iommu_hw_info) == 40 && sizeof(struct iommu_hwpt_invalidate) == 32 && sizeof(struct iommu_viommu_alloc) == 40 &&
               sizeof(struct iommu_veventq_alloc) == 32 && sizeof(struct iommu_hw_queue_alloc) == 40 &&
               sizeof(struct iommu_viommu_selftest) == 24, "uAPI sizes");

enum { PAGE = 4096, MOCK_PAGE = 2048, BUF_SIZE = 16 * PAGE };
static const uint64_t START = MOCK_APERTURE_START;
/* Shared anonymous memory aligned to 2 MiB, as the kernel test's buffer. */
static unsigned char *buffer;

/* ---- helpers: one ioctl each, returning its rc (outputs through pointers) ---- */
static inline int test_cmd(int fd, struct iommu_test_cmd *c) { c->size = sizeof(*c); return ioctl(fd, IOMMU_TEST_CMD, c); }
static inline uint32_t ioas_alloc(int fd) {
    struct iommu_ioas_alloc a = { .size = sizeof(a) };
    return ioctl(fd, IOMMU_IOAS_ALLOC, &a) ? 0 : a.out_ioas_id;
}
static inline int destroy(int fd, uint32_t id) { struct iommu_destroy d = { .size = sizeof(d), .id = id }; return ioctl(fd, IOMMU_DESTROY, &d); }
static inline int map_fixed(int fd, uint32_t ioas, const void *va, uint64_t len, uint64_t iova) {
    struct iommu_ioas_map m = { .size = sizeof(m), .flags = MAP_FIXED_IOVA | MAP_READABLE | MAP_WRITEABLE, .ioas_id = ioas,
                                .user_va = (uintptr_t)va, .length = len, .iova = iova };
    return ioctl(fd, IOMMU_IOAS_MAP, &m);
}
static inline int map_auto(int fd, uint32_t ioas, const void *va, uint64_t len, uint64_t *iova) {
    struct iommu_ioas_map m = { .size = sizeof(m), .flags = MAP_READABLE | MAP_WRITEABLE, .ioas_id = ioas, .user_va = (uintptr_t)va, .length = len };
    int rc = ioctl(fd, IOMMU_IOAS_MAP, &m);
    *iova = m.iova;
    return rc;
}
static inline int unmap(int fd, uint32_t ioas, uint64_t iova, uint64_t len) {
    struct iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = ioas, .iova = iova, .length = len };
    return ioctl(fd, IOMMU_IOAS_UNMAP, &u);
}
static inline int iova_ranges(int fd, uint32_t ioas, struct iommu_iova_range *r, uint32_t cap, uint32_t *num, uint64_t *align) {
    struct iommu_ioas_iova_ranges c = { .size = sizeof(c), .ioas_id = ioas, .num_iovas = cap, .allowed_iovas = (uintptr_t)r };
    int rc = ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &c);
    *num = c.num_iovas;
    if (align) *align = c.out_iova_alignment;
    return rc;
}
struct mock { uint32_t stdev, hwpt, idev; };
static inline int mock_op(int fd, uint32_t op, uint32_t pt, uint32_t dev_flags, struct mock *m) {
    struct iommu_test_cmd c = { .op = op, .id = pt, .mock_domain_flags = { .dev_flags = dev_flags } };
    int rc = test_cmd(fd, &c);
    if (rc == 0 && m) *m = (struct mock){ c.mock_domain.out_stdev_id, c.mock_domain.out_hwpt_id, c.mock_domain.out_idev_id };
    return rc;
}
static inline int mock(int fd, uint32_t pt, struct mock *m) { return mock_op(fd, IOMMU_TEST_OP_MOCK_DOMAIN, pt, 0, m); }
static inline int mock_flags(int fd, uint32_t pt, uint32_t flags, struct mock *m) { return mock_op(fd, IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, pt, flags, m); }
static inline int replace(int fd, uint32_t stdev, uint32_t pt, uint32_t *out) {
    struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, .id = stdev, .mock_domain_replace = { .pt_id = pt } };
    int rc = test_cmd(fd, &c);
    if (out) *out = c.mock_domain_replace.pt_id;
    return rc;
}
static inline int hwpt_full(int fd, uint32_t flags, uint32_t dev, uint32_t pt, uint32_t type, const void *data, uint32_t len, uint32_t fault, uint32_t *out) {
    struct iommu_hwpt_alloc a = { .size = sizeof(a), .flags = flags, .dev_id = dev, .pt_id = pt, .data_type = type, .data_len = len,
                                  .data_uptr = (uintptr_t)data, .fault_id = fault };
    int rc = ioctl(fd, IOMMU_HWPT_ALLOC, &a);
    if (out) *out = a.out_hwpt_id;
    return rc;
}
static inline int hwpt_paging(int fd, uint32_t flags, uint32_t dev, uint32_t pt, uint32_t *out) { return hwpt_full(fd, flags, dev, pt, 0, NULL, 0, 0, out); }
static const struct iommu_hwpt_selftest iotlb_data = { .iotlb = IOMMU_TEST_IOTLB_DEFAULT };
static inline int hwpt_nested(int fd, uint32_t flags, uint32_t dev, uint32_t pt, uint32_t *out) {
    return hwpt_full(fd, flags, dev, pt, IOMMU_HWPT_DATA_SELFTEST, &iotlb_data, sizeof(iotlb_data), 0, out);
}
static inline int add_reserved(int fd, uint32_t ioas, uint64_t start, uint64_t len) {
    struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_ADD_RESERVED, .id = ioas, .add_reserved = { .start = start, .length = len } };
    return test_cmd(fd, &c);
}
static inline int check_map(int fd, uint32_t hwpt, uint64_t iova, uint64_t len, const void *uptr) {
    struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_MD_CHECK_MAP, .id = hwpt, .check_map = { .iova = iova, .length = len, .uptr = (uintptr_t)uptr } };
    return test_cmd(fd, &c);
}
static inline int check_refs(int fd, const void *uptr, uint64_t len, uint32_t refs) {
    struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_MD_CHECK_REFS, .check_refs = { .length = len, .uptr = (uintptr_t)uptr, .refs = refs } };
    return test_cmd(fd, &c);
}
/* MD_CHECK_IOTLB (op 14) and DEV_CHECK_CACHE (op 16) share the {slot, value} layout. */
static inline int check_slot(int fd, uint32_t op, uint32_t id, uint32_t slot, uint32_t val) {
    struct iommu_test_cmd c = { .op = op, .id = id, .check_iotlb = { .id = slot, .iotlb = val } };
    return test_cmd(fd, &c);
}
static inline int slots_are(int fd, uint32_t op, uint32_t id, uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
    return !check_slot(fd, op, id, 0, a) && !check_slot(fd, op, id, 1, b) && !check_slot(fd, op, id, 2, c) && !check_slot(fd, op, id, 3, d);
}
#define IOTLB IOMMU_TEST_OP_MD_CHECK_IOTLB
#define CACHE IOMMU_TEST_OP_DEV_CHECK_CACHE
static inline int invalidate(int fd, uint32_t id, uint32_t type, const void *reqs, uint32_t len, uint32_t *num) {
    struct iommu_hwpt_invalidate c = { .size = sizeof(c), .hwpt_id = id, .data_uptr = (uintptr_t)reqs, .data_type = type, .entry_len = len, .entry_num = *num };
    int rc = ioctl(fd, IOMMU_HWPT_INVALIDATE, &c);
    *num = c.entry_num;
    return rc;
}
static inline int create_access(int fd, uint32_t ioas, uint32_t flags, int *afd) {
    struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_CREATE_ACCESS, .id = ioas, .create_access = { .flags = flags } };
    int rc = test_cmd(fd, &c);
    *afd = rc ? -1 : (int)c.create_access.out_access_fd;
    return rc;
}
static inline int access_pages(int fd, int afd, uint32_t flags, uint64_t iova, uint64_t len, const void *uptr, uint32_t *item) {
    struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_ACCESS_PAGES, .id = (uint32_t)afd,
                                .access_pages = { .flags = flags, .iova = iova, .length = len, .uptr = (uintptr_t)uptr } };
    int rc = test_cmd(fd, &c);
    if (item) *item = c.access_pages.out_access_pages_id;
    return rc;
}
static inline int destroy_pages(int fd, int afd, uint32_t item) {
    struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_DESTROY_ACCESS_PAGES, .id = (uint32_t)afd, .destroy_access_pages = { .access_pages_id = item } };
    return test_cmd(fd, &c);
}
static inline int access_rw(int fd, int afd, uint32_t flags, uint64_t iova, void *uptr, uint64_t len) {
    struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_ACCESS_RW, .id = (uint32_t)afd,
                                .access_rw = { .iova = iova, .length = len, .uptr = (uintptr_t)uptr, .flags = flags } };
    return test_cmd(fd, &c);
}
/* The one-u32 ops: SET_TEMP_MEMORY_LIMIT, ACCESS_REPLACE_IOAS, TRIGGER_VEVENT, PASID_DETACH. */
static inline int op_u32(int fd, uint32_t op, uint32_t id, uint32_t val) {
    struct iommu_test_cmd c = { .op = op, .id = id, .memory_limit = { .limit = val } };
    return test_cmd(fd, &c);
}
/* PASID_ATTACH / REPLACE / CHECK_HWPT: {pasid, pt_id or hwpt_id}; *out gets the resolved id. */
static inline int pasid_op(int fd, uint32_t op, uint32_t stdev, uint32_t pasid, uint32_t pt, uint32_t *out) {
    struct iommu_test_cmd c = { .op = op, .id = stdev, .pasid_attach = { .pasid = pasid, .pt_id = pt } };
    int rc = test_cmd(fd, &c);
    if (out) *out = c.pasid_attach.pt_id;
    return rc;
}
#define ATTACH IOMMU_TEST_OP_PASID_ATTACH
#define PREPLACE IOMMU_TEST_OP_PASID_REPLACE
#define PCHECK IOMMU_TEST_OP_PASID_CHECK_HWPT
static inline int trigger_iopf(int fd, uint32_t dev, uint32_t pasid) {
    struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_TRIGGER_IOPF,
                                .trigger_iopf = { .dev_id = dev, .pasid = pasid, .grpid = 2, .perm = 3, .addr = 0xdeadbeaf } };
    return test_cmd(fd, &c);
}
static inline int fault_alloc(int fd, uint32_t *id, int *ffd) {
    struct iommu_fault_alloc a = { .size = sizeof(a) };
    int rc = ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &a);
    *id = a.out_fault_id;
    *ffd = rc ? -1 : (int)a.out_fault_fd;
    return rc;
}
static inline int get_hw_info(int fd, uint32_t dev, uint32_t flags, uint32_t type, void *data, uint32_t len, struct iommu_hw_info *h) {
    *h = (struct iommu_hw_info){ .size = sizeof(*h), .flags = flags, .dev_id = dev, .data_len = len, .data_uptr = (uintptr_t)data, .in_data_type = type };
    return ioctl(fd, IOMMU_GET_HW_INFO, h);
}
static inline int set_tracking(int fd, uint32_t hwpt, uint32_t flags) {
    struct iommu_hwpt_set_dirty_tracking c = { .size = sizeof(c), .flags = flags, .hwpt_id = hwpt };
    return ioctl(fd, IOMMU_HWPT_SET_DIRTY_TRACKING, &c);
}
static inline int dirty_mark(int fd, uint32_t hwpt, uint64_t iova, uint64_t len, uint64_t page, const void *bits, uint64_t *nr) {
    struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_DIRTY, .id = hwpt, .dirty = { .iova = iova, .length = len, .page_size = page, .uptr = (uintptr_t)bits } };
    int rc = test_cmd(fd, &c);
    if (nr) *nr = c.dirty.out_nr_dirty;
    return rc;
}
static inline int dirty_read(int fd, uint32_t hwpt, uint32_t flags, uint64_t iova, uint64_t len, uint64_t page, uint64_t *bits) {
    struct iommu_hwpt_get_dirty_bitmap c = { .size = sizeof(c), .hwpt_id = hwpt, .flags = flags, .iova = iova, .length = len, .page_size = page,
                                             .data = (uintptr_t)bits };
    return ioctl(fd, IOMMU_HWPT_GET_DIRTY_BITMAP, &c);
}
static inline int viommu_alloc(int fd, uint32_t dev, uint32_t hwpt, uint32_t type, void *data, uint32_t len, uint32_t *out) {
    struct iommu_viommu_alloc a = { .size = sizeof(a), .type = type, .dev_id = dev, .hwpt_id = hwpt, .data_len = len, .data_uptr = (uintptr_t)data };
    int rc = ioctl(fd, IOMMU_VIOMMU_ALLOC, &a);
    if (out) *out = a.out_viommu_id;
    return rc;
}
static inline int vdevice_alloc(int fd, uint32_t viommu, uint32_t dev, uint64_t virt, uint32_t *out) {
    struct iommu_vdevice_alloc a = { .size = sizeof(a), .viommu_id = viommu, .dev_id = dev, .virt_id = virt };
    int rc = ioctl(fd, IOMMU_VDEVICE_ALLOC, &a);
    if (out) *out = a.out_vdevice_id;
    return rc;
}
static inline int veventq_alloc(int fd, uint32_t viommu, uint32_t type, uint32_t depth, uint32_t *id, int *qfd) {
    struct iommu_veventq_alloc a = { .size = sizeof(a), .viommu_id = viommu, .type = type, .veventq_depth = depth };
    int rc = ioctl(fd, IOMMU_VEVENTQ_ALLOC, &a);
    if (id) *id = a.out_veventq_id;
    if (qfd) *qfd = rc ? -1 : (int)a.out_veventq_fd;
    return rc;
}
static inline int hw_queue(int fd, uint32_t viommu, uint32_t type, uint32_t index, uint64_t iova, uint64_t len, uint32_t *out) {
    struct iommu_hw_queue_alloc a = { .size = sizeof(a), .viommu_id = viommu, .type = type, .index = index, .nesting_parent_iova = iova, .length = len };
    int rc = ioctl(fd, IOMMU_HW_QUEUE_ALLOC, &a);
    if (out) *out = a.out_hw_queue_id;
    return rc;
}
/* mmap of the iommufd: 0 if it worked (and is undone again), else the errno. */
static inline int mmap_errno(int fd, size_t len, off_t off, int prot, int flags) {
    errno = 0;
    void *p = mmap(NULL, len, prot, flags, fd, off);
    if (p == MAP_FAILED) return errno;
    munmap(p, len);
    return 0;
}


static inline struct swiftiommu_stats stats(int fd) {
    struct swiftiommu_stats s = { .argsz = sizeof(s) };
    CHECK(ioctl(fd, SWIFTIOMMU_STATS, &s) == 0, "SWIFTIOMMU_STATS");
    return s;
}

struct area { const char *name; void (*run)(int); };

/* Makes the buffer, runs each area on its own file, then checks nothing is left. */
static inline int run_areas(const struct area *areas, size_t n) {
    /* The buffer: 16 shared anonymous pages at a 2 MiB-aligned address. */
    const uintptr_t huge = 2u << 20;
    unsigned char *raw = mmap(NULL, BUF_SIZE + huge, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    buffer = raw == MAP_FAILED ? MAP_FAILED : mmap((void *)(((uintptr_t)raw + huge - 1) & ~(huge - 1)), BUF_SIZE, PROT_READ | PROT_WRITE,
                                                   MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    CHECK(buffer != MAP_FAILED, "the test buffer");
    int fd = open("/dev/iommu", O_RDWR);
    CHECK(fd >= 0, "open /dev/iommu");
    if (buffer == MAP_FAILED || fd < 0) { printf("%d passed, %d failed\n", passed, failed); return 1; }
    memset(buffer, 0x5a, BUF_SIZE);
    struct swiftiommu_stats base = stats(fd);
    CHECK(close(fd) == 0, "close");

    for (size_t i = 0; i < n; i++) {
        fd = open("/dev/iommu", O_RDWR);
        CHECK(fd >= 0, "open /dev/iommu for %s", areas[i].name);
        if (fd < 0) continue;
        int before = failed;
        areas[i].run(fd);
        CHECK(close(fd) == 0, "close /dev/iommu after %s", areas[i].name);
        if (failed != before) fprintf(stderr, "-- %s: %d failed\n", areas[i].name, failed - before);
    }

    /* Everything is closed: a new file sees nothing pinned. */
    fd = open("/dev/iommu", O_RDWR);
    CHECK(fd >= 0, "reopen /dev/iommu");
    if (fd >= 0) {
        CHECK(check_refs(fd, buffer, BUF_SIZE, 0) == 0, "MD_CHECK_REFS: no page of the buffer is pinned");
        struct swiftiommu_stats end = stats(fd);
        CHECK(end.pinned == base.pinned && end.domains == base.domains, "nothing left pinned or mapped: pinned %llu -> %llu, domains %llu -> %llu",
              (unsigned long long)base.pinned, (unsigned long long)end.pinned, (unsigned long long)base.domains, (unsigned long long)end.domains);
        CHECK(close(fd) == 0, "close");
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

#endif
