"""The recording: an append-only, versioned JSON Lines file, and its bounded, validating
reader (the writer: tracer/writer.py; strict JSON: tracer/boundedjson.py).

Why this shape: the recorder may be killed at any moment (OOM, reboot, SIGKILL), so each
record is one line, flushed as written, and a reader takes every complete line and
ignores a torn last one. JSON, not pickle: a recording from another machine is data,
parsed with bounds, never executed.

Format (version 1). Every line is an object with a "type":

  header    first line. format="footprint-recording", version, kernel, hostname,
            page_size, created (boottime/realtime seconds), plan (probes, headers, map
            sizes), tracer (pid, mapped files) and options.
  topology  t, topology: the storage stack as read at t (tracer/topology.py).
  inventory t, method, files: [[dev, ino, baseline_pages, path|null], ...]: pages
            already resident when the tracer attached that it had not traced itself.
  stack     id, kind, owner, frames: [symbol, ...]: a kernel stack of non-movable page
            allocations, classified once when first seen.
  site      key ("kind:0xaddr"), kind ("slab"|"percpu"|"vmap"|"kstack"), symbol, module,
            owner; a "vmap"/"kstack" key holds a stack id (vmalloc areas, kmalloc objects
            of library code, by the stack that asked), its
            record also the library it went through and the immediate caller.
  sample    t, meminfo {field: kB}, stats {name: count}, pcp_pages (free pages on the
            per-CPU lists, outside MemFree), and the counters that changed
            since the previous sample, each [resident, peak, added, removed,
            untracked_removed]: files {"dev:ino": ...} (pages), stacks {id: ...} (pages),
            sites {key: ...} (bytes); slab {cache: [active_objs, objsize, pages]} and
            vmalloc {caller: pages}, written whole when they changed (else absent); tracer {anon_kb, file_kb, ...}:
            the recorder's own process memory. Where the kernel walk runs:
            shmem {"dev:ino": pages} the tmpfs files whose page count (the kernel's
            nrpages) changed since the previous sample, 0 when gone, and shmem_devs
            ["dev", ...] the tmpfs superblocks counted (tracer/shmemsampler.py).
  tracer    t, stage, pid, files: the recorder's own mapped files after it exec'd into
            the lean sampler (their page cache is the tracer's cost).
  paths     t, paths: [[dev, ino, path], ...]: names for the biggest files known only by
            inode, found by the recorder at the end, where the files are.
  phase     t, name: a mark on the timeline (dracut hook, switch_root, systemd target).
  oom       t, pid, comm, trigger: a victim of the OOM killer (oom:mark_victim) while
            recording; comm is the victim's name where the kernel or /proc still had it,
            trigger the task whose allocation ran out.
  uevent    t, action, devname, major, minor, ...
  end       t, reason. Absent when the recorder did not stop cleanly: the recording is
            then "partial", and says so.

Times are CLOCK_BOOTTIME seconds, one clock for samples, phases and uevents.

Long because the format's description above sits beside the reader that enforces it
(each record's shape is checked where it is read).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any, Iterator

from .boundedjson import Corrupt, count_values, loads
from .errors import FootprintError
from .writer import FORMAT, VERSION, Writer  # noqa: F401  (recording.Writer: the writer)

# Bounds on a recording read back. A recording is a file someone may send you, read as
# root: nothing in it may cost unbounded memory or time. The largest real recordings (an
# hour of samples on a busy machine) are tens of MiB.
MAX_LINE = 64 << 20      # one record
MAX_BYTES = 1 << 30      # the whole file
MAX_VALUES = 40_000_000  # JSON values in the whole file: parsed, ~40 bytes each at most
COUNTER_FIELDS = ("resident", "peak", "added", "removed", "untracked_removed")


@dataclass
class Recording:
    """A recording read back: the state at each sample, replayed from the deltas."""

    path: str
    header: dict
    partial: bool = False
    torn_tail: bool = False
    end: dict | None = None
    topologies: list[dict] = field(default_factory=list)
    inventories: list[dict] = field(default_factory=list)
    stacks: dict[int, dict] = field(default_factory=dict)
    sites: dict[str, dict] = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)  # as recorded: counters are deltas
    phases: list[dict] = field(default_factory=list)
    uevents: list[dict] = field(default_factory=list)
    tracer: list[dict] = field(default_factory=list)
    oom: list[dict] = field(default_factory=list)
    paths: dict[str, str] = field(default_factory=dict)  # "dev:ino" → path, named at the end

    def states(self) -> Iterator[dict]:
        """Each sample with the full counter state at its time (replayed from deltas)."""
        files: dict[str, list[int]] = {}
        stacks: dict[int, list[int]] = {}
        sites: dict[str, list[int]] = {}
        slab: dict = {}
        vmalloc: dict = {}
        shmem: dict[str, list[int]] = {}  # "dev:ino" -> [pages, peak] as the kernel counted
        for s in self.samples:
            for key, pages in s.get("shmem", {}).items():
                shmem[key] = [pages, max(pages, shmem.get(key, (0, 0))[1])]
            slab = s["slab"] if s["slab"] is not None else slab
            vmalloc = s["vmalloc"] if s["vmalloc"] is not None else vmalloc
            files.update(s["files"])
            stacks.update(s["stacks"])
            sites.update(s["sites"])
            # Measured counts stand only at samples that measured (shmem_devs not None).
            yield {**s, "files": files, "stacks": stacks, "sites": sites, "slab": slab,
                   "vmalloc": vmalloc, "shmem": shmem}

    def sample_at(self, t: float) -> tuple[int, str]:
        """The sample for a moment marked at boottime t: the first at or after t, else the
        last (and why)."""
        for i, s in enumerate(self.samples):
            if s["t"] >= t:
                return i, ""
        if not self.samples:
            raise FootprintError(f"recording {self.path} holds no sample")
        return len(self.samples) - 1, (f"no sample after the mark at {t:.1f} s: the last one "
                                       f"({self.samples[-1]['t']:.1f} s) taken")

    def state(self, index: int = -1) -> dict | None:
        """The full state at sample `index` (default: the last one); a copy."""
        if not self.samples:
            return None
        index = index % len(self.samples)
        for i, st in enumerate(self.states()):
            if i == index:
                return {**st, "files": dict(st["files"]), "stacks": dict(st["stacks"]),
                        "sites": dict(st["sites"]), "shmem": dict(st["shmem"])}
        return None


def _bad(path: str, what: str) -> FootprintError:
    return FootprintError(f"recording {path} is {what}: re-record it with `footprint record`")


def _lines(path: str) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, bytes, complete?) for each line; the last may be torn. Only a regular
    file is read (a FIFO or a device given as a recording would block or never end), and
    no more than MAX_BYTES of it."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; the file is checked below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FootprintError(f"no recording at {path}: give the path written by "
                             "`footprint record -o PATH`") from None
    except OSError as err:
        raise FootprintError(f"cannot read recording {path}: {err.strerror}") from None
    f = os.fdopen(fd, "rb")
    with f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FootprintError(f"{path} is not a regular file: give the recording file "
                                 "written by `footprint record -o PATH`")
        os.set_blocking(fd, True)
        n = total = 0
        while True:
            line = f.readline(MAX_LINE + 1)
            if not line:
                return
            n += 1
            total += len(line)
            if len(line) > MAX_LINE:
                raise _bad(path, f"corrupt (line {n} longer than {MAX_LINE >> 20} MiB)")
            if total > MAX_BYTES:
                raise _bad(path, f"too large (over {MAX_BYTES >> 20} MiB)")
            yield n, line, line.endswith(b"\n")


def _counter(value: Any, path: str, n: int) -> list[int]:
    if not (isinstance(value, list) and len(value) == len(COUNTER_FIELDS)
            and all(_is_count(v) for v in value)):
        raise _bad(path, f"corrupt (bad counter on line {n})")
    return value


# Numbers in keys are bounded like the JSON's own (20 digits): int() of longer is refused.
_FILE_KEY = re.compile(r"^(\d{1,10}:\d{1,10}|bdev):\d{1,20}$")
_SITE_KEY = re.compile(r"^(slab|percpu|vmap|kstack):0x[0-9a-f]{1,16}$")


def _counters(obj: Any, path: str, n: int, key_int: bool = False, key_re=None) -> dict:
    if not isinstance(obj, dict):
        raise _bad(path, f"corrupt (bad counters on line {n})")
    out = {}
    for k, v in obj.items():
        if key_re is not None and not key_re.match(k):
            raise _bad(path, f"corrupt (bad key on line {n})")
        if key_int:
            try:
                k = int(k)
            except ValueError:
                raise _bad(path, f"corrupt (bad stack id on line {n})") from None
        out[k] = _counter(v, path, n)
    return out


# The topology's shape, as far as the account reads it: (key, allowed types, required).
_STR, _INT, _NONE = (str,), (int,), (type(None),)
_MOUNT = (("id", _INT, True), ("dev", _STR, True), ("root", _STR, True),
          ("mountpoint", _STR, True), ("fstype", _STR, True), ("source", _STR + _NONE, False))
_BLOCK = (("name", _STR, True), ("dev", _STR, True), ("kind", _STR, True),
          ("slaves", (list,), False), ("holders", (list,), False), ("parent", _STR + _NONE, False),
          ("probed_fstype", _STR + _NONE, False), ("loop", (dict,), False), ("dm", (dict,), False))
_LOOP = (("backing_dev", _STR + _NONE, False), ("backing_ino", _INT + _NONE, False),
         ("backing_file", _STR + _NONE, False), ("backing_file_initramfs", _STR + _NONE, False))
_DM = (("name", _STR + _NONE, False), ("table", (list,), False))


def _fields_ok(obj, spec) -> bool:
    if not isinstance(obj, dict):
        return False
    for key, types, required in spec:
        if key not in obj:
            if required:
                return False
            continue
        if not isinstance(obj[key], types) or isinstance(obj[key], bool):
            return False
    return True


def _topology_ok(t) -> bool:
    """Bounded check of a topology from a recording (it is data from another machine)."""
    if not isinstance(t, dict) or not isinstance(t.get("time"), (int, float)):
        return False
    mounts, bds = t.get("mounts"), t.get("block_devices")
    if not isinstance(mounts, list) or not isinstance(bds, dict):
        return False
    if not all(_fields_ok(m, _MOUNT) for m in mounts):
        return False
    if not isinstance(t.get("bdev_sb_dev"), _STR + _NONE) or not isinstance(t.get("history", []), list):
        return False
    if t.get("root") is not None and not _fields_ok(t["root"], (("dev", _STR, True),)):
        return False
    for name, bd in bds.items():
        if not _fields_ok(bd, _BLOCK):
            return False
        if not all(isinstance(x, str) for x in bd.get("slaves", []) + bd.get("holders", [])):
            return False
        if "loop" in bd and not _fields_ok(bd["loop"], _LOOP):
            return False
        if "dm" in bd or bd["kind"] == "dm":  # a dm device is read through its table
            if not _fields_ok(bd.get("dm"), _DM):
                return False
            for tgt in bd["dm"].get("table", []):
                if not _fields_ok(tgt, (("target", _STR, True), ("devices", (list,), False))):
                    return False
                if not all(_fields_ok(d, (("dev", _STR, True), ("role", _STR, True)))
                           for d in tgt.get("devices", [])):
                    return False
    return True


def _shmem(obj: dict, path: str, n: int) -> dict:
    """A sample's measured tmpfs files, checked: {"dev:ino": pages} and the devs counted."""
    counts, devs = obj.get("shmem", {}), obj.get("shmem_devs")
    if not isinstance(counts, dict) or not all(
            isinstance(k, str) and _FILE_KEY.match(k) and _is_count(v) for k, v in counts.items()):
        raise _bad(path, f"corrupt (bad shmem on line {n})")
    if devs is not None and not (isinstance(devs, list) and all(
            isinstance(d, str) and re.fullmatch(r"\d+:\d+", d) for d in devs)):
        raise _bad(path, f"corrupt (bad shmem_devs on line {n})")
    return {"shmem": counts, "shmem_devs": devs}


_TIMED = ("sample", "topology", "inventory", "phase", "uevent", "tracer", "oom")


def _header_ok(h: dict) -> bool:
    ps = h.get("page_size", 4096)
    if not _is_int(ps) or not 512 <= ps <= 1 << 20 or ps & (ps - 1):
        return False
    if not _is_time(h.get("attached", 0)):
        return False
    if not all(isinstance(h.get(k, ""), str) for k in ("kernel", "hostname")):
        return False
    if not isinstance(h.get("options", {}), (dict, type(None))):
        return False
    plan, tracer = h.get("plan", {}), h.get("tracer", {})
    if not isinstance(plan, dict) or not isinstance(tracer, dict):
        return False
    if not isinstance(plan.get("probes", []), list) or not all(
            isinstance(p, dict) and isinstance(p.get("probe"), str) for p in plan.get("probes", [])):
        return False
    files = tracer.get("files", [])
    if not isinstance(files, list) or not all(
            isinstance(f, list) and len(f) == 3 and isinstance(f[0], str) and _is_int(f[1])
            for f in files):
        return False
    created = h.get("created", {})
    return isinstance(created, dict) and all(_is_time(v) for v in created.values())


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_count(v) -> bool:
    """Pages, kB, bytes, events: whole and never negative (the parser bounds the size)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_time(v) -> bool:
    """Seconds on CLOCK_BOOTTIME or since the epoch (the parser refuses NaN and Infinity)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0


def _is_slab(v) -> bool:
    return isinstance(v, list) and len(v) == 3 and all(_is_count(x) for x in v)


def read(path: str) -> Recording:
    """Parse a recording with bounds; raises FootprintError on anything malformed."""
    rec: Recording | None = None
    values = 0
    for n, raw, complete in _lines(path):
        values += count_values(raw)
        if values > MAX_VALUES:
            raise _bad(path, f"too large (over {MAX_VALUES} values at line {n})")
        try:
            obj = loads(raw)
        except Corrupt as why:
            raise _bad(path, f"corrupt (line {n}: {why})") from None
        except ValueError:  # not JSON (json's errors and UnicodeDecodeError are ValueErrors)
            if not complete and rec is not None:
                rec.torn_tail = True  # the recorder died mid-line: keep what came before
                break
            raise _bad(path, f"corrupt (line {n} is not JSON)") from None
        try:
            rec = _record(rec, obj, path, n)
        except RecursionError:
            raise _bad(path, f"corrupt (line {n}: nested too deeply)") from None
    if rec is None:
        raise _bad(path, "empty")
    rec.partial = rec.end is None
    return rec


def _record(rec: Recording | None, obj, path: str, n: int) -> Recording:
    """Validate one parsed line and add it to `rec` (the header line creates it)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise _bad(path, f"corrupt (line {n} has no record type)")
    kind = obj["type"]  # strings are valid Unicode already (boundedjson.loads)
    if rec is None:
        if kind != "header" or obj.get("format") != FORMAT:
            raise FootprintError(f"{path} is not a footprint recording: "
                                 "give a file written by `footprint record`")
        version = obj.get("version")
        if not _is_int(version) or version < 1:
            raise _bad(path, "corrupt (header without a valid version)")
        if version > VERSION:
            raise FootprintError(f"recording {path} is format version {version}, newer "
                                 f"than this footprint reads ({VERSION}): upgrade footprint")
        if not _header_ok(obj):
            raise _bad(path, "corrupt (bad header)")
        return Recording(path=path, header=obj)
    t = obj.get("t")
    if (t is not None or kind in _TIMED) and not _is_time(t):
        raise _bad(path, f"corrupt (bad time on line {n})")
    if kind == "header":
        raise _bad(path, f"corrupt (a second header on line {n}: two recordings in one file)")
    if kind == "sample":
        for name, check in (("meminfo", _is_count), ("stats", _is_count), ("vmalloc", _is_count),
                            ("slab", _is_slab)):
            value = obj.get(name, {})
            if value is None and name in ("slab", "vmalloc"):
                continue
            if not isinstance(value, dict) or not all(
                    isinstance(k, str) and check(v) for k, v in value.items()):
                raise _bad(path, f"corrupt (bad {name} on line {n})")
        mi = obj.get("meminfo", {})
        if mi.get("MemFree", 0) > mi.get("MemTotal", 0) and "MemTotal" in mi:
            raise _bad(path, f"corrupt (MemFree above MemTotal on line {n})")
        rec.samples.append({
            "t": t, "meminfo": mi, "stats": obj.get("stats", {}),
            "slab": obj.get("slab"), "vmalloc": obj.get("vmalloc"),
            "pcp_pages": obj.get("pcp_pages") if _is_count(obj.get("pcp_pages")) else 0,
            "tracer": obj.get("tracer") if isinstance(obj.get("tracer"), dict)
            and all(_is_count(v) for v in obj["tracer"].values()) else {},
            # how the sample's moment was read (mapsampler.settled_moment): kept if sane
            "moment": obj.get("moment") if isinstance(obj.get("moment"), dict)
            and all(_is_count(v) for v in obj["moment"].values()) else {},
            "files": _counters(obj.get("files", {}), path, n, key_re=_FILE_KEY),
            "stacks": _counters(obj.get("stacks", {}), path, n, key_int=True),
            "sites": _counters(obj.get("sites", {}), path, n, key_re=_SITE_KEY),
            **_shmem(obj, path, n)})
    elif kind == "stack":
        if not (_is_count(obj.get("id")) and isinstance(obj.get("frames", []), list)
                and all(isinstance(f, str) for f in obj.get("frames", []))
                and isinstance(obj.get("kind", ""), str) and isinstance(obj.get("owner", ""), str)):
            raise _bad(path, f"corrupt (bad stack on line {n})")
        rec.stacks[obj["id"]] = obj
    elif kind == "site":
        if not (isinstance(obj.get("key"), str) and isinstance(obj.get("kind", ""), str)
                and isinstance(obj.get("owner", ""), (str, type(None)))):
            raise _bad(path, f"corrupt (bad site on line {n})")
        rec.sites[obj["key"]] = obj
    elif kind == "topology":
        if not _topology_ok(obj.get("topology")):
            raise _bad(path, f"corrupt (bad topology on line {n})")
        rec.topologies.append(obj)
    elif kind == "inventory":
        rows = obj.get("files")
        if not isinstance(rows, list) or not all(
                isinstance(r, list) and len(r) == 4 and isinstance(r[0], str)
                and _FILE_KEY.match(f"{r[0]}:0") and _is_count(r[1]) and _is_count(r[2])
                and isinstance(r[3], (str, type(None)))
                for r in rows) or not isinstance(obj.get("untracked_at_inventory", {}), dict) \
                or not all(_is_count(v) for v in obj.get("untracked_at_inventory", {}).values()):
            raise _bad(path, f"corrupt (bad inventory on line {n})")
        rec.inventories.append(obj)
    elif kind == "phase":
        if not isinstance(obj.get("name"), str):
            raise _bad(path, f"corrupt (bad phase on line {n})")
        rec.phases.append(obj)
    elif kind == "uevent":
        rec.uevents.append(obj)
    elif kind == "oom":
        if not (_is_count(obj.get("pid")) and isinstance(obj.get("comm", ""), _STR + _NONE)
                and isinstance(obj.get("trigger", ""), _STR + _NONE)):
            raise _bad(path, f"corrupt (bad oom record on line {n})")
        rec.oom.append({"t": t, "pid": obj["pid"], "comm": (obj.get("comm") or "")[:64],
                        "trigger": (obj.get("trigger") or "")[:64]})
    elif kind == "paths":
        rows = obj.get("paths")
        if not isinstance(rows, list) or not all(
                isinstance(p, list) and len(p) == 3 and isinstance(p[0], str)
                and _is_count(p[1]) and isinstance(p[2], str) for p in rows):
            raise _bad(path, f"corrupt (bad paths on line {n})")
        rec.paths.update({f"{d}:{i}": p for d, i, p in rows})
    elif kind == "tracer":
        files = obj.get("files", [])
        if not isinstance(files, list) or not all(
                isinstance(f, list) and len(f) == 3 and isinstance(f[0], str)
                and _is_count(f[1]) for f in files):
            raise _bad(path, f"corrupt (bad tracer record on line {n})")
        rec.tracer.append(obj)
    elif kind == "end":
        if not isinstance(obj.get("reason", ""), str):
            raise _bad(path, f"corrupt (bad end record on line {n})")
        rec.end = obj
    # Unknown record types from a newer minor revision are skipped on purpose.
    return rec
