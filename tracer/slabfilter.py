"""Which built-in kernel code's kmalloc objects the program follows under --slab kmalloc.

The BPF program's fp_slab_filter (bpf/footprint_types.h) holds the core kernel's text
bounds (_stext, _etext from /proc/kallsyms) and up to SLAB_RANGES address ranges: a call
site outside the text is a module's (followed whole), one inside is followed only when it
lies in a range computed here from the kernel's own symbol table.
"""

from __future__ import annotations

import bisect


# Built-in code whose kmalloc objects can change an answer (with --slab kmalloc): the
# storage stack's subsystems (symbols.subsystem_of) and the page-cache and block-device
# paths of the core kernel. Modules are followed whole (see struct fp_slab_filter).
SLAB_SUBSYSTEMS = frozenset({"squashfs", "loop", "device-mapper", "ext4", "iso9660", "overlay",
                             "virtio-blk", "shmem", "zram", "cdrom"})
SLAB_CORE_PREFIXES = ("filemap_", "__filemap_", "page_cache_", "bdev_", "blkdev_", "blk_",
                      "__blk_", "bio_", "__bio_", "submit_bio", "mpage_", "block_", "readahead")
SLAB_RANGES = 64  # FP_SLAB_RANGES
LIB_RANGES = 8  # FP_LIB_RANGES


def _symbol_index(names, name: str) -> int | None:
    """Index of a symbol in names.PackedNames (one blob, an offsets array) by a search of the
    blob in C: decoding 120k names one by one takes a tenth of a second."""
    blob, offs, want = getattr(names, "blob", None), getattr(names, "offsets", None), name.encode()
    if blob is None or offs is None:
        return next((i for i, n in enumerate(names) if n == name), None)
    at = blob.find(want)
    while at >= 0:
        i = bisect.bisect_left(offs, at)
        if i < len(offs) - 1 and offs[i] == at and offs[i + 1] == at + len(want):
            return i
        at = blob.find(want, at + 1)
    return None


def _prefix_hits(names, first: int, last: int, prefixes: tuple) -> list[int]:
    """Sorted indexes i in [first, last) of the names starting with one of `prefixes`.
    In a PackedNames each prefix is found in the blob by C searches, and a find counts
    where a name starts there: a Python step a symbol took 0.1 s for 120k symbols (0.3 s
    for the slab and library ranges together), several times that under TCG, while the
    boot waited."""
    blob, offs = getattr(names, "blob", None), getattr(names, "offsets", None)
    if blob is None or offs is None:
        return [i for i in range(first, last) if names[i].startswith(prefixes)]
    if first >= last:
        return []
    hits = set()
    start, stop = offs[first], offs[last]
    for pre in dict.fromkeys(p.encode() for p in prefixes):
        at = blob.find(pre, start, stop)
        while at >= 0:
            i = bisect.bisect_left(offs, at, first, last)
            if i < last and offs[i] == at and offs[i + 1] - at >= len(pre):
                hits.add(i)
            at = blob.find(pre, at + 1, stop)
    return sorted(hits)


def _merge_to(ranges: list, limit: int) -> list:
    """Close the smallest gaps between sorted ranges until at most `limit` are left."""
    if len(ranges) <= limit:
        return ranges
    gaps = sorted(range(len(ranges) - 1), key=lambda j: ranges[j + 1][0] - ranges[j][1])
    close = set(gaps[:len(ranges) - limit])
    merged = [ranges[0]]
    for j in range(1, len(ranges)):
        if j - 1 in close:
            merged[-1][1] = ranges[j][1]
        else:
            merged.append(ranges[j])
    return merged


def _core_ranges(ksyms, prefixes: tuple) -> tuple[tuple[int, int] | None, list[list[int]]]:
    """(_stext, _etext) and the merged ranges of core-kernel functions named by `prefixes`."""
    addrs, names, mods = ksyms.addrs, ksyms.names, ksyms.modules
    lo = hi = None
    for name in ("_stext", "_etext"):
        i = _symbol_index(names, name)
        if i is None:
            return None, []
        lo, hi = (addrs[i], hi) if name == "_stext" else (lo, addrs[i])
    ranges: list[list[int]] = []
    first = bisect.bisect_left(addrs, lo)
    last = min(bisect.bisect_left(addrs, hi), len(addrs) - 1)
    for i in _prefix_hits(names, first, last, prefixes):
        if mods[i] is not None:
            continue
        a = addrs[i]
        end = addrs[i + 1] if addrs[i + 1] > a else a + 1
        if ranges and ranges[-1][1] >= a:
            ranges[-1][1] = max(ranges[-1][1], end)
        else:
            ranges.append([a, end])
    return (lo, hi), ranges


# A library's functions must sit together in the kernel's text to be one range: lib/xz
# does (13 KiB on 6.18); names spread over the text (zstd_* of btrfs, squashfs and lib/zstd)
# would bring hot unrelated code under a stack walk per kmalloc, and are left by call site.
LIB_SPAN_MAX = 64 << 10


def library_ranges(ksyms) -> list[tuple[int, int]]:
    """Core-kernel text of each library (owners.LIBRARY_PREFIXES, grouped by library)
    whose functions lie within LIB_SPAN_MAX of each other: its kmalloc objects are then
    followed with their stacks (at most LIB_RANGES libraries)."""
    from .owners import LIBRARY_PREFIXES

    out: list[tuple[int, int]] = []
    for lib in dict.fromkeys(name for _pre, name in LIBRARY_PREFIXES):
        text, ranges = _core_ranges(ksyms, tuple(p for p, n in LIBRARY_PREFIXES if n == lib))
        if text is None:
            return []
        if ranges and ranges[-1][1] - ranges[0][0] <= LIB_SPAN_MAX:
            out.append((ranges[0][0], ranges[-1][1]))
    return sorted(out)[:LIB_RANGES]


def slab_ranges(ksyms) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """((_stext, _etext), ranges of core-kernel text whose kmalloc objects are followed):
    the functions of SLAB_SUBSYSTEMS and SLAB_CORE_PREFIXES, adjacent ones merged, then
    the nearest merged until SLAB_RANGES are left (a few other functions come along)."""
    from .symbols import PREFIX_SUBSYSTEMS

    # One startswith() a symbol (a C call): the storage prefixes of symbols.subsystem_of
    # (built-in code goes by prefix there too) and the core paths.
    prefixes = tuple(pre for pre, sub in PREFIX_SUBSYSTEMS if sub in SLAB_SUBSYSTEMS) \
        + SLAB_CORE_PREFIXES
    text, ranges = _core_ranges(ksyms, prefixes)
    if text is None:
        return (0, 0), []  # every call site counts as a module's: all followed
    return text, [(a, b) for a, b in _merge_to(ranges, SLAB_RANGES)]
