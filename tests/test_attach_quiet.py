"""Attaching touches no device it has no reason to open: the file system types come from
the superblocks (the kernel baseline's s_magic), udev's database or mountinfo, not from
reading devices (an empty floppy or CD drive opened logs "I/O error, dev fd0"). The
independent view is strace(1) of `footprint record`: every open(2) of a block device."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tracer import topology as T

ROOT = Path(__file__).resolve().parent.parent


def test_may_open_refuses_removable_optical_floppy_and_empty_devices():
    base = {"name": "vdb", "kind": "disk", "size_bytes": 1 << 30, "removable": 0}
    assert T.may_open(base)
    assert not T.may_open(dict(base, removable=1))
    assert not T.may_open(dict(base, size_bytes=0))
    assert not T.may_open(dict(base, name="sr1", kind="rom"))
    assert not T.may_open(dict(base, name="fd0"))


def test_udev_database_names_the_file_system(tmp_path):
    d = tmp_path / "udev" / "data"
    d.mkdir(parents=True)
    (d / "b7:3").write_bytes(b"S:disk/by-uuid/x\nE:ID_FS_USAGE=filesystem\nE:ID_FS_TYPE=squashfs\n")
    (d / "b7:4").write_bytes(b"E:ID_FS_TYPE=\x1b[31m\n")
    assert T.udev_fstype("7:3", run=str(tmp_path)) == "squashfs"
    assert T.udev_fstype("7:4", run=str(tmp_path)) is None  # not a name: ignored
    assert T.udev_fstype("7:5", run=str(tmp_path)) is None


def _opened_block_devices(log: str):
    """(path, flags) of every successful open of a block device node in an strace log."""
    out = []
    for line in Path(log).read_text(errors="replace").splitlines():
        m = re.search(r'open(?:at)?\((?:AT_FDCWD, )?"(/[^"]*)", ([A-Z_|]+)[^)]*\) = (\d+)', line)
        if not m:
            continue
        try:
            st = os.stat(m.group(1))
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode):
            out.append((m.group(1), m.group(2)))
    return out


@pytest.mark.parametrize("baseline", ["kernel", "walk"])
def test_record_opens_no_block_device_it_need_not(baseline, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if not shutil.which("strace"):
        pytest.skip("strace not installed")
    if baseline == "kernel":
        from tracer import baseline as B

        why = B.unavailable()
        if why:
            pytest.skip(why)
    # A loop device holding a file system nobody mounted (the old code read its
    # superblock and asked the loop driver for its backing file), and a mounted one.
    if not shutil.which("mksquashfs"):
        pytest.skip("mksquashfs not installed")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(1 << 16))
    img = tmp_path / "sq.img"
    subprocess.run(["mksquashfs", str(src), str(img), "-quiet", "-no-progress"], check=True,
                   stdout=subprocess.DEVNULL)
    loop = subprocess.run(["losetup", "-f", "--show", "-r", str(img)], check=True,
                          capture_output=True, text=True).stdout.strip()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-o", "loop,ro", str(img), str(mnt)], check=True)
        try:
            _record_under_strace(baseline, tmp_path, loop)
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)


def _record_under_strace(baseline, tmp_path, loop):
    log = tmp_path / "strace.log"
    out = tmp_path / "rec.jsonl"
    done = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", str(log),
         sys.executable, "-m", "tracer", "record", "-o", str(out), "-d", "1",
         "--baseline", baseline, "--inventory-seconds", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    opened = _opened_block_devices(str(log))
    if baseline == "kernel":
        # Superblocks, udev and sysfs say it all: not one block device is opened.
        assert opened == [], opened
    else:
        # The walk reads block devices' own page cache (Buffers) by opening them: only
        # fixed, non-empty ones; a loop only where its backing file could not be stat'ed.
        bds = {"/dev/" + b["name"]: b for b in T.read_block_devices().values()}
        for path, _flags in opened:
            bd = bds.get(path)
            assert bd is None or T.may_open(bd), (path, bd)
    # The topology still names every mounted device's file system.
    topo = T.read_topology(probe=False)
    for m in topo.mounts:
        assert T.layer_of(topo, m["dev"])
