#include "CIOMMUSupport.h"

// The host clock's counter scale; HostClock calibrates it once and publishes it here.
ciommu_counter_scale_t ciommu_counter_scale = {0, 0, 0};

void ciommu_set_counter_scale(uint64_t base_count, uint64_t base_ns, uint64_t multiplier) {
    ciommu_counter_scale.base_count = base_count;
    ciommu_counter_scale.base_ns = base_ns;
    __atomic_store_n(&ciommu_counter_scale.multiplier, multiplier, __ATOMIC_RELEASE);
}
