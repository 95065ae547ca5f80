"""The page cache resident before the tracer attached, matched against the tracer's counters.

Taken after attaching, so pages added in between are both traced and seen by the
measurement (the kernel's per-inode counts of bpf/baseline.bpf.c, tracer/baseline.py, or
the walk of paths with cachestat(2) (6.5+) / mincore(2), tracer/inventory.py): a file's
baseline is what the measurement saw beyond what the tracer counted for it at that instant,
and deletes of untraced pages count against the baseline from that instant on. Returns
data; the recorder writes the "inventory" record.
"""

from __future__ import annotations

from collections.abc import Callable

from .bpfmaps import Maps
from .errors import FootprintError
from .procfs import boottime
from .topology import devstr, kdev

UNNAMED_KEPT = 256  # the biggest unnamed files go over to the sampler (environment <= 128 KiB)


class AttachBaseline:
    """The "inventory" record and what the sampler goes on with."""

    def __init__(self, record: dict, superblock_fstypes: dict | None = None):
        self.record = record
        self.named_files: set[str] = set()  # "dev:ino" with a path already
        self.unnamed_baseline: dict[str, int] = {}  # "dev:ino" -> pages
        self.superblock_fstypes = superblock_fstypes  # for the topology (kernel walk only)


def _read_files(maps: Maps) -> dict[str, list[int]]:
    return {f"{devstr(dev, kernel=True)}:{ino}": list(c) for (dev, ino), c in maps.files().items()}


def take(maps: Maps, method: str, seconds: float,
         log: Callable[[str], None] = lambda m: None) -> AttachBaseline | None:
    """The baseline `method` asks for (baseline.take: kernel | walk | none | auto), the
    walk held to `seconds`, each file's baseline net of the tracer's counters when it was
    measured; None for "none"."""
    from .baseline import take as measure
    from .topology import read_topology

    def traced_now(dev: str, ino: int) -> list[int]:
        return list(maps.file_counters(kdev(dev), ino) or (0, 0, 0, 0, 0))

    t0 = boottime()
    # Block devices have no (s_dev, ino) the walk can know (the bdev pseudo file
    # system's s_dev is learnt from the tracer's own pages): they are measured first,
    # against the counters of just before and just after the whole walk.
    before = _read_files(maps)
    # The kernel's own per-inode counts where it can (tracer/baseline.py), else the
    # walk of paths; rows without traced_at are matched against before/after.
    def walk() -> dict:
        from .inventory import inventory  # imported only where the walk runs

        return inventory(read_topology(), budget=(1_000_000, seconds), traced=traced_now)

    result = measure(method, walk, log=log)
    if result is None:
        return None
    rows = result["rows"]
    after = _read_files(maps)
    out = AttachBaseline(record={}, superblock_fstypes=result.get("superblock_fstypes"))
    out.named_files = {f"{r['dev'] or 'bdev'}:{r['ino']}" for r in rows if r.get("path")}
    untracked, unnamed, files = {}, {}, []
    for row in rows:
        key = f"{row['dev'] or 'bdev'}:{row['ino']}"
        at = row.get("traced_at")
        if at is None:
            at = list(before.get(key, (0, 0, 0, 0, 0)))
            at[4] = after[key][4] if key in after else 0
        baseline = row["resident_pages"] - at[0]
        if baseline <= 0:
            continue
        untracked[key] = at[4]
        # A block device's page cache lives on the bdev pseudo file system, whose
        # s_dev is only known once the tracer has seen one of its pages: "bdev".
        files.append([row["dev"] or "bdev", row["ino"], baseline, row.get("path")])
        if not row.get("path"):
            unnamed[key] = baseline
    out.unnamed_baseline = dict(sorted(unnamed.items(), key=lambda kv: -kv[1])[:UNNAMED_KEPT])
    method_used = sorted({r.get("method", "?") for r in rows})
    out.record = {"type": "inventory", "t": boottime(), "method": ",".join(method_used),
                  "seconds": round(boottime() - t0, 3), "stats": result.get("stats", {}),
                  "untracked_at_inventory": untracked, "files": files}
    st = result.get("stats", {})
    log(f"inventory ({st.get('baseline')}): {len(files)} files with "
        f"{sum(f[2] for f in files)} pages already resident, "
        f"{100 * (st.get('completeness') or 0):.1f} % of Cached+Buffers "
        f"({boottime() - t0:.1f} s)")
    return out


# loader.MapSizes.resolved: files = max(16384, files_now * 3 // 2 + 8192): up to this
# many files with page cache the table has its floor size whatever the walk would say.
FLOOR_COVERS = (16384 - 8192) * 2 // 3


def _inodes_in_use() -> int:
    """In-core inodes in use (/proc/sys/fs/inode-nr: nr_inodes - nr_unused, fs/inode.c):
    an upper bound on the files with page cache. Large when unreadable."""
    try:
        with open("/proc/sys/fs/inode-nr") as f:
            used, unused = (int(x) for x in f.read().split()[:2])
        return max(0, used - unused)
    except (OSError, ValueError):
        return 1 << 30


def files_with_pages(method: str, files_sized: bool) -> int | None:
    """How many files have page cache now, to size the files table: the kernel
    baseline's walk (tracer/baseline.py: tens of milliseconds on a host, ~1 s in a TCG
    guest) where it runs, the table is not sized by hand or by the guess (`files_sized`)
    and the in-core inodes are too many for the table's floor to hold them all; None
    (the loader guesses) otherwise. The inventory after attaching walks again: the walk
    here only sizes."""
    if files_sized or method not in ("auto", "kernel"):
        return None
    if _inodes_in_use() <= FLOOR_COVERS:
        return None  # every inode with pages fits the table's floor: no walk can change it
    from . import baseline

    if baseline.unavailable() is not None:
        return None
    try:
        return len(baseline.kernel_walk()["inodes"])
    except FootprintError:
        return None
