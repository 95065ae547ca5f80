"""The account: every page in use, by subsystem and storage layer, adding up to meminfo.

The frame is /proc/meminfo's own categories, because they partition memory in use
(MemTotal − MemFree) the way the kernel counts it: page cache (Cached + Buffers, which
include Shmem), AnonPages, Slab, KernelStack, PageTables, VmallocUsed, Percpu. Inside each
category the traced owners take their share and a named remainder keeps the category's
kernel total; what no category explains is the `unattributed` row. So the rows add up to
MemTotal − MemFree by construction, and the unattributed share measures what is unknown.

 - page cache: per (s_dev, inode) from the filemap tracepoints plus the baseline
   inventory, resolved through the storage topology to a file system layer; a page
   belongs to its mapping, never to the allocation stack.
 - slab: named caches by name (from /proc/slabinfo); kmalloc objects by call site (BPF).
 - vmalloc: /proc/vmallocinfo by caller; thread stacks left to KernelStack.
 - kernel pages: non-movable page allocations outside slab/vmalloc/page tables/percpu,
   by allocation stack (BPF); the only category meminfo has no line for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

import pandas as pd

from .recording import Recording
from .symbols import subsystem_of
from .topology import Topology, devstr, merge, resolve

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
FS_SUBSYSTEMS = {"ext2": "ext4", "ext3": "ext4", "ext4": "ext4", "squashfs": "squashfs",
                 "iso9660": "iso9660", "tmpfs": "shmem", "ramfs": "ramfs", "rootfs": "ramfs",
                 "devtmpfs": "shmem", "overlay": "overlay", "vfat": "vfat"}
BDEV_SUBSYSTEMS = {"loop": "loop", "dm": "device-mapper"}
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


def topology_at(rec: Recording, t: float | None) -> Topology | None:
    """Every topology seen up to t, merged: the initramfs mounts and the loops stay
    known after switch_root hides them."""
    topo = None
    for entry in rec.topologies:
        if t is not None and entry.get("t", 0) > t + 1e-6 and topo is not None:
            break
        cur = Topology.from_dict(entry["topology"])
        topo = cur if topo is None else merge(topo, cur)
    return topo


class Inventory(NamedTuple):
    """The baseline taken at attach, per owner key "dev:ino": pages resident then beyond
    what the tracer had counted (`baseline`), the tracer's untracked-removal counter at
    that instant (`untracked_at`), and the paths the walk knew (`paths`)."""

    baseline: dict
    untracked_at: dict
    paths: dict


def inventory(rec: Recording, bdev: str | None = None) -> Inventory:
    """The recording's inventories folded into one `Inventory`. Block devices are
    recorded as "bdev:<dev_t>" until the bdev pseudo file system's s_dev is known; with
    `bdev` (see `bdev_dev`) they are renamed "<bdev>:<dev_t>", the keys the tracer uses."""
    baseline, untracked_at, paths = {}, {}, {}
    for inv in rec.inventories:
        untracked_at.update(inv.get("untracked_at_inventory", {}))
        for dev, ino, pages, path in inv["files"]:
            key = f"{dev}:{ino}"
            baseline[key] = baseline.get(key, 0) + pages
            if path:
                paths[key] = path
    if bdev:
        for table in (baseline, untracked_at, paths):
            for key in [k for k in table if k.startswith("bdev:")]:
                table[f"{bdev}:{key[5:]}"] = table.pop(key)
    return Inventory(baseline, untracked_at, paths)


def resident(counter, baseline: int, untracked_at: int) -> tuple[int, int]:
    """(resident pages, baseline pages left) of one owner: its traced counter
    [resident, peak, added, removed, untracked_removed] plus what is left of its
    baseline, since deletes of pages the tracer did not see added consume the baseline
    first (counted from the instant the baseline was taken)."""
    left = max(0, baseline - (counter[4] - untracked_at)) if baseline else 0
    return counter[0] + left, left


def bdev_dev(keys, topo: Topology | None) -> str | None:
    """The s_dev of the bdev pseudo file system, where block-device inodes live: the
    topology's, else that of the first anonymous-device key of `keys` ("dev:ino") that
    resolves to a block device (an inode number on bdev is the device's dev_t)."""
    if topo is None:
        return None
    if topo.bdev_sb_dev:
        return topo.bdev_sb_dev
    for key in keys:
        dev, ino = key.rsplit(":", 1)
        if dev.startswith("0:") and resolve(topo, dev, int(ino)).get("what") == "bdev":
            return dev
    return None


def _special_files(topo: Topology | None) -> set:
    """(dev, ino) of loop backing files: resolved one by one (they name the loop)."""
    special = set()
    if topo is not None:
        for bd in topo.block_devices.values():
            lo = bd.get("loop") or {}
            if lo.get("backing_dev") is not None:
                special.add((lo["backing_dev"], lo.get("backing_ino")))
    return special


def _describe(topo: Topology | None, key: str, special: set, per_dev: dict) -> tuple[dict, str, str]:
    """(resolution, kind, subsystem) of one owner key "dev:ino". Resolution is per
    superblock except for loop backing files and bdev inodes (50k files: 6 s → 0.2 s)."""
    dev, ino = key.rsplit(":", 1)
    ino = int(ino)
    if dev == "bdev" and topo is not None:  # no page of it traced: resolve by device
        bd = topo.device(devstr(ino, kernel=True)) or {"name": f"dev {ino}", "dev": None, "kind": None}
        info = {"what": "bdev", "block_dev": bd["dev"], "layer": f"bdev {bd['name']}",
                "path": f"/dev/{bd['name']}", "fstype": None}
    elif topo is not None and ((dev, ino) in special or dev.startswith("0:")):
        info = resolve(topo, dev, ino)
    elif topo is not None:
        if dev not in per_dev:
            per_dev[dev] = {k: v for k, v in resolve(topo, dev, 0).items()
                            if k not in ("roles", "path", "ino")}
        info = per_dev[dev]
    else:
        info = {"what": "unknown", "layer": f"dev {dev}"}
    fstype = info.get("fstype")
    if info.get("what") == "bdev":
        bd = (topo.device(info["block_dev"]) or {}) if topo and info.get("block_dev") else {}
        return info, "buffers", BDEV_SUBSYSTEMS.get(bd.get("kind"), "block")
    kind = "shmem" if fstype in ("tmpfs", "devtmpfs") else "page-cache"
    return info, kind, FS_SUBSYSTEMS.get(fstype or "", fstype or "unknown fs")


def _tracer_paths(rec: Recording) -> dict:
    """"dev:ino" → path of the files the recorder itself maps (python, its libraries)."""
    own = list(rec.header.get("tracer", {}).get("files", []))
    for t in rec.tracer:
        own += t.get("files", [])
    return {f"{d}:{i}": p for d, i, p in own}


def owners(rec: Recording, keys, topo: Topology | None) -> dict[str, tuple[str, str]]:
    """"dev:ino" → (subsystem, kind) for each owner key, as `file_rows` classifies it
    (the tracer's own files are "tracer"). Keys of block devices must already carry the
    bdev file system's s_dev (see `inventory`)."""
    special, per_dev, tracer_files = _special_files(topo), {}, set(_tracer_paths(rec))
    out = {}
    for key in keys:
        _info, kind, subsystem = _describe(topo, key, special, per_dev)
        out[key] = ("tracer", kind) if key in tracer_files else (subsystem, kind)
    return out


def file_rows(rec: Recording, state: dict, topo: Topology | None) -> pd.DataFrame:
    """One row per owner (s_dev, inode) with pages at this state: its path, file
    system, kind (page-cache, shmem, buffers), subsystem and storage layer, and its
    resident, peak, allocated, baseline and traced pages; largest first."""
    inv = inventory(rec, bdev_dev(state["files"], topo))
    tracer_paths = _tracer_paths(rec)
    special, per_dev = _special_files(topo), {}
    rows = []
    for key in set(state["files"]) | set(inv.baseline):
        c = state["files"].get(key, [0, 0, 0, 0, 0])
        pages, base_left = resident(c, inv.baseline.get(key, 0), inv.untracked_at.get(key, 0))
        if pages <= 0 and c[1] <= 0:
            continue
        info, kind, subsystem = _describe(topo, key, special, per_dev)
        dev, ino = key.rsplit(":", 1)
        ino = int(ino)
        fstype = info.get("fstype")
        path = info.get("path") or inv.paths.get(key) or tracer_paths.get(key) or rec.paths.get(key)
        layer = info.get("layer", f"dev {dev}")
        if info.get("roles"):
            layer += f" [{path.rsplit('/', 1)[-1] if path else 'inode %d' % ino}: {', '.join(info['roles'])}]"
        if key in tracer_paths:
            subsystem, layer = "tracer", "files the tracer maps (python, libraries)"
        rows.append({"dev": dev, "ino": ino, "path": path, "fstype": fstype, "kind": kind,
                     "subsystem": subsystem, "layer": layer, "resident_pages": pages,
                     "peak_pages": max(c[1] + base_left, pages), "allocated_pages": c[2],
                     "baseline_pages": base_left, "traced_pages": c[0],
                     "source": _source(base_left, c)})
    cols = ["dev", "ino", "path", "fstype", "kind", "subsystem", "layer", "resident_pages",
            "peak_pages", "allocated_pages", "baseline_pages", "traced_pages", "source"]
    df = pd.DataFrame(rows, columns=cols)
    return df.sort_values("resident_pages", ascending=False, kind="stable").reset_index(drop=True)


def _source(baseline: int, c: list) -> str:
    """traced: every page seen arriving; inventoried: resident before attach (no
    history); both: some of each."""
    if baseline and (c[0] or c[2]):
        return "inventoried+traced"
    return "inventoried" if baseline else "traced"


def kb_pages(meminfo: dict, name: str, page_size: int) -> int:
    """A /proc/meminfo field (kB) in pages of `page_size` bytes; 0 where absent."""
    return int(meminfo.get(name, 0)) * 1024 // page_size


def build(rec: Recording, index: int = -1) -> Account:
    """The account at sample `index` (default: the last)."""
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
        for r in grouped.itertuples(index=False):
            add(r.subsystem, r.layer, r.kind, r.resident_pages, r.peak_pages, r.allocated_pages,
                source=_source(r.baseline_pages, [r.resident_pages - r.baseline_pages, 0,
                                                  r.allocated_pages]))
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
    acc.chains = _chains(topo, files, ps) if topo is not None else []
    if not rec.header.get("plan", {}).get("headers_match_kernel", True):
        acc.notes.append("kernel headers do not match the running kernel: only tracepoint "
                         "arguments were used, and struct layouts from the kernel's BTF")
    if rec.inventories:
        n = sum(len(i["files"]) for i in rec.inventories)
        acc.notes.append(f"{n} files were inventoried at attach (pages resident before tracing, "
                         "no history); the rest is traced")
    return acc


def category_rows(rec: Recording, state: dict, ps: int, seen_cache: int, seen_shmem: int) -> list[dict]:
    """Every row but the per-file page cache, given the pages those file rows hold
    (seen_cache, seen_shmem): the page-cache remainders, slab, vmalloc, kernel pages,
    meminfo's other categories, the per-CPU free lists, and last the unattributed rest
    of MemTotal − MemFree. Shared by build() and the timeline (one arithmetic)."""
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
    slab_seen = sum(named.values()) + sum(v[0] // ps for v in traced_slab.values() if v[0] > 0)
    add("slab", "free objects, untraced kmalloc", "slab", max(0, slab_total - slab_seen))

    # --- vmalloc by caller; thread stacks belong to KernelStack.
    vm_total = kb_pages(mi, "VmallocUsed", ps)
    vm_rows: dict[str, int] = {}
    stack_vm = 0
    for caller, pages in state["vmalloc"].items():
        name, _, mod = caller.partition(" [")
        if name in ("alloc_thread_stack_node", "dup_task_struct"):
            stack_vm += pages
            continue
        sub = _owner_subsystem(subsystem_of(name, mod.rstrip("]") or None) or f"kernel:{name}")
        vm_rows[sub] = vm_rows.get(sub, 0) + pages
    for sub, pages in vm_rows.items():
        add(sub, "vmalloc", "vmalloc", pages)
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
        add("tracer", "recorder process (anon)", "anon", tracer_anon)
    add("processes", "anonymous memory", "anon", max(0, anon - tracer_anon))
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
    peaks = {}
    for s in rec.samples:
        mi = s["meminfo"]
        for sub, field_ in (("processes", "AnonPages"), ("kernel stacks", "KernelStack"),
                            ("page tables", "PageTables"), ("percpu", "Percpu")):
            peaks[sub] = max(peaks.get(sub, 0), kb_pages(mi, field_, ps))
    for i, r in df.iterrows():
        if r["source"] == "meminfo" and r["subsystem"] in peaks:
            df.at[i, "peak_pages"] = max(r["peak_pages"], peaks[r["subsystem"]])


def _chains(topo: Topology, files: pd.DataFrame, ps: int) -> list[dict]:
    """The same data cached at several layers: for each chain of the storage stack, the
    top file system's page cache and each backing image's page cache below it. Each
    level says which superblock (dev) and inode it is (the top: ino None) and the block
    devices between it and the level above (via: "loop1", "dm live-rw origin")."""
    from .topology import double_caching

    by_dev = files.groupby("dev")["resident_pages"].sum().to_dict() if len(files) else {}
    by_file = {(r.dev, r.ino): r.resident_pages for r in files.itertuples()} if len(files) else {}
    out = []
    for ch in double_caching(topo):
        top = ch["top"]
        levels = [{"layer": top["layer"], "what": "all files",
                   "resident_pages": int(by_dev.get(top["dev"], 0)),
                   "dev": top["dev"], "ino": None, "via": []}]
        for lv in ch["levels"]:
            levels.append({"layer": lv["layer"], "what": lv.get("path") or f"inode {lv['ino']}",
                           "resident_pages": int(by_file.get((lv["dev"], lv["ino"]), 0)),
                           "dev": lv["dev"], "ino": int(lv["ino"]), "via": list(lv.get("via", []))})
        for lv in levels:
            lv["resident_mib"] = lv["resident_pages"] * ps / MIB
        cached = [lv for lv in levels if lv["resident_pages"] > 0]
        out.append({"label": ch["label"], "levels": levels, "layers_holding_data": len(cached)})
    return out
