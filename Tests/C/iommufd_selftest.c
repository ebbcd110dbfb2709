/* The kernel's selftest driver interface through /dev/iommu (run it under
 * `iommu-sim preload -- ./iommufd_selftest`): IOMMU_TEST_CMD (0x3ba0) and the mock IOMMU
 * behind it as Linux v6.17's drivers/iommu/iommufd/selftest.c answers: the command's
 * framing; mock devices and their IDs, auto HWPT sharing, IOVA ranges and device caches;
 * reserved ranges; MD_CHECK_MAP and MD_CHECK_REFS; accesses (pin, unpin, read/write
 * through the IOAS, replace); the temporary memory limit; replacing a device's domain; dirty
 * tracking; GET_HW_INFO; nested HWPTs, their IOTLB and invalidation; IO page faults; PASID
 * attach/replace/detach and the pasid 1024 quirk; vIOMMU with its mmap region, vDEVICE,
 * vEVENTQ, cache invalidation and HW queues; destroying devices. Each area runs on its own
 * fresh /dev/iommu file; at the end nothing may be left pinned. The layouts are in uapi.h.
 * Prints "N passed, N failed" and exits non-zero on any failure. */
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
static int test_cmd(int fd, struct iommu_test_cmd *c) { c->size = sizeof(*c); return ioctl(fd, IOMMU_TEST_CMD, c); }
static uint32_t ioas_alloc(int fd) {
    struct iommu_ioas_alloc a = { .size = sizeof(a) };
    return ioctl(fd, IOMMU_IOAS_ALLOC, &a) ? 0 : a.out_ioas_id;
}
static int destroy(int fd, uint32_t id) { struct iommu_destroy d = { .size = sizeof(d), .id = id }; return ioctl(fd, IOMMU_DESTROY, &d); }
static int map_fixed(int fd, uint32_t ioas, const void *va, uint64_t len, uint64_t iova) {
    struct iommu_ioas_map m = { .size = sizeof(m), .flags = MAP_FIXED_IOVA | MAP_READABLE | MAP_WRITEABLE, .ioas_id = ioas,
                                .user_va = (uintptr_t)va, .length = len, .iova = iova };
    return ioctl(fd, IOMMU_IOAS_MAP, &m);
}
static int map_auto(int fd, uint32_t ioas, const void *va, uint64_t len, uint64_t *iova) {
    struct iommu_ioas_map m = { .size = sizeof(m), .flags = MAP_READABLE | MAP_WRITEABLE, .ioas_id = ioas, .user_va = (uintptr_t)va, .length = len };
    int rc = ioctl(fd, IOMMU_IOAS_MAP, &m);
    *iova = m.iova;
    return rc;
}
static int unmap(int fd, uint32_t ioas, uint64_t iova, uint64_t len) {
    struct iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = ioas, .iova = iova, .length = len };
    return ioctl(fd, IOMMU_IOAS_UNMAP, &u);
}
static int iova_ranges(int fd, uint32_t ioas, struct iommu_iova_range *r, uint32_t cap, uint32_t *num, uint64_t *align) {
    struct iommu_ioas_iova_ranges c = { .size = sizeof(c), .ioas_id = ioas, .num_iovas = cap, .allowed_iovas = (uintptr_t)r };
    int rc = ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &c);
    *num = c.num_iovas;
    if (align) *align = c.out_iova_alignment;
    return rc;
}
struct mock { uint32_t stdev, hwpt, idev; };
static int mock_op(int fd, uint32_t op, uint32_t pt, uint32_t dev_flags, struct mock *m) {
    struct iommu_test_cmd c = { .op = op, .id = pt, .mock_domain_flags = { .dev_flags = dev_flags } };
    int rc = test_cmd(fd, &c);
    if (rc == 0 && m) *m = (struct mock){ c.mock_domain.out_stdev_id, c.mock_domain.out_hwpt_id, c.mock_domain.out_idev_id };
    return rc;
}
static int mock(int fd, uint32_t pt, struct mock *m) { return mock_op(fd, IOMMU_TEST_OP_MOCK_DOMAIN, pt, 0, m); }
static int mock_flags(int fd, uint32_t pt, uint32_t flags, struct mock *m) { return mock_op(fd, IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, pt, flags, m); }
static int replace(int fd, uint32_t stdev, uint32_t pt, uint32_t *out) {
    struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, .id = stdev, .mock_domain_replace = { .pt_id = pt } };
    int rc = test_cmd(fd, &c);
    if (out) *out = c.mock_domain_replace.pt_id;
    return rc;
}
static int hwpt_full(int fd, uint32_t flags, uint32_t dev, uint32_t pt, uint32_t type, const void *data, uint32_t len, uint32_t fault, uint32_t *out) {
    struct iommu_hwpt_alloc a = { .size = sizeof(a), .flags = flags, .dev_id = dev, .pt_id = pt, .data_type = type, .data_len = len,
                                  .data_uptr = (uintptr_t)data, .fault_id = fault };
    int rc = ioctl(fd, IOMMU_HWPT_ALLOC, &a);
    if (out) *out = a.out_hwpt_id;
    return rc;
}
static int hwpt_paging(int fd, uint32_t flags, uint32_t dev, uint32_t pt, uint32_t *out) { return hwpt_full(fd, flags, dev, pt, 0, NULL, 0, 0, out); }
static const struct iommu_hwpt_selftest iotlb_data = { .iotlb = IOMMU_TEST_IOTLB_DEFAULT };
static int hwpt_nested(int fd, uint32_t flags, uint32_t dev, uint32_t pt, uint32_t *out) {
    return hwpt_full(fd, flags, dev, pt, IOMMU_HWPT_DATA_SELFTEST, &iotlb_data, sizeof(iotlb_data), 0, out);
}
static int add_reserved(int fd, uint32_t ioas, uint64_t start, uint64_t len) {
    struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_ADD_RESERVED, .id = ioas, .add_reserved = { .start = start, .length = len } };
    return test_cmd(fd, &c);
}
static int check_map(int fd, uint32_t hwpt, uint64_t iova, uint64_t len, const void *uptr) {
    struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_MD_CHECK_MAP, .id = hwpt, .check_map = { .iova = iova, .length = len, .uptr = (uintptr_t)uptr } };
    return test_cmd(fd, &c);
}
static int check_refs(int fd, const void *uptr, uint64_t len, uint32_t refs) {
    struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_MD_CHECK_REFS, .check_refs = { .length = len, .uptr = (uintptr_t)uptr, .refs = refs } };
    return test_cmd(fd, &c);
}
/* MD_CHECK_IOTLB (op 14) and DEV_CHECK_CACHE (op 16) share the {slot, value} layout. */
static int check_slot(int fd, uint32_t op, uint32_t id, uint32_t slot, uint32_t val) {
    struct iommu_test_cmd c = { .op = op, .id = id, .check_iotlb = { .id = slot, .iotlb = val } };
    return test_cmd(fd, &c);
}
static int slots_are(int fd, uint32_t op, uint32_t id, uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
    return !check_slot(fd, op, id, 0, a) && !check_slot(fd, op, id, 1, b) && !check_slot(fd, op, id, 2, c) && !check_slot(fd, op, id, 3, d);
}
#define IOTLB IOMMU_TEST_OP_MD_CHECK_IOTLB
#define CACHE IOMMU_TEST_OP_DEV_CHECK_CACHE
static int invalidate(int fd, uint32_t id, uint32_t type, const void *reqs, uint32_t len, uint32_t *num) {
    struct iommu_hwpt_invalidate c = { .size = sizeof(c), .hwpt_id = id, .data_uptr = (uintptr_t)reqs, .data_type = type, .entry_len = len, .entry_num = *num };
    int rc = ioctl(fd, IOMMU_HWPT_INVALIDATE, &c);
    *num = c.entry_num;
    return rc;
}
static int create_access(int fd, uint32_t ioas, uint32_t flags, int *afd) {
    struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_CREATE_ACCESS, .id = ioas, .create_access = { .flags = flags } };
    int rc = test_cmd(fd, &c);
    *afd = rc ? -1 : (int)c.create_access.out_access_fd;
    return rc;
}
static int access_pages(int fd, int afd, uint32_t flags, uint64_t iova, uint64_t len, const void *uptr, uint32_t *item) {
    struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_ACCESS_PAGES, .id = (uint32_t)afd,
                                .access_pages = { .flags = flags, .iova = iova, .length = len, .uptr = (uintptr_t)uptr } };
    int rc = test_cmd(fd, &c);
    if (item) *item = c.access_pages.out_access_pages_id;
    return rc;
}
static int destroy_pages(int fd, int afd, uint32_t item) {
    struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_DESTROY_ACCESS_PAGES, .id = (uint32_t)afd, .destroy_access_pages = { .access_pages_id = item } };
    return test_cmd(fd, &c);
}
static int access_rw(int fd, int afd, uint32_t flags, uint64_t iova, void *uptr, uint64_t len) {
    struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_ACCESS_RW, .id = (uint32_t)afd,
                                .access_rw = { .iova = iova, .length = len, .uptr = (uintptr_t)uptr, .flags = flags } };
    return test_cmd(fd, &c);
}
/* The one-u32 ops: SET_TEMP_MEMORY_LIMIT, ACCESS_REPLACE_IOAS, TRIGGER_VEVENT, PASID_DETACH. */
static int op_u32(int fd, uint32_t op, uint32_t id, uint32_t val) {
    struct iommu_test_cmd c = { .op = op, .id = id, .memory_limit = { .limit = val } };
    return test_cmd(fd, &c);
}
/* PASID_ATTACH / REPLACE / CHECK_HWPT: {pasid, pt_id or hwpt_id}; *out gets the resolved id. */
static int pasid_op(int fd, uint32_t op, uint32_t stdev, uint32_t pasid, uint32_t pt, uint32_t *out) {
    struct iommu_test_cmd c = { .op = op, .id = stdev, .pasid_attach = { .pasid = pasid, .pt_id = pt } };
    int rc = test_cmd(fd, &c);
    if (out) *out = c.pasid_attach.pt_id;
    return rc;
}
#define ATTACH IOMMU_TEST_OP_PASID_ATTACH
#define PREPLACE IOMMU_TEST_OP_PASID_REPLACE
#define PCHECK IOMMU_TEST_OP_PASID_CHECK_HWPT
static int trigger_iopf(int fd, uint32_t dev, uint32_t pasid) {
    struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_TRIGGER_IOPF,
                                .trigger_iopf = { .dev_id = dev, .pasid = pasid, .grpid = 2, .perm = 3, .addr = 0xdeadbeaf } };
    return test_cmd(fd, &c);
}
static int fault_alloc(int fd, uint32_t *id, int *ffd) {
    struct iommu_fault_alloc a = { .size = sizeof(a) };
    int rc = ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &a);
    *id = a.out_fault_id;
    *ffd = rc ? -1 : (int)a.out_fault_fd;
    return rc;
}
static int get_hw_info(int fd, uint32_t dev, uint32_t flags, uint32_t type, void *data, uint32_t len, struct iommu_hw_info *h) {
    *h = (struct iommu_hw_info){ .size = sizeof(*h), .flags = flags, .dev_id = dev, .data_len = len, .data_uptr = (uintptr_t)data, .in_data_type = type };
    return ioctl(fd, IOMMU_GET_HW_INFO, h);
}
static int set_tracking(int fd, uint32_t hwpt, uint32_t flags) {
    struct iommu_hwpt_set_dirty_tracking c = { .size = sizeof(c), .flags = flags, .hwpt_id = hwpt };
    return ioctl(fd, IOMMU_HWPT_SET_DIRTY_TRACKING, &c);
}
static int dirty_mark(int fd, uint32_t hwpt, uint64_t iova, uint64_t len, uint64_t page, const void *bits, uint64_t *nr) {
    struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_DIRTY, .id = hwpt, .dirty = { .iova = iova, .length = len, .page_size = page, .uptr = (uintptr_t)bits } };
    int rc = test_cmd(fd, &c);
    if (nr) *nr = c.dirty.out_nr_dirty;
    return rc;
}
static int dirty_read(int fd, uint32_t hwpt, uint32_t flags, uint64_t iova, uint64_t len, uint64_t page, uint64_t *bits) {
    struct iommu_hwpt_get_dirty_bitmap c = { .size = sizeof(c), .hwpt_id = hwpt, .flags = flags, .iova = iova, .length = len, .page_size = page,
                                             .data = (uintptr_t)bits };
    return ioctl(fd, IOMMU_HWPT_GET_DIRTY_BITMAP, &c);
}
static int viommu_alloc(int fd, uint32_t dev, uint32_t hwpt, uint32_t type, void *data, uint32_t len, uint32_t *out) {
    struct iommu_viommu_alloc a = { .size = sizeof(a), .type = type, .dev_id = dev, .hwpt_id = hwpt, .data_len = len, .data_uptr = (uintptr_t)data };
    int rc = ioctl(fd, IOMMU_VIOMMU_ALLOC, &a);
    if (out) *out = a.out_viommu_id;
    return rc;
}
static int vdevice_alloc(int fd, uint32_t viommu, uint32_t dev, uint64_t virt, uint32_t *out) {
    struct iommu_vdevice_alloc a = { .size = sizeof(a), .viommu_id = viommu, .dev_id = dev, .virt_id = virt };
    int rc = ioctl(fd, IOMMU_VDEVICE_ALLOC, &a);
    if (out) *out = a.out_vdevice_id;
    return rc;
}
static int veventq_alloc(int fd, uint32_t viommu, uint32_t type, uint32_t depth, uint32_t *id, int *qfd) {
    struct iommu_veventq_alloc a = { .size = sizeof(a), .viommu_id = viommu, .type = type, .veventq_depth = depth };
    int rc = ioctl(fd, IOMMU_VEVENTQ_ALLOC, &a);
    if (id) *id = a.out_veventq_id;
    if (qfd) *qfd = rc ? -1 : (int)a.out_veventq_fd;
    return rc;
}
static int hw_queue(int fd, uint32_t viommu, uint32_t type, uint32_t index, uint64_t iova, uint64_t len, uint32_t *out) {
    struct iommu_hw_queue_alloc a = { .size = sizeof(a), .viommu_id = viommu, .type = type, .index = index, .nesting_parent_iova = iova, .length = len };
    int rc = ioctl(fd, IOMMU_HW_QUEUE_ALLOC, &a);
    if (out) *out = a.out_hw_queue_id;
    return rc;
}
/* mmap of the iommufd: 0 if it worked (and is undone again), else the errno. */
static int mmap_errno(int fd, size_t len, off_t off, int prot, int flags) {
    errno = 0;
    void *p = mmap(NULL, len, prot, flags, fd, off);
    if (p == MAP_FAILED) return errno;
    munmap(p, len);
    return 0;
}

/* ---- the areas ---- */

static void framing(int fd) {
    struct { struct iommu_test_cmd c; uint64_t extra; } big = { .c = { .size = 67, .op = IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT, .memory_limit = { 65536 } } };
    CHECK_ERRNO(ioctl(fd, IOMMU_TEST_CMD, &big), EINVAL, "size 67, short of the end of `last`");
    big.c.size = 68;
    CHECK(ioctl(fd, IOMMU_TEST_CMD, &big) == 0, "size 68 (the minimum) is accepted");
    big.c.size = sizeof(big);
    big.extra = 1;
    CHECK_ERRNO(ioctl(fd, IOMMU_TEST_CMD, &big), E2BIG, "a non-zero byte past the 72 the kernel knows");
    big.extra = 0;
    CHECK(ioctl(fd, IOMMU_TEST_CMD, &big) == 0, "a longer struct with a zero tail is accepted");
    big.c.size = sizeof(big.c);
    big.c.__reserved = 7;
    CHECK(ioctl(fd, IOMMU_TEST_CMD, &big) == 0, "the header's __reserved is not checked");
    big.c.op = 0;
    CHECK_ERRNO(ioctl(fd, IOMMU_TEST_CMD, &big), EOPNOTSUPP, "op 0");
    big.c.op = 22;
    CHECK_ERRNO(ioctl(fd, IOMMU_TEST_CMD, &big), EOPNOTSUPP, "op 22 (past PASID_CHECK_HWPT)");
    big.c.op = 0xffffffff;
    CHECK_ERRNO(ioctl(fd, IOMMU_TEST_CMD, &big), EOPNOTSUPP, "op 0xffffffff");
    CHECK(IOMMU_TEST_CMD == 0x3ba0, "IOMMU_TEST_CMD is 0x3ba0");
    CHECK_ERRNO(ioctl(fd, _IOWR(IOMMUFD_TYPE, 0xa0, struct iommu_test_cmd), &big), ENOTTY, "TEST_CMD's number with size bits");
    CHECK_ERRNO(ioctl(fd, _IO(IOMMUFD_TYPE, 0x9f), &big), ENOTTY, "an empty slot between HW_QUEUE_ALLOC and TEST_CMD");
    CHECK_ERRNO(ioctl(fd, IOMMU_TEST_CMD, NULL), EFAULT, "a NULL argument");
}

static void mock_domain(int fd) {
    uint32_t ioas = ioas_alloc(fd);
    struct mock a = { 0 }, b = { 0 }, c = { 0 }, d = { 0 };
    CHECK(ioas == 1, "a fresh context's IOAS is 1 (%u)", ioas);
    CHECK(mock(fd, ioas, &a) == 0 && a.stdev == 2 && a.idev == 3 && a.hwpt == 4, "MOCK_DOMAIN: stdev 2, idev 3, hwpt 4 (%u %u %u)", a.stdev, a.idev, a.hwpt);
    CHECK(mock(fd, ioas, &b) == 0 && b.stdev == 5 && b.idev == 6 && b.hwpt == a.hwpt,
          "a second device on the IOAS shares the auto HWPT (%u %u %u)", b.stdev, b.idev, b.hwpt);
    CHECK_ERRNO(mock_flags(fd, ioas, 8, NULL), EINVAL, "MOCK_DOMAIN_FLAGS with an unknown device flag");
    CHECK_ERRNO(mock(fd, 999, NULL), ENOENT, "MOCK_DOMAIN on a missing pt_id");
    CHECK_ERRNO(mock(fd, a.idev, NULL), EINVAL, "MOCK_DOMAIN on a device's id (not an IOAS or HWPT)");
    CHECK(mock_flags(fd, ioas, 0, &c) == 0 && c.stdev == 7 && c.idev == 8 && c.hwpt == a.hwpt,
          "the IDs the failed calls took are reused (%u %u %u)", c.stdev, c.idev, c.hwpt);
    CHECK(mock(fd, a.hwpt, &d) == 0 && d.stdev == 9 && d.idev == 10 && d.hwpt == a.hwpt, "MOCK_DOMAIN straight onto the auto HWPT");

    struct iommu_iova_range r[2] = { { 0, 0 } };
    uint32_t num = 0;
    uint64_t align = 0;
    CHECK(iova_ranges(fd, ioas, r, 2, &num, &align) == 0 && num == 1 && r[0].start == 0x1000000 && r[0].last == 0x7fffffff && align == MOCK_PAGE,
          "IOVA_RANGES with a mock domain: the aperture [0x1000000, 0x7fffffff], alignment 2 KiB (%u ranges)", num);

    CHECK(slots_are(fd, CACHE, a.idev, 0xbaddad, 0xbaddad, 0xbaddad, 0xbaddad), "DEV_CHECK_CACHE: the 4 slots are 0xbaddad");
    CHECK_ERRNO(check_slot(fd, CACHE, a.idev, 4, 0xbaddad), EINVAL, "DEV_CHECK_CACHE slot 4");
    CHECK_ERRNO(check_slot(fd, CACHE, a.idev, 0, 0), EINVAL, "DEV_CHECK_CACHE with a wrong value");
    CHECK_ERRNO(check_slot(fd, CACHE, a.stdev, 0, 0xbaddad), ENOENT, "DEV_CHECK_CACHE takes the idev, not the stdev");

    CHECK_ERRNO(destroy(fd, a.idev), EBUSY, "DESTROY of the idev while its stdev lives");
    CHECK_ERRNO(destroy(fd, ioas), EBUSY, "DESTROY of an IOAS with a HWPT");
    CHECK(destroy(fd, a.stdev) == 0, "DESTROY of the stdev");
    CHECK_ERRNO(destroy(fd, a.idev), ENOENT, "the idev went with its stdev");
    CHECK_ERRNO(destroy(fd, a.stdev), ENOENT, "DESTROY of the stdev twice");
    CHECK(destroy(fd, b.stdev) == 0 && destroy(fd, c.stdev) == 0 && destroy(fd, d.stdev) == 0, "DESTROY of the other devices");
    CHECK_ERRNO(destroy(fd, a.hwpt), ENOENT, "the auto HWPT went with its last device");
    CHECK(destroy(fd, ioas) == 0, "then the IOAS can go");
}

static void reserved(int fd) {
    uint32_t ioas = ioas_alloc(fd), ioas2 = ioas_alloc(fd), ioas3 = ioas_alloc(fd), num = 0;
    struct iommu_iova_range r[3] = { { 0, 0 } };
    CHECK(map_fixed(fd, ioas, buffer, 4 * PAGE, 0x1000000) == 0, "IOAS_MAP at 0x1000000");
    CHECK_ERRNO(add_reserved(fd, ioas, 0x1001000, PAGE), EADDRINUSE, "ADD_RESERVED over a mapping");
    CHECK_ERRNO(add_reserved(fd, 999, 0x2000000, PAGE), ENOENT, "ADD_RESERVED on a missing IOAS");
    CHECK(add_reserved(fd, ioas, 0x2000000, 0x10000) == 0, "ADD_RESERVED of [0x2000000, 0x200ffff]");
    CHECK(iova_ranges(fd, ioas, r, 3, &num, NULL) == 0 && num == 2 && r[0].start == 0 && r[0].last == 0x1ffffff &&
          r[1].start == 0x2010000 && r[1].last == UINT64_MAX, "IOVA_RANGES around the reserved range (%u ranges)", num);
    /* iopt_check_iova: a fixed IOVA inside a reserved range is EINVAL (not EADDRINUSE, not ENOSPC). */
    CHECK_ERRNO(map_fixed(fd, ioas, buffer, PAGE, 0x2008000), EINVAL, "a fixed IOAS_MAP into the reserved range");
    CHECK_ERRNO(map_fixed(fd, ioas, buffer, 2 * PAGE, 0x1fff000), EINVAL, "a fixed IOAS_MAP running into it");
    CHECK(map_fixed(fd, ioas, buffer, PAGE, 0x2010000) == 0, "a fixed IOAS_MAP just past it");
    struct iommu_iova_range allow = { 0x1ff0000, 0x2000fff };
    struct iommu_ioas_allow_iovas al = { .size = sizeof(al), .ioas_id = ioas, .num_iovas = 1, .allowed_iovas = (uintptr_t)&allow };
    CHECK_ERRNO(ioctl(fd, IOMMU_IOAS_ALLOW_IOVAS, &al), EADDRINUSE, "ALLOW_IOVAS over a reserved range");
    allow = (struct iommu_iova_range){ 0x4000000, 0x4ffffff };
    CHECK(ioctl(fd, IOMMU_IOAS_ALLOW_IOVAS, &al) == 0, "ALLOW_IOVAS elsewhere");
    CHECK_ERRNO(add_reserved(fd, ioas, 0x4001000, PAGE), EADDRINUSE, "ADD_RESERVED over an allowed range");
    al.num_iovas = 0;
    CHECK(ioctl(fd, IOMMU_IOAS_ALLOW_IOVAS, &al) == 0 && add_reserved(fd, ioas, 0x4001000, PAGE) == 0, "and once it is lifted, it works");
    /* Nothing left for automatic allocation: ENOSPC. */
    uint64_t iova = 0;
    CHECK(add_reserved(fd, ioas2, PAGE, UINT64_MAX - 2 * PAGE + 1) == 0, "ADD_RESERVED of the whole allocation window");
    CHECK_ERRNO(map_auto(fd, ioas2, buffer, PAGE, &iova), ENOSPC, "an automatic IOAS_MAP with every IOVA reserved");
    /* The kernel's reserved_overflow case: the length is not validated. */
    CHECK(add_reserved(fd, ioas3, 6, 0xffffffffffff8001ull) == 0, "ADD_RESERVED with a length reaching near the top");
    CHECK_ERRNO(map_auto(fd, ioas3, buffer, 0x5000, &iova), ENOSPC, "an automatic IOAS_MAP finds no room past it");
    CHECK(destroy(fd, ioas) == 0 && destroy(fd, ioas2) == 0 && destroy(fd, ioas3) == 0, "DESTROY of the IOASes");
}

static void domain_map(int fd) {
    uint32_t ioas = ioas_alloc(fd), hwpt2 = 0;
    struct mock m = { 0 };
    CHECK(mock(fd, ioas, &m) == 0, "MOCK_DOMAIN");
    CHECK(map_fixed(fd, ioas, buffer, BUF_SIZE, START) == 0, "IOAS_MAP of the buffer at 0x1000000");
    CHECK(check_map(fd, m.hwpt, START, BUF_SIZE, buffer) == 0, "MD_CHECK_MAP of the whole buffer passes");
    CHECK(check_map(fd, m.hwpt, START + 3 * MOCK_PAGE, MOCK_PAGE, buffer + 3 * MOCK_PAGE) == 0, "MD_CHECK_MAP of one 2 KiB slot");
    CHECK(check_map(fd, m.hwpt, START, 0, buffer) == 0, "MD_CHECK_MAP of length 0");
    CHECK_ERRNO(check_map(fd, m.hwpt, START, PAGE, buffer + PAGE), EINVAL, "MD_CHECK_MAP with a uptr that is not what is mapped");
    CHECK_ERRNO(check_map(fd, m.hwpt, START + 1, MOCK_PAGE, buffer), EINVAL, "MD_CHECK_MAP with an IOVA not 2 KiB aligned");
    CHECK_ERRNO(check_map(fd, m.hwpt, START, 100, buffer), EINVAL, "MD_CHECK_MAP with a length not 2 KiB aligned");
    CHECK_ERRNO(check_map(fd, m.hwpt, START, MOCK_PAGE, buffer + 1), EINVAL, "MD_CHECK_MAP with a uptr not 2 KiB aligned");
    CHECK_ERRNO(check_map(fd, m.hwpt, START + BUF_SIZE, PAGE, buffer), EINVAL, "MD_CHECK_MAP of an IOVA not mapped");
    CHECK_ERRNO(check_map(fd, ioas, START, PAGE, buffer), ENOENT, "MD_CHECK_MAP on an IOAS id");
    CHECK_ERRNO(check_map(fd, m.idev, START, PAGE, buffer), ENOENT, "MD_CHECK_MAP on a device id");
    CHECK_ERRNO(check_map(fd, 999, START + 1, PAGE, buffer), EINVAL, "MD_CHECK_MAP checks its arguments before the lookup");

    CHECK(check_refs(fd, buffer, BUF_SIZE, 1) == 0, "MD_CHECK_REFS: each page pinned once while mapped into a domain");
    CHECK_ERRNO(check_refs(fd, buffer, BUF_SIZE, 2), EIO, "MD_CHECK_REFS with a wrong count");
    CHECK_ERRNO(check_refs(fd, buffer + MOCK_PAGE, PAGE, 1), EINVAL, "MD_CHECK_REFS with a uptr not 4 KiB aligned");
    CHECK_ERRNO(check_refs(fd, buffer, MOCK_PAGE, 1), EINVAL, "MD_CHECK_REFS with a length not 4 KiB aligned");
    CHECK(hwpt_paging(fd, 0, m.idev, ioas, &hwpt2) == 0 && check_map(fd, hwpt2, START, BUF_SIZE, buffer) == 0,
          "a second HWPT on the IOAS is filled with the mapping");
    CHECK(check_refs(fd, buffer, BUF_SIZE, 1) == 0, "and the pages are still pinned once (one page provider)");
    CHECK(destroy(fd, hwpt2) == 0, "DESTROY of the second HWPT");

    CHECK(unmap(fd, ioas, START, BUF_SIZE) == 0, "IOAS_UNMAP");
    CHECK(check_refs(fd, buffer, BUF_SIZE, 0) == 0, "MD_CHECK_REFS: 0 after the unmap");
    CHECK_ERRNO(check_refs(fd, buffer, BUF_SIZE, 1), EIO, "MD_CHECK_REFS of 1 after the unmap");
    CHECK_ERRNO(check_map(fd, m.hwpt, START, PAGE, buffer), EINVAL, "MD_CHECK_MAP after the unmap");
    CHECK(destroy(fd, m.stdev) == 0 && destroy(fd, ioas) == 0, "DESTROY");
}

static void accesses(int fd) {
    uint32_t ioas = ioas_alloc(fd), ioas2, item = 99, item1 = 99, item2 = 99;
    int afd = -1, afd_rw = -1, tmp_fd = -1;
    CHECK(map_fixed(fd, ioas, buffer, BUF_SIZE, START) == 0, "IOAS_MAP of the buffer (no domain)");
    CHECK(create_access(fd, ioas, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES, &afd) == 0 && afd > 2, "CREATE_ACCESS gives an fd (%d)", afd);
    CHECK(afd >= 0 && (fcntl(afd, F_GETFD) & FD_CLOEXEC), "the access fd is O_CLOEXEC");
    ioas2 = ioas_alloc(fd);
    CHECK(ioas2 == 3, "CREATE_ACCESS consumed an object ID (the next IOAS is %u)", ioas2);
    CHECK_ERRNO(create_access(fd, ioas, 2, &tmp_fd), EOPNOTSUPP, "CREATE_ACCESS with an unknown flag");
    CHECK_ERRNO(create_access(fd, 999, 0, &tmp_fd), ENOENT, "CREATE_ACCESS on a missing IOAS");

    CHECK(access_pages(fd, afd, 0, START, 2 * PAGE, buffer, &item) == 0 && item == 0, "ACCESS_PAGES: the first item is 0 (%u)", item);
    CHECK(access_pages(fd, afd, MOCK_FLAGS_ACCESS_WRITE, START, 2 * PAGE, buffer, &item1) == 0 && item1 == 1, "the second item is 1");
    CHECK(check_refs(fd, buffer, 2 * PAGE, 1) == 0 && check_refs(fd, buffer + 2 * PAGE, BUF_SIZE - 2 * PAGE, 0) == 0,
          "the pinned pages count once, the rest are not pinned");
    CHECK_ERRNO(access_pages(fd, afd, 0, START, 16 * 1024 * 1024 + PAGE, buffer, NULL), ENOMEM, "ACCESS_PAGES over 16 MiB");
    CHECK_ERRNO(access_pages(fd, afd, 2, START, PAGE, buffer, NULL), EOPNOTSUPP, "ACCESS_PAGES with an unknown flag");
    CHECK_ERRNO(access_pages(fd, fd, 0, START, PAGE, buffer, NULL), EBADFD, "ACCESS_PAGES on the iommufd's own fd");
    CHECK_ERRNO(access_pages(fd, 0, 0, START, PAGE, buffer, NULL), EBADFD, "ACCESS_PAGES on fd 0");
    CHECK_ERRNO(access_pages(fd, afd, 0, START, PAGE, buffer + PAGE, NULL), EBADE, "ACCESS_PAGES with a uptr that does not match");
    CHECK_ERRNO(access_pages(fd, afd, 0, 0x3000000, PAGE, buffer, NULL), ENOENT, "ACCESS_PAGES of an IOVA not mapped");
    CHECK(create_access(fd, ioas, 0, &afd_rw) == 0, "CREATE_ACCESS without NEEDS_PIN_PAGES");
    CHECK_ERRNO(access_pages(fd, afd_rw, 0, START, PAGE, buffer, NULL), EOPNOTSUPP, "ACCESS_PAGES on an access that cannot pin");
    CHECK(destroy_pages(fd, afd, 0) == 0, "DESTROY_ACCESS_PAGES of item 0");
    CHECK_ERRNO(destroy_pages(fd, afd, 0), ENOENT, "DESTROY_ACCESS_PAGES of item 0 again");
    CHECK_ERRNO(destroy_pages(fd, fd, 1), EBADFD, "DESTROY_ACCESS_PAGES on the iommufd's own fd");
    CHECK(destroy_pages(fd, afd, 1) == 0 && check_refs(fd, buffer, BUF_SIZE, 0) == 0, "the last item goes and the pages are let go");
    /* An unmap removes the items over the range (the access's unmap callback). */
    CHECK(access_pages(fd, afd, 0, START + PAGE, PAGE, buffer + PAGE, &item2) == 0 && item2 == 2, "a third item");
    CHECK(unmap(fd, ioas, START, BUF_SIZE) == 0, "IOAS_UNMAP under a pinned item");
    CHECK_ERRNO(destroy_pages(fd, afd, item2), ENOENT, "the unmap took the item away");
    CHECK(check_refs(fd, buffer, BUF_SIZE, 0) == 0, "nothing is pinned after the unmap");

    /* ACCESS_RW through the IOAS, to and from the user buffer mapped there. */
    CHECK(map_fixed(fd, ioas, buffer, BUF_SIZE, START) == 0, "IOAS_MAP again");
    for (int i = 0; i < BUF_SIZE; i++) buffer[i] = (unsigned char)(i * 7 + 1);
    unsigned char tmp[200];
    memset(tmp, 0, sizeof(tmp));
    CHECK(access_rw(fd, afd, 0, START + 4000, tmp, 150) == 0 && memcmp(tmp, buffer + 4000, 150) == 0, "ACCESS_RW read across a page");
    memset(tmp, 0, sizeof(tmp));
    CHECK(access_rw(fd, afd_rw, MOCK_ACCESS_RW_SLOW_PATH, START + 9000, tmp, 200) == 0 && memcmp(tmp, buffer + 9000, 200) == 0,
          "ACCESS_RW read, slow path");
    memset(tmp, 0xa5, sizeof(tmp));
    CHECK(access_rw(fd, afd, MOCK_ACCESS_RW_WRITE, START + 8150, tmp, 100) == 0 && memcmp(buffer + 8150, tmp, 100) == 0 &&
          buffer[8149] == (unsigned char)(8149 * 7 + 1), "ACCESS_RW write lands in the user buffer, and only there");
    CHECK_ERRNO(access_rw(fd, afd, 0, START, tmp, 16 * 1024 * 1024 + 1), ENOMEM, "ACCESS_RW over 16 MiB");
    CHECK_ERRNO(access_rw(fd, afd, 2, START, tmp, 8), EOPNOTSUPP, "ACCESS_RW with an unknown flag");
    CHECK_ERRNO(access_rw(fd, fd, 0, START, tmp, 8), EBADFD, "ACCESS_RW on the iommufd's own fd");
    CHECK_ERRNO(access_rw(fd, afd, 0, 0x3000000, tmp, 8), ENOENT, "ACCESS_RW of an IOVA not mapped");

    /* ACCESS_REPLACE_IOAS moves the access to another IOAS. */
    CHECK(map_fixed(fd, ioas2, buffer, BUF_SIZE, 0x2000000) == 0, "IOAS_MAP into the second IOAS");
    CHECK(op_u32(fd, IOMMU_TEST_OP_ACCESS_REPLACE_IOAS, (uint32_t)afd, ioas2) == 0, "ACCESS_REPLACE_IOAS");
    memset(tmp, 0, sizeof(tmp));
    CHECK(access_rw(fd, afd, 0, 0x2000000 + 10, tmp, 50) == 0 && memcmp(tmp, buffer + 10, 50) == 0, "ACCESS_RW now reads the second IOAS");
    CHECK_ERRNO(access_rw(fd, afd, 0, START, tmp, 8), ENOENT, "and no longer the first");
    CHECK_ERRNO(op_u32(fd, IOMMU_TEST_OP_ACCESS_REPLACE_IOAS, (uint32_t)afd, 999), ENOENT, "ACCESS_REPLACE_IOAS to a missing IOAS");
    CHECK_ERRNO(op_u32(fd, IOMMU_TEST_OP_ACCESS_REPLACE_IOAS, (uint32_t)fd, ioas), EBADFD, "ACCESS_REPLACE_IOAS on the iommufd's own fd");
    CHECK_ERRNO(destroy(fd, ioas2), EBUSY, "DESTROY of an IOAS with an access");
    CHECK(close(afd) == 0 && close(afd_rw) == 0, "close of the access fds");
    CHECK(destroy(fd, ioas2) == 0 && destroy(fd, ioas) == 0, "then the IOASes can go");
}

static void memory_limit(int fd) {
    uint32_t ioas = ioas_alloc(fd);
    struct mock m = { 0 };
    uint64_t iova = 0;
    int afd = -1;
    CHECK_ERRNO(op_u32(fd, IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT, 0, 11), EINVAL, "SET_TEMP_MEMORY_LIMIT below 12");
    CHECK(op_u32(fd, IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT, 999, 12) == 0, "SET_TEMP_MEMORY_LIMIT 12 (its id is ignored)");
    CHECK(op_u32(fd, IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT, 0, 16) == 0, "SET_TEMP_MEMORY_LIMIT 16");
    CHECK(mock(fd, ioas, &m) == 0, "MOCK_DOMAIN under the small limit");
    CHECK(map_auto(fd, ioas, buffer, BUF_SIZE, &iova) == 0 && check_map(fd, m.hwpt, iova, BUF_SIZE, buffer) == 0, "IOAS_MAP still maps every page");
    CHECK(check_refs(fd, buffer, BUF_SIZE, 1) == 0, "and pins each once");
    unsigned char tmp[64];
    CHECK(create_access(fd, ioas, 0, &afd) == 0 && access_rw(fd, afd, MOCK_ACCESS_RW_SLOW_PATH, iova + 4090, tmp, 64) == 0 &&
          memcmp(tmp, buffer + 4090, 64) == 0, "ACCESS_RW under the small limit");
    CHECK(close(afd) == 0 && unmap(fd, ioas, iova, BUF_SIZE) == 0, "close and unmap");
    CHECK(op_u32(fd, IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT, 0, 65536) == 0, "back to the default limit");
    CHECK(destroy(fd, m.stdev) == 0 && destroy(fd, ioas) == 0, "DESTROY");
}

static void replace_device(int fd) {
    uint32_t ioas = ioas_alloc(fd), ioas2 = ioas_alloc(fd), out = 0, manual = 0, got = 0;
    struct mock m = { 0 };
    CHECK(mock(fd, ioas, &m) == 0 && m.stdev == 3 && m.hwpt == 5, "MOCK_DOMAIN (stdev %u, hwpt %u)", m.stdev, m.hwpt);
    CHECK(map_fixed(fd, ioas2, buffer, BUF_SIZE, START) == 0, "IOAS_MAP into the second IOAS");
    CHECK(replace(fd, m.stdev, ioas2, &out) == 0 && out == 6, "MOCK_DOMAIN_REPLACE to another IOAS returns its new auto HWPT (%u)", out);
    CHECK(check_map(fd, out, START, BUF_SIZE, buffer) == 0, "the new auto HWPT maps the second IOAS");
    CHECK_ERRNO(replace(fd, m.stdev, m.hwpt, NULL), ENOENT, "the old auto HWPT went with its last device");
    CHECK(hwpt_paging(fd, 0, m.idev, ioas2, &manual) == 0 && manual == 5, "HWPT_ALLOC reuses the freed ID (%u)", manual);
    CHECK(replace(fd, m.stdev, manual, &got) == 0 && got == manual, "MOCK_DOMAIN_REPLACE onto a HWPT returns that HWPT");
    CHECK(replace(fd, m.stdev, manual, &got) == 0 && got == manual, "MOCK_DOMAIN_REPLACE onto the HWPT it is on");
    CHECK_ERRNO(destroy(fd, manual), EBUSY, "DESTROY of the attached HWPT");
    CHECK_ERRNO(replace(fd, 999, ioas, NULL), ENOENT, "MOCK_DOMAIN_REPLACE of a missing stdev");
    CHECK_ERRNO(replace(fd, m.idev, ioas, NULL), ENOENT, "MOCK_DOMAIN_REPLACE of an idev (not a stdev)");
    CHECK_ERRNO(replace(fd, m.stdev, 999, NULL), ENOENT, "MOCK_DOMAIN_REPLACE to a missing pt_id");
    CHECK_ERRNO(replace(fd, m.stdev, m.idev, NULL), EINVAL, "MOCK_DOMAIN_REPLACE to a device's id");
    CHECK(replace(fd, m.stdev, ioas, &got) == 0 && got != manual && got != 0, "back to the first IOAS (hwpt %u)", got);
    CHECK(destroy(fd, manual) == 0, "the HWPT it left can go");
    CHECK(destroy(fd, m.stdev) == 0 && destroy(fd, ioas) == 0 && destroy(fd, ioas2) == 0, "DESTROY");
}

static void dirty(int fd) {
    uint32_t ioas = ioas_alloc(fd), hd = 0;
    struct mock m = { 0 }, nd = { 0 }, x = { 0 };
    struct iommu_hw_info h;
    uint64_t nr = 0, mark[2] = { (1ull << 0) | (1ull << 3) | (1ull << 5) | (1ull << 31), 0 }, bm[2];
    CHECK(mock(fd, ioas, &m) == 0 && map_fixed(fd, ioas, buffer, BUF_SIZE, START) == 0, "MOCK_DOMAIN and IOAS_MAP");
    CHECK(hwpt_paging(fd, HWPT_ALLOC_DIRTY_TRACKING, m.idev, ioas, &hd) == 0, "HWPT_ALLOC with DIRTY_TRACKING for a plain mock device");
    CHECK(mock_flags(fd, ioas, MOCK_FLAGS_DEVICE_NO_DIRTY, &nd) == 0 && nd.hwpt == m.hwpt, "a NO_DIRTY device shares the plain auto HWPT");
    CHECK_ERRNO(hwpt_paging(fd, HWPT_ALLOC_DIRTY_TRACKING, nd.idev, ioas, NULL), EOPNOTSUPP, "HWPT_ALLOC DIRTY_TRACKING for a NO_DIRTY device");
    CHECK_ERRNO(mock_flags(fd, hd, MOCK_FLAGS_DEVICE_NO_DIRTY, NULL), EINVAL, "a NO_DIRTY device attaching to a dirty HWPT");
    CHECK_ERRNO(replace(fd, nd.stdev, hd, NULL), EINVAL, "a NO_DIRTY device replaced onto a dirty HWPT");
    CHECK(mock(fd, hd, &x) == 0 && destroy(fd, x.stdev) == 0, "a plain device attaches to the dirty HWPT");
    CHECK(get_hw_info(fd, m.idev, 0, 0, NULL, 0, &h) == 0 && h.out_capabilities == HW_CAP_DIRTY_TRACKING, "GET_HW_INFO: a plain device can track");
    CHECK(get_hw_info(fd, nd.idev, 0, 0, NULL, 0, &h) == 0 && h.out_capabilities == 0, "GET_HW_INFO: a NO_DIRTY device cannot");

    /* Tracking off. */
    CHECK_ERRNO(dirty_mark(fd, hd, START, BUF_SIZE, MOCK_PAGE, mark, NULL), EINVAL, "IOMMU_TEST_OP_DIRTY with tracking off");
    memset(bm, 0, sizeof(bm));
    /* 6.17's iommu_read_and_clear_dirty ignores what the walk returns: the mock's EINVAL does not reach the caller. */
    CHECK(dirty_read(fd, hd, 0, START, BUF_SIZE, MOCK_PAGE, bm) == 0 && bm[0] == 0 && bm[1] == 0,
          "GET_DIRTY_BITMAP with tracking off reports nothing dirty");
    CHECK_ERRNO(set_tracking(fd, m.hwpt, DIRTY_TRACKING_ENABLE), EOPNOTSUPP, "SET_DIRTY_TRACKING on a HWPT without dirty tracking");
    CHECK_ERRNO(set_tracking(fd, ioas, DIRTY_TRACKING_ENABLE), ENOENT, "SET_DIRTY_TRACKING on an IOAS id");
    CHECK_ERRNO(set_tracking(fd, hd, 2), EOPNOTSUPP, "SET_DIRTY_TRACKING with an unknown flag");
    CHECK(set_tracking(fd, hd, DIRTY_TRACKING_ENABLE) == 0 && set_tracking(fd, hd, DIRTY_TRACKING_ENABLE) == 0, "SET_DIRTY_TRACKING on (twice)");

    /* Pages marked by the mock are reported exactly, once unless NO_CLEAR. */
    CHECK(dirty_mark(fd, hd, START, BUF_SIZE, MOCK_PAGE, mark, &nr) == 0 && nr == 4, "IOMMU_TEST_OP_DIRTY marks 4 slots (%llu)", (unsigned long long)nr);
    memset(bm, 0, sizeof(bm));
    CHECK(dirty_read(fd, hd, GET_DIRTY_BITMAP_NO_CLEAR, START, BUF_SIZE, MOCK_PAGE, bm) == 0 && bm[0] == mark[0] && bm[1] == 0,
          "GET_DIRTY_BITMAP NO_CLEAR reports exactly them (0x%llx)", (unsigned long long)bm[0]);
    memset(bm, 0, sizeof(bm));
    CHECK(dirty_read(fd, hd, 0, START, BUF_SIZE, MOCK_PAGE, bm) == 0 && bm[0] == mark[0], "they are still there after NO_CLEAR");
    memset(bm, 0, sizeof(bm));
    CHECK(dirty_read(fd, hd, 0, START, BUF_SIZE, MOCK_PAGE, bm) == 0 && bm[0] == 0, "and gone after a read that clears");
    CHECK_ERRNO(dirty_read(fd, hd, 0, START, BUF_SIZE, 0, bm), EINVAL, "GET_DIRTY_BITMAP with page_size 0");
    CHECK_ERRNO(dirty_read(fd, hd, 0, START + MOCK_PAGE, BUF_SIZE, PAGE, bm), EINVAL, "GET_DIRTY_BITMAP with an IOVA not page_size aligned");
    CHECK_ERRNO(dirty_read(fd, hd, 2, START, BUF_SIZE, MOCK_PAGE, bm), EOPNOTSUPP, "GET_DIRTY_BITMAP with an unknown flag");
    CHECK_ERRNO(dirty_read(fd, m.hwpt, 0, START, BUF_SIZE, MOCK_PAGE, bm), EOPNOTSUPP, "GET_DIRTY_BITMAP on a HWPT without dirty tracking");
    CHECK_ERRNO(dirty_read(fd, ioas, 0, START, BUF_SIZE, MOCK_PAGE, bm), ENOENT, "GET_DIRTY_BITMAP on an IOAS id");
    CHECK_ERRNO(dirty_mark(fd, hd, START, BUF_SIZE, 0, mark, NULL), EINVAL, "IOMMU_TEST_OP_DIRTY with page_size 0");
    CHECK_ERRNO(dirty_mark(fd, hd, START, 0, MOCK_PAGE, mark, NULL), EINVAL, "IOMMU_TEST_OP_DIRTY with length 0");
    CHECK_ERRNO(dirty_mark(fd, hd, START + 1024, BUF_SIZE, MOCK_PAGE, mark, NULL), EINVAL, "IOMMU_TEST_OP_DIRTY with a misaligned IOVA");
    CHECK_ERRNO(dirty_mark(fd, hd, START, BUF_SIZE, MOCK_PAGE, NULL, NULL), EINVAL, "IOMMU_TEST_OP_DIRTY with no bitmap");
    CHECK_ERRNO(dirty_mark(fd, ioas, START, BUF_SIZE, MOCK_PAGE, mark, NULL), ENOENT, "IOMMU_TEST_OP_DIRTY on an IOAS id");
    CHECK_ERRNO(dirty_mark(fd, m.hwpt, START, BUF_SIZE, MOCK_PAGE, mark, NULL), EINVAL, "IOMMU_TEST_OP_DIRTY on a HWPT not tracking");
    /* Turning tracking on again starts from a clean snapshot. */
    CHECK(dirty_mark(fd, hd, START, BUF_SIZE, MOCK_PAGE, mark, &nr) == 0 && nr == 4, "mark again");
    CHECK(set_tracking(fd, hd, 0) == 0 && set_tracking(fd, hd, DIRTY_TRACKING_ENABLE) == 0, "tracking off and on");
    memset(bm, 0, sizeof(bm));
    CHECK(dirty_read(fd, hd, 0, START, BUF_SIZE, MOCK_PAGE, bm) == 0 && bm[0] == 0, "enabling cleared the old dirty bits");
    CHECK(set_tracking(fd, hd, 0) == 0, "tracking off");
    CHECK(destroy(fd, nd.stdev) == 0 && destroy(fd, hd) == 0 && destroy(fd, m.stdev) == 0 && destroy(fd, ioas) == 0, "DESTROY");
}

static void hw_info(int fd) {
    uint32_t ioas = ioas_alloc(fd);
    struct mock m = { 0 }, p = { 0 };
    struct iommu_hw_info h;
    struct iommu_test_hw_info data;
    unsigned char big[16];
    CHECK(mock(fd, ioas, &m) == 0 && mock_flags(fd, ioas, MOCK_FLAGS_DEVICE_PASID, &p) == 0, "a plain and a PASID mock device");
    memset(&data, 0xff, sizeof(data));
    CHECK(get_hw_info(fd, m.idev, 0, 0, &data, sizeof(data), &h) == 0 && h.out_data_type == IOMMU_HW_INFO_TYPE_SELFTEST && h.data_len == 8 &&
          data.test_reg == IOMMU_HW_INFO_SELFTEST_REGVAL && data.flags == 0, "GET_HW_INFO: type 0xfeedbeef, 8 bytes, test_reg 0xdeadbeef");
    CHECK(h.out_max_pasid_log2 == 0 && h.out_capabilities == HW_CAP_DIRTY_TRACKING, "a plain device: max_pasid_log2 0, capabilities DIRTY");
    memset(big, 0xff, sizeof(big));
    CHECK(get_hw_info(fd, m.idev, 0, 0, big, sizeof(big), &h) == 0 && h.data_len == 8 && big[8] == 0 && big[15] == 0,
          "a larger buffer: data_len 8 and the rest zero-filled");
    uint32_t small = 0xffffffff;
    CHECK(get_hw_info(fd, m.idev, 0, 0, &small, sizeof(small), &h) == 0 && h.data_len == 8 && small == 0, "a smaller buffer gets what fits");
    CHECK(get_hw_info(fd, m.idev, 0, 0, NULL, 0, &h) == 0 && h.data_len == 8, "no buffer: data_len 8");
    CHECK(get_hw_info(fd, m.idev, HW_INFO_FLAG_INPUT_TYPE, IOMMU_HW_INFO_TYPE_SELFTEST, &data, sizeof(data), &h) == 0 &&
          h.out_data_type == IOMMU_HW_INFO_TYPE_SELFTEST, "asking for type SELFTEST");
    CHECK(get_hw_info(fd, m.idev, HW_INFO_FLAG_INPUT_TYPE, 0, &data, sizeof(data), &h) == 0 && h.out_data_type == IOMMU_HW_INFO_TYPE_SELFTEST,
          "asking for type 0 (DEFAULT)");
    CHECK(get_hw_info(fd, m.idev, 0, 5, &data, sizeof(data), &h) == 0, "in_data_type is ignored without INPUT_TYPE");
    CHECK_ERRNO(get_hw_info(fd, m.idev, HW_INFO_FLAG_INPUT_TYPE, IOMMU_HW_INFO_TYPE_SELFTEST + 1, &data, sizeof(data), &h), EOPNOTSUPP,
                "asking for another type");
    CHECK_ERRNO(get_hw_info(fd, m.idev, 2, 0, &data, sizeof(data), &h), EOPNOTSUPP, "GET_HW_INFO with an unknown flag");
    CHECK_ERRNO(get_hw_info(fd, 999, 0, 0, &data, sizeof(data), &h), ENOENT, "GET_HW_INFO of a missing device");
    CHECK_ERRNO(get_hw_info(fd, m.stdev, 0, 0, &data, sizeof(data), &h), ENOENT, "GET_HW_INFO of a stdev id");
    CHECK(get_hw_info(fd, p.idev, 0, 0, NULL, 0, &h) == 0 && h.out_max_pasid_log2 == MOCK_PASID_WIDTH && h.out_capabilities == HW_CAP_DIRTY_TRACKING,
          "a PASID device: max_pasid_log2 20 (%u), no PCI PASID capabilities", h.out_max_pasid_log2);
    CHECK(destroy(fd, m.stdev) == 0 && destroy(fd, p.stdev) == 0 && destroy(fd, ioas) == 0, "DESTROY");
}

static void nested(int fd) {
    uint32_t ioas = ioas_alloc(fd), parent = 0, plain = 0, n = 0, n2 = 0, num = 0, got = 0;
    struct mock m = { 0 };
    const uint32_t D = IOMMU_TEST_IOTLB_DEFAULT, T = IOMMU_HWPT_INVALIDATE_DATA_SELFTEST;
    struct iommu_hwpt_invalidate_selftest inv[2] = { { 0, 0 }, { 0, 0 } };
    uint32_t eight[2] = { IOMMU_TEST_IOTLB_DEFAULT, 0 };
    CHECK(mock(fd, ioas, &m) == 0 && map_fixed(fd, ioas, buffer, BUF_SIZE, START) == 0, "MOCK_DOMAIN and IOAS_MAP");
    CHECK(hwpt_paging(fd, HWPT_ALLOC_NEST_PARENT, m.idev, ioas, &parent) == 0, "HWPT_ALLOC NEST_PARENT");
    CHECK(hwpt_paging(fd, 0, m.idev, ioas, &plain) == 0, "HWPT_ALLOC of a plain paging HWPT");
    CHECK(hwpt_nested(fd, 0, m.idev, parent, &n) == 0 && hwpt_nested(fd, 0, m.idev, parent, &n2) == 0, "two nested HWPTs with {iotlb 0xbadbeef}");
    CHECK(slots_are(fd, IOTLB, n, D, D, D, D), "MD_CHECK_IOTLB: the 4 slots hold the alloc data");
    CHECK_ERRNO(check_slot(fd, IOTLB, n, 4, D), EINVAL, "MD_CHECK_IOTLB slot 4");
    CHECK_ERRNO(check_slot(fd, IOTLB, n, 0, 0), EINVAL, "MD_CHECK_IOTLB with a wrong value");
    CHECK_ERRNO(check_slot(fd, IOTLB, parent, 0, D), ENOENT, "MD_CHECK_IOTLB on a paging HWPT");
    CHECK_ERRNO(check_map(fd, n, START, PAGE, buffer), ENOENT, "MD_CHECK_MAP on a nested HWPT");
    CHECK_ERRNO(hwpt_full(fd, 0, m.idev, parent, IOMMU_HWPT_DATA_SELFTEST + 1, &iotlb_data, 4, 0, NULL), EOPNOTSUPP, "nested data of another type");
    CHECK_ERRNO(hwpt_full(fd, 0, m.idev, parent, IOMMU_HWPT_DATA_SELFTEST, &iotlb_data, 3, 0, NULL), EINVAL, "nested data_len 3");
    CHECK_ERRNO(hwpt_full(fd, 0, m.idev, parent, IOMMU_HWPT_DATA_SELFTEST, eight, 8, 0, NULL), EINVAL, "nested data_len 8");
    CHECK_ERRNO(hwpt_full(fd, 0, m.idev, parent, IOMMU_HWPT_DATA_SELFTEST, NULL, 4, 0, NULL), EFAULT, "nested data at NULL");
    CHECK_ERRNO(hwpt_full(fd, 0, m.idev, parent, 0, &iotlb_data, 4, 0, NULL), EINVAL, "data type NONE with a data_len");
    CHECK_ERRNO(hwpt_nested(fd, HWPT_ALLOC_NEST_PARENT, m.idev, parent, NULL), EOPNOTSUPP, "a nested HWPT with NEST_PARENT");
    CHECK_ERRNO(hwpt_nested(fd, 0, m.idev, plain, NULL), EINVAL, "a nested HWPT on a parent without NEST_PARENT");
    CHECK_ERRNO(hwpt_nested(fd, 0, m.idev, m.hwpt, NULL), EINVAL, "a nested HWPT on an auto HWPT");
    CHECK_ERRNO(hwpt_nested(fd, 0, m.idev, n, NULL), EINVAL, "a nested HWPT on a nested HWPT");

    CHECK(invalidate(fd, n, T, inv, 8, &num) == 0 && num == 0, "HWPT_INVALIDATE with no entries checks the type only");
    num = 0;
    CHECK_ERRNO(invalidate(fd, n, IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID, inv, 8, &num), EINVAL, "HWPT_INVALIDATE of another type, no entries");
    num = 1;
    CHECK_ERRNO(invalidate(fd, n, T, inv, 9, &num), EINVAL, "HWPT_INVALIDATE with entry_len 9");
    CHECK(num == 0, "entry_num 0 after it");
    num = 1;
    CHECK_ERRNO(invalidate(fd, n, T, inv, 4, &num), EINVAL, "HWPT_INVALIDATE with entry_len 4");
    num = 1;
    CHECK_ERRNO(invalidate(fd, n, T, NULL, 8, &num), EINVAL, "HWPT_INVALIDATE of 1 entry at NULL");
    inv[0] = (struct iommu_hwpt_invalidate_selftest){ 0xffffffff, 0 };
    num = 1;
    CHECK_ERRNO(invalidate(fd, n, T, inv, 8, &num), EOPNOTSUPP, "HWPT_INVALIDATE with unknown entry flags");
    inv[0] = (struct iommu_hwpt_invalidate_selftest){ IOMMU_TEST_INVALIDATE_FLAG_ALL, 4 };
    num = 1;
    CHECK_ERRNO(invalidate(fd, n, T, inv, 8, &num), EINVAL, "HWPT_INVALIDATE with iotlb_id 4, even with FLAG_ALL");
    CHECK(slots_are(fd, IOTLB, n, D, D, D, D), "nothing was invalidated");
    inv[0] = (struct iommu_hwpt_invalidate_selftest){ 0, 0 };
    inv[1] = (struct iommu_hwpt_invalidate_selftest){ 0, 4 };
    num = 2;
    CHECK_ERRNO(invalidate(fd, n, T, inv, 8, &num), EINVAL, "HWPT_INVALIDATE whose second entry has iotlb_id 4");
    CHECK(num == 1 && slots_are(fd, IOTLB, n, 0, D, D, D), "entry_num reports the one entry done, which cleared slot 0 (%u)", num);
    inv[0].iotlb_id = 2;
    num = 1;
    CHECK(invalidate(fd, n, T, inv, 8, &num) == 0 && num == 1 && slots_are(fd, IOTLB, n, 0, D, 0, D), "HWPT_INVALIDATE of slot 2");
    inv[0].flags = IOMMU_TEST_INVALIDATE_FLAG_ALL;
    num = 1;
    CHECK(invalidate(fd, n2, T, inv, 8, &num) == 0 && num == 1 && slots_are(fd, IOTLB, n2, 0, 0, 0, 0), "FLAG_ALL clears all four");
    num = 1;
    CHECK_ERRNO(invalidate(fd, parent, T, inv, 8, &num), EINVAL, "HWPT_INVALIDATE on a paging HWPT");

    CHECK_ERRNO(destroy(fd, parent), EBUSY, "DESTROY of a parent with nested HWPTs");
    CHECK(replace(fd, m.stdev, n, &got) == 0 && got == n, "MOCK_DOMAIN_REPLACE onto the nested HWPT");
    CHECK_ERRNO(destroy(fd, n), EBUSY, "DESTROY of the attached nested HWPT");
    CHECK(replace(fd, m.stdev, ioas, NULL) == 0, "back to the IOAS");
    CHECK(destroy(fd, n) == 0 && destroy(fd, n2) == 0 && destroy(fd, parent) == 0 && destroy(fd, plain) == 0, "then they all go");
    CHECK(destroy(fd, m.stdev) == 0 && destroy(fd, ioas) == 0, "DESTROY");
}

static void iopf(int fd) {
    uint32_t ioas = ioas_alloc(fd), fault = 0, hwpt = 0, got = 0;
    struct mock m = { 0 };
    int ffd = -1;
    struct iommu_hwpt_pgfault rec;
    CHECK(mock(fd, ioas, &m) == 0, "MOCK_DOMAIN");
    CHECK(fault_alloc(fd, &fault, &ffd) == 0 && ffd > 2, "FAULT_QUEUE_ALLOC");
    CHECK_ERRNO(hwpt_full(fd, HWPT_FAULT_ID_VALID, m.idev, ioas, 0, NULL, 0, 999, NULL), ENOENT, "HWPT_ALLOC with a missing fault_id");
    CHECK_ERRNO(hwpt_full(fd, HWPT_FAULT_ID_VALID | HWPT_ALLOC_NEST_PARENT, m.idev, ioas, 0, NULL, 0, fault, NULL), EOPNOTSUPP,
                "HWPT_ALLOC FAULT_ID_VALID with NEST_PARENT");
    CHECK(hwpt_full(fd, HWPT_FAULT_ID_VALID, m.idev, ioas, 0, NULL, 0, fault, &hwpt) == 0, "HWPT_ALLOC with FAULT_ID_VALID on the IOAS");
    /* On the auto HWPT (no fault handler) the fault is dropped; the op still succeeds. */
    CHECK(trigger_iopf(fd, m.idev, 0) == 0, "TRIGGER_IOPF on a device without a fault handler");
    CHECK(read(ffd, &rec, sizeof(rec)) == 0, "nothing reaches the fault queue");
    CHECK(replace(fd, m.stdev, hwpt, &got) == 0 && got == hwpt, "MOCK_DOMAIN_REPLACE onto the fault-capable HWPT");
    CHECK(trigger_iopf(fd, m.idev, 0) == 0, "TRIGGER_IOPF(idev, pasid 0, grpid 2, perm 3, addr 0xdeadbeaf)");
    memset(&rec, 0, sizeof(rec));
    CHECK(read(ffd, &rec, sizeof(rec)) == 40, "read gives one 40-byte record");
    CHECK(rec.flags == PGFAULT_FLAGS_LAST_PAGE && rec.dev_id == m.idev && rec.pasid == 0 && rec.grpid == 2 && rec.perm == 3 &&
          rec.addr == 0xdeadbeaf && rec.length == 0 && rec.cookie != 0, "the record: flags LAST_PAGE, dev_id %u (idev %u), grpid %u, perm %u, addr 0x%llx",
          rec.dev_id, m.idev, rec.grpid, rec.perm, (unsigned long long)rec.addr);
    CHECK(read(ffd, &rec, sizeof(rec)) == 0, "only one record");
    struct iommu_hwpt_page_response resp = { .cookie = rec.cookie, .code = 0 };
    CHECK(write(ffd, &resp, sizeof(resp)) == 8, "the response {cookie, 0} is taken");
    errno = 0;
    CHECK(write(ffd, &resp, sizeof(resp)) == -1 && errno == EINVAL, "a second response to that cookie: EINVAL");
    CHECK_ERRNO(trigger_iopf(fd, 999, 0), ENOENT, "TRIGGER_IOPF of a missing device");
    CHECK_ERRNO(trigger_iopf(fd, m.stdev, 0), ENOENT, "TRIGGER_IOPF of a stdev id (not a device)");
    CHECK_ERRNO(destroy(fd, hwpt), EBUSY, "DESTROY of the attached HWPT");
    CHECK_ERRNO(destroy(fd, fault), EBUSY, "DESTROY of the fault queue while its fd is open");
    CHECK(replace(fd, m.stdev, ioas, NULL) == 0 && destroy(fd, hwpt) == 0, "detach and DESTROY of the HWPT");
    CHECK(close(ffd) == 0 && destroy(fd, fault) == 0, "close the fault fd, then DESTROY the queue");
    CHECK(destroy(fd, m.stdev) == 0 && destroy(fd, ioas) == 0, "DESTROY");
}

static void pasid(int fd) {
    uint32_t ioas = ioas_alloc(fd), s2 = 0, s2b = 0, parent = 0, got = 0, fault = 0, ihwpt = 0;
    struct mock m = { 0 }, np = { 0 };
    int ffd = -1;
    CHECK(mock_flags(fd, ioas, MOCK_FLAGS_DEVICE_PASID, &m) == 0 && mock_flags(fd, ioas, 0, &np) == 0, "a PASID and a plain mock device");
    CHECK(hwpt_paging(fd, HWPT_ALLOC_PASID, m.idev, ioas, &s2) == 0 && hwpt_paging(fd, HWPT_ALLOC_PASID, m.idev, ioas, &s2b) == 0,
          "two HWPTs with HWPT_ALLOC_PASID");
    CHECK(hwpt_paging(fd, HWPT_ALLOC_NEST_PARENT, m.idev, ioas, &parent) == 0, "a HWPT without it");
    CHECK(op_u32(fd, IOMMU_TEST_OP_PASID_DETACH, m.stdev, 100) == 0, "PASID_DETACH with nothing attached");
    CHECK_ERRNO(pasid_op(fd, ATTACH, m.stdev, 100, s2, NULL), EINVAL, "PASID_ATTACH while the RID is on a HWPT that is not PASID-capable");
    CHECK(replace(fd, m.stdev, s2, NULL) == 0, "the RID onto a PASID-capable HWPT");
    CHECK(pasid_op(fd, ATTACH, m.stdev, 100, s2, &got) == 0 && got == s2, "PASID_ATTACH of pasid 100");
    CHECK(pasid_op(fd, PCHECK, m.stdev, 100, s2, NULL) == 0, "PASID_CHECK_HWPT agrees");
    CHECK_ERRNO(pasid_op(fd, PCHECK, m.stdev, 100, s2b, NULL), EINVAL, "PASID_CHECK_HWPT of another HWPT");
    CHECK_ERRNO(pasid_op(fd, PCHECK, m.stdev, 100, 0, NULL), EINVAL, "PASID_CHECK_HWPT of 0 while attached");
    CHECK_ERRNO(pasid_op(fd, PCHECK, m.stdev, 100, 999, NULL), ENOENT, "PASID_CHECK_HWPT of a missing id");
    CHECK_ERRNO(pasid_op(fd, PCHECK, m.stdev, 100, ioas, NULL), EINVAL, "PASID_CHECK_HWPT of an IOAS id");
    CHECK_ERRNO(pasid_op(fd, ATTACH, m.stdev, 100, s2b, NULL), EBUSY, "PASID_ATTACH of an attached pasid");
    CHECK_ERRNO(pasid_op(fd, ATTACH, m.stdev, 100, s2, NULL), EBUSY, "PASID_ATTACH of the same HWPT again");
    CHECK_ERRNO(replace(fd, m.stdev, parent, NULL), EINVAL, "the RID onto a non-PASID HWPT while a PASID is attached");
    CHECK(pasid_op(fd, PREPLACE, m.stdev, 100, s2b, &got) == 0 && got == s2b && pasid_op(fd, PCHECK, m.stdev, 100, s2b, NULL) == 0,
          "PASID_REPLACE to another HWPT");
    CHECK_ERRNO(pasid_op(fd, PREPLACE, m.stdev, 100, ioas, NULL), EINVAL, "PASID_REPLACE to an IOAS");
    CHECK(pasid_op(fd, PCHECK, m.stdev, 100, s2b, NULL) == 0, "the HWPT is kept");
    CHECK_ERRNO(pasid_op(fd, PREPLACE, m.stdev, 200, s2, NULL), EINVAL, "PASID_REPLACE of a pasid not attached");
    CHECK(op_u32(fd, IOMMU_TEST_OP_PASID_DETACH, m.stdev, 100) == 0, "PASID_DETACH");
    CHECK(pasid_op(fd, PCHECK, m.stdev, 100, 0, NULL) == 0, "PASID_CHECK_HWPT of 0 after the detach");
    CHECK_ERRNO(pasid_op(fd, ATTACH, m.stdev, 100, parent, NULL), EINVAL, "PASID_ATTACH of a HWPT without HWPT_ALLOC_PASID");
    CHECK_ERRNO(pasid_op(fd, ATTACH, m.stdev, 100, ioas, NULL), EINVAL, "PASID_ATTACH of an IOAS id");
    CHECK(pasid_op(fd, PCHECK, m.stdev, 100, 0, NULL) == 0, "nothing is attached after the failures");
    /* pasid 1024: attach arms the mock, the next set fails with ENOMEM and disarms it. */
    CHECK(pasid_op(fd, ATTACH, m.stdev, 1024, s2, NULL) == 0, "PASID_ATTACH of pasid 1024");
    CHECK_ERRNO(pasid_op(fd, PREPLACE, m.stdev, 1024, s2b, NULL), ENOMEM, "PASID_REPLACE at pasid 1024");
    CHECK(pasid_op(fd, PCHECK, m.stdev, 1024, s2, NULL) == 0, "the old HWPT is kept");
    CHECK(pasid_op(fd, PREPLACE, m.stdev, 1024, s2b, NULL) == 0 && pasid_op(fd, PCHECK, m.stdev, 1024, s2b, NULL) == 0,
          "the replace after the failed one works");
    CHECK(op_u32(fd, IOMMU_TEST_OP_PASID_DETACH, m.stdev, 1024) == 0 && pasid_op(fd, PCHECK, m.stdev, 1024, 0, NULL) == 0, "PASID_DETACH of 1024");
    /* A fault on a PASID's HWPT carries the pasid. */
    struct iommu_hwpt_pgfault rec = { 0 };
    CHECK(fault_alloc(fd, &fault, &ffd) == 0 && hwpt_full(fd, HWPT_FAULT_ID_VALID | HWPT_ALLOC_PASID, m.idev, ioas, 0, NULL, 0, fault, &ihwpt) == 0,
          "a PASID-capable HWPT with a fault queue");
    CHECK(pasid_op(fd, ATTACH, m.stdev, 2048, ihwpt, NULL) == 0 && trigger_iopf(fd, m.idev, 2048) == 0, "TRIGGER_IOPF at pasid 2048");
    CHECK(read(ffd, &rec, sizeof(rec)) == 40 && rec.flags == (PGFAULT_FLAGS_PASID_VALID | PGFAULT_FLAGS_LAST_PAGE) && rec.pasid == 2048 &&
          rec.dev_id == m.idev, "the record has PASID_VALID and pasid 2048 (flags %u pasid %u)", rec.flags, rec.pasid);
    struct iommu_hwpt_page_response resp = { .cookie = rec.cookie, .code = 0 };
    CHECK(write(ffd, &resp, sizeof(resp)) == 8 && op_u32(fd, IOMMU_TEST_OP_PASID_DETACH, m.stdev, 2048) == 0, "respond and detach");
    CHECK(destroy(fd, ihwpt) == 0 && close(ffd) == 0 && destroy(fd, fault) == 0, "DESTROY of the fault HWPT and queue");
    /* A device without PASID support. */
    CHECK_ERRNO(pasid_op(fd, ATTACH, np.stdev, 100, s2, NULL), EINVAL, "PASID_ATTACH on a device without PASID");
    CHECK(replace(fd, np.stdev, s2, NULL) == 0, "a PASID-capable HWPT serves a device without PASID on its RID");
    CHECK_ERRNO(pasid_op(fd, ATTACH, np.stdev, 100, s2b, NULL), EINVAL, "PASID_ATTACH on it still fails");
    CHECK(op_u32(fd, IOMMU_TEST_OP_PASID_DETACH, np.stdev, 1) == 0, "PASID_DETACH on it is 0");
    CHECK_ERRNO(pasid_op(fd, ATTACH, 999, 100, s2, NULL), ENOENT, "PASID_ATTACH of a missing stdev");
    CHECK_ERRNO(pasid_op(fd, PCHECK, m.idev, 100, 0, NULL), ENOENT, "PASID_CHECK_HWPT of an idev (not a stdev)");
    CHECK_ERRNO(op_u32(fd, IOMMU_TEST_OP_PASID_DETACH, 999, 100), ENOENT, "PASID_DETACH of a missing stdev");
    CHECK(replace(fd, m.stdev, ioas, NULL) == 0 && replace(fd, np.stdev, ioas, NULL) == 0, "the RIDs back to the IOAS");
    CHECK(destroy(fd, s2) == 0 && destroy(fd, s2b) == 0 && destroy(fd, parent) == 0, "DESTROY of the HWPTs");
    CHECK(destroy(fd, m.stdev) == 0 && destroy(fd, np.stdev) == 0 && destroy(fd, ioas) == 0, "DESTROY");
}

static void viommu_mmap(int fd) {
    uint32_t ioas = ioas_alloc(fd), parent = 0, v = 0, v2 = 0, nv = 0;
    struct mock m = { 0 };
    const uint32_t T = IOMMU_VIOMMU_TYPE_SELFTEST;
    struct iommu_viommu_selftest data = { .in_data = 0xbeef };
    CHECK(mock(fd, ioas, &m) == 0 && hwpt_paging(fd, HWPT_ALLOC_NEST_PARENT, m.idev, ioas, &parent) == 0, "MOCK_DOMAIN and a NEST_PARENT HWPT");
    CHECK(viommu_alloc(fd, m.idev, parent, T, NULL, 0, &v) == 0 && v != 0, "VIOMMU_ALLOC without data");
    CHECK_ERRNO(viommu_alloc(fd, m.idev, parent, 0, NULL, 0, NULL), EOPNOTSUPP, "VIOMMU_ALLOC of type 0");
    CHECK_ERRNO(viommu_alloc(fd, m.idev, parent, 0xdead, NULL, 0, NULL), EOPNOTSUPP, "VIOMMU_ALLOC of a type the mock does not have");
    CHECK_ERRNO(viommu_alloc(fd, m.idev, 0, T, NULL, 0, NULL), ENOENT, "VIOMMU_ALLOC on hwpt 0");
    CHECK_ERRNO(viommu_alloc(fd, m.idev, m.hwpt, T, NULL, 0, NULL), EINVAL, "VIOMMU_ALLOC on a HWPT without NEST_PARENT");
    CHECK_ERRNO(viommu_alloc(fd, m.idev, parent, T, &data, 4, NULL), EINVAL, "VIOMMU_ALLOC with 4 bytes of data (minimum 8)");
    CHECK_ERRNO(viommu_alloc(fd, m.idev, parent, T, &data, 32, NULL), EINVAL, "VIOMMU_ALLOC with 32 bytes of data (maximum 24)");
    CHECK(viommu_alloc(fd, m.idev, parent, T, &data, sizeof(data), &v2) == 0 && data.out_data == 0xbeef && data.out_mmap_offset == 4096 &&
          data.out_mmap_length == 8192, "VIOMMU_ALLOC with data: out_data 0x%x, mmap offset %llu, length %llu", data.out_data,
          (unsigned long long)data.out_mmap_offset, (unsigned long long)data.out_mmap_length);
    const int rw = PROT_READ | PROT_WRITE;
    CHECK(mmap_errno(fd, 4096, 4096, rw, MAP_SHARED) == ENXIO, "mmap of half the region: ENXIO");
    CHECK(mmap_errno(fd, 16384, 4096, rw, MAP_SHARED) == ENXIO, "mmap of twice the region: ENXIO");
    CHECK(mmap_errno(fd, 8192, 8192, rw, MAP_SHARED) == ENXIO, "mmap one page further: ENXIO");
    CHECK(mmap_errno(fd, 8192, 12288, rw, MAP_SHARED) == ENXIO, "mmap two pages further: ENXIO");
    CHECK(mmap_errno(fd, 8192, 0, rw, MAP_SHARED) == ENXIO, "mmap at offset 0: ENXIO");
    CHECK(mmap_errno(fd, 8192, 4096, rw, MAP_PRIVATE) == EINVAL, "mmap MAP_PRIVATE: EINVAL");
    CHECK(mmap_errno(fd, 8192, 4096, PROT_READ | PROT_EXEC, MAP_SHARED) == EPERM, "mmap PROT_EXEC: EPERM");
    uint32_t *page = mmap(NULL, 8192, rw, MAP_SHARED, fd, 4096);
    CHECK(page != MAP_FAILED && page[0] == 0xbeef, "mmap of the region shows in_data at byte 0");
    CHECK_ERRNO(destroy(fd, v2), EBUSY, "DESTROY of the vIOMMU while its region is mapped");
    CHECK(page != MAP_FAILED && munmap(page, 8192) == 0, "munmap");
    CHECK(destroy(fd, v2) == 0, "then DESTROY of the vIOMMU works");
    CHECK(hwpt_nested(fd, 0, m.idev, v, &nv) == 0, "a nested HWPT made from the first vIOMMU");
    CHECK_ERRNO(destroy(fd, v), EBUSY, "DESTROY of a vIOMMU with a nested HWPT");
    CHECK_ERRNO(destroy(fd, parent), EBUSY, "DESTROY of the parent of a vIOMMU");
    CHECK(destroy(fd, nv) == 0 && destroy(fd, v) == 0 && destroy(fd, parent) == 0, "DESTROY in dependency order");
    CHECK(destroy(fd, m.stdev) == 0 && destroy(fd, ioas) == 0, "DESTROY");
}

static void viommu_vdev(int fd) {
    uint32_t ioas = ioas_alloc(fd), parent = 0, v = 0, nv = 0, vdev = 0, vdev2 = 0, qid = 0, num = 0;
    struct mock m = { 0 };
    int qfd = -1;
    const uint32_t T = IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST, D = IOMMU_TEST_DEV_CACHE_DEFAULT;
    CHECK(mock(fd, ioas, &m) == 0 && hwpt_paging(fd, HWPT_ALLOC_NEST_PARENT, m.idev, ioas, &parent) == 0 &&
          viommu_alloc(fd, m.idev, parent, IOMMU_VIOMMU_TYPE_SELFTEST, NULL, 0, &v) == 0 && hwpt_nested(fd, 0, m.idev, v, &nv) == 0,
          "device, NEST_PARENT HWPT, vIOMMU and a nested HWPT from it");
    CHECK_ERRNO(replace(fd, m.stdev, nv, NULL), ENOENT, "attaching to the vIOMMU's nested HWPT needs a vDEVICE");
    CHECK_ERRNO(op_u32(fd, IOMMU_TEST_OP_TRIGGER_VEVENT, 0, m.idev), ENOENT, "TRIGGER_VEVENT for a device not on a vIOMMU");
    CHECK(vdevice_alloc(fd, v, m.idev, 0x99, &vdev) == 0, "VDEVICE_ALLOC virt_id 0x99");
    CHECK_ERRNO(vdevice_alloc(fd, v, m.idev, 0x98, NULL), EEXIST, "a second vDEVICE for the device");
    CHECK_ERRNO(vdevice_alloc(fd, 999, m.idev, 0x98, NULL), ENOENT, "VDEVICE_ALLOC on a missing vIOMMU");
    CHECK(replace(fd, m.stdev, nv, NULL) == 0, "MOCK_DOMAIN_REPLACE onto the nested HWPT");
    CHECK_ERRNO(op_u32(fd, IOMMU_TEST_OP_TRIGGER_VEVENT, 0, m.idev), EOPNOTSUPP, "TRIGGER_VEVENT with no vEVENTQ");
    CHECK_ERRNO(veventq_alloc(fd, v, IOMMU_VEVENTQ_TYPE_SELFTEST, 0, NULL, NULL), EINVAL, "VEVENTQ_ALLOC with depth 0");
    CHECK_ERRNO(veventq_alloc(fd, v, 0, 2, NULL, NULL), EOPNOTSUPP, "VEVENTQ_ALLOC of type 0");
    CHECK(veventq_alloc(fd, v, IOMMU_VEVENTQ_TYPE_SELFTEST, 2, &qid, &qfd) == 0 && qfd > 2, "VEVENTQ_ALLOC type 0xbeefbeef depth 2");
    CHECK_ERRNO(veventq_alloc(fd, v, IOMMU_VEVENTQ_TYPE_SELFTEST, 2, NULL, NULL), EEXIST, "a second vEVENTQ of that type");
    for (int i = 0; i < 3; i++) CHECK(op_u32(fd, IOMMU_TEST_OP_TRIGGER_VEVENT, 0, m.idev) == 0, "TRIGGER_VEVENT %d (a full queue is still 0)", i);
    struct pollfd p = { .fd = qfd, .events = POLLIN };
    CHECK(poll(&p, 1, 1000) == 1 && (p.revents & POLLIN), "poll(POLLIN) on the vEVENTQ");
    uint32_t ev[16];
    memset(ev, 0xff, sizeof(ev));
    CHECK(read(qfd, ev, sizeof(ev)) == 32, "read gives 2 events and a LOST header (32 bytes)");
    CHECK(ev[0] == 0 && ev[1] == 0 && ev[2] == 0x99 && ev[3] == 0 && ev[4] == 1 && ev[5] == 0x99, "two events {flags 0, seq 0/1}{virt_id 0x99}");
    CHECK(ev[6] == VEVENTQ_FLAG_LOST_EVENTS && ev[7] == 2, "then LOST_EVENTS with sequence 2 (flags %u seq %u)", ev[6], ev[7]);
    CHECK(read(qfd, ev, sizeof(ev)) == 0, "the queue is empty");
    CHECK(op_u32(fd, IOMMU_TEST_OP_TRIGGER_VEVENT, 0, m.idev) == 0 && read(qfd, ev, sizeof(ev)) == 12 && ev[0] == 0 && ev[1] == 3 && ev[2] == 0x99,
          "the next event has sequence 3");

    /* Cache invalidation through the vIOMMU, by vDEVICE and cache slot. */
    struct iommu_viommu_invalidate_selftest inv[2] = { { 0, 0x99, 0 }, { 0, 0x99, 4 } };
    CHECK(slots_are(fd, CACHE, m.idev, D, D, D, D), "DEV_CHECK_CACHE: 4 slots 0xbaddad");
    CHECK(invalidate(fd, v, T, inv, 12, &num) == 0 && num == 0, "vIOMMU invalidation with no entries");
    CHECK_ERRNO(invalidate(fd, v, IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID, inv, 12, &num), EINVAL, "vIOMMU invalidation of another type");
    num = 2;
    CHECK_ERRNO(invalidate(fd, v, T, inv, 12, &num), EINVAL, "a second entry with cache_id 4");
    CHECK(num == 1 && slots_are(fd, CACHE, m.idev, 0, D, D, D), "the first entry was done and cleared slot 0 (entry_num %u)", num);
    inv[0] = (struct iommu_viommu_invalidate_selftest){ 0, 0x9, 1 };
    num = 1;
    CHECK_ERRNO(invalidate(fd, v, T, inv, 12, &num), EINVAL, "an entry naming an unknown vdev_id");
    inv[0] = (struct iommu_viommu_invalidate_selftest){ 0xffffffff, 0x99, 1 };
    num = 1;
    CHECK_ERRNO(invalidate(fd, v, T, inv, 12, &num), EOPNOTSUPP, "an entry with unknown flags");
    inv[0] = (struct iommu_viommu_invalidate_selftest){ 0, 0x99, 2 };
    num = 1;
    CHECK(invalidate(fd, v, T, inv, 12, &num) == 0 && num == 1 && slots_are(fd, CACHE, m.idev, 0, D, 0, D), "an entry clearing slot 2");
    inv[0] = (struct iommu_viommu_invalidate_selftest){ IOMMU_TEST_INVALIDATE_FLAG_ALL, 0x99, 0 };
    num = 1;
    CHECK(invalidate(fd, v, T, inv, 12, &num) == 0 && slots_are(fd, CACHE, m.idev, 0, 0, 0, 0), "FLAG_ALL clears all four slots");
    CHECK_ERRNO(check_slot(fd, CACHE, m.idev, 4, 0), EINVAL, "DEV_CHECK_CACHE slot 4");

    CHECK_ERRNO(destroy(fd, v), EBUSY, "DESTROY of a vIOMMU with a vDEVICE, vEVENTQ and nested HWPT");
    CHECK_ERRNO(destroy(fd, qid), EBUSY, "DESTROY of a vEVENTQ while its fd is open");
    CHECK(replace(fd, m.stdev, ioas, NULL) == 0, "back to the IOAS");
    CHECK_ERRNO(op_u32(fd, IOMMU_TEST_OP_TRIGGER_VEVENT, 0, m.idev), ENOENT, "TRIGGER_VEVENT off the vIOMMU");
    CHECK(destroy(fd, vdev) == 0 && close(qfd) == 0 && destroy(fd, qid) == 0 && destroy(fd, nv) == 0, "DESTROY of the vDEVICE, vEVENTQ, nested HWPT");
    /* Destroying the stdev takes its idev and tombstones a live vDEVICE. */
    CHECK(vdevice_alloc(fd, v, m.idev, 0x77, &vdev2) == 0, "a new vDEVICE");
    CHECK(destroy(fd, m.stdev) == 0, "DESTROY of the stdev under a vDEVICE");
    CHECK_ERRNO(destroy(fd, vdev2), ENOENT, "the vDEVICE is a tombstone");
    CHECK_ERRNO(destroy(fd, m.idev), ENOENT, "DESTROY of the idev after its stdev");
    CHECK(destroy(fd, v) == 0 && destroy(fd, parent) == 0 && destroy(fd, ioas) == 0, "DESTROY");
}

static void hw_queues(int fd) {
    uint32_t ioas = ioas_alloc(fd), parent = 0, v = 0, q0 = 0, q1 = 0;
    struct mock m = { 0 };
    const uint32_t T = IOMMU_HW_QUEUE_TYPE_SELFTEST;
    CHECK(mock(fd, ioas, &m) == 0 && hwpt_paging(fd, HWPT_ALLOC_NEST_PARENT, m.idev, ioas, &parent) == 0 &&
          viommu_alloc(fd, m.idev, parent, IOMMU_VIOMMU_TYPE_SELFTEST, NULL, 0, &v) == 0, "device, NEST_PARENT HWPT and vIOMMU");
    CHECK_ERRNO(hw_queue(fd, v, 0, 0, START, PAGE, NULL), EOPNOTSUPP, "HW_QUEUE_ALLOC of type 0");
    CHECK_ERRNO(hw_queue(fd, v, T, 0, START, 0, NULL), EINVAL, "HW_QUEUE_ALLOC of length 0");
    CHECK_ERRNO(hw_queue(fd, v, T, 0, UINT64_MAX, PAGE, NULL), EOVERFLOW, "HW_QUEUE_ALLOC whose end overflows");
    CHECK_ERRNO(hw_queue(fd, 999, T, 0, START, PAGE, NULL), ENOENT, "HW_QUEUE_ALLOC on a missing vIOMMU");
    CHECK_ERRNO(hw_queue(fd, v, T, 0, START, PAGE, NULL), ENOENT, "HW_QUEUE_ALLOC over an IOVA not mapped");
    CHECK(map_fixed(fd, ioas, buffer, PAGE, START) == 0 && map_fixed(fd, ioas, buffer + PAGE, PAGE, START + PAGE) == 0, "IOAS_MAP of two pages");
    CHECK_ERRNO(hw_queue(fd, v, T, 1, START, PAGE, NULL), EIO, "HW_QUEUE_ALLOC index 1 before index 0");
    CHECK_ERRNO(hw_queue(fd, v, T, 2, START, PAGE, NULL), EINVAL, "HW_QUEUE_ALLOC index 2");
    CHECK(hw_queue(fd, v, T, 0, START, PAGE, &q0) == 0, "HW_QUEUE_ALLOC index 0 over the mapped page (id %u)", q0);
    errno = 0;
    CHECK(q0 != 0 && destroy(fd, q0 + 1) == -1 && errno == EBUSY, "the queue's internal access took the next ID and cannot be destroyed");
    CHECK_ERRNO(hw_queue(fd, v, T, 0, START, PAGE, NULL), EEXIST, "HW_QUEUE_ALLOC index 0 again");
    CHECK_ERRNO(unmap(fd, ioas, START, PAGE), EBUSY, "IOAS_UNMAP of the pinned range");
    CHECK(unmap(fd, ioas, START + PAGE, PAGE) == 0, "IOAS_UNMAP of the page next to it");
    CHECK(hw_queue(fd, v, T, 1, START + MOCK_PAGE, MOCK_PAGE, &q1) == 0, "HW_QUEUE_ALLOC index 1 at a 2 KiB offset");
    CHECK_ERRNO(destroy(fd, q0), EBUSY, "DESTROY of queue 0 while queue 1 holds it");
    CHECK_ERRNO(destroy(fd, v), EBUSY, "DESTROY of the vIOMMU with queues");
    CHECK(destroy(fd, q1) == 0 && destroy(fd, q0) == 0, "DESTROY of the queues, last first");
    CHECK(unmap(fd, ioas, START, PAGE) == 0, "IOAS_UNMAP works once the queues are gone");
    CHECK(destroy(fd, v) == 0 && destroy(fd, parent) == 0 && destroy(fd, m.stdev) == 0 && destroy(fd, ioas) == 0, "DESTROY");
}

static struct swiftiommu_stats stats(int fd) {
    struct swiftiommu_stats s = { .argsz = sizeof(s) };
    CHECK(ioctl(fd, SWIFTIOMMU_STATS, &s) == 0, "SWIFTIOMMU_STATS");
    return s;
}

int main(void) {
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

    static const struct { const char *name; void (*run)(int); } areas[] = {
        { "framing", framing }, { "mock_domain", mock_domain }, { "reserved", reserved }, { "domain_map", domain_map },
        { "accesses", accesses }, { "memory_limit", memory_limit }, { "replace_device", replace_device }, { "dirty", dirty },
        { "hw_info", hw_info }, { "nested", nested }, { "iopf", iopf }, { "pasid", pasid }, { "viommu_mmap", viommu_mmap },
        { "viommu_vdev", viommu_vdev }, { "hw_queues", hw_queues },
    };
    for (size_t i = 0; i < sizeof(areas) / sizeof(areas[0]); i++) {
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
