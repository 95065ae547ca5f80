"""The baseline at attach: page cache already resident, asked of the kernel itself.

The kernel keeps, per address_space, the number of pages it holds in the page cache
(`mapping->nrpages`, maintained by mm/filemap.c and mm/shmem.c as folios come and go).
bpf/baseline.bpf.c reads that count for every inode of every superblock in one pass —
fs/super.c's `super_blocks` list, then each `sb->s_inodes` list — from a BPF iterator
program (iter/task, 5.8+) that loops with bpf_loop (5.17+) and reads through CO-RE
(kernel BTF, CONFIG_DEBUG_INFO_BTF). It takes milliseconds and sees what a walk of paths
cannot: files deleted while open, lazily unmounted file systems, tmpfs pages past EOF or
fallocated, block devices' own cache (meminfo's Buffers), squashfs's cache of its own
inodes. Paths are not known here; the recorder names the biggest files at the end.

Where the kernel walk cannot run (no BTF, kernel < 5.17, the object not built, libbpf
missing, the load refused) the path walk of tracer/inventory.py is the fallback.
`take()` runs one or the other and says which ran and how complete it was: pages found
against meminfo's Cached + Buffers (the kernel's NR_FILE_PAGES less the swap cache — the
same pages, summed over all address spaces) at the same moment.

Light on purpose (stdlib + ctypes): imported by the recorder at start-up.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import re
import struct
import time
from collections.abc import Callable

from .errors import FootprintError

__all__ = ["BASELINES", "take", "kernel_inventory", "kernel_walk", "unavailable", "object_path",
           "Walker", "superblock_head"]

BASELINES = ("auto", "kernel", "walk", "none")

# bpf/baseline.h, mirrored. A record is one cached inode or one superblock's summary.
_REC = struct.Struct("<QQQII")            # ino, pages, swapped, dev, flags
_SUMMARY = struct.Struct("<IIQQQQQQQIIQ")  # magic, version, records, dropped, dropped_pages,
#                                            sbs, inodes, pages, ns, flags, pad, head
_CONFIG = struct.Struct("<QQIIII")        # sb_head, image_lo, max_sbs, max_inodes, only_magic, pad
_MAGIC, _VERSION = 0x66706231, 2
TMPFS_MAGIC = 0x01021994  # include/uapi/linux/magic.h: shmem's s_magic
REC_SB, REC_SHMEM, REC_UNLINKED, REC_TORN, REC_CAPPED, SUM_FROM_ROOT = 1, 2, 4, 8, 16, 32
_MINORBITS = 20
BPF_MAX_LOOPS = 1 << 23  # include/linux/bpf.h: bpf_loop refuses more iterations (E2BIG)
MAX_SBS = 1 << 16

# x86_64's kernel image (and modules) live at and above __START_KERNEL_map
# (arch/x86/include/asm/page_64_types.h); slab memory (the direct map) is far below.
_IMAGE_BASE = {"x86_64": 0xFFFFFFFF80000000}.get(os.uname().machine)

# s_magic (include/uapi/linux/magic.h) → the name /proc/mounts gives the file system.
_FSTYPES = {0xEF53: "ext4", 0x73717368: "squashfs", 0x9660: "iso9660", 0x58465342: "xfs",
            0x9123683E: "btrfs", 0x4D44: "vfat", 0x01021994: "tmpfs", 0x858458F6: "ramfs",
            0x62646576: "bdev", 0xE0F5E1E2: "erofs", 0x794C7630: "overlay",
            0x65735546: "fuse", 0x6969: "nfs", 0x2FC12FC1: "zfs", 0xF2F52010: "f2fs",
            0x5346544E: "ntfs", 0x2011BAB0: "exfat", 0x28CD3D45: "cramfs"}
_BDEVFS_MAGIC = 0x62646576


def object_path() -> str | None:
    """bpf/baseline.bpf.o as scripts/build-bpf left it, found like the tracer's own
    object (bpffiles.bpf_file); FOOTPRINT_BASELINE_OBJECT overrides. None if not built."""
    env = os.environ.get("FOOTPRINT_BASELINE_OBJECT")
    if env:
        return env if os.path.isfile(env) else None
    from .bpffiles import bpf_file

    path = bpf_file("baseline.bpf.o")
    return path if os.path.isfile(path) else None


def _kernel_addresses() -> tuple[int, int]:
    """(&super_blocks or 0, start of the kernel image or 0) from /proc/kallsyms (the
    process's one parsed copy, tracer/symbols.py `kallsyms`). super_blocks is a static
    variable: listed only with CONFIG_KALLSYMS_ALL (Debian's 6.1 has it, the 6.18
    development host does not). Both read as 0 when kptr_restrict hides them."""
    from .symbols import kernel_address  # early, where the recorder prefetched them

    try:
        return kernel_address("super_blocks") or 0, kernel_address("_text") or 0
    except (OSError, FootprintError):
        return 0, 0


def unavailable() -> str | None:
    """Why the kernel walk cannot run here (one phrase), or None if it may."""
    if os.geteuid() != 0:
        return "not root"
    from .bpffiles import KERNEL_BTF

    if not os.path.exists(KERNEL_BTF):
        return f"no kernel BTF ({KERNEL_BTF}: CONFIG_DEBUG_INFO_BTF)"
    if object_path() is None:
        return "bpf/baseline.bpf.o not built (scripts/build-bpf)"
    rel = os.uname().release.split(".")
    try:
        if (int(rel[0]), int(re.match(r"\d+", rel[1]).group())) < (5, 17):  # type: ignore[union-attr]
            return f"kernel {os.uname().release} has no bpf_loop (5.17+)"
    except (ValueError, IndexError, AttributeError):
        pass
    return None


# -- loading ---------------------------------------------------------------------------

def _open_object(path: str):
    """The object through tracer/libbpf.py, the ctypes layer the tracer's own CO-RE object
    is loaded with."""
    from . import libbpf

    return libbpf.Object(path), libbpf.lib()


# -- the walk --------------------------------------------------------------------------

def _records_wanted() -> int:
    """Room for every inode that can have page cache: no more than the inodes in use
    (/proc/sys/fs/inode-nr) nor than the pages cached (each such inode holds at least
    one), plus one summary per superblock."""
    try:
        with open("/proc/sys/fs/inode-nr") as f:
            inodes = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        inodes = 1 << 20
    m = meminfo_pages()
    cached = m.get("Cached", 0) + m.get("Buffers", 0) + m.get("ShmemSwapped", 0) if m else inodes
    return min(inodes, cached) * 5 // 4 + 8192


def meminfo_pages() -> dict[str, int]:
    """/proc/meminfo's kB lines in pages (empty where it cannot be read)."""
    from .procfs import meminfo

    try:
        kb = meminfo()
    except OSError:
        return {}
    return {k: v * 1024 // mmap.PAGESIZE for k, v in kb.items()}


def superblock_head(sb_head: int | None = None) -> tuple[int, int]:
    """(&super_blocks or 0, start of the kernel image or 0) for a walk; one line
    (FootprintError) when neither is known."""
    head, text = _kernel_addresses()
    if sb_head is not None:
        head = sb_head
    image_lo = text or _IMAGE_BASE or 0
    if not head and not image_lo:
        raise FootprintError("the kernel baseline cannot find the superblock list: /proc/kallsyms "
                             "hides kernel addresses (kernel.kptr_restrict)")
    return head, image_lo


def kernel_walk(records: int | None = None, max_inodes: int = BPF_MAX_LOOPS,
                sb_head: int | None = None) -> dict[str, object]:
    """Run bpf/baseline.bpf.c once: {"summary": {...}, "inodes": [(dev, ino, pages,
    swapped, flags)], "superblocks": [(dev, inodes walked, pages, s_magic, flags)],
    "seconds": load + run + parse}. dev is the kernel's dev_t (major << 20 | minor), as
    the filemap tracepoints report s_dev. Raises FootprintError with one line when the
    object does not load or run. The records map is sized from the kernel's own counts
    and the walk run once more, larger, if records did not fit."""
    head, image_lo = superblock_head(sb_head)
    t0 = time.monotonic()
    n = records or _records_wanted()
    for _attempt in range(2):
        w = Walker(n, head, image_lo, max_inodes)
        try:
            out = w.run()
        finally:
            w.close()
        s = out["summary"]
        if not s["dropped"]:
            break
        n = (s["records"] + s["dropped"]) * 5 // 4 + 8192
    out["seconds"] = time.monotonic() - t0
    return out


class Walker:
    """bpf/baseline.bpf.c loaded once (room for `n` records; `only_magic`: walk only the
    superblocks of that s_magic, 0 every one), run as often as asked: each run() is one
    walk (a new iterator on the same link). close() unloads it. Raises FootprintError
    with one line when the object does not load or a walk cannot start."""

    def __init__(self, n: int, head: int, image_lo: int, max_inodes: int = BPF_MAX_LOOPS,
                 only_magic: int = 0):
        path = object_path()
        if path is None:
            raise FootprintError("the kernel baseline needs bpf/baseline.bpf.o: build it with "
                                 "scripts/build-bpf (needs clang, bpftool, libbpf-dev)")
        self.n = n
        self.mm: mmap.mmap | None = None
        self.obj = None
        self.obj, so = _open_object(path)
        try:
            self.obj.set_max_entries("records", n)
            self.obj.set_rodata(_CONFIG.pack(head, image_lo, MAX_SBS,
                                             min(max_inodes, BPF_MAX_LOOPS), only_magic, 0))
            self.obj.load()
            self.link_fd = self.obj.attach("baseline")
            self.create = so.bpf_iter_create
            self.create.restype, self.create.argtypes = ctypes.c_int, [ctypes.c_int]
            size = -(-n * _REC.size // mmap.PAGESIZE) * mmap.PAGESIZE
            self.mm = mmap.mmap(self.obj.map_fd("records"), size, mmap.MAP_SHARED, mmap.PROT_READ)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Unmap the records and unload the object (idempotent)."""
        if self.mm is not None:
            self.mm.close()
            self.mm = None
        if self.obj is not None:
            self.obj.close()
            self.obj = None

    def run(self) -> dict[str, object]:
        """One walk now: {"summary", "meminfo" (read just before), "inodes",
        "superblocks"} as kernel_walk() describes."""
        mem = meminfo_pages()  # the kernel's totals at the walk's instant, to compare with
        fd = self.create(self.link_fd)
        if fd < 0:
            raise FootprintError(f"cannot start the baseline iterator ({os.strerror(-fd)})")
        try:
            chunks = []
            while True:  # the walk runs inside the first read()
                b = os.read(fd, 1 << 16)
                if not b:
                    break
                chunks.append(b)
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if len(data) < _SUMMARY.size:
            raise FootprintError("the baseline iterator gave no summary: rebuild the object with "
                                 "scripts/build-bpf")
        (magic, version, nrec, dropped, dropped_pages, sbs, inodes, pages, ns, flags,
         _pad, head_seen) = _SUMMARY.unpack_from(data)
        if magic != _MAGIC or version != _VERSION:
            raise FootprintError("bpf/baseline.bpf.o does not match this footprint: rebuild it "
                                 "with scripts/build-bpf")
        raw = self.mm[:min(nrec, self.n) * _REC.size]
        inodes_l: list[tuple[int, int, int, int, int]] = []
        sbs_l: list[tuple[int, int, int, int, int]] = []
        for ino, pg, swapped, dev, fl in _REC.iter_unpack(raw):
            if fl & REC_SB:
                sbs_l.append((dev, ino, pg, swapped, fl))
            else:
                inodes_l.append((dev, ino, pg, swapped, fl))
        return {"summary": {"records": nrec, "dropped": dropped, "dropped_pages": dropped_pages,
                            "superblocks": sbs, "inodes_walked": inodes, "pages": pages,
                            "kernel_ms": round(ns / 1e6, 3), "torn": bool(flags & REC_TORN),
                            "capped": bool(flags & REC_CAPPED),
                            "from_root": bool(flags & SUM_FROM_ROOT), "records_room": self.n,
                            "head_seen": head_seen},
                "meminfo": mem,
                "inodes": inodes_l, "superblocks": sbs_l}


def _devstr(kdev: int) -> str:
    return f"{kdev >> _MINORBITS}:{kdev & ((1 << _MINORBITS) - 1)}"


def kernel_inventory() -> dict[str, object]:
    """The kernel walk shaped like tracer/inventory.py's inventory(): {time, rows, stats,
    superblock_fstypes: {"maj:min": fstype} of superblocks on block devices},
    rows {dev "maj:min", ino, path None, fstype, resident_pages, swapped_pages, method
    "kernel", what "file"|"bdev", block_dev?, unlinked?}. A block device's own cache is
    the bdev pseudo file system's inode whose i_ino is the device's dev_t (block/bdev.c
    bdev_alloc), keyed by that superblock's real s_dev — as the tracepoints key it."""
    walk = kernel_walk()
    t = time.clock_gettime(time.CLOCK_BOOTTIME)
    fstype = {dev: _FSTYPES.get(magic) for dev, _n, _p, magic, _f in walk["superblocks"]}
    rows: list[dict[str, object]] = []
    swapped = unlinked = 0
    for dev, ino, pages, sw, fl in walk["inodes"]:
        ds = _devstr(dev)
        row: dict[str, object] = {"dev": ds, "ino": ino, "path": None, "fstype": fstype.get(dev),
                               "resident_pages": pages, "method": "kernel", "what": "file"}
        if fstype.get(dev) == "bdev":
            row.update(what="bdev", block_dev=_devstr(ino))
        if fl & REC_SHMEM:
            row["swapped_pages"] = sw
            swapped += sw
        if fl & REC_UNLINKED:
            row["unlinked"] = True
            unlinked += 1
        if pages:
            rows.append(row)
    s = walk["summary"]
    stats = dict(s, seconds=round(walk["seconds"], 3), shmem_swapped_pages=swapped,
                 unlinked_files=unlinked,
                 superblocks_torn=[_devstr(d) for d, _n, _p, _m, f in walk["superblocks"] if f & REC_TORN],
                 superblocks_capped=[_devstr(d) for d, _n, _p, _m, f in walk["superblocks"] if f & REC_CAPPED])
    stats.update(_completeness(sum(r["resident_pages"] for r in rows), walk["meminfo"]))
    # The type of every superblock on a block device, from s_magic: the topology names
    # a device nobody mounted (a lazily unmounted squashfs) without opening it.
    on_bdev = {_devstr(d): fstype[d] for d, _n, _p, _m, _f in walk["superblocks"]
               if d >> _MINORBITS and fstype.get(d)}
    return {"time": t, "rows": rows, "stats": stats, "superblock_fstypes": on_bdev}


def _completeness(found: int, mem: dict[str, int]) -> dict[str, object]:
    want = mem.get("Cached", 0) + mem.get("Buffers", 0)
    return {"pages_found": found, "cached_buffers_pages": want,
            "completeness": round(found / want, 4) if want else None}


def take(which: str, walk: Callable[[], dict[str, object]],
         log: Callable[[str], None] = lambda m: None) -> dict[str, object] | None:
    """The baseline `which` asks for ("auto", "kernel", "walk", "none"): the kernel walk,
    or `walk()` (tracer/inventory.py's path walk) where it cannot run and `which` is
    "auto". None for "none". The result's stats say which ran ("baseline") and how much
    of meminfo's Cached + Buffers it found; a refused kernel walk's reason is kept."""
    if which not in BASELINES:
        raise FootprintError(f"unknown --baseline {which!r}: use one of {', '.join(BASELINES)}")
    if which == "none":
        return None
    why = None
    if which in ("auto", "kernel"):
        why = unavailable()
        if why is None:
            try:
                result = kernel_inventory()
                result["stats"]["baseline"] = "kernel"
                return result
            except (FootprintError, OSError, AttributeError) as err:
                # OSError: mmap or the iterator's read refused; AttributeError: a libbpf
                # without bpf_iter_create (< 0.0.9). Either way the walk still works.
                why = str(err) if isinstance(err, FootprintError) else f"{type(err).__name__}: {err}"
        if which == "kernel":
            raise FootprintError(f"--baseline kernel cannot run here: {why}; use --baseline walk")
        log(f"baseline: kernel walk not used ({why}); walking paths")
    before = meminfo_pages()
    result = walk()
    stats = result.setdefault("stats", {})
    stats["baseline"] = "walk"
    if why:
        stats["kernel_refused"] = why
    stats.update(_completeness(sum(r.get("resident_pages") or 0 for r in result.get("rows", [])),
                               before))
    return result
