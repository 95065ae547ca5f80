"""tmpfs/shmem page cache per file, counted by the kernel at every sample.

Why not from the tracepoints: shmem puts folios into its page cache with
shmem_add_to_page_cache() (mm/shmem.c, 6.1 and 6.18), which fires no
filemap:mm_filemap_add_to_page_cache, and moves them out to swap with
shmem_delete_from_page_cache(), which fires no delete event either; a kprobe on the add
sees the call, not whether it succeeded, and is missing where the function is inlined.
The kernel's own count, `mapping->nrpages`, is right by construction: it is raised and
lowered under the xarray lock by those same functions. So at each sample the kernel
baseline's iterator (bpf/baseline.bpf.c, tracer/baseline.py: BTF, bpf_iter, bpf_loop —
5.17+) is run once more, loaded once and restricted to tmpfs superblocks (s_magic
TMPFS_MAGIC: every tmpfs mount, devtmpfs, and the internal mount behind SysV shm, memfd
and shared anonymous mappings), whose inodes are few: 0.13 ms a walk on the 6.18 host.

The sample carries `shmem` {"dev:ino": pages} (the files that changed since the last
sample; 0: gone) and `shmem_devs` (the superblocks walked); the account takes those
files' pages from it instead of the traced counters (tracer/pagecache.py). Where the walk
cannot run, samples carry neither and the traced counters stand.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from . import baseline
from .errors import FootprintError
from .topology import devstr


class ShmemSampler:
    """One Walker kept loaded; read() gives a sample's `shmem` and `shmem_devs` fields
    (or nothing where the walk cannot run: said once through `log`; or with `on` False,
    the user's --baseline walk|none)."""

    def __init__(self, log: Callable[[str], None] = lambda m: None, on: bool = True):
        self.log = log
        self.walker: baseline.Walker | None = None
        self.off = baseline.unavailable() if on else "not asked for"  # why not, or None
        self.last: dict[str, int] = {}
        self.room = 1024

    def _open(self) -> baseline.Walker:
        head, image_lo = baseline.superblock_head()
        return baseline.Walker(self.room, head, image_lo, only_magic=baseline.TMPFS_MAGIC)

    def read(self) -> dict:
        """{"shmem": changed files, "shmem_devs": [...]}, or {} where the walk is off."""
        if self.off:
            return {}
        t0 = time.monotonic()
        try:
            if self.walker is None:
                self.walker = self._open()
            out = self.walker.run()
            s = out["summary"]
            if s["dropped"]:  # more tmpfs files with pages than room: once more, larger
                self.room = (s["records"] + s["dropped"]) * 2 + 1024
                self.close()
                self.walker = self._open()
                out = self.walker.run()
        except (FootprintError, OSError, AttributeError) as err:
            self.off = str(err)
            self.log(f"tmpfs files counted by the tracepoints only (the kernel walk stopped: {err})")
            self.close()
            return {}
        # A superblock whose list ended early (an inode removed under the walk) is left
        # out of this sample: its files keep their last counts.
        torn = {dev for dev, _n, _p, _m, fl in out["superblocks"] if fl & baseline.REC_TORN}
        now = {f"{devstr(dev, kernel=True)}:{ino}": pages
               for dev, ino, pages, _sw, _fl in out["inodes"] if pages and dev not in torn}
        devs = sorted({devstr(dev, kernel=True) for dev, *_ in out["superblocks"]} -
                      {devstr(dev, kernel=True) for dev in torn})
        changed, self.last = file_changes(self.last, now, devs)
        # what the walk cost this sample (kept in the raw record; the reader skips it)
        return {"shmem": changed, "shmem_devs": devs,
                "shmem_ms": round((time.monotonic() - t0) * 1000, 3)}

    def close(self) -> None:
        """Unload the walker (idempotent)."""
        if self.walker is not None:
            self.walker.close()
            self.walker = None


def file_changes(last: dict[str, int], now: dict[str, int], devs: list[str]) -> tuple[dict, dict]:
    """(changed, new last): the files whose pages differ from `last`, and 0 for those
    `last` counted on a file system the walk covered (`devs`) that it no longer found;
    files on the other file systems keep their last counts."""
    kept = {k: v for k, v in last.items() if k.rsplit(":", 1)[0] not in devs}
    changed = {k: v for k, v in now.items() if last.get(k) != v}
    changed.update({k: 0 for k in last if k not in now and k not in kept})
    return changed, {**kept, **now}
