/* The kernel's selftest driver interface through /dev/iommu (run it under
 * `iommu-sim preload -- ./iommufd_selftest`): IOMMU_TEST_CMD (0x3ba0) and the mock IOMMU
 * behind it as Linux v6.17's drivers/iommu/iommufd/selftest.c answers: the command's
 * framing; mock devices and their IDs, auto HWPT sharing, IOVA ranges and device caches;
 * reserved ranges; MD_CHECK_MAP and MD_CHECK_REFS; accesses (pin, unpin, read/write
 * through the IOAS, replace); the temporary memory limit; replacing a device's domain; dirty
 * tracking; GET_HW_INFO; nested HWPTs, their IOTLB and invalidation; IO page faults; PASID
 * attach/replace/detach and the pasid 1024 quirk (nested HWPTs, IO page faults, PASIDs and
 * vIOMMUs are in iommufd_selftest_viommu.c). Each area runs on its own
 * fresh /dev/iommu file; at the end nothing may be left pinned. The layouts are in uapi.h.
 * Prints "N passed, N failed" and exits non-zero on any failure. */
#include "selftest.h"

static void framing(int fd) {
    struct { struct iommu_test_cmd c; uint64_t extra; } big = { .c = { .size = 67, .op = IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT, .memory_limit = { 65536 } } };
    CHECK_ERRNO(ioctl(fd, IOMMU_TEST_CMD, &big), EINVAL, "size 67, short of the end of `last`");
    big.c.size = 68;
    CHECK(ioctl(fd, IOMMU_TEST_CMD, &big) == 0, "size 68 (the minimum) is accepted");
    big.c.size = sizeof(big);
    big.extra = 1;
    CHECK_ERRNO(ioctl(fd, IOMMU_TEST_CMD, &big), E2BIG, "a non-zero byte past the 72 the kernel knows");
    big.extra = 0;
    CHECK(ioctl(fd, IOMMU_TEST_CMD, &big) == 0, "a longer struct with a zero tail is accepted");
    big.c.size = sizeof(big.c);
    big.c.__reserved = 7;
    CHECK(ioctl(fd, IOMMU_TEST_CMD, &big) == 0, "the header's __reserved is not checked");
    big.c.op = 0;
    CHECK_ERRNO(ioctl(fd, IOMMU_TEST_CMD, &big), EOPNOTSUPP, "op 0");
    big.c.op = 22;
    CHECK_ERRNO(ioctl(fd, IOMMU_TEST_CMD, &big), EOPNOTSUPP, "op 22 (past PASID_CHECK_HWPT)");
    big.c.op = 0xffffffff;
    CHECK_ERRNO(ioctl(fd, IOMMU_TEST_CMD, &big), EOPNOTSUPP, "op 0xffffffff");
    CHECK(IOMMU_TEST_CMD == 0x3ba0, "IOMMU_TEST_CMD is 0x3ba0");
    CHECK_ERRNO(ioctl(fd, _IOWR(IOMMUFD_TYPE, 0xa0, struct iommu_test_cmd), &big), ENOTTY, "TEST_CMD's number with size bits");
    CHECK_ERRNO(ioctl(fd, _IO(IOMMUFD_TYPE, 0x9f), &big), ENOTTY, "an empty slot between HW_QUEUE_ALLOC and TEST_CMD");
    CHECK_ERRNO(ioctl(fd, IOMMU_TEST_CMD, NULL), EFAULT, "a NULL argument");
}

static void mock_domain(int fd) {
    uint32_t ioas = ioas_alloc(fd);
    struct mock a = { 0 }, b = { 0 }, c = { 0 }, d = { 0 };
    CHECK(ioas == 1, "a fresh context's IOAS is 1 (%u)", ioas);
    CHECK(mock(fd, ioas, &a) == 0 && a.stdev == 2 && a.idev == 3 && a.hwpt == 4, "MOCK_DOMAIN: stdev 2, idev 3, hwpt 4 (%u %u %u)", a.stdev, a.idev, a.hwpt);
    CHECK(mock(fd, ioas, &b) == 0 && b.stdev == 5 && b.idev == 6 && b.hwpt == a.hwpt,
          "a second device on the IOAS shares the auto HWPT (%u %u %u)", b.stdev, b.idev, b.hwpt);
    CHECK_ERRNO(mock_flags(fd, ioas, 8, NULL), EINVAL, "MOCK_DOMAIN_FLAGS with an unknown device flag");
    CHECK_ERRNO(mock(fd, 999, NULL), ENOENT, "MOCK_DOMAIN on a missing pt_id");
    CHECK_ERRNO(mock(fd, a.idev, NULL), EINVAL, "MOCK_DOMAIN on a device's id (not an IOAS or HWPT)");
    CHECK(mock_flags(fd, ioas, 0, &c) == 0 && c.stdev == 7 && c.idev == 8 && c.hwpt == a.hwpt,
          "the IDs the failed calls took are reused (%u %u %u)", c.stdev, c.idev, c.hwpt);
    CHECK(mock(fd, a.hwpt, &d) == 0 && d.stdev == 9 && d.idev == 10 && d.hwpt == a.hwpt, "MOCK_DOMAIN straight onto the auto HWPT");

    struct iommu_iova_range r[2] = { { 0, 0 } };
    uint32_t num = 0;
    uint64_t align = 0;
    CHECK(iova_ranges(fd, ioas, r, 2, &num, &align) == 0 && num == 1 && r[0].start == 0x1000000 && r[0].last == 0x7fffffff && align == MOCK_PAGE,
          "IOVA_RANGES with a mock domain: the aperture [0x1000000, 0x7fffffff], alignment 2 KiB (%u ranges)", num);

    CHECK(slots_are(fd, CACHE, a.idev, 0xbaddad, 0xbaddad, 0xbaddad, 0xbaddad), "DEV_CHECK_CACHE: the 4 slots are 0xbaddad");
    CHECK_ERRNO(check_slot(fd, CACHE, a.idev, 4, 0xbaddad), EINVAL, "DEV_CHECK_CACHE slot 4");
    CHECK_ERRNO(check_slot(fd, CACHE, a.idev, 0, 0), EINVAL, "DEV_CHECK_CACHE with a wrong value");
    CHECK_ERRNO(check_slot(fd, CACHE, a.stdev, 0, 0xbaddad), ENOENT, "DEV_CHECK_CACHE takes the idev, not the stdev");

    CHECK_ERRNO(destroy(fd, a.idev), EBUSY, "DESTROY of the idev while its stdev lives");
    CHECK_ERRNO(destroy(fd, ioas), EBUSY, "DESTROY of an IOAS with a HWPT");
    CHECK(destroy(fd, a.stdev) == 0, "DESTROY of the stdev");
    CHECK_ERRNO(destroy(fd, a.idev), ENOENT, "the idev went with its stdev");
    CHECK_ERRNO(destroy(fd, a.stdev), ENOENT, "DESTROY of the stdev twice");
    CHECK(destroy(fd, b.stdev) == 0 && destroy(fd, c.stdev) == 0 && destroy(fd, d.stdev) == 0, "DESTROY of the other devices");
    CHECK_ERRNO(destroy(fd, a.hwpt), ENOENT, "the auto HWPT went with its last device");
    CHECK(destroy(fd, ioas) == 0, "then the IOAS can go");
}

static void reserved(int fd) {
    uint32_t ioas = ioas_alloc(fd), ioas2 = ioas_alloc(fd), ioas3 = ioas_alloc(fd), num = 0;
    struct iommu_iova_range r[3] = { { 0, 0 } };
    CHECK(map_fixed(fd, ioas, buffer, 4 * PAGE, 0x1000000) == 0, "IOAS_MAP at 0x1000000");
    CHECK_ERRNO(add_reserved(fd, ioas, 0x1001000, PAGE), EADDRINUSE, "ADD_RESERVED over a mapping");
    CHECK_ERRNO(add_reserved(fd, 999, 0x2000000, PAGE), ENOENT, "ADD_RESERVED on a missing IOAS");
    CHECK(add_reserved(fd, ioas, 0x2000000, 0x10000) == 0, "ADD_RESERVED of [0x2000000, 0x200ffff]");
    CHECK(iova_ranges(fd, ioas, r, 3, &num, NULL) == 0 && num == 2 && r[0].start == 0 && r[0].last == 0x1ffffff &&
          r[1].start == 0x2010000 && r[1].last == UINT64_MAX, "IOVA_RANGES around the reserved range (%u ranges)", num);
    /* iopt_check_iova: a fixed IOVA inside a reserved range is EINVAL (not EADDRINUSE, not ENOSPC). */
    CHECK_ERRNO(map_fixed(fd, ioas, buffer, PAGE, 0x2008000), EINVAL, "a fixed IOAS_MAP into the reserved range");
    CHECK_ERRNO(map_fixed(fd, ioas, buffer, 2 * PAGE, 0x1fff000), EINVAL, "a fixed IOAS_MAP running into it");
    CHECK(map_fixed(fd, ioas, buffer, PAGE, 0x2010000) == 0, "a fixed IOAS_MAP just past it");
    struct iommu_iova_range allow = { 0x1ff0000, 0x2000fff };
    struct iommu_ioas_allow_iovas al = { .size = sizeof(al), .ioas_id = ioas, .num_iovas = 1, .allowed_iovas = (uintptr_t)&allow };
    CHECK_ERRNO(ioctl(fd, IOMMU_IOAS_ALLOW_IOVAS, &al), EADDRINUSE, "ALLOW_IOVAS over a reserved range");
    allow = (struct iommu_iova_range){ 0x4000000, 0x4ffffff };
    CHECK(ioctl(fd, IOMMU_IOAS_ALLOW_IOVAS, &al) == 0, "ALLOW_IOVAS elsewhere");
    CHECK_ERRNO(add_reserved(fd, ioas, 0x4001000, PAGE), EADDRINUSE, "ADD_RESERVED over an allowed range");
    al.num_iovas = 0;
    CHECK(ioctl(fd, IOMMU_IOAS_ALLOW_IOVAS, &al) == 0 && add_reserved(fd, ioas, 0x4001000, PAGE) == 0, "and once it is lifted, it works");
    /* Nothing left for automatic allocation: ENOSPC. */
    uint64_t iova = 0;
    CHECK(add_reserved(fd, ioas2, PAGE, UINT64_MAX - 2 * PAGE + 1) == 0, "ADD_RESERVED of the whole allocation window");
    CHECK_ERRNO(map_auto(fd, ioas2, buffer, PAGE, &iova), ENOSPC, "an automatic IOAS_MAP with every IOVA reserved");
    /* The kernel's reserved_overflow case: the length is not validated. */
    CHECK(add_reserved(fd, ioas3, 6, 0xffffffffffff8001ull) == 0, "ADD_RESERVED with a length reaching near the top");
    CHECK_ERRNO(map_auto(fd, ioas3, buffer, 0x5000, &iova), ENOSPC, "an automatic IOAS_MAP finds no room past it");
    CHECK(destroy(fd, ioas) == 0 && destroy(fd, ioas2) == 0 && destroy(fd, ioas3) == 0, "DESTROY of the IOASes");
}

static void domain_map(int fd) {
    uint32_t ioas = ioas_alloc(fd), hwpt2 = 0;
    struct mock m = { 0 };
    CHECK(mock(fd, ioas, &m) == 0, "MOCK_DOMAIN");
    CHECK(map_fixed(fd, ioas, buffer, BUF_SIZE, START) == 0, "IOAS_MAP of the buffer at 0x1000000");
    CHECK(check_map(fd, m.hwpt, START, BUF_SIZE, buffer) == 0, "MD_CHECK_MAP of the whole buffer passes");
    CHECK(check_map(fd, m.hwpt, START + 3 * MOCK_PAGE, MOCK_PAGE, buffer + 3 * MOCK_PAGE) == 0, "MD_CHECK_MAP of one 2 KiB slot");
    CHECK(check_map(fd, m.hwpt, START, 0, buffer) == 0, "MD_CHECK_MAP of length 0");
    CHECK_ERRNO(check_map(fd, m.hwpt, START, PAGE, buffer + PAGE), EINVAL, "MD_CHECK_MAP with a uptr that is not what is mapped");
    CHECK_ERRNO(check_map(fd, m.hwpt, START + 1, MOCK_PAGE, buffer), EINVAL, "MD_CHECK_MAP with an IOVA not 2 KiB aligned");
    CHECK_ERRNO(check_map(fd, m.hwpt, START, 100, buffer), EINVAL, "MD_CHECK_MAP with a length not 2 KiB aligned");
    CHECK_ERRNO(check_map(fd, m.hwpt, START, MOCK_PAGE, buffer + 1), EINVAL, "MD_CHECK_MAP with a uptr not 2 KiB aligned");
    CHECK_ERRNO(check_map(fd, m.hwpt, START + BUF_SIZE, PAGE, buffer), EINVAL, "MD_CHECK_MAP of an IOVA not mapped");
    CHECK_ERRNO(check_map(fd, ioas, START, PAGE, buffer), ENOENT, "MD_CHECK_MAP on an IOAS id");
    CHECK_ERRNO(check_map(fd, m.idev, START, PAGE, buffer), ENOENT, "MD_CHECK_MAP on a device id");
    CHECK_ERRNO(check_map(fd, 999, START + 1, PAGE, buffer), EINVAL, "MD_CHECK_MAP checks its arguments before the lookup");

    CHECK(check_refs(fd, buffer, BUF_SIZE, 1) == 0, "MD_CHECK_REFS: each page pinned once while mapped into a domain");
    CHECK_ERRNO(check_refs(fd, buffer, BUF_SIZE, 2), EIO, "MD_CHECK_REFS with a wrong count");
    CHECK_ERRNO(check_refs(fd, buffer + MOCK_PAGE, PAGE, 1), EINVAL, "MD_CHECK_REFS with a uptr not 4 KiB aligned");
    CHECK_ERRNO(check_refs(fd, buffer, MOCK_PAGE, 1), EINVAL, "MD_CHECK_REFS with a length not 4 KiB aligned");
    CHECK(hwpt_paging(fd, 0, m.idev, ioas, &hwpt2) == 0 && check_map(fd, hwpt2, START, BUF_SIZE, buffer) == 0,
          "a second HWPT on the IOAS is filled with the mapping");
    CHECK(check_refs(fd, buffer, BUF_SIZE, 1) == 0, "and the pages are still pinned once (one page provider)");
    CHECK(destroy(fd, hwpt2) == 0, "DESTROY of the second HWPT");

    CHECK(unmap(fd, ioas, START, BUF_SIZE) == 0, "IOAS_UNMAP");
    CHECK(check_refs(fd, buffer, BUF_SIZE, 0) == 0, "MD_CHECK_REFS: 0 after the unmap");
    CHECK_ERRNO(check_refs(fd, buffer, BUF_SIZE, 1), EIO, "MD_CHECK_REFS of 1 after the unmap");
    CHECK_ERRNO(check_map(fd, m.hwpt, START, PAGE, buffer), EINVAL, "MD_CHECK_MAP after the unmap");
    CHECK(destroy(fd, m.stdev) == 0 && destroy(fd, ioas) == 0, "DESTROY");
}

static void accesses(int fd) {
    uint32_t ioas = ioas_alloc(fd), ioas2, item = 99, item1 = 99, item2 = 99;
    int afd = -1, afd_rw = -1, tmp_fd = -1;
    CHECK(map_fixed(fd, ioas, buffer, BUF_SIZE, START) == 0, "IOAS_MAP of the buffer (no domain)");
    CHECK(create_access(fd, ioas, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES, &afd) == 0 && afd > 2, "CREATE_ACCESS gives an fd (%d)", afd);
    CHECK(afd >= 0 && (fcntl(afd, F_GETFD) & FD_CLOEXEC), "the access fd is O_CLOEXEC");
    ioas2 = ioas_alloc(fd);
    CHECK(ioas2 == 3, "CREATE_ACCESS consumed an object ID (the next IOAS is %u)", ioas2);
    CHECK_ERRNO(create_access(fd, ioas, 2, &tmp_fd), EOPNOTSUPP, "CREATE_ACCESS with an unknown flag");
    CHECK_ERRNO(create_access(fd, 999, 0, &tmp_fd), ENOENT, "CREATE_ACCESS on a missing IOAS");

    CHECK(access_pages(fd, afd, 0, START, 2 * PAGE, buffer, &item) == 0 && item == 0, "ACCESS_PAGES: the first item is 0 (%u)", item);
    CHECK(access_pages(fd, afd, MOCK_FLAGS_ACCESS_WRITE, START, 2 * PAGE, buffer, &item1) == 0 && item1 == 1, "the second item is 1");
    CHECK(check_refs(fd, buffer, 2 * PAGE, 1) == 0 && check_refs(fd, buffer + 2 * PAGE, BUF_SIZE - 2 * PAGE, 0) == 0,
          "the pinned pages count once, the rest are not pinned");
    CHECK_ERRNO(access_pages(fd, afd, 0, START, 16 * 1024 * 1024 + PAGE, buffer, NULL), ENOMEM, "ACCESS_PAGES over 16 MiB");
    CHECK_ERRNO(access_pages(fd, afd, 2, START, PAGE, buffer, NULL), EOPNOTSUPP, "ACCESS_PAGES with an unknown flag");
    CHECK_ERRNO(access_pages(fd, fd, 0, START, PAGE, buffer, NULL), EBADFD, "ACCESS_PAGES on the iommufd's own fd");
    CHECK_ERRNO(access_pages(fd, 0, 0, START, PAGE, buffer, NULL), EBADFD, "ACCESS_PAGES on fd 0");
    CHECK_ERRNO(access_pages(fd, afd, 0, START, PAGE, buffer + PAGE, NULL), EBADE, "ACCESS_PAGES with a uptr that does not match");
    CHECK_ERRNO(access_pages(fd, afd, 0, 0x3000000, PAGE, buffer, NULL), ENOENT, "ACCESS_PAGES of an IOVA not mapped");
    CHECK(create_access(fd, ioas, 0, &afd_rw) == 0, "CREATE_ACCESS without NEEDS_PIN_PAGES");
    CHECK_ERRNO(access_pages(fd, afd_rw, 0, START, PAGE, buffer, NULL), EOPNOTSUPP, "ACCESS_PAGES on an access that cannot pin");
    CHECK(destroy_pages(fd, afd, 0) == 0, "DESTROY_ACCESS_PAGES of item 0");
    CHECK_ERRNO(destroy_pages(fd, afd, 0), ENOENT, "DESTROY_ACCESS_PAGES of item 0 again");
    CHECK_ERRNO(destroy_pages(fd, fd, 1), EBADFD, "DESTROY_ACCESS_PAGES on the iommufd's own fd");
    CHECK(destroy_pages(fd, afd, 1) == 0 && check_refs(fd, buffer, BUF_SIZE, 0) == 0, "the last item goes and the pages are let go");
    /* An unmap removes the items over the range (the access's unmap callback). */
    CHECK(access_pages(fd, afd, 0, START + PAGE, PAGE, buffer + PAGE, &item2) == 0 && item2 == 2, "a third item");
    CHECK(unmap(fd, ioas, START, BUF_SIZE) == 0, "IOAS_UNMAP under a pinned item");
    CHECK_ERRNO(destroy_pages(fd, afd, item2), ENOENT, "the unmap took the item away");
    CHECK(check_refs(fd, buffer, BUF_SIZE, 0) == 0, "nothing is pinned after the unmap");

    /* ACCESS_RW through the IOAS, to and from the user buffer mapped there. */
    CHECK(map_fixed(fd, ioas, buffer, BUF_SIZE, START) == 0, "IOAS_MAP again");
    for (int i = 0; i < BUF_SIZE; i++) buffer[i] = (unsigned char)(i * 7 + 1);
    unsigned char tmp[200];
    memset(tmp, 0, sizeof(tmp));
    CHECK(access_rw(fd, afd, 0, START + 4000, tmp, 150) == 0 && memcmp(tmp, buffer + 4000, 150) == 0, "ACCESS_RW read across a page");
    memset(tmp, 0, sizeof(tmp));
    CHECK(access_rw(fd, afd_rw, MOCK_ACCESS_RW_SLOW_PATH, START + 9000, tmp, 200) == 0 && memcmp(tmp, buffer + 9000, 200) == 0,
          "ACCESS_RW read, slow path");
    memset(tmp, 0xa5, sizeof(tmp));
    CHECK(access_rw(fd, afd, MOCK_ACCESS_RW_WRITE, START + 8150, tmp, 100) == 0 && memcmp(buffer + 8150, tmp, 100) == 0 &&
          buffer[8149] == (unsigned char)(8149 * 7 + 1), "ACCESS_RW write lands in the user buffer, and only there");
    CHECK_ERRNO(access_rw(fd, afd, 0, START, tmp, 16 * 1024 * 1024 + 1), ENOMEM, "ACCESS_RW over 16 MiB");
    CHECK_ERRNO(access_rw(fd, afd, 2, START, tmp, 8), EOPNOTSUPP, "ACCESS_RW with an unknown flag");
    CHECK_ERRNO(access_rw(fd, fd, 0, START, tmp, 8), EBADFD, "ACCESS_RW on the iommufd's own fd");
    CHECK_ERRNO(access_rw(fd, afd, 0, 0x3000000, tmp, 8), ENOENT, "ACCESS_RW of an IOVA not mapped");

    /* ACCESS_REPLACE_IOAS moves the access to another IOAS. */
    CHECK(map_fixed(fd, ioas2, buffer, BUF_SIZE, 0x2000000) == 0, "IOAS_MAP into the second IOAS");
    CHECK(op_u32(fd, IOMMU_TEST_OP_ACCESS_REPLACE_IOAS, (uint32_t)afd, ioas2) == 0, "ACCESS_REPLACE_IOAS");
    memset(tmp, 0, sizeof(tmp));
    CHECK(access_rw(fd, afd, 0, 0x2000000 + 10, tmp, 50) == 0 && memcmp(tmp, buffer + 10, 50) == 0, "ACCESS_RW now reads the second IOAS");
    CHECK_ERRNO(access_rw(fd, afd, 0, START, tmp, 8), ENOENT, "and no longer the first");
    CHECK_ERRNO(op_u32(fd, IOMMU_TEST_OP_ACCESS_REPLACE_IOAS, (uint32_t)afd, 999), ENOENT, "ACCESS_REPLACE_IOAS to a missing IOAS");
    CHECK_ERRNO(op_u32(fd, IOMMU_TEST_OP_ACCESS_REPLACE_IOAS, (uint32_t)fd, ioas), EBADFD, "ACCESS_REPLACE_IOAS on the iommufd's own fd");
    CHECK_ERRNO(destroy(fd, ioas2), EBUSY, "DESTROY of an IOAS with an access");
    CHECK(close(afd) == 0 && close(afd_rw) == 0, "close of the access fds");
    CHECK(destroy(fd, ioas2) == 0 && destroy(fd, ioas) == 0, "then the IOASes can go");
}

static void memory_limit(int fd) {
    uint32_t ioas = ioas_alloc(fd);
    struct mock m = { 0 };
    uint64_t iova = 0;
    int afd = -1;
    CHECK_ERRNO(op_u32(fd, IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT, 0, 11), EINVAL, "SET_TEMP_MEMORY_LIMIT below 12");
    CHECK(op_u32(fd, IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT, 999, 12) == 0, "SET_TEMP_MEMORY_LIMIT 12 (its id is ignored)");
    CHECK(op_u32(fd, IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT, 0, 16) == 0, "SET_TEMP_MEMORY_LIMIT 16");
    CHECK(mock(fd, ioas, &m) == 0, "MOCK_DOMAIN under the small limit");
    CHECK(map_auto(fd, ioas, buffer, BUF_SIZE, &iova) == 0 && check_map(fd, m.hwpt, iova, BUF_SIZE, buffer) == 0, "IOAS_MAP still maps every page");
    CHECK(check_refs(fd, buffer, BUF_SIZE, 1) == 0, "and pins each once");
    unsigned char tmp[64];
    CHECK(create_access(fd, ioas, 0, &afd) == 0 && access_rw(fd, afd, MOCK_ACCESS_RW_SLOW_PATH, iova + 4090, tmp, 64) == 0 &&
          memcmp(tmp, buffer + 4090, 64) == 0, "ACCESS_RW under the small limit");
    CHECK(close(afd) == 0 && unmap(fd, ioas, iova, BUF_SIZE) == 0, "close and unmap");
    CHECK(op_u32(fd, IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT, 0, 65536) == 0, "back to the default limit");
    CHECK(destroy(fd, m.stdev) == 0 && destroy(fd, ioas) == 0, "DESTROY");
}

static void replace_device(int fd) {
    uint32_t ioas = ioas_alloc(fd), ioas2 = ioas_alloc(fd), out = 0, manual = 0, got = 0;
    struct mock m = { 0 };
    CHECK(mock(fd, ioas, &m) == 0 && m.stdev == 3 && m.hwpt == 5, "MOCK_DOMAIN (stdev %u, hwpt %u)", m.stdev, m.hwpt);
    CHECK(map_fixed(fd, ioas2, buffer, BUF_SIZE, START) == 0, "IOAS_MAP into the second IOAS");
    CHECK(replace(fd, m.stdev, ioas2, &out) == 0 && out == 6, "MOCK_DOMAIN_REPLACE to another IOAS returns its new auto HWPT (%u)", out);
    CHECK(check_map(fd, out, START, BUF_SIZE, buffer) == 0, "the new auto HWPT maps the second IOAS");
    CHECK_ERRNO(replace(fd, m.stdev, m.hwpt, NULL), ENOENT, "the old auto HWPT went with its last device");
    CHECK(hwpt_paging(fd, 0, m.idev, ioas2, &manual) == 0 && manual == 5, "HWPT_ALLOC reuses the freed ID (%u)", manual);
    CHECK(replace(fd, m.stdev, manual, &got) == 0 && got == manual, "MOCK_DOMAIN_REPLACE onto a HWPT returns that HWPT");
    CHECK(replace(fd, m.stdev, manual, &got) == 0 && got == manual, "MOCK_DOMAIN_REPLACE onto the HWPT it is on");
    CHECK_ERRNO(destroy(fd, manual), EBUSY, "DESTROY of the attached HWPT");
    CHECK_ERRNO(replace(fd, 999, ioas, NULL), ENOENT, "MOCK_DOMAIN_REPLACE of a missing stdev");
    CHECK_ERRNO(replace(fd, m.idev, ioas, NULL), ENOENT, "MOCK_DOMAIN_REPLACE of an idev (not a stdev)");
    CHECK_ERRNO(replace(fd, m.stdev, 999, NULL), ENOENT, "MOCK_DOMAIN_REPLACE to a missing pt_id");
    CHECK_ERRNO(replace(fd, m.stdev, m.idev, NULL), EINVAL, "MOCK_DOMAIN_REPLACE to a device's id");
    CHECK(replace(fd, m.stdev, ioas, &got) == 0 && got != manual && got != 0, "back to the first IOAS (hwpt %u)", got);
    CHECK(destroy(fd, manual) == 0, "the HWPT it left can go");
    CHECK(destroy(fd, m.stdev) == 0 && destroy(fd, ioas) == 0 && destroy(fd, ioas2) == 0, "DESTROY");
}

static void dirty(int fd) {
    uint32_t ioas = ioas_alloc(fd), hd = 0;
    struct mock m = { 0 }, nd = { 0 }, x = { 0 };
    struct iommu_hw_info h;
    uint64_t nr = 0, mark[2] = { (1ull << 0) | (1ull << 3) | (1ull << 5) | (1ull << 31), 0 }, bm[2];
    CHECK(mock(fd, ioas, &m) == 0 && map_fixed(fd, ioas, buffer, BUF_SIZE, START) == 0, "MOCK_DOMAIN and IOAS_MAP");
    CHECK(hwpt_paging(fd, HWPT_ALLOC_DIRTY_TRACKING, m.idev, ioas, &hd) == 0, "HWPT_ALLOC with DIRTY_TRACKING for a plain mock device");
    CHECK(mock_flags(fd, ioas, MOCK_FLAGS_DEVICE_NO_DIRTY, &nd) == 0 && nd.hwpt == m.hwpt, "a NO_DIRTY device shares the plain auto HWPT");
    CHECK_ERRNO(hwpt_paging(fd, HWPT_ALLOC_DIRTY_TRACKING, nd.idev, ioas, NULL), EOPNOTSUPP, "HWPT_ALLOC DIRTY_TRACKING for a NO_DIRTY device");
    CHECK_ERRNO(mock_flags(fd, hd, MOCK_FLAGS_DEVICE_NO_DIRTY, NULL), EINVAL, "a NO_DIRTY device attaching to a dirty HWPT");
    CHECK_ERRNO(replace(fd, nd.stdev, hd, NULL), EINVAL, "a NO_DIRTY device replaced onto a dirty HWPT");
    CHECK(mock(fd, hd, &x) == 0 && destroy(fd, x.stdev) == 0, "a plain device attaches to the dirty HWPT");
    CHECK(get_hw_info(fd, m.idev, 0, 0, NULL, 0, &h) == 0 && h.out_capabilities == HW_CAP_DIRTY_TRACKING, "GET_HW_INFO: a plain device can track");
    CHECK(get_hw_info(fd, nd.idev, 0, 0, NULL, 0, &h) == 0 && h.out_capabilities == 0, "GET_HW_INFO: a NO_DIRTY device cannot");

    /* Tracking off. */
    CHECK_ERRNO(dirty_mark(fd, hd, START, BUF_SIZE, MOCK_PAGE, mark, NULL), EINVAL, "IOMMU_TEST_OP_DIRTY with tracking off");
    memset(bm, 0, sizeof(bm));
    /* 6.17's iommu_read_and_clear_dirty ignores what the walk returns: the mock's EINVAL does not reach the caller. */
    CHECK(dirty_read(fd, hd, 0, START, BUF_SIZE, MOCK_PAGE, bm) == 0 && bm[0] == 0 && bm[1] == 0,
          "GET_DIRTY_BITMAP with tracking off reports nothing dirty");
    CHECK_ERRNO(set_tracking(fd, m.hwpt, DIRTY_TRACKING_ENABLE), EOPNOTSUPP, "SET_DIRTY_TRACKING on a HWPT without dirty tracking");
    CHECK_ERRNO(set_tracking(fd, ioas, DIRTY_TRACKING_ENABLE), ENOENT, "SET_DIRTY_TRACKING on an IOAS id");
    CHECK_ERRNO(set_tracking(fd, hd, 2), EOPNOTSUPP, "SET_DIRTY_TRACKING with an unknown flag");
    CHECK(set_tracking(fd, hd, DIRTY_TRACKING_ENABLE) == 0 && set_tracking(fd, hd, DIRTY_TRACKING_ENABLE) == 0, "SET_DIRTY_TRACKING on (twice)");

    /* Pages marked by the mock are reported exactly, once unless NO_CLEAR. */
    CHECK(dirty_mark(fd, hd, START, BUF_SIZE, MOCK_PAGE, mark, &nr) == 0 && nr == 4, "IOMMU_TEST_OP_DIRTY marks 4 slots (%llu)", (unsigned long long)nr);
    memset(bm, 0, sizeof(bm));
    CHECK(dirty_read(fd, hd, GET_DIRTY_BITMAP_NO_CLEAR, START, BUF_SIZE, MOCK_PAGE, bm) == 0 && bm[0] == mark[0] && bm[1] == 0,
          "GET_DIRTY_BITMAP NO_CLEAR reports exactly them (0x%llx)", (unsigned long long)bm[0]);
    memset(bm, 0, sizeof(bm));
    CHECK(dirty_read(fd, hd, 0, START, BUF_SIZE, MOCK_PAGE, bm) == 0 && bm[0] == mark[0], "they are still there after NO_CLEAR");
    memset(bm, 0, sizeof(bm));
    CHECK(dirty_read(fd, hd, 0, START, BUF_SIZE, MOCK_PAGE, bm) == 0 && bm[0] == 0, "and gone after a read that clears");
    CHECK_ERRNO(dirty_read(fd, hd, 0, START, BUF_SIZE, 0, bm), EINVAL, "GET_DIRTY_BITMAP with page_size 0");
    CHECK_ERRNO(dirty_read(fd, hd, 0, START + MOCK_PAGE, BUF_SIZE, PAGE, bm), EINVAL, "GET_DIRTY_BITMAP with an IOVA not page_size aligned");
    CHECK_ERRNO(dirty_read(fd, hd, 2, START, BUF_SIZE, MOCK_PAGE, bm), EOPNOTSUPP, "GET_DIRTY_BITMAP with an unknown flag");
    CHECK_ERRNO(dirty_read(fd, m.hwpt, 0, START, BUF_SIZE, MOCK_PAGE, bm), EOPNOTSUPP, "GET_DIRTY_BITMAP on a HWPT without dirty tracking");
    CHECK_ERRNO(dirty_read(fd, ioas, 0, START, BUF_SIZE, MOCK_PAGE, bm), ENOENT, "GET_DIRTY_BITMAP on an IOAS id");
    CHECK_ERRNO(dirty_mark(fd, hd, START, BUF_SIZE, 0, mark, NULL), EINVAL, "IOMMU_TEST_OP_DIRTY with page_size 0");
    CHECK_ERRNO(dirty_mark(fd, hd, START, 0, MOCK_PAGE, mark, NULL), EINVAL, "IOMMU_TEST_OP_DIRTY with length 0");
    CHECK_ERRNO(dirty_mark(fd, hd, START + 1024, BUF_SIZE, MOCK_PAGE, mark, NULL), EINVAL, "IOMMU_TEST_OP_DIRTY with a misaligned IOVA");
    CHECK_ERRNO(dirty_mark(fd, hd, START, BUF_SIZE, MOCK_PAGE, NULL, NULL), EINVAL, "IOMMU_TEST_OP_DIRTY with no bitmap");
    CHECK_ERRNO(dirty_mark(fd, ioas, START, BUF_SIZE, MOCK_PAGE, mark, NULL), ENOENT, "IOMMU_TEST_OP_DIRTY on an IOAS id");
    CHECK_ERRNO(dirty_mark(fd, m.hwpt, START, BUF_SIZE, MOCK_PAGE, mark, NULL), EINVAL, "IOMMU_TEST_OP_DIRTY on a HWPT not tracking");
    /* Turning tracking on again starts from a clean snapshot. */
    CHECK(dirty_mark(fd, hd, START, BUF_SIZE, MOCK_PAGE, mark, &nr) == 0 && nr == 4, "mark again");
    CHECK(set_tracking(fd, hd, 0) == 0 && set_tracking(fd, hd, DIRTY_TRACKING_ENABLE) == 0, "tracking off and on");
    memset(bm, 0, sizeof(bm));
    CHECK(dirty_read(fd, hd, 0, START, BUF_SIZE, MOCK_PAGE, bm) == 0 && bm[0] == 0, "enabling cleared the old dirty bits");
    CHECK(set_tracking(fd, hd, 0) == 0, "tracking off");
    CHECK(destroy(fd, nd.stdev) == 0 && destroy(fd, hd) == 0 && destroy(fd, m.stdev) == 0 && destroy(fd, ioas) == 0, "DESTROY");
}

static void hw_info(int fd) {
    uint32_t ioas = ioas_alloc(fd);
    struct mock m = { 0 }, p = { 0 };
    struct iommu_hw_info h;
    struct iommu_test_hw_info data;
    unsigned char big[16];
    CHECK(mock(fd, ioas, &m) == 0 && mock_flags(fd, ioas, MOCK_FLAGS_DEVICE_PASID, &p) == 0, "a plain and a PASID mock device");
    memset(&data, 0xff, sizeof(data));
    CHECK(get_hw_info(fd, m.idev, 0, 0, &data, sizeof(data), &h) == 0 && h.out_data_type == IOMMU_HW_INFO_TYPE_SELFTEST && h.data_len == 8 &&
          data.test_reg == IOMMU_HW_INFO_SELFTEST_REGVAL && data.flags == 0, "GET_HW_INFO: type 0xfeedbeef, 8 bytes, test_reg 0xdeadbeef");
    CHECK(h.out_max_pasid_log2 == 0 && h.out_capabilities == HW_CAP_DIRTY_TRACKING, "a plain device: max_pasid_log2 0, capabilities DIRTY");
    memset(big, 0xff, sizeof(big));
    CHECK(get_hw_info(fd, m.idev, 0, 0, big, sizeof(big), &h) == 0 && h.data_len == 8 && big[8] == 0 && big[15] == 0,
          "a larger buffer: data_len 8 and the rest zero-filled");
    uint32_t small = 0xffffffff;
    CHECK(get_hw_info(fd, m.idev, 0, 0, &small, sizeof(small), &h) == 0 && h.data_len == 8 && small == 0, "a smaller buffer gets what fits");
    CHECK(get_hw_info(fd, m.idev, 0, 0, NULL, 0, &h) == 0 && h.data_len == 8, "no buffer: data_len 8");
    CHECK(get_hw_info(fd, m.idev, HW_INFO_FLAG_INPUT_TYPE, IOMMU_HW_INFO_TYPE_SELFTEST, &data, sizeof(data), &h) == 0 &&
          h.out_data_type == IOMMU_HW_INFO_TYPE_SELFTEST, "asking for type SELFTEST");
    CHECK(get_hw_info(fd, m.idev, HW_INFO_FLAG_INPUT_TYPE, 0, &data, sizeof(data), &h) == 0 && h.out_data_type == IOMMU_HW_INFO_TYPE_SELFTEST,
          "asking for type 0 (DEFAULT)");
    CHECK(get_hw_info(fd, m.idev, 0, 5, &data, sizeof(data), &h) == 0, "in_data_type is ignored without INPUT_TYPE");
    CHECK_ERRNO(get_hw_info(fd, m.idev, HW_INFO_FLAG_INPUT_TYPE, IOMMU_HW_INFO_TYPE_SELFTEST + 1, &data, sizeof(data), &h), EOPNOTSUPP,
                "asking for another type");
    CHECK_ERRNO(get_hw_info(fd, m.idev, 2, 0, &data, sizeof(data), &h), EOPNOTSUPP, "GET_HW_INFO with an unknown flag");
    CHECK_ERRNO(get_hw_info(fd, 999, 0, 0, &data, sizeof(data), &h), ENOENT, "GET_HW_INFO of a missing device");
    CHECK_ERRNO(get_hw_info(fd, m.stdev, 0, 0, &data, sizeof(data), &h), ENOENT, "GET_HW_INFO of a stdev id");
    CHECK(get_hw_info(fd, p.idev, 0, 0, NULL, 0, &h) == 0 && h.out_max_pasid_log2 == MOCK_PASID_WIDTH && h.out_capabilities == HW_CAP_DIRTY_TRACKING,
          "a PASID device: max_pasid_log2 20 (%u), no PCI PASID capabilities", h.out_max_pasid_log2);
    CHECK(destroy(fd, m.stdev) == 0 && destroy(fd, p.stdev) == 0 && destroy(fd, ioas) == 0, "DESTROY");
}

int main(void) {
    static const struct area areas[] = {
        { "framing", framing }, { "mock_domain", mock_domain }, { "reserved", reserved }, { "domain_map", domain_map },
        { "accesses", accesses }, { "memory_limit", memory_limit }, { "replace_device", replace_device }, { "dirty", dirty },
        { "hw_info", hw_info },
    };
    return run_areas(areas, sizeof(areas) / sizeof(areas[0]));
}
