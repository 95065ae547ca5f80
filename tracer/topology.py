"""The storage stack: mounts, block devices and how they sit on each other.

A filemap tracepoint says "dev 7:0 inode 2"; meaning comes from here. The topology is
read from /proc/self/mountinfo and /sys/class/block (plus LOOP_GET_STATUS64 and
`dmsetup table`), stored in the recording as plain JSON (`Topology.to_dict`) and read
back on another machine (`Topology.from_dict`). `merge` keeps what the initramfs could
see after switch_root hides it.

Device numbers are strings "major:minor" everywhere. Two encodings meet here:
  - the kernel's dev_t (tracepoints, bdev inode numbers): major = d >> 20, minor = d & 0xfffff
  - user space's st_dev / LOOP_GET_STATUS64's lo_device (huge_encode_dev): os.major/os.minor
`devstr` turns either into "maj:min".

Light on purpose (stdlib only; pyroute2 only inside UeventWatcher): imported by the
recorder in early boot.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import socket
import stat
import struct
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .errors import FootprintError

__all__ = [
    "Topology", "read_mounts", "parse_mountinfo", "read_block_devices", "read_dm_tables",
    "parse_dm_table", "loop_status", "read_topology", "merge", "resolve", "layer_of",
    "path_of", "double_caching", "devstr", "kdev", "learn_bdev_sb_dev", "UeventWatcher", "parse_uevent",
]

# --- device numbers -------------------------------------------------------------------

_MINORBITS = 20  # include/linux/kdev_t.h


def kdev(dev: str) -> int:
    """"maj:min" → the kernel's internal dev_t (as tracepoints report it)."""
    ma, mi = dev.split(":")
    return (int(ma) << _MINORBITS) | int(mi)


def devstr(dev: Any, kernel: bool = False) -> str:
    """"maj:min" from a string, a (major, minor) pair, a user-space st_dev
    (kernel=False) or a kernel dev_t (kernel=True, the tracepoints' s_dev)."""
    if isinstance(dev, str):
        return dev
    if isinstance(dev, tuple):
        return f"{dev[0]}:{dev[1]}"
    if kernel:
        return f"{dev >> _MINORBITS}:{dev & ((1 << _MINORBITS) - 1)}"
    return f"{os.major(dev)}:{os.minor(dev)}"


# --- mounts -----------------------------------------------------------------------------

_OCTAL = re.compile(rb"\\([0-7]{3})")


def _unescape(field_: bytes) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo (fs/proc_namespace.c,
    mangle()); other bytes pass through raw, so decode with the file-system encoding
    (surrogateescape) to round-trip any name."""
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), field_))


def parse_mountinfo(data: bytes) -> List[Dict[str, Any]]:
    """Parse /proc/<pid>/mountinfo (Documentation/filesystems/proc.rst, 3.5):
    `id parent maj:min root mountpoint opts [optional...] - fstype source superopts`.

    Fields are split on single spaces (names have their spaces escaped), and the optional
    fields end at the first lone "-" after field 6 — a mountpoint named "-" would be
    "/…/-", never a lone "-".
    """
    mounts: List[Dict[str, Any]] = []
    for line in data.split(b"\n"):
        if not line:
            continue
        f = line.split(b" ")
        if len(f) < 10:
            continue
        try:
            sep = f.index(b"-", 6)
        except ValueError:
            continue
        tail = f[sep + 1:]
        if len(tail) < 2:
            continue
        mounts.append({
            "id": int(f[0]),
            "parent": int(f[1]),
            "dev": f[2].decode(),
            "root": _unescape(f[3]),
            "mountpoint": _unescape(f[4]),
            "options": f[5].decode(errors="replace"),
            "optional": [x.decode(errors="replace") for x in f[6:sep]],
            "fstype": _unescape(tail[0]),
            "source": _unescape(tail[1]),
            "super_options": _unescape(tail[2]) if len(tail) > 2 else "",
        })
    return mounts


def read_mounts(proc: str = "/proc") -> List[Dict[str, Any]]:
    """The system's mounts: init's (/proc/1/mountinfo), not the caller's — the early-boot
    recorder runs in a mount namespace and chroot of its own, which would hide them.
    Falls back to /proc/self/mountinfo where init's is not readable (not root). After
    switch_root the initramfs mounts disappear from it — see `merge`."""
    for who in ("1", "self"):
        try:
            with open(os.path.join(proc, who, "mountinfo"), "rb") as f:
                return parse_mountinfo(f.read())
        except OSError:
            continue
    raise FootprintError(f"cannot read {proc}/self/mountinfo: mount /proc")


def system_root() -> str:
    """Prefix under which the system's paths are reachable from here: "" normally,
    "/proc/1/root" in a chroot of our own (the early-boot recorder)."""
    try:
        mine, init = os.stat("/"), os.stat("/proc/1/root")
    except OSError:
        return ""
    return "" if (mine.st_dev, mine.st_ino) == (init.st_dev, init.st_ino) else "/proc/1/root"


# --- block devices -------------------------------------------------------------------------

# LOOP_GET_STATUS64 (include/uapi/linux/loop.h): struct loop_info64 is
# u64 lo_device, lo_inode, lo_rdevice, lo_offset, lo_sizelimit; u32 lo_number,
# lo_encrypt_type, lo_encrypt_key_size, lo_flags; u8 lo_file_name[64],
# lo_crypt_name[64], lo_encrypt_key[32]; u64 lo_init[2]  = 232 bytes.
_LOOP_GET_STATUS64 = 0x4C05
_LOOP_INFO64 = struct.Struct("=QQQQQIIII64s64s32sQQ")
_LO_FLAGS = {1: "read_only", 4: "autoclear", 8: "partscan", 16: "direct_io"}


def loop_status(devnode: str) -> Optional[Dict[str, Any]]:
    """LOOP_GET_STATUS64 on a loop device node: the backing file's (dev, ino) exactly as
    the kernel holds them (loop_get_status: vfs_getattr of lo_backing_file), even when
    the path is hidden after switch_root or deleted. None if unbound or not openable."""
    try:
        fd = os.open(devnode, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        buf = fcntl.ioctl(fd, _LOOP_GET_STATUS64, bytes(_LOOP_INFO64.size))
    except OSError:
        return None  # ENXIO: not bound
    finally:
        os.close(fd)
    (dev, ino, _rdev, offset, sizelimit, number, _et, _eks, flags, name,
     _cn, _key, _i0, _i1) = _LOOP_INFO64.unpack(buf)
    return {
        "backing_dev": devstr(dev),  # huge_encode_dev → same layout as user st_dev
        "backing_ino": ino,
        "offset": offset,
        "sizelimit": sizelimit,
        "number": number,
        "flags": [n for b, n in _LO_FLAGS.items() if flags & b],
        "file_name": os.fsdecode(name.split(b"\0", 1)[0]),  # truncated to 63 bytes
    }


def _read_attr(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as f:
            return os.fsdecode(f.read()).rstrip("\n")
    except OSError:
        return None


def _int_attr(path: str) -> Optional[int]:
    v = _read_attr(path)
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def _kind_of(name: str, major: int, sysdir: str) -> str:
    """loop/dm/part/rom/ram/zram/md/nbd/disk by major number (Documentation/admin-guide/
    devices.txt) and name; partitions have a `partition` attribute."""
    if os.path.exists(os.path.join(sysdir, "partition")):
        return "part"
    if major == 7 or name.startswith("loop"):
        return "loop"
    if name.startswith("dm-"):
        return "dm"
    if major == 11 or name.startswith("sr"):
        return "rom"
    if major == 1 or name.startswith("ram"):
        return "ram"
    if name.startswith("zram"):
        return "zram"
    if name.startswith("md"):
        return "md"
    if name.startswith("nbd"):
        return "nbd"
    return "disk"


def _loop_info(name: str, sysdir: str, dev: str, devdir: str) -> Dict[str, Any]:
    """A loop device's backing: sysfs (drivers/block/loop.c: loop/backing_file is the
    d_path, with " (deleted)" when unlinked), then LOOP_GET_STATUS64 for (dev, ino)."""
    lo = os.path.join(sysdir, "loop")
    info: Dict[str, Any] = {"bound": os.path.isdir(lo)}
    if not info["bound"]:
        return info
    bf = _read_attr(os.path.join(lo, "backing_file"))
    info["backing_file"] = bf
    info["deleted"] = bool(bf and bf.endswith(" (deleted)"))
    for attr in ("offset", "sizelimit", "autoclear", "partscan", "dio"):
        info[attr] = _int_attr(os.path.join(lo, attr))
    st = loop_status(os.path.join(devdir, name))
    if st is None:
        # No device node (or a stale one): try a private node, then stat the path.
        st = _loop_status_via_mknod(dev)
    if st is not None:
        info.update(backing_dev=st["backing_dev"], backing_ino=st["backing_ino"],
                    flags=st["flags"], source="LOOP_GET_STATUS64")
        if info.get("offset") is None:
            info["offset"] = st["offset"]
    elif bf and not info["deleted"]:
        try:
            s = os.stat(bf)
            info.update(backing_dev=devstr(s.st_dev), backing_ino=s.st_ino, source="stat")
        except OSError:
            pass
    return info


def _loop_status_via_mknod(dev: str) -> Optional[Dict[str, Any]]:
    """LOOP_GET_STATUS64 through a temporary device node, for when /dev lacks one."""
    if os.geteuid() != 0:
        return None
    ma, mi = (int(x) for x in dev.split(":"))
    path = f"/run/footprint-loop-{os.getpid()}-{ma}-{mi}"
    try:
        os.mknod(path, 0o600 | stat.S_IFBLK, os.makedev(ma, mi))
    except OSError:
        return None
    try:
        return loop_status(path)
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def read_block_devices(sys: str = "/sys", devdir: str = "/dev") -> Dict[str, Dict[str, Any]]:
    """Every /sys/class/block entry → {name: {name, dev, kind, size_bytes, ro, removable,
    slaves, holders, parent (partitions), loop{...}, dm{...}}}.

    Relies on: `dev` (maj:min), `size` in 512-byte sectors whatever the logical block
    size (block/genhd.c), `slaves/` and `holders/` (bd_link_disk_holder, used by dm),
    `dm/name`, `dm/uuid`, and the loop attributes.
    """
    base = os.path.join(sys, "class", "block")
    out: Dict[str, Dict[str, Any]] = {}
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return out
    for name in names:
        d = os.path.join(base, name)
        dev = _read_attr(os.path.join(d, "dev"))
        if not dev:
            continue
        major = int(dev.split(":")[0])
        kind = _kind_of(name, major, d)
        sectors = _int_attr(os.path.join(d, "size")) or 0
        bd: Dict[str, Any] = {
            "name": name, "dev": dev, "kind": kind, "size_bytes": sectors * 512,
            "ro": _int_attr(os.path.join(d, "ro")), "removable": _int_attr(os.path.join(d, "removable")),
        }
        for rel in ("slaves", "holders"):
            try:
                bd[rel] = sorted(os.listdir(os.path.join(d, rel)))
            except OSError:
                bd[rel] = []
        if kind == "part":
            # /sys/class/block/vda1 → …/block/vda/vda1: the parent disk is the directory above.
            bd["parent"] = os.path.basename(os.path.dirname(os.path.realpath(d)))
        if kind == "loop":
            bd["loop"] = _loop_info(name, d, dev, devdir)
        if kind == "dm":
            bd["dm"] = {
                "name": _read_attr(os.path.join(d, "dm", "name")),
                "uuid": _read_attr(os.path.join(d, "dm", "uuid")),
                "suspended": _int_attr(os.path.join(d, "dm", "suspended")),
                "table": [],
            }
        out[name] = bd
    return out


# File system signatures (offset, magic) for block devices that no mount shows — dracut
# lazily unmounts the squashfs once rootfs.img is on its loop, so its superblock lives on
# with no mountinfo line. Read with O_DIRECT: probing must not add page cache.
_SIGNATURES = (
    ("squashfs", 0, b"hsqs"),
    ("ext4", 1080, b"\x53\xef"),
    ("iso9660", 32769, b"CD001"),
    ("xfs", 0, b"XFSB"),
    ("btrfs", 65600, b"_BHRfS_M"),
)


def probe_fstype(devnode: str) -> Optional[str]:
    """The file system type written on a block device, by superblock magic, or None."""
    import mmap

    try:
        fd = os.open(devnode, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_DIRECT", 0))
    except OSError:
        return None
    buf = mmap.mmap(-1, 4096)  # page aligned, as O_DIRECT wants
    try:
        blocks: Dict[int, bytes] = {}
        for fstype, offset, magic in _SIGNATURES:
            block = offset // 4096 * 4096
            if block not in blocks:
                try:
                    n = os.preadv(fd, [buf], block)
                except OSError:
                    n = 0
                blocks[block] = bytes(buf[:n])
            data = blocks[block]
            at = offset - block
            if data[at:at + len(magic)] == magic:
                return fstype
        return None
    finally:
        buf.close()
        os.close(fd)


# dm targets whose table names other devices, and the role of each device argument
# (drivers/md/dm-*.c constructors).
_DM_ROLES = {
    "linear": ["device"],
    "snapshot": ["origin", "cow"],
    "snapshot-origin": ["origin"],
    "snapshot-merge": ["origin", "cow"],
    "thin-pool": ["metadata", "data"],
    "thin": ["pool"],
    "crypt": [None, None, None, "device"],  # cipher key iv_offset device offset
    "verity": [None, "data", "hash"],
    "mirror": [],
    "striped": [],
    "zero": [], "error": [],
}
_DEVARG = re.compile(r"^\d+:\d+$")


def parse_dm_table(text: str) -> Dict[str, List[Dict[str, Any]]]:
    """`dmsetup table` output (`name: start length target args…`) → {name: [targets]},
    each target {start, length (512-byte sectors), target, args, devices: [{dev, role}]}."""
    out: Dict[str, List[Dict[str, Any]]] = {}
    for line in text.splitlines():
        name, sep, rest = line.rpartition(": ")
        if not sep:
            continue
        f = rest.split()
        if len(f) < 3:
            continue
        target, args = f[2], f[3:]
        roles = _DM_ROLES.get(target)
        devices = []
        for i, a in enumerate(args):
            if _DEVARG.match(a):
                role = roles[i] if roles and i < len(roles) and roles[i] else "device"
                devices.append({"dev": a, "role": role})
        row: Dict[str, Any] = {"start": int(f[0]), "length": int(f[1]), "target": target,
                               "args": args, "devices": devices}
        if target in ("snapshot", "snapshot-merge") and len(args) >= 4:
            row["persistent"] = args[2]
            row["chunk_sectors"] = int(args[3]) if args[3].isdigit() else None
        out.setdefault(name, []).append(row)
    return out


def read_dm_tables() -> Dict[str, List[Dict[str, Any]]]:
    """`dmsetup table` if dmsetup exists (device-mapper ioctls need root)."""
    exe = shutil.which("dmsetup") or next(
        (p for p in ("/usr/sbin/dmsetup", "/sbin/dmsetup") if os.access(p, os.X_OK)), None)
    if not exe:
        return {}
    try:
        r = subprocess.run([exe, "table"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {}
    if r.returncode != 0:
        return {}
    return parse_dm_table(r.stdout)


# --- the topology ---------------------------------------------------------------------------


@dataclass
class Topology:
    """Mounts and block devices seen at `time` (CLOCK_BOOTTIME seconds).

    `gone` marks mounts/devices kept by `merge` that the newer view no longer shows.
    `bdev_sb_dev` is the s_dev of the kernel's bdev pseudo file system (where block-device
    inodes live) once known — it is anonymous (0:N) and mounted nowhere visible.
    """

    time: float
    mounts: List[Dict[str, Any]]
    block_devices: Dict[str, Dict[str, Any]]
    root: Optional[Dict[str, Any]] = None
    bdev_sb_dev: Optional[str] = None
    history: List[float] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return {"time": self.time, "mounts": self.mounts, "block_devices": self.block_devices,
                "root": self.root, "bdev_sb_dev": self.bdev_sb_dev, "history": self.history}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Topology":
        return cls(time=d["time"], mounts=list(d["mounts"]), block_devices=dict(d["block_devices"]),
                   root=d.get("root"), bdev_sb_dev=d.get("bdev_sb_dev"),
                   history=list(d.get("history", [])))

    # -- indexes -------------------------------------------------------------------------

    def device(self, dev: str) -> Optional[Dict[str, Any]]:
        """The block device with number `dev` (current entries before gone ones)."""
        best = None
        for bd in self.block_devices.values():
            if bd["dev"] == dev:
                if not bd.get("gone"):
                    return bd
                best = best or bd
        return best

    def mounts_of(self, dev: str) -> List[Dict[str, Any]]:
        """Mounts of the superblock `dev` (bind mounts share it), current ones first."""
        ms = [m for m in self.mounts if m["dev"] == dev]
        ms.sort(key=lambda m: (bool(m.get("gone")), m["root"] != "/", len(m["mountpoint"])))
        return ms

    def loop_backed_by(self, dev: str, ino: int) -> List[Dict[str, Any]]:
        """Loop devices whose backing file is (dev, ino)."""
        return [bd for bd in self.block_devices.values()
                if bd.get("loop", {}).get("backing_dev") == dev
                and bd["loop"].get("backing_ino") == ino]


def _root_mount(mounts: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    roots = [m for m in mounts if m["mountpoint"] == "/"]
    if not roots:
        return None
    # Over-mounted "/" (switch_root moves the new root over /): the last one is visible.
    m = roots[-1]
    return {"dev": m["dev"], "fstype": m["fstype"], "source": m["source"], "id": m["id"]}


def read_topology(proc: str = "/proc", sys: str = "/sys", devdir: str = "/dev",
                  dm: bool = True) -> Topology:
    """Mounts + block devices + dm tables, stamped with CLOCK_BOOTTIME. Loop, dm, optical
    and disk devices that no mount shows get `probed_fstype` from their superblock (a
    recorder in a mount namespace of its own may not see the real root's mount: a plain
    boot's root disk then still reads "ext4 on vda (not mounted)", not "unmounted vda")."""
    t = time.clock_gettime(time.CLOCK_BOOTTIME)
    mounts = read_mounts(proc)
    bds = read_block_devices(sys, devdir)
    mounted = {m["dev"] for m in mounts}
    for bd in bds.values():
        bound = bd["kind"] != "loop" or bd.get("loop", {}).get("bound")
        if bd["kind"] in ("loop", "dm", "rom", "disk", "part") and bound and bd["dev"] not in mounted and bd["size_bytes"]:
            fstype = probe_fstype(os.path.join(devdir, bd["name"]))
            if fstype:
                bd["probed_fstype"] = fstype
    if dm and any(bd["kind"] == "dm" for bd in bds.values()):
        tables = read_dm_tables()
        for bd in bds.values():
            if bd["kind"] == "dm" and bd["dm"].get("name") in tables:
                bd["dm"]["table"] = tables[bd["dm"]["name"]]
    return Topology(time=t, mounts=mounts, block_devices=bds, root=_root_mount(mounts), history=[t])


def _mount_key(m: Dict[str, Any]) -> Tuple[Any, ...]:
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
    bds: Dict[str, Dict[str, Any]] = {k: dict(v) for k, v in newer.block_devices.items()}
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


# --- labels and resolution ----------------------------------------------------------------


def _device_label(bd: Dict[str, Any]) -> str:
    if bd["kind"] == "dm" and bd.get("dm", {}).get("name"):
        return f"dm {bd['dm']['name']}"
    return bd["name"]


def _is_initramfs_root(m: Dict[str, Any]) -> bool:
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
        if bd:
            return f"{m['fstype']} on {_device_label(bd)}"
        return f"{m['fstype']} {m['mountpoint']}"
    if bd and bd.get("probed_fstype"):
        return f"{bd['probed_fstype']} on {_device_label(bd)} (not mounted)"
    if bd:
        return f"unmounted {_device_label(bd)}"
    return f"dev {dev}"


def _bdev_of_inode(topo: Topology, dev: str, ino: int) -> Optional[Dict[str, Any]]:
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


def learn_bdev_sb_dev(topo: Topology, dev: Any, ino: int) -> bool:
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


def _fstype(topo: Topology, dev: str) -> Optional[str]:
    ms = topo.mounts_of(dev)
    if ms:
        return ms[0]["fstype"]
    bd = topo.device(dev)
    return bd.get("probed_fstype") if bd else None


def _fs_entry(topo: Topology, dev: str) -> Dict[str, Any]:
    ms = topo.mounts_of(dev)
    return {
        "type": "fs", "dev": dev, "label": layer_of(topo, dev),
        "fstype": _fstype(topo, dev),
        "mountpoints": [m["mountpoint"] for m in ms],
    }


def _below_device(topo: Topology, bd: Dict[str, Any]) -> List[Tuple[str, Dict[str, Any]]]:
    """What a block device is built on: [(role, ref)], ref {"block": dev} or
    {"file": (dev, ino), "path": ...}."""
    out: List[Tuple[str, Dict[str, Any]]] = []
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


def _device_entry(topo: Topology, bd: Dict[str, Any], role: Optional[str]) -> Dict[str, Any]:
    e: Dict[str, Any] = {"type": "block", "dev": bd["dev"], "name": bd["name"], "kind": bd["kind"],
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


def _walk_device(topo: Topology, dev: str, role: Optional[str], depth: int,
                 out: List[Dict[str, Any]], seen: set) -> None:
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


def _walk_file(topo: Topology, dev: str, ino: Optional[int], path: Optional[str], depth: int,
               out: List[Dict[str, Any]], seen: set) -> None:
    fs = _fs_entry(topo, dev)
    out.append({"type": "file", "dev": dev, "ino": ino, "path": path, "depth": depth,
                "label": f"{path or f'inode {ino}'} on {fs['label']}"})
    _walk_fs(topo, dev, depth + 1, out, seen)


def _walk_fs(topo: Topology, dev: str, depth: int, out: List[Dict[str, Any]], seen: set) -> None:
    if ("f", dev) in seen:
        return
    seen.add(("f", dev))
    e = _fs_entry(topo, dev)
    e["depth"] = depth
    out.append(e)
    if topo.device(dev) is not None:
        _walk_device(topo, dev, "device", depth + 1, out, seen)


def resolve(topo: Topology, dev: Any, ino: int) -> Dict[str, Any]:
    """What the page-cache owner (s_dev, inode) is.

    `dev` is "maj:min", or an int in the kernel's encoding (the tracepoint's s_dev).
    Returns {dev, ino, what: "bdev"|"file"|"unknown", layer, fstype, mountpoints,
    device (bdev only), roles: [loop backing roles of this inode], path (when known),
    chain: [layers top → bottom, each {type: fs|block|file, dev, label, depth, role …}]}.
    For a bdev inode the chain starts at the block device (its page cache is meminfo's
    Buffers); for a file it starts at its file system.
    """
    d = devstr(dev, kernel=True) if isinstance(dev, int) else devstr(dev)
    res: Dict[str, Any] = {"dev": d, "ino": ino}
    chain: List[Dict[str, Any]] = []
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


# --- paths ---------------------------------------------------------------------------------


def path_of(topo: Topology, dev: Any, ino: int, budget: Tuple[int, float] = (200_000, 5.0)
            ) -> Optional[str]:
    """A path for inode `ino` on superblock `dev`: free for loop backing files (sysfs);
    otherwise a walk of a current mount of `dev` with os.scandir (no symlinks followed,
    no crossing into other mounts), bounded by (max entries, max seconds). None if not
    found within the budget."""
    d = devstr(dev, kernel=True) if isinstance(dev, int) else devstr(dev)
    for lb in topo.loop_backed_by(d, ino):
        bf = lb["loop"].get("backing_file")
        if bf:
            return bf
    max_files, max_secs = budget
    deadline = time.monotonic() + max_secs
    count = 0
    for m in topo.mounts_of(d):
        if m.get("gone"):
            continue
        top = m["mountpoint"]
        try:
            st = os.lstat(top)
        except OSError:
            continue
        if devstr(st.st_dev) != d:
            continue  # over-mounted
        if st.st_ino == ino:
            return top
        stack = [top]
        while stack:
            p = stack.pop()
            try:
                it = os.scandir(p)
            except OSError:
                continue
            with it:
                for e in it:
                    count += 1
                    if count > max_files or (count & 1023) == 0 and time.monotonic() > deadline:
                        return None
                    try:
                        if e.inode() == ino and devstr(e.stat(follow_symlinks=False).st_dev) == d:
                            return e.path
                        if e.is_dir(follow_symlinks=False):
                            if devstr(e.stat(follow_symlinks=False).st_dev) == d:
                                stack.append(e.path)
                    except OSError:
                        continue
    return None


def paths_of(topo: Topology, wanted: Dict[str, set], budget: Tuple[int, float] = (300_000, 5.0)
             ) -> Dict[Tuple[str, int], str]:
    """Paths for many inodes at once: one bounded walk per mounted superblock in `wanted`
    ({dev: {ino, ...}}), stopping early once every inode of a superblock is found."""
    found: Dict[Tuple[str, int], str] = {}
    max_files, max_secs = budget
    deadline = time.monotonic() + max_secs
    count = 0
    root = system_root()
    for dev, inos in wanted.items():
        left = set(inos)
        for m in topo.mounts_of(dev):
            if not left or m.get("gone"):
                break
            stack = [root + m["mountpoint"]]
            while stack and left:
                try:
                    it = os.scandir(stack.pop())
                except OSError:
                    continue
                with it:
                    for e in it:
                        count += 1
                        if count > max_files or time.monotonic() > deadline:
                            return found
                        try:
                            ino = e.inode()
                            if ino in left and devstr(e.stat(follow_symlinks=False).st_dev) == dev:
                                found[(dev, ino)] = e.path[len(root):]
                                left.discard(ino)
                            if e.is_dir(follow_symlinks=False) and \
                                    devstr(e.stat(follow_symlinks=False).st_dev) == dev:
                                stack.append(e.path)
                        except OSError:
                            continue
    return found


# --- double caching ----------------------------------------------------------------------


def _file_levels(topo: Topology, dev: str, seen: set) -> List[List[Dict[str, Any]]]:
    """From superblock `dev` down: every path of image files that back it."""
    bd = topo.device(dev)
    if bd is None or ("b", dev) in seen:
        return [[]]
    seen = seen | {("b", dev)}
    paths: List[List[Dict[str, Any]]] = []
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


def double_caching(topo: Topology) -> List[Dict[str, Any]]:
    """Chains along which the same data can sit in the page cache at several layers.

    For each mounted file system on a block device that (through dm and partitions)
    rests on a loop device: the top (all page cache of that superblock) and, level by
    level, the image file backing each loop — itself cached on the file system below
    (dracut attaches loops buffered). Returns [{top: {dev, fstype, mountpoints, layer},
    levels: [{dev, ino, path, fstype, layer, label, via}], label}]; a dm snapshot gives
    one chain per branch (origin, cow).
    """
    chains: List[Dict[str, Any]] = []
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


# --- uevents ---------------------------------------------------------------------------------

_NETLINK_KOBJECT_UEVENT = 15
_KERNEL_GROUP = 1  # raw kernel uevents (no udevd needed: usable from the cmdline hook on)


def parse_uevent(data: bytes) -> Optional[Dict[str, str]]:
    """A kernel uevent datagram `action@devpath\\0KEY=VALUE\\0…` → {KEY: VALUE}.
    (lib/kobject_uevent.c). libudev-format datagrams (group 2) are skipped."""
    if data.startswith(b"libudev\0"):
        return None
    parts = data.split(b"\0")
    env: Dict[str, str] = {}
    for p in parts[1:]:
        k, sep, v = p.partition(b"=")
        if sep and k:
            env[k.decode(errors="replace")] = os.fsdecode(v)
    if "ACTION" not in env and b"@" in parts[0]:
        a, _, path = parts[0].partition(b"@")
        env["ACTION"], env["DEVPATH"] = a.decode(errors="replace"), os.fsdecode(path)
    return env


class UeventWatcher:
    """Block-device uevents (add/change/remove …), pollable from the recorder's loop.

    `fileno()` for select/poll; `poll()` drains every queued datagram (non-blocking recv
    until EAGAIN) and returns the block events, each stamped with CLOCK_BOOTTIME seconds
    (`time`). Why our own socket: pyroute2 0.9's UeventSocket reads through an internal
    buffer, so select() on its fd saw 1 of 3 events and .get() from a thread saw none.
    The datagrams are parsed with pyroute2's MarshalUevent when available (same format
    as parse_uevent, which is the fallback for a guest without pyroute2).
    `overflows` counts ENOBUFS (the kernel dropped events: the buffer was full).
    """

    def __init__(self, subsystems: Tuple[str, ...] = ("block",), rcvbuf: int = 4 << 20,
                 use_pyroute2: bool = True) -> None:
        self.subsystems = subsystems
        self.overflows = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                                  _NETLINK_KOBJECT_UEVENT)
        try:
            # SO_RCVBUFFORCE (root) beats rmem_max; boot emits bursts of uevents.
            self.sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            self.sock.bind((0, _KERNEL_GROUP))
        except OSError as e:
            self.sock.close()
            if e.errno == errno.EPERM:
                raise FootprintError("cannot listen to kernel uevents: run footprint as root") from None
            raise
        self.sock.setblocking(False)
        self._parse = self._pick_parser() if use_pyroute2 else parse_uevent

    @staticmethod
    def _pick_parser():
        try:
            from pyroute2.netlink.uevent import MarshalUevent  # type: ignore
        except Exception:  # pyroute2 absent or moved: our parser reads the same format
            return parse_uevent
        marshal = MarshalUevent()

        def _parse(data: bytes) -> Optional[Dict[str, str]]:
            if data.startswith(b"libudev\0"):
                return None
            try:
                msg = next(iter(marshal.parse(data)))
            except Exception:
                return parse_uevent(data)
            env = {k: v for k, v in msg.items() if k != "header" and isinstance(v, str)}
            return env or parse_uevent(data)

        return _parse

    def fileno(self) -> int:
        return self.sock.fileno()

    def _drain(self) -> Iterator[bytes]:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.overflows += 1
                    continue
                raise
            yield data

    def poll(self) -> List[Dict[str, Any]]:
        """Every event queued so far (never blocks)."""
        out: List[Dict[str, Any]] = []
        for data in self._drain():
            t = time.clock_gettime(time.CLOCK_BOOTTIME)
            env = self._parse(data)
            if not env or (self.subsystems and env.get("SUBSYSTEM") not in self.subsystems):
                continue
            ev: Dict[str, Any] = {"time": t}
            ev.update(env)
            if "MAJOR" in env and "MINOR" in env:
                ev["dev"] = f"{env['MAJOR']}:{env['MINOR']}"
            out.append(ev)
        return out

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "UeventWatcher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
