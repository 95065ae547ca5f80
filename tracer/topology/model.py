"""The topology: mounts and block devices read at one moment, stored in a recording as
plain JSON (`Topology.to_dict`) and read back elsewhere (`Topology.from_dict`); `merge`
keeps what the initramfs could see after switch_root hides it."""

from __future__ import annotations

import os
import time

from .blockdev import may_open, probe_fstype, read_block_devices, read_dm_tables, udev_fstype
from .mounts import read_mounts


class Topology:
    """Mounts and block devices seen at `time` (CLOCK_BOOTTIME seconds).

    `gone` marks mounts/devices kept by `merge` that the newer view no longer shows.
    `bdev_sb_dev` is the s_dev of the kernel's bdev pseudo file system (where block-device
    inodes live) once known — it is anonymous (0:N) and mounted nowhere visible.
    A plain class, not a dataclass: the resident sampler imports this module, and
    dataclasses brings inspect and ast with it (~1.6 MiB).
    """

    def __init__(self, time: float, mounts: list[dict[str, object]],
                 block_devices: dict[str, dict[str, object]], root: dict[str, object] | None = None,
                 bdev_sb_dev: str | None = None, history: list[float] | None = None):
        self.time = time
        self.mounts = mounts
        self.block_devices = block_devices
        self.root = root
        self.bdev_sb_dev = bdev_sb_dev
        self.history = [] if history is None else history

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Topology) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Topology(time={self.time}, {len(self.mounts)} mounts, {len(self.block_devices)} block devices)"

    def to_dict(self) -> dict[str, object]:
        """Plain JSON, as a recording's topology record stores it."""
        return {"time": self.time, "mounts": self.mounts, "block_devices": self.block_devices,
                "root": self.root, "bdev_sb_dev": self.bdev_sb_dev, "history": self.history}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> "Topology":
        """From a recording's topology record (validated by tracer/recording.py first)."""
        return cls(time=d["time"], mounts=list(d["mounts"]), block_devices=dict(d["block_devices"]),
                   root=d.get("root"), bdev_sb_dev=d.get("bdev_sb_dev"),
                   history=list(d.get("history", [])))

    # -- indexes -------------------------------------------------------------------------

    def device(self, dev: str) -> dict[str, object] | None:
        """The block device with number `dev` (current entries before gone ones)."""
        best = None
        for bd in self.block_devices.values():
            if bd["dev"] == dev:
                if not bd.get("gone"):
                    return bd
                best = best or bd
        return best

    def mounts_of(self, dev: str) -> list[dict[str, object]]:
        """Mounts of the superblock `dev` (bind mounts share it), current ones first."""
        ms = [m for m in self.mounts if m["dev"] == dev]
        ms.sort(key=lambda m: (bool(m.get("gone")), m["root"] != "/", len(m["mountpoint"])))
        return ms

    def loop_backed_by(self, dev: str, ino: int) -> list[dict[str, object]]:
        """Loop devices whose backing file is (dev, ino)."""
        return [bd for bd in self.block_devices.values()
                if bd.get("loop", {}).get("backing_dev") == dev
                and bd["loop"].get("backing_ino") == ino]


def _root_mount(mounts: list[dict[str, object]]) -> dict[str, object] | None:
    roots = [m for m in mounts if m["mountpoint"] == "/"]
    if not roots:
        return None
    # Over-mounted "/" (switch_root moves the new root over /): the last one is visible.
    m = roots[-1]
    return {"dev": m["dev"], "fstype": m["fstype"], "source": m["source"], "id": m["id"]}


def read_topology(proc: str = "/proc", sys: str = "/sys", devdir: str = "/dev",
                  dm: bool = True, sb_fstypes: dict[str, str] | None = None,
                  probe: bool = True) -> Topology:
    """Mounts + block devices + dm tables, stamped with CLOCK_BOOTTIME. Devices that no
    mount shows get `probed_fstype` (a recorder in a mount namespace of its own may not
    see the real root's mount: a plain boot's root disk then still reads "ext4 on vda
    (not mounted)", not "unmounted vda"), from, in order: `sb_fstypes` ({"maj:min":
    fstype} of the kernel's superblocks, as the kernel baseline reads s_magic — a lazily
    unmounted squashfs still has one), udev's database (no open), and only as a last
    resort, when `probe`, a read of the superblock of a fixed, non-empty device
    (blockdev.may_open: never a removable drive, an empty CD or a floppy)."""
    t = time.clock_gettime(time.CLOCK_BOOTTIME)
    mounts = read_mounts(proc)
    bds = read_block_devices(sys, devdir)
    mounted = {m["dev"] for m in mounts}
    for bd in bds.values():
        bound = bd["kind"] != "loop" or bd.get("loop", {}).get("bound")
        if bd["dev"] in mounted or not bound or not bd["size_bytes"]:
            continue
        fstype = (sb_fstypes or {}).get(bd["dev"]) or udev_fstype(bd["dev"])
        if fstype is None and probe and bd["kind"] in ("loop", "dm", "disk", "part") and may_open(bd):
            fstype = probe_fstype(os.path.join(devdir, bd["name"]))
        if fstype:
            bd["probed_fstype"] = fstype
    if dm and any(bd["kind"] == "dm" for bd in bds.values()):
        tables = read_dm_tables()
        for bd in bds.values():
            if bd["kind"] == "dm" and bd["dm"].get("name") in tables:
                bd["dm"]["table"] = tables[bd["dm"]["name"]]
    return Topology(time=t, mounts=mounts, block_devices=bds, root=_root_mount(mounts), history=[t])


def _mount_key(m: dict[str, object]) -> tuple[object, ...]:
    return (m["id"], m["dev"], m["mountpoint"], m["fstype"])


def merge(older: Topology, newer: Topology) -> Topology:
    """A topology that keeps what `older` saw and `newer` no longer does.

    After switch_root the initramfs mounts (its root, /run/initramfs/live before the
    move …) are unreachable from the new root and vanish from mountinfo, and a loop's
    backing path may become unreachable: older entries are kept with `gone: True` and
    `seen_until`; a device present in both takes the newer entry, filling loop backing
    (dev, ino) from the older one when the newer read could not get it.
    """
    mounts = [dict(m) for m in newer.mounts]
    keys = {_mount_key(m) for m in mounts}
    for m in older.mounts:
        if _mount_key(m) not in keys:
            g = dict(m)
            if not g.get("gone"):
                g["gone"] = True
                g["seen_until"] = older.time
            mounts.append(g)
    bds: dict[str, dict[str, object]] = {k: dict(v) for k, v in newer.block_devices.items()}
    for name, ob in older.block_devices.items():
        nb = bds.get(name)
        if nb is None or nb["dev"] != ob["dev"]:
            key = name if nb is None else f"{name}@{older.time:.3f}"
            g = dict(ob)
            if not g.get("gone"):
                g["gone"] = True
                g["seen_until"] = older.time
            bds[key] = g
            continue
        ol, nl = ob.get("loop"), nb.get("loop")
        if ol and nl and ol.get("backing_dev") and not nl.get("backing_dev") and nl.get("bound"):
            nl = dict(nl)
            for k in ("backing_dev", "backing_ino"):
                nl[k] = ol[k]
            nl["source"] = "merged"
            nb["loop"] = nl
        if ol and nl and ol.get("backing_file") and nl.get("backing_ino") == ol.get("backing_ino") \
                and nl.get("backing_dev") == ol.get("backing_dev"):
            # The older, fuller path (before switch_root made it relative to a hidden root).
            nl.setdefault("backing_file_initramfs", ol["backing_file"])
        if ob.get("dm", {}).get("table") and not nb.get("dm", {}).get("table"):
            nb["dm"] = dict(nb["dm"], table=ob["dm"]["table"])
    return Topology(
        time=newer.time, mounts=mounts, block_devices=bds,
        root=newer.root or older.root,
        bdev_sb_dev=newer.bdev_sb_dev or older.bdev_sb_dev,
        history=sorted(set(older.history + newer.history)),
    )
