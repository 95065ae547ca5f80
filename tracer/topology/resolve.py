"""What a (dev, inode) means: its layer's name, the chain of layers below it (a file on
squashfs on loop0 backed by a file on iso9660 ...), and the chains along which the same
data can be cached at several layers (double caching)."""

from __future__ import annotations

from .devices import devstr
from .model import Topology
from .overlay import layer_role, overlays


def _device_label(bd: dict[str, object]) -> str:
    if bd["kind"] == "dm" and bd.get("dm", {}).get("name"):
        return f"dm {bd['dm']['name']}"
    return bd["name"]


def _is_initramfs_root(m: dict[str, object]) -> bool:
    """The initramfs is unpacked into the rootfs mount (ramfs, or tmpfs when CONFIG_TMPFS
    and no root= — init/do_mounts.c); mountinfo names its type "rootfs". After
    switch_root it survives only in a merged topology, as a gone "/" of ramfs/tmpfs."""
    return m["fstype"] == "rootfs" or (
        bool(m.get("gone")) and m["mountpoint"] == "/" and m["fstype"] in ("ramfs", "tmpfs"))


def layer_of(topo: Topology, dev: str) -> str:
    """A readable label for the superblock `dev`: "ext4 on dm live-rw", "squashfs on
    loop0", "iso9660 on sr0", "ramfs (initramfs root)", "tmpfs /run", or "dev 0:33"."""
    ms = topo.mounts_of(dev)
    bd = topo.device(dev)
    if ms:
        m = ms[0]
        if _is_initramfs_root(m):
            fs = "ramfs" if m["fstype"] == "rootfs" else m["fstype"]
            return f"{fs} (initramfs root)"
        label = f"{m['fstype']} on {_device_label(bd)}" if bd else f"{m['fstype']} {m['mountpoint']}"
        role = layer_role(topo.mounts, dev)
        return f"{label} ({role})" if role else label
    if bd and bd.get("probed_fstype"):
        return f"{bd['probed_fstype']} on {_device_label(bd)} (not mounted)"
    if bd:
        return f"unmounted {_device_label(bd)}"
    return f"dev {dev}"


def _bdev_of_inode(topo: Topology, dev: str, ino: int) -> dict[str, object] | None:
    """If (dev, ino) is a block-device inode, its device.

    Verified on 6.18 (and the same code in 6.1): the filemap tracepoints report
    `mapping->host->i_sb->s_dev` whenever i_sb is set — and bdev inodes live on the bdev
    pseudo file system (blockdev_superblock), so s_dev is that anonymous 0:N (0:3 on the
    host), NOT i_rdev; and bdev_add() sets `i_ino = dev`, so the inode number is the
    kernel dev_t of the device (0x700000 = 7:0). Hence: a 0:N device that no mount shows,
    whose inode number decodes to a known block device.
    """
    if topo.bdev_sb_dev is not None and dev != topo.bdev_sb_dev:
        return None
    if topo.bdev_sb_dev is None and (not dev.startswith("0:") or topo.mounts_of(dev)):
        return None
    return topo.device(devstr(ino, kernel=True))


def learn_bdev_sb_dev(topo: Topology, dev: object, ino: int) -> bool:
    """Learn the bdev pseudo file system's s_dev from a page-cache event (dev, ino) that
    can only be a block-device inode (see _bdev_of_inode); afterwards only that dev is
    taken for bdev inodes. True when learned (or already known to be `dev`)."""
    d = devstr(dev, kernel=True) if isinstance(dev, int) else devstr(dev)
    if topo.bdev_sb_dev is not None:
        return topo.bdev_sb_dev == d
    if _bdev_of_inode(topo, d, ino) is not None:
        topo.bdev_sb_dev = d
        return True
    return False


def _fstype(topo: Topology, dev: str) -> str | None:
    ms = topo.mounts_of(dev)
    if ms:
        return ms[0]["fstype"]
    bd = topo.device(dev)
    return bd.get("probed_fstype") if bd else None


def _fs_entry(topo: Topology, dev: str) -> dict[str, object]:
    ms = topo.mounts_of(dev)
    return {
        "type": "fs", "dev": dev, "label": layer_of(topo, dev),
        "fstype": _fstype(topo, dev),
        "mountpoints": [m["mountpoint"] for m in ms],
    }


def _below_device(topo: Topology, bd: dict[str, object]) -> list[tuple[str, dict[str, object]]]:
    """What a block device is built on: [(role, ref)], ref {"block": dev} or
    {"file": (dev, ino), "path": ...}."""
    out: list[tuple[str, dict[str, object]]] = []
    kind = bd["kind"]
    if kind == "loop":
        lo = bd.get("loop", {})
        if lo.get("backing_dev"):
            out.append(("backing", {"file": (lo["backing_dev"], lo.get("backing_ino")),
                                    "path": lo.get("backing_file_initramfs") or lo.get("backing_file")}))
    elif kind == "dm":
        table = bd.get("dm", {}).get("table") or []
        seen = set()
        for t in table:
            for d in t.get("devices", []):
                if d["dev"] not in seen:
                    seen.add(d["dev"])
                    out.append((d["role"], {"block": d["dev"]}))
        if not table:
            for s in bd.get("slaves", []):
                sb = topo.block_devices.get(s)
                if sb:
                    out.append(("slave", {"block": sb["dev"]}))
    elif kind == "part" and bd.get("parent") in topo.block_devices:
        out.append(("partition of", {"block": topo.block_devices[bd["parent"]]["dev"]}))
    return out


def _device_entry(topo: Topology, bd: dict[str, object], role: str | None) -> dict[str, object]:
    e: dict[str, object] = {"type": "block", "dev": bd["dev"], "name": bd["name"], "kind": bd["kind"],
                         "role": role, "label": _device_label(bd)}
    if bd["kind"] == "dm":
        table = bd.get("dm", {}).get("table") or []
        targets = sorted({t["target"] for t in table})
        e["targets"] = targets
        parts = [f"{d['role']} {d['dev']}" for t in table for d in t.get("devices", [])]
        e["label"] = f"dm {bd['dm'].get('name')}" + (
            f" ({'/'.join(targets)}: {', '.join(parts)})" if targets else "")
    if bd["kind"] == "loop":
        lo = bd.get("loop", {})
        e["backing"] = {"dev": lo.get("backing_dev"), "ino": lo.get("backing_ino"),
                        "path": lo.get("backing_file"), "deleted": lo.get("deleted")}
        e["label"] = f"{bd['name']} backed by {lo.get('backing_file')}"
        e["dio"] = lo.get("dio")
    return e


def _walk_device(topo: Topology, dev: str, role: str | None, depth: int,
                 out: list[dict[str, object]], seen: set) -> None:
    if ("b", dev) in seen:
        return
    seen.add(("b", dev))
    bd = topo.device(dev)
    if bd is None:
        out.append({"type": "block", "dev": dev, "role": role, "label": f"dev {dev}", "depth": depth})
        return
    e = _device_entry(topo, bd, role)
    e["depth"] = depth
    out.append(e)
    for r, ref in _below_device(topo, bd):
        if "block" in ref:
            _walk_device(topo, ref["block"], r, depth + 1, out, seen)
        else:
            fdev, fino = ref["file"]
            _walk_file(topo, fdev, fino, ref.get("path"), depth + 1, out, seen)


def _walk_file(topo: Topology, dev: str, ino: int | None, path: str | None, depth: int,
               out: list[dict[str, object]], seen: set) -> None:
    fs = _fs_entry(topo, dev)
    out.append({"type": "file", "dev": dev, "ino": ino, "path": path, "depth": depth,
                "label": f"{path or f'inode {ino}'} on {fs['label']}"})
    _walk_fs(topo, dev, depth + 1, out, seen)


def _walk_fs(topo: Topology, dev: str, depth: int, out: list[dict[str, object]], seen: set,
             role: str | None = None) -> None:
    if ("f", dev) in seen:
        return
    seen.add(("f", dev))
    e = _fs_entry(topo, dev)
    e["depth"] = depth
    if role:
        e["role"] = role
        e["label"] = f"{role}: {e['label']}"
    out.append(e)
    if topo.device(dev) is not None:
        _walk_device(topo, dev, "device", depth + 1, out, seen)
    # An overlay holds no page cache for its files: its layers do (overlay.py).
    for o in overlays(topo.mounts) if e["fstype"] == "overlay" else ():
        if o["dev"] != dev:
            continue
        for r, place in ([("upper", o["upper"])] if o["upper"] else []) + \
                [("lower", lo) for lo in o["lowers"]]:
            _walk_fs(topo, place["dev"], depth + 1, out, seen, role=f"{r} {place['dir']}")


def resolve(topo: Topology, dev: object, ino: int) -> dict[str, object]:
    """What the page-cache owner (s_dev, inode) is.

    `dev` is "maj:min", or an int in the kernel's encoding (the tracepoint's s_dev).
    Returns {dev, ino, what: "bdev"|"file"|"unknown", layer, fstype, mountpoints,
    device (bdev only), roles: [loop backing roles of this inode], path (when known),
    chain: [layers top → bottom, each {type: fs|block|file, dev, label, depth, role …}]}.
    For a bdev inode the chain starts at the block device (its page cache is meminfo's
    Buffers); for a file it starts at its file system.
    """
    d = devstr(dev, kernel=True) if isinstance(dev, int) else devstr(dev)
    res: dict[str, object] = {"dev": d, "ino": ino}
    chain: list[dict[str, object]] = []
    bd = _bdev_of_inode(topo, d, ino)
    if bd is not None:
        res.update(what="bdev", device=bd["name"], block_dev=bd["dev"],
                   layer=f"bdev {_device_label(bd)}", fstype=None, mountpoints=[],
                   path=f"/dev/{bd['name']}")
        _walk_device(topo, bd["dev"], None, 0, chain, set())
        res["chain"] = chain
        res["roles"] = []
        return res
    ms = topo.mounts_of(d)
    res.update(what="file" if ms or topo.device(d) else "unknown", layer=layer_of(topo, d),
               fstype=_fstype(topo, d), mountpoints=[m["mountpoint"] for m in ms])
    loops = topo.loop_backed_by(d, ino)
    res["roles"] = [f"backing file of {lb['name']}" for lb in loops]
    res["path"] = next((lb["loop"].get("backing_file") for lb in loops), None)
    _walk_fs(topo, d, 0, chain, set())
    res["chain"] = chain
    return res


def _file_levels(topo: Topology, dev: str, seen: set) -> list[list[dict[str, object]]]:
    """From superblock `dev` down: every path of image files that back it."""
    bd = topo.device(dev)
    if bd is None or ("b", dev) in seen:
        return [[]]
    seen = seen | {("b", dev)}
    paths: list[list[dict[str, object]]] = []
    below = _below_device(topo, bd)
    if not below:
        return [[]]
    for role, ref in below:
        if "block" in ref:
            for tail in _file_levels(topo, ref["block"], seen):
                for lvl in tail[:1]:
                    lvl.setdefault("via", []).insert(0, f"{_device_label(bd)} {role}")
                paths.append(tail)
        else:
            fdev, fino = ref["file"]
            lvl = {"dev": fdev, "ino": fino, "path": ref.get("path"), "fstype": _fs_entry(topo, fdev)["fstype"],
                   "layer": layer_of(topo, fdev), "via": [bd["name"]]}
            lvl["label"] = f"{lvl['path'] or f'inode {fino}'} on {lvl['layer']}"
            for tail in _file_levels(topo, fdev, seen):
                paths.append([lvl] + [dict(x) for x in tail])
    return paths


def double_caching(topo: Topology) -> list[dict[str, object]]:
    """Chains along which the same data can sit in the page cache at several layers.

    For each mounted file system on a block device that (through dm and partitions)
    rests on a loop device: the top (all page cache of that superblock) and, level by
    level, the image file backing each loop — itself cached on the file system below
    (dracut attaches loops buffered). Returns [{top: {dev, fstype, mountpoints, layer},
    levels: [{dev, ino, path, fstype, layer, label, via}], label}]; a dm snapshot gives
    one chain per branch (origin, cow).
    """
    chains: list[dict[str, object]] = []
    done = set()

    def chains_from(d: str, fstype: str) -> None:
        done.add(d)
        for levels in _file_levels(topo, d, set()):
            if not levels:
                continue
            top = {"dev": d, "fstype": fstype, "layer": layer_of(topo, d),
                   "mountpoints": [x["mountpoint"] for x in topo.mounts_of(d)]}
            label = " → ".join([top["layer"]] + [lv["label"] for lv in levels])
            chains.append({"top": top, "levels": levels, "label": label})

    for m in topo.mounts:
        if m["dev"] not in done and topo.device(m["dev"]) is not None:
            chains_from(m["dev"], m["fstype"])
    # File systems no mount shows but whose superblock was read (probed_fstype): a
    # recorder in a mount namespace of its own does not see the root mounted after
    # switch_root, yet ext4 on dm live-rw still caches the data rootfs.img holds. Devices
    # held by others (loop1 under the dm snapshot) are not a file system in use.
    for bd in topo.block_devices.values():
        d = bd.get("dev")
        if bd.get("probed_fstype") and not bd.get("holders") and d not in done and not bd.get("gone"):
            chains_from(d, bd["probed_fstype"])
    return chains
