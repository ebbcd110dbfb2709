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
#define IOMMU_FAULT_QUEUE_ALLOC _IO(IOMMUFD_TYPE, 0x8e)
#define IOMMU_IOAS_MAP_FILE _IO(IOMMUFD_TYPE, 0x8f)
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

struct vfio_device_info { uint32_t argsz, flags, num_regions, num_irqs, cap_offset, pad; };
struct vfio_device_bind_iommufd { uint32_t argsz, flags; int32_t iommufd; uint32_t out_devid; uint64_t token_uuid_ptr; };
struct vfio_device_attach_iommufd_pt { uint32_t argsz, flags, pt_id, pasid; };
struct vfio_device_detach_iommufd_pt { uint32_t argsz, flags, pasid; };

/* The emulator's commands. */
#define SWIFTIOMMU_DEVICE_DMA _IO('S', 0x01)
#define SWIFTIOMMU_DEVICE_DMA_WAIT _IO('S', 0x02)
#define SWIFTIOMMU_STATS _IO('S', 0x10)
struct swiftiommu_device_dma { uint32_t argsz, flags, pasid, out_status; uint64_t iova, length, data; uint32_t out_fault_reason, out_handle; };
struct swiftiommu_device_dma_wait { uint32_t argsz, handle, out_status, out_transferred; };
struct swiftiommu_stats { uint32_t argsz, pad; uint64_t frames, pinned, domains, dids; };
enum { DMA_WRITE = 1, DMA_PASID = 2, DMA_ATS = 4, DMA_ASYNC = 8 };

#endif
