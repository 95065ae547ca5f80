"""Names for files known only by (dev, inode): a bounded walk of the mounts that show them."""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional, Tuple

from .devices import devstr
from .model import Topology
from .mounts import system_root


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
