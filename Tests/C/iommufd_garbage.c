/* Any bytes, any pointer, any order (run under `iommu-sim preload`): random iommufd and
 * VFIO ioctls with random argument bytes, sizes and pointers (valid, NULL, unmapped,
 * read-only, crossing into an unmapped page, wild) must each give 0, a result, or -1 with an
 * errno the uAPI uses, and never crash the process; closing afterwards and opening again
 * gives a clean file. Deterministic (fixed seed). Prints "N passed, N failed". */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include "uapi.h"

static uint64_t state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void) { state ^= state << 13; state ^= state >> 7; state ^= state << 17; return state; }

static int allowed(int e) {
    switch (e) {
    case EINVAL: case ENOENT: case EFAULT: case E2BIG: case ENOTTY: case EOPNOTSUPP: case EBUSY: case EEXIST:
    case ENOMEM: case ENOSPC: case EOVERFLOW: case ERANGE: case EPERM: case EMSGSIZE: case ENODEV: case EIO:
    case EADDRINUSE: case EBADF: case EDEADLK: case ETIMEDOUT: case ENXIO: case EBADFD: case EBADE:
        return 1;
    default:
        return 0;
    }
}

int main(void) {
    int passed = 0, failed = 0;
    int fd = open("/dev/iommu", O_RDWR);
    if (fd < 0) { printf("0 passed, 1 failed\n"); return 1; }
    unsigned char *page = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(page + 2 * 4096, 4096);                 /* page[8192..] unmapped */
    unsigned char *ro = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(ro, 0, 4096);
    mprotect(ro, 4096, PROT_READ);
    int unexpected = 0, calls = 0, successes = 0;
    for (int i = 0; i < 20000; i++) {
        /* Mostly iommufd numbers (0x80..0x95), the selftest's IOMMU_TEST_CMD (0xa0) and VFIO
         * ones (100..114), sometimes anything. */
        unsigned nr = (rnd() % 8 == 0) ? (unsigned)(rnd() & 0xff) : (rnd() % 5 == 0) ? 0xa0
                    : (rnd() % 3 == 0) ? 100 + (unsigned)(rnd() % 15) : 0x80 + (unsigned)(rnd() % 0x16);
        unsigned long req = _IO(';', nr);
        if (rnd() % 16 == 0) req |= (unsigned long)(rnd() & 0xffff) << 16; /* size and direction bits */
        /* Random struct bytes in the first page, with a plausible leading size most times, and
         * IDs kept small so some calls reach real objects. */
        for (int b = 0; b < 256; b++) page[b] = (unsigned char)rnd();
        uint32_t size = (rnd() % 4) ? (uint32_t)(8 + rnd() % 120) : (uint32_t)rnd();
        memcpy(page, &size, 4);
        for (int w = 4; w < 48; w += 4) if (rnd() % 2) { uint32_t small = (uint32_t)(rnd() % 6); memcpy(page + w, &small, 4); }
        /* The test command's op (1..21) and its struct size, most times. */
        if (nr == 0xa0 && rnd() % 4) { uint32_t op = 1 + (uint32_t)(rnd() % 21), sz = 72; memcpy(page + 4, &op, 4); memcpy(page, &sz, 4); }
        /* Embedded pointers sometimes point at our own readable page. */
        for (int w = 8; w < 64; w += 8) if (rnd() % 5 == 0) { uint64_t p = (uint64_t)(uintptr_t)(page + 4096); memcpy(page + w, &p, 8); }
        unsigned long arg;
        switch (rnd() % 7) {
        case 0: arg = 0; break;
        case 1: arg = (unsigned long)(page + 8192); break;             /* unmapped */
        case 2: arg = (unsigned long)ro; break;                         /* read-only zeros */
        case 3: arg = (unsigned long)(page + 8192 - 12); break;         /* crosses into unmapped */
        case 4: arg = (unsigned long)rnd(); break;                      /* wild */
        default: arg = (unsigned long)page; break;
        }
        errno = 0;
        int rc = ioctl(fd, req, arg);
        calls++;
        if (rc >= 0) successes++;
        else if (!allowed(errno)) {
            if (unexpected++ < 5) fprintf(stderr, "ioctl 0x%lx arg 0x%lx: errno %d (%s)\n", req, arg, errno, strerror(errno));
        }
    }
    if (unexpected == 0) passed++; else { failed++; fprintf(stderr, "FAIL: %d unexpected errnos\n", unexpected); }
    if (successes > 0) passed++; else { failed++; fprintf(stderr, "FAIL: no call succeeded (the test would prove little)\n"); }
    if (close(fd) == 0) passed++; else { failed++; fprintf(stderr, "FAIL: close\n"); }
    /* Files the selftest's commands opened (accesses, event queues) hold the old context as
     * they would in Linux; they go too. */
    for (int f = 3; f < 1024; f++) close(f);
    fd = open("/dev/iommu", O_RDWR);
    struct { uint32_t size, flags, out_ioas_id; } a = { sizeof(a), 0, 0 };
    if (fd >= 0 && ioctl(fd, _IO(';', 0x81), &a) == 0 && a.out_ioas_id == 1) passed++;
    else { failed++; fprintf(stderr, "FAIL: a new file after the garbage is clean (id %u)\n", a.out_ioas_id); }
    close(fd);
    fprintf(stderr, "%d calls, %d succeeded\n", calls, successes);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
