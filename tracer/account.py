"""The account: every page in use, by subsystem and storage layer, adding up to meminfo.

The frame is /proc/meminfo's own categories, because they partition memory in use
(MemTotal − MemFree) the way the kernel counts it: page cache (Cached + Buffers, which
include Shmem), AnonPages, Slab, KernelStack, PageTables, VmallocUsed, Percpu. Inside each
category the traced owners take their share and a named remainder keeps the category's
kernel total; what no category explains is the `unattributed` row. So the rows add up to
MemTotal − MemFree by construction, and the unattributed share measures what is unknown.

 - page cache: per (s_dev, inode) from the filemap tracepoints plus the baseline
   inventory, resolved through the storage topology to a file system layer; a page
   belongs to its mapping, never to the allocation stack (tracer/pagecache.py).
 - slab: named caches by name (from /proc/slabinfo); kmalloc objects by call site (BPF).
 - vmalloc: /proc/vmallocinfo by caller; thread stacks left to KernelStack.
 - kernel pages: non-movable page allocations outside slab/vmalloc/page tables/percpu,
   by allocation stack (BPF); the only category meminfo has no line for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd

from .pagecache import chains, file_rows, source_of, topology_at
from .recording import Recording
from .symbols import subsystem_of

# Slab cache name prefix → subsystem. Named caches carry their owner in their name.
CACHE_SUBSYSTEMS = (
    ("squashfs", "squashfs"), ("ext4", "ext4"), ("jbd2", "ext4"), ("isofs", "iso9660"),
    ("dm_", "device-mapper"), ("dm-", "device-mapper"), ("kcopyd", "device-mapper"),
    ("io", "block"), ("bio", "block"), ("blkdev", "block"), ("request_queue", "block"),
    ("biovec", "block"), ("buffer_head", "buffers"), ("ovl_", "overlay"),
    ("shmem", "shmem"), ("fuse", "fuse"), ("fat", "vfat"), ("btrfs", "btrfs"),
    ("xfs", "xfs"), ("dentry", "vfs"), ("inode_cache", "vfs"), ("proc_inode", "vfs"),
    ("filp", "vfs"), ("radix_tree_node", "page cache (xarray)"), ("xa_node", "page cache (xarray)"),
    ("vm_area_struct", "mm"), ("anon_vma", "mm"), ("mm_struct", "mm"), ("task_struct", "tasks"),
    ("sock", "net"), ("skbuff", "net"), ("TCP", "net"), ("UDP", "net"), ("kernfs", "sysfs"),
    ("bpf", "tracer"),
)
KMALLOC_CACHE = re.compile(r"^(dma-|)kmalloc-(rcl-|cg-|dma-|rnd-\d+-)?\d+k?$")
# The subsystems that exist to stack one storage layer on another (images in files,
# compressed or read-only file systems, snapshots): what a live system adds to a disk.
STACK_SUBSYSTEMS = ("squashfs", "device-mapper", "loop", "iso9660", "erofs", "overlay")
MIB = 1 << 20


def cache_subsystem(name: str) -> str:
    """The subsystem that owns a named slab cache ("squashfs_inode_cache" → squashfs), by
    the cache-name prefixes the kernel's subsystems use in kmem_cache_create()."""
    low = name.lower()
    for prefix, sub in CACHE_SUBSYSTEMS:
        if low.startswith(prefix):
            return sub
    return "kernel (other caches)"


def _owner_subsystem(owner: str) -> str:
    """Stack/site owners: subsystems as they are; bpf is the tracer's own maps."""
    if owner == "bpf":
        return "tracer"
    if owner.startswith("kernel:") or owner in ("kernel", "unknown", "module-init"):
        return "kernel (other)"
    return owner


@dataclass
class Account:
    """The account at one moment: rows, files, reconciliation, double caching."""

    t: float
    page_size: int
    rows: pd.DataFrame
    files: pd.DataFrame
    meminfo: dict
    chains: list = field(default_factory=list)
    probes: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    squashfs: dict = field(default_factory=dict)  # squashfs.explain of the mounts
    notes: list = field(default_factory=list)

    def pages_to_mib(self, pages) -> float:
        """Pages (a number or a column) in MiB, at the recorded machine's page size."""
        return pages * self.page_size / MIB

    def by(self, what: str) -> pd.DataFrame:
        """Rows grouped by "subsystem", "layer" (subsystem+layer+kind) or "kind"."""
        keys = {"subsystem": ["subsystem"], "layer": ["subsystem", "layer", "kind"],
                "kind": ["kind"]}[what]
        grouped = self.rows.groupby(keys, sort=False, dropna=False)
        g = grouped[["resident_pages", "peak_pages", "allocated_pages"]].sum().reset_index()
        if what == "layer":  # where each row's figure comes from
            g["source"] = grouped["source"].agg(lambda s: "+".join(sorted(set(s)))).values
        g["resident_mib"] = self.pages_to_mib(g["resident_pages"])
        return g.sort_values("resident_pages", ascending=False, kind="stable").reset_index(drop=True)


def kb_pages(meminfo: dict, name: str, page_size: int) -> int:
    """A /proc/meminfo field (kB) in pages of `page_size` bytes; 0 where absent."""
    return int(meminfo.get(name, 0)) * 1024 // page_size


def build(rec: Recording, index: int = -1) -> Account:
    """The account at sample `index` (default: the last): rows by subsystem, layer and
    kind that add up to MemTotal − MemFree of that sample, the files, the reconciliation
    with meminfo, the chains that cache the same data at several layers. Raises
    FootprintError when the recording holds no sample."""
    state = rec.state(index)
    if state is None:
        from .errors import FootprintError

        raise FootprintError(f"recording {rec.path} holds no sample: record for at least "
                             "one interval")
    ps = int(rec.header.get("page_size", 4096))
    mi = state["meminfo"]
    topo = topology_at(rec, state["t"])
    files = file_rows(rec, state, topo)
    rows: list[dict] = []

    def add(subsystem, layer, kind, pages, peak=None, allocated=0, source="meminfo"):
        rows.append({"subsystem": subsystem, "layer": layer, "kind": kind,
                     "resident_pages": int(pages), "peak_pages": int(peak if peak is not None else pages),
                     "allocated_pages": int(allocated), "source": source})

    # --- page cache: files by layer (the remainders come with the other categories).
    if len(files):
        grouped = files.groupby(["subsystem", "layer", "kind"], sort=False)[
            ["resident_pages", "peak_pages", "allocated_pages", "baseline_pages"]].sum().reset_index()
        measured = set(files.loc[files["source"] == "measured", "layer"])  # tmpfs: counted
        for r in grouped.itertuples(index=False):
            add(r.subsystem, r.layer, r.kind, r.resident_pages, r.peak_pages, r.allocated_pages,
                source="measured" if r.layer in measured else source_of(
                    r.baseline_pages, [r.resident_pages - r.baseline_pages, 0, r.allocated_pages]))
    seen_shmem = int(files.loc[files["kind"] == "shmem", "resident_pages"].sum()) if len(files) else 0
    seen_cache = int(files["resident_pages"].sum()) - seen_shmem if len(files) else 0
    rows += category_rows(rec, state, ps, seen_cache, seen_shmem)
    nonfree = kb_pages(mi, "MemTotal", ps) - kb_pages(mi, "MemFree", ps)
    unattributed = rows[-1]["resident_pages"]
    accounted = nonfree - unattributed

    df = pd.DataFrame(rows)
    df = df[(df["resident_pages"] != 0) | (df["peak_pages"] != 0)].reset_index(drop=True)
    df["resident_mib"] = df["resident_pages"] * ps / MIB
    _add_peaks(rec, df, ps)
    reconciliation = {
        "memtotal_mib": kb_pages(mi, "MemTotal", ps) * ps / MIB,
        "nonfree_mib": nonfree * ps / MIB,
        "used_mib": (kb_pages(mi, "MemTotal", ps) - kb_pages(mi, "MemAvailable", ps)) * ps / MIB,
        "accounted_mib": accounted * ps / MIB,
        "unattributed_mib": unattributed * ps / MIB,
        "unattributed_pct": 100.0 * unattributed / nonfree if nonfree else 0.0,
        "categories_mib": {k: int(mi.get(k, 0)) / 1024 for k in (
            "Cached", "Buffers", "Shmem", "AnonPages", "Slab", "SReclaimable", "SUnreclaim",
            "KernelStack", "PageTables", "VmallocUsed", "Percpu", "Unevictable", "Mlocked")},
    }
    acc = Account(t=state["t"], page_size=ps, rows=df, files=files, meminfo=reconciliation,
                  probes=rec.header.get("plan", {}).get("probes", []), stats=state["stats"])
    acc.chains = chains(topo, files, ps) if topo is not None else []
    acc.squashfs = _squashfs_view(rec, state, df, ps)
    if not rec.header.get("plan", {}).get("headers_match_kernel", True):
        acc.notes.append("kernel headers do not match the running kernel: only tracepoint "
                         "arguments were used, and struct layouts from the kernel's BTF")
    if rec.inventories:
        n = sum(len(i["files"]) for i in rec.inventories)
        acc.notes.append(f"{n} files were inventoried at attach (pages resident before tracing, "
                         "no history); the rest is traced")
    return acc


UNMAPPED_HUGE = "huge pages' unmapped parts (split on reclaim)"


def unmapped_anon_pages(meminfo: dict, ps: int) -> int:
    """Anonymous pages on the LRU that no page table maps: Active(anon) + Inactive(anon)
    − AnonPages − Shmem, at least 0. They are in no other /proc/meminfo category.

    Mostly the unmapped subpages of partly unmapped anonymous huge pages (a process's
    munmap or MADV_DONTNEED of part of a THP, e.g. glibc trimming its heap): the kernel
    takes each unmapped subpage off NR_ANON_MAPPED (AnonPages) at once, while the whole
    huge page stays on the anonymous LRU, queued for the deferred_split shrinker, until
    memory pressure or drop_caches splits it and frees those subpages (mm/huge_memory.c
    deferred_split_scan, since 4.5; folio-based the same in 6.1 and 6.18). Shmem pages are
    on the same LRU (swap-backed), hence their subtraction; unmapped swap-cache pages, if
    any, count here too. Mlocked anonymous pages sit on the unevictable LRU instead, so
    with mlock in use this is an underestimate, never an overestimate. The LRU counters
    are per-CPU batched, hence the floor at 0."""
    lru = kb_pages(meminfo, "Active(anon)", ps) + kb_pages(meminfo, "Inactive(anon)", ps)
    return max(0, lru - kb_pages(meminfo, "AnonPages", ps) - kb_pages(meminfo, "Shmem", ps))


def category_rows(rec: Recording, state: dict, ps: int, seen_cache: int, seen_shmem: int) -> list[dict]:
    """Every row but the per-file page cache, given the pages those file rows hold
    (seen_cache, seen_shmem): the page-cache remainders, slab, vmalloc, kernel pages,
    meminfo's other categories, the per-CPU free lists, and last the unattributed rest
    of MemTotal − MemFree. Shared by build() and the timeline (one arithmetic).

    Relies on /proc/meminfo's categories partitioning memory in use: Cached + Buffers
    (Shmem inside Cached), AnonPages, Slab, KernelStack, PageTables, VmallocUsed (0 from
    4.4 to 5.2, real again since 5.3), Percpu (since 4.16), SecPageTables (since 6.0) and
    Hugetlb; a field the kernel does not print counts 0."""
    mi = state["meminfo"]
    rows: list[dict] = []

    def add(subsystem, layer, kind, pages, peak=None, allocated=0, source="meminfo"):
        rows.append({"subsystem": subsystem, "layer": layer, "kind": kind,
                     "resident_pages": int(pages), "peak_pages": int(peak if peak is not None else pages),
                     "allocated_pages": int(allocated), "source": source})

    # --- the rest of Cached+Buffers (which include Shmem) beyond the files seen.
    file_pages = kb_pages(mi, "Cached", ps) + kb_pages(mi, "Buffers", ps)
    shmem = kb_pages(mi, "Shmem", ps)
    add("shmem", "tmpfs, shm (not traced per file)", "shmem", max(0, shmem - seen_shmem))
    add("page cache", "files not seen by the tracer", "page-cache",
        max(0, file_pages - shmem - seen_cache))

    # --- slab: named caches by name, kmalloc objects by call site, remainder.
    slab_total = kb_pages(mi, "Slab", ps)
    named = {}
    for name, (_active, _objsize, pages) in state["slab"].items():
        if not KMALLOC_CACHE.match(name):
            sub = cache_subsystem(name)
            named[sub] = named.get(sub, 0) + pages
    for sub, pages in named.items():
        add(sub, "slab caches", "slab", pages)
    traced_slab = _by_owner(
        (rec.sites.get(key, {}).get("owner") or "kernel", c) for key, c in state["sites"].items()
        if rec.sites.get(key, {}).get("kind", key.split(":", 1)[0]) == "slab")
    for sub, (res, peak, alloc) in traced_slab.items():
        if res > 0:
            add(sub, "kmalloc objects", "slab", res // ps, peak // ps, alloc // ps, source="traced")
    # Objects library code kmalloc'ed, by the stack's owner, the library named.
    via_lib: dict[tuple, list[int]] = {}
    for key, c in state["sites"].items():
        if key.startswith("kstack:") and c[0] > 0:
            info = rec.sites.get(key, {})
            k = (_owner_subsystem(info.get("owner") or "kernel"),
                 f"kmalloc via {info['library']}" if info.get("library") else "kmalloc objects")
            a = via_lib.setdefault(k, [0, 0, 0])
            a[0], a[1], a[2] = a[0] + c[0], a[1] + c[1], a[2] + c[2]
    for (sub, layer), (res, peak, alloc) in via_lib.items():
        add(sub, layer, "slab", res // ps, peak // ps, alloc // ps, source="traced")
    slab_seen = sum(named.values()) + sum(v[0] // ps for v in traced_slab.values() if v[0] > 0) \
        + sum(v[0] // ps for v in via_lib.values())
    add("slab", "free objects, untraced kmalloc", "slab", max(0, slab_total - slab_seen))

    # --- vmalloc by caller; thread stacks belong to KernelStack.
    vm_total = kb_pages(mi, "VmallocUsed", ps)
    vm_rows: dict[str, int] = {}
    stack_vm = 0
    traced_vm = _vmap_owners(rec, state, ps)
    for caller, pages in state["vmalloc"].items():
        name, _, mod = caller.partition(" [")
        if name in ("alloc_thread_stack_node", "dup_task_struct"):
            stack_vm += pages
            continue
        # Areas traced by stack (vmalloc tracepoints) go to the stack's owner, at most
        # what vmallocinfo still shows for the caller; the rest to the caller's subsystem.
        for (sub, layer), n in traced_vm.get(name, {}).items():
            n = min(n, pages)
            pages -= n
            vm_rows[(sub, layer)] = vm_rows.get((sub, layer), 0) + n
        sub = _owner_subsystem(subsystem_of(name, mod.rstrip("]") or None) or f"kernel:{name}")
        vm_rows[(sub, "vmalloc")] = vm_rows.get((sub, "vmalloc"), 0) + pages
    for (sub, layer), pages in vm_rows.items():
        if pages:
            add(sub, layer, "vmalloc", pages)
    kernel_stack = kb_pages(mi, "KernelStack", ps)
    vm_other = vm_total - sum(vm_rows.values()) - min(stack_vm, kernel_stack)
    add("vmalloc", "areas without a caller", "vmalloc", max(0, vm_other))

    # --- kernel pages by allocation stack (the category meminfo has no line for);
    # slab, vmalloc, page tables ... stacks are in their meminfo category.
    direct = _by_owner(
        (rec.stacks.get(sid, {}).get("owner", "unknown"), c) for sid, c in state["stacks"].items()
        if rec.stacks.get(sid, {}).get("kind", "pages") == "pages")
    for sub, (res, peak, alloc) in direct.items():
        if res > 0 or peak > 0:
            add(sub, "kernel pages", "pages", max(res, 0), peak, alloc, source="traced")

    # --- the rest of meminfo's categories.
    anon = kb_pages(mi, "AnonPages", ps)
    tracer_anon = int(state.get("tracer", {}).get("anon_kb", 0)) * 1024 // ps
    if tracer_anon:
        add("tracer", "footprint's process (anon)", "anon", tracer_anon)
    add("processes", "anonymous memory", "anon", max(0, anon - tracer_anon))
    add("processes", UNMAPPED_HUGE, "anon", unmapped_anon_pages(mi, ps))
    add("kernel stacks", "-", "kernel-stack", kernel_stack)
    add("page tables", "-", "page-tables",
        kb_pages(mi, "PageTables", ps) + kb_pages(mi, "SecPageTables", ps))
    add("percpu", "-", "percpu", kb_pages(mi, "Percpu", ps))
    hugetlb = kb_pages(mi, "Hugetlb", ps)
    if hugetlb:
        add("hugetlb", "-", "hugetlb", hugetlb)
    pcp = int(state.get("pcp_pages", 0))
    if pcp:
        add("free lists", "per-CPU page lists: free, yet outside MemFree", "pcp", pcp)

    nonfree = kb_pages(mi, "MemTotal", ps) - kb_pages(mi, "MemFree", ps)
    unattributed = nonfree - seen_cache - seen_shmem - sum(r["resident_pages"] for r in rows)
    add("unattributed", "in use, in no category above", "other", unattributed)
    return rows


def _squashfs_view(rec: Recording, state: dict, df: pd.DataFrame, ps: int) -> dict:
    """squashfs.explain for the squashfs mounts of the last topology record at or before
    this sample, against the traced caches (squashfs_cache_init's objects) and the vmalloc
    charged to squashfs; {} when the recording names no squashfs mount."""
    from .squashfs import explain, valid_mount

    mounts = None
    for t in rec.topologies:
        if t.get("t", 0) <= state["t"] and isinstance(t.get("squashfs"), list):
            mounts = t["squashfs"]
    if not mounts or len(mounts) > 256 or not all(valid_mount(m) for m in mounts):
        return {}
    caches = sum(c[0] for key, c in state["sites"].items()
                 if key.startswith("slab:") and c[0] > 0
                 and rec.sites.get(key, {}).get("symbol") == "squashfs_cache_init")
    vm = df[(df["subsystem"] == "squashfs") & (df["kind"] == "vmalloc")]["resident_pages"].sum()
    return explain(mounts, int(caches), int(vm) * ps)


def _vmap_owners(rec: Recording, state: dict, ps: int) -> dict[str, dict[tuple, int]]:
    """Resident vmalloc pages traced by stack: {immediate caller: {(owner subsystem,
    layer): pages}}, the layer naming the library the owner allocated through ("vmalloc
    via xz"). Empty where the vmalloc tracepoints did not run (kernels before 6.3)."""
    out: dict[str, dict[tuple, int]] = {}
    for key, c in state["sites"].items():
        if not key.startswith("vmap:") or c[0] <= 0:
            continue
        info = rec.sites.get(key, {})
        caller = info.get("symbol")
        if not caller:
            continue
        sub = _owner_subsystem(info.get("owner") or "kernel")
        if sub == "kernel (other)":
            continue  # nobody better than the caller's own name
        lib = info.get("library")
        layer = f"vmalloc via {lib}" if lib else "vmalloc"
        d = out.setdefault(caller, {})
        d[(sub, layer)] = d.get((sub, layer), 0) + c[0] // ps
    return out


def _by_owner(pairs) -> dict[str, list[int]]:
    """[resident, peak, added] summed per subsystem of (owner, counter) pairs."""
    out: dict[str, list[int]] = {}
    for owner, c in pairs:
        a = out.setdefault(_owner_subsystem(owner), [0, 0, 0])
        a[0] += c[0]
        a[1] += c[1]
        a[2] += c[2]
    return out


def _add_peaks(rec: Recording, df: pd.DataFrame, ps: int) -> None:
    """Peak of the meminfo-derived rows over all samples (traced rows keep the kernel's)."""
    figures = {("processes", "anonymous memory"): lambda mi: kb_pages(mi, "AnonPages", ps),
               ("processes", UNMAPPED_HUGE): lambda mi: unmapped_anon_pages(mi, ps),
               ("kernel stacks", "-"): lambda mi: kb_pages(mi, "KernelStack", ps),
               ("page tables", "-"): lambda mi: kb_pages(mi, "PageTables", ps),
               ("percpu", "-"): lambda mi: kb_pages(mi, "Percpu", ps)}
    peaks = {key: max((f(s["meminfo"]) for s in rec.samples), default=0)
             for key, f in figures.items()}
    for i, r in df.iterrows():
        key = (r["subsystem"], r["layer"])
        if r["source"] == "meminfo" and key in peaks:
            df.at[i, "peak_pages"] = max(r["peak_pages"], peaks[key])
