"""Load footprint's BPF program, adapted to the running kernel at attach time.

Two loaders run the same logic (bpf/footprint_logic.h): libbpf loads the CO-RE object
built ahead of time (bpf/footprint.bpf.o, scripts/build-bpf) on kernels with BTF; bcc
compiles bpf/footprint.c at attach time where there is no BTF (or when asked).

What the kernel offers is read, not assumed: tracepoint formats from tracefs decide which
probes are compiled in or loaded (and, for bcc, whether filemap events carry a folio
order), /proc/zoneinfo sizes the per-pfn array, and bcc's header tree is found the way bcc
would, plus a fallback for kernels that ship none (these machines' 6.18): a close Debian
tree in the cache. This module plans; tracer/programs.py loads and attaches by the plan,
tracer/kprobes.py decides the kprobe extras, tracer/slabfilter.py the --slab kmalloc ranges.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from . import bpffiles
from .bpffiles import bpf_file
from .errors import FootprintError
from .kprobes import VMALLOC_KPROBES, plan_kprobes
from .progkinds import kind_of, plan_program_kinds

TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
CACHE_DIR = os.environ.get("FOOTPRINT_CACHE", "/var/cache/footprint")
MIGRATE_MOVABLE = 1  # enum migratetype: UNMOVABLE, MOVABLE, RECLAIMABLE, ...

# (group, event): required ones fail the load when absent; the rest are extras.
REQUIRED_TRACEPOINTS = (
    ("filemap", "mm_filemap_add_to_page_cache"),
    ("filemap", "mm_filemap_delete_from_page_cache"),
    ("kmem", "mm_page_alloc"),
    ("kmem", "mm_page_free"),
)
# Which optional events each --slab mode attaches. Named caches (kmem_cache_alloc) carry
# their owner in their name and /proc/slabinfo counts them exactly, so by default only
# the anonymous kmalloc-* objects are followed by address (a preallocated map: ~72 bytes
# per tracked object). "all" follows every object, at that cost per object.
_PERCPU = ("percpu_alloc_percpu", "percpu_free_percpu")
SLAB_MODES = {
    "off": _PERCPU,
    "kmalloc": ("kmalloc", "kfree") + _PERCPU,
    "all": ("kmalloc", "kfree", "kmem_cache_alloc", "kmem_cache_free") + _PERCPU,
}
OPTIONAL_TRACEPOINTS = (
    ("kmem", "kmalloc"),
    ("kmem", "kfree"),
    ("kmem", "kmem_cache_alloc"),
    ("kmem", "kmem_cache_free"),
    ("percpu", "percpu_alloc_percpu"),
    ("percpu", "percpu_free_percpu"),
    ("oom", "mark_victim"),
    ("vmalloc", "alloc_vmap_area"),  # 6.3+: vmalloc areas by stack (owner of a library's)
    ("vmalloc", "free_vmap_area_noflush"),
)
# Attached whatever --slab says: they cost nothing until they fire.
ALWAYS_OPTIONAL = {"mark_victim", "alloc_vmap_area", "free_vmap_area_noflush"}
OOM_SLOTS = 16  # the last victims kept in the kernel between two samples
ST_MAX = 20  # enum fp_stat in bpf/footprint_types.h
LOADERS = ("auto", "libbpf", "bcc")


@dataclass
class MapSizes:
    """Capacity of each BPF map; a full map is counted, never silent. Every map is
    preallocated (nothing is allocated on the tracing path: see bpf/footprint_types.h),
    so each is sized by what the kernel holds at attach, not by RAM."""

    files: int = 0  # 0: from the files with page cache at attach (resolved)
    stacks: int = 16384  # hash buckets, split over two stack maps (see bpf/footprint.c)
    stack_depth: int = 20
    objs: int = 0  # 0: 16384 live slab objects (--slab kmalloc: storage call sites), 65536 (all)
    sites: int = 2048
    chunks: int = 0  # 0: from the kernel's unmovable pageblocks at attach (resolved)

    @property
    def stacks_per_map(self) -> int:
        """Each of the two stack maps: half the stacks, a power of two (the kernel rounds
        the buckets up to one, and ids above the map size would run into the second)."""
        return 1 << max(5, (max(1, self.stacks // 2) - 1).bit_length())

    def resolved(self, max_pfn: int, slab: str = "kmalloc",
                 files_now: int | None = None) -> "MapSizes":
        """Sizes for this kernel now. Files: those with page cache now (`files_now`, the
        recorder has it from the kernel baseline; else guessed by _files_now), and
        half as many again plus 8192 for what comes, at least 16384 (an initramfs has a
        few hundred; the booted system reads thousands more). Chunks of the kernel pages' stack
        ids: the pageblocks of unmovable and reclaimable type (/proc/pagetypeinfo) twice
        over, plus 256. Objects: 16384 at the storage stack's call sites, 65536 with
        `--slab all` (every object)."""
        from dataclasses import replace

        if files_now is None:
            files_now = _files_now()
        files = self.files or min(1 << 20, max(16384, files_now * 3 // 2 + 8192))
        total_chunks = max(1, -(-max_pfn // 512))
        chunks = self.chunks or min(total_chunks, 2 * _kernel_pageblocks(total_chunks) + 256)
        objs = self.objs or (65536 if slab == "all" else 16384)
        return replace(self, files=files, chunks=chunks, objs=objs)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _kernel_release() -> str:
    return os.uname().release  # uname -r


def _files_now() -> int:
    """Files with page cache now, guessed: a third of the in-core inodes (fs/inode.c's
    nr_inodes - nr_unused, /proc/sys/fs/inode-nr: every file with page cache has one;
    41k of 119k had pages on this 24 GiB host)."""
    try:
        used, unused = (int(x) for x in _read("/proc/sys/fs/inode-nr").split()[:2])
        return max(0, used - unused) // 3
    except (OSError, ValueError):
        return 65536


def _kernel_pageblocks(default_total: int) -> int:
    """Pageblocks whose migratetype is Unmovable or Reclaimable, summed over zones
    (/proc/pagetypeinfo, root only: 2.6.24+); an eighth of all when unreadable."""
    try:
        text = _read("/proc/pagetypeinfo")
    except OSError:
        return default_total // 8
    head = re.search(r"^Number of blocks type\s+(.*)$", text, re.M)
    if not head:
        return default_total // 8
    cols = head.group(1).split()
    want = [i for i, c in enumerate(cols) if c in ("Unmovable", "Reclaimable")]
    total = 0
    for line in text[head.end():].splitlines():
        m = re.match(r"^Node\s+\d+, zone\s+\S+\s+(.*)$", line)
        if m:
            nums = m.group(1).split()
            total += sum(int(nums[i]) for i in want if i < len(nums))
    return total


@dataclass
class Headers:
    """The kernel header tree bcc compiles against (unused by libbpf's CO-RE object)."""

    path: str | None  # None: bcc finds them itself (build dir or kheaders)
    source: str  # how they were found
    matches_kernel: bool
    needed: bool = True  # libbpf's CO-RE object needs none

    def describe(self) -> str:
        """One line for the log and the header: where the headers come from, and whether
        they are the running kernel's own."""
        if not self.needed:
            return self.source
        where = self.path or "bcc default"
        match = "matches the running kernel" if self.matches_kernel else (
            "does NOT match the running kernel: tracepoint arguments only, struct layouts from BTF")
        return f"{where} ({self.source}; {match})"


@dataclass
class Plan:
    """What will be compiled and attached, decided from the running kernel."""

    tracefs: str
    kernel: str
    headers: Headers
    max_pfn: int
    sizes: MapSizes
    tracepoints: list[tuple[str, str]] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    kprobes: list[str] = field(default_factory=list)  # optional extras, attached by bcc
    kprobes_missing: list[tuple[str, str]] = field(default_factory=list)  # (function, why)
    kprobe_defines: dict[str, int] = field(default_factory=dict)  # struct offsets from BTF
    folio_order: bool = False
    percpu_call_site: bool = False
    oom_victim_comm: bool = False  # oom:mark_victim names its victim (6.18 does, 6.1 not)
    slab: str = "kmalloc"  # off | kmalloc | all (see SLAB_MODES)
    loader: str = "bcc"  # which one loads the program: libbpf (CO-RE object) or bcc
    bpf_object: str | None = None  # the CO-RE object libbpf loads
    programs: str = "auto"  # auto | tp_btf | tracepoint: the kind the hot events run as
    btf_events: list[tuple[str, str]] = field(default_factory=list)  # hot events as tp_btf
    btf_fallback: str | None = None  # why the hot events run as classic tracepoints

    def map_entries(self) -> dict[str, int]:
        """Each map's capacity, as bpf/footprint.c declares them for bcc; libbpf sets the
        same on the CO-RE object before load."""
        per_map = self.sizes.stacks_per_map
        return {"pfn_state": self.pfn_words(), "kpage_ids": self.sizes.chunks, "chunk_zero": 1,
                "slab_filter": 1, "stats": ST_MAX, "files": self.sizes.files,
                "stacks": per_map, "stacks_alt": per_map, "stack_pages": 2 * per_map + 1,
                "objs": self.sizes.objs, "sites": self.sizes.sites, "oom_victims": OOM_SLOTS}

    def pfn_words(self) -> int:
        """u64 words of the per-pfn array: 32 pfns each (2 bits a pfn)."""
        return -(-self.max_pfn // 32)

    def cflags(self) -> list[str]:
        """bcc's -D flags: the map sizes, the pfn range and the optional events planned."""
        flags = [
            f"-DFP_MAX_PFN={self.max_pfn}",
            f"-DFP_PFN_WORDS={self.pfn_words()}",
            f"-DFP_CHUNKS_MAX={self.sizes.chunks}",
            f"-DFP_FILES_MAX={self.sizes.files}",
            f"-DFP_STACKS_MAX={self.sizes.stacks_per_map}",
            f"-DFP_STACK_DEPTH={self.sizes.stack_depth}",
            f"-DFP_OBJS_MAX={self.sizes.objs}",
            f"-DFP_SITES_MAX={self.sizes.sites}",
            f"-DFP_MIGRATE_MOVABLE={MIGRATE_MOVABLE}",
            f"-DFP_OOM_SLOTS={OOM_SLOTS}",
        ]
        if self.percpu_call_site:
            flags.append("-DFP_HAS_PERCPU_CALL_SITE")
        if self.oom_victim_comm:
            flags.append("-DFP_OOM_VICTIM_COMM")
        if self.folio_order:
            flags.append("-DFP_HAS_FOLIO_ORDER")
        if "shmem_add_to_page_cache" in self.kprobes:
            flags.append("-DFP_KPROBE_SHMEM")
            flags += [f"-D{k}={v}" for k, v in sorted(self.kprobe_defines.items())]
        flags += [f"-DFP_HAS_{g}_{e}" for g, e in self.tracepoints]
        return flags

    def probes(self) -> list[dict]:
        """The probe list the report prints: what was active and what was not."""
        rows = [{"probe": f"{kind_of(self, g, e)}:{g}:{e}", "active": True} for g, e in self.tracepoints]
        rows += [{"probe": f"tracepoint:{g}:{e}", "active": False, "why": "absent in this kernel"}
                 for g, e in self.missing]
        rows += [{"probe": f"tracepoint:{g}:{e}", "active": False, "why": f"--slab {self.slab}"}
                 for g, e in self.skipped]
        rows += [{"probe": f"kprobe:{f}", "active": True} for f in self.kprobes]
        rows += [{"probe": f"kprobe:{f}", "active": False, "why": why}
                 for f, why in self.kprobes_missing]
        return rows


def bpf_source() -> str:
    """The bcc frontend, bpf/footprint.c, with the shared logic it #includes put in place
    (bcc compiles one text)."""
    text = _read(bpf_file("footprint.c"))
    return re.sub(r'^#include "(footprint_\w+\.h)"$',
                  lambda m: _read(bpf_file(m.group(1))), text, flags=re.M)


def bpf_object() -> str | None:
    """Path of the CO-RE object built by scripts/build-bpf (FOOTPRINT_BPF_OBJECT
    overrides), None if it was not built."""
    path = os.environ.get("FOOTPRINT_BPF_OBJECT") or bpf_file("footprint.bpf.o")
    return path if os.path.isfile(path) else None


def choose_loader(requested: str = "auto") -> tuple[str, str | None]:
    """(loader, object path): libbpf where the kernel has BTF, the object exists and
    libbpf.so.1 loads, else bcc; a forced libbpf that cannot work is a one-line error."""
    from . import libbpf

    if requested not in LOADERS:
        raise FootprintError(f"unknown --loader {requested!r}: use one of {', '.join(LOADERS)}")
    if requested == "bcc":
        return "bcc", None
    obj = bpf_object()
    has_btf = os.path.exists(bpffiles.KERNEL_BTF)
    if requested == "libbpf":
        if not has_btf:
            raise FootprintError(f"--loader libbpf needs the kernel's BTF ({bpffiles.KERNEL_BTF} is missing: "
                                 "CONFIG_DEBUG_INFO_BTF): use --loader bcc")
        if obj is None:
            raise FootprintError("--loader libbpf needs the BPF object footprint.bpf.o, which is "
                                 "not built: run scripts/build-bpf, or use --loader bcc")
        libbpf.lib()  # its own one-line error
    return ("libbpf", obj) if has_btf and obj and libbpf.available() else ("bcc", None)


def tracefs() -> str:
    """The tracefs mount point, mounting it when nothing has (early boot, minimal hosts)."""
    for path in TRACEFS_CANDIDATES:
        if os.path.isdir(os.path.join(path, "events")):
            return path
    try:
        os.makedirs(TRACEFS_CANDIDATES[0], exist_ok=True)
        rc = os.system(f"mount -t tracefs tracefs {TRACEFS_CANDIDATES[0]} 2>/dev/null")
    except OSError:
        rc = 1
    if rc == 0 and os.path.isdir(os.path.join(TRACEFS_CANDIDATES[0], "events")):
        return TRACEFS_CANDIDATES[0]
    raise FootprintError("tracefs is not mounted and could not be: mount -t tracefs tracefs /sys/kernel/tracing")


def tracepoint_fields(tfs: str, group: str, event: str) -> list[str] | None:
    """Field names of a tracepoint from its tracefs `format` file, None if absent."""
    try:
        text = _read(os.path.join(tfs, "events", group, event, "format"))
    except OSError:
        return None
    return re.findall(r"field:[^;]*?\b(\w+)(?:\[\w*\])?;", text)


def kernel_header_release(tree: str) -> str | None:
    """The kernel release a header tree was made for (its utsrelease.h or
    kernel.release), None when it says nothing."""
    for rel in ("include/generated/utsrelease.h", "include/config/kernel.release"):
        try:
            text = _read(os.path.join(tree, rel))
        except OSError:
            continue
        m = re.search(r'"([^"]+)"', text)
        return m.group(1) if m else text.strip()
    return None


def find_headers(explicit: str | None = None) -> Headers:
    """Header tree for bcc: explicit, BCC_KERNEL_SOURCE, the kernel's own, kheaders, cache."""
    kver = _kernel_release()
    candidates: list[tuple[str, str | None]] = []
    if explicit:
        candidates.append(("--kernel-headers", explicit))
    if os.environ.get("BCC_KERNEL_SOURCE"):
        candidates.append(("BCC_KERNEL_SOURCE", os.environ["BCC_KERNEL_SOURCE"]))
    for source, path in candidates:
        tree = str(path)
        if not os.path.isdir(os.path.join(tree, "include")):
            raise FootprintError(f"{source} {path} is not a kernel header tree (no include/): "
                                 "point it at a tree like /usr/src/linux-headers-VERSION")
        return Headers(tree, source, kernel_header_release(tree) == kver)
    if os.path.isdir(f"/lib/modules/{kver}/build/include"):
        return Headers(None, f"/lib/modules/{kver}/build", True)
    if os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return Headers(None, "/sys/kernel/kheaders.tar.xz", True)
    cached = os.path.join(CACHE_DIR, "headers")
    if os.path.isdir(os.path.join(cached, "include")):
        return Headers(cached, f"fallback tree {cached}", kernel_header_release(cached) == kver)
    raise FootprintError(
        f"no kernel headers for {kver}: install linux-headers-{kver}, or run scripts/setup "
        "(it caches a close tree), or pass --kernel-headers DIR")


def plan(sizes: MapSizes | None = None, kernel_headers: str | None = None,
         max_pfn: int | None = None, slab: str = "kmalloc", loader: str = "auto",
         files_now: int | None = None, programs: str = "auto") -> Plan:
    """Decide what to load for the running kernel; raises FootprintError if it cannot work.
    `files_now`: files with page cache now, if known (sizes the files table)."""
    from .procfs import zone_max_pfn

    tfs = tracefs()
    which, obj = choose_loader(loader)
    headers = (find_headers(kernel_headers) if which == "bcc"
               else Headers(None, "none needed (CO-RE object, relocated by libbpf)", True, needed=False))
    max_pfn = max_pfn or zone_max_pfn()
    p = Plan(tracefs=tfs, kernel=_kernel_release(), headers=headers,
             max_pfn=max_pfn, sizes=(sizes or MapSizes()).resolved(max_pfn, slab, files_now),
             slab=slab, loader=which, bpf_object=obj, programs=programs)
    if slab not in SLAB_MODES:
        raise FootprintError(f"unknown --slab mode {slab!r}: use one of {', '.join(SLAB_MODES)}")
    for group, event in REQUIRED_TRACEPOINTS:
        fields = tracepoint_fields(tfs, group, event)
        if fields is None:
            raise FootprintError(
                f"tracepoint {group}:{event} is missing in kernel {p.kernel}: footprint needs "
                "CONFIG_TRACEPOINTS with the kmem and filemap events")
        p.tracepoints.append((group, event))
        if group == "filemap" and "order" in fields:
            p.folio_order = True
    plan_kprobes(p)
    for group, event in OPTIONAL_TRACEPOINTS:
        fields = tracepoint_fields(tfs, group, event)
        if fields is None:
            p.missing.append((group, event))
            continue
        if group == "vmalloc" and set(VMALLOC_KPROBES) <= set(p.kprobes):
            p.skipped.append((group, event))  # the kprobes follow vmalloc (test hook)
            continue
        if event not in SLAB_MODES[slab] and event not in ALWAYS_OPTIONAL:
            p.skipped.append((group, event))
            continue
        p.tracepoints.append((group, event))
        if event == "percpu_alloc_percpu" and "call_site" in fields:
            p.percpu_call_site = True
        if event == "mark_victim" and "comm" in fields:
            p.oom_victim_comm = True
    plan_program_kinds(p)
    return p
