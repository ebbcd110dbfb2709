/* The uAPI layouts the C test programs use, written out from Linux v6.17
 * include/uapi/linux/iommufd.h and include/uapi/linux/vfio.h (so no kernel headers are
 * needed), and the emulator's own commands (docs/architecture.md, "The C ABI"). */
#ifndef SWIFTIOMMU_TEST_UAPI_H
#define SWIFTIOMMU_TEST_UAPI_H
#include <stdint.h>
#include <sys/ioctl.h>

#define IOMMUFD_TYPE ';'
#define IOMMU_DESTROY _IO(IOMMUFD_TYPE, 0x80)
#define IOMMU_IOAS_ALLOC _IO(IOMMUFD_TYPE, 0x81)
#define IOMMU_IOAS_ALLOW_IOVAS _IO(IOMMUFD_TYPE, 0x82)
#define IOMMU_IOAS_COPY _IO(IOMMUFD_TYPE, 0x83)
#define IOMMU_IOAS_IOVA_RANGES _IO(IOMMUFD_TYPE, 0x84)
#define IOMMU_IOAS_MAP _IO(IOMMUFD_TYPE, 0x85)
#define IOMMU_IOAS_UNMAP _IO(IOMMUFD_TYPE, 0x86)
#define IOMMU_OPTION _IO(IOMMUFD_TYPE, 0x87)
#define IOMMU_HWPT_ALLOC _IO(IOMMUFD_TYPE, 0x89)
#define IOMMU_GET_HW_INFO _IO(IOMMUFD_TYPE, 0x8a)
#define IOMMU_HWPT_SET_DIRTY_TRACKING _IO(IOMMUFD_TYPE, 0x8b)
#define IOMMU_HWPT_GET_DIRTY_BITMAP _IO(IOMMUFD_TYPE, 0x8c)
#define IOMMU_HWPT_INVALIDATE _IO(IOMMUFD_TYPE, 0x8d)
#define IOMMU_FAULT_QUEUE_ALLOC _IO(IOMMUFD_TYPE, 0x8e)
#define IOMMU_IOAS_MAP_FILE _IO(IOMMUFD_TYPE, 0x8f)
#define IOMMU_VIOMMU_ALLOC _IO(IOMMUFD_TYPE, 0x90)
#define IOMMU_VDEVICE_ALLOC _IO(IOMMUFD_TYPE, 0x91)
#define IOMMU_VEVENTQ_ALLOC _IO(IOMMUFD_TYPE, 0x93)
#define IOMMU_HW_QUEUE_ALLOC _IO(IOMMUFD_TYPE, 0x94)
#define VFIO_GET_API_VERSION _IO(IOMMUFD_TYPE, 100)
#define VFIO_CHECK_EXTENSION _IO(IOMMUFD_TYPE, 101)
#define VFIO_DEVICE_GET_INFO _IO(IOMMUFD_TYPE, 100 + 7)
#define VFIO_DEVICE_BIND_IOMMUFD _IO(IOMMUFD_TYPE, 100 + 18)
#define VFIO_DEVICE_ATTACH_IOMMUFD_PT _IO(IOMMUFD_TYPE, 100 + 19)
#define VFIO_DEVICE_DETACH_IOMMUFD_PT _IO(IOMMUFD_TYPE, 100 + 20)

struct iommu_destroy { uint32_t size, id; };
struct iommu_ioas_alloc { uint32_t size, flags, out_ioas_id; };
struct iommu_iova_range { uint64_t start, last; };
struct iommu_ioas_iova_ranges { uint32_t size, ioas_id, num_iovas, __reserved; uint64_t allowed_iovas, out_iova_alignment; };
struct iommu_ioas_allow_iovas { uint32_t size, ioas_id, num_iovas, __reserved; uint64_t allowed_iovas; };
struct iommu_ioas_map { uint32_t size, flags, ioas_id, __reserved; uint64_t user_va, length, iova; };
struct iommu_ioas_map_file { uint32_t size, flags, ioas_id; int32_t fd; uint64_t start, length, iova; };
struct iommu_ioas_copy { uint32_t size, flags, dst_ioas_id, src_ioas_id; uint64_t length, dst_iova, src_iova; };
struct iommu_ioas_unmap { uint32_t size, ioas_id; uint64_t iova, length; };
struct iommu_option { uint32_t size, option_id; uint16_t op, __reserved; uint32_t object_id; uint64_t val64; };
struct iommu_hwpt_alloc { uint32_t size, flags, dev_id, pt_id, out_hwpt_id, __reserved, data_type, data_len; uint64_t data_uptr;
                          uint32_t fault_id, __reserved2; };
struct iommu_fault_alloc { uint32_t size, flags, out_fault_id, out_fault_fd; };
struct iommu_hwpt_pgfault { uint32_t flags, dev_id, pasid, grpid, perm, __reserved; uint64_t addr; uint32_t length, cookie; };
struct iommu_hwpt_page_response { uint32_t cookie, code; };
enum { MAP_FIXED_IOVA = 1, MAP_WRITEABLE = 2, MAP_READABLE = 4 };
enum { HWPT_FAULT_ID_VALID = 4 };
enum { HWPT_ALLOC_NEST_PARENT = 1, HWPT_ALLOC_DIRTY_TRACKING = 2, HWPT_ALLOC_PASID = 8 };
struct iommu_hw_info { uint32_t size, flags, dev_id, data_len; uint64_t data_uptr; union { uint32_t in_data_type, out_data_type; };
                       uint8_t out_max_pasid_log2, __reserved[3]; uint64_t out_capabilities; };
enum { HW_INFO_FLAG_INPUT_TYPE = 1, HW_CAP_DIRTY_TRACKING = 1 };
struct iommu_hwpt_set_dirty_tracking { uint32_t size, flags, hwpt_id, __reserved; };
struct iommu_hwpt_get_dirty_bitmap { uint32_t size, hwpt_id, flags, __reserved; uint64_t iova, length, page_size, data; };
enum { DIRTY_TRACKING_ENABLE = 1, GET_DIRTY_BITMAP_NO_CLEAR = 1 };
struct iommu_hwpt_invalidate { uint32_t size, hwpt_id; uint64_t data_uptr; uint32_t data_type, entry_len, entry_num, __reserved; };
enum { PGFAULT_FLAGS_PASID_VALID = 1, PGFAULT_FLAGS_LAST_PAGE = 2 };
struct iommu_viommu_alloc { uint32_t size, flags, type, dev_id, hwpt_id, out_viommu_id, data_len, __reserved; uint64_t data_uptr; };
struct iommu_vdevice_alloc { uint32_t size, viommu_id, dev_id, out_vdevice_id; uint64_t virt_id; };
struct iommu_veventq_alloc { uint32_t size, flags, viommu_id, type, veventq_depth, out_veventq_id, out_veventq_fd, __reserved; };
struct iommufd_vevent_header { uint32_t flags, sequence; };
enum { VEVENTQ_FLAG_LOST_EVENTS = 1 };
struct iommu_hw_queue_alloc { uint32_t size, flags, viommu_id, type, index, out_hw_queue_id; uint64_t nesting_parent_iova, length; };

struct vfio_device_info { uint32_t argsz, flags, num_regions, num_irqs, cap_offset, pad; };
struct vfio_device_bind_iommufd { uint32_t argsz, flags; int32_t iommufd; uint32_t out_devid; uint64_t token_uuid_ptr; };
struct vfio_device_attach_iommufd_pt { uint32_t argsz, flags, pt_id, pasid; };
struct vfio_device_detach_iommufd_pt { uint32_t argsz, flags, pasid; };

/* The selftest driver interface (CONFIG_IOMMUFD_TEST): layouts and values written out from
 * Linux v6.17 drivers/iommu/iommufd/iommufd_test.h. */
#define IOMMU_TEST_CMD _IO(IOMMUFD_TYPE, 0x80 + 32)
enum {
    IOMMU_TEST_OP_ADD_RESERVED = 1, IOMMU_TEST_OP_MOCK_DOMAIN, IOMMU_TEST_OP_MD_CHECK_MAP, IOMMU_TEST_OP_MD_CHECK_REFS,
    IOMMU_TEST_OP_CREATE_ACCESS, IOMMU_TEST_OP_DESTROY_ACCESS_PAGES, IOMMU_TEST_OP_ACCESS_PAGES, IOMMU_TEST_OP_ACCESS_RW,
    IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT, IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, IOMMU_TEST_OP_ACCESS_REPLACE_IOAS,
    IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, IOMMU_TEST_OP_DIRTY, IOMMU_TEST_OP_MD_CHECK_IOTLB, IOMMU_TEST_OP_TRIGGER_IOPF,
    IOMMU_TEST_OP_DEV_CHECK_CACHE, IOMMU_TEST_OP_TRIGGER_VEVENT, IOMMU_TEST_OP_PASID_ATTACH, IOMMU_TEST_OP_PASID_REPLACE,
    IOMMU_TEST_OP_PASID_DETACH, IOMMU_TEST_OP_PASID_CHECK_HWPT,
};
enum { MOCK_APERTURE_START = 1u << 24, MOCK_APERTURE_LAST = (1u << 31) - 1 };
enum { MOCK_FLAGS_ACCESS_WRITE = 1 << 0, MOCK_FLAGS_ACCESS_SYZ = 1 << 16 };
enum { MOCK_ACCESS_RW_WRITE = 1 << 0, MOCK_ACCESS_RW_SLOW_PATH = 1 << 2 };
enum { MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES = 1 << 0 };
enum { MOCK_FLAGS_DEVICE_NO_DIRTY = 1 << 0, MOCK_FLAGS_DEVICE_HUGE_IOVA = 1 << 1, MOCK_FLAGS_DEVICE_PASID = 1 << 2 };
enum { MOCK_NESTED_DOMAIN_IOTLB_ID_MAX = 3, MOCK_NESTED_DOMAIN_IOTLB_NUM = 4, MOCK_DEV_CACHE_ID_MAX = 3, MOCK_DEV_CACHE_NUM = 4 };
enum { IOMMU_TEST_PASID_RESERVED = 1024, MOCK_PASID_WIDTH = 20 };
struct iommu_test_cmd {
    uint32_t size, op, id, __reserved;
    union {
        struct { uint64_t start, length; } add_reserved;
        struct { uint32_t out_stdev_id, out_hwpt_id, out_idev_id; } mock_domain;
        struct { uint32_t out_stdev_id, out_hwpt_id, out_idev_id, dev_flags; } mock_domain_flags;
        struct { uint32_t pt_id; } mock_domain_replace;
        struct { uint64_t iova, length, uptr; } check_map;
        struct { uint64_t length, uptr; uint32_t refs; } check_refs;
        struct { uint32_t out_access_fd, flags; } create_access;
        struct { uint32_t access_pages_id; } destroy_access_pages;
        struct { uint32_t flags, out_access_pages_id; uint64_t iova, length, uptr; } access_pages;
        struct { uint64_t iova, length, uptr; uint32_t flags; } access_rw;
        struct { uint32_t limit; } memory_limit;
        struct { uint32_t ioas_id; } access_replace_ioas;
        struct { uint32_t flags; uint64_t iova, length, page_size, uptr, out_nr_dirty; } dirty;
        struct { uint32_t id, iotlb; } check_iotlb;
        struct { uint32_t dev_id, pasid, grpid, perm; uint64_t addr; } trigger_iopf;
        struct { uint32_t id, cache; } check_dev_cache;
        struct { uint32_t dev_id; } trigger_vevent;
        struct { uint32_t pasid, pt_id; } pasid_attach, pasid_replace;
        struct { uint32_t pasid; } pasid_detach;
        struct { uint32_t pasid, hwpt_id; } pasid_check;
    };
    uint32_t last;
};
/* Driver data: GET_HW_INFO, nested HWPT, invalidation entries, vIOMMU, vEVENTQ payload. */
#define IOMMU_HW_INFO_TYPE_SELFTEST 0xfeedbeef
#define IOMMU_HW_INFO_SELFTEST_REGVAL 0xdeadbeef
struct iommu_test_hw_info { uint32_t flags, test_reg; };
#define IOMMU_HWPT_DATA_SELFTEST 0xdead
#define IOMMU_TEST_IOTLB_DEFAULT 0xbadbeef
#define IOMMU_TEST_DEV_CACHE_DEFAULT 0xbaddad
struct iommu_hwpt_selftest { uint32_t iotlb; };
#define IOMMU_HWPT_INVALIDATE_DATA_SELFTEST 0xdeadbeef
#define IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID 0xdadbeef
#define IOMMU_TEST_INVALIDATE_FLAG_ALL 1
struct iommu_hwpt_invalidate_selftest { uint32_t flags, iotlb_id; };
#define IOMMU_VIOMMU_TYPE_SELFTEST 0xdeadbeef
struct iommu_viommu_selftest { uint32_t in_data, out_data; uint64_t out_mmap_offset, out_mmap_length; };
#define IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST 0xdeadbeef
#define IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID 0xdadbeef
struct iommu_viommu_invalidate_selftest { uint32_t flags, vdev_id, cache_id; };
#define IOMMU_VEVENTQ_TYPE_SELFTEST 0xbeefbeef
struct iommu_viommu_event_selftest { uint32_t virt_id; };
#define IOMMU_HW_QUEUE_TYPE_SELFTEST 0xdeadbeef
#define IOMMU_TEST_HW_QUEUE_MAX 2

/* The emulator's commands. */
#define SWIFTIOMMU_DEVICE_DMA _IO('S', 0x01)
#define SWIFTIOMMU_DEVICE_DMA_WAIT _IO('S', 0x02)
#define SWIFTIOMMU_STATS _IO('S', 0x10)
struct swiftiommu_device_dma { uint32_t argsz, flags, pasid, out_status; uint64_t iova, length, data; uint32_t out_fault_reason, out_handle; };
struct swiftiommu_device_dma_wait { uint32_t argsz, handle, out_status, out_transferred; };
struct swiftiommu_stats { uint32_t argsz, pad; uint64_t frames, pinned, domains, dids; };
enum { DMA_WRITE = 1, DMA_PASID = 2, DMA_ATS = 4, DMA_ASYNC = 8 };

#endif
