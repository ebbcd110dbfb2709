/* A fail_nth loop (run under `iommu-sim preload`), as the kernel's iommufd_fail_nth test
 * runs one: for N = 1, 2, ... write N to this task's fail-nth, run a VMM's sequence (IOAS,
 * private and shared memory mapped, a HWPT, attach, device DMA, unmap, detach, destroy),
 * and check that every call gave 0 or an errno, that closing left nothing behind (the
 * emulator's stats: frames, pins, domains, DIDs), and stop when fail-nth reads back non-zero
 * (the Nth injection point was never reached: every point has been failed once). The
 * injection points are the emulated system's, not the host kernel's. */
#define _GNU_SOURCE
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "uapi.h"

static int passed, failed;
#define CHECK(cond, ...) do { if (cond) passed++; else { failed++; fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
    fprintf(stderr, __VA_ARGS__); fprintf(stderr, " (errno %d %s)\n", errno, strerror(errno)); } } while (0)

static char nth_path[64];

/* As the kernel's fail_nth test does: one descriptor, pwrite to arm, pread to read back. */
static int nth_fd = -1;

static void set_nth(int n) {
    char b[16];
    int len = snprintf(b, sizeof(b), "%d", n);
    if (pwrite(nth_fd, b, len, 0) != len) { fprintf(stderr, "cannot write %s\n", nth_path); exit(2); }
}

static int read_nth(void) {
    char b[16] = { 0 };
    ssize_t n = pread(nth_fd, b, sizeof(b) - 1, 0);
    return n > 0 ? atoi(b) : -1;
}

/* A call's result: 0 or an errno a failed allocation or copy may give. */
static int bad_errnos;
static void expect_ok_or_errno(int rc, const char *what) {
    if (rc == 0) return;
    switch (errno) {
    case ENOMEM: case EFAULT: case ENOSPC: case EIO: case ETIMEDOUT: case ENOENT: case EINVAL: case EBUSY: case ENODEV:
        return;
    default:
        if (bad_errnos++ < 5) fprintf(stderr, "%s: unexpected errno %d (%s)\n", what, errno, strerror(errno));
    }
}

static struct swiftiommu_stats stats(int iommufd) {
    struct swiftiommu_stats s = { .argsz = sizeof(s) };
    if (ioctl(iommufd, SWIFTIOMMU_STATS, &s)) { fprintf(stderr, "SWIFTIOMMU_STATS failed\n"); exit(2); }
    return s;
}

int main(void) {
    snprintf(nth_path, sizeof(nth_path), "/proc/self/task/%ld/fail-nth", (long)syscall(SYS_gettid));
    /* The kernel test's setup: debugfs is there, and its knobs take what is written. */
    DIR *debugfs = opendir("/sys/kernel/debug/");
    CHECK(debugfs != NULL, "opendir of debugfs");
    if (debugfs) {
        /* As the kernel's test: the knobs are written relative to the directory. */
        int k = openat(dirfd(debugfs), "failslab/ignore-gfp-wait", O_WRONLY);
        CHECK(k >= 0 && write(k, "N", 1) == 1, "a knob written through the debugfs directory");
        if (k >= 0) close(k);
        closedir(debugfs);
    }
    int knob = open("/sys/kernel/debug/failslab/ignore-gfp-wait", O_RDWR);
    char kb[8] = { 0 };
    CHECK(knob >= 0 && write(knob, "N", 1) == 1 && pread(knob, kb, sizeof(kb) - 1, 0) == 1 && kb[0] == 'N',
          "a debugfs fault knob keeps what is written");
    close(knob);
    /* Through stdio too: fprintf arms it, fscanf reads it back. */
    FILE *nf = fopen(nth_path, "r+");
    int left_via_stdio = -1;
    CHECK(nf != NULL && fprintf(nf, "%d", 0) > 0 && fflush(nf) == 0, "fail-nth written through stdio");
    if (nf) { rewind(nf); fclose(nf); }
    nf = fopen(nth_path, "r");
    CHECK(nf != NULL && fscanf(nf, "%d", &left_via_stdio) == 1 && left_via_stdio == 0, "and read through stdio (%d)", left_via_stdio);
    if (nf) fclose(nf);
    nth_fd = open(nth_path, O_RDWR);
    char zero[8] = { 0 };
    CHECK(nth_fd >= 0 && pread(nth_fd, zero, sizeof(zero) - 1, 0) == 2 && strcmp(zero, "0\n") == 0,
          "fail-nth reads \"0\\n\" before it is armed, as Linux prints it");
    unsigned char *ram = NULL;
    int probe = open("/dev/iommu", O_RDWR);
    struct swiftiommu_stats before = stats(probe);
    int n, runs = 0, fired = 0;
    for (n = 1; n < 2000; n++) {
        int iommufd = open("/dev/iommu", O_RDWR), dev = open("/dev/vfio/devices/vfio1", O_RDWR);
        if (iommufd < 0 || dev < 0) { fprintf(stderr, "open failed\n"); return 2; }
        /* Fresh guest RAM each run, so its pages are pinned afresh (and the old ones let go). */
        if (ram) munmap(ram, 8 * 4096);
        ram = mmap(NULL, 8 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        memset(ram, 0x33, 8 * 4096);
        set_nth(n);
        struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = iommufd };
        int rc = ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &bind);
        expect_ok_or_errno(rc, "bind");
        struct iommu_ioas_alloc ia = { .size = sizeof(ia) };
        expect_ok_or_errno(ioctl(iommufd, IOMMU_IOAS_ALLOC, &ia), "IOAS_ALLOC");
        struct iommu_ioas_map m = { .size = sizeof(m), .flags = 7, .ioas_id = ia.out_ioas_id, .user_va = (uintptr_t)ram,
                                    .length = 8 * 4096, .iova = 0x100000 };
        expect_ok_or_errno(ioctl(iommufd, IOMMU_IOAS_MAP, &m), "IOAS_MAP");
        struct iommu_hwpt_alloc ha = { .size = sizeof(ha), .dev_id = bind.out_devid, .pt_id = ia.out_ioas_id };
        expect_ok_or_errno(ioctl(iommufd, IOMMU_HWPT_ALLOC, &ha), "HWPT_ALLOC");
        struct vfio_device_attach_iommufd_pt at = { .argsz = sizeof(at), .pt_id = ha.out_hwpt_id };
        expect_ok_or_errno(ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at), "ATTACH");
        const char msg[] = "fail_nth";
        struct swiftiommu_device_dma d = { .argsz = sizeof(d), .flags = 1, .iova = 0x100000 + 4096, .length = sizeof(msg), .data = (uintptr_t)msg };
        expect_ok_or_errno(ioctl(dev, SWIFTIOMMU_DEVICE_DMA, &d), "DMA");
        struct iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = ia.out_ioas_id, .iova = 0x100000, .length = 8 * 4096 };
        expect_ok_or_errno(ioctl(iommufd, IOMMU_IOAS_UNMAP, &u), "IOAS_UNMAP");
        struct vfio_device_detach_iommufd_pt de = { .argsz = sizeof(de) };
        expect_ok_or_errno(ioctl(dev, VFIO_DEVICE_DETACH_IOMMUFD_PT, &de), "DETACH");
        struct iommu_destroy dh = { .size = sizeof(dh), .id = ha.out_hwpt_id };
        expect_ok_or_errno(ioctl(iommufd, IOMMU_DESTROY, &dh), "DESTROY hwpt");
        int left = read_nth();
        set_nth(0);
        close(dev);
        close(iommufd);
        runs++;
        struct swiftiommu_stats after = stats(probe);
        if (after.frames != before.frames || after.pinned != before.pinned || after.domains != before.domains || after.dids != before.dids) {
            failed++;
            fprintf(stderr, "FAIL: N=%d leaked: frames %llu->%llu pinned %llu->%llu domains %llu->%llu dids %llu->%llu\n", n,
                    (unsigned long long)before.frames, (unsigned long long)after.frames, (unsigned long long)before.pinned,
                    (unsigned long long)after.pinned, (unsigned long long)before.domains, (unsigned long long)after.domains,
                    (unsigned long long)before.dids, (unsigned long long)after.dids);
            before = after;
        }
        if (left != 0) break; /* the Nth point was never reached: every point was failed once */
        fired++;
    }
    close(probe);
    CHECK(bad_errnos == 0, "every failed call gave an allocation or copy errno (%d did not)", bad_errnos);
    CHECK(fired >= 10, "the loop failed at least ten injection points (%d)", fired);
    CHECK(n < 2000, "the loop ended: fail-nth read back non-zero after %d runs", runs);
    CHECK(memcmp(ram, "\x33\x33", 2) == 0, "the program's memory is intact");
    fprintf(stderr, "%d runs, %d injected failures\n", runs, fired);
    close(nth_fd);
    printf("%d passed, %d failed\n", passed + (failed == 0 ? 1 : 0), failed);
    return failed ? 1 : 0;
}
