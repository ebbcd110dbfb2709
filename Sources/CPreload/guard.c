/* Fault-safe user copies for the Swift side: system calls before the guard is installed,
 * exception fixup in a SIGSEGV/SIGBUS handler after. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <ucontext.h>
#include <unistd.h>
#include "CPreload.h"
#include "shim.h"

/* Fault-safe copies: the kernel's process_vm_readv/writev on ourselves report an
 * inaccessible byte as a short count (EFAULT), where a plain memcpy would fault. */
int swiftiommu_copy_from_user(void *dst, uint64_t src, size_t n) {
    if (n == 0) return 1;
    struct iovec local = { dst, n }, remote = { (void *)(uintptr_t)src, n };
    return process_vm_readv(getpid(), &local, 1, &remote, 1, 0) == (ssize_t)n;
}

int swiftiommu_copy_to_user(uint64_t dst, const void *src, size_t n) {
    if (n == 0) return 1;
    struct iovec local = { (void *)src, n }, remote = { (void *)(uintptr_t)dst, n };
    return process_vm_writev(getpid(), &local, 1, &remote, 1, 0) == (ssize_t)n;
}

/* The same on another process (a forked child calling through a file it inherited): the whole
 * `n` bytes or 0. */
int swiftiommu_copy_process(int pid, void *local_buffer, uint64_t address, size_t n, int write) {
    struct iovec local = { local_buffer, n }, remote = { (void *)(uintptr_t)address, n };
    ssize_t done = write ? process_vm_writev(pid, &local, 1, &remote, 1, 0) : process_vm_readv(pid, &local, 1, &remote, 1, 0);
    return done == (ssize_t)n;
}

/* Fault-safe copies without a system call: one `rep movsb` whose fault, if any, the
 * SIGSEGV/SIGBUS handler turns into a return with the bytes left (the kernel's exception
 * fixup, done with the signal's register state). Faults anywhere else go to whatever handler
 * the program has (or the default action), as if the shim were not there; a SIGBUS in the
 * emulated RAM window (a file a frame aliases was truncated) gets a zero page there instead. */
extern char swiftiommu_copy_insn[], swiftiommu_copy_done[];

__attribute__((noinline)) static size_t copy_guarded(void *dst, const void *src, size_t n) {
    __asm__ volatile(
        ".globl swiftiommu_copy_insn\n"
        "swiftiommu_copy_insn: rep movsb\n"
        ".globl swiftiommu_copy_done\n"
        "swiftiommu_copy_done:\n"
        : "+D"(dst), "+S"(src), "+c"(n) : : "memory");
    return n;
}

static struct sigaction program_segv, program_bus;
static int guard_installed;
static uint64_t window_start, window_end;

static void chain(int sig, siginfo_t *info, void *uc) {
    struct sigaction *a = sig == SIGSEGV ? &program_segv : &program_bus;
    if (a->sa_flags & SA_SIGINFO) { if (a->sa_sigaction) { a->sa_sigaction(sig, info, uc); return; } }
    else if (a->sa_handler != SIG_IGN && a->sa_handler != SIG_DFL) { a->sa_handler(sig); return; }
    /* Default action: put it back and let the fault happen again. */
    struct sigaction dfl = { .sa_handler = SIG_DFL };
    REAL(int, sigaction, (int, const struct sigaction *, struct sigaction *));
    real_sigaction(sig, &dfl, NULL);
}

static void guard_handler(int sig, siginfo_t *info, void *ucv) {
    ucontext_t *uc = ucv;
    if (uc->uc_mcontext.gregs[REG_RIP] == (greg_t)(uintptr_t)swiftiommu_copy_insn) {
        uc->uc_mcontext.gregs[REG_RIP] = (greg_t)(uintptr_t)swiftiommu_copy_done;
        return;
    }
    uint64_t a = (uint64_t)(uintptr_t)info->si_addr;
    if (sig == SIGBUS && a >= window_start && a < window_end) {
        REAL(void *, mmap, (void *, size_t, int, int, int, off_t));
        if (real_mmap((void *)(uintptr_t)(a & ~0xfffull), 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED) return;
    }
    chain(sig, info, ucv);
}

void swiftiommu_shim_install_guard(uint64_t start, uint64_t end) {
    window_start = start; window_end = end;
    if (guard_installed) return;
    REAL(int, sigaction, (int, const struct sigaction *, struct sigaction *));
    struct sigaction sa = { 0 };
    sa.sa_sigaction = guard_handler;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    real_sigaction(SIGSEGV, &sa, &program_segv);
    real_sigaction(SIGBUS, &sa, &program_bus);
    guard_installed = 1;
}

/* The program's own SIGSEGV/SIGBUS handlers are kept behind the guard, which calls them. */
int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    if (guard_installed && (sig == SIGSEGV || sig == SIGBUS)) {
        struct sigaction *mine = sig == SIGSEGV ? &program_segv : &program_bus;
        if (old) *old = *mine;
        if (act) *mine = *act;
        return 0;
    }
    REAL(int, sigaction, (int, const struct sigaction *, struct sigaction *));
    return real_sigaction(sig, act, old);
}

int swiftiommu_copy_from_user_fast(void *dst, uint64_t src, size_t n) {
    if (!guard_installed) return swiftiommu_copy_from_user(dst, src, n);
    if (n == 0) return 1;
    if (src + n < src) return 0;
    return copy_guarded(dst, (const void *)(uintptr_t)src, n) == 0;
}

int swiftiommu_copy_to_user_fast(uint64_t dst, const void *src, size_t n) {
    if (!guard_installed) return swiftiommu_copy_to_user(dst, src, n);
    if (n == 0) return 1;
    if (dst + n < dst) return 0;
    return copy_guarded((void *)(uintptr_t)dst, src, n) == 0;
}

