/* A VMM's IO page fault loop (run under `iommu-sim preload`): a HWPT with a fault queue, a
 * PRI-capable device that touches unmapped IOVAs through ATS, and the program answering
 * its page requests with poll + read + write on the fault file, mapping each page as it
 * is asked for. The uAPI layouts are in uapi.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include "uapi.h"

static int passed, failed;
#define CHECK(cond, ...) do { if (cond) passed++; else { failed++; fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
    fprintf(stderr, __VA_ARGS__); fprintf(stderr, " (errno %d %s)\n", errno, strerror(errno)); } } while (0)

int main(void) {
    int iommufd = open("/dev/iommu", O_RDWR), dev = open("/dev/vfio/devices/vfio0", O_RDWR);
    CHECK(iommufd >= 0 && dev >= 0, "open");
    struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = iommufd };
    CHECK(ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &bind) == 0, "bind");
    struct iommu_fault_alloc fa = { .size = sizeof(fa) };
    CHECK(ioctl(iommufd, IOMMU_FAULT_QUEUE_ALLOC, &fa) == 0 && (int)fa.out_fault_fd > 2, "FAULT_QUEUE_ALLOC gives a file");
    int ffd = (int)fa.out_fault_fd;
    struct iommu_ioas_alloc ia = { .size = sizeof(ia) };
    CHECK(ioctl(iommufd, IOMMU_IOAS_ALLOC, &ia) == 0, "IOAS_ALLOC");
    struct iommu_hwpt_alloc ha = { .size = sizeof(ha), .flags = HWPT_FAULT_ID_VALID, .dev_id = bind.out_devid, .pt_id = ia.out_ioas_id,
                                   .fault_id = fa.out_fault_id };
    CHECK(ioctl(iommufd, IOMMU_HWPT_ALLOC, &ha) == 0, "HWPT_ALLOC with the fault queue");
    struct vfio_device_attach_iommufd_pt at = { .argsz = sizeof(at), .pt_id = ha.out_hwpt_id };
    CHECK(ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at) == 0, "attach");

    struct pollfd p = { .fd = ffd, .events = POLLIN };
    CHECK(poll(&p, 1, 0) == 0, "nothing to read yet");
    char small[40];
    errno = 0;
    CHECK(read(ffd, small, 39) == -1 && errno == ESPIPE, "a read that is not whole records: ESPIPE");
    errno = 0;
    CHECK(pread(ffd, small, 40, 0) == -1 && errno == ESPIPE, "pread of the fault file: ESPIPE");

    /* Guest RAM the VMM maps on demand, page by page, as the device asks for it. */
    enum { PAGES = 4 };
    unsigned char *ram = mmap(NULL, PAGES * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(ram, 0, PAGES * 4096);
    const uint64_t base = 0x400000;
    struct swiftiommu_device_dma d = { .argsz = sizeof(d), .flags = DMA_WRITE | DMA_ATS | DMA_ASYNC, .iova = base, .length = PAGES * 4096 };
    CHECK(ioctl(dev, SWIFTIOMMU_DEVICE_DMA, &d) == 0 && d.out_status == 2, "the ATS access waits for page requests (status %u)", d.out_status);

    int epfd = epoll_create1(0);
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = ffd };
    CHECK(epoll_ctl(epfd, EPOLL_CTL_ADD, ffd, &ev) == 0, "epoll on the fault file");
    int rounds = 0, requests = 0, mapped = 0;
    struct swiftiommu_device_dma_wait w = { .argsz = sizeof(w), .handle = d.out_handle };
    while (rounds++ < 16) {
        struct epoll_event got;
        if (epoll_wait(epfd, &got, 1, 0) != 1) {
            CHECK(ioctl(dev, SWIFTIOMMU_DEVICE_DMA_WAIT, &w) == 0, "DMA_WAIT");
            if (w.out_status != 2) break;
            continue;
        }
        CHECK(poll(&p, 1, 0) == 1 && (p.revents & POLLIN), "poll agrees with epoll");
        struct iommu_hwpt_pgfault recs[8];
        ssize_t n = read(ffd, recs, sizeof(recs));
        CHECK(n > 0 && n % 40 == 0, "read gives whole records (%zd bytes)", n);
        for (int i = 0; i < n / 40; i++) {
            requests++;
            CHECK(recs[i].dev_id == bind.out_devid, "the record names the bound device");
            uint64_t page = recs[i].addr & ~0xfffull;
            struct iommu_ioas_map m = { .size = sizeof(m), .flags = MAP_READABLE | MAP_WRITEABLE | MAP_FIXED_IOVA, .ioas_id = ia.out_ioas_id,
                                        .user_va = (uintptr_t)(ram + (page - base)), .length = 4096, .iova = page };
            if (ioctl(iommufd, IOMMU_IOAS_MAP, &m) == 0) mapped++;
            if (recs[i].flags & 2 /* LAST_PAGE */) {
                struct iommu_hwpt_page_response r = { .cookie = recs[i].cookie, .code = 0 /* SUCCESS */ };
                CHECK(write(ffd, &r, sizeof(r)) == sizeof(r), "the response is taken");
            }
        }
    }
    CHECK(ioctl(dev, SWIFTIOMMU_DEVICE_DMA_WAIT, &w) == -1 && errno == ENOENT, "the DMA is done and its handle gone");
    CHECK(w.out_status == 0 && w.out_transferred == PAGES * 4096, "the ATS access completed (status %u, %u bytes)", w.out_status, w.out_transferred);
    CHECK(requests >= PAGES && mapped == PAGES, "each page was asked for and mapped (%d requests, %d mapped)", requests, mapped);
    CHECK(poll(&p, 1, 0) == 0, "nothing left to read");
    struct iommu_hwpt_page_response bad = { .cookie = 12345, .code = 0 };
    errno = 0;
    CHECK(write(ffd, &bad, sizeof(bad)) == -1 && errno == EINVAL, "a response to an unknown cookie: EINVAL");
    errno = 0;
    CHECK(write(ffd, &bad, 7) == -1 && errno == ESPIPE, "a response that is not whole: ESPIPE");
    CHECK(close(epfd) == 0 && close(ffd) == 0 && close(dev) == 0 && close(iommufd) == 0, "close everything");
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
