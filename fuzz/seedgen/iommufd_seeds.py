#!/usr/bin/env python3
"""Writes the iommufd-ioctl seed inputs (fuzz/corpus/iommufd-ioctl): each is a byte program in
the encoding Sources/Fuzzing/Targets/IOMMUFDIoctlTarget.swift decodes. Run from the repo root."""
import os, struct

CMDS = ["destroy", "ioasAlloc", "allowIOVAs", "copy", "iovaRanges", "map", "unmap", "option", "vfioIOAS",
        "hwptAlloc", "getHWInfo", "setDirty", "getDirty", "invalidate", "faultAlloc", "mapFile", "viommuAlloc",
        "vdeviceAlloc", "changeProcess", "veventqAlloc", "hwQueueAlloc"]

def ID(v): return [1, v]
def FLAGS(v): return [0] if v == 0 else [2, v]
def COUNT(v): return [2, v] if v < 8 else [1, [8, 16, 24, 32, 40].index(v)]
def TYPE(v): return [1, v]
def PTR(off): return [0] + list(struct.pack("<H", off // 8))       # into the writable region
def LEN(pages): return [0, pages - 1]
def IOVA(page): return [0, page]                                     # 0x100000 + page * 4096
def FD(v): return [1, v - 3]
def PAGESIZE(): return [1]
def SMALL64(v): return [1, v]

def call(cmd, *fields, user=False):
    out = [0, CMDS.index(cmd)]
    for f in fields: out += f
    out += [4]                       # size: the struct's
    out += [0] if user else [1, 1]   # user-pointer entry, or the byte entry untruncated
    if user: out += [1, 0, 0, 1]     # at the region's start (bool, below(8192) as u16), pointer kept
    return out

def write_words(off, words):
    out = [11] + list(struct.pack("<H", off // 8)) + [0, len(words)]
    for w in words: out += [0] + list(struct.pack("<Q", w))
    return out

def dev(op, nic=True, pt=0, pasid=None):
    out = [14, 1 if nic else 0, 1, pt]
    out += [1] if pasid is None else [0, 1, pasid]
    return out + [op]

def dma(nic=True, page=0, write=True, length=64):
    out = [12, 1 if nic else 0, 0, page, 0, 0]
    if not nic: out += [1]           # no PASID
    return out + list(struct.pack("<H", length - 1)) + [1 if write else 0]

def ats(page=0):
    return [12, 0, 0, page, 0, 0, 1] + list(struct.pack("<H", 4095)) + [2, 1]

def faults(read_groups=1):
    return [13, 0, 1, read_groups, 1, 1, 1, 0, 0]

seeds = {
    # IOAS_ALLOC (3), IOAS_MAP 4 pages at 0x100000, attach the NIC, DMA, unmap, destroy.
    "ioas-map-attach-dma": call("ioasAlloc", FLAGS(0)) + call("map", FLAGS(7), ID(3), PTR(0), LEN(4), IOVA(0))
        + dev(0, True, 3) + dma(True, 0, True) + dma(True, 1, False)
        + call("unmap", ID(3), IOVA(0), LEN(4)) + dev(3, True) + [10, 1, 3],
    # A nest parent, a VT-d stage 1 HWPT over it from user data, attach, invalidate.
    "nested-vtd-s1": call("ioasAlloc", FLAGS(0)) + call("map", FLAGS(7), ID(3), PTR(0), LEN(8), IOVA(0))
        + call("hwptAlloc", FLAGS(1), ID(1), ID(3), TYPE(0), COUNT(0), PTR(0), ID(0))
        + write_words(0x3000, [0, 0x1000, 48]) + write_words(0x3800, [0x100000, 1, 0])
        + call("hwptAlloc", FLAGS(0), ID(1), ID(4), TYPE(1), COUNT(24), PTR(0x3000), ID(0))
        + dev(0, True, 5) + dma(True, 0, False)
        + call("invalidate", ID(5), PTR(0x3800), TYPE(0), COUNT(24), COUNT(1)),
    # Allowed IOVA ranges from a user array, then IOVA_RANGES too small (EMSGSIZE) and enough.
    "allow-iovas-ranges": call("ioasAlloc", FLAGS(0)) + write_words(0x100, [0x100000, 0x1fffff, 0x400000, 0x7fffff])
        + call("allowIOVAs", ID(3), COUNT(2), PTR(0x100)) + call("iovaRanges", ID(3), COUNT(0), PTR(0x800))
        + call("iovaRanges", ID(3), COUNT(4), PTR(0x800)) + call("map", FLAGS(6), ID(3), PTR(0), LEN(2), IOVA(0)),
    # A fault queue, a PRI-capable HWPT on it, the accelerator attached, an ATS miss and the
    # fault file read and answered.
    "fault-queue-pri": call("faultAlloc", FLAGS(0)) + call("ioasAlloc", FLAGS(0))
        + call("map", FLAGS(7), ID(4), PTR(0), LEN(2), IOVA(0))
        + call("hwptAlloc", FLAGS(4), ID(2), ID(4), TYPE(0), COUNT(0), PTR(0), ID(3))
        + dev(0, False, 5) + ats(8) + faults(1) + ats(0) + faults(2),
    # IOAS_MAP_FILE of the memfd, IOAS_COPY to a second IOAS, CHANGE_PROCESS.
    "map-file-copy": call("ioasAlloc", FLAGS(0)) + call("ioasAlloc", FLAGS(0))
        + call("mapFile", FLAGS(7), ID(3), FD(3), [2, 0], LEN(4), IOVA(0))
        + call("copy", FLAGS(7), ID(4), ID(3), LEN(2), IOVA(0), IOVA(0)) + call("changeProcess")
        + dev(0, True, 4) + dma(True, 1, True),
    # VFIO type1 compatibility: IOMMU_VFIO_IOAS set, SET_IOMMU, MAP_DMA, GET_INFO, UNMAP_DMA.
    "vfio-compat": call("ioasAlloc", FLAGS(0)) + call("vfioIOAS", ID(3), COUNT(1))
        + [9, 2, 1] + [9, 3, 1, 0] + PTR(0) + IOVA(0) + LEN(4) + [9, 5, 100, 1] + [9, 4, 1, 0] + IOVA(0) + LEN(4),
    # Dirty tracking: a HWPT with DIRTY_TRACKING, enable, read the bitmap into user memory.
    "dirty-tracking": call("ioasAlloc", FLAGS(0)) + call("map", FLAGS(7), ID(3), PTR(0), LEN(4), IOVA(0))
        + call("hwptAlloc", FLAGS(2), ID(1), ID(3), TYPE(0), COUNT(0), PTR(0), ID(0)) + dev(0, True, 4)
        + call("setDirty", FLAGS(1), ID(4)) + dma(True, 2, True)
        + call("getDirty", ID(4), FLAGS(0), IOVA(0), LEN(4), PAGESIZE(), PTR(0x2000)),
    # vIOMMU, vDEVICE and vEVENTQ on a nest parent (refused or not by the VT-d driver).
    "viommu-vdevice": call("ioasAlloc", FLAGS(0))
        + call("hwptAlloc", FLAGS(1), ID(1), ID(3), TYPE(0), COUNT(0), PTR(0), ID(0))
        + call("viommuAlloc", FLAGS(0), TYPE(1), ID(1), ID(4), COUNT(0), PTR(0))
        + call("vdeviceAlloc", ID(5), ID(1), SMALL64(1)) + call("veventqAlloc", FLAGS(0), ID(5), TYPE(1), COUNT(4))
        + call("getHWInfo", FLAGS(0), ID(2), COUNT(24), PTR(0x400), TYPE(0)),
    # The same commands through the user-pointer entry.
    "user-pointer-entry": call("ioasAlloc", FLAGS(0), user=True) + call("option", COUNT(1), COUNT(1), ID(1), SMALL64(0), user=True)
        + call("getHWInfo", FLAGS(0), ID(1), COUNT(24), PTR(0x400), TYPE(0), user=True),
    # PASID attach of the accelerator to an IOAS, DMA with the PASID, replace and detach.
    "pasid-attach": call("ioasAlloc", FLAGS(0)) + call("map", FLAGS(7), ID(3), PTR(0), LEN(2), IOVA(0))
        + call("hwptAlloc", FLAGS(8), ID(2), ID(3), TYPE(0), COUNT(0), PTR(0), ID(0))
        + dev(0, False, 4, 3) + [12, 0, 0, 0, 0, 0, 0, 3, 63, 0, 1] + dev(2, False, 3, 3) + dev(3, False, 0, 3),
    # Unbind, bind again, destroy in use (EBUSY), raw garbage numbers.
    "rebind-raw": call("ioasAlloc", FLAGS(0)) + dev(0, True, 3) + [10, 1, 3] + dev(4, True) + dev(5, True)
        + [8, 1, 0x95, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 1] + [8, 0, 0x64, 0x3b, 0, 0, 0, 1, 1],
}

if __name__ == "__main__":
    d = "fuzz/corpus/iommufd-ioctl"
    os.makedirs(d, exist_ok=True)
    for name, b in seeds.items():
        with open(os.path.join(d, name), "wb") as f: f.write(bytes(x & 0xFF for x in b))
    print(len(seeds), "seeds in", d)
