"""Parsers for the /proc files the recorder samples.

Each function reads one kernel file and returns plain dicts/lists (JSON-ready). They take
the path (or a `proc` root) as an argument so tests can feed fixture text, and they parse
text with `parse_*` helpers that do no I/O.

Light on purpose: imported by the recorder in early boot (stdlib only).
"""

from __future__ import annotations

import os
import re
import time

from .errors import FootprintError

__all__ = [
    "meminfo", "parse_meminfo",
    "vmallocinfo", "parse_vmallocinfo",
    "slabinfo", "parse_slabinfo",
    "zone_max_pfn", "parse_zoneinfo_max_pfn",
    "boottime",
    "own_memory", "release_memory", "no_huge_pages", "slab_summary", "vmalloc_summary", "tracer_files",
]


def _read(path: str) -> str:
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        return f.read()


def _read_root(path: str, what: str) -> str:
    """Read a file that is root-only (mode 0400); a PermissionError becomes a FootprintError."""
    try:
        return _read(path)
    except PermissionError:
        raise FootprintError(f"cannot read {path} ({what}): run footprint as root") from None


# --- /proc/meminfo ---------------------------------------------------------------------


def parse_meminfo(text: str) -> dict[str, int]:
    """`Key:   123 kB` lines → {Key: kB}. Lines without a unit (HugePages_Total) are counts."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        fields = rest.split()
        if not fields:
            continue
        try:
            out[key.strip()] = int(fields[0])
        except ValueError:
            continue
    return out


def meminfo(proc: str = "/proc") -> dict[str, int]:
    """/proc/meminfo (fs/proc/meminfo.c): values in kB (HugePages_* are counts, not kB).

    `Buffers` is the page cache of block-device inodes (nr_blockdev_pages), `Cached`
    the rest of the page cache minus swap cache, `Shmem` tmpfs/shm, `Unevictable`
    includes ramfs pages.
    """
    return parse_meminfo(_read(os.path.join(proc, "meminfo")))


# --- /proc/vmallocinfo -----------------------------------------------------------------

_VMALLOC_RE = re.compile(r"^0x([0-9a-f]+)-0x([0-9a-f]+)\s+(\d+)\s*(\S*)(.*)$")


def parse_vmallocinfo(text: str) -> dict[str, dict[str, int]]:
    """Aggregate vmallocinfo lines by caller symbol.

    A line is `0xSTART-0xEND SIZE CALLER+0xOFF/0xLEN [pages=N] [phys=..] [ioremap] ...`.
    SIZE includes the guard page; `pages=N` counts the pages actually backing the area
    (absent for ioremap/vmap of foreign pages). Returns
    {caller: {"areas", "bytes", "pages", "ioremap"}} where caller is the function name
    without offset ("unknown" when the kernel printed none).
    """
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        m = _VMALLOC_RE.match(line.strip())
        if not m:
            continue
        size = int(m.group(3))
        caller = m.group(4)
        rest = m.group(5)
        if not caller or "=" in caller:
            # No caller printed: the first token is already an attribute (pages=, phys=).
            rest = caller + rest
            caller = "unknown"
        caller = caller.split("+", 1)[0]
        # Module callers print as `func+0x1/0x2 [mod]`.
        mod = re.search(r"\[(\w+)\]", rest)
        if mod:
            caller = f"{caller} [{mod.group(1)}]"
        pages = 0
        pm = re.search(r"\bpages=(\d+)", rest)
        if pm:
            pages = int(pm.group(1))
        row = out.setdefault(caller, {"areas": 0, "bytes": 0, "pages": 0, "ioremap": 0})
        row["areas"] += 1
        row["bytes"] += size
        row["pages"] += pages
        if "ioremap" in rest:
            row["ioremap"] += 1
    return out


def vmallocinfo(proc: str = "/proc") -> dict[str, dict[str, int]]:
    """/proc/vmallocinfo (mm/vmalloc.c, s_show; root only — others see no addresses/callers).

    Sizes in bytes (area size includes one guard page), pages in pages; aggregated by
    caller symbol with parse_vmallocinfo.
    """
    return parse_vmallocinfo(_read_root(os.path.join(proc, "vmallocinfo"), "vmalloc areas"))


# --- /proc/slabinfo --------------------------------------------------------------------


def parse_slabinfo(text: str) -> list[dict[str, object]]:
    """slabinfo 2.1: `name active_objs num_objs objsize objperslab pagesperslab : tunables
    ... : slabdata active_slabs num_slabs sharedavail` → list of dicts with name,
    active_objs, num_objs, objsize (bytes), objperslab, pagesperslab, active_slabs,
    num_slabs, and pages = num_slabs * pagesperslab."""
    rows: list[dict[str, object]] = []
    for line in text.splitlines():
        if not line or line.startswith("slabinfo") or line.startswith("#"):
            continue
        head, _, tail = line.partition(":")
        f = head.split()
        if len(f) < 6:
            continue
        try:
            row: dict[str, object] = {
                "name": f[0],
                "active_objs": int(f[1]),
                "num_objs": int(f[2]),
                "objsize": int(f[3]),
                "objperslab": int(f[4]),
                "pagesperslab": int(f[5]),
            }
        except ValueError:
            continue
        sd = line.split("slabdata")
        active_slabs = num_slabs = 0
        if len(sd) == 2:
            s = sd[1].split()
            if len(s) >= 2:
                active_slabs, num_slabs = int(s[0]), int(s[1])
        row["active_slabs"] = active_slabs
        row["num_slabs"] = num_slabs
        row["pages"] = num_slabs * int(row["pagesperslab"])  # type: ignore[arg-type]
        rows.append(row)
    return rows


def slabinfo(proc: str = "/proc") -> list[dict[str, object]]:
    """/proc/slabinfo (mm/slab_common.c, format 2.1; root only). objsize in bytes, slab
    sizes in pages. With SLUB merging, several caches may report under one name."""
    return parse_slabinfo(_read_root(os.path.join(proc, "slabinfo"), "slab caches"))


# --- /proc/zoneinfo --------------------------------------------------------------------


def parse_zoneinfo_max_pfn(text: str) -> int:
    """Highest pfn + 1 over all zones: max(start_pfn + spanned).

    zoneinfo prints, per zone, `spanned N` (pages) and later `start_pfn: N`; empty zones
    (spanned 0) are skipped.
    """
    best = 0
    spanned: int | None = None
    for line in text.splitlines():
        f = line.split()
        if not f:
            continue
        if f[0] == "Node" and len(f) >= 4 and f[2] == "zone":
            spanned = None
        elif f[0] == "spanned" and len(f) >= 2:
            spanned = int(f[1])
        elif f[0] == "start_pfn:" and len(f) >= 2 and spanned is not None:
            if spanned:
                best = max(best, int(f[1]) + spanned)
    if best == 0:
        raise FootprintError("no zone with start_pfn/spanned in /proc/zoneinfo: check that /proc is mounted")
    return best


def zone_max_pfn(proc: str = "/proc") -> int:
    """/proc/zoneinfo (mm/vmstat.c, zoneinfo_show_print): the highest pfn + 1 of any zone,
    in pages — the size a per-pfn BPF array needs."""
    return parse_zoneinfo_max_pfn(_read(os.path.join(proc, "zoneinfo")))


def parse_zoneinfo_pcp_pages(text: str) -> int:
    """Pages sitting on the per-CPU free lists (`count:` under each zone's `pagesets`).
    They left NR_FREE_PAGES when moved there (mm/page_alloc.c, rmqueue_bulk), so
    MemTotal − MemFree counts them as used though they are free."""
    total = 0
    for line in text.splitlines():
        f = line.split()
        if len(f) == 2 and f[0] == "count:":
            try:
                total += int(f[1])
            except ValueError:
                continue
    return total


def zone_pcp_pages(proc: str = "/proc") -> int:
    """/proc/zoneinfo: free pages held on per-CPU lists, in pages."""
    return parse_zoneinfo_pcp_pages(_read(os.path.join(proc, "zoneinfo")))


# --- clock -----------------------------------------------------------------------------


def boottime() -> float:
    """CLOCK_BOOTTIME in seconds (includes suspend): the clock recordings are stamped with.
    The kernel's bpf_ktime_get_boot_ns() reads the same clock."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


# --- the recorder's own process and the system's totals, as samples carry them ---------


def own_memory() -> dict:
    """The calling process's resident memory (kB) from /proc/self/status: RssAnon,
    RssFile, RssShmem (split out since 4.5) and the peak VmHWM; {} where unreadable."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile", "RssShmem", "VmHWM"):
                    out[key.lower().replace("rss", "") + "_kb"] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return out


def no_huge_pages() -> bool:
    """Keep this process's anonymous memory in small pages: prctl(PR_SET_THP_DISABLE)
    (since 3.15; inherited by fork, kept across execve). With transparent huge pages
    `always` (Debian's default), release_memory() and an interpreter's munmap of part of a
    huge page hand nothing back: the kernel takes those pages off AnonPages and off the
    process's RSS at once, but frees them only when the deferred-split shrinker runs
    (memory pressure, drop_caches) — 5-9 MiB of the recorder's in the 2 GiB guest, in no
    meminfo category and missing from the tracer's own figure. False where refused."""
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl(41, 1, 0, 0, 0) == 0  # PR_SET_THP_DISABLE
    except (OSError, AttributeError):
        return False


def release_memory() -> None:
    """Hand the transient peaks of start-up (kallsyms parsing, the inventory walk) back to
    the kernel (glibc's malloc_trim): the recorder's resident memory is the tracer's own
    cost, read by own_memory()."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def slab_summary() -> dict:
    """/proc/slabinfo as {cache: [active_objs, objsize, pages]}; {} where unreadable
    (it is root-only since 2.6.x)."""
    try:
        return {r["name"]: [r["active_objs"], r["objsize"], r["pages"]] for r in slabinfo()}
    except (FootprintError, OSError, KeyError):
        return {}


def vmalloc_summary() -> dict:
    """/proc/vmallocinfo as {caller: pages}, callers with pages only; {} where unreadable."""
    try:
        return {caller: v["pages"] for caller, v in vmallocinfo().items() if v["pages"]}
    except (FootprintError, OSError):
        return {}


MANIFEST = "/usr/lib/footprint/manifest"  # in an initramfs built with the dracut module


def tracer_files() -> list[list]:
    """(dev, ino, path) of the files this process maps (/proc/self/maps: python, libbpf
    or bcc and LLVM) and, in an initramfs built with footprint's dracut module, of every
    file the module put there (its manifest: python's modules it imported once, the
    objects, the scripts). Their page cache is the tracer's own cost, not the storage
    stack's."""
    seen = {}
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) < 6 or parts[4] == "0":
                    continue
                major, minor = (int(x, 16) for x in parts[3].split(":"))
                key = (f"{major}:{minor}", int(parts[4]))
                seen.setdefault(key, parts[5].strip())
    except OSError:
        pass
    try:
        with open(MANIFEST) as f:
            listed = [line.rstrip("\n") for line in f if line.startswith("/")]
    except OSError:
        listed = []
    for path in listed[:100_000]:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if st.st_mode & 0o170000 == 0o100000:  # regular files: links hold no pages
            seen.setdefault((f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}", st.st_ino), path)
    return [[d, i, p] for (d, i), p in seen.items()]
