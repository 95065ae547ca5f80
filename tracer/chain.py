"""The storage chain of a boot, layer by layer, with what each layer holds at one moment.

A live boot reads its root through a stack: iso9660 on sr0 holds squashfs.img → loop0 →
squashfs holds rootfs.img → loop1 → dm-snapshot live-rw (its COW on a file in the
initramfs's ramfs, through loop2) → ext4 on /. Each file system layer caches the data
the layer above reads through it, so the same data can sit in memory several times.
This module lays out the account's chains (`Account.chains`, from the topology's
`double_caching`) as boxes; the HTML report draws it (tracer/render_html.py).

Use:  layers = chain(rec, acc)   # {"boxes": [bottom … top], "cow": [...], "same_data": [...]}
"""

from __future__ import annotations

from .account import MIB, Account
from .pagecache import topology_at
from .recording import Recording
from .topology import layer_of

CACHE_KINDS = ("page-cache", "buffers", "shmem")
# The kernel memory of the layers' drivers (slab, vmalloc, pages), shown on their first box.
DRIVERS = {"fs": ("squashfs", "iso9660"), "loop": ("loop",), "dm": ("device-mapper",)}


def chain(rec: Recording, acc: Account) -> dict | None:
    """The root file system's chain, bottom first: [{"kind": "fs"|"dev", "name", "what",
    "mib", "kernel_mib", "same_data"}], the COW branch of a dm snapshot, and the layers
    that hold the same data. None without a topology. A plain disk is a chain of two.
    The chains and their pages are the account's (`Account.chains`); the topology only
    says which file system is the root and what each block device is."""
    topo = topology_at(rec, acc.t)
    if topo is None:
        return None
    ps = acc.page_size
    by_dev = acc.files.groupby("dev")["resident_pages"].sum().to_dict() if len(acc.files) else {}
    layer_pages = acc.rows.groupby("layer")["resident_pages"].sum().to_dict()
    kernel = _driver_pages(acc)
    mib = lambda pages: pages * ps / MIB  # noqa: E731

    def fs_box(lv: dict) -> dict:
        return {"kind": "fs", "name": lv["layer"], "what": lv["what"], "mib": mib(lv["resident_pages"]),
                "pages": int(lv["resident_pages"])}

    def dev_box(label: str) -> dict:
        pages = int(layer_pages.get(f"bdev {label}", 0))
        return {"kind": "dev", "name": label, "what": _dev_what(topo, label), "mib": mib(pages),
                "pages": pages}

    chains = acc.chains
    root = topo.root.get("dev") if isinstance(topo.root, dict) else None
    tops = [c for c in chains if c["levels"][0]["dev"] == root] or chains
    if not tops:  # no image underneath: the root file system on its disk
        if root is None:
            return None
        bd = topo.device(root)
        boxes = [fs_box({"layer": layer_of(topo, root), "what": "all files",
                         "resident_pages": by_dev.get(root, 0)})]
        if bd is not None:
            boxes.insert(0, dev_box(bd["name"]))
        return _finish(boxes, [], kernel, mib)
    top_dev = tops[0]["levels"][0]["dev"]
    main = max((c for c in tops if c["levels"][0]["dev"] == top_dev),
               key=lambda c: (not _via_role(c, "cow"), len(c["levels"])))
    boxes = [fs_box(main["levels"][0])]
    for lv in main["levels"][1:]:
        boxes += [dev_box(_device_label(v)) for v in lv["via"]]
        boxes.append(fs_box(lv))
    bottom = topo.device(main["levels"][-1]["dev"]) if len(main["levels"]) > 1 else None
    if bottom is not None:
        boxes.append(dev_box(bottom["name"]))
    cow = []
    for c in tops:
        if c is main or c["levels"][0]["dev"] != top_dev or not _via_role(c, "cow"):
            continue
        for lv in c["levels"][1:2]:
            cow += [dev_box(_device_label(v)) for v in lv["via"][1:]]
            cow.append({**fs_box(lv), "subsystem": _subsystem_of(acc, lv["dev"], lv["ino"])})
    return _finish(boxes[::-1], cow[::-1], kernel, mib)


def _finish(boxes: list[dict], cow: list[dict], kernel: dict, mib) -> dict:
    """Drivers' kernel memory on the first box each, and which layers cache the same data."""
    done = set()
    for b in boxes + cow:
        kind = _driver_of(b)
        b["kernel_mib"] = 0.0
        if kind and kind not in done:
            done.add(kind)
            b["kernel_mib"] = mib(kernel.get(kind, 0))
            b["driver"] = kind
        b["same_data"] = False
    holding = [b for b in boxes if b["kind"] == "fs" and b["pages"] > 0]
    if len(holding) > 1:
        for b in holding:
            b["same_data"] = True
    return {"boxes": boxes, "cow": cow, "same_data": [b["name"] for b in holding] if len(holding) > 1 else [],
            "same_data_mib": sum(b["mib"] for b in holding) if len(holding) > 1 else 0.0}


def _driver_pages(acc: Account) -> dict:
    """Pages of each driver that are not page cache: slab, vmalloc, kernel pages."""
    rows = acc.rows[~acc.rows["kind"].isin(CACHE_KINDS)]
    return {sub: int(rows.loc[rows["subsystem"] == sub, "resident_pages"].sum())
            for sub in ("squashfs", "iso9660", "loop", "device-mapper")}


def _driver_of(box: dict) -> str | None:
    name = str(box["name"])
    if box["kind"] == "dev":
        return "loop" if name.startswith("loop") else ("device-mapper" if name.startswith("dm ") else None)
    fs = name.split(" ", 1)[0]
    return fs if fs in ("squashfs", "iso9660") else None


def _via_role(c: dict, role: str) -> bool:
    """Whether the chain's first level below the top is reached through a dm `role`."""
    return any(str(v).endswith(f" {role}") for lv in c["levels"][1:2] for v in lv["via"])


def _device_label(via: str) -> str:
    """"dm live-rw origin" → "dm live-rw"; "loop1" → "loop1"."""
    for role in (" origin", " cow"):
        if via.endswith(role):
            return via[: -len(role)]
    return via


def _dev_what(topo, label: str) -> str:
    """What a block device is: "dm snapshot", "loop", "disk"."""
    for bd in topo.block_devices.values():
        dm = bd.get("dm") or {}
        if label in (bd.get("name"), f"dm {dm.get('name')}"):
            targets = sorted({t.get("target", "?") for t in dm.get("table") or []})
            return f"dm {'+'.join(targets)}" if dm else str(bd.get("kind") or "block device")
    return "block device"


def _subsystem_of(acc: Account, dev: str, ino) -> str | None:
    """The subsystem of the file (dev, ino) in the account; None where it has no row (or
    the topology did not know the inode)."""
    f = acc.files
    if not len(f) or not isinstance(ino, int):
        return None
    hit = f[(f["dev"] == dev) & (f["ino"] == ino)]
    return str(hit["subsystem"].iloc[0]) if len(hit) else None
