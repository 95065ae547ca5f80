"""The storage topology followed while recording: re-read when it changes, files named.

Relies on the kernel's uevents (NETLINK_KOBJECT_UEVENT: a block device added, changed or
removed), on /proc/1/mountinfo (else /proc/self/mountinfo) changing when something is
mounted or unmounted, and on walking the mounted trees to name the biggest files the
tracer knows only as (s_dev, i_ino). Returns records; the recorder writes them.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable, Iterable

from .errors import FootprintError
from .procfs import boottime


def _as_dict(obj):
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return obj


class TopologyFollower:
    """Topology records on demand, uevents as they come, mounts as they change, and
    paths for the biggest unnamed files every NAME_EVERY seconds (or at a mount)."""

    # Seconds between namings of new big files while recording; each walk is held to
    # 0.3 s (at most 2 % of a CPU).
    NAME_EVERY = 15.0

    def __init__(self, log: Callable[[str], None] = lambda m: None):
        self.log = log
        self.uevents = None  # topology.UeventWatcher, once open_uevents() succeeded
        self.last_mountinfo: bytes | None = None  # as last looked at (mounts_changed)
        self.last_named = 0.0  # boottime of the last naming of files while recording
        self.named_files: set[str] = set()  # "dev:ino" the recording has a path for

    def topology_record(self, **how) -> dict | None:
        """A "topology" record (topology.read_topology(**how)); None, said in the log,
        when sysfs or /proc is only half visible."""
        try:
            from .topology import read_topology

            topo = _as_dict(read_topology(**how))
        except FootprintError:
            raise
        except Exception as err:  # a half-visible sysfs must not stop the recording
            self.log(f"topology not read: {err}")
            return None
        rec = {"type": "topology", "t": boottime(), "topology": topo}
        try:  # each squashfs mount's compressor, block size, decompressors (the report's)
            from .squashfs import mounts

            loops = [bd["dev"] for bd in (topo or {}).get("block_devices", {}).values()
                     if bd.get("kind") == "loop" and bd.get("probed_fstype") == "squashfs"]
            rec["squashfs"] = mounts(unmounted_loops=loops)
        except Exception as err:  # noqa: BLE001 - never stops a recording
            self.log(f"squashfs mounts not read: {err}")
        return rec

    def open_uevents(self) -> None:
        """Listen to the kernel's uevents (recording goes on without them if refused)."""
        try:
            from .topology import UeventWatcher

            # The built-in parser, not pyroute2's: importing pyroute2 costs ~17 MiB in
            # the recorder, which is the tracer's own memory; both read the same format.
            self.uevents = UeventWatcher(use_pyroute2=False)
        except Exception as err:  # pyroute2 missing or netlink refused: record without
            self.log(f"uevents not recorded: {err}")

    def uevent_records(self, timeout: float) -> list[dict]:
        """Wait up to `timeout` for uevents; their records, then a topology record when
        any came (a block device appeared or changed)."""
        if self.uevents is None:
            time.sleep(max(timeout, 0))
            return []
        ready, _, _ = select.select([self.uevents.fileno()], [], [], max(timeout, 0))
        if not ready:
            return []
        out = []
        for ev in self.uevents.poll():
            fields = {k: v for k, v in ev.items() if k not in ("type", "time")}
            out.append({"type": "uevent", "t": ev.get("time", boottime()), **fields})
        if out:
            topo = self.topology_record()
            if topo is not None:
                out.append(topo)
        return out

    def mounts_changed(self) -> bool:
        """Whether a file system was mounted or unmounted since the last look."""
        mi = None
        for who in ("1", "self"):  # as topology.read_mounts looks
            try:
                with open(f"/proc/{who}/mountinfo", "rb") as f:
                    mi = f.read()
                break
            except OSError:
                continue
        changed = mi is not None and self.last_mountinfo is not None and mi != self.last_mountinfo
        if mi is not None:
            self.last_mountinfo = mi
        return changed

    def naming_due(self, mounts_changed: bool) -> bool:
        """Every NAME_EVERY seconds, or when mounts changed, but not at the first sample
        (the baseline just named files)."""
        now = boottime()
        if mounts_changed or now - self.last_named >= self.NAME_EVERY:
            due = bool(self.last_named)
            self.last_named = now
            return due
        return False

    def paths_record(self, resident: Iterable[tuple[int, str]], count: int = 64,
                     seconds: float = 5.0) -> dict | None:
        """A "paths" record for the `count` biggest of `resident` ((pages, "dev:ino")) not
        named yet, found where the files are (a report may be read on another machine)."""
        from .topology import paths_of, read_topology

        top = sorted(((n, k) for n, k in resident if k not in self.named_files), reverse=True)[:count]
        wanted: dict[str, set] = {}
        for pages, key in top:
            dev, ino = key.rsplit(":", 1)
            if pages > 0:
                wanted.setdefault(dev, set()).add(int(ino))
        if not wanted:
            return None
        found = paths_of(read_topology(probe=False), wanted, budget=(300_000, seconds))
        self.named_files.update(f"{d}:{i}" for d, i in found)  # not looked for again
        if not found:
            return None
        return {"type": "paths", "t": boottime(), "paths": [[d, i, p] for (d, i), p in found.items()]}
