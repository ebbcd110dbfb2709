/* The preload shim: interposes the libc entry points a program uses on /dev/iommu and hands
 * those to the Swift side (Sources/Preload); everything else goes to the next definition
 * (libc) unchanged. C does this part because ioctl and open are variadic and glibc's
 * fortified variants (__open_2, __read_chk, ...) are plain C symbols.
 *
 * An iommufd file is a real descriptor (a memfd the shim creates), so descriptor numbers,
 * dup-free close and O_CLOEXEC behave as the kernel's; the shim keeps one byte per
 * descriptor saying whether it is one of ours (the only check non-iommufd calls pay). */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/eventfd.h>
#include <signal.h>
#include <ucontext.h>
#include <linux/close_range.h>
#include <unistd.h>
#include "CPreload.h"
#include "shim.h"

/* The Swift side (weak: resolved within the same library). */
extern int swiftiommu_open(int fd, const char *path) __attribute__((weak));
extern long swiftiommu_ioctl(int fd, unsigned long request, unsigned long arg) __attribute__((weak));
extern int swiftiommu_close(int fd) __attribute__((weak));
extern void swiftiommu_fork_child(void) __attribute__((weak));
extern void swiftiommu_fork_prepare(void) __attribute__((weak));
extern void swiftiommu_fork_parent(void) __attribute__((weak));
extern long swiftiommu_read(int fd, void *buf, unsigned long count) __attribute__((weak));
extern long swiftiommu_write(int fd, const void *buf, unsigned long count) __attribute__((weak));
extern long swiftiommu_pread(int fd, void *buf, unsigned long count, long offset) __attribute__((weak));
extern long swiftiommu_pwrite(int fd, const void *buf, unsigned long count, long offset) __attribute__((weak));
extern long swiftiommu_mmap(int fd, uint64_t addr, size_t length, int prot, int flags, int64_t offset) __attribute__((weak));
extern void swiftiommu_huge_mapping(uint64_t addr, size_t length, int prot) __attribute__((weak));
extern int swiftiommu_dup(int oldfd, int newfd) __attribute__((weak));
/* The program is about to change the mappings of [addr, addr + len): `kind` 0 unmaps or
 * replaces them, 1 moves them (mremap), 2 changes their protection or advice. */
extern void swiftiommu_range_changing(uint64_t addr, uint64_t len, int kind) __attribute__((weak));

uint64_t maps_generation = 1;
/* Set while this thread runs the shim's Swift side: its own mappings need no notice. */
__thread int in_shim;

void swiftiommu_shim_set_inside(int inside) { in_shim = inside; }

uint64_t swiftiommu_shim_maps_generation(void) { return __atomic_load_n(&maps_generation, __ATOMIC_ACQUIRE); }

/* Counts the calls that may unmap memory without the shim seeing the unmap itself (glibc's
 * free, realloc and malloc_trim unmap large blocks and trim heaps internally; thread creation
 * frees cached stacks), besides every mapping change the shim sees: while it is unchanged,
 * nothing the program maps went away. */
uint64_t release_events = 1;
uint64_t swiftiommu_shim_release_events(void) { return __atomic_load_n(&release_events, __ATOMIC_ACQUIRE); }
void note_release(void) { __atomic_add_fetch(&release_events, 1, __ATOMIC_ACQ_REL); }

/* Set once the Swift side has a runtime (the first open of one of our files): before, the
 * program's mapping changes concern nobody. */
int runtime_started;

void range_changing(void *addr, size_t len, int kind) {
    /* The shim's own changes (in_shim) are tracked by the Swift side itself. */
    if (in_shim) return;
    note_release();
    __atomic_add_fetch(&maps_generation, 1, __ATOMIC_ACQ_REL);
    if (!in_shim && runtime_started && swiftiommu_range_changing && len) {
        in_shim = 1;
        swiftiommu_range_changing((uint64_t)(uintptr_t)addr, (uint64_t)len, kind);
        in_shim = 0;
    }
}

#define MAX_FDS 65536
static unsigned char ours[MAX_FDS];

void swiftiommu_shim_mark(int fd, int on) {
    if (fd >= 0 && fd < MAX_FDS) __atomic_store_n(&ours[fd], on ? 1 : 0, __ATOMIC_RELEASE);
}

int swiftiommu_shim_is_ours(int fd) {
    return fd >= 0 && fd < MAX_FDS && __atomic_load_n(&ours[fd], __ATOMIC_ACQUIRE);
}

/* Whether a call on `fd` goes to the Swift side: one of ours, and not a call the Swift side
 * itself makes (its own reads, closes and ioctls go to libc). */
static int serve(int fd) { return !in_shim && swiftiommu_shim_is_ours(fd); }

/* The files the emulated machine serves: /dev/iommu, the VFIO device cdevs, and the fault
 * injection files a fail_nth loop writes (the task's fail-nth, debugfs fail* knobs), so that
 * loop drives the emulated system's injection points instead of the host kernel's. */
static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* debugfs itself, which a fail_nth program opens first (opendir): an empty directory of our
 * own, so the program goes on to the knobs the shim serves. */
static int is_debugfs_root(const char *path) {
    return path && (strcmp(path, "/sys/kernel/debug") == 0 || strcmp(path, "/sys/kernel/debug/") == 0);
}

static int open_debugfs_root(int flags) {
    /* One directory for every process, holding the fault-injection knobs a fail_nth program
     * writes through the directory (openat relative to it: ignore-gfp-wait, verbose, ...):
     * plain files, so those writes succeed and reach nothing. The task's fail-nth, which
     * matters, is served by the Swift side. */
    static const char dir[] = "/tmp/swiftiommu-debugfs";
    static const char *const knobs[] = {
        "failslab/ignore-gfp-wait", "failslab/verbose", "fail_page_alloc/ignore-gfp-wait",
        "fail_page_alloc/ignore-gfp-highmem", "fail_page_alloc/verbose", "fail_iommufd/verbose",
        "fail_usercopy/verbose",
    };
    REAL(int, open, (const char *, int, ...));
    REAL(int, close, (int));
    mkdir(dir, 0755);
    for (size_t i = 0; i < sizeof(knobs) / sizeof(knobs[0]); i++) {
        char path[128];
        snprintf(path, sizeof(path), "%s/%s", dir, knobs[i]);
        char *slash = strrchr(path, '/');
        *slash = 0;
        mkdir(path, 0755);
        *slash = '/';
        int fd = real_open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd >= 0) real_close(fd);
    }
    return real_open(dir, (flags & ~(O_WRONLY | O_RDWR | O_CREAT)) | O_DIRECTORY);
}

/* glibc's opendir opens inside libc: debugfs is redirected here. */
DIR *opendir(const char *name) {
    if (is_debugfs_root(name)) {
        int fd = open_debugfs_root(O_RDONLY | O_CLOEXEC);
        if (fd < 0) return NULL;
        DIR *d = fdopendir(fd);
        if (!d) { REAL(int, close, (int)); real_close(fd); }
        return d;
    }
    REAL(DIR *, opendir, (const char *));
    return real_opendir(name);
}

static int is_iommu_path(const char *path) {
    /* The library's own opens (reading a real /proc file for a synthesized one) pass on. */
    if (!path || in_shim) return 0;
    if (strcmp(path, "/dev/iommu") == 0 || strncmp(path, "/dev/vfio/devices/vfio", 22) == 0) return 1;
    if (strncmp(path, "/sys/kernel/debug/fail", 22) == 0) return 1;
    if (strncmp(path, "/proc/", 6) == 0 && ends_with(path, "/fail-nth")) return 1;
    /* A process's status, once the machine exists: VmPin and VmLck are its accounting. */
    if (runtime_started && strncmp(path, "/proc/", 6) == 0 && ends_with(path, "/status")) {
        const char *p = path + 6;
        if (strcmp(p, "self/status") == 0) return 1;
        while (*p >= '0' && *p <= '9') p++;
        return p > path + 6 && strcmp(p, "/status") == 0;
    }
    return 0;
}

static void child_after_fork(void) {
    in_shim = 1;
    if (swiftiommu_fork_child) swiftiommu_fork_child();
    in_shim = 0;
}

/* Around fork the Swift side's lock is held, so the child never copies a state another thread
 * was changing; the parent lets go after, the child starts over lazily. */
static void prepare_fork(void) { if (swiftiommu_fork_prepare) swiftiommu_fork_prepare(); }
static void parent_after_fork(void) { if (swiftiommu_fork_parent) swiftiommu_fork_parent(); }

static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static void register_fork(void) { pthread_atfork(prepare_fork, parent_after_fork, child_after_fork); }

/* Opens one of our files: a descriptor of our own, then the Swift side behind it. */
static int open_iommu_path(const char *path, int flags) {
    if (!swiftiommu_open) { errno = ENODEV; return -1; }
    pthread_once(&fork_once, register_fork);
    int fd = memfd_create(strncmp(path, "/dev/iommu", 10) == 0 ? "iommufd" : strncmp(path, "/dev/vfio", 9) == 0 ? "vfio-device" : "fault-injection",
                          (flags & O_CLOEXEC) ? MFD_CLOEXEC : 0);
    if (fd < 0) return -1;
    if (fd >= MAX_FDS) { close(fd); errno = EMFILE; return -1; }
    in_shim = 1;
    int rc = swiftiommu_open(fd, path);
    in_shim = 0;
    runtime_started = 1;
    if (rc < 0) {
        REAL(int, close, (int));
        real_close(fd);
        errno = -rc;
        return -1;
    }
    swiftiommu_shim_mark(fd, 1);
    return fd;
}

static mode_t mode_arg(int flags, va_list ap) {
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t mode = mode_arg(flags, ap); va_end(ap);
    if (is_iommu_path(path)) return open_iommu_path(path, flags);
    if (is_debugfs_root(path)) return open_debugfs_root(flags);
    REAL(int, open, (const char *, int, ...));
    return real_open(path, flags, mode);
}

int open64(const char *path, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t mode = mode_arg(flags, ap); va_end(ap);
    if (is_iommu_path(path)) return open_iommu_path(path, flags);
    if (is_debugfs_root(path)) return open_debugfs_root(flags);
    REAL(int, open64, (const char *, int, ...));
    return real_open64(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t mode = mode_arg(flags, ap); va_end(ap);
    if (is_iommu_path(path)) return open_iommu_path(path, flags);
    if (is_debugfs_root(path)) return open_debugfs_root(flags);
    REAL(int, openat, (int, const char *, int, ...));
    return real_openat(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t mode = mode_arg(flags, ap); va_end(ap);
    if (is_iommu_path(path)) return open_iommu_path(path, flags);
    if (is_debugfs_root(path)) return open_debugfs_root(flags);
    REAL(int, openat64, (int, const char *, int, ...));
    return real_openat64(dirfd, path, flags, mode);
}

/* glibc's fortified opens (_FORTIFY_SOURCE with a flags argument known at compile time). */
int __open_2(const char *path, int flags) {
    if (is_iommu_path(path)) return open_iommu_path(path, flags);
    if (is_debugfs_root(path)) return open_debugfs_root(flags);
    REAL(int, __open_2, (const char *, int));
    return real___open_2(path, flags);
}

int __open64_2(const char *path, int flags) {
    if (is_iommu_path(path)) return open_iommu_path(path, flags);
    if (is_debugfs_root(path)) return open_debugfs_root(flags);
    REAL(int, __open64_2, (const char *, int));
    return real___open64_2(path, flags);
}

int __openat_2(int dirfd, const char *path, int flags) {
    if (is_iommu_path(path)) return open_iommu_path(path, flags);
    if (is_debugfs_root(path)) return open_debugfs_root(flags);
    REAL(int, __openat_2, (int, const char *, int));
    return real___openat_2(dirfd, path, flags);
}

int __openat64_2(int dirfd, const char *path, int flags) {
    if (is_iommu_path(path)) return open_iommu_path(path, flags);
    if (is_debugfs_root(path)) return open_debugfs_root(flags);
    REAL(int, __openat64_2, (int, const char *, int));
    return real___openat64_2(dirfd, path, flags);
}

int close(int fd) {
    REAL(int, close, (int));
    if (serve(fd)) {
        swiftiommu_shim_mark(fd, 0);
        in_shim = 1;
        if (swiftiommu_close) swiftiommu_close(fd);
        in_shim = 0;
    }
    return real_close(fd);
}

int ioctl(int fd, unsigned long request, ...) {
    va_list ap; va_start(ap, request); unsigned long arg = va_arg(ap, unsigned long); va_end(ap);
    if (serve(fd) && (request == FIOCLEX || request == FIONCLEX || request == FIONBIO || request == FIOASYNC)) {
        /* The VFS answers these for every file (do_vfs_ioctl): on the descriptor itself. */
        REAL(int, ioctl, (int, unsigned long, ...));
        return real_ioctl(fd, request, arg);
    }
    if (serve(fd) && swiftiommu_ioctl) {
        in_shim = 1;
        long rc = swiftiommu_ioctl(fd, request, arg);
        in_shim = 0;
        if (rc < 0) { errno = (int)-rc; return -1; }
        return (int)rc;
    }
    REAL(int, ioctl, (int, unsigned long, ...));
    return real_ioctl(fd, request, arg);
}

/* Files the machine serves that poll must see (fault queues) are eventfds: the Swift side
 * keeps the count at 1 while records wait and 0 otherwise, so poll, ppoll, select and epoll
 * work natively; read and write go to the Swift side. */
int swiftiommu_shim_eventfd(int cloexec) {
    int fd = eventfd(0, EFD_NONBLOCK | (cloexec ? EFD_CLOEXEC : 0));
    if (fd < 0) return -errno;
    if (fd >= MAX_FDS) { REAL(int, close, (int)); real_close(fd); return -EMFILE; }
    swiftiommu_shim_mark(fd, 1);
    return fd;
}

void swiftiommu_shim_signal(int fd, int readable) {
    REAL(ssize_t, read, (int, void *, size_t));
    REAL(ssize_t, write, (int, const void *, size_t));
    uint64_t v;
    while (real_read(fd, &v, sizeof(v)) == sizeof(v)) {}
    if (readable) { v = 1; real_write(fd, &v, sizeof(v)); }
}

ssize_t read(int fd, void *buf, size_t count) {
    if (serve(fd) && swiftiommu_read) {
        in_shim = 1;
        long rc = swiftiommu_read(fd, buf, count);
        in_shim = 0;
        if (rc < 0) { errno = (int)-rc; return -1; }
        return rc;
    }
    REAL(ssize_t, read, (int, void *, size_t));
    return real_read(fd, buf, count);
}

ssize_t __read_chk(int fd, void *buf, size_t count, size_t buflen) {
    if (count > buflen) { REAL(void, __chk_fail, (void)); real___chk_fail(); }
    return read(fd, buf, count);
}

ssize_t write(int fd, const void *buf, size_t count) {
    if (serve(fd) && swiftiommu_write) {
        in_shim = 1;
        long rc = swiftiommu_write(fd, buf, count);
        in_shim = 0;
        if (rc < 0) { errno = (int)-rc; return -1; }
        return rc;
    }
    REAL(ssize_t, write, (int, const void *, size_t));
    return real_write(fd, buf, count);
}

/* Positioned reads and writes of our files: the fault-injection files take them (a
 * fail_nth loop uses pread/pwrite); a fault file does not seek (ESPIPE); /dev/iommu has no
 * read and device regions are not emulated (EINVAL). */
ssize_t pread(int fd, void *buf, size_t count, off_t offset) {
    if (serve(fd) && swiftiommu_pread) {
        in_shim = 1;
        long rc = swiftiommu_pread(fd, buf, count, (long)offset);
        in_shim = 0;
        if (rc < 0) { errno = (int)-rc; return -1; }
        return rc;
    }
    REAL(ssize_t, pread, (int, void *, size_t, off_t));
    return real_pread(fd, buf, count, offset);
}

ssize_t pread64(int fd, void *buf, size_t count, off_t offset) {
    if (serve(fd) && swiftiommu_pread) {
        in_shim = 1;
        long rc = swiftiommu_pread(fd, buf, count, (long)offset);
        in_shim = 0;
        if (rc < 0) { errno = (int)-rc; return -1; }
        return rc;
    }
    REAL(ssize_t, pread64, (int, void *, size_t, off_t));
    return real_pread64(fd, buf, count, offset);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    if (serve(fd) && swiftiommu_pwrite) {
        in_shim = 1;
        long rc = swiftiommu_pwrite(fd, buf, count, (long)offset);
        in_shim = 0;
        if (rc < 0) { errno = (int)-rc; return -1; }
        return rc;
    }
    REAL(ssize_t, pwrite, (int, const void *, size_t, off_t));
    return real_pwrite(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    if (serve(fd) && swiftiommu_pwrite) {
        in_shim = 1;
        long rc = swiftiommu_pwrite(fd, buf, count, (long)offset);
        in_shim = 0;
        if (rc < 0) { errno = (int)-rc; return -1; }
        return rc;
    }
    REAL(ssize_t, pwrite64, (int, const void *, size_t, off_t));
    return real_pwrite64(fd, buf, count, offset);
}

/* Once the machine exists, the Swift side backs the fallback with physically contiguous
 * emulated memory (HostMemory+Huge.swift), as a huge page is contiguous. */
static void huge_backing(void *a, size_t len, int prot) {
    if (!runtime_started || !swiftiommu_huge_mapping) return;
    int was = in_shim;
    in_shim = 1;
    swiftiommu_huge_mapping((uint64_t)(uintptr_t)a, len, prot);
    in_shim = was;
}

/* MAP_HUGETLB on a host with no huge pages reserved (vm.nr_hugepages 0, the usual case):
 * ordinary memory of the same size, aligned to the huge page size (2 MiB, or the size the
 * flags encode), as the program's arithmetic on huge page boundaries expects. The emulated
 * system sees 4 KiB pages there, as Linux would after a THP split. */
static void *huge_fallback(size_t length, int prot, int flags) {
    int shift = (flags >> MAP_HUGE_SHIFT) & MAP_HUGE_MASK;
    size_t huge = shift ? (size_t)1 << shift : (size_t)2 << 20;
    size_t len = (length + huge - 1) & ~(huge - 1);
    if (len < length || len + huge < len) { errno = ENOMEM; return MAP_FAILED; }
    REAL(void *, mmap, (void *, size_t, int, int, int, off_t));
    REAL(int, munmap, (void *, size_t));
    int plain = flags & ~(MAP_HUGETLB | (MAP_HUGE_MASK << MAP_HUGE_SHIFT));
    char *p = real_mmap(NULL, len + huge, prot, plain & ~MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) return p;
    char *a = (char *)(((uintptr_t)p + huge - 1) & ~(uintptr_t)(huge - 1));
    if (a > p) real_munmap(p, (size_t)(a - p));
    if (a + len < p + len + huge) real_munmap(a + len, (size_t)(p + len + huge - (a + len)));
    REAL(int, madvise, (void *, size_t, int));
    if (flags & MAP_POPULATE) real_madvise(a, len, (prot & PROT_WRITE) ? MADV_POPULATE_WRITE : MADV_POPULATE_READ);
    huge_backing(a, len, prot);
    return a;
}

/* mmap of our files: the Swift side maps a window of the iommufd file (a vIOMMU's pages)
 * and returns its address, or answers -errno (ENXIO for an offset with no window, EPERM
 * when executable; device regions are not emulated). */
void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset) {
    if (!(flags & MAP_ANONYMOUS) && serve(fd)) {
        if (!swiftiommu_mmap) { errno = ENODEV; return MAP_FAILED; }
        in_shim = 1;
        long rc = swiftiommu_mmap(fd, (uint64_t)(uintptr_t)addr, length, prot, flags, (int64_t)offset);
        in_shim = 0;
        if (rc < 0 && rc > -4096) { errno = (int)-rc; return MAP_FAILED; }
        return (void *)rc;
    }
    /* A new mapping elsewhere changes nothing known (the Swift side re-reads the maps when it
     * meets an address it does not know); one placed over others replaces them. */
    if (flags & MAP_FIXED) range_changing(addr, length, 0);
    REAL(void *, mmap, (void *, size_t, int, int, int, off_t));
    void *p = real_mmap(addr, length, prot, flags, fd, offset);
    if (p == MAP_FAILED && (flags & MAP_HUGETLB) && (flags & MAP_ANONYMOUS) && errno == ENOMEM) {
        if (!(flags & MAP_FIXED)) return huge_fallback(length, prot, flags);
        /* At a fixed place the program chose (aligned, as a huge page would need): there. */
        int plain = flags & ~(MAP_HUGETLB | (MAP_HUGE_MASK << MAP_HUGE_SHIFT));
        void *q = real_mmap(addr, length, prot, plain, fd, offset);
        if (q != MAP_FAILED && (((uintptr_t)q | length) & ((2 << 20) - 1)) == 0) huge_backing(q, length, prot);
        return q;
    }
    return p;
}

void *mmap64(void *addr, size_t length, int prot, int flags, int fd, off_t offset) {
    return mmap(addr, length, prot, flags, fd, offset);
}

/* Closing one of ours by other means than close(): the Swift side lets go of it first. */
static void drop_if_ours(int fd) {
    if (serve(fd)) {
        swiftiommu_shim_mark(fd, 0);
        in_shim = 1;
        if (swiftiommu_close) swiftiommu_close(fd);
        in_shim = 0;
    }
}

/* A new descriptor for one of ours names the same file (the kernel shares it). */
static int adopt_dup(int oldfd, int newfd) {
    if (newfd < 0 || !serve(oldfd) || !swiftiommu_dup) return newfd;
    if (newfd >= MAX_FDS) { REAL(int, close, (int)); real_close(newfd); errno = EMFILE; return -1; }
    in_shim = 1;
    int rc = swiftiommu_dup(oldfd, newfd);
    in_shim = 0;
    if (rc == 0) swiftiommu_shim_mark(newfd, 1);
    return newfd;
}

int dup(int oldfd) {
    REAL(int, dup, (int));
    return adopt_dup(oldfd, real_dup(oldfd));
}

int dup2(int oldfd, int newfd) {
    if (oldfd != newfd) drop_if_ours(newfd);
    REAL(int, dup2, (int, int));
    int rc = real_dup2(oldfd, newfd);
    return oldfd == newfd ? rc : adopt_dup(oldfd, rc);
}

int dup3(int oldfd, int newfd, int flags) {
    if (oldfd != newfd) drop_if_ours(newfd);
    REAL(int, dup3, (int, int, int));
    return adopt_dup(oldfd, real_dup3(oldfd, newfd, flags));
}

int fcntl(int fd, int cmd, ...) {
    va_list ap; va_start(ap, cmd); unsigned long arg = va_arg(ap, unsigned long); va_end(ap);
    REAL(int, fcntl, (int, int, ...));
    int rc = real_fcntl(fd, cmd, arg);
    if (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) return adopt_dup(fd, rc);
    return rc;
}

int close_range(unsigned int first, unsigned int last, int flags) {
    if (!(flags & CLOSE_RANGE_CLOEXEC)) {
        for (unsigned int fd = first; fd <= last && fd < MAX_FDS; fd++) drop_if_ours((int)fd);
    }
    REAL(int, close_range, (unsigned int, unsigned int, int));
    return real_close_range(first, last, flags);
}

ssize_t __pread_chk(int fd, void *buf, size_t count, off_t offset, size_t buflen) {
    if (count > buflen) { REAL(void, __chk_fail, (void)); real___chk_fail(); }
    return pread(fd, buf, count, offset);
}

ssize_t __pread64_chk(int fd, void *buf, size_t count, off_t offset, size_t buflen) {
    if (count > buflen) { REAL(void, __chk_fail, (void)); real___chk_fail(); }
    return pread(fd, buf, count, offset);
}

/* stdio on our files: glibc's fopen opens, and its streams read and write, inside libc, past
 * the interposed calls; a stream of ours is a cookie stream whose reads and writes go through
 * them (a fail_nth program may arm fail-nth with fprintf). */
static ssize_t cookie_read(void *c, char *buf, size_t n) { return read((int)(intptr_t)c, buf, n); }
static ssize_t cookie_write(void *c, const char *buf, size_t n) { return write((int)(intptr_t)c, buf, n); }
static int cookie_close(void *c) { return close((int)(intptr_t)c); }

static FILE *fopen_ours(const char *path, const char *mode) {
    int flags = strchr(mode, '+') ? O_RDWR : (mode[0] == 'r' ? O_RDONLY : O_WRONLY);
    if (strchr(mode, 'e')) flags |= O_CLOEXEC;
    int fd = is_debugfs_root(path) ? -1 : open_iommu_path(path, flags);
    if (fd < 0) return NULL;
    cookie_io_functions_t io = { .read = cookie_read, .write = cookie_write, .seek = NULL, .close = cookie_close };
    FILE *f = fopencookie((void *)(intptr_t)fd, mode, io);
    if (!f) close(fd);
    return f;
}

FILE *fopen(const char *path, const char *mode) {
    if (path && mode && is_iommu_path(path)) return fopen_ours(path, mode);
    REAL(FILE *, fopen, (const char *, const char *));
    return real_fopen(path, mode);
}

FILE *fopen64(const char *path, const char *mode) {
    if (path && mode && is_iommu_path(path)) return fopen_ours(path, mode);
    REAL(FILE *, fopen64, (const char *, const char *));
    return real_fopen64(path, mode);
}
