/* How long what a program holds lives (run under `iommu-sim preload`), as Linux's file
 * references decide it: a vIOMMU window mapped piece by piece, a duplicated access file, an
 * object whose response could not be written back, a fault file that outlives /dev/iommu,
 * /proc/self/status's VmPin, a forked child's calls, and MAP_HUGETLB memory. The uAPI layouts
 * are in uapi.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include "uapi.h"

static int passed, failed;
#define CHECK(cond, ...) do { if (cond) passed++; else { failed++; fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
    fprintf(stderr, __VA_ARGS__); fprintf(stderr, " (errno %d %s)\n", errno, strerror(errno)); } } while (0)
#define CHECK_ERRNO(call, e, ...) do { errno = 0; int rc_ = (call); CHECK(rc_ == -1 && errno == (e), __VA_ARGS__); } while (0)

static int test_cmd(int fd, struct iommu_test_cmd *c) { c->size = sizeof(*c); return ioctl(fd, IOMMU_TEST_CMD, c); }
static int destroy(int fd, uint32_t id) { struct iommu_destroy d = { .size = sizeof(d), .id = id }; return ioctl(fd, IOMMU_DESTROY, &d); }
static uint32_t ioas_alloc(int fd) {
    struct iommu_ioas_alloc a = { .size = sizeof(a) };
    return ioctl(fd, IOMMU_IOAS_ALLOC, &a) == 0 ? a.out_ioas_id : 0;
}
static int map_fixed(int fd, uint32_t ioas, const void *va, uint64_t len, uint64_t iova) {
    struct iommu_ioas_map m = { .size = sizeof(m), .flags = MAP_FIXED_IOVA | MAP_READABLE | MAP_WRITEABLE, .ioas_id = ioas,
                                .user_va = (uintptr_t)va, .length = len, .iova = iova };
    return ioctl(fd, IOMMU_IOAS_MAP, &m);
}
static int mock(int fd, uint32_t ioas, uint32_t *stdev, uint32_t *hwpt, uint32_t *idev) {
    struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas };
    int rc = test_cmd(fd, &c);
    if (stdev) *stdev = c.mock_domain.out_stdev_id;
    if (hwpt) *hwpt = c.mock_domain.out_hwpt_id;
    if (idev) *idev = c.mock_domain.out_idev_id;
    return rc;
}
static long status_kib(const char *tag) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    while (f && fgets(line, sizeof(line), f)) if (strncmp(line, tag, strlen(tag)) == 0) v = strtol(line + strlen(tag), NULL, 10);
    if (f) fclose(f);
    return v;
}

/* A window mapped, then unmapped half by half: the vIOMMU is busy until the last half goes. */
static void windows(void) {
    int fd = open("/dev/iommu", O_RDWR);
    uint32_t ioas = ioas_alloc(fd), idev = 0, parent = 0;
    CHECK(mock(fd, ioas, NULL, NULL, &idev) == 0, "MOCK_DOMAIN");
    struct iommu_hwpt_alloc h = { .size = sizeof(h), .flags = HWPT_ALLOC_NEST_PARENT, .dev_id = idev, .pt_id = ioas };
    CHECK(ioctl(fd, IOMMU_HWPT_ALLOC, &h) == 0, "a NEST_PARENT HWPT");
    parent = h.out_hwpt_id;
    struct iommu_viommu_selftest data = { .in_data = 0x5eed };
    struct iommu_viommu_alloc v = { .size = sizeof(v), .type = IOMMU_VIOMMU_TYPE_SELFTEST, .dev_id = idev, .hwpt_id = parent,
                                    .data_len = sizeof(data), .data_uptr = (uintptr_t)&data };
    CHECK(ioctl(fd, IOMMU_VIOMMU_ALLOC, &v) == 0 && data.out_mmap_length == 8192, "a vIOMMU with a window");
    uint32_t *w = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)data.out_mmap_offset);
    CHECK(w != MAP_FAILED && w[0] == 0x5eed, "the window shows in_data");
    CHECK_ERRNO((int)(intptr_t)mmap(NULL, 8192, PROT_READ, MAP_SHARED, fd, (off_t)data.out_mmap_offset + 1), EINVAL,
                "an offset that is not page-aligned: EINVAL");
    CHECK(munmap(w, 4096) == 0, "munmap of the first half");
    CHECK_ERRNO(destroy(fd, v.out_viommu_id), EBUSY, "the second half still holds the vIOMMU");
    CHECK(munmap((char *)w + 4096, 4096) == 0, "munmap of the second half");
    CHECK(destroy(fd, v.out_viommu_id) == 0, "then the vIOMMU goes");
    close(fd);
}

/* dup of an access file: the access lives while either descriptor does, through both. */
static void access_dup(unsigned char *buf) {
    int fd = open("/dev/iommu", O_RDWR);
    uint32_t ioas = ioas_alloc(fd);
    CHECK(map_fixed(fd, ioas, buf, 4096, 0x100000) == 0, "IOAS_MAP");
    struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_CREATE_ACCESS, .id = ioas, .create_access.flags = 1 };
    CHECK(test_cmd(fd, &c) == 0, "CREATE_ACCESS");
    int afd = (int)c.create_access.out_access_fd, copy = dup(afd);
    CHECK(copy >= 0 && close(afd) == 0, "dup, then close of the original");
    struct iommu_test_cmd p = { .op = IOMMU_TEST_OP_ACCESS_PAGES, .id = (uint32_t)copy,
                                .access_pages = { .iova = 0x100000, .length = 4096, .uptr = (uintptr_t)buf } };
    CHECK(test_cmd(fd, &p) == 0, "ACCESS_PAGES through the duplicate");
    CHECK_ERRNO(destroy(fd, ioas), EBUSY, "the access holds the IOAS");
    CHECK(close(copy) == 0, "close of the duplicate");
    struct iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = ioas, .iova = 0x100000, .length = 4096 };
    CHECK(ioctl(fd, IOMMU_IOAS_UNMAP, &u) == 0 && destroy(fd, ioas) == 0, "with the last descriptor the access and its pins went");
    close(fd);
}

/* A response that cannot be written back: the object it made is undone (EFAULT, no leak). */
static void unreported(void) {
    int fd = open("/dev/iommu", O_RDWR);
    uint32_t ioas = ioas_alloc(fd);
    struct iommu_test_cmd *ro = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    *ro = (struct iommu_test_cmd){ .size = sizeof(*ro), .op = IOMMU_TEST_OP_CREATE_ACCESS, .id = ioas };
    mprotect(ro, 4096, PROT_READ);
    CHECK_ERRNO(ioctl(fd, IOMMU_TEST_CMD, ro), EFAULT, "CREATE_ACCESS into a read-only struct: EFAULT");
    CHECK(destroy(fd, ioas) == 0, "and no access was left on the IOAS");
    struct iommu_ioas_alloc *ra = (void *)ro;
    mprotect(ro, 4096, PROT_READ | PROT_WRITE);
    *ra = (struct iommu_ioas_alloc){ .size = sizeof(*ra) };
    mprotect(ro, 4096, PROT_READ);
    CHECK_ERRNO(ioctl(fd, IOMMU_IOAS_ALLOC, ra), EFAULT, "IOAS_ALLOC into a read-only struct: EFAULT");
    CHECK(ioas_alloc(fd) == 1, "and its ID was given back");
    munmap(ro, 4096);
    close(fd);
}

/* A fault file holds the iommufd file: closing /dev/iommu first leaves its objects alive. */
static void fault_outlives(unsigned char *buf) {
    int fd = open("/dev/iommu", O_RDWR);
    uint32_t ioas = ioas_alloc(fd);
    CHECK(map_fixed(fd, ioas, buf, 4096, 0x1000000) == 0 && mock(fd, ioas, NULL, NULL, NULL) == 0, "a mapping with a domain");
    long pinned = status_kib("VmPin:");
    CHECK(pinned == 4, "/proc/self/status shows the pinned page (VmPin %ld kB)", pinned);
    struct iommu_fault_alloc fa = { .size = sizeof(fa) };
    CHECK(ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &fa) == 0, "FAULT_QUEUE_ALLOC");
    CHECK(close(fd) == 0, "close /dev/iommu with the fault file open");
    CHECK(status_kib("VmPin:") == 4, "the context lives on: the page stays pinned");
    CHECK(close((int)fa.out_fault_fd) == 0 && status_kib("VmPin:") == 0, "with the fault file closed, everything went");
}

/* A forked child's calls reach the parent's objects; a file cannot be made for it. */
static void forked(void) {
    int fd = open("/dev/iommu", O_RDWR);
    uint32_t ioas = ioas_alloc(fd);
    pid_t pid = fork();
    if (pid == 0) {
        int bad = 0;
        struct iommu_fault_alloc fa = { .size = sizeof(fa) };
        errno = 0;
        if (!(ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &fa) == -1 && errno == ENOMEM)) bad |= 1;
        if (destroy(fd, ioas) != 0) bad |= 2;
        _exit(bad);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child got ENOMEM for a fault file and destroyed the parent's IOAS (%d)", status);
    CHECK_ERRNO(destroy(fd, ioas), ENOENT, "the parent sees the IOAS gone");
    close(fd);
}

/* MAP_HUGETLB: physically contiguous memory a HUGE_IOVA mock domain maps with 1 MiB pages. */
static void huge(void) {
    int fd = open("/dev/iommu", O_RDWR);
    uint32_t ioas = ioas_alloc(fd);
    unsigned char *h = mmap(NULL, 4 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
    CHECK(h != MAP_FAILED && ((uintptr_t)h & ((2 << 20) - 1)) == 0, "MAP_HUGETLB gives 2 MiB-aligned memory");
    if (h == MAP_FAILED) { close(fd); return; }
    memset(h, 0x5a, 4 << 20);
    struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, .id = ioas, .mock_domain_flags.dev_flags = 2 };
    CHECK(test_cmd(fd, &c) == 0, "a HUGE_IOVA mock device");
    CHECK(map_fixed(fd, ioas, h, 4 << 20, 0x2000000) == 0, "IOAS_MAP of the huge memory");
    struct iommu_test_cmd r = { .op = IOMMU_TEST_OP_MD_CHECK_REFS, .check_refs = { .length = 4 << 20, .uptr = (uintptr_t)h, .refs = 7 } };
    CHECK(test_cmd(fd, &r) == 0, "MD_CHECK_REFS skips huge pages, whatever count is asked");
    struct iommu_test_cmd m = { .op = IOMMU_TEST_OP_MD_CHECK_MAP, .id = c.mock_domain_flags.out_hwpt_id,
                                .check_map = { .iova = 0x2000000, .length = 4 << 20, .uptr = (uintptr_t)h } };
    CHECK(test_cmd(fd, &m) == 0, "MD_CHECK_MAP: the domain maps the huge memory");
    CHECK(h[12345] == 0x5a, "the memory keeps what the program wrote");
    close(fd);
    CHECK(munmap(h, 4 << 20) == 0, "munmap");
}

int main(void) {
    unsigned char *buf = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(buf, 1, 4096);
    windows();
    access_dup(buf);
    unreported();
    fault_outlives(buf);
    forked();
    huge();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
