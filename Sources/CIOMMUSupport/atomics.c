#if defined(__linux__)
#define _GNU_SOURCE
#include <unistd.h>
#include <sys/syscall.h>
#include <linux/futex.h>
#include <limits.h>
#else
#include <sched.h>
#endif
#include "CIOMMUSupport.h"

bool ciommu_cmpxchg64(void *address, uint64_t *expected, uint64_t desired) {
    return __atomic_compare_exchange_n((uint64_t *)address, expected, desired, false,
                                       __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

bool ciommu_cmpxchg128(void *address, uint64_t expected[2], const uint64_t desired[2]) {
    unsigned __int128 e = ((unsigned __int128)expected[1] << 64) | expected[0];
    unsigned __int128 d = ((unsigned __int128)desired[1] << 64) | desired[0];
    unsigned __int128 found = __sync_val_compare_and_swap((unsigned __int128 *)address, e, d);
    expected[0] = (uint64_t)found;
    expected[1] = (uint64_t)(found >> 64);
    return found == e;
}

uint64_t ciommu_fetch_or64(void *address, uint64_t bits) {
    return __atomic_fetch_or((uint64_t *)address, bits, __ATOMIC_SEQ_CST);
}

uint64_t ciommu_fetch_and64(void *address, uint64_t bits) {
    return __atomic_fetch_and((uint64_t *)address, bits, __ATOMIC_SEQ_CST);
}

uint64_t ciommu_load64(const void *address) { return __atomic_load_n((const uint64_t *)address, __ATOMIC_SEQ_CST); }
void ciommu_store64(void *address, uint64_t value) { __atomic_store_n((uint64_t *)address, value, __ATOMIC_SEQ_CST); }
uint32_t ciommu_load32(const void *address) { return __atomic_load_n((const uint32_t *)address, __ATOMIC_SEQ_CST); }
void ciommu_store32(void *address, uint32_t value) { __atomic_store_n((uint32_t *)address, value, __ATOMIC_SEQ_CST); }
uint32_t ciommu_exchange32(void *address, uint32_t value) { return __atomic_exchange_n((uint32_t *)address, value, __ATOMIC_SEQ_CST); }
uint32_t ciommu_fetch_add32(void *address, uint32_t value) { return __atomic_fetch_add((uint32_t *)address, value, __ATOMIC_SEQ_CST); }

void ciommu_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

void ciommu_futex_wait(uint32_t *address, uint32_t expected) {
#if defined(__linux__)
    syscall(SYS_futex, address, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
#else
    if (__atomic_load_n(address, __ATOMIC_SEQ_CST) == expected) sched_yield();
#endif
}

void ciommu_futex_wake(uint32_t *address) {
#if defined(__linux__)
    syscall(SYS_futex, address, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#else
    (void)address;
#endif
}
