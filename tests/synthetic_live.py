"""Synthetic recordings, in the real format, of a dmsquash-live boot and of a plain disk
boot — for the compare, answer, timeline and HTML tests.

Live stack (as dracut builds it): iso9660 on sr0 holds LiveOS/squashfs.img → loop0 →
squashfs holds LiveOS/rootfs.img → loop1 → dm snapshot `live-rw` (origin loop1, COW
loop2 backed by "/overlay (deleted)" on the initramfs ramfs 0:2) → ext4 mounted on /.
Block-device inodes live on the bdev pseudo file system 0:3, inode = kernel dev_t.

The numbers are the inputs: tests derive what they expect from the constants here.
"""

from __future__ import annotations

from tracer import recording

PS = 4096
KB = PS // 1024  # meminfo is in kB; these helpers take pages


def kdev(major: int, minor: int) -> int:
    return (major << 20) | minor


def mount(mid, dev, mountpoint, fstype, source):
    return {"id": mid, "parent": 1, "dev": dev, "root": "/", "mountpoint": mountpoint,
            "options": "ro", "optional": "", "fstype": fstype, "source": source,
            "super_options": "ro"}


def loop(n, backing_file, backing_dev, backing_ino, holders=()):
    return {"name": f"loop{n}", "dev": f"7:{n}", "kind": "loop", "slaves": [], "holders": list(holders),
            "loop": {"bound": True, "backing_file": backing_file, "deleted": "(deleted)" in backing_file,
                     "backing_dev": backing_dev, "backing_ino": backing_ino}}


def live_topology(squashfs_mounted: bool = True) -> dict:
    """squashfs_mounted=False: dracut's lazily unmounted squashfs, as an older recording
    (without the superblock probe) saw it."""
    mounts = [mount(2, "254:0", "/", "ext4", "/dev/mapper/live-rw"),
              mount(3, "11:0", "/run/initramfs/live", "iso9660", "/dev/sr0")]
    if squashfs_mounted:
        mounts.append(mount(4, "7:0", "/run/rootfsbase", "squashfs", "/dev/loop0"))
    return {
        "time": 1.0, "root": {"dev": "254:0", "fstype": "ext4", "source": "/dev/mapper/live-rw", "id": 2},
        "bdev_sb_dev": "0:3", "history": [1.0], "mounts": mounts,
        "block_devices": {
            "sr0": {"name": "sr0", "dev": "11:0", "kind": "rom", "slaves": [], "holders": []},
            "loop0": loop(0, "/run/initramfs/live/LiveOS/squashfs.img", "11:0", 1350),
            "loop1": loop(1, "/LiveOS/rootfs.img", "7:0", 2, holders=["dm-0"]),
            "loop2": loop(2, "/overlay (deleted)", "0:2", 13695, holders=["dm-0"]),
            "dm-0": {"name": "dm-0", "dev": "254:0", "kind": "dm", "slaves": ["loop1", "loop2"],
                     "holders": [],
                     "dm": {"name": "live-rw", "uuid": "", "suspended": 0, "table": [
                         {"start": 0, "length": 4855808, "target": "snapshot",
                          "args": ["7:1", "7:2", "PO", "8"],
                          "devices": [{"dev": "7:1", "role": "origin"}, {"dev": "7:2", "role": "cow"}],
                          "persistent": "PO", "chunk_sectors": 8}]}},
        },
    }


PLAIN_TOPOLOGY = {
    "time": 1.0, "root": {"dev": "253:0", "fstype": "ext4", "source": "/dev/vda", "id": 2},
    "bdev_sb_dev": "0:3", "history": [1.0],
    "mounts": [mount(2, "253:0", "/", "ext4", "/dev/vda")],
    "block_devices": {"vda": {"name": "vda", "dev": "253:0", "kind": "disk", "slaves": [], "holders": []}},
}

# Page cache, pages per owner "dev:ino" (the last sample's values).
EXT4_FILES = {"254:0:100": 2000, "254:0:101": 500}
ROOTFS_IMG = ("7:0:2", 3000)             # rootfs.img inside squashfs: decompressed
SQUASHFS_IMG = ("11:0:1350", 1000)       # squashfs.img on iso9660: compressed
OVERLAY_COW = ("0:2:13695", 50)          # the snapshot's COW file on ramfs
DM_BDEV = (f"0:3:{kdev(254, 0)}", 100)   # /dev/dm-0's own page cache (Buffers)
LOOP_BDEVS = {f"0:3:{kdev(7, 0)}": 40, f"0:3:{kdev(7, 1)}": 30}
# Slab pages, vmalloc pages, kernel pages by allocation stack.
LIVE_SLAB = {"squashfs_inode_cache": 8, "dm_exception": 12, "kcopyd_job": 4, "ext4_inode_cache": 30,
             "dentry": 20}
LIVE_VMALLOC = {"squashfs_decompressor_create": 16, "dm_exception_table_init [dm_snapshot]": 24,
                "alloc_thread_stack_node": 5}
DM_KERNEL_PAGES = 6

SQUASHFS_PAGES = ROOTFS_IMG[1] + LIVE_SLAB["squashfs_inode_cache"] + LIVE_VMALLOC["squashfs_decompressor_create"]
DM_PAGES = (DM_BDEV[1] + LIVE_SLAB["dm_exception"] + LIVE_SLAB["kcopyd_job"]
            + LIVE_VMALLOC["dm_exception_table_init [dm_snapshot]"] + DM_KERNEL_PAGES)
LOOP_PAGES = sum(LOOP_BDEVS.values())


def meminfo(total, free, cached, buffers=0, **pages) -> dict:
    mi = {"MemTotal": total * KB, "MemFree": free * KB, "MemAvailable": (free + cached) * KB,
          "Cached": cached * KB, "Buffers": buffers * KB}
    mi.update({k: v * KB for k, v in pages.items()})
    return mi


def counter(resident, peak=None):
    return [resident, resident if peak is None else peak, resident, 0, 0]


def _writer(path, hostname="guest", **header) -> recording.Writer:
    return recording.Writer(str(path), {"plan": {"probes": [{"probe": "filemap:mm_filemap_add_to_page_cache",
                                                              "active": True}],
                                                  "headers_match_kernel": True},
                                         "attached": 0.5, "hostname": hostname,
                                         "tracer": {"pid": 1, "files": []}, **header})


def write_live(path, squashfs_mounted=True, hostile=None, phases=(("initqueue", 2.5),
                                                                  ("switch_root", 3.5))) -> str:
    """Three samples of a live boot: the root file system being read in (sample 0 and 1
    hold part of the page cache), then the final state (the constants above).
    hostile: a string used as a file path, a phase name and a dm name."""
    w = _writer(path, hostname=hostile or "guest")
    topo = live_topology(squashfs_mounted)
    if hostile:
        topo["block_devices"]["dm-0"]["dm"]["name"] = hostile
    w.write({"type": "topology", "t": 1.0, "topology": topo})
    # One file of the ext4 root was resident before the tracer attached (baseline).
    w.write({"type": "inventory", "t": 1.1, "method": "cachestat", "untracked_at_inventory": {},
             "files": [["254:0", 102, 25, hostile or "/etc/hostname"]]})
    w.write({"type": "stack", "id": 1, "kind": "pages", "owner": "device-mapper",
             "frames": ["kcopyd_init", "dm_snapshot_ctr"]})
    final_files = {**{k: counter(v) for k, v in EXT4_FILES.items()},
                   ROOTFS_IMG[0]: counter(ROOTFS_IMG[1]), SQUASHFS_IMG[0]: counter(SQUASHFS_IMG[1]),
                   OVERLAY_COW[0]: counter(OVERLAY_COW[1]), DM_BDEV[0]: counter(DM_BDEV[1]),
                   **{k: counter(v) for k, v in LOOP_BDEVS.items()}}
    slab = {name: [pages * 10, 400, pages] for name, pages in LIVE_SLAB.items()}
    common = {"AnonPages": 3000, "Slab": 200, "KernelStack": 5, "PageTables": 40, "Percpu": 10,
              "VmallocUsed": 100, "Shmem": 60}
    samples = [
        # before the read: only the squashfs image is partly cached
        {"t": 2.0, "meminfo": meminfo(100_000, 88_000, 4000, 100, **common),
         "files": {SQUASHFS_IMG[0]: counter(300)}, "slab": slab, "vmalloc": LIVE_VMALLOC},
        {"t": 3.0, "meminfo": meminfo(100_000, 85_000, 6000, 150, **common),
         "files": {SQUASHFS_IMG[0]: counter(800), ROOTFS_IMG[0]: counter(1500)},
         "stacks": {"1": counter(DM_KERNEL_PAGES)}},
        {"t": 4.0, "meminfo": meminfo(100_000, 80_000, 8000, 200, **common),
         "files": final_files},  # slab and vmalloc unchanged: absent, as recorded
    ]
    for name, t in phases:
        w.write({"type": "phase", "t": t, "name": hostile or name})
    for s in samples:
        w.write({"type": "sample", "stats": {}, "sites": {}, "stacks": {}, **s})
    w.close("duration")
    return str(path)


PLAIN_FILES = {"253:0:100": 2000, "253:0:101": 500}
PLAIN_BDEV = (f"0:3:{kdev(253, 0)}", 20)


def write_plain(path) -> str:
    """One sample of a plain disk boot: ext4 on vda, no loop, no dm, no squashfs."""
    w = _writer(path, hostname="plain")
    w.write({"type": "topology", "t": 1.0, "topology": PLAIN_TOPOLOGY})
    files = {**{k: counter(v) for k, v in PLAIN_FILES.items()}, PLAIN_BDEV[0]: counter(PLAIN_BDEV[1])}
    w.write({"type": "sample", "t": 4.0, "stats": {}, "sites": {}, "stacks": {},
             "meminfo": meminfo(100_000, 90_000, 5000, 50, AnonPages=2500, Slab=150, KernelStack=5,
                                PageTables=35, Percpu=10, VmallocUsed=20, Shmem=60),
             "files": files, "slab": {"ext4_inode_cache": [300, 1000, 30], "dentry": [200, 192, 20]},
             "vmalloc": {"alloc_thread_stack_node": 5}})
    w.close("duration")
    return str(path)
