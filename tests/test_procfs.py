"""/proc parsers on fixture text, and on this host's files."""

from __future__ import annotations

import os

import pytest

from tracer import procfs as P
from tracer.errors import FootprintError

MEMINFO = """\
MemTotal:        2014016 kB
MemFree:          812344 kB
Buffers:           12872 kB
Cached:           650112 kB
Shmem:              9876 kB
Unevictable:      207744 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""

VMALLOCINFO = """\
0x000000001b2c3d4e-0x000000002b2c3d4e   20480 irq_init_percpu_irqstack+0xca/0x100 vmap
0xffffb8e0c0000000-0xffffb8e0c0005000   20480 copy_process+0x1f4/0x1c70 pages=4 vmalloc N0=4
0xffffb8e0c0006000-0xffffb8e0c000b000   20480 copy_process+0x1f4/0x1c70 pages=4 vmalloc N0=4
0xffffb8e0c0100000-0xffffb8e0c0122000  139264 squashfs_decompressor_create+0x40/0x90 [squashfs] pages=33 vmalloc
0xffffb8e0c0200000-0xffffb8e0c0202000    8192 acpi_os_map_iomem+0x1bc/0x1e0 phys=0x00000000fed00000 ioremap
0xffffb8e0c0300000-0xffffb8e0c0302000    8192 pages=1 vmalloc
"""

SLABINFO = """\
slabinfo - version: 2.1
# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>
dm_snap_exception   1020   1020     16  255    1 : tunables    0    0    0 : slabdata      4      4      0
squashfs_inode_cache    100    120    704   23    4 : tunables    0    0    0 : slabdata      6      6      0
kmalloc-8k            32     36   8192    4    8 : tunables    0    0    0 : slabdata      9      9      0
"""

ZONEINFO = """\
Node 0, zone      DMA
  per-node stats
      nr_inactive_anon 1
  pages free     3840
        spanned  4095
        present  3998
  start_pfn:           1
Node 0, zone    DMA32
  pages free     400000
        spanned  520192
        present  520192
  start_pfn:           4096
Node 0, zone   Normal
  pages free     0
        spanned  0
        present  0
Node 0, zone  Movable
  pages free     0
        spanned  0
"""


def test_meminfo():
    m = P.parse_meminfo(MEMINFO)
    assert m["MemTotal"] == 2014016 and m["Buffers"] == 12872 and m["Unevictable"] == 207744
    assert m["HugePages_Total"] == 0 and m["Hugepagesize"] == 2048


def test_vmallocinfo_by_caller():
    v = P.parse_vmallocinfo(VMALLOCINFO)
    assert v["copy_process"] == {"areas": 2, "bytes": 40960, "pages": 8, "ioremap": 0}
    assert v["squashfs_decompressor_create [squashfs]"]["pages"] == 33
    assert v["acpi_os_map_iomem"]["ioremap"] == 1 and v["acpi_os_map_iomem"]["pages"] == 0
    assert v["unknown"]["pages"] == 1
    assert v["irq_init_percpu_irqstack"]["areas"] == 1


def test_slabinfo():
    rows = {r["name"]: r for r in P.parse_slabinfo(SLABINFO)}
    assert set(rows) == {"dm_snap_exception", "squashfs_inode_cache", "kmalloc-8k"}
    sq = rows["squashfs_inode_cache"]
    assert (sq["active_objs"], sq["num_objs"], sq["objsize"], sq["pagesperslab"], sq["num_slabs"]) == \
        (100, 120, 704, 4, 6)
    assert sq["pages"] == 24 and rows["kmalloc-8k"]["pages"] == 72


def test_zone_max_pfn():
    assert P.parse_zoneinfo_max_pfn(ZONEINFO) == 4096 + 520192
    with pytest.raises(FootprintError):
        P.parse_zoneinfo_max_pfn("Node 0, zone DMA\n  spanned 0\n")


def test_live_files():
    m = P.meminfo()
    assert m["MemTotal"] > 0 and "Cached" in m and "Buffers" in m
    mx = P.zone_max_pfn()
    assert mx * 4096 >= m["MemTotal"] * 1024
    t1 = P.boottime()
    assert 0 < t1 <= P.boottime()
    if os.geteuid() == 0:
        slabs = P.slabinfo()
        assert slabs and all(r["objsize"] > 0 for r in slabs)
        assert sum(r["pages"] for r in slabs) * 4 <= m.get("Slab", 1 << 62) * 2
        v = P.vmallocinfo()
        assert sum(r["pages"] for r in v.values()) > 0


def test_pcp_pages_sum_count_lines_of_every_pageset():
    from tracer.procfs import parse_zoneinfo_pcp_pages

    text = ("Node 0, zone   Normal\n  pagesets\n    cpu: 0\n              count:    205\n"
            "              high:     1444\n    cpu: 1\n              count:    56\n"
            "Node 0, zone DMA32\n  pagesets\n    cpu: 0\n              count: 7\n")
    assert parse_zoneinfo_pcp_pages(text) == 268
