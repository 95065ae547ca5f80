"""Device numbers as "major:minor" strings, from either encoding that meets here.

  - the kernel's dev_t (tracepoints, bdev inode numbers): major = d >> 20, minor = d & 0xfffff
    (include/linux/kdev_t.h, MINORBITS 20, unchanged since 2.6)
  - user space's st_dev / LOOP_GET_STATUS64's lo_device (huge_encode_dev): os.major/os.minor
"""

from __future__ import annotations

import os


_MINORBITS = 20  # include/linux/kdev_t.h


def kdev(dev: str) -> int:
    """"maj:min" → the kernel's internal dev_t (as tracepoints report it)."""
    ma, mi = dev.split(":")
    return (int(ma) << _MINORBITS) | int(mi)


def devstr(dev: object, kernel: bool = False) -> str:
    """"maj:min" from a string, a (major, minor) pair, a user-space st_dev
    (kernel=False) or a kernel dev_t (kernel=True, the tracepoints' s_dev)."""
    if isinstance(dev, str):
        return dev
    if isinstance(dev, tuple):
        return f"{dev[0]}:{dev[1]}"
    if kernel:
        return f"{dev >> _MINORBITS}:{dev & ((1 << _MINORBITS) - 1)}"
    return f"{os.major(dev)}:{os.minor(dev)}"
