/* iommufd through /dev/iommu from an unmodified C program: run it under
 * `iommu-sim preload -- ./iommufd_basic`. It uses only the uAPI's layouts (uapi.h: Linux v6.17's,
 * written out), so it needs no kernel headers. Prints
 * "N passed, N failed" and exits non-zero on any failure. */
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
#include <setjmp.h>
#include <signal.h>
#include <unistd.h>
#include "uapi.h"

static int passed, failed;
#define CHECK(cond, ...) do { if (cond) passed++; else { failed++; fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
    fprintf(stderr, __VA_ARGS__); fprintf(stderr, " (errno %d %s)\n", errno, strerror(errno)); } } while (0)
/* The call fails with exactly `e`. */
#define CHECK_ERRNO(call, e, what) do { errno = 0; int r_ = (call); CHECK(r_ == -1 && errno == (e), "%s: rc %d, expected errno %d", what, r_, e); } while (0)

static uint32_t ioas_alloc(int fd) {
    struct iommu_ioas_alloc a = { .size = sizeof(a) };
    if (ioctl(fd, IOMMU_IOAS_ALLOC, &a)) return 0;
    return a.out_ioas_id;
}

static void framing(int fd) {
    struct iommu_ioas_alloc a = { .size = sizeof(a) };
    CHECK_ERRNO(ioctl(fd, _IO(IOMMUFD_TYPE, 0x7f), &a), ENOTTY, "a number below the iommufd table");
    CHECK_ERRNO(ioctl(fd, _IOW(IOMMUFD_TYPE, 0x81, struct iommu_ioas_alloc), &a), ENOTTY, "IOAS_ALLOC with size bits");
    CHECK_ERRNO(ioctl(fd, IOMMU_IOAS_ALLOC, NULL), EFAULT, "a NULL argument");
    void *gone = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(gone, 4096);
    CHECK_ERRNO(ioctl(fd, IOMMU_IOAS_ALLOC, gone), EFAULT, "an unmapped argument");
    struct iommu_ioas_alloc small = { .size = 8 };
    CHECK_ERRNO(ioctl(fd, IOMMU_IOAS_ALLOC, &small), EINVAL, "size below the minimum");
    struct { struct iommu_ioas_alloc a; uint32_t extra[3]; } big = { { .size = sizeof(big) }, { 0, 0, 0 } };
    CHECK(ioctl(fd, IOMMU_IOAS_ALLOC, &big) == 0 && big.a.out_ioas_id != 0, "a longer struct with zero tail is accepted");
    big.extra[2] = 1;
    CHECK_ERRNO(ioctl(fd, IOMMU_IOAS_ALLOC, &big), E2BIG, "a non-zero byte past the kernel's struct");
    /* The struct runs into an unreadable page: EFAULT. */
    char *two = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(two + 4096, 4096);
    struct iommu_ioas_alloc *edge = (void *)(two + 4096 - 8);
    edge->size = sizeof(*edge);
    CHECK_ERRNO(ioctl(fd, IOMMU_IOAS_ALLOC, edge), EFAULT, "a struct crossing into an unmapped page");
    munmap(two, 4096);
    /* The response cannot be written back: EFAULT (the struct is in read-only memory). */
    struct iommu_ioas_alloc *ro = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ro->size = sizeof(*ro);
    mprotect(ro, 4096, PROT_READ);
    CHECK_ERRNO(ioctl(fd, IOMMU_IOAS_ALLOC, ro), EFAULT, "a read-only struct that needs a response");
    munmap(ro, 4096);
}

static void ioas(int fd) {
    uint32_t id = ioas_alloc(fd);
    CHECK(id != 0, "IOAS_ALLOC gives an ID");
    size_t len = 64 * 1024;
    void *buf = aligned_alloc(4096, len);
    memset(buf, 0x5a, len);
    struct iommu_ioas_map m = { .size = sizeof(m), .flags = MAP_READABLE | MAP_WRITEABLE, .ioas_id = id,
                                .user_va = (uintptr_t)buf, .length = len };
    CHECK(ioctl(fd, IOMMU_IOAS_MAP, &m) == 0, "IOAS_MAP of malloc'd memory");
    CHECK(m.iova % 4096 == 0, "the kernel-chosen IOVA is page aligned: 0x%llx", (unsigned long long)m.iova);
    uint64_t iova = m.iova;
    struct iommu_ioas_map fixed = m;
    fixed.flags |= MAP_FIXED_IOVA;
    CHECK_ERRNO(ioctl(fd, IOMMU_IOAS_MAP, &fixed), EEXIST, "a fixed map over a mapped IOVA");
    fixed.iova = 0x100000000ull;
    CHECK(ioctl(fd, IOMMU_IOAS_MAP, &fixed) == 0 && fixed.iova == 0x100000000ull, "a fixed map at 4 GiB");
    /* With no domain attached the IOAS's IOVA alignment is 1 (io_pagetable.c): any IOVA goes. */
    struct iommu_ioas_map unaligned = m;
    unaligned.flags |= MAP_FIXED_IOVA;
    unaligned.iova = 0x200000123ull;
    CHECK(ioctl(fd, IOMMU_IOAS_MAP, &unaligned) == 0, "a fixed IOVA not page aligned, with no domain attached");
    struct iommu_ioas_unmap uu = { .size = sizeof(uu), .ioas_id = id, .iova = 0x200000123ull, .length = len };
    CHECK(ioctl(fd, IOMMU_IOAS_UNMAP, &uu) == 0 && uu.length == len, "and its unmap");

    struct iommu_iova_range ranges[4];
    struct iommu_ioas_iova_ranges r = { .size = sizeof(r), .ioas_id = id, .num_iovas = 4, .allowed_iovas = (uintptr_t)ranges };
    CHECK(ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &r) == 0 && r.num_iovas >= 1, "IOVA_RANGES lists at least one range");
    struct iommu_ioas_iova_ranges none = { .size = sizeof(none), .ioas_id = id, .num_iovas = 0 };
    errno = 0;
    int rc = ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &none);
    CHECK((rc == 0 && none.num_iovas == 0) || (rc == -1 && errno == EMSGSIZE && none.num_iovas >= 1),
          "IOVA_RANGES with no room reports how many there are");
    struct iommu_ioas_iova_ranges badptr = { .size = sizeof(badptr), .ioas_id = id, .num_iovas = 4, .allowed_iovas = 8 };
    CHECK_ERRNO(ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &badptr), EFAULT, "IOVA_RANGES into an unwritable array");

    uint32_t dst = ioas_alloc(fd);
    struct iommu_ioas_copy c = { .size = sizeof(c), .flags = MAP_READABLE | MAP_WRITEABLE | MAP_FIXED_IOVA, .dst_ioas_id = dst,
                                 .src_ioas_id = id, .length = len, .dst_iova = 0x40000000, .src_iova = iova };
    CHECK(ioctl(fd, IOMMU_IOAS_COPY, &c) == 0, "IOAS_COPY into a second IOAS");

    struct iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = id, .iova = iova, .length = 4096 };
    CHECK_ERRNO(ioctl(fd, IOMMU_IOAS_UNMAP, &u), ENOENT, "unmapping part of a mapping");
    u.length = len;
    CHECK(ioctl(fd, IOMMU_IOAS_UNMAP, &u) == 0 && u.length == len, "IOAS_UNMAP of the whole mapping");
    struct iommu_ioas_unmap all = { .size = sizeof(all), .ioas_id = id, .iova = 0, .length = UINT64_MAX };
    CHECK(ioctl(fd, IOMMU_IOAS_UNMAP, &all) == 0 && all.length == len, "unmapping everything reports the rest");

    struct iommu_option o = { .size = sizeof(o), .option_id = 0 /* RLIMIT_MODE */, .op = 1 /* GET */ };
    CHECK(ioctl(fd, IOMMU_OPTION, &o) == 0 && o.val64 == 0, "OPTION RLIMIT_MODE reads 0");

    struct iommu_destroy d = { .size = sizeof(d), .id = dst };
    CHECK(ioctl(fd, IOMMU_DESTROY, &d) == 0, "DESTROY of the copy's IOAS");
    CHECK_ERRNO(ioctl(fd, IOMMU_DESTROY, &d), ENOENT, "DESTROY twice");
    d.id = id;
    CHECK(ioctl(fd, IOMMU_DESTROY, &d) == 0, "DESTROY of the IOAS");
    free(buf);
}

static void vfio_compat(int fd) {
    CHECK(ioctl(fd, VFIO_GET_API_VERSION) == 0, "VFIO_GET_API_VERSION is 0");
    CHECK(ioctl(fd, VFIO_CHECK_EXTENSION, 3) == 1, "VFIO_CHECK_EXTENSION(TYPE1v2) is 1");
    CHECK(ioctl(fd, VFIO_CHECK_EXTENSION, 2) == 0, "VFIO_CHECK_EXTENSION(SPAPR) is 0");
}

static void two_files(void) {
    int a = open("/dev/iommu", O_RDWR | O_CLOEXEC), b = openat(AT_FDCWD, "/dev/iommu", O_RDWR);
    CHECK(a >= 0 && b >= 0 && a != b, "two opens give two descriptors");
    CHECK((fcntl(a, F_GETFD) & FD_CLOEXEC) && !(fcntl(b, F_GETFD) & FD_CLOEXEC), "O_CLOEXEC is honoured");
    uint32_t ia = ioas_alloc(a), ib = ioas_alloc(b);
    CHECK(ia == 1 && ib == 1, "each file has its own object IDs (%u, %u)", ia, ib);
    struct iommu_destroy d = { .size = sizeof(d), .id = ia };
    CHECK(ioctl(b, IOMMU_DESTROY, &d) == 0, "destroying in one file");
    CHECK(ioctl(a, IOMMU_DESTROY, &d) == 0, "leaves the other's object alive");
    /* dup shares the file: the context lives until its last descriptor goes. */
    int a2 = dup(a), a3 = fcntl(a, F_DUPFD_CLOEXEC, 100);
    CHECK(a2 >= 0 && a3 >= 100, "dup and F_DUPFD_CLOEXEC of /dev/iommu");
    CHECK(close(a) == 0, "close the first descriptor");
    struct iommu_ioas_alloc via = { .size = sizeof(via) };
    CHECK(ioctl(a2, IOMMU_IOAS_ALLOC, &via) == 0 && via.out_ioas_id != 0, "the duplicate reaches the context (IOAS %u)", via.out_ioas_id);
    struct iommu_destroy dd = { .size = sizeof(dd), .id = via.out_ioas_id };
    CHECK(ioctl(a3, IOMMU_DESTROY, &dd) == 0, "and so does the other duplicate");
    CHECK(close(a2) == 0 && close(a3) == 0 && close(b) == 0, "close");
    struct iommu_ioas_alloc x = { .size = sizeof(x) };
    CHECK_ERRNO(ioctl(a, IOMMU_IOAS_ALLOC, &x), EBADF, "ioctl on a closed iommufd");
}

static void forked(int fd) {
    uint32_t id = ioas_alloc(fd);
    int pipefd[2];
    CHECK(pipe(pipefd) == 0, "pipe");
    pid_t pid = fork();
    if (pid == 0) {
        /* The child's descriptor names the parent's file, as in the kernel: the parent's
         * objects are there, and what the child makes is the parent's too. */
        int bad = 0;
        struct iommu_ioas_iova_ranges r = { .size = sizeof(r), .ioas_id = id };
        errno = 0;
        if (!(ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &r) == -1 && errno == EMSGSIZE && r.num_iovas == 1)) bad |= 1;
        uint32_t mine = ioas_alloc(fd);
        if (mine == 0 || write(pipefd[1], &mine, sizeof(mine)) != sizeof(mine)) bad |= 2;
        struct iommu_destroy d = { .size = sizeof(d), .id = 999 };
        errno = 0;
        if (!(ioctl(fd, IOMMU_DESTROY, &d) == -1 && errno == ENOENT)) bad |= 4;
        _exit(bad);
    }
    uint32_t childs = 0;
    CHECK(read(pipefd[0], &childs, sizeof(childs)) == sizeof(childs) && childs != 0 && childs != id, "the child made an IOAS (%u)", childs);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child reached the parent's objects through its descriptor (status %d)", status);
    struct iommu_destroy d = { .size = sizeof(d), .id = childs };
    CHECK(ioctl(fd, IOMMU_DESTROY, &d) == 0, "the parent destroys the IOAS its child made");
    d.id = id;
    CHECK(ioctl(fd, IOMMU_DESTROY, &d) == 0, "the parent's object survives the child");
    close(pipefd[0]);
    close(pipefd[1]);
}

/* The program's own SIGSEGV handler still sees its own faults with the shim's guard installed. */
static sigjmp_buf segv_jump;
static volatile int segv_seen;
static void on_segv(int sig) { (void)sig; segv_seen = 1; siglongjmp(segv_jump, 1); }

static void own_segv_handler(void) {
    struct sigaction sa = { 0 }, old;
    sa.sa_handler = on_segv;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGSEGV, &sa, &old) == 0, "the program installs a SIGSEGV handler");
    if (sigsetjmp(segv_jump, 1) == 0) {
        volatile int *bad = (volatile int *)16;
        (void)*bad;
    }
    CHECK(segv_seen, "and it runs for the program's own fault");
    sigaction(SIGSEGV, &old, NULL);
}

int main(void) {
    int fd = open("/dev/iommu", O_RDWR);
    CHECK(fd >= 0, "open /dev/iommu");
    if (fd < 0) { printf("%d passed, %d failed\n", passed, failed); return 1; }
    framing(fd);
    ioas(fd);
    vfio_compat(fd);
    forked(fd);
    own_segv_handler();
    CHECK(close(fd) == 0, "close /dev/iommu");
    two_files();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
