#!/usr/bin/python3
"""Run IN a guest (python3, standard library only; shares no code with the tracer): the
page cache of every file of the overlay root's layers, counted by the kernel's mincore(2).

    python3 guest_pagecache.py > truth.json

For the lower layer (the mount holding the first lowerdir: live-boot's squashfs) and the
upper layer (the mount holding upperdir: a tmpfs) it walks every regular file and symlink
target of that mount (not crossing into others) and asks mincore(2) how many of the
file's pages are in its page cache. Each file is mapped past its end, to the end of the
last squashfs block (squashfs caches whole blocks, so pages past EOF exist) or of what
tmpfs allocated (fallocate beyond i_size): mincore looks pages up in the mapping by index
(mm/mincore.c mincore_page(), no i_size check, since 2.6), so those pages count too; it
also sees tmpfs pages (shmem, page cache or swap). Also: statfs of the upper (a tmpfs
with a size limit counts every page it holds in its used blocks: mm/shmem.c
sbinfo->used_blocks) and /proc/meminfo, read at the same moment.

Output: {"layers": {"lower"|"upper": {"mount", "fstype", "dev": "MAJ:MIN", "files": N,
"pages": N, "per_file": {ino: pages}}}, "upper_statfs_pages": N, "block_size": N,
"meminfo": {...}, "seconds": S}
"""

import ctypes
import json
import os
import stat
import sys
import time

PAGE = os.sysconf("SC_PAGE_SIZE")
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
PROT_READ, MAP_SHARED = 1, 1
MAP_FAILED = ctypes.c_void_p(-1).value


def unescape(s):
    return s.encode().decode("unicode_escape") if "\\" in s else s


def mounts():
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            a, b = left.split(), right.split()
            out.append({"dev": a[2], "mount": unescape(a[4]), "fstype": b[0],
                        "source": unescape(b[1]) if len(b) > 1 else "",
                        "options": ",".join((a[5], b[2] if len(b) > 2 else ""))})
    return out


def mount_of(path, table):
    """The innermost mount whose mount point is a prefix of `path` (path is canonical)."""
    best = None
    for m in table:
        mp = m["mount"]
        if path == mp or path.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) >= len(best["mount"]):
                best = m
    return best


def resident(fd, length):
    length = (length + PAGE - 1) // PAGE * PAGE
    if length == 0:
        return 0
    addr = libc.mmap(None, length, PROT_READ, MAP_SHARED, fd, 0)
    if addr in (None, MAP_FAILED):
        return 0
    try:
        vec = ctypes.create_string_buffer(length // PAGE)
        if libc.mincore(addr, length, vec) != 0:
            return 0
        return sum(1 for b in vec.raw if b & 1)
    finally:
        libc.munmap(addr, length)


def walk(mount, block):
    dev = os.lstat(mount).st_dev
    per_file = {}
    for dirpath, dirnames, filenames in os.walk(mount):
        keep = []
        for d in dirnames:
            try:
                if os.lstat(os.path.join(dirpath, d)).st_dev == dev:
                    keep.append(d)
            except OSError:
                pass
        dirnames[:] = keep
        for fn in filenames:
            p = os.path.join(dirpath, fn)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if st.st_dev != dev or st.st_ino in per_file or not stat.S_ISREG(st.st_mode):
                continue
            try:
                fd = os.open(p, os.O_RDONLY | os.O_NOATIME)
            except OSError:
                try:
                    fd = os.open(p, os.O_RDONLY)
                except OSError:
                    continue
            try:
                # past the end: to the end of the last block, and what was allocated
                span = max(st.st_size, st.st_blocks * 512)
                span = (span + block - 1) // block * block + block
                per_file[st.st_ino] = resident(fd, span)
            finally:
                os.close(fd)
    return dev, per_file


def squashfs_block_size(loop):
    try:
        with open("/sys/block/%s/loop/backing_file" % loop) as f:
            backing = f.read().strip()
        with open(backing, "rb") as f:
            f.seek(12)
            return int.from_bytes(f.read(4), "little")
    except OSError:
        return 1 << 17


def main():
    t0 = time.monotonic()
    table = mounts()
    root = [m for m in table if m["mount"] == "/"][-1]
    if root["fstype"] != "overlay":
        sys.exit("root is %s, not overlay" % root["fstype"])
    opts = dict(o.split("=", 1) for o in root["options"].split(",") if "=" in o)
    lower = opts["lowerdir"].split(":")[0]
    upper = opts["upperdir"]
    out = {"layers": {}, "root_options": root["options"]}
    for name, path in (("lower", lower), ("upper", upper)):
        m = mount_of(os.path.realpath(path), table)
        block = PAGE
        if m["fstype"] == "squashfs":
            # its block size, from the superblock of the loop device's backing file
            # (offset 12, le32); the device itself is left alone
            block = squashfs_block_size(m["source"].rsplit("/", 1)[-1])
            out["block_size"] = block
        dev, per_file = walk(m["mount"], block)
        out["layers"][name] = {
            "dir": path, "mount": m["mount"], "fstype": m["fstype"],
            "dev": "%d:%d" % (os.major(dev), os.minor(dev)),
            "files": len(per_file), "pages": sum(per_file.values()),
            "per_file": {str(k): v for k, v in per_file.items() if v},
        }
    st = os.statvfs(out["layers"]["upper"]["mount"])
    out["upper_statfs_pages"] = (st.f_blocks - st.f_bfree) * st.f_frsize // PAGE
    out["upper_statfs_blocks"] = st.f_blocks
    with open("/proc/meminfo") as f:
        out["meminfo"] = {ln.split(":")[0]: int(ln.split()[1]) for ln in f}
    out["seconds"] = round(time.monotonic() - t0, 2)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
