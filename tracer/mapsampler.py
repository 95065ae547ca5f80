"""One sample of the in-kernel account: the BPF maps read and diffed against the last read.

Returns data and writes nothing (the recorder writes). Relies on the maps of
bpf/footprint_types.h (tracer/bpfmaps.py reads them by fd), on each program's recursion-miss
counter (bpf_prog_info.recursion_misses, kernel 5.12+; older kernels count nothing) for
lost events, and on /proc/PID/comm to name an OOM victim while it may still exist
(oom:mark_victim carries only the pid on 6.1, the name too on 6.18).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from . import procfs
from .bpfmaps import Maps, prog_misses
from .procfs import boottime
from .progkinds import TWINNED_EVENTS
from .topology import devstr

# struct fp_site_key's kind (bpf/footprint_logic.h): 2 and 3 key a stack id (a vmalloc
# area's, a library's kmalloc object's).
SITE_KINDS = {0: "slab", 1: "percpu", 2: "vmap", 3: "kstack"}
STAT_NAMES = (
    "pagecache_added", "pagecache_deleted", "pagecache_deleted_untracked",
    "pagecache_freed_without_delete", "kernel_pages_allocated", "kernel_pages_freed",
    "stack_lost", "files_full", "pfn_out_of_range", "objects_allocated",
    "objects_freed", "objects_full", "sites_full", "percpu_full", "oom_kills",
    *(f"nested:{e}" for e in TWINNED_EVENTS),  # events a tp_btf program's twins ran
)


class Reading:
    """What one sample found: its record, and what it saw for the first time."""

    __slots__ = ("record", "new_stacks", "new_sites", "oom_victims")

    def __init__(self, record: dict, new_stacks: dict[int, list[int]] | None = None,
                 new_sites: list[str] | None = None, oom_victims: list[dict] | None = None):
        self.record = record  # the "sample" record
        self.new_stacks = new_stacks or {}  # stack id -> frames
        # "slab:0x...", "percpu:0x...", "vmap:0x<stack id>", "kstack:0x<stack id>"
        self.new_sites = new_sites or []
        self.oom_victims = oom_victims or []  # "oom" records' fields


class MapSampler:
    """Reads the maps behind `maps` (and the programs' fds for lost events); each read()
    carries only the entries that changed since the one before, slab and vmalloc totals
    only when they changed. `own_process`: the caller is the tracer (its own memory is
    sampled), not a reader of a pinned account."""

    def __init__(self, maps: Maps, prog_fds: dict[str, int], own_process: bool = True):
        self.maps = maps
        self.prog_fds = prog_fds
        self.own_process = own_process
        self.last: dict[str, dict] = {}  # slab, vmalloc: as last returned
        self.last_raw: dict[str, dict[bytes, bytes]] = {"stack_pages": {}, "sites": {}}
        self.files_epoch: int | None = None  # the epoch set for the last files read
        self.recent_files: dict[bytes, bytes] = {}  # what that read found tagged
        self.known_stacks: set[int] = set()  # described already (in the recording)
        self.known_sites: set[str] = set()
        self.oom_seen = 0  # the kernel's oom_kills count at the last read
        # Page-cache events a sample's reads may straddle: 1/1600 of the machine's pages
        # (1.3 MiB on 2 GiB, 15 MiB on 24 GiB: under 0.1 % of what a sample accounts).
        self.quiet = max(64, os.sysconf("SC_PHYS_PAGES") // 1600)
        # How long a sample waits for a storm of them to pass before it reads what it can.
        self.patience = 3.0
        self.read_seconds = 0.05  # how long the last read took (a wait's poll is a fraction)
        self.moment: dict = {}  # how the last sample's moment was taken (settled_moment)

    def changed_files(self) -> dict:
        """The files whose counters changed since the last read, decoded to the
        recording's keys: every file at the first read, then those the program tagged
        with this read's epoch or the two before (bpf/footprint_logic.h file_touched),
        less those read unchanged last time. Nothing is kept per file here: the files
        map holds tens of thousands (24k after a 20 s cold read on this host: 3.8 MiB as
        the bytes and dict the sampler used to compare every read with)."""
        epoch = self.maps.epoch() + 1
        self.maps.set_epoch(epoch)  # changes from now on carry the new epoch
        if self.files_epoch is None:
            now = self.maps.raw("files")
        else:
            now = dict(self.maps.files_touched(epoch, epoch - self.files_epoch + 1))
        self.files_epoch = epoch
        out = {}
        for k, v in now.items():
            if self.recent_files.get(k) != v:
                (dev, ino), c = self.maps.file_entry(k, v)
                out[f"{devstr(dev, kernel=True)}:{ino}"] = list(c)
        self.recent_files = now
        return out

    def changed(self, name: str) -> dict:
        """The entries of map `name` (stack_pages, sites: hundreds) that changed since
        the last read, decoded to the recording's keys; the raw read becomes the new
        reference."""
        now = self.maps.raw(name)
        before = self.last_raw[name]
        out = {}
        if name == "stack_pages":  # an array: ids never used are all zero (and stay out)
            now = {k: v for k, v in now.items() if v.count(0) != len(v)}
        for k, v in now.items():
            if before.get(k) == v:
                continue
            if name == "stack_pages":
                sid, c = self.maps.stack_entry(k, v)
                out[sid] = list(c)
            else:
                (addr, kind), c = self.maps.site_entry(k, v)
                out[f"{SITE_KINDS.get(kind, 'slab')}:{addr:#x}"] = list(c)
        self.last_raw[name] = now
        return out

    def resident_files(self) -> list[tuple[int, str]]:
        """(resident pages, "dev:ino") of every file in the files map, read now."""
        return [(c[0], f"{devstr(dev, kernel=True)}:{ino}") for (dev, ino), c in
                self.maps.files().items()]

    def _pagecache_events(self) -> int:
        return sum(self.maps.stats(3))  # pagecache added, deleted, deleted untracked

    def settled_moment(self, also: Callable[[], dict] | None = None,
                       quiet: int | None = None, patience: float | None = None
                       ) -> tuple[float, dict, dict, dict, int]:
        """The moment's time (boottime), and as of that moment the changed files, `also()`
        (the tmpfs walk), meminfo and the per-CPU free lists. A read that more than
        `quiet` page-cache adds and deletes land in (self.quiet: scaled to the machine) is
        read again (merged) once the page cache has gone quiet — in a short wait, at a rate
        that would land at most half of `quiet` in a read as long as the last — for at most
        `patience` seconds (self.patience), then taken as it is: `self.moment` says how
        many tries, how many events the last one straddled, how long the wait was.

        Why wait rather than read again at once: at switch_root the initramfs (100+ MiB)
        is deleted while the sample may be read. A read that straddled it counted those
        pages still in files, already free in meminfo (-83 % unattributed, seen in a plain
        guest); a delete between the files and the lists counted a page in both (-3.95 %);
        four back-to-back reads all fell inside the delete on a faster machine (-5.06 %,
        a live guest, CI). Waiting costs two stats reads a poll; reading again costs a
        files map of thousands of entries."""
        quiet = self.quiet if quiet is None else quiet
        deadline = time.monotonic() + (self.patience if patience is None else patience)
        files: dict = {}
        extra: dict = {}
        tries, waited = 0, 0.0
        while True:
            tries += 1
            t, start, before = boottime(), time.monotonic(), self._pagecache_events()
            files.update(self.changed_files())
            for key, value in (also() if also else {}).items():
                if isinstance(value, dict) and isinstance(extra.get(key), dict):
                    extra[key].update(value)  # a later read's changes on top
                else:
                    extra[key] = value
            # meminfo and the per-CPU lists last: pages freed after the files were read
            # are then gone from both sides, or from neither
            meminfo, pcp = settled_meminfo()
            moved = self._pagecache_events() - before
            self.read_seconds = time.monotonic() - start
            if moved <= quiet or time.monotonic() >= deadline:
                break
            waited += self._await_quiet(quiet, deadline)
        self.moment = {"tries": tries, "moved": moved, "waited_ms": round(waited * 1000)}
        return t, files, extra, meminfo, pcp

    def _await_quiet(self, quiet: int, deadline: float) -> float:
        """Wait until page-cache events land at a rate that would put at most half of
        `quiet` in a read of self.read_seconds, or until `deadline`; the seconds waited."""
        step = min(0.05, max(0.005, self.read_seconds / 4))
        start = time.monotonic()
        last = self._pagecache_events()
        while time.monotonic() + step < deadline:
            time.sleep(step)
            now = self._pagecache_events()
            if (now - last) * self.read_seconds / step <= quiet / 2:
                break
            last = now
        return time.monotonic() - start

    def lost_events(self, stats: dict) -> dict[str, int]:
        """Events the programs missed: "lost_events" summed, and "lost_events:GROUP:EVENT"
        for each program that missed any (a tp_btf one: it was already running on that
        CPU, an interrupt's event inside it, less those its nested twins ran — stats'
        "nested:EVENT"; a classic tracepoint's: any tracing program or a map access from
        user space was). A twin's own misses are not events lost: most are events the
        programs before it ran, and the rest the first program missed too."""
        out = {"lost_events": 0}
        for name, fd in self.prog_fds.items():
            kind, _, event = name.partition("__")
            if kind.startswith("tp_btf_nested"):
                continue
            try:
                n = prog_misses(fd)
            except OSError:  # kernels before 5.12 do not count them
                continue
            if kind == "tp_btf":
                n = max(0, n - stats.get(f"nested:{event.split('__')[-1]}", 0))
            out["lost_events"] += n
            if n:
                out["lost_events:" + ":".join(name.split("__")[1:])] = n
        return out

    def _oom_victims(self, count: int) -> list[dict]:
        """The OOM killer's victims since the last read, named from /proc if the event
        did not carry the name."""
        out = []
        for v in self.maps.oom_victims(self.oom_seen, count):
            if not v["comm"]:
                try:
                    with open(f"/proc/{v['pid']}/comm") as f:
                        v["comm"] = f.read().strip()
                except OSError:
                    pass
            out.append(v)
        self.oom_seen = count
        return out

    def read(self, also: Callable[[], dict] | None = None) -> Reading:
        """Sample now: the changed files, stacks and call sites, the counters, meminfo,
        per-CPU free pages, this process's memory, slab and vmalloc totals; `also()`'s
        entries (the tmpfs walk) read in the same moment as the files (settled_moment)."""
        t, files, extra, meminfo, pcp = self.settled_moment(also)
        stacks, sites = self.changed("stack_pages"), self.changed("sites")
        # A vmalloc area's site is its stack (the key holds the id): described as a stack too.
        vmap_sids = [int(k.split(":", 1)[1], 16) for k in sites
                     if k.startswith(("vmap:", "kstack:"))]
        new_stacks = {sid: self.maps.stack(sid) for sid in [*stacks, *vmap_sids]
                      if sid and sid not in self.known_stacks}
        new_sites = [key for key in sites if key not in self.known_sites]
        self.known_stacks.update(new_stacks)
        self.known_sites.update(new_sites)
        stats = dict(zip(STAT_NAMES, self.maps.stats(len(STAT_NAMES))))
        stats.update(self.lost_events(stats))
        victims = self._oom_victims(stats["oom_kills"]) if stats["oom_kills"] > self.oom_seen else []
        rec = {"type": "sample", "t": t, "meminfo": meminfo, "stats": stats,
               "pcp_pages": pcp, "moment": self.moment,
               "files": files, "stacks": {str(k): v for k, v in stacks.items()}, "sites": sites,
               "tracer": procfs.own_memory() if self.own_process else {}, **extra}
        # Slab and vmalloc totals are carried whole, and only when they changed.
        for name, now in (("slab", procfs.slab_summary()), ("vmalloc", procfs.vmalloc_summary())):
            if now != self.last.get(name):
                rec[name] = now
                self.last[name] = now
        return Reading(rec, new_stacks, new_sites, victims)


def settled_meminfo(tries: int = 3, quiet_kb: int = 1024) -> tuple[dict, int]:
    """/proc/meminfo and the free pages on the per-CPU lists (/proc/zoneinfo) as of one
    moment: meminfo read again after the lists, and the pair again while MemFree or
    Cached moved by more than `quiet_kb` in between (at most `tries` times). Pages freed
    between a meminfo read and the lists' read are in both (in Cached, and free on a
    list): a drop_caches freeing 380 MiB counted ~30 MiB twice (-3.7 % unattributed, in
    a live guest). Both files are read at the kernel's word (vmstat counters, zoneinfo's
    pcp->count), since 2.6."""
    before = procfs.meminfo()
    for _ in range(tries):
        pcp = procfs.zone_pcp_pages()
        after = procfs.meminfo()
        moved = sum(abs(after.get(k, 0) - before.get(k, 0)) for k in ("MemFree", "Cached"))
        if moved <= quiet_kb:
            break
        before = after
    return after, pcp
