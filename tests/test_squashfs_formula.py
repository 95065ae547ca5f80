"""The squashfs formula's rules (tracer/squashfs.py), without a kernel: the decompressor
counts per mode, what changed in 6.14 (fragment cache bounded by the image's fragments,
no data cache with FILE_DIRECT), bad input refused, a superblock read against
squashfs-tools' own reading, and library frames never owning a stack."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tracer.owners import library_of, stack_library, subsystem_of
from tracer.squashfs import (describe, mount_mode, mounts, predict_mount, read_superblock,
                             squashfs_prediction)

K61, K618 = "6.1.0-57-amd64", "6.18.44"


def test_decompressor_counts_and_caches_by_mode():
    single = squashfs_prediction("xz", 128 << 10, 8, "single", kernel=K61, file_cache=False)
    percpu = squashfs_prediction("xz", 128 << 10, 8, "percpu", kernel=K61, file_cache=False)
    multi = squashfs_prediction("xz", 128 << 10, 8, "multi", kernel=K61, file_cache=False)
    assert (single["decompressors"], percpu["decompressors"], multi["decompressors"]) == (1, 8, 1)
    assert multi["decompressors_max"] == 16
    # Before 6.14 the data cache has one block per possible decompressor, FILE_DIRECT or not.
    assert (single["data_cache"], percpu["data_cache"], multi["data_cache"]) == \
        (128 << 10, 8 * (128 << 10), 16 * (128 << 10))
    assert percpu["metadata_cache"] == 8 * 8192
    assert percpu["fragment_cache"] == 3 * (128 << 10)
    assert percpu["workspaces"] == 8 * (percpu["workspace_vmalloc"] + percpu["workspace_kmalloc"])
    assert percpu["workspace_vmalloc"] == 128 << 10  # the xz dictionary: the block size
    assert percpu["total"] == percpu["caches"] + percpu["workspaces"]


def test_the_6_14_changes():
    old = squashfs_prediction("zstd", 1 << 20, 4, "percpu", kernel=K61, fragments=1,
                              file_cache=False, fragment_cache_size=3)
    new = squashfs_prediction("zstd", 1 << 20, 4, "percpu", kernel=K618, fragments=1,
                              file_cache=False, fragment_cache_size=3)
    assert old["fragment_cache"] == 3 << 20 and new["fragment_cache"] == 1 << 20
    assert old["data_cache"] == 4 << 20 and new["data_cache"] == 0
    none = squashfs_prediction("zstd", 1 << 20, 4, "percpu", kernel=K618, fragments=0,
                               file_cache=True, fragment_cache_size=3)
    assert none["fragment_cache"] == 0 and none["data_cache"] == 4 << 20


def test_zstd_workspace_grew_a_block_with_zstd_1_5():
    """6.1 (zstd 1.4.10): DCtx 161480 + in 128K + out 128K+128K+64; 6.2+ (1.5): out adds a
    second block (split literals) and the DCtx lost its 128 KiB literal buffer."""
    w61 = squashfs_prediction("zstd", 128 << 10, 1, "single", kernel=K61)["workspace_vmalloc"]
    w618 = squashfs_prediction("zstd", 128 << 10, 1, "single", kernel=K618)["workspace_vmalloc"]
    assert w61 == 136 * 4096  # pages of 161480 + 131072 + 262208
    assert w618 % 4096 == 0 and w618 >= 95960 + 131072 + 393280


@pytest.mark.parametrize("args", [("xz", 3000, 1, "single"), ("xz", 3 << 16, 1, "single"),
                                  ("xz", 128 << 10, 1, "many"), ("gzip", 128 << 10, 1, "single"),
                                  ("xz", 2 << 20, 1, "single")])
def test_bad_input_is_refused(args):
    with pytest.raises(ValueError):
        squashfs_prediction(*args, kernel=K61)


def test_threads_option():
    assert mount_mode("ro,errors=continue,threads=percpu", "single") == "percpu"
    assert mount_mode("ro,threads=4", "single") == "multi"
    assert mount_mode("ro,threads=1", "percpu") == "single"
    assert mount_mode("ro,errors=continue", "percpu") == "percpu"


def test_superblock_as_squashfs_tools_reads_it(tmp_path):
    if shutil.which("mksquashfs") is None or shutil.which("unsquashfs") is None:
        pytest.skip("squashfs-tools are not installed (scripts/setup installs them)")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"x" * 70000)
    (src / "b").write_bytes(b"y" * 300)
    img = tmp_path / "img"
    subprocess.run(["mksquashfs", str(src), str(img), "-comp", "xz", "-b", "262144",
                    "-Xdict-size", "65536", "-noappend", "-quiet", "-no-progress"],
                   check=True, capture_output=True)
    out = subprocess.run(["unsquashfs", "-s", str(img)], check=True, capture_output=True,
                         text=True).stdout
    sb = read_superblock(str(img))
    assert sb["block_size"] == int(re.search(r"Block size (\d+)", out).group(1)) == 262144
    assert sb["compressor"] == re.search(r"Compression (\w+)", out).group(1) == "xz"
    assert sb["fragments"] == int(re.search(r"Number of fragments (\d+)", out).group(1))
    assert sb["dict_size"] == 65536
    assert read_superblock(str(src / "a")) is None


class _Syms:
    """A kallsyms stand-in: address → (symbol, module, offset)."""

    def __init__(self, names):
        self.names = names

    def lookup(self, a):
        name, mod = self.names[a]
        return name, mod, 0


def test_library_frames_never_own_and_are_named():
    assert library_of("xz_dec_lzma2_create", None) == "xz"
    assert subsystem_of("xz_dec_lzma2_create", None) is None
    assert subsystem_of("ZSTD_decompressStream", "zstd_decompress") is None
    frames = {1: ("__vmalloc_node_noprof", None), 2: ("xz_dec_lzma2_create", None),
              3: ("xz_dec_init", None), 4: ("squashfs_xz_init", "squashfs"),
              5: ("do_syscall_64", None)}
    assert stack_library([1, 2, 3, 4, 5], _Syms(frames)) == ("xz", "xz_dec_lzma2_create")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop devices, mount)")
def test_a_lazily_unmounted_squashfs_is_found_through_its_loop(tmp_path):
    """dmsquash-live's stack: squashfs.img on a loop, mounted, rootfs.img inside it on a
    second loop, then the squashfs lazily unmounted (mountinfo no longer shows it, the
    superblock lives on). mounts() names it from the loop device the topology gives."""
    if shutil.which("mksquashfs") is None:
        pytest.skip("squashfs-tools are not installed (scripts/setup installs them)")
    src = tmp_path / "src"
    src.mkdir()
    (src / "rootfs.img").write_bytes(b"r" * (1 << 20))
    img, mnt = tmp_path / "squashfs.img", tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mksquashfs", str(src), str(img), "-comp", "zstd", "-b", "1M", "-noappend",
                    "-quiet", "-no-progress"], check=True, capture_output=True)
    sq = subprocess.run(["losetup", "-f", "--show", "-r", str(img)], check=True,
                        capture_output=True, text=True).stdout.strip()
    inner = None
    try:
        subprocess.run(["mount", "-t", "squashfs", "-o", "ro", sq, str(mnt)], check=True)
        inner = subprocess.run(["losetup", "-f", "--show", "-r", str(mnt / "rootfs.img")],
                               check=True, capture_output=True, text=True).stdout.strip()
        subprocess.run(["umount", "-l", str(mnt)], check=True)
        rdev = os.stat(sq).st_rdev
        dev = f"{os.major(rdev)}:{os.minor(rdev)}"
        assert not [m for m in mounts() if m["dev"] == dev]  # mountinfo lost it
        found = [m for m in mounts(unmounted_loops=[dev, "7:999"]) if m["dev"] == dev]
        assert len(found) == 1, found
        m = found[0]
        assert m["mountpoint"] is None and m["compressor"] == "zstd" and m["block_size"] == 1 << 20
        assert predict_mount(m)["decompressors"] >= 1
        assert "lazily unmounted" in "\n".join(describe({"mounts": [dict(m, predicted=predict_mount(m))],
                                                          "predicted_caches": 0, "predicted_workspaces": 0,
                                                          "traced_caches": 0, "traced_workspaces": 0}))
    finally:
        if inner:
            subprocess.run(["losetup", "-d", inner], capture_output=True)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        subprocess.run(["losetup", "-d", sq], capture_output=True)
