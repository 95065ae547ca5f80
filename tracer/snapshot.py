"""`footprint report --pinned`: the account pinned by `record --pin` (tracer/pinned.py),
read now. A copy of the recording that pinned it (its header, topology, baseline,
stacks) with one more sample of the pinned maps, reported like any recording; the sample
is taken the recorder's way (Recorder.sample), so it reads as any other.
"""

from __future__ import annotations

import json
import os

from . import pinned
from .errors import FootprintError

SNAPSHOT = pinned.SNAPSHOT


def snapshot(out: str = SNAPSHOT, source: str | None = None, phase: str | None = None) -> str:
    """Write `out`: the pinned account's recording with one more sample, read now from
    the pinned maps; returns its path. `source`: an earlier snapshot to continue instead
    of the recording (its samples are kept: a chain of snapshots is one timeline);
    `phase`: a phase mark of that name put just before the new sample."""
    from .bpfmaps import obj_get
    from .procfs import boottime
    from .recorder import Options, Recorder
    from .recording import Writer, read
    from .shmemsampler import file_changes
    from .symbols import Kallsyms
    from .symbolizer import Symbolizer

    meta = pinned.meta()
    source = source or meta["recording"]
    try:
        fds = {name: obj_get(f"{pinned.PIN_DIR}/map-{name}") for name in meta["maps"]}
        progs = {name: obj_get(f"{pinned.PIN_DIR}/prog-{name}") for name in meta.get("programs", [])}
    except OSError as err:
        raise FootprintError(f"the pinned account in {pinned.PIN_DIR} is incomplete ({err.strerror}): "
                             "remove it with `footprint unpin`") from None
    writer = None
    try:
        rec = Recorder(Options(output=out, marks=None, slab=meta.get("slab", "kmalloc")))
        # This reader is footprint's process: its memory is the tracer's (the sample
        # carries it). The moment is read first, before this process reads the recording
        # or the kernel's symbols: what it holds in the sample is python and its imports.
        rec.use_maps(fds, progs)
        t = boottime()
        reading = rec.sampler.read(also=rec.shmem.read)  # every entry: no reference yet
        rec.shmem.close()  # the tmpfs walk of that sample (tracer/shmemsampler.py)
        read(source)  # bounded and validated: one line if it is corrupt
        try:
            src = open(source, encoding="utf-8")
        except OSError as err:
            raise FootprintError(f"the recording of the pinned account, {source}, is "
                                 f"unreadable ({err.strerror})") from None
        with src:
            header, stacks, sites, shmem = _described(src)
            if not header:
                raise FootprintError(f"the recording of the pinned account, {source}, "
                                     "has no header")
            # Only what the recording does not describe yet; tmpfs files it counted
            # that are gone now are counted 0, not kept.
            reading.new_stacks = {k: v for k, v in reading.new_stacks.items() if k not in stacks}
            reading.new_sites = [k for k in reading.new_sites if k not in sites]
            if isinstance(reading.record.get("shmem"), dict):
                reading.record["shmem"] = file_changes(
                    shmem, reading.record["shmem"], reading.record.get("shmem_devs") or [])[0]
            rec.symbols = Symbolizer(Kallsyms.load())
            taken = rec.records_of(reading)
            # The copy after the sample: what this snapshot writes (a file as big as the
            # recording, on /run's tmpfs as a rule) is not in the moment it read.
            rec.writer = writer = Writer(out)
            writer.start(header)  # the header as it was (start() keeps its fields)
            src.seek(0)
            for obj in map(_record, src):
                if obj and obj.get("type") not in ("header", "end"):
                    writer.write(obj)
        if phase is not None:
            writer.write({"type": "phase", "t": t, "name": phase})
        for obj in taken:
            writer.write(obj)
        writer.close("snapshot of the pinned account")
    except BaseException:
        if writer is not None:
            writer.abandon()
        raise
    finally:
        for fd in list(fds.values()) + list(progs.values()):
            os.close(fd)
    return out


def _described(src) -> tuple[dict, set[int], set[str], dict[str, int]]:
    """What a recording already has: its header, the stacks and call sites it describes,
    and the tmpfs files with pages as its samples last counted them."""
    header, stacks, sites, shmem = None, set(), set(), {}
    for obj in map(_record, src):
        if header is None:
            header = obj if obj and obj.get("type") == "header" else {}
        elif obj and obj.get("type") == "stack" and isinstance(obj.get("id"), int):
            stacks.add(obj["id"])
        elif obj and obj.get("type") == "site" and isinstance(obj.get("key"), str):
            sites.add(obj["key"])
        elif obj and obj.get("type") == "sample" and isinstance(obj.get("shmem"), dict):
            shmem.update(obj["shmem"])
    return header or {}, stacks, sites, {k: v for k, v in shmem.items() if v}


def _record(line: str):
    """A line of the recording as a dict; None for a torn last line of a killed recorder
    (the file was validated as a whole before)."""
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None
