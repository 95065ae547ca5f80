"""The page cache by owner: which (s_dev, inode) holds how many pages at a sample — the
traced counter plus what is left of the baseline taken at attach — and what each owner
is: its file system or block device, storage layer, subsystem; and the chains along which
the same data is cached at several layers. The account (tracer/account.py) puts these
rows inside meminfo's Cached + Buffers; the timeline (tracer/timeline.py) asks the same
questions once per topology epoch.

Relies on the filemap tracepoints' s_dev being the superblock's (the kernel dev_t,
MKDEV(major, minor) with 20 minor bits), and on block devices' page cache living on the
bdev pseudo file system with the device's dev_t as inode number.
"""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd

from .recording import Recording
from .topology import Topology, devstr, double_caching, merge, resolve

MIB = 1 << 20
FS_SUBSYSTEMS = {"ext2": "ext4", "ext3": "ext4", "ext4": "ext4", "squashfs": "squashfs",
                 "iso9660": "iso9660", "tmpfs": "shmem", "ramfs": "ramfs", "rootfs": "ramfs",
                 "devtmpfs": "shmem", "overlay": "overlay", "vfat": "vfat"}
BDEV_SUBSYSTEMS = {"loop": "loop", "dm": "device-mapper"}


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


def measured(state: dict) -> tuple[dict, set]:
    """The files whose pages the kernel counted at this sample ({"dev:ino": [pages, peak]})
    and the superblocks it counted (tmpfs: tracer/shmemsampler.py); ({}, set()) for a
    sample that measured nothing. A measured superblock's files take their pages from
    here, not from the traced counters and the baseline (shmem adds fire no tracepoint)."""
    devs = state.get("shmem_devs")
    return (state.get("shmem", {}), set(devs)) if devs else ({}, set())


def owner_pages(c, key: str, inv: "Inventory", counts: dict, devs: set) -> tuple[int, int, int]:
    """(resident, peak, baseline left) of one owner at a sample: the kernel's count where
    its superblock was measured (see `measured`), else the traced counter `c` plus what
    is left of its baseline (`resident`)."""
    if devs and key.rsplit(":", 1)[0] in devs:
        pages, peak = counts.get(key, (0, 0))
        return pages, peak, 0
    pages, left = resident(c, inv.baseline.get(key, 0), inv.untracked_at.get(key, 0))
    return pages, max(c[1] + left, pages), left


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


INITRAMFS_DELETED = "initramfs (deleted)"


def _initramfs_gone(topo: Topology | None, dev: str) -> bool:
    """Whether `dev` is the initramfs root after switch_root: its "/" no longer mounted
    (systemd's and dracut's switch_root delete its files; what stays resident is held
    open or mapped by a process that outlived it)."""
    ms = topo.mounts_of(dev) if topo is not None and dev.startswith("0:") else []
    return bool(ms) and all(m.get("gone") for m in ms) and any(
        m["mountpoint"] == "/" and m["fstype"] in ("rootfs", "ramfs", "tmpfs") for m in ms)


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
    counts, devs = measured(state)
    gone_checked: dict[str, bool] = {}
    rows = []
    for key in set(state["files"]) | set(inv.baseline) | set(counts):
        c = state["files"].get(key, [0, 0, 0, 0, 0])
        pages, peak, base_left = owner_pages(c, key, inv, counts, devs)
        if pages <= 0 and peak <= 0:
            continue
        info, kind, subsystem = _describe(topo, key, special, per_dev)
        dev, ino = key.rsplit(":", 1)
        ino = int(ino)
        fstype = info.get("fstype")
        path = info.get("path") or inv.paths.get(key) or tracer_paths.get(key) or rec.paths.get(key)
        if path is None and dev not in gone_checked:
            gone_checked[dev] = _initramfs_gone(topo, dev)
        if path is None and gone_checked[dev]:
            path = INITRAMFS_DELETED  # not the tracer's: held by a process that outlived it
        layer = info.get("layer", f"dev {dev}")
        if info.get("roles"):
            layer += f" [{path.rsplit('/', 1)[-1] if path else 'inode %d' % ino}: {', '.join(info['roles'])}]"
        if key in tracer_paths:
            subsystem, layer = "tracer", "files the tracer maps (python, libraries)"
        rows.append({"dev": dev, "ino": ino, "path": path, "fstype": fstype, "kind": kind,
                     "subsystem": subsystem, "layer": layer, "resident_pages": pages,
                     "peak_pages": peak, "allocated_pages": c[2],
                     "baseline_pages": base_left, "traced_pages": c[0],
                     "source": "measured" if dev in devs else source_of(base_left, c)})
    cols = ["dev", "ino", "path", "fstype", "kind", "subsystem", "layer", "resident_pages",
            "peak_pages", "allocated_pages", "baseline_pages", "traced_pages", "source"]
    df = pd.DataFrame(rows, columns=cols)
    return df.sort_values("resident_pages", ascending=False, kind="stable").reset_index(drop=True)


def source_of(baseline: int, c: list) -> str:
    """How a row's pages are known, from its baseline pages and counter: traced: every page seen arriving; inventoried: resident before attach (no
    history); both: some of each."""
    if baseline and (c[0] or c[2]):
        return "inventoried+traced"
    return "inventoried" if baseline else "traced"


def chains(topo: Topology, files: pd.DataFrame, ps: int) -> list[dict]:
    """The same data cached at several layers: for each chain of the storage stack, the
    top file system's page cache and each backing image's page cache below it. Each
    level says which superblock (dev) and inode it is (the top: ino None) and the block
    devices between it and the level above (via: "loop1", "dm live-rw origin")."""
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
                           "dev": lv["dev"], "ino": lv["ino"], "via": list(lv.get("via", []))})
        for lv in levels:
            lv["resident_mib"] = lv["resident_pages"] * ps / MIB
        cached = [lv for lv in levels if lv["resident_pages"] > 0]
        out.append({"label": ch["label"], "levels": levels, "layers_holding_data": len(cached)})
    return out
