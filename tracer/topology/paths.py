"""The one walk of file-system trees (used by path naming here and by the inventory of
tracer/inventory.py), and names for files known only by (dev, inode).

A walk stays on one superblock (no symlinks followed, no crossing into other mounts) and
runs under a shared Budget (entries and seconds), so several walks together still stop
in time. Paths found on an overlay's layer are spelled through the overlay (overlay.py).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator

from .devices import devstr
from .model import Topology
from .mounts import system_root
from .overlay import UserPaths

__all__ = ["Budget", "walk_tree", "path_of", "paths_of"]


class Budget:
    """At most `max_entries` directory entries and `seconds` of wall time, shared by every
    walk it is passed to. `exhausted` says whether a walk stopped because of it."""

    def __init__(self, max_entries: int, seconds: float):
        self.max_entries, self.deadline = max_entries, time.monotonic() + seconds
        self.entries, self.exhausted = 0, False

    def tick(self) -> bool:
        """Count one entry; False once the budget is spent (the clock is read every 256)."""
        self.entries += 1
        if self.entries > self.max_entries or (
                (self.entries & 255) == 0 and time.monotonic() > self.deadline):
            self.exhausted = True
        return not self.exhausted


def walk_tree(top: str, dev: str, budget: Budget, errors: list | None = None
              ) -> Iterator[tuple[os.DirEntry, os.stat_result]]:
    """Every entry below directory `top` on superblock `dev` ("maj:min"), depth first, as
    (DirEntry, its lstat). Directories of other superblocks (mounts below) are neither
    yielded nor entered; symlinks are not followed. Stops when `budget` is spent.
    Unreadable directories and vanished entries are skipped (counted in `errors`)."""
    stack = [top]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:
            if errors is not None:
                errors.append(1)
            continue
        with it:
            for e in it:
                if not budget.tick():
                    return
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    if errors is not None:
                        errors.append(1)
                    continue
                if devstr(st.st_dev) != dev:
                    continue  # another mount below this one
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)
                yield e, st


def _mount_tops(topo: Topology, dev: str, root: str) -> Iterator[tuple[str, os.stat_result]]:
    """Reachable, not over-mounted mountpoints of superblock `dev`, best first."""
    for m in topo.mounts_of(dev):
        if m.get("gone"):
            continue
        top = root + m["mountpoint"]
        try:
            st = os.lstat(top)
        except OSError:
            continue
        if devstr(st.st_dev) == dev:
            yield top, st


def path_of(topo: Topology, dev: object, ino: int, budget: tuple[int, float] = (200_000, 5.0)
            ) -> str | None:
    """A path for inode `ino` on superblock `dev`: free for loop backing files (sysfs);
    otherwise found by a bounded walk (see paths_of). None if not found within the budget."""
    d = devstr(dev, kernel=True) if isinstance(dev, int) else devstr(dev)
    for lb in topo.loop_backed_by(d, ino):
        bf = lb["loop"].get("backing_file")
        if bf:
            return bf
    return paths_of(topo, {d: {ino}}, budget).get((d, ino))


def paths_of(topo: Topology, wanted: dict[str, set], budget: tuple[int, float] = (300_000, 5.0)
             ) -> dict[tuple[str, int], str]:
    """Paths for many inodes at once ({dev: {ino, ...}} → {(dev, ino): path}): one walk
    per mounted superblock in `wanted`, under one budget (max entries, max seconds)
    shared fairly between them, stopping early once every inode of a superblock is found. A file on an overlay's
    layer is named as the user sees it, through the overlay, when the overlay shows that
    same inode there."""
    found: dict[tuple[str, int], str] = {}
    max_entries, seconds = budget
    end = time.monotonic() + seconds
    root = system_root()
    spell = UserPaths(topo.mounts, root=root)
    for n, (dev, inos) in enumerate(wanted.items()):
        # A fair share of what is left for each superblock: a big root file system
        # cannot eat the time of a small one mounted later.
        share = len(wanted) - n
        b = Budget(max_entries // len(wanted), max(0.0, end - time.monotonic()) / share)
        left = set(inos)
        for top, st in _mount_tops(topo, dev, root):
            if not left or b.exhausted:
                break
            if st.st_ino in left:
                found[(dev, st.st_ino)] = top[len(root):] or "/"
                left.discard(st.st_ino)
            for e, est in walk_tree(top, dev, b):
                if est.st_ino in left:
                    found[(dev, est.st_ino)] = e.path[len(root):]
                    left.discard(est.st_ino)
                    if not left:
                        break
    return {k: spell.spell(p, k[0], k[1]) for k, p in found.items()}
