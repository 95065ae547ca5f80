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
    from .symbols import Kallsyms
    from .symbolizer import Symbolizer

    meta = pinned.meta()
    source = source or meta["recording"]
    read(source)  # bounded and validated first: one line if it is corrupt
    try:
        fds = {name: obj_get(f"{pinned.PIN_DIR}/map-{name}") for name in meta["maps"]}
        progs = {name: obj_get(f"{pinned.PIN_DIR}/prog-{name}") for name in meta.get("programs", [])}
    except OSError as err:
        raise FootprintError(f"the pinned account in {pinned.PIN_DIR} is incomplete ({err.strerror}): "
                             "remove it with `footprint unpin`") from None
    try:
        src = open(source, encoding="utf-8")
    except OSError as err:
        raise FootprintError(f"the recording of the pinned account, {source}, is "
                             f"unreadable ({err.strerror})") from None
    writer = Writer(out)
    rec = Recorder(Options(output=out, marks=None, slab=meta.get("slab", "kmalloc")))
    known_stacks, known_sites = set(), set()
    try:
        with src:
            for n, line in enumerate(src):
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue  # a torn last line of a killed recorder
                if not isinstance(obj, dict) or obj.get("type") == "end":
                    continue
                if n == 0:
                    writer.start(obj)  # the header as it was (start() keeps its fields)
                    continue
                if obj.get("type") == "stack" and isinstance(obj.get("id"), int):
                    known_stacks.add(obj["id"])
                elif obj.get("type") == "site" and isinstance(obj.get("key"), str):
                    known_sites.add(obj["key"])
                writer.write(obj)
        if not writer.started:
            raise FootprintError(f"the recording of the pinned account, {source}, "
                                 "has no header")
        rec.writer = writer
        rec.use_maps(fds, progs, own_process=False)  # this reader is not the tracer
        rec.sampler.known_stacks.update(known_stacks)  # described already: not again
        rec.sampler.known_sites.update(known_sites)
        rec.symbols = Symbolizer(Kallsyms.load())
        if phase is not None:
            writer.write({"type": "phase", "t": boottime(), "name": phase})
        rec.sample()  # every entry: nothing is "unchanged" against an empty reference
        rec.shmem.close()  # the tmpfs walk of that sample (tracer/shmemsampler.py)
        writer.close("snapshot of the pinned account")
    except BaseException:
        writer.abandon()
        raise
    finally:
        for fd in list(fds.values()) + list(progs.values()):
            os.close(fd)
    return out
