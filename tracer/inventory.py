"""What is already in the page cache when the tracer attaches.

The tracer sees page-cache adds and deletes from the moment it attaches; everything read
before (the initramfs, the kernel's own reads of the root image) is only visible as a
baseline: per-file residency by cachestat(2) (Linux ≥ 6.5: no mmap, works on block
devices) or mmap + mincore(2) otherwise.

Rows are keyed like the filemap tracepoints key pages: (superblock dev, inode). Block
devices' own page cache (meminfo's Buffers) lives on the bdev pseudo file system, whose
inode number is the kernel dev_t (see topology.resolve._bdev_of_inode); those rows carry
what="bdev" and block_dev.

Light on purpose (stdlib + ctypes): imported by the recorder in early boot.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import platform
import stat
import time
from collections.abc import Callable, Iterable

from .topology import Topology, devstr, kdev
from .topology.blockdev import may_open
from .topology.overlay import UserPaths
from .topology.paths import Budget, walk_tree

__all__ = ["resident_pages", "cachestat", "mincore_pages", "inventory", "DEFAULT_FSTYPES",
           "PAGE_SIZE", "cachestat_available"]

PAGE_SIZE = mmap.PAGESIZE
DEFAULT_FSTYPES = ("ext4", "ext3", "ext2", "squashfs", "iso9660", "xfs", "btrfs", "vfat",
                   "tmpfs", "ramfs", "rootfs")
SKIP_PREFIXES = ("/proc", "/sys", "/dev")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_MAP_FAILED = ctypes.c_void_p(-1).value

# cachestat(2) syscall numbers (include/uapi/asm-generic/unistd.h: 451 on every arch
# that uses the generic table, and x86_64's syscall_64.tbl).
_NR_CACHESTAT = {"x86_64": 451, "aarch64": 451, "riscv64": 451, "ppc64le": 451, "s390x": 451}.get(
    platform.machine())


class _CachestatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Cachestat(ctypes.Structure):
    _fields_ = [("nr_cache", ctypes.c_uint64), ("nr_dirty", ctypes.c_uint64),
                ("nr_writeback", ctypes.c_uint64), ("nr_evicted", ctypes.c_uint64),
                ("nr_recently_evicted", ctypes.c_uint64)]


_cachestat_ok: bool | None = None


def cachestat(fd: int) -> dict[str, int] | None:
    """cachestat(2) over the whole file (mm/filemap.c: counts pages of the mapping —
    f_mapping, i.e. the bdev inode's for a block device — in pages). None when the
    kernel lacks it (ENOSYS, < 6.5) or refuses this file (EOPNOTSUPP: hugetlbfs)."""
    global _cachestat_ok
    if _NR_CACHESTAT is None or _cachestat_ok is False:
        return None
    rng = _CachestatRange(0, 0)  # len 0 = to the end of the file
    cs = _Cachestat()
    r = _libc.syscall(_NR_CACHESTAT, ctypes.c_int(fd), ctypes.byref(rng), ctypes.byref(cs),
                      ctypes.c_uint(0))
    if r != 0:
        e = ctypes.get_errno()
        if e == errno.ENOSYS:
            _cachestat_ok = False
        return None
    _cachestat_ok = True
    return {"nr_cache": cs.nr_cache, "nr_dirty": cs.nr_dirty, "nr_writeback": cs.nr_writeback,
            "nr_evicted": cs.nr_evicted, "nr_recently_evicted": cs.nr_recently_evicted}


def cachestat_available() -> bool:
    """Whether cachestat(2) works here (probed on /proc/self/exe's file's fd once)."""
    if _cachestat_ok is None:
        try:
            fd = os.open("/proc/self/exe", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            cachestat(fd)
        finally:
            os.close(fd)
    return bool(_cachestat_ok)


def mincore_pages(fd: int, size: int) -> int | None:
    """Resident pages of the first `size` bytes by mmap(MAP_SHARED) + mincore(2) (the
    page-cache state of the file's pages; mapping does not fault them in). A size not
    page aligned covers the partial last page. None when the file cannot be mmapped."""
    if size <= 0:
        return 0
    npages = (size + PAGE_SIZE - 1) // PAGE_SIZE
    addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if addr is None or addr == _MAP_FAILED:
        return None
    try:
        vec = (ctypes.c_ubyte * npages)()
        if _libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) != 0:
            return None
        return sum(b & 1 for b in bytes(vec))
    finally:
        _libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(size))


_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOATIME", 0)


def _measure_regular(path: str, size: int) -> tuple[int | None, str]:
    """Fast path for the walk: a regular file whose size and (dev, ino) are known from
    scandir's lstat — one open, one syscall, one close."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return None, "none"
    try:
        if _cachestat_ok is not False:
            cs = cachestat(fd)
            if cs is not None:
                return cs["nr_cache"], "cachestat"
        n = mincore_pages(fd, size)
        return n, ("mincore" if n is not None else "none")
    finally:
        os.close(fd)


def _size_of(fd: int, st: os.stat_result) -> int:
    if stat.S_ISBLK(st.st_mode):
        return os.lseek(fd, 0, os.SEEK_END)
    return st.st_size


def resident_pages(path: str, method: str = "auto") -> dict[str, object]:
    """Page-cache residency of one file or block device.

    Returns {resident_pages, size_pages, method: "cachestat"|"mincore"|"none", dirty_pages
    (cachestat only), dev, ino, error?}. method="auto" prefers cachestat, falls back to
    mincore; "mincore"/"cachestat" force one. Block devices: opened O_NONBLOCK (no media
    wait on a CD) and never mmapped by "auto" unless cachestat is missing.
    """
    out: dict[str, object] = {"resident_pages": None, "size_pages": 0, "method": "none"}
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOATIME", 0))
    except PermissionError:
        try:  # O_NOATIME needs ownership or CAP_FOWNER
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            out["error"] = e.strerror
            return out
    except OSError as e:
        out["error"] = e.strerror
        return out
    try:
        st = os.fstat(fd)
        size = _size_of(fd, st)
        out["size_pages"] = (size + PAGE_SIZE - 1) // PAGE_SIZE
        out["dev"], out["ino"] = devstr(st.st_dev), st.st_ino
        if method in ("auto", "cachestat"):
            cs = cachestat(fd)
            if cs is not None:
                out.update(resident_pages=cs["nr_cache"], dirty_pages=cs["nr_dirty"], method="cachestat")
                return out
            if method == "cachestat":
                out["error"] = "cachestat unavailable"
                return out
        n = mincore_pages(fd, size)
        if n is None:
            out["error"] = "cannot mmap"
        else:
            out.update(resident_pages=n, method="mincore")
        return out
    finally:
        os.close(fd)


# --- the inventory -------------------------------------------------------------------------


def _stack_devs(topo: Topology) -> list[str]:
    """Superblocks that belong to the storage stack (loop backing file systems, file
    systems on loop/dm devices), walked first so the budget goes where it matters."""
    devs: list[str] = []
    # File systems on loop/dm devices first (the stack's own files, usually small),
    # then those holding the backing images (often the big host root).
    for bd in topo.block_devices.values():
        if bd["kind"] in ("loop", "dm"):
            devs.append(bd["dev"])
    for bd in topo.block_devices.values():
        lo = bd.get("loop") or {}
        if lo.get("backing_dev"):
            devs.append(lo["backing_dev"])
    if topo.root:
        devs.append(topo.root["dev"])
    seen = set()
    return [d for d in devs if not (d in seen or seen.add(d))]


def inventory(topo: Topology, mounts: Iterable[dict[str, object]] | None = None,
              budget: tuple[int, float] = (200_000, 10.0), fstypes: tuple[str, ...] = DEFAULT_FSTYPES,
              method: str = "auto", include_empty: bool = False,
              traced: Callable[[str, int], object] | None = None) -> dict[str, object]:
    """Resident page cache per (dev, ino) when the tracer attaches.

    Covers, in this order: every loop's backing file (sysfs gives the path), every block
    device's own page cache (/dev/<name>: Buffers), then the files of the mounts (default:
    current mounts of `fstypes`, storage-stack file systems first, never under /proc,
    /sys, /dev), walked with os.scandir without following symlinks or crossing into
    other superblocks, until `budget` = (max files, max seconds) runs out. Deduplicated
    by (dev, ino) (bind mounts, hard links).

    Returns {time (CLOCK_BOOTTIME), rows: [{dev, ino, path, fstype, resident_pages,
    size_pages, method, what: "file"|"bdev", block_dev?}], stats: {files_seen,
    files_measured, elapsed, truncated: bool, skipped_mounts: [...], errors}}.
    Rows with 0 resident pages are left out unless include_empty.

    `traced(dev, ino)`, if given, is called right after a file with resident pages is
    measured, and its answer (the tracer's counters for that file at that instant) kept
    in the row as "traced_at": pages the tracer already counts, and deletes it has seen
    of pages it did not, at the moment the measurement was taken, not seconds later at
    the end of the walk (a file's pages can be evicted meanwhile).
    """
    t0 = time.monotonic()
    max_files, max_secs = budget
    deadline = t0 + max_secs
    rows: list[dict[str, object]] = []
    seen: set = set()
    stats: dict[str, object] = {"files_seen": 0, "files_measured": 0, "errors": 0,
                             "truncated": False, "skipped_mounts": [], "walked_mounts": []}
    fstype_of = {m["dev"]: m["fstype"] for m in topo.mounts}

    def add(path: str, what: str = "file", block_dev: str | None = None,
            fstype: str | None = None) -> None:
        r = resident_pages(path, method)
        stats["files_measured"] += 1
        if r["resident_pages"] is None:
            stats["errors"] += 1
            return
        if what == "bdev":
            key: tuple[object, ...] = ("bdev", block_dev)
            row = {"dev": topo.bdev_sb_dev, "ino": kdev(block_dev), "block_dev": block_dev}  # type: ignore[arg-type]
        else:
            key = (r["dev"], r["ino"])
            row = {"dev": r["dev"], "ino": r["ino"]}
        if key in seen:
            return
        seen.add(key)
        if not r["resident_pages"] and not include_empty:
            return
        row.update(path=path, fstype=fstype if fstype is not None else fstype_of.get(row["dev"]),
                   resident_pages=r["resident_pages"], size_pages=r["size_pages"],
                   method=r["method"], what=what)
        if "dirty_pages" in r:
            row["dirty_pages"] = r["dirty_pages"]
        if traced is not None and what == "file":
            row["traced_at"] = traced(row["dev"], row["ino"])
        rows.append(row)

    # 1. Loop backing files: reachable paths only (a deleted or hidden backing file has
    # no path; its pages are still attributed via (dev, ino) by the tracer).
    for bd in topo.block_devices.values():
        lo = bd.get("loop") or {}
        bf = lo.get("backing_file")
        if bf and not lo.get("deleted") and not bd.get("gone") and os.path.exists(bf):
            add(bf)
    # 2. Block devices' own page cache: never opening a removable, optical, floppy or
    # empty device (the open alone makes the driver probe the media and log errors).
    for bd in topo.block_devices.values():
        if bd.get("gone") or not may_open(bd):
            continue
        node = os.path.join("/dev", bd["name"])
        if os.path.exists(node):
            add(node, what="bdev", block_dev=bd["dev"], fstype=None)

    # 3. Mounted file systems.
    if mounts is None:
        order = {d: i for i, d in enumerate(_stack_devs(topo))}
        mounts = sorted((m for m in topo.mounts if m["fstype"] in fstypes and not m.get("gone")),
                        key=lambda m: (order.get(m["dev"], len(order)), len(m["mountpoint"])))
    walked_devs_roots: set = set()
    budget_ = Budget(max_files, max(0.0, deadline - time.monotonic()))
    errors: list = []
    for m in mounts:
        mp = m["mountpoint"]
        if any(mp == p or mp.startswith(p + "/") for p in SKIP_PREFIXES):
            stats["skipped_mounts"].append({"mountpoint": mp, "why": "pseudo/dev tree"})
            continue
        if (m["dev"], m["root"]) in walked_devs_roots:
            continue  # a bind mount of a tree already walked
        if budget_.exhausted:
            stats["skipped_mounts"].append({"mountpoint": mp, "why": "budget"})
            continue
        walked_devs_roots.add((m["dev"], m["root"]))
        try:
            top_dev = devstr(os.lstat(mp).st_dev)
        except OSError:
            stats["skipped_mounts"].append({"mountpoint": mp, "why": "unreachable"})
            continue
        if top_dev != m["dev"]:
            stats["skipped_mounts"].append({"mountpoint": mp, "why": "over-mounted"})
            continue
        stats["walked_mounts"].append(mp)
        for e, st in walk_tree(mp, top_dev, budget_, errors):
            if not stat.S_ISREG(st.st_mode) or st.st_size <= 0 or (top_dev, st.st_ino) in seen:
                continue
            if method != "auto":
                add(e.path, fstype=m["fstype"])
                continue
            stats["files_measured"] += 1
            n, how = _measure_regular(e.path, st.st_size)
            if n is None:
                stats["errors"] += 1
                continue
            seen.add((top_dev, st.st_ino))
            if n or include_empty:
                rows.append({"dev": top_dev, "ino": st.st_ino, "path": e.path,
                             "fstype": m["fstype"], "resident_pages": n,
                             "size_pages": (st.st_size + PAGE_SIZE - 1) // PAGE_SIZE,
                             "method": how, "what": "file"})
                if traced is not None:
                    rows[-1]["traced_at"] = traced(top_dev, st.st_ino)
        if budget_.exhausted:
            stats["skipped_mounts"].append({"mountpoint": mp, "why": "budget (partly walked)"})
    stats["files_seen"] = budget_.entries
    stats["truncated"] = budget_.exhausted
    stats["errors"] += len(errors)
    # One spelling per file: a file on an overlay's layer is named through the overlay.
    spell = UserPaths(topo.mounts)
    if spell:
        for row in rows:
            if row["what"] == "file":
                row["path"] = spell.spell(row["path"], row["dev"], row["ino"])
    stats["elapsed"] = time.monotonic() - t0
    return {"time": time.clock_gettime(time.CLOCK_BOOTTIME), "rows": rows, "stats": stats}
