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
