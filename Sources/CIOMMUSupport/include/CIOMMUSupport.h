#ifndef CIOMMU_SUPPORT_H
#define CIOMMU_SUPPORT_H
#include <stdint.h>
#include <stdbool.h>

/// Atomic 64-bit compare-exchange on simulated physical memory.
/// On return *expected holds the value that was found.
bool ciommu_cmpxchg64(void *address, uint64_t *expected, uint64_t desired);

/// Atomic 128-bit compare-exchange (x86-64 CMPXCHG16B); address must be 16-byte aligned.
/// expected[0] is the low quadword. On return expected holds the value that was found.
bool ciommu_cmpxchg128(void *address, uint64_t expected[2], const uint64_t desired[2]);

/// Atomic 64-bit OR (used by hardware to set accessed/dirty bits). Returns the old value.
uint64_t ciommu_fetch_or64(void *address, uint64_t bits);

/// Atomic AND of `bits` into the 64-bit word at `address`; returns the previous value.
uint64_t ciommu_fetch_and64(void *address, uint64_t bits);

/// Sequentially consistent loads and stores, for queue indices and flags shared by threads.
uint64_t ciommu_load64(const void *address);
void ciommu_store64(void *address, uint64_t value);
uint32_t ciommu_load32(const void *address);
void ciommu_store32(void *address, uint32_t value);
uint32_t ciommu_exchange32(void *address, uint32_t value);
uint32_t ciommu_fetch_add32(void *address, uint32_t value);

/// Compare-exchange that is atomic against the calling CPU only (Linux `cmpxchg64_local`:
/// x86 CMPXCHG without LOCK), so it orders nothing; one instruction reads and writes the
/// word. On return *expected holds the value found.
static inline bool ciommu_cmpxchg64_local(void *address, uint64_t *expected, uint64_t desired) {
#if defined(__x86_64__)
    uint64_t found = *expected;
    __asm__ volatile("cmpxchgq %2, %1" : "+a"(found), "+m"(*(uint64_t *)address) : "r"(desired) : "cc");
    bool ok = found == *expected;
    *expected = found;
    return ok;
#else
    return __atomic_compare_exchange_n((uint64_t *)address, expected, desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
#endif
}

/// A spin-wait hint (x86 PAUSE, Arm YIELD).
void ciommu_cpu_relax(void);

/// The CPU's free-running counter (x86 RDTSC, Arm CNTVCT_EL0), unordered; 0 where there is
/// none. Inline, so a Swift caller pays for the instruction alone (RDTSC reads in about
/// 12 ns on the development VM, where clock_gettime takes 30).
static inline uint64_t ciommu_cycle_counter(void) {
#if defined(__x86_64__)
    return __builtin_ia32_rdtsc();
#elif defined(__aarch64__)
    uint64_t value;
    __asm__ volatile("mrs %0, cntvct_el0" : "=r"(value));
    return value;
#else
    return 0;
#endif
}

/// The host clock's counter scale (Swift `HostClock`), in a C global so reading it costs no
/// lazy-initialisation check: ns = base_ns + (count - base_count) * multiplier / 2^32.
/// multiplier 0: not calibrated yet; 1: the counter is not used (clock_gettime instead).
typedef struct {
    uint64_t base_count;
    uint64_t base_ns;
    uint64_t multiplier;
} ciommu_counter_scale_t;

extern ciommu_counter_scale_t ciommu_counter_scale;

/// The multiplier, read with acquire so the base fields written before it are seen.
static inline uint64_t ciommu_counter_multiplier(void) {
    return __atomic_load_n(&ciommu_counter_scale.multiplier, __ATOMIC_ACQUIRE);
}
static inline uint64_t ciommu_counter_base_count(void) { return ciommu_counter_scale.base_count; }
static inline uint64_t ciommu_counter_base_ns(void) { return ciommu_counter_scale.base_ns; }

/// Publishes a calibration: the bases first, the multiplier last (release).
void ciommu_set_counter_scale(uint64_t base_count, uint64_t base_ns, uint64_t multiplier);

/// Sleeps while the 32-bit word at `address` equals `expected` (Linux futex; elsewhere a
/// yield). Spurious returns are allowed: callers re-check their condition.
void ciommu_futex_wait(uint32_t *address, uint32_t expected);
/// Wakes every thread sleeping on `address`.
void ciommu_futex_wake(uint32_t *address);

/* Shared physical memory (the C ABI, where emulated RAM must alias a real process's pages):
 * an anonymous memory file of `size` bytes (memfd_create + ftruncate), -1 on failure. */
int ciommu_memfd(uint64_t size);
/* Maps `length` bytes of `fd` at `offset` exactly at `address` (MAP_SHARED | MAP_FIXED),
 * readable, and writable when `writable`; 0 on success, -errno on failure. */
int ciommu_map_shared_fixed(void *address, uint64_t length, int fd, uint64_t offset, int writable);
/* Maps `length` bytes of fresh private anonymous memory exactly at `address` with the given
 * protection (PROT_* bits); 0 or -errno. */
int ciommu_map_anonymous_fixed(void *address, uint64_t length, int prot);

/* Replaces the page at `address` with a private anonymous page holding `content` (4 KiB)
 * and protection `prot`, in one step (built aside, then moved over with mremap); 0 or -errno. */
int ciommu_replace_private_page(void *address, const void *content, int prot);

/* Maps the shared page mapped at `source` also at `target` (mremap with old size 0: a second
 * mapping of the same shared page, no file descriptor needed); 0 or -errno. */
int ciommu_duplicate_shared_page(void *source, void *target);

#endif
