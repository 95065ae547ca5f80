"""A miniature of the live stack on the host, for tests and benchmarks:
host fs → squashfs.img on loopA → squashfs → rootfs.img on loopB → ext4 with files.
Root only; everything is torn down in order (a detached loop lets go of its backing file
asynchronously, so the squashfs is unmounted only once loopB is really free)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path


def _run(*cmd) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def wait_loop_free(lo: str, timeout: float = 10.0) -> None:
    backing = f"/sys/block/{os.path.basename(lo)}/loop/backing_file"
    deadline = time.monotonic() + timeout
    while os.path.exists(backing) and time.monotonic() < deadline:
        time.sleep(0.05)


@contextlib.contextmanager
def live_like_stack(base: Path, files=(("a.bin", 16), ("b.bin", 16), ("c.bin", 16)),
                    tree_mib: int = 0):
    """Yields {squash, inner, ext, loops, files}. tree_mib > 0 adds a tree of small files
    (usr/…) of about that size, for cold-read workloads."""
    tree, live = base / "tree", base / "iso" / "LiveOS"
    tree.mkdir()
    live.mkdir(parents=True)
    for name, mib in files:
        (tree / name).write_bytes(os.urandom(mib << 20))
    (tree / "small.txt").write_text("hello\n" * 100)
    total = sum(m for _, m in files) + 1
    if tree_mib:
        for d in range(max(1, tree_mib // 4)):
            sub = tree / "usr" / f"d{d:03d}"
            sub.mkdir(parents=True)
            for i in range(32):
                (sub / f"f{i:02d}").write_bytes(os.urandom(128 << 10))
        total += tree_mib
    rootfs = live / "rootfs.img"
    _run("truncate", "-s", f"{int(total * 1.4) + 32}M", str(rootfs))
    _run("mkfs.ext4", "-q", "-L", "Root", "-d", str(tree), str(rootfs))
    squash = base / "squashfs.img"
    subprocess.run(["mksquashfs", str(base / "iso"), str(squash), "-comp", "gzip", "-quiet",
                    "-no-progress"], check=True, stdout=subprocess.DEVNULL)
    rootfs.unlink()
    mnt_sq, mnt_ext = base / "sq", base / "ext"
    mnt_sq.mkdir()
    mnt_ext.mkdir()
    loops, mounted = [], []
    try:
        loops.append(_run("losetup", "-f", "--show", "-r", str(squash)))
        _run("mount", "-t", "squashfs", "-o", "ro", loops[0], str(mnt_sq))
        mounted.append(mnt_sq)
        inner = mnt_sq / "LiveOS" / "rootfs.img"
        loops.append(_run("losetup", "-f", "--show", "-r", str(inner)))
        _run("mount", "-t", "ext4", "-o", "ro", loops[1], str(mnt_ext))
        mounted.append(mnt_ext)
        yield {"squash": squash, "inner": inner, "ext": mnt_ext, "loops": loops,
               "files": [mnt_ext / n for n, _ in files] + [mnt_ext / "small.txt"]}
    finally:
        if mnt_ext in mounted:
            subprocess.run(["umount", str(mnt_ext)], check=False)
        for lo in reversed(loops):
            subprocess.run(["losetup", "-d", lo], check=False)
            wait_loop_free(lo)
            if lo == loops[-1] and mnt_sq in mounted:
                _umount_retrying(mnt_sq)


def _umount_retrying(path: Path, timeout: float = 20.0) -> None:
    """The squashfs stays busy until the kernel has really let go of the inner loop."""
    deadline = time.monotonic() + timeout
    while subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            subprocess.run(["umount", "-l", str(path)], check=False)  # never leave it behind
            return
        time.sleep(0.2)


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
