"""Block devices from sysfs (/sys/class/block: loop/backing_file, dm/name, slaves,
holders), LOOP_GET_STATUS64 where sysfs is silent, a superblock probe for devices nobody
mounted in our namespace, and device-mapper tables from `dmsetup table`.

Nothing here opens a device it has no reason to: a loop device's status is asked only
when its backing file cannot be stat'ed, a superblock read only of fixed, non-empty
devices that no mount, no udev record and no kernel superblock names.
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
import struct

from .devices import devstr


# LOOP_GET_STATUS64 (include/uapi/linux/loop.h): struct loop_info64 is
# u64 lo_device, lo_inode, lo_rdevice, lo_offset, lo_sizelimit; u32 lo_number,
# lo_encrypt_type, lo_encrypt_key_size, lo_flags; u8 lo_file_name[64],
# lo_crypt_name[64], lo_encrypt_key[32]; u64 lo_init[2]  = 232 bytes.
_LOOP_GET_STATUS64 = 0x4C05
_LOOP_INFO64 = struct.Struct("=QQQQQIIII64s64s32sQQ")
_LO_FLAGS = {1: "read_only", 4: "autoclear", 8: "partscan", 16: "direct_io"}


def loop_status(devnode: str) -> dict[str, object] | None:
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


def _read_attr(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return os.fsdecode(f.read()).rstrip("\n")
    except OSError:
        return None


def _int_attr(path: str) -> int | None:
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


def _loop_info(name: str, sysdir: str, dev: str, devdir: str, size: int = -1) -> dict[str, object]:
    """A loop device's backing: sysfs (drivers/block/loop.c: loop/backing_file is the
    d_path, with " (deleted)" when unlinked), then LOOP_GET_STATUS64 for (dev, ino)."""
    lo = os.path.join(sysdir, "loop")
    info: dict[str, object] = {"bound": os.path.isdir(lo)}
    if not info["bound"]:
        return info
    bf = _read_attr(os.path.join(lo, "backing_file"))
    info["backing_file"] = bf
    info["deleted"] = bool(bf and bf.endswith(" (deleted)"))
    for attr in ("offset", "sizelimit", "autoclear", "partscan", "dio"):
        info[attr] = _int_attr(os.path.join(lo, attr))
    if bf and not info["deleted"]:
        # The path sysfs gives, stat'ed: no open of the device. Only a reachable regular
        # file counts (after switch_root the same path may name another file).
        try:
            s = os.stat(bf)
            # d_path is relative to our root: the same string may name another file
            # here (a chroot, after switch_root). The loop's size (loop_set_size: the
            # backing size less offset, capped by sizelimit, in sectors) must agree.
            want = max(0, s.st_size - (info.get("offset") or 0))
            if info.get("sizelimit"):
                want = min(want, info["sizelimit"])
            if stat.S_ISREG(s.st_mode) and (size < 0 or want // 512 * 512 == size):
                info.update(backing_dev=devstr(s.st_dev), backing_ino=s.st_ino, source="stat")
                return info
        except OSError:
            pass
    # Deleted or hidden backing file: ask the loop driver (an ioctl, no I/O).
    st = loop_status(os.path.join(devdir, name))
    if st is None:
        st = _loop_status_via_mknod(dev)  # no device node (or a stale one)
    if st is not None:
        info.update(backing_dev=st["backing_dev"], backing_ino=st["backing_ino"],
                    flags=st["flags"], source="LOOP_GET_STATUS64")
        if info.get("offset") is None:
            info["offset"] = st["offset"]
    return info


def _loop_status_via_mknod(dev: str) -> dict[str, object] | None:
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


def read_block_devices(sys: str = "/sys", devdir: str = "/dev") -> dict[str, dict[str, object]]:
    """Every /sys/class/block entry → {name: {name, dev, kind, size_bytes, ro, removable,
    slaves, holders, parent (partitions), loop{...}, dm{...}}}.

    Relies on: `dev` (maj:min), `size` in 512-byte sectors whatever the logical block
    size (block/genhd.c), `slaves/` and `holders/` (bd_link_disk_holder, used by dm),
    `dm/name`, `dm/uuid`, and the loop attributes.
    """
    base = os.path.join(sys, "class", "block")
    out: dict[str, dict[str, object]] = {}
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
        bd: dict[str, object] = {
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
            bd["loop"] = _loop_info(name, d, dev, devdir, sectors * 512)
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


def udev_fstype(dev: str, run: str = "/run") -> str | None:
    """The file system type udev's blkid builtin found on block device `dev` ("maj:min"):
    `E:ID_FS_TYPE=` in its database, /run/udev/data/b<maj>:<min> (systemd-udevd and
    eudev alike). Costs no open of the device; None when udev has not probed it."""
    try:
        with open(os.path.join(run, "udev", "data", f"b{dev}"), "rb") as f:
            data = f.read(1 << 16)
    except OSError:
        return None
    for line in data.split(b"\n"):
        if line.startswith(b"E:ID_FS_TYPE="):
            v = line[13:].decode(errors="replace").strip()
            return v if v and v.isprintable() and len(v) < 32 else None
    return None


def may_open(bd: dict[str, object]) -> bool:
    """Whether opening the device node costs nothing and logs nothing: never a removable
    device, an optical drive or a floppy (opening an empty one makes the driver check
    the media: "I/O error, dev fd0"), nor a device of size 0."""
    return (not bd.get("removable") and bd.get("size_bytes", 0) > 0
            and bd["kind"] not in ("rom",) and not bd["name"].startswith("fd"))


def probe_fstype(devnode: str) -> str | None:
    """The file system type written on a block device, by superblock magic, or None.
    A last resort (read_topology asks udev's database and the kernel's superblocks
    first); callers check may_open() before."""
    import mmap

    try:
        fd = os.open(devnode, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_DIRECT", 0))
    except OSError:
        return None
    buf = mmap.mmap(-1, 4096)  # page aligned, as O_DIRECT wants
    try:
        blocks: dict[int, bytes] = {}
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


def parse_dm_table(text: str) -> dict[str, list[dict[str, object]]]:
    """`dmsetup table` output (`name: start length target args…`) → {name: [targets]},
    each target {start, length (512-byte sectors), target, args, devices: [{dev, role}]}."""
    out: dict[str, list[dict[str, object]]] = {}
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
        row: dict[str, object] = {"start": int(f[0]), "length": int(f[1]), "target": target,
                               "args": args, "devices": devices}
        if target in ("snapshot", "snapshot-merge") and len(args) >= 4:
            row["persistent"] = args[2]
            row["chunk_sectors"] = int(args[3]) if args[3].isdigit() else None
        out.setdefault(name, []).append(row)
    return out


def read_dm_tables() -> dict[str, list[dict[str, object]]]:
    """`dmsetup table` if dmsetup exists (device-mapper ioctls need root)."""
    import shutil  # here: the sampler imports this module, and these cost it ~3 MB
    import subprocess

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
