#define _GNU_SOURCE
#include <errno.h>
#include <sys/mman.h>
#include <string.h>
#include <unistd.h>
#include "CIOMMUSupport.h"

int ciommu_memfd(uint64_t size) {
    int fd = memfd_create("swiftiommu-physical", MFD_CLOEXEC);
    if (fd < 0) return -1;
    if (ftruncate(fd, (off_t)size) != 0) { close(fd); return -1; }
    return fd;
}

int ciommu_map_shared_fixed(void *address, uint64_t length, int fd, uint64_t offset, int writable) {
    void *p = mmap(address, length, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED | MAP_FIXED, fd, (off_t)offset);
    return p == MAP_FAILED ? -errno : 0;
}

int ciommu_map_anonymous_fixed(void *address, uint64_t length, int prot) {
    void *p = mmap(address, length, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    return p == MAP_FAILED ? -errno : 0;
}

int ciommu_replace_private_page(void *address, const void *content, int prot) {
    void *tmp = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (tmp == MAP_FAILED) return -errno;
    memcpy(tmp, content, 4096);
    if (prot != (PROT_READ | PROT_WRITE) && mprotect(tmp, 4096, prot) != 0) { int e = errno; munmap(tmp, 4096); return -e; }
    void *moved = mremap(tmp, 4096, 4096, MREMAP_MAYMOVE | MREMAP_FIXED, address);
    if (moved == MAP_FAILED) { int e = errno; munmap(tmp, 4096); return -e; }
    return 0;
}

int ciommu_duplicate_shared_page(void *source, void *target) {
    void *p = mremap(source, 0, 4096, MREMAP_MAYMOVE | MREMAP_FIXED, target);
    return p == MAP_FAILED ? -errno : 0;
}
