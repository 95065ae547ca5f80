"""Topology: mountinfo/sysfs parsing, resolution of (dev, ino), double caching, uevents.

Unit tests use fixture text and a hand-built topology of the dmsquash-live guest; the
`live_stack` tests build the real thing on this host (root: squashfs and loop are built
in): ext4 image inside squashfs, both loop-mounted, and check what read_topology sees.
"""

from __future__ import annotations

import json
import os
import pathlib
import select
import shutil
import subprocess
import tempfile
import time

import pytest

from tracer import topology as T
from tracer.topology.model import _root_mount

# --- unit: mountinfo ---------------------------------------------------------------------

MOUNTINFO = (
    b"1 1 0:2 / / rw - rootfs rootfs rw\n"
    b"22 27 0:21 / /proc rw,relatime - proc proc rw\n"
    b"27 1 254:0 / /sysroot rw,relatime shared:1 - ext4 /dev/mapper/live-rw rw\n"
    b"30 1 11:0 / /run/initramfs/live ro,relatime shared:5 master:2 - iso9660 /dev/sr0 ro\n"
    b"31 1 7:0 / /run/rootfsbase\\040with\\040space ro - squashfs /dev/loop0 ro\n"
    b"32 1 0:40 / /mnt/-\\011tab\\012nl\\134bs ro - tmpfs we\\040ird rw\n"
    b"33 1 0:41 / /mnt/caf\xc3\xa9\xff rw - tmpfs tmpfs rw\n"
    b"garbage line\n"
)


def test_parse_mountinfo_escapes_and_optional_fields():
    ms = T.parse_mountinfo(MOUNTINFO)
    assert len(ms) == 7
    by_mp = {m["mountpoint"]: m for m in ms}
    assert by_mp["/"]["fstype"] == "rootfs" and by_mp["/"]["dev"] == "0:2"
    live = by_mp["/run/initramfs/live"]
    assert live["optional"] == ["shared:5", "master:2"] and live["source"] == "/dev/sr0"
    assert "/run/rootfsbase with space" in by_mp
    weird = by_mp["/mnt/-\ttab\nnl\\bs"]
    assert weird["source"] == "we ird" and weird["fstype"] == "tmpfs"
    # Non-UTF-8 bytes survive (surrogateescape) and round-trip to the same bytes.
    odd = [m for m in ms if m["dev"] == "0:41"][0]
    assert os.fsencode(odd["mountpoint"]) == b"/mnt/caf\xc3\xa9\xff"
    json.dumps(ms)  # JSON-serializable


def test_parse_dm_table_roles():
    text = ("live-rw: 0 4194304 snapshot 7:1 7:2 P 8\n"
            "live-base: 0 4194304 linear 7:1 0\n")
    t = T.parse_dm_table(text)
    snap = t["live-rw"][0]
    assert snap["target"] == "snapshot" and snap["chunk_sectors"] == 8
    assert snap["devices"] == [{"dev": "7:1", "role": "origin"}, {"dev": "7:2", "role": "cow"}]
    assert t["live-base"][0]["devices"] == [{"dev": "7:1", "role": "device"}]


def test_devstr_encodings():
    assert T.devstr(0x700001, kernel=True) == "7:1"
    assert T.devstr(os.makedev(254, 3)) == "254:3"
    assert T.devstr(os.makedev(259, 1 << 12)) == f"259:{1 << 12}"
    assert T.kdev("7:1") == 0x700001


# --- unit: the live guest's topology, hand-built -------------------------------------------


def guest_topology() -> T.Topology:
    """What dracut's dmsquash-live leaves (before switch_root), per the attribution notes."""
    mounts = T.parse_mountinfo(
        b"1 1 0:2 / / rw - rootfs rootfs rw\n"
        b"30 1 11:0 / /run/initramfs/live ro - iso9660 /dev/sr0 ro\n"
        b"31 1 7:0 / /run/initramfs/squashfs ro - squashfs /dev/loop0 ro\n"
        b"40 1 254:0 / /sysroot rw - ext4 /dev/mapper/live-rw rw\n")
    def loop(n, bdev, bino, bfile):
        return {"name": f"loop{n}", "dev": f"7:{n}", "kind": "loop", "size_bytes": 1 << 30,
                "slaves": [], "holders": ["dm-0"] if n else [],
                "loop": {"bound": True, "backing_file": bfile, "deleted": bfile.endswith(" (deleted)"),
                         "backing_dev": bdev, "backing_ino": bino, "dio": 0, "offset": 0,
                         "source": "LOOP_GET_STATUS64"}}
    bds = {
        "sr0": {"name": "sr0", "dev": "11:0", "kind": "rom", "size_bytes": 900 << 20, "slaves": [], "holders": []},
        "loop0": loop(0, "11:0", 1234, "/run/initramfs/live/LiveOS/squashfs.img"),
        "loop1": loop(1, "7:0", 2, "/run/initramfs/squashfs/LiveOS/rootfs.img"),
        "loop2": loop(2, "0:2", 77, "/overlay (deleted)"),
        "dm-0": {"name": "dm-0", "dev": "254:0", "kind": "dm", "size_bytes": 1 << 30,
                 "slaves": ["loop1", "loop2"], "holders": [],
                 "dm": {"name": "live-rw", "uuid": "", "table": T.parse_dm_table(
                     "live-rw: 0 2097152 snapshot 7:1 7:2 P 8\n")["live-rw"]}},
    }
    return T.Topology(time=1.0, mounts=mounts, block_devices=bds, root=_root_mount(mounts),
                      history=[1.0])


def test_resolve_guest_chain():
    topo = guest_topology()
    r = T.resolve(topo, "254:0", 12)
    assert r["what"] == "file" and r["fstype"] == "ext4" and r["layer"] == "ext4 on dm live-rw"
    labels = [(e["type"], e.get("name") or e.get("fstype") or e.get("path")) for e in r["chain"]]
    assert labels == [
        ("fs", "ext4"), ("block", "dm-0"),
        ("block", "loop1"), ("file", "/run/initramfs/squashfs/LiveOS/rootfs.img"), ("fs", "squashfs"),
        ("block", "loop0"), ("file", "/run/initramfs/live/LiveOS/squashfs.img"), ("fs", "iso9660"),
        ("block", "sr0"),
        ("block", "loop2"), ("file", "/overlay (deleted)"), ("fs", "rootfs"),
    ]
    roles = {e.get("name"): e.get("role") for e in r["chain"] if e["type"] == "block"}
    assert roles["loop1"] == "origin" and roles["loop2"] == "cow"
    assert "snapshot" in r["chain"][1]["label"] and "origin 7:1" in r["chain"][1]["label"]
    # The image file inside squashfs is loop1's backing file.
    img = T.resolve(topo, "7:0", 2)
    assert img["layer"] == "squashfs on loop0" and img["roles"] == ["backing file of loop1"]
    assert img["path"].endswith("rootfs.img")
    assert T.resolve(topo, "11:0", 1234)["layer"] == "iso9660 on sr0"
    assert T.resolve(topo, "0:2", 77)["layer"] == "ramfs (initramfs root)"
    # Tracepoint encoding of dev works too.
    assert T.resolve(topo, 0xFE00000, 12)["layer"] == "ext4 on dm live-rw"


def test_resolve_bdev_inode_vs_file():
    """A bdev inode: s_dev is the bdev pseudo-fs (0:N, mounted nowhere) and the inode number
    is the kernel dev_t; a file on the fs of that device is (7:0, ino)."""
    topo = guest_topology()
    bdev = T.resolve(topo, "0:3", 0x700000)
    assert bdev["what"] == "bdev" and bdev["device"] == "loop0" and bdev["layer"] == "bdev loop0"
    assert bdev["chain"][0]["name"] == "loop0"
    f = T.resolve(topo, "7:0", 0x700000)
    assert f["what"] == "file" and f["layer"] == "squashfs on loop0"
    # A mounted anonymous superblock is never mistaken for the bdev fs.
    assert T.resolve(topo, "0:2", 0x700000)["what"] == "file"
    # Once the bdev fs's dev is known, only it qualifies.
    topo.bdev_sb_dev = "0:5"
    assert T.resolve(topo, "0:3", 0x700000)["what"] == "unknown"
    assert T.resolve(topo, "0:5", 0xB00000)["device"] == "sr0"


def test_double_caching_guest():
    chains = T.double_caching(guest_topology())
    ext4 = [c for c in chains if c["top"]["dev"] == "254:0"]
    assert len(ext4) == 2  # origin branch and cow branch
    origin = [c for c in ext4 if len(c["levels"]) == 2][0]
    assert [(lv["dev"], lv["ino"]) for lv in origin["levels"]] == [("7:0", 2), ("11:0", 1234)]
    assert origin["levels"][0]["via"][0].startswith("dm live-rw origin")
    cow = [c for c in ext4 if len(c["levels"]) == 1][0]
    assert cow["levels"][0]["layer"] == "ramfs (initramfs root)"
    sq = [c for c in chains if c["top"]["dev"] == "7:0"][0]
    assert [(lv["dev"], lv["ino"]) for lv in sq["levels"]] == [("11:0", 1234)]
    json.dumps(chains)


def test_merge_keeps_hidden_initramfs():
    older = guest_topology()
    # After switch_root: only the new root's mounts; loop2's backing no longer statable.
    newer_mounts = T.parse_mountinfo(b"40 1 254:0 / / rw - ext4 /dev/mapper/live-rw rw\n"
                                     b"30 40 11:0 / /run/initramfs/live ro - iso9660 /dev/sr0 ro\n")
    bds = json.loads(json.dumps(older.block_devices))
    for k in ("backing_dev", "backing_ino"):
        del bds["loop2"]["loop"][k]
    bds["dm-0"]["dm"]["table"] = []
    newer = T.Topology(time=9.0, mounts=newer_mounts, block_devices=bds,
                       root=_root_mount(newer_mounts), history=[9.0])
    m = T.merge(older, newer)
    gone = [x for x in m.mounts if x.get("gone")]
    assert {x["fstype"] for x in gone} == {"rootfs", "squashfs", "ext4"}  # ext4 at /sysroot
    assert m.block_devices["loop2"]["loop"]["backing_dev"] == "0:2"
    assert m.block_devices["dm-0"]["dm"]["table"]
    assert m.root["dev"] == "254:0" and m.history == [1.0, 9.0]
    assert T.resolve(m, "0:2", 77)["layer"] == "ramfs (initramfs root)"
    assert T.resolve(m, "7:0", 2)["layer"] == "squashfs on loop0"
    rt = T.Topology.from_dict(json.loads(json.dumps(m.to_dict())))
    assert T.resolve(rt, "254:0", 5) == T.resolve(m, "254:0", 5)


# --- the real thing: squashfs holding an ext4 image, both loop-mounted ----------------------

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop devices, mounts)")


def _run(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def _evict(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _read(path, nbytes):
    with open(path, "rb", buffering=0) as f:
        while nbytes > 0:
            b = f.read(min(nbytes, 1 << 20))
            if not b:
                break
            nbytes -= len(b)


class LiveStack:
    """host fs ← squashfs.img ← loopA ← squashfs (at "mnt sq") ← LiveOS/rootfs.img ← loopB
    ← ext4 (at root/). Files in the ext4: a (6 MiB, read fully), b (4 MiB, half read),
    c (1 MiB + 123 bytes, unread), empty (0 bytes)."""

    def __init__(self):
        for tool in ("mksquashfs", "mkfs.ext4", "losetup", "mount", "umount"):
            if not shutil.which(tool):
                pytest.skip(f"{tool} not installed")
        self.cleanup = []
        self.tmp = tempfile.mkdtemp(prefix="fp-stack-", dir="/var/tmp")
        self.cleanup.append(lambda: shutil.rmtree(self.tmp, ignore_errors=True))
        content = os.path.join(self.tmp, "content")
        os.makedirs(os.path.join(content, "dir with space"))
        sizes = {"a": 6 << 20, "b": 4 << 20, "c": (1 << 20) + 123, "empty": 0}
        for n, s in sizes.items():
            with open(os.path.join(content, n), "wb") as f:
                f.write(os.urandom(s))
        with open(os.path.join(content, "dir with space", "d"), "wb") as f:
            f.write(os.urandom(3 << 20))
        sqsrc = os.path.join(self.tmp, "sqsrc", "LiveOS")
        os.makedirs(sqsrc)
        img = os.path.join(sqsrc, "rootfs.img")
        _run("mkfs.ext4", "-q", "-F", "-b", "4096", "-d", content, img, "32M")
        self.squashfs_img = os.path.join(self.tmp, "squashfs.img")
        _run("mksquashfs", os.path.dirname(sqsrc), self.squashfs_img, "-noappend", "-quiet", "-no-progress")
        self.mnt_sq = os.path.join(self.tmp, "mnt sq")
        self.mnt_root = os.path.join(self.tmp, "root")
        os.makedirs(self.mnt_sq)
        os.makedirs(self.mnt_root)
        try:
            self.loop_a = _run("losetup", "-f", "--show", "-r", self.squashfs_img)
            self.cleanup.append(lambda: subprocess.run(["losetup", "-d", self.loop_a]))
            _run("mount", "-t", "squashfs", "-o", "ro", self.loop_a, self.mnt_sq)
            self.cleanup.append(lambda: subprocess.run(["umount", self.mnt_sq]))
            self.rootfs_img = os.path.join(self.mnt_sq, "LiveOS", "rootfs.img")
            self.loop_b = _run("losetup", "-f", "--show", "-r", self.rootfs_img)
            self.cleanup.append(lambda: subprocess.run(["losetup", "-d", self.loop_b]))
            _run("mount", "-t", "ext4", "-o", "ro,noload", self.loop_b, self.mnt_root)
            self.cleanup.append(lambda: subprocess.run(["umount", self.mnt_root]))
        except BaseException:
            self.close()
            raise
        self.loop_a_name = os.path.basename(self.loop_a)
        self.loop_b_name = os.path.basename(self.loop_b)
        self.files = {n: os.path.join(self.mnt_root, n) for n in sizes}
        self.files["d"] = os.path.join(self.mnt_root, "dir with space", "d")
        # Start from cold caches for this stack only (no global drop_caches).
        for p in (self.files["a"], self.files["b"], self.rootfs_img, self.squashfs_img):
            _evict(p)
        _read(self.files["a"], sizes["a"])
        _read(self.files["b"], sizes["b"] // 2)
        _read(self.files["d"], 1 << 20)

    def close(self):
        while self.cleanup:
            self.cleanup.pop()()


@pytest.fixture
def scratch():
    """A private temporary directory. Not pytest's tmp_path: concurrent sessions running
    pytest as root share /tmp/pytest-of-root, and its retention of 3 runs deletes another
    session's directories (loop backing files included) from under it."""
    d = tempfile.mkdtemp(prefix="fp-scratch-", dir="/var/tmp")
    yield pathlib.Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def live_stack():
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, mounts)")
    s = LiveStack()
    yield s
    s.close()
    # Nothing of ours left behind.
    assert s.tmp not in _run("findmnt", "-rn", "-o", "TARGET").replace("\\x20", " ")
    assert s.squashfs_img not in _run("losetup", "-a")


def _st(path):
    st = os.stat(path)
    return T.devstr(st.st_dev), st.st_ino


@root_only
def test_live_read_topology(live_stack):
    s = live_stack
    topo = T.read_topology()
    by_mp = {m["mountpoint"]: m for m in topo.mounts}
    assert s.mnt_sq in by_mp and by_mp[s.mnt_sq]["fstype"] == "squashfs"  # \040 decoded
    la = topo.block_devices[s.loop_a_name]["loop"]
    lb = topo.block_devices[s.loop_b_name]["loop"]
    assert (la["backing_dev"], la["backing_ino"]) == _st(s.squashfs_img)
    assert (lb["backing_dev"], lb["backing_ino"]) == _st(s.rootfs_img)
    # The backing file is reachable: stat'ed, the loop device is not opened.
    assert la["source"] == "stat" and la["backing_file"] == s.squashfs_img
    assert lb["backing_file"] == s.rootfs_img
    json.dumps(topo.to_dict())


@root_only
def test_live_resolve_chain(live_stack):
    s = live_stack
    topo = T.read_topology()
    dev, ino = _st(s.files["a"])
    r = T.resolve(topo, dev, ino)
    assert r["fstype"] == "ext4" and r["layer"] == f"ext4 on {s.loop_b_name}"
    kinds = [(e["type"], e.get("fstype") or e.get("name") or e.get("path")) for e in r["chain"]]
    host_dev, _ = _st(s.squashfs_img)
    host_fs = [m["fstype"] for m in topo.mounts_of(host_dev)][0]
    assert kinds[:7] == [
        ("fs", "ext4"), ("block", s.loop_b_name), ("file", s.rootfs_img), ("fs", "squashfs"),
        ("block", s.loop_a_name), ("file", s.squashfs_img), ("fs", host_fs),
    ]
    assert r["chain"][2]["dev"] == _st(s.rootfs_img)[0] and r["chain"][2]["ino"] == _st(s.rootfs_img)[1]
    img = T.resolve(topo, *_st(s.rootfs_img))
    assert img["layer"] == f"squashfs on {s.loop_a_name}" and img["roles"] == [f"backing file of {s.loop_b_name}"]
    assert T.path_of(topo, dev, _st(s.files["d"])[1]) == s.files["d"]
    assert T.path_of(topo, *_st(s.rootfs_img)) == s.rootfs_img  # free, from sysfs


@root_only
def test_live_double_caching(live_stack):
    s = live_stack
    topo = T.read_topology()
    ext4_dev = _st(s.files["a"])[0]
    chains = [c for c in T.double_caching(topo) if c["top"]["dev"] == ext4_dev]
    assert len(chains) == 1
    levels = [(lv["dev"], lv["ino"]) for lv in chains[0]["levels"]]
    assert levels == [_st(s.rootfs_img), _st(s.squashfs_img)]


TRACEFS = "/sys/kernel/tracing"


@root_only
@pytest.mark.skipif(not os.path.isdir(os.path.join(TRACEFS, "events", "filemap")),
                    reason="no filemap tracepoints in tracefs")
def test_live_bdev_pages_as_the_tracepoint_reports_them(live_stack):
    """Read /dev/loopA directly and catch mm_filemap_add_to_page_cache in a private tracefs
    instance: the pages are reported as (bdev pseudo-fs 0:N, ino = kernel dev_t of loopA),
    and resolve() names them `bdev loopA`."""
    s = live_stack
    inst = os.path.join(TRACEFS, "instances", f"fp-topology-{os.getpid()}")
    os.mkdir(inst)
    try:
        ev = os.path.join(inst, "events", "filemap", "mm_filemap_add_to_page_cache")
        with open(os.path.join(ev, "enable"), "w") as f:
            f.write("1")
        fd = os.open(s.loop_a, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.pread(fd, 65536, 0)
        finally:
            os.close(fd)
        with open(os.path.join(ev, "enable"), "w") as f:
            f.write("0")
        with open(os.path.join(inst, "trace")) as f:
            trace = f.read()
    finally:
        os.rmdir(inst)
    want_ino = T.kdev(T.devstr(os.stat(s.loop_a).st_rdev))
    hits = set()
    for line in trace.splitlines():
        if "mm_filemap_add_to_page_cache" in line and f" ino {want_ino:x} " in line:
            hits.add(line.split(" dev ", 1)[1].split()[0])
    assert len(hits) == 1, trace[-2000:]
    sdev = hits.pop()
    assert sdev.startswith("0:")
    topo = T.read_topology()
    assert not topo.mounts_of(sdev)
    r = T.resolve(topo, sdev, want_ino)
    assert r["what"] == "bdev" and r["device"] == s.loop_a_name
    assert T.learn_bdev_sb_dev(topo, sdev, want_ino) and topo.bdev_sb_dev == sdev


@root_only
def test_uevents_for_a_new_loop(scratch):
    img = scratch / "u.img"
    img.write_bytes(b"\0" * (1 << 20))
    with T.UeventWatcher() as w:
        assert w.poll() == [] or True  # drain whatever was queued
        loop = _run("losetup", "-f", "--show", str(img))
        try:
            dev = T.devstr(os.stat(loop).st_rdev)
            events = []
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                r, _, _ = select.select([w], [], [], 0.5)
                if r:
                    events += w.poll()
                if any(e.get("dev") == dev and e["ACTION"] == "change" for e in events):
                    break
        finally:
            subprocess.run(["losetup", "-d", loop], check=True)
        ours = [e for e in events if e.get("dev") == dev]
        assert ours, events
        assert {e["ACTION"] for e in ours} <= {"add", "change"}
        assert all(e["SUBSYSTEM"] == "block" and e["DEVNAME"] == os.path.basename(loop) for e in ours)
        now = time.clock_gettime(time.CLOCK_BOOTTIME)
        assert all(now - 10 < e["time"] <= now for e in ours)
        # Detach: a change (and the events queued meanwhile) arrive on the next drain.
        deadline = time.monotonic() + 5
        more = []
        while time.monotonic() < deadline and not any(e.get("dev") == dev for e in more):
            if select.select([w], [], [], 0.5)[0]:
                more += w.poll()
        assert any(e.get("dev") == dev for e in more)
        assert w.overflows == 0
    assert loop not in _run("losetup", "-a")


@root_only
def test_deleted_backing_file_keeps_dev_ino(scratch):
    """A loop whose backing file was unlinked (dracut's /overlay): sysfs shows
    "path (deleted)", LOOP_GET_STATUS64 still gives the exact (dev, ino)."""
    img = scratch / "overlay"
    img.write_bytes(b"\0" * (1 << 20))
    want = _st(str(img))
    loop = _run("losetup", "-f", "--show", str(img))
    try:
        img.unlink()
        bds = T.read_block_devices()
        lo = bds[os.path.basename(loop)]["loop"]
        assert lo["deleted"] and lo["backing_file"] == f"{img} (deleted)"
        assert (lo["backing_dev"], lo["backing_ino"]) == want and lo["source"] == "LOOP_GET_STATUS64"
        direct = T.loop_status(loop)
        assert (direct["backing_dev"], direct["backing_ino"]) == want
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)
    assert str(img) not in _run("losetup", "-a")


def test_unmounted_loop_gets_its_fstype_from_the_superblock_without_caching(tmp_path):
    """dracut lazily unmounts the squashfs holding rootfs.img: no mountinfo line, yet its
    pages are squashfs page cache. The probe reads the magic with O_DIRECT."""
    if os.geteuid() != 0 or shutil.which("mksquashfs") is None:
        pytest.skip("needs root and mksquashfs")
    from tracer.inventory import cachestat
    from tracer.topology import layer_of, probe_fstype, read_topology, resolve

    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(1 << 16))
    img = tmp_path / "sq.img"
    subprocess.run(["mksquashfs", str(src), str(img), "-quiet", "-no-progress"], check=True,
                   stdout=subprocess.DEVNULL)
    lo = subprocess.run(["losetup", "-f", "--show", "-r", str(img)], check=True,
                        capture_output=True, text=True).stdout.strip()
    try:
        fd = os.open(lo, os.O_RDONLY)
        before = cachestat(fd)
        assert probe_fstype(lo) == "squashfs"
        topo = read_topology()
        after = cachestat(fd)
        os.close(fd)
        if before is not None:
            assert after["nr_cache"] == before["nr_cache"]
        name = os.path.basename(lo)
        dev = topo.block_devices[name]["dev"]
        assert topo.block_devices[name]["probed_fstype"] == "squashfs"
        assert layer_of(topo, dev) == f"squashfs on {name} (not mounted)"
        assert resolve(topo, dev, 2)["fstype"] == "squashfs"
        # Named by the kernel's superblocks (the baseline's s_magic) or udev, nothing is
        # read; without either and without probe, the device stays unnamed.
        topo = read_topology(sb_fstypes={dev: "squashfs"}, probe=False)
        assert topo.block_devices[name]["probed_fstype"] == "squashfs"
        from tracer.topology import udev_fstype

        if udev_fstype(dev) is None:
            assert "probed_fstype" not in read_topology(probe=False).block_devices[name]
    finally:
        subprocess.run(["losetup", "-d", lo], check=False)


def test_builtin_uevent_parser_agrees_with_pyroute2():
    """The recorder parses uevents itself (pyroute2 would cost it ~17 MiB); both must agree."""
    pytest.importorskip("pyroute2")
    data = (b"add@/devices/virtual/block/loop3\0ACTION=add\0DEVPATH=/devices/virtual/block/loop3\0"
            b"SUBSYSTEM=block\0MAJOR=7\0MINOR=3\0DEVNAME=loop3\0DEVTYPE=disk\0SEQNUM=4242\0")
    builtin = T.parse_uevent(data)
    w = T.UeventWatcher.__new__(T.UeventWatcher)
    via_pyroute2 = w._pick_parser()(data)
    for key in ("ACTION", "DEVNAME", "MAJOR", "MINOR", "SUBSYSTEM", "SEQNUM"):
        assert builtin[key] == via_pyroute2[key]
