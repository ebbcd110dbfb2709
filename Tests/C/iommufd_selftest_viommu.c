/* The kernel's selftest driver interface, second part (run it under
 * `iommu-sim preload -- ./iommufd_selftest_viommu`): nested HWPTs, their IOTLB and
 * invalidation; IO page faults; PASID attach/replace/detach and the pasid 1024 quirk; the mock
 * vIOMMU with its mmap region, vDEVICE, vEVENTQ, cache invalidation and HW queues; destroying
 * devices under a vDEVICE. Each area runs on its own fresh /dev/iommu file; at the end nothing
 * may be left pinned. Prints "N passed, N failed" and exits non-zero on any failure. */
#include "selftest.h"

static void nested(int fd) {
    uint32_t ioas = ioas_alloc(fd), parent = 0, plain = 0, n = 0, n2 = 0, num = 0, got = 0;
    struct mock m = { 0 };
    const uint32_t D = IOMMU_TEST_IOTLB_DEFAULT, T = IOMMU_HWPT_INVALIDATE_DATA_SELFTEST;
    struct iommu_hwpt_invalidate_selftest inv[2] = { { 0, 0 }, { 0, 0 } };
    uint32_t eight[2] = { IOMMU_TEST_IOTLB_DEFAULT, 0 };
    CHECK(mock(fd, ioas, &m) == 0 && map_fixed(fd, ioas, buffer, BUF_SIZE, START) == 0, "MOCK_DOMAIN and IOAS_MAP");
    CHECK(hwpt_paging(fd, HWPT_ALLOC_NEST_PARENT, m.idev, ioas, &parent) == 0, "HWPT_ALLOC NEST_PARENT");
    CHECK(hwpt_paging(fd, 0, m.idev, ioas, &plain) == 0, "HWPT_ALLOC of a plain paging HWPT");
    CHECK(hwpt_nested(fd, 0, m.idev, parent, &n) == 0 && hwpt_nested(fd, 0, m.idev, parent, &n2) == 0, "two nested HWPTs with {iotlb 0xbadbeef}");
    CHECK(slots_are(fd, IOTLB, n, D, D, D, D), "MD_CHECK_IOTLB: the 4 slots hold the alloc data");
    CHECK_ERRNO(check_slot(fd, IOTLB, n, 4, D), EINVAL, "MD_CHECK_IOTLB slot 4");
    CHECK_ERRNO(check_slot(fd, IOTLB, n, 0, 0), EINVAL, "MD_CHECK_IOTLB with a wrong value");
    CHECK_ERRNO(check_slot(fd, IOTLB, parent, 0, D), ENOENT, "MD_CHECK_IOTLB on a paging HWPT");
    CHECK_ERRNO(check_map(fd, n, START, PAGE, buffer), ENOENT, "MD_CHECK_MAP on a nested HWPT");
    CHECK_ERRNO(hwpt_full(fd, 0, m.idev, parent, IOMMU_HWPT_DATA_SELFTEST + 1, &iotlb_data, 4, 0, NULL), EOPNOTSUPP, "nested data of another type");
    CHECK_ERRNO(hwpt_full(fd, 0, m.idev, parent, IOMMU_HWPT_DATA_SELFTEST, &iotlb_data, 3, 0, NULL), EINVAL, "nested data_len 3");
    CHECK_ERRNO(hwpt_full(fd, 0, m.idev, parent, IOMMU_HWPT_DATA_SELFTEST, eight, 8, 0, NULL), EINVAL, "nested data_len 8");
    CHECK_ERRNO(hwpt_full(fd, 0, m.idev, parent, IOMMU_HWPT_DATA_SELFTEST, NULL, 4, 0, NULL), EFAULT, "nested data at NULL");
    CHECK_ERRNO(hwpt_full(fd, 0, m.idev, parent, 0, &iotlb_data, 4, 0, NULL), EINVAL, "data type NONE with a data_len");
    CHECK_ERRNO(hwpt_nested(fd, HWPT_ALLOC_NEST_PARENT, m.idev, parent, NULL), EOPNOTSUPP, "a nested HWPT with NEST_PARENT");
    CHECK_ERRNO(hwpt_nested(fd, 0, m.idev, plain, NULL), EINVAL, "a nested HWPT on a parent without NEST_PARENT");
    CHECK_ERRNO(hwpt_nested(fd, 0, m.idev, m.hwpt, NULL), EINVAL, "a nested HWPT on an auto HWPT");
    CHECK_ERRNO(hwpt_nested(fd, 0, m.idev, n, NULL), EINVAL, "a nested HWPT on a nested HWPT");

    CHECK(invalidate(fd, n, T, inv, 8, &num) == 0 && num == 0, "HWPT_INVALIDATE with no entries checks the type only");
    num = 0;
    CHECK_ERRNO(invalidate(fd, n, IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID, inv, 8, &num), EINVAL, "HWPT_INVALIDATE of another type, no entries");
    num = 1;
    CHECK_ERRNO(invalidate(fd, n, T, inv, 9, &num), EINVAL, "HWPT_INVALIDATE with entry_len 9");
    CHECK(num == 0, "entry_num 0 after it");
    num = 1;
    CHECK_ERRNO(invalidate(fd, n, T, inv, 4, &num), EINVAL, "HWPT_INVALIDATE with entry_len 4");
    num = 1;
    CHECK_ERRNO(invalidate(fd, n, T, NULL, 8, &num), EINVAL, "HWPT_INVALIDATE of 1 entry at NULL");
    inv[0] = (struct iommu_hwpt_invalidate_selftest){ 0xffffffff, 0 };
    num = 1;
    CHECK_ERRNO(invalidate(fd, n, T, inv, 8, &num), EOPNOTSUPP, "HWPT_INVALIDATE with unknown entry flags");
    inv[0] = (struct iommu_hwpt_invalidate_selftest){ IOMMU_TEST_INVALIDATE_FLAG_ALL, 4 };
    num = 1;
    CHECK_ERRNO(invalidate(fd, n, T, inv, 8, &num), EINVAL, "HWPT_INVALIDATE with iotlb_id 4, even with FLAG_ALL");
    CHECK(slots_are(fd, IOTLB, n, D, D, D, D), "nothing was invalidated");
    inv[0] = (struct iommu_hwpt_invalidate_selftest){ 0, 0 };
    inv[1] = (struct iommu_hwpt_invalidate_selftest){ 0, 4 };
    num = 2;
    CHECK_ERRNO(invalidate(fd, n, T, inv, 8, &num), EINVAL, "HWPT_INVALIDATE whose second entry has iotlb_id 4");
    CHECK(num == 1 && slots_are(fd, IOTLB, n, 0, D, D, D), "entry_num reports the one entry done, which cleared slot 0 (%u)", num);
    inv[0].iotlb_id = 2;
    num = 1;
    CHECK(invalidate(fd, n, T, inv, 8, &num) == 0 && num == 1 && slots_are(fd, IOTLB, n, 0, D, 0, D), "HWPT_INVALIDATE of slot 2");
    inv[0].flags = IOMMU_TEST_INVALIDATE_FLAG_ALL;
    num = 1;
    CHECK(invalidate(fd, n2, T, inv, 8, &num) == 0 && num == 1 && slots_are(fd, IOTLB, n2, 0, 0, 0, 0), "FLAG_ALL clears all four");
    num = 1;
    CHECK_ERRNO(invalidate(fd, parent, T, inv, 8, &num), EINVAL, "HWPT_INVALIDATE on a paging HWPT");

    CHECK_ERRNO(destroy(fd, parent), EBUSY, "DESTROY of a parent with nested HWPTs");
    CHECK(replace(fd, m.stdev, n, &got) == 0 && got == n, "MOCK_DOMAIN_REPLACE onto the nested HWPT");
    CHECK_ERRNO(destroy(fd, n), EBUSY, "DESTROY of the attached nested HWPT");
    CHECK(replace(fd, m.stdev, ioas, NULL) == 0, "back to the IOAS");
    CHECK(destroy(fd, n) == 0 && destroy(fd, n2) == 0 && destroy(fd, parent) == 0 && destroy(fd, plain) == 0, "then they all go");
    CHECK(destroy(fd, m.stdev) == 0 && destroy(fd, ioas) == 0, "DESTROY");
}

static void iopf(int fd) {
    uint32_t ioas = ioas_alloc(fd), fault = 0, hwpt = 0, got = 0;
    struct mock m = { 0 };
    int ffd = -1;
    struct iommu_hwpt_pgfault rec;
    CHECK(mock(fd, ioas, &m) == 0, "MOCK_DOMAIN");
    CHECK(fault_alloc(fd, &fault, &ffd) == 0 && ffd > 2, "FAULT_QUEUE_ALLOC");
    CHECK_ERRNO(hwpt_full(fd, HWPT_FAULT_ID_VALID, m.idev, ioas, 0, NULL, 0, 999, NULL), ENOENT, "HWPT_ALLOC with a missing fault_id");
    CHECK_ERRNO(hwpt_full(fd, HWPT_FAULT_ID_VALID | HWPT_ALLOC_NEST_PARENT, m.idev, ioas, 0, NULL, 0, fault, NULL), EOPNOTSUPP,
                "HWPT_ALLOC FAULT_ID_VALID with NEST_PARENT");
    CHECK(hwpt_full(fd, HWPT_FAULT_ID_VALID, m.idev, ioas, 0, NULL, 0, fault, &hwpt) == 0, "HWPT_ALLOC with FAULT_ID_VALID on the IOAS");
    /* On the auto HWPT (no fault handler) the fault is dropped; the op still succeeds. */
    CHECK(trigger_iopf(fd, m.idev, 0) == 0, "TRIGGER_IOPF on a device without a fault handler");
    CHECK(read(ffd, &rec, sizeof(rec)) == 0, "nothing reaches the fault queue");
    CHECK(replace(fd, m.stdev, hwpt, &got) == 0 && got == hwpt, "MOCK_DOMAIN_REPLACE onto the fault-capable HWPT");
    CHECK(trigger_iopf(fd, m.idev, 0) == 0, "TRIGGER_IOPF(idev, pasid 0, grpid 2, perm 3, addr 0xdeadbeaf)");
    memset(&rec, 0, sizeof(rec));
    CHECK(read(ffd, &rec, sizeof(rec)) == 40, "read gives one 40-byte record");
    CHECK(rec.flags == PGFAULT_FLAGS_LAST_PAGE && rec.dev_id == m.idev && rec.pasid == 0 && rec.grpid == 2 && rec.perm == 3 &&
          rec.addr == 0xdeadbeaf && rec.length == 0 && rec.cookie != 0, "the record: flags LAST_PAGE, dev_id %u (idev %u), grpid %u, perm %u, addr 0x%llx",
          rec.dev_id, m.idev, rec.grpid, rec.perm, (unsigned long long)rec.addr);
    CHECK(read(ffd, &rec, sizeof(rec)) == 0, "only one record");
    struct iommu_hwpt_page_response resp = { .cookie = rec.cookie, .code = 0 };
    CHECK(write(ffd, &resp, sizeof(resp)) == 8, "the response {cookie, 0} is taken");
    errno = 0;
    CHECK(write(ffd, &resp, sizeof(resp)) == -1 && errno == EINVAL, "a second response to that cookie: EINVAL");
    CHECK_ERRNO(trigger_iopf(fd, 999, 0), ENOENT, "TRIGGER_IOPF of a missing device");
    CHECK_ERRNO(trigger_iopf(fd, m.stdev, 0), ENOENT, "TRIGGER_IOPF of a stdev id (not a device)");
    CHECK_ERRNO(destroy(fd, hwpt), EBUSY, "DESTROY of the attached HWPT");
    CHECK_ERRNO(destroy(fd, fault), EBUSY, "DESTROY of the fault queue while its fd is open");
    CHECK(replace(fd, m.stdev, ioas, NULL) == 0 && destroy(fd, hwpt) == 0, "detach and DESTROY of the HWPT");
    CHECK(close(ffd) == 0 && destroy(fd, fault) == 0, "close the fault fd, then DESTROY the queue");
    CHECK(destroy(fd, m.stdev) == 0 && destroy(fd, ioas) == 0, "DESTROY");
}

static void pasid(int fd) {
    uint32_t ioas = ioas_alloc(fd), s2 = 0, s2b = 0, parent = 0, got = 0, fault = 0, ihwpt = 0;
    struct mock m = { 0 }, np = { 0 };
    int ffd = -1;
    CHECK(mock_flags(fd, ioas, MOCK_FLAGS_DEVICE_PASID, &m) == 0 && mock_flags(fd, ioas, 0, &np) == 0, "a PASID and a plain mock device");
    CHECK(hwpt_paging(fd, HWPT_ALLOC_PASID, m.idev, ioas, &s2) == 0 && hwpt_paging(fd, HWPT_ALLOC_PASID, m.idev, ioas, &s2b) == 0,
          "two HWPTs with HWPT_ALLOC_PASID");
    CHECK(hwpt_paging(fd, HWPT_ALLOC_NEST_PARENT, m.idev, ioas, &parent) == 0, "a HWPT without it");
    CHECK(op_u32(fd, IOMMU_TEST_OP_PASID_DETACH, m.stdev, 100) == 0, "PASID_DETACH with nothing attached");
    CHECK_ERRNO(pasid_op(fd, ATTACH, m.stdev, 100, s2, NULL), EINVAL, "PASID_ATTACH while the RID is on a HWPT that is not PASID-capable");
    CHECK(replace(fd, m.stdev, s2, NULL) == 0, "the RID onto a PASID-capable HWPT");
    CHECK(pasid_op(fd, ATTACH, m.stdev, 100, s2, &got) == 0 && got == s2, "PASID_ATTACH of pasid 100");
    CHECK(pasid_op(fd, PCHECK, m.stdev, 100, s2, NULL) == 0, "PASID_CHECK_HWPT agrees");
    CHECK_ERRNO(pasid_op(fd, PCHECK, m.stdev, 100, s2b, NULL), EINVAL, "PASID_CHECK_HWPT of another HWPT");
    CHECK_ERRNO(pasid_op(fd, PCHECK, m.stdev, 100, 0, NULL), EINVAL, "PASID_CHECK_HWPT of 0 while attached");
    CHECK_ERRNO(pasid_op(fd, PCHECK, m.stdev, 100, 999, NULL), ENOENT, "PASID_CHECK_HWPT of a missing id");
    CHECK_ERRNO(pasid_op(fd, PCHECK, m.stdev, 100, ioas, NULL), EINVAL, "PASID_CHECK_HWPT of an IOAS id");
    CHECK_ERRNO(pasid_op(fd, ATTACH, m.stdev, 100, s2b, NULL), EBUSY, "PASID_ATTACH of an attached pasid");
    CHECK_ERRNO(pasid_op(fd, ATTACH, m.stdev, 100, s2, NULL), EBUSY, "PASID_ATTACH of the same HWPT again");
    CHECK_ERRNO(replace(fd, m.stdev, parent, NULL), EINVAL, "the RID onto a non-PASID HWPT while a PASID is attached");
    CHECK(pasid_op(fd, PREPLACE, m.stdev, 100, s2b, &got) == 0 && got == s2b && pasid_op(fd, PCHECK, m.stdev, 100, s2b, NULL) == 0,
          "PASID_REPLACE to another HWPT");
    CHECK_ERRNO(pasid_op(fd, PREPLACE, m.stdev, 100, ioas, NULL), EINVAL, "PASID_REPLACE to an IOAS");
    CHECK(pasid_op(fd, PCHECK, m.stdev, 100, s2b, NULL) == 0, "the HWPT is kept");
    CHECK_ERRNO(pasid_op(fd, PREPLACE, m.stdev, 200, s2, NULL), EINVAL, "PASID_REPLACE of a pasid not attached");
    CHECK(op_u32(fd, IOMMU_TEST_OP_PASID_DETACH, m.stdev, 100) == 0, "PASID_DETACH");
    CHECK(pasid_op(fd, PCHECK, m.stdev, 100, 0, NULL) == 0, "PASID_CHECK_HWPT of 0 after the detach");
    CHECK_ERRNO(pasid_op(fd, ATTACH, m.stdev, 100, parent, NULL), EINVAL, "PASID_ATTACH of a HWPT without HWPT_ALLOC_PASID");
    CHECK_ERRNO(pasid_op(fd, ATTACH, m.stdev, 100, ioas, NULL), EINVAL, "PASID_ATTACH of an IOAS id");
    CHECK(pasid_op(fd, PCHECK, m.stdev, 100, 0, NULL) == 0, "nothing is attached after the failures");
    /* pasid 1024: attach arms the mock, the next set fails with ENOMEM and disarms it. */
    CHECK(pasid_op(fd, ATTACH, m.stdev, 1024, s2, NULL) == 0, "PASID_ATTACH of pasid 1024");
    CHECK_ERRNO(pasid_op(fd, PREPLACE, m.stdev, 1024, s2b, NULL), ENOMEM, "PASID_REPLACE at pasid 1024");
    CHECK(pasid_op(fd, PCHECK, m.stdev, 1024, s2, NULL) == 0, "the old HWPT is kept");
    CHECK(pasid_op(fd, PREPLACE, m.stdev, 1024, s2b, NULL) == 0 && pasid_op(fd, PCHECK, m.stdev, 1024, s2b, NULL) == 0,
          "the replace after the failed one works");
    CHECK(op_u32(fd, IOMMU_TEST_OP_PASID_DETACH, m.stdev, 1024) == 0 && pasid_op(fd, PCHECK, m.stdev, 1024, 0, NULL) == 0, "PASID_DETACH of 1024");
    /* A fault on a PASID's HWPT carries the pasid. */
    struct iommu_hwpt_pgfault rec = { 0 };
    CHECK(fault_alloc(fd, &fault, &ffd) == 0 && hwpt_full(fd, HWPT_FAULT_ID_VALID | HWPT_ALLOC_PASID, m.idev, ioas, 0, NULL, 0, fault, &ihwpt) == 0,
          "a PASID-capable HWPT with a fault queue");
    CHECK(pasid_op(fd, ATTACH, m.stdev, 2048, ihwpt, NULL) == 0 && trigger_iopf(fd, m.idev, 2048) == 0, "TRIGGER_IOPF at pasid 2048");
    CHECK(read(ffd, &rec, sizeof(rec)) == 40 && rec.flags == (PGFAULT_FLAGS_PASID_VALID | PGFAULT_FLAGS_LAST_PAGE) && rec.pasid == 2048 &&
          rec.dev_id == m.idev, "the record has PASID_VALID and pasid 2048 (flags %u pasid %u)", rec.flags, rec.pasid);
    struct iommu_hwpt_page_response resp = { .cookie = rec.cookie, .code = 0 };
    CHECK(write(ffd, &resp, sizeof(resp)) == 8 && op_u32(fd, IOMMU_TEST_OP_PASID_DETACH, m.stdev, 2048) == 0, "respond and detach");
    CHECK(destroy(fd, ihwpt) == 0 && close(ffd) == 0 && destroy(fd, fault) == 0, "DESTROY of the fault HWPT and queue");
    /* A device without PASID support. */
    CHECK_ERRNO(pasid_op(fd, ATTACH, np.stdev, 100, s2, NULL), EINVAL, "PASID_ATTACH on a device without PASID");
    CHECK(replace(fd, np.stdev, s2, NULL) == 0, "a PASID-capable HWPT serves a device without PASID on its RID");
    CHECK_ERRNO(pasid_op(fd, ATTACH, np.stdev, 100, s2b, NULL), EINVAL, "PASID_ATTACH on it still fails");
    CHECK(op_u32(fd, IOMMU_TEST_OP_PASID_DETACH, np.stdev, 1) == 0, "PASID_DETACH on it is 0");
    CHECK_ERRNO(pasid_op(fd, ATTACH, 999, 100, s2, NULL), ENOENT, "PASID_ATTACH of a missing stdev");
    CHECK_ERRNO(pasid_op(fd, PCHECK, m.idev, 100, 0, NULL), ENOENT, "PASID_CHECK_HWPT of an idev (not a stdev)");
    CHECK_ERRNO(op_u32(fd, IOMMU_TEST_OP_PASID_DETACH, 999, 100), ENOENT, "PASID_DETACH of a missing stdev");
    CHECK(replace(fd, m.stdev, ioas, NULL) == 0 && replace(fd, np.stdev, ioas, NULL) == 0, "the RIDs back to the IOAS");
    CHECK(destroy(fd, s2) == 0 && destroy(fd, s2b) == 0 && destroy(fd, parent) == 0, "DESTROY of the HWPTs");
    CHECK(destroy(fd, m.stdev) == 0 && destroy(fd, np.stdev) == 0 && destroy(fd, ioas) == 0, "DESTROY");
}

static void viommu_mmap(int fd) {
    uint32_t ioas = ioas_alloc(fd), parent = 0, v = 0, v2 = 0, nv = 0;
    struct mock m = { 0 };
    const uint32_t T = IOMMU_VIOMMU_TYPE_SELFTEST;
    struct iommu_viommu_selftest data = { .in_data = 0xbeef };
    CHECK(mock(fd, ioas, &m) == 0 && hwpt_paging(fd, HWPT_ALLOC_NEST_PARENT, m.idev, ioas, &parent) == 0, "MOCK_DOMAIN and a NEST_PARENT HWPT");
    CHECK(viommu_alloc(fd, m.idev, parent, T, NULL, 0, &v) == 0 && v != 0, "VIOMMU_ALLOC without data");
    CHECK_ERRNO(viommu_alloc(fd, m.idev, parent, 0, NULL, 0, NULL), EOPNOTSUPP, "VIOMMU_ALLOC of type 0");
    CHECK_ERRNO(viommu_alloc(fd, m.idev, parent, 0xdead, NULL, 0, NULL), EOPNOTSUPP, "VIOMMU_ALLOC of a type the mock does not have");
    CHECK_ERRNO(viommu_alloc(fd, m.idev, 0, T, NULL, 0, NULL), ENOENT, "VIOMMU_ALLOC on hwpt 0");
    CHECK_ERRNO(viommu_alloc(fd, m.idev, m.hwpt, T, NULL, 0, NULL), EINVAL, "VIOMMU_ALLOC on a HWPT without NEST_PARENT");
    CHECK_ERRNO(viommu_alloc(fd, m.idev, parent, T, &data, 4, NULL), EINVAL, "VIOMMU_ALLOC with 4 bytes of data (minimum 8)");
    CHECK_ERRNO(viommu_alloc(fd, m.idev, parent, T, &data, 32, NULL), EINVAL, "VIOMMU_ALLOC with 32 bytes of data (maximum 24)");
    CHECK(viommu_alloc(fd, m.idev, parent, T, &data, sizeof(data), &v2) == 0 && data.out_data == 0xbeef && data.out_mmap_offset == 4096 &&
          data.out_mmap_length == 8192, "VIOMMU_ALLOC with data: out_data 0x%x, mmap offset %llu, length %llu", data.out_data,
          (unsigned long long)data.out_mmap_offset, (unsigned long long)data.out_mmap_length);
    const int rw = PROT_READ | PROT_WRITE;
    CHECK(mmap_errno(fd, 4096, 4096, rw, MAP_SHARED) == ENXIO, "mmap of half the region: ENXIO");
    CHECK(mmap_errno(fd, 16384, 4096, rw, MAP_SHARED) == ENXIO, "mmap of twice the region: ENXIO");
    CHECK(mmap_errno(fd, 8192, 8192, rw, MAP_SHARED) == ENXIO, "mmap one page further: ENXIO");
    CHECK(mmap_errno(fd, 8192, 12288, rw, MAP_SHARED) == ENXIO, "mmap two pages further: ENXIO");
    CHECK(mmap_errno(fd, 8192, 0, rw, MAP_SHARED) == ENXIO, "mmap at offset 0: ENXIO");
    CHECK(mmap_errno(fd, 8192, 4096, rw, MAP_PRIVATE) == EINVAL, "mmap MAP_PRIVATE: EINVAL");
    CHECK(mmap_errno(fd, 8192, 4096, PROT_READ | PROT_EXEC, MAP_SHARED) == EPERM, "mmap PROT_EXEC: EPERM");
    uint32_t *page = mmap(NULL, 8192, rw, MAP_SHARED, fd, 4096);
    CHECK(page != MAP_FAILED && page[0] == 0xbeef, "mmap of the region shows in_data at byte 0");
    CHECK_ERRNO(destroy(fd, v2), EBUSY, "DESTROY of the vIOMMU while its region is mapped");
    CHECK(page != MAP_FAILED && munmap(page, 8192) == 0, "munmap");
    CHECK(destroy(fd, v2) == 0, "then DESTROY of the vIOMMU works");
    CHECK(hwpt_nested(fd, 0, m.idev, v, &nv) == 0, "a nested HWPT made from the first vIOMMU");
    CHECK_ERRNO(destroy(fd, v), EBUSY, "DESTROY of a vIOMMU with a nested HWPT");
    CHECK_ERRNO(destroy(fd, parent), EBUSY, "DESTROY of the parent of a vIOMMU");
    CHECK(destroy(fd, nv) == 0 && destroy(fd, v) == 0 && destroy(fd, parent) == 0, "DESTROY in dependency order");
    CHECK(destroy(fd, m.stdev) == 0 && destroy(fd, ioas) == 0, "DESTROY");
}

static void viommu_vdev(int fd) {
    uint32_t ioas = ioas_alloc(fd), parent = 0, v = 0, nv = 0, vdev = 0, vdev2 = 0, qid = 0, num = 0;
    struct mock m = { 0 };
    int qfd = -1;
    const uint32_t T = IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST, D = IOMMU_TEST_DEV_CACHE_DEFAULT;
    CHECK(mock(fd, ioas, &m) == 0 && hwpt_paging(fd, HWPT_ALLOC_NEST_PARENT, m.idev, ioas, &parent) == 0 &&
          viommu_alloc(fd, m.idev, parent, IOMMU_VIOMMU_TYPE_SELFTEST, NULL, 0, &v) == 0 && hwpt_nested(fd, 0, m.idev, v, &nv) == 0,
          "device, NEST_PARENT HWPT, vIOMMU and a nested HWPT from it");
    CHECK_ERRNO(replace(fd, m.stdev, nv, NULL), ENOENT, "attaching to the vIOMMU's nested HWPT needs a vDEVICE");
    CHECK_ERRNO(op_u32(fd, IOMMU_TEST_OP_TRIGGER_VEVENT, 0, m.idev), ENOENT, "TRIGGER_VEVENT for a device not on a vIOMMU");
    CHECK(vdevice_alloc(fd, v, m.idev, 0x99, &vdev) == 0, "VDEVICE_ALLOC virt_id 0x99");
    CHECK_ERRNO(vdevice_alloc(fd, v, m.idev, 0x98, NULL), EEXIST, "a second vDEVICE for the device");
    CHECK_ERRNO(vdevice_alloc(fd, 999, m.idev, 0x98, NULL), ENOENT, "VDEVICE_ALLOC on a missing vIOMMU");
    CHECK(replace(fd, m.stdev, nv, NULL) == 0, "MOCK_DOMAIN_REPLACE onto the nested HWPT");
    CHECK_ERRNO(op_u32(fd, IOMMU_TEST_OP_TRIGGER_VEVENT, 0, m.idev), EOPNOTSUPP, "TRIGGER_VEVENT with no vEVENTQ");
    CHECK_ERRNO(veventq_alloc(fd, v, IOMMU_VEVENTQ_TYPE_SELFTEST, 0, NULL, NULL), EINVAL, "VEVENTQ_ALLOC with depth 0");
    CHECK_ERRNO(veventq_alloc(fd, v, 0, 2, NULL, NULL), EOPNOTSUPP, "VEVENTQ_ALLOC of type 0");
    CHECK(veventq_alloc(fd, v, IOMMU_VEVENTQ_TYPE_SELFTEST, 2, &qid, &qfd) == 0 && qfd > 2, "VEVENTQ_ALLOC type 0xbeefbeef depth 2");
    CHECK_ERRNO(veventq_alloc(fd, v, IOMMU_VEVENTQ_TYPE_SELFTEST, 2, NULL, NULL), EEXIST, "a second vEVENTQ of that type");
    for (int i = 0; i < 3; i++) CHECK(op_u32(fd, IOMMU_TEST_OP_TRIGGER_VEVENT, 0, m.idev) == 0, "TRIGGER_VEVENT %d (a full queue is still 0)", i);
    struct pollfd p = { .fd = qfd, .events = POLLIN };
    CHECK(poll(&p, 1, 1000) == 1 && (p.revents & POLLIN), "poll(POLLIN) on the vEVENTQ");
    uint32_t ev[16];
    memset(ev, 0xff, sizeof(ev));
    CHECK(read(qfd, ev, sizeof(ev)) == 32, "read gives 2 events and a LOST header (32 bytes)");
    CHECK(ev[0] == 0 && ev[1] == 0 && ev[2] == 0x99 && ev[3] == 0 && ev[4] == 1 && ev[5] == 0x99, "two events {flags 0, seq 0/1}{virt_id 0x99}");
    CHECK(ev[6] == VEVENTQ_FLAG_LOST_EVENTS && ev[7] == 2, "then LOST_EVENTS with sequence 2 (flags %u seq %u)", ev[6], ev[7]);
    CHECK(read(qfd, ev, sizeof(ev)) == 0, "the queue is empty");
    CHECK(op_u32(fd, IOMMU_TEST_OP_TRIGGER_VEVENT, 0, m.idev) == 0 && read(qfd, ev, sizeof(ev)) == 12 && ev[0] == 0 && ev[1] == 3 && ev[2] == 0x99,
          "the next event has sequence 3");

    /* Cache invalidation through the vIOMMU, by vDEVICE and cache slot. */
    struct iommu_viommu_invalidate_selftest inv[2] = { { 0, 0x99, 0 }, { 0, 0x99, 4 } };
    CHECK(slots_are(fd, CACHE, m.idev, D, D, D, D), "DEV_CHECK_CACHE: 4 slots 0xbaddad");
    CHECK(invalidate(fd, v, T, inv, 12, &num) == 0 && num == 0, "vIOMMU invalidation with no entries");
    CHECK_ERRNO(invalidate(fd, v, IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID, inv, 12, &num), EINVAL, "vIOMMU invalidation of another type");
    num = 2;
    CHECK_ERRNO(invalidate(fd, v, T, inv, 12, &num), EINVAL, "a second entry with cache_id 4");
    CHECK(num == 1 && slots_are(fd, CACHE, m.idev, 0, D, D, D), "the first entry was done and cleared slot 0 (entry_num %u)", num);
    inv[0] = (struct iommu_viommu_invalidate_selftest){ 0, 0x9, 1 };
    num = 1;
    CHECK_ERRNO(invalidate(fd, v, T, inv, 12, &num), EINVAL, "an entry naming an unknown vdev_id");
    inv[0] = (struct iommu_viommu_invalidate_selftest){ 0xffffffff, 0x99, 1 };
    num = 1;
    CHECK_ERRNO(invalidate(fd, v, T, inv, 12, &num), EOPNOTSUPP, "an entry with unknown flags");
    inv[0] = (struct iommu_viommu_invalidate_selftest){ 0, 0x99, 2 };
    num = 1;
    CHECK(invalidate(fd, v, T, inv, 12, &num) == 0 && num == 1 && slots_are(fd, CACHE, m.idev, 0, D, 0, D), "an entry clearing slot 2");
    inv[0] = (struct iommu_viommu_invalidate_selftest){ IOMMU_TEST_INVALIDATE_FLAG_ALL, 0x99, 0 };
    num = 1;
    CHECK(invalidate(fd, v, T, inv, 12, &num) == 0 && slots_are(fd, CACHE, m.idev, 0, 0, 0, 0), "FLAG_ALL clears all four slots");
    CHECK_ERRNO(check_slot(fd, CACHE, m.idev, 4, 0), EINVAL, "DEV_CHECK_CACHE slot 4");

    CHECK_ERRNO(destroy(fd, v), EBUSY, "DESTROY of a vIOMMU with a vDEVICE, vEVENTQ and nested HWPT");
    CHECK_ERRNO(destroy(fd, qid), EBUSY, "DESTROY of a vEVENTQ while its fd is open");
    CHECK(replace(fd, m.stdev, ioas, NULL) == 0, "back to the IOAS");
    CHECK_ERRNO(op_u32(fd, IOMMU_TEST_OP_TRIGGER_VEVENT, 0, m.idev), ENOENT, "TRIGGER_VEVENT off the vIOMMU");
    CHECK(destroy(fd, vdev) == 0 && close(qfd) == 0 && destroy(fd, qid) == 0 && destroy(fd, nv) == 0, "DESTROY of the vDEVICE, vEVENTQ, nested HWPT");
    /* Destroying the stdev takes its idev and tombstones a live vDEVICE. */
    CHECK(vdevice_alloc(fd, v, m.idev, 0x77, &vdev2) == 0, "a new vDEVICE");
    CHECK(destroy(fd, m.stdev) == 0, "DESTROY of the stdev under a vDEVICE");
    CHECK_ERRNO(destroy(fd, vdev2), ENOENT, "the vDEVICE is a tombstone");
    CHECK_ERRNO(destroy(fd, m.idev), ENOENT, "DESTROY of the idev after its stdev");
    CHECK(destroy(fd, v) == 0 && destroy(fd, parent) == 0 && destroy(fd, ioas) == 0, "DESTROY");
}

static void hw_queues(int fd) {
    uint32_t ioas = ioas_alloc(fd), parent = 0, v = 0, q0 = 0, q1 = 0;
    struct mock m = { 0 };
    const uint32_t T = IOMMU_HW_QUEUE_TYPE_SELFTEST;
    CHECK(mock(fd, ioas, &m) == 0 && hwpt_paging(fd, HWPT_ALLOC_NEST_PARENT, m.idev, ioas, &parent) == 0 &&
          viommu_alloc(fd, m.idev, parent, IOMMU_VIOMMU_TYPE_SELFTEST, NULL, 0, &v) == 0, "device, NEST_PARENT HWPT and vIOMMU");
    CHECK_ERRNO(hw_queue(fd, v, 0, 0, START, PAGE, NULL), EOPNOTSUPP, "HW_QUEUE_ALLOC of type 0");
    CHECK_ERRNO(hw_queue(fd, v, T, 0, START, 0, NULL), EINVAL, "HW_QUEUE_ALLOC of length 0");
    CHECK_ERRNO(hw_queue(fd, v, T, 0, UINT64_MAX, PAGE, NULL), EOVERFLOW, "HW_QUEUE_ALLOC whose end overflows");
    CHECK_ERRNO(hw_queue(fd, 999, T, 0, START, PAGE, NULL), ENOENT, "HW_QUEUE_ALLOC on a missing vIOMMU");
    CHECK_ERRNO(hw_queue(fd, v, T, 0, START, PAGE, NULL), ENOENT, "HW_QUEUE_ALLOC over an IOVA not mapped");
    CHECK(map_fixed(fd, ioas, buffer, PAGE, START) == 0 && map_fixed(fd, ioas, buffer + PAGE, PAGE, START + PAGE) == 0, "IOAS_MAP of two pages");
    CHECK_ERRNO(hw_queue(fd, v, T, 1, START, PAGE, NULL), EIO, "HW_QUEUE_ALLOC index 1 before index 0");
    CHECK_ERRNO(hw_queue(fd, v, T, 2, START, PAGE, NULL), EINVAL, "HW_QUEUE_ALLOC index 2");
    CHECK(hw_queue(fd, v, T, 0, START, PAGE, &q0) == 0, "HW_QUEUE_ALLOC index 0 over the mapped page (id %u)", q0);
    errno = 0;
    CHECK(q0 != 0 && destroy(fd, q0 + 1) == -1 && errno == EBUSY, "the queue's internal access took the next ID and cannot be destroyed");
    CHECK_ERRNO(hw_queue(fd, v, T, 0, START, PAGE, NULL), EEXIST, "HW_QUEUE_ALLOC index 0 again");
    CHECK_ERRNO(unmap(fd, ioas, START, PAGE), EBUSY, "IOAS_UNMAP of the pinned range");
    CHECK(unmap(fd, ioas, START + PAGE, PAGE) == 0, "IOAS_UNMAP of the page next to it");
    CHECK(hw_queue(fd, v, T, 1, START + MOCK_PAGE, MOCK_PAGE, &q1) == 0, "HW_QUEUE_ALLOC index 1 at a 2 KiB offset");
    CHECK_ERRNO(destroy(fd, q0), EBUSY, "DESTROY of queue 0 while queue 1 holds it");
    CHECK_ERRNO(destroy(fd, v), EBUSY, "DESTROY of the vIOMMU with queues");
    CHECK(destroy(fd, q1) == 0 && destroy(fd, q0) == 0, "DESTROY of the queues, last first");
    CHECK(unmap(fd, ioas, START, PAGE) == 0, "IOAS_UNMAP works once the queues are gone");
    CHECK(destroy(fd, v) == 0 && destroy(fd, parent) == 0 && destroy(fd, m.stdev) == 0 && destroy(fd, ioas) == 0, "DESTROY");
}

int main(void) {
    static const struct area areas[] = {
        { "nested", nested }, { "iopf", iopf }, { "pasid", pasid }, { "viommu_mmap", viommu_mmap },
        { "viommu_vdev", viommu_vdev }, { "hw_queues", hw_queues },
    };
    return run_areas(areas, sizeof(areas) / sizeof(areas[0]));
}
