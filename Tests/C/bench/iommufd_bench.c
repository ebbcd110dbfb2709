/* iommufd through ioctl() from C, under the preload library (run by `iommu-sim bench
 * iommufd`): IOAS_MAP + IOAS_UNMAP of 4 KiB at a fixed IOVA with one device attached (a
 * paging domain filled on every map), and a cheap ioctl (IOMMU_OPTION get) for the shim's
 * cost. Medians over rounds; prints one JSON object. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include "../uapi.h"

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }

int main(int argc, char **argv) {
    int pairs = argc > 1 ? atoi(argv[1]) : 20000, rounds = argc > 2 ? atoi(argv[2]) : 5, options = 200000;
    int fd = open("/dev/iommu", O_RDWR), dev = open("/dev/vfio/devices/vfio1", O_RDWR);
    if (fd < 0 || dev < 0) { fprintf(stderr, "open failed\n"); return 1; }
    struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = fd };
    struct iommu_ioas_alloc ia = { .size = sizeof(ia) };
    if (ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &bind) || ioctl(fd, IOMMU_IOAS_ALLOC, &ia)) { fprintf(stderr, "setup failed\n"); return 1; }
    struct vfio_device_attach_iommufd_pt at = { .argsz = sizeof(at), .pt_id = ia.out_ioas_id };
    if (ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at)) { fprintf(stderr, "attach failed\n"); return 1; }
    unsigned char *buf = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(buf, 1, 4096);
    struct iommu_ioas_map m = { .size = sizeof(m), .flags = 7, .ioas_id = ia.out_ioas_id, .user_va = (uintptr_t)buf, .length = 4096, .iova = 0x100000 };
    struct iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = ia.out_ioas_id, .iova = 0x100000, .length = 4096 };
    struct iommu_option o = { .size = sizeof(o), .option_id = 0, .op = 1 };
    double pair[100], opt[100];
    if (rounds > 100) rounds = 100;
    for (int r = -1; r < rounds; r++) { /* round -1 warms up */
        double t0 = now_ns();
        for (int i = 0; i < pairs; i++) {
            if (ioctl(fd, IOMMU_IOAS_MAP, &m) || ioctl(fd, IOMMU_IOAS_UNMAP, &u)) { fprintf(stderr, "map/unmap failed\n"); return 1; }
        }
        double t1 = now_ns();
        for (int i = 0; i < options; i++) {
            if (ioctl(fd, IOMMU_OPTION, &o)) { fprintf(stderr, "option failed\n"); return 1; }
        }
        double t2 = now_ns();
        if (r >= 0) { pair[r] = (t1 - t0) / pairs; opt[r] = (t2 - t1) / options; }
    }
    qsort(pair, rounds, sizeof(double), cmp);
    qsort(opt, rounds, sizeof(double), cmp);
    printf("{\"cMapUnmapPairNs\": %.1f, \"cOptionIoctlNs\": %.1f}\n", pair[rounds / 2], opt[rounds / 2]);
    return 0;
}
