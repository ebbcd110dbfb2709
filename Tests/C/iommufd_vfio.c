/* A VMM's VFIO-cdev flow against the emulated machine (run under `iommu-sim preload`): bind
 * a device to iommufd, map the program's own memory (private and a shared memfd) into an
 * IOAS, attach, and have the device DMA into it with the emulator's DMA command; the
 * program reads the bytes the device wrote, and the device reads what the program wrote.
 * The uAPI layouts are in uapi.h. */
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

/* The emulator's DMA command on a device file (docs/architecture.md, "The C ABI"). */

static int passed, failed;
#define CHECK(cond, ...) do { if (cond) passed++; else { failed++; fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
    fprintf(stderr, __VA_ARGS__); fprintf(stderr, " (errno %d %s)\n", errno, strerror(errno)); } } while (0)
#define CHECK_ERRNO(call, e, what) do { errno = 0; int r_ = (call); CHECK(r_ == -1 && errno == (e), "%s: rc %d, expected errno %d", what, r_, e); } while (0)

/* The device moves `len` bytes between `iova` and `buf`; returns out_status (0 done, 1 faulted). */
static int device_dma(int dev, int write, uint64_t iova, void *buf, uint64_t len, uint32_t *reason) {
    struct swiftiommu_device_dma d = { .argsz = sizeof(d), .flags = write ? DMA_WRITE : 0, .iova = iova, .length = len,
                                       .data = (uintptr_t)buf };
    if (ioctl(dev, SWIFTIOMMU_DEVICE_DMA, &d)) return -1;
    if (reason) *reason = d.out_fault_reason;
    return (int)d.out_status;
}

int main(void) {
    int iommufd = open("/dev/iommu", O_RDWR);
    int dev = open("/dev/vfio/devices/vfio0", O_RDWR);
    CHECK(iommufd >= 0 && dev >= 0, "open /dev/iommu and the device file");
    CHECK_ERRNO(open("/dev/vfio/devices/vfio7", O_RDWR), ENOENT, "a device the machine does not have");
    CHECK_ERRNO(open("/dev/vfio/devices/vfio0", O_RDWR), EBUSY, "a device file opened twice");

    struct vfio_device_info info = { .argsz = sizeof(info) };
    CHECK_ERRNO(ioctl(dev, VFIO_DEVICE_GET_INFO, &info), EINVAL, "an unbound device file answers EINVAL but to BIND");

    struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = -1 };
    CHECK_ERRNO(ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &bind), EINVAL, "BIND with iommufd -1");
    bind.iommufd = 0;
    CHECK_ERRNO(ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &bind), EBADFD, "BIND with a descriptor that is not iommufd");
    bind.iommufd = iommufd;
    struct { struct vfio_device_bind_iommufd b; uint64_t extra; } longer = { bind, 1 };
    longer.b.argsz = sizeof(longer);
    CHECK_ERRNO(ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &longer), E2BIG, "BIND with a non-zero byte past the kernel's struct");
    unsigned char uuid[16] = { 1 };
    struct vfio_device_bind_iommufd tok = bind;
    tok.flags = 1; tok.token_uuid_ptr = (uintptr_t)uuid;
    CHECK_ERRNO(ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &tok), EINVAL, "BIND with a VF token on a device that takes none");
    CHECK(ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &bind) == 0 && bind.out_devid != 0, "BIND gives a device ID");
    CHECK(ioctl(dev, VFIO_DEVICE_GET_INFO, &info) == 0 && (info.flags & 2) && info.num_regions == 9 && info.num_irqs == 5 && info.cap_offset == 0,
          "GET_INFO: a PCI device with 9 regions and 5 IRQ types, no capabilities");
    struct vfio_device_info tiny = { .argsz = 8 };
    CHECK_ERRNO(ioctl(dev, VFIO_DEVICE_GET_INFO, &tiny), EINVAL, "GET_INFO with argsz below 16");
    struct vfio_device_attach_iommufd_pt badpasid = { .argsz = sizeof(badpasid), .flags = 1, .pt_id = 1, .pasid = 1u << 20 };
    CHECK_ERRNO(ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &badpasid), EINVAL, "ATTACH with a PASID beyond 20 bits");
    CHECK_ERRNO(ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &bind), EINVAL, "BIND twice");

    struct iommu_ioas_alloc ia = { .size = sizeof(ia) };
    CHECK(ioctl(iommufd, IOMMU_IOAS_ALLOC, &ia) == 0, "IOAS_ALLOC");
    /* Private memory: a page of the program's, mapped at IOVA 1 MiB. */
    unsigned char *buf = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(buf, 0x11, 4 * 4096);
    struct iommu_ioas_map m = { .size = sizeof(m), .flags = MAP_READABLE | MAP_WRITEABLE | MAP_FIXED_IOVA, .ioas_id = ia.out_ioas_id,
                                .user_va = (uintptr_t)buf, .length = 4 * 4096, .iova = 0x100000 };
    CHECK(ioctl(iommufd, IOMMU_IOAS_MAP, &m) == 0, "IOAS_MAP of private memory");

    struct vfio_device_attach_iommufd_pt at = { .argsz = sizeof(at), .pt_id = ia.out_ioas_id };
    CHECK(ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at) == 0 && at.pt_id != ia.out_ioas_id,
          "ATTACH to the IOAS makes an automatic HWPT (pt_id %u)", at.pt_id);

    const char msg[] = "written by the emulated device";
    CHECK(device_dma(dev, 1, 0x100000 + 0x123, (void *)msg, sizeof(msg), NULL) == 0, "the device writes through the IOMMU");
    CHECK(memcmp(buf + 0x123, msg, sizeof(msg)) == 0, "the program reads the device's bytes in its own memory");
    CHECK(buf[0x122] == 0x11 && buf[0x123 + sizeof(msg)] == 0x11, "and nothing around them changed");
    memcpy(buf + 2 * 4096, "from the program", 17);
    char got[17] = { 0 };
    CHECK(device_dma(dev, 0, 0x100000 + 2 * 4096, got, 17, NULL) == 0 && memcmp(got, "from the program", 17) == 0,
          "the device reads what the program wrote");
    uint32_t reason = 0;
    CHECK(device_dma(dev, 1, 0x900000, (void *)msg, 8, &reason) == 1 && reason != 0,
          "a DMA to an unmapped IOVA faults (reason 0x%x)", reason);

    /* fork while pinned: the child gets a copy of the pinned private page (its writes do not
     * reach the parent's page, which the device still reaches). */
    pid_t pid = fork();
    if (pid == 0) {
        buf[0x500] = 0x77;
        _exit(buf[0x123] == msg[0] ? 0 : 1);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child sees the parent's bytes");
    CHECK(buf[0x500] == 0x11, "the child's write did not reach the parent's pinned page");
    char seen = 0;
    CHECK(device_dma(dev, 0, 0x100000 + 0x500, &seen, 1, NULL) == 0 && seen == 0x11, "nor what the device reaches");

    /* Shared memory: a memfd mapped twice; the device's write shows through the other mapping. */
    int mfd = memfd_create("guest-ram", 0);
    ftruncate(mfd, 2 * 4096);
    unsigned char *a = mmap(NULL, 2 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    unsigned char *b = mmap(NULL, 2 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    struct iommu_ioas_map ms = { .size = sizeof(ms), .flags = MAP_READABLE | MAP_WRITEABLE | MAP_FIXED_IOVA, .ioas_id = ia.out_ioas_id,
                                 .user_va = (uintptr_t)a, .length = 2 * 4096, .iova = 0x200000 };
    CHECK(ioctl(iommufd, IOMMU_IOAS_MAP, &ms) == 0, "IOAS_MAP of a shared memfd mapping");
    CHECK(device_dma(dev, 1, 0x200000 + 4096, (void *)msg, sizeof(msg), NULL) == 0, "the device writes the memfd's page");
    CHECK(memcmp(b + 4096, msg, sizeof(msg)) == 0, "the write shows through another mapping of the same memfd");
    CHECK(memcmp(a + 4096, msg, sizeof(msg)) == 0, "and through the mapped one");

    /* IOAS_MAP_FILE of the same memfd: its pages are the ones the mappings show. */
    struct iommu_ioas_map_file mf = { .size = sizeof(mf), .flags = MAP_READABLE | MAP_WRITEABLE | MAP_FIXED_IOVA, .ioas_id = ia.out_ioas_id,
                                      .fd = mfd, .start = 0, .length = 2 * 4096, .iova = 0x300000 };
    CHECK(ioctl(iommufd, IOMMU_IOAS_MAP_FILE, &mf) == 0, "IOAS_MAP_FILE of the memfd");
    CHECK(device_dma(dev, 1, 0x300000 + 16, "by file", 8, NULL) == 0 && memcmp(a + 16, "by file", 8) == 0,
          "a device write through the file mapping shows in the program's mappings");
    char seen2[sizeof(msg)] = { 0 };
    CHECK(device_dma(dev, 0, 0x300000 + 4096, seen2, sizeof(msg), NULL) == 0 && memcmp(seen2, msg, sizeof(msg)) == 0,
          "and the device reads what came in through the other IOVA: one page");
    struct iommu_ioas_map_file badfd = mf;
    badfd.fd = 999; badfd.iova = 0x400000;
    errno = 0;
    CHECK(ioctl(iommufd, IOMMU_IOAS_MAP_FILE, &badfd) == -1 && errno == EBADF, "IOAS_MAP_FILE of a closed descriptor: EBADF");

    /* A forked child maps through the descriptor it inherited (the parent's file): shared
     * memory both map, and a private page of its own. The device then reaches both from the
     * parent's side; the shared page is the one the parent sees. */
    unsigned char *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    memset(shared, 0, 4096);
    pid_t child = fork();
    if (child == 0) {
        static unsigned char own[4096] __attribute__((aligned(4096)));
        memcpy(own, "child's own", 12);
        struct iommu_ioas_map cm = { .size = sizeof(cm), .flags = MAP_READABLE | MAP_WRITEABLE | MAP_FIXED_IOVA,
                                     .ioas_id = ia.out_ioas_id, .user_va = (uintptr_t)shared, .length = 4096, .iova = 0x500000 };
        int bad = ioctl(iommufd, IOMMU_IOAS_MAP, &cm) != 0;
        cm.user_va = (uintptr_t)own; cm.iova = 0x501000;
        bad |= (ioctl(iommufd, IOMMU_IOAS_MAP, &cm) != 0) << 1;
        _exit(bad);
    }
    int cstatus = 0;
    waitpid(child, &cstatus, 0);
    CHECK(WIFEXITED(cstatus) && WEXITSTATUS(cstatus) == 0, "a forked child maps through its inherited descriptor (status %d)", cstatus);
    CHECK(device_dma(dev, 1, 0x500000 + 8, "to both", 8, NULL) == 0 && memcmp(shared + 8, "to both", 8) == 0,
          "the device writes the shared page the child mapped, and the parent sees it");
    char owned[12] = { 0 };
    CHECK(device_dma(dev, 0, 0x501000, owned, 12, NULL) == 0 && memcmp(owned, "child's own", 12) == 0,
          "the device reads the child's private page, pinned while the child lived");
    struct iommu_ioas_unmap cu = { .size = sizeof(cu), .ioas_id = ia.out_ioas_id, .iova = 0x500000, .length = 2 * 4096 };
    CHECK(ioctl(iommufd, IOMMU_IOAS_UNMAP, &cu) == 0, "the parent unmaps what its child mapped");
    munmap(shared, 4096);

    struct iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = ia.out_ioas_id, .iova = 0x100000, .length = 4 * 4096 };
    CHECK(ioctl(iommufd, IOMMU_IOAS_UNMAP, &u) == 0, "IOAS_UNMAP of the private memory");
    CHECK(device_dma(dev, 1, 0x100000, (void *)msg, 8, &reason) == 1, "the device no longer reaches it");
    buf[0] = 0x42;
    CHECK(buf[0] == 0x42 && memcmp(buf + 0x123, msg, sizeof(msg)) == 0, "the program's memory keeps its contents after the unmap");

    struct vfio_device_detach_iommufd_pt de = { .argsz = sizeof(de) };
    CHECK(ioctl(dev, VFIO_DEVICE_DETACH_IOMMUFD_PT, &de) == 0, "DETACH");
    CHECK(device_dma(dev, 1, 0x200000, (void *)msg, 8, NULL) == 1, "a detached device reaches nothing");
    CHECK(close(dev) == 0, "close the device file (unbinds)");
    dev = open("/dev/vfio/devices/vfio0", O_RDWR);
    CHECK(dev >= 0, "the device file opens again after close");
    close(dev);
    CHECK(close(iommufd) == 0, "close /dev/iommu");
    munmap(a, 2 * 4096); munmap(b, 2 * 4096); close(mfd); munmap(buf, 4 * 4096);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
