/* The program changes its mappings around pinned and once-pinned memory (run under
 * `iommu-sim preload`): mprotect, mremap and munmap of pages an IOAS maps or mapped must
 * keep the program's view of its memory (contents move with mremap, survive mprotect), keep
 * what a device reaches consistent with the kernel (a page unmapped while pinned stays the
 * device's until the IOAS unmap), and leave no frame behind. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
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

static int fd, dev;
static uint32_t ioas;

static int map(void *va, uint64_t iova, uint64_t len) {
    struct iommu_ioas_map m = { .size = sizeof(m), .flags = 7, .ioas_id = ioas, .user_va = (uintptr_t)va, .length = len, .iova = iova };
    return ioctl(fd, IOMMU_IOAS_MAP, &m);
}
static int unmap(uint64_t iova, uint64_t len) {
    struct iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = ioas, .iova = iova, .length = len };
    return ioctl(fd, IOMMU_IOAS_UNMAP, &u);
}
static int dma(int write, uint64_t iova, void *buf, uint64_t len) {
    struct swiftiommu_device_dma d = { .argsz = sizeof(d), .flags = write ? 1 : 0, .iova = iova, .length = len, .data = (uintptr_t)buf };
    return ioctl(dev, SWIFTIOMMU_DEVICE_DMA, &d) ? -1 : (int)d.out_status;
}
static struct swiftiommu_stats stats(void) {
    struct swiftiommu_stats s = { .argsz = sizeof(s) };
    ioctl(fd, SWIFTIOMMU_STATS, &s);
    return s;
}

int main(void) {
    fd = open("/dev/iommu", O_RDWR);
    dev = open("/dev/vfio/devices/vfio1", O_RDWR);
    struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = fd };
    struct iommu_ioas_alloc ia = { .size = sizeof(ia) };
    CHECK(fd >= 0 && dev >= 0 && ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &bind) == 0 && ioctl(fd, IOMMU_IOAS_ALLOC, &ia) == 0, "setup");
    ioas = ia.out_ioas_id;
    struct vfio_device_attach_iommufd_pt at = { .argsz = sizeof(at), .pt_id = ioas };
    CHECK(ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at) == 0, "attach");
    /* The domain's page tables for the IOVAs used below exist from here on: the leak
     * check compares against this. */
    char *scratch = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    scratch[0] = 1;
    for (uint64_t iova = 0x100000; iova <= 0x400000; iova += 0x100000) { map(scratch, iova, 4096); unmap(iova, 4096); }
    struct swiftiommu_stats base = stats();

    /* Once pinned, then unpinned: mprotect keeps the contents, and the page is the program's again. */
    char *a = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    strcpy(a, "before");
    CHECK(map(a, 0x100000, 4096) == 0 && dma(1, 0x100000 + 100, "device", 7) == 0, "map and a device write");
    CHECK(unmap(0x100000, 4096) == 0, "unmap");
    CHECK(mprotect(a, 4096, PROT_READ) == 0 && strcmp(a, "before") == 0 && strcmp(a + 100, "device") == 0,
          "mprotect after the unmap keeps both writes");
    CHECK(mprotect(a, 4096, PROT_READ | PROT_WRITE) == 0, "writable again");
    strcpy(a + 200, "later");
    CHECK(strcmp(a + 200, "later") == 0, "the program writes its page");

    /* mremap of a once-pinned page: the contents move with it. */
    CHECK(map(a, 0x100000, 4096) == 0 && unmap(0x100000, 4096) == 0, "pinned and let go again");
    char *moved = mremap(a, 4096, 8192, MREMAP_MAYMOVE);
    CHECK(moved != MAP_FAILED && strcmp(moved, "before") == 0 && strcmp(moved + 100, "device") == 0 && strcmp(moved + 200, "later") == 0,
          "mremap moves the contents");

    /* mremap while pinned: the device's page moves with the mapping; the IOAS unmap gives it back there. */
    char *b = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    strcpy(b, "pinned");
    CHECK(map(b, 0x200000, 4096) == 0, "map b");
    char *b2 = mremap(b, 4096, 4096, MREMAP_MAYMOVE | MREMAP_FIXED, moved + 4096);
    CHECK(b2 == moved + 4096 && strcmp(b2, "pinned") == 0, "mremap of a pinned page keeps its contents");
    CHECK(dma(1, 0x200000 + 50, "still", 6) == 0 && strcmp(b2 + 50, "still") == 0, "the device's writes show at the new address");
    CHECK(unmap(0x200000, 4096) == 0 && strcmp(b2, "pinned") == 0 && strcmp(b2 + 50, "still") == 0, "the unmap keeps the page there");
    b2[60] = 'x';
    CHECK(b2[60] == 'x', "and it is writable");

    /* munmap while pinned: the device keeps the page until the IOAS unmap (as the kernel's pin). */
    char *c = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    strcpy(c, "gone");
    CHECK(map(c, 0x300000, 4096) == 0, "map c");
    CHECK(munmap(c, 4096) == 0, "munmap while pinned");
    char back[5] = { 0 };
    CHECK(dma(0, 0x300000, back, 4) == 0 && memcmp(back, "gone", 4) == 0, "the device still reads the pinned page");
    CHECK(unmap(0x300000, 4096) == 0, "the IOAS unmap lets it go");

    /* glibc unmaps a large block inside free(), where the shim does not see it: a parked
     * page there must not stand for the next block at the same address, and a dangling
     * argument pointer is EFAULT, not a crash. */
    size_t big = 1 << 20;
    char *blk = malloc(big);
    memset(blk, 0x41, big);
    char *page1 = (char *)(((uintptr_t)blk + 4095) & ~(uintptr_t)4095);
    CHECK(map(page1, 0x400000, 4096) == 0 && unmap(0x400000, 4096) == 0, "a malloc'd block pinned and let go");
    /* A volatile copy of the address: using it after free() is the point of the test. */
    volatile uintptr_t old_address = (uintptr_t)blk;
    free(blk);
    struct iommu_ioas_alloc *dangling = (void *)old_address;
    errno = 0;
    CHECK(ioctl(fd, IOMMU_IOAS_ALLOC, dangling) == -1 && errno == EFAULT, "a freed (unmapped) block as the argument: EFAULT");
    char *blk2 = malloc(big);
    memset(blk2, 0x42, big);
    char *page2 = (char *)(((uintptr_t)blk2 + 4095) & ~(uintptr_t)4095);
    CHECK(map(page2, 0x400000, 4096) == 0, "the next block mapped (at %s address)", (uintptr_t)blk2 == old_address ? "the same" : "another");
    char seen = 0;
    CHECK(dma(0, 0x400000, &seen, 1) == 0 && seen == 0x42, "the device reads the new block, not the old page (0x%x)", seen);
    CHECK(dma(1, 0x400000 + 8, "new", 4) == 0 && strcmp(page2 + 8, "new") == 0, "and its writes show in the new block");
    CHECK(unmap(0x400000, 4096) == 0, "unmap the new block");
    free(blk2);

    munmap(moved, 8192);
    struct swiftiommu_stats end = stats();
    CHECK(end.pinned == 0 && end.frames == base.frames, "nothing pinned and no frame left (%llu pinned, frames %llu -> %llu)",
          (unsigned long long)end.pinned, (unsigned long long)base.frames, (unsigned long long)end.frames);
    close(dev); close(fd);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
