#ifndef SMMU_REFERENCE_H
#define SMMU_REFERENCE_H
#include <stdint.h>

/// A plain-C reference of the emulated SMMUv3 translate path for stage-1 streams, used only
/// by `bench translate --arch smmuv3` to report Swift/C ratios. Same algorithm and geometry
/// as `SMMUv3Unit.translate`: an STE cache keyed by StreamID, a CD cache keyed by (StreamID,
/// CD index), a set-associative TLB tagged by (page, size class, world, VMID, ASID) with LRU
/// replacement (the hash, sets and victim choice of the Swift `TaggedCache`), and on a miss a
/// VMSAv8-64 stage-1 walk with the 4 KiB granule over the same flat simulated physical memory
/// (bounds- and backing-checked at every fetch), with the same descriptor checks, Access flag
/// and dirty-state handling, and TLB fill. Linear stream and CD tables only; stage 2 and
/// nested STEs are refused (SMMU_REF_UNSUPPORTED).
typedef struct smmu_ref_unit smmu_ref_unit;

/// Returned for a terminated transaction without an event (STE.Config abort, GBPA.ABORT).
#define SMMU_REF_ABORT 0x100
/// Returned for configurations the reference does not model (stage 2, nested, 2-level tables).
#define SMMU_REF_UNSUPPORTED 0x1FF

/// `strtab_base`/`strtab_cfg`: SMMU_STRTAB_BASE and _CFG as the unit holds them; `enabled`:
/// CR0ACK.SMMUEN; `e2h`: CR2.E2H. Cache geometry as `SMMUv3Configuration`.
smmu_ref_unit *smmu_ref_create(void *memory_base, const uint64_t *backed_bitmap, uint64_t memory_size,
                               uint64_t strtab_base, uint32_t strtab_cfg, int sid_bits, int oas_bits,
                               int ssid_bits, int enabled, int gbpa_abort, int e2h,
                               int ste_entries, int ste_ways, int cd_entries, int cd_ways,
                               int tlb_entries, int tlb_ways);
void smmu_ref_destroy(smmu_ref_unit *unit);

/// Translates one transaction without a SubstreamID. `access`: the bits of `DMAAccess`
/// (1 read, 2 write, 4 execute, 8 privileged). Returns 0 and the physical address in *pa, or
/// the SMMUv3 event number (IHI 0070 §7.3), SMMU_REF_ABORT or SMMU_REF_UNSUPPORTED.
int smmu_ref_translate(smmu_ref_unit *unit, uint32_t sid, uint64_t address, int access, uint64_t *pa);

uint64_t smmu_ref_tlb_hits(const smmu_ref_unit *unit);
uint64_t smmu_ref_tlb_misses(const smmu_ref_unit *unit);
#endif
